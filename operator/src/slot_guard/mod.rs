//! The replication-slot guard. A logical slot keeps every byte of WAL its reader has not
//! confirmed; when the reader is gone (a deleted pipeline, a crashed connector, a forgotten
//! test) the slot retains WAL forever and fills the database's disk. The guard reads each
//! slot every check interval and tells apart a reader that is gone, one that is stuck, and one
//! that keeps up while an open transaction holds WAL back: it drops the first two (when
//! allowed) within one check interval, and only warns about the third, naming the transaction.
//!
//! [`policy`] decides and [`report`] words the decision, both without I/O; [`postgres`] does
//! the reading and dropping.

pub mod policy;
pub mod postgres;
pub mod report;

pub use policy::{
    Cause, DropStage, GuardPolicy, OpenTransaction, PolicyError, SlotMemory, SlotReading,
    Threshold, TimeLimit, Verdict, abandoned, decide, drop_done, drop_record, facts, track,
};
pub use postgres::{
    Db, DropOutcome, GuardError, MAX_DROP_ATTEMPTS, connect, drop_publication, drop_slot,
    ensure_publication, ensure_slot, read_slot,
};
