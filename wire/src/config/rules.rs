//! Thresholds of the inventory rules. Read from the worker's config file (camelCase, every field
//! optional with the reference default) and checked by [`InventoryConfig::validate`] at start-up,
//! so a bad value fails fast with its field named instead of misbehaving at run time.

use std::fmt;

use kartflow_wire::Severity;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Thresholds and bounds of the inventory state machine.
///
/// **Low-stock rule (one rule for product updates and order lines):** a `LOW_STOCK` alert is
/// raised when `0 < inventory <= lowStockThreshold`. The reference job used `< 10` for product
/// updates and `<= 10` for order lines; kartflow keeps the inclusive form everywhere so that both
/// thresholds read the same way ("at or below": LOW_STOCK at or below `lowStockThreshold`,
/// severity CRITICAL at or below `criticalStockThreshold`). With the default of 10 this matches the
/// reference order-line rule exactly and the product-update rule everywhere except at exactly 10.
/// Set `lowStockThreshold: 9` to get the reference product-update behaviour instead; `0` turns
/// low-stock alerts off (out-of-stock alerts remain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// LOW_STOCK when `0 < inventory <= lowStockThreshold`.
    pub low_stock_threshold: i64,
    /// A LOW_STOCK alert is CRITICAL when `inventory <= criticalStockThreshold`, else WARNING.
    pub critical_stock_threshold: i64,
    /// A price drop of at least this many percent raises a PRICE_DROP alert (INFO).
    pub price_drop_percent: f64,
    /// A price difference strictly greater than this emits PRICE_CHANGED; smaller ones are noise.
    pub price_change_epsilon: f64,
    /// STALE_INVENTORY is emitted once a product has had no update (product record or order line)
    /// for this long.
    pub stale_after: Millis,
    /// At most this many order lines are buffered for one not-yet-known product; more go to the
    /// DLQ as `orphan_buffer_full`.
    pub orphan_max_per_product: usize,
    /// A buffered orphan older than this goes to the DLQ as `orphan_expired`.
    pub orphan_max_age: Millis,
    /// How long an order line's `eventId` is remembered for deduplication. Must exceed the longest
    /// redelivery delay (CDC replay after a restart, producer retries).
    pub dedup_retention: Millis,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            low_stock_threshold: 10,
            critical_stock_threshold: 5,
            price_drop_percent: 10.0,
            price_change_epsilon: 0.01,
            stale_after: Millis::from_hours(1),
            orphan_max_per_product: 1_000,
            orphan_max_age: Millis::from_minutes(10),
            dedup_retention: Millis::from_hours(24),
        }
    }
}

/// A configuration value out of its allowed range; `field` is the camelCase name in the file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid inventory configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        problem: problem.into(),
    }
}

impl InventoryConfig {
    /// Checks every field; the first bad one is reported by name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.low_stock_threshold < 0 {
            return Err(invalid(
                "lowStockThreshold",
                format!("must be >= 0, got {}", self.low_stock_threshold),
            ));
        }
        if self.critical_stock_threshold < 0 {
            return Err(invalid(
                "criticalStockThreshold",
                format!("must be >= 0, got {}", self.critical_stock_threshold),
            ));
        }
        if self.critical_stock_threshold > self.low_stock_threshold {
            return Err(invalid(
                "criticalStockThreshold",
                format!(
                    "must be <= lowStockThreshold ({}), got {}",
                    self.low_stock_threshold, self.critical_stock_threshold
                ),
            ));
        }
        let pct = self.price_drop_percent;
        if !pct.is_finite() || pct <= 0.0 || pct > 100.0 {
            return Err(invalid(
                "priceDropPercent",
                format!("must be in (0, 100], got {pct}"),
            ));
        }
        let eps = self.price_change_epsilon;
        if !eps.is_finite() || eps < 0.0 {
            return Err(invalid(
                "priceChangeEpsilon",
                format!("must be a finite number >= 0, got {eps}"),
            ));
        }
        for (field, value) in [
            ("staleAfter", self.stale_after),
            ("orphanMaxAge", self.orphan_max_age),
            ("dedupRetention", self.dedup_retention),
        ] {
            if value.0 == 0 {
                return Err(invalid(field, "must be longer than 0"));
            }
            // Deadlines are computed as `now_ms + duration` in i64 epoch milliseconds.
            if i64::try_from(value.0).is_err() {
                return Err(invalid(field, format!("{} ms is too long", value.0)));
            }
        }
        if self.orphan_max_per_product == 0 {
            return Err(invalid("orphanMaxPerProduct", "must be at least 1"));
        }
        Ok(())
    }

    /// The single low-stock rule: `0 < inventory <= lowStockThreshold`.
    pub fn is_low_stock(&self, inventory: i64) -> bool {
        inventory > 0 && inventory <= self.low_stock_threshold
    }

    /// Severity of a LOW_STOCK alert at this inventory.
    pub fn low_stock_severity(&self, inventory: i64) -> Severity {
        if inventory <= self.critical_stock_threshold {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }

    /// True when going from `previous` to `current` is a drop of at least `priceDropPercent`.
    /// A relative epsilon keeps an exact 10 % drop (e.g. 9.99 → 8.991) from being lost to
    /// floating-point rounding.
    pub fn is_price_drop(&self, previous: f64, current: f64) -> bool {
        if previous <= 0.0 || current >= previous {
            return false;
        }
        let drop_percent = (previous - current) / previous * 100.0;
        drop_percent >= self.price_drop_percent - 1e-9
    }

    /// True when the price moved by more than `priceChangeEpsilon`.
    pub fn is_price_change(&self, previous: f64, current: f64) -> bool {
        (previous - current).abs() > self.price_change_epsilon
    }
}

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
    use serde_json::json;

    #[test]
    fn defaults_are_the_reference_thresholds_and_valid() {
        let c = InventoryConfig::default();
        assert_eq!(c.low_stock_threshold, 10);
        assert_eq!(c.critical_stock_threshold, 5);
        assert_eq!(c.price_drop_percent, 10.0);
        assert_eq!(c.stale_after, Millis(3_600_000));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn empty_object_gives_defaults() {
        let c: InventoryConfig = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(c, InventoryConfig::default());
    }

    #[test]
    fn reads_camel_case_and_duration_strings() {
        let c: InventoryConfig = serde_json::from_value(json!({
            "lowStockThreshold": 9, "criticalStockThreshold": 3, "priceDropPercent": 25.0,
            "staleAfter": "30m", "orphanMaxPerProduct": 7, "orphanMaxAge": 90000,
            "dedupRetention": "2d"
        }))
        .expect("parses");
        assert_eq!(c.low_stock_threshold, 9);
        assert_eq!(c.critical_stock_threshold, 3);
        assert_eq!(c.stale_after, Millis(30 * 60_000));
        assert_eq!(c.orphan_max_per_product, 7);
        assert_eq!(c.orphan_max_age, Millis(90_000));
        assert_eq!(c.dedup_retention, Millis(2 * 86_400_000));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_by_name() {
        let err = serde_json::from_value::<InventoryConfig>(json!({"lowStockTreshold": 3}))
            .expect_err("typo refused");
        assert!(err.to_string().contains("lowStockTreshold"), "{err}");
        for bad in [
            json!("10 parsecs"),
            json!("h"),
            json!(-5),
            json!("99999999999999999999d"),
        ] {
            let res = serde_json::from_value::<InventoryConfig>(json!({ "staleAfter": bad }));
            assert!(res.is_err(), "{bad} accepted");
        }
    }

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
    fn validate_names_the_bad_field() {
        type Mutate = fn(&mut InventoryConfig);
        let cases: [(&str, Mutate); 10] = [
            ("lowStockThreshold", |c| c.low_stock_threshold = -1),
            ("criticalStockThreshold", |c| {
                c.critical_stock_threshold = -1
            }),
            ("criticalStockThreshold", |c| {
                c.critical_stock_threshold = 11
            }),
            ("priceDropPercent", |c| c.price_drop_percent = 0.0),
            ("priceDropPercent", |c| c.price_drop_percent = f64::NAN),
            ("priceChangeEpsilon", |c| c.price_change_epsilon = -0.5),
            ("staleAfter", |c| c.stale_after = Millis(0)),
            ("orphanMaxAge", |c| c.orphan_max_age = Millis(u64::MAX)),
            ("dedupRetention", |c| c.dedup_retention = Millis(0)),
            ("orphanMaxPerProduct", |c| c.orphan_max_per_product = 0),
        ];
        for (field, mutate) in cases {
            let mut c = InventoryConfig::default();
            mutate(&mut c);
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn low_stock_rule_is_inclusive_and_configurable() {
        let c = InventoryConfig::default();
        assert!(!c.is_low_stock(0), "0 is out of stock, not low stock");
        assert!(c.is_low_stock(1));
        assert!(c.is_low_stock(10));
        assert!(!c.is_low_stock(11));
        let reference_product_rule = InventoryConfig {
            low_stock_threshold: 9,
            ..InventoryConfig::default()
        };
        assert!(!reference_product_rule.is_low_stock(10));
        assert_eq!(c.low_stock_severity(5), Severity::Critical);
        assert_eq!(c.low_stock_severity(6), Severity::Warning);
    }

    #[test]
    fn price_drop_boundary_survives_rounding() {
        let c = InventoryConfig::default();
        assert!(c.is_price_drop(100.0, 90.0));
        assert!(c.is_price_drop(9.99, 8.991));
        assert!(!c.is_price_drop(100.0, 90.01));
        assert!(!c.is_price_drop(0.0, 0.0));
        assert!(!c.is_price_drop(10.0, 12.0));
    }
}
