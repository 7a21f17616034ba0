//! REST on the `http` port: `GET /products` (filters, sort, cursor paging), `GET /products/{id}`
//! (ETag / If-None-Match), `GET /products/{id}/events`, `GET /alerts`, `GET /stats`, the
//! WebSocket route and the inventory page at `/` ([`super::page`]). Errors are RFC 9457 problem
//! details.
//!
//! Every view answer carries `Kartflow-Offsets`, the positions it reflects. A client that sends
//! them back as `Kartflow-Min-Offsets` (or `?minOffsets=`) to any replica gets an answer at least
//! that new: the replica waits up to [`MIN_OFFSETS_WAIT`] to reach them, else answers 503.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kartflow_wire::{AlertType, Severity};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::offsets::{MIN_OFFSETS_HEADER, OFFSETS_HEADER, Offsets};
use super::query::{self, ListQuery};
use super::render::{self, AlertFilter};
use super::shared::Shared;
use super::ws::{self, WsConfig};

/// How long a request with `Kartflow-Min-Offsets` waits for the view to reach them.
pub const MIN_OFFSETS_WAIT: Duration = Duration::from_secs(5);
const PROBLEM_BASE: &str = "https://kartflow.io/problems/";

#[derive(Clone)]
pub struct Api {
    pub shared: Arc<Shared>,
    pub ws: Option<Arc<WsConfig>>,
    pub connections: Arc<Semaphore>,
    pub read_model: Arc<str>,
    pub instance: Arc<str>,
}

/// The REST (and, when enabled, WebSocket) router.
pub fn router(api: Api) -> Router {
    let mut r = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/events", get(product_events))
        .route("/alerts", get(alerts))
        .route("/stats", get(stats))
        .merge(super::page::routes());
    if let Some(cfg) = &api.ws {
        r = r.route(&cfg.path, get(ws::upgrade));
    }
    r.fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), observe))
        .with_state(api)
}

/// Records the latency of every request by route template (never by raw path, which would
/// make one series per product id).
async fn observe(State(api): State<Api>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    api.shared
        .metrics
        .http_seconds
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// An RFC 9457 problem details response.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        type_: String,
        title: &'a str,
        status: u16,
        detail: String,
    }
    let body = serde_json::to_string(&Problem {
        type_: format!("{PROBLEM_BASE}{slug}"),
        title,
        status: status.as_u16(),
        detail: detail.into(),
    })
    .unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such resource",
        "routes: /products, /products/{id}, /products/{id}/events, /alerts, /stats",
    )
}

fn json(status: StatusCode, offsets: &Offsets, body: String) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    set_offsets(resp.headers_mut(), offsets);
    resp
}

fn set_offsets(headers: &mut HeaderMap, offsets: &Offsets) {
    if let Ok(v) = HeaderValue::from_str(&offsets.to_string()) {
        headers.insert(OFFSETS_HEADER, v);
    }
}

/// Waits until the view covers the offsets the client asked for (header or `minOffsets`).
async fn wait_for_offsets(
    shared: &Shared,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<(), Response> {
    let text = headers
        .get(MIN_OFFSETS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.get("minOffsets").cloned());
    let Some(text) = text else { return Ok(()) };
    let wanted = Offsets::parse(&text).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-offsets",
            "Invalid minimum offsets",
            e.to_string(),
        )
    })?;
    let mut changed = shared.subscribe();
    let deadline = tokio::time::Instant::now() + MIN_OFFSETS_WAIT;
    loop {
        if shared.read().offsets().covers(&wanted) {
            return Ok(());
        }
        let timed_out = tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err();
        if timed_out {
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "offsets-not-reached",
                "This replica has not reached the requested offsets yet",
                format!(
                    "waited {}s for {wanted}; retry, or ask another replica",
                    MIN_OFFSETS_WAIT.as_secs()
                ),
            );
            set_offsets(resp.headers_mut(), shared.read().offsets());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(resp);
        }
    }
}

async fn list_products(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = wait_for_offsets(&api.shared, &headers, &params).await {
        return resp;
    }
    let q = match ListQuery::from_params(&params) {
        Ok(q) => q,
        Err(e) => return bad_query(e.to_string()),
    };
    let view = api.shared.read();
    let page = query::list(&view, &q);
    let mut body = String::with_capacity(64 + page.items.len() * 400);
    body.push_str("{\"items\":[");
    for (i, (_, e)) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        if let Some(d) = &e.doc {
            render::write_product(&mut body, d.raw(), e.last_update);
        }
    }
    body.push_str("],\"count\":");
    body.push_str(&page.items.len().to_string());
    body.push_str(",\"nextCursor\":");
    match &page.next {
        Some(c) => {
            body.push('"');
            body.push_str(&c.encode());
            body.push('"');
        }
        None => body.push_str("null"),
    }
    body.push('}');
    json(StatusCode::OK, view.offsets(), body)
}

fn product_not_found(id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "product-not-found",
        "Product not found",
        format!("no product {id:?} in this replica's view (every replica holds every product)"),
    )
}

async fn get_product(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = wait_for_offsets(&api.shared, &headers, &params).await {
        return resp;
    }
    let (body, offsets) = {
        let view = api.shared.read();
        match view.get(&id).and_then(|(_, e)| render::product(e)) {
            Some(body) => (body, view.offsets().clone()),
            None => return product_not_found(&id),
        }
    };
    let etag = render::etag(&body);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        set_offsets(r.headers_mut(), &offsets);
        r
    } else {
        json(StatusCode::OK, &offsets, body)
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn product_events(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = wait_for_offsets(&api.shared, &headers, &params).await {
        return resp;
    }
    let view = api.shared.read();
    match view.get(&id) {
        Some((_, e)) => json(StatusCode::OK, view.offsets(), render::events(&id, e)),
        None => product_not_found(&id),
    }
}

/// A query value as one of the wire enums (case-insensitive), or the 400 problem's detail.
fn parse_enum<T: serde::de::DeserializeOwned>(param: &str, v: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(v.to_ascii_uppercase()))
        .map_err(|_| format!("query parameter {param}: {v:?} is not a known value"))
}

fn bad_query(detail: impl Into<String>) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "bad-query",
        "Invalid query parameter",
        detail,
    )
}

async fn alerts(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(resp) = wait_for_offsets(&api.shared, &headers, &params).await {
        return resp;
    }
    let mut filter = AlertFilter {
        limit: 100,
        product_id: params.get("productId").cloned(),
        ..AlertFilter::default()
    };
    if let Some(v) = params.get("severity") {
        match parse_enum::<Severity>("severity", v) {
            Ok(s) => filter.severity = Some(s),
            Err(detail) => return bad_query(detail),
        }
    }
    if let Some(v) = params.get("type") {
        match parse_enum::<AlertType>("type", v) {
            Ok(t) => filter.alert_type = Some(t),
            Err(detail) => return bad_query(detail),
        }
    }
    if let Some(v) = params.get("limit") {
        match v.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n)) {
            Some(n) => filter.limit = n,
            None => return bad_query("query parameter limit: must be between 1 and 10000"),
        }
    }
    let view = api.shared.read();
    let body = render::alerts(view.recent_alerts().iter().map(|a| &**a), &filter);
    json(StatusCode::OK, view.offsets(), body)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartitionStats {
    topic: String,
    partition: i32,
    position: Option<i64>,
    #[serde(flatten)]
    progress: super::shared::PartitionProgress,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    read_model: String,
    instance: String,
    ready: bool,
    products: usize,
    /// Estimated from sizes; see docs/read-model.md.
    view_bytes: usize,
    rss_bytes: Option<u64>,
    restore_seconds: Option<f64>,
    uptime_seconds: f64,
    websocket_clients: i64,
    offsets: String,
    partitions: Vec<PartitionStats>,
}

/// Resident set size of this process, from /proc (Linux).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

async fn stats(State(api): State<Api>) -> Response {
    let progress = api.shared.progress();
    let (products, view_bytes, offsets) = {
        let view = api.shared.read();
        (view.len(), view.approx_bytes(), view.offsets().clone())
    };
    api.shared
        .metrics
        .view_bytes
        .set(i64::try_from(view_bytes).unwrap_or(i64::MAX));
    let restore = api.shared.metrics.restore_seconds.get();
    let stats = Stats {
        read_model: api.read_model.to_string(),
        instance: api.instance.to_string(),
        ready: api.shared.readiness.is_ready(),
        products,
        view_bytes,
        rss_bytes: rss_bytes(),
        restore_seconds: (restore > 0.0).then_some(restore),
        uptime_seconds: api.shared.started.elapsed().as_secs_f64(),
        websocket_clients: api.shared.metrics.ws_clients.get(),
        offsets: offsets.to_string(),
        partitions: progress
            .into_iter()
            .map(|((topic, partition), progress)| PartitionStats {
                position: offsets.get(&topic, partition),
                topic,
                partition,
                progress,
            })
            .collect(),
    };
    let body = serde_json::to_string(&stats).unwrap_or_default();
    json(StatusCode::OK, &offsets, body)
}
