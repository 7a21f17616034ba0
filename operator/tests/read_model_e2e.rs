//! The scaling trap on the local cluster (issue 12): a `ReadModel` with 4 replicas over
//! 2-partition topics fed by an `InventoryPipeline`, installed by helm with the real Kafka of the
//! local stack. Querying every pod directly, every replica returns every product with the same
//! inventory once the pipeline is idle. The partitioned-KTable design this replaces would split
//! the products 4 ways (and leave 2 replicas with nothing, having more replicas than partitions).
//!
//! Own helm release and system namespace (it may run next to `operator_e2e`), uninstalled at the
//! end, also on failure. Needs the stack and the cluster: `make test` starts both; alone,
//! `make dev-up cluster-up`, `cargo build`, then
//! `cargo test -p kartflow-operator --test read_model_e2e -- --include-ignored --nocapture`.
//! The node must map `kartflow/worker` to a build with the `read-model` subcommand; the test
//! checks that first and says how to fix it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kartflow_operator::crd::{InventoryPipeline, ReadModel};
use kartflow_testkit::cluster::{self, TestNamespace, wait_for};
use kartflow_testkit::{http, stack};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const RELEASE: &str = "kartflow-rm";
const SYSTEM_NS: &str = "kartflow-rm-e2e";
const T: Duration = Duration::from_secs(180);
const PRODUCTS: usize = 200;
const REPLICAS: i32 = 4;

fn run(tool: &str, args: &[&str]) -> String {
    cluster::run(tool, args).unwrap_or_else(|e| panic!("{e}"))
}

fn kafka_cli(args: &[&str], stdin: Option<&str>) {
    cluster::kafka_cli(args, stdin).unwrap_or_else(|e| panic!("{e}"));
}

struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let quiet = |tool: &str, args: &[&str]| {
            let _ = cluster::run(tool, args);
        };
        quiet(
            "kubectl",
            &[
                "delete",
                "namespace",
                "-l",
                "kartflow.io/test-rm=true",
                "--wait=false",
            ],
        );
        let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, false);
    }
}

fn pod_ip(pod: &Pod) -> IpAddr {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("pod {} has no IP", pod.name_any()))
}

/// Every product a replica serves (walking all pages), productId → inventory.
fn products_of(addr: SocketAddr, min_offsets: &str) -> Option<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/products?limit=1000&cursor={cursor}&minOffsets={min_offsets}");
        let (code, body) = http::request_to(addr, "GET", &path, None).ok()?;
        if code != 200 {
            return None;
        }
        let page: Value = serde_json::from_str(&body).ok()?;
        for p in page["items"].as_array()? {
            out.insert(
                p["productId"].as_str()?.to_owned(),
                p["inventory"].as_i64()?,
            );
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return Some(out),
        }
    }
}

#[tokio::test]
#[ignore = "needs the local cluster and stack: `make test` runs it (or make dev-up cluster-up + --include-ignored)"]
async fn every_replica_serves_every_product() {
    let started = Instant::now();
    cluster::require_node_worker("read-model");
    let client = cluster::client().await;
    cluster::install_crds(&client, &cluster::repo_root().join("crds")).await;
    let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, true);
    cluster::install_chart(RELEASE, SYSTEM_NS, &["replicaCount=1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let _release = Uninstall;
    let apps = TestNamespace::create(&client, "kf-rm").await;
    let ns = apps.name.clone();
    run(
        "kubectl",
        &["label", "namespace", &ns, "kartflow.io/test-rm=true"],
    );

    // Unique 2-partition input topics; the worker creates its outputs with the same count.
    let base = stack::unique_name("rm-e2e").replace('_', "-");
    let topic = |t: &str| format!("{base}.{t}");
    let bootstrap = stack::kafka_bootstrap();
    for t in ["product-updates", "order-events"] {
        kafka_cli(
            &[
                "TopicCommand",
                "--bootstrap-server",
                &bootstrap,
                "--create",
                "--topic",
                &topic(t),
                "--partitions",
                "2",
                "--replication-factor",
                "1",
            ],
            None,
        );
    }

    // Bootstrap products, then some order lines within stock: expected = initial − ordered.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let products: Vec<Value> = (0..PRODUCTS)
        .map(|i| {
            let id = format!("E{i:04}");
            expected.insert(id.clone(), 100 + i as i64);
            json!({"productId": id, "name": format!("Part {i}"), "category": "parts",
                   "brand": "kartflow", "price": 9.5, "inventory": 100 + i as i64})
        })
        .collect();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply("kartflow-rm-e2e").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "products"},
        "data": {"products.json": Value::Array(products).to_string()}});
    cms.patch("products", &pp, &Patch::Apply(&cm))
        .await
        .expect("products ConfigMap");
    // Savepoints go to the local stack's S3 server, with the credentials from a Secret.
    let s3 = stack::s3();
    let store = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "savepoint-store"},
        "stringData": s3.aws_env().into_iter().collect::<BTreeMap<_, _>>()});
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch("savepoint-store", &pp, &Patch::Apply(&store))
        .await
        .expect("savepoint-store Secret");
    let savepoint_url = format!("s3://{}/{}", s3.bucket, stack::unique_name("rm-e2e"));

    let t = |name: &str| topic(name);
    let pipeline = json!({
        "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
        "metadata": {"name": "shop"},
        "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": bootstrap},
                 "parallelism": 2,
                 "bootstrapProducts": {"name": "products", "key": "products.json"},
                 "savepointUrl": savepoint_url,
                 "savepointCredentials": {"name": "savepoint-store"},
                 "topics": {"productUpdates": t("product-updates"), "orderEvents": t("order-events"),
                    "products": t("products"), "inventoryEvents": t("inventory-events"),
                    "inventoryAlerts": t("inventory-alerts"), "websocketFanout": t("websocket-fanout"),
                    "dlq": t("dlq")}}
    });
    Api::<InventoryPipeline>::namespaced(client.clone(), &ns)
        .patch("shop", &pp, &Patch::Apply(&pipeline))
        .await
        .expect("InventoryPipeline");
    let view = json!({
        "apiVersion": "kartflow.io/v1alpha1", "kind": "ReadModel",
        "metadata": {"name": "view"},
        "spec": {"image": "kartflow/worker:dev", "source": {"pipelineRef": {"name": "shop"}},
                 "replicas": REPLICAS}
    });
    Api::<ReadModel>::namespaced(client.clone(), &ns)
        .patch("view", &pp, &Patch::Apply(&view))
        .await
        .expect("ReadModel");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for (name, want) in [("shop-worker", 2), ("view-read", REPLICAS)] {
        wait_for(&format!("{name} with {want} ready replicas"), T, || async {
            let d = deployments.get(name).await.ok()?;
            (d.status?.ready_replicas? == want).then_some(())
        })
        .await;
    }
    eprintln!(
        "MEASURE pipeline and {REPLICAS} replicas ready after {:.1?}",
        started.elapsed()
    );

    let mut lines = String::new();
    for i in 0..PRODUCTS * 2 {
        let id = format!("E{:04}", i % PRODUCTS);
        let qty = 1 + (i % 3) as i64;
        *expected.get_mut(&id).expect("known product") -= qty;
        let line = json!({"eventId": format!("e2e-{i}"), "orderId": format!("o-{i}"),
            "productId": id, "quantity": qty, "timestamp": 1_700_000_000_000i64 + i as i64});
        lines.push_str(&format!("{id}|{line}\n"));
    }
    kafka_cli(
        &[
            "ConsoleProducer",
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &t("order-events"),
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ],
        Some(&lines),
    );

    // Every pod, directly by its IP: every product, the expected inventory.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let replicas = pods
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=view,app.kubernetes.io/component=read-model"),
        )
        .await
        .expect("listing replicas")
        .items;
    assert_eq!(replicas.len(), REPLICAS as usize, "one pod per replica");
    for pod in &replicas {
        let addr = SocketAddr::new(pod_ip(pod), 8000);
        let name = pod.name_any();
        let got = wait_for(
            &format!("{name} serving every product with the expected inventory"),
            T,
            || async { products_of(addr, "").filter(|got| *got == expected) },
        )
        .await;
        assert_eq!(got.len(), PRODUCTS);
        eprintln!("{name} ({addr}) serves all {PRODUCTS} products with the expected inventory");
    }
    control_api_needs_the_token(&client, &ns, &savepoint_url).await;
    let rms: Api<ReadModel> = Api::namespaced(client.clone(), &ns);
    let ready = rms
        .get("view")
        .await
        .ok()
        .and_then(|r| r.status?.ready_replicas);
    eprintln!("ReadModel status readyReplicas {ready:?}");

    apps.delete_and_wait().await;
    run("helm", &["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"]);
    run(
        "kubectl",
        &["delete", "namespace", SYSTEM_NS, "--timeout=120s"],
    );
    eprintln!("MEASURE read-model e2e total {:.0?}", started.elapsed());
}

/// An inventory worker's control API (savepoints) is on its own port and needs the token of the
/// pipeline's Secret; the admin port stays open. The savepoint lands in the S3 store named by
/// `savepointUrl`, with the credentials of `savepointCredentials`. The NetworkPolicy exists (the process node does
/// not enforce NetworkPolicies, so the token is what this test can see refuse a caller).
async fn control_api_needs_the_token(client: &kube::Client, ns: &str, savepoint_url: &str) {
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .get("shop-worker")
        .await
        .expect("NetworkPolicy shop-worker");
    let rules = serde_json::to_value(np.spec.and_then(|s| s.ingress)).expect("json");
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        SYSTEM_NS,
        "the control port is open to the operator's namespace: {rules}"
    );
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("shop-worker-control-token")
        .await
        .expect("control token Secret");
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0).expect("token is text"))
        .expect("token key");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=shop,app.kubernetes.io/component=inventory"),
        )
        .await
        .expect("listing inventory workers")
        .items;
    let ip = pod_ip(pods.first().expect("an inventory worker"));
    let control = SocketAddr::new(ip, 8081);
    let body = r#"{"id":"e2e-control"}"#;
    let (code, answer) = http::request_to(control, "POST", "/v1/savepoints", Some(body))
        .expect("control port answers");
    assert_eq!(code, 401, "no token, no savepoint: {answer}");
    let (code, _) = http::request_with_headers(
        control,
        "POST",
        "/v1/savepoints",
        &[("Authorization", "Bearer wrong")],
        Some(body),
    )
    .expect("control port answers");
    assert_eq!(code, 401, "a wrong token is refused");
    let bearer = format!("Bearer {token}");
    let (code, answer) = http::request_with_headers(
        control,
        "POST",
        "/v1/savepoints",
        &[("Authorization", &bearer)],
        Some(body),
    )
    .expect("control port answers");
    assert_eq!(
        code, 201,
        "the operator's token takes a savepoint: {answer}"
    );
    assert!(answer.contains("Completed"), "{answer}");
    assert!(
        answer.contains(&format!("{savepoint_url}/e2e-control")),
        "written to the S3 store with the Secret's credentials: {answer}"
    );
    let (code, _) = http::request_to(SocketAddr::new(ip, 8080), "GET", "/metrics", None)
        .expect("admin port answers");
    assert_eq!(code, 200, "metrics stay open");
    let (code, _) = http::request_to(
        SocketAddr::new(ip, 8080),
        "POST",
        "/v1/savepoints",
        Some(body),
    )
    .expect("admin port answers");
    assert!(
        code == 404 || code == 405,
        "no savepoints on the admin port: {code}"
    );
    eprintln!("control API: 401 without or with a wrong token, 201 with the pipeline's token");
}
