//! What starts a reconcile: changes of the object that matter (not our own status writes),
//! changes of its children, and periodic requeues.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};

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

/// Where the controllers look.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_ignores_status_but_not_spec_deletion_or_finalizers() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": 1},
            "status": {},
        }))
        .expect("deployment");
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
}
