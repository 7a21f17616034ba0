//! What the guard tells people, free of I/O: the Event, the `SlotHealthy` condition and the
//! metric label of each verdict, and the Events of creating and deleting. The controller
//! publishes what these functions return.

use super::policy::{Cause, GuardPolicy, Verdict};
use crate::units::format_bytes;

/// Event action of the periodic guard check.
pub const ACTION_GUARD: &str = "Guard";
/// Event action of the cleanup when a `CdcSource` is deleted.
pub const ACTION_DELETE: &str = "Delete";

/// An Event to publish on the `CdcSource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Notice {
    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            action: ACTION_GUARD,
            note,
        }
    }

    fn normal(reason: &'static str, action: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            action,
            note,
        }
    }
}

/// The `SlotHealthy` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCondition {
    pub healthy: bool,
    pub reason: &'static str,
    pub message: String,
}

impl SlotCondition {
    fn unhealthy(reason: &'static str, message: String) -> Self {
        Self {
            healthy: false,
            reason,
            message,
        }
    }
}

/// What one check reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub condition: SlotCondition,
    pub event: Option<Notice>,
}

/// What the check saw besides the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub slot: &'a str,
    /// The slot's retained WAL as shown in status (`1.5Gi`), empty when unknown.
    pub retained_wal: &'a str,
    pub policy: &'a GuardPolicy,
    /// The guard dropped the slot and the spec has not changed since: the gap is not yet
    /// acknowledged, so the slot is not recreated.
    pub dropped_awaiting_ack: bool,
}

/// What to do about a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing but reporting.
    Report(CheckReport),
    /// Record the drop, drop the slot (terminating `terminate_pid` first), then report with
    /// [`dropped`].
    Drop {
        cause: Cause,
        reason: String,
        terminate_pid: Option<i32>,
    },
}

/// The `verdict` label of the checks metric.
pub fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "healthy",
        Verdict::Warn { .. } => "warn",
        Verdict::Drop { .. } => "drop",
        Verdict::WouldDropButUnowned { .. } => "unowned",
        Verdict::WouldDropButAlertOnly { .. } => "alert_only",
        Verdict::Missing => "missing",
    }
}

/// The step a verdict asks for.
pub fn step(verdict: &Verdict, check: &Check<'_>) -> Step {
    let slot = check.slot;
    let report = |condition, event| Step::Report(CheckReport { condition, event });
    match verdict {
        Verdict::Healthy => report(
            SlotCondition {
                healthy: true,
                reason: "WithinLimits",
                message: format!(
                    "slot {slot} retains {} of WAL (warn at {}, drop at {})",
                    check.retained_wal, check.policy.warn.text, check.policy.drop.text
                ),
            },
            None,
        ),
        Verdict::Missing if check.dropped_awaiting_ack => report(
            SlotCondition::unhealthy(
                "SlotDropped",
                format!(
                    "the guard dropped slot {slot} and stopped the CDC worker; changes committed \
                     since then were not captured. Change spec.slot.recreateNonce to recreate \
                     the slot and start the worker again, and re-snapshot if you need them"
                ),
            ),
            None,
        ),
        Verdict::Missing => report(
            SlotCondition::unhealthy(
                "SlotMissing",
                format!("slot {slot} does not exist; set spec.slot.create to true or create it"),
            ),
            None,
        ),
        Verdict::Warn { cause, reason } => report(
            SlotCondition::unhealthy(cause.as_str(), reason.clone()),
            Some(Notice::warning(cause.as_str(), reason.clone())),
        ),
        Verdict::WouldDropButUnowned { .. } => {
            let msg = verdict.message().unwrap_or_default();
            report(
                SlotCondition::unhealthy("DropThresholdExceeded", msg.clone()),
                Some(Notice::warning("SlotNotOwned", msg)),
            )
        }
        Verdict::WouldDropButAlertOnly { .. } => {
            let msg = verdict.message().unwrap_or_default();
            report(
                SlotCondition::unhealthy("DropThresholdExceeded", msg.clone()),
                Some(Notice::warning("DropThresholdExceeded", msg)),
            )
        }
        Verdict::Drop {
            cause,
            reason,
            terminate_pid,
        } => Step::Drop {
            cause: cause.clone(),
            reason: reason.clone(),
            terminate_pid: *terminate_pid,
        },
    }
}

/// The report of a drop the guard made; `terminated` reading backends were ended first.
pub fn dropped(slot: &str, reason: &str, terminated: u32) -> CheckReport {
    let msg = format!(
        "dropped slot {slot}: {reason}{}",
        if terminated > 0 {
            format!(" (terminated {terminated} reading backend(s) first)")
        } else {
            String::new()
        }
    );
    CheckReport {
        condition: SlotCondition::unhealthy("SlotDropped", msg.clone()),
        event: Some(Notice::warning("SlotDropped", msg)),
    }
}

/// A drop recorded `Pending` by an earlier check never happened: the slot is still there.
pub fn drop_abandoned(slot: &str, decided_at: &str) -> Notice {
    Notice::warning(
        "SlotDropAbandoned",
        format!(
            "the drop of slot {slot} decided at {decided_at} was never carried out (its leader \
             lost the Lease or the DROP failed); the slot is intact and checked again"
        ),
    )
}

/// kartflow created the publication.
pub fn publication_created(publication: &str) -> Notice {
    Notice::normal(
        "PublicationCreated",
        ACTION_GUARD,
        format!("created publication {publication}"),
    )
}

/// kartflow created the slot.
pub fn slot_created(slot: &str) -> Notice {
    Notice::normal(
        "SlotCreated",
        ACTION_GUARD,
        format!("created logical replication slot {slot} (pgoutput)"),
    )
}

/// Deletion leaves a slot kartflow did not create.
pub fn slot_kept(slot: &str) -> Notice {
    Notice::normal(
        "SlotKept",
        ACTION_DELETE,
        format!("slot {slot} was not created by kartflow and is left in place"),
    )
}

/// Deletion dropped the slot, releasing `retained_bytes` of WAL.
pub fn dropped_on_delete(slot: &str, retained_bytes: Option<i64>) -> Notice {
    let released = retained_bytes
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0);
    Notice::normal(
        "SlotDropped",
        ACTION_DELETE,
        format!(
            "dropped slot {slot} ({} of WAL released) because the CdcSource was deleted",
            format_bytes(released)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::cdc_source::SlotGuard;

    fn policy() -> GuardPolicy {
        GuardPolicy::from_spec(&SlotGuard::default()).expect("default is valid")
    }

    fn check(policy: &GuardPolicy, dropped_awaiting_ack: bool) -> Check<'_> {
        Check {
            slot: "kartflow_orders",
            retained_wal: "1.2Mi",
            policy,
            dropped_awaiting_ack,
        }
    }

    fn warning(reason: &'static str, note: &str) -> Option<Notice> {
        Some(Notice {
            warning: true,
            reason,
            action: "Guard",
            note: note.into(),
        })
    }

    fn cond(healthy: bool, reason: &'static str, message: &str) -> SlotCondition {
        SlotCondition {
            healthy,
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn each_verdict_has_its_condition_event_and_label() {
        let p = policy();
        let over = "slot kartflow_orders retains 3.0Gi of WAL, above dropRetainedWal 2Gi";
        let unowned = format!(
            "{over}: not dropped because kartflow did not create this slot \
             (set spec.guard.guardUnowned to let the guard drop it)"
        );
        let alert = format!("{over}: not dropped because spec.guard.action is alert");
        // (name, verdict, dropped_awaiting_ack, metric label, condition, event)
        type Case<'a> = (
            &'a str,
            Verdict,
            bool,
            &'a str,
            SlotCondition,
            Option<Notice>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "healthy",
                Verdict::Healthy,
                false,
                "healthy",
                cond(
                    true,
                    "WithinLimits",
                    "slot kartflow_orders retains 1.2Mi of WAL (warn at 1Gi, drop at 2Gi)",
                ),
                None,
            ),
            (
                "missing",
                Verdict::Missing,
                false,
                "missing",
                cond(
                    false,
                    "SlotMissing",
                    "slot kartflow_orders does not exist; set spec.slot.create to true or create it",
                ),
                None,
            ),
            (
                "missing after a guard drop",
                Verdict::Missing,
                true,
                "missing",
                cond(
                    false,
                    "SlotDropped",
                    "the guard dropped slot kartflow_orders and stopped the CDC worker; changes \
                     committed since then were not captured. Change spec.slot.recreateNonce to \
                     recreate the slot and start the worker again, and re-snapshot if you need \
                     them",
                ),
                None,
            ),
            (
                "warn: the cause is the reason",
                Verdict::Warn {
                    cause: Cause::HeldBackByTransaction(None),
                    reason: "held back".into(),
                },
                false,
                "warn",
                cond(false, "HeldBackByTransaction", "held back"),
                warning("HeldBackByTransaction", "held back"),
            ),
            (
                "warn without a reader",
                Verdict::Warn {
                    cause: Cause::ReaderGone,
                    reason: "no reader".into(),
                },
                false,
                "warn",
                cond(false, "ReaderGone", "no reader"),
                warning("ReaderGone", "no reader"),
            ),
            (
                "unowned",
                Verdict::WouldDropButUnowned {
                    cause: Cause::ReaderGone,
                    reason: over.into(),
                },
                false,
                "unowned",
                cond(false, "DropThresholdExceeded", &unowned),
                warning("SlotNotOwned", &unowned),
            ),
            (
                "alert only",
                Verdict::WouldDropButAlertOnly {
                    cause: Cause::ReaderGone,
                    reason: over.into(),
                },
                false,
                "alert_only",
                cond(false, "DropThresholdExceeded", &alert),
                warning("DropThresholdExceeded", &alert),
            ),
        ];
        for (name, verdict, awaiting_ack, label, condition, event) in cases {
            assert_eq!(verdict_label(&verdict), label, "{name}");
            assert_eq!(
                step(&verdict, &check(&p, awaiting_ack)),
                Step::Report(CheckReport { condition, event }),
                "{name}"
            );
        }
    }

    #[test]
    fn a_drop_verdict_asks_for_the_drop_first() {
        let p = policy();
        let v = Verdict::Drop {
            cause: Cause::ReaderStuck,
            reason: "why".into(),
            terminate_pid: Some(42),
        };
        assert_eq!(verdict_label(&v), "drop");
        assert_eq!(
            step(&v, &check(&p, false)),
            Step::Drop {
                cause: Cause::ReaderStuck,
                reason: "why".into(),
                terminate_pid: Some(42),
            }
        );
    }

    #[test]
    fn drops_say_what_was_ended() {
        let cases = [
            (0, "dropped slot s: why"),
            (
                2,
                "dropped slot s: why (terminated 2 reading backend(s) first)",
            ),
        ];
        for (terminated, msg) in cases {
            assert_eq!(
                dropped("s", "why", terminated),
                CheckReport {
                    condition: cond(false, "SlotDropped", msg),
                    event: warning("SlotDropped", msg),
                },
                "{terminated}"
            );
        }
    }

    #[test]
    fn creation_and_deletion_events() {
        let normal = |reason, action, note: &str| Notice {
            warning: false,
            reason,
            action,
            note: note.into(),
        };
        let cases = [
            (
                publication_created("kartflow_pub"),
                normal(
                    "PublicationCreated",
                    "Guard",
                    "created publication kartflow_pub",
                ),
            ),
            (
                slot_created("s"),
                normal(
                    "SlotCreated",
                    "Guard",
                    "created logical replication slot s (pgoutput)",
                ),
            ),
            (
                slot_kept("s"),
                normal(
                    "SlotKept",
                    "Delete",
                    "slot s was not created by kartflow and is left in place",
                ),
            ),
            (
                dropped_on_delete("s", Some(3 << 29)),
                normal(
                    "SlotDropped",
                    "Delete",
                    "dropped slot s (1.5Gi of WAL released) because the CdcSource was deleted",
                ),
            ),
            (
                dropped_on_delete("s", None),
                normal(
                    "SlotDropped",
                    "Delete",
                    "dropped slot s (0 of WAL released) because the CdcSource was deleted",
                ),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
