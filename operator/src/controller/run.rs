//! Runs the three controllers side by side with one shared [`Context`].

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher;

use super::backoff::error_policy;
use super::{Context, cdc_source, inventory_pipeline, read_model};
use crate::children::MANAGED_BY_SELECTOR;

/// The namespaces to watch from a comma-separated list; empty means all namespaces.
pub fn namespaces(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs the three controllers, in each of `namespaces` (all namespaces when empty), until
/// `shutdown` resolves. One set per namespace keeps the operator's RBAC to Roles in exactly
/// those namespaces.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| run_in(ctx.clone(), ns, shutdown.clone())),
    )
    .await;
}

async fn run_in(
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

#[cfg(test)]
mod tests {
    #[test]
    fn namespace_lists() {
        assert!(super::namespaces("").is_empty(), "all namespaces");
        assert_eq!(super::namespaces(" a, b ,,c"), ["a", "b", "c"]);
    }
}
