//! Expiry: absolute TTLs checked on read and reclaimed by the sweep, tombstone windows, and the
//! regression test for the original project's sweep that removed one key per bucket per pass.

use std::{sync::Arc, time::Duration};

use mycorrizal::{
    NodeId,
    clock::ManualClock,
    store::{BucketConfig, Store, StoreConfig},
};

const T0: u64 = 1_800_000_000_000;

fn store(clock: &ManualClock) -> Store {
    Store::with_clock(StoreConfig::new(NodeId::new("n1").unwrap()), Arc::new(clock.clone()))
}

/// Seed bug #3: the Go sweep kept expired keys in a map keyed by bucket name, so only the last
/// expired key of each bucket was removed per pass. Here 10,000 keys expiring in one bucket
/// (plus others in a second bucket) are all gone after one sweep.
#[test]
fn ten_thousand_keys_expiring_in_one_bucket_are_all_removed() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let a = store
        .create_bucket(BucketConfig::builder("a").max_entries(100_000).build().unwrap())
        .unwrap();
    let b = store
        .create_bucket(BucketConfig::builder("b").max_entries(100_000).build().unwrap())
        .unwrap();
    for i in 0..10_000u32 {
        a.set_with_ttl(format!("k{i}"), "v", Duration::from_secs(30)).unwrap();
    }
    for i in 0..500u32 {
        b.set_with_ttl(format!("k{i}"), "v", Duration::from_secs(30)).unwrap();
        b.set(format!("keep{i}"), "v").unwrap();
    }
    assert_eq!(a.stats().entries, 10_000);

    clock.advance(Duration::from_secs(29));
    assert_eq!(store.sweep_expired().removed, 0, "nothing is due before the TTL");

    clock.advance(Duration::from_secs(2));
    let report = store.sweep_expired();
    assert_eq!(report.removed, 10_500);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.entries, sa.expirations, sa.bytes), (0, 10_000, 0));
    assert_eq!((sb.entries, sb.expirations), (500, 500));
    assert_eq!(a.entries().count(), 0, "the engine holds nothing for bucket a");
    assert_eq!(a.expiry_index_len(), 0);
    assert!(b.get("keep7").is_some());
}

#[test]
fn expired_values_are_never_served_even_before_the_sweep() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    bucket.set_with_ttl("k", "v", Duration::from_millis(10)).unwrap();
    clock.advance(Duration::from_millis(9));
    assert!(bucket.get("k").is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(bucket.get("k"), None, "expiry is inclusive and checked on read");
    let st = bucket.stats();
    assert_eq!((st.hits, st.misses, st.expirations, st.entries), (1, 1, 1, 0));
}

#[test]
fn default_ttl_applies_and_per_key_ttl_overrides_it() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store
        .create_bucket(
            BucketConfig::builder("s").default_ttl(Duration::from_secs(10)).build().unwrap(),
        )
        .unwrap();
    bucket.set("default", "v").unwrap();
    bucket.set_with_ttl("long", "v", Duration::from_secs(100)).unwrap();
    bucket.set_with_ttl("short", "v", Duration::from_secs(1)).unwrap();
    assert_eq!(bucket.record("long").unwrap().expires_at_ms, Some(T0 + 100_000));
    clock.advance(Duration::from_secs(2));
    store.sweep_expired();
    assert_eq!((bucket.get("short"), bucket.get("default").is_some()), (None, true));
    clock.advance(Duration::from_secs(9));
    store.sweep_expired();
    assert_eq!((bucket.get("default"), bucket.get("long").is_some()), (None, true));
}

#[test]
fn expire_resets_the_ttl_of_a_live_value_only() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    assert!(!bucket.expire("missing", Duration::from_secs(1)).unwrap());
    bucket.set("k", "v").unwrap();
    assert!(bucket.expire("k", Duration::from_secs(5)).unwrap());
    clock.advance(Duration::from_secs(4));
    assert_eq!(bucket.get("k").as_deref(), Some(&b"v"[..]));
    clock.advance(Duration::from_secs(1));
    assert_eq!(bucket.get("k"), None);
    assert!(!bucket.expire("k", Duration::from_secs(5)).unwrap(), "an expired value stays gone");
    assert!(bucket.expire("k", Duration::ZERO).is_err(), "TTL bounds are checked");
}

#[test]
fn overwriting_with_a_later_ttl_keeps_the_value_past_the_first_ttl() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    bucket.set_with_ttl("k", "old", Duration::from_secs(1)).unwrap();
    bucket.set_with_ttl("k", "new", Duration::from_secs(60)).unwrap();
    clock.advance(Duration::from_secs(5));
    assert_eq!(store.sweep_expired().removed, 0, "the stale index record is ignored");
    assert_eq!(bucket.get("k").as_deref(), Some(&b"new"[..]));
    bucket.set("k", "forever").unwrap();
    clock.advance(Duration::from_secs(120));
    store.sweep_expired();
    assert_eq!(bucket.get("k").as_deref(), Some(&b"forever"[..]));
}

#[test]
fn tombstones_hide_the_value_then_are_purged_after_their_window() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store
        .create_bucket(
            BucketConfig::builder("s").tombstone_ttl(Duration::from_secs(60)).build().unwrap(),
        )
        .unwrap();
    bucket.set("k", "v").unwrap();
    assert!(bucket.delete("k").unwrap());
    assert!(!bucket.delete("k").unwrap(), "second delete finds nothing live");
    assert_eq!(bucket.get("k"), None);
    assert!(bucket.record("k").unwrap().is_tombstone());
    assert_eq!(bucket.stats().tombstones, 1);
    clock.advance(Duration::from_secs(61));
    store.sweep_expired();
    assert_eq!(bucket.record("k"), None);
    let st = bucket.stats();
    assert_eq!((st.tombstones, st.tombstones_purged, st.deletes), (0, 1, 1));
}

/// Overwrite churn with TTLs leaves stale index records; the index must not grow without bound.
#[test]
fn expiry_index_stays_bounded_under_overwrite_churn() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    for round in 0..200u64 {
        for k in 0..100u32 {
            // a fresh, ever later slot each round: nothing becomes due
            bucket.set_with_ttl(format!("k{k}"), "v", Duration::from_secs(3600 + round)).unwrap();
        }
        store.sweep_expired();
        assert!(
            bucket.expiry_index_len() <= 2 * 100 + 1024 + 100,
            "index grew to {} records for 100 keys",
            bucket.expiry_index_len()
        );
    }
    clock.advance(Duration::from_secs(4000));
    store.sweep_expired();
    assert_eq!(bucket.stats().entries, 0);
}

/// Without any sweeper running, overwrite churn still cannot grow the index without bound.
#[test]
fn expiry_index_stays_bounded_without_a_sweeper() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    for round in 0..100u64 {
        for k in 0..500u32 {
            bucket.set_with_ttl(format!("k{k}"), "v", Duration::from_secs(3600 + round)).unwrap();
        }
    }
    assert!(bucket.expiry_index_len() <= 2 * 500 + 1024 + 4096, "{}", bucket.expiry_index_len());
}

/// Rewriting keys with the same TTL within one expiry slot adds no index records, and every
/// key still expires on time.
#[test]
fn rewrites_within_a_slot_do_not_grow_the_index_and_still_expire() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    for _ in 0..50 {
        for k in 0..200u32 {
            bucket.set_with_ttl(format!("k{k}"), "v", Duration::from_millis(1_500)).unwrap();
        }
    }
    assert_eq!(bucket.expiry_index_len(), 200);
    clock.advance(Duration::from_secs(3));
    assert_eq!(store.sweep_expired().removed, 200);
    assert_eq!(bucket.stats().entries, 0);
}

/// The background sweeper reclaims expired entries on its own (paused tokio clock, manual
/// wall clock: no real waiting).
#[tokio::test(start_paused = true)]
async fn background_sweeper_reclaims_without_reads() {
    let clock = ManualClock::new(T0);
    let store = store(&clock);
    let bucket = store.create_bucket(BucketConfig::builder("s").build().unwrap()).unwrap();
    for i in 0..1_000u32 {
        bucket.set_with_ttl(i.to_be_bytes(), "v", Duration::from_secs(1)).unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_sweeper(Duration::from_millis(500), async { stop_rx.await.unwrap_or(()) })
                .await
        })
    };
    clock.advance(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(2)).await; // virtual time: the sweeper ticks
    assert_eq!(bucket.stats().expirations, 1_000);
    assert_eq!(bucket.stats().entries, 0);
    stop_tx.send(()).unwrap();
    sweeper.await.unwrap();
}
