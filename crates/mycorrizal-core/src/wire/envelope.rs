//! Layout and replay protection of sealed gossip datagrams.
//!
//! ```text
//!  0        1        2                 14                      22
//! +--------+--------+-----------------+-----------------------+-------------------+--------+
//! |version | key id |  nonce (12 B)   | sent at ms (u64, BE)  | ciphertext ...    | tag 16 |
//! +--------+--------+-----------------+-----------------------+-------------------+--------+
//! ```
//!
//! The 22 header bytes travel in clear but are authenticated: they are part of the AEAD's
//! associated data ([`associated_data`]), together with the cluster name, so a datagram from
//! another cluster, or with any header bit flipped, fails to open. The key id selects which of
//! the accepted gossip keys sealed it (key rotation). The timestamp and nonce feed the
//! [`ReplayGuard`]: a datagram older than the window, from too far in the future, or seen
//! before is refused.

use std::collections::BTreeSet;

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Clear header bytes.
pub const ENVELOPE_HEADER_LEN: usize = 22;
/// Length of the AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Largest datagram accepted, sealed: 8 KiB. Gossip packets are kept near 1,400 bytes.
pub const MAX_DATAGRAM: usize = 8 * 1024;

/// The clear part of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Which gossip key sealed the datagram.
    pub key_id: u8,
    /// Unique per datagram (random); with `sent_at_ms` identifies it for replay detection.
    pub nonce: [u8; NONCE_LEN],
    /// Sender's wall clock when sealing, ms since the Unix epoch.
    pub sent_at_ms: u64,
}

/// Why a datagram was refused. Each is counted by the receiver; none is fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header plus a tag, or longer than [`MAX_DATAGRAM`].
    #[error("datagram of {len} bytes is outside {min}..={max}")]
    BadLength {
        /// Received length.
        len: usize,
        /// Smallest valid length.
        min: usize,
        /// Largest valid length.
        max: usize,
    },
    /// Unknown envelope version.
    #[error("envelope version {0} is not supported")]
    UnsupportedVersion(u8),
    /// No accepted key has this id.
    #[error("unknown gossip key id {0}")]
    UnknownKey(u8),
    /// Authentication failed: forged, corrupted, or sealed for another cluster or key.
    #[error("datagram failed authentication")]
    Forged,
    /// Sent before the replay window (or before the guard's floor).
    #[error("datagram sent at {sent_at_ms} ms is older than {oldest_accepted_ms} ms")]
    Stale {
        /// Its timestamp.
        sent_at_ms: u64,
        /// The oldest timestamp accepted now.
        oldest_accepted_ms: u64,
    },
    /// Sent further in the future than the allowed clock drift.
    #[error(
        "datagram sent at {sent_at_ms} ms is ahead of our clock ({now_ms} ms) beyond the drift"
    )]
    FromTheFuture {
        /// Its timestamp.
        sent_at_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// Seen before.
    #[error("replayed datagram")]
    Replayed,
}

impl EnvelopeHeader {
    /// The 22-byte wire form.
    pub fn to_bytes(&self) -> [u8; ENVELOPE_HEADER_LEN] {
        let mut out = [0u8; ENVELOPE_HEADER_LEN];
        out[0] = ENVELOPE_VERSION;
        out[1] = self.key_id;
        out[2..14].copy_from_slice(&self.nonce);
        out[14..22].copy_from_slice(&self.sent_at_ms.to_be_bytes());
        out
    }
}

/// A datagram split into its parts, not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedEnvelope<'a> {
    /// The clear header.
    pub header: EnvelopeHeader,
    /// The header's raw bytes (associated data).
    pub header_bytes: &'a [u8; ENVELOPE_HEADER_LEN],
    /// Ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// Splits a datagram, checking its length and version. Authenticates nothing.
pub fn parse(datagram: &[u8]) -> Result<ParsedEnvelope<'_>, EnvelopeError> {
    let min = ENVELOPE_HEADER_LEN + TAG_LEN;
    if datagram.len() < min || datagram.len() > MAX_DATAGRAM {
        return Err(EnvelopeError::BadLength { len: datagram.len(), min, max: MAX_DATAGRAM });
    }
    let (head, sealed) = datagram.split_at(ENVELOPE_HEADER_LEN);
    let header_bytes: &[u8; ENVELOPE_HEADER_LEN] =
        head.try_into().expect("split_at yields exactly ENVELOPE_HEADER_LEN bytes");
    if header_bytes[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header_bytes[0]));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header_bytes[2..14]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header_bytes[14..22]);
    Ok(ParsedEnvelope {
        header: EnvelopeHeader {
            key_id: header_bytes[1],
            nonce,
            sent_at_ms: u64::from_be_bytes(ts),
        },
        header_bytes,
        sealed,
    })
}

/// Associated data bound into every seal: a domain label, the cluster name, the clear header.
pub fn associated_data(cluster: &str, header_bytes: &[u8; ENVELOPE_HEADER_LEN]) -> Vec<u8> {
    const LABEL: &[u8] = b"mycorrizal/gossip/v1\0";
    let mut aad = Vec::with_capacity(LABEL.len() + cluster.len() + 1 + ENVELOPE_HEADER_LEN);
    aad.extend_from_slice(LABEL);
    aad.extend_from_slice(cluster.as_bytes());
    aad.push(0);
    aad.extend_from_slice(header_bytes);
    aad
}

/// Refuses datagrams outside a time window or seen before, in bounded memory.
///
/// Use in two steps: [`ReplayGuard::check_fresh`] before decrypting (cheap, keeps no state, so
/// forgeries cannot fill the memory), then [`ReplayGuard::record`] after the datagram
/// authenticated. Remembered datagrams are forgotten once they fall out of the window (they are
/// refused as stale from then on). When `capacity` datagrams are remembered, the oldest is
/// forgotten and the window's floor rises to its timestamp: a flood can shrink the window but
/// can never let a replay through.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    max_drift_ms: u64,
    capacity: usize,
    floor_ms: u64,
    seen: BTreeSet<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// Accepts datagrams sent at most `window_ms` ago and at most `max_drift_ms` ahead,
    /// remembering at most `capacity` of them.
    pub fn new(window_ms: u64, max_drift_ms: u64, capacity: usize) -> Self {
        ReplayGuard {
            window_ms,
            max_drift_ms,
            capacity: capacity.max(1),
            floor_ms: 0,
            seen: BTreeSet::new(),
        }
    }

    /// The oldest timestamp accepted at `now_ms`.
    pub fn oldest_accepted(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.window_ms).max(self.floor_ms)
    }

    /// Checks the timestamp only. Changes nothing.
    pub fn check_fresh(&self, header: &EnvelopeHeader, now_ms: u64) -> Result<(), EnvelopeError> {
        let oldest = self.oldest_accepted(now_ms);
        if header.sent_at_ms < oldest {
            return Err(EnvelopeError::Stale {
                sent_at_ms: header.sent_at_ms,
                oldest_accepted_ms: oldest,
            });
        }
        if header.sent_at_ms > now_ms.saturating_add(self.max_drift_ms) {
            return Err(EnvelopeError::FromTheFuture { sent_at_ms: header.sent_at_ms, now_ms });
        }
        Ok(())
    }

    /// Records an authenticated datagram; refuses it if stale or already seen.
    pub fn record(&mut self, header: &EnvelopeHeader, now_ms: u64) -> Result<(), EnvelopeError> {
        self.check_fresh(header, now_ms)?;
        // Forget what fell out of the window. The floor only ever rises, so what is forgotten
        // stays refused as stale even if our clock later steps back.
        self.floor_ms = self.oldest_accepted(now_ms);
        while self.seen.first().is_some_and(|(t, _)| *t < self.floor_ms) {
            self.seen.pop_first();
        }
        if !self.seen.insert((header.sent_at_ms, header.nonce)) {
            return Err(EnvelopeError::Replayed);
        }
        while self.seen.len() > self.capacity {
            if let Some((t, _)) = self.seen.pop_first() {
                // Everything at or before `t` may have been forgotten: refuse it from now on.
                self.floor_ms = self.floor_ms.max(t + 1);
            }
        }
        Ok(())
    }

    /// Datagrams remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header(nonce: u8, sent_at_ms: u64) -> EnvelopeHeader {
        EnvelopeHeader { key_id: 3, nonce: [nonce; NONCE_LEN], sent_at_ms }
    }

    #[test]
    fn parses_what_it_writes() {
        let h = header(9, 1_234_567);
        let mut dg = h.to_bytes().to_vec();
        dg.extend_from_slice(&[0xAA; 40]);
        let p = parse(&dg).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.sealed.len(), 40);
        assert_eq!(&p.header_bytes[..], &h.to_bytes()[..]);
    }

    #[test]
    fn refuses_bad_lengths_and_versions() {
        assert!(matches!(parse(&[1; 37]), Err(EnvelopeError::BadLength { len: 37, .. })));
        assert!(matches!(parse(&vec![1; MAX_DATAGRAM + 1]), Err(EnvelopeError::BadLength { .. })));
        let mut dg = vec![0u8; 64];
        dg[0] = 2;
        assert_eq!(parse(&dg), Err(EnvelopeError::UnsupportedVersion(2)));
    }

    #[test]
    fn replay_guard_refuses_replays_stale_and_future() {
        let mut g = ReplayGuard::new(30_000, 5_000, 1_000);
        let now = 1_000_000;
        g.record(&header(1, now - 10), now).unwrap();
        assert_eq!(g.record(&header(1, now - 10), now), Err(EnvelopeError::Replayed));
        assert!(matches!(
            g.check_fresh(&header(2, now - 30_001), now),
            Err(EnvelopeError::Stale { .. })
        ));
        assert!(matches!(
            g.check_fresh(&header(2, now + 5_001), now),
            Err(EnvelopeError::FromTheFuture { .. })
        ));
        g.record(&header(2, now + 5_000), now).unwrap();
        // Once out of the window it is forgotten, and refused as stale.
        let later = now + 40_000;
        assert!(matches!(g.record(&header(1, now - 10), later), Err(EnvelopeError::Stale { .. })));
        g.record(&header(3, later), later).unwrap();
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_full_guard_raises_its_floor_instead_of_forgetting_silently() {
        let mut g = ReplayGuard::new(60_000, 1_000, 4);
        let now = 100_000;
        for i in 0..6u8 {
            g.record(&header(i, now - 100 + u64::from(i)), now).unwrap();
        }
        assert_eq!(g.len(), 4);
        // The two oldest were forgotten; replaying them is refused as stale, not accepted.
        assert!(matches!(g.record(&header(0, now - 100), now), Err(EnvelopeError::Stale { .. })));
        assert!(matches!(g.record(&header(1, now - 99), now), Err(EnvelopeError::Stale { .. })));
        assert_eq!(g.record(&header(5, now - 95), now), Err(EnvelopeError::Replayed));
    }

    proptest! {
        /// Whatever arrives, in whatever order, a datagram is accepted at most once and the
        /// guard never holds more than its capacity.
        #[test]
        fn never_accepts_twice(events in prop::collection::vec((0u8..20, 0u64..200, 0u64..300), 1..300)) {
            let mut g = ReplayGuard::new(100, 10, 8);
            let mut accepted = std::collections::HashSet::new();
            for (nonce, sent, now) in events {
                let h = header(nonce, sent);
                if g.record(&h, now).is_ok() {
                    prop_assert!(accepted.insert((nonce, sent)), "accepted twice");
                }
                prop_assert!(g.len() <= 8);
            }
        }

        #[test]
        fn parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }
    }
}
