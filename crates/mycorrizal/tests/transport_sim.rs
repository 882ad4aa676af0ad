//! The simulated network: deterministic loss, cuts, one-way cuts, heals and crashes.

use std::{net::SocketAddr, time::Duration};

use mycorrizal::{
    NodeId,
    transport::{SimConfig, SimNetwork, Transport},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7000))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap()
}

#[tokio::test(start_paused = true)]
async fn streams_connect_carry_bytes_and_break_on_cut() {
    let net = SimNetwork::new(SimConfig::new(1));
    let a = net.transport(id(1), addr(1));
    let b = net.transport(id(2), addr(2));
    let mut client = a.connect(addr(2), &id(2)).await.unwrap();
    let mut server = b.accept().await.unwrap().handshake.await.unwrap();
    server.peer.verify(&id(1)).unwrap();
    assert!(a.connect(addr(2), &id(3)).await.is_err(), "wrong identity is refused");
    client.stream.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    server.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");

    // A reader blocked on the stream wakes up with an error when the link is cut.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1];
        server.stream.read(&mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    net.cut(addr(1), addr(2));
    assert!(reader.await.unwrap().is_err());
    assert!(a.connect(addr(2), &id(2)).await.is_err(), "no new stream across a cut");
    net.heal();
    assert!(a.connect(addr(2), &id(2)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn datagram_loss_is_seeded_and_counted() {
    async fn run(seed: u64) -> (u64, usize) {
        let mut cfg = SimConfig::new(seed);
        cfg.datagram_loss = 0.2;
        let net = SimNetwork::new(cfg);
        let a = net.transport(id(1), addr(1));
        let b = net.transport(id(2), addr(2));
        for i in 0..500u32 {
            a.send_datagram(addr(2), &i.to_be_bytes()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut got = 0;
        let mut buf = [0u8; 8];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), b.recv_datagram(&mut buf)).await
        {
            got += 1;
        }
        (net.stats().datagrams_lost, got)
    }
    let (lost, got) = run(7).await;
    assert_eq!(lost as usize + got, 500);
    assert!((60..140).contains(&lost), "about 20% lost: {lost}");
    assert_eq!(run(7).await, (lost, got), "same seed, same outcome");
}

#[tokio::test(start_paused = true)]
async fn one_way_cuts_and_crashes() {
    let net = SimNetwork::new(SimConfig::new(3));
    let a = net.transport(id(1), addr(1));
    let b = net.transport(id(2), addr(2));
    net.cut_one_way(addr(1), addr(2));
    a.send_datagram(addr(2), b"x").await.unwrap();
    b.send_datagram(addr(1), b"y").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buf = [0u8; 8];
    assert!(
        tokio::time::timeout(Duration::from_millis(1), b.recv_datagram(&mut buf)).await.is_err()
    );
    assert_eq!(a.recv_datagram(&mut buf).await.unwrap().0, 1);
    net.heal();

    net.crash(addr(2));
    assert!(b.accept().await.is_err(), "a crashed node's transport is closed");
    assert!(a.connect(addr(2), &id(2)).await.is_err());
    let b2 = net.transport(id(2), addr(2)); // restart
    assert!(a.connect(addr(2), &id(2)).await.is_ok());
    drop(b2);
}
