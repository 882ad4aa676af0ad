//! One bucket of the local store: a bounded map from keys to versioned [`Record`]s.
//!
//! The engine ([`super::engine`]) stores each entry packed in one allocation and evicts by
//! S3-FIFO (scan resistant, synchronous, no background threads). On top of it this module adds
//! absolute expiry checked on every read and reclaimed by the [`ExpiryIndex`](super::expiry)
//! sweep, versioned writes merged by last-writer-wins, tombstones, admission control for
//! oversized entries, counters, and the bucket's replication summaries
//! ([`LiveDigests`]), kept current as records come and go.
//!
//! # Concurrency
//!
//! Reads take only the engine's shard read lock. Writes to one key are serialised by one of
//! [`WRITE_LOCKS`] striped mutexes: the version comparison (last-writer-wins) and the insert
//! must be one atomic step, or two racing writers could leave the older version in place. No
//! lock is held across an `.await`; nothing here is async.
//!
//! # Eviction policy
//!
//! Not strict LRU: S3-FIFO admits new entries to a small probation queue and keeps those read
//! again, which keeps one-off scans from flushing the working set. Its hit ratio on skewed
//! (Zipf) workloads is at least LRU's; `docs/BENCHMARKS.md` has figures. A value just written
//! is always readable until something else is written to the bucket: the engine evicts
//! *before* admitting a new entry.

use std::{
    cmp::Ordering,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{Record, RecordState, Timestamp, digest::LiveDigests, placement::key_hash};

use super::{
    config::{BucketConfig, Capacity, ConfigError, MAX_KEY_LEN, check_ttl},
    engine::{ENTRY_OVERHEAD, Engine, Header, Packed, Weigher},
    error::StoreError,
    expiry::ExpiryIndex,
    key::Key,
    stats::{BucketStats, Counters, Event},
    value::Value,
};
use crate::clock::NodeClock;

/// Number of striped write locks per bucket.
const WRITE_LOCKS: usize = 256;
/// Fewest entries we want per shard before adding shards; fewer shards means a more exact
/// eviction order in small buckets.
const MIN_ENTRIES_PER_SHARD: u64 = 256;
/// Most entries we want per shard. A shard's table grows by doubling, and the doubling holds
/// the shard's write lock while it hashes every key again, each a cache miss: a node filling a
/// million-entry bucket in 8 shards (4 per core on two cores) held a shard for 12-50 ms at its
/// last doublings, and every read and write of that shard's keys waited, foreground ones too
/// (docs/BENCHMARKS.md). At 16,384 entries a shard, the longest doubling is about a
/// millisecond.
const MAX_ENTRIES_PER_SHARD: u64 = 16_384;
/// Most shards a bucket has.
const MAX_SHARDS: u64 = 256;
/// Rough entry weight assumed to plan the shards of a byte-bounded bucket.
const ASSUMED_ENTRY_WEIGHT: u64 = 512;

/// Packs a record for the engine.
fn pack(key: &[u8], record: &Record) -> Packed {
    let header = Header::new(record.version, record.expires_at_ms, record.is_tombstone());
    Packed::new(key, header, record.value().map_or(&[][..], |v| &v[..]))
}

/// The record a packed entry holds, its value sharing the entry (this handle becomes the
/// value's).
fn unpack(p: Packed) -> Record {
    let h = p.header();
    Record {
        version: h.version(),
        expires_at_ms: h.expires_at(),
        state: if h.is_tombstone() {
            RecordState::Deleted
        } else {
            RecordState::Live(p.into_value())
        },
    }
}

/// One entry seen by [`Bucket::scan`]: its key and record header, not its value.
pub(crate) struct Scanned {
    key: Key,
    header: Header,
}

/// Bytes a record of a `key`-byte key and a `value`-byte value takes on the wire, roughly: key,
/// value and a record header. What sync throttles and batches by.
#[inline]
pub(crate) fn wire_size(key: usize, value: usize) -> usize {
    key + value + 32
}

impl Scanned {
    #[inline]
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    pub(crate) fn key_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.key)
    }

    #[inline]
    pub(crate) fn version(&self) -> Timestamp {
        self.header.version()
    }

    #[inline]
    pub(crate) fn is_tombstone(&self) -> bool {
        self.header.is_tombstone()
    }

    #[inline]
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.header.is_expired(now_ms)
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The record is now stored (or, for an already-expired record, the older one was removed).
    Applied,
    /// A newer version was already stored; nothing changed.
    Stale,
}

/// A handle to one bucket. Cloning is cheap and every clone refers to the same data.
#[derive(Clone)]
pub struct Bucket {
    inner: Arc<Inner>,
}

struct Inner {
    config: BucketConfig,
    engine: Engine,
    write_locks: Box<[Mutex<()>]>,
    expiry: ExpiryIndex,
    counters: Counters,
    /// Range summaries of every record held, for anti-entropy: every record that enters or
    /// leaves the engine enters or leaves them, under the placement hash of its key (the
    /// bucket's name is its placement namespace).
    digests: LiveDigests,
    clock: Arc<NodeClock>,
    max_entry_size: u64,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.inner.config.name())
            .field("max_entry_size", &self.inner.max_entry_size)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    pub(crate) fn new(
        config: BucketConfig,
        clock: Arc<NodeClock>,
        expiry_granularity_ms: u64,
    ) -> Result<Self, ConfigError> {
        let (weigher, weight_capacity, estimated_items) = match config.capacity() {
            Capacity::Entries(n) => (Weigher::Entries, n.get(), n.get()),
            Capacity::Bytes(b) => {
                (Weigher::Bytes { floor: 0 }, b.get(), b.get() / ASSUMED_ENTRY_WEIGHT)
            }
            Capacity::Both { max_entries, max_bytes } => (
                Weigher::Bytes { floor: max_bytes.get() / max_entries.get() },
                max_bytes.get(),
                max_entries.get(),
            ),
        };
        let heaviest = weigher.weight_of(config.max_entry_size());
        let shards = plan_shards(weight_capacity, heaviest, estimated_items);
        let engine = Engine::new(shards as usize, weight_capacity, weigher);
        if engine.shard_capacity() < heaviest {
            return Err(ConfigError::EntryLargerThanBucket {
                max_entry_size: config.max_entry_size(),
                max_bytes: weight_capacity,
                admissible: engine.shard_capacity().saturating_sub(ENTRY_OVERHEAD),
            });
        }
        let max_entry_size = config.max_entry_size();
        Ok(Bucket {
            inner: Arc::new(Inner {
                config,
                engine,
                write_locks: (0..WRITE_LOCKS).map(|_| Mutex::new(())).collect(),
                expiry: ExpiryIndex::new(expiry_granularity_ms),
                counters: Counters::new(),
                digests: LiveDigests::default(),
                clock,
                max_entry_size,
            }),
        })
    }

    /// The bucket's configuration.
    pub fn config(&self) -> &BucketConfig {
        &self.inner.config
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        self.inner.config.name().as_str()
    }

    /// The largest entry (key plus value bytes) this bucket admits, as configured; larger writes
    /// fail with [`StoreError::EntryTooLarge`]. Every engine shard can hold an entry this large.
    pub fn max_entry_size(&self) -> u64 {
        self.inner.max_entry_size
    }

    /// The live value of `key`, if any. Expired values are never returned (and are reclaimed on
    /// the spot); tombstones read as absent.
    ///
    /// The value is the stored entry itself, not a copy: see [`Value`].
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Value> {
        let key = key.as_ref();
        let inner = &*self.inner;
        // Under the shard's read lock only the header is read and a reference taken, both in
        // the cache line the key comparison loaded. Nothing is allocated: an allocation per
        // read (a copy, or a `Bytes` owner) made a read of random keys about 40 % slower
        // (docs/BENCHMARKS.md).
        let found = inner.engine.get(key, |p| {
            let h = p.header();
            (h, (!h.is_tombstone()).then(|| p.clone()))
        });
        match found {
            Some((h, Some(entry))) => {
                if h.expires_at().is_some_and(|at| at <= inner.clock.now_ms()) {
                    drop(entry);
                    self.reap(key, h.version());
                    inner.counters.count(Event::FoundDead);
                    inner.counters.count(Event::Miss);
                    return None;
                }
                // A hit is counted by the engine, in the line of the shard's lock word
                // (`Engine::found`, less the `FoundDead` reads): a counter of its own here made
                // this read 20-30 % slower.
                Some(Value::stored(entry))
            }
            Some((_, None)) => {
                inner.counters.count(Event::FoundDead);
                inner.counters.count(Event::Miss);
                None
            }
            None => {
                inner.counters.count(Event::Miss);
                None
            }
        }
    }

    /// The stored record of `key`, tombstones and expired values included; for replication.
    /// Does not count as a read or promote the entry.
    pub fn record(&self, key: impl AsRef<[u8]>) -> Option<Record> {
        self.inner.engine.peek(key.as_ref(), Packed::clone).map(unpack)
    }

    /// The version of the record `key` holds (tombstones and expired values included), without
    /// building the record: for replication's version comparisons.
    pub(crate) fn version_of(&self, key: &[u8]) -> Option<Timestamp> {
        self.peek_header(key).map(|h| h.version())
    }

    /// Stores `value` under `key` with the bucket's default TTL (if any); returns the version.
    pub fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
    ) -> Result<Timestamp, StoreError> {
        self.put(key.as_ref(), value.into(), self.inner.config.default_ttl())
    }

    /// Stores `value` under `key`, expiring after `ttl` (1 ms ..= 366 days); returns the version.
    pub fn set_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<Timestamp, StoreError> {
        self.put(key.as_ref(), value.into(), Some(check_ttl(ttl)?))
    }

    fn put(
        &self,
        key: &[u8],
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<Timestamp, StoreError> {
        self.check_admissible(key, value.len())?;
        let inner = &*self.inner;
        let _serial = self.write_lock(key);
        let version = inner.clock.tick();
        let expires_at = ttl.map(|ttl| inner.clock.now_ms().saturating_add(ttl.as_millis() as u64));
        let current = self.peek_header(key);
        self.store_locked(key, &Record::live(version, value, expires_at), current);
        Ok(version)
    }

    /// Deletes `key` by writing a tombstone (kept for the bucket's `tombstone_ttl`). Returns
    /// whether a live value was removed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        let key = key.as_ref();
        self.check_admissible(key, 0)?;
        let inner = &*self.inner;
        let _serial = self.write_lock(key);
        let version = inner.clock.tick();
        let purge_at =
            version.time.wall_ms().saturating_add(inner.config.tombstone_ttl().as_millis() as u64);
        let current = self.peek_header(key);
        let was_live = current.as_ref().is_some_and(|r| self.is_readable(r));
        self.store_locked(key, &Record::tombstone(version, purge_at), current);
        Ok(was_live)
    }

    /// Gives the live value of `key` a new TTL counted from now. Returns `false` (and changes
    /// nothing) when there is no live value.
    pub fn expire(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = check_ttl(ttl)?;
        let key = key.as_ref();
        self.check_admissible(key, 0)?;
        let inner = &*self.inner;
        let _serial = self.write_lock(key);
        let current = inner.engine.peek(key, Packed::clone);
        let Some((header, entry)) =
            current.map(|p| (p.header(), p)).filter(|(h, _)| self.is_readable(h))
        else {
            return Ok(false);
        };
        let value = entry.into_value();
        let version = inner.clock.tick();
        let expires_at = inner.clock.now_ms().saturating_add(ttl.as_millis() as u64);
        self.store_locked(key, &Record::live(version, value, Some(expires_at)), Some(header));
        Ok(true)
    }

    /// Merges a record written elsewhere (a replica, a rebalance stream) by last-writer-wins.
    ///
    /// Refuses a record whose version is further ahead of this node's clock than the allowed
    /// drift; otherwise advances this node's clock past it so later local writes order after.
    pub fn apply(&self, key: impl AsRef<[u8]>, record: Record) -> Result<WriteOutcome, StoreError> {
        let inner = &*self.inner;
        let key = key.as_ref();
        self.check_admissible(key, record.value().map_or(0, Bytes::len))?;
        inner.clock.observe(record.version.time)?;
        let _serial = self.write_lock(key);
        let current = self.peek_header(key);
        let stale = current.as_ref().is_some_and(|cur| match record.version.cmp(&cur.version()) {
            Ordering::Less => true,
            Ordering::Greater => false,
            // Two copies of one version (a record synced again): the full last-writer-wins
            // comparison decides, and it looks at the stored value.
            Ordering::Equal => {
                let held = inner.engine.peek(key, Packed::clone);
                held.is_some_and(|full| !record.supersedes(&unpack(full)))
            }
        });
        if stale {
            inner.counters.count(Event::StaleWrite);
            return Ok(WriteOutcome::Stale);
        }
        if record.is_expired(inner.clock.now_ms()) {
            // Newer than what we hold but already gone: the key is gone too. Storing the
            // record would only occupy memory until the next sweep.
            if let Some(cur) = current {
                self.reap(key, cur.version());
            }
            return Ok(WriteOutcome::Applied);
        }
        self.store_locked(key, &record, current);
        Ok(WriteOutcome::Applied)
    }

    /// Removes `key` if it still holds the record with `version`, without leaving a tombstone:
    /// for a replica handing off a key it no longer owns once the owners have it. A write that
    /// raced in since (a different version) is kept. Returns whether the key was removed.
    pub fn drop_if_unchanged(&self, key: impl AsRef<[u8]>, version: Timestamp) -> bool {
        let key = key.as_ref();
        let _serial = self.write_lock(key);
        match self.inner.engine.remove_if(key, |h| h.version() == version) {
            Some(gone) => {
                self.left(&gone);
                self.inner.counters.count(Event::HandedOff);
                true
            }
            None => false,
        }
    }

    /// Every record stored now (tombstones and not-yet-reclaimed expired values included), one
    /// engine shard at a time: a concurrent write may or may not be seen. For rebalancing and
    /// anti-entropy; does not count as reads.
    pub fn entries(&self) -> impl Iterator<Item = (Bytes, Record)> + '_ {
        self.inner.engine.iter(|p| (Bytes::copy_from_slice(p.key()), unpack(p.clone())))
    }

    /// Every stored entry's key and record header, for walks that look at most entries and
    /// keep few (digests, version exchanges, hand-offs): no value is touched, and nothing is
    /// allocated until the caller asks for the key as [`Bytes`]. A walk that keeps an entry
    /// reads its record with [`Bucket::record`].
    pub(crate) fn scan(&self) -> impl Iterator<Item = Scanned> + '_ {
        self.inner.engine.iter(|p| Scanned { key: Key::from(p.key()), header: p.header() })
    }

    /// Range summaries of every record this bucket holds (tombstones and not-yet-reclaimed
    /// expired values included), current as of the last write: what anti-entropy compares
    /// between replicas.
    pub(crate) fn digests(&self) -> &LiveDigests {
        &self.inner.digests
    }

    /// A snapshot of this bucket's counters.
    pub fn stats(&self) -> BucketStats {
        self.inner.counters.snapshot(self.inner.engine.found())
    }

    /// Removes every record that has expired by now (values past TTL, tombstones past their
    /// window). Returns how many were removed.
    pub fn sweep_expired(&self) -> usize {
        let inner = &*self.inner;
        let now = inner.clock.now_ms();
        let mut removed = 0;
        for slot in inner.expiry.take_due(now) {
            for key in slot {
                // Under the key's write lock: a writer that found this key's old record covering
                // the slot (and so scheduled nothing) has either finished, and its record is
                // judged here, or not started, and will find the key gone and schedule.
                let _serial = self.write_lock(&key);
                let reaped = inner.engine.remove_if(&key[..], |h| h.is_expired(now));
                if let Some(gone) = reaped {
                    self.account_reaped(&gone);
                    removed += 1;
                }
            }
        }
        self.compact_expiry_index();
        removed
    }

    /// Index records for keys overwritten, deleted early or evicted linger until their slot comes
    /// due; once they outnumber entries two to one, rebuild the index from the entries. Called
    /// by the sweep and every 4,096 scheduled expiries, so the bound holds even when no sweeper
    /// runs; the O(entries) rebuild is paid for by the writes that made it necessary.
    fn compact_expiry_index(&self) {
        let inner = &*self.inner;
        let held = inner.engine.len();
        if inner.expiry.len() > 2 * held + 1024 {
            inner.expiry.rebuild(
                inner
                    .engine
                    .iter(|p| {
                        p.header().expires_at().map(|at| (Bytes::copy_from_slice(p.key()), at))
                    })
                    .flatten(),
            );
        }
    }

    /// Records in the expiry index, stale ones included. Bounded by about twice the entries.
    pub fn expiry_index_len(&self) -> usize {
        self.inner.expiry.len()
    }

    // ----- internals -----

    /// Checks that a write of `key` with a value of `value_len` bytes would be admitted: the
    /// key is short enough and the entry fits (see [`Bucket::max_entry_size`]).
    pub fn check_admissible(&self, key: &[u8], value_len: usize) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong { len: key.len(), max: MAX_KEY_LEN });
        }
        let size = (key.len() + value_len) as u64;
        if size > self.inner.max_entry_size {
            self.inner.counters.count(Event::Rejected);
            return Err(StoreError::EntryTooLarge {
                bucket: self.name().to_owned(),
                size,
                max: self.inner.max_entry_size,
            });
        }
        Ok(())
    }

    /// The header of the record `key` holds: all a write needs to decide and account for
    /// itself. The value stays where it is.
    fn peek_header(&self, key: &[u8]) -> Option<Header> {
        self.inner.engine.peek(key, |p| p.header())
    }

    fn write_lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        // Bits 24..32 of the key's hash: not the engine's shard bits (40..), so the keys of one
        // shard spread over every stripe.
        let i = (self.inner.engine.hash(key) >> 24) as usize % WRITE_LOCKS;
        // The guarded data is `()`: a poisoned lock carries no broken state.
        crate::sync::lock(&self.inner.write_locks[i])
    }

    fn is_readable(&self, r: &Header) -> bool {
        !r.is_tombstone() && !r.is_expired(self.inner.clock.now_ms())
    }

    /// Inserts `record`, which supersedes `current`, with the key's write lock held; then
    /// accounts for everything that arrived and left.
    fn store_locked(&self, key: &[u8], record: &Record, current: Option<Header>) {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let entry = pack(key, record);
        let header = entry.header();
        let was_live = current.as_ref().is_some_and(|r| self.is_readable(r));
        match (header.is_tombstone(), was_live) {
            (false, true) => counters.count(Event::Update),
            (false, false) => counters.count(Event::Insert),
            (true, true) => counters.count(Event::Delete),
            (true, false) => {}
        }
        counters.occupancy(!header.is_tombstone(), entry.size(), 1);
        // Into the summaries before the engine: a racing eviction of this very entry then
        // always removes what is already there.
        let placement_hash = self.placement_hash(key);
        inner.digests.insert(placement_hash, header.version(), header.is_tombstone());
        // The replaced record's index entry, if it is for the same slot, still stands for this
        // key: the sweep re-checks whatever record the key holds when the slot comes due.
        // Rewriting hot keys with the same TTL then costs no index growth at all.
        let slot = |r: &Header| r.expires_at().map(|at| inner.expiry.slot_of(at));
        let covered = current.as_ref().and_then(slot).is_some_and(|s| Some(s) == slot(&header));
        if let Some(at) = header.expires_at()
            && !covered
            && inner.expiry.schedule(Bytes::copy_from_slice(key), at).is_multiple_of(4096)
        {
            self.compact_expiry_index();
        }
        let inserted = inner.engine.insert(entry);
        if let Some(old) = &inserted.replaced {
            // The same key: its placement hash is the one just computed.
            self.left_hashed(old, placement_hash);
        }
        for gone in &inserted.evicted {
            self.left(gone);
            counters.count(Event::Eviction);
        }
    }

    /// Accounts for an entry that left the engine (replaced, evicted or removed): occupancy
    /// and summaries. Every entry that leaves passes here exactly once: the engine hands each
    /// back to exactly one caller.
    fn left(&self, gone: &Packed) {
        self.left_hashed(gone, self.placement_hash(gone.key()));
    }

    /// [`Bucket::left`] for an entry whose key's placement hash is known.
    fn left_hashed(&self, gone: &Packed, placement_hash: u64) {
        let h = gone.header();
        self.inner.counters.occupancy(!h.is_tombstone(), gone.size(), -1);
        self.inner.digests.remove(placement_hash, h.version(), h.is_tombstone());
    }

    /// The key's placement hash, which picks its range in the summaries.
    #[inline]
    fn placement_hash(&self, key: &[u8]) -> u64 {
        key_hash(self.name().as_bytes(), key)
    }

    /// Removes `key` if it still holds the record with `version` (an expired value or a
    /// tombstone past its window).
    fn reap(&self, key: &[u8], version: Timestamp) {
        if let Some(gone) = self.inner.engine.remove_if(key, |h| h.version() == version) {
            self.account_reaped(&gone);
        }
    }

    fn account_reaped(&self, gone: &Packed) {
        self.left(gone);
        let tombstone = gone.header().is_tombstone();
        self.inner.counters.count(if tombstone {
            Event::TombstonePurged
        } else {
            Event::Expiration
        });
    }
}

/// Chooses the shard count: as many as useful for concurrency (4 per core), and more for a
/// large bucket so no shard holds more than [`MAX_ENTRIES_PER_SHARD`] (at most
/// [`MAX_SHARDS`]); but few enough that every shard can still hold the heaviest allowed entry
/// and holds a few hundred entries.
fn plan_shards(weight_capacity: u64, heaviest: u64, estimated_items: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let for_size = estimated_items.div_ceil(MAX_ENTRIES_PER_SHARD);
    let mut shards = (cores * 4).max(for_size).next_power_of_two().clamp(1, MAX_SHARDS);
    while shards > 1
        && (weight_capacity.div_ceil(shards) < heaviest
            || estimated_items / shards < MIN_ENTRIES_PER_SHARD)
    {
        shards /= 2;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use mycorrizal_core::{HlcTime, NodeTag};

    fn bucket_clock() -> Arc<NodeClock> {
        Arc::new(NodeClock::new(
            NodeTag(1),
            Arc::new(ManualClock::new(1_000)),
            Duration::from_secs(1),
        ))
    }

    fn bucket(config: BucketConfig) -> Bucket {
        Bucket::new(config, bucket_clock(), 1_000).unwrap()
    }

    /// What a bucket's live summaries must equal: summaries built from scratch over every
    /// record it holds.
    fn digests_from_scratch(b: &Bucket) -> mycorrizal_core::digest::RangeDigests {
        let mut d = mycorrizal_core::digest::RangeDigests::default();
        for (key, rec) in b.entries() {
            d.add(key_hash(b.name().as_bytes(), &key), rec.version, rec.is_tombstone());
        }
        d
    }

    proptest::proptest! {
        /// However records enter and leave (sets with and without TTLs, deletes, replicated
        /// applies old and new, expiry by reads and by the sweep, hand-offs, and evictions from
        /// a bucket too small for its keys), the live summaries equal summaries built from
        /// scratch over what the bucket holds.
        #[test]
        fn live_digests_follow_every_way_a_record_comes_and_goes(
            ops in proptest::collection::vec((0u8..9, 0u8..40, 0u64..3_000), 1..400),
        ) {
            let wall = Arc::new(ManualClock::new(1_000));
            let clock = Arc::new(NodeClock::new(NodeTag(1), wall.clone(), Duration::from_secs(1)));
            // 40 keys into 24 entries: writes evict.
            let b = Bucket::new(
                BucketConfig::builder("b").max_entries(24).tombstone_ttl(Duration::from_secs(2)).build().unwrap(),
                clock.clone(),
                100,
            ).unwrap();
            for (op, k, n) in ops {
                let key = [k];
                match op {
                    0 => { b.set(key, vec![k; 10]).unwrap(); }
                    1 => { b.set_with_ttl(key, vec![k; 10], Duration::from_millis(n + 1)).unwrap(); }
                    2 => { b.delete(key).unwrap(); }
                    3 => { b.expire(key, Duration::from_millis(n + 1)).unwrap(); }
                    4 => {
                        // A replicated write, from the past or the future of this clock.
                        let at = HlcTime::new((wall.now_ms() + n).saturating_sub(1_500), 0);
                        let rec = Record::live(Timestamp { time: at, node: NodeTag(2) }, Bytes::from(vec![k; 5]), None);
                        let _ = b.apply(key, rec);
                    }
                    5 => { let _ = b.get(key); }
                    6 => { b.sweep_expired(); }
                    7 => {
                        if let Some(v) = b.version_of(&key) {
                            b.drop_if_unchanged(key, v);
                        }
                    }
                    _ => wall.advance(Duration::from_millis(n)),
                }
            }
            let live = b.digests().snapshot(|_| true);
            proptest::prop_assert!(live.mismatched(&digests_from_scratch(&b)).is_empty());
        }
    }

    /// A scan yields every entry's header, and reads on the same thread, in the middle of the
    /// scan and after it, get their values.
    #[test]
    fn a_scan_yields_headers_and_reads_go_on_during_it() {
        let b = bucket(BucketConfig::builder("b").max_entries(100).build().unwrap());
        let value = |i: u8| Bytes::from(vec![i; 100]);
        for i in 0..10u8 {
            b.apply([i], Record::live(Timestamp::default(), value(i), None)).unwrap();
        }
        let mut scan = b.scan();
        let mut seen: Vec<Scanned> = scan.by_ref().take(4).collect();
        let k = seen[0].key()[0];
        assert_eq!(b.get([k]).map(Bytes::from), Some(value(k)), "a read in the middle of a scan");
        seen.extend(scan);
        let mut keys: Vec<u8> = seen.iter().map(|e| e.key()[0]).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..10).collect::<Vec<u8>>());
        assert!(seen.iter().all(|e| e.version() == Timestamp::default() && !e.is_tombstone()));
        assert_eq!(b.record([k]).and_then(|r| r.value().cloned()), Some(value(k)));
    }

    /// Hits are counted by the engine (reads that found an entry) less the tombstones and
    /// expired values among them; they must come out exact, from any number of threads.
    #[test]
    fn hits_and_misses_are_exact_for_live_deleted_and_absent_keys() {
        let b = bucket(BucketConfig::builder("b").max_entries(100).build().unwrap());
        b.set("live", "v").unwrap();
        b.set("gone", "v").unwrap();
        b.delete("gone").unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        assert!(b.get("live").is_some());
                        assert!(b.get("gone").is_none());
                        assert!(b.get("absent").is_none());
                    }
                });
            }
        });
        let st = b.stats();
        assert_eq!((st.hits, st.misses), (4_000, 8_000));
    }

    /// A read shares the stored entry instead of copying it, and is a snapshot: later writes
    /// do not show in it, and it stays readable after its entry is replaced, evicted or its
    /// bucket dropped.
    #[test]
    fn a_read_value_is_a_snapshot_that_outlives_its_entry() {
        let b = bucket(BucketConfig::builder("b").max_entries(1).build().unwrap());
        let old = Timestamp { time: HlcTime::from_raw(1 << 20), node: NodeTag(1) };
        b.apply("k", Record::live(old, Bytes::from(vec![1; 100]), None)).unwrap();
        let read = b.get("k").expect("stored");
        b.set("k", vec![2; 100]).unwrap();
        assert_eq!(read, Bytes::from(vec![1; 100]));
        let second = b.get("k").expect("stored");
        b.set("other", vec![3; 100]).unwrap();
        assert_eq!(b.get("k"), None, "evicted by the write to a full bucket");
        drop(b);
        assert_eq!((&read[..], &second[..]), (&[1; 100][..], &[2; 100][..]));
        drop(read);
        assert_eq!(second, Bytes::from(vec![2; 100]));
    }

    /// A replicated value arrives as a slice of the frame it was decoded from (prost decodes
    /// `Bytes` fields without copying), and a frame can carry a whole sync batch. The store
    /// keeps its own copy: holding the slice would keep the whole frame alive for as long as
    /// the value lives.
    #[test]
    fn a_stored_value_does_not_keep_the_buffer_it_arrived_in() {
        let b = bucket(BucketConfig::builder("b").max_entries(100).build().unwrap());
        let mut frame = Bytes::from(vec![9u8; 1 << 20]);
        let value = frame.slice(1000..1100);
        b.apply("k", Record::live(Timestamp::default(), value, None)).unwrap();
        assert!(frame.is_unique(), "the store holds on to the frame");
        frame.clear();
        assert_eq!(b.get("k").map(Bytes::from), Some(Bytes::from(vec![9u8; 100])));
    }

    /// Bucket creation promises every shard can hold the largest allowed entry: an entry of
    /// exactly `max_entry_size` is stored and readable in buckets of many sizes.
    #[test]
    fn the_largest_allowed_entry_is_stored() {
        for max_bytes in [4096u64, 1 << 20, 64 << 20] {
            let largest = (max_bytes / 2).min(1 << 20);
            let config = BucketConfig::builder("b")
                .max_bytes(max_bytes)
                .max_entry_size(largest)
                .build()
                .unwrap();
            let Ok(b) = Bucket::new(config, bucket_clock(), 1_000) else {
                continue; // refused at creation, with a clear error: the other promise
            };
            b.set("k", vec![7; largest as usize - 1]).unwrap();
            assert_eq!(b.get("k").map(|v| v.len()), Some(largest as usize - 1), "{max_bytes}");
            assert_eq!(b.stats().evictions, 0);
        }
    }

    #[test]
    fn a_large_bucket_gets_shards_small_enough_to_grow_quickly() {
        // A million entries: 64 shards of ~15,600, whatever the core count (at most 16 cores
        // ask for 64 on their own).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let shards = plan_shards(1_000_000, 1, 1_000_000);
        assert_eq!(shards, 64.max((cores * 4).next_power_of_two()).min(MAX_SHARDS));
        assert!(1_000_000 / shards <= MAX_ENTRIES_PER_SHARD);
        // However large, at most MAX_SHARDS.
        assert_eq!(plan_shards(1 << 40, 1, 1 << 40), MAX_SHARDS);
    }

    #[test]
    fn shard_plan_respects_the_heaviest_entry() {
        assert_eq!(plan_shards(1 << 20, 600_000, 1 << 20), 1);
        assert!(plan_shards(1 << 30, 1 << 20, 1 << 22) > 1);
        assert_eq!(plan_shards(1_000, 1, 1_000), 2.min(plan_shards(1_000, 1, 1_000)));
    }
}
