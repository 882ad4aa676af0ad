//! `pulse demo`: a real workload on a node's store, narrated for a newcomer.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use mycorrizal::{
    NodeId,
    core::rng::SplitMix64,
    store::{Bucket, BucketConfig, Store, StoreConfig},
};

/// Options of `pulse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seed of the read workload; the same seed gives the same access pattern.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const SESSIONS: u32 = 1_000;
const PRODUCTS: u32 = 5_000;
const CATALOG_CAPACITY: u64 = 1_000;
const READS: u32 = 50_000;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // 100 ms expiry slots: expired entries are reclaimed within about 0.1 s of their deadline.
    let store = Store::new(
        StoreConfig::new(NodeId::new("demo-1")?)
            .with_expiry_granularity(Duration::from_millis(100))?,
    );
    let (stop_sweeper, sweeper_stopped) = tokio::sync::oneshot::channel::<()>();
    let sweeper = tokio::spawn({
        let store = store.clone();
        async move {
            let shutdown = async {
                let _ = sweeper_stopped.await;
            };
            store.run_sweeper(Duration::from_millis(100), shutdown).await;
        }
    });

    step("1. Declare three buckets");
    let sessions = store.create_bucket(
        BucketConfig::builder("sessions")
            .default_ttl(Duration::from_millis(1_500))
            .max_entries(10_000)
            .build()?,
    )?;
    let catalog = store
        .create_bucket(BucketConfig::builder("catalog").max_entries(CATALOG_CAPACITY).build()?)?;
    let thumbnails = store.create_bucket(
        BucketConfig::builder("thumbnails")
            .max_bytes(256 * 1024)
            .max_entry_size(64 * 1024)
            .build()?,
    )?;
    for b in [&sessions, &catalog, &thumbnails] {
        say(&format!(
            "{:<11} {:?}, largest entry {} bytes",
            b.name(),
            b.config().capacity(),
            b.max_entry_size()
        ));
    }
    say(
        "Declaring the same bucket again is a no-op; a different config under the same name is an error:",
    );
    let conflict = store
        .create_bucket(BucketConfig::builder("catalog").max_entries(5).build()?)
        .expect_err("conflicting redeclaration must fail");
    say(&format!("  -> {conflict}"));

    step("2. Write 1,000 sessions (TTL 1.5 s) and read every one back");
    let sessions_written = Instant::now();
    for i in 0..SESSIONS {
        sessions.set(format!("session:{i}"), format!("{{\"user\":{i}}}"))?;
    }
    let found = (0..SESSIONS).filter(|i| sessions.get(format!("session:{i}")).is_some()).count();
    ensure!(found == SESSIONS as usize, "read back {found} of {SESSIONS} sessions");
    say(&format!("read back {found}/{SESSIONS}: a value just written is always readable"));

    step("3. A catalog of 5,000 products in a bucket that holds 1,000");
    let mut rng = SplitMix64::new(args.seed);
    for id in 0..PRODUCTS {
        catalog.set(format!("product:{id}"), format!("product #{id}, price {}", 100 + id % 900))?;
    }
    say(&format!(
        "after writing {PRODUCTS} products: {} stored, {} evicted",
        catalog.stats().entries,
        catalog.stats().evictions
    ));
    say(
        "Now 50,000 skewed reads (a few products are popular, most are not); misses are loaded and cached:",
    );
    let before = catalog.stats();
    for _ in 0..READS {
        let id = skewed(&mut rng, PRODUCTS as u64);
        let key = format!("product:{id}");
        if catalog.get(&key).is_none() {
            catalog.set(&key, format!("product #{id}, price {}", 100 + id % 900))?;
        }
    }
    let after = catalog.stats();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    say(&format!(
        "hit ratio {:.1}% with room for 20% of the products; {} entries, bound {}",
        100.0 * hits as f64 / (hits + misses) as f64,
        after.entries,
        CATALOG_CAPACITY
    ));
    ensure!(after.entries <= CATALOG_CAPACITY, "catalog exceeded its bound");
    say(
        "Eviction is S3-FIFO-like (quick_cache): scan resistant, at least LRU's hit ratio on skew.",
    );

    step("4. Thumbnails: a byte bound, and an entry that is too large");
    for i in 0..100u32 {
        let size = 4 * 1024 + (i as usize * 97) % (12 * 1024);
        thumbnails.set(format!("thumb:{i}"), Bytes::from(vec![(i % 251) as u8; size]))?;
    }
    let st = thumbnails.stats();
    say(&format!(
        "100 thumbnails of 4-16 KiB written: {} kept, {} KiB stored, bound 256 KiB",
        st.entries,
        st.bytes / 1024
    ));
    let refused = thumbnails
        .set("thumb:huge", Bytes::from(vec![0u8; 100 * 1024]))
        .expect_err("oversized entry must be refused");
    say(&format!("a 100 KiB thumbnail is refused, not silently dropped:\n     -> {refused}"));

    step("5. Deletes leave a tombstone so the value cannot come back");
    ensure!(catalog.delete("product:0")?, "product:0 should have been live");
    ensure!(catalog.get("product:0").is_none(), "deleted product is still readable");
    say(&format!(
        "product:0 deleted; get -> none; tombstones in catalog: {}",
        catalog.stats().tombstones
    ));

    step("6. Wait for the sessions' TTL; the background sweeper reclaims them without any read");
    // The last session expires 1.5 s after it was written; the sweeper runs every 0.1 s over
    // 0.1 s slots. Poll (this is a live demo on a real clock) with a generous deadline.
    let deadline = sessions_written + Duration::from_secs(10);
    while sessions.stats().entries > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = sessions.stats();
    say(&format!(
        "{:.1} s after they were written: {} sessions left, {} expired by the sweeper",
        sessions_written.elapsed().as_secs_f64(),
        st.entries,
        st.expirations
    ));
    ensure!(
        st.entries == 0 && st.expirations == u64::from(SESSIONS),
        "sessions did not all expire: {st:?}"
    );

    step("7. Per-bucket statistics");
    print_stats(&[&sessions, &catalog, &thumbnails]);

    let _ = stop_sweeper.send(());
    sweeper.await.context("sweeper task")?;
    println!("\nDone in {:.1} s. Every check passed.", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn say(line: &str) {
    println!("   {line}");
}

fn print_stats(buckets: &[&Bucket]) {
    println!(
        "   {:<11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10}",
        "bucket", "hits", "misses", "inserts", "evicted", "expired", "entries", "tombst.", "bytes"
    );
    for b in buckets {
        let s = b.stats();
        println!(
            "   {:<11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10}",
            b.name(),
            s.hits,
            s.misses,
            s.inserts,
            s.evictions,
            s.expirations,
            s.entries,
            s.tombstones,
            s.bytes
        );
    }
}

/// A skewed draw in `0..n`: the cube of a uniform number puts most mass on small ids.
fn skewed(rng: &mut SplitMix64, n: u64) -> u64 {
    let u = rng.unit();
    ((u * u * u) * n as f64) as u64
}
