//! `pulse`: the Mycorrizal command line.
//!
//! `pulse agent` runs one node with its admin API; `pulse demo` starts a local three-node
//! cluster and shows what the library does, step by step.
//!
//! Exit codes: 0 success; 1 not found; 2 usage, configuration or connection errors.

mod agent;
mod bench;
mod chaos;
mod client;
mod demo;
mod progress;

use std::time::Duration;

use client::Target;

use clap::{Parser, Subcommand};

/// Run, inspect and demonstrate Mycorrizal nodes.
#[derive(Debug, Parser)]
#[command(name = "pulse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node (and its admin HTTP API) until SIGINT or SIGTERM, then leave gracefully.
    Agent(Box<agent::AgentArgs>),
    /// Start a local three-node cluster, run a mixed workload, kill a node and show that no
    /// acknowledged write was lost, then bring it back and show it caught up.
    Demo(demo::DemoArgs),
    /// Benchmark the cache side by side with Redis, quick_cache and moka on this machine
    /// (starts what it needs on loopback; see docs/BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Chaos test: agents in network namespaces under crashes, pauses, partitions and loss;
    /// counts lost writes (needs root, iproute2, nftables). Exit 1 if anything was lost.
    Chaos(chaos::ChaosArgs),
    /// The cluster as a node sees it: members by state, readiness.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Every member: id, address, state, generation.
    Members {
        #[command(flatten)]
        target: Target,
    },
    /// Declared buckets, with this node's entries and bytes.
    Buckets {
        #[command(flatten)]
        target: Target,
    },
    /// Declare buckets.
    Bucket {
        #[command(subcommand)]
        command: BucketCommand,
    },
    /// Store VALUE under KEY in BUCKET.
    Set {
        bucket: String,
        key: String,
        value: String,
        /// Time to live (`10s`, `5m`); default: the bucket's.
        #[arg(long, value_parser = client::duration)]
        ttl: Option<Duration>,
        /// Replicas to wait for; default: the bucket's.
        #[arg(long, value_parser = ["one", "quorum", "all"])]
        consistency: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value of KEY in BUCKET; exit 1 when absent.
    Get {
        bucket: String,
        key: String,
        /// Replicas to ask; default: the bucket's.
        #[arg(long, value_parser = ["one", "quorum", "all"])]
        consistency: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY from BUCKET.
    Del {
        bucket: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print every event on TOPIC as it arrives (with --group: each event of the group once,
    /// acknowledged when printed) until interrupted.
    Subscribe {
        topic: String,
        /// Join this consumer group instead of receiving every event.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Publish PAYLOAD on TOPIC.
    Publish {
        topic: String,
        payload: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum BucketCommand {
    /// Declare a bucket cluster-wide (idempotent; a different configuration is refused).
    Create {
        #[command(flatten)]
        bucket: client::CreateBucket,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pulse: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Chaos(args) = cli.command {
        return match chaos::run(args) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("pulse chaos: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let (result, failure) = match cli.command {
        Command::Agent(args) => (runtime.block_on(agent::run(*args)), 2),
        Command::Demo(args) => (runtime.block_on(demo::run(args)), 1),
        Command::Bench(args) => (runtime.block_on(bench::run(args)), 2),
        client => {
            drop(runtime);
            return match run_client(client) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(f) => {
                    eprintln!("pulse: {}", f.message);
                    std::process::ExitCode::from(f.code)
                }
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulse: {e:#}");
            std::process::ExitCode::from(failure)
        }
    }
}

fn run_client(command: Command) -> Result<(), client::Failure> {
    match command {
        Command::Status { target } => client::status(&target),
        Command::Members { target } => client::members(&target),
        Command::Buckets { target } => client::buckets(&target),
        Command::Bucket { command: BucketCommand::Create { bucket, target } } => {
            client::create_bucket(&target, &bucket)
        }
        Command::Set { bucket, key, value, ttl, consistency, target } => {
            client::set(&target, &bucket, &key, &value, ttl, consistency.as_deref())
        }
        Command::Get { bucket, key, consistency, target } => {
            client::get(&target, &bucket, &key, consistency.as_deref())
        }
        Command::Del { bucket, key, target } => client::del(&target, &bucket, &key),
        Command::Publish { topic, payload, target } => client::publish(&target, &topic, &payload),
        Command::Subscribe { topic, group, target } => {
            client::subscribe(&target, &topic, group.as_deref())
        }
        Command::Agent(_) | Command::Demo(_) | Command::Bench(_) | Command::Chaos(_) => {
            unreachable!("handled by main")
        }
    }
}
