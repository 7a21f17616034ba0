//! The inventory worker process: configuration, start-up checks, the exactly-once loop on its own
//! thread, and the admin API on a small tokio runtime.

pub mod api;
pub mod changelog;
pub mod engine;
pub mod metrics;
pub mod savepoint;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::BaseConsumer;
use thiserror::Error;
use tracing::{error, info, warn};

use crate::inventory::decode_bootstrap_file;
use crate::kafka;
use crate::kafka::topics::{self, TopicError};
use engine::{BootstrapFile, EngineError, EngineSetup, Shared};
use kartflow_wire::config::{self, ConfigError, InventorySettings};
use metrics::Metrics;

/// Command-line inputs of `kartflow-worker inventory`.
#[derive(Debug, Clone)]
pub struct Args {
    pub config: PathBuf,
    pub from_savepoint: Option<String>,
    pub instance: String,
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
}

fn load_bootstrap(path: &PathBuf) -> Result<BootstrapFile, RunError> {
    let bad = |detail: String| RunError::Bootstrap {
        path: path.clone(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let hash = savepoint::sha256_hex(&bytes);
    let records = decode_bootstrap_file(&bytes).map_err(|e| bad(e.to_string()))?;
    let rejected = records.iter().filter(|r| r.is_err()).count();
    info!(path = %path.display(), records = records.len(), rejected, %hash, "bootstrap file read");
    Ok(BootstrapFile { hash, records })
}

/// Runs the worker until SIGTERM/SIGINT or a savepoint with `stop`.
pub fn run(args: Args) -> Result<(), RunError> {
    let settings: InventorySettings = config::load(&args.config, |k| std::env::var(k).ok())?;
    let client = kafka::client_config(&settings.kafka)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| RunError::Start(format!("tokio runtime: {e}")))?;

    // Start-up checks: inputs exist and are co-partitioned; owned topics exist.
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

    let bootstrap = settings
        .bootstrap_products_file
        .as_ref()
        .map(load_bootstrap)
        .transpose()?;
    let savepoint = match &args.from_savepoint {
        None => None,
        Some(location) => {
            let loaded = runtime
                .block_on(savepoint::load(location))
                .map_err(EngineError::from)?;
            if loaded.partition_count != partitions {
                return Err(EngineError::SavepointPartitions {
                    id: loaded.id,
                    have: loaded.partition_count,
                    want: partitions,
                }
                .into());
            }
            if loaded.pipeline != settings.pipeline {
                warn!(savepoint_pipeline = %loaded.pipeline, pipeline = %settings.pipeline,
                    "starting from a savepoint of another pipeline");
            }
            info!(savepoint = %loaded.id, %location, "savepoint verified");
            Some(loaded)
        }
    };

    let metrics = Metrics::new();
    let shared = Arc::new(Shared::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let api_state = api::ApiState {
        shared: shared.clone(),
        metrics: metrics.clone(),
        commands: tx,
        savepoints: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(settings.admin_listen))
        .map_err(|e| RunError::Start(format!("admin API on {}: {e}", settings.admin_listen)))?;
    info!(listen = %settings.admin_listen, "admin API listening");
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, api::router(api_state)).await {
            error!(error = %e, "admin API stopped");
        }
    });
    let stop_flag = shared.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: finishing the transaction and leaving the group");
        stop_flag.stopping.store(true, Ordering::Relaxed);
    });

    let setup = EngineSetup {
        settings,
        instance: args.instance,
        partition_count: partitions,
        client,
        bootstrap,
        savepoint,
        metrics,
        shared,
        runtime: runtime.handle().clone(),
    };
    let engine = std::thread::Builder::new()
        .name("inventory-loop".into())
        .spawn(move || engine::run(setup, rx))
        .map_err(|e| RunError::Start(format!("processing thread: {e}")))?;
    let result = engine
        .join()
        .map_err(|_| RunError::Start("the processing thread panicked".into()))?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result.map_err(RunError::from)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
