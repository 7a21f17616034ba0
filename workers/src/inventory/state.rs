//! Keyed state of one input partition. Everything the rules need lives here, timers included,
//! so a snapshot (savepoint) or a changelog restores exactly what was running.
//!
//! State is grouped per `productId` on purpose: every input touches one key (a tick touches
//! several, each independently), so a changelog can write one compacted record per touched key
//! and restore a partition by replaying the latest record of each key. Ordered maps keep snapshots
//! and timer firing order deterministic.

use std::collections::BTreeMap;

use kartflow_wire::{OrderLine, Product};
use serde::{Deserialize, Serialize};

/// Version of the serialized state layout, for savepoint compatibility checks and migrations.
pub const STATE_SCHEMA_VERSION: u32 = 1;

/// All keyed state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionState {
    pub keys: BTreeMap<String, KeyState>,
}

/// State of one `productId`. It exists as soon as anything is known about the key: the product
/// itself, orphan order lines waiting for it, or remembered order-line ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyState {
    /// The current canonical record (inventory after all applied order lines); `None` while the
    /// product is not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<Product>,
    /// The last bootstrap-file record applied to this key. Re-applying an identical file record
    /// is a no-op; a changed one is merged field by field against it (see `apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Product>,
    /// Processing time of the last product record or order line applied (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_ms: Option<i64>,
    /// When STALE_INVENTORY fires unless another update arrives first; cleared once fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_deadline_ms: Option<i64>,
    /// Order-line `eventId`s already handled (applied, buffered or dead-lettered), with the
    /// processing time they were first seen; kept for the dedup retention window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, i64>,
    /// Order lines that arrived before their product, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<BufferedLine>,
    /// Demand that could not be served because stock was short.
    #[serde(default, skip_serializing_if = "Oversold::is_none")]
    pub oversold: Oversold,
}

/// An order line waiting for its product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BufferedLine {
    pub line: OrderLine,
    /// Processing time it was buffered (epoch ms); its age is measured from here.
    pub buffered_at_ms: i64,
}

/// Oversell record of one product: the reference job clamped at 0 silently; kartflow keeps the
/// shortfall so it can be reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Oversold {
    /// Units ordered beyond the stock, summed over all oversold lines.
    pub units: i64,
    /// Number of order lines that were (partly) oversold.
    pub lines: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at_ms: Option<i64>,
}

impl Oversold {
    pub fn is_none(&self) -> bool {
        self.lines == 0
    }
}

impl KeyState {
    /// Nothing left worth keeping: the key can be dropped (a changelog writes a tombstone).
    pub fn is_empty(&self) -> bool {
        self.product.is_none()
            && self.bootstrap.is_none()
            && self.seen.is_empty()
            && self.orphans.is_empty()
            && self.oversold.is_none()
    }
}

impl PartitionState {
    /// The current record of a product, if known.
    pub fn product(&self, product_id: &str) -> Option<&Product> {
        self.keys.get(product_id).and_then(|k| k.product.as_ref())
    }

    /// Number of order lines buffered for unknown products (a gauge for metrics).
    pub fn orphan_count(&self) -> usize {
        self.keys.values().map(|k| k.orphans.len()).sum()
    }

    /// Number of remembered order-line ids (a gauge for metrics).
    pub fn dedup_size(&self) -> usize {
        self.keys.values().map(|k| k.seen.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json_with_timers_and_buffers() {
        let line = OrderLine {
            event_id: "e1".into(),
            order_id: "o1".into(),
            product_id: "P2".into(),
            quantity: 2,
            timestamp: 5,
        };
        let mut state = PartitionState::default();
        state.keys.insert(
            "P2".into(),
            KeyState {
                seen: BTreeMap::from([("e1".into(), 7)]),
                orphans: vec![BufferedLine {
                    line,
                    buffered_at_ms: 7,
                }],
                stale_deadline_ms: Some(99),
                oversold: Oversold {
                    units: 3,
                    lines: 1,
                    last_order_id: Some("o0".into()),
                    last_at_ms: Some(1),
                },
                ..KeyState::default()
            },
        );
        let text = serde_json::to_string(&state).expect("serializes");
        assert!(text.contains("staleDeadlineMs"), "{text}");
        let back: PartitionState = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, state);
        assert_eq!(back.orphan_count(), 1);
        assert_eq!(back.dedup_size(), 1);
    }

    #[test]
    fn empty_key_is_detected() {
        assert!(KeyState::default().is_empty());
        let k = KeyState {
            seen: BTreeMap::from([("e".into(), 0)]),
            ..KeyState::default()
        };
        assert!(!k.is_empty());
    }
}
