//! The whole product view of one replica: productId → current product document, last update,
//! and a bounded history of recent events and alerts; plus the positions it reflects and a
//! bounded log of which products changed (what WebSocket clients follow).
//!
//! Order independence is the design rule: a product's state comes only from the `products`
//! topic (last record wins), its history only from `inventory-events`/`inventory-alerts` (in
//! their per-product order), and `lastUpdate` is a maximum. So a replica reading the partitions
//! of the three topics at any relative pace ends in the same view (see `properties`).

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::id::{self, ProductId};
use super::offsets::Offsets;
use super::record::{Change, ProductFields, RecentAlert, RecentEvent};

/// The bounds of the history the view keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub events_per_product: usize,
    pub alerts_per_product: usize,
    pub recent_alerts: usize,
    /// Product changes remembered for WebSocket clients that are behind; a client further
    /// behind than this is closed (it cannot be told what it missed).
    pub change_log: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            events_per_product: 10,
            alerts_per_product: 5,
            recent_alerts: 1_000,
            change_log: 1 << 16,
        }
    }
}

/// A product's indexed fields and its JSON document, as decoded (its category and brand shared
/// with the other products its decoding thread saw: see [`super::record::shared`]).
pub type ProductDoc = ProductFields;

/// Recent history of one product, allocated only once it has any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub events: VecDeque<RecentEvent>,
    pub alerts: VecDeque<Arc<RecentAlert>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `None`: deleted (tombstone) or not seen on `products` yet; such entries are not served.
    pub doc: Option<ProductDoc>,
    /// Epoch ms: the newest of the `products` record timestamp and the history's timestamps.
    pub last_update: i64,
    pub history: Option<Box<History>>,
}

/// Where an applied record sits in Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub topic: &'a Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A WebSocket client's cursor fell out of the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind;

#[derive(Debug, Default)]
pub struct View {
    limits: Limits,
    products: BTreeMap<ProductId, Entry>,
    /// Entries with a document.
    served: usize,
    alerts: VecDeque<Arc<RecentAlert>>,
    changes: VecDeque<(u64, ProductId)>,
    /// Sequence of the last change; the change log holds `(evicted, seq]`.
    seq: u64,
    evicted: u64,
    offsets: Offsets,
}

impl View {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Applies one decoded record read at `at` (`None` in tests and for records without a
    /// position). Returns the product id that changed.
    pub fn apply(&mut self, change: Change, at: Option<Position<'_>>) -> ProductId {
        if let Some(p) = at {
            self.offsets.advance(p.topic, p.partition, p.offset + 1);
        }
        self.seq += 1;
        let seq = self.seq;
        let limits = self.limits;
        // Only product documents are followed by WebSocket clients (history is served by REST):
        // an event arriving before its product record would otherwise push an unchanged product.
        let is_product = matches!(change, Change::Product { .. });
        let (id, change) = match change {
            Change::Product {
                id,
                fields: doc,
                timestamp,
            } => {
                let (key, entry) = entry_for(&mut self.products, id);
                let was_served = entry.doc.is_some();
                let now_served = doc.is_some();
                entry.doc = doc;
                entry.last_update = entry.last_update.max(timestamp);
                match (was_served, now_served) {
                    (false, true) => self.served += 1,
                    (true, false) => self.served -= 1,
                    _ => {}
                }
                (key, None)
            }
            Change::Event { id, event } => {
                let (key, entry) = entry_for(&mut self.products, ProductId::new(&id));
                entry.last_update = entry.last_update.max(event.timestamp);
                if limits.events_per_product > 0 {
                    let events = &mut entry.history.get_or_insert_with(Box::default).events;
                    push_bounded(events, event, limits.events_per_product);
                }
                (key, None)
            }
            Change::Alert(alert) => {
                let alert = Arc::new(alert);
                let (key, entry) = entry_for(&mut self.products, ProductId::new(&alert.product_id));
                entry.last_update = entry.last_update.max(alert.timestamp);
                if limits.alerts_per_product > 0 {
                    let alerts = &mut entry.history.get_or_insert_with(Box::default).alerts;
                    push_bounded(alerts, alert.clone(), limits.alerts_per_product);
                }
                (key, Some(alert))
            }
        };
        if let Some(alert) = change {
            push_bounded(&mut self.alerts, alert, limits.recent_alerts);
        }
        if is_product {
            if self.changes.len() >= self.limits.change_log.max(1)
                && let Some((evicted, _)) = self.changes.pop_front()
            {
                self.evicted = evicted;
            }
            self.changes.push_back((seq, id.clone()));
        }
        id
    }

    /// Records that `at` was read without a change (a rejected record, a control record): the
    /// position still moves, so catch-up and read-your-writes see it.
    pub fn skip(&mut self, at: Position<'_>) {
        self.offsets.advance(at.topic, at.partition, at.offset + 1);
    }

    /// Sets a partition's position without a record (the consumer moved past control records).
    pub fn reached(&mut self, topic: &Arc<str>, partition: i32, next: i64) {
        self.offsets.advance(topic, partition, next);
    }

    /// A served product (one with a document).
    pub fn get(&self, id: &str) -> Option<(&ProductId, &Entry)> {
        // A short id is looked up as a ProductId (a copy, no allocation): keys then compare as
        // bytes, where a `&str` lookup would check the UTF-8 of every key compared on the way.
        let found = if id.len() <= id::INLINE {
            self.products.get_key_value(&ProductId::new(id))
        } else {
            self.products.get_key_value(id)
        };
        found.filter(|(_, e)| e.doc.is_some())
    }

    /// Every entry, including those without a document, in productId order.
    pub fn entries(&self) -> &BTreeMap<ProductId, Entry> {
        &self.products
    }

    /// Products served.
    pub fn len(&self) -> usize {
        self.served
    }

    pub fn is_empty(&self) -> bool {
        self.served == 0
    }

    /// Recent alerts over all products, oldest first.
    pub fn recent_alerts(&self) -> &VecDeque<Arc<RecentAlert>> {
        &self.alerts
    }

    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    /// Sequence number of the latest change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// `(seq, id)` of the changes after `cursor` (a previous [`View::seq`] or `seq` of a change
    /// already taken), oldest first, with repeats.
    pub fn changes_since(
        &self,
        cursor: u64,
    ) -> Result<impl Iterator<Item = (u64, &ProductId)>, Behind> {
        if cursor < self.evicted {
            return Err(Behind);
        }
        let start = self.changes.partition_point(|(seq, _)| *seq <= cursor);
        Ok(self.changes.range(start..).map(|(seq, id)| (*seq, id)))
    }

    /// Bytes held for products, history and indexes: an estimate from sizes and lengths (the
    /// allocator adds its own overhead; `GET /stats` also reports the process RSS).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        // A BTreeMap node holds up to 11 entries; count ~1.5 slots per entry for partly full
        // nodes.
        let slot = size_of::<ProductId>() + size_of::<Entry>();
        let mut total = self.products.len() * slot * 3 / 2;
        for (id, e) in &self.products {
            if id.len() > id::INLINE {
                total += id.len() + 16;
            }
            if let Some(d) = &e.doc {
                total += d.text_len();
            }
            if let Some(h) = &e.history {
                total += size_of::<History>();
                total += h.events.iter().map(|ev| ev.raw.len() + 24).sum::<usize>();
                total += h.alerts.len() * size_of::<Arc<RecentAlert>>();
            }
        }
        total += self
            .alerts
            .iter()
            .map(|a| a.raw.len() + a.product_id.len() + size_of::<RecentAlert>())
            .sum::<usize>();
        total += self.changes.len() * size_of::<(u64, ProductId)>();
        total
    }
}

/// The entry of `id`, created empty if missing, and the map's key for it. One traversal of the
/// map, the cost that matters when a restore inserts a million keys.
fn entry_for(products: &mut BTreeMap<ProductId, Entry>, id: ProductId) -> (ProductId, &mut Entry) {
    match products.entry(id) {
        Slot::Occupied(o) => (o.key().clone(), o.into_mut()),
        Slot::Vacant(v) => {
            let key = v.key().clone();
            let entry = v.insert(Entry {
                doc: None,
                last_update: i64::MIN,
                history: None,
            });
            (key, entry)
        }
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, bound: usize) {
    while queue.len() >= bound.max(1) {
        queue.pop_front();
    }
    queue.push_back(item);
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::super::id::ProductId;
    use super::super::record::{Change, ProductFields, RecentAlert, RecentEvent, shared};
    use kartflow_wire::{AlertType, Severity};
    use serde_json::json;

    pub fn product(id: &str, category: &str, inventory: i64, price: f64) -> Change {
        let raw = json!({"productId": id, "name": format!("name {id}"), "category": category,
            "brand": "acme", "price": price, "inventory": inventory})
        .to_string();
        Change::Product {
            id: ProductId::new(id),
            fields: Some(ProductFields::new(
                &raw,
                &format!("name {id}"),
                shared(category),
                shared("acme"),
                price,
                inventory,
            )),
            timestamp: 1_000,
        }
    }

    pub fn event(id: &str, n: i64) -> Change {
        Change::Event {
            id: id.into(),
            event: RecentEvent {
                timestamp: n,
                raw: json!({"productId": id, "timestamp": n}).to_string().into(),
            },
        }
    }

    pub fn alert(id: &str, severity: Severity, n: i64) -> Change {
        Change::Alert(RecentAlert {
            product_id: id.into(),
            alert_type: AlertType::LowStock,
            severity,
            timestamp: n,
            raw: json!({"productId": id, "timestamp": n}).to_string().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use kartflow_wire::Severity;

    fn limits(events: usize, alerts: usize, log: usize) -> Limits {
        Limits {
            events_per_product: events,
            alerts_per_product: alerts,
            recent_alerts: alerts * 2,
            change_log: log,
        }
    }

    #[test]
    fn last_product_record_wins_and_tombstones_hide_it() {
        let mut v = View::new(Limits::default());
        v.apply(product("P1", "toys", 5, 1.0), None);
        v.apply(product("P1", "toys", 3, 2.0), None);
        v.apply(product("P2", "food", 0, 1.0), None);
        assert_eq!(v.len(), 2);
        let (_, e) = v.get("P1").expect("served");
        let d = e.doc.as_ref().expect("doc");
        assert_eq!((d.inventory, d.price), (3, 2.0));
        v.apply(
            Change::Product {
                id: ProductId::new("P1"),
                fields: None,
                timestamp: 5,
            },
            None,
        );
        assert!(v.get("P1").is_none());
        assert_eq!(v.len(), 1);
        v.apply(product("P1", "toys", 1, 1.0), None);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn history_is_bounded_per_product_and_overall() {
        let mut v = View::new(limits(3, 2, 100));
        for n in 0..10 {
            v.apply(event("P1", n), None);
            v.apply(alert("P1", Severity::Info, n), None);
            v.apply(alert("P2", Severity::Warning, n), None);
        }
        let e = &v.entries()["P1"];
        let h = e.history.as_ref().expect("history");
        let kept: Vec<i64> = h.events.iter().map(|e| e.timestamp).collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(h.alerts.len(), 2);
        assert_eq!(v.recent_alerts().len(), 4);
        assert_eq!(e.last_update, 9);
        // Events for a product not on `products` yet: history kept, product not served.
        assert!(v.get("P1").is_none());
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn change_log_replays_and_reports_a_cursor_that_fell_out() {
        let mut v = View::new(limits(1, 1, 4));
        let start = v.seq();
        for id in ["A", "B", "A", "C"] {
            v.apply(product(id, "x", 1, 1.0), None);
        }
        let ids: Vec<&str> = v
            .changes_since(start)
            .expect("in log")
            .map(|(_, s)| &**s)
            .collect();
        assert_eq!(ids, ["A", "B", "A", "C"]);
        let ids: Vec<(u64, &str)> = v
            .changes_since(3)
            .expect("in log")
            .map(|(seq, s)| (seq, &**s))
            .collect();
        assert_eq!(ids, [(4, "C")]);
        v.apply(product("D", "x", 1, 1.0), None);
        assert_eq!(v.changes_since(start).err(), Some(Behind));
        assert!(v.changes_since(1).is_ok());
        assert_eq!(v.changes_since(v.seq()).expect("now").count(), 0);
    }

    #[test]
    fn only_product_records_enter_the_change_log() {
        let mut v = View::new(Limits::default());
        v.apply(product("A", "x", 1, 1.0), None);
        let after_product = v.seq();
        v.apply(event("A", 5), None);
        v.apply(alert("A", Severity::Info, 6), None);
        assert_eq!(v.changes_since(after_product).expect("in log").count(), 0);
        v.apply(product("A", "x", 2, 1.0), None);
        assert_eq!(v.changes_since(after_product).expect("in log").count(), 1);
    }

    #[test]
    fn positions_advance_with_applied_and_skipped_records() {
        let topic: Arc<str> = Arc::from("products");
        let mut v = View::new(Limits::default());
        let at = |offset| Position {
            topic: &topic,
            partition: 1,
            offset,
        };
        v.apply(product("P1", "x", 1, 1.0), Some(at(4)));
        assert_eq!(v.offsets().get("products", 1), Some(5));
        v.skip(at(9));
        assert_eq!(v.offsets().get("products", 1), Some(10));
        v.reached(&topic, 1, 12);
        assert_eq!(v.offsets().get("products", 1), Some(12));
    }

    #[test]
    fn approx_bytes_grows_with_documents() {
        let mut v = View::new(Limits::default());
        let empty = v.approx_bytes();
        v.apply(product("P1", "toys", 1, 1.0), None);
        assert!(v.approx_bytes() > empty + 80, "{}", v.approx_bytes());
    }
}
