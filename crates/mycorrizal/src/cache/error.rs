//! Errors of the distributed cache.

use std::sync::Arc;

use crate::{
    cluster::MessagingError,
    store::{BucketConfig, ConfigError, StoreError},
};

/// Why [`CacheBucket::try_get_local`](super::CacheBucket::try_get_local) could not answer
/// without the network: read with [`CacheBucket::get_with`](super::CacheBucket::get_with)
/// instead, which asks the key's owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotLocal {
    /// This node holds no replica of the key under the current placement.
    #[error("this node holds no replica of the key")]
    NotAReplica,
    /// This node holds a replica of the key that is still being filled after a placement
    /// change, and does not have the key (yet): an owner may.
    #[error("this node's replica of the key is still filling and lacks it")]
    Filling,
}

/// Why a cache operation did not succeed. Each variant says whether the operation may have
/// taken effect.
///
/// The type is kept to 32 bytes (larger payloads are boxed; a test holds it there), so that a
/// read's `Result<Option<Value>, CacheError>` is no larger than its `Option<Value>`: every
/// read returns one, and at 72 bytes the awaited local get ran a quarter slower
/// (docs/BENCHMARKS.md, "The awaited local get").
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// No bucket of that name is declared. Nothing was done.
    #[error("no bucket named {name:?} is declared")]
    UnknownBucket {
        /// The name asked for.
        name: String,
    },
    /// The bucket configuration was refused. Nothing was declared.
    #[error("bucket configuration: {0}")]
    Config(#[source] Box<ConfigError>),
    /// The key, value or TTL was refused before anything was sent (too long, too large).
    #[error(transparent)]
    Store(Box<StoreError>),
    /// The bucket is already declared in the cluster with another configuration. Nothing was
    /// changed.
    #[error("bucket {:?} is already declared as {existing}; refused {requested}", .existing.name())]
    Conflict {
        /// The configuration the cluster has.
        existing: Box<BucketConfig>,
        /// The configuration asked for.
        requested: Box<BucketConfig>,
    },
    /// Fewer replicas are reachable than the consistency level needs. Nothing was sent.
    #[error("{needed} replicas needed, {reachable} reachable; nothing was written")]
    Unavailable {
        /// Replicas the consistency level needs.
        needed: usize,
        /// Replicas reachable.
        reachable: usize,
    },
    /// Every replica refused the write: it was applied nowhere.
    #[error("every replica refused the write: {detail}")]
    Failed {
        /// The first refusal.
        detail: String,
    },
    /// Not enough replicas acknowledged in time, but some may have applied the write: it may
    /// be visible now and may survive. Retrying with the same value is safe.
    #[error("write indeterminate: {acks} of {needed} acknowledgements; it may have been applied")]
    Indeterminate {
        /// Acknowledgements received.
        acks: usize,
        /// Acknowledgements needed.
        needed: usize,
    },
    /// A read could not hear from enough replicas.
    #[error("read needed {needed} replicas, {answered} answered: {detail}")]
    ReadFailed {
        /// Replicas needed.
        needed: u32,
        /// Replicas that answered.
        answered: u32,
        /// The last failure.
        detail: String,
    },
    /// A request to a replica failed (for operations with a single target).
    #[error(transparent)]
    Messaging(Box<MessagingError>),
    /// A typed value could not be encoded or decoded.
    #[error("value codec: {0}")]
    Codec(String),
    /// The read-through loader failed; nothing was written.
    #[error("loader failed: {0}")]
    Load(Arc<dyn std::error::Error + Send + Sync>),
}

impl From<ConfigError> for CacheError {
    fn from(e: ConfigError) -> Self {
        CacheError::Config(Box::new(e))
    }
}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> Self {
        CacheError::Store(Box::new(e))
    }
}

impl From<MessagingError> for CacheError {
    fn from(e: MessagingError) -> Self {
        CacheError::Messaging(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    /// Every read returns this result: an error type larger than the value would make every
    /// local read move the larger size (see the type's documentation).
    #[test]
    fn a_reads_result_is_no_larger_than_its_value() {
        assert!(std::mem::size_of::<CacheError>() <= 32);
        assert_eq!(
            std::mem::size_of::<Result<Option<Value>, CacheError>>(),
            std::mem::size_of::<Option<Value>>()
        );
    }
}
