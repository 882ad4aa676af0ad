//! The example as its README section documents it: three instances, a product loaded through
//! one and served from the shared cache by another, an update published by a third heard by all.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct Instances(Vec<Child>, std::path::PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn http_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 90 + i], 8080))
}

/// One HTTP/1.1 exchange: (status, head, body).
fn exchange(i: u8, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&http_addr(i), Duration::from_secs(1)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn a_product_loaded_by_one_instance_is_served_from_cache_by_another() {
    let dir = std::env::temp_dir().join(format!("catalogue-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("secret"),
        "5b1c7e9a3d2f4b6c8e0a1f3d5b7c9e1a2f4d6b8c0e2a4f6d8b0c2e4a6f8d0b2c",
    )
    .unwrap();
    let cluster = |i: u8| SocketAddr::from(([127, 0, 0, 90 + i], 7946));
    let seeds = (1..=3).map(|i| cluster(i).to_string()).collect::<Vec<_>>().join(",");
    let mut instances = Instances(Vec::new(), dir.clone());
    for i in 1..=3u8 {
        instances.0.push(
            Command::new(env!("CARGO_BIN_EXE_catalogue"))
                .args(["--node-id", &format!("cat-{i}"), "--cluster", &cluster(i).to_string()])
                .args(["--http", &http_addr(i).to_string(), "--seeds", &seeds])
                .arg("--secret-file")
                .arg(dir.join("secret"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let start = Instant::now();
    while !(1..=3).all(|i| exchange(i, "GET", "/audit", "").0 == 200) {
        assert!(start.elapsed() < Duration::from_secs(30), "instances not serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, head, body) = exchange(1, "GET", "/products/sku-1", "");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("x-served-by: cat-1") && head.contains("x-cache: miss"), "{head}");
    let (status, head, again) = exchange(2, "GET", "/products/sku-1", "");
    assert_eq!(status, 200);
    assert!(head.contains("x-served-by: cat-2") && head.contains("x-cache: hit"), "{head}");
    assert_eq!(again, body, "served from the cache instance 1 filled");

    let update = r#"{"sku":"sku-1","name":"Widget","cents":2499}"#;
    assert_eq!(exchange(3, "PUT", "/products/sku-1", update).0, 200);
    let (_, _, now) = exchange(1, "GET", "/products/sku-1", "");
    assert!(now.contains("2499"), "{now}");
    let start = Instant::now();
    while !(1..=3).all(|i| exchange(i, "GET", "/audit", "").2.contains("cat-3 updated")) {
        assert!(start.elapsed() < Duration::from_secs(10), "update not heard everywhere");
        std::thread::sleep(Duration::from_millis(50));
    }
}
