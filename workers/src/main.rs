//! `kartflow-worker`: the single worker binary. Each role is a subcommand; the inventory, CDC and
//! read-model roles arrive with their issues.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kartflow-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the worker's version and the librdkafka it was built with.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => {
            let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
            println!(
                "kartflow-worker {} (librdkafka {librdkafka})",
                env!("CARGO_PKG_VERSION")
            );
        }
    }
}
