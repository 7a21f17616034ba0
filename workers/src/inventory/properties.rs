//! Property tests of the invariants the worker must keep whatever the input order:
//! stock never negative, redelivery idempotent, exact final counts with oversell recorded,
//! bootstrap re-apply a no-op, and state that survives a snapshot unchanged.

use std::collections::BTreeSet;

use kartflow_wire::{AlertType, EventType, Product};
use proptest::prelude::*;

use super::io::{Disposition, Input, Outputs};
use super::state::PartitionState;
use super::testutil::{MINUTE, T0, inventory, line, product, step};

const PRODUCTS: u8 = 3;

fn pid(i: u8) -> String {
    format!("P{}", i % PRODUCTS)
}

/// Order line number `n`. Its product and quantity are a function of `n`, so the same `n`
/// always is the same line with the same `eventId`: a repeat is a true redelivery.
fn nth_line(n: u8) -> Input {
    let quantity = 1 + i64::from(n) * 7 % 13;
    Input::OrderLine(line(&format!("e{n}"), &pid(n), quantity))
}

fn nth_quantity(n: u8) -> i64 {
    1 + i64::from(n) * 7 % 13
}

#[derive(Debug, Clone)]
enum Op {
    Update {
        product: u8,
        inventory: i64,
        cents: u32,
    },
    Bootstrap {
        product: u8,
        inventory: i64,
        cents: u32,
    },
    Order(u8),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..PRODUCTS, 0..40i64, 1..5_000u32)
            .prop_map(|(product, inventory, cents)| Op::Update { product, inventory, cents }),
        1 => (0..PRODUCTS, 0..40i64, 1..5_000u32)
            .prop_map(|(product, inventory, cents)| Op::Bootstrap { product, inventory, cents }),
        4 => (0..30u8).prop_map(Op::Order),
        1 => Just(Op::Tick),
    ]
}

/// Ops with the processing-time gap before each (up to 20 minutes, so timers and orphan expiry
/// are exercised too).
fn timed_ops(max: usize) -> impl Strategy<Value = Vec<(i64, Op)>> {
    proptest::collection::vec((0..20 * MINUTE, op()), 0..max)
}

fn to_input(op: &Op) -> Input {
    let priced = |p: u8, inv: i64, cents: u32| product(&pid(p), inv, f64::from(cents) / 100.0);
    match *op {
        Op::Update {
            product,
            inventory,
            cents,
        } => Input::ProductUpdate(priced(product, inventory, cents)),
        Op::Bootstrap {
            product,
            inventory,
            cents,
        } => Input::Bootstrap(priced(product, inventory, cents)),
        Op::Order(n) => nth_line(n),
        Op::Tick => Input::Tick,
    }
}

fn run(state: &mut PartitionState, ops: &[(i64, Op)], mut now: i64) -> (i64, Vec<Outputs>) {
    let mut outs = Vec::new();
    for (gap, op) in ops {
        now += gap;
        outs.push(step(state, to_input(op), now));
    }
    (now, outs)
}

fn decreases(outs: &[Outputs]) -> usize {
    outs.iter()
        .flat_map(|o| &o.events)
        .filter(|e| e.event_type == EventType::InventoryDecreased)
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Inventory never goes negative, in state or in any emitted record.
    #[test]
    fn inventory_is_never_negative(ops in timed_ops(60)) {
        let mut state = PartitionState::default();
        let mut now = T0;
        for (gap, op) in &ops {
            now += gap;
            let out = step(&mut state, to_input(op), now);
            for key in state.keys.values() {
                if let Some(p) = &key.product {
                    prop_assert!(p.inventory() >= 0, "{p:?}");
                }
                prop_assert!(key.oversold().units >= 0);
            }
            for e in &out.events {
                prop_assert!(e.previous_inventory >= 0 && e.current_inventory >= 0, "{e:?}");
            }
            for p in &out.products {
                prop_assert!(p.inventory() >= 0, "{p:?}");
            }
        }
    }

    /// Applying an order line a second time changes nothing and emits nothing, whatever came
    /// before it.
    #[test]
    fn applying_an_order_line_twice_equals_once(ops in timed_ops(40), n in 0..30u8, gap in 0..MINUTE) {
        let mut state = PartitionState::default();
        let (now, _) = run(&mut state, &ops, T0);
        step(&mut state, nth_line(n), now);
        let once = state.clone();
        let again = step(&mut state, nth_line(n), now + gap);
        prop_assert_eq!(again.disposition, Disposition::Duplicate);
        prop_assert!(again.products.is_empty() && again.alerts.is_empty() && again.dlq.is_empty());
        prop_assert!(again.events.iter().all(|e| e.event_type == EventType::StaleInventory),
                     "only an already-due timer may fire: {:?}", again.events);
        for (id, key) in &state.keys {
            prop_assert_eq!(&key.product, &once.keys[id].product);
            prop_assert_eq!(key.oversold(), once.keys[id].oversold());
            prop_assert_eq!(&key.orphans, &once.keys[id].orphans);
        }
    }

    /// A stream with redeliveries mixed in ends in the same stock, oversell record and number of
    /// decreases as the same stream without them.
    #[test]
    fn redeliveries_anywhere_change_nothing(ops in timed_ops(50),
                                            dups in proptest::collection::vec(any::<(proptest::sample::Index, proptest::sample::Index)>(), 0..20)) {
        let mut with_dups = ops.clone();
        for (which, when) in &dups {
            let orders: Vec<usize> = with_dups.iter().enumerate()
                .filter(|(_, (_, op))| matches!(op, Op::Order(_)))
                .map(|(i, _)| i)
                .collect();
            if orders.is_empty() { break; }
            let original = orders[which.index(orders.len())];
            // A redelivery comes after the original, at the time of the op before it, so the
            // timing of everything else is unchanged.
            let at = original + 1 + when.index(with_dups.len() - original);
            let redelivered = (0, with_dups[original].1.clone());
            with_dups.insert(at, redelivered);
        }
        let mut once = PartitionState::default();
        let (_, outs_once) = run(&mut once, &ops, T0);
        let mut twice = PartitionState::default();
        let (_, outs_twice) = run(&mut twice, &with_dups, T0);
        for i in 0..PRODUCTS {
            let id = pid(i);
            prop_assert_eq!(inventory(&once, &id), inventory(&twice, &id));
            prop_assert_eq!(once.keys.get(&id).map(|k| k.oversold()), twice.keys.get(&id).map(|k| k.oversold()));
        }
        prop_assert_eq!(decreases(&outs_once), decreases(&outs_twice));
    }

    /// Final inventory = initial − sum of distinct lines, floored at 0, with the shortfall
    /// recorded and alerted — also when some lines arrive before the product.
    #[test]
    fn final_inventory_is_initial_minus_distinct_lines(initial in 0..120i64,
                                                       deliveries in proptest::collection::vec(0..30u8, 0..60),
                                                       early in 0..10usize) {
        // Only lines of product P0 (n divisible by 3) — the arithmetic is per product.
        let deliveries: Vec<u8> = deliveries.into_iter().map(|n| n - n % PRODUCTS).collect();
        let early = early.min(deliveries.len());
        let mut state = PartitionState::default();
        let mut now = T0;
        let mut outs = Vec::new();
        for &n in &deliveries[..early] {
            now += 1_000;
            outs.push(step(&mut state, nth_line(n), now));
        }
        now += 1_000;
        outs.push(step(&mut state, Input::ProductUpdate(product("P0", initial, 5.0)), now));
        for &n in &deliveries[early..] {
            now += 1_000;
            outs.push(step(&mut state, nth_line(n), now));
        }
        let distinct: BTreeSet<u8> = deliveries.iter().copied().collect();
        let sum: i64 = distinct.iter().map(|&n| nth_quantity(n)).sum();
        prop_assert_eq!(inventory(&state, "P0"), Some((initial - sum).max(0)));
        let oversold = state.keys["P0"].oversold();
        prop_assert_eq!(oversold.units, (sum - initial).max(0));
        prop_assert_eq!(decreases(&outs), distinct.len(), "exactly one decrease per distinct line");
        let oversold_alerts = outs.iter().flat_map(|o| &o.alerts)
            .filter(|a| a.alert_type == AlertType::Oversold).count();
        prop_assert_eq!(u64::try_from(oversold_alerts).unwrap_or(u64::MAX), oversold.lines);
    }

    /// Re-applying the bootstrap file changes no state and emits nothing, even after orders and
    /// updates moved the products on; applying it twice from scratch equals applying it once.
    #[test]
    fn bootstrap_reapply_is_idempotent(file in proptest::collection::btree_map(0..20u8, (0..40i64, 1..5_000u32), 1..10),
                                       ops in proptest::collection::vec((0..MINUTE, op()), 0..30)) {
        let file: Vec<Product> = file.into_iter()
            .map(|(i, (inv, cents))| product(&format!("P{i}"), inv, f64::from(cents) / 100.0))
            .collect();
        // Keep generated ops off the file's keys for bootstrap records, so "the file" stays one file.
        let ops: Vec<_> = ops.into_iter().filter(|(_, op)| !matches!(op, Op::Bootstrap { .. })).collect();

        let mut state = PartitionState::default();
        for p in &file { step(&mut state, Input::Bootstrap(p.clone()), T0); }
        let once = state.clone();
        for p in &file {
            let out = step(&mut state, Input::Bootstrap(p.clone()), T0);
            prop_assert_eq!(out.disposition, Disposition::Unchanged);
            prop_assert!(out.is_empty());
        }
        prop_assert_eq!(&state, &once);

        // Later, after the world moved on (all within the stale window, so no timer is due).
        let (now, _) = run(&mut state, &ops, T0);
        prop_assume!(now < T0 + 59 * MINUTE);
        let moved_on = state.clone();
        for p in &file {
            let out = step(&mut state, Input::Bootstrap(p.clone()), now + 1);
            prop_assert!(out.is_empty(), "{:?}", out);
        }
        prop_assert_eq!(&state, &moved_on);
    }

    /// A snapshot (savepoint or changelog) restores exactly the state that was running, and the
    /// restored state behaves identically from there on.
    #[test]
    fn snapshot_restores_identical_state(before in timed_ops(40), after in timed_ops(20)) {
        let mut state = PartitionState::default();
        let (now, _) = run(&mut state, &before, T0);
        let bytes = serde_json::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut restored: PartitionState =
            serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&restored, &state);
        let (_, outs_a) = run(&mut state, &after, now);
        let (_, outs_b) = run(&mut restored, &after, now);
        prop_assert_eq!(outs_a, outs_b);
        prop_assert_eq!(restored, state);
    }
}
