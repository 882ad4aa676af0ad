//! Digests of a replica's contents, for anti-entropy and rebalancing.
//!
//! Two replicas compare what they hold for the keys they share without sending the keys: the
//! key-hash space is cut into [`RANGES`] ranges, and each range is summarised by the XOR of one
//! 64-bit digest per record (key hash, version, tombstone flag) and a count. Equal summaries mean
//! (with overwhelming probability) equal contents; only ranges whose summaries differ are then
//! compared key by key. XOR makes a summary independent of iteration order, so both sides can
//! build it in one pass over an unordered store.

use xxhash_rust::xxh3::xxh3_64;

use crate::hlc::Timestamp;

/// Bits of the key hash that select a range.
pub const RANGE_BITS: u32 = 8;
/// Ranges per bucket.
pub const RANGES: usize = 1 << RANGE_BITS;

/// The range a key with this placement hash falls in: its top [`RANGE_BITS`] bits.
pub fn range_of(key_hash: u64) -> u32 {
    (key_hash >> (64 - RANGE_BITS)) as u32
}

/// One record's contribution to its range's digest.
pub fn entry_digest(key_hash: u64, version: Timestamp, tombstone: bool) -> u64 {
    let mut buf = [0u8; 25];
    buf[..8].copy_from_slice(&key_hash.to_le_bytes());
    buf[8..16].copy_from_slice(&version.time.to_raw().to_le_bytes());
    buf[16..24].copy_from_slice(&version.node.0.to_le_bytes());
    buf[24] = u8::from(tombstone);
    xxh3_64(&buf)
}

/// Summaries of every range of one bucket, as seen by one replica for one peer.
#[derive(Clone, PartialEq, Eq)]
pub struct RangeDigests {
    xor: Box<[u64; RANGES]>,
    count: Box<[u32; RANGES]>,
}

impl Default for RangeDigests {
    fn default() -> Self {
        RangeDigests { xor: Box::new([0; RANGES]), count: Box::new([0; RANGES]) }
    }
}

impl std::fmt::Debug for RangeDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeDigests").field("records", &self.records()).finish_non_exhaustive()
    }
}

impl RangeDigests {
    /// Adds one record.
    pub fn add(&mut self, key_hash: u64, version: Timestamp, tombstone: bool) {
        let r = range_of(key_hash) as usize;
        self.xor[r] ^= entry_digest(key_hash, version, tombstone);
        self.count[r] = self.count[r].wrapping_add(1);
    }

    /// Records added.
    pub fn records(&self) -> u64 {
        self.count.iter().map(|&c| u64::from(c)).sum()
    }

    /// The non-empty ranges as `(range, digest, count)`, for the wire.
    pub fn nonempty(&self) -> impl Iterator<Item = (u32, u64, u32)> + '_ {
        (0..RANGES)
            .filter(|&r| self.count[r] != 0 || self.xor[r] != 0)
            .map(|r| (r as u32, self.xor[r], self.count[r]))
    }

    /// Rebuilds summaries from `(range, digest, count)` triples; `None` if a range is out of
    /// bounds or repeated (a malformed message).
    pub fn from_parts(parts: impl IntoIterator<Item = (u32, u64, u32)>) -> Option<Self> {
        let mut d = RangeDigests::default();
        let mut seen = [false; RANGES];
        for (r, x, c) in parts {
            let r = r as usize;
            if r >= RANGES || seen[r] {
                return None;
            }
            seen[r] = true;
            d.xor[r] = x;
            d.count[r] = c;
        }
        Some(d)
    }

    /// Ranges whose summaries differ between `self` and `other`, ascending.
    pub fn mismatched(&self, other: &RangeDigests) -> Vec<u32> {
        (0..RANGES)
            .filter(|&r| self.xor[r] != other.xor[r] || self.count[r] != other.count[r])
            .map(|r| r as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{hlc::HlcTime, node::NodeTag};

    fn ts(t: u64) -> Timestamp {
        Timestamp { time: HlcTime::new(t, 0), node: NodeTag(1) }
    }

    proptest! {
        /// Summaries do not depend on the order records are added in.
        #[test]
        fn order_independent(mut hashes in prop::collection::vec(any::<u64>(), 0..200)) {
            let mut a = RangeDigests::default();
            for &h in &hashes { a.add(h, ts(h % 1000), h % 7 == 0); }
            hashes.reverse();
            let mut b = RangeDigests::default();
            for &h in &hashes { b.add(h, ts(h % 1000), h % 7 == 0); }
            prop_assert!(a.mismatched(&b).is_empty());
            prop_assert_eq!(RangeDigests::from_parts(a.nonempty()), Some(a));
        }

        /// A different version, a tombstone or a missing record shows up in exactly its range.
        #[test]
        fn differences_are_found(hashes in prop::collection::btree_set(any::<u64>(), 1..200), pick in any::<prop::sample::Index>(), change in 0u8..3) {
            let hashes: Vec<u64> = hashes.into_iter().collect();
            let victim = hashes[pick.index(hashes.len())];
            let mut a = RangeDigests::default();
            let mut b = RangeDigests::default();
            for &h in &hashes {
                a.add(h, ts(5), false);
                if h != victim {
                    b.add(h, ts(5), false);
                } else {
                    match change {
                        0 => b.add(h, ts(6), false),
                        1 => b.add(h, ts(5), true),
                        _ => {}
                    }
                }
            }
            prop_assert_eq!(a.mismatched(&b), vec![range_of(victim)]);
        }
    }

    #[test]
    fn malformed_parts_are_refused() {
        assert!(RangeDigests::from_parts([(RANGES as u32, 1, 1)]).is_none());
        assert!(RangeDigests::from_parts([(3, 1, 1), (3, 2, 2)]).is_none());
    }
}
