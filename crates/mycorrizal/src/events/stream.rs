//! The publishing side: one ordered stream per destination node, the `publish` path, and the
//! group deliveries a publisher owns until a member acknowledges them.
//!
//! A stream sends one batch at a time and resends it until the destination takes it, so items
//! arrive in the order they were queued (per-publisher FIFO) and a resent batch is applied once
//! (`StreamCursor`). Queues are bounded: a publish waits for room (back-pressure) until its
//! deadline; a stream full for longer than that is skipped at once and its subscribers see a
//! gap.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{
    NodeId,
    events::choose_member,
    wire::{
        events::{
            Batch, EVENTS_LANE, EventsOp, EventsReply, GroupPart, Item, ItemKind, Returned,
            SETTLE_LANE, Settle, WireEvent,
        },
        messages::ErrorCode,
    },
};
use tokio::{
    sync::{Notify, futures::OwnedNotified, oneshot},
    time::Instant,
};

use super::{
    Event, EventId, PublishError, Reason, Target, Unconfirmed,
    runtime::{Dest, Routes, Runtime, TopicRoute},
};
use crate::{cluster::MessagingError, sync::lock};

/// Shortest and longest pause before resending a batch the destination could not take whole.
const FULL_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));
/// Shortest and longest pause before resending a batch that failed.
const ERROR_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

type Confirm = oneshot::Sender<Result<(), Reason>>;

/// (topic, topic sequence number, group): one group delivery.
type PendingKey = (String, u64, String);

/// A group delivery this node published and no member has acknowledged yet.
struct Pending {
    payload: Bytes,
    published_at_ms: u64,
    attempt: u32,
    /// The node it was last sent to; `None` while no member can take it (held).
    at: Option<NodeId>,
    /// The publish waiting for a first member to take it.
    confirm: Option<Confirm>,
    /// When it was last sent (or offered again) to `at`.
    sent_at: Instant,
}

impl Pending {
    /// The stream item that delivers it (to its group only) as `attempt`.
    fn item(&self, key: &PendingKey, attempt: u32) -> Item {
        Item {
            kind: Some(ItemKind::Event(WireEvent {
                topic: key.0.clone(),
                seq: key.1,
                payload: self.payload.clone(),
                broadcast: false,
                groups: vec![GroupPart { group: key.2.clone(), attempt }],
                published_at_ms: self.published_at_ms,
            })),
        }
    }
}

impl Publishing {
    /// Holds a group delivery for a retry on the next tick.
    fn park(&mut self, key: &PendingKey) {
        let Some(entry) = self.pending.get_mut(key) else { return };
        if let Some(old) = entry.at.take() {
            if let Some(l) = self.load.get_mut(&old) {
                *l = l.saturating_sub(1);
            }
            self.held += 1;
        }
    }
}

/// Publisher state: topic numbers, streams, group deliveries in flight.
#[derive(Default)]
pub(super) struct Publishing {
    seqs: HashMap<Arc<str>, u64>,
    pub streams: HashMap<NodeId, Arc<Stream>>,
    next_stream: u64,
    pending: HashMap<PendingKey, Pending>,
    /// Unacknowledged group deliveries per node, to send the next one to the least loaded.
    load: HashMap<NodeId, u64>,
    held: usize,
    rotation: u64,
}

/// One destination's ordered stream.
pub(super) struct Stream {
    pub to: NodeId,
    pub incarnation: u64,
    id: u64,
    state: Mutex<StreamState>,
    /// Wakes the stream's sender task (its only waiter).
    wake: Notify,
    /// Wakes publishers waiting for room.
    space: Arc<Notify>,
}

struct StreamState {
    queue: VecDeque<Queued>,
    /// Number of the next item queued.
    next: u64,
    /// The settle lane: acknowledgements and nacks.
    settles: VecDeque<Queued>,
    next_settle: u64,
    /// Counted events and their payload bytes (published events; redeliveries and
    /// acknowledgements are bounded elsewhere and not counted).
    events: usize,
    bytes: usize,
    closed: bool,
}

struct Queued {
    seq: u64,
    item: Item,
    bytes: usize,
    counted: bool,
    queued_at: Instant,
    /// The publish waiting for this node's broadcast subscribers to take it.
    done: Option<Confirm>,
    /// For a nack: the event, to deliver it here again if its publisher cannot take it back.
    nacked: Option<Box<(Event, Arc<str>)>>,
}

/// Whether a stream takes one more published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Yes,
    /// Full: wait for room (back-pressure).
    Wait,
    /// Room, but the destination has not taken anything for a whole publish timeout: queue
    /// the event without waiting for it (it arrives, in order, if the destination recovers).
    Stalled,
    /// Full and stalled: do not send (its subscribers will be told of the gap).
    Blocked,
    /// No stream: the route names a process that is gone.
    Gone,
}

impl Stream {
    fn new(to: NodeId, incarnation: u64, id: u64) -> Self {
        Stream {
            to,
            incarnation,
            id,
            state: Mutex::new(StreamState {
                queue: VecDeque::new(),
                next: 1,
                settles: VecDeque::new(),
                next_settle: 1,
                events: 0,
                bytes: 0,
                closed: false,
            }),
            wake: Notify::new(),
            space: Arc::new(Notify::new()),
        }
    }

    fn room(&self, rt: &Runtime, size: usize, now: Instant) -> Room {
        let s = lock(&self.state);
        let fits = s.events < rt.config.stream_events
            && (s.bytes == 0 || s.bytes + size <= rt.config.stream_bytes);
        // The destination has not taken anything for a whole publish timeout: do not make
        // every publish wait that long again.
        let stalled =
            s.queue.front().is_some_and(|q| q.queued_at + rt.config.publish_timeout <= now);
        match (fits, stalled) {
            (true, false) => Room::Yes,
            (false, false) => Room::Wait,
            (true, true) => Room::Stalled,
            (false, true) => Room::Blocked,
        }
    }

    /// Queues an item; gives it back if the stream is closed.
    fn push(&self, mut q: Queued) -> Result<(), Box<Queued>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(Box::new(q));
        }
        if matches!(q.item.kind, Some(ItemKind::Ack(_) | ItemKind::Nack(_))) {
            q.seq = s.next_settle;
            s.next_settle += 1;
            s.settles.push_back(q);
        } else {
            q.seq = s.next;
            s.next += 1;
            if q.counted {
                s.events += 1;
                s.bytes += q.bytes;
            }
            s.queue.push_back(q);
        }
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// The items to send next (copies: they leave the queue only once taken): the settle lane
    /// first, at most `most` events otherwise; `None` when both lanes are empty; `Err` once
    /// closed.
    #[allow(clippy::type_complexity)]
    fn next_batch(&self, rt: &Runtime, most: usize) -> Result<Option<(u32, u64, Vec<Item>)>, ()> {
        let s = lock(&self.state);
        if s.closed {
            return Err(());
        }
        let (lane, queue, most) = if s.settles.is_empty() {
            (EVENTS_LANE, &s.queue, most)
        } else {
            (SETTLE_LANE, &s.settles, usize::MAX)
        };
        let Some(first) = queue.front().map(|q| q.seq) else {
            return Ok(None);
        };
        let mut bytes = 0;
        let mut items = Vec::new();
        for q in queue {
            if !items.is_empty()
                && (items.len() >= rt.config.batch_events.min(most)
                    || bytes + q.bytes > rt.config.batch_bytes)
            {
                break;
            }
            bytes += q.bytes;
            items.push(q.item.clone());
        }
        Ok(Some((lane, first, items)))
    }

    /// Removes the first `n` items of `lane`, which the destination took.
    fn taken(&self, lane: u32, first: u64, n: usize) -> Vec<Queued> {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        let queue = if lane == SETTLE_LANE { &mut s.settles } else { &mut s.queue };
        if s.closed || queue.front().map(|q| q.seq) != Some(first) {
            return Vec::new();
        }
        let n = n.min(queue.len());
        let taken: Vec<Queued> = queue.drain(..n).collect();
        for q in taken.iter().filter(|q| q.counted) {
            s.events -= 1;
            s.bytes -= q.bytes;
        }
        drop(guard);
        self.space.notify_waiters();
        taken
    }

    /// Whether the destination has taken nothing for a whole publish timeout.
    fn stalled(&self, rt: &Runtime, now: Instant) -> bool {
        lock(&self.state)
            .queue
            .front()
            .is_some_and(|q| q.queued_at + rt.config.publish_timeout <= now)
    }

    /// Removes the group shares `movable` accepts from the events still queued and returns
    /// them (the stream is stalled: they go to other members instead of waiting behind it).
    fn strip_groups(&self, movable: impl Fn(&str, &str) -> bool) -> Vec<PendingKey> {
        let mut s = lock(&self.state);
        let mut keys = Vec::new();
        for q in s.queue.iter_mut() {
            if let Some(ItemKind::Event(e)) = &mut q.item.kind {
                let topic = e.topic.clone();
                e.groups.retain(|part| {
                    let movable = movable(&topic, &part.group);
                    if movable {
                        keys.push((topic.clone(), e.seq, part.group.clone()));
                    }
                    !movable
                });
            }
        }
        keys
    }

    fn close(&self) -> Vec<Queued> {
        let mut s = lock(&self.state);
        s.closed = true;
        let mut items: Vec<Queued> = s.queue.drain(..).collect();
        items.extend(s.settles.drain(..));
        drop(s);
        self.wake.notify_one();
        self.space.notify_waiters();
        items
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items queued on both lanes.
    fn len(&self) -> usize {
        let s = lock(&self.state);
        s.queue.len() + s.settles.len()
    }
}

/// What an item weighs against batch and stream bounds: payload and names.
fn item_bytes(item: &Item) -> usize {
    match &item.kind {
        Some(ItemKind::Event(e)) => {
            e.payload.len()
                + e.topic.len()
                + e.groups.iter().map(|g| g.group.len() + 8).sum::<usize>()
                + 32
        }
        Some(ItemKind::Ack(s) | ItemKind::Nack(s)) => s.topic.len() + s.group.len() + 32,
        None => 0,
    }
}

/// One destination of a publish and what it gets.
#[derive(Default)]
struct Planned {
    broadcast: bool,
    /// Wait for its broadcast subscribers to take it (a live node that is keeping up).
    confirm: bool,
    groups: Vec<String>,
}

impl Runtime {
    /// Publishes `payload` on `topic`; see [`Events::publish`](super::Events::publish).
    pub(super) async fn publish(
        self: &Arc<Self>,
        topic: &str,
        payload: Bytes,
    ) -> Result<EventId, PublishError> {
        super::check("topic", topic)?;
        if payload.len() > self.config.max_payload {
            return Err(super::EventsError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            }
            .into());
        }
        if self.closing.load(Relaxed) {
            return Err(super::EventsError::ShuttingDown.into());
        }
        let deadline = Instant::now() + self.config.publish_timeout;
        // A node that has not joined yet knows nobody's subscriptions: publishing as if there
        // were none would confirm events that reach no one. Found by `pulse chaos`: events
        // published through a node restarted with its clock beyond the drift (it never
        // joined) were confirmed and lost.
        let joined = self.wait_joined(deadline).await;
        if self.routes().view_epoch != self.view.borrow().epoch {
            // Membership changed since the routes were built (a member that has just come up
            // is not among the peers whose subscriptions are unknown yet): routing by them
            // would skip it silently. Found by `pulse chaos`: events published through a
            // node restarted a moment earlier were confirmed and reached no one.
            self.rebuild_routes();
        }
        let routes = self.interest_known(deadline).await;
        let mut missing: Vec<Unconfirmed> = routes
            .unknown
            .iter()
            .map(|(n, _)| Unconfirmed {
                target: Target::Node(n.clone()),
                reason: Reason::InterestUnknown,
            })
            .collect();
        if !joined {
            missing.push(Unconfirmed { target: Target::Cluster, reason: Reason::InterestUnknown });
        }
        let (seq, waits) = loop {
            match self.try_enqueue(topic, &payload, deadline, &mut missing) {
                Ok(done) => break done,
                Err(Some(wait)) => {
                    // Registered before the lock was released: no wake-up is lost.
                    let _ = tokio::time::timeout_at(deadline, wait).await;
                }
                Err(None) => {}
            }
        };
        self.stats.published.fetch_add(1, Relaxed);
        for (target, rx) in waits {
            let reason = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(reason))) => reason,
                Ok(Err(_)) => Reason::Down,
                Err(_) => match &target {
                    Target::Group(g) => {
                        let key = (topic.to_owned(), seq, g.clone());
                        let p = lock(&self.publishing);
                        match p.pending.get(&key) {
                            Some(Pending { at: None, .. }) => Reason::Held,
                            _ => Reason::Timeout,
                        }
                    }
                    Target::Node(_) | Target::Cluster => Reason::Timeout,
                },
            };
            missing.push(Unconfirmed { target, reason });
        }
        let id = EventId { publisher: self.me.clone(), incarnation: self.incarnation, seq };
        if missing.is_empty() {
            Ok(id)
        } else {
            self.stats.unconfirmed.fetch_add(1, Relaxed);
            missing.sort_by(|a, b| a.target.cmp(&b.target));
            Err(PublishError::Unconfirmed { id, missing })
        }
    }

    /// Whether this node has joined its cluster, waiting for it until `deadline`.
    async fn wait_joined(&self, deadline: Instant) -> bool {
        if self.joined.load(Relaxed) {
            return true;
        }
        let mut view = self.view.clone();
        let me = self.me.clone();
        let seen =
            tokio::time::timeout_at(deadline, view.wait_for(|v| v.live().any(|m| m.id != me)))
                .await
                .is_ok_and(|r| r.is_ok());
        if seen {
            self.joined.store(true, Relaxed);
        }
        seen
    }

    /// Waits (until `deadline`, and no longer than `publish_timeout` after a peer became
    /// unknown) for the subscriptions of every live peer to be known.
    async fn interest_known(&self, deadline: Instant) -> Arc<Routes> {
        loop {
            let wait = self.routes_changed.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            let routes = self.routes();
            let until = routes
                .unknown
                .iter()
                .map(|(_, since)| *since + self.config.publish_timeout)
                .max()
                .map(|u| u.min(deadline));
            match until {
                Some(until) if Instant::now() < until => {
                    let _ = tokio::time::timeout_at(until, wait).await;
                }
                _ => return routes,
            }
        }
    }

    /// Takes the publishing lock once: plans the destinations, and either queues the event on
    /// every stream (returning its number and what to wait for) or returns what to wait on
    /// for room (`None`: retry at once).
    #[allow(clippy::type_complexity)]
    fn try_enqueue(
        self: &Arc<Self>,
        topic: &str,
        payload: &Bytes,
        deadline: Instant,
        missing: &mut Vec<Unconfirmed>,
    ) -> Result<(u64, Vec<(Target, oneshot::Receiver<Result<(), Reason>>)>), Option<Armed>> {
        let routes = self.routes();
        let empty = TopicRoute::default();
        let route = routes.topics.get(topic).unwrap_or(&empty);
        let now = Instant::now();
        let late = now >= deadline;
        let size = payload.len();
        let mut p = lock(&self.publishing);
        let mut rooms: HashMap<NodeId, (Arc<Stream>, Room)> = HashMap::new();
        let mut room_of = |rt: &Arc<Runtime>, p: &mut Publishing, d: &Dest| -> Room {
            if let Some((_, r)) = rooms.get(&d.node) {
                return *r;
            }
            let Some(s) = rt.stream_for(p, d) else {
                // A stale route (the process changed since): as if it had gone.
                return Room::Gone;
            };
            let r = s.room(rt, size, now);
            rooms.insert(d.node.clone(), (s, r));
            r
        };
        let mut plan: BTreeMap<NodeId, Planned> = BTreeMap::new();
        let mut skipped: Vec<Unconfirmed> = Vec::new();
        let mut wait_on: Option<NodeId> = None;
        for d in &route.broadcast {
            let room = room_of(self, &mut p, d);
            let reason = match room {
                Room::Yes => None,
                Room::Stalled => Some(Reason::Stalled),
                Room::Wait if d.live && !late => {
                    wait_on.get_or_insert(d.node.clone());
                    None
                }
                Room::Wait | Room::Blocked => Some(Reason::Full),
                Room::Gone => Some(Reason::Down),
            };
            // A node held down is not waited for and not reported: it is not a member now.
            if d.live
                && let Some(reason) = reason
            {
                skipped.push(Unconfirmed { target: Target::Node(d.node.clone()), reason });
            }
            if !matches!(reason, Some(Reason::Full | Reason::Down)) {
                let planned = plan.entry(d.node.clone()).or_default();
                planned.broadcast = true;
                planned.confirm = d.live && reason.is_none();
            }
        }
        let unacked_full = !route.groups.is_empty() && p.pending.len() >= self.config.max_unacked;
        if unacked_full && !late {
            return Err(Some(armed(&self.acked)));
        }
        let mut held_groups = Vec::new();
        for (group, members) in &route.groups {
            if unacked_full {
                skipped.push(Unconfirmed {
                    target: Target::Group(group.clone()),
                    reason: Reason::Full,
                });
                continue;
            }
            // Members whose node takes events now; else, before the deadline, those that will
            // after a wait.
            let mut open: Vec<&Dest> =
                members.iter().filter(|d| room_of(self, &mut p, d) == Room::Yes).collect();
            let waiting = open.is_empty() && !late;
            if waiting {
                open = members.iter().filter(|d| room_of(self, &mut p, d) == Room::Wait).collect();
            }
            let loads: Vec<(&NodeId, u64)> =
                open.iter().map(|d| (&d.node, p.load.get(&d.node).copied().unwrap_or(0))).collect();
            p.rotation = p.rotation.wrapping_add(1);
            match choose_member(&loads, None, p.rotation) {
                Some(node) => {
                    if waiting {
                        wait_on.get_or_insert(node.clone());
                    }
                    plan.entry(node.clone()).or_default().groups.push(group.clone());
                }
                None => held_groups.push(group.clone()),
            }
        }
        if let Some(node) = wait_on {
            let stream = &rooms[&node].0;
            let wait = armed(&stream.space);
            // Room may have appeared between the check and the registration.
            return Err((stream.room(self, size, Instant::now()) == Room::Wait).then_some(wait));
        }
        let seq = {
            let s = p.seqs.entry(Arc::from(topic)).or_insert(0);
            *s += 1;
            *s
        };
        let published_at_ms = self.clock.now_ms();
        let mut waits = Vec::new();
        for (node, planned) in plan {
            let (stream, _) = rooms.remove(&node).expect("planned nodes have a room");
            let done = planned.confirm.then(|| {
                let (tx, rx) = oneshot::channel();
                waits.push((Target::Node(node.clone()), rx));
                tx
            });
            for group in &planned.groups {
                let (tx, rx) = oneshot::channel();
                waits.push((Target::Group(group.clone()), rx));
                p.pending.insert(
                    (topic.to_owned(), seq, group.clone()),
                    Pending {
                        payload: payload.clone(),
                        published_at_ms,
                        attempt: 1,
                        at: Some(node.clone()),
                        confirm: Some(tx),
                        sent_at: now,
                    },
                );
                *p.load.entry(node.clone()).or_insert(0) += 1;
            }
            let item = Item {
                kind: Some(ItemKind::Event(WireEvent {
                    topic: topic.to_owned(),
                    seq,
                    payload: payload.clone(),
                    broadcast: planned.broadcast,
                    groups: planned
                        .groups
                        .iter()
                        .map(|g| GroupPart { group: g.clone(), attempt: 1 })
                        .collect(),
                    published_at_ms,
                })),
            };
            let bytes = item_bytes(&item);
            let queued =
                Queued { seq: 0, item, bytes, counted: true, queued_at: now, done, nacked: None };
            if let Err(q) = stream.push(queued) {
                // Closed since we looked (its process is gone): as if it had gone first.
                if let Some(done) = q.done {
                    let _ = done.send(Err(Reason::Down));
                }
                for group in &planned.groups {
                    let key = (topic.to_owned(), seq, group.clone());
                    self.reroute(&mut p, &routes, &key, Some(&node));
                }
            }
        }
        for group in held_groups {
            // No member's node takes events now: keep it and retry on ticks.
            let (tx, rx) = oneshot::channel();
            waits.push((Target::Group(group.clone()), rx));
            p.pending.insert(
                (topic.to_owned(), seq, group),
                Pending {
                    payload: payload.clone(),
                    published_at_ms,
                    attempt: 1,
                    at: None,
                    confirm: Some(tx),
                    sent_at: now,
                },
            );
            p.held += 1;
        }
        drop(p);
        missing.extend(skipped);
        Ok((seq, waits))
    }

    /// The stream to `dest`, opened (and its sender task started) if there is none; a stream
    /// to another incarnation of the node (an older process) is closed first. `None` when
    /// `dest` is not the process this node knows for that node (a stale route) or the node
    /// stopped.
    fn stream_for(self: &Arc<Self>, p: &mut Publishing, dest: &Dest) -> Option<Arc<Stream>> {
        if self.stopped.load(Relaxed) {
            return None;
        }
        if dest.node != self.me
            && self.known_incarnation(&dest.node).is_some_and(|i| i != dest.incarnation)
        {
            return None;
        }
        if let Some(s) = p.streams.get(&dest.node) {
            if s.incarnation == dest.incarnation {
                return Some(s.clone());
            }
            self.close_locked(p, &dest.node.clone());
            // Closing reroutes group events, which may have opened the stream we want.
            if let Some(s) = p.streams.get(&dest.node).filter(|s| s.incarnation == dest.incarnation)
            {
                return Some(s.clone());
            }
        }
        p.next_stream += 1;
        let s = Arc::new(Stream::new(dest.node.clone(), dest.incarnation, p.next_stream));
        if let Some(old) = p.streams.insert(dest.node.clone(), s.clone()) {
            drop(old.close());
        }
        self.tasks.spawn(self.clone().run_stream(s.clone()));
        Some(s)
    }

    /// Closes the stream to `node` (it left): publishes waiting on it learn `Down`, its group
    /// deliveries and those its node had taken go to other members, its nacks are delivered
    /// here again.
    pub(super) fn close_stream(self: &Arc<Self>, node: &NodeId) {
        let mut p = lock(&self.publishing);
        self.close_locked(&mut p, node);
    }

    fn close_locked(self: &Arc<Self>, p: &mut Publishing, node: &NodeId) {
        let Some(stream) = p.streams.remove(node) else { return };
        for q in stream.close() {
            if let Some(done) = q.done {
                let _ = done.send(Err(Reason::Down));
            }
            if let Some(nacked) = q.nacked {
                let (event, group) = *nacked;
                self.requeue_locally(event, &group);
            }
        }
        self.reroute_where(p, |e| e.at.as_ref() == Some(node), Some(node));
    }

    /// Reroutes, in key order, every pending group delivery `which` selects.
    fn reroute_where(
        self: &Arc<Self>,
        p: &mut Publishing,
        which: impl Fn(&Pending) -> bool,
        avoid: Option<&NodeId>,
    ) {
        let routes = self.routes();
        let mut keys: Vec<PendingKey> =
            p.pending.iter().filter(|(_, e)| which(e)).map(|(k, _)| k.clone()).collect();
        keys.sort();
        for key in keys {
            self.reroute(p, &routes, &key, avoid);
        }
    }

    /// `node` is held down: the group deliveries it had taken go to live members.
    pub(super) fn give_back_held_at(self: &Arc<Self>, node: &NodeId) {
        let mut p = lock(&self.publishing);
        if p.load.get(node).copied().unwrap_or(0) == 0 {
            return;
        }
        self.reroute_where(&mut p, |e| e.at.as_ref() == Some(node), Some(node));
    }

    /// Sends a group delivery (again) to a member, preferring one not on `avoid`; holds it if
    /// no member can take it.
    fn reroute(
        self: &Arc<Self>,
        p: &mut Publishing,
        routes: &Routes,
        key: &PendingKey,
        avoid: Option<&NodeId>,
    ) {
        let Some(entry) = p.pending.get_mut(key) else { return };
        match entry.at.take() {
            Some(old) => {
                if let Some(l) = p.load.get_mut(&old) {
                    *l = l.saturating_sub(1);
                }
            }
            None => p.held = p.held.saturating_sub(1),
        }
        let members: &[Dest] = routes
            .topics
            .get(&key.0)
            .and_then(|r| r.groups.get(&key.2))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let loads: Vec<(&NodeId, u64)> =
            members.iter().map(|d| (&d.node, p.load.get(&d.node).copied().unwrap_or(0))).collect();
        p.rotation = p.rotation.wrapping_add(1);
        let Some(dest) = choose_member(&loads, avoid, p.rotation)
            .and_then(|n| members.iter().find(|d| d.node == *n))
        else {
            let entry = p.pending.get_mut(key).expect("present above");
            entry.at = None;
            p.held += 1;
            return;
        };
        let Some(stream) = self.stream_for(p, dest) else {
            let entry = p.pending.get_mut(key).expect("present above");
            entry.at = None;
            p.held += 1;
            return;
        };
        let entry = p.pending.get_mut(key).expect("present above");
        entry.attempt = entry.attempt.saturating_add(1);
        let item = entry.item(key, entry.attempt);
        let bytes = item_bytes(&item);
        let queued = Queued {
            seq: 0,
            item,
            bytes,
            counted: false,
            queued_at: Instant::now(),
            done: None,
            nacked: None,
        };
        if stream.push(queued).is_ok() {
            entry.at = Some(dest.node.clone());
            entry.sent_at = Instant::now();
            *p.load.entry(dest.node.clone()).or_insert(0) += 1;
        } else {
            entry.at = None;
            p.held += 1;
        }
        self.stats.redelivered.fetch_add(1, Relaxed);
    }

    /// Group deliveries queued toward a stalled node (a subscriber that stopped reading, an
    /// unreachable node) go to other members rather than wait behind it.
    pub(super) fn rescue_stalled(self: &Arc<Self>, now: Instant) {
        let mut p = lock(&self.publishing);
        let mut stalled: Vec<Arc<Stream>> = p
            .streams
            .values()
            .filter(|s| s.to != self.me && s.stalled(self, now))
            .cloned()
            .collect();
        if stalled.is_empty() {
            return;
        }
        stalled.sort_by(|a, b| a.to.cmp(&b.to));
        let routes = self.routes();
        for s in stalled {
            // Only shares another member can take: a group whose only member is there waits.
            let elsewhere = |topic: &str, group: &str| {
                routes
                    .topics
                    .get(topic)
                    .and_then(|r| r.groups.get(group))
                    .is_some_and(|m| m.iter().any(|d| d.node != s.to))
            };
            for key in s.strip_groups(elsewhere) {
                if p.pending.get(&key).is_some_and(|e| e.at.as_ref() == Some(&s.to)) {
                    self.reroute(&mut p, &routes, &key, Some(&s.to));
                }
            }
        }
    }

    /// Retries group deliveries no member could take.
    pub(super) fn retry_held(self: &Arc<Self>) {
        let mut p = lock(&self.publishing);
        if p.held == 0 {
            return;
        }
        self.reroute_where(&mut p, |e| e.at.is_none(), None);
    }

    /// Offers group deliveries again to the node holding them when nothing was heard of them
    /// for `reoffer_interval`: an acknowledgement or nack can be lost when the two nodes
    /// briefly disagreed on membership. The holder ignores an event it still holds, so the
    /// offer only revives one that vanished.
    pub(super) fn reoffer(self: &Arc<Self>, now: Instant) {
        let mut p = lock(&self.publishing);
        let due = now.checked_sub(self.config.reoffer_interval);
        let Some(due) = due else { return };
        let mut keys: Vec<PendingKey> = p
            .pending
            .iter()
            .filter(|(_, e)| e.at.is_some() && e.sent_at <= due)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for key in keys {
            let Some(entry) = p.pending.get(&key) else { continue };
            let Some(node) = entry.at.clone() else { continue };
            let Some(stream) = p.streams.get(&node).cloned() else { continue };
            // A stream not draining would only pile offers up; silence there is expected.
            if !stream.is_empty() {
                continue;
            }
            // Counted as a new attempt: if the holder lost it, this is a redelivery.
            let attempt = entry.attempt.saturating_add(1);
            let item = entry.item(&key, attempt);
            let bytes = item_bytes(&item);
            let queued = Queued {
                seq: 0,
                item,
                bytes,
                counted: false,
                queued_at: now,
                done: None,
                nacked: None,
            };
            if stream.push(queued).is_ok() {
                self.stats.reoffered.fetch_add(1, Relaxed);
            }
            if let Some(entry) = p.pending.get_mut(&key) {
                entry.sent_at = now;
                entry.attempt = attempt;
            }
        }
    }

    /// A member acknowledged a group delivery this node published.
    pub(super) fn on_ack(&self, s: Settle) {
        if s.incarnation != self.incarnation {
            return;
        }
        let mut p = lock(&self.publishing);
        if let Some(mut entry) = p.pending.remove(&(s.topic, s.seq, s.group)) {
            match &entry.at {
                Some(at) => {
                    if let Some(l) = p.load.get_mut(at) {
                        *l = l.saturating_sub(1);
                    }
                }
                None => p.held = p.held.saturating_sub(1),
            }
            if let Some(confirm) = entry.confirm.take() {
                let _ = confirm.send(Ok(()));
            }
        }
        drop(p);
        self.acked.notify_waiters();
    }

    /// A member on `from` gave a group delivery back: deliver it again, elsewhere if possible.
    /// A nack from a node the delivery has since left (or for an older attempt) is stale.
    pub(super) fn on_nack(self: &Arc<Self>, from: &NodeId, s: Settle) {
        let mut p = lock(&self.publishing);
        let key = (s.topic, s.seq, s.group);
        // Only the node holding the delivery can give it back (it holds one copy: a group
        // queue keeps an event once), and only the attempt it holds or a later one (a node
        // that redelivered it itself counts on from ours): a nack applied before, resent,
        // finds the attempt already moved on.
        let current = p
            .pending
            .get(&key)
            .is_some_and(|e| e.at.as_ref() == Some(from) && s.attempt >= e.attempt);
        if current {
            let routes = self.routes();
            self.reroute(&mut p, &routes, &key, Some(from));
        }
    }

    /// Queues an acknowledgement (or a nack) for the event's publisher on the stream to it.
    /// Without a stream to that publisher process (it restarted, or was forgotten), a nack is
    /// delivered here again and an acknowledgement has nobody left to tell.
    pub(super) fn enqueue_settle(self: &Arc<Self>, kind: ItemKind, event: &Event, group: &str) {
        let nack = matches!(kind, ItemKind::Nack(_));
        let publisher = &event.id.publisher;
        let mut p = lock(&self.publishing);
        let stream = match p.streams.get(publisher) {
            Some(s) if s.incarnation == event.id.incarnation => Some(s.clone()),
            Some(_) => None,
            None if self.knows_process(publisher, event.id.incarnation) => {
                let dest =
                    Dest { node: publisher.clone(), incarnation: event.id.incarnation, live: true };
                self.stream_for(&mut p, &dest)
            }
            None => None,
        };
        let item = Item { kind: Some(kind) };
        let queued = Queued {
            seq: 0,
            bytes: item_bytes(&item),
            item,
            counted: false,
            queued_at: Instant::now(),
            done: None,
            nacked: nack.then(|| Box::new((event.clone(), Arc::from(group)))),
        };
        let refused = match stream {
            Some(stream) => stream.push(queued).err(),
            None => Some(Box::new(queued)),
        };
        drop(p);
        if let Some(Queued { nacked: Some(nacked), .. }) = refused.map(|q| *q) {
            let (event, group) = *nacked;
            self.requeue_locally(event, &group);
        }
    }

    /// (unacknowledged group deliveries, of which held for lack of a member, items queued in
    /// streams to other nodes).
    pub(super) fn pending_counts(&self) -> (u64, u64, u64) {
        let p = lock(&self.publishing);
        let queued = p.streams.values().filter(|s| s.to != self.me).map(|s| s.len()).sum::<usize>();
        (p.pending.len() as u64, p.held as u64, queued as u64)
    }

    /// Waits until every stream to another node is empty, or `deadline`.
    pub(super) async fn flushed(&self, deadline: Instant) -> bool {
        loop {
            let empty =
                lock(&self.publishing).streams.values().all(|s| s.to == self.me || s.is_empty());
            if empty {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes every stream (the node stopped); their tasks end.
    pub(crate) fn stop(&self) {
        self.closing.store(true, Relaxed);
        self.stopped.store(true, Relaxed);
        self.close_local();
        let streams: Vec<Arc<Stream>> =
            lock(&self.publishing).streams.drain().map(|(_, s)| s).collect();
        for s in streams {
            drop(s.close());
        }
    }

    /// Sends the stream's batches, one at a time, until it closes.
    async fn run_stream(self: Arc<Self>, stream: Arc<Stream>) {
        let mut full_backoff = FULL_BACKOFF.0;
        let mut error_backoff = ERROR_BACKOFF.0;
        // After the destination refused an event, probe with one item until it takes again,
        // rather than resend a whole batch every pause.
        let mut most = usize::MAX;
        loop {
            let (lane, first, items) = match stream.next_batch(&self, most) {
                Err(()) => return,
                Ok(None) => {
                    stream.wake.notified().await;
                    continue;
                }
                Ok(Some(b)) => b,
            };
            let n = items.len();
            let batch =
                Batch { incarnation: self.incarnation, stream: stream.id, first, items, lane };
            self.stats.batches.fetch_add(1, Relaxed);
            let reply = if stream.to == self.me {
                self.accept_batch(&self.me, batch).map_err(|(code, message)| {
                    MessagingError::Remote { peer: self.me.clone(), code, message }
                })
            } else {
                match self.call(&stream.to, EventsOp::Batch(batch)).await {
                    Ok(EventsReply::Batch(r)) => Ok(r),
                    Ok(EventsReply::Interest(_)) => Err(MessagingError::Remote {
                        peer: stream.to.clone(),
                        code: ErrorCode::BadRequest,
                        message: "answered a batch with interest".into(),
                    }),
                    Err(e) => Err(e),
                }
            };
            match reply {
                Ok(r) => {
                    error_backoff = ERROR_BACKOFF.0;
                    let accepted = (r.accepted as usize).min(n);
                    self.batch_taken(&stream, lane, first, accepted, r.returned);
                    if accepted < n {
                        // A subscriber's queue is full there: back-pressure.
                        most = 1;
                        tokio::time::sleep(full_backoff).await;
                        full_backoff = (full_backoff * 2).min(FULL_BACKOFF.1);
                    } else {
                        most = usize::MAX;
                        full_backoff = FULL_BACKOFF.0;
                    }
                }
                Err(MessagingError::Remote { code: ErrorCode::Refused, .. }) => {
                    // The destination holds a newer stream from us: this one was replaced.
                    return;
                }
                Err(MessagingError::ShuttingDown) => return,
                Err(e) => {
                    self.stats.batch_failures.fetch_add(1, Relaxed);
                    tracing::debug!(node = %self.me, to = %stream.to, error = %e, "event batch not taken; resending");
                    tokio::time::sleep(error_backoff).await;
                    error_backoff = (error_backoff * 2).min(ERROR_BACKOFF.1);
                }
            }
        }
    }

    /// The destination took the first `accepted` items of the batch starting at `first`.
    fn batch_taken(
        self: &Arc<Self>,
        stream: &Stream,
        lane: u32,
        first: u64,
        accepted: usize,
        returned: Vec<Returned>,
    ) {
        let taken = stream.taken(lane, first, accepted);
        if taken.is_empty() {
            return;
        }
        let returned: HashMap<(u32, String), bool> =
            returned.into_iter().map(|r| ((r.index, r.group), r.full)).collect();
        let routes = self.routes();
        let mut p = lock(&self.publishing);
        for (i, q) in taken.into_iter().enumerate() {
            if let Some(done) = q.done {
                let _ = done.send(Ok(()));
            }
            match q.item.kind {
                Some(ItemKind::Event(e)) => {
                    for part in e.groups {
                        let back = returned.get(&(i as u32, part.group.clone())).copied();
                        let key = (e.topic.clone(), e.seq, part.group);
                        if back == Some(true) {
                            // The group's queue there is full: retry on the next tick (to the
                            // least loaded member then), not at once.
                            p.park(&key);
                        } else if back == Some(false) {
                            self.reroute(&mut p, &routes, &key, Some(&stream.to));
                        } else if let Some(entry) = p.pending.get_mut(&key)
                            && entry.at.as_ref() == Some(&stream.to)
                            && let Some(confirm) = entry.confirm.take()
                        {
                            let _ = confirm.send(Ok(()));
                        }
                    }
                }
                Some(ItemKind::Nack(_)) if returned.contains_key(&(i as u32, String::new())) => {
                    if let Some(nacked) = q.nacked {
                        let (event, group) = *nacked;
                        self.requeue_locally(event, &group);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A wake-up registered now (while the publishing lock is held), awaited after it is released.
type Armed = Pin<Box<OwnedNotified>>;

fn armed(notify: &Arc<Notify>) -> Armed {
    let mut wait = Box::pin(notify.clone().notified_owned());
    wait.as_mut().enable();
    wait
}
