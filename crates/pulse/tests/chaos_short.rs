//! The chaos harness in its short mode (`pulse chaos --mode short`): five `pulse agent`
//! processes in their own network namespaces under 10 % packet loss for the whole run,
//! crashed, paused, partitioned (halves, lone node, one-way, bridge) and restarted with skewed
//! clocks (within and beyond the drift) while sixteen writers write unique keys at Quorum and All
//! and two publishers feed a consumer group; then everything is healed, every key read at All
//! and the replicas compared. Fails if an acknowledged write was lost, a write reported failed
//! is present, an acknowledged delete came back, replicas disagree, an acknowledged event never
//! arrived, or a reachable node was declared down. Needs root, iproute2 and nftables (CI installs them); skips with the reason elsewhere.

use std::process::{Command, Stdio};

/// Why this test cannot run here, if it cannot. `probe` names the namespace created to find
/// out: the tests of this file run in parallel in one process, so each needs its own.
fn skip_reason(probe: &str) -> Option<String> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = format!("mczt{}{probe}", std::process::id());
    let created =
        Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    (!created).then(|| "network namespaces are not available".into())
}

/// `pulse chaos --mode short` with `args`; its output and the tag it names its namespaces and
/// links after (its pid).
fn run_chaos(args: &[&str], history: &std::path::Path) -> (std::process::Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["chaos", "--mode", "short"])
        .args(args)
        .arg("--history")
        .arg(history)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tag = child.id() % 100_000;
    (child.wait_with_output().unwrap(), tag)
}

/// No namespace or bridge of the run tagged `tag` is left.
fn assert_nothing_left(tag: u32) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(!listed.contains(&format!("mczn{tag}n")), "namespaces left behind: {listed}");
    let links = Command::new("ip").args(["link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&format!("mczb{tag}")), "bridge left behind: {links}");
}

#[test]
fn short_chaos_run_loses_nothing() {
    if let Some(why) = skip_reason("s") {
        eprintln!("SKIPPED short_chaos_run_loses_nothing: {why} (CI runs it as root)");
        return;
    }
    let history = std::env::temp_dir().join(format!("chaos-short-{}.jsonl", std::process::id()));
    let (out, tag) = run_chaos(&["--seed", "7"], &history);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pulse chaos exited {:?}; history in {}\n{stdout}\n{stderr}",
        out.status.code(),
        history.display()
    );
    let json = &stdout[stdout.find("\n{").expect("a JSON report") + 1..];
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    for must_be_zero in [
        "lost_acknowledged_writes",
        "failed_but_present",
        "resurrected_deletes",
        "divergent_keys",
        "false_down_verdicts",
    ] {
        assert_eq!(report[must_be_zero], 0, "{must_be_zero}: {report}");
    }
    assert!(report["acknowledged"].as_u64().unwrap() > 1000, "{report}");
    assert!(report["deletes_acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["events"]["lost_acknowledged"], 0, "{report}");
    assert!(report["events"]["acknowledged"].as_u64().unwrap() > 100, "{report}");
    assert!(report["quiet_windows_s"].as_f64().unwrap() > 20.0, "{report}");
    assert_eq!(report["loss_percent"], 10, "loss for the whole run: {report}");
    for fault in [
        "crash",
        "pause",
        "partition-halves",
        "partition-lone",
        "partition-one-way",
        "partition-bridge",
        "clock-skew-within-drift",
        "clock-skew-beyond-drift",
    ] {
        assert!(report["faults"][fault].as_u64().unwrap() >= 1, "{fault}: {report}");
    }
    // The namespaces and the bridge are gone.
    assert_nothing_left(tag);
    let lines = std::fs::read_to_string(&history).unwrap();
    assert!(lines.lines().count() > 1000, "the history holds every operation");
    let _ = std::fs::remove_file(&history);
    let _ = std::fs::remove_dir_all(format!("{}.logs", history.display()));
}

/// A run that fails while its workload threads still run removes its namespaces and bridge all
/// the same (they were once left behind: the lab lived in an `Arc` the threads still held).
#[test]
fn a_failed_chaos_run_leaves_nothing_behind() {
    if let Some(why) = skip_reason("f") {
        eprintln!("SKIPPED a_failed_chaos_run_leaves_nothing_behind: {why} (CI runs it as root)");
        return;
    }
    let history = std::env::temp_dir().join(format!("chaos-abort-{}.jsonl", std::process::id()));
    let (out, tag) = run_chaos(&["--abort-after-start"], &history);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("aborted on purpose"), "{stderr}");
    assert_nothing_left(tag);
    let _ = std::fs::remove_file(&history);
    let _ = std::fs::remove_dir_all(format!("{}.logs", history.display()));
}
