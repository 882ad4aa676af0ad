//! Bucket declarations, known cluster-wide.
//!
//! Every node keeps the same map from bucket name to configuration. A declaration is spread
//! to every live member when it is made and exchanged with every peer at the start of each
//! sync round, so a node that joins later learns it too. Two nodes declaring one name with
//! different configurations at the same moment converge on the earliest declaration (by HLC
//! time, then node tag); the other declarer gets [`CacheError::Conflict`](super::CacheError).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use mycorrizal_core::{
    HlcTime, NodeTag, Timestamp,
    wire::cache::{BucketDecl, WireConsistency},
};

use crate::store::{Bucket, BucketConfig, BucketName, ConfigError, Scanned, Store, StoreError};

/// One declared bucket on this node: its configuration and local replica.
pub(crate) struct BucketState {
    pub config: BucketConfig,
    pub local: Bucket,
    /// The placement namespace: the bucket name's bytes.
    pub name: BucketName,
    /// When the declaration was first made; the earliest wins a conflict.
    pub since: Timestamp,
    /// Set when a conflicting earlier declaration replaced this one; handles re-resolve.
    pub retired: AtomicBool,
}

impl BucketState {
    fn new(local: Bucket, config: BucketConfig, since: Timestamp) -> Arc<Self> {
        Arc::new(BucketState {
            name: config.name().clone(),
            config,
            local,
            since,
            retired: AtomicBool::new(false),
        })
    }

    pub fn namespace(&self) -> &[u8] {
        self.name.as_str().as_bytes()
    }

    /// Every entry not expired at `now_ms`, with its key's placement hash: the one walk that
    /// digests, version exchanges and hand-offs share (paced by the caller, `walk::Pace`).
    /// Nothing is copied out of an entry until the caller keeps it.
    pub fn hashed(&self, now_ms: u64) -> impl Iterator<Item = (u64, Scanned)> + '_ {
        self.local
            .scan()
            .filter(move |e| !e.is_expired(now_ms))
            .map(|e| (mycorrizal_core::placement::key_hash(self.namespace(), e.key()), e))
    }

    /// Reads that consulted this replica: its store's hits and misses.
    fn reads(&self) -> u64 {
        let stats = self.local.stats();
        stats.hits + stats.misses
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// What merging a declaration did.
pub(crate) enum Merged {
    /// The name was new here; the bucket now exists.
    Added(Arc<BucketState>),
    /// Same configuration as ours.
    Same(Arc<BucketState>),
    /// Ours is earlier and stays; the declaration lost.
    Kept(Arc<BucketState>),
    /// The declaration is earlier and replaced ours.
    Replaced { old: Arc<BucketState>, new: Arc<BucketState> },
}

#[derive(Default)]
pub(crate) struct Catalog {
    buckets: Mutex<BTreeMap<BucketName, Arc<BucketState>>>,
    /// Reads the replicas of replaced declarations served before they were replaced (written
    /// with `buckets` locked, so [`Catalog::reads_consulted`] never goes back).
    replaced_reads: AtomicU64,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<Arc<BucketState>> {
        crate::sync::lock(&self.buckets).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<BucketState>> {
        crate::sync::lock(&self.buckets).values().cloned().collect()
    }

    /// Reads that consulted this node's replicas since it started: the hits and misses of every
    /// bucket's store, replaced ones included (reads a replaced replica served after it was
    /// replaced, by a handle that had not re-resolved yet, are not counted).
    pub fn reads_consulted(&self) -> u64 {
        let buckets = crate::sync::lock(&self.buckets);
        let live: u64 = buckets.values().map(|b| b.reads()).sum();
        live + self.replaced_reads.load(Ordering::Relaxed)
    }

    pub fn decls(&self) -> Vec<BucketDecl> {
        self.all().iter().map(|b| decl_of(&b.config, b.since)).collect()
    }

    /// Merges a declaration (ours or a peer's) into the catalog and the store.
    pub fn merge(
        &self,
        store: &Store,
        config: BucketConfig,
        since: Timestamp,
    ) -> Result<Merged, StoreError> {
        let mut buckets = crate::sync::lock(&self.buckets);
        let Some(current) = buckets.get(config.name()).cloned() else {
            let state = BucketState::new(store.create_bucket(config.clone())?, config, since);
            buckets.insert(state.name.clone(), state.clone());
            return Ok(Merged::Added(state));
        };
        if current.config == config {
            return Ok(Merged::Same(current));
        }
        if (current.since.time, current.since.node) <= (since.time, since.node) {
            return Ok(Merged::Kept(current));
        }
        let state = BucketState::new(store.replace_bucket(config.clone())?, config, since);
        current.retired.store(true, Ordering::Relaxed);
        self.replaced_reads.fetch_add(current.reads(), Ordering::Relaxed);
        buckets.insert(state.name.clone(), state.clone());
        Ok(Merged::Replaced { old: current, new: state })
    }
}

/// The wire form of a declaration.
pub(crate) fn decl_of(c: &BucketConfig, since: Timestamp) -> BucketDecl {
    BucketDecl {
        name: c.name().to_string(),
        default_ttl_ms: c.default_ttl().map_or(0, |t| t.as_millis() as u64),
        max_entries: c.capacity().max_entries().unwrap_or(0),
        max_bytes: c.capacity().max_bytes().unwrap_or(0),
        max_entry_size: c.max_entry_size(),
        tombstone_ttl_ms: c.tombstone_ttl().as_millis() as u64,
        replicas: c.replicas(),
        read_consistency: WireConsistency::from(c.read_consistency()) as i32,
        write_consistency: WireConsistency::from(c.write_consistency()) as i32,
        declared_time: since.time.to_raw(),
        declared_node: since.node.0,
    }
}

/// A declaration from the wire, validated exactly like a locally built configuration.
pub(crate) fn config_of(d: &BucketDecl) -> Result<(BucketConfig, Timestamp), ConfigError> {
    let consistency = |field: &'static str, v: i32| {
        WireConsistency::try_from(v)
            .ok()
            .and_then(WireConsistency::consistency)
            .ok_or(ConfigError::OutOfRange { field, value: v as u64, min: 1, max: 3 })
    };
    let mut b = BucketConfig::builder(&d.name)
        .max_entry_size(d.max_entry_size)
        .tombstone_ttl(Duration::from_millis(d.tombstone_ttl_ms))
        .replicas(d.replicas)
        .read_consistency(consistency("read_consistency", d.read_consistency)?)
        .write_consistency(consistency("write_consistency", d.write_consistency)?);
    if d.default_ttl_ms != 0 {
        b = b.default_ttl(Duration::from_millis(d.default_ttl_ms));
    }
    if d.max_entries != 0 {
        b = b.max_entries(d.max_entries);
    }
    if d.max_bytes != 0 {
        b = b.max_bytes(d.max_bytes);
    }
    let since =
        Timestamp { time: HlcTime::from_raw(d.declared_time), node: NodeTag(d.declared_node) };
    Ok((b.build()?, since))
}

#[cfg(test)]
mod tests {
    use mycorrizal_core::quorum::Consistency;

    use super::*;

    #[test]
    fn reads_counted_by_a_replaced_declaration_are_kept() {
        let store =
            Store::new(crate::store::StoreConfig::new(mycorrizal_core::NodeId::new("n").unwrap()));
        let catalog = Catalog::default();
        let at = |t| Timestamp { time: HlcTime::new(t, 0), node: NodeTag(1) };
        let ours = BucketConfig::builder("b").max_entries(100).build().unwrap();
        let Merged::Added(first) = catalog.merge(&store, ours, at(20)).unwrap() else {
            panic!("the name was new")
        };
        first.local.set(&b"k"[..], bytes::Bytes::from_static(b"v")).unwrap();
        assert!(first.local.get(b"k").is_some());
        assert!(first.local.get(b"absent").is_none());
        assert_eq!(catalog.reads_consulted(), 2, "a hit and a miss");
        // An earlier declaration of the name (another configuration) replaces ours.
        let earlier = BucketConfig::builder("b").max_entries(200).build().unwrap();
        let Merged::Replaced { new, .. } = catalog.merge(&store, earlier, at(10)).unwrap() else {
            panic!("the earlier declaration wins")
        };
        assert_eq!(catalog.reads_consulted(), 2, "the replaced bucket's reads are kept");
        assert!(new.local.get(b"k").is_some(), "the entries move to the replacement");
        assert_eq!(catalog.reads_consulted(), 3);
    }

    #[test]
    fn declarations_round_trip() {
        let since = Timestamp { time: HlcTime::new(5, 1), node: NodeTag(3) };
        for c in [
            BucketConfig::builder("a").build().unwrap(),
            BucketConfig::builder("b")
                .default_ttl(Duration::from_secs(60))
                .max_entries(1000)
                .max_bytes(1 << 20)
                .replicas(2)
                .read_consistency(Consistency::Quorum)
                .write_consistency(Consistency::All)
                .build()
                .unwrap(),
        ] {
            assert_eq!(config_of(&decl_of(&c, since)).unwrap(), (c, since));
        }
        let mut bad = decl_of(&BucketConfig::builder("c").build().unwrap(), since);
        bad.replicas = 0;
        assert!(config_of(&bad).unwrap_err().to_string().contains("replicas"));
        bad.replicas = 1;
        bad.write_consistency = 9;
        assert!(config_of(&bad).unwrap_err().to_string().contains("write_consistency"));
    }
}
