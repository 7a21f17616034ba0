//! Record validation. A record that parses but would corrupt state (negative stock, NaN price,
//! no key) is refused here and sent to the DLQ instead of being applied.

use kartflow_wire::{OrderLine, Product};
use thiserror::Error;

/// Why a parsed record cannot be applied. `field` is the camelCase field name on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} must be >= 0, got {value}")]
    Negative { field: &'static str, value: String },
    #[error("{field} must be > 0, got {value}")]
    NotPositive { field: &'static str, value: String },
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: String },
}

impl ValidationError {
    /// The camelCase field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field }
            | Self::Negative { field, .. }
            | Self::NotPositive { field, .. }
            | Self::NotFinite { field, .. } => field,
        }
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::Empty { field });
    }
    Ok(())
}

fn finite_non_negative(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if !value.is_finite() {
        return Err(ValidationError::NotFinite {
            field,
            value: value.to_string(),
        });
    }
    if value < 0.0 {
        return Err(ValidationError::Negative {
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn non_negative(field: &'static str, value: i64) -> Result<(), ValidationError> {
    if value < 0 {
        return Err(ValidationError::Negative {
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// A product record (bootstrap line or `product-updates`) that can be stored.
pub fn validate_product(p: &Product) -> Result<(), ValidationError> {
    non_empty("productId", &p.product_id)?;
    finite_non_negative("price", p.price)?;
    non_negative("inventory", p.inventory)?;
    finite_non_negative("rating", p.rating)?;
    non_negative("reviewCount", p.review_count)?;
    Ok(())
}

/// An order line that can be applied. A zero quantity is refused too: it would emit a decrease
/// of nothing and points at a broken producer.
pub fn validate_order_line(line: &OrderLine) -> Result<(), ValidationError> {
    non_empty("eventId", &line.event_id)?;
    non_empty("productId", &line.product_id)?;
    if line.quantity <= 0 {
        return Err(ValidationError::NotPositive {
            field: "quantity",
            value: line.quantity.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product {
            product_id: "P1".into(),
            name: "Kart".into(),
            description: String::new(),
            category: String::new(),
            brand: String::new(),
            price: 10.0,
            inventory: 3,
            image_url: String::new(),
            tags: vec![],
            rating: 4.5,
            review_count: 2,
        }
    }

    fn line() -> OrderLine {
        OrderLine {
            event_id: "e1".into(),
            order_id: "o1".into(),
            product_id: "P1".into(),
            quantity: 1,
            timestamp: 0,
        }
    }

    #[test]
    fn valid_records_pass() {
        assert_eq!(validate_product(&product()), Ok(()));
        assert_eq!(validate_order_line(&line()), Ok(()));
    }

    #[test]
    fn each_bad_product_field_is_named() {
        type Mutate = fn(&mut Product);
        let cases: [(&str, Mutate); 7] = [
            ("productId", |p| p.product_id = String::new()),
            ("productId", |p| p.product_id = "  ".into()),
            ("price", |p| p.price = f64::NAN),
            ("price", |p| p.price = -1.0),
            ("inventory", |p| p.inventory = -1),
            ("rating", |p| p.rating = f64::INFINITY),
            ("reviewCount", |p| p.review_count = -3),
        ];
        for (field, mutate) in cases {
            let mut p = product();
            mutate(&mut p);
            let err = validate_product(&p).expect_err(field);
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn each_bad_order_line_field_is_named() {
        type Mutate = fn(&mut OrderLine);
        let cases: [(&str, Mutate); 4] = [
            ("eventId", |l| l.event_id = String::new()),
            ("productId", |l| l.product_id = String::new()),
            ("quantity", |l| l.quantity = -2),
            ("quantity", |l| l.quantity = 0),
        ];
        for (field, mutate) in cases {
            let mut l = line();
            mutate(&mut l);
            let err = validate_order_line(&l).expect_err(field);
            assert_eq!(err.field(), field, "{err}");
        }
    }
}
