//! Side-by-side: our bucket `get` (hit) and `set` against raw quick_cache (our engine), moka
//! (LRU policy) and a `Mutex<HashMap>`, on the same 100k keys of 100-byte values, with 1 and 2
//! threads. Throughput is reported in operations per second across all threads.
//!
//! `cargo bench -p mycorrizal --bench store`

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mycorrizal::{
    NodeId,
    store::{Bucket, BucketConfig, Store, StoreConfig},
};

const KEYS: usize = 100_000;
const VALUE_LEN: usize = 100;

/// The operations under test, implemented by every contender. Every contender stores its own
/// copy of the key, as a server taking keys from request buffers would (our bucket copies
/// internally); storing clones of the bench's key list would let the baselines compare keys in
/// memory the bench loop has just touched.
trait Contender: Send + Sync + 'static {
    fn get(&self, key: &Bytes) -> Option<Bytes>;
    fn set(&self, key: &Bytes, value: Bytes);
}

struct Ours(Bucket);
impl Contender for Ours {
    fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.0.get(key)
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.set(key, value).unwrap();
    }
}

/// Our bucket with a TTL on every entry: reads then also consult the clock.
struct OursTtl(Bucket);
impl Contender for OursTtl {
    fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.0.get(key)
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.set_with_ttl(key, value, Duration::from_secs(3600)).unwrap();
    }
}

struct RawQuickCache(quick_cache::sync::Cache<Bytes, Bytes>);
impl Contender for RawQuickCache {
    fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.0.get(&key[..])
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.insert(Bytes::copy_from_slice(key), value);
    }
}

struct Moka(moka::sync::Cache<Bytes, Bytes>);
impl Contender for Moka {
    fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.0.get(key)
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.insert(Bytes::copy_from_slice(key), value);
    }
}

struct MutexMap(Mutex<HashMap<Bytes, Bytes>>);
impl Contender for MutexMap {
    fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn set(&self, key: &Bytes, value: Bytes) {
        self.0.lock().unwrap().insert(Bytes::copy_from_slice(key), value);
    }
}

/// One benchmarked operation: contender, key, value.
type Op = fn(&dyn Contender, &Bytes, &Bytes);

fn keys() -> Vec<Bytes> {
    (0..KEYS).map(|i| Bytes::from(format!("user:{i:08}"))).collect()
}

fn contenders(keys: &[Bytes], value: &Bytes) -> Vec<(&'static str, Arc<dyn Contender>)> {
    // Capacity 2x the working set so every get is a hit for every contender.
    let store = Store::new(StoreConfig::new(NodeId::new("bench").unwrap()));
    let plain = BucketConfig::builder("plain").max_entries(2 * KEYS as u64).build().unwrap();
    let ttl = BucketConfig::builder("ttl").max_entries(2 * KEYS as u64).build().unwrap();
    let all: Vec<(&'static str, Arc<dyn Contender>)> = vec![
        ("mycorrizal", Arc::new(Ours(store.create_bucket(plain).unwrap()))),
        ("mycorrizal+ttl", Arc::new(OursTtl(store.create_bucket(ttl).unwrap()))),
        ("quick_cache", Arc::new(RawQuickCache(quick_cache::sync::Cache::new(2 * KEYS)))),
        (
            "moka_lru",
            Arc::new(Moka(
                moka::sync::Cache::builder()
                    .max_capacity(2 * KEYS as u64)
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .build(),
            )),
        ),
        ("mutex_hashmap", Arc::new(MutexMap(Mutex::new(HashMap::with_capacity(KEYS))))),
    ];
    // Every entry gets its own value allocation, as in real use: sharing one `Bytes` would make
    // every read bump the same reference count and measure that contention instead.
    for (_, c) in &all {
        for k in keys {
            c.set(k, Bytes::copy_from_slice(value));
        }
    }
    all
}

/// Runs `op` `iters` times on each of `threads` threads started together; returns wall time.
fn run_threads(
    threads: usize,
    iters: u64,
    contender: &Arc<dyn Contender>,
    keys: &Arc<Vec<Bytes>>,
    op: Op,
    value: &Bytes,
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (c, keys, barrier, value) =
                (contender.clone(), keys.clone(), barrier.clone(), value.clone());
            s.spawn(move || {
                // Each thread walks the keys in its own scattered order.
                let mut i = (t * 7919) % KEYS;
                barrier.wait();
                for _ in 0..iters {
                    op(&*c, &keys[i], &value);
                    i = (i + 40_503) % KEYS;
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Scoped threads are joined when the scope ends.
        start
    })
    .elapsed()
}

fn bench(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let value = Bytes::from(vec![b'x'; VALUE_LEN]);
    let all = contenders(&keys, &value);
    let ops: [(&str, Op); 2] = [
        ("get_hit", |c, k, _| {
            black_box(c.get(k));
        }),
        ("set", |c, k, v| c.set(k, Bytes::copy_from_slice(v))),
    ];
    for (op_name, op) in ops {
        for threads in [1usize, 2] {
            let mut group = c.benchmark_group(format!("{op_name}/{threads}t"));
            group.throughput(Throughput::Elements(threads as u64));
            group.measurement_time(Duration::from_secs(3));
            group.warm_up_time(Duration::from_secs(1));
            group.sample_size(30);
            for (name, contender) in &all {
                group.bench_with_input(
                    BenchmarkId::from_parameter(name),
                    contender,
                    |b, contender| {
                        b.iter_custom(|iters| {
                            run_threads(threads, iters, contender, &keys, op, &value)
                        });
                    },
                );
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
