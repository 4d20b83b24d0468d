//! `resume`: N phones lose their TCP connection (a reset, no DISCONNECT); while they are away a
//! sender sends each of them M messages; then each comes back and the bench measures the time
//! and the bytes from its TCP connect until all M missed messages have arrived.
//!
//! tern: the phones come back with their session token (clean session 0) and the inbox sends
//! what they missed after CONNACK. mosquitto: clean session 0 with a QoS 1 subscription, so the
//! broker queued the messages. Prosody: XEP-0198 (mod_smacks): each client enabled resumption
//! before its initial presence, and comes back with SASL PLAIN and `<resume previd h/>` instead
//! of binding (§5); the server resends what it had not acknowledged. If resumption fails, the
//! client binds a fresh session instead (counted), which gets what Prosody stored offline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::time::Instant;

use super::link::{c2s_login_managed, jid_of, C2s};
use super::{
    connect_phone, run_both, send_topic, user_names, Figures, Link, Outgoing, Phone, Progress, Row, System,
    Target, TargetArgs,
};
use crate::chat::message_id;
use crate::raw_mqtt::{Conn, SUBACK};
use crate::report::new_histogram;
use crate::xmpp::conn::Conn as C2sConn;
use crate::xmpp::smacks::{self, Managed};

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
        Row("connect_bytes", "  of which CONNECT + CONNACK (XMPP: up to <resumed/>)".into(), 1),
        Row("session_present", "CONNACKs with session present (XMPP: <resumed/>)".into(), 0),
        Row("fresh_logins", "resumption failed, fresh login instead".into(), 0),
        Row("resumes_per_s", "resumes / s".into(), 1),
    ];
    let notes = vec![
        "a phone drops with a TCP reset (no DISCONNECT); the messages are sent and acknowledged (PUBACK) while it is away",
        "time: from before the phone's TCP connect until the last missed message arrived (each PUBACKed on arrival); bytes: MQTT bytes both ways in that time",
        "tern: token login, clean session 0, the inbox resends after the cursor; mosquitto: clean session 0, QoS 1 subscription, in-memory queue",
        "prosody: XEP-0198 via mod_smacks (hibernation 600 s, in memory): SASL PLAIN (PBKDF2), <resume previd h/>, the unacknowledged stanzas resent; each answered with <a h/> when the server asks; the sender's messages are not acknowledged, an iq round trip confirms the server has them",
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
    let mut comebacks = Vec::with_capacity(s.n);
    for (i, phone) in phones.iter().enumerate() {
        let (link, comeback) = first_connect(&t, phone, i, &a.target.password)
            .await
            .with_context(|| format!("first connect of phone {i}"))?;
        comebacks.push(comeback);
        link.abort();
        progress.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    progress.finish();
    // The server has to see the resets before the messages go out.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sender = Phone::new(t.system, t.addr, "rsender", 0, 1);
    let sender = Phone { user: "rsender".into(), ..sender };
    let c = connect_phone(&t, &sender, &a.target.password, true, 60).await?;
    let mut conn = c.conn;
    let epoch = Instant::now();
    let messages = (0..s.n).flat_map(|i| {
        let topic = send_topic(t.system, &format!("r/{i}")).to_owned();
        (0..s.missed).map(move |j| Outgoing {
            topic: topic.clone(),
            peer: format!("r{i}"),
            k: i as u64 * 10_000 + j,
            sent_us: 0,
        })
    });
    let sent = conn.send_chats(&t, messages.collect::<Vec<_>>(), 32).await?;
    eprintln!("{sent} messages sent to the absent phones in {:.2} s", epoch.elapsed().as_secs_f64());
    conn.close().await;

    // Back, all at once (at most `concurrency` in progress).
    let progress = Progress::start("resuming", s.n as u64);
    let sem = Arc::new(tokio::sync::Semaphore::new(s.concurrency));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, comeback) in comebacks.into_iter().enumerate() {
        // Invariant: the semaphore is never closed.
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (t, s, phones, done) = (t.clone(), s.clone(), phones.clone(), progress.done.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                resume_one(&t, &phones[i], i, comeback, s.missed),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("not all missed messages within 30 s")));
            drop(permit);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r.map_err(|e| format!("phone {i}: {e:#}"))
        });
    }
    let (mut hist, mut ok, mut bytes, mut connect_bytes, mut present, mut fresh) =
        (new_histogram(), 0u64, 0u64, 0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(r)) => {
                ok += 1;
                hist.saturating_record(r.elapsed.as_micros().max(1) as u64);
                bytes += r.bytes;
                connect_bytes += r.connect_bytes;
                present += r.session_present as u64;
                fresh += r.fresh_login as u64;
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
    f.set("fresh_logins", Some(fresh as f64));
    f.set("resumes_per_s", Some(ok as f64 / elapsed.as_secs_f64()));
    Ok(f)
}

struct Resumed {
    elapsed: Duration,
    bytes: u64,
    connect_bytes: u64,
    session_present: bool,
    fresh_login: bool,
}

/// How a phone comes back: with its token (tern; empty for mosquitto), or by XEP-0198 after
/// SASL with its password.
enum Comeback {
    Token(String),
    Managed(Managed, String),
}

/// Phone `i` online once, as it will come back: mosquitto with its QoS 1 subscription,
/// Prosody with stream management enabled.
async fn first_connect(
    t: &Target,
    phone: &Phone,
    i: usize,
    password: &str,
) -> anyhow::Result<(Link, Comeback)> {
    if t.system == System::Prosody {
        let mut c2s = c2s_login_managed(t, phone, password).await?;
        let sm = c2s.sm.take().context("stream management not enabled")?;
        return Ok((Link::Xmpp(Box::new(c2s)), Comeback::Managed(sm, password.to_owned())));
    }
    let mut c = connect_phone(t, phone, password, false, 60).await?;
    if t.system == System::Mosquitto {
        let conn = c.conn.mqtt()?;
        conn.subscribe(&format!("r/{i}")).await?;
        let p = conn.read().await?;
        anyhow::ensure!(p.kind == SUBACK, "expected SUBACK, got packet type {}", p.kind);
    }
    Ok((c.conn, Comeback::Token(c.token.unwrap_or_default())))
}

/// The first step of coming back: a connection on which the missed messages will arrive, with
/// whether the session was still there, the bytes up to that answer, and whether it had to be
/// a fresh login.
async fn come_back(t: &Target, phone: &Phone, comeback: Comeback) -> anyhow::Result<(Link, bool, u64, bool)> {
    match comeback {
        Comeback::Token(token) => {
            let (conn, session_present, code) =
                Conn::connect(t.addr, phone.source, &phone.opts(t.system, &token, false, 60)).await?;
            if code != 0 {
                bail!("CONNACK code {code}");
            }
            // CONNACK is 4 bytes; what came in with it in the same read is already missed mail.
            let connect_bytes = conn.bytes_out + 4;
            Ok((Link::Mqtt(conn), session_present, connect_bytes, false))
        }
        Comeback::Managed(sm, password) => {
            let jid = jid_of(t, phone)?;
            let a = C2sConn::authenticate(t.addr, phone.source, &jid, &password).await?;
            let mut conn = a.conn;
            if smacks::resume(&mut conn, &sm).await? {
                let connect_bytes = conn.bytes_in + conn.bytes_out;
                return Ok((Link::Xmpp(Box::new(C2s { conn, sm: Some(sm) })), true, connect_bytes, false));
            }
            // The session is gone: a new one, which gets what the server stored offline.
            conn.bind(&a.features, &phone.client_id).await?;
            conn.send_initial_presence().await?;
            let connect_bytes = conn.bytes_in + conn.bytes_out;
            Ok((Link::Xmpp(Box::new(C2s { conn, sm: None })), false, connect_bytes, true))
        }
    }
}

/// Reconnects phone `i` and reads until the `missed` messages sent to it have all arrived.
async fn resume_one(
    t: &Target,
    phone: &Phone,
    i: usize,
    comeback: Comeback,
    missed: u64,
) -> anyhow::Result<Resumed> {
    let start = Instant::now();
    let (mut conn, session_present, connect_bytes, fresh_login) = come_back(t, phone, comeback).await?;
    let want: HashSet<String> = (0..missed).map(|j| message_id(i as u64 * 10_000 + j)).collect();
    let mut got = HashSet::new();
    while got.len() < want.len() {
        if let Some((id, _)) = conn.next_chat(t.system).await? {
            if want.contains(&id) {
                got.insert(id);
            }
        }
    }
    let elapsed = start.elapsed();
    let bytes = conn.bytes();
    conn.close().await;
    Ok(Resumed { elapsed, bytes, connect_bytes, session_present, fresh_login })
}
