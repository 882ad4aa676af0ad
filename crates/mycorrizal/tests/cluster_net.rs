//! Membership over the real network: five nodes on 127.0.0.x, mutual TLS and sealed UDP
//! gossip. Runs on the real clock: waits are for events (watch channels) with deadlines, never
//! fixed sleeps.

use std::{net::SocketAddr, time::Duration};

use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, MemberState, Node},
    security::Trust,
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn id(i: u8) -> NodeId {
    NodeId::new(format!("net{i}")).unwrap()
}

async fn start(i: u8, seed: Option<SocketAddr>) -> Node {
    let mut c = ClusterConfig::lan("nettest", id(i), SocketAddr::from(([127, 0, 0, 30 + i], 0)));
    c.seeds = seed.into_iter().collect();
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

/// Waits (event-driven) until `node`'s view satisfies `done`, at most `limit`.
async fn until(
    node: &Node,
    limit: Duration,
    what: &str,
    done: impl Fn(&mycorrizal::cluster::MembershipView) -> bool,
) {
    let mut rx = node.watch_members();
    tokio::time::timeout(limit, rx.wait_for(|v| done(v)))
        .await
        .unwrap_or_else(|_| {
            panic!("{}: {what} not within {limit:?}: {:?}", node.id(), node.members())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_on_loopback_form_a_cluster_detect_a_crash_and_readmit_it() {
    let first = start(1, None).await;
    let seed = first.addr();
    let mut nodes = vec![first];
    for i in 2..=5 {
        nodes.push(start(i, Some(seed)).await);
    }
    for n in &nodes {
        until(n, Duration::from_secs(20), "5 alive", |v| v.live().count() == 5).await;
    }

    // Request, send and broadcast between every pair, over mutual TLS.
    let mut inboxes = Vec::new();
    for n in &nodes {
        let mut requests = n.application("orders").requests().unwrap();
        inboxes.push(n.application("orders").messages().unwrap());
        let me = n.id().to_string();
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let answer = format!("{me} got {}", String::from_utf8_lossy(&r.body));
                r.responder.respond(answer.into());
            }
        });
    }
    for a in &nodes {
        let app = a.application("orders");
        for b in &nodes {
            if a.id() != b.id() {
                let answer =
                    app.request(b.id(), a.id().to_string(), Duration::from_secs(5)).await.unwrap();
                assert_eq!(answer, format!("{} got {}", b.id(), a.id()).as_bytes());
                app.send(b.id(), "direct").await.unwrap();
            }
        }
        assert!(app.broadcast("all").await.iter().all(|(_, r)| r.is_ok()));
    }
    for inbox in &mut inboxes {
        let mut n = 0;
        while inbox.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 8, "4 direct messages and 4 broadcasts per node");
    }

    let bound = nodes[0].config().failure_detection_bound(5);
    let victim = nodes.pop().unwrap();
    let victim_id = victim.id().clone();
    let started = std::time::Instant::now();
    drop(victim); // stops its tasks and closes its sockets without a goodbye, like a crash
    for n in &nodes {
        until(n, bound + Duration::from_secs(2), "crash detected", |v| {
            v.get(&victim_id).is_some_and(|m| m.state == MemberState::Down)
        })
        .await;
    }
    println!(
        "a crashed node was seen down by all 4 others after {:?} (bound {bound:?})",
        started.elapsed()
    );

    let back = start(5, Some(seed)).await;
    for n in nodes.iter().chain([&back]) {
        until(n, Duration::from_secs(20), "restarted node alive", |v| {
            v.live().count() == 5
                && v.get(&victim_id).is_some_and(|m| m.state == MemberState::Alive)
        })
        .await;
    }
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}
