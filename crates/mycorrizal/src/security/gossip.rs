//! Sealing and opening gossip datagrams (ChaCha20-Poly1305).
//!
//! The layout, associated data and replay rules are in `mycorrizal_core::wire::envelope`; this
//! module holds the keys. One primary key seals; the primary and any number of secondary keys
//! open, which is how a gossip key is rotated without downtime: add the new key as a secondary
//! everywhere, make it primary everywhere, then drop the old one.

use mycorrizal_core::wire::envelope::{
    self, ENVELOPE_HEADER_LEN, EnvelopeError, EnvelopeHeader, NONCE_LEN, ParsedEnvelope, TAG_LEN,
};
use ring::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use super::secret::derive32;

/// A 256-bit gossip key and the one-byte id that names it in datagrams.
#[derive(Clone)]
pub struct GossipKey {
    id: u8,
    key: [u8; 32],
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GossipKey(id {}, redacted)", self.id)
    }
}

impl GossipKey {
    /// Wraps 32 bytes of key material. The id is derived from the key, so every node computes
    /// the same id for the same key without configuring it.
    pub fn new(key: [u8; 32]) -> Self {
        let id = derive32(&key, "", "gossip-key-id")[0];
        GossipKey { id, key }
    }

    /// The id carried in datagrams sealed with this key.
    pub fn id(&self) -> u8 {
        self.id
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&aead::CHACHA20_POLY1305, &self.key)
                .expect("32-byte key is valid for ChaCha20-Poly1305"),
        )
    }
}

/// The keys a node seals and opens gossip with.
#[derive(Debug, Clone)]
pub struct GossipKeys {
    cluster: String,
    primary: GossipKey,
    accepted: Vec<GossipKey>,
}

impl GossipKeys {
    /// Seals with `primary`, opens with `primary` or any of `secondaries`, for `cluster`.
    pub fn new(cluster: &str, primary: GossipKey, secondaries: Vec<GossipKey>) -> Self {
        let mut accepted = vec![primary.clone()];
        accepted.extend(secondaries);
        GossipKeys { cluster: cluster.to_owned(), primary, accepted }
    }

    /// Seals `plaintext` into a datagram stamped `now_ms`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], now_ms: u64) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the OS random number generator is available");
        self.seal_with_nonce(plaintext, now_ms, nonce)
    }

    fn seal_with_nonce(&self, plaintext: &[u8], now_ms: u64, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let header =
            EnvelopeHeader { key_id: self.primary.id, nonce, sent_at_ms: now_ms }.to_bytes();
        let aad = envelope::associated_data(&self.cluster, &header);
        let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        let mut body = plaintext.to_vec();
        self.primary
            .aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut body,
            )
            .expect("plaintext within ChaCha20-Poly1305 limits");
        out.extend_from_slice(&body);
        out
    }

    /// Authenticates and decrypts a parsed datagram. Does not check freshness or replays: see
    /// `ReplayGuard`.
    pub fn open(&self, parsed: &ParsedEnvelope<'_>) -> Result<Vec<u8>, EnvelopeError> {
        let aad = envelope::associated_data(&self.cluster, parsed.header_bytes);
        let mut candidates =
            self.accepted.iter().filter(|k| k.id == parsed.header.key_id).peekable();
        if candidates.peek().is_none() {
            return Err(EnvelopeError::UnknownKey(parsed.header.key_id));
        }
        for key in candidates {
            let mut buf = parsed.sealed.to_vec();
            let nonce = Nonce::assume_unique_for_key(parsed.header.nonce);
            if let Ok(plain) = key.aead().open_in_place(nonce, Aad::from(&aad), &mut buf) {
                let n = plain.len();
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(EnvelopeError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cluster: &str, byte: u8) -> GossipKeys {
        GossipKeys::new(cluster, GossipKey::new([byte; 32]), vec![])
    }

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let k = keys("prod", 1);
        let dg = k.seal(b"member alive: node-3", 42);
        assert!(!dg.windows(6).any(|w| w == b"member"), "plaintext visible on the wire");
        let parsed = envelope::parse(&dg).unwrap();
        assert_eq!(parsed.header.sent_at_ms, 42);
        assert_eq!(k.open(&parsed).unwrap(), b"member alive: node-3");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let k = keys("prod", 1);
        let dg = k.seal(b"payload", 42);
        for i in 0..dg.len() * 8 {
            let mut bad = dg.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let outcome = envelope::parse(&bad).and_then(|p| k.open(&p));
            assert!(outcome.is_err(), "bit {i} flipped went unnoticed");
        }
    }

    #[test]
    fn other_cluster_or_key_cannot_open() {
        let dg = keys("prod", 1).seal(b"x", 1);
        let parsed = envelope::parse(&dg).unwrap();
        assert_eq!(keys("staging", 1).open(&parsed), Err(EnvelopeError::Forged));
        assert!(keys("prod", 2).open(&parsed).is_err());
    }

    #[test]
    fn rotation_opens_with_secondary_keys() {
        let old = GossipKey::new([1; 32]);
        let new = GossipKey::new([2; 32]);
        let sealed_old = GossipKeys::new("c", old.clone(), vec![]).seal(b"a", 1);
        let rotating = GossipKeys::new("c", new.clone(), vec![old]);
        assert_eq!(rotating.open(&envelope::parse(&sealed_old).unwrap()).unwrap(), b"a");
        let sealed_new = rotating.seal(b"b", 2);
        let not_yet = GossipKeys::new("c", GossipKey::new([1; 32]), vec![]);
        assert!(not_yet.open(&envelope::parse(&sealed_new).unwrap()).is_err());
    }
}
