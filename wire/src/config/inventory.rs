//! The inventory worker's file (`kartflow-worker inventory`), rendered by the operator from an
//! `InventoryPipeline`. Environment overrides besides the common ones:
//! `KARTFLOW_SAVEPOINT_STORAGE` (`savepoints.storageUrl`) and `KARTFLOW_CONTROL_LISTEN`
//! (`controlListen`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, DEFAULT_CONTROL_LISTEN, InventoryRules, KafkaSettings, WorkerConfig,
    apply_common_env, default_admin_listen, require_identity, require_non_empty, socket_addr_env,
};
use crate::topics;

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
    pub rules: InventoryRules,
    #[serde(default)]
    pub savepoints: SavepointSettings,
    #[serde(default)]
    pub processing: Processing,
    /// Address of the admin/metrics HTTP server.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Address of the control API (`POST /v1/savepoints`): state-changing, so on a port of its
    /// own that a NetworkPolicy opens to the operator only.
    #[serde(default = "default_control_listen")]
    pub control_listen: SocketAddr,
    /// A file holding the bearer token every control request must carry. Without one the
    /// control API answers loopback clients only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_token_file: Option<PathBuf>,
}

fn default_control_listen() -> SocketAddr {
    DEFAULT_CONTROL_LISTEN
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
    /// The compacted state changelog; empty (or absent) means `<pipeline>-inventory-changelog`.
    #[serde(skip_serializing_if = "String::is_empty")]
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

impl WorkerConfig for InventorySettings {
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        apply_common_env(&mut self.kafka, &mut self.admin_listen, env)?;
        if let Some(v) = env("KARTFLOW_SAVEPOINT_STORAGE") {
            self.savepoints.storage_url = v;
        }
        if let Some(addr) = socket_addr_env("KARTFLOW_CONTROL_LISTEN", env)? {
            self.control_listen = addr;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        require_identity("pipeline", &self.pipeline)?;
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
            require_non_empty(field, name)?;
        }
        if t.product_updates == t.order_events {
            return Err(ConfigError::invalid(
                "topics.orderEvents",
                "must differ from topics.productUpdates",
            ));
        }
        self.rules.validate().map_err(|e| e.within("rules"))?;
        if self.processing.max_batch_records == 0 {
            return Err(ConfigError::invalid(
                "processing.maxBatchRecords",
                "must be at least 1",
            ));
        }
        if self.processing.max_batch_ms == 0 || self.processing.tick_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "processing.maxBatchMs",
                "maxBatchMs and tickIntervalMs must be at least 1",
            ));
        }
        if self.control_listen.port() != 0 && self.control_listen == self.admin_listen {
            return Err(ConfigError::invalid(
                "controlListen",
                "must differ from adminListen (the control API has a port of its own)",
            ));
        }
        url::Url::parse(&self.savepoints.storage_url)
            .map_err(|e| ConfigError::invalid("savepoints.storageUrl", e.to_string()))?;
        Ok(())
    }
}

impl InventorySettings {
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
    use crate::config::testutil::{assert_contract, parse};

    fn base() -> serde_json::Value {
        serde_json::json!({"pipeline": "shop", "kafka": {"bootstrapServers": "k:9092"}})
    }

    #[test]
    fn minimal_file_gets_reference_defaults() {
        let s: InventorySettings = parse(base()).expect("valid");
        assert_eq!(s.topics.order_events, "order-events");
        assert_eq!(s.changelog_topic(), "shop-inventory-changelog");
        assert_eq!(s.group_id(), "kartflow-shop");
        assert_eq!(s.processing.max_batch_records, 2_000);
        assert_eq!(s.admin_listen, crate::config::DEFAULT_ADMIN_LISTEN);
        assert_eq!(s.control_listen, crate::config::DEFAULT_CONTROL_LISTEN);
        assert_eq!(s.control_token_file, None);
    }

    #[test]
    fn contract_round_trips_and_names_invalid_fields() {
        let mut full = base();
        full["topics"] = serde_json::json!({"changelog": "cl", "dlq": "dead"});
        full["bootstrapProductsFile"] = serde_json::json!("/etc/p.json");
        full["rules"] = serde_json::json!({"staleAfter": "30m"});
        full["controlTokenFile"] = serde_json::json!("/etc/kartflow/control-token/token");
        assert_contract::<InventorySettings>(
            full,
            &[
                (serde_json::json!({"pipeline": ""}), "pipeline"),
                (serde_json::json!({"pipeline": "a b"}), "pipeline"),
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
                    "rules.priceDropPercent",
                ),
                (serde_json::json!({"topics": {"dlqq": "x"}}), "dlqq"),
                (
                    serde_json::json!({"adminListen": "0.0.0.0:9", "controlListen": "0.0.0.0:9"}),
                    "controlListen",
                ),
            ],
        );
    }

    #[test]
    fn environment_overrides_apply() {
        let mut s: InventorySettings = parse(base()).expect("valid");
        s.apply_env(&|k| match k {
            "KARTFLOW_KAFKA_BOOTSTRAP" => Some("other:1".into()),
            "KARTFLOW_SAVEPOINT_STORAGE" => Some("s3://b/p".into()),
            "KARTFLOW_CONTROL_LISTEN" => Some("fd00::7:8081".into()),
            _ => None,
        })
        .expect("valid overrides");
        assert_eq!(s.kafka.bootstrap_servers, "other:1");
        assert_eq!(s.control_listen.to_string(), "[fd00::7]:8081");
        assert_eq!(s.savepoints.storage_url, "s3://b/p");
    }
}
