//! Reconciles against a mocked apiserver, as kube-rs's controller example tests them: kube's
//! `Client` over a `tower_test` mock service, and a verifier task that takes each request,
//! checks it against a script of the exact calls expected (method, path, query, content type,
//! body) and answers it. A request the script does not expect, a missing one, or one after
//! the script fails the test. No server runs; a reconcile takes milliseconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::{Context, Error};
use crate::metrics::Metrics;

type ApiHandle = Handle<Request<Body>, Response<Body>>;
type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// Longer than any mocked reconcile needs; only reached when a test is broken.
const TIMEOUT: Duration = Duration::from_secs(10);

const SSA: &str = "application/apply-patch+yaml";
const JSON_PATCH: &str = "application/json-patch+json";

/// Query of every server-side apply the operator makes: its one field manager, forced.
const SSA_QUERY: &[(&str, &str)] = &[("fieldManager", "kartflow-operator"), ("force", "true")];

/// How the verifier answers a call.
enum Reply {
    /// 200 with the request body, as the apiserver returns an applied object.
    Echo,
    /// 200 with `object` whose status is the request's: a status write returns the whole object.
    WithStatus(Value),
    /// A fixed status code and body.
    Json(StatusCode, Value),
}

/// One expected request and its answer.
pub(crate) struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, &'static str)>,
    content_type: Option<&'static str>,
    checks: Vec<BodyCheck>,
    reply: Reply,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, reply: Reply) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            content_type: None,
            checks: Vec::new(),
            reply,
        }
    }

    /// Also checks the request body (parsed JSON; `null` when empty).
    pub(crate) fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Answers with `object` instead.
    pub(crate) fn reply(mut self, object: Value) -> Self {
        self.reply = Reply::Json(StatusCode::OK, object);
        self
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn matches(&self, req: &Request<Body>) -> bool {
        req.method() == self.method && req.uri().path() == self.path
    }

    async fn answer(self, req: Request<Body>, send: SendResponse<Response<Body>>) {
        let what = self.describe();
        assert_eq!(
            req.method(),
            self.method,
            "expected {what}, got {:?}",
            req.uri()
        );
        assert_eq!(req.uri().path(), self.path, "expected {what}");
        let mut query: Vec<(String, String)> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        query.sort();
        let mut want: Vec<(String, String)> = self
            .query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        assert_eq!(query, want, "query of {what}");
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(ct) = self.content_type {
            assert_eq!(content_type.as_deref(), Some(ct), "content type of {what}");
        }
        let bytes = req
            .into_body()
            .collect_bytes()
            .await
            .expect("request body is readable");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        for check in self.checks {
            check(&body);
        }
        let (code, answer) = match self.reply {
            Reply::Echo => (StatusCode::OK, body),
            Reply::WithStatus(mut object) => {
                object["status"] = body["status"].clone();
                (StatusCode::OK, object)
            }
            Reply::Json(code, v) => (code, v),
        };
        let response = Response::builder()
            .status(code)
            .body(Body::from(
                serde_json::to_vec(&answer).expect("answer serializes"),
            ))
            .expect("response builds");
        send.send_response(response);
    }
}

/// `GET path`, answered with `object`.
pub(crate) fn get(path: impl Into<String>, object: Value) -> Call {
    Call::new(Method::GET, path, Reply::Json(StatusCode::OK, object))
}

/// `GET path` of an object that does not exist.
pub(crate) fn get_missing(path: impl Into<String>) -> Call {
    Call::new(Method::GET, path, not_found())
}

/// `POST collection` creating an object of `kind`; answered with what was sent.
pub(crate) fn create(collection: impl Into<String>, kind: &'static str) -> Call {
    Call::new(Method::POST, collection, Reply::Echo).body(move |b| {
        assert_eq!(b["kind"], kind, "{b}");
    })
}

/// `DELETE path`, background propagation.
pub(crate) fn delete(path: impl Into<String>) -> Call {
    Call::new(
        Method::DELETE,
        path,
        Reply::Json(
            StatusCode::OK,
            json!({"kind": "Status", "status": "Success"}),
        ),
    )
    .body(|b| {
        assert_eq!(b["propagationPolicy"], "Background", "{b}");
    })
}

fn not_found() -> Reply {
    Reply::Json(
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404
        }),
    )
}

/// Server-side apply of a child of kind `kind` with our field manager (forced), owned by the
/// custom resource `owner` (its kind); answered with what was sent.
pub(crate) fn apply(path: impl Into<String>, kind: &'static str, owner: &'static str) -> Call {
    let path = path.into();
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    let mut call = Call::new(Method::PATCH, path, Reply::Echo).body(move |b| {
        assert_eq!(b["kind"], kind, "{b}");
        assert_eq!(b["metadata"]["name"], name.as_str(), "{b}");
        let refs = &b["metadata"]["ownerReferences"];
        assert_eq!(refs[0]["kind"], owner, "{b}");
        assert_eq!(refs[0]["controller"], true, "{b}");
        assert_eq!(
            b["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kartflow-operator",
            "{b}"
        );
    });
    call.query = SSA_QUERY.to_vec();
    call.content_type = Some(SSA);
    call
}

/// Server-side apply by the operator's replicas hand-over field manager (forced) of `replicas`
/// alone, on the Deployment at `path`; answered with what was sent.
pub(crate) fn apply_replicas_handover(path: impl Into<String>, replicas: i64) -> Call {
    let mut call = Call::new(Method::PATCH, path, Reply::Echo).body(move |b| {
        assert_eq!(b["kind"], "Deployment", "{b}");
        assert_eq!(
            b["spec"],
            json!({"replicas": replicas}),
            "only the replicas: {b}"
        );
    });
    call.query = vec![
        ("fieldManager", "kartflow-operator-replicas-handover"),
        ("force", "true"),
    ];
    call.content_type = Some(SSA);
    call
}

/// Server-side apply of the status of `object` (a custom resource as JSON); answered with
/// `object` carrying the status sent.
pub(crate) fn apply_status(object: &Value) -> Call {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
    let mut call = Call::new(
        Method::PATCH,
        format!("{}/status", cr_path(object)),
        Reply::WithStatus(object.clone()),
    )
    .body(move |b| {
        assert_eq!(b["kind"], kind.as_str(), "{b}");
        assert_eq!(b["apiVersion"], api_version.as_str(), "{b}");
        assert!(b["status"].is_object(), "{b}");
        assert!(
            b.get("spec").is_none(),
            "a status write carries no spec: {b}"
        );
    });
    call.query = SSA_QUERY.to_vec();
    call.content_type = Some(SSA);
    call
}

/// `GET` of the status subresource of `object`, answered with `object`.
pub(crate) fn get_status(object: &Value) -> Call {
    get(format!("{}/status", cr_path(object)), object.clone())
}

/// An Event (events.k8s.io/v1) of `type_` (`Normal`, `Warning`) and `reason` about `object`,
/// reported by the operator.
pub(crate) fn event(object: &Value, type_: &'static str, reason: &'static str) -> Call {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut call = Call::new(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        Reply::Echo,
    )
    .body(move |b| {
        assert_eq!(b["type"], type_, "{b}");
        assert_eq!(b["reason"], reason, "{b}");
        assert_eq!(b["regarding"]["kind"], kind.as_str(), "{b}");
        assert_eq!(b["regarding"]["name"], name.as_str(), "{b}");
        assert_eq!(b["reportingController"], "kartflow-operator", "{b}");
    });
    call.content_type = Some("application/json");
    call
}

/// kube's finalizer helper adding `finalizer` to `object`, which has none: a JSON patch that
/// tests for no finalizers, then adds the list.
pub(crate) fn add_finalizer(object: &Value, finalizer: &'static str) -> Call {
    let mut answer = object.clone();
    answer["metadata"]["finalizers"] = json!([finalizer]);
    let mut call = Call::new(Method::PATCH, cr_path(object), Reply::Echo)
        .body(move |b| {
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
                ])
            );
        })
        .reply(answer);
    call.content_type = Some(JSON_PATCH);
    call
}

/// kube's finalizer helper removing `finalizer`, the first of `object`'s finalizers.
pub(crate) fn remove_finalizer(object: &Value, finalizer: &'static str) -> Call {
    let mut answer = object.clone();
    answer["metadata"]["finalizers"] = json!([]);
    let mut call = Call::new(Method::PATCH, cr_path(object), Reply::Echo)
        .body(move |b| {
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": finalizer},
                    {"op": "remove", "path": "/metadata/finalizers/0"},
                ])
            );
        })
        .reply(answer);
    call.content_type = Some(JSON_PATCH);
    call
}

/// The path of a kartflow custom resource given as JSON.
pub(crate) fn cr_path(object: &Value) -> String {
    let plural = match object["kind"].as_str() {
        Some("InventoryPipeline") => "inventorypipelines",
        Some("CdcSource") => "cdcsources",
        Some("ReadModel") => "readmodels",
        other => panic!("not a kartflow kind: {other:?}"),
    };
    format!(
        "/apis/kartflow.io/v1alpha1/namespaces/{}/{plural}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

enum Step {
    One(Call),
    /// Calls a reconcile makes concurrently (`try_join!`): in any order.
    AnyOrder(Vec<Call>),
}

/// The exact calls a reconcile must make, in order.
#[derive(Default)]
pub(crate) struct Script(Vec<Step>);

impl Script {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn then(mut self, call: Call) -> Self {
        self.0.push(Step::One(call));
        self
    }

    pub(crate) fn any_order(mut self, calls: impl IntoIterator<Item = Call>) -> Self {
        self.0.push(Step::AnyOrder(calls.into_iter().collect()));
        self
    }
}

/// Stands in for the apiserver: answers the script's calls, then requires that no other
/// call comes before the client is dropped.
async fn verify(mut handle: ApiHandle, script: Script) {
    for step in script.0 {
        match step {
            Step::One(call) => {
                let Some((req, send)) = handle.next_request().await else {
                    panic!("the reconcile ended without calling {}", call.describe());
                };
                call.answer(req, send).await;
            }
            Step::AnyOrder(mut calls) => {
                while !calls.is_empty() {
                    let Some((req, send)) = handle.next_request().await else {
                        let left: Vec<String> = calls.iter().map(Call::describe).collect();
                        panic!("the reconcile ended without calling {left:?}");
                    };
                    let Some(i) = calls.iter().position(|c| c.matches(&req)) else {
                        let left: Vec<String> = calls.iter().map(Call::describe).collect();
                        panic!(
                            "unexpected {} {}; expected one of {left:?}",
                            req.method(),
                            req.uri()
                        );
                    };
                    calls.swap_remove(i).answer(req, send).await;
                }
            }
        }
    }
    if let Some((req, _)) = handle.next_request().await {
        panic!(
            "unexpected call after the script: {} {}",
            req.method(),
            req.uri()
        );
    }
}

/// A reconcile's result and the metrics it recorded.
pub(crate) struct Reconciled {
    pub result: Result<Action, Error>,
    pub metrics: Metrics,
}

impl Reconciled {
    /// The value of the reconciles counter for `kind` and `result` (`ok`, `invalid`, `error`).
    pub(crate) fn reconciles(&self, kind: &str, result: &str) -> u64 {
        self.metrics
            .reconciles
            .with_label_values(&[kind, result])
            .get()
    }

    /// The value of the errors counter for `kind` and `reason`.
    pub(crate) fn errors(&self, kind: &str, reason: &str) -> u64 {
        self.metrics
            .reconcile_errors
            .with_label_values(&[kind, reason])
            .get()
    }
}

/// A Context over a mock apiserver, and the handle that answers for it.
fn mocked() -> (Arc<Context>, ApiHandle, Metrics) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Metrics::new();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, metrics.clone(), "test"));
    (ctx, handle, metrics)
}

/// Runs `reconcile` against an apiserver that expects exactly `script`.
pub(crate) async fn reconcile<F, Fut>(script: Script, reconcile: F) -> Reconciled
where
    F: FnOnce(Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let (ctx, handle, metrics) = mocked();
    let verifier = tokio::spawn(verify(handle, script));
    // The reconcile owns the only Context: when it ends, the client is gone and the verifier
    // sees the end of the requests.
    let result = tokio::time::timeout(TIMEOUT, reconcile(ctx)).await;
    match tokio::time::timeout(TIMEOUT, verifier).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("verifier: {e}"),
        Err(_) => panic!("the verifier still waits for a call"),
    }
    let result = result.expect("the reconcile finishes");
    Reconciled { result, metrics }
}

/// What the retry policy does after `err`, with a fresh back-off.
pub(crate) fn retry_after<K>(obj: K, err: &Error) -> Action
where
    K: kube::Resource<DynamicType = ()> + super::backoff::RetryCap,
{
    let (ctx, _handle, _) = mocked();
    super::backoff::error_policy(Arc::new(obj), err, ctx)
}

/// `object` (JSON) as the typed custom resource.
pub(crate) fn typed<K: serde::de::DeserializeOwned>(object: &Value) -> Arc<K> {
    Arc::new(serde_json::from_value(object.clone()).expect("fixture parses"))
}

/// The condition of `type_` in a status body.
pub(crate) fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}
