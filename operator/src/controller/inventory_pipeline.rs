//! `InventoryPipeline` → worker ConfigMap, Deployment and Service.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::status::{Cond, READY, reconciled};
use super::{Context, Error, api, apply, controller_for, observe, report_failure, rollout};
use crate::build;
use crate::crd::{InventoryPipeline, InventoryPipelineStatus};

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<InventoryPipeline> {
    controller_for(api::<InventoryPipeline>(client, ns))
        .owns(api::<Deployment>(client, ns), children.clone())
        .owns(api::<ConfigMap>(client, ns), children.clone())
        .owns(api::<Service>(client, ns), children)
}

#[tracing::instrument(skip_all, fields(namespace = ip.namespace(), name = %ip.name_any()))]
pub async fn reconcile(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    observe("InventoryPipeline", ip.clone(), ctx.clone(), run(ip, ctx)).await
}

async fn run(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = ip.status.clone().unwrap_or_default();
    let children = match build::inventory_pipeline(&ip) {
        Ok(c) => c,
        Err(e) => return Err(report_failure(ip.as_ref(), &ctx, previous, e.into()).await),
    };
    let applied = apply::apply_workload(
        &ctx.client,
        &children.config_map,
        &children.deployment,
        &children.service,
    )
    .await;
    let deployment = match applied {
        Ok(d) => d,
        Err(e) => return Err(report_failure(ip.as_ref(), &ctx, previous, e.into()).await),
    };

    let desired = if ip.spec.suspend {
        0
    } else {
        ip.spec.parallelism
    };
    let (ready, replicas, rolled_out) = rollout(&deployment, desired);
    let (phase, ready_cond) = if ip.spec.suspend {
        (
            "Suspended",
            Cond::new(
                READY,
                replicas == 0,
                "Suspended",
                "spec.suspend is true: no workers run",
            ),
        )
    } else if rolled_out {
        (
            "Running",
            Cond::new(
                READY,
                true,
                "WorkersReady",
                format!("{ready}/{desired} workers ready"),
            ),
        )
    } else {
        (
            "Progressing",
            Cond::new(
                READY,
                false,
                "WorkersNotReady",
                format!(
                    "{ready}/{desired} workers ready; see kubectl get pods -l app.kubernetes.io/instance={}",
                    ip.name_any()
                ),
            ),
        )
    };
    if previous.deployed_spec_hash.as_deref() != Some(children.spec_hash.as_str()) {
        ctx.event(
            ip.as_ref(),
            false,
            "Deployed",
            "Apply",
            format!(
                "worker spec {} applied: {desired} worker(s) of {}",
                short(&children.spec_hash),
                ip.spec.image
            ),
        )
        .await;
    }
    let generation = ip.metadata.generation;
    let status = InventoryPipelineStatus {
        common: reconciled(&previous.common, generation, phase, vec![ready_cond]),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        deployed_spec_hash: Some(children.spec_hash),
        ..previous
    };
    if ip.status.as_ref() != Some(&status) {
        apply::apply_status(&ctx.client, ip.as_ref(), &status).await?;
    }
    Ok(Action::requeue(std::time::Duration::from_secs(300)))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
