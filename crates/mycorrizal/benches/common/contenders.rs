//! Contenders shared by the `store` (criterion) and `store_ratio` (interleaved) benches: our
//! bucket, our bucket with TTLs, raw quick_cache, moka (LRU policy) and `Mutex<HashMap>`, behind
//! one trait, plus the key set and the worker threads that drive them.

#![allow(dead_code)] // each bench uses a different subset

use std::{
    collections::HashMap,
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    store::{Bucket, BucketConfig, Store, StoreConfig},
};

pub const KEYS: usize = 100_000;
pub const VALUE_LEN: usize = 100;

/// The operations under test, implemented by every contender. Every contender stores its own
/// copy of the key, as a server taking keys from request buffers would (our bucket copies
/// internally); storing clones of the bench's key list would let the baselines compare keys in
/// memory the bench loop has just touched.
pub trait Contender: Send + Sync + 'static {
    /// The length of the value found. The value each contender hands out (a `Bytes` clone,
    /// our `Value`) is dropped here, as a caller would drop it after use.
    fn get(&self, key: &Bytes) -> Option<usize>;
    fn set(&self, key: &Bytes, value: Bytes);
}

struct Ours(Bucket);
impl Contender for Ours {
    fn get(&self, key: &Bytes) -> Option<usize> {
        self.0.get(key).map(|v| v.len())
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.set(key, value).unwrap();
    }
}

/// Our bucket with a TTL on every entry: reads then also consult the clock.
struct OursTtl(Bucket);
impl Contender for OursTtl {
    fn get(&self, key: &Bytes) -> Option<usize> {
        self.0.get(key).map(|v| v.len())
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.set_with_ttl(key, value, Duration::from_secs(3600)).unwrap();
    }
}

struct RawQuickCache(quick_cache::sync::Cache<Bytes, Bytes>);
impl Contender for RawQuickCache {
    fn get(&self, key: &Bytes) -> Option<usize> {
        self.0.get(&key[..]).map(|v| v.len())
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.insert(Bytes::copy_from_slice(key), value);
    }
}

struct Moka(moka::sync::Cache<Bytes, Bytes>);
impl Contender for Moka {
    fn get(&self, key: &Bytes) -> Option<usize> {
        self.0.get(key).map(|v| v.len())
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.insert(Bytes::copy_from_slice(key), value);
    }
}

struct MutexMap(Mutex<HashMap<Bytes, Bytes>>);
impl Contender for MutexMap {
    fn get(&self, key: &Bytes) -> Option<usize> {
        self.0.lock().unwrap().get(key).cloned().map(|v| v.len())
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.lock().unwrap().insert(Bytes::copy_from_slice(key), value);
    }
}

/// One benchmarked operation: contender, key, value.
pub type Op = fn(&dyn Contender, &Bytes, &Bytes);

pub fn keys() -> Vec<Bytes> {
    (0..KEYS).map(|i| Bytes::from(format!("user:{i:08}"))).collect()
}

pub const CONTENDERS: [&str; 5] =
    ["mycorrizal", "mycorrizal+ttl", "quick_cache", "moka_lru", "mutex_hashmap"];

/// Builds one contender and fills it with every key. Each contender is built right before it
/// is measured and dropped after, so each one's 100k entries land on freshly recycled heap
/// pages: filling all five up front made whichever one got unlucky pages (TLB misses on random
/// access) up to 2x slower from run to run.
pub fn contender(name: &str, keys: &[Bytes], value: &Bytes) -> Arc<dyn Contender> {
    // Capacity 2x the working set so every get is a hit for every contender.
    let cap = 2 * KEYS as u64;
    let bucket = |name: &str| {
        let store = Store::new(StoreConfig::new(NodeId::new("bench").unwrap()));
        store.create_bucket(BucketConfig::builder(name).max_entries(cap).build().unwrap()).unwrap()
    };
    let c: Arc<dyn Contender> = match name {
        "mycorrizal" => Arc::new(Ours(bucket("plain"))),
        "mycorrizal+ttl" => Arc::new(OursTtl(bucket("ttl"))),
        "quick_cache" => Arc::new(RawQuickCache(quick_cache::sync::Cache::new(cap as usize))),
        "moka_lru" => Arc::new(Moka(
            moka::sync::Cache::builder()
                .max_capacity(cap)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        )),
        "mutex_hashmap" => Arc::new(MutexMap(Mutex::new(HashMap::with_capacity(KEYS)))),
        other => unreachable!("unknown contender {other}"),
    };
    // Every entry gets its own value allocation, as in real use: sharing one `Bytes` would make
    // every read bump the same reference count and measure that contention instead.
    for k in keys {
        c.set(k, Bytes::copy_from_slice(value));
    }
    c
}

/// What the worker threads run next.
struct Job {
    contender: Arc<dyn Contender>,
    iters: u64,
    op: Op,
}

/// Two worker threads that live for the whole benchmark, started together on every sample by a
/// barrier. Spawning threads per sample added scheduler placement noise to the short samples
/// criterion takes first.
pub struct Workers {
    job: Arc<Mutex<Option<Job>>>,
    start: Arc<Barrier>,
    end: Arc<Barrier>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub fn new(threads: usize, keys: &Arc<Vec<Bytes>>, value: &Bytes) -> Self {
        let job: Arc<Mutex<Option<Job>>> = Arc::new(Mutex::new(None));
        let start = Arc::new(Barrier::new(threads + 1));
        let end = Arc::new(Barrier::new(threads + 1));
        let handles = (0..threads)
            .map(|t| {
                let (job, start, end) = (job.clone(), start.clone(), end.clone());
                let (keys, value) = (keys.clone(), value.clone());
                std::thread::spawn(move || {
                    loop {
                        start.wait();
                        let next = job
                            .lock()
                            .unwrap()
                            .as_ref()
                            .map(|j| (j.contender.clone(), j.iters, j.op));
                        let Some((c, iters, op)) = next else { return };
                        walk(t, iters, &*c, &keys, op, &value);
                        end.wait();
                    }
                })
            })
            .collect();
        Workers { job, start, end, handles }
    }

    /// Runs `op` `iters` times on every worker; returns the wall time until all finished.
    pub fn run(&self, contender: &Arc<dyn Contender>, iters: u64, op: Op) -> Duration {
        *self.job.lock().unwrap() = Some(Job { contender: contender.clone(), iters, op });
        self.start.wait();
        let t = Instant::now();
        self.end.wait();
        let elapsed = t.elapsed();
        // Release the contender so it can be dropped before the next one is built.
        *self.job.lock().unwrap() = None;
        elapsed
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        *self.job.lock().unwrap() = None;
        self.start.wait();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Each thread walks the keys in its own scattered order.
#[inline]
pub fn walk(t: usize, iters: u64, c: &dyn Contender, keys: &[Bytes], op: Op, value: &Bytes) {
    let mut i = (t * 7919) % KEYS;
    for _ in 0..iters {
        op(c, &keys[i], value);
        i = (i + 40_503) % KEYS;
    }
}
