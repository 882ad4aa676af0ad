//! Messages of the Events channel: subscription interest, and batches of a publisher's stream.
//!
//! Every request is one [`EventsRequest`]; a success is answered with one [`EventsResponse`],
//! a refusal with an `ErrorReply` frame. Names are checked with
//! [`check_name`](crate::events::check_name) by the receiver before anything is queued
//! ([`EventsRequest::check`]).

use bytes::Bytes;

use crate::events::check_name;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 4096;
/// Most topics one node may declare interest in.
pub const MAX_TOPICS: usize = 4096;
/// Most groups per topic one node may declare.
pub const MAX_GROUPS: usize = 256;
/// Most bytes of topic and group names in one node's interest (well under a message's limit).
pub const MAX_INTEREST_BYTES: usize = 1024 * 1024;
/// Most members one interest message may list.
pub const MAX_LISTED_MEMBERS: usize = 4096;

/// One request on the Events channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventsRequest {
    /// What is asked.
    #[prost(oneof = "EventsOp", tags = "1, 2")]
    pub op: Option<EventsOp>,
}

/// The operations of the Events channel.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventsOp {
    /// "Here is what I subscribe to; what do you?" Answered with the receiver's interest.
    #[prost(message, tag = "1")]
    Interest(WireInterest),
    /// Items of the sender's stream to the receiver. Answered with a [`BatchReply`].
    #[prost(message, tag = "2")]
    Batch(Batch),
}

/// The answer to an [`EventsRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventsResponse {
    /// The answer.
    #[prost(oneof = "EventsReply", tags = "1, 2")]
    pub reply: Option<EventsReply>,
}

/// The answers of the Events channel.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventsReply {
    /// The receiver's interest.
    #[prost(message, tag = "1")]
    Interest(WireInterest),
    /// What the receiver took of a batch.
    #[prost(message, tag = "2")]
    Batch(BatchReply),
}

/// Every topic a node subscribes to, as of `version` (which increases with every change
/// within one incarnation).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WireInterest {
    /// The node's events incarnation (one per process).
    #[prost(fixed64, tag = "1")]
    pub incarnation: u64,
    /// Increases with every change.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// The topics.
    #[prost(message, repeated, tag = "3")]
    pub topics: Vec<TopicInterest>,
    /// The node ids of the live members the sender sees: a node whose own view is still
    /// partial learns whom it has not heard of yet (their subscriptions are unknown to it).
    #[prost(string, repeated, tag = "4")]
    pub members: Vec<String>,
}

/// One topic a node subscribes to.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicInterest {
    /// The topic.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// At least one broadcast subscriber.
    #[prost(bool, tag = "2")]
    pub broadcast: bool,
    /// Groups with at least one member on the node.
    #[prost(string, repeated, tag = "3")]
    pub groups: Vec<String>,
}

/// Consecutive items of one stream, numbered from `first`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// The sender's events incarnation.
    #[prost(fixed64, tag = "1")]
    pub incarnation: u64,
    /// The stream, increasing within the incarnation.
    #[prost(uint64, tag = "2")]
    pub stream: u64,
    /// Number of the first item.
    #[prost(uint64, tag = "3")]
    pub first: u64,
    /// The items.
    #[prost(message, repeated, tag = "4")]
    pub items: Vec<Item>,
    /// The lane, numbered on its own: [`EVENTS_LANE`] carries events, [`SETTLE_LANE`]
    /// acknowledgements and nacks (so they never wait behind an event a slow subscriber
    /// refuses).
    #[prost(uint32, tag = "5")]
    pub lane: u32,
}

/// The lane of events.
pub const EVENTS_LANE: u32 = 0;
/// The lane of acknowledgements and nacks.
pub const SETTLE_LANE: u32 = 1;

/// One item of a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    /// What it is.
    #[prost(oneof = "ItemKind", tags = "1, 2, 3")]
    pub kind: Option<ItemKind>,
}

/// The kinds of stream items.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ItemKind {
    /// An event published by the sender.
    #[prost(message, tag = "1")]
    Event(WireEvent),
    /// A group member on the sender processed an event the receiver published.
    #[prost(message, tag = "2")]
    Ack(Settle),
    /// A group member on the sender gave an event back (deadline passed, refused, or the
    /// member left): the receiver, its publisher, delivers it again.
    #[prost(message, tag = "3")]
    Nack(Settle),
}

/// An event, for the receiver's broadcast subscribers and for some of its groups.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEvent {
    /// The topic.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// The publisher's sequence number on this topic (from 1, per incarnation).
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// The payload.
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    /// For every broadcast subscriber of the topic on the receiver.
    #[prost(bool, tag = "4")]
    pub broadcast: bool,
    /// For one member of each of these groups on the receiver.
    #[prost(message, repeated, tag = "5")]
    pub groups: Vec<GroupPart>,
    /// When it was published, ms since the Unix epoch (publisher's clock).
    #[prost(uint64, tag = "6")]
    pub published_at_ms: u64,
}

/// One group's share of an event.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupPart {
    /// The group.
    #[prost(string, tag = "1")]
    pub group: String,
    /// Delivery attempt, from 1.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

/// Names one group delivery of an event the receiver published.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Settle {
    /// The publisher's incarnation the event belongs to.
    #[prost(fixed64, tag = "1")]
    pub incarnation: u64,
    /// The topic.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// The topic sequence number.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// The group.
    #[prost(string, tag = "4")]
    pub group: String,
    /// The attempt that is settled.
    #[prost(uint32, tag = "5")]
    pub attempt: u32,
}

/// What the receiver took of a batch: the first `accepted` items (resent items it had already
/// applied count as taken). It stops early when a subscriber's queue is full; the sender
/// resends the rest later.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BatchReply {
    /// Items taken from the front.
    #[prost(uint32, tag = "1")]
    pub accepted: u32,
    /// Parts of taken items the receiver handed back.
    #[prost(message, repeated, tag = "2")]
    pub returned: Vec<Returned>,
}

/// A part of a taken item handed back: a group share for a group with no member on the
/// receiver, or whose queue there is full (the publisher delivers it elsewhere or later), or a
/// `Nack` for an incarnation of the receiver that no longer exists (the sender redelivers it
/// among its own members).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Returned {
    /// Index of the item in the batch.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The group of the share handed back; empty for a `Nack`.
    #[prost(string, tag = "2")]
    pub group: String,
    /// The group has members there but its queue is full (retry later); otherwise it has none.
    #[prost(bool, tag = "3")]
    pub full: bool,
}

impl EventsRequest {
    /// Checks the bounds and names of a decoded request: a malformed one is refused before
    /// anything is queued. The payload size is bounded by the frame layer.
    pub fn check(&self) -> bool {
        match &self.op {
            None => false,
            Some(EventsOp::Interest(i)) => i.check(),
            Some(EventsOp::Batch(b)) => {
                let settle =
                    |i: &Item| matches!(i.kind, Some(ItemKind::Ack(_) | ItemKind::Nack(_)));
                let lane_ok = match b.lane {
                    EVENTS_LANE => !b.items.iter().any(settle),
                    SETTLE_LANE => b.items.iter().all(settle),
                    _ => false,
                };
                !b.items.is_empty()
                    && b.items.len() <= MAX_BATCH_ITEMS
                    && b.first >= 1
                    && lane_ok
                    && b.items.iter().all(Item::check)
            }
        }
    }
}

impl WireInterest {
    /// Bounds and names are valid.
    pub fn check(&self) -> bool {
        let bytes: usize = self
            .topics
            .iter()
            .map(|t| t.topic.len() + 8 + t.groups.iter().map(|g| g.len() + 4).sum::<usize>())
            .sum();
        self.topics.len() <= MAX_TOPICS
            && bytes <= MAX_INTEREST_BYTES
            && self.members.len() <= MAX_LISTED_MEMBERS
            && self.members.iter().all(|m| crate::NodeId::new(m.as_str()).is_ok())
            && self.topics.iter().all(|t| {
                check_name(&t.topic).is_ok()
                    && t.groups.len() <= MAX_GROUPS
                    && t.groups.iter().all(|g| check_name(g).is_ok())
            })
    }
}

impl Item {
    fn check(&self) -> bool {
        match &self.kind {
            None => false,
            Some(ItemKind::Event(e)) => {
                check_name(&e.topic).is_ok()
                    && e.seq >= 1
                    && e.groups.len() <= MAX_GROUPS
                    && e.groups.iter().all(|g| check_name(&g.group).is_ok() && g.attempt >= 1)
            }
            Some(ItemKind::Ack(s) | ItemKind::Nack(s)) => {
                check_name(&s.topic).is_ok() && check_name(&s.group).is_ok() && s.seq >= 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn event(topic: &str, seq: u64) -> Item {
        Item {
            kind: Some(ItemKind::Event(WireEvent {
                topic: topic.into(),
                seq,
                payload: Bytes::from_static(b"x"),
                broadcast: true,
                groups: vec![GroupPart { group: "billing".into(), attempt: 1 }],
                published_at_ms: 1,
            })),
        }
    }

    #[test]
    fn a_batch_round_trips_and_is_checked() {
        let req = EventsRequest {
            op: Some(EventsOp::Batch(Batch {
                incarnation: 9,
                stream: 1,
                first: 1,
                items: vec![event("orders", 1), event("orders", 2)],
                lane: EVENTS_LANE,
            })),
        };
        let back = EventsRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
        assert!(back.check());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let batch = |items, first| EventsRequest {
            op: Some(EventsOp::Batch(Batch { incarnation: 1, stream: 1, first, items, lane: 0 })),
        };
        assert!(!EventsRequest { op: None }.check());
        assert!(!batch(vec![], 1).check());
        assert!(!batch(vec![event("orders", 1)], 0).check());
        assert!(!batch(vec![event("bad topic", 1)], 1).check());
        assert!(!batch(vec![event("orders", 0)], 1).check());
        assert!(!batch(vec![Item { kind: None }], 1).check());
        // Events on the settle lane, or an unknown lane, are refused.
        let on_lane = |lane| EventsRequest {
            op: Some(EventsOp::Batch(Batch {
                incarnation: 1,
                stream: 1,
                first: 1,
                items: vec![event("orders", 1)],
                lane,
            })),
        };
        assert!(on_lane(EVENTS_LANE).check());
        assert!(!on_lane(SETTLE_LANE).check());
        assert!(!on_lane(7).check());
        assert!(!batch(vec![event("orders", 1); MAX_BATCH_ITEMS + 1], 1).check());
        let interest = WireInterest {
            incarnation: 1,
            version: 1,
            topics: vec![TopicInterest { topic: String::new(), broadcast: true, groups: vec![] }],
            members: vec![],
        };
        assert!(!EventsRequest { op: Some(EventsOp::Interest(interest)) }.check());
        // Garbage does not decode into something that passes.
        if let Ok(r) = EventsRequest::decode(&b"\x12\x03\x08\x01\x10"[..]) {
            assert!(!r.check());
        }
    }
}
