//! Row → Kafka record, pure: which tables are captured, how an INSERT becomes an order line or an
//! outbox event, and why a row that cannot be mapped is refused (it goes to the DLQ with that
//! reason; nothing else stops).

use kartflow_wire::config::cdc::{CaptureMode, CaptureSettings, OutboxSettings};
use kartflow_wire::events::OrderLine;
use serde::Serialize;

use super::row::{Cell, Row};

/// `schema.table`, split; a name without a schema is in `public`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn parse(qualified: &str) -> Self {
        match qualified.split_once('.') {
            Some((schema, table)) => Self {
                schema: schema.trim().to_owned(),
                table: table.trim().to_owned(),
            },
            None => Self {
                schema: "public".into(),
                table: qualified.trim().to_owned(),
            },
        }
    }

    pub fn is(&self, schema: &str, table: &str) -> bool {
        self.schema == schema && self.table == table
    }

    /// `"schema"."table"` for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// An SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where a mapped record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The configured `topic` (order lines).
    Main,
    /// A topic named by the row (outbox routing).
    Routed(String),
}

/// A record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub destination: Destination,
    /// `productId`, or the outbox aggregate id: the partitioning key.
    pub key: String,
    /// `None`: a tombstone (an outbox row with a NULL payload).
    pub value: Option<Vec<u8>>,
    pub event_id: String,
    /// Outbox `type` column, sent as the `eventType` header.
    pub event_type: Option<String>,
}

/// Why a row could not be mapped (the DLQ record's `reason`, and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    MissingColumn,
    NullColumn,
    BadQuantity,
    NegativeQuantity,
    BadTimestamp,
    BadTopic,
    NotText,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::MissingColumn => "missing_column",
            RejectReason::NullColumn => "null_column",
            RejectReason::BadQuantity => "bad_quantity",
            RejectReason::NegativeQuantity => "negative_quantity",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::NotText => "not_text",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: RejectReason,
    /// For a person: which column, which value.
    pub detail: String,
}

/// What became of a captured change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Record(OutRecord),
    Reject(Rejected),
}

/// The commit a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Epoch milliseconds of the commit (the order line's `timestamp` without a timestamp
    /// column). For a snapshot row: the snapshot's time.
    pub timestamp_ms: i64,
}

/// The mapping configured for one source.
#[derive(Debug, Clone)]
pub struct Mapper {
    mode: CaptureMode,
    table: TableName,
    capture: CaptureSettings,
}

impl Mapper {
    pub fn new(capture: &CaptureSettings) -> Self {
        let table = match capture.mode {
            CaptureMode::Table => TableName::parse(&capture.table),
            CaptureMode::Outbox => TableName::parse(&capture.outbox_table),
        };
        Self {
            mode: capture.mode,
            table,
            capture: capture.clone(),
        }
    }

    /// The captured table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    pub fn outbox(&self) -> &OutboxSettings {
        &self.capture.outbox
    }

    /// The column whose value identifies a row (`eventId`, snapshot chunking).
    pub fn id_column(&self) -> &str {
        match self.mode {
            CaptureMode::Table => &self.capture.columns.id,
            CaptureMode::Outbox => &self.capture.outbox.id_column,
        }
    }

    /// Whether INSERTs into `schema.table` are captured. UPDATEs, DELETEs and TRUNCATEs never
    /// are: an order line is an insert, and the outbox router ignores the deletes that clean
    /// the outbox up.
    pub fn captures(&self, schema: &str, table: &str) -> bool {
        self.table.is(schema, table)
    }

    /// An inserted row of the captured table as a record, or why it cannot be one.
    pub fn map_insert(&self, row: &impl Row, commit: Commit) -> Mapped {
        let result = match self.mode {
            CaptureMode::Table => self.order_line(row, commit),
            CaptureMode::Outbox => self.outbox_event(row),
        };
        match result {
            Ok(r) => Mapped::Record(r),
            Err(r) => Mapped::Reject(r),
        }
    }

    fn order_line(&self, row: &impl Row, commit: Commit) -> Result<OutRecord, Rejected> {
        let c = &self.capture.columns;
        let id = text(row, &c.id)?;
        let order_id = text(row, &c.order_id)?;
        let product_id = text(row, &c.product_id)?;
        let quantity = quantity(&c.quantity, text(row, &c.quantity)?)?;
        let timestamp = match &c.timestamp {
            None => commit.timestamp_ms,
            Some(col) => timestamp_ms(col, text(row, col)?)?,
        };
        let event_id = format!("{}:{id}", self.table);
        let line = OrderLine {
            event_id: event_id.clone(),
            order_id: order_id.to_owned(),
            product_id: product_id.to_owned(),
            quantity,
            timestamp,
        };
        Ok(OutRecord {
            destination: Destination::Main,
            key: line.product_id.clone(),
            value: Some(serde_json::to_vec(&line).unwrap_or_default()),
            event_id,
            event_type: None,
        })
    }

    fn outbox_event(&self, row: &impl Row) -> Result<OutRecord, Rejected> {
        let o = &self.capture.outbox;
        let id = text(row, &o.id_column)?;
        let aggregate_type = text(row, &o.aggregate_type_column)?;
        let aggregate_id = text(row, &o.aggregate_id_column)?;
        let topic = format!("{}{aggregate_type}", o.topic_prefix);
        if !valid_topic(&topic) {
            return Err(Rejected {
                reason: RejectReason::BadTopic,
                detail: format!(
                    "column {} routes to {topic:?}, which is not a valid Kafka topic name",
                    o.aggregate_type_column
                ),
            });
        }
        let value = match row.cell(&o.payload_column) {
            Cell::Text(t) => Some(t.as_bytes().to_vec()),
            Cell::Null => None,
            other => return Err(cell_problem(&o.payload_column, other)),
        };
        let event_type = match row.cell(&o.type_column) {
            Cell::Text(t) => Some(t.to_owned()),
            _ => None,
        };
        Ok(OutRecord {
            destination: Destination::Routed(topic),
            key: aggregate_id.to_owned(),
            value,
            event_id: id.to_owned(),
            event_type,
        })
    }
}

/// The text of a column that must hold a value.
fn text<'r>(row: &'r impl Row, column: &str) -> Result<&'r str, Rejected> {
    match row.cell(column) {
        Cell::Text(t) => Ok(t),
        other => Err(cell_problem(column, other)),
    }
}

fn cell_problem(column: &str, cell: Cell<'_>) -> Rejected {
    match cell {
        Cell::Absent => Rejected {
            reason: RejectReason::MissingColumn,
            detail: format!(
                "column {column} is not in the row (renamed or dropped? fix capture.columns)"
            ),
        },
        Cell::Null => Rejected {
            reason: RejectReason::NullColumn,
            detail: format!("column {column} is NULL"),
        },
        Cell::Binary => Rejected {
            reason: RejectReason::NotText,
            detail: format!("column {column} is not valid UTF-8 text"),
        },
        Cell::Text(t) => Rejected {
            reason: RejectReason::MissingColumn,
            detail: format!("column {column}: unexpected value {t:?}"),
        },
    }
}

/// An integer quantity from `int`, `bigint` or an integral `numeric` (`"3"`, `"3.000"`), never
/// through a float, so large values keep their precision.
fn quantity(column: &str, text: &str) -> Result<i64, Rejected> {
    let bad = |why: &str| Rejected {
        reason: RejectReason::BadQuantity,
        detail: format!("column {column} = {text:?}: {why}"),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.chars().all(|c| c == '0') {
        return Err(bad("not a whole number"));
    }
    let n: i64 = whole
        .parse()
        .map_err(|_| bad("not an integer in the signed 64-bit range"))?;
    if n < 0 {
        return Err(Rejected {
            reason: RejectReason::NegativeQuantity,
            detail: format!("column {column} = {n}: a quantity cannot be negative"),
        });
    }
    Ok(n)
}

/// Epoch milliseconds from `timestamptz` text (`2026-11-29 14:32:30.123+00`), `timestamp` text
/// (taken as UTC), or an integer of epoch milliseconds.
pub fn timestamp_ms(column: &str, text: &str) -> Result<i64, Rejected> {
    use chrono::{DateTime, NaiveDateTime};
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
        return Ok(t.and_utc().timestamp_millis());
    }
    Err(Rejected {
        reason: RejectReason::BadTimestamp,
        detail: format!(
            "column {column} = {text:?}: expected timestamptz, timestamp or epoch milliseconds"
        ),
    })
}

/// Kafka's topic name rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// The DLQ record of a refused row: what, why and where from, so a person can fix and replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqRecord {
    pub source: String,
    pub reason: RejectReason,
    pub detail: String,
    pub table: String,
    /// The commit LSN of the row's transaction (`X/Y`), or `snapshot`.
    pub lsn: String,
    pub row: std::collections::BTreeMap<String, Option<String>>,
}

impl DlqRecord {
    pub fn new(source: &str, table: &str, lsn: String, rejected: Rejected, row: &impl Row) -> Self {
        Self {
            source: source.to_owned(),
            reason: rejected.reason,
            detail: rejected.detail,
            table: table.to_owned(),
            lsn,
            row: row.columns().into_iter().collect(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::row::TextRow;
    use kartflow_wire::config::cdc::CaptureSettings;
    use proptest::prelude::*;

    const COMMIT: Commit = Commit {
        timestamp_ms: 1_700_000_000_000,
    };

    fn table_mapper() -> Mapper {
        Mapper::new(&CaptureSettings::default())
    }

    fn order_row(quantity: Option<&'static str>) -> TextRow {
        TextRow::from_pairs([
            ("id", Some("42")),
            ("order_id", Some("o-1")),
            ("product_id", Some("P-7")),
            ("quantity", quantity),
        ])
    }

    fn record(m: Mapped) -> OutRecord {
        match m {
            Mapped::Record(r) => r,
            Mapped::Reject(r) => panic!("rejected: {r:?}"),
        }
    }

    fn reject(m: Mapped) -> Rejected {
        match m {
            Mapped::Reject(r) => r,
            Mapped::Record(r) => panic!("mapped: {r:?}"),
        }
    }

    #[test]
    fn an_order_row_becomes_an_order_line_keyed_by_product() {
        let r = record(table_mapper().map_insert(&order_row(Some("3")), COMMIT));
        assert_eq!(r.destination, Destination::Main);
        assert_eq!(r.key, "P-7");
        assert_eq!(r.event_id, "public.order_items:42");
        let line: OrderLine = serde_json::from_slice(&r.value.expect("value")).expect("JSON");
        assert_eq!(
            line,
            OrderLine {
                event_id: "public.order_items:42".into(),
                order_id: "o-1".into(),
                product_id: "P-7".into(),
                quantity: 3,
                timestamp: COMMIT.timestamp_ms,
            }
        );
    }

    #[test]
    fn refused_rows_name_the_reason_and_column() {
        let m = table_mapper();
        for (row, reason, column) in [
            (
                order_row(Some("-2")),
                RejectReason::NegativeQuantity,
                "quantity",
            ),
            (
                order_row(Some("1.5")),
                RejectReason::BadQuantity,
                "quantity",
            ),
            (
                order_row(Some("lots")),
                RejectReason::BadQuantity,
                "quantity",
            ),
            (
                order_row(Some("99999999999999999999")),
                RejectReason::BadQuantity,
                "quantity",
            ),
            (order_row(None), RejectReason::NullColumn, "quantity"),
            (
                TextRow::from_pairs([
                    ("id", Some("1")),
                    ("order_id", Some("o")),
                    ("product_id", None),
                    ("quantity", Some("1")),
                ]),
                RejectReason::NullColumn,
                "product_id",
            ),
            (
                TextRow::from_pairs([("id", Some("1")), ("order_id", Some("o"))]),
                RejectReason::MissingColumn,
                "product_id",
            ),
        ] {
            let r = reject(m.map_insert(&row, COMMIT));
            assert_eq!(r.reason, reason, "{row:?}");
            assert!(r.detail.contains(column), "{}", r.detail);
        }
    }

    #[test]
    fn integral_numeric_quantities_keep_their_value() {
        let m = table_mapper();
        for (text, want) in [
            ("7", 7),
            ("7.000", 7),
            ("0", 0),
            ("9223372036854775807", i64::MAX),
        ] {
            let r = record(m.map_insert(&order_row(Some(text)), COMMIT));
            let line: OrderLine = serde_json::from_slice(&r.value.expect("v")).expect("JSON");
            assert_eq!(line.quantity, want, "{text}");
        }
    }

    #[test]
    fn timestamp_column_forms() {
        for (text, want) in [
            ("2026-11-29 14:32:30+00", 1_795_962_750_000),
            ("2026-11-29 14:32:30.123+00", 1_795_962_750_123),
            ("2026-11-29 16:32:30.5+02", 1_795_962_750_500),
            ("2026-11-29 20:02:30+05:30", 1_795_962_750_000),
            ("2026-11-29 14:32:30", 1_795_962_750_000),
            ("1795962750000", 1_795_962_750_000),
        ] {
            assert_eq!(timestamp_ms("ts", text), Ok(want), "{text}");
        }
        assert_eq!(
            timestamp_ms("ts", "yesterday").map_err(|r| r.reason),
            Err(RejectReason::BadTimestamp)
        );
    }

    #[test]
    fn a_timestamp_column_replaces_the_commit_time() {
        let mut capture = CaptureSettings::default();
        capture.columns.timestamp = Some("created_at".into());
        let m = Mapper::new(&capture);
        let mut row = order_row(Some("1"));
        row.0
            .insert("created_at".into(), Some("2026-11-29 14:32:30+00".into()));
        let r = record(m.map_insert(&row, COMMIT));
        let line: OrderLine = serde_json::from_slice(&r.value.expect("v")).expect("JSON");
        assert_eq!(line.timestamp, 1_795_962_750_000);
    }

    fn outbox_mapper() -> Mapper {
        let capture = CaptureSettings {
            mode: CaptureMode::Outbox,
            outbox_table: "app.outbox".into(),
            ..CaptureSettings::default()
        };
        Mapper::new(&capture)
    }

    #[test]
    fn outbox_rows_are_routed_by_aggregate_type_and_keyed_by_aggregate_id() {
        let m = outbox_mapper();
        assert!(m.captures("app", "outbox") && !m.captures("public", "outbox"));
        let row = TextRow::from_pairs([
            ("id", Some("6a3c8a3e-0000-4000-8000-000000000001")),
            ("aggregatetype", Some("Order")),
            ("aggregateid", Some("o-9")),
            ("type", Some("OrderCreated")),
            ("payload", Some(r#"{"total": 12.50}"#)),
        ]);
        let r = record(m.map_insert(&row, COMMIT));
        assert_eq!(
            r.destination,
            Destination::Routed("outbox.event.Order".into())
        );
        assert_eq!(r.key, "o-9");
        assert_eq!(r.event_id, "6a3c8a3e-0000-4000-8000-000000000001");
        assert_eq!(r.event_type.as_deref(), Some("OrderCreated"));
        // Passed through byte for byte: a numeric's digits are never re-rendered.
        assert_eq!(r.value.as_deref(), Some(&br#"{"total": 12.50}"#[..]));

        let mut tomb = row.clone();
        tomb.0.insert("payload".into(), None);
        assert_eq!(record(m.map_insert(&tomb, COMMIT)).value, None);

        let mut bad = row;
        bad.0.insert("aggregatetype".into(), Some("a b".into()));
        assert_eq!(
            reject(m.map_insert(&bad, COMMIT)).reason,
            RejectReason::BadTopic
        );
    }

    #[test]
    fn dlq_record_says_what_why_and_where() {
        let row = order_row(Some("-1"));
        let rejected = reject(table_mapper().map_insert(&row, COMMIT));
        let dlq = DlqRecord::new(
            "shop.orders",
            "public.order_items",
            "0/16B3748".into(),
            rejected,
            &row,
        );
        let v: serde_json::Value = serde_json::from_slice(&dlq.to_json()).expect("JSON");
        assert_eq!(v["reason"], "negative_quantity");
        assert_eq!(v["table"], "public.order_items");
        assert_eq!(v["lsn"], "0/16B3748");
        assert_eq!(v["row"]["quantity"], "-1");
        assert_eq!(v["source"], "shop.orders");
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("order_items"),
            TableName {
                schema: "public".into(),
                table: "order_items".into()
            }
        );
        assert_eq!(TableName::parse("a.b").quoted(), "\"a\".\"b\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    proptest! {
        /// Any row maps or is refused (never panics); a mapped row's eventId depends only on its
        /// id, so the snapshot and the stream agree, and its key is its productId.
        #[test]
        fn mapping_is_total_and_event_ids_are_stable(
            id in "[0-9]{1,12}",
            product in proptest::option::of(".{0,12}"),
            quantity in proptest::option::of("-?[0-9]{1,20}(\\.[0-9]{0,3})?"),
            ts_a in proptest::num::i64::ANY,
            ts_b in proptest::num::i64::ANY,
        ) {
            let m = table_mapper();
            let row = TextRow::from_pairs([
                ("id", Some(id.as_str())),
                ("order_id", Some("o")),
                ("product_id", product.as_deref()),
                ("quantity", quantity.as_deref()),
            ]);
            let a = m.map_insert(&row, Commit { timestamp_ms: ts_a });
            let b = m.map_insert(&row, Commit { timestamp_ms: ts_b });
            match (a, b) {
                (Mapped::Record(a), Mapped::Record(b)) => {
                    prop_assert_eq!(&a.event_id, &format!("public.order_items:{id}"));
                    prop_assert_eq!(&a.event_id, &b.event_id);
                    prop_assert_eq!(Some(&a.key), product.as_ref());
                    let line: OrderLine = serde_json::from_slice(&a.value.unwrap_or_default())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(line.quantity >= 0);
                }
                (Mapped::Reject(a), Mapped::Reject(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "nondeterministic: {:?} vs {:?}", a, b),
            }
        }
    }
}
