//! Messages of the Cache channel: replicated writes and reads, bucket declarations, digest
//! exchange for anti-entropy and rebalancing, and read-through leases.
//!
//! Every request is one [`CacheRequest`]; a success is answered with one [`CacheResponse`], a
//! refusal with an `ErrorReply` frame. Records travel as [`WireRecord`]s and are checked when
//! converted back ([`WireRecord::into_record`]), so a malformed record is refused, never stored.

use bytes::Bytes;

use crate::{
    hlc::{HlcTime, Timestamp},
    node::NodeTag,
    quorum::Consistency,
    record::{Record, RecordState},
};

/// A [`Record`] on the wire.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WireRecord {
    /// `HlcTime` of the version, raw.
    #[prost(fixed64, tag = "1")]
    pub time: u64,
    /// `NodeTag` of the version.
    #[prost(fixed64, tag = "2")]
    pub node: u64,
    /// Absolute expiry in ms since the Unix epoch; 0: none.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
    /// A tombstone (then `value` is empty).
    #[prost(bool, tag = "4")]
    pub tombstone: bool,
    /// The value.
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
}

impl From<&Record> for WireRecord {
    fn from(r: &Record) -> Self {
        let (tombstone, value) = match &r.state {
            RecordState::Live(v) => (false, v.clone()),
            RecordState::Deleted => (true, Bytes::new()),
        };
        WireRecord {
            time: r.version.time.to_raw(),
            node: r.version.node.0,
            expires_at_ms: r.expires_at_ms.unwrap_or(0),
            tombstone,
            value,
        }
    }
}

impl WireRecord {
    /// The record, or `None` if it is malformed (a tombstone carrying a value, or one without
    /// a purge time).
    ///
    /// The value is copied out of the message: decoded values are slices of the connection's
    /// read buffer, and a stored slice would keep the whole buffer (up to 64 KiB for a
    /// 100-byte value) alive for as long as the value lives.
    pub fn into_record(self) -> Option<Record> {
        let version = Timestamp { time: HlcTime::from_raw(self.time), node: NodeTag(self.node) };
        let expires_at_ms = (self.expires_at_ms != 0).then_some(self.expires_at_ms);
        if self.tombstone {
            if !self.value.is_empty() || expires_at_ms.is_none() {
                return None;
            }
            return Some(Record { version, expires_at_ms, state: RecordState::Deleted });
        }
        let value = Bytes::copy_from_slice(&self.value);
        Some(Record { version, expires_at_ms, state: RecordState::Live(value) })
    }
}

/// A key and its record.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Entry {
    /// The key.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// Its record.
    #[prost(message, optional, tag = "2")]
    pub record: Option<WireRecord>,
}

/// Consistency on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WireConsistency {
    /// Unrecognised: refused.
    Unspecified = 0,
    /// [`Consistency::One`].
    One = 1,
    /// [`Consistency::Quorum`].
    Quorum = 2,
    /// [`Consistency::All`].
    All = 3,
}

impl From<Consistency> for WireConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::One => WireConsistency::One,
            Consistency::Quorum => WireConsistency::Quorum,
            Consistency::All => WireConsistency::All,
        }
    }
}

impl WireConsistency {
    /// The consistency level, `None` when unrecognised.
    pub fn consistency(self) -> Option<Consistency> {
        match self {
            WireConsistency::Unspecified => None,
            WireConsistency::One => Some(Consistency::One),
            WireConsistency::Quorum => Some(Consistency::Quorum),
            WireConsistency::All => Some(Consistency::All),
        }
    }
}

/// One bucket's declaration as every node must know it. Zero means "not set" for the optional
/// numbers. The driver validates it exactly like a locally built configuration.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BucketDecl {
    /// Bucket name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Default TTL in ms; 0: none.
    #[prost(uint64, tag = "2")]
    pub default_ttl_ms: u64,
    /// Entry bound; 0: none.
    #[prost(uint64, tag = "3")]
    pub max_entries: u64,
    /// Byte bound; 0: none.
    #[prost(uint64, tag = "4")]
    pub max_bytes: u64,
    /// Largest entry.
    #[prost(uint64, tag = "5")]
    pub max_entry_size: u64,
    /// Tombstone window in ms.
    #[prost(uint64, tag = "6")]
    pub tombstone_ttl_ms: u64,
    /// Replication factor.
    #[prost(uint32, tag = "7")]
    pub replicas: u32,
    /// Default read consistency.
    #[prost(enumeration = "WireConsistency", tag = "8")]
    pub read_consistency: i32,
    /// Default write consistency.
    #[prost(enumeration = "WireConsistency", tag = "9")]
    pub write_consistency: i32,
    /// When it was first declared (HLC, raw): the earliest declaration of a name wins.
    #[prost(fixed64, tag = "10")]
    pub declared_time: u64,
    /// Tag of the node that declared it (breaks ties between equal times).
    #[prost(fixed64, tag = "11")]
    pub declared_node: u64,
}

/// One range's summary (see [`crate::digest`]).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RangeSummary {
    /// The range.
    #[prost(uint32, tag = "1")]
    pub range: u32,
    /// XOR of the record digests.
    #[prost(fixed64, tag = "2")]
    pub digest: u64,
    /// Records in the range.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

/// A key and the version held for it, without the value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyVersion {
    /// The key.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `HlcTime` of the version, raw.
    #[prost(fixed64, tag = "2")]
    pub time: u64,
    /// `NodeTag` of the version.
    #[prost(fixed64, tag = "3")]
    pub node: u64,
    /// A tombstone.
    #[prost(bool, tag = "4")]
    pub tombstone: bool,
}

/// Every request on the Cache channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CacheRequest {
    /// The operation.
    #[prost(oneof = "CacheOp", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub op: Option<CacheOp>,
}

/// The operations of [`CacheRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum CacheOp {
    /// Here are the buckets I know; answer with yours ([`CacheReply::Catalog`]).
    #[prost(message, tag = "1")]
    Catalog(Catalog),
    /// Merge these records ([`CacheReply::Written`]).
    #[prost(message, tag = "2")]
    Write(Write),
    /// Send your record of a key ([`CacheReply::Record`]).
    #[prost(message, tag = "3")]
    Read(Read),
    /// Compare range summaries of the keys we both own ([`CacheReply::Mismatched`]).
    #[prost(message, tag = "4")]
    Digests(Digests),
    /// Here are my versions in these ranges; say what you need and send what I lack
    /// ([`CacheReply::Exchange`]).
    #[prost(message, tag = "5")]
    Versions(Versions),
    /// May I load this missing key? ([`CacheReply::Lease`]).
    #[prost(message, tag = "6")]
    Lease(Lease),
    /// I finished loading (or gave up): answer the waiters ([`CacheReply::Written`]).
    #[prost(message, tag = "7")]
    Release(Release),
}

/// Bucket declarations.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Catalog {
    /// Declarations.
    #[prost(message, repeated, tag = "1")]
    pub buckets: Vec<BucketDecl>,
}

/// Records to merge.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Write {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// Records.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<Entry>,
    /// Sent by the background sync (rebalancing, repair, hand-off, hint replay), not by a
    /// client's write: the receiver counts it as sync traffic, and a node waiting on a version
    /// exchange with the sender takes it as that exchange's progress (the answer to a new
    /// node's exchange streams as such writes; see `cache::sync`).
    #[prost(bool, tag = "3")]
    pub sync: bool,
}

/// A replica read.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Read {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// Key.
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
}

/// Range summaries of one bucket.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Digests {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// Non-empty ranges.
    #[prost(message, repeated, tag = "2")]
    pub ranges: Vec<RangeSummary>,
    /// When not empty, only these ranges are compared (a recheck of ranges that differed):
    /// `ranges` holds the non-empty ones among them.
    #[prost(uint32, repeated, tag = "3")]
    pub only: Vec<u32>,
    /// A hand-off: the sender no longer owns the ranges in `only` and the receiver should.
    /// The receiver answers as mismatched the ranges whose summaries differ from its own, or
    /// declines while it is still filling; the sender offers key by key only in those.
    #[prost(bool, tag = "4")]
    pub handoff: bool,
}

/// Versions the sender holds in some ranges.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Versions {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// The ranges covered: the receiver answers with its own newer or extra records in these.
    #[prost(uint32, repeated, tag = "2")]
    pub ranges: Vec<u32>,
    /// The sender's versions.
    #[prost(message, repeated, tag = "3")]
    pub versions: Vec<KeyVersion>,
    /// A hand-off: the sender does not own these keys and will drop them; the receiver sends
    /// nothing back, it only says what it needs.
    #[prost(bool, tag = "4")]
    pub handoff: bool,
    /// The sender's clock (an `HlcTime`, raw) when it began listing its versions; 0 for none.
    /// Where the sender listed a key, the receiver compares only versions written up to this
    /// time: one written since is a write made during the exchange, which the write path
    /// delivers (and the next round repairs if it did not).
    #[prost(uint64, tag = "5")]
    pub cutoff: u64,
}

/// A read-through lease request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Lease {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// Key.
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
}

/// The end of a read-through load.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Release {
    /// Bucket.
    #[prost(string, tag = "1")]
    pub bucket: String,
    /// Key.
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    /// The record written, if the load succeeded.
    #[prost(message, optional, tag = "3")]
    pub record: Option<WireRecord>,
}

/// Every successful answer on the Cache channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CacheResponse {
    /// The answer.
    #[prost(oneof = "CacheReply", tags = "1, 2, 3, 4, 5, 6")]
    pub reply: Option<CacheReply>,
}

/// The answers of [`CacheResponse`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum CacheReply {
    /// The responder's buckets.
    #[prost(message, tag = "1")]
    Catalog(Catalog),
    /// Records merged.
    #[prost(message, tag = "2")]
    Written(Written),
    /// The responder's record of a key.
    #[prost(message, tag = "3")]
    Record(Entry),
    /// Ranges whose summaries differ.
    #[prost(message, tag = "4")]
    Mismatched(Mismatched),
    /// What the responder needs, and what it holds newer.
    #[prost(message, tag = "5")]
    Exchange(Exchange),
    /// The lease decision.
    #[prost(message, tag = "6")]
    Lease(LeaseReply),
}

/// Result of a [`Write`].
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Written {
    /// Records stored (newer than what was held).
    #[prost(uint32, tag = "1")]
    pub applied: u32,
    /// Records already superseded.
    #[prost(uint32, tag = "2")]
    pub stale: u32,
    /// Records refused (too large, too far in the future).
    #[prost(uint32, tag = "3")]
    pub refused: u32,
    /// The newest version (raw `HlcTime`) among those that superseded a record of this
    /// write; 0 when none did.
    #[prost(fixed64, tag = "4")]
    pub newest_time: u64,
}

/// Ranges to compare key by key.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Mismatched {
    /// The ranges.
    #[prost(uint32, repeated, tag = "1")]
    pub ranges: Vec<u32>,
    /// Answering a hand-off's comparison: the receiver is still filling and declines the
    /// whole hand-off (it pulls what it owns from the other owners); `ranges` is empty.
    #[prost(bool, tag = "2")]
    pub declined: bool,
}

/// Answer to [`Versions`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Exchange {
    /// Indexes into the request's versions of the records the responder lacks or holds older.
    #[prost(uint32, repeated, tag = "1")]
    pub need: Vec<u32>,
    /// Records the responder holds newer than the sender, or that the sender lacks.
    #[prost(message, repeated, tag = "2")]
    pub newer: Vec<Entry>,
    /// `newer` was cut short (its records could not all be sent): ask again. In the answer to
    /// a hand-off: the receiver is filling its replicas from nothing (it has not finished a
    /// sync round with a peer since it started) and pulls what it owns from the keys' other
    /// owners, so it declines the offer; the sender sends it only the keys no
    /// other owner confirmed.
    #[prost(bool, tag = "3")]
    pub more: bool,
}

/// Answer to [`Lease`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseReply {
    /// The requester must load the key and then release the lease.
    #[prost(bool, tag = "1")]
    pub granted: bool,
    /// The key's record, when another loader finished (or it existed all along).
    #[prost(message, optional, tag = "2")]
    pub record: Option<WireRecord>,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let ts = Timestamp { time: HlcTime::new(1_700_000_000_000, 3), node: NodeTag(9) };
        for r in [
            Record::live(ts, Bytes::from_static(b"v"), None),
            Record::live(ts, Bytes::new(), Some(5)),
            Record::tombstone(ts, 77),
        ] {
            let wire = WireRecord::from(&r);
            let back = WireRecord::decode(wire.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back.into_record(), Some(r));
        }
        let bad =
            WireRecord { tombstone: true, value: Bytes::from_static(b"x"), ..Default::default() };
        assert_eq!(bad.into_record(), None);
        let no_purge = WireRecord { tombstone: true, ..Default::default() };
        assert_eq!(no_purge.into_record(), None);
    }

    /// A decoded value is a slice of the message buffer; the record must own a copy, or one
    /// stored 100-byte value would pin a whole read buffer in memory.
    #[test]
    fn a_record_never_keeps_its_message_buffer_alive() {
        let ts = Timestamp { time: HlcTime::new(1_700_000_000_000, 3), node: NodeTag(9) };
        let entry = Entry {
            key: Bytes::from_static(b"k"),
            record: Some(WireRecord::from(&Record::live(ts, Bytes::from(vec![7u8; 100]), None))),
        };
        let mut buffer = entry.encode_to_vec();
        buffer.resize(64 * 1024, 0); // the rest of a read buffer
        let buffer = Bytes::from(buffer);
        let decoded = Entry::decode(buffer.slice(..entry.encoded_len())).unwrap();
        let wire_value = decoded.record.as_ref().unwrap().value.clone();
        let in_buffer = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
        assert!(in_buffer(&wire_value), "prost decodes without copying (what this guards)");
        let record = decoded.record.unwrap().into_record().unwrap();
        let value = record.value().unwrap();
        assert_eq!(&value[..], &[7u8; 100][..]);
        assert!(!in_buffer(value), "the stored value must not point into the read buffer");
    }

    #[test]
    fn requests_round_trip() {
        let req = CacheRequest {
            op: Some(CacheOp::Versions(Versions {
                bucket: "b".into(),
                ranges: vec![1, 2],
                versions: vec![KeyVersion {
                    key: Bytes::from_static(b"k"),
                    time: 1,
                    node: 2,
                    tombstone: true,
                }],
                handoff: true,
                cutoff: 3,
            })),
        };
        assert_eq!(CacheRequest::decode(req.encode_to_vec().as_slice()).unwrap(), req);
        assert!(CacheRequest::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
