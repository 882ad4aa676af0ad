//! Seed discovery through DNS, against a real DNS server run by the test (in process, on
//! 127.0.0.70, answering A and SRV queries over UDP from records the test changes).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::proto::{
    op::Message,
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, SRV},
    },
};
use mycorrizal::{
    NodeId,
    cluster::{ClusterConfig, DnsSeeds, Node},
    security::Trust,
};
use tokio::net::UdpSocket;

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

/// The zone the test server answers from: A records of `seeds.test.`, and SRV records of
/// `_gossip._udp.seeds.test.` pointing at `nK.seeds.test.` names with their own A records.
#[derive(Default)]
struct Zone {
    members: Vec<SocketAddr>,
}

async fn dns_server(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.70:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            let members = zone.lock().unwrap().members.clone();
            for q in &query.queries {
                reply.add_query(q.clone());
                let name = q.name().to_utf8();
                match (q.query_type(), name.as_str()) {
                    (RecordType::A, "seeds.test.") => {
                        for m in &members {
                            if let std::net::IpAddr::V4(ip) = m.ip() {
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                    }
                    (RecordType::SRV, "_gossip._udp.seeds.test.") => {
                        for (i, m) in members.iter().enumerate() {
                            let target = Name::from_utf8(format!("n{i}.seeds.test.")).unwrap();
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                0,
                                RData::SRV(SRV::new(0, 0, m.port(), target)),
                            ));
                        }
                    }
                    (RecordType::A, other) if other.ends_with(".seeds.test.") => {
                        let i: usize = other
                            .trim_start_matches('n')
                            .split('.')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap_or(usize::MAX);
                        if let Some(std::net::IpAddr::V4(ip)) = members.get(i).map(|m| m.ip()) {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                0,
                                RData::A(A(ip)),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
    addr
}

async fn start(name: &str, bind: SocketAddr, dns: DnsSeeds) -> Node {
    let mut c = ClusterConfig::lan("dns", NodeId::new(name).unwrap(), bind);
    c.dns = Some(dns);
    c.seed_refresh = Duration::from_secs(1);
    Node::builder(c).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap()
}

async fn formed(nodes: &[Node], n: usize) {
    for node in nodes {
        let mut v = node.watch_members();
        tokio::time::timeout(Duration::from_secs(20), v.wait_for(|v| v.live().count() == n))
            .await
            .unwrap_or_else(|_| panic!("{} sees {:?}", node.id(), node.members()))
            .unwrap();
    }
}

/// A records with a fixed port: nodes on 127.0.0.71..73 share one port number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_form_a_cluster_and_a_restarted_cluster_reforms() {
    let zone = Arc::new(Mutex::new(Zone::default()));
    let ns = dns_server(zone.clone()).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.71:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dns = DnsSeeds { name: "seeds.test.".into(), port: Some(port), nameserver: Some(ns) };
    let addrs: Vec<SocketAddr> =
        (71..=73).map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), port))).collect();
    zone.lock().unwrap().members = addrs.clone();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push(start(&format!("d{i}"), *a, dns.clone()).await);
    }
    formed(&nodes, 3).await;

    // The whole cluster restarts on new addresses; DNS follows a moment later. The periodic
    // lookup finds the new members and the cluster forms again.
    drop(nodes);
    let moved: Vec<SocketAddr> =
        (74..=76).map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), port))).collect();
    let mut nodes = Vec::new();
    for (i, a) in moved.iter().enumerate() {
        nodes.push(start(&format!("e{i}"), *a, dns.clone()).await);
    }
    zone.lock().unwrap().members = moved;
    formed(&nodes, 3).await;
}

/// SRV records carry each node's own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_form_a_cluster() {
    let zone = Arc::new(Mutex::new(Zone::default()));
    let ns = dns_server(zone.clone()).await;
    let dns =
        DnsSeeds { name: "_gossip._udp.seeds.test.".into(), port: None, nameserver: Some(ns) };
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        nodes.push(
            start(&format!("s{i}"), SocketAddr::from(([127, 0, 0, 77 + i], 0)), dns.clone()).await,
        );
    }
    zone.lock().unwrap().members = nodes.iter().map(|n| n.addr()).collect();
    formed(&nodes, 3).await;
}
