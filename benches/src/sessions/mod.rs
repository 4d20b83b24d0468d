//! The session scenarios (`connect`, `idle`, `resume`, `fanout`): many phones, each one raw MQTT
//! 3.1.1 connection (`raw_mqtt.rs`), against a tern the bench starts on loopback or one at
//! `--addr`, and the same workload against mosquitto with `--against mosquitto`, or against
//! Prosody with XMPP c2s clients (`link.rs`) with `--against prosody`.
//!
//! This file holds what they share: the target, users, source addresses, the progress line and
//! the report (a table of figures for both systems with their ratio, and the same as JSON).

pub mod connect;
pub mod fanout;
pub mod idle;
mod link;
mod pass;
mod report;
pub mod resume;
mod room;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use prost::Message;
use tern_schemas::v1::{down, Down};
use tokio::time::Instant;

use crate::brokers::{self, Broker, Endpoint, RunningTern};
use crate::prosody::{self, Prosody, ProsodyArgs};
use crate::raw_mqtt::{Conn, ConnectOpts};
pub(crate) use link::{Link, Outgoing};
pub(crate) use report::{finish, Figures, Row, SessionReport};

pub(crate) const PASSWORD: &str = "bench-pw";
/// Sockets per loopback source address: well below the 28k ports of the default ephemeral
/// range, which the closed connections of a pass hold in TIME_WAIT for a minute.
const PER_SOURCE: usize = 10_000;
/// Cap on any one connect (TCP + CONNECT → CONNACK, and the token after a password login).
pub(crate) const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Connects in progress at once, unless given: tern's password logins queue behind four Argon2
/// slots and are refused as busy after 5 s, which a loaded CI machine must not reach.
pub(crate) fn concurrency(given: Option<usize>, quick: bool) -> usize {
    given.unwrap_or(if quick { 4 } else { 32 })
}

/// Which system runs the workload, for the parts that differ.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum System {
    Tern,
    Mosquitto,
    Prosody,
}

/// The system under test and the reference, common to the session scenarios.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// The tern binary (to start one, and to ask its version).
    #[arg(long, default_value = "target/release/tern")]
    pub(crate) tern_bin: PathBuf,
    /// A tern already running (its users need password --password).
    #[command(flatten)]
    pub(crate) running: RunningTern,
    /// Password of the bench's users.
    #[arg(long, default_value = PASSWORD)]
    pub(crate) password: String,
    /// tern's XMPP domain.
    #[arg(long, default_value = "bench.test")]
    pub(crate) domain: String,
    /// The same workload on mosquitto (MQTT) or Prosody (XMPP c2s) too, or `none`.
    #[arg(long, value_enum, default_value = "mosquitto")]
    pub(crate) against: Against,
    /// The mosquitto binary (Debian package `mosquitto`).
    #[arg(long, default_value = "mosquitto")]
    pub(crate) mosquitto_bin: PathBuf,
    /// With `--against prosody`.
    #[command(flatten)]
    pub(crate) prosody: ProsodyArgs,
    /// Tiny sizes for the CI smoke test.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where to write the results as JSON [default: bench-results/<scenario>.json].
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Scratch directory for tern's store and the logs [default: a new one in $TMPDIR].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    pub(crate) keep_data: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Against {
    /// The same MQTT clients against mosquitto (anonymous, in memory).
    Mosquitto,
    /// XMPP c2s clients against Prosody (SASL PLAIN on internal_hashed accounts, XEP-0198).
    Prosody,
    None,
}

impl TargetArgs {
    pub(crate) fn json_path(&self, scenario: &str) -> PathBuf {
        self.json.clone().unwrap_or_else(|| PathBuf::from(format!("bench-results/{scenario}.json")))
    }
}

/// A system the scenario talks to: one we started, or one the operator runs.
pub(crate) struct Target {
    pub(crate) system: System,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: Option<u32>,
    pub(crate) version: String,
    /// The XMPP domain of the users' JIDs (tern's, or Prosody's VirtualHost).
    pub(crate) domain: String,
    /// The MUC service (XEP-0045) where this system's users meet in rooms, if it has one: a
    /// component of the Prosody under test, or of the Prosody tern federates with.
    pub(crate) muc: Option<String>,
    admin: Option<PathBuf>,
    started: Option<Broker>,
    prosody: Option<Prosody>,
    /// The Prosody that hosts tern's rooms (federated), stopped with tern.
    room_host: Option<Prosody>,
}

impl Target {
    /// tern: the one at `--addr`, or a fresh one in `scratch/tern`.
    pub(crate) async fn tern(a: &TargetArgs, scratch: &Path) -> anyhow::Result<Target> {
        let version = brokers::version_of(&a.tern_bin);
        let version = if a.running.addr.is_some() { format!("{version} (--tern-bin's)") } else { version };
        if let Some(addr) = a.running.addr {
            return Ok(Target {
                system: System::Tern,
                addr,
                pid: a.running.pid,
                version,
                domain: a.domain.clone(),
                admin: a.running.admin_socket.clone(),
                started: None,
                prosody: None,
                muc: None,
                room_host: None,
            });
        }
        anyhow::ensure!(
            a.tern_bin.exists(),
            "{} not found; build it with `cargo build --release -p tern` or pass --tern-bin",
            a.tern_bin.display()
        );
        let dir = scratch.join("tern");
        let b = brokers::start_tern(&a.tern_bin, &dir, &a.domain, None).await?;
        eprintln!("tern (pid {}) on {}", b.pid(), b.addr);
        Ok(Target::started_tern(b, a, &dir, None))
    }

    /// A tern we started in `dir`, with the Prosody that hosts its rooms if any.
    fn started_tern(b: Broker, a: &TargetArgs, dir: &Path, room_host: Option<(String, Prosody)>) -> Target {
        let (muc, room_host) = room_host.unzip();
        Target {
            system: System::Tern,
            addr: b.addr,
            pid: Some(b.pid()),
            version: b.version.clone(),
            domain: a.domain.clone(),
            muc,
            admin: Some(dir.join("admin.sock")),
            started: Some(b),
            prosody: None,
            room_host,
        }
    }

    /// A fresh mosquitto in `scratch/mosquitto`.
    pub(crate) async fn mosquitto(a: &TargetArgs, scratch: &Path) -> anyhow::Result<Target> {
        let b = brokers::start_mosquitto(&a.mosquitto_bin, &scratch.join("mosquitto")).await?;
        eprintln!("{} (pid {}) on {}", b.version, b.pid(), b.addr);
        Ok(Target {
            system: System::Mosquitto,
            addr: b.addr,
            pid: Some(b.pid()),
            version: b.version.clone(),
            domain: String::new(),
            admin: None,
            started: Some(b),
            prosody: None,
            muc: None,
            room_host: None,
        })
    }

    /// tern federated with a fresh Prosody that has a MUC component (`rooms.<its domain>`),
    /// set up as the `federation` scenario does it, with a route for the MUC domain too: tern
    /// hosts no rooms, its users join rooms elsewhere.
    pub(crate) async fn tern_with_rooms(a: &TargetArgs, scratch: &Path) -> anyhow::Result<Target> {
        anyhow::ensure!(
            a.running.addr.is_none(),
            "rooms need a tern federated with the room service: no --addr"
        );
        let muc = muc_domain(a);
        let tern_ip = prosody::free_loopback_ip(120, &[prosody::S2S_PORT], &[]).await?;
        let ip = prosody::free_loopback_ip(121, &[prosody::C2S_PORT, prosody::S2S_PORT], &[tern_ip]).await?;
        let hosts = [(a.domain.clone(), tern_ip)];
        let options =
            prosody::Options { bins: &a.prosody, dir: &scratch.join("room-host"), ip, hosts: &hosts };
        let p = Prosody::start_extras(options, prosody::Extras { modules: &[], muc: Some(&muc) }).await?;
        eprintln!("room service {muc} on {} (pid {}), s2s {}", p.broker.version, p.broker.pid(), p.s2s);
        let dir = scratch.join("tern");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("tern.toml");
        let mut text = crate::federation::tern_config(tern_ip, &p.domain, p.s2s);
        text.push_str(&format!("\"{muc}\" = \"{}\"\n", p.s2s));
        std::fs::write(&config, text)?;
        let b = match brokers::start_tern(&a.tern_bin, &dir, &a.domain, Some(&config)).await {
            Ok(b) => b,
            Err(e) => {
                p.broker.stop().await;
                return Err(e);
            }
        };
        eprintln!("tern (pid {}) on {}, s2s {tern_ip}:{}", b.pid(), b.addr, prosody::S2S_PORT);
        Ok(Target::started_tern(b, a, &dir, Some((muc, p))))
    }

    /// A fresh Prosody in `scratch/prosody` on a 127.0.0.x of its own, with stream management
    /// (and with `rooms`, a MUC component on `rooms.<its domain>`).
    pub(crate) async fn prosody(a: &TargetArgs, scratch: &Path, rooms: bool) -> anyhow::Result<Target> {
        let ip = prosody::free_loopback_ip(111, &[prosody::C2S_PORT, prosody::S2S_PORT], &[]).await?;
        let dir = scratch.join("prosody");
        let options = prosody::Options { bins: &a.prosody, dir: &dir, ip, hosts: &[] };
        let muc = rooms.then(|| muc_domain(a));
        let p = Prosody::start_extras(options, prosody::Extras { modules: &["smacks"], muc: muc.as_deref() })
            .await?;
        eprintln!("{} (pid {}) on {}", p.broker.version, p.broker.pid(), p.broker.addr);
        Ok(Target {
            system: System::Prosody,
            addr: p.broker.addr,
            pid: Some(p.broker.pid()),
            version: p.broker.version.clone(),
            domain: p.domain.clone(),
            muc,
            admin: None,
            started: None,
            prosody: Some(p),
            room_host: None,
        })
    }

    /// The CPU time so far of the Prosody that hosts tern's rooms, ms.
    pub(crate) fn room_host_cpu_ms(&self) -> Option<f64> {
        self.room_host.as_ref()?.broker.cpu_ms()
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.system {
            System::Tern => "tern",
            System::Mosquitto => "mosquitto",
            System::Prosody => "prosody",
        }
    }

    /// The server's resident memory (VmRSS), KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        Endpoint { addr: self.addr, pid: self.pid }.rss_kib()
    }

    /// The server's CPU time so far, ms.
    pub(crate) fn cpu_ms(&self) -> Option<f64> {
        Endpoint { addr: self.addr, pid: self.pid }.cpu_ms()
    }

    /// Creates `names` (mosquitto takes anyone): on tern through the admin socket, a few at a
    /// time since each is an Argon2 hash in the daemon; on Prosody as account files.
    pub(crate) async fn add_users(&self, names: &[String], password: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        if let Some(p) = &self.prosody {
            p.register_copies(names, password).await?;
            return Ok(t.elapsed().as_secs_f64());
        }
        if self.system != System::Tern || names.is_empty() {
            return Ok(0.0);
        }
        let Some(sock) = self.admin.clone() else {
            eprintln!("no --admin-socket: assuming the {} users exist", names.len());
            return Ok(0.0);
        };
        let progress = Progress::start("adding users", names.len() as u64);
        brokers::add_users_by_socket(&sock, names, password, progress.done.clone()).await?;
        progress.finish();
        Ok(t.elapsed().as_secs_f64())
    }

    pub(crate) async fn stop(self) {
        if let Some(b) = self.started {
            b.stop().await;
        }
        if let Some(p) = self.prosody {
            p.broker.stop().await;
        }
        if let Some(p) = self.room_host {
            p.broker.stop().await;
        }
    }
}

/// The MUC service's domain, on the Prosody side: `rooms.<xmpp domain>`.
fn muc_domain(a: &TargetArgs) -> String {
    format!("rooms.{}", a.prosody.xmpp_domain)
}

/// One phone's identity on the target: tern wants a user and device, mosquitto a client id.
pub(crate) struct Phone {
    pub(crate) user: String,
    pub(crate) client_id: String,
    /// Loopback address to connect from, so that N phones never run out of ports.
    pub(crate) source: Option<IpAddr>,
}

impl Phone {
    /// Phone `i` of the scenario `tag` (user `<tag><i / devices>`, device (tern) or resource
    /// (Prosody) `d<i % devices>`).
    pub(crate) fn new(system: System, target: SocketAddr, tag: &str, i: usize, devices: usize) -> Phone {
        let user = format!("{tag}{}", i / devices);
        let client_id = match system {
            System::Tern | System::Prosody => format!("d{}", i % devices),
            System::Mosquitto => format!("{tag}{i}"),
        };
        Phone { user, client_id, source: source_ip(target, i) }
    }

    /// The CONNECT for this phone with `secret` (mosquitto: anonymous).
    pub(crate) fn opts<'a>(
        &'a self,
        system: System,
        secret: &'a str,
        clean: bool,
        keepalive_s: u16,
    ) -> ConnectOpts<'a> {
        let (user, password) = match system {
            System::Tern | System::Prosody => (Some(self.user.as_str()), Some(secret)),
            System::Mosquitto => (None, None),
        };
        ConnectOpts { client_id: &self.client_id, user, password, clean, keepalive_s }
    }
}

/// The users of `n` phones, `devices` per user.
pub(crate) fn user_names(tag: &str, n: usize, devices: usize) -> Vec<String> {
    (0..n.div_ceil(devices)).map(|u| format!("{tag}{u}")).collect()
}

/// 127.0.0.2, 127.0.0.3, … for a loopback target, `PER_SOURCE` phones each.
fn source_ip(target: SocketAddr, i: usize) -> Option<IpAddr> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let k = 2 + (i / PER_SOURCE) as u32;
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + k)))
}

/// A connected phone: the connection, the connect latency, and (tern, password login) its token.
pub(crate) struct Connected {
    pub(crate) conn: Link,
    pub(crate) latency: Duration,
    pub(crate) token: Option<String>,
}

/// Connects `phone`; on tern after a password login also waits for its `Down{token}`. Fails on
/// anything but CONNACK 0. On Prosody: a c2s login with `secret` as the password.
pub(crate) async fn connect_phone(
    t: &Target,
    phone: &Phone,
    secret: &str,
    clean: bool,
    keepalive_s: u16,
) -> anyhow::Result<Connected> {
    let (system, addr) = (t.system, t.addr);
    if system == System::Prosody {
        let (c2s, latency) = link::c2s_login(t, phone, secret).await?;
        return Ok(Connected { conn: Link::Xmpp(Box::new(c2s)), latency, token: None });
    }
    let want_token = system == System::Tern && !secret.starts_with("t1.");
    let attempt = async {
        let t = Instant::now();
        let (mut conn, _, code) =
            Conn::connect(addr, phone.source, &phone.opts(system, secret, clean, keepalive_s)).await?;
        let latency = t.elapsed();
        if code != 0 {
            bail!("CONNACK code {code}");
        }
        let mut token = None;
        while want_token && token.is_none() {
            let p = conn.read().await?;
            if let Some(publish) = p.publish() {
                let id = publish.packet_id;
                if let Ok(Down { body: Some(down::Body::Token(t)), .. }) = Down::decode(publish.payload) {
                    token = Some(t.token);
                }
                if let Some(id) = id {
                    conn.puback(id).await?;
                }
            }
        }
        anyhow::Ok(Connected { conn: Link::Mqtt(conn), latency, token })
    };
    tokio::time::timeout(CONNECT_LIMIT, attempt).await.context("connect took over 30 s")?
}

/// A progress line on stderr, redrawn four times a second until finished (on a terminal; into
/// a log, a line every 10 %).
pub(crate) struct Progress {
    pub(crate) done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(crate) fn start(label: &'static str, total: u64) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let t0 = Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let task = tokio::spawn(async move {
            let mut shown = None;
            loop {
                let done = d.load(Ordering::Relaxed);
                let tenth = (done * 10).checked_div(total).unwrap_or(10);
                if tty || shown != Some(tenth) {
                    draw(label, done, total, t0, tty);
                    shown = Some(tenth);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Progress { done, task }
    }

    pub(crate) fn finish(self) {
        self.task.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
    }
}

fn draw(label: &str, done: u64, total: u64, t0: Instant, tty: bool) {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
    let line = format!(
        "{label:<22} [{}{}] {done}/{total} {:.1} s ",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        t0.elapsed().as_secs_f64()
    );
    if tty {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Raises this process's open-file limit (and so its children's) as far as the kernel allows:
/// every phone is a socket here and in the server.
pub(crate) fn raise_nofile() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        // Raising the hard limit needs CAP_SYS_RESOURCE; without it, take the soft one up to it.
        let want = libc::rlimit { rlim_cur: nr_open as _, rlim_max: nr_open as _ };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// The scratch directory and the machine's load before the run.
pub(crate) struct Scratch {
    pub(crate) dir: PathBuf,
    remove: bool,
    pub(crate) loadavg_before: String,
}

impl Scratch {
    pub(crate) fn new(a: &TargetArgs, scenario: &str) -> anyhow::Result<Scratch> {
        let loadavg_before = crate::chat::loadavg();
        let (dir, temporary) = brokers::scratch_dir(a.data_dir.as_deref())?;
        eprintln!("tern-bench {scenario}: scratch dir {}", dir.display());
        Ok(Scratch { dir, remove: temporary && !a.keep_data, loadavg_before })
    }

    /// Removes the directory after a clean run; otherwise says where it is.
    pub(crate) fn done(self, clean: bool) {
        if self.remove && clean {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("scratch dir kept: {}", self.dir.display());
        }
    }
}

/// Runs `body` against tern, then against the reference (if any), stopping each system after
/// its part, and writes the report.
pub(crate) async fn run_both<F, Fut>(
    a: &TargetArgs,
    scenario: &'static str,
    settings: serde_json::Value,
    rows: Vec<Row>,
    notes: Vec<&'static str>,
    body: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Target>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figures>>,
{
    run_both_in(a, scenario, false, settings, rows, notes, body).await
}

/// [`run_both`], with `rooms`: tern federated with a Prosody MUC service, and the reference
/// Prosody with a MUC component of its own.
pub(crate) async fn run_both_in<F, Fut>(
    a: &TargetArgs,
    scenario: &'static str,
    rooms: bool,
    settings: serde_json::Value,
    rows: Vec<Row>,
    notes: Vec<&'static str>,
    body: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Target>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figures>>,
{
    let nofile = raise_nofile();
    eprintln!("tern-bench {scenario}: open-file limit {nofile}");
    let scratch = Scratch::new(a, scenario)?;
    let outcome = async {
        let mut systems = Vec::new();
        let tern = match rooms {
            true => Target::tern_with_rooms(a, &scratch.dir).await?,
            false => Target::tern(a, &scratch.dir).await?,
        };
        let tern = Arc::new(tern);
        let result = body(tern.clone()).await;
        stop(tern).await;
        systems.push(result?);
        let reference = match a.against {
            Against::Mosquitto => Some(Target::mosquitto(a, &scratch.dir).await?),
            Against::Prosody => Some(Target::prosody(a, &scratch.dir, rooms).await?),
            Against::None => None,
        };
        if let Some(m) = reference {
            let m = Arc::new(m);
            let result = body(m.clone()).await;
            stop(m).await;
            systems.push(result?);
        }
        anyhow::Ok(systems)
    }
    .await;
    let systems = match outcome {
        Ok(s) => s,
        Err(e) => {
            scratch.done(false);
            return Err(e);
        }
    };
    let report = SessionReport::new(scenario, settings, scratch.loadavg_before.clone(), systems, rows, notes);
    let clean = finish(&report, &a.json_path(scenario))?;
    scratch.done(clean);
    anyhow::ensure!(clean, "some clients failed or messages went missing (see the table and the JSON)");
    Ok(())
}

async fn stop(t: Arc<Target>) {
    match Arc::try_unwrap(t) {
        Ok(t) => t.stop().await,
        // A task still holds it: the child is killed on drop when the last handle goes.
        Err(_) => eprintln!("warning: the server is still referenced; it stops when the bench exits"),
    }
}

/// The chat message in a PUBLISH payload as its recipient gets it, as (id, body): tern sends a
/// `Down{chat}`, mosquitto the sender's very bytes, an `Up{chat}` (Prosody: no PUBLISH).
pub(crate) fn chat_of(system: System, p: &crate::raw_mqtt::Publish) -> Option<(String, String)> {
    use tern_schemas::v1::{up, Up};
    let payload = p.payload;
    match system {
        System::Tern if p.topic != "d" => None,
        System::Tern => match Down::decode(payload).ok()? {
            Down { id, num_id, body: Some(down::Body::Chat(c)), .. } => {
                Some((crate::chat::id_of(id, num_id), c.body))
            }
            _ => None,
        },
        System::Mosquitto => match Up::decode(payload).ok()? {
            Up { id, num_id, body: Some(up::Body::Chat(c)) } => {
                Some((crate::chat::id_of(id, num_id), c.body))
            }
            _ => None,
        },
        System::Prosody => None,
    }
}

/// The topic a sender publishes a chat on: tern's `u`, or the recipient's topic on mosquitto.
pub(crate) fn send_topic(system: System, mosquitto_topic: &str) -> &str {
    match system {
        System::Tern | System::Prosody => "u",
        System::Mosquitto => mosquitto_topic,
    }
}

/// Publishes `messages` (topic, payload) at QoS 1 with at most `window` unacknowledged, and
/// waits for every PUBACK (tern: each message is durable in its recipient's inbox). PUBLISHes
/// to the sender are acknowledged and otherwise ignored.
pub(crate) async fn send_all(
    conn: &mut Conn,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    window: usize,
) -> anyhow::Result<u64> {
    let (mut sent, mut acked, mut next_id) = (0u64, 0u64, 0u16);
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() || acked < sent {
        if (sent - acked) < window as u64 {
            if let Some((topic, payload)) = messages.next() {
                next_id = next_id.checked_add(1).unwrap_or(1);
                conn.send(&crate::raw_mqtt::publish_packet(&topic, Some(next_id), &payload)).await?;
                sent += 1;
                continue;
            }
        }
        let p = conn.read().await?;
        if p.puback_id().is_some() {
            acked += 1;
        } else if let Some(id) = p.publish().and_then(|p| p.packet_id) {
            conn.puback(id).await?;
        }
    }
    Ok(sent)
}
