//! One guard check: connect, make sure the publication and slot exist, read the slot, decide,
//! and carry out what [`report`] says about the verdict (Events, the `SlotHealthy` condition,
//! metrics), dropping the slot when the verdict is a drop.

use kube::ResourceExt;

use crate::controller::status::{Cond, SLOT_HEALTHY};
use crate::controller::{Context, Error};
use crate::crd::cdc_source::{SlotDrop, SlotFacts};
use crate::crd::{CdcSource, CdcSourceStatus};
use crate::slot_guard::report::{self, Check, Step};
use crate::slot_guard::{
    DropStage, GuardPolicy, SlotReading, abandoned, decide, drop_done, drop_record, facts,
    postgres, track,
};

use super::{database, stored};

/// What one guard check found and did.
pub(super) struct GuardOutcome {
    pub facts: SlotFacts,
    pub slot_cond: Cond,
    pub last_drop: Option<SlotDrop>,
    pub owned: bool,
    pub publication_created: bool,
}

/// The key of a source in [`Context::guard_memory`] and [`Context::connections`].
pub(super) fn key(cdc: &CdcSource) -> String {
    format!("{}/{}", cdc.namespace().unwrap_or_default(), cdc.name_any())
}

/// Forgets a deleted source: its inactivity memory and its metric series.
pub(super) fn forget(cdc: &CdcSource, ctx: &Context) {
    if let Ok(mut m) = ctx.guard_memory.lock() {
        m.remove(&key(cdc));
    }
    ctx.metrics.forget_slot(
        &cdc.namespace().unwrap_or_default(),
        &cdc.name_any(),
        &cdc.spec.slot.name,
    );
}

/// Test hook, honoured by debug builds only: this annotation holds a decided drop between its
/// `Pending` record and the `DROP`, so the end-to-end test can pause the leader right there.
pub const DEBUG_PAUSE_BEFORE_DROP: &str = "kartflow.io/debug-pause-before-drop";

async fn debug_pause_before_drop(cdc: &CdcSource) {
    if !cfg!(debug_assertions) {
        return;
    }
    let pause = cdc
        .annotations()
        .get(DEBUG_PAUSE_BEFORE_DROP)
        .and_then(|v| crate::units::parse_duration(v).ok());
    if let Some(pause) = pause {
        tracing::warn!(?pause, "debug hook: pausing before the DROP");
        tokio::time::sleep(pause).await;
    }
}

/// The guard dropped the slot and `spec.slot.recreateNonce` has not changed since: the slot
/// stays gone and the CDC worker stopped.
pub(super) fn awaiting_ack(cdc: &CdcSource, status: &CdcSourceStatus) -> bool {
    status
        .last_drop
        .as_ref()
        .is_some_and(|d| d.awaiting_ack(&cdc.spec))
}

pub(super) async fn guard(
    cdc: &CdcSource,
    ctx: &Context,
    policy: &GuardPolicy,
    previous: &CdcSourceStatus,
) -> Result<GuardOutcome, Error> {
    let slot = &cdc.spec.slot.name;
    let ns = cdc.namespace().unwrap_or_default();
    let name = cdc.name_any();
    let db = database::connect(cdc, ctx).await?;

    // After a guard drop the slot stays gone until the user acknowledges the gap by changing
    // spec.slot.recreateNonce.
    let mut dropped_awaiting_ack = awaiting_ack(cdc, previous);
    let ownership = database::ensure_objects(cdc, ctx, &db, previous, dropped_awaiting_ack).await?;

    let memory = ctx
        .guard_memory
        .lock()
        .ok()
        .and_then(|m| m.get(&key(cdc)).cloned())
        .unwrap_or_default();
    let reading = postgres::read_slot(&db, slot, memory.inactive_since).await?;
    let at = jiff::Timestamp::now();
    let (reading, memory) = track(reading, &memory, at);
    if let Ok(mut m) = ctx.guard_memory.lock() {
        m.insert(key(cdc), memory);
    }
    let verdict = decide(policy, &reading, ownership.slot_owned, at);
    let labels = [ns.as_str(), name.as_str(), slot.as_str()];
    ctx.metrics
        .slot_checks
        .with_label_values(&[ns.as_str(), name.as_str(), report::verdict_label(&verdict)])
        .inc();
    let mut last_drop = previous.last_drop.clone();
    // A Pending drop whose slot is still there never happened; closing it ends the wait for an
    // acknowledgement, and this check decides afresh.
    if let Some(record) = abandoned(previous.last_drop.as_ref(), &reading) {
        stored::record(cdc, ctx, serde_json::json!({ "lastDrop": &record })).await?;
        ctx.notice(cdc, report::drop_abandoned(slot, &record.at))
            .await;
        tracing::warn!(slot = %slot, decided_at = %record.at, "a pending drop never happened");
        dropped_awaiting_ack = false;
        last_drop = Some(record);
    }
    let mut slot_facts = facts(&reading, verdict.cause(), at);
    let retained_wal = slot_facts.retained_wal.clone().unwrap_or_default();
    let check = Check {
        slot,
        retained_wal: &retained_wal,
        policy,
        dropped_awaiting_ack,
    };
    let checked = match report::step(&verdict, &check) {
        Step::Report(r) => r,
        Step::Drop {
            cause,
            reason,
            terminate_pid,
        } => {
            // A replica that stopped leading (paused past its lease) must not act on a
            // decision a standby may be taking too: checked before the record and again right
            // before the DROP, since the process may be paused in between.
            let confirm_lease = || async {
                match &ctx.leadership {
                    Some(lease) => lease.confirm().await.map_err(Error::NotLeading),
                    None => Ok(()),
                }
            };
            confirm_lease().await?;
            // Recorded before the DROP: whatever fails next, the drop is never forgotten and
            // the slot never silently re-created.
            let record = drop_record(
                &cause,
                &reason,
                reading.retained_bytes,
                at,
                cdc.spec.slot.recreate_nonce,
                cdc.metadata.generation,
            );
            stored::record(cdc, ctx, serde_json::json!({ "lastDrop": &record })).await?;
            debug_pause_before_drop(cdc).await;
            confirm_lease().await?;
            let outcome = postgres::drop_slot(&db, slot, terminate_pid).await?;
            let stage = if outcome.dropped {
                DropStage::Dropped
            } else {
                DropStage::Gone
            };
            let record = drop_done(record, stage, outcome.retained_bytes);
            // The final status write below carries it too; this one survives its failure.
            if let Err(e) =
                stored::record(cdc, ctx, serde_json::json!({ "lastDrop": &record })).await
            {
                tracing::warn!(error = %e, "cannot record the drop's outcome; it stays Pending");
            }
            last_drop = Some(record);
            ctx.metrics.slot_drops.with_label_values(&labels).inc();
            let r = report::dropped(slot, &reason, outcome.terminated);
            tracing::warn!(
                slot = %slot,
                retained = ?outcome.retained_bytes,
                "{}",
                r.condition.message
            );
            slot_facts = facts(&SlotReading::missing(slot.as_str()), Some(&cause), at);
            r
        }
    };
    if let Some(n) = checked.event {
        ctx.notice(cdc, n).await;
    }
    let c = checked.condition;
    let slot_cond = Cond::new(SLOT_HEALTHY, c.healthy, c.reason, c.message);
    ctx.metrics
        .slot_retained_bytes
        .with_label_values(&labels)
        .set(slot_facts.retained_bytes.unwrap_or(0));
    ctx.metrics
        .slot_active
        .with_label_values(&labels)
        .set(i64::from(slot_facts.active));
    let as_gauge = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    ctx.metrics
        .slot_warn_bytes
        .with_label_values(&labels)
        .set(as_gauge(policy.warn.bytes));
    ctx.metrics
        .slot_drop_bytes
        .with_label_values(&labels)
        .set(as_gauge(policy.drop.bytes));
    Ok(GuardOutcome {
        facts: slot_facts,
        slot_cond,
        last_drop,
        owned: ownership.slot_owned,
        publication_created: ownership.publication_created,
    })
}
