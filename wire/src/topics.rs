//! The reference system's topic names: the defaults of the worker configuration and of the
//! custom resources, kept here so both sides default to the same names.

pub const PRODUCT_UPDATES: &str = "product-updates";
pub const ORDER_EVENTS: &str = "order-events";
pub const PRODUCTS: &str = "products";
pub const INVENTORY_EVENTS: &str = "inventory-events";
pub const INVENTORY_ALERTS: &str = "inventory-alerts";
pub const WEBSOCKET_FANOUT: &str = "websocket-fanout";
pub const INVENTORY_DLQ: &str = "inventory-dlq";
pub const CDC_DLQ: &str = "cdc-dlq";
/// The CDC worker's source positions (compacted; one record per `CdcSource`).
pub const CDC_POSITIONS: &str = "kartflow-cdc-positions";
