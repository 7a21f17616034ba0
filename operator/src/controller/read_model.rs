//! `ReadModel` → ConfigMap, Deployment, Service, PodDisruptionBudget and (with autoscaling) a
//! CPU HorizontalPodAutoscaler. A `pipelineRef` is followed: a change of the referenced
//! `InventoryPipeline` (its Kafka connection or topics) reconciles the read models using it.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerStatus};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::rollout::{self, rollout};
use super::status::{Cond, READY, reconciled};
use super::trigger::{api, controller_for};
use super::{Context, Error, apply};
use crate::children::{self, BuildError, FIELD_MANAGER};
use crate::crd::{InventoryPipeline, ReadModel, ReadModelStatus};

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<ReadModel> {
    let controller = controller_for::<ReadModel>(client, ns, &children);
    let store = controller.store();
    // The HPA's status changes at every sync (metrics, times): only a changed replica count is
    // news to the read model's status.
    let hpas = watcher::watcher(api::<HorizontalPodAutoscaler>(client, ns), children.clone())
        .default_backoff()
        .applied_objects()
        .predicate_filter(hpa_replicas, Default::default());
    // Only a pipeline's spec (Kafka connection, topics) and its deletion matter to the read
    // models using it, not its status writes.
    let mut seen = PipelineGenerations::default();
    let pipelines = watcher::watcher(
        api::<InventoryPipeline>(client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .try_filter_map(move |event| std::future::ready(Ok(seen.relevant(event))));
    controller
        .owns(api::<PodDisruptionBudget>(client, ns), children)
        .owns_stream(hpas)
        .watches_stream(pipelines, move |pipeline| {
            let ns = pipeline.namespace();
            let name = pipeline.name_any();
            store
                .state()
                .into_iter()
                .filter(|rm| {
                    rm.namespace() == ns
                        && rm.spec.source.pipeline_ref.as_ref().map(|r| &r.name) == Some(&name)
                })
                .map(|rm| ObjectRef::from_obj(rm.as_ref()))
                .collect::<Vec<_>>()
        })
}

/// The generation of every pipeline seen, to pass on spec changes and deletions only.
#[derive(Default)]
struct PipelineGenerations(std::collections::HashMap<(Option<String>, String), Option<i64>>);

impl PipelineGenerations {
    fn relevant(&mut self, event: watcher::Event<InventoryPipeline>) -> Option<InventoryPipeline> {
        match event {
            // A deleted pipeline always matters: its read models must say it is gone.
            watcher::Event::Delete(p) => {
                self.0.remove(&(p.namespace(), p.name_any()));
                Some(p)
            }
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                let generation = p.metadata.generation;
                let before = self.0.insert((p.namespace(), p.name_any()), generation);
                (before != Some(generation)).then_some(p)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        }
    }
}

/// What of an HPA the read model reflects: its spec, the replica counts it decided and its CPU
/// reading in steps of 10 percentage points (a sync that moves it by a point is not news).
fn hpa_replicas(h: &HorizontalPodAutoscaler) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    h.metadata.generation.hash(&mut hash);
    let status = h.status.as_ref();
    status.map(|s| s.desired_replicas).hash(&mut hash);
    status.and_then(|s| s.current_replicas).hash(&mut hash);
    status
        .and_then(|s| cpu_reading(s).0)
        .map(|u| u / 10)
        .hash(&mut hash);
    Some(hash.finish())
}

/// The HPA's last CPU reading: average utilisation in percent of the request and the average
/// per replica as a quantity.
fn cpu_reading(s: &HorizontalPodAutoscalerStatus) -> (Option<i32>, Option<String>) {
    s.current_metrics
        .iter()
        .flatten()
        .filter_map(|m| m.resource.as_ref())
        .find(|r| r.name == "cpu")
        .map(|r| {
            (
                r.current.average_utilization,
                r.current.average_value.as_ref().map(|q| q.0.clone()),
            )
        })
        .unwrap_or_default()
}

/// Field manager that holds `spec.replicas` while it passes from the operator to the HPA.
pub(crate) const REPLICAS_HANDOVER_MANAGER: &str = "kartflow-operator-replicas-handover";

/// With autoscaling, the replicas to hand over before the operator's apply leaves `spec.replicas`
/// out: the Deployment's current count while the operator's field manager still owns the field.
/// Under server-side apply, a field its only owner stops applying is removed, and a Deployment
/// without `replicas` defaults to 1: 3 serving replicas would drop to 1 until the HPA's next
/// sync. A second manager applying the same count first keeps the field (and the value); the
/// HPA's scale updates then take it over.
pub(crate) fn replicas_to_hand_over(stored: &Deployment) -> Option<i32> {
    let ours = stored
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .any(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
        });
    ours.then(|| stored.spec.as_ref().and_then(|s| s.replicas))
        .flatten()
}

/// Applies `spec.replicas = replicas` alone with [`REPLICAS_HANDOVER_MANAGER`].
async fn hand_over_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
    });
    api.patch(
        name,
        &PatchParams::apply(REPLICAS_HANDOVER_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// The phase and Ready condition of a read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub phase: &'static str,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Ready means at least `floor` replicas caught up and serving on the current template: every
/// desired replica without autoscaling, `minReplicas` with it (a scale-up in progress is not an
/// outage). `current`: the Deployment controller has seen the latest spec and no replica of an
/// older template is left. `None` when not ready for another reason than a crash (the caller
/// then looks for a crash loop).
pub(crate) fn readiness(ready: i32, desired: i32, floor: i32, current: bool) -> Option<Readiness> {
    if desired == 0 {
        return Some(Readiness {
            phase: "Idle",
            ready: false,
            reason: "ScaledToZero",
            message: "no replicas requested".into(),
        });
    }
    if current && ready >= floor {
        let message = if floor < desired {
            format!("{ready}/{desired} replicas caught up and serving (at least {floor} needed)")
        } else {
            format!("{ready}/{desired} replicas caught up and serving")
        };
        return Some(Readiness {
            phase: "Running",
            ready: true,
            reason: "ReplicasReady",
            message,
        });
    }
    None
}

/// The latest template has rolled out to every replica there is (not necessarily all ready).
fn template_current(d: &Deployment) -> bool {
    let st = d.status.clone().unwrap_or_default();
    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) >= st.replicas.unwrap_or(0)
}

#[tracing::instrument(skip_all, fields(namespace = rm.namespace(), name = %rm.name_any()))]
pub async fn reconcile(rm: Arc<ReadModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    observe("ReadModel", rm.clone(), ctx.clone(), run(rm, ctx)).await
}

async fn run(rm: Arc<ReadModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = rm.status.clone().unwrap_or_default();
    let ns = rm.namespace().unwrap_or_default();
    let pipeline = match &rm.spec.source.pipeline_ref {
        Some(r) => {
            let api: Api<InventoryPipeline> = Api::namespaced(ctx.client.clone(), &ns);
            match api.get_opt(&r.name).await {
                Ok(p) => p,
                Err(e) => return Err(report_failure(rm.as_ref(), &ctx, previous, e.into()).await),
            }
        }
        None => None,
    };
    let children = match children::read_model(&rm, pipeline.as_ref()) {
        Ok(c) => c,
        Err(e @ BuildError::PipelineNotFound { .. }) => {
            // Not a back-off case: the pipeline's creation triggers a reconcile through
            // `watches`; the periodic requeue is only a safety net.
            let err: Error = e.into();
            report_failure(rm.as_ref(), &ctx, previous, err).await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Err(e) => return Err(report_failure(rm.as_ref(), &ctx, previous, e.into()).await),
    };
    let hpa_name = children
        .deployment
        .metadata
        .name
        .clone()
        .unwrap_or_default();
    let autoscaling = rm.spec.autoscaling.as_ref().filter(|a| a.enabled);
    if autoscaling.is_some() {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let handed_over = async {
            if let Some(n) = deployments
                .get_opt(&hpa_name)
                .await?
                .as_ref()
                .and_then(replicas_to_hand_over)
            {
                tracing::info!(replicas = n, "handing spec.replicas over to the HPA");
                hand_over_replicas(&ctx.client, &ns, &hpa_name, n).await?;
            }
            Ok::<_, kube::Error>(())
        }
        .await;
        if let Err(e) = handed_over {
            return Err(report_failure(rm.as_ref(), &ctx, previous, e.into()).await);
        }
    }
    let applied = async {
        apply::apply(&ctx.client, &children.config_map).await?;
        let hpa = async {
            match &children.hpa {
                Some(h) => Ok(Some(apply::apply(&ctx.client, h).await?)),
                None => {
                    apply::delete_if_present::<HorizontalPodAutoscaler>(&ctx.client, &ns, &hpa_name)
                        .await
                        .map(|()| None)
                }
            }
        };
        let (deployment, _, _, hpa) = tokio::try_join!(
            apply::apply(&ctx.client, &children.deployment),
            apply::apply(&ctx.client, &children.service),
            apply::apply(&ctx.client, &children.pdb),
            hpa,
        )?;
        Ok::<_, kube::Error>((deployment, hpa))
    }
    .await;
    let (deployment, hpa) = match applied {
        Ok(v) => v,
        Err(e) => return Err(report_failure(rm.as_ref(), &ctx, previous, e.into()).await),
    };

    // What the Deployment currently asks for (the HPA's choice when autoscaling).
    let target = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(rm.spec.replicas);
    let (ready, replicas, rolled_out) = rollout(&deployment, target);
    let hs = hpa.and_then(|h| h.status);
    let (desired, floor, current) = match (&hs, autoscaling) {
        // A new HPA reports 0 until its first evaluation; it never goes below minReplicas.
        (Some(h), Some(a)) => (
            h.desired_replicas.max(a.min_replicas),
            a.min_replicas,
            template_current(&deployment),
        ),
        (None, Some(a)) => (
            a.min_replicas,
            a.min_replicas,
            template_current(&deployment),
        ),
        _ => (target, target, rolled_out),
    };
    let (phase, ready_cond) = match readiness(ready, desired, floor, current) {
        Some(r) => (r.phase, Cond::new(READY, r.ready, r.reason, r.message)),
        None => match rollout::crash_condition(&ctx.client, &deployment).await? {
            Some(crashing) => ("Degraded", crashing),
            None => (
                "Progressing",
                Cond::new(
                    READY,
                    false,
                    "ReplicasNotReady",
                    format!(
                        "{ready}/{desired} replicas ready, {floor} needed (a replica is Ready once caught up with the topics)"
                    ),
                ),
            ),
        },
    };
    let (cpu_utilization, cpu_average) = hs.as_ref().map(cpu_reading).unwrap_or_default();
    let generation = rm.metadata.generation;
    let status = ReadModelStatus {
        common: reconciled(&previous.common, generation, phase, vec![ready_cond]),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        current_replicas: hs.as_ref().and_then(|h| h.current_replicas),
        desired_replicas: Some(desired),
        cpu_utilization,
        cpu_average,
        resolved_topics: Some(children.resolved_topics),
    };
    if rm.status.as_ref() != Some(&status) {
        apply::apply_status(&ctx.client, rm.as_ref(), &status).await?;
    }
    Ok(Action::requeue(if rolled_out {
        Duration::from_secs(300)
    } else {
        rollout::NOT_READY_RECHECK
    }))
}

#[cfg(test)]
mod trigger_tests {
    use super::*;

    fn hpa(
        generation: i64,
        desired: i32,
        current: i32,
        last_scale: &str,
    ) -> HorizontalPodAutoscaler {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "generation": generation},
            "spec": {"maxReplicas": 4, "scaleTargetRef": {"kind": "Deployment", "name": "d"}},
            "status": {"desiredReplicas": desired, "currentReplicas": current,
                       "lastScaleTime": last_scale}
        }))
        .expect("hpa")
    }

    fn pipeline(generation: i64, phase: &str) -> InventoryPipeline {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "shop", "namespace": "prod", "generation": generation},
            "spec": {"image": "w", "kafka": {"bootstrapServers": "k:9092"}},
            "status": {"phase": phase}
        }))
        .expect("pipeline")
    }

    #[test]
    fn pipelines_trigger_on_spec_changes_and_deletion_only() {
        let mut seen = PipelineGenerations::default();
        let mut passes = |e| seen.relevant(e).is_some();
        assert!(passes(watcher::Event::InitApply(pipeline(
            1,
            "Progressing"
        ))));
        assert!(
            !passes(watcher::Event::Apply(pipeline(1, "Running"))),
            "a status write"
        );
        assert!(
            passes(watcher::Event::Apply(pipeline(2, "Running"))),
            "spec"
        );
        assert!(
            passes(watcher::Event::Delete(pipeline(2, "Running"))),
            "deleted"
        );
        assert!(
            passes(watcher::Event::Apply(pipeline(2, "Running"))),
            "re-created with the same generation"
        );
        assert!(!passes(watcher::Event::InitDone));
    }

    fn deployment(managed: serde_json::Value, replicas: Option<i32>) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "managedFields": managed},
            "spec": {"replicas": replicas, "selector": {}, "template": {}}
        }))
        .expect("deployment")
    }

    fn managed(manager: &str, operation: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": spec}})
    }

    #[test]
    fn replicas_are_handed_over_only_while_the_operator_owns_them() {
        let with_replicas = serde_json::json!({"f:replicas": {}, "f:template": {}});
        let without = serde_json::json!({"f:template": {}});
        for (entries, replicas, want) in [
            // Autoscaling just turned on: the operator applied replicas 3 until now.
            (
                vec![managed(FIELD_MANAGER, "Apply", with_replicas.clone())],
                Some(3),
                Some(3),
            ),
            // Handed over already: the hand-over manager (or the HPA's update) has them.
            (
                vec![
                    managed(FIELD_MANAGER, "Apply", without.clone()),
                    managed(REPLICAS_HANDOVER_MANAGER, "Apply", with_replicas.clone()),
                ],
                Some(3),
                None,
            ),
            (
                vec![
                    managed(FIELD_MANAGER, "Apply", without.clone()),
                    managed("kube-controller-manager", "Update", with_replicas.clone()),
                ],
                Some(4),
                None,
            ),
            // Another manager's update of the same field is not the operator's apply.
            (
                vec![managed(FIELD_MANAGER, "Update", with_replicas.clone())],
                Some(2),
                None,
            ),
            (vec![], Some(2), None),
            (
                vec![managed(FIELD_MANAGER, "Apply", with_replicas)],
                None,
                None,
            ),
        ] {
            let d = deployment(serde_json::Value::Array(entries.clone()), replicas);
            assert_eq!(replicas_to_hand_over(&d), want, "{entries:?}");
        }
    }

    #[test]
    fn ready_means_the_floor_serves_on_the_current_template() {
        let running = |message: &str| {
            Some(Readiness {
                phase: "Running",
                ready: true,
                reason: "ReplicasReady",
                message: message.into(),
            })
        };
        for (ready, desired, floor, current, want) in [
            // Autoscaling, min 1: a scale-up from 1 to 3 in progress is not an outage.
            (
                1,
                3,
                1,
                true,
                running("1/3 replicas caught up and serving (at least 1 needed)"),
            ),
            (
                3,
                3,
                1,
                true,
                running("3/3 replicas caught up and serving (at least 1 needed)"),
            ),
            (0, 3, 1, true, None),
            // A template rollout in progress is not Running, whatever serves.
            (3, 3, 1, false, None),
            // Without autoscaling the floor is every desired replica.
            (2, 3, 3, true, None),
            (3, 3, 3, true, running("3/3 replicas caught up and serving")),
        ] {
            assert_eq!(
                readiness(ready, desired, floor, current),
                want,
                "{ready}/{desired} floor {floor} current {current}"
            );
        }
        assert_eq!(readiness(0, 0, 0, true).map(|r| r.phase), Some("Idle"));
    }

    #[test]
    fn the_cpu_reading_comes_from_the_hpas_resource_metric() {
        let status: HorizontalPodAutoscalerStatus = serde_json::from_value(serde_json::json!({
            "desiredReplicas": 2,
            "currentMetrics": [
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "current": {"averageValue": "5"}}},
                {"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": 130, "averageValue": "130m"}}}
            ]
        }))
        .expect("status");
        assert_eq!(cpu_reading(&status), (Some(130), Some("130m".into())));
        assert_eq!(
            cpu_reading(&HorizontalPodAutoscalerStatus::default()),
            (None, None)
        );
    }

    #[test]
    fn hpa_syncs_trigger_only_when_the_replicas_change() {
        let base = hpa_replicas(&hpa(1, 2, 2, "2026-01-01T00:00:00Z"));
        assert_eq!(
            hpa_replicas(&hpa(1, 2, 2, "2026-01-01T00:05:00Z")),
            base,
            "a sync that changes nothing the read model shows"
        );
        assert_ne!(hpa_replicas(&hpa(1, 3, 2, "2026-01-01T00:00:00Z")), base);
        assert_ne!(hpa_replicas(&hpa(1, 2, 3, "2026-01-01T00:00:00Z")), base);
        assert_ne!(hpa_replicas(&hpa(2, 2, 2, "2026-01-01T00:00:00Z")), base);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::testing::{
        self, Script, apply, apply_status, condition, delete, event, get, get_missing, retry_after,
        typed,
    };

    const KIND: &str = "ReadModel";
    const PIPELINE: &str = "/apis/kartflow.io/v1alpha1/namespaces/prod/inventorypipelines/shop";
    const CONFIG_MAP: &str = "/api/v1/namespaces/prod/configmaps/shop-view-read-config";
    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/prod/deployments/shop-view-read";
    const SERVICE: &str = "/api/v1/namespaces/prod/services/shop-view-read";
    const PDB: &str = "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/shop-view-read";
    const HPA: &str =
        "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers/shop-view-read";

    /// A read model of pipeline `shop`, `spec` over the required minimum.
    fn read_model(generation: i64, spec: Value) -> Value {
        let mut full = json!({
            "image": "kartflow/worker:0.1.0",
            "source": {"pipelineRef": {"name": "shop"}},
            "resources": {"requests": {"cpu": "250m"}}
        });
        for (k, v) in spec.as_object().expect("spec object") {
            full[k] = v.clone();
        }
        json!({
            "apiVersion": "kartflow.io/v1alpha1",
            "kind": KIND,
            "metadata": {"name": "shop-view", "namespace": "prod", "uid": "uid-view", "generation": generation},
            "spec": full,
        })
    }

    fn shop() -> Value {
        json!({
            "apiVersion": "kartflow.io/v1alpha1",
            "kind": "InventoryPipeline",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop", "generation": 1},
            "spec": {
                "image": "kartflow/worker:0.1.0",
                "kafka": {"bootstrapServers": "kafka:9092"},
                "topics": {"products": "shop-products", "inventoryEvents": "shop-inventory-events"}
            }
        })
    }

    fn autoscaling() -> Value {
        json!({"enabled": true, "minReplicas": 2, "maxReplicas": 6, "targetCpuUtilization": 60})
    }

    #[tokio::test]
    async fn first_reconcile_follows_the_pipeline_and_applies_every_child() {
        let rm = read_model(1, json!({"autoscaling": autoscaling()}));
        let script = Script::new()
            .then(get(PIPELINE, shop()))
            .then(get_missing(DEPLOYMENT))
            .then(apply(CONFIG_MAP, "ConfigMap", KIND).body(|b| {
                let config = b["data"]["config.json"].as_str().unwrap_or_default();
                assert!(config.contains("shop-inventory-events"), "{config}");
            }))
            .any_order([
                apply(DEPLOYMENT, "Deployment", KIND).body(|b| {
                    assert!(
                        b["spec"].get("replicas").is_none(),
                        "the HPA owns the replicas: {b}"
                    );
                }),
                apply(SERVICE, "Service", KIND),
                apply(PDB, "PodDisruptionBudget", KIND),
                apply(HPA, "HorizontalPodAutoscaler", KIND).body(|b| {
                    assert_eq!(
                        (&b["spec"]["minReplicas"], &b["spec"]["maxReplicas"]),
                        (&json!(2), &json!(6))
                    );
                }),
            ])
            .then(apply_status(&rm).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Progressing", "{st}");
                assert_eq!(st["observedGeneration"], 1, "{st}");
                assert_eq!(st["desiredReplicas"], 2, "the HPA's minimum: {st}");
                assert_eq!(
                    st["resolvedTopics"],
                    json!({"products": "shop-products", "inventoryEvents": "shop-inventory-events"})
                );
                assert_eq!(condition(st, "Reconciled")["status"], "True", "{st}");
                assert_eq!(condition(st, "Ready")["reason"], "ReplicasNotReady", "{st}");
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&rm), ctx)).await;
        assert_eq!(
            r.result.as_ref().expect("reconciles"),
            // Not ready yet: looked at again soon, a crash loop would not trigger a reconcile.
            &Action::requeue(super::rollout::NOT_READY_RECHECK)
        );
        assert_eq!(r.reconciles(KIND, "ok"), 1);
    }

    #[tokio::test]
    async fn turning_autoscaling_off_deletes_the_hpa_and_sets_replicas() {
        let mut rm = read_model(2, json!({"replicas": 3}));
        rm["status"] = json!({
            "phase": "Running",
            "observedGeneration": 1,
            "conditions": [],
            "desiredReplicas": 2,
        });
        let script = Script::new()
            .then(get(PIPELINE, shop()))
            .then(apply(CONFIG_MAP, "ConfigMap", KIND))
            .any_order([
                apply(DEPLOYMENT, "Deployment", KIND).body(|b| {
                    assert_eq!(b["spec"]["replicas"], 3, "{b}");
                }),
                apply(SERVICE, "Service", KIND),
                apply(PDB, "PodDisruptionBudget", KIND),
                delete(HPA),
            ])
            .then(apply_status(&rm).body(|b| {
                let st = &b["status"];
                assert_eq!(st["observedGeneration"], 2, "{st}");
                assert_eq!(st["desiredReplicas"], 3, "{st}");
                assert_eq!(st["phase"], "Progressing", "{st}");
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&rm), ctx)).await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    /// Turning autoscaling on for a Deployment the operator runs at 3 replicas: a second field
    /// manager applies the 3 before the operator's apply drops the field, so it never defaults
    /// to 1.
    #[tokio::test]
    async fn turning_autoscaling_on_hands_the_replicas_over_first() {
        let rm = read_model(
            2,
            json!({"replicas": 3, "autoscaling": {"minReplicas": 1,
            "maxReplicas": 4, "targetCpuUtilization": 50}}),
        );
        let stored = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop-view-read", "namespace": "prod", "generation": 1,
                "managedFields": [{"manager": "kartflow-operator", "operation": "Apply",
                    "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}]},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3,
                "updatedReplicas": 3, "availableReplicas": 3}
        });
        let script = Script::new()
            .then(get(PIPELINE, shop()))
            .then(get(DEPLOYMENT, stored.clone()))
            .then(testing::apply_replicas_handover(DEPLOYMENT, 3))
            .then(apply(CONFIG_MAP, "ConfigMap", KIND))
            .any_order([
                apply(DEPLOYMENT, "Deployment", KIND)
                    .body(|b| assert!(b["spec"].get("replicas").is_none(), "{b}"))
                    .reply(stored),
                apply(SERVICE, "Service", KIND),
                apply(PDB, "PodDisruptionBudget", KIND),
                apply(HPA, "HorizontalPodAutoscaler", KIND).reply(json!({
                    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "shop-view-read", "namespace": "prod"},
                    "spec": {"maxReplicas": 4, "scaleTargetRef": {"kind": "Deployment", "name": "shop-view-read"}},
                    "status": {"currentReplicas": 3, "desiredReplicas": 2, "currentMetrics": [
                        {"type": "Resource", "resource": {"name": "cpu",
                            "current": {"averageUtilization": 35, "averageValue": "35m"}}}]}
                })),
            ])
            .then(apply_status(&rm).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Running", "{st}");
                assert_eq!(
                    (&st["currentReplicas"], &st["desiredReplicas"]),
                    (&json!(3), &json!(2)),
                    "{st}"
                );
                assert_eq!(
                    (&st["cpuUtilization"], &st["cpuAverage"]),
                    (&json!(35), &json!("35m")),
                    "{st}"
                );
                assert_eq!(condition(st, "Ready")["status"], "True", "{st}");
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&rm), ctx)).await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    #[tokio::test]
    async fn a_missing_pipeline_is_reported_and_checked_again_without_back_off() {
        let rm = read_model(1, json!({}));
        let script = Script::new()
            .then(get_missing(PIPELINE))
            // A transient failure is evented too, at most every 10 minutes.
            .then(event(&rm, "Warning", "PipelineNotFound"))
            .then(apply_status(&rm).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Degraded", "{st}");
                let reconciled = condition(st, "Reconciled");
                assert_eq!(reconciled["status"], "False", "{st}");
                assert_eq!(reconciled["reason"], "PipelineNotFound", "{st}");
                assert_eq!(
                    reconciled["message"],
                    "InventoryPipeline \"shop\" (spec.source.pipelineRef) does not exist in this namespace"
                );
            }));
        // No Event (the spec may be right) and no child.
        let r = testing::reconcile(script, |ctx| reconcile(typed(&rm), ctx)).await;
        assert_eq!(
            r.result.as_ref().expect("waits for the pipeline"),
            &Action::requeue(Duration::from_secs(60))
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_fails_permanently_without_touching_children() {
        let rm = read_model(1, json!({"port": 8080}));
        let script = Script::new()
            .then(get(PIPELINE, shop()))
            .then(event(&rm, "Warning", "InvalidSpec").body(|b| {
                let note = b["note"].as_str().unwrap_or_default();
                assert!(note.starts_with("spec.port"), "{note}");
            }))
            .then(apply_status(&rm).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Failed", "{st}");
                assert_eq!(condition(st, "Reconciled")["reason"], "InvalidSpec", "{st}");
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&rm), ctx)).await;
        let err = r.result.as_ref().expect_err("invalid");
        assert!(err.is_permanent(), "{err}");
        assert_eq!(r.reconciles(KIND, "invalid"), 1);
        assert_eq!(r.errors(KIND, "InvalidSpec"), 1);
        assert_eq!(
            retry_after(typed::<ReadModel>(&rm).as_ref().clone(), err),
            Action::await_change()
        );
    }
}
