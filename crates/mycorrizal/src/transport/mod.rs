//! Transports: how authenticated byte streams and sealed datagrams reach peers.
//!
//! [`Transport`] is object safe so a node holds `Arc<dyn Transport>` and the rest of the cluster
//! layer is the same code over real sockets ([`TlsTransport`]: mutual TLS 1.3 over TCP, UDP for
//! gossip) and over the deterministic in-memory network used by simulations ([`SimNetwork`]),
//! which can drop, delay, cut and heal links and crash nodes.
//!
//! A transport only moves bytes and proves who is at the other end ([`PeerAuth`]). Framing,
//! the hello exchange, sealing gossip and everything above live in the cluster layer, once.

mod sim;
mod tls;

use std::{fmt, future::Future, io, net::SocketAddr, pin::Pin};

use mycorrizal_core::NodeId;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

pub use sim::{SimConfig, SimNetwork, SimTransport};
pub use tls::TlsTransport;

use crate::security::{SecurityError, verify_peer_identity};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// An established, authenticated stream and what the transport proved about its far end.
pub struct Connection {
    /// The stream.
    pub stream: Box<dyn AsyncStream>,
    /// Proof of the peer's identity.
    pub peer: PeerAuth,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// What the transport proved about the remote end of a connection.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// The peer's leaf certificate, verified against the cluster CA during the TLS handshake.
    Certificate(CertificateDer<'static>),
    /// The in-memory network knows who dialed.
    Simulated(NodeId),
}

impl PeerAuth {
    /// Checks that the peer is `claimed`: its certificate names it, or the simulated network
    /// says so.
    pub fn verify(&self, claimed: &NodeId) -> Result<(), SecurityError> {
        match self {
            PeerAuth::Certificate(cert) => verify_peer_identity(cert, claimed),
            PeerAuth::Simulated(actual) if actual == claimed => Ok(()),
            PeerAuth::Simulated(actual) => Err(SecurityError::IdentityMismatch {
                node_id: claimed.to_string(),
                detail: format!("the connection comes from {actual}"),
            }),
        }
    }
}

/// An inbound connection whose handshake has not run yet. The acceptor runs it in its own task
/// so that one slow or hostile dialer cannot hold up the accept loop.
pub struct Incoming {
    /// Where it comes from.
    pub remote: SocketAddr,
    /// Completes the transport handshake.
    pub handshake: BoxFuture<'static, Result<Connection, TransportError>>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").field("remote", &self.remote).finish_non_exhaustive()
    }
}

/// Why a transport operation failed. Connection-level failures close only that connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("{op} {addr}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// With which address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name, bad certificate, protocol error).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The operation did not finish in time.
    #[error("{op} {addr} timed out")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// With which address.
        addr: SocketAddr,
    },
    /// The simulated network refused: no such node, link cut, node crashed.
    #[error("simulated network: {0}")]
    Unreachable(String),
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
}

/// Moves authenticated streams and datagrams. See the module documentation.
pub trait Transport: Send + Sync + 'static {
    /// Dials `addr`, where `peer` is expected: the stream is only returned if the far end
    /// proves to be `peer` (for TLS: its certificate names it).
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        peer: &'a NodeId,
    ) -> BoxFuture<'a, Result<Connection, TransportError>>;

    /// Waits for the next inbound connection.
    fn accept(&self) -> BoxFuture<'_, Result<Incoming, TransportError>>;

    /// Sends one datagram. Best effort: datagrams may be lost.
    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Receives one datagram into `buf`; returns its length and sender.
    fn recv_datagram<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(usize, SocketAddr), TransportError>>;

    /// The address this transport listens on (streams and datagrams).
    fn local_addr(&self) -> SocketAddr;
}
