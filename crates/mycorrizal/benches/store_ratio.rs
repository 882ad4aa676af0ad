//! The same contenders as the `store` bench, measured *interleaved*: every round rebuilds all
//! five in a shuffled order, then measures each in a shuffled order, and ratios are taken
//! within the round. Noise on a shared machine (another tenant, frequency changes) then hits
//! ours and the baseline alike, instead of landing on whichever contender criterion happened to
//! be measuring. Reports the median over rounds of per-round ns/op and of per-round ratios.
//!
//! `cargo bench -p mycorrizal --bench store_ratio`

#[path = "common/contenders.rs"]
mod contenders;

use std::{collections::HashMap, hint::black_box, sync::Arc, time::Instant};

use bytes::Bytes;
use contenders::{CONTENDERS, Contender, Op, VALUE_LEN, Workers, contender, keys, walk};

const ROUNDS: usize = 15;
const OPS_PER_THREAD: u64 = 400_000;
const SEED: u64 = 0xbe9c_4a11;

fn shuffled<T: Copy>(items: &[T], rng: &mut u64) -> Vec<T> {
    let mut v = items.to_vec();
    for i in (1..v.len()).rev() {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        v.swap(i, (*rng % (i as u64 + 1)) as usize);
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench binary
    }
    let keys = Arc::new(keys());
    let value = Bytes::from(vec![b'x'; VALUE_LEN]);
    let workers = Workers::new(2, &keys, &value);
    let ops: [(&str, Op); 2] = [
        ("get (hit)", |c, k, _| {
            black_box(c.get(k));
        }),
        ("set", |c, k, v| c.set(k, Bytes::copy_from_slice(v))),
    ];
    let mut rng = SEED;
    // (op, threads, contender) -> ns/op per round
    let mut ns: HashMap<(usize, usize, &str), Vec<f64>> = HashMap::new();
    for round in 0..ROUNDS {
        let built: HashMap<&str, Arc<dyn Contender>> = shuffled(&CONTENDERS, &mut rng)
            .into_iter()
            .map(|n| (n, contender(n, &keys, &value)))
            .collect();
        for (oi, &(_, op)) in ops.iter().enumerate() {
            for threads in [1usize, 2] {
                for name in shuffled(&CONTENDERS, &mut rng) {
                    let c = &built[name];
                    let elapsed = if threads == 1 {
                        let t = Instant::now();
                        walk(0, OPS_PER_THREAD, &**c, &keys, op, &value);
                        t.elapsed()
                    } else {
                        workers.run(c, OPS_PER_THREAD, op)
                    };
                    let per_op =
                        elapsed.as_nanos() as f64 / (OPS_PER_THREAD * threads as u64) as f64;
                    ns.entry((oi, threads, name)).or_default().push(per_op);
                }
            }
        }
        eprint!("\rround {}/{ROUNDS}", round + 1);
    }
    eprintln!();
    println!(
        "interleaved, {ROUNDS} rounds x {OPS_PER_THREAD} ops per thread; medians over rounds; \
         ratios are throughput ratios taken within each round"
    );
    println!(
        "| operation | threads | contender | ns/op (all threads) | M ops/s | vs quick_cache | vs moka |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (oi, (op_name, _)) in ops.iter().enumerate() {
        for threads in [1usize, 2] {
            for name in CONTENDERS {
                let mine = &ns[&(oi, threads, name)];
                let ratio_to = |base: &str| {
                    let theirs = &ns[&(oi, threads, base)];
                    median(mine.iter().zip(theirs).map(|(m, t)| t / m).collect())
                };
                let per_op = median(mine.clone());
                let label =
                    if name.starts_with("myco") { format!("**{name}**") } else { name.to_owned() };
                println!(
                    "| {op_name} | {threads} | {label} | {per_op:.0} | {:.2} | {:.2}x | {:.2}x |",
                    1e3 / per_op,
                    ratio_to("quick_cache"),
                    ratio_to("moka_lru")
                );
            }
        }
    }
}
