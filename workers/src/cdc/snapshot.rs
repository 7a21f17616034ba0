//! The initial snapshot: the captured table's existing rows, read in chunks of its id column
//! inside one REPEATABLE READ transaction, each chunk one Kafka transaction with the snapshot's
//! progress. See [`super::position`] for how the snapshot and the stream line up.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use tracing::info;

use super::error::CdcError;
use super::mapping::{Commit, Mapper, quote_ident};
use super::position::{Position, SnapshotState};
use super::row::TextRow;
use super::stream::Capture;
use kartflow_wire::config::CdcSettings;

/// Runs (or resumes) the snapshot to its end; returns the finished state. `resume` keeps the
/// visibility of the first attempt: rows an interrupted snapshot already wrote stay filtered out
/// of the stream, and rows a later attempt reads may also be streamed (same eventIds).
pub async fn run(
    sql: &mut Client,
    settings: &CdcSettings,
    capture: &mut Capture<'_>,
    stored: &Position,
    resume: Option<SnapshotState>,
) -> Result<SnapshotState, CdcError> {
    let mapper: &Mapper = capture.mapper;
    let table = mapper.table().clone();
    let snap_err = |detail: String| CdcError::Snapshot {
        table: table.to_string(),
        detail,
    };
    let txn = sql
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| CdcError::sql("starting the snapshot transaction", &e))?;
    // The first statement takes the transaction's snapshot; record what it sees.
    let row = txn
        .query_one(
            "SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| CdcError::sql("reading the snapshot's visibility", &e))?;
    let mut state = resume.unwrap_or_else(|| SnapshotState {
        nonce: settings.snapshot_nonce,
        done: false,
        after_id: None,
        xids: row.get(0),
        wal_lsn: row.get(1),
    });
    let quoted = table.quoted();
    let columns: Vec<String> = txn
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&quoted],
        )
        .await
        .map_err(|e| CdcError::sql(format!("reading the columns of {table}"), &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let id = mapper.id_column().to_owned();
    if !columns.contains(&id) {
        return Err(snap_err(format!(
            "has no column {id} (the id column that orders the snapshot and makes eventIds)"
        )));
    }
    let id_type: String = txn
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attname = $2",
            &[&quoted, &id],
        )
        .await
        .map_err(|e| CdcError::sql(format!("reading the type of {table}.{id}"), &e))?
        .get(0);
    let estimate: i64 = txn
        .query_one(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::text::regclass",
            &[&quoted],
        )
        .await
        .map_err(|e| CdcError::sql("estimating the table size", &e))?
        .get(0);
    capture.metrics.snapshot_running.set(1);
    capture.metrics.snapshot_rows_estimate.set(estimate);
    // Columns are qualified: an output column `id::text` is also named `id`, and ORDER BY
    // would sort by it as text instead of by the typed id.
    let select = columns
        .iter()
        .map(|c| format!("t.{}::text", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let qid = quote_ident(&id);
    let query = format!(
        "SELECT {select} FROM {quoted} AS t \
         WHERE $1::text IS NULL OR t.{qid} > $1::text::{id_type} \
         ORDER BY t.{qid} LIMIT {}",
        settings.snapshot_chunk_rows
    );
    let statement = txn
        .prepare(&query)
        .await
        .map_err(|e| CdcError::sql(format!("preparing the snapshot query of {table}"), &e))?;
    let taken_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let commit = Commit {
        timestamp_ms: taken_at,
    };
    let id_index = columns.iter().position(|c| *c == id).unwrap_or_default();
    info!(%table, estimate, resume_after = ?state.after_id, "snapshot started");
    let mut total = 0u64;
    loop {
        let params: [&(dyn ToSql + Sync); 1] = [&state.after_id];
        let rows = txn
            .query(&statement, &params)
            .await
            .map_err(|e| CdcError::sql(format!("reading a snapshot chunk of {table}"), &e))?;
        let n = rows.len();
        for r in &rows {
            let row = TextRow(
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), r.get::<_, Option<String>>(i)))
                    .collect(),
            );
            capture.row(&row, commit, "snapshot").await?;
            if let Some(last) = r.get::<_, Option<String>>(id_index) {
                state.after_id = Some(last);
            }
        }
        total += n as u64;
        capture.metrics.snapshot_rows.inc_by(n as u64);
        state.done = n < settings.snapshot_chunk_rows as usize;
        capture.commit(&Position {
            lsn: stored.lsn.clone(),
            snapshot: Some(state.clone()),
        })?;
        info!(%table, rows = total, estimate, "snapshot progress");
        if state.done {
            break;
        }
        if capture.shutdown.is_requested() {
            return Err(snap_err(
                "interrupted by shutdown; it resumes at the next start".into(),
            ));
        }
    }
    txn.commit()
        .await
        .map_err(|e| CdcError::sql("ending the snapshot transaction", &e))?;
    capture.metrics.snapshot_running.set(0);
    info!(%table, rows = total, "snapshot finished");
    Ok(state)
}
