//! The 1:1 chat benchmark.
//!
//! P pairs of phones; in each pair a sender sends chat messages to a recipient. The same
//! workload, with the same client library (rumqttc, MQTT 3.1.1, QoS 1) and the same payload
//! bytes, runs against
//!
//! * tern: the sender publishes `Up{id, chat{peer, body}}` on `u`; the recipient receives the
//!   `Down{seq, id, chat{peer, body, ts}}` on `d` without subscribing;
//! * mosquitto, raw pub/sub: the sender publishes the very same encoded `Up` on `c/<pair>`; the
//!   recipient is subscribed to it at QoS 1.
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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use prost::Message;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use serde::Serialize;
use tern_schemas::v1::{down, up, Chat, Down, Up};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::brokers::{self, Broker};
use crate::proxy::{Proxy, Snapshot};

const PASSWORD: &str = "bench-pw";
const DEVICE: &str = "phone";
/// Chat body length; the body is the send time in microseconds, zero-padded.
const BODY_LEN: usize = 20;
/// Message id length: base64url of the per-sender message number.
const ID_LEN: usize = 6;
/// Time given to the last PUBACKs to cross the proxy before the counters are read.
const SETTLE: Duration = Duration::from_millis(150);

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The tern binary.
    #[arg(long, default_value = "target/release/tern")]
    tern_bin: PathBuf,
    /// Reference broker run with the same workload, or `none`.
    #[arg(long, value_enum, default_value = "mosquitto")]
    against: Against,
    /// The mosquitto binary (Debian package `mosquitto`).
    #[arg(long, default_value = "mosquitto")]
    mosquitto_bin: PathBuf,
    /// Sender→recipient pairs [default: 10; --quick: 4].
    #[arg(long)]
    pairs: Option<usize>,
    /// Messages in the throughput phase, in total [default: 20000; --quick: 400].
    #[arg(long)]
    messages: Option<u64>,
    /// Total send rate of the latency phase, messages/s [default: 1000; --quick: 400].
    #[arg(long)]
    rate: Option<f64>,
    /// Messages in the latency phase, in total [default: 5000; --quick: 200].
    #[arg(long)]
    latency_messages: Option<u64>,
    /// Messages in the wire-bytes phase, in total [default: 2000; --quick: 200].
    #[arg(long)]
    wire_messages: Option<u64>,
    /// Unacknowledged QoS 1 PUBLISHes allowed per sender.
    #[arg(long, default_value_t = 16)]
    inflight: u16,
    /// Time cap per phase, seconds (messages not delivered by then count as lost) [default: 60; --quick: 20].
    #[arg(long)]
    timeout: Option<u64>,
    /// Tiny sizes for a CI smoke test (a few hundred messages, a few seconds).
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results/chat.json")]
    json: PathBuf,
    /// tern's XMPP domain.
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Scratch directory for tern's store and the brokers' logs [default: a new one in $TMPDIR, removed afterwards].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    keep_data: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Against {
    Mosquitto,
    None,
}

#[derive(Serialize, Clone, Debug)]
struct Settings {
    pairs: usize,
    wire_messages: u64,
    throughput_messages: u64,
    latency_messages: u64,
    latency_rate: f64,
    inflight_per_sender: u16,
    timeout_s: u64,
    body_bytes: usize,
    id_chars: usize,
    mqtt: &'static str,
    client: &'static str,
    quick: bool,
}

impl Settings {
    fn from(a: &ChatArgs) -> anyhow::Result<Settings> {
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
            id_chars: ID_LEN,
            mqtt: "3.1.1, QoS 1",
            client: "rumqttc 0.25",
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Tern,
    Mosquitto,
}

/// One phase of the workload.
#[derive(Clone, Copy)]
struct Phase {
    name: &'static str,
    /// Prefix of the phase's user names / client ids (a–z only).
    tag: &'static str,
    messages: u64,
    rate: Option<f64>,
    proxy: bool,
}

fn phases(s: &Settings) -> [Phase; 3] {
    [
        Phase { name: "wire", tag: "w", messages: s.wire_messages, rate: None, proxy: true },
        Phase { name: "throughput", tag: "t", messages: s.throughput_messages, rate: None, proxy: false },
        Phase {
            name: "latency",
            tag: "l",
            messages: s.latency_messages,
            rate: Some(s.latency_rate),
            proxy: false,
        },
    ]
}

fn user_name(tag: &str, role: char, pair: usize) -> String {
    format!("{tag}{role}{pair}")
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Serialize, Debug, Default, Clone)]
struct Latency {
    count: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Serialize, Debug, Default, Clone)]
struct Bytes {
    /// Sender → broker (the PUBLISHes), bytes per delivered message.
    sender_up: f64,
    /// Broker → sender (the PUBACKs).
    sender_down: f64,
    /// Broker → recipient (the delivered PUBLISHes).
    recipient_down: f64,
    /// Recipient → broker (the PUBACKs).
    recipient_up: f64,
    /// All four legs.
    total: f64,
    /// The same, not divided: total bytes counted.
    total_bytes: u64,
    /// Setup, per client, both directions: CONNECT/CONNACK and whatever follows before the
    /// load starts (tern: the token and presence Downs and their PUBACKs; mosquitto:
    /// SUBSCRIBE/SUBACK on recipients). What a phone pays on every (re)connect.
    setup_per_client: f64,
}

#[derive(Serialize, Debug, Default, Clone)]
struct PhaseResult {
    phase: String,
    messages: u64,
    published: u64,
    acked: u64,
    delivered: u64,
    /// Published (handed to the client library) but not delivered within the time cap.
    lost: u64,
    /// Not even published within the time cap (the load generator or the broker was too slow).
    unsent: u64,
    duplicated: u64,
    /// PUBLISHes to a client that were not one of this phase's chat messages (after setup).
    unexpected: u64,
    /// A few of them, described.
    unexpected_samples: Vec<String>,
    /// PUBLISHes to clients during the setup, other than tern's `Down{token}` (not counted in the bytes).
    setup_downs: u64,
    setup_samples: Vec<String>,
    /// tern only: `Down.chat.peer` other than the sender's full JID.
    wrong_peer: u64,
    /// tern only: a `Down.seq` not above the previous one for the same recipient.
    seq_regressions: u64,
    /// tern only: `Down{error}` received by senders.
    error_downs: u64,
    errors: Vec<String>,
    /// Connect (+ login / subscribe) of all clients, seconds.
    setup_s: f64,
    /// From the first publish to the last delivery, seconds.
    elapsed_s: f64,
    msgs_per_s: f64,
    target_rate: Option<f64>,
    /// Sends more than 5 ms behind schedule (latency phase): the load generator fell behind.
    late_sends: u64,
    latency: Latency,
    bytes: Option<Bytes>,
    /// Payload of one sender PUBLISH and of one delivered PUBLISH, bytes.
    up_payload_bytes: usize,
    down_payload_bytes: usize,
    broker_cpu_ms: Option<f64>,
    broker_cpu_us_per_msg: Option<f64>,
    /// CPU of this load generator (all clients, proxies included), to see whether it was the limit.
    client_cpu_us_per_msg: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
struct BrokerResult {
    broker: String,
    version: String,
    /// Creating the users (tern: one Argon2 hash each), seconds.
    user_setup_s: Option<f64>,
    phases: Vec<PhaseResult>,
    rss_kib_end: Option<u64>,
}

impl BrokerResult {
    fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == name)
    }
}

#[derive(Serialize, Debug)]
struct Ratios {
    bytes_per_msg: Option<f64>,
    throughput: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_msg: Option<f64>,
}

#[derive(Serialize, Debug)]
struct Report {
    scenario: &'static str,
    settings: Settings,
    cpus: usize,
    /// /proc/loadavg before and after: other work on the machine skews everything here.
    loadavg_before: String,
    loadavg_after: String,
    tern: BrokerResult,
    mosquitto: Option<BrokerResult>,
    /// tern / mosquitto.
    ratio_tern_over_mosquitto: Option<Ratios>,
    notes: Vec<&'static str>,
}

// ---------------------------------------------------------------------------------------------
// Entry point

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let settings = Settings::from(&args)?;
    let loadavg_before = loadavg();
    anyhow::ensure!(
        args.tern_bin.exists(),
        "{} not found; build it with `cargo build --release -p tern` or pass --tern-bin",
        args.tern_bin.display()
    );
    let (scratch, temporary) = brokers::scratch_dir(args.data_dir.as_deref())?;
    eprintln!("tern-bench chat: scratch dir {}", scratch.display());

    let outcome = async {
        let tern = run_tern(&args, &settings, &scratch).await?;
        let mosquitto = match args.against {
            Against::Mosquitto => Some(run_mosquitto(&args, &settings, &scratch).await?),
            Against::None => None,
        };
        anyhow::Ok((tern, mosquitto))
    }
    .await;
    let (tern, mosquitto) = match outcome {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tern-bench chat: failed; logs are kept in {}", scratch.display());
            return Err(e);
        }
    };

    let ratios = mosquitto.as_ref().map(|m| ratios(&tern, m));
    let report = Report {
        scenario: "chat-1to1",
        settings: settings.clone(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        loadavg_before,
        loadavg_after: loadavg(),
        tern,
        mosquitto,
        ratio_tern_over_mosquitto: ratios,
        notes: vec![
            "bytes: MQTT bytes through a counting TCP proxy (no TCP/IP headers), all four legs, setup excluded",
            "tern acknowledges a PUBLISH only after an fsync (group commit); mosquitto here keeps everything in memory (persistence false)",
            "latency: from just before the sender's publish call to the recipient's application; client, proxy-less, same host",
            "broker CPU: user+system time of the broker process during the phase, from /proc",
        ],
    };
    print_table(&report);
    if let Some(dir) = args.json.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());

    let clean =
        report.tern.phases.iter().chain(report.mosquitto.iter().flat_map(|m| m.phases.iter())).all(|p| {
            p.lost == 0
                && p.unsent == 0
                && p.duplicated == 0
                && p.errors.is_empty()
                && p.wrong_peer == 0
                && p.error_downs == 0
        });
    if temporary && !args.keep_data && clean {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("tern-bench chat: scratch dir kept: {}", scratch.display());
    }
    if !clean {
        bail!("messages were lost, unsent or duplicated, or clients saw errors (see the table and the JSON)");
    }
    Ok(())
}

async fn run_tern(args: &ChatArgs, s: &Settings, scratch: &std::path::Path) -> anyhow::Result<BrokerResult> {
    let dir = scratch.join("tern");
    let broker = brokers::start_tern(&args.tern_bin, &dir, &args.domain).await?;
    eprintln!("tern-bench chat: {} (pid {}) on {}", broker.version, broker.pid(), broker.addr);
    let result = async {
        let mut names = Vec::new();
        for p in phases(s) {
            for i in 0..s.pairs {
                names.push(user_name(p.tag, 's', i));
                names.push(user_name(p.tag, 'r', i));
            }
        }
        let t = std::time::Instant::now();
        brokers::add_users(&args.tern_bin, &dir, &names, PASSWORD).await?;
        let user_setup_s = t.elapsed().as_secs_f64();
        eprintln!("tern-bench chat: {} users added in {:.1} s", names.len(), user_setup_s);
        let mut out = BrokerResult {
            broker: "tern".into(),
            version: broker.version.clone(),
            user_setup_s: Some(user_setup_s),
            ..Default::default()
        };
        for p in phases(s) {
            out.phases.push(run_phase(Kind::Tern, &broker, &args.domain, s, p).await?);
        }
        out.rss_kib_end = broker.rss_kib();
        anyhow::Ok(out)
    }
    .await;
    broker.stop().await;
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
            out.phases.push(run_phase(Kind::Mosquitto, &broker, &args.domain, s, p).await?);
        }
        out.rss_kib_end = broker.rss_kib();
        anyhow::Ok(out)
    }
    .await;
    broker.stop().await;
    result
}

// ---------------------------------------------------------------------------------------------
// Payloads

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn message_id(mut k: u64) -> String {
    let mut s = [0u8; ID_LEN];
    for c in s.iter_mut().rev() {
        *c = B64[(k % 64) as usize];
        k /= 64;
    }
    String::from_utf8(s.to_vec()).unwrap()
}

fn parse_message_id(id: &str) -> Option<u64> {
    if id.len() != ID_LEN {
        return None;
    }
    id.bytes().try_fold(0u64, |k, c| Some(k * 64 + B64.iter().position(|&b| b == c)? as u64))
}

fn chat_up(k: u64, peer: &str, sent_us: u64) -> Vec<u8> {
    Up {
        id: message_id(k),
        body: Some(up::Body::Chat(Chat {
            peer: peer.to_owned(),
            body: format!("{sent_us:0BODY_LEN$}"),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

// ---------------------------------------------------------------------------------------------
// One phase

struct Ctx {
    kind: Kind,
    /// Set when the load starts: PUBLISHes before that are part of the setup.
    running: std::sync::atomic::AtomicBool,
    /// Time origin of the timestamps in the bodies.
    epoch: Instant,
}

impl Ctx {
    fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

enum Note {
    Ready,
    SetupFailed(String),
    /// A connection broke during the load: stop waiting for the rest.
    Failed,
    SenderDone,
    RecipientDone,
}

#[derive(Default)]
struct SenderStats {
    acked: u64,
    error_downs: u64,
    unexpected: u64,
    unexpected_samples: Vec<String>,
    setup_downs: u64,
    setup_samples: Vec<String>,
    errors: Vec<String>,
}

/// Keeps a short description of the first few unexpected envelopes.
fn note_unexpected<T: std::fmt::Debug>(samples: &mut Vec<String>, topic: &str, what: &T) {
    if samples.len() < 3 {
        let mut s = format!("{topic}: {what:?}");
        s.truncate(200);
        samples.push(s);
    }
}

struct RecipientStats {
    seen: Vec<u8>,
    delivered: u64,
    duplicated: u64,
    unexpected: u64,
    wrong_peer: u64,
    seq_regressions: u64,
    last_delivery: Option<Instant>,
    hist: Histogram<u64>,
    down_payload_bytes: usize,
    unexpected_samples: Vec<String>,
    setup_downs: u64,
    setup_samples: Vec<String>,
    errors: Vec<String>,
}

fn client(
    kind: Kind,
    tag: &str,
    role: char,
    pair: usize,
    addr: SocketAddr,
    inflight: u16,
) -> (AsyncClient, EventLoop) {
    let user = user_name(tag, role, pair);
    let client_id = match kind {
        Kind::Tern => DEVICE.to_owned(),
        Kind::Mosquitto => user.clone(),
    };
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(user, PASSWORD);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_inflight(inflight);
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (c, mut el) = AsyncClient::new(o, inflight as usize);
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(30);
    el.set_network_options(n);
    (c, el)
}

/// Polls until `stop`, then disconnects politely (bounded).
async fn wind_down(client: &AsyncClient, el: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ =
        tokio::time::timeout(Duration::from_millis(300), async { while el.poll().await.is_ok() {} }).await;
}

#[allow(clippy::too_many_arguments)]
async fn sender_driver(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    mut el: EventLoop,
    expect_acks: u64,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> SenderStats {
    let mut st = SenderStats::default();
    let mut ready = false;
    let mut token_wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = async { token_wait.as_mut().unwrap().await }, if token_wait.is_some() => {
                // tern always sends a token after a password login; do not hang if it does not.
                token_wait = None;
                ready = true;
                st.errors.push("no Down{token} within 5 s of CONNACK".into());
                let _ = notes.send(Note::Ready);
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    if a.code != ConnectReturnCode::Success {
                        let _ = notes.send(Note::SetupFailed(format!("CONNACK {:?}", a.code)));
                        break;
                    }
                    match ctx.kind {
                        Kind::Tern => token_wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs(5)))),
                        Kind::Mosquitto => {
                            ready = true;
                            let _ = notes.send(Note::Ready);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    st.acked += 1;
                    if st.acked == expect_acks {
                        let _ = notes.send(Note::SenderDone);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => match ctx.kind {
                    Kind::Tern => match Down::decode(p.payload.as_ref()).ok().and_then(|d| d.body) {
                        Some(down::Body::Token(_)) if !ready => {
                            ready = true;
                            token_wait = None;
                            let _ = notes.send(Note::Ready);
                        }
                        Some(down::Body::Error(e)) => {
                            st.error_downs += 1;
                            if st.errors.len() < 5 {
                                st.errors.push(format!("Down.error {:?}: {}", e.code(), e.text));
                            }
                        }
                        other => {
                            if ctx.running() {
                                st.unexpected += 1;
                                note_unexpected(&mut st.unexpected_samples, &p.topic, &other);
                            } else {
                                st.setup_downs += 1;
                                note_unexpected(&mut st.setup_samples, &p.topic, &other);
                            }
                        }
                    },
                    Kind::Mosquitto => st.unexpected += 1,
                },
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("sender connection: {e}");
                    if !ready {
                        let _ = notes.send(Note::SetupFailed(msg));
                    } else {
                        st.errors.push(msg);
                        let _ = notes.send(Note::Failed);
                    }
                    return st;
                }
            }
        }
    }
    wind_down(&client, &mut el).await;
    st
}

#[allow(clippy::too_many_arguments)]
async fn recipient_driver(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    mut el: EventLoop,
    pair: usize,
    expect: u64,
    expected_peer: String,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> RecipientStats {
    let mut st = RecipientStats {
        seen: vec![0; expect as usize],
        delivered: 0,
        duplicated: 0,
        unexpected: 0,
        wrong_peer: 0,
        seq_regressions: 0,
        last_delivery: None,
        hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
        down_payload_bytes: 0,
        unexpected_samples: Vec::new(),
        setup_downs: 0,
        setup_samples: Vec::new(),
        errors: Vec::new(),
    };
    let topic = format!("c/{pair}");
    let mut ready = false;
    let mut last_seq = 0u64;
    let mut token_wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = async { token_wait.as_mut().unwrap().await }, if token_wait.is_some() => {
                token_wait = None;
                ready = true;
                st.errors.push("no Down{token} within 5 s of CONNACK".into());
                let _ = notes.send(Note::Ready);
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    if a.code != ConnectReturnCode::Success {
                        let _ = notes.send(Note::SetupFailed(format!("CONNACK {:?}", a.code)));
                        break;
                    }
                    match ctx.kind {
                        Kind::Tern => token_wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs(5)))),
                        Kind::Mosquitto => {
                            if let Err(e) = client.try_subscribe(&topic, QoS::AtLeastOnce) {
                                let _ = notes.send(Note::SetupFailed(format!("subscribe: {e}")));
                                break;
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) if !ready => {
                    ready = true;
                    let _ = notes.send(Note::Ready);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    let now_us = now.duration_since(ctx.epoch).as_micros() as u64;
                    let chat = match ctx.kind {
                        Kind::Tern => match Down::decode(p.payload.as_ref()) {
                            Ok(Down { seq, id, body: Some(down::Body::Chat(c)) }) if p.topic == "d" => {
                                if c.peer != expected_peer {
                                    st.wrong_peer += 1;
                                }
                                if seq <= last_seq {
                                    st.seq_regressions += 1;
                                }
                                last_seq = seq;
                                Some((id, c.body))
                            }
                            Ok(Down { body: Some(down::Body::Token(_)), .. }) if !ready => {
                                ready = true;
                                token_wait = None;
                                let _ = notes.send(Note::Ready);
                                continue;
                            }
                            other => {
                                if ctx.running() {
                                    note_unexpected(&mut st.unexpected_samples, &p.topic, &other);
                                } else {
                                    note_unexpected(&mut st.setup_samples, &p.topic, &other);
                                }
                                None
                            }
                        },
                        Kind::Mosquitto => match Up::decode(p.payload.as_ref()) {
                            Ok(Up { id, body: Some(up::Body::Chat(c)) }) if p.topic == topic => Some((id, c.body)),
                            other => {
                                if ctx.running() {
                                    note_unexpected(&mut st.unexpected_samples, &p.topic, &other);
                                } else {
                                    note_unexpected(&mut st.setup_samples, &p.topic, &other);
                                }
                                None
                            }
                        },
                    };
                    let Some((id, body)) = chat else {
                        if ctx.running() {
                            st.unexpected += 1;
                        } else {
                            st.setup_downs += 1;
                        }
                        continue;
                    };
                    match (parse_message_id(&id), body.parse::<u64>()) {
                        (Some(k), Ok(sent_us)) if k < expect => {
                            st.down_payload_bytes = p.payload.len();
                            let slot = &mut st.seen[k as usize];
                            *slot = slot.saturating_add(1);
                            if *slot == 1 {
                                st.delivered += 1;
                                st.last_delivery = Some(now);
                                st.hist.saturating_record(now_us.saturating_sub(sent_us).max(1));
                                if st.delivered == expect {
                                    let _ = notes.send(Note::RecipientDone);
                                }
                            } else {
                                st.duplicated += 1;
                            }
                        }
                        _ => st.unexpected += 1,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("recipient connection: {e}");
                    if !ready {
                        let _ = notes.send(Note::SetupFailed(msg));
                    } else {
                        st.errors.push(msg);
                        let _ = notes.send(Note::Failed);
                    }
                    return st;
                }
            }
        }
    }
    wind_down(&client, &mut el).await;
    st
}

/// Publishes `n` chat messages, flat out or at `rate` per second from `start + offset`.
/// Returns (published, late sends).
#[allow(clippy::too_many_arguments)]
async fn publisher(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    topic: String,
    peer: String,
    n: u64,
    rate: Option<f64>,
    start: Instant,
    offset: Duration,
    deadline: Instant,
) -> (u64, u64) {
    let mut published = 0;
    let mut late = 0;
    tokio::time::sleep_until(start).await;
    for k in 0..n {
        if let Some(r) = rate {
            let at = start + offset + Duration::from_secs_f64(k as f64 / r);
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            if Instant::now().duration_since(at) > Duration::from_millis(5) {
                late += 1;
            }
        }
        let payload = chat_up(k, &peer, micros_since(ctx.epoch));
        match tokio::time::timeout_at(
            deadline,
            client.publish(topic.as_str(), QoS::AtLeastOnce, false, payload),
        )
        .await
        {
            Ok(Ok(())) => published += 1,
            _ => break,
        }
    }
    (published, late)
}

async fn run_phase(
    kind: Kind,
    broker: &Broker,
    domain: &str,
    s: &Settings,
    phase: Phase,
) -> anyhow::Result<PhaseResult> {
    let pairs = s.pairs;
    let per_pair = phase.messages / pairs as u64;
    let ctx = Arc::new(Ctx { kind, running: false.into(), epoch: Instant::now() });
    let (sender_proxy, recipient_proxy) = if phase.proxy {
        (Some(Proxy::start(broker.addr).await?), Some(Proxy::start(broker.addr).await?))
    } else {
        (None, None)
    };
    let sender_addr = sender_proxy.as_ref().map_or(broker.addr, |p| p.addr);
    let recipient_addr = recipient_proxy.as_ref().map_or(broker.addr, |p| p.addr);
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Setup: connect everyone (tern: password login, then the token arrives; mosquitto: subscribe).
    let setup_started = Instant::now();
    let mut senders = Vec::new();
    let mut recipients = Vec::new();
    let mut sender_clients = Vec::new();
    for i in 0..pairs {
        let (rc, rel) = client(kind, phase.tag, 'r', i, recipient_addr, s.inflight_per_sender);
        let expected_peer = format!("{}@{domain}/{DEVICE}", user_name(phase.tag, 's', i));
        recipients.push(tokio::spawn(recipient_driver(
            ctx.clone(),
            rc,
            rel,
            i,
            per_pair,
            expected_peer,
            notes_tx.clone(),
            stop_rx.clone(),
        )));
        let (sc, sel) = client(kind, phase.tag, 's', i, sender_addr, s.inflight_per_sender);
        sender_clients.push(sc.clone());
        senders.push(tokio::spawn(sender_driver(
            ctx.clone(),
            sc,
            sel,
            per_pair,
            notes_tx.clone(),
            stop_rx.clone(),
        )));
    }
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = 0;
    while ready < 2 * pairs {
        match tokio::time::timeout_at(setup_deadline, notes.recv()).await {
            Ok(Some(Note::Ready)) => ready += 1,
            Ok(Some(Note::SetupFailed(e))) => {
                let _ = stop_tx.send(true);
                bail!("{kind:?} {} phase: a client failed to set up: {e}", phase.name);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = stop_tx.send(true);
                bail!(
                    "{kind:?} {} phase: only {ready} of {} clients ready after 60 s",
                    phase.name,
                    2 * pairs
                );
            }
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    // Let whatever the broker sends after a login (tern: presence) arrive and be acknowledged
    // before the counters are read: wait for SETTLE, then until they stand still for 50 ms.
    let snap = |p: &Option<Proxy>| p.as_ref().map(|p| p.snapshot()).unwrap_or_default();
    tokio::time::sleep(SETTLE).await;
    let quiet_deadline = Instant::now() + Duration::from_secs(3);
    let (mut s0, mut r0) = (snap(&sender_proxy), snap(&recipient_proxy));
    while Instant::now() < quiet_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (s, r) = (snap(&sender_proxy), snap(&recipient_proxy));
        if (s.up, s.down, r.up, r.down) == (s0.up, s0.down, r0.up, r0.down) {
            break;
        }
        (s0, r0) = (s, r);
    }
    ctx.running.store(true, std::sync::atomic::Ordering::SeqCst);
    let cpu0 = broker.cpu_ms();
    let own0 = brokers::cpu_ms("/proc/self/stat");

    // Load.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs(s.timeout_s);
    let rate_per_pair = phase.rate.map(|r| r / pairs as f64);
    let mut publishers = Vec::new();
    for (i, c) in sender_clients.into_iter().enumerate() {
        let topic = match kind {
            Kind::Tern => "u".to_owned(),
            Kind::Mosquitto => format!("c/{i}"),
        };
        let peer = format!("{}@{domain}", user_name(phase.tag, 'r', i));
        // Spread the senders evenly over one period of the total rate.
        let offset = phase.rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r));
        publishers.push(tokio::spawn(publisher(
            ctx.clone(),
            c,
            topic,
            peer,
            per_pair,
            rate_per_pair,
            start,
            offset,
            deadline,
        )));
    }
    let (mut senders_done, mut recipients_done) = (0, 0);
    while senders_done < pairs || recipients_done < pairs {
        match tokio::time::timeout_at(deadline, notes.recv()).await {
            Ok(Some(Note::SenderDone)) => senders_done += 1,
            Ok(Some(Note::RecipientDone)) => recipients_done += 1,
            Ok(Some(Note::Failed)) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    tokio::time::sleep(SETTLE).await;
    let (s1, r1) = (snap(&sender_proxy), snap(&recipient_proxy));
    let cpu1 = broker.cpu_ms();
    let own1 = brokers::cpu_ms("/proc/self/stat");
    let _ = stop_tx.send(true);

    // Collect.
    let mut res = PhaseResult {
        phase: phase.name.into(),
        messages: per_pair * pairs as u64,
        setup_s: round(setup_s, 3),
        target_rate: phase.rate,
        ..Default::default()
    };
    for p in publishers {
        p.abort();
        if let Ok((published, late)) = p.await {
            res.published += published;
            res.late_sends += late;
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    let mut last_delivery: Option<Instant> = None;
    for r in recipients {
        let st = r.await?;
        res.delivered += st.delivered;
        res.duplicated += st.duplicated;
        res.unexpected += st.unexpected;
        res.unexpected_samples.extend(st.unexpected_samples);
        res.setup_downs += st.setup_downs;
        res.setup_samples.extend(st.setup_samples);
        res.wrong_peer += st.wrong_peer;
        res.seq_regressions += st.seq_regressions;
        res.down_payload_bytes = res.down_payload_bytes.max(st.down_payload_bytes);
        res.errors.extend(st.errors);
        hist.add(&st.hist)?;
        last_delivery = last_delivery.max(st.last_delivery);
    }
    for snd in senders {
        let st = snd.await?;
        res.acked += st.acked;
        res.error_downs += st.error_downs;
        res.unexpected += st.unexpected;
        res.unexpected_samples.extend(st.unexpected_samples);
        res.setup_downs += st.setup_downs;
        res.setup_samples.extend(st.setup_samples);
        res.errors.extend(st.errors);
    }
    res.lost = res.published.saturating_sub(res.delivered);
    res.unsent = res.messages - res.published;
    res.latency = Latency::of(&hist);
    res.up_payload_bytes = chat_up(0, &format!("{}@{domain}", user_name(phase.tag, 'r', 0)), 0).len();
    if let Some(last) = last_delivery {
        res.elapsed_s = round(last.saturating_duration_since(start).as_secs_f64(), 4);
        if res.elapsed_s > 0.0 {
            res.msgs_per_s = round(res.delivered as f64 / res.elapsed_s, 1);
        }
    }
    if phase.proxy && res.delivered > 0 {
        let (sd, rd): (Snapshot, Snapshot) = (s1.since(s0), r1.since(r0));
        let n = res.delivered as f64;
        let total = sd.up + sd.down + rd.up + rd.down;
        res.bytes = Some(Bytes {
            sender_up: round(sd.up as f64 / n, 2),
            sender_down: round(sd.down as f64 / n, 2),
            recipient_down: round(rd.down as f64 / n, 2),
            recipient_up: round(rd.up as f64 / n, 2),
            total: round(total as f64 / n, 2),
            total_bytes: total,
            setup_per_client: round((s0.up + s0.down + r0.up + r0.down) as f64 / (2 * pairs) as f64, 1),
        });
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        res.broker_cpu_ms = Some(round(b - a, 1));
        if res.delivered > 0 {
            res.broker_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
        }
    }
    if let (Some(a), Some(b)) = (own0, own1) {
        if res.delivered > 0 {
            res.client_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
        }
    }
    drop(sender_proxy);
    drop(recipient_proxy);
    eprintln!(
        "tern-bench chat: {:>9} {:<10} delivered {}/{} in {:.2} s ({:.0}/s), p50 {} µs, p99 {} µs, lost {}, dup {}",
        format!("{kind:?}").to_lowercase(),
        phase.name,
        res.delivered,
        res.messages,
        res.elapsed_s,
        res.msgs_per_s,
        res.latency.p50_us,
        res.latency.p99_us,
        res.lost,
        res.duplicated
    );
    Ok(res)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

// ---------------------------------------------------------------------------------------------
// Report

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 3)),
        _ => None,
    }
}

struct Figures {
    bytes: Option<Bytes>,
    throughput: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    cpu: Option<f64>,
    lost: u64,
    dup: u64,
}

fn figures(b: &BrokerResult) -> Figures {
    let lat = b.phase("latency");
    Figures {
        bytes: b.phase("wire").and_then(|p| p.bytes.clone()),
        throughput: b.phase("throughput").map(|p| p.msgs_per_s),
        p50: lat.map(|p| p.latency.p50_us as f64),
        p99: lat.map(|p| p.latency.p99_us as f64),
        p999: lat.map(|p| p.latency.p999_us as f64),
        cpu: b.phase("throughput").and_then(|p| p.broker_cpu_us_per_msg),
        lost: b.phases.iter().map(|p| p.lost + p.unsent).sum(),
        dup: b.phases.iter().map(|p| p.duplicated).sum(),
    }
}

fn ratios(t: &BrokerResult, m: &BrokerResult) -> Ratios {
    let (ft, fm) = (figures(t), figures(m));
    Ratios {
        bytes_per_msg: ratio(ft.bytes.map(|b| b.total), fm.bytes.map(|b| b.total)),
        throughput: ratio(ft.throughput, fm.throughput),
        latency_p50: ratio(ft.p50, fm.p50),
        latency_p99: ratio(ft.p99, fm.p99),
        cpu_per_msg: ratio(ft.cpu, fm.cpu),
    }
}

fn print_table(r: &Report) {
    let s = &r.settings;
    println!(
        "\ntern-bench chat: {} pairs, 1:1 chat, MQTT {}, {}-byte body, {} in flight per sender, {}, {} CPUs, load {} → {}",
        s.pairs,
        s.mqtt,
        s.body_bytes,
        s.inflight_per_sender,
        s.client,
        r.cpus,
        r.loadavg_before.split_whitespace().next().unwrap_or("?"),
        r.loadavg_after.split_whitespace().next().unwrap_or("?"),
    );
    let ft = figures(&r.tern);
    let fm = r.mosquitto.as_ref().map(figures);
    let num = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    let row = |label: &str, a: Option<f64>, b: Option<f64>, d: usize, show_ratio: bool| {
        let rt = if show_ratio {
            ratio(a, b).map_or("-".to_owned(), |x| format!("{x:.2}"))
        } else {
            String::new()
        };
        println!("{label:<44} {:>10} {:>10} {:>10}", num(a, d), num(b, d), rt);
    };
    println!("{:<44} {:>10} {:>10} {:>10}", "", "tern", "mosquitto", "tern/mosq");
    let bt = ft.bytes.clone();
    let bm = fm.as_ref().and_then(|f| f.bytes.clone());
    let leg = |f: fn(&Bytes) -> f64| (bt.as_ref().map(f), bm.as_ref().map(f));
    let (a, b) = leg(|x| x.total);
    row(&format!("wire bytes / delivered msg ({} msgs)", s.wire_messages), a, b, 1, true);
    let (a, b) = leg(|x| x.sender_up);
    row("  sender → broker (PUBLISH)", a, b, 1, true);
    let (a, b) = leg(|x| x.sender_down);
    row("  broker → sender (PUBACK)", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_down);
    row("  broker → recipient (PUBLISH)", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_up);
    row("  recipient → broker (PUBACK)", a, b, 1, true);
    let (a, b) = leg(|x| x.setup_per_client);
    row("connect setup bytes / client (not above)", a, b, 1, true);
    let payload = |b: &BrokerResult, f: fn(&PhaseResult) -> usize| b.phase("wire").map(|p| f(p) as f64);
    row(
        "  payload: Up (sender)",
        payload(&r.tern, |p| p.up_payload_bytes),
        r.mosquitto.as_ref().and_then(|m| payload(m, |p| p.up_payload_bytes)),
        0,
        false,
    );
    row(
        "  payload: delivered (tern Down / raw Up)",
        payload(&r.tern, |p| p.down_payload_bytes),
        r.mosquitto.as_ref().and_then(|m| payload(m, |p| p.down_payload_bytes)),
        0,
        false,
    );
    row(
        &format!("throughput, msgs/s ({} msgs, flat out)", s.throughput_messages),
        ft.throughput,
        fm.as_ref().and_then(|f| f.throughput),
        0,
        true,
    );
    row("  broker CPU µs / msg", ft.cpu, fm.as_ref().and_then(|f| f.cpu), 1, true);
    let client_cpu = |b: &BrokerResult| b.phase("throughput").and_then(|p| p.client_cpu_us_per_msg);
    row(
        "  load generator CPU µs / msg",
        client_cpu(&r.tern),
        r.mosquitto.as_ref().and_then(client_cpu),
        1,
        false,
    );
    row(
        &format!("latency p50, µs ({} msgs @ {}/s)", s.latency_messages, s.latency_rate),
        ft.p50,
        fm.as_ref().and_then(|f| f.p50),
        0,
        true,
    );
    row("latency p99, µs", ft.p99, fm.as_ref().and_then(|f| f.p99), 0, true);
    row("latency p99.9, µs", ft.p999, fm.as_ref().and_then(|f| f.p999), 0, true);
    println!(
        "{:<44} {:>10} {:>10}",
        "lost (incl. unsent) / duplicated, all phases",
        format!("{}/{}", ft.lost, ft.dup),
        fm.as_ref().map_or("-".to_owned(), |f| format!("{}/{}", f.lost, f.dup))
    );
    for b in std::iter::once(&r.tern).chain(r.mosquitto.iter()) {
        for p in &b.phases {
            if p.setup_downs > 0 {
                println!(
                    "  {} {}: {} PUBLISHes to the {} clients during setup besides the token, e.g. {}",
                    b.broker,
                    p.phase,
                    p.setup_downs,
                    2 * s.pairs,
                    p.setup_samples.first().map_or("", |x| x.as_str())
                );
            }
            if !p.errors.is_empty()
                || p.unexpected > 0
                || p.wrong_peer > 0
                || p.seq_regressions > 0
                || p.error_downs > 0
                || p.late_sends > 0
                || p.unsent > 0
            {
                println!(
                    "  {} {}: unsent {}, unexpected {} {:?}, wrong peer {}, seq regressions {}, error Downs {}, late sends {}, errors {:?}",
                    b.broker,
                    p.phase,
                    p.unsent,
                    p.unexpected,
                    p.unexpected_samples.iter().take(2).collect::<Vec<_>>(),
                    p.wrong_peer,
                    p.seq_regressions,
                    p.error_downs,
                    p.late_sends,
                    p.errors
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_fixed_width() {
        for k in [0, 1, 63, 64, 4095, 123_456, 64u64.pow(6) - 1] {
            let id = message_id(k);
            assert_eq!(id.len(), ID_LEN);
            assert_eq!(parse_message_id(&id), Some(k));
        }
        assert_eq!(parse_message_id("AAA"), None);
        assert_eq!(parse_message_id("AAAAA!"), None);
    }

    #[test]
    fn payload_has_fixed_size_body() {
        let a = chat_up(0, "lr0@bench.test", 0);
        let b = chat_up(99_999, "lr0@bench.test", 123_456_789_012);
        assert_eq!(a.len(), b.len());
        let up = Up::decode(b.as_slice()).unwrap();
        let Some(up::Body::Chat(c)) = up.body else { panic!() };
        assert_eq!(c.body.len(), BODY_LEN);
        assert_eq!(c.body.parse::<u64>().unwrap(), 123_456_789_012);
    }
}
