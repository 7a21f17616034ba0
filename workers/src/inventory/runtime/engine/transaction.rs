//! The Kafka transaction around a batch: begin on the first record, commit outputs, changelog
//! and input offsets together, and on failure abort and rewind state and position to the last
//! commit, so a record's effect is exactly once.
//!
//! The commit of batch N overlaps the processing of batch N+1. [`Core::start_commit`] writes
//! N's changelog and offsets into its transaction on the loop's thread, then a helper thread
//! waits for N's deliveries and commits. Meanwhile the loop applies the next records to state;
//! their outputs are held in memory ([`Held`]) because the producer takes no records while a
//! commit is in progress. Once N committed, [`Core::settle_inflight`] begins N+1's transaction
//! and hands the held records to the producer. At most one commit is in flight: a batch that is
//! due while the previous one is still committing waits for it. If N fails, N+1 is built on
//! state that never committed, so both go: the transaction is aborted, the held records are
//! dropped, and the rewind restores every partition from the changelog (state and offsets of
//! the last commit), as for any failed commit. No record is applied while a rewind is pending.

use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::records::send_raw;
use super::{Core, EngineError};
use crate::inventory::runtime::changelog::{self, META_KEY};

pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type TxnProducer = Arc<ThreadedProducer<DefaultProducerContext>>;

/// A commit running on its helper thread.
pub(super) struct Inflight {
    handle: JoinHandle<Result<(), KafkaError>>,
    /// Consume instants of the batch's records, for the latency histogram.
    records: Vec<Instant>,
    started: Instant,
}

/// Output records produced while a commit is in flight, sent in order once the next transaction
/// is open. Keys and payloads share one buffer (kept between batches), so holding a record costs
/// no allocation of its own.
#[derive(Default)]
pub(super) struct Held {
    bytes: Vec<u8>,
    records: Vec<HeldRecord>,
    topics: Vec<String>,
}

struct HeldRecord {
    topic: usize,
    partition: Option<i32>,
    key: Range<usize>,
    payload: Option<Range<usize>>,
    headers: Option<OwnedHeaders>,
}

impl Held {
    pub(super) fn push(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) {
        // A handful of output topics: a scan beats hashing.
        let topic = match self.topics.iter().position(|t| t == topic) {
            Some(i) => i,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        let mut append = |b: &[u8]| {
            let at = self.bytes.len();
            self.bytes.extend_from_slice(b);
            at..self.bytes.len()
        };
        let key = append(key);
        let payload = payload.map(append);
        self.records.push(HeldRecord {
            topic,
            partition,
            key,
            payload,
            headers,
        });
    }

    /// Drops every held record (their batch was aborted).
    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
    }

    /// Hands every held record to the producer, in order.
    fn send_all(&mut self, producer: &TxnProducer) -> Result<(), EngineError> {
        for r in self.records.drain(..) {
            let topic = self.topics.get(r.topic).map_or("", String::as_str);
            let key = self.bytes.get(r.key).unwrap_or_default();
            let payload = r.payload.and_then(|p| self.bytes.get(p));
            send_raw(producer, topic, r.partition, key, payload, r.headers)?;
        }
        self.bytes.clear();
        Ok(())
    }
}

impl Core {
    /// Marks a batch open on its first record; opens the producer's transaction unless a commit
    /// is in flight (then the batch's outputs are held until it finished).
    pub(super) fn begin(&mut self) -> Result<(), EngineError> {
        if self.txn_started.is_none() {
            self.txn_started = Some(Instant::now());
        }
        if !self.txn_open && self.inflight.is_none() {
            self.producer.begin_transaction()?;
            self.txn_open = true;
        }
        Ok(())
    }

    /// Writes the open transaction's changelog records and collects the input offsets to commit
    /// with it.
    fn write_changelog(&mut self) -> Result<TopicPartitionList, EngineError> {
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
        Ok(offsets)
    }

    /// Finishes the open batch's transaction (changelog, offsets) and hands its commit to a
    /// helper thread. A commit still in flight is waited for first.
    pub(super) fn start_commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.settle_inflight(true) {
            self.fatal.get_or_insert(e);
            return;
        }
        if !self.txn_open {
            return;
        }
        let started = Instant::now();
        let prepared = self.write_changelog().and_then(|offsets| {
            let cgm = if offsets.count() > 0 {
                Some(
                    consumer
                        .group_metadata()
                        .ok_or(EngineError::NoGroupMetadata)?,
                )
            } else {
                None
            };
            Ok((offsets, cgm))
        });
        self.txn_open = false;
        self.txn_started = None;
        match prepared {
            Ok((offsets, cgm)) => {
                let producer = Arc::clone(&self.producer);
                let spawned = std::thread::Builder::new()
                    .name("txn-commit".to_owned())
                    .spawn(move || commit(&producer, &offsets, cgm.as_ref()));
                match spawned {
                    Ok(handle) => {
                        self.inflight = Some(Inflight {
                            handle,
                            records: std::mem::take(&mut self.txn_records),
                            started,
                        });
                    }
                    Err(e) => self.abort_and_rewind(&EngineError::CommitThread(e.to_string())),
                }
            }
            Err(e) => self.abort_and_rewind(&e),
        }
    }

    /// Collects the result of the commit in flight: when it is done, or waiting for it with
    /// `wait`. After a success the batch processed meanwhile gets its transaction and its held
    /// records; after a failure both batches are aborted and a rewind is scheduled. The error is
    /// a producer that cannot begin or take records (the loop ends).
    pub(super) fn settle_inflight(&mut self, wait: bool) -> Result<(), EngineError> {
        let Some(inflight) = self.inflight.take_if(|i| wait || i.handle.is_finished()) else {
            return Ok(());
        };
        let result = match inflight.handle.join() {
            Ok(r) => r.map_err(EngineError::from),
            Err(_) => Err(EngineError::CommitThread("panicked".to_owned())),
        };
        if let Err(e) = result {
            self.abort_and_rewind(&e);
            return Ok(());
        }
        let done = Instant::now();
        self.metrics
            .commit_seconds
            .observe(done.duration_since(inflight.started).as_secs_f64());
        for t in inflight.records {
            self.metrics
                .processing_seconds
                .observe(done.duration_since(t).as_secs_f64());
        }
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        if self.txn_started.is_some() {
            self.producer.begin_transaction()?;
            self.txn_open = true;
            self.held.borrow_mut().send_all(&self.producer)?;
        }
        Ok(())
    }

    /// Aborts the producer's transaction, drops the open batch (held records included) and
    /// schedules a rewind to the last commit. A producer that cannot abort was fenced.
    fn abort_and_rewind(&mut self, e: &EngineError) {
        self.txn_records.clear();
        self.held.borrow_mut().clear();
        self.txn_open = false;
        self.txn_started = None;
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

    /// Commits everything open and waits for it (rebalances, savepoints, shutdown): on failure
    /// aborts and schedules a rewind to the last committed state. A fenced or fatal producer ends
    /// the loop.
    pub(super) fn commit_or_rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.start_commit(consumer);
        if let Err(e) = self.settle_inflight(true) {
            self.fatal.get_or_insert(e);
        }
    }

    /// Drops all state and restores every owned partition: used after an aborted transaction.
    pub(super) fn rewind<C: ConsumerContext>(
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
}

/// The helper thread's part of a commit: wait for the batch's deliveries, add the input offsets,
/// commit.
fn commit(
    producer: &ThreadedProducer<DefaultProducerContext>,
    offsets: &TopicPartitionList,
    cgm: Option<&ConsumerGroupMetadata>,
) -> Result<(), KafkaError> {
    drain_deliveries(producer);
    if let Some(cgm) = cgm {
        producer.send_offsets_to_transaction(offsets, cgm, TXN_TIMEOUT)?;
    }
    if injected_commit_failure() {
        return Err(KafkaError::Canceled);
    }
    producer.commit_transaction(TXN_TIMEOUT)
}

/// Debug builds only: `KARTFLOW_DEBUG_FAIL_COMMIT_EVERY=N` fails every Nth commit after its
/// deliveries and offsets, right before `commit_transaction`, so a test can drive the abort and
/// rewind of a batch whose successor was processed while it committed (a real broker rarely
/// fails a commit on demand). Release builds never read the variable.
#[cfg(debug_assertions)]
fn injected_commit_failure() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let every = std::env::var("KARTFLOW_DEBUG_FAIL_COMMIT_EVERY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0);
    every.is_some_and(|n| (COMMITS.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n))
}

#[cfg(not(debug_assertions))]
fn injected_commit_failure() -> bool {
    false
}

/// Waits until every record of the transaction is delivered, checking every 1 ms (librdkafka's
/// own threads count deliveries off). `commit_transaction` flushes first, and rdkafka's
/// flush waits for deliveries in steps of 100 ms whatever arrives meanwhile, so any record still
/// in flight cost a whole 100 ms per transaction; after this the flush finds nothing in flight
/// and returns at once. A delivery failure is not hidden: the commit reports it.
fn drain_deliveries(producer: &ThreadedProducer<DefaultProducerContext>) {
    let deadline = Instant::now() + TXN_TIMEOUT;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}
