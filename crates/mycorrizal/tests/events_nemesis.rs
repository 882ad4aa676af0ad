//! The event bus under failure, simulated (paused clock, seeded): 5 nodes, broadcast
//! subscribers everywhere, two consumer groups on one topic, 10,000 events from 3 publishers,
//! while one consumer node is killed and another is partitioned away, declared down, and
//! healed. Members process with random delays and sometimes drop a delivery unacknowledged.
//!
//! The checker: every acknowledged publish reached every broadcast subscriber alive
//! throughout, the partitioned one included (a node held down keeps its queue for
//! `rejoin_grace`); every jump in a publisher's sequence at a subscriber was announced by a
//! gap of exactly that size (never a silent loss); per-publisher order holds at every
//! subscriber and for
//! first deliveries at every group member; every acknowledged publish was processed at least
//! once by each group; duplicates are counted and reported; nothing is left unacknowledged
//! or abandoned.
//!
//! `EVENTS_NEMESIS_SEEDS` (default 20) and `EVENTS_NEMESIS_FIRST` (default 1) choose the seeds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mycorrizal::{
    NodeId,
    clock::TokioClock,
    cluster::{ClusterConfig, MemberState, Node},
    core::rng::SplitMix64,
    events::{EventId, RecvError},
    security::Trust,
    transport::{SimConfig, SimNetwork},
};
use tokio::task::JoinHandle;

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const T0: u64 = 1_800_000_000_000;
const N: u8 = 5;
const TOPIC: &str = "orders";
/// Events per publisher (nodes 1, 2, 3): 10,000 in all.
const QUOTAS: [u64; 3] = [3334, 3333, 3333];
const KILLED: u8 = 4;
const PARTITIONED: u8 = 5;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 4, i], 7946))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("v{i}")).unwrap()
}

#[derive(Debug, Clone)]
enum Seen {
    Event(EventId),
    Gap(NodeId, u64),
    Lagged(u64),
}

#[derive(Default)]
struct History {
    /// Every publish and whether it was acknowledged.
    published: Vec<(EventId, bool)>,
    /// What each node's broadcast subscriber saw, in order.
    broadcast: BTreeMap<u8, Vec<Seen>>,
    /// Every group delivery: (group, member, event, attempt), in order per member.
    deliveries: Vec<(&'static str, usize, EventId, u32)>,
    /// Every processed (acknowledged) group delivery.
    processed: Vec<(&'static str, EventId)>,
}

struct Setup {
    net: SimNetwork,
    clock: Arc<TokioClock>,
    seed: u64,
}

impl Setup {
    async fn start(&self, i: u8) -> Node {
        let mut c = ClusterConfig::lan("nemesis", id(i), addr(i));
        c.seeds = (1..=N).filter(|&j| j != i).map(addr).collect();
        c.events.publish_timeout = Duration::from_secs(2);
        c.events.request_timeout = Duration::from_secs(1);
        // Members take at most ~4 ms and the ack deadline is 30 s: 40 s of silence means the
        // settle was lost.
        c.events.reoffer_interval = Duration::from_secs(40);
        Node::builder(c)
            .trust(Trust::cluster_secret(SECRET).unwrap())
            .transport(Arc::new(self.net.transport(id(i), addr(i))))
            .clock(self.clock.clone())
            .seed(self.seed.wrapping_mul(1000).wrapping_add(u64::from(i)))
            .start()
            .await
            .unwrap()
    }
}

async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Starts a node's subscribers: one broadcast subscriber, and its group members.
async fn consumers(
    node: &Node,
    i: u8,
    history: &Arc<Mutex<History>>,
    seed: u64,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut sub = node.events().subscribe(TOPIC).await.unwrap();
    let h = history.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let seen = match sub.recv().await {
                Ok(e) => Seen::Event(e.id),
                Err(RecvError::Gap { publisher, missed }) => Seen::Gap(publisher, missed),
                Err(RecvError::Lagged { missed }) => Seen::Lagged(missed),
                Err(RecvError::Closed) => return,
            };
            h.lock().unwrap().broadcast.entry(i).or_default().push(seen);
        }
    }));
    let groups: &[&'static str] = match i {
        2 => &["billing"],
        3 => &["shipping"],
        4 => &["billing", "shipping"],
        5 => &["billing", "shipping", "shipping"],
        _ => &[],
    };
    for (k, group) in groups.iter().copied().enumerate() {
        let mut member = node.events().subscribe_group(TOPIC, group).await.unwrap();
        let member_no = usize::from(i) * 10 + k;
        let h = history.clone();
        let mut rng = SplitMix64::new(seed ^ (member_no as u64) << 32);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(d) = member.recv().await else { return };
                h.lock().unwrap().deliveries.push((
                    group,
                    member_no,
                    d.event.id.clone(),
                    d.event.attempt,
                ));
                tokio::time::sleep(Duration::from_micros(rng.next_u64() % 4000)).await;
                if rng.next_u64() % 100 < 3 {
                    drop(d); // gave up: redelivered
                } else {
                    h.lock().unwrap().processed.push((group, d.event.id.clone()));
                    d.ack();
                }
            }
        }));
    }
    tasks
}

struct Outcome {
    acked: usize,
    unconfirmed: usize,
    duplicates: BTreeMap<&'static str, usize>,
    gaps_told: u64,
}

async fn run(seed: u64) -> Result<Outcome, String> {
    let setup = Setup {
        net: SimNetwork::new(SimConfig::new(seed)),
        clock: Arc::new(TokioClock::new(T0)),
        seed,
    };
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for i in 1..=N {
        nodes.push(Some(setup.start(i).await));
    }
    let formed = within(Duration::from_secs(30), || {
        nodes.iter().flatten().all(|o| {
            (1..=N).all(|i| o.members().get(&id(i)).is_some_and(|m| m.state == MemberState::Alive))
        })
    })
    .await;
    if !formed {
        return Err("cluster did not form".into());
    }
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks: BTreeMap<u8, Vec<JoinHandle<()>>> = BTreeMap::new();
    for i in 1..=N {
        let node = nodes[usize::from(i - 1)].as_ref().unwrap();
        tasks.insert(i, consumers(node, i, &history, seed).await);
    }
    let mut publishers = Vec::new();
    for (k, quota) in QUOTAS.iter().copied().enumerate() {
        let events = nodes[k].as_ref().unwrap().events();
        let h = history.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..quota {
                let outcome = events.publish(TOPIC, format!("{k}-{n}").into_bytes()).await;
                let entry = match outcome {
                    Ok(id) => (id, true),
                    Err(mycorrizal::events::PublishError::Unconfirmed { id, missing }) => {
                        if std::env::var("EVENTS_NEMESIS_DEBUG").is_ok()
                            && missing.iter().any(|m| {
                                m.target
                                    == mycorrizal::events::Target::Node(NodeId::new("v1").unwrap())
                            })
                        {
                            eprintln!("{:?} {id}: {missing:?}", tokio::time::Instant::now());
                        }
                        (id, false)
                    }
                    Err(e) => panic!("publish refused: {e}"),
                };
                h.lock().unwrap().published.push(entry);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // The nemesis: kill a consumer node, then cut another off long enough to be declared
    // down, then heal.
    // Publishing takes about 35 s of virtual time; the heal comes well before its end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    setup.net.crash(addr(KILLED));
    for t in tasks.remove(&KILLED).unwrap() {
        t.abort();
    }
    nodes[usize::from(KILLED - 1)] = None;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let majority: Vec<SocketAddr> = (1..=N).filter(|&i| i != PARTITIONED).map(addr).collect();
    setup.net.partition(&[&majority, &[addr(PARTITIONED)]]);
    // Longer than the failure detector needs (11.5 s for 5 LAN nodes): it is declared down
    // and rejoins after the heal.
    tokio::time::sleep(Duration::from_secs(16)).await;
    setup.net.heal();
    for p in publishers {
        p.await.map_err(|e| format!("publisher: {e}"))?;
    }
    let live: Vec<Node> = nodes.iter().flatten().cloned().collect();
    let settled = within(Duration::from_secs(120), || {
        live.iter().all(|n| {
            let s = n.events().stats();
            s.unacked == 0 && s.held == 0
        })
    })
    .await;
    // Let the last deliveries land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if !settled {
        let stats: Vec<String> =
            live.iter().map(|n| format!("{}: {:?}", n.id(), n.events().stats())).collect();
        return Err(format!("group deliveries still unacknowledged after 120 s: {stats:#?}"));
    }
    if std::env::var("EVENTS_NEMESIS_DEBUG").is_ok() {
        for n in &live {
            let view: Vec<String> = n
                .members()
                .members
                .iter()
                .map(|m| format!("{}:{}:{:?}", m.id, m.generation, m.state))
                .collect();
            eprintln!(
                "{}: {view:?}\n   {:?}\n   {:?}",
                n.id(),
                n.events().stats(),
                n.membership_stats()
            );
        }
    }
    let abandoned: u64 = live.iter().map(|n| n.events().stats().abandoned).sum();
    for ts in tasks.values() {
        for t in ts {
            t.abort();
        }
    }
    let h = history.lock().unwrap();
    check(&h, abandoned)
}

fn check(h: &History, abandoned: u64) -> Result<Outcome, String> {
    let acked: BTreeSet<&EventId> =
        h.published.iter().filter(|(_, ok)| *ok).map(|(id, _)| id).collect();
    let last_published: BTreeMap<&NodeId, u64> =
        h.published.iter().fold(BTreeMap::new(), |mut m, (id, _)| {
            let e = m.entry(&id.publisher).or_insert(0);
            *e = (*e).max(id.seq);
            m
        });
    if abandoned != 0 {
        return Err(format!("{abandoned} group events abandoned"));
    }
    let mut gaps_told = 0;
    for i in (1..=N).filter(|&i| i != KILLED) {
        let seen = h.broadcast.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        // Order, and every jump announced by a gap of exactly its size just before it.
        let mut last: BTreeMap<&NodeId, u64> = BTreeMap::new();
        let mut announced: Option<(&NodeId, u64)> = None;
        let mut received = BTreeSet::new();
        for s in seen {
            match s {
                Seen::Event(id) => {
                    let prev = last.get(&id.publisher).copied();
                    if let Some(prev) = prev {
                        if id.seq <= prev {
                            return Err(format!("node {i}: {id} after seq {prev}: out of order"));
                        }
                        let jump = id.seq - prev - 1;
                        let told = match announced {
                            Some((p, missed)) if p == &id.publisher => missed,
                            _ => 0,
                        };
                        if jump != told {
                            return Err(format!(
                                "node {i}: {jump} events from {} before {id} missing, {told} announced",
                                id.publisher
                            ));
                        }
                    }
                    announced = None;
                    last.insert(&id.publisher, id.seq);
                    received.insert(id);
                }
                Seen::Gap(p, missed) => {
                    // Checked against the jump at the next event; whether it cost an
                    // acknowledged event is checked below.
                    gaps_told += missed;
                    announced = Some((p, *missed));
                }
                Seen::Lagged(n) => return Err(format!("node {i}: lagged {n} with back-pressure")),
            }
        }
        if i == PARTITIONED {
            // It saw the end of every stream after the heal (nothing missed at the tail).
            for (p, seq) in &last_published {
                if last.get(p) != Some(seq) {
                    return Err(format!(
                        "node {i}: last event from {p} is {:?}, published {seq}",
                        last.get(p)
                    ));
                }
            }
        }
        let lost: Vec<&&EventId> = acked.iter().filter(|id| !received.contains(**id)).collect();
        if !lost.is_empty() {
            return Err(format!(
                "node {i}: {} acknowledged events never delivered, e.g. {}",
                lost.len(),
                lost[0]
            ));
        }
    }
    // Groups: at least once for every acknowledged publish; first deliveries in order.
    let mut duplicates = BTreeMap::new();
    for group in ["billing", "shipping"] {
        let processed: BTreeSet<&EventId> =
            h.processed.iter().filter(|(g, _)| *g == group).map(|(_, id)| id).collect();
        let missing: Vec<&&EventId> = acked.iter().filter(|id| !processed.contains(**id)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "group {group}: {} acknowledged events never processed, e.g. {}",
                missing.len(),
                missing[0]
            ));
        }
        let mut count: BTreeMap<&EventId, usize> = BTreeMap::new();
        let mut first_order: BTreeMap<(usize, &NodeId), u64> = BTreeMap::new();
        for (g, member, id, attempt) in &h.deliveries {
            if *g != group {
                continue;
            }
            *count.entry(id).or_insert(0) += 1;
            if *attempt == 1 {
                let prev = first_order.insert((*member, &id.publisher), id.seq).unwrap_or(0);
                if id.seq <= prev {
                    return Err(format!("member {member}: first delivery {id} after seq {prev}"));
                }
            }
        }
        duplicates.insert(group, count.values().map(|c| c - 1).sum());
    }
    Ok(Outcome {
        acked: acked.len(),
        unconfirmed: h.published.len() - acked.len(),
        duplicates,
        gaps_told,
    })
}

/// Each seed runs on its own paused-clock runtime seeded from it, so a failing seed replays.
#[test]
fn no_acknowledged_event_is_lost_under_a_kill_and_a_partition() {
    let seeds: u64 =
        std::env::var("EVENTS_NEMESIS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let first: u64 =
        std::env::var("EVENTS_NEMESIS_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        match mycorrizal_testkit::sim::runtime(seed).block_on(run(seed)) {
            Ok(o) => eprintln!(
                "seed {seed}: {} acknowledged, {} unconfirmed, duplicates {:?}, {} missed events announced to the partitioned subscriber",
                o.acked, o.unconfirmed, o.duplicates, o.gaps_told
            ),
            Err(e) => {
                eprintln!("seed {seed}: FAILED: {e}");
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failing seeds (rerun with EVENTS_NEMESIS_FIRST=<seed> EVENTS_NEMESIS_SEEDS=1): {failures:?}"
    );
}
