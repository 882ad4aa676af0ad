//! The bounded queues behind local subscriptions: one per broadcast subscription, one per
//! group on this node (shared by the node's members of that group).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use mycorrizal_core::NodeId;
use tokio::{sync::Notify, time::Instant};

use super::{Event, EventId, Overflow, RecvError};
use crate::sync::lock;

/// What a broadcast subscriber receives, in stream order.
#[derive(Debug)]
enum Slot {
    Event(Event),
    Lagged(u64),
    Gap(NodeId, u64),
}

/// One broadcast subscription's queue. One reader (the subscription), many writers.
#[derive(Debug)]
pub(crate) struct BroadcastQueue {
    pub id: u64,
    capacity: usize,
    overflow: Overflow,
    state: Mutex<BroadcastState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct BroadcastState {
    slots: VecDeque<Slot>,
    /// Events in `slots` (markers do not count: each follows or precedes an event).
    events: usize,
    closed: bool,
}

impl BroadcastQueue {
    pub fn new(id: u64, capacity: usize, overflow: Overflow) -> Self {
        BroadcastQueue {
            id,
            capacity,
            overflow,
            state: Mutex::new(BroadcastState::default()),
            ready: Notify::new(),
        }
    }

    /// Whether an event can be queued without breaking the back-pressure promise: a `Lag`
    /// subscription always takes it (and drops it if full).
    pub fn has_room(&self) -> bool {
        self.overflow == Overflow::Lag || lock(&self.state).events < self.capacity
    }

    /// Queues `event`, after a gap marker if `gap` says events from its publisher were missed.
    /// Returns whether the event was dropped because the queue was full (policy `Lag`).
    pub fn push(&self, event: Event, gap: Option<u64>) -> bool {
        let mut s = lock(&self.state);
        if s.closed {
            return false;
        }
        let dropped = if s.events < self.capacity {
            if let Some(missed) = gap {
                s.slots.push_back(Slot::Gap(event.id.publisher.clone(), missed));
            }
            s.slots.push_back(Slot::Event(event));
            s.events += 1;
            false
        } else {
            // Full: the event and any gap before it are reported as one count, so a queue
            // nobody reads holds at most one marker after its events.
            let missed = 1 + gap.unwrap_or(0);
            match s.slots.back_mut() {
                Some(Slot::Lagged(n)) => *n = n.saturating_add(missed),
                _ => s.slots.push_back(Slot::Lagged(missed)),
            }
            true
        };
        drop(s);
        self.ready.notify_one();
        dropped
    }

    pub async fn recv(&self) -> Result<Event, RecvError> {
        loop {
            {
                let mut s = lock(&self.state);
                match s.slots.pop_front() {
                    Some(Slot::Event(e)) => {
                        s.events -= 1;
                        return Ok(e);
                    }
                    Some(Slot::Lagged(missed)) => return Err(RecvError::Lagged { missed }),
                    Some(Slot::Gap(publisher, missed)) => {
                        return Err(RecvError::Gap { publisher, missed });
                    }
                    None if s.closed => return Err(RecvError::Closed),
                    None => {}
                }
            }
            // One reader: a wake-up stored while we were not waiting is kept by `Notify`.
            self.ready.notified().await;
        }
    }

    pub fn try_recv(&self) -> Option<Result<Event, RecvError>> {
        let mut s = lock(&self.state);
        match s.slots.pop_front()? {
            Slot::Event(e) => {
                s.events -= 1;
                Some(Ok(e))
            }
            Slot::Lagged(missed) => Some(Err(RecvError::Lagged { missed })),
            Slot::Gap(publisher, missed) => Some(Err(RecvError::Gap { publisher, missed })),
        }
    }

    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }
}

/// A group event held on this node: queued, or handed to a member and not yet settled.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub event: Event,
    /// When it reached this node (or came back to its queue).
    pub arrived: Instant,
}

/// The queue of one group on this node, shared by the node's members of the group.
#[derive(Debug)]
pub(crate) struct GroupQueue {
    pub topic: Arc<str>,
    pub group: Arc<str>,
    capacity: usize,
    pub ack_deadline: std::time::Duration,
    state: Mutex<GroupState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct GroupState {
    queued: VecDeque<Held>,
    in_flight: HashMap<u64, (Held, Instant)>,
    /// Events queued or in flight: a publisher offering one again (to repair a lost
    /// acknowledgement) does not create a second copy.
    held: HashSet<EventId>,
    next_token: u64,
    members: usize,
    closed: bool,
}

impl GroupQueue {
    pub fn new(
        topic: Arc<str>,
        group: Arc<str>,
        capacity: usize,
        ack_deadline: std::time::Duration,
    ) -> Self {
        GroupQueue {
            topic,
            group,
            capacity,
            ack_deadline,
            state: Mutex::new(GroupState::default()),
            ready: Notify::new(),
        }
    }

    /// Whether the queue takes events: it has a member and room (queued and in-flight events
    /// together are bounded).
    pub fn accepts(&self) -> Result<(), Refusal> {
        let s = lock(&self.state);
        if s.closed || s.members == 0 {
            Err(Refusal::NoMember)
        } else if s.queued.len() + s.in_flight.len() >= self.capacity {
            Err(Refusal::Full)
        } else {
            Ok(())
        }
    }

    /// Queues `held` (callers checked [`GroupQueue::accepts`], or it is a local redelivery of
    /// an event this queue held before). Gives it back if the group has no member here.
    /// Returns `Ok(false)` if the event is already here (queued or handed to a member).
    pub fn push(&self, held: Held) -> Result<bool, Held> {
        let mut s = lock(&self.state);
        if s.closed || s.members == 0 {
            return Err(held);
        }
        if !s.held.insert(held.event.id.clone()) {
            return Ok(false);
        }
        s.queued.push_back(held);
        drop(s);
        self.ready.notify_one();
        Ok(true)
    }

    pub fn join(&self) {
        lock(&self.state).members += 1;
    }

    /// A member left. When the last one leaves, the queue closes and returns everything it
    /// held, for redelivery elsewhere.
    pub fn leave(&self) -> Vec<Held> {
        let mut s = lock(&self.state);
        s.members = s.members.saturating_sub(1);
        if s.members > 0 {
            return Vec::new();
        }
        s.closed = true;
        s.held.clear();
        let mut out: Vec<Held> = s.queued.drain(..).collect();
        let mut in_flight: Vec<(u64, (Held, Instant))> = s.in_flight.drain().collect();
        in_flight.sort_by_key(|(token, _)| *token);
        out.extend(in_flight.into_iter().map(|(_, (h, _))| h));
        drop(s);
        self.ready.notify_waiters();
        out
    }

    /// Closes the queue (node shutting down) and returns everything it held.
    pub fn close(&self) -> Vec<Held> {
        let mut s = lock(&self.state);
        s.members = 1;
        drop(s);
        self.leave()
    }

    /// The next event for a member, handed out under `token` with its deadline running.
    pub async fn recv(&self) -> Result<(u64, Event), RecvError> {
        loop {
            // Registered before the state is checked: neither an item's `notify_one` nor a
            // close's `notify_waiters` can slip between the check and the wait.
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut s = lock(&self.state);
                if s.closed {
                    return Err(RecvError::Closed);
                }
                if let Some(held) = s.queued.pop_front() {
                    let token = s.next_token;
                    s.next_token += 1;
                    let event = held.event.clone();
                    s.in_flight.insert(token, (held, Instant::now() + self.ack_deadline));
                    let more = !s.queued.is_empty();
                    drop(s);
                    if more {
                        // Pass the wake-up on: `Notify` keeps at most one.
                        self.ready.notify_one();
                    }
                    return Ok((token, event));
                }
            }
            ready.await;
        }
    }

    /// Settles the delivery `token`; `None` if it was settled already (deadline passed).
    pub fn settle(&self, token: u64) -> Option<Held> {
        let mut s = lock(&self.state);
        let (held, _) = s.in_flight.remove(&token)?;
        s.held.remove(&held.event.id);
        Some(held)
    }

    /// Takes back the deliveries whose deadline passed, and the events that waited in the
    /// queue that long without a member taking them (its members stopped receiving).
    pub fn expired(&self, now: Instant) -> Vec<Held> {
        let mut s = lock(&self.state);
        let mut tokens: Vec<u64> =
            s.in_flight.iter().filter(|(_, (_, d))| *d <= now).map(|(t, _)| *t).collect();
        tokens.sort_unstable();
        let mut out: Vec<Held> =
            tokens.into_iter().filter_map(|t| s.in_flight.remove(&t).map(|(h, _)| h)).collect();
        while s.queued.front().is_some_and(|h| h.arrived + self.ack_deadline <= now) {
            out.extend(s.queued.pop_front());
        }
        for h in &out {
            s.held.remove(&h.event.id);
        }
        out
    }
}

/// Why a group queue refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No member of the group on this node.
    NoMember,
    /// Queue full: back-pressure.
    Full,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mycorrizal_core::NodeId;

    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            id: EventId { publisher: NodeId::new("p").unwrap(), incarnation: 1, seq },
            topic: Arc::from("t"),
            payload: Bytes::new(),
            published_at_ms: 0,
            attempt: 1,
        }
    }

    #[test]
    fn a_full_lag_queue_holds_one_marker_however_many_events_and_gaps_it_drops() {
        let q = BroadcastQueue::new(1, 2, Overflow::Lag);
        assert!(!q.push(event(1), None));
        assert!(!q.push(event(2), None));
        for seq in (4..10_000).step_by(2) {
            assert!(q.push(event(seq), Some(1)));
        }
        assert_eq!(lock(&q.state).slots.len(), 3);
        assert_eq!(q.try_recv().unwrap().unwrap().id.seq, 1);
        assert_eq!(q.try_recv().unwrap().unwrap().id.seq, 2);
        // 4,998 events dropped, each after a gap of one.
        assert_eq!(q.try_recv().unwrap(), Err(RecvError::Lagged { missed: 9_996 }));
        assert!(q.try_recv().is_none());
    }
}
