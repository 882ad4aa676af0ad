//! The node's event bus: who subscribes where (interest), the routes publishers use, the
//! receiving side of streams, group acknowledgements, and the background tasks.
//!
//! Lock order (never the reverse): `inbound` → `local` → a queue's state; `inbound` →
//! `publishing` (a refused group share is given back while a batch is applied);
//! `publishing` → a stream's state, `peers` (stream checks) and `local` (local redelivery);
//! `rebuilding` → `peers` → `local`. Nothing holds a lock across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{
    NodeId,
    events::{Admission, SeqObservation, StreamCursor, observe_seq},
    wire::{
        Channel,
        events::{
            Batch, BatchReply, EventsOp, EventsReply, EventsRequest, EventsResponse, ItemKind,
            Returned, Settle, TopicInterest, WireEvent, WireInterest,
        },
        messages::ErrorCode,
    },
};
use prost::Message as _;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};

use mycorrizal_core::wire::events::{MAX_GROUPS, MAX_INTEREST_BYTES, MAX_TOPICS};

use super::{
    Event, EventId, EventsConfig, EventsError, EventsStats, GroupOptions, SubscribeOptions,
    queues::{BroadcastQueue, GroupQueue, Held, Refusal},
    stream::Publishing,
};
use crate::{
    clock::Clock,
    cluster::{MemberState, MembershipView, MessagingError, Responder, link::Links},
    sync::{lock, read, write},
};

/// Subscriptions on this node.
#[derive(Default)]
pub(super) struct Local {
    /// Increases with every change; peers keep the newest they saw.
    version: u64,
    next_id: u64,
    pub topics: BTreeMap<Arc<str>, LocalTopic>,
}

pub(super) struct LocalTopic {
    pub name: Arc<str>,
    pub broadcast: Vec<Arc<BroadcastQueue>>,
    pub groups: BTreeMap<Arc<str>, Arc<GroupQueue>>,
    /// Last topic sequence number seen per publisher (incarnation, seq), for gap detection.
    seqs: HashMap<NodeId, (u64, u64)>,
}

impl LocalTopic {
    pub fn new(name: Arc<str>) -> Self {
        LocalTopic { name, broadcast: Vec::new(), groups: BTreeMap::new(), seqs: HashMap::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.broadcast.is_empty() && self.groups.is_empty()
    }
}

impl Local {
    /// Whether one more subscription to `topic` (in `group`) keeps this node's interest within
    /// what peers accept (`MAX_TOPICS`, `MAX_GROUPS`, `MAX_INTEREST_BYTES`).
    fn admits(&self, topic: &str, group: Option<&str>) -> Result<(), EventsError> {
        let t = self.topics.get(topic);
        let new_topic = t.is_none();
        let new_group = group.is_some_and(|g| !t.is_some_and(|t| t.groups.contains_key(g)));
        let too_many = |what: &str, max: usize| EventsError::InvalidOption {
            field: "subscriptions",
            reason: format!("at most {max} {what}"),
        };
        if new_topic && self.topics.len() >= MAX_TOPICS {
            return Err(too_many("topics per node", MAX_TOPICS));
        }
        if new_group && t.is_some_and(|t| t.groups.len() >= MAX_GROUPS) {
            return Err(too_many("groups per topic on one node", MAX_GROUPS));
        }
        let bytes: usize = self
            .topics
            .iter()
            .map(|(name, t)| name.len() + 8 + t.groups.keys().map(|g| g.len() + 4).sum::<usize>())
            .sum();
        let more = if new_topic { topic.len() + 8 } else { 0 }
            + if new_group { group.map_or(0, |g| g.len() + 4) } else { 0 };
        if bytes + more > MAX_INTEREST_BYTES {
            return Err(too_many("bytes of topic and group names per node", MAX_INTEREST_BYTES));
        }
        Ok(())
    }

    fn interest(&self, incarnation: u64) -> WireInterest {
        WireInterest {
            incarnation,
            version: self.version,
            topics: self
                .topics
                .iter()
                .map(|(topic, t)| TopicInterest {
                    topic: topic.to_string(),
                    broadcast: !t.broadcast.is_empty(),
                    groups: t.groups.keys().map(|g| g.to_string()).collect(),
                })
                .collect(),
            members: Vec::new(),
        }
    }
}

/// Where this node stands in a publisher's stream, and what it handed back of the items it
/// applied last (repeated if the publisher resends them because the answer was lost).
struct Inbound {
    cursor: StreamCursor,
    handbacks: Vec<HandBack>,
}

#[derive(Clone)]
struct HandBack {
    /// The item's number in the stream.
    item: u64,
    group: String,
    full: bool,
}

/// What this node knows of a peer's subscriptions.
struct PeerInterest {
    /// The member generation it was last confirmed under; after a new generation (a rejoin)
    /// it is asked again, and used meanwhile (the process, hence its subscriptions, is
    /// usually the same: `incarnation` says).
    generation: u64,
    /// The peer's events incarnation: a new one is a restarted process.
    incarnation: u64,
    version: u64,
    topics: HashMap<String, (bool, Vec<String>)>,
    /// The live members the peer saw when it last told us its interest.
    members: Vec<NodeId>,
    /// Since when membership has held the peer down; its broadcast subscribers keep getting
    /// events queued for `rejoin_grace`.
    down_since: Option<Instant>,
}

#[derive(Default)]
struct Peers {
    known: HashMap<NodeId, PeerInterest>,
    /// Since when a live peer's interest has been unknown.
    unknown_since: HashMap<NodeId, Instant>,
    /// Our interest version each peer confirmed.
    confirmed: HashMap<NodeId, u64>,
}

/// A destination: one process (events incarnation) of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dest {
    pub node: NodeId,
    pub incarnation: u64,
    /// A live member: publishes wait for it. A node held down (within `rejoin_grace`) gets
    /// events queued on a best-effort basis, so a false verdict or a short partition costs
    /// its subscribers nothing.
    pub live: bool,
}

/// Where events of each topic go, rebuilt whenever interest or membership changes.
#[derive(Default)]
pub(super) struct Routes {
    pub epoch: u64,
    /// The membership view (its epoch) these routes were computed from.
    pub view_epoch: u64,
    pub topics: HashMap<String, TopicRoute>,
    /// Live peers whose subscriptions are not known yet, and since when.
    pub unknown: Vec<(NodeId, Instant)>,
}

#[derive(Default)]
pub(super) struct TopicRoute {
    pub broadcast: Vec<Dest>,
    pub groups: BTreeMap<String, Vec<Dest>>,
}

/// Counters, kept as atomics.
#[derive(Default)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub unconfirmed: AtomicU64,
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub deadlines_missed: AtomicU64,
    pub lagged: AtomicU64,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub abandoned: AtomicU64,
    pub batches: AtomicU64,
    pub batch_failures: AtomicU64,
    pub received: AtomicU64,
    pub reoffered: AtomicU64,
}

/// The event bus of one node.
pub(crate) struct Runtime {
    pub me: NodeId,
    /// Another member has been seen alive (or the node has no seeds: a one-node cluster).
    /// Until then nobody's subscriptions are known; see `Runtime::publish`.
    pub joined: AtomicBool,
    /// One per process (and per node object): streams and topic numbers restart with it.
    pub incarnation: u64,
    pub config: EventsConfig,
    links: Arc<Links>,
    pub view: watch::Receiver<Arc<MembershipView>>,
    pub clock: Arc<dyn Clock>,
    pub stats: Stats,
    pub(super) local: Mutex<Local>,
    peers: Mutex<Peers>,
    routes: RwLock<Arc<Routes>>,
    /// Serialises `rebuild_routes` (compute and store), so an older computation never
    /// replaces a newer one.
    rebuilding: Mutex<()>,
    pub(super) routes_changed: Notify,
    pub(super) publishing: Mutex<Publishing>,
    /// Per publisher and lane.
    inbound: Mutex<HashMap<(NodeId, u32), Inbound>>,
    exchange_now: Notify,
    /// Woken when group deliveries are acknowledged (room under `max_unacked`).
    pub(super) acked: Arc<Notify>,
    pub(super) closing: AtomicBool,
    /// The node stopped: no new stream tasks.
    pub(super) stopped: AtomicBool,
    /// The runtime the node started on: stream tasks are spawned there, so settling a
    /// delivery from a plain thread works.
    pub(super) tasks: tokio::runtime::Handle,
}

impl Runtime {
    pub(crate) fn new(
        me: NodeId,
        incarnation: u64,
        config: EventsConfig,
        links: Arc<Links>,
        view: watch::Receiver<Arc<MembershipView>>,
        clock: Arc<dyn Clock>,
        expects_peers: bool,
    ) -> Arc<Self> {
        let rt = Arc::new(Runtime {
            joined: AtomicBool::new(!expects_peers),
            me,
            incarnation,
            config,
            links,
            view,
            clock,
            stats: Stats::default(),
            local: Mutex::new(Local::default()),
            peers: Mutex::new(Peers::default()),
            routes: RwLock::new(Arc::new(Routes::default())),
            rebuilding: Mutex::new(()),
            routes_changed: Notify::new(),
            publishing: Mutex::new(Publishing::default()),
            inbound: Mutex::new(HashMap::new()),
            exchange_now: Notify::new(),
            acked: Arc::new(Notify::new()),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            tasks: tokio::runtime::Handle::current(),
        });
        rt.rebuild_routes();
        rt
    }

    pub(super) fn routes(&self) -> Arc<Routes> {
        read(&self.routes).clone()
    }

    /// Recomputes the routes from the membership, peers' interest and local subscriptions.
    pub(super) fn rebuild_routes(&self) {
        let _one_at_a_time = lock(&self.rebuilding);
        let view = self.view.borrow().clone();
        let now = Instant::now();
        let mut routes = Routes::default();
        {
            let mut peers = lock(&self.peers);
            let peers = &mut *peers;
            let live: BTreeSet<&NodeId> = view.live().map(|m| &m.id).collect();
            // Members a live peer sees and this node has not heard of at all (its view is
            // still partial): their subscriptions are unknown, like those of a live peer not
            // asked yet. Found by a simulation of `pulse chaos`'s skew beyond the drift: a node
            // that had heard of one peer only published as if the other had no subscribers,
            // confirmed, and the group there never got the event.
            let unheard: BTreeSet<NodeId> = peers
                .known
                .iter()
                .filter(|(n, _)| live.contains(n))
                .flat_map(|(_, k)| k.members.iter())
                .filter(|m| **m != self.me && view.get(m).is_none())
                .cloned()
                .collect();
            peers.unknown_since.retain(|n, _| live.contains(n) || unheard.contains(n));
            let mut add = |dest: &Dest,
                           topic: &str,
                           broadcast: bool,
                           groups: &mut dyn Iterator<Item = &str>| {
                let route = routes.topics.entry(topic.to_owned()).or_default();
                if broadcast {
                    route.broadcast.push(dest.clone());
                }
                // A group event goes only to a live member; a group whose members are all
                // held down still exists (its events are held for it, `Reason::Held`).
                // Found by `pulse chaos`: with the group's entry left out, a publish while
                // every member was down confirmed the event to nobody and it was lost.
                for g in groups {
                    let members = route.groups.entry(g.to_owned()).or_default();
                    if dest.live {
                        members.push(dest.clone());
                    }
                }
            };
            let me = Dest { node: self.me.clone(), incarnation: self.incarnation, live: true };
            for (topic, t) in &lock(&self.local).topics {
                add(&me, topic, !t.broadcast.is_empty(), &mut t.groups.keys().map(|g| &**g));
            }
            let mut nodes: Vec<&NodeId> = peers.known.keys().collect();
            nodes.sort();
            for node in nodes {
                let k = &peers.known[node];
                let dest = Dest {
                    node: node.clone(),
                    incarnation: k.incarnation,
                    live: live.contains(node),
                };
                for (topic, (broadcast, groups)) in &k.topics {
                    add(&dest, topic, *broadcast, &mut groups.iter().map(|g| g.as_str()));
                }
            }
            for m in view.live().filter(|m| m.id != self.me && !peers.known.contains_key(&m.id)) {
                let since = *peers.unknown_since.entry(m.id.clone()).or_insert(now);
                routes.unknown.push((m.id.clone(), since));
            }
            for m in unheard {
                let since = *peers.unknown_since.entry(m.clone()).or_insert(now);
                routes.unknown.push((m, since));
            }
        }
        routes.view_epoch = view.epoch;
        let mut current = write(&self.routes);
        routes.epoch = current.epoch + 1;
        *current = Arc::new(routes);
        drop(current);
        self.routes_changed.notify_waiters();
    }

    // ---- interest ----------------------------------------------------------------------

    pub(super) fn local_interest(&self) -> WireInterest {
        let mut ours = lock(&self.local).interest(self.incarnation);
        ours.members = self.view.borrow().live().map(|m| m.id.to_string()).collect();
        ours
    }

    /// Records a peer's interest (newer versions win; a new incarnation replaces the old:
    /// the peer restarted, so the stream to its old process closes).
    fn learn(self: &Arc<Self>, from: &NodeId, generation: u64, theirs: WireInterest) {
        let members: Vec<NodeId> =
            theirs.members.iter().filter_map(|m| NodeId::new(m.as_str()).ok()).collect();
        let mut peers = lock(&self.peers);
        let restarted = match peers.known.get_mut(from) {
            Some(k) if k.incarnation == theirs.incarnation => {
                if generation != 0 {
                    k.generation = generation;
                }
                if k.version >= theirs.version {
                    if k.members != members {
                        k.members = members;
                        drop(peers);
                        self.rebuild_routes();
                    }
                    return;
                }
                false
            }
            Some(_) => true,
            None => false,
        };
        let topics =
            theirs.topics.into_iter().map(|t| (t.topic, (t.broadcast, t.groups))).collect();
        let down_since = peers.known.get(from).and_then(|k| k.down_since);
        peers.known.insert(
            from.clone(),
            PeerInterest {
                generation,
                incarnation: theirs.incarnation,
                version: theirs.version,
                topics,
                members,
                down_since,
            },
        );
        drop(peers);
        // Routes first, so the group events the old process held are rerouted with the new
        // incarnation in view.
        self.rebuild_routes();
        if restarted {
            self.close_stream(from);
        }
    }

    /// A peer sent its interest: keep it, answer with ours.
    pub(super) fn on_interest(
        self: &Arc<Self>,
        from: &NodeId,
        theirs: WireInterest,
    ) -> WireInterest {
        let generation = self.view.borrow().get(from).map(|m| m.generation).unwrap_or(0);
        self.learn(from, generation, theirs);
        self.local_interest()
    }

    /// One exchange of interest with `peer`.
    async fn exchange(
        self: &Arc<Self>,
        peer: NodeId,
        generation: u64,
    ) -> Result<(), MessagingError> {
        let ours = self.local_interest();
        let version = ours.version;
        match self.call(&peer, EventsOp::Interest(ours)).await? {
            EventsReply::Interest(theirs) if theirs.check() => {
                lock(&self.peers).confirmed.insert(peer.clone(), version);
                self.learn(&peer, generation, theirs);
                Ok(())
            }
            _ => Err(MessagingError::Remote {
                peer,
                code: ErrorCode::BadRequest,
                message: "malformed answer to an interest exchange".into(),
            }),
        }
    }

    /// Exchanges interest with every live peer that has not confirmed our current version (or
    /// all of them when `all`), concurrently, until `deadline`. Returns whether all succeeded.
    async fn exchange_round(self: &Arc<Self>, all: bool, deadline: Instant) -> bool {
        let view = self.view.borrow().clone();
        let version = lock(&self.local).version;
        let mut set = JoinSet::new();
        {
            let peers = lock(&self.peers);
            for m in view.live().filter(|m| m.id != self.me) {
                let known = peers.known.get(&m.id).is_some_and(|k| k.generation == m.generation);
                let confirmed = peers.confirmed.get(&m.id) == Some(&version);
                if all || !known || !confirmed {
                    let (rt, id, generation) = (self.clone(), m.id.clone(), m.generation);
                    set.spawn(async move { (id.clone(), rt.exchange(id, generation).await) });
                }
            }
        }
        let mut ok = true;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok((_, Ok(()))))) => {}
                Ok(Some(Ok((peer, Err(e))))) => {
                    tracing::debug!(node = %self.me, peer = %peer, error = %e, "interest exchange failed");
                    ok = false;
                }
                Ok(Some(Err(_))) => ok = false,
                Ok(None) => return ok,
                Err(_) => return false,
            }
        }
    }

    /// Local subscriptions changed: reroute, and tell every live peer (waiting at most
    /// `publish_timeout` for them to confirm; the background task retries the rest).
    pub(super) async fn interest_changed(self: &Arc<Self>) {
        self.rebuild_routes();
        let deadline = Instant::now() + self.config.publish_timeout;
        if !self.exchange_round(false, deadline).await {
            tracing::debug!(node = %self.me, "not every live member confirmed a subscription change yet");
            self.exchange_now.notify_one();
        }
    }

    /// Follows membership and keeps interest exchanged: with new members at once, with
    /// everyone every `interest_interval`, and retries failures.
    pub(crate) async fn run_exchange(self: Arc<Self>) {
        let mut view = self.view.clone();
        let mut next_full = Instant::now() + self.config.interest_interval;
        let retry = self.config.request_timeout.min(Duration::from_secs(1));
        loop {
            self.on_membership();
            let all = Instant::now() >= next_full;
            if all {
                next_full = Instant::now() + self.config.interest_interval;
            }
            let deadline = Instant::now() + self.config.request_timeout;
            let ok = self.exchange_round(all, deadline).await;
            let wake = if ok { next_full } else { (Instant::now() + retry).min(next_full) };
            tokio::select! {
                biased; // a fixed order keeps simulations deterministic
                changed = view.changed() => if changed.is_err() { return },
                _ = self.exchange_now.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Membership changed (or a tick passed): a peer held down gives back the group events
    /// it had taken (they go to live members at once) and keeps its broadcast stream for
    /// `rejoin_grace`; after that, or when it left for good, its interest is forgotten and its
    /// stream closes. Routes are rebuilt.
    pub(super) fn on_membership(self: &Arc<Self>) {
        let view = self.view.borrow().clone();
        let now = Instant::now();
        let mut forget = Vec::new();
        let mut down = Vec::new();
        let mut back = false;
        {
            let mut peers = lock(&self.peers);
            for (node, k) in peers.known.iter_mut() {
                let member = view.get(node);
                let live = member
                    .is_some_and(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect));
                if live {
                    // Back from being held down (same process): its routes become live again.
                    // Found by `pulse chaos`: without a rebuild here, group events held while
                    // it was down stayed held after it returned, until its interest changed.
                    back |= k.down_since.take().is_some();
                    continue;
                }
                down.push(node.clone());
                let since = *k.down_since.get_or_insert(now);
                let left = member.is_some_and(|m| m.state == MemberState::Left);
                if left || now >= since + self.config.rejoin_grace {
                    forget.push(node.clone());
                }
            }
            for node in &forget {
                peers.known.remove(node);
            }
            let live: BTreeSet<&NodeId> = view.live().map(|m| &m.id).collect();
            peers.confirmed.retain(|n, _| live.contains(n));
        }
        if back || !forget.is_empty() || !down.is_empty() {
            self.rebuild_routes();
        }
        for node in &down {
            self.give_back_held_at(node);
        }
        for node in &forget {
            self.close_stream(node);
        }
        let known: BTreeSet<NodeId> = lock(&self.peers).known.keys().cloned().collect();
        lock(&self.inbound).retain(|(n, _), _| known.contains(n) || *n == self.me);
    }

    // ---- local subscriptions -------------------------------------------------------------

    /// Registers a broadcast subscription (peers are told by the caller).
    pub(super) fn add_broadcast(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<(Arc<str>, Arc<BroadcastQueue>), EventsError> {
        if self.closing.load(Relaxed) {
            return Err(EventsError::ShuttingDown);
        }
        let mut local = lock(&self.local);
        local.admits(topic, None)?;
        local.next_id += 1;
        local.version += 1;
        let id = local.next_id;
        let t = local
            .topics
            .entry(Arc::from(topic))
            .or_insert_with(|| LocalTopic::new(Arc::from(topic)));
        let queue = Arc::new(BroadcastQueue::new(id, options.capacity, options.overflow));
        t.broadcast.push(queue.clone());
        Ok((t.name.clone(), queue))
    }

    /// A broadcast subscription was dropped.
    pub(super) fn remove_broadcast(self: &Arc<Self>, topic: &str, id: u64) {
        {
            let mut local = lock(&self.local);
            let Some(t) = local.topics.get_mut(topic) else { return };
            t.broadcast.retain(|q| q.id != id);
            if t.broadcast.is_empty() {
                // A later subscription starts from whatever arrives next.
                t.seqs.clear();
            }
            if t.is_empty() {
                local.topics.remove(topic);
            }
            local.version += 1;
        }
        self.rebuild_routes();
        self.exchange_now.notify_one();
    }

    /// Adds a member to the node's queue of `group` (opening the queue if there is none).
    pub(super) fn join_group(
        &self,
        topic: &str,
        group: &str,
        options: GroupOptions,
    ) -> Result<Arc<GroupQueue>, EventsError> {
        if self.closing.load(Relaxed) {
            return Err(EventsError::ShuttingDown);
        }
        let mut local = lock(&self.local);
        local.admits(topic, Some(group))?;
        local.version += 1;
        let t = local
            .topics
            .entry(Arc::from(topic))
            .or_insert_with(|| LocalTopic::new(Arc::from(topic)));
        let queue = match t.groups.get(group) {
            Some(q) if q.accepts() != Err(Refusal::NoMember) => q.clone(),
            _ => {
                let q = Arc::new(GroupQueue::new(
                    t.name.clone(),
                    Arc::from(group),
                    options.capacity,
                    options.ack_deadline,
                ));
                t.groups.insert(Arc::from(group), q.clone());
                q
            }
        };
        queue.join();
        Ok(queue)
    }

    /// A group member was dropped; if it was the node's last member of the group, what the
    /// node held for the group goes back to the publishers.
    pub(super) fn leave_group(self: &Arc<Self>, queue: &Arc<GroupQueue>) {
        let given_back = queue.leave();
        let last = {
            let mut local = lock(&self.local);
            let topic = &*queue.topic;
            let Some(t) = local.topics.get_mut(topic) else { return };
            let last = t.groups.get(&*queue.group).is_some_and(|q| Arc::ptr_eq(q, queue))
                && queue.accepts() == Err(Refusal::NoMember);
            if last {
                t.groups.remove(&*queue.group);
                if t.is_empty() {
                    local.topics.remove(topic);
                }
                local.version += 1;
            }
            last
        };
        if last {
            self.rebuild_routes();
            self.exchange_now.notify_one();
        }
        for held in given_back {
            self.settle_out(&held.event, &queue.group, false);
        }
    }

    // ---- requests ----------------------------------------------------------------------

    pub(super) async fn call(
        &self,
        peer: &NodeId,
        op: EventsOp,
    ) -> Result<EventsReply, MessagingError> {
        let payload = Bytes::from(EventsRequest { op: Some(op) }.encode_to_vec());
        let answer =
            self.links.request(peer, Channel::Events, payload, self.config.request_timeout).await?;
        EventsResponse::decode(answer).ok().and_then(|r| r.reply).ok_or_else(|| {
            MessagingError::Remote {
                peer: peer.clone(),
                code: ErrorCode::BadRequest,
                message: "malformed events response".into(),
            }
        })
    }

    // ---- receiving ---------------------------------------------------------------------

    /// Applies a batch of `from`'s stream: each item once, in order, stopping at the first
    /// event a broadcast subscriber's full queue cannot take (the publisher resends the rest).
    /// Acknowledgements and nacks behind that event are applied at once (they are idempotent
    /// and must not wait behind a slow subscriber); they are skipped when resent.
    pub(super) fn accept_batch(
        self: &Arc<Self>,
        from: &NodeId,
        batch: Batch,
    ) -> Result<BatchReply, (ErrorCode, String)> {
        let mut inbound = lock(&self.inbound);
        let lane = (from.clone(), batch.lane);
        let kept = inbound.get(&lane);
        let len = batch.items.len();
        let (skip, mut cursor) = match StreamCursor::admit(
            kept.map(|k| k.cursor),
            batch.incarnation,
            batch.stream,
            batch.first,
            len,
        ) {
            Admission::Apply { skip, cursor } => (skip, cursor),
            Admission::Stale => {
                return Err((ErrorCode::Refused, "stale stream".into()));
            }
        };
        // Hand-backs of items applied before: their answer may have been lost.
        let mut handbacks: Vec<HandBack> = kept
            .filter(|k| {
                k.cursor.incarnation == cursor.incarnation && k.cursor.stream == cursor.stream
            })
            .map(|k| k.handbacks.iter().filter(|h| h.item >= batch.first).cloned().collect())
            .unwrap_or_default();
        self.stats.duplicates.fetch_add(skip as u64, Relaxed);
        let mut accepted = skip;
        let mut blocked = false;
        let mut settles = Vec::new();
        for (index, item) in batch.items.into_iter().enumerate().skip(skip) {
            let number = batch.first.saturating_add(index as u64);
            match item.kind {
                Some(ItemKind::Event(e)) if !blocked => {
                    match self.deliver(from, batch.incarnation, e) {
                        Some(groups) => {
                            handbacks.extend(groups.into_iter().map(|(group, full)| HandBack {
                                item: number,
                                group,
                                full,
                            }))
                        }
                        // A broadcast subscriber's queue is full: the publisher resends from here.
                        None => blocked = true,
                    }
                }
                Some(ItemKind::Ack(s)) => settles.push((true, s)),
                Some(ItemKind::Nack(s)) if s.incarnation == self.incarnation => {
                    settles.push((false, s))
                }
                Some(ItemKind::Nack(_)) if !blocked => {
                    handbacks.push(HandBack { item: number, group: String::new(), full: false })
                }
                _ => {}
            }
            if !blocked {
                accepted += 1;
            }
        }
        if *from != self.me {
            self.stats.received.fetch_add((accepted - skip) as u64, Relaxed);
        }
        cursor.next = batch.first.saturating_add(accepted as u64);
        let returned = handbacks
            .iter()
            .map(|h| Returned {
                index: (h.item - batch.first) as u32,
                group: h.group.clone(),
                full: h.full,
            })
            .collect();
        inbound.insert(lane, Inbound { cursor, handbacks });
        drop(inbound);
        for (ack, s) in settles {
            if ack {
                self.on_ack(s);
            } else {
                self.on_nack(from, s);
            }
        }
        Ok(BatchReply { accepted: accepted as u32, returned })
    }

    /// Delivers one event to this node's subscribers of its topic: every broadcast
    /// subscription and the named groups. Refuses it whole (`None`) when a broadcast queue
    /// that applies back-pressure is full; returns the group shares it hands back (group, and
    /// whether its queue was full rather than without a member here).
    fn deliver(
        self: &Arc<Self>,
        from: &NodeId,
        incarnation: u64,
        e: WireEvent,
    ) -> Option<Vec<(String, bool)>> {
        let mut local = lock(&self.local);
        let Some(t) = local.topics.get_mut(e.topic.as_str()) else {
            return Some(e.groups.into_iter().map(|g| (g.group, false)).collect());
        };
        if e.broadcast && t.broadcast.iter().any(|q| !q.has_room()) {
            return None;
        }
        let mut returned = Vec::new();
        let mut takers = Vec::new();
        for part in e.groups {
            match t.groups.get(part.group.as_str()).map(|q| (q, q.accepts())) {
                Some((q, Ok(()))) => takers.push((q.clone(), part.attempt)),
                Some((_, Err(Refusal::Full))) => returned.push((part.group, true)),
                _ => returned.push((part.group, false)),
            }
        }
        let event = Event {
            id: EventId { publisher: from.clone(), incarnation, seq: e.seq },
            topic: t.name.clone(),
            payload: e.payload,
            published_at_ms: e.published_at_ms,
            attempt: 1,
        };
        if e.broadcast && !t.broadcast.is_empty() {
            let (seen, keep) = observe_seq(t.seqs.get(from).copied(), incarnation, e.seq);
            t.seqs.insert(from.clone(), (incarnation, keep));
            let gap = match seen {
                SeqObservation::Duplicate => None,
                SeqObservation::InOrder => Some(None),
                SeqObservation::Gap { missed } => {
                    self.stats.gaps.fetch_add(missed, Relaxed);
                    Some(Some(missed))
                }
            };
            if let Some(gap) = gap {
                for q in &t.broadcast {
                    if q.push(event.clone(), gap) {
                        self.stats.lagged.fetch_add(1, Relaxed);
                    } else {
                        self.stats.delivered.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        drop(local);
        for (q, attempt) in takers {
            let held = Held { event: Event { attempt, ..event.clone() }, arrived: Instant::now() };
            match q.push(held) {
                Ok(true) => {
                    self.stats.delivered.fetch_add(1, Relaxed);
                }
                // Offered again while still here: one copy is enough.
                Ok(false) => {
                    self.stats.duplicates.fetch_add(1, Relaxed);
                }
                // The last member left between the check and now: give it back to its
                // publisher like any other refusal.
                Err(held) => self.settle_out(&held.event, &q.group, false),
            }
        }
        Some(returned)
    }

    // ---- group acknowledgements ---------------------------------------------------------

    /// A group member on this node settled `event` (ack) or gave it back (nack): tell its
    /// publisher. If the publisher is gone, a given-back event is redelivered here.
    pub(super) fn settle_out(self: &Arc<Self>, event: &Event, group: &str, ack: bool) {
        let settle = Settle {
            incarnation: event.id.incarnation,
            topic: event.topic.to_string(),
            seq: event.id.seq,
            group: group.to_owned(),
            attempt: event.attempt,
        };
        if ack {
            self.stats.acked.fetch_add(1, Relaxed);
        } else {
            self.stats.nacked.fetch_add(1, Relaxed);
        }
        if event.id.publisher == self.me {
            if event.id.incarnation == self.incarnation {
                if ack {
                    self.on_ack(settle);
                } else {
                    self.on_nack(&self.me.clone(), settle);
                }
            } else if !ack {
                self.requeue_locally(event.clone(), group);
            }
            return;
        }
        let kind = if ack { ItemKind::Ack(settle) } else { ItemKind::Nack(settle) };
        self.enqueue_settle(kind, event, group);
    }

    /// The events incarnation this node knows for `node`'s process, if any.
    pub(super) fn known_incarnation(&self, node: &NodeId) -> Option<u64> {
        lock(&self.peers).known.get(node).map(|k| k.incarnation)
    }

    /// Whether `node`'s process `incarnation` may still be running: it is the one whose
    /// interest we know, or we know none and the node is a live member.
    pub(super) fn knows_process(&self, node: &NodeId, incarnation: u64) -> bool {
        match lock(&self.peers).known.get(node) {
            Some(k) => k.incarnation == incarnation,
            None => self.view.borrow().live().any(|m| &m.id == node),
        }
    }

    /// The publisher of a group event is gone: this node delivers it again to the group's
    /// members here (the publisher's redelivery duty passes to the node holding the event).
    pub(super) fn requeue_locally(&self, mut event: Event, group: &str) {
        let q =
            lock(&self.local).topics.get(&*event.topic).and_then(|t| t.groups.get(group).cloned());
        event.attempt = event.attempt.saturating_add(1);
        let held = Held { event, arrived: Instant::now() };
        match q.map(|q| q.push(held)) {
            Some(Ok(_)) => {
                self.stats.redelivered.fetch_add(1, Relaxed);
            }
            _ => {
                self.stats.abandoned.fetch_add(1, Relaxed);
                tracing::error!(node = %self.me, group, "a group event was abandoned: its publisher is gone and the group has no member here");
            }
        }
    }

    /// Ticks: missed acknowledgement deadlines give events back; held group events are
    /// retried.
    pub(crate) async fn run_ticks(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.config.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = Instant::now();
            let queues: Vec<Arc<GroupQueue>> = lock(&self.local)
                .topics
                .values()
                .flat_map(|t| t.groups.values().cloned())
                .collect();
            for q in queues {
                for held in q.expired(now) {
                    self.stats.deadlines_missed.fetch_add(1, Relaxed);
                    self.settle_out(&held.event, &q.group, false);
                }
            }
            self.on_membership();
            self.rescue_stalled(now);
            self.retry_held();
            self.reoffer(now);
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> EventsStats {
        let s = &self.stats;
        let (pending, held, queued) = self.pending_counts();
        EventsStats {
            published: s.published.load(Relaxed),
            unconfirmed: s.unconfirmed.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            redelivered: s.redelivered.load(Relaxed),
            acked: s.acked.load(Relaxed),
            nacked: s.nacked.load(Relaxed),
            deadlines_missed: s.deadlines_missed.load(Relaxed),
            lagged: s.lagged.load(Relaxed),
            gaps: s.gaps.load(Relaxed),
            duplicates: s.duplicates.load(Relaxed),
            abandoned: s.abandoned.load(Relaxed),
            batches: s.batches.load(Relaxed),
            batch_failures: s.batch_failures.load(Relaxed),
            received: s.received.load(Relaxed),
            reoffered: s.reoffered.load(Relaxed),
            unacked: pending,
            held,
            queued,
        }
    }

    /// The node stopped without leaving (dropped): subscriptions see `Closed`; what they held
    /// stays unacknowledged (its publishers redeliver it once this node is seen down).
    pub(crate) fn close_local(&self) {
        let topics = std::mem::take(&mut lock(&self.local).topics);
        for t in topics.values() {
            for q in &t.broadcast {
                q.close();
            }
            for q in t.groups.values() {
                drop(q.close());
            }
        }
    }

    /// Stops for shutdown: local subscriptions close (group events they held go back to
    /// their publishers), peers are told, and queued events get until `timeout` to leave.
    pub(crate) async fn drain(self: &Arc<Self>, timeout: Duration) -> bool {
        self.closing.store(true, Relaxed);
        let deadline = Instant::now() + timeout;
        let topics = std::mem::take(&mut lock(&self.local).topics);
        lock(&self.local).version += 1;
        for t in topics.values() {
            for q in &t.broadcast {
                q.close();
            }
            for q in t.groups.values() {
                for held in q.close() {
                    self.settle_out(&held.event, &q.group, false);
                }
            }
        }
        self.rebuild_routes();
        self.exchange_round(false, deadline).await;
        self.flushed(deadline).await
    }
}

/// Routes the Events channel to the node's event bus.
pub(crate) struct EventsDispatch(pub Weak<Runtime>);

impl EventsDispatch {
    pub fn dispatch(&self, from: &NodeId, payload: Bytes, reply: Responder) {
        let Some(rt) = self.0.upgrade() else {
            reply.fail(ErrorCode::ShuttingDown, "event bus stopped");
            return;
        };
        let Some(op) = EventsRequest::decode(payload).ok().filter(|r| r.check()).and_then(|r| r.op)
        else {
            reply.fail(ErrorCode::BadRequest, "malformed events request");
            return;
        };
        let answer = match op {
            EventsOp::Interest(theirs) => Ok(EventsReply::Interest(rt.on_interest(from, theirs))),
            EventsOp::Batch(batch) => rt.accept_batch(from, batch).map(EventsReply::Batch),
        };
        match answer {
            Ok(a) => reply.respond(Bytes::from(EventsResponse { reply: Some(a) }.encode_to_vec())),
            Err((code, message)) => reply.fail(code, message),
        }
    }
}
