//! The event bus: cluster-wide publish/subscribe with consumer groups.
//!
//! `node.events()` gives an [`Events`] handle:
//! - [`Events::publish`] returns once every node with subscribers of the topic has accepted the
//!   event (broadcast subscribers) and one member of every group has taken it, or says which
//!   did not ([`PublishError::Unconfirmed`]);
//! - [`Events::subscribe`]: every subscriber on every node receives every event published
//!   after `subscribe` returned, in each publisher's order; an event it cannot receive is
//!   reported ([`RecvError::Lagged`] at once, [`RecvError::Gap`] when the publisher's next
//!   event arrives), never silently skipped;
//! - [`Events::subscribe_group`]: each event goes to one member of the group; a member
//!   acknowledges it ([`Delivery::ack`]); an event not acknowledged within the group's
//!   deadline, given back ([`Delivery::nack`], or dropped unacknowledged), or whose member's
//!   node died is delivered again to another member, with [`Event::attempt`] counting.
//!   At least once: a member may see an event twice, never zero times while the group has a
//!   member and the publisher or the member's node survives.
//!
//! Subscriptions are exchanged between nodes (on the Events channel, at once on change and
//! every `interest_interval`), so a publisher sends only to nodes with subscribers. Every
//! buffer is bounded; see [`Overflow`] for what a full subscriber does to publishers. The
//! protocol is in `docs/PROTOCOL.md`.
//!
//! ```no_run
//! # async fn demo(node: mycorrizal::cluster::Node) -> Result<(), Box<dyn std::error::Error>> {
//! let events = node.events();
//! let mut audit = events.subscribe("orders").await?;
//! let mut billing = events.subscribe_group("orders", "billing").await?;
//! events.publish("orders", &b"order 42 placed"[..]).await?;
//! let seen = audit.recv().await?;
//! assert_eq!(&seen.payload[..], b"order 42 placed");
//! let job = billing.recv().await?;
//! // ... charge the customer, then:
//! job.ack();
//! # Ok(()) }
//! ```

mod config;
mod error;
mod queues;
mod runtime;
mod stream;

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
pub use config::EventsConfig;
pub use error::{EventsError, PublishError, Reason, RecvError, Target, Unconfirmed};
use mycorrizal_core::NodeId;
use queues::{BroadcastQueue, GroupQueue};
pub(crate) use runtime::{EventsDispatch, Runtime};

/// Who published an event and its place in that publisher's sequence for the topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// The publishing node.
    pub publisher: NodeId,
    /// The publisher's incarnation (a restarted node numbers its events anew).
    pub incarnation: u64,
    /// Sequence number on the topic, from 1, per publisher incarnation: events from one
    /// publisher on one topic arrive in this order.
    pub seq: u64,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:016x}#{}", self.publisher, self.incarnation, self.seq)
    }
}

/// An event as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its identity (the same on every subscriber and every redelivery).
    pub id: EventId,
    /// The topic.
    pub topic: Arc<str>,
    /// The payload.
    pub payload: Bytes,
    /// When it was published: ms since the Unix epoch on the publisher's clock.
    pub published_at_ms: u64,
    /// Delivery attempt for a group (1 for the first delivery; always 1 for broadcast).
    pub attempt: u32,
}

impl Event {
    /// The payload decoded from JSON (see [`Events::publish_json`]).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, EventsError> {
        serde_json::from_slice(&self.payload).map_err(|e| EventsError::Codec(e.to_string()))
    }
}

/// What a broadcast subscriber whose queue is full does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The node refuses events for the topic until the subscriber catches up; publishers wait
    /// (up to their publish timeout, then the event is reported unconfirmed and the
    /// subscriber sees a gap). The default: nothing is dropped while publishers can wait.
    #[default]
    Backpressure,
    /// The subscriber's queue drops new events and `recv` reports [`RecvError::Lagged`] with
    /// their count at that point; publishers are never slowed by this subscriber.
    Lag,
}

/// Options of a broadcast subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Events queued for this subscriber. Default 1,024; 1 to 1,048,576.
    pub capacity: usize,
    /// What happens when the queue is full. Default [`Overflow::Backpressure`].
    pub overflow: Overflow,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { capacity: 1024, overflow: Overflow::Backpressure }
    }
}

/// Options of a group membership. The first member of a group on a node sets them for the
/// node's queue of that group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// Events queued on this node for the group, and handed to members but not yet
    /// acknowledged, together. When full, publishers wait (back-pressure). Default 1,024;
    /// 1 to 1,048,576.
    pub capacity: usize,
    /// How long a member has to acknowledge an event before it is delivered again
    /// elsewhere. Default 30 s; 10 ms to 1 hour.
    pub ack_deadline: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions { capacity: 1024, ack_deadline: Duration::from_secs(30) }
    }
}

/// Counters of one node's event bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventsStats {
    /// Events published here.
    pub published: u64,
    /// Publishes that returned `Unconfirmed`.
    pub unconfirmed: u64,
    /// Events queued for local subscribers (each subscription and group counts once).
    pub delivered: u64,
    /// Group deliveries sent again (after a nack, a missed deadline, a member's node leaving,
    /// or no member there).
    pub redelivered: u64,
    /// Group deliveries acknowledged by members here.
    pub acked: u64,
    /// Group deliveries given back by members here (including missed deadlines).
    pub nacked: u64,
    /// Acknowledgement deadlines missed by members here.
    pub deadlines_missed: u64,
    /// Events dropped by `Lag` subscribers here (each reported as `Lagged`).
    pub lagged: u64,
    /// Events from other publishers that never arrived here (each reported as `Gap`).
    pub gaps: u64,
    /// Resent stream items that had already been applied (skipped, not delivered twice).
    pub duplicates: u64,
    /// Group events lost here: their publisher was gone and the group had no member here.
    pub abandoned: u64,
    /// Batches sent.
    pub batches: u64,
    /// Batches that failed and were resent.
    pub batch_failures: u64,
    /// Stream items (events, acknowledgements) received from other nodes.
    pub received: u64,
    /// Group deliveries offered again to their holder after `reoffer_interval` of silence.
    pub reoffered: u64,
    /// Group deliveries published here and not yet acknowledged.
    pub unacked: u64,
    /// Of those, held because no member could take them.
    pub held: u64,
    /// Items (events, redeliveries, acknowledgements) queued in streams to other nodes, not
    /// yet taken by them.
    pub queued: u64,
}

/// Checks a topic or group name.
fn check(what: &'static str, name: &str) -> Result<(), EventsError> {
    mycorrizal_core::events::check_name(name).map_err(|source| EventsError::InvalidName {
        what,
        name: name.to_owned(),
        source,
    })
}

fn check_capacity(capacity: usize) -> Result<(), EventsError> {
    if !(1..=1 << 20).contains(&capacity) {
        return Err(EventsError::InvalidOption {
            field: "capacity",
            reason: format!("{capacity} is outside 1..=1048576"),
        });
    }
    Ok(())
}

/// The node's event bus. Cloning is cheap.
#[derive(Clone)]
pub struct Events {
    rt: Arc<Runtime>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("node", &self.rt.me).finish_non_exhaustive()
    }
}

impl Events {
    pub(crate) fn new(rt: Arc<Runtime>) -> Self {
        Events { rt }
    }

    /// Publishes `payload` on `topic`. Returns once every node with broadcast subscribers of
    /// the topic has queued it for them and one member of each of the topic's groups has
    /// taken it (a group member still has to acknowledge it; redelivery is the bus's job from
    /// here). Otherwise, after `events.publish_timeout`, returns
    /// [`PublishError::Unconfirmed`] naming each target that did not confirm and why; the
    /// others have it. Waits while queues toward subscribers are full (back-pressure).
    ///
    /// Events from one publisher on one topic reach every subscriber in publish order: to
    /// publish in a defined order, publish from one task, awaiting each call (concurrent
    /// calls are ordered by whichever is numbered first).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<EventId, PublishError> {
        use tracing::Instrument as _;
        let span = tracing::debug_span!(
            "events.publish",
            node = %self.rt.me,
            topic = %topic,
            request_id = crate::trace::request_id()
        );
        self.rt.publish(topic, payload.into()).instrument(span).await
    }

    /// Publishes `value` encoded as JSON (read it with [`Event::json`]).
    pub async fn publish_json<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<EventId, PublishError> {
        let bytes = serde_json::to_vec(value).map_err(|e| EventsError::Codec(e.to_string()))?;
        self.publish(topic, bytes).await
    }

    /// Subscribes to every event on `topic` with default options. Returns once every live
    /// member has learnt of the subscription (or `publish_timeout` passed; members that did
    /// not answer learn it in the background and their events before that are not
    /// delivered). Dropping the subscription unsubscribes.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, EventsError> {
        self.subscribe_with(topic, SubscribeOptions::default()).await
    }

    /// [`Events::subscribe`] with options.
    pub async fn subscribe_with(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, EventsError> {
        check("topic", topic)?;
        check_capacity(options.capacity)?;
        let (topic, queue) = self.rt.add_broadcast(topic, options)?;
        self.rt.interest_changed().await;
        Ok(Subscription { topic, queue, rt: Arc::downgrade(&self.rt) })
    }

    /// Joins `group` on `topic` with default options: each event on the topic goes to one
    /// member of the group cluster-wide. Returns like [`Events::subscribe`]. Dropping the
    /// membership leaves the group; events this node held for the group go to other members.
    pub async fn subscribe_group(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<GroupSubscription, EventsError> {
        self.subscribe_group_with(topic, group, GroupOptions::default()).await
    }

    /// [`Events::subscribe_group`] with options.
    pub async fn subscribe_group_with(
        &self,
        topic: &str,
        group: &str,
        options: GroupOptions,
    ) -> Result<GroupSubscription, EventsError> {
        check("topic", topic)?;
        check("group", group)?;
        check_capacity(options.capacity)?;
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&options.ack_deadline)
        {
            return Err(EventsError::InvalidOption {
                field: "ack_deadline",
                reason: format!("{:?} is outside 10 ms..=1 h", options.ack_deadline),
            });
        }
        let queue = self.rt.join_group(topic, group, options)?;
        self.rt.interest_changed().await;
        Ok(GroupSubscription { queue, rt: Arc::downgrade(&self.rt) })
    }

    /// This node's counters.
    pub fn stats(&self) -> EventsStats {
        self.rt.stats()
    }
}

/// A broadcast subscription: every event on its topic. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    queue: Arc<BroadcastQueue>,
    rt: Weak<Runtime>,
}

impl Subscription {
    /// The next event, or what happened instead ([`RecvError::Lagged`], [`RecvError::Gap`];
    /// the subscription goes on after them). [`RecvError::Closed`] once the node stopped.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        self.queue.recv().await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Event, RecvError>> {
        self.queue.try_recv()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.upgrade() {
            rt.remove_broadcast(&self.topic, self.queue.id);
        }
    }
}

/// A member of a consumer group. Dropping it leaves the group.
#[derive(Debug)]
pub struct GroupSubscription {
    queue: Arc<GroupQueue>,
    rt: Weak<Runtime>,
}

impl GroupSubscription {
    /// The next event for this member; acknowledge it with [`Delivery::ack`] within the
    /// group's deadline. [`RecvError::Closed`] once the node stopped.
    pub async fn recv(&mut self) -> Result<Delivery, RecvError> {
        let (token, event) = self.queue.recv().await?;
        Ok(Delivery {
            event,
            token,
            queue: self.queue.clone(),
            rt: self.rt.clone(),
            settled: false,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.queue.topic
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.queue.group
    }
}

impl Drop for GroupSubscription {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.upgrade() {
            rt.leave_group(&self.queue);
        }
    }
}

/// A group event handed to one member. Acknowledge it when processed; dropping it without
/// acknowledging gives it back for redelivery.
#[derive(Debug)]
pub struct Delivery {
    /// The event (its `attempt` counts deliveries to this group).
    pub event: Event,
    token: u64,
    queue: Arc<GroupQueue>,
    rt: Weak<Runtime>,
    settled: bool,
}

impl Delivery {
    /// Processed: the publisher stops tracking it. An acknowledgement after the deadline
    /// passed still counts, but the event may already have been delivered again.
    pub fn ack(mut self) {
        self.settle(true);
    }

    /// Gives it back: it is delivered again, to another member when there is one.
    pub fn nack(mut self) {
        self.settle(false);
    }

    fn settle(&mut self, ack: bool) {
        self.settled = true;
        let held = self.queue.settle(self.token);
        let Some(rt) = self.rt.upgrade() else { return };
        // After the deadline passed the event was already given back: a late nack changes
        // nothing, a late ack still tells the publisher it was processed.
        if held.is_some() || ack {
            rt.settle_out(&self.event, &self.queue.group, ack);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(false);
        }
    }
}
