//! The node's metrics: one prometheus-client registry per node, rendered in the Prometheus
//! text format by [`Metrics::encode`] (what an admin endpoint serves at `/metrics`).
//!
//! Counters and gauges are read from the layers' own statistics at scrape time (one
//! collector, no double bookkeeping on the hot paths); request latency is a histogram
//! observed on every request a node sends to a peer. Names follow Prometheus conventions:
//! `mycorrizal_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `mycorrizal_members` | gauge | `state` (alive, suspect, down, left) |
//! | `mycorrizal_connections` | gauge | |
//! | `mycorrizal_link_frames_total`, `..._bytes_total` | counter | `direction` (in, out), `channel` (system, cache, events, app) |
//! | `mycorrizal_link_queued_requests` | gauge | |
//! | `mycorrizal_gossip_datagrams_total` | counter | `direction` (in, out) |
//! | `mycorrizal_gossip_refused_total` | counter | `reason` (malformed, forged, replayed, stale, invalid) |
//! | `mycorrizal_membership_down_verdicts_total`, `..._rejoins_total` | counter | |
//! | `mycorrizal_request_duration_seconds` | histogram | `channel` (cache, events, app) |
//! | `mycorrizal_request_failures_total` | counter | `channel`, `kind` (timeout, overloaded, connection, remote, unknown_peer, shutting_down) |
//! | `mycorrizal_cache_ready` | gauge (0/1) | |
//! | `mycorrizal_cache_replication_seconds` | histogram | |
//! | `mycorrizal_cache_writes_total`, `..._writes_indeterminate_total`, `..._writes_failed_total`, `..._writes_restamped_total` | counter | |
//! | `mycorrizal_cache_reads_total` | counter | `source` (local, remote) |
//! | `mycorrizal_cache_read_repairs_total`, `..._loads_total` | counter | |
//! | `mycorrizal_cache_hints_pending`, `..._hints_pending_bytes` | gauge | |
//! | `mycorrizal_cache_hints_total` | counter | `outcome` (queued, replayed, dropped) |
//! | `mycorrizal_cache_sync_rounds_total`, `..._sync_failures_total`, `..._handed_off_total` | counter | |
//! | `mycorrizal_cache_sync_ranges_compared_total`, `..._sync_ranges_mismatched_total` | counter | |
//! | `mycorrizal_cache_sync_records_total`, `..._sync_bytes_total` | counter | `direction` (sent, received) |
//! | `mycorrizal_bucket_entries`, `..._bytes`, `..._tombstones` | gauge | `bucket` |
//! | `mycorrizal_bucket_hits_total`, `..._misses_total`, `..._evictions_total`, `..._expirations_total`, `..._rejected_total` | counter | `bucket` |
//! | `mycorrizal_events_published_total`, `..._unconfirmed_total`, `..._delivered_total`, `..._redelivered_total`, `..._acked_total`, `..._nacked_total`, `..._lagged_total`, `..._gaps_total`, `..._abandoned_total` | counter | |
//! | `mycorrizal_events_unacked`, `..._held`, `..._queued` | gauge | |

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use mycorrizal_core::wire::Channel;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::watch;

use crate::{
    cluster::{MemberState, MembershipStats, MembershipView, MessagingError, link::Links},
    sync::lock,
};

/// Label of request metrics: the channel.
type ChannelLabel = [(&'static str, &'static str); 1];
/// Labels of request failures: channel and kind.
type FailureLabels = [(&'static str, &'static str); 2];

/// The `kind` label of request failures, one per `MessagingError` variant.
const FAILURE_KINDS: [&str; 6] =
    ["timeout", "overloaded", "connection", "remote", "unknown_peer", "shutting_down"];

/// Request metrics observed by the links (shared with the registry).
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    duration: Family<ChannelLabel, Histogram, fn() -> Histogram>,
    /// `duration`'s series, one per channel (in [`CHANNELS`] order), resolved once: observed
    /// through the family, every request looked its label set up (a lock and a hash).
    by_channel: [Histogram; 4],
    failures: Family<FailureLabels, Counter>,
}

/// Every channel, in the order of [`RequestMetrics::by_channel`].
const CHANNELS: [Channel; 4] = [Channel::System, Channel::Cache, Channel::Events, Channel::App];

/// A latency histogram: 25 µs to ~3.3 s, doubling.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 18))
}

impl Default for RequestMetrics {
    fn default() -> Self {
        let failures: Family<FailureLabels, Counter> = Family::default();
        // Every failure series exists from the start at 0, so rates and alerts work before
        // the first failure (Prometheus cannot rate a series it has never seen).
        for channel in ["cache", "events", "app"] {
            for kind in FAILURE_KINDS {
                failures.get_or_create(&[("channel", channel), ("kind", kind)]).inc_by(0);
            }
        }
        let duration: Family<ChannelLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let by_channel = CHANNELS.map(|c| match c {
            // Hellos, the system channel's only messages, are not requests: a series of its
            // own would always be empty, so it is not exported.
            Channel::System => latency_histogram(),
            c => duration.get_or_create(&[("channel", channel_name(c))]).clone(),
        });
        RequestMetrics { duration, by_channel, failures }
    }
}

impl RequestMetrics {
    /// Records one request's outcome.
    pub(crate) fn observe(
        &self,
        channel: Channel,
        took: Duration,
        outcome: Result<(), &MessagingError>,
    ) {
        self.by_channel[channel_index(channel)].observe(took.as_secs_f64());
        let channel = channel_name(channel);
        if let Err(e) = outcome {
            let kind = FAILURE_KINDS[match e {
                MessagingError::Timeout(_) => 0,
                MessagingError::Overloaded(_) => 1,
                MessagingError::ConnectionLost { .. } => 2,
                MessagingError::Remote { .. } => 3,
                MessagingError::UnknownPeer(_) => 4,
                MessagingError::ShuttingDown => 5,
            }];
            self.failures.get_or_create(&[("channel", channel), ("kind", kind)]).inc();
        }
    }
}

/// Where `channel` sits in [`CHANNELS`].
fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::System => 0,
        Channel::Cache => 1,
        Channel::Events => 2,
        Channel::App => 3,
    }
}

fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::System => "system",
        Channel::Cache => "cache",
        Channel::Events => "events",
        Channel::App => "app",
    }
}

/// A node's metrics registry. Cloning is cheap; clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(sources: Sources, requests: &RequestMetrics) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "mycorrizal_request_duration_seconds",
            "Requests this node sent to peers, from send to answer",
            requests.duration.clone(),
        );
        registry.register(
            "mycorrizal_request_failures",
            "Requests this node sent that failed, by kind",
            requests.failures.clone(),
        );
        registry.register(
            "mycorrizal_cache_replication_seconds",
            "From a write's start until each peer replica applied it (replication lag)",
            sources.cache.replication.clone(),
        );
        registry.register_collector(Box::new(sources));
        Metrics { registry: Arc::new(Mutex::new(registry)) }
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4 compatible,
    /// OpenMetrics `# EOF` terminated).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }

    /// The registry, to add the application's own metrics next to the node's.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

/// What the collector reads at scrape time.
pub(crate) struct Sources {
    pub view: watch::Receiver<Arc<MembershipView>>,
    pub membership: Arc<MembershipStats>,
    pub links: Arc<Links>,
    pub cache: Arc<crate::cache::Runtime>,
    pub events: Arc<crate::events::Runtime>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// Writes one family of constant samples.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(L, u64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), fmt::Error> {
    family::<[(&str, &str); 0]>(encoder, name, help, kind, &[([], value)])
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        let view = self.view.borrow().clone();
        let count = |state| view.members.iter().filter(|m| m.state == state).count() as u64;
        let states = [
            ([("state", "alive")], count(MemberState::Alive)),
            ([("state", "suspect")], count(MemberState::Suspect)),
            ([("state", "down")], count(MemberState::Down)),
            ([("state", "left")], count(MemberState::Left)),
        ];
        family(
            &mut e,
            "mycorrizal_members",
            "Members as this node sees them, by state",
            G,
            &states,
        )?;
        one(
            &mut e,
            "mycorrizal_connections",
            "Streams to peers open now",
            G,
            self.links.connections() as u64,
        )?;
        let mut frames = Vec::new();
        let mut bytes = Vec::new();
        for (outgoing, direction) in [(false, "in"), (true, "out")] {
            for channel in [Channel::System, Channel::Cache, Channel::Events, Channel::App] {
                let (f, b) = self.links.traffic().get(outgoing, channel);
                let labels = [("direction", direction), ("channel", channel_name(channel))];
                frames.push((labels, f));
                bytes.push((labels, b));
            }
        }
        family(
            &mut e,
            "mycorrizal_link_frames",
            "Frames through streams to peers, by direction and channel",
            C,
            &frames,
        )?;
        family(
            &mut e,
            "mycorrizal_link_bytes",
            "Bytes (headers included) through streams to peers, by direction and channel",
            C,
            &bytes,
        )?;
        one(
            &mut e,
            "mycorrizal_link_queued_requests",
            "Requests waiting for a connection to a peer to take them",
            G,
            self.links.queued_requests() as u64,
        )?;
        let m = self.membership.snapshot();
        family(
            &mut e,
            "mycorrizal_gossip_datagrams",
            "Gossip datagrams, by direction",
            C,
            &[([("direction", "in")], m.datagrams_in), ([("direction", "out")], m.datagrams_out)],
        )?;
        family(
            &mut e,
            "mycorrizal_gossip_refused",
            "Gossip datagrams refused, by reason",
            C,
            &[
                ([("reason", "malformed")], m.rejected_malformed),
                ([("reason", "forged")], m.rejected_forged),
                ([("reason", "replayed")], m.rejected_replayed),
                ([("reason", "stale")], m.rejected_stale),
                ([("reason", "invalid")], m.rejected_invalid),
            ],
        )?;
        one(
            &mut e,
            "mycorrizal_membership_down_verdicts",
            "Members this node saw declared down",
            C,
            m.down_verdicts,
        )?;
        one(
            &mut e,
            "mycorrizal_membership_rejoins",
            "Times this node was declared down and rejoined",
            C,
            m.rejoins,
        )?;

        let cache = crate::cache::Cache::new(self.cache.clone());
        let c = cache.stats();
        one(
            &mut e,
            "mycorrizal_cache_ready",
            "1 when this node holds what it owns for the current membership",
            G,
            u64::from(cache.is_ready()),
        )?;
        one(&mut e, "mycorrizal_cache_writes", "Writes coordinated here", C, c.writes)?;
        one(
            &mut e,
            "mycorrizal_cache_writes_indeterminate",
            "Writes coordinated here that may or may not have been applied",
            C,
            c.writes_indeterminate,
        )?;
        one(
            &mut e,
            "mycorrizal_cache_writes_restamped",
            "Writes stamped again because a replica held a newer version (clock skew or a race)",
            C,
            c.writes_restamped,
        )?;
        one(
            &mut e,
            "mycorrizal_cache_writes_failed",
            "Writes coordinated here that failed",
            C,
            c.writes_failed,
        )?;
        family(
            &mut e,
            "mycorrizal_cache_reads",
            "Reads coordinated here, by what they consulted: this node's replica or peers",
            C,
            &[([("source", "local")], c.reads_local), ([("source", "remote")], c.reads_remote)],
        )?;
        one(&mut e, "mycorrizal_cache_read_repairs", "Stale replicas repaired", C, c.read_repairs)?;
        one(&mut e, "mycorrizal_cache_loads", "Read-through loader calls", C, c.loads)?;
        one(&mut e, "mycorrizal_cache_hints_pending", "Hints waiting", G, c.hints_pending)?;
        one(
            &mut e,
            "mycorrizal_cache_hints_pending_bytes",
            "Bytes held by waiting hints",
            G,
            c.hints_pending_bytes,
        )?;
        family(
            &mut e,
            "mycorrizal_cache_hints",
            "Hints, by outcome",
            C,
            &[
                ([("outcome", "queued")], c.hints_queued),
                ([("outcome", "replayed")], c.hints_replayed),
                ([("outcome", "dropped")], c.hints_dropped),
            ],
        )?;
        one(&mut e, "mycorrizal_cache_sync_rounds", "Sync rounds completed", C, c.sync_rounds)?;
        one(
            &mut e,
            "mycorrizal_cache_sync_failures",
            "Peers a sync round could not finish its exchanges with (retried next round)",
            C,
            c.sync_failures,
        )?;
        one(
            &mut e,
            "mycorrizal_cache_sync_ranges_compared",
            "Ranges whose digests sync rounds compared with a peer's",
            C,
            c.sync_ranges_compared,
        )?;
        one(
            &mut e,
            "mycorrizal_cache_sync_ranges_mismatched",
            "Ranges whose digests differed from a peer's, compared key by key",
            C,
            c.sync_ranges_mismatched,
        )?;
        family(
            &mut e,
            "mycorrizal_cache_sync_records",
            "Records moved by rebalancing and anti-entropy",
            C,
            &[
                ([("direction", "sent")], c.sync_records_sent),
                ([("direction", "received")], c.sync_records_received),
            ],
        )?;
        family(
            &mut e,
            "mycorrizal_cache_sync_bytes",
            "Bytes moved by rebalancing and anti-entropy",
            C,
            &[
                ([("direction", "sent")], c.sync_bytes_sent),
                ([("direction", "received")], c.sync_bytes_received),
            ],
        )?;
        one(
            &mut e,
            "mycorrizal_cache_handed_off",
            "Records dropped here after their new owners confirmed them",
            C,
            c.handed_off,
        )?;

        let buckets: Vec<(String, crate::store::BucketStats)> = cache
            .buckets()
            .iter()
            .filter_map(|b| {
                let name = b.name().to_string();
                cache.bucket(&name).ok().map(|h| (name, h.stats()))
            })
            .collect();
        type Pick = fn(&crate::store::BucketStats) -> u64;
        let per_bucket: [(&str, &str, MetricType, Pick); 8] = [
            ("mycorrizal_bucket_entries", "Live entries in this node's replica", G, |s| s.entries),
            ("mycorrizal_bucket_bytes", "Bytes charged in this node's replica", G, |s| s.bytes),
            ("mycorrizal_bucket_tombstones", "Tombstones in this node's replica", G, |s| {
                s.tombstones
            }),
            ("mycorrizal_bucket_hits", "Reads that found a live value here", C, |s| s.hits),
            ("mycorrizal_bucket_misses", "Reads that found nothing here", C, |s| s.misses),
            ("mycorrizal_bucket_evictions", "Entries evicted to stay within bounds", C, |s| {
                s.evictions
            }),
            ("mycorrizal_bucket_expirations", "Entries removed at their TTL", C, |s| s.expirations),
            ("mycorrizal_bucket_rejected", "Writes refused by admission", C, |s| s.rejected),
        ];
        for (name, help, kind, pick) in per_bucket {
            let samples: Vec<([(&str, &str); 1], u64)> =
                buckets.iter().map(|(b, s)| ([("bucket", b.as_str())], pick(s))).collect();
            family(&mut e, name, help, kind, &samples)?;
        }

        let ev = self.events.stats();
        let events: [(&str, &str, MetricType, u64); 12] = [
            ("mycorrizal_events_published", "Events published here", C, ev.published),
            (
                "mycorrizal_events_unconfirmed",
                "Publishes not confirmed everywhere",
                C,
                ev.unconfirmed,
            ),
            ("mycorrizal_events_delivered", "Events queued for local subscribers", C, ev.delivered),
            ("mycorrizal_events_redelivered", "Group deliveries sent again", C, ev.redelivered),
            ("mycorrizal_events_acked", "Group deliveries acknowledged here", C, ev.acked),
            ("mycorrizal_events_nacked", "Group deliveries given back here", C, ev.nacked),
            (
                "mycorrizal_events_lagged",
                "Events dropped by Lag subscribers (reported)",
                C,
                ev.lagged,
            ),
            (
                "mycorrizal_events_gaps",
                "Events that never reached this node (reported)",
                C,
                ev.gaps,
            ),
            (
                "mycorrizal_events_abandoned",
                "Group events lost with their publisher",
                C,
                ev.abandoned,
            ),
            (
                "mycorrizal_events_unacked",
                "Group deliveries published here, unacknowledged",
                G,
                ev.unacked,
            ),
            ("mycorrizal_events_held", "Of those, waiting for a member", G, ev.held),
            (
                "mycorrizal_events_queued",
                "Stream items queued toward other nodes, not yet taken",
                G,
                ev.queued,
            ),
        ];
        for (name, help, kind, value) in events {
            one(&mut e, name, help, kind, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request is observed in its own channel's histogram: the pre-resolved series and the
    /// channel index agree, and the series are the family's (what the registry exports).
    #[test]
    fn each_request_lands_in_its_channels_series() {
        let m = RequestMetrics::default();
        for (i, channel) in CHANNELS.into_iter().enumerate() {
            assert_eq!(channel_index(channel), i);
            for _ in 0..=i {
                m.observe(channel, Duration::from_micros(30), Ok(()));
            }
        }
        let mut registry = Registry::default();
        registry.register("requests", "test", m.duration.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (i, channel) in CHANNELS.into_iter().enumerate().skip(1) {
            let line = format!("requests_count{{channel=\"{}\"}} {}", channel_name(channel), i + 1);
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("system"), "an empty system series is exported:\n{text}");
    }
}
