//! Node identities.
//!
//! A [`NodeId`] is the human-chosen name of a node (`orders-0`, `10.0.3.7`): it appears in
//! certificates, membership and logs. Versions carry a [`NodeTag`] instead, a 64-bit hash of
//! the id, so that every stored version stays 16 bytes however long the name is.

use std::{fmt, sync::Arc};

use xxhash_rust::xxh3::xxh3_64;

/// Longest node id accepted, in bytes. Long enough for a DNS name label plus a suffix, short
/// enough to embed in every membership message.
pub const MAX_NODE_ID_LEN: usize = 64;

/// The validated, immutable name of a node.
///
/// A node id is a lowercase DNS name of 1 to [`MAX_NODE_ID_LEN`] bytes: labels of `a-z`, `0-9`
/// and `-`, separated by single dots, no label starting or ending with `-` (a Kubernetes pod
/// name, a hostname, `10.0.3.7`). Certificates name nodes by their id (see
/// `mycorrizal::security::server_name`), and certificate names compare case-insensitively, so
/// allowing upper case would let `Node-1` pass for `node-1`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

/// Why a string was refused as a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The id was empty.
    #[error("node id is empty")]
    Empty,
    /// The id was longer than [`MAX_NODE_ID_LEN`] bytes.
    #[error("node id is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the refused id in bytes.
        len: usize,
        /// The limit, [`MAX_NODE_ID_LEN`].
        max: usize,
    },
    /// The id contained a character outside `[a-z0-9.-]`.
    #[error(
        "node id contains {found:?} at byte {at}; only lowercase ASCII letters, digits, '.' and \
         '-' are allowed"
    )]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its byte offset in the id.
        at: usize,
    },
    /// A dot-separated label was empty, longer than 63 bytes, or started or ended with `-`.
    #[error(
        "node id has an empty or over-long label, or one starting or ending with '-', at byte {at}"
    )]
    BadLabel {
        /// Byte offset of the label.
        at: usize,
    },
}

impl NodeId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, NodeIdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong { len: id.len(), max: MAX_NODE_ID_LEN });
        }
        if let Some((at, found)) = id.char_indices().find(|(_, c)| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
        }) {
            return Err(NodeIdError::InvalidChar { found, at });
        }
        let mut at = 0;
        for label in id.split('.') {
            if label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(NodeIdError::BadLabel { at });
            }
            at += label.len() + 1;
        }
        Ok(NodeId(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64-bit tag that stands for this node inside versions.
    ///
    /// Stable across platforms and releases (xxh3, seed 0, over the UTF-8 bytes): changing it
    /// would reorder concurrent writes already stored on disk or in flight.
    pub fn tag(&self) -> NodeTag {
        NodeTag(xxh3_64(self.0.as_bytes()))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

/// A compact stand-in for a [`NodeId`] inside versions: `xxh3_64(id)`.
///
/// It only breaks ties between two writes stamped with the same hybrid time; two nodes whose
/// tags collide (probability about n²/2⁶⁵) still merge deterministically, because
/// [`Record`](crate::Record) ordering falls back to the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeTag(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        let longest = format!("{}.{}", "x".repeat(31), "y".repeat(32));
        for id in ["a", "orders-0", "node-7.eu-west", "10.0.3.7", &longest] {
            assert_eq!(NodeId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_bad_ids_naming_the_problem() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(
            NodeId::new("x".repeat(65)),
            Err(NodeIdError::TooLong { len: 65, max: MAX_NODE_ID_LEN })
        );
        assert_eq!(NodeId::new("ab c"), Err(NodeIdError::InvalidChar { found: ' ', at: 2 }));
        assert_eq!(NodeId::new("nöde"), Err(NodeIdError::InvalidChar { found: 'ö', at: 1 }));
        assert_eq!(NodeId::new("Node-1"), Err(NodeIdError::InvalidChar { found: 'N', at: 0 }));
        assert_eq!(NodeId::new("node_1"), Err(NodeIdError::InvalidChar { found: '_', at: 4 }));
        assert_eq!(NodeId::new("a..b"), Err(NodeIdError::BadLabel { at: 2 }));
        assert_eq!(NodeId::new("a.-b"), Err(NodeIdError::BadLabel { at: 2 }));
        assert_eq!(NodeId::new("-a"), Err(NodeIdError::BadLabel { at: 0 }));
        assert_eq!(NodeId::new("a."), Err(NodeIdError::BadLabel { at: 2 }));
        assert_eq!(NodeId::new("x".repeat(64)), Err(NodeIdError::BadLabel { at: 0 }));
    }

    #[test]
    fn tag_is_pinned() {
        // Golden value: the tag orders concurrent writes, so it must never change.
        assert_eq!(NodeId::new("node-1").unwrap().tag(), NodeTag(xxh3_64(b"node-1")));
        assert_ne!(NodeId::new("node-1").unwrap().tag(), NodeId::new("node-2").unwrap().tag());
    }
}
