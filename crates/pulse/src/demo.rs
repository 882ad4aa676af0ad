//! `pulse demo`: a local three-node cluster doing real work, narrated for a newcomer.
//!
//! Three nodes start in this process on 127.0.0.1 (mutual TLS between them, secret generated
//! for the run), share replicated buckets and an event bus, survive the death of one node
//! without losing an acknowledged write or event, and bring it back up to date when it
//! returns. The command exits 0 only if every check passed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};

use crate::progress;
use bytes::Bytes;
use mycorrizal::{
    NodeId,
    cache::CacheBucket,
    cluster::{ClusterConfig, MemberState, Node},
    core::{quorum::Consistency, rng::SplitMix64},
    security::{ClusterSecret, Trust},
    store::BucketConfig,
};

/// Options of `pulse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seed of the workload; the same seed gives the same keys and choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Orders written before the failure.
    #[arg(long, default_value_t = 3_000)]
    orders: u32,
}

const CLUSTER: &str = "demo";

fn id(i: usize) -> anyhow::Result<NodeId> {
    Ok(NodeId::new(format!("node-{i}"))?)
}

async fn start(i: usize, secret: &str, seed: Option<SocketAddr>) -> anyhow::Result<Node> {
    let mut config = ClusterConfig::lan(CLUSTER, id(i)?, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.seeds = seed.into_iter().collect();
    Node::builder(config)
        .trust(Trust::cluster_secret(secret)?)
        .start()
        .await
        .with_context(|| format!("starting node-{i}"))
}

async fn until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let spinner = progress::spinner(&format!("waiting: {what}"));
    while !done() {
        ensure!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spinner.finish_and_clear();
    Ok(start.elapsed())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = SplitMix64::new(args.seed);
    let secret = ClusterSecret::generate();

    step("1. Start three nodes on 127.0.0.1");
    let first = start(1, &secret, None).await?;
    let seed = first.addr();
    let mut nodes =
        vec![first, start(2, &secret, Some(seed)).await?, start(3, &secret, Some(seed)).await?];
    let took = until(Duration::from_secs(20), "three nodes see each other", || {
        nodes.iter().all(|n| n.members().live().count() == 3)
    })
    .await?;
    for n in &nodes {
        say(&format!(
            "{} listens on {} (TCP with mutual TLS, UDP gossip sealed)",
            n.id(),
            n.addr()
        ));
    }
    say(&format!(
        "all three see each other alive after {} ms; the secret never left this process",
        took.as_millis()
    ));

    step("2. Declare buckets once; every node learns them");
    let orders_config =
        BucketConfig::builder("orders").replicas(3).max_entries(1_000_000).build()?;
    nodes[0].cache().create_bucket(orders_config).await?;
    let sessions_config = BucketConfig::builder("sessions")
        .replicas(2)
        .default_ttl(Duration::from_secs(2))
        .max_entries(100_000)
        .build()?;
    nodes[1].cache().create_bucket(sessions_config).await?;
    let prices_config = BucketConfig::builder("prices").replicas(2).max_entries(10_000).build()?;
    nodes[2].cache().create_bucket(prices_config).await?;
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(20), n.cache().ready())
            .await
            .context("cache ready")?;
        let names: Vec<String> = n.cache().buckets().iter().map(|b| b.name().to_string()).collect();
        say(&format!("{} knows {}", n.id(), names.join(", ")));
    }
    say("orders: 3 copies of every key, writes wait for 2 (quorum); sessions: 2 copies, 2 s TTL");

    step("3. Mixed workload from all three nodes");
    let orders: Vec<CacheBucket> =
        nodes.iter().map(|n| n.cache().bucket("orders")).collect::<Result<_, _>>()?;
    let t = Instant::now();
    let mut acked = write_orders(&orders, 0, args.orders).await;
    let write_ms = t.elapsed().as_millis().max(1);
    ensure!(
        acked.len() == args.orders as usize,
        "only {} of {} writes acknowledged",
        acked.len(),
        args.orders
    );
    say(&format!(
        "{} orders written at quorum in {write_ms} ms ({:.0} writes/s, 24 concurrent writers)",
        acked.len(),
        acked.len() as f64 * 1000.0 / write_ms as f64
    ));
    let mut deleted = Vec::new();
    for _ in 0..200 {
        let k = (rng.next_u64() % u64::from(args.orders)) as u32;
        let key = format!("order-{k}");
        if acked.remove(&key).is_some() {
            orders[(k % 3) as usize].delete(&key).await?;
            deleted.push(key);
        }
    }
    say(&format!(
        "{} orders deleted (each leaves a tombstone so no copy can come back)",
        deleted.len()
    ));
    let t = Instant::now();
    let (mut local, mut remote) = (0, 0);
    for (key, value) in &acked {
        let node = (rng.next_u64() % 3) as usize;
        let mine = orders[node].owners(key).contains(nodes[node].id());
        let got = orders[node].get(key).await?;
        ensure!(got.as_deref() == Some(value.as_bytes()), "{key} read back wrong: {got:?}");
        if mine { local += 1 } else { remote += 1 }
    }
    say(&format!(
        "read every order back in {} ms: {local} answered by the node's own replica without the network, {remote} by a peer",
        t.elapsed().as_millis()
    ));
    let sessions: Vec<CacheBucket> =
        nodes.iter().map(|n| n.cache().bucket("sessions")).collect::<Result<_, _>>()?;
    for s in 0..300u32 {
        sessions[(s % 3) as usize].set(format!("session-{s}"), format!("user-{s}")).await?;
    }
    say("300 sessions written with the bucket's 2 s TTL");
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for n in &nodes {
        for _ in 0..10 {
            let (b, loads) = (n.cache().bucket("prices")?, loads.clone());
            tasks.spawn(async move {
                b.get_or_load("sku-42", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await; // a slow database
                    Ok::<_, std::io::Error>(Bytes::from_static(b"19.99"))
                })
                .await
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        ensure!(r??.as_ref() == b"19.99", "read-through returned the wrong price");
    }
    let loads = loads.load(Ordering::SeqCst);
    ensure!(loads == 1, "loader ran {loads} times");
    say(
        "30 concurrent cache misses for one price on three nodes: the loader ran once, everyone got 19.99",
    );

    step("4. Events: an audit log on every node, one billing instance per order");
    let billing = Billing::default();
    let mut audits = Vec::new();
    let mut members = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        audits.push(n.events().subscribe("orders.placed").await?);
        let placed = n.events().subscribe_group("orders.placed", "billing").await?;
        let refunds = n.events().subscribe_group("orders.refund", "billing").await?;
        members.spawn(billing.clone().member(i, placed, refunds));
    }
    let t = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let events = n.events();
        publishers.spawn(async move {
            for k in (i as u32..EVENTS).step_by(3) {
                events.publish("orders.placed", format!("order-{k}").into_bytes()).await?;
            }
            Ok::<_, mycorrizal::events::PublishError>(())
        });
    }
    while let Some(r) = publishers.join_next().await {
        r??;
    }
    for (i, audit) in audits.iter_mut().enumerate() {
        let mut last: BTreeMap<NodeId, u64> = BTreeMap::new();
        for _ in 0..EVENTS {
            let e = tokio::time::timeout(Duration::from_secs(10), audit.recv())
                .await
                .context("audit log")??;
            let prev = last.insert(e.id.publisher.clone(), e.id.seq).unwrap_or(0);
            ensure!(e.id.seq == prev + 1, "node-{}'s audit log out of order at {}", i + 1, e.id);
        }
    }
    until(Duration::from_secs(10), "billing handled every order", || {
        billing.placed_done() == EVENTS as usize
    })
    .await?;
    let (once, split) = billing.placed_summary();
    ensure!(once, "an order was billed twice in a healthy cluster");
    say(&format!(
        "{EVENTS} order events published from all three nodes in {} ms: every node's audit log got all {EVENTS}, in each publisher's order",
        t.elapsed().as_millis()
    ));
    say(&format!(
        "billing (a consumer group) handled each order exactly once, split {} across the nodes",
        split.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("/")
    ));
    // Published at once: the publisher gives each to the member node with the fewest
    // unacknowledged events, so node-3 gets its share before it stalls.
    let mut refunds = tokio::task::JoinSet::new();
    for r in 0..REFUNDS {
        let events = nodes[0].events();
        refunds.spawn(async move {
            events.publish("orders.refund", format!("refund-{r}").into_bytes()).await
        });
    }
    while let Some(r) = refunds.join_next().await {
        r??;
    }
    until(Duration::from_secs(10), "refunds taken", || {
        billing.refunds_done() + billing.refunds_held() == REFUNDS as usize
    })
    .await?;
    let held_by_3 = billing.refunds_held();
    say(&format!(
        "{REFUNDS} refunds published; node-3's billing instance took {held_by_3} of them and stalls without acknowledging"
    ));

    step("5. Kill node-3 without warning, keep writing");
    let victim = nodes.pop().context("three nodes")?;
    drop(victim);
    let t = Instant::now();
    let survivors = &orders[..2];
    let after = write_orders(survivors, args.orders, args.orders + 500).await;
    say(&format!(
        "{} more orders acknowledged by the two survivors while node-3 is dead (writes to it become hints)",
        after.len()
    ));
    acked.extend(after);
    let mut missing = 0;
    for (key, value) in &acked {
        for b in survivors {
            if b.get_with(key, Consistency::Quorum).await?.as_deref() != Some(value.as_bytes()) {
                missing += 1;
            }
        }
    }
    ensure!(missing == 0, "{missing} acknowledged writes not readable");
    for key in &deleted {
        ensure!(
            survivors[0].get_with(key, Consistency::Quorum).await?.is_none(),
            "{key} came back"
        );
    }
    say(&format!(
        "all {} acknowledged orders readable at quorum on both survivors; {} deletes still deleted",
        acked.len(),
        deleted.len()
    ));
    let detected = until(Duration::from_secs(30), "node-3 seen down", || {
        nodes.iter().all(|n| {
            n.members()
                .get(&NodeId::new("node-3").expect("valid"))
                .is_some_and(|m| m.state == MemberState::Down)
        })
    })
    .await?;
    say(&format!(
        "membership declared node-3 down {:.1} s after the kill",
        (t.elapsed()).as_secs_f64().max(detected.as_secs_f64())
    ));
    until(Duration::from_secs(20), "refunds redelivered", || {
        billing.refunds_done() == REFUNDS as usize
    })
    .await?;
    let again = billing.refunds_redelivered();
    ensure!(again >= held_by_3, "only {again} of the {held_by_3} held refunds were redelivered");
    say(&format!(
        "the {held_by_3} refunds node-3 held were delivered again to the survivors (attempt 2) and handled: all {REFUNDS} done"
    ));
    members.abort_all();

    step("6. Restart node-3 empty; it catches up");
    let t = Instant::now();
    let back = start(3, &secret, Some(seed)).await?;
    let spinner = progress::spinner("node-3 pulling the keys it owns from its peers");
    tokio::time::timeout(Duration::from_secs(30), back.cache().ready())
        .await
        .context("node-3 catching up")?;
    spinner.finish_and_clear();
    let b3 = back.cache().bucket("orders")?;
    let held = acked
        .iter()
        .filter(|(k, v)| {
            b3.local_record(k).and_then(|r| r.value().cloned()).as_deref() == Some(v.as_bytes())
        })
        .count();
    ensure!(held == acked.len(), "node-3 holds {held} of {} orders", acked.len());
    let tombstones =
        deleted.iter().filter(|k| b3.local_record(k).is_some_and(|r| r.is_tombstone())).count();
    say(&format!(
        "node-3 rejoined and holds all {held} orders and {tombstones} tombstones after {} ms (only the differences moved)",
        t.elapsed().as_millis()
    ));
    let stats = back.cache().stats();
    say(&format!("node-3 received {} records from its peers", stats.sync_records_received));

    step("7. TTLs are replicated: sessions expire everywhere at once");
    nodes.push(back);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut left = 0;
    for n in &nodes {
        let s = n.cache().bucket("sessions")?;
        for i in 0..300u32 {
            if s.get(format!("session-{i}")).await?.is_some() {
                left += 1;
            }
        }
    }
    ensure!(left == 0, "{left} sessions outlived their TTL");
    say("0 of 300 sessions readable on any node 2.2 s later");

    step("8. Leave gracefully");
    for n in nodes {
        n.shutdown(Duration::from_secs(5)).await;
    }
    say("every node handed its keys over and left; peers saw them leave, not fail");
    println!("\nEvery check passed. ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

async fn write_orders(buckets: &[CacheBucket], from: u32, to: u32) -> BTreeMap<String, String> {
    let lanes = 8;
    let stride = (buckets.len() * lanes) as u32;
    let bar = progress::bar(u64::from(to - from), "writing orders");
    let mut tasks = tokio::task::JoinSet::new();
    for (w, b) in buckets.iter().enumerate() {
        for lane in 0..lanes {
            let (b, bar) = (b.clone(), bar.clone());
            let first = from + (w * lanes + lane) as u32;
            tasks.spawn(async move {
                let mut acked = Vec::new();
                for k in (first..to).step_by(stride as usize) {
                    let (key, value) =
                        (format!("order-{k}"), format!("{{\"order\":{k},\"total\":{}}}", k % 97));
                    if b.set(&key, value.clone()).await.is_ok() {
                        acked.push((key, value));
                    }
                    bar.inc(1);
                }
                acked
            });
        }
    }
    let mut acked = BTreeMap::new();
    while let Some(Ok(r)) = tasks.join_next().await {
        acked.extend(r);
    }
    bar.finish_and_clear();
    acked
}

/// Events published in step 4, and refunds whose processing node-3 stalls.
const EVENTS: u32 = 1_000;
const REFUNDS: u32 = 30;

/// What the billing consumer group did, shared by its members on the three nodes.
#[derive(Clone, Default)]
struct Billing {
    inner: Arc<std::sync::Mutex<BillingLog>>,
}

#[derive(Default)]
struct BillingLog {
    /// Order event → the nodes (index) that billed it.
    placed: BTreeMap<mycorrizal::events::EventId, Vec<usize>>,
    refunds: BTreeMap<mycorrizal::events::EventId, u32>,
    held: usize,
}

impl Billing {
    /// One member of the group on node `i` (index): bills orders and refunds at once, except
    /// node-3's, which takes refunds and never finishes them (until it is killed).
    async fn member(
        self,
        i: usize,
        mut placed: mycorrizal::events::GroupSubscription,
        mut refunds: mycorrizal::events::GroupSubscription,
    ) {
        let mut stalled = Vec::new();
        loop {
            tokio::select! {
                d = placed.recv() => {
                    let Ok(d) = d else { break };
                    self.log().placed.entry(d.event.id.clone()).or_default().push(i);
                    d.ack();
                }
                d = refunds.recv() => {
                    let Ok(d) = d else { break };
                    if i == 2 {
                        self.log().held += 1;
                        stalled.push(d);
                    } else {
                        self.log().refunds.insert(d.event.id.clone(), d.event.attempt);
                        d.ack();
                    }
                }
            }
        }
        // The node is gone: what it held vanishes with it, as in a crash.
        std::mem::forget(stalled);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, BillingLog> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn placed_done(&self) -> usize {
        self.log().placed.len()
    }

    /// Whether every order was billed once, and how many each node billed.
    fn placed_summary(&self) -> (bool, [usize; 3]) {
        let log = self.log();
        let mut split = [0; 3];
        for nodes in log.placed.values() {
            for &i in nodes {
                split[i] += 1;
            }
        }
        (log.placed.values().all(|n| n.len() == 1), split)
    }

    fn refunds_done(&self) -> usize {
        self.log().refunds.len()
    }

    fn refunds_held(&self) -> usize {
        self.log().held
    }

    fn refunds_redelivered(&self) -> usize {
        self.log().refunds.values().filter(|a| **a >= 2).count()
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn say(line: &str) {
    println!("   {line}");
}
