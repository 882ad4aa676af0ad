//! Test support shared by the workspace's integration tests. Not published.

#![deny(missing_docs)]

pub mod prometheus;
pub mod sim;
