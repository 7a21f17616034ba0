//! JSON documents served by REST and WebSocket, written from the stored JSON text rather than
//! re-serialized: a product is its `products` record plus `lastUpdate`.

use std::fmt::Write;

use kartflow_wire::{AlertType, Severity};

use super::record::RecentAlert;
use super::view::Entry;

/// The product document of `entry` with `"lastUpdate"` (epoch ms) added, or `None` when the
/// product is not served (deleted or not on `products` yet).
pub fn product(entry: &Entry) -> Option<String> {
    let doc = entry.doc.as_ref()?;
    let mut out = String::with_capacity(doc.raw().len() + 32);
    write_product(&mut out, doc.raw(), entry.last_update);
    Some(out)
}

/// Appends the product document `raw` (a JSON object) with `lastUpdate` added.
pub fn write_product(out: &mut String, raw: &str, last_update: i64) {
    let body = raw.trim_end();
    match body.strip_suffix('}') {
        Some(open) => {
            out.push_str(open.trim_end());
            // `{}` cannot occur (productId is required), so a comma is always right.
            let _ = write!(out, ",\"lastUpdate\":{}}}", last_update.max(0));
        }
        // decode only admits JSON objects; keep anything else verbatim rather than break it.
        None => out.push_str(body),
    }
}

/// `{"productId": .., "events": [newest first]}`.
pub fn events(id: &str, entry: &Entry) -> String {
    let mut out = String::from("{\"productId\":");
    out.push_str(&serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into()));
    out.push_str(",\"events\":[");
    if let Some(h) = &entry.history {
        for (i, e) in h.events.iter().rev().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.raw);
        }
    }
    out.push_str("]}");
    out
}

/// Which alerts `GET /alerts` returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub severity: Option<Severity>,
    pub alert_type: Option<AlertType>,
    pub product_id: Option<String>,
    pub limit: usize,
}

impl AlertFilter {
    pub fn matches(&self, a: &RecentAlert) -> bool {
        self.severity.is_none_or(|s| s == a.severity)
            && self.alert_type.is_none_or(|t| t == a.alert_type)
            && self
                .product_id
                .as_deref()
                .is_none_or(|p| p == &*a.product_id)
    }
}

/// `{"alerts": [newest first]}`, newest by timestamp (alerts from different partitions arrive
/// in no global order).
pub fn alerts<'a>(all: impl Iterator<Item = &'a RecentAlert>, filter: &AlertFilter) -> String {
    let mut picked: Vec<&RecentAlert> = all.filter(|a| filter.matches(a)).collect();
    picked.sort_by_key(|a| std::cmp::Reverse(a.timestamp));
    picked.truncate(filter.limit);
    let mut out = String::from("{\"alerts\":[");
    for (i, a) in picked.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&a.raw);
    }
    out.push_str("]}");
    out
}

/// A strong ETag from the body: replicas with the same state give the same tag, so a client
/// may revalidate against any replica.
pub fn etag(body: &str) -> String {
    // FNV-1a, 64 bit: stable across builds and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::super::view::testutil::{alert, event, product};
    use super::super::view::{Limits, View};
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn product_document_gains_last_update() {
        let mut v = View::new(Limits::default());
        v.apply(product("P1", "toys", 3, 2.5), None);
        let body = product_of(&v, "P1");
        let doc: Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(doc["productId"], "P1");
        assert_eq!(doc["inventory"], 3);
        assert_eq!(doc["lastUpdate"], 1000);
        let mut out = String::new();
        write_product(&mut out, "{\"productId\":\"x\"}  \n", -1);
        assert_eq!(out, r#"{"productId":"x","lastUpdate":0}"#);
    }

    fn product_of(v: &View, id: &str) -> String {
        v.get(id)
            .and_then(|(_, e)| super::product(e))
            .expect("served")
    }

    #[test]
    fn events_newest_first_and_alerts_filtered() {
        let mut v = View::new(Limits::default());
        for n in 1..=3 {
            v.apply(event("P1", n), None);
        }
        v.apply(alert("P1", Severity::Critical, 5), None);
        v.apply(alert("P2", Severity::Warning, 7), None);
        let e: Value = serde_json::from_str(&events("P1", &v.entries()["P1"])).expect("JSON");
        let ts: Vec<i64> = e["events"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["timestamp"].as_i64())
            .collect();
        assert_eq!(ts, [3, 2, 1]);
        let all = v.recent_alerts().iter().map(|a| &**a);
        let mut f = AlertFilter {
            limit: 10,
            ..AlertFilter::default()
        };
        let a: Value = serde_json::from_str(&alerts(all.clone(), &f)).expect("JSON");
        assert_eq!(a["alerts"][0]["timestamp"], 7, "newest first");
        f.severity = Some(Severity::Critical);
        let a: Value = serde_json::from_str(&alerts(all, &f)).expect("JSON");
        assert_eq!(a, json!({"alerts": [{"productId": "P1", "timestamp": 5}]}));
    }

    #[test]
    fn etag_follows_content_only() {
        assert_eq!(etag("{\"a\":1}"), etag("{\"a\":1}"));
        assert_ne!(etag("{\"a\":1}"), etag("{\"a\":2}"));
        assert_eq!(etag("").len(), 18);
    }
}
