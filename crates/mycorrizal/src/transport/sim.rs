//! A deterministic in-memory network for simulations.
//!
//! Every node registers a [`SimTransport`] at an address on one [`SimNetwork`]. Streams are
//! in-memory pipes; datagrams are delivered through bounded queues after a seeded random delay,
//! or dropped with a seeded probability. The network can cut links (both ways or one way),
//! heal them, and crash nodes; a cut or crash breaks the affected streams at once, as a reset
//! would. All randomness comes from one seeded generator, so a single-threaded runtime on
//! tokio's paused clock replays a run exactly from its seed.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use mycorrizal_core::{NodeId, rng::SplitMix64};
use tokio::{
    io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf},
    sync::mpsc,
};

use super::{BoxFuture, Connection, Incoming, PeerAuth, Transport, TransportError};
use crate::sync::lock;

/// Knobs of a simulated network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice the network makes.
    pub seed: u64,
    /// Probability that a datagram is dropped, 0.0 ..= 1.0.
    pub datagram_loss: f64,
    /// Datagram delay is drawn uniformly from this range.
    pub datagram_delay: (Duration, Duration),
    /// Bytes buffered in each direction of a stream.
    pub stream_buffer: usize,
    /// Datagrams queued at a receiver before further ones are dropped.
    pub datagram_queue: usize,
    /// Probability that a write on a stream breaks its connection instead (the write and
    /// everything in flight on that connection is lost, as with a reset): message loss as a
    /// reliable stream's user sees it. 0.0 ..= 1.0.
    pub stream_break: f64,
}

impl SimConfig {
    /// A lossless network with 1 ms to 5 ms datagram delay.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            datagram_loss: 0.0,
            datagram_delay: (Duration::from_millis(1), Duration::from_millis(5)),
            stream_buffer: 256 * 1024,
            datagram_queue: 1024,
            stream_break: 0.0,
        }
    }
}

/// Counters of what the network did with datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub datagrams_sent: u64,
    /// Dropped by the loss probability.
    pub datagrams_lost: u64,
    /// Dropped by a cut link, a crashed or unknown receiver, or a full queue.
    pub datagrams_blocked: u64,
    /// Stream writes that broke their connection (see [`SimConfig::stream_break`]).
    pub stream_breaks: u64,
}

/// The shared network. Cloning gives another handle to the same network.
#[derive(Clone, Debug)]
pub struct SimNetwork {
    state: Arc<Mutex<NetState>>,
}

#[derive(Debug)]
struct NetState {
    config: SimConfig,
    rng: SplitMix64,
    nodes: HashMap<SocketAddr, SimNode>,
    /// Directed cuts: `(from, to)` means nothing from `from` reaches `to`.
    cuts: HashSet<(SocketAddr, SocketAddr)>,
    links: Vec<Arc<LinkState>>,
    stats: SimStats,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    alive: bool,
    /// Bumped on every registration at this address: a crashed node's transport stays dead
    /// even after a new incarnation takes its address.
    incarnation: u64,
    accept_tx: mpsc::Sender<Incoming>,
    datagram_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
}

/// One stream's pair of endpoints: breaking it fails both ends and wakes their tasks.
#[derive(Debug)]
struct LinkState {
    a: SocketAddr,
    b: SocketAddr,
    broken: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl LinkState {
    fn break_link(&self) {
        self.broken.store(true, Ordering::SeqCst);
        for w in lock(&self.wakers).drain(..) {
            w.wake();
        }
    }
}

impl NetState {
    /// Whether the transport of incarnation `incarnation` at `addr` is the live one.
    fn current(&self, addr: SocketAddr, incarnation: u64) -> bool {
        self.nodes.get(&addr).is_some_and(|n| n.alive && n.incarnation == incarnation)
    }

    fn reachable(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let alive = |a| self.nodes.get(&a).is_some_and(|n| n.alive);
        alive(from) && alive(to) && !self.cuts.contains(&(from, to))
    }

    /// Breaks every stream that can no longer carry bytes both ways.
    fn break_dead_links(&mut self) {
        let dead: Vec<_> = self
            .links
            .iter()
            .filter(|l| !(self.reachable(l.a, l.b) && self.reachable(l.b, l.a)))
            .cloned()
            .collect();
        for l in &dead {
            l.break_link();
        }
        self.links.retain(|l| !l.broken.load(Ordering::SeqCst));
    }
}

impl SimNetwork {
    /// A network with `config`.
    pub fn new(config: SimConfig) -> Self {
        let rng = SplitMix64::new(config.seed);
        SimNetwork {
            state: Arc::new(Mutex::new(NetState {
                config,
                rng,
                nodes: HashMap::new(),
                cuts: HashSet::new(),
                links: Vec::new(),
                stats: SimStats::default(),
            })),
        }
    }

    /// Registers `id` at `addr` (replacing a crashed node there) and returns its transport.
    pub fn transport(&self, id: NodeId, addr: SocketAddr) -> SimTransport {
        let mut st = lock(&self.state);
        let (accept_tx, accept_rx) = mpsc::channel(64);
        let (datagram_tx, datagram_rx) = mpsc::channel(st.config.datagram_queue);
        let incarnation = st.nodes.get(&addr).map_or(0, |n| n.incarnation + 1);
        st.nodes.insert(
            addr,
            SimNode { id: id.clone(), alive: true, incarnation, accept_tx, datagram_tx },
        );
        SimTransport {
            net: self.clone(),
            id,
            addr,
            incarnation,
            accept_rx: tokio::sync::Mutex::new(accept_rx),
            datagram_rx: tokio::sync::Mutex::new(datagram_rx),
        }
    }

    /// Crashes the node at `addr`: its streams break, its queues close, datagrams to it are lost.
    pub fn crash(&self, addr: SocketAddr) {
        let mut st = lock(&self.state);
        if let Some(n) = st.nodes.get_mut(&addr) {
            n.alive = false;
            // Replace the senders so the crashed transport's receivers see the end.
            let (tx, _) = mpsc::channel(1);
            n.accept_tx = tx;
            let (tx, _) = mpsc::channel(1);
            n.datagram_tx = tx;
        }
        st.break_dead_links();
    }

    /// Cuts traffic between `a` and `b` in both directions.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut st = lock(&self.state);
        st.cuts.insert((a, b));
        st.cuts.insert((b, a));
        st.break_dead_links();
    }

    /// Cuts traffic from `from` to `to` only. Streams between them break (they need both ways).
    pub fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        let mut st = lock(&self.state);
        st.cuts.insert((from, to));
        st.break_dead_links();
    }

    /// Splits the network: nodes in different groups cannot reach each other.
    pub fn partition(&self, groups: &[&[SocketAddr]]) {
        let mut st = lock(&self.state);
        for (i, g) in groups.iter().enumerate() {
            for (j, h) in groups.iter().enumerate() {
                if i != j {
                    for &a in g.iter() {
                        for &b in h.iter() {
                            st.cuts.insert((a, b));
                        }
                    }
                }
            }
        }
        st.break_dead_links();
    }

    /// Removes every cut.
    pub fn heal(&self) {
        lock(&self.state).cuts.clear();
    }

    /// Sets the datagram loss probability.
    pub fn set_datagram_loss(&self, p: f64) {
        lock(&self.state).config.datagram_loss = p.clamp(0.0, 1.0);
    }

    /// Sets the probability that a stream write breaks its connection.
    pub fn set_stream_break(&self, p: f64) {
        lock(&self.state).config.stream_break = p.clamp(0.0, 1.0);
    }

    /// What happened to datagrams so far.
    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats
    }
}

/// One node's endpoint on a [`SimNetwork`].
pub struct SimTransport {
    net: SimNetwork,
    id: NodeId,
    addr: SocketAddr,
    incarnation: u64,
    accept_rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    datagram_rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
}

impl std::fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTransport").field("id", &self.id).field("addr", &self.addr).finish()
    }
}

/// A stream end on the simulated network.
struct SimStream {
    inner: DuplexStream,
    link: Arc<LinkState>,
    net: SimNetwork,
}

impl SimStream {
    fn check(&self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if self.link.broken.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "simulated link broken"));
        }
        let mut wakers = lock(&self.link.wakers);
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Ok(())
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        {
            let mut st = lock(&self.net.state);
            let p = st.config.stream_break;
            if p > 0.0 && st.rng.unit() < p {
                st.stats.stream_breaks += 1;
                drop(st);
                self.link.break_link();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "simulated message loss",
                )));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Transport for SimTransport {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        peer: &'a NodeId,
    ) -> BoxFuture<'a, Result<Connection, TransportError>> {
        Box::pin(async move {
            let mut st = lock(&self.net.state);
            if !st.current(self.addr, self.incarnation) {
                return Err(TransportError::Closed);
            }
            if !(st.reachable(self.addr, addr) && st.reachable(addr, self.addr)) {
                return Err(TransportError::Unreachable(format!(
                    "{} cannot reach {addr}",
                    self.addr
                )));
            }
            let target = &st.nodes[&addr];
            if &target.id != peer {
                // What a TLS server-name check does on a real network.
                return Err(TransportError::Unreachable(format!(
                    "{addr} is {}, not {peer}",
                    target.id
                )));
            }
            let (client, server) = tokio::io::duplex(st.config.stream_buffer);
            let link = Arc::new(LinkState {
                a: self.addr,
                b: addr,
                broken: AtomicBool::new(false),
                wakers: Mutex::new(Vec::new()),
            });
            let incoming = Incoming {
                remote: self.addr,
                handshake: Box::pin(std::future::ready(Ok(Connection {
                    stream: Box::new(SimStream {
                        inner: server,
                        link: link.clone(),
                        net: self.net.clone(),
                    }),
                    peer: PeerAuth::Simulated(self.id.clone()),
                }))),
            };
            target
                .accept_tx
                .try_send(incoming)
                .map_err(|_| TransportError::Unreachable(format!("{addr} is not accepting")))?;
            st.links.push(link.clone());
            Ok(Connection {
                stream: Box::new(SimStream { inner: client, link, net: self.net.clone() }),
                peer: PeerAuth::Simulated(peer.clone()),
            })
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        Box::pin(
            async move { self.accept_rx.lock().await.recv().await.ok_or(TransportError::Closed) },
        )
    }

    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            let (tx, delay) = {
                let mut st = lock(&self.net.state);
                if !st.current(self.addr, self.incarnation) {
                    return Err(TransportError::Closed);
                }
                st.stats.datagrams_sent += 1;
                if !st.reachable(self.addr, to) {
                    st.stats.datagrams_blocked += 1;
                    return Ok(());
                }
                let loss = st.config.datagram_loss;
                if st.rng.unit() < loss {
                    st.stats.datagrams_lost += 1;
                    return Ok(());
                }
                let (lo, hi) = st.config.datagram_delay;
                let span = hi.saturating_sub(lo).as_nanos() as f64;
                let delay = lo + Duration::from_nanos((st.rng.unit() * span) as u64);
                (st.nodes[&to].datagram_tx.clone(), delay)
            };
            let data = data.to_vec();
            let from = self.addr;
            let net = self.net.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // Re-check: the link may have been cut while the datagram was in flight.
                let deliver = lock(&net.state).reachable(from, to);
                if !deliver || tx.try_send((data, from)).is_err() {
                    lock(&net.state).stats.datagrams_blocked += 1;
                }
            });
            Ok(())
        })
    }

    fn recv_datagram<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(usize, SocketAddr), TransportError>> {
        Box::pin(async move {
            let (data, from) =
                self.datagram_rx.lock().await.recv().await.ok_or(TransportError::Closed)?;
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            Ok((n, from))
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}
