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
    /// When each guarded slot was first seen without a reader (PostgreSQL before 17 does not
    /// report it), keyed by `namespace/name`.
    pub guard_memory: Mutex<HashMap<String, jiff::Timestamp>>,
    /// Consecutive failures per object.
    pub(super) backoff: Backoff,
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
            backoff: Backoff::default(),
        }
    }
}
