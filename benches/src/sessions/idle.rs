//! `idle`: N authenticated phones stay connected and silent for `--hold` seconds, pinging every
//! `--keepalive` seconds. Reports the server's resident memory per session (VmRSS from /proc
//! before the first connect and once all are up) and the keepalive bytes per session per hour.
//!
//! On tern every phone first logs in once with its password, for its session token, and
//! disconnects; the held sessions then log in with the token, so that the baseline is taken
//! after the password hashing and the per-session figure is the sessions' alone (the memory
//! the logins left behind is reported apart).
//!
//! The phones connect from 127.0.0.2, 127.0.0.3, … (10,000 each) so that N is not bounded by
//! the ephemeral ports of one source address.
//!
//! Against Prosody every session is a c2s login with the password (there are no tokens), and
//! its keepalive is one whitespace byte (RFC 6120 §4.6.1) every `--keepalive` seconds: the same
//! interval as the phones' MQTT keepalive (60 s, tern's phones' default), so the hourly bytes
//! compare one keepalive scheme with the other at the same liveness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::pass::{close_all, connect_all, How};
use super::{connect_phone, run_both, user_names, Figures, Phone, Progress, Row, System, Target, TargetArgs};

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sessions to hold [default: 10000; --quick: 50].
    #[arg(long)]
    sessions: Option<usize>,
    /// Seconds to hold them once all are up [default: 120; --quick: 3].
    #[arg(long)]
    hold: Option<u64>,
    /// MQTT keepalive, seconds; each phone sends PINGREQ this often [default: 60; --quick: 1].
    #[arg(long)]
    keepalive: Option<u16>,
    /// Connects in progress at once [default: 32; --quick: 4].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Devices per user (tern); 1, the default, is the fair measure.
    #[arg(long, default_value_t = 1)]
    devices_per_user: usize,
}

/// Where the hold is: phones snapshot their byte counters when it starts and report at the end.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Connecting,
    Holding,
    Done,
}

struct Settings {
    n: usize,
    hold: Duration,
    keepalive: u16,
}

impl IdleArgs {
    fn concurrency(&self) -> usize {
        super::concurrency(self.concurrency, self.target.quick)
    }
}

pub async fn run(a: IdleArgs) -> anyhow::Result<()> {
    let q = a.target.quick;
    let s = Settings {
        n: a.sessions.unwrap_or(if q { 50 } else { 10_000 }),
        hold: Duration::from_secs(a.hold.unwrap_or(if q { 3 } else { 120 })),
        keepalive: a.keepalive.unwrap_or(if q { 1 } else { 60 }),
    };
    anyhow::ensure!((1..=1_000_000).contains(&s.n), "--sessions must be 1..=1000000");
    anyhow::ensure!(s.keepalive >= 1, "--keepalive must be at least 1 s");
    anyhow::ensure!(
        a.concurrency() >= 1 && a.devices_per_user >= 1,
        "--concurrency and --devices-per-user ≥ 1"
    );
    let settings = json!({
        "sessions": s.n, "hold_s": s.hold.as_secs(), "keepalive_s": s.keepalive,
        "devices_per_user": a.devices_per_user, "mqtt": "3.1.1", "client": "tern-bench raw_mqtt",
    });
    let rows = vec![
        Row("sessions", "sessions held".into(), 0),
        Row("rss_kib_per_session", "server RSS per session, KiB".into(), 2),
        Row("rss_mib_start", "  server RSS at start, before users and logins, MiB".into(), 1),
        Row("rss_mib_before", "  server RSS before the held sessions connect, MiB".into(), 1),
        Row("rss_mib_all_up", "  server RSS with all sessions up, MiB".into(), 1),
        Row("rss_mib_end", "  server RSS at the end of the hold, MiB".into(), 1),
        Row("keepalive_bytes_per_session_hour", "keepalive bytes / session / hour (on the wire)".into(), 0),
        Row("server_cpu_ms_hold", "server CPU during the hold, ms".into(), 0),
        Row("setup_s", "all sessions up in, s (tern: token logins)".into(), 1),
        Row("rss_kib_per_password_login", "tern: server RSS growth / password login, KiB".into(), 1),
        Row("rss_mib_after_logins", "  server RSS after the logins, all closed, MiB".into(), 1),
        Row("loadgen_rss_kib_per_session", "load generator RSS per session, KiB".into(), 2),
    ];
    let notes = vec![
        "RSS: VmRSS of the server process from /proc; per session = (all up − before) / sessions",
        "keepalive bytes: MQTT bytes both ways (PINGREQ/PINGRESP and anything else) during the hold, no TCP/IP headers",
        "tern: each phone first logs in once with its password (Argon2) and disconnects; the held sessions log in with their token; mosquitto: anonymous",
        "prosody: c2s sessions (SASL PLAIN, bind, initial presence); keepalive = one whitespace byte per --keepalive (no answer), XMPP bytes both ways",
    ];
    let a = Arc::new(a);
    let s = Arc::new(s);
    run_both(&a.target, "idle", settings, rows, notes, |t| run_on(a.clone(), s.clone(), t)).await
}

async fn run_on(a: Arc<IdleArgs>, s: Arc<Settings>, t: Arc<Target>) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    f.set("rss_mib_start", t.rss_kib().map(|k| k as f64 / 1024.0));
    let users = user_names("i", s.n, a.devices_per_user);
    t.add_users(&users, &a.target.password).await?;
    let phones: Arc<Vec<Phone>> =
        Arc::new((0..s.n).map(|i| Phone::new(t.system, t.addr, "i", i, a.devices_per_user)).collect());
    // tern: every phone logs in once with its password (an Argon2 check) for its token, as a
    // phone does once per install, and holds its session from a token login: the memory of
    // the hashes is then not counted as the sessions'.
    let secrets = match t.system {
        System::Tern => {
            let how = How { rate: None, concurrency: a.concurrency(), keepalive_s: s.keepalive };
            let rss_before = t.rss_kib();
            let logins = connect_all(
                how,
                &t,
                &phones,
                vec![Some(a.target.password.clone()); s.n],
                "password logins",
                &mut f,
            )
            .await;
            let per = |after: Option<u64>| {
                after.zip(rss_before).map(|(b, a)| (b as f64 - a as f64) / logins.ok.max(1) as f64)
            };
            f.set("rss_kib_per_password_login", per(t.rss_kib()));
            close_all(logins.conns).await;
            f.set("rss_mib_after_logins", t.rss_kib().map(|k| k as f64 / 1024.0));
            logins.tokens
        }
        System::Mosquitto => vec![Some(String::new()); s.n],
        System::Prosody => vec![Some(a.target.password.clone()); s.n],
    };
    // Let the server settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = t.rss_kib();
    let gen0 = self_rss_kib();
    let (stage_tx, stage) = watch::channel(Stage::Connecting);
    let up = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("connecting (held)", s.n as u64);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency()));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut curve = Vec::new();
    let mut next_sample = Instant::now();
    for (i, secret) in secrets.into_iter().enumerate() {
        let Some(secret) = secret else {
            // Its password login failed, and was counted.
            progress.done.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if Instant::now() >= next_sample {
            curve.push(json!([up.load(Ordering::Relaxed), t.rss_kib()]));
            next_sample += Duration::from_secs(2);
        }
        // Invariant: the semaphore is never closed.
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (t, s, stage, up, done) =
            (t.clone(), s.clone(), stage.clone(), up.clone(), progress.done.clone());
        let phones = phones.clone();
        tasks.spawn(async move {
            let r = connect_phone(&t, &phones[i], &secret, false, s.keepalive).await;
            drop(permit);
            done.fetch_add(1, Ordering::Relaxed);
            let c = r.map_err(|e| format!("phone {i}: {e:#}"))?;
            up.fetch_add(1, Ordering::Relaxed);
            hold(c.conn, t.system, i, s.keepalive, stage).await
        });
    }
    // Wait for the last connects (each bounded by CONNECT_LIMIT).
    while progress.done.load(Ordering::Relaxed) < s.n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish();
    let setup_s = t0.elapsed().as_secs_f64();
    let n_up = up.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_up = t.rss_kib();
    curve.push(json!([n_up, rss_up]));
    let gen_up = self_rss_kib();
    eprintln!("{n_up} sessions up in {setup_s:.1} s; holding for {} s", s.hold.as_secs());
    let cpu0 = t.cpu_ms();
    let _ = stage_tx.send(Stage::Holding);
    tokio::time::sleep(s.hold).await;
    let cpu1 = t.cpu_ms();
    let rss_end = t.rss_kib();
    let _ = stage_tx.send(Stage::Done);
    let mut hold_bytes = 0u64;
    let mut held = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(b)) => {
                hold_bytes += b;
                held += 1;
            }
            Ok(Err(e)) => f.fail(e),
            Err(e) => f.fail(format!("task: {e}")),
        }
    }
    let per = |kib: Option<u64>| kib.zip(rss0).map(|(b, a)| (b as f64 - a as f64) / n_up.max(1) as f64);
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    f.set("sessions", Some(held as f64));
    f.set("rss_kib_per_session", per(rss_up));
    f.set("rss_mib_before", mib(rss0));
    f.set("rss_mib_all_up", mib(rss_up));
    f.set("rss_mib_end", mib(rss_end));
    let per_hour = 3600.0 / s.hold.as_secs_f64();
    f.set("keepalive_bytes_per_session_hour", (held > 0).then(|| hold_bytes as f64 / held as f64 * per_hour));
    f.set("server_cpu_ms_hold", cpu1.zip(cpu0).map(|(b, a)| b - a));
    f.set("setup_s", Some(setup_s));
    f.set(
        "loadgen_rss_kib_per_session",
        gen_up.zip(gen0).map(|(b, a)| (b as f64 - a as f64) / n_up.max(1) as f64),
    );
    f.detail.insert("rss_curve_sessions_kib".into(), json!(curve));
    Ok(f)
}

/// Keeps one session alive until the stage is `Done`: a keepalive (PINGREQ, or a space on
/// XMPP) every `keepalive` (the first one offset by the phone's number, so that pings spread
/// out), PUBACK for anything the server sends. Returns the bytes both ways during the hold.
async fn hold(
    mut conn: super::Link,
    system: System,
    i: usize,
    keepalive: u16,
    mut stage: watch::Receiver<Stage>,
) -> Result<u64, String> {
    let period = Duration::from_secs(keepalive as u64);
    let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
    let mut ping = tokio::time::interval_at(Instant::now() + offset, period);
    let mut at_start = 0;
    loop {
        tokio::select! {
            changed = stage.changed() => {
                let s = *stage.borrow();
                match s {
                    _ if changed.is_err() => return Err("stage channel closed".into()),
                    Stage::Holding => at_start = conn.bytes(),
                    Stage::Done => return Ok(conn.bytes() - at_start),
                    Stage::Connecting => {}
                }
            }
            _ = ping.tick() => conn.keepalive().await.map_err(|e| format!("phone {i} ping: {e:#}"))?,
            p = conn.read() => {
                let p = p.map_err(|e| format!("phone {i}: {e:#}"))?;
                conn.handle(system, p).await.map_err(|e| format!("phone {i}: {e:#}"))?;
            }
        }
    }
}

/// This process's VmRSS, KiB.
fn self_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
