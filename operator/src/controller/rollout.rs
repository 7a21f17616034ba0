//! How far a worker Deployment has rolled out, as the phases and Ready conditions need it.

use k8s_openapi::api::apps::v1::Deployment;

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
