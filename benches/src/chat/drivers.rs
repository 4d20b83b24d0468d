//! The per-connection tasks of a chat phase: one driver per MQTT connection, and the publishers.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use prost::Message;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use tern_schemas::v1::{down, receipt, up, Down, Hello, Receipt, RosterItem, Up};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{chat_up, chat_up_by_ref, id_of, parse_message_id, user_name, Kind, DEVICE, PASSWORD};
use crate::report::new_histogram;
use tern_schemas::num_id;

pub(crate) struct Ctx {
    pub(crate) kind: Kind,
    /// Set when the load starts: PUBLISHes before that are part of the setup.
    pub(crate) running: std::sync::atomic::AtomicBool,
    /// Time origin of the timestamps in the bodies.
    pub(crate) epoch: Instant,
    /// Whether senders wait for a delivery receipt of every message (XMPP recipients send them).
    pub(crate) receipts: bool,
    /// Messages delivered so far in this phase, for the progress line.
    pub(crate) delivered: AtomicU64,
}

impl Ctx {
    /// A context for one phase, starting now.
    pub(crate) fn new(kind: Kind, receipts: bool) -> Ctx {
        Ctx { kind, running: false.into(), epoch: Instant::now(), receipts, delivered: AtomicU64::new(0) }
    }

    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

pub(crate) fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

pub(crate) enum Note {
    Ready,
    SetupFailed(String),
    /// A connection broke during the load: stop waiting for the rest.
    Failed,
    SenderDone,
    RecipientDone,
}

#[derive(Default)]
pub(crate) struct SenderStats {
    pub(crate) acked: u64,
    /// Delivery receipts that came back (XMPP recipients only).
    pub(crate) receipts: u64,
    /// Messages sent and sends behind schedule, for senders that publish themselves (XMPP).
    pub(crate) published: u64,
    pub(crate) late: u64,
    /// Length of one message as sent, for senders that publish themselves (XMPP).
    pub(crate) up_payload_bytes: usize,
    pub(crate) error_downs: u64,
    pub(crate) unexpected: u64,
    pub(crate) unexpected_samples: Vec<String>,
    pub(crate) setup_downs: u64,
    pub(crate) setup_samples: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// Keeps a short description of the first few unexpected envelopes.
fn note_unexpected<T: std::fmt::Debug>(samples: &mut Vec<String>, topic: &str, what: &T) {
    if samples.len() < 3 {
        let mut s = format!("{topic}: {what:?}");
        s.truncate(200);
        samples.push(s);
    }
}

pub(crate) struct RecipientStats {
    seen: Vec<u8>,
    pub(crate) delivered: u64,
    pub(crate) duplicated: u64,
    pub(crate) unexpected: u64,
    pub(crate) wrong_peer: u64,
    pub(crate) seq_regressions: u64,
    pub(crate) last_delivery: Option<Instant>,
    pub(crate) hist: Histogram<u64>,
    pub(crate) down_payload_bytes: usize,
    pub(crate) unexpected_samples: Vec<String>,
    pub(crate) setup_downs: u64,
    pub(crate) setup_samples: Vec<String>,
    pub(crate) errors: Vec<String>,
}

impl RecipientStats {
    /// Nothing received yet, of the `expect` messages numbered 0..expect.
    pub(crate) fn new(expect: u64) -> RecipientStats {
        RecipientStats {
            seen: vec![0; expect as usize],
            delivered: 0,
            duplicated: 0,
            unexpected: 0,
            wrong_peer: 0,
            seq_regressions: 0,
            last_delivery: None,
            hist: new_histogram(),
            down_payload_bytes: 0,
            unexpected_samples: Vec::new(),
            setup_downs: 0,
            setup_samples: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Counts one received chat message (its id and body, the send time), whatever the
    /// protocol it came by: first copies into the latency histogram, others as duplicates.
    pub(crate) fn deliver(
        &mut self,
        ctx: &Ctx,
        id: &str,
        body: &str,
        payload_len: usize,
        notes: &mpsc::UnboundedSender<Note>,
    ) {
        let now = Instant::now();
        let now_us = now.duration_since(ctx.epoch).as_micros() as u64;
        let expect = self.seen.len() as u64;
        match (parse_message_id(id), body.parse::<u64>()) {
            (Some(k), Ok(sent_us)) if k < expect => {
                self.down_payload_bytes = payload_len;
                let slot = &mut self.seen[k as usize];
                *slot = slot.saturating_add(1);
                if *slot == 1 {
                    self.delivered += 1;
                    self.last_delivery = Some(now);
                    self.hist.saturating_record(now_us.saturating_sub(sent_us).max(1));
                    ctx.delivered.fetch_add(1, Ordering::Relaxed);
                    if self.delivered == expect {
                        let _ = notes.send(Note::RecipientDone);
                    }
                } else {
                    self.duplicated += 1;
                }
            }
            _ => self.unexpected += 1,
        }
    }
}

pub(crate) fn client(
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
        Kind::Mosquitto | Kind::Xmpp => user.clone(),
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

/// A broken connection ends its driver: before the client was ready it is a setup failure,
/// after that an error of the phase (and the phase stops waiting).
fn connection_failed(
    notes: &mpsc::UnboundedSender<Note>,
    errors: &mut Vec<String>,
    ready: bool,
    msg: String,
) {
    if !ready {
        let _ = notes.send(Note::SetupFailed(msg));
    } else {
        errors.push(msg);
        let _ = notes.send(Note::Failed);
    }
}

/// How a phone names its peer. On tern, during the setup the phone sends `Hello{peer_refs}` and
/// puts `contact` (a bare JID) on its roster; the roster push carries the contact's peer ref,
/// which goes into `learnt` (see docs/PROTOCOL.md "Peer refs"). Elsewhere `contact` is `None`.
#[derive(Clone, Default)]
pub(crate) struct PeerName {
    pub(crate) contact: Option<String>,
    pub(crate) learnt: Arc<OnceLock<u32>>,
}

impl PeerName {
    /// Sends the Hello and the roster set; the caller then waits for [`PeerName::learn`].
    fn start(&self, client: &AsyncClient) -> Result<(), String> {
        let Some(contact) = &self.contact else { return Ok(()) };
        let hello = Up {
            id: String::new(),
            body: Some(up::Body::Hello(Hello { peer_refs: true, roster_ver: 0, numeric_ids: true })),
            ..Default::default()
        };
        let item = RosterItem { jid: contact.clone(), ..Default::default() };
        let set = Up { id: "roster".into(), body: Some(up::Body::RosterSet(item)), ..Default::default() };
        client.try_publish("u", QoS::AtMostOnce, false, hello.encode_to_vec()).map_err(|e| e.to_string())?;
        client.try_publish("u", QoS::AtLeastOnce, false, set.encode_to_vec()).map_err(|e| e.to_string())
    }

    /// True once `body` (a roster push) told the phone its contact's ref.
    fn learn(&self, body: &Option<down::Body>) -> bool {
        let (Some(contact), Some(down::Body::Roster(r))) = (&self.contact, body) else { return false };
        let Some(item) = r.items.iter().find(|i| &i.jid == contact && i.peer_ref != 0) else { return false };
        // A ref never changes, so a second push with a different one would be a server bug.
        *self.learnt.get_or_init(|| item.peer_ref) == item.peer_ref
    }

    /// Whether the phone is still waiting for its contact's ref.
    fn waiting(&self) -> bool {
        self.contact.is_some() && self.learnt.get().is_none()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn sender_driver(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    mut el: EventLoop,
    expect_acks: u64,
    peer: PeerName,
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
                // tern always sends a token after a password login, and a push after a roster
                // set; do not hang if it does not.
                token_wait = None;
                ready = true;
                st.errors.push("no Down{token} or roster push within 5 s".into());
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
                        Kind::Mosquitto | Kind::Xmpp => {
                            ready = true;
                            let _ = notes.send(Note::Ready);
                        }
                    }
                }
                // The roster set's PUBACK is part of the setup.
                Ok(Event::Incoming(Packet::PubAck(_))) if ctx.running() => {
                    st.acked += 1;
                    if st.acked == expect_acks && (!ctx.receipts || st.receipts >= expect_acks) {
                        let _ = notes.send(Note::SenderDone);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => match ctx.kind {
                    Kind::Tern => match Down::decode(p.payload.as_ref()).ok().and_then(|d| d.body) {
                        Some(down::Body::Token(_)) if !ready && peer.waiting() => {
                            if let Err(e) = peer.start(&client) {
                                let _ = notes.send(Note::SetupFailed(format!("hello: {e}")));
                                break;
                            }
                            token_wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
                        }
                        Some(down::Body::Token(_)) if !ready => {
                            ready = true;
                            token_wait = None;
                            let _ = notes.send(Note::Ready);
                        }
                        body @ Some(down::Body::Roster(_)) if !ready && peer.learn(&body) => {
                            ready = true;
                            token_wait = None;
                            let _ = notes.send(Note::Ready);
                        }
                        Some(down::Body::Receipt(_)) if ctx.receipts && ctx.running() => {
                            st.receipts += 1;
                            if st.receipts == expect_acks && st.acked >= expect_acks {
                                let _ = notes.send(Note::SenderDone);
                            }
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
                    Kind::Mosquitto | Kind::Xmpp => st.unexpected += 1,
                },
                Ok(_) => {}
                Err(e) => {
                    connection_failed(&notes, &mut st.errors, ready, format!("sender connection: {e}"));
                    return st;
                }
            }
        }
    }
    wind_down(&client, &mut el).await;
    st
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn recipient_driver(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    mut el: EventLoop,
    pair: usize,
    expect: u64,
    expected_peer: String,
    peer: PeerName,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> RecipientStats {
    let mut st = RecipientStats::new(expect);
    let topic = format!("c/{pair}");
    let mut ready = false;
    let mut last_seq = 0u64;
    let mut token_wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut receipts = std::collections::VecDeque::<Vec<u8>>::new();
    loop {
        // A full request queue only delays a receipt to the next turn of the loop.
        while let Some(up) = receipts.front() {
            if client.try_publish("u", QoS::AtLeastOnce, false, up.clone()).is_err() {
                break;
            }
            receipts.pop_front();
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = async { token_wait.as_mut().unwrap().await }, if token_wait.is_some() => {
                token_wait = None;
                ready = true;
                st.errors.push("no Down{token} or roster push within 5 s".into());
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
                        Kind::Mosquitto | Kind::Xmpp => {
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
                    let chat = match ctx.kind {
                        Kind::Tern => match Down::decode(p.payload.as_ref()) {
                            Ok(Down { seq, id, num_id, body: Some(down::Body::Chat(c)) }) if p.topic == "d" => {
                                let id = id_of(id, num_id);
                                let by_ref = c.peer_ref != 0 && peer.learnt.get() == Some(&c.peer_ref);
                                if !(c.peer == expected_peer || by_ref && c.resource == DEVICE) {
                                    st.wrong_peer += 1;
                                }
                                if seq <= last_seq {
                                    st.seq_regressions += 1;
                                }
                                last_seq = seq;
                                if ctx.receipts && ctx.running() {
                                    // XMPP senders asked for one (XEP-0184), as tern tells phones.
                                    receipts.push_back(receipt_up(&id, c.peer, c.peer_ref));
                                }
                                Some((id, c.body))
                            }
                            Ok(Down { body: Some(down::Body::Token(_)), .. }) if !ready && peer.waiting() => {
                                if let Err(e) = peer.start(&client) {
                                    let _ = notes.send(Note::SetupFailed(format!("hello: {e}")));
                                    break;
                                }
                                token_wait = Some(Box::pin(tokio::time::sleep(Duration::from_secs(5))));
                                continue;
                            }
                            Ok(Down { body: Some(down::Body::Token(_)), .. }) if !ready => {
                                ready = true;
                                token_wait = None;
                                let _ = notes.send(Note::Ready);
                                continue;
                            }
                            Ok(Down { body, .. }) if !ready && peer.learn(&body) => {
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
                        Kind::Mosquitto | Kind::Xmpp => match Up::decode(p.payload.as_ref()) {
                            Ok(Up { id, num_id, body: Some(up::Body::Chat(c)) }) if p.topic == topic => {
                                Some((id_of(id, num_id), c.body))
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
                    };
                    let Some((id, body)) = chat else {
                        if ctx.running() {
                            st.unexpected += 1;
                        } else {
                            st.setup_downs += 1;
                        }
                        continue;
                    };
                    st.deliver(&ctx, &id, &body, p.payload.len(), &notes);
                }
                Ok(_) => {}
                Err(e) => {
                    connection_failed(&notes, &mut st.errors, ready, format!("recipient connection: {e}"));
                    return st;
                }
            }
        }
    }
    wind_down(&client, &mut el).await;
    st
}

/// The delivery receipt a phone sends for chat message `id` from `peer` (or `peer_ref`).
fn receipt_up(id: &str, peer: String, peer_ref: u32) -> Vec<u8> {
    let up_id = format!("r{id}");
    // A phone sends ids that are numbers as numbers (docs/PROTOCOL.md "Numeric ids").
    let (mut id, mut num_id) = (id.to_owned(), 0);
    num_id::compact(&mut id, &mut num_id);
    let receipt =
        Receipt { peer, peer_ref, id, num_id, kind: receipt::Kind::Delivered as i32, ..Default::default() };
    Up { id: up_id, body: Some(up::Body::Receipt(receipt)), ..Default::default() }.encode_to_vec()
}

/// When one sender sends: flat out from `start`, or at `rate` per second from `start + offset`;
/// nothing after `deadline`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) start: Instant,
    pub(crate) offset: Duration,
    pub(crate) rate: Option<f64>,
    pub(crate) deadline: Instant,
}

impl Schedule {
    /// When message `k` is due; `None` past the deadline.
    pub(crate) fn due(&self, k: u64) -> Option<Instant> {
        let at = match self.rate {
            Some(r) => self.start + self.offset + Duration::from_secs_f64(k as f64 / r),
            None => self.start,
        };
        (at <= self.deadline).then_some(at)
    }

    /// Whether a message due `at` and sent now left more than 5 ms behind schedule (only a
    /// paced sender can be late).
    pub(crate) fn late(&self, at: Instant) -> bool {
        self.rate.is_some() && Instant::now().duration_since(at) > Duration::from_millis(5)
    }
}

/// Publishes `n` chat messages on `schedule`. Returns (published, late sends).
pub(crate) async fn publisher(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    topic: String,
    peer: String,
    peer_ref: Arc<OnceLock<u32>>,
    n: u64,
    schedule: Schedule,
) -> (u64, u64) {
    let mut published = 0;
    let mut late = 0;
    for k in 0..n {
        let Some(at) = schedule.due(k) else { break };
        tokio::time::sleep_until(at).await;
        if schedule.late(at) {
            late += 1;
        }
        let payload = match peer_ref.get() {
            Some(&r) => chat_up_by_ref(k, r, micros_since(ctx.epoch)),
            None => chat_up(k, &peer, micros_since(ctx.epoch)),
        };
        match tokio::time::timeout_at(
            schedule.deadline,
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
