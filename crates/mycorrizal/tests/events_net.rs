//! The event bus over the real network: three nodes on 127.0.0.x with mutual TLS. Broadcast
//! to every node in order, a consumer group sharing the work, and redelivery of what a
//! consumer held when its node was killed. Runs on the real clock; every wait is for an
//! event or a condition, with a deadline.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, MemberState, Node},
    events::GroupOptions,
    security::Trust,
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn id(i: u8) -> NodeId {
    NodeId::new(format!("ev{i}")).unwrap()
}

async fn start(i: u8, seed: Option<SocketAddr>) -> Node {
    let mut c = ClusterConfig::lan("eventsnet", id(i), SocketAddr::from(([127, 0, 0, 50 + i], 0)));
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

async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.expect("not within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_groups_and_redelivery_after_a_consumer_is_killed() {
    let first = start(1, None).await;
    let seed = first.addr();
    let mut nodes = vec![first, start(2, Some(seed)).await, start(3, Some(seed)).await];
    until(Duration::from_secs(20), "3 alive", || {
        nodes.iter().all(|n| n.members().live().count() == 3)
    })
    .await;

    // Broadcast: every subscriber on every node, every event, in order.
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.events().subscribe("audit").await.unwrap());
    }
    let publisher = nodes[0].events();
    for i in 0..1000u32 {
        publisher.publish("audit", format!("entry {i}").into_bytes()).await.unwrap();
    }
    for sub in &mut subs {
        for i in 0..1000u64 {
            let e = within(Duration::from_secs(10), sub.recv()).await.unwrap();
            assert_eq!(e.id.seq, i + 1);
            assert_eq!(&e.payload[..], format!("entry {i}").as_bytes());
        }
    }
    println!("broadcast: 1,000 events to 3 nodes in order");

    // A group on nodes 2 and 3: each event processed once, the work shared.
    let opts = GroupOptions { capacity: 256, ack_deadline: Duration::from_secs(60) };
    let mut workers = vec![
        nodes[1].events().subscribe_group_with("jobs", "workers", opts).await.unwrap(),
        nodes[2].events().subscribe_group_with("jobs", "workers", opts).await.unwrap(),
    ];
    // Published while the workers work: the group's queues (256 per node) apply
    // back-pressure to the publisher.
    let p = publisher.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..1000u32 {
            p.publish("jobs", format!("job {i}").into_bytes()).await.unwrap();
        }
    });
    let mut done: BTreeMap<u64, usize> = BTreeMap::new();
    let mut share = [0usize; 2];
    while done.len() < 1000 {
        for (w, worker) in workers.iter_mut().enumerate() {
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(5), worker.recv()).await {
                assert!(done.insert(d.event.id.seq, w).is_none(), "{} twice", d.event.id);
                share[w] += 1;
                d.ack();
            }
        }
    }
    publishing.await.unwrap();
    assert!(share.iter().all(|&s| s >= 200), "work shared: {share:?}");
    until(Duration::from_secs(10), "publisher saw every ack", || publisher.stats().unacked == 0)
        .await;
    println!("group: 1,000 jobs processed once each, shared {share:?}");

    // Node 3's worker takes jobs and never finishes them; then node 3 is killed.
    for i in 1000..1100u32 {
        publisher.publish("jobs", format!("job {i}").into_bytes()).await.unwrap();
    }
    let mut stuck = Vec::new();
    let mut finished = 0;
    let (w2, w3) = workers.split_at_mut(1);
    while stuck.len() + finished < 100 {
        tokio::select! {
            d = w3[0].recv() => stuck.push(d.unwrap()),
            d = w2[0].recv() => { d.unwrap().ack(); finished += 1; }
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("jobs not delivered"),
        }
    }
    assert!(!stuck.is_empty(), "node 3 took some of the 100 jobs");
    let stuck_ids: Vec<u64> = stuck.iter().map(|d| d.event.id.seq).collect();
    // A crash: the deliveries vanish with the node, unacknowledged and not given back.
    std::mem::forget(stuck);
    std::mem::forget(workers.pop());
    drop(nodes.pop());
    let mut again = BTreeMap::new();
    while again.len() < stuck_ids.len() {
        let d = within(Duration::from_secs(30), workers[0].recv()).await.unwrap();
        assert!(d.event.attempt >= 2, "{} attempt {}", d.event.id, d.event.attempt);
        again.insert(d.event.id.seq, d.event.attempt);
        d.ack();
    }
    assert_eq!(again.keys().copied().collect::<Vec<_>>(), {
        let mut s = stuck_ids.clone();
        s.sort();
        s
    });
    until(Duration::from_secs(10), "node 3 seen down", || {
        nodes.iter().all(|n| n.members().get(&id(3)).is_some_and(|m| m.state == MemberState::Down))
    })
    .await;
    until(Duration::from_secs(10), "publisher saw every ack", || publisher.stats().unacked == 0)
        .await;
    println!("redelivery: {} jobs held by the killed node done by node 2", stuck_ids.len());
}
