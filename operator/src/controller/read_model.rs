//! `ReadModel` → ConfigMap, Deployment, Service, PodDisruptionBudget and (with autoscaling) a
//! CPU HorizontalPodAutoscaler. A `pipelineRef` is followed: a change of the referenced
//! `InventoryPipeline` (its Kafka connection or topics) reconciles the read models using it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::rollout::rollout;
use super::status::{Cond, READY, reconciled};
use super::trigger::{api, controller_for};
use super::{Context, Error, apply};
use crate::children::{self, BuildError};
use crate::crd::{InventoryPipeline, ReadModel, ReadModelStatus};

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<ReadModel> {
    let controller = controller_for::<ReadModel>(client, ns, &children);
    let store = controller.store();
    controller
        .owns(api::<PodDisruptionBudget>(client, ns), children.clone())
        .owns(api::<HorizontalPodAutoscaler>(client, ns), children)
        .watches(
            api::<InventoryPipeline>(client, ns),
            watcher::Config::default(),
            move |pipeline| {
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
            },
        )
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
    let desired = match (&hs, rm.spec.autoscaling.as_ref().filter(|a| a.enabled)) {
        // A new HPA reports 0 until its first evaluation; it never goes below minReplicas.
        (Some(h), Some(a)) => h.desired_replicas.max(a.min_replicas),
        (None, Some(a)) => a.min_replicas,
        _ => target,
    };
    let (phase, ready_cond) = if desired > 0 && rolled_out && ready >= desired {
        (
            "Running",
            Cond::new(
                READY,
                true,
                "ReplicasReady",
                format!("{ready}/{desired} replicas caught up and serving"),
            ),
        )
    } else if desired == 0 {
        (
            "Idle",
            Cond::new(READY, false, "ScaledToZero", "no replicas requested"),
        )
    } else {
        (
            "Progressing",
            Cond::new(
                READY,
                false,
                "ReplicasNotReady",
                format!(
                    "{ready}/{desired} replicas ready (a replica is Ready once caught up with the topics)"
                ),
            ),
        )
    };
    let generation = rm.metadata.generation;
    let status = ReadModelStatus {
        common: reconciled(&previous.common, generation, phase, vec![ready_cond]),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        current_replicas: hs.as_ref().and_then(|h| h.current_replicas),
        desired_replicas: Some(desired),
        resolved_topics: Some(children.resolved_topics),
    };
    if rm.status.as_ref() != Some(&status) {
        apply::apply_status(&ctx.client, rm.as_ref(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
