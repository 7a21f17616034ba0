//! `kartflow-operator`: reconciles kartflow's custom resources into workloads.
//!
//! The controllers arrive with the operator issue; until then the binary only reports its version
//! so the build, packaging and CI paths are exercised end to end.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kartflow-operator", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("kartflow-operator {}", env!("CARGO_PKG_VERSION"));
}
