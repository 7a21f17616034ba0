//! Builders of the records the rules emit, so wording and field conventions live in one place.

use kartflow_wire::{Alert, AlertType, EventType, InventoryEvent, Product, Severity};

use super::InventoryRules;
use super::io::Outputs;

/// An inventory event about `current`, coming from `previous_inventory` / `previous_price`.
pub(crate) fn event(
    current: &Product,
    event_type: EventType,
    previous_inventory: i64,
    previous_price: f64,
    change_reason: String,
    now_ms: i64,
) -> InventoryEvent {
    InventoryEvent {
        product_id: current.product_id.clone(),
        product_name: current.name.clone(),
        event_type,
        previous_inventory,
        current_inventory: current.inventory,
        previous_price,
        current_price: current.price,
        change_reason,
        timestamp: now_ms,
    }
}

fn alert(
    product: &Product,
    alert_type: AlertType,
    severity: Severity,
    message: String,
    now_ms: i64,
) -> Alert {
    Alert {
        alert_type,
        product_id: product.product_id.clone(),
        message,
        severity,
        timestamp: now_ms,
    }
}

/// Stock-level alerts after a new product or an inventory change: OUT_OF_STOCK (CRITICAL) at 0,
/// LOW_STOCK under the single low-stock rule of [`InventoryRules::is_low_stock`].
pub(crate) fn stock_alerts(
    cfg: &InventoryRules,
    product: &Product,
    now_ms: i64,
    out: &mut Outputs,
) {
    let inventory = product.inventory;
    if inventory == 0 {
        out.alerts.push(alert(
            product,
            AlertType::OutOfStock,
            Severity::Critical,
            "Product is out of stock".to_owned(),
            now_ms,
        ));
    } else if cfg.is_low_stock(inventory) {
        out.alerts.push(alert(
            product,
            AlertType::LowStock,
            cfg.low_stock_severity(inventory),
            format!("Low stock: only {inventory} items remaining"),
            now_ms,
        ));
    }
}

pub(crate) fn price_drop_alert(product: &Product, previous_price: f64, now_ms: i64) -> Alert {
    let percent = (previous_price - product.price) / previous_price * 100.0;
    alert(
        product,
        AlertType::PriceDrop,
        Severity::Info,
        format!(
            "Price dropped {percent:.1}% from ${previous_price:.2} to ${:.2}",
            product.price
        ),
        now_ms,
    )
}

pub(crate) fn oversold_alert(
    product: &Product,
    order_id: &str,
    quantity: i64,
    available: i64,
    shortfall: i64,
    now_ms: i64,
) -> Alert {
    alert(
        product,
        AlertType::Oversold,
        Severity::Critical,
        format!(
            "Oversold by {shortfall}: order {order_id} asked for {quantity}, only {available} in stock"
        ),
        now_ms,
    )
}
