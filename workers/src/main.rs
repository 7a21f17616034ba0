//! `kartflow-worker`: the single worker binary. Each role is a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kartflow_wire::telemetry;
use kartflow_worker::inventory;

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
    Inventory {
        /// The worker configuration file (JSON).
        #[arg(long, env = "KARTFLOW_CONFIG")]
        config: PathBuf,
        /// Start from this savepoint (as returned by POST /v1/savepoints) instead of the
        /// pipeline's current state.
        #[arg(long, env = "KARTFLOW_FROM_SAVEPOINT")]
        from_savepoint: Option<String>,
        /// This worker's identity (transactional id, savepoint files); the pod name on Kubernetes.
        #[arg(long, env = "POD_NAME")]
        instance_id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
            println!(
                "kartflow-worker {} (librdkafka {librdkafka})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Command::Inventory {
            config,
            from_savepoint,
            instance_id,
        } => {
            telemetry::init(matches!(cli.log_format, LogFormat::Json));
            let instance = instance_id
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("worker-{}", std::process::id()));
            let args = inventory::runtime::Args {
                config,
                from_savepoint,
                instance,
            };
            match inventory::runtime::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "inventory worker failed");
                    eprintln!("kartflow-worker inventory: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
