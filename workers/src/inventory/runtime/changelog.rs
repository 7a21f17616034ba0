//! The compacted state changelog: one record per product key (tombstone when the key is empty)
//! plus one meta record per partition, written in the same transaction as the outputs and the
//! input offsets. Restoring a partition replays its changelog partition.
//!
//! The meta record carries the input offsets the state corresponds to. Restore reads until the
//! meta offsets have caught up with the group's committed offsets, which closes the window in
//! which a just-committed transaction's marker has reached the offsets topic but not yet the
//! changelog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::inventory::{KeyState, PartitionState};

/// Key of the per-partition meta record. The leading NUL keeps it apart from any product id.
pub const META_KEY: &[u8] = b"\0kartflow.meta";

/// What the state of one partition corresponds to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMeta {
    /// Next offset to read per input topic (the offsets committed with this state).
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
    /// Content hash of the bootstrap products file last applied to this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_hash: Option<String>,
    /// The savepoint this partition's state was started from, so a restart with the same
    /// `--from-savepoint` does not rewind to it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_id: Option<String>,
}

/// A restored partition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    pub state: PartitionState,
    pub meta: PartitionMeta,
    /// Changelog records replayed (for logs and metrics).
    pub records: u64,
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("cannot create the changelog restore consumer: {0}")]
    Client(KafkaError),
    #[error("reading changelog {topic} partition {partition} failed: {source}")]
    Read {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error(
        "changelog {topic} partition {partition} has an unreadable record at offset {offset}: \
         {detail}; the changelog was written by an incompatible version or corrupted"
    )]
    Corrupt {
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
    #[error(
        "changelog {topic} partition {partition} did not catch up with the committed input offsets \
         within {waited:?} (state at {have:?}, committed {want:?}); is a transaction stuck?"
    )]
    Behind {
        topic: String,
        partition: i32,
        waited: Duration,
        have: BTreeMap<String, i64>,
        want: BTreeMap<String, i64>,
    },
}

/// The restore consumer asks for end-of-partition events; librdkafka also reports them as
/// client errors, which are expected here and not worth an ERROR log line.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports end-of-partition here as a global error.
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, reason, "changelog restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Serialises a key's state for the changelog; `None` is a tombstone.
pub fn encode_key(state: Option<&KeyState>) -> Option<Vec<u8>> {
    state
        .filter(|k| !k.is_empty())
        .and_then(|k| k.to_json().ok())
}

/// Applies one changelog record to a partition being restored.
fn apply_record(restored: &mut Restored, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
    if key == META_KEY {
        if let Some(v) = value {
            restored.meta = serde_json::from_slice(v).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let id = std::str::from_utf8(key).map_err(|e| e.to_string())?;
    match value {
        None => {
            restored.state.keys.remove(id);
        }
        Some(v) => {
            let k: KeyState = serde_json::from_slice(v).map_err(|e| e.to_string())?;
            restored.state.keys.insert(id.to_owned(), k);
        }
    }
    restored.records += 1;
    Ok(())
}

/// True when the restored meta offsets have reached the committed ones (nothing committed
/// counts as reached).
fn caught_up(meta: &PartitionMeta, committed: &BTreeMap<String, i64>) -> bool {
    committed
        .iter()
        .all(|(topic, want)| meta.offsets.get(topic).is_some_and(|have| have >= want))
}

/// Restores `partitions` of `topic`, reading each until its meta offsets reach `committed[p]`.
pub fn restore(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    committed: &BTreeMap<i32, BTreeMap<String, i64>>,
    timeout: Duration,
) -> Result<BTreeMap<i32, Restored>, RestoreError> {
    let mut out: BTreeMap<i32, Restored> = partitions
        .iter()
        .map(|p| (*p, Restored::default()))
        .collect();
    if partitions.is_empty() {
        return Ok(out);
    }
    let consumer: BaseConsumer<RestoreContext> = config
        .clone()
        .set("group.id", "kartflow-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create_with_context(RestoreContext)
        .map_err(RestoreError::Client)?;
    let read_err = |partition, source| RestoreError::Read {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| read_err(*p, e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| read_err(partitions[0], e))?;

    let empty = BTreeMap::new();
    let mut at_eof: BTreeMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    let start = Instant::now();
    loop {
        let done = at_eof.iter().all(|(p, eof)| {
            *eof && out
                .get(p)
                .is_some_and(|r| caught_up(&r.meta, committed.get(p).unwrap_or(&empty)))
        });
        if done {
            return Ok(out);
        }
        if start.elapsed() > timeout {
            let (p, r) = out
                .iter()
                .find(|(p, r)| !caught_up(&r.meta, committed.get(p).unwrap_or(&empty)))
                .map(|(p, r)| (*p, r.meta.offsets.clone()))
                .unwrap_or((partitions[0], BTreeMap::new()));
            return Err(RestoreError::Behind {
                topic: topic.to_owned(),
                partition: p,
                waited: timeout,
                want: committed.get(&p).cloned().unwrap_or_default(),
                have: r,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_eof.insert(p, true);
            }
            Some(Err(e)) => return Err(read_err(-1, e)),
            Some(Ok(m)) => {
                let p = m.partition();
                at_eof.insert(p, false);
                let Some(r) = out.get_mut(&p) else { continue };
                apply_record(r, m.key().unwrap_or_default(), m.payload()).map_err(|detail| {
                    RestoreError::Corrupt {
                        topic: topic.to_owned(),
                        partition: p,
                        offset: m.offset(),
                        detail,
                    }
                })?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Oversold;

    #[test]
    fn replaying_records_rebuilds_state_and_meta() {
        let mut r = Restored::default();
        let k = KeyState {
            oversold: Some(Box::new(Oversold {
                units: 2,
                lines: 1,
                ..Oversold::default()
            })),
            ..KeyState::default()
        };
        let bytes = encode_key(Some(&k)).expect("non-empty key encodes");
        apply_record(&mut r, b"P1", Some(&bytes)).expect("record");
        apply_record(&mut r, b"P2", Some(&bytes)).expect("record");
        apply_record(&mut r, b"P2", None).expect("tombstone");
        let meta = PartitionMeta {
            offsets: BTreeMap::from([("order-events".into(), 7)]),
            ..PartitionMeta::default()
        };
        let meta_bytes = serde_json::to_vec(&meta).expect("meta");
        apply_record(&mut r, META_KEY, Some(&meta_bytes)).expect("meta record");
        assert_eq!(r.state.keys.len(), 1);
        assert_eq!(r.state.keys.get("P1"), Some(&k));
        assert_eq!(r.meta, meta);
        assert_eq!(r.records, 3);
    }

    #[test]
    fn empty_keys_become_tombstones_and_garbage_is_reported() {
        assert_eq!(encode_key(Some(&KeyState::default())), None);
        assert_eq!(encode_key(None), None);
        let mut r = Restored::default();
        assert!(apply_record(&mut r, b"P1", Some(b"{not json")).is_err());
    }

    #[test]
    fn caught_up_compares_every_committed_topic() {
        let meta = PartitionMeta {
            offsets: BTreeMap::from([("a".into(), 5), ("b".into(), 3)]),
            ..PartitionMeta::default()
        };
        assert!(caught_up(&meta, &BTreeMap::new()));
        assert!(caught_up(&meta, &BTreeMap::from([("a".into(), 5)])));
        assert!(!caught_up(&meta, &BTreeMap::from([("b".into(), 4)])));
        assert!(!caught_up(&meta, &BTreeMap::from([("c".into(), 1)])));
    }
}
