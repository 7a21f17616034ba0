//! Types that cross a process boundary in kartflow: the JSON event shapes on Kafka topics, the
//! reference topic names, and the worker configuration files the operator renders
//! ([`config`]).
//!
//! Both the operator and the workers depend on this crate; it holds shapes, not behaviour, so
//! the operator never depends on worker internals. The one exception is the `telemetry` feature:
//! both binaries log the same way, configured in one place.

pub mod config;
pub mod events;
#[cfg(feature = "postgres-tls")]
pub mod pg_tls;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod topics;

pub use events::{Alert, AlertType, EventType, InventoryEvent, OrderLine, Product, Severity};
