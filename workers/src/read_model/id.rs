//! Product ids as the view's keys, stored inline when short.
//!
//! A restore inserts a million ids into an ordered map. As `Arc<str>` each id was its own heap
//! allocation (~48 bytes with the allocator's header for a 9-byte id) and every comparison during
//! an insert or lookup followed a pointer to it, a likely cache miss per key compared. Ids of up
//! to [`INLINE`] bytes (the usual `P00000042` or a 20-character SKU) live in the map's node
//! instead: no allocation, and the bytes compared sit next to each other. Longer ids (a UUID)
//! fall back to a shared `Arc<str>`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Longest id kept inline: with the length byte and the enum's tag this makes the id 24 bytes,
/// the size of the `Arc<str>` variant plus its tag.
pub const INLINE: usize = 22;

/// A product id. Orders, compares and hashes exactly like the `str` it holds, so maps keyed by
/// it can be queried with a `&str`.
#[derive(Clone)]
pub struct ProductId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl ProductId {
    pub fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Self(Repr::Inline { len, bytes })
            }
            _ => Self(Repr::Shared(Arc::from(s))),
        }
    }

    /// The id's bytes, without the UTF-8 check `as_str` makes: what ordering and equality use.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes were copied from a `str` whole. Checked anyway (a few
            // nanoseconds for a short id) because the crate has no unsafe code; the empty
            // fallback is unreachable.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s,
        }
    }
}

impl From<&str> for ProductId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl Deref for ProductId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ProductId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

// `Borrow<str>` requires Eq, Ord and Hash to agree with `str`'s: they compare the same bytes
// (`str` orders byte-wise) and hash through `str`.
impl Borrow<str> for ProductId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ProductId {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                a == b && x == y
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for ProductId {}

impl PartialOrd for ProductId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ProductId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Two inline ids compare as integers: a restore makes ~20 comparisons per insert
            // into a million-entry map, and a `memcmp` call per comparison was a tenth of a
            // restore's CPU. The bytes are zero-padded, so comparing the padded arrays, then the
            // lengths, orders exactly like the strings (a string that is a prefix of another
            // pads with zeros, which sort first, and ties go to the shorter).
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                inline_key(x).cmp(&inline_key(y)).then(a.cmp(b))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// The inline bytes as big-endian integers, which order like the bytes.
fn inline_key(bytes: &[u8; INLINE]) -> (u128, u64) {
    let mut hi = [0u8; 16];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&bytes[..16]);
    lo[..INLINE - 16].copy_from_slice(&bytes[16..]);
    (u128::from_be_bytes(hi), u64::from_be_bytes(lo))
}

impl Hash for ProductId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for ProductId {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ProductId {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    #[test]
    fn short_ids_are_inline_and_long_ones_shared() {
        assert_eq!(std::mem::size_of::<ProductId>(), 24);
        let short = ProductId::new("P00000042");
        assert!(matches!(short.0, Repr::Inline { .. }));
        assert_eq!(short.as_str(), "P00000042");
        let long = ProductId::new("0b5c1f0e-8d2a-4a8e-9f57-2a1d7c3e9b11");
        assert!(matches!(long.0, Repr::Shared(_)));
        assert_eq!(&*long, "0b5c1f0e-8d2a-4a8e-9f57-2a1d7c3e9b11");
        let edge = "x".repeat(INLINE);
        assert!(matches!(ProductId::new(&edge).0, Repr::Inline { .. }));
        assert!(matches!(
            ProductId::new(&format!("{edge}y")).0,
            Repr::Shared(_)
        ));
        assert_eq!(ProductId::new("é✓").as_str(), "é✓");
    }

    #[test]
    fn maps_keyed_by_ids_answer_str_queries() {
        let mut m = BTreeMap::new();
        m.insert(ProductId::new("b"), 2);
        m.insert(ProductId::new(&"a".repeat(40)), 1);
        assert_eq!(m.get("b"), Some(&2));
        assert_eq!(m.get("a".repeat(40).as_str()), Some(&1));
        let set: HashSet<ProductId> = [ProductId::new("b")].into_iter().collect();
        assert!(set.contains("b"));
    }

    proptest! {
        /// Ordering and equality are `str`'s, across the inline/shared boundary too.
        #[test]
        fn orders_like_str(a in "\\PC{0,30}", b in "\\PC{0,30}") {
            prop_assert_eq!(ProductId::new(&a).cmp(&ProductId::new(&a)), Ordering::Equal);
            let (x, y) = (ProductId::new(&a), ProductId::new(&b));
            prop_assert_eq!(x.cmp(&y), a.as_str().cmp(b.as_str()));
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.as_str(), a.as_str());
        }

        /// Short ids that share prefixes, contain NUL bytes or differ only past byte 16 (the
        /// cases the integer comparison could get wrong).
        #[test]
        fn inline_ids_order_like_str(a in "[\\x00ab]{0,22}", b in "[\\x00ab]{0,22}") {
            let (x, y) = (ProductId::new(&a), ProductId::new(&b));
            prop_assert_eq!(x.cmp(&y), a.as_str().cmp(b.as_str()));
            prop_assert_eq!(x == y, a == b);
        }
    }
}
