//! The expiry index: which keys may have expired by a given time, without scanning a bucket.
//!
//! Every write with an expiry records `(slot, key)` where `slot = expires_at / granularity`. A
//! sweep at time `now` takes every slot that ended at or before `now` (so every record in it
//! has expired) and hands the keys back; the bucket then removes each one *only if the record
//! it holds now is expired*, so index records left behind by overwrites, deletes or evictions
//! are harmless. One sweep removes every due key of every slot (the bug in the original project
//! removed one key per bucket per pass).
//!
//! Memory stays bounded: those stale records are counted, and when the index holds more than
//! twice as many records as the bucket holds entries, the bucket rebuilds it from its entries.
//!
//! The index is striped by thread, not by key: any stripe may hold any key, so writers on
//! different threads never contend for the same lock.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use bytes::Bytes;

use crate::sync::lock;

const STRIPES: usize = 8;

type Wheel = BTreeMap<u64, Vec<Bytes>>;

pub(crate) struct ExpiryIndex {
    stripes: Box<[Mutex<Wheel>]>,
    granularity_ms: u64,
    records: AtomicUsize,
}

fn stripe_of_thread() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! { static INDEX: Cell<usize> = Cell::new(NEXT.fetch_add(1, Relaxed) % STRIPES); }
    INDEX.with(Cell::get)
}

impl ExpiryIndex {
    pub(crate) fn new(granularity_ms: u64) -> Self {
        ExpiryIndex {
            stripes: (0..STRIPES).map(|_| Mutex::new(Wheel::new())).collect(),
            granularity_ms: granularity_ms.max(1),
            records: AtomicUsize::new(0),
        }
    }

    /// The slot an expiry falls in.
    pub(crate) fn slot_of(&self, expires_at_ms: u64) -> u64 {
        expires_at_ms / self.granularity_ms
    }

    /// Records that `key` expires at `expires_at_ms`; returns the number of records held now.
    pub(crate) fn schedule(&self, key: Bytes, expires_at_ms: u64) -> usize {
        let slot = self.slot_of(expires_at_ms);
        lock(&self.stripes[stripe_of_thread()]).entry(slot).or_default().push(key);
        self.records.fetch_add(1, Relaxed) + 1
    }

    /// Removes and returns the keys of every slot that ended at or before `now_ms`.
    pub(crate) fn take_due(&self, now_ms: u64) -> Vec<Vec<Bytes>> {
        // Slot s covers [s * g, (s + 1) * g); it is due once (s + 1) * g <= now.
        let first_not_due = now_ms / self.granularity_ms;
        let mut due = Vec::new();
        for stripe in self.stripes.iter() {
            let mut wheel = lock(stripe);
            let later = wheel.split_off(&first_not_due);
            let taken = std::mem::replace(&mut *wheel, later);
            drop(wheel);
            due.extend(taken.into_values());
        }
        let n: usize = due.iter().map(Vec::len).sum();
        self.records.fetch_sub(n, Relaxed);
        due
    }

    /// Index records held, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.records.load(Relaxed)
    }

    /// Replaces the index with exactly `entries` (key, expiry) while holding every stripe, so
    /// no concurrent `schedule` is lost: it waits and lands in the rebuilt index.
    pub(crate) fn rebuild(&self, entries: impl Iterator<Item = (Bytes, u64)>) {
        let mut wheels: Vec<_> = self.stripes.iter().map(lock).collect();
        for wheel in wheels.iter_mut() {
            wheel.clear();
        }
        let mut n = 0;
        for (i, (key, at)) in entries.enumerate() {
            wheels[i % STRIPES].entry(self.slot_of(at)).or_default().push(key);
            n += 1;
        }
        self.records.store(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_slots_that_ended() {
        let idx = ExpiryIndex::new(1_000);
        idx.schedule(Bytes::from_static(b"a"), 1_500); // slot 1, due at 2000
        idx.schedule(Bytes::from_static(b"b"), 2_000); // slot 2, due at 3000
        idx.schedule(Bytes::from_static(b"c"), 1_999); // slot 1
        assert!(idx.take_due(1_999).is_empty());
        let due: Vec<_> = idx.take_due(2_000).concat();
        assert_eq!(due.len(), 2);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.take_due(10_000).concat(), vec![Bytes::from_static(b"b")]);
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn many_keys_in_one_slot_all_come_back() {
        let idx = ExpiryIndex::new(1_000);
        for i in 0..10_000u32 {
            idx.schedule(Bytes::from(i.to_be_bytes().to_vec()), 5_000);
        }
        assert_eq!(idx.take_due(6_000).concat().len(), 10_000);
    }

    #[test]
    fn rebuild_replaces_stale_records() {
        let idx = ExpiryIndex::new(10);
        for _ in 0..100 {
            idx.schedule(Bytes::from_static(b"k"), 50);
        }
        idx.rebuild([(Bytes::from_static(b"k"), 50)].into_iter());
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.take_due(60).concat().len(), 1);
    }
}
