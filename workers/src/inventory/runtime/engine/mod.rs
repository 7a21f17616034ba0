//! The exactly-once loop: consume product updates and order lines, apply them to per-partition
//! state, and commit outputs, changelog and input offsets in one Kafka transaction.
//!
//! Decisions live in the pure core (`decode`, `apply`); this module only moves records. All
//! mutable state sits in [`Core`] behind the consumer context, because the rebalance callbacks
//! must commit the open transaction before partitions move (so the next owner starts exactly
//! where this one stopped) and must restore state for partitions that arrive.
//!
//! The loop's concerns, one file each, all `impl Core`: `consume` (client set-up and the poll
//! loop), `records` (one record in, its outputs and DLQ entries out), `transaction` (begin,
//! commit, abort and rewind to the last commit), `rebalance` (partitions leaving and arriving,
//! state restore, start offsets), `status` (readiness, `/v1/status`, lag) and `commands`
//! (admin requests: taking savepoints).

mod commands;
mod consume;
mod rebalance;
mod records;
mod status;
mod transaction;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use thiserror::Error;

use super::changelog::{PartitionMeta, RestoreError};
use super::metrics::Metrics;
use super::savepoint::{Loaded, SavepointError};
use crate::inventory::{InventoryRules, PartitionState, Source};
use crate::process::{Readiness, Shutdown};
use kartflow_wire::config::InventorySettings;

use transaction::{Held, Inflight, TxnProducer};

pub use commands::Command;
pub use consume::run;
pub use status::{PartitionStatus, SharedStatus, Status};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("Kafka client error: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Savepoint(#[from] SavepointError),
    #[error(
        "this worker was fenced by a newer instance with the same transactional id ({0}); exiting so only one instance writes"
    )]
    Fenced(KafkaError),
    #[error("the consumer has no group metadata: it has not joined group yet")]
    NoGroupMetadata,
    #[error("the transaction commit thread failed: {0}")]
    CommitThread(String),
    #[error(
        "the Kafka consumer failed fatally ({code}): {reason}{hint}; exiting so a restart gets a fresh consumer"
    )]
    ConsumerFatal {
        code: RDKafkaErrorCode,
        reason: String,
        hint: &'static str,
    },
    #[error("bootstrapProductsFile {path}: {detail}")]
    Bootstrap { path: PathBuf, detail: String },
    #[error(
        "savepoint {id} has state for {have} partitions but the inputs have {want}: restore it into a pipeline with the same partition count"
    )]
    SavepointPartitions {
        id: String,
        have: usize,
        want: usize,
    },
}

/// The initial products file, as checked at start. Its records are not kept: partitions that
/// need the file (at start or when they arrive in a rebalance) read it again, so a large
/// catalogue is not held twice.
#[derive(Debug, Clone)]
pub struct BootstrapFile {
    pub path: PathBuf,
    /// SHA-256 of the content checked at start.
    pub hash: String,
}

/// Everything the loop needs at start.
pub struct EngineSetup {
    pub settings: InventorySettings,
    pub instance: String,
    pub partition_count: usize,
    pub client: ClientConfig,
    pub bootstrap: Option<BootstrapFile>,
    pub savepoint: Option<Loaded>,
    pub metrics: Metrics,
    pub status: SharedStatus,
    /// Set once partitions are assigned and restored, cleared when the loop fails.
    pub readiness: Readiness,
    /// Polled between records: on a request the loop commits and leaves the group.
    pub shutdown: Shutdown,
    pub runtime: tokio::runtime::Handle,
}

struct Slot {
    state: PartitionState,
    meta: PartitionMeta,
    dirty_keys: BTreeSet<String>,
    meta_dirty: bool,
    lag: BTreeMap<String, i64>,
    /// Order lines buffered in this partition's state, kept up to date from each input's
    /// outputs so the status can be published after every commit without a scan.
    orphans: usize,
}

/// Children of a single-label counter vector, found by a scan of the few labels in use instead
/// of the vector's hash and lock: the loop counts every record several times. A child is created
/// on first use, as `with_label_values` does, so no series appears before it counts something.
struct Counted {
    vec: IntCounterVec,
    children: RefCell<Vec<(String, IntCounter)>>,
}

impl Counted {
    fn new(vec: &IntCounterVec) -> Self {
        Self {
            vec: vec.clone(),
            children: RefCell::new(Vec::new()),
        }
    }

    fn inc(&self, label: &str) {
        if let Some((_, c)) = self.children.borrow().iter().find(|(l, _)| l == label) {
            c.inc();
            return;
        }
        let c = self.vec.with_label_values(&[label]);
        c.inc();
        self.children.borrow_mut().push((label.to_owned(), c));
    }
}

/// The loop's mutable state, reachable from the rebalance callbacks.
struct Core {
    settings: InventorySettings,
    rules: InventoryRules,
    changelog_topic: String,
    instance: String,
    partition_count: usize,
    client: ClientConfig,
    /// Shared with the thread that commits the previous batch (see `transaction`).
    producer: TxnProducer,
    /// Watermark queries for the lag gauges. Not the group consumer: its broker connections are
    /// busy with long-poll fetches, which queue each query behind up to `fetch.wait.max.ms` and
    /// stalled the loop for seconds on every refresh.
    watermarks: BaseConsumer,
    slots: BTreeMap<i32, Slot>,
    /// The producer has a transaction open (false while the batch's outputs are held).
    txn_open: bool,
    /// Consume instants of the records in the open batch, for the latency histogram.
    txn_records: Vec<Instant>,
    /// When the open batch started; `None` when no batch is open.
    txn_started: Option<Instant>,
    /// The previous batch's commit, running on its helper thread.
    inflight: Option<Inflight>,
    /// Outputs of the open batch produced while `inflight` runs.
    held: RefCell<Held>,
    /// Partitions restored in `pre_rebalance` whose consumer position must be set afterwards.
    to_seek: BTreeSet<i32>,
    /// Partitions whose bootstrap file must be (re)applied by the loop.
    to_bootstrap: BTreeSet<i32>,
    needs_rewind: bool,
    fatal: Option<EngineError>,
    assigned_once: bool,
    bootstrap: Option<BootstrapFile>,
    dlq_log: DlqLogLimit,
    savepoint: Option<Loaded>,
    metrics: Metrics,
    records_in: Counted,
    records_out: Counted,
    /// Reused for encoding events (see `records::emit`).
    encode_buf: Vec<u8>,
    dispositions: Counted,
    status: SharedStatus,
    readiness: Readiness,
}

/// Rate limit of the log line written for each record sent to the DLQ: at most
/// [`DlqLogLimit::PER_SECOND`] lines a second; the first line after a suppressed stretch says how
/// many went unlogged (the `dlq_total` metric counts them all).
#[derive(Debug)]
pub(crate) struct DlqLogLimit {
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl DlqLogLimit {
    pub(crate) const PER_SECOND: u32 = 10;

    pub(crate) fn new() -> Self {
        Self {
            window: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged at `now`, `n` being the lines suppressed since the last
    /// one logged; `None` if this one is suppressed.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .is_none_or(|w| now.duration_since(w) >= std::time::Duration::from_secs(1));
        if fresh {
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= Self::PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

pub struct Ctx {
    core: Mutex<Core>,
}

impl Ctx {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock already ended the loop; keep the data for shutdown.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Ctx {}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl Core {
    fn source_of(&self, topic: &str) -> Source {
        if topic == self.settings.topics.product_updates {
            Source::ProductUpdates
        } else {
            Source::OrderEvents
        }
    }

    fn input_topics(&self) -> [String; 2] {
        [
            self.settings.topics.product_updates.clone(),
            self.settings.topics.order_events.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dlq_log_lines_are_rate_limited_and_count_what_they_skip() {
        let mut limit = DlqLogLimit::new();
        let t0 = Instant::now();
        for _ in 0..DlqLogLimit::PER_SECOND {
            assert_eq!(limit.admit(t0), Some(0));
        }
        assert_eq!(limit.admit(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.admit(t0 + Duration::from_millis(900)), None);
        assert_eq!(
            limit.admit(t0 + Duration::from_millis(1_000)),
            Some(2),
            "the next window's first line reports the two suppressed"
        );
        assert_eq!(limit.admit(t0 + Duration::from_millis(1_001)), Some(0));
    }
}
