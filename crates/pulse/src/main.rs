//! `pulse`: the Mycorrizal command line.
//!
//! `pulse demo` starts a local three-node cluster and shows what the library does, step by step.

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
    /// Start a local three-node cluster, run a mixed workload, kill a node and show that no
    /// acknowledged write was lost, then bring it back and show it caught up.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}
