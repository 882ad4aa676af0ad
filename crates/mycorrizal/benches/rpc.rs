//! Request/response round trip between two nodes on loopback (mutual TLS, framing, dispatch to
//! an application handler and back), next to a plain TLS 1.3 echo of the same payload over the
//! same kind of connection (tokio-rustls, same certificates, 4-byte length prefix). One request
//! outstanding. The difference is what the cluster layer costs on top of TLS.
//!
//! `cargo bench -p mycorrizal --bench rpc`

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, MemberState, Node},
    security::{Credentials, Trust, server_name},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

async fn node(name: &str, ip: [u8; 4], seed: Option<SocketAddr>) -> Node {
    let mut c = ClusterConfig::lan("bench", NodeId::new(name).unwrap(), SocketAddr::from((ip, 0)));
    c.seeds = seed.into_iter().collect();
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

/// A TLS echo server with the cluster's certificates; returns its address.
async fn tls_echo_server() -> SocketAddr {
    let trust = Trust::cluster_secret(SECRET).unwrap();
    let creds = Credentials::new(&trust, "bench", &NodeId::new("echo").unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.63:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(creds.server.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let Ok(len) = tls.read_u32().await else { return };
                    let len = len as usize;
                    if tls.read_exact(&mut buf[..len]).await.is_err() {
                        return;
                    }
                    let mut out = Vec::with_capacity(4 + len);
                    out.extend_from_slice(&(len as u32).to_be_bytes());
                    out.extend_from_slice(&buf[..len]);
                    if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (a, b, echo_client) = rt.block_on(async {
        let b = node("rpc-b", [127, 0, 0, 62], None).await;
        let a = node("rpc-a", [127, 0, 0, 61], Some(b.addr())).await;
        let mut v = a.watch_members();
        v.wait_for(|v| v.get(b.id()).is_some_and(|m| m.state == MemberState::Alive)).await.unwrap();
        let mut requests = b.application("bench").requests().unwrap();
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let body = r.body.clone();
                r.responder.respond(body);
            }
        });
        let echo = tls_echo_server().await;
        let trust = Trust::cluster_secret(SECRET).unwrap();
        let creds =
            Credentials::new(&trust, "bench", &NodeId::new("echo-client").unwrap()).unwrap();
        let tcp = TcpStream::connect(echo).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = TlsConnector::from(creds.client.clone())
            .connect(server_name(&NodeId::new("echo").unwrap()), tcp)
            .await
            .unwrap();
        (a, b, tokio::sync::Mutex::new(tls))
    });
    let app = a.application("bench");
    let mut group = c.benchmark_group("round_trip");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(30);
    for size in [100usize, 4096] {
        let payload = Bytes::from(vec![7u8; size]);
        group.bench_with_input(BenchmarkId::new("node_request", size), &payload, |bencher, p| {
            bencher.iter_custom(|iters| {
                rt.block_on(async {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        let r =
                            app.request(b.id(), p.clone(), Duration::from_secs(5)).await.unwrap();
                        assert_eq!(r.len(), p.len());
                    }
                    t.elapsed()
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("plain_tls_echo", size), &payload, |bencher, p| {
            bencher.iter_custom(|iters| {
                rt.block_on(async {
                    let mut tls = echo_client.lock().await;
                    let mut back = vec![0u8; p.len()];
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        let mut out = Vec::with_capacity(4 + p.len());
                        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                        out.extend_from_slice(p);
                        tls.write_all(&out).await.unwrap();
                        tls.flush().await.unwrap();
                        let len = tls.read_u32().await.unwrap() as usize;
                        tls.read_exact(&mut back[..len]).await.unwrap();
                    }
                    t.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
