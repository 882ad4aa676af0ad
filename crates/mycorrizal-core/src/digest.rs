//! Digests of a replica's contents, for anti-entropy and rebalancing.
//!
//! Two replicas compare what they hold for the keys they share without sending the keys: a
//! range is a placement slot ([`crate::placement::slot_of`]), whose keys all have the same
//! owners, and each range is summarised by the XOR of one 64-bit digest per record (key hash,
//! version, tombstone flag) and a count. Equal summaries mean (with overwhelming probability)
//! equal contents; only ranges whose summaries differ are then compared key by key.
//!
//! XOR makes a summary independent of order, and lets a record leave it as it entered: a
//! replica keeps its summaries current as records are stored, replaced, evicted and removed
//! ([`LiveDigests`]), so two replicas compare what they hold within a round trip of each other.
//! (Built by walking the store instead, two replicas' summaries were taken seconds apart, and
//! under a write load over the whole key space every range differed: each anti-entropy round
//! became a full key-by-key exchange.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use xxhash_rust::xxh3::xxh3_64;

use crate::{
    hlc::{HlcTime, Timestamp},
    placement,
};

/// Ranges per bucket: one per placement slot.
pub const RANGES: usize = placement::SLOTS;

/// The range a key with this placement hash falls in: its slot.
#[inline]
pub fn range_of(key_hash: u64) -> u32 {
    placement::slot_of(key_hash)
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

/// Whether, in a version exchange, a replica holding `theirs` of a key (`None`: nothing) lacks
/// the version `ours` another replica holds, and should be sent it.
///
/// A replica that holds nothing of the key lacks any version. One that holds an older version
/// lacks `ours` only if `ours` was written no later than the exchange's `cutoff`: the asker's
/// clock when it began listing its versions. A version written after that was written during
/// the exchange, whose listing and walks take seconds on a large bucket; the write path
/// delivers it to every owner (a missed owner gets a hint), and a later round, whose cutoff is
/// past it, repairs any replica it still did not reach. Without the cutoff, an exchange under
/// a steady write load resent every key written while it ran: during a join, as many records
/// moved between the old nodes as to the new one. Without a cutoff (`None`: hand-offs, which
/// drop a key once its owners confirm it) every newer version counts.
pub fn lacks(theirs: Option<Timestamp>, ours: Timestamp, cutoff: Option<HlcTime>) -> bool {
    match theirs {
        None => true,
        Some(theirs) => theirs < ours && cutoff.is_none_or(|c| ours.time <= c),
    }
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

/// Range summaries kept current as records come and go: one replica's whole bucket, every
/// range, shared by the threads that write it.
///
/// Every record that enters the store is [`LiveDigests::insert`]ed and every record that
/// leaves it (replaced, evicted, expired, deleted, handed off) is [`LiveDigests::remove`]d,
/// exactly once each; the summaries then equal those built from scratch over what the store
/// holds ([`RangeDigests::add`] for every record). The two halves of a range's summary are
/// updated one after the other, so a [`LiveDigests::snapshot`] taken during a write may see
/// half of it: a range that differs for that reason costs one version exchange that moves
/// nothing.
pub struct LiveDigests {
    /// Per range: the XOR of its records' digests, and their count, side by side in one line.
    ranges: Box<[[AtomicU64; 2]]>,
}

impl Default for LiveDigests {
    fn default() -> Self {
        LiveDigests {
            ranges: (0..RANGES).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
        }
    }
}

impl std::fmt::Debug for LiveDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDigests").finish_non_exhaustive()
    }
}

impl LiveDigests {
    /// A record entered the store.
    #[inline]
    pub fn insert(&self, key_hash: u64, version: Timestamp, tombstone: bool) {
        let r = &self.ranges[range_of(key_hash) as usize];
        r[0].fetch_xor(entry_digest(key_hash, version, tombstone), Relaxed);
        r[1].fetch_add(1, Relaxed);
    }

    /// A record left the store.
    #[inline]
    pub fn remove(&self, key_hash: u64, version: Timestamp, tombstone: bool) {
        let r = &self.ranges[range_of(key_hash) as usize];
        r[0].fetch_xor(entry_digest(key_hash, version, tombstone), Relaxed);
        r[1].fetch_sub(1, Relaxed);
    }

    /// The summaries of the ranges `keep` selects (the others read as empty).
    pub fn snapshot(&self, keep: impl Fn(u32) -> bool) -> RangeDigests {
        let mut d = RangeDigests::default();
        for (i, r) in self.ranges.iter().enumerate() {
            if keep(i as u32) {
                d.xor[i] = r[0].load(Relaxed);
                d.count[i] = r[1].load(Relaxed) as u32;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::node::NodeTag;

    fn ts(t: u64) -> Timestamp {
        Timestamp { time: HlcTime::new(t, 0), node: NodeTag(1) }
    }

    #[test]
    fn a_replica_lacks_what_it_does_not_hold_and_older_versions_up_to_the_cutoff() {
        let cutoff = Some(HlcTime::new(10, 0));
        // Holding nothing, it lacks any version, however recent.
        assert!(lacks(None, ts(50), cutoff));
        assert!(lacks(None, ts(50), None));
        // An older version written before the cutoff: a divergence to repair.
        assert!(lacks(Some(ts(3)), ts(10), cutoff));
        // Written after the cutoff: the write path's to deliver, not the exchange's.
        assert!(!lacks(Some(ts(3)), ts(11), cutoff));
        assert!(lacks(Some(ts(3)), ts(11), None));
        // The same version, or a newer one, is never lacking.
        assert!(!lacks(Some(ts(10)), ts(10), cutoff));
        assert!(!lacks(Some(ts(11)), ts(10), None));
        // Same instant, different writers: the higher node tag wins, as in every comparison.
        let other = Timestamp { time: HlcTime::new(7, 0), node: NodeTag(2) };
        assert!(lacks(Some(ts(7)), other, cutoff));
        assert!(!lacks(Some(other), ts(7), cutoff));
    }

    proptest! {
        /// Of two replicas holding different versions, exactly the older lacks the newer
        /// (without a cutoff); a cutoff only ever removes records from an exchange.
        #[test]
        fn the_older_replica_lacks_and_a_cutoff_only_narrows(
            a in (0u64..100, 0u64..3), b in (0u64..100, 0u64..3), c in prop::option::of(0u64..100),
        ) {
            let stamp = |(t, n): (u64, u64)| Timestamp { time: HlcTime::new(t, 0), node: NodeTag(n) };
            let (a, b, cutoff) = (stamp(a), stamp(b), c.map(|c| HlcTime::new(c, 0)));
            prop_assert_eq!(lacks(Some(a), b, None) as u8 + lacks(Some(b), a, None) as u8, u8::from(a != b));
            prop_assert!(!lacks(Some(a), b, cutoff) || lacks(Some(a), b, None));
        }

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

    proptest! {
        /// Live summaries, after records come and go in any order, equal summaries built from
        /// scratch over the records that stayed; a snapshot keeps only the ranges asked for.
        #[test]
        fn live_summaries_equal_those_built_from_scratch(
            ops in prop::collection::vec((any::<u64>(), 0u64..5, any::<bool>(), any::<bool>()), 0..300),
            keep_every in 1u32..4,
        ) {
            let live = LiveDigests::default();
            let mut held = std::collections::HashMap::new();
            for (h, t, tombstone, removal) in ops {
                // Few distinct keys, so records replace and remove each other often.
                let h = (h % 64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                if let Some((v, tomb)) = held.remove(&h) {
                    live.remove(h, v, tomb);
                }
                if !removal {
                    live.insert(h, ts(t), tombstone);
                    held.insert(h, (ts(t), tombstone));
                }
            }
            let keep = |r: u32| r.is_multiple_of(keep_every);
            let mut fresh = RangeDigests::default();
            for (&h, &(v, tomb)) in &held {
                if keep(range_of(h)) {
                    fresh.add(h, v, tomb);
                }
            }
            prop_assert!(live.snapshot(keep).mismatched(&fresh).is_empty());
        }
    }

    #[test]
    fn malformed_parts_are_refused() {
        assert!(RangeDigests::from_parts([(RANGES as u32, 1, 1)]).is_none());
        assert!(RangeDigests::from_parts([(3, 1, 1), (3, 2, 2)]).is_none());
    }
}
