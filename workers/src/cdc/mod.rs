//! The CDC role (`kartflow-worker cdc`): a PostgreSQL logical replication slot (pgoutput) into
//! Kafka, exactly once.
//!
//! Pure parts: [`mapping`] (row → order line / outbox event / DLQ record) and [`position`]
//! (source positions, what a restart skips, how the snapshot and the stream line up). Thin I/O:
//! [`source`] (SQL checks and the replication stream, `pg_walstream`), [`sink`] (the
//! transactional producer and the positions topic), [`snapshot`] and [`stream`] (the loops).
//! This file runs a capture session and restarts it with back-off after an error.
//!
//! See `docs/cdc-worker.md` for running it, its guarantees and PostgreSQL's prerequisites.

pub mod error;
pub mod mapping;
pub mod metrics;
pub mod position;
pub mod row;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use tracing::{error, info, warn};

use crate::kafka;
use crate::process::{self, Readiness, Shutdown, admin};
use error::CdcError;
use kartflow_wire::config::cdc::{CaptureMode, SnapshotMode};
use kartflow_wire::config::{self, CdcSettings};
use mapping::Mapper;
use metrics::Metrics;
use position::{SnapshotPlan, plan_snapshot};
use source::Credentials;
use stream::Capture;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The worker configuration file (JSON, rendered by the operator from a CdcSource).
    #[arg(long, env = "KARTFLOW_CONFIG")]
    pub config: PathBuf,
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that streamed this long resets the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

pub fn run(args: Args) -> Result<(), CdcError> {
    let settings: CdcSettings = config::load(&args.config, |k| std::env::var(k).ok())?;
    // Two threads: blocking Kafka calls run under block_in_place while the admin API answers.
    let runtime = process::runtime(2)?;
    let metrics = Metrics::new();
    let readiness = Readiness::new("not ready: connecting to PostgreSQL and Kafka");
    let router = admin::router(readiness.clone(), metrics.registry.clone(), Router::new());
    runtime
        .block_on(admin::serve_with_loopback(settings.admin_listen, router))
        .map_err(process::ProcessError::from)?;
    let shutdown = Shutdown::on_signals(runtime.handle());
    let result = runtime.block_on(supervise(&settings, &metrics, &readiness, &shutdown));
    process::finish(runtime);
    result
}

/// Runs capture sessions until shutdown; a failed session is retried with back-off (its error
/// on `/readyz`, in the log and in `kartflow_cdc_problem`), except errors no retry cures.
pub async fn supervise(
    settings: &CdcSettings,
    metrics: &Metrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> Result<(), CdcError> {
    let creds = Credentials::from_env();
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        let started = Instant::now();
        match session(settings, &creds, metrics, readiness, shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fatal() => {
                readiness.not_ready_because(e.to_string());
                return Err(e);
            }
            Err(e) => {
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff = BACKOFF_MIN;
                }
                metrics.set_problem(Some(e.problem()));
                metrics.reconnects.inc();
                readiness.not_ready_because(e.to_string());
                error!(error = %e, problem = e.problem(), retry_in_s = backoff.as_secs(), "capture stopped; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.requested() => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One capture session: check the slot and publication, read the position Kafka holds, take or
/// resume the snapshot if due, then stream.
#[tracing::instrument(skip_all, fields(source = %settings.source, slot = %settings.slot.name))]
async fn session(
    settings: &CdcSettings,
    creds: &Credentials,
    metrics: &Metrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> Result<(), CdcError> {
    let mut sql = source::connect_sql(settings, creds).await?;
    source::check_ownership(&sql, settings).await?;
    let client = kafka::client_config(&settings.kafka)?;
    let mapper = Mapper::new(&settings.capture);
    sink::prepare_topics(
        &client,
        settings,
        settings.capture.mode == CaptureMode::Table,
    )
    .await?;
    let mut sink = sink::Sink::connect(&client, settings)?;
    let stored = sink::read_position(&client, settings)?;
    let written = stored
        .lsn_value()
        .map_err(|e| CdcError::Position(e.to_string()))?;
    info!(position = ?stored, "position in Kafka");
    metrics.set_problem(None);
    let mut capture = Capture {
        settings,
        mapper: &mapper,
        sink: &mut sink,
        metrics,
        shutdown,
        outbox_ids: Vec::new(),
    };
    let plan = plan_snapshot(
        settings.snapshot_mode == SnapshotMode::Initial,
        settings.snapshot_nonce,
        &stored,
    );
    let snapshot_state = match plan {
        SnapshotPlan::None => stored.snapshot.clone(),
        SnapshotPlan::Fresh | SnapshotPlan::Resume(_) => {
            readiness.not_ready_because(format!("snapshot of {} running", mapper.table()));
            let resume = match plan {
                SnapshotPlan::Resume(s) => Some(s),
                _ => None,
            };
            let result = snapshot::run(&mut sql, settings, &mut capture, &stored, resume).await;
            if result.is_err() {
                capture.sink.abort();
            }
            Some(result?)
        }
    };
    let mut stream = source::open_stream(settings, creds).await?;
    let result = stream::run(
        &mut stream,
        &sql,
        &mut capture,
        written,
        snapshot_state,
        readiness,
    )
    .await;
    if result.is_err() {
        // Nothing of the open transaction was confirmed; PostgreSQL resends it.
        capture.sink.abort();
        if let Err(e) = stream.stop().await {
            warn!(error = %e, "stopping the replication stream");
        }
    }
    result
}
