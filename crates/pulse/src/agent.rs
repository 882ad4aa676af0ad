//! `pulse agent`: one standalone node with its admin API, configured from flags or
//! `MYCORRIZAL_*` environment variables, until SIGINT or SIGTERM (then it leaves gracefully).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::progress;
use mycorrizal::{
    NodeId,
    admin::{AdminConfig, AdminServer, AdminToken, Role},
    clock::{SkewedClock, SystemClock},
    cluster::{ClusterConfig, DnsSeeds, Node},
    security::{ClusterSecret, Trust},
};

/// Options of `pulse agent`. Each comes from, in order of precedence: its flag, the
/// environment variable named after it (`--node-id` from `MYCORRIZAL_NODE_ID`, ...), the TOML
/// file of `--config` (keys are the flag names: `node-id = "orders-0"`), a default.
#[derive(Debug, Default, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentArgs {
    /// A TOML file with any of these options (keys are the flag names; relative paths in it
    /// are relative to the file).
    #[arg(long, env = "MYCORRIZAL_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This node's id: a lowercase DNS name (`orders-0`, `10.0.3.7`). Required.
    #[arg(long, env = "MYCORRIZAL_NODE_ID")]
    node_id: Option<String>,
    /// Where to listen for the cluster (TCP streams and UDP gossip on the same port). Required.
    #[arg(long, env = "MYCORRIZAL_BIND")]
    bind: Option<SocketAddr>,
    /// The address peers reach this node at, if not `--bind` (behind NAT, in containers).
    #[arg(long, env = "MYCORRIZAL_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// The cluster's name; nodes of other clusters are refused. Default `mycorrizal`.
    #[arg(long, env = "MYCORRIZAL_CLUSTER")]
    cluster: Option<String>,
    /// Where the admin HTTP API listens (loopback unless `--admin-public`). Default
    /// `127.0.0.1:7947`.
    #[arg(long, env = "MYCORRIZAL_ADMIN")]
    admin: Option<SocketAddr>,
    /// Let the admin API listen on a non-loopback address.
    #[arg(long, env = "MYCORRIZAL_ADMIN_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    admin_public: Option<bool>,
    /// Seeds to join through, comma separated (`10.0.0.5:7946,10.0.0.6:7946`).
    #[arg(long, env = "MYCORRIZAL_SEEDS", value_delimiter = ',')]
    seeds: Vec<SocketAddr>,
    /// A DNS name whose A/AAAA records are the seeds (with `--dns-port`) or whose SRV records
    /// are (without it); looked up again every 30 s.
    #[arg(long, env = "MYCORRIZAL_DNS")]
    dns: Option<String>,
    /// The cluster port to use with `--dns` A/AAAA records.
    #[arg(long, env = "MYCORRIZAL_DNS_PORT")]
    dns_port: Option<u16>,
    /// A file holding the cluster secret (32+ random bytes, the same on every node; e.g. the
    /// output of `openssl rand -hex 32`). Required.
    #[arg(long, env = "MYCORRIZAL_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Files holding previous cluster secrets, still trusted during a rotation (comma
    /// separated): roll out the new secret here first, then as `--secret-file` with the old one
    /// here (docs/OPERATIONS.md).
    #[arg(long, env = "MYCORRIZAL_PREVIOUS_SECRET_FILES", value_delimiter = ',')]
    previous_secret_file: Vec<PathBuf>,
    /// A file of admin API tokens, one per line: `ROLE NAME TOKEN` or
    /// `ROLE NAME sha256:HEX` (ROLE is read, write or admin; `#` starts a comment). Without it
    /// the admin API answers only /health and /ready.
    #[arg(long, env = "MYCORRIZAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `lan` (one data centre) or `wan` (regions) timing presets. Default `lan`.
    #[arg(long, env = "MYCORRIZAL_PRESET")]
    preset: Option<String>,
    /// Log level: error, warn, info, debug or trace. Default: `RUST_LOG`, else info.
    #[arg(long, env = "MYCORRIZAL_LOG_LEVEL")]
    log_level: Option<String>,
    /// Fault injection: run this node's wall clock this many milliseconds ahead (negative:
    /// behind) of the host's, as a node with a skewed clock would (`pulse chaos` uses it).
    /// Beyond the allowed drift (5 s) the other nodes refuse its datagrams and versions.
    #[arg(long, allow_hyphen_values = true, hide = true)]
    clock_offset_ms: Option<i64>,
}

impl AgentArgs {
    /// Fills what flags and environment left unset from the `--config` file, if any.
    pub fn with_config_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut file: AgentArgs = toml::from_str(&text)
            .with_context(|| format!("the config file {} is refused", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let relative = |p: &mut PathBuf| *p = dir.join(&*p);
        file.secret_file.iter_mut().chain(&mut file.token_file).for_each(relative);
        file.previous_secret_file.iter_mut().for_each(relative);
        macro_rules! fill {
            ($($field:ident),*) => {$(
                if self.$field.is_none() { self.$field = file.$field.take(); }
            )*};
        }
        fill!(node_id, bind, advertise, cluster, admin, admin_public, dns, dns_port);
        fill!(secret_file, token_file, preset, log_level, clock_offset_ms);
        if self.seeds.is_empty() {
            self.seeds = file.seeds;
        }
        if self.previous_secret_file.is_empty() {
            self.previous_secret_file = file.previous_secret_file;
        }
        Ok(self)
    }

    /// The log level: `--log-level` (or its variable or key), else `RUST_LOG`, else info.
    pub fn log_level(&self) -> anyhow::Result<tracing_subscriber::filter::LevelFilter> {
        match &self.log_level {
            Some(l) => l.parse().map_err(|_| {
                anyhow::anyhow!("--log-level {l:?}: use error, warn, info, debug or trace")
            }),
            None => Ok(std::env::var("RUST_LOG")
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO)),
        }
    }
}

/// A required option: its flag, variable and key named when it is missing.
fn required<'a, T>(value: &'a Option<T>, flag: &str) -> anyhow::Result<&'a T> {
    value.as_ref().ok_or_else(|| {
        let var = format!("MYCORRIZAL_{}", flag.to_uppercase().replace('-', "_"));
        anyhow::anyhow!("--{flag} is required (or {var}, or `{flag} = ...` in the --config file)")
    })
}

/// Reads a token file (see `--token-file`).
pub fn read_tokens(path: &PathBuf) -> anyhow::Result<Vec<AdminToken>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [role, name, token] = fields[..] else {
            bail!("{}:{}: expected `ROLE NAME TOKEN`", path.display(), n + 1);
        };
        let role: Role = role.parse().with_context(|| format!("{}:{}", path.display(), n + 1))?;
        let token = match token.strip_prefix("sha256:") {
            Some(hex) => AdminToken::from_sha256_hex(name, hex, role),
            None => AdminToken::new(name, token, role),
        }
        .with_context(|| format!("{}:{}", path.display(), n + 1))?;
        tokens.push(token);
    }
    Ok(tokens)
}

/// Builds the node's configuration from the options (no I/O).
fn config(args: &AgentArgs) -> anyhow::Result<ClusterConfig> {
    let node_id = required(&args.node_id, "node-id")?;
    let bind = *required(&args.bind, "bind")?;
    let id = NodeId::new(node_id).with_context(|| format!("--node-id {node_id:?}"))?;
    let cluster = args.cluster.clone().unwrap_or_else(|| "mycorrizal".to_owned());
    let mut c = match args.preset.as_deref().unwrap_or("lan") {
        "lan" => ClusterConfig::lan(cluster, id, bind),
        "wan" => ClusterConfig::wan(cluster, id, bind),
        other => bail!("--preset {other:?}: use lan or wan"),
    };
    c.advertise = args.advertise;
    c.seeds = args.seeds.clone();
    c.dns = args.dns.as_ref().map(|name| DnsSeeds {
        name: name.clone(),
        port: args.dns_port,
        nameserver: None,
    });
    c.validate().context("invalid node configuration")?;
    Ok(c)
}

/// Runs the agent until SIGINT or SIGTERM. Errors before the node runs are configuration or
/// connection errors (the caller exits 2).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let args = args.with_config_file()?;
    let level = args.log_level()?;
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).try_init();
    let config = config(&args)?;
    let trust = Trust::ClusterSecret {
        primary: read_secret(required(&args.secret_file, "secret-file")?)?,
        previous: args.previous_secret_file.iter().map(read_secret).collect::<Result<_, _>>()?,
    };
    let tokens = match &args.token_file {
        Some(path) => read_tokens(path)?,
        None => Vec::new(),
    };
    let cluster = config.cluster.clone();
    let mut builder = Node::builder(config).trust(trust);
    if let Some(offset) = args.clock_offset_ms.filter(|&o| o != 0) {
        eprintln!("pulse agent: wall clock skewed by {offset} ms on purpose (--clock-offset-ms)");
        builder = builder.clock(Arc::new(SkewedClock::new(Arc::new(SystemClock), offset)));
    }
    let node = builder.start().await.context("starting the node")?;
    let admin_config = AdminConfig {
        bind: args.admin.unwrap_or(AdminConfig::default().bind),
        allow_non_loopback: args.admin_public.unwrap_or(false),
        tokens,
        ..AdminConfig::default()
    };
    let admin = match AdminServer::start(node.clone(), admin_config).await {
        Ok(a) => a,
        Err(e) => {
            node.shutdown(Duration::from_secs(2)).await;
            return Err(e).context("starting the admin API");
        }
    };
    println!(
        "pulse agent: node {} in cluster {cluster:?} on {} (gossip and streams), admin API on http://{}",
        node.id(),
        node.addr(),
        admin.addr()
    );
    let signalled = tokio::select! {
        _ = wait_until_ready(&node) => {
            println!("pulse agent: ready ({} members alive)", node.members().live().count());
            false
        }
        _ = wait_for_signal() => true,
    };
    if !signalled {
        wait_for_signal().await;
    }
    println!("pulse agent: stopping; handing data over and leaving the cluster");
    admin.stop(Duration::from_secs(2)).await;
    node.shutdown(Duration::from_secs(10)).await;
    println!("pulse agent: stopped");
    Ok(())
}

/// Waits until the node has joined and its cache holds what it owns (what `/ready` answers),
/// with a spinner on a terminal.
async fn wait_until_ready(node: &Node) {
    let spinner = progress::spinner("joining the cluster");
    loop {
        let joined = node.is_joined();
        if joined && node.cache().is_ready() {
            break;
        }
        spinner.set_message(if joined {
            "receiving the keys this node owns".to_owned()
        } else {
            format!("joining the cluster ({} members seen)", node.members().members.len())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spinner.finish_and_clear();
}

fn read_secret(path: &PathBuf) -> anyhow::Result<ClusterSecret> {
    let secret = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    ClusterSecret::new(secret.trim())
        .with_context(|| format!("the secret in {} is refused", path.display()))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
