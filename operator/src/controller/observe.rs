//! The metrics of every reconcile: its duration, its result, and errors by reason.

use std::sync::Arc;
use std::time::Instant;

use kube::Resource;
use kube::runtime::controller::Action;

use super::{Context, Error};

/// Times a reconcile and counts its result; `Ok` and permanent errors end the retry chain.
pub(crate) async fn observe<K, F>(
    kind: &str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    f: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = f.await;
    ctx.metrics
        .reconcile_seconds
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_permanent() => "invalid",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciles
        .with_label_values(&[kind, outcome])
        .inc();
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[kind, e.reason()])
            .inc();
    } else {
        ctx.backoff.succeeded(obj.as_ref());
    }
    result
}
