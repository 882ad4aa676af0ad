//! `pulse chaos`: real `pulse agent` processes, each in its own network namespace on a bridge
//! the harness creates, a client workload against their admin APIs, and faults applied on a
//! schedule: `kill -9` and restart, `SIGSTOP`/`SIGCONT`, nftables partitions (halves, a lone
//! node) and random packet loss (`numgen random`). Afterwards every fault is healed, every node
//! restarted, and a read at `All` of every key written counts what was lost.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Only namespaces, links and addresses the
//! harness creates are touched (`10.231.x.0/24`, names starting `mcz`), and they are removed
//! when it ends, also when it fails. The history of every operation and fault is written as
//! JSON lines to `--history`, and each agent's log to `<history>.logs/`, so a failure can be
//! investigated.
//!
//! Exit code 0 when every "must be 0" figure is 0 (acknowledged writes lost, writes reported
//! failed that are present, resurrected deletes, false `down` verdicts under loss), else 1;
//! 2 when the harness cannot run.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use mycorrizal::core::rng::SplitMix64;

use crate::client;

const TOKEN: &str = "chaos-admin-token-0123456789abcdef";
const CLUSTER_PORT: u16 = 7946;
const ADMIN_PORT: u16 = 7947;

/// How long the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A few cycles of each fault, under 5 minutes (what CI runs).
    Short,
    /// 15 cycles: 30 partition/heal cycles (15 halves, 15 lone node), 15 crashes, 15 pauses,
    /// and two minutes of loss.
    Long,
}

/// Options of `pulse chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// `short` (CI) or `long`.
    #[arg(long, value_enum, default_value = "short")]
    mode: Mode,
    /// Nodes (namespaces, agents).
    #[arg(long, default_value_t = 5)]
    nodes: u8,
    /// Where to write the history (JSON lines).
    #[arg(long, default_value = "chaos-history.jsonl")]
    history: PathBuf,
    /// Seed of the workload and fault choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Why the harness cannot run here, if it cannot: root and the tools it needs.
pub fn unavailable() -> Option<String> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        return Some("needs root (network namespaces and nftables)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` not found (install {package})"));
        }
    }
    let probe = format!("mczprobe{}", std::process::id());
    let ok = sh(&["ip", "netns", "add", &probe]).is_ok();
    let _ = sh(&["ip", "netns", "del", &probe]);
    if !ok {
        return Some("cannot create network namespaces here".into());
    }
    None
}

/// Runs a command; its stderr in the error.
fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| args.join(" "))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The namespaces, bridge and veth links of one run; removed on drop.
struct Lab {
    tag: String,
    subnet: u8,
    nodes: u8,
    bridge: String,
}

impl Lab {
    fn create(nodes: u8) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let lab = Lab { subnet: (pid % 200 + 20) as u8, nodes, bridge: format!("mczb{tag}"), tag };
        sh(&["ip", "link", "add", &lab.bridge, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("{}/24", lab.host_ip()), "dev", &lab.bridge])?;
        sh(&["ip", "link", "set", &lab.bridge, "up"])?;
        for i in 1..=nodes {
            let (ns, veth) = (lab.ns(i), format!("mczv{}n{i}", lab.tag));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", &lab.bridge, "up"])?;
            let exec = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", &ns];
                all.extend_from_slice(args);
                sh(&all)
            };
            exec(&["ip", "addr", "add", &format!("{}/24", lab.ip(i)), "dev", "eth0"])?;
            exec(&["ip", "link", "set", "eth0", "up"])?;
            exec(&["ip", "link", "set", "lo", "up"])?;
            exec(&["nft", "add", "table", "inet", "chaos"])?;
            exec(&[
                "nft",
                "add chain inet chaos input { type filter hook input priority 0; policy accept; }",
            ])?;
        }
        Ok(lab)
    }

    fn ns(&self, i: u8) -> String {
        format!("mczn{}n{i}", self.tag)
    }

    fn ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 10 + i)
    }

    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    fn nft(&self, i: u8, rule: &str) -> anyhow::Result<()> {
        sh(&["ip", "netns", "exec", &self.ns(i), "nft", rule])
    }

    /// Node `i` drops every packet from the nodes in `from`.
    fn drop_from(&self, i: u8, from: &[u8]) -> anyhow::Result<()> {
        let ips: Vec<String> = from.iter().map(|&j| self.ip(j).to_string()).collect();
        self.nft(i, &format!("add rule inet chaos input ip saddr {{ {} }} drop", ips.join(", ")))
    }

    /// Node `i` drops `percent` % of the packets from the other nodes, at random.
    fn lose(&self, i: u8, percent: u8) -> anyhow::Result<()> {
        let others: Vec<String> =
            (1..=self.nodes).filter(|&j| j != i).map(|j| self.ip(j).to_string()).collect();
        self.nft(
            i,
            &format!(
                "add rule inet chaos input ip saddr {{ {} }} numgen random mod 100 < {percent} drop",
                others.join(", ")
            ),
        )
    }

    fn heal(&self) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            self.nft(i, "flush chain inet chaos input")?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

/// The agents, one per namespace.
struct Agents {
    exe: PathBuf,
    /// Secret and token files (removed at the end).
    dir: PathBuf,
    /// Each agent's stderr, kept beside the history.
    logs: PathBuf,
    children: Vec<Option<Child>>,
}

impl Agents {
    fn start(&mut self, lab: &Lab, i: u8) -> anyhow::Result<()> {
        let seeds: Vec<String> = (1..=lab.nodes)
            .filter(|&j| j != i)
            .map(|j| SocketAddr::from((lab.ip(j), CLUSTER_PORT)).to_string())
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("n{i}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(i)])
            .arg(&self.exe)
            .args(["agent", "--node-id", &format!("n{i}")])
            .args(["--bind", &SocketAddr::from((lab.ip(i), CLUSTER_PORT)).to_string()])
            .args(["--admin", &SocketAddr::from((lab.ip(i), ADMIN_PORT)).to_string()])
            .args(["--admin-public", "--seeds", &seeds.join(",")])
            .arg("--secret-file")
            .arg(self.dir.join("secret"))
            .arg("--token-file")
            .arg(self.dir.join("tokens"))
            .args(["--cluster", "chaos", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting pulse agent")?;
        self.children[usize::from(i)] = Some(child);
        Ok(())
    }

    /// `kill -9`.
    fn crash(&mut self, i: u8) {
        if let Some(mut c) = self.children[usize::from(i)].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: u8, signal: &str) {
        if let Some(c) = &self.children[usize::from(i)] {
            let _ = sh(&["kill", signal, &c.id().to_string()]);
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = sh(&["kill", "-CONT", &c.id().to_string()]);
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one write or delete came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Certainly not applied (503).
    Failed,
    /// May or may not have been applied (504, timeout, connection lost).
    Unknown,
}

/// The history: every operation and fault, as JSON lines, shared by the threads.
struct History {
    start: Instant,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl History {
    fn record(&self, event: serde_json::Value) {
        let mut line = serde_json::json!({ "t_ms": self.start.elapsed().as_millis() as u64 });
        if let (Some(line), Some(event)) = (line.as_object_mut(), event.as_object()) {
            line.extend(event.clone());
        }
        let mut f = lock(&self.file);
        let _ = writeln!(f, "{line}");
    }
}

/// A write the workload made, and what became of it.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    value: String,
    write: Outcome,
    /// The delete that followed, if any.
    delete: Option<Outcome>,
}

fn admin(lab: &Lab, i: u8) -> SocketAddr {
    SocketAddr::from((lab.ip(i), ADMIN_PORT))
}

fn classify(r: &std::io::Result<client::Answer>) -> Outcome {
    match r {
        Ok(a) if a.status == 200 => Outcome::Ok,
        Ok(a) if a.status == 503 => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// Runs the harness.
pub fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    if let Some(why) = unavailable() {
        bail!("pulse chaos cannot run here: {why}");
    }
    ensure!((3..=9).contains(&args.nodes), "--nodes must be 3 to 9");
    let exe = std::env::current_exe().context("locating the pulse binary")?;
    let dir = std::env::temp_dir().join(format!("pulse-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = mycorrizal::security::ClusterSecret::generate();
    std::fs::write(dir.join("secret"), format!("{secret}\n"))?;
    std::fs::write(dir.join("tokens"), format!("admin chaos {TOKEN}\n"))?;
    let history = Arc::new(History {
        start: Instant::now(),
        file: Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(&args.history)
                .with_context(|| format!("creating {}", args.history.display()))?,
        )),
    });
    let lab = Lab::create(args.nodes).context("creating the namespaces and bridge")?;
    let logs = PathBuf::from(format!("{}.logs", args.history.display()));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let mut agents =
        Agents { exe, dir, logs, children: (0..=args.nodes).map(|_| None).collect::<Vec<_>>() };
    for i in 1..=args.nodes {
        agents.start(&lab, i)?;
    }
    let all: Vec<u8> = (1..=args.nodes).collect();
    wait_ready(&lab, &all, Duration::from_secs(60)).context("the cluster did not form")?;
    let bucket = br#"{"name":"chaos","replicas":3,"max_entries":1000000}"#;
    let r = client::request(admin(&lab, 1), "POST", "/v1/buckets", TOKEN, bucket, secs(10))?;
    ensure!(r.status == 200, "declaring the bucket: HTTP {}", r.status);
    wait_ready(&lab, &all, Duration::from_secs(30))?;
    println!(
        "pulse chaos: {} agents in namespaces on {}; workload starting",
        args.nodes, lab.bridge
    );

    // The workload: writers on every node, unique keys, Quorum and All alternating, some
    // deletes of acknowledged writes.
    let stop = Arc::new(AtomicBool::new(false));
    let lab = Arc::new(lab);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (lab, stop, history) = (lab.clone(), stop.clone(), history.clone());
        let mut rng = SplitMix64::new(args.seed ^ ((w + 1) * 0x9E37_79B9));
        writers.push(std::thread::spawn(move || {
            let mut ops = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Relaxed) {
                let node = 1 + (rng.next_u64() % u64::from(lab.nodes)) as u8;
                let consistency = if seq.is_multiple_of(2) { "quorum" } else { "all" };
                let (key, value) = (format!("w{w}-{seq}"), format!("v{w}-{seq}"));
                let path = format!("/v1/cache/chaos/{key}?consistency={consistency}");
                let r = client::request(admin(&lab, node), "PUT", &path, TOKEN, value.as_bytes(), secs(3));
                let write = classify(&r);
                history.record(serde_json::json!({
                    "op": "write", "key": key, "node": node, "consistency": consistency,
                    "outcome": format!("{write:?}"), "status": r.as_ref().map(|a| a.status).unwrap_or(0),
                }));
                let mut op = Op { key, value, write, delete: None };
                if write == Outcome::Ok && seq % 10 == 9 {
                    let path = format!("/v1/cache/chaos/{}", op.key);
                    let r = client::request(admin(&lab, node), "DELETE", &path, TOKEN, b"", secs(3));
                    let outcome = classify(&r);
                    history.record(serde_json::json!({
                        "op": "delete", "key": op.key, "node": node,
                        "outcome": format!("{outcome:?}"),
                    }));
                    op.delete = Some(outcome);
                }
                if write != Outcome::Ok {
                    // The node is down, paused or cut off: do not spin on it.
                    std::thread::sleep(Duration::from_millis(50));
                }
                ops.push(op);
                seq += 1;
            }
            ops
        }));
    }

    // The faults.
    let mut rng = SplitMix64::new(args.seed);
    let cycles = match args.mode {
        Mode::Short => 2,
        Mode::Long => 15,
    };
    let mut detections: Vec<Duration> = Vec::new();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    let fault = |name: &str, detail: serde_json::Value| {
        println!("pulse chaos: {name} {detail}");
        history.record(serde_json::json!({ "fault": name, "detail": detail }));
    };
    for cycle in 0..cycles {
        let n = lab.nodes;
        let pick = |rng: &mut SplitMix64| 1 + (rng.next_u64() % u64::from(n)) as u8;
        // kill -9, time to detection, restart.
        let victim = pick(&mut rng);
        fault("crash", serde_json::json!({ "node": victim, "cycle": cycle }));
        let killed = Instant::now();
        agents.crash(victim);
        let witness = if victim == 1 { 2 } else { 1 };
        let detected =
            wait_for(secs(60), || member_state(&lab, witness, victim).as_deref() == Some("down"));
        ensure!(detected, "n{witness} never declared the crashed n{victim} down");
        detections.push(killed.elapsed());
        history.record(serde_json::json!({ "detected_ms": killed.elapsed().as_millis() as u64, "node": victim }));
        agents.start(&lab, victim)?;
        wait_ready(&lab, &[victim], secs(60))?;
        *counts.entry("crash").or_default() += 1;

        // SIGSTOP for longer than the failure detector's bound, then SIGCONT.
        let victim = pick(&mut rng);
        fault("pause", serde_json::json!({ "node": victim, "cycle": cycle }));
        agents.signal(victim, "-STOP");
        std::thread::sleep(secs(8));
        agents.signal(victim, "-CONT");
        wait_ready(&lab, &[victim], secs(60))?;
        *counts.entry("pause").or_default() += 1;

        // Partitions: two halves, then one node alone.
        let split = 1 + (rng.next_u64() % u64::from(n - 1)) as u8;
        let (left, right): (Vec<u8>, Vec<u8>) = (1..=n).partition(|&i| i <= split);
        fault("partition-halves", serde_json::json!({ "left": left, "right": right }));
        for &i in &left {
            lab.drop_from(i, &right)?;
        }
        for &i in &right {
            lab.drop_from(i, &left)?;
        }
        std::thread::sleep(secs(10));
        lab.heal()?;
        fault("heal", serde_json::json!({}));
        *counts.entry("partition-halves").or_default() += 1;
        std::thread::sleep(secs(3));

        let lone = pick(&mut rng);
        let rest: Vec<u8> = (1..=n).filter(|&i| i != lone).collect();
        fault("partition-lone", serde_json::json!({ "node": lone }));
        lab.drop_from(lone, &rest)?;
        for &i in &rest {
            lab.drop_from(i, &[lone])?;
        }
        std::thread::sleep(secs(10));
        lab.heal()?;
        fault("heal", serde_json::json!({}));
        *counts.entry("partition-lone").or_default() += 1;
        wait_ready(&lab, &all, secs(60))?;
    }

    // 10 % loss everywhere, nothing else: no node may be declared down.
    let downs_before = down_verdicts(&lab, &all);
    fault("loss", serde_json::json!({ "percent": 10 }));
    for i in 1..=lab.nodes {
        lab.lose(i, 10)?;
    }
    std::thread::sleep(match args.mode {
        Mode::Short => secs(20),
        Mode::Long => secs(120),
    });
    lab.heal()?;
    fault("heal", serde_json::json!({}));
    let false_downs = down_verdicts(&lab, &all).saturating_sub(downs_before);
    *counts.entry("loss").or_default() += 1;

    // Stop the workload; every node up and ready; then read everything at All.
    stop.store(true, Relaxed);
    let ops: Vec<Op> = writers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
    let healed = Instant::now();
    wait_ready(&lab, &all, secs(120)).context("the cluster did not recover after the faults")?;
    // Converged: every node ready and the last acknowledged writes readable at All.
    let recent: Vec<&Op> = ops.iter().filter(|o| o.write == Outcome::Ok).rev().take(200).collect();
    let converged = wait_for(secs(120), || {
        recent
            .iter()
            .all(|o| o.delete.is_some() || read_all(&lab, 1, &o.key, &o.value).unwrap_or(false))
    });
    ensure!(converged, "the last acknowledged writes were not readable at All within 120 s");
    let converged = healed.elapsed();
    // Every key, read at All by 8 readers.
    let present: Vec<bool> = {
        let chunks: Vec<Vec<(usize, Op)>> =
            (0..8).map(|r| ops.iter().cloned().enumerate().skip(r).step_by(8).collect()).collect();
        let readers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let lab = lab.clone();
                std::thread::spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(n, op)| {
                            let node = 1 + (n % usize::from(lab.nodes)) as u8;
                            read_all(&lab, node, &op.key, &op.value).map(|p| (n, p))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut present = vec![false; ops.len()];
        for r in readers {
            for (n, p) in r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?? {
                present[n] = p;
            }
        }
        present
    };
    let mut lost = 0;
    let mut failed_present = 0;
    let mut resurrected = 0;
    let mut unknown_present = 0;
    let mut unknown = 0;
    let mut deleted = 0;
    for (op, &present) in ops.iter().zip(&present) {
        let deleted_for_sure = op.delete == Some(Outcome::Ok);
        deleted += u32::from(deleted_for_sure);
        match op.write {
            Outcome::Ok if deleted_for_sure && present => {
                resurrected += 1;
                history.record(serde_json::json!({ "check": "resurrected", "key": op.key }));
            }
            Outcome::Ok if op.delete.is_none() && !present => {
                lost += 1;
                history.record(serde_json::json!({ "check": "lost", "key": op.key }));
            }
            Outcome::Failed if present => {
                failed_present += 1;
                history.record(serde_json::json!({ "check": "failed-but-present", "key": op.key }));
            }
            Outcome::Unknown => {
                unknown += 1;
                unknown_present += u32::from(present);
            }
            _ => {}
        }
    }
    let acked = ops.iter().filter(|o| o.write == Outcome::Ok).count();
    let failed = ops.iter().filter(|o| o.write == Outcome::Failed).count();
    detections.sort();
    let q = |p: f64| detections[((detections.len() - 1) as f64 * p) as usize].as_secs_f64();
    let report = serde_json::json!({
        "mode": format!("{:?}", args.mode), "nodes": lab.nodes, "seed": args.seed,
        "faults": counts, "writes": ops.len(), "acknowledged": acked, "failed": failed,
        "indeterminate": unknown, "indeterminate_present": unknown_present,
        "deletes_acknowledged": deleted,
        "lost_acknowledged_writes": lost, "failed_but_present": failed_present,
        "resurrected_deletes": resurrected, "false_down_verdicts_under_loss": false_downs,
        "converged_after_last_heal_s": converged.as_secs_f64(),
        "detection_s": { "p50": q(0.5), "p99": q(0.99), "samples": detections.len() },
    });
    history.record(serde_json::json!({ "report": report }));
    let _ = lock(&history.file).flush();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(lost == 0 && failed_present == 0 && resurrected == 0 && false_downs == 0)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Polls `done` every 100 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn wait_ready(lab: &Lab, nodes: &[u8], limit: Duration) -> anyhow::Result<()> {
    let ready = wait_for(limit, || {
        nodes.iter().all(|&i| {
            client::request(admin(lab, i), "GET", "/ready", TOKEN, b"", secs(2))
                .is_ok_and(|a| a.status == 200)
        })
    });
    ensure!(ready, "nodes {nodes:?} not ready within {limit:?}");
    Ok(())
}

/// `i`'s view of `of`'s state.
fn member_state(lab: &Lab, i: u8, of: u8) -> Option<String> {
    let a = client::request(admin(lab, i), "GET", "/v1/members", TOKEN, b"", secs(2)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    let members = v.as_array().or_else(|| v["members"].as_array())?;
    members
        .iter()
        .find(|m| m["id"] == format!("n{of}"))
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

/// Down verdicts issued so far, summed over `nodes` (from their metrics).
fn down_verdicts(lab: &Lab, nodes: &[u8]) -> u64 {
    nodes
        .iter()
        .filter_map(|&i| {
            client::request(admin(lab, i), "GET", "/metrics", TOKEN, b"", secs(5)).ok()
        })
        .filter_map(|a| {
            let text = String::from_utf8(a.body).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("mycorrizal_membership_down_verdicts_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .sum()
}

/// Whether `key` holds `value`, read at `All` (retried while replicas are still unreachable).
fn read_all(lab: &Lab, first: u8, key: &str, value: &str) -> anyhow::Result<bool> {
    let path = format!("/v1/cache/chaos/{key}?consistency=all");
    for attempt in 0..50u8 {
        let node = 1 + (first - 1 + attempt) % lab.nodes;
        match client::request(admin(lab, node), "GET", &path, TOKEN, b"", secs(5)) {
            Ok(a) if a.status == 200 => return Ok(a.body == value.as_bytes()),
            Ok(a) if a.status == 404 => return Ok(false),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    bail!("{key}: no read at All succeeded after 50 attempts")
}

/// Locks, carrying on past a poisoned lock (a writer thread that panicked wrote whole lines).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
