//! The distributed cache (Mycel): named buckets of replicated key/value data.
//!
//! Every key of a bucket lives on `replicas` nodes chosen by rendezvous hashing over the live
//! members ([`mycorrizal_core::placement`]). The node a call is made on coordinates it:
//!
//! - **Writes** are versioned with the node's hybrid logical clock and sent to every live
//!   owner; the call returns once the consistency level's number of owners acknowledged. An
//!   owner that is down or does not answer gets a *hint* replayed when it is back. A write that
//!   times out after partial acknowledgements is [`CacheError::Indeterminate`], never reported
//!   as failed. Expiry is absolute and travels with the record, so replicas expire together.
//! - **Reads** at `One` use the local replica when this node is an owner (no network at all),
//!   else the first owner that answers; `Quorum`/`All` ask that many owners, return the newest
//!   version and repair owners that answered with an older one.
//! - **Rebalancing and anti-entropy** run in one background task: after every membership
//!   change (once it has been still for `rebalance_delay`) and every `anti_entropy_interval`,
//!   each pair of owners compares range digests of what they share and exchanges only what
//!   differs, and keys this node no longer owns are streamed to their owners and dropped once
//!   the owners confirmed them. [`Cache::ready`] resolves when a round completed for the
//!   current membership: the node holds what it owns.
//!
//! A bucket is declared once, on any node ([`Cache::create_bucket`]); the declaration reaches
//! every node, including ones that join later.

mod catalog;
mod config;
mod error;
mod ring;
mod runtime;
mod sync;
mod walk;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
pub use config::CacheConfig;
pub use error::{CacheError, NotLocal};
use mycorrizal_core::{
    HlcTime, NodeId, Record, Timestamp,
    placement::key_hash,
    quorum::{Consistency, WriteOutcome, WriteTally},
    wire::cache::{
        CacheOp, CacheReply, CacheRequest, Catalog as WireCatalog, Entry, Lease, Read, Release,
        WireRecord, Write,
    },
};
pub(crate) use runtime::{CacheDispatch, Runtime};
pub(crate) use sync::{drain, follow_membership, run as run_sync};
use tokio::sync::mpsc;

use self::{
    catalog::{BucketState, Merged, decl_of},
    runtime::{certainly_not_applied, worth_a_hint},
};
use crate::store::{BucketConfig, BucketStats, Value, WriteOutcome as StoreWrite, check_ttl};

/// How many times one write is stamped again after a replica held a newer version
/// ([`CacheBucket::replicate`]). Once is enough to order it after what the replicas held; more
/// only happens when other writes of the key race it.
const RESTAMPS: u32 = 2;

/// Counters of the distributed cache on one node (since it started), for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Writes coordinated here (set, delete, expire).
    pub writes: u64,
    /// Of those, ended `Indeterminate`.
    pub writes_indeterminate: u64,
    /// Of those, failed or unavailable.
    pub writes_failed: u64,
    /// Times a write found a newer version at a replica and was stamped again past it
    /// (a clock behind another node's, or a racing write).
    pub writes_restamped: u64,
    /// Reads that consulted this node's replica: its buckets' hits and misses (counted by the
    /// store, so the read path bumps one counter, not two).
    pub reads_local: u64,
    /// Reads that asked other nodes. A read at One that found its key missing in a replica
    /// still filling after a placement change asks a peer too, and counts in both.
    pub reads_remote: u64,
    /// Stale replicas repaired by reads.
    pub read_repairs: u64,
    /// Hints waiting for their replica.
    pub hints_pending: u64,
    /// Bytes held by pending hints.
    pub hints_pending_bytes: u64,
    /// Hints ever queued.
    pub hints_queued: u64,
    /// Hints delivered.
    pub hints_replayed: u64,
    /// Hints dropped (store full, or older than the tombstone window); anti-entropy repairs.
    pub hints_dropped: u64,
    /// Sync rounds (rebalancing and anti-entropy) completed.
    pub sync_rounds: u64,
    /// Peers a sync round could not finish its exchanges with (a catalog, digest or version
    /// exchange, or a push, failed or timed out); each is tried again in the next round.
    pub sync_failures: u64,
    /// Ranges (placement slots) whose digests this node's rounds compared with a peer's.
    pub sync_ranges_compared: u64,
    /// Of those, ranges whose digests differed, and still differed when compared again after
    /// the writes in flight had landed: these were compared key by key.
    pub sync_ranges_mismatched: u64,
    /// Records sent by rebalancing, anti-entropy, hand-offs and hint replay.
    pub sync_records_sent: u64,
    /// Records received the same ways: pushed here by peers, or pulled by exchanges started
    /// here. Every record moved is received once, so the sum over the cluster is what moved.
    pub sync_records_received: u64,
    /// Bytes sent by rebalancing, anti-entropy, hand-offs and hint replay (after throttling).
    pub sync_bytes_sent: u64,
    /// Bytes received the same ways (pulled bytes count against this node's throttle too).
    pub sync_bytes_received: u64,
    /// Records dropped here after their new owners confirmed them.
    pub handed_off: u64,
    /// Read-through loader calls made on this node.
    pub loads: u64,
    /// Placement generation (bumped on every change of live members).
    pub ring_generation: u64,
    /// Placement generation of the last completed sync round ([`u64::MAX`]: none yet).
    pub synced_generation: u64,
}

/// Options of one write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Acknowledgements to wait for; default: the bucket's write consistency.
    pub consistency: Option<Consistency>,
    /// Expiry; default: the bucket's default TTL.
    pub ttl: Option<Duration>,
    /// Refuse the write unless the key's *home* owners (computed over every member that has
    /// not left, down ones included) acknowledge it, instead of accepting substitutes (sloppy
    /// quorum). For callers that prefer an error to divergence under partition.
    pub strict: bool,
}

/// The distributed cache of a node: declares buckets and hands out handles.
#[derive(Clone)]
pub struct Cache {
    rt: Arc<Runtime>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("node", &self.rt.me).finish_non_exhaustive()
    }
}

impl Cache {
    pub(crate) fn new(rt: Arc<Runtime>) -> Self {
        Cache { rt }
    }

    /// Declares a bucket cluster-wide, or returns the existing one if it has exactly this
    /// configuration. A different configuration under the same name (here or on any node
    /// reachable now) is [`CacheError::Conflict`], naming both. Nodes unreachable now learn
    /// the declaration when they next sync.
    pub async fn create_bucket(&self, config: BucketConfig) -> Result<CacheBucket, CacheError> {
        let rt = &self.rt;
        let since = rt.store.clock().tick();
        let state = match rt.catalog.merge(&rt.store, config.clone(), since)? {
            Merged::Added(s) | Merged::Same(s) => s,
            Merged::Kept(existing) | Merged::Replaced { new: existing, .. } => {
                return Err(conflict(&existing.config, config));
            }
        };
        let decl = decl_of(&state.config, state.since);
        let ring = rt.ring();
        let mut calls = tokio::task::JoinSet::new();
        for peer in ring.live.iter().filter(|p| **p != rt.me) {
            let (rt, decl, peer) = (rt.clone(), decl.clone(), peer.clone());
            calls.spawn(async move {
                let op = CacheOp::Catalog(WireCatalog { buckets: vec![decl] });
                rt.call(&peer, op, rt.config.request_timeout).await
            });
        }
        while let Some(done) = calls.join_next().await {
            if let Ok(Ok(CacheReply::Catalog(theirs))) = done {
                for d in theirs.buckets.iter().filter(|d| d.name == state.name.as_str()) {
                    rt.merge_decl(d);
                }
            }
        }
        let now = rt.catalog.get(state.name.as_str()).unwrap_or(state);
        if now.config != config {
            return Err(conflict(&now.config, config));
        }
        rt.kick.notify_one();
        Ok(CacheBucket { rt: rt.clone(), state: now })
    }

    /// The declared bucket `name`.
    pub fn bucket(&self, name: &str) -> Result<CacheBucket, CacheError> {
        let state = self
            .rt
            .catalog
            .get(name)
            .ok_or_else(|| CacheError::UnknownBucket { name: name.to_owned() })?;
        Ok(CacheBucket { rt: self.rt.clone(), state })
    }

    /// Every declared bucket's configuration, ordered by name.
    pub fn buckets(&self) -> Vec<BucketConfig> {
        self.rt.catalog.all().iter().map(|b| b.config.clone()).collect()
    }

    /// Whether this node holds what it owns: a sync round completed for the current
    /// membership (and, for a node with seeds, after it joined).
    pub fn is_ready(&self) -> bool {
        self.rt.is_ready()
    }

    /// Resolves once [`Cache::is_ready`] holds.
    pub async fn ready(&self) {
        let mut synced = self.rt.synced.subscribe();
        let mut generation = self.rt.generation.subscribe();
        while !self.is_ready() {
            tokio::select! {
                biased;
                r = synced.changed() => if r.is_err() { return },
                r = generation.changed() => if r.is_err() { return },
            }
        }
    }

    /// Counters of this node's cache.
    pub fn stats(&self) -> CacheStats {
        self.rt.stats()
    }
}

fn conflict(existing: &BucketConfig, requested: BucketConfig) -> CacheError {
    CacheError::Conflict { existing: Box::new(existing.clone()), requested: Box::new(requested) }
}

/// A handle to one declared bucket. Cloning is cheap.
#[derive(Clone)]
pub struct CacheBucket {
    rt: Arc<Runtime>,
    state: Arc<BucketState>,
}

impl std::fmt::Debug for CacheBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBucket").field("name", &self.state.name).finish_non_exhaustive()
    }
}

impl CacheBucket {
    /// The bucket's state, re-resolved if a conflicting earlier declaration replaced it;
    /// borrowed otherwise (no reference count touched on the read path).
    fn state(&self) -> std::borrow::Cow<'_, Arc<BucketState>> {
        if self.state.is_retired()
            && let Some(now) = self.rt.catalog.get(self.state.name.as_str())
        {
            return std::borrow::Cow::Owned(now);
        }
        std::borrow::Cow::Borrowed(&self.state)
    }

    /// The bucket's configuration.
    pub fn config(&self) -> BucketConfig {
        self.state().config.clone()
    }

    /// Counters of this node's replica of the bucket.
    pub fn stats(&self) -> BucketStats {
        self.state().local.stats()
    }

    /// The live owners of `key` as this node sees the membership, best first.
    pub fn owners(&self, key: impl AsRef<[u8]>) -> Vec<NodeId> {
        let s = self.state();
        self.rt.ring().owners(key_hash(s.namespace(), key.as_ref()), s.config.replicas() as usize)
    }

    /// This node's replica's record of `key` (tombstones and expired values included), without
    /// the network: for inspection and tests.
    pub fn local_record(&self, key: impl AsRef<[u8]>) -> Option<Record> {
        self.state().local.record(key)
    }

    /// Calls `f` with every record this node's replica holds (tombstones included), without
    /// collecting them: for inspection (the admin API's replica listing) and tests.
    pub fn for_each_local(&self, mut f: impl FnMut(&[u8], &Record)) {
        for (key, record) in self.state().local.entries() {
            f(&key, &record);
        }
    }

    /// Every record this node's replica holds (tombstones included), for inspection and tests.
    pub fn local_entries(&self) -> Vec<(Bytes, Record)> {
        self.state().local.entries().collect()
    }

    // ----- reads -----

    /// The value of `key` at the bucket's read consistency.
    ///
    /// A read this node's replica answers (at [`Consistency::One`]) is made when `get` is
    /// called, not when the future is first polled; the future is then ready at once.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Get<'_> {
        self.read_now_or_later(key.as_ref(), None)
    }

    /// The value of `key` at `consistency`. At [`Consistency::One`] this node's replica answers
    /// when it holds one that can (see [`CacheBucket::try_get_local`]), when `get_with` is
    /// called; otherwise the future asks the key's owners.
    pub fn get_with(&self, key: impl AsRef<[u8]>, consistency: Consistency) -> Get<'_> {
        self.read_now_or_later(key.as_ref(), Some(consistency))
    }

    /// The value of `key` decoded from JSON (written by [`CacheBucket::set_as`]).
    pub async fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, CacheError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|e| CacheError::Codec(e.to_string()))
            }
        }
    }

    /// The value of `key` from this node's replica, without the network and without waiting:
    /// what [`CacheBucket::get_with`] at [`Consistency::One`] answers when this node holds a
    /// replica of `key` (`Ok(None)`: the key is absent, deleted or expired). When it holds none,
    /// or holds one still filling after a placement change that lacks the key, the answer is
    /// [`NotLocal`] and nothing else was done: ask the owners with [`CacheBucket::get_with`].
    ///
    /// For code that reads hot keys in a loop or outside an async context: it is the local path
    /// of `get_with` without a future around it (docs/BENCHMARKS.md measures both).
    ///
    /// ```no_run
    /// # async fn demo(bucket: mycorrizal::cache::CacheBucket) -> Result<(), mycorrizal::cache::CacheError> {
    /// use mycorrizal::core::quorum::Consistency;
    ///
    /// let value = match bucket.try_get_local("user:42") {
    ///     Ok(value) => value,
    ///     Err(_not_here) => bucket.get_with("user:42", Consistency::One).await?,
    /// };
    /// # let _ = value;
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn try_get_local(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>, NotLocal> {
        self.replica_read(&self.state(), key.as_ref())
    }

    /// A read this node's replica can answer is answered before the returned future is built:
    /// the local path is a chain of cache misses a few hundred nanoseconds long, and running it
    /// inside the network path's state machine measurably slowed it (docs/BENCHMARKS.md). The
    /// key is copied, and the network path's future allocated, only when a peer is asked.
    #[inline]
    fn read_now_or_later(&self, key: &[u8], consistency: Option<Consistency>) -> Get<'_> {
        let s = self.state();
        let consistency = consistency.unwrap_or_else(|| s.config.read_consistency());
        let now = match consistency {
            Consistency::One => self.replica_read(&s, key),
            _ => Err(NotLocal::NotAReplica),
        };
        match now {
            Ok(value) => Get(GetState::Answered(value)),
            Err(why) => self.ask(s.into_owned(), key, consistency, why),
        }
    }

    /// The network path of a read, kept out of line: inlined, its future's construction sat
    /// in every caller's loop beside the local read.
    #[cold]
    #[inline(never)]
    fn ask(
        &self,
        s: Arc<BucketState>,
        key: &[u8],
        consistency: Consistency,
        why: NotLocal,
    ) -> Get<'_> {
        let key = Bytes::copy_from_slice(key);
        let filling = why == NotLocal::Filling;
        Get(GetState::Asking(Box::pin(async move {
            self.read_remote(&s, &key, consistency, filling).await
        })))
    }

    /// What this node's replica answers for `key` at consistency One, if it can.
    #[inline]
    fn replica_read(&self, s: &BucketState, key: &[u8]) -> Result<Option<Value>, NotLocal> {
        let rt = &self.rt;
        let rf = s.config.replicas() as usize;
        // With RF at least the live members every node holds every key: no hash, and the
        // ring's shape (one atomic load) settles it. Otherwise the ring decides. The read
        // counts once, in the store's hits and misses (`CacheStats::reads_local`).
        //
        // This path is kept short on purpose: a local get is a chain of cache misses, and a
        // processor overlaps one get's misses with the next only while both fit its window of
        // in-flight instructions. A thread-local borrow around the store read, or one more
        // counter, each cost the benchmark's local get a third of its throughput
        // (docs/BENCHMARKS.md).
        let (mine, generation) = match rt.ring_shape() {
            shape if rf >= shape.live => (true, shape.generation),
            _ => rt.with_ring(|ring| {
                let mine = rf >= ring.live.len() || ring.is_mine(key_hash(s.namespace(), key), rf);
                (mine, ring.generation)
            }),
        };
        if !mine {
            return Err(NotLocal::NotAReplica);
        }
        match s.local.get(key) {
            Some(v) => Ok(Some(v)),
            None if rt.synced_for(generation) => Ok(None),
            None => Err(NotLocal::Filling),
        }
    }

    /// A read this node's replica could not answer; `mine` when it holds one (still filling),
    /// which answers a read at One when no peer does.
    async fn read_remote(
        &self,
        s: &Arc<BucketState>,
        key: &[u8],
        consistency: Consistency,
        mine: bool,
    ) -> Result<Option<Value>, CacheError> {
        let rt = &self.rt;
        let rf = s.config.replicas() as usize;
        if consistency == Consistency::One {
            let ring = rt.ring();
            let kh = key_hash(s.namespace(), key);
            rt.counters.reads_remote.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut last = None;
            for owner in ring.owners(kh, rf).iter().filter(|o| **o != rt.me) {
                let op = CacheOp::Read(Read {
                    bucket: s.name.to_string(),
                    key: Bytes::copy_from_slice(key),
                });
                match rt.call(owner, op, rt.config.request_timeout).await {
                    Ok(CacheReply::Record(e)) => {
                        return Ok(self.live_value(e.record.and_then(WireRecord::into_record)));
                    }
                    Ok(_) => last = Some("unexpected reply".to_owned()),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            if mine {
                // Read again without counting: the replica was consulted (and counted) once.
                return Ok(self.live_value(s.local.record(key)));
            }
            return Err(CacheError::ReadFailed {
                needed: 1,
                answered: 0,
                detail: last.unwrap_or_else(|| "no owner reachable".into()),
            });
        }
        rt.counters.reads_remote.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ring = rt.ring();
        let owners = ring.owners(key_hash(s.namespace(), key), rf);
        let needed = consistency.required(ring.effective_rf(rf));
        if owners.len() < needed {
            return Err(CacheError::Unavailable { needed, reachable: owners.len() });
        }
        let key = Bytes::copy_from_slice(key);
        let (tx, mut rx) = mpsc::channel(owners.len());
        for owner in owners.iter().cloned() {
            let (rt, tx) = (rt.clone(), tx.clone());
            let op = CacheOp::Read(Read { bucket: s.name.to_string(), key: key.clone() });
            tokio::spawn(async move {
                let r = rt.call(&owner, op, rt.config.request_timeout).await;
                let _ = tx.send((owner, r)).await;
            });
        }
        drop(tx);
        let mut answers: Vec<(NodeId, Option<Record>)> = Vec::new();
        let mut last = String::new();
        while answers.len() < needed {
            match rx.recv().await {
                Some((owner, Ok(CacheReply::Record(e)))) => {
                    answers.push((owner, e.record.and_then(WireRecord::into_record)));
                }
                Some((_, Ok(_))) => last = "unexpected reply".into(),
                Some((_, Err(e))) => last = e.to_string(),
                None => break,
            }
        }
        if answers.len() < needed {
            // Both are at most the bucket's replica count, a `u32`.
            let (needed, answered) = (needed as u32, answers.len() as u32);
            return Err(CacheError::ReadFailed { needed, answered, detail: last });
        }
        let newest = answers.iter().filter_map(|(_, r)| r.clone()).reduce(Record::merge);
        if let Some(newest) = &newest {
            for (owner, held) in &answers {
                if held.as_ref() != Some(newest) {
                    self.repair(s, owner.clone(), key.clone(), newest.clone());
                }
            }
        }
        let now = rt.store.clock().now_ms();
        Ok(newest.filter(|r| !r.is_expired(now)).and_then(|r| r.value().cloned()).map(Value::from))
    }

    /// The value `record` holds now: none for a tombstone or an expired value.
    fn live_value(&self, record: Option<Record>) -> Option<Value> {
        let now = self.rt.store.clock().now_ms();
        record.filter(|r| !r.is_expired(now)).and_then(|r| r.value().cloned()).map(Value::from)
    }

    /// Sends `newest` to an owner that answered a read with an older record.
    fn repair(&self, s: &Arc<BucketState>, owner: NodeId, key: Bytes, newest: Record) {
        let rt = self.rt.clone();
        rt.counters.read_repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let op = CacheOp::Write(Write {
            bucket: s.name.to_string(),
            entries: vec![Entry { key, record: Some(WireRecord::from(&newest)) }],
            sync: false,
        });
        tokio::spawn(async move {
            if let Err(e) = rt.call(&owner, op, rt.config.request_timeout).await {
                tracing::debug!(owner = %owner, error = %e, "read repair failed; anti-entropy will retry");
            }
        });
    }

    // ----- writes -----

    /// Stores `value` under `key` with the bucket's default TTL and write consistency;
    /// returns the write's version.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
    ) -> Result<Timestamp, CacheError> {
        self.set_with(key, value, WriteOptions::default()).await
    }

    /// Stores `value` under `key`, expiring after `ttl` (1 ms ..= 366 days).
    pub async fn set_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<Timestamp, CacheError> {
        self.set_with(key, value, WriteOptions { ttl: Some(ttl), ..WriteOptions::default() }).await
    }

    /// Stores `value` under `key` with per-call options.
    pub async fn set_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<Timestamp, CacheError> {
        let s = self.state();
        let record = self.live_record(&s, key.as_ref(), value.into(), options.ttl)?;
        self.replicate(&s, Bytes::copy_from_slice(key.as_ref()), record, options).await
    }

    /// Stores `value` encoded as JSON.
    pub async fn set_as<T: serde::Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<Timestamp, CacheError> {
        let bytes = serde_json::to_vec(value).map_err(|e| CacheError::Codec(e.to_string()))?;
        self.set(key, bytes).await
    }

    /// Deletes `key`: writes a tombstone kept for the bucket's `tombstone_ttl`, so no replica
    /// that missed the delete can bring the value back within that window.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<(), CacheError> {
        self.delete_with(key, WriteOptions::default()).await
    }

    /// Deletes `key` with per-call options (the TTL is ignored).
    pub async fn delete_with(
        &self,
        key: impl AsRef<[u8]>,
        options: WriteOptions,
    ) -> Result<(), CacheError> {
        let s = self.state();
        let key = key.as_ref();
        s.local.check_admissible(key, 0)?;
        let version = self.rt.store.clock().tick();
        let purge_at =
            version.time.wall_ms().saturating_add(s.config.tombstone_ttl().as_millis() as u64);
        let record = Record::tombstone(version, purge_at);
        self.replicate(&s, Bytes::copy_from_slice(key), record, options).await.map(|_| ())
    }

    /// Gives the current value of `key` a new TTL counted from now. Returns `false` when the
    /// key has no value. Read (at the bucket's read consistency) and rewrite are two steps: a
    /// write racing in between wins or loses by version like any other.
    pub async fn expire(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<bool, CacheError> {
        let ttl = check_ttl(ttl)?;
        let s = self.state();
        let key = key.as_ref();
        let Some(value) = self.read_now_or_later(key, None).await? else {
            return Ok(false);
        };
        let record = self.live_record(&s, key, value.into_bytes(), Some(ttl))?;
        self.replicate(&s, Bytes::copy_from_slice(key), record, WriteOptions::default()).await?;
        Ok(true)
    }

    fn live_record(
        &self,
        s: &BucketState,
        key: &[u8],
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<Record, CacheError> {
        s.local.check_admissible(key, value.len())?;
        let ttl = match ttl {
            Some(t) => Some(check_ttl(t)?),
            None => s.config.default_ttl(),
        };
        let clock = self.rt.store.clock();
        let version = clock.tick();
        let expires_at = ttl.map(|t| clock.now_ms().saturating_add(t.as_millis() as u64));
        Ok(Record::live(version, value, expires_at))
    }

    /// Sends `record` to the key's owners and waits for the consistency level's
    /// acknowledgements; returns the version written (see [`Self::replicate_traced`]).
    async fn replicate(
        &self,
        s: &Arc<BucketState>,
        key: Bytes,
        record: Record,
        options: WriteOptions,
    ) -> Result<Timestamp, CacheError> {
        use tracing::Instrument as _;
        let span = tracing::debug_span!(
            "cache.write",
            node = %self.rt.me,
            bucket = %s.name,
            request_id = crate::trace::request_id()
        );
        self.replicate_traced(s, key, record, options).instrument(span).await
    }

    /// The write's rounds.
    ///
    /// A replica holding a newer version than the record's answers that it was superseded.
    /// When the write succeeded that way, this node's clock moves past the newer version and
    /// the record is stamped again and resent (at most [`RESTAMPS`] times): a write is never
    /// acknowledged while the replicas it reached keep what was there before it. Without this a
    /// delete issued after an acknowledged write from a node whose clock runs ahead (within the
    /// allowed drift) would be acknowledged and lose to that write. Writes that are really
    /// concurrent still resolve by version, last writer wins.
    async fn replicate_traced(
        &self,
        s: &Arc<BucketState>,
        key: Bytes,
        mut record: Record,
        options: WriteOptions,
    ) -> Result<Timestamp, CacheError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.rt.counters.writes.fetch_add(1, Relaxed);
        let mut restamps = 0;
        loop {
            let newer = self.write_round(s, key.clone(), record.clone(), options).await?;
            let Some(newer) = newer.filter(|_| restamps < RESTAMPS) else {
                return Ok(record.version);
            };
            let clock = self.rt.store.clock();
            if let Err(e) = clock.observe(newer) {
                // Cannot happen for a time a replica accepted unless our clocks disagree by
                // more than the drift; the write stands as superseded.
                tracing::warn!(error = %e, "superseding version beyond our clock's drift");
                return Ok(record.version);
            }
            let version = clock.tick();
            let moved = version.time.wall_ms().saturating_sub(record.version.time.wall_ms());
            if record.is_tombstone() {
                // The tombstone's window counts from its version.
                record.expires_at_ms = record.expires_at_ms.map(|t| t.saturating_add(moved));
            }
            record.version = version;
            restamps += 1;
            self.rt.counters.restamped.fetch_add(1, Relaxed);
        }
    }

    /// One round of [`Self::replicate_traced`]: the newest superseding version among the
    /// answers that decided the outcome, if any.
    async fn write_round(
        &self,
        s: &Arc<BucketState>,
        key: Bytes,
        record: Record,
        options: WriteOptions,
    ) -> Result<Option<HlcTime>, CacheError> {
        use std::sync::atomic::Ordering::Relaxed;
        let rt = &self.rt;
        let consistency = options.consistency.unwrap_or(s.config.write_consistency());
        let rf = s.config.replicas() as usize;
        let ring = rt.ring();
        let kh = key_hash(s.namespace(), &key);
        let needed = consistency.required(ring.effective_rf(rf));
        // With every known member live the home owners are the live ones: no hints to leave,
        // and nothing to compute.
        let home = if options.strict || ring.known.len() != ring.live.len() {
            ring.home(kh, rf)
        } else {
            Vec::new()
        };
        let targets: Vec<NodeId> = if options.strict {
            home.iter().filter(|h| ring.is_live(h)).cloned().collect()
        } else {
            ring.owners(kh, rf)
        };
        if targets.len() < needed {
            rt.counters.writes_failed.fetch_add(1, Relaxed);
            return Err(CacheError::Unavailable { needed, reachable: targets.len() });
        }
        for h in home.iter().filter(|h| !ring.is_live(h)) {
            rt.add_hint(h, &s.name, &key, &record);
        }
        let mut tally = WriteTally::needing(targets.len(), needed);
        let mut newer: Option<HlcTime> = None;
        let mut outcome = None;
        let mut first_refusal: Option<String> = None;
        let started = tokio::time::Instant::now();
        // The remote writes run in this task (no task per replica); those still running when
        // the outcome is known finish in one background task (`InFlight`'s drop), so late
        // replicas still count toward replication lag and a failure still leaves a hint.
        let mut calls = InFlight(Vec::with_capacity(targets.len()), Detached::No);
        // Every replica gets the same request: encoded once, for the first.
        let mut request: Option<Bytes> = None;
        for target in targets {
            if target == rt.me {
                outcome = match s.local.apply(&key, record.clone()) {
                    Ok(StoreWrite::Applied) => tally.ack(),
                    Ok(StoreWrite::Stale) => {
                        newer = newer.max(s.local.version_of(&key).map(|v| v.time));
                        tally.ack()
                    }
                    Err(e) => {
                        first_refusal.get_or_insert(e.to_string());
                        tally.fail()
                    }
                };
                continue;
            }
            let payload = request
                .get_or_insert_with(|| {
                    let op = CacheOp::Write(Write {
                        bucket: s.name.to_string(),
                        entries: vec![Entry {
                            key: key.clone(),
                            record: Some(WireRecord::from(&record)),
                        }],
                        sync: false,
                    });
                    Bytes::from(prost::Message::encode_to_vec(&CacheRequest { op: Some(op) }))
                })
                .clone();
            let (rt, key, record, name) = (rt.clone(), key.clone(), record.clone(), s.name.clone());
            calls.0.push(Some(Box::pin(async move {
                let r = rt.call_encoded(&target, payload, rt.config.request_timeout).await;
                match &r {
                    // Observed for every replica, those answering after the write returned
                    // included: the tail is the replication lag.
                    Ok(_) => rt.replication.observe(started.elapsed().as_secs_f64()),
                    Err(e) if worth_a_hint(e) => {
                        rt.add_hint(&target, &name, &key, &record);
                    }
                    Err(_) => {}
                }
                r.map(|reply| match reply {
                    CacheReply::Written(w) if w.newest_time != 0 => {
                        Some(HlcTime::from_raw(w.newest_time))
                    }
                    _ => None,
                })
            })));
        }
        if outcome.is_none() {
            outcome = Some(
                std::future::poll_fn(|cx| {
                    while let Some(r) = calls.poll_next(cx) {
                        let decided = match r {
                            Ok(superseded) => {
                                newer = newer.max(superseded);
                                tally.ack()
                            }
                            Err(e) if certainly_not_applied(&e) => {
                                first_refusal.get_or_insert(e.to_string());
                                tally.fail()
                            }
                            Err(_) => tally.unknown(),
                        };
                        if let Some(d) = decided {
                            return std::task::Poll::Ready(d);
                        }
                    }
                    if calls.is_done() {
                        return std::task::Poll::Ready(tally.deadline());
                    }
                    std::task::Poll::Pending
                })
                .await,
            );
        }
        drop(calls);
        match outcome.unwrap_or_else(|| tally.deadline()) {
            WriteOutcome::Succeeded { .. } => Ok(newer),
            WriteOutcome::Failed => {
                rt.counters.writes_failed.fetch_add(1, Relaxed);
                Err(CacheError::Failed { detail: first_refusal.unwrap_or_default() })
            }
            WriteOutcome::Indeterminate { acks } => {
                rt.counters.writes_indeterminate.fetch_add(1, Relaxed);
                Err(CacheError::Indeterminate { acks, needed })
            }
        }
    }

    // ----- read-through -----

    /// The value of `key`, loading it with `loader` and storing it when absent. Concurrent
    /// misses for one key on any nodes call the loader once: callers on one node share one
    /// flight, and flights on different nodes take a lease from the key's primary owner, which
    /// answers the others with the loaded value. If the primary cannot be reached the caller
    /// loads on its own (a second load is then possible; a lost value is not).
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        loader: F,
    ) -> Result<Value, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let key = Bytes::copy_from_slice(key.as_ref());
        if let Some(v) = self.get(&key).await? {
            return Ok(v);
        }
        let s = self.state();
        let flight = self.rt.flight(&s.name, &key);
        let result = flight.get_or_init(|| self.load(&s, key.clone(), loader)).await.clone();
        self.rt.end_flight(&s.name, &key, &flight);
        result.map(Value::from)
    }

    /// Asks the key's primary for the read-through lease. `Ok`: another caller loaded the value
    /// meanwhile. `Err(primary)`: this caller must load, then release the lease to `primary`
    /// (`None` when no primary could be reached: load without a lease).
    async fn lease(&self, s: &BucketState, key: &Bytes) -> Result<Bytes, Option<NodeId>> {
        let rt = &self.rt;
        let kh = key_hash(s.namespace(), key);
        let wait = rt.config.lease_timeout + rt.config.request_timeout;
        let mut primary_down = false;
        for _attempt in 0..3 {
            let ring = rt.ring();
            let Some(primary) = ring.owners(kh, 1).into_iter().next() else { break };
            let op = CacheOp::Lease(Lease { bucket: s.name.to_string(), key: key.clone() });
            match rt.call(&primary, op, wait).await {
                Ok(CacheReply::Lease(l)) if !l.granted => {
                    if let Some(v) = self.live_value(l.record.and_then(WireRecord::into_record)) {
                        return Ok(v.into_bytes());
                    }
                }
                Ok(CacheReply::Lease(_)) => return Err(Some(primary)),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(primary = %primary, error = %e, "read-through lease failed");
                    primary_down = true;
                    // Membership may be about to replace the primary; give it a moment.
                    tokio::time::sleep(rt.config.request_timeout / 4).await;
                }
            }
        }
        if primary_down {
            tracing::warn!(bucket = %s.name, "no lease from the key's primary; loading without one");
        }
        Err(None)
    }

    async fn load<F, Fut, E>(
        &self,
        s: &Arc<BucketState>,
        key: Bytes,
        loader: F,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let primary = match self.lease(s, &key).await {
            Ok(loaded_elsewhere) => return Ok(loaded_elsewhere),
            Err(primary) => primary,
        };
        let rt = &self.rt;
        rt.counters.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loaded = loader().await.map_err(|e| CacheError::Load(Arc::from(e.into())));
        let written = match &loaded {
            Ok(v) => match self.live_record(s, &key, v.clone(), None) {
                Ok(record) => {
                    match self
                        .replicate(s, key.clone(), record.clone(), WriteOptions::default())
                        .await
                    {
                        // Indeterminate: some owners have it; the waiters get it from the lease.
                        Ok(version) => Some(Record { version, ..record }),
                        Err(CacheError::Indeterminate { .. }) => Some(record),
                        Err(e) => {
                            tracing::warn!(bucket = %s.name, error = %e, "read-through value not stored");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket = %s.name, error = %e, "read-through value not storable");
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(primary) = primary {
            let op = CacheOp::Release(Release {
                bucket: s.name.to_string(),
                key,
                record: written.as_ref().map(WireRecord::from),
            });
            if let Err(e) = rt.call(&primary, op, rt.config.request_timeout).await {
                tracing::debug!(error = %e, "lease release failed; it expires on its own");
            }
        }
        loaded
    }
}

/// The future of [`CacheBucket::get`] and [`CacheBucket::get_with`]: ready at its first poll
/// when this node's replica answered (when the read was called), else asking the key's owners.
/// A few words, not a state machine holding the network path: a local read builds and polls
/// nothing more (docs/BENCHMARKS.md).
#[must_use = "a read that needs the network does nothing unless awaited"]
pub struct Get<'a>(GetState<'a>);

enum GetState<'a> {
    Answered(Option<Value>),
    Asking(Pin<Box<dyn Future<Output = Result<Option<Value>, CacheError>> + Send + 'a>>),
    Done,
}

impl Future for Get<'_> {
    type Output = Result<Option<Value>, CacheError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().0;
        let out = match state {
            GetState::Answered(value) => Ok(value.take()),
            GetState::Asking(asking) => std::task::ready!(asking.as_mut().poll(cx)),
            GetState::Done => panic!("a cache read polled after it completed"),
        };
        *state = GetState::Done;
        Poll::Ready(out)
    }
}

impl std::fmt::Debug for Get<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            GetState::Answered(_) => "Get(answered)",
            GetState::Asking(_) => "Get(asking)",
            GetState::Done => "Get(done)",
        })
    }
}

/// A replica write in flight (see `CacheBucket::write_round`): the newer version that
/// superseded it, if one did.
type ReplicaWrite = std::pin::Pin<
    Box<dyn Future<Output = Result<Option<HlcTime>, crate::cluster::MessagingError>> + Send>,
>;

/// Replica writes polled in the writer's task. Dropped with some still running (the write's
/// outcome is known, or the caller gave up), they finish in one background task; that task's
/// own `InFlight` is `detached`: dropped (the runtime is stopping), it lets them go.
struct InFlight(Vec<Option<ReplicaWrite>>, Detached);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Detached {
    No,
    Yes,
}

impl InFlight {
    /// Polls every running write; the result of one that finished, if any.
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<Result<Option<HlcTime>, crate::cluster::MessagingError>> {
        for slot in &mut self.0 {
            if let Some(call) = slot
                && let std::task::Poll::Ready(r) = call.as_mut().poll(cx)
            {
                *slot = None;
                return Some(r);
            }
        }
        None
    }

    fn is_done(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let rest: Vec<ReplicaWrite> = self.0.drain(..).flatten().collect();
        if rest.is_empty() || self.1 == Detached::Yes {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut rest = InFlight(rest.into_iter().map(Some).collect(), Detached::Yes);
            handle.spawn(std::future::poll_fn(move |cx| {
                while rest.poll_next(cx).is_some() {}
                if rest.is_done() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
            }));
        }
    }
}
