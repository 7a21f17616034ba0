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
//! - Outputs are stamped with the processing time `now_ms`; alerts carry a stable id (see
//!   [`super::io::AlertOut`]).

use kartflow_wire::{EventType, OrderLine, Product};

use super::InventoryRules;
use super::emit;
use super::io::{Disposition, DlqEntry, DlqReason, Input, Outputs, Source};
use super::state::{BufferedLine, FileVersion, KeyState, PartitionState, StoredProduct};
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
/// the file does not reset stock that orders have consumed since. Only a fingerprint of the last
/// file version is kept ([`FileVersion`]), not the record.
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
    let version = FileVersion::of(&incoming);
    let key = state.keys.entry(id.clone()).or_default();
    if key.file.as_deref() == Some(&version) {
        return Outputs::new(Disposition::Unchanged);
    }
    let target = match (
        key.file.as_deref(),
        key.product.as_ref().map(StoredProduct::to_product),
    ) {
        (Some(old_file), Some(Ok(current))) => old_file.merge(&current, &incoming),
        _ => incoming,
    };
    let stored = match StoredProduct::new(&target) {
        Ok(s) => s,
        Err(e) => {
            return dead_letter(
                DlqReason::InvalidRecord,
                format!("cannot be encoded: {e}"),
                Source::Bootstrap,
                &id,
                &target,
            );
        }
    };
    let mut out = Outputs::new(Disposition::Applied);
    fire_due_stale(&id, key, now_ms, &mut out);
    key.file = Some(Box::new(version));
    upsert(&id, key, cfg, stored, now_ms, &mut out);
    drain_orphans(&id, key, cfg, now_ms, &mut out);
    out.touched.insert(id);
    out
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
    let stored = match StoredProduct::new(&incoming) {
        Ok(s) => s,
        Err(e) => {
            return dead_letter(
                DlqReason::InvalidRecord,
                format!("cannot be encoded: {e}"),
                Source::ProductUpdates,
                &incoming.product_id,
                &incoming,
            );
        }
    };
    let id = incoming.product_id;
    let key = state.keys.entry(id.clone()).or_default();
    let mut out = Outputs::new(Disposition::Applied);
    fire_due_stale(&id, key, now_ms, &mut out);
    upsert(&id, key, cfg, stored, now_ms, &mut out);
    drain_orphans(&id, key, cfg, now_ms, &mut out);
    out.touched.insert(id);
    out
}

/// Stores `incoming` as the product record and emits what changed. A record whose stock did not
/// change raises no stock alert, even when the stock is low: alerts mark changes, so a price-only
/// update of a product already low does not repeat its LOW_STOCK.
fn upsert(
    id: &str,
    key: &mut KeyState,
    cfg: &InventoryRules,
    incoming: StoredProduct,
    now_ms: i64,
    out: &mut Outputs,
) {
    match key.product.take() {
        None => {
            key.version += 1;
            out.event(emit::event(
                id,
                &incoming,
                EventType::ProductAdded,
                0,
                0.0,
                "New product added to catalog".to_owned(),
                now_ms,
            ));
            emit::stock_alerts(cfg, id, key.version, incoming.inventory(), now_ms, out);
            out.products.push(incoming.clone());
        }
        Some(previous) => {
            if previous.json() != incoming.json() {
                key.version += 1;
            }
            if previous.inventory() != incoming.inventory() {
                inventory_change(cfg, id, key.version, &previous, &incoming, now_ms, out);
            }
            if cfg.is_price_change(previous.price(), incoming.price()) {
                price_change(cfg, id, key.version, &previous, &incoming, now_ms, out);
            }
            if previous.json() != incoming.json() {
                out.products.push(incoming.clone());
            }
        }
    }
    key.product = Some(incoming);
    rearm_stale(key, cfg, now_ms);
}

fn inventory_change(
    cfg: &InventoryRules,
    id: &str,
    version: u64,
    previous: &StoredProduct,
    current: &StoredProduct,
    now_ms: i64,
    out: &mut Outputs,
) {
    let (before, after) = (previous.inventory(), current.inventory());
    let delta = after.saturating_sub(before);
    let (event_type, reason) = if after == 0 {
        (
            EventType::OutOfStock,
            "Product is now out of stock".to_owned(),
        )
    } else if before == 0 {
        (
            EventType::BackInStock,
            format!("Product restocked with {after} units"),
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
        id,
        current,
        event_type,
        before,
        previous.price(),
        reason,
        now_ms,
    ));
    emit::stock_alerts(cfg, id, version, after, now_ms, out);
}

fn price_change(
    cfg: &InventoryRules,
    id: &str,
    version: u64,
    previous: &StoredProduct,
    current: &StoredProduct,
    now_ms: i64,
    out: &mut Outputs,
) {
    let (before, after) = (previous.price(), current.price());
    let diff = after - before;
    let direction = if diff > 0.0 { "increased" } else { "decreased" };
    let reason = if before > 0.0 {
        let percent = (diff / before * 100.0).abs();
        format!("Price {direction} by ${:.2} ({percent:.1}%)", diff.abs())
    } else {
        format!("Price {direction} by ${:.2}", diff.abs())
    };
    out.event(emit::event(
        id,
        current,
        EventType::PriceChanged,
        previous.inventory(),
        before,
        reason,
        now_ms,
    ));
    if cfg.is_price_drop(before, after) {
        out.alerts
            .push(emit::price_drop_alert(id, version, after, before, now_ms));
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
    if fire_due_stale(&id, key, now_ms, &mut out) {
        out.touched.insert(id.clone());
    }
    if !key.seen.insert(&line.event_id, now_ms) {
        out.disposition = Disposition::Duplicate;
        return out;
    }
    out.touched.insert(id.clone());
    if key.product.is_some() {
        deduct(&id, key, cfg, &line, now_ms, &mut out);
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
    id: &str,
    key: &mut KeyState,
    cfg: &InventoryRules,
    line: &OrderLine,
    now_ms: i64,
    out: &mut Outputs,
) {
    let Some(product) = key.product.as_mut() else {
        return;
    };
    key.version += 1;
    let version = key.version;
    let previous = product.inventory();
    let shortfall = line.quantity.saturating_sub(previous).max(0);
    product.set_inventory(previous.saturating_sub(line.quantity).max(0));
    let mut reason = format!("Deducted {} for order {}", line.quantity, line.order_id);
    if shortfall > 0 {
        reason.push_str(&format!(" (oversold by {shortfall})"));
    }
    out.event(emit::event(
        id,
        product,
        EventType::InventoryDecreased,
        previous,
        product.price(),
        reason,
        now_ms,
    ));
    if shortfall > 0 {
        let oversold = key.oversold.get_or_insert_with(Box::default);
        oversold.units = oversold.units.saturating_add(shortfall);
        oversold.lines = oversold.lines.saturating_add(1);
        oversold.last_order_id = Some(line.order_id.clone());
        oversold.last_at_ms = Some(now_ms);
        let oversell = emit::Oversell {
            order_id: &line.order_id,
            quantity: line.quantity,
            available: previous,
            shortfall,
        };
        out.alerts
            .push(emit::oversold_alert(id, version, &oversell, now_ms));
    }
    emit::stock_alerts(cfg, id, version, product.inventory(), now_ms, out);
    out.products.push(product.clone());
    rearm_stale(key, cfg, now_ms);
}

/// Applies the orphans of a key whose product is now known; expired ones go to the DLQ instead,
/// so the outcome does not depend on whether a tick ran in between.
fn drain_orphans(
    id: &str,
    key: &mut KeyState,
    cfg: &InventoryRules,
    now_ms: i64,
    out: &mut Outputs,
) {
    if key.product.is_none() || key.orphans.is_empty() {
        return;
    }
    expire_orphans(key, cfg, now_ms, out);
    for buffered in std::mem::take(&mut key.orphans) {
        deduct(id, key, cfg, &buffered.line, now_ms, out);
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
fn fire_due_stale(id: &str, key: &mut KeyState, now_ms: i64, out: &mut Outputs) -> bool {
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
        id,
        product,
        EventType::StaleInventory,
        product.inventory(),
        product.price(),
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
        let mut changed = fire_due_stale(id, key, now_ms, &mut out);
        changed |= expire_orphans(key, cfg, now_ms, &mut out);
        let before = key.seen.len();
        key.seen
            .retain(|first_seen| now_ms.saturating_sub(first_seen) < retention);
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
