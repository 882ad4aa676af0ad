//! The membership as placement sees it: who is live, who is known.

use mycorrizal_core::{NodeId, placement};

use crate::cluster::{MemberState, MembershipView};

/// A snapshot of the members placement works with. `live` and `known` are sorted and always
/// contain this node: a node serves its own replica even before membership lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ring {
    /// Bumped whenever `live` or `known` changes.
    pub generation: u64,
    pub me: NodeId,
    /// Alive or suspect members.
    pub live: Vec<NodeId>,
    /// Every member that has not left: live and down. The home replicas of a key are computed
    /// over these; a down home replica gets hints.
    pub known: Vec<NodeId>,
}

impl Ring {
    pub fn alone(me: NodeId) -> Ring {
        Ring { generation: 0, live: vec![me.clone()], known: vec![me.clone()], me }
    }

    /// The ring for `view`; `None` if it places keys exactly like `self`.
    pub fn next(&self, view: &MembershipView) -> Option<Ring> {
        let mut live: Vec<NodeId> = view.live().map(|m| m.id.clone()).collect();
        let mut known: Vec<NodeId> = view
            .members
            .iter()
            .filter(|m| m.state != MemberState::Left)
            .map(|m| m.id.clone())
            .collect();
        for set in [&mut live, &mut known] {
            if !set.contains(&self.me) {
                set.push(self.me.clone());
            }
            set.sort();
            set.dedup();
        }
        if live == self.live && known == self.known {
            return None;
        }
        Some(Ring { generation: self.generation + 1, me: self.me.clone(), live, known })
    }

    /// The live owners of a key: the top `rf` live members, best first.
    pub fn owners(&self, key_hash: u64, rf: usize) -> Vec<NodeId> {
        placement::owners_of_hash(key_hash, &self.live, rf).into_iter().cloned().collect()
    }

    /// The home owners of a key: the top `rf` members that have not left, live or not.
    pub fn home(&self, key_hash: u64, rf: usize) -> Vec<NodeId> {
        placement::owners_of_hash(key_hash, &self.known, rf).into_iter().cloned().collect()
    }

    /// Whether this node is a live owner of the key.
    pub fn is_mine(&self, key_hash: u64, rf: usize) -> bool {
        rf >= self.live.len() || placement::is_owner(key_hash, &self.me, &self.live, rf)
    }

    /// Whether `a` and `b` both own the key among the live members.
    pub fn both_own(&self, key_hash: u64, rf: usize, a: &NodeId, b: &NodeId) -> bool {
        rf >= self.live.len()
            || (placement::is_owner(key_hash, a, &self.live, rf)
                && placement::is_owner(key_hash, b, &self.live, rf))
    }

    /// Copies a write must reach: the replication factor, or every member that has not left
    /// when there are fewer.
    pub fn effective_rf(&self, rf: usize) -> usize {
        rf.min(self.known.len()).max(1)
    }

    pub fn is_live(&self, id: &NodeId) -> bool {
        self.live.binary_search(id).is_ok()
    }
}
