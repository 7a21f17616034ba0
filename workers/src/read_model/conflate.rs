//! A WebSocket client's queue: the products waiting to be sent to it, at most once each.
//!
//! The queue holds product ids, not messages: when a product changes again before the client took
//! the previous change, the id is already waiting and nothing is added (conflated); the message is
//! built from the product's current state when it is sent. So a slow client receives the latest
//! state of each product and the queue never holds more than `capacity` ids; a full queue stops
//! taking changes (they wait in the view's bounded change log, see `ws`).

use std::collections::{HashSet, VecDeque};

use super::id::ProductId;
use super::view::ProductDoc;

/// What [`Pending::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Already waiting: the earlier change is replaced by this one.
    Conflated,
    /// The queue is full of distinct products: not queued, take no more changes for now.
    Overflow,
}

#[derive(Debug)]
pub struct Pending {
    order: VecDeque<ProductId>,
    waiting: HashSet<ProductId>,
    capacity: usize,
}

impl Pending {
    pub fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            waiting: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, id: &ProductId) -> Push {
        if self.waiting.contains(id) {
            return Push::Conflated;
        }
        if self.order.len() >= self.capacity {
            return Push::Overflow;
        }
        self.waiting.insert(id.clone());
        self.order.push_back(id.clone());
        Push::Queued
    }

    /// The product waiting longest.
    pub fn pop(&mut self) -> Option<ProductId> {
        let id = self.order.pop_front()?;
        self.waiting.remove(&id);
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What a client asked to follow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subscription {
    #[default]
    All,
    /// Products with one of these ids or in one of these categories.
    Some {
        ids: HashSet<String>,
        categories: HashSet<String>,
    },
}

impl Subscription {
    /// From comma-separated lists; both empty means everything.
    pub fn from_lists(ids: &[String], categories: &[String]) -> Self {
        let clean = |v: &[String]| -> HashSet<String> {
            v.iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (ids, categories) = (clean(ids), clean(categories));
        if ids.is_empty() && categories.is_empty() {
            Self::All
        } else {
            Self::Some { ids, categories }
        }
    }

    /// Whether a change of product `id` (with its document, `None` when deleted) concerns the
    /// client. A deleted product is sent to whoever follows its id, and to category followers
    /// (they cannot know its category any more; one extra message is cheaper than a stale item).
    pub fn matches(&self, id: &str, doc: Option<&ProductDoc>) -> bool {
        match self {
            Self::All => true,
            Self::Some { ids, categories } => {
                ids.contains(id)
                    || match doc {
                        Some(d) => categories.contains(&*d.category),
                        None => !categories.is_empty(),
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn id(s: &str) -> ProductId {
        ProductId::new(s)
    }

    #[test]
    fn repeats_conflate_and_a_full_queue_overflows() {
        let mut p = Pending::new(2);
        assert_eq!(p.push(&id("A")), Push::Queued);
        assert_eq!(p.push(&id("A")), Push::Conflated);
        assert_eq!(p.push(&id("B")), Push::Queued);
        assert_eq!(p.push(&id("B")), Push::Conflated);
        assert_eq!(p.push(&id("C")), Push::Overflow);
        assert_eq!(p.pop().as_deref(), Some("A"));
        assert_eq!(p.push(&id("A")), Push::Queued);
        assert_eq!(p.pop().as_deref(), Some("B"));
        assert_eq!(p.pop().as_deref(), Some("A"));
        assert_eq!(p.pop(), None);
        assert!(p.is_empty());
    }

    #[test]
    fn subscriptions_match_ids_and_categories() {
        let doc = |cat: &str| ProductDoc::new("{}", "n", Arc::from(cat), Arc::from("b"), 1.0, 1);
        let all = Subscription::from_lists(&[], &[" ".into()]);
        assert_eq!(all, Subscription::All);
        let some = Subscription::from_lists(&["P1,P2".into()], &["toys".into()]);
        assert!(some.matches("P1", Some(&doc("food"))));
        assert!(some.matches("P9", Some(&doc("toys"))));
        assert!(!some.matches("P9", Some(&doc("food"))));
        assert!(
            some.matches("P9", None),
            "deletions reach category followers"
        );
        let ids_only = Subscription::from_lists(&["P1".into()], &[]);
        assert!(!ids_only.matches("P9", None));
    }

    proptest! {
        /// Whatever the pushes, the queue holds each id at most once, never more than its
        /// capacity, and pops every queued id exactly once in first-queued order.
        #[test]
        fn queue_is_bounded_and_loses_no_queued_id(
            pushes in proptest::collection::vec(0u8..12, 0..200),
            capacity in 1usize..8,
        ) {
            let mut p = Pending::new(capacity);
            let mut model: Vec<u8> = Vec::new();
            for n in pushes {
                let r = p.push(&id(&n.to_string()));
                let expected = if model.contains(&n) {
                    Push::Conflated
                } else if model.len() >= capacity {
                    Push::Overflow
                } else {
                    model.push(n);
                    Push::Queued
                };
                prop_assert_eq!(r, expected);
                prop_assert!(p.len() <= capacity);
            }
            let popped: Vec<String> = std::iter::from_fn(|| p.pop()).map(|s| s.to_string()).collect();
            let want: Vec<String> = model.iter().map(u8::to_string).collect();
            prop_assert_eq!(popped, want);
        }
    }
}
