//! `CdcSource` → CDC worker ConfigMap, Deployment and Service, plus the replication-slot guard:
//! every check interval it reads the slot's retained WAL, writes it to status and metrics, and
//! drops the slot when the policy says so. A finalizer drops the slot (and a publication kartflow
//! created) when the `CdcSource` is deleted with `dropOnDelete`.

mod cleanup;
mod database;
mod guard;
mod secret;
mod stored;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::status::{Cond, READY, reconciled};
use super::trigger::controller_for;
use super::{Context, Error, apply};
use crate::children;
use crate::crd::{CdcSource, CdcSourceStatus};
use crate::slot_guard::GuardPolicy;

/// Holds a `CdcSource` until its slot is dropped.
pub const FINALIZER: &str = "kartflow.io/slot-cleanup";

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<CdcSource> {
    controller_for(client, ns, &children)
}

#[tracing::instrument(skip_all, fields(namespace = cdc.namespace(), name = %cdc.name_any()))]
pub async fn reconcile(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let api: Api<CdcSource> = Api::namespaced(ctx.client.clone(), &ns);
    let work = {
        let ctx = ctx.clone();
        let cdc = cdc.clone();
        async move {
            finalizer(&api, FINALIZER, cdc, |event| async {
                match event {
                    Finalizer::Apply(cdc) => apply_source(cdc, ctx.clone()).await,
                    Finalizer::Cleanup(cdc) => cleanup::cleanup(cdc, ctx.clone()).await,
                }
            })
            .await
            .map_err(|e| match e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
                other => Error::Finalizer(Box::new(other)),
            })
        }
    };
    observe("CdcSource", cdc, ctx, work).await
}

async fn apply_source(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = stored::current_status(&cdc, &ctx).await?;
    let policy = match GuardPolicy::from_spec(&cdc.spec.guard) {
        Ok(p) => p,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
    };
    let stopped = guard::awaiting_ack(&cdc, &previous);
    let children = match children::cdc_source(&cdc, stopped) {
        Ok(c) => c,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
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
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
    };
    let guard = match guard::guard(&cdc, &ctx, &policy, &previous).await {
        Ok(g) => g,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e).await),
    };
    // Dropped in this check: stop the worker now rather than at the next one.
    let stopped_now = !stopped
        && guard
            .last_drop
            .as_ref()
            .is_some_and(|d| d.awaiting_ack(&cdc.spec));
    let deployment = if stopped_now {
        let stopped = children::cdc_source(&cdc, true).map_err(Error::from)?;
        apply::apply_workload(
            &ctx.client,
            &stopped.config_map,
            &stopped.deployment,
            &stopped.service,
        )
        .await?
    } else {
        deployment
    };
    let stopped = stopped || stopped_now;

    let crashing = if stopped {
        None
    } else {
        super::rollout::crash_condition(&ctx.client, &deployment).await?
    };
    let ds = deployment.status.unwrap_or_default();
    let ready = ds.ready_replicas.unwrap_or(0);
    let reader_ready = ready >= 1;
    let phase = match (&guard.slot_cond.ok, reader_ready) {
        (false, _) => "Degraded",
        (true, true) => "Running",
        (true, false) => "Progressing",
    };
    let generation = cdc.metadata.generation;
    let status = CdcSourceStatus {
        common: reconciled(
            &previous.common,
            generation,
            phase,
            vec![
                if let Some(c) = crashing {
                    c
                } else if stopped {
                    Cond::new(
                        READY,
                        false,
                        "StoppedAfterSlotDrop",
                        "the CDC worker is stopped because the guard dropped its slot; change \
                         spec.slot.recreateNonce to recreate the slot and start it again",
                    )
                } else {
                    Cond::new(
                        READY,
                        reader_ready,
                        if reader_ready {
                            "ReaderReady"
                        } else {
                            "ReaderNotReady"
                        },
                        format!("{ready}/1 CDC worker ready"),
                    )
                },
                guard.slot_cond,
            ],
        ),
        slot: Some(guard.facts),
        last_drop: guard.last_drop,
        slot_owned: Some(guard.owned),
        publication_created: Some(guard.publication_created),
    };
    apply::apply_status(&ctx.client, cdc.as_ref(), &status).await?;
    Ok(Action::requeue(policy.check_interval))
}
