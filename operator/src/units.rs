//! The textual units CRs use: durations (`30s`, `1h`) and byte quantities (`2Gi`, `500M`).
//! The CRD schema already restricts both by pattern; these parsers still name what is wrong,
//! because a value can reach the operator from an older CRD or a hand-written object.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error("{value:?} is not a duration: use a whole number with ms, s, m, h or d, e.g. 30s")]
    Duration { value: String },
    #[error("{value:?} is not a byte quantity: use e.g. 512Mi, 2Gi or 1G")]
    Quantity { value: String },
}

/// Parses `<digits><ms|s|m|h|d>`.
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration {
        value: value.to_owned(),
    };
    let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(err)
}

/// Parses a Kubernetes-style byte quantity (`1.5Gi`, `500M`, `4096`) into bytes.
pub fn parse_quantity_bytes(value: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Quantity {
        value: value.to_owned(),
    };
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(err());
    }
    let n: f64 = number.parse().map_err(|_| err())?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return Err(err()),
    };
    let bytes = (n * mult).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Bytes as a short binary quantity for people: `512`, `1.5Ki`, `2.0Gi`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("0s", 0),
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("2d", 172_800_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "10 s",
            "-1s",
            "3w",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn quantities() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("1k", 1000),
            ("1Ki", 1024),
            ("16Mi", 16 << 20),
            ("2Gi", 2 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
        ] {
            assert_eq!(parse_quantity_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "Gi", "1gi", "1.Gi", ".5Gi", "1GiB", "-1Gi", "1e3"] {
            assert!(
                parse_quantity_bytes(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1023), "1023");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(2 << 30), "2.0Gi");
        assert_eq!(format_bytes(u64::MAX), "16384.0Pi");
    }
}
