//! The sans-IO phone session (MQTT 3.1.1 §3–4 and MQTT 5 §3–4, plus the tern session protocol).
//!
//! It takes packets, results of the work it asked for, and `now`; it returns [`Action`]s and the
//! next deadline. It never touches a socket, a clock or the store, so it is tested by feeding it
//! events. The driver in `src/net/conn.rs` runs one per connection and drains every action.
//!
//! Upward: a PUBLISH on `u` becomes an [`Action::Apply`]; its PUBACK (or `Accepted`) is sent only
//! when the driver reports the envelope durable, and always in the order the PUBLISHes came
//! (MQTT 3.1.1 §4.6). Downward: the session pulls inbox entries after its cursor, keeps at most
//! `max_inflight` unacknowledged, and moves the cursor as PUBACKs (or `Ack` envelopes) arrive.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tern_schemas::v1::{self, down, error::Code};

use crate::core::peer_refs::PeerRefs;
use crate::envelope::{compact_num_ids, decode_up, error_down, EnvelopeError, Limits, UpCmd, UpEnvelope};
use crate::ids::{DeviceId, Seq, UserName};
use crate::mqtt::{CloseReason, ConnCode, ConnectReq, Inbound, Outbound, PublishIn, Will};
use crate::store::inbox::StoredEntry;
use crate::topic::{self, PlainTopic, PublishTarget, SubscribeTarget};

/// Per-session limits, from config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Downward envelopes awaiting acknowledgement.
    pub max_inflight: usize,
    /// Upward envelopes waiting to become durable before reading stops.
    pub max_pending_up: usize,
    /// Time from accept to CONNECT.
    pub connect_timeout: Duration,
    /// Envelope field limits.
    pub limits: Limits,
}

/// Who a session is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user.
    pub user: UserName,
    /// The device.
    pub device: DeviceId,
}

/// What the store said about a successful login.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginOk {
    /// The device's saved cursor, or `None` for a device never seen.
    pub cursor: Option<Seq>,
    /// The user's durable inbox mark.
    pub durable: Seq,
    /// A fresh session token (and its expiry) after a password login.
    pub token: Option<(String, u64)>,
}

/// The result of applying an upward envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Server timestamp given to it, ms.
    pub ts: u64,
    /// An answer to send instead of `Accepted` (a roster result, for example).
    pub reply: Option<v1::Down>,
}

/// Work the driver must do for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this packet.
    Send(Outbound),
    /// Check these credentials, then call [`Session::on_login`].
    Authenticate { id: Identity, secret: String },
    /// The session is open: bind it to the router and mark the device online.
    Started { id: Identity },
    /// Apply this envelope, then call [`Session::on_applied`] with `ticket`.
    Apply { ticket: u64, env: UpEnvelope },
    /// Read up to `limit` durable inbox entries after `after`, then call [`Session::on_entries`].
    Fetch { after: Seq, limit: usize },
    /// The device asked for peer refs: build its table (contacts it knows at `roster_ver`), then
    /// call [`Session::on_peer_refs`].
    LoadPeerRefs { roster_ver: u64 },
    /// Save the device's cursor (it need not be flushed).
    SaveCursor(Seq),
    /// Subscribe the router link to this (namespaced) filter.
    RouterSubscribe(String),
    /// Unsubscribe the router link.
    RouterUnsubscribe(String),
    /// Publish on the router (namespaced topic).
    RouterPublish { topic: String, payload: Bytes },
    /// Flush what was sent and close the connection.
    Close(CloseReason),
    /// The session is over; `graceful` is false for a lost connection. Emitted once.
    Ended { id: Identity, graceful: bool },
}

#[derive(Debug)]
enum Phase {
    AwaitConnect { deadline: Instant },
    Authenticating,
    Open,
    Closed,
}

#[derive(Debug)]
struct PendingUp {
    ticket: u64,
    qos: u8,
    pkid: u16,
    id: String,
    /// `None` until done; `Some(Ok(None))` acks silently (plain topics, acks, syncs).
    done: Option<Result<Option<Applied>, (EnvelopeError, bool)>>,
}

#[derive(Debug)]
struct InflightDown {
    seq: Seq,
    pkid: Option<u16>,
    acked: bool,
}

/// One phone session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    id: Option<Identity>,
    candidate: Option<Identity>,
    connect: Option<ConnectReq>,
    keep_alive: Option<Duration>,
    last_heard: Instant,
    buffered: VecDeque<Inbound>,
    next_ticket: u64,
    pending_up: VecDeque<PendingUp>,
    qos2_received: HashSet<u16>,
    down_qos: u8,
    cursor: Seq,
    sent: Seq,
    durable: Seq,
    inflight: VecDeque<InflightDown>,
    fetching: Option<Seq>,
    sync_done: Option<(String, Seq)>,
    next_pkid: u16,
    plain_filters: usize,
    client_max_packet: Option<usize>,
    /// Set once the device sent `Hello{peer_refs}` and its table was loaded.
    refs: Option<PeerRefs>,
    /// Set by `Hello{numeric_ids}`: ids that are numbers go down as `num_id`.
    numeric_ids: bool,
    /// True from a `Hello{peer_refs}` until a `Hello` without: a table loaded for an earlier
    /// `Hello` is not used once refs were turned off again.
    refs_wanted: bool,
    /// Live envelopes from elsewhere (presences, chat states, pushes) that came while the peer
    /// refs `Hello` asked for were loading. A phone sends `Hello` with its CONNECT, so the
    /// contacts' presences sent at bind come while the table loads: held, they go out by ref,
    /// in order, once it is there. The session's own replies are not held, so that they keep
    /// their order with the packets (PUBACKs) that follow them.
    held_live: Option<Vec<Bytes>>,
    out: VecDeque<Action>,
}

/// Packets accepted while a login is being checked; a client that floods before CONNACK is cut off.
const MAX_BUFFERED: usize = 32;
/// Live envelopes held for a loading peer refs table; past this many they all go as they are.
const MAX_HELD_LIVE: usize = 256;
/// Plain-topic SUBSCRIBEs one session may make.
pub const MAX_PLAIN_FILTERS: usize = 64;

impl Session {
    /// A session for a connection accepted at `now`.
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        let deadline = now + cfg.connect_timeout;
        Session {
            cfg,
            phase: Phase::AwaitConnect { deadline },
            id: None,
            candidate: None,
            connect: None,
            keep_alive: None,
            last_heard: now,
            buffered: VecDeque::new(),
            next_ticket: 1,
            pending_up: VecDeque::new(),
            qos2_received: HashSet::new(),
            down_qos: 1,
            cursor: Seq(0),
            sent: Seq(0),
            durable: Seq(0),
            inflight: VecDeque::new(),
            fetching: None,
            sync_done: None,
            next_pkid: 1,
            plain_filters: 0,
            client_max_packet: None,
            refs: None,
            numeric_ids: false,
            refs_wanted: false,
            held_live: None,
            out: VecDeque::new(),
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Session::on_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect { deadline } => Some(deadline),
            Phase::Open => self.keep_alive.map(|k| self.last_heard + k + k / 2),
            _ => None,
        }
    }

    /// False while too many upward envelopes wait to become durable: stop reading the socket.
    pub fn wants_read(&self) -> bool {
        // Nothing is read while a login is checked: an unauthenticated peer gets no buffer.
        self.pending_up.len() < self.cfg.max_pending_up
            && !matches!(self.phase, Phase::Closed | Phase::Authenticating)
    }

    /// The authenticated identity, once there is one.
    pub fn identity(&self) -> Option<&Identity> {
        self.id.as_ref()
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// A deadline passed.
    pub fn on_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitConnect { deadline } if now >= deadline => {
                self.close(CloseReason::ProtocolError, false)
            }
            Phase::Open => {
                if let Some(k) = self.keep_alive {
                    if now >= self.last_heard + k + k / 2 {
                        self.close(CloseReason::KeepAliveTimeout, false);
                    }
                }
            }
            _ => {}
        }
    }

    /// The connection broke (EOF or error) without a DISCONNECT.
    pub fn on_transport_closed(&mut self) {
        self.close(CloseReason::Normal, false);
    }

    /// The driver refused the byte stream (malformed or oversized packet).
    pub fn on_protocol_error(&mut self, reason: CloseReason) {
        self.close(reason, false);
    }

    /// Another connection took over this device.
    pub fn on_taken_over(&mut self) {
        self.close(CloseReason::SessionTakenOver, true);
    }

    /// A packet arrived.
    pub fn on_packet(&mut self, now: Instant, packet: Inbound) {
        self.last_heard = now;
        match (&self.phase, packet) {
            (Phase::Closed, _) => {}
            (Phase::AwaitConnect { .. }, Inbound::Connect(req)) => self.on_connect(req),
            (Phase::AwaitConnect { .. }, _) => self.close(CloseReason::ProtocolError, false),
            (Phase::Authenticating, Inbound::Connect(_)) => self.close(CloseReason::ProtocolError, false),
            (Phase::Authenticating, p) => {
                if self.buffered.len() >= MAX_BUFFERED {
                    self.close(CloseReason::ProtocolError, false);
                } else {
                    self.buffered.push_back(p);
                }
            }
            (Phase::Open, p) => self.on_open_packet(p),
        }
    }

    fn on_connect(&mut self, req: ConnectReq) {
        let refuse = |s: &mut Session, code| {
            s.out.push_back(Action::Send(Outbound::ConnAck { session_present: false, code }));
            s.out.push_back(Action::Close(CloseReason::Normal));
            s.phase = Phase::Closed;
        };
        let Ok(device) = DeviceId::parse(&req.client_id) else {
            return refuse(self, ConnCode::BadClientId);
        };
        let Some((user, secret)) = req.login.clone() else {
            return refuse(self, ConnCode::NotAuthorized);
        };
        let Ok(user) = UserName::parse(&user) else {
            return refuse(self, ConnCode::BadCredentials);
        };
        if let Some(will) = &req.will {
            if !matches!(topic::parse_publish(&will.topic), Ok(PublishTarget::Plain(_))) || will.qos > 2 {
                return refuse(self, ConnCode::NotAuthorized);
            }
        }
        self.keep_alive = (req.keep_alive > 0).then(|| Duration::from_secs(req.keep_alive.into()));
        self.client_max_packet = req.max_packet.map(|m| m as usize);
        if let Some(max) = req.receive_max.filter(|m| *m > 0) {
            // MQTT 5 §3.1.2.11.3: never more unacknowledged QoS 1 PUBLISHes than the client takes.
            self.cfg.max_inflight = self.cfg.max_inflight.min(max.into());
        }
        self.connect = Some(req);
        self.phase = Phase::Authenticating;
        let id = Identity { user, device };
        self.candidate = Some(id.clone());
        self.out.push_back(Action::Authenticate { id, secret });
    }

    /// The login check finished: `Ok` with the device's state, or `Err` with the CONNACK code.
    pub fn on_login(&mut self, now: Instant, result: Result<LoginOk, ConnCode>) {
        if !matches!(self.phase, Phase::Authenticating) {
            return;
        }
        let (Some(req), Some(id)) = (self.connect.as_ref(), self.candidate.clone()) else {
            return;
        };
        match result {
            Err(code) => {
                self.out.push_back(Action::Send(Outbound::ConnAck { session_present: false, code }));
                self.out.push_back(Action::Close(CloseReason::Normal));
                self.phase = Phase::Closed;
            }
            Ok(login) => {
                let session_present = !req.clean && login.cursor.is_some();
                self.cursor = login.cursor.unwrap_or_default();
                self.sent = self.cursor;
                self.durable = login.durable;
                self.last_heard = now;
                self.phase = Phase::Open;
                self.id = Some(id.clone());
                self.out
                    .push_back(Action::Send(Outbound::ConnAck { session_present, code: ConnCode::Accepted }));
                self.out.push_back(Action::Started { id });
                if let Some((token, expires)) = login.token {
                    self.send_live(v1::Down {
                        body: Some(down::Body::Token(v1::Token { token, expires })),
                        ..Default::default()
                    });
                }
                while let Some(p) = self.buffered.pop_front() {
                    self.on_open_packet(p);
                }
                self.pump();
            }
        }
    }

    fn on_open_packet(&mut self, packet: Inbound) {
        match packet {
            Inbound::Publish(p) => self.on_publish(p),
            Inbound::PubAck(pkid) => self.on_puback(pkid),
            Inbound::PubRel(pkid) => {
                self.qos2_received.remove(&pkid);
                self.send(Outbound::PubComp(pkid));
            }
            Inbound::Subscribe { pkid, filters } => self.on_subscribe(pkid, filters),
            Inbound::Unsubscribe { pkid, filters } => {
                let n = filters.len();
                for f in filters {
                    if let (Ok(SubscribeTarget::Plain(f)), Some(id)) = (topic::parse_filter(&f), &self.id) {
                        self.out.push_back(Action::RouterUnsubscribe(f.in_namespace(&id.user)));
                    }
                }
                self.send(Outbound::UnsubAck { pkid, n });
            }
            Inbound::PingReq => self.send(Outbound::PingResp),
            Inbound::Disconnect => {
                // A clean DISCONNECT discards the Last Will (MQTT 3.1.1 §3.14.4).
                if let Some(req) = self.connect.as_mut() {
                    req.will = None;
                }
                self.close(CloseReason::Normal, true);
            }
            Inbound::Connect(_) | Inbound::PubRec(_) | Inbound::PubComp(_) | Inbound::ServerOnly => {
                self.close(CloseReason::ProtocolError, false)
            }
        }
    }

    fn on_publish(&mut self, p: PublishIn) {
        if p.qos == 2 && !self.qos2_received.insert(p.pkid) {
            // A QoS 2 resend of something already taken: answer again, apply nothing.
            self.send(Outbound::PubRec(p.pkid));
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut pending = PendingUp { ticket, qos: p.qos, pkid: p.pkid, id: String::new(), done: None };
        let Some(user) = self.id.as_ref().map(|i| i.user.clone()) else { return };
        match topic::parse_publish(&p.topic) {
            Ok(PublishTarget::Up) => match decode_up(&p.payload, &self.cfg.limits, self.refs.as_ref()) {
                Err(e) => {
                    metrics::counter!("tern_envelopes_rejected_total", "code" => e.code.as_str_name())
                        .increment(1);
                    pending.id = e.id.clone();
                    pending.done = Some(Err((e, false)));
                }
                Ok(env) => {
                    metrics::counter!("tern_envelopes_in_total", "kind" => crate::envelope::up_kind(&env.cmd)).increment(1);
                    pending.id = env.id.clone();
                    match env.cmd {
                        UpCmd::Ack { upto } => {
                            self.ack_upto(upto);
                            pending.done = Some(Ok(None));
                        }
                        UpCmd::Sync { after } => {
                            self.start_sync(env.id.clone(), after);
                            pending.done = Some(Ok(None));
                        }
                        UpCmd::Hello { peer_refs, roster_ver, numeric_ids } => {
                            self.refs = None;
                            self.numeric_ids = numeric_ids;
                            self.refs_wanted = peer_refs;
                            if peer_refs {
                                self.held_live.get_or_insert_with(Vec::new);
                                self.out.push_back(Action::LoadPeerRefs { roster_ver });
                            } else {
                                self.release_held_live();
                            }
                            pending.done = Some(Ok(None));
                        }
                        _ => self.out.push_back(Action::Apply { ticket, env }),
                    }
                }
            },
            Ok(PublishTarget::Plain(t)) => {
                self.publish_plain(&user, &t, p.payload);
                pending.done = Some(Ok(None));
            }
            Err(e) => {
                metrics::counter!("tern_isolation_denials_total", "what" => "publish").increment(1);
                let err =
                    EnvelopeError { id: String::new(), code: Code::NotAllowed, text: format!("topic: {e}") };
                pending.done = Some(Err((err, true)));
            }
        }
        self.pending_up.push_back(pending);
        self.flush_acks();
    }

    fn publish_plain(&mut self, user: &UserName, t: &PlainTopic, payload: Bytes) {
        self.out.push_back(Action::RouterPublish { topic: t.in_namespace(user), payload });
    }

    /// An envelope the session asked to apply is durable (or was refused).
    pub fn on_applied(&mut self, ticket: u64, result: Result<Applied, EnvelopeError>) {
        if let Some(p) = self.pending_up.iter_mut().find(|p| p.ticket == ticket) {
            p.done = Some(result.map(Some).map_err(|e| (e, false)));
        }
        self.flush_acks();
    }

    fn flush_acks(&mut self) {
        while self.pending_up.front().is_some_and(|p| p.done.is_some()) {
            let Some(PendingUp { qos, pkid, id, done: Some(done), .. }) = self.pending_up.pop_front() else {
                break;
            };
            let refused = matches!(done, Err((_, true)));
            match done {
                Ok(Some(applied)) => match applied.reply {
                    Some(reply) => self.send_live(reply),
                    // A QoS 1/2 PUBLISH is acknowledged by its PUBACK/PUBREC: no extra envelope.
                    None if qos == 0 => self.send_live(v1::Down {
                        id: id.clone(),
                        body: Some(down::Body::Accepted(v1::Accepted { ts: applied.ts })),
                        ..Default::default()
                    }),
                    None => {}
                },
                Ok(None) => {}
                Err((e, _)) => self.send_live(e.to_down()),
            }
            match qos {
                0 => {}
                1 => self.send(Outbound::PubAck { pkid, refused }),
                _ => self.send(Outbound::PubRec(pkid)),
            }
        }
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) {
        let Some(user) = self.id.as_ref().map(|i| i.user.clone()) else { return };
        let mut granted = Vec::with_capacity(filters.len());
        for (f, qos) in filters {
            match topic::parse_filter(&f) {
                Ok(SubscribeTarget::Down) => {
                    // The downward stream is always on; SUBSCRIBE only picks its QoS.
                    self.down_qos = qos.min(1);
                    granted.push(Some(self.down_qos));
                }
                Ok(SubscribeTarget::Plain(_)) if self.plain_filters >= MAX_PLAIN_FILTERS => {
                    // Every filter costs the router memory for as long as it runs.
                    metrics::counter!("tern_subscriptions_refused_total", "reason" => "quota").increment(1);
                    granted.push(None);
                }
                Ok(SubscribeTarget::Plain(filter)) => {
                    self.plain_filters += 1;
                    self.out.push_back(Action::RouterSubscribe(filter.in_namespace(&user)));
                    // The router forwards plain topics at most once.
                    granted.push(Some(0));
                }
                Err(_) => {
                    metrics::counter!("tern_isolation_denials_total", "what" => "subscribe").increment(1);
                    granted.push(None);
                }
            }
        }
        self.send(Outbound::SubAck { pkid, granted });
    }

    /// A message on a plain topic the session subscribed to (topic already stripped of its namespace).
    pub fn on_router_message(&mut self, topic: String, payload: Bytes) {
        if matches!(self.phase, Phase::Open) {
            self.send(Outbound::Publish { topic, payload, qos: 0, pkid: 0, retain: false });
        }
    }

    /// The peer refs asked for by `Hello`: from now on envelopes name known contacts by ref.
    pub fn on_peer_refs(&mut self, refs: PeerRefs) {
        if self.refs_wanted {
            self.refs = Some(refs);
        }
        self.release_held_live();
    }

    fn release_held_live(&mut self) {
        for payload in self.held_live.take().unwrap_or_default() {
            self.deliver_live(payload);
        }
    }

    /// `payload` as this device asked for it in `Hello`: with peer refs where it knows them,
    /// and numeric ids. A roster answer or push teaches the device the refs it carries, so it
    /// updates the table first.
    fn for_device(&mut self, payload: Bytes) -> Bytes {
        if self.refs.is_none() && !self.numeric_ids {
            return payload;
        }
        // Payloads are the server's own encodings; one that does not decode is sent as it is.
        let Ok(mut down) = v1::Down::decode(payload.clone()) else { return payload };
        let mut changed = false;
        if let Some(refs) = self.refs.as_mut() {
            if let Some(down::Body::Roster(roster)) = &down.body {
                refs.on_roster(roster);
            }
            changed |= refs.compact_down(&mut down);
        }
        if self.numeric_ids {
            changed |= compact_num_ids(&mut down);
        }
        if changed {
            Bytes::from(down.encode_to_vec())
        } else {
            payload
        }
    }

    /// An ephemeral downward envelope (presence, chat state, roster push) for this session.
    pub fn on_live(&mut self, payload: Bytes) {
        if let Some(held) = self.held_live.as_mut() {
            if held.len() < MAX_HELD_LIVE {
                held.push(payload);
                return;
            }
            self.release_held_live();
        }
        self.deliver_live(payload);
    }

    fn deliver_live(&mut self, payload: Bytes) {
        if matches!(self.phase, Phase::Open) {
            let payload = self.for_device(payload);
            metrics::counter!("tern_envelopes_delivered_total", "path" => "live").increment(1);
            self.send(Outbound::Publish { topic: "d".into(), payload, qos: 0, pkid: 0, retain: false });
        }
    }

    fn send_live(&mut self, down: v1::Down) {
        self.deliver_live(Bytes::from(down.encode_to_vec()));
    }

    /// The user's inbox became durable up to `durable`.
    pub fn on_wake(&mut self, durable: Seq) {
        if durable > self.durable {
            self.durable = durable;
            self.pump();
        }
    }

    fn pump(&mut self) {
        if !matches!(self.phase, Phase::Open) || self.fetching.is_some() {
            return;
        }
        let room = self.cfg.max_inflight.saturating_sub(self.inflight.len());
        if self.sent < self.durable && room > 0 {
            self.fetching = Some(self.durable);
            self.out.push_back(Action::Fetch { after: self.sent, limit: room });
        } else {
            self.maybe_sync_done();
        }
    }

    /// Entries read for the last [`Action::Fetch`].
    pub fn on_entries(&mut self, entries: Vec<StoredEntry>) {
        let Some(upto) = self.fetching.take() else { return };
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        let own = self.id.as_ref().map(|i| i.device.as_str().to_owned());
        if entries.is_empty() {
            // The range was pruned away by retention; nothing is left to send in it.
            self.sent = self.sent.max(upto);
        }
        for e in entries {
            if e.seq <= self.sent {
                continue;
            }
            self.sent = e.seq;
            if e.origin.is_some() && e.origin == own {
                // This device wrote it: it already knows, so it counts as acknowledged.
                self.inflight.push_back(InflightDown { seq: e.seq, pkid: None, acked: true });
                continue;
            }
            let down = self.for_device(e.down);
            // A PUBLISH on `d` adds at most 9 bytes of MQTT framing to the envelope.
            let payload = match self.client_max_packet {
                Some(max) if down.len() + 9 > max => too_large_stub(&down),
                _ => down,
            };
            let pkid = (self.down_qos == 1).then(|| self.alloc_pkid());
            metrics::counter!("tern_envelopes_delivered_total", "path" => "inbox").increment(1);
            self.send(Outbound::Publish {
                topic: "d".into(),
                payload,
                qos: self.down_qos,
                pkid: pkid.unwrap_or(0),
                retain: false,
            });
            // At QoS 0 (a client that subscribed to `d` at QoS 0) delivery is at most once,
            // as MQTT defines it: the entry counts as acknowledged once written.
            self.inflight.push_back(InflightDown { seq: e.seq, pkid, acked: pkid.is_none() });
        }
        self.release_acked();
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.pkid == Some(pkid)) {
                return pkid;
            }
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        if let Some(i) = self.inflight.iter_mut().find(|i| i.pkid == Some(pkid)) {
            i.acked = true;
        }
        self.release_acked();
    }

    fn ack_upto(&mut self, upto: Seq) {
        // Never past what this device was sent: a cursor beyond it would skip entries forever.
        let upto = upto.min(self.sent);
        for i in self.inflight.iter_mut().filter(|i| i.seq <= upto) {
            i.acked = true;
        }
        if self.inflight.is_empty() && upto > self.cursor {
            self.cursor = upto;
            self.out.push_back(Action::SaveCursor(self.cursor));
        }
        self.release_acked();
    }

    fn release_acked(&mut self) {
        let before = self.cursor;
        while self.inflight.front().is_some_and(|i| i.acked) {
            if let Some(i) = self.inflight.pop_front() {
                self.cursor = self.cursor.max(i.seq);
            }
        }
        if self.cursor > before {
            self.out.push_back(Action::SaveCursor(self.cursor));
        }
        self.pump();
    }

    fn start_sync(&mut self, id: String, after: Seq) {
        self.inflight.clear();
        self.sent = after.min(self.durable);
        self.fetching = None;
        self.sync_done = Some((id, self.durable));
        self.pump();
    }

    fn maybe_sync_done(&mut self) {
        if let Some((_, target)) = &self.sync_done {
            if self.sent >= *target {
                if let Some((id, target)) = self.sync_done.take() {
                    let upto = target.max(self.sent).0;
                    self.send_live(v1::Down {
                        id,
                        body: Some(down::Body::SyncDone(v1::SyncDone { upto })),
                        ..Default::default()
                    });
                }
            }
        }
    }

    fn send(&mut self, packet: Outbound) {
        self.out.push_back(Action::Send(packet));
    }

    fn close(&mut self, reason: CloseReason, graceful: bool) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let was_open = matches!(self.phase, Phase::Open);
        self.phase = Phase::Closed;
        if reason != CloseReason::Normal {
            self.send(Outbound::Disconnect(reason));
        }
        if was_open {
            if let (Some(id), Some(Will { topic, payload, .. })) =
                (self.id.clone(), self.connect.as_mut().and_then(|c| c.will.take()))
            {
                if !graceful {
                    if let Ok(PublishTarget::Plain(t)) = topic::parse_publish(&topic) {
                        self.publish_plain(&id.user, &t, payload);
                    }
                }
            }
        }
        self.out.push_back(Action::Close(reason));
        if let (true, Some(id)) = (was_open, self.id.clone()) {
            self.out.push_back(Action::Ended { id, graceful });
        }
    }
}

/// What a client gets instead of an entry larger than its MQTT 5 Maximum Packet Size: the same
/// `seq` and `id` with a TOO_LARGE error, so it can move on (and fetch the message another way)
/// instead of being offered, and disconnecting on, the same entry at every connect.
fn too_large_stub(entry: &Bytes) -> Bytes {
    let (seq, id) = match v1::Down::decode(entry.clone()) {
        Ok(d) => (d.seq, d.id),
        Err(_) => (0, String::new()),
    };
    let mut down = error_down(&id, Code::TooLarge, "larger than the client's maximum packet size");
    down.seq = seq;
    Bytes::from(down.encode_to_vec())
}

/// The `Down` for an envelope refused before it reached the session (for example by size).
pub fn refused(id: &str, code: Code, text: &str) -> Bytes {
    Bytes::from(error_down(id, code, text).encode_to_vec())
}

#[cfg(test)]
mod tests;
