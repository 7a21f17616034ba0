//! The inventory worker process: configuration, start-up checks, the exactly-once loop on its own
//! thread, and the inventory routes on the shared admin API ([`crate::process`]).

pub mod api;
pub mod changelog;
pub mod engine;
pub mod metrics;
pub mod savepoint;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::BaseConsumer;
use thiserror::Error;
use tracing::{info, warn};

use crate::inventory::{each_bootstrap_record, superseded_records};
use crate::kafka;
use crate::kafka::topics::{self, TopicError};
use crate::process::{self, ProcessError, Readiness, Shutdown, admin};
use engine::{BootstrapFile, EngineError, EngineSetup};
use kartflow_wire::config::{self, ConfigError, InventorySettings};
use metrics::Metrics;

/// Command-line inputs of `kartflow-worker inventory`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The worker configuration file (JSON).
    #[arg(long, env = "KARTFLOW_CONFIG")]
    pub config: PathBuf,
    /// Start from this savepoint (as returned by POST /v1/savepoints) instead of the
    /// pipeline's current state.
    #[arg(long, env = "KARTFLOW_FROM_SAVEPOINT")]
    pub from_savepoint: Option<String>,
    /// This worker's identity (transactional id, savepoint files); the pod name on Kubernetes.
    #[arg(long, env = "POD_NAME")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("bootstrapProductsFile {path}: {detail}")]
    Bootstrap { path: PathBuf, detail: String },
    #[error("cannot start: {0}")]
    Start(String),
    #[error("cannot start: {0}")]
    Process(#[from] ProcessError),
}

/// Reads and checks the bootstrap file at start: it must exist, be readable and be a JSON array
/// or JSON lines. Records are decoded one at a time to count the rejected ones and not kept.
fn check_bootstrap(path: &PathBuf) -> Result<BootstrapFile, RunError> {
    let bad = |detail: String| RunError::Bootstrap {
        path: path.clone(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let hash = savepoint::sha256_hex(&bytes);
    let duplicates = superseded_records(&bytes, |_| true)
        .map_err(|e| bad(e.to_string()))?
        .len();
    let (mut records, mut rejected) = (0usize, duplicates);
    each_bootstrap_record(&bytes, |_, r| {
        records += 1;
        rejected += usize::from(r.is_err());
    })
    .map_err(|e| bad(e.to_string()))?;
    info!(path = %path.display(), records, rejected, %hash, "bootstrap file checked");
    Ok(BootstrapFile {
        path: path.clone(),
        hash,
    })
}

/// Runs the worker until SIGTERM/SIGINT or a savepoint with `stop`.
///
/// Start-up checks everything that can be checked before touching Kafka, in this order: the
/// configuration, the bootstrap file, the control token, the savepoint, the listen addresses;
/// then, with Kafka, that the inputs exist and are co-partitioned (and match the savepoint);
/// only then are the changelog and output topics created.
pub fn run(args: Args) -> Result<(), RunError> {
    let settings: InventorySettings = config::load(&args.config, |k| std::env::var(k).ok())?;
    let runtime = process::runtime(1)?;

    let bootstrap = settings
        .bootstrap_products_file
        .as_ref()
        .map(check_bootstrap)
        .transpose()?;
    let access = admin::ControlAccess::from_file(settings.control_token_file.as_deref())
        .map_err(ProcessError::from)?;
    let savepoint = match &args.from_savepoint {
        None => None,
        Some(location) => {
            let loaded = runtime
                .block_on(savepoint::load(location))
                .map_err(EngineError::from)?;
            if loaded.pipeline != settings.pipeline {
                warn!(savepoint_pipeline = %loaded.pipeline, pipeline = %settings.pipeline,
                    "starting from a savepoint of another pipeline");
            }
            info!(savepoint = %loaded.id, %location, "savepoint verified");
            Some(loaded)
        }
    };

    let metrics = Metrics::new();
    let readiness = Readiness::new(api::NOT_READY);
    let status = engine::SharedStatus::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let api_state = api::ApiState {
        status: status.clone(),
        commands: tx,
        savepoints: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let control = admin::control_router(api::control_routes(api_state.clone()), access);
    let router = admin::router(
        readiness.clone(),
        metrics.registry.clone(),
        api::routes(api_state),
    );
    runtime
        .block_on(admin::serve_with_loopback(settings.admin_listen, router))
        .map_err(ProcessError::from)?;
    runtime
        .block_on(admin::serve_with_loopback(settings.control_listen, control))
        .map_err(ProcessError::from)?;

    // Kafka: inputs exist and are co-partitioned; then the owned topics are created.
    let client = kafka::client_config(&settings.kafka)?;
    let meta: BaseConsumer = client
        .create()
        .map_err(|e| RunError::Start(format!("Kafka client: {e}")))?;
    let t = &settings.topics;
    let partitions = topics::check_copartitioned(
        (
            &t.product_updates,
            topics::partition_count(&meta, &t.product_updates)?,
        ),
        (
            &t.order_events,
            topics::partition_count(&meta, &t.order_events)?,
        ),
    )?;
    if let Some(loaded) = &savepoint
        && loaded.partition_count != partitions
    {
        return Err(EngineError::SavepointPartitions {
            id: loaded.id.clone(),
            have: loaded.partition_count,
            want: partitions,
        }
        .into());
    }
    runtime.block_on(async {
        topics::ensure_topic(
            &client,
            &meta,
            &settings.changelog_topic(),
            partitions,
            &[("cleanup.policy", "compact")],
            true,
        )
        .await?;
        if settings.processing.create_topics {
            for topic in [
                &t.products,
                &t.inventory_events,
                &t.inventory_alerts,
                &t.websocket_fanout,
                &t.dlq,
            ] {
                let config: &[(&str, &str)] = if topic == &t.products {
                    &[("cleanup.policy", "compact")]
                } else {
                    &[]
                };
                topics::ensure_topic(&client, &meta, topic, partitions, config, false).await?;
            }
        }
        Ok::<_, TopicError>(())
    })?;
    drop(meta);

    // From here a SIGTERM lets the loop finish its transaction and leave the group.
    let shutdown = Shutdown::on_signals(runtime.handle());

    let setup = EngineSetup {
        settings,
        instance: process::instance_name(args.instance_id),
        partition_count: partitions,
        client,
        bootstrap,
        savepoint,
        metrics,
        status,
        readiness,
        shutdown,
        runtime: runtime.handle().clone(),
    };
    let result = process::run_on_thread("inventory-loop", move || engine::run(setup, rx))?;
    process::finish(runtime);
    result.map_err(RunError::from)
}
