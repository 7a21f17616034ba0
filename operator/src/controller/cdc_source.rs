//! `CdcSource` → CDC worker ConfigMap, Deployment and Service, plus the replication-slot guard:
//! every check interval it reads the slot's retained WAL, writes it to status and metrics, and
//! drops the slot when the policy says so. A finalizer drops the slot (and a publication kartflow
//! created) when the `CdcSource` is deleted with `dropOnDelete`.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::failure::report_failure;
use super::observe::observe;
use super::status::{Cond, READY, SLOT_HEALTHY, reconciled};
use super::trigger::controller_for;
use super::{Context, Error, apply};
use crate::children;
use crate::crd::cdc_source::{SlotDrop, SlotFacts};
use crate::crd::{CdcSource, CdcSourceStatus};
use crate::slot_guard::postgres::{self, Db};
use crate::slot_guard::{GuardPolicy, SlotReading, Verdict, decide, drop_record, facts};
use crate::units::format_bytes;

/// Holds a `CdcSource` until its slot is dropped.
pub const FINALIZER: &str = "kartflow.io/slot-cleanup";

pub fn controller(
    client: &Client,
    ns: Option<&str>,
    children: watcher::Config,
) -> Controller<CdcSource> {
    controller_for(client, ns, &children)
}

#[tracing::instrument(skip_all, fields(namespace = cdc.namespace(), name = %cdc.name_any()))]
pub async fn reconcile(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let api: Api<CdcSource> = Api::namespaced(ctx.client.clone(), &ns);
    let work = {
        let ctx = ctx.clone();
        let cdc = cdc.clone();
        async move {
            finalizer(&api, FINALIZER, cdc, |event| async {
                match event {
                    Finalizer::Apply(cdc) => apply_source(cdc, ctx.clone()).await,
                    Finalizer::Cleanup(cdc) => cleanup(cdc, ctx.clone()).await,
                }
            })
            .await
            .map_err(|e| match e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
                other => Error::Finalizer(other.to_string()),
            })
        }
    };
    observe("CdcSource", cdc, ctx, work).await
}

fn key(cdc: &CdcSource) -> String {
    format!("{}/{}", cdc.namespace().unwrap_or_default(), cdc.name_any())
}

/// The status as stored now. The watch cache can lag behind our own last status write, and
/// this status carries facts that must not be lost (slot ownership, the last drop).
async fn current_status(cdc: &CdcSource, ctx: &Context) -> Result<CdcSourceStatus, Error> {
    let api: Api<CdcSource> =
        Api::namespaced(ctx.client.clone(), &cdc.namespace().unwrap_or_default());
    Ok(api
        .get_status(&cdc.name_any())
        .await?
        .status
        .unwrap_or_default())
}

/// Writes what kartflow created in the database into status at once: a later step of the same
/// reconcile may fail, and a forgotten ownership would leave the slot unguarded and undropped.
async fn record(cdc: &CdcSource, ctx: &Context, fields: serde_json::Value) -> Result<(), Error> {
    let api: Api<CdcSource> =
        Api::namespaced(ctx.client.clone(), &cdc.namespace().unwrap_or_default());
    let params = kube::api::PatchParams {
        field_manager: Some(children::FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(
        &cdc.name_any(),
        &params,
        &kube::api::Patch::Merge(serde_json::json!({ "status": fields })),
    )
    .await?;
    Ok(())
}

async fn apply_source(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let previous = current_status(&cdc, &ctx).await?;
    let policy = match GuardPolicy::from_spec(&cdc.spec.guard) {
        Ok(p) => p,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
    };
    let children = match children::cdc_source(&cdc) {
        Ok(c) => c,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
    };
    let applied = apply::apply_workload(
        &ctx.client,
        &children.config_map,
        &children.deployment,
        &children.service,
    )
    .await;
    let deployment = match applied {
        Ok(d) => d,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e.into()).await),
    };
    let guard = match guard(&cdc, &ctx, &policy, &previous).await {
        Ok(g) => g,
        Err(e) => return Err(report_failure(cdc.as_ref(), &ctx, previous, e).await),
    };

    let ds = deployment.status.unwrap_or_default();
    let ready = ds.ready_replicas.unwrap_or(0);
    let reader_ready = ready >= 1;
    let phase = match (&guard.slot_cond.ok, reader_ready) {
        (false, _) => "Degraded",
        (true, true) => "Running",
        (true, false) => "Progressing",
    };
    let generation = cdc.metadata.generation;
    let status = CdcSourceStatus {
        common: reconciled(
            &previous.common,
            generation,
            phase,
            vec![
                Cond::new(
                    READY,
                    reader_ready,
                    if reader_ready {
                        "ReaderReady"
                    } else {
                        "ReaderNotReady"
                    },
                    format!("{ready}/1 CDC worker ready"),
                ),
                guard.slot_cond,
            ],
        ),
        slot: Some(guard.facts),
        last_drop: guard.last_drop,
        slot_owned: Some(guard.owned),
        publication_created: Some(guard.publication_created),
    };
    apply::apply_status(&ctx.client, cdc.as_ref(), &status).await?;
    Ok(Action::requeue(policy.check_interval))
}

/// What one guard check found and did.
struct GuardOutcome {
    facts: SlotFacts,
    slot_cond: Cond,
    last_drop: Option<SlotDrop>,
    owned: bool,
    publication_created: bool,
}

async fn connect(cdc: &CdcSource, ctx: &Context) -> Result<Db, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let pg = &cdc.spec.postgres;
    let secret_name = &pg.credentials_secret_ref.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets
        .get_opt(secret_name)
        .await?
        .ok_or_else(|| Error::Dependency {
            what: format!("Secret {ns}/{secret_name} (spec.postgres.credentialsSecretRef)"),
            problem: "not found: create it with keys username and password".into(),
        })?;
    let field = |k: &str| -> Result<String, Error> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| Error::Dependency {
                what: format!("Secret {ns}/{secret_name}"),
                problem: format!("has no key {k:?} (it needs username and password)"),
            })
    };
    Ok(postgres::connect(
        &pg.host,
        u16::try_from(pg.port).unwrap_or(5432),
        &pg.database,
        &field("username")?,
        &field("password")?,
        pg.ssl_mode,
    )
    .await?)
}

async fn guard(
    cdc: &CdcSource,
    ctx: &Context,
    policy: &GuardPolicy,
    previous: &CdcSourceStatus,
) -> Result<GuardOutcome, Error> {
    let spec = &cdc.spec;
    let slot = &spec.slot.name;
    let ns = cdc.namespace().unwrap_or_default();
    let name = cdc.name_any();
    let db = connect(cdc, ctx).await?;

    let mut publication_created = previous.publication_created.unwrap_or(false);
    if spec.publication.create
        && postgres::ensure_publication(&db, &spec.publication.name, &spec.publication.tables)
            .await?
    {
        publication_created = true;
        record(cdc, ctx, serde_json::json!({"publicationCreated": true})).await?;
        ctx.event(
            cdc,
            false,
            "PublicationCreated",
            "Guard",
            format!("created publication {}", spec.publication.name),
        )
        .await;
    }

    let mut owned = previous.slot_owned.unwrap_or(false);
    // After a guard drop the slot stays gone until the user acknowledges the gap by changing
    // the spec (e.g. spec.slot.recreateNonce): silently recreating it would hide lost changes.
    let dropped_awaiting_ack = previous
        .last_drop
        .as_ref()
        .is_some_and(|d| d.generation == cdc.metadata.generation);
    if spec.slot.create && !dropped_awaiting_ack && postgres::ensure_slot(&db, slot).await? {
        owned = true;
        record(cdc, ctx, serde_json::json!({"slotOwned": true})).await?;
        ctx.event(
            cdc,
            false,
            "SlotCreated",
            "Guard",
            format!("created logical replication slot {slot} (pgoutput)"),
        )
        .await;
    }

    let inactive_since = ctx
        .guard_memory
        .lock()
        .ok()
        .and_then(|m| m.get(&key(cdc)).copied());
    let reading = postgres::read_slot(&db, slot, inactive_since).await?;
    if let Ok(mut m) = ctx.guard_memory.lock() {
        match reading.inactive_since {
            Some(t) => m.insert(key(cdc), t),
            None => m.remove(&key(cdc)),
        };
    }
    let at = jiff::Timestamp::now();
    let verdict = decide(policy, &reading, owned, at);
    let labels = [ns.as_str(), name.as_str(), slot.as_str()];
    ctx.metrics
        .slot_checks
        .with_label_values(&[ns.as_str(), name.as_str(), verdict_label(&verdict)])
        .inc();
    let mut last_drop = previous.last_drop.clone();
    let mut slot_facts = facts(&reading, at);
    let slot_cond = match &verdict {
        Verdict::Healthy => Cond::new(
            SLOT_HEALTHY,
            true,
            "WithinLimits",
            format!(
                "slot {slot} retains {} of WAL (warn at {}, drop at {})",
                slot_facts.retained_wal.clone().unwrap_or_default(),
                policy.warn.text,
                policy.drop.text
            ),
        ),
        Verdict::Missing if dropped_awaiting_ack => Cond::new(
            SLOT_HEALTHY,
            false,
            "SlotDropped",
            format!(
                "the guard dropped slot {slot}; changes committed since then were not captured. \
                 Change the spec (e.g. set spec.slot.recreateNonce) to recreate the slot, and \
                 re-snapshot if you need them"
            ),
        ),
        Verdict::Missing => Cond::new(
            SLOT_HEALTHY,
            false,
            "SlotMissing",
            format!("slot {slot} does not exist; set spec.slot.create to true or create it"),
        ),
        Verdict::Warn { reason } => {
            ctx.event(cdc, true, "RetainedWalHigh", "Guard", reason.clone())
                .await;
            Cond::new(SLOT_HEALTHY, false, "RetainedWalHigh", reason.clone())
        }
        Verdict::WouldDropButUnowned { .. } => {
            let msg = verdict.message().unwrap_or_default();
            ctx.event(cdc, true, "SlotNotOwned", "Guard", msg.clone())
                .await;
            Cond::new(SLOT_HEALTHY, false, "DropThresholdExceeded", msg)
        }
        Verdict::WouldDropButAlertOnly { .. } => {
            let msg = verdict.message().unwrap_or_default();
            ctx.event(cdc, true, "DropThresholdExceeded", "Guard", msg.clone())
                .await;
            Cond::new(SLOT_HEALTHY, false, "DropThresholdExceeded", msg)
        }
        Verdict::Drop {
            reason,
            terminate_pid,
        } => {
            let outcome = postgres::drop_slot(&db, slot, *terminate_pid).await?;
            let drop = drop_record(
                reason,
                outcome.retained_bytes.or(reading.retained_bytes),
                at,
                cdc.metadata.generation,
            );
            ctx.metrics.slot_drops.with_label_values(&labels).inc();
            let msg = format!(
                "dropped slot {slot}: {reason}{}",
                if outcome.terminated > 0 {
                    format!(
                        " (terminated {} reading backend(s) first)",
                        outcome.terminated
                    )
                } else {
                    String::new()
                }
            );
            tracing::warn!(slot = %slot, retained = ?outcome.retained_bytes, "{msg}");
            ctx.event(cdc, true, "SlotDropped", "Guard", msg.clone())
                .await;
            last_drop = Some(drop);
            slot_facts = facts(&SlotReading::missing(slot.as_str()), at);
            Cond::new(SLOT_HEALTHY, false, "SlotDropped", msg)
        }
    };
    ctx.metrics
        .slot_retained_bytes
        .with_label_values(&labels)
        .set(slot_facts.retained_bytes.unwrap_or(0));
    ctx.metrics
        .slot_active
        .with_label_values(&labels)
        .set(i64::from(slot_facts.active));
    Ok(GuardOutcome {
        facts: slot_facts,
        slot_cond,
        last_drop,
        owned,
        publication_created,
    })
}

/// Deletion: stop the reader, drop the slot kartflow owns (or is allowed to guard) and the
/// publication it created. A database that cannot be reached keeps the object Terminating and
/// is retried; `spec.slot.dropOnDelete: false` lets it go without touching the database.
async fn cleanup(cdc: Arc<CdcSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cdc.namespace().unwrap_or_default();
    let name = cdc.name_any();
    let slot = &cdc.spec.slot.name;
    let status = current_status(&cdc, &ctx).await?;
    if let Ok(mut m) = ctx.guard_memory.lock() {
        m.remove(&key(&cdc));
    }
    ctx.metrics.forget_slot(&ns, &name, slot);
    if !cdc.spec.slot.drop_on_delete {
        tracing::info!(slot = %slot, "dropOnDelete is false: slot left in place");
        return Ok(Action::await_change());
    }
    let owned = status.slot_owned.unwrap_or(false) || cdc.spec.guard.guard_unowned;
    let publication = status.publication_created.unwrap_or(false);
    if !owned {
        ctx.event(
            cdc.as_ref(),
            false,
            "SlotKept",
            "Delete",
            format!("slot {slot} was not created by kartflow and is left in place"),
        )
        .await;
    }
    if !owned && !publication {
        // Nothing of ours in the database: no connection needed, so a CdcSource whose database
        // or Secret never existed can still be deleted.
        return Ok(Action::await_change());
    }
    // The reader would reconnect to the slot while we drop it; stop it first.
    if let Some(reader) = children::cdc_source(&cdc)
        .ok()
        .and_then(|c| c.deployment.metadata.name)
    {
        apply::delete_if_present::<Deployment>(&ctx.client, &ns, &reader).await?;
    }
    let db = connect(&cdc, &ctx).await.map_err(|e| Error::Dependency {
        what: format!("dropping slot {slot} on delete"),
        problem: format!(
            "{e}. Fix the connection, or set spec.slot.dropOnDelete to false to delete the \
             CdcSource without dropping the slot"
        ),
    })?;
    if owned {
        let outcome = postgres::drop_slot(&db, slot, None).await?;
        let released = outcome
            .retained_bytes
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(0);
        ctx.event(
            cdc.as_ref(),
            false,
            "SlotDropped",
            "Delete",
            format!(
                "dropped slot {slot} ({} of WAL released) because the CdcSource was deleted",
                format_bytes(released)
            ),
        )
        .await;
    }
    if publication {
        postgres::drop_publication(&db, &cdc.spec.publication.name).await?;
    }
    Ok(Action::await_change())
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "healthy",
        Verdict::Warn { .. } => "warn",
        Verdict::Drop { .. } => "drop",
        Verdict::WouldDropButUnowned { .. } => "unowned",
        Verdict::WouldDropButAlertOnly { .. } => "alert_only",
        Verdict::Missing => "missing",
    }
}
