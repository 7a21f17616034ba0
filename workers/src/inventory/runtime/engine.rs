//! The exactly-once loop: consume product updates and order lines, apply them to per-partition
//! state, and commit outputs, changelog and input offsets in one Kafka transaction.
//!
//! Decisions live in the pure core (`decode`, `apply`); this module only moves records. All
//! mutable state sits in [`Core`] behind the consumer context, because the rebalance callbacks
//! must commit the open transaction before partitions move (so the next owner starts exactly
//! where this one stopped) and must restore state for partitions that arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use super::changelog::{self, META_KEY, PartitionMeta, RestoreError};
use super::metrics::Metrics;
use super::savepoint::{self, Loaded, SavepointError, Written};
use super::settings::InventorySettings;
use crate::inventory::{
    Disposition, DlqEntry, Input, InventoryConfig, Outputs, PartitionState, Source, apply, decode,
};
use crate::kafka::partitioner::partition_for_key;
use crate::process::{Readiness, Shutdown};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

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
    #[error(
        "the Kafka consumer failed fatally ({code}): {reason}{hint}; exiting so a restart gets a fresh consumer"
    )]
    ConsumerFatal {
        code: RDKafkaErrorCode,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "savepoint {id} has state for {have} partitions but the inputs have {want}: restore it into a pipeline with the same partition count"
    )]
    SavepointPartitions {
        id: String,
        have: usize,
        want: usize,
    },
}

/// The initial products file, decoded once at start.
#[derive(Debug, Clone)]
pub struct BootstrapFile {
    pub hash: String,
    pub records: Vec<Result<Input, DlqEntry>>,
}

/// Requests from the admin API to the loop.
pub enum Command {
    Savepoint {
        id: String,
        stop: bool,
        reply: tokio::sync::oneshot::Sender<Result<Written, String>>,
    },
}

/// What the admin API reads.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub instance: String,
    pub ready: bool,
    pub partitions: Vec<PartitionStatus>,
    pub state_keys: usize,
    pub orphans_buffered: usize,
    pub savepoint_restored: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: i32,
    /// Next offset to read per input topic.
    pub offsets: BTreeMap<String, i64>,
    /// Records behind the end per input topic (as of the last lag check).
    pub lag: BTreeMap<String, i64>,
    pub keys: usize,
}

/// The status the loop publishes and `/v1/status` reads.
pub type SharedStatus = Arc<RwLock<Status>>;

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
}

/// The loop's mutable state, reachable from the rebalance callbacks.
struct Core {
    settings: InventorySettings,
    rules: InventoryConfig,
    changelog_topic: String,
    instance: String,
    partition_count: usize,
    client: ClientConfig,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Watermark queries for the lag gauges. Not the group consumer: its broker connections are
    /// busy with long-poll fetches, which queue each query behind up to `fetch.wait.max.ms` and
    /// stalled the loop for seconds on every refresh.
    watermarks: BaseConsumer,
    slots: BTreeMap<i32, Slot>,
    txn_open: bool,
    /// Consume instants of the records in the open transaction, for the latency histogram.
    txn_records: Vec<Instant>,
    txn_started: Option<Instant>,
    /// Partitions restored in `pre_rebalance` whose consumer position must be set afterwards.
    to_seek: BTreeSet<i32>,
    /// Partitions whose bootstrap file must be (re)applied by the loop.
    to_bootstrap: BTreeSet<i32>,
    needs_rewind: bool,
    fatal: Option<EngineError>,
    assigned_once: bool,
    bootstrap: Option<Arc<BootstrapFile>>,
    savepoint: Option<Loaded>,
    metrics: Metrics,
    status: SharedStatus,
    readiness: Readiness,
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

fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core();
        // Whatever moves, the open transaction commits first: the next owner of a revoked
        // partition must see its offsets and changelog, and restoring arrivals may take long.
        core.commit_or_rewind(consumer);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                for p in partitions_of(tpl) {
                    core.slots.remove(&p);
                    core.to_seek.remove(&p);
                    core.to_bootstrap.remove(&p);
                }
                info!(partitions = ?partitions_of(tpl), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let arriving: Vec<i32> = partitions_of(tpl)
                    .into_iter()
                    .filter(|p| !core.slots.contains_key(p))
                    .collect();
                if let Err(e) = core.load(consumer, &arriving) {
                    error!(error = %e, "restoring assigned partitions failed");
                    core.fatal = Some(e);
                }
                core.set_start_offsets(tpl);
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core();
        if let Rebalance::Assign(tpl) = rebalance {
            core.assigned_once = true;
            check_copartitioned(tpl, &core.settings);
            info!(partitions = ?partitions_of(tpl), "partitions assigned");
        }
        if let Err(e) = core.seek_restored(consumer) {
            // The start offsets are already in the assignment and `on_record` skips applied
            // offsets, so a failed seek here only costs re-reading.
            warn!(error = %e, "seek after assignment failed");
        }
        core.publish_status();
    }
}

/// Keyed co-processing needs both inputs' partition `p` on the same worker; the range assignor
/// guarantees it for co-partitioned topics, so a violation is a misconfigured group.
fn check_copartitioned(tpl: &TopicPartitionList, settings: &InventorySettings) {
    let of = |topic: &str| -> BTreeSet<i32> {
        tpl.elements_for_topic(topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    };
    let (pu, oe) = (
        of(&settings.topics.product_updates),
        of(&settings.topics.order_events),
    );
    if pu != oe {
        error!(product_updates = ?pu, order_events = ?oe,
            "assignment is not co-partitioned: partitions of both inputs must go to the same worker; \
             use the range assignor");
    }
}

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

    fn begin(&mut self) -> Result<(), EngineError> {
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.txn_open = true;
            self.txn_started = Some(Instant::now());
        }
        Ok(())
    }

    /// Enqueues a record and counts it.
    fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), EngineError> {
        send_raw(&self.producer, topic, partition, key, payload, headers)?;
        self.metrics.records_out.with_label_values(&[topic]).inc();
        Ok(())
    }

    fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.send(topic, None, key.as_bytes(), Some(&bytes), None)
    }

    fn send_dlq(
        &self,
        entry: &DlqEntry,
        origin: Option<(&str, i32, i64)>,
    ) -> Result<(), EngineError> {
        let source_topic = match (origin, entry.source) {
            (Some((t, _, _)), _) => t.to_owned(),
            (None, Source::Bootstrap) => "bootstrap-file".to_owned(),
            (None, Source::ProductUpdates) => self.settings.topics.product_updates.clone(),
            (None, Source::OrderEvents) => self.settings.topics.order_events.clone(),
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "kartflow.error.reason",
                value: Some(entry.reason.as_str()),
            })
            .insert(Header {
                key: "kartflow.error.detail",
                value: Some(entry.detail.as_str()),
            })
            .insert(Header {
                key: "kartflow.source.topic",
                value: Some(source_topic.as_str()),
            });
        if let Some((_, partition, offset)) = origin {
            headers = headers
                .insert(Header {
                    key: "kartflow.source.partition",
                    value: Some(partition.to_string().as_str()),
                })
                .insert(Header {
                    key: "kartflow.source.offset",
                    value: Some(offset.to_string().as_str()),
                });
        }
        self.metrics
            .dlq
            .with_label_values(&[entry.reason.as_str()])
            .inc();
        let key = entry.key.clone().unwrap_or_default();
        self.send(
            &self.settings.topics.dlq,
            None,
            &key,
            Some(&entry.payload),
            Some(headers),
        )
    }

    fn emit(&self, out: &Outputs) -> Result<(), EngineError> {
        let t = &self.settings.topics;
        for p in &out.products {
            self.send_json(&t.products, &p.product_id, p)?;
        }
        for e in &out.events {
            self.send_json(&t.inventory_events, &e.product_id, e)?;
            self.send_json(&t.websocket_fanout, &e.product_id, e)?;
        }
        for a in &out.alerts {
            self.send_json(&t.inventory_alerts, &a.product_id, a)?;
        }
        for d in &out.dlq {
            self.send_dlq(d, None)?;
        }
        Ok(())
    }

    fn disposition_label(d: &Disposition) -> &'static str {
        match d {
            Disposition::Applied => "applied",
            Disposition::Unchanged => "unchanged",
            Disposition::Duplicate => "duplicate",
            Disposition::Buffered => "buffered",
            Disposition::DeadLettered(_) => "dead_lettered",
            Disposition::Tick => "tick",
        }
    }

    /// Applies one input to partition `p` and emits what it produced.
    fn apply_to(&mut self, p: i32, input: Input, now: i64) -> Result<(), EngineError> {
        let Some(slot) = self.slots.get_mut(&p) else {
            return Ok(());
        };
        let out = apply(&mut slot.state, &self.rules, input, now);
        slot.dirty_keys.extend(out.touched.iter().cloned());
        if out.disposition != Disposition::Tick {
            self.metrics
                .dispositions
                .with_label_values(&[Self::disposition_label(&out.disposition)])
                .inc();
        }
        // A tick that fired nothing must not open a transaction of its own.
        if out.is_empty() {
            return Ok(());
        }
        self.begin()?;
        self.emit(&out)
    }

    /// One consumed record.
    fn on_record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        consumed_at: Instant,
    ) -> Result<(), EngineError> {
        let Some(slot) = self.slots.get(&partition) else {
            debug!(
                topic,
                partition, offset, "record of a partition this worker does not own"
            );
            return Ok(());
        };
        // Below the state's offset: already applied (a fetch that raced a seek).
        if slot
            .meta
            .offsets
            .get(topic)
            .is_some_and(|next| offset < *next)
        {
            return Ok(());
        }
        self.begin()?;
        self.metrics.records_in.with_label_values(&[topic]).inc();
        self.txn_records.push(consumed_at);
        match decode(self.source_of(topic), key, payload) {
            Ok(input) => self.apply_to(partition, input, now_ms())?,
            Err(entry) => {
                self.metrics
                    .dispositions
                    .with_label_values(&["dead_lettered"])
                    .inc();
                self.send_dlq(&entry, Some((topic, partition, offset)))?;
            }
        }
        if let Some(slot) = self.slots.get_mut(&partition) {
            slot.meta.offsets.insert(topic.to_owned(), offset + 1);
            slot.meta_dirty = true;
        }
        Ok(())
    }

    /// Advances processing time on every owned partition.
    fn tick(&mut self) -> Result<(), EngineError> {
        let now = now_ms();
        let partitions: Vec<i32> = self.slots.keys().copied().collect();
        for p in partitions {
            self.apply_to(p, Input::Tick, now)?;
        }
        Ok(())
    }

    /// Applies the bootstrap file to partitions that have not seen this version of it.
    fn apply_bootstrap(&mut self) -> Result<(), EngineError> {
        if self.to_bootstrap.is_empty() {
            return Ok(());
        }
        let Some(file) = self.bootstrap.clone() else {
            self.to_bootstrap.clear();
            return Ok(());
        };
        let pending: Vec<i32> = std::mem::take(&mut self.to_bootstrap).into_iter().collect();
        let count = i32::try_from(self.partition_count).unwrap_or(i32::MAX);
        for p in pending {
            let Some(slot) = self.slots.get(&p) else {
                continue;
            };
            if slot.meta.bootstrap_hash.as_deref() == Some(file.hash.as_str()) {
                continue;
            }
            self.begin()?;
            let now = now_ms();
            for record in &file.records {
                match record {
                    Ok(input) => {
                        let Input::Bootstrap(product) = input else {
                            continue;
                        };
                        if partition_for_key(product.product_id.as_bytes(), count) == p {
                            self.apply_to(p, input.clone(), now)?;
                        }
                    }
                    // File-level rejects are reported once, by partition 0's owner.
                    Err(entry) if p == 0 => self.send_dlq(entry, None)?,
                    Err(_) => {}
                }
            }
            if let Some(slot) = self.slots.get_mut(&p) {
                slot.meta.bootstrap_hash = Some(file.hash.clone());
                slot.meta_dirty = true;
            }
            info!(partition = p, hash = %file.hash, "bootstrap products applied");
        }
        Ok(())
    }

    fn try_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let mut offsets = TopicPartitionList::new();
        for (p, slot) in &mut self.slots {
            for key in std::mem::take(&mut slot.dirty_keys) {
                let value = changelog::encode_key(slot.state.keys.get(&key));
                if value.is_none() {
                    slot.state.keys.remove(&key);
                }
                send_raw(
                    &self.producer,
                    &self.changelog_topic,
                    Some(*p),
                    key.as_bytes(),
                    value.as_deref(),
                    None,
                )?;
            }
            if std::mem::take(&mut slot.meta_dirty) {
                let meta = serde_json::to_vec(&slot.meta).unwrap_or_default();
                send_raw(
                    &self.producer,
                    &self.changelog_topic,
                    Some(*p),
                    META_KEY,
                    Some(&meta),
                    None,
                )?;
                for (topic, next) in &slot.meta.offsets {
                    offsets.add_partition_offset(topic, *p, Offset::Offset(*next))?;
                }
            }
        }
        if offsets.count() > 0 {
            let cgm = consumer
                .group_metadata()
                .ok_or(EngineError::NoGroupMetadata)?;
            self.producer
                .send_offsets_to_transaction(&offsets, &cgm, TXN_TIMEOUT)?;
        }
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        let done = Instant::now();
        self.metrics
            .commit_seconds
            .observe(done.duration_since(started).as_secs_f64());
        for t in self.txn_records.drain(..) {
            self.metrics
                .processing_seconds
                .observe(done.duration_since(t).as_secs_f64());
        }
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        Ok(())
    }

    /// Commits the open transaction; on failure aborts it and schedules a rewind to the last
    /// committed state. A fenced or fatal producer ends the loop.
    fn commit_or_rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if !self.txn_open {
            return;
        }
        let result = self.try_commit(consumer);
        self.txn_open = false;
        self.txn_started = None;
        let Err(e) = result else { return };
        self.txn_records.clear();
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        warn!(error = %e, "transaction failed; aborting and rewinding to the last commit");
        if let Err(abort) = self.producer.abort_transaction(TXN_TIMEOUT) {
            self.fatal = Some(EngineError::Fenced(abort));
            return;
        }
        self.needs_rewind = true;
    }

    /// Restores `partitions` from the changelog (or the savepoint) into slots.
    fn load<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<(), EngineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for t in self.input_topics() {
            for p in partitions {
                tpl.add_partition(&t, *p);
            }
        }
        // read_committed makes this wait for pending transactional offsets (KIP-447).
        let committed_tpl = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        let mut committed: BTreeMap<i32, BTreeMap<String, i64>> = BTreeMap::new();
        for e in committed_tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed
                    .entry(e.partition())
                    .or_default()
                    .insert(e.topic().to_owned(), o);
            }
        }
        let restored = changelog::restore(
            &self.client,
            &self.changelog_topic,
            partitions,
            &committed,
            RESTORE_TIMEOUT,
        )?;
        let mut records = 0;
        for (p, r) in restored {
            records += r.records;
            let mut slot = Slot {
                state: r.state,
                meta: r.meta,
                dirty_keys: BTreeSet::new(),
                meta_dirty: false,
                lag: BTreeMap::new(),
            };
            if let Some(sp) = &self.savepoint
                && slot.meta.savepoint_id.as_deref() != Some(sp.id.as_str())
                && let Some(snap) = sp.partitions.get(&p)
            {
                // First start from this savepoint: its state replaces the changelog's (stale
                // keys get tombstones) and its offsets become the position.
                slot.dirty_keys = slot
                    .state
                    .keys
                    .keys()
                    .chain(snap.state.keys.keys())
                    .cloned()
                    .collect();
                slot.state = snap.state.clone();
                slot.meta = snap.meta.clone();
                slot.meta.savepoint_id = Some(sp.id.clone());
                slot.meta_dirty = true;
                info!(partition = p, savepoint = %sp.id, "partition started from savepoint");
            }
            self.to_seek.insert(p);
            self.to_bootstrap.insert(p);
            self.slots.insert(p, slot);
        }
        self.metrics
            .restores
            .with_label_values(&["changelog"])
            .observe(started.elapsed().as_secs_f64());
        info!(
            ?partitions,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partitions restored"
        );
        Ok(())
    }

    /// Makes the assignment itself start every partition with state exactly where its state
    /// stops (the beginning for an input it has consumed nothing of). A seek right after an
    /// incremental assign fails while librdkafka still fetches the committed offsets ("Erroneous
    /// state"), and the consumer would then start from the group's committed offsets, which
    /// differ from the state's after a savepoint restore (the whole input is re-read into a new
    /// group; an older savepoint in the same group would skip what it has not seen).
    fn set_start_offsets(&mut self, tpl: &TopicPartitionList) {
        // `elements` hands out writable views of the list librdkafka assigns after this callback.
        for mut e in tpl.elements() {
            let Some(slot) = self.slots.get(&e.partition()) else {
                continue;
            };
            let start = slot
                .meta
                .offsets
                .get(e.topic())
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(err) = e.set_offset(start) {
                warn!(topic = e.topic(), partition = e.partition(), error = %err,
                    "cannot set the start offset; seeking after the assignment instead");
                continue;
            }
            self.to_seek.remove(&e.partition());
        }
    }

    /// Points the consumer at the offsets the restored state corresponds to.
    fn seek_restored<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), KafkaError> {
        let pending: Vec<i32> = std::mem::take(&mut self.to_seek).into_iter().collect();
        let mut tpl = TopicPartitionList::new();
        for p in &pending {
            let Some(slot) = self.slots.get(p) else {
                continue;
            };
            for (topic, next) in &slot.meta.offsets {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let result = consumer.seek_partitions(tpl, Duration::from_secs(10))?;
        for e in result.elements() {
            e.error()?;
        }
        Ok(())
    }

    /// Drops all state and restores every owned partition: used after an aborted transaction.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        self.needs_rewind = false;
        let partitions: Vec<i32> = self.slots.keys().copied().collect();
        self.slots.clear();
        self.load(consumer, &partitions)?;
        // Partitions with no changelog meta yet restart from the committed offsets.
        let mut tpl = TopicPartitionList::new();
        for t in self.input_topics() {
            for p in &partitions {
                if self
                    .slots
                    .get(p)
                    .is_some_and(|s| !s.meta.offsets.contains_key(&t))
                {
                    tpl.add_partition(&t, *p);
                }
            }
        }
        if tpl.count() > 0 {
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
            let mut seek = TopicPartitionList::new();
            for e in committed.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                seek.add_partition_offset(e.topic(), e.partition(), offset)?;
            }
            consumer.seek_partitions(seek, Duration::from_secs(10))?;
        }
        // Going back is the point of a rewind: if the seek fails the records of the aborted
        // transaction would be skipped, so the process exits and restarts from the commit.
        self.seek_restored(consumer)?;
        Ok(())
    }

    fn publish_status(&self) {
        let ready = self.assigned_once && self.fatal.is_none();
        self.readiness.set(ready);
        let partitions = self
            .slots
            .iter()
            .map(|(p, s)| PartitionStatus {
                partition: *p,
                offsets: s.meta.offsets.clone(),
                lag: s.lag.clone(),
                keys: s.state.keys.len(),
            })
            .collect();
        let state_keys = self.slots.values().map(|s| s.state.keys.len()).sum();
        let orphans = self.slots.values().map(|s| s.state.orphan_count()).sum();
        self.metrics
            .state_keys
            .set(i64::try_from(state_keys).unwrap_or(i64::MAX));
        self.metrics
            .orphans_buffered
            .set(i64::try_from(orphans).unwrap_or(i64::MAX));
        let status = Status {
            instance: self.instance.clone(),
            ready,
            partitions,
            state_keys,
            orphans_buffered: orphans,
            savepoint_restored: self.savepoint.as_ref().map(|s| s.id.clone()),
        };
        if let Ok(mut s) = self.status.write() {
            *s = status;
        }
    }

    /// Refreshes per-partition lag from the brokers' high watermarks.
    fn refresh_lag(&mut self) {
        let topics = self.input_topics();
        for (p, slot) in &mut self.slots {
            for t in &topics {
                if let Ok((_, high)) =
                    self.watermarks
                        .fetch_watermarks(t, *p, Duration::from_secs(2))
                {
                    let next = slot.meta.offsets.get(t).copied().unwrap_or(0);
                    let lag = (high - next).max(0);
                    slot.lag.insert(t.clone(), lag);
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[t.as_str(), p.to_string().as_str()])
                        .set(lag);
                }
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<i32, (PartitionMeta, PartitionState)> {
        self.slots
            .iter()
            .map(|(p, s)| (*p, (s.meta.clone(), s.state.clone())))
            .collect()
    }
}

/// Enqueues a record, waiting while the producer queue is full.
fn send_raw(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<(), EngineError> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Runs the loop until `stop` is set or a savepoint with `stop` completes.
pub fn run(
    setup: EngineSetup,
    commands: std::sync::mpsc::Receiver<Command>,
) -> Result<(), EngineError> {
    let s = &setup.settings;
    let transactional_id = format!("{}-{}", s.group_id(), setup.instance);
    let producer: ThreadedProducer<DefaultProducerContext> = setup
        .client
        .clone()
        .set("transactional.id", &transactional_id)
        .set("transaction.timeout.ms", "60000")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    producer
        .init_transactions(TXN_TIMEOUT)
        .map_err(|e| match e {
            KafkaError::Transaction(ref r) if r.is_fatal() => EngineError::Fenced(e),
            other => EngineError::Kafka(other),
        })?;
    info!(%transactional_id, "transactional producer ready");

    let watermarks: BaseConsumer = setup.client.create()?;
    let core = Core {
        watermarks,
        rules: s.rules.clone(),
        changelog_topic: s.changelog_topic(),
        instance: setup.instance.clone(),
        partition_count: setup.partition_count,
        client: setup.client.clone(),
        producer,
        slots: BTreeMap::new(),
        txn_open: false,
        txn_records: Vec::new(),
        txn_started: None,
        to_seek: BTreeSet::new(),
        to_bootstrap: BTreeSet::new(),
        needs_rewind: false,
        fatal: None,
        assigned_once: false,
        bootstrap: setup.bootstrap.map(Arc::new),
        savepoint: setup.savepoint,
        metrics: setup.metrics.clone(),
        status: setup.status.clone(),
        readiness: setup.readiness.clone(),
        settings: s.clone(),
    };
    let consumer: BaseConsumer<Ctx> = setup
        .client
        .clone()
        .set("group.id", s.group_id())
        // Dynamic membership on purpose: a stopped worker leaves at once so its partitions move
        // immediately, and a restarted one is never refused as an unreleased static member.
        .set("group.protocol", "consumer")
        .set("group.remote.assignor", "range")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Ctx {
            core: Mutex::new(core),
        })?;
    consumer.subscribe(&[
        s.topics.product_updates.as_str(),
        s.topics.order_events.as_str(),
    ])?;

    let batch_records = s.processing.max_batch_records;
    let batch_time = Duration::from_millis(s.processing.max_batch_ms);
    let tick_every = Duration::from_millis(s.processing.tick_interval_ms);
    let mut last_tick = Instant::now();
    let mut last_lag = Instant::now();
    let mut stop_after_savepoint = false;

    loop {
        let msg = consumer.poll(Duration::from_millis(50));
        let mut core = consumer.context().core();
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        let rewound = core.needs_rewind;
        if rewound {
            core.rewind(&consumer)?;
        }
        if let Err(e) = core.seek_restored(&consumer) {
            warn!(error = %e, "seek to the restored offsets failed");
        }
        core.apply_bootstrap()?;
        match msg {
            None => {}
            // Fetched before the rewind: the seek back reads it again, in order. Applying it now
            // would skip everything between the restored offset and this one.
            Some(Ok(_)) if rewound => {}
            Some(Ok(m)) => {
                core.on_record(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.payload(),
                    Instant::now(),
                )?;
            }
            Some(Err(e)) => {
                // A fatal error leaves the consumer unusable: polling on would hang unready.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    let hint = if code == RDKafkaErrorCode::UnreleasedInstanceId {
                        " (a previous process with this instance id crashed without leaving the \
                         group; the broker releases the id after group.consumer.session.timeout.ms)"
                    } else {
                        ""
                    };
                    return Err(EngineError::ConsumerFatal { code, reason, hint });
                }
                warn!(error = %e, "consumer error");
            }
        }
        if last_tick.elapsed() >= tick_every {
            last_tick = Instant::now();
            core.tick()?;
        }
        let batch_due = core.txn_records.len() >= batch_records
            || core.txn_started.is_some_and(|t| t.elapsed() >= batch_time);
        if batch_due {
            core.commit_or_rewind(&consumer);
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            core.refresh_lag();
            core.publish_status();
        }
        if let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Savepoint { id, stop, reply } => {
                    core.commit_or_rewind(&consumer);
                    let result = if core.needs_rewind {
                        Err("the transaction before the savepoint failed; retry".to_owned())
                    } else {
                        take_savepoint(&core, &setup.runtime, &id)
                    };
                    let ok = result.is_ok();
                    let _ = reply.send(result);
                    if ok && stop {
                        stop_after_savepoint = true;
                    }
                }
            }
        }
        if stop_after_savepoint || setup.shutdown.is_requested() {
            core.commit_or_rewind(&consumer);
            drop(core);
            info!("leaving the consumer group");
            consumer.unsubscribe();
            return Ok(());
        }
    }
}

fn take_savepoint(
    core: &Core,
    runtime: &tokio::runtime::Handle,
    id: &str,
) -> Result<Written, String> {
    let store =
        savepoint::Store::open(&core.settings.savepoints.storage_url).map_err(|e| e.to_string())?;
    let snapshot = core.snapshot();
    let written = runtime
        .block_on(store.write(
            id,
            &core.settings.pipeline,
            &core.instance,
            core.partition_count,
            now_ms(),
            &snapshot,
        ))
        .map_err(|e| e.to_string())?;
    info!(savepoint = %written.id, location = %written.location, partitions = ?written.partitions, "savepoint written");
    Ok(written)
}
