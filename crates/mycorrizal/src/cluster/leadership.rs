//! Per-subsystem leadership: `node.leadership("scheduler")`.
//!
//! The leader of a name is the live member with the highest rendezvous score for it
//! (`mycorrizal_core::placement::leader`). Every node computes it from its own membership view,
//! so nodes agree once their views agree. This is **eventually unique**: during a partition, or
//! while a failure is being detected, two nodes can each believe a different member leads.
//! Work that needs strict mutual exclusion must check the [`FencingToken`] with the resource it
//! guards (rejecting writes that carry a token other than the current one), or wait for the
//! planned consensus-backed lock.

use std::sync::Arc;

use mycorrizal_core::{NodeId, placement};
use tokio::sync::watch;

use super::membership::MembershipView;

/// Identifies one leadership term as seen by this node: the leader, the generation of the
/// leader's run, and the local membership epoch at which it was computed. A leader that
/// restarts gets a new generation and so a new token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FencingToken {
    /// The leader.
    pub leader: NodeId,
    /// The leader's generation (its start time in ms, bumped on rejoin).
    pub generation: u64,
    /// This node's membership epoch when the term was observed.
    pub epoch: u64,
}

/// Who leads a name, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leading node.
    pub node: NodeId,
    /// The term's token.
    pub token: FencingToken,
}

/// A watch over who leads one name.
#[derive(Debug, Clone)]
pub struct Leadership {
    name: Arc<str>,
    me: NodeId,
    view: watch::Receiver<Arc<MembershipView>>,
    last: Option<(NodeId, u64)>,
}

fn compute(name: &str, view: &MembershipView) -> Option<Leader> {
    let live: Vec<&NodeId> = view.live().map(|m| &m.id).collect();
    let node = placement::leader(name, live.iter().copied())?.clone();
    let generation = view.get(&node).map_or(0, |m| m.generation);
    Some(Leader {
        token: FencingToken { leader: node.clone(), generation, epoch: view.epoch },
        node,
    })
}

impl Leadership {
    pub(crate) fn new(name: &str, me: NodeId, view: watch::Receiver<Arc<MembershipView>>) -> Self {
        Leadership { name: Arc::from(name), me, view, last: None }
    }

    /// The name this watch is about.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current leader.
    pub fn current(&self) -> Option<Leader> {
        compute(&self.name, &self.view.borrow())
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.current().is_some_and(|l| l.node == self.me)
    }

    /// Waits until the leader (or its generation) differs from the one this method last
    /// returned, and returns it; the first call returns the current leader at once. `None`
    /// when the node stopped.
    pub async fn changed(&mut self) -> Option<Leader> {
        loop {
            let current = self.current();
            let key = current.as_ref().map(|l| (l.node.clone(), l.token.generation));
            if self.last.is_none() || key != self.last {
                self.last = key;
                return current;
            }
            self.view.changed().await.ok()?;
        }
    }
}
