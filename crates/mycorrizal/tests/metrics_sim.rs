//! A node's metrics after real work (simulated network, paused clock): the text parses as
//! Prometheus exposition format, and the figures match what was done.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use mycorrizal::{
    NodeId,
    clock::TokioClock,
    cluster::{ClusterConfig, MemberState, Node},
    security::Trust,
    store::BucketConfig,
    transport::{SimConfig, SimNetwork},
};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 5, i], 7946))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("m{i}")).unwrap()
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    mycorrizal_testkit::prometheus::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(start_paused = true)]
async fn metrics_parse_as_prometheus_text_and_count_what_was_done() {
    let net = SimNetwork::new(SimConfig::new(3));
    let clock = Arc::new(TokioClock::new(1_800_000_000_000));
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut c = ClusterConfig::lan("metrics", id(i), addr(i));
        c.seeds = vec![addr(1)];
        nodes.push(
            Node::builder(c)
                .trust(Trust::cluster_secret(SECRET).unwrap())
                .transport(Arc::new(net.transport(id(i), addr(i))))
                .clock(clock.clone())
                .seed(u64::from(i))
                .start()
                .await
                .unwrap(),
        );
    }
    while !nodes.iter().all(|n| {
        (1..=2).all(|i| n.members().get(&id(i)).is_some_and(|m| m.state == MemberState::Alive))
    }) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = BucketConfig::builder("orders").replicas(2).max_entries(1000).build().unwrap();
    let orders = nodes[0].cache().create_bucket(config).await.unwrap();
    nodes[0].cache().ready().await;
    for k in 0..10 {
        orders.set(format!("k{k}"), "v").await.unwrap();
    }
    assert!(orders.get("k1").await.unwrap().is_some());
    assert!(orders.get("absent").await.unwrap().is_none());
    let mut sub = nodes[1].events().subscribe("orders").await.unwrap();
    nodes[0].events().publish("orders", &b"placed"[..]).await.unwrap();
    sub.recv().await.unwrap();

    let text = nodes[0].metrics().encode();
    let m = parse(&text);
    let get = |series: &str| *m.get(series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(get(r#"mycorrizal_members{state="alive"}"#), 2.0);
    assert_eq!(get(r#"mycorrizal_members{state="down"}"#), 0.0);
    assert!(get("mycorrizal_connections") >= 1.0);
    assert!(get(r#"mycorrizal_gossip_datagrams_total{direction="in"}"#) > 0.0);
    assert_eq!(get("mycorrizal_cache_ready"), 1.0);
    assert_eq!(get("mycorrizal_cache_writes_total"), 10.0);
    assert_eq!(get(r#"mycorrizal_cache_reads_total{source="local"}"#), 2.0);
    assert_eq!(get(r#"mycorrizal_bucket_entries{bucket="orders"}"#), 10.0);
    assert_eq!(get(r#"mycorrizal_bucket_hits_total{bucket="orders"}"#), 1.0);
    assert_eq!(get(r#"mycorrizal_bucket_misses_total{bucket="orders"}"#), 1.0);
    assert_eq!(get("mycorrizal_events_published_total"), 1.0);
    // Every write reached the other replica: at least 10 cache requests were timed.
    assert!(get(r#"mycorrizal_request_duration_seconds_count{channel="cache"}"#) >= 10.0);
    assert!(
        get(r#"mycorrizal_request_duration_seconds_bucket{le="+Inf",channel="cache"}"#) >= 10.0
    );
    assert!(text.contains("# TYPE mycorrizal_request_duration_seconds histogram"));
    // Each write was applied by the other replica: its replication time was observed.
    assert_eq!(get("mycorrizal_cache_replication_seconds_count"), 10.0);
    // Link traffic: the cache writes left as frames on the cache channel and their answers
    // came back; byte counts include the 16-byte headers.
    let cache_out = get(r#"mycorrizal_link_frames_total{direction="out",channel="cache"}"#);
    let cache_in = get(r#"mycorrizal_link_frames_total{direction="in",channel="cache"}"#);
    assert!(cache_out >= 10.0 && cache_in >= 10.0, "out {cache_out}, in {cache_in}");
    assert!(
        get(r#"mycorrizal_link_bytes_total{direction="out",channel="cache"}"#) >= 16.0 * cache_out
    );
    assert!(get(r#"mycorrizal_link_frames_total{direction="out",channel="events"}"#) >= 1.0);
    assert_eq!(get(r#"mycorrizal_link_frames_total{direction="in",channel="app"}"#), 0.0);
    // Nothing is waiting anywhere once the work is done.
    assert_eq!(get("mycorrizal_link_queued_requests"), 0.0);
    assert_eq!(get("mycorrizal_events_queued"), 0.0);
    // Every metric the Grafana dashboard queries exists.
    let dashboard = include_str!("../../../deploy/grafana/mycorrizal.json");
    for name in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("mycorrizal_") && name != "mycorrizal" {
            // A family with no samples yet (no failure so far) is still declared.
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                m.keys().any(|series| series.starts_with(name))
                    || text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which the node does not export"
            );
        }
    }
    // The application can add its own metrics to the node's registry.
    let mine = prometheus_client::metrics::counter::Counter::<u64>::default();
    nodes[0].metrics().registry().register("app_orders", "Orders placed", mine.clone());
    mine.inc();
    assert_eq!(parse(&nodes[0].metrics().encode())["app_orders_total"], 1.0);
}
