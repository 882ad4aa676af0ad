//! `pulse agent`: one standalone node with its admin API, configured from flags or
//! `MYCORRIZAL_*` environment variables, until SIGINT or SIGTERM (then it leaves gracefully).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use mycorrizal::{
    NodeId,
    admin::{AdminConfig, AdminServer, AdminToken, Role},
    cluster::{ClusterConfig, DnsSeeds, Node},
    security::{ClusterSecret, Trust},
};

/// Options of `pulse agent`. Every flag can also come from the environment variable named
/// after it (`--node-id` from `MYCORRIZAL_NODE_ID`, ...).
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// This node's id: a lowercase DNS name (`orders-0`, `10.0.3.7`).
    #[arg(long, env = "MYCORRIZAL_NODE_ID")]
    node_id: String,
    /// Where to listen for the cluster (TCP streams and UDP gossip on the same port).
    #[arg(long, env = "MYCORRIZAL_BIND")]
    bind: SocketAddr,
    /// The address peers reach this node at, if not `--bind` (behind NAT, in containers).
    #[arg(long, env = "MYCORRIZAL_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// The cluster's name; nodes of other clusters are refused.
    #[arg(long, env = "MYCORRIZAL_CLUSTER", default_value = "mycorrizal")]
    cluster: String,
    /// Where the admin HTTP API listens (loopback unless `--admin-public`).
    #[arg(long, env = "MYCORRIZAL_ADMIN", default_value = "127.0.0.1:7947")]
    admin: SocketAddr,
    /// Let the admin API listen on a non-loopback address.
    #[arg(long, env = "MYCORRIZAL_ADMIN_PUBLIC")]
    admin_public: bool,
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
    /// output of `openssl rand -hex 32`).
    #[arg(long, env = "MYCORRIZAL_SECRET_FILE")]
    secret_file: PathBuf,
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
    /// `lan` (one data centre) or `wan` (regions) timing presets.
    #[arg(long, env = "MYCORRIZAL_PRESET", default_value = "lan")]
    preset: String,
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
    let id = NodeId::new(&args.node_id).with_context(|| format!("--node-id {:?}", args.node_id))?;
    let mut c = match args.preset.as_str() {
        "lan" => ClusterConfig::lan(args.cluster.clone(), id, args.bind),
        "wan" => ClusterConfig::wan(args.cluster.clone(), id, args.bind),
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
    let config = config(&args)?;
    let trust = Trust::ClusterSecret {
        primary: read_secret(&args.secret_file)?,
        previous: args.previous_secret_file.iter().map(read_secret).collect::<Result<_, _>>()?,
    };
    let tokens = match &args.token_file {
        Some(path) => read_tokens(path)?,
        None => Vec::new(),
    };
    let node = Node::builder(config).trust(trust).start().await.context("starting the node")?;
    let admin_config = AdminConfig {
        bind: args.admin,
        allow_non_loopback: args.admin_public,
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
        "pulse agent: node {} in cluster {:?} on {} (gossip and streams), admin API on http://{}",
        node.id(),
        args.cluster,
        node.addr(),
        admin.addr()
    );
    wait_for_signal().await;
    println!("pulse agent: stopping; handing data over and leaving the cluster");
    admin.stop(Duration::from_secs(2)).await;
    node.shutdown(Duration::from_secs(10)).await;
    println!("pulse agent: stopped");
    Ok(())
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
