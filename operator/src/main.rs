//! `kartflow-operator`: reconciles kartflow's custom resources into workloads.
//!
//! Every replica serves `/metrics`, `/healthz` and `/readyz`; only the holder of the leader Lease
//! runs the controllers. Losing the Lease ends the process (the kubelet restarts it as a standby),
//! because a replica that might still be writing must not keep going.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use kartflow_operator::children::control::ControlPeer;
use kartflow_operator::controller::{self, Context};
use kartflow_operator::http::{self, Health};
use kartflow_operator::leader::{self, LeaderSettings};
use kartflow_operator::metrics::Metrics;
use kube::Client;

#[derive(Debug, Parser)]
#[command(name = "kartflow-operator", version, about)]
struct Cli {
    /// Address of /metrics, /healthz and /readyz (an IPv6 address without brackets, as
    /// `$(POD_IP):8080` expands on an IPv6 cluster, is taken too).
    #[arg(long, env = "KARTFLOW_METRICS_LISTEN", default_value = "0.0.0.0:8080",
          value_parser = kartflow_wire::config::parse_listen)]
    metrics_listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "KARTFLOW_LEASE_NAME", default_value = "kartflow-operator")]
    lease_name: String,
    /// Namespace of the Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (the pod name); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A standby takes over at most this long after the leader stopped renewing.
    #[arg(long, env = "KARTFLOW_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Only reconcile objects in these namespaces, comma-separated (empty: all namespaces).
    #[arg(long, env = "KARTFLOW_WATCH_NAMESPACES", default_value = "")]
    watch_namespaces: String,
    /// Labels selecting this operator's pods (`k=v,k=v`): workers' NetworkPolicies open their
    /// control port to these pods in the operator's namespace. Empty: no NetworkPolicies.
    #[arg(long, env = "KARTFLOW_OPERATOR_POD_SELECTOR", default_value = "")]
    operator_pod_selector: String,
    /// Log format on stderr; the level comes from KARTFLOW_LOG (default info).
    #[arg(long, value_enum, env = "KARTFLOW_LOG_FORMAT", default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// The operator's own pods as the workers' NetworkPolicies name them; none without a selector.
fn control_peer(selector: &str, namespace: &str) -> Result<Option<ControlPeer>, String> {
    let pod_labels = ControlPeer::parse_labels(selector)
        .map_err(|e| format!("KARTFLOW_OPERATOR_POD_SELECTOR: {e}"))?;
    if pod_labels.is_empty() {
        tracing::warn!(
            "no KARTFLOW_OPERATOR_POD_SELECTOR: workers get no NetworkPolicy (their control \
             API still needs its token)"
        );
        return Ok(None);
    }
    Ok(Some(ControlPeer {
        namespace: namespace.to_owned(),
        pod_labels,
    }))
}

fn main() -> ExitCode {
    kartflow_wire::pg_tls::install_default_provider();
    let cli = Cli::parse();
    kartflow_wire::telemetry::init(matches!(cli.log_format, LogFormat::Json));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kartflow-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            eprintln!("kartflow-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    // Unique per process, as controller-runtime does: a restarted container of the same pod must
    // not inherit the Lease its dead predecessor held, it waits like any standby.
    let pod = cli
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kartflow-operator".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id();
    let identity = format!("{pod}_{nonce:08x}");
    let metrics = Metrics::new();
    let health = Health::default();
    http::serve(cli.metrics_listen, health.clone(), metrics.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (--metrics-listen): {e}",
                cli.metrics_listen
            )
        })?;

    let client = Client::try_default().await.map_err(|e| {
        format!(
            "cannot build a Kubernetes client: {e}. In a pod this uses the service account; \
             outside, KUBECONFIG or ~/.kube/config"
        )
    })?;
    client.apiserver_version().await.map_err(|e| {
        format!("the Kubernetes apiserver does not answer: {e}. Check the network and KUBECONFIG")
    })?;
    health.set_ready(true);

    let settings = LeaderSettings {
        lease_name: cli.lease_name,
        namespace: cli.lease_namespace,
        identity: identity.clone(),
        duration_seconds: cli.lease_duration_seconds,
    };
    let mut election = leader::start(client.clone(), &settings)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        identity = %identity,
        lease = %format!("{}/{}", settings.namespace, settings.lease_name),
        "waiting for the leader Lease"
    );
    loop {
        if *election.leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = election.leading.changed() => {
                if changed.is_err() {
                    return Err("leader election stopped before this replica led".into());
                }
            }
            _ = shutdown_signal() => {
                tracing::info!("stopping while on standby");
                return Ok(());
            }
        }
    }
    tracing::info!(identity = %identity, "leading: starting the controllers");
    metrics.leader.set(1);

    let namespaces = controller::namespaces(&cli.watch_namespaces);
    let client_for_watchdog = client.clone();
    let mut ctx = Context::new(client.clone(), metrics.clone(), &identity);
    ctx.leadership = Some(leader::LeaseCheck::new(client, &settings));
    ctx.control_peer = control_peer(&cli.operator_pod_selector, &settings.namespace)?;
    let ctx = Arc::new(ctx);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let stop = futures::FutureExt::shared(Box::pin(stop));
    let mut controllers = tokio::spawn(controller::run(ctx, namespaces, stop));

    let lost = async {
        loop {
            if election.leading.changed().await.is_err() || !*election.leading.borrow() {
                return "the election reported the Lease lost".to_owned();
            }
        }
    };
    let outcome = tokio::select! {
        reason = lost => Err(reason),
        reason = leader::watch_lease(client_for_watchdog, &settings) => Err(reason),
        ended = &mut controllers => {
            // The controllers only end when asked to: anything else is a bug (a panic). The
            // liveness probe says so until the process exits.
            health.set_failed();
            Err(format!("the controllers ended unexpectedly ({ended:?})"))
        }
        _ = shutdown_signal() => Ok(()),
    };
    let outcome = outcome.map_err(|reason| {
        format!("stopped leading: {reason}; exiting so a fresh process starts as a standby")
    });
    metrics.leader.set(0);
    if outcome.is_err() {
        // Another replica may lead already: a reconcile still running here must not finish.
        controllers.abort();
    } else {
        let _ = stop_tx.send(true);
        if let Err(e) = controllers.await {
            tracing::warn!(error = %e, "controllers ended abnormally");
        }
    }
    // Dropping the receiver makes the election task release the Lease: the standby takes over
    // immediately instead of after the lease duration.
    drop(election.leading);
    match tokio::time::timeout(std::time::Duration::from_secs(5), election.task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
        other => tracing::warn!(
            ?other,
            "could not release the leader Lease; it expires on its own"
        ),
    }
    outcome
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
