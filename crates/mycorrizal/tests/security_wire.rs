//! What an eavesdropper sees. A recording proxy sits in front of each of two nodes on
//! 127.0.0.x (each node advertises its proxy's address, so everything either sends the other,
//! streams and gossip, crosses a proxy). Neither the cluster secret nor a known application
//! payload appears in any captured byte, TCP or UDP.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, MemberState, Node},
    security::Trust,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const PAYLOAD: &str = "PLAINTEXT-ORDER-4711-credit-card-0000";

type Tape = Arc<Mutex<Vec<u8>>>;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies `from` to `to`, appending every byte to `tape`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    tape: Tape,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tape.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// A node behind a recording proxy: the proxy listens (TCP and UDP) on `proxy_ip`, the node on
/// the same port at `node_ip`, and the node advertises the proxy's address, so every stream
/// and datagram a peer sends it crosses the proxy. With a proxy in front of each node,
/// everything between them is captured, whichever of them opens the link (the pair shares
/// one).
///
/// The kernel picks the port for the proxy's TCP socket only; another test running at the
/// same time may hold it for UDP, or on the node's address, so a few ports are tried.
async fn proxied(
    name: &str,
    node_ip: [u8; 4],
    proxy_ip: [u8; 4],
    seeds: Vec<SocketAddr>,
    trust: &Trust,
    tapes: (&Tape, &Tape),
) -> (Node, SocketAddr) {
    let mut last = String::new();
    for _ in 0..20 {
        let proxy_tcp = TcpListener::bind(SocketAddr::from((proxy_ip, 0))).await.unwrap();
        let proxy_addr = proxy_tcp.local_addr().unwrap();
        let proxy_udp = match UdpSocket::bind(proxy_addr).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("proxy UDP {proxy_addr}: {e}");
                continue;
            }
        };
        let node_addr = SocketAddr::from((node_ip, proxy_addr.port()));
        let mut config = ClusterConfig::lan("tap", NodeId::new(name).unwrap(), node_addr);
        config.advertise = Some(proxy_addr);
        config.seeds = seeds.clone();
        let node = match Node::builder(config).trust(trust.clone()).start().await {
            Ok(node) => node,
            Err(e) => {
                last = format!("node {name} on {node_addr}: {e}");
                continue;
            }
        };
        // Sockets are bound: anything sent before these tasks run waits in their queues.
        let tape = tapes.0.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = proxy_tcp.accept().await {
                let Ok(server) = TcpStream::connect(node_addr).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, tape.clone()));
                tokio::spawn(pump(sr, cw, tape.clone()));
            }
        });
        let tape = tapes.1.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = proxy_udp.recv_from(&mut buf).await {
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = proxy_udp.send_to(&buf[..n], node_addr).await;
            }
        });
        return (node, proxy_addr);
    }
    panic!("no free port for node {name} and its proxy: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_proxy_sees_neither_the_secret_nor_the_payload() {
    let tcp_tape: Tape = Arc::default();
    let udp_tape: Tape = Arc::default();
    let tapes = (&tcp_tape, &udp_tape);
    let trust = Trust::cluster_secret(SECRET).unwrap();
    let (b, b_proxy) = proxied("b", [127, 0, 0, 52], [127, 0, 0, 53], vec![], &trust, tapes).await;
    let (a, _) = proxied("a", [127, 0, 0, 51], [127, 0, 0, 54], vec![b_proxy], &trust, tapes).await;

    let mut view = a.watch_members();
    tokio::time::timeout(
        Duration::from_secs(20),
        view.wait_for(|v| v.get(b.id()).is_some_and(|m| m.state == MemberState::Alive)),
    )
    .await
    .expect("a sees b through the proxies")
    .unwrap();

    let mut requests = b.application("orders").requests().unwrap();
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            let body = r.body.clone();
            r.responder.respond(body);
        }
    });
    let answer =
        a.application("orders").request(b.id(), PAYLOAD, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, PAYLOAD.as_bytes(), "the request really crossed a proxy");

    let tcp = tcp_tape.lock().unwrap().clone();
    let udp = udp_tape.lock().unwrap().clone();
    assert!(
        tcp.len() > 1_000 && udp.len() >= 38,
        "traffic was captured: tcp {} udp {}",
        tcp.len(),
        udp.len()
    );
    for (name, tape) in [("TCP", &tcp), ("UDP", &udp)] {
        assert!(!contains(tape, SECRET.as_bytes()), "{name} capture contains the secret");
        assert!(!contains(tape, PAYLOAD.as_bytes()), "{name} capture contains the payload");
        assert!(!contains(tape, b"orders"), "{name} capture contains the application name");
    }
    println!("captured {} TCP and {} UDP bytes: no secret, no payload", tcp.len(), udp.len());
}
