//! [`Value`]: what a read returns, the stored entry itself rather than a copy of it.

use std::{
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
};

use bytes::Bytes;

use super::packed::Packed;

/// A value read from a bucket or the cache: immutable bytes, cheap to clone, that derefs to
/// `[u8]`.
///
/// A value read from this node's store *is* the stored entry: the read took a reference to it
/// and copied and allocated nothing, so a read of random keys costs what quick_cache's does
/// (docs/BENCHMARKS.md). It is a snapshot: later writes to the key do not show in it, and it
/// stays readable after the entry is overwritten or evicted, which keeps that entry's memory
/// (key and value, about the size of the value) allocated until the last clone is dropped.
/// A value that came over the network holds the received bytes.
///
/// Convert it with [`Bytes::from`] (or [`Value::into_bytes`]) where a `Bytes` is needed; that
/// keeps sharing the entry, and allocates only the `Bytes`' small owner record.
///
/// ```
/// use mycorrizal::store::{BucketConfig, Store, StoreConfig};
/// use mycorrizal_core::NodeId;
///
/// let store = Store::new(StoreConfig::new(NodeId::new("node-1")?));
/// let users = store.create_bucket(BucketConfig::builder("users").max_entries(100).build()?)?;
/// users.set("alice", "admin")?;
/// let role = users.get("alice").expect("just written");
/// users.set("alice", "viewer")?;
/// assert_eq!(role, "admin"); // the value read is a snapshot
/// assert_eq!(&role[..2], b"ad"); // and derefs to [u8]
/// let bytes: bytes::Bytes = role.into_bytes();
/// assert_eq!(bytes, "admin");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Value(Repr);

#[derive(Clone)]
enum Repr {
    /// A stored entry of this node's store.
    Stored(Packed),
    /// Bytes from elsewhere (a peer's answer).
    Bytes(Bytes),
}

impl Value {
    /// A value holding a stored entry's value.
    pub(crate) fn stored(entry: Packed) -> Value {
        Value(Repr::Stored(entry))
    }

    /// The value as [`Bytes`], still sharing the stored entry (no copy of the bytes).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Stored(entry) => entry.into_value(),
            Repr::Bytes(b) => b,
        }
    }
}

impl Deref for Value {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Stored(entry) => entry.value(),
            Repr::Bytes(b) => b,
        }
    }
}

impl AsRef<[u8]> for Value {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::borrow::Borrow<[u8]> for Value {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Value {
        Value(Repr::Bytes(b))
    }
}

impl From<Value> for Bytes {
    fn from(v: Value) -> Bytes {
        v.into_bytes()
    }
}

impl fmt::Debug for Value {
    /// As `Bytes` prints: `b"..."`, printable ASCII as is, `\n`, `\r`, `\t`, `\0`, `\\` and
    /// `\"` escaped, other bytes as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b\"")?;
        for &b in self.iter() {
            match b {
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\t' => f.write_str("\\t")?,
                b'\0' => f.write_str("\\0")?,
                b'\\' | b'"' => write!(f, "\\{}", b as char)?,
                0x20..0x7f => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        **self == **other
    }
}

impl Eq for Value {}

impl Hash for Value {
    /// Hashes as `[u8]` does, so a `Value` can be looked up by `&[u8]` (`Borrow`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Value) -> Ordering {
        (**self).cmp(&**other)
    }
}

/// `Value == other` and `other == Value` by bytes, for the byte-like types values are compared
/// with.
macro_rules! eq_by_bytes {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                **self == *AsRef::<[u8]>::as_ref(other)
            }
        }
        impl PartialEq<Value> for $t {
            fn eq(&self, other: &Value) -> bool {
                *AsRef::<[u8]>::as_ref(self) == **other
            }
        }
    )*};
}

eq_by_bytes!([u8], &[u8], Vec<u8>, Bytes, str, &str, String);

impl<const N: usize> PartialEq<[u8; N]> for Value {
    fn eq(&self, other: &[u8; N]) -> bool {
        **self == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        **self == other[..]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use mycorrizal_core::{HlcTime, NodeTag, Timestamp};

    use super::*;
    use crate::store::packed::Header;

    fn stored(value: &[u8]) -> Value {
        let version = Timestamp { time: HlcTime::from_raw(1 << 20), node: NodeTag(1) };
        Value::stored(Packed::new(b"key", Header::new(version, None, false), value))
    }

    #[test]
    fn stored_and_received_values_read_compare_and_hash_alike() {
        let (a, b) = (stored(b"hello"), Value::from(Bytes::from_static(b"hello")));
        assert_eq!(a, b);
        assert_eq!((&a[..], a.len()), (&b"hello"[..], 5));
        let (bytes, vec, string) = (Bytes::from("hello"), b"hello".to_vec(), "hello".to_owned());
        assert!(a == "hello" && a == b"hello" && a == bytes && a == *"hello" && a == vec);
        assert!("hello" == a && bytes == a && vec == a && string == a);
        assert_eq!(a, string);
        assert!(a != "hell" && stored(b"a") < stored(b"b"));
        let set: HashSet<Value> = [a.clone()].into();
        assert!(set.contains(&b"hello"[..]), "Borrow<[u8]> hashes as the bytes do");
        assert_eq!(format!("{a:?}"), format!("{:?}", Bytes::from("hello")));
        let odd = b"\0\"'\\\n\r\t\x7f\xff ~";
        assert_eq!(format!("{:?}", stored(odd)), format!("{:?}", Bytes::from_static(odd)));
    }

    #[test]
    fn into_bytes_shares_the_entry_and_outlives_the_value() {
        let a = stored(&[9; 100]);
        let b = a.clone().into_bytes();
        drop(a);
        assert_eq!(b, vec![9; 100]);
        assert!(stored(b"").into_bytes().is_empty());
        assert_eq!(Value::from(Bytes::from("x")).into_bytes(), "x");
    }
}
