//! The client commands: `pulse status`, `members`, `buckets`, `bucket create`, `set`, `get`,
//! `del`, `publish`, each one request to a node's admin API (plain HTTP/1.1 on the admin
//! address, normally loopback).
//!
//! Exit codes: 0 success; 1 not found (`get` of an absent key, an unknown bucket); 2 usage,
//! authentication or connection errors, and anything else the node refused.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

/// Where and how to reach a node's admin API (shared by every client command).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's admin API: `http://host:port` or `host:port`.
    #[arg(long, env = "MYCORRIZAL_ADMIN", default_value = "http://127.0.0.1:7947")]
    admin: String,
    /// A file holding the token: the token alone, or a token-file line `ROLE NAME TOKEN`.
    #[arg(long, env = "MYCORRIZAL_CLIENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The token itself (prefer `--token-file`: arguments are visible to other users).
    #[arg(long, env = "MYCORRIZAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

/// A failed command and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into() }
    }
}

type Outcome = Result<(), Failure>;

/// An answer from the admin API.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<serde_json::Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::usage(format!("the node answered something that is not JSON: {e}"))
        })
    }

    /// The node's error message, or the status.
    fn error(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

impl Target {
    fn host_port(&self) -> &str {
        self.admin.strip_prefix("http://").unwrap_or(&self.admin).trim_end_matches('/')
    }

    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read the token file {}: {e}", path.display()))
        })?;
        let line = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .find(|l| !l.is_empty())
            .ok_or_else(|| Failure::usage(format!("{} holds no token", path.display())))?;
        Ok(line.split_whitespace().last().map(str::to_owned))
    }

    /// Sends one request; connection problems and 401/403 are usage errors with advice.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer, Failure> {
        let (mut s, addr) = self.send(method, path, body)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        if raw.is_empty() {
            let e = read.err().map(|e| e.to_string()).unwrap_or_default();
            return Err(Failure::usage(format!(
                "the admin API at {addr} closed the connection {e}"
            )));
        }
        let answer = parse(&raw).ok_or_else(|| {
            Failure::usage(format!("the admin API at {addr} sent a malformed answer"))
        })?;
        match answer.status {
            401 => Err(Failure::usage(format!(
                "not authenticated: {} (pass --token-file or set MYCORRIZAL_TOKEN)",
                answer.error()
            ))),
            403 => Err(Failure::usage(format!("not allowed: {}", answer.error()))),
            _ => Ok(answer),
        }
    }

    /// [`Target::call`], with any answer but 200 as a failure (404 exits 1).
    fn ok(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer, Failure> {
        let a = self.call(method, path, body)?;
        if a.status == 200 { Ok(a) } else { Err(refused(&a)) }
    }

    /// Connects and writes one request.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(TcpStream, std::net::SocketAddr), Failure> {
        if self.admin.starts_with("https://") {
            return Err(Failure::usage(
                "the admin API speaks plain HTTP on its admin address; use http://",
            ));
        }
        let host = self.host_port();
        let addr = host.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
            Failure::usage(format!("--admin {:?}: expected http://host:port", self.admin))
        })?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            Failure::usage(format!(
                "cannot reach the admin API at {addr}: {e} (is `pulse agent` running there? see --admin)"
            ))
        })?;
        let auth = match self.token()? {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // A server may answer (413) before reading a large body: the answer tells.
        let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(body));
        Ok((s, addr))
    }
}

/// One HTTP/1.1 request to `addr` with a bearer token, waiting at most `timeout` for each of
/// connecting and answering; for tools that talk to many nodes (`pulse chaos`).
pub(crate) fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| std::io::Error::other("malformed HTTP answer"))
}

/// Parses an HTTP/1.1 answer (Content-Length or chunked body).
fn parse(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n")?;
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(rest.get(line + 2..line + 2 + n)?);
            rest = rest.get(line + 2 + n + 2..)?;
        }
        body = out;
    }
    Some(Answer { status, body })
}

/// Percent-encodes a path segment (keys may hold any bytes a URL cannot).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (10s, 500ms, 2m, 1h)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

/// `1048576`, `64KiB`, `64MiB`, `1GiB` (also KB, MB, GB as powers of 1000).
pub fn size(s: &str) -> Result<u64, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit (64MiB)"))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too large"))
}

/// A non-2xx answer as a failure: 404 exits 1, anything else 2.
fn refused(answer: &Answer) -> Failure {
    Failure { code: if answer.status == 404 { 1 } else { 2 }, message: answer.error() }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn status(t: &Target) -> Outcome {
    let a = t.ok("GET", "/v1/cluster", b"")?;
    let v = a.json()?;
    if t.json {
        print_json(&v);
        return Ok(());
    }
    let m = &v["members"];
    println!(
        "node {} of cluster {} at {}: {} alive, {} suspect, {} down, {} left; {}",
        v["node"].as_str().unwrap_or("?"),
        v["cluster"].as_str().unwrap_or("?"),
        v["addr"].as_str().unwrap_or("?"),
        m["alive"],
        m["suspect"],
        m["down"],
        m["left"],
        if v["ready"].as_bool() == Some(true) { "ready" } else { "not ready" }
    );
    Ok(())
}

pub fn members(t: &Target) -> Outcome {
    let a = t.ok("GET", "/v1/members", b"")?;
    let v = a.json()?;
    if t.json {
        print_json(&v);
        return Ok(());
    }
    println!("{:<24} {:<24} {:<8} GENERATION", "ID", "ADDRESS", "STATE");
    for m in v.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<24} {:<8} {}",
            m["id"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["generation"]
        );
    }
    Ok(())
}

pub fn buckets(t: &Target) -> Outcome {
    let a = t.ok("GET", "/v1/buckets", b"")?;
    let v = a.json()?;
    if t.json {
        print_json(&v);
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>12} {:>14} {:>10} {:>12}",
        "BUCKET", "REPLICAS", "MAX ENTRIES", "MAX BYTES", "ENTRIES", "BYTES"
    );
    for b in v.as_array().into_iter().flatten() {
        let or_dash =
            |x: &serde_json::Value| if x.is_null() { "-".to_owned() } else { x.to_string() };
        println!(
            "{:<24} {:>8} {:>12} {:>14} {:>10} {:>12}",
            b["name"].as_str().unwrap_or("?"),
            b["replicas"],
            or_dash(&b["max_entries"]),
            or_dash(&b["max_bytes"]),
            b["entries"],
            b["bytes"]
        );
    }
    Ok(())
}

/// Options of `pulse bucket create`.
#[derive(Debug, clap::Args)]
pub struct CreateBucket {
    /// The bucket's name.
    name: String,
    /// Default time to live of entries (`60s`, `10m`).
    #[arg(long, value_parser = duration)]
    ttl: Option<Duration>,
    /// Most entries per replica.
    #[arg(long)]
    max_entries: Option<u64>,
    /// Most bytes per replica (`64MiB`).
    #[arg(long, value_parser = size)]
    max_bytes: Option<u64>,
    /// Copies of every key (1 to 16; default 3).
    #[arg(long)]
    replicas: Option<u32>,
}

pub fn create_bucket(t: &Target, c: &CreateBucket) -> Outcome {
    let body = serde_json::json!({
        "name": c.name,
        "replicas": c.replicas,
        "max_entries": c.max_entries,
        "max_bytes": c.max_bytes,
        "default_ttl_ms": c.ttl.map(|d| d.as_millis() as u64),
    });
    let a = t.ok("POST", "/v1/buckets", body.to_string().as_bytes())?;
    if t.json {
        print_json(&a.json()?);
    } else {
        println!("bucket {} declared", c.name);
    }
    Ok(())
}

fn query(consistency: Option<&str>, ttl: Option<Duration>) -> String {
    let mut q = Vec::new();
    if let Some(c) = consistency {
        q.push(format!("consistency={c}"));
    }
    if let Some(t) = ttl {
        q.push(format!("ttl_ms={}", t.as_millis()));
    }
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

pub fn set(
    t: &Target,
    bucket: &str,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
    consistency: Option<&str>,
) -> Outcome {
    let path = format!("/v1/cache/{}/{}{}", segment(bucket), segment(key), query(consistency, ttl));
    let a = t.ok("PUT", &path, value.as_bytes())?;
    if t.json {
        print_json(&a.json()?);
    }
    Ok(())
}

pub fn get(t: &Target, bucket: &str, key: &str, consistency: Option<&str>) -> Outcome {
    let path =
        format!("/v1/cache/{}/{}{}", segment(bucket), segment(key), query(consistency, None));
    let a = t.ok("GET", &path, b"")?;
    if t.json {
        let value = String::from_utf8_lossy(&a.body);
        print_json(&serde_json::json!({ "bucket": bucket, "key": key, "value": value }));
    } else {
        let mut out = std::io::stdout();
        let _ = out.write_all(&a.body);
        let _ = out.write_all(b"\n");
    }
    Ok(())
}

pub fn del(t: &Target, bucket: &str, key: &str) -> Outcome {
    let a = t.ok("DELETE", &format!("/v1/cache/{}/{}", segment(bucket), segment(key)), b"")?;
    if t.json {
        print_json(&a.json()?);
    }
    Ok(())
}

pub fn publish(t: &Target, topic: &str, payload: &str) -> Outcome {
    let a = t.ok("POST", &format!("/v1/events/{}", segment(topic)), payload.as_bytes())?;
    let v = a.json()?;
    if t.json {
        print_json(&v);
    } else {
        println!("published {}", v["id"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// Streams the events of `topic` (as a member of `group`, if given) until the node closes the
/// stream or the process is interrupted. One line per event.
pub fn subscribe(t: &Target, topic: &str, group: Option<&str>) -> Outcome {
    use std::io::BufRead;
    let query = group.map(|g| format!("?group={}", segment(g))).unwrap_or_default();
    let (s, addr) = t.send("GET", &format!("/v1/events/{}/stream{query}", segment(topic)), b"")?;
    let mut r = std::io::BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => {
                return Err(Failure::usage(format!(
                    "the admin API at {addr} closed the connection"
                )));
            }
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
        }
    }
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 200 {
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"\r\n");
        let _ = r.read_to_end(&mut raw);
        let answer = parse(&raw).unwrap_or(Answer { status, body: Vec::new() });
        return Err(match status {
            401 => Failure::usage(format!("not authenticated: {}", answer.error())),
            403 => Failure::usage(format!("not allowed: {}", answer.error())),
            _ => refused(&answer),
        });
    }
    let mut pending = Vec::new();
    let mut out = std::io::stdout();
    loop {
        // Chunked transfer: a hex size line, the bytes, CRLF; size 0 ends the stream.
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 {
            return Ok(());
        }
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return Err(Failure::usage(format!("the admin API at {addr} sent a malformed stream")));
        };
        if n == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; n + 2];
        if r.read_exact(&mut chunk).is_err() {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
            if let Some(notice) = v["notice"].as_str() {
                eprintln!("pulse: {notice}");
            } else if t.json {
                let _ = out.write_all(line);
                let _ = out.write_all(b"\n");
            } else {
                let _ = writeln!(
                    out,
                    "{} (attempt {}): {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["attempt"],
                    v["payload"].as_str().unwrap_or("")
                );
            }
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_segments() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("ten").is_err());
        assert!(duration("3d").is_err());
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1000"), Ok(1000));
        assert!(size("1XB").is_err());
        assert!(size("99999999999GiB").is_err());
        assert_eq!(segment("a b/c%"), "a%20b%2Fc%25");
    }

    #[test]
    fn answers_parse_with_length_or_chunks() {
        let a = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"{}"[..]));
        let a =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(a.body, b"abc");
        assert!(parse(b"garbage").is_none());
    }
}
