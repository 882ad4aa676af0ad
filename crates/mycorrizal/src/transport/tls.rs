//! Mutual TLS 1.3 over TCP for streams, UDP for (already sealed) gossip datagrams.

use std::{net::SocketAddr, time::Duration};

use mycorrizal_core::NodeId;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{BoxFuture, Connection, Incoming, PeerAuth, Transport, TransportError};
use crate::security::{Credentials, server_name};

/// The real-network transport. Streams and datagrams share one port number: TCP for streams,
/// UDP for gossip.
pub struct TlsTransport {
    listener: TcpListener,
    udp: UdpSocket,
    local: SocketAddr,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").field("local", &self.local).finish_non_exhaustive()
    }
}

impl TlsTransport {
    /// Binds TCP and UDP on `addr` (port 0 picks a port free for both).
    pub async fn bind(
        addr: SocketAddr,
        credentials: &Credentials,
        handshake_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let io = |op| move |source| TransportError::Io { op, addr, source };
        // With port 0 the kernel picks a free TCP port, which may be taken for UDP: retry a few
        // times rather than fail.
        let mut attempts = 0;
        let (listener, udp) = loop {
            let listener = TcpListener::bind(addr).await.map_err(io("bind TCP"))?;
            let local = listener.local_addr().map_err(io("bind TCP"))?;
            match UdpSocket::bind(local).await {
                Ok(udp) => break (listener, udp),
                Err(e) if addr.port() == 0 && attempts < 16 => {
                    attempts += 1;
                    tracing::debug!(%local, error = %e, "UDP port taken, retrying");
                }
                Err(e) => {
                    return Err(TransportError::Io { op: "bind UDP", addr: local, source: e });
                }
            }
        };
        let local = listener.local_addr().map_err(io("bind TCP"))?;
        Ok(TlsTransport {
            listener,
            udp,
            local,
            acceptor: TlsAcceptor::from(credentials.server.clone()),
            connector: TlsConnector::from(credentials.client.clone()),
            handshake_timeout,
        })
    }
}

fn peer_cert(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    addr: SocketAddr,
) -> Result<PeerAuth, TransportError> {
    certs.and_then(|c| c.first()).map(|c| PeerAuth::Certificate(c.clone())).ok_or_else(|| {
        TransportError::Handshake {
            addr,
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "peer presented no certificate",
            ),
        }
    })
}

impl Transport for TlsTransport {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        peer: &'a NodeId,
    ) -> BoxFuture<'a, Result<Connection, TransportError>> {
        Box::pin(async move {
            let dial =
                async {
                    let tcp = TcpStream::connect(addr)
                        .await
                        .map_err(|source| TransportError::Io { op: "connect", addr, source })?;
                    let _ = tcp.set_nodelay(true);
                    let tls = self
                        .connector
                        .connect(server_name(peer), tcp)
                        .await
                        .map_err(|source| TransportError::Handshake { addr, source })?;
                    let auth = peer_cert(tls.get_ref().1.peer_certificates(), addr)?;
                    Ok(Connection {
                        stream: Box::new(tokio_rustls::TlsStream::Client(tls)),
                        peer: auth,
                    })
                };
            tokio::time::timeout(self.handshake_timeout, dial)
                .await
                .map_err(|_| TransportError::Timeout { op: "connect", addr })?
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        Box::pin(async move {
            let (tcp, remote) = self
                .listener
                .accept()
                .await
                .map_err(|source| TransportError::Io { op: "accept", addr: self.local, source })?;
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let timeout = self.handshake_timeout;
            let handshake = Box::pin(async move {
                let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
                    .await
                    .map_err(|_| TransportError::Timeout { op: "TLS accept", addr: remote })?
                    .map_err(|source| TransportError::Handshake { addr: remote, source })?;
                let auth = peer_cert(tls.get_ref().1.peer_certificates(), remote)?;
                Ok(Connection {
                    stream: Box::new(tokio_rustls::TlsStream::Server(tls)),
                    peer: auth,
                })
            });
            Ok(Incoming { remote, handshake })
        })
    }

    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            self.udp.send_to(data, to).await.map(|_| ()).map_err(|source| TransportError::Io {
                op: "send datagram to",
                addr: to,
                source,
            })
        })
    }

    fn recv_datagram<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<(usize, SocketAddr), TransportError>> {
        Box::pin(async move {
            self.udp.recv_from(buf).await.map_err(|source| TransportError::Io {
                op: "receive datagram on",
                addr: self.local,
                source,
            })
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}
