//! Application messaging: `node.application("orders")` and its inboxes.
//!
//! Applications are isolated: each has its own bounded message and request queues. A message
//! is acknowledged once it sits in the receiving application's queue; when that queue is full
//! the sender gets `Overloaded`, so a slow handler slows its senders down instead of growing
//! memory or losing messages.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use mycorrizal_core::{
    NodeId,
    wire::{
        Channel,
        messages::{AppEnvelope, ErrorCode},
    },
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};

use super::{
    link::{Dispatch, Links, MessagingError, Responder},
    membership::MembershipView,
};

/// Messages and requests queued per application before senders get `Overloaded`.
pub const DEFAULT_APP_QUEUE: usize = 1024;
/// How long `send` and `broadcast` wait for the receiver's acknowledgement.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A one-way message received by an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// The sending node (authenticated by its certificate).
    pub from: NodeId,
    /// The bytes it sent.
    pub body: Bytes,
}

/// A request received by an application; answer it through `responder`.
#[derive(Debug)]
pub struct AppRequest {
    /// The requesting node (authenticated by its certificate).
    pub from: NodeId,
    /// The request's bytes.
    pub body: Bytes,
    /// Answers the request (once); dropping it answers with an error.
    pub responder: Responder,
}

struct Inbox {
    messages_tx: mpsc::Sender<AppMessage>,
    messages_rx: Mutex<Option<mpsc::Receiver<AppMessage>>>,
    requests_tx: mpsc::Sender<AppRequest>,
    requests_rx: Mutex<Option<mpsc::Receiver<AppRequest>>>,
}

/// Routes inbound frames to applications.
#[derive(Default)]
pub(crate) struct Registry {
    apps: Mutex<HashMap<String, Arc<Inbox>>>,
    cache: std::sync::OnceLock<crate::cache::CacheDispatch>,
    events: std::sync::OnceLock<crate::events::EventsDispatch>,
}

impl Registry {
    /// Routes the Cache channel to the node's cache (once, at start).
    pub(crate) fn set_cache(&self, cache: crate::cache::CacheDispatch) {
        let _ = self.cache.set(cache);
    }

    /// Routes the Events channel to the node's event bus (once, at start).
    pub(crate) fn set_events(&self, events: crate::events::EventsDispatch) {
        let _ = self.events.set(events);
    }

    fn inbox(&self, name: &str, capacity: usize) -> Arc<Inbox> {
        let mut apps = crate::sync::lock(&self.apps);
        apps.entry(name.to_owned())
            .or_insert_with(|| {
                let (messages_tx, messages_rx) = mpsc::channel(capacity);
                let (requests_tx, requests_rx) = mpsc::channel(capacity);
                Arc::new(Inbox {
                    messages_tx,
                    messages_rx: Mutex::new(Some(messages_rx)),
                    requests_tx,
                    requests_rx: Mutex::new(Some(requests_rx)),
                })
            })
            .clone()
    }
}

impl Dispatch for Registry {
    fn dispatch(&self, from: &NodeId, channel: Channel, payload: Bytes, reply: Responder) {
        let span = tracing::debug_span!(
            "serve",
            from = %from,
            channel = ?channel,
            request_id = crate::trace::request_id()
        );
        let _in_span = span.enter();
        if channel == Channel::Cache
            && let Some(cache) = self.cache.get()
        {
            cache.dispatch(from, payload, reply);
            return;
        }
        if channel == Channel::Events
            && let Some(events) = self.events.get()
        {
            events.dispatch(from, payload, reply);
            return;
        }
        if channel != Channel::App {
            reply.fail(ErrorCode::NoHandler, format!("no handler for channel {channel:?}"));
            return;
        }
        let Ok(env) = AppEnvelope::decode(payload) else {
            reply.fail(ErrorCode::BadRequest, "malformed application envelope");
            return;
        };
        let inbox = crate::sync::lock(&self.apps).get(&env.app).cloned();
        let Some(inbox) = inbox else {
            reply.fail(ErrorCode::NoHandler, format!("no application {:?} on this node", env.app));
            return;
        };
        if env.message {
            match inbox.messages_tx.try_send(AppMessage { from: from.clone(), body: env.body }) {
                Ok(()) => reply.respond(Bytes::new()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    reply.fail(ErrorCode::Overloaded, format!("{} message queue full", env.app))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => reply
                    .fail(ErrorCode::NoHandler, format!("{} stopped reading messages", env.app)),
            }
        } else {
            let request = AppRequest { from: from.clone(), body: env.body, responder: reply };
            match inbox.requests_tx.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => r
                    .responder
                    .fail(ErrorCode::Overloaded, format!("{} request queue full", env.app)),
                Err(mpsc::error::TrySendError::Closed(r)) => r
                    .responder
                    .fail(ErrorCode::NoHandler, format!("{} stopped reading requests", env.app)),
            }
        }
    }
}

/// One application's view of the cluster: send to, broadcast to and request from the same
/// application on other nodes, and receive what they send. Cloning is cheap.
#[derive(Clone)]
pub struct Application {
    name: Arc<str>,
    me: NodeId,
    links: Arc<Links>,
    view: watch::Receiver<Arc<MembershipView>>,
    inbox: Arc<Inbox>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Application {
    pub(crate) fn new(
        name: &str,
        me: NodeId,
        links: Arc<Links>,
        view: watch::Receiver<Arc<MembershipView>>,
        registry: &Registry,
    ) -> Self {
        Application {
            name: Arc::from(name),
            me,
            links,
            view,
            inbox: registry.inbox(name, DEFAULT_APP_QUEUE),
        }
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn envelope(&self, body: Bytes, message: bool) -> Bytes {
        Bytes::from(AppEnvelope { app: self.name.to_string(), body, message }.encode_to_vec())
    }

    /// Sends `body` to this application on `to`. Returns once it is queued there; an error says
    /// it was not (or, for `Timeout`/`ConnectionLost`, that it may not have been).
    pub async fn send(&self, to: &NodeId, body: impl Into<Bytes>) -> Result<(), MessagingError> {
        let payload = self.envelope(body.into(), true);
        self.links.request(to, Channel::App, payload, DEFAULT_SEND_TIMEOUT).await.map(|_| ())
    }

    /// Sends `body` to this application on every other live member; one result per member.
    pub async fn broadcast(
        &self,
        body: impl Into<Bytes>,
    ) -> Vec<(NodeId, Result<(), MessagingError>)> {
        let body = body.into();
        let targets: Vec<NodeId> =
            self.view.borrow().live().filter(|m| m.id != self.me).map(|m| m.id.clone()).collect();
        let mut set = tokio::task::JoinSet::new();
        for to in targets {
            let (app, body) = (self.clone(), body.clone());
            set.spawn(async move {
                let r = app.send(&to, body).await;
                (to, r)
            });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        results
    }

    /// Sends a request to this application on `to` and waits at most `timeout` for its answer.
    pub async fn request(
        &self,
        to: &NodeId,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, MessagingError> {
        let payload = self.envelope(body.into(), false);
        self.links.request(to, Channel::App, payload, timeout).await
    }

    /// The receiver of messages sent to this application on this node. Can be taken once;
    /// later calls return `None`.
    pub fn messages(&self) -> Option<mpsc::Receiver<AppMessage>> {
        crate::sync::lock(&self.inbox.messages_rx).take()
    }

    /// The receiver of requests sent to this application on this node. Can be taken once.
    pub fn requests(&self) -> Option<mpsc::Receiver<AppRequest>> {
        crate::sync::lock(&self.inbox.requests_rx).take()
    }
}
