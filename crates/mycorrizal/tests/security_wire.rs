//! What an eavesdropper sees. A recording proxy sits between two nodes on 127.0.0.x (node B
//! advertises the proxy's address, so everything A sends to B, streams and gossip, crosses
//! it). Neither the cluster secret nor a known application payload appears in any captured
//! byte, TCP or UDP.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_proxy_sees_neither_the_secret_nor_the_payload() {
    let tcp_tape: Tape = Arc::default();
    let udp_tape: Tape = Arc::default();

    // The proxy's address is B's advertised address; B listens on the same port, another IP.
    let proxy_tcp = TcpListener::bind("127.0.0.53:0").await.unwrap();
    let proxy_addr = proxy_tcp.local_addr().unwrap();
    let proxy_udp = UdpSocket::bind(proxy_addr).await.unwrap();
    let b_addr = SocketAddr::from(([127, 0, 0, 52], proxy_addr.port()));

    let trust = Trust::cluster_secret(SECRET).unwrap();
    let mut cb = ClusterConfig::lan("tap", NodeId::new("b").unwrap(), b_addr);
    cb.advertise = Some(proxy_addr);
    let b = Node::builder(cb).trust(trust.clone()).start().await.unwrap();
    let mut ca =
        ClusterConfig::lan("tap", NodeId::new("a").unwrap(), "127.0.0.51:0".parse().unwrap());
    ca.seeds = vec![proxy_addr];

    {
        let tape = tcp_tape.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = proxy_tcp.accept().await {
                let Ok(server) = TcpStream::connect(b_addr).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, tape.clone()));
                tokio::spawn(pump(sr, cw, tape.clone()));
            }
        });
        let tape = udp_tape.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = proxy_udp.recv_from(&mut buf).await {
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = proxy_udp.send_to(&buf[..n], b_addr).await;
            }
        });
    }

    let a = Node::builder(ca).trust(trust).start().await.unwrap();
    let mut view = a.watch_members();
    tokio::time::timeout(
        Duration::from_secs(20),
        view.wait_for(|v| v.get(b.id()).is_some_and(|m| m.state == MemberState::Alive)),
    )
    .await
    .expect("a sees b through the proxy")
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
    assert_eq!(answer, PAYLOAD.as_bytes(), "the request really crossed the proxy");

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
