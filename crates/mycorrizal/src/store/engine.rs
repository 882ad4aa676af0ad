//! The store's engine: a bounded, sharded map from keys to packed records, evicting by
//! S3-FIFO.
//!
//! # Why our own engine
//!
//! The engine was quick_cache until its per-entry memory became the gap to Redis: an entry
//! there is a slab slot holding the key, the record header and a `Bytes` (96 bytes), the value
//! sits in an allocation of its own, and a `Bytes` that was ever cloned (every replicated
//! write clones its record) carries a third allocation for its reference count. That is 251
//! bytes resident per 100-byte value, against Redis' 184 (docs/BENCHMARKS.md).
//!
//! Here an entry is **one allocation**, [`Packed`]: a reference count, the record header, key
//! and value back to back. Around it a shard keeps a 16-byte slot, a 4-byte place in an
//! eviction queue and a 4-byte mark in the hash table (the slot's index and the entry's
//! eviction state: a read records itself in the line its lookup loaded). That is about 175
//! bytes per 100-byte entry in the same benchmark.
//!
//! A read does not copy the value: it increments the entry's count, in the cache line the key
//! comparison loaded, and the bucket hands the entry out as a [`Value`](super::Value). Any
//! allocation per read (a copy, or a `Bytes` owner) made a read of random keys 25-40 % slower
//! than quick_cache's; docs/BENCHMARKS.md has the measurements. A value read keeps its entry
//! allocated, evicted or not, until the last handle to it is dropped.
//!
//! # Eviction: S3-FIFO
//!
//! (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023.) A new key
//! enters a small FIFO (a tenth of the shard's weight); a key read again before it leaves that
//! queue moves on to the main FIFO, the others are evicted and remembered, by hash only, in a
//! ghost list. A key inserted again while its hash is a ghost goes straight to the main queue.
//! The main queue gives each entry as many second chances as it was read (at most 3). One-off
//! keys (a scan) pass through the small queue without flushing the working set in the main one.
//!
//! Writes evict *before* they admit, so a value just written stays readable until something
//! else is written to the shard.
//!
//! # Concurrency
//!
//! One `RwLock` per shard, on cache lines of its own. Reads take it shared, record their read
//! in the entry's table mark (for eviction) and in the shard's `found` count (the bucket's
//! hits), and take a reference to the entry; writes take it exclusively. Nothing is allocated
//! or freed under a lock that could be done outside it: packing happens before, what a write
//! evicts or replaces is handed back to be dropped after, and a reader drops its reference
//! after.

use std::{
    collections::VecDeque,
    hash::BuildHasher,
    sync::{
        RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
};

use hashbrown::HashTable;

pub(crate) use super::packed::{Header, Packed};
use crate::sync::{read, write};

/// Bytes charged per entry on top of key and value in byte-bounded buckets, so `max_bytes`
/// tracks real memory: the packed header (23), the allocator's header and rounding (8 + 8 on
/// average), the slot (16), the queue place (4) and the hash table's mark (4 bytes and a
/// control byte a bucket, at 44–87% load).
pub const ENTRY_OVERHEAD: u64 = 70;

/// Charges entries against a bucket's capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Weigher {
    /// Every entry weighs 1 (an entry-bounded bucket).
    Entries,
    /// An entry weighs its key and value plus [`ENTRY_OVERHEAD`], and at least `floor`
    /// (`max_bytes / max_entries` when both bounds apply).
    Bytes { floor: u64 },
}

impl Weigher {
    /// The weight of an entry of `size` key and value bytes.
    #[inline]
    pub(crate) fn weight_of(self, size: u64) -> u64 {
        match self {
            Weigher::Entries => 1,
            Weigher::Bytes { floor } => (size + ENTRY_OVERHEAD).max(floor),
        }
    }
}

/// What a write replaced and what it evicted; dropped by the caller after the shard's lock is
/// released.
#[derive(Default)]
pub(crate) struct Inserted {
    /// The entry the key held before.
    pub(crate) replaced: Option<Packed>,
    /// Entries evicted to make room (or the written entry itself, were it heavier than a shard:
    /// buckets refuse such writes before they get here).
    pub(crate) evicted: Vec<Packed>,
}

/// A table entry: bits 0..29 the slot index, bit 29 [`IN_MAIN`], bits 30..32 the entry's
/// reads ([`FREQ_SHIFT`]). Kept in the table so that a read's hit lands in the cache line the
/// lookup has already loaded.
const INDEX: u32 = (1 << 29) - 1;
/// The entry is in the main queue (else the small one).
const IN_MAIN: u32 = 1 << 29;
/// Reads since the entry entered its queue or was last spared, at most [`MAX_FREQ`].
const FREQ_SHIFT: u32 = 30;
const MAX_FREQ: u32 = 3;
/// Entries a scan copies out of a shard per read lock.
const SCAN_CHUNK: usize = 256;

#[inline]
fn freq(mark: u32) -> u32 {
    mark >> FREQ_SHIFT
}

/// The engine: `shards` independently locked parts, a key's shard chosen by its hash.
pub(crate) struct Engine {
    shards: Box<[Padded]>,
    /// Per-engine seed of the key hash, so the layout cannot be predicted from outside.
    seed: u64,
    shard_mask: u64,
    shard_capacity: u64,
    weigher: Weigher,
}

/// A shard's lock and data on cache lines of their own: every read writes the lock word, and
/// a neighbouring shard's readers would otherwise invalidate this shard's line with theirs.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// One shard. Every slot index is in exactly one of `small`, `main` and `free`; a slot in a
/// queue whose entry was removed is `None` ("dead") until the queue reaches it.
///
/// `repr(C)` keeps `found` first, in the cache line of the lock word that every read has just
/// written.
#[derive(Default)]
#[repr(C)]
struct Shard {
    /// Reads that found an entry ([`Engine::get`]), the bucket's hits before it subtracts the
    /// tombstones and expired values among them. Counted here rather than in a counter of its
    /// own, because this line is already this thread's: a separate counter's increment made a
    /// read of random keys 20-30 % slower (docs/BENCHMARKS.md).
    found: AtomicU64,
    /// Marks (slot index and eviction state), hashed by their entry's key. Atomic so that
    /// reads, under the shared lock, can count themselves.
    table: HashTable<AtomicU32>,
    slots: Vec<Option<Packed>>,
    small: VecDeque<u32>,
    main: VecDeque<u32>,
    free: Vec<u32>,
    ghost: Ghost,
    small_weight: u64,
    main_weight: u64,
    /// Dead slots still in a queue.
    dead: usize,
}

impl Engine {
    /// An engine of `shards` (a power of two) shards sharing `capacity` by weight.
    pub(crate) fn new(shards: usize, capacity: u64, weigher: Weigher) -> Engine {
        assert!(shards.is_power_of_two(), "shard count {shards} is not a power of two");
        Engine {
            shards: (0..shards).map(|_| Padded(RwLock::new(Shard::default()))).collect(),
            seed: std::hash::RandomState::new().hash_one(0x6d79_636f_u64),
            shard_mask: shards as u64 - 1,
            shard_capacity: capacity.div_ceil(shards as u64).max(1),
            weigher,
        }
    }

    /// The weight each shard may hold; the heaviest entry the engine stores.
    pub(crate) fn shard_capacity(&self) -> u64 {
        self.shard_capacity
    }

    /// The key's hash: low bits pick the table bucket, top bits tag it, bits 40.. the shard.
    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[((hash >> 40) & self.shard_mask) as usize].0
    }

    #[inline]
    fn weight(&self, p: &Packed) -> u64 {
        self.weigher.weight_of(p.size() as u64)
    }

    /// Runs `f` on the entry of `key`, counts the read toward keeping it, and counts it in
    /// [`Engine::found`].
    #[inline]
    pub(crate) fn get<T>(&self, key: &[u8], f: impl FnOnce(&Packed) -> T) -> Option<T> {
        let hash = self.hash(key);
        let shard = read(self.shard(hash));
        let mark = shard.mark(hash, key)?;
        shard.found.fetch_add(1, Relaxed);
        let m = mark.load(Relaxed);
        if freq(m) < MAX_FREQ {
            // A lost increment between two racing readers only costs a second chance.
            mark.store(m + (1 << FREQ_SHIFT), Relaxed);
        }
        shard.slots[(m & INDEX) as usize].as_ref().map(f)
    }

    /// Runs `f` on the entry of `key`, without counting a read.
    #[inline]
    pub(crate) fn peek<T>(&self, key: &[u8], f: impl FnOnce(&Packed) -> T) -> Option<T> {
        let hash = self.hash(key);
        let shard = read(self.shard(hash));
        let m = shard.mark(hash, key)?.load(Relaxed);
        shard.slots[(m & INDEX) as usize].as_ref().map(f)
    }

    /// Stores `entry`, replacing what its key held, evicting others first if the shard would
    /// be over its weight.
    pub(crate) fn insert(&self, entry: Packed) -> Inserted {
        let hash = self.hash(entry.key());
        let weight = self.weight(&entry);
        let cap = self.shard_capacity;
        let mut shard = write(self.shard(hash));
        let mut out = Inserted::default();
        let existing = shard.mark(hash, entry.key()).map(|m| m.load(Relaxed));
        if weight > cap {
            if existing.is_some() {
                out.replaced = shard.remove(hash, entry.key(), self, |_| true);
            }
            out.evicted.push(entry);
            return out;
        }
        let Some(m) = existing else {
            shard.evict_until(cap - weight, cap, self, &mut out.evicted);
            let in_main = shard.ghost.take(hash);
            shard.admit(hash, entry, weight, in_main, self);
            return out;
        };
        let i = (m & INDEX) as usize;
        let old = shard.slots[i].as_ref().map_or(0, |p| self.weight(p));
        if shard.weight() - old + weight <= cap {
            // In place: the entry keeps its queue position and its reads.
            let queue =
                if m & IN_MAIN != 0 { &mut shard.main_weight } else { &mut shard.small_weight };
            *queue = *queue - old + weight;
            out.replaced = shard.slots[i].replace(entry);
            return out;
        }
        // Grown past what the shard holds: make room as for a new entry, keeping the replaced
        // one's queue (a frequently read entry stays in the main queue).
        out.replaced = shard.remove(hash, entry.key(), self, |_| true);
        shard.evict_until(cap - weight, cap, self, &mut out.evicted);
        shard.admit(hash, entry, weight, m & IN_MAIN != 0, self);
        out
    }

    /// Removes the entry of `key` if `remove` says so, given its header.
    pub(crate) fn remove_if(
        &self,
        key: &[u8],
        remove: impl FnOnce(Header) -> bool,
    ) -> Option<Packed> {
        let hash = self.hash(key);
        write(self.shard(hash)).remove(hash, key, self, |p| remove(p.header()))
    }

    /// Entries stored.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.0).table.len()).sum()
    }

    /// Reads by [`Engine::get`] that found an entry, since the engine was made.
    pub(crate) fn found(&self) -> u64 {
        self.shards.iter().map(|s| read(&s.0).found.load(Relaxed)).sum()
    }

    /// Every entry, mapped by `f`, a chunk of one shard per read lock: a concurrent write may
    /// or may not be seen, and no entry is seen twice unless it is removed and written again
    /// during the scan. `f` runs outside the lock, on shared handles taken under it.
    pub(crate) fn iter<T, F: FnMut(&Packed) -> T>(&self, f: F) -> Iter<'_, T, F> {
        let chunk = Vec::new().into_iter();
        Iter { engine: self, shard: 0, slot: 0, chunk, f, _out: std::marker::PhantomData }
    }

    #[cfg(test)]
    fn check(&self) {
        for s in self.shards.iter() {
            read(&s.0).check(self);
        }
    }
}

impl Shard {
    /// The mark of `key`'s entry.
    #[inline]
    fn mark(&self, hash: u64, key: &[u8]) -> Option<&AtomicU32> {
        let slots = &self.slots;
        self.table.find(hash, |m| holds(slots, m, key))
    }

    /// The mark of the entry in slot `i`, whose key hashes to `hash`.
    fn mark_of_slot(&self, hash: u64, i: u32) -> Option<&AtomicU32> {
        self.table.find(hash, |m| m.load(Relaxed) & INDEX == i)
    }

    #[inline]
    fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    /// Stores `entry` in a free slot at the back of its queue. The caller has made room.
    fn admit(&mut self, hash: u64, entry: Packed, weight: u64, in_main: bool, e: &Engine) {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        debug_assert!(i <= INDEX, "a shard of more than 2^29 slots");
        let slots = &self.slots;
        let mark = if in_main { i | IN_MAIN } else { i };
        self.table.insert_unique(hash, AtomicU32::new(mark), |m| {
            slots[(m.load(Relaxed) & INDEX) as usize].as_ref().map_or(0, |p| e.hash(p.key()))
        });
        if in_main {
            self.main.push_back(i);
            self.main_weight += weight;
        } else {
            self.small.push_back(i);
            self.small_weight += weight;
        }
    }

    /// Takes `key`'s entry out of the table and the weights, if `remove` says so; its slot stays
    /// in its queue, dead, until the queue reaches it. One probe finds, judges and removes.
    fn remove(
        &mut self,
        hash: u64,
        key: &[u8],
        e: &Engine,
        remove: impl FnOnce(&Packed) -> bool,
    ) -> Option<Packed> {
        let slots = &self.slots;
        let found = self.table.find_entry(hash, |m| holds(slots, m, key)).ok()?;
        let i = (found.get().load(Relaxed) & INDEX) as usize;
        if !slots[i].as_ref().is_some_and(remove) {
            return None;
        }
        let m = found.remove().0.into_inner();
        let entry = self.slots[(m & INDEX) as usize].take()?;
        let w = e.weight(&entry);
        if m & IN_MAIN != 0 {
            self.main_weight -= w;
        } else {
            self.small_weight -= w;
        }
        self.dead += 1;
        self.compact();
        Some(entry)
    }

    /// Once dead slots outnumber live entries, takes them out of the queues and frees them, so
    /// deletes and expiries without eviction pressure cannot grow a shard without bound. The
    /// O(entries) pass is paid for by the removals that made it necessary.
    fn compact(&mut self) {
        if self.dead <= 64 || self.dead <= self.table.len() {
            return;
        }
        let (slots, free) = (&self.slots, &mut self.free);
        let mut live = |i: &u32| {
            let alive = slots[*i as usize].is_some();
            if !alive {
                free.push(*i);
            }
            alive
        };
        self.small.retain(&mut live);
        self.main.retain(&mut live);
        self.dead = 0;
    }

    /// Evicts until the shard weighs at most `limit`.
    fn evict_until(&mut self, limit: u64, cap: u64, e: &Engine, out: &mut Vec<Packed>) {
        while self.weight() > limit {
            let from_small = self.small_weight > cap / 10 || self.main_weight == 0;
            let progressed =
                if from_small { self.evict_small(e, out) } else { self.evict_main(e, out) };
            if !progressed {
                debug_assert!(false, "shard weighs {} with empty queues", self.weight());
                break;
            }
        }
    }

    /// The next live slot of a queue, with its entry's hash, weight and mark; dead slots met
    /// on the way are freed. `None` when the queue is empty.
    fn pop(&mut self, main: bool, e: &Engine) -> Option<(u32, u64, u64, u32)> {
        loop {
            let queue = if main { &mut self.main } else { &mut self.small };
            let i = queue.pop_front()?;
            let Some(p) = self.slots[i as usize].as_ref() else {
                self.free.push(i);
                self.dead -= 1;
                continue;
            };
            let (hash, weight) = (e.hash(p.key()), e.weight(p));
            let mark = self.mark_of_slot(hash, i).map_or(0, |m| m.load(Relaxed));
            return Some((i, hash, weight, mark));
        }
    }

    /// The small queue's oldest entry: read since it came in, it moves to the main queue;
    /// otherwise it is evicted and its hash becomes a ghost.
    fn evict_small(&mut self, e: &Engine, out: &mut Vec<Packed>) -> bool {
        let Some((i, hash, w, mark)) = self.pop(false, e) else { return false };
        self.small_weight -= w;
        if freq(mark) > 0 {
            if let Some(m) = self.mark_of_slot(hash, i) {
                m.store(i | IN_MAIN, Relaxed);
            }
            self.main.push_back(i);
            self.main_weight += w;
        } else {
            self.ghost.add(hash, self.table.len());
            self.evict_slot(hash, i, out);
        }
        true
    }

    /// The main queue's oldest entry: read since it was last spared, it is spared again with
    /// one read less; otherwise it is evicted.
    fn evict_main(&mut self, e: &Engine, out: &mut Vec<Packed>) -> bool {
        let Some((i, hash, w, mark)) = self.pop(true, e) else { return false };
        if freq(mark) > 0 {
            if let Some(m) = self.mark_of_slot(hash, i) {
                m.store(mark - (1 << FREQ_SHIFT), Relaxed);
            }
            self.main.push_back(i);
        } else {
            self.main_weight -= w;
            self.evict_slot(hash, i, out);
        }
        true
    }

    /// Frees slot `i`, already out of its queue and its weight.
    fn evict_slot(&mut self, hash: u64, i: u32, out: &mut Vec<Packed>) {
        if let Ok(found) = self.table.find_entry(hash, |m| m.load(Relaxed) & INDEX == i) {
            found.remove();
        }
        out.extend(self.slots[i as usize].take());
        self.free.push(i);
    }

    /// Checks the shard's invariants (tests).
    #[cfg(test)]
    fn check(&self, e: &Engine) {
        let mut seen = vec![0u8; self.slots.len()];
        for &i in self.small.iter().chain(&self.main).chain(&self.free) {
            seen[i as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1), "a slot is in no queue or in two");
        let live = self.slots.iter().filter(|s| s.is_some()).count();
        assert_eq!(live, self.table.len(), "slots and table disagree");
        for &i in &self.free {
            assert!(self.slots[i as usize].is_none(), "a free slot holds an entry");
        }
        let dead =
            self.small.iter().chain(&self.main).filter(|&&i| self.slots[i as usize].is_none());
        assert_eq!(dead.count(), self.dead);
        let weigh = |q: &VecDeque<u32>| -> u64 {
            q.iter().filter_map(|&i| self.slots[i as usize].as_ref()).map(|p| e.weight(p)).sum()
        };
        assert_eq!(weigh(&self.small), self.small_weight);
        assert_eq!(weigh(&self.main), self.main_weight);
        for (queue, in_main) in [(&self.small, 0), (&self.main, IN_MAIN)] {
            for &i in queue.iter().filter(|&&i| self.slots[i as usize].is_some()) {
                let p = self.slots[i as usize].as_ref().expect("live");
                let m = self.mark(e.hash(p.key()), p.key()).expect("in the table").load(Relaxed);
                assert_eq!((m & INDEX, m & IN_MAIN), (i, in_main), "a mark disagrees");
            }
        }
        assert!(self.weight() <= e.shard_capacity, "a shard is over its capacity");
    }
}

/// Whether the mark `m` points at the entry of `key`: the table's one key comparison.
#[inline]
fn holds(slots: &[Option<Packed>], m: &AtomicU32, key: &[u8]) -> bool {
    slots[(m.load(Relaxed) & INDEX) as usize].as_ref().is_some_and(|p| p.key() == key)
}

/// Hashes of keys recently evicted from a small queue, oldest first; at most as many as the
/// shard holds entries.
#[derive(Default)]
struct Ghost {
    order: VecDeque<u64>,
    /// The same hashes, for lookups. A hash taken out early (its key came back) may still be in
    /// `order`; it then leaves `order` later than it would have, and nothing else.
    set: HashTable<u64>,
}

impl Ghost {
    fn add(&mut self, hash: u64, bound: usize) {
        while self.order.len() >= bound.max(16) {
            let Some(old) = self.order.pop_front() else { break };
            if let Ok(found) = self.set.find_entry(old, |&h| h == old) {
                found.remove();
            }
        }
        if self.set.find(hash, |&h| h == hash).is_none() {
            self.set.insert_unique(hash, hash, |&h| h);
            self.order.push_back(hash);
        }
    }

    /// Whether `hash` was a ghost (it no longer is).
    fn take(&mut self, hash: u64) -> bool {
        match self.set.find_entry(hash, |&h| h == hash) {
            Ok(found) => {
                found.remove();
                true
            }
            Err(_) => false,
        }
    }
}

/// See [`Engine::iter`].
pub(crate) struct Iter<'a, T, F> {
    engine: &'a Engine,
    shard: usize,
    slot: usize,
    chunk: std::vec::IntoIter<Packed>,
    f: F,
    _out: std::marker::PhantomData<fn() -> T>,
}

impl<T, F: FnMut(&Packed) -> T> Iterator for Iter<'_, T, F> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(p) = self.chunk.next() {
                return Some((self.f)(&p));
            }
            let shard = read(&self.engine.shards.get(self.shard)?.0);
            let mut chunk = Vec::with_capacity(SCAN_CHUNK);
            while chunk.len() < SCAN_CHUNK && self.slot < shard.slots.len() {
                if let Some(p) = &shard.slots[self.slot] {
                    chunk.push(p.clone());
                }
                self.slot += 1;
            }
            if self.slot >= shard.slots.len() {
                self.shard += 1;
                self.slot = 0;
            }
            self.chunk = chunk.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mycorrizal_core::{HlcTime, NodeTag, Timestamp};

    fn header(time: u64) -> Header {
        Header::new(Timestamp { time: HlcTime::from_raw(time), node: NodeTag(7) }, None, false)
    }

    fn put(e: &Engine, key: &[u8], value: &[u8]) -> Inserted {
        e.insert(Packed::new(key, header(1), value))
    }

    fn has(e: &Engine, key: &[u8]) -> bool {
        e.peek(key, |_| ()).is_some()
    }

    #[test]
    fn writes_replace_read_and_remove() {
        let e = Engine::new(4, 1000, Weigher::Entries);
        assert!(put(&e, b"a", b"1").replaced.is_none());
        let again = put(&e, b"a", b"2");
        assert_eq!(again.replaced.map(|p| p.value().to_vec()), Some(b"1".to_vec()));
        assert_eq!(e.get(b"a", |p| p.value().to_vec()), Some(b"2".to_vec()));
        assert_eq!(e.len(), 1);
        assert!(e.remove_if(b"a", |h| h.version().time.to_raw() == 2).is_none(), "kept");
        assert!(e.remove_if(b"a", |_| true).is_some());
        assert!(!has(&e, b"a") && e.len() == 0);
        e.check();
    }

    /// The bound holds under any mix of writes, reads and removals, and so do the shard's
    /// books: every slot in one queue, weights summed right, the table pointing at entries.
    #[test]
    fn capacity_and_invariants_hold_under_random_traffic() {
        let mut rng = mycorrizal_core::rng::SplitMix64::new(42);
        for weigher in
            [Weigher::Entries, Weigher::Bytes { floor: 0 }, Weigher::Bytes { floor: 150 }]
        {
            let cap = if matches!(weigher, Weigher::Entries) { 200 } else { 40_000 };
            let e = Engine::new(2, cap, weigher);
            for step in 0..20_000u64 {
                let key = (rng.next_u64() % 600).to_le_bytes();
                match rng.next_u64() % 10 {
                    0..=4 => {
                        let len = (rng.next_u64() % 300) as usize;
                        let ins = put(&e, &key, &vec![step as u8; len]);
                        assert!(ins.evicted.iter().all(|p| p.key() != key), "evicted the write");
                        assert!(has(&e, &key), "a value just written is readable");
                    }
                    5..=8 => {
                        e.get(&key, |_| ());
                    }
                    _ => {
                        e.remove_if(&key, |_| true);
                    }
                }
                if step % 1000 == 0 {
                    e.check();
                }
            }
            e.check();
        }
    }

    /// S3-FIFO's point: a working set read again and again survives a pass over many keys read
    /// once, which an LRU of the same size would lose entirely.
    #[test]
    fn a_one_off_scan_does_not_flush_the_working_set() {
        let e = Engine::new(1, 1000, Weigher::Entries);
        let hot: Vec<[u8; 8]> = (0..500u64).map(|i| i.to_le_bytes()).collect();
        for k in &hot {
            put(&e, k, b"v");
        }
        for _ in 0..2 {
            for k in &hot {
                e.get(k, |_| ());
            }
        }
        for i in 1_000_000..1_010_000u64 {
            put(&e, &i.to_le_bytes(), b"v");
        }
        let kept = hot.iter().filter(|k| has(&e, &k[..])).count();
        assert_eq!(kept, hot.len(), "the scan evicted {} hot keys", hot.len() - kept);
        e.check();
    }

    /// A key evicted from the small queue unread and written again soon after was wanted
    /// after all: it goes to the main queue, and a later flood of new keys does not evict it.
    #[test]
    fn a_ghost_hit_enters_the_main_queue() {
        let e = Engine::new(1, 100, Weigher::Entries);
        for i in 0..150u64 {
            put(&e, &i.to_le_bytes(), b"v");
        }
        assert!(!has(&e, &0u64.to_le_bytes()), "key 0 was evicted");
        put(&e, &0u64.to_le_bytes(), b"v");
        for i in 1000..1300u64 {
            put(&e, &i.to_le_bytes(), b"v");
        }
        assert!(has(&e, &0u64.to_le_bytes()), "the ghost hit was evicted by one-off keys");
        e.check();
    }

    /// Removals without eviction pressure (expiry, deletes) cannot grow a shard: dead slots
    /// are reclaimed once they outnumber the live ones.
    #[test]
    fn removals_without_eviction_leave_no_growth() {
        let e = Engine::new(1, 1_000_000, Weigher::Entries);
        for round in 0..50u64 {
            for i in 0..1000u64 {
                put(&e, &(round * 1000 + i).to_le_bytes(), b"v");
            }
            for i in 0..1000u64 {
                assert!(e.remove_if(&(round * 1000 + i).to_le_bytes(), |_| true).is_some());
            }
        }
        let shard = read(&e.shards[0].0);
        assert!(shard.slots.len() <= 2_100, "{} slots for 0 entries", shard.slots.len());
        assert!(shard.small.len() + shard.main.len() <= 1_100);
        drop(shard);
        e.check();
    }

    #[test]
    fn an_entry_heavier_than_a_shard_is_refused_and_handed_back() {
        let e = Engine::new(1, 1000, Weigher::Bytes { floor: 0 });
        let fits = 1000 - ENTRY_OVERHEAD as usize - 1;
        assert!(put(&e, b"k", &vec![0; fits]).evicted.is_empty());
        assert!(has(&e, b"k"));
        let over = put(&e, b"k", &vec![0; fits + 1]);
        assert_eq!(over.evicted.len(), 1, "the refused write is handed back");
        assert!(over.replaced.is_some(), "and the key's old value is gone");
        assert!(!has(&e, b"k"));
        e.check();
    }

    /// Readers, writers, removers and a scanner on four threads at once, on few keys so they
    /// collide: whatever the interleaving, nothing panics, a read sees a whole entry (its value
    /// is the one its header says was written), and the books balance afterwards.
    #[test]
    fn concurrent_traffic_keeps_entries_whole_and_books_balanced() {
        let e = Engine::new(2, 64 * 300, Weigher::Bytes { floor: 0 });
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let e = &e;
                scope.spawn(move || {
                    let mut rng = mycorrizal_core::rng::SplitMix64::new(t);
                    for _ in 0..20_000 {
                        let key = (rng.next_u64() % 200).to_le_bytes();
                        match rng.next_u64() % 8 {
                            0..=2 => {
                                // The value repeats its version's byte: a torn entry would not.
                                let time = rng.next_u64() % 250 + 1;
                                let value = vec![time as u8; (time % 120) as usize];
                                e.insert(Packed::new(&key, header(time), &value));
                            }
                            3 => {
                                e.remove_if(&key, |h| h.version().time.to_raw() % 2 == 0);
                            }
                            4 => {
                                assert!(e.iter(|p| p.size()).count() <= 200);
                            }
                            _ => {
                                e.get(&key, |p| {
                                    let time = p.header().version().time.to_raw();
                                    assert_eq!(p.key(), key);
                                    assert_eq!(p.value().len() as u64, time % 120);
                                    assert!(p.value().iter().all(|&b| u64::from(b) == time));
                                });
                            }
                        }
                    }
                });
            }
        });
        e.check();
    }

    #[test]
    fn iteration_sees_every_entry_once_across_chunks_and_shards() {
        let e = Engine::new(8, 100_000, Weigher::Entries);
        for i in 0..5_000u64 {
            put(&e, &i.to_le_bytes(), b"v");
        }
        for i in (0..5_000u64).step_by(3) {
            e.remove_if(&i.to_le_bytes(), |_| true);
        }
        let mut seen: Vec<u64> =
            e.iter(|p| u64::from_le_bytes(p.key().try_into().unwrap())).collect();
        seen.sort_unstable();
        let expected: Vec<u64> = (0..5_000).filter(|i| i % 3 != 0).collect();
        assert_eq!(seen, expected);
    }
}
