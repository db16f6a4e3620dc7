//! The keys of the in-memory layers. A message's key (a conversation or a
//! user, then its id) is 12 to 16 bytes, and the hub inserts two per
//! message into maps of hundreds of thousands: kept inline, a key costs no
//! allocation, and the map compares keys without reading memory elsewhere
//! (as `Vec` keys it spent a third of the hub's time on that).

use std::borrow::Borrow;
use std::cmp::Ordering;

/// Keys up to this long are kept inline; longer ones (names, tokens) on
/// the heap.
const INLINE: usize = 24;

/// A byte-string key, ordered as its bytes are.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    /// The bytes, then zeros: comparing two of these as three big-endian
    /// words, then by length, is comparing their bytes (a shorter key that
    /// agrees with a longer one up to its length is a prefix of it).
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE {
            let mut b = [0u8; INLINE];
            b[..bytes.len()].copy_from_slice(bytes);
            Key(Repr::Inline(bytes.len() as u8, b))
        } else {
            Key(Repr::Heap(bytes.into()))
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, b) => &b[..*len as usize],
            Repr::Heap(b) => b,
        }
    }
}

fn words(b: &[u8; INLINE]) -> [u64; 3] {
    let w = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_be_bytes(x)
    };
    [w(0), w(1), w(2)]
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        match (&self.0, &other.0) {
            (Repr::Inline(la, a), Repr::Inline(lb, b)) => words(a).cmp(&words(b)).then(la.cmp(lb)),
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Maps keyed by `Key` are searched with `&[u8]` too: sound because both
/// order the same bytes the same way.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Key {
    fn from(v: Vec<u8>) -> Key {
        Key::new(&v)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // Short keys, with many zeros and shared prefixes, and some past
        // the inline length.
        prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..40)
    }

    proptest! {
        #[test]
        fn keys_order_as_their_bytes(a in bytes(), b in bytes()) {
            let (ka, kb) = (Key::new(&a), Key::new(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.as_slice(), &a[..]);
        }
    }

    #[test]
    fn a_prefix_sorts_first_even_when_the_rest_is_zeros() {
        let k = |b: &[u8]| Key::new(b);
        assert!(k(&[1, 2]) < k(&[1, 2, 0]));
        assert!(k(&[]) < k(&[0]));
        assert!(k(&[0; 24]) < k(&[0; 25]));
        assert!(k(&[0; 23]) < k(&[0; 24]));
        assert!(k(&[2]) > k(&[1; 30]));
    }
}
