//! Validated configuration of the event bus (per node).

use std::time::Duration;

use crate::store::{ConfigError, check_duration, check_range};

/// How a node publishes and delivers events. Presets: [`EventsConfig::lan`],
/// [`EventsConfig::wan`]; [`EventsConfig::validate`] checks every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// How long `publish` waits for every subscribed node to accept an event (including the
    /// wait for room in a full queue). What is not confirmed by then is reported in
    /// `PublishError::Unconfirmed`. It also bounds `subscribe`'s wait for every live member to
    /// learn of the subscription. LAN 5 s, WAN 10 s.
    pub publish_timeout: Duration,
    /// How long one batch to a destination may take before it is resent (a resent batch is
    /// applied once). LAN 2 s, WAN 5 s.
    pub request_timeout: Duration,
    /// Events queued toward one destination node before publishers wait (back-pressure).
    /// Default 4,096.
    pub stream_events: usize,
    /// Bytes of payload queued toward one destination node before publishers wait.
    /// Default 16 MiB.
    pub stream_bytes: usize,
    /// Most events in one batch. Default 512.
    pub batch_events: usize,
    /// Most payload bytes in one batch (one event larger than this travels alone).
    /// Default 1 MiB.
    pub batch_bytes: usize,
    /// Group deliveries this node tracks as publisher until a member acknowledges them; past
    /// it, publishes to topics with groups wait. Default 65,536.
    pub max_unacked: usize,
    /// Largest payload. Default 1 MiB; at most 8 MiB.
    pub max_payload: usize,
    /// How often nodes re-exchange their subscriptions even when nothing changed (a lost
    /// update is repaired within this time). Default 10 s.
    pub interest_interval: Duration,
    /// How long a node held down by membership keeps its subscriptions here, with events for
    /// its broadcast subscribers queued (up to the stream bounds) instead of skipped: a false
    /// verdict or a partition shorter than this costs them nothing. Publishes do not wait for
    /// a node held down; its group events go to live members at once. Default 30 s.
    pub rejoin_grace: Duration,
    /// A group delivery not settled (acknowledged or given back) this long after it was sent
    /// is offered again to the node holding it, which ignores it if it still has it. Repairs
    /// an acknowledgement lost while two nodes disagreed on membership; set it well above the
    /// groups' acknowledgement deadlines plus queueing time, or slow members may process an
    /// event twice. Default 120 s.
    pub reoffer_interval: Duration,
    /// How often group acknowledgement deadlines are checked and undeliverable group events
    /// retried. Default 100 ms.
    pub tick: Duration,
}

impl EventsConfig {
    /// Defaults for nodes in one data centre.
    pub fn lan() -> Self {
        EventsConfig {
            publish_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            stream_events: 4096,
            stream_bytes: 16 * 1024 * 1024,
            batch_events: 512,
            batch_bytes: 1024 * 1024,
            max_unacked: 65_536,
            max_payload: 1024 * 1024,
            interest_interval: Duration::from_secs(10),
            rejoin_grace: Duration::from_secs(30),
            reoffer_interval: Duration::from_secs(120),
            tick: Duration::from_millis(100),
        }
    }

    /// Defaults for nodes spread over regions.
    pub fn wan() -> Self {
        EventsConfig {
            publish_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            ..Self::lan()
        }
    }

    /// Checks every field against its bounds; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        check_duration("events.publish_timeout", self.publish_timeout, ms(10), s(3600))?;
        check_duration("events.request_timeout", self.request_timeout, ms(10), s(300))?;
        check_duration("events.interest_interval", self.interest_interval, ms(100), s(3600))?;
        check_duration("events.rejoin_grace", self.rejoin_grace, ms(0), s(86_400))?;
        check_duration("events.reoffer_interval", self.reoffer_interval, s(1), s(86_400))?;
        check_duration("events.tick", self.tick, ms(1), s(10))?;
        check_range("events.stream_events", self.stream_events as u64, 1, 1 << 24)?;
        check_range("events.stream_bytes", self.stream_bytes as u64, 4096, 1 << 34)?;
        check_range(
            "events.batch_events",
            self.batch_events as u64,
            1,
            mycorrizal_core::wire::events::MAX_BATCH_ITEMS as u64,
        )?;
        check_range("events.batch_bytes", self.batch_bytes as u64, 4096, 8 * 1024 * 1024)?;
        check_range("events.max_unacked", self.max_unacked as u64, 1, 1 << 24)?;
        check_range("events.max_payload", self.max_payload as u64, 1, 8 * 1024 * 1024)?;
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_fields_are_named() {
        EventsConfig::lan().validate().unwrap();
        EventsConfig::wan().validate().unwrap();
        let bad = EventsConfig { publish_timeout: Duration::ZERO, ..EventsConfig::lan() };
        assert!(bad.validate().unwrap_err().to_string().contains("events.publish_timeout"));
        let bad = EventsConfig { batch_events: 0, ..EventsConfig::lan() };
        assert!(bad.validate().unwrap_err().to_string().contains("events.batch_events"));
        let bad = EventsConfig { max_payload: 64 << 20, ..EventsConfig::lan() };
        assert!(bad.validate().unwrap_err().to_string().contains("events.max_payload"));
    }
}
