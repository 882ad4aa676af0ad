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

/// Parses Prometheus text exposition: every sample line is `name{labels} value`, every sample
/// belongs to a family declared with `# TYPE`. Returns `name{labels}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut families = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad family name {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "unknown", "info"].contains(&kind),
                "bad type {kind:?}"
            );
            families.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("{..}");
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(valid_name(k), "bad label {k:?}");
                assert!(v.starts_with('"') && v.ends_with('"'), "unquoted label value {v:?}");
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        assert!(families.contains_key(family), "sample {name} without # TYPE");
        samples.insert(series.to_owned(), value);
    }
    samples
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
