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
        "spec.guard.checkInterval: {value:?} is too short: at least 1s (each check queries the \
         database and writes status)"
    )]
    IntervalTooShort { value: String },
    #[error(
        "spec.guard.warnRetainedWal ({warn}) must be less than spec.guard.dropRetainedWal ({drop})"
    )]
    WarnNotBelowDrop { warn: String, drop: String },
}

/// The CRD refuses shorter intervals too; this catches objects that bypassed it.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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
    /// A connected reader that has confirmed nothing for this long while WAL waits is stuck.
    pub max_unconfirmed: Option<TimeLimit>,
    /// Drop past `drop` even when the reader keeps up: the disk matters more than the reader.
    pub drop_on_retained_wal: bool,
    pub action: GuardAction,
    pub guard_unowned: bool,
}

impl GuardPolicy {
    /// Resolves the textual spec. The CRD schema checks the same things, but an object can come
    /// from an older CRD or bypass CEL, so every error names its field again.
    pub fn from_spec(spec: &SlotGuard) -> Result<Self, PolicyError> {
        let check_interval = nonzero_duration("checkInterval", &spec.check_interval)?;
        if check_interval < MIN_CHECK_INTERVAL {
            return Err(PolicyError::IntervalTooShort {
                value: spec.check_interval.clone(),
            });
        }
        let warn = threshold("warnRetainedWal", &spec.warn_retained_wal)?;
        let drop = threshold("dropRetainedWal", &spec.drop_retained_wal)?;
        if warn.bytes >= drop.bytes {
            return Err(PolicyError::WarnNotBelowDrop {
                warn: warn.text,
                drop: drop.text,
            });
        }
        let time_limit = |field, text: &Option<String>| {
            text.as_deref()
                .map(|text| {
                    nonzero_duration(field, text).map(|duration| TimeLimit {
                        duration,
                        text: text.to_owned(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            check_interval,
            warn,
            drop,
            max_inactive: time_limit("maxInactive", &spec.max_inactive)?,
            max_unconfirmed: time_limit("maxUnconfirmed", &spec.max_unconfirmed)?,
            drop_on_retained_wal: spec.drop_on_retained_wal,
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
    /// The same position as a number, to tell whether it moved between checks.
    pub confirmed_position: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: what the reader has yet to confirm.
    pub confirmed_lag_bytes: Option<i64>,
    /// Since when the confirmed position has not moved (the guard remembers the position between
    /// checks); none when it moved since the last check.
    pub confirmed_unchanged_since: Option<Timestamp>,
    /// Since when the slot has had no reader; none while it is active. PostgreSQL 17 reports
    /// it; before that it is the first time the guard saw the slot inactive.
    pub inactive_since: Option<Timestamp>,
    /// The oldest transaction that has written WAL and is still open: logical decoding must
    /// keep WAL from its start, so it holds the slot's restart position back.
    pub oldest_transaction: Option<OpenTransaction>,
}

/// What the guard remembers of a slot between checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMemory {
    /// See [`SlotReading::inactive_since`].
    pub inactive_since: Option<Timestamp>,
    /// The confirmed position last seen, and when it was first seen there.
    pub confirmed: Option<(i64, Timestamp)>,
}

/// Completes a fresh `reading` with what the previous check remembered (how long the confirmed
/// position has stood still), and returns what to remember for the next one.
pub fn track(
    mut reading: SlotReading,
    previous: &SlotMemory,
    now: Timestamp,
) -> (SlotReading, SlotMemory) {
    let confirmed = reading
        .confirmed_position
        .map(|pos| match previous.confirmed {
            Some((before, seen)) if before == pos => (pos, seen),
            _ => (pos, now),
        });
    // Unknown on the first sight of a position: it may have just moved there.
    reading.confirmed_unchanged_since = confirmed
        .filter(|(pos, _)| previous.confirmed.map(|(before, _)| before) == Some(*pos))
        .map(|(_, seen)| seen);
    let memory = SlotMemory {
        inactive_since: reading.inactive_since,
        confirmed,
    };
    (reading, memory)
}

/// A backend with an open transaction, as `pg_stat_activity` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransaction {
    pub pid: i32,
    /// How long the transaction has been open.
    pub age: Duration,
}

/// Why a slot retains WAL or must go: the status field `slot.cause`, the `SlotHealthy`
/// condition's reason and the Event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// PostgreSQL removed WAL the slot needs (`wal_status` lost): it can never stream again.
    WalLost,
    /// No reader is connected.
    ReaderGone,
    /// A reader is connected but has confirmed nothing for longer than `maxUnconfirmed` while
    /// WAL waits for it.
    ReaderStuck,
    /// The reader confirms promptly, but an open transaction (when known, this one) holds the
    /// restart position back: dropping the slot would not help, ending the transaction would.
    HeldBackByTransaction(Option<OpenTransaction>),
    /// The reader is connected and confirming, but behind.
    ReaderBehind,
}

impl Cause {
    /// CamelCase, for status, conditions and Events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::WalLost => "WalLost",
            Cause::ReaderGone => "ReaderGone",
            Cause::ReaderStuck => "ReaderStuck",
            Cause::HeldBackByTransaction(_) => "HeldBackByTransaction",
            Cause::ReaderBehind => "ReaderBehind",
        }
    }
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
        Some(elapsed(self.inactive_since?, now))
    }

    fn retained(&self) -> u64 {
        bytes(self.retained_bytes)
    }

    fn confirmed_lag(&self) -> u64 {
        bytes(self.confirmed_lag_bytes)
    }

    /// How long the confirmed position has not moved, as of `now`.
    pub fn unconfirmed_for(&self, now: Timestamp) -> Option<Duration> {
        self.confirmed_unchanged_since
            .map(|since| elapsed(since, now))
    }

    /// What holds WAL back while the reader is connected: most of the retained WAL is already
    /// confirmed, so the reader keeps up and the slot's restart position is held by an open
    /// transaction; otherwise the reader itself is behind.
    fn connected_cause(&self) -> Cause {
        if self.confirmed_lag().saturating_mul(2) < self.retained() {
            Cause::HeldBackByTransaction(self.oldest_transaction.clone())
        } else {
            Cause::ReaderBehind
        }
    }
}

fn bytes(b: Option<i64>) -> u64 {
    b.and_then(|b| u64::try_from(b).ok()).unwrap_or(0)
}

/// `now - since`; a clock behind the database's reads as "just now".
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let ms = now.as_millisecond().saturating_sub(since.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What the guard should do about one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Warn {
        cause: Cause,
        reason: String,
    },
    /// Terminate `terminate_pid` (the reader holding the slot) if any, then drop the slot.
    Drop {
        cause: Cause,
        reason: String,
        terminate_pid: Option<i32>,
    },
    /// Past a drop condition, but kartflow did not create the slot and `guardUnowned` is off.
    WouldDropButUnowned {
        cause: Cause,
        reason: String,
    },
    /// Past a drop condition, but `action` is `alert`.
    WouldDropButAlertOnly {
        cause: Cause,
        reason: String,
    },
    Missing,
}

impl Verdict {
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Warn { reason, .. }
            | Verdict::Drop { reason, .. }
            | Verdict::WouldDropButUnowned { reason, .. }
            | Verdict::WouldDropButAlertOnly { reason, .. } => Some(reason),
            Verdict::Healthy | Verdict::Missing => None,
        }
    }

    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Verdict::Warn { cause, .. }
            | Verdict::Drop { cause, .. }
            | Verdict::WouldDropButUnowned { cause, .. }
            | Verdict::WouldDropButAlertOnly { cause, .. } => Some(cause),
            Verdict::Healthy | Verdict::Missing => None,
        }
    }

    /// The sentence for an Event or log line, saying why nothing was done when that applies.
    pub fn message(&self) -> Option<String> {
        match self {
            Verdict::Warn { reason, .. } => Some(reason.clone()),
            Verdict::Drop { reason, .. } => Some(format!("{reason}: dropping the slot")),
            Verdict::WouldDropButUnowned { reason, .. } => Some(format!(
                "{reason}: not dropped because kartflow did not create this slot \
                 (set spec.guard.guardUnowned to let the guard drop it)"
            )),
            Verdict::WouldDropButAlertOnly { reason, .. } => Some(format!(
                "{reason}: not dropped because spec.guard.action is alert"
            )),
            Verdict::Healthy | Verdict::Missing => None,
        }
    }
}

/// Decides about one reading. `owned`: kartflow created this slot.
///
/// The slot goes only when PostgreSQL says it is `lost`, when its reader is gone (past
/// `dropRetainedWal` or `maxInactive`), or when a connected reader has confirmed nothing for
/// `maxUnconfirmed` while WAL waits. A connected reader that keeps confirming is never ended:
/// past the thresholds the guard warns and names what holds the WAL back, unless
/// `dropOnRetainedWal` says the disk matters more.
pub fn decide(policy: &GuardPolicy, reading: &SlotReading, owned: bool, now: Timestamp) -> Verdict {
    if !reading.exists {
        return Verdict::Missing;
    }
    if let Some((cause, reason)) = drop_cause(policy, reading, now) {
        return if !owned && !policy.guard_unowned {
            Verdict::WouldDropButUnowned { cause, reason }
        } else if policy.action == GuardAction::Alert {
            Verdict::WouldDropButAlertOnly { cause, reason }
        } else {
            Verdict::Drop {
                cause,
                reason,
                terminate_pid: reading.active.then_some(reading.active_pid).flatten(),
            }
        };
    }
    match warn_cause(policy, reading) {
        Some((cause, reason)) => Verdict::Warn { cause, reason },
        None => Verdict::Healthy,
    }
}

fn drop_cause(policy: &GuardPolicy, r: &SlotReading, now: Timestamp) -> Option<(Cause, String)> {
    let slot = &r.slot_name;
    if r.wal_status.as_deref() == Some(WAL_STATUS_LOST) {
        return Some((
            Cause::WalLost,
            format!("slot {slot} has lost WAL it needs (wal_status lost): it can no longer stream"),
        ));
    }
    let retained = r.retained();
    let over_drop = retained > policy.drop.bytes;
    if !r.active {
        if over_drop {
            return Some((
                Cause::ReaderGone,
                format!(
                    "slot {slot} has no reader and retains {} of WAL, above dropRetainedWal {}",
                    format_bytes(retained),
                    policy.drop.text
                ),
            ));
        }
        let limit = policy.max_inactive.as_ref()?;
        let inactive = r.inactive_for(now)?;
        return (inactive > limit.duration).then(|| {
            (
                Cause::ReaderGone,
                format!(
                    "slot {slot} has had no reader for {}, longer than maxInactive {}",
                    human_duration(inactive),
                    limit.text
                ),
            )
        });
    }
    if let (Some(limit), Some(quiet)) = (&policy.max_unconfirmed, r.unconfirmed_for(now))
        && quiet > limit.duration
        && r.confirmed_lag() > 0
    {
        return Some((
            Cause::ReaderStuck,
            format!(
                "the reader of slot {slot}{} has confirmed nothing for {}, longer than \
                 maxUnconfirmed {}, while {} of WAL waits for it",
                pid_suffix(r.active_pid),
                human_duration(quiet),
                limit.text,
                format_bytes(r.confirmed_lag())
            ),
        ));
    }
    (over_drop && policy.drop_on_retained_wal).then(|| {
        (
            r.connected_cause(),
            format!(
                "slot {slot} retains {} of WAL, above dropRetainedWal {} (dropOnRetainedWal is \
                 set: dropped although its reader is connected)",
                format_bytes(retained),
                policy.drop.text
            ),
        )
    })
}

fn warn_cause(policy: &GuardPolicy, r: &SlotReading) -> Option<(Cause, String)> {
    let slot = &r.slot_name;
    let retained = r.retained();
    let (limit, text) = if retained > policy.drop.bytes {
        ("dropRetainedWal", &policy.drop.text)
    } else if retained > policy.warn.bytes {
        ("warnRetainedWal", &policy.warn.text)
    } else if r.wal_status.as_deref() == Some(WAL_STATUS_UNRESERVED) {
        let cause = if r.active {
            r.connected_cause()
        } else {
            Cause::ReaderGone
        };
        return Some((
            cause,
            format!(
                "slot {slot} is about to lose WAL it needs (wal_status unreserved, beyond \
                 max_slot_wal_keep_size): its reader must catch up before the next checkpoint"
            ),
        ));
    } else {
        return None;
    };
    let head = format!(
        "slot {slot} retains {} of WAL, above {limit} {text}",
        format_bytes(retained)
    );
    if !r.active {
        return Some((Cause::ReaderGone, format!("{head}; it has no reader")));
    }
    let lag = format_bytes(r.confirmed_lag());
    let cause = r.connected_cause();
    let reason = match &cause {
        Cause::HeldBackByTransaction(Some(t)) => format!(
            "{head}, but its reader confirms promptly ({lag} behind): the transaction of \
             backend {} (open for {}) holds the slot's restart position back. Commit or end \
             that transaction; the guard does not drop a reader that keeps up",
            t.pid,
            human_duration(t.age)
        ),
        Cause::HeldBackByTransaction(None) => format!(
            "{head}, but its reader confirms promptly ({lag} behind): an open transaction \
             (or a prepared one) holds the slot's restart position back; the guard does not \
             drop a reader that keeps up"
        ),
        _ => format!(
            "{head}; its reader{} is {lag} behind and confirming",
            pid_suffix(r.active_pid)
        ),
    };
    Some((cause, reason))
}

fn pid_suffix(pid: Option<i32>) -> String {
    pid.map(|p| format!(" (backend {p})")).unwrap_or_default()
}

/// The status facts of a reading taken at `now`, with the cause the verdict found.
pub fn facts(reading: &SlotReading, cause: Option<&Cause>, now: Timestamp) -> SlotFacts {
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
        confirmed_lag_bytes: reading.confirmed_lag_bytes,
        confirmed_unchanged_since: reading.confirmed_unchanged_since.map(rfc3339),
        cause: cause.map(|c| c.as_str().to_owned()),
        held_back_by_pid: held_back(cause).map(|t| t.pid),
        held_back_for: held_back(cause).map(|t| human_duration(t.age)),
        last_check,
    }
}

fn held_back(cause: Option<&Cause>) -> Option<&OpenTransaction> {
    match cause {
        Some(Cause::HeldBackByTransaction(t)) => t.as_ref(),
        _ => None,
    }
}

/// Where a drop stands, recorded before and after it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropStage {
    /// Decided and recorded; the `DROP` has not (yet) succeeded.
    Pending,
    Dropped,
    /// The slot was gone by the time the guard dropped it.
    Gone,
    /// Decided and recorded, never carried out: a later check found the slot still there (the
    /// deciding leader lost its Lease, or the `DROP` failed). The slot is intact, so nothing
    /// waits for an acknowledgement.
    Abandoned,
}

impl DropStage {
    pub fn as_str(self) -> &'static str {
        match self {
            DropStage::Pending => "Pending",
            DropStage::Dropped => "Dropped",
            DropStage::Gone => "Gone",
            DropStage::Abandoned => "Abandoned",
        }
    }
}

/// The status record of a decided drop (stage `Pending`), written before the `DROP`;
/// `recreate_nonce` and `generation` are the spec's at that moment.
pub fn drop_record(
    cause: &Cause,
    reason: &str,
    retained_bytes: Option<i64>,
    at: Timestamp,
    recreate_nonce: Option<i64>,
    generation: Option<i64>,
) -> SlotDrop {
    SlotDrop {
        at: rfc3339(at),
        retained_bytes: retained_bytes.unwrap_or(0),
        reason: reason.to_owned(),
        cause: Some(cause.as_str().to_owned()),
        outcome: Some(DropStage::Pending.as_str().to_owned()),
        recreate_nonce,
        generation,
    }
}

/// `record` once the `DROP` has run.
pub fn drop_done(record: SlotDrop, stage: DropStage, retained_bytes: Option<i64>) -> SlotDrop {
    SlotDrop {
        outcome: Some(stage.as_str().to_owned()),
        retained_bytes: retained_bytes.unwrap_or(record.retained_bytes),
        ..record
    }
}

/// A check that reads the status left `Pending` by an earlier check: whether the drop it
/// recorded is to be closed as `Abandoned`, because the slot is still there.
pub fn abandoned(previous: Option<&SlotDrop>, reading: &SlotReading) -> Option<SlotDrop> {
    let pending = previous.filter(|d| d.outcome.as_deref() == Some(DropStage::Pending.as_str()))?;
    reading.exists.then(|| SlotDrop {
        outcome: Some(DropStage::Abandoned.as_str().to_owned()),
        ..pending.clone()
    })
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
            max_unconfirmed: Some("15m".into()),
            drop_on_retained_wal: false,
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
            confirmed_position: Some(0x16B_3748),
            // A reader that has confirmed nothing at all: everything retained is unconfirmed.
            confirmed_lag_bytes: Some(retained),
            confirmed_unchanged_since: None,
            inactive_since: Some(now()),
            oldest_transaction: None,
        }
    }

    fn active(mut r: SlotReading, pid: i32) -> SlotReading {
        r.active = true;
        r.active_pid = Some(pid);
        r.inactive_since = None;
        r
    }

    /// Connected and confirming: only `lag` bytes behind.
    fn keeping_up(r: SlotReading, pid: i32, lag: i64) -> SlotReading {
        SlotReading {
            confirmed_lag_bytes: Some(lag),
            ..active(r, pid)
        }
    }

    /// Connected, nothing confirmed for `secs`.
    fn silent_for(r: SlotReading, pid: i32, secs: i64) -> SlotReading {
        SlotReading {
            confirmed_unchanged_since: Some(now() - jiff::SignedDuration::from_secs(secs)),
            ..active(r, pid)
        }
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
        let cases: [(&str, SlotGuard); 9] = [
            (
                "spec.guard.checkInterval: \"500ms\" is too short: at least 1s",
                SlotGuard {
                    check_interval: "500ms".into(),
                    ..base.clone()
                },
            ),
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
        let size_first = GuardPolicy {
            drop_on_retained_wal: true,
            ..drop.clone()
        };
        let no_stuck_limit = GuardPolicy {
            max_unconfirmed: None,
            ..drop.clone()
        };
        let over = reading(2 * GI + 300 * MI, "extended");
        let gone_reason = "slot kartflow_orders has no reader and retains 2.3Gi of WAL, above dropRetainedWal 2Gi";
        let lost_reason =
            "slot kartflow_orders has lost WAL it needs (wal_status lost): it can no longer stream";
        let idle_reason =
            "slot kartflow_orders has had no reader for 25h, longer than maxInactive 24h";
        let stuck_reason = "the reader of slot kartflow_orders (backend 4242) has confirmed \
             nothing for 20m, longer than maxUnconfirmed 15m, while 2.3Gi of WAL waits for it";
        let size_reason = "slot kartflow_orders retains 2.3Gi of WAL, above dropRetainedWal 2Gi \
             (dropOnRetainedWal is set: dropped although its reader is connected)";
        let blocker = OpenTransaction {
            pid: 777,
            age: Duration::from_secs(2 * 3600 + 300),
        };
        let held = |r: SlotReading| SlotReading {
            oldest_transaction: Some(blocker.clone()),
            ..keeping_up(r, 4242, MI)
        };
        let held_reason = "slot kartflow_orders retains 2.3Gi of WAL, above dropRetainedWal \
             2Gi, but its reader confirms promptly (1.0Mi behind): the transaction of backend \
             777 (open for 2h5m) holds the slot's restart position back. Commit or end that \
             transaction; the guard does not drop a reader that keeps up";
        let drop_v = |cause: Cause, reason: &str, pid| Verdict::Drop {
            cause,
            reason: reason.into(),
            terminate_pid: pid,
        };
        let unowned = |cause: Cause, reason: &str| Verdict::WouldDropButUnowned {
            cause,
            reason: reason.into(),
        };
        let alert_only = |cause: Cause, reason: &str| Verdict::WouldDropButAlertOnly {
            cause,
            reason: reason.into(),
        };
        let warn = |cause: Cause, reason: &str| Verdict::Warn {
            cause,
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
                "no reader, exactly drop is only a warning",
                &drop,
                reading(2 * GI, "reserved"),
                true,
                warn(
                    Cause::ReaderGone,
                    "slot kartflow_orders retains 2.0Gi of WAL, above warnRetainedWal 1Gi; it \
                     has no reader",
                ),
            ),
            (
                "no reader, above warn",
                &alert,
                reading(3 * GI / 2, "reserved"),
                false,
                warn(
                    Cause::ReaderGone,
                    "slot kartflow_orders retains 1.5Gi of WAL, above warnRetainedWal 1Gi; it \
                     has no reader",
                ),
            ),
            (
                "reader behind, above warn",
                &drop,
                silent_for(reading(3 * GI / 2, "reserved"), 7, 60),
                true,
                warn(
                    Cause::ReaderBehind,
                    "slot kartflow_orders retains 1.5Gi of WAL, above warnRetainedWal 1Gi; its \
                     reader (backend 7) is 1.5Gi behind and confirming",
                ),
            ),
            (
                "unreserved below warn, no reader",
                &drop,
                reading(MI, "unreserved"),
                true,
                warn(
                    Cause::ReaderGone,
                    "slot kartflow_orders is about to lose WAL it needs (wal_status unreserved, \
                     beyond max_slot_wal_keep_size): its reader must catch up before the next checkpoint",
                ),
            ),
            (
                "no reader, above drop",
                &drop,
                over.clone(),
                true,
                drop_v(Cause::ReaderGone, gone_reason, None),
            ),
            (
                "a reader that keeps up is never dropped on size",
                &drop,
                held(over.clone()),
                true,
                warn(
                    Cause::HeldBackByTransaction(Some(blocker.clone())),
                    held_reason,
                ),
            ),
            (
                "held back without a known transaction",
                &drop,
                keeping_up(over.clone(), 4242, MI),
                true,
                warn(
                    Cause::HeldBackByTransaction(None),
                    "slot kartflow_orders retains 2.3Gi of WAL, above dropRetainedWal 2Gi, but \
                     its reader confirms promptly (1.0Mi behind): an open transaction (or a \
                     prepared one) holds the slot's restart position back; the guard does not \
                     drop a reader that keeps up",
                ),
            ),
            (
                "a connected reader behind but confirming is not dropped on size",
                &drop,
                silent_for(over.clone(), 4242, 60),
                true,
                warn(
                    Cause::ReaderBehind,
                    "slot kartflow_orders retains 2.3Gi of WAL, above dropRetainedWal 2Gi; its \
                     reader (backend 4242) is 2.3Gi behind and confirming",
                ),
            ),
            (
                "dropOnRetainedWal drops on size alone, reader terminated",
                &size_first,
                held(over.clone()),
                true,
                drop_v(
                    Cause::HeldBackByTransaction(Some(blocker.clone())),
                    size_reason,
                    Some(4242),
                ),
            ),
            (
                "stuck reader: terminated and dropped",
                &drop,
                silent_for(over.clone(), 4242, 20 * 60),
                true,
                drop_v(Cause::ReaderStuck, stuck_reason, Some(4242)),
            ),
            (
                "stuck below every threshold is still stuck",
                &drop,
                silent_for(reading(MI, "reserved"), 4242, 20 * 60),
                true,
                drop_v(
                    Cause::ReaderStuck,
                    "the reader of slot kartflow_orders (backend 4242) has confirmed nothing \
                     for 20m, longer than maxUnconfirmed 15m, while 1.0Mi of WAL waits for it",
                    Some(4242),
                ),
            ),
            (
                "silent with nothing to confirm is idle, not stuck",
                &drop,
                SlotReading {
                    confirmed_lag_bytes: Some(0),
                    ..silent_for(reading(MI, "reserved"), 4242, 20 * 60)
                },
                true,
                Verdict::Healthy,
            ),
            (
                "silent within maxUnconfirmed",
                &drop,
                silent_for(reading(MI, "reserved"), 4242, 10 * 60),
                true,
                Verdict::Healthy,
            ),
            (
                "no maxUnconfirmed: never stuck",
                &no_stuck_limit,
                silent_for(reading(MI, "reserved"), 4242, 99 * 3600),
                true,
                Verdict::Healthy,
            ),
            (
                "stale pid of an inactive slot is not terminated",
                &drop,
                SlotReading {
                    active_pid: Some(4242),
                    ..over.clone()
                },
                true,
                drop_v(Cause::ReaderGone, gone_reason, None),
            ),
            (
                "lost",
                &drop,
                lost.clone(),
                true,
                drop_v(Cause::WalLost, lost_reason, None),
            ),
            (
                "lost wins over a reader that keeps up",
                &drop,
                SlotReading {
                    wal_status: Some("lost".into()),
                    ..held(over.clone())
                },
                true,
                drop_v(Cause::WalLost, lost_reason, Some(4242)),
            ),
            (
                "inactive too long",
                &drop,
                inactive_for(reading(MI, "reserved"), 25 * 3600),
                true,
                drop_v(Cause::ReaderGone, idle_reason, None),
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
                "inactive, above drop",
                &drop,
                inactive_for(over.clone(), 25 * 3600),
                true,
                drop_v(Cause::ReaderGone, gone_reason, None),
            ),
            (
                "unowned",
                &drop,
                over.clone(),
                false,
                unowned(Cause::ReaderGone, gone_reason),
            ),
            (
                "unowned lost",
                &drop,
                lost.clone(),
                false,
                unowned(Cause::WalLost, lost_reason),
            ),
            (
                "unowned guarded",
                &drop_any,
                silent_for(over.clone(), 4242, 20 * 60),
                false,
                drop_v(Cause::ReaderStuck, stuck_reason, Some(4242)),
            ),
            (
                "alert",
                &alert,
                over.clone(),
                true,
                alert_only(Cause::ReaderGone, gone_reason),
            ),
            (
                "alert and unowned: unowned wins",
                &alert,
                over.clone(),
                false,
                unowned(Cause::ReaderGone, gone_reason),
            ),
            (
                "alert, unowned guarded",
                &alert_any,
                over.clone(),
                false,
                alert_only(Cause::ReaderGone, gone_reason),
            ),
            (
                "alert, inactive",
                &alert,
                inactive_for(reading(MI, "reserved"), 25 * 3600),
                true,
                alert_only(Cause::ReaderGone, idle_reason),
            ),
        ];
        for (name, policy, reading, owned, want) in cases {
            assert_eq!(decide(policy, &reading, owned, now()), want, "{name}");
        }
    }

    #[test]
    fn tracking_tells_a_still_position_from_a_moving_one() {
        let t = |secs| now() + jiff::SignedDuration::from_secs(secs);
        let at = |pos| SlotReading {
            confirmed_position: Some(pos),
            ..active(reading(MI, "reserved"), 1)
        };
        let (r, m) = track(at(100), &SlotMemory::default(), t(0));
        assert_eq!(r.confirmed_unchanged_since, None, "first sight: unknown");
        let (r, m) = track(at(100), &m, t(30));
        assert_eq!(
            r.confirmed_unchanged_since,
            Some(t(0)),
            "still since first seen"
        );
        let (r, m) = track(at(100), &m, t(60));
        assert_eq!(r.unconfirmed_for(t(60)), Some(Duration::from_secs(60)));
        let (r, m) = track(at(200), &m, t(90));
        assert_eq!(r.confirmed_unchanged_since, None, "moved");
        let (r, _) = track(at(200), &m, t(120));
        assert_eq!(r.confirmed_unchanged_since, Some(t(90)));
        let (r, m) = track(SlotReading::missing("s"), &m, t(150));
        assert_eq!((r.confirmed_unchanged_since, m.confirmed), (None, None));
    }

    #[test]
    fn messages_say_why_nothing_was_done() {
        let r = "slot s retains 3.0Gi of WAL, above dropRetainedWal 2Gi".to_owned();
        let m = Verdict::WouldDropButUnowned {
            cause: Cause::ReaderGone,
            reason: r.clone(),
        }
        .message()
        .unwrap_or_default();
        assert!(
            m.starts_with(&r) && m.contains("spec.guard.guardUnowned"),
            "{m}"
        );
        let m = Verdict::WouldDropButAlertOnly {
            cause: Cause::ReaderGone,
            reason: r.clone(),
        }
        .message()
        .unwrap_or_default();
        assert!(m.contains("spec.guard.action is alert"), "{m}");
        assert_eq!(Verdict::Healthy.message(), None);
        assert_eq!(Verdict::Missing.reason(), None);
        assert_eq!(
            Verdict::Warn {
                cause: Cause::ReaderBehind,
                reason: r.clone()
            }
            .reason(),
            Some(r.as_str())
        );
    }

    #[test]
    fn facts_for_status() {
        let mut r = keeping_up(reading(3 * GI / 2, "extended"), 31, MI);
        r.safe_wal_size = Some(10 * MI);
        r.confirmed_unchanged_since = Some(now() - jiff::SignedDuration::from_secs(5));
        let at = now() + jiff::SignedDuration::from_millis(250);
        let blocker = OpenTransaction {
            pid: 9,
            age: Duration::from_secs(90),
        };
        assert_eq!(
            facts(&r, Some(&Cause::HeldBackByTransaction(Some(blocker))), at),
            SlotFacts {
                exists: true,
                active: true,
                active_pid: Some(31),
                wal_status: Some("extended".into()),
                retained_bytes: Some(3 * GI / 2),
                retained_wal: Some("1.5Gi".into()),
                safe_wal_size: Some(10 * MI),
                confirmed_flush_lsn: Some("0/16B3748".into()),
                confirmed_lag_bytes: Some(MI),
                confirmed_unchanged_since: Some("2025-06-15T15:06:35Z".into()),
                cause: Some("HeldBackByTransaction".into()),
                held_back_by_pid: Some(9),
                held_back_for: Some("1m30s".into()),
                last_check: Some("2025-06-15T15:06:40Z".into()),
            }
        );
        assert_eq!(
            facts(&SlotReading::missing("x"), None, now()),
            SlotFacts {
                exists: false,
                last_check: Some("2025-06-15T15:06:40Z".into()),
                ..SlotFacts::default()
            }
        );
        let d = drop_record(&Cause::ReaderStuck, "why", Some(5), now(), Some(7), Some(3));
        assert_eq!(
            (
                d.at.as_str(),
                d.retained_bytes,
                d.reason.as_str(),
                d.cause.as_deref(),
                d.outcome.as_deref(),
                d.recreate_nonce,
                d.generation
            ),
            (
                "2025-06-15T15:06:40Z",
                5,
                "why",
                Some("ReaderStuck"),
                Some("Pending"),
                Some(7),
                Some(3)
            )
        );
        let done = drop_done(d.clone(), DropStage::Dropped, Some(9));
        assert_eq!(
            (done.outcome.as_deref(), done.retained_bytes),
            (Some("Dropped"), 9)
        );
        let gone = drop_done(d.clone(), DropStage::Gone, None);
        assert_eq!(
            (gone.outcome.as_deref(), gone.retained_bytes),
            (Some("Gone"), 5)
        );
        // Only a Pending record whose slot is still there is abandoned.
        let present = SlotReading {
            exists: true,
            ..SlotReading::missing("x")
        };
        let missing = SlotReading::missing("x");
        let abandoned_pending = abandoned(Some(&d), &present);
        assert_eq!(
            abandoned_pending
                .as_ref()
                .and_then(|a| a.outcome.as_deref()),
            Some("Abandoned")
        );
        assert_eq!(abandoned_pending.map(|a| a.at), Some(d.at.clone()));
        assert_eq!(
            abandoned(Some(&d), &missing),
            None,
            "maybe dropped: keep Pending"
        );
        assert_eq!(
            abandoned(Some(&done), &present),
            None,
            "a finished drop stays"
        );
        assert_eq!(abandoned(None, &present), None);
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
                    confirmed_position: None,
                    confirmed_lag_bytes: retained.map(|r| r / 3),
                    confirmed_unchanged_since: idle
                        .map(|s| now() - jiff::SignedDuration::from_secs(s)),
                    inactive_since: idle.map(|s| now() - jiff::SignedDuration::from_secs(s)),
                    oldest_transaction: None,
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
                    max_unconfirmed: idle.map(Into::into),
                    drop_on_retained_wal: false,
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
            let stuck = r.active && r.confirmed_lag() > 0 && matches!(
                (&p.max_unconfirmed, r.unconfirmed_for(now())),
                (Some(limit), Some(quiet)) if quiet > limit.duration
            );
            prop_assume!(!idle_drop && !stuck);
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
            prop_assert!(v != Verdict::Healthy && v.cause().is_some(), "{v:?}");
            if !r.active {
                prop_assert!(
                    matches!(v, Verdict::Drop { .. } | Verdict::WouldDropButUnowned { .. } | Verdict::WouldDropButAlertOnly { .. }),
                    "a slot without a reader past the drop threshold goes: {v:?}"
                );
            }
        }

        #[test]
        fn a_connected_reader_that_confirms_is_never_ended(
            p in any_policy(), r in any_reading(), owned in any::<bool>(), status in prop::sample::select(vec!["reserved", "extended", "unreserved"])
        ) {
            let r = SlotReading {
                exists: true,
                active: true,
                confirmed_unchanged_since: None,
                wal_status: Some(status.into()),
                ..r
            };
            let v = decide(&p, &r, owned, now());
            prop_assert!(!matches!(v, Verdict::Drop { .. }), "{v:?}");
        }
    }
}
