//! Rendezvous (highest random weight) placement: which nodes own a key.
//!
//! A key's hash ([`key_hash`], over namespace and key) falls in one of [`SLOTS`] slots (its top
//! [`SLOT_BITS`] bits), and every node is scored for the slot; the highest scores own every key
//! of it. The score is a pure function of (slot, node id), so every node computes the same
//! owners from the same member list, on every platform and in every release: [`score`] is
//! pinned by golden vectors below, and changing it would move data between nodes on upgrade.
//! All members are scored, never only the first few (the original project's bug #4).
//!
//! Why slots rather than each key scored on its own: every key of a slot has the same owners,
//! so a slot's contents are comparable between its replicas whatever the membership, and a
//! replica can keep a summary of each slot current as records come and go
//! ([`crate::digest::LiveDigests`]) instead of walking its store to build one per peer. With
//! 4,096 slots a node of a 4-node cluster at 3 replicas owns 3,072 ± 28 of them (±1 %), and
//! one of 64 nodes 192 ± 14 (±7 %).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::node::NodeId;

/// The key's half of the score: xxh3 of `len(namespace) || namespace || key`, with the length
/// as 4 big-endian bytes so `("ab", "c")` and `("a", "bc")` differ.
pub fn key_hash(namespace: &[u8], key: &[u8]) -> u64 {
    let len = 4 + namespace.len() + key.len();
    // Most keys are short: hash from the stack, not the allocator (this runs on every get).
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    buf[..4].copy_from_slice(&(namespace.len() as u32).to_be_bytes());
    buf[4..4 + namespace.len()].copy_from_slice(namespace);
    buf[4 + namespace.len()..].copy_from_slice(key);
    xxh3_64(buf)
}

/// Bits of a key hash that select its slot.
pub const SLOT_BITS: u32 = 12;
/// Slots in the key-hash space.
pub const SLOTS: usize = 1 << SLOT_BITS;

/// The slot a key with this [`key_hash`] falls in: its top [`SLOT_BITS`] bits.
#[inline]
pub fn slot_of(key_hash: u64) -> u32 {
    (key_hash >> (64 - SLOT_BITS)) as u32
}

/// The lowest key hash in `slot`: stands for every key of the slot in the functions here,
/// which look only at the slot.
#[inline]
pub fn slot_hash(slot: u32) -> u64 {
    u64::from(slot) << (64 - SLOT_BITS)
}

/// The score of `node` for a key whose [`key_hash`] is `key_hash`: xxh3 of the node id seeded
/// with the key's slot, so all the keys of a slot rank the nodes alike.
#[inline]
pub fn score(key_hash: u64, node: &NodeId) -> u64 {
    xxh3_64_with_seed(node.as_str().as_bytes(), u64::from(slot_of(key_hash)))
}

/// Whether `a` ranks before `b` for a key: higher score first, ties broken by node id.
fn ranks_before(a: (u64, &NodeId), b: (u64, &NodeId)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The `n` members with the highest scores for (`namespace`, `key`), best first. Ties (equal
/// 64-bit scores) are broken by node id, so the order is total.
pub fn owners<'a>(
    namespace: &[u8],
    key: &[u8],
    members: impl IntoIterator<Item = &'a NodeId>,
    n: usize,
) -> Vec<&'a NodeId> {
    owners_of_hash(key_hash(namespace, key), members, n)
}

/// [`owners`] for a key whose [`key_hash`] is already known.
pub fn owners_of_hash<'a>(
    key_hash: u64,
    members: impl IntoIterator<Item = &'a NodeId>,
    n: usize,
) -> Vec<&'a NodeId> {
    let mut scored: Vec<(u64, &NodeId)> =
        members.into_iter().map(|m| (score(key_hash, m), m)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, m)| m).collect()
}

/// Whether `node` is among the `n` owners of the key whose [`key_hash`] is `key_hash`, without
/// allocating: `node` must itself be one of `members` (which must be free of duplicates). Agrees
/// with [`owners_of_hash`].
pub fn is_owner<'a>(
    key_hash: u64,
    node: &NodeId,
    members: impl IntoIterator<Item = &'a NodeId>,
    n: usize,
) -> bool {
    let mine = (score(key_hash, node), node);
    let mut ahead = 0;
    for m in members {
        if ranks_before((score(key_hash, m), m), mine) {
            ahead += 1;
            if ahead >= n {
                return false;
            }
        }
    }
    n > 0
}

/// The leader for `name` among `members`: the top rendezvous owner in the `leadership`
/// namespace.
pub fn leader<'a>(name: &str, members: impl IntoIterator<Item = &'a NodeId>) -> Option<&'a NodeId> {
    owners(b"mycorrizal/leadership", name.as_bytes(), members, 1).into_iter().next()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::new(format!("node-{i}")).unwrap()).collect()
    }

    /// Golden vectors: these owners must never change (they decide where data lives).
    #[test]
    fn golden_vectors() {
        let members = ids(5);
        let got: Vec<(String, Vec<String>)> = ["user:1", "user:2", "cart:42", ""]
            .iter()
            .map(|k| {
                let o = owners(b"sessions", k.as_bytes(), &members, 3);
                (k.to_string(), o.iter().map(|m| m.to_string()).collect())
            })
            .collect();
        let pinned = GOLDEN
            .iter()
            .map(|(k, o)| (k.to_string(), o.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
            .collect::<Vec<_>>();
        assert_eq!(got, pinned, "placement changed: this would move data on upgrade");
        assert_eq!(key_hash(b"sessions", b"user:1"), GOLDEN_KEY_HASH);
    }

    const GOLDEN_KEY_HASH: u64 = 4_537_099_769_284_605_975;
    const GOLDEN: [(&str, [&str; 3]); 4] = [
        ("user:1", ["node-4", "node-3", "node-2"]),
        ("user:2", ["node-1", "node-4", "node-0"]),
        ("cart:42", ["node-2", "node-0", "node-1"]),
        ("", ["node-0", "node-1", "node-2"]),
    ];

    #[test]
    fn scores_every_member_not_just_the_first() {
        // With 50 members and 3 owners, owners must come from the whole list.
        let members = ids(50);
        let mut seen = std::collections::HashSet::new();
        for k in 0..2_000u32 {
            for o in owners(b"b", &k.to_be_bytes(), &members, 3) {
                seen.insert(o.clone());
            }
        }
        assert_eq!(seen.len(), 50, "every member owns something");
    }

    proptest! {
        /// The allocation-free membership test agrees with the owner list.
        #[test]
        fn is_owner_agrees_with_owners(n in 1usize..12, rf in 1usize..5, key in any::<u64>()) {
            let members = ids(n);
            let kh = key_hash(b"b", &key.to_be_bytes());
            let top = owners_of_hash(kh, &members, rf);
            for m in &members {
                prop_assert_eq!(is_owner(kh, m, &members, rf), top.contains(&m));
            }
        }
    }

    #[test]
    fn long_keys_hash_like_short_ones() {
        let long = vec![7u8; 1000];
        let mut buf = vec![0, 0, 0, 1, b'b'];
        buf.extend_from_slice(&long);
        assert_eq!(key_hash(b"b", &long), xxh3_64(&buf));
    }

    #[test]
    fn namespace_and_key_boundaries_are_unambiguous() {
        assert_ne!(key_hash(b"ab", b"c"), key_hash(b"a", b"bc"));
    }

    proptest! {
        /// Removing a member moves only the keys it owned; adding one moves only keys it now
        /// owns (minimal movement).
        #[test]
        fn minimal_movement(n in 2usize..12, keys in prop::collection::vec(any::<u32>(), 1..200)) {
            let members = ids(n + 1);
            let (fewer, newcomer) = members.split_at(n);
            for k in keys {
                let before = owners(b"b", &k.to_be_bytes(), fewer, 1)[0].clone();
                let after = owners(b"b", &k.to_be_bytes(), &members, 1)[0].clone();
                prop_assert!(after == before || after == newcomer[0]);
            }
        }
    }

    /// Slots spread evenly: for 4 to 64 members at 1 and 3 owners, each member owns its share
    /// of the slots within 4 standard deviations of the binomial spread (±1 % of the slots for
    /// 4 members at 3 owners, ±7 % for 64 at 3 owners, at one deviation).
    #[test]
    fn slots_spread_evenly() {
        for (n, rf) in [(4usize, 3usize), (4, 1), (10, 1), (10, 3), (64, 3)] {
            let members = ids(n);
            let mut load: HashMap<&NodeId, u32> = HashMap::new();
            for slot in 0..SLOTS as u32 {
                for o in owners_of_hash(slot_hash(slot), &members, rf) {
                    *load.entry(o).or_default() += 1;
                }
            }
            let p = rf as f64 / n as f64;
            let mean = SLOTS as f64 * p;
            let sigma = (SLOTS as f64 * p * (1.0 - p)).sqrt();
            assert_eq!(load.len(), n, "every member owns slots ({n} members, {rf} owners)");
            for (m, l) in load {
                assert!(
                    (f64::from(l) - mean).abs() <= 4.0 * sigma,
                    "{m} owns {l} slots of {SLOTS}, expected {mean:.0} ± {:.0}",
                    4.0 * sigma
                );
            }
        }
    }

    /// Keys spread over slots evenly, and every key of a slot has the slot's owners.
    #[test]
    fn keys_follow_their_slot() {
        let members = ids(5);
        let mut per_slot = vec![0u32; SLOTS];
        for k in 0..200_000u32 {
            let kh = key_hash(b"b", &k.to_be_bytes());
            per_slot[slot_of(kh) as usize] += 1;
            assert_eq!(
                owners_of_hash(kh, &members, 3),
                owners_of_hash(slot_hash(slot_of(kh)), &members, 3)
            );
        }
        // 48.8 keys a slot on average; a Poisson spread of that stays within 20..85.
        let (min, max) = (per_slot.iter().min(), per_slot.iter().max());
        assert!(per_slot.iter().all(|&c| (20..85).contains(&c)), "{min:?}..{max:?} keys a slot");
    }
}
