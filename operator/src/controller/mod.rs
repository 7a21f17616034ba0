//! The controllers: one `kube_runtime::Controller` per kind, each owning its children. A
//! reconcile reads and dereferences, builds the desired children with the pure functions of
//! [`crate::children`], server-side applies them with one field manager, writes status from what
//! the server returned, and reports through Events and metrics.

pub mod apply;
mod cdc_source;
pub mod error;
mod inventory_pipeline;
mod read_model;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

pub use error::Error;

use crate::children::MANAGED_BY_SELECTOR;
use crate::crd::common::CommonStatus;
use crate::crd::{CdcSourceStatus, InventoryPipelineStatus, ReadModelStatus};
use crate::metrics::Metrics;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// When each guarded slot was first seen without a reader (PostgreSQL before 17 does not
    /// report it), keyed by `namespace/name`.
    pub guard_memory: Mutex<HashMap<String, jiff::Timestamp>>,
    /// Consecutive failures per object, for back-off.
    failures: Mutex<HashMap<String, u32>>,
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
            failures: Mutex::default(),
        }
    }

    /// Publishes an Event on `obj`; a failure to do so is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reference: ObjectReference = obj.object_ref(&());
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "cannot publish Event");
        }
    }

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        )
    }

    fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&Self::key(obj));
        }
    }

    /// Exponential back-off per object: 1 s, 2 s, 4 s … 5 min.
    fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(Self::key(obj)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        backoff_for(n)
    }
}

pub fn backoff_for(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Times a reconcile and counts its result; `Ok` and permanent errors end the retry chain.
pub(crate) async fn observe<K, F>(
    kind: &str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    f: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = f.await;
    ctx.metrics
        .reconcile_seconds
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_permanent() => "invalid",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciles
        .with_label_values(&[kind, outcome])
        .inc();
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[kind, e.reason()])
            .inc();
    } else {
        ctx.succeeded(obj.as_ref());
    }
    result
}

/// Status types that carry the common phase/generation/conditions block.
pub(crate) trait HasCommonStatus: serde::Serialize + Clone + Default {
    fn common_mut(&mut self) -> &mut CommonStatus;
}

macro_rules! has_common_status {
    ($($t:ty),*) => {$(
        impl HasCommonStatus for $t {
            fn common_mut(&mut self) -> &mut CommonStatus {
                &mut self.common
            }
        }
    )*};
}
has_common_status!(InventoryPipelineStatus, CdcSourceStatus, ReadModelStatus);

/// Records a failed reconcile in status (and as a Warning Event when the spec is at fault) and
/// returns the error for the retry policy. Fields other than phase and conditions keep what the
/// last good reconcile wrote.
pub(crate) async fn report_failure<K, S>(obj: &K, ctx: &Context, mut status: S, err: Error) -> Error
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    S: HasCommonStatus,
{
    if err.is_permanent() {
        ctx.event(obj, true, err.reason(), "Reconcile", err.to_string())
            .await;
    }
    let generation = obj.meta().generation;
    let common = status.common_mut();
    let conditions = status::merge_conditions(
        &common.conditions,
        &[status::Cond::new(
            status::RECONCILED,
            false,
            err.reason(),
            err.to_string(),
        )],
        generation,
        &status::now(),
    );
    common.phase = Some(
        if err.is_permanent() {
            "Failed"
        } else {
            "Degraded"
        }
        .into(),
    );
    common.observed_generation = generation;
    common.conditions = conditions;
    if let Err(e) = apply::apply_status(&ctx.client, obj, &status).await {
        tracing::warn!(error = %e, "cannot write status");
    }
    err
}

/// Transient errors are retried with back-off; permanent ones were already reported by the
/// reconcile (condition + Event) and wait for a change of the object.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    if err.is_permanent() {
        return Action::await_change();
    }
    let delay = ctx.backoff(obj.as_ref());
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// A controller for `K` that owns the children every worker has (Deployment, ConfigMap,
/// Service). Its own-resource trigger fires only on spec changes (`metadata.generation`),
/// deletion and finalizers: our status writes would otherwise each trigger another reconcile.
/// Children's changes still trigger through `owns`, and periodic requeues still run.
pub(crate) fn controller_for<K>(
    client: &Client,
    ns: Option<&str>,
    children: &watcher::Config,
) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use kube::runtime::{WatchStreamExt, reflector};
    let (reader, writer) = reflector::store();
    let trigger = watcher::watcher(api::<K>(client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_deletion, Default::default());
    kube::runtime::Controller::for_stream(trigger, reader)
        .owns(api::<Deployment>(client, ns), children.clone())
        .owns(api::<ConfigMap>(client, ns), children.clone())
        .owns(api::<Service>(client, ns), children.clone())
}

/// Changes that need a reconcile: the spec (generation), deletion, and finalizers (kube's
/// finalizer helper adds ours and waits for the resulting event).
fn spec_or_deletion<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    meta.finalizers.hash(&mut h);
    Some(h.finish())
}

/// How far a worker Deployment has rolled out: `(ready, replicas, done)`. Done means the
/// Deployment controller has seen the latest template and every replica runs it and is ready,
/// so a restart in progress is not reported as Running on the old pods.
pub(crate) fn rollout(
    d: &k8s_openapi::api::apps::v1::Deployment,
    desired: i32,
) -> (i32, i32, bool) {
    let st = d.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let observed = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let done = observed
        && updated == desired
        && ready >= desired
        && replicas == desired
        && st.unavailable_replicas.unwrap_or(0) == 0;
    (ready, replicas, done)
}

/// Where the controllers look.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the three controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let ns = namespace.as_deref();
    let client = &ctx.client;
    // Children are watched by our label only: the operator never caches the cluster's other
    // Deployments, which keeps memory flat on big clusters.
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);

    let pipelines = inventory_pipeline::controller(client, ns, children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(inventory_pipeline::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("InventoryPipeline", r) });
    let sources = cdc_source::controller(client, ns, children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(cdc_source::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("CdcSource", r) });
    let models = read_model::controller(client, ns, children)
        .graceful_shutdown_on(shutdown)
        .run(read_model::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move { log_result("ReadModel", r) });
    tokio::join!(pipelines, sources, models);
}

fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, r: Result<T, E>) {
    match r {
        Ok(o) => tracing::debug!(kind, object = ?o, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %e, "reconcile not successful"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        generation: i64,
        status: serde_json::Value,
    ) -> k8s_openapi::api::apps::v1::Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": generation},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn rollout_is_done_only_on_the_latest_template() {
        let cases = [
            // (generation, status, desired, done)
            (
                2,
                serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
                2,
                true,
            ),
            // the controller has not seen the new template yet: old pods are still ready
            (
                3,
                serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
                2,
                false,
            ),
            // new template seen, old pods not replaced yet
            (
                3,
                serde_json::json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 0, "readyReplicas": 2}),
                2,
                false,
            ),
            // new pods starting
            (
                3,
                serde_json::json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "unavailableReplicas": 1}),
                2,
                false,
            ),
            // suspended: nothing runs
            (4, serde_json::json!({"observedGeneration": 4}), 0, true),
        ];
        for (generation, status, desired, done) in cases {
            let d = deployment(generation, status.clone());
            assert_eq!(rollout(&d, desired).2, done, "{generation} {status}");
        }
    }

    #[test]
    fn the_trigger_ignores_status_but_not_spec_deletion_or_finalizers() {
        let mut d = deployment(1, serde_json::json!({}));
        let base = spec_or_deletion(&d);
        d.status = None;
        assert_eq!(spec_or_deletion(&d), base, "status changes do not trigger");
        d.metadata.generation = Some(2);
        let spec = spec_or_deletion(&d);
        assert_ne!(spec, base);
        d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let deleting = spec_or_deletion(&d);
        assert_ne!(deleting, spec, "deletion triggers");
        d.metadata.finalizers = Some(vec!["kartflow.io/slot-cleanup".into()]);
        assert_ne!(
            spec_or_deletion(&d),
            deleting,
            "a finalizer change triggers"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let got: Vec<u64> = (1..=12).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_for(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn long_event_notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(s, 1023);
        assert!(t.len() <= 1023);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
