//! The distributed cache under faults, over the simulated network: 5 nodes, RF = 3, writes at
//! Quorum while a nemesis kills and restarts one node at a time, partitions and heals, and
//! loses 10 % of messages throughout: 10 % of gossip datagrams are dropped and 10 % of stream
//! writes reset their connection (losing that message and everything in flight on it). After the last heal and a repair, a checker reads every key at All:
//!
//! - every acknowledged write is readable (zero lost);
//! - every acknowledged delete stays deleted (nothing resurrected);
//! - every key sits on exactly its owners, with the same record on each (replicas converge).
//!
//! Each seed runs on its own paused-clock runtime; a failure names its seed. `CACHE_NEMESIS_SEEDS`
//! sets how many seeds run (default 200) and `CACHE_NEMESIS_FIRST` the first one.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mycorrizal::{
    NodeId,
    cache::{CacheBucket, CacheError},
    clock::TokioClock,
    cluster::{ClusterConfig, MemberState, Node},
    core::{quorum::Consistency, rng::SplitMix64},
    security::Trust,
    store::BucketConfig,
    transport::{SimConfig, SimNetwork},
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const T0: u64 = 1_800_000_000_000;
const N: u8 = 5;
/// Datagram loss and stream-write reset probability while the nemesis runs.
const LOSS: f64 = 0.10;
const STREAM_BREAK: f64 = 0.10;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 3, i], 7946))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("q{i}")).unwrap()
}

#[derive(Default, Debug)]
struct History {
    /// key -> value of every acknowledged write (keys are unique: one write each).
    acked: BTreeMap<String, String>,
    /// Keys whose delete was acknowledged.
    deleted: HashSet<String>,
    /// Keys whose write or delete ended indeterminate (excluded from the checks that depend on
    /// the outcome, and reported).
    indeterminate: HashSet<String>,
    failed: usize,
    unavailable: usize,
}

struct Cluster {
    net: SimNetwork,
    clock: Arc<TokioClock>,
    seed: u64,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    async fn start(&mut self, i: u8) {
        let mut c = ClusterConfig::lan("nemesis", id(i), addr(i));
        c.seeds = (1..=N).filter(|&j| j != i).map(addr).collect();
        c.cache.anti_entropy_interval = Duration::from_secs(10);
        c.cache.request_timeout = Duration::from_secs(1);
        let node = Node::builder(c)
            .trust(Trust::cluster_secret(SECRET).unwrap())
            .transport(Arc::new(self.net.transport(id(i), addr(i))))
            .clock(self.clock.clone())
            .seed(self.seed.wrapping_mul(1000).wrapping_add(u64::from(i)))
            .start()
            .await
            .unwrap();
        self.nodes[usize::from(i - 1)] = Some(node);
    }

    fn live(&self) -> Vec<Node> {
        self.nodes.iter().flatten().cloned().collect()
    }

    fn kill(&mut self, i: u8) {
        self.net.crash(addr(i));
        self.nodes[usize::from(i - 1)] = None;
    }

    /// Waits (bounded) until every running node sees every other running node alive and has
    /// finished a sync round for that membership.
    async fn settle(&self, limit: Duration) -> bool {
        let start = tokio::time::Instant::now();
        loop {
            let live = self.live();
            let running: Vec<&NodeId> = live.iter().map(|n| n.id()).collect();
            let agreed = live.iter().all(|n| {
                running
                    .iter()
                    .all(|r| n.members().get(r).is_some_and(|m| m.state == MemberState::Alive))
            });
            if agreed && live.iter().all(|n| n.cache().is_ready()) {
                return true;
            }
            if start.elapsed() > limit {
                for n in &live {
                    let view: Vec<String> = n
                        .members()
                        .members
                        .iter()
                        .map(|m| format!("{}:{:?}", m.id, m.state))
                        .collect();
                    let st = n.cache().stats();
                    eprintln!(
                        "{}: view {view:?} ready {} ring {} synced {} rounds {}",
                        n.id(),
                        n.cache().is_ready(),
                        st.ring_generation,
                        st.synced_generation,
                        st.sync_rounds
                    );
                }
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn bucket(n: &Node) -> Option<CacheBucket> {
    n.cache().bucket("orders").ok()
}

async fn client(
    cluster: Arc<Mutex<Vec<Option<Node>>>>,
    history: Arc<Mutex<History>>,
    mut rng: SplitMix64,
    client: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut n = 0u32;
    while !*stop.borrow() {
        let nodes: Vec<Node> = cluster.lock().unwrap().iter().flatten().cloned().collect();
        if nodes.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let node = &nodes[(rng.next_u64() % nodes.len() as u64) as usize];
        let Some(b) = bucket(node) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let delete_target = {
            let h = history.lock().unwrap();
            if rng.next_u64().is_multiple_of(5) && !h.acked.is_empty() {
                let skip = (rng.next_u64() % h.acked.len() as u64) as usize;
                h.acked.keys().nth(skip).filter(|k| !h.deleted.contains(*k)).cloned()
            } else {
                None
            }
        };
        if let Some(key) = delete_target {
            let r = b.delete(&key).await;
            let mut h = history.lock().unwrap();
            match r {
                Ok(()) => {
                    h.deleted.insert(key);
                }
                Err(CacheError::Indeterminate { .. }) => {
                    h.indeterminate.insert(key);
                }
                Err(CacheError::Unavailable { .. }) => h.unavailable += 1,
                Err(_) => {
                    // A failed delete changed nothing... unless it is a timeout-like outcome,
                    // which comes back as Indeterminate. Keep the key under both checks.
                    h.failed += 1;
                    h.indeterminate.insert(key);
                }
            }
        } else {
            n += 1;
            let key = format!("c{client}-{n}");
            let value = format!("v{client}-{n}");
            let r = b.set(&key, value.clone()).await;
            let mut h = history.lock().unwrap();
            match r {
                Ok(_) => {
                    h.acked.insert(key, value);
                }
                Err(CacheError::Indeterminate { .. }) => {
                    h.indeterminate.insert(key);
                }
                Err(CacheError::Unavailable { .. }) => h.unavailable += 1,
                Err(_) => h.failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 100)).await;
    }
}

#[derive(Debug, Default)]
struct Report {
    acked: usize,
    deleted: usize,
    indeterminate: usize,
    failed: usize,
    unavailable: usize,
    lost: Vec<String>,
    resurrected: Vec<String>,
    divergent: Vec<String>,
}

async fn run_seed(seed: u64) -> Report {
    let net = SimNetwork::new(SimConfig::new(seed));
    let mut c = Cluster {
        net: net.clone(),
        clock: Arc::new(TokioClock::new(T0)),
        seed,
        nodes: (0..N).map(|_| None).collect(),
    };
    for i in 1..=N {
        c.start(i).await;
    }
    assert!(c.settle(Duration::from_secs(60)).await, "seed {seed}: cluster did not form");
    let config =
        BucketConfig::builder("orders").max_entries(1_000_000).replicas(3).build().unwrap();
    c.live()[0].cache().create_bucket(config).await.unwrap();
    assert!(c.settle(Duration::from_secs(60)).await, "seed {seed}: bucket not known everywhere");

    let shared = Arc::new(Mutex::new(c.nodes.clone()));
    let history = Arc::new(Mutex::new(History::default()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut clients = tokio::task::JoinSet::new();
    for k in 0..3 {
        clients.spawn(client(
            shared.clone(),
            history.clone(),
            SplitMix64::new(rng.next_u64()),
            k,
            stop.clone(),
        ));
    }
    net.set_datagram_loss(LOSS);
    net.set_stream_break(STREAM_BREAK);
    // The nemesis: two kill/restart cycles and two partition/heal cycles, in random order, one
    // fault at a time, each followed by a bounded wait for the cluster to settle.
    let mut faults = vec![0u8, 0, 1, 1];
    for i in (1..faults.len()).rev() {
        faults.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    for fault in faults {
        tokio::time::sleep(Duration::from_secs(3)).await;
        match fault {
            0 => {
                let victim = 1 + (rng.next_u64() % u64::from(N)) as u8;
                c.kill(victim);
                *shared.lock().unwrap() = c.nodes.clone();
                tokio::time::sleep(Duration::from_secs(8)).await;
                c.start(victim).await;
                *shared.lock().unwrap() = c.nodes.clone();
            }
            _ => {
                let mut order: Vec<u8> = (1..=N).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                }
                let minority = 1 + (rng.next_u64() % 2) as usize;
                let (a, b) = order.split_at(minority);
                let a: Vec<SocketAddr> = a.iter().map(|&i| addr(i)).collect();
                let b: Vec<SocketAddr> = b.iter().map(|&i| addr(i)).collect();
                net.partition(&[&a, &b]);
                tokio::time::sleep(Duration::from_secs(8)).await;
                net.heal();
            }
        }
        c.settle(Duration::from_secs(40)).await;
    }
    stop_tx.send_replace(true);
    while clients.join_next().await.is_some() {}
    // Heal everything, stop the loss, and let repair finish: settle, then two more
    // anti-entropy periods so hand-offs after the last placement change complete.
    net.heal();
    net.set_datagram_loss(0.0);
    net.set_stream_break(0.0);
    assert!(
        c.settle(Duration::from_secs(300)).await,
        "seed {seed}: did not settle after the last heal"
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(c.settle(Duration::from_secs(60)).await, "seed {seed}: did not settle");

    let live = c.live();
    let h = std::mem::take(&mut *history.lock().unwrap());
    let reader = bucket(&live[0]).unwrap();
    let mut report = Report {
        acked: h.acked.len(),
        deleted: h.deleted.len(),
        indeterminate: h.indeterminate.len(),
        failed: h.failed,
        unavailable: h.unavailable,
        ..Report::default()
    };
    for (key, value) in &h.acked {
        let got = reader.get_with(key, Consistency::All).await;
        if h.deleted.contains(key) {
            if !matches!(got, Ok(None)) {
                report.resurrected.push(format!("{key}: {got:?}"));
            }
        } else if !h.indeterminate.contains(key) && !matches!(&got, Ok(Some(v)) if *v == *value) {
            report.lost.push(format!("{key}: {got:?}"));
        }
    }
    // Convergence: every key held anywhere sits on exactly its owners, identically.
    let buckets: Vec<(NodeId, CacheBucket)> =
        live.iter().map(|n| (n.id().clone(), bucket(n).unwrap())).collect();
    let mut keys = BTreeMap::new();
    for (_, b) in &buckets {
        for (k, _) in b.local_entries() {
            keys.insert(k, ());
        }
    }
    for key in keys.keys() {
        let owners = reader.owners(key);
        let held: Vec<(&NodeId, _)> =
            buckets.iter().filter_map(|(n, b)| b.local_record(key).map(|r| (n, r))).collect();
        let on_owners = held.iter().all(|(n, _)| owners.contains(n)) && held.len() == owners.len();
        let same = held.windows(2).all(|w| w[0].1 == w[1].1);
        if !on_owners || !same {
            report.divergent.push(format!(
                "{}: owners {owners:?}, held by {:?}",
                String::from_utf8_lossy(key),
                held.iter().map(|(n, _)| n).collect::<Vec<_>>()
            ));
        }
    }
    report
}

/// Keeps the last debug events of one seed's run, to print if it fails.
struct Recorder {
    lines: Mutex<std::collections::VecDeque<String>>,
    start: Mutex<Option<tokio::time::Instant>>,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::DEBUG && m.target().starts_with("mycorrizal")
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields(String::new());
        e.record(&mut f);
        let now = tokio::time::Instant::now();
        let t = *self.start.lock().unwrap().get_or_insert(now);
        let mut lines = self.lines.lock().unwrap();
        if lines.len() >= 4000 {
            lines.pop_front();
        }
        lines.push_back(format!(
            "{:>9.3} {}{}",
            (now - t).as_secs_f64(),
            e.metadata().target(),
            f.0
        ));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn run_one(seed: u64) -> Report {
    let recorder = Arc::new(Recorder { lines: Mutex::default(), start: Mutex::default() });
    let rt = mycorrizal_testkit::sim::runtime(seed);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing::subscriber::with_default(recorder.clone(), || rt.block_on(run_seed(seed)))
    }));
    let bad = r.as_ref().map_or(true, |r| {
        !(r.lost.is_empty() && r.resurrected.is_empty() && r.divergent.is_empty())
    });
    if bad && std::env::var("CACHE_NEMESIS_TRACE").is_ok() {
        let path = format!("/tmp/cache_nemesis_{seed}.log");
        let lines: Vec<String> = recorder.lines.lock().unwrap().iter().cloned().collect();
        let _ = std::fs::write(&path, lines.join("\n"));
        eprintln!("seed {seed}: last debug events in {path}");
    }
    match r {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

#[test]
fn no_acknowledged_write_is_lost_under_crashes_partitions_and_loss() {
    let seeds: u64 =
        std::env::var("CACHE_NEMESIS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let first: u64 =
        std::env::var("CACHE_NEMESIS_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64;
    let results = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let results = results.clone();
            s.spawn(move || {
                for seed in (first + t..first + seeds).step_by(threads as usize) {
                    let r = std::panic::catch_unwind(|| run_one(seed));
                    results.lock().unwrap().push((
                        seed,
                        r.map_err(|e| {
                            e.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        }),
                    ));
                }
            });
        }
    });
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|(s, _)| *s);
    let mut bad = Vec::new();
    let (mut acked, mut deleted, mut indeterminate, mut failed, mut unavailable) = (0, 0, 0, 0, 0);
    for (seed, r) in &results {
        match r {
            Ok(r) => {
                acked += r.acked;
                deleted += r.deleted;
                indeterminate += r.indeterminate;
                failed += r.failed;
                unavailable += r.unavailable;
                if !(r.lost.is_empty() && r.resurrected.is_empty() && r.divergent.is_empty()) {
                    bad.push(format!(
                        "seed {seed}: lost {:?} resurrected {:?} divergent {:?}",
                        &r.lost[..r.lost.len().min(5)],
                        &r.resurrected[..r.resurrected.len().min(5)],
                        &r.divergent[..r.divergent.len().min(5)]
                    ));
                }
            }
            Err(panic) => bad.push(format!("seed {seed}: panicked: {panic}")),
        }
    }
    println!(
        "{} seeds from {first}: {acked} acknowledged writes, {deleted} acknowledged deletes, \
         {indeterminate} indeterminate, {failed} failed, {unavailable} unavailable; {} bad",
        results.len(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "failing seeds (rerun one with CACHE_NEMESIS_FIRST=<seed> CACHE_NEMESIS_SEEDS=1):\n{}",
        bad.join("\n")
    );
}
