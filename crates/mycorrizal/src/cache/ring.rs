//! The membership as placement sees it: who is live, who is known.

use std::{
    cell::RefCell,
    sync::{
        Arc, RwLock,
        atomic::{
            AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
};

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
    /// This node has seen another member, or it is a single-node cluster. Until then it does
    /// not know how many members there are (see [`Ring::effective_rf`]).
    pub joined: bool,
}

impl Ring {
    /// The ring of a node that knows only itself; `expects_peers`: it has seeds or discovery.
    pub fn alone(me: NodeId, expects_peers: bool) -> Ring {
        Ring {
            generation: 0,
            live: vec![me.clone()],
            known: vec![me.clone()],
            me,
            joined: !expects_peers,
        }
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
        let joined = self.joined || known.len() > 1;
        if live == self.live && known == self.known && joined == self.joined {
            return None;
        }
        Some(Ring { generation: self.generation + 1, me: self.me.clone(), live, known, joined })
    }

    /// The live owners of a key: the top `rf` live members, best first.
    pub fn owners(&self, key_hash: u64, rf: usize) -> Vec<NodeId> {
        placement::owners_of_hash(key_hash, &self.live, rf).into_iter().cloned().collect()
    }

    /// The home owners of a key: the top `rf` members that have not left, live or not.
    pub fn home(&self, key_hash: u64, rf: usize) -> Vec<NodeId> {
        placement::owners_of_hash(key_hash, &self.known, rf).into_iter().cloned().collect()
    }

    /// Whether `node` is a live owner of the key.
    pub fn owns(&self, key_hash: u64, rf: usize, node: &NodeId) -> bool {
        rf >= self.live.len() || placement::is_owner(key_hash, node, &self.live, rf)
    }

    /// Whether this node is a live owner of the key.
    pub fn is_mine(&self, key_hash: u64, rf: usize) -> bool {
        self.owns(key_hash, rf, &self.me)
    }

    /// Whether `a` and `b` both own the key among the live members.
    pub fn both_own(&self, key_hash: u64, rf: usize, a: &NodeId, b: &NodeId) -> bool {
        self.owns(key_hash, rf, a) && self.owns(key_hash, rf, b)
    }

    /// Copies a write must reach: the replication factor, or every member that has not left
    /// when there are fewer.
    ///
    /// A node that has not joined yet counts the full factor: it cannot tell a one-node
    /// cluster from a cluster it has not reached. Found by `pulse chaos`: a node whose clock
    /// was beyond the drift never joined (every peer refused its datagrams), took itself for
    /// the whole cluster and acknowledged writes at Quorum and All alone; killed, it lost them.
    pub fn effective_rf(&self, rf: usize) -> usize {
        if !self.joined {
            return rf.max(1);
        }
        rf.min(self.known.len()).max(1)
    }

    pub fn is_live(&self, id: &NodeId) -> bool {
        self.live.binary_search(id).is_ok()
    }
}

/// The current ring, readable on the hot path without writing to a shared cache line. Each
/// thread keeps the last ring it read with the cell's version; replacing the ring bumps the
/// version, and a thread whose copy is older reads the new one under the lock. A local get
/// then costs two plain loads here instead of a lock and a reference count taken and released
/// (four atomic read-modify-writes on lines every core shares).
///
/// A thread keeps its last ring alive until it reads another cell's or a newer one: a few
/// hundred bytes per thread.
pub(crate) struct RingCell {
    /// Tells cells (nodes) in one process apart.
    id: u64,
    version: AtomicU64,
    /// The current ring's generation and live-member count in one word ([`RingCell::shape`]).
    shape: AtomicU64,
    current: RwLock<Arc<Ring>>,
}

/// What a local read needs to know of the ring when every node holds every key: read with
/// one load, no thread-local and no hash (see [`RingCell::shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The ring's generation.
    pub generation: u64,
    /// Its live members, saturating at `u16::MAX` (far above `MAX_REPLICAS`, so `rf >= live`
    /// stays exact).
    pub live: usize,
}

impl Shape {
    fn pack(ring: &Ring) -> u64 {
        (ring.generation << 16) | ring.live.len().min(u16::MAX as usize) as u64
    }

    fn unpack(word: u64) -> Shape {
        Shape { generation: word >> 16, live: (word & u64::from(u16::MAX)) as usize }
    }
}

thread_local! {
    /// (cell id, version, ring) of the last ring this thread read.
    static LAST: RefCell<Option<(u64, u64, Arc<Ring>)>> = const { RefCell::new(None) };
}

impl RingCell {
    pub fn new(ring: Ring) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        RingCell {
            id: NEXT_ID.fetch_add(1, Relaxed),
            version: AtomicU64::new(0),
            shape: AtomicU64::new(Shape::pack(&ring)),
            current: RwLock::new(Arc::new(ring)),
        }
    }

    /// The current ring, to keep (across `await`s).
    pub fn load(&self) -> Arc<Ring> {
        crate::sync::read(&self.current).clone()
    }

    /// The current ring's generation and live-member count, read together (one word: a
    /// generation has 48 bits, far beyond what membership changes reach).
    #[inline]
    pub fn shape(&self) -> Shape {
        Shape::unpack(self.shape.load(Acquire))
    }

    /// Runs `f` on the current ring (or the one replaced a moment ago).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&Ring) -> R) -> R {
        let version = self.version.load(Acquire);
        LAST.with(|last| {
            if let Ok(last) = last.try_borrow()
                && let Some((id, v, ring)) = &*last
                && *id == self.id
                && *v == version
            {
                return f(ring);
            }
            let ring = self.load();
            // Busy only if `f` reads a ring itself: then this read is just not remembered.
            if let Ok(mut slot) = last.try_borrow_mut() {
                *slot = Some((self.id, version, ring.clone()));
            }
            f(&ring)
        })
    }

    /// Replaces the ring with `next(current)` when that returns one; returns the new ring.
    pub fn update(&self, next: impl FnOnce(&Ring) -> Option<Ring>) -> Option<Arc<Ring>> {
        let mut current = crate::sync::write(&self.current);
        let ring = Arc::new(next(&current)?);
        *current = ring.clone();
        self.shape.store(Shape::pack(&ring), Release);
        self.version.fetch_add(1, Release);
        Some(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(me: &str, generation: u64) -> Ring {
        let mut r = Ring::alone(NodeId::new(me).unwrap(), false);
        r.generation = generation;
        r
    }

    #[test]
    fn a_thread_sees_a_replaced_ring_at_its_next_read() {
        let cell = RingCell::new(ring("a", 1));
        assert_eq!(cell.with(|r| r.generation), 1);
        assert_eq!(cell.with(|r| r.generation), 1, "from the thread's copy");
        assert!(cell.update(|_| None).is_none(), "no change, no new version");
        cell.update(|r| Some(ring("a", r.generation + 1))).unwrap();
        assert_eq!(cell.with(|r| r.generation), 2);
        assert_eq!(cell.load().generation, 2);
        assert_eq!(cell.shape(), Shape { generation: 2, live: cell.load().live.len() });
        // Another thread reads the current ring too.
        let gen_elsewhere = std::thread::scope(|s| s.spawn(|| cell.with(|r| r.generation)).join());
        assert_eq!(gen_elsewhere.unwrap(), 2);
    }

    #[test]
    fn the_shape_follows_every_ring_and_saturates_its_member_count() {
        let mut big = ring("a", 40_000_000_000);
        big.live = (0..70_000).map(|i| NodeId::new(format!("n{i:05}")).unwrap()).collect();
        let cell = RingCell::new(ring("a", 3));
        assert_eq!(cell.shape(), Shape { generation: 3, live: cell.load().live.len() });
        cell.update(|_| Some(big)).unwrap();
        assert_eq!(cell.shape(), Shape { generation: 40_000_000_000, live: u16::MAX as usize });
    }

    #[test]
    fn cells_of_different_nodes_never_share_a_thread_copy() {
        let a = RingCell::new(ring("a", 7));
        let b = RingCell::new(ring("b", 7));
        for _ in 0..3 {
            assert_eq!(a.with(|r| r.me.as_str().to_owned()), "a");
            assert_eq!(b.with(|r| r.me.as_str().to_owned()), "b");
        }
        // Nested reads (a ring read inside another) work; the inner one is just not kept.
        assert_eq!(a.with(|ra| b.with(|rb| ra.me.as_str().len() + rb.me.as_str().len())), 2);
    }
}
