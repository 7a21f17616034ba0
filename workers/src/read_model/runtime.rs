//! The read replica process: configuration, the three topic readers on their own threads, the
//! admin API (`/healthz`, `/readyz`, `/metrics`) and the REST/WebSocket API, and an orderly exit.
//!
//! On SIGTERM the replica first reports not ready and keeps serving for `shutdownDelay`, so
//! Kubernetes takes it out of the Service before anything closes; then WebSocket clients get 1001
//! (going away), the readers stop and the process exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kartflow_wire::config::{self, ConfigError, ReadModelSettings};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use super::consume::{self, CatchUp, ConsumeError, Reader, StartAt};
use super::http::{self, Api};
use super::metrics::Metrics;
use super::record::Input;
use super::shared::Shared;
use super::view::Limits;
use super::ws::WsConfig;
use crate::kafka;
use crate::process::{self, ProcessError, Readiness, Shutdown, admin};

/// Command-line inputs of `kartflow-worker read-model`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The worker configuration file (JSON).
    #[arg(long, env = "KARTFLOW_CONFIG")]
    pub config: PathBuf,
    /// This replica's name in logs, client ids and `/stats`; the pod name on Kubernetes.
    #[arg(long, env = "POD_NAME")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    #[error("cannot start: {0}")]
    Process(#[from] ProcessError),
    #[error("cannot start: {0}")]
    Admin(#[from] admin::AdminError),
    #[error("cannot start a reader thread: {0}")]
    Thread(std::io::Error),
    #[error("a reader thread panicked (see the log above)")]
    ReaderPanicked,
}

fn duration(m: config::Millis) -> Duration {
    Duration::from_millis(m.0)
}

/// Runs the replica until SIGTERM/SIGINT or a reader fails.
pub fn run(args: Args) -> Result<(), RunError> {
    let settings: ReadModelSettings = config::load(&args.config, |k| std::env::var(k).ok())?;
    let instance = process::instance_name(args.instance_id);
    let client = consume::consumer_config(
        kafka::client_config(&settings.kafka)?,
        &format!("kartflow-read-model-{instance}"),
    );
    // Two workers: HTTP and WebSocket share them; the readers have their own threads.
    let runtime = process::runtime(2)?;

    let readiness = Readiness::new(
        "not ready: catching up with the end offsets captured at start (GET /stats shows progress)",
    );
    let metrics = Metrics::new();
    let v = &settings.view;
    let limits = Limits {
        events_per_product: v.recent_events_per_product as usize,
        alerts_per_product: v.recent_alerts_per_product as usize,
        recent_alerts: v.recent_alerts as usize,
        // Room for every queued product of a few slow clients between two of their wake-ups.
        change_log: (settings.websocket.queue_capacity as usize * 4).max(1 << 16),
    };
    let shared = Arc::new(Shared::new(limits, readiness.clone(), metrics.clone()));
    let stop = Shutdown::new();
    let ws = settings.websocket.enabled.then(|| {
        Arc::new(WsConfig {
            path: settings.websocket.path.clone(),
            max_connections: settings.websocket.max_connections as usize,
            queue_capacity: settings.websocket.queue_capacity as usize,
            ping_interval: duration(settings.websocket.ping_interval),
            send_timeout: duration(settings.websocket.send_timeout),
            closing: stop.clone(),
        })
    });
    let api = Api {
        shared: shared.clone(),
        ws,
        connections: Arc::new(Semaphore::new(settings.websocket.max_connections as usize)),
        read_model: Arc::from(settings.read_model.as_str()),
        instance: Arc::from(instance.as_str()),
    };
    let admin_router = admin::router(
        readiness.clone(),
        metrics.registry.clone(),
        axum::Router::new(),
    );
    let http_router = http::router(api);
    runtime.block_on(admin::serve_with_loopback(
        settings.admin_listen,
        admin_router,
    ))?;
    let bound = runtime.block_on(admin::serve_with_loopback(
        settings.http_listen,
        http_router,
    ))?;
    info!(read_model = %settings.read_model, %instance, http = %bound, "read replica started");
    let shutdown = Shutdown::on_signals(runtime.handle());

    let window_start = consume::now_ms() - settings.view.history_window.as_i64();
    let t = &settings.topics;
    let partition_check = duration(settings.partition_check_interval);
    // `products` is the bulk of a restore: one reader per core (at most 4), each with its own
    // share of the partitions, so decoding runs in parallel. History topics are small.
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let mut readers: Vec<Reader> = (0..shards)
        .map(|index| Reader {
            input: Input::Products,
            topic: t.products.clone(),
            start: StartAt::Beginning,
            required: true,
            partition_check,
            shard: (index, shards),
        })
        .collect();
    for (input, topic) in [
        (Input::Events, &t.inventory_events),
        (Input::Alerts, &t.inventory_alerts),
    ] {
        readers.push(Reader {
            input,
            topic: topic.clone(),
            start: StartAt::Since(window_start),
            required: false,
            partition_check,
            shard: (0, 1),
        });
    }
    let catch_up = Arc::new(CatchUp::new(readers.len()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Result<(), ConsumeError>)>();
    let mut threads = Vec::new();
    for reader in readers {
        let (client, shared, catch_up, stop, done) = (
            client.clone(),
            shared.clone(),
            catch_up.clone(),
            stop.clone(),
            done_tx.clone(),
        );
        let name = format!("read-{}-{}", reader.input.as_str(), reader.shard.0);
        let topic = reader.topic.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let result = reader.run(&client, &shared, &catch_up, &stop);
                let _ = done.send((topic, result));
            })
            .map_err(RunError::Thread)?;
        threads.push(handle);
    }
    drop(done_tx);

    let delay = duration(settings.shutdown_delay);
    let failure = runtime.block_on(async {
        let failure = tokio::select! {
            _ = shutdown.requested() => None,
            done = done_rx.recv() => match done {
                Some((topic, Err(e))) => Some((topic, e)),
                // A reader returns Ok only after `stop`, which nothing requested yet.
                Some((topic, Ok(()))) => {
                    warn!(%topic, "reader stopped unexpectedly");
                    None
                }
                None => None,
            },
        };
        if failure.is_none() {
            // Leave the Service first: readiness false, keep serving while endpoints update.
            shared.leave_service();
            info!(
                delay_ms = delay.as_millis() as u64,
                "shutting down: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
        }
        stop.request();
        // WebSocket clients close with 1001; give them a moment to receive it.
        let closing = tokio::time::Instant::now() + Duration::from_secs(2);
        while metrics.ws_clients.get() > 0 && tokio::time::Instant::now() < closing {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        failure
    });
    stop.request();
    let mut panicked = false;
    for t in threads {
        panicked |= t.join().is_err();
    }
    process::finish(runtime);
    if let Some((topic, e)) = failure {
        warn!(%topic, error = %e, "reader failed");
        return Err(e.into());
    }
    if panicked {
        return Err(RunError::ReaderPanicked);
    }
    info!("read replica stopped");
    Ok(())
}
