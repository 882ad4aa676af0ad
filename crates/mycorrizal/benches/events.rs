//! The event bus on three nodes over loopback (mutual TLS): publish-to-deliver throughput and
//! latency for broadcast (a subscriber on each of the two other nodes) and for a consumer
//! group (one member on each of the two other nodes, acknowledging at once), with 1 and 64
//! publishes outstanding. 100-byte payloads.
//!
//! `cargo bench -p mycorrizal --bench events` (`EVENTS_BENCH_EVENTS` sets the events per run,
//! default 20,000).

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, Node},
    security::Trust,
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's base instant (all nodes run in this process).
fn stamp() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn payload() -> Vec<u8> {
    let mut p = vec![b'x'; 100];
    p[..8].copy_from_slice(&stamp().to_le_bytes());
    p
}

fn age_ns(payload: &[u8]) -> u64 {
    let sent = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    stamp().saturating_sub(sent)
}

async fn node(i: u8, seed: Option<SocketAddr>) -> Node {
    let id = NodeId::new(format!("evbench-{i}")).unwrap();
    let mut c = ClusterConfig::lan("eventsbench", id, SocketAddr::from(([127, 0, 0, 70 + i], 0)));
    c.seeds = seed.into_iter().collect();
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

fn quantile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

struct Run {
    /// Events delivered per second, per receiving node.
    per_node_rate: f64,
    deliver_p50_us: f64,
    deliver_p99_us: f64,
    publish_p50_us: f64,
    publish_p99_us: f64,
}

/// Publishes `total` events on `topic` from `concurrency` tasks while `receivers` (one task
/// per receiving node) collect publish-to-deliver latencies.
async fn run(
    publisher: &Node,
    topic: &'static str,
    total: usize,
    concurrency: usize,
    receivers: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    per_receiver: usize,
) -> Run {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let events = publisher.events();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            for _ in (t..total).step_by(concurrency) {
                let s = Instant::now();
                events.publish(topic, payload()).await.expect("publish confirmed");
                lat.push(s.elapsed().as_nanos() as u64);
            }
            lat
        });
    }
    let mut publish = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        publish.extend(r.unwrap());
    }
    let mut deliver = Vec::new();
    for r in receivers {
        deliver.extend(r.await.unwrap());
    }
    let elapsed = start.elapsed();
    publish.sort_unstable();
    deliver.sort_unstable();
    Run {
        per_node_rate: per_receiver as f64 / elapsed.as_secs_f64(),
        deliver_p50_us: quantile(&deliver, 0.50),
        deliver_p99_us: quantile(&deliver, 0.99),
        publish_p50_us: quantile(&publish, 0.50),
        publish_p99_us: quantile(&publish, 0.99),
    }
}

fn row(name: &str, r: &Run) {
    println!(
        "{name:<40} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        r.per_node_rate, r.deliver_p50_us, r.deliver_p99_us, r.publish_p50_us, r.publish_p99_us
    );
}

fn main() {
    let total: usize =
        std::env::var("EVENTS_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let first = node(1, None).await;
        let seed = first.addr();
        let nodes = Arc::new([first, node(2, Some(seed)).await, node(3, Some(seed)).await]);
        for n in nodes.iter() {
            n.ready().await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if std::env::var("EVENTS_BENCH_DEBUG").is_ok() {
            for n in nodes.iter() {
                eprintln!("{}: conns {} at start", n.id(), n.connections());
            }
        }
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "scenario (3 nodes, 100 B)",
            "ev/s/node",
            "deliv p50",
            "deliv p99",
            "pub p50",
            "pub p99"
        );
        for concurrency in [1usize, 64] {
            // Broadcast: every event to a subscriber on node 2 and on node 3.
            let topic: &'static str = if concurrency == 1 { "b1" } else { "b64" };
            let mut receivers = Vec::new();
            for n in &nodes[1..] {
                let mut sub = n.events().subscribe(topic).await.unwrap();
                receivers.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(total);
                    for _ in 0..total {
                        let e = sub.recv().await.expect("no gap or lag in a healthy run");
                        lat.push(age_ns(&e.payload));
                    }
                    lat
                }));
            }
            let r = run(&nodes[0], topic, total, concurrency, receivers, total).await;
            row(&format!("broadcast, {concurrency} outstanding"), &r);
            if std::env::var("EVENTS_BENCH_DEBUG").is_ok() {
                for n in nodes.iter() {
                    eprintln!("{}: conns {} {:?}", n.id(), n.connections(), n.events().stats());
                }
            }

            // A group with one member on node 2 and one on node 3, acknowledging at once.
            let topic: &'static str = if concurrency == 1 { "g1" } else { "g64" };
            let (done_tx, done_rx) = tokio::sync::watch::channel(0usize);
            let done_tx = Arc::new(done_tx);
            let mut receivers = Vec::new();
            for n in &nodes[1..] {
                let mut member = n.events().subscribe_group(topic, "workers").await.unwrap();
                let (done_tx, mut done_rx) = (done_tx.clone(), done_rx.clone());
                receivers.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        tokio::select! {
                            d = member.recv() => {
                                let d = d.unwrap();
                                lat.push(age_ns(&d.event.payload));
                                d.ack();
                                done_tx.send_modify(|n| *n += 1);
                            }
                            _ = done_rx.wait_for(|n| *n >= total) => return lat,
                        }
                    }
                }));
            }
            // Group throughput counts events processed by the group (each by one member).
            let r = run(&nodes[0], topic, total, concurrency, receivers, total).await;
            row(&format!("group (2 members), {concurrency} outstanding"), &r);
        }
        println!("ev/s/node: events delivered per second to each receiving node (broadcast) or to the group; latencies in µs");
    });
}
