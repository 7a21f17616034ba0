//! `GET /products` as a pure function of the view: filters, sorting and cursor paging.
//!
//! Paging is by cursor, not page number: a cursor holds the sort value and productId of the last
//! item returned, and the next page starts strictly after it, so products inserted or updated
//! between pages never make a page repeat or skip an unchanged product. Sorting by productId (the
//! default) walks the ordered map from the cursor and stops after `limit` matches; other sorts
//! scan every product and keep the best `limit` in a bounded heap (O(n log limit)).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::id::ProductId;
use super::view::{Entry, ProductDoc, View};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1_000;
/// `lowStock` means 0 < inventory ≤ this unless `lowStockThreshold` says otherwise (the
/// inventory worker's default rule).
pub const DEFAULT_LOW_STOCK_THRESHOLD: i64 = 10;

/// A query parameter the client got wrong; becomes a 400 problem naming it.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("query parameter {param}: {problem}")]
pub struct QueryError {
    pub param: &'static str,
    pub problem: String,
}

fn bad(param: &'static str, problem: impl Into<String>) -> QueryError {
    QueryError {
        param,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Exact match, ignoring ASCII case.
    pub category: Option<String>,
    pub brand: Option<String>,
    /// `true`: inventory > 0; `false`: inventory = 0.
    pub in_stock: Option<bool>,
    /// 0 < inventory ≤ `low_stock_threshold`.
    pub low_stock: Option<bool>,
    pub low_stock_threshold: i64,
}

impl Filter {
    pub fn matches(&self, d: &ProductDoc) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        let low = d.inventory > 0 && d.inventory <= self.low_stock_threshold;
        eq(&self.category, &d.category)
            && eq(&self.brand, &d.brand)
            && self.in_stock.is_none_or(|s| s == (d.inventory > 0))
            && self.low_stock.is_none_or(|l| l == low)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SortKey {
    ProductId,
    Name,
    Price,
    Inventory,
    LastUpdate,
}

impl SortKey {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "productId" => Self::ProductId,
            "name" => Self::Name,
            "price" => Self::Price,
            "inventory" => Self::Inventory,
            "lastUpdate" => Self::LastUpdate,
            _ => return None,
        })
    }
}

/// A sort value; cursors carry one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Int(i64),
    Num(f64),
    Text(String),
}

impl SortValue {
    fn of(key: SortKey, id: &str, e: &Entry, d: &ProductDoc) -> Self {
        match key {
            SortKey::ProductId => Self::Text(id.to_owned()),
            SortKey::Name => Self::Text(d.name().to_string()),
            SortKey::Price => Self::Num(d.price),
            SortKey::Inventory => Self::Int(d.inventory),
            SortKey::LastUpdate => Self::Int(e.last_update),
        }
    }

    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.cmp(b),
            (Self::Num(a), Self::Num(b)) => a.total_cmp(b),
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            // Only a forged cursor mixes kinds; any fixed order will do.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Int(_) => 0,
            Self::Num(_) => 1,
            Self::Text(_) => 2,
        }
    }
}

/// Where the previous page ended. Opaque to clients (hex of a small JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub sort: SortKey,
    pub descending: bool,
    pub value: SortValue,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<Self> {
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect();
        serde_json::from_slice(&bytes?).ok()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: Filter,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: usize,
    pub after: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            filter: Filter {
                low_stock_threshold: DEFAULT_LOW_STOCK_THRESHOLD,
                ..Filter::default()
            },
            sort: SortKey::ProductId,
            descending: false,
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

fn parse_bool(param: &'static str, v: &str) -> Result<bool, QueryError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(bad(param, format!("{other:?} is not true or false"))),
    }
}

impl ListQuery {
    /// From the URL query: `category`, `brand`, `inStock`, `lowStock`, `lowStockThreshold`,
    /// `sort` (`productId`, `name`, `price`, `inventory`, `lastUpdate`; `-` prefix for
    /// descending), `limit` (1..=1000), `cursor` (from the previous page's `nextCursor`).
    pub fn from_params(params: &HashMap<String, String>) -> Result<Self, QueryError> {
        let mut q = ListQuery::default();
        let non_empty = |v: &String| (!v.is_empty()).then(|| v.clone());
        q.filter.category = params.get("category").and_then(non_empty);
        q.filter.brand = params.get("brand").and_then(non_empty);
        if let Some(v) = params.get("inStock") {
            q.filter.in_stock = Some(parse_bool("inStock", v)?);
        }
        if let Some(v) = params.get("lowStock") {
            q.filter.low_stock = Some(parse_bool("lowStock", v)?);
        }
        if let Some(v) = params.get("lowStockThreshold") {
            q.filter.low_stock_threshold = v
                .parse()
                .ok()
                .filter(|t: &i64| *t >= 0)
                .ok_or_else(|| bad("lowStockThreshold", "must be an integer ≥ 0"))?;
        }
        if let Some(v) = params.get("sort") {
            let (desc, name) = match v.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, v.as_str()),
            };
            q.sort = SortKey::parse(name).ok_or_else(|| {
                bad(
                    "sort",
                    format!(
                        "{v:?}: use productId, name, price, inventory or lastUpdate, '-' first for descending"
                    ),
                )
            })?;
            q.descending = desc;
        }
        if let Some(v) = params.get("limit") {
            q.limit = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad("limit", format!("must be between 1 and {MAX_LIMIT}")))?;
        }
        if let Some(v) = params.get("cursor").filter(|v| !v.is_empty()) {
            let c = Cursor::decode(v)
                .ok_or_else(|| bad("cursor", "is not a cursor this server returned"))?;
            if c.sort != q.sort || c.descending != q.descending {
                return Err(bad(
                    "cursor",
                    "was returned for another sort; keep the sort of the first page",
                ));
            }
            q.after = Some(c);
        }
        Ok(q)
    }
}

/// One page of products, in order.
#[derive(Debug)]
pub struct Page<'a> {
    pub items: Vec<(&'a ProductId, &'a Entry)>,
    pub next: Option<Cursor>,
}

/// An item with its sort value, ordered as the page wants it.
struct Ranked<'a> {
    value: SortValue,
    id: &'a ProductId,
    entry: &'a Entry,
    descending: bool,
}

impl Ranked<'_> {
    fn order(&self, other: &Self) -> Ordering {
        let o = self
            .value
            .cmp(&other.value)
            .then_with(|| self.id.cmp(other.id));
        if self.descending { o.reverse() } else { o }
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}
impl Eq for Ranked<'_> {}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other)
    }
}

pub fn list<'a>(view: &'a View, q: &ListQuery) -> Page<'a> {
    let want = q.limit + 1;
    let served = |(id, e): (&'a ProductId, &'a Entry)| {
        e.doc
            .as_ref()
            .filter(|d| q.filter.matches(d))
            .map(|_| (id, e))
    };
    let mut items: Vec<(&ProductId, &Entry)> = if q.sort == SortKey::ProductId {
        let after = q.after.as_ref().map(|c| c.id.as_str());
        let entries = view.entries();
        if q.descending {
            let upper = after.map_or(Bound::Unbounded, Bound::Excluded);
            entries
                .range::<str, _>((Bound::Unbounded, upper))
                .rev()
                .filter_map(served)
                .take(want)
                .collect()
        } else {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            entries
                .range::<str, _>((lower, Bound::Unbounded))
                .filter_map(served)
                .take(want)
                .collect()
        }
    } else {
        let cursor = q.after.as_ref();
        // Max-heap of the best `want` so far: its top is the worst kept item.
        let mut heap: BinaryHeap<Ranked<'a>> = BinaryHeap::with_capacity(want + 1);
        for (id, e) in view.entries().iter().filter_map(served) {
            let Some(d) = &e.doc else { continue };
            let r = Ranked {
                value: SortValue::of(q.sort, id, e, d),
                id,
                entry: e,
                descending: q.descending,
            };
            if let Some(c) = cursor {
                let o = r
                    .value
                    .cmp(&c.value)
                    .then_with(|| id.as_str().cmp(c.id.as_str()));
                let after = if q.descending {
                    o == Ordering::Less
                } else {
                    o == Ordering::Greater
                };
                if !after {
                    continue;
                }
            }
            if heap.len() < want {
                heap.push(r);
            } else if heap.peek().is_some_and(|worst| r < *worst) {
                heap.pop();
                heap.push(r);
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|r| (r.id, r.entry))
            .collect()
    };
    let next = if items.len() > q.limit {
        items.truncate(q.limit);
        items.last().and_then(|(id, e)| {
            e.doc.as_ref().map(|d| Cursor {
                sort: q.sort,
                descending: q.descending,
                value: SortValue::of(q.sort, id, e, d),
                id: id.to_string(),
            })
        })
    } else {
        None
    };
    Page { items, next }
}

#[cfg(test)]
mod tests {
    use super::super::view::Limits;
    use super::super::view::testutil::product;
    use super::*;
    use proptest::prelude::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn view(products: &[(&str, &str, i64, f64)]) -> View {
        let mut v = View::new(Limits::default());
        for (id, cat, inv, price) in products {
            v.apply(product(id, cat, *inv, *price), None);
        }
        v
    }

    fn ids(p: &Page<'_>) -> Vec<String> {
        p.items.iter().map(|(id, _)| id.to_string()).collect()
    }

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        ListQuery::from_params(&params(pairs)).expect("valid query")
    }

    #[test]
    fn filters_select_by_category_brand_and_stock() {
        let v = view(&[
            ("A", "toys", 0, 1.0),
            ("B", "Toys", 5, 2.0),
            ("C", "food", 50, 3.0),
            ("D", "toys", 10, 4.0),
            ("E", "toys", 11, 5.0),
        ]);
        for (q, want) in [
            (vec![], vec!["A", "B", "C", "D", "E"]),
            (vec![("category", "toys")], vec!["A", "B", "D", "E"]),
            (vec![("category", "TOYS"), ("inStock", "false")], vec!["A"]),
            (vec![("inStock", "true")], vec!["B", "C", "D", "E"]),
            (vec![("lowStock", "true")], vec!["B", "D"]),
            (
                vec![("lowStock", "true"), ("lowStockThreshold", "5")],
                vec!["B"],
            ),
            (vec![("lowStock", "false")], vec!["A", "C", "E"]),
            (vec![("brand", "acme"), ("category", "food")], vec!["C"]),
            (vec![("brand", "other")], vec![]),
        ] {
            assert_eq!(ids(&list(&v, &query(&q))), want, "{q:?}");
        }
    }

    #[test]
    fn sorts_by_each_key_both_ways() {
        let v = view(&[("A", "x", 3, 9.0), ("B", "x", 1, 1.5), ("C", "x", 2, 1.5)]);
        for (sort, want) in [
            ("productId", vec!["A", "B", "C"]),
            ("-productId", vec!["C", "B", "A"]),
            ("price", vec!["B", "C", "A"]),
            ("-price", vec!["A", "C", "B"]),
            ("inventory", vec!["B", "C", "A"]),
            ("-inventory", vec!["A", "C", "B"]),
            ("name", vec!["A", "B", "C"]),
        ] {
            assert_eq!(ids(&list(&v, &query(&[("sort", sort)]))), want, "{sort}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        for (pairs, param) in [
            (vec![("inStock", "yes")], "inStock"),
            (vec![("sort", "colour")], "sort"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "5000")], "limit"),
            (vec![("cursor", "zz")], "cursor"),
            (vec![("lowStockThreshold", "-1")], "lowStockThreshold"),
        ] {
            let err = ListQuery::from_params(&params(&pairs)).expect_err("invalid");
            assert_eq!(err.param, param);
        }
        let c = Cursor {
            sort: SortKey::Price,
            descending: false,
            value: SortValue::Num(1.0),
            id: "A".into(),
        };
        let err = ListQuery::from_params(&params(&[("cursor", &c.encode())]))
            .expect_err("cursor of another sort");
        assert_eq!(err.param, "cursor");
    }

    /// Walks every page and returns the ids in order.
    fn walk(v: &View, sort: &str, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let limit = limit.to_string();
        loop {
            let mut p = vec![("sort", sort), ("limit", limit.as_str())];
            if let Some(c) = &cursor {
                p.push(("cursor", c));
            }
            let page = list(v, &query(&p));
            out.extend(ids(&page));
            match page.next {
                Some(c) => cursor = Some(c.encode()),
                None => return out,
            }
        }
    }

    proptest! {
        #[test]
        fn paging_returns_every_product_once_in_order(
            products in proptest::collection::btree_map("[a-f]{1,3}", (0i64..5, 0u8..4), 0..40),
            limit in 1usize..7,
            sort in prop::sample::select(vec!["productId", "-productId", "price", "-price",
                "inventory", "-inventory", "name", "-lastUpdate"]),
        ) {
            let mut v = View::new(Limits::default());
            for (id, (inv, price)) in &products {
                v.apply(product(id, "c", *inv, f64::from(*price)), None);
            }
            let all = walk(&v, sort, MAX_LIMIT);
            prop_assert_eq!(all.len(), products.len());
            prop_assert_eq!(walk(&v, sort, limit), all.clone());
            let mut sorted = all.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), products.len(), "no duplicates");
        }
    }
}
