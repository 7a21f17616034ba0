//! Durations in worker configuration files.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in milliseconds. In the config file it is either an integer number of
/// milliseconds or a string with a unit: `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_minutes(m: u64) -> Self {
        Self(m * 60_000)
    }

    pub const fn from_hours(h: u64) -> Self {
        Self(h * 3_600_000)
    }

    /// As signed epoch-millisecond arithmetic wants it; saturates for values `validate` rejects.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Parses `"<integer><unit>"` with unit `ms`, `s`, `m`, `h` or `d`, or a bare integer (ms).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(format!(
                "{text:?} is not a duration (expected e.g. \"30s\", \"1h\")"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        let scale: u64 = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m, h, d)"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Millis)
            .ok_or_else(|| format!("{text:?}: duration too large"))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;

        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("milliseconds as an integer, or a string such as \"30s\" or \"1h\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v)
                    .map(Millis)
                    .map_err(|_| E::custom(format!("duration must not be negative, got {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(MillisVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units() {
        for (text, ms) in [
            ("250", 250),
            ("250ms", 250),
            ("3s", 3_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            assert_eq!(Millis::parse(text), Ok(Millis(ms)), "{text}");
        }
    }

    #[test]
    fn serializes_as_whole_milliseconds_and_reads_both_forms() {
        assert_eq!(
            serde_json::to_value(Millis(1_500)).expect("serializes"),
            1_500
        );
        for (json, ms) in [
            (serde_json::json!(250), 250),
            (serde_json::json!("2s"), 2_000),
        ] {
            let got: Millis = serde_json::from_value(json.clone()).expect("parses");
            assert_eq!(got, Millis(ms), "{json}");
        }
        assert!(serde_json::from_value::<Millis>(serde_json::json!(-1)).is_err());
    }
}
