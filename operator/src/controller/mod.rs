//! The controllers: one `kube_runtime::Controller` per kind, each owning its children. A
//! reconcile reads and dereferences, builds the desired children with the pure functions of
//! [`crate::children`], server-side applies them with one field manager, writes status from what
//! the server returned, and reports through Events and metrics.

pub mod apply;
mod backoff;
mod cdc_source;
mod context;
pub mod error;
mod events;
mod failure;
mod inventory_pipeline;
mod observe;
mod read_model;
mod rollout;
mod run;
pub mod status;
#[cfg(test)]
mod testing;
mod trigger;

pub use backoff::backoff_for;
pub use context::Context;
pub use error::Error;
pub use run::{namespaces, run};
