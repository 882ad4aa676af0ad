//! Rebalancing, anti-entropy and hint replay: the cache's one background task per node.
//!
//! A *round* brings this node's replicas in line with the current placement:
//!
//! 1. Catalogs are exchanged with every live peer, so every node knows every bucket.
//! 2. For each bucket and each live peer, range digests of the placement slots both own are
//!    compared ([`mycorrizal_core::digest`]), read on each side from summaries the bucket keeps
//!    current, within a round trip of each other. A few differing ranges among many are what
//!    writes in flight look like: they are compared again once those have landed, and only
//!    ranges that still differ go on. A node still filling reports no difference (it pulls in
//!    its own rounds). For ranges that differ, this node sends its versions and the peer
//!    answers with the keys it needs and the records it holds newer. Only differences
//!    move, and only those that existed when this node began listing: where both hold a key,
//!    a version written after that is the write path's to deliver
//!    ([`mycorrizal_core::digest::lacks`]). The peer finds its newer records in one walk and
//!    streams them as sync writes while it walks, so however much moves an exchange is one
//!    walk on each side; the asker waits as long as the writes keep coming
//!    (`Runtime::call_streamed`). A node that just joined holds nothing, so every shared range
//!    differs and it pulls what it owns from each peer; while it fills, it asks its peers for
//!    nothing in their own rounds (it pulls the same records in its own).
//! 3. Keys this node holds but no longer owns are handed off. Each owner first compares its
//!    summaries of those slots with this node's: a slot whose summaries are equal is confirmed
//!    whole. In the others keys are offered (versions first), the records the owner lacks are
//!    sent, and a key is dropped only once every owner confirmed it holds that version or
//!    newer. An owner that has not finished a round with a peer since it started (it just
//!    joined, or restarted empty) declines: it pulls what it owns from the other owners, so
//!    it is sent only the keys none of them confirmed, and counts as confirmed for the rest.
//!
//! Rounds run after membership has been still for `rebalance_delay` when this node has not
//! synced for the placement, every `anti_entropy_interval`, and when a bucket is declared; a
//! round that could not finish is retried every `hint_replay_interval`, for what it left undone.
//! All sending goes through one throttle (`sync_rate`), a hand-off's offers and drops
//! included (each key charged as a small record, `KEY_WORK_COST`); every walk over a bucket,
//! here and where a peer's request is answered, is paced ([`super::walk`]). A round that
//! reached every peer for an unchanged placement marks the node ready.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{
    NodeId, Timestamp,
    digest::{RangeDigests, range_of},
    placement::slot_of,
    wire::cache::{
        CacheOp, CacheReply, Catalog as WireCatalog, Digests, Entry, KeyVersion, RangeSummary,
        Versions, WireRecord, Write,
    },
};

use crate::store::wire_size;

use super::{
    catalog::BucketState,
    ring::Ring,
    runtime::Runtime,
    walk::{self, Pace},
};

/// Largest batch of versions in one message, bytes (a version is its key plus about 24 bytes
/// encoded). Each batch of a reconciliation is one walk over the peer's bucket, so batches are
/// as large as links carry (16 MiB messages) with room to spare: a node holding 750,000 keys
/// sends its versions in 2 batches instead of 6 at 4 MiB.
const VERSIONS_BATCH_BYTES: usize = 12 * 1024 * 1024;
/// Hints replayed per message.
const HINT_BATCH: usize = 256;
/// What a hand-off's work on one key costs of the rebalancing budget, in bytes, beside what it
/// sends: about a 100-byte record on the wire. An offered version costs at least this much
/// (its owner reads the key much as it would to store the record), and so does a key dropped
/// once its owners confirmed it (a lookup, a removal, the summaries, the memory freed).
/// Charged nothing, a join's three hand-offs of 250,000 keys each offered at over 100,000
/// keys a second per node, then dropped as fast as a walk is paced, and each phase took
/// about half of the foreground's throughput (docs/BENCHMARKS.md).
const KEY_WORK_COST: usize = 128;
/// Keys dropped between two charges to the budget.
const DROP_CHUNK: usize = 128;
/// Times a few differing ranges are compared again before they are walked for, and the wait
/// before each: longer than a write takes to reach every replica on a loaded host, short next
/// to a round. Under a saturating write load about one range in a hundred had a write in flight
/// when its summaries were read; compared again, they agreed, and the walks of the store the
/// key-by-key exchange costs were not needed.
const RECHECKS: usize = 2;
const RECHECK_AFTER: Duration = Duration::from_millis(200);

/// The sync task: runs until the node stops (it is aborted with the node's other tasks).
pub(crate) async fn run(rt: Arc<Runtime>) {
    let mut view = rt.view.clone();
    let mut ae = tokio::time::interval(rt.config.anti_entropy_interval);
    ae.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hints = tokio::time::interval(rt.config.hint_replay_interval);
    hints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = true;
    // Progress towards readiness for one placement generation: peers fully exchanged with
    // (in any round since the generation began) and whether the hand-off completed.
    let mut progress: (u64, BTreeSet<NodeId>, bool) = (u64::MAX, BTreeSet::new(), false);
    // Whether the round due is a retry ("go again soon" below).
    let mut retry = false;
    loop {
        if due {
            due = false;
            rt.refresh_ring();
            let ring = rt.ring();
            // A retry for the same placement does only what earlier rounds for it left
            // undone: a joining node declines hand-offs until it has filled, and its peers
            // retry every `hint_replay_interval` meanwhile; each retry repeated every peer's
            // digests and exchanges (a walk of the bucket each) for nothing. Rounds for any
            // other reason (anti-entropy, a new bucket, a change) cover every peer.
            let done = match retry && progress.0 == ring.generation {
                true => Done { peers: progress.1.clone(), handed_off: progress.2 },
                false => Done::default(),
            };
            retry = false;
            let span = tracing::info_span!(
                "cache.sync",
                node = %rt.me,
                generation = ring.generation,
                request_id = crate::trace::request_id()
            );
            let result = tracing::Instrument::instrument(round(&rt, &ring, &done), span).await;
            rt.counters.sync_rounds.fetch_add(1, Relaxed);
            rt.refresh_ring();
            if rt.ring().generation == ring.generation {
                if progress.0 != ring.generation {
                    progress = (ring.generation, BTreeSet::new(), false);
                }
                progress.1.extend(result.synced);
                progress.2 |= result.handed_off;
                let everyone =
                    ring.live.iter().filter(|p| **p != rt.me).all(|p| progress.1.contains(p));
                if everyone && progress.2 {
                    rt.synced.send_replace(ring.generation);
                    // A round alone proves nothing about a node that is about to find its
                    // cluster and fill from it; but one that holds records alone (it took
                    // writes before any peer existed) is their source, and must answer
                    // digests and take hand-offs like any filled node.
                    let holds = || rt.catalog.all().iter().any(|b| b.local.stats().entries > 0);
                    if ring.live.len() > 1 || holds() {
                        rt.filled.store(true, Relaxed);
                    }
                }
            }
            if !rt.synced_for(rt.ring_shape().generation) {
                // Something was unreachable or placement moved under us: go again soon.
                due = true;
                retry = true;
                tokio::select! {
                    biased;
                    _ = view.changed() => {}
                    _ = tokio::time::sleep(rt.config.hint_replay_interval) => {}
                }
                continue;
            }
        }
        // Every select here is biased: a fixed order keeps simulations deterministic (tokio
        // otherwise picks among ready branches at random), and none of the branches is ready
        // so often that it could starve the ones after it.
        tokio::select! {
            biased;
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                // Let a burst of changes settle, then rebalance once.
                loop {
                    let still = tokio::time::sleep(rt.config.rebalance_delay);
                    tokio::select! {
                        biased;
                        c = view.changed() => if c.is_err() { return },
                        _ = still => break,
                    }
                }
                // `follow_membership` has usually moved the ring already, so a change of ring
                // here is not what makes a round due: a placement this node has not synced for
                // is. (Only the first made rebalancing wait for the next anti-entropy tick, up
                // to `anti_entropy_interval` after the change instead of `rebalance_delay`.)
                rt.refresh_ring();
                due = due || !rt.synced_for(rt.ring_shape().generation);
                replay_hints(&rt).await;
            }
            _ = rt.kick.notified() => due = true,
            _ = ae.tick() => due = true,
            _ = hints.tick() => replay_hints(&rt).await,
        }
    }
}

/// Keeps placement in step with membership at once (rounds wait for membership to settle;
/// placement of new writes must not).
pub(crate) async fn follow_membership(rt: Arc<Runtime>) {
    let mut view = rt.view.clone();
    while view.changed().await.is_ok() {
        rt.refresh_ring();
    }
}

/// What one round achieved: the peers every exchange succeeded with, and whether every key
/// this node no longer owns was confirmed by its owners.
struct RoundResult {
    synced: BTreeSet<NodeId>,
    handed_off: bool,
}

/// What earlier rounds for the current placement finished: skipped by a retry.
#[derive(Default)]
struct Done {
    peers: BTreeSet<NodeId>,
    handed_off: bool,
}

/// One round over every bucket and every peer but those `done`.
async fn round(rt: &Arc<Runtime>, ring: &Ring, done: &Done) -> RoundResult {
    let peers: Vec<NodeId> = ring.live.iter().filter(|p| **p != rt.me).cloned().collect();
    let mut failed = BTreeSet::new();
    for peer in &peers {
        let op = CacheOp::Catalog(WireCatalog { buckets: rt.catalog.decls() });
        match rt.call(peer, op, rt.config.request_timeout).await {
            Ok(CacheReply::Catalog(theirs)) => {
                for d in &theirs.buckets {
                    rt.merge_decl(d);
                }
            }
            Ok(_) => {
                failed.insert(peer.clone());
            }
            Err(e) => {
                tracing::debug!(node = %rt.me, peer = %peer, error = %e, "catalog exchange failed");
                failed.insert(peer.clone());
            }
        }
    }
    // Catalogs go to every peer (cheap, and a bucket declared meanwhile must spread);
    // digests and exchanges only to those not done.
    let peers: Vec<NodeId> = peers.into_iter().filter(|p| !done.peers.contains(p)).collect();
    let mut handed_off = true;
    for bucket in rt.catalog.all() {
        handed_off &= sync_bucket(rt, ring, &bucket, &peers, &mut failed, done.handed_off).await;
    }
    rt.counters.sync_failures.fetch_add(failed.len() as u64, Relaxed);
    RoundResult { synced: peers.into_iter().filter(|p| !failed.contains(p)).collect(), handed_off }
}

/// Brings one bucket in line with `ring` against `peers`; adds the peers an exchange failed
/// with to `failed` and returns whether the hand-off completed (skipped when an earlier round
/// for this placement completed it: `handed_off`).
async fn sync_bucket(
    rt: &Arc<Runtime>,
    ring: &Ring,
    b: &Arc<BucketState>,
    peers: &[NodeId],
    failed: &mut BTreeSet<NodeId>,
    handed_off: bool,
) -> bool {
    for peer in peers {
        let Some((mut mismatched, shared)) = compare(rt, ring, b, peer, &[]).await else {
            failed.insert(peer.clone());
            continue;
        };
        // A few ranges differing among many is what writes in flight look like: compare those
        // again once they have landed, and walk for the ones that still differ. (A range
        // repaired by a pending hint still differs, and is walked: its hint is replayed within
        // `hint_replay_interval` anyway.) Many differing ranges (a node filling) are real.
        for _ in 0..RECHECKS {
            if mismatched.is_empty() || mismatched.len() as u64 * 8 > shared {
                break;
            }
            tokio::time::sleep(RECHECK_AFTER).await;
            match compare(rt, ring, b, peer, &mismatched).await {
                Some((again, _)) => mismatched = again,
                None => break,
            }
        }
        rt.counters.sync_ranges_compared.fetch_add(shared, Relaxed);
        rt.counters.sync_ranges_mismatched.fetch_add(mismatched.len() as u64, Relaxed);
        if !mismatched.is_empty() && !reconcile(rt, ring, b, peer, &mismatched).await {
            failed.insert(peer.clone());
        }
    }
    handed_off || hand_off(rt, ring, b, None).await
}

/// Compares range digests with `peer`: every range both own, or only those of `only` when it
/// is not empty. Returns the ranges that differ and how many both own; `None` if the peer did
/// not answer.
async fn compare(
    rt: &Arc<Runtime>,
    ring: &Ring,
    b: &BucketState,
    peer: &NodeId,
    only: &[u32],
) -> Option<(Vec<u32>, u64)> {
    // Read just before sending, from the live summaries: the peer reads its own within a
    // round trip, so only ranges with a difference, or a write in flight, differ.
    let (digests, shared) = rt.digests_for(b, ring, peer);
    let wanted = |r: u32| only.is_empty() || only.binary_search(&r).is_ok();
    let op = CacheOp::Digests(Digests {
        bucket: b.name.to_string(),
        ranges: summaries(&digests, wanted),
        only: only.to_vec(),
        handoff: false,
    });
    match rt.call(peer, op, rt.config.request_timeout).await {
        Ok(CacheReply::Mismatched(m)) => Some((m.ranges, shared)),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(node = %rt.me, peer = %peer, error = %e, "digest exchange failed");
            None
        }
    }
}

/// The non-empty ranges of `digests` that `keep` accepts, as sent in a [`Digests`].
fn summaries(digests: &RangeDigests, keep: impl Fn(u32) -> bool) -> Vec<RangeSummary> {
    digests
        .nonempty()
        .filter(|(range, _, _)| keep(*range))
        .map(|(range, digest, count)| RangeSummary { range, digest, count })
        .collect()
}

/// This node's versions of keys shared with `peer` in `ranges`, grouped by range.
async fn versions_in(
    rt: &Runtime,
    ring: &Ring,
    b: &BucketState,
    peer: &NodeId,
    ranges: &[u32],
) -> BTreeMap<u32, Vec<KeyVersion>> {
    let wanted: std::collections::HashSet<u32> = ranges.iter().copied().collect();
    let rf = b.config.replicas() as usize;
    let now = rt.store.clock().now_ms();
    let mut by_range: BTreeMap<u32, Vec<KeyVersion>> =
        ranges.iter().map(|r| (*r, Vec::new())).collect();
    let mut pace = Pace::new(&rt.walks);
    for (kh, e) in b.hashed(now) {
        pace.step().await;
        let r = range_of(kh);
        if wanted.contains(&r) && ring.both_own(kh, rf, &rt.me, peer) {
            by_range.entry(r).or_default().push(version_of(
                e.key_bytes(),
                e.version(),
                e.is_tombstone(),
            ));
        }
    }
    // The engine iterates in hash order; sorted, a simulation replays exactly from its seed.
    for versions in by_range.values_mut() {
        versions.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
    by_range
}

fn version_of(key: Bytes, version: Timestamp, tombstone: bool) -> KeyVersion {
    KeyVersion { key, time: version.time.to_raw(), node: version.node.0, tombstone }
}

/// Compares mismatched ranges key by key with `peer`: pulls what it holds newer, pushes what
/// it needs.
async fn reconcile(
    rt: &Arc<Runtime>,
    ring: &Ring,
    b: &Arc<BucketState>,
    peer: &NodeId,
    mismatched: &[u32],
) -> bool {
    // Versions written after this are the write path's to deliver (see `Versions::cutoff`).
    let mut cutoff = rt.store.clock().tick().time.to_raw();
    let by_range = versions_in(rt, ring, b, peer, mismatched).await;
    // Batch whole ranges up to the message budget.
    let mut batches: Vec<(Vec<u32>, Vec<KeyVersion>)> = vec![(Vec::new(), Vec::new())];
    let mut size = 0;
    for (range, versions) in by_range {
        let bytes: usize = versions.iter().map(|v| v.key.len() + 24).sum();
        let last = batches.last_mut().expect("never empty");
        if size + bytes > VERSIONS_BATCH_BYTES && !last.0.is_empty() {
            batches.push((Vec::new(), Vec::new()));
            size = 0;
        }
        size += bytes;
        let last = batches.last_mut().expect("never empty");
        last.0.push(range);
        last.1.extend(versions);
    }
    for (ranges, versions) in batches {
        if ranges.is_empty() {
            continue;
        }
        let mut versions = versions;
        loop {
            let op = CacheOp::Versions(Versions {
                bucket: b.name.to_string(),
                ranges: ranges.clone(),
                versions: versions.clone(),
                handoff: false,
                cutoff,
            });
            // The peer streams what it holds newer as sync writes before it answers.
            let idle = walk_timeout(rt, b) + budget_wait(rt);
            let ex = match rt.call_streamed(peer, op, idle).await {
                Ok(CacheReply::Exchange(ex)) => ex,
                Ok(_) => return false,
                Err(e) => {
                    tracing::debug!(node = %rt.me, peer = %peer, error = %e, "version exchange failed");
                    return false;
                }
            };
            let mut received = 0;
            // Pulled records count against the same budget as pushed ones.
            let pulled: usize = ex
                .newer
                .iter()
                .map(|e| wire_size(e.key.len(), e.record.as_ref().map_or(0, |r| r.value.len())))
                .sum();
            rt.throttle_pull(pulled).await;
            // An answer holds up to `sync_batch_bytes` of records: applied in paced chunks.
            let mut pace = Pace::every(&rt.walks, walk::APPLY_CHUNK);
            for e in &ex.newer {
                pace.step().await;
                if let Some(rec) = e.record.clone().and_then(WireRecord::into_record)
                    && b.local.apply(&e.key, rec).is_ok()
                {
                    received += 1;
                }
            }
            rt.counters.sync_records_received.fetch_add(received, Relaxed);
            let needed: Vec<Bytes> = ex
                .need
                .iter()
                .filter_map(|&i| versions.get(i as usize).map(|v| v.key.clone()))
                .collect();
            if !push(rt, b, peer, &needed).await {
                return false;
            }
            if !ex.more {
                break;
            }
            // The peer cut its answer short: what it sent is now ours, ask again.
            cutoff = rt.store.clock().tick().time.to_raw();
            let refreshed = versions_in(rt, ring, b, peer, &ranges).await;
            versions = refreshed.into_values().flatten().collect();
        }
    }
    true
}

/// Sends this node's current records of `keys` to `peer`, in throttled batches. Returns whether
/// every batch was acknowledged.
async fn push(rt: &Arc<Runtime>, b: &BucketState, peer: &NodeId, keys: &[Bytes]) -> bool {
    let mut batch: Vec<Entry> = Vec::new();
    let mut size = 0;
    for key in keys {
        if size >= rt.config.sync_batch_bytes
            && !send(rt, b, peer, std::mem::take(&mut batch), std::mem::take(&mut size)).await
        {
            return false;
        }
        if let Some(rec) = b.local.record(key) {
            size += wire_size(key.len(), rec.value().map_or(0, Bytes::len));
            batch.push(Entry { key: key.clone(), record: Some(WireRecord::from(&rec)) });
        }
    }
    batch.is_empty() || send(rt, b, peer, batch, size).await
}

/// Sends one batch of records (`size` bytes on the wire, roughly) to `peer` as a sync write,
/// under the throttle. Returns whether the peer stored all of them.
pub(crate) async fn send(
    rt: &Arc<Runtime>,
    b: &BucketState,
    peer: &NodeId,
    entries: Vec<Entry>,
    size: usize,
) -> bool {
    rt.throttle(size).await;
    let n = entries.len() as u64;
    let op = CacheOp::Write(Write { bucket: b.name.to_string(), entries, sync: true });
    match rt.call(peer, op, rt.config.request_timeout * 4).await {
        Ok(CacheReply::Written(w)) => {
            rt.counters.sync_records_sent.fetch_add(n, Relaxed);
            if w.refused > 0 {
                // Not stored there (too large for its bucket, or too far ahead of its clock):
                // this node must keep its copy.
                tracing::warn!(node = %rt.me, peer = %peer, refused = w.refused, "peer refused synced records");
                return false;
            }
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(node = %rt.me, peer = %peer, error = %e, "sync push failed");
            false
        }
    }
}

/// A key this node holds but does not own, waiting for its owners to confirm it.
struct Pending {
    key: Bytes,
    version: Timestamp,
    tombstone: bool,
    /// Owners that have not confirmed it yet.
    unconfirmed: usize,
    /// Whether an owner confirmed it itself (rather than being pushed it after declining).
    held: bool,
}

/// The keys of one placement slot that a hand-off would drop; every key of a slot has the
/// slot's owners.
struct SlotKeys {
    /// The slot's owners, this node excluded.
    owners: Vec<NodeId>,
    /// In the order the walk met them.
    keys: Vec<Pending>,
}

/// Where a key waits in a hand-off: its slot, and its index among the slot's keys.
type Place = (u32, u32);

fn pending_at(slots: &BTreeMap<u32, SlotKeys>, (slot, i): Place) -> Option<&Pending> {
    slots.get(&slot)?.keys.get(i as usize)
}

/// Offers every key this node holds but does not own (in `ring`, or in `ring` without this
/// node when `leaving`) to its owners, and drops each once all its owners confirmed it.
///
/// A join hands off a quarter of each old node's keys, so everything here is paced like a walk
/// and nothing large is built, sorted or freed in one go. The keys wait grouped by slot, in
/// the order the walk met them: a slot its owners confirm whole (equal summaries) is settled
/// for all its keys at once, and each owner's offers are read off the other slots a chunk at
/// a time. (Sorting each owner's offers, and dropping the handed-off keys in one loop, held a
/// worker thread for up to most of a second; keeping the keys in one map in key order made
/// every key a dozen key comparisons to file and two more lookups to confirm, a tenth of a
/// join's CPU.)
async fn hand_off(
    rt: &Arc<Runtime>,
    ring: &Ring,
    b: &Arc<BucketState>,
    leaving: Option<&Ring>,
) -> bool {
    let rf = b.config.replicas() as usize;
    let now = rt.store.clock().now_ms();
    let placement = leaving.unwrap_or(ring);
    let mut slots: BTreeMap<u32, SlotKeys> = BTreeMap::new();
    let mut pace = Pace::new(&rt.walks);
    for (kh, e) in b.hashed(now) {
        pace.step().await;
        if leaving.is_none() && placement.is_mine(kh, rf) {
            continue;
        }
        let s = slots.entry(slot_of(kh)).or_insert_with(|| SlotKeys {
            owners: placement.owners(kh, rf).into_iter().filter(|o| *o != rt.me).collect(),
            keys: Vec::new(),
        });
        if s.owners.is_empty() {
            continue;
        }
        s.keys.push(Pending {
            key: e.key_bytes(),
            version: e.version(),
            tombstone: e.is_tombstone(),
            unconfirmed: s.owners.len(),
            held: false,
        });
    }
    slots.retain(|_, s| !s.keys.is_empty());
    if slots.is_empty() {
        return true;
    }
    let everyone: BTreeSet<NodeId> =
        slots.values().flat_map(|s| s.owners.iter().cloned()).collect();
    // An owner whose summary of a slot equals this node's holds every key of it at the same
    // version: the whole slot is confirmed for it by one comparison, and its keys are offered
    // one by one only where the summaries differ (a write in flight, a replica behind, an
    // owner still filling). In a join, the old owners of a slot confirm it this way.
    let mut same: BTreeMap<NodeId, BTreeSet<u32>> = BTreeMap::new();
    // Owners still filling from nothing decline: they pull what they own from the other
    // owners, so they count as confirmed for the keys one of those holds, and are sent only
    // the keys none of them confirmed.
    let mut declining: BTreeSet<NodeId> = BTreeSet::new();
    for owner in &everyone {
        let of_owner: Vec<u32> =
            slots.iter().filter(|(_, s)| s.owners.contains(owner)).map(|(slot, _)| *slot).collect();
        match compare_slots(rt, b, owner, of_owner).await {
            Compared::Same(slots) => same.insert(owner.clone(), slots),
            Compared::Declined => {
                declining.insert(owner.clone());
                same.insert(owner.clone(), BTreeSet::new())
            }
        };
    }
    // What declining owners are sent: keys no other owner confirmed, in chunks of
    // `walk::CHUNK` (each is looked up and confirmed in one go below).
    let mut declined: Vec<(NodeId, Vec<Place>)> = Vec::new();
    let mut unheld: BTreeMap<&NodeId, Vec<Place>> = BTreeMap::new();
    let mut pace = Pace::new(&rt.walks);
    for (&slot, s) in slots.iter_mut() {
        let confirmed = s.owners.iter().filter(|o| same[*o].contains(&slot)).count();
        let filling: Vec<&NodeId> = s.owners.iter().filter(|o| declining.contains(*o)).collect();
        if confirmed == 0 && filling.is_empty() {
            continue;
        }
        for (i, p) in s.keys.iter_mut().enumerate() {
            pace.step().await;
            if confirmed > 0 {
                p.unconfirmed -= confirmed + filling.len();
                p.held = true;
                continue;
            }
            for &owner in &filling {
                let places = unheld.entry(owner).or_default();
                places.push((slot, i as u32));
                if places.len() == walk::CHUNK {
                    declined.push((owner.clone(), std::mem::take(places)));
                }
            }
        }
    }
    declined.extend(unheld.into_iter().filter(|(_, p)| !p.is_empty()).map(|(o, p)| (o.clone(), p)));
    let mut complete = true;
    for owner in everyone.iter().filter(|o| !declining.contains(*o)) {
        let mut cursor = Some((0, 0));
        loop {
            // Small chunks: answering a hand-off offer reads each offered key (no walk), and
            // the owner's answer (what it lacks) is only as fresh as its chunk: the smaller the
            // chunk, the fewer of the records pushed have reached the owner some other way
            // meanwhile.
            let (chunk, places) = next_offer(rt, &slots, owner, &same[owner], &mut cursor).await;
            if chunk.is_empty() {
                break;
            }
            rt.throttle_work(chunk.iter().map(|v| offer_cost(&v.key)).sum()).await;
            let op = CacheOp::Versions(Versions {
                bucket: b.name.to_string(),
                ranges: Vec::new(),
                versions: chunk,
                handoff: true,
                // A key is dropped here once its owners confirm it: every version counts.
                cutoff: 0,
            });
            let ex = match rt.call(owner, op, walk_timeout(rt, b)).await {
                Ok(CacheReply::Exchange(ex)) => ex,
                _ => {
                    complete = false;
                    break;
                }
            };
            if ex.more {
                declined.push((owner.clone(), places));
                continue;
            }
            let keys: Vec<Bytes> = ex
                .need
                .iter()
                .filter_map(|&i| places.get(i as usize))
                .filter_map(|&place| pending_at(&slots, place).map(|p| p.key.clone()))
                .collect();
            if !push(rt, b, owner, &keys).await {
                complete = false;
                break;
            }
            confirm(&mut slots, &places, true);
        }
    }
    for (owner, places) in declined {
        tokio::task::yield_now().await;
        let alone: Vec<Bytes> = places
            .iter()
            .filter_map(|&place| pending_at(&slots, place))
            .filter(|p| !p.held)
            .map(|p| p.key.clone())
            .collect();
        if !push(rt, b, &owner, &alone).await {
            complete = false;
            continue;
        }
        confirm(&mut slots, &places, false);
    }
    let mut dropped = 0;
    let mut pace = Pace::new(&rt.walks);
    for (i, p) in slots.into_values().flat_map(|s| s.keys).enumerate() {
        if i % DROP_CHUNK == 0 {
            rt.throttle_work(DROP_CHUNK * KEY_WORK_COST).await;
        }
        pace.step().await;
        if p.unconfirmed == 0 && b.local.drop_if_unchanged(&p.key, p.version) {
            dropped += 1;
        }
    }
    rt.counters.handed_off.fetch_add(dropped, Relaxed);
    complete
}

/// What an owner's comparison of slot summaries said about a hand-off to it.
enum Compared {
    /// The slots it holds exactly as this node does (equal summaries, compared within a round
    /// trip); empty when it could not say.
    Same(BTreeSet<u32>),
    /// It is still filling, and declines the whole hand-off.
    Declined,
}

/// Compares this node's summaries of `slots` (of keys it hands off to `owner`) with `owner`'s.
async fn compare_slots(
    rt: &Arc<Runtime>,
    b: &BucketState,
    owner: &NodeId,
    slots: Vec<u32>,
) -> Compared {
    let wanted: std::collections::HashSet<u32> = slots.iter().copied().collect();
    let ours = b.local.digests().snapshot(|slot| wanted.contains(&slot));
    let op = CacheOp::Digests(Digests {
        bucket: b.name.to_string(),
        ranges: summaries(&ours, |_| true),
        only: slots.clone(),
        handoff: true,
    });
    match rt.call(owner, op, rt.config.request_timeout).await {
        Ok(CacheReply::Mismatched(m)) if m.declined => Compared::Declined,
        Ok(CacheReply::Mismatched(m)) => {
            let differ: std::collections::HashSet<u32> = m.ranges.into_iter().collect();
            Compared::Same(slots.into_iter().filter(|s| !differ.contains(s)).collect())
        }
        _ => Compared::Same(BTreeSet::new()),
    }
}

/// What offering one key's version in a hand-off costs of the rebalancing budget, in bytes:
/// its size on the wire (the key and about 24 bytes), but at least [`KEY_WORK_COST`].
fn offer_cost(key: &[u8]) -> usize {
    (key.len() + 24).max(KEY_WORK_COST)
}

/// The next chunk of offers for `owner`, costing at most `sync_batch_bytes` of the budget
/// ([`offer_cost`]), and where each offered key waits: the keys from `cursor` on (then moved
/// past them; `None` once every slot was read) in the slots `owner` owns, except those of
/// `skip`.
async fn next_offer(
    rt: &Runtime,
    slots: &BTreeMap<u32, SlotKeys>,
    owner: &NodeId,
    skip: &BTreeSet<u32>,
    cursor: &mut Option<Place>,
) -> (Vec<KeyVersion>, Vec<Place>) {
    let (mut chunk, mut places) = (Vec::new(), Vec::new());
    let Some((from_slot, from_index)) = *cursor else { return (chunk, places) };
    let mut size = 0;
    let mut pace = Pace::new(&rt.walks);
    for (&slot, s) in slots.range(from_slot..) {
        if skip.contains(&slot) || !s.owners.contains(owner) {
            continue;
        }
        let from = if slot == from_slot { from_index as usize } else { 0 };
        for (i, p) in s.keys.iter().enumerate().skip(from) {
            pace.step().await;
            size += offer_cost(&p.key);
            chunk.push(version_of(p.key.clone(), p.version, p.tombstone));
            places.push((slot, i as u32));
            if size >= rt.config.sync_batch_bytes {
                *cursor = Some((slot, i as u32 + 1));
                return (chunk, places);
            }
        }
    }
    *cursor = None;
    (chunk, places)
}

/// Counts one more owner as holding every key at `places`; `held_by_owner` when that owner
/// confirmed the keys itself rather than being pushed them after declining.
fn confirm(slots: &mut BTreeMap<u32, SlotKeys>, places: &[Place], held_by_owner: bool) {
    for &(slot, i) in places {
        if let Some(p) = slots.get_mut(&slot).and_then(|s| s.keys.get_mut(i as usize)) {
            p.unconfirmed -= 1;
            p.held |= held_by_owner;
        }
    }
}

/// How long a peer may take to answer a request it walks `b` for (its copy is assumed about
/// as large as ours).
fn walk_timeout(rt: &Runtime, b: &BucketState) -> Duration {
    walk::walk_timeout(rt.config.request_timeout * 4, b.local.stats().entries)
}

/// How long a peer's next batch may wait for its rebalancing budget: the budget is shared by
/// everything the peer sends (the records it streams here, its own hand-off offers and pushes,
/// its answers to other nodes), each a batch at a time, so allow a few batches' worth.
fn budget_wait(rt: &Runtime) -> Duration {
    const SHARERS: u32 = 4;
    rt.budget_time(rt.config.sync_batch_bytes) * SHARERS
}

/// Replays pending hints to every hinted node that is live again.
async fn replay_hints(rt: &Arc<Runtime>) {
    rt.expire_hints(rt.store.clock().now_ms());
    let ring = rt.ring();
    for node in rt.hinted_nodes() {
        if !ring.is_live(&node) {
            continue;
        }
        loop {
            let hints = rt.take_hints(&node, HINT_BATCH);
            if hints.is_empty() {
                break;
            }
            let mut by_bucket: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for h in &hints {
                by_bucket
                    .entry(h.bucket.to_string())
                    .or_default()
                    .push(Entry { key: h.key.clone(), record: Some(WireRecord::from(&h.record)) });
            }
            let mut delivered = true;
            for (bucket, entries) in by_bucket {
                let op = CacheOp::Write(Write { bucket, entries, sync: true });
                if rt.call(&node, op, rt.config.request_timeout).await.is_err() {
                    delivered = false;
                    break;
                }
            }
            if !delivered {
                // Writes are idempotent: resending the ones that did arrive is harmless.
                rt.return_hints(&node, hints);
                break;
            }
            rt.counters.hints_replayed.fetch_add(hints.len() as u64, Relaxed);
        }
    }
}

/// Before a graceful leave: streams every key this node holds to its owners in the placement
/// without this node, within `timeout`. Returns whether everything was confirmed.
pub(crate) async fn drain(rt: &Arc<Runtime>, timeout: Duration) -> bool {
    let ring = rt.ring();
    let mut without = (*ring).clone();
    without.live.retain(|n| *n != rt.me);
    without.known.retain(|n| *n != rt.me);
    if without.live.is_empty() {
        return true;
    }
    let work = async {
        replay_hints(rt).await;
        let mut complete = true;
        for b in rt.catalog.all() {
            complete &= hand_off(rt, &ring, &b, Some(&without)).await;
        }
        complete
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(false)
}
