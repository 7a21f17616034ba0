//! The inventory state machine: one input and the current processing time in, state changes and
//! outputs out. No I/O and no clock reads, so every rule is testable and replay is deterministic.
//!
//! Rules (reference semantics of the original job, plus kartflow's fixes):
//! - New product → `PRODUCT_ADDED` (previous inventory 0, previous price 0) and stock alerts.
//! - Product update → `OUT_OF_STOCK` at 0, `BACK_IN_STOCK` from 0, else `INVENTORY_DECREASED` /
//!   `INVENTORY_INCREASED`, each with stock alerts; a price move > `priceChangeEpsilon` →
//!   `PRICE_CHANGED`, and a drop ≥ `priceDropPercent` → `PRICE_DROP` alert (INFO).
//! - Order line → inventory `max(previous − quantity, 0)`, exactly one `INVENTORY_DECREASED`,
//!   stock alerts; a shortfall is recorded and raises `OVERSOLD` (CRITICAL).
//! - Stock alerts: `OUT_OF_STOCK` (CRITICAL) at 0; `LOW_STOCK` when `0 < inventory <=
//!   lowStockThreshold`, CRITICAL at or below `criticalStockThreshold`, else WARNING.
//! - Every applied product record or order line re-arms the product's stale timer; when it falls
//!   due, `STALE_INVENTORY` is emitted once. Due timers fire on a tick, or before the next input
//!   for that key, so firing does not depend on how often ticks come.
//! - Order lines for an unknown product wait in a bounded buffer and are applied when it arrives;
//!   past `orphanMaxPerProduct` or `orphanMaxAge` they go to the DLQ.
//! - Order lines are deduplicated by `eventId` for `dedupRetention`. An id is remembered whatever
//!   its fate (applied, buffered, dead-lettered), so each id has exactly one outcome.
//! - Invalid records go to the DLQ with the field named; nothing panics.

use kartflow_wire::{EventType, OrderLine, Product};

use super::InventoryRules;
use super::emit;
use super::io::{Disposition, DlqEntry, DlqReason, Input, Outputs, Source};
use super::state::{BufferedLine, KeyState, PartitionState};
use super::validate::{validate_order_line, validate_product};

/// Applies one input at processing time `now_ms` (epoch ms). `cfg` must have passed
/// [`InventoryRules::validate`].
pub fn apply(
    state: &mut PartitionState,
    cfg: &InventoryRules,
    input: Input,
    now_ms: i64,
) -> Outputs {
    match input {
        Input::Bootstrap(product) => apply_bootstrap(state, cfg, product, now_ms),
        Input::ProductUpdate(product) => apply_product_update(state, cfg, product, now_ms),
        Input::OrderLine(line) => apply_order_line(state, cfg, line, now_ms),
        Input::Tick => tick(state, cfg, now_ms),
    }
}

fn dead_letter<T: serde::Serialize>(
    reason: DlqReason,
    detail: String,
    source: Source,
    key: &str,
    record: &T,
) -> Outputs {
    let mut out = Outputs::new(Disposition::DeadLettered(reason));
    out.dlq
        .push(DlqEntry::for_record(reason, detail, source, key, record));
    out
}

/// A bootstrap-file record. Identical to the last one applied for the key → no-op, so re-reading
/// the same file changes nothing. Otherwise it is an upsert: for a key already bootstrapped, only
/// the fields the file changed since its last version are taken from it, so editing a price in
/// the file does not reset stock that orders have consumed since.
fn apply_bootstrap(
    state: &mut PartitionState,
    cfg: &InventoryRules,
    incoming: Product,
    now_ms: i64,
) -> Outputs {
    if let Err(e) = validate_product(&incoming) {
        return dead_letter(
            DlqReason::InvalidRecord,
            e.to_string(),
            Source::Bootstrap,
            &incoming.product_id,
            &incoming,
        );
    }
    let id = incoming.product_id.clone();
    let key = state.keys.entry(id.clone()).or_default();
    if key.bootstrap.as_ref() == Some(&incoming) {
        return Outputs::new(Disposition::Unchanged);
    }
    let mut out = Outputs::new(Disposition::Applied);
    fire_due_stale(key, now_ms, &mut out);
    let target = match (&key.bootstrap, &key.product) {
        (Some(old_file), Some(current)) => merge_changed_fields(old_file, current, &incoming),
        _ => incoming.clone(),
    };
    key.bootstrap = Some(incoming);
    upsert(key, cfg, target, now_ms, &mut out);
    drain_orphans(key, cfg, now_ms, &mut out);
    out.touched.insert(id);
    out
}

/// `current` with every field that differs between `old_file` and `new_file` taken from
/// `new_file` (a three-way merge with the file as the other side).
fn merge_changed_fields(old_file: &Product, current: &Product, new_file: &Product) -> Product {
    fn pick<T: PartialEq + Clone>(old: &T, cur: &T, new: &T) -> T {
        if old == new { cur.clone() } else { new.clone() }
    }
    Product {
        product_id: new_file.product_id.clone(),
        name: pick(&old_file.name, &current.name, &new_file.name),
        description: pick(
            &old_file.description,
            &current.description,
            &new_file.description,
        ),
        category: pick(&old_file.category, &current.category, &new_file.category),
        brand: pick(&old_file.brand, &current.brand, &new_file.brand),
        price: pick(&old_file.price, &current.price, &new_file.price),
        inventory: pick(&old_file.inventory, &current.inventory, &new_file.inventory),
        image_url: pick(&old_file.image_url, &current.image_url, &new_file.image_url),
        tags: pick(&old_file.tags, &current.tags, &new_file.tags),
        rating: pick(&old_file.rating, &current.rating, &new_file.rating),
        review_count: pick(
            &old_file.review_count,
            &current.review_count,
            &new_file.review_count,
        ),
    }
}

/// A `product-updates` record replaces the product record (as in the reference job).
fn apply_product_update(
    state: &mut PartitionState,
    cfg: &InventoryRules,
    incoming: Product,
    now_ms: i64,
) -> Outputs {
    if let Err(e) = validate_product(&incoming) {
        return dead_letter(
            DlqReason::InvalidRecord,
            e.to_string(),
            Source::ProductUpdates,
            &incoming.product_id,
            &incoming,
        );
    }
    let id = incoming.product_id.clone();
    let key = state.keys.entry(id.clone()).or_default();
    let mut out = Outputs::new(Disposition::Applied);
    fire_due_stale(key, now_ms, &mut out);
    upsert(key, cfg, incoming, now_ms, &mut out);
    drain_orphans(key, cfg, now_ms, &mut out);
    out.touched.insert(id);
    out
}

/// Stores `incoming` as the product record and emits what changed.
fn upsert(
    key: &mut KeyState,
    cfg: &InventoryRules,
    incoming: Product,
    now_ms: i64,
    out: &mut Outputs,
) {
    match key.product.take() {
        None => {
            out.event(emit::event(
                &incoming,
                EventType::ProductAdded,
                0,
                0.0,
                "New product added to catalog".to_owned(),
                now_ms,
            ));
            emit::stock_alerts(cfg, &incoming, now_ms, out);
            out.products.push(incoming.clone());
        }
        Some(previous) => {
            if previous.inventory != incoming.inventory {
                inventory_change(cfg, &previous, &incoming, now_ms, out);
            }
            if cfg.is_price_change(previous.price, incoming.price) {
                price_change(cfg, &previous, &incoming, now_ms, out);
            }
            if previous != incoming {
                out.products.push(incoming.clone());
            }
        }
    }
    key.product = Some(incoming);
    rearm_stale(key, cfg, now_ms);
}

fn inventory_change(
    cfg: &InventoryRules,
    previous: &Product,
    current: &Product,
    now_ms: i64,
    out: &mut Outputs,
) {
    let delta = current.inventory.saturating_sub(previous.inventory);
    let (event_type, reason) = if current.inventory == 0 {
        (
            EventType::OutOfStock,
            "Product is now out of stock".to_owned(),
        )
    } else if previous.inventory == 0 {
        (
            EventType::BackInStock,
            format!("Product restocked with {} units", current.inventory),
        )
    } else if delta < 0 {
        (
            EventType::InventoryDecreased,
            format!("{} units sold/removed", delta.saturating_neg()),
        )
    } else {
        (
            EventType::InventoryIncreased,
            format!("{delta} units added to inventory"),
        )
    };
    out.event(emit::event(
        current,
        event_type,
        previous.inventory,
        previous.price,
        reason,
        now_ms,
    ));
    emit::stock_alerts(cfg, current, now_ms, out);
}

fn price_change(
    cfg: &InventoryRules,
    previous: &Product,
    current: &Product,
    now_ms: i64,
    out: &mut Outputs,
) {
    let diff = current.price - previous.price;
    let direction = if diff > 0.0 { "increased" } else { "decreased" };
    let reason = if previous.price > 0.0 {
        let percent = (diff / previous.price * 100.0).abs();
        format!("Price {direction} by ${:.2} ({percent:.1}%)", diff.abs())
    } else {
        format!("Price {direction} by ${:.2}", diff.abs())
    };
    out.event(emit::event(
        current,
        EventType::PriceChanged,
        previous.inventory,
        previous.price,
        reason,
        now_ms,
    ));
    if cfg.is_price_drop(previous.price, current.price) {
        out.alerts
            .push(emit::price_drop_alert(current, previous.price, now_ms));
    }
}

fn apply_order_line(
    state: &mut PartitionState,
    cfg: &InventoryRules,
    line: OrderLine,
    now_ms: i64,
) -> Outputs {
    if let Err(e) = validate_order_line(&line) {
        return dead_letter(
            DlqReason::InvalidRecord,
            e.to_string(),
            Source::OrderEvents,
            &line.product_id,
            &line,
        );
    }
    let id = line.product_id.clone();
    let key = state.keys.entry(id.clone()).or_default();
    let mut out = Outputs::new(Disposition::Applied);
    if fire_due_stale(key, now_ms, &mut out) {
        out.touched.insert(id.clone());
    }
    if key.seen.contains_key(&line.event_id) {
        out.disposition = Disposition::Duplicate;
        return out;
    }
    key.seen.insert(line.event_id.clone(), now_ms);
    out.touched.insert(id.clone());
    if key.product.is_some() {
        deduct(key, cfg, &line, now_ms, &mut out);
        return out;
    }
    // Unknown product: wait for it, within bounds. Expire first so a full buffer of stale lines
    // does not turn away a fresh one.
    expire_orphans(key, cfg, now_ms, &mut out);
    if key.orphans.len() >= cfg.orphan_max_per_product {
        let detail = format!(
            "product {id} unknown and {} order lines already waiting for it",
            key.orphans.len()
        );
        let reason = DlqReason::OrphanBufferFull;
        out.disposition = Disposition::DeadLettered(reason);
        out.dlq.push(DlqEntry::for_record(
            reason,
            detail,
            Source::OrderEvents,
            &id,
            &line,
        ));
    } else {
        out.disposition = Disposition::Buffered;
        key.orphans.push(BufferedLine {
            line,
            buffered_at_ms: now_ms,
        });
    }
    out
}

/// Deducts one (already deduplicated) order line from a known product.
fn deduct(
    key: &mut KeyState,
    cfg: &InventoryRules,
    line: &OrderLine,
    now_ms: i64,
    out: &mut Outputs,
) {
    let Some(product) = key.product.as_mut() else {
        return;
    };
    let previous = product.inventory;
    let shortfall = line.quantity.saturating_sub(previous).max(0);
    product.inventory = previous.saturating_sub(line.quantity).max(0);
    let mut reason = format!("Deducted {} for order {}", line.quantity, line.order_id);
    if shortfall > 0 {
        reason.push_str(&format!(" (oversold by {shortfall})"));
    }
    out.event(emit::event(
        product,
        EventType::InventoryDecreased,
        previous,
        product.price,
        reason,
        now_ms,
    ));
    if shortfall > 0 {
        key.oversold.units = key.oversold.units.saturating_add(shortfall);
        key.oversold.lines = key.oversold.lines.saturating_add(1);
        key.oversold.last_order_id = Some(line.order_id.clone());
        key.oversold.last_at_ms = Some(now_ms);
        out.alerts.push(emit::oversold_alert(
            product,
            &line.order_id,
            line.quantity,
            previous,
            shortfall,
            now_ms,
        ));
    }
    emit::stock_alerts(cfg, product, now_ms, out);
    out.products.push(product.clone());
    rearm_stale(key, cfg, now_ms);
}

/// Applies the orphans of a key whose product is now known; expired ones go to the DLQ instead,
/// so the outcome does not depend on whether a tick ran in between.
fn drain_orphans(key: &mut KeyState, cfg: &InventoryRules, now_ms: i64, out: &mut Outputs) {
    if key.product.is_none() || key.orphans.is_empty() {
        return;
    }
    expire_orphans(key, cfg, now_ms, out);
    for buffered in std::mem::take(&mut key.orphans) {
        deduct(key, cfg, &buffered.line, now_ms, out);
        out.orphans_applied += 1;
    }
}

/// Moves orphans at or past `orphanMaxAge` to the DLQ. Returns whether any moved.
fn expire_orphans(
    key: &mut KeyState,
    cfg: &InventoryRules,
    now_ms: i64,
    out: &mut Outputs,
) -> bool {
    let max_age = cfg.orphan_max_age.as_i64();
    let is_expired = |b: &BufferedLine| now_ms.saturating_sub(b.buffered_at_ms) >= max_age;
    if !key.orphans.iter().any(is_expired) {
        return false;
    }
    let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut key.orphans)
        .into_iter()
        .partition(is_expired);
    key.orphans = waiting;
    for b in expired {
        let age = now_ms.saturating_sub(b.buffered_at_ms);
        let detail = format!(
            "product {} still unknown after {age} ms (orphanMaxAge {})",
            b.line.product_id, cfg.orphan_max_age
        );
        let product_id = b.line.product_id.clone();
        out.dlq.push(DlqEntry::for_record(
            DlqReason::OrphanExpired,
            detail,
            Source::OrderEvents,
            &product_id,
            &b.line,
        ));
    }
    true
}

fn rearm_stale(key: &mut KeyState, cfg: &InventoryRules, now_ms: i64) {
    key.last_update_ms = Some(now_ms);
    key.stale_deadline_ms = Some(now_ms.saturating_add(cfg.stale_after.as_i64()));
}

/// Emits STALE_INVENTORY if the key's timer is due, and clears it (it fires once per quiet
/// period, like the reference job). Returns whether it fired.
fn fire_due_stale(key: &mut KeyState, now_ms: i64, out: &mut Outputs) -> bool {
    let (Some(deadline), Some(product)) = (key.stale_deadline_ms, key.product.as_ref()) else {
        return false;
    };
    if deadline > now_ms {
        return false;
    }
    let quiet_ms = key.last_update_ms.map_or(0, |t| now_ms.saturating_sub(t));
    // An approximate hour count is all a human-readable reason needs.
    let hours = quiet_ms as f64 / 3_600_000.0;
    out.event(emit::event(
        product,
        EventType::StaleInventory,
        product.inventory,
        product.price,
        format!("No updates for {hours:.1} hours"),
        now_ms,
    ));
    key.stale_deadline_ms = None;
    true
}

/// Processing time advanced: fire due stale timers, dead-letter expired orphans, forget order-line
/// ids older than the retention window, and drop keys with nothing left.
fn tick(state: &mut PartitionState, cfg: &InventoryRules, now_ms: i64) -> Outputs {
    let mut out = Outputs::new(Disposition::Tick);
    let retention = cfg.dedup_retention.as_i64();
    let mut emptied = Vec::new();
    for (id, key) in &mut state.keys {
        let mut changed = fire_due_stale(key, now_ms, &mut out);
        changed |= expire_orphans(key, cfg, now_ms, &mut out);
        let before = key.seen.len();
        key.seen
            .retain(|_, first_seen| now_ms.saturating_sub(*first_seen) < retention);
        changed |= key.seen.len() != before;
        if changed {
            out.touched.insert(id.clone());
        }
        if key.is_empty() {
            emptied.push(id.clone());
        }
    }
    for id in emptied {
        state.keys.remove(&id);
        out.touched.insert(id);
    }
    out
}
