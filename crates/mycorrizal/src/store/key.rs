//! Keys as the engine stores them: short keys live inside the engine's entry, so a lookup
//! compares against bytes already in the cache line it loaded, instead of following a pointer
//! to a separate allocation (one cache miss less per `get` of a random key, and one allocation
//! less per stored key). Longer keys are boxed.

use std::{
    borrow::Borrow,
    hash::{Hash, Hasher},
    ops::Deref,
};

/// Longest key kept inline: with the length byte and the enum's tag the key is 24 bytes, the
/// size of a boxed slice plus a word.
const INLINE: usize = 22;

#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

impl From<&[u8]> for Key {
    #[inline]
    fn from(key: &[u8]) -> Key {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline { len: key.len() as u8, bytes }
        } else {
            Key::Boxed(key.into())
        }
    }
}

impl Deref for Key {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Boxed(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self
    }
}

/// Hashes exactly as the `[u8]` it holds, so lookups by `&[u8]` find it.
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn short_and_long_keys_hash_and_compare_as_their_bytes() {
        let hasher = std::collections::hash_map::RandomState::new();
        for len in [0, 1, 11, INLINE, INLINE + 1, 200] {
            let raw: Vec<u8> = (0..len as u8).collect();
            let key = Key::from(&raw[..]);
            assert_eq!(matches!(key, Key::Inline { .. }), len <= INLINE);
            assert_eq!(&*key, &raw[..]);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&raw[..]), "len {len}");
            assert!(key == Key::from(&raw[..]));
        }
        assert!(Key::from(&b"ab"[..]) != Key::from(&b"ab\0"[..]), "length is part of the key");
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }
}
