//! The replication-slot guard. A logical slot keeps every byte of WAL its reader has not
//! confirmed; when the reader is gone (a deleted pipeline, a crashed connector, a forgotten
//! test) the slot retains WAL forever and fills the database's disk. The guard reads each
//! slot's retained WAL every check interval, warns past one threshold and, when allowed, ends
//! the reader and drops the slot past another, so retained WAL never stays above the drop
//! threshold for longer than one check interval.
//!
//! [`policy`] decides and [`report`] words the decision, both without I/O; [`postgres`] does
//! the reading and dropping.

pub mod policy;
pub mod postgres;
pub mod report;

pub use policy::{
    GuardPolicy, PolicyError, SlotReading, Threshold, TimeLimit, Verdict, decide, drop_record,
    facts,
};
pub use postgres::{
    Db, DropOutcome, GuardError, MAX_DROP_ATTEMPTS, connect, drop_publication, drop_slot,
    ensure_publication, ensure_slot, read_slot,
};
