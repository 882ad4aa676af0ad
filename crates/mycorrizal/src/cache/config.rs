//! Validated configuration of the distributed cache's runtime (per node).

use std::time::Duration;

use crate::store::{ConfigError, check_duration};

/// How a node's cache replicates, repairs and rebalances. Presets: [`CacheConfig::lan`],
/// [`CacheConfig::wan`]; [`CacheConfig::validate`] checks every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a coordinator waits for replicas to answer a read or a write. A write still
    /// short of its acknowledgements then is `Indeterminate`. LAN 2 s, WAN 5 s.
    pub request_timeout: Duration,
    /// How often replicas compare digests even when nothing changed. LAN 30 s, WAN 60 s.
    pub anti_entropy_interval: Duration,
    /// How long membership must be still before rebalancing starts, so a burst of changes
    /// moves data once. LAN 500 ms, WAN 2 s.
    pub rebalance_delay: Duration,
    /// Upper bound on the bytes per second this node moves (sends and pulls) for rebalancing
    /// and anti-entropy, so foreground requests keep their latency. A hand-off's offers and
    /// drops, which move no record but cost a read or a removal per key, are charged 128
    /// bytes a key. Default 4 MiB/s: on a 2-vCPU host running four nodes, a 4th node joining
    /// three that hold 1,000,000 entries at RF=3 takes about 35 s to be ready and 50 s until
    /// every hand-off is done, and the saturating foreground's quorum-set p99 during it is
    /// 2.1-3.4x its value before (docs/BENCHMARKS.md). Raise it on larger machines to
    /// rebalance faster.
    pub sync_rate: u64,
    /// Largest batch of records, or of versions offered in a hand-off, in one rebalancing
    /// message. Default 256 KiB: a message is decoded, and a hand-off offer's confirmations
    /// counted, in one go, so a batch is a unit of work that holds a worker thread; at the
    /// default 4 MiB/s it is still only 16 messages a second.
    pub sync_batch_bytes: usize,
    /// Bytes of hints (writes for unreachable replicas) held for replay. A hint that does not
    /// fit is counted as dropped and left to anti-entropy. Default 64 MiB.
    pub hint_capacity: u64,
    /// How often pending hints are retried. Default 1 s.
    pub hint_replay_interval: Duration,
    /// How long a read-through loader may hold a key's lease before another caller is allowed
    /// to load it. Default 10 s.
    pub lease_timeout: Duration,
    /// How often expired values and purged tombstones are swept. Default 1 s.
    pub sweep_interval: Duration,
}

impl CacheConfig {
    /// Defaults for nodes in one data centre.
    pub fn lan() -> Self {
        CacheConfig {
            request_timeout: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(30),
            rebalance_delay: Duration::from_millis(500),
            sync_rate: 4 * 1024 * 1024,
            sync_batch_bytes: 256 * 1024,
            hint_capacity: 64 * 1024 * 1024,
            hint_replay_interval: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
        }
    }

    /// Defaults for nodes spread over regions.
    pub fn wan() -> Self {
        CacheConfig {
            request_timeout: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(60),
            rebalance_delay: Duration::from_secs(2),
            ..Self::lan()
        }
    }

    /// Checks every field against its bounds; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        check_duration("cache.request_timeout", self.request_timeout, ms(10), s(300))?;
        check_duration("cache.anti_entropy_interval", self.anti_entropy_interval, s(1), s(86_400))?;
        check_duration("cache.rebalance_delay", self.rebalance_delay, ms(0), s(600))?;
        check_duration("cache.hint_replay_interval", self.hint_replay_interval, ms(10), s(600))?;
        check_duration("cache.lease_timeout", self.lease_timeout, ms(10), s(3600))?;
        check_duration("cache.sweep_interval", self.sweep_interval, ms(10), s(3600))?;
        crate::store::check_range("cache.sync_rate", self.sync_rate, 64 * 1024, 1 << 40)?;
        crate::store::check_range(
            "cache.sync_batch_bytes",
            self.sync_batch_bytes as u64,
            4 * 1024,
            8 * 1024 * 1024,
        )?;
        crate::store::check_range("cache.hint_capacity", self.hint_capacity, 0, 1 << 40)?;
        Ok(())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_fields_are_named() {
        CacheConfig::lan().validate().unwrap();
        CacheConfig::wan().validate().unwrap();
        let bad = CacheConfig { request_timeout: Duration::ZERO, ..CacheConfig::lan() };
        assert!(bad.validate().unwrap_err().to_string().contains("cache.request_timeout"));
        let bad = CacheConfig { sync_batch_bytes: 1, ..CacheConfig::lan() };
        assert!(bad.validate().unwrap_err().to_string().contains("cache.sync_batch_bytes"));
    }
}
