//! Prometheus metrics of the CDC worker (`kartflow_cdc_*`).

use kartflow_wire::telemetry::must;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Problems that stop capture, as `kartflow_cdc_problem{problem}` (1 while present).
pub const PROBLEMS: &[&str] = &[
    "slot_missing",
    "slot_wrong_plugin",
    "slot_other_database",
    "publication_missing",
    "postgres_unreachable",
    "replication",
    "kafka",
    "snapshot",
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Rows captured into records, by table.
    pub rows: IntCounterVec,
    /// PostgreSQL transactions that carried captured rows, written to Kafka.
    pub transactions: IntCounter,
    /// Bytes of record values produced.
    pub bytes: IntCounter,
    pub dlq: IntCounterVec,
    /// Server WAL end minus the position confirmed to PostgreSQL.
    pub lag_bytes: IntGauge,
    /// Now minus the commit time of the oldest transaction not yet in Kafka (0 when none).
    pub lag_seconds: prometheus::Gauge,
    pub confirmed_lsn: IntGauge,
    pub kafka_txn_seconds: Histogram,
    /// The commit call alone (flushing the producer and the two-phase commit), during which the
    /// replication stream is not read.
    pub kafka_commit_seconds: Histogram,
    pub snapshot_rows: IntCounter,
    pub snapshot_rows_estimate: IntGauge,
    pub snapshot_running: IntGauge,
    pub problem: IntGaugeVec,
    pub reconnects: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kartflow_cdc".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let lag_seconds = must(prometheus::Gauge::new(
            "lag_seconds",
            "Seconds since the commit of the oldest captured transaction not yet in Kafka",
        ));
        must(registry.register(Box::new(lag_seconds.clone())));
        let kafka_txn_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "kafka_transaction_seconds",
                "Time from a Kafka transaction's first record to its commit",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]),
        ));
        must(registry.register(Box::new(kafka_txn_seconds.clone())));
        let kafka_commit_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "kafka_commit_seconds",
                "Time in the Kafka commit call (the replication stream waits meanwhile)",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        ));
        must(registry.register(Box::new(kafka_commit_seconds.clone())));
        let problem = must(IntGaugeVec::new(
            Opts::new(
                "problem",
                "1 while this problem stops capture (see /readyz and the log for the details)",
            ),
            &["problem"],
        ));
        must(registry.register(Box::new(problem.clone())));
        for p in PROBLEMS {
            problem.with_label_values(&[p]).set(0);
        }
        Self {
            rows: counter_vec("rows_total", "Rows captured into records", &["table"]),
            transactions: counter(
                "transactions_total",
                "PostgreSQL transactions with captured rows written to Kafka",
            ),
            bytes: counter("bytes_total", "Bytes of record values produced"),
            dlq: counter_vec(
                "dlq_total",
                "Rows sent to the DLQ topic, by reason",
                &["reason"],
            ),
            lag_bytes: gauge(
                "lag_bytes",
                "Server WAL end minus the position confirmed to PostgreSQL",
            ),
            lag_seconds,
            confirmed_lsn: gauge("confirmed_lsn", "The LSN last confirmed to PostgreSQL"),
            kafka_txn_seconds,
            kafka_commit_seconds,
            snapshot_rows: counter("snapshot_rows_total", "Rows read by the initial snapshot"),
            snapshot_rows_estimate: gauge(
                "snapshot_rows_estimate",
                "Rows the running snapshot expects to read (planner estimate)",
            ),
            snapshot_running: gauge("snapshot_running", "1 while the initial snapshot runs"),
            problem,
            reconnects: counter(
                "reconnects_total",
                "Times capture restarted after an error (PostgreSQL or Kafka)",
            ),
            registry,
        }
    }

    /// Marks `problem` as the one present (or none), clearing the others.
    pub fn set_problem(&self, problem: Option<&str>) {
        for p in PROBLEMS {
            self.problem
                .with_label_values(&[p])
                .set(i64::from(Some(*p) == problem));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
