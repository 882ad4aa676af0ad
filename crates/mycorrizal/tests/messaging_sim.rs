//! Application messaging over the simulated network: send, broadcast and request between
//! every pair; back-pressure from a stalled handler, with every message accounted for.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    clock::TokioClock,
    cluster::{ClusterConfig, MemberState, MessagingError, Node},
    security::Trust,
    transport::{SimConfig, SimNetwork},
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, i], 7946))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("m{i}")).unwrap()
}

async fn cluster(seed: u64, n: u8) -> (SimNetwork, Vec<Node>) {
    let net = SimNetwork::new(SimConfig::new(seed));
    let clock = Arc::new(TokioClock::new(1_800_000_000_000));
    let mut nodes = Vec::new();
    for i in 1..=n {
        let mut c = ClusterConfig::lan("msg", id(i), addr(i));
        c.seeds = vec![addr(1)];
        nodes.push(
            Node::builder(c)
                .trust(Trust::cluster_secret(SECRET).unwrap())
                .transport(Arc::new(net.transport(id(i), addr(i))))
                .clock(clock.clone())
                .seed(seed * 10 + u64::from(i))
                .start()
                .await
                .unwrap(),
        );
    }
    let start = tokio::time::Instant::now();
    while !nodes.iter().all(|o| {
        (1..=n).all(|i| o.members().get(&id(i)).is_some_and(|m| m.state == MemberState::Alive))
    }) {
        assert!(start.elapsed() < Duration::from_secs(30), "cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (net, nodes)
}

/// Answers every request of application `app` on `node` with "<node id>:<request>".
fn echo(node: &Node, app: &str) {
    let mut requests = node.application(app).requests().unwrap();
    let me = node.id().to_string();
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            let mut body = format!("{me}:").into_bytes();
            body.extend_from_slice(&r.body);
            r.responder.respond(Bytes::from(body));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn send_broadcast_and_request_work_between_every_pair() {
    let (_net, nodes) = cluster(21, 5).await;
    let mut inboxes = Vec::new();
    for n in &nodes {
        echo(n, "orders");
        inboxes.push(n.application("orders").messages().unwrap());
    }
    for a in &nodes {
        let app = a.application("orders");
        for b in &nodes {
            if a.id() == b.id() {
                continue;
            }
            let answer = app
                .request(b.id(), format!("hi from {}", a.id()), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(answer, Bytes::from(format!("{}:hi from {}", b.id(), a.id())));
            app.send(b.id(), format!("msg {}->{}", a.id(), b.id())).await.unwrap();
        }
    }
    let results = nodes[0].application("orders").broadcast("to all").await;
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    for (k, inbox) in inboxes.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Ok(m) = inbox.try_recv() {
            got.push((m.from.to_string(), String::from_utf8(m.body.to_vec()).unwrap()));
        }
        let me = nodes[k].id().to_string();
        let expected_direct = 4;
        let expected_broadcast = usize::from(k != 0);
        assert_eq!(got.len(), expected_direct + expected_broadcast, "{me}: {got:?}");
        for (from, body) in &got {
            assert!(
                body == "to all" || body == &format!("msg {from}->{me}"),
                "{me} got {body:?} from {from}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handler_pushes_back_and_nothing_is_lost_silently() {
    let (_net, nodes) = cluster(22, 2).await;
    let sender = nodes[0].application("slow");
    let receiver = nodes[1].application("slow");
    let mut inbox = receiver.messages().unwrap(); // taken, but not read while sending
    let (mut accepted, mut overloaded, mut other) = (0u32, 0u32, 0u32);
    for i in 0..1_500u32 {
        match sender.send(nodes[1].id(), i.to_be_bytes().to_vec()).await {
            Ok(()) => accepted += 1,
            Err(MessagingError::Overloaded(_)) => overloaded += 1,
            Err(e) => {
                other += 1;
                println!("unexpected: {e}");
            }
        }
    }
    assert_eq!(
        accepted,
        mycorrizal::cluster::DEFAULT_APP_QUEUE as u32,
        "the queue bounds what is accepted"
    );
    assert_eq!(overloaded, 1_500 - accepted);
    assert_eq!(other, 0);
    // Every accepted message is delivered, in order; none was accepted and then lost.
    let mut delivered = 0u32;
    while let Ok(m) = inbox.try_recv() {
        assert_eq!(m.body.as_ref(), delivered.to_be_bytes());
        delivered += 1;
    }
    assert_eq!(delivered, accepted);
    // Once the handler catches up, senders get through again.
    sender.send(nodes[1].id(), "again").await.unwrap();

    // A request handler that never answers: the requester times out within its deadline.
    let _requests = receiver.requests().unwrap(); // held, never answered
    let started = tokio::time::Instant::now();
    let err = sender.request(nodes[1].id(), "ping", Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, MessagingError::Timeout(_)), "{err}");
    assert!(started.elapsed() <= Duration::from_millis(301));
}

#[tokio::test(start_paused = true)]
async fn unknown_applications_and_peers_are_reported() {
    let (_net, nodes) = cluster(23, 2).await;
    let app = nodes[0].application("ghost");
    let err = app.request(nodes[1].id(), "x", Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            MessagingError::Remote {
                code: mycorrizal_core::wire::messages::ErrorCode::NoHandler,
                ..
            }
        ),
        "{err}"
    );
    let err = app.send(&NodeId::new("nobody").unwrap(), "x").await.unwrap_err();
    assert!(matches!(err, MessagingError::UnknownPeer(_)), "{err}");
}

/// Shutdown finishes the request in flight, refuses new work with `ShuttingDown`, then leaves.
#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (_net, mut nodes) = cluster(24, 2).await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let mut requests = b.application("slow").requests().unwrap();
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let body = r.body.clone();
            r.responder.respond(body);
        }
    });
    let app = a.application("slow");
    let in_flight = {
        let (app, to) = (app.clone(), b.id().clone());
        tokio::spawn(async move { app.request(&to, "in flight", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await; // the request is at b's handler
    let b_app = b.application("slow");
    let b_id = b.id().clone();
    let stopping = tokio::spawn(b.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let refused = b_app.request(a.id(), "new work", Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(refused, MessagingError::ShuttingDown);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        Bytes::from_static(b"in flight"),
        "drained, not cut"
    );
    stopping.await.unwrap();
    let start = tokio::time::Instant::now();
    while a.members().get(&b_id).is_some_and(|m| m.state != MemberState::Left) {
        assert!(start.elapsed() < Duration::from_secs(10), "b left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pair of nodes talking both ways shares one connection.
#[tokio::test(start_paused = true)]
async fn a_pair_talking_both_ways_shares_one_connection() {
    let (_net, nodes) = cluster(25, 2).await;
    echo(&nodes[0], "chat");
    echo(&nodes[1], "chat");
    let (a, b) = (nodes[0].application("chat"), nodes[1].application("chat"));
    a.request(nodes[1].id(), "a->b", Duration::from_secs(5)).await.unwrap();
    b.request(nodes[0].id(), "b->a", Duration::from_secs(5)).await.unwrap();
    for _ in 0..10 {
        a.request(nodes[1].id(), "again", Duration::from_secs(5)).await.unwrap();
        b.request(nodes[0].id(), "again", Duration::from_secs(5)).await.unwrap();
    }
    assert_eq!((nodes[0].connections(), nodes[1].connections()), (1, 1));
}

/// A broken connection is redialed (with back-off) while the peer stays a member; requests in
/// flight when it broke are reported, and later ones succeed over the new connection.
#[tokio::test(start_paused = true)]
async fn a_broken_link_is_redialed_while_the_peer_is_alive() {
    let (net, nodes) = cluster(26, 2).await;
    echo(&nodes[1], "svc");
    let app = nodes[0].application("svc");
    app.request(nodes[1].id(), "before", Duration::from_secs(5)).await.unwrap();
    net.cut(addr(1), addr(2)); // breaks the stream at once
    let during = app.request(nodes[1].id(), "during", Duration::from_millis(500)).await;
    assert!(
        matches!(during, Err(MessagingError::Timeout(_) | MessagingError::ConnectionLost { .. })),
        "{during:?}"
    );
    net.heal();
    let start = tokio::time::Instant::now();
    loop {
        match app.request(nodes[1].id(), "after", Duration::from_secs(1)).await {
            Ok(answer) => {
                assert_eq!(answer, Bytes::from_static(b"m2:after"));
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "not redialed: {e}"),
        }
    }
    assert_eq!(nodes[1].members().get(nodes[0].id()).unwrap().state, MemberState::Alive);
}

/// Two nodes send each other multi-megabyte requests at the same time over one connection:
/// neither side may stop reading while its writes wait, or both would wait forever.
#[tokio::test(start_paused = true)]
async fn large_requests_in_both_directions_at_once_do_not_deadlock() {
    let (_net, nodes) = cluster(27, 2).await;
    echo(&nodes[0], "bulk");
    echo(&nodes[1], "bulk");
    let (a, b) = (nodes[0].application("bulk"), nodes[1].application("bulk"));
    a.request(nodes[1].id(), "warm", Duration::from_secs(5)).await.unwrap(); // one shared link
    let big = Bytes::from(vec![0xAB; 6 * 1024 * 1024]);
    let (to_b, to_a) = (nodes[1].id().clone(), nodes[0].id().clone());
    let (ba, bb) = (big.clone(), big.clone());
    let one = tokio::spawn(async move { a.request(&to_b, ba, Duration::from_secs(60)).await });
    let two = tokio::spawn(async move { b.request(&to_a, bb, Duration::from_secs(60)).await });
    let (r1, r2) = (one.await.unwrap().unwrap(), two.await.unwrap().unwrap());
    assert_eq!((r1.len(), r2.len()), (big.len() + 3, big.len() + 3));
}
