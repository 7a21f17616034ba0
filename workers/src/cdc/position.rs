//! Position bookkeeping, pure: the source position written to Kafka in every transaction, what
//! a restarted worker skips because Kafka already holds it, and how the snapshot and the stream
//! line up (which streamed transactions the snapshot already contained).
//!
//! The operator creates the slot with SQL, which exports no snapshot. The worker takes its own
//! snapshot after the slot exists and records PostgreSQL's transaction snapshot
//! (`pg_current_snapshot()`) with it. A streamed transaction whose xid that snapshot sees was
//! read by the snapshot, so it is skipped; every other one is streamed. Nothing committed falls
//! between the two (the slot existed first), and nothing is captured twice.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `X/Y`, PostgreSQL's text form of an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not an LSN (expected X/Y in hexadecimal)")]
pub struct BadLsn(pub String);

pub fn parse_lsn(text: &str) -> Result<u64, BadLsn> {
    let bad = || BadLsn(text.to_owned());
    let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok((hi << 32) | lo)
}

/// What the worker stores in the positions topic, keyed by the source, in the same Kafka
/// transaction as the records it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    /// End LSN of the last PostgreSQL transaction whose rows are in Kafka (`X/Y`); absent
    /// before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotState>,
}

impl Position {
    /// The LSN, numeric; 0 when none.
    pub fn lsn_value(&self) -> Result<u64, BadLsn> {
        self.lsn.as_deref().map_or(Ok(0), parse_lsn)
    }
}

/// Progress of the initial snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotState {
    /// `snapshotNonce` the snapshot was taken for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    pub done: bool,
    /// The id (as text) of the last row written; the next chunk starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<String>,
    /// `pg_current_snapshot()` of the first snapshot transaction (`xmin:xmax:xip,…`).
    pub xids: String,
    /// `pg_current_wal_lsn()` read inside that transaction: transactions committed later were
    /// not visible to it.
    pub wal_lsn: String,
}

/// What to do about the snapshot at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPlan {
    /// Stream only.
    None,
    /// Take a new snapshot.
    Fresh,
    /// Continue an interrupted one after its last written row.
    Resume(SnapshotState),
}

/// `snapshotMode: initial` takes a snapshot once per nonce: when none was recorded (a new
/// source, or an older one that streamed with `never`), or the nonce changed. An unfinished one
/// resumes.
pub fn plan_snapshot(initial: bool, nonce: Option<i64>, stored: &Position) -> SnapshotPlan {
    if !initial {
        return SnapshotPlan::None;
    }
    match &stored.snapshot {
        Some(s) if s.nonce == nonce && s.done => SnapshotPlan::None,
        Some(s) if s.nonce == nonce => SnapshotPlan::Resume(s.clone()),
        // A source that streamed before without snapshot keeps its position; a snapshot is
        // taken only when asked for (first start, or a new nonce).
        None if stored.lsn.is_some() && nonce.is_none() => SnapshotPlan::None,
        _ => SnapshotPlan::Fresh,
    }
}

/// PostgreSQL's `pg_snapshot`: which transaction ids a snapshot sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a pg_snapshot (expected xmin:xmax:xip,…)")]
pub struct BadSnapshot(pub String);

impl XidSnapshot {
    pub fn parse(text: &str) -> Result<Self, BadSnapshot> {
        let bad = || BadSnapshot(text.to_owned());
        let mut parts = text.split(':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        if parts.next().is_some() || xmin > xmax {
            return Err(bad());
        }
        Ok(Self { xmin, xmax, xip })
    }

    /// Whether the snapshot sees (the commit of) 32-bit xid `xid`, as pgoutput sends it. The
    /// full xid is the one nearest `xmax` (within 2³¹, PostgreSQL's own wraparound horizon).
    pub fn sees(&self, xid: u32) -> bool {
        #[allow(clippy::cast_possible_truncation)]
        let distance = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        let full = i128::from(self.xmax) + i128::from(distance);
        if full < 0 {
            return true;
        }
        #[allow(clippy::cast_sign_loss)]
        let full = full as u64;
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// Which streamed transactions a finished (or running) snapshot already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub xids: XidSnapshot,
    pub wal_lsn: u64,
}

impl SnapshotFilter {
    pub fn from_state(s: &SnapshotState) -> Result<Self, String> {
        Ok(Self {
            xids: XidSnapshot::parse(&s.xids).map_err(|e| e.to_string())?,
            wal_lsn: parse_lsn(&s.wal_lsn).map_err(|e| e.to_string())?,
        })
    }

    /// A transaction committed at `commit_lsn` with xid `xid` was read by the snapshot.
    pub fn contains(&self, xid: u32, commit_lsn: u64) -> bool {
        commit_lsn < self.wal_lsn && self.xids.sees(xid)
    }
}

/// Whether a streamed transaction is already in Kafka: its commit is before the end of the last
/// transaction written (`written` = that end LSN). The server resends from the slot's confirmed
/// position, which may be behind what Kafka holds (the worker died between Kafka's commit and
/// its confirmation to PostgreSQL).
pub fn already_written(commit_lsn: u64, written: u64) -> bool {
    commit_lsn < written
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_text_round_trips() {
        for (text, v) in [
            ("0/0", 0),
            ("0/16B3748", 0x16B_3748),
            ("16/B374D848", 0x16_B374_D848),
        ] {
            assert_eq!(parse_lsn(text), Ok(v));
            assert_eq!(format_lsn(v), text);
        }
        for bad in ["", "1", "x/1", "1/", "100000000/0"] {
            assert!(parse_lsn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_visibility() {
        let s = XidSnapshot::parse("100:110:103,107").expect("parses");
        for (xid, seen) in [
            (99, true),
            (100, true),
            (103, false),
            (105, true),
            (107, false),
            (110, false),
            (200, false),
        ] {
            assert_eq!(s.sees(xid), seen, "xid {xid}");
        }
        assert_eq!(
            XidSnapshot::parse("5:5:").expect("empty xip").xip,
            Vec::<u64>::new()
        );
        for bad in ["", "1", "a:b:", "9:5:", "1:2:x"] {
            assert!(XidSnapshot::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn visibility_across_the_xid_epoch() {
        let base = 3u64 << 32;
        let s = XidSnapshot {
            xmin: base + 10,
            xmax: base + 20,
            xip: vec![base + 15],
        };
        assert!(s.sees(12));
        assert!(!s.sees(15));
        assert!(!s.sees(25));
        // Just below the epoch boundary: the previous epoch, long visible.
        assert!(s.sees(u32::MAX - 3));
    }

    #[test]
    fn the_filter_only_applies_before_the_snapshot_lsn() {
        let f = SnapshotFilter {
            xids: XidSnapshot::parse("100:110:").expect("parses"),
            wal_lsn: 1_000,
        };
        assert!(f.contains(105, 999));
        assert!(!f.contains(105, 1_000), "committed after the snapshot");
        assert!(!f.contains(120, 500), "not visible");
    }

    fn state(nonce: Option<i64>, done: bool) -> SnapshotState {
        SnapshotState {
            nonce,
            done,
            after_id: Some("41".into()),
            xids: "1:2:".into(),
            wal_lsn: "0/10".into(),
        }
    }

    #[test]
    fn snapshot_plans() {
        let fresh = Position::default();
        let streamed = Position {
            lsn: Some("0/100".into()),
            snapshot: None,
        };
        let done = Position {
            lsn: Some("0/100".into()),
            snapshot: Some(state(None, true)),
        };
        let running = Position {
            lsn: None,
            snapshot: Some(state(Some(1), false)),
        };
        assert_eq!(plan_snapshot(false, None, &fresh), SnapshotPlan::None);
        assert_eq!(plan_snapshot(true, None, &fresh), SnapshotPlan::Fresh);
        assert_eq!(plan_snapshot(true, None, &streamed), SnapshotPlan::None);
        assert_eq!(plan_snapshot(true, Some(1), &streamed), SnapshotPlan::Fresh);
        assert_eq!(plan_snapshot(true, None, &done), SnapshotPlan::None);
        assert_eq!(plan_snapshot(true, Some(2), &done), SnapshotPlan::Fresh);
        assert_eq!(
            plan_snapshot(true, Some(1), &running),
            SnapshotPlan::Resume(state(Some(1), false))
        );
        assert_eq!(plan_snapshot(true, Some(2), &running), SnapshotPlan::Fresh);
    }

    #[test]
    fn position_json_is_stable() {
        let p = Position {
            lsn: Some("0/16B3748".into()),
            snapshot: Some(state(Some(3), true)),
        };
        let v = serde_json::to_value(&p).expect("serializes");
        assert_eq!(v["lsn"], "0/16B3748");
        assert_eq!(v["snapshot"]["afterId"], "41");
        assert_eq!(v["snapshot"]["walLsn"], "0/10");
        let back: Position = serde_json::from_value(v).expect("parses");
        assert_eq!(back, p);
        assert_eq!(back.lsn_value(), Ok(0x16B_3748));
    }

    proptest! {
        #[test]
        fn lsn_round_trip(v in proptest::num::u64::ANY) {
            prop_assert_eq!(parse_lsn(&format_lsn(v)), Ok(v));
        }

        /// Visibility as PostgreSQL defines it for full xids near the snapshot.
        #[test]
        fn sees_matches_the_definition(xmin_off in 0u64..1000, span in 0u64..1000,
                                       epoch in 0u64..4, probe in 0u64..3000,
                                       inprog in proptest::collection::vec(0u64..1000, 0..5)) {
            let base = (epoch << 32) + 5_000;
            let xmin = base + xmin_off;
            let xmax = xmin + span;
            let xip: Vec<u64> = inprog.iter().map(|o| xmin + o % (span.max(1))).filter(|x| *x < xmax).collect();
            let s = XidSnapshot { xmin, xmax, xip: xip.clone() };
            let full = base + probe;
            let want = full < xmin || (full < xmax && !xip.contains(&full));
            prop_assert_eq!(s.sees(full as u32), want);
        }
    }
}
