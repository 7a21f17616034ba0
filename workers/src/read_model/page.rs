//! The inventory page at `/`: a small dashboard served from assets compiled into the binary (no
//! build step, no CDN). Products arrive over the replica's own WebSocket, alerts and the
//! watermark from its REST routes.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::http::Api;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Scripts and styles from this origin only; the WebSocket back to it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; \
                   frame-ancestors 'none'";

/// `/`, `/page/app.js` and `/page/app.css`.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(index))
        .route(
            "/page/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/page/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

async fn index(State(api): State<Api>) -> Response {
    let ws = api.ws.as_ref().map(|c| c.path.as_str()).unwrap_or_default();
    asset("text/html; charset=utf-8", &index_html(ws))
}

/// The page with the WebSocket path it connects to (empty: the page polls instead). The path
/// comes from the config; anything but a plain path is left out rather than escaped.
pub fn index_html(ws_path: &str) -> String {
    let plain = ws_path.starts_with('/')
        && ws_path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    INDEX.replace("{{WS_PATH}}", if plain { ws_path } else { "" })
}

fn asset(content_type: &'static str, body: &str) -> Response {
    let mut r = body.to_owned().into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_websocket_and_only_plain_paths() {
        assert!(index_html("/ws").contains(r#"data-ws="/ws""#));
        assert!(index_html("/live/v1").contains(r#"data-ws="/live/v1""#));
        for odd in ["", "ws", "/a\"b", "/<x>", "/a b"] {
            assert!(index_html(odd).contains(r#"data-ws="""#), "{odd:?}");
        }
        assert!(
            !INDEX.contains("http://") && !INDEX.contains("https://"),
            "no CDN"
        );
        assert!(SCRIPT.contains("textContent") && !SCRIPT.contains("innerHTML"));
    }
}
