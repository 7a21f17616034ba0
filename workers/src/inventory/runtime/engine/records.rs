//! One consumed record (or tick, or bootstrap product) in: decode, apply to its partition's
//! state, and enqueue what it produced (outputs, DLQ entries) in the open transaction.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{Core, EngineError, now_ms};
use crate::inventory::runtime::savepoint::sha256_hex;
use crate::inventory::{
    Disposition, DlqEntry, DlqReason, Input, Outputs, Source, apply, decode, each_bootstrap_record,
    superseded_entry, superseded_records,
};
use crate::kafka::partitioner::partition_for_key;

impl Core {
    /// Enqueues a record (or holds it while the previous batch commits) and counts it.
    fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), EngineError> {
        if self.inflight.is_some() {
            self.held
                .borrow_mut()
                .push(topic, partition, key, payload, headers);
        } else {
            send_raw(&self.producer, topic, partition, key, payload, headers)?;
        }
        self.records_out.inc(topic);
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
        &mut self,
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
        if let Some(suppressed) = self.dlq_log.admit(Instant::now()) {
            let key = entry.key.as_deref().map(String::from_utf8_lossy);
            let (partition, offset) = origin.map(|(_, p, o)| (p, o)).unzip();
            warn!(
                reason = entry.reason.as_str(),
                detail = %entry.detail,
                topic = %source_topic,
                partition,
                offset,
                key = key.as_deref(),
                dlq_topic = %self.settings.topics.dlq,
                suppressed_since_last_line = suppressed,
                "record sent to the DLQ"
            );
        }
        let key = entry.key.clone().unwrap_or_default();
        self.send(
            &self.settings.topics.dlq,
            None,
            &key,
            Some(&entry.payload),
            Some(headers),
        )
    }

    fn emit(&mut self, id: Option<&str>, out: &Outputs) -> Result<(), EngineError> {
        let t = &self.settings.topics;
        for p in &out.products {
            // The stored record is the canonical JSON: no encoding here.
            let decoded;
            let key = match id {
                Some(id) => id,
                None => {
                    decoded = p.to_product().map(|p| p.product_id).unwrap_or_default();
                    &decoded
                }
            };
            self.send(&t.products, None, key.as_bytes(), Some(p.json()), None)?;
        }
        // One encoding for both topics, into a buffer reused from record to record (the
        // producer copies what it is given).
        let mut buf = std::mem::take(&mut self.encode_buf);
        for e in &out.events {
            buf.clear();
            if serde_json::to_writer(&mut buf, e).is_err() {
                buf.clear();
            }
            let key = e.product_id.as_bytes();
            self.send(&t.inventory_events, None, key, Some(&buf), None)?;
            self.send(&t.websocket_fanout, None, key, Some(&buf), None)?;
        }
        self.encode_buf = buf;
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
        // State is about to be restored to the last commit: nothing may build on it.
        if self.needs_rewind {
            return Ok(());
        }
        let Some(slot) = self.slots.get_mut(&p) else {
            return Ok(());
        };
        let id = match &input {
            Input::Bootstrap(p) | Input::ProductUpdate(p) => Some(p.product_id.clone()),
            Input::OrderLine(l) => Some(l.product_id.clone()),
            Input::Tick => None,
        };
        let mut out = apply(&mut slot.state, &self.rules, input, now);
        // A tick that fired nothing must not open a transaction of its own.
        let empty = out.is_empty();
        slot.dirty_keys.extend(std::mem::take(&mut out.touched));
        // Orphans enter only as `Buffered` and leave only applied or expired to the DLQ.
        let expired = out
            .dlq
            .iter()
            .filter(|d| d.reason == DlqReason::OrphanExpired)
            .count();
        let buffered = usize::from(out.disposition == Disposition::Buffered);
        slot.orphans = (slot.orphans + buffered).saturating_sub(out.orphans_applied + expired);
        if out.disposition != Disposition::Tick {
            self.dispositions
                .inc(Self::disposition_label(&out.disposition));
        }
        if empty {
            return Ok(());
        }
        self.begin()?;
        self.emit(id.as_deref(), &out)
    }

    /// One consumed record.
    pub(super) fn on_record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        consumed_at: Instant,
    ) -> Result<(), EngineError> {
        // Read again after the rewind's seek.
        if self.needs_rewind {
            return Ok(());
        }
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
        self.records_in.inc(topic);
        self.txn_records.push(consumed_at);
        match decode(self.source_of(topic), key, payload) {
            Ok(input) => self.apply_to(partition, input, now_ms())?,
            Err(entry) => {
                self.dispositions.inc("dead_lettered");
                self.send_dlq(&entry, Some((topic, partition, offset)))?;
            }
        }
        if let Some(slot) = self.slots.get_mut(&partition) {
            // The topic's entry exists after its first record: no key to allocate per record.
            match slot.meta.offsets.get_mut(topic) {
                Some(next) => *next = offset + 1,
                None => {
                    slot.meta.offsets.insert(topic.to_owned(), offset + 1);
                }
            }
            slot.meta_dirty = true;
        }
        Ok(())
    }

    /// Advances processing time on every owned partition.
    pub(super) fn tick(&mut self) -> Result<(), EngineError> {
        let now = now_ms();
        let partitions: Vec<i32> = self.slots.keys().copied().collect();
        for p in partitions {
            self.apply_to(p, Input::Tick, now)?;
        }
        Ok(())
    }

    /// Applies the bootstrap file to partitions that have not seen this version of it. The file
    /// is read again here (it is not kept in memory between rebalances) and streamed: one pass
    /// finds the superseded duplicates, one applies the records of the pending partitions.
    pub(super) fn apply_bootstrap(&mut self) -> Result<(), EngineError> {
        if self.to_bootstrap.is_empty() {
            return Ok(());
        }
        let Some(file) = self.bootstrap.clone() else {
            self.to_bootstrap.clear();
            return Ok(());
        };
        // A whole catalogue must go to the producer, not be held behind a commit in flight.
        self.settle_inflight(true)?;
        if self.needs_rewind {
            return Ok(());
        }
        let bad = |detail: String| EngineError::Bootstrap {
            path: file.path.clone(),
            detail,
        };
        let bytes = std::fs::read(&file.path).map_err(|e| bad(e.to_string()))?;
        let hash = sha256_hex(&bytes);
        if hash != file.hash {
            info!(path = %file.path.display(), %hash, checked_at_start = %file.hash,
                "the bootstrap file changed since start; applying its current content");
        }
        let pending: BTreeSet<i32> = std::mem::take(&mut self.to_bootstrap)
            .into_iter()
            .filter(|p| {
                self.slots
                    .get(p)
                    .is_some_and(|s| s.meta.bootstrap_hash.as_deref() != Some(hash.as_str()))
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let count = i32::try_from(self.partition_count).unwrap_or(i32::MAX);
        let partition_of = |id: &str| partition_for_key(id.as_bytes(), count);
        // File-level rejects (undecodable records, superseded duplicates) are reported once, by
        // partition 0's owner.
        let reports = pending.contains(&0);
        let superseded =
            superseded_records(&bytes, |id| reports || pending.contains(&partition_of(id)))
                .map_err(|e| bad(e.to_string()))?;
        self.begin()?;
        let now = now_ms();
        let mut failure = None;
        each_bootstrap_record(&bytes, |i, record| {
            if failure.is_some() {
                return;
            }
            let result = match record {
                Ok(Input::Bootstrap(product)) if superseded.contains(&i) => {
                    if reports {
                        self.send_dlq(&superseded_entry(&product), None)
                    } else {
                        Ok(())
                    }
                }
                Ok(input @ Input::Bootstrap(_)) => {
                    let p = match &input {
                        Input::Bootstrap(product) => partition_of(&product.product_id),
                        _ => -1,
                    };
                    if pending.contains(&p) {
                        self.apply_to(p, input, now)
                    } else {
                        Ok(())
                    }
                }
                Ok(_) => Ok(()),
                Err(entry) if reports => self.send_dlq(&entry, None),
                Err(_) => Ok(()),
            };
            if let Err(e) = result {
                failure = Some(e);
            }
        })
        .map_err(|e| bad(e.to_string()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        for p in &pending {
            if let Some(slot) = self.slots.get_mut(p) {
                slot.meta.bootstrap_hash = Some(hash.clone());
                slot.meta_dirty = true;
            }
            info!(partition = p, %hash, "bootstrap products applied");
        }
        Ok(())
    }
}

/// Enqueues a record, waiting while the producer queue is full.
pub(super) fn send_raw(
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
