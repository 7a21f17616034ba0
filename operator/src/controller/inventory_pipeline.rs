//! `InventoryPipeline` → worker ConfigMap, Deployment and Service, the control token Secret
//! (made when a worker spec rolls out) and, when the operator knows its own pods, the control
//! port's NetworkPolicy.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::rollout::{self, rollout};
use super::status::{Cond, READY, reconciled};
use super::trigger::controller_for;
use super::{Context, Error, apply};
use crate::children;
use crate::crd::{InventoryPipeline, InventoryPipelineStatus};

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<InventoryPipeline> {
    controller_for(client, ns, &children)
}

#[tracing::instrument(skip_all, fields(namespace = ip.namespace(), name = %ip.name_any()))]
pub async fn reconcile(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    observe("InventoryPipeline", ip.clone(), ctx.clone(), run(ip, ctx)).await
}

async fn run(ip: Arc<InventoryPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = ip.status.clone().unwrap_or_default();
    let children = match children::inventory_pipeline(&ip) {
        Ok(c) => c,
        Err(e) => return Err(report_failure(ip.as_ref(), &ctx, previous, e.into()).await),
    };
    if let Err(e) = bootstrap_present(&ip, &ctx).await {
        return Err(report_failure(ip.as_ref(), &ctx, previous, e).await);
    }
    // A new worker spec (the first included) makes sure the token Secret its pods mount exists;
    // checked alongside the ConfigMap so a rollout waits one round trip, not two.
    let rolling = previous.deployed_spec_hash.as_deref() != Some(children.spec_hash.as_str());
    let applied = async {
        let token = async {
            if rolling {
                ensure_control_token(&ip, &ctx, &children.control_token_secret).await
            } else {
                Ok(())
            }
        };
        let config = async {
            apply::apply(&ctx.client, &children.config_map)
                .await
                .map_err(Error::from)
        };
        tokio::try_join!(token, config)?;
        let policy = async {
            match &ctx.control_peer {
                Some(peer) => {
                    let np = children::inventory_pipeline::network_policy(&ip, peer)?;
                    apply::apply(&ctx.client, &np).await?;
                    Ok::<_, Error>(())
                }
                None => Ok(()),
            }
        };
        let (deployment, _, ()) = tokio::try_join!(
            async {
                apply::apply(&ctx.client, &children.deployment)
                    .await
                    .map_err(Error::from)
            },
            async {
                apply::apply(&ctx.client, &children.service)
                    .await
                    .map_err(Error::from)
            },
            policy,
        )?;
        Ok::<_, Error>(deployment)
    }
    .await;
    let deployment = match applied {
        Ok(d) => d,
        Err(e) => return Err(report_failure(ip.as_ref(), &ctx, previous, e).await),
    };

    let desired = if ip.spec.suspend {
        0
    } else {
        ip.spec.parallelism
    };
    let (ready, replicas, rolled_out) = rollout(&deployment, desired);
    let (phase, ready_cond) = if ip.spec.suspend {
        (
            "Suspended",
            Cond::new(
                READY,
                replicas == 0,
                "Suspended",
                "spec.suspend is true: no workers run",
            ),
        )
    } else if rolled_out {
        (
            "Running",
            Cond::new(
                READY,
                true,
                "WorkersReady",
                format!("{ready}/{desired} workers ready"),
            ),
        )
    } else if let Some(crashing) = rollout::crash_condition(&ctx.client, &deployment).await? {
        ("Degraded", crashing)
    } else {
        (
            "Progressing",
            Cond::new(
                READY,
                false,
                "WorkersNotReady",
                format!(
                    "{ready}/{desired} workers ready; see kubectl get pods -l app.kubernetes.io/instance={}",
                    ip.name_any()
                ),
            ),
        )
    };
    if previous.deployed_spec_hash.as_deref() != Some(children.spec_hash.as_str()) {
        ctx.event(
            ip.as_ref(),
            false,
            "Deployed",
            "Apply",
            format!(
                "worker spec {} applied: {desired} worker(s) of {}",
                short(&children.spec_hash),
                ip.spec.image
            ),
        )
        .await;
    }
    let generation = ip.metadata.generation;
    let status = InventoryPipelineStatus {
        common: reconciled(&previous.common, generation, phase, vec![ready_cond]),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        deployed_spec_hash: Some(children.spec_hash),
        ..previous
    };
    if ip.status.as_ref() != Some(&status) {
        apply::apply_status(&ctx.client, ip.as_ref(), &status).await?;
    }
    Ok(Action::requeue(if rolled_out {
        std::time::Duration::from_secs(300)
    } else {
        rollout::NOT_READY_RECHECK
    }))
}

/// The products ConfigMap must exist with its key, or the workers would hang in
/// ContainerCreating with only a kubelet Event saying why.
async fn bootstrap_present(ip: &InventoryPipeline, ctx: &Context) -> Result<(), Error> {
    let Some(b) = &ip.spec.bootstrap_products else {
        return Ok(());
    };
    let ns = ip.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let what = format!("ConfigMap {ns}/{} (spec.bootstrapProducts)", b.name);
    match api.get_opt(&b.name).await? {
        None => Err(Error::Dependency {
            what,
            problem: format!(
                "not found: create it with the products file under the key {:?}",
                b.key
            ),
        }),
        Some(cm) => {
            let has = cm.data.as_ref().is_some_and(|d| d.contains_key(&b.key))
                || cm
                    .binary_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&b.key));
            if has {
                Ok(())
            } else {
                Err(Error::Dependency {
                    what,
                    problem: format!("has no key {:?}", b.key),
                })
            }
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The workers' control token Secret: created once with a new token, an existing one kept.
async fn ensure_control_token(
    ip: &InventoryPipeline,
    ctx: &Context,
    secret: &str,
) -> Result<(), Error> {
    let ns = ip.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if secrets.get_opt(secret).await?.is_some() {
        return Ok(());
    }
    let token = children::control::new_token().map_err(|e| Error::Dependency {
        what: "the operator's random source".into(),
        problem: format!("cannot make a control token: {e}"),
    })?;
    let desired = children::inventory_pipeline::control_token(ip, token)?;
    match secrets.create(&PostParams::default(), &desired).await {
        Ok(_) => Ok(()),
        // Another reconcile made it first: keep that token.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::controller::testing::{
        self, Call, Script, apply, apply_status, condition, create, event, get, get_missing,
        retry_after, typed,
    };

    const KIND: &str = "InventoryPipeline";
    const CONFIG_MAP: &str = "/api/v1/namespaces/prod/configmaps/shop-worker-config";
    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/prod/deployments/shop-worker";
    const SERVICE: &str = "/api/v1/namespaces/prod/services/shop-worker";
    const SECRETS: &str = "/api/v1/namespaces/prod/secrets";
    const TOKEN: &str = "/api/v1/namespaces/prod/secrets/shop-worker-control-token";

    /// A pipeline as the apiserver returns it, `spec` over the required minimum.
    fn pipeline(generation: i64, spec: Value) -> Value {
        let mut full = json!({
            "image": "kartflow/worker:0.1.0",
            "kafka": {"bootstrapServers": "kafka:9092"}
        });
        for (k, v) in spec.as_object().expect("spec object") {
            full[k] = v.clone();
        }
        json!({
            "apiVersion": "kartflow.io/v1alpha1",
            "kind": KIND,
            "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop", "generation": generation},
            "spec": full,
        })
    }

    fn spec_hash(ip: &Value) -> String {
        children::inventory_pipeline(&typed::<InventoryPipeline>(ip))
            .expect("builds")
            .spec_hash
    }

    /// The calls of applying the worker children; the Deployment rolls out `hash`.
    /// The control token Secret exists: kept as it is.
    fn children_applied(script: Script, hash: String) -> Script {
        let token = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "shop-worker-control-token", "namespace": "prod"},
            "data": {"token": "c2VjcmV0"}});
        workload_applied(script, vec![get(TOKEN, token)], hash)
    }

    /// The ConfigMap and the `token` calls (any order), then the Deployment and Service.
    fn workload_applied(script: Script, token: Vec<Call>, hash: String) -> Script {
        let config = apply(CONFIG_MAP, "ConfigMap", KIND).body(|b| {
            assert!(b["data"]["config.json"].is_string(), "{b}");
        });
        script
            .any_order(token.into_iter().chain([config]))
            .any_order([
                apply(DEPLOYMENT, "Deployment", KIND).body(move |b| {
                    let template = &b["spec"]["template"];
                    assert_eq!(
                        template["metadata"]["annotations"]["kartflow.io/spec-hash"],
                        hash.as_str(),
                        "{b}"
                    );
                }),
                apply(SERVICE, "Service", KIND),
            ])
    }

    #[tokio::test]
    async fn first_reconcile_applies_the_children_then_reports_deployed() {
        let ip = pipeline(1, json!({"parallelism": 2}));
        let hash = spec_hash(&ip);
        let short = hash[..12].to_owned();
        // A first reconcile makes the control token: 64 hex digits, owned by the pipeline.
        let make_token = create(SECRETS, "Secret").body(|b| {
            let token = b["stringData"]["token"].as_str().unwrap_or_default();
            assert_eq!(token.len(), 64, "{b}");
            assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{b}");
            assert_eq!(b["metadata"]["name"], "shop-worker-control-token", "{b}");
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], KIND, "{b}");
        });
        let script = workload_applied(
            Script::new(),
            vec![get_missing(TOKEN), make_token],
            hash.clone(),
        )
        .then(event(&ip, "Normal", "Deployed").body(move |b| {
            assert_eq!(b["action"], "Apply");
            assert_eq!(
                b["note"],
                format!("worker spec {short} applied: 2 worker(s) of kartflow/worker:0.1.0"),
            );
        }))
        .then(apply_status(&ip).body(move |b| {
            let st = &b["status"];
            assert_eq!(st["phase"], "Progressing", "{st}");
            assert_eq!(st["observedGeneration"], 1, "{st}");
            assert_eq!(st["deployedSpecHash"], hash.as_str(), "{st}");
            assert_eq!(
                (&st["replicas"], &st["readyReplicas"]),
                (&json!(0), &json!(0))
            );
            assert_eq!(condition(st, "Reconciled")["status"], "True", "{st}");
            let ready = condition(st, "Ready");
            assert_eq!(
                (&ready["status"], &ready["reason"]),
                (&json!("False"), &json!("WorkersNotReady"))
            );
            assert_eq!(ready["observedGeneration"], 1, "{st}");
        }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&ip), ctx)).await;
        assert_eq!(
            r.result.as_ref().expect("reconciles"),
            // Not ready yet: looked at again soon, a crash loop would not trigger a reconcile.
            &Action::requeue(super::rollout::NOT_READY_RECHECK)
        );
        assert_eq!(r.reconciles(KIND, "ok"), 1);
    }

    #[tokio::test]
    async fn a_spec_change_rolls_the_workers_and_records_the_new_hash() {
        let before = pipeline(1, json!({}));
        let old_hash = spec_hash(&before);
        let mut ip = pipeline(2, json!({"image": "kartflow/worker:0.2.0"}));
        ip["status"] = json!({
            "phase": "Running",
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "WorkersReady", "message": "1/1 workers ready",
                 "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "Reconciled", "status": "True", "reason": "Applied",
                 "message": "children are up to date with the spec",
                 "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
            "replicas": 1,
            "readyReplicas": 1,
            "deployedSpecHash": old_hash,
        });
        let hash = spec_hash(&ip);
        assert_ne!(hash, old_hash, "the image is part of the hash");
        let short = hash[..12].to_owned();
        let script = children_applied(Script::new(), hash.clone())
            .then(event(&ip, "Normal", "Deployed").body(move |b| {
                assert_eq!(
                    b["note"],
                    format!("worker spec {short} applied: 1 worker(s) of kartflow/worker:0.2.0"),
                );
            }))
            .then(apply_status(&ip).body(move |b| {
                let st = &b["status"];
                assert_eq!(st["deployedSpecHash"], hash.as_str(), "{st}");
                assert_eq!(st["observedGeneration"], 2, "{st}");
                assert_eq!(st["phase"], "Progressing", "{st}");
                let reconciled = condition(st, "Reconciled");
                assert_eq!(reconciled["observedGeneration"], 2, "{st}");
                assert_eq!(
                    reconciled["lastTransitionTime"], "2025-01-01T00:00:00Z",
                    "Reconciled stayed True: its transition time stays"
                );
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&ip), ctx)).await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    #[tokio::test]
    async fn an_unchanged_pipeline_applies_its_children_and_writes_nothing_else() {
        let mut ip = pipeline(1, json!({}));
        let hash = spec_hash(&ip);
        ip["status"] = json!({
            "phase": "Progressing",
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "WorkersNotReady",
                 "message": "0/1 workers ready; see kubectl get pods -l app.kubernetes.io/instance=shop",
                 "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "Reconciled", "status": "True", "reason": "Applied",
                 "message": "children are up to date with the spec",
                 "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
            "replicas": 0,
            "readyReplicas": 0,
            "deployedSpecHash": hash,
        });
        // No Deployed Event and no status write: the status is what this reconcile computes.
        // No rollout: the token Secret is not looked at.
        let script = workload_applied(Script::new(), Vec::new(), hash);
        let r = testing::reconcile(script, |ctx| reconcile(typed(&ip), ctx)).await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    #[tokio::test]
    async fn an_invalid_spec_fails_permanently_without_touching_children() {
        let ip = pipeline(3, json!({"parallelism": 0}));
        let script = Script::new()
            .then(event(&ip, "Warning", "InvalidSpec").body(|b| {
                assert_eq!(b["action"], "Reconcile");
                let note = b["note"].as_str().unwrap_or_default();
                assert!(note.starts_with("spec.parallelism"), "{note}");
            }))
            .then(apply_status(&ip).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Failed", "{st}");
                assert_eq!(st["observedGeneration"], 3, "{st}");
                let reconciled = condition(st, "Reconciled");
                assert_eq!(reconciled["status"], "False", "{st}");
                assert_eq!(reconciled["reason"], "InvalidSpec", "{st}");
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&ip), ctx)).await;
        let err = r.result.as_ref().expect_err("invalid");
        assert!(err.is_permanent(), "{err}");
        assert_eq!(r.reconciles(KIND, "invalid"), 1);
        assert_eq!(r.errors(KIND, "InvalidSpec"), 1);
        assert_eq!(
            retry_after(typed::<InventoryPipeline>(&ip).as_ref().clone(), err),
            Action::await_change()
        );
    }

    #[tokio::test]
    async fn a_missing_bootstrap_config_map_is_retried_without_children() {
        let ip = pipeline(
            1,
            json!({"bootstrapProducts": {"name": "products", "key": "products.json"}}),
        );
        let script = Script::new()
            .then(get_missing("/api/v1/namespaces/prod/configmaps/products"))
            // A transient failure is evented too, at most every 10 minutes.
            .then(event(&ip, "Warning", "DependencyMissing"))
            .then(apply_status(&ip).body(|b| {
                let st = &b["status"];
                assert_eq!(st["phase"], "Degraded", "{st}");
                let reconciled = condition(st, "Reconciled");
                assert_eq!(reconciled["reason"], "DependencyMissing", "{st}");
                let message = reconciled["message"].as_str().unwrap_or_default();
                assert!(
                    message
                        .starts_with("ConfigMap prod/products (spec.bootstrapProducts): not found"),
                    "{message}"
                );
            }));
        let r = testing::reconcile(script, |ctx| reconcile(typed(&ip), ctx)).await;
        let err = r.result.as_ref().expect_err("dependency missing");
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(r.reconciles(KIND, "error"), 1);
        assert_eq!(
            retry_after(typed::<InventoryPipeline>(&ip).as_ref().clone(), err),
            Action::requeue(Duration::from_secs(1))
        );
    }
}
