//! `tern-bench`: load benchmarks for tern, each run side by side against a reference broker.
//!
//! `tern-bench chat` is the 1:1 chat benchmark (see `chat.rs`); `tern-bench federation` runs the
//! same phases from phones on tern to XMPP clients on a real Prosody, over s2s
//! (`federation.rs`). `connect`, `idle`, `resume` and `fanout` are the session scenarios
//! (`sessions/`): many phones on raw MQTT connections, against mosquitto. Every load loop is
//! bounded in message count and in time, and only ever talks to loopback addresses.

mod brokers;
mod chat;
mod federation;
mod prosody;
mod proxy;
mod raw_mqtt;
mod report;
mod sessions;
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
    /// N phones connect and authenticate (tern: password, then token): connects/s, latency, failures.
    Connect(sessions::connect::ConnectArgs),
    /// N authenticated phones held idle: server memory per session, keepalive bytes per hour.
    Idle(sessions::idle::IdleArgs),
    /// Phones drop TCP without DISCONNECT, miss messages, come back: time and bytes until usable.
    Resume(sessions::resume::ResumeArgs),
    /// One sender to K recipients: deliveries/s and latency over all recipients.
    Fanout(sessions::fanout::FanoutArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Chat(args) => runtime.block_on(chat::run(args)),
        Cmd::Federation(args) => runtime.block_on(federation::run(args)),
        Cmd::Connect(args) => runtime.block_on(sessions::connect::run(args)),
        Cmd::Idle(args) => runtime.block_on(sessions::idle::run(args)),
        Cmd::Resume(args) => runtime.block_on(sessions::resume::run(args)),
        Cmd::Fanout(args) => runtime.block_on(sessions::fanout::run(args)),
    }
}
