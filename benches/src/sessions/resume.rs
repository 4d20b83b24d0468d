//! `resume`: N phones lose their TCP connection (a reset, no DISCONNECT); while they are away a
//! sender sends each of them M messages; then each comes back and the bench measures the time
//! and the bytes from its TCP connect until all M missed messages have arrived.
//!
//! tern: the phones come back with their session token (clean session 0) and the inbox sends
//! what they missed after CONNACK. mosquitto: clean session 0 with a QoS 1 subscription, so the
//! broker queued the messages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::time::Instant;

use super::{
    chat_of, connect_phone, run_both, send_all, send_topic, user_names, Figures, Phone, Progress, Row,
    System, Target, TargetArgs,
};
use crate::chat::{chat_up, message_id};
use crate::raw_mqtt::{Conn, SUBACK};
use crate::report::new_histogram;

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Phones that drop and come back [default: 200; --quick: 10].
    #[arg(long)]
    sessions: Option<usize>,
    /// Messages sent to each phone while it is away [default: 10; --quick: 3].
    #[arg(long)]
    missed: Option<u64>,
    /// Reconnects in progress at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

struct Settings {
    n: usize,
    missed: u64,
    concurrency: usize,
}

pub async fn run(a: ResumeArgs) -> anyhow::Result<()> {
    let q = a.target.quick;
    let s = Settings {
        n: a.sessions.unwrap_or(if q { 10 } else { 200 }),
        missed: a.missed.unwrap_or(if q { 3 } else { 10 }),
        concurrency: a.concurrency.max(1),
    };
    anyhow::ensure!((1..=100_000).contains(&s.n), "--sessions must be 1..=100000");
    anyhow::ensure!((1..=10_000).contains(&s.missed), "--missed must be 1..=10000");
    let settings = json!({
        "sessions": s.n, "missed_per_session": s.missed, "concurrency": s.concurrency,
        "mqtt": "3.1.1, QoS 1", "client": "tern-bench raw_mqtt",
    });
    let rows = vec![
        Row("resumed", "sessions resumed with nothing missing".into(), 0),
        Row("p50_ms", "time until usable, all missed in, p50, ms".into(), 2),
        Row("p99_ms", "  p99, ms".into(), 2),
        Row("bytes_per_resume", "bytes until usable, per session (both ways)".into(), 1),
        Row("bytes_per_missed", "  per missed message".into(), 1),
        Row("connect_bytes", "  of which CONNECT + CONNACK".into(), 1),
        Row("session_present", "CONNACKs with session present".into(), 0),
        Row("resumes_per_s", "resumes / s".into(), 1),
    ];
    let notes = vec![
        "a phone drops with a TCP reset (no DISCONNECT); the messages are sent and acknowledged (PUBACK) while it is away",
        "time: from before the phone's TCP connect until the last missed message arrived (each PUBACKed on arrival); bytes: MQTT bytes both ways in that time",
        "tern: token login, clean session 0, the inbox resends after the cursor; mosquitto: clean session 0, QoS 1 subscription, in-memory queue",
    ];
    let a = Arc::new(a);
    let s = Arc::new(s);
    run_both(&a.target, "resume", settings, rows, notes, |t| run_on(a.clone(), s.clone(), t)).await
}

async fn run_on(a: Arc<ResumeArgs>, s: Arc<Settings>, t: Arc<Target>) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    let mut users = user_names("r", s.n, 1);
    users.push("rsender".into());
    t.add_users(&users, &a.target.password).await?;
    let phones: Arc<Vec<Phone>> =
        Arc::new((0..s.n).map(|i| Phone::new(t.system, t.addr, "r", i, 1)).collect());

    // Everyone online once, then gone without a word.
    let progress = Progress::start("first connects", s.n as u64);
    let mut tokens = vec![String::new(); s.n];
    for (i, phone) in phones.iter().enumerate() {
        let mut c = connect_phone(t.system, t.addr, phone, &a.target.password, false, 60)
            .await
            .with_context(|| format!("first connect of phone {i}"))?;
        if t.system == System::Mosquitto {
            c.conn.subscribe(&format!("r/{i}")).await?;
            let p = c.conn.read().await?;
            anyhow::ensure!(p.kind == SUBACK, "expected SUBACK, got packet type {}", p.kind);
        }
        tokens[i] = c.token.unwrap_or_default();
        c.conn.abort();
        progress.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    progress.finish();
    // The server has to see the resets before the messages go out.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sender = Phone::new(t.system, t.addr, "rsender", 0, 1);
    let sender = Phone { user: "rsender".into(), ..sender };
    let mut c = connect_phone(t.system, t.addr, &sender, &a.target.password, true, 60).await?;
    let epoch = Instant::now();
    let messages = (0..s.n).flat_map(|i| {
        let peer = format!("r{i}@{}", a.target.domain);
        let topic = send_topic(t.system, &format!("r/{i}")).to_owned();
        (0..s.missed).map(move |j| (topic.clone(), chat_up(i as u64 * 10_000 + j, &peer, 0)))
    });
    let sent = send_all(&mut c.conn, messages.collect::<Vec<_>>(), 32).await?;
    eprintln!("{sent} messages sent to the absent phones in {:.2} s", epoch.elapsed().as_secs_f64());
    c.conn.disconnect().await;

    // Back, all at once (at most `concurrency` in progress).
    let progress = Progress::start("resuming", s.n as u64);
    let sem = Arc::new(tokio::sync::Semaphore::new(s.concurrency));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        // Invariant: the semaphore is never closed.
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (t, s, phones, done) = (t.clone(), s.clone(), phones.clone(), progress.done.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                resume_one(&t, &phones[i], i, &token, s.missed),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("not all missed messages within 30 s")));
            drop(permit);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r.map_err(|e| format!("phone {i}: {e:#}"))
        });
    }
    let (mut hist, mut ok, mut bytes, mut connect_bytes, mut present) =
        (new_histogram(), 0u64, 0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(r)) => {
                ok += 1;
                hist.saturating_record(r.elapsed.as_micros().max(1) as u64);
                bytes += r.bytes;
                connect_bytes += r.connect_bytes;
                present += r.session_present as u64;
            }
            Ok(Err(e)) => f.fail(e),
            Err(e) => f.fail(format!("task: {e}")),
        }
    }
    let elapsed = t0.elapsed();
    progress.finish();
    let per = |x: u64| (ok > 0).then(|| x as f64 / ok as f64);
    f.set("resumed", Some(ok as f64));
    f.set("p50_ms", Some(hist.value_at_quantile(0.5) as f64 / 1000.0));
    f.set("p99_ms", Some(hist.value_at_quantile(0.99) as f64 / 1000.0));
    f.set("bytes_per_resume", per(bytes));
    f.set("bytes_per_missed", per(bytes).map(|b| b / s.missed as f64));
    f.set("connect_bytes", per(connect_bytes));
    f.set("session_present", Some(present as f64));
    f.set("resumes_per_s", Some(ok as f64 / elapsed.as_secs_f64()));
    Ok(f)
}

struct Resumed {
    elapsed: Duration,
    bytes: u64,
    connect_bytes: u64,
    session_present: bool,
}

/// Reconnects phone `i` and reads until the `missed` messages sent to it have all arrived.
async fn resume_one(
    t: &Target,
    phone: &Phone,
    i: usize,
    token: &str,
    missed: u64,
) -> anyhow::Result<Resumed> {
    let start = Instant::now();
    let (mut conn, session_present, code) =
        Conn::connect(t.addr, phone.source, &phone.opts(t.system, token, false, 60)).await?;
    if code != 0 {
        bail!("CONNACK code {code}");
    }
    // CONNACK is 4 bytes; what came in with it in the same read is already the missed mail.
    let connect_bytes = conn.bytes_out + 4;
    let want: HashSet<String> = (0..missed).map(|j| message_id(i as u64 * 10_000 + j)).collect();
    let mut got = HashSet::new();
    while got.len() < want.len() {
        let p = conn.read().await?;
        let Some(publish) = p.publish() else { continue };
        if let Some((id, _)) = chat_of(t.system, &publish) {
            if want.contains(&id) {
                got.insert(id);
            }
        }
        if let Some(id) = publish.packet_id {
            conn.puback(id).await?;
        }
    }
    let elapsed = start.elapsed();
    let bytes = conn.bytes_in + conn.bytes_out;
    conn.disconnect().await;
    Ok(Resumed { elapsed, bytes, connect_bytes, session_present })
}
