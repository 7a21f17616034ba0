//! The guard's few statements against PostgreSQL (14 or later), each with an error that says what
//! was attempted, where, and what to check. TLS follows `spec.postgres.sslMode`
//! (`kartflow_wire::pg_tls`, rustls).

use std::time::Duration;

use jiff::Timestamp;
use kartflow_wire::pg_tls::{self, ConnectError, TlsError};
use thiserror::Error;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::policy::{OpenTransaction, SlotReading};
use crate::crd::cdc_source::SslMode;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A guard check must not hang on a stuck server; slot creation waits for running
/// transactions, so this stays generous.
const STATEMENT_TIMEOUT_MS: u32 = 60_000;
/// `pg_terminate_backend` waits this long for the reader to exit and release the slot.
const TERMINATE_WAIT_MS: i64 = 5_000;
/// Drop attempts while readers keep reconnecting to the slot.
pub const MAX_DROP_ATTEMPTS: u32 = 5;
const DROP_RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum GuardError {
    #[error("spec.postgres.caCert: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to PostgreSQL at {endpoint}: {detail}; {hint}")]
    Connect {
        endpoint: String,
        detail: String,
        hint: &'static str,
        source: Option<tokio_postgres::Error>,
    },
    #[error("{action} at {endpoint}: {detail}{}", hint_suffix(.hint))]
    Query {
        action: String,
        endpoint: String,
        detail: String,
        hint: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "spec.publication.tables is empty: list the tables (schema.table) publication {publication} \
         should publish, or create the publication yourself and set spec.publication.create false"
    )]
    NoTables { publication: String },
    #[error("spec.publication.tables: {table:?} is not a table name: use schema.table or table")]
    BadTableName { table: String },
    #[error(
        "replication slot {slot} exists but is {found}, not a pgoutput slot of database \
         {database}: use another spec.slot.name"
    )]
    SlotMismatch {
        slot: String,
        found: String,
        database: String,
    },
    #[error(
        "replication slot {slot} is still in use after {attempts} drop attempts: a reader keeps \
         reconnecting (last pid {last_pid:?}); stop it and the guard drops the slot at its next check"
    )]
    SlotBusy {
        slot: String,
        attempts: u32,
        last_pid: Option<i32>,
    },
}

impl GuardError {
    /// Only a change of the spec can fix this (the TLS mode, the tables, the slot's name).
    pub fn is_spec_error(&self) -> bool {
        matches!(
            self,
            GuardError::Tls(_)
                | GuardError::NoTables { .. }
                | GuardError::BadTableName { .. }
                | GuardError::SlotMismatch { .. }
        )
    }

    /// The connection is gone: reconnect before the next check.
    pub fn is_connection_closed(&self) -> bool {
        match self {
            GuardError::Query { source, .. } => source.is_closed(),
            GuardError::Connect { .. } => true,
            _ => false,
        }
    }

    pub fn code(&self) -> Option<&SqlState> {
        match self {
            GuardError::Query { source, .. } => source.code(),
            GuardError::Connect { source, .. } => source.as_ref().and_then(|e| e.code()),
            _ => None,
        }
    }
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

/// tokio-postgres shows a server error as just "db error": spell out what the server said.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(&format!(": {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!(" (hint: {hint})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn connect_hint(e: &tokio_postgres::Error) -> &'static str {
    let code = e.code();
    if code == Some(&SqlState::INVALID_PASSWORD) {
        "check the username and password in spec.postgres.credentialsSecretRef"
    } else if code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        "check the role in spec.postgres.credentialsSecretRef exists, may log in, and that \
         pg_hba.conf admits it from the operator's address"
    } else if code == Some(&SqlState::INVALID_CATALOG_NAME) {
        "check spec.postgres.database names an existing database"
    } else if code == Some(&SqlState::TOO_MANY_CONNECTIONS) {
        "the server has no free connection slots: raise max_connections or close idle clients"
    } else if code == Some(&SqlState::CANNOT_CONNECT_NOW) {
        "the server is starting up or shutting down: the guard retries at its next check"
    } else if e.as_db_error().is_some() {
        "check the credentials and pg_hba.conf"
    } else {
        "check spec.postgres.host and port, that PostgreSQL listens there and that the \
         operator's network reaches it"
    }
}

fn query_hint(e: &tokio_postgres::Error) -> &'static str {
    let code = e.code();
    if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        "the role needs REPLICATION (slots), pg_signal_backend (to end a reader), pg_monitor \
         (slot statistics) and ownership of the published tables"
    } else if code == Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED) {
        "all replication slots are in use: raise max_replication_slots or drop unused slots"
    } else if code == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) {
        "logical replication needs wal_level = logical on the server"
    } else if code == Some(&SqlState::UNDEFINED_TABLE)
        || code == Some(&SqlState::INVALID_SCHEMA_NAME)
    {
        "check every table in spec.publication.tables exists"
    } else if code == Some(&SqlState::QUERY_CANCELED) {
        "the statement timed out: the server may be overloaded or a long transaction is open"
    } else if e.is_closed() {
        "the connection was lost: the guard reconnects at its next check"
    } else {
        ""
    }
}

/// A connection to the database of one `CdcSource`.
pub struct Db {
    client: Client,
    endpoint: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Db {
    /// `host:port/database`, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The connection is gone: connect again.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The underlying client, for statements the guard does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn query_error(&self, action: impl Into<String>, source: tokio_postgres::Error) -> GuardError {
        GuardError::Query {
            action: action.into(),
            endpoint: self.endpoint.clone(),
            detail: describe(&source),
            hint: query_hint(&source),
            source,
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub ssl_mode: SslMode,
    /// PEM CA certificates for `verify-ca` / `verify-full` (and `require`, which then verifies
    /// the chain).
    pub ca_pem: Option<&'a [u8]>,
    /// Shown in `pg_stat_activity.application_name` (PostgreSQL keeps 63 bytes).
    pub application_name: &'a str,
}

/// Connects with libpq's `sslmode` semantics (see [`kartflow_wire::pg_tls`]). The connection task runs on
/// the current tokio runtime and ends when the [`Db`] is dropped.
pub async fn connect(target: &Target<'_>) -> Result<Db, GuardError> {
    let &Target {
        host,
        port,
        database,
        user,
        password,
        ssl_mode,
        ca_pem,
        application_name,
    } = target;
    let endpoint = format!("{host}:{port}/{database}");
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .dbname(database)
        .user(user)
        .password(password)
        .application_name(application_name)
        .connect_timeout(CONNECT_TIMEOUT)
        .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    // connect_timeout bounds each TCP attempt; this bounds the whole handshake.
    let handshake = pg_tls::connect(&mut config, ssl_mode, ca_pem);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT * 2, handshake).await;
    let (client, connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(ConnectError::Tls(e))) => return Err(e.into()),
        Ok(Err(ConnectError::Postgres(e))) => {
            return Err(GuardError::Connect {
                endpoint,
                detail: describe(&e),
                hint: connect_hint(&e),
                source: Some(e),
            });
        }
        Err(_) => {
            return Err(GuardError::Connect {
                endpoint,
                detail: format!("no answer within {}s", (CONNECT_TIMEOUT * 2).as_secs()),
                hint: "check spec.postgres.host and port and that the operator's network reaches \
                       them",
                source: None,
            });
        }
    };
    let task_endpoint = endpoint.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(endpoint = %task_endpoint, error = %describe(&e), "slot guard connection to PostgreSQL closed");
        }
    });
    Ok(Db { client, endpoint })
}

/// Reads one slot. `inactive_since` is what the previous reading of this slot returned: before
/// PostgreSQL 17 the server does not say how long a slot has had no reader, so the caller keeps
/// it in memory (a reader seen between checks does not reset it; an operator restart does).
pub async fn read_slot(
    db: &Db,
    slot_name: &str,
    inactive_since: Option<Timestamp>,
) -> Result<SlotReading, GuardError> {
    // to_jsonb lets one statement read PostgreSQL 17's inactive_since where it exists.
    let row = db
        .client
        .query_opt(
            "SELECT s.active, s.active_pid, s.wal_status, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
                    s.safe_wal_size, s.confirmed_flush_lsn::text, \
                    (extract(epoch FROM (to_jsonb(s) ->> 'inactive_since')::timestamptz) \
                     * 1000000)::bigint, \
                    pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot_name],
        )
        .await
        .map_err(|e| db.query_error(format!("reading replication slot {slot_name}"), e))?;
    let Some(row) = row else {
        return Ok(SlotReading::missing(slot_name));
    };
    let decode = |e| db.query_error(format!("decoding replication slot {slot_name}"), e);
    let active: bool = row.try_get(0).map_err(decode)?;
    let server_inactive_since: Option<i64> = row.try_get(6).map_err(decode)?;
    let inactive_since = if active {
        None
    } else {
        server_inactive_since
            .and_then(|us| Timestamp::from_microsecond(us).ok())
            .or(inactive_since)
            .or_else(|| Some(Timestamp::now()))
    };
    Ok(SlotReading {
        slot_name: slot_name.to_owned(),
        exists: true,
        active,
        active_pid: row.try_get(1).map_err(decode)?,
        wal_status: row.try_get(2).map_err(decode)?,
        retained_bytes: row.try_get(3).map_err(decode)?,
        safe_wal_size: row.try_get(4).map_err(decode)?,
        confirmed_flush_lsn: row.try_get(5).map_err(decode)?,
        confirmed_position: row.try_get(7).map_err(decode)?,
        confirmed_lag_bytes: row.try_get(8).map_err(decode)?,
        confirmed_unchanged_since: None,
        inactive_since,
        oldest_transaction: oldest_transaction(db).await?,
    })
}

/// The oldest open transaction that has written WAL (it has an xid): logical decoding must
/// keep WAL from its start, so it is what holds a slot's restart position back.
async fn oldest_transaction(db: &Db) -> Result<Option<OpenTransaction>, GuardError> {
    let row = db
        .client
        .query_opt(
            "SELECT pid, (extract(epoch FROM now() - xact_start) * 1000)::bigint \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND xact_start IS NOT NULL \
               AND pid <> pg_backend_pid() \
             ORDER BY xact_start LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| db.query_error("reading the oldest open transaction", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let decode = |e| db.query_error("decoding the oldest open transaction", e);
    let pid: i32 = row.try_get(0).map_err(decode)?;
    let ms: Option<i64> = row.try_get(1).map_err(decode)?;
    Ok(Some(OpenTransaction {
        pid,
        age: Duration::from_millis(ms.and_then(|m| u64::try_from(m).ok()).unwrap_or(0)),
    }))
}

/// `"name"`, doubling embedded quotes: names are taken literally (case-sensitive).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, each part quoted.
fn quote_table(table: &str) -> Result<String, GuardError> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.contains('\0')) {
        return Err(GuardError::BadTableName {
            table: table.to_owned(),
        });
    }
    Ok(parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join("."))
}

/// Creates the publication `FOR TABLE tables` unless one of that name exists (its tables are
/// then left alone). Returns whether it was created.
pub async fn ensure_publication<S: AsRef<str>>(
    db: &Db,
    name: &str,
    tables: &[S],
) -> Result<bool, GuardError> {
    if tables.is_empty() {
        return Err(GuardError::NoTables {
            publication: name.to_owned(),
        });
    }
    let quoted = tables
        .iter()
        .map(|t| quote_table(t.as_ref()))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    let action = || format!("creating publication {name}");
    let exists = db
        .client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| db.query_error(action(), e))?
        .is_some();
    if exists {
        return Ok(false);
    }
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {quoted}",
        quote_ident(name)
    );
    match db.client.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        // Created concurrently since the check.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(db.query_error(action(), e)),
    }
}

/// Drops the publication if it exists; returns whether it did.
pub async fn drop_publication(db: &Db, name: &str) -> Result<bool, GuardError> {
    let action = || format!("dropping publication {name}");
    let exists = db
        .client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| db.query_error(action(), e))?
        .is_some();
    db.client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| db.query_error(action(), e))?;
    Ok(exists)
}

/// Creates a `pgoutput` logical slot in the connected database unless it exists. Returns whether
/// it was created; a same-named slot of another kind or database is an error, never reused.
pub async fn ensure_slot(db: &Db, name: &str) -> Result<bool, GuardError> {
    let action = || format!("creating replication slot {name}");
    let existing = db
        .client
        .query_opt(
            "SELECT s.slot_type, s.plugin, s.database, current_database()::text \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| db.query_error(action(), e))?;
    if let Some(row) = existing {
        let decode = |e| db.query_error(action(), e);
        let kind: String = row.try_get(0).map_err(decode)?;
        let plugin: Option<String> = row.try_get(1).map_err(decode)?;
        let database: Option<String> = row.try_get(2).map_err(decode)?;
        let current: String = row.try_get(3).map_err(decode)?;
        if kind == "logical"
            && plugin.as_deref() == Some("pgoutput")
            && database.as_deref() == Some(current.as_str())
        {
            return Ok(false);
        }
        return Err(GuardError::SlotMismatch {
            slot: name.to_owned(),
            found: match (kind.as_str(), plugin, database) {
                ("logical", Some(p), Some(d)) => {
                    format!("a logical slot of plugin {p} in database {d}")
                }
                (k, _, _) => format!("a {k} slot"),
            },
            database: current,
        });
    }
    match db
        .client
        .query_one(
            "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(db.query_error(action(), e)),
    }
}

/// What a drop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropOutcome {
    /// False when the slot was already gone.
    pub dropped: bool,
    /// Retained WAL just before the drop; none when unknown (gone or lost).
    pub retained_bytes: Option<i64>,
    /// Readers terminated to free the slot.
    pub terminated: u32,
    pub attempts: u32,
}

/// Drops the slot, first terminating `terminate_pid` if it still holds it. A reader that
/// reconnects before the drop (`object_in_use`) is terminated too and the drop retried, up to
/// [`MAX_DROP_ATTEMPTS`]. A slot that is already gone is success.
pub async fn drop_slot(
    db: &Db,
    slot_name: &str,
    terminate_pid: Option<i32>,
) -> Result<DropOutcome, GuardError> {
    let action = || format!("dropping replication slot {slot_name}");
    let mut outcome = DropOutcome {
        dropped: false,
        retained_bytes: None,
        terminated: 0,
        attempts: 0,
    };
    if terminate_pid.is_some() {
        // Only while it still holds the slot: a pid from an older reading may belong to anyone now.
        outcome.terminated += terminate_holder(db, slot_name, terminate_pid).await?.0;
    }
    let mut last_pid = terminate_pid;
    while outcome.attempts < MAX_DROP_ATTEMPTS {
        outcome.attempts += 1;
        let measured = db
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot_name],
            )
            .await
            .map_err(|e| db.query_error(action(), e))?;
        let Some(row) = measured else {
            return Ok(outcome);
        };
        outcome.retained_bytes = row.try_get(0).map_err(|e| db.query_error(action(), e))?;
        match db
            .client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot_name])
            .await
        {
            Ok(_) => {
                outcome.dropped = true;
                return Ok(outcome);
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(outcome),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                let (ended, holder) = terminate_holder(db, slot_name, None).await?;
                outcome.terminated += ended;
                last_pid = holder.or(last_pid);
                tracing::info!(
                    slot = slot_name,
                    attempt = outcome.attempts,
                    pid = ?holder,
                    "slot was in use at drop time: terminated its reader, retrying"
                );
                if outcome.attempts == MAX_DROP_ATTEMPTS {
                    break;
                }
                tokio::time::sleep(DROP_RETRY_PAUSE * outcome.attempts).await;
            }
            Err(e) => return Err(db.query_error(action(), e)),
        }
    }
    Err(GuardError::SlotBusy {
        slot: slot_name.to_owned(),
        attempts: outcome.attempts,
        last_pid,
    })
}

/// Terminates the backend holding the slot (only if it is `pid`, when given) and waits for it
/// to exit. Returns how many were terminated and the holder's pid.
async fn terminate_holder(
    db: &Db,
    slot_name: &str,
    pid: Option<i32>,
) -> Result<(u32, Option<i32>), GuardError> {
    let rows = db
        .client
        .query(
            "SELECT active_pid, pg_terminate_backend(active_pid, $3) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL \
               AND ($2::int4 IS NULL OR active_pid = $2)",
            &[&slot_name, &pid, &TERMINATE_WAIT_MS],
        )
        .await
        .map_err(|e| db.query_error(format!("terminating the reader of slot {slot_name}"), e))?;
    let holder = rows.iter().find_map(|r| r.try_get(0).ok());
    let ended = rows
        .iter()
        .filter(|r| r.try_get::<_, bool>(1).unwrap_or(false))
        .count();
    Ok((u32::try_from(ended).unwrap_or(u32::MAX), holder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(
            quote_table("public.Order Items").ok(),
            Some("\"public\".\"Order Items\"".to_owned())
        );
        assert_eq!(quote_table("t").ok(), Some("\"t\"".to_owned()));
        for bad in ["", ".t", "s.", "a\0b", "a.b.c"] {
            assert!(
                matches!(quote_table(bad), Err(GuardError::BadTableName { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn verifying_modes_without_a_ca_say_which_field_to_set() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = connect(&Target {
                host: "db.invalid",
                port: 5432,
                database: "d",
                user: "u",
                password: "p",
                ssl_mode: mode,
                ca_pem: None,
                application_name: "test",
            })
            .await
            .expect_err("no CA");
            assert!(err.is_spec_error(), "{err}");
            assert!(
                err.to_string()
                    .starts_with("spec.postgres.caCert: a CA certificate is required with sslMode"),
                "{err}"
            );
        }
    }
}
