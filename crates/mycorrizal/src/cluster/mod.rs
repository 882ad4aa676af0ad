//! The cluster layer (Nodosum): membership, failure detection, and the node lifecycle.
//!
//! A [`Node`] runs SWIM membership (foca) over sealed UDP datagrams and exposes the membership
//! as a watch of [`MembershipView`]s; it keeps one multiplexed, mutually authenticated stream
//! per peer it talks to and carries application messages and requests over it
//! ([`Application`]).

mod config;
mod discovery;
mod leadership;
pub(crate) mod link;
mod membership;
mod messaging;
mod node;

pub use config::{ClusterConfig, ClusterConfigError, Preset};
pub use discovery::{DiscoveryError, DnsDiscovery, DnsSeeds};
pub use leadership::{FencingToken, Leader, Leadership};
pub use link::{LinkSettings, MessagingError, Responder};
pub use membership::{
    Member, MemberState, MembershipStats, MembershipStatsSnapshot, MembershipView,
};
pub use messaging::{AppMessage, AppRequest, Application, DEFAULT_APP_QUEUE, DEFAULT_SEND_TIMEOUT};
pub use node::{Node, NodeBuilder, NodeError};
