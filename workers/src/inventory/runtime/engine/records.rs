//! One consumed record (or tick, or bootstrap product) in: decode, apply to its partition's
//! state, and enqueue what it produced (outputs, DLQ entries) in the open transaction.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use serde::Serialize;
use tracing::{debug, info};

use super::{Core, EngineError, now_ms};
use crate::inventory::{Disposition, DlqEntry, Input, Outputs, Source, apply, decode};
use crate::kafka::partitioner::partition_for_key;

impl Core {
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
    pub(super) fn on_record(
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
    pub(super) fn tick(&mut self) -> Result<(), EngineError> {
        let now = now_ms();
        let partitions: Vec<i32> = self.slots.keys().copied().collect();
        for p in partitions {
            self.apply_to(p, Input::Tick, now)?;
        }
        Ok(())
    }

    /// Applies the bootstrap file to partitions that have not seen this version of it.
    pub(super) fn apply_bootstrap(&mut self) -> Result<(), EngineError> {
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
