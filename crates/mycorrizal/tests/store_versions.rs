//! Versions: writes are stamped by the node's hybrid logical clock; replicated records merge by
//! last-writer-wins; clocks that run backwards or far ahead cannot reorder history.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    clock::ManualClock,
    store::{BucketConfig, Store, StoreConfig, StoreError, WriteOutcome},
};
use mycorrizal_core::{ClockError, HlcTime, NodeTag, Record, Timestamp};

const T0: u64 = 1_800_000_000_000;

fn setup() -> (ManualClock, Store) {
    let clock = ManualClock::new(T0);
    let store =
        Store::with_clock(StoreConfig::new(NodeId::new("n1").unwrap()), Arc::new(clock.clone()));
    (clock, store)
}

fn remote(wall: u64, node: u64, value: &'static str) -> Record {
    Record::live(
        Timestamp { time: HlcTime::new(wall, 0), node: NodeTag(node) },
        Bytes::from_static(value.as_bytes()),
        None,
    )
}

#[test]
fn a_write_after_the_clock_steps_back_still_wins() {
    let (clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    let v1 = b.set("k", "first").unwrap();
    clock.set(T0 - 60_000); // NTP steps the clock back a minute
    let v2 = b.set("k", "second").unwrap();
    assert!(v2 > v1);
    assert_eq!(b.get("k").as_deref(), Some(&b"second"[..]));
}

#[test]
fn replicated_records_merge_by_version_in_any_order() {
    let (_clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    assert_eq!(b.apply("k", remote(T0 - 10, 2, "newer")).unwrap(), WriteOutcome::Applied);
    assert_eq!(b.apply("k", remote(T0 - 20, 3, "older")).unwrap(), WriteOutcome::Stale);
    assert_eq!(b.get("k").as_deref(), Some(&b"newer"[..]));
    assert_eq!(b.stats().stale_writes, 1);
    // A local write afterwards orders after everything seen.
    let v = b.set("k", "local").unwrap();
    assert!(v.time > HlcTime::new(T0 - 10, 0));
    assert_eq!(b.apply("k", remote(T0 - 10, 2, "newer")).unwrap(), WriteOutcome::Stale);
}

/// A write looks at the replaced record's version only, unless the versions are equal: then
/// the whole record (its value included) decides, the same way in either order.
#[test]
fn a_record_applied_twice_is_stale_and_a_tie_resolves_the_same_in_either_order() {
    let (_clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    assert_eq!(b.apply("k", remote(T0 - 10, 2, "same")).unwrap(), WriteOutcome::Applied);
    assert_eq!(b.apply("k", remote(T0 - 10, 2, "same")).unwrap(), WriteOutcome::Stale);
    assert_eq!(b.stats().stale_writes, 1);
    for order in [["aaa", "bbb"], ["bbb", "aaa"]] {
        let b = store.create_bucket(BucketConfig::builder(order[0]).build().unwrap()).unwrap();
        b.apply("k", remote(T0 - 10, 2, order[0])).unwrap();
        b.apply("k", remote(T0 - 10, 2, order[1])).unwrap();
        assert_eq!(b.get("k").as_deref(), Some(&b"bbb"[..]), "after {order:?}");
    }
}

#[test]
fn a_tombstone_beats_an_older_value_arriving_late() {
    let (_clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    b.set("k", "v").unwrap();
    b.delete("k").unwrap();
    let stale = Record::live(
        Timestamp { time: HlcTime::new(T0 - 1, 0), node: NodeTag(9) },
        Bytes::from_static(b"zombie"),
        None,
    );
    assert_eq!(b.apply("k", stale).unwrap(), WriteOutcome::Stale);
    assert_eq!(b.get("k"), None, "a delete stays deleted");
}

#[test]
fn a_record_from_a_clock_too_far_ahead_is_refused() {
    let (_clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    let err = b.apply("k", remote(T0 + 60_000, 2, "future")).unwrap_err();
    assert!(
        matches!(err, StoreError::Clock(ClockError::RemoteAhead { max_drift_ms: 5_000, .. })),
        "{err}"
    );
    assert_eq!(b.record("k"), None, "nothing stored");
    let before = b.set("probe", "x").unwrap();
    assert!(before.time.wall_ms() < T0 + 60_000, "our clock was not dragged forward");
}

#[test]
fn a_newer_but_already_expired_record_removes_the_older_value() {
    let (clock, store) = setup();
    let b = store.create_bucket(BucketConfig::builder("b").build().unwrap()).unwrap();
    b.set("k", "v1").unwrap();
    clock.advance(Duration::from_secs(10));
    let expired = Record::live(
        Timestamp { time: HlcTime::new(T0 + 5_000, 0), node: NodeTag(2) },
        Bytes::from_static(b"v2"),
        Some(T0 + 6_000),
    );
    assert_eq!(b.apply("k", expired).unwrap(), WriteOutcome::Applied);
    assert_eq!(b.get("k"), None, "v1 was overwritten by v2, which has expired");
    assert_eq!(b.record("k"), None);
}

#[test]
fn redeclaring_a_bucket_is_idempotent_and_a_conflict_names_both_configs() {
    let (_clock, store) = setup();
    let cfg = BucketConfig::builder("users").max_entries(10).build().unwrap();
    let a = store.create_bucket(cfg.clone()).unwrap();
    a.set("k", "v").unwrap();
    let again = store.create_bucket(cfg).unwrap();
    assert_eq!(again.get("k").as_deref(), Some(&b"v"[..]), "same bucket returned");
    let other = BucketConfig::builder("users").max_entries(20).build().unwrap();
    let err = store.create_bucket(other).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::BucketConflict { .. }));
    assert!(msg.contains("max_entries: 10,") && msg.contains("max_entries: 20,"), "{msg}");
    assert!(matches!(store.bucket("nope"), Err(StoreError::UnknownBucket { .. })));
    assert_eq!(store.buckets().len(), 1);
}
