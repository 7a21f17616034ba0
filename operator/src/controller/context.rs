//! What every reconcile shares.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::backoff::Backoff;
use crate::metrics::Metrics;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// What the guard remembers of each slot between checks (since when it has had no reader,
    /// where its confirmed position stood), keyed by `namespace/name`.
    pub guard_memory: Mutex<HashMap<String, crate::slot_guard::SlotMemory>>,
    /// One open database connection per `CdcSource` (`namespace/name`), reused across checks
    /// while its settings are unchanged: a check every few seconds must not mean a new login
    /// every few seconds.
    pub connections:
        tokio::sync::Mutex<HashMap<String, (u64, std::sync::Arc<crate::slot_guard::Db>)>>,
    /// The leader's Lease, re-read before anything destructive; none outside leader election
    /// (tests).
    pub leadership: Option<crate::leader::LeaseCheck>,
    /// The operator's own pods, the only clients the workers' NetworkPolicies let reach their
    /// control port; none: no NetworkPolicies (outside a cluster, tests).
    pub control_peer: Option<crate::children::control::ControlPeer>,
    /// Consecutive failures per object.
    pub(super) backoff: Backoff,
    /// When each object last got a Warning Event for a transient failure, per reason.
    pub(super) degraded_events: Mutex<HashMap<String, std::time::Instant>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, identity: &str) -> Self {
        let reporter = Reporter {
            controller: "kartflow-operator".into(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            guard_memory: Mutex::default(),
            leadership: None,
            control_peer: None,
            connections: tokio::sync::Mutex::default(),
            backoff: Backoff::default(),
            degraded_events: Mutex::default(),
        }
    }
}
