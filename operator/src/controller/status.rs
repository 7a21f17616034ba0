//! Status bookkeeping shared by the three kinds: Kubernetes-style conditions whose
//! `lastTransitionTime` moves only when their status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::common::CommonStatus;

pub const READY: &str = "Ready";
pub const RECONCILED: &str = "Reconciled";
pub const SLOT_HEALTHY: &str = "SlotHealthy";

/// One condition as a reconcile sees it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The conditions to write: each of `next` keeps its previous `lastTransitionTime` when its
/// status did not change; conditions of other types in `previous` are kept as they were.
pub fn merge_conditions(
    previous: &[Condition],
    next: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| !next.iter().any(|n| n.type_ == p.type_))
        .cloned()
        .collect();
    for n in next {
        let status = if n.ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|p| p.type_ == n.type_ && p.status == status)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
        out.push(Condition {
            type_: n.type_.to_owned(),
            status: status.to_owned(),
            reason: n.reason.clone(),
            message: n.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The common status block of a successful reconcile: `Reconciled=True` plus `others`.
pub fn reconciled(
    previous: &CommonStatus,
    generation: Option<i64>,
    phase: &str,
    others: Vec<Cond>,
) -> CommonStatus {
    let mut conds = vec![Cond::new(
        RECONCILED,
        true,
        "Applied",
        "children are up to date with the spec",
    )];
    conds.extend(others);
    CommonStatus {
        phase: Some(phase.into()),
        observed_generation: generation,
        conditions: merge_conditions(&previous.conditions, &conds, generation, &now()),
    }
}

pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid time"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge_conditions(
            &[],
            &[Cond::new(READY, false, "Progressing", "0/2 ready")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        // Same status, new message: time kept.
        let second = merge_conditions(
            &first,
            &[Cond::new(READY, false, "Progressing", "1/2 ready")],
            Some(1),
            &at(200),
        );
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].message, "1/2 ready");
        // Status flips: time moves.
        let third = merge_conditions(
            &second,
            &[Cond::new(READY, true, "Running", "2/2 ready")],
            Some(2),
            &at(300),
        );
        assert_eq!(third[0].last_transition_time, at(300));
        assert_eq!(third[0].observed_generation, Some(2));
    }

    #[test]
    fn other_condition_types_are_kept_and_order_is_stable() {
        let prev = merge_conditions(
            &[],
            &[
                Cond::new(SLOT_HEALTHY, true, "Healthy", "ok"),
                Cond::new(READY, true, "Running", "ok"),
            ],
            Some(1),
            &at(1),
        );
        let next = merge_conditions(
            &prev,
            &[Cond::new(RECONCILED, true, "Applied", "ok")],
            Some(1),
            &at(2),
        );
        let types: Vec<&str> = next.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, RECONCILED, SLOT_HEALTHY]);
    }
}
