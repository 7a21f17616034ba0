//! The streaming loop: decoded changes in, Kafka transactions out, positions confirmed to
//! PostgreSQL only once Kafka committed them.
//!
//! Batching: rows go into the open Kafka transaction as they arrive (the producer's bounded queue
//! is the only buffer). A Kafka transaction is committed at a PostgreSQL commit once it holds
//! `maxBatchRecords` records or is `maxBatchDelay` old, or when the stream goes quiet; it always
//! holds whole PostgreSQL transactions and the end LSN of the last one, so a restart resumes
//! exactly after it.
//!
//! Idle slots: when nothing read is waiting for Kafka, the worker confirms what the server last
//! reported as sent (its keepalive `wal_end`), so a slot whose tables are quiet does not retain
//! the WAL other tables or databases write.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pg_walstream::{EventType, LogicalReplicationStream};
use tokio::time::Instant;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::error::CdcError;
use super::mapping::{Commit, quote_ident};
use super::mapping::{DlqRecord, Mapped, Mapper, RejectReason, Rejected};
use super::metrics::Metrics;
use super::position::{Position, SnapshotFilter, SnapshotState, already_written, format_lsn};
use super::row::Row;
use super::sink::Sink;
use super::source;
use crate::process::{Readiness, Shutdown};
use kartflow_wire::config::CdcSettings;
use kartflow_wire::config::cdc::CaptureMode;

/// How often the loop wakes when the stream is quiet (shutdown, lag, heartbeats).
const TICK: Duration = Duration::from_millis(500);
/// How often the server's WAL end is read for the lag metric and readiness.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Rows into records into the open Kafka transaction: shared by the snapshot and the stream.
pub struct Capture<'a> {
    pub settings: &'a CdcSettings,
    pub mapper: &'a Mapper,
    pub sink: &'a mut Sink,
    pub metrics: &'a Metrics,
    pub shutdown: &'a Shutdown,
    /// Outbox ids in the open transaction, deleted after it commits (`deleteAfterCapture`).
    pub outbox_ids: Vec<String>,
}

impl Capture<'_> {
    /// Maps one inserted row of the captured table into the open transaction, or its DLQ record.
    pub async fn row(&mut self, row: &impl Row, commit: Commit, lsn: &str) -> Result<(), CdcError> {
        let table = self.mapper.table().to_string();
        let rejected = match self.mapper.map_insert(row, commit) {
            Mapped::Record(record) => match self.sink.resolve(&record.destination)? {
                Some(topic) => {
                    self.sink.send(&topic, &record).await?;
                    self.metrics.rows.with_label_values(&[&table]).inc();
                    self.metrics
                        .bytes
                        .inc_by(record.value.as_ref().map_or(0, |v| v.len() as u64));
                    if self.mapper.mode() == CaptureMode::Outbox
                        && self.mapper.outbox().delete_after_capture
                    {
                        self.outbox_ids.push(record.event_id.clone());
                    }
                    return Ok(());
                }
                None => Rejected {
                    reason: RejectReason::BadTopic,
                    detail: format!(
                        "the row routes to a topic that does not exist: create it (it was {:?})",
                        record.destination
                    ),
                },
            },
            Mapped::Reject(r) => r,
        };
        warn!(%table, lsn, reason = rejected.reason.label(), detail = %rejected.detail, "row sent to the DLQ");
        self.metrics
            .dlq
            .with_label_values(&[rejected.reason.label()])
            .inc();
        let dlq = DlqRecord::new(&self.settings.source, &table, lsn.to_owned(), rejected, row);
        self.sink.send_dlq(&table, &dlq.to_json()).await
    }

    /// Commits the open Kafka transaction with `position`.
    pub fn commit(&mut self, position: &Position) -> Result<(), CdcError> {
        let (open, call) = self.sink.commit(position)?;
        self.metrics.kafka_txn_seconds.observe(open.as_secs_f64());
        self.metrics
            .kafka_commit_seconds
            .observe(call.as_secs_f64());
        Ok(())
    }
}

/// Where the stream stands.
struct Progress {
    /// End LSN of the last PostgreSQL transaction in Kafka.
    written: u64,
    /// Inside a PostgreSQL transaction (between Begin and Commit).
    in_txn: bool,
    /// The current transaction is already in Kafka (or in the snapshot): its rows are skipped.
    skip: bool,
    /// Commit LSN and time of the current transaction.
    commit_lsn: u64,
    commit_ms: i64,
    /// End LSN of the last transaction added to the open Kafka transaction.
    batch_end: Option<u64>,
    batch_txns: u64,
    confirmed: u64,
}

/// Streams until shutdown or an error.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    stream: &mut LogicalReplicationStream,
    sql: &Client,
    capture: &mut Capture<'_>,
    written: u64,
    snapshot: Option<SnapshotState>,
    readiness: &Readiness,
) -> Result<(), CdcError> {
    let filter = snapshot
        .as_ref()
        .map(SnapshotFilter::from_state)
        .transpose()
        .map_err(CdcError::Position)?;
    let settings = capture.settings;
    let mut p = Progress {
        written,
        in_txn: false,
        skip: false,
        commit_lsn: 0,
        commit_ms: 0,
        batch_end: None,
        batch_txns: 0,
        confirmed: 0,
    };
    if written > 0 {
        confirm(stream, capture.metrics, &mut p, written);
    }
    let max_delay = Duration::from_millis(settings.max_batch_delay.0);
    let heartbeat = Duration::from_millis(settings.heartbeat_interval.0);
    let mut last_feedback = Instant::now();
    let mut last_lag = Instant::now() - LAG_EVERY;
    info!(slot = %settings.slot.name, resume_after = %format_lsn(written), "streaming");
    loop {
        if last_lag.elapsed() >= LAG_EVERY {
            let end = source::current_wal_lsn(sql).await?;
            let lag = end.saturating_sub(p.confirmed);
            capture
                .metrics
                .lag_bytes
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            if lag <= settings.ready_lag_bytes {
                readiness.set(true);
            } else {
                readiness.not_ready_because(format!(
                    "catching up: {lag} bytes of WAL behind (ready within {} bytes)",
                    settings.ready_lag_bytes
                ));
            }
            last_lag = Instant::now();
        }
        let now = Instant::now();
        let deadline = match capture.sink.started() {
            Some(started) if !p.in_txn => Instant::from_std(started + max_delay).min(now + TICK),
            _ => now + TICK,
        };
        let event = source::next_event_until(stream, deadline).await?;
        let Some(event) = event else {
            // Quiet: commit a waiting batch, confirm what the server sent, report lag.
            if !p.in_txn && capture.sink.is_open() {
                flush(stream, capture, &mut p, &snapshot)?;
                if let Some(sql_ids) = take_outbox_ids(capture) {
                    delete_outbox_rows(sql, capture.mapper, &sql_ids).await?;
                }
            }
            if !p.in_txn && !capture.sink.is_open() {
                // Nothing read waits for Kafka: everything the server sent is captured.
                let sent = stream.current_lsn();
                confirm(stream, capture.metrics, &mut p, sent);
                capture.metrics.lag_seconds.set(0.0);
            }
            if last_feedback.elapsed() >= heartbeat {
                stream.send_feedback().await?;
                last_feedback = Instant::now();
            }
            if capture.shutdown.is_requested() && !p.in_txn {
                if capture.sink.is_open() {
                    flush(stream, capture, &mut p, &snapshot)?;
                }
                stream.send_feedback().await?;
                info!(confirmed = %format_lsn(p.confirmed), "stopped streaming");
                return Ok(());
            }
            continue;
        };
        match event.event_type {
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => {
                p.in_txn = true;
                p.commit_lsn = final_lsn.value();
                p.commit_ms = commit_timestamp.timestamp_millis();
                p.skip = already_written(p.commit_lsn, p.written)
                    || filter
                        .as_ref()
                        .is_some_and(|f| f.contains(transaction_id, p.commit_lsn));
                if p.skip {
                    debug!(xid = transaction_id, lsn = %format_lsn(p.commit_lsn), "skipping a transaction Kafka already holds");
                }
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } if !p.skip && capture.mapper.captures(&schema, &table) => {
                let lsn = format_lsn(p.commit_lsn);
                capture
                    .row(
                        &data,
                        Commit {
                            timestamp_ms: p.commit_ms,
                        },
                        &lsn,
                    )
                    .await?;
            }
            EventType::Commit { end_lsn, .. } => {
                p.in_txn = false;
                let end = end_lsn.value();
                if !p.skip {
                    let lag_s = now_ms().saturating_sub(p.commit_ms) as f64 / 1000.0;
                    capture.metrics.lag_seconds.set(lag_s.max(0.0));
                }
                if capture.sink.is_open() {
                    if !p.skip {
                        p.batch_end = Some(end);
                        p.batch_txns += 1;
                    }
                    let (records, _) = capture.sink.pending();
                    let old = capture
                        .sink
                        .started()
                        .is_some_and(|s| s.elapsed() >= max_delay);
                    if records >= settings.max_batch_records as usize || old {
                        flush(stream, capture, &mut p, &snapshot)?;
                        if let Some(ids) = take_outbox_ids(capture) {
                            delete_outbox_rows(sql, capture.mapper, &ids).await?;
                        }
                    }
                } else {
                    // Nothing of this transaction (or before it) waits for Kafka.
                    confirm(stream, capture.metrics, &mut p, end);
                }
                // A backlog never goes quiet: stop between transactions here too.
                if capture.shutdown.is_requested() {
                    if capture.sink.is_open() {
                        flush(stream, capture, &mut p, &snapshot)?;
                    }
                    stream.send_feedback().await?;
                    info!(confirmed = %format_lsn(p.confirmed), "stopped streaming");
                    return Ok(());
                }
            }
            EventType::Relation {
                namespace,
                relation_name,
                columns,
                ..
            } => {
                // The decoder keeps the relation cache; rows are read by column name, so a
                // column added or reordered at run time needs no restart.
                debug!(%namespace, %relation_name, columns = columns.len(), "relation");
            }
            _ => {}
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Commits the open Kafka transaction with the position it reaches, then confirms it.
fn flush(
    stream: &mut LogicalReplicationStream,
    capture: &mut Capture<'_>,
    p: &mut Progress,
    snapshot: &Option<SnapshotState>,
) -> Result<(), CdcError> {
    let end = p.batch_end.unwrap_or(p.written).max(p.written);
    capture.commit(&Position {
        lsn: (end > 0).then(|| format_lsn(end)),
        snapshot: snapshot.clone(),
    })?;
    capture.metrics.transactions.inc_by(p.batch_txns);
    p.written = end;
    p.batch_end = None;
    p.batch_txns = 0;
    confirm(stream, capture.metrics, p, end);
    Ok(())
}

/// Tells PostgreSQL everything up to `lsn` is durable (the next status update carries it).
fn confirm(stream: &LogicalReplicationStream, metrics: &Metrics, p: &mut Progress, lsn: u64) {
    if lsn > p.confirmed {
        stream.shared_lsn_feedback.update_flushed_lsn(lsn);
        stream.shared_lsn_feedback.update_applied_lsn(lsn);
        p.confirmed = lsn;
        metrics
            .confirmed_lsn
            .set(i64::try_from(lsn).unwrap_or(i64::MAX));
    }
}

fn take_outbox_ids(capture: &mut Capture<'_>) -> Option<Vec<String>> {
    (!capture.outbox_ids.is_empty()).then(|| std::mem::take(&mut capture.outbox_ids))
}

/// `deleteAfterCapture`: removes outbox rows Kafka committed. Their DELETEs stream back and are
/// ignored (only INSERTs are captured).
async fn delete_outbox_rows(sql: &Client, mapper: &Mapper, ids: &[String]) -> Result<(), CdcError> {
    let table = mapper.table();
    let id = quote_ident(mapper.id_column());
    let query = format!(
        "DELETE FROM {} WHERE {id}::text = ANY($1::text[])",
        table.quoted()
    );
    sql.execute(&query, &[&ids])
        .await
        .map_err(|e| CdcError::sql(format!("deleting captured rows from {table}"), &e))?;
    Ok(())
}
