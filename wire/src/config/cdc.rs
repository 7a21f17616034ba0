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
    /// The topic order lines (or outbox events) are written to.
    pub topic: String,
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// How often the worker confirms its position to PostgreSQL when nothing else happens.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: Millis,
    pub kafka: KafkaSettings,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

fn default_heartbeat() -> Millis {
    Millis(30_000)
}

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
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Table,
            table: "public.order_items".into(),
            columns: OrderLineColumns::default(),
            outbox_table: "public.outbox".into(),
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
}

impl Default for OrderLineColumns {
    fn default() -> Self {
        Self {
            order_id: "order_id".into(),
            product_id: "product_id".into(),
            quantity: "quantity".into(),
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
            }
            CaptureMode::Outbox => require_non_empty("capture.outboxTable", &cap.outbox_table)?,
        }
        require_non_empty("topic", &self.topic)?;
        if self.heartbeat_interval.0 == 0 {
            return Err(ConfigError::invalid(
                "heartbeatInterval",
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
    }

    #[test]
    fn contract_round_trips_and_names_invalid_fields() {
        let mut full = base();
        full["postgres"]["sslMode"] = json!("verify-full");
        full["capture"] = json!({"mode": "outbox", "outboxTable": "app.outbox"});
        full["snapshotMode"] = json!("never");
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
                (json!({"topic": ""}), "topic"),
                (json!({"heartbeatInterval": 0}), "heartbeatInterval"),
            ],
        );
    }
}
