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

use super::id::ProductId;

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

/// A product's document and the fields the view indexes.
///
/// One allocation per product: the record's JSON text, and only when the name has escapes (so
/// is not a substring of it) the unescaped name after it. The name is a range of that text, so
/// keeping it for sorting costs no allocation of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductFields {
    text: Box<str>,
    name_at: u32,
    name_len: u32,
    /// Shared with every other product of the category decoded on this thread (see [`shared`]).
    pub category: Arc<str>,
    pub brand: Arc<str>,
    pub price: f64,
    pub inventory: i64,
}

impl ProductFields {
    /// `raw` is the record's JSON object (trimmed); `name` its decoded name, which points into
    /// `raw` when it had no escapes (serde borrows it from the input then).
    pub fn new(
        raw: &str,
        name: &str,
        category: Arc<str>,
        brand: Arc<str>,
        price: f64,
        inventory: i64,
    ) -> Self {
        let base = raw.as_ptr() as usize;
        let at = (name.as_ptr() as usize).wrapping_sub(base);
        // Inside `raw` (pointer arithmetic on addresses only, nothing dereferenced): a range of
        // it, which never reaches the end of the text (a JSON string is followed by at least its
        // closing quote; `raw` relies on that). An empty name needs no range; anything else is
        // appended.
        let inside = !name.is_empty() && at < raw.len() && name.len() < raw.len() - at;
        let (text, at) = if name.is_empty() {
            (Box::<str>::from(raw), 0)
        } else if inside {
            (Box::<str>::from(raw), at)
        } else {
            let mut t = String::with_capacity(raw.len() + name.len());
            t.push_str(raw);
            t.push_str(name);
            (t.into_boxed_str(), raw.len())
        };
        // Kafka records are far below 4 GiB; a larger one could not have been fetched.
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            text,
            name_at: to_u32(at),
            name_len: to_u32(name.len()),
            category,
            brand,
            price,
            inventory,
        }
    }

    fn name_range(&self) -> std::ops::Range<usize> {
        let at = self.name_at as usize;
        at..at + self.name_len as usize
    }

    /// The record's JSON object as received (trimmed): what is served.
    pub fn raw(&self) -> &str {
        let name = self.name_range();
        // An appended name ends the text; a name inside the JSON never does (a quote follows).
        if !name.is_empty() && name.end == self.text.len() {
            self.text.get(..name.start).unwrap_or_default()
        } else {
            &self.text
        }
    }

    pub fn name(&self) -> &str {
        self.text.get(self.name_range()).unwrap_or_default()
    }

    /// Heap bytes held by the document text.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
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
        id: ProductId,
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
            Change::Product { id, .. } => id,
            Change::Event { id, .. } => id,
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

/// FNV-1a, for the sets of interned categories and brands: they are looked up twice per product
/// record on the decoding thread and twice under the view's lock, and for strings of a few bytes
/// SipHash (std's default) costs several times more. FNV is not DoS-resistant; that is acceptable
/// because the values come from the `products` topic the pipeline itself writes, and the sets
/// hold one entry per distinct category or brand (the decoding threads' at most
/// `SHARED_STRINGS_MAX`).
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of interned strings.
pub type StrSet = HashSet<Arc<str>, std::hash::BuildHasherDefault<Fnv>>;

thread_local! {
    static SHARED_STRINGS: RefCell<StrSet> = RefCell::new(StrSet::default());
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
                        id: ProductId::new(&k),
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
                id: ProductId::new(&p.product_id),
                fields: Some(ProductFields::new(
                    raw,
                    &p.name,
                    shared(&p.category),
                    shared(&p.brand),
                    p.price,
                    p.inventory,
                )),
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
    fn a_thread_shares_categories_and_brands_across_records() {
        let decode_one = |id: &str| {
            let payload = bytes(json!({"productId": id, "category": "toys", "brand": "Acme",
                "price": 1.0, "inventory": 1}));
            match decode(Input::Products, None, Some(&payload), 1) {
                Ok(Change::Product {
                    fields: Some(f), ..
                }) => f,
                other => panic!("{other:?}"),
            }
        };
        let (a, b) = (decode_one("P1"), decode_one("P2"));
        assert!(Arc::ptr_eq(&a.category, &b.category));
        assert!(Arc::ptr_eq(&a.brand, &b.brand));
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
        assert_eq!(f.raw().as_bytes(), &payload[..]);
        assert_eq!(f.name(), "Kart");
        // The name is a range of the document, not a copy.
        assert_eq!(f.text_len(), payload.len());
    }

    #[test]
    fn a_name_with_escapes_is_kept_unescaped_after_the_document() {
        let payload =
            r#"  {"productId":"P1","name":"Kart \"GT\" \u00e9","price":1,"inventory":2} "#;
        let Ok(Change::Product {
            fields: Some(f), ..
        }) = decode(Input::Products, Some(b"P1"), Some(payload.as_bytes()), 0)
        else {
            panic!("valid")
        };
        assert_eq!(f.name(), "Kart \"GT\" é");
        assert_eq!(f.raw(), payload.trim());
        // A name that is the empty default: no range, the document as is.
        let Ok(Change::Product {
            fields: Some(f), ..
        }) = decode(
            Input::Products,
            None,
            Some(br#"{"productId":"P2","price":1,"inventory":2}"#),
            0,
        )
        else {
            panic!("valid")
        };
        assert_eq!(
            (f.name(), f.raw()),
            ("", r#"{"productId":"P2","price":1,"inventory":2}"#)
        );
    }

    #[test]
    fn a_products_tombstone_deletes_by_key() {
        assert_eq!(
            decode(Input::Products, Some(b"P9"), None, 1),
            Ok(Change::Product {
                id: ProductId::new("P9"),
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
