//! The inventory role: keyed per-product state fed by product updates and order lines.
//!
//! This module is the pure core (no Kafka, no clock, no I/O): [`decode`] turns raw record bytes
//! into an [`Input`] or a DLQ entry, and [`apply`] runs one input against a partition's
//! [`PartitionState`] at a given processing time, returning the records to produce. The Kafka loop
//! only moves bytes, commits transactions and snapshots the state.

pub mod apply;
pub mod decode;
mod emit;
pub mod io;
pub mod state;
pub mod validate;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod rules_table;
#[cfg(test)]
mod testutil;

pub use apply::apply;
pub use decode::{
    BootstrapFileError, decode, decode_bootstrap_file, each_bootstrap_record, superseded_entry,
    superseded_records,
};
pub use io::{AlertOut, Disposition, DlqEntry, DlqReason, Input, Outputs, Source};
pub use kartflow_wire::config::{InventoryRules, Millis};
pub use state::{
    BufferedLine, FileVersion, KeyState, OLDEST_READABLE_STATE_SCHEMA, Oversold, PartitionState,
    STATE_SCHEMA_VERSION, SeenIds, StoredProduct,
};
pub use validate::ValidationError;

pub mod runtime;
