//! The cluster layer (Nodosum): membership, failure detection, and the node lifecycle.
//!
//! A [`Node`] runs SWIM membership (foca) over sealed UDP datagrams and exposes the membership
//! as a watch of [`MembershipView`]s. Streams between nodes (mutual TLS) come from the
//! [`transport`](crate::transport) module.

mod config;
mod membership;
mod node;

pub use config::{ClusterConfig, ClusterConfigError, Preset};
pub use membership::{
    Member, MemberState, MembershipStats, MembershipStatsSnapshot, MembershipView,
};
pub use node::{Node, NodeBuilder, NodeError};
