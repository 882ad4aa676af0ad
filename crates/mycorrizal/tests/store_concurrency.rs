//! Many threads writing and reading one bucket: no lost, torn or out-of-order values, and
//! concurrent writers of one key converge on the newest version (last-writer-wins).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use mycorrizal::{
    NodeId,
    store::{BucketConfig, Store, StoreConfig},
};
use mycorrizal_core::Timestamp;

const WRITERS: u32 = 4;
const READERS: u32 = 4;
const KEYS_PER_WRITER: u32 = 200;
const ROUNDS: u32 = 50;

/// A self-checking value: key, writer, sequence, padding, and a checksum over all of it.
fn encode(key: u32, writer: u32, seq: u32) -> Bytes {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&key.to_be_bytes());
    v.extend_from_slice(&writer.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend(std::iter::repeat_n((seq % 251) as u8, 40 + (seq % 7) as usize));
    let sum = v.iter().fold(0u32, |a, &b| a.rotate_left(5) ^ b as u32);
    v.extend_from_slice(&sum.to_be_bytes());
    Bytes::from(v)
}

fn decode(v: &[u8]) -> (u32, u32, u32) {
    let (body, sum) = v.split_at(v.len() - 4);
    let expect = body.iter().fold(0u32, |a, &b| a.rotate_left(5) ^ b as u32);
    assert_eq!(sum, expect.to_be_bytes(), "torn value: checksum mismatch");
    let word = |i: usize| u32::from_be_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
    (word(0), word(1), word(2))
}

#[test]
fn readers_never_see_lost_torn_or_regressing_values() {
    let store = Store::new(StoreConfig::new(NodeId::new("n1").unwrap()));
    let bucket = store
        .create_bucket(BucketConfig::builder("c").max_entries(1_000_000).build().unwrap())
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let bucket = bucket.clone();
                s.spawn(move || {
                    for seq in 1..=ROUNDS {
                        for k in 0..KEYS_PER_WRITER {
                            let key = w * KEYS_PER_WRITER + k;
                            bucket.set(key.to_be_bytes(), encode(key, w, seq)).unwrap();
                            // read-your-writes on the writing thread
                            let (rk, rw, rs) = decode(&bucket.get(key.to_be_bytes()).unwrap());
                            assert_eq!((rk, rw, rs), (key, w, seq));
                        }
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let bucket = bucket.clone();
                let done = done.clone();
                s.spawn(move || {
                    let mut seen: HashMap<u32, u32> = HashMap::new();
                    let mut reads = 0u64;
                    let mut i = r;
                    while !done.load(Ordering::Relaxed) {
                        let key = i % (WRITERS * KEYS_PER_WRITER);
                        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        if let Some(v) = bucket.get(key.to_be_bytes()) {
                            let (rk, rw, rs) = decode(&v);
                            assert_eq!(rk, key, "value filed under the wrong key");
                            assert_eq!(
                                rw,
                                key / KEYS_PER_WRITER,
                                "value from a writer that never wrote this key"
                            );
                            let last = seen.entry(key).or_insert(0);
                            assert!(rs >= *last, "key {key} went back from seq {last} to {rs}");
                            *last = rs;
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(reads > 0);
    });
    // Nothing lost: every key holds its writer's last value.
    for key in 0..WRITERS * KEYS_PER_WRITER {
        let (rk, rw, rs) = decode(&bucket.get(key.to_be_bytes()).unwrap());
        assert_eq!((rk, rw, rs), (key, key / KEYS_PER_WRITER, ROUNDS));
    }
    let st = bucket.stats();
    assert_eq!(st.entries, u64::from(WRITERS * KEYS_PER_WRITER));
    assert_eq!(st.inserts + st.updates, u64::from(WRITERS * KEYS_PER_WRITER * ROUNDS));
    assert_eq!(st.evictions, 0);
}

/// Writers race on the same keys. Each write returns its version; afterwards every key holds
/// exactly the write with the greatest version, never an older one that finished later.
#[test]
fn racing_writers_of_one_key_leave_the_newest_version() {
    let store = Store::new(StoreConfig::new(NodeId::new("n1").unwrap()));
    let bucket = store
        .create_bucket(BucketConfig::builder("c").max_entries(10_000).build().unwrap())
        .unwrap();
    const KEYS: u32 = 16;
    let all: Vec<Vec<(u32, Timestamp, Bytes)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let bucket = bucket.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for seq in 0..2_000u32 {
                        let key = seq % KEYS;
                        let value = encode(key, w, seq);
                        let version = bucket.set(key.to_be_bytes(), value.clone()).unwrap();
                        mine.push((key, version, value));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut newest: HashMap<u32, (Timestamp, Bytes)> = HashMap::new();
    for (key, version, value) in all.into_iter().flatten() {
        let e = newest.entry(key).or_insert((version, value.clone()));
        if version > e.0 {
            *e = (version, value);
        }
    }
    for (key, (version, value)) in newest {
        let record = bucket.record(key.to_be_bytes()).unwrap();
        assert_eq!(record.version, version, "key {key}");
        assert_eq!(record.value(), Some(&value));
    }
}
