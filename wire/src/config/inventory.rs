//! The inventory worker's configuration file (JSON, camelCase; the operator renders it into a
//! ConfigMap) with environment overrides, validated at start with the failing field named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kartflow_wire::topics;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::inventory::InventoryConfig;
use crate::kafka::{KafkaSettings, KafkaSettingsError};

/// Everything the inventory worker reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventorySettings {
    /// The pipeline's name: consumer group, transactional ids and the changelog derive from it.
    pub pipeline: String,
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub topics: Topics,
    /// The initial products file (a JSON array of products, or one product per line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_products_file: Option<PathBuf>,
    #[serde(default)]
    pub rules: InventoryConfig,
    #[serde(default)]
    pub savepoints: SavepointSettings,
    #[serde(default)]
    pub processing: Processing,
    /// Address of the admin/metrics HTTP server.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

/// Topic names; the defaults are the reference system's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Topics {
    pub product_updates: String,
    pub order_events: String,
    pub products: String,
    pub inventory_events: String,
    pub inventory_alerts: String,
    pub websocket_fanout: String,
    pub dlq: String,
    /// The compacted state changelog; empty means `<pipeline>-inventory-changelog`.
    pub changelog: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            product_updates: topics::PRODUCT_UPDATES.into(),
            order_events: topics::ORDER_EVENTS.into(),
            products: topics::PRODUCTS.into(),
            inventory_events: topics::INVENTORY_EVENTS.into(),
            inventory_alerts: topics::INVENTORY_ALERTS.into(),
            websocket_fanout: topics::WEBSOCKET_FANOUT.into(),
            dlq: topics::INVENTORY_DLQ.into(),
            changelog: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SavepointSettings {
    /// Where savepoints are written: `file:///path` (default) or another `object_store` URL.
    pub storage_url: String,
}

impl Default for SavepointSettings {
    fn default() -> Self {
        Self {
            storage_url: "file:///var/lib/kartflow/savepoints".into(),
        }
    }
}

/// Batching of the transactional loop: larger batches amortise the commit, smaller ones cut
/// end-to-end latency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Processing {
    /// Records per transaction at most.
    pub max_batch_records: usize,
    /// A transaction commits at the latest this long after its first record.
    pub max_batch_ms: u64,
    /// How often processing time advances (stale timers, orphan expiry) without input.
    pub tick_interval_ms: u64,
    /// Create missing output, DLQ and changelog topics with the inputs' partition count.
    pub create_topics: bool,
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            max_batch_records: 2_000,
            max_batch_ms: 100,
            tick_interval_ms: 1_000,
            create_topics: true,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error(transparent)]
    Kafka(#[from] KafkaSettingsError),
    #[error("environment variable {var}={value:?} is not valid: {problem}")]
    Env {
        var: &'static str,
        value: String,
        problem: String,
    },
}

impl InventorySettings {
    /// Reads `path`, applies `KARTFLOW_*` overrides from `env`, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut settings: Self =
            serde_json::from_str(&text).map_err(|source| SettingsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        settings.apply_env(env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Overrides for what differs per environment rather than per pipeline.
    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), SettingsError> {
        if let Some(v) = env("KARTFLOW_KAFKA_BOOTSTRAP") {
            self.kafka.bootstrap_servers = v;
        }
        if let Some(v) = env("KARTFLOW_SAVEPOINT_STORAGE") {
            self.savepoints.storage_url = v;
        }
        if let Some(v) = env("KARTFLOW_ADMIN_LISTEN") {
            self.admin_listen =
                v.parse()
                    .map_err(|e: std::net::AddrParseError| SettingsError::Env {
                        var: "KARTFLOW_ADMIN_LISTEN",
                        value: v.clone(),
                        problem: e.to_string(),
                    })?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field: &str, problem: &str| SettingsError::Invalid {
            field: field.to_owned(),
            problem: problem.to_owned(),
        };
        if self.pipeline.is_empty()
            || !self
                .pipeline
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "pipeline",
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        self.kafka.validate()?;
        let t = &self.topics;
        for (field, name) in [
            ("topics.productUpdates", &t.product_updates),
            ("topics.orderEvents", &t.order_events),
            ("topics.products", &t.products),
            ("topics.inventoryEvents", &t.inventory_events),
            ("topics.inventoryAlerts", &t.inventory_alerts),
            ("topics.websocketFanout", &t.websocket_fanout),
            ("topics.dlq", &t.dlq),
        ] {
            if name.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if t.product_updates == t.order_events {
            return Err(invalid(
                "topics.orderEvents",
                "must differ from topics.productUpdates",
            ));
        }
        self.rules.validate().map_err(|e| SettingsError::Invalid {
            field: format!("rules.{}", e.field),
            problem: e.problem.clone(),
        })?;
        if self.processing.max_batch_records == 0 {
            return Err(invalid("processing.maxBatchRecords", "must be at least 1"));
        }
        if self.processing.max_batch_ms == 0 || self.processing.tick_interval_ms == 0 {
            return Err(invalid(
                "processing.maxBatchMs",
                "maxBatchMs and tickIntervalMs must be at least 1",
            ));
        }
        url::Url::parse(&self.savepoints.storage_url)
            .map_err(|e| invalid("savepoints.storageUrl", &e.to_string()))?;
        Ok(())
    }

    /// The changelog topic name in force.
    pub fn changelog_topic(&self) -> String {
        if self.topics.changelog.is_empty() {
            format!("{}-inventory-changelog", self.pipeline)
        } else {
            self.topics.changelog.clone()
        }
    }

    /// The consumer group of the pipeline.
    pub fn group_id(&self) -> String {
        format!("kartflow-{}", self.pipeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({"pipeline": "shop", "kafka": {"bootstrapServers": "k:9092"}})
    }

    fn parse(v: serde_json::Value) -> Result<InventorySettings, SettingsError> {
        let s: InventorySettings =
            serde_json::from_value(v).map_err(|source| SettingsError::Parse {
                path: "inline".into(),
                source,
            })?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn minimal_file_gets_reference_defaults() {
        let s = parse(base()).expect("valid");
        assert_eq!(s.topics.order_events, "order-events");
        assert_eq!(s.changelog_topic(), "shop-inventory-changelog");
        assert_eq!(s.group_id(), "kartflow-shop");
        assert_eq!(s.processing.max_batch_records, 2_000);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (serde_json::json!({"pipeline": ""}), "pipeline"),
            (
                serde_json::json!({"kafka": {"bootstrapServers": " "}}),
                "kafka.bootstrapServers",
            ),
            (serde_json::json!({"topics": {"dlq": ""}}), "topics.dlq"),
            (
                serde_json::json!({"topics": {"orderEvents": "product-updates"}}),
                "topics.orderEvents",
            ),
            (
                serde_json::json!({"processing": {"maxBatchRecords": 0}}),
                "processing.maxBatchRecords",
            ),
            (
                serde_json::json!({"savepoints": {"storageUrl": "not a url"}}),
                "savepoints.storageUrl",
            ),
            (
                serde_json::json!({"rules": {"priceDropPercent": -1.0}}),
                "rules.",
            ),
        ];
        for (patch, field) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().expect("object") {
                v[k] = val.clone();
            }
            let err = parse(v).expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = base();
        v["paralelism"] = serde_json::json!(2);
        let err = parse(v).expect_err("typo");
        assert!(err.to_string().contains("paralelism"), "{err}");
    }

    #[test]
    fn environment_overrides_apply() {
        let mut s = parse(base()).expect("valid");
        s.apply_env(|k| match k {
            "KARTFLOW_KAFKA_BOOTSTRAP" => Some("other:1".into()),
            "KARTFLOW_ADMIN_LISTEN" => Some("127.0.0.1:9999".into()),
            _ => None,
        })
        .expect("valid overrides");
        assert_eq!(s.kafka.bootstrap_servers, "other:1");
        assert_eq!(s.admin_listen.port(), 9999);
        let err = s
            .apply_env(|k| (k == "KARTFLOW_ADMIN_LISTEN").then(|| "nope".into()))
            .expect_err("bad address");
        assert!(err.to_string().contains("KARTFLOW_ADMIN_LISTEN"));
    }
}
