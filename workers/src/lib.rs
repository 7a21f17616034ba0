//! kartflow's worker roles. The binary (`src/main.rs`) only parses arguments and dispatches here.
//!
//! Each role is a folder holding only its own logic (`inventory` today); what roles share is
//! outside them: [`process`] (admin HTTP server, shutdown on SIGTERM/SIGINT, runtime and thread
//! helpers) and [`kafka`] (client settings, partitioning, topic checks). A role exposes a
//! `clap::Args` struct and a `run(args) -> Result<(), E>`; `main.rs` gives it a subcommand.

#![forbid(unsafe_code)]

pub mod cdc;
pub mod inventory;
pub mod kafka;
pub mod process;
pub mod read_model;
