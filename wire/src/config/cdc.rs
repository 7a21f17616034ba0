//! The CDC worker's file (`kartflow-worker cdc`), rendered by the operator from a `CdcSource`.
//!
//! No credentials are in the file: the worker reads `PGUSER` / `PGPASSWORD` (libpq's names) from
//! its environment, which the Deployment fills from the Secret's `username` / `password` keys.
//! The slot guard and `dropOnDelete` belong to the operator, not the worker.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, KafkaSettings, Millis, WorkerConfig, apply_common_env, default_admin_listen,
    require_identity, require_non_empty,
};

/// Everything the CDC worker reads at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdcSettings {
    /// `<namespace>.<name>` of the `CdcSource`: client ids, transactional ids, logs.
    pub source: String,
    pub postgres: PostgresSettings,
    pub publication: PublicationSettings,
    pub slot: SlotSettings,
    #[serde(default)]
    pub capture: CaptureSettings,
    /// The topic order lines are written to (`capture.mode: table`; outbox rows are routed by
    /// their aggregate type instead).
    pub topic: String,
    /// Rows that cannot be mapped go here with the reason, the LSN and the table.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// The worker's source positions (one compacted record per source, written in the same Kafka
    /// transaction as the rows): where a restarted worker resumes. Created by the worker when
    /// missing.
    #[serde(default = "default_positions_topic")]
    pub positions_topic: String,
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// Change to take a new snapshot (e.g. after the slot was dropped and re-created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_nonce: Option<i64>,
    /// Rows per snapshot chunk (one Kafka transaction each).
    #[serde(default = "default_snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u32,
    /// How often the worker confirms its position to PostgreSQL when nothing else happens.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: Millis,
    /// A Kafka transaction is committed after this many records…
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: u32,
    /// …or this long after its first record, whichever comes first.
    #[serde(default = "default_max_batch_delay")]
    pub max_batch_delay: Millis,
    /// `/readyz` fails while the confirmed position is further than this many bytes behind the
    /// server's WAL end.
    #[serde(default = "default_ready_lag_bytes")]
    pub ready_lag_bytes: u64,
    pub kafka: KafkaSettings,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

fn default_heartbeat() -> Millis {
    Millis(30_000)
}

fn default_dlq_topic() -> String {
    crate::topics::CDC_DLQ.into()
}

/// The defaults of the settings a `CdcSource` does not expose (the operator renders them).
pub fn default_positions_topic() -> String {
    crate::topics::CDC_POSITIONS.into()
}

pub fn default_snapshot_chunk_rows() -> u32 {
    10_000
}

pub fn default_max_batch_records() -> u32 {
    10_000
}

pub fn default_max_batch_delay() -> Millis {
    Millis(100)
}

pub fn default_ready_lag_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The longest heartbeat the worker accepts: well inside PostgreSQL's default
/// `wal_sender_timeout` (60 s) is what matters, and a slot that confirms less often than every
/// few minutes retains WAL for no reason.
pub const MAX_HEARTBEAT: Millis = Millis(300_000);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    #[serde(default)]
    pub ssl_mode: SslMode,
}

// libpq's `sslmode` values. (No doc comment: it would become the CRD field's description.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicationSettings {
    pub name: String,
    /// `schema.table` names; empty when the publication already exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Whether the operator created (and owns) the publication.
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotSettings {
    pub name: String,
    /// Whether the operator created (and owns) the slot.
    #[serde(default)]
    pub create: bool,
}

/// What rows become records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CaptureSettings {
    pub mode: CaptureMode,
    /// `mode: table`: the table whose INSERTs are order lines.
    pub table: String,
    /// `mode: table`: where each order-line field comes from.
    pub columns: OrderLineColumns,
    /// `mode: outbox`: the outbox table.
    pub outbox_table: String,
    /// `mode: outbox`: the outbox table's columns and routing.
    pub outbox: OutboxSettings,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Table,
            table: "public.order_items".into(),
            columns: OrderLineColumns::default(),
            outbox_table: "public.outbox".into(),
            outbox: OutboxSettings::default(),
        }
    }
}

/// The transactional outbox (Debezium's outbox event router, same default column names): each
/// INSERT becomes one record on `<topicPrefix><aggregatetype>`, keyed by the aggregate id, with
/// the payload passed through and `eventId` = the row id. UPDATEs and DELETEs of the outbox table
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OutboxSettings {
    pub id_column: String,
    pub aggregate_type_column: String,
    pub aggregate_id_column: String,
    pub payload_column: String,
    /// Copied into the `eventType` header when the column exists.
    pub type_column: String,
    pub topic_prefix: String,
    /// Delete captured rows from the outbox table after Kafka committed them (keeps the table
    /// small without an application-side cleanup job; needs DELETE on the table).
    pub delete_after_capture: bool,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            id_column: "id".into(),
            aggregate_type_column: "aggregatetype".into(),
            aggregate_id_column: "aggregateid".into(),
            payload_column: "payload".into(),
            type_column: "type".into(),
            topic_prefix: "outbox.event.".into(),
            delete_after_capture: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CaptureMode {
    #[default]
    Table,
    Outbox,
}

/// Column names of an order line in the captured table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OrderLineColumns {
    pub order_id: String,
    pub product_id: String,
    pub quantity: String,
    /// The row's unique id (its primary key): `eventId` is `<table>:<id>`, the same for the
    /// snapshot and the stream and across redelivery.
    pub id: String,
    /// A timestamp column for the order line's `timestamp`; without it, the commit time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Default for OrderLineColumns {
    fn default() -> Self {
        Self {
            order_id: "order_id".into(),
            product_id: "product_id".into(),
            quantity: "quantity".into(),
            id: "id".into(),
            timestamp: None,
        }
    }
}

// Whether rows that existed before the slot are captured first (a plain comment, as above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

impl WorkerConfig for CdcSettings {
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        apply_common_env(&mut self.kafka, &mut self.admin_listen, env)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        require_identity("source", &self.source)?;
        let pg = &self.postgres;
        require_non_empty("postgres.host", &pg.host)?;
        if pg.port == 0 {
            return Err(ConfigError::invalid(
                "postgres.port",
                "must be between 1 and 65535",
            ));
        }
        require_non_empty("postgres.database", &pg.database)?;
        require_non_empty("publication.name", &self.publication.name)?;
        let slot = &self.slot.name;
        let slot_ok = (1..=63).contains(&slot.len())
            && slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !slot_ok {
            return Err(ConfigError::invalid(
                "slot.name",
                "must be 1 to 63 lowercase letters, digits and underscores",
            ));
        }
        let cap = &self.capture;
        match cap.mode {
            CaptureMode::Table => {
                require_non_empty("capture.table", &cap.table)?;
                require_non_empty("capture.columns.orderId", &cap.columns.order_id)?;
                require_non_empty("capture.columns.productId", &cap.columns.product_id)?;
                require_non_empty("capture.columns.quantity", &cap.columns.quantity)?;
                require_non_empty("capture.columns.id", &cap.columns.id)?;
                if let Some(ts) = &cap.columns.timestamp {
                    require_non_empty("capture.columns.timestamp", ts)?;
                }
            }
            CaptureMode::Outbox => {
                require_non_empty("capture.outboxTable", &cap.outbox_table)?;
                let o = &cap.outbox;
                require_non_empty("capture.outbox.idColumn", &o.id_column)?;
                require_non_empty(
                    "capture.outbox.aggregateTypeColumn",
                    &o.aggregate_type_column,
                )?;
                require_non_empty("capture.outbox.aggregateIdColumn", &o.aggregate_id_column)?;
                require_non_empty("capture.outbox.payloadColumn", &o.payload_column)?;
            }
        }
        require_non_empty("topic", &self.topic)?;
        require_non_empty("dlqTopic", &self.dlq_topic)?;
        require_non_empty("positionsTopic", &self.positions_topic)?;
        if self.snapshot_chunk_rows == 0 {
            return Err(ConfigError::invalid(
                "snapshotChunkRows",
                "must be at least 1",
            ));
        }
        if self.heartbeat_interval.0 < 1_000 || self.heartbeat_interval > MAX_HEARTBEAT {
            return Err(ConfigError::invalid(
                "heartbeatInterval",
                "must be between 1s and 5m (inside wal_sender_timeout, often enough to release WAL)",
            ));
        }
        if self.max_batch_records == 0 {
            return Err(ConfigError::invalid(
                "maxBatchRecords",
                "must be at least 1",
            ));
        }
        if self.max_batch_delay.0 == 0 {
            return Err(ConfigError::invalid(
                "maxBatchDelay",
                "must be longer than 0",
            ));
        }
        self.kafka.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{assert_contract, parse};
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "source": "shop.orders",
            "postgres": {"host": "pg", "port": 5432, "database": "shop"},
            "publication": {"name": "kartflow_orders", "tables": ["public.order_items"], "create": true},
            "slot": {"name": "kartflow_orders", "create": true},
            "topic": "order-events",
            "kafka": {"bootstrapServers": "k:9092"}
        })
    }

    #[test]
    fn defaults_are_the_seed_schema() {
        let s: CdcSettings = parse(base()).expect("valid");
        assert_eq!(s.postgres.ssl_mode, SslMode::Prefer);
        assert_eq!(s.capture.table, "public.order_items");
        assert_eq!(s.capture.columns.product_id, "product_id");
        assert_eq!(s.snapshot_mode, SnapshotMode::Initial);
        assert_eq!(s.heartbeat_interval, Millis(30_000));
        assert_eq!(s.capture.columns.id, "id");
        assert_eq!(s.capture.columns.timestamp, None);
        assert_eq!(s.capture.outbox.aggregate_type_column, "aggregatetype");
        assert_eq!(s.capture.outbox.topic_prefix, "outbox.event.");
        assert!(!s.capture.outbox.delete_after_capture);
        assert_eq!(s.dlq_topic, "cdc-dlq");
        assert_eq!(s.positions_topic, "kartflow-cdc-positions");
        assert_eq!(s.snapshot_nonce, None);
        assert_eq!(s.snapshot_chunk_rows, 10_000);
        assert_eq!(s.max_batch_delay, Millis(100));
    }

    #[test]
    fn contract_round_trips_and_names_invalid_fields() {
        let mut full = base();
        full["postgres"]["sslMode"] = json!("verify-full");
        full["capture"] = json!({
            "mode": "outbox", "outboxTable": "app.outbox",
            "columns": {"id": "line_id", "timestamp": "created_at"},
            "outbox": {"aggregateTypeColumn": "kind", "topicPrefix": "", "deleteAfterCapture": true}
        });
        full["snapshotMode"] = json!("never");
        full["snapshotNonce"] = json!(3);
        full["dlqTopic"] = json!("orders-dlq");
        full["heartbeatInterval"] = json!("10s");
        assert_contract::<CdcSettings>(
            full,
            &[
                (json!({"source": "a/b"}), "source"),
                (
                    json!({"postgres": {"host": "", "port": 1, "database": "d"}}),
                    "postgres.host",
                ),
                (
                    json!({"postgres": {"host": "h", "port": 0, "database": "d"}}),
                    "postgres.port",
                ),
                (
                    json!({"postgres": {"host": "h", "port": 1, "database": "d", "sslMode": "allow"}}),
                    "postgres.sslMode",
                ),
                (json!({"slot": {"name": "Bad-Name"}}), "slot.name"),
                (json!({"publication": {"name": " "}}), "publication.name"),
                (
                    json!({"capture": {"mode": "outbox", "outboxTable": ""}}),
                    "capture.outboxTable",
                ),
                (
                    json!({"capture": {"columns": {"quantity": ""}}}),
                    "capture.columns.quantity",
                ),
                (
                    json!({"capture": {"columns": {"id": ""}}}),
                    "capture.columns.id",
                ),
                (
                    json!({"capture": {"mode": "outbox", "outbox": {"payloadColumn": ""}}}),
                    "capture.outbox.payloadColumn",
                ),
                (json!({"topic": ""}), "topic"),
                (json!({"dlqTopic": ""}), "dlqTopic"),
                (json!({"snapshotChunkRows": 0}), "snapshotChunkRows"),
                (json!({"heartbeatInterval": 0}), "heartbeatInterval"),
                (json!({"heartbeatInterval": "10m"}), "heartbeatInterval"),
                (json!({"maxBatchDelay": 0}), "maxBatchDelay"),
            ],
        );
    }
}
