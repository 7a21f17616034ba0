//! Runs the three controllers side by side with one shared [`Context`].

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher;

use super::backoff::error_policy;
use super::{Context, cdc_source, inventory_pipeline, read_model};
use crate::children::MANAGED_BY_SELECTOR;

/// Runs the three controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let ns = namespace.as_deref();
    let client = &ctx.client;
    // Children are watched by our label only: the operator never caches the cluster's other
    // Deployments, which keeps memory flat on big clusters.
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);

    let pipelines = inventory_pipeline::controller(client, ns, children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(inventory_pipeline::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("InventoryPipeline", r) });
    let sources = cdc_source::controller(client, ns, children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(cdc_source::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("CdcSource", r) });
    let models = read_model::controller(client, ns, children)
        .graceful_shutdown_on(shutdown)
        .run(read_model::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("ReadModel", r) });
    tokio::join!(pipelines, sources, models);
}

fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, r: Result<T, E>) {
    match r {
        Ok(o) => tracing::debug!(kind, object = ?o, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %e, "reconcile not successful"),
    }
}
