//! Payloads of system and application frames, as prost messages (derive only, no protoc).
//!
//! prost decoding is bounded by its input: a length prefix larger than the remaining payload is
//! an error, so a decoded message never allocates more than the (already bounded) frame size.

use bytes::Bytes;

/// First frame on every connection, sent by the dialing node (System channel, Request).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    #[prost(uint32, tag = "1")]
    pub min_version: u32,
    /// Highest protocol version the sender speaks.
    #[prost(uint32, tag = "2")]
    pub max_version: u32,
    /// The cluster the sender belongs to; a mismatch is refused.
    #[prost(string, tag = "3")]
    pub cluster: String,
    /// The sender's node id; must match its certificate.
    #[prost(string, tag = "4")]
    pub node_id: String,
}

/// The accepting node's answer to [`Hello`] (System channel, Response).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HelloAck {
    /// The version both sides will speak.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The acceptor's node id.
    #[prost(string, tag = "2")]
    pub node_id: String,
}

/// Why a request failed (payload of an `ErrorResponse` frame).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ErrorReply {
    /// Machine-readable reason.
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    /// Human-readable detail.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Machine-readable failure reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    /// Unrecognised code from a newer peer.
    Unspecified = 0,
    /// The receiver's queue for this work is full; nothing was done. Retry later.
    Overloaded = 1,
    /// No handler is registered for the application or operation.
    NoHandler = 2,
    /// The request was malformed.
    BadRequest = 3,
    /// The handler failed or dropped the request without answering.
    HandlerFailed = 4,
    /// Protocol versions do not overlap.
    UnsupportedVersion = 5,
    /// The peer belongs to another cluster or its identity did not check out.
    Unauthorized = 6,
    /// The receiver is shutting down.
    ShuttingDown = 7,
    /// The named bucket is not declared on the receiver (yet).
    UnknownBucket = 8,
    /// The receiver refused the content: too large, or versioned too far in the future.
    Refused = 9,
}

/// An application message or request body (App channel, always a `Request` frame: a message is
/// acknowledged once it is queued for its handler, so the sender learns of every loss).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AppEnvelope {
    /// The application name, e.g. `orders`.
    #[prost(string, tag = "1")]
    pub app: String,
    /// The application's bytes, passed through untouched.
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    /// A one-way message: the receiver answers with an empty response as soon as the message
    /// is queued for the application, instead of with the handler's answer.
    #[prost(bool, tag = "3")]
    pub message: bool,
}
