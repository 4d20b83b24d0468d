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
//!
//! This file is the scenario runner (settings, phases, payloads); the per-connection drivers
//! are in `chat/drivers.rs`, the results and the table in `chat/report.rs`.

pub(crate) mod drivers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use prost::Message;
use rumqttc::AsyncClient;
use serde::Serialize;
use tern_bridge::Jid;
use tern_schemas::v1::{up, Chat, Up};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::brokers::{self, Broker};
use crate::prosody::{self, Prosody, ProsodyArgs};
use crate::proxy::{Proxy, Snapshot};
use crate::report::{finish, new_histogram, round, BrokerResult, Bytes, Latency, PhaseResult, Report};
use crate::xmpp;
use drivers::{client, publisher, recipient_driver, sender_driver, Ctx, Note, Schedule};

pub(crate) const PASSWORD: &str = "bench-pw";
pub(crate) const DEVICE: &str = "phone";
/// Chat body length; the body is the send time in microseconds, zero-padded.
pub(crate) const BODY_LEN: usize = 20;
/// Message id length: base64url of the per-sender message number.
const ID_LEN: usize = 6;
/// Time given to the last PUBACKs to cross the proxy before the counters are read.
const SETTLE: Duration = Duration::from_millis(150);

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
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
    /// Total send rate of the latency phase, messages/s [default: 1000; --quick: 400].
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Messages in the latency phase, in total [default: 5000; --quick: 200].
    #[arg(long)]
    pub(crate) latency_messages: Option<u64>,
    /// Messages in the wire-bytes phase, in total [default: 2000; --quick: 200].
    #[arg(long)]
    pub(crate) wire_messages: Option<u64>,
    /// Unacknowledged QoS 1 PUBLISHes allowed per sender.
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
    pub(crate) id_chars: usize,
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
            id_chars: ID_LEN,
            mqtt: "3.1.1, QoS 1",
            client: "rumqttc 0.25",
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Phones on tern (MQTT, `Up`/`Down` envelopes).
    Tern,
    /// Raw MQTT pub/sub on mosquitto.
    Mosquitto,
    /// XMPP c2s clients (on Prosody); only ever senders or recipients of the XMPP drivers.
    Xmpp,
}

/// How the load reaches a sender once the phase starts.
enum SenderHandle {
    /// An MQTT client that a publisher task publishes through.
    Mqtt(AsyncClient),
    /// An XMPP client, which sends on its own once it has the schedule.
    Xmpp(oneshot::Sender<Schedule>),
}

/// An XMPP client account of the bench.
fn xmpp_account(addr: std::net::SocketAddr, user: &str, domain: &str) -> anyhow::Result<xmpp::Account> {
    Ok(xmpp::Account {
        addr,
        jid: Jid::new(Some(user), domain, None)?,
        password: PASSWORD.to_owned(),
        resource: DEVICE.to_owned(),
    })
}

/// Where a phase's recipients are.
#[derive(Clone, Copy)]
pub(crate) enum Recipients<'a> {
    /// MQTT clients of the senders' broker.
    Local,
    /// XMPP clients of this Prosody, which tern reaches over s2s; they send receipts.
    Xmpp(&'a Prosody),
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

pub(crate) fn user_name(tag: &str, role: char, pair: usize) -> String {
    format!("{tag}{role}{pair}")
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
    let scratch = Scratch::new(&args.load, "chat")?;
    let outcome = async {
        let tern = run_tern(&args.load, &settings, &scratch.dir).await?;
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

async fn run_tern(args: &LoadArgs, s: &Settings, scratch: &std::path::Path) -> anyhow::Result<BrokerResult> {
    let dir = scratch.join("tern");
    let broker = brokers::start_tern(&args.tern_bin, &dir, &args.domain, None).await?;
    eprintln!("tern-bench chat: {} (pid {}) on {}", broker.version, broker.pid(), broker.addr);
    let result = async {
        let names = users(s, &['s', 'r']);
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
            out.phases.push(run_phase(Kind::Tern, &broker, Recipients::Local, &args.domain, s, p).await?);
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
            out.phases
                .push(run_phase(Kind::Mosquitto, &broker, Recipients::Local, &args.load.domain, s, p).await?);
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
            let phase =
                run_phase(Kind::Xmpp, &server.broker, Recipients::Xmpp(&server), &server.domain, s, p);
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

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(crate) fn message_id(mut k: u64) -> String {
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

/// Runs one phase: `kind` senders on `broker` (`domain`), each sending to its recipient.
pub(crate) async fn run_phase(
    kind: Kind,
    broker: &Broker,
    recipients: Recipients<'_>,
    domain: &str,
    s: &Settings,
    phase: Phase,
) -> anyhow::Result<PhaseResult> {
    let pairs = s.pairs;
    let per_pair = phase.messages / pairs as u64;
    let prosody = match recipients {
        Recipients::Local => None,
        Recipients::Xmpp(p) => Some(p),
    };
    // The XMPP server's CPU is reported apart only when it is not the senders' server.
    let peer = prosody.filter(|p| p.broker.pid() != broker.pid());
    let ctx = Arc::new(Ctx::new(kind, prosody.is_some() && phase.receipts));
    let recipient_server = prosody.map_or(broker.addr, |p| p.broker.addr);
    let recipient_domain = prosody.map_or(domain, |p| p.domain.as_str());
    let (sender_proxy, recipient_proxy) = if phase.proxy {
        (Some(Proxy::start(broker.addr).await?), Some(Proxy::start(recipient_server).await?))
    } else {
        (None, None)
    };
    let sender_addr = sender_proxy.as_ref().map_or(broker.addr, |p| p.addr);
    let recipient_addr = recipient_proxy.as_ref().map_or(recipient_server, |p| p.addr);
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Setup: connect everyone (tern: password login, then the token arrives; mosquitto: subscribe).
    let setup_started = Instant::now();
    let mut senders = Vec::new();
    let mut recipient_tasks = Vec::new();
    let mut sender_handles = Vec::new();
    for i in 0..pairs {
        let expected_peer = format!("{}@{domain}/{DEVICE}", user_name(phase.tag, 's', i));
        let recipient = user_name(phase.tag, 'r', i);
        recipient_tasks.push(if prosody.is_some() {
            tokio::spawn(xmpp::drivers::recipient_driver(
                ctx.clone(),
                xmpp_account(recipient_addr, &recipient, recipient_domain)?,
                per_pair,
                expected_peer,
                notes_tx.clone(),
                stop_rx.clone(),
            ))
        } else {
            let (rc, rel) = client(kind, phase.tag, 'r', i, recipient_addr, s.inflight_per_sender);
            tokio::spawn(recipient_driver(
                ctx.clone(),
                rc,
                rel,
                i,
                per_pair,
                expected_peer,
                notes_tx.clone(),
                stop_rx.clone(),
            ))
        });
        if kind == Kind::Xmpp {
            let (tx, rx) = oneshot::channel();
            sender_handles.push(SenderHandle::Xmpp(tx));
            senders.push(tokio::spawn(xmpp::drivers::sender_driver(
                ctx.clone(),
                xmpp_account(sender_addr, &user_name(phase.tag, 's', i), domain)?,
                Jid::new(Some(&recipient), recipient_domain, None)?,
                per_pair,
                s.inflight_per_sender,
                rx,
                notes_tx.clone(),
                stop_rx.clone(),
            )));
            continue;
        }
        let (sc, sel) = client(kind, phase.tag, 's', i, sender_addr, s.inflight_per_sender);
        sender_handles.push(SenderHandle::Mqtt(sc.clone()));
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
    let peer_cpu0 = peer.and_then(|p| p.broker.cpu_ms());
    let own0 = brokers::cpu_ms("/proc/self/stat");

    // Load.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs(s.timeout_s);
    let rate_per_pair = phase.rate.map(|r| r / pairs as f64);
    let mut publishers = Vec::new();
    for (i, handle) in sender_handles.into_iter().enumerate() {
        // Spread the senders evenly over one period of the total rate.
        let offset = phase.rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r));
        let schedule = Schedule { start, offset, rate: rate_per_pair, deadline };
        let client = match handle {
            SenderHandle::Mqtt(c) => c,
            SenderHandle::Xmpp(tx) => {
                let _ = tx.send(schedule);
                continue;
            }
        };
        let topic = match kind {
            Kind::Tern => "u".to_owned(),
            Kind::Mosquitto | Kind::Xmpp => format!("c/{i}"),
        };
        let peer = format!("{}@{recipient_domain}", user_name(phase.tag, 'r', i));
        publishers.push(tokio::spawn(publisher(ctx.clone(), client, topic, peer, per_pair, schedule)));
    }
    let (mut senders_done, mut recipients_done) = (0, 0);
    let mut progress = Progress::new(kind, recipients, phase, per_pair * pairs as u64);
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while senders_done < pairs || recipients_done < pairs {
        tokio::select! {
            note = tokio::time::timeout_at(deadline, notes.recv()) => match note {
                Ok(Some(Note::SenderDone)) => senders_done += 1,
                Ok(Some(Note::RecipientDone)) => recipients_done += 1,
                Ok(Some(Note::Failed)) => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = tick.tick() => progress.show(&ctx, start),
        }
    }
    progress.done();
    tokio::time::sleep(SETTLE).await;
    let (s1, r1) = (snap(&sender_proxy), snap(&recipient_proxy));
    let cpu1 = broker.cpu_ms();
    let peer_cpu1 = peer.and_then(|p| p.broker.cpu_ms());
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
    let mut hist = new_histogram();
    let mut last_delivery: Option<Instant> = None;
    for r in recipient_tasks {
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
        res.published += st.published;
        res.late_sends += st.late;
        res.up_payload_bytes = res.up_payload_bytes.max(st.up_payload_bytes);
        if ctx.receipts {
            *res.receipts.get_or_insert(0) += st.receipts;
        }
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
    if kind != Kind::Xmpp {
        res.up_payload_bytes =
            chat_up(0, &format!("{}@{recipient_domain}", user_name(phase.tag, 'r', 0)), 0).len();
    }
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
            sender_link: round((sd.up + sd.down) as f64 / n, 2),
            recipient_link: round((rd.up + rd.down) as f64 / n, 2),
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
    if let (Some(a), Some(b)) = (peer_cpu0, peer_cpu1) {
        if res.delivered > 0 {
            res.peer_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
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
        "tern-bench: {:<22} delivered {}/{} in {:.2} s ({:.0}/s), p50 {} µs, p99 {} µs, lost {}, dup {}",
        progress.label,
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

/// The progress line of a running phase on stderr: delivered so far and the rate, once a second
/// (rewritten in place on a terminal, one line per second otherwise).
struct Progress {
    label: String,
    total: u64,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(kind: Kind, recipients: Recipients, phase: Phase, total: u64) -> Progress {
        let system = match recipients {
            Recipients::Local => format!("{kind:?}").to_lowercase(),
            Recipients::Xmpp(_) if kind == Kind::Tern => "federation".into(),
            Recipients::Xmpp(_) => "prosody".into(),
        };
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress { label: format!("{system} {}", phase.name), total, tty, shown: false }
    }

    fn show(&mut self, ctx: &Ctx, start: Instant) {
        let n = ctx.delivered.load(std::sync::atomic::Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let line = format!(
            "tern-bench: {:<22} {n:>8}/{} delivered, {:>7.0} msgs/s, {secs:>5.1} s",
            self.label,
            self.total,
            n as f64 / secs.max(1e-3)
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }

    fn done(&self) {
        if self.tty && self.shown {
            eprintln!();
        }
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default()
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
