//! Frames: the unit of the stream transport.
//!
//! ```text
//!  0        1        2        3        4                               12               16
//! +--------+--------+--------+--------+--------------------------------+----------------+
//! |version |  kind  |channel | flags  |      request id (u64, BE)      | length (u32 BE)|
//! +--------+--------+--------+--------+--------------------------------+----------------+
//! | payload: `length` bytes (a prost message, or raw bytes for application bodies)     |
//! +-------------------------------------------------------------------------------------+
//! ```
//!
//! The decoder checks every header field, and the length against a configured maximum,
//! *before* it reserves or slices anything: a peer cannot make us allocate more than one
//! maximum-size frame per connection, and a malformed header is an error, never a panic.
//!
//! A message larger than one frame travels as several frames with the same kind, channel and
//! request id; every frame but the last carries [`Flags::MORE`]. [`Reassembler`] puts them back
//! together under a per-connection byte budget. Senders interleave the frames of large messages
//! with other traffic, so a small request waits behind at most one chunk.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The wire protocol version this build speaks. Frames of any other version are refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest frame payload a decoder can be configured to accept: 16 MiB.
pub const MAX_FRAME_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Default payload size of the chunks a large message is cut into: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Which subsystem a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    /// Connection management: hello, errors, pings.
    System = 0,
    /// The distributed cache.
    Cache = 1,
    /// The event bus.
    Events = 2,
    /// Application messaging; the payload names the application.
    App = 3,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Expects a [`Kind::Response`] or [`Kind::ErrorResponse`] with the same request id.
    Request = 1,
    /// The successful answer to a request.
    Response = 2,
    /// Needs no answer.
    OneWay = 3,
    /// The failed answer to a request; the payload is an `ErrorReply`.
    ErrorResponse = 4,
}

/// Frame flags. Unknown bits are refused so they can be given meaning later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// More frames of the same message follow.
    pub const MORE: Flags = Flags(1);
    const KNOWN: u8 = 1;

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: Kind,
    /// Which subsystem it is for.
    pub channel: Channel,
    /// Flags.
    pub flags: Flags,
    /// Correlates requests with responses; unique per sender and connection. Zero for one-way
    /// frames that need no correlation.
    pub request_id: u64,
    /// Payload length in bytes.
    pub len: u32,
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; `header.len == payload.len()`.
    pub header: FrameHeader,
    /// The payload.
    pub payload: Bytes,
}

/// Why bytes from a peer were not a valid frame. The connection should be closed: the stream
/// can no longer be trusted to be aligned on frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer speaks another protocol version.
    #[error("peer sent protocol version {got}; this node speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
    },
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Unknown channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// Flag bits this version does not define.
    #[error("undefined flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// The frame is larger than this connection accepts.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A reassembled message would exceed its limit.
    #[error("message {request_id} exceeds {max} bytes")]
    MessageTooLarge {
        /// The message's request id.
        request_id: u64,
        /// The limit.
        max: usize,
    },
    /// Partial messages on this connection would exceed the connection's budget.
    #[error("{pending} bytes of partial messages exceed the connection budget of {max}")]
    TooManyPartials {
        /// Bytes held including the new frame.
        pending: usize,
        /// The budget.
        max: usize,
    },
}

impl Kind {
    fn from_u8(b: u8) -> Result<Kind, FrameError> {
        Ok(match b {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::OneWay,
            4 => Kind::ErrorResponse,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

impl Channel {
    fn from_u8(b: u8) -> Result<Channel, FrameError> {
        Ok(match b {
            0 => Channel::System,
            1 => Channel::Cache,
            2 => Channel::Events,
            3 => Channel::App,
            other => return Err(FrameError::UnknownChannel(other)),
        })
    }
}

impl FrameHeader {
    /// Writes the header in its 16-byte wire form.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(self.kind as u8);
        buf.put_u8(self.channel as u8);
        buf.put_u8(self.flags.0);
        buf.put_u64(self.request_id);
        buf.put_u32(self.len);
    }

    /// Parses and checks a header; `max_payload` bounds `len`.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<FrameHeader, FrameError> {
        let mut b = &bytes[..];
        let version = b.get_u8();
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { got: version });
        }
        let kind = Kind::from_u8(b.get_u8())?;
        let channel = Channel::from_u8(b.get_u8())?;
        let flags = b.get_u8();
        if flags & !Flags::KNOWN != 0 {
            return Err(FrameError::UnknownFlags(flags & !Flags::KNOWN));
        }
        let request_id = b.get_u64();
        let len = b.get_u32();
        if len > max_payload {
            return Err(FrameError::TooLarge { len, max: max_payload });
        }
        Ok(FrameHeader { kind, channel, flags: Flags(flags), request_id, len })
    }
}

impl Frame {
    /// Appends the frame (header and payload) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        debug_assert_eq!(self.header.len as usize, self.payload.len());
        buf.reserve(HEADER_LEN + self.payload.len());
        self.header.encode(buf);
        buf.put_slice(&self.payload);
    }
}

/// Splits `payload` into frames of at most `chunk_size` bytes (at least one frame, even for an
/// empty payload); all but the last carry [`Flags::MORE`].
pub fn split_message(
    kind: Kind,
    channel: Channel,
    request_id: u64,
    payload: Bytes,
    chunk_size: usize,
) -> MessageFrames {
    let chunk_size = chunk_size.max(1);
    let n = payload.len().div_ceil(chunk_size).max(1);
    MessageFrames { kind, channel, request_id, payload, chunk_size, next: 0, n }
}

/// The frames of one message, in order ([`split_message`]); slices of its payload, no copies.
#[derive(Debug, Clone)]
pub struct MessageFrames {
    kind: Kind,
    channel: Channel,
    request_id: u64,
    payload: Bytes,
    chunk_size: usize,
    next: usize,
    n: usize,
}

impl Iterator for MessageFrames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.next == self.n {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let start = i * self.chunk_size;
        let end = (start + self.chunk_size).min(self.payload.len());
        let part = self.payload.slice(start..end);
        let flags = if i + 1 < self.n { Flags::MORE } else { Flags::NONE };
        let (kind, channel, request_id) = (self.kind, self.channel, self.request_id);
        Some(Frame {
            header: FrameHeader { kind, channel, flags, request_id, len: part.len() as u32 },
            payload: part,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n - self.next, Some(self.n - self.next))
    }
}

impl ExactSizeIterator for MessageFrames {}

/// Incremental decoder: feed it the bytes read from a connection, take frames out.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: u32,
    header: Option<FrameHeader>,
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max_payload` bytes (capped at [`MAX_FRAME_PAYLOAD`]).
    pub fn new(max_payload: u32) -> Self {
        FrameDecoder { max_payload: max_payload.min(MAX_FRAME_PAYLOAD), header: None }
    }

    /// Takes the next whole frame out of `buf`, or `None` if more bytes are needed. After an
    /// error the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                let Some(raw) = buf.get(..HEADER_LEN) else { return Ok(None) };
                let raw: &[u8; HEADER_LEN] =
                    raw.try_into().expect("slice of HEADER_LEN bytes converts to an array");
                let h = FrameHeader::decode(raw, self.max_payload)?;
                buf.advance(HEADER_LEN);
                self.header = Some(h);
                h
            }
        };
        let len = header.len as usize;
        if buf.len() < len {
            // The length was checked against the limit, so reserving it is bounded.
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        self.header = None;
        Ok(Some(Frame { header, payload: buf.split_to(len).freeze() }))
    }
}

/// Reassembles messages sent as several frames, under a byte budget.
#[derive(Debug)]
pub struct Reassembler {
    max_message: usize,
    max_pending: usize,
    pending_bytes: usize,
    partial: HashMap<(u64, u8, u8), BytesMut>,
}

/// A complete message: the header of its last frame (with the whole length) and its payload.
pub type Message = Frame;

impl Reassembler {
    /// At most `max_message` bytes per message and `max_pending` bytes of partial messages.
    pub fn new(max_message: usize, max_pending: usize) -> Self {
        Reassembler { max_message, max_pending, pending_bytes: 0, partial: HashMap::new() }
    }

    /// Adds a frame; returns the message it completes, if any.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        let h = frame.header;
        let key = (h.request_id, h.kind as u8, h.channel as u8);
        let more = h.flags.contains(Flags::MORE);
        if !more && !self.partial.contains_key(&key) {
            if frame.payload.len() > self.max_message {
                return Err(FrameError::MessageTooLarge {
                    request_id: h.request_id,
                    max: self.max_message,
                });
            }
            return Ok(Some(frame)); // the common case: a message in one frame, no copy
        }
        let held = self.partial.get(&key).map_or(0, BytesMut::len);
        if held + frame.payload.len() > self.max_message {
            return Err(FrameError::MessageTooLarge {
                request_id: h.request_id,
                max: self.max_message,
            });
        }
        let pending = self.pending_bytes + frame.payload.len();
        if pending > self.max_pending {
            return Err(FrameError::TooManyPartials { pending, max: self.max_pending });
        }
        self.pending_bytes = pending;
        let buf = self.partial.entry(key).or_default();
        buf.extend_from_slice(&frame.payload);
        if more {
            return Ok(None);
        }
        let whole = self.partial.remove(&key).unwrap_or_default().freeze();
        self.pending_bytes -= whole.len();
        Ok(Some(Frame {
            header: FrameHeader { flags: Flags::NONE, len: whole.len() as u32, ..h },
            payload: whole,
        }))
    }

    /// Bytes held in partial messages.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(kind: Kind, channel: Channel, id: u64, payload: &'static [u8]) -> Frame {
        let payload = Bytes::from_static(payload);
        Frame {
            header: FrameHeader {
                kind,
                channel,
                flags: Flags::NONE,
                request_id: id,
                len: payload.len() as u32,
            },
            payload,
        }
    }

    #[test]
    fn header_layout_is_pinned() {
        let mut buf = BytesMut::new();
        frame(Kind::Request, Channel::App, 0x0102_0304_0506_0708, b"hi").encode(&mut buf);
        assert_eq!(&buf[..], &[1, 1, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut wire = BytesMut::new();
        let frames = [
            frame(Kind::Request, Channel::Cache, 1, b"abc"),
            frame(Kind::OneWay, Channel::System, 0, b""),
        ];
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn refuses_bad_headers_before_allocating() {
        let cases: [([u8; HEADER_LEN], FrameError); 5] = [
            (
                [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::UnsupportedVersion { got: 2 },
            ),
            ([1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], FrameError::UnknownKind(9)),
            ([1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], FrameError::UnknownChannel(7)),
            ([1, 1, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], FrameError::UnknownFlags(0x80)),
            (
                [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                FrameError::TooLarge { len: u32::MAX, max: 1024 },
            ),
        ];
        for (raw, expected) in cases {
            let mut buf = BytesMut::from(&raw[..]);
            let cap_before = buf.capacity();
            assert_eq!(FrameDecoder::new(1024).decode(&mut buf), Err(expected));
            assert_eq!(buf.capacity(), cap_before, "nothing reserved for a refused frame");
        }
    }

    #[test]
    fn reassembles_interleaved_messages_under_a_budget() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let small = Bytes::from_static(b"ping");
        let mut frames: Vec<Frame> =
            split_message(Kind::Request, Channel::Cache, 1, big.clone(), 4096).collect();
        assert_eq!(frames.len(), 3);
        frames.insert(
            1,
            split_message(Kind::Request, Channel::Cache, 2, small.clone(), 4096).next().unwrap(),
        );
        let mut r = Reassembler::new(1 << 20, 1 << 20);
        let done: Vec<Frame> = frames.into_iter().filter_map(|f| r.push(f).unwrap()).collect();
        assert_eq!(done.len(), 2);
        assert_eq!((done[0].header.request_id, &done[0].payload), (2, &small));
        assert_eq!((done[1].header.request_id, &done[1].payload), (1, &big));
        assert_eq!(r.pending_bytes(), 0);

        let mut tight = Reassembler::new(5_000, 1 << 20);
        let mut it = split_message(Kind::Request, Channel::Cache, 3, big, 4096);
        assert!(tight.push(it.next().unwrap()).unwrap().is_none());
        assert!(matches!(tight.push(it.next().unwrap()), Err(FrameError::MessageTooLarge { .. })));
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        (
            prop_oneof![
                Just(Kind::Request),
                Just(Kind::Response),
                Just(Kind::OneWay),
                Just(Kind::ErrorResponse)
            ],
            prop_oneof![
                Just(Channel::System),
                Just(Channel::Cache),
                Just(Channel::Events),
                Just(Channel::App)
            ],
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, channel, more, request_id, payload)| Frame {
                header: FrameHeader {
                    kind,
                    channel,
                    flags: if more { Flags::MORE } else { Flags::NONE },
                    request_id,
                    len: payload.len() as u32,
                },
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        /// Any sequence of frames, cut into reads of any sizes, decodes to the same frames.
        #[test]
        fn round_trips_across_any_read_boundaries(
            frames in prop::collection::vec(any_frame(), 0..20),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames { f.encode(&mut wire); }
            let mut wire = wire.freeze();
            let mut dec = FrameDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut i = 0;
            while !wire.is_empty() {
                let n = cuts[i % cuts.len()].min(wire.len());
                i += 1;
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(f) = dec.decode(&mut buf).unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, frames);
        }

        /// Arbitrary bytes never panic the decoder, and it never holds more than one bounded
        /// frame's worth of memory.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut dec = FrameDecoder::new(512);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                prop_assert!(f.payload.len() <= 512);
            }
            prop_assert!(buf.capacity() <= 2 * (2048 + 512 + HEADER_LEN));
        }

        /// Splitting then reassembling gives back the payload for any size and chunk size.
        #[test]
        fn split_then_reassemble(len in 0usize..5000, chunk in 1usize..700, id in any::<u64>()) {
            let payload = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let mut r = Reassembler::new(5000, 5000);
            let mut done = None;
            for f in split_message(Kind::Response, Channel::App, id, payload.clone(), chunk) {
                prop_assert!(f.payload.len() <= chunk);
                prop_assert!(done.is_none());
                done = r.push(f).unwrap();
            }
            prop_assert_eq!(done.map(|m| m.payload), Some(payload));
        }
    }
}
