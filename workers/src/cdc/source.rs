//! The PostgreSQL side: a plain SQL connection (ownership checks, snapshot, lag, outbox cleanup)
//! and the logical replication stream (`pg_walstream`, pgoutput). The worker never creates or
//! drops the slot or the publication: the operator owns them.

use std::time::Duration;

use pg_walstream::{
    CancellationToken, ChangeEvent, LogicalReplicationStream, ReplicationError,
    ReplicationStreamConfig, RetryConfig, StreamingMode,
};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use super::error::CdcError;
use super::mapping::Mapper;
use kartflow_wire::config::CdcSettings;
use kartflow_wire::config::cdc::SslMode;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Credentials from the environment (libpq's names), as the Deployment sets them from the
/// Secret.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn from_env() -> Self {
        Self {
            user: std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            password: std::env::var("PGPASSWORD").unwrap_or_default(),
        }
    }
}

fn endpoint(s: &CdcSettings) -> String {
    format!(
        "{}:{}/{}",
        s.postgres.host, s.postgres.port, s.postgres.database
    )
}

/// The SQL connection (its driver runs on a task of the current runtime).
pub async fn connect_sql(s: &CdcSettings, creds: &Credentials) -> Result<Client, CdcError> {
    let mode = match s.postgres.ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        other => {
            return Err(CdcError::Connect {
                endpoint: endpoint(s),
                detail: format!(
                    "sslMode {other:?} is not supported yet for the worker's SQL connection; use \
                     prefer or disable"
                ),
            });
        }
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&s.postgres.host)
        .port(s.postgres.port)
        .dbname(&s.postgres.database)
        .user(&creds.user)
        .password(&creds.password)
        .ssl_mode(mode)
        .application_name("kartflow-cdc")
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, config.connect(NoTls))
        .await
        .map_err(|_| CdcError::Connect {
            endpoint: endpoint(s),
            detail: "timed out".into(),
        })?
        .map_err(|e| CdcError::Connect {
            endpoint: endpoint(s),
            detail: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "SQL connection to PostgreSQL ended");
        }
    });
    Ok(client)
}

/// The slot exists, is a pgoutput slot of this database, and the publication exists. The
/// worker does not create either: a missing one is the operator's (or a person's) to fix.
pub async fn check_ownership(sql: &Client, s: &CdcSettings) -> Result<(), CdcError> {
    let slot = &s.slot.name;
    let row = sql
        .query_opt(
            "SELECT coalesce(plugin, ''), coalesce(database, ''), current_database()::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(|e| CdcError::sql("reading pg_replication_slots", &e))?;
    let Some(row) = row else {
        return Err(CdcError::SlotMissing {
            slot: slot.clone(),
            database: s.postgres.database.clone(),
        });
    };
    let plugin: String = row.get(0);
    let database: String = row.get(1);
    let current: String = row.get(2);
    if plugin != "pgoutput" {
        return Err(CdcError::SlotWrongPlugin {
            slot: slot.clone(),
            plugin,
        });
    }
    if database != current {
        return Err(CdcError::SlotOtherDatabase {
            slot: slot.clone(),
            found: database,
            database: current,
        });
    }
    let publication = sql
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&s.publication.name],
        )
        .await
        .map_err(|e| CdcError::sql("reading pg_publication", &e))?;
    if publication.is_none() {
        return Err(CdcError::PublicationMissing {
            publication: s.publication.name.clone(),
            database: current,
        });
    }
    let table = Mapper::new(&s.capture).table().clone();
    let published = sql
        .query_opt(
            "SELECT 1 FROM pg_publication_tables \
             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&s.publication.name, &table.schema, &table.table],
        )
        .await
        .map_err(|e| CdcError::sql("reading pg_publication_tables", &e))?;
    if published.is_none() {
        return Err(CdcError::TableNotPublished {
            publication: s.publication.name.clone(),
            table: table.to_string(),
        });
    }
    Ok(())
}

/// The server's current WAL end (for the lag metric and readiness).
pub async fn current_wal_lsn(sql: &Client) -> Result<u64, CdcError> {
    let row = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| CdcError::sql("reading pg_current_wal_lsn()", &e))?;
    let text: String = row.get(0);
    super::position::parse_lsn(&text).map_err(|e| CdcError::Sql {
        action: "reading pg_current_wal_lsn()".into(),
        detail: e.to_string(),
    })
}

/// A libpq keyword/value string (values quoted, so passwords with spaces work).
fn conninfo(s: &CdcSettings, creds: &Credentials) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let ssl = match s.postgres.ssl_mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    format!(
        "host={} port={} dbname={} user={} password={} sslmode={ssl} replication=database \
         application_name=kartflow-cdc connect_timeout=10",
        q(&s.postgres.host),
        s.postgres.port,
        q(&s.postgres.database),
        q(&creds.user),
        q(&creds.password),
    )
}

/// Opens the replication connection and starts streaming the slot from its confirmed position
/// (the server resends everything after it; what Kafka already holds is skipped by the caller).
pub async fn open_stream(
    s: &CdcSettings,
    creds: &Credentials,
) -> Result<LogicalReplicationStream, CdcError> {
    let config = ReplicationStreamConfig::builder(&s.slot.name, &s.publication.name)
        .with_protocol_version(1)
        // Large transactions arrive at commit (the server spills them to disk), so the worker
        // streams rows to Kafka as they come and never holds a transaction in memory.
        .with_streaming_mode(StreamingMode::Off)
        .with_feedback_interval(Duration::from_secs(1))
        .with_connection_timeout(CONNECT_TIMEOUT)
        .with_health_check_interval(Duration::from_secs(3600))
        .with_retry_config(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .with_existing_slot_required(true);
    let mut stream = LogicalReplicationStream::new(&conninfo(s, creds), config).await?;
    stream.start(None).await?;
    Ok(stream)
}

/// The next decoded change, or `None` once `deadline` passes with nothing to read. The wait is
/// cut with the library's cancellation token, which it checks only where a read is pending, so
/// no message is ever half-read (a plain timeout could drop a future mid-write of a reply).
pub async fn next_event_until(
    stream: &mut LogicalReplicationStream,
    deadline: Instant,
) -> Result<Option<ChangeEvent>, ReplicationError> {
    let token = CancellationToken::new();
    let read = stream.next_event(&token);
    tokio::pin!(read);
    let result = tokio::select! {
        biased;
        r = &mut read => r,
        () = tokio::time::sleep_until(deadline) => {
            token.cancel();
            read.await
        }
    };
    match result {
        Ok(e) => Ok(Some(e)),
        Err(ReplicationError::Cancelled(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_values() {
        let s: CdcSettings = serde_json::from_value(serde_json::json!({
            "source": "a.b",
            "postgres": {"host": "db", "port": 5432, "database": "shop"},
            "publication": {"name": "p"}, "slot": {"name": "s"}, "topic": "t",
            "kafka": {"bootstrapServers": "k:1"}
        }))
        .expect("settings");
        let c = conninfo(
            &s,
            &Credentials {
                user: "u".into(),
                password: "it's a secret".into(),
            },
        );
        assert!(c.contains(r"password='it\'s a secret'"), "{c}");
        assert!(c.contains("replication=database"), "{c}");
        assert!(c.contains("sslmode=prefer"), "{c}");
    }
}
