//! A failed reconcile in status: `Reconciled=False` with the error's reason, the phase `Failed`
//! (permanent) or `Degraded` (transient), and a Warning Event when the spec is at fault.

use kube::Resource;

use super::status::{self, Cond, RECONCILED};
use super::{Context, Error, apply};
use crate::crd::common::CommonStatus;
use crate::crd::{CdcSourceStatus, InventoryPipelineStatus, ReadModelStatus};

/// Status types that carry the common phase/generation/conditions block.
pub(crate) trait HasCommonStatus: serde::Serialize + Clone + Default {
    fn common_mut(&mut self) -> &mut CommonStatus;
}

macro_rules! has_common_status {
    ($($t:ty),*) => {$(
        impl HasCommonStatus for $t {
            fn common_mut(&mut self) -> &mut CommonStatus {
                &mut self.common
            }
        }
    )*};
}
has_common_status!(InventoryPipelineStatus, CdcSourceStatus, ReadModelStatus);

/// A transient failure (`Degraded`) gets a Warning Event at most this often per object and
/// reason: `kubectl describe` shows it, and a failure retried every second does not flood the
/// Events.
pub(crate) const DEGRADED_EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether an Event last published at `last` may be published again at `now`.
pub(crate) fn due(
    last: Option<std::time::Instant>,
    now: std::time::Instant,
    every: std::time::Duration,
) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= every)
}

impl Context {
    /// Records and answers whether `obj`'s transient failure with `reason` is due an Event.
    fn degraded_event_due<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str) -> bool {
        let key = format!(
            "{}/{}/{}/{reason}",
            K::kind(&()),
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default()
        );
        let now = std::time::Instant::now();
        let Ok(mut seen) = self.degraded_events.lock() else {
            return false;
        };
        let publish = due(seen.get(&key).copied(), now, DEGRADED_EVENT_EVERY);
        if publish {
            seen.insert(key, now);
        }
        publish
    }
}

/// Records a failed reconcile in status (and as a Warning Event when the spec is at fault) and
/// returns the error for the retry policy. Fields other than phase and conditions keep what the
/// last good reconcile wrote.
pub(crate) async fn report_failure<K, S>(obj: &K, ctx: &Context, mut status: S, err: Error) -> Error
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    S: HasCommonStatus,
{
    if err.is_permanent() || ctx.degraded_event_due(obj, err.reason()) {
        ctx.event(obj, true, err.reason(), "Reconcile", err.to_string())
            .await;
    }
    let generation = obj.meta().generation;
    let common = status.common_mut();
    let conditions = status::merge_conditions(
        &common.conditions,
        &[Cond::new(RECONCILED, false, err.reason(), err.to_string())],
        generation,
        &status::now(),
    );
    common.phase = Some(
        if err.is_permanent() {
            "Failed"
        } else {
            "Degraded"
        }
        .into(),
    );
    common.observed_generation = generation;
    common.conditions = conditions;
    if let Err(e) = apply::apply_status(&ctx.client, obj, &status).await {
        tracing::warn!(error = %e, "cannot write status");
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn degraded_events_are_rate_limited() {
        let t0 = Instant::now();
        let every = Duration::from_secs(600);
        assert!(due(None, t0, every), "the first one is published");
        assert!(!due(Some(t0), t0 + Duration::from_secs(599), every));
        assert!(due(Some(t0), t0 + every, every));
    }
}
