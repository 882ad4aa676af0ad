//! Certificates and TLS configurations.

use std::sync::Arc;

use mycorrizal_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SerialNumber,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};

use super::{Credentials, GossipKey, GossipKeys, SecurityError, Trust};

/// The DNS name a node's certificate carries and is verified against:
/// `<node-id>.node.mycorrizal`. The suffix keeps ids such as `10.0.0.7` from reading as IP
/// addresses.
pub fn server_name(node_id: &NodeId) -> ServerName<'static> {
    ServerName::try_from(format!("{node_id}.node.mycorrizal"))
        .expect("node ids are valid DNS names by construction")
}

/// Checks that `cert` (a peer's leaf, already verified against the cluster CA by TLS) names
/// `claimed`. The accepting side calls this with the id the dialer claims in its first frame.
pub fn verify_peer_identity(
    cert: &CertificateDer<'_>,
    claimed: &NodeId,
) -> Result<(), SecurityError> {
    let mismatch =
        |detail: String| SecurityError::IdentityMismatch { node_id: claimed.to_string(), detail };
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| mismatch(format!("unparsable certificate: {e}")))?;
    ee.verify_is_valid_for_subject_name(&server_name(claimed)).map_err(|e| mismatch(e.to_string()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_err(what: &'static str) -> impl Fn(String) -> SecurityError {
    move |detail| SecurityError::Build { what, detail }
}

/// Ed25519 PKCS#8 v1 document prefix (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed25519_from_seed(seed: &[u8; 32]) -> Result<KeyPair, SecurityError> {
    let mut doc = ED25519_PKCS8_PREFIX.to_vec();
    doc.extend_from_slice(seed);
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(doc), &PKCS_ED25519)
        .map_err(|e| SecurityError::Build { what: "cluster CA key", detail: e.to_string() })
}

/// The cluster CA's certificate parameters. Fixed validity and serial, and Ed25519 signatures
/// are deterministic, so every node derives a byte-identical CA certificate from the secret.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, format!("mycorrizal cluster {cluster}"));
    dn.push(DnType::CommonName, "mycorrizal cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from(1u64));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(4000, 1, 1);
    p
}

/// A fresh key and a leaf certificate naming `node_id`, signed by `issuer`. Leaves are minted at
/// every start-up and never stored; their validity is long because revocation is done by
/// rotating the CA.
fn mint_leaf(
    issuer: &Issuer<'_, KeyPair>,
    node_id: &NodeId,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), SecurityError> {
    let err = build_err("node certificate");
    let mut p = CertificateParams::new(vec![format!("{node_id}.node.mycorrizal")])
        .map_err(|e| err(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id.as_str());
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(4000, 1, 1);
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| err(e.to_string()))?;
    let cert = p.signed_by(&key, issuer).map_err(|e| err(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

fn parse_certs(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError::BadPem { what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(SecurityError::BadPem { what, detail: "no certificate found".into() });
    }
    Ok(certs)
}

pub(super) fn credentials(
    trust: &Trust,
    cluster: &str,
    node_id: &NodeId,
) -> Result<Credentials, SecurityError> {
    let (roots, chain, key, gossip) = match trust {
        Trust::ClusterSecret { primary, previous } => {
            let mut roots = Vec::new();
            let mut issuer = None;
            for (i, secret) in std::iter::once(primary).chain(previous).enumerate() {
                let ca_key = ed25519_from_seed(&secret.derive(cluster, "cluster-ca-ed25519"))?;
                let params = ca_params(cluster);
                let ca = params
                    .self_signed(&ca_key)
                    .map_err(|e| build_err("cluster CA")(e.to_string()))?;
                roots.push(ca.der().clone());
                if i == 0 {
                    issuer = Some(Issuer::new(params, ca_key));
                }
            }
            let issuer = issuer.expect("the primary secret is always present");
            let (leaf, key) = mint_leaf(&issuer, node_id)?;
            let gossip = GossipKeys::new(
                cluster,
                GossipKey::new(primary.derive(cluster, "gossip")),
                previous.iter().map(|s| GossipKey::new(s.derive(cluster, "gossip"))).collect(),
            );
            (roots, vec![leaf], key, gossip)
        }
        Trust::ClusterCa { ca_cert_pem, ca_key_pem } => {
            let ca_key = KeyPair::from_pem(ca_key_pem)
                .map_err(|e| SecurityError::BadPem { what: "CA key", detail: e.to_string() })?;
            let gossip_key =
                GossipKey::new(super::secret::derive32(ca_key.serialized_der(), cluster, "gossip"));
            let roots = parse_certs("CA certificate", ca_cert_pem)?;
            let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| {
                SecurityError::BadPem { what: "CA certificate", detail: e.to_string() }
            })?;
            let (leaf, key) = mint_leaf(&issuer, node_id)?;
            (roots, vec![leaf], key, GossipKeys::new(cluster, gossip_key, vec![]))
        }
        Trust::External {
            ca_bundle_pem,
            cert_chain_pem,
            key_pem,
            gossip_primary,
            gossip_previous,
        } => {
            let roots = parse_certs("CA bundle", ca_bundle_pem)?;
            let chain = parse_certs("node certificate chain", cert_chain_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| SecurityError::BadPem { what: "node key", detail: e.to_string() })?;
            // Refuse at start-up a certificate that does not name this node: peers would refuse
            // every connection with it.
            verify_peer_identity(&chain[0], node_id)?;
            (
                roots,
                chain,
                key,
                GossipKeys::new(cluster, gossip_primary.clone(), gossip_previous.clone()),
            )
        }
    };

    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|e| build_err("trust roots")(e.to_string()))?;
    }
    let store = Arc::new(store);
    let provider = provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| build_err("client certificate verifier")(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| build_err("TLS server configuration")(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| build_err("TLS server configuration")(e.to_string()))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| build_err("TLS client configuration")(e.to_string()))?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .map_err(|e| build_err("TLS client configuration")(e.to_string()))?;
    Ok(Credentials { server: Arc::new(server), client: Arc::new(client), gossip })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn every_node_derives_the_same_ca_and_gossip_key_from_the_secret() {
        let trust = Trust::cluster_secret(SECRET).unwrap();
        let a = credentials(&trust, "prod", &id("a")).unwrap();
        let b = credentials(&trust, "prod", &id("b")).unwrap();
        let sealed = a.gossip.seal(b"hi", 1);
        let parsed = mycorrizal_core::wire::envelope::parse(&sealed).unwrap();
        assert_eq!(b.gossip.open(&parsed).unwrap(), b"hi");
    }

    #[test]
    fn leaf_names_its_node_only() {
        let issuer_key = ed25519_from_seed(&[7; 32]).unwrap();
        let issuer = Issuer::new(ca_params("c"), issuer_key);
        let (leaf, _) = mint_leaf(&issuer, &id("node-1")).unwrap();
        verify_peer_identity(&leaf, &id("node-1")).unwrap();
        assert!(matches!(
            verify_peer_identity(&leaf, &id("node-2")),
            Err(SecurityError::IdentityMismatch { .. })
        ));
    }
}

#[cfg(test)]
mod name_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every string `NodeId` accepts is a DNS name rustls accepts (so `server_name` cannot
        /// panic on an id that came off the network and passed validation).
        #[test]
        fn every_valid_node_id_is_a_valid_server_name(s in "[a-z0-9.-]{1,64}") {
            if let Ok(id) = NodeId::new(&s) {
                let name = server_name(&id);
                prop_assert!(matches!(name, ServerName::DnsName(_)));
            }
        }
    }
}
