//! After a failed reconcile: a permanent error waits for a change of the object, a transient
//! one is retried with an exponential back-off counted per object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Context, Error};

/// Consecutive failures per object.
#[derive(Default)]
pub(super) struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        )
    }

    /// A reconcile of `obj` succeeded: its next failure starts again at the shortest delay.
    pub(super) fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&Self::key(obj));
        }
    }

    /// Counts a failure of `obj` and returns how long to wait before the next try.
    fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(Self::key(obj)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        backoff_for(n)
    }
}

/// Exponential back-off per object: 1 s, 2 s, 4 s … 5 min.
pub fn backoff_for(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// The longest a kind may wait between tries, whatever the back-off says.
pub(crate) trait RetryCap {
    fn retry_cap(&self) -> Option<Duration> {
        None
    }
}

impl RetryCap for crate::crd::InventoryPipeline {}
impl RetryCap for crate::crd::ReadModel {}

/// The guard promises to act within one check interval: a database that was down for a while
/// must not push the next check minutes past it.
impl RetryCap for crate::crd::CdcSource {
    fn retry_cap(&self) -> Option<Duration> {
        crate::slot_guard::GuardPolicy::from_spec(&self.spec.guard)
            .ok()
            .map(|p| p.check_interval)
    }
}

fn capped(delay: Duration, cap: Option<Duration>) -> Duration {
    cap.map_or(delay, |c| delay.min(c))
}

/// Transient errors are retried with back-off; permanent ones were already reported by the
/// reconcile (condition + Event) and wait for a change of the object.
pub(super) fn error_policy<K: Resource<DynamicType = ()> + RetryCap>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    if err.is_permanent() {
        return Action::await_change();
    }
    let delay = capped(ctx.backoff.failed(obj.as_ref()), obj.retry_cap());
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_source_is_retried_within_its_check_interval() {
        let cdc: crate::crd::CdcSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "CdcSource",
            "metadata": {"name": "o", "namespace": "n"},
            "spec": {"image": "w", "postgres": {"host": "h", "database": "d",
                     "credentialsSecretRef": {"name": "s"}},
                     "publication": {"name": "p", "tables": ["t"]}, "slot": {"name": "s"},
                     "kafka": {"bootstrapServers": "k:1"}, "guard": {"checkInterval": "20s"}}
        }))
        .expect("fixture");
        assert_eq!(cdc.retry_cap(), Some(Duration::from_secs(20)));
        let delays: Vec<u64> = (1..=8)
            .map(|n| capped(backoff_for(n), cdc.retry_cap()).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(capped(backoff_for(12), None).as_secs(), 300);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let got: Vec<u64> = (1..=12).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_for(u32::MAX).as_secs(), 300);
    }
}
