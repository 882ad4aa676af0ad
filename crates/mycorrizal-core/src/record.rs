//! Versioned values, tombstones, and the last-writer-wins merge rule.
//!
//! A [`Record`] is what a replica stores for one key: a live value or a tombstone, the
//! [`Timestamp`] of the write that produced it, and an absolute expiry. Replicas converge by
//! keeping, for every key, the record that wins [`Record::lww_cmp`]: a total order, so merging
//! is commutative, associative and idempotent whatever order updates arrive in.
//!
//! Expiry is absolute wall-clock milliseconds and travels with the record, so every replica
//! expires a value at the same moment. For a tombstone the expiry is the moment it may be
//! purged (its garbage-collection deadline): after it, the delete is forgotten.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::hlc::Timestamp;

/// A live value or the marker that the key was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// The key holds this value.
    Live(Bytes),
    /// The key was deleted; the tombstone keeps older writes from coming back.
    Deleted,
}

/// One key's state on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Version of the write that produced this record.
    pub version: Timestamp,
    /// Wall-clock milliseconds since the Unix epoch at which the record stops existing: a value
    /// expires, a tombstone may be purged. `None`: never.
    pub expires_at_ms: Option<u64>,
    /// The value, or the deletion.
    pub state: RecordState,
}

impl Record {
    /// A live value written at `version`, expiring at `expires_at_ms`.
    pub fn live(version: Timestamp, value: Bytes, expires_at_ms: Option<u64>) -> Self {
        Record { version, expires_at_ms, state: RecordState::Live(value) }
    }

    /// A tombstone written at `version`, to be purged at `purge_at_ms`.
    pub fn tombstone(version: Timestamp, purge_at_ms: u64) -> Self {
        Record { version, expires_at_ms: Some(purge_at_ms), state: RecordState::Deleted }
    }

    /// The value, if live (expired or not: see [`Record::is_expired`]).
    pub fn value(&self) -> Option<&Bytes> {
        match &self.state {
            RecordState::Live(v) => Some(v),
            RecordState::Deleted => None,
        }
    }

    /// Whether this record is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.state, RecordState::Deleted)
    }

    /// Whether the record has reached its expiry at wall time `now_ms`. Expiry is inclusive:
    /// a value written with a TTL of 10 ms at t is gone at t + 10.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The last-writer-wins total order: the greater record wins a merge.
    ///
    /// Newer version first. Equal versions only occur when two nodes' tags collide or a write is
    /// replayed, so the rest only has to be *some* total order that every node agrees on: a
    /// tombstone beats a value (a delete is never undone by a tie), then the larger value bytes,
    /// then the later expiry.
    pub fn lww_cmp(&self, other: &Record) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| match (&self.state, &other.state) {
                (RecordState::Deleted, RecordState::Deleted) => Ordering::Equal,
                (RecordState::Deleted, RecordState::Live(_)) => Ordering::Greater,
                (RecordState::Live(_), RecordState::Deleted) => Ordering::Less,
                (RecordState::Live(a), RecordState::Live(b)) => a.cmp(b),
            })
            .then_with(|| self.expires_at_ms.cmp(&other.expires_at_ms))
    }

    /// Whether `self` should replace `current` on a replica: strictly wins [`Record::lww_cmp`].
    pub fn supersedes(&self, current: &Record) -> bool {
        self.lww_cmp(current) == Ordering::Greater
    }

    /// Merges two records for the same key: the winner of [`Record::lww_cmp`].
    #[must_use]
    pub fn merge(self, other: Record) -> Record {
        if other.supersedes(&self) { other } else { self }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{hlc::HlcTime, node::NodeTag};

    fn ts(wall: u64, logical: u16, node: u64) -> Timestamp {
        Timestamp { time: HlcTime::new(wall, logical), node: NodeTag(node) }
    }

    #[test]
    fn newer_version_wins_whatever_the_state() {
        let old = Record::live(ts(10, 0, 1), Bytes::from_static(b"a"), None);
        let del = Record::tombstone(ts(11, 0, 1), 1_000);
        let newer = Record::live(ts(11, 1, 1), Bytes::from_static(b"b"), None);
        assert_eq!(old.clone().merge(del.clone()), del);
        assert_eq!(del.clone().merge(old.clone()), del);
        assert_eq!(del.clone().merge(newer.clone()), newer);
    }

    #[test]
    fn tie_prefers_tombstone_then_bytes() {
        let v = Record::live(ts(10, 0, 1), Bytes::from_static(b"a"), None);
        let w = Record::live(ts(10, 0, 1), Bytes::from_static(b"b"), None);
        let d = Record::tombstone(ts(10, 0, 1), 99);
        assert_eq!(v.clone().merge(w.clone()), w);
        assert_eq!(w.clone().merge(d.clone()), d);
    }

    #[test]
    fn expiry_is_inclusive() {
        let r = Record::live(ts(0, 0, 0), Bytes::new(), Some(100));
        assert!(!r.is_expired(99));
        assert!(r.is_expired(100));
        assert!(!Record::live(ts(0, 0, 0), Bytes::new(), None).is_expired(u64::MAX));
    }

    /// Records drawn from a deliberately small space so that equal versions, equal values and
    /// value/tombstone ties are all common.
    fn record() -> impl Strategy<Value = Record> {
        (0u64..4, 0u16..2, 0u64..2, prop::option::of(0u8..3), prop::option::of(0u64..3)).prop_map(
            |(wall, logical, node, value, expires)| Record {
                version: ts(wall, logical, node),
                expires_at_ms: expires,
                state: match value {
                    Some(v) => RecordState::Live(Bytes::from(vec![v])),
                    None => RecordState::Deleted,
                },
            },
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in record(), b in record()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
        }

        #[test]
        fn merge_is_associative(a in record(), b in record(), c in record()) {
            prop_assert_eq!(
                a.clone().merge(b.clone()).merge(c.clone()),
                a.merge(b.merge(c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in record(), b in record()) {
            prop_assert_eq!(a.clone().merge(a.clone()), a.clone());
            let ab = a.clone().merge(b.clone());
            prop_assert_eq!(ab.clone().merge(b), ab);
        }

        /// Replicas that receive the same set of updates in any order end in the same state.
        #[test]
        fn any_delivery_order_converges(
            updates in proptest::collection::vec(record(), 1..12),
            seed in any::<u64>(),
        ) {
            let in_order = updates.iter().cloned().reduce(Record::merge).unwrap();
            let mut shuffled = updates.clone();
            // Fisher-Yates with a seeded xorshift: deterministic, no global RNG.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let reordered = shuffled.into_iter().reduce(Record::merge).unwrap();
            prop_assert_eq!(in_order, reordered);
        }
    }
}
