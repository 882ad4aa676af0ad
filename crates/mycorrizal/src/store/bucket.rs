//! One bucket of the local store: a bounded map from keys to versioned [`Record`]s.
//!
//! The engine is `quick_cache` (S3-FIFO-like eviction: scan resistant, synchronous, no
//! background threads). On top of it this module adds what the engine lacks: absolute expiry
//! checked on every read and reclaimed by the [`ExpiryIndex`](super::expiry) sweep, versioned
//! writes merged by last-writer-wins, tombstones, admission control for oversized entries, and
//! counters.
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
//! Not strict LRU: quick_cache's S3-FIFO variant admits new entries to a small probation queue
//! and promotes those read again, which keeps one-off scans from flushing the working set. Its
//! hit ratio on skewed (Zipf) workloads is at least LRU's; `docs/BENCHMARKS.md` has figures.
//! A value just written is always readable until something else is written to the bucket: the
//! engine evicts *before* admitting a new entry.

use std::{
    cell::Cell,
    cmp::Ordering,
    hash::{BuildHasher, Hash},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{HlcTime, NodeTag, Record, RecordState, Timestamp};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter, sync::Cache};

use super::{
    config::{BucketConfig, Capacity, ConfigError, MAX_KEY_LEN, check_ttl},
    error::StoreError,
    expiry::ExpiryIndex,
    stats::{BucketStats, Counters, Event},
};
use crate::clock::NodeClock;

/// Bytes charged per entry on top of key and value in byte-bounded buckets: the engine's slot,
/// the record header and the allocator's bookkeeping, so `max_bytes` tracks real memory.
pub const ENTRY_OVERHEAD: u64 = 96;
/// Number of striped write locks per bucket.
const WRITE_LOCKS: usize = 256;
/// Share of a shard's capacity the engine's hot queue may hold; also the largest single entry a
/// shard admits. Set explicitly so [`Bucket::max_entry_size`] is computed from the same number.
const HOT_ALLOCATION: f64 = 0.97;
/// Fewest entries we want per shard before adding shards; fewer shards means a more exact
/// eviction order in small buckets.
const MIN_ENTRIES_PER_SHARD: u64 = 256;
/// Rough entry weight assumed to size the engine's ghost list in byte-bounded buckets.
const ASSUMED_ENTRY_WEIGHT: u64 = 512;

type Engine = Cache<Key, Slot, EntryWeighter, DefaultHashBuilder, Departures>;

use super::key::Key;

/// A [`Record`] as the engine stores it: 56 bytes instead of 64. A `get` of a random key is
/// bound by cache misses, and fewer entries straddling two cache lines was measurable (see
/// docs/BENCHMARKS.md); the key (`key.rs`) keeps short keys in the entry for the same reason.
struct Slot {
    /// The value; empty for a tombstone.
    value: Bytes,
    /// `HlcTime` of the version, raw.
    time: u64,
    /// `NodeTag` of the version.
    node: u64,
    /// Bit 63: tombstone. Bits 0..63: expiry in ms, or [`NO_EXPIRY`].
    meta: u64,
}

const TOMBSTONE_BIT: u64 = 1 << 63;
const NO_EXPIRY: u64 = TOMBSTONE_BIT - 1;

thread_local! {
    /// Set while this thread advances a [`Bucket::scan`], or looks at the record a write
    /// replaces (`Bucket::peek_header`). The engine's iterator and `peek` clone each entry
    /// they return, and cloning a value is an atomic increment on a reference count in
    /// another cache line (and, the first time, an allocation: `Bytes` makes its count when a
    /// value is first shared). Both want the record's header only; walks over a million
    /// entries spent a third of a rebalance's CPU on those clones (docs/BENCHMARKS.md).
    static HEADERS_ONLY: Cell<bool> = const { Cell::new(false) };
}

impl Clone for Slot {
    #[inline]
    fn clone(&self) -> Slot {
        let value = if HEADERS_ONLY.get() { Bytes::new() } else { self.value.clone() };
        Slot { value, time: self.time, node: self.node, meta: self.meta }
    }
}

/// Clears [`HEADERS_ONLY`] when dropped, so a panic inside the engine cannot leave this
/// thread's later reads without values.
struct HeadersOnly;

impl HeadersOnly {
    #[inline]
    fn begin() -> HeadersOnly {
        HEADERS_ONLY.set(true);
        HeadersOnly
    }
}

impl Drop for HeadersOnly {
    #[inline]
    fn drop(&mut self) {
        HEADERS_ONLY.set(false);
    }
}

/// The engine's iterator, yielding entries without their values (see [`HEADERS_ONLY`]).
struct Headers<'a>(
    quick_cache::sync::Iter<'a, Key, Slot, EntryWeighter, DefaultHashBuilder, Departures>,
);

impl Iterator for Headers<'_> {
    type Item = Scanned;

    #[inline]
    fn next(&mut self) -> Option<Scanned> {
        let _headers = HeadersOnly::begin();
        self.0.next().map(|(key, slot)| Scanned { key, slot })
    }
}

impl Slot {
    fn from_record(r: Record) -> Slot {
        let expiry = r.expires_at_ms.map_or(NO_EXPIRY, |at| at.min(NO_EXPIRY - 1));
        let (value, tomb) = match r.state {
            RecordState::Live(v) => (v, 0),
            RecordState::Deleted => (Bytes::new(), TOMBSTONE_BIT),
        };
        Slot { value, time: r.version.time.to_raw(), node: r.version.node.0, meta: expiry | tomb }
    }

    fn to_record(&self) -> Record {
        self.clone().into_record()
    }

    fn into_record(self) -> Record {
        Record {
            version: self.version(),
            expires_at_ms: self.expires_at(),
            state: if self.is_tombstone() {
                RecordState::Deleted
            } else {
                RecordState::Live(self.value)
            },
        }
    }

    #[inline]
    fn version(&self) -> Timestamp {
        Timestamp { time: HlcTime::from_raw(self.time), node: NodeTag(self.node) }
    }

    #[inline]
    fn is_tombstone(&self) -> bool {
        self.meta & TOMBSTONE_BIT != 0
    }

    #[inline]
    fn expires_at(&self) -> Option<u64> {
        let at = self.meta & !TOMBSTONE_BIT;
        (at != NO_EXPIRY).then_some(at)
    }

    #[inline]
    fn is_expired(&self, now_ms: u64) -> bool {
        let at = self.meta & !TOMBSTONE_BIT;
        at != NO_EXPIRY && at <= now_ms
    }
}

/// One entry seen by [`Bucket::scan`]: its key and record header, not its value.
pub(crate) struct Scanned {
    key: Key,
    slot: Slot,
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
        self.slot.version()
    }

    #[inline]
    pub(crate) fn is_tombstone(&self) -> bool {
        self.slot.is_tombstone()
    }

    #[inline]
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.slot.is_expired(now_ms)
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
    lock_hasher: DefaultHashBuilder,
    expiry: ExpiryIndex,
    counters: Counters,
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

/// Charges entries against the bucket's [`Capacity`].
#[derive(Clone)]
struct EntryWeighter {
    /// `None`: every entry weighs 1 (entry-bounded bucket).
    bytes: Option<ByteWeight>,
}

#[derive(Clone, Copy)]
struct ByteWeight {
    /// Minimum charge per entry, `max_bytes / max_entries` when both bounds apply.
    floor: u64,
}

impl EntryWeighter {
    #[inline]
    fn weight_of(&self, size: u64) -> u64 {
        match self.bytes {
            None => 1,
            Some(b) => (size + ENTRY_OVERHEAD).max(b.floor),
        }
    }
}

impl Weighter<Key, Slot> for EntryWeighter {
    #[inline]
    fn weight(&self, key: &Key, val: &Slot) -> u64 {
        self.weight_of(entry_size(key, val))
    }
}

#[inline]
fn entry_size(key: &[u8], slot: &Slot) -> u64 {
    (key.len() + slot.value.len()) as u64
}

/// Collects what the engine evicts during one operation, so it is counted (and dropped) after
/// the shard lock is released.
#[derive(Clone, Default)]
struct Departures;

#[derive(Default)]
struct Departed(Vec<(Key, Slot)>);

impl Lifecycle<Key, Slot> for Departures {
    type RequestState = Departed;

    #[inline]
    fn on_evict(&self, state: &mut Departed, key: Key, val: Slot) {
        state.0.push((key, val));
    }
}

impl Bucket {
    pub(crate) fn new(
        config: BucketConfig,
        clock: Arc<NodeClock>,
        expiry_granularity_ms: u64,
    ) -> Result<Self, ConfigError> {
        let (weighter, weight_capacity, estimated_items) = match config.capacity() {
            Capacity::Entries(n) => (EntryWeighter { bytes: None }, n.get(), n.get()),
            Capacity::Bytes(b) => (
                EntryWeighter { bytes: Some(ByteWeight { floor: 0 }) },
                b.get(),
                b.get() / ASSUMED_ENTRY_WEIGHT,
            ),
            Capacity::Both { max_entries, max_bytes } => (
                EntryWeighter {
                    bytes: Some(ByteWeight { floor: max_bytes.get() / max_entries.get() }),
                },
                max_bytes.get(),
                max_entries.get(),
            ),
        };
        let heaviest = weighter.weight_of(config.max_entry_size());
        let shards = plan_shards(weight_capacity, heaviest, estimated_items);
        let admissible = admissible_weight(weight_capacity.div_ceil(shards));
        if admissible < heaviest {
            return Err(ConfigError::EntryLargerThanBucket {
                max_entry_size: config.max_entry_size(),
                max_bytes: weight_capacity,
                admissible: admissible.saturating_sub(ENTRY_OVERHEAD),
            });
        }
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .hot_allocation(HOT_ALLOCATION)
            .weight_capacity(weight_capacity)
            .estimated_items_capacity(estimated_items.max(32 * shards) as usize)
            .build()
            .map_err(|_| ConfigError::OutOfRange {
                field: "max_bytes",
                value: weight_capacity,
                min: 1,
                max: u64::MAX,
            })?;
        let engine = Engine::with_options(
            options,
            weighter.clone(),
            DefaultHashBuilder::default(),
            Departures,
        );
        // Check again against what the engine actually built (it may merge shards).
        if admissible_weight(engine.shard_capacity()) < heaviest {
            return Err(ConfigError::EntryLargerThanBucket {
                max_entry_size: config.max_entry_size(),
                max_bytes: weight_capacity,
                admissible: admissible_weight(engine.shard_capacity())
                    .saturating_sub(ENTRY_OVERHEAD),
            });
        }
        let max_entry_size = config.max_entry_size();
        Ok(Bucket {
            inner: Arc::new(Inner {
                config,
                engine,
                write_locks: (0..WRITE_LOCKS).map(|_| Mutex::new(())).collect(),
                lock_hasher: DefaultHashBuilder::default(),
                expiry: ExpiryIndex::new(expiry_granularity_ms),
                counters: Counters::new(),
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
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        let key = key.as_ref();
        let inner = &*self.inner;
        match inner.engine.get(key) {
            Some(slot) if !slot.is_tombstone() => {
                if slot.expires_at().is_some_and(|at| at <= inner.clock.now_ms()) {
                    self.reap(key, slot.version());
                    inner.counters.count(Event::Miss);
                    return None;
                }
                inner.counters.count(Event::Hit);
                Some(slot.value)
            }
            _ => {
                inner.counters.count(Event::Miss);
                None
            }
        }
    }

    /// The stored record of `key`, tombstones and expired values included; for replication.
    /// Does not count as a read or promote the entry.
    pub fn record(&self, key: impl AsRef<[u8]>) -> Option<Record> {
        self.inner.engine.peek(key.as_ref()).map(Slot::into_record)
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
        let key = self.admit(key, value.len())?;
        let inner = &*self.inner;
        let _serial = self.write_lock(&key);
        let version = inner.clock.tick();
        let expires_at = ttl.map(|ttl| inner.clock.now_ms().saturating_add(ttl.as_millis() as u64));
        let current = self.peek_header(&key);
        self.store_locked(
            key,
            Slot::from_record(Record::live(version, value, expires_at)),
            current,
        );
        Ok(version)
    }

    /// Deletes `key` by writing a tombstone (kept for the bucket's `tombstone_ttl`). Returns
    /// whether a live value was removed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        let key = self.admit(key.as_ref(), 0)?;
        let inner = &*self.inner;
        let _serial = self.write_lock(&key);
        let version = inner.clock.tick();
        let purge_at =
            version.time.wall_ms().saturating_add(inner.config.tombstone_ttl().as_millis() as u64);
        let current = self.peek_header(&key);
        let was_live = current.as_ref().is_some_and(|r| self.is_readable(r));
        self.store_locked(key, Slot::from_record(Record::tombstone(version, purge_at)), current);
        Ok(was_live)
    }

    /// Gives the live value of `key` a new TTL counted from now. Returns `false` (and changes
    /// nothing) when there is no live value.
    pub fn expire(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = check_ttl(ttl)?;
        let key = self.admit(key.as_ref(), 0)?;
        let inner = &*self.inner;
        let _serial = self.write_lock(&key);
        let current = inner.engine.peek(&key);
        let Some(value) = current.as_ref().filter(|r| self.is_readable(r)).map(|r| r.value.clone())
        else {
            return Ok(false);
        };
        let version = inner.clock.tick();
        let expires_at = inner.clock.now_ms().saturating_add(ttl.as_millis() as u64);
        self.store_locked(
            key,
            Slot::from_record(Record::live(version, value, Some(expires_at))),
            current,
        );
        Ok(true)
    }

    /// Merges a record written elsewhere (a replica, a rebalance stream) by last-writer-wins.
    ///
    /// Refuses a record whose version is further ahead of this node's clock than the allowed
    /// drift; otherwise advances this node's clock past it so later local writes order after.
    pub fn apply(&self, key: impl AsRef<[u8]>, record: Record) -> Result<WriteOutcome, StoreError> {
        let inner = &*self.inner;
        let key = self.admit(key.as_ref(), record.value().map_or(0, Bytes::len))?;
        inner.clock.observe(record.version.time)?;
        let _serial = self.write_lock(&key);
        let current = self.peek_header(&key);
        let stale = current.as_ref().is_some_and(|cur| match record.version.cmp(&cur.version()) {
            Ordering::Less => true,
            Ordering::Greater => false,
            // Two copies of one version (a record synced again): the full last-writer-wins
            // comparison decides, and it looks at the stored value.
            Ordering::Equal => {
                inner.engine.peek(&key).is_some_and(|full| !record.supersedes(&full.to_record()))
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
                self.reap(&key, cur.version());
            }
            return Ok(WriteOutcome::Applied);
        }
        self.store_locked(key, Slot::from_record(record), current);
        Ok(WriteOutcome::Applied)
    }

    /// Removes `key` if it still holds the record with `version`, without leaving a tombstone:
    /// for a replica handing off a key it no longer owns once the owners have it. A write that
    /// raced in since (a different version) is kept. Returns whether the key was removed.
    pub fn drop_if_unchanged(&self, key: impl AsRef<[u8]>, version: Timestamp) -> bool {
        let key = key.as_ref();
        let _serial = self.write_lock(key);
        match self.inner.engine.remove_if(key, |r: &Slot| r.version() == version) {
            Some((_, record)) => {
                let counters = &self.inner.counters;
                counters.occupancy(!record.is_tombstone(), entry_size(key, &record) as usize, -1);
                counters.count(Event::HandedOff);
                true
            }
            None => false,
        }
    }

    /// Every record stored now (tombstones and not-yet-reclaimed expired values included), one
    /// engine shard at a time: a concurrent write may or may not be seen. For rebalancing and
    /// anti-entropy; does not count as reads.
    pub fn entries(&self) -> impl Iterator<Item = (Bytes, Record)> + '_ {
        self.inner
            .engine
            .iter()
            .map(|(key, slot)| (Bytes::copy_from_slice(&key), slot.into_record()))
    }

    /// Every stored entry's key and record header, for walks that look at most entries and
    /// keep few (digests, version exchanges, hand-offs): no value is touched, and nothing is
    /// allocated until the caller asks for the key as [`Bytes`]. A walk that keeps an entry
    /// reads its record with [`Bucket::record`].
    pub(crate) fn scan(&self) -> impl Iterator<Item = Scanned> + '_ {
        Headers(self.inner.engine.iter())
    }

    /// A snapshot of this bucket's counters.
    pub fn stats(&self) -> BucketStats {
        self.inner.counters.snapshot()
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
                let reaped = inner.engine.remove_if(&key[..], |r: &Slot| r.is_expired(now));
                if let Some((_, record)) = reaped {
                    self.account_reaped(&key, &record);
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
                    .iter()
                    .filter_map(|(k, s)| s.expires_at().map(|at| (Bytes::copy_from_slice(&k), at))),
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

    /// Checks sizes and turns the key into an owned key.
    fn admit(&self, key: &[u8], value_len: usize) -> Result<Key, StoreError> {
        self.check_admissible(key, value_len)?;
        Ok(Key::from(key))
    }

    /// The record `key` holds, without its value ([`HEADERS_ONLY`]): all a write needs to
    /// decide and account for itself. Cloning the stored value instead cost every write an
    /// atomic increment and decrement on its reference count, in a cache line of its own, and
    /// the first time a value was shared an allocation (`Bytes` makes its count then).
    fn peek_header(&self, key: &[u8]) -> Option<Slot> {
        let _headers = HeadersOnly::begin();
        self.inner.engine.peek(key)
    }

    fn write_lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let mut h = self.inner.lock_hasher.build_hasher();
        key.hash(&mut h);
        let i = std::hash::Hasher::finish(&h) as usize % WRITE_LOCKS;
        // The guarded data is `()`: a poisoned lock carries no broken state.
        crate::sync::lock(&self.inner.write_locks[i])
    }

    fn is_readable(&self, r: &Slot) -> bool {
        !r.is_tombstone() && !r.is_expired(self.inner.clock.now_ms())
    }

    /// Inserts `record`, which supersedes `current`, with the key's write lock held; then
    /// accounts for everything that arrived and left.
    fn store_locked(&self, key: Key, record: Slot, current: Option<Slot>) {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let was_live = current.as_ref().is_some_and(|r| self.is_readable(r));
        match (record.is_tombstone(), was_live) {
            (false, true) => counters.count(Event::Update),
            (false, false) => counters.count(Event::Insert),
            (true, true) => counters.count(Event::Delete),
            (true, false) => {}
        }
        counters.occupancy(!record.is_tombstone(), entry_size(&key, &record) as usize, 1);
        // The replaced record's index entry, if it is for the same slot, still stands for this
        // key: the sweep re-checks whatever record the key holds when the slot comes due.
        // Rewriting hot keys with the same TTL then costs no index growth at all.
        let slot = |r: &Slot| r.expires_at().map(|at| inner.expiry.slot_of(at));
        let covered = current.as_ref().and_then(slot).is_some_and(|s| Some(s) == slot(&record));
        if let Some(at) = record.expires_at()
            && !covered
            && inner.expiry.schedule(Bytes::copy_from_slice(&key), at).is_multiple_of(4096)
        {
            self.compact_expiry_index();
        }
        let replaced = current.map(|r| r.version());
        let mut departed = Departed::default();
        inner.engine.insert_with_lifecycle(key.clone(), record, &mut departed);
        for (k, r) in departed.0 {
            counters.occupancy(!r.is_tombstone(), entry_size(&k, &r) as usize, -1);
            let is_replacement = k == key && Some(r.version()) == replaced;
            if !is_replacement {
                counters.count(Event::Eviction);
            }
        }
    }

    /// Removes `key` if it still holds the record with `version` (an expired value or a
    /// tombstone past its window).
    fn reap(&self, key: &[u8], version: Timestamp) {
        if let Some((_, record)) =
            self.inner.engine.remove_if(key, |r: &Slot| r.version() == version)
        {
            self.account_reaped(key, &record);
        }
    }

    fn account_reaped(&self, key: &[u8], record: &Slot) {
        let counters = &self.inner.counters;
        counters.occupancy(!record.is_tombstone(), entry_size(key, record) as usize, -1);
        counters.count(if record.is_tombstone() {
            Event::TombstonePurged
        } else {
            Event::Expiration
        });
    }
}

/// The largest weight a shard of `shard_capacity` admits (quick_cache refuses heavier entries
/// outright: they exceed what its hot queue may hold).
fn admissible_weight(shard_capacity: u64) -> u64 {
    ((shard_capacity as f64 * HOT_ALLOCATION) as u64).clamp(shard_capacity.min(1), shard_capacity)
}

/// Chooses the shard count: as many as useful for concurrency (4 per core, at most 64), but
/// few enough that every shard can still admit the heaviest allowed entry and holds a few
/// hundred entries.
fn plan_shards(weight_capacity: u64, heaviest: u64, estimated_items: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut shards = (cores * 4).next_power_of_two().clamp(1, 64);
    while shards > 1
        && (admissible_weight(weight_capacity.div_ceil(shards)) < heaviest
            || estimated_items / shards < MIN_ENTRIES_PER_SHARD)
    {
        shards /= 2;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use mycorrizal_core::NodeTag;

    fn bucket(config: BucketConfig) -> Bucket {
        let clock = Arc::new(NodeClock::new(
            NodeTag(1),
            Arc::new(ManualClock::new(1_000)),
            Duration::from_secs(1),
        ));
        Bucket::new(config, clock, 1_000).unwrap()
    }

    /// A scan copies record headers, never values: what it yields shares no value (a clone
    /// would be an atomic increment in another cache line for every entry walked), and reads
    /// on the same thread, during the scan and after it, still get theirs.
    #[test]
    fn a_scan_yields_headers_and_leaves_values_alone() {
        let b = bucket(BucketConfig::builder("b").max_entries(100).build().unwrap());
        let value = |i: u8| Bytes::from(vec![i; 100]);
        for i in 0..10u8 {
            b.apply([i], Record::live(Timestamp::default(), value(i), None)).unwrap();
        }
        let mut scan = b.scan();
        let mut seen: Vec<Scanned> = scan.by_ref().take(4).collect();
        let k = seen[0].key()[0];
        assert_eq!(b.get([k]), Some(value(k)), "a read in the middle of a scan");
        seen.extend(scan);
        assert_eq!(seen.len(), 10);
        assert_eq!(b.record([k]).and_then(|r| r.value().cloned()), Some(value(k)));
        for e in &seen {
            assert!(e.slot.value.is_empty(), "a scan copied a value");
            assert_eq!(e.version(), Timestamp::default());
            let (_, stored) = b.inner.engine.remove(e.key()).unwrap();
            assert_eq!(stored.value, value(e.key()[0]));
            assert!(stored.value.is_unique(), "a value is shared with what the scan yielded");
        }
    }

    #[test]
    fn a_write_reads_the_replaced_header_and_leaves_its_value_alone() {
        let b = bucket(BucketConfig::builder("b").max_entries(100).build().unwrap());
        let old = Timestamp { time: HlcTime::from_raw(1 << 20), node: NodeTag(1) };
        b.apply("k", Record::live(old, Bytes::from(vec![1; 100]), None)).unwrap();
        let header = b.peek_header(b"k").expect("stored");
        assert!(header.value.is_empty(), "the header carries the value");
        assert_eq!(header.version(), old);
        let (_, stored) = b.inner.engine.remove(&b"k"[..]).unwrap();
        assert!(stored.value.is_unique(), "the stored value is shared with the header");
        drop(header);
        assert_eq!(b.get("k"), None);
        // And with the flag cleared again, reads on this thread get values.
        b.apply("k", Record::live(old, Bytes::from(vec![2; 100]), None)).unwrap();
        assert_eq!(b.get("k"), Some(Bytes::from(vec![2; 100])));
    }

    /// `admissible_weight` is exactly the engine's limit: an entry of that weight is stored, one
    /// unit heavier is dropped without a word. Bucket creation relies on it to guarantee every
    /// shard can hold the largest allowed entry; if a quick_cache upgrade moves that line, this
    /// fails instead of production losing writes.
    #[test]
    fn admissible_weight_matches_the_engine() {
        for max_bytes in [4096u64, 1 << 20, 64 << 20] {
            let b = bucket(BucketConfig::builder("b").max_bytes(max_bytes).build().unwrap());
            let engine = &b.inner.engine;
            let limit = admissible_weight(engine.shard_capacity());
            let value_len = |weight: u64| (weight - ENTRY_OVERHEAD - 1) as usize; // key "k"
            let fits = Slot::from_record(Record::live(
                Timestamp::default(),
                Bytes::from(vec![0; value_len(limit)]),
                None,
            ));
            engine.insert(Key::from(&b"k"[..]), fits);
            assert!(engine.peek(&b"k"[..]).is_some(), "max_bytes={max_bytes}");
            let over = Slot::from_record(Record::live(
                Timestamp::default(),
                Bytes::from(vec![0; value_len(limit + 1)]),
                None,
            ));
            engine.insert(Key::from(&b"j"[..]), over);
            assert!(engine.peek(&b"j"[..]).is_none(), "engine drops heavier entries silently");
        }
    }

    #[test]
    fn shard_plan_respects_the_heaviest_entry() {
        assert_eq!(plan_shards(1 << 20, 600_000, 1 << 20), 1);
        assert!(plan_shards(1 << 30, 1 << 20, 1 << 22) > 1);
        assert_eq!(plan_shards(1_000, 1, 1_000), 2.min(plan_shards(1_000, 1, 1_000)));
    }
}
