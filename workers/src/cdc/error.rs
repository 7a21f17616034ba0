//! Why capture stopped, each with what to do about it, and how the worker reacts: retry with
//! back-off (PostgreSQL or Kafka unavailable, slot missing) or exit (fenced, bad configuration).

use thiserror::Error;

use crate::kafka::topics::TopicError;
use crate::process::ProcessError;
use kartflow_wire::config::ConfigError;

#[derive(Debug, Error)]
pub enum CdcError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(
        "cannot connect to PostgreSQL at {endpoint}: {detail} (check spec.postgres, the Secret's \
         username/password, and that the server accepts this client in pg_hba.conf)"
    )]
    Connect { endpoint: String, detail: String },
    #[error("PostgreSQL, {action}: {detail}")]
    Sql { action: String, detail: String },
    #[error(
        "replication slot {slot} does not exist in database {database}: the operator creates it \
         (spec.slot.create) — if the slot guard dropped it, set spec.slot.recreateNonce; this \
         worker never creates slots"
    )]
    SlotMissing { slot: String, database: String },
    #[error(
        "replication slot {slot} uses plugin {plugin:?}, not pgoutput: drop it and let the \
         operator re-create it, or point spec.slot.name at a pgoutput slot"
    )]
    SlotWrongPlugin { slot: String, plugin: String },
    #[error(
        "replication slot {slot} belongs to database {found}, not {database}: fix \
         spec.postgres.database or spec.slot.name"
    )]
    SlotOtherDatabase {
        slot: String,
        found: String,
        database: String,
    },
    #[error(
        "publication {publication} does not exist in database {database}: the operator creates \
         it (spec.publication.create) or create it FOR TABLE the captured table"
    )]
    PublicationMissing {
        publication: String,
        database: String,
    },
    #[error(
        "publication {publication} does not include table {table}: add it (ALTER PUBLICATION \
         {publication} ADD TABLE {table}) or fix capture.table"
    )]
    TableNotPublished { publication: String, table: String },
    #[error("replication stream: {0}")]
    Replication(#[from] pg_walstream::ReplicationError),
    #[error("Kafka, {action}: {detail}")]
    Kafka { action: String, detail: String },
    #[error(
        "this worker was fenced by a newer instance with the same transactional id ({0}); \
         exiting so only one instance writes"
    )]
    Fenced(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("stored position in Kafka is unreadable: {0}")]
    Position(String),
    #[error("snapshot of {table}: {detail}")]
    Snapshot { table: String, detail: String },
}

impl CdcError {
    pub fn sql(action: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        CdcError::Sql {
            action: action.into(),
            detail,
        }
    }

    pub fn kafka(action: impl Into<String>, e: &rdkafka::error::KafkaError) -> Self {
        CdcError::Kafka {
            action: action.into(),
            detail: e.to_string(),
        }
    }

    /// Errors no retry can cure: the process exits and its supervisor decides.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CdcError::Config(_) | CdcError::Process(_) | CdcError::Fenced(_)
        )
    }

    /// The `kartflow_cdc_problem` label.
    pub fn problem(&self) -> &'static str {
        match self {
            CdcError::SlotMissing { .. } => "slot_missing",
            CdcError::SlotWrongPlugin { .. } => "slot_wrong_plugin",
            CdcError::SlotOtherDatabase { .. } => "slot_other_database",
            CdcError::PublicationMissing { .. } | CdcError::TableNotPublished { .. } => {
                "publication_missing"
            }
            CdcError::Connect { .. } | CdcError::Sql { .. } => "postgres_unreachable",
            CdcError::Replication(_) => "replication",
            CdcError::Kafka { .. }
            | CdcError::Fenced(_)
            | CdcError::Topic(_)
            | CdcError::Position(_) => "kafka",
            CdcError::Snapshot { .. } => "snapshot",
            CdcError::Config(_) | CdcError::Process(_) => "replication",
        }
    }
}
