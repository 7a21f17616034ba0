//! Prometheus metrics of a read replica (`kartflow_read_model_*`): restore progress per
//! partition, lag, the view's size, HTTP latency by route, and what WebSocket clients received,
//! had conflated or lost when closed for being too slow.

use kartflow_wire::telemetry::must;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records: IntCounterVec,
    pub bytes: IntCounterVec,
    pub rejected: IntCounterVec,
    pub lag: IntGaugeVec,
    pub products: IntGauge,
    pub view_bytes: IntGauge,
    pub restore_seconds: Gauge,
    pub http_seconds: HistogramVec,
    pub ws_clients: IntGauge,
    pub ws_sent: IntCounter,
    pub ws_products_sent: IntCounter,
    pub ws_conflated: IntCounter,
    pub ws_dropped: IntCounter,
    pub ws_closed: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kartflow_read_model".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let lag = must(IntGaugeVec::new(
            Opts::new(
                "partition_lag",
                "Records between this replica's position and the partition's last stable offset",
            ),
            &["topic", "partition"],
        ));
        must(registry.register(Box::new(lag.clone())));
        let restore_seconds = must(Gauge::new(
            "restore_seconds",
            "Seconds from start to reaching the end offsets captured at start (0 until then)",
        ));
        must(registry.register(Box::new(restore_seconds.clone())));
        let http_seconds = must(HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "REST and WebSocket upgrade latency")
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
                ]),
            &["route", "status"],
        ));
        must(registry.register(Box::new(http_seconds.clone())));
        Self {
            records: counter_vec(
                "records_total",
                "Records read, per partition",
                &["topic", "partition"],
            ),
            bytes: counter_vec(
                "bytes_total",
                "Payload bytes read, per partition",
                &["topic", "partition"],
            ),
            rejected: counter_vec(
                "records_rejected_total",
                "Records skipped as undecodable or invalid (logged with their offset)",
                &["topic", "reason"],
            ),
            products: gauge("products", "Products served"),
            view_bytes: gauge(
                "view_bytes",
                "Estimated bytes held by the view (documents, history, indexes)",
            ),
            ws_clients: gauge("websocket_clients", "Connected WebSocket clients"),
            ws_sent: counter(
                "websocket_messages_sent_total",
                "WebSocket messages (frames) sent",
            ),
            ws_products_sent: counter(
                "websocket_products_sent_total",
                "Product states delivered to WebSocket clients (snapshot and updates)",
            ),
            ws_conflated: counter(
                "websocket_conflated_total",
                "Product changes merged into one already waiting for the same client",
            ),
            ws_dropped: counter(
                "websocket_dropped_total",
                "Product changes discarded because their client was closed as too slow",
            ),
            ws_closed: counter_vec(
                "websocket_closed_total",
                "WebSocket connections closed by the server, by reason",
                &["reason"],
            ),
            lag,
            restore_seconds,
            http_seconds,
            registry,
        }
    }
}
