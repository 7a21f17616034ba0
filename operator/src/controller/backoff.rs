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

/// Transient errors are retried with back-off; permanent ones were already reported by the
/// reconcile (condition + Event) and wait for a change of the object.
pub(super) fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    if err.is_permanent() {
        return Action::await_change();
    }
    let delay = ctx.backoff.failed(obj.as_ref());
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
    fn backoff_doubles_up_to_five_minutes() {
        let got: Vec<u64> = (1..=12).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_for(u32::MAX).as_secs(), 300);
    }
}
