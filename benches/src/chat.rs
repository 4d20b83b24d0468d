//! The 1:1 chat benchmark.
//!
//! P pairs of phones; in each pair a sender sends chat messages to a recipient. The same
//! workload, with the same clients (the bench's own MQTT 3.1.1 client at QoS 1, `chat/mqtt.rs`)
//! and the same payload bytes, runs against
//!
//! * tern: the sender publishes `Up{id, chat{peer_ref, body}}` on `u`; the recipient receives the
//!   `Down{seq, id, chat{peer_ref, resource, body, ts}}` on `d` without subscribing. Each phone
//!   sends `Hello{peer_refs}` and puts its peer on its roster during the setup, as an app that
//!   already has its contacts does, so both name the other by its peer ref;
//! * mosquitto, raw pub/sub: the sender publishes the very same encoded `Up` (with ref 1) on
//!   `c/<pair>`; the recipient is subscribed to it at QoS 1.
//!
//! Three phases per broker, each with its own users and connections:
//!
//! * `wire`: every connection goes through a counting TCP proxy; bytes per delivered message,
//!   all four legs (sender PUBLISH and PUBACK, recipient PUBLISH and PUBACK), counted from after
//!   the connect/subscribe setup to after the last delivery;
//! * `throughput`: flat out, direct connections, at most `--inflight` unacknowledged PUBLISHes
//!   per sender;
//! * `latency`: direct connections, a fixed total rate spread evenly over the senders; the
//!   latency of a message is from just before the sender's `publish` call to the recipient's
//!   application getting it (the send time travels in the body).
//!
//! Every phase checks that each message arrived exactly once.
//!
//! With `--against prosody` the reference is XMPP c2s clients chatting through one Prosody
//! (one `<message/>` per chat message, no receipts: tern's phones send none here either).
//!
//! This file is the scenario (settings, phases, payloads); one phase is run by `chat/phase.rs`
//! (shared with `federation`), the per-connection tasks are in `chat/drivers.rs` and `xmpp/`,
//! the results and the table in `report.rs`.

pub(crate) mod drivers;
mod mqtt;
mod phase;

use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use serde::Serialize;
use tern_schemas::num_id;
use tern_schemas::v1::{up, Chat, Up};

use crate::brokers::{self, Endpoint};
use crate::prosody::{self, Prosody, ProsodyArgs};
use crate::report::{finish, round, BrokerResult, Report};
pub(crate) use phase::{run_phase, Kind, Recipients};

pub(crate) const PASSWORD: &str = "bench-pw";
pub(crate) const DEVICE: &str = "phone";
/// Chat body length; the body is the send time in microseconds, zero-padded.
pub(crate) const BODY_LEN: usize = 20;
/// How message ids are made, as the JSON settings say it.
const IDS: &str = "message k has id num_id::render(k + 1), base64url without leading zeros (docs/PROTOCOL.md \"Numeric ids\"); tern phones send it as num_id";
/// Time given to the last PUBACKs to cross the proxy before the counters are read.
pub(crate) const SETTLE: Duration = Duration::from_millis(150);

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// A tern already running (its users need the bench's password, `bench-pw`, and its
    /// domain must be --domain).
    #[command(flatten)]
    running: brokers::RunningTern,
    /// Reference broker run with the same workload, or `none`.
    #[arg(long, value_enum, default_value = "mosquitto")]
    against: Against,
    /// The mosquitto binary (Debian package `mosquitto`).
    #[arg(long, default_value = "mosquitto")]
    mosquitto_bin: PathBuf,
    /// With `--against prosody`.
    #[command(flatten)]
    prosody: ProsodyArgs,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results/chat.json")]
    json: PathBuf,
}

/// The workload's size and the tern under test, common to the scenarios.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The tern binary.
    #[arg(long, default_value = "target/release/tern")]
    pub(crate) tern_bin: PathBuf,
    /// Sender→recipient pairs [default: 10; --quick: 4].
    #[arg(long)]
    pub(crate) pairs: Option<usize>,
    /// Messages in the throughput phase, in total [default: 20000; --quick: 400].
    #[arg(long)]
    pub(crate) messages: Option<u64>,
    /// Total send rate of the latency phase, messages/s [default: 1000; --quick: 400;
    /// federation: 80, which also paces its wire and reverse phases].
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Messages in the latency phase, in total [default: 5000, federation 2000; --quick: 200].
    #[arg(long)]
    pub(crate) latency_messages: Option<u64>,
    /// Messages in the wire-bytes phase (and federation's reverse phase), in total
    /// [default: 2000, federation 1000; --quick: 200].
    #[arg(long)]
    pub(crate) wire_messages: Option<u64>,
    /// Unacknowledged QoS 1 PUBLISHes allowed per sender (XMPP senders with receipts: messages
    /// without a receipt).
    #[arg(long, default_value_t = 16)]
    pub(crate) inflight: u16,
    /// Time cap per phase, seconds (messages not delivered by then count as lost) [default: 60; --quick: 20].
    #[arg(long)]
    pub(crate) timeout: Option<u64>,
    /// Tiny sizes for a CI smoke test (a few hundred messages, a few seconds).
    #[arg(long)]
    pub(crate) quick: bool,
    /// tern's XMPP domain.
    #[arg(long, default_value = "bench.test")]
    pub(crate) domain: String,
    /// Scratch directory for tern's store and the brokers' logs [default: a new one in $TMPDIR, removed afterwards].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    pub(crate) keep_data: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Against {
    /// Raw MQTT pub/sub of the same payloads.
    Mosquitto,
    /// XMPP c2s clients chatting through one Prosody.
    Prosody,
    None,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) pairs: usize,
    pub(crate) wire_messages: u64,
    pub(crate) throughput_messages: u64,
    pub(crate) latency_messages: u64,
    pub(crate) latency_rate: f64,
    pub(crate) inflight_per_sender: u16,
    pub(crate) timeout_s: u64,
    pub(crate) body_bytes: usize,
    pub(crate) ids: &'static str,
    pub(crate) mqtt: &'static str,
    pub(crate) client: &'static str,
    /// The XMPP side, where there is one.
    pub(crate) xmpp: Option<&'static str>,
    /// What the sender's and the recipient's links are.
    pub(crate) sender_link: &'static str,
    pub(crate) recipient_link: &'static str,
    pub(crate) quick: bool,
}

impl Settings {
    pub(crate) fn from(a: &LoadArgs) -> anyhow::Result<Settings> {
        let q = a.quick;
        let s = Settings {
            pairs: a.pairs.unwrap_or(if q { 4 } else { 10 }),
            wire_messages: a.wire_messages.unwrap_or(if q { 200 } else { 2000 }),
            throughput_messages: a.messages.unwrap_or(if q { 400 } else { 20000 }),
            latency_messages: a.latency_messages.unwrap_or(if q { 200 } else { 5000 }),
            latency_rate: a.rate.unwrap_or(if q { 400.0 } else { 1000.0 }),
            inflight_per_sender: a.inflight,
            timeout_s: a.timeout.unwrap_or(if q { 20 } else { 60 }),
            body_bytes: BODY_LEN,
            ids: IDS,
            mqtt: "3.1.1, QoS 1",
            client: "tern-bench raw MQTT 3.1.1 (benches/src/chat/mqtt.rs)",
            xmpp: None,
            sender_link: "MQTT",
            recipient_link: "MQTT",
            quick: q,
        };
        anyhow::ensure!((1..=1000).contains(&s.pairs), "--pairs must be 1..=1000");
        anyhow::ensure!(s.inflight_per_sender >= 1, "--inflight must be at least 1");
        anyhow::ensure!(s.latency_rate > 0.0 && s.latency_rate <= 1e6, "--rate must be in (0, 1e6]");
        for (n, what) in [
            (s.wire_messages, "--wire-messages"),
            (s.throughput_messages, "--messages"),
            (s.latency_messages, "--latency-messages"),
        ] {
            anyhow::ensure!(
                n >= s.pairs as u64 && n <= 10_000_000,
                "{what} must be between --pairs and 10000000"
            );
        }
        anyhow::ensure!((1..=3600).contains(&s.timeout_s), "--timeout must be 1..=3600 s");
        Ok(s)
    }
}

/// One phase of the workload.
#[derive(Clone, Copy)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    /// Prefix of the phase's user names / client ids (a–z only).
    pub(crate) tag: &'static str,
    pub(crate) messages: u64,
    pub(crate) rate: Option<f64>,
    pub(crate) proxy: bool,
    /// Whether XMPP recipients answer with delivery receipts, and senders wait for them.
    pub(crate) receipts: bool,
}

pub(crate) fn phases(s: &Settings) -> [Phase; 3] {
    [
        Phase { name: "wire", tag: "w", messages: s.wire_messages, rate: None, proxy: true, receipts: true },
        Phase {
            name: "throughput",
            tag: "t",
            messages: s.throughput_messages,
            rate: None,
            proxy: false,
            receipts: true,
        },
        Phase {
            name: "latency",
            tag: "l",
            messages: s.latency_messages,
            rate: Some(s.latency_rate),
            proxy: false,
            receipts: true,
        },
    ]
}

/// A prefix for every user name of this run, set against a tern the operator runs: its store
/// outlives the run, and messages an interrupted earlier run left in the same users' inboxes
/// would count as this run's duplicates.
static RUN_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Gives this run's users names of their own (`x` and five letters from the clock).
fn set_run_prefix() -> &'static str {
    RUN_PREFIX.get_or_init(|| {
        let mut n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() / 1_000);
        let mut p = String::from("x");
        for _ in 0..5 {
            p.push((b'a' + (n % 26) as u8) as char);
            n /= 26;
        }
        p
    })
}

pub(crate) fn user_name(tag: &str, role: char, pair: usize) -> String {
    let prefix = RUN_PREFIX.get().map_or("", String::as_str);
    format!("{prefix}{tag}{role}{pair}")
}

/// The user names of every phase's pairs in `roles` (`s` senders, `r` recipients).
pub(crate) fn users(s: &Settings, roles: &[char]) -> Vec<String> {
    let mut names = Vec::new();
    for p in phases(s) {
        for i in 0..s.pairs {
            names.extend(roles.iter().map(|&role| user_name(p.tag, role, i)));
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Entry point

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut settings = Settings::from(&args.load)?;
    if args.against == Against::Prosody {
        settings.xmpp = Some("c2s plaintext, SASL PLAIN, no receipts (the reference)");
        (settings.sender_link, settings.recipient_link) = ("MQTT | c2s", "MQTT | c2s");
    }
    if args.running.addr.is_some() {
        eprintln!("tern-bench chat: this run's users are named {}…", set_run_prefix());
    }
    let scratch = Scratch::new(&args.load, "chat")?;
    let outcome = async {
        let tern = run_tern(&args, &settings, &scratch.dir).await?;
        let reference = match args.against {
            Against::Mosquitto => Some(run_mosquitto(&args, &settings, &scratch.dir).await?),
            Against::Prosody => Some(run_prosody(&args, &settings, &scratch.dir).await?),
            Against::None => None,
        };
        anyhow::Ok((tern, reference))
    }
    .await;
    let (tern, reference) = scratch.keep_on_error(outcome)?;
    let report = Report::new(
        "chat-1to1",
        settings,
        scratch.loadavg_before.clone(),
        tern,
        reference,
        vec![
            "bytes: MQTT bytes through a counting TCP proxy (no TCP/IP headers), all four legs, setup excluded",
            "tern acknowledges a PUBLISH only after an fsync (group commit); mosquitto here keeps everything in memory (persistence false)",
            "latency: from just before the sender's publish call to the recipient's application; client, proxy-less, same host",
            "broker CPU: user+system time of the broker process during the phase, from /proc",
            "prosody (--against prosody): XMPP c2s clients, plaintext, one <message/> per chat message, no receipts and no XEP-0198 acks (TCP is the only acknowledgement), so its senders are never held back by a window",
        ],
    );
    finish(&report, &args.json, scratch)
}

/// A run's scratch directory (tern's store, the servers' logs) and the machine's load before.
pub(crate) struct Scratch {
    pub(crate) dir: PathBuf,
    /// Made by us (removed after a clean run unless `--keep-data`).
    pub(crate) temporary: bool,
    pub(crate) keep: bool,
    pub(crate) scenario: &'static str,
    pub(crate) loadavg_before: String,
}

impl Scratch {
    /// Checks the tern binary and makes the directory.
    pub(crate) fn new(a: &LoadArgs, scenario: &'static str) -> anyhow::Result<Scratch> {
        let loadavg_before = loadavg();
        anyhow::ensure!(
            a.tern_bin.exists(),
            "{} not found; build it with `cargo build --release -p tern` or pass --tern-bin",
            a.tern_bin.display()
        );
        let (dir, temporary) = brokers::scratch_dir(a.data_dir.as_deref())?;
        eprintln!("tern-bench {scenario}: scratch dir {}", dir.display());
        Ok(Scratch { dir, temporary, keep: a.keep_data, scenario, loadavg_before })
    }

    /// Passes `outcome` on; on an error, says where the logs are.
    pub(crate) fn keep_on_error<T>(&self, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
        if outcome.is_err() {
            eprintln!("tern-bench {}: failed; logs are kept in {}", self.scenario, self.dir.display());
        }
        outcome
    }
}

async fn run_tern(args: &ChatArgs, s: &Settings, scratch: &std::path::Path) -> anyhow::Result<BrokerResult> {
    let load = &args.load;
    let dir = scratch.join("tern");
    let (started, server, admin) = match args.running.addr {
        Some(addr) => (None, Endpoint { addr, pid: args.running.pid }, args.running.admin_socket.clone()),
        None => {
            let b = brokers::start_tern(&load.tern_bin, &dir, &load.domain, None).await?;
            let (server, admin) = (b.endpoint(), Some(dir.join("admin.sock")));
            (Some(b), server, admin)
        }
    };
    let version = match &started {
        Some(b) => b.version.clone(),
        None => format!("{} (--tern-bin's)", brokers::version_of(&load.tern_bin)),
    };
    let pid = server.pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    eprintln!("tern-bench chat: {version} (pid {pid}) on {}", server.addr);
    let result = async {
        let names = users(s, &['s', 'r']);
        let t = std::time::Instant::now();
        let user_setup_s = match &admin {
            Some(sock) => {
                brokers::add_users_by_socket(sock, &names, PASSWORD, Default::default()).await?;
                let took = t.elapsed().as_secs_f64();
                eprintln!("tern-bench chat: {} users added in {took:.1} s", names.len());
                Some(took)
            }
            None => {
                eprintln!("tern-bench chat: no --admin-socket: assuming the {} users exist", names.len());
                None
            }
        };
        let mut out = BrokerResult { broker: "tern".into(), version, user_setup_s, ..Default::default() };
        for p in phases(s) {
            out.phases.push(run_phase(Kind::Tern, server, Recipients::Local, &load.domain, s, p).await?);
        }
        out.rss_kib_end = server.rss_kib();
        anyhow::Ok(out)
    }
    .await;
    if let Some(b) = started {
        b.stop().await;
    }
    result
}

async fn run_mosquitto(
    args: &ChatArgs,
    s: &Settings,
    scratch: &std::path::Path,
) -> anyhow::Result<BrokerResult> {
    let broker = brokers::start_mosquitto(&args.mosquitto_bin, &scratch.join("mosquitto")).await?;
    eprintln!("tern-bench chat: {} (pid {}) on {}", broker.version, broker.pid(), broker.addr);
    let result = async {
        let mut out = BrokerResult {
            broker: "mosquitto".into(),
            version: broker.version.clone(),
            ..Default::default()
        };
        for p in phases(s) {
            out.phases.push(
                run_phase(Kind::Mosquitto, broker.endpoint(), Recipients::Local, &args.load.domain, s, p)
                    .await?,
            );
        }
        out.rss_kib_end = broker.rss_kib();
        anyhow::Ok(out)
    }
    .await;
    broker.stop().await;
    result
}

/// The same phases between XMPP clients of one Prosody (c2s to c2s, on its own 127.0.0.x).
async fn run_prosody(
    args: &ChatArgs,
    s: &Settings,
    scratch: &std::path::Path,
) -> anyhow::Result<BrokerResult> {
    let ip = prosody::free_loopback_ip(101, &[prosody::C2S_PORT, prosody::S2S_PORT], &[]).await?;
    let server = Prosody::start(prosody::Options {
        bins: &args.prosody,
        dir: &scratch.join("prosody"),
        ip,
        hosts: &[],
    })
    .await?;
    eprintln!(
        "tern-bench chat: {} (pid {}) on {}",
        server.broker.version,
        server.broker.pid(),
        server.broker.addr
    );
    let result = async {
        let names = users(s, &['s', 'r']);
        let t = std::time::Instant::now();
        server.register(&names, PASSWORD).await?;
        let mut out = BrokerResult {
            broker: "prosody".into(),
            version: server.broker.version.clone(),
            user_setup_s: Some(round(t.elapsed().as_secs_f64(), 2)),
            ..Default::default()
        };
        for mut p in phases(s) {
            // tern's phones send no receipts in this scenario either.
            p.receipts = false;
            let phase = run_phase(
                Kind::Xmpp,
                server.broker.endpoint(),
                Recipients::Xmpp(&server),
                &server.domain,
                s,
                p,
            );
            out.phases.push(phase.await?);
        }
        out.rss_kib_end = server.broker.rss_kib();
        anyhow::Ok(out)
    }
    .await;
    server.broker.stop().await;
    result
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// The id of message `k` on every side: the string a phone's counter `k + 1` stands for.
pub(crate) fn message_id(k: u64) -> String {
    // k + 1 ≥ 1 always renders.
    num_id::render(k + 1).unwrap_or_default()
}

/// The message number of `id`, if it is one of [`message_id`]'s.
pub(crate) fn parse_message_id(id: &str) -> Option<u64> {
    num_id::parse(id).map(|n| n - 1)
}

/// The string id of a received envelope, whichever way it came.
pub(crate) fn id_of(mut id: String, mut num_id: u64) -> String {
    num_id::expand(&mut id, &mut num_id);
    id
}

pub(crate) fn chat_up(k: u64, peer: &str, sent_us: u64) -> Vec<u8> {
    Up {
        num_id: k + 1,
        body: Some(up::Body::Chat(Chat {
            peer: peer.to_owned(),
            body: format!("{sent_us:0BODY_LEN$}"),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `chat_up`, with the recipient named by its peer ref (docs/PROTOCOL.md "Peer refs"), as a
/// tern phone that has the recipient on its roster sends it.
pub(crate) fn chat_up_by_ref(k: u64, peer_ref: u32, sent_us: u64) -> Vec<u8> {
    Up {
        num_id: k + 1,
        body: Some(up::Body::Chat(Chat {
            peer_ref,
            body: format!("{sent_us:0BODY_LEN$}"),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for k in [0, 1, 63, 64, 4095, 123_456, 64u64.pow(6) - 1] {
            let id = message_id(k);
            assert_eq!(parse_message_id(&id), Some(k));
            assert_eq!(id_of(String::new(), k + 1), id);
        }
        assert_eq!(message_id(0), "B");
        assert_eq!(parse_message_id("AAA"), None);
        assert_eq!(parse_message_id("AAAAA!"), None);
    }

    #[test]
    fn payload_has_fixed_size_body() {
        // The numeric id grows with k, the body does not.
        let a = chat_up(0, "lr0@bench.test", 0);
        let b = chat_up(99, "lr0@bench.test", 123_456_789_012);
        assert_eq!(a.len(), b.len());
        let up = Up::decode(b.as_slice()).unwrap();
        assert_eq!(id_of(up.id, up.num_id), message_id(99));
        let Some(up::Body::Chat(c)) = up.body else { panic!() };
        assert_eq!(c.body.len(), BODY_LEN);
        assert_eq!(c.body.parse::<u64>().unwrap(), 123_456_789_012);
    }
}
