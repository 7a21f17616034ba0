//! The Kafka transaction around a batch: begin on the first record, commit outputs, changelog
//! and input offsets together, and on failure abort and rewind state and position to the last
//! commit, so a record's effect is exactly once.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::records::send_raw;
use super::{Core, EngineError};
use crate::inventory::runtime::changelog::{self, META_KEY};

pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl Core {
    /// Opens a transaction unless one is open: the first record of a batch starts it.
    pub(super) fn begin(&mut self) -> Result<(), EngineError> {
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.txn_open = true;
            self.txn_started = Some(Instant::now());
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
        self.drain_deliveries();
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

    /// Waits until every record of the transaction is delivered, checking every 1 ms (the
    /// producer's own thread serves the delivery reports). `commit_transaction` flushes first,
    /// and rdkafka's flush waits for deliveries in steps of 100 ms whatever arrives meanwhile, so
    /// any record still in flight cost a whole 100 ms per transaction; after this the flush finds
    /// nothing in flight and returns at once. A delivery failure is not hidden: the commit
    /// reports it.
    fn drain_deliveries(&self) {
        let deadline = Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Commits the open transaction; on failure aborts it and schedules a rewind to the last
    /// committed state. A fenced or fatal producer ends the loop.
    pub(super) fn commit_or_rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
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
