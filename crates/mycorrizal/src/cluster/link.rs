//! Links: one authenticated, multiplexed stream per peer, used in both directions.
//!
//! A link to a peer is dialed lazily on the first request to it, by a task that owns it: the
//! task dials (retrying with exponential back-off and jitter while membership says the peer is
//! alive), exchanges hellos, then writes queued requests and reads frames until the connection
//! fails or stays idle. An inbound connection becomes the acceptor's link to the dialer unless
//! it already has one, so a pair of nodes normally shares one connection in both directions.
//!
//! Every queue is bounded. A caller whose request finds the peer's queue full, or the peer's
//! in-flight limit reached, gets [`MessagingError::Overloaded`] at once; a request not answered
//! in time gets [`MessagingError::Timeout`]; a receiver whose handler queue is full answers
//! `Overloaded`. Nothing is dropped without someone being told.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use mycorrizal_core::{
    NodeId,
    wire::{
        Channel, DEFAULT_CHUNK_SIZE, Frame, FrameDecoder, HEADER_LEN, Kind, MessageFrames,
        PROTOCOL_VERSION, Reassembler,
        messages::{ErrorCode, ErrorReply, Hello, HelloAck},
        split_message,
    },
};
use prost::Message as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot, watch},
};

use super::membership::MembershipView;
use crate::{
    sync::lock,
    transport::{AsyncStream, Connection, Transport},
};

/// Why a message or request to a peer failed. The request may or may not have been handled
/// only when the variant says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagingError {
    /// The peer is not a live member.
    #[error("{0} is not a live member")]
    UnknownPeer(NodeId),
    /// The peer's queue or in-flight limit is full, here or at the receiver. Nothing was done;
    /// retry later.
    #[error("{0} is overloaded; nothing was done")]
    Overloaded(NodeId),
    /// No answer in time. The request may or may not have been handled.
    #[error("no answer from {0} in time; the request may or may not have been handled")]
    Timeout(NodeId),
    /// The connection failed before an answer arrived. The request may or may not have been
    /// handled.
    #[error("connection to {peer} failed: {detail}")]
    ConnectionLost {
        /// The peer.
        peer: NodeId,
        /// What happened.
        detail: String,
    },
    /// The peer answered with an error.
    #[error("{peer} answered {code:?}: {message}")]
    Remote {
        /// The peer.
        peer: NodeId,
        /// Why.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// This node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Limits of links. Defaults in [`LinkSettings::default`].
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Requests queued per peer before callers get `Overloaded`. Default 1,024.
    pub send_queue: usize,
    /// Requests awaiting an answer per peer before callers get `Overloaded`. Default 1,024.
    pub max_in_flight: usize,
    /// Largest message (after reassembly), bytes. Default 16 MiB.
    pub max_message: usize,
    /// A connection with nothing in flight for this long is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter. Default 50 ms.
    pub min_backoff: Duration,
    /// Largest reconnect delay. Default 5 s.
    pub max_backoff: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            send_queue: 1024,
            max_in_flight: 1024,
            max_message: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A request handed to a link.
pub(crate) struct Outgoing {
    pub channel: Channel,
    pub payload: Bytes,
    pub reply: oneshot::Sender<Result<Bytes, MessagingError>>,
}

/// What the node does with requests that arrive on any link.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// Handles one request from `from`; the answer (or error) goes to `reply`. Must not block:
    /// queue the work or answer `Overloaded`.
    fn dispatch(&self, from: &NodeId, channel: Channel, payload: Bytes, reply: Responder);
}

/// Answers one inbound request, once. Dropping it unanswered answers `HandlerFailed`.
pub struct Responder {
    request_id: u64,
    channel: Channel,
    out: mpsc::Sender<Answer>,
    done: bool,
    /// Held while the request is unanswered, so a draining connection knows when it may close.
    _unanswered: Arc<()>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("request_id", &self.request_id).finish_non_exhaustive()
    }
}

impl Responder {
    /// Sends `body` as the answer.
    pub fn respond(mut self, body: Bytes) {
        self.done = true;
        self.send(Kind::Response, body);
    }

    /// Answers with an error.
    pub fn fail(mut self, code: ErrorCode, message: impl Into<String>) {
        self.done = true;
        let reply = ErrorReply { code: code as i32, message: message.into() };
        self.send(Kind::ErrorResponse, Bytes::from(reply.encode_to_vec()));
    }

    fn send(&self, kind: Kind, body: Bytes) {
        // One slot per answer, and the queue holds as many answers as the requester may have
        // requests in flight, so it is only full if the requester broke that limit; a closed
        // queue means the connection is gone, which the requester learns on its own side.
        let answer = Answer { kind, channel: self.channel, request_id: self.request_id, body };
        if self.out.try_send(answer).is_err() {
            tracing::debug!(
                request_id = self.request_id,
                "answer dropped: connection closed or limit broken"
            );
        }
    }
}

/// An answer on its way to the connection's writer, split into frames there.
struct Answer {
    kind: Kind,
    channel: Channel,
    request_id: u64,
    body: Bytes,
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let reply = ErrorReply {
                code: ErrorCode::HandlerFailed as i32,
                message: "dropped without an answer".into(),
            };
            self.send(Kind::ErrorResponse, Bytes::from(reply.encode_to_vec()));
        }
    }
}

/// The node's links.
pub(crate) struct Links {
    me: NodeId,
    cluster: String,
    transport: Arc<dyn Transport>,
    view: watch::Receiver<Arc<MembershipView>>,
    settings: LinkSettings,
    dispatch: Arc<dyn Dispatch>,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Outgoing>>>,
    /// Set once at shutdown: connections stop taking new work, finish what is in flight, close.
    shutdown: watch::Sender<bool>,
    /// Connections being served; shutdown waits for it to reach zero.
    serving: watch::Sender<usize>,
    /// Latency and failures of the requests this node sends.
    requests: crate::metrics::RequestMetrics,
    /// Frames and bytes through every connection, by direction and channel.
    traffic: Traffic,
}

/// Frames and bytes through a node's connections, by direction and channel (indexed by the
/// channel's wire number). Bytes include frame headers.
#[derive(Default)]
pub(crate) struct Traffic {
    frames: [[AtomicU64; 4]; 2],
    bytes: [[AtomicU64; 4]; 2],
}

impl Traffic {
    const IN: usize = 0;
    const OUT: usize = 1;

    fn count(&self, direction: usize, frame: &Frame) {
        let c = frame.header.channel as usize;
        self.frames[direction][c].fetch_add(1, Relaxed);
        self.bytes[direction][c].fetch_add((HEADER_LEN + frame.payload.len()) as u64, Relaxed);
    }

    /// (frames, bytes) for `channel`, received (`outgoing == false`) or sent.
    pub(crate) fn get(&self, outgoing: bool, channel: Channel) -> (u64, u64) {
        let (d, c) = (usize::from(outgoing), channel as usize);
        (self.frames[d][c].load(Relaxed), self.bytes[d][c].load(Relaxed))
    }
}

impl Links {
    pub(crate) fn new(
        me: NodeId,
        cluster: String,
        transport: Arc<dyn Transport>,
        view: watch::Receiver<Arc<MembershipView>>,
        settings: LinkSettings,
        dispatch: Arc<dyn Dispatch>,
    ) -> Arc<Self> {
        Arc::new(Links {
            me,
            cluster,
            transport,
            view,
            settings,
            dispatch,
            peers: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            serving: watch::Sender::new(0),
            requests: crate::metrics::RequestMetrics::default(),
            traffic: Traffic::default(),
        })
    }

    /// Stops taking new requests, lets every connection finish the requests in flight in both
    /// directions, then closes them; waits at most `timeout`. Returns whether every connection
    /// closed in time.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> bool {
        self.shutdown.send_replace(true);
        let mut serving = self.serving.subscribe();
        tokio::time::timeout(timeout, serving.wait_for(|n| *n == 0)).await.is_ok()
    }

    /// Stops taking new requests and lets every connection close once its work is done,
    /// without waiting: for a node being dropped, so no link task outlives it.
    pub(crate) fn close(&self) {
        self.shutdown.send_replace(true);
    }

    /// The request metrics (registered in the node's registry).
    pub(crate) fn request_metrics(&self) -> &crate::metrics::RequestMetrics {
        &self.requests
    }

    /// Sends a request to `peer` and waits at most `timeout` for the answer.
    pub(crate) async fn request(
        self: &Arc<Self>,
        peer: &NodeId,
        channel: Channel,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, MessagingError> {
        use tracing::Instrument as _;
        let span = tracing::debug_span!(
            "request",
            node = %self.me,
            peer = %peer,
            channel = ?channel,
            request_id = crate::trace::request_id()
        );
        let started = tokio::time::Instant::now();
        let result = self.request_inner(peer, channel, payload, timeout).instrument(span).await;
        self.requests.observe(channel, started.elapsed(), result.as_ref().map(|_| ()));
        result
    }

    async fn request_inner(
        self: &Arc<Self>,
        peer: &NodeId,
        channel: Channel,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, MessagingError> {
        if *self.shutdown.borrow() {
            return Err(MessagingError::ShuttingDown);
        }
        if !self.view.borrow().live().any(|m| &m.id == peer) {
            return Err(MessagingError::UnknownPeer(peer.clone()));
        }
        let (reply, answer) = oneshot::channel();
        let queue = self.queue_for(peer);
        queue.try_send(Outgoing { channel, payload, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MessagingError::Overloaded(peer.clone()),
            mpsc::error::TrySendError::Closed(_) => {
                MessagingError::ConnectionLost { peer: peer.clone(), detail: "link closed".into() }
            }
        })?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(MessagingError::ConnectionLost {
                peer: peer.clone(),
                detail: "link task ended".into(),
            }),
            Err(_) => Err(MessagingError::Timeout(peer.clone())),
        }
    }

    /// The queue of the link to `peer`, starting its task if there is none.
    fn queue_for(self: &Arc<Self>, peer: &NodeId) -> mpsc::Sender<Outgoing> {
        let mut peers = lock(&self.peers);
        if let Some(q) = peers.get(peer).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(self.settings.send_queue);
        peers.insert(peer.clone(), tx.clone());
        tokio::spawn(self.clone().dialing_link(peer.clone(), rx));
        tx
    }

    /// Owns the outbound link to `peer`: dials with back-off while the peer is alive, serves
    /// the connection, and repeats; ends when the peer leaves the membership.
    async fn dialing_link(self: Arc<Self>, peer: NodeId, mut rx: mpsc::Receiver<Outgoing>) {
        let mut backoff = self.settings.min_backoff;
        let mut jitter = xorshift_seed(&peer);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let addr = match self.view.borrow().live().find(|m| m.id == peer) {
                Some(m) => m.addr,
                None => break,
            };
            let failure = match self.dial(addr, &peer).await {
                Ok(stream) => {
                    let opened = tokio::time::Instant::now();
                    let idle = serve(&self, &peer, stream, &mut rx).await;
                    if idle {
                        break;
                    }
                    // A connection that failed at once counts as a failed dial: redialing
                    // without a pause would spin (and, under a paused test clock, stop time).
                    if opened.elapsed() >= Duration::from_secs(1) {
                        backoff = self.settings.min_backoff;
                        None
                    } else {
                        Some("connection failed at once".to_owned())
                    }
                }
                Err(e) => Some(e),
            };
            match failure {
                None => {}
                Some(e) => {
                    tracing::debug!(%peer, error = %e, "dial failed");
                    jitter ^= jitter << 13;
                    jitter ^= jitter >> 7;
                    jitter ^= jitter << 17;
                    let spread = backoff.mul_f64(0.5 + (jitter % 1000) as f64 / 2000.0);
                    tokio::time::sleep(spread).await;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
        // Fail whatever is still queued: the peer is gone or the link closed when idle (a
        // caller that raced with the idle close retries and gets a fresh link).
        rx.close();
        while let Ok(o) = rx.try_recv() {
            let _ = o.reply.send(Err(MessagingError::ConnectionLost {
                peer: peer.clone(),
                detail: "link closed (peer gone or idle); retry".into(),
            }));
        }
        let mut peers = lock(&self.peers);
        if peers.get(&peer).is_some_and(|q| q.is_closed()) {
            peers.remove(&peer);
        }
    }

    async fn dial(
        &self,
        addr: std::net::SocketAddr,
        peer: &NodeId,
    ) -> Result<Box<dyn AsyncStream>, String> {
        let Connection { mut stream, peer: auth } =
            self.transport.connect(addr, peer).await.map_err(|e| e.to_string())?;
        auth.verify(peer).map_err(|e| e.to_string())?;
        let hello = Hello {
            min_version: u32::from(PROTOCOL_VERSION),
            max_version: u32::from(PROTOCOL_VERSION),
            cluster: self.cluster.clone(),
            node_id: self.me.to_string(),
        };
        write_frames(
            &mut stream,
            Kind::Request,
            Channel::System,
            0,
            Bytes::from(hello.encode_to_vec()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut decoder = FrameDecoder::new(64 * 1024);
        let mut buf = BytesMut::new();
        let frame =
            read_frame(&mut stream, &mut decoder, &mut buf).await.map_err(|e| e.to_string())?;
        match frame.header.kind {
            Kind::Response => {
                let ack = HelloAck::decode(frame.payload).map_err(|e| e.to_string())?;
                if ack.node_id != peer.as_str() {
                    return Err(format!("{addr} answered as {}", ack.node_id));
                }
                Ok(stream)
            }
            _ => {
                let err = ErrorReply::decode(frame.payload).unwrap_or_default();
                Err(format!("refused: {}", err.message))
            }
        }
    }

    /// Runs the accept side: checks each dialer's hello against its certificate, then serves
    /// the connection as that peer's link.
    pub(crate) async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = match self.transport.accept().await {
                Ok(i) => i,
                Err(crate::transport::TransportError::Closed) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let links = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote;
                match incoming.handshake.await {
                    Ok(conn) => links.serve_inbound(conn).await,
                    Err(e) => tracing::debug!(%remote, error = %e, "inbound handshake refused"),
                }
            });
        }
    }

    async fn serve_inbound(self: Arc<Self>, conn: Connection) {
        let Connection { mut stream, peer: auth } = conn;
        let mut decoder = FrameDecoder::new(64 * 1024);
        let mut buf = BytesMut::new();
        let Ok(frame) = read_frame(&mut stream, &mut decoder, &mut buf).await else { return };
        let refuse = |code: ErrorCode, message: String| {
            Bytes::from(ErrorReply { code: code as i32, message }.encode_to_vec())
        };
        let hello = match (frame.header.channel, frame.header.kind) {
            (Channel::System, Kind::Request) => Hello::decode(frame.payload).ok(),
            _ => None,
        };
        let verdict = match hello {
            None => Err(refuse(ErrorCode::BadRequest, "expected hello".into())),
            Some(h) if h.cluster != self.cluster => Err(refuse(
                ErrorCode::Unauthorized,
                format!("this node is in cluster {:?}", self.cluster),
            )),
            Some(h) if !(h.min_version..=h.max_version).contains(&u32::from(PROTOCOL_VERSION)) => {
                Err(refuse(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "peer speaks {}..={}, this node speaks {PROTOCOL_VERSION}",
                        h.min_version, h.max_version
                    ),
                ))
            }
            Some(h) => match NodeId::new(&h.node_id) {
                Ok(id) if auth.verify(&id).is_ok() => Ok(id),
                _ => Err(refuse(
                    ErrorCode::Unauthorized,
                    "claimed id does not match the certificate".into(),
                )),
            },
        };
        let peer = match verdict {
            Ok(peer) => peer,
            Err(payload) => {
                let _ = write_frames(&mut stream, Kind::ErrorResponse, Channel::System, 0, payload)
                    .await;
                return;
            }
        };
        let ack = HelloAck { version: u32::from(PROTOCOL_VERSION), node_id: self.me.to_string() };
        if write_frames(
            &mut stream,
            Kind::Response,
            Channel::System,
            0,
            Bytes::from(ack.encode_to_vec()),
        )
        .await
        .is_err()
        {
            return;
        }
        // Unless we already have a link to this peer, this connection becomes it: our
        // requests to the peer go out on it too, so a pair of nodes shares one connection.
        // (If both dialed at once, each keeps its own and the pair holds two.)
        let (tx, mut rx) = mpsc::channel(self.settings.send_queue);
        {
            let mut peers = lock(&self.peers);
            if peers.get(&peer).is_none_or(|q| q.is_closed()) {
                peers.insert(peer.clone(), tx.clone());
            }
        }
        drop(tx);
        serve(&self, &peer, stream, &mut rx).await;
        // Whatever was queued for this connection and not sent fails now; the next request
        // finds the queue closed and dials.
        rx.close();
        while let Ok(o) = rx.try_recv() {
            let _ = o.reply.send(Err(MessagingError::ConnectionLost {
                peer: peer.clone(),
                detail: "connection closed before the request was sent; retry".into(),
            }));
        }
    }

    /// Connections being served now.
    pub(crate) fn connections(&self) -> usize {
        *self.serving.borrow()
    }

    /// Frames and bytes through every connection.
    pub(crate) fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Requests waiting for a connection to take them, over every peer.
    pub(crate) fn queued_requests(&self) -> usize {
        lock(&self.peers).values().map(|q| q.max_capacity() - q.capacity()).sum()
    }
}

fn xorshift_seed(peer: &NodeId) -> u64 {
    peer.tag().0 | 1
}

async fn write_frames(
    stream: &mut Box<dyn AsyncStream>,
    kind: Kind,
    channel: Channel,
    id: u64,
    payload: Bytes,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    for f in split_message(kind, channel, id, payload, DEFAULT_CHUNK_SIZE) {
        f.encode(&mut buf);
    }
    stream.write_all(&buf).await?;
    stream.flush().await
}

async fn read_frame(
    stream: &mut Box<dyn AsyncStream>,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> std::io::Result<Frame> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Serves one connection: writes queued requests and answers, reads frames and dispatches
/// them. Returns `true` if it closed for being idle, `false` on a connection failure.
async fn serve(
    links: &Arc<Links>,
    peer: &NodeId,
    stream: Box<dyn AsyncStream>,
    rx: &mut mpsc::Receiver<Outgoing>,
) -> bool {
    links.serving.send_modify(|n| *n += 1);
    let idle = serve_inner(links, peer, stream, rx).await;
    links.serving.send_modify(|n| *n -= 1);
    idle
}

/// Bytes of frames gathered into one write to the stream.
const WRITE_BATCH: usize = 64 * 1024;

async fn serve_inner(
    links: &Arc<Links>,
    peer: &NodeId,
    stream: Box<dyn AsyncStream>,
    rx: &mut mpsc::Receiver<Outgoing>,
) -> bool {
    let settings = &links.settings;
    let mut shutdown = links.shutdown.subscribe();
    let mut draining = *shutdown.borrow();
    let mut rx_open = true;
    let unanswered = Arc::new(());
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Writes happen on their own task, so this loop keeps reading while a write waits: two
    // nodes sending each other large messages at once would otherwise both wait forever.
    let (to_writer, mut writes) = mpsc::channel::<Bytes>(64);
    let writer_task = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        while let Some(bytes) = writes.recv().await {
            // Gather every frame already waiting into one write: one TLS record and one
            // system call for a burst of small requests or answers instead of one each. The
            // yield first lets the tasks already woken run (callers answered by the last read,
            // about to send their next requests) so their frames join this write: with 64
            // requests outstanding it raised remote gets by about 45 % (docs/BENCHMARKS.md),
            // and alone on the runtime it costs one trip through the scheduler.
            batch.extend_from_slice(&bytes);
            // Let go of the copied buffer at once: the serving loop encodes its next batch
            // into it.
            drop(bytes);
            tokio::task::yield_now().await;
            while batch.len() < WRITE_BATCH
                && let Ok(more) = writes.try_recv()
            {
                batch.extend_from_slice(&more);
            }
            if writer.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
            // Then flush: a TLS stream may accept bytes into its session buffer without
            // writing them to the socket (when the socket would block), and without a flush
            // they wait there for the next write; with nothing more to send, an answer would
            // sit until its requester timed out.
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    // Messages being sent, one frame per turn each: a small request waits behind at most one
    // chunk of every large message in progress.
    let mut outq: std::collections::VecDeque<MessageFrames> = std::collections::VecDeque::new();
    let (answers_tx, mut answers_rx) = mpsc::channel::<Answer>(settings.max_in_flight.max(16));
    let mut pending: std::collections::BTreeMap<
        u64,
        oneshot::Sender<Result<Bytes, MessagingError>>,
    > = std::collections::BTreeMap::new();
    let mut next_id: u64 = 1;
    let mut decoder = FrameDecoder::new(DEFAULT_CHUNK_SIZE as u32 * 2);
    let mut reassembler = Reassembler::new(settings.max_message, settings.max_message * 2);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    let lost = |detail: &str| MessagingError::ConnectionLost {
        peer: peer.clone(),
        detail: detail.to_owned(),
    };
    // The idle timer is moved lazily: traffic only records when it happened (one clock read
    // per read or batch of requests), and the timer, when it fires, re-arms itself for the
    // idle timeout after that. Resetting it for every frame re-registered it with the timer
    // wheel, under the wheel's lock, tens of thousands of times a second.
    let mut active_at = tokio::time::Instant::now();
    let idle = tokio::time::sleep_until(active_at + settings.idle_timeout);
    tokio::pin!(idle);
    let mut drain_at = active_at;
    let outcome = loop {
        tokio::select! {
            biased;
            permit = to_writer.reserve(), if !outq.is_empty() => {
                let Ok(permit) = permit else { break false };
                // One frame of each message in turn, as many turns as fit one write. `out` keeps
                // its buffer across writes: once the writer task has copied a batch and let go
                // of it, the next batch is encoded into the same memory (`BytesMut::reserve`
                // takes it back) instead of a new buffer grown frame by frame.
                out.reserve(WRITE_BATCH);
                while out.len() < WRITE_BATCH
                    && let Some(mut message) = outq.pop_front()
                {
                    if let Some(frame) = message.next() {
                        links.traffic.count(Traffic::OUT, &frame);
                        frame.encode(&mut out);
                        if message.len() > 0 {
                            outq.push_back(message);
                        }
                    }
                }
                permit.send(out.split().freeze());
            }
            answer = answers_rx.recv() => {
                let Some(a) = answer else { continue };
                outq.push_back(split_message(a.kind, a.channel, a.request_id, a.body, DEFAULT_CHUNK_SIZE));
                // And every answer already waiting, for the same write.
                while let Ok(a) = answers_rx.try_recv() {
                    outq.push_back(split_message(a.kind, a.channel, a.request_id, a.body, DEFAULT_CHUNK_SIZE));
                }
            }
            changed = shutdown.changed(), if !draining => {
                draining = changed.is_err() || *shutdown.borrow();
            }
            // While draining: closes once nothing is in flight either way and every answer is
            // written. Polled every 10 ms; answers and reads wake the loop sooner.
            () = tokio::time::sleep_until(drain_at), if draining => {
                drain_at = tokio::time::Instant::now() + Duration::from_millis(10);
                if pending.is_empty()
                    && Arc::strong_count(&unanswered) == 1
                    && answers_rx.is_empty()
                    && outq.is_empty()
                {
                    break true;
                }
            }
            request = rx.recv(), if rx_open && !draining && pending.len() < settings.max_in_flight && outq.len() < 64 => {
                // No queue feeds this connection (the pair already has a link for our
                // requests): keep serving the peer's requests until idle.
                let Some(mut o) = request else { rx_open = false; continue };
                // This request and every other already queued, within the limits, for the
                // same write.
                loop {
                    let id = next_id;
                    next_id += 1;
                    outq.push_back(split_message(Kind::Request, o.channel, id, o.payload, DEFAULT_CHUNK_SIZE));
                    pending.insert(id, o.reply);
                    if pending.len() >= settings.max_in_flight || outq.len() >= 64 {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => o = next,
                        Err(_) => break,
                    }
                }
                active_at = tokio::time::Instant::now();
            }
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break false,
                    Ok(_) => {}
                }
                let mut failed = false;
                loop {
                    let frame = match decoder.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => { tracing::warn!(%peer, error = %e, "bad frame; closing link"); failed = true; break; }
                    };
                    links.traffic.count(Traffic::IN, &frame);
                    let msg = match reassembler.push(frame) {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(e) => { tracing::warn!(%peer, error = %e, "bad message; closing link"); failed = true; break; }
                    };
                    let h = msg.header;
                    match h.kind {
                        Kind::Response => {
                            if let Some(reply) = pending.remove(&h.request_id) { let _ = reply.send(Ok(msg.payload)); }
                        }
                        Kind::ErrorResponse => {
                            if let Some(reply) = pending.remove(&h.request_id) {
                                let e = ErrorReply::decode(msg.payload).unwrap_or_default();
                                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                                let err = match code {
                                    ErrorCode::Overloaded => MessagingError::Overloaded(peer.clone()),
                                    _ => MessagingError::Remote { peer: peer.clone(), code, message: e.message },
                                };
                                let _ = reply.send(Err(err));
                            }
                        }
                        Kind::Request => {
                            let responder = Responder {
                                request_id: h.request_id,
                                channel: h.channel,
                                out: answers_tx.clone(),
                                done: false,
                                _unanswered: unanswered.clone(),
                            };
                            if draining {
                                responder.fail(ErrorCode::ShuttingDown, "node is shutting down");
                            } else {
                                links.dispatch.dispatch(peer, h.channel, msg.payload, responder);
                            }
                        }
                        Kind::OneWay => {}
                    }
                }
                active_at = tokio::time::Instant::now();
                if failed { break false; }
            }
            () = &mut idle, if pending.is_empty() && !draining => {
                let deadline = active_at + settings.idle_timeout;
                if deadline <= tokio::time::Instant::now() {
                    break true;
                }
                idle.as_mut().reset(deadline);
            }
        }
    };
    // On a clean close (idle, drained) let the writer flush what it holds, briefly; on a
    // failure, or a peer that stopped reading, do not wait on it.
    drop(to_writer);
    let abort = writer_task.abort_handle();
    let flush = if outcome { Duration::from_secs(5) } else { Duration::ZERO };
    if tokio::time::timeout(flush, writer_task).await.is_err() {
        abort.abort();
    }
    for (_, reply) in std::mem::take(&mut pending) {
        let _ = reply.send(Err(lost("connection closed")));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

    use super::*;
    use crate::transport::{SimConfig, SimNetwork};

    struct Echo;

    impl Dispatch for Echo {
        fn dispatch(&self, _: &NodeId, _: Channel, payload: Bytes, reply: Responder) {
            reply.respond(payload);
        }
    }

    /// Serves `server`, the server's end of a connection from "client", on a node with
    /// `settings` that echoes every request. Returns the serving task (its result: closed for
    /// being idle) and the membership sender, to keep alive while it runs.
    fn serve_echo(
        settings: LinkSettings,
        server: Box<dyn AsyncStream>,
    ) -> (tokio::task::JoinHandle<bool>, watch::Sender<Arc<MembershipView>>) {
        let me = NodeId::new("server").unwrap();
        let peer = NodeId::new("client").unwrap();
        let addr = SocketAddr::from(([10, 9, 9, 1], 1));
        let transport = Arc::new(SimNetwork::new(SimConfig::new(1)).transport(me.clone(), addr));
        let (view_tx, view) = watch::channel(Arc::new(MembershipView::default()));
        let links = Links::new(me, "c".into(), transport, view, settings, Arc::new(Echo));
        let serving = tokio::spawn(async move {
            let (_, mut rx) = mpsc::channel(1);
            serve(&links, &peer, server, &mut rx).await
        });
        (serving, view_tx)
    }

    /// Sends request `id` over `client` and waits for its answer; returns the answer's payload.
    async fn ping(client: &mut tokio::io::DuplexStream, id: u64) -> Bytes {
        let mut out = BytesMut::new();
        for f in split_message(Kind::Request, Channel::App, id, Bytes::from_static(b"ping"), 1024) {
            f.encode(&mut out);
        }
        client.write_all(&out).await.unwrap();
        let (mut decoder, mut buf) = (FrameDecoder::new(1024), BytesMut::new());
        loop {
            if let Some(f) = decoder.decode(&mut buf).unwrap() {
                assert_eq!((f.header.kind, f.header.request_id), (Kind::Response, id));
                return f.payload;
            }
            assert!(client.read_buf(&mut buf).await.unwrap() > 0, "closed before answering");
        }
    }

    /// A stream that holds written bytes until flushed (as a TLS session does when the socket
    /// would block): the answer must still leave.
    #[tokio::test(start_paused = true)]
    async fn an_answer_leaves_even_when_the_stream_holds_writes_until_flushed() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (serving, _view) =
            serve_echo(LinkSettings::default(), Box::new(BufWriter::new(server)));
        let answer = tokio::time::timeout(Duration::from_secs(10), ping(&mut client, 7))
            .await
            .expect("the answer was flushed");
        assert_eq!(&answer[..], b"ping");
        serving.abort();
    }

    /// A connection closes once it has been quiet for the idle timeout, counted from its last
    /// traffic (the idle timer re-arms itself when it fires instead of moving per frame).
    #[tokio::test(start_paused = true)]
    async fn a_link_closes_after_the_idle_timeout_counted_from_its_last_traffic() {
        let settings =
            LinkSettings { idle_timeout: Duration::from_secs(10), ..LinkSettings::default() };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let started = tokio::time::Instant::now();
        let (serving, _view) = serve_echo(settings, Box::new(server));
        ping(&mut client, 1).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        ping(&mut client, 2).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!serving.is_finished(), "closed 10 s after the first request, traffic since");
        assert!(serving.await.unwrap(), "closed for another reason than being idle");
        let closed_after = started.elapsed();
        assert!(
            closed_after >= Duration::from_secs(16) && closed_after < Duration::from_secs(17),
            "closed after {closed_after:?}, not 10 s after the last request (at 6 s)"
        );
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0, "the connection is closed");
    }
}
