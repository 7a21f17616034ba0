//! Property: applying any interleaving of the three input streams yields the same view as
//! applying each product's records in order, one product after another. This is what lets a
//! replica read partitions and topics at any relative pace (and in parallel) and still agree with
//! every other replica once all have read the same offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use kartflow_wire::Severity;
use proptest::prelude::*;

use super::id::ProductId;
use super::record::Change;
use super::view::testutil::{alert, event, product};
use super::view::{Entry, Limits, Position, View};

/// One generated record: which product, which stream, and a payload seed.
#[derive(Debug, Clone)]
struct Op {
    product: u8,
    stream: u8,
    n: i64,
}

const TOPICS: [&str; 3] = ["products", "inventory-events", "inventory-alerts"];

fn change(op: &Op) -> Change {
    let id = format!("P{}", op.product);
    match op.stream {
        0 if op.n % 7 == 0 => Change::Product {
            id: ProductId::new(&id),
            fields: None,
            timestamp: op.n,
        },
        0 => {
            let mut c = product(&id, ["a", "b"][(op.n % 2) as usize], op.n % 13, op.n as f64);
            if let Change::Product { timestamp, .. } = &mut c {
                *timestamp = op.n;
            }
            c
        }
        1 => event(&id, op.n),
        _ => alert(
            &id,
            [Severity::Info, Severity::Critical][(op.n % 2) as usize],
            op.n,
        ),
    }
}

/// Applies `ops` (each with its offset in its partition) in the given order.
fn apply_all(ops: &[(Op, i64)], limits: Limits) -> View {
    let topics: Vec<Arc<str>> = TOPICS.iter().map(|t| Arc::from(*t)).collect();
    let mut v = View::new(limits);
    for (op, offset) in ops {
        let at = Position {
            topic: &topics[usize::from(op.stream)],
            partition: i32::from(op.product % 2),
            offset: *offset,
        };
        v.apply(change(op), Some(at));
    }
    v
}

/// What must agree: every entry, the positions, and the recent alerts as a multiset.
fn observable(v: &View) -> (BTreeMap<String, Entry>, String, Vec<String>) {
    let entries = v
        .entries()
        .iter()
        .map(|(k, e)| (k.to_string(), e.clone()))
        .collect();
    let mut alerts: Vec<String> = v
        .recent_alerts()
        .iter()
        .map(|a| a.raw.to_string())
        .collect();
    alerts.sort();
    (entries, v.offsets().to_string(), alerts)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (0u8..5, 0u8..3, 1i64..1_000).prop_map(|(product, stream, n)| Op { product, stream, n }),
        0..120,
    )
}

proptest! {
    #[test]
    fn any_interleaving_gives_the_per_product_view(
        ops in ops(),
        choices in proptest::collection::vec(any::<usize>(), 120),
        events_per_product in 1usize..4,
    ) {
        // Offsets in generation order per (stream, partition).
        let mut next: BTreeMap<(u8, u8), i64> = BTreeMap::new();
        let positioned: Vec<(Op, i64)> = ops
            .into_iter()
            .map(|op| {
                let o = next.entry((op.stream, op.product % 2)).or_insert(0);
                *o += 1;
                let at = *o;
                (op, at)
            })
            .collect();
        // Large enough that no alert falls off the global list: its order is arrival order.
        let limits = Limits {
            events_per_product,
            alerts_per_product: 2,
            recent_alerts: 1_000,
            change_log: 16,
        };

        let mut per_product = positioned.clone();
        per_product.sort_by_key(|(op, _)| op.product); // stable: keeps each product's order
        let reference = observable(&apply_all(&per_product, limits));

        // A random interleaving of the (product, stream) queues, each kept in order.
        let mut queues: BTreeMap<(u8, u8), VecDeque<(Op, i64)>> = BTreeMap::new();
        for (op, at) in positioned {
            queues.entry((op.product, op.stream)).or_default().push_back((op, at));
        }
        let mut interleaved = Vec::new();
        let mut pick = choices.into_iter().cycle();
        while !queues.is_empty() {
            let keys: Vec<(u8, u8)> = queues.keys().copied().collect();
            let key = keys[pick.next().unwrap_or(0) % keys.len()];
            if let Some(q) = queues.get_mut(&key) {
                if let Some(item) = q.pop_front() {
                    interleaved.push(item);
                }
                if q.is_empty() {
                    queues.remove(&key);
                }
            }
        }
        prop_assert_eq!(observable(&apply_all(&interleaved, limits)), reference);
    }
}
