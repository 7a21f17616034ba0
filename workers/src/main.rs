//! `kartflow-worker`: the single worker binary. Each role is a subcommand whose arguments and
//! `run` live in the role's folder; this file only parses, sets up logging and dispatches.
//!
//! Adding a role: one variant in [`Command`] holding the role's `clap::Args`, and one arm in
//! `main` calling `run_role("name", json_logs, || role::run(args))`.

use std::fmt::Display;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kartflow_wire::telemetry;
use kartflow_worker::{cdc, inventory, read_model};

#[derive(Debug, Parser)]
#[command(name = "kartflow-worker", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true, env = "KARTFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the worker's version and the librdkafka it was built with.
    Version,
    /// Exactly-once inventory processing of product updates and order lines.
    Inventory(inventory::runtime::Args),
    /// PostgreSQL logical replication (pgoutput) into Kafka, exactly once.
    Cdc(cdc::Args),
    /// A broadcast read replica: the whole product view over REST and WebSocket.
    ReadModel(read_model::runtime::Args),
}

fn main() -> ExitCode {
    kartflow_wire::pg_tls::install_default_provider();
    let cli = Cli::parse();
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    match cli.command {
        Command::Version => {
            let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
            println!(
                "kartflow-worker {} (librdkafka {librdkafka})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Command::Inventory(args) => {
            run_role("inventory", json_logs, || inventory::runtime::run(args))
        }
        Command::Cdc(args) => run_role("cdc", json_logs, || cdc::run(args)),
        Command::ReadModel(args) => {
            run_role("read-model", json_logs, || read_model::runtime::run(args))
        }
    }
}

/// Sets up logging, runs a role until it ends and turns its result into the exit status. The
/// error goes to the log and, for whoever reads the pod's termination output, to stderr.
fn run_role<E: Display>(
    name: &str,
    json_logs: bool,
    run: impl FnOnce() -> Result<(), E>,
) -> ExitCode {
    telemetry::init(json_logs);
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} worker failed");
            eprintln!("kartflow-worker {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
