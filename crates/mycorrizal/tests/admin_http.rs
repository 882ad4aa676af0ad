//! The admin HTTP API of a real node on loopback: health and readiness, tokens and roles
//! (401/403), bucket declaration, cache get/set/delete, publishing, bad input (400), oversized
//! bodies (413), and configuration refusals. A minimal HTTP/1.1 client keeps the test free of
//! client dependencies.

use std::{net::SocketAddr, time::Duration};

use mycorrizal::{
    NodeId,
    admin::{AdminConfig, AdminServer, AdminToken, Role},
    cluster::{ClusterConfig, Node},
    security::Trust,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "q8Zl0v1kYw7Jm3Xn5Rb2Tc9Hd6Pf4Sg1Ua8Ke0Wi3Lo=";
const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body; a failed write is fine then.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP answer");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + n]);
        b = &b[line + 2 + n + 2..];
    }
}

async fn setup() -> (Node, AdminServer) {
    let id = NodeId::new("admin-1").unwrap();
    let config = ClusterConfig::lan("admintest", id, SocketAddr::from(([127, 0, 0, 1], 0)));
    let node =
        Node::builder(config).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap();
    let admin = AdminConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        tokens: vec![
            AdminToken::new("ops-read", READ, Role::Read).unwrap(),
            AdminToken::new("app", WRITE, Role::Write).unwrap(),
            AdminToken::new("ops", ADMIN, Role::Admin).unwrap(),
        ],
        ..AdminConfig::default()
    };
    let server = AdminServer::start(node.clone(), admin).await.unwrap();
    (node, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_every_route() {
    let (node, server) = setup().await;
    let a = server.addr();

    let r = call(a, "GET", "/health", None, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["node"], "admin-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while call(a, "GET", "/ready", None, b"").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Authentication and roles.
    let r = call(a, "GET", "/metrics", None, b"").await;
    assert_eq!(r.status, 401);
    assert!(r.headers.to_ascii_lowercase().contains("www-authenticate: bearer"), "{}", r.headers);
    assert_eq!(r.json()["code"], "unauthorized");
    assert_eq!(call(a, "GET", "/metrics", Some("wrong-token-0123456789"), b"").await.status, 401);
    let r = call(a, "GET", "/metrics", Some(READ), b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("mycorrizal_members{state=\"alive\"} 1"), "{}", r.text());
    let bucket = br#"{"name":"orders","replicas":1,"max_entries":1000}"#;
    assert_eq!(call(a, "POST", "/v1/buckets", Some(READ), bucket).await.status, 403);
    assert_eq!(call(a, "POST", "/v1/buckets", Some(WRITE), bucket).await.status, 403);
    let r = call(a, "POST", "/v1/buckets", Some(ADMIN), bucket).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Bad input.
    let r = call(a, "POST", "/v1/buckets", Some(ADMIN), b"{\"name\": ").await;
    assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (400, "bad_json"));
    let r = call(a, "POST", "/v1/buckets", Some(ADMIN), br#"{"name":"x","colour":"red"}"#).await;
    assert_eq!(r.status, 400);
    let r = call(a, "POST", "/v1/buckets", Some(ADMIN), br#"{"name":"x","replicas":99}"#).await;
    assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (400, "bad_config"));
    let r = call(a, "POST", "/v1/buckets", Some(ADMIN), br#"{"name":"orders","replicas":2}"#).await;
    assert_eq!(r.status, 409, "a conflicting declaration: {}", r.text());
    let big = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(call(a, "PUT", "/v1/cache/orders/big", Some(WRITE), &big).await.status, 413);
    let r = call(a, "GET", "/v1/cache/orders/k?consistency=most", Some(READ), b"").await;
    assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (400, "bad_consistency"));
    assert_eq!(call(a, "GET", "/v1/nothing", Some(READ), b"").await.status, 404);

    // The cache through the API.
    assert_eq!(call(a, "PUT", "/v1/cache/orders/k1", Some(READ), b"v").await.status, 403);
    let r = call(a, "PUT", "/v1/cache/orders/k1?ttl_ms=60000", Some(WRITE), b"widget").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(a, "GET", "/v1/cache/orders/k1?consistency=all", Some(READ), b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"widget"[..]));
    assert_eq!(node.cache().bucket("orders").unwrap().get("k1").await.unwrap().unwrap(), "widget");
    assert_eq!(call(a, "GET", "/v1/cache/orders/absent", Some(READ), b"").await.status, 404);
    assert_eq!(call(a, "GET", "/v1/cache/nope/k1", Some(READ), b"").await.status, 404);
    assert_eq!(call(a, "DELETE", "/v1/cache/orders/k1", Some(WRITE), b"").await.status, 200);
    assert_eq!(call(a, "GET", "/v1/cache/orders/k1", Some(READ), b"").await.status, 404);

    // The replica listing: admin only, one line per record, tombstones included.
    let r = call(a, "PUT", "/v1/cache/orders/k2", Some(WRITE), b"gadget").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call(a, "GET", "/v1/buckets/orders/replica", Some(WRITE), b"").await.status, 403);
    assert_eq!(call(a, "GET", "/v1/buckets/nope/replica", Some(ADMIN), b"").await.status, 404);
    let r = call(a, "GET", "/v1/buckets/orders/replica", Some(ADMIN), b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut lines: Vec<serde_json::Value> =
        r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.sort_by_key(|l| l["key"].as_str().unwrap_or_default().to_owned());
    assert_eq!(lines.len(), 2, "{}", r.text());
    assert_eq!((&lines[0]["key"], &lines[0]["tombstone"]), (&"k1".into(), &true.into()));
    assert_eq!((&lines[1]["key"], &lines[1]["tombstone"]), (&"k2".into(), &false.into()));
    let version = node.cache().bucket("orders").unwrap().local_record("k2").unwrap().version;
    assert_eq!(lines[1]["version"], version.to_string());

    // Cluster views.
    let r = call(a, "GET", "/v1/cluster", Some(READ), b"").await;
    assert_eq!(r.json()["members"]["alive"], 1);
    let r = call(a, "GET", "/v1/members", Some(READ), b"").await;
    assert_eq!(r.json()[0]["id"], "admin-1");
    let r = call(a, "GET", "/v1/buckets", Some(READ), b"").await;
    assert_eq!(r.json()[0]["name"], "orders");
    assert_eq!(r.json()[0]["max_entries"], 1000);

    // Publishing.
    let mut sub = node.events().subscribe("orders").await.unwrap();
    let r = call(a, "POST", "/v1/events/orders", Some(WRITE), b"placed").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&sub.recv().await.unwrap().payload[..], b"placed");
    assert_eq!(call(a, "POST", "/v1/events/bad%20topic", Some(WRITE), b"x").await.status, 400);

    server.stop(Duration::from_secs(2)).await;
    node.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn unsafe_configurations_are_refused() {
    let id = NodeId::new("admin-2").unwrap();
    let config = ClusterConfig::lan("admintest", id, SocketAddr::from(([127, 0, 0, 1], 0)));
    let node =
        Node::builder(config).trust(Trust::cluster_secret(SECRET).unwrap()).start().await.unwrap();
    let public =
        AdminConfig { bind: SocketAddr::from(([0, 0, 0, 0], 0)), ..AdminConfig::default() };
    let err = AdminServer::start(node.clone(), public).await.unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    assert!(AdminToken::new("short", "abc", Role::Read).is_err());
    assert!(AdminToken::from_sha256_hex("x", "zz", Role::Read).is_err());
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")
    assert_eq!(AdminToken::from_sha256_hex("x", hex, Role::Admin).unwrap().role(), Role::Admin);
    assert_eq!("write".parse::<Role>().unwrap(), Role::Write);
    assert!("root".parse::<Role>().is_err());
}
