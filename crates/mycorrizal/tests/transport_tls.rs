//! The real transport: mutual TLS 1.3 over TCP on 127.0.0.x, UDP datagrams beside it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mycorrizal::{
    NodeId,
    security::{Credentials, Trust},
    transport::{Connection, TlsTransport, Transport, TransportError},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const OTHER_SECRET: &str = "Zx3Vb7Nm1Qw5Er9Ty2Ui6Op0As4Df8Gh3Jk7Lz1Xc5=";
const TIMEOUT: Duration = Duration::from_secs(5);

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

async fn bind(name: &str, ip: [u8; 4], trust: &Trust) -> Arc<TlsTransport> {
    let creds = Credentials::new(trust, "test", &id(name)).unwrap();
    Arc::new(TlsTransport::bind(SocketAddr::from((ip, 0)), &creds, TIMEOUT).await.unwrap())
}

fn secret(s: &str) -> Trust {
    Trust::cluster_secret(s).unwrap()
}

/// Accepts one connection on `t` and completes its handshake.
async fn accept_one(t: Arc<TlsTransport>) -> Result<Connection, TransportError> {
    let incoming = t.accept().await?;
    incoming.handshake.await
}

#[tokio::test]
async fn mutual_tls_connects_and_names_both_ends() {
    let a = bind("a", [127, 0, 0, 11], &secret(SECRET)).await;
    let b = bind("b", [127, 0, 0, 12], &secret(SECRET)).await;
    let b_addr = b.local_addr();
    let server = tokio::spawn(async move {
        let mut conn = accept_one(b).await.unwrap();
        conn.peer.verify(&id("a")).unwrap();
        assert!(conn.peer.verify(&id("c")).is_err(), "a's certificate does not name c");
        let mut buf = [0u8; 5];
        conn.stream.read_exact(&mut buf).await.unwrap();
        conn.stream.write_all(b"pong!").await.unwrap();
        conn.stream.flush().await.unwrap();
        buf
    });
    let mut conn = a.connect(b_addr, &id("b")).await.unwrap();
    conn.peer.verify(&id("b")).unwrap();
    conn.stream.write_all(b"ping!").await.unwrap();
    conn.stream.flush().await.unwrap();
    let mut buf = [0u8; 5];
    conn.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");
    assert_eq!(&server.await.unwrap(), b"ping!");
}

/// A node with another secret (so certificates from another CA) is refused by the server
/// during the TLS handshake: no application byte is ever exchanged.
#[tokio::test]
async fn a_node_with_a_wrong_secret_is_refused_at_the_handshake() {
    let a = bind("a", [127, 0, 0, 13], &secret(OTHER_SECRET)).await;
    let b = bind("b", [127, 0, 0, 14], &secret(SECRET)).await;
    let b_addr = b.local_addr();
    let server = tokio::spawn(accept_one(b));
    let client = a.connect(b_addr, &id("b")).await;
    assert!(client.is_err(), "client must not trust a server from another CA");
    assert!(matches!(server.await.unwrap(), Err(TransportError::Handshake { .. })));
}

/// The dialer verifies the server is the node it meant to reach.
#[tokio::test]
async fn dialing_the_wrong_node_fails() {
    let a = bind("a", [127, 0, 0, 15], &secret(SECRET)).await;
    let b = bind("b", [127, 0, 0, 16], &secret(SECRET)).await;
    let b_addr = b.local_addr();
    let _server = tokio::spawn(accept_one(b));
    let err = a.connect(b_addr, &id("c")).await.unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
}

/// Mode 2: a PEM cluster CA; a node holding another CA's material is refused.
#[tokio::test]
async fn cluster_ca_mode_and_a_foreign_ca() {
    let (cert, key) = test_ca("prod");
    let (other_cert, other_key) = test_ca("prod");
    let ok = Trust::cluster_ca(cert.clone(), key.clone());
    let a = bind("a", [127, 0, 0, 17], &ok).await;
    let b = bind("b", [127, 0, 0, 18], &ok).await;
    let b_addr = b.local_addr();
    let server = tokio::spawn(accept_one(b.clone()));
    a.connect(b_addr, &id("b")).await.unwrap();
    server.await.unwrap().unwrap();

    let intruder = bind("x", [127, 0, 0, 19], &Trust::cluster_ca(other_cert, other_key)).await;
    let server = tokio::spawn(accept_one(b));
    assert!(intruder.connect(b_addr, &id("b")).await.is_err());
    assert!(matches!(server.await.unwrap(), Err(TransportError::Handshake { .. })));
}

#[tokio::test]
async fn datagrams_travel_over_udp_on_the_same_port() {
    let a = bind("a", [127, 0, 0, 20], &secret(SECRET)).await;
    let b = bind("b", [127, 0, 0, 21], &secret(SECRET)).await;
    a.send_datagram(b.local_addr(), b"hello").await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) =
        tokio::time::timeout(TIMEOUT, b.recv_datagram(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], a.local_addr()));
}

/// A self-signed CA (PEM certificate and PKCS#8 key), made with rcgen the way an operator's
/// tooling would.
fn test_ca(org: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Mode 3: externally issued certificates. The node's certificate must name it; one that names
/// another node is refused when the credentials are built, before anything listens.
#[tokio::test]
async fn external_pki_mode() {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::OrganizationName, "vault");
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let issue = |name: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![format!("{name}.node.mycorrizal")]).unwrap();
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let gossip_key = [9u8; 32];
    let trust_for = |name: &str| {
        let (cert, key) = issue(name);
        Trust::external(ca_cert.pem(), cert, key, gossip_key)
    };
    let a = bind("a", [127, 0, 0, 22], &trust_for("a")).await;
    let b = bind("b", [127, 0, 0, 23], &trust_for("b")).await;
    let b_addr = b.local_addr();
    let server = tokio::spawn(accept_one(b));
    let conn = a.connect(b_addr, &id("b")).await.unwrap();
    conn.peer.verify(&id("b")).unwrap();
    server.await.unwrap().unwrap().peer.verify(&id("a")).unwrap();

    let wrong = trust_for("someone-else");
    let err = Credentials::new(&wrong, "test", &id("a")).unwrap_err();
    assert!(matches!(err, mycorrizal::security::SecurityError::IdentityMismatch { .. }), "{err}");
}
