//! Hit ratio of a bucket (the store engine's S3-FIFO policy) against an exact LRU of the same
//! capacity, on a seeded Zipf(0.99) trace over 100k keys, and on the same trace with one-off
//! scans mixed in (where LRU is known to suffer). Deterministic: same seed, same figures.
//!
//! `cargo bench -p mycorrizal --bench hit_ratio`

use std::{collections::HashMap, sync::Arc};

use mycorrizal::{
    NodeId,
    clock::ManualClock,
    core::rng::SplitMix64,
    store::{BucketConfig, Store, StoreConfig},
};

const UNIVERSE: usize = 100_000;
const REQUESTS: usize = 2_000_000;
const SEED: u64 = 0x5eed_2026;

/// Zipf(s) over ranks 0..n by inverse CDF on a precomputed table.
fn zipf_trace(n: usize, s: f64, len: usize, rng: &mut SplitMix64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for rank in 1..=n {
        acc += 1.0 / (rank as f64).powf(s);
        cdf.push(acc);
    }
    let total = acc;
    (0..len)
        .map(|_| {
            let u = rng.unit() * total;
            cdf.partition_point(|&c| c < u).min(n - 1) as u64
        })
        .collect()
}

/// Zipf trace with a scan of `scan_len` never-repeated keys inserted every `every` requests.
fn with_scans(base: &[u64], every: usize, scan_len: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(base.len() * 2);
    let mut next_scan_key = u64::MAX / 2;
    for (i, &k) in base.iter().enumerate() {
        if i % every == 0 && i > 0 {
            for _ in 0..scan_len {
                out.push(next_scan_key);
                next_scan_key += 1;
            }
        }
        out.push(k);
    }
    out
}

/// An exact LRU: hash map to slots of a doubly linked list kept in a vector.
struct Lru {
    cap: usize,
    map: HashMap<u64, usize>,
    key: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize, // most recent
    tail: usize, // least recent
}
const NIL: usize = usize::MAX;
impl Lru {
    fn new(cap: usize) -> Self {
        Lru {
            cap,
            map: HashMap::with_capacity(cap),
            key: vec![],
            prev: vec![],
            next: vec![],
            head: NIL,
            tail: NIL,
        }
    }
    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p != NIL {
            self.next[p] = n
        } else {
            self.head = n
        }
        if n != NIL { self.prev[n] = p } else { self.tail = p }
    }
    fn push_front(&mut self, i: usize) {
        self.prev[i] = NIL;
        self.next[i] = self.head;
        if self.head != NIL {
            self.prev[self.head] = i
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i
        }
    }
    /// Returns whether `k` was a hit; inserts it on a miss.
    fn access(&mut self, k: u64) -> bool {
        if let Some(&i) = self.map.get(&k) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.map.len() < self.cap {
            self.key.push(k);
            self.prev.push(NIL);
            self.next.push(NIL);
            self.key.len() - 1
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.map.remove(&self.key[victim]);
            self.key[victim] = k;
            victim
        };
        self.map.insert(k, i);
        self.push_front(i);
        false
    }
}

fn bucket_hit_ratio(trace: &[u64], capacity: usize) -> f64 {
    let store = Store::with_clock(
        StoreConfig::new(NodeId::new("bench").unwrap()),
        Arc::new(ManualClock::new(0)),
    );
    let bucket = store
        .create_bucket(BucketConfig::builder("zipf").max_entries(capacity as u64).build().unwrap())
        .unwrap();
    for &k in trace {
        let key = k.to_be_bytes();
        if bucket.get(key).is_none() {
            bucket.set(key, &b"v"[..]).unwrap();
        }
    }
    bucket.stats().hit_ratio()
}

fn lru_hit_ratio(trace: &[u64], capacity: usize) -> f64 {
    let mut lru = Lru::new(capacity);
    let hits = trace.iter().filter(|&&k| lru.access(k)).count();
    hits as f64 / trace.len() as f64
}

fn main() {
    // `cargo bench` passes flags such as `--bench`; this report takes none.
    let mut rng = SplitMix64::new(SEED);
    let zipf = zipf_trace(UNIVERSE, 0.99, REQUESTS, &mut rng);
    let scanned = with_scans(&zipf, 50_000, 20_000);
    println!("hit ratio, Zipf(0.99) over {UNIVERSE} keys, {REQUESTS} requests, seed {SEED:#x}");
    println!("{:<28} {:>10} {:>10} {:>10} {:>8}", "trace", "capacity", "bucket", "LRU", "ratio");
    for (name, trace) in [("zipf", &zipf), ("zipf+scans(20k every 50k)", &scanned)] {
        for pct in [1usize, 5, 10, 25] {
            let cap = UNIVERSE * pct / 100;
            let ours = bucket_hit_ratio(trace, cap);
            let lru = lru_hit_ratio(trace, cap);
            println!("{name:<28} {:>9}% {:>10.4} {:>10.4} {:>8.3}", pct, ours, lru, ours / lru);
        }
    }
}
