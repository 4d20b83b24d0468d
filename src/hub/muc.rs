//! Group chat (XEP-0045) in the hub. tern is the occupant on the *user's* behalf, not the
//! device's: once a phone joins, tern stays in the room while devices come and go, and what the
//! room says lands in the user's durable inbox like a 1:1 chat.
//!
//! The occupant JID is the full JID of the device that joined. Memberships are in sled
//! (`store::rooms`) and rejoined at start with `<history since=…/>` the newest message stored.
//! Whether a room still knows us is checked with XEP-0410 self-pings when a device comes online
//! and every [`CHECK_EVERY`]; a room that forgot us (its server restarted) is joined again, and
//! messages it refused meanwhile are sent again once it has. Stanzas from rooms are handled in
//! `muc_in.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_bridge::mapping::muc::{self, History};
use tern_bridge::stanza::{Condition, Stanza, StanzaError};
use tern_bridge::stream::NS_SERVER;
use tern_bridge::{Element, Jid};
use tern_schemas::v1::{self, down, error::Code, presence::Show, up};

use super::{internal, now_ms, Hub};
use crate::core::session::Identity;
use crate::envelope::EnvelopeError;
use crate::ids::{DeviceId, MsgId, UserName};
use crate::store::inbox::{Appended, Delivery};
use crate::store::rooms::RoomRecord;

/// Own groupchat messages remembered until the room reflects them, per room: enough for a
/// burst of sends from a phone coming back online.
const MAX_UNREFLECTED: usize = 64;
/// How far before the last message stored a rejoin asks for history: the room stamps with its
/// own clock, which may be behind tern's by this much before messages are missed. What comes
/// twice is recognised (`RoomRecord::remember`).
const HISTORY_OVERLAP_MS: u64 = 120_000;
/// Rooms one user may be in: each costs a membership tern keeps, pings and rejoins.
pub(super) const MAX_ROOMS: usize = 64;
/// Join requests of a user's devices that may wait for one room's answer.
const MAX_WAITING: usize = 16;
/// Occupants tracked per room; beyond it, occupant changes are neither kept nor stored.
pub(super) const MAX_OCCUPANTS: usize = 1000;
/// How long a message waits for the room to have us again before its sender is told it
/// failed: the default s2s send timeout, after which a 1:1 message fails too.
pub(super) const HELD_FOR_MS: u64 = 60_000;
/// How often every room is checked (self-ping, or a join that got no answer is sent again).
/// XEP-0410 implementations ping after 5 to 15 minutes of silence.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(300);
/// A room checked this recently is not checked again when another device comes online: phones
/// on bad networks reconnect often.
const RECHECK_AFTER_MS: u64 = 30_000;

/// The rooms users are in (or joining), by user and room bare JID.
#[derive(Default)]
pub(super) struct Rooms {
    map: Mutex<HashMap<UserName, HashMap<String, RoomState>>>,
    next_ping: AtomicU64,
}

/// One user's membership of one room.
pub(super) struct RoomState {
    pub(super) record: RoomRecord,
    /// Whether the room has confirmed our own presence (status 110).
    pub(super) joined: bool,
    /// When the join presence in flight went out, ms.
    pub(super) joining_since: Option<u64>,
    /// Up ids of phones' joins waiting for the room's answer (none for a rejoin).
    pub(super) waiting: Vec<String>,
    /// The occupants, ours included, by nick.
    pub(super) occupants: HashMap<String, v1::Occupant>,
    /// The occupants the user was told of before a rejoin, until the room has us again: only
    /// differences from them are stored, and whoever is not seen again has left meanwhile.
    pub(super) previous: HashMap<String, v1::Occupant>,
    /// Groupchat messages sent and not yet reflected.
    pub(super) unreflected: VecDeque<Sent>,
    /// Messages to send once the room has us again.
    pub(super) held: Vec<Sent>,
    /// The id of the self-ping in flight.
    pub(super) ping: Option<String>,
    /// When the last self-ping went out, ms.
    pinged_at: u64,
}

/// A groupchat message on its way: the room's reflection or error answer names it by id.
#[derive(Clone)]
pub(super) struct Sent {
    pub(super) id: String,
    pub(super) device: DeviceId,
    pub(super) stanza: Element,
    /// When the phone sent it, ms.
    pub(super) at: u64,
}

impl RoomState {
    pub(super) fn new(record: RoomRecord, waiting: Vec<String>) -> RoomState {
        // After a restart only the nicks are known: enough to tell who is new and who left.
        let previous = record
            .occupants
            .iter()
            .map(|nick| (nick.clone(), v1::Occupant { nick: nick.clone(), ..Default::default() }));
        let previous = previous.collect();
        RoomState {
            record,
            joined: false,
            joining_since: None,
            waiting,
            occupants: HashMap::new(),
            previous,
            unreflected: VecDeque::new(),
            held: Vec::new(),
            ping: None,
            pinged_at: 0,
        }
    }
}

impl RoomState {
    /// Keeps `stanza` to send once the room has us again; once only, and bounded like
    /// `unreflected`, so a room that never comes back cannot grow it.
    pub(super) fn hold(&mut self, sent: Sent) {
        if self.held.iter().any(|h| h.id == sent.id) {
            return;
        }
        if self.held.len() == MAX_UNREFLECTED {
            self.held.remove(0);
        }
        self.held.push(sent);
    }

    /// Takes the held messages older than [`HELD_FOR_MS`] at `now`: too late to send.
    pub(super) fn expire_held(&mut self, now: u64) -> Vec<Sent> {
        let (late, keep) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.at + HELD_FOR_MS <= now);
        self.held = keep;
        late
    }

    /// Notes a join request of a phone, once per id and bounded: the oldest is dropped (its
    /// phone times out and asks again).
    pub(super) fn wait(&mut self, id: &str) {
        if self.waiting.iter().any(|w| w == id) {
            return;
        }
        if self.waiting.len() == MAX_WAITING {
            self.waiting.remove(0);
        }
        self.waiting.push(id.to_owned());
    }

    /// Notes in the record who the user now knows is there (see `RoomRecord::occupants`).
    pub(super) fn note_occupants(&mut self) {
        let nicks = self.occupants.keys().chain(self.previous.keys());
        self.record.occupants = nicks.cloned().collect();
    }

    /// Forgets the occupants for a rejoin, keeping what the user was told so that the rejoin's
    /// presences store only what changed.
    pub(super) fn forget_occupants(&mut self) {
        let current = std::mem::take(&mut self.occupants);
        self.previous.extend(current);
    }
}

/// Error envelopes for groupchat messages that never reached the room: each phone knows its
/// message by the id it published it with.
pub(super) fn unsent(user: &UserName, sent: Vec<Sent>, text: &str) -> Vec<Delivery> {
    let error = v1::Error { code: Code::ServiceUnavailable as i32, text: text.to_owned() };
    sent.into_iter().map(|s| inbox_entry(user, None, s.id, down::Body::Error(error.clone()))).collect()
}

impl Rooms {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, HashMap<String, RoomState>>> {
        // Only in-memory room state is behind it, rebuilt by rejoining: a poisoned guard is safe.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refusal(code: Code, text: &str) -> EnvelopeError {
    EnvelopeError { id: String::new(), code, text: text.into() }
}

/// An inbox entry for `user`; `origin` is the device that needs no copy.
pub(super) fn inbox_entry(
    user: &UserName,
    origin: Option<DeviceId>,
    id: String,
    body: down::Body,
) -> Delivery {
    Delivery { user: user.clone(), origin, down: v1::Down { id, body: Some(body), ..Default::default() } }
}

impl Hub {
    /// The occupant JID (`user@domain/device`) of `user` in a room `device` joined.
    fn occupant_jid(&self, user: &UserName, device: &str) -> Result<Jid, EnvelopeError> {
        Jid::parse(&format!("{}/{device}", self.bare_jid(user)))
            .map_err(|e| refusal(Code::Internal, &e.to_string()))
    }

    /// The JID a stanza from `from` to `to` must carry: the occupant JID when `to` is an
    /// occupant of a room the user is in (a private message), else the device's own.
    pub(super) fn sender_for(&self, from: &Identity, to: &Jid) -> String {
        let rooms = self.rooms.lock();
        match rooms.get(&from.user).and_then(|r| r.get(&to.bare_str())) {
            Some(state) if to.resource().is_some() => {
                format!("{}/{}", self.bare_jid(&from.user), state.record.device)
            }
            _ => self.full_jid(from),
        }
    }

    /// Sends a stanza to the room's domain.
    pub(super) fn to_room(&self, room: &str, stanza: Element) {
        let domain = room.rsplit_once('@').map_or(room, |(_, d)| d);
        if let Some(s2s) = self.s2s.get() {
            s2s.send(domain, stanza);
        }
    }

    /// `Up{room_join}`: joins `room` as `nick` for the user, or answers from tern's state when
    /// the user is already there (no second occupant).
    pub(super) async fn room_join(
        &self,
        from: &Identity,
        id: &str,
        room: &Jid,
        nick: &str,
        history: u32,
        password: &str,
    ) -> Result<Option<v1::Down>, EnvelopeError> {
        if !self.is_remote(room) {
            return Err(refusal(Code::RemoteServerNotFound, "no route to that room's domain"));
        }
        let key = room.to_string();
        let record = RoomRecord {
            nick: nick.to_owned(),
            device: from.device.as_str().to_owned(),
            password: password.to_owned(),
            ..Default::default()
        };
        let mut answer = Vec::new();
        {
            let mut rooms = self.rooms.lock();
            let mine = rooms.entry(from.user.clone()).or_default();
            if let Some(state) = mine.get_mut(&key) {
                if !state.joined {
                    state.wait(id);
                    let idle = state.joining_since.is_none();
                    drop(rooms);
                    if idle {
                        self.rejoin(&from.user, &key);
                    }
                    return Ok(None);
                }
                // Already in: this device learns who is there; the answer is our own occupant.
                answer.extend(
                    state
                        .occupants
                        .values()
                        .filter(|o| o.nick != state.record.nick)
                        .map(|o| down::Body::Occupant(o.clone())),
                );
                if let Some(subject) = state.record.subject.as_ref().filter(|s| !s.is_empty()) {
                    let subject =
                        v1::RoomSubject { room: key.clone(), subject: subject.clone(), ..Default::default() };
                    answer.push(down::Body::Subject(subject));
                }
                let own = state.occupants.get(&state.record.nick).cloned().map(down::Body::Occupant);
                drop(rooms);
                for body in answer {
                    self.live_to_device(from, body);
                }
                return Ok(Some(v1::Down { id: id.to_owned(), body: own, ..Default::default() }));
            }
            if mine.len() >= MAX_ROOMS {
                return Err(refusal(Code::LimitReached, "in too many rooms: leave one first"));
            }
            // Stored under the lock: a leave racing with this join cannot be undone by it.
            self.store.rooms.put(&from.user, &key, &record).map_err(internal)?;
            let mut state = RoomState::new(record, vec![id.to_owned()]);
            // In flight from now: another device joining meanwhile only waits for the answer.
            state.joining_since = Some(now_ms());
            mine.insert(key.clone(), state);
        }
        self.store.committer.durable().await.map_err(internal)?;
        let history = if history == 0 { History::Default } else { History::MaxStanzas(history) };
        self.send_join(&from.user, &key, history);
        tracing::info!(user = %from.user, room = %key, "joining a room");
        Ok(None)
    }

    /// Sends the join presence of `user`'s membership of `key`, marking it in flight.
    fn send_join(&self, user: &UserName, key: &str, history: History) {
        let record = {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return };
            state.joining_since = Some(now_ms());
            state.record.clone()
        };
        let room_nick = Jid::parse(key).and_then(|room| room.with_resource(&record.nick));
        let (Ok(occupant), Ok(room_nick)) = (self.occupant_jid(user, &record.device), room_nick) else {
            return tracing::warn!(user = %user, room = key, "room membership with an invalid JID");
        };
        let password = Some(record.password.as_str()).filter(|p| !p.is_empty());
        let presence = muc::join_presence(&occupant, &room_nick, history, password);
        self.to_room(key, Stanza::Presence(presence).to_element(NS_SERVER));
    }

    /// Sends the presence that leaves `key` as the occupant `record` names.
    pub(super) fn send_leave(&self, user: &UserName, key: &str, record: &RoomRecord, status: Option<&str>) {
        let room_nick = Jid::parse(key).and_then(|room| room.with_resource(&record.nick));
        if let (Ok(occupant), Ok(room_nick)) = (self.occupant_jid(user, &record.device), room_nick) {
            let presence = muc::leave_presence(&occupant, &room_nick, status);
            self.to_room(key, Stanza::Presence(presence).to_element(NS_SERVER));
        }
    }

    /// Joins again a room that forgot us (or never answered), asking for what was missed.
    pub(super) fn rejoin(&self, user: &UserName, key: &str) {
        let last_ts = {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return };
            state.joined = false;
            state.ping = None;
            // The room sends everyone again on join; whoever left meanwhile must not linger.
            state.forget_occupants();
            state.record.last_ts
        };
        // A little earlier than the last message stored: rooms stamp history in whole seconds
        // and clocks differ. What comes again is recognised by its id (`RoomRecord::recent`).
        let history = if last_ts > 0 {
            History::Since(last_ts.saturating_sub(HISTORY_OVERLAP_MS))
        } else {
            History::Default
        };
        tracing::info!(user = %user, room = key, "rejoining a room");
        self.send_join(user, key, history);
    }

    /// Directed presence from a device to a room the user is in: the occupant's show and status
    /// (XEP-0045 §7.7), sent as the occupant to its own nick. `false` when `to` is not such a
    /// room. Unavailable is not sent: it would leave the room for every device (`room_leave`
    /// does that).
    pub(super) fn room_presence(&self, from: &Identity, to: &Jid, mut p: v1::Presence) -> bool {
        let record = {
            let rooms = self.rooms.lock();
            match rooms.get(&from.user).and_then(|r| r.get(&to.bare_str())) {
                Some(state) if state.joined => Some(state.record.clone()),
                Some(_) => None,
                None => return false,
            }
        };
        let Some(record) = record.filter(|_| p.show != Show::Unavailable as i32) else { return true };
        p.peer = format!("{}/{}", to.bare_str(), record.nick);
        let occupant = self.occupant_jid(&from.user, &record.device);
        let stanza =
            occupant.ok().and_then(|o| tern_bridge::mapping::outbound(&o, "", &up::Body::Presence(p)).ok());
        if let Some(Some(stanza)) = stanza {
            self.to_room(&to.bare_str(), stanza.to_element(NS_SERVER));
        }
        true
    }

    /// A join presence that could not be delivered (the room's server is unreachable, or the
    /// component stream is down): a phone's join fails; a rejoin is tried again by the next
    /// check, or when the next device connects.
    pub(super) fn join_bounced(&self, presence: &Element, code: Code) {
        if presence.child("x", muc::NS_MUC).is_none() {
            return;
        }
        let user = presence.attr("from").and_then(|f| Jid::parse(f).ok()).and_then(|j| self.local_user(&j));
        let room = presence.attr("to").and_then(|t| Jid::parse(t).ok()).map(|j| j.bare_str());
        let (Some(user), Some(room)) = (user, room) else { return };
        let error = StanzaError::new(match code {
            Code::RemoteServerTimeout => Condition::RemoteServerTimeout,
            _ => Condition::RemoteServerNotFound,
        });
        let deliveries = self.room_refused(&user, &room, code, error.summary(), &error);
        if !deliveries.is_empty() {
            self.store_soon(deliveries);
        }
    }

    /// `Up{room_leave}`: leaves for all of the user's devices; they learn it from the inbox.
    pub(super) async fn room_leave(
        &self,
        from: &Identity,
        id: &str,
        room: &Jid,
        status: &str,
    ) -> Result<(), EnvelopeError> {
        let key = room.to_string();
        let Some(state) = self.forget_room(&from.user, &key) else {
            // Leaving a room one is not in changes nothing; resends after a lost PUBACK land here.
            return Ok(());
        };
        let record = state.record;
        self.send_leave(&from.user, &key, &record, Some(status));
        let own = v1::Occupant {
            room: key,
            nick: record.nick,
            show: Show::Unavailable as i32,
            status: status.to_owned(),
            role: v1::occupant::Role::NoRole as i32,
            is_self: true,
            ..Default::default()
        };
        let entry =
            inbox_entry(&from.user, Some(from.device.clone()), id.to_owned(), down::Body::Occupant(own));
        self.store_durably(None, vec![entry]).await.map_err(internal)
    }

    /// Removes a membership from memory and from the store; the phones whose messages were
    /// still waiting for the room to have us learn that they failed.
    pub(super) fn forget_room(&self, user: &UserName, room: &str) -> Option<RoomState> {
        let mut state = {
            let mut rooms = self.rooms.lock();
            // Under the lock, like every put: a racing update cannot bring the room back.
            if let Err(e) = self.store.rooms.remove(user, room) {
                tracing::error!(error = %e, user = %user, room, "forgetting a room failed");
            }
            rooms.get_mut(user).and_then(|r| r.remove(room))
        }?;
        let held = std::mem::take(&mut state.held);
        if !held.is_empty() {
            self.store_soon(unsent(user, held, "left the room before it could be sent"));
        }
        Some(state)
    }

    /// `Up{chat}` of type groupchat to `room`: sent as the user's occupant. The room reflects
    /// it, and that reflection is the copy for the user's other devices, so only the dedupe
    /// record is stored here. While the room does not have us, it waits for the (re)join.
    pub(super) async fn room_message(
        &self,
        from: &Identity,
        msg_id: &MsgId,
        room: &Jid,
        mut chat: v1::Chat,
    ) -> Result<(), EnvelopeError> {
        let key = room.bare_str();
        let device = {
            let rooms = self.rooms.lock();
            let state = rooms.get(&from.user).and_then(|r| r.get(&key));
            state
                .map(|s| s.record.device.clone())
                .ok_or_else(|| refusal(Code::NotAllowed, "not in that room: join it first"))?
        };
        chat.peer = key.clone();
        let occupant = self.occupant_jid(&from.user, &device)?;
        let stanza = tern_bridge::mapping::outbound(&occupant, msg_id.as_str(), &up::Body::Chat(chat))
            .map_err(|e| refusal(e.code(), &e.to_string()))?
            .map(|s| s.to_element(NS_SERVER));
        let appended = self.append(Some((&from.user, &from.device, msg_id)), Vec::new()).map_err(internal)?;
        self.store.committer.durable().await.map_err(internal)?;
        if appended == Appended::Duplicate {
            metrics::counter!("tern_duplicates_dropped_total").increment(1);
            return Ok(());
        }
        let Some(stanza) = stanza else { return Ok(()) };
        let (send_now, rejoin) = {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(&from.user).and_then(|r| r.get_mut(&key)) else {
                return Err(refusal(Code::NotAllowed, "left that room"));
            };
            if state.unreflected.len() == MAX_UNREFLECTED {
                state.unreflected.pop_front();
            }
            let id = msg_id.as_str().to_owned();
            let sent = Sent { id, device: from.device.clone(), stanza: stanza.clone(), at: now_ms() };
            state.unreflected.push_back(sent.clone());
            if state.joined {
                (true, false)
            } else {
                state.hold(sent);
                (false, state.joining_since.is_none())
            }
        };
        if rejoin {
            self.rejoin(&from.user, &key);
        }
        if send_now {
            metrics::counter!("tern_s2s_stanzas_out_total").increment(1);
            self.to_room(&key, stanza);
        }
        Ok(())
    }

    /// Loads every stored membership and joins again, asking for the history missed since the
    /// newest message stored; then checks the rooms every [`CHECK_EVERY`]. Called once
    /// federation is attached.
    pub(super) fn start_rooms(self: &Arc<Self>) {
        match self.store.rooms.all() {
            Ok(all) => {
                for (user, key, record) in all {
                    if !self.user_exists(&user) {
                        // Deleted while no daemon ran: nothing to rejoin for.
                        self.forget_room(&user, &key);
                        continue;
                    }
                    let mut rooms = self.rooms.lock();
                    rooms
                        .entry(user.clone())
                        .or_default()
                        .insert(key.clone(), RoomState::new(record, Vec::new()));
                    drop(rooms);
                    self.rejoin(&user, &key);
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the joined rooms failed; none rejoined"),
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                let users: Vec<UserName> = hub.rooms.lock().keys().cloned().collect();
                for user in users {
                    hub.check_rooms(&user);
                }
            }
        });
    }

    /// Makes sure the room still has `user`: a self-ping (XEP-0410) where it should, a new join
    /// where the last one got no answer in [`CHECK_EVERY`] or the room went away.
    pub(super) fn check_rooms(&self, user: &UserName) {
        if !self.user_exists(user) {
            return self.leave_all_rooms(user);
        }
        let now = now_ms();
        let stale = now.saturating_sub(CHECK_EVERY.as_millis() as u64);
        let mut pings = Vec::new();
        let mut rejoins = Vec::new();
        let mut late = Vec::new();
        {
            let mut rooms = self.rooms.lock();
            let Some(mine) = rooms.get_mut(user) else { return };
            for (key, state) in mine.iter_mut() {
                late.extend(state.expire_held(now));
                if state.joined && state.pinged_at + RECHECK_AFTER_MS > now {
                    continue;
                }
                if state.joined {
                    state.pinged_at = now;
                    let id = format!("sp{}", self.rooms.next_ping.fetch_add(1, Ordering::Relaxed));
                    state.ping = Some(id.clone());
                    pings.push((key.clone(), state.record.clone(), id));
                } else if state.joining_since.is_none_or(|since| since <= stale) {
                    rejoins.push(key.clone());
                }
            }
        }
        for (key, record, id) in pings {
            let room_nick = Jid::parse(&key).and_then(|room| room.with_resource(&record.nick));
            if let (Ok(occupant), Ok(room_nick)) = (self.occupant_jid(user, &record.device), room_nick) {
                let ping = muc::self_ping(&occupant, &room_nick, &id);
                self.to_room(&key, Stanza::Iq(ping).to_element(NS_SERVER));
            }
        }
        for key in rejoins {
            self.rejoin(user, &key);
        }
        if !late.is_empty() {
            self.store_soon(unsent(user, late, "the room did not have us back in time"));
        }
    }

    /// Whether `user` still has an account; a store failure counts as yes (nothing is left
    /// on a guess).
    pub(super) fn user_exists(&self, user: &UserName) -> bool {
        self.store.users.exists(user).unwrap_or(true)
    }

    /// After an account changed (deleted, or its password changed): a deleted user's rooms
    /// are left at once rather than at the next check.
    pub fn account_changed(&self, user: &UserName) {
        if !self.user_exists(user) {
            self.leave_all_rooms(user);
        }
    }

    /// Leaves and forgets every room of a user whose account is gone: nothing is stored for
    /// it any more, and a later account of the same name starts in no room.
    pub(crate) fn leave_all_rooms(&self, user: &UserName) {
        let mine = self.rooms.lock().remove(user).unwrap_or_default();
        if let Err(e) = self.store.rooms.remove_user(user) {
            tracing::error!(error = %e, user = %user, "forgetting a deleted user's rooms failed");
        }
        for (key, state) in mine {
            self.send_leave(user, &key, &state.record, None);
        }
        tracing::info!(user = %user, "the account is gone; its rooms were left");
    }
}
