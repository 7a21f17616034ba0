//! Prometheus metrics of the inventory worker. Every input record is counted by what became of
//! it (`disposition`), so "nothing silently dropped" can be checked from the outside.

use kartflow_wire::telemetry::must;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Bucket bounds (seconds) of the latency histograms: fine enough to tell 5 ms from 50 ms from
/// 250 ms, and each step at most about 1.5× the one before up to 1 s.
pub const LATENCY_BUCKETS: [f64; 26] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125,
    0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dispositions: IntCounterVec,
    pub dlq: IntCounterVec,
    pub orphans_buffered: IntGauge,
    pub state_keys: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub processing_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub transactions: IntCounterVec,
    pub restores: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kartflow_inventory".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets),
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let lag = must(IntGaugeVec::new(
            Opts::new(
                "consumer_lag",
                "Records behind the end of each owned input partition",
            ),
            &["topic", "partition"],
        ));
        must(registry.register(Box::new(lag.clone())));
        let restores = must(HistogramVec::new(
            HistogramOpts::new("restore_seconds", "Time to restore partition state")
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["source"],
        ));
        must(registry.register(Box::new(restores.clone())));
        Self {
            records_in: counter("records_in_total", "Input records consumed", &["topic"]),
            records_out: counter("records_out_total", "Records produced", &["topic"]),
            dispositions: counter(
                "input_dispositions_total",
                "What became of each input record (applied, duplicate, buffered, dead_lettered, ...)",
                &["disposition"],
            ),
            dlq: counter("dlq_total", "Records sent to the DLQ", &["reason"]),
            transactions: counter("transactions_total", "Kafka transactions", &["result"]),
            orphans_buffered: gauge("orphans_buffered", "Order lines waiting for their product"),
            state_keys: gauge("state_keys", "Product keys held in state"),
            processing_seconds: histogram(
                "processing_seconds",
                "Time from consuming a record to its transaction committing",
                LATENCY_BUCKETS.to_vec(),
            ),
            commit_seconds: histogram(
                "commit_seconds",
                "Transaction commit latency",
                LATENCY_BUCKETS.to_vec(),
            ),
            consumer_lag: lag,
            restores,
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use kartflow_wire::telemetry::render;

    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let m = Metrics::new();
        m.records_in.with_label_values(&["order-events"]).inc();
        m.dlq.with_label_values(&["undecodable"]).inc();
        // What the shared admin router serves on /metrics.
        let text = render(&m.registry);
        assert!(text.contains("kartflow_inventory_records_in_total{topic=\"order-events\"} 1"));
        assert!(text.contains("kartflow_inventory_dlq_total{reason=\"undecodable\"} 1"));
    }
}
