//! Builders of the records the rules emit, so wording and field conventions live in one place.
//!
//! Every `timestamp` is the processing time the input was applied at (the worker's clock), not
//! the time carried by the input record.

use kartflow_wire::{Alert, AlertType, EventType, InventoryEvent, Severity};

use super::InventoryRules;
use super::io::{AlertOut, Outputs};
use super::state::StoredProduct;

/// An inventory event about product `id` (now `current`), coming from `previous_inventory` /
/// `previous_price`.
pub(crate) fn event(
    id: &str,
    current: &StoredProduct,
    event_type: EventType,
    previous_inventory: i64,
    previous_price: f64,
    change_reason: String,
    now_ms: i64,
) -> InventoryEvent {
    InventoryEvent {
        product_id: id.to_owned(),
        product_name: current.name(),
        event_type,
        previous_inventory,
        current_inventory: current.inventory(),
        previous_price,
        current_price: current.price(),
        change_reason,
        timestamp: now_ms,
    }
}

/// The stable id of an alert: see [`AlertOut`].
pub(crate) fn alert_id(id: &str, version: u64, alert_type: AlertType) -> String {
    let kind = match alert_type {
        AlertType::LowStock => "LOW_STOCK",
        AlertType::OutOfStock => "OUT_OF_STOCK",
        AlertType::PriceDrop => "PRICE_DROP",
        AlertType::Oversold => "OVERSOLD",
    };
    format!("{id}/{version}/{kind}")
}

fn alert(
    id: &str,
    version: u64,
    alert_type: AlertType,
    severity: Severity,
    message: String,
    now_ms: i64,
) -> AlertOut {
    AlertOut {
        id: alert_id(id, version, alert_type),
        alert: Alert {
            alert_type,
            product_id: id.to_owned(),
            message,
            severity,
            timestamp: now_ms,
        },
    }
}

/// Stock-level alerts after a new product or an inventory change: OUT_OF_STOCK (CRITICAL) at 0,
/// LOW_STOCK under the single low-stock rule of [`InventoryRules::is_low_stock`].
pub(crate) fn stock_alerts(
    cfg: &InventoryRules,
    id: &str,
    version: u64,
    inventory: i64,
    now_ms: i64,
    out: &mut Outputs,
) {
    if inventory == 0 {
        out.alerts.push(alert(
            id,
            version,
            AlertType::OutOfStock,
            Severity::Critical,
            "Product is out of stock".to_owned(),
            now_ms,
        ));
    } else if cfg.is_low_stock(inventory) {
        out.alerts.push(alert(
            id,
            version,
            AlertType::LowStock,
            cfg.low_stock_severity(inventory),
            format!("Low stock: only {inventory} items remaining"),
            now_ms,
        ));
    }
}

pub(crate) fn price_drop_alert(
    id: &str,
    version: u64,
    price: f64,
    previous_price: f64,
    now_ms: i64,
) -> AlertOut {
    let percent = (previous_price - price) / previous_price * 100.0;
    alert(
        id,
        version,
        AlertType::PriceDrop,
        Severity::Info,
        format!("Price dropped {percent:.1}% from ${previous_price:.2} to ${price:.2}"),
        now_ms,
    )
}

pub(crate) struct Oversell<'a> {
    pub order_id: &'a str,
    pub quantity: i64,
    pub available: i64,
    pub shortfall: i64,
}

pub(crate) fn oversold_alert(id: &str, version: u64, o: &Oversell<'_>, now_ms: i64) -> AlertOut {
    alert(
        id,
        version,
        AlertType::Oversold,
        Severity::Critical,
        format!(
            "Oversold by {}: order {} asked for {}, only {} in stock",
            o.shortfall, o.order_id, o.quantity, o.available
        ),
        now_ms,
    )
}
