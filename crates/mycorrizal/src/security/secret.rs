//! The cluster secret, and what is derived from it.
//!
//! One high-entropy secret shared by every node of a cluster. It never leaves the node: HKDF
//! (SHA-256) derives from it, under distinct labels, the seed of the cluster CA's Ed25519 key and
//! the gossip key. Knowing either derived key does not reveal the secret or the other key.

use std::fmt;

use ring::hkdf;

use super::SecurityError;

/// Fewest bytes a secret may have.
pub const MIN_SECRET_LEN: usize = 32;
/// Least estimated entropy a secret must carry, in bits.
pub const MIN_SECRET_ENTROPY_BITS: f64 = 128.0;

const SALT: &[u8] = b"mycorrizal/v1/cluster-secret";

/// A validated cluster secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} bytes, redacted)", self.0.len())
    }
}

impl ClusterSecret {
    /// A new secret: 32 bytes from the operating system's CSPRNG, as 64 hex characters (the
    /// form to put in a secret file).
    pub fn generate() -> String {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("the OS random number generator is available");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Accepts `bytes` as a secret if it is at least 32 bytes long and its estimated entropy is
    /// at least 128 bits. Leading and trailing ASCII whitespace (a newline at the end of a secret
    /// file) is ignored.
    ///
    /// The estimate is the empirical Shannon entropy of the byte distribution times the length:
    /// 32 random bytes score about 160 bits, a 44-character base64 or 64-character hex encoding of
    /// them over 200, while `passwordpasswordpasswordpassword` scores 88 and is refused. It can
    /// only refuse secrets that are obviously weak; generate secrets with a CSPRNG
    /// (`openssl rand -base64 32`).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, SecurityError> {
        let bytes = bytes.as_ref().trim_ascii();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecurityError::SecretTooShort { len: bytes.len(), min: MIN_SECRET_LEN });
        }
        let bits = estimated_entropy_bits(bytes);
        if bits < MIN_SECRET_ENTROPY_BITS {
            return Err(SecurityError::SecretTooWeak {
                estimated_bits: bits as u32,
                min_bits: MIN_SECRET_ENTROPY_BITS as u32,
            });
        }
        Ok(ClusterSecret(bytes.to_vec()))
    }

    /// 32 bytes derived for `label`, bound to `cluster`.
    pub(crate) fn derive(&self, cluster: &str, label: &str) -> [u8; 32] {
        derive32(&self.0, cluster, label)
    }
}

/// HKDF-SHA256 of `ikm` with the project salt, info `label || 0 || cluster`, 32 bytes out.
pub(crate) fn derive32(ikm: &[u8], cluster: &str, label: &str) -> [u8; 32] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(ikm);
    let info = [label.as_bytes(), &[0u8], cluster.as_bytes()];
    let okm = prk.expand(&info, Len32).expect("32 bytes is within HKDF-SHA256's output limit");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("output length matches Len32");
    out
}

/// Empirical Shannon entropy of the bytes' distribution, times their count, in bits.
pub fn estimated_entropy_bits(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    per_byte * n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_accepted_and_differ() {
        let (a, b) = (ClusterSecret::generate(), ClusterSecret::generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        ClusterSecret::new(&a).unwrap();
    }

    #[test]
    fn refuses_short_and_weak_secrets() {
        assert!(matches!(
            ClusterSecret::new("short"),
            Err(SecurityError::SecretTooShort { len: 5, min: 32 })
        ));
        assert!(matches!(
            ClusterSecret::new([b'a'; 64]),
            Err(SecurityError::SecretTooWeak { estimated_bits: 0, .. })
        ));
        assert!(matches!(
            ClusterSecret::new("passwordpasswordpasswordpassword"),
            Err(SecurityError::SecretTooWeak { .. })
        ));
        assert!(ClusterSecret::new("q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=\n").is_ok());
        let random: Vec<u8> =
            (0..32u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(ClusterSecret::new(&random).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = ClusterSecret::new("q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=").unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("q8Zl"), "{shown}");
    }

    #[test]
    fn derivations_are_distinct_and_stable() {
        let s = ClusterSecret::new("q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=").unwrap();
        assert_eq!(s.derive("prod", "ca"), s.derive("prod", "ca"));
        assert_ne!(s.derive("prod", "ca"), s.derive("prod", "gossip"));
        assert_ne!(s.derive("prod", "ca"), s.derive("staging", "ca"));
    }
}
