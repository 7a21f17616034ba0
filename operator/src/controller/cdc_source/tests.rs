//! Reconciles of a `CdcSource` against a mocked apiserver, on the branches that never reach
//! PostgreSQL: the finalizer, an invalid guard, a missing Secret, a TLS mode the guard cannot
//! speak, and deletion when the database need not (or cannot) be touched.

use std::error::Error as _;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{FINALIZER, reconcile};
use crate::controller::Error;
use crate::controller::testing::{
    self, Script, add_finalizer, apply, apply_status, condition, delete, event, get, get_missing,
    get_status, remove_finalizer, retry_after, typed,
};
use crate::crd::CdcSource;

const KIND: &str = "CdcSource";
const CONFIG_MAP: &str = "/api/v1/namespaces/shop/configmaps/orders-cdc-config";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/orders-cdc";
const SERVICE: &str = "/api/v1/namespaces/shop/services/orders-cdc";
const SECRET: &str = "/api/v1/namespaces/shop/secrets/pg-creds";

/// A source as the apiserver returns it, `spec` over the required minimum, with `finalizers`.
fn source(spec: Value, finalizers: &[&str]) -> Value {
    let mut full = json!({
        "image": "kartflow/worker:0.1.0",
        "postgres": {"host": "pg", "database": "shop", "credentialsSecretRef": {"name": "pg-creds"}},
        "publication": {"name": "kartflow_orders", "tables": ["public.order_items"]},
        "slot": {"name": "kartflow_orders"},
        "kafka": {"bootstrapServers": "kafka:9092"}
    });
    for (k, v) in spec.as_object().expect("spec object") {
        full[k] = v.clone();
    }
    json!({
        "apiVersion": "kartflow.io/v1alpha1",
        "kind": KIND,
        "metadata": {
            "name": "orders", "namespace": "shop", "uid": "uid-orders", "generation": 1,
            "finalizers": finalizers,
        },
        "spec": full,
    })
}

fn deleting(mut cdc: Value, status: Value) -> Value {
    cdc["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    cdc["status"] = status;
    cdc
}

/// The reader's children, applied before the guard needs the database.
fn children_applied(script: Script) -> Script {
    script
        .then(apply(CONFIG_MAP, "ConfigMap", KIND))
        .any_order([
            apply(DEPLOYMENT, "Deployment", KIND).body(|b| {
                assert_eq!(b["spec"]["replicas"], 1, "{b}");
            }),
            apply(SERVICE, "Service", KIND),
        ])
}

#[tokio::test]
async fn first_reconcile_only_adds_the_finalizer() {
    let cdc = source(json!({}), &[]);
    let script = Script::new().then(add_finalizer(&cdc, FINALIZER));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    assert_eq!(r.result.as_ref().expect("added"), &Action::await_change());
    assert_eq!(r.reconciles(KIND, "ok"), 1);
}

#[tokio::test]
async fn a_missing_secret_applies_the_reader_and_is_retried() {
    let cdc = source(json!({}), &[FINALIZER]);
    let script = children_applied(Script::new().then(get_status(&cdc)))
        .then(get_missing(SECRET))
        // A transient failure is evented too, at most every 10 minutes.
        .then(event(&cdc, "Warning", "DependencyMissing"))
        .then(apply_status(&cdc).body(|b| {
            let st = &b["status"];
            assert_eq!(st["phase"], "Degraded", "{st}");
            let reconciled = condition(st, "Reconciled");
            assert_eq!(reconciled["reason"], "DependencyMissing", "{st}");
            assert_eq!(
                reconciled["message"],
                "Secret shop/pg-creds (spec.postgres.credentialsSecretRef): not found: create it \
                 with keys username and password"
            );
        }));
    // No Event: nothing is wrong with the spec.
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    let err = r.result.as_ref().expect_err("no credentials");
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(r.errors(KIND, "DependencyMissing"), 1);
    assert_eq!(
        retry_after(typed::<CdcSource>(&cdc).as_ref().clone(), err),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn a_verifying_tls_mode_without_a_ca_fails_before_connecting() {
    let cdc = source(
        json!({"postgres": {"host": "pg", "database": "shop", "sslMode": "verify-full",
                            "credentialsSecretRef": {"name": "pg-creds"}}}),
        &[FINALIZER],
    );
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pg-creds", "namespace": "shop"},
        // kartflow / secret
        "data": {"username": "a2FydGZsb3c=", "password": "c2VjcmV0"}
    });
    // A spec the guard cannot serve: permanent, evented, not retried.
    let script = children_applied(Script::new().then(get_status(&cdc)))
        .then(get(SECRET, secret))
        .then(event(&cdc, "Warning", "InvalidSpec"))
        .then(apply_status(&cdc).body(|b| {
            let st = &b["status"];
            assert_eq!(st["phase"], "Failed", "{st}");
            assert_eq!(condition(st, "Reconciled")["reason"], "InvalidSpec", "{st}");
        }));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    let err = r.result.as_ref().expect_err("no CA to verify against");
    assert!(
        err.to_string()
            .starts_with("spec.postgres.caCert is required with sslMode verify-full"),
        "{err}"
    );
    assert_eq!(r.errors(KIND, "InvalidSpec"), 1);
}

#[tokio::test]
async fn an_invalid_guard_fails_permanently_without_touching_children() {
    let cdc = source(
        json!({"guard": {"warnRetainedWal": "3Gi", "dropRetainedWal": "2Gi"}}),
        &[FINALIZER],
    );
    let script = Script::new()
        .then(get_status(&cdc))
        .then(event(&cdc, "Warning", "InvalidSpec").body(|b| {
            assert_eq!(
                b["note"],
                "spec.guard.warnRetainedWal (3Gi) must be less than spec.guard.dropRetainedWal (2Gi)"
            );
        }))
        .then(apply_status(&cdc).body(|b| {
            let st = &b["status"];
            assert_eq!(st["phase"], "Failed", "{st}");
            assert_eq!(condition(st, "Reconciled")["reason"], "InvalidSpec", "{st}");
        }));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    let err = r.result.as_ref().expect_err("invalid");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(r.reconciles(KIND, "invalid"), 1);
    assert_eq!(
        retry_after(typed::<CdcSource>(&cdc).as_ref().clone(), err),
        Action::await_change()
    );
}

#[tokio::test]
async fn deleting_a_source_that_owns_nothing_keeps_the_slot_and_lets_go() {
    let cdc = deleting(
        source(json!({}), &[FINALIZER]),
        json!({"slotOwned": false, "publicationCreated": false}),
    );
    let script = Script::new()
        .then(get_status(&cdc))
        .then(event(&cdc, "Normal", "SlotKept").body(|b| {
            assert_eq!(b["action"], "Delete");
            assert_eq!(
                b["note"],
                "slot kartflow_orders was not created by kartflow and is left in place"
            );
        }))
        .then(remove_finalizer(&cdc, FINALIZER));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    assert_eq!(r.result.as_ref().expect("deleted"), &Action::await_change());
}

#[tokio::test]
async fn deleting_with_drop_on_delete_off_never_looks_at_the_database() {
    let cdc = deleting(
        source(
            json!({"slot": {"name": "kartflow_orders", "dropOnDelete": false}}),
            &[FINALIZER],
        ),
        json!({"slotOwned": true, "publicationCreated": true}),
    );
    let script = Script::new()
        .then(get_status(&cdc))
        .then(remove_finalizer(&cdc, FINALIZER));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    assert_eq!(r.result.as_ref().expect("deleted"), &Action::await_change());
}

#[tokio::test]
async fn deleting_an_owned_slot_without_credentials_keeps_the_finalizer() {
    let cdc = deleting(source(json!({}), &[FINALIZER]), json!({"slotOwned": true}));
    // The reader is stopped first; then the missing Secret ends the cleanup, and the finalizer
    // stays so the slot is not forgotten.
    let script = Script::new()
        .then(get_status(&cdc))
        .then(delete(DEPLOYMENT))
        .then(get_missing(SECRET));
    let r = testing::reconcile(script, |ctx| reconcile(typed(&cdc), ctx)).await;
    let err = r.result.as_ref().expect_err("cannot drop");
    assert!(
        matches!(err, Error::CleanupUnreachable { slot, .. } if slot == "kartflow_orders"),
        "{err:?}"
    );
    assert!(
        err.source()
            .is_some_and(|s| s.to_string().starts_with("Secret shop/pg-creds")),
        "the cause is kept: {err:?}"
    );
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(r.errors(KIND, "DependencyMissing"), 1);
}
