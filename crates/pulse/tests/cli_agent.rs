//! `pulse agent` as an operator runs it: three agent processes on 127.0.0.x from flags and
//! environment variables, a bucket declared through one node's admin API, a value written
//! through a second and read through a third, metrics scraped, and SIGTERM making one agent
//! leave cleanly (exit 0, seen as left, not failed). The client commands (`status`, `bucket
//! create`, `set`, `get`, `del`, `publish`, `members`, `buckets`, `subscribe` with and without
//! `--group`) run against different nodes and their exit codes and `--json` output are checked.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const ADMIN: &str = "ops-admin-token-0123456789";
const READ: &str = "prometheus-read-token-0123";

fn cluster_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 80 + i], 7946))
}

fn admin_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 80 + i], 7947))
}

/// One blocking HTTP/1.1 request; (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Agents {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(dir: &std::path::Path, i: u8) -> Child {
    // Agent 3 is mid-rotation: it already trusts the next secret too.
    let previous = if i == 3 {
        vec!["--previous-secret-file".to_owned(), dir.join("next").display().to_string()]
    } else {
        vec![]
    };
    let seeds =
        (1..=3).filter(|&j| j != i).map(|j| cluster_addr(j).to_string()).collect::<Vec<_>>();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_pulse"));
    agent.arg("agent");
    if i == 2 {
        // Agent 2 reads its options from a TOML file (relative paths are relative to it);
        // the environment overrides the file's cluster name.
        let config = format!(
            "node-id = \"agent-2\"\nbind = \"{}\"\nadmin = \"{}\"\nseeds = [{}]\n\
             secret-file = \"secret\"\ntoken-file = \"tokens\"\ncluster = \"overridden\"\n\
             log-level = \"warn\"\n",
            cluster_addr(2),
            admin_addr(2),
            seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "),
        );
        std::fs::write(dir.join("agent-2.toml"), config).unwrap();
        agent.arg("--config").arg(dir.join("agent-2.toml"));
    } else {
        agent
            .args(["--node-id", &format!("agent-{i}"), "--bind", &cluster_addr(i).to_string()])
            .args(["--admin", &admin_addr(i).to_string(), "--seeds", &seeds.join(",")])
            .args(previous)
            .env("MYCORRIZAL_SECRET_FILE", dir.join("secret"))
            .env("MYCORRIZAL_TOKEN_FILE", dir.join("tokens"))
            .env("RUST_LOG", "warn");
    }
    agent
        .env("MYCORRIZAL_CLUSTER", "clitest")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pulse agent")
}

#[test]
fn three_agents_serve_operate_and_leave_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("pulse-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("secret"),
        "3f8a9c1d2e7b4a6f8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("next"),
        "9c2e4b6a8d0f1e3c5a7b9d1f3e5c7a9b0d2f4e6c8a0b2d4f6e8c0a2b4d6f8e0a\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tokens"),
        format!("# role name token\nadmin ops {ADMIN}\nread prometheus {READ}\n"),
    )
    .unwrap();
    let mut agents = Agents { dir: dir.clone(), children: Vec::new() };
    for i in 1..=3 {
        agents.children.push(Some(start(&dir, i)));
    }
    until(Duration::from_secs(30), "every agent ready", || {
        (1..=3).all(|i| http(admin_addr(i), "GET", "/ready", "", b"").0 == 200)
    });
    let (status, body) = http(admin_addr(1), "GET", "/v1/cluster", READ, b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""alive":3"#), "{body}");

    let bucket = br#"{"name":"products","replicas":3,"max_entries":10000}"#;
    let (status, body) = http(admin_addr(1), "POST", "/v1/buckets", ADMIN, bucket);
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(10), "bucket known everywhere", || {
        (1..=3).all(|i| http(admin_addr(i), "GET", "/v1/buckets", READ, b"").1.contains("products"))
    });
    let (status, body) =
        http(admin_addr(2), "PUT", "/v1/cache/products/sku-1?consistency=all", ADMIN, b"widget");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(admin_addr(3), "GET", "/v1/cache/products/sku-1", READ, b"");
    assert_eq!((status, body.as_str()), (200, "widget"));
    assert_eq!(http(admin_addr(3), "GET", "/v1/cache/products/sku-2", READ, b"").0, 404);
    assert_eq!(http(admin_addr(3), "PUT", "/v1/cache/products/sku-2", READ, b"x").0, 403);
    assert_eq!(http(admin_addr(3), "GET", "/metrics", "not-a-token-at-all", b"").0, 401);
    let (status, metrics) = http(admin_addr(1), "GET", "/metrics", READ, b"");
    assert_eq!(status, 200);
    let samples = mycorrizal_testkit::prometheus::parse(&metrics).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(samples["mycorrizal_members{state=\"alive\"}"], 3.0, "{metrics}");
    assert_eq!(samples["mycorrizal_bucket_entries{bucket=\"products\"}"], 1.0, "{metrics}");
    assert_eq!(samples["mycorrizal_cache_ready"], 1.0, "{metrics}");

    // The client commands, against different nodes.
    let pulse = |node: u8, token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(args)
            .args(["--admin", &format!("http://{}", admin_addr(node))])
            .env("MYCORRIZAL_TOKEN", token)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = pulse(1, READ, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["members"]["alive"], 3);
    assert!(text(&pulse(1, READ, &["status"])).contains("3 alive"));
    let create = ["bucket", "create", "carts", "--ttl", "60s", "--max-entries", "1000"];
    let out =
        pulse(1, ADMIN, &[&create[..], &["--max-bytes", "64MiB", "--replicas", "2"]].concat());
    assert!(out.status.success(), "{out:?}");
    until(Duration::from_secs(10), "carts known on node 3", || {
        text(&pulse(3, READ, &["buckets"])).contains("carts")
    });
    let out = pulse(
        2,
        ADMIN,
        &["set", "carts", "cart 1", "apple", "--ttl", "30s", "--consistency", "all"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = pulse(3, READ, &["get", "carts", "cart 1"]);
    assert_eq!((out.status.code(), text(&out).as_str()), (Some(0), "apple\n"));
    let out = pulse(3, READ, &["get", "carts", "cart 1", "--json", "--consistency", "quorum"]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["value"], "apple");
    assert_eq!(pulse(3, READ, &["get", "carts", "absent"]).status.code(), Some(1));
    assert_eq!(pulse(3, READ, &["get", "nope", "absent"]).status.code(), Some(1));
    assert!(pulse(1, ADMIN, &["del", "carts", "cart 1"]).status.success());
    assert_eq!(
        pulse(2, READ, &["get", "carts", "cart 1", "--consistency", "all"]).status.code(),
        Some(1)
    );
    let out = pulse(2, ADMIN, &["publish", "orders", "placed"]);
    assert!(out.status.success() && text(&out).contains("published agent-2/"), "{out:?}");
    let out = pulse(1, READ, &["members", "--json"]);
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 3);
    let out = pulse(1, READ, &["set", "carts", "k", "v"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed"), "{out:?}");
    let out = pulse(1, "wrong-token-0123456789", &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authenticated"), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["status", "--admin", "http://127.0.0.89:7947"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"), "{out:?}");

    // Streaming subscriptions: every event on node 1, a group member on node 3.
    let spawn_sub = |node: u8, extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(["subscribe", "audit", "--json"])
            .args(extra)
            .args(["--admin", &format!("http://{}", admin_addr(node))])
            .env("MYCORRIZAL_TOKEN", READ)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    };
    let (mut all, all_lines) = spawn_sub(1, &[]);
    let (mut member, member_lines) = spawn_sub(3, &["--group", "billing"]);
    // Publish until both streams carry events (a subscription is live once its first arrives).
    let mut n = 0;
    let mut seen = (false, false);
    while !(seen.0 && seen.1) {
        assert!(n < 100, "no event reached the subscribers");
        assert!(pulse(2, ADMIN, &["publish", "audit", &format!("ping-{n}")]).status.success());
        n += 1;
        seen.0 |= all_lines.recv_timeout(Duration::from_millis(200)).is_ok();
        seen.1 |= member_lines.recv_timeout(Duration::from_millis(200)).is_ok();
    }
    assert!(pulse(2, ADMIN, &["publish", "audit", "final"]).status.success());
    let wait_for_final = |lines: &std::sync::mpsc::Receiver<String>| loop {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("the final event");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["payload"] == "final" {
            assert!(v["id"].as_str().unwrap().starts_with("agent-2/"), "{line}");
            return;
        }
    };
    wait_for_final(&all_lines);
    wait_for_final(&member_lines);
    for c in [&mut all, &mut member] {
        c.kill().unwrap();
        c.wait().unwrap();
    }

    // SIGTERM: agent 3 hands over, leaves, exits 0; the others see it left, not failed.
    let mut third = agents.children[2].take().unwrap();
    let killed = Command::new("kill").args(["-TERM", &third.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = third.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "agent 3 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    third.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "exit {status:?}: {out}");
    assert!(out.contains("pulse agent: ready (3 members alive)"), "{out}");
    assert!(out.contains("pulse agent: stopped"), "{out}");
    until(Duration::from_secs(10), "agent 3 seen as left", || {
        let (_, members) = http(admin_addr(1), "GET", "/v1/members", READ, b"");
        members_left(&members)
    });
    let (status, body) = http(admin_addr(1), "GET", "/v1/cache/products/sku-1", READ, b"");
    assert_eq!((status, body.as_str()), (200, "widget"));
}

/// Whether the members JSON lists agent-3 as left, whatever the field order.
fn members_left(members: &str) -> bool {
    members.split('}').any(|m| m.contains(r#""id":"agent-3""#) && m.contains(r#""state":"left""#))
}

#[test]
fn a_missing_secret_file_is_a_usage_error_with_an_actionable_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["agent", "--node-id", "lonely", "--bind", "127.0.0.89:7946"])
        .args(["--secret-file", "/nonexistent/secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the secret file /nonexistent/secret"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["agent"])
        .env_remove("MYCORRIZAL_NODE_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-id is required (or MYCORRIZAL_NODE_ID"), "{err}");
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_naming_the_key() {
    let path = std::env::temp_dir().join(format!("pulse-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "node-id = \"a\"\nbind = \"127.0.0.89:7946\"\nsecrets = \"x\"\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is refused") && err.contains("unknown field `secrets`"), "{err}");
}
