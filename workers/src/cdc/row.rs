//! A captured row as the mapping sees it: column values by name, in PostgreSQL's text format,
//! whether they came from the replication stream or from a snapshot query.

use std::collections::HashMap;

use pg_walstream::{ColumnValue, RowData};

/// One column of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// Not in the row: a column the table does not have, or (in an UPDATE) a TOASTed value
    /// PostgreSQL did not send because it did not change.
    Absent,
    Null,
    Text(&'a str),
    /// Not valid UTF-8 (binary-format columns; the worker asks for text).
    Binary,
}

/// Column values by name.
pub trait Row {
    fn cell(&self, column: &str) -> Cell<'_>;
    /// Every column present, for the DLQ record (values as text, `None` for NULL).
    fn columns(&self) -> Vec<(String, Option<String>)>;
}

impl Row for RowData {
    fn cell(&self, column: &str) -> Cell<'_> {
        match self.get(column) {
            None => Cell::Absent,
            Some(ColumnValue::Null) => Cell::Null,
            Some(v) => v.as_str().map_or(Cell::Binary, Cell::Text),
        }
    }

    fn columns(&self) -> Vec<(String, Option<String>)> {
        self.iter()
            .map(|(name, v)| {
                let text = match v {
                    ColumnValue::Null => None,
                    other => Some(String::from_utf8_lossy(other.as_bytes()).into_owned()),
                };
                (name.to_string(), text)
            })
            .collect()
    }
}

/// A row read by a snapshot query (every column cast to text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextRow(pub HashMap<String, Option<String>>);

impl TextRow {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
                .collect(),
        )
    }
}

impl Row for TextRow {
    fn cell(&self, column: &str) -> Cell<'_> {
        match self.0.get(column) {
            None => Cell::Absent,
            Some(None) => Cell::Null,
            Some(Some(v)) => Cell::Text(v),
        }
    }

    fn columns(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort();
        out
    }
}
