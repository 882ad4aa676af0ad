//! The local bucket store: the per-node engine the distributed cache sits on.
//!
//! A [`Store`] holds named [`Bucket`]s. Each bucket is bounded (entries, bytes or both),
//! expires values at an absolute time, versions every write with the node's hybrid logical
//! clock, keeps tombstones for deletes and merges replicated writes by last-writer-wins.
//!
//! ```
//! use std::time::Duration;
//! use mycorrizal::store::{BucketConfig, Store, StoreConfig};
//! use mycorrizal_core::NodeId;
//!
//! let store = Store::new(StoreConfig::new(NodeId::new("node-1")?));
//! let users = store.create_bucket(
//!     BucketConfig::builder("users").max_entries(10_000).default_ttl(Duration::from_secs(60)).build()?,
//! )?;
//! users.set("alice", "admin")?;
//! assert_eq!(users.get("alice").as_deref(), Some(&b"admin"[..]));
//! assert!(users.delete("alice")?);
//! assert_eq!(users.get("alice"), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bucket;
mod config;
mod engine;
mod error;
mod expiry;
mod key;
mod packed;
mod stats;
mod value;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

pub use bucket::{Bucket, WriteOutcome};
pub(crate) use bucket::{Scanned, wire_size};
pub use config::{
    BucketConfig, BucketConfigBuilder, BucketName, Capacity, ConfigError, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRY_SIZE, DEFAULT_TOMBSTONE_TTL, MAX_KEY_LEN, MAX_TTL, MIN_TTL, StoreConfig,
};
pub(crate) use config::{check_duration, check_range, check_ttl};
pub use engine::ENTRY_OVERHEAD;
pub use error::StoreError;
pub use stats::BucketStats;
pub use value::Value;

use crate::clock::{Clock, NodeClock, SystemClock};

/// A node's buckets. Cloning is cheap; clones share the buckets.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    clock: Arc<NodeClock>,
    /// Bucket declarations are rare and reads of this map are short: a std `RwLock` is enough,
    /// and it is never held across an `.await`.
    buckets: RwLock<BTreeMap<BucketName, Bucket>>,
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Buckets swept.
    pub buckets: usize,
    /// Expired values and purged tombstones removed, over all buckets.
    pub removed: usize,
}

impl Store {
    /// A store on the system clock.
    pub fn new(config: StoreConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A store reading time from `clock` (a [`ManualClock`](crate::clock::ManualClock) in tests).
    pub fn with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        let node_clock =
            Arc::new(NodeClock::new(config.node_id().tag(), clock, config.max_clock_drift()));
        Store {
            inner: Arc::new(Inner {
                config,
                clock: node_clock,
                buckets: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The node's hybrid logical clock.
    pub fn clock(&self) -> &Arc<NodeClock> {
        &self.inner.clock
    }

    /// Creates a bucket, or returns the existing one if it has exactly this configuration.
    /// A different configuration under an existing name is [`StoreError::BucketConflict`].
    pub fn create_bucket(&self, config: BucketConfig) -> Result<Bucket, StoreError> {
        let mut buckets = crate::sync::write(&self.inner.buckets);
        if let Some(existing) = buckets.get(config.name()) {
            if existing.config() == &config {
                return Ok(existing.clone());
            }
            return Err(StoreError::BucketConflict {
                name: config.name().to_string(),
                existing: Box::new(existing.config().clone()),
                requested: Box::new(config),
            });
        }
        let granularity = self.inner.config.expiry_granularity().as_millis() as u64;
        let bucket = Bucket::new(config, self.inner.clock.clone(), granularity)?;
        buckets.insert(bucket.config().name().clone(), bucket.clone());
        Ok(bucket)
    }

    /// Replaces bucket `config.name()` (created if absent) with one configured by `config`,
    /// carrying over every record the old one holds that the new one admits. Handles to the old
    /// bucket keep working on the old data; the distributed cache uses this when a conflicting
    /// earlier declaration wins.
    pub fn replace_bucket(&self, config: BucketConfig) -> Result<Bucket, StoreError> {
        let granularity = self.inner.config.expiry_granularity().as_millis() as u64;
        let bucket = Bucket::new(config, self.inner.clock.clone(), granularity)?;
        let mut buckets = crate::sync::write(&self.inner.buckets);
        if let Some(old) = buckets.get(bucket.config().name()) {
            for (key, record) in old.entries() {
                // Entries the new bucket refuses (too large for it) are dropped with the old one.
                let _ = bucket.apply(&key, record);
            }
        }
        buckets.insert(bucket.config().name().clone(), bucket.clone());
        Ok(bucket)
    }

    /// The bucket named `name`.
    pub fn bucket(&self, name: &str) -> Result<Bucket, StoreError> {
        let buckets = crate::sync::read(&self.inner.buckets);
        BucketName::new(name)
            .ok()
            .and_then(|n| buckets.get(&n).cloned())
            .ok_or_else(|| StoreError::UnknownBucket { name: name.to_owned() })
    }

    /// Every bucket, ordered by name.
    pub fn buckets(&self) -> Vec<Bucket> {
        crate::sync::read(&self.inner.buckets).values().cloned().collect()
    }

    /// Removes every expired value and every tombstone past its window, in every bucket.
    pub fn sweep_expired(&self) -> SweepReport {
        let buckets = self.buckets();
        let removed = buckets.iter().map(Bucket::sweep_expired).sum();
        SweepReport { buckets: buckets.len(), removed }
    }

    /// Sweeps every `interval` until `shutdown` resolves. Run it on the node's runtime; under
    /// tokio's paused clock in tests it advances with virtual time.
    pub async fn run_sweeper(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                _ = tick.tick() => {
                    let report = self.sweep_expired();
                    if report.removed > 0 {
                        tracing::debug!(removed = report.removed, "expiry sweep");
                    }
                }
            }
        }
    }
}
