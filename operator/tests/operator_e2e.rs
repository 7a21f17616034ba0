//! The operator end to end on the local cluster, with the real Kafka and PostgreSQL of the local
//! stack: `helm install` of `charts/kartflow` (two replicas, one leading), children of each kind
//! with owner references, labels and security contexts, status and `kubectl get kartflow`, spec
//! changes and deletion, the replication-slot guard against real slots, apply→Deployment
//! latency and RSS over 100 objects, and leader failover after SIGKILL.
//!
//! Needs the stack and the cluster: `make test` starts both; alone, `make dev-up cluster-up`,
//! `cargo build`, then `cargo test -p kartflow-operator --test operator_e2e -- --include-ignored
//! --nocapture`. The figures are printed as `MEASURE ...` lines.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kartflow_operator::crd::{CdcSource, InventoryPipeline, ReadModel};
use kartflow_testkit::cluster::{self, TestNamespace, wait_for};
use kartflow_testkit::{http, stack};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

const RELEASE: &str = "kartflow";
const SYSTEM_NS: &str = "kartflow-e2e";
const LEASE: &str = "kartflow-leader";
/// Short, so failover is quick to observe; the chart's default is 15 s.
const LEASE_SECONDS: u64 = 8;
const T: Duration = Duration::from_secs(60);

fn run(tool: &str, args: &[&str]) -> String {
    cluster::run(tool, args).unwrap_or_else(|e| panic!("{e}"))
}

fn apply_params() -> PatchParams {
    PatchParams::apply("kartflow-e2e").force()
}

async fn apply<K>(api: &Api<K>, obj: serde_json::Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"))
}

/// The operator's pods, with the IPs their /metrics listen on.
async fn operator_pods(client: &Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kartflow"))
        .await
        .expect("listing operator pods")
        .items
}

fn pod_ip(pod: &Pod) -> IpAddr {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("pod {} has no IP", pod.name_any()))
}

fn metrics_of(pod: &Pod) -> String {
    let addr = SocketAddr::new(pod_ip(pod), 8080);
    match http::request_to(addr, "GET", "/metrics", None) {
        Ok((200, body)) => body,
        other => panic!("GET {addr}/metrics of {}: {other:?}", pod.name_any()),
    }
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn leader_pod(client: &Client, ns: &str) -> Pod {
    let holder = wait_for("a Lease holder", T, || async {
        lease_holder(client, ns).await
    })
    .await;
    // The holder identity is `<pod>_<per-process nonce>`.
    let pod = holder.split('_').next().unwrap_or_default().to_owned();
    operator_pods(client, ns)
        .await
        .into_iter()
        .find(|p| p.name_any() == pod)
        .unwrap_or_else(|| panic!("Lease holder {holder} is not an operator pod"))
}

/// PID of the operator process of `pod` (the node runs pods as local processes).
fn pid_of(pod: &str) -> u32 {
    let want = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.to_string_lossy().contains("kartflow-operator")
            && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
        {
            return pid;
        }
    }
    panic!("no kartflow-operator process for pod {pod}")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
#[ignore = "needs the local cluster and stack: `make test` runs it (or make dev-up cluster-up + --include-ignored)"]
async fn operator_end_to_end() {
    let started = Instant::now();
    let client = cluster::client().await;
    cluster::install_crds(&client, &cluster::repo_root().join("crds")).await;
    // A fixed namespace: a run that died half-way leaves a release (with cluster-scoped RBAC)
    // that the next run uninstalls instead of tripping on.
    let system = SYSTEM_NS;
    drop_leftovers().await;
    install(&client, system).await;
    let _release = Uninstall;
    let apps = TestNamespace::create(&client, "kf-apps").await;
    children_follow_the_spec(&client, &apps.name).await;
    crash_looping_workers_show_their_error(&client, &apps.name).await;
    slot_guard(&client, system, &apps.name).await;
    paused_leader_does_not_drop(&client, system, &apps.name).await;
    latency_and_memory(&client, system, &apps.name).await;
    failover(&client, system, &apps.name).await;

    // CdcSources carry a finalizer: delete them while the operator still runs.
    let cdcs: Api<CdcSource> = Api::namespaced(client.clone(), &apps.name);
    cdcs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("deleting CdcSources");
    wait_for("every CdcSource finalized", T, || async {
        cdcs.list(&ListParams::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(|_| ())
    })
    .await;
    drop_tables_of_this_run().await;
    apps.delete().await;
    run("helm", &["uninstall", RELEASE, "-n", system, "--wait"]);
    run(
        "kubectl",
        &["delete", "namespace", system, "--timeout=120s"],
    );
    eprintln!("MEASURE e2e total {:.0?}", started.elapsed());
}

/// Uninstalls the release when the test fails half-way, so no operator keeps reconciling (and
/// finalizing) the objects later tests create.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let quiet = |tool: &str, args: &[&str]| {
            let _ = cluster::run(tool, args);
        };
        // Test namespaces go too; their CdcSources' finalizers would hold them forever once the
        // operator is gone (the next run drops the slots they leave).
        let out = Command::new(cluster::tool("kubectl"))
            .args(["get", "cdcsources", "-A", "-o"])
            .arg("jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}")
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .output();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((ns, name)) = line.split_once('/')
                    && ns.starts_with("kf-apps-")
                {
                    quiet(
                        "kubectl",
                        &[
                            "-n",
                            ns,
                            "patch",
                            "cdcsource",
                            name,
                            "--type",
                            "merge",
                            "-p",
                            r#"{"metadata":{"finalizers":null}}"#,
                        ],
                    );
                }
            }
        }
        quiet(
            "kubectl",
            &[
                "delete",
                "namespace",
                "-l",
                "kartflow.io/test=true",
                "--wait=false",
            ],
        );
        let _ = cluster::uninstall_chart(RELEASE, SYSTEM_NS, false);
    }
}

/// Slots and publications an interrupted earlier run left behind (they would retain WAL).
async fn drop_leftovers() {
    let pg = stack::postgres().await;
    pg.batch_execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
          WHERE slot_name LIKE 'e2e\\_%' AND NOT active",
    )
    .await
    .expect("dropping leftover test slots");
    let pubs = pg
        .query(
            "SELECT pubname FROM pg_publication WHERE pubname LIKE 'e2e\\_%'",
            &[],
        )
        .await
        .expect("listing leftover publications");
    for row in pubs {
        let name: String = row.get(0);
        pg.batch_execute(&format!("DROP PUBLICATION IF EXISTS {name}"))
            .await
            .expect("dropping a leftover publication");
    }
}

async fn install(client: &Client, ns: &str) {
    // A release left by an interrupted run would keep its old operator processes running.
    let _ = cluster::uninstall_chart(RELEASE, ns, true);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    wait_for(&format!("namespace {ns} not terminating"), T, || async {
        let terminating = namespaces
            .get_opt(ns)
            .await
            .ok()?
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
        (!terminating).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let lease = format!("leaseDurationSeconds={LEASE_SECONDS}");
    cluster::install_chart(RELEASE, ns, &["replicaCount=2", &lease])
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("MEASURE helm install --wait {:.1?}", t0.elapsed());
    let pods = operator_pods(client, ns).await;
    assert_eq!(pods.len(), 2, "two operator replicas");
    for p in &pods {
        let sa = p.spec.as_ref().and_then(|s| s.service_account_name.clone());
        assert_eq!(
            sa.as_deref(),
            Some(RELEASE),
            "pod {} runs as the chart's service account",
            p.name_any()
        );
    }
    let leader = leader_pod(client, ns).await;
    let standby = pods
        .iter()
        .find(|p| p.name_any() != leader.name_any())
        .expect("a standby");
    wait_for(
        "the leader reports kartflow_operator_leader 1",
        T,
        || async {
            (metric(&metrics_of(&leader), "kartflow_operator_leader", &[]) == 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&metrics_of(standby), "kartflow_operator_leader", &[]),
        0.0,
        "the standby does not lead"
    );
}

fn assert_owned_and_labelled<K: Resource<DynamicType = ()>>(
    child: &K,
    owner_uid: &str,
    instance: &str,
) {
    let meta = child.meta();
    let what = format!("{} {}", K::kind(&()), meta.name.clone().unwrap_or_default());
    let owner = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .unwrap_or_else(|| panic!("{what} has no owner reference"));
    assert_eq!(owner.uid, owner_uid, "{what} is owned by its CR");
    assert_eq!(owner.controller, Some(true), "{what}: controller owner");
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some(instance),
        "{what}"
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kartflow-operator"),
        "{what}"
    );
    assert!(labels.contains_key("app.kubernetes.io/component"), "{what}");
}

fn assert_hardened(d: &Deployment) {
    let name = d.name_any();
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    for c in &pod.containers {
        let sc = c
            .security_context
            .clone()
            .unwrap_or_else(|| panic!("{name}: no securityContext"));
        assert_eq!(sc.run_as_non_root, Some(true), "{name}: runAsNonRoot");
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{name}: allowPrivilegeEscalation"
        );
        let drop = sc.capabilities.and_then(|c| c.drop).unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{name}: capabilities dropped");
        assert!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "{name}: probes"
        );
    }
}

async fn deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("Deployment {ns}/{name}"), T, || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

async fn reconciled<K>(api: &Api<K>, name: &str) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(
        &format!("{name} reconciled (observedGeneration, Reconciled=True)"),
        T,
        || async {
            let obj = api.get(name).await.ok()?;
            let v = serde_json::to_value(&obj).ok()?;
            let generation = v["metadata"]["generation"].as_i64()?;
            let status = &v["status"];
            let ok = status["observedGeneration"].as_i64() == Some(generation)
                && status["conditions"].as_array()?.iter().any(|c| {
                    c["type"] == "Reconciled"
                        && c["status"] == "True"
                        && c["observedGeneration"] == generation
                });
            ok.then_some(obj)
        },
    )
    .await
}

/// A pipeline whose workers cannot start (their input topic does not exist) says why on the
/// CR, in the worker's own words, instead of "children are up to date".
async fn crash_looping_workers_show_their_error(client: &Client, ns: &str) {
    let kafka = stack::settings().kafka_bootstrap;
    let pipelines: Api<InventoryPipeline> = Api::namespaced(client.clone(), ns);
    let missing = stack::unique_name("e2e-missing-updates");
    apply(
        &pipelines,
        json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "crashy"},
            "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": kafka},
                     "topics": {"productUpdates": missing}}
        }),
    )
    .await;
    let t0 = Instant::now();
    let ready = wait_for("crashy: Ready=False with the worker's error", T, || async {
        let st = pipelines.get("crashy").await.ok()?.status?;
        st.common
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "WorkerCrashLooping")
    })
    .await;
    eprintln!(
        "MEASURE crash-looping worker -> reported on the CR in {:.1?}",
        t0.elapsed()
    );
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .contains(&format!("topic {missing} does not exist")),
        "the condition carries the worker's own last line: {}",
        ready.message
    );
    let phase = pipelines
        .get("crashy")
        .await
        .ok()
        .and_then(|p| p.status?.common.phase);
    assert_eq!(phase.as_deref(), Some("Degraded"));
    pipelines
        .delete("crashy", &DeleteParams::default())
        .await
        .expect("delete crashy");
}

async fn children_follow_the_spec(client: &Client, ns: &str) {
    let kafka = stack::settings().kafka_bootstrap;
    let pipelines: Api<InventoryPipeline> = Api::namespaced(client.clone(), ns);
    let models: Api<ReadModel> = Api::namespaced(client.clone(), ns);
    let cdcs: Api<CdcSource> = Api::namespaced(client.clone(), ns);
    let slot = stack::unique_name("e2e_children");
    prepare_table(&slot).await;

    pg_secret(client, ns).await;
    let ip = apply(
        &pipelines,
        json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "shop"},
            "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": kafka}, "parallelism": 2}
        }),
    )
    .await;
    let rm = apply(
        &models,
        json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "ReadModel",
            "metadata": {"name": "view"},
            "spec": {"image": "kartflow/worker:dev", "source": {"pipelineRef": {"name": "shop"}},
                     "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                     "resources": {"requests": {"cpu": "100m"}}}
        }),
    )
    .await;
    let cdc = apply(&cdcs, cdc_source("orders", &slot, json!({}))).await;

    // Children, owner references, labels, security contexts.
    let d = deployment(client, ns, "shop-worker").await;
    assert_owned_and_labelled(&d, &ip.uid().unwrap_or_default(), "shop");
    assert_hardened(&d);
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    // The Deployment is applied before its Service, so wait for each child rather than read once.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = wait_for("Service shop-worker", T, || async {
        services.get_opt("shop-worker").await.ok().flatten()
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let config = wait_for("ConfigMap shop-worker-config", T, || async {
        config_maps
            .get_opt("shop-worker-config")
            .await
            .ok()
            .flatten()
    })
    .await;
    for (kind_name, meta) in [
        ("Service shop-worker", service.metadata),
        ("ConfigMap shop-worker-config", config.metadata),
    ] {
        assert!(
            meta.owner_references.is_some_and(|o| !o.is_empty()),
            "{kind_name} owned"
        );
    }
    let rd = deployment(client, ns, "view-read").await;
    assert_owned_and_labelled(&rd, &rm.uid().unwrap_or_default(), "view");
    assert_hardened(&rd);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let hpa = wait_for("HPA view-read", T, || async {
        hpas.get_opt("view-read").await.ok().flatten()
    })
    .await;
    assert_owned_and_labelled(&hpa, &rm.uid().unwrap_or_default(), "view");
    let metrics = hpa.spec.and_then(|s| s.metrics).unwrap_or_default();
    assert!(
        !metrics.is_empty()
            && metrics
                .iter()
                .all(|m| m.resource.as_ref().is_some_and(|r| r.name == "cpu")),
        "the HPA scales on CPU only: {metrics:?}"
    );
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    let pdb = wait_for("PDB view-read", T, || async {
        pdbs.get_opt("view-read").await.ok().flatten()
    })
    .await;
    assert_owned_and_labelled(&pdb, &rm.uid().unwrap_or_default(), "view");
    let cd = deployment(client, ns, "orders-cdc").await;
    assert_owned_and_labelled(&cd, &cdc.uid().unwrap_or_default(), "orders");
    assert_hardened(&cd);
    assert_eq!(
        cd.spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.clone())
            .as_deref(),
        Some("Recreate"),
        "one slot has one reader"
    );

    // Status and kubectl.
    reconciled(&pipelines, "shop").await;
    let rm = reconciled(&models, "view").await;
    assert_eq!(
        rm.status
            .and_then(|s| s.resolved_topics)
            .map(|t| t.products)
            .as_deref(),
        Some("products"),
        "topics resolved through pipelineRef"
    );
    let cdc = reconciled(&cdcs, "orders").await;
    let facts = cdc
        .status
        .and_then(|s| s.slot)
        .expect("slot facts in status");
    assert!(facts.exists, "the operator created slot {slot}");
    let table = run("kubectl", &["get", "kartflow", "-n", ns]);
    for want in [
        "inventorypipeline.kartflow.io/shop",
        "readmodel.kartflow.io/view",
        "cdcsource.kartflow.io/orders",
        "PHASE",
        "PARALLELISM",
        "RETAINED",
    ] {
        assert!(
            table.contains(want),
            "kubectl get kartflow shows {want}:\n{table}"
        );
    }
    eprintln!("kubectl get kartflow -n {ns}:\n{table}");

    // Spec changes reach the children.
    pipelines
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"parallelism": 3}})),
        )
        .await
        .expect("scaling the pipeline");
    let dapi: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for("shop-worker scaled to 3", T, || async {
        (dapi.get("shop-worker").await.ok()?.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    models
        .patch(
            "view",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {"enabled": false}, "replicas": 1}})),
        )
        .await
        .expect("turning autoscaling off");
    wait_for("HPA view-read removed and replicas 1", T, || async {
        let gone = hpas.get_opt("view-read").await.ok()?.is_none();
        let replicas = dapi.get("view-read").await.ok()?.spec?.replicas;
        (gone && replicas == Some(1)).then_some(())
    })
    .await;

    // A missing bootstrap ConfigMap is reported by name, and picked up once it exists.
    apply(
        &pipelines,
        json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "needs-products"},
            "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": kafka}, "suspend": true,
                     "bootstrapProducts": {"name": "products", "key": "products.json"}}
        }),
    )
    .await;
    wait_for(
        "needs-products reports the missing ConfigMap",
        T,
        || async {
            let s = pipelines.get("needs-products").await.ok()?.status?;
            s.common
                .conditions
                .iter()
                .any(|c| {
                    c.type_ == "Reconciled"
                        && c.reason == "DependencyMissing"
                        && c.message.contains("spec.bootstrapProducts")
                })
                .then_some(())
        },
    )
    .await;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "products"},
               "data": {"products.json": "[]"}}),
    )
    .await;
    reconciled(&pipelines, "needs-products").await;
    deployment(client, ns, "needs-products-worker").await;

    // Deleting a CR removes its children (garbage collection through owner references).
    pipelines
        .delete("shop", &DeleteParams::background())
        .await
        .expect("deleting shop");
    wait_for("shop-worker garbage-collected", T, || async {
        dapi.get_opt("shop-worker")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The read model now points at a missing pipeline: said in status, not retried hot.
    wait_for("view reports PipelineNotFound", T, || async {
        let rm = models.get("view").await.ok()?;
        rm.status?
            .common
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciled" && c.reason == "PipelineNotFound")
            .then_some(())
    })
    .await;
    let leader = leader_pod(client, SYSTEM_NS).await;
    let not_found = || {
        metric(
            &metrics_of(&leader),
            "kartflow_operator_reconcile_errors_total",
            &[("kind", "ReadModel"), ("reason", "PipelineNotFound")],
        )
    };
    let before = not_found();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tries = not_found() - before;
    assert!(
        tries <= 1.0,
        "a missing pipeline is checked again after a minute, not retried hot: {tries} tries in 6 s"
    );
    models
        .delete("view", &DeleteParams::foreground())
        .await
        .expect("deleting view");
    cdcs.delete("orders", &DeleteParams::default())
        .await
        .expect("deleting orders");
    wait_for(
        "CdcSource orders finalized and its slot dropped",
        T,
        || async {
            let gone = cdcs.get_opt("orders").await.ok()?.is_none();
            (gone && !slot_exists(&slot).await).then_some(())
        },
    )
    .await;
}

async fn pg_secret(client: &Client, ns: &str) {
    let url = url_parts();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    apply(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg"},
               "stringData": {"username": url.user, "password": url.password}}),
    )
    .await;
}

struct PgUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
    database: String,
}

fn url_parts() -> PgUrl {
    let url = stack::settings().database_url;
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .expect("postgres URL");
    let (auth, hostpart) = rest
        .split_once('@')
        .expect("user:password@ in DATABASE_URL");
    let (user, password) = auth.split_once(':').expect("user:password");
    let (hostport, database) = hostpart.split_once('/').expect("/database");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    PgUrl {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.parse().expect("port"),
        database: database.split('?').next().unwrap_or(database).into(),
    }
}

fn cdc_source(name: &str, slot: &str, guard: serde_json::Value) -> serde_json::Value {
    let pg = url_parts();
    let table = format!("{slot}_t");
    let mut spec = json!({
        "image": "kartflow/worker:dev",
        "postgres": {"host": pg.host, "port": pg.port, "database": pg.database,
                     "credentialsSecretRef": {"name": "pg"}, "sslMode": "disable"},
        "publication": {"name": format!("{slot}_pub"), "tables": [format!("public.{table}")]},
        "slot": {"name": slot},
        "kafka": {"bootstrapServers": stack::settings().kafka_bootstrap},
    });
    if guard.as_object().is_some_and(|g| !g.is_empty()) {
        spec["guard"] = guard;
    }
    json!({"apiVersion": "kartflow.io/v1alpha1", "kind": "CdcSource", "metadata": {"name": name}, "spec": spec})
}

async fn slot_exists(slot: &str) -> bool {
    let pg = stack::postgres().await;
    pg.query_opt(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("reading pg_replication_slots")
    .is_some()
}

/// Writes at least `mib` MiB of WAL (rows into a scratch table).
async fn generate_wal(mib: u32) {
    let pg = stack::postgres().await;
    let table = stack::unique_name("e2e_wal");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int, pad text);
         INSERT INTO {table} SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, {}) g;
         DROP TABLE {table};",
        mib * 1024
    ))
    .await
    .expect("generating WAL");
}

/// The published tables this run created (their names carry the test's process id).
async fn drop_tables_of_this_run() {
    let pg = stack::postgres().await;
    let mark = format!("%\\_{}\\_%", std::process::id());
    let rows = pg
        .query(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'e2e\\_%' AND tablename LIKE $1",
            &[&mark],
        )
        .await
        .expect("listing test tables");
    for row in rows {
        let table: String = row.get(0);
        pg.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .expect("dropping a test table");
    }
}

async fn prepare_table(slot: &str) {
    let pg = stack::postgres().await;
    pg.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {slot}_t (id int primary key)"
    ))
    .await
    .expect("creating the published table");
}

async fn events_for(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

const GUARD: &str =
    r#"{"checkInterval": "2s", "warnRetainedWal": "8Mi", "dropRetainedWal": "16Mi"}"#;

fn guard(extra: serde_json::Value) -> serde_json::Value {
    let mut g: serde_json::Value = serde_json::from_str(GUARD).expect("guard json");
    if let (Some(g), Some(extra)) = (g.as_object_mut(), extra.as_object()) {
        g.extend(extra.clone());
    }
    g
}

/// Waits for the slot to be created by the operator and reported in status.
async fn slot_reported(cdcs: &Api<CdcSource>, name: &str) {
    wait_for(&format!("{name}: slot created and reported"), T, || async {
        let s = cdcs.get(name).await.ok()?.status?;
        s.slot.filter(|f| f.exists).map(|_| ())
    })
    .await;
}

async fn slot_guard(client: &Client, system: &str, ns: &str) {
    let cdcs: Api<CdcSource> = Api::namespaced(client.clone(), ns);
    let check_interval = Duration::from_secs(2);

    // 1. No reader, WAL past the drop threshold: dropped within one check interval.
    let slot = stack::unique_name("e2e_guard_drop");
    prepare_table(&slot).await;
    apply(&cdcs, cdc_source("guard-drop", &slot, guard(json!({})))).await;
    slot_reported(&cdcs, "guard-drop").await;
    // Below the drop threshold first; the clock starts before the write that crosses it, so
    // the figure is an upper bound of crossing -> drop.
    generate_wal(12).await;
    let t0 = Instant::now();
    generate_wal(12).await;
    let drop = wait_for("guard-drop: lastDrop in status", T, || async {
        // Recorded as Pending before the DROP, then with its outcome.
        let d = cdcs.get("guard-drop").await.ok()?.status?.last_drop?;
        (d.outcome.as_deref() != Some("Pending")).then_some(d)
    })
    .await;
    let took = t0.elapsed();
    eprintln!(
        "MEASURE slot guard: WAL past threshold -> slot dropped in {took:.1?} (check interval {check_interval:?})"
    );
    assert!(
        took <= check_interval + Duration::from_secs(2),
        "dropped within one check interval of crossing the threshold (+ 2 s for the write and \
         the reconcile): {took:?}"
    );
    assert!(
        drop.retained_bytes >= 16 << 20,
        "status records the retained bytes: {drop:?}"
    );
    assert!(
        !slot_exists(&slot).await,
        "slot {slot} is gone from PostgreSQL"
    );
    assert!(
        !events_for(client, ns, "guard-drop", "SlotDropped")
            .await
            .is_empty(),
        "a SlotDropped Event"
    );
    let leader = leader_pod(client, system).await;
    assert_eq!(
        metric(
            &metrics_of(&leader),
            "kartflow_operator_slot_guard_drops_total",
            &[("name", "guard-drop"), ("namespace", ns)]
        ),
        1.0,
        "the drop is counted"
    );
    assert_eq!(
        (drop.cause.as_deref(), drop.outcome.as_deref()),
        (Some("ReaderGone"), Some("Dropped")),
        "{drop:?}"
    );
    // Until acknowledged, the worker is stopped and the slot stays gone, whatever else changes.
    let dapi: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for("guard-drop: the CDC worker scaled to 0", T, || async {
        let d = dapi.get("guard-drop-cdc").await.ok()?;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    cdcs.patch(
        "guard-drop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"guard": {"checkInterval": "3s"}}})),
    )
    .await
    .expect("an unrelated spec change");
    tokio::time::sleep(check_interval * 3).await;
    assert!(
        !slot_exists(&slot).await,
        "only spec.slot.recreateNonce acknowledges a drop: {slot} stays gone"
    );
    cdcs.patch(
        "guard-drop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"slot": {"recreateNonce": 1}}})),
    )
    .await
    .expect("acknowledge the drop");
    wait_for("guard-drop: slot recreated, worker back", T, || async {
        let d = dapi.get("guard-drop-cdc").await.ok()?;
        (slot_exists(&slot).await && d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    cdcs.delete("guard-drop", &DeleteParams::default())
        .await
        .expect("delete");

    // 2. A connected reader that stops confirming (SIGSTOP) is stuck past maxUnconfirmed: its
    //    backend is terminated first, then the slot is dropped.
    let slot = stack::unique_name("e2e_guard_active");
    prepare_table(&slot).await;
    apply(
        &cdcs,
        cdc_source(
            "guard-active",
            &slot,
            guard(json!({"maxUnconfirmed": "4s"})),
        ),
    )
    .await;
    slot_reported(&cdcs, "guard-active").await;
    let mut reader = Reader::start(&slot);
    wait_for("the reader is streaming from the slot", T, || async {
        let pg = stack::postgres().await;
        pg.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .ok()?
        .map(|_| ())
    })
    .await;
    reader.pause();
    generate_wal(24).await;
    let drop = wait_for("guard-active: lastDrop in status", T, || async {
        let d = cdcs.get("guard-active").await.ok()?.status?.last_drop?;
        (d.outcome.as_deref() != Some("Pending")).then_some(d)
    })
    .await;
    assert!(
        !slot_exists(&slot).await,
        "the active slot {slot} was dropped"
    );
    assert_eq!(drop.cause.as_deref(), Some("ReaderStuck"), "{drop:?}");
    let events = events_for(client, ns, "guard-active", "SlotDropped").await;
    assert!(
        events
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains("terminated"))),
        "the Event says the reader was terminated first: {events:?} / {drop:?}"
    );
    reader.stop();
    cdcs.delete("guard-active", &DeleteParams::default())
        .await
        .expect("delete");

    // 3. action alert: warned, never dropped.
    let slot = stack::unique_name("e2e_guard_alert");
    prepare_table(&slot).await;
    apply(
        &cdcs,
        cdc_source("guard-alert", &slot, guard(json!({"action": "alert"}))),
    )
    .await;
    slot_reported(&cdcs, "guard-alert").await;
    generate_wal(24).await;
    wait_for(
        "guard-alert: DropThresholdExceeded condition",
        T,
        || async {
            let s = cdcs.get("guard-alert").await.ok()?.status?;
            s.common
                .conditions
                .iter()
                .any(|c| c.type_ == "SlotHealthy" && c.reason == "DropThresholdExceeded")
                .then_some(())
        },
    )
    .await;
    // One connection per source, kept across checks (not a login per check).
    let guard_backends = || async {
        let pg = stack::postgres().await;
        pg.query(
            "SELECT backend_start::text FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("kartflow-slot-guard {ns}/guard-alert")],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
    };
    let before = guard_backends().await;
    tokio::time::sleep(check_interval * 2).await;
    assert!(slot_exists(&slot).await, "action alert never drops {slot}");
    let after = guard_backends().await;
    assert!(
        before.len() == 1 && before == after,
        "the guard reuses one connection per source across checks: {before:?} then {after:?}"
    );

    // 4. An unowned slot (it existed before the CdcSource) is untouched, also on delete.
    let unowned = stack::unique_name("e2e_guard_unowned");
    prepare_table(&unowned).await;
    {
        let pg = stack::postgres().await;
        pg.query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&unowned],
        )
        .await
        .expect("creating a slot by hand");
    }
    apply(
        &cdcs,
        cdc_source("guard-unowned", &unowned, guard(json!({}))),
    )
    .await;
    slot_reported(&cdcs, "guard-unowned").await;
    generate_wal(24).await;
    wait_for("guard-unowned: SlotNotOwned Event", T, || async {
        (!events_for(client, ns, "guard-unowned", "SlotNotOwned")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(
        slot_exists(&unowned).await,
        "the unowned slot survives the guard"
    );
    cdcs.delete("guard-unowned", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("guard-unowned finalized", T, || async {
        cdcs.get_opt("guard-unowned")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        slot_exists(&unowned).await,
        "deleting the CdcSource leaves the unowned slot"
    );
    stack::postgres()
        .await
        .query_one("SELECT pg_drop_replication_slot($1)", &[&unowned])
        .await
        .expect("dropping the hand-made slot");

    // 5. Deleting the CdcSource drops its (owned) slot.
    cdcs.delete("guard-alert", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("guard-alert finalized and its slot dropped", T, || async {
        let gone = cdcs.get_opt("guard-alert").await.ok()?.is_none();
        (gone && !slot_exists(&slot).await).then_some(())
    })
    .await;
}

/// A leader paused (SIGSTOP) past its lease between recording a drop as `Pending` and the
/// `DROP` must not drop once it resumes: the standby that took over finds the slot intact and
/// closes the record as `Abandoned`, and the resumed process re-checks the Lease before acting.
async fn paused_leader_does_not_drop(client: &Client, system: &str, ns: &str) {
    let cdcs: Api<CdcSource> = Api::namespaced(client.clone(), ns);
    let slot = stack::unique_name("e2e_guard_paused");
    prepare_table(&slot).await;
    let mut source = cdc_source("guard-paused", &slot, guard(json!({})));
    // The debug build's hook holds the decided drop for 5 s, long enough to stop the process
    // inside that window.
    source["metadata"]["annotations"] = json!({"kartflow.io/debug-pause-before-drop": "5s"});
    apply(&cdcs, source).await;
    slot_reported(&cdcs, "guard-paused").await;
    let leader = leader_pod(client, system).await;
    let old_holder = lease_holder(client, system).await.expect("a holder");
    let pid = pid_of(&leader.name_any());
    generate_wal(24).await;
    wait_for("guard-paused: the drop recorded as Pending", T, || async {
        let d = cdcs.get("guard-paused").await.ok()?.status?.last_drop?;
        (d.outcome.as_deref() == Some("Pending")).then_some(())
    })
    .await;
    signal(pid, "STOP");
    let resume = Resume(pid);
    // While the leader is stopped a reader comes back: dropping now would kill a healthy one.
    let mut reader = Reader::start(&slot);
    let new_holder = wait_for(
        "the standby takes the Lease from the stopped leader",
        Duration::from_secs(LEASE_SECONDS * 3),
        || async {
            lease_holder(client, system)
                .await
                .filter(|h| *h != old_holder)
        },
    )
    .await;
    let abandoned = wait_for(
        "guard-paused: the new leader closes the drop",
        T,
        || async {
            let d = cdcs.get("guard-paused").await.ok()?.status?.last_drop?;
            (d.outcome.as_deref() == Some("Abandoned")).then_some(d)
        },
    )
    .await;
    assert_eq!(
        abandoned.cause.as_deref(),
        Some("ReaderGone"),
        "{abandoned:?}"
    );
    drop(resume);
    // The resumed process is past its pause and its lease: give it time to (wrongly) act.
    tokio::time::sleep(LEASE_SECONDS_DURATION).await;
    assert!(
        slot_exists(&slot).await,
        "the resumed old leader did not drop {slot} (the Lease is held by {new_holder})"
    );
    let last = cdcs
        .get("guard-paused")
        .await
        .expect("get guard-paused")
        .status
        .and_then(|s| s.last_drop);
    assert_eq!(
        last.and_then(|d| d.outcome),
        Some("Abandoned".to_owned()),
        "the old leader wrote no outcome after resuming"
    );
    assert!(
        !events_for(client, ns, "guard-paused", "SlotDropAbandoned")
            .await
            .is_empty(),
        "a SlotDropAbandoned Event"
    );
    reader.stop();
    cdcs.delete("guard-paused", &DeleteParams::default())
        .await
        .expect("delete");
    // Gone before the next scenario counts reconcile errors: a check of a source being
    // finalized would race its deletion.
    wait_for("guard-paused finalized", T, || async {
        cdcs.get_opt("guard-paused")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The old leader exits on resuming and restarts as a standby; the failover test needs it.
    wait_for(
        "both operator replicas Ready again",
        Duration::from_secs(90),
        || async {
            let pods = operator_pods(client, system).await;
            (pods.len() == 2 && pods.iter().all(pod_ready)).then_some(())
        },
    )
    .await;
}

const LEASE_SECONDS_DURATION: Duration = Duration::from_secs(LEASE_SECONDS);

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Continues a stopped process when dropped, so a failed assertion never leaves it stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// `pg_recvlogical` streaming from a slot: the "active reader" of the guard scenarios.
struct Reader(Option<std::process::Child>);

impl Reader {
    fn start(slot: &str) -> Self {
        let pg = url_parts();
        let bin = [
            "/usr/lib/postgresql/15/bin/pg_recvlogical",
            "pg_recvlogical",
        ]
        .into_iter()
        .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
        .unwrap_or("pg_recvlogical");
        let child = Command::new(bin)
            .args([
                "--start",
                "--no-loop",
                "-S",
                slot,
                "-f",
                "/dev/null",
                "-o",
                "proto_version=1",
            ])
            .args(["-o", &format!("publication_names={slot}_pub")])
            .args([
                "-h",
                &pg.host,
                "-p",
                &pg.port.to_string(),
                "-U",
                &pg.user,
                "-d",
                &pg.database,
            ])
            .env("PGPASSWORD", &pg.password)
            .spawn()
            .unwrap_or_else(|e| panic!("starting pg_recvlogical ({bin}): {e}"));
        Self(Some(child))
    }

    /// Stops the process without closing its connection: the slot stays active but stops
    /// confirming, so retained WAL grows.
    fn pause(&self) {
        if let Some(c) = &self.0 {
            signal(c.id(), "STOP");
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

async fn latency_and_memory(client: &Client, system: &str, ns: &str) {
    const N: usize = 100;
    let leader = leader_pod(client, system).await;
    let before = metrics_of(&leader);
    let pipelines: Api<InventoryPipeline> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let kafka = stack::settings().kafka_bootstrap;
    // A watch records when each Deployment appears, while this task creates the pipelines:
    // the latency is request sent -> Deployment visible to a client.
    let appeared: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let watch = {
        let appeared = appeared.clone();
        let cfg = watcher::Config::default().labels("app.kubernetes.io/component=inventory");
        tokio::spawn(async move {
            let mut events = watcher::watcher(deployments, cfg).boxed();
            while let Some(Ok(ev)) = events.next().await {
                if let watcher::Event::Apply(d) | watcher::Event::InitApply(d) = ev
                    && let Ok(mut a) = appeared.lock()
                {
                    a.entry(d.name_any()).or_insert_with(Instant::now);
                }
            }
        })
    };
    // The watch must be running before the first create.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
    let t0 = Instant::now();
    for i in 0..N {
        let name = format!("load-{i:03}");
        // suspend: the Deployments have 0 replicas, so this measures the operator, not pods.
        let body: InventoryPipeline = serde_json::from_value(json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": name},
            "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": kafka}, "suspend": true}
        }))
        .expect("pipeline");
        sent.insert(format!("{name}-worker"), Instant::now());
        pipelines
            .create(&PostParams::default(), &body)
            .await
            .expect("create");
    }
    let seen: BTreeMap<String, Duration> = wait_for(
        &format!("a Deployment for each of the {N} pipelines"),
        T,
        || async {
            let a = appeared.lock().ok()?;
            let seen: BTreeMap<String, Duration> = sent
                .iter()
                .filter_map(|(n, t)| Some((n.clone(), a.get(n)?.saturating_duration_since(*t))))
                .collect();
            (seen.len() == N).then_some(seen)
        },
    )
    .await;
    watch.abort();
    let mut lat: Vec<Duration> = seen.values().copied().collect();
    lat.sort();
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
    eprintln!(
        "MEASURE apply->Deployment over {N} InventoryPipelines: p50 {p50:.0?} p99 {p99:.0?} max {max:.0?} (all {N} created in {:.1?})",
        t0.elapsed()
    );
    // Let the burst settle (status writes, owned-object events), then measure memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(pid_of(&leader.name_any()));
    eprintln!(
        "MEASURE operator RSS with {N} InventoryPipelines: {:.1} MiB",
        rss as f64 / 1024.0
    );
    assert!(
        rss < 50 * 1024,
        "operator RSS with {N} resources under the 50 MiB target: {rss} KiB"
    );
    let after = metrics_of(&leader);
    let count = |text: &str, result: &str| {
        metric(
            text,
            "kartflow_operator_reconciles_total",
            &[("result", result)],
        )
    };
    let reconciles = count(&after, "ok") + count(&after, "error") + count(&after, "invalid")
        - count(&before, "ok")
        - count(&before, "error")
        - count(&before, "invalid");
    let errors = count(&after, "error") - count(&before, "error");
    eprintln!("MEASURE reconcile errors during the load: {errors} of {reconciles} reconciles");
    let secs = metric(
        &after,
        "kartflow_operator_reconcile_duration_seconds_sum",
        &[("kind", "InventoryPipeline")],
    ) - metric(
        &before,
        "kartflow_operator_reconcile_duration_seconds_sum",
        &[("kind", "InventoryPipeline")],
    );
    let n = metric(
        &after,
        "kartflow_operator_reconcile_duration_seconds_count",
        &[("kind", "InventoryPipeline")],
    ) - metric(
        &before,
        "kartflow_operator_reconcile_duration_seconds_count",
        &[("kind", "InventoryPipeline")],
    );
    eprintln!(
        "MEASURE InventoryPipeline reconciles during the load: {n}, mean {:.0} ms",
        1000.0 * secs / n.max(1.0)
    );
    // The target is 1 s; the assertion leaves room for a loaded 2-core machine and catches
    // regressions, the figure itself goes into docs/operator.md.
    assert!(
        p99 < Duration::from_secs(2),
        "apply -> Deployment p99 under 2 s (target 1 s): {p99:?}"
    );
    let by_reason: Vec<&str> = after
        .lines()
        .filter(|l| l.starts_with("kartflow_operator_reconcile_errors_total"))
        .collect();
    assert_eq!(
        errors, 0.0,
        "no reconcile errors under load; errors so far: {by_reason:#?}"
    );
    pipelines
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .expect("deleting the load pipelines");
}

async fn failover(client: &Client, system: &str, ns: &str) {
    let leader = leader_pod(client, system).await;
    let old = lease_holder(client, system).await.expect("a holder");
    let pid = pid_of(&leader.name_any());
    signal(pid, "KILL");
    let t0 = Instant::now();
    let new = wait_for(
        "another replica takes the Lease",
        Duration::from_secs(LEASE_SECONDS * 3),
        || async { lease_holder(client, system).await.filter(|h| *h != old) },
    )
    .await;
    let took = t0.elapsed();
    eprintln!("MEASURE failover after SIGKILL of the leader: {took:.1?} (lease {LEASE_SECONDS} s)");
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + 2),
        "{new} took over within the lease duration: {took:?}"
    );
    // The new leader reconciles.
    let pipelines: Api<InventoryPipeline> = Api::namespaced(client.clone(), ns);
    apply(
        &pipelines,
        json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "after-failover"},
            "spec": {"image": "kartflow/worker:dev", "kafka": {"bootstrapServers": stack::settings().kafka_bootstrap}, "suspend": true}
        }),
    )
    .await;
    deployment(client, ns, "after-failover-worker").await;
}
