//! Raw record bytes → typed [`Input`], or a [`DlqEntry`] saying why not. Total over all inputs:
//! a poison pill becomes a DLQ record, never a panic or a crash loop.

use std::collections::{BTreeSet, HashMap};

use kartflow_wire::{OrderLine, Product};
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::io::{DlqEntry, DlqReason, Input, Source};
use super::state::id_hash;
use super::validate::{validate_order_line, validate_product};

fn reject(
    reason: DlqReason,
    detail: impl Into<String>,
    source: Source,
    key: Option<&[u8]>,
    payload: &[u8],
) -> DlqEntry {
    DlqEntry {
        reason,
        detail: detail.into(),
        source,
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
    }
}

/// Decodes and validates one record. `key` is the Kafka record key (`productId`; absent for
/// bootstrap-file records), `payload` the value (`None` for a tombstone).
pub fn decode(
    source: Source,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Input, DlqEntry> {
    let Some(bytes) = payload.filter(|b| !b.trim_ascii().is_empty()) else {
        return Err(reject(
            DlqReason::EmptyPayload,
            "record has no value (tombstone or empty payload)",
            source,
            key,
            payload.unwrap_or_default(),
        ));
    };
    let fail = |reason, detail: String| reject(reason, detail, source, key, bytes);
    let (product_id, input) = match source {
        Source::Bootstrap | Source::ProductUpdates => {
            let product: Product = parse(bytes).map_err(|e| fail(DlqReason::Undecodable, e))?;
            validate_product(&product)
                .map_err(|e| fail(DlqReason::InvalidRecord, e.to_string()))?;
            let id = product.product_id.clone();
            let input = if source == Source::Bootstrap {
                Input::Bootstrap(product)
            } else {
                Input::ProductUpdate(product)
            };
            (id, input)
        }
        Source::OrderEvents => {
            let line: OrderLine = parse(bytes).map_err(|e| fail(DlqReason::Undecodable, e))?;
            validate_order_line(&line)
                .map_err(|e| fail(DlqReason::InvalidRecord, e.to_string()))?;
            (line.product_id.clone(), Input::OrderLine(line))
        }
    };
    // A record keyed differently from its productId was partitioned by the wrong key: applying it
    // here would split that product's state across partitions.
    if let Some(k) = key.filter(|k| !k.is_empty())
        && k != product_id.as_bytes()
    {
        let shown = String::from_utf8_lossy(k);
        return Err(fail(
            DlqReason::KeyMismatch,
            format!("record key {shown:?} differs from productId {product_id:?}"),
        ));
    }
    Ok(input)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The bootstrap file as a whole cannot be read. Individual bad records do not cause this; they
/// come back as DLQ entries.
#[derive(Debug, Error)]
pub enum BootstrapFileError {
    #[error("bootstrap file starts like a JSON array but is not one: {0}")]
    NotJsonArray(#[source] serde_json::Error),
}

/// Calls `f(index, record)` for each record of an initial products file (a JSON array of
/// products, or one product per line), in file order. Records are decoded one at a time and
/// handed over, so the decoded file is never held as a whole. Duplicate ids are not handled here
/// (see [`superseded_records`]).
pub fn each_bootstrap_record(
    bytes: &[u8],
    mut f: impl FnMut(usize, Result<Input, DlqEntry>),
) -> Result<(), BootstrapFileError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.starts_with(b"[") {
        let mut de = serde_json::Deserializer::from_slice(trimmed);
        serde::Deserializer::deserialize_seq(&mut de, ArrayItems(&mut f))
            .map_err(BootstrapFileError::NotJsonArray)?;
        de.end().map_err(BootstrapFileError::NotJsonArray)?;
    } else {
        trimmed
            .split(|b| *b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .enumerate()
            .for_each(|(i, line)| f(i, decode(Source::Bootstrap, None, Some(line))));
    }
    Ok(())
}

/// Visits the items of a JSON array one by one, each decoded like a line of the file.
struct ArrayItems<'f, F>(&'f mut F);

impl<'de, F: FnMut(usize, Result<Input, DlqEntry>)> serde::de::Visitor<'de> for ArrayItems<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of products")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            let raw = serde_json::to_vec(&item).unwrap_or_default();
            drop(item);
            (self.0)(i, decode(Source::Bootstrap, None, Some(&raw)));
            i += 1;
        }
        Ok(())
    }
}

/// Indices of the valid records whose `productId` (one for which `wanted` holds) appears again
/// later in the file as a valid record. The last occurrence wins and the earlier ones are
/// dead-lettered: applying both would make re-applying the file flip the product back and forth
/// instead of being a no-op. Holds a 128-bit hash per id while it runs, not the records.
pub fn superseded_records(
    bytes: &[u8],
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeSet<usize>, BootstrapFileError> {
    let mut last: HashMap<u128, usize> = HashMap::new();
    let mut superseded = BTreeSet::new();
    each_bootstrap_record(bytes, |i, record| {
        if let Ok(Input::Bootstrap(p)) = record
            && wanted(&p.product_id)
            && let Some(earlier) = last.insert(id_hash(&p.product_id), i)
        {
            superseded.insert(earlier);
        }
    })?;
    Ok(superseded)
}

/// The DLQ entry for a record that a later one with the same `productId` supersedes.
pub fn superseded_entry(product: &Product) -> DlqEntry {
    let id = &product.product_id;
    DlqEntry::for_record(
        DlqReason::DuplicateInBootstrap,
        format!("productId {id:?} appears again later in the bootstrap file"),
        Source::Bootstrap,
        id,
        product,
    )
}

/// Decodes a whole initial products file: one result per record in file order, with superseded
/// duplicates dead-lettered (see [`superseded_records`]). The worker streams the file instead
/// ([`each_bootstrap_record`]); this is the same result collected.
pub fn decode_bootstrap_file(
    bytes: &[u8],
) -> Result<Vec<Result<Input, DlqEntry>>, BootstrapFileError> {
    let superseded = superseded_records(bytes, |_| true)?;
    let mut out = Vec::new();
    each_bootstrap_record(bytes, |i, record| {
        out.push(match record {
            Ok(Input::Bootstrap(p)) if superseded.contains(&i) => Err(superseded_entry(&p)),
            other => other,
        });
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCT: &str = r#"{"productId":"P1","name":"Kart","price":9.5,"inventory":3}"#;
    const LINE: &str =
        r#"{"eventId":"e1","orderId":"o1","productId":"P1","quantity":2,"timestamp":1}"#;

    #[test]
    fn decodes_each_source() {
        let p = decode(
            Source::ProductUpdates,
            Some(b"P1"),
            Some(PRODUCT.as_bytes()),
        );
        assert!(
            matches!(p, Ok(Input::ProductUpdate(ref p)) if p.inventory == 3),
            "{p:?}"
        );
        let b = decode(Source::Bootstrap, None, Some(PRODUCT.as_bytes()));
        assert!(matches!(b, Ok(Input::Bootstrap(_))), "{b:?}");
        let l = decode(Source::OrderEvents, Some(b"P1"), Some(LINE.as_bytes()));
        assert!(
            matches!(l, Ok(Input::OrderLine(ref l)) if l.quantity == 2),
            "{l:?}"
        );
        let unkeyed = decode(Source::OrderEvents, None, Some(LINE.as_bytes()));
        assert!(
            unkeyed.is_ok(),
            "a missing key falls back to the payload's productId"
        );
    }

    /// Name, source, key, payload, expected DLQ reason.
    type PoisonPill<'a> = (
        &'a str,
        Source,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        DlqReason,
    );

    /// Poison pills: every one lands in the DLQ with its reason, none panics.
    #[test]
    fn poison_pills_are_dead_lettered_with_a_reason() {
        let deep = "[".repeat(10_000);
        let cases: Vec<PoisonPill<'_>> = vec![
            ("tombstone", Source::ProductUpdates, Some(b"P1"), None, DlqReason::EmptyPayload),
            ("blank", Source::OrderEvents, None, Some(b"  \n"), DlqReason::EmptyPayload),
            ("not json", Source::OrderEvents, None, Some(b"hello"), DlqReason::Undecodable),
            ("not utf-8", Source::OrderEvents, None, Some(&[0xff, 0xfe, 0x00]), DlqReason::Undecodable),
            ("truncated", Source::ProductUpdates, None, Some(br#"{"productId":"P1","pri"#), DlqReason::Undecodable),
            ("wrong type", Source::OrderEvents, None,
             Some(br#"{"eventId":"e","orderId":"o","productId":"P1","quantity":"two","timestamp":1}"#),
             DlqReason::Undecodable),
            ("fractional quantity", Source::OrderEvents, None,
             Some(br#"{"eventId":"e","orderId":"o","productId":"P1","quantity":1.5,"timestamp":1}"#),
             DlqReason::Undecodable),
            ("quantity overflow", Source::OrderEvents, None,
             Some(br#"{"eventId":"e","orderId":"o","productId":"P1","quantity":1e400,"timestamp":1}"#),
             DlqReason::Undecodable),
            ("missing eventId", Source::OrderEvents, None,
             Some(br#"{"orderId":"o","productId":"P1","quantity":1,"timestamp":1}"#),
             DlqReason::Undecodable),
            ("deep nesting", Source::ProductUpdates, None, Some(deep.as_bytes()), DlqReason::Undecodable),
            ("array instead of object", Source::ProductUpdates, None, Some(b"[1,2]"), DlqReason::Undecodable),
            ("negative quantity", Source::OrderEvents, None,
             Some(br#"{"eventId":"e","orderId":"o","productId":"P1","quantity":-3,"timestamp":1}"#),
             DlqReason::InvalidRecord),
            ("empty productId", Source::ProductUpdates, None,
             Some(br#"{"productId":"","price":1,"inventory":1}"#), DlqReason::InvalidRecord),
            ("negative inventory", Source::ProductUpdates, None,
             Some(br#"{"productId":"P1","price":1,"inventory":-1}"#), DlqReason::InvalidRecord),
            ("negative price", Source::Bootstrap, None,
             Some(br#"{"productId":"P1","price":-0.5,"inventory":1}"#), DlqReason::InvalidRecord),
            ("key mismatch", Source::OrderEvents, Some(b"P2"), Some(LINE.as_bytes()), DlqReason::KeyMismatch),
            ("non-utf-8 key", Source::ProductUpdates, Some(&[0xff]), Some(PRODUCT.as_bytes()), DlqReason::KeyMismatch),
        ];
        for (name, source, key, payload, reason) in cases {
            let entry = decode(source, key, payload).expect_err(name);
            assert_eq!(entry.reason, reason, "{name}: {}", entry.detail);
            assert_eq!(entry.source, source, "{name}");
            assert_eq!(
                entry.key.as_deref(),
                key,
                "{name}: key is kept for the DLQ record"
            );
            assert_eq!(
                entry.payload,
                payload.unwrap_or_default(),
                "{name}: payload is kept"
            );
            assert!(!entry.detail.is_empty(), "{name}");
        }
    }

    #[test]
    fn invalid_record_detail_names_the_field() {
        let bad = br#"{"eventId":"e","orderId":"o","productId":"P1","quantity":0,"timestamp":1}"#;
        let entry = decode(Source::OrderEvents, None, Some(bad)).expect_err("zero quantity");
        assert!(entry.detail.contains("quantity"), "{}", entry.detail);
    }

    #[test]
    fn bootstrap_file_as_array_or_lines() {
        let array =
            format!("[{PRODUCT}, {{\"productId\":\"P2\",\"price\":1,\"inventory\":0}}, 42]");
        let records = decode_bootstrap_file(array.as_bytes()).expect("array");
        assert_eq!(records.len(), 3);
        assert!(matches!(records[0], Ok(Input::Bootstrap(_))));
        assert!(matches!(records[1], Ok(Input::Bootstrap(_))));
        assert!(matches!(&records[2], Err(e) if e.reason == DlqReason::Undecodable));

        let lines = format!("{PRODUCT}\n\nnot json\n");
        let records = decode_bootstrap_file(lines.as_bytes()).expect("ndjson");
        assert_eq!(records.len(), 2);
        assert!(matches!(records[0], Ok(Input::Bootstrap(_))));
        assert!(matches!(&records[1], Err(e) if e.reason == DlqReason::Undecodable));

        assert!(decode_bootstrap_file(b"").expect("empty").is_empty());
        assert!(
            decode_bootstrap_file(b"[1, 2").is_err(),
            "a broken array is a file error"
        );
    }

    #[test]
    fn bootstrap_file_duplicate_ids_keep_the_last() {
        let file = r#"[{"productId":"P1","price":1,"inventory":1},
                       {"productId":"P1","price":2,"inventory":2}]"#;
        let records = decode_bootstrap_file(file.as_bytes()).expect("array");
        assert!(matches!(&records[0], Err(e) if e.reason == DlqReason::DuplicateInBootstrap));
        assert!(matches!(&records[1], Ok(Input::Bootstrap(p)) if p.inventory == 2));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(source in proptest::sample::select(vec![
                                   Source::Bootstrap, Source::ProductUpdates, Source::OrderEvents]),
                               key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
                               payload in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64))) {
            let _ = decode(source, key.as_deref(), payload.as_deref());
            let _ = decode_bootstrap_file(payload.as_deref().unwrap_or_default());
        }

        #[test]
        fn decode_never_panics_on_json_like_text(text in r#"[\[\]{}":,0-9a-zA-Z\-\.e ]{0,80}"#) {
            for source in [Source::Bootstrap, Source::ProductUpdates, Source::OrderEvents] {
                let _ = decode(source, None, Some(text.as_bytes()));
            }
            let _ = decode_bootstrap_file(text.as_bytes());
        }
    }
}
