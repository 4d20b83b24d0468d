//! `fanout`: one phone sends each message to K recipients. tern has no group chat rooms yet, so
//! the sender sends K 1:1 messages per round (`Up{chat}` to each recipient); mosquitto gets one
//! PUBLISH per round on a topic the K recipients subscribe to. Reports deliveries per second and
//! the latency over all recipients (send time in the body, same process clock).
//!
//! Prosody gets what tern gets: K 1:1 `<message type='chat'/>` per round from one c2s client
//! to K c2s clients of the same server (a MUC room would be the equivalent of a tern room
//! variant, which this build does not have).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    connect_phone, run_both, send_topic, user_names, Figures, Outgoing, Phone, Progress, Row, System, Target,
    TargetArgs,
};
use crate::chat::parse_message_id;
use crate::raw_mqtt::SUBACK;
use crate::report::new_histogram;

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Recipients of every message [default: 100; --quick: 10].
    #[arg(long)]
    recipients: Option<usize>,
    /// Rounds: messages the sender sends to all recipients [default: 100; --quick: 20].
    #[arg(long)]
    messages: Option<u64>,
    /// Unacknowledged PUBLISHes the sender allows itself.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
}

const TOPIC: &str = "fan";

pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    let q = a.target.quick;
    let k = a.recipients.unwrap_or(if q { 10 } else { 100 });
    let m = a.messages.unwrap_or(if q { 20 } else { 100 });
    anyhow::ensure!((1..=10_000).contains(&k), "--recipients must be 1..=10000");
    anyhow::ensure!((1..=100_000).contains(&m), "--messages must be 1..=100000");
    let settings = json!({
        "recipients": k, "messages": m, "deliveries": k as u64 * m, "inflight": a.inflight.max(1),
        "mqtt": "3.1.1, QoS 1", "client": "tern-bench raw_mqtt",
    });
    let rows = vec![
        Row("delivered", "deliveries (messages × recipients)".into(), 0),
        Row("deliveries_per_s", "deliveries / s".into(), 0),
        Row("p50_ms", "latency over all recipients, p50, ms".into(), 2),
        Row("p99_ms", "  p99, ms".into(), 2),
        Row("max_ms", "  max, ms".into(), 2),
        Row("sender_bytes_per_round", "sender's bytes per round (both ways)".into(), 1),
        Row("server_cpu_us_per_delivery", "server CPU µs / delivery".into(), 1),
    ];
    let notes = vec![
        "tern: no rooms (MUC) in this build, so a round is K 1:1 Up{chat}, each stored and fsynced for its recipient; mosquitto: one QoS 1 PUBLISH to a topic with K QoS 1 subscribers",
        "latency: from just before the sender writes a round to each recipient's arrival; deliveries/s over the whole run",
        "prosody: a round is K 1:1 <message type='chat'/> from one c2s client, sent flat out (XMPP has no per-message acknowledgement without XEP-0198), then one iq round trip; in memory",
    ];
    let a = Arc::new(a);
    run_both(&a.target, "fanout", settings, rows, notes, |t| run_on(a.clone(), t, k, m)).await
}

/// What a recipient waits for: `rounds` messages, whose ids are `round * stride + recipient`.
#[derive(Clone, Copy)]
struct Expect {
    rounds: u64,
    stride: u64,
}

/// What one recipient saw.
struct Got {
    hist: hdrhistogram::Histogram<u64>,
    delivered: u64,
    last: Instant,
}

async fn run_on(a: Arc<FanoutArgs>, t: Arc<Target>, k: usize, m: u64) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    let mut users = user_names("f", k, 1);
    users.push("fsender".into());
    t.add_users(&users, &a.target.password).await?;
    let epoch = Instant::now();
    let progress = Progress::start("recipients", k as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut readies = Vec::new();
    for i in 0..k {
        let (ready_tx, ready) = oneshot::channel();
        readies.push(ready);
        let phone = Phone::new(t.system, t.addr, "f", i, 1);
        let (t, password, done) = (t.clone(), a.target.password.clone(), progress.done.clone());
        tasks.spawn(async move {
            let expect = Expect { rounds: m, stride: id_stride(t.system, k) };
            let r = recipient(&t, &phone, &password, expect, epoch, ready_tx, done).await;
            r.map_err(|e| format!("recipient {i}: {e:#}"))
        });
    }
    for r in readies {
        // A recipient that failed to connect drops its sender; its task reports why.
        let _ = r.await;
    }
    progress.finish();
    let sender = Phone { user: "fsender".into(), ..Phone::new(t.system, t.addr, "fsender", 0, 1) };
    let mut c = connect_phone(&t, &sender, &a.target.password, true, 60).await?;
    let (b0, cpu0, t0) = (c.conn.bytes(), t.cpu_ms(), Instant::now());
    let system = t.system;
    let stride = id_stride(system, k);
    let rounds = (0..m).flat_map(move |j| {
        let sent_us = epoch.elapsed().as_micros() as u64;
        let to: Vec<Option<usize>> = match system {
            System::Tern | System::Prosody => (0..k).map(Some).collect(),
            System::Mosquitto => vec![None],
        };
        to.into_iter().map(move |r| Outgoing {
            topic: send_topic(system, TOPIC).to_owned(),
            peer: r.map_or(String::new(), |r| format!("f{r}")),
            // tern dedupes by (sender, message id): each recipient's copy needs its own id.
            k: j * stride + r.unwrap_or(0) as u64,
            sent_us,
        })
    });
    c.conn.send_chats(&t, rounds, a.inflight.max(1)).await?;
    let sender_bytes = c.conn.bytes() - b0;
    let (mut hist, mut delivered, mut last) = (new_histogram(), 0u64, t0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(g)) => {
                hist.add(&g.hist).context("merging histograms")?;
                delivered += g.delivered;
                last = last.max(g.last);
            }
            Ok(Err(e)) => f.fail(e),
            Err(e) => f.fail(format!("task: {e}")),
        }
    }
    let cpu = t.cpu_ms().zip(cpu0).map(|(b, a)| b - a);
    c.conn.close().await;
    let ms = |q: f64| Some(hist.value_at_quantile(q) as f64 / 1000.0);
    f.set("delivered", Some(delivered as f64));
    f.set("deliveries_per_s", Some(delivered as f64 / (last - t0).as_secs_f64().max(1e-6)));
    f.set("p50_ms", ms(0.5));
    f.set("p99_ms", ms(0.99));
    f.set("max_ms", Some(hist.max() as f64 / 1000.0));
    f.set("sender_bytes_per_round", Some(sender_bytes as f64 / m as f64));
    f.set("server_cpu_us_per_delivery", cpu.map(|c| c * 1000.0 / delivered.max(1) as f64));
    Ok(f)
}

/// Message ids per round: one per recipient on tern and Prosody, one in all on mosquitto.
fn id_stride(system: System, k: usize) -> u64 {
    match system {
        System::Tern | System::Prosody => k as u64,
        System::Mosquitto => 1,
    }
}

/// One recipient: connects (mosquitto: and subscribes), says it is ready, then reads until it
/// has every round once (30 s at most after the last arrival).
async fn recipient(
    t: &Target,
    phone: &Phone,
    password: &str,
    expect: Expect,
    epoch: Instant,
    ready: oneshot::Sender<()>,
    done: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Got> {
    let mut c = connect_phone(t, phone, password, true, 60).await?;
    if t.system == System::Mosquitto {
        let conn = c.conn.mqtt()?;
        conn.subscribe(TOPIC).await?;
        let p = conn.read().await?;
        anyhow::ensure!(p.kind == SUBACK, "expected SUBACK, got packet type {}", p.kind);
    }
    c.conn.settle().await?;
    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(());
    let mut got = Got { hist: new_histogram(), delivered: 0, last: Instant::now() };
    let mut seen = HashSet::new();
    let m = expect.rounds;
    while got.delivered < m {
        let chat = match tokio::time::timeout(Duration::from_secs(30), c.conn.next_chat(t.system)).await {
            Ok(chat) => chat?,
            Err(_) => bail!("{} of {m} messages after 30 s of silence", got.delivered),
        };
        if let Some((id, body)) = chat {
            let now = epoch.elapsed().as_micros() as u64;
            match body.parse::<u64>() {
                Ok(sent_us)
                    if parse_message_id(&id).is_some_and(|n| n / expect.stride < m)
                        && seen.insert(id.clone()) =>
                {
                    got.delivered += 1;
                    got.last = Instant::now();
                    got.hist.saturating_record(now.saturating_sub(sent_us).max(1));
                }
                _ => bail!("unexpected or duplicate message {id:?}"),
            }
        }
    }
    c.conn.close().await;
    Ok(got)
}
