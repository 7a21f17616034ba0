//! The CDC path end to end on the local cluster: a `CdcSource` made from
//! `examples/cdc-source.yaml` drives a real `kartflow-worker cdc` pod; order rows inserted into
//! PostgreSQL appear as order lines in Kafka; the slot guard reports the slot healthy and never
//! drops it while the worker keeps up; deleting the `CdcSource` stops the pod and removes the slot.
//!
//! Its own helm release and system namespace (`kartflow-cdc`, `kartflow-cdc-e2e`), watching only
//! the test's namespace, uninstalled at the end (and on failure).
//!
//! Needs the stack and the cluster: `make test` starts both; alone, `make dev-up cluster-up`,
//! `cargo build`, then `cargo test -p kartflow-operator --test cdc_e2e -- --include-ignored
//! --nocapture`. The cluster's node must run this tree's `kartflow-worker` (its images map
//! `kartflow/worker` to `$CARGO_TARGET_DIR/debug/kartflow-worker` of the tree that started it).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kartflow_operator::crd::CdcSource;
use kartflow_testkit::cluster::{self, TestNamespace, wait_for};
use kartflow_testkit::stack;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

const RELEASE: &str = "kartflow-cdc";
const SYSTEM_NS: &str = "kartflow-cdc-e2e";
const T: Duration = Duration::from_secs(120);

/// Uninstalls the release and removes the test namespace even when the test fails half-way.
struct Cleanup {
    app_ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The CdcSource's finalizer needs the operator: delete it before the release goes.
        let _ = cluster::run(
            "kubectl",
            &[
                "-n",
                &self.app_ns,
                "delete",
                "cdcsources",
                "--all",
                "--timeout=60s",
            ],
        );
        let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, true);
        let _ = cluster::run(
            "kubectl",
            &["delete", "namespace", &self.app_ns, "--wait=false"],
        );
        let _ = cluster::run(
            "kubectl",
            &["delete", "namespace", SYSTEM_NS, "--wait=false"],
        );
    }
}

struct Pg {
    user: String,
    password: String,
    port: u16,
    database: String,
}

fn pg() -> Pg {
    let url = url::Url::parse(&stack::settings().database_url).expect("DATABASE_URL");
    Pg {
        user: url.username().into(),
        password: url.password().unwrap_or_default().into(),
        port: url.port().unwrap_or(5432),
        database: url.path().trim_start_matches('/').into(),
    }
}

/// Order lines in `topic` (read_committed), as (orderId, productId) pairs.
fn order_lines(topic: &str) -> BTreeSet<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack::settings().kafka_bootstrap)
        .set("group.id", stack::unique_name("cdc-e2e-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut eof = BTreeSet::new();
    let mut out = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while eof.len() < 3 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Ok(m)) => {
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                out.insert((
                    v["orderId"].as_str().unwrap_or_default().to_owned(),
                    v["productId"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            _ => {}
        }
    }
    out
}

fn create_topic(topic: &str) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", stack::settings().kafka_bootstrap)
            .create()
            .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let t = rdkafka::admin::NewTopic::new(topic, 3, rdkafka::admin::TopicReplication::Fixed(1));
    for r in rt
        .block_on(admin.create_topics(&[t], &rdkafka::admin::AdminOptions::new()))
        .expect("create")
    {
        r.expect("topic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster and stack: `make test` runs it (or make dev-up cluster-up + --include-ignored)"]
async fn a_cdc_source_drives_a_real_worker_pod() {
    let client: Client = cluster::client().await;
    cluster::install_crds(&client, &cluster::repo_root().join("crds")).await;
    let apps = TestNamespace::create(&client, "kf-cdc").await;
    let ns = apps.name.clone();
    let _cleanup = Cleanup { app_ns: ns.clone() };
    let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, true);
    let watch = format!("watchNamespaces={{{ns}}}");
    cluster::install_chart(RELEASE, SYSTEM_NS, &[&watch]).unwrap_or_else(|e| panic!("{e}"));

    // The database side a user prepares: the table and the role's Secret.
    let db = stack::postgres().await;
    let slot = stack::unique_name("e2e_cdc");
    let table = format!("{slot}_t");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (order_id text NOT NULL, product_id text NOT NULL, \
         quantity int NOT NULL, id serial PRIMARY KEY)"
    ))
    .await
    .expect("table");
    let p = pg();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-cdc-credentials"},
        "stringData": {"username": p.user, "password": p.password}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    // The example verifies the server (sslMode verify-full): the CA of the local server, as a
    // user stores their database's CA.
    let dev = std::env::var("KARTFLOW_DEV_DIR").unwrap_or_else(|_| "/tmp/kartflow-dev".into());
    let ca_path = format!("{dev}/postgres/tls/ca.crt");
    let ca = std::fs::read_to_string(&ca_path)
        .unwrap_or_else(|e| panic!("{ca_path}: {e}; hack/postgres/postgres.sh up creates it"));
    let ca_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-db-ca"},
        "stringData": {"ca.crt": ca}
    }))
    .expect("CA secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ca_secret)
        .await
        .expect("CA secret");
    let topic = format!("{slot}-order-events");
    std::thread::scope(|s| {
        s.spawn(|| create_topic(&topic));
    });

    // The example, pointed at the local stack.
    let text = std::fs::read_to_string(cluster::repo_root().join("examples/cdc-source.yaml"))
        .expect("examples/cdc-source.yaml");
    let mut cdc: serde_json::Value = serde_yaml::from_str(&text).expect("example parses");
    cdc["metadata"]["namespace"] = json!(ns);
    let spec = &mut cdc["spec"];
    spec["image"] = json!("kartflow/worker:dev");
    // The local server's certificate names "localhost": verify-full as the example asks, for
    // the operator's slot guard and for the worker alike.
    spec["postgres"]["host"] = json!("localhost");
    spec["postgres"]["port"] = json!(p.port);
    spec["postgres"]["database"] = json!(p.database);
    assert_eq!(
        spec["postgres"]["sslMode"], "verify-full",
        "the example verifies TLS"
    );
    spec["publication"]["name"] = json!(format!("{slot}_pub"));
    spec["publication"]["tables"] = json!([format!("public.{table}")]);
    spec["slot"]["name"] = json!(slot);
    spec["kafka"]["bootstrapServers"] = json!(stack::settings().kafka_bootstrap);
    spec["topic"] = json!(topic);
    spec["dlqTopic"] = json!(format!("{slot}-dlq"));
    spec["heartbeatInterval"] = json!("2s");
    spec["guard"]["checkInterval"] = json!("2s");
    spec["capture"] = json!({"table": format!("public.{table}")});
    let cdcs: Api<CdcSource> = Api::namespaced(client.clone(), &ns);
    cdcs.patch(
        "orders",
        &PatchParams::apply("kartflow-cdc-e2e").force(),
        &Patch::Apply(&cdc),
    )
    .await
    .expect("apply the CdcSource");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("the CDC worker pod Ready (streaming)", T, || async {
        let d = deployments.get_opt("orders-cdc").await.ok()??;
        (d.status?.ready_replicas? >= 1).then_some(())
    })
    .await;
    wait_for("CdcSource phase Running", T, || async {
        let s = cdcs.get("orders").await.ok()?.status?;
        (s.common.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;

    db.batch_execute(&format!(
        "INSERT INTO {table} (order_id, product_id, quantity) VALUES \
         ('o-1', 'P-1', 2), ('o-2', 'P-2', 1), ('o-3', 'P-1', 5)"
    ))
    .await
    .expect("order rows");
    let want: BTreeSet<(String, String)> = [("o-1", "P-1"), ("o-2", "P-2"), ("o-3", "P-1")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    // Both the worker's replication connection and the guard's connection are encrypted.
    let encrypted: Vec<(String, bool)> = db
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'kartflow-cdc' AND a.backend_type = 'walsender' \
                OR a.application_name = $1",
            &[&format!("kartflow-slot-guard {ns}/orders")],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        encrypted.iter().any(|(a, _)| a == "kartflow-cdc")
            && encrypted
                .iter()
                .any(|(a, _)| a.starts_with("kartflow-slot-guard"))
            && encrypted.iter().all(|(_, ssl)| *ssl),
        "worker and guard connect over TLS (verify-full): {encrypted:?}"
    );
    let topic_c = topic.clone();
    wait_for("the order lines in Kafka", T, || {
        let topic = topic_c.clone();
        let want = want.clone();
        async move {
            let got = tokio::task::block_in_place(|| order_lines(&topic));
            (got == want).then_some(())
        }
    })
    .await;

    // WAL written elsewhere while the worker keeps up: the guard keeps reporting it healthy.
    db.batch_execute(&format!(
        "CREATE TABLE {slot}_noise (id int, pad text);
         INSERT INTO {slot}_noise SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 20000) g;
         DROP TABLE {slot}_noise;"
    ))
    .await
    .expect("noise");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = cdcs
            .get("orders")
            .await
            .expect("get")
            .status
            .unwrap_or_default();
        assert!(
            s.last_drop.is_none(),
            "the guard dropped a healthy slot: {s:?}"
        );
        let healthy = s
            .common
            .conditions
            .iter()
            .find(|c| c.type_ == "SlotHealthy")
            .map(|c| c.status.clone());
        assert_eq!(
            healthy.as_deref(),
            Some("True"),
            "SlotHealthy while the worker keeps up: {s:?}"
        );
        assert!(
            s.slot.is_some_and(|f| f.active),
            "the worker holds the slot"
        );
    }

    // Deleting the CdcSource stops the pod and removes the slot.
    cdcs.delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the CdcSource gone, its pod stopped, its slot dropped",
        T,
        || async {
            let gone = cdcs.get_opt("orders").await.ok()?.is_none();
            let no_pods = pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=orders"))
                .await
                .ok()?
                .items
                .is_empty();
            let slot_gone = db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()?
                .is_none();
            (gone && no_pods && slot_gone).then_some(())
        },
    )
    .await;
    let _ = db
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {slot}_pub; DROP TABLE IF EXISTS {table};"
        ))
        .await;
    eprintln!("CdcSource {} drove a worker pod end to end", cdc.name_any());
}

trait NameAny {
    fn name_any(&self) -> String;
}

impl NameAny for serde_json::Value {
    fn name_any(&self) -> String {
        self["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
