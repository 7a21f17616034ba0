//! The operator's HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for the
//! kubelet. A standby replica is healthy and ready: it is waiting for the Lease, not broken.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the probes report, shared with the rest of the process.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Health {
    /// The apiserver answered and the process is either leading or standing by.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Something the process cannot recover from; the liveness probe restarts it.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: Metrics,
}

pub fn router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics })
}

/// Binds `addr` and serves until the process ends.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health, metrics)).await {
            tracing::error!(error = %e, "the metrics and health server stopped");
        }
    }))
}

async fn metrics_text(State(s): State<AppState>) -> String {
    s.metrics.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "failed\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.ready.load(Ordering::Relaxed) && !s.health.failed.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
