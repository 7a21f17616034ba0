//! What goes into and comes out of the state machine. Plain data: the Kafka loop maps inputs from
//! records and outputs to topics, and counts each [`Disposition`] and [`DlqReason`] in metrics.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;

use kartflow_wire::{Alert, AlertType, InventoryEvent, OrderLine, Product, Severity};
use serde::{Deserialize, Serialize};

use super::state::StoredProduct;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The initial products file (ConfigMap).
    Bootstrap,
    /// The `product-updates` topic.
    ProductUpdates,
    /// The `order-events` topic.
    OrderEvents,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::ProductUpdates => "product-updates",
            Self::OrderEvents => "order-events",
        }
    }
}

/// One step of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A record of the initial products file: an idempotent upsert.
    Bootstrap(Product),
    /// A `product-updates` record: replaces the product record.
    ProductUpdate(Product),
    /// An `order-events` record: deducts stock once per `eventId`.
    OrderLine(OrderLine),
    /// Processing time advanced: fire due timers, expire orphans, forget old order-line ids.
    Tick,
}

/// Why a record went to the DLQ. `as_str` is the stable value for the error header and the
/// metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    /// Tombstone or empty payload: there is no record to apply.
    EmptyPayload,
    /// Not JSON, or not the expected shape.
    Undecodable,
    /// Parsed, but a field is out of range (negative quantity, NaN price, empty id...).
    InvalidRecord,
    /// The record key is not the payload's `productId`, so it sits on the wrong partition.
    KeyMismatch,
    /// A later record in the same bootstrap file has the same `productId`.
    DuplicateInBootstrap,
    /// An order line waited for its unknown product longer than `orphanMaxAge`.
    OrphanExpired,
    /// More than `orphanMaxPerProduct` order lines were waiting for one unknown product.
    OrphanBufferFull,
}

impl DlqReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::Undecodable => "undecodable",
            Self::InvalidRecord => "invalid_record",
            Self::KeyMismatch => "key_mismatch",
            Self::DuplicateInBootstrap => "duplicate_in_bootstrap",
            Self::OrphanExpired => "orphan_expired",
            Self::OrphanBufferFull => "orphan_buffer_full",
        }
    }
}

impl fmt::Display for DlqReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record for the DLQ topic. The Kafka loop adds partition and offset headers when it knows
/// them (records refused by `decode`); orphans dead-lettered later carry their own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    pub reason: DlqReason,
    /// Human-readable cause, e.g. the parse error or the invalid field.
    pub detail: String,
    pub source: Source,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl DlqEntry {
    /// A DLQ entry for a typed record, re-serialized as JSON.
    pub(crate) fn for_record<T: Serialize>(
        reason: DlqReason,
        detail: impl Into<String>,
        source: Source,
        key: &str,
        record: &T,
    ) -> Self {
        Self {
            reason,
            detail: detail.into(),
            source,
            key: (!key.is_empty()).then(|| key.as_bytes().to_vec()),
            // Serializing our own wire types cannot fail; an empty payload would still carry
            // reason, detail and key.
            payload: serde_json::to_vec(record).unwrap_or_default(),
        }
    }
}

/// What happened to the input itself, for the metrics that prove nothing is dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The input changed state.
    Applied,
    /// A bootstrap record identical to the one already applied: nothing to do.
    Unchanged,
    /// An order line whose `eventId` was already handled.
    Duplicate,
    /// An order line waiting for its product.
    Buffered,
    /// The input went to the DLQ.
    DeadLettered(DlqReason),
    /// A timer tick.
    Tick,
}

/// Everything one input produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub disposition: Disposition,
    /// For `inventory-events` and `websocket-fanout`.
    pub events: Vec<InventoryEvent>,
    /// For `inventory-alerts`.
    pub alerts: Vec<AlertOut>,
    /// Canonical records for the compacted `products` topic, after the change.
    pub products: Vec<StoredProduct>,
    /// For the DLQ topic (the input itself and/or orphans dead-lettered by this step).
    pub dlq: Vec<DlqEntry>,
    /// Buffered orphans applied because their product arrived.
    pub orphans_applied: usize,
    /// Keys whose state changed, for the changelog. A key missing from the state afterwards was
    /// removed (write a tombstone).
    pub touched: BTreeSet<String>,
}

impl Outputs {
    pub(crate) fn new(disposition: Disposition) -> Self {
        Self {
            disposition,
            events: Vec::new(),
            alerts: Vec::new(),
            products: Vec::new(),
            dlq: Vec::new(),
            orphans_applied: 0,
            touched: BTreeSet::new(),
        }
    }

    /// True when the input had no effect at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.alerts.is_empty()
            && self.products.is_empty()
            && self.dlq.is_empty()
            && self.touched.is_empty()
    }

    pub(crate) fn event(&mut self, e: InventoryEvent) {
        self.events.push(e);
    }
}

/// An alert with its stable id: `<productId>/<version>/<ALERT_TYPE>`, where `version` counts the
/// changes of the product's record in state. Replaying the same inputs from the same state (after
/// a crash or a rebalance) gives the same id, so a consumer outside Kafka (a pager, a mail
/// gateway) can deduplicate on it. Serialized as the wire [`Alert`] plus `alertId`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertOut {
    pub id: String,
    pub alert: Alert,
}

impl Deref for AlertOut {
    type Target = Alert;
    fn deref(&self) -> &Alert {
        &self.alert
    }
}

impl Serialize for AlertOut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Record<'a> {
            alert_type: AlertType,
            product_id: &'a str,
            message: &'a str,
            severity: Severity,
            timestamp: i64,
            alert_id: &'a str,
        }
        Record {
            alert_type: self.alert.alert_type,
            product_id: &self.alert.product_id,
            message: &self.alert.message,
            severity: self.alert.severity,
            timestamp: self.alert.timestamp,
            alert_id: &self.id,
        }
        .serialize(s)
    }
}
