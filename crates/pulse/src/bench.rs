//! `pulse bench`: the distributed cache side by side with Redis (through the `redis` crate, one
//! multiplexed connection) and with in-process caches (raw quick_cache, our store's engine, and
//! moka), in one process run on loopback.
//!
//! Every scenario runs a fixed number of operations; ours and the baselines alternate within
//! each repeat, and the table reports the median of the repeats with each figure as a ratio to
//! its baseline and the target. Memory is measured once (a second load in the same
//! process would reuse freed memory and flatter the figure). Rebalance is repeated like the
//! timed scenarios, each repeat in a fresh `pulse bench` process for the same reason, and the
//! run with the median ratio is reported.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use mycorrizal::{
    NodeId,
    cache::{CacheBucket, WriteOptions},
    cluster::{ClusterConfig, Node},
    core::quorum::Consistency,
    security::{ClusterSecret, Trust},
    store::BucketConfig,
};
use serde::Serialize;

use crate::progress;

/// What `pulse bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Resident memory per entry, 100-byte values at RF=1, vs Redis `used_memory`.
    Memory,
    /// A get served by this node's replica (One), 1 and 2 threads, vs quick_cache, moka, Redis.
    Local,
    /// A get of a key only other nodes hold, 1 and 64 outstanding, vs Redis GET.
    Remote,
    /// A set at RF=3, W=Quorum, 1 and 64 outstanding, vs Redis SET.
    Set,
    /// A 4th node joining 3 that hold the entries: time, bytes moved, foreground p99.
    Rebalance,
}

/// Options of `pulse bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "memory,local,remote,set,rebalance")]
    scenarios: Vec<Scenario>,
    /// Repeats of each timed scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Entries loaded for the memory and rebalance scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Multiplies every operation count (0.1 for a quick look; figures get noisier).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The redis-server binary (installed by `scripts/bench.sh` when missing).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Run without Redis (no Redis ratios).
    #[arg(long)]
    no_redis: bool,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

const VALUE_SIZE: usize = 100;
/// Keys in the local, remote and set scenarios.
const KEYS: u64 = 100_000;

fn key(i: u64) -> String {
    format!("key-{i:07}")
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Sample {
    ops_per_s: f64,
    /// Microseconds; 0 where latency is not measured per operation (the local loops).
    p50_us: f64,
    p99_us: f64,
}

impl Sample {
    fn from_latencies(mut lat_ns: Vec<u64>, elapsed: Duration) -> Self {
        lat_ns.sort_unstable();
        let q = |p: f64| lat_ns[((lat_ns.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        Sample {
            ops_per_s: lat_ns.len() as f64 / elapsed.as_secs_f64(),
            p50_us: q(0.50),
            p99_us: q(0.99),
        }
    }

    fn median(samples: &[Sample]) -> Sample {
        let med = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Sample {
            ops_per_s: med(|s| s.ops_per_s),
            p50_us: med(|s| s.p50_us),
            p99_us: med(|s| s.p99_us),
        }
    }
}

/// Every timed run, by (scenario, contender).
#[derive(Default)]
struct Runs {
    samples: BTreeMap<(String, String), Vec<Sample>>,
}

impl Runs {
    fn add(&mut self, scenario: &str, contender: &str, s: Sample) {
        self.samples.entry((scenario.to_owned(), contender.to_owned())).or_default().push(s);
    }

    fn median(&self, scenario: &str, contender: &str) -> Option<Sample> {
        self.samples.get(&(scenario.to_owned(), contender.to_owned())).map(|v| Sample::median(v))
    }
}

/// One target of the issue: ours vs a baseline.
#[derive(Debug, Serialize)]
struct Check {
    what: String,
    ours: f64,
    baseline: f64,
    ratio: f64,
    /// `>= x` or `<= x`.
    target: String,
    met: bool,
}

fn check(
    what: &str,
    ours: f64,
    baseline: f64,
    at_least: Option<f64>,
    at_most: Option<f64>,
) -> Check {
    let ratio = ours / baseline;
    let (target, met) = match (at_least, at_most) {
        (Some(t), _) => (format!(">= {t}x"), ratio >= t),
        (_, Some(t)) => (format!("<= {t}x"), ratio <= t),
        _ => (String::new(), true),
    };
    Check { what: what.to_owned(), ours, baseline, ratio, target, met }
}

#[derive(Debug, Default, Serialize)]
struct MemoryFigures {
    entries: u64,
    ours_bytes_per_entry: f64,
    redis_bytes_per_entry: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
struct RebalanceFigures {
    entries: u64,
    ready_after_s: f64,
    bytes_moved: u64,
    records_moved: u64,
    /// Exchanges the nodes' sync rounds could not finish during the join (retried).
    sync_failures: u64,
    entries_on_new_node: u64,
    /// Seconds of load measured before the join, and again once every node is ready.
    steady_window_s: f64,
    p99_before_us: f64,
    p99_during_us: f64,
    /// Seconds from the join until every node is ready (hand-offs done too).
    settled_after_s: f64,
    /// The same load for the same window once every node is ready: what the new placement
    /// and the periodic anti-entropy cost, apart from what the join's own work does.
    p99_after_us: f64,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    repeats: usize,
    scale: f64,
    medians: Vec<MedianRow>,
    memory: Option<MemoryFigures>,
    /// The repeat whose p99 during/before is the median of the repeats'.
    rebalance: Option<RebalanceFigures>,
    /// Every repeat, in the order run.
    rebalance_runs: Vec<RebalanceFigures>,
    checks: Vec<Check>,
}

#[derive(Serialize)]
struct MedianRow {
    scenario: String,
    contender: String,
    #[serde(flatten)]
    sample: Sample,
}

/// Runs the benchmark and prints the table (and JSON with `--json`).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    ensure!(args.scale > 0.0, "--scale must be positive");
    ensure!(args.entries >= 1_000, "--entries must be at least 1000");
    let ops = |n: u64| ((n as f64 * args.scale) as u64).max(100);
    let redis = if args.no_redis { None } else { Some(RedisServer::start(&args.redis_server)?) };
    let mut redis_con = match &redis {
        Some(r) => Some(r.connect().await?),
        None => None,
    };
    let secret = ClusterSecret::generate();
    let mut runs = Runs::default();
    let mut report = Report {
        machine: machine(),
        repeats: args.repeats,
        scale: args.scale,
        medians: Vec::new(),
        memory: None,
        rebalance: None,
        rebalance_runs: Vec::new(),
        checks: Vec::new(),
    };
    let value = Bytes::from(vec![b'v'; VALUE_SIZE]);

    // Memory first: a fresh heap, so the growth is not hidden by memory freed earlier.
    if args.scenarios.contains(&Scenario::Memory) {
        report.memory = Some(memory(&secret, args.entries, &value, redis_con.as_mut()).await?);
    }

    let timed = [Scenario::Local, Scenario::Remote, Scenario::Set];
    if timed.iter().any(|s| args.scenarios.contains(s)) {
        let cluster = Cluster::start(&secret, "bench", 3).await?;
        let a = &cluster.nodes[0];
        let rf3 = cluster.bucket("rf3", 3, KEYS).await?;
        let rf1 = cluster.bucket("rf1", 1, KEYS).await?;
        let load = progress::bar(2 * KEYS, "loading keys");
        let base = Arc::new(Baselines::new(KEYS * 2)?);
        fill(&rf3, KEYS, &value, &load, Some(&base)).await?;
        fill(&rf1, KEYS, &value, &load, None).await?;
        load.finish_and_clear();
        let me = a.id().clone();
        let remote_keys: Arc<Vec<String>> =
            Arc::new((0..KEYS).map(key).filter(|k| !rf1.owners(k).contains(&me)).collect());
        let local_keys: Arc<Vec<Bytes>> =
            Arc::new((0..KEYS).map(|i| Bytes::from(key(i))).collect());
        if let Some(con) = redis_con.as_mut() {
            redis_fill(con, KEYS, &value, &indicatif::ProgressBar::hidden()).await?;
        }
        let plan: Vec<Scenario> =
            timed.into_iter().filter(|s| args.scenarios.contains(s)).collect();
        let steps = (args.repeats * plan.len()) as u64;
        let bar = progress::bar(steps, "measuring");
        for repeat in 0..args.repeats {
            for scenario in &plan {
                bar.set_message(format!("{scenario:?} (repeat {})", repeat + 1));
                match scenario {
                    Scenario::Local => {
                        let n = ops(2_000_000);
                        for threads in [1usize, 2] {
                            let name = format!("local get, {threads} thread(s)");
                            let (b, keys) = (rf3.clone(), local_keys.clone());
                            let handle = tokio::runtime::Handle::current();
                            let ours = tokio::task::spawn_blocking(move || {
                                per_thread(threads, n, |t, count| {
                                    handle.block_on(async {
                                        for i in 0..count {
                                            let k = &keys[spread(t, i) % keys.len()];
                                            let v = b.get_with(k, Consistency::One).await;
                                            assert!(matches!(v, Ok(Some(_))), "local get missed");
                                        }
                                    });
                                })
                            })
                            .await?;
                            runs.add(&name, "mycorrizal", ours);
                            let b = rf3.clone();
                            let read_now =
                                move |k: &Bytes| matches!(b.try_get_local(k), Ok(Some(_)));
                            let now = in_process_gets(threads, n, &local_keys, read_now).await?;
                            runs.add(&name, "mycorrizal-now", now);
                            let contenders: [(&str, BaselineGet); 3] = [
                                ("mycorrizal-store", |b, k| b.store.get(k).is_some()),
                                ("quick_cache", |b, k| b.quick_cache.get(k).is_some()),
                                ("moka", |b, k| b.moka.get(k).is_some()),
                            ];
                            for (contender, get) in contenders {
                                let base = base.clone();
                                let read = move |k: &Bytes| get(&base, k);
                                let sample = in_process_gets(threads, n, &local_keys, read).await?;
                                runs.add(&name, contender, sample);
                            }
                        }
                        if let Some(con) = &redis_con {
                            let s = redis_gets(con, 1, ops(20_000), KEYS).await?;
                            runs.add("local get, 1 thread(s)", "redis", s);
                        }
                    }
                    Scenario::Remote => {
                        for (c, n) in [(1usize, ops(20_000)), (64, ops(200_000))] {
                            let name = format!("remote get, {c} outstanding");
                            let (b, keys) = (rf1.clone(), remote_keys.clone());
                            let ours = measure(c, n, move |i| {
                                let (b, keys) = (b.clone(), keys.clone());
                                async move {
                                    let v =
                                        b.get_with(&keys[i % keys.len()], Consistency::One).await;
                                    assert!(matches!(v, Ok(Some(_))), "remote get: {v:?}");
                                }
                            })
                            .await;
                            runs.add(&name, "mycorrizal", ours);
                            if let Some(con) = &redis_con {
                                runs.add(&name, "redis", redis_gets(con, c, n, KEYS).await?);
                            }
                        }
                    }
                    Scenario::Set => {
                        for (c, n) in [(1usize, ops(10_000)), (64, ops(100_000))] {
                            let name = format!("set RF=3 W=Quorum, {c} outstanding");
                            let (b, v) = (rf3.clone(), value.clone());
                            let ours = measure(c, n, move |i| {
                                let (b, value) = (b.clone(), Bytes::copy_from_slice(&v));
                                async move {
                                    let r = b.set_with(key(i as u64 % KEYS), value, quorum()).await;
                                    assert!(r.is_ok(), "set: {r:?}");
                                }
                            })
                            .await;
                            runs.add(&name, "mycorrizal", ours);
                            if let Some(con) = &redis_con {
                                runs.add(&name, "redis", redis_sets(con, c, n, &value).await?);
                            }
                        }
                    }
                    Scenario::Memory | Scenario::Rebalance => unreachable!("not timed here"),
                }
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        cluster.shutdown().await;
    }
    if let Some(con) = redis_con.as_mut() {
        let _: () = redis::cmd("FLUSHALL").arg("SYNC").query_async(con).await?;
    }

    if args.scenarios.contains(&Scenario::Rebalance) {
        // Alone and once, this process is the fresh one a repeat needs.
        if args.repeats == 1 && args.scenarios == [Scenario::Rebalance] {
            let window = steady_window(args.scale);
            report.rebalance_runs.push(rebalance(&secret, args.entries, &value, window).await?);
        } else {
            for i in 1..=args.repeats {
                let spinner = progress::spinner(&format!(
                    "rebalance: repeat {i} of {}, in a fresh process",
                    args.repeats
                ));
                let figures = rebalance_apart(args.entries, args.scale).await;
                spinner.finish_and_clear();
                report.rebalance_runs.push(figures?);
            }
        }
        report.rebalance = median_rebalance(&report.rebalance_runs);
    }
    drop(redis);

    for ((scenario, contender), samples) in &runs.samples {
        report.medians.push(MedianRow {
            scenario: scenario.clone(),
            contender: contender.clone(),
            sample: Sample::median(samples),
        });
    }
    report.checks = checks(&runs, report.memory.as_ref(), report.rebalance.as_ref());
    print_table(&report, args.json);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn quorum() -> WriteOptions {
    WriteOptions { consistency: Some(Consistency::Quorum), ..WriteOptions::default() }
}

/// A per-thread key order: threads start far apart and stride through the keys.
fn spread(thread: usize, i: usize) -> usize {
    thread * 7_919 + i.wrapping_mul(40_503)
}

/// Runs `work(thread, count)` on `threads` threads sharing `total` operations; throughput.
fn per_thread(threads: usize, total: u64, work: impl Fn(usize, usize) + Sync) -> Sample {
    let each = (total as usize).div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            s.spawn(move || work(t, each));
        }
    });
    Sample {
        ops_per_s: (each * threads) as f64 / start.elapsed().as_secs_f64(),
        ..Sample::default()
    }
}

/// `total` synchronous gets of `keys` spread over `threads` (off the async workers); each must
/// find its key.
async fn in_process_gets(
    threads: usize,
    total: u64,
    keys: &Arc<Vec<Bytes>>,
    get: impl Fn(&Bytes) -> bool + Send + Sync + 'static,
) -> anyhow::Result<Sample> {
    let keys = keys.clone();
    Ok(tokio::task::spawn_blocking(move || {
        per_thread(threads, total, |t, count| {
            for i in 0..count {
                let k = &keys[spread(t, i) % keys.len()];
                assert!(get(k), "a local get missed");
            }
        })
    })
    .await?)
}

/// Runs `op(i)` for `i` in `0..total` over `concurrency` tasks; per-operation latency.
async fn measure<F, Fut>(concurrency: usize, total: u64, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let total = total as usize;
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
        all.extend(r.expect("a benchmark task panicked"));
    }
    Sample::from_latencies(all, start.elapsed())
}

/// `n` in-process nodes on 127.0.0.1, mutual TLS over loopback.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(secret: &str, name: &str, n: usize) -> anyhow::Result<Self> {
        let spinner = progress::spinner(&format!("starting {n} nodes"));
        let mut nodes: Vec<Node> = Vec::new();
        for i in 1..=n {
            let seed = nodes.first().map(Node::addr);
            nodes.push(start_node(secret, name, i, seed).await?);
        }
        for node in &nodes {
            tokio::time::timeout(Duration::from_secs(30), wait_live(node, n))
                .await
                .context("the bench cluster did not form")?;
        }
        spinner.finish_and_clear();
        Ok(Cluster { nodes })
    }

    /// A bucket for `entries` keys, sized like the in-process baselines (twice the keys).
    async fn bucket(&self, name: &str, replicas: u32, entries: u64) -> anyhow::Result<CacheBucket> {
        let config =
            BucketConfig::builder(name).replicas(replicas).max_entries(entries * 2).build()?;
        let bucket = self.nodes[0].cache().create_bucket(config).await?;
        for n in &self.nodes {
            tokio::time::timeout(Duration::from_secs(30), n.cache().ready())
                .await
                .context("the bench cluster's cache did not become ready")?;
        }
        Ok(bucket)
    }

    async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown(Duration::from_secs(5)).await;
        }
    }
}

async fn start_node(
    secret: &str,
    cluster: &str,
    i: usize,
    seed: Option<SocketAddr>,
) -> anyhow::Result<Node> {
    let id = NodeId::new(format!("{cluster}-{i}"))?;
    let mut config = ClusterConfig::lan(cluster, id, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.seeds = seed.into_iter().collect();
    Ok(Node::builder(config).trust(Trust::cluster_secret(secret)?).start().await?)
}

async fn wait_live(node: &Node, n: usize) {
    let mut members = node.watch_members();
    let _ = members.wait_for(|v| v.live().count() == n).await;
}

/// Writes keys `0..n` at quorum, 64 at a time.
async fn fill(
    bucket: &CacheBucket,
    n: u64,
    value: &Bytes,
    bar: &indicatif::ProgressBar,
    baselines: Option<&Arc<Baselines>>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..64u64 {
        let (b, value, bar) = (bucket.clone(), value.clone(), bar.clone());
        let baselines = baselines.cloned();
        tasks.spawn(async move {
            for k in (w..n).step_by(64) {
                // Each entry its own value, as in an application (a shared one would make
                // every get touch one reference count).
                b.set_with(key(k), Bytes::copy_from_slice(&value), quorum()).await?;
                if let Some(base) = &baselines {
                    base.insert(key(k).as_bytes(), &value);
                }
                bar.inc(1);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// One in-process contender's get: whether it found the key.
type BaselineGet = fn(&Baselines, &Bytes) -> bool;

/// The in-process contenders of the local get. They are filled in the same loop as our bucket,
/// so every contender's keys and values were allocated amid the same traffic (filled alone in
/// a tight loop, theirs would sit contiguous in memory and look better than any real cache).
struct Baselines {
    quick_cache: quick_cache::sync::Cache<Bytes, Bytes>,
    moka: moka::sync::Cache<Bytes, Bytes>,
    /// Our node-local store alone: the engine under the cluster, without placement.
    store: mycorrizal::store::Bucket,
    _store: mycorrizal::store::Store,
}

impl Baselines {
    fn new(capacity: u64) -> anyhow::Result<Self> {
        let store = mycorrizal::store::Store::new(mycorrizal::store::StoreConfig::new(
            NodeId::new("baseline")?,
        ));
        let bucket =
            store.create_bucket(BucketConfig::builder("b").max_entries(capacity).build()?)?;
        Ok(Baselines {
            quick_cache: quick_cache::sync::Cache::new(capacity as usize),
            moka: moka::sync::Cache::new(capacity),
            store: bucket,
            _store: store,
        })
    }

    /// Each contender gets its own copy of the key and value, as a cache holds them. A copied
    /// `Bytes` allocates its shared reference count at its first clone: clone it here, as our
    /// write path does, or the first timed pass would allocate every count in the order the
    /// keys are read and later passes would walk them sequentially.
    fn insert(&self, key: &[u8], value: &Bytes) {
        let copy = |b: &[u8]| {
            let b = Bytes::copy_from_slice(b);
            drop(b.clone());
            b
        };
        self.quick_cache.insert(copy(key), copy(value));
        self.moka.insert(copy(key), copy(value));
        let _ = self.store.set(copy(key), copy(value));
    }
}

/// Resident memory of this process, bytes (Linux `/proc/self/statm`).
fn rss() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")
        .context("reading /proc/self/statm (the memory scenario needs Linux)")?;
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    Ok(pages * 4096)
}

async fn memory(
    secret: &str,
    entries: u64,
    value: &Bytes,
    redis: Option<&mut redis::aio::MultiplexedConnection>,
) -> anyhow::Result<MemoryFigures> {
    let node = start_node(secret, "memory", 1, None).await?;
    let config = BucketConfig::builder("memory")
        .replicas(1)
        // A cache sized for what it holds, with headroom so none is evicted: keys spread
        // unevenly over the engine's shards, by a few percent of a shard (Redis' tables grow
        // to fit the same way).
        .max_entries(entries + entries / 20 + 4096)
        .build()?;
    let bucket = node.cache().create_bucket(config).await?;
    node.cache().ready().await;
    let before = rss()?;
    let bar = progress::bar(entries, "memory: loading entries (RF=1)");
    fill(&bucket, entries, value, &bar, None).await?;
    bar.finish_and_clear();
    let after = rss()?;
    let held = bucket.stats().entries;
    ensure!(held == entries, "the memory bucket holds {held} of {entries} entries");
    let ours = after.saturating_sub(before) as f64 / entries as f64;
    node.shutdown(Duration::from_secs(5)).await;
    let redis_bytes = match redis {
        Some(con) => {
            let before = redis_used_memory(con).await?;
            let bar = progress::bar(entries, "memory: loading Redis");
            redis_fill(con, entries, value, &bar).await?;
            bar.finish_and_clear();
            let after = redis_used_memory(con).await?;
            let _: () = redis::cmd("FLUSHALL").arg("SYNC").query_async(con).await?;
            Some(after.saturating_sub(before) as f64 / entries as f64)
        }
        None => None,
    };
    Ok(MemoryFigures { entries, ours_bytes_per_entry: ours, redis_bytes_per_entry: redis_bytes })
}

/// How long the rebalance scenario measures its load before the join (and again once every
/// node is ready), at scale 1: about as long as the join of a million entries takes (35 s),
/// so both sides of the ratio are the p99 of windows of similar length. On this two-core host
/// the p99 of consecutive 3 s windows of one steady load varied up to 2x (274-549 µs), and
/// the first 3 s after loading were often the fastest (327 µs against 476 µs over 30 s): a
/// short window measured there set the baseline low, while the 35 s of the join always took
/// in the host's slower stretches, and one anti-entropy round (every 30 s).
const STEADY_WINDOW: Duration = Duration::from_secs(30);

/// [`STEADY_WINDOW`] at `scale`, at least a second.
fn steady_window(scale: f64) -> Duration {
    STEADY_WINDOW.mul_f64(scale).max(Duration::from_secs(1))
}

/// A 4th node joins 3 that hold `entries` entries at RF=3 while 16 callers on node 1 do quorum
/// sets; their p99 for `window` before the join, during it (until the new node is ready), and
/// for `window` once every node is ready.
async fn rebalance(
    secret: &str,
    entries: u64,
    value: &Bytes,
    window: Duration,
) -> anyhow::Result<RebalanceFigures> {
    let cluster = Cluster::start(secret, "rebalance", 3).await?;
    let big = cluster.bucket("big", 3, entries).await?;
    let bar = progress::bar(entries, "rebalance: loading entries (RF=3)");
    fill(&big, entries, value, &bar, None).await?;
    bar.finish_and_clear();
    for n in &cluster.nodes {
        tokio::time::timeout(Duration::from_secs(120), n.cache().ready())
            .await
            .context("cache ready after loading")?;
    }
    let foreground = |stop: Arc<AtomicBool>| {
        let (b, value) = (big.clone(), value.clone());
        async move {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..16u64 {
                let (b, value, stop) = (b.clone(), value.clone(), stop.clone());
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = t;
                    while !stop.load(Relaxed) {
                        let k = key(i.wrapping_mul(2_654_435_761) % entries);
                        let s = Instant::now();
                        let r = b.set_with(k, Bytes::copy_from_slice(&value), quorum()).await;
                        assert!(r.is_ok(), "foreground set: {r:?}");
                        lat.push(s.elapsed().as_nanos() as u64);
                        i += 16;
                    }
                    lat
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.expect("a foreground task panicked"));
            }
            Sample::from_latencies(all, started.elapsed())
        }
    };
    // The load for `window`, on whatever placement stands.
    let steady = || async {
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(foreground(stop.clone()));
        tokio::time::sleep(window).await;
        stop.store(true, Relaxed);
        load.await
    };
    let secs = window.as_secs_f64();
    let spinner =
        progress::spinner(&format!("rebalance: foreground load, steady state ({secs:.0} s)"));
    let before = steady().await?;
    let sent = |nodes: &[&Node]| {
        nodes.iter().fold((0, 0, 0), |(r, b, f), n| {
            let s = n.cache().stats();
            // Every record moved is received once, pulled or pushed.
            (r + s.sync_records_received, b + s.sync_bytes_received, f + s.sync_failures)
        })
    };
    let (records0, bytes0, failures0) = sent(&cluster.nodes.iter().collect::<Vec<_>>());
    spinner.set_message("rebalance: a 4th node joins under the same load");
    let start = Instant::now();
    let fourth = start_node(secret, "rebalance", 4, Some(cluster.nodes[0].addr())).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(foreground(stop.clone()));
    let all: Vec<&Node> = cluster.nodes.iter().chain(std::iter::once(&fourth)).collect();
    let settled = async {
        loop {
            if fourth.cache().is_ready() && all.iter().all(|n| n.members().live().count() == 4) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let took = tokio::time::timeout(Duration::from_secs(600), settled)
        .await
        .context("the 4th node did not become ready within 600 s")?;
    stop.store(true, Relaxed);
    let during = during.await?;
    let (records1, bytes1, failures1) = sent(&all);
    spinner.set_message("rebalance: waiting for every node to settle");
    let t_settle = Instant::now();
    tokio::time::timeout(Duration::from_secs(600), async {
        while !all.iter().all(|n| n.cache().is_ready()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .context("the nodes did not settle within 600 s of the join")?;
    let settled_after = took + t_settle.elapsed();
    spinner.set_message(format!("rebalance: the same load on 4 nodes ({secs:.0} s)"));
    let after = steady().await?;
    spinner.finish_and_clear();
    let figures = RebalanceFigures {
        entries,
        ready_after_s: took.as_secs_f64(),
        bytes_moved: bytes1 - bytes0,
        records_moved: records1 - records0,
        sync_failures: failures1 - failures0,
        entries_on_new_node: fourth.cache().bucket("big")?.stats().entries,
        steady_window_s: window.as_secs_f64(),
        p99_before_us: before.p99_us,
        p99_during_us: during.p99_us,
        settled_after_s: settled_after.as_secs_f64(),
        p99_after_us: after.p99_us,
    };
    fourth.shutdown(Duration::from_secs(5)).await;
    cluster.shutdown().await;
    Ok(figures)
}

/// One rebalance repeat in a fresh `pulse bench` process: a heap that earlier repeats grew
/// would make this one's allocations cheaper.
async fn rebalance_apart(entries: u64, scale: f64) -> anyhow::Result<RebalanceFigures> {
    let exe = std::env::current_exe().context("finding the pulse binary")?;
    let output = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args(["bench", "--scenarios", "rebalance", "--repeats", "1", "--no-redis", "--json"])
            .args(["--entries", &entries.to_string(), "--scale", &scale.to_string()])
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .context("starting a pulse bench process for a rebalance repeat")?;
    ensure!(
        output.status.success(),
        "the rebalance repeat failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the rebalance repeat's JSON")?;
    let figures = report.get_mut("rebalance").map(serde_json::Value::take).unwrap_or_default();
    serde_json::from_value(figures).context("reading the rebalance repeat's figures")
}

/// The run whose p99 during/before is the median (the lower of the two middle ones for an
/// even count).
fn median_rebalance(runs: &[RebalanceFigures]) -> Option<RebalanceFigures> {
    let mut sorted: Vec<&RebalanceFigures> = runs.iter().collect();
    sorted.sort_by(|a, b| a.p99_ratio().total_cmp(&b.p99_ratio()));
    sorted.get(sorted.len().saturating_sub(1) / 2).map(|r| (*r).clone())
}

impl RebalanceFigures {
    /// The foreground's p99 during the join over its p99 before: the target.
    fn p99_ratio(&self) -> f64 {
        self.p99_during_us / self.p99_before_us.max(f64::MIN_POSITIVE)
    }
}

/// A `redis-server` on a free loopback port, persistence off; stopped on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start(binary: &PathBuf) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .args(["--loglevel", "warning", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}: install Redis (`apt-get install redis-server`; \
                     scripts/bench.sh does), pass --redis-server PATH, or run with --no-redis",
                    binary.display()
                )
            })?;
        let mut server = RedisServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let start = Instant::now();
        while TcpStream::connect(server.addr).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("redis-server exited at start ({status})");
            }
            ensure!(start.elapsed() < Duration::from_secs(10), "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    async fn connect(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://{}/", self.addr))?;
        let mut con = client.get_multiplexed_async_connection().await?;
        // The default 500 ms is shorter than loading a million keys in pipelines takes on a
        // busy two-core machine.
        con.set_response_timeout(Duration::from_secs(60));
        Ok(con)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SETs keys `0..n`, 1,000 per pipeline.
async fn redis_fill(
    con: &mut redis::aio::MultiplexedConnection,
    n: u64,
    value: &Bytes,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    for start in (0..n).step_by(1_000) {
        let end = (start + 1_000).min(n);
        let mut pipe = redis::pipe();
        for k in start..end {
            pipe.cmd("SET").arg(key(k)).arg(value.as_ref()).ignore();
        }
        let _: () = pipe.query_async(con).await?;
        bar.inc(end - start);
    }
    Ok(())
}

async fn redis_used_memory(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")
}

/// GETs through one multiplexed connection shared by `concurrency` tasks.
async fn redis_gets(
    con: &redis::aio::MultiplexedConnection,
    concurrency: usize,
    n: u64,
    keys: u64,
) -> anyhow::Result<Sample> {
    let con = con.clone();
    Ok(measure(concurrency, n, move |i| {
        let mut con = con.clone();
        async move {
            let k = key(spread(0, i) as u64 % keys);
            let v: Option<Vec<u8>> =
                redis::cmd("GET").arg(k).query_async(&mut con).await.expect("Redis GET");
            assert!(v.is_some(), "Redis GET missed");
        }
    })
    .await)
}

/// SETs of `value` through one multiplexed connection shared by `concurrency` tasks.
async fn redis_sets(
    con: &redis::aio::MultiplexedConnection,
    concurrency: usize,
    n: u64,
    value: &Bytes,
) -> anyhow::Result<Sample> {
    let (con, value) = (con.clone(), value.clone());
    Ok(measure(concurrency, n, move |i| {
        let (mut con, value) = (con.clone(), value.clone());
        async move {
            let k = key(i as u64 % KEYS);
            let _: () = redis::cmd("SET")
                .arg(k)
                .arg(value.as_ref())
                .query_async(&mut con)
                .await
                .expect("Redis SET");
        }
    })
    .await)
}

/// The targets, from the medians.
fn checks(
    runs: &Runs,
    memory: Option<&MemoryFigures>,
    rebalance: Option<&RebalanceFigures>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let ops = |s: &str, c: &str| runs.median(s, c).map(|m| m.ops_per_s);
    let ours1 = ops("local get, 1 thread(s)", "mycorrizal");
    if let (Some(o), Some(r)) = (ours1, ops("local get, 1 thread(s)", "redis")) {
        out.push(check("local get ops/s vs Redis GET (1 outstanding)", o, r, Some(50.0), None));
    }
    // Both forms of our local get: `get_with(key, One).await` and `try_get_local(key)`, the
    // same replica read without a future around it.
    for (ours, form) in [("mycorrizal", "awaited"), ("mycorrizal-now", "try_get_local")] {
        for threads in [1, 2] {
            let s = format!("local get, {threads} thread(s)");
            if let (Some(o), Some(q)) = (ops(&s, ours), ops(&s, "quick_cache")) {
                let name = format!("{s} ({form}) ops/s vs raw quick_cache");
                out.push(check(&name, o, q, Some(0.8), None));
            }
            if let (Some(o), Some(m)) = (ops(&s, ours), ops(&s, "moka")) {
                out.push(check(&format!("{s} ({form}) ops/s vs moka"), o, m, Some(3.0), None));
            }
        }
    }
    if let (Some(o), Some(r)) = (
        runs.median("remote get, 1 outstanding", "mycorrizal"),
        runs.median("remote get, 1 outstanding", "redis"),
    ) {
        out.push(check(
            "remote get p50 µs vs Redis GET (1 outstanding)",
            o.p50_us,
            r.p50_us,
            None,
            Some(1.0),
        ));
    }
    if let (Some(o), Some(r)) = (
        ops("remote get, 64 outstanding", "mycorrizal"),
        ops("remote get, 64 outstanding", "redis"),
    ) {
        out.push(check("remote get ops/s vs Redis GET (64 outstanding)", o, r, Some(1.0), None));
    }
    if let (Some(o), Some(r)) = (
        ops("set RF=3 W=Quorum, 64 outstanding", "mycorrizal"),
        ops("set RF=3 W=Quorum, 64 outstanding", "redis"),
    ) {
        out.push(check(
            "set RF=3 W=Quorum ops/s vs Redis SET (64 outstanding)",
            o,
            r,
            Some(0.5),
            None,
        ));
    }
    if let Some(MemoryFigures { ours_bytes_per_entry: o, redis_bytes_per_entry: Some(r), .. }) =
        memory
    {
        out.push(check("memory bytes/entry vs Redis used_memory", *o, *r, None, Some(1.0)));
    }
    if let Some(r) = rebalance {
        out.push(check(
            "rebalance foreground p99 during vs before the join",
            r.p99_during_us,
            r.p99_before_us,
            None,
            Some(2.0),
        ));
    }
    out
}

/// The table: on stdout, or on stderr with `--json` (stdout is then only JSON).
fn print_table(report: &Report, json: bool) {
    let mut t = String::new();
    t.push_str(&format!(
        "\n{} — medians of {} repeat(s), scale {}\n\n",
        report.machine, report.repeats, report.scale
    ));
    t.push_str(&format!(
        "{:<36} {:<16} {:>14} {:>10} {:>10}\n",
        "scenario", "contender", "ops/s", "p50 µs", "p99 µs"
    ));
    for row in &report.medians {
        let s = row.sample;
        let lat = |v: f64| if v > 0.0 { format!("{v:.1}") } else { "-".to_owned() };
        t.push_str(&format!(
            "{:<36} {:<16} {:>14.0} {:>10} {:>10}\n",
            row.scenario,
            row.contender,
            s.ops_per_s,
            lat(s.p50_us),
            lat(s.p99_us)
        ));
    }
    if let Some(m) = &report.memory {
        t.push_str(&format!(
            "\nmemory, {} entries of {VALUE_SIZE} B at RF=1: {:.0} B/entry resident{}\n",
            m.entries,
            m.ours_bytes_per_entry,
            m.redis_bytes_per_entry
                .map(|r| format!("; Redis used_memory {r:.0} B/entry"))
                .unwrap_or_default()
        ));
    }
    let n = report.rebalance_runs.len();
    if n > 0 {
        t.push_str(&format!(
            "\nrebalance, a 4th node joins 3 holding entries at RF=3, {n} repeat(s); the target \
             below is the median one's\n"
        ));
    }
    for r in &report.rebalance_runs {
        t.push_str(&format!(
            "  {} entries: ready after {:.2} s (all settled after {:.2} s), {} records / {:.1} MB moved, {} failed exchanges, {} entries on the new node; foreground quorum-set p99 {:.0} µs over {:.0} s before, {:.0} µs during ({:.2}x), {:.0} µs over {:.0} s after\n",
            r.entries,
            r.ready_after_s,
            r.settled_after_s,
            r.records_moved,
            r.bytes_moved as f64 / 1e6,
            r.sync_failures,
            r.entries_on_new_node,
            r.p99_before_us,
            r.steady_window_s,
            r.p99_during_us,
            r.p99_ratio(),
            r.p99_after_us,
            r.steady_window_s
        ));
    }
    if !report.checks.is_empty() {
        t.push_str(&format!(
            "\n{:<64} {:>12} {:>12} {:>8} {:>8}  met\n",
            "target", "ours", "baseline", "ratio", "target"
        ));
        for c in &report.checks {
            t.push_str(&format!(
                "{:<64} {:>12.1} {:>12.1} {:>7.2}x {:>8}  {}\n",
                c.what,
                c.ours,
                c.baseline,
                c.ratio,
                c.target,
                if c.met { "yes" } else { "NO" }
            ));
        }
    }
    if json {
        eprint!("{t}");
    } else {
        print!("{t}");
    }
}

/// CPU model and count, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} x {cpu}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(before: f64, during: f64) -> RebalanceFigures {
        RebalanceFigures { p99_before_us: before, p99_during_us: during, ..Default::default() }
    }

    #[test]
    fn the_steady_windows_scale_with_the_run_but_last_a_second_at_least() {
        assert_eq!(steady_window(1.0), STEADY_WINDOW);
        assert_eq!(steady_window(0.5), STEADY_WINDOW / 2);
        assert_eq!(steady_window(0.001), Duration::from_secs(1));
    }

    #[test]
    fn the_reported_rebalance_is_the_repeat_with_the_median_ratio() {
        assert!(median_rebalance(&[]).is_none());
        // Ratios 3.0, 1.5, 2.0: the median is the third run's, whatever the order.
        let runs = [run(100.0, 300.0), run(400.0, 600.0), run(300.0, 600.0)];
        let m = median_rebalance(&runs).unwrap();
        assert_eq!((m.p99_before_us, m.p99_during_us), (300.0, 600.0));
        // An even count reports the lower of the two middle ratios (ratios 3.0, 1.5, 2.0, 4.0:
        // 2.0, not 3.0).
        let four = [run(100.0, 300.0), run(400.0, 600.0), run(300.0, 600.0), run(100.0, 400.0)];
        let m = median_rebalance(&four).unwrap();
        assert_eq!((m.p99_before_us, m.p99_during_us), (300.0, 600.0));
    }
}
