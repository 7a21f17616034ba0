//! End-to-end test support for the local Kubernetes cluster (`make cluster-up`): a client with
//! a clear failure when the cluster is down, a unique namespace per test that is deleted
//! afterwards, and waiting with a deadline that says what it waited for.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

const HOW_TO_START: &str = "start the local cluster with `make cluster-up` (`make test` does this \
     itself), or point KUBECONFIG at another cluster";

/// The kubeconfig the tests use: `KUBECONFIG`, else the local cluster's admin kubeconfig.
pub fn kubeconfig_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let dev = std::env::var_os("KARTFLOW_DEV_DIR").unwrap_or_else(|| "/tmp/kartflow-dev".into());
    PathBuf::from(dev).join("cluster/admin.kubeconfig")
}

/// A client for the cluster, after checking the apiserver answers.
///
/// # Panics
/// When the kubeconfig is missing or the apiserver does not answer, saying how to start it.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read kubeconfig {}: {e}.\nThis test needs a cluster: {HOW_TO_START}.",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {} is not usable: {e}", path.display()));
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"));
    if let Err(e) = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| "no answer within 10 s".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        panic!(
            "the Kubernetes apiserver of {} is not reachable: {e}.\n{HOW_TO_START}.",
            path.display()
        );
    }
    client
}

/// A namespace owned by one test; call [`TestNamespace::delete`] at the end (a panicking test
/// leaves it for inspection, named after the test).
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = crate::unique_name(prefix).replace('_', "-").to_lowercase();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kartflow.io/test": "true"}}
        }))
        .unwrap_or_else(|e| panic!("namespace object: {e}"));
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self {
            name,
            client: client.clone(),
        }
    }

    pub async fn delete(self) {
        if let Err(e) = Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            eprintln!("deleting test namespace {}: {e}", self.name);
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
