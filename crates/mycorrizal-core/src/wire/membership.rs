//! Member identities and the encoding of membership (SWIM) messages.
//!
//! Membership runs foca, a sans-IO SWIM implementation; foca leaves the byte encoding of its
//! messages to us. This module is that encoding: explicit, big-endian, every length checked
//! before use, every string validated, so a hostile datagram (which must first pass AEAD
//! authentication anyway) can at worst be refused.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};

use crate::node::{NodeId, NodeIdError};

/// Longest zone name.
pub const MAX_ZONE_LEN: usize = 64;
/// Most roles per member.
pub const MAX_ROLES: usize = 8;
/// Longest role name and version string.
pub const MAX_LABEL_LEN: usize = 32;

/// What a member tells the cluster about itself, besides its id and address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeMeta {
    /// Failure domain (availability zone, rack). Empty if unset.
    pub zone: String,
    /// Free-form roles (`api`, `worker`).
    pub roles: Vec<String>,
    /// Software version of the node.
    pub version: String,
}

/// A member's identity in the membership protocol.
///
/// Two identities with the same address are the same member; the one with the higher
/// `generation` wins. A node picks a fresh generation at every start (its start time in ms), so
/// a restarted node replaces its previous incarnation at once, and bumps it to rejoin after
/// being declared down.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberId {
    /// The node's id.
    pub node: NodeId,
    /// Where it listens (TCP streams and UDP gossip).
    pub addr: SocketAddr,
    /// Distinguishes runs of the same node.
    pub generation: u64,
    /// Zone, roles, version.
    pub meta: NodeMeta,
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.node, self.addr, self.generation)
    }
}

impl foca::Identity for MemberId {
    /// Members are keyed by their advertised address: that is what a seed list names, so a node
    /// can announce itself to a seed whose id it does not know yet.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId { generation: self.generation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Why bytes were not a valid membership message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended early.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// How many bytes were missing.
        needed: usize,
    },
    /// An enum tag had no meaning.
    #[error("invalid {what} tag {tag}")]
    BadTag {
        /// Which field.
        what: &'static str,
        /// The tag.
        tag: u8,
    },
    /// A string or list exceeded its bound.
    #[error("{what} of length {len} exceeds {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A string was not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A node id was invalid.
    #[error("node id: {0}")]
    NodeId(#[from] NodeIdError),
    /// The output buffer is full.
    #[error("output buffer full")]
    BufferFull,
}

/// foca's [`foca::Codec`] for [`MemberId`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MembershipCodec;

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError::Truncated { needed: n - buf.remaining() })
    } else {
        Ok(())
    }
}

fn room(buf: &impl BufMut, n: usize) -> Result<(), CodecError> {
    if buf.remaining_mut() < n { Err(CodecError::BufferFull) } else { Ok(()) }
}

fn put_str(
    buf: &mut impl BufMut,
    s: &str,
    what: &'static str,
    max: usize,
) -> Result<(), CodecError> {
    if s.len() > max {
        return Err(CodecError::TooLong { what, len: s.len(), max });
    }
    room(buf, 1 + s.len())?;
    buf.put_u8(s.len() as u8);
    buf.put_slice(s.as_bytes());
    Ok(())
}

fn get_str(buf: &mut impl Buf, what: &'static str, max: usize) -> Result<String, CodecError> {
    need(buf, 1)?;
    let len = buf.get_u8() as usize;
    if len > max {
        return Err(CodecError::TooLong { what, len, max });
    }
    need(buf, len)?;
    let mut bytes = vec![0u8; len];
    buf.copy_to_slice(&mut bytes);
    String::from_utf8(bytes).map_err(|_| CodecError::NotUtf8(what))
}

/// Encodes an identity.
pub fn encode_id(id: &MemberId, buf: &mut impl BufMut) -> Result<(), CodecError> {
    put_str(buf, id.node.as_str(), "node id", crate::node::MAX_NODE_ID_LEN)?;
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            room(buf, 1 + 4)?;
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            room(buf, 1 + 16)?;
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    room(buf, 2 + 8)?;
    buf.put_u16(id.addr.port());
    buf.put_u64(id.generation);
    put_str(buf, &id.meta.zone, "zone", MAX_ZONE_LEN)?;
    if id.meta.roles.len() > MAX_ROLES {
        return Err(CodecError::TooLong {
            what: "roles",
            len: id.meta.roles.len(),
            max: MAX_ROLES,
        });
    }
    room(buf, 1)?;
    buf.put_u8(id.meta.roles.len() as u8);
    for r in &id.meta.roles {
        put_str(buf, r, "role", MAX_LABEL_LEN)?;
    }
    put_str(buf, &id.meta.version, "version", MAX_LABEL_LEN)
}

/// Decodes an identity.
pub fn decode_id(buf: &mut impl Buf) -> Result<MemberId, CodecError> {
    let node = NodeId::new(get_str(buf, "node id", crate::node::MAX_NODE_ID_LEN)?)?;
    need(buf, 1)?;
    let ip = match buf.get_u8() {
        4 => {
            need(buf, 4)?;
            let mut o = [0u8; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0u8; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        tag => return Err(CodecError::BadTag { what: "address family", tag }),
    };
    need(buf, 2 + 8)?;
    let port = buf.get_u16();
    let generation = buf.get_u64();
    let zone = get_str(buf, "zone", MAX_ZONE_LEN)?;
    need(buf, 1)?;
    let n = buf.get_u8() as usize;
    if n > MAX_ROLES {
        return Err(CodecError::TooLong { what: "roles", len: n, max: MAX_ROLES });
    }
    let roles = (0..n).map(|_| get_str(buf, "role", MAX_LABEL_LEN)).collect::<Result<_, _>>()?;
    let version = get_str(buf, "version", MAX_LABEL_LEN)?;
    Ok(MemberId {
        node,
        addr: SocketAddr::new(ip, port),
        generation,
        meta: NodeMeta { zone, roles, version },
    })
}

fn put_probe(buf: &mut impl BufMut, tag: u8, n: u8) -> Result<(), CodecError> {
    room(buf, 2)?;
    buf.put_u8(tag);
    buf.put_u8(n);
    Ok(())
}

impl foca::Codec<MemberId> for MembershipCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        h: &Header<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode_id(&h.src, &mut buf)?;
        room(&buf, 2)?;
        buf.put_u16(h.src_incarnation);
        encode_id(&h.dst, &mut buf)?;
        match &h.message {
            Message::Ping(n) => put_probe(&mut buf, 0, *n),
            Message::Ack(n) => put_probe(&mut buf, 1, *n),
            Message::PingReq { target, probe_number } => {
                put_probe(&mut buf, 2, *probe_number)?;
                encode_id(target, &mut buf)
            }
            Message::IndirectPing { origin, probe_number } => {
                put_probe(&mut buf, 3, *probe_number)?;
                encode_id(origin, &mut buf)
            }
            Message::IndirectAck { target, probe_number } => {
                put_probe(&mut buf, 4, *probe_number)?;
                encode_id(target, &mut buf)
            }
            Message::ForwardedAck { origin, probe_number } => {
                put_probe(&mut buf, 5, *probe_number)?;
                encode_id(origin, &mut buf)
            }
            Message::Announce => put_probe(&mut buf, 6, 0),
            Message::Feed => put_probe(&mut buf, 7, 0),
            Message::Gossip => put_probe(&mut buf, 8, 0),
            Message::Broadcast => put_probe(&mut buf, 9, 0),
            Message::TurnUndead => put_probe(&mut buf, 10, 0),
        }
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        let src = decode_id(&mut buf)?;
        need(&buf, 2)?;
        let src_incarnation = buf.get_u16();
        let dst = decode_id(&mut buf)?;
        need(&buf, 2)?;
        let (tag, n) = (buf.get_u8(), buf.get_u8());
        let message = match tag {
            0 => Message::Ping(n),
            1 => Message::Ack(n),
            2 => Message::PingReq { target: decode_id(&mut buf)?, probe_number: n },
            3 => Message::IndirectPing { origin: decode_id(&mut buf)?, probe_number: n },
            4 => Message::IndirectAck { target: decode_id(&mut buf)?, probe_number: n },
            5 => Message::ForwardedAck { origin: decode_id(&mut buf)?, probe_number: n },
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            tag => return Err(CodecError::BadTag { what: "message", tag }),
        };
        Ok(Header { src, src_incarnation, dst, message })
    }

    fn encode_member(
        &mut self,
        m: &Member<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode_id(m.id(), &mut buf)?;
        room(&buf, 3)?;
        buf.put_u16(m.incarnation());
        buf.put_u8(match m.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        let id = decode_id(&mut buf)?;
        need(&buf, 3)?;
        let incarnation = buf.get_u16();
        let state = match buf.get_u8() {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            tag => return Err(CodecError::BadTag { what: "member state", tag }),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use foca::Codec;
    use proptest::prelude::*;

    use super::*;

    fn id(n: &str, port: u16) -> MemberId {
        MemberId {
            node: NodeId::new(n).unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generation: 1_800_000_000_000,
            meta: NodeMeta {
                zone: "eu-1a".into(),
                roles: vec!["api".into()],
                version: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn every_message_round_trips() {
        let (a, b, c) = (id("a", 1), id("b", 2), id("c", 3));
        let messages = vec![
            Message::Ping(1),
            Message::Ack(2),
            Message::PingReq { target: c.clone(), probe_number: 3 },
            Message::IndirectPing { origin: c.clone(), probe_number: 4 },
            Message::IndirectAck { target: c.clone(), probe_number: 5 },
            Message::ForwardedAck { origin: c.clone(), probe_number: 6 },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ];
        for message in messages {
            let h = Header { src: a.clone(), src_incarnation: 7, dst: b.clone(), message };
            let mut buf = Vec::new();
            MembershipCodec.encode_header(&h, &mut buf).unwrap();
            assert_eq!(MembershipCodec.decode_header(&buf[..]).unwrap(), h);
        }
        for state in [State::Alive, State::Suspect, State::Down] {
            let m = Member::new(id("d", 4), 9, state);
            let mut buf = Vec::new();
            MembershipCodec.encode_member(&m, &mut buf).unwrap();
            assert_eq!(MembershipCodec.decode_member(&buf[..]).unwrap(), m);
        }
    }

    #[test]
    fn ipv6_round_trips() {
        let mut m = id("v6", 9);
        m.addr = "[::1]:7946".parse().unwrap();
        let mut buf = Vec::new();
        encode_id(&m, &mut buf).unwrap();
        assert_eq!(decode_id(&mut &buf[..]).unwrap(), m);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = MembershipCodec.decode_header(&data[..]);
            let _ = MembershipCodec.decode_member(&data[..]);
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..200) {
            let h = Header { src: id("a", 1), src_incarnation: 1, dst: id("b", 2), message: Message::PingReq { target: id("c", 3), probe_number: 1 } };
            let mut buf = Vec::new();
            MembershipCodec.encode_header(&h, &mut buf).unwrap();
            if cut < buf.len() {
                prop_assert!(MembershipCodec.decode_header(&buf[..cut]).is_err());
            }
        }
    }
}

/// What a sealed gossip datagram carries, after opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipPayload<'a> {
    /// A SWIM message for foca.
    Swim(&'a [u8]),
    /// The sender is leaving the cluster on purpose: report it as left, not failed.
    Leaving(MemberId),
    /// The receiver, under this identity, is down in the sender's view: it must rejoin under a
    /// new generation to be heard again (sent in reply to a message from a down member, e.g.
    /// after a partition heals).
    YouAreDown(MemberId),
}

/// Encodes a gossip payload: one tag byte, then the body.
pub fn encode_payload(payload: &GossipPayload<'_>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    match payload {
        GossipPayload::Swim(bytes) => {
            out.push(0);
            out.extend_from_slice(bytes);
        }
        GossipPayload::Leaving(id) => {
            out.push(1);
            encode_id(id, &mut out)?;
        }
        GossipPayload::YouAreDown(id) => {
            out.push(2);
            encode_id(id, &mut out)?;
        }
    }
    Ok(out)
}

/// Decodes a gossip payload.
pub fn decode_payload(bytes: &[u8]) -> Result<GossipPayload<'_>, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Truncated { needed: 1 }),
        Some((0, rest)) => Ok(GossipPayload::Swim(rest)),
        Some((1, mut rest)) => Ok(GossipPayload::Leaving(decode_id(&mut rest)?)),
        Some((2, mut rest)) => Ok(GossipPayload::YouAreDown(decode_id(&mut rest)?)),
        Some((&tag, _)) => Err(CodecError::BadTag { what: "gossip payload", tag }),
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let id = MemberId {
            node: NodeId::new("a").unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            generation: 3,
            meta: NodeMeta::default(),
        };
        for p in [
            GossipPayload::Swim(b"swim"),
            GossipPayload::Leaving(id.clone()),
            GossipPayload::YouAreDown(id),
        ] {
            assert_eq!(decode_payload(&encode_payload(&p).unwrap()).unwrap(), p);
        }
        assert!(decode_payload(&[]).is_err());
        assert!(decode_payload(&[9]).is_err());
    }
}
