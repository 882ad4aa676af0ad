//! Every request path opens a span with the node and a request id: requests sent and served,
//! cache writes, publishes, sync rounds (simulated network, one thread, a recording
//! subscriber).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mycorrizal::{
    NodeId,
    clock::TokioClock,
    cluster::{ClusterConfig, MemberState, Node},
    security::Trust,
    store::BucketConfig,
    transport::{SimConfig, SimNetwork},
};
use tracing::{
    Event, Metadata, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};

/// Records each new span's name and fields.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields.0));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 6, i], 7946))
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("t{i}")).unwrap()
}

#[tokio::test(start_paused = true)]
async fn request_paths_open_spans_with_node_and_request_id() {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(recorder.clone());
    let net = SimNetwork::new(SimConfig::new(9));
    let clock = Arc::new(TokioClock::new(1_800_000_000_000));
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut c = ClusterConfig::lan("spans", id(i), addr(i));
        c.seeds = vec![addr(1)];
        let node = Node::builder(c)
            .trust(Trust::cluster_secret(SECRET).unwrap())
            .transport(Arc::new(net.transport(id(i), addr(i))))
            .clock(clock.clone())
            .seed(u64::from(i))
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    while !nodes.iter().all(|n| {
        (1..=2).all(|i| n.members().get(&id(i)).is_some_and(|m| m.state == MemberState::Alive))
    }) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = BucketConfig::builder("orders").replicas(2).max_entries(100).build().unwrap();
    let orders = nodes[0].cache().create_bucket(config).await.unwrap();
    nodes[0].cache().ready().await;
    orders.set("k", "v").await.unwrap();
    let _sub = nodes[1].events().subscribe("orders").await.unwrap();
    nodes[0].events().publish("orders", &b"e"[..]).await.unwrap();

    let spans = recorder.0.lock().unwrap().clone();
    let find = |name: &str, with: &[&str]| {
        spans.iter().any(|(n, f)| n == name && with.iter().all(|w| f.contains(w)))
    };
    assert!(find("request", &["node=t1", "peer=t2", "channel=Cache", "request_id="]), "{spans:#?}");
    assert!(find("serve", &["from=t1", "channel=Cache", "request_id="]));
    assert!(find("cache.write", &["node=t1", "bucket=orders", "request_id="]));
    assert!(find("events.publish", &["node=t1", "topic=orders", "request_id="]));
    assert!(find("request", &["channel=Events"]));
    assert!(find("cache.sync", &["node=", "generation=", "request_id="]));
}
