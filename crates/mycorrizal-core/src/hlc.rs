//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! Every write is stamped with a [`Timestamp`]: a [`HlcTime`] (wall-clock milliseconds plus a
//! logical counter, packed in one `u64`) and the [`NodeTag`] of the writer. Timestamps are
//! totally ordered, stay close to physical time, and never go backwards on one node even when
//! its wall clock does.
//!
//! The clock is passed in (`now_ms`), never read here: the driver owns time.
//!
//! A remote time further ahead of our wall clock than the configured drift is refused with
//! [`ClockError::RemoteAhead`] instead of being adopted: adopting it would drag this node's
//! clock (and every later write) into the future, where it would silently win every
//! last-writer-wins race until real time caught up.

use std::fmt;

use crate::node::NodeTag;

/// Bits of [`HlcTime`] that hold the logical counter.
const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid time: 48 bits of milliseconds since the Unix epoch, then 16 bits of logical counter.
///
/// Packing both in one `u64` makes the time comparable as an integer and lets a driver advance
/// it with a single compare-and-swap. 48 bits of milliseconds last until the year 10889; 16 bits
/// of counter allow 65,536 events per millisecond, after which [`HlcTime::next`] borrows the
/// next millisecond rather than wrap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HlcTime(u64);

impl HlcTime {
    /// The largest representable wall-clock value in milliseconds.
    pub const MAX_WALL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;
    /// Time zero: before every real timestamp.
    pub const ZERO: HlcTime = HlcTime(0);

    /// Builds a time from its parts; `wall_ms` saturates at [`HlcTime::MAX_WALL_MS`].
    pub const fn new(wall_ms: u64, logical: u16) -> Self {
        let wall = if wall_ms > Self::MAX_WALL_MS { Self::MAX_WALL_MS } else { wall_ms };
        HlcTime((wall << LOGICAL_BITS) | logical as u64)
    }

    /// Rebuilds a time from [`HlcTime::to_raw`].
    pub const fn from_raw(raw: u64) -> Self {
        HlcTime(raw)
    }

    /// The packed representation, for atomics and the wire.
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub const fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within [`HlcTime::wall_ms`].
    pub const fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }

    /// The time of the next local event, given the last time handed out and the wall clock.
    ///
    /// Always strictly greater than `self` (until the end of representable time), whatever
    /// `now_ms` says: a wall clock that steps backwards only slows the wall component down.
    #[must_use]
    pub const fn next(self, now_ms: u64) -> HlcTime {
        let now = HlcTime::new(now_ms, 0);
        if now.0 > self.0 {
            now
        } else {
            // Same or earlier millisecond: count on. Adding one carries from the counter into
            // the millisecond when the counter is full, which is exactly "borrow the next ms".
            HlcTime(self.0.saturating_add(1))
        }
    }

    /// The time of receiving a message stamped `remote`, given the last local time and the
    /// wall clock; refuses a `remote` more than `max_drift_ms` ahead of `now_ms`.
    pub const fn receive(
        self,
        remote: HlcTime,
        now_ms: u64,
        max_drift_ms: u64,
    ) -> Result<HlcTime, ClockError> {
        if remote.wall_ms() > now_ms.saturating_add(max_drift_ms) {
            return Err(ClockError::RemoteAhead {
                remote_wall_ms: remote.wall_ms(),
                local_wall_ms: now_ms,
                max_drift_ms,
            });
        }
        let latest = if remote.0 > self.0 { remote } else { self };
        Ok(latest.next(now_ms))
    }
}

impl fmt::Debug for HlcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// The version of a write: when (hybrid time) and by whom (node tag). Ordered by time, then
/// by node, so two writes on different nodes in the same instant still have a winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Hybrid time of the write.
    pub time: HlcTime,
    /// The writer.
    pub node: NodeTag,
}

impl std::fmt::Display for Timestamp {
    /// `wall_ms.logical@node` with the node tag in hex, e.g. `1800000000000.3@00000000000000ab`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{:016x}", self.time.wall_ms(), self.time.logical(), self.node.0)
    }
}

/// Why a remote time was not adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote time is further ahead of our wall clock than the allowed drift. Our clock did
    /// not change; the message that carried it should be refused.
    #[error(
        "remote clock at {remote_wall_ms} ms is more than {max_drift_ms} ms ahead of ours \
         ({local_wall_ms} ms)"
    )]
    RemoteAhead {
        /// Wall milliseconds in the remote time.
        remote_wall_ms: u64,
        /// Our wall clock when we received it.
        local_wall_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
}

/// A node's hybrid logical clock: the last time it handed out, and how far ahead a remote
/// clock may be before it is refused.
#[derive(Debug, Clone)]
pub struct Hlc {
    node: NodeTag,
    last: HlcTime,
    max_drift_ms: u64,
}

impl Hlc {
    /// A clock for `node` that refuses remote times more than `max_drift_ms` ahead.
    pub fn new(node: NodeTag, max_drift_ms: u64) -> Self {
        Hlc { node, last: HlcTime::ZERO, max_drift_ms }
    }

    /// Stamps a local event (a write) happening at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        self.last = self.last.next(now_ms);
        Timestamp { time: self.last, node: self.node }
    }

    /// Takes in the time of a received message; afterwards every local stamp is greater than
    /// `remote`. On error the clock is unchanged.
    pub fn observe(&mut self, remote: HlcTime, now_ms: u64) -> Result<HlcTime, ClockError> {
        self.last = self.last.receive(remote, now_ms, self.max_drift_ms)?;
        Ok(self.last)
    }

    /// The last time handed out.
    pub fn last(&self) -> HlcTime {
        self.last
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> NodeTag {
        self.node
    }

    /// The configured maximum drift in milliseconds.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NODE: NodeTag = NodeTag(7);

    #[test]
    fn packs_and_unpacks() {
        let t = HlcTime::new(1_700_000_000_123, 42);
        assert_eq!((t.wall_ms(), t.logical()), (1_700_000_000_123, 42));
        assert_eq!(HlcTime::from_raw(t.to_raw()), t);
        assert_eq!(HlcTime::new(u64::MAX, 0).wall_ms(), HlcTime::MAX_WALL_MS);
    }

    #[test]
    fn follows_the_wall_clock_when_it_moves_forward() {
        let mut hlc = Hlc::new(NODE, 1_000);
        assert_eq!(hlc.tick(100).time, HlcTime::new(100, 0));
        assert_eq!(hlc.tick(100).time, HlcTime::new(100, 1));
        assert_eq!(hlc.tick(105).time, HlcTime::new(105, 0));
    }

    #[test]
    fn stays_monotonic_when_the_wall_clock_goes_backwards() {
        let mut hlc = Hlc::new(NODE, 1_000);
        let a = hlc.tick(10_000);
        let b = hlc.tick(9_000); // NTP stepped the clock back a second
        let c = hlc.tick(9_500);
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
        assert_eq!(c.time.wall_ms(), 10_000, "wall component holds until real time catches up");
        assert_eq!(hlc.tick(10_001).time, HlcTime::new(10_001, 0));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let full = HlcTime::new(500, u16::MAX);
        assert_eq!(full.next(500), HlcTime::new(501, 0));
    }

    #[test]
    fn adopts_a_remote_time_within_drift() {
        let mut hlc = Hlc::new(NODE, 1_000);
        hlc.tick(10_000);
        let seen = hlc.observe(HlcTime::new(10_500, 3), 10_000).unwrap();
        assert_eq!(seen, HlcTime::new(10_500, 4));
        assert!(hlc.tick(10_000).time > HlcTime::new(10_500, 3));
    }

    #[test]
    fn refuses_a_remote_time_beyond_drift_and_stays_unchanged() {
        let mut hlc = Hlc::new(NODE, 1_000);
        hlc.tick(10_000);
        let before = hlc.last();
        let err = hlc.observe(HlcTime::new(11_001, 0), 10_000).unwrap_err();
        assert_eq!(
            err,
            ClockError::RemoteAhead {
                remote_wall_ms: 11_001,
                local_wall_ms: 10_000,
                max_drift_ms: 1_000
            }
        );
        assert_eq!(hlc.last(), before);
        // exactly at the bound is accepted
        assert!(hlc.observe(HlcTime::new(11_000, 0), 10_000).is_ok());
    }

    #[test]
    fn ties_are_broken_by_node() {
        let a = Timestamp { time: HlcTime::new(1, 0), node: NodeTag(1) };
        let b = Timestamp { time: HlcTime::new(1, 0), node: NodeTag(2) };
        assert!(a < b);
    }

    proptest! {
        /// Whatever the wall clock does (jumps back, stalls, leaps) and whatever remote times
        /// arrive, every stamp is strictly greater than the one before it.
        #[test]
        fn strictly_monotonic_under_any_clock(
            steps in proptest::collection::vec((0u64..1_000_000, any::<bool>(), 0u64..1_000_000, any::<u16>()), 1..200)
        ) {
            let mut hlc = Hlc::new(NODE, 5_000);
            let mut prev = HlcTime::ZERO;
            for (now, remote, remote_wall, remote_logical) in steps {
                let t = if remote {
                    match hlc.observe(HlcTime::new(remote_wall, remote_logical), now) {
                        Ok(t) => t,
                        Err(_) => { prop_assert!(remote_wall > now + 5_000); continue; }
                    }
                } else {
                    hlc.tick(now).time
                };
                prop_assert!(t > prev, "{t:?} <= {prev:?}");
                prop_assert!(t.wall_ms() >= now.min(HlcTime::MAX_WALL_MS));
                prev = t;
            }
        }
    }
}
