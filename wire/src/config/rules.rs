//! Thresholds of the inventory rules (`rules` in the inventory worker's file): camelCase, every
//! field optional with the reference default, checked by [`InventoryRules::validate`] at start-up
//! so a bad value fails fast with its field named instead of misbehaving at run time. The rule
//! predicates live here too: each is the documented meaning of its threshold.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Millis};
use crate::Severity;

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
pub struct InventoryRules {
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

impl Default for InventoryRules {
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

impl InventoryRules {
    /// Checks every field; the first bad one is reported by name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.low_stock_threshold < 0 {
            return Err(ConfigError::invalid(
                "lowStockThreshold",
                format!("must be >= 0, got {}", self.low_stock_threshold),
            ));
        }
        if self.critical_stock_threshold < 0 {
            return Err(ConfigError::invalid(
                "criticalStockThreshold",
                format!("must be >= 0, got {}", self.critical_stock_threshold),
            ));
        }
        if self.critical_stock_threshold > self.low_stock_threshold {
            return Err(ConfigError::invalid(
                "criticalStockThreshold",
                format!(
                    "must be <= lowStockThreshold ({}), got {}",
                    self.low_stock_threshold, self.critical_stock_threshold
                ),
            ));
        }
        let pct = self.price_drop_percent;
        if !pct.is_finite() || pct <= 0.0 || pct > 100.0 {
            return Err(ConfigError::invalid(
                "priceDropPercent",
                format!("must be in (0, 100], got {pct}"),
            ));
        }
        let eps = self.price_change_epsilon;
        if !eps.is_finite() || eps < 0.0 {
            return Err(ConfigError::invalid(
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
                return Err(ConfigError::invalid(field, "must be longer than 0"));
            }
            // Deadlines are computed as `now_ms + duration` in i64 epoch milliseconds.
            if i64::try_from(value.0).is_err() {
                return Err(ConfigError::invalid(
                    field,
                    format!("{} ms is too long", value.0),
                ));
            }
        }
        if self.orphan_max_per_product == 0 {
            return Err(ConfigError::invalid(
                "orphanMaxPerProduct",
                "must be at least 1",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_the_reference_thresholds_and_valid() {
        let c = InventoryRules::default();
        assert_eq!(c.low_stock_threshold, 10);
        assert_eq!(c.critical_stock_threshold, 5);
        assert_eq!(c.price_drop_percent, 10.0);
        assert_eq!(c.stale_after, Millis(3_600_000));
        c.validate().expect("valid");
    }

    #[test]
    fn empty_object_gives_defaults() {
        let c: InventoryRules = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(c, InventoryRules::default());
    }

    #[test]
    fn reads_camel_case_and_duration_strings() {
        let c: InventoryRules = serde_json::from_value(json!({
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
        c.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_by_name() {
        let err = serde_json::from_value::<InventoryRules>(json!({"lowStockTreshold": 3}))
            .expect_err("typo refused");
        assert!(err.to_string().contains("lowStockTreshold"), "{err}");
        for bad in [
            json!("10 parsecs"),
            json!("h"),
            json!(-5),
            json!("99999999999999999999d"),
        ] {
            let res = serde_json::from_value::<InventoryRules>(json!({ "staleAfter": bad }));
            assert!(res.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Mutate = fn(&mut InventoryRules);
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
            let mut c = InventoryRules::default();
            mutate(&mut c);
            let err = c.validate().expect_err(field);
            assert!(
                matches!(&err, ConfigError::Invalid { field: f, .. } if f == field),
                "{field}: {err:?}"
            );
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn low_stock_rule_is_inclusive_and_configurable() {
        let c = InventoryRules::default();
        assert!(!c.is_low_stock(0), "0 is out of stock, not low stock");
        assert!(c.is_low_stock(1));
        assert!(c.is_low_stock(10));
        assert!(!c.is_low_stock(11));
        let reference_product_rule = InventoryRules {
            low_stock_threshold: 9,
            ..InventoryRules::default()
        };
        assert!(!reference_product_rule.is_low_stock(10));
        assert_eq!(c.low_stock_severity(5), Severity::Critical);
        assert_eq!(c.low_stock_severity(6), Severity::Warning);
    }

    #[test]
    fn price_drop_boundary_survives_rounding() {
        let c = InventoryRules::default();
        assert!(c.is_price_drop(100.0, 90.0));
        assert!(c.is_price_drop(9.99, 8.991));
        assert!(!c.is_price_drop(100.0, 90.01));
        assert!(!c.is_price_drop(0.0, 0.0));
        assert!(!c.is_price_drop(10.0, 12.0));
    }
}
