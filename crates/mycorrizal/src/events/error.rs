//! Errors of the event bus.

use mycorrizal_core::{NodeId, events::NameError};

use super::EventId;

/// Why an events call was refused before anything was sent or registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    /// A topic or group name was refused.
    #[error("invalid {what} name {name:?}: {source}")]
    InvalidName {
        /// `topic` or `group`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why.
        source: NameError,
    },
    /// The payload is larger than `events.max_payload`.
    #[error("payload is {len} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// Its size.
        len: usize,
        /// `events.max_payload`.
        max: usize,
    },
    /// A subscription option is out of bounds.
    #[error("invalid subscription option {field}: {reason}")]
    InvalidOption {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A typed payload could not be encoded or decoded as JSON.
    #[error("payload codec: {0}")]
    Codec(String),
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Why `publish` did not confirm an event everywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Refused before anything was sent.
    #[error(transparent)]
    Refused(#[from] EventsError),
    /// Some targets did not confirm the event within `events.publish_timeout`. Every other
    /// target accepted it. Each entry says whether the event may still arrive there.
    #[error("event {id} not confirmed by {}", describe(.missing))]
    Unconfirmed {
        /// The event (it was published: targets that accepted it deliver it).
        id: EventId,
        /// Who did not confirm, and why.
        missing: Vec<Unconfirmed>,
    },
}

fn describe(missing: &[Unconfirmed]) -> String {
    missing.iter().map(|m| format!("{} ({})", m.target, m.reason)).collect::<Vec<_>>().join(", ")
}

/// One target that did not confirm an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The node (for its broadcast subscribers) or the group.
    pub target: Target,
    /// Why.
    pub reason: Reason,
}

/// What a publish must reach: every node with broadcast subscribers, and one member of every
/// group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The broadcast subscribers on this node.
    Node(NodeId),
    /// One member of this group.
    Group(String),
    /// Every other node: this node has not joined its cluster yet (it has seeds or discovery
    /// but has seen no other member), so it cannot know who subscribes elsewhere.
    Cluster,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node {n}"),
            Target::Group(g) => write!(f, "group {g}"),
            Target::Cluster => f.write_str("the rest of the cluster (not joined yet)"),
        }
    }
}

/// Why a target did not confirm an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No answer in time. The event stays queued for the target and may still be delivered,
    /// in order.
    Timeout,
    /// The node left the membership (or rejoined as a new incarnation) before accepting it.
    /// Not delivered there; its subscribers see a gap.
    Down,
    /// The node has not taken events for longer than the publish timeout (a stuck subscriber
    /// with back-pressure, or an unreachable node not yet declared down): the event is queued
    /// for it without waiting and arrives, in order, if the node recovers before its queue
    /// fills.
    Stalled,
    /// The queue toward the node is full and not draining (or stayed full until the
    /// deadline): the event was not sent there, and its subscribers will be told of the gap.
    Full,
    /// The node's subscriptions are not known yet (it joined recently and could not be asked
    /// in time): the event was not sent there.
    InterestUnknown,
    /// No live member of the group could take it yet (none is live, or every member's node
    /// is not taking events). It is kept and delivered when a member can take it.
    Held,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Timeout => "no answer in time; may still arrive",
            Reason::Down => "left before accepting it",
            Reason::Stalled => "not taking events; queued for it",
            Reason::Full => "queue full; not sent",
            Reason::InterestUnknown => "subscriptions unknown; not sent",
            Reason::Held => "no member could take it yet; held for delivery",
        })
    }
}

/// What a subscription's `recv` reports instead of an event. After `Lagged` and `Gap` the
/// subscription goes on. A `Gap` is noticed when the publisher's next event arrives: events
/// missed at the very end of a publisher's life (or of an incarnation) are not announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This subscription's queue was full (overflow policy `Lag`): `missed` events were
    /// dropped here, at this point of the stream.
    #[error("subscriber lagged: {missed} events dropped")]
    Lagged {
        /// How many.
        missed: u64,
    },
    /// `missed` events from `publisher` never reached this node (it was unreachable or
    /// considered down, or the queue toward it stayed full).
    #[error("{missed} events from {publisher} were not received")]
    Gap {
        /// The publisher.
        publisher: NodeId,
        /// How many.
        missed: u64,
    },
    /// The node is shutting down; no more events.
    #[error("the event bus stopped")]
    Closed,
}
