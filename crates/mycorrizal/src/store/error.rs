//! Errors of the local store.

use mycorrizal_core::ClockError;

use super::config::{BucketConfig, ConfigError};

/// Why a store operation was refused. Unless a variant says otherwise, nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No bucket of that name was created on this store.
    #[error("no bucket named {name:?}")]
    UnknownBucket {
        /// The name asked for.
        name: String,
    },
    /// `create_bucket` was called for an existing name with a different configuration.
    #[error("bucket {name:?} already exists as {existing}; refused redeclaration as {requested}")]
    BucketConflict {
        /// The bucket's name.
        name: String,
        /// The configuration it has.
        existing: Box<BucketConfig>,
        /// The configuration that was asked for.
        requested: Box<BucketConfig>,
    },
    /// Key plus value exceed the largest entry the bucket admits. Storing it would have meant
    /// evicting it at once (the cache's shard cannot hold it), so it is refused instead.
    #[error(
        "entry of {size} bytes in bucket {bucket:?} exceeds its largest admissible entry of {max} bytes"
    )]
    EntryTooLarge {
        /// The bucket.
        bucket: String,
        /// Key plus value bytes of the refused entry.
        size: u64,
        /// The bucket's limit (see `Bucket::max_entry_size`).
        max: u64,
    },
    /// The key is longer than [`MAX_KEY_LEN`](super::config::MAX_KEY_LEN).
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLong {
        /// Length of the refused key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An argument (a TTL) was out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A replicated write carried a version too far ahead of this node's clock.
    #[error(transparent)]
    Clock(#[from] ClockError),
}
