//! Pure, deterministic logic of Mycorrizal.
//!
//! This crate decides; the `mycorrizal` crate executes. Nothing here performs I/O, reads a
//! clock or draws from a global random number generator: wall-clock time and randomness enter
//! as arguments, so every function can be tested as a plain value-in, value-out computation
//! and every simulation replays exactly from its seed.
//!
//! What lives here:
//! - [`node`]: node identities and the compact tag derived from them.
//! - [`digest`]: range digests that let replicas find what differs without sending keys.
//! - [`events`]: the event bus's rules: names, stream deduplication, gaps, group choice.
//! - [`hlc`]: the hybrid logical clock that versions every write.
//! - [`placement`]: rendezvous hashing: which nodes own a key, who leads a name.
//! - [`quorum`]: consistency levels and the outcome of a replicated write.
//! - [`record`]: versioned values and tombstones, and the last-writer-wins merge rule.
//! - [`rng`]: a seeded generator for simulations and workloads.
//! - [`wire`]: every byte that crosses the network: frames, payload messages, gossip envelopes,
//!   membership messages.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod digest;
pub mod events;
pub mod hlc;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod record;
pub mod rng;
pub mod wire;

pub use hlc::{ClockError, Hlc, HlcTime, Timestamp};
pub use node::{NodeId, NodeIdError, NodeTag};
pub use record::{Record, RecordState};
