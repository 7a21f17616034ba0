//! What the Kafka readers, the REST handlers and the WebSocket clients share: the view behind a
//! read-write lock, a notification of each applied batch, readiness and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::view::{Limits, View};
use crate::process::Readiness;

/// Restore progress of one partition, as `GET /stats` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionProgress {
    pub records: u64,
    pub bytes: u64,
    /// The end offset captured at start (`None` for partitions added later).
    pub target: Option<i64>,
    pub caught_up: bool,
}

pub struct Shared {
    view: RwLock<View>,
    /// The view's change sequence after each applied batch.
    changed: watch::Sender<u64>,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub started: Instant,
    progress: Mutex<BTreeMap<(String, i32), PartitionProgress>>,
    /// Set on shutdown: readiness stays false from then on, even if a restore finishes.
    leaving: AtomicBool,
}

impl Shared {
    pub fn new(limits: Limits, readiness: Readiness, metrics: Metrics) -> Self {
        Self {
            view: RwLock::new(View::new(limits)),
            changed: watch::channel(0).0,
            readiness,
            metrics,
            started: Instant::now(),
            progress: Mutex::new(BTreeMap::new()),
            leaving: AtomicBool::new(false),
        }
    }

    // A panic while holding the lock leaves a view that is at worst missing part of one batch;
    // serving it beats taking every request down with the poison.
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Caught up: Ready from now on (latched), unless the replica is already shutting down.
    pub fn caught_up(&self) {
        if !self.leaving.load(Ordering::SeqCst) {
            self.readiness.set(true);
        }
    }

    /// Shutting down: not Ready any more, whatever happens next.
    pub fn leave_service(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        self.readiness.set(false);
    }

    /// Wakes WebSocket clients and read-your-writes waiters after a batch.
    pub fn notify(&self, seq: u64) {
        self.changed.send_replace(seq);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn update_progress(
        &self,
        topic: &str,
        partition: i32,
        f: impl FnOnce(&mut PartitionProgress),
    ) {
        let mut map = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry((topic.to_owned(), partition)).or_default());
    }

    pub fn progress(&self) -> BTreeMap<(String, i32), PartitionProgress> {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_latches_ready_but_never_after_leaving() {
        let shared = Shared::new(
            Limits::default(),
            Readiness::new("not ready"),
            Metrics::new(),
        );
        assert!(!shared.readiness.is_ready());
        shared.caught_up();
        assert!(shared.readiness.is_ready());
        shared.leave_service();
        assert!(!shared.readiness.is_ready());
        // A reader finishing its restore during the shutdown delay must not put it back.
        shared.caught_up();
        assert!(!shared.readiness.is_ready());
    }
}
