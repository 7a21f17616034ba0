//! The admin HTTP server every role runs: `/healthz`, `/readyz` driven by a readiness the role
//! sets, `/metrics` rendering the role's registry, and the role's own routes merged in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
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

/// The control token file cannot be used.
#[derive(Debug, Error)]
pub enum ControlTokenError {
    #[error("cannot read the control token file {path} (controlTokenFile): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the control token file {path} (controlTokenFile) is empty: the operator writes a token \
         into the Secret <pipeline>-control-token; check that it is mounted"
    )]
    Empty { path: PathBuf },
}

/// Who may call a role's control API (the routes that change state, like savepoints).
#[derive(Clone)]
pub enum ControlAccess {
    /// Every request carries `Authorization: Bearer <token>`.
    Token(Arc<str>),
    /// No token configured: loopback clients only (someone on the pod, the tests).
    LoopbackOnly,
}

impl std::fmt::Debug for ControlAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlAccess::Token(_) => "Token(<redacted>)",
            ControlAccess::LoopbackOnly => "LoopbackOnly",
        })
    }
}

impl ControlAccess {
    /// A token from `file` (surrounding whitespace ignored), loopback only without one.
    pub fn from_file(file: Option<&Path>) -> Result<Self, ControlTokenError> {
        let Some(path) = file else {
            return Ok(ControlAccess::LoopbackOnly);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ControlTokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ControlTokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(ControlAccess::Token(Arc::from(token)))
    }

    /// Whether a request from `peer` with this `Authorization` header may go on.
    fn admit(&self, peer: SocketAddr, authorization: Option<&str>) -> Result<(), Refusal> {
        match self {
            ControlAccess::Token(token) => {
                let given = authorization.and_then(|h| h.strip_prefix("Bearer "));
                if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
                    Ok(())
                } else {
                    Err(Refusal::NoToken)
                }
            }
            ControlAccess::LoopbackOnly if peer.ip().is_loopback() => Ok(()),
            ControlAccess::LoopbackOnly => Err(Refusal::NotLoopback(peer.ip())),
        }
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoToken,
    NotLoopback(std::net::IpAddr),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NoToken => {
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "the control API needs `Authorization: Bearer <token>` with the token of the \
                     Secret <pipeline>-control-token",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
            Refusal::NotLoopback(ip) => error_response(
                StatusCode::FORBIDDEN,
                format!(
                    "the control API answers loopback clients only when no controlTokenFile is \
                     configured (request from {ip})"
                ),
            ),
        }
    }
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role's control routes behind `access`. Serve it on its own port with [`serve`].
pub fn control_router(routes: Router, access: ControlAccess) -> Router {
    routes.layer(middleware::from_fn_with_state(access, authorize))
}

async fn authorize(
    State(access): State<ControlAccess>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match access.admit(peer, authorization) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
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
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            error!(error = %e, "admin API stopped");
        }
    });
    Ok(bound)
}

/// [`serve`], and when `listen` is one address of the pod (the operator renders
/// `$(POD_IP):port`) also loopback: `kubectl port-forward` connects to loopback inside the pod.
/// The loopback half is best effort: where pods share the host's network (the project's process
/// node) another pod may hold it already.
pub async fn serve_with_loopback(
    listen: SocketAddr,
    router: Router,
) -> Result<SocketAddr, AdminError> {
    let bound = serve(listen, router.clone()).await?;
    if let Some(lo) = loopback_twin(listen) {
        match serve(lo, router).await {
            Ok(_) => info!(listen = %lo, "also listening on loopback for kubectl port-forward"),
            Err(e) => info!(
                error = %e,
                "loopback not available (shared host network?); serving on {listen} only"
            ),
        }
    }
    Ok(bound)
}

/// The loopback address of `listen`'s family and port, unless `listen` already covers it.
pub fn loopback_twin(listen: SocketAddr) -> Option<SocketAddr> {
    let ip = listen.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    let lo = match ip {
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    };
    Some(SocketAddr::new(lo, listen.port()))
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
    fn loopback_twins_follow_the_family() {
        for (listen, want) in [
            ("10.1.2.3:8080", Some("127.0.0.1:8080")),
            ("[fd00::7]:8000", Some("[::1]:8000")),
            ("0.0.0.0:8080", None),
            ("[::]:8080", None),
            ("127.0.0.1:8080", None),
            ("[::1]:8080", None),
        ] {
            let listen: SocketAddr = listen.parse().expect("address");
            let got = loopback_twin(listen).map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{listen}");
        }
    }

    #[test]
    fn control_access_by_token_or_loopback() {
        let lo: SocketAddr = "127.0.0.1:5".parse().expect("address");
        let pod: SocketAddr = "10.1.2.3:5".parse().expect("address");
        let open = ControlAccess::LoopbackOnly;
        assert!(open.admit(lo, None).is_ok());
        let refused = open.admit(pod, None).expect_err("not loopback");
        assert_eq!(refused.into_response().status(), StatusCode::FORBIDDEN);
        let token = ControlAccess::Token(Arc::from("s3cret"));
        assert!(token.admit(pod, Some("Bearer s3cret")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            let r = token
                .admit(lo, wrong)
                .expect_err("a token is needed, also from loopback")
                .into_response();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
            assert_eq!(
                r.headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..])
            );
        }
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn control_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("kartflow-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "abc\n").expect("write");
        assert!(matches!(
            ControlAccess::from_file(Some(&file)),
            Ok(ControlAccess::Token(t)) if &*t == "abc"
        ));
        std::fs::write(&file, " \n").expect("write");
        let err = ControlAccess::from_file(Some(&file)).expect_err("empty");
        assert!(err.to_string().contains("controlTokenFile"), "{err}");
        let err = ControlAccess::from_file(Some(&dir.join("missing"))).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(matches!(
            ControlAccess::from_file(None),
            Ok(ControlAccess::LoopbackOnly)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_routes_answer_a_token_over_http() {
        let readiness = Readiness::new("not ready");
        let registry = Registry::new();
        let routes = control_router(
            Router::new().route("/v1/act", post(|| async { (StatusCode::ACCEPTED, "done") })),
            ControlAccess::Token(Arc::from("t0k")),
        );
        let (_runtime, port) = start(&readiness, &registry, routes);
        assert_eq!(
            request(port, "POST", "/v1/act", None).expect("no token").0,
            401
        );
        // Health and metrics stay open; only the control routes are guarded.
        assert_eq!(
            request(port, "GET", "/healthz", None).expect("healthz").0,
            200
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
