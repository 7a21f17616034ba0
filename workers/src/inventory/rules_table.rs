//! Every rule of the reference semantics (and kartflow's fixes), one named case each.
//! Single-step rules are rows of [`RULES`]; rules that need time or several records to show are
//! the named tests below it.

use kartflow_wire::{AlertType, EventType, Severity};

use super::io::{Disposition, DlqReason, Input};
use super::state::PartitionState;
use super::testutil::{HOUR, MINUTE, T0, inventory, line, product, step};
use super::{InventoryRules, Millis, apply};

use AlertType as A;
use EventType as E;
use Severity as S;

/// One rule: with product `P1` at `given` (inventory, price) or unknown, applying `input` emits
/// exactly `events` and `alerts` and leaves `P1` at `inventory`.
struct Rule {
    name: &'static str,
    given: Option<(i64, f64)>,
    input: Input,
    disposition: Disposition,
    events: &'static [EventType],
    alerts: &'static [(AlertType, Severity)],
    inventory: Option<i64>,
}

fn update(inventory: i64, price: f64) -> Input {
    Input::ProductUpdate(product("P1", inventory, price))
}

fn order(quantity: i64) -> Input {
    Input::OrderLine(line("e-1", "P1", quantity))
}

/// Builds a row; positional so the table below reads one rule per line.
fn rule(
    name: &'static str,
    given: Option<(i64, f64)>,
    input: Input,
    disposition: Disposition,
    events: &'static [EventType],
    alerts: &'static [(AlertType, Severity)],
    inventory: Option<i64>,
) -> Rule {
    Rule {
        name,
        given,
        input,
        disposition,
        events,
        alerts,
        inventory,
    }
}

// One rule per line reads better than rustfmt's one field per line.
#[rustfmt::skip]
fn rules() -> Vec<Rule> {
    use Disposition::{Applied, Buffered, DeadLettered};
    let invalid = DeadLettered(DlqReason::InvalidRecord);
    let bootstrap = |inv, price| Input::Bootstrap(product("P1", inv, price));
    vec![
        // New products (from product-updates or the bootstrap file).
        rule("new product -> PRODUCT_ADDED", None, update(50, 10.0), Applied, &[E::ProductAdded], &[], Some(50)),
        rule("new product from the bootstrap file -> PRODUCT_ADDED", None, bootstrap(50, 10.0), Applied, &[E::ProductAdded], &[], Some(50)),
        rule("new product at 0 -> OUT_OF_STOCK alert (CRITICAL)", None, update(0, 10.0), Applied, &[E::ProductAdded], &[(A::OutOfStock, S::Critical)], Some(0)),
        rule("new product low (6..=10) -> LOW_STOCK WARNING", None, update(8, 10.0), Applied, &[E::ProductAdded], &[(A::LowStock, S::Warning)], Some(8)),
        rule("new product at the low threshold (inclusive rule) -> LOW_STOCK", None, update(10, 10.0), Applied, &[E::ProductAdded], &[(A::LowStock, S::Warning)], Some(10)),
        rule("new product at the critical threshold -> LOW_STOCK CRITICAL", None, update(5, 10.0), Applied, &[E::ProductAdded], &[(A::LowStock, S::Critical)], Some(5)),
        rule("new product above the low threshold -> no alert", None, update(11, 10.0), Applied, &[E::ProductAdded], &[], Some(11)),
        // Product updates: inventory.
        rule("update to 0 -> OUT_OF_STOCK event + alert", Some((20, 10.0)), update(0, 10.0), Applied, &[E::OutOfStock], &[(A::OutOfStock, S::Critical)], Some(0)),
        rule("update from 0 to plenty -> BACK_IN_STOCK", Some((0, 10.0)), update(30, 10.0), Applied, &[E::BackInStock], &[], Some(30)),
        rule("update from 0 to low -> BACK_IN_STOCK + LOW_STOCK", Some((0, 10.0)), update(4, 10.0), Applied, &[E::BackInStock], &[(A::LowStock, S::Critical)], Some(4)),
        rule("update down -> INVENTORY_DECREASED", Some((50, 10.0)), update(30, 10.0), Applied, &[E::InventoryDecreased], &[], Some(30)),
        rule("update up -> INVENTORY_INCREASED", Some((30, 10.0)), update(50, 10.0), Applied, &[E::InventoryIncreased], &[], Some(50)),
        rule("update down into low stock -> LOW_STOCK WARNING", Some((50, 10.0)), update(7, 10.0), Applied, &[E::InventoryDecreased], &[(A::LowStock, S::Warning)], Some(7)),
        rule("update down to the low threshold (same rule as orders) -> LOW_STOCK", Some((50, 10.0)), update(10, 10.0), Applied, &[E::InventoryDecreased], &[(A::LowStock, S::Warning)], Some(10)),
        rule("update down to critical -> LOW_STOCK CRITICAL", Some((50, 10.0)), update(5, 10.0), Applied, &[E::InventoryDecreased], &[(A::LowStock, S::Critical)], Some(5)),
        rule("update up but still low -> INVENTORY_INCREASED + LOW_STOCK", Some((2, 10.0)), update(6, 10.0), Applied, &[E::InventoryIncreased], &[(A::LowStock, S::Warning)], Some(6)),
        rule("update without stock or price change -> no event", Some((50, 10.0)), update(50, 10.0), Applied, &[], &[], Some(50)),
        rule("update keeping a low stock level -> no repeated alert", Some((3, 10.0)), update(3, 10.0), Applied, &[], &[], Some(3)),
        // Product updates: price.
        rule("price change > 0.01 -> PRICE_CHANGED", Some((50, 10.0)), update(50, 10.5), Applied, &[E::PriceChanged], &[], Some(50)),
        rule("price change <= 0.01 -> nothing", Some((50, 10.0)), update(50, 10.005), Applied, &[], &[], Some(50)),
        rule("price drop of exactly 10% -> PRICE_CHANGED + PRICE_DROP INFO", Some((50, 10.0)), update(50, 9.0), Applied, &[E::PriceChanged], &[(A::PriceDrop, S::Info)], Some(50)),
        rule("price drop under 10% -> PRICE_CHANGED only", Some((50, 10.0)), update(50, 9.5), Applied, &[E::PriceChanged], &[], Some(50)),
        rule("price rise -> PRICE_CHANGED, no PRICE_DROP", Some((50, 10.0)), update(50, 20.0), Applied, &[E::PriceChanged], &[], Some(50)),
        rule("stock and price change together -> both events", Some((50, 10.0)), update(40, 8.0), Applied, &[E::InventoryDecreased, E::PriceChanged], &[(A::PriceDrop, S::Info)], Some(40)),
        // Order lines.
        rule("order line -> INVENTORY_DECREASED", Some((50, 10.0)), order(3), Applied, &[E::InventoryDecreased], &[], Some(47)),
        rule("order line down to the low threshold (inclusive) -> LOW_STOCK WARNING", Some((13, 10.0)), order(3), Applied, &[E::InventoryDecreased], &[(A::LowStock, S::Warning)], Some(10)),
        rule("order line to 11 -> no alert", Some((14, 10.0)), order(3), Applied, &[E::InventoryDecreased], &[], Some(11)),
        rule("order line to critical -> LOW_STOCK CRITICAL", Some((8, 10.0)), order(3), Applied, &[E::InventoryDecreased], &[(A::LowStock, S::Critical)], Some(5)),
        rule("order line to exactly 0 -> OUT_OF_STOCK alert, not oversold", Some((3, 10.0)), order(3), Applied, &[E::InventoryDecreased], &[(A::OutOfStock, S::Critical)], Some(0)),
        rule("order line above stock -> floored at 0 + OVERSOLD + OUT_OF_STOCK", Some((2, 10.0)), order(5), Applied, &[E::InventoryDecreased], &[(A::Oversold, S::Critical), (A::OutOfStock, S::Critical)], Some(0)),
        rule("order line on an out-of-stock product -> OVERSOLD", Some((0, 10.0)), order(1), Applied, &[E::InventoryDecreased], &[(A::Oversold, S::Critical), (A::OutOfStock, S::Critical)], Some(0)),
        rule("order line for an unknown product -> buffered, no output", None, order(1), Buffered, &[], &[], None),
        // Validation: refused records change nothing and go to the DLQ.
        rule("order line with negative quantity -> DLQ", Some((50, 10.0)), order(-1), invalid, &[], &[], Some(50)),
        rule("order line with zero quantity -> DLQ", Some((50, 10.0)), order(0), invalid, &[], &[], Some(50)),
        rule("order line without productId -> DLQ", Some((50, 10.0)), Input::OrderLine(line("e-1", "", 1)), invalid, &[], &[], Some(50)),
        rule("order line without eventId -> DLQ", Some((50, 10.0)), Input::OrderLine(line("", "P1", 1)), invalid, &[], &[], Some(50)),
        rule("product update with NaN price -> DLQ", Some((50, 10.0)), update(1, f64::NAN), invalid, &[], &[], Some(50)),
        rule("product update with negative inventory -> DLQ", Some((50, 10.0)), update(-4, 10.0), invalid, &[], &[], Some(50)),
        rule("product update without productId -> DLQ", None, Input::ProductUpdate(product("", 1, 1.0)), invalid, &[], &[], None),
        rule("bootstrap record with negative price -> DLQ", None, bootstrap(1, -1.0), invalid, &[], &[], None),
    ]
}

#[test]
fn every_single_step_rule() {
    let rules = rules();
    assert!(rules.len() >= 35);
    for rule in rules {
        let mut state = PartitionState::default();
        if let Some((inv, price)) = rule.given {
            step(&mut state, update(inv, price), T0);
        }
        let out = step(&mut state, rule.input, T0 + 1_000);
        let name = rule.name;
        let events: Vec<_> = out.events.iter().map(|e| e.event_type).collect();
        let alerts: Vec<_> = out
            .alerts
            .iter()
            .map(|a| (a.alert_type, a.severity))
            .collect();
        assert_eq!(out.disposition, rule.disposition, "{name}");
        assert_eq!(events, rule.events, "{name}");
        assert_eq!(alerts, rule.alerts, "{name}");
        assert_eq!(inventory(&state, "P1"), rule.inventory, "{name}");
        let dead = matches!(out.disposition, Disposition::DeadLettered(_));
        assert_eq!(
            out.dlq.len(),
            usize::from(dead),
            "{name}: one DLQ record per refused input"
        );
        for e in &out.events {
            assert!(
                e.current_inventory >= 0 && e.previous_inventory >= 0,
                "{name}"
            );
            assert_eq!(
                e.timestamp,
                T0 + 1_000,
                "{name}: stamped with processing time"
            );
        }
        for a in &out.alerts {
            assert_eq!(a.product_id, "P1", "{name}");
        }
    }
}

#[test]
fn product_added_reports_previous_inventory_and_price_as_zero() {
    let mut state = PartitionState::default();
    let out = step(&mut state, update(42, 9.99), T0);
    let e = &out.events[0];
    assert_eq!((e.previous_inventory, e.current_inventory), (0, 42));
    assert_eq!((e.previous_price, e.current_price), (0.0, 9.99));
    assert_eq!(e.product_name, "Product P1");
    assert_eq!(
        out.products,
        vec![product("P1", 42, 9.99)],
        "canonical record emitted"
    );
}

#[test]
fn order_line_event_carries_before_after_and_the_order() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    let out = step(&mut state, order(3), T0 + 1);
    let e = &out.events[0];
    assert_eq!((e.previous_inventory, e.current_inventory), (50, 47));
    assert_eq!((e.previous_price, e.current_price), (10.0, 10.0));
    assert!(e.change_reason.contains("order-e-1"), "{}", e.change_reason);
    assert_eq!(out.products, vec![product("P1", 47, 10.0)]);
}

#[test]
fn oversell_is_recorded_not_silently_clamped() {
    let mut state = PartitionState::default();
    step(&mut state, update(2, 10.0), T0);
    let out = step(&mut state, Input::OrderLine(line("a", "P1", 5)), T0 + 1);
    assert!(
        out.alerts[0].message.contains("Oversold by 3"),
        "{}",
        out.alerts[0].message
    );
    step(&mut state, Input::OrderLine(line("b", "P1", 4)), T0 + 2);
    let oversold = state.keys["P1"].oversold();
    assert_eq!((oversold.units, oversold.lines), (7, 2));
    assert_eq!(oversold.last_order_id.as_deref(), Some("order-b"));
    assert_eq!(inventory(&state, "P1"), Some(0));
}

#[test]
fn low_stock_threshold_is_configurable() {
    // lowStockThreshold 9 reproduces the reference product-update rule (`< 10`) everywhere.
    let cfg = InventoryRules {
        low_stock_threshold: 9,
        ..InventoryRules::default()
    };
    let mut state = PartitionState::default();
    let out = apply(&mut state, &cfg, update(10, 1.0), T0);
    assert!(out.alerts.is_empty());
    let out = apply(&mut state, &cfg, order(1), T0 + 1);
    assert_eq!(out.alerts[0].alert_type, AlertType::LowStock);
}

#[test]
fn redelivered_order_line_deducts_once() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    step(&mut state, order(3), T0 + 1);
    let again = step(&mut state, order(3), T0 + 2);
    assert_eq!(again.disposition, Disposition::Duplicate);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(inventory(&state, "P1"), Some(47));
}

#[test]
fn dedup_ids_are_forgotten_after_the_retention_window() {
    let cfg = InventoryRules {
        dedup_retention: Millis::from_minutes(30),
        ..InventoryRules::default()
    };
    let mut state = PartitionState::default();
    apply(&mut state, &cfg, update(50, 10.0), T0);
    apply(&mut state, &cfg, order(3), T0);
    let out = apply(&mut state, &cfg, Input::Tick, T0 + 30 * MINUTE - 1);
    assert!(out.touched.is_empty());
    assert_eq!(state.dedup_size(), 1);
    let out = apply(&mut state, &cfg, Input::Tick, T0 + 30 * MINUTE);
    assert!(
        out.touched.contains("P1"),
        "the pruned key goes to the changelog"
    );
    assert_eq!(state.dedup_size(), 0);
}

#[test]
fn stale_inventory_fires_once_after_an_hour_without_update() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    assert!(
        step(&mut state, Input::Tick, T0 + HOUR - 1)
            .events
            .is_empty()
    );
    let out = step(&mut state, Input::Tick, T0 + HOUR);
    assert_eq!(out.events.len(), 1);
    let e = &out.events[0];
    assert_eq!(e.event_type, EventType::StaleInventory);
    assert_eq!((e.previous_inventory, e.current_inventory), (50, 50));
    assert!(e.change_reason.contains("1.0 hours"), "{}", e.change_reason);
    assert!(
        out.touched.contains("P1"),
        "timer state change goes to the changelog"
    );
    assert!(
        step(&mut state, Input::Tick, T0 + 5 * HOUR)
            .events
            .is_empty(),
        "fires once"
    );
}

#[test]
fn stale_timer_is_rearmed_by_product_updates_and_order_lines() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    step(&mut state, update(50, 10.0), T0 + 30 * MINUTE);
    assert!(step(&mut state, Input::Tick, T0 + HOUR).events.is_empty());
    step(&mut state, order(1), T0 + 80 * MINUTE);
    assert!(
        step(&mut state, Input::Tick, T0 + 80 * MINUTE + HOUR - 1)
            .events
            .is_empty()
    );
    let out = step(&mut state, Input::Tick, T0 + 80 * MINUTE + HOUR);
    assert_eq!(out.events[0].event_type, EventType::StaleInventory);
}

#[test]
fn stale_timer_survives_a_snapshot_and_restore() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    let snapshot = serde_json::to_vec(&state).expect("snapshot");
    let mut restored: PartitionState = serde_json::from_slice(&snapshot).expect("restore");
    assert_eq!(restored, state);
    let out = step(&mut restored, Input::Tick, T0 + 2 * HOUR);
    assert_eq!(out.events[0].event_type, EventType::StaleInventory);
}

#[test]
fn overdue_stale_timer_fires_before_the_next_input_even_without_a_tick() {
    let mut state = PartitionState::default();
    step(&mut state, update(50, 10.0), T0);
    let out = step(&mut state, order(1), T0 + 2 * HOUR);
    let types: Vec<_> = out.events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [EventType::StaleInventory, EventType::InventoryDecreased]
    );
}

#[test]
fn orphan_order_is_applied_when_its_product_arrives() {
    let mut state = PartitionState::default();
    assert_eq!(
        step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0).disposition,
        Disposition::Buffered
    );
    step(&mut state, Input::OrderLine(line("b", "P1", 3)), T0 + 1);
    assert_eq!(state.orphan_count(), 2);
    let out = step(&mut state, update(10, 1.0), T0 + 2 * MINUTE);
    let types: Vec<_> = out.events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [
            EventType::ProductAdded,
            EventType::InventoryDecreased,
            EventType::InventoryDecreased
        ]
    );
    assert_eq!(out.orphans_applied, 2);
    assert_eq!(inventory(&state, "P1"), Some(5));
    assert_eq!(state.orphan_count(), 0);
    assert_eq!(
        out.products.last().and_then(|p| p.to_product().ok()),
        Some(product("P1", 5, 1.0)),
        "last canonical record is final"
    );
}

#[test]
fn orphan_from_bootstrap_arrival_is_applied_too() {
    let mut state = PartitionState::default();
    step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0);
    let out = step(&mut state, Input::Bootstrap(product("P1", 10, 1.0)), T0 + 1);
    assert_eq!(out.orphans_applied, 1);
    assert_eq!(inventory(&state, "P1"), Some(8));
}

#[test]
fn duplicate_of_a_buffered_orphan_is_not_buffered_twice() {
    let mut state = PartitionState::default();
    step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0);
    let again = step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0 + 1);
    assert_eq!(again.disposition, Disposition::Duplicate);
    step(&mut state, update(10, 1.0), T0 + 2);
    assert_eq!(inventory(&state, "P1"), Some(8));
}

#[test]
fn orphan_past_its_max_age_goes_to_the_dlq_on_tick() {
    let mut state = PartitionState::default();
    step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0);
    assert!(
        step(&mut state, Input::Tick, T0 + 10 * MINUTE - 1)
            .dlq
            .is_empty()
    );
    let out = step(&mut state, Input::Tick, T0 + 10 * MINUTE);
    assert_eq!(out.dlq.len(), 1);
    assert_eq!(out.dlq[0].reason, DlqReason::OrphanExpired);
    assert_eq!(out.dlq[0].key.as_deref(), Some(b"P1".as_slice()));
    let parsed: kartflow_wire::OrderLine =
        serde_json::from_slice(&out.dlq[0].payload).expect("DLQ payload is the order line");
    assert_eq!(parsed, line("a", "P1", 2));
    // Its id is still remembered: a redelivery does not resurrect it.
    let again = step(
        &mut state,
        Input::OrderLine(line("a", "P1", 2)),
        T0 + 11 * MINUTE,
    );
    assert_eq!(again.disposition, Disposition::Duplicate);
    step(&mut state, update(10, 1.0), T0 + 12 * MINUTE);
    assert_eq!(inventory(&state, "P1"), Some(10));
}

#[test]
fn expired_orphan_is_dead_lettered_when_the_product_arrives_late_without_a_tick() {
    let mut state = PartitionState::default();
    step(&mut state, Input::OrderLine(line("a", "P1", 2)), T0);
    let out = step(&mut state, update(10, 1.0), T0 + HOUR);
    assert_eq!(out.orphans_applied, 0);
    assert_eq!(out.dlq.len(), 1);
    assert_eq!(out.dlq[0].reason, DlqReason::OrphanExpired);
    assert_eq!(
        out.disposition,
        Disposition::Applied,
        "the product update itself applied"
    );
    assert_eq!(inventory(&state, "P1"), Some(10));
}

#[test]
fn orphan_buffer_is_bounded_per_product() {
    let cfg = InventoryRules {
        orphan_max_per_product: 2,
        ..InventoryRules::default()
    };
    let mut state = PartitionState::default();
    apply(&mut state, &cfg, Input::OrderLine(line("a", "P1", 1)), T0);
    apply(&mut state, &cfg, Input::OrderLine(line("b", "P1", 1)), T0);
    let out = apply(&mut state, &cfg, Input::OrderLine(line("c", "P1", 1)), T0);
    assert_eq!(
        out.disposition,
        Disposition::DeadLettered(DlqReason::OrphanBufferFull)
    );
    assert_eq!(out.dlq[0].reason, DlqReason::OrphanBufferFull);
    // Another product's buffer is independent.
    let other = apply(&mut state, &cfg, Input::OrderLine(line("d", "P2", 1)), T0);
    assert_eq!(other.disposition, Disposition::Buffered);
    // Once the old ones expire, there is room again.
    let out = apply(
        &mut state,
        &cfg,
        Input::OrderLine(line("e", "P1", 1)),
        T0 + HOUR,
    );
    assert_eq!(out.disposition, Disposition::Buffered);
    assert_eq!(
        out.dlq.len(),
        2,
        "the two expired lines went to the DLQ first"
    );
}

#[test]
fn keys_with_nothing_left_are_dropped_on_tick() {
    let mut state = PartitionState::default();
    step(&mut state, Input::OrderLine(line("a", "P9", 1)), T0);
    step(&mut state, Input::Tick, T0 + 10 * MINUTE);
    assert!(
        state.keys.contains_key("P9"),
        "id still remembered for dedup"
    );
    let out = step(&mut state, Input::Tick, T0 + 25 * HOUR);
    assert!(!state.keys.contains_key("P9"));
    assert!(
        out.touched.contains("P9"),
        "removal goes to the changelog as a tombstone"
    );
}

#[test]
fn reapplying_the_same_bootstrap_record_is_a_no_op() {
    let mut state = PartitionState::default();
    step(&mut state, Input::Bootstrap(product("P1", 50, 10.0)), T0);
    step(&mut state, order(5), T0 + 1);
    let before = state.clone();
    let out = step(
        &mut state,
        Input::Bootstrap(product("P1", 50, 10.0)),
        T0 + 2,
    );
    assert_eq!(out.disposition, Disposition::Unchanged);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(state, before, "orders since the bootstrap are kept");
}

#[test]
fn changed_bootstrap_record_upserts_only_what_the_file_changed() {
    let mut state = PartitionState::default();
    step(&mut state, Input::Bootstrap(product("P1", 50, 10.0)), T0);
    step(&mut state, order(5), T0 + 1);
    // The file now has a new price: take it, keep the stock orders consumed.
    let out = step(&mut state, Input::Bootstrap(product("P1", 50, 8.0)), T0 + 2);
    let types: Vec<_> = out.events.iter().map(|e| e.event_type).collect();
    assert_eq!(types, [EventType::PriceChanged]);
    assert_eq!(out.alerts[0].alert_type, AlertType::PriceDrop);
    assert_eq!(state.product("P1"), Some(product("P1", 45, 8.0)));
    // The file now restocks: its new inventory wins.
    let out = step(&mut state, Input::Bootstrap(product("P1", 80, 8.0)), T0 + 3);
    assert_eq!(out.events[0].event_type, EventType::InventoryIncreased);
    assert_eq!(inventory(&state, "P1"), Some(80));
}

#[test]
fn product_update_replaces_the_record() {
    let mut state = PartitionState::default();
    step(&mut state, Input::Bootstrap(product("P1", 50, 10.0)), T0);
    let mut renamed = product("P1", 20, 10.0);
    renamed.name = "Kart Deluxe".into();
    let out = step(&mut state, Input::ProductUpdate(renamed.clone()), T0 + 1);
    assert_eq!(out.events[0].product_name, "Kart Deluxe");
    assert_eq!(out.products, vec![renamed.clone()]);
    assert_eq!(state.product("P1"), Some(renamed));
}

#[test]
fn touched_keys_name_what_the_changelog_must_write() {
    let mut state = PartitionState::default();
    let out = step(&mut state, update(5, 1.0), T0);
    assert_eq!(out.touched.iter().collect::<Vec<_>>(), ["P1"]);
    let dup_free = step(&mut state, Input::OrderLine(line("x", "P2", 1)), T0);
    assert_eq!(dup_free.touched.iter().collect::<Vec<_>>(), ["P2"]);
    let invalid = step(&mut state, order(-1), T0);
    assert!(
        invalid.touched.is_empty(),
        "a refused record changes no state"
    );
}
