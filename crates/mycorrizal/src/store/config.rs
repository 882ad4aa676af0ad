//! Validated configuration of buckets and of the store.
//!
//! Every construction path goes through a builder whose `build()` calls one `validate()`; a
//! [`BucketConfig`] that exists is a valid one. Errors name the field and the bound it broke.

use std::{fmt, num::NonZeroU64, sync::Arc, time::Duration};

use mycorrizal_core::{NodeId, quorum::Consistency};

/// Longest bucket name, in bytes.
pub const MAX_BUCKET_NAME_LEN: usize = 128;
/// Longest TTL accepted anywhere (default or per key): 366 days. Anything longer is almost
/// certainly a unit mistake (seconds passed as milliseconds) and would pin memory for years.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Shortest TTL: one millisecond, the clock's resolution.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// Smallest `max_bytes`: 4 KiB.
pub const MIN_MAX_BYTES: u64 = 4 * 1024;
/// Largest `max_bytes`: 1 TiB.
pub const MAX_MAX_BYTES: u64 = 1 << 40;
/// Largest `max_entries`: 2³².
pub const MAX_MAX_ENTRIES: u64 = 1 << 32;
/// Largest single entry (key plus value) any bucket can be configured to take: 512 MiB.
pub const MAX_ENTRY_SIZE_LIMIT: u64 = 512 * 1024 * 1024;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 4 * 1024;
/// `max_bytes` when neither `max_bytes` nor `max_entries` is set: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default largest entry: 1 MiB, or a quarter of `max_bytes` when that is smaller.
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1024 * 1024;
/// Default tombstone window: one hour.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// Default replication factor of a bucket in a cluster: 3 copies of every key.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Most copies of a key a bucket may ask for.
pub const MAX_REPLICAS: u32 = 16;
/// Bounds of the tombstone window.
pub const TOMBSTONE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600));

/// Why a configuration was refused. Nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The bucket name is empty, too long or has a character outside `[A-Za-z0-9_.:-]`.
    #[error("bucket name {name:?} is invalid: {reason}")]
    InvalidBucketName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration field is outside its bounds.
    #[error("{field} = {value:?} is out of range; allowed {min:?} ..= {max:?}")]
    DurationOutOfRange {
        /// The field, as named in the builder.
        field: &'static str,
        /// The refused value.
        value: Duration,
        /// Smallest allowed.
        min: Duration,
        /// Largest allowed.
        max: Duration,
    },
    /// A numeric field is outside its bounds.
    #[error("{field} = {value} is out of range; allowed {min} ..= {max}")]
    OutOfRange {
        /// The field, as named in the builder.
        field: &'static str,
        /// The refused value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// `max_entry_size` cannot be honoured: even one shard holding all of `max_bytes` could not
    /// admit an entry that large.
    #[error(
        "max_entry_size = {max_entry_size} bytes does not fit in max_bytes = {max_bytes} \
         (largest admissible entry: {admissible} bytes); raise max_bytes or lower max_entry_size"
    )]
    EntryLargerThanBucket {
        /// Requested largest entry.
        max_entry_size: u64,
        /// The bucket's byte budget.
        max_bytes: u64,
        /// The largest entry this budget can admit.
        admissible: u64,
    },
    /// A node id was refused.
    #[error("node_id: {0}")]
    NodeId(#[from] mycorrizal_core::NodeIdError),
}

/// The validated name of a bucket: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketName(Arc<str>);

impl BucketName {
    /// Validates and wraps `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, ConfigError> {
        let name = name.as_ref();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_BUCKET_NAME_LEN {
            Some("longer than 128 bytes")
        } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)) {
            Some("only ASCII letters, digits, '_', '.', ':' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ConfigError::InvalidBucketName { name: name.to_owned(), reason }),
            None => Ok(BucketName(Arc::from(name))),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by name are looked up by `&str`: a name off the wire needs no validation or
/// allocation just to be found (a name that would not validate is simply not there). `Eq`,
/// `Ord` and `Hash` are those of the string, as `Borrow` requires.
impl std::borrow::Borrow<str> for BucketName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// How a bucket bounds its memory. At least one bound always applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// At most this many entries (tombstones included); entry size is bounded by
    /// `max_entry_size` only.
    Entries(NonZeroU64),
    /// At most this many bytes of keys, values and per-entry overhead.
    Bytes(NonZeroU64),
    /// Both: every entry is charged at least `max_bytes / max_entries`, so neither bound can be
    /// exceeded.
    Both {
        /// Entry bound.
        max_entries: NonZeroU64,
        /// Byte bound.
        max_bytes: NonZeroU64,
    },
}

impl Capacity {
    /// The entry bound, if any.
    pub fn max_entries(&self) -> Option<u64> {
        match *self {
            Capacity::Entries(n) | Capacity::Both { max_entries: n, .. } => Some(n.get()),
            Capacity::Bytes(_) => None,
        }
    }

    /// The byte bound, if any.
    pub fn max_bytes(&self) -> Option<u64> {
        match *self {
            Capacity::Bytes(b) | Capacity::Both { max_bytes: b, .. } => Some(b.get()),
            Capacity::Entries(_) => None,
        }
    }
}

/// A bucket's configuration. Build it with [`BucketConfig::builder`].
///
/// ```
/// use std::time::Duration;
/// use mycorrizal::store::BucketConfig;
///
/// let sessions = BucketConfig::builder("sessions")
///     .default_ttl(Duration::from_secs(1800))
///     .max_entries(100_000)
///     .max_bytes(256 * 1024 * 1024)
///     .build()?;
/// assert_eq!(sessions.name().as_str(), "sessions");
/// # Ok::<(), mycorrizal::store::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketConfig {
    name: BucketName,
    default_ttl: Option<Duration>,
    capacity: Capacity,
    max_entry_size: u64,
    tombstone_ttl: Duration,
    replicas: u32,
    read_consistency: Consistency,
    write_consistency: Consistency,
}

impl BucketConfig {
    /// Starts a configuration for bucket `name` with the defaults: no default TTL, 64 MiB,
    /// entries up to 1 MiB, tombstones kept one hour; in a cluster 3 replicas, reads at
    /// `One`, writes at `Quorum`.
    pub fn builder(name: impl Into<String>) -> BucketConfigBuilder {
        BucketConfigBuilder {
            name: name.into(),
            default_ttl: None,
            max_entries: None,
            max_bytes: None,
            max_entry_size: None,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            replicas: DEFAULT_REPLICAS,
            read_consistency: Consistency::One,
            write_consistency: Consistency::Quorum,
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &BucketName {
        &self.name
    }

    /// TTL applied to writes that do not give their own; `None`: such writes never expire.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// How the bucket bounds its memory.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Largest entry (key plus value bytes) the bucket was asked to admit. The store may admit
    /// slightly more; `Bucket::max_entry_size` gives the exact figure.
    pub fn max_entry_size(&self) -> u64 {
        self.max_entry_size
    }

    /// How long a delete's tombstone is kept before it may be purged.
    ///
    /// Trade-off: longer windows hold memory for deleted keys; shorter ones risk an old copy of
    /// a deleted value (on a replica that was away longer than the window) coming back.
    pub fn tombstone_ttl(&self) -> Duration {
        self.tombstone_ttl
    }

    /// Copies of every key kept in a cluster (fewer while fewer nodes are alive). The local
    /// store ignores it.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Consistency of reads that do not ask for one.
    pub fn read_consistency(&self) -> Consistency {
        self.read_consistency
    }

    /// Consistency of writes that do not ask for one.
    pub fn write_consistency(&self) -> Consistency {
        self.write_consistency
    }
}

impl fmt::Display for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        if let Some(n) = self.capacity.max_entries() {
            write!(f, "max_entries: {n}, ")?;
        }
        if let Some(b) = self.capacity.max_bytes() {
            write!(f, "max_bytes: {b}, ")?;
        }
        match self.default_ttl {
            Some(ttl) => write!(f, "default_ttl: {ttl:?}, ")?,
            None => write!(f, "default_ttl: none, ")?,
        }
        write!(
            f,
            "max_entry_size: {}, tombstone_ttl: {:?}, replicas: {}, read: {:?}, write: {:?}}}",
            self.max_entry_size,
            self.tombstone_ttl,
            self.replicas,
            self.read_consistency,
            self.write_consistency
        )
    }
}

/// Builder for [`BucketConfig`]; nothing is checked until [`BucketConfigBuilder::build`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BucketConfigBuilder {
    name: String,
    default_ttl: Option<Duration>,
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    max_entry_size: Option<u64>,
    tombstone_ttl: Duration,
    replicas: u32,
    read_consistency: Consistency,
    write_consistency: Consistency,
}

impl BucketConfigBuilder {
    /// Copies of every key in a cluster. Bounds: 1 ..= 16. Default: 3.
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// Consistency of reads that do not ask for one. Default: `One` (the local replica when
    /// this node holds one).
    pub fn read_consistency(mut self, c: Consistency) -> Self {
        self.read_consistency = c;
        self
    }

    /// Consistency of writes that do not ask for one. Default: `Quorum`.
    pub fn write_consistency(mut self, c: Consistency) -> Self {
        self.write_consistency = c;
        self
    }

    /// TTL for writes that give none. Bounds: 1 ms ..= 366 days. Default: none (no expiry).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Bound on entries, tombstones included. Bounds: 1 ..= 2³². Default: none.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// Bound on bytes (keys + values + a fixed per-entry overhead). Bounds: 4 KiB ..= 1 TiB.
    /// Default: 64 MiB when `max_entries` is not set either, otherwise none.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Largest entry (key + value bytes) to admit; larger writes are refused with
    /// `StoreError::EntryTooLarge`. Bounds: 1 ..= min(max_bytes, 512 MiB). Default: 1 MiB or
    /// a quarter of `max_bytes`, whichever is smaller. Raising it reduces the number of lock
    /// shards the bucket can use, since a shard must be able to hold the largest entry.
    pub fn max_entry_size(mut self, n: u64) -> Self {
        self.max_entry_size = Some(n);
        self
    }

    /// How long tombstones are kept. Bounds: 1 s ..= 30 days. Default: 1 hour.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Validates every field and builds the configuration.
    pub fn build(self) -> Result<BucketConfig, ConfigError> {
        let name = BucketName::new(&self.name)?;
        if let Some(ttl) = self.default_ttl {
            check_duration("default_ttl", ttl, MIN_TTL, MAX_TTL)?;
        }
        check_duration(
            "tombstone_ttl",
            self.tombstone_ttl,
            TOMBSTONE_TTL_RANGE.0,
            TOMBSTONE_TTL_RANGE.1,
        )?;
        check_range("replicas", u64::from(self.replicas), 1, u64::from(MAX_REPLICAS))?;
        let max_entries = self
            .max_entries
            .map(|n| check_range("max_entries", n, 1, MAX_MAX_ENTRIES).map(nonzero))
            .transpose()?;
        let max_bytes = self
            .max_bytes
            .map(|n| check_range("max_bytes", n, MIN_MAX_BYTES, MAX_MAX_BYTES).map(nonzero))
            .transpose()?;
        let capacity = match (max_entries, max_bytes) {
            (Some(max_entries), Some(max_bytes)) => Capacity::Both { max_entries, max_bytes },
            (Some(n), None) => Capacity::Entries(n),
            (None, Some(b)) => Capacity::Bytes(b),
            (None, None) => Capacity::Bytes(nonzero(DEFAULT_MAX_BYTES)),
        };
        let entry_limit = capacity.max_bytes().unwrap_or(u64::MAX).min(MAX_ENTRY_SIZE_LIMIT);
        let max_entry_size = match self.max_entry_size {
            Some(n) => check_range("max_entry_size", n, 1, entry_limit)?,
            None => DEFAULT_MAX_ENTRY_SIZE.min(capacity.max_bytes().map_or(u64::MAX, |b| b / 4)),
        };
        Ok(BucketConfig {
            name,
            default_ttl: self.default_ttl,
            capacity,
            max_entry_size,
            tombstone_ttl: self.tombstone_ttl,
            replicas: self.replicas,
            read_consistency: self.read_consistency,
            write_consistency: self.write_consistency,
        })
    }
}

/// Checks a TTL given at a call site (`set_with_ttl`, `expire`) against the same bounds as
/// `default_ttl`.
pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration, ConfigError> {
    check_duration("ttl", ttl, MIN_TTL, MAX_TTL)
}

/// Checks a duration field against its bounds: the one place bounds are checked.
pub(crate) fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::DurationOutOfRange { field, value, min, max });
    }
    Ok(value)
}

pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange { field, value, min, max });
    }
    Ok(value)
}

fn nonzero(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// Configuration of a node's local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    node_id: NodeId,
    max_clock_drift: Duration,
    expiry_granularity: Duration,
}

/// Bounds of [`StoreConfig::max_clock_drift`].
pub const MAX_CLOCK_DRIFT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Bounds of [`StoreConfig::expiry_granularity`].
pub const EXPIRY_GRANULARITY_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(60));

impl StoreConfig {
    /// Defaults for `node_id`: 5 s maximum clock drift, 1 s expiry granularity.
    pub fn new(node_id: NodeId) -> Self {
        StoreConfig {
            node_id,
            max_clock_drift: Duration::from_secs(5),
            expiry_granularity: Duration::from_secs(1),
        }
    }

    /// How far ahead of ours a remote write's clock may be before the write is refused.
    /// Bounds: 1 ms ..= 1 h. Default 5 s. Larger tolerates worse NTP; smaller limits how far a
    /// bad clock can push versions into the future.
    pub fn with_max_clock_drift(mut self, drift: Duration) -> Result<Self, ConfigError> {
        let (min, max) = MAX_CLOCK_DRIFT_RANGE;
        self.max_clock_drift = check_duration("max_clock_drift", drift, min, max)?;
        Ok(self)
    }

    /// Width of the expiry index's time slots. Bounds: 1 ms ..= 60 s. Default 1 s. Expired
    /// entries are never served either way (reads check expiry); this only decides how soon
    /// after expiring the sweep reclaims their memory and how many index slots exist.
    pub fn with_expiry_granularity(mut self, slot: Duration) -> Result<Self, ConfigError> {
        let (min, max) = EXPIRY_GRANULARITY_RANGE;
        self.expiry_granularity = check_duration("expiry_granularity", slot, min, max)?;
        Ok(self)
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// See [`StoreConfig::with_max_clock_drift`].
    pub fn max_clock_drift(&self) -> Duration {
        self.max_clock_drift
    }

    /// See [`StoreConfig::with_expiry_granularity`].
    pub fn expiry_granularity(&self) -> Duration {
        self.expiry_granularity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bound_memory() {
        let c = BucketConfig::builder("b").build().unwrap();
        assert_eq!(c.capacity(), Capacity::Bytes(nonzero(DEFAULT_MAX_BYTES)));
        assert_eq!(c.max_entry_size(), DEFAULT_MAX_ENTRY_SIZE);
        let small = BucketConfig::builder("b").max_bytes(8192).build().unwrap();
        assert_eq!(small.max_entry_size(), 2048);
        let entries = BucketConfig::builder("b").max_entries(10).build().unwrap();
        assert_eq!(entries.capacity(), Capacity::Entries(nonzero(10)));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |b: BucketConfigBuilder| b.build().unwrap_err();
        assert!(matches!(
            err(BucketConfig::builder("")),
            ConfigError::InvalidBucketName { reason: "empty", .. }
        ));
        assert!(matches!(err(BucketConfig::builder("a b")), ConfigError::InvalidBucketName { .. }));
        assert!(matches!(
            err(BucketConfig::builder("x".repeat(129))),
            ConfigError::InvalidBucketName { .. }
        ));
        assert_eq!(
            err(BucketConfig::builder("b").max_entries(0)),
            ConfigError::OutOfRange {
                field: "max_entries",
                value: 0,
                min: 1,
                max: MAX_MAX_ENTRIES
            }
        );
        assert!(matches!(
            err(BucketConfig::builder("b").max_bytes(0)),
            ConfigError::OutOfRange { field: "max_bytes", .. }
        ));
        assert!(matches!(
            err(BucketConfig::builder("b").default_ttl(Duration::ZERO)),
            ConfigError::DurationOutOfRange { field: "default_ttl", .. }
        ));
        assert!(matches!(
            err(BucketConfig::builder("b").default_ttl(Duration::from_secs(400 * 86400))),
            ConfigError::DurationOutOfRange { field: "default_ttl", .. }
        ));
        assert!(matches!(
            err(BucketConfig::builder("b").tombstone_ttl(Duration::from_millis(10))),
            ConfigError::DurationOutOfRange { field: "tombstone_ttl", .. }
        ));
        assert!(matches!(
            err(BucketConfig::builder("b").max_bytes(8192).max_entry_size(8193)),
            ConfigError::OutOfRange { field: "max_entry_size", max: 8192, .. }
        ));
        let msg = err(BucketConfig::builder("b").max_entries(0)).to_string();
        assert!(msg.contains("max_entries"), "{msg}");
    }

    #[test]
    fn store_config_bounds() {
        let id = NodeId::new("n1").unwrap();
        assert!(StoreConfig::new(id.clone()).with_max_clock_drift(Duration::ZERO).is_err());
        assert!(
            StoreConfig::new(id.clone()).with_expiry_granularity(Duration::from_secs(61)).is_err()
        );
        assert!(StoreConfig::new(id).with_expiry_granularity(Duration::from_millis(50)).is_ok());
    }
}
