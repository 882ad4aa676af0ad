//! Trust: who may join the cluster, and how every byte between nodes is protected.
//!
//! Three ways to configure trust ([`Trust`]), all giving mutually authenticated, encrypted
//! traffic (TLS 1.3 with client certificates for streams, ChaCha20-Poly1305 for gossip):
//!
//! 1. **Cluster secret** ([`Trust::cluster_secret`]): one high-entropy secret. HKDF derives a
//!    cluster CA key (Ed25519) and the gossip key; every node rebuilds the identical CA
//!    certificate and mints its own leaf certificate at start-up.
//! 2. **Cluster CA** ([`Trust::cluster_ca`]): a PEM CA certificate and key; nodes mint their leaf
//!    certificates at start-up; the gossip key is derived from the CA key.
//! 3. **External PKI** ([`Trust::external`]): a CA bundle, this node's certificate chain and key
//!    (cert-manager, Vault), and a gossip key.
//!
//! A node's certificate names it: the subject alternative name is `<node-id>.node.mycorrizal`
//! ([`server_name`]). The dialing side checks it as the TLS server name; the accepting side
//! checks the id the dialer claims in its first frame against the dialer's certificate
//! ([`verify_peer_identity`]) before it processes anything else. No secret ever crosses the
//! network: TLS authenticates with signatures, gossip with AEAD tags.

mod gossip;
mod secret;
mod tls;

use std::sync::Arc;

pub use gossip::{GossipKey, GossipKeys};
pub use secret::{ClusterSecret, MIN_SECRET_ENTROPY_BITS, MIN_SECRET_LEN, estimated_entropy_bits};
pub use tls::{server_name, verify_peer_identity};

/// Why trust material was refused or a peer's identity did not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// The cluster secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("cluster secret is {len} bytes; at least {min} are required")]
    SecretTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The cluster secret's estimated entropy is under [`MIN_SECRET_ENTROPY_BITS`].
    #[error(
        "cluster secret carries about {estimated_bits} bits of entropy; at least {min_bits} are \
         required (generate one with `openssl rand -base64 32`)"
    )]
    SecretTooWeak {
        /// The estimate.
        estimated_bits: u32,
        /// The minimum.
        min_bits: u32,
    },
    /// PEM or DER input could not be parsed.
    #[error("could not parse {what}: {detail}")]
    BadPem {
        /// Which input.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A certificate or TLS configuration could not be built.
    #[error("could not build {what}: {detail}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A certificate does not name the node it was presented for.
    #[error("certificate is not valid for node {node_id:?}: {detail}")]
    IdentityMismatch {
        /// The node id claimed.
        node_id: String,
        /// Why it did not match.
        detail: String,
    },
}

/// How this node establishes trust. See the module documentation for the three modes.
#[derive(Clone)]
pub enum Trust {
    /// Mode 1: everything derived from a cluster secret.
    ClusterSecret {
        /// Derives the CA this node's certificate is minted from, and the gossip key that seals.
        primary: ClusterSecret,
        /// Previous secrets still trusted during a rotation: their CAs are trusted and their
        /// gossip keys open datagrams.
        previous: Vec<ClusterSecret>,
    },
    /// Mode 2: a cluster CA certificate and key, in PEM.
    ClusterCa {
        /// The CA certificate.
        ca_cert_pem: String,
        /// The CA's private key (PKCS#8 PEM).
        ca_key_pem: String,
    },
    /// Mode 3: externally issued certificates.
    External {
        /// Every CA certificate to trust (PEM, one or more).
        ca_bundle_pem: String,
        /// This node's certificate chain (PEM, leaf first); must name this node.
        cert_chain_pem: String,
        /// This node's private key (PEM).
        key_pem: String,
        /// Seals gossip.
        gossip_primary: GossipKey,
        /// Also open gossip (rotation).
        gossip_previous: Vec<GossipKey>,
    },
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self {
            Trust::ClusterSecret { .. } => "cluster secret",
            Trust::ClusterCa { .. } => "cluster CA",
            Trust::External { .. } => "external PKI",
        };
        write!(f, "Trust({mode}, redacted)")
    }
}

impl Trust {
    /// Mode 1 from one secret (validated: at least 32 bytes and 128 bits of estimated entropy).
    pub fn cluster_secret(secret: impl AsRef<[u8]>) -> Result<Trust, SecurityError> {
        Ok(Trust::ClusterSecret { primary: ClusterSecret::new(secret)?, previous: Vec::new() })
    }

    /// Mode 2 from a PEM CA certificate and its PKCS#8 PEM key.
    pub fn cluster_ca(ca_cert_pem: impl Into<String>, ca_key_pem: impl Into<String>) -> Trust {
        Trust::ClusterCa { ca_cert_pem: ca_cert_pem.into(), ca_key_pem: ca_key_pem.into() }
    }

    /// Mode 3 from a CA bundle, this node's chain and key (PEM), and a 32-byte gossip key.
    pub fn external(
        ca_bundle_pem: impl Into<String>,
        cert_chain_pem: impl Into<String>,
        key_pem: impl Into<String>,
        gossip_key: [u8; 32],
    ) -> Trust {
        Trust::External {
            ca_bundle_pem: ca_bundle_pem.into(),
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            gossip_primary: GossipKey::new(gossip_key),
            gossip_previous: Vec::new(),
        }
    }
}

/// What a running node holds: its TLS configurations and gossip keys.
#[derive(Clone)]
pub struct Credentials {
    /// Accepts connections: requires and verifies client certificates from the cluster CA.
    pub server: Arc<rustls::ServerConfig>,
    /// Dials peers: verifies their certificate names the expected node; presents ours.
    pub client: Arc<rustls::ClientConfig>,
    /// Seals and opens gossip.
    pub gossip: GossipKeys,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("gossip", &self.gossip).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Builds this node's credentials for `cluster` from `trust`.
    pub fn new(
        trust: &Trust,
        cluster: &str,
        node_id: &mycorrizal_core::NodeId,
    ) -> Result<Self, SecurityError> {
        tls::credentials(trust, cluster, node_id)
    }
}
