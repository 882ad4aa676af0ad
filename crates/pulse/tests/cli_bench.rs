//! `pulse bench` end to end at a tiny scale: every scenario runs, against Redis when
//! `redis-server` is installed (CI installs it), and the JSON report carries a median for every
//! contender, the memory and rebalance figures and a ratio for every target. The figures
//! themselves are not asserted (a benchmark is not a timed test); their presence and sanity are.

use std::process::Command;

fn redis_available() -> bool {
    Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn bench_runs_every_scenario_and_reports_json() {
    let with_redis = redis_available();
    if !with_redis {
        eprintln!("redis-server not installed: running pulse bench --no-redis (CI installs Redis)");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse"));
    cmd.args(["bench", "--scale", "0.001", "--entries", "2000", "--repeats", "1", "--json"]);
    if !with_redis {
        cmd.arg("--no-redis");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pulse bench failed: {stderr}");
    assert!(stderr.contains("target"), "the table goes to stderr with --json: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");

    let medians = report["medians"].as_array().unwrap();
    let has = |scenario: &str, contender: &str| {
        medians.iter().any(|m| {
            m["scenario"] == scenario
                && m["contender"] == contender
                && m["ops_per_s"].as_f64() > Some(0.0)
        })
    };
    for threads in [1, 2] {
        let s = format!("local get, {threads} thread(s)");
        for c in ["mycorrizal", "mycorrizal-now", "mycorrizal-store", "quick_cache", "moka"] {
            assert!(has(&s, c), "no {c} median for {s}");
        }
    }
    for s in [
        "remote get, 1 outstanding",
        "remote get, 64 outstanding",
        "set RF=3 W=Quorum, 1 outstanding",
        "set RF=3 W=Quorum, 64 outstanding",
    ] {
        assert!(has(s, "mycorrizal"), "no median for {s}");
        assert_eq!(has(s, "redis"), with_redis, "{s}: Redis median present = {with_redis}");
        let ours = medians.iter().find(|m| m["scenario"] == s && m["contender"] == "mycorrizal");
        let ours = ours.unwrap();
        let (p50, p99) = (ours["p50_us"].as_f64().unwrap(), ours["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50, "{ours}");
    }
    assert_eq!(has("local get, 1 thread(s)", "redis"), with_redis);

    let memory = &report["memory"];
    assert_eq!(memory["entries"], 2000);
    assert!(memory["ours_bytes_per_entry"].as_f64().unwrap() >= 0.0);
    assert_eq!(memory["redis_bytes_per_entry"].is_f64(), with_redis);

    // One repeat, run in a process of its own and reported as the median.
    let runs = report["rebalance_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let rebalance = &report["rebalance"];
    assert_eq!(rebalance, &runs[0]);
    assert_eq!(rebalance["entries"], 2000);
    // The new node owns about three quarters of the keys at RF=3: most moved to it by sync,
    // the rest arrived as foreground writes during the join.
    let on_new = rebalance["entries_on_new_node"].as_u64().unwrap();
    assert!((1000..=2000).contains(&on_new), "{rebalance}");
    assert!(rebalance["records_moved"].as_u64().unwrap() >= on_new / 2, "{rebalance}");
    assert!(rebalance["bytes_moved"].as_u64().unwrap() > 0);
    assert!(rebalance["p99_before_us"].as_f64().unwrap() > 0.0);
    // 30 s at scale 1, a second at least.
    assert_eq!(rebalance["steady_window_s"], 1.0, "{rebalance}");

    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["what"].as_str().unwrap()).collect();
    // Redis: local get vs Redis, remote p50, remote 64, set 64, memory. Both forms of the
    // local get (awaited, `try_get_local`) vs quick_cache and moka at 1 and 2 threads: 8.
    // Rebalance: 1.
    let expected = if with_redis { 14 } else { 9 };
    assert_eq!(checks.len(), expected, "{names:?}");
    for c in checks {
        let ratio = c["ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{c}");
    }
}
