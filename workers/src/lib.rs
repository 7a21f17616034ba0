//! kartflow's worker roles. The binary (`src/main.rs`) only parses arguments and dispatches here.

#![forbid(unsafe_code)]

pub mod inventory;
pub mod kafka;
pub mod process;
