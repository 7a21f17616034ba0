//! The inventory role's own routes: `/v1/status` on the shared admin router
//! ([`crate::process::admin`], which serves health, readiness and metrics), and savepoints on
//! the control port, which only the operator reaches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::engine::{Command, SharedStatus};
use super::savepoint::Written;
use crate::process::admin::error_response as error;

/// What `/readyz` says until the loop has partitions with restored state.
pub const NOT_READY: &str = "not ready: waiting for a partition assignment and state restore";

#[derive(Clone)]
pub struct ApiState {
    pub status: SharedStatus,
    pub commands: std::sync::mpsc::Sender<Command>,
    pub savepoints: Arc<Mutex<BTreeMap<String, SavepointProgress>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SavepointRequest {
    /// Savepoint id; the operator passes one so every worker writes into the same savepoint.
    pub id: Option<String>,
    /// Stop the worker (leave the group, exit 0) once the savepoint is written.
    pub stop: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointProgress {
    pub id: String,
    /// `InProgress`, `Completed` or `Failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Written>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The read-only routes to merge into the shared admin router.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .with_state(state)
}

/// The control routes, served on the control port behind
/// [`crate::process::admin::control_router`].
pub fn control_routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/savepoints", post(trigger_savepoint))
        .route("/v1/savepoints/{id}", get(savepoint_progress))
        .with_state(state)
}

async fn status(State(s): State<ApiState>) -> Response {
    match s.status.read() {
        Ok(st) => Json(st.clone()).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable"),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.')
}

async fn trigger_savepoint(
    State(s): State<ApiState>,
    body: Option<Json<SavepointRequest>>,
) -> Response {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let id = req.id.unwrap_or_else(|| {
        format!(
            "sp-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        )
    });
    if !valid_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "id: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'",
        );
    }
    let (reply, done) = tokio::sync::oneshot::channel();
    if let Ok(mut m) = s.savepoints.lock() {
        m.insert(
            id.clone(),
            SavepointProgress {
                id: id.clone(),
                state: "InProgress",
                result: None,
                error: None,
            },
        );
    }
    let cmd = Command::Savepoint {
        id: id.clone(),
        stop: req.stop,
        reply,
    };
    if s.commands.send(cmd).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the processing loop has stopped",
        );
    }
    let outcome = done
        .await
        .unwrap_or_else(|_| Err("the processing loop stopped".into()));
    let progress = match outcome {
        Ok(w) => SavepointProgress {
            id: id.clone(),
            state: "Completed",
            result: Some(w),
            error: None,
        },
        Err(e) => SavepointProgress {
            id: id.clone(),
            state: "Failed",
            result: None,
            error: Some(e),
        },
    };
    if let Ok(mut m) = s.savepoints.lock() {
        m.insert(id, progress.clone());
    }
    let code = if progress.error.is_some() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::CREATED
    };
    (code, Json(progress)).into_response()
}

async fn savepoint_progress(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let found = s.savepoints.lock().ok().and_then(|m| m.get(&id).cloned());
    match found {
        Some(p) => Json(p).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no savepoint {id} on this worker"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_ids_are_path_safe() {
        assert!(valid_id("sp-123_a.b"));
        for bad in ["", "../x", "a/b", ".hidden", "with space"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn routes_mount_on_the_shared_admin_router() {
        let (commands, _loop_end) = std::sync::mpsc::channel();
        let state = ApiState {
            status: SharedStatus::default(),
            commands,
            savepoints: Arc::default(),
        };
        // `merge` panics on a path both routers define, which would stop the worker at start.
        let _ = crate::process::admin::router(
            crate::process::Readiness::new(NOT_READY),
            prometheus::Registry::new(),
            routes(state),
        );
    }
}
