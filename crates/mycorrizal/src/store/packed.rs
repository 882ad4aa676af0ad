//! A stored entry in one shared allocation ([`Packed`]), and a record's header ([`Header`]).
//!
//! This module holds the store's one `unsafe` code: `Packed` is a reference-counted byte
//! buffer whose count lives in the buffer itself, 4 bytes where `Arc<[u8]>` spends 16, which
//! keeps a 100-byte entry within the allocator's 144-byte class. Its invariants, kept by
//! everything below: the allocation is made and fully written in [`Packed::new`]; only the
//! count is written afterwards, and only atomically; it is freed by the handle whose
//! decrement takes the count to zero.
#![allow(unsafe_code)]

use std::{
    alloc::{Layout, alloc, dealloc, handle_alloc_error},
    ptr::NonNull,
    sync::atomic::{
        AtomicU32,
        Ordering::{Acquire, Relaxed, Release},
        fence,
    },
};

use bytes::Bytes;
use mycorrizal_core::{HlcTime, NodeTag, Timestamp};

/// Bit 63 of [`Header::meta`]: a tombstone.
const TOMBSTONE_BIT: u64 = 1 << 63;
/// [`Header::meta`] bits 0..63 when the record never expires.
const NO_EXPIRY: u64 = TOMBSTONE_BIT - 1;

/// A record without its value: version, tombstone flag and expiry. 24 bytes, `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// `HlcTime` of the version, raw.
    time: u64,
    /// `NodeTag` of the version.
    node: u64,
    /// Bit 63: tombstone. Bits 0..63: expiry in ms, or [`NO_EXPIRY`].
    meta: u64,
}

impl Header {
    /// The header of a record of `version`, expiring at `expires_at_ms` (clamped to what fits).
    pub(crate) fn new(version: Timestamp, expires_at_ms: Option<u64>, tombstone: bool) -> Header {
        let expiry = expires_at_ms.map_or(NO_EXPIRY, |at| at.min(NO_EXPIRY - 1));
        let tomb = if tombstone { TOMBSTONE_BIT } else { 0 };
        Header { time: version.time.to_raw(), node: version.node.0, meta: expiry | tomb }
    }

    #[inline]
    pub(crate) fn version(&self) -> Timestamp {
        Timestamp { time: HlcTime::from_raw(self.time), node: NodeTag(self.node) }
    }

    #[inline]
    pub(crate) fn is_tombstone(&self) -> bool {
        self.meta & TOMBSTONE_BIT != 0
    }

    #[inline]
    pub(crate) fn expires_at(&self) -> Option<u64> {
        let at = self.meta & !TOMBSTONE_BIT;
        (at != NO_EXPIRY).then_some(at)
    }

    #[inline]
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        let at = self.meta & !TOMBSTONE_BIT;
        at != NO_EXPIRY && at <= now_ms
    }
}

/// Byte offsets in a [`Packed`] allocation. The reference count comes first, and is the only
/// part ever written after packing; everything after it is read-only.
const RC: usize = 0;
const KEY_LEN: usize = 4;
const FLAGS: usize = 6;
const TIME: usize = 7;
const NODE: usize = 15;
/// Where the expiry is, when [`EXPIRES`] says there is one; else where the key starts.
const TAIL: usize = 23;
/// [`FLAGS`] bits.
const TOMBSTONE: u8 = 1;
const EXPIRES: u8 = 2;

/// One stored entry in one allocation, shared by a reference count: a read hands out the entry
/// itself (as a [`Value`](super::Value), or a `Bytes` made by [`Packed::into_value`]) instead of
/// copying the value out.
///
/// Layout: the count (`u32`), the key's length (`u16`), flags (tombstone, has an expiry), the
/// version's time and node (8 bytes each), the expiry (8 bytes, only when there is one), the
/// key, the value. For a 100-byte value under an 11-byte key and no expiry that is 134 bytes,
/// within the 136 that the allocator's 144-byte size class holds. Nothing after the count is
/// written once the entry is built, so readers share it without a lock.
pub(crate) struct Packed {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes after the count are immutable once built, and the count is atomic; a
// `Packed` is a shared, read-only handle like `Arc<[u8]>`.
unsafe impl Send for Packed {}
// SAFETY: as above.
unsafe impl Sync for Packed {}

impl Packed {
    pub(crate) fn new(key: &[u8], header: Header, value: &[u8]) -> Packed {
        let key_len = u16::try_from(key.len()).expect("keys are checked against MAX_KEY_LEN");
        let expiry = header.expires_at();
        let tail = if expiry.is_some() { TAIL + 8 } else { TAIL };
        let len = tail + key.len() + value.len();
        let layout = Self::layout(len);
        // SAFETY: `layout` is never zero-sized (`len >= TAIL`).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else { handle_alloc_error(layout) };
        let flags =
            u8::from(header.is_tombstone()) * TOMBSTONE + u8::from(expiry.is_some()) * EXPIRES;
        let mut at = KEY_LEN;
        let mut put = |bytes: &[u8]| {
            debug_assert!(at + bytes.len() <= len);
            // SAFETY: the parts written are laid out back to back within `len` bytes, as
            // `len` was computed above, and `bytes` cannot overlap a fresh allocation.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.add(at), bytes.len()) };
            at += bytes.len();
        };
        put(&key_len.to_le_bytes());
        put(&[flags]);
        put(&header.time.to_le_bytes());
        put(&header.node.to_le_bytes());
        if let Some(at) = expiry {
            put(&at.to_le_bytes());
        }
        put(key);
        put(value);
        debug_assert_eq!(at, len);
        // SAFETY: `RC` is 4-aligned (the layout's alignment) and within the allocation.
        unsafe { raw.add(RC).cast::<AtomicU32>().write(AtomicU32::new(1)) };
        Packed { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, std::mem::align_of::<AtomicU32>()).expect("entry size")
    }

    #[inline]
    fn count(&self) -> &AtomicU32 {
        // SAFETY: initialised in `new`, aligned, and alive while any `Packed` of it is.
        unsafe { &*self.ptr.as_ptr().add(RC).cast::<AtomicU32>() }
    }

    /// Everything after the count: never written after `new`, so sharing it is sound.
    #[inline]
    fn body(&self) -> &[u8] {
        // SAFETY: bytes KEY_LEN..len were all initialised in `new` and are never written again.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(KEY_LEN), self.len - KEY_LEN) }
    }

    #[inline]
    fn word(&self, at: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&self.body()[at - KEY_LEN..at - KEY_LEN + 8]);
        u64::from_le_bytes(w)
    }

    #[inline]
    fn flags(&self) -> u8 {
        self.body()[FLAGS - KEY_LEN]
    }

    #[inline]
    pub(crate) fn header(&self) -> Header {
        let flags = self.flags();
        let expiry = if flags & EXPIRES != 0 { self.word(TAIL) } else { NO_EXPIRY };
        let tomb = if flags & TOMBSTONE != 0 { TOMBSTONE_BIT } else { 0 };
        Header { time: self.word(TIME), node: self.word(NODE), meta: expiry | tomb }
    }

    /// Where the key starts and ends, in the whole allocation.
    #[inline]
    fn key_span(&self) -> (usize, usize) {
        let b = self.body();
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let start = if self.flags() & EXPIRES != 0 { TAIL + 8 } else { TAIL };
        (start, start + len)
    }

    #[inline]
    pub(crate) fn key(&self) -> &[u8] {
        let (start, end) = self.key_span();
        &self.body()[start - KEY_LEN..end - KEY_LEN]
    }

    #[inline]
    pub(crate) fn value(&self) -> &[u8] {
        &self.body()[self.key_span().1 - KEY_LEN..]
    }

    /// Key plus value bytes: what the bucket's counters and weigher charge.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.len - self.key_span().0
    }

    /// The value, as a `Bytes` that shares this entry (it stays allocated while the `Bytes`
    /// or a clone of it lives, evicted or not). Allocates only the `Bytes`' own 24-byte owner
    /// record, never the value.
    pub(crate) fn into_value(self) -> Bytes {
        if self.value().is_empty() { Bytes::new() } else { Bytes::from_owner(SharedValue(self)) }
    }
}

impl Clone for Packed {
    #[inline]
    fn clone(&self) -> Packed {
        // Relaxed, as `Arc`'s: a new reference is made from an existing one, which already
        // orders what it sees.
        if self.count().fetch_add(1, Relaxed) > i32::MAX as u32 {
            // Two billion handles to one entry: a leak of handles, abort as `Arc` does rather
            // than let the count wrap and free a live entry.
            std::process::abort();
        }
        Packed { ptr: self.ptr, len: self.len }
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        if self.count().fetch_sub(1, Release) != 1 {
            return;
        }
        // Every other handle's use of the entry happened before its decrement (Release); this
        // Acquire orders them all before the free, as in `Arc`.
        fence(Acquire);
        // SAFETY: the last handle; allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// A [`Packed`] entry seen as its value, the owner behind [`Packed::into_value`]'s `Bytes`.
struct SharedValue(Packed);

impl AsRef<[u8]> for SharedValue {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(time: u64) -> Header {
        Header::new(Timestamp { time: HlcTime::from_raw(time), node: NodeTag(7) }, None, false)
    }

    #[test]
    fn a_packed_entry_keeps_header_key_and_value() {
        let sizes = [(0, 0), (1, 100), (11, 100), (254, 3), (255, 0), (4096, 70_000)];
        for (n, (klen, vlen)) in sizes.into_iter().enumerate() {
            let key: Vec<u8> = (0..klen).map(|i| i as u8).collect();
            let value: Vec<u8> = (0..vlen).map(|i| (i * 7) as u8).collect();
            for expiry in [None, Some(0), Some(99), Some(u64::MAX)] {
                let h = Header::new(
                    Timestamp { time: HlcTime::from_raw(123 << 16), node: NodeTag(u64::MAX) },
                    expiry,
                    n % 2 == 1,
                );
                let p = Packed::new(&key, h, &value);
                assert_eq!((p.header(), p.key(), p.value()), (h, &key[..], &value[..]));
                assert_eq!(p.header().is_tombstone(), n % 2 == 1);
                assert_eq!(p.header().expires_at(), expiry.map(|at| at.min(NO_EXPIRY - 1)));
                assert_eq!(p.size(), klen + vlen);
            }
        }
        // The size the memory figure rests on: within the 136 bytes of glibc's 144-byte class
        // for 11 + 100.
        assert_eq!(Packed::new(&[0; 11], header(1), &[0; 100]).len, 134);
    }

    fn handles(p: &Packed) -> u32 {
        p.count().load(Relaxed)
    }

    #[test]
    fn a_value_handed_out_keeps_its_entry_until_the_last_handle_goes() {
        let p = Packed::new(b"key", header(1), b"value");
        let value = p.clone().into_value();
        let twice = value.clone();
        let slice = value.slice(1..3);
        assert_eq!(handles(&p), 2, "all the Bytes share one handle");
        drop(p);
        // The entry is gone from wherever it was stored; its value is still readable.
        assert_eq!(
            (&value[..], &twice[..], &slice[..]),
            (&b"value"[..], &b"value"[..], &b"al"[..])
        );
        drop((value, twice));
        assert_eq!(&slice[..], b"al");
    }

    #[test]
    fn an_empty_value_holds_no_reference() {
        let p = Packed::new(b"key", header(1), b"");
        let value = p.clone().into_value();
        assert!(value.is_empty());
        assert_eq!(handles(&p), 1);
    }

    #[test]
    fn handles_counted_from_many_threads_leave_exactly_the_owners() {
        let p = Packed::new(b"shared", header(1), &[7; 100]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut kept = Vec::new();
                    for i in 0..10_000 {
                        let v = p.clone().into_value();
                        assert_eq!(&v[..], &[7; 100][..]);
                        if i % 7 == 0 {
                            kept.push(v);
                        } else if i % 5 == 0 {
                            kept.pop();
                        }
                    }
                });
            }
        });
        assert_eq!(handles(&p), 1, "every clone taken was dropped");
    }
}
