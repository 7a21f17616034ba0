//! The read-model worker's file (`kartflow-worker read-model`), rendered by the operator from a
//! `ReadModel`. Every replica reads every partition of both topics (assigned, no consumer group:
//! `readModel` is for client ids and logs) and serves the whole view; `/readyz` is 200 only once
//! caught up. Environment overrides besides the common ones: `KARTFLOW_HTTP_LISTEN`
//! (`httpListen`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, KafkaSettings, WorkerConfig, apply_common_env, default_admin_listen,
    require_identity, require_non_empty, socket_addr_env,
};
use crate::topics;

/// Everything a read replica reads at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadModelSettings {
    /// `<namespace>.<name>` of the `ReadModel`.
    pub read_model: String,
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub topics: ReadModelTopics,
    /// REST and WebSocket.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    #[serde(default)]
    pub websocket: WebSocketSettings,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8000))
}

/// The topics the view is built from; the defaults are the reference system's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReadModelTopics {
    /// Canonical products (compacted).
    pub products: String,
    pub inventory_events: String,
}

impl Default for ReadModelTopics {
    fn default() -> Self {
        Self {
            products: topics::PRODUCTS.into(),
            inventory_events: topics::INVENTORY_EVENTS.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WebSocketSettings {
    pub enabled: bool,
    pub path: String,
    /// Connections per replica at most.
    pub max_connections: u32,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/ws".into(),
            max_connections: 10_000,
        }
    }
}

impl WorkerConfig for ReadModelSettings {
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        apply_common_env(&mut self.kafka, &mut self.admin_listen, env)?;
        if let Some(addr) = socket_addr_env("KARTFLOW_HTTP_LISTEN", env)? {
            self.http_listen = addr;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        require_identity("readModel", &self.read_model)?;
        self.kafka.validate()?;
        require_non_empty("topics.products", &self.topics.products)?;
        require_non_empty("topics.inventoryEvents", &self.topics.inventory_events)?;
        if self.http_listen.port() == self.admin_listen.port() {
            return Err(ConfigError::invalid(
                "httpListen",
                format!(
                    "must use another port than adminListen ({})",
                    self.admin_listen
                ),
            ));
        }
        let ws = &self.websocket;
        if !ws.path.starts_with('/') {
            return Err(ConfigError::invalid(
                "websocket.path",
                "must start with '/'",
            ));
        }
        if ws.max_connections == 0 {
            return Err(ConfigError::invalid(
                "websocket.maxConnections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{assert_contract, parse};
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({"readModel": "shop.view", "kafka": {"bootstrapServers": "k:9092"}})
    }

    #[test]
    fn defaults_serve_on_8000_with_the_reference_topics() {
        let s: ReadModelSettings = parse(base()).expect("valid");
        assert_eq!(s.http_listen.port(), 8000);
        assert_eq!(s.topics.products, "products");
        assert_eq!(s.topics.inventory_events, "inventory-events");
        assert_eq!(s.websocket.path, "/ws");
    }

    #[test]
    fn contract_round_trips_and_names_invalid_fields() {
        let mut full = base();
        full["topics"] = json!({"products": "p", "inventoryEvents": "e"});
        full["httpListen"] = json!("0.0.0.0:9000");
        full["websocket"] = json!({"enabled": false, "path": "/live", "maxConnections": 5});
        assert_contract::<ReadModelSettings>(
            full,
            &[
                (json!({"readModel": ""}), "readModel"),
                (json!({"topics": {"products": ""}}), "topics.products"),
                (json!({"httpListen": "0.0.0.0:8080"}), "httpListen"),
                (json!({"websocket": {"path": "ws"}}), "websocket.path"),
                (
                    json!({"websocket": {"maxConnections": 0}}),
                    "websocket.maxConnections",
                ),
            ],
        );
    }

    #[test]
    fn http_listen_follows_the_environment() {
        let mut s: ReadModelSettings = parse(base()).expect("valid");
        s.apply_env(&|k| (k == "KARTFLOW_HTTP_LISTEN").then(|| "10.0.0.7:8000".into()))
            .expect("valid");
        assert_eq!(s.http_listen.to_string(), "10.0.0.7:8000");
    }
}
