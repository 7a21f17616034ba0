//! The guard's decisions, free of I/O: the policy a `CdcSource` asks for, what one reading of
//! `pg_replication_slots` says, and what to do about it. The controller does the talking.

use std::time::Duration;

use jiff::Timestamp;
use thiserror::Error;

use crate::crd::cdc_source::{GuardAction, SlotDrop, SlotFacts, SlotGuard};
use crate::units::{UnitError, format_bytes, parse_duration, parse_quantity_bytes};

/// `pg_replication_slots.wal_status` values that matter to the guard.
pub const WAL_STATUS_LOST: &str = "lost";
/// The slot's WAL is past `max_wal_size` and goes at the next checkpoint unless a reader catches up.
pub const WAL_STATUS_UNRESERVED: &str = "unreserved";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("spec.guard.{field}: {source}")]
    Unit {
        field: &'static str,
        source: UnitError,
    },
    #[error("spec.guard.{field}: {value:?} must be more than zero")]
    Zero { field: &'static str, value: String },
    #[error(
        "spec.guard.warnRetainedWal ({warn}) must be less than spec.guard.dropRetainedWal ({drop})"
    )]
    WarnNotBelowDrop { warn: String, drop: String },
}

/// A byte threshold as configured: the number to compare and the text to show people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    pub bytes: u64,
    pub text: String,
}

/// A duration limit as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeLimit {
    pub duration: Duration,
    pub text: String,
}

/// `spec.guard`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    pub check_interval: Duration,
    pub warn: Threshold,
    pub drop: Threshold,
    pub max_inactive: Option<TimeLimit>,
    pub action: GuardAction,
    pub guard_unowned: bool,
}

impl GuardPolicy {
    /// Resolves the textual spec. The CRD schema checks the same things, but an object can come
    /// from an older CRD or bypass CEL, so every error names its field again.
    pub fn from_spec(spec: &SlotGuard) -> Result<Self, PolicyError> {
        let check_interval = nonzero_duration("checkInterval", &spec.check_interval)?;
        let warn = threshold("warnRetainedWal", &spec.warn_retained_wal)?;
        let drop = threshold("dropRetainedWal", &spec.drop_retained_wal)?;
        if warn.bytes >= drop.bytes {
            return Err(PolicyError::WarnNotBelowDrop {
                warn: warn.text,
                drop: drop.text,
            });
        }
        let max_inactive = spec
            .max_inactive
            .as_deref()
            .map(|text| {
                nonzero_duration("maxInactive", text).map(|duration| TimeLimit {
                    duration,
                    text: text.to_owned(),
                })
            })
            .transpose()?;
        Ok(Self {
            check_interval,
            warn,
            drop,
            max_inactive,
            action: spec.action,
            guard_unowned: spec.guard_unowned,
        })
    }
}

fn threshold(field: &'static str, text: &str) -> Result<Threshold, PolicyError> {
    let bytes = parse_quantity_bytes(text).map_err(|source| PolicyError::Unit { field, source })?;
    Ok(Threshold {
        bytes,
        text: text.to_owned(),
    })
}

// Zero would mean a busy loop (checkInterval) or dropping a slot between two reconnects of
// its reader (maxInactive).
fn nonzero_duration(field: &'static str, text: &str) -> Result<Duration, PolicyError> {
    let d = parse_duration(text).map_err(|source| PolicyError::Unit { field, source })?;
    if d.is_zero() {
        return Err(PolicyError::Zero {
            field,
            value: text.to_owned(),
        });
    }
    Ok(d)
}

/// One reading of a slot from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotReading {
    pub slot_name: String,
    pub exists: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`; none when the slot has no restart LSN (lost).
    pub retained_bytes: Option<i64>,
    /// Bytes that can still be written before the slot loses WAL (`max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    /// Since when the slot has had no reader; none while it is active. PostgreSQL 17 reports
    /// it; before that it is the first time the guard saw the slot inactive.
    pub inactive_since: Option<Timestamp>,
}

impl SlotReading {
    /// A slot that is not in `pg_replication_slots`.
    pub fn missing(slot_name: impl Into<String>) -> Self {
        Self {
            slot_name: slot_name.into(),
            ..Self::default()
        }
    }

    /// How long the slot has had no reader, as of `now`.
    pub fn inactive_for(&self, now: Timestamp) -> Option<Duration> {
        if self.active {
            return None;
        }
        let since = self.inactive_since?;
        // A clock behind the database's reads as "just now".
        let ms = now.as_millisecond().saturating_sub(since.as_millisecond());
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    fn retained(&self) -> u64 {
        self.retained_bytes
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(0)
    }
}

/// What the guard should do about one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Warn {
        reason: String,
    },
    /// Terminate `terminate_pid` (the reader holding the slot) if any, then drop the slot.
    Drop {
        reason: String,
        terminate_pid: Option<i32>,
    },
    /// Past a drop condition, but kartflow did not create the slot and `guardUnowned` is off.
    WouldDropButUnowned {
        reason: String,
    },
    /// Past a drop condition, but `action` is `alert`.
    WouldDropButAlertOnly {
        reason: String,
    },
    Missing,
}

impl Verdict {
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Warn { reason }
            | Verdict::Drop { reason, .. }
            | Verdict::WouldDropButUnowned { reason }
            | Verdict::WouldDropButAlertOnly { reason } => Some(reason),
            Verdict::Healthy | Verdict::Missing => None,
        }
    }

    /// The sentence for an Event or log line, saying why nothing was done when that applies.
    pub fn message(&self) -> Option<String> {
        match self {
            Verdict::Warn { reason } => Some(reason.clone()),
            Verdict::Drop { reason, .. } => Some(format!("{reason}: dropping the slot")),
            Verdict::WouldDropButUnowned { reason } => Some(format!(
                "{reason}: not dropped because kartflow did not create this slot \
                 (set spec.guard.guardUnowned to let the guard drop it)"
            )),
            Verdict::WouldDropButAlertOnly { reason } => Some(format!(
                "{reason}: not dropped because spec.guard.action is alert"
            )),
            Verdict::Healthy | Verdict::Missing => None,
        }
    }
}

/// Decides about one reading. `owned`: kartflow created this slot.
pub fn decide(policy: &GuardPolicy, reading: &SlotReading, owned: bool, now: Timestamp) -> Verdict {
    if !reading.exists {
        return Verdict::Missing;
    }
    let slot = &reading.slot_name;
    let retained = reading.retained();
    if let Some(reason) = drop_reason(policy, reading, now) {
        return if !owned && !policy.guard_unowned {
            Verdict::WouldDropButUnowned { reason }
        } else if policy.action == GuardAction::Alert {
            Verdict::WouldDropButAlertOnly { reason }
        } else {
            Verdict::Drop {
                reason,
                terminate_pid: reading.active.then_some(reading.active_pid).flatten(),
            }
        };
    }
    if retained > policy.warn.bytes {
        return Verdict::Warn {
            reason: format!(
                "slot {slot} retains {} of WAL, above warnRetainedWal {}",
                format_bytes(retained),
                policy.warn.text
            ),
        };
    }
    if reading.wal_status.as_deref() == Some(WAL_STATUS_UNRESERVED) {
        return Verdict::Warn {
            reason: format!(
                "slot {slot} is about to lose WAL it needs (wal_status unreserved, \
                 beyond max_slot_wal_keep_size): its reader must catch up before the next checkpoint"
            ),
        };
    }
    Verdict::Healthy
}

fn drop_reason(policy: &GuardPolicy, reading: &SlotReading, now: Timestamp) -> Option<String> {
    let slot = &reading.slot_name;
    if reading.wal_status.as_deref() == Some(WAL_STATUS_LOST) {
        return Some(format!(
            "slot {slot} has lost WAL it needs (wal_status lost): it can no longer stream"
        ));
    }
    let retained = reading.retained();
    if retained > policy.drop.bytes {
        return Some(format!(
            "slot {slot} retains {} of WAL, above dropRetainedWal {}",
            format_bytes(retained),
            policy.drop.text
        ));
    }
    let limit = policy.max_inactive.as_ref()?;
    let inactive = reading.inactive_for(now)?;
    (inactive > limit.duration).then(|| {
        format!(
            "slot {slot} has had no reader for {}, longer than maxInactive {}",
            human_duration(inactive),
            limit.text
        )
    })
}

/// The status facts of a reading taken at `now`.
pub fn facts(reading: &SlotReading, now: Timestamp) -> SlotFacts {
    let last_check = Some(rfc3339(now));
    if !reading.exists {
        return SlotFacts {
            exists: false,
            last_check,
            ..SlotFacts::default()
        };
    }
    SlotFacts {
        exists: true,
        active: reading.active,
        active_pid: reading.active_pid,
        wal_status: reading.wal_status.clone(),
        retained_bytes: reading.retained_bytes,
        retained_wal: reading
            .retained_bytes
            .map(|b| format_bytes(u64::try_from(b).unwrap_or(0))),
        safe_wal_size: reading.safe_wal_size,
        confirmed_flush_lsn: reading.confirmed_flush_lsn.clone(),
        last_check,
    }
}

/// The status record of a drop.
pub fn drop_record(
    reason: &str,
    retained_bytes: Option<i64>,
    at: Timestamp,
    generation: Option<i64>,
) -> SlotDrop {
    SlotDrop {
        at: rfc3339(at),
        retained_bytes: retained_bytes.unwrap_or(0),
        reason: reason.to_owned(),
        generation,
    }
}

/// Whole seconds: status fields change only when something did.
fn rfc3339(t: Timestamp) -> String {
    format!("{t:.0}")
}

/// `25h`, `1h30m`, `45s`: the two largest units, hours at most (limits are written as `24h`).
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let parts = [(secs / 3_600, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(2);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MI: i64 = 1 << 20;
    const GI: i64 = 1 << 30;

    fn spec(action: GuardAction, guard_unowned: bool, max_inactive: Option<&str>) -> SlotGuard {
        SlotGuard {
            check_interval: "30s".into(),
            warn_retained_wal: "1Gi".into(),
            drop_retained_wal: "2Gi".into(),
            max_inactive: max_inactive.map(Into::into),
            action,
            guard_unowned,
        }
    }

    fn policy(action: GuardAction, guard_unowned: bool, max_inactive: Option<&str>) -> GuardPolicy {
        GuardPolicy::from_spec(&spec(action, guard_unowned, max_inactive)).expect("valid policy")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_750_000_000).expect("timestamp")
    }

    fn reading(retained: i64, wal_status: &str) -> SlotReading {
        SlotReading {
            slot_name: "kartflow_orders".into(),
            exists: true,
            active: false,
            active_pid: None,
            wal_status: Some(wal_status.into()),
            retained_bytes: Some(retained),
            safe_wal_size: None,
            confirmed_flush_lsn: Some("0/16B3748".into()),
            inactive_since: Some(now()),
        }
    }

    fn active(mut r: SlotReading, pid: i32) -> SlotReading {
        r.active = true;
        r.active_pid = Some(pid);
        r.inactive_since = None;
        r
    }

    fn inactive_for(mut r: SlotReading, secs: i64) -> SlotReading {
        r.inactive_since = Some(now() - jiff::SignedDuration::from_secs(secs));
        r
    }

    #[test]
    fn policy_from_the_default_spec() {
        let p = GuardPolicy::from_spec(&SlotGuard::default()).expect("default is valid");
        assert_eq!(p.check_interval, Duration::from_secs(30));
        assert_eq!(p.warn.bytes, 1 << 30);
        assert_eq!(p.drop.bytes, 2 << 30);
        assert_eq!(p.drop.text, "2Gi");
        assert_eq!(p.max_inactive, None);
        assert_eq!(p.action, GuardAction::Drop);
        assert!(!p.guard_unowned);
        let p = policy(GuardAction::Alert, true, Some("24h"));
        assert_eq!(
            p.max_inactive.map(|l| l.duration),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn policy_errors_name_the_field() {
        let base = SlotGuard::default();
        let cases: [(&str, SlotGuard); 8] = [
            (
                "spec.guard.checkInterval: \"often\" is not a duration",
                SlotGuard {
                    check_interval: "often".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.checkInterval: \"0s\" must be more than zero",
                SlotGuard {
                    check_interval: "0s".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.warnRetainedWal: \"1GB\" is not a byte quantity",
                SlotGuard {
                    warn_retained_wal: "1GB".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.dropRetainedWal: \"lots\" is not a byte quantity",
                SlotGuard {
                    drop_retained_wal: "lots".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.warnRetainedWal (2Gi) must be less than spec.guard.dropRetainedWal (2Gi)",
                SlotGuard {
                    warn_retained_wal: "2Gi".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.warnRetainedWal (3Gi) must be less than spec.guard.dropRetainedWal (2Gi)",
                SlotGuard {
                    warn_retained_wal: "3Gi".into(),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.maxInactive: \"1w\" is not a duration",
                SlotGuard {
                    max_inactive: Some("1w".into()),
                    ..base.clone()
                },
            ),
            (
                "spec.guard.maxInactive: \"0h\" must be more than zero",
                SlotGuard {
                    max_inactive: Some("0h".into()),
                    ..base.clone()
                },
            ),
        ];
        for (want, spec) in cases {
            let err = GuardPolicy::from_spec(&spec).expect_err(want).to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn decisions() {
        let drop = policy(GuardAction::Drop, false, Some("24h"));
        let alert = policy(GuardAction::Alert, false, Some("24h"));
        let drop_any = policy(GuardAction::Drop, true, None);
        let alert_any = policy(GuardAction::Alert, true, None);
        let over = reading(2 * GI + 300 * MI, "extended");
        let over_reason = "slot kartflow_orders retains 2.3Gi of WAL, above dropRetainedWal 2Gi";
        let lost_reason =
            "slot kartflow_orders has lost WAL it needs (wal_status lost): it can no longer stream";
        let idle_reason =
            "slot kartflow_orders has had no reader for 25h, longer than maxInactive 24h";
        let warn_reason = "slot kartflow_orders retains 1.5Gi of WAL, above warnRetainedWal 1Gi";
        let drop_v = |reason: &str, pid| Verdict::Drop {
            reason: reason.into(),
            terminate_pid: pid,
        };
        let unowned = |reason: &str| Verdict::WouldDropButUnowned {
            reason: reason.into(),
        };
        let alert_only = |reason: &str| Verdict::WouldDropButAlertOnly {
            reason: reason.into(),
        };
        let warn = |reason: &str| Verdict::Warn {
            reason: reason.into(),
        };
        let mut lost = reading(0, "lost");
        lost.retained_bytes = None;
        let cases: Vec<(&str, &GuardPolicy, SlotReading, bool, Verdict)> = vec![
            (
                "missing",
                &drop,
                SlotReading::missing("kartflow_orders"),
                true,
                Verdict::Missing,
            ),
            (
                "empty",
                &drop,
                reading(0, "reserved"),
                true,
                Verdict::Healthy,
            ),
            (
                "below warn, extended",
                &drop,
                reading(GI, "extended"),
                true,
                Verdict::Healthy,
            ),
            (
                "exactly drop is only a warning",
                &drop,
                reading(2 * GI, "reserved"),
                true,
                warn("slot kartflow_orders retains 2.0Gi of WAL, above warnRetainedWal 1Gi"),
            ),
            (
                "above warn",
                &drop,
                reading(3 * GI / 2, "reserved"),
                true,
                warn(warn_reason),
            ),
            (
                "above warn, alert",
                &alert,
                reading(3 * GI / 2, "reserved"),
                false,
                warn(warn_reason),
            ),
            (
                "unreserved below warn",
                &drop,
                reading(MI, "unreserved"),
                true,
                warn(
                    "slot kartflow_orders is about to lose WAL it needs (wal_status unreserved, \
                     beyond max_slot_wal_keep_size): its reader must catch up before the next checkpoint",
                ),
            ),
            (
                "above drop, no reader",
                &drop,
                over.clone(),
                true,
                drop_v(over_reason, None),
            ),
            (
                "above drop, reader terminated",
                &drop,
                active(over.clone(), 4242),
                true,
                drop_v(over_reason, Some(4242)),
            ),
            (
                "stale pid of an inactive slot is not terminated",
                &drop,
                SlotReading {
                    active_pid: Some(4242),
                    ..over.clone()
                },
                true,
                drop_v(over_reason, None),
            ),
            ("lost", &drop, lost.clone(), true, drop_v(lost_reason, None)),
            (
                "lost wins over size",
                &drop,
                SlotReading {
                    wal_status: Some("lost".into()),
                    ..over.clone()
                },
                true,
                drop_v(lost_reason, None),
            ),
            (
                "inactive too long",
                &drop,
                inactive_for(reading(MI, "reserved"), 25 * 3600),
                true,
                drop_v(idle_reason, None),
            ),
            (
                "inactive within the limit",
                &drop,
                inactive_for(reading(MI, "reserved"), 23 * 3600),
                true,
                Verdict::Healthy,
            ),
            (
                "inactive with no limit",
                &drop_any,
                inactive_for(reading(MI, "reserved"), 999 * 3600),
                true,
                Verdict::Healthy,
            ),
            (
                "active slot ignores a leftover inactive_since",
                &drop,
                SlotReading {
                    active: true,
                    active_pid: Some(7),
                    ..inactive_for(reading(MI, "reserved"), 25 * 3600)
                },
                true,
                Verdict::Healthy,
            ),
            (
                "inactivity timed with a clock behind the database",
                &drop,
                inactive_for(reading(MI, "reserved"), -3600),
                true,
                Verdict::Healthy,
            ),
            (
                "inactive, below warn but above drop",
                &drop,
                inactive_for(over.clone(), 25 * 3600),
                true,
                drop_v(over_reason, None),
            ),
            (
                "unowned",
                &drop,
                active(over.clone(), 9),
                false,
                unowned(over_reason),
            ),
            (
                "unowned lost",
                &drop,
                lost.clone(),
                false,
                unowned(lost_reason),
            ),
            (
                "unowned guarded",
                &drop_any,
                active(over.clone(), 9),
                false,
                drop_v(over_reason, Some(9)),
            ),
            ("alert", &alert, over.clone(), true, alert_only(over_reason)),
            (
                "alert and unowned: unowned wins",
                &alert,
                over.clone(),
                false,
                unowned(over_reason),
            ),
            (
                "alert, unowned guarded",
                &alert_any,
                over.clone(),
                false,
                alert_only(over_reason),
            ),
            (
                "alert, inactive",
                &alert,
                inactive_for(reading(MI, "reserved"), 25 * 3600),
                true,
                alert_only(idle_reason),
            ),
        ];
        for (name, policy, reading, owned, want) in cases {
            assert_eq!(decide(policy, &reading, owned, now()), want, "{name}");
        }
    }

    #[test]
    fn messages_say_why_nothing_was_done() {
        let r = "slot s retains 3.0Gi of WAL, above dropRetainedWal 2Gi".to_owned();
        let m = Verdict::WouldDropButUnowned { reason: r.clone() }
            .message()
            .unwrap_or_default();
        assert!(
            m.starts_with(&r) && m.contains("spec.guard.guardUnowned"),
            "{m}"
        );
        let m = Verdict::WouldDropButAlertOnly { reason: r.clone() }
            .message()
            .unwrap_or_default();
        assert!(m.contains("spec.guard.action is alert"), "{m}");
        assert_eq!(Verdict::Healthy.message(), None);
        assert_eq!(Verdict::Missing.reason(), None);
        assert_eq!(
            Verdict::Warn { reason: r.clone() }.reason(),
            Some(r.as_str())
        );
    }

    #[test]
    fn facts_for_status() {
        let mut r = active(reading(3 * GI / 2, "extended"), 31);
        r.safe_wal_size = Some(10 * MI);
        let at = now() + jiff::SignedDuration::from_millis(250);
        assert_eq!(
            facts(&r, at),
            SlotFacts {
                exists: true,
                active: true,
                active_pid: Some(31),
                wal_status: Some("extended".into()),
                retained_bytes: Some(3 * GI / 2),
                retained_wal: Some("1.5Gi".into()),
                safe_wal_size: Some(10 * MI),
                confirmed_flush_lsn: Some("0/16B3748".into()),
                last_check: Some("2025-06-15T15:06:40Z".into()),
            }
        );
        assert_eq!(
            facts(&SlotReading::missing("x"), now()),
            SlotFacts {
                exists: false,
                last_check: Some("2025-06-15T15:06:40Z".into()),
                ..SlotFacts::default()
            }
        );
        let d = drop_record("why", Some(5), now(), Some(3));
        assert_eq!(
            (
                d.at.as_str(),
                d.retained_bytes,
                d.reason.as_str(),
                d.generation
            ),
            ("2025-06-15T15:06:40Z", 5, "why", Some(3))
        );
    }

    #[test]
    fn human_durations() {
        for (secs, text) in [
            (0, "0ms"),
            (45, "45s"),
            (90, "1m30s"),
            (3600, "1h"),
            (25 * 3600, "25h"),
            (90_061, "25h1m"),
            (3 * 86_400 + 5, "72h"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(secs)), text, "{secs}");
        }
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
    }

    fn any_reading() -> impl Strategy<Value = SlotReading> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(1..100_000i32),
            prop::sample::select(vec!["reserved", "extended", "unreserved", "lost"]),
            prop::option::of(0..(8 * GI)),
            prop::option::of(-3600..(72 * 3600i64)),
        )
            .prop_map(
                |(exists, active, pid, status, retained, idle)| SlotReading {
                    slot_name: "s".into(),
                    exists,
                    active,
                    active_pid: pid,
                    wal_status: Some(status.into()),
                    retained_bytes: retained,
                    safe_wal_size: None,
                    confirmed_flush_lsn: None,
                    inactive_since: idle.map(|s| now() - jiff::SignedDuration::from_secs(s)),
                },
            )
    }

    fn any_policy() -> impl Strategy<Value = GuardPolicy> {
        (
            1..(4 * GI),
            1..(4 * GI),
            prop::sample::select(vec![None, Some("1h"), Some("24h")]),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(warn, extra, idle, alert, guard_unowned)| {
                GuardPolicy::from_spec(&SlotGuard {
                    check_interval: "10s".into(),
                    warn_retained_wal: warn.to_string(),
                    drop_retained_wal: (warn + extra).to_string(),
                    max_inactive: idle.map(Into::into),
                    action: if alert {
                        GuardAction::Alert
                    } else {
                        GuardAction::Drop
                    },
                    guard_unowned,
                })
                .expect("warn < drop by construction")
            })
    }

    proptest! {
        #[test]
        fn alert_never_drops(p in any_policy(), r in any_reading(), owned in any::<bool>()) {
            let p = GuardPolicy { action: GuardAction::Alert, ..p };
            let is_drop = matches!(decide(&p, &r, owned, now()), Verdict::Drop { .. });
            prop_assert!(!is_drop);
        }

        #[test]
        fn unowned_drops_only_when_guarded(p in any_policy(), r in any_reading()) {
            let v = decide(&p, &r, false, now());
            prop_assert!(!matches!(v, Verdict::Drop { .. }) || p.guard_unowned, "{v:?}");
        }

        #[test]
        fn below_warn_and_reserved_is_healthy(
            p in any_policy(), r in any_reading(), owned in any::<bool>(), extended in any::<bool>()
        ) {
            let r = SlotReading {
                exists: true,
                wal_status: Some(if extended { "extended" } else { "reserved" }.into()),
                retained_bytes: r.retained_bytes.map(|b| b % i64::try_from(p.warn.bytes + 1).unwrap_or(i64::MAX)),
                ..r
            };
            let idle_drop = matches!(
                (&p.max_inactive, r.inactive_for(now())),
                (Some(limit), Some(idle)) if idle > limit.duration
            );
            prop_assume!(!idle_drop);
            prop_assert_eq!(decide(&p, &r, owned, now()), Verdict::Healthy);
        }

        #[test]
        fn only_the_reader_of_an_active_slot_is_terminated(
            p in any_policy(), r in any_reading(), owned in any::<bool>()
        ) {
            if let Verdict::Drop { terminate_pid, .. } = decide(&p, &r, owned, now()) {
                prop_assert_eq!(terminate_pid, if r.active { r.active_pid } else { None });
            }
        }

        #[test]
        fn over_drop_is_never_healthy(
            p in any_policy(), r in any_reading(), owned in any::<bool>(), over in 1..GI
        ) {
            let drop = i64::try_from(p.drop.bytes).unwrap_or(i64::MAX);
            let r = SlotReading { exists: true, retained_bytes: Some(drop.saturating_add(over)), ..r };
            let v = decide(&p, &r, owned, now());
            prop_assert!(
                matches!(v, Verdict::Drop { .. } | Verdict::WouldDropButUnowned { .. } | Verdict::WouldDropButAlertOnly { .. }),
                "{v:?}"
            );
        }
    }
}
