//! Mycorrizal: the instances of one application form a secure, leaderless cluster and share a
//! replicated cache, messaging and events, in-process.
//!
//! What is in it:
//! - [`store`]: bounded, versioned, expiring buckets (the engine under the distributed cache);
//! - [`clock`]: wall-clock sources and the node's hybrid logical clock;
//! - [`cache`]: the distributed cache: replicated buckets placed by rendezvous hashing;
//! - [`events`]: the event bus: publish/subscribe and consumer groups across the cluster;
//! - [`admin`]: the admin HTTP API (health, readiness, metrics, cluster, cache, events);
//! - [`metrics`]: one Prometheus registry per node, rendered as text;
//! - [`cluster`]: the node, SWIM membership over sealed gossip, failure detection;
//! - [`security`]: trust modes, certificates, TLS configurations, sealed gossip;
//! - [`transport`]: mutual-TLS streams and UDP datagrams, and a deterministic simulated
//!   network.
//!
//! Pure decisions (versions, merge rules) live in [`mycorrizal_core`]; this crate executes them.

#![deny(missing_docs)]
#![deny(unsafe_code)] // one exception: the coarse clock read in `clock`

pub mod admin;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod events;
pub mod metrics;
pub mod security;
pub mod store;
mod sync;
mod trace;
pub mod transport;

pub use mycorrizal_core as core;
pub use mycorrizal_core::NodeId;
pub use store::Value;

/// The README's Rust examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
