//! The cache's shared state on one node, and the replica side of the Cache channel.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{
    HlcTime, NodeId, NodeTag, Record, Timestamp,
    digest::{RangeDigests, lacks, range_of},
    placement::slot_hash,
    wire::{
        Channel,
        cache::{
            CacheOp, CacheReply, CacheRequest, CacheResponse, Catalog as WireCatalog, Digests,
            Entry, Exchange, KeyVersion, LeaseReply, Mismatched, Versions, WireRecord, Write,
            Written,
        },
        messages::ErrorCode,
    },
};
use prost::Message as _;
use tokio::sync::{Notify, OnceCell, oneshot, watch};

use super::{
    CacheError, CacheStats,
    catalog::{BucketState, Catalog, Merged, config_of},
    config::CacheConfig,
    ring::{Ring, RingCell, Shape},
    walk::{APPLY_CHUNK, Pace, Walks},
};
use crate::{
    cluster::{MembershipView, MessagingError, Responder, link::Links},
    store::{BucketName, Store, WriteOutcome, wire_size},
};

/// Waiters parked on one key's lease before new ones get `Overloaded`.
const MAX_LEASE_WAITERS: usize = 4096;
/// Longest a node waits on one version exchange while the peer keeps streaming records to it
/// (see [`Runtime::call_streamed`]). Not a correctness limit: what arrived is kept, and the next
/// round's exchange streams only the rest.
const STREAMED_EXCHANGE_LIMIT: Duration = Duration::from_secs(3600);

pub(crate) type Refusal = (ErrorCode, String);

/// Counters of the distributed cache on one node.
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub writes_indeterminate: AtomicU64,
    pub writes_failed: AtomicU64,
    pub restamped: AtomicU64,
    pub reads_remote: AtomicU64,
    pub read_repairs: AtomicU64,
    pub hints_queued: AtomicU64,
    pub hints_replayed: AtomicU64,
    pub hints_dropped: AtomicU64,
    pub sync_rounds: AtomicU64,
    pub sync_failures: AtomicU64,
    pub sync_ranges_compared: AtomicU64,
    pub sync_ranges_mismatched: AtomicU64,
    pub sync_records_sent: AtomicU64,
    pub sync_records_received: AtomicU64,
    pub sync_bytes_sent: AtomicU64,
    pub sync_bytes_received: AtomicU64,
    pub handed_off: AtomicU64,
    pub loads: AtomicU64,
}

pub(crate) struct Hint {
    pub bucket: BucketName,
    pub key: Bytes,
    pub record: Record,
    size: u64,
}

#[derive(Default)]
pub(crate) struct Hints {
    by_node: BTreeMap<NodeId, VecDeque<Hint>>,
    bytes: u64,
}

enum LeaseOutcome {
    Granted,
    Value(WireRecord),
}

struct LeaseState {
    grant: u64,
    waiters: VecDeque<oneshot::Sender<LeaseOutcome>>,
}

type FlightKey = (BucketName, Bytes);
pub(crate) type Flight = Arc<OnceCell<Result<Bytes, CacheError>>>;

pub(crate) struct Runtime {
    pub me: NodeId,
    pub config: CacheConfig,
    /// The node has seeds: it is not ready before it has seen a peer.
    pub expects_peers: bool,
    pub store: Store,
    pub links: Arc<Links>,
    pub view: watch::Receiver<Arc<MembershipView>>,
    ring: RingCell,
    pub catalog: Catalog,
    pub hints: Mutex<Hints>,
    leases: Mutex<HashMap<FlightKey, LeaseState>>,
    next_grant: AtomicU64,
    flights: Mutex<HashMap<FlightKey, Flight>>,
    pub counters: Counters,
    /// The ring generation this node last finished a sync round for.
    pub synced: watch::Sender<u64>,
    /// The current ring generation.
    pub generation: watch::Sender<u64>,
    /// Wakes the sync task early.
    pub kick: Notify,
    /// When the rebalancing throttle next has budget.
    throttle: tokio::sync::Mutex<tokio::time::Instant>,
    /// From a write's start until each peer replica applied it.
    pub replication: prometheus_client::metrics::histogram::Histogram,
    /// Sync writes received from each peer: what a node waiting on a streamed version
    /// exchange with that peer watches for progress ([`Runtime::call_streamed`]).
    pushes: Mutex<HashMap<NodeId, u64>>,
    /// The pacing budget every walk over a bucket on this node shares.
    pub walks: Walks,
    /// A sync round with at least one peer completed since this node started (or one alone
    /// while it held records: it is their source). Until then its replicas fill from nothing:
    /// it pulls everything it owns, reports no difference to digest comparisons, and declines
    /// hand-offs.
    pub filled: std::sync::atomic::AtomicBool,
}

impl Runtime {
    pub fn new(
        me: NodeId,
        config: CacheConfig,
        store: Store,
        links: Arc<Links>,
        view: watch::Receiver<Arc<MembershipView>>,
        expects_peers: bool,
    ) -> Arc<Self> {
        let ring = Ring::alone(me.clone(), expects_peers);
        let ring = ring.next(&view.borrow()).unwrap_or(ring);
        let generation = ring.generation;
        Arc::new(Runtime {
            me,
            config,
            expects_peers,
            store,
            links,
            view,
            ring: RingCell::new(ring),
            catalog: Catalog::default(),
            hints: Mutex::new(Hints::default()),
            leases: Mutex::new(HashMap::new()),
            next_grant: AtomicU64::new(1),
            flights: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            synced: watch::channel(u64::MAX).0,
            generation: watch::channel(generation).0,
            kick: Notify::new(),
            throttle: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            replication: crate::metrics::latency_histogram(),
            pushes: Mutex::new(HashMap::new()),
            walks: Walks::new(),
            filled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this node holds what it owns: a sync round completed for the current placement
    /// (and, when it has seeds, that placement includes a peer).
    pub fn is_ready(&self) -> bool {
        let ring = self.ring();
        self.synced_for(ring.generation) && (!self.expects_peers || ring.live.len() > 1)
    }

    /// Whether a sync round completed for the placement of `generation` (else this node is
    /// still filling the replicas that placement gave it).
    pub fn synced_for(&self, generation: u64) -> bool {
        *self.synced.borrow() == generation
    }

    /// The current ring's generation and live-member count, without reading the ring.
    #[inline]
    pub fn ring_shape(&self) -> Shape {
        self.ring.shape()
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load()
    }

    /// Runs `f` on the current ring without taking a reference to it (the local read path).
    #[inline]
    pub fn with_ring<R>(&self, f: impl FnOnce(&Ring) -> R) -> R {
        self.ring.with(f)
    }

    /// Recomputes the ring from the membership; returns whether placement changed.
    pub fn refresh_ring(&self) -> bool {
        let view = self.view.borrow().clone();
        let Some(next) = self.ring.update(|ring| ring.next(&view)) else { return false };
        tracing::debug!(node = %self.me, generation = next.generation, live = next.live.len(), "placement changed");
        self.generation.send_replace(next.generation);
        true
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let hints = crate::sync::lock(&self.hints);
        CacheStats {
            writes: c.writes.load(Relaxed),
            writes_indeterminate: c.writes_indeterminate.load(Relaxed),
            writes_restamped: c.restamped.load(Relaxed),
            writes_failed: c.writes_failed.load(Relaxed),
            reads_local: self.catalog.reads_consulted(),
            reads_remote: c.reads_remote.load(Relaxed),
            read_repairs: c.read_repairs.load(Relaxed),
            hints_pending: hints.by_node.values().map(|q| q.len() as u64).sum(),
            hints_pending_bytes: hints.bytes,
            hints_queued: c.hints_queued.load(Relaxed),
            hints_replayed: c.hints_replayed.load(Relaxed),
            hints_dropped: c.hints_dropped.load(Relaxed),
            sync_rounds: c.sync_rounds.load(Relaxed),
            sync_failures: c.sync_failures.load(Relaxed),
            sync_ranges_compared: c.sync_ranges_compared.load(Relaxed),
            sync_ranges_mismatched: c.sync_ranges_mismatched.load(Relaxed),
            sync_records_sent: c.sync_records_sent.load(Relaxed),
            sync_records_received: c.sync_records_received.load(Relaxed),
            sync_bytes_sent: c.sync_bytes_sent.load(Relaxed),
            sync_bytes_received: c.sync_bytes_received.load(Relaxed),
            handed_off: c.handed_off.load(Relaxed),
            loads: c.loads.load(Relaxed),
            ring_generation: *self.generation.borrow(),
            synced_generation: *self.synced.borrow(),
        }
    }

    /// Waits until the rebalancing budget allows sending `bytes` more.
    pub async fn throttle(&self, bytes: usize) {
        self.throttle_work(bytes).await;
        self.counters.sync_bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    /// How long `bytes` of the rebalancing budget (`sync_rate`) last.
    pub fn budget_time(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.config.sync_rate as f64)
    }

    /// Waits for `bytes` of the rebalancing budget without counting anything as sent: the
    /// one place the budget is spent. Work other than sending records (a hand-off's offers
    /// and drops, see `sync::KEY_WORK_COST`) is charged here directly.
    pub async fn throttle_work(&self, bytes: usize) {
        let cost = self.budget_time(bytes);
        let at = {
            let mut next = self.throttle.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(at).await;
    }

    /// Charges `bytes` pulled from a peer to the same budget as [`Runtime::throttle`].
    pub async fn throttle_pull(&self, bytes: usize) {
        self.throttle_work(bytes).await;
        self.counters.sync_bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    // ----- calling replicas -----

    /// Sends `op` to `to` (handled in place when `to` is this node).
    pub async fn call(
        self: &Arc<Self>,
        to: &NodeId,
        op: CacheOp,
        timeout: Duration,
    ) -> Result<CacheReply, MessagingError> {
        let remote =
            |(code, message): Refusal| MessagingError::Remote { peer: to.clone(), code, message };
        if *to == self.me {
            return match op {
                CacheOp::Lease(l) => self.lease(l.bucket, l.key).await.map_err(remote),
                op @ CacheOp::Versions(_) => {
                    // Boxed: answering an exchange may call (push to) the asker.
                    Box::pin(self.serve_walk(&self.me.clone(), op)).await.map_err(remote)
                }
                op => self.serve(&self.me, op).map_err(remote),
            };
        }
        let payload = Bytes::from(CacheRequest { op: Some(op) }.encode_to_vec());
        self.call_encoded(to, payload, timeout).await
    }

    /// Sends an encoded [`CacheRequest`] to `to`, a peer (not this node), and decodes its
    /// answer: a request bound for several replicas is encoded once.
    pub async fn call_encoded(
        &self,
        to: &NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<CacheReply, MessagingError> {
        let answer = self.links.request(to, Channel::Cache, payload, timeout).await?;
        CacheResponse::decode(answer).ok().and_then(|r| r.reply).ok_or_else(|| {
            MessagingError::Remote {
                peer: to.clone(),
                code: ErrorCode::BadRequest,
                message: "malformed cache response".to_owned(),
            }
        })
    }

    /// Sends a version exchange to `to` and waits for its answer, which a peer that holds
    /// records this node lacks gives only after streaming them here as sync writes: as long
    /// as such writes keep arriving from `to`, the wait goes on; it fails after `idle` without
    /// either (or after [`STREAMED_EXCHANGE_LIMIT`] in all).
    pub async fn call_streamed(
        self: &Arc<Self>,
        to: &NodeId,
        op: CacheOp,
        idle: Duration,
    ) -> Result<CacheReply, MessagingError> {
        let call = self.call(to, op, STREAMED_EXCHANGE_LIMIT);
        tokio::pin!(call);
        let mut seen = self.pushes_from(to);
        loop {
            tokio::select! {
                biased;
                answer = &mut call => return answer,
                _ = tokio::time::sleep(idle) => {
                    let now = self.pushes_from(to);
                    if now == seen {
                        return Err(MessagingError::Timeout(to.clone()));
                    }
                    seen = now;
                }
            }
        }
    }

    fn pushes_from(&self, peer: &NodeId) -> u64 {
        crate::sync::lock(&self.pushes).get(peer).copied().unwrap_or(0)
    }

    /// Counts a sync write from `peer` (a member: the map holds at most one entry per node
    /// ever seen, a few words each).
    fn pushed_by(&self, peer: &NodeId) {
        *crate::sync::lock(&self.pushes).entry(peer.clone()).or_default() += 1;
    }

    // ----- serving replicas -----

    fn bucket(&self, name: &str) -> Result<Arc<BucketState>, Refusal> {
        self.catalog
            .get(name)
            .ok_or_else(|| (ErrorCode::UnknownBucket, format!("no bucket {name:?} here")))
    }

    /// Handles every operation that answers at once (all but `Lease` and `Versions`), sent by
    /// `from`.
    pub fn serve(self: &Arc<Self>, from: &NodeId, op: CacheOp) -> Result<CacheReply, Refusal> {
        match op {
            CacheOp::Digests(d) => self.compare_digests(from, d),
            CacheOp::Catalog(c) => {
                for d in &c.buckets {
                    self.merge_decl(d);
                }
                Ok(CacheReply::Catalog(WireCatalog { buckets: self.catalog.decls() }))
            }
            CacheOp::Write(w) => {
                let b = self.bucket(&w.bucket)?;
                let single = w.entries.len() == 1;
                if w.sync {
                    self.count_synced(&w);
                }
                let mut written = Written::default();
                for e in w.entries {
                    apply_entry(&b, e, single, &mut written)?;
                }
                Ok(CacheReply::Written(written))
            }
            CacheOp::Read(r) => {
                let b = self.bucket(&r.bucket)?;
                let record = b.local.record(&r.key).map(|r| WireRecord::from(&r));
                Ok(CacheReply::Record(Entry { key: r.key, record }))
            }
            CacheOp::Release(r) => {
                let b = self.bucket(&r.bucket)?;
                let record = match r.record {
                    Some(w) => {
                        Some(w.clone().into_record().map(|rec| (w, rec)).ok_or_else(|| {
                            (ErrorCode::BadRequest, "malformed record".to_owned())
                        })?)
                    }
                    None => None,
                };
                if let Some((_, rec)) = &record {
                    // Best effort: the waiters get the record from the answer anyway.
                    let _ = b.local.apply(&r.key, rec.clone());
                }
                self.release(b.name.clone(), r.key, record.map(|(w, _)| w));
                Ok(CacheReply::Written(Written::default()))
            }
            CacheOp::Lease(_) | CacheOp::Versions(_) => {
                Err((ErrorCode::BadRequest, "operation must be awaited".to_owned()))
            }
        }
    }

    /// Stores a batch of synced records (a sync write of more than [`APPLY_CHUNK`] records),
    /// paced like a walk: off the link's reader, resting after every [`APPLY_CHUNK`].
    async fn sync_write(&self, w: Write) -> Result<CacheReply, Refusal> {
        let b = self.bucket(&w.bucket)?;
        self.count_synced(&w);
        let mut written = Written::default();
        let mut pace = Pace::every(&self.walks, APPLY_CHUNK);
        for e in w.entries {
            pace.step().await;
            apply_entry(&b, e, false, &mut written)?;
        }
        Ok(CacheReply::Written(written))
    }

    /// Counts a sync write's records and bytes as received.
    fn count_synced(&self, w: &Write) {
        let bytes: usize = w
            .entries
            .iter()
            .map(|e| wire_size(e.key.len(), e.record.as_ref().map_or(0, |r| r.value.len())))
            .sum();
        self.counters.sync_records_received.fetch_add(w.entries.len() as u64, Relaxed);
        self.counters.sync_bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// Answers a digest comparison: the shared ranges whose summaries differ from `d`'s.
    ///
    /// A node still filling (it has not finished a round since it started: it just joined, or
    /// restarted empty) reports no difference. Its own rounds pull what it owns from every
    /// peer; a peer's round would list that peer's versions to it for nothing (during a join,
    /// each old node listed about 560,000 keys to the new one, and the new one read them into
    /// a map and walked its store to answer). What it holds newer than a peer, a write that
    /// reached it but missed the peer, is in that write's coordinator's hints, and the next
    /// anti-entropy round compares again.
    fn compare_digests(&self, from: &NodeId, d: Digests) -> Result<CacheReply, Refusal> {
        let b = self.bucket(&d.bucket)?;
        let theirs =
            RangeDigests::from_parts(d.ranges.iter().map(|r| (r.range, r.digest, r.count)))
                .ok_or_else(|| (ErrorCode::BadRequest, "malformed digests".to_owned()))?;
        if d.handoff {
            return Ok(CacheReply::Mismatched(self.compare_handoff(&b, &theirs, d.only)));
        }
        if !self.filled.load(Relaxed) {
            return Ok(CacheReply::Mismatched(Mismatched::default()));
        }
        let (ours, _) = self.digests_for(&b, &self.ring(), from);
        let mut ranges = ours.mismatched(&theirs);
        if !d.only.is_empty() {
            let only: std::collections::HashSet<u32> = d.only.into_iter().collect();
            ranges.retain(|r| only.contains(r));
        }
        Ok(CacheReply::Mismatched(Mismatched { ranges, declined: false }))
    }

    /// The ranges among `offered` (slots a peer is handing off to this node, `theirs` its
    /// summaries of them) where this node does not hold exactly what the peer holds: those
    /// whose summaries differ. While this node is still filling it declines the hand-off
    /// instead (it pulls what it owns in its own rounds). Equal summaries mean this node holds
    /// every record the peer holds there, at the same version: what a key-by-key offer would
    /// have confirmed. Like those confirmations this does not depend on this node's placement:
    /// if it does not own the slot, its own hand-off passes the records on before it drops
    /// them.
    fn compare_handoff(
        &self,
        b: &BucketState,
        theirs: &RangeDigests,
        offered: Vec<u32>,
    ) -> Mismatched {
        if !self.filled.load(Relaxed) {
            return Mismatched { ranges: Vec::new(), declined: true };
        }
        let wanted: std::collections::HashSet<u32> = offered.iter().copied().collect();
        let ours = b.local.digests().snapshot(|slot| wanted.contains(&slot));
        let differ: std::collections::HashSet<u32> = ours.mismatched(theirs).into_iter().collect();
        Mismatched {
            ranges: offered.into_iter().filter(|s| differ.contains(s)).collect(),
            declined: false,
        }
    }

    /// Handles the operation that walks a whole bucket (`Versions`); the walk is paced
    /// (`walk::Pace`).
    pub async fn serve_walk(
        self: &Arc<Self>,
        from: &NodeId,
        op: CacheOp,
    ) -> Result<CacheReply, Refusal> {
        match op {
            CacheOp::Versions(v) => {
                let b = self.bucket(&v.bucket)?;
                Ok(CacheReply::Exchange(self.exchange(&b, from, v).await))
            }
            _ => Err((ErrorCode::BadRequest, "not a walk".to_owned())),
        }
    }

    pub fn merge_decl(&self, d: &mycorrizal_core::wire::cache::BucketDecl) -> Option<Merged> {
        let (config, since) = match config_of(d) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(bucket = %d.name, error = %e, "refused a bucket declaration");
                return None;
            }
        };
        // A declaration made here after seeing this one must order after it.
        if let Err(e) = self.store.clock().observe(since.time) {
            tracing::warn!(bucket = %d.name, error = %e, "refused a bucket declaration from the future");
            return None;
        }
        match self.catalog.merge(&self.store, config, since) {
            Ok(m) => {
                match &m {
                    Merged::Added(b) => {
                        tracing::info!(node = %self.me, bucket = %b.name, "bucket declared");
                        self.kick.notify_one();
                    }
                    Merged::Replaced { old, new } => {
                        tracing::warn!(bucket = %new.name, lost = %old.config, won = %new.config,
                            "conflicting declarations: the earlier one wins");
                    }
                    Merged::Same(_) | Merged::Kept(_) => {}
                }
                Some(m)
            }
            Err(e) => {
                tracing::warn!(bucket = %d.name, error = %e, "could not create a declared bucket");
                None
            }
        }
    }

    /// Range digests of the ranges (placement slots) this node and `peer` both own, as they
    /// stand: read from the bucket's live summaries, no walk. Every key of a slot has the same
    /// owners, so the two sides' summaries of a shared slot cover the same keys. Also returns
    /// how many ranges the two share.
    pub fn digests_for(&self, b: &BucketState, ring: &Ring, peer: &NodeId) -> (RangeDigests, u64) {
        let rf = b.config.replicas() as usize;
        if !ring.is_live(peer) {
            return (RangeDigests::default(), 0);
        }
        let shared = std::cell::Cell::new(0);
        let digests = b.local.digests().snapshot(|slot| {
            let both = ring.both_own(slot_hash(slot), rf, &self.me, peer);
            shared.set(shared.get() + u64::from(both));
            both
        });
        (digests, shared.get())
    }

    /// Answers a version exchange: which of `v`'s keys this node needs (pushed by the asker
    /// afterwards) and the records it holds newer than the asker, or that the asker lacks.
    ///
    /// Those records are found in one walk over the bucket, and streamed to the asker as sync
    /// writes while the walk goes on, `sync_batch_bytes` at a time under this node's throttle;
    /// the answer carries only the last batch. A joining node's pull from each peer is so one
    /// walk here, however much it moves (with answers of at most 12 MiB each it took ~65 walks
    /// of a million entries for a 4th node joining three). If a push fails the walk stops and
    /// the answer says `more`: the asker asks again, for what it still lacks.
    async fn exchange(self: &Arc<Self>, b: &BucketState, from: &NodeId, v: Versions) -> Exchange {
        if v.handoff && !self.filled.load(Relaxed) {
            // This node has not finished a round with a peer since it started (it just joined,
            // or restarted empty): its rounds pull everything it owns from its peers. Taking
            // the offer too moved a joining node's records twice, pulled and handed off.
            return Exchange { need: Vec::new(), newer: Vec::new(), more: true };
        }
        let now = self.store.clock().now_ms();
        let mut need = Vec::new();
        let mut theirs: HashMap<Bytes, KeyVersion> = HashMap::with_capacity(v.versions.len());
        // A node still filling its replicas after a placement change pulls what its peers hold
        // newer in its own round (`sync::reconcile`, the `newer` half of this exchange run the
        // other way). Asking this peer to push the same records too moved every record of a
        // join twice; hand-offs are the exception (only the old holder offers those keys).
        let pulling = !v.handoff && !self.synced_for(self.ring_shape().generation);
        // Where both sides hold a key, only versions written up to the asker's cutoff count
        // (`digest::lacks`): a newer one was written during this exchange.
        let cutoff = (v.cutoff != 0).then(|| HlcTime::from_raw(v.cutoff));
        let stamp = |kv: &KeyVersion| Timestamp {
            time: HlcTime::from_raw(kv.time),
            node: NodeTag(kv.node),
        };
        let mut pace = Pace::new(&self.walks);
        for (i, kv) in v.versions.into_iter().enumerate() {
            pace.step().await;
            let behind = lacks(b.local.version_of(&kv.key), stamp(&kv), cutoff);
            if behind && !pulling {
                need.push(i as u32);
            }
            if !v.handoff {
                theirs.insert(kv.key.clone(), kv);
            }
        }
        let mut reply = Exchange { need, newer: Vec::new(), more: false };
        if v.handoff {
            return reply;
        }
        let ranges: std::collections::HashSet<u32> = v.ranges.into_iter().collect();
        let ring = self.ring();
        let rf = b.config.replicas() as usize;
        let mut bytes = 0;
        for (kh, e) in b.hashed(now) {
            pace.step().await;
            if !ranges.contains(&range_of(kh)) || !ring.both_own(kh, rf, &self.me, from) {
                continue;
            }
            if !lacks(theirs.get(e.key()).map(stamp), e.version(), cutoff) {
                continue;
            }
            if bytes >= self.config.sync_batch_bytes {
                let batch = std::mem::take(&mut reply.newer);
                if !super::sync::send(self, b, from, batch, std::mem::take(&mut bytes)).await {
                    reply.more = true;
                    return reply;
                }
            }
            // The walk saw the header; the record sent is the current one (newer, if a write
            // came since; gone, if it was evicted or expired).
            let Some(record) = b.local.record(e.key()) else { continue };
            bytes += wire_size(e.key().len(), record.value().map_or(0, Bytes::len));
            reply.newer.push(Entry { key: e.key_bytes(), record: Some(WireRecord::from(&record)) });
        }
        reply
    }

    // ----- hints -----

    /// Keeps `record` for `to`, to replay when it is reachable again. Returns false (and counts
    /// a dropped hint) when the hint store is full; anti-entropy repairs the replica then.
    pub fn add_hint(&self, to: &NodeId, bucket: &BucketName, key: &Bytes, record: &Record) -> bool {
        let size = (key.len() + record.value().map_or(0, Bytes::len) + 64) as u64;
        let mut hints = crate::sync::lock(&self.hints);
        if hints.bytes + size > self.config.hint_capacity {
            drop(hints);
            self.counters.hints_dropped.fetch_add(1, Relaxed);
            tracing::warn!(node = %self.me, to = %to, "hint store full; leaving the replica to anti-entropy");
            return false;
        }
        hints.bytes += size;
        hints.by_node.entry(to.clone()).or_default().push_back(Hint {
            bucket: bucket.clone(),
            key: key.clone(),
            record: record.clone(),
            size,
        });
        self.counters.hints_queued.fetch_add(1, Relaxed);
        true
    }

    /// Takes up to `max` hints for `to`.
    pub fn take_hints(&self, to: &NodeId, max: usize) -> Vec<Hint> {
        let mut hints = crate::sync::lock(&self.hints);
        let Some(q) = hints.by_node.get_mut(to) else { return Vec::new() };
        let n = q.len().min(max);
        let taken: Vec<Hint> = q.drain(..n).collect();
        if q.is_empty() {
            hints.by_node.remove(to);
        }
        hints.bytes -= taken.iter().map(|h| h.size).sum::<u64>();
        taken
    }

    /// Puts back hints that could not be delivered, at the front.
    pub fn return_hints(&self, to: &NodeId, back: Vec<Hint>) {
        let mut hints = crate::sync::lock(&self.hints);
        hints.bytes += back.iter().map(|h| h.size).sum::<u64>();
        let q = hints.by_node.entry(to.clone()).or_default();
        for h in back.into_iter().rev() {
            q.push_front(h);
        }
    }

    pub fn hinted_nodes(&self) -> Vec<NodeId> {
        crate::sync::lock(&self.hints).by_node.keys().cloned().collect()
    }

    /// Drops hints older than their bucket's tombstone window: replaying them later could
    /// bring back a value whose delete has been forgotten.
    pub fn expire_hints(&self, now_ms: u64) {
        let mut hints = crate::sync::lock(&self.hints);
        let mut dropped = 0;
        let mut freed = 0;
        for q in hints.by_node.values_mut() {
            q.retain(|h| {
                let window = self
                    .catalog
                    .get(h.bucket.as_str())
                    .map_or(0, |b| b.config.tombstone_ttl().as_millis() as u64);
                let keep = h.record.version.time.wall_ms().saturating_add(window) > now_ms;
                if !keep {
                    dropped += 1;
                    freed += h.size;
                }
                keep
            });
        }
        hints.by_node.retain(|_, q| !q.is_empty());
        hints.bytes -= freed;
        drop(hints);
        self.counters.hints_dropped.fetch_add(dropped, Relaxed);
    }

    // ----- read-through leases (on the key's primary owner) -----

    /// Grants the lease on a key to the caller, or waits for the holder to finish and answers
    /// with what it loaded.
    pub async fn lease(
        self: &Arc<Self>,
        bucket: String,
        key: Bytes,
    ) -> Result<CacheReply, Refusal> {
        let b = self.bucket(&bucket)?;
        let now = self.store.clock().now_ms();
        let live = |r: &Record| !r.is_tombstone() && !r.is_expired(now);
        let waiting = {
            let mut leases = crate::sync::lock(&self.leases);
            if let Some(r) = b.local.record(&key).filter(live) {
                return Ok(lease_value(&r));
            }
            match leases.get_mut(&(b.name.clone(), key.clone())) {
                None => {
                    let grant = self.next_grant.fetch_add(1, Relaxed);
                    leases.insert(
                        (b.name.clone(), key.clone()),
                        LeaseState { grant, waiters: VecDeque::new() },
                    );
                    self.arm_lease_timer(b.name.clone(), key.clone(), grant);
                    return Ok(CacheReply::Lease(LeaseReply { granted: true, record: None }));
                }
                Some(state) if state.waiters.len() >= MAX_LEASE_WAITERS => {
                    return Err((
                        ErrorCode::Overloaded,
                        "too many callers wait for this key".into(),
                    ));
                }
                Some(state) => {
                    let (tx, rx) = oneshot::channel();
                    state.waiters.push_back(tx);
                    rx
                }
            }
        };
        match waiting.await {
            Ok(LeaseOutcome::Granted) => {
                Ok(CacheReply::Lease(LeaseReply { granted: true, record: None }))
            }
            Ok(LeaseOutcome::Value(w)) => {
                Ok(CacheReply::Lease(LeaseReply { granted: false, record: Some(w) }))
            }
            Err(_) => Err((ErrorCode::HandlerFailed, "lease table dropped".into())),
        }
    }

    fn arm_lease_timer(self: &Arc<Self>, bucket: BucketName, key: Bytes, grant: u64) {
        let rt = Arc::downgrade(self);
        let after = self.config.lease_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(rt) = rt.upgrade() {
                rt.expire_lease(bucket, key, grant);
            }
        });
    }

    fn expire_lease(self: &Arc<Self>, bucket: BucketName, key: Bytes, grant: u64) {
        let current =
            crate::sync::lock(&self.leases).get(&(bucket.clone(), key.clone())).map(|s| s.grant);
        if current == Some(grant) {
            tracing::warn!(node = %self.me, bucket = %bucket, "read-through lease expired; passing it on");
            self.release(bucket, key, None);
        }
    }

    /// Ends the current lease: hands the loaded record to every waiter, or, if the load failed,
    /// grants the lease to the next waiter still listening.
    pub fn release(self: &Arc<Self>, bucket: BucketName, key: Bytes, record: Option<WireRecord>) {
        let mut leases = crate::sync::lock(&self.leases);
        let fk = (bucket.clone(), key.clone());
        let Some(state) = leases.get_mut(&fk) else { return };
        if let Some(w) = record {
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(LeaseOutcome::Value(w.clone()));
            }
            leases.remove(&fk);
            return;
        }
        while let Some(next) = state.waiters.pop_front() {
            if next.send(LeaseOutcome::Granted).is_ok() {
                let grant = self.next_grant.fetch_add(1, Relaxed);
                state.grant = grant;
                drop(leases);
                self.arm_lease_timer(bucket, key, grant);
                return;
            }
        }
        leases.remove(&fk);
    }

    // ----- single flight on this node -----

    pub fn flight(&self, bucket: &BucketName, key: &Bytes) -> Flight {
        crate::sync::lock(&self.flights)
            .entry((bucket.clone(), key.clone()))
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone()
    }

    pub fn end_flight(&self, bucket: &BucketName, key: &Bytes, flight: &Flight) {
        let mut flights = crate::sync::lock(&self.flights);
        let fk = (bucket.clone(), key.clone());
        if flights.get(&fk).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(&fk);
        }
    }
}

fn lease_value(r: &Record) -> CacheReply {
    CacheReply::Lease(LeaseReply { granted: false, record: Some(WireRecord::from(r)) })
}

/// Routes Cache-channel requests to the node's cache (held weakly: the cache owns the links
/// that own this dispatcher).
pub(crate) struct CacheDispatch(pub Weak<Runtime>);

impl CacheDispatch {
    pub fn dispatch(&self, from: &NodeId, payload: Bytes, reply: Responder) {
        let Some(rt) = self.0.upgrade() else {
            reply.fail(ErrorCode::ShuttingDown, "cache stopped");
            return;
        };
        let Some(op) = CacheRequest::decode(payload).ok().and_then(|r| r.op) else {
            reply.fail(ErrorCode::BadRequest, "malformed cache request");
            return;
        };
        let answer = |r: Result<CacheReply, Refusal>, reply: Responder| match r {
            Ok(a) => reply.respond(Bytes::from(CacheResponse { reply: Some(a) }.encode_to_vec())),
            Err((code, message)) => reply.fail(code, message),
        };
        match op {
            // Waits for another loader, or walks a whole bucket: off the link's reader.
            CacheOp::Lease(l) => {
                tokio::spawn(async move { answer(rt.lease(l.bucket, l.key).await, reply) });
            }
            CacheOp::Write(w) if w.sync && w.entries.len() > APPLY_CHUNK => {
                let from = from.clone();
                tokio::spawn(async move {
                    answer(rt.sync_write(w).await, reply);
                    rt.pushed_by(&from);
                });
            }
            // Finding the slots both own scores every member for every slot: off the reader.
            CacheOp::Digests(d) => {
                let from = from.clone();
                tokio::spawn(async move { answer(rt.compare_digests(&from, d), reply) });
            }
            op @ CacheOp::Versions(_) => {
                let from = from.clone();
                // Plain task, not spawn_blocking: under a simulation's paused clock a blocking
                // thread would let virtual time run ahead of the work.
                tokio::spawn(async move { answer(rt.serve_walk(&from, op).await, reply) });
            }
            op => {
                let pushed = matches!(&op, CacheOp::Write(w) if w.sync);
                answer(rt.serve(from, op), reply);
                if pushed {
                    rt.pushed_by(from);
                }
            }
        }
    }
}

/// Applies one entry of a write to `b`, counting what happened in `written`. A write of a
/// `single` entry fails as a whole when the entry is refused, and reports the newer version
/// that made it stale.
fn apply_entry(
    b: &BucketState,
    e: Entry,
    single: bool,
    written: &mut Written,
) -> Result<(), Refusal> {
    let record = e
        .record
        .and_then(WireRecord::into_record)
        .ok_or_else(|| (ErrorCode::BadRequest, "malformed record".to_owned()))?;
    match b.local.apply(&e.key, record) {
        Ok(WriteOutcome::Applied) => written.applied += 1,
        Ok(WriteOutcome::Stale) => {
            written.stale += 1;
            // What superseded a caller's write, so its coordinator can order the write after
            // it (see `CacheBucket::replicate_traced`).
            if single {
                written.newest_time = b.local.version_of(&e.key).map_or(0, |v| v.time.to_raw());
            }
        }
        Err(err) if single => return Err((ErrorCode::Refused, err.to_string())),
        Err(_) => written.refused += 1,
    }
    Ok(())
}

/// Whether a replica that failed a write should get a hint: not when it answered that it will
/// never take the record (too large for its bucket, too far ahead of its clock, malformed).
pub(crate) fn worth_a_hint(e: &MessagingError) -> bool {
    !matches!(e, MessagingError::Remote { code: ErrorCode::Refused | ErrorCode::BadRequest, .. })
}

/// Whether a failed request certainly did nothing at the replica.
pub(crate) fn certainly_not_applied(e: &MessagingError) -> bool {
    matches!(
        e,
        MessagingError::UnknownPeer(_)
            | MessagingError::Overloaded(_)
            | MessagingError::ShuttingDown
            | MessagingError::Remote { .. }
    )
}
