//! `InventoryPipeline` → worker ConfigMap, Deployment and Service.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::rollout::rollout;
use super::status::{Cond, READY, reconciled};
use super::trigger::controller_for;
use super::{Context, Error, apply};
use crate::children;
use crate::crd::{InventoryPipeline, InventoryPipelineStatus};

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<InventoryPipeline> {
    controller_for(client, ns, &children)
}

#[tracing::instrument(skip_all, fields(namespace = ip.namespace(), name = %ip.name_any()))]
pub async fn reconcile(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    observe("InventoryPipeline", ip.clone(), ctx.clone(), run(ip, ctx)).await
}

async fn run(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = ip.status.clone().unwrap_or_default();
    let children = match children::inventory_pipeline(&ip) {
        Ok(c) => c,
        Err(e) => return Err(report_failure(ip.as_ref(), &ctx, previous, e.into()).await),
    };
    if let Err(e) = bootstrap_present(&ip, &ctx).await {
        return Err(report_failure(ip.as_ref(), &ctx, previous, e).await);
    }
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

/// The products ConfigMap must exist with its key, or the workers would hang in
/// ContainerCreating with only a kubelet Event saying why.
async fn bootstrap_present(ip: &InventoryPipeline, ctx: &Context) -> Result<(), Error> {
    let Some(b) = &ip.spec.bootstrap_products else {
        return Ok(());
    };
    let ns = ip.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let what = format!("ConfigMap {ns}/{} (spec.bootstrapProducts)", b.name);
    match api.get_opt(&b.name).await? {
        None => Err(Error::Dependency {
            what,
            problem: format!(
                "not found: create it with the products file under the key {:?}",
                b.key
            ),
        }),
        Some(cm) => {
            let has = cm.data.as_ref().is_some_and(|d| d.contains_key(&b.key))
                || cm
                    .binary_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&b.key));
            if has {
                Ok(())
            } else {
                Err(Error::Dependency {
                    what,
                    problem: format!("has no key {:?}", b.key),
                })
            }
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
