//! `pulse`: the Mycorrizal command line.
//!
//! `pulse demo` runs a local workload that shows what the library does, step by step.

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
    /// Run a local workload against a node's store and explain what happens: buckets, reads
    /// and writes, eviction, byte bounds, TTL expiry, deletes, per-bucket statistics.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}
