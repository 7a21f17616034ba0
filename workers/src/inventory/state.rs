//! Keyed state of one input partition. Everything the rules need lives here, timers included,
//! so a snapshot (savepoint) or a changelog restores exactly what was running.
//!
//! State is grouped per `productId` on purpose: every input touches one key (a tick touches
//! several, each independently), so a changelog can write one compacted record per touched key
//! and restore a partition by replaying the latest record of each key. Ordered maps keep snapshots
//! and timer firing order deterministic.
//!
//! Memory: a product is held once, as the canonical JSON the `products` topic carries
//! ([`StoredProduct`], one allocation, with the few numbers the rules read kept beside it). The
//! last bootstrap-file version of a product is not kept, only a fingerprint of it per field
//! ([`FileVersion`]: enough to make a re-applied file a no-op and to merge a changed one field by
//! field). Remembered order-line ids are 128-bit hashes in a sorted vector ([`SeenIds`]).

use std::collections::BTreeMap;
use std::fmt;

use kartflow_wire::{OrderLine, Product};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the serialized state layout, for savepoint compatibility checks and migrations.
/// Version 2 stores a per-field fingerprint of the last bootstrap record (`file`) instead of the
/// whole record (`bootstrap`) and hashed order-line ids (`seenIds`) instead of the ids (`seen`);
/// version 1 state still reads (it is converted on load).
pub const STATE_SCHEMA_VERSION: u32 = 2;

/// Oldest state schema this version reads.
pub const OLDEST_READABLE_STATE_SCHEMA: u32 = 1;

/// All keyed state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionState {
    pub keys: BTreeMap<String, KeyState>,
}

/// State of one `productId`. It exists as soon as anything is known about the key: the product
/// itself, orphan order lines waiting for it, or remembered order-line ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    /// The current canonical record (inventory after all applied order lines); `None` while the
    /// product is not known yet.
    pub product: Option<StoredProduct>,
    /// Fingerprint of the last bootstrap-file record applied to this key. Re-applying an
    /// identical file record is a no-op; a changed one is merged field by field (see `apply`).
    pub file: Option<Box<FileVersion>>,
    /// Processing time of the last product record or order line applied (epoch ms).
    pub last_update_ms: Option<i64>,
    /// When STALE_INVENTORY fires unless another update arrives first; cleared once fired.
    pub stale_deadline_ms: Option<i64>,
    /// Order-line `eventId`s already handled (applied, buffered or dead-lettered), with the
    /// processing time they were first seen; kept for the dedup retention window.
    pub seen: SeenIds,
    /// Order lines that arrived before their product, in arrival order.
    pub orphans: Vec<BufferedLine>,
    /// Demand that could not be served because stock was short; boxed because few products
    /// ever have it (`None` when nothing was oversold).
    pub oversold: Option<Box<Oversold>>,
    /// Counts the changes of the product record (each upsert and each deduction). It makes alert
    /// ids stable: replaying the same inputs from the same state gives the same versions.
    pub version: u64,
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

/// What [`KeyState::oversold`] reads for a product never oversold.
static NOT_OVERSOLD: Oversold = Oversold {
    units: 0,
    lines: 0,
    last_order_id: None,
    last_at_ms: None,
};

// ---------------------------------------------------------------------------------------------
// The product, held once.

/// A product as the canonical JSON record (exactly what `serde_json` writes for a
/// [`Product`]), so emitting it to `products` needs no encoding. Inventory and price, which the
/// rules read on every input, are kept decoded beside it; the position of the inventory digits
/// lets a deduction rewrite them in place of a decode/encode round trip.
#[derive(Clone, PartialEq)]
pub struct StoredProduct {
    json: Box<[u8]>,
    inventory: i64,
    price: f64,
    /// Byte range of the inventory digits in `json`.
    inv_at: u32,
    inv_len: u32,
    /// Byte range of the `name` string literal (with its quotes) in `json`.
    name_at: u32,
    name_end: u32,
}

fn len_u32(n: usize) -> Result<u32, serde_json::Error> {
    u32::try_from(n).map_err(|_| de::Error::custom("product record longer than 4 GiB"))
}

fn push_i64(buf: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        // `n % 10` < 10, so the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&digits[i..]);
}

impl StoredProduct {
    /// Encodes `p` as its canonical JSON record. Fails only for values JSON cannot carry, which
    /// validation already refuses.
    pub fn new(p: &Product) -> Result<Self, serde_json::Error> {
        let mut b: Vec<u8> = Vec::with_capacity(
            160 + p.product_id.len()
                + p.name.len()
                + p.description.len()
                + p.category.len()
                + p.brand.len()
                + p.image_url.len()
                + p.tags.iter().map(|t| t.len() + 3).sum::<usize>(),
        );
        b.extend_from_slice(b"{\"productId\":");
        serde_json::to_writer(&mut b, &p.product_id)?;
        b.extend_from_slice(b",\"name\":");
        let name_at = b.len();
        serde_json::to_writer(&mut b, &p.name)?;
        let name_end = b.len();
        b.extend_from_slice(b",\"description\":");
        serde_json::to_writer(&mut b, &p.description)?;
        b.extend_from_slice(b",\"category\":");
        serde_json::to_writer(&mut b, &p.category)?;
        b.extend_from_slice(b",\"brand\":");
        serde_json::to_writer(&mut b, &p.brand)?;
        b.extend_from_slice(b",\"price\":");
        serde_json::to_writer(&mut b, &p.price)?;
        b.extend_from_slice(b",\"inventory\":");
        let inv_at = b.len();
        push_i64(&mut b, p.inventory);
        let inv_len = b.len() - inv_at;
        b.extend_from_slice(b",\"imageUrl\":");
        serde_json::to_writer(&mut b, &p.image_url)?;
        b.extend_from_slice(b",\"tags\":");
        serde_json::to_writer(&mut b, &p.tags)?;
        b.extend_from_slice(b",\"rating\":");
        serde_json::to_writer(&mut b, &p.rating)?;
        b.extend_from_slice(b",\"reviewCount\":");
        push_i64(&mut b, p.review_count);
        b.push(b'}');
        Ok(Self {
            inventory: p.inventory,
            price: p.price,
            inv_at: len_u32(inv_at)?,
            inv_len: len_u32(inv_len)?,
            name_at: len_u32(name_at)?,
            name_end: len_u32(name_end)?,
            json: b.into_boxed_slice(),
        })
    }

    /// The canonical JSON record, as produced to the `products` topic.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn inventory(&self) -> i64 {
        self.inventory
    }

    pub fn price(&self) -> f64 {
        self.price
    }

    /// The product's name (decoded from the record on demand: only events need it).
    pub fn name(&self) -> String {
        let at = self.name_at as usize;
        let end = self.name_end as usize;
        let literal = self.json.get(at..end).unwrap_or_default();
        // Without a backslash the literal's content is the name itself (every event asks).
        if let Some(inner) = literal.get(1..literal.len().saturating_sub(1))
            && !inner.contains(&b'\\')
            && let Ok(name) = std::str::from_utf8(inner)
        {
            return name.to_owned();
        }
        serde_json::from_slice(literal).unwrap_or_default()
    }

    /// The record decoded. It was encoded from a valid [`Product`], so this does not fail in
    /// practice; the error is for a state file edited by hand.
    pub fn to_product(&self) -> Result<Product, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }

    /// Sets the inventory, rewriting its digits in the record.
    pub fn set_inventory(&mut self, inventory: i64) {
        if inventory == self.inventory {
            return;
        }
        let at = self.inv_at as usize;
        let end = at + self.inv_len as usize;
        let mut digits = Vec::with_capacity(20);
        push_i64(&mut digits, inventory);
        if digits.len() == end - at {
            // Same width (the usual case): rewrite in place, no new record.
            self.json[at..end].copy_from_slice(&digits);
        } else {
            let mut b = Vec::with_capacity(self.json.len() - (end - at) + digits.len());
            b.extend_from_slice(&self.json[..at]);
            b.extend_from_slice(&digits);
            b.extend_from_slice(&self.json[end..]);
            self.json = b.into_boxed_slice();
        }
        // Digits of an i64 fit a u32 whatever the value.
        self.inv_len = u32::try_from(digits.len()).unwrap_or(self.inv_len);
        self.inventory = inventory;
    }

    /// Heap bytes held (for the state size estimate).
    pub fn heap_bytes(&self) -> usize {
        self.json.len()
    }
}

impl fmt::Debug for StoredProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// So tests and callers can compare with a decoded product.
impl PartialEq<Product> for StoredProduct {
    fn eq(&self, other: &Product) -> bool {
        StoredProduct::new(other).is_ok_and(|o| o.json == self.json)
    }
}

impl Serialize for StoredProduct {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_product()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredProduct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = Product::deserialize(d)?;
        StoredProduct::new(&p).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The last bootstrap-file version, as fingerprints.

/// What is kept of the last bootstrap-file record of a key: its numbers as they were and a
/// 64-bit fingerprint (SHA-256 prefix) of each text field, in the order name, description,
/// category, brand, imageUrl, tags. Two records with equal fingerprints are taken as equal; a
/// changed text field goes unnoticed only if its 64-bit fingerprint collides (odds 2^-64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileVersion {
    pub price: f64,
    pub inventory: i64,
    pub rating: f64,
    pub review_count: i64,
    pub text: [u64; 6],
}

fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

impl FileVersion {
    pub fn of(p: &Product) -> Self {
        let tags: Vec<&str> = p.tags.iter().map(String::as_str).collect();
        Self {
            price: p.price,
            inventory: p.inventory,
            rating: p.rating,
            review_count: p.review_count,
            text: [
                fingerprint(&[&p.name]),
                fingerprint(&[&p.description]),
                fingerprint(&[&p.category]),
                fingerprint(&[&p.brand]),
                fingerprint(&[&p.image_url]),
                fingerprint(&tags),
            ],
        }
    }

    /// `current` with every field that differs between this (the old file record) and `new`
    /// taken from `new`: a three-way merge with the file as the other side.
    pub fn merge(&self, current: &Product, new: &Product) -> Product {
        let fresh = Self::of(new);
        fn pick<T: Clone>(changed: bool, cur: &T, new: &T) -> T {
            if changed { new.clone() } else { cur.clone() }
        }
        let text = |i: usize| self.text[i] != fresh.text[i];
        Product {
            product_id: new.product_id.clone(),
            name: pick(text(0), &current.name, &new.name),
            description: pick(text(1), &current.description, &new.description),
            category: pick(text(2), &current.category, &new.category),
            brand: pick(text(3), &current.brand, &new.brand),
            price: pick(self.price != new.price, &current.price, &new.price),
            inventory: pick(
                self.inventory != new.inventory,
                &current.inventory,
                &new.inventory,
            ),
            image_url: pick(text(4), &current.image_url, &new.image_url),
            tags: pick(text(5), &current.tags, &new.tags),
            rating: pick(self.rating != new.rating, &current.rating, &new.rating),
            review_count: pick(
                self.review_count != new.review_count,
                &current.review_count,
                &new.review_count,
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Remembered order-line ids.

/// Order-line ids already handled, as 128-bit hashes (SHA-256 prefix) with the processing time
/// each was first seen, sorted by hash. 24 bytes an id whatever its length; two distinct ids of
/// one product are confused only on a 128-bit collision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenIds(Vec<(u128, i64)>);

/// The hash an order-line id is remembered by.
pub fn id_hash(id: &str) -> u128 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl SeenIds {
    pub fn contains(&self, id: &str) -> bool {
        let h = id_hash(id);
        self.0.binary_search_by(|(k, _)| k.cmp(&h)).is_ok()
    }

    /// Remembers `id` at `now_ms`; returns false if it was already there.
    pub fn insert(&mut self, id: &str, now_ms: i64) -> bool {
        self.insert_hash(id_hash(id), now_ms)
    }

    fn insert_hash(&mut self, h: u128, now_ms: i64) -> bool {
        match self.0.binary_search_by(|(k, _)| k.cmp(&h)) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, (h, now_ms));
                true
            }
        }
    }

    /// Keeps the ids whose first-seen time passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        self.0.retain(|(_, t)| keep(*t));
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for SeenIds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        // The changelog writes these for every touched key: hex digits without a String each.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32];
        for (h, t) in &self.0 {
            for (i, b) in buf.iter_mut().enumerate() {
                // The nibble is < 16, so the cast cannot truncate.
                *b = HEX[((h >> (124 - 4 * i)) & 0xf) as usize];
            }
            let hex = std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?;
            m.serialize_entry(hex, t)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for SeenIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeenIds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of 32-hex-digit id hashes to epoch ms")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SeenIds, A::Error> {
                let mut out = SeenIds::default();
                while let Some((k, t)) = map.next_entry::<String, i64>()? {
                    let h = u128::from_str_radix(&k, 16).map_err(de::Error::custom)?;
                    out.insert_hash(h, t);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// KeyState on the wire (changelog and savepoints).

/// The serialized form of a key, as written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyStateOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a StoredProduct>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a FileVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_deadline_ms: Option<i64>,
    #[serde(skip_serializing_if = "no_ids")]
    seen_ids: &'a SeenIds,
    #[serde(skip_serializing_if = "no_lines")]
    orphans: &'a [BufferedLine],
    #[serde(skip_serializing_if = "no_oversell")]
    oversold: &'a Oversold,
    #[serde(skip_serializing_if = "is_zero")]
    version: u64,
}

fn no_ids(s: &&SeenIds) -> bool {
    s.is_empty()
}

fn no_lines(s: &&[BufferedLine]) -> bool {
    s.is_empty()
}

fn no_oversell(o: &&Oversold) -> bool {
    o.is_none()
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The serialized form of a key, as read. `bootstrap` and `seen` are the schema-1 fields, read
/// for migration only.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyStateIn {
    #[serde(default)]
    product: Option<StoredProduct>,
    #[serde(default)]
    file: Option<FileVersion>,
    #[serde(default)]
    bootstrap: Option<Product>,
    #[serde(default)]
    last_update_ms: Option<i64>,
    #[serde(default)]
    stale_deadline_ms: Option<i64>,
    #[serde(default)]
    seen: BTreeMap<String, i64>,
    #[serde(default)]
    seen_ids: SeenIds,
    #[serde(default)]
    orphans: Vec<BufferedLine>,
    #[serde(default)]
    oversold: Oversold,
    #[serde(default)]
    version: u64,
}

impl KeyState {
    fn wire(&self, with_product: bool) -> KeyStateOut<'_> {
        KeyStateOut {
            product: self.product.as_ref().filter(|_| with_product),
            file: self.file.as_deref(),
            last_update_ms: self.last_update_ms,
            stale_deadline_ms: self.stale_deadline_ms,
            seen_ids: &self.seen,
            orphans: &self.orphans,
            oversold: self.oversold(),
            version: self.version,
        }
    }

    /// The key as JSON for the changelog: the same document as its `Serialize` form, with the
    /// stored product record spliced in as it is (no decode and re-encode).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let Some(product) = &self.product else {
            return serde_json::to_vec(&self.wire(false));
        };
        // One buffer: the product record, then the other fields' object with its `{` turned
        // into the `,` that continues this one.
        let mut out = Vec::with_capacity(product.json.len() + 64 + 48 * self.seen.len());
        out.extend_from_slice(b"{\"product\":");
        out.extend_from_slice(&product.json);
        let rest = out.len();
        serde_json::to_writer(&mut out, &self.wire(false))?;
        if out.len() - rest > 2 {
            out[rest] = b',';
        } else {
            out.truncate(rest);
            out.push(b'}');
        }
        Ok(out)
    }
}

impl Serialize for KeyState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire(true).serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeyState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = KeyStateIn::deserialize(d)?;
        let mut seen = w.seen_ids;
        for (id, t) in &w.seen {
            seen.insert(id, *t);
        }
        let file = w.file.or_else(|| w.bootstrap.as_ref().map(FileVersion::of));
        Ok(KeyState {
            product: w.product,
            file: file.map(Box::new),
            last_update_ms: w.last_update_ms,
            stale_deadline_ms: w.stale_deadline_ms,
            seen,
            orphans: w.orphans,
            oversold: (!w.oversold.is_none()).then(|| Box::new(w.oversold)),
            version: w.version,
        })
    }
}

impl KeyState {
    /// The oversell record (all zero when nothing was oversold).
    pub fn oversold(&self) -> &Oversold {
        self.oversold.as_deref().unwrap_or(&NOT_OVERSOLD)
    }

    /// Nothing left worth keeping: the key can be dropped (a changelog writes a tombstone).
    pub fn is_empty(&self) -> bool {
        self.product.is_none()
            && self.file.is_none()
            && self.seen.is_empty()
            && self.orphans.is_empty()
            && self.oversold.is_none()
    }
}

impl PartitionState {
    /// The current record of a product, if known (decoded).
    pub fn product(&self, product_id: &str) -> Option<Product> {
        self.keys
            .get(product_id)
            .and_then(|k| k.product.as_ref())
            .and_then(|p| p.to_product().ok())
    }

    /// The current inventory of a product, if known.
    pub fn inventory(&self, product_id: &str) -> Option<i64> {
        self.keys
            .get(product_id)
            .and_then(|k| k.product.as_ref())
            .map(StoredProduct::inventory)
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

    fn sample() -> Product {
        Product {
            product_id: "P\"1\u{e9}".into(),
            name: "Kart \\ \"Deluxe\"\n".into(),
            description: "d".into(),
            category: String::new(),
            brand: "b".into(),
            price: 19.99,
            inventory: 42,
            image_url: "https://x.invalid/a.png".into(),
            tags: vec!["a".into(), "b\u{1}".into()],
            rating: 4.0,
            review_count: 7,
        }
    }

    #[test]
    fn state_round_trips_through_json_with_timers_and_buffers() {
        let line = OrderLine {
            event_id: "e1".into(),
            order_id: "o1".into(),
            product_id: "P2".into(),
            quantity: 2,
            timestamp: 5,
        };
        let mut seen = SeenIds::default();
        seen.insert("e1", 7);
        let mut state = PartitionState::default();
        state.keys.insert(
            "P2".into(),
            KeyState {
                seen,
                orphans: vec![BufferedLine {
                    line,
                    buffered_at_ms: 7,
                }],
                stale_deadline_ms: Some(99),
                oversold: Some(Box::new(Oversold {
                    units: 3,
                    lines: 1,
                    last_order_id: Some("o0".into()),
                    last_at_ms: Some(1),
                })),
                ..KeyState::default()
            },
        );
        let p = sample();
        state.keys.insert(
            p.product_id.clone(),
            KeyState {
                product: Some(StoredProduct::new(&p).expect("encodes")),
                file: Some(Box::new(FileVersion::of(&p))),
                version: 3,
                ..KeyState::default()
            },
        );
        let text = serde_json::to_string(&state).expect("serializes");
        assert!(text.contains("staleDeadlineMs"), "{text}");
        let back: PartitionState = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, state);
        assert_eq!(back.orphan_count(), 1);
        assert_eq!(back.dedup_size(), 1);
        // The changelog's fast form is the same document.
        for k in state.keys.values() {
            let fast: serde_json::Value =
                serde_json::from_slice(&k.to_json().expect("encodes")).expect("json");
            assert_eq!(fast, serde_json::to_value(k).expect("value"));
        }
    }

    #[test]
    fn schema_1_keys_are_migrated() {
        let old = serde_json::json!({
            "product": {"productId": "P1", "name": "Kart", "price": 9.5, "inventory": 3},
            "bootstrap": {"productId": "P1", "name": "Kart", "price": 9.5, "inventory": 5},
            "seen": {"e1": 10, "e2": 11},
            "lastUpdateMs": 11
        });
        let k: KeyState = serde_json::from_value(old).expect("schema 1 reads");
        assert_eq!(k.product.as_ref().map(StoredProduct::inventory), Some(3));
        assert!(k.seen.contains("e1") && k.seen.contains("e2") && !k.seen.contains("e3"));
        let file = k
            .file
            .as_deref()
            .expect("file fingerprint from the old record");
        assert_eq!(file.inventory, 5);
        let again: KeyState =
            serde_json::from_slice(&k.to_json().expect("encodes")).expect("schema 2 reads");
        assert_eq!(again, k);
    }

    #[test]
    fn stored_product_is_the_canonical_record() {
        let p = sample();
        let s = StoredProduct::new(&p).expect("encodes");
        assert_eq!(s.json(), serde_json::to_vec(&p).expect("serde").as_slice());
        assert_eq!(s.name(), p.name);
        assert_eq!(s.to_product().expect("decodes"), p);
        for inv in [0, 9, 10, 1_000_000, i64::MAX] {
            let mut t = s.clone();
            t.set_inventory(inv);
            let mut q = p.clone();
            q.inventory = inv;
            assert_eq!(t.json(), serde_json::to_vec(&q).expect("serde").as_slice());
            assert_eq!(t.inventory(), inv);
            assert_eq!(t.name(), p.name);
        }
    }

    #[test]
    fn seen_ids_remember_hashes() {
        let mut s = SeenIds::default();
        assert!(s.insert("a", 1));
        assert!(!s.insert("a", 2));
        assert!(s.insert("b", 3));
        assert!(s.contains("a") && s.contains("b") && !s.contains("c"));
        s.retain(|t| t >= 3);
        assert!(!s.contains("a") && s.contains("b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn file_version_merges_only_changed_fields() {
        let old = sample();
        let mut current = old.clone();
        current.inventory = 10;
        current.name = "renamed by an update".into();
        let mut new = old.clone();
        new.price = 5.0;
        let merged = FileVersion::of(&old).merge(&current, &new);
        assert_eq!(merged.price, 5.0);
        assert_eq!(merged.inventory, 10);
        assert_eq!(merged.name, "renamed by an update");
        assert_eq!(FileVersion::of(&old), FileVersion::of(&old.clone()));
        assert_ne!(FileVersion::of(&old), FileVersion::of(&new));
    }

    #[test]
    fn empty_key_is_detected() {
        assert!(KeyState::default().is_empty());
        let mut seen = SeenIds::default();
        seen.insert("e", 0);
        let k = KeyState {
            seen,
            ..KeyState::default()
        };
        assert!(!k.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn stored_product_matches_serde(id in "\\PC{1,12}", name in "\\PC{0,20}", price in 0.0..1e9f64,
                                        inventory in 0..i64::MAX, tags in proptest::collection::vec("\\PC{0,5}", 0..3)) {
            let p = Product { product_id: id, name, description: String::new(), category: "c".into(),
                brand: String::new(), price, inventory, image_url: String::new(), tags, rating: 1.5, review_count: 0 };
            let s = StoredProduct::new(&p).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let want = serde_json::to_vec(&p).unwrap_or_default();
            proptest::prop_assert_eq!(s.json(), want.as_slice());
            proptest::prop_assert_eq!(s.name(), p.name.clone());
        }
    }
}
