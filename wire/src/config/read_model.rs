//! The read-model worker's file (`kartflow-worker read-model`), rendered by the operator from a
//! `ReadModel`. Every replica reads every partition of both topics (assigned, no consumer group:
//! `readModel` is for client ids and logs) and serves the whole view; `/readyz` is 200 only once
//! caught up. Environment overrides besides the common ones: `KARTFLOW_HTTP_LISTEN`
//! (`httpListen`).
//!
//! The bounds (`view`, `websocket.queueCapacity`) keep a replica's memory a function of the
//! product count, not of traffic or topic age; their defaults hold 1M products in a few GiB.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, KafkaSettings, Millis, WorkerConfig, apply_common_env, default_admin_listen,
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
    #[serde(default)]
    pub view: ViewSettings,
    /// After SIGTERM: how long the replica keeps serving while Kubernetes takes it out of the
    /// Service endpoints, before WebSocket clients are closed with 1001 (going away).
    #[serde(default = "default_shutdown_delay")]
    pub shutdown_delay: Millis,
    /// How often the replica looks for partitions added to its topics (read from their start).
    #[serde(default = "default_partition_check_interval")]
    pub partition_check_interval: Millis,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

fn default_shutdown_delay() -> Millis {
    Millis(5_000)
}

fn default_partition_check_interval() -> Millis {
    Millis(30_000)
}

/// How much history the view keeps besides each product's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ViewSettings {
    /// Recent inventory events kept per product (`GET /products/{id}/events`).
    pub recent_events_per_product: u32,
    /// Recent alerts kept per product.
    pub recent_alerts_per_product: u32,
    /// Recent alerts kept over all products (`GET /alerts`).
    pub recent_alerts: u32,
    /// `inventory-events` and `inventory-alerts` are not compacted: a replica starts reading
    /// them this far back in time (by record timestamp), so start-up does not grow with the
    /// topics' age. Current inventory comes from the compacted `products` topic.
    pub history_window: Millis,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self {
            recent_events_per_product: 10,
            recent_alerts_per_product: 5,
            recent_alerts: 1_000,
            history_window: Millis::from_hours(1),
        }
    }
}

impl ReadModelSettings {
    /// The settings of `read_model` reading from `kafka`, everything else at its default.
    pub fn new(read_model: String, kafka: KafkaSettings) -> Self {
        Self {
            read_model,
            kafka,
            topics: ReadModelTopics::default(),
            http_listen: default_http_listen(),
            websocket: WebSocketSettings::default(),
            view: ViewSettings::default(),
            shutdown_delay: default_shutdown_delay(),
            partition_check_interval: default_partition_check_interval(),
            admin_listen: default_admin_listen(),
        }
    }
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
    pub inventory_alerts: String,
}

impl Default for ReadModelTopics {
    fn default() -> Self {
        Self {
            products: topics::PRODUCTS.into(),
            inventory_events: topics::INVENTORY_EVENTS.into(),
            inventory_alerts: topics::INVENTORY_ALERTS.into(),
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
    /// Distinct products waiting to be sent to one client. Changes to a product already waiting
    /// are conflated into it; a client whose queue stays full until the replica's change log
    /// no longer covers it is closed (4008).
    pub queue_capacity: u32,
    /// The server pings every client this often; a client silent for two intervals is closed.
    pub ping_interval: Millis,
    /// A client that cannot take one message within this time is closed (4008).
    pub send_timeout: Millis,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/ws".into(),
            max_connections: 10_000,
            queue_capacity: 10_000,
            ping_interval: Millis(30_000),
            send_timeout: Millis(10_000),
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
        require_non_empty("topics.inventoryAlerts", &self.topics.inventory_alerts)?;
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
        for (field, value) in [
            ("websocket.maxConnections", ws.max_connections),
            ("websocket.queueCapacity", ws.queue_capacity),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            ("websocket.pingInterval", ws.ping_interval),
            ("websocket.sendTimeout", ws.send_timeout),
        ] {
            if value.0 < 100 {
                return Err(ConfigError::invalid(field, "must be at least 100ms"));
            }
        }
        if self.partition_check_interval.0 < 100 {
            return Err(ConfigError::invalid(
                "partitionCheckInterval",
                "must be at least 100ms",
            ));
        }
        if self.view.recent_alerts == 0 {
            return Err(ConfigError::invalid(
                "view.recentAlerts",
                "must be at least 1",
            ));
        }
        if self.view.history_window.0 > Millis::from_hours(24 * 30).0 {
            return Err(ConfigError::invalid(
                "view.historyWindow",
                "must be at most 30d: start-up reads the whole window",
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
        assert_eq!(s.topics.inventory_alerts, "inventory-alerts");
        assert_eq!(s.view, ViewSettings::default());
        assert_eq!(s.view.history_window, Millis::from_hours(1));
        assert_eq!(s.shutdown_delay, Millis(5_000));
        assert_eq!(s.websocket.queue_capacity, 10_000);
    }

    #[test]
    fn contract_round_trips_and_names_invalid_fields() {
        let mut full = base();
        full["topics"] = json!({"products": "p", "inventoryEvents": "e", "inventoryAlerts": "a"});
        full["httpListen"] = json!("0.0.0.0:9000");
        full["websocket"] = json!({"enabled": false, "path": "/live", "maxConnections": 5,
            "queueCapacity": 7, "pingInterval": "5s", "sendTimeout": 2000});
        full["view"] = json!({"recentEventsPerProduct": 3, "recentAlertsPerProduct": 0,
            "recentAlerts": 50, "historyWindow": "10m"});
        full["shutdownDelay"] = json!("1s");
        full["partitionCheckInterval"] = json!("2s");
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
                (
                    json!({"websocket": {"queueCapacity": 0}}),
                    "websocket.queueCapacity",
                ),
                (
                    json!({"websocket": {"pingInterval": "10ms"}}),
                    "websocket.pingInterval",
                ),
                (
                    json!({"topics": {"inventoryAlerts": ""}}),
                    "topics.inventoryAlerts",
                ),
                (json!({"view": {"recentAlerts": 0}}), "view.recentAlerts"),
                (
                    json!({"partitionCheckInterval": 5}),
                    "partitionCheckInterval",
                ),
                (
                    json!({"view": {"historyWindow": "60d"}}),
                    "view.historyWindow",
                ),
                (json!({"view": {"recentEvents": 3}}), "recentEvents"),
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
