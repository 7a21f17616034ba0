//! Kafka records to view changes: pure decoding and validation of the three input topics.
//!
//! Product documents are kept as the JSON text they arrived as (the canonical `products` record
//! written by the inventory worker) plus the few fields filters and sorting need, so a product
//! costs its JSON plus a small fixed overhead, and serving it is a copy.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use kartflow_wire::{Alert, AlertType, InventoryEvent, Severity};
use serde::Deserialize;
use thiserror::Error;

/// Which input a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// The compacted `products` topic: current state, last record per key wins.
    Products,
    /// `inventory-events`: kept as recent history per product.
    Events,
    /// `inventory-alerts`: kept as recent history per product and over all products.
    Alerts,
}

impl Input {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Events => "inventory-events",
            Self::Alerts => "inventory-alerts",
        }
    }
}

/// The fields of a product the view indexes; the rest stays in `raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductFields {
    pub name: String,
    /// Shared with every other product of the category decoded on this thread (see [`shared`]).
    pub category: Arc<str>,
    pub brand: Arc<str>,
    pub price: f64,
    pub inventory: i64,
    /// The record's JSON object, trimmed.
    pub raw: String,
}

/// One recent inventory event as served by `GET /products/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    pub timestamp: i64,
    pub raw: Box<str>,
}

/// One recent alert as served by `GET /alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentAlert {
    pub product_id: Box<str>,
    pub alert_type: AlertType,
    pub severity: Severity,
    pub timestamp: i64,
    pub raw: Box<str>,
}

/// What one record does to the view.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A `products` record: the product's new state, or `None` for a tombstone (deleted).
    Product {
        id: String,
        fields: Option<ProductFields>,
        /// The record's Kafka timestamp (epoch ms), for `lastUpdate`.
        timestamp: i64,
    },
    Event {
        id: String,
        event: RecentEvent,
    },
    Alert(RecentAlert),
}

impl Change {
    pub fn product_id(&self) -> &str {
        match self {
            Change::Product { id, .. } | Change::Event { id, .. } => id,
            Change::Alert(a) => &a.product_id,
        }
    }
}

/// Why a record was skipped (counted by reason in `kartflow_read_model_records_rejected_total`).
#[derive(Debug, Error, PartialEq)]
pub enum RecordError {
    #[error("empty payload on {0}")]
    Empty(&'static str),
    #[error("not a valid {input} record: {detail}")]
    Undecodable { input: &'static str, detail: String },
    #[error("invalid {input} record: {detail}")]
    Invalid { input: &'static str, detail: String },
    #[error("record key {key:?} is not the payload's productId {id:?}")]
    KeyMismatch { key: String, id: String },
}

impl RecordError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty(_) => "empty_payload",
            Self::Undecodable { .. } => "undecodable",
            Self::Invalid { .. } => "invalid_record",
            Self::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BorrowedProduct<'a> {
    #[serde(borrow)]
    product_id: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    category: Cow<'a, str>,
    #[serde(default, borrow)]
    brand: Cow<'a, str>,
    price: f64,
    inventory: i64,
}

/// Distinct categories and brands a decoding thread remembers; beyond that (a topic where every
/// product has its own brand, say) values are allocated per record instead of growing the cache.
const SHARED_STRINGS_MAX: usize = 10_000;

thread_local! {
    static SHARED_STRINGS: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
}

/// `s` as an `Arc<str>` shared with the earlier records of this thread: a million products in a
/// few hundred categories cost a few hundred allocations instead of two million, during a
/// restore and in memory (the view interns them once more across threads).
pub fn shared(s: &str) -> Arc<str> {
    SHARED_STRINGS.with(|cell| {
        let mut set = cell.borrow_mut();
        if let Some(existing) = set.get(s) {
            return existing.clone();
        }
        let arc: Arc<str> = Arc::from(s);
        if set.len() < SHARED_STRINGS_MAX {
            set.insert(arc.clone());
        }
        arc
    })
}

/// Decodes one record of `input`. A `products` record without payload is a tombstone (its key
/// names the product); the other topics have no tombstones.
pub fn decode(
    input: Input,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    timestamp: i64,
) -> Result<Change, RecordError> {
    let key = key.map(String::from_utf8_lossy);
    let payload = payload.filter(|p| !p.is_empty());
    let undecodable = |e: &dyn std::fmt::Display| RecordError::Undecodable {
        input: input.as_str(),
        detail: e.to_string(),
    };
    let invalid = |detail: &str| RecordError::Invalid {
        input: input.as_str(),
        detail: detail.to_owned(),
    };
    let check_key = |id: &str| match &key {
        Some(k) if k != id => Err(RecordError::KeyMismatch {
            key: k.to_string(),
            id: id.to_owned(),
        }),
        _ => Ok(()),
    };
    match input {
        Input::Products => {
            let Some(payload) = payload else {
                return match key {
                    Some(k) if !k.is_empty() => Ok(Change::Product {
                        id: k.into_owned(),
                        fields: None,
                        timestamp,
                    }),
                    _ => Err(RecordError::Empty(input.as_str())),
                };
            };
            // UTF-8 checked once here; from_str does not check again (from_slice would).
            let text = std::str::from_utf8(payload).map_err(|e| undecodable(&e))?;
            let p: BorrowedProduct<'_> = serde_json::from_str(text).map_err(|e| undecodable(&e))?;
            if p.product_id.is_empty() {
                return Err(invalid("productId is empty"));
            }
            if !p.price.is_finite() {
                return Err(invalid("price is not a finite number"));
            }
            check_key(&p.product_id)?;
            let raw = text.trim();
            Ok(Change::Product {
                id: p.product_id.into_owned(),
                fields: Some(ProductFields {
                    name: p.name.into_owned(),
                    category: shared(&p.category),
                    brand: shared(&p.brand),
                    price: p.price,
                    inventory: p.inventory,
                    raw: raw.to_owned(),
                }),
                timestamp,
            })
        }
        Input::Events => {
            let payload = payload.ok_or(RecordError::Empty(input.as_str()))?;
            let e: InventoryEvent = serde_json::from_slice(payload).map_err(|e| undecodable(&e))?;
            if e.product_id.is_empty() {
                return Err(invalid("productId is empty"));
            }
            check_key(&e.product_id)?;
            Ok(Change::Event {
                event: RecentEvent {
                    timestamp: e.timestamp,
                    raw: compact(payload)?,
                },
                id: e.product_id,
            })
        }
        Input::Alerts => {
            let payload = payload.ok_or(RecordError::Empty(input.as_str()))?;
            let a: Alert = serde_json::from_slice(payload).map_err(|e| undecodable(&e))?;
            if a.product_id.is_empty() {
                return Err(invalid("productId is empty"));
            }
            check_key(&a.product_id)?;
            Ok(Change::Alert(RecentAlert {
                raw: compact(payload)?,
                product_id: a.product_id.into_boxed_str(),
                alert_type: a.alert_type,
                severity: a.severity,
                timestamp: a.timestamp,
            }))
        }
    }
}

/// The payload as trimmed text (already parsed as JSON by the caller).
fn compact(payload: &[u8]) -> Result<Box<str>, RecordError> {
    std::str::from_utf8(payload)
        .map(|s| s.trim().into())
        .map_err(|e| RecordError::Undecodable {
            input: "record",
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn products_keep_their_json_and_index_a_few_fields() {
        let payload = bytes(
            json!({"productId": "P1", "name": "Kart", "category": "toys",
            "brand": "Acme", "price": 9.5, "inventory": 3, "tags": ["x"], "rating": 4.5}),
        );
        let c = decode(Input::Products, Some(b"P1"), Some(&payload), 7).expect("valid");
        let Change::Product {
            id,
            fields: Some(f),
            timestamp,
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!((id.as_str(), timestamp), ("P1", 7));
        assert_eq!((&*f.category, &*f.brand), ("toys", "Acme"));
        assert_eq!((f.price, f.inventory), (9.5, 3));
        assert_eq!(f.raw.as_bytes(), &payload[..]);
    }

    #[test]
    fn a_products_tombstone_deletes_by_key() {
        assert_eq!(
            decode(Input::Products, Some(b"P9"), None, 1),
            Ok(Change::Product {
                id: "P9".into(),
                fields: None,
                timestamp: 1
            })
        );
        assert_eq!(
            decode(Input::Products, None, None, 1).map_err(|e| e.reason()),
            Err("empty_payload")
        );
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason() {
        let event = json!({"productId": "P1", "productName": "Kart", "eventType": "OUT_OF_STOCK",
            "previousInventory": 1, "currentInventory": 0, "previousPrice": 1.0,
            "currentPrice": 1.0, "changeReason": "order", "timestamp": 5});
        type Case<'a> = (Input, Option<&'a [u8]>, Vec<u8>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (Input::Products, None, b"{not json".to_vec(), "undecodable"),
            (
                Input::Products,
                None,
                bytes(json!({"productId": "", "price": 1, "inventory": 1})),
                "invalid_record",
            ),
            (
                Input::Products,
                Some(b"P2"),
                bytes(json!({"productId": "P1", "price": 1, "inventory": 1})),
                "key_mismatch",
            ),
            (
                Input::Products,
                None,
                bytes(json!({"productId": "P1", "price": "x", "inventory": 1})),
                "undecodable",
            ),
            (
                Input::Events,
                Some(b"P2"),
                bytes(event.clone()),
                "key_mismatch",
            ),
            (Input::Events, None, Vec::new(), "empty_payload"),
            (
                Input::Alerts,
                None,
                bytes(json!({"alertType": "NOPE"})),
                "undecodable",
            ),
        ];
        for (input, key, payload, reason) in cases {
            let got = decode(input, key, Some(&payload), 0).map_err(|e| e.reason());
            assert_eq!(
                got,
                Err(reason),
                "{input:?} {}",
                String::from_utf8_lossy(&payload)
            );
        }
        assert!(decode(Input::Events, Some(b"P1"), Some(&bytes(event)), 0).is_ok());
    }

    #[test]
    fn alerts_carry_type_severity_and_product() {
        let payload = bytes(json!({"alertType": "LOW_STOCK", "productId": "P1",
            "message": "low", "severity": "WARNING", "timestamp": 3}));
        let Ok(Change::Alert(a)) = decode(Input::Alerts, Some(b"P1"), Some(&payload), 0) else {
            panic!("alert expected")
        };
        assert_eq!(&*a.product_id, "P1");
        assert_eq!(
            (a.alert_type, a.severity),
            (AlertType::LowStock, Severity::Warning)
        );
        assert_eq!(a.timestamp, 3);
    }
}
