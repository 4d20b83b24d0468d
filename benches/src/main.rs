//! `tern-bench`: load benchmarks for tern, each run side by side against a reference broker.
//!
//! `tern-bench chat` is the 1:1 chat benchmark (see `chat.rs`). Every load loop is bounded in
//! message count and in time, and only ever talks to 127.0.0.1.

mod brokers;
mod chat;
mod proxy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern-bench", version, about = "Load benchmarks for tern, against mosquitto for reference")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// 1:1 chat between pairs of phones: wire bytes, throughput and latency, tern vs mosquitto.
    Chat(chat::ChatArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Chat(args) => runtime.block_on(chat::run(args)),
    }
}
