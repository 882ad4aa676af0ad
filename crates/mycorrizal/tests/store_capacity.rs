//! Capacity: entries and bytes stay bounded, a value just written is readable, and an entry
//! too large for the bucket is refused with an error instead of vanishing.

use std::sync::Arc;

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    clock::ManualClock,
    store::{BucketConfig, ENTRY_OVERHEAD, Store, StoreConfig, StoreError},
};
use proptest::prelude::*;

fn store() -> Store {
    Store::with_clock(
        StoreConfig::new(NodeId::new("n1").unwrap()),
        Arc::new(ManualClock::new(1_800_000_000_000)),
    )
}

/// The pitfall from DESIGN §5: quick_cache splits its weight over shards and silently drops an
/// entry heavier than one shard's share (a 600 KB value vanished from a 1 MB cache). Here such
/// an entry is either stored and readable, or refused with `EntryTooLarge`; never dropped.
#[test]
fn an_entry_too_large_is_refused_not_silently_dropped() {
    let store = store();
    let small = store
        .create_bucket(BucketConfig::builder("small").max_bytes(1 << 20).build().unwrap())
        .unwrap();
    let err = small.set("big", vec![0u8; 600_000]).unwrap_err();
    assert!(
        matches!(err, StoreError::EntryTooLarge { size: 600_003, max, .. } if max == small.max_entry_size()),
        "{err}"
    );
    assert_eq!(small.stats().rejected, 1);

    // Asking for large entries sizes the shards so they fit.
    let roomy = store
        .create_bucket(
            BucketConfig::builder("roomy")
                .max_bytes(1 << 20)
                .max_entry_size(600_000)
                .build()
                .unwrap(),
        )
        .unwrap();
    roomy.set("big", vec![7u8; 600_000 - 3]).unwrap();
    assert_eq!(roomy.get("big").map(|v| v.len()), Some(600_000 - 3));
}

/// The configured `max_entry_size` is exact: an entry of that many bytes is stored and
/// readable (every shard was sized to hold it), one byte more is refused with an error.
#[test]
fn reported_max_entry_size_is_exact() {
    for (max_bytes, max_entry) in
        [(4096u64, 100u64), (1 << 20, 300_000), (64 << 20, 1 << 20), (10 << 20, 10_000)]
    {
        let store = store();
        let bucket = store
            .create_bucket(
                BucketConfig::builder("b")
                    .max_bytes(max_bytes)
                    .max_entry_size(max_entry)
                    .build()
                    .unwrap(),
            )
            .unwrap();
        let max = bucket.max_entry_size() as usize;
        assert_eq!(max as u64, max_entry);
        bucket.set("k", vec![1u8; max - 1]).unwrap();
        assert_eq!(bucket.get("k").map(|v| v.len()), Some(max - 1), "max_bytes={max_bytes}");
        assert!(matches!(bucket.set("k2", vec![1u8; max]), Err(StoreError::EntryTooLarge { .. })));
    }
}

#[test]
fn entry_bound_holds() {
    let store = store();
    let bucket = store
        .create_bucket(BucketConfig::builder("b").max_entries(1_000).build().unwrap())
        .unwrap();
    for i in 0..10_000u32 {
        bucket.set(i.to_be_bytes(), "v").unwrap();
        assert!(bucket.get(i.to_be_bytes()).is_some());
    }
    let st = bucket.stats();
    assert!(st.entries <= 1_000, "{st:?}");
    assert_eq!(st.entries + st.evictions, 10_000);
    assert_eq!(bucket.entries().count() as u64, st.entries);
}

#[test]
fn byte_bound_holds_including_overhead() {
    let store = store();
    let max_bytes = 256 * 1024;
    let bucket = store
        .create_bucket(BucketConfig::builder("b").max_bytes(max_bytes).build().unwrap())
        .unwrap();
    for i in 0..5_000u32 {
        bucket.set(i.to_be_bytes(), vec![0u8; 100 + (i % 900) as usize]).unwrap();
    }
    let st = bucket.stats();
    let charged = st.bytes + st.entries * ENTRY_OVERHEAD;
    assert!(charged <= max_bytes, "{charged} > {max_bytes}: {st:?}");
    assert!(charged > max_bytes / 2, "the bucket is actually used: {st:?}");
    let measured: u64 =
        bucket.entries().map(|(k, r)| (k.len() + r.value().unwrap().len()) as u64).sum();
    assert_eq!(measured, st.bytes, "byte accounting matches contents");
}

#[test]
fn both_bounds_hold_together() {
    let store = store();
    let bucket = store
        .create_bucket(
            BucketConfig::builder("b").max_entries(100).max_bytes(64 * 1024).build().unwrap(),
        )
        .unwrap();
    for i in 0..1_000u32 {
        bucket.set(i.to_be_bytes(), vec![0u8; 50]).unwrap();
    }
    assert!(bucket.stats().entries <= 100);
    for i in 0..1_000u32 {
        bucket.set(i.to_be_bytes(), vec![0u8; 2_000]).unwrap();
    }
    let st = bucket.stats();
    assert!(st.bytes + st.entries * ENTRY_OVERHEAD <= 64 * 1024, "{st:?}");
}

#[test]
fn keys_are_bounded() {
    let store = store();
    let bucket = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    assert!(matches!(
        bucket.set(vec![0u8; 4097], "v"),
        Err(StoreError::KeyTooLong { len: 4097, max: 4096 })
    ));
    bucket.set(vec![0u8; 4096], "v").unwrap();
    bucket.set("", "empty keys are keys").unwrap();
    assert!(bucket.get("").is_some());
}

#[derive(Debug, Clone)]
enum Op {
    Set(u16, usize),
    Get(u16),
    Delete(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..400, 0usize..2_998).prop_map(|(k, n)| Op::Set(k, n)),
        3 => (0u16..400).prop_map(Op::Get),
        1 => (0u16..400).prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// On a bucket kept full, every `set` is immediately followed by a `get` of the same key that
    /// returns exactly what was written, and the bounds always hold.
    #[test]
    fn set_then_get_never_misses_on_a_full_bucket(
        max_entries in prop::option::of(4u64..64),
        max_bytes in prop::option::of(8_192u64..65_536),
        ops in prop::collection::vec(op(), 1..600),
    ) {
        let store = store();
        let mut cfg = BucketConfig::builder("b").max_entry_size(3_000);
        if let Some(n) = max_entries { cfg = cfg.max_entries(n); }
        if let Some(b) = max_bytes { cfg = cfg.max_bytes(b); }
        let bucket = store.create_bucket(cfg.build().unwrap()).unwrap();
        for op in ops {
            match op {
                Op::Set(k, n) => {
                    let value = Bytes::from(vec![(k % 251) as u8; n]);
                    bucket.set(k.to_be_bytes(), value.clone()).unwrap();
                    prop_assert_eq!(bucket.get(k.to_be_bytes()).map(Bytes::from), Some(value));
                }
                Op::Get(k) => { let _ = bucket.get(k.to_be_bytes()); }
                Op::Delete(k) => {
                    bucket.delete(k.to_be_bytes()).unwrap();
                    prop_assert_eq!(bucket.get(k.to_be_bytes()), None);
                }
            }
            let st = bucket.stats();
            if let Some(n) = max_entries { prop_assert!(st.entries + st.tombstones <= n); }
            if let Some(b) = max_bytes {
                prop_assert!(st.bytes + (st.entries + st.tombstones) * ENTRY_OVERHEAD <= b);
            }
        }
        let st = bucket.stats();
        prop_assert_eq!(bucket.entries().filter(|(_, r)| !r.is_tombstone()).count() as u64, st.entries);
    }
}
