//! End-to-end test support for the local Kubernetes cluster (`make cluster-up`): a client with
//! a clear failure when the cluster is down, a unique namespace per test that is deleted
//! afterwards, and waiting with a deadline that says what it waited for.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
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
    // The workspace build enables both of rustls's providers (ring for kube, aws-lc-rs for the
    // worker's S3 client): kube's client needs the process default chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    /// Deletes the namespace and waits until it is gone, so nothing of it is left for the next
    /// test (an operator started later would otherwise find its objects mid-deletion).
    pub async fn delete_and_wait(self) {
        let api = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        self.delete().await;
        wait_for(
            &format!("namespace {name} deleted"),
            Duration::from_secs(120),
            || async { api.get_opt(&name).await.ok()?.is_none().then_some(()) },
        )
        .await;
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

/// The repository root (testkit lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the local cluster (`kubectl`, `helm`, ...), as `hack/cluster/env.sh --plain`
/// locates them.
///
/// # Panics
/// When the cluster tooling has not been built, saying how to build it.
pub fn tool(name: &str) -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("hack/cluster/env.sh"))
        .arg("--plain")
        .output()
        .unwrap_or_else(|e| panic!("running hack/cluster/env.sh: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("CLUSTER_BIN_DIR="))
        .unwrap_or_else(|| panic!("hack/cluster/env.sh printed no CLUSTER_BIN_DIR: {text}"));
    let path = Path::new(dir).join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `make cluster-build` (make test does)",
        path.display()
    );
    path
}

/// Runs a tool of the local cluster (`kubectl`, `helm`, ...) against it (`KUBECONFIG` set):
/// its stdout, or what failed with the tool's stderr.
pub fn run(name: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(tool(name))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .map_err(|e| format!("running {name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `helm install RELEASE charts/kartflow -n NAMESPACE --create-namespace --wait` with text logs
/// and the `sets` (`key=value`) given: the one way the cluster e2es install the operator.
pub fn install_chart(release: &str, namespace: &str, sets: &[&str]) -> Result<String, String> {
    let chart = repo_root().join("charts/kartflow");
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "install",
        release,
        chart.as_ref(),
        "-n",
        namespace,
        "--create-namespace",
        "--set",
        "logFormat=text",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(["--wait", "--timeout", "180s"]);
    run("helm", &args)
}

/// `helm uninstall RELEASE -n NAMESPACE --ignore-not-found`, with `--wait` when `wait`: the
/// clean-up before and after the cluster e2es, where an absent release is fine.
pub fn uninstall_chart(release: &str, namespace: &str, wait: bool) -> Result<String, String> {
    let mut args = vec!["uninstall", release, "-n", namespace];
    if wait {
        args.push("--wait");
    }
    args.push("--ignore-not-found");
    run("helm", &args)
}

/// Fails clearly when the process node would run a worker without the `role` subcommand: the
/// node agent maps `kartflow/worker` to `<its cargo target dir>/debug/kartflow-worker`, which is
/// another worktree's build when the cluster was started from there.
///
/// # Panics
/// When the node agent is not running or its worker binary lacks `role`, saying what to do.
pub fn require_node_worker(role: &str) {
    let dev = std::env::var("KARTFLOW_DEV_DIR").unwrap_or_else(|_| "/tmp/kartflow-dev".into());
    let args =
        std::fs::read_to_string(format!("{dev}/cluster/run/nodeagent.args")).unwrap_or_else(|e| {
            panic!("the local cluster's node agent is not running ({e}): make cluster-up")
        });
    let target = args
        .split(['\0', '\n'])
        .find_map(|a| a.strip_prefix("--cargo-target-dir="))
        .unwrap_or("target")
        .to_owned();
    let bin = format!("{target}/debug/kartflow-worker");
    let ok = std::process::Command::new(&bin)
        .args([role, "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the cluster's node runs kartflow/worker as {bin}, which has no {role} subcommand: build \
         this tree there (cargo build with CARGO_TARGET_DIR={target}) or restart the node agent \
         from this tree (hack/cluster/down.sh, then hack/cluster/up.sh with this tree's \
         CARGO_TARGET_DIR)"
    );
}

/// Runs a Kafka command-line tool of the local stack (`hack/kafka/kafka.sh cli ARGS`), feeding
/// it `stdin`: what failed, with the tool's stderr.
pub fn kafka_cli(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let script = repo_root().join("hack/kafka/kafka.sh");
    let mut child = Command::new(script)
        .arg("cli")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("hack/kafka/kafka.sh cli: {e}"))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| format!("feeding the Kafka tool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("Kafka tool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kafka.sh cli {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `*.yaml` files of `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Server-side applies every CRD in `dir` and waits until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("kartflow-tests").force();
    for file in yaml_files(dir) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", file.display()));
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", file.display()));
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let c = crds.get(&name).await.ok()?;
                    c.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}
