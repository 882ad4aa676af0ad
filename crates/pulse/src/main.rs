//! `pulse`: the Mycorrizal command line.
//!
//! `pulse agent` runs one node with its admin API; `pulse demo` starts a local three-node
//! cluster and shows what the library does, step by step.
//!
//! Exit codes: 0 success; 1 not found; 2 usage, configuration or connection errors.

mod agent;
mod demo;

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
    let (result, failure) = match cli.command {
        Command::Agent(args) => {
            init_logs();
            (runtime.block_on(agent::run(*args)), 2)
        }
        Command::Demo(args) => (runtime.block_on(demo::run(args)), 1),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulse: {e:#}");
            std::process::ExitCode::from(failure)
        }
    }
}

/// Logs to stderr at the level of `RUST_LOG` (`error`, `warn`, `info`, `debug`, `trace`;
/// default `info`).
fn init_logs() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).try_init();
}
