//! The node: what an application embeds to join a cluster.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mycorrizal_core::{NodeId, wire::membership::MemberId};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    config::{ClusterConfig, ClusterConfigError},
    leadership::Leadership,
    link::{LinkSettings, Links},
    membership::{
        Command, Membership, MembershipSetup, MembershipStats, MembershipStatsSnapshot,
        MembershipView,
    },
    messaging::{Application, Registry},
};
use crate::{
    clock::{Clock, SystemClock},
    security::{Credentials, SecurityError, Trust},
    store::{Store, StoreConfig},
    transport::{TlsTransport, Transport, TransportError},
};

/// How far ahead of our clock a gossip datagram's timestamp may be: 5 s.
const GOSSIP_MAX_DRIFT_MS: u64 = 5_000;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused; nothing was started.
    #[error("invalid configuration: {0}")]
    Config(#[from] ClusterConfigError),
    /// Trust material was refused; nothing was started.
    #[error("security: {0}")]
    Security(#[from] SecurityError),
    /// Binding the listener failed; nothing was started.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// `start` was called without trust material.
    #[error("no trust configured: call NodeBuilder::trust")]
    NoTrust,
    /// The DNS resolver could not be set up (a failed lookup later is only logged).
    #[error("discovery: {0}")]
    Discovery(#[from] super::discovery::DiscoveryError),
}

/// Builds and starts a [`Node`].
#[must_use]
pub struct NodeBuilder {
    config: ClusterConfig,
    trust: Option<Trust>,
    transport: Option<Arc<dyn Transport>>,
    clock: Arc<dyn Clock>,
    seed: Option<u64>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// The trust this node uses (required).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Use this transport instead of binding a [`TlsTransport`] on `config.bind` (for example a
    /// [`SimTransport`](crate::transport::SimTransport) in simulations).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Read wall-clock time from `clock` (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Seed the node's random choices (probe order, jitter), for reproducible simulations.
    /// Default: seeded from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the configuration, binds, and starts membership. Announces itself to the seeds
    /// at once; see [`Node::ready`] to wait until it has joined.
    pub async fn start(self) -> Result<Node, NodeError> {
        self.config.validate()?;
        let trust = self.trust.ok_or(NodeError::NoTrust)?;
        let credentials = Credentials::new(&trust, &self.config.cluster, &self.config.node_id)?;
        let transport: Arc<dyn Transport> = match self.transport {
            Some(t) => t,
            None => Arc::new(
                TlsTransport::bind(self.config.bind, &credentials, self.config.handshake_timeout)
                    .await?,
            ),
        };
        let advertise = self.config.advertise.unwrap_or_else(|| transport.local_addr());
        let identity = MemberId {
            node: self.config.node_id.clone(),
            addr: advertise,
            generation: self.clock.now_ms(),
            meta: self.config.meta.clone(),
        };
        let rng_seed = self.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            SystemRandom::new().fill(&mut b).expect("the OS random number generator is available");
            u64::from_le_bytes(b)
        });
        let (view_tx, view_rx) = watch::channel(Arc::new(MembershipView::default()));
        let stats = Arc::new(MembershipStats::default());
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let membership = Membership::new(
            MembershipSetup {
                identity: identity.clone(),
                config: self.config.foca(),
                seeds: self.config.seeds.clone(),
                seed_refresh: self.config.seed_refresh,
                transport: transport.clone(),
                keys: credentials.gossip.clone(),
                wall: self.clock.clone(),
                rng_seed,
            },
            view_tx,
            stats.clone(),
            GOSSIP_MAX_DRIFT_MS,
        );
        let task = tokio::spawn(membership.run(commands_rx));
        let registry = Arc::new(Registry::default());
        let links = Links::new(
            identity.node.clone(),
            self.config.cluster.clone(),
            transport.clone(),
            view_rx.clone(),
            LinkSettings::default(),
            registry.clone(),
        );
        let acceptor = tokio::spawn(links.clone().accept_loop());
        let store = Store::with_clock(StoreConfig::new(identity.node.clone()), self.clock.clone());
        let expects_peers =
            self.config.dns.is_some() || self.config.seeds.iter().any(|s| *s != advertise);
        let cache = crate::cache::Runtime::new(
            identity.node.clone(),
            self.config.cache.clone(),
            store.clone(),
            links.clone(),
            view_rx.clone(),
            expects_peers,
        );
        registry.set_cache(crate::cache::CacheDispatch(Arc::downgrade(&cache)));
        let events = crate::events::Runtime::new(
            identity.node.clone(),
            events_incarnation(identity.generation, rng_seed),
            self.config.events.clone(),
            links.clone(),
            view_rx.clone(),
            self.clock.clone(),
            expects_peers,
        );
        registry.set_events(crate::events::EventsDispatch(Arc::downgrade(&events)));
        let metrics = crate::metrics::Metrics::new(
            crate::metrics::Sources {
                view: view_rx.clone(),
                membership: stats.clone(),
                links: links.clone(),
                cache: cache.clone(),
                events: events.clone(),
            },
            links.request_metrics(),
        );
        let exchange = tokio::spawn(events.clone().run_exchange());
        let ticks = tokio::spawn(events.clone().run_ticks());
        let sync = tokio::spawn(crate::cache::run_sync(cache.clone()));
        let placement = tokio::spawn(crate::cache::follow_membership(cache.clone()));
        let sweep_every = self.config.cache.sweep_interval;
        let sweeper =
            tokio::spawn(
                async move { store.run_sweeper(sweep_every, std::future::pending()).await },
            );
        let mut tasks = vec![task, acceptor, sync, placement, sweeper, exchange, ticks];
        if let Some(dns) = self.config.dns.clone() {
            let discovery = super::discovery::DnsDiscovery::new(dns)?;
            let (commands, every) = (commands_tx.clone(), self.config.seed_refresh);
            tasks.push(tokio::spawn(async move {
                loop {
                    match discovery.resolve().await {
                        Ok(seeds) => {
                            if commands.send(Command::DnsSeeds(seeds)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "seed lookup failed"),
                    }
                    tokio::time::sleep(every).await;
                }
            }));
        }
        tracing::info!(node = %identity.node, addr = %advertise, "node started");
        Ok(Node {
            inner: Arc::new(Inner {
                config: self.config,
                identity,
                view: view_rx,
                stats,
                commands: commands_tx,
                tasks: Mutex::new(tasks),
                transport,
                links,
                registry,
                cache,
                events,
                metrics,
            }),
        })
    }
}

/// A running node. Cloning is cheap; clones share the node. Dropping the last clone stops it
/// without leaving (as a crash would); call [`Node::shutdown`] to leave gracefully.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    identity: MemberId,
    view: watch::Receiver<Arc<MembershipView>>,
    stats: Arc<MembershipStats>,
    commands: mpsc::Sender<Command>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    transport: Arc<dyn Transport>,
    links: Arc<Links>,
    registry: Arc<Registry>,
    cache: Arc<crate::cache::Runtime>,
    events: Arc<crate::events::Runtime>,
    metrics: crate::metrics::Metrics,
}

/// A number no other incarnation of any node shares in practice: the start time, the node's
/// seed and a per-process counter (two simulated nodes may start in the same millisecond
/// with the same seed).
fn events_incarnation(generation: u64, seed: u64) -> u64 {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rng = mycorrizal_core::rng::SplitMix64::new(generation ^ seed.rotate_left(21));
    rng.next_u64() ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.events.stop();
        self.links.close();
        for t in crate::sync::lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("identity", &self.inner.identity).finish_non_exhaustive()
    }
}

impl Node {
    /// Starts building a node with `config`.
    pub fn builder(config: ClusterConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            trust: None,
            transport: None,
            clock: Arc::new(SystemClock),
            seed: None,
        }
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.inner.identity.node
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.inner.identity.addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The current membership.
    pub fn members(&self) -> Arc<MembershipView> {
        self.inner.view.borrow().clone()
    }

    /// A receiver that sees every membership change.
    pub fn watch_members(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.inner.view.clone()
    }

    /// Membership counters (datagrams, refusals by reason).
    pub fn membership_stats(&self) -> MembershipStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Resolves once the node has joined: at least one other member is alive, or the node has
    /// no seeds (a single-node cluster is ready at once).
    pub async fn ready(&self) {
        if self.is_alone() {
            return;
        }
        let mut rx = self.watch_members();
        let me = self.id().clone();
        let _ = rx.wait_for(|v| v.live().any(|m| m.id != me)).await;
    }

    /// Whether [`Node::ready`] would resolve now: another member is alive, or the node has no
    /// seeds.
    pub fn is_joined(&self) -> bool {
        self.is_alone() || self.members().live().any(|m| &m.id != self.id())
    }

    /// No seeds but itself and no DNS discovery: a single-node cluster.
    fn is_alone(&self) -> bool {
        self.inner.config.dns.is_none() && self.inner.config.seeds.iter().all(|s| *s == self.addr())
    }

    /// Stops gracefully within `timeout`: first hands every cached key to its owners without
    /// this node (up to half the time), then new requests fail with `ShuttingDown`, requests in
    /// flight in both directions are finished and links closed, then the node leaves the
    /// cluster (peers see it as left, not failed) and its tasks stop.
    pub async fn shutdown(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.inner.events.drain(timeout / 4).await {
            tracing::warn!(node = %self.id(), "not every queued event reached its subscribers before leaving");
        }
        if !crate::cache::drain(&self.inner.cache, timeout / 2).await {
            tracing::warn!(node = %self.id(), "not every cached key reached its new owners before leaving");
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.inner.links.shutdown(remaining).await {
            tracing::warn!(node = %self.id(), "links did not drain in time; closing anyway");
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.inner.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, done_rx).await;
        }
        for t in crate::sync::lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        self.inner.events.stop();
        tracing::info!(node = %self.id(), "node stopped");
    }

    /// The application `name` on this node: messaging with the same application on other
    /// nodes. Calling it again returns a handle to the same inboxes.
    pub fn application(&self, name: &str) -> Application {
        Application::new(
            name,
            self.id().clone(),
            self.inner.links.clone(),
            self.inner.view.clone(),
            &self.inner.registry,
        )
    }

    /// The node's metrics (one registry per node): render them with
    /// [`Metrics::encode`](crate::metrics::Metrics::encode), add your own to its registry.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.inner.metrics.clone()
    }

    /// The event bus: publish, subscribe, consumer groups.
    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::new(self.inner.events.clone())
    }

    /// The distributed cache: declare buckets and read and write them cluster-wide.
    pub fn cache(&self) -> crate::cache::Cache {
        crate::cache::Cache::new(self.inner.cache.clone())
    }

    /// Streams to peers open now (one per peer this node talks to, normally shared by both
    /// directions).
    pub fn connections(&self) -> usize {
        self.inner.links.connections()
    }

    /// Who leads `name` (eventually unique; see [`Leadership`]).
    pub fn leadership(&self, name: &str) -> Leadership {
        Leadership::new(name, self.id().clone(), self.inner.view.clone())
    }

    /// The transport this node uses.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }
}
