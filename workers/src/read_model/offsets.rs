//! The Kafka positions an answer reflects, and the header that carries them between a client
//! and any replica (read-your-writes across replicas).
//!
//! Format of `Kartflow-Offsets` (response) and `Kartflow-Min-Offsets` (request): comma-separated
//! `topic:partition=nextOffset`, e.g. `products:0=120,products:1=98,inventory-events:0=40`.
//! Kafka topic names cannot contain `:`, `,` or `=`, so the format needs no escaping.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Response header: the positions the view had reached when it answered.
pub const OFFSETS_HEADER: &str = "kartflow-offsets";
/// Request header (or `minOffsets` query parameter): answer only once the view has reached these.
pub const MIN_OFFSETS_HEADER: &str = "kartflow-min-offsets";

/// Next offset to read per (topic, partition): every record below it is in the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(BTreeMap<(Arc<str>, i32), i64>);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{text:?} is not a list of topic:partition=offset (e.g. products:0=120,products:1=98)")]
pub struct OffsetsParseError {
    pub text: String,
}

impl Offsets {
    /// Records that everything below `next` of `topic`/`partition` is applied. Positions only
    /// move forward, whatever order partitions are applied in.
    pub fn advance(&mut self, topic: &Arc<str>, partition: i32, next: i64) {
        match self.0.get_mut(&(topic.clone(), partition)) {
            Some(current) => *current = (*current).max(next),
            None => {
                self.0.insert((topic.clone(), partition), next);
            }
        }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(&(Arc::from(topic), partition)).copied()
    }

    /// True when every position in `wanted` is reached here. A partition this view has not
    /// read yet counts as offset 0.
    pub fn covers(&self, wanted: &Offsets) -> bool {
        wanted
            .0
            .iter()
            .all(|(tp, want)| self.0.get(tp).copied().unwrap_or(0) >= *want)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().map(|((t, p), o)| (&**t, *p, *o))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(text: &str) -> Result<Self, OffsetsParseError> {
        let bad = || OffsetsParseError {
            text: text.to_owned(),
        };
        let mut out = Offsets::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (tp, offset) = item.split_once('=').ok_or_else(bad)?;
            let (topic, partition) = tp.rsplit_once(':').ok_or_else(bad)?;
            let partition: i32 = partition.parse().map_err(|_| bad())?;
            let offset: i64 = offset.parse().map_err(|_| bad())?;
            if topic.is_empty() || partition < 0 || offset < 0 {
                return Err(bad());
            }
            out.advance(&Arc::from(topic), partition, offset);
        }
        Ok(out)
    }
}

impl fmt::Display for Offsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (topic, partition, offset)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{topic}:{partition}={offset}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_it_prints_and_refuses_garbage() {
        let o = Offsets::parse("products:1=98, products:0=120,inventory-events:0=40").expect("ok");
        assert_eq!(
            o.to_string(),
            "inventory-events:0=40,products:0=120,products:1=98"
        );
        assert_eq!(o.get("products", 1), Some(98));
        assert_eq!(
            Offsets::parse("").expect("empty is fine"),
            Offsets::default()
        );
        for bad in [
            "products",
            "products:x=1",
            "products:0=-1",
            ":0=1",
            "p:0=1=2",
        ] {
            assert!(Offsets::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covers_compares_every_wanted_partition() {
        let have = Offsets::parse("p:0=10,p:1=5").expect("ok");
        for (want, covered) in [
            ("", true),
            ("p:0=10", true),
            ("p:0=11", false),
            ("p:0=3,p:1=5", true),
            ("p:2=0", true),
            ("p:2=1", false),
            ("q:0=1", false),
        ] {
            let want = Offsets::parse(want).expect("ok");
            assert_eq!(have.covers(&want), covered, "{want}");
        }
    }

    proptest! {
        #[test]
        fn positions_never_go_back(steps in proptest::collection::vec((0i32..3, 0i64..100), 0..40)) {
            let topic: Arc<str> = Arc::from("t");
            let mut o = Offsets::default();
            let mut max = BTreeMap::new();
            for (p, next) in steps {
                o.advance(&topic, p, next);
                let m = max.entry(p).or_insert(next);
                *m = (*m).max(next);
                prop_assert_eq!(o.get("t", p), Some(*m));
            }
            prop_assert_eq!(Offsets::parse(&o.to_string()).expect("round trip"), o);
        }
    }
}
