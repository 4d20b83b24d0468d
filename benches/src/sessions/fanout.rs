//! `fanout`: one phone sends each message to K recipients. Reports deliveries per second, the
//! latency over all recipients (send time in the body, same process clock) and the bytes per
//! delivery on the recipients' links, and checks that every recipient got every message once.
//!
//! Without `--room`, the sender sends K 1:1 messages per round (`Up{chat}` to each recipient);
//! Prosody gets the same, K 1:1 `<message type='chat'/>` from one c2s client to K c2s clients
//! of the same server.
//!
//! With `--room`, the K recipients and the sender meet in one group chat room (XEP-0045) and a
//! round is one groupchat message. tern hosts no rooms: as the occupant on its users' behalf it
//! joins rooms of a remote MUC service, here a Prosody with a MUC component that the bench
//! starts and federates with tern as the `federation` scenario does. The K+1 phones join with
//! `Up{room_join}`, the sender posts `Up{chat}` of type GROUPCHAT to the room's JID, and the
//! recipients get `Down{chat}` groupchat (the sending device gets no echo). `--against prosody`
//! has the same room on a Prosody's own MUC component, joined directly by K+1 c2s clients
//! (presence to room/nick); the room's echo to the sender is not counted.
//!
//! mosquitto gets one PUBLISH per round on a topic the K recipients subscribe to, in both modes:
//! a topic with subscribers is what MQTT has for a room.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    concurrency, connect_phone, room, run_both_in, send_topic, user_names, Figures, Outgoing, Phone,
    Progress, Row, System, Target, TargetArgs,
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
    /// One groupchat message per round to a room (XEP-0045) that the K recipients and the sender
    /// have joined, instead of K 1:1 messages [--quick: 5 recipients].
    #[arg(long)]
    room: bool,
}

const TOPIC: &str = "fan";

pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    let q = a.target.quick;
    let k = a.recipients.unwrap_or(match (q, a.room) {
        (true, true) => 5,
        (true, false) => 10,
        (false, _) => 100,
    });
    let m = a.messages.unwrap_or(if q { 20 } else { 100 });
    // tern keeps track of the first 1000 occupants of a room (docs/PROTOCOL.md).
    let most = if a.room { 999 } else { 10_000 };
    anyhow::ensure!((1..=most).contains(&k), "--recipients must be 1..={most}");
    anyhow::ensure!((1..=100_000).contains(&m), "--messages must be 1..=100000");
    let settings = json!({
        "recipients": k, "messages": m, "deliveries": k as u64 * m, "inflight": a.inflight.max(1),
        "mqtt": "3.1.1, QoS 1", "client": "tern-bench raw_mqtt", "room": a.room,
    });
    let rows = vec![
        Row("delivered", "deliveries (messages × recipients)".into(), 0),
        Row("deliveries_per_s", "deliveries / s".into(), 0),
        Row("p50_ms", "latency over all recipients, p50, ms".into(), 2),
        Row("p99_ms", "  p99, ms".into(), 2),
        Row("max_ms", "  max, ms".into(), 2),
        Row("sender_bytes_per_round", "sender's bytes per round (both ways)".into(), 1),
        Row("recipient_bytes_per_delivery", "recipients' bytes per delivery (both ways)".into(), 1),
        Row("server_cpu_us_per_delivery", "server CPU µs / delivery".into(), 1),
        Row("room_service_cpu_us_per_delivery", "  tern's room service (Prosody MUC), µs".into(), 1),
        Row("total_cpu_us_per_delivery", "  both servers, µs".into(), 1),
    ];
    let notes = if a.room {
        vec![
            "tern --room: K+1 phones join one room of a Prosody MUC component federated with tern (s2s, STARTTLS + dialback); a round is one Up{chat} type GROUPCHAT to the room, which sends it to each occupant over s2s; tern stores it in each user's inbox and delivers Down{chat}; the sending device gets no echo",
            "prosody --room: K+1 c2s clients join one room of its own MUC component; a round is one <message type='groupchat'/> sent flat out (no per-message acknowledgement without XEP-0198), then one iq round trip; the room's echo to the sender is not counted; in memory",
            "mosquitto: one QoS 1 PUBLISH to a topic with K QoS 1 subscribers",
            "latency: from just before the sender writes a round to each recipient's arrival; deliveries/s over the whole run; bytes: what the recipients' connections carried while the messages came (MQTT: PUBLISH + PUBACK)",
            "server CPU: tern's own; the room service's (the federated Prosody) apart, and the sum",
        ]
    } else {
        vec![
            "tern: a round is K 1:1 Up{chat}, each stored and fsynced for its recipient (--room: one groupchat message to a room); mosquitto: one QoS 1 PUBLISH to a topic with K QoS 1 subscribers",
            "latency: from just before the sender writes a round to each recipient's arrival; deliveries/s over the whole run",
            "prosody: a round is K 1:1 <message type='chat'/> from one c2s client, sent flat out (XMPP has no per-message acknowledgement without XEP-0198), then one iq round trip; in memory",
        ]
    };
    let a = Arc::new(a);
    run_both_in(&a.target, "fanout", a.room, settings, rows, notes, |t| {
        let a = a.clone();
        async move {
            match (a.room, t.system) {
                (true, System::Tern | System::Prosody) => run_in_room(a, t, k, m).await,
                _ => run_on(a, t, k, m).await,
            }
        }
    })
    .await
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
    /// Bytes both ways on its connection from when it was ready until the last message.
    bytes: u64,
}

impl Got {
    fn new() -> Got {
        Got { hist: new_histogram(), delivered: 0, last: Instant::now(), bytes: 0 }
    }

    /// Counts message `id` sent at `sent_us` if it is one of the `m` rounds (`stride` ids
    /// each) and was not seen before; fails otherwise.
    fn count(
        &mut self,
        seen: &mut HashSet<String>,
        id: String,
        body: &str,
        epoch: Instant,
        expect: Expect,
    ) -> anyhow::Result<()> {
        let now = epoch.elapsed().as_micros() as u64;
        match body.parse::<u64>() {
            Ok(sent_us)
                if parse_message_id(&id).is_some_and(|n| n / expect.stride < expect.rounds)
                    && seen.insert(id.clone()) =>
            {
                self.delivered += 1;
                self.last = Instant::now();
                self.hist.saturating_record(now.saturating_sub(sent_us).max(1));
                Ok(())
            }
            _ => bail!("unexpected or duplicate message {id:?}"),
        }
    }
}

/// The figures of a run from what the sender and the recipients did.
struct Outcome {
    t0: Instant,
    m: u64,
    sender_bytes: u64,
    cpu_ms: Option<f64>,
    room_service_cpu_ms: Option<f64>,
}

type Recipients = tokio::task::JoinSet<Result<Got, String>>;

/// Starts `k` recipients (`recipient(i, ready, done)`, which sends on `ready` and counts in
/// `done` once it is ready to receive) and waits until each one is ready or has failed.
async fn start_recipients<F, Fut>(label: &'static str, k: usize, recipient: F) -> Recipients
where
    F: Fn(usize, oneshot::Sender<()>, Arc<std::sync::atomic::AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Got>> + Send + 'static,
{
    let progress = Progress::start(label, k as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut readies = Vec::new();
    for i in 0..k {
        let (ready_tx, ready) = oneshot::channel();
        readies.push(ready);
        let r = recipient(i, ready_tx, progress.done.clone());
        tasks.spawn(async move { r.await.map_err(|e| format!("recipient {i}: {e:#}")) });
    }
    for r in readies {
        // A recipient that failed to connect drops its sender; its task reports why.
        let _ = r.await;
    }
    progress.finish();
    tasks
}

/// Waits until every recipient is done.
async fn join_all(mut tasks: Recipients) -> Vec<Result<Result<Got, String>, tokio::task::JoinError>> {
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        out.push(joined);
    }
    out
}

/// Sets the figures from what the recipients saw and `o`.
fn set_figures(
    f: &mut Figures,
    recipients: Vec<Result<Result<Got, String>, tokio::task::JoinError>>,
    o: Outcome,
) -> anyhow::Result<()> {
    let (mut hist, mut delivered, mut last, mut bytes) = (new_histogram(), 0u64, o.t0, 0u64);
    for joined in recipients {
        match joined {
            Ok(Ok(g)) => {
                hist.add(&g.hist).context("merging histograms")?;
                delivered += g.delivered;
                last = last.max(g.last);
                bytes += g.bytes;
            }
            Ok(Err(e)) => f.fail(e),
            Err(e) => f.fail(format!("task: {e}")),
        }
    }
    let ms = |q: f64| Some(hist.value_at_quantile(q) as f64 / 1000.0);
    let per_delivery = |cpu_ms: Option<f64>| cpu_ms.map(|c| c * 1000.0 / delivered.max(1) as f64);
    f.set("delivered", Some(delivered as f64));
    f.set("deliveries_per_s", Some(delivered as f64 / (last - o.t0).as_secs_f64().max(1e-6)));
    f.set("p50_ms", ms(0.5));
    f.set("p99_ms", ms(0.99));
    f.set("max_ms", Some(hist.max() as f64 / 1000.0));
    f.set("sender_bytes_per_round", Some(o.sender_bytes as f64 / o.m as f64));
    f.set("recipient_bytes_per_delivery", Some(bytes as f64 / delivered.max(1) as f64));
    f.set("server_cpu_us_per_delivery", per_delivery(o.cpu_ms));
    f.set("room_service_cpu_us_per_delivery", per_delivery(o.room_service_cpu_ms));
    let total = o.cpu_ms.map(|c| c + o.room_service_cpu_ms.unwrap_or(0.0));
    f.set("total_cpu_us_per_delivery", per_delivery(total));
    Ok(())
}

async fn run_on(a: Arc<FanoutArgs>, t: Arc<Target>, k: usize, m: u64) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    let mut users = user_names("f", k, 1);
    users.push("fsender".into());
    t.add_users(&users, &a.target.password).await?;
    let epoch = Instant::now();
    let tasks = start_recipients("recipients", k, |i, ready, done| {
        let phone = Phone::new(t.system, t.addr, "f", i, 1);
        let (t, password) = (t.clone(), a.target.password.clone());
        async move {
            let expect = Expect { rounds: m, stride: id_stride(t.system, k) };
            recipient(&t, &phone, &password, expect, epoch, ready, done).await
        }
    })
    .await;
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
    let recipients = join_all(tasks).await;
    let cpu_ms = t.cpu_ms().zip(cpu0).map(|(b, a)| b - a);
    c.conn.close().await;
    set_figures(&mut f, recipients, Outcome { t0, m, sender_bytes, cpu_ms, room_service_cpu_ms: None })?;
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
    let (mut got, mut seen, b0) = (Got::new(), HashSet::new(), c.conn.bytes());
    while got.delivered < expect.rounds {
        let chat = within_silence(&got, expect, c.conn.next_chat(t.system)).await?;
        if let Some((id, body)) = chat {
            got.count(&mut seen, id, &body, epoch, expect)?;
        }
    }
    got.bytes = c.conn.bytes() - b0;
    c.conn.close().await;
    Ok(got)
}

/// How long a recipient waits for the next message before it gives up.
const SILENCE: Duration = Duration::from_secs(30);

/// `next`, or a failure after [`SILENCE`].
async fn within_silence<T>(
    got: &Got,
    expect: Expect,
    next: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(SILENCE, next).await {
        Ok(r) => r,
        Err(_) => bail!("{} of {} messages after {SILENCE:?} of silence", got.delivered, expect.rounds),
    }
}

/// `--room` on tern or Prosody: the sender creates the room, the K recipients join it, each
/// waits until it sees all K+1 occupants, then the sender posts M groupchat messages.
async fn run_in_room(a: Arc<FanoutArgs>, t: Arc<Target>, k: usize, m: u64) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    let mut users = user_names("g", k, 1);
    users.push("gsender".into());
    t.add_users(&users, &a.target.password).await?;
    let jid = Arc::new(room::room_jid(&t, "fanout")?);
    let epoch = Instant::now();
    // The sender first: its join creates the room.
    let sender = Phone { user: "gsender".into(), ..Phone::new(t.system, t.addr, "gsender", 0, 1) };
    let mut c = connect_phone(&t, &sender, &a.target.password, true, 60).await?;
    room::join(&mut c.conn, &jid, &sender.user).await?;
    let mut occupants = HashSet::new();
    while !occupants.contains(&sender.user) {
        note_occupant(&mut occupants, room::next_event(&mut c.conn, &jid).await?)?;
    }
    // All K password logins at once would queue behind tern's four Argon2 slots for longer than
    // it lets them wait; and one recipient that never joins keeps everyone waiting.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency(None, a.target.quick)));
    let tasks = start_recipients("recipients in the room", k, |i, ready, done| {
        let phone = Phone::new(t.system, t.addr, "g", i, 1);
        let (t, jid, password, slots) = (t.clone(), jid.clone(), a.target.password.clone(), slots.clone());
        async move {
            let slot = slots.acquire_owned().await?;
            let c = connect_phone(&t, &phone, &password, true, 60).await?;
            drop(slot);
            let expect = Expect { rounds: m, stride: 1 };
            room_recipient(c.conn, &phone.user, &jid, k + 1, expect, epoch, ready, done).await
        }
    })
    .await;
    // Everyone who joined is in the sender's view too before it posts (what a recipient that
    // failed never reaches: the sender waits for it no longer than a recipient would).
    while occupants.len() < k + 1 {
        match tokio::time::timeout(SILENCE, room::next_event(&mut c.conn, &jid)).await {
            Ok(event) => note_occupant(&mut occupants, event?)?,
            Err(_) => break,
        }
    }
    let (b0, cpu0, muc0, t0) = (c.conn.bytes(), t.cpu_ms(), t.room_host_cpu_ms(), Instant::now());
    let rounds = (0..m).map(move |j| (j, epoch.elapsed().as_micros() as u64));
    room::post_all(&mut c.conn, &jid, rounds, a.inflight.max(1)).await?;
    let sender_bytes = c.conn.bytes() - b0;
    let recipients = join_all(tasks).await;
    let since = |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(b, a)| b - a);
    let (cpu_ms, room_service_cpu_ms) = (since(t.cpu_ms(), cpu0), since(t.room_host_cpu_ms(), muc0));
    c.conn.close().await;
    set_figures(&mut f, recipients, Outcome { t0, m, sender_bytes, cpu_ms, room_service_cpu_ms })?;
    Ok(f)
}

/// Adds the occupant an event announces; a message before everyone is in fails.
fn note_occupant(occupants: &mut HashSet<String>, event: room::RoomEvent) -> anyhow::Result<()> {
    match event {
        room::RoomEvent::Occupant(nick) => {
            occupants.insert(nick);
        }
        room::RoomEvent::Chat(id, ..) => bail!("message {id:?} before everyone was in the room"),
        room::RoomEvent::Other => {}
    }
    Ok(())
}

/// One recipient in the room, connected as `conn`: joins as `nick`, says it is ready once it
/// sees all `everyone` occupants, then reads until it has every groupchat message once.
#[allow(clippy::too_many_arguments)]
async fn room_recipient(
    mut conn: super::Link,
    nick: &str,
    jid: &tern_bridge::Jid,
    everyone: usize,
    expect: Expect,
    epoch: Instant,
    ready: oneshot::Sender<()>,
    done: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Got> {
    room::join(&mut conn, jid, nick).await?;
    let mut occupants = HashSet::new();
    while occupants.len() < everyone {
        let event = tokio::time::timeout(SILENCE, room::next_event(&mut conn, jid))
            .await
            .with_context(|| format!("{} of {everyone} occupants after {SILENCE:?}", occupants.len()))??;
        note_occupant(&mut occupants, event)?;
    }
    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(());
    let (mut got, mut seen, b0) = (Got::new(), HashSet::new(), conn.bytes());
    while got.delivered < expect.rounds {
        match within_silence(&got, expect, room::next_event(&mut conn, jid)).await? {
            room::RoomEvent::Chat(id, body, true) => got.count(&mut seen, id, &body, epoch, expect)?,
            room::RoomEvent::Chat(id, ..) => bail!("message {id:?} is not a groupchat message"),
            room::RoomEvent::Occupant(nick) => bail!("{nick} joined after everyone was in"),
            room::RoomEvent::Other => {}
        }
    }
    got.bytes = conn.bytes() - b0;
    conn.close().await;
    Ok(got)
}
