//! The admin HTTP API of one node (axum): health, readiness, metrics, and JSON endpoints for the
//! cluster, buckets, cache operations and publishing, behind bearer tokens with roles.
//!
//! | route | role | answer |
//! |---|---|---|
//! | `GET /health` | none | 200 `{"status":"ok","node":..}` while the process serves |
//! | `GET /ready` | none | 200 when joined and the cache holds what it owns, else 503 |
//! | `GET /metrics` | read | Prometheus text ([`crate::metrics`]) |
//! | `GET /v1/cluster` | read | this node, member counts by state, readiness |
//! | `GET /v1/members` | read | every member: id, address, state, generation |
//! | `GET /v1/buckets` | read | declared buckets with this replica's entries and bytes |
//! | `POST /v1/buckets` | admin | declare a bucket (JSON); 409 on a conflicting declaration |
//! | `GET /v1/buckets/{bucket}/replica` | admin | this node's replica, streamed: one JSON line per record (`key` or `key_hex`, `version`, `tombstone`), for checking that replicas agree |
//! | `GET /v1/cache/{bucket}/{key}` | read | the value (bytes); 404 when absent; `?consistency=one\|quorum\|all` |
//! | `PUT /v1/cache/{bucket}/{key}` | write | store the body; `?ttl_ms=N&consistency=..` |
//! | `DELETE /v1/cache/{bucket}/{key}` | write | delete |
//! | `POST /v1/events/{topic}` | write | publish the body |
//! | `GET /v1/events/{topic}/stream` | read | subscribe: one JSON line per event, streamed; `?group=G` joins a consumer group (each line's event is acknowledged once written to the connection) |
//!
//! Tokens are stored as SHA-256 digests and compared in constant time. Errors are JSON
//! `{"error": .., "code": ..}` with a status code: 400 bad input (malformed JSON included),
//! 401 no or unknown token, 403 role too low, 404 not found, 409 conflict, 413 body over
//! `max_body`, 503/504 cluster trouble. The server binds to loopback unless told otherwise.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::Instrument;

use crate::{
    cache::{CacheError, WriteOptions},
    cluster::{MemberState, Node},
    core::quorum::Consistency,
    events::PublishError,
    store::BucketConfig,
};

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Metrics, cluster, members, buckets, cache reads.
    Read,
    /// And cache writes and deletes, publishing.
    Write,
    /// And declaring buckets.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = AdminError;
    fn from_str(s: &str) -> Result<Self, AdminError> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(AdminError::Config(format!("unknown role {s:?} (read, write, admin)"))),
        }
    }
}

/// A bearer token the admin API accepts: its SHA-256 digest (never the token itself) and role.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    name: String,
    digest: [u8; 32],
    role: Role,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken").field("name", &self.name).field("role", &self.role).finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl AdminToken {
    /// A token given in clear (it is hashed at once). At least 16 bytes.
    pub fn new(name: &str, token: &str, role: Role) -> Result<Self, AdminError> {
        if token.len() < 16 {
            return Err(AdminError::Config(format!(
                "token {name:?} is {} bytes; use at least 16 random bytes",
                token.len()
            )));
        }
        Ok(AdminToken { name: name.to_owned(), digest: sha256(token.as_bytes()), role })
    }

    /// A token known only by its SHA-256 digest (64 hex characters).
    pub fn from_sha256_hex(name: &str, hex: &str, role: Role) -> Result<Self, AdminError> {
        let bad = || AdminError::Config(format!("token {name:?}: expected 64 hex characters"));
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(AdminToken { name: name.to_owned(), digest, role })
    }

    /// The token's role.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// Configuration of the admin API.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen. Default `127.0.0.1:7947`.
    pub bind: SocketAddr,
    /// Allow a non-loopback `bind` (the API then answers anyone who can reach it and holds a
    /// token). Default false.
    pub allow_non_loopback: bool,
    /// Accepted tokens. With none, only `/health` and `/ready` answer.
    pub tokens: Vec<AdminToken>,
    /// Largest request body; larger ones get 413. Default 1 MiB; at most 16 MiB.
    pub max_body: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7947)),
            allow_non_loopback: false,
            tokens: Vec::new(),
            max_body: 1024 * 1024,
        }
    }
}

/// Why the admin API did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration was refused.
    #[error("admin configuration: {0}")]
    Config(String),
    /// Binding the listener failed.
    #[error("admin bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running admin API.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Validates `config`, binds, and serves `node`'s admin API until [`AdminServer::stop`].
    pub async fn start(node: Node, config: AdminConfig) -> Result<AdminServer, AdminError> {
        if !config.bind.ip().is_loopback() && !config.allow_non_loopback {
            return Err(AdminError::Config(format!(
                "{} is not a loopback address; set allow_non_loopback to serve beyond this host",
                config.bind
            )));
        }
        if !(1..=16 * 1024 * 1024).contains(&config.max_body) {
            return Err(AdminError::Config("max_body must be 1 B to 16 MiB".into()));
        }
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| AdminError::Bind { addr: config.bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr: config.bind, source })?;
        let state = Arc::new(Shared { node, tokens: config.tokens, requests: AtomicU64::new(0) });
        let app = router(state, config.max_body);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "admin API stopped");
            }
        });
        tracing::info!(%addr, "admin API listening");
        Ok(AdminServer { addr, stop: Some(stop), task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes requests in flight (at most `timeout`).
    pub async fn stop(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

struct Shared {
    node: Node,
    tokens: Vec<AdminToken>,
    requests: AtomicU64,
}

type St = State<Arc<Shared>>;

fn router(state: Arc<Shared>, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/members", get(members))
        .route("/v1/buckets", get(buckets).post(create_bucket))
        .route("/v1/buckets/{bucket}/replica", get(replica))
        .route("/v1/cache/{bucket}/{key}", put(cache_set).get(cache_get).delete(cache_delete))
        .route("/v1/events/{topic}", post(publish))
        .route("/v1/events/{topic}/stream", get(stream))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), traced))
        .with_state(state)
}

/// Every request gets a span with the node, a request id, method and path.
async fn traced(State(s): St, req: Request, next: Next) -> Response {
    let id = s.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!(
        "admin",
        node = %s.node.id(),
        request_id = id,
        method = %req.method(),
        path = %req.uri().path()
    );
    async move {
        let response = next.run(req).await;
        tracing::debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

/// A JSON error with a status code.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message, "code": self.code }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let status = match &e {
            CacheError::UnknownBucket { .. } => StatusCode::NOT_FOUND,
            CacheError::Conflict { .. } => StatusCode::CONFLICT,
            CacheError::Indeterminate { .. } => StatusCode::GATEWAY_TIMEOUT,
            CacheError::Unavailable { .. }
            | CacheError::Failed { .. }
            | CacheError::ReadFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "cache", e.to_string())
    }
}

/// Checks the bearer token against every stored digest (each compared in constant time, all
/// of them compared) and the role.
fn authorize(s: &Shared, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token")
        })?;
    let digest = sha256(presented.trim().as_bytes());
    let mut role = None;
    for t in &s.tokens {
        let diff = t.digest.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            role = Some(t.role);
        }
    }
    match role {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")),
        Some(r) if r < needed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token's role is {r:?}; {needed:?} is needed"),
        )),
        Some(_) => Ok(()),
    }
}

async fn health(State(s): St) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "node": s.node.id().as_str() }))
}

/// Joined (at least one other member alive, or no seeds) and the cache holds what it owns.
fn is_ready(node: &Node) -> bool {
    node.is_joined() && node.cache().is_ready()
}

async fn ready(State(s): St) -> Response {
    let ready = is_ready(&s.node);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "node": s.node.id().as_str() })))
        .into_response()
}

async fn metrics(State(s): St, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let body = s.node.metrics().encode();
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        body,
    )
        .into_response())
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

async fn cluster(State(s): St, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let view = s.node.members();
    let count = |st| view.members.iter().filter(|m| m.state == st).count();
    Ok(Json(serde_json::json!({
        "node": s.node.id().as_str(),
        "cluster": s.node.config().cluster,
        "addr": s.node.addr().to_string(),
        "ready": is_ready(&s.node),
        "members": {
            "alive": count(MemberState::Alive),
            "suspect": count(MemberState::Suspect),
            "down": count(MemberState::Down),
            "left": count(MemberState::Left),
        },
    })))
}

async fn members(State(s): St, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let list: Vec<serde_json::Value> = s
        .node
        .members()
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id.as_str(),
                "addr": m.addr.to_string(),
                "state": state_name(m.state),
                "generation": m.generation,
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(list)))
}

async fn buckets(State(s): St, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let cache = s.node.cache();
    let list: Vec<serde_json::Value> = cache
        .buckets()
        .iter()
        .map(|c| {
            let stats = cache.bucket(c.name().as_str()).map(|b| b.stats()).unwrap_or_default();
            serde_json::json!({
                "name": c.name().to_string(),
                "replicas": c.replicas(),
                "max_entries": c.capacity().max_entries(),
                "max_bytes": c.capacity().max_bytes(),
                "default_ttl_ms": c.default_ttl().map(|t| t.as_millis() as u64),
                "entries": stats.entries,
                "bytes": stats.bytes,
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(list)))
}

/// Every record of this node's replica of a bucket, one JSON line each, streamed from a
/// blocking thread in 64 KiB chunks (a slow reader holds the walk, not memory).
async fn replica(
    State(s): St,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Admin)?;
    let b = s.node.cache().bucket(&bucket)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(CHUNK);
        let mut open = true;
        b.for_each_local(|key, record| {
            if !open {
                return;
            }
            let mut v = match std::str::from_utf8(key) {
                Ok(k) => serde_json::json!({ "key": k }),
                Err(_) => serde_json::json!({ "key_hex": hex(key) }),
            };
            v["version"] = format!("{}", record.version).into();
            v["tombstone"] = record.is_tombstone().into();
            if serde_json::to_writer(&mut buf, &v).is_ok() {
                buf.push(b'\n');
            }
            if buf.len() >= CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                open = tx.blocking_send((Bytes::from(chunk), None)).is_ok();
            }
        });
        if open && !buf.is_empty() {
            let _ = tx.blocking_send((Bytes::from(buf), None));
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::new(Lines::new(rx)))
        .into_response())
}

const CHUNK: usize = 64 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bucket declaration as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketRequest {
    name: String,
    replicas: Option<u32>,
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    default_ttl_ms: Option<u64>,
}

async fn create_bucket(
    State(s): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&s, &headers, Role::Admin)?;
    let req: BucketRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))?;
    let mut b = BucketConfig::builder(&req.name);
    if let Some(r) = req.replicas {
        b = b.replicas(r);
    }
    if let Some(n) = req.max_entries {
        b = b.max_entries(n);
    }
    if let Some(n) = req.max_bytes {
        b = b.max_bytes(n);
    }
    if let Some(ms) = req.default_ttl_ms {
        b = b.default_ttl(Duration::from_millis(ms));
    }
    let config = b
        .build()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_config", e.to_string()))?;
    s.node.cache().create_bucket(config).await?;
    Ok((StatusCode::OK, Json(serde_json::json!({ "name": req.name }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheParams {
    consistency: Option<String>,
    ttl_ms: Option<u64>,
}

fn consistency(p: &CacheParams) -> Result<Option<Consistency>, ApiError> {
    match p.consistency.as_deref() {
        None => Ok(None),
        Some("one") => Ok(Some(Consistency::One)),
        Some("quorum") => Ok(Some(Consistency::Quorum)),
        Some("all") => Ok(Some(Consistency::All)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_consistency",
            format!("consistency {other:?}: use one, quorum or all"),
        )),
    }
}

fn params(
    q: Result<Query<CacheParams>, axum::extract::rejection::QueryRejection>,
) -> Result<CacheParams, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

async fn cache_get(
    State(s): St,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    q: Result<Query<CacheParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let p = params(q)?;
    let b = s.node.cache().bucket(&bucket)?;
    let value = match consistency(&p)? {
        Some(c) => b.get_with(&key, c).await?,
        None => b.get(&key).await?,
    };
    match value {
        Some(v) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], v.into_bytes())
                .into_response())
        }
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "absent", format!("{bucket}/{key} is absent")))
        }
    }
}

async fn cache_set(
    State(s): St,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    q: Result<Query<CacheParams>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Write)?;
    let p = params(q)?;
    let b = s.node.cache().bucket(&bucket)?;
    let mut options = WriteOptions::default();
    if let Some(c) = consistency(&p)? {
        options.consistency = Some(c);
    }
    options.ttl = p.ttl_ms.map(Duration::from_millis);
    let version = b.set_with(&key, body, options).await?;
    Ok(Json(serde_json::json!({ "version": format!("{version:?}") })))
}

async fn cache_delete(
    State(s): St,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Write)?;
    s.node.cache().bucket(&bucket)?.delete(&key).await?;
    Ok(Json(serde_json::json!({ "deleted": key })))
}

async fn publish(
    State(s): St,
    headers: HeaderMap,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers, Role::Write)?;
    match s.node.events().publish(&topic, body).await {
        Ok(id) => Ok(Json(serde_json::json!({ "id": id.to_string() }))),
        Err(PublishError::Refused(e)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "refused", e.to_string()))
        }
        Err(e @ PublishError::Unconfirmed { .. }) => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "unconfirmed", e.to_string()))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    group: Option<String>,
}

/// One event as a JSON line.
fn line(e: &crate::events::Event) -> Bytes {
    let mut v = serde_json::to_vec(&serde_json::json!({
        "id": e.id.to_string(),
        "publisher": e.id.publisher.as_str(),
        "seq": e.id.seq,
        "topic": &*e.topic,
        "attempt": e.attempt,
        "published_at_ms": e.published_at_ms,
        "payload": String::from_utf8_lossy(&e.payload),
    }))
    .unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// One chunk of a streamed body and, for a consumer group, the delivery it carries.
type Chunk = (Bytes, Option<crate::events::Delivery>);

/// A response body fed by a task through a bounded channel (a slow reader slows the
/// subscription down: back-pressure, or `Lagged` for a lagging one, as for any subscriber).
///
/// A group delivery is acknowledged only when the server asks for the chunk after the one
/// carrying it, that is once its line has been handed to the connection; a body dropped
/// before that (the client went away, the node is stopping) drops the delivery unacknowledged
/// and the group gets it again. Acknowledging when the line entered the channel lost the
/// lines still queued there when the connection ended.
struct Lines {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    written: Option<crate::events::Delivery>,
}

impl Lines {
    fn new(rx: tokio::sync::mpsc::Receiver<Chunk>) -> Self {
        Lines { rx, written: None }
    }
}

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.written.take() {
            d.ack();
        }
        self.rx.poll_recv(cx).map(|chunk| {
            chunk.map(|(bytes, delivery)| {
                self.written = delivery;
                Ok(http_body::Frame::data(bytes))
            })
        })
    }
}

async fn stream(
    State(s): St,
    headers: HeaderMap,
    Path(topic): Path<String>,
    q: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let p = q
        .map(|Query(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let refused = |e: crate::events::EventsError| {
        ApiError::new(StatusCode::BAD_REQUEST, "refused", e.to_string())
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(64);
    match p.group {
        None => {
            let mut sub = s.node.events().subscribe(&topic).await.map_err(refused)?;
            tokio::spawn(async move {
                loop {
                    let next = match sub.recv().await {
                        Ok(e) => line(&e),
                        Err(crate::events::RecvError::Closed) => return,
                        Err(e) => {
                            let mut v =
                                serde_json::to_vec(&serde_json::json!({ "notice": e.to_string() }))
                                    .unwrap_or_default();
                            v.push(b'\n');
                            Bytes::from(v)
                        }
                    };
                    if tx.send((next, None)).await.is_err() {
                        return; // the client went away: unsubscribe
                    }
                }
            });
        }
        Some(group) => {
            let mut member =
                s.node.events().subscribe_group(&topic, &group).await.map_err(refused)?;
            tokio::spawn(async move {
                while let Ok(d) = member.recv().await {
                    if tx.send((line(&d.event), Some(d))).await.is_err() {
                        return; // not written: dropping `d` gives it back for redelivery
                    }
                }
            });
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::new(Lines::new(rx)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::{pin::Pin, task::Context};

    use http_body::Body as _;

    use super::*;
    use crate::{NodeId, cluster::ClusterConfig, security::Trust};

    const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

    /// Found reading the stream code while writing the chaos harness' events workload: a
    /// group delivery was acknowledged when its line entered the body's channel, so lines
    /// still queued when the connection ended were lost. Dropped before it was handed on, a
    /// delivery now goes back to the group; handed on, it is acknowledged.
    #[tokio::test(start_paused = true)]
    async fn a_group_delivery_is_acknowledged_only_once_its_line_is_handed_on() {
        let id = NodeId::new("stream-1").unwrap();
        let config = ClusterConfig::lan("streamtest", id, SocketAddr::from(([127, 0, 0, 1], 0)));
        let node = Node::builder(config)
            .trust(Trust::cluster_secret(SECRET).unwrap())
            .start()
            .await
            .unwrap();
        let events = node.events();
        let options = crate::events::GroupOptions {
            ack_deadline: Duration::from_millis(200),
            ..Default::default()
        };
        let mut member = events.subscribe_group_with("t", "g", options).await.unwrap();
        events.publish("t", &b"x"[..]).await.unwrap();

        // Queued for a connection that ends before taking it: given back, delivered again.
        let d = member.recv().await.unwrap();
        assert_eq!(d.event.attempt, 1);
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        tx.send((line(&d.event), Some(d))).await.unwrap();
        drop(Lines::new(rx));
        let again = member.recv().await.unwrap();
        assert_eq!(again.event.attempt, 2, "redelivered");

        // Handed on (the body asked for the next chunk): acknowledged, never delivered again.
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        tx.send((line(&again.event), Some(again))).await.unwrap();
        let mut body = Lines::new(rx);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), std::task::Poll::Ready(Some(_))));
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        drop(body);
        let later = tokio::time::timeout(Duration::from_secs(1), member.recv()).await;
        assert!(later.is_err(), "acknowledged, yet delivered again: {later:?}");
        node.shutdown(Duration::from_secs(2)).await;
    }
}
