//! The admin HTTP server every role runs: `/healthz`, `/readyz` driven by a readiness the role
//! sets, `/metrics` rendering the role's registry, and the role's own routes merged in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kartflow_wire::telemetry;
use prometheus::Registry;
use serde::Serialize;
use thiserror::Error;
use tracing::{error, info};

#[derive(Debug, Error)]
#[error("admin API on {listen}: {source}")]
pub struct AdminError {
    pub listen: SocketAddr,
    pub source: std::io::Error,
}

/// Whether the role can take traffic, as `/readyz` reports it. Clones share the state.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug)]
struct ReadinessInner {
    ready: AtomicBool,
    not_ready: &'static str,
    /// A specific reason set while not ready (a missing replication slot, say); `not_ready`
    /// otherwise.
    reason: Mutex<Option<String>>,
}

impl Readiness {
    /// Starts not ready; until [`Readiness::set`] says otherwise `/readyz` answers 503 with
    /// `not_ready`, which should tell an operator what the role is waiting for.
    pub fn new(not_ready: &'static str) -> Self {
        Self {
            inner: Arc::new(ReadinessInner {
                ready: AtomicBool::new(false),
                not_ready,
                reason: Mutex::new(None),
            }),
        }
    }

    pub fn set(&self, ready: bool) {
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = None;
        }
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Not ready, and `/readyz` says why in `reason` until the next [`Readiness::set`].
    pub fn not_ready_because(&self, reason: impl Into<String>) {
        self.inner.ready.store(false, Ordering::Relaxed);
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = Some(reason.into());
        }
    }

    /// What `/readyz` answers while not ready.
    pub fn reason(&self) -> String {
        self.inner
            .reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| self.inner.not_ready.to_owned())
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// The error shape of every admin route: `{"error": "..."}` with `status`.
pub fn error_response(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    registry: Registry,
}

/// The admin router: the shared health, readiness and metrics routes plus the role's `routes`
/// (pass `Router::new()` for none; a route path both define is a programming error and panics).
pub fn router(readiness: Readiness, registry: Registry, routes: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            readiness,
            registry,
        })
        .merge(routes)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.readiness.is_ready() {
        "ready".into_response()
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, s.readiness.reason())
    }
}

async fn metrics(State(s): State<AdminState>) -> String {
    telemetry::render(&s.registry)
}

/// Binds `listen` and serves `router` on a task of the current runtime until the runtime shuts
/// down, so the admin API keeps answering while a role drains. Returns the bound address (port 0
/// picks one). From blocking code: `runtime.block_on(admin::serve(..))` on a multi-thread runtime
/// (a current-thread runtime would run the server only inside later `block_on` calls).
pub async fn serve(listen: SocketAddr, router: Router) -> Result<SocketAddr, AdminError> {
    let bind_error = |source| AdminError { listen, source };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    info!(listen = %bound, "admin API listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "admin API stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use kartflow_testkit::http::request;
    use prometheus::{IntCounter, Opts};

    use super::*;

    /// A server on a loopback port of its own runtime; the test thread makes blocking requests.
    fn start(
        readiness: &Readiness,
        registry: &Registry,
        routes: Router,
    ) -> (tokio::runtime::Runtime, u16) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let app = router(readiness.clone(), registry.clone(), routes);
        let bound = runtime
            .block_on(serve(SocketAddr::from(([127, 0, 0, 1], 0)), app))
            .expect("bind a loopback port");
        (runtime, bound.port())
    }

    #[test]
    fn health_readiness_metrics_and_role_routes() {
        let readiness = Readiness::new("not ready: waiting for the test");
        let registry = Registry::new_custom(Some("kartflow_test".into()), None).expect("registry");
        let counter = IntCounter::with_opts(Opts::new("things_total", "Things")).expect("counter");
        registry
            .register(Box::new(counter.clone()))
            .expect("register");
        counter.inc();
        let routes =
            Router::new().route("/v1/role", post(|| async { (StatusCode::CREATED, "role") }));
        let (_runtime, port) = start(&readiness, &registry, routes);

        assert_eq!(
            request(port, "GET", "/healthz", None).expect("healthz"),
            (200, "ok".into())
        );
        assert_eq!(
            request(port, "GET", "/readyz", None).expect("readyz"),
            (503, r#"{"error":"not ready: waiting for the test"}"#.into())
        );
        readiness.set(true);
        assert_eq!(
            request(port, "GET", "/readyz", None).expect("readyz"),
            (200, "ready".into())
        );
        readiness.set(false);
        assert_eq!(
            request(port, "GET", "/readyz", None).expect("readyz").0,
            503
        );
        readiness.not_ready_because("replication slot s does not exist");
        assert_eq!(
            request(port, "GET", "/readyz", None).expect("readyz"),
            (
                503,
                r#"{"error":"replication slot s does not exist"}"#.into()
            )
        );
        readiness.set(false);
        assert_eq!(
            readiness.reason(),
            "not ready: waiting for the test",
            "set() forgets a specific reason"
        );

        let (code, body) = request(port, "GET", "/metrics", None).expect("metrics");
        assert_eq!(code, 200);
        assert!(body.contains("kartflow_test_things_total 1"), "{body}");

        assert_eq!(
            request(port, "POST", "/v1/role", None).expect("role route"),
            (201, "role".into())
        );
        assert_eq!(
            request(port, "GET", "/v1/other", None)
                .expect("unknown route")
                .0,
            404
        );
    }

    #[test]
    fn a_taken_port_names_the_address() {
        let readiness = Readiness::new("not ready");
        let registry = Registry::new();
        let (runtime, port) = start(&readiness, &registry, Router::new());
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let err = runtime
            .block_on(serve(listen, router(readiness, registry, Router::new())))
            .expect_err("the port is taken");
        assert_eq!(err.listen, listen);
        assert!(
            err.to_string()
                .starts_with(&format!("admin API on {listen}: ")),
            "{err}"
        );
    }
}
