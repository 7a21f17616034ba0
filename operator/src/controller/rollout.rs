//! How far a worker Deployment has rolled out, as the phases and Ready conditions need it, and
//! why its workers fail when they crash-loop.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::status::{Cond, READY};

/// How soon to look again while workers are not all ready: a crash loop does not change the
/// Deployment's status after the first failure, so nothing else would trigger a reconcile.
pub(crate) const NOT_READY_RECHECK: Duration = Duration::from_secs(15);

/// A worker container that keeps failing, with its own last words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerFailure {
    pub pod: String,
    pub restarts: i32,
    pub exit_code: Option<i32>,
    /// The last line of its termination message (the worker prints its error last).
    pub message: Option<String>,
}

impl WorkerFailure {
    /// `Ready=False` with the worker's error, for the CR.
    pub(crate) fn condition(&self) -> Cond {
        let exit = self
            .exit_code
            .map(|c| format!(", last exit code {c}"))
            .unwrap_or_default();
        let why = self
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_else(|| format!("; see kubectl logs {} --previous", self.pod));
        Cond::new(
            READY,
            false,
            "WorkerCrashLooping",
            format!(
                "worker pod {} keeps failing ({} restarts{exit}){why}",
                self.pod, self.restarts
            ),
        )
    }
}

/// The first pod whose worker container has failed and restarted, from the newest state the
/// node reports: the current termination, or the last one while it waits to restart.
pub(crate) fn crash_loop(pods: &[Pod]) -> Option<WorkerFailure> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| {
            let terminated = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
            (c.restart_count > 0 && terminated.exit_code != 0).then(|| WorkerFailure {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                restarts: c.restart_count,
                exit_code: Some(terminated.exit_code),
                message: terminated
                    .message
                    .as_deref()
                    .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
                    .map(|l| l.trim().chars().take(512).collect()),
            })
        })
    })
}

/// `Ready=False` with the workers' own error when the Deployment's workers crash-loop. Only
/// asked while some replica is unavailable, so a healthy rollout costs no pod list.
pub(crate) async fn crash_condition(
    client: &kube::Client,
    d: &Deployment,
) -> Result<Option<Cond>, kube::Error> {
    let unavailable = d
        .status
        .as_ref()
        .and_then(|s| s.unavailable_replicas)
        .unwrap_or(0);
    let selector: Option<&BTreeMap<String, String>> = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref());
    let (Some(ns), Some(selector)) = (d.metadata.namespace.as_deref(), selector) else {
        return Ok(None);
    };
    if unavailable == 0 {
        return Ok(None);
    }
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods.list(&ListParams::default().labels(&labels)).await?;
    Ok(crash_loop(&listed.items).map(|f| f.condition()))
}

/// How far a worker Deployment has rolled out: `(ready, replicas, done)`. Done means the
/// Deployment controller has seen the latest template and every replica runs it and is ready,
/// so a restart in progress is not reported as Running on the old pods.
pub(crate) fn rollout(d: &Deployment, desired: i32) -> (i32, i32, bool) {
    let st = d.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let observed = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let done = observed
        && updated == desired
        && ready >= desired
        && replicas == desired
        && st.unavailable_replicas.unwrap_or(0) == 0;
    (ready, replicas, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, container: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [container]},
        }))
        .expect("pod")
    }

    #[test]
    fn crash_loops_are_found_with_the_workers_last_line() {
        let looping = pod(
            "shop-worker-1",
            serde_json::json!({
                "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1,
                    "message": "{\"level\":\"ERROR\"}\nkartflow-worker inventory: topics product-updates (2) and order-events (3) are not co-partitioned\n"}}
            }),
        );
        let healthy = pod(
            "shop-worker-0",
            serde_json::json!({"name": "worker", "image": "w", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}),
        );
        let f = crash_loop(&[healthy.clone(), looping]).expect("found");
        assert_eq!(
            f,
            WorkerFailure {
                pod: "shop-worker-1".into(),
                restarts: 3,
                exit_code: Some(1),
                message: Some(
                    "kartflow-worker inventory: topics product-updates (2) and order-events (3) \
                     are not co-partitioned"
                        .into()
                ),
            }
        );
        let c = f.condition();
        assert_eq!((c.ok, c.reason.as_str()), (false, "WorkerCrashLooping"));
        assert!(
            c.message.starts_with("worker pod shop-worker-1 keeps failing (3 restarts, last exit code 1): kartflow-worker inventory: topics"),
            "{}",
            c.message
        );
        assert_eq!(crash_loop(&[healthy]), None);
        let silent = pod(
            "p",
            serde_json::json!({"name": "worker", "image": "w", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"terminated": {"exitCode": 2}}}),
        );
        let f = crash_loop(&[silent]).expect("found");
        assert!(
            f.condition()
                .message
                .ends_with("see kubectl logs p --previous"),
            "{f:?}"
        );
        let clean_exit = pod(
            "q",
            serde_json::json!({"name": "worker", "image": "w", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"terminated": {"exitCode": 0}}}),
        );
        assert_eq!(
            crash_loop(&[clean_exit]),
            None,
            "a clean exit is not a crash"
        );
    }

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": generation},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn rollout_is_done_only_on_the_latest_template() {
        let cases = [
            // (generation, status, desired, done)
            (
                2,
                serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
                2,
                true,
            ),
            // the controller has not seen the new template yet: old pods are still ready
            (
                3,
                serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
                2,
                false,
            ),
            // new template seen, old pods not replaced yet
            (
                3,
                serde_json::json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 0, "readyReplicas": 2}),
                2,
                false,
            ),
            // new pods starting
            (
                3,
                serde_json::json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "unavailableReplicas": 1}),
                2,
                false,
            ),
            // suspended: nothing runs
            (4, serde_json::json!({"observedGeneration": 4}), 0, true),
        ];
        for (generation, status, desired, done) in cases {
            let d = deployment(generation, status.clone());
            assert_eq!(rollout(&d, desired).2, done, "{generation} {status}");
        }
    }
}
