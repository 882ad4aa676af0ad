//! Walks over every entry of a bucket (digests, version exchanges, hand-offs), paced so the
//! foreground keeps its latency.
//!
//! A walk over a million entries is a few hundred milliseconds of CPU. Run straight through,
//! it holds a worker thread for all of that, and on a small host the foreground's tail latency
//! pays: a 4th node joining three that held a million entries took the foreground's quorum-set
//! p99 from 0.35 ms to 3.9 ms (11x) before walks were paced (docs/BENCHMARKS.md). A [`Pace`]
//! cuts a walk into chunks of at most [`CHUNK`] entries and [`SLICE`] of work, and after each
//! one hands the worker back: it rests [`REST_PER_BUSY`] times as long as the chunk took, and
//! a chunk is short enough that a request queued behind it barely waits. The rests are
//! taken on one timeline per node ([`Walks`]), so all of a node's walks together, not each of
//! them, use at most a third of a core. Walks take longer; the byte throttle (`sync_rate`)
//! already made rebalancing a background activity measured in seconds.
//!
//! Under tokio's paused clock (the simulations) no time passes while a chunk works, so a walk
//! only yields between chunks and the simulations stay deterministic.

use std::time::Duration;

use tokio::time::Instant;

/// Entries walked between two rests.
pub(crate) const CHUNK: usize = 1024;
/// Records applied between two rests, where a batch of synced records is stored: an apply
/// (a lookup, a version comparison, an insert) costs as much as several entries walked, and a
/// batch of a megabyte (7,000 records of 100 bytes) applied in one go held a worker thread
/// for about 10 ms.
pub(crate) const APPLY_CHUNK: usize = 128;
/// Longest a chunk works before it rests, whatever its count. On a busy host 1,024 entries of
/// a walk that sends what it finds took 2-6 ms, and a join's walks held one of two worker
/// threads that long, hundreds of times a second (docs/BENCHMARKS.md).
pub(crate) const SLICE: Duration = Duration::from_micros(250);
/// Steps between two looks at the clock.
const CLOCK_EVERY: usize = 32;
/// Rest after each chunk, as a multiple of the time the chunk took.
const REST_PER_BUSY: u32 = 2;
/// Longest rest owed for one chunk.
const MAX_REST: Duration = Duration::from_millis(4);
/// Rests shorter than this are saved up (a tokio timer's resolution is a millisecond) and the
/// walk only yields until they add up.
const MIN_REST: Duration = Duration::from_millis(1);

/// Longest a chunk is assumed to take, resting included, on a saturated host: the basis of
/// [`walk_timeout`].
const SLOWEST_CHUNK: Duration = Duration::from_millis(6);

/// How long to wait for a peer's answer to a request it walks a bucket of about `entries`
/// entries to give (digests, version exchanges): `base` plus the paced walk at its slowest, so
/// a large bucket's exchange is never cut off by a timeout sized for a single read.
pub(crate) fn walk_timeout(base: Duration, entries: u64) -> Duration {
    base + SLOWEST_CHUNK * u32::try_from(entries.div_ceil(CHUNK as u64)).unwrap_or(u32::MAX)
}

/// The budget all of one node's walks share: they work at most a third of the time together,
/// not each. During a join a node walks for its own round, answers its peers' digests and
/// exchanges, and hands off, all at once; paced one by one, those walks took most of a small
/// host's CPU between them.
#[derive(Debug)]
pub(crate) struct Walks {
    /// The moment the work done so far has been rested for.
    rested_until: std::sync::Mutex<Instant>,
}

impl Walks {
    pub fn new() -> Walks {
        Walks { rested_until: std::sync::Mutex::new(Instant::now()) }
    }

    /// Charges a chunk that worked from `since` until now; returns when its walk may go on.
    fn charge(&self, since: Instant) -> Instant {
        let busy = since.elapsed();
        // A chunk's wall time includes time other tasks held the CPU; on a saturated host the
        // rest is capped so a walk still finishes.
        let rest = (busy * REST_PER_BUSY).min(MAX_REST);
        let mut until = crate::sync::lock(&self.rested_until);
        *until = (*until).max(since) + busy + rest;
        *until
    }
}

/// Paces one walk; see the module documentation.
pub(crate) struct Pace<'a> {
    walks: &'a Walks,
    /// Steps since the last rest.
    seen: usize,
    /// Most steps between two rests.
    chunk: usize,
    since: Instant,
}

impl<'a> Pace<'a> {
    /// A walk paced within `walks`, its node's budget.
    pub fn new(walks: &'a Walks) -> Pace<'a> {
        Pace::every(walks, CHUNK)
    }

    /// Work paced within `walks` that rests after every `chunk` steps.
    pub fn every(walks: &'a Walks, chunk: usize) -> Pace<'a> {
        Pace { walks, seen: 0, chunk: chunk.max(1), since: Instant::now() }
    }

    /// Counts one entry; after a chunk of entries ([`CHUNK`] unless set) or [`SLICE`] of
    /// work, whichever comes first, rests or yields.
    #[inline]
    pub async fn step(&mut self) {
        self.seen += 1;
        if self.seen >= self.chunk
            || (self.seen.is_multiple_of(CLOCK_EVERY) && self.since.elapsed() >= SLICE)
        {
            self.rest().await;
        }
    }

    async fn rest(&mut self) {
        self.seen = 0;
        let until = self.walks.charge(self.since);
        // Short rests are saved up: the budget remembers them, and the next chunk's charge
        // starts from where they end.
        if until.saturating_duration_since(Instant::now()) >= MIN_REST {
            tokio::time::sleep_until(until).await;
        } else {
            tokio::task::yield_now().await;
        }
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps `pace` through one chunk whose work takes `took` of the (paused) clock.
    async fn chunk(pace: &mut Pace<'_>, took: Duration) {
        for _ in 0..CHUNK - 1 {
            pace.step().await;
        }
        tokio::time::advance(took).await;
        pace.step().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_walk_rests_twice_as_long_as_it_worked() {
        let walks = Walks::new();
        let mut pace = Pace::new(&walks);
        let start = Instant::now();
        chunk(&mut pace, Duration::from_millis(1)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1 + 2));
    }

    /// A walk whose entries are slow rests after a slice of work, long before its chunk of
    /// entries is done.
    #[tokio::test(start_paused = true)]
    async fn a_slow_walk_rests_after_a_slice_of_work() {
        let walks = Walks::new();
        let mut pace = Pace::new(&walks);
        let start = Instant::now();
        // Each entry takes 10 µs. The clock is read every 32 entries: the 31 before are a
        // slice's worth of work, but not yet seen.
        for _ in 0..CLOCK_EVERY - 1 {
            tokio::time::advance(Duration::from_micros(10)).await;
            pace.step().await;
        }
        assert_eq!(pace.seen, CLOCK_EVERY - 1);
        tokio::time::advance(Duration::from_micros(10)).await;
        pace.step().await;
        assert_eq!(pace.seen, 0, "it rested");
        // 320 µs of work owes twice that in rest, on the node's budget.
        let worked = Duration::from_micros(10) * CLOCK_EVERY as u32;
        assert_eq!(*walks.rested_until.lock().unwrap(), start + worked * (1 + REST_PER_BUSY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_slowed_by_a_saturated_host_owes_at_most_the_longest_rest() {
        let walks = Walks::new();
        let mut pace = Pace::new(&walks);
        let start = Instant::now();
        chunk(&mut pace, Duration::from_millis(50)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50) + MAX_REST);
    }

    /// Two walks working at once (on two cores, say) rest for each other: 2 ms of work, then
    /// the second may go on only once both chunks' rests are over.
    #[tokio::test(start_paused = true)]
    async fn walks_on_one_node_share_its_budget() {
        let (walks, elsewhere) = (Walks::new(), Walks::new());
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(walks.charge(start), start + Duration::from_millis(3));
        assert_eq!(walks.charge(start), start + Duration::from_millis(6));
        // A walk on another node's budget owes only its own rest.
        assert_eq!(elsewhere.charge(start), start + Duration::from_millis(3));
    }

    #[test]
    fn a_walk_timeout_grows_with_the_bucket() {
        let base = Duration::from_secs(8);
        assert_eq!(walk_timeout(base, 0), base);
        assert_eq!(walk_timeout(base, 1), base + SLOWEST_CHUNK);
        // A million entries: 977 chunks.
        assert_eq!(walk_timeout(base, 1_000_000), base + SLOWEST_CHUNK * 977);
        assert!(walk_timeout(base, u64::MAX) > Duration::from_secs(86_400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_walk_that_takes_no_time_only_yields() {
        let walks = Walks::new();
        let mut pace = Pace::new(&walks);
        let start = Instant::now();
        for _ in 0..10 * CHUNK {
            pace.step().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn short_rests_add_up_before_the_walk_sleeps() {
        let walks = Walks::new();
        let mut pace = Pace::new(&walks);
        let start = Instant::now();
        // Two chunks of 300 µs: 600 µs owed after the first (only a yield), 1.2 ms after the
        // second (a sleep).
        for _ in 0..2 {
            chunk(&mut pace, Duration::from_micros(300)).await;
        }
        // (A timer fires on a millisecond tick, so the sleep may end up to 1 ms late.)
        let took = start.elapsed();
        assert!(
            took >= Duration::from_micros(1_800) && took <= Duration::from_micros(2_800),
            "{took:?}"
        );
    }
}
