//! The MQTT load clients of a chat phase (OASIS MQTT 3.1.1, QoS 1, over `raw_mqtt`): one task
//! per connection, which writes everything one turn produced (PUBLISHes that are due, PUBACKs
//! for what one read brought) in one write, as the XMPP clients of `xmpp/drivers.rs` do.
//!
//! A client library with its own task and request channel per connection (rumqttc) cost the
//! load generator more CPU per message than the broker under test spent, on the same two cores;
//! these tasks do the same protocol work without the hand-offs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tern_schemas::v1::{down, Down, Up};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::drivers::{
    connection_failed, micros_since, note_unexpected, receipt_up, Ctx, Note, PeerName, RecipientStats,
    Schedule, SenderStats,
};
use super::{chat_up, chat_up_by_ref, id_of, user_name, Kind, DEVICE, PASSWORD};
use crate::raw_mqtt::{put_puback, put_publish, Conn, ConnectOpts, Packet, PUBACK, PUBLISH, SUBACK};

/// Time a client may take to connect and get its CONNACK.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Time tern may take to send the token after a login, or the roster push after a roster set.
const SETUP_WAIT: Duration = Duration::from_secs(5);
/// The packet id of the setup's roster set; the load's PUBLISHes never use it.
pub(crate) const SETUP_PACKET_ID: u16 = u16::MAX;
/// Packet ids the load cycles through (1 up to this), so at most this many may be in flight.
const LOAD_PACKET_IDS: u16 = u16::MAX - 1;
/// The keepalive the clients ask for; they ping after half of it without writing.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Time one write may take before the connection counts as broken (a broker that stopped
/// reading must not hang the phase).
const WRITE_LIMIT: Duration = Duration::from_secs(30);

/// The QoS 1 PUBLISHes a client has in flight: which packet ids await a PUBACK, at most `limit`.
struct Window {
    outstanding: Vec<bool>,
    inflight: u16,
    limit: u16,
    sent: u64,
}

impl Window {
    fn new(limit: u16) -> Window {
        Window {
            outstanding: vec![false; usize::from(u16::MAX) + 1],
            inflight: 0,
            limit: limit.clamp(1, LOAD_PACKET_IDS),
            sent: 0,
        }
    }

    /// Whether another PUBLISH may go out.
    fn open(&self) -> bool {
        self.inflight < self.limit
    }

    /// The packet id of the next PUBLISH, now in flight.
    fn next_id(&mut self) -> u16 {
        let id = load_packet_id(self.sent);
        self.sent += 1;
        // With at most LOAD_PACKET_IDS in flight the id is free unless a PUBACK never came;
        // then the old one is given up rather than counted twice.
        if !std::mem::replace(&mut self.outstanding[usize::from(id)], true) {
            self.inflight += 1;
        }
        id
    }

    /// Takes a PUBACK: true when it acknowledged a PUBLISH in flight.
    fn acked(&mut self, id: u16) -> bool {
        let was = std::mem::take(&mut self.outstanding[usize::from(id)]);
        if was {
            self.inflight -= 1;
        }
        was
    }
}

/// The packet id of the `k`th load PUBLISH: 1 up to [`LOAD_PACKET_IDS`], then 1 again.
fn load_packet_id(k: u64) -> u16 {
    (k % u64::from(LOAD_PACKET_IDS)) as u16 + 1
}

/// A PINGREQ.
const PINGREQ: [u8; 2] = [0xC0, 0];

/// One load client's connection: what it has to write next, and its keepalive.
struct Link {
    conn: Conn,
    /// Everything this turn of the driver produced, written in one go by [`Link::flush`].
    out: Vec<u8>,
    last_write: Instant,
    /// Ticks every quarter of the keepalive: one timer per connection, not one per turn.
    pings: tokio::time::Interval,
}

impl Link {
    fn new(conn: Conn) -> Link {
        let every = KEEPALIVE / 4;
        let mut pings = tokio::time::interval_at(Instant::now() + every, every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Link { conn, out: Vec::with_capacity(16 * 1024), last_write: Instant::now(), pings }
    }

    /// Writes what the turn produced, if anything (bounded by [`WRITE_LIMIT`]).
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(WRITE_LIMIT, self.conn.send(&self.out))
            .await
            .map_err(|_| anyhow::anyhow!("a write took over {WRITE_LIMIT:?}"))??;
        self.out.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    /// The whole packets the next read brings; none when a keepalive tick came first (it
    /// queues a PINGREQ once the link has been silent for a quarter of the keepalive, so at
    /// most half of it passes without a write). Cancel safe: it only reads, and queues.
    async fn next(&mut self) -> anyhow::Result<Vec<Packet>> {
        tokio::select! {
            _ = self.pings.tick() => {
                if self.last_write.elapsed() >= KEEPALIVE / 4 {
                    self.out.extend_from_slice(&PINGREQ);
                }
                Ok(Vec::new())
            }
            r = self.conn.fill() => {
                r?;
                self.buffered()
            }
        }
    }

    /// The whole packets already read.
    fn buffered(&mut self) -> anyhow::Result<Vec<Packet>> {
        let mut list = Vec::new();
        while let Some(p) = self.conn.next_packet()? {
            list.push(p);
        }
        Ok(list)
    }

    /// DISCONNECT and close, giving up after 300 ms (the broker may be gone or stuck).
    async fn hang_up(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(300), self.conn.disconnect()).await;
    }
}

/// The topic a pair's messages go by on brokers other than tern (raw pub/sub).
pub(crate) fn pair_topic(pair: usize) -> String {
    format!("c/{pair}")
}

/// Who a load client is and where it connects.
pub(crate) struct Login {
    pub(crate) tag: &'static str,
    pub(crate) role: char,
    pub(crate) pair: usize,
    pub(crate) addr: SocketAddr,
}

/// Connects and logs in with the bench's password (tern's phones use the device as client id,
/// other brokers the user name); also returns what the read of the CONNACK brought after it
/// (tern sends the token right behind it).
async fn connect(kind: Kind, login: &Login) -> Result<(Link, Vec<Packet>), String> {
    let user = user_name(login.tag, login.role, login.pair);
    let client_id = match kind {
        Kind::Tern => DEVICE,
        Kind::Mosquitto | Kind::Xmpp => user.as_str(),
    };
    let keepalive_s = KEEPALIVE.as_secs() as u16;
    let opts =
        ConnectOpts { client_id, user: Some(&user), password: Some(PASSWORD), clean: true, keepalive_s };
    let attempt = Conn::connect(login.addr, None, &opts);
    match tokio::time::timeout(CONNECT_LIMIT, attempt).await {
        Err(_) => Err(format!("no CONNACK within {CONNECT_LIMIT:?}")),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok((_, _, code))) if code != 0 => Err(format!("CONNACK code {code}")),
        Ok(Ok((mut conn, _, _))) => {
            conn.keep_read_buffer();
            let mut link = Link::new(conn);
            let after = link.buffered().map_err(|e| format!("{e:#}"))?;
            Ok((link, after))
        }
    }
}

/// Where a client is in its setup: tern sends a token after the login, then (when the phone
/// names its peer by ref) a roster push after the roster set; other brokers need a SUBACK for
/// recipients and nothing for senders.
struct Setup {
    ready: bool,
    /// When to give up waiting for tern's token or roster push.
    wait_until: Option<Instant>,
}

impl Setup {
    fn new(ctx: &Ctx, needs_suback: bool) -> Setup {
        match ctx.kind {
            Kind::Tern => Setup { ready: false, wait_until: Some(Instant::now() + SETUP_WAIT) },
            Kind::Mosquitto | Kind::Xmpp => Setup { ready: !needs_suback, wait_until: None },
        }
    }

    /// Marks the client ready and tells the phase.
    fn done(&mut self, notes: &mpsc::UnboundedSender<Note>) {
        self.ready = true;
        self.wait_until = None;
        let _ = notes.send(Note::Ready);
    }

    /// tern sent a token: the phone either starts learning its peer's ref or is ready.
    fn token(&mut self, peer: &PeerName, out: &mut Vec<u8>, notes: &mpsc::UnboundedSender<Note>) {
        if self.ready {
            return;
        }
        if peer.waiting() {
            peer.start(out);
            self.wait_until = Some(Instant::now() + SETUP_WAIT);
        } else {
            self.done(notes);
        }
    }

    /// tern sent no token or push in time: go on, noting it.
    fn timed_out(&mut self, errors: &mut Vec<String>, notes: &mpsc::UnboundedSender<Note>) {
        errors.push("no Down{token} or roster push within 5 s".into());
        self.done(notes);
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a sender sends, once the phase hands it its schedule.
pub(crate) struct Sends {
    /// Messages to send.
    pub(crate) n: u64,
    /// Where: tern's `u`, or the pair's topic on other brokers.
    pub(crate) topic: String,
    /// The recipient's bare JID, used until the peer's ref is known.
    pub(crate) peer: String,
    /// Unacknowledged PUBLISHes allowed.
    pub(crate) window: u16,
}

/// Logs in, reports `Ready`, then sends `sends.n` chat messages on the schedule the phase hands
/// over, at most `window` unacknowledged, counting PUBACKs (and, in phases with receipts, the
/// receipts tern delivers) until `stop`.
pub(crate) async fn sender(
    ctx: Arc<Ctx>,
    login: Login,
    sends: Sends,
    peer: PeerName,
    mut schedule_rx: oneshot::Receiver<Schedule>,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> SenderStats {
    let mut st = SenderStats::default();
    let (mut link, mut packets) = match connect(ctx.kind, &login).await {
        Ok(c) => c,
        Err(e) => {
            let _ = notes.send(Note::SetupFailed(format!("sender: {e}")));
            return st;
        }
    };
    let mut setup = Setup::new(&ctx, false);
    if setup.ready {
        let _ = notes.send(Note::Ready);
    }
    let mut window = Window::new(sends.window);
    let mut next = 0u64;
    let mut schedule: Option<Schedule> = None;
    let mut waiting_for_schedule = true;
    loop {
        for p in std::mem::take(&mut packets) {
            if p.kind == PUBACK {
                let Some(id) = p.puback_id() else { continue };
                if window.acked(id) {
                    st.acked += 1;
                    if st.acked == sends.n && (!ctx.receipts || st.receipts >= sends.n) {
                        let _ = notes.send(Note::SenderDone);
                    }
                }
                continue;
            }
            let Some(publish) = p.publish() else { continue };
            if let Some(id) = publish.packet_id {
                put_puback(&mut link.out, id);
            }
            if ctx.kind != Kind::Tern {
                st.unexpected += 1;
                continue;
            }
            match Down::decode(publish.payload).ok().and_then(|d| d.body) {
                Some(down::Body::Token(_)) if !setup.ready => setup.token(&peer, &mut link.out, &notes),
                body @ Some(down::Body::Roster(_)) if !setup.ready && peer.learn(&body) => setup.done(&notes),
                Some(down::Body::Receipt(_)) if ctx.receipts && ctx.running() => {
                    st.receipts += 1;
                    if st.receipts == sends.n && st.acked >= sends.n {
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
                        note_unexpected(&mut st.unexpected_samples, publish.topic, &other);
                    } else {
                        st.setup_downs += 1;
                        note_unexpected(&mut st.setup_samples, publish.topic, &other);
                    }
                }
            }
        }
        let mut next_due = None;
        if let Some(sch) = &schedule {
            while window.open() && next < sends.n {
                let Some(at) = sch.due(next) else { break };
                let now = Instant::now();
                if at > now {
                    next_due = Some(at);
                    break;
                }
                if now > sch.deadline {
                    // Past the phase's time cap what was not sent counts as unsent.
                    break;
                }
                if sch.late(at) {
                    st.late += 1;
                }
                let payload = match peer.learnt.get() {
                    Some(&r) => chat_up_by_ref(next, r, micros_since(ctx.epoch)),
                    None => chat_up(next, &sends.peer, micros_since(ctx.epoch)),
                };
                put_publish(&mut link.out, &sends.topic, Some(window.next_id()), &payload);
                next += 1;
                st.published += 1;
            }
        }
        let read = match link.flush().await {
            Err(e) => Err(e),
            Ok(()) => tokio::select! {
                _ = stop.changed() => break,
                s = &mut schedule_rx, if waiting_for_schedule => {
                    waiting_for_schedule = false;
                    schedule = s.ok();
                    continue;
                }
                _ = until(setup.wait_until) => {
                    setup.timed_out(&mut st.errors, &notes);
                    continue;
                }
                _ = until(next_due) => continue,
                r = link.next() => r,
            },
        };
        packets = match read {
            Ok(p) => p,
            Err(e) => {
                connection_failed(&notes, &mut st.errors, setup.ready, format!("sender connection: {e:#}"));
                return st;
            }
        };
    }
    link.hang_up().await;
    st
}

/// Logs in (subscribing to the pair's topic on brokers other than tern), reports `Ready`, then
/// counts this pair's chat messages until `stop`, acknowledging each and, in phases with
/// receipts, answering each with a delivery receipt (at most `window` unacknowledged, the
/// rest queued).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn recipient(
    ctx: Arc<Ctx>,
    login: Login,
    window: u16,
    expect: u64,
    expected_peer: String,
    peer: PeerName,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> RecipientStats {
    let mut st = RecipientStats::new(expect);
    let topic = pair_topic(login.pair);
    let (mut link, mut packets) = match connect(ctx.kind, &login).await {
        Ok(c) => c,
        Err(e) => {
            let _ = notes.send(Note::SetupFailed(format!("recipient: {e}")));
            return st;
        }
    };
    let mut setup = Setup::new(&ctx, true);
    if ctx.kind != Kind::Tern {
        if let Err(e) = link.conn.subscribe(&topic).await {
            let _ = notes.send(Note::SetupFailed(format!("subscribe: {e:#}")));
            return st;
        }
    }
    let mut last_seq = 0u64;
    let mut receipts = Window::new(window);
    let mut queued_receipts = std::collections::VecDeque::<Vec<u8>>::new();
    loop {
        for p in std::mem::take(&mut packets) {
            if p.kind == SUBACK && !setup.ready {
                setup.done(&notes);
                continue;
            }
            if p.kind == PUBACK {
                if let Some(id) = p.puback_id() {
                    receipts.acked(id);
                }
                continue;
            }
            if p.kind != PUBLISH {
                continue;
            }
            let Some(publish) = p.publish() else { continue };
            if let Some(id) = publish.packet_id {
                put_puback(&mut link.out, id);
            }
            let chat = match ctx.kind {
                Kind::Tern => match Down::decode(publish.payload) {
                    Ok(Down { seq, id, num_id, body: Some(down::Body::Chat(c)) }) if publish.topic == "d" => {
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
                            queued_receipts.push_back(receipt_up(&id, c.peer, c.peer_ref));
                        }
                        Some((id, c.body))
                    }
                    Ok(Down { body: Some(down::Body::Token(_)), .. }) if !setup.ready => {
                        setup.token(&peer, &mut link.out, &notes);
                        continue;
                    }
                    Ok(Down { body, .. }) if !setup.ready && peer.learn(&body) => {
                        setup.done(&notes);
                        continue;
                    }
                    other => {
                        let samples =
                            if ctx.running() { &mut st.unexpected_samples } else { &mut st.setup_samples };
                        note_unexpected(samples, publish.topic, &other);
                        None
                    }
                },
                Kind::Mosquitto | Kind::Xmpp => match Up::decode(publish.payload) {
                    Ok(Up { id, num_id, body: Some(tern_schemas::v1::up::Body::Chat(c)) })
                        if publish.topic == topic =>
                    {
                        Some((id_of(id, num_id), c.body))
                    }
                    other => {
                        let samples =
                            if ctx.running() { &mut st.unexpected_samples } else { &mut st.setup_samples };
                        note_unexpected(samples, publish.topic, &other);
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
            st.deliver(&ctx, &id, &body, publish.payload.len(), &notes);
        }
        while receipts.open() {
            let Some(receipt) = queued_receipts.pop_front() else { break };
            put_publish(&mut link.out, "u", Some(receipts.next_id()), &receipt);
        }
        let read = match link.flush().await {
            Err(e) => Err(e),
            Ok(()) => tokio::select! {
                _ = stop.changed() => break,
                _ = until(setup.wait_until) => {
                    setup.timed_out(&mut st.errors, &notes);
                    continue;
                }
                r = link.next() => r,
            },
        };
        packets = match read {
            Ok(p) => p,
            Err(e) => {
                connection_failed(
                    &notes,
                    &mut st.errors,
                    setup.ready,
                    format!("recipient connection: {e:#}"),
                );
                return st;
            }
        };
    }
    link.hang_up().await;
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_packet_ids_skip_zero_and_the_setup_id() {
        let ids: Vec<u16> = [0, 1, u64::from(LOAD_PACKET_IDS) - 1, u64::from(LOAD_PACKET_IDS)]
            .into_iter()
            .map(load_packet_id)
            .collect();
        assert_eq!(ids, [1, 2, LOAD_PACKET_IDS, 1]);
        assert!(!ids.contains(&SETUP_PACKET_ID) && !ids.contains(&0));
    }

    #[test]
    fn a_window_counts_each_puback_once_and_reopens() {
        let mut w = Window::new(2);
        let (a, b) = (w.next_id(), w.next_id());
        assert!(!w.open());
        assert!(!w.acked(SETUP_PACKET_ID), "an id never sent");
        assert!(w.acked(b));
        assert!(!w.acked(b), "a duplicate PUBACK");
        assert!(w.open());
        assert!(w.acked(a));
        assert_eq!(w.inflight, 0);
    }
}
