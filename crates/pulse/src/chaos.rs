//! `pulse chaos`: real `pulse agent` processes, each in its own network namespace on a bridge
//! the harness creates, a client workload against their admin APIs, and faults applied on a
//! schedule: `kill -9` and restart, `SIGSTOP`/`SIGCONT`, nftables partitions (halves, a lone
//! node, one-way, a bridge node between two sides that cannot hear each other), a node
//! restarted with its wall clock skewed within and beyond the allowed drift, and random packet
//! loss (`numgen random`) for the whole run. Afterwards every fault is healed and a read at
//! `All` of every key written counts what was lost; the replicas are compared record by record
//! until they agree; every event acknowledged to a publisher must have reached the consumer
//! group.
//!
//! `--mode soak` applies no faults: steady load over a fixed key space for `--soak-minutes`,
//! sampling each agent's resident memory, then the same checks.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Only namespaces, links and addresses the
//! harness creates are touched (`10.231.x.0/24`, names starting `mcz`), and they are removed
//! when it ends, also when it fails. The history of every operation and fault is written as
//! JSON lines to `--history`, and each agent's log to `<history>.logs/`, so a failure can be
//! investigated.
//!
//! Exit code 0 when every "must be 0" figure is 0 (acknowledged writes lost, writes reported
//! failed that are present, resurrected deletes, diverging replicas, acknowledged events lost,
//! `down` verdicts about reachable nodes), else 1; 2 when the harness cannot run.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering::Relaxed},
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
    /// Two cycles of every fault, under 5 minutes (what CI runs).
    Short,
    /// 8 cycles: 32 partition/heal cycles (8 each of halves, lone node, one-way, bridge),
    /// 8 crashes, 8 pauses, 8 clock skews (4 within the drift, 4 beyond), then two minutes
    /// without faults.
    Long,
    /// No faults: steady load over a fixed key space for `--soak-minutes`, reporting each
    /// agent's memory growth.
    Soak,
}

/// How long each phase lasts in a mode.
struct Timing {
    cycles: u32,
    /// A partition or a skewed clock.
    fault: Duration,
    /// Each fault-free window in which `down` verdicts are counted as false.
    quiet: Duration,
    /// The fault-free stretch at the end (the whole soak).
    tail: Duration,
}

impl Timing {
    fn of(args: &ChaosArgs) -> Timing {
        match args.mode {
            Mode::Short => Timing { cycles: 2, fault: secs(7), quiet: secs(3), tail: secs(10) },
            Mode::Long => Timing { cycles: 8, fault: secs(10), quiet: secs(5), tail: secs(120) },
            Mode::Soak => Timing {
                cycles: 0,
                fault: secs(0),
                quiet: secs(0),
                tail: secs(args.soak_minutes * 60),
            },
        }
    }
}

/// Keys per writer in soak mode (overwritten again and again, so memory should level off).
const SOAK_KEYS: u64 = 6_250;
/// Writer threads (each owns its keys; with loss on every link a write often waits for a TCP
/// retransmission, so throughput comes from concurrency).
const WRITERS: u64 = 16;
/// Within the drift the nodes accept (5 s by default): versions from the future are adopted.
const SKEW_WITHIN_MS: i64 = 3_000;
/// Beyond it: the node's datagrams and versions are refused.
const SKEW_BEYOND_MS: i64 = 30_000;

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
    /// Packets lost at random between nodes for the whole run, in percent (0 to 50).
    #[arg(long, default_value_t = 10)]
    loss: u8,
    /// Length of `--mode soak`, in minutes.
    #[arg(long, default_value_t = 30)]
    soak_minutes: u64,
    /// Fails on purpose once the workload runs (tests that a failed run cleans up).
    #[arg(long, hide = true)]
    abort_after_start: bool,
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

/// The namespaces, bridge and veth links of one run (removed by its [`Teardown`]).
struct Lab {
    tag: String,
    subnet: u8,
    nodes: u8,
    bridge: String,
    /// The loss every node applies while no fault is on, in percent (kept across heals).
    loss: AtomicU8,
}

impl Lab {
    /// Creates the lab; the teardown removes it when dropped, also after a partial creation.
    fn create(nodes: u8) -> anyhow::Result<(Lab, Teardown)> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let lab = Lab {
            subnet: (pid % 200 + 20) as u8,
            nodes,
            bridge: format!("mczb{tag}"),
            tag,
            loss: AtomicU8::new(0),
        };
        let teardown = Teardown {
            namespaces: (1..=nodes).map(|i| lab.ns(i)).collect(),
            bridge: lab.bridge.clone(),
        };
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
        Ok((lab, teardown))
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
        // Inserted, so it comes before the loss rule.
        self.nft(i, &format!("insert rule inet chaos input ip saddr {{ {} }} drop", ips.join(", ")))
    }

    /// Every node in `to` stops hearing every node in `from` (one way).
    fn cut(&self, to: &[u8], from: &[u8]) -> anyhow::Result<()> {
        for &i in to {
            self.drop_from(i, from)?;
        }
        Ok(())
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

    /// Lifts every partition; the run's loss stays.
    fn heal(&self) -> anyhow::Result<()> {
        let loss = self.loss.load(Relaxed);
        for i in 1..=self.nodes {
            self.nft(i, "flush chain inet chaos input")?;
            if loss > 0 {
                self.lose(i, loss)?;
            }
        }
        Ok(())
    }

    /// Sets the run's loss (0: none) on every node.
    fn set_loss(&self, percent: u8) -> anyhow::Result<()> {
        self.loss.store(percent, Relaxed);
        self.heal()
    }
}

/// Removes a run's namespaces and bridge when dropped. It lives in `run`'s frame, not in the
/// [`Lab`] the workload threads share: a run that fails while they still hold the lab (they
/// end with the process) must clean up all the same. Found when a failed run left its
/// namespaces behind.
struct Teardown {
    namespaces: Vec<String>,
    bridge: String,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = sh(&["ip", "netns", "del", ns]);
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
        self.start_skewed(lab, i, 0)
    }

    /// Starts agent `i` with its wall clock `offset_ms` off.
    fn start_skewed(&mut self, lab: &Lab, i: u8, offset_ms: i64) -> anyhow::Result<()> {
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
            .arg(format!("--clock-offset-ms={offset_ms}"))
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

    /// Resident memory of agent `i` in bytes (`ip netns exec` execs the agent: same pid).
    fn rss(&self, i: u8) -> Option<u64> {
        let pid = self.children[usize::from(i)].as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        Some(kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
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

/// What one write, delete or publish came to.
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

/// One operation on a key: a write of `value` (unique in the run) or a delete.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    value: Option<String>,
    outcome: Outcome,
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

/// What the checker makes of one key: the operations on it in order (one writer per key) and
/// what a read at `All` found after the run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Verdicts {
    lost: u64,
    failed_present: u64,
    resurrected: u64,
    indeterminate_present: u64,
}

fn judge(ops: &[&Op], found: Option<&str>) -> Verdicts {
    let mut v = Verdicts::default();
    let last_ok = ops.iter().rposition(|o| o.outcome == Outcome::Ok);
    // What may be there: the last acknowledged operation's result (nothing if none was
    // acknowledged), or that of any indeterminate operation after it.
    let acknowledged = last_ok.map(|i| ops[i].value.as_deref());
    let after = &ops[last_ok.map_or(0, |i| i + 1)..];
    if acknowledged.unwrap_or(None) == found {
        return v;
    }
    if after.iter().any(|o| o.outcome == Outcome::Unknown && o.value.as_deref() == found) {
        v.indeterminate_present = u64::from(found.is_some());
        return v;
    }
    let is_failed_write =
        |o: &&&Op| o.outcome == Outcome::Failed && o.value.is_some() && o.value.as_deref() == found;
    if found.is_some() && ops.iter().any(|o| is_failed_write(&o)) {
        v.failed_present = 1;
    } else if acknowledged == Some(None) {
        v.resurrected = 1; // deleted for sure, and an older value is back
    } else {
        v.lost = 1;
    }
    v
}

/// Figures of the event workload.
#[derive(Debug, Default)]
struct EventFigures {
    published: u64,
    acknowledged: u64,
    lost: u64,
    duplicates: u64,
    unacknowledged_delivered: u64,
}

/// The consumer group's members: one streaming connection per node in `members`, reconnected
/// when it breaks; counts how often each payload arrived.
fn follow_group(
    lab: Arc<Lab>,
    node: u8,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Relaxed) {
            let _ = follow_once(&lab, node, &stop, &seen);
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn follow_once(
    lab: &Lab,
    node: u8,
    stop: &AtomicBool,
    seen: &Mutex<HashMap<String, u32>>,
) -> std::io::Result<()> {
    let addr = admin(lab, node);
    let mut s = TcpStream::connect_timeout(&addr, secs(2))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let head = format!(
        "GET /v1/events/chaos/stream?group=chaos HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    let mut r = std::io::BufReader::new(s);
    let mut line = Vec::new();
    // Chunk-size lines and headers are skipped; each event is one JSON line in its own chunk.
    while !stop.load(Relaxed) {
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                if line.starts_with(b"{")
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line)
                    && let Some(p) = v["payload"].as_str()
                {
                    *lock(seen).entry(p.to_owned()).or_default() += 1;
                }
                line.clear();
            }
            // A read timeout (a paused node, no events): keep what was read and go on.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The faults of one run and what they showed.
struct Nemesis {
    lab: Arc<Lab>,
    agents: Agents,
    history: Arc<History>,
    timing: Timing,
    counts: BTreeMap<&'static str, u32>,
    detections: Vec<Duration>,
    /// `down` verdicts issued while no fault was on (every node reachable, only the loss).
    false_downs: u64,
    quiet: Duration,
    /// Fault-free windows that began with some member not seeing another alive after 90 s.
    unsettled: u64,
    last_heal: Instant,
}

impl Nemesis {
    fn all(&self) -> Vec<u8> {
        (1..=self.lab.nodes).collect()
    }

    fn fault(&mut self, name: &'static str, detail: serde_json::Value) {
        println!("pulse chaos: {name} {detail}");
        self.history.record(serde_json::json!({ "fault": name, "detail": detail }));
        *self.counts.entry(name).or_default() += 1;
    }

    fn healed(&mut self) -> anyhow::Result<()> {
        self.lab.heal()?;
        self.last_heal = Instant::now();
        self.history.record(serde_json::json!({ "fault": "heal" }));
        Ok(())
    }

    /// `kill -9`, time until a witness says `down`, restart.
    fn crash(&mut self, victim: u8) -> anyhow::Result<()> {
        self.fault("crash", serde_json::json!({ "node": victim }));
        let killed = Instant::now();
        self.agents.crash(victim);
        let witness = if victim == 1 { 2 } else { 1 };
        let lab = &self.lab;
        let detected =
            wait_for(secs(60), || member_state(lab, witness, victim).as_deref() == Some("down"));
        ensure!(detected, "n{witness} never declared the crashed n{victim} down");
        self.detections.push(killed.elapsed());
        self.history.record(
            serde_json::json!({ "detected_ms": killed.elapsed().as_millis() as u64, "node": victim }),
        );
        self.agents.start(&self.lab, victim)?;
        wait_ready(&self.lab, &[victim], secs(60))?;
        self.last_heal = Instant::now();
        Ok(())
    }

    /// `SIGSTOP` for longer than the failure detector's bound, then `SIGCONT`.
    fn pause(&mut self, victim: u8) -> anyhow::Result<()> {
        self.fault("pause", serde_json::json!({ "node": victim }));
        self.agents.signal(victim, "-STOP");
        std::thread::sleep(secs(8));
        self.agents.signal(victim, "-CONT");
        self.last_heal = Instant::now();
        wait_ready(&self.lab, &[victim], secs(60))
    }

    /// Applies `cuts` (each: these nodes stop hearing those), waits, heals.
    fn partition(
        &mut self,
        name: &'static str,
        detail: serde_json::Value,
        cuts: &[(Vec<u8>, Vec<u8>)],
    ) -> anyhow::Result<()> {
        self.fault(name, detail);
        for (to, from) in cuts {
            self.lab.cut(to, from)?;
        }
        std::thread::sleep(self.timing.fault);
        self.healed()
    }

    /// Restarts `victim` with its clock `offset_ms` off, lets the workload run, restarts it
    /// with the right time. Within the drift it must work normally; beyond it the others
    /// refuse it (it may never become ready) and nothing it acknowledged may be lost.
    fn skew(&mut self, victim: u8, offset_ms: i64) -> anyhow::Result<()> {
        let within = offset_ms.unsigned_abs() < 5_000;
        let name = if within { "clock-skew-within-drift" } else { "clock-skew-beyond-drift" };
        self.fault(name, serde_json::json!({ "node": victim, "offset_ms": offset_ms }));
        self.agents.crash(victim);
        self.agents.start_skewed(&self.lab, victim, offset_ms)?;
        if within {
            wait_ready(&self.lab, &[victim], secs(60))?;
        }
        std::thread::sleep(self.timing.fault);
        self.agents.crash(victim);
        self.agents.start(&self.lab, victim)?;
        wait_ready(&self.lab, &[victim], secs(60))?;
        self.last_heal = Instant::now();
        Ok(())
    }

    /// Waits until every node sees every node alive, then for `d` counts `down` verdicts: with
    /// no fault on, each is false.
    fn quiet(&mut self, d: Duration) -> anyhow::Result<()> {
        let all = self.all();
        let lab = &self.lab;
        let settled = wait_for(secs(90), || {
            all.iter()
                .all(|&i| all.iter().all(|&j| member_state(lab, i, j).as_deref() == Some("alive")))
        });
        if !settled {
            let views: Vec<String> = all
                .iter()
                .map(|&i| {
                    let states: Vec<String> = all
                        .iter()
                        .map(|&j| format!("n{j}={}", member_state(lab, i, j).unwrap_or_default()))
                        .collect();
                    format!("n{i} sees {}", states.join(" "))
                })
                .collect();
            // Recorded and counted, and the run goes on: the views are in the history.
            println!(
                "pulse chaos: members not all alive to each other after 90 s: {}",
                views.join("; ")
            );
            self.history.record(serde_json::json!({ "check": "not-settled", "views": views }));
            self.unsettled += 1;
            return Ok(());
        }
        let before = down_verdicts(lab, &all);
        std::thread::sleep(d);
        let after = down_verdicts(lab, &all);
        let downs = after.saturating_sub(before);
        if downs > 0 {
            self.history.record(serde_json::json!({ "check": "false-down", "verdicts": downs }));
        }
        self.false_downs += downs;
        self.quiet += d;
        Ok(())
    }
}

/// Runs the harness.
pub fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    if let Some(why) = unavailable() {
        bail!("pulse chaos cannot run here: {why}");
    }
    ensure!((3..=9).contains(&args.nodes), "--nodes must be 3 to 9");
    ensure!(args.loss <= 50, "--loss must be 0 to 50 (percent)");
    ensure!((1..=24 * 60).contains(&args.soak_minutes), "--soak-minutes must be 1 to 1440");
    let timing = Timing::of(&args);
    let soak = args.mode == Mode::Soak;
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
    let (lab, _teardown) = Lab::create(args.nodes).context("creating the namespaces and bridge")?;
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
    let bucket = br#"{"name":"chaos","replicas":3,"max_entries":2000000}"#;
    let r = client::request(admin(&lab, 1), "POST", "/v1/buckets", TOKEN, bucket, secs(10))?;
    ensure!(r.status == 200, "declaring the bucket: HTTP {}", r.status);
    wait_ready(&lab, &all, Duration::from_secs(30))?;
    lab.set_loss(args.loss)?;
    history.record(
        serde_json::json!({ "fault": "loss", "percent": args.loss, "for": "the whole run" }),
    );
    let lab = Arc::new(lab);

    // The consumer group's members on the first half of the nodes, publishers on the others:
    // when a member's node dies its publisher survives to deliver again, and the other way
    // round (at least once holds while one of the two survives).
    let stop_events = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let members: Vec<u8> = (1..=args.nodes / 2).collect();
    let publishers: Vec<u8> = (args.nodes / 2 + 1..=args.nodes).collect();
    let followers: Vec<_> = members
        .iter()
        .map(|&m| follow_group(lab.clone(), m, stop_events.clone(), seen.clone()))
        .collect();
    // Every node must know of the group before the first publish.
    let group_known = wait_for(secs(30), || {
        let probe = format!("probe-{}", std::process::id());
        let ok = publishers.iter().all(|&p| {
            client::request(
                admin(&lab, p),
                "POST",
                "/v1/events/chaos",
                TOKEN,
                probe.as_bytes(),
                secs(3),
            )
            .is_ok_and(|a| a.status == 200)
        });
        ok && lock(&seen).contains_key(&probe)
    });
    ensure!(group_known, "the consumer group's members were not reachable within 30 s");
    println!(
        "pulse chaos: {} agents in namespaces on {}, {} % loss; workload starting",
        args.nodes, lab.bridge, args.loss
    );

    // The workload: writers on every node, Quorum and All alternating, every tenth
    // acknowledged write deleted; unique keys, or in soak mode a fixed key space overwritten.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (lab, stop, history) = (lab.clone(), stop.clone(), history.clone());
        let mut rng = SplitMix64::new(args.seed ^ ((w + 1) * 0x9E37_79B9));
        writers.push(std::thread::spawn(move || {
            let mut ops = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Relaxed) {
                let node = 1 + (rng.next_u64() % u64::from(lab.nodes)) as u8;
                let consistency = if seq.is_multiple_of(2) { "quorum" } else { "all" };
                let key = if soak { format!("w{w}-{}", seq % SOAK_KEYS) } else { format!("w{w}-{seq}") };
                let value = format!("v{w}-{seq}");
                let path = format!("/v1/cache/chaos/{key}?consistency={consistency}");
                let r = client::request(admin(&lab, node), "PUT", &path, TOKEN, value.as_bytes(), secs(3));
                let outcome = classify(&r);
                history.record(serde_json::json!({
                    "op": "write", "key": key, "value": value, "node": node, "consistency": consistency,
                    "outcome": format!("{outcome:?}"), "status": r.as_ref().map(|a| a.status).unwrap_or(0),
                }));
                let delete = outcome == Outcome::Ok && seq % 10 == 9;
                ops.push(Op { key: key.clone(), value: Some(value), outcome });
                if delete {
                    let path = format!("/v1/cache/chaos/{key}");
                    let r = client::request(admin(&lab, node), "DELETE", &path, TOKEN, b"", secs(3));
                    let outcome = classify(&r);
                    history.record(serde_json::json!({
                        "op": "delete", "key": key, "node": node, "outcome": format!("{outcome:?}"),
                    }));
                    ops.push(Op { key, value: None, outcome });
                }
                if outcome != Outcome::Ok {
                    // The node is down, paused or cut off: do not spin on it.
                    std::thread::sleep(Duration::from_millis(50));
                }
                seq += 1;
            }
            ops
        }));
    }
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publishing: Vec<_> = (0..2u32)
        .map(|p| {
            let (lab, stop, history) = (lab.clone(), stop_publishing.clone(), history.clone());
            let publishers = publishers.clone();
            std::thread::spawn(move || {
                let mut sent: Vec<(String, Outcome)> = Vec::new();
                let mut seq = 0usize;
                while !stop.load(Relaxed) {
                    let node = publishers[(seq + p as usize) % publishers.len()];
                    let payload = format!("e{p}-{seq}");
                    let r = client::request(admin(&lab, node), "POST", "/v1/events/chaos", TOKEN, payload.as_bytes(), secs(3));
                    let outcome = classify(&r);
                    history.record(serde_json::json!({
                        "op": "publish", "payload": payload, "node": node, "outcome": format!("{outcome:?}"),
                    }));
                    sent.push((payload, outcome));
                    // A steady trickle beside the cache workload.
                    std::thread::sleep(Duration::from_millis(if outcome == Outcome::Ok { 10 } else { 100 }));
                    seq += 1;
                }
                sent
            })
        })
        .collect();

    if args.abort_after_start {
        bail!("aborted on purpose (--abort-after-start)");
    }

    // The faults.
    let mut rng = SplitMix64::new(args.seed);
    let mut nemesis = Nemesis {
        lab: lab.clone(),
        agents,
        history: history.clone(),
        counts: BTreeMap::new(),
        detections: Vec::new(),
        false_downs: 0,
        quiet: Duration::ZERO,
        unsettled: 0,
        last_heal: Instant::now(),
        timing,
    };
    let n = args.nodes;
    let quiet = nemesis.timing.quiet;
    for cycle in 0..nemesis.timing.cycles {
        let pick = |rng: &mut SplitMix64| 1 + (rng.next_u64() % u64::from(n)) as u8;
        history.record(serde_json::json!({ "cycle": cycle }));
        nemesis.crash(pick(&mut rng))?;
        nemesis.quiet(quiet)?;
        nemesis.pause(pick(&mut rng))?;
        nemesis.quiet(quiet)?;

        // Two halves.
        let split = 1 + (rng.next_u64() % u64::from(n - 1)) as u8;
        let (left, right): (Vec<u8>, Vec<u8>) = (1..=n).partition(|&i| i <= split);
        let detail = serde_json::json!({ "left": left, "right": right });
        nemesis.partition(
            "partition-halves",
            detail,
            &[(left.clone(), right.clone()), (right, left)],
        )?;
        nemesis.quiet(quiet)?;
        // One node alone.
        let lone = pick(&mut rng);
        let rest: Vec<u8> = (1..=n).filter(|&i| i != lone).collect();
        let detail = serde_json::json!({ "node": lone });
        nemesis.partition(
            "partition-lone",
            detail,
            &[(vec![lone], rest.clone()), (rest, vec![lone])],
        )?;
        nemesis.quiet(quiet)?;
        // One way: a node hears nobody, everybody hears it.
        let deaf = pick(&mut rng);
        let rest: Vec<u8> = (1..=n).filter(|&i| i != deaf).collect();
        let detail = serde_json::json!({ "deaf": deaf });
        nemesis.partition("partition-one-way", detail, &[(vec![deaf], rest)])?;
        nemesis.quiet(quiet)?;
        // A bridge: one node hears both sides, which cannot hear each other (two overlapping
        // majorities).
        let bridge = pick(&mut rng);
        let others: Vec<u8> = (1..=n).filter(|&i| i != bridge).collect();
        let (a, b) = others.split_at(others.len() / 2);
        let detail = serde_json::json!({ "bridge": bridge, "left": a, "right": b });
        nemesis.partition(
            "partition-bridge",
            detail,
            &[(a.to_vec(), b.to_vec()), (b.to_vec(), a.to_vec())],
        )?;
        nemesis.quiet(quiet)?;
        // A skewed clock: within the drift in even cycles, beyond it in odd ones (short mode:
        // one of each).
        let offset = if cycle % 2 == 0 { SKEW_WITHIN_MS } else { SKEW_BEYOND_MS };
        nemesis.skew(pick(&mut rng), offset)?;
        nemesis.quiet(quiet)?;
    }

    // The tail: no faults, only the loss (the whole soak in soak mode).
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); usize::from(n) + 1];
    if soak {
        // Warm up until every key has been written once, then sample every minute.
        std::thread::sleep(secs(180).min(nemesis.timing.tail / 4));
        let end = Instant::now()
            + nemesis.timing.tail.saturating_sub(secs(180).min(nemesis.timing.tail / 4));
        loop {
            for i in 1..=n {
                if let Some(b) = nemesis.agents.rss(i) {
                    rss[usize::from(i)].push(b);
                }
            }
            history.record(serde_json::json!({ "rss_bytes": (1..=n).map(|i| rss[usize::from(i)].last().copied()).collect::<Vec<_>>() }));
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            nemesis.quiet(left.min(secs(60)))?;
        }
    } else {
        nemesis.quiet(nemesis.timing.tail)?;
    }
    if !soak {
        // The last fault: two halves, healed with the loss lifted; the time to converge is
        // counted from here.
        let split = 1 + (rng.next_u64() % u64::from(n - 1)) as u8;
        let (left, right): (Vec<u8>, Vec<u8>) = (1..=n).partition(|&i| i <= split);
        let detail = serde_json::json!({ "left": left, "right": right, "last": true });
        nemesis.partition(
            "partition-halves",
            detail,
            &[(left.clone(), right.clone()), (right, left)],
        )?;
    }
    nemesis.fault("loss-lifted", serde_json::json!({}));
    lab.set_loss(0)?;
    nemesis.last_heal = Instant::now();

    // Stop the workload, then everything read at All and the replicas compared.
    stop.store(true, Relaxed);
    stop_publishing.store(true, Relaxed);
    let ops: Vec<Op> = writers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
    let sent: Vec<(String, Outcome)> =
        publishing.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect();
    wait_ready(&lab, &all, secs(120)).context("the cluster did not recover after the faults")?;
    let (divergent, diverged_at_first) = converge(&lab, &history, secs(240))?;
    let converged = nemesis.last_heal.elapsed();

    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in &ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let keys: Vec<&str> = by_key.keys().copied().collect();
    let found = read_every(&lab, &keys)?;
    let mut totals = Verdicts::default();
    for (key, found) in keys.iter().zip(&found) {
        let v = judge(&by_key[key], found.as_deref());
        for (check, count) in [
            ("lost", v.lost),
            ("failed-but-present", v.failed_present),
            ("resurrected", v.resurrected),
        ] {
            if count > 0 {
                history.record(serde_json::json!({ "check": check, "key": key, "found": found }));
            }
        }
        totals.lost += v.lost;
        totals.failed_present += v.failed_present;
        totals.resurrected += v.resurrected;
        totals.indeterminate_present += v.indeterminate_present;
    }

    // Events: every acknowledged one must have reached the group.
    let acked: Vec<&String> =
        sent.iter().filter(|(_, o)| *o == Outcome::Ok).map(|(p, _)| p).collect();
    let delivered = wait_for(secs(60), || {
        let seen = lock(&seen);
        acked.iter().all(|p| seen.contains_key(p.as_str()))
    });
    stop_events.store(true, Relaxed);
    for f in followers {
        let _ = f.join();
    }
    let events = {
        let seen = lock(&seen);
        let mut e = EventFigures {
            published: sent.len() as u64,
            acknowledged: acked.len() as u64,
            ..Default::default()
        };
        for (payload, outcome) in &sent {
            let times = seen.get(payload).copied().unwrap_or(0);
            e.duplicates += u64::from(times.saturating_sub(1));
            match outcome {
                Outcome::Ok if times == 0 => {
                    e.lost += 1;
                    history
                        .record(serde_json::json!({ "check": "event-lost", "payload": payload }));
                }
                Outcome::Ok => {}
                _ => e.unacknowledged_delivered += u64::from(times > 0),
            }
        }
        e
    };
    if !delivered {
        println!("pulse chaos: {} acknowledged events never arrived (60 s)", events.lost);
    }

    let writes = ops.iter().filter(|o| o.value.is_some());
    let count = |outcome: Outcome| writes.clone().filter(|o| o.outcome == outcome).count();
    let deletes_acked =
        ops.iter().filter(|o| o.value.is_none() && o.outcome == Outcome::Ok).count();
    let mut detections = nemesis.detections.clone();
    detections.sort();
    let q = |p: f64| {
        detections
            .get(((detections.len().max(1) - 1) as f64 * p) as usize)
            .map(Duration::as_secs_f64)
    };
    let memory: Vec<serde_json::Value> = (1..=n)
        .filter(|&i| !rss[usize::from(i)].is_empty())
        .map(|i| {
            let s = &rss[usize::from(i)];
            let (first, last) = (s[0], s[s.len() - 1]);
            serde_json::json!({
                "node": i, "first_mb": first as f64 / 1e6, "last_mb": last as f64 / 1e6,
                "max_mb": *s.iter().max().unwrap_or(&0) as f64 / 1e6,
                "growth_pct": (last as f64 - first as f64) / first.max(1) as f64 * 100.0,
                "samples": s.len(),
            })
        })
        .collect();
    let report = serde_json::json!({
        "mode": format!("{:?}", args.mode), "nodes": n, "seed": args.seed, "loss_percent": args.loss,
        "faults": nemesis.counts, "keys": keys.len(),
        "writes": writes.clone().count(), "acknowledged": count(Outcome::Ok), "failed": count(Outcome::Failed),
        "indeterminate": count(Outcome::Unknown), "indeterminate_present": totals.indeterminate_present,
        "deletes_acknowledged": deletes_acked,
        "lost_acknowledged_writes": totals.lost, "failed_but_present": totals.failed_present,
        "resurrected_deletes": totals.resurrected,
        "divergent_keys": divergent, "divergent_keys_at_first_comparison": diverged_at_first,
        "converged_after_last_heal_s": converged.as_secs_f64(),
        "false_down_verdicts": nemesis.false_downs,
        "unsettled_windows": nemesis.unsettled, "quiet_windows_s": nemesis.quiet.as_secs_f64(),
        "detection_s": { "p50": q(0.5), "p99": q(0.99), "samples": detections.len() },
        "events": {
            "published": events.published, "acknowledged": events.acknowledged,
            "lost_acknowledged": events.lost, "duplicates": events.duplicates,
            "unacknowledged_delivered": events.unacknowledged_delivered,
        },
        "memory": memory,
    });
    history.record(serde_json::json!({ "report": report }));
    let _ = lock(&history.file).flush();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(totals.lost == 0
        && totals.failed_present == 0
        && totals.resurrected == 0
        && divergent == 0
        && events.lost == 0
        && nemesis.false_downs == 0)
}

/// Compares every node's replica record by record until they agree (or `limit` passes): a key
/// must be held by no node or by exactly the replication factor's number of nodes, all with
/// the same version. Returns the keys that still disagree and those that did at first.
fn converge(lab: &Lab, history: &History, limit: Duration) -> anyhow::Result<(u64, u64)> {
    let start = Instant::now();
    let mut first = None;
    loop {
        let divergent = divergent_keys(lab)?;
        first.get_or_insert(divergent.len() as u64);
        if divergent.is_empty() || start.elapsed() > limit {
            for (key, holders) in divergent.iter().take(100) {
                history.record(
                    serde_json::json!({ "check": "divergent", "key": key, "holders": holders }),
                );
            }
            return Ok((divergent.len() as u64, first.unwrap_or(0)));
        }
        std::thread::sleep(secs(5));
    }
}

/// Which nodes hold a key, at which version.
type Holders = Vec<(u8, String)>;

/// Keys whose replicas disagree, with who holds which version.
fn divergent_keys(lab: &Lab) -> anyhow::Result<Vec<(String, Holders)>> {
    let mut held: HashMap<String, Holders> = HashMap::new();
    for i in 1..=lab.nodes {
        let a = client::request(
            admin(lab, i),
            "GET",
            "/v1/buckets/chaos/replica",
            TOKEN,
            b"",
            secs(60),
        )
        .with_context(|| format!("listing n{i}'s replica"))?;
        ensure!(a.status == 200, "listing n{i}'s replica: HTTP {}", a.status);
        for line in a.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).context("a replica line")?;
            let (Some(key), Some(version)) = (v["key"].as_str(), v["version"].as_str()) else {
                bail!("n{i}: a replica line without key or version: {v}");
            };
            held.entry(key.to_owned()).or_default().push((i, version.to_owned()));
        }
    }
    Ok(held
        .into_iter()
        .filter(|(_, h)| h.len() != 3 || h.iter().any(|(_, v)| *v != h[0].1))
        .collect())
}

/// Every key read at All by 8 readers: its value, or `None` when absent.
fn read_every(lab: &Arc<Lab>, keys: &[&str]) -> anyhow::Result<Vec<Option<String>>> {
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let lab = lab.clone();
            let mine: Vec<(usize, String)> = keys
                .iter()
                .enumerate()
                .skip(r)
                .step_by(8)
                .map(|(n, k)| (n, (*k).to_owned()))
                .collect();
            std::thread::spawn(move || {
                mine.into_iter()
                    .map(|(n, key)| {
                        let node = 1 + (n % usize::from(lab.nodes)) as u8;
                        read_all(&lab, node, &key).map(|v| (n, v))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
        })
        .collect();
    let mut found = vec![None; keys.len()];
    for r in readers {
        for (n, v) in r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?? {
            found[n] = v;
        }
    }
    Ok(found)
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

/// The value of `key` read at `All` (`None`: absent), retried while replicas are unreachable.
fn read_all(lab: &Lab, first: u8, key: &str) -> anyhow::Result<Option<String>> {
    let path = format!("/v1/cache/chaos/{key}?consistency=all");
    for attempt in 0..50u8 {
        let node = 1 + (first - 1 + attempt) % lab.nodes;
        match client::request(admin(lab, node), "GET", &path, TOKEN, b"", secs(5)) {
            Ok(a) if a.status == 200 => {
                return Ok(Some(String::from_utf8_lossy(&a.body).into_owned()));
            }
            Ok(a) if a.status == 404 => return Ok(None),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    bail!("{key}: no read at All succeeded after 50 attempts")
}

/// Locks, carrying on past a poisoned lock (a writer thread that panicked wrote whole lines).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(value: Option<&str>, outcome: Outcome) -> Op {
        Op { key: "k".into(), value: value.map(str::to_owned), outcome }
    }

    fn verdict(ops: &[Op], found: Option<&str>) -> Verdicts {
        judge(&ops.iter().collect::<Vec<_>>(), found)
    }

    #[test]
    fn the_checker_allows_the_last_acknowledged_result_or_a_later_indeterminate_one() {
        use Outcome::*;
        let fine = Verdicts::default();
        let written = [op(Some("v1"), Ok)];
        assert_eq!(verdict(&written, Some("v1")), fine);
        assert_eq!(verdict(&written, None), Verdicts { lost: 1, ..fine });
        let deleted = [op(Some("v1"), Ok), op(None, Ok)];
        assert_eq!(verdict(&deleted, None), fine);
        assert_eq!(verdict(&deleted, Some("v1")), Verdicts { resurrected: 1, ..fine });
        // Overwritten: the older value back is a lost write.
        let overwritten = [op(Some("v1"), Ok), op(Some("v2"), Ok)];
        assert_eq!(verdict(&overwritten, Some("v1")), Verdicts { lost: 1, ..fine });
        // An indeterminate write or delete after the last acknowledged one may have applied.
        let maybe = [op(Some("v1"), Ok), op(Some("v2"), Unknown), op(None, Unknown)];
        assert_eq!(verdict(&maybe, Some("v1")), fine);
        assert_eq!(verdict(&maybe, Some("v2")), Verdicts { indeterminate_present: 1, ..fine });
        assert_eq!(verdict(&maybe, None), fine);
        // An indeterminate write before an acknowledged one does not excuse losing the latter.
        let before = [op(Some("v1"), Unknown), op(Some("v2"), Ok)];
        assert_eq!(verdict(&before, Some("v1")), Verdicts { lost: 1, ..fine });
        // Nothing acknowledged: absent is fine; a failed write's value is not.
        let failed = [op(Some("v1"), Failed)];
        assert_eq!(verdict(&failed, None), fine);
        assert_eq!(verdict(&failed, Some("v1")), Verdicts { failed_present: 1, ..fine });
    }
}
