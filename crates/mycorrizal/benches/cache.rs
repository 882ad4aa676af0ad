//! The distributed cache on three nodes over loopback (mutual TLS): a get answered by the local
//! replica, a get that must ask another node, and a replicated set (RF = 3, W = Quorum), each as
//! throughput and p50/p99 latency, at 1 and 64 operations outstanding.
//!
//! `cargo bench -p mycorrizal --bench cache`

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    cache::CacheBucket,
    cluster::{ClusterConfig, Node},
    security::Trust,
    store::BucketConfig,
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const KEYS: u32 = 10_000;

async fn node(i: u8, seed: Option<SocketAddr>) -> Node {
    let id = NodeId::new(format!("bench-{i}")).unwrap();
    let mut c = ClusterConfig::lan("cachebench", id, SocketAddr::from(([127, 0, 0, 50 + i], 0)));
    c.seeds = seed.into_iter().collect();
    if let Some(rate) = std::env::var("CACHE_BENCH_SYNC_RATE").ok().and_then(|v| v.parse().ok()) {
        c.cache.sync_rate = rate;
    }
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

struct Figures {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn figures(mut lat_ns: Vec<u64>, elapsed: Duration) -> Figures {
    lat_ns.sort_unstable();
    let q = |p: f64| lat_ns[((lat_ns.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Figures {
        ops_per_s: lat_ns.len() as f64 / elapsed.as_secs_f64(),
        p50_us: q(0.50),
        p99_us: q(0.99),
    }
}

/// Runs `op` `total` times over `concurrency` tasks; per-operation latencies.
async fn measure<F, Fut>(concurrency: usize, total: usize, op: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let op = op.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(total / concurrency + 1);
            for i in (t..total).step_by(concurrency) {
                let s = Instant::now();
                op(i).await;
                lat.push(s.elapsed().as_nanos() as u64);
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    figures(all, start.elapsed())
}

fn row(name: &str, f: &Figures) {
    println!("{name:<44} {:>12.0} {:>10.1} {:>10.1}", f.ops_per_s, f.p50_us, f.p99_us);
}

fn main() {
    let only_rebalance = std::env::var("CACHE_BENCH_ONLY_REBALANCE").is_ok();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let first = node(1, None).await;
        let seed = first.addr();
        let nodes = [first, node(2, Some(seed)).await, node(3, Some(seed)).await];
        for n in &nodes {
            n.ready().await;
        }
        let rf3 = BucketConfig::builder("rf3").replicas(3).max_entries(1_000_000).build().unwrap();
        let rf1 = BucketConfig::builder("rf1").replicas(1).max_entries(1_000_000).build().unwrap();
        nodes[0].cache().create_bucket(rf3).await.unwrap();
        nodes[0].cache().create_bucket(rf1).await.unwrap();
        for n in &nodes {
            tokio::time::timeout(Duration::from_secs(30), n.cache().ready()).await.unwrap();
        }
        let a = nodes[0].cache();
        let local: CacheBucket = a.bucket("rf3").unwrap();
        let single: CacheBucket = a.bucket("rf1").unwrap();
        let value = Bytes::from(vec![b'x'; 100]);
        for k in 0..KEYS {
            local.set(format!("key-{k}"), value.clone()).await.unwrap();
            single.set(format!("key-{k}"), value.clone()).await.unwrap();
        }
        // Keys of the RF = 1 bucket held only by the other two nodes.
        let me = nodes[0].id().clone();
        let remote_keys: Arc<Vec<String>> = Arc::new(
            (0..KEYS)
                .map(|k| format!("key-{k}"))
                .filter(|k| !single.owners(k).contains(&me))
                .collect(),
        );
        println!("3 nodes on 127.0.0.51-53, mutual TLS; 100-byte values; 2 worker threads");
        println!("{:<44} {:>12} {:>10} {:>10}", "scenario", "ops/s", "p50 µs", "p99 µs");
        for round in 0..if only_rebalance { 0 } else { 2 } {
            let b = local.clone();
            let f = measure(1, 1_000_000, move |i| {
                let b = b.clone();
                async move {
                    let v = b.get(format!("key-{}", i as u32 % KEYS)).await.unwrap();
                    assert!(v.is_some());
                }
            })
            .await;
            row(&format!("local-replica get, One, 1 outstanding [{round}]"), &f);
            for (c, total) in [(1usize, 20_000usize), (64, 200_000)] {
                let (b, keys) = (single.clone(), remote_keys.clone());
                let f = measure(c, total, move |i| {
                    let (b, keys) = (b.clone(), keys.clone());
                    async move {
                        let v = b.get(&keys[i % keys.len()]).await.unwrap();
                        assert!(v.is_some());
                    }
                })
                .await;
                row(&format!("remote get, One, {c} outstanding [{round}]"), &f);
            }
            for (c, total) in [(1usize, 10_000usize), (64, 100_000)] {
                let (b, value) = (local.clone(), value.clone());
                let f = measure(c, total, move |i| {
                    let (b, value) = (b.clone(), value.clone());
                    async move {
                        b.set(format!("key-{}", i as u32 % KEYS), value).await.unwrap();
                    }
                })
                .await;
                row(&format!("set RF=3 W=Quorum, {c} outstanding [{round}]"), &f);
            }
        }
        rebalance(&nodes, seed).await;
    });
}

/// Foreground latency before and while a fourth node joins three that hold `keys` keys at
/// RF = 3 (it must receive three quarters of them).
async fn rebalance(nodes: &[Node], seed: SocketAddr) {
    let keys: u32 =
        std::env::var("CACHE_BENCH_keys").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let config = BucketConfig::builder("big").replicas(3).max_entries(1_000_000).build().unwrap();
    let big = nodes[0].cache().create_bucket(config).await.unwrap();
    let value = Bytes::from(vec![b'y'; 100]);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..64u32 {
        let (b, value) = (big.clone(), value.clone());
        tasks.spawn(async move {
            for k in (w..keys).step_by(64) {
                b.set(format!("big-{k}"), value.clone()).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(60), n.cache().ready()).await.unwrap();
    }
    // Foreground: 16 callers doing quorum sets on node 1 (each one reaches other nodes, which
    // are busy rebalancing) until `stop` is set.
    let foreground = |stop: Arc<std::sync::atomic::AtomicBool>| {
        let (b, value) = (big.clone(), value.clone());
        async move {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..16u32 {
                let (b, value) = (b.clone(), value.clone());
                let stop = stop.clone();
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = t;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("big-{}", i.wrapping_mul(2_654_435_761) % keys);
                        let s = Instant::now();
                        b.set(key, value.clone()).await.unwrap();
                        lat.push(s.elapsed().as_nanos() as u64);
                        i += 16;
                        // A get served by the local replica completes without ever yielding;
                        // let the other tasks (and the stop signal) run.
                        if i % 1024 < 16 {
                            tokio::task::yield_now().await;
                        }
                    }
                    lat
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.unwrap());
            }
            figures(all, started.elapsed())
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = tokio::spawn(foreground(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = steady.await.unwrap();
    row("foreground quorum sets, 16 outstanding, steady", &before);
    let moved = |ns: &[&Node]| -> (u64, u64) {
        ns.iter().fold((0, 0), |(r, b), n| {
            let s = n.cache().stats();
            (
                r + s.sync_records_sent + s.sync_records_received,
                b + s.sync_bytes_sent + s.sync_bytes_received,
            )
        })
    };
    let start = Instant::now();
    let fourth = node(4, Some(seed)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = tokio::spawn(foreground(stop.clone()));
    let ready = async {
        loop {
            if fourth.cache().is_ready() && fourth.members().live().count() == 4 {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let took = ready.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.await.unwrap();
    row("foreground while a 4th node joins", &during);
    let all: Vec<&Node> = nodes.iter().chain(std::iter::once(&fourth)).collect();
    let (records, bytes) = moved(&all);
    println!(
        "join of a 4th node to 3 holding {keys} keys (RF=3): ready after {:.2} s; {} entries on the new node; \
         {records} records moved, {:.1} MB moved by sync; foreground p99 {:.2}x steady",
        took.as_secs_f64(),
        fourth.cache().bucket("big").unwrap().local_entries().len(),
        bytes as f64 / 1e6,
        during.p99_us / before.p99_us
    );
}
