//! The distributed cache over the real network: three nodes on 127.0.0.x with mutual TLS,
//! one killed without warning while writes continue. Runs on the real clock; every wait is for
//! an event or a condition, with a deadline.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    cache::CacheBucket,
    cluster::{ClusterConfig, MemberState, Node},
    core::quorum::Consistency,
    security::Trust,
    store::BucketConfig,
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn id(i: u8) -> NodeId {
    NodeId::new(format!("kv{i}")).unwrap()
}

async fn start(i: u8, seed: Option<SocketAddr>) -> Node {
    let mut c = ClusterConfig::lan("cachenet", id(i), SocketAddr::from(([127, 0, 0, 40 + i], 0)));
    c.seeds = seed.into_iter().collect();
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

/// Polls `done` every 20 ms until it holds, at most `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write_many(buckets: &[CacheBucket], from: u32, to: u32) -> BTreeMap<String, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (w, b) in buckets.iter().enumerate() {
        for lane in 0..8u32 {
            let b = b.clone();
            let stride = buckets.len() as u32 * 8;
            let first = from + w as u32 * 8 + lane;
            tasks.spawn(async move {
                let mut acked = Vec::new();
                for k in (first..to).step_by(stride as usize) {
                    let (key, value) = (format!("key-{k}"), format!("value-{k}"));
                    if b.set(&key, value.clone()).await.is_ok() {
                        acked.push((key, value));
                    }
                }
                acked
            });
        }
    }
    let mut acked = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.unwrap());
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_no_acknowledged_write_when_one_is_killed() {
    let first = start(1, None).await;
    let seed = first.addr();
    let mut nodes = vec![first, start(2, Some(seed)).await, start(3, Some(seed)).await];
    until(Duration::from_secs(20), "3 alive", || {
        nodes.iter().all(|n| n.members().live().count() == 3)
    })
    .await;
    let config = BucketConfig::builder("orders").replicas(3).max_entries(100_000).build().unwrap();
    nodes[0].cache().create_bucket(config).await.unwrap();
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(20), n.cache().ready()).await.unwrap();
    }
    let buckets: Vec<CacheBucket> =
        nodes.iter().map(|n| n.cache().bucket("orders").unwrap()).collect();
    let mut acked = write_many(&buckets, 0, 3_000).await;
    assert_eq!(acked.len(), 3_000, "no faults yet: every write acknowledged");

    // kv3 dies without a word; writes go on through the survivors while membership notices.
    let victim = nodes.pop().unwrap();
    drop(victim);
    let survivors: Vec<CacheBucket> = buckets[..2].to_vec();
    drop(buckets);
    acked.extend(write_many(&survivors, 3_000, 4_000).await);
    println!("{} writes acknowledged, 1,000 of them after kv3 was killed", acked.len());
    for (key, value) in &acked {
        for b in &survivors {
            let got = b.get_with(key, Consistency::Quorum).await.unwrap();
            assert_eq!(got.map(Bytes::from), Some(Bytes::from(value.clone())), "{key} lost");
        }
    }
    until(Duration::from_secs(30), "kv3 seen down", || {
        nodes.iter().all(|n| n.members().get(&id(3)).is_some_and(|m| m.state == MemberState::Down))
    })
    .await;

    // kv3 comes back empty and catches up from the others.
    let back = start(3, Some(seed)).await;
    until(Duration::from_secs(30), "kv3 readmitted", || {
        nodes.iter().all(|n| n.members().get(&id(3)).is_some_and(|m| m.state == MemberState::Alive))
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), back.cache().ready()).await.unwrap();
    let b3 = back.cache().bucket("orders").unwrap();
    let mut missing = 0;
    for (key, value) in &acked {
        match b3.local_record(key).and_then(|r| r.value().cloned()) {
            Some(v) if v == value.as_bytes() => {}
            _ => missing += 1,
        }
    }
    assert_eq!(missing, 0, "kv3 holds every acknowledged write after catching up");
    for (key, value) in acked.iter().step_by(37) {
        assert_eq!(
            b3.get_with(key, Consistency::All).await.unwrap().map(Bytes::from),
            Some(Bytes::from(value.clone()))
        );
    }
}
