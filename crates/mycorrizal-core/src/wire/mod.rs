//! Everything that crosses the network is encoded and decoded here.
//!
//! - [`frame`]: the stream transport's frames, their incremental decoder and reassembly.
//! - [`messages`]: prost payloads of system and application frames.
//! - [`envelope`]: the sealed gossip datagram's layout (the sealing itself needs key material
//!   and lives in the driver crate's security module).
//! - [`cache`]: the Cache channel's requests and answers.
//! - [`events`]: the Events channel: subscription interest and publisher streams.
//! - [`membership`]: member identities and the encoding of SWIM (foca) messages.

pub mod cache;
pub mod envelope;
pub mod events;
pub mod frame;
pub mod membership;
pub mod messages;

pub use frame::{
    Channel, DEFAULT_CHUNK_SIZE, Flags, Frame, FrameDecoder, FrameError, FrameHeader, HEADER_LEN,
    Kind, MAX_FRAME_PAYLOAD, MessageFrames, PROTOCOL_VERSION, Reassembler, split_message,
};
