//! `tern-bench`: load benchmarks for tern, each run side by side against a reference broker.
//!
//! `tern-bench chat` is the 1:1 chat benchmark (see `chat.rs`); `tern-bench federation` runs the
//! same phases from phones on tern to XMPP clients on a real Prosody, over s2s
//! (`federation.rs`). Every load loop is bounded in message count and in time, and only ever
//! talks to loopback addresses.

mod brokers;
mod chat;
mod federation;
mod prosody;
mod proxy;
mod report;
mod xmpp;

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
    /// Phones on tern to XMPP clients on Prosody, over s2s: the same figures, and the phone's
    /// MQTT bytes against the XMPP client's c2s bytes for the same conversation.
    Federation(federation::FederationArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Chat(args) => runtime.block_on(chat::run(args)),
        Cmd::Federation(args) => runtime.block_on(federation::run(args)),
    }
}
