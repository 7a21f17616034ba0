//! Writes to the apiserver: server-side apply of children and status with one field manager,
//! and deletion of children a spec no longer asks for.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::FIELD_MANAGER;

fn params() -> PatchParams {
    // force: the operator owns these fields; a human edit of a child is reverted, as with any
    // controller-owned object.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `obj` (which carries its namespace) and returns what the server stored.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(&obj.name_any(), &params(), &Patch::Apply(obj))
        .await
}

/// The children every worker has: the ConfigMap first (the pods mount it), then the Deployment
/// and its Service together. Returns the Deployment as stored.
pub async fn apply_workload(
    client: &Client,
    config_map: &ConfigMap,
    deployment: &Deployment,
    service: &Service,
) -> Result<Deployment, kube::Error> {
    apply(client, config_map).await?;
    let (deployment, _) = tokio::try_join!(apply(client, deployment), apply(client, service))?;
    Ok(deployment)
}

/// Deletes a child if it exists.
pub async fn delete_if_present<K>(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Server-side applies the status subresource of a custom resource.
pub async fn apply_status<K>(
    client: &Client,
    obj: &K,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &params(), &Patch::Apply(body))
        .await
        .map(|_| ())
}
