//! Builders shared by the rule and property tests.

use kartflow_wire::{OrderLine, Product};

use super::{Input, InventoryRules, Outputs, PartitionState, apply};

/// An arbitrary fixed processing time (epoch ms), far from 0 so "minus an hour" stays positive.
pub const T0: i64 = 1_700_000_000_000;
pub const HOUR: i64 = 3_600_000;
pub const MINUTE: i64 = 60_000;

pub fn product(id: &str, inventory: i64, price: f64) -> Product {
    Product {
        product_id: id.to_owned(),
        name: format!("Product {id}"),
        description: "a kart part".to_owned(),
        category: "parts".to_owned(),
        brand: "kartflow".to_owned(),
        price,
        inventory,
        image_url: format!("https://img.invalid/{id}.png"),
        tags: vec!["kart".to_owned()],
        rating: 4.5,
        review_count: 12,
    }
}

pub fn line(event_id: &str, product_id: &str, quantity: i64) -> OrderLine {
    OrderLine {
        event_id: event_id.to_owned(),
        order_id: format!("order-{event_id}"),
        product_id: product_id.to_owned(),
        quantity,
        timestamp: T0,
    }
}

/// Applies with the default configuration.
pub fn step(state: &mut PartitionState, input: Input, now_ms: i64) -> Outputs {
    apply(state, &InventoryRules::default(), input, now_ms)
}

pub fn inventory(state: &PartitionState, id: &str) -> Option<i64> {
    state.product(id).map(|p| p.inventory)
}
