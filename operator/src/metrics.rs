//! Prometheus metrics of the operator: reconciles by kind and result, their duration, errors by
//! reason, leadership, and the slot guard's readings and drops.

use kartflow_wire::telemetry::{must, render};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub leader: IntGauge,
    pub slot_retained_bytes: IntGaugeVec,
    /// The guard's thresholds beside the reading, so an alert can compare the two.
    pub slot_warn_bytes: IntGaugeVec,
    pub slot_drop_bytes: IntGaugeVec,
    pub slot_active: IntGaugeVec,
    pub slot_checks: IntCounterVec,
    pub slot_drops: IntCounterVec,
}

/// Labels of the slot guard's per-source series.
pub const SLOT_LABELS: [&str; 3] = ["namespace", "name", "slot"];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kartflow_operator".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let reconcile_seconds = must(HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time one reconcile took").buckets(
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
            &["kind"],
        ));
        must(registry.register(Box::new(reconcile_seconds.clone())));
        let leader = must(IntGauge::new(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
        ));
        must(registry.register(Box::new(leader.clone())));
        Self {
            reconciles: counter(
                "reconciles_total",
                "Reconciles by kind and result (ok, invalid, error)",
                &["kind", "result"],
            ),
            reconcile_errors: counter(
                "reconcile_errors_total",
                "Failed reconciles by kind and reason",
                &["kind", "reason"],
            ),
            slot_retained_bytes: gauges(
                "slot_retained_wal_bytes",
                "WAL retained by a guarded replication slot (pg_current_wal_lsn() - restart_lsn)",
                &SLOT_LABELS,
            ),
            slot_warn_bytes: gauges(
                "slot_warn_retained_wal_bytes",
                "The CdcSource's guard.warnRetainedWal in bytes",
                &SLOT_LABELS,
            ),
            slot_drop_bytes: gauges(
                "slot_drop_retained_wal_bytes",
                "The CdcSource's guard.dropRetainedWal in bytes",
                &SLOT_LABELS,
            ),
            slot_active: gauges(
                "slot_active",
                "1 while a reader streams from the guarded slot",
                &SLOT_LABELS,
            ),
            slot_checks: counter(
                "slot_guard_checks_total",
                "Slot guard checks by verdict (healthy, warn, drop, missing, ...)",
                &["namespace", "name", "verdict"],
            ),
            slot_drops: counter(
                "slot_guard_drops_total",
                "Replication slots the guard dropped",
                &["namespace", "name", "slot"],
            ),
            reconcile_seconds,
            leader,
            registry,
        }
    }

    /// Forgets the series of a deleted CdcSource so /metrics does not grow with churn.
    pub fn forget_slot(&self, namespace: &str, name: &str, slot: &str) {
        let labels = [namespace, name, slot];
        let _ = self.slot_retained_bytes.remove_label_values(&labels);
        let _ = self.slot_warn_bytes.remove_label_values(&labels);
        let _ = self.slot_drop_bytes.remove_label_values(&labels);
        let _ = self.slot_active.remove_label_values(&labels);
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_with_its_prefix() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["CdcSource", "ok"]).inc();
        m.reconcile_errors
            .with_label_values(&["ReadModel", "kube_api"])
            .inc();
        m.reconcile_seconds
            .with_label_values(&["CdcSource"])
            .observe(0.01);
        m.slot_retained_bytes
            .with_label_values(&["ns", "orders", "slot"])
            .set(42);
        m.slot_drops
            .with_label_values(&["ns", "orders", "slot"])
            .inc();
        m.slot_drop_bytes
            .with_label_values(&["ns", "orders", "slot"])
            .set(2048);
        m.leader.set(1);
        let text = m.render();
        for series in [
            "kartflow_operator_reconciles_total{kind=\"CdcSource\",result=\"ok\"} 1",
            "kartflow_operator_reconcile_errors_total{kind=\"ReadModel\",reason=\"kube_api\"} 1",
            "kartflow_operator_slot_retained_wal_bytes{name=\"orders\",namespace=\"ns\",slot=\"slot\"} 42",
            "kartflow_operator_slot_guard_drops_total{name=\"orders\",namespace=\"ns\",slot=\"slot\"} 1",
            "kartflow_operator_slot_drop_retained_wal_bytes{name=\"orders\",namespace=\"ns\",slot=\"slot\"} 2048",
            "kartflow_operator_leader 1",
            "kartflow_operator_reconcile_duration_seconds_bucket",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
        m.forget_slot("ns", "orders", "slot");
        assert!(!m.render().contains("slot_retained_wal_bytes{"));
        assert!(!m.render().contains("slot_drop_retained_wal_bytes{"));
    }
}
