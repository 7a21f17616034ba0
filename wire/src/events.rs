//! Event shapes (JSON, camelCase) of kartflow's topics, as fixed by the architecture brief.

use serde::{Deserialize, Serialize};

/// A product: one line of the bootstrap file, a `product-updates` record, or a canonical
/// `products` record. Keyed by `productId` on every topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub product_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub brand: String,
    pub price: f64,
    pub inventory: i64,
    #[serde(default)]
    pub image_url: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub rating: f64,
    #[serde(default)]
    pub review_count: i64,
}

/// One order line on `order-events`. `event_id` is stable across redelivery so consumers can
/// deduplicate (for CDC: derived from commit LSN and position, or the row's primary key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub event_id: String,
    pub order_id: String,
    pub product_id: String,
    pub quantity: i64,
    /// Epoch milliseconds.
    pub timestamp: i64,
}

/// What happened to a product's inventory or price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    ProductAdded,
    InventoryIncreased,
    InventoryDecreased,
    OutOfStock,
    BackInStock,
    PriceChanged,
    StaleInventory,
}

/// A record on `inventory-events` and `websocket-fanout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEvent {
    pub product_id: String,
    pub product_name: String,
    pub event_type: EventType,
    pub previous_inventory: i64,
    pub current_inventory: i64,
    pub previous_price: f64,
    pub current_price: f64,
    pub change_reason: String,
    /// Epoch milliseconds.
    pub timestamp: i64,
}

/// Why an alert was raised. `Oversold` is kartflow's own: the reference job clamped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertType {
    LowStock,
    OutOfStock,
    PriceDrop,
    Oversold,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// A record on `inventory-alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub alert_type: AlertType,
    pub product_id: String,
    pub message: String,
    pub severity: Severity,
    /// Epoch milliseconds.
    pub timestamp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn product_reads_the_reference_shape_and_defaults_optional_fields() {
        let p: Product = serde_json::from_value(json!({
            "productId": "P1", "name": "Kart", "price": 9.5, "inventory": 3,
            "imageUrl": "x.png", "tags": ["a"], "reviewCount": 2
        }))
        .expect("reference shape parses");
        assert_eq!(p.product_id, "P1");
        assert_eq!(p.image_url, "x.png");
        assert_eq!(p.review_count, 2);
        assert_eq!(p.brand, "");
    }

    #[test]
    fn enums_use_the_reference_spelling() {
        let v = serde_json::to_value(EventType::BackInStock).expect("serializes");
        assert_eq!(v, json!("BACK_IN_STOCK"));
        let v = serde_json::to_value(AlertType::OutOfStock).expect("serializes");
        assert_eq!(v, json!("OUT_OF_STOCK"));
        let v = serde_json::to_value(Severity::Critical).expect("serializes");
        assert_eq!(v, json!("CRITICAL"));
    }

    #[test]
    fn order_line_requires_its_identity_fields() {
        let missing_event_id =
            json!({"orderId": "o", "productId": "p", "quantity": 1, "timestamp": 0});
        assert!(serde_json::from_value::<OrderLine>(missing_event_id).is_err());
    }

    proptest::proptest! {
        #[test]
        fn order_line_round_trips(event_id in ".{0,20}", order_id in ".{0,20}",
                                  product_id in ".{0,20}", quantity in proptest::num::i64::ANY,
                                  timestamp in proptest::num::i64::ANY) {
            let line = OrderLine { event_id, order_id, product_id, quantity, timestamp };
            let text = serde_json::to_string(&line).expect("serializes");
            let back: OrderLine = serde_json::from_str(&text).expect("parses");
            proptest::prop_assert_eq!(back, line);
        }
    }
}
