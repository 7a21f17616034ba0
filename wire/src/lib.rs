//! Types that cross a process boundary in kartflow: the JSON event shapes on Kafka topics and
//! the reference topic names.
//!
//! Both the operator and the workers depend on this crate; it holds no behaviour, only shapes,
//! so the operator never depends on worker internals.

pub mod events;
pub mod topics;

pub use events::{Alert, AlertType, EventType, InventoryEvent, OrderLine, Product, Severity};
