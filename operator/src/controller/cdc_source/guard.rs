//! One guard check: connect, make sure the publication and slot exist, read the slot, decide,
//! and carry out what [`report`] says about the verdict (Events, the `SlotHealthy` condition,
//! metrics), dropping the slot when the verdict is a drop.

use kube::ResourceExt;

use crate::controller::status::{Cond, SLOT_HEALTHY};
use crate::controller::{Context, Error};
use crate::crd::cdc_source::{SlotDrop, SlotFacts};
use crate::crd::{CdcSource, CdcSourceStatus};
use crate::slot_guard::report::{self, Check, Step};
use crate::slot_guard::{GuardPolicy, SlotReading, decide, drop_record, facts, postgres};

use super::database;

/// What one guard check found and did.
pub(super) struct GuardOutcome {
    pub facts: SlotFacts,
    pub slot_cond: Cond,
    pub last_drop: Option<SlotDrop>,
    pub owned: bool,
    pub publication_created: bool,
}

/// The key of a source in [`Context::guard_memory`].
fn key(cdc: &CdcSource) -> String {
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
    // the spec (e.g. spec.slot.recreateNonce).
    let dropped_awaiting_ack = previous
        .last_drop
        .as_ref()
        .is_some_and(|d| d.generation == cdc.metadata.generation);
    let ownership = database::ensure_objects(cdc, ctx, &db, previous, dropped_awaiting_ack).await?;

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
    let verdict = decide(policy, &reading, ownership.slot_owned, at);
    let labels = [ns.as_str(), name.as_str(), slot.as_str()];
    ctx.metrics
        .slot_checks
        .with_label_values(&[ns.as_str(), name.as_str(), report::verdict_label(&verdict)])
        .inc();
    let mut last_drop = previous.last_drop.clone();
    let mut slot_facts = facts(&reading, at);
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
            reason,
            terminate_pid,
        } => {
            let outcome = postgres::drop_slot(&db, slot, terminate_pid).await?;
            last_drop = Some(drop_record(
                &reason,
                outcome.retained_bytes.or(reading.retained_bytes),
                at,
                cdc.metadata.generation,
            ));
            ctx.metrics.slot_drops.with_label_values(&labels).inc();
            let r = report::dropped(slot, &reason, outcome.terminated);
            tracing::warn!(
                slot = %slot,
                retained = ?outcome.retained_bytes,
                "{}",
                r.condition.message
            );
            slot_facts = facts(&SlotReading::missing(slot.as_str()), at);
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
    Ok(GuardOutcome {
        facts: slot_facts,
        slot_cond,
        last_drop,
        owned: ownership.slot_owned,
        publication_created: ownership.publication_created,
    })
}
