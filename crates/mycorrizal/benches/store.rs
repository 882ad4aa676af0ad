//! Side-by-side: our bucket `get` (hit) and `set` against raw quick_cache (our engine before
//! `store/engine.rs`), moka (LRU policy) and a `Mutex<HashMap>`, on the same 100k keys of
//! 100-byte values, with 1 and 2 threads. Throughput is reported in operations per second across all threads.
//!
//! `cargo bench -p mycorrizal --bench store`

#[path = "common/contenders.rs"]
mod contenders;

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use contenders::{CONTENDERS, Op, VALUE_LEN, Workers, contender, keys, walk};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let value = Bytes::from(vec![b'x'; VALUE_LEN]);
    let ops: [(&str, Op); 2] = [
        ("get_hit", |c, k, _| {
            black_box(c.get(k));
        }),
        ("set", |c, k, v| c.set(k, Bytes::copy_from_slice(v))),
    ];
    let workers = Workers::new(2, &keys, &value);
    for (op_name, op) in ops {
        for threads in [1usize, 2] {
            let mut group = c.benchmark_group(format!("{op_name}/{threads}t"));
            group.throughput(Throughput::Elements(threads as u64));
            group.measurement_time(Duration::from_secs(5));
            group.warm_up_time(Duration::from_secs(1));
            group.sample_size(40);
            for name in CONTENDERS {
                let contender = contender(name, &keys, &value);
                group.bench_with_input(BenchmarkId::from_parameter(name), &contender, |b, c| {
                    b.iter_custom(|iters| {
                        if threads == 1 {
                            // One thread runs on the bench thread itself: no handoff at all.
                            let t = Instant::now();
                            walk(0, iters, &**c, &keys, op, &value);
                            t.elapsed()
                        } else {
                            workers.run(c, iters, op)
                        }
                    });
                });
                drop(contender);
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
