//! Wall-clock time and the node's hybrid logical clock.
//!
//! The library never calls `SystemTime::now()` outside [`SystemClock`]: everything that needs
//! the time asks a [`Clock`], so tests and simulations substitute a [`ManualClock`] and control
//! expiry, clock jumps and drift exactly.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use mycorrizal_core::{ClockError, HlcTime, NodeTag, Timestamp};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock, at the resolution of one kernel tick (1 to 4 ms).
///
/// On Linux this reads `CLOCK_REALTIME_COARSE`. The precise clock (`SystemTime::now`) costs
/// about 35 ns in a tight loop but executes a fenced `rdtsc` under KVM, which stalls every
/// outstanding memory load: measured on a cache read that misses the CPU cache, it added about
/// 400 ns per `get` of an entry with a TTL. The coarse clock reads a value the kernel updates
/// once per tick, costs a few nanoseconds and does not fence. Millisecond TTLs may therefore
/// take effect up to one tick late; nothing in the cache needs finer time. Elsewhere it falls
/// back to `SystemTime::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        coarse_now_ms().unwrap_or_else(|| {
            // A clock before 1970 is a misconfigured host; read it as the epoch, don't panic.
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
        })
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[inline]
fn coarse_now_ms() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000 + ts.tv_nsec as u64 / 1_000_000)
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn coarse_now_ms() -> Option<u64> {
    None
}

/// A clock that only moves when told to: for tests and simulations.
///
/// Cloning shares the same time, so a test can keep one handle and give another to a store.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ =
            self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(by)));
    }

    /// Sets the clock to `now_ms`, which may be in the past (a clock stepped back by NTP).
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Another clock moved by a fixed offset: a node whose wall clock is ahead (positive) or
/// behind (negative), for fault injection (`pulse agent --clock-offset-ms`, the chaos harness,
/// simulations). Saturates at the epoch and at `u64::MAX`.
#[derive(Debug, Clone)]
pub struct SkewedClock {
    inner: Arc<dyn Clock>,
    offset_ms: i64,
}

impl SkewedClock {
    /// `inner` moved by `offset_ms`.
    pub fn new(inner: Arc<dyn Clock>, offset_ms: i64) -> Self {
        SkewedClock { inner, offset_ms }
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms().saturating_add_signed(self.offset_ms)
    }
}

/// Wall time that follows tokio's clock: `start_ms` plus the time elapsed on tokio's clock since
/// creation. Under `tokio::time::pause()` it advances only with virtual time, so simulations
/// of many nodes in one process are deterministic.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_ms: u64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_ms` now.
    pub fn new(start_ms: u64) -> Self {
        TokioClock { start_ms, origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// A node's hybrid logical clock, shared by every thread of the node.
///
/// The rules live in [`HlcTime::next`] and [`HlcTime::receive`]; this type only makes them
/// atomic: the last time is one `AtomicU64` advanced by compare-and-swap, so stamping a write
/// takes no lock.
#[derive(Debug)]
pub struct NodeClock {
    node: NodeTag,
    last: AtomicU64,
    max_drift_ms: u64,
    wall: Arc<dyn Clock>,
}

impl NodeClock {
    /// A clock stamping for `node` from `wall`, refusing remote times more than `max_drift`
    /// ahead of it.
    pub fn new(node: NodeTag, wall: Arc<dyn Clock>, max_drift: Duration) -> Self {
        NodeClock {
            node,
            last: AtomicU64::new(HlcTime::ZERO.to_raw()),
            max_drift_ms: u64::try_from(max_drift.as_millis()).unwrap_or(u64::MAX),
            wall,
        }
    }

    /// The wall clock this HLC reads.
    pub fn wall(&self) -> &Arc<dyn Clock> {
        &self.wall
    }

    /// Wall-clock milliseconds now.
    pub fn now_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// A fresh timestamp for a local write, greater than every one handed out before.
    pub fn tick(&self) -> Timestamp {
        let now = self.wall.now_ms();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = HlcTime::from_raw(last).next(now);
            match self.last.compare_exchange_weak(
                last,
                next.to_raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Timestamp { time: next, node: self.node },
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes in a remote time so later local stamps order after it; refuses one too far ahead.
    pub fn observe(&self, remote: HlcTime) -> Result<HlcTime, ClockError> {
        let now = self.wall.now_ms();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = HlcTime::from_raw(last).receive(remote, now, self.max_drift_ms)?;
            match self.last.compare_exchange_weak(
                last,
                next.to_raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// The maximum accepted drift in milliseconds.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_agrees_with_the_precise_clock() {
        let precise = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let coarse = SystemClock.now_ms();
        // One kernel tick is at most 10 ms (HZ=100); allow generous slack for scheduling.
        assert!(coarse.abs_diff(precise) < 1_000, "coarse {coarse} vs precise {precise}");
    }

    #[test]
    fn node_clock_is_monotonic_across_threads_and_backward_steps() {
        let wall = ManualClock::new(1_000_000);
        let clock =
            Arc::new(NodeClock::new(NodeTag(1), Arc::new(wall.clone()), Duration::from_secs(1)));
        let mut stamps: Vec<Vec<Timestamp>> = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let clock = clock.clone();
                    s.spawn(move || (0..5_000).map(|_| clock.tick()).collect::<Vec<_>>())
                })
                .collect();
            wall.set(999_000); // step back while they run
            stamps = handles.into_iter().map(|h| h.join().unwrap()).collect();
        });
        for per_thread in &stamps {
            assert!(per_thread.windows(2).all(|w| w[0] < w[1]));
        }
        let mut all: Vec<_> = stamps.concat();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every stamp is unique");
    }

    #[test]
    fn node_clock_refuses_far_future_remote() {
        let wall = ManualClock::new(10_000);
        let clock = NodeClock::new(NodeTag(1), Arc::new(wall), Duration::from_millis(500));
        assert!(clock.observe(HlcTime::new(10_400, 0)).is_ok());
        assert!(matches!(
            clock.observe(HlcTime::new(10_501, 0)),
            Err(ClockError::RemoteAhead { .. })
        ));
        assert!(clock.tick().time > HlcTime::new(10_400, 0));
    }
}
