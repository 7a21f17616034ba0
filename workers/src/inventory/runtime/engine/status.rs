//! What the loop tells the outside: readiness, the `/v1/status` document, and the lag and state
//! gauges.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use serde::Serialize;

use super::Core;

/// What the admin API reads.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub instance: String,
    pub ready: bool,
    pub partitions: Vec<PartitionStatus>,
    pub state_keys: usize,
    pub orphans_buffered: usize,
    pub savepoint_restored: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: i32,
    /// Next offset to read per input topic.
    pub offsets: BTreeMap<String, i64>,
    /// Records behind the end per input topic (as of the last lag check).
    pub lag: BTreeMap<String, i64>,
    pub keys: usize,
}

/// The status the loop publishes and `/v1/status` reads.
pub type SharedStatus = Arc<RwLock<Status>>;

impl Core {
    /// Publishes readiness, `/v1/status` and the state gauges. Cheap (no scan of the state): the
    /// loop calls it after every commit and rebalance; lag is refreshed every 5 s.
    pub(super) fn publish_status(&self) {
        let ready = self.assigned_once && self.fatal.is_none();
        self.readiness.set(ready);
        let partitions = self
            .slots
            .iter()
            .map(|(p, s)| PartitionStatus {
                partition: *p,
                offsets: s.meta.offsets.clone(),
                lag: s.lag.clone(),
                keys: s.state.keys.len(),
            })
            .collect();
        let state_keys = self.slots.values().map(|s| s.state.keys.len()).sum();
        let orphans = self.slots.values().map(|s| s.orphans).sum();
        self.metrics
            .state_keys
            .set(i64::try_from(state_keys).unwrap_or(i64::MAX));
        self.metrics
            .orphans_buffered
            .set(i64::try_from(orphans).unwrap_or(i64::MAX));
        let status = Status {
            instance: self.instance.clone(),
            ready,
            partitions,
            state_keys,
            orphans_buffered: orphans,
            savepoint_restored: self.savepoint.as_ref().map(|s| s.id.clone()),
        };
        if let Ok(mut s) = self.status.write() {
            *s = status;
        }
    }

    /// Refreshes per-partition lag from the brokers' high watermarks.
    pub(super) fn refresh_lag(&mut self) {
        let topics = self.input_topics();
        for (p, slot) in &mut self.slots {
            for t in &topics {
                if let Ok((_, high)) =
                    self.watermarks
                        .fetch_watermarks(t, *p, Duration::from_secs(2))
                {
                    let next = slot.meta.offsets.get(t).copied().unwrap_or(0);
                    let lag = (high - next).max(0);
                    slot.lag.insert(t.clone(), lag);
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[t.as_str(), p.to_string().as_str()])
                        .set(lag);
                }
            }
        }
    }
}
