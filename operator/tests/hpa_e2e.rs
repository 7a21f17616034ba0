//! Autoscaling read replicas by CPU on the local cluster (issue 13), with the real pieces a user
//! on kind has: metrics-server (scraping the process node's `/metrics/resource`) behind the
//! aggregation layer, kube-controller-manager's HPA controller with its default sync period and
//! tolerance, and an HTTP load against the read model's Service endpoints.
//!
//! 1. A `ReadModel` runs 3 replicas (CPU request 100m). Autoscaling is turned on (min 1, max 4,
//!    50 % CPU): the Deployment never drops below 3 replicas (spec or ready) before the HPA
//!    itself scales, and `spec.replicas` passes from the operator's field manager to the HPA.
//! 2. Idle, the HPA scales it to 1 (the scale-down window is shortened through
//!    `autoscaling.behavior`, not by patching the controller). `kubectl top pods` lists it.
//! 3. Under load the HPA scales above 1; every new replica serves every product the moment it is
//!    Ready (Ready only after catching up). `kubectl top pods` shows the CPU rise.
//! 4. Load stopped: back to 1.
//!
//! Own helm release and system namespace, uninstalled at the end, also on failure. Needs the
//! stack and the cluster: `make test` starts both; alone, `make dev-up cluster-up`,
//! `cargo build`, then `cargo test -p kartflow-operator --test hpa_e2e -- --include-ignored
//! --nocapture`.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kartflow_operator::crd::ReadModel;
use kartflow_testkit::cluster::{self, TestNamespace, wait_for};
use kartflow_testkit::{http, stack};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

const RELEASE: &str = "kartflow-hpa";
const SYSTEM_NS: &str = "kartflow-hpa-e2e";
const PRODUCTS: usize = 2000;
const PORT: u16 = 8000;
const DEPLOYMENT: &str = "view-read";
/// Load generator threads: enough to push a 100m-request replica far past 50 % on 2 cores.
const LOAD_THREADS: usize = 6;

fn run(tool: &str, args: &[&str]) -> String {
    cluster::run(tool, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Uninstalls the release and deletes the test namespace and topics, also when the test fails.
struct Cleanup {
    topics: Vec<String>,
}

impl Drop for Cleanup {
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
                "kartflow.io/test-hpa=true",
                "--wait=false",
            ],
        );
        let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, false);
        quiet(
            "kubectl",
            &["delete", "namespace", SYSTEM_NS, "--wait=false"],
        );
        let bootstrap = stack::kafka_bootstrap();
        for t in &self.topics {
            let _ = cluster::kafka_cli(
                &[
                    "TopicCommand",
                    "--bootstrap-server",
                    &bootstrap,
                    "--delete",
                    "--topic",
                    t,
                ],
                None,
            );
        }
    }
}

/// Ready endpoints of the read model's Service, as the load generator and the checks use them.
async fn ready_endpoints(slices: &Api<EndpointSlice>) -> BTreeSet<IpAddr> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={DEPLOYMENT}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// How many products a replica serves (walking all pages).
fn product_count(ip: IpAddr) -> Option<usize> {
    let addr = SocketAddr::new(ip, PORT);
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let path = format!("/products?limit=1000&cursor={cursor}");
        let (code, body) = http::request_to(addr, "GET", &path, None).ok()?;
        if code != 200 {
            return None;
        }
        let page: Value = serde_json::from_str(&body).ok()?;
        n += page["items"].as_array()?.len();
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return Some(n),
        }
    }
}

/// `kubectl top pods -n ns`: pod name → CPU in millicores.
fn top_pods(ns: &str) -> Result<Vec<(String, u64)>, String> {
    let out = cluster::run("kubectl", &["top", "pods", "-n", ns, "--no-headers"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let cpu = f.next()?.strip_suffix('m')?.parse().ok()?;
            Some((name, cpu))
        })
        .collect())
}

/// One observation of the Deployment: `(seconds since start, spec.replicas, readyReplicas)`.
type Sample = (f64, i32, i32);

/// Records every version of the Deployment the apiserver reports (a watch, so no write is
/// missed between polls).
fn record_deployment(api: Api<Deployment>, t0: Instant) -> Arc<Mutex<Vec<Sample>>> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    tokio::spawn(async move {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={DEPLOYMENT}"));
        let mut stream = watcher::watcher(api, cfg).applied_objects().boxed();
        while let Some(ev) = stream.next().await {
            let Ok(d) = ev else { continue };
            let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if let Ok(mut v) = out.lock() {
                v.push((t0.elapsed().as_secs_f64(), spec, ready));
            }
        }
    });
    samples
}

/// HTTP load on the Service's ready endpoints (refreshed every second, so new replicas share
/// it), until `stop`. Returns the request counter.
fn start_load(
    slices: Api<EndpointSlice>,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<std::thread::JoinHandle<()>>) {
    let targets: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    {
        let targets = targets.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let eps: Vec<SocketAddr> = ready_endpoints(&slices)
                    .await
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, PORT))
                    .collect();
                if let Ok(mut t) = targets.lock() {
                    *t = eps;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let threads = (0..LOAD_THREADS)
        .map(|i| {
            let (targets, stop, done) = (targets.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let target = targets
                        .lock()
                        .ok()
                        .and_then(|t| (!t.is_empty()).then(|| t[n % t.len()]));
                    n += 1;
                    let Some(addr) = target else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let path = format!("/products?limit=200&cursor={}", n % 8 * 200);
                    if http::request_to(addr, "GET", &path, None).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (done, threads)
}

#[tokio::test]
#[ignore = "needs the local cluster and stack: `make test` runs it (or make dev-up cluster-up + --include-ignored)"]
async fn read_replicas_scale_by_cpu() {
    let started = Instant::now();
    let secs = || started.elapsed().as_secs_f64();
    cluster::require_node_worker("read-model");
    let client = cluster::client().await;
    cluster::install_crds(&client, &cluster::repo_root().join("crds")).await;
    let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, true);
    let base = stack::unique_name("hpa-e2e").replace('_', "-");
    let topic = |t: &str| format!("{base}.{t}");
    let mut cleanup = Cleanup { topics: Vec::new() };
    cluster::install_chart(RELEASE, SYSTEM_NS, &["replicaCount=1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let apps = TestNamespace::create(&client, "kf-hpa").await;
    let ns = apps.name.clone();
    run(
        "kubectl",
        &["label", "namespace", &ns, "kartflow.io/test-hpa=true"],
    );

    // The resource metrics API, served by metrics-server through the aggregation layer.
    run(
        "kubectl",
        &[
            "wait",
            "--for=condition=Available",
            "apiservice/v1beta1.metrics.k8s.io",
            "--timeout=120s",
        ],
    );
    eprintln!("MEASURE metrics.k8s.io Available after {:.1} s", secs());

    let bootstrap = stack::kafka_bootstrap();
    for t in ["products", "inventory-events"] {
        cleanup.topics.push(topic(t));
        cluster::kafka_cli(
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
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut lines = String::new();
    for i in 0..PRODUCTS {
        let id = format!("H{i:05}");
        let p = json!({"productId": id, "name": format!("Part {i}"), "description": "a part",
            "category": "parts", "brand": "kartflow", "price": 9.5, "inventory": 100 + i,
            "imageUrl": "", "tags": ["e2e"], "rating": 4.5, "reviewCount": 3});
        lines.push_str(&format!("{id}|{p}\n"));
    }
    cluster::kafka_cli(
        &[
            "ConsoleProducer",
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &topic("products"),
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ],
        Some(&lines),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // --- 1. three replicas, then autoscaling on: no dip -----------------------------------------
    let pp = PatchParams::apply("kartflow-hpa-e2e").force();
    let rms: Api<ReadModel> = Api::namespaced(client.clone(), &ns);
    let view = |autoscaling: Option<Value>| {
        let mut spec = json!({
            "image": "kartflow/worker:dev",
            "source": {"kafka": {"bootstrapServers": bootstrap},
                       "topics": {"products": topic("products"),
                                  "inventoryEvents": topic("inventory-events")}},
            "replicas": 3,
            "resources": {"requests": {"cpu": "100m"}}
        });
        if let Some(a) = autoscaling {
            spec["autoscaling"] = a;
        }
        json!({"apiVersion": "kartflow.io/v1alpha1", "kind": "ReadModel",
               "metadata": {"name": "view"}, "spec": spec})
    };
    rms.patch("view", &pp, &Patch::Apply(&view(None)))
        .await
        .expect("ReadModel");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("3 ready replicas", Duration::from_secs(120), || async {
        let d = deployments.get(DEPLOYMENT).await.ok()?;
        (d.status?.ready_replicas? == 3).then_some(())
    })
    .await;
    eprintln!("MEASURE 3 replicas ready after {:.1} s", secs());

    let samples = record_deployment(deployments.clone(), started);
    let autoscaling = |down_window: i32| {
        json!({"minReplicas": 1, "maxReplicas": 4, "targetCpuUtilization": 50,
               "behavior": {"scaleDown": {"stabilizationWindowSeconds": down_window}}})
    };
    // A long scale-down window first: the HPA itself may not scale down for a minute, so any
    // drop within the observation below would be the hand-over's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t_on = secs();
    rms.patch("view", &pp, &Patch::Apply(&view(Some(autoscaling(60)))))
        .await
        .expect("autoscaling on");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    // Two HPA syncs (15 s apart) after it first reports.
    wait_for(
        "the HPA's first evaluation",
        Duration::from_secs(60),
        || async {
            let h = hpas.get(DEPLOYMENT).await.ok()?;
            (h.status?.current_replicas? == 3).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let d = deployments.get(DEPLOYMENT).await.expect("Deployment");
    let owners: Vec<String> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !owners.iter().any(|m| m == "kartflow-operator"),
        "the operator no longer applies spec.replicas: {owners:?}"
    );
    {
        let seen = samples.lock().expect("samples").clone();
        let after: Vec<&Sample> = seen.iter().filter(|s| s.0 >= t_on).collect();
        assert!(
            !after.is_empty(),
            "the Deployment watch saw the switch: {seen:?}"
        );
        let low = after
            .iter()
            .filter(|s| s.1 < 3 || s.2 < 3)
            .collect::<Vec<_>>();
        assert!(
            low.is_empty(),
            "turning autoscaling on dropped below 3 replicas (t, spec, ready): {low:?}"
        );
        eprintln!(
            "MEASURE autoscaling on: {} Deployment versions in {:.0} s, never below 3 (spec and ready); replicas owned by {owners:?}",
            after.len(),
            secs() - t_on
        );
    }
    let rm = rms.get("view").await.expect("ReadModel");
    let st = rm.status.clone().unwrap_or_default();
    let ready = st.common.conditions.iter().find(|c| c.type_ == "Ready");
    assert_eq!(
        ready.map(|c| c.status.as_str()),
        Some("True"),
        "Ready with 3 replicas serving: {st:?}"
    );

    // --- 2. idle: down to 1 -------------------------------------------------------------------
    rms.patch("view", &pp, &Patch::Apply(&view(Some(autoscaling(15)))))
        .await
        .expect("short scale-down window");
    let t_idle = secs();
    wait_for(
        "the idle read model scaled to 1 ready replica",
        Duration::from_secs(120),
        || async {
            let d = deployments.get(DEPLOYMENT).await.ok()?;
            let replicas = d.spec.as_ref()?.replicas?;
            let st = d.status?;
            (replicas == 1 && st.replicas? == 1 && st.ready_replicas? == 1).then_some(())
        },
    )
    .await;
    eprintln!("MEASURE idle scale-down 3 -> 1 in {:.1} s", secs() - t_idle);
    let idle_top = wait_for(
        "kubectl top pods listing the replica",
        Duration::from_secs(60),
        || async {
            top_pods(&ns)
                .ok()
                .filter(|t| t.iter().any(|(n, _)| n.starts_with(DEPLOYMENT)))
        },
    )
    .await;
    eprintln!("MEASURE kubectl top pods (idle): {idle_top:?}");
    let idle_cpu: u64 = idle_top.iter().map(|(_, c)| c).max().copied().unwrap_or(0);

    // --- 3. load: scale up; new replicas serve everything once Ready ----------------------------
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let first: BTreeSet<IpAddr> = ready_endpoints(&slices).await;
    assert_eq!(first.len(), 1, "one ready endpoint before the load");
    let stop = Arc::new(AtomicBool::new(false));
    let t_load = secs();
    let (requests, threads) = start_load(slices.clone(), stop.clone());
    let mut checked: HashSet<IpAddr> = first.iter().copied().collect();
    let mut loaded_top = Vec::new();
    let mut peak_cpu = 0u64;
    let mut scaled_at = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "no scale-up within 180 s of load; HPA: {:?}",
            hpas.get(DEPLOYMENT).await.ok().and_then(|h| h.status)
        );
        // Every replica that turns Ready serves every product at once: Ready means caught up.
        for ip in ready_endpoints(&slices).await {
            if checked.insert(ip) {
                let n = tokio::task::spawn_blocking(move || product_count(ip))
                    .await
                    .expect("product count");
                assert_eq!(
                    n,
                    Some(PRODUCTS),
                    "new replica {ip} is Ready but does not serve every product"
                );
                eprintln!(
                    "new replica {ip} Ready after {:.1} s of load, serving all {PRODUCTS} products",
                    secs() - t_load
                );
            }
        }
        if let Ok(top) = top_pods(&ns) {
            let max = top.iter().map(|(_, c)| *c).max().unwrap_or(0);
            if max > peak_cpu {
                peak_cpu = max;
                loaded_top = top;
            }
        }
        let d = deployments.get(DEPLOYMENT).await.expect("Deployment");
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if replicas > 1 && scaled_at.is_none() {
            scaled_at = Some(secs() - t_load);
            eprintln!(
                "MEASURE HPA scaled 1 -> {replicas} after {:.1} s of load",
                secs() - t_load
            );
        }
        // Load until the scaled-up replicas all serve (and were checked).
        if replicas > 1 && ready == replicas && checked.len() >= replicas as usize {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rm = rms.get("view").await.expect("ReadModel");
    eprintln!(
        "MEASURE under load: kubectl top pods {loaded_top:?} (idle max {idle_cpu}m); ReadModel status {:?}",
        rm.status
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let served = requests.load(Ordering::Relaxed);
    let peak = samples
        .lock()
        .expect("samples")
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    eprintln!(
        "MEASURE load: {served} requests in {:.0} s; peak replicas {peak}; peak pod CPU {peak_cpu}m",
        secs() - t_load
    );
    assert!(
        peak_cpu > 50 && peak_cpu > idle_cpu,
        "kubectl top pods shows the CPU rise under load: idle {idle_cpu}m, loaded {loaded_top:?}"
    );

    // --- 4. load stopped: back to 1 -----------------------------------------------------------
    let t_stop = secs();
    wait_for(
        "the scale-down to 1 replica after the load",
        Duration::from_secs(180),
        || async {
            let d = deployments.get(DEPLOYMENT).await.ok()?;
            let st = d.status?;
            (d.spec?.replicas? == 1 && st.replicas? == 1).then_some(())
        },
    )
    .await;
    eprintln!("MEASURE scale-down after the load {:.1} s", secs() - t_stop);
    let rm = rms.get("view").await.expect("ReadModel");
    eprintln!("ReadModel status after: {:?}", rm.status);

    apps.delete_and_wait().await;
    run("helm", &["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"]);
    run(
        "kubectl",
        &["delete", "namespace", SYSTEM_NS, "--timeout=120s"],
    );
    drop(cleanup);
    eprintln!("MEASURE hpa e2e total {:.0} s", secs());
}
