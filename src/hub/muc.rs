//! Group chat (XEP-0045) in the hub. tern is the occupant on the *user's* behalf, not the
//! device's: once a phone joins, tern stays in the room while devices come and go, and what the
//! room says lands in the user's durable inbox like a 1:1 chat.
//!
//! The occupant JID is the full JID of the device that joined. Memberships are in sled
//! (`store::rooms`) and rejoined at start with `<history since=…/>` the newest message stored.
//! Occupant lists and subjects live here, in memory: joins, leaves, subjects and messages are
//! stored, an occupant's show/status change is only sent to online devices.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tern_bridge::mapping::muc::{self, History, RoomEvent};
use tern_bridge::stanza::Stanza;
use tern_bridge::stream::NS_SERVER;
use tern_bridge::Jid;
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

/// The rooms users are in (or joining), by user and room bare JID.
#[derive(Default)]
pub(super) struct Rooms(Mutex<HashMap<UserName, HashMap<String, RoomState>>>);

/// One user's membership of one room.
struct RoomState {
    record: RoomRecord,
    /// Whether the room has confirmed our own presence (status 110).
    joined: bool,
    /// Up ids of joins waiting for the room's answer (empty for a rejoin at start).
    waiting: Vec<String>,
    /// The other occupants (and ours), by nick.
    occupants: HashMap<String, v1::Occupant>,
    subject: Option<String>,
    /// (message id, device) of groupchat messages sent and not yet reflected.
    unreflected: VecDeque<(String, DeviceId)>,
}

impl RoomState {
    fn new(record: RoomRecord, waiting: Vec<String>) -> RoomState {
        RoomState {
            record,
            joined: false,
            waiting,
            occupants: HashMap::new(),
            subject: None,
            unreflected: VecDeque::new(),
        }
    }
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, HashMap<String, RoomState>>> {
        // Only in-memory room state is behind it, rebuilt by rejoining: a poisoned guard is safe.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refusal(code: Code, text: &str) -> EnvelopeError {
    EnvelopeError { id: String::new(), code, text: text.into() }
}

fn inbox_entry(user: &UserName, origin: Option<DeviceId>, id: String, body: down::Body) -> Delivery {
    Delivery { user: user.clone(), origin, down: v1::Down { id, body: Some(body), ..Default::default() } }
}

impl Hub {
    /// The occupant JID (`user@domain/device`) a device of `user` uses in `room`.
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
            last_ts: 0,
            password: password.to_owned(),
        };
        {
            let mut rooms = self.rooms.lock();
            let mine = rooms.entry(from.user.clone()).or_default();
            if let Some(state) = mine.get_mut(&key) {
                if !state.joined {
                    state.waiting.push(id.to_owned());
                    return Ok(None);
                }
                // Already in: tell this device who is there; the answer is our own occupant.
                let own = state.occupants.get(&state.record.nick).cloned();
                for o in state.occupants.values().filter(|o| o.nick != state.record.nick) {
                    self.live_to_device(from, down::Body::Occupant(o.clone()));
                }
                if let Some(subject) = &state.subject {
                    let subject =
                        v1::RoomSubject { room: key.clone(), subject: subject.clone(), ..Default::default() };
                    self.live_to_device(from, down::Body::Subject(subject));
                }
                let body = own.map(down::Body::Occupant);
                return Ok(Some(v1::Down { id: id.to_owned(), body, ..Default::default() }));
            }
            mine.insert(key.clone(), RoomState::new(record.clone(), vec![id.to_owned()]));
        }
        if let Err(e) = self.store.rooms.put(&from.user, &key, &record) {
            self.forget_room(&from.user, &key);
            return Err(internal(e));
        }
        self.store.committer.durable().await.map_err(internal)?;
        let history = if history == 0 { History::Default } else { History::MaxStanzas(history) };
        self.send_join(&from.user, room, &record, history);
        tracing::info!(user = %from.user, room = %key, "joining a room");
        Ok(None)
    }

    /// Sends the join presence for `record`'s nick and device.
    fn send_join(&self, user: &UserName, room: &Jid, record: &RoomRecord, history: History) {
        let (Ok(occupant), Ok(room_nick)) =
            (self.occupant_jid(user, &record.device), room.with_resource(&record.nick))
        else {
            return tracing::warn!(user = %user, room = %room, "stored room membership has an invalid JID");
        };
        let password = Some(record.password.as_str()).filter(|p| !p.is_empty());
        let presence = muc::join_presence(&occupant, &room_nick, history, password);
        if let Some(s2s) = self.s2s.get() {
            s2s.send(room.domain(), Stanza::Presence(presence).to_element(NS_SERVER));
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
        if let (Ok(occupant), Ok(room_nick)) =
            (self.occupant_jid(&from.user, &record.device), room.with_resource(&record.nick))
        {
            let presence = muc::leave_presence(&occupant, &room_nick, Some(status));
            if let Some(s2s) = self.s2s.get() {
                s2s.send(room.domain(), Stanza::Presence(presence).to_element(NS_SERVER));
            }
        }
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

    /// Removes a membership from memory and from the store.
    fn forget_room(&self, user: &UserName, room: &str) -> Option<RoomState> {
        let state = self.rooms.lock().get_mut(user).and_then(|r| r.remove(room));
        if let Err(e) = self.store.rooms.remove(user, room) {
            tracing::error!(error = %e, user = %user, room, "forgetting a room failed");
        }
        state
    }

    /// `Up{chat}` of type groupchat to `room`: sent as the user's occupant. The room reflects
    /// it, and that reflection is the copy for the user's other devices, so only the dedupe
    /// record is stored here.
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
            .map_err(|e| refusal(e.code(), &e.to_string()))?;
        let appended = self.append(Some((&from.user, &from.device, msg_id)), Vec::new()).map_err(internal)?;
        self.store.committer.durable().await.map_err(internal)?;
        if appended == Appended::Duplicate {
            metrics::counter!("tern_duplicates_dropped_total").increment(1);
            return Ok(());
        }
        if let Some(state) = self.rooms.lock().get_mut(&from.user).and_then(|r| r.get_mut(&key)) {
            if state.unreflected.len() == MAX_UNREFLECTED {
                state.unreflected.pop_front();
            }
            state.unreflected.push_back((msg_id.as_str().to_owned(), from.device.clone()));
        }
        if let (Some(s2s), Some(stanza)) = (self.s2s.get(), stanza) {
            metrics::counter!("tern_s2s_stanzas_out_total").increment(1);
            s2s.send(room.domain(), stanza.to_element(NS_SERVER));
        }
        Ok(())
    }

    /// Rejoins every stored membership, asking for the history missed since the newest
    /// message stored. Called once federation is attached.
    pub(super) fn rejoin_rooms(&self) {
        let all = match self.store.rooms.all() {
            Ok(all) => all,
            Err(e) => return tracing::error!(error = %e, "reading the joined rooms failed; none rejoined"),
        };
        for (user, key, record) in all {
            let Ok(room) = Jid::parse(&key) else { continue };
            let history = if record.last_ts > 0 { History::Since(record.last_ts) } else { History::Default };
            self.rooms
                .lock()
                .entry(user.clone())
                .or_default()
                .insert(key.clone(), RoomState::new(record.clone(), Vec::new()));
            self.send_join(&user, &room, &record, history);
            tracing::info!(user = %user, room = %key, "rejoining a room");
        }
    }

    /// A stanza from another domain: handles it if it comes from a room the user it is for is
    /// in, and drops room traffic for rooms the user is not in. `false` leaves it to the
    /// ordinary path (private messages, iqs, anything not about the room).
    pub(super) fn on_room_stanza(&self, stanza: &Stanza) -> bool {
        let (from, to) = match stanza {
            Stanza::Message(m) => (m.from.as_ref(), m.to.as_ref()),
            Stanza::Presence(p) => (p.from.as_ref(), p.to.as_ref()),
            Stanza::Iq(_) => return false,
        };
        let (Some(from), Some(user)) = (from, to.and_then(|t| self.local_user(t))) else { return false };
        let key = from.bare_str();
        let member = self.rooms.lock().get(&user).is_some_and(|r| r.contains_key(&key));
        let event = match muc::room_event(stanza) {
            Ok(Some(event)) => event,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, room = %key, "room stanza does not translate; dropped");
                return true;
            }
        };
        if !member {
            // Errors from anyone go the ordinary way; room traffic for a room we left is dropped.
            return !matches!(event, RoomEvent::Error { .. });
        }
        let id = match stanza {
            Stanza::Message(m) => m.id.clone(),
            Stanza::Presence(p) => p.id.clone(),
            Stanza::Iq(_) => None,
        }
        .unwrap_or_default();
        let is_presence = matches!(stanza, Stanza::Presence(_));
        let deliveries = match event {
            RoomEvent::Error { code, text } if is_presence => self.room_refused(&user, &key, code, text),
            // A refused groupchat message: the sender learns it like any remote error.
            RoomEvent::Error { .. } => return false,
            RoomEvent::Occupant(o) => self.room_occupant(&user, &key, o, id),
            RoomEvent::Message(chat) => self.room_chat(&user, &key, chat, id),
            RoomEvent::Subject(subject) => self.room_subject(&user, &key, subject, id),
        };
        if !deliveries.is_empty() {
            self.store_soon(deliveries);
        }
        true
    }

    /// The room refused our presence: a pending join fails and the membership is dropped.
    fn room_refused(&self, user: &UserName, key: &str, code: Code, text: String) -> Vec<Delivery> {
        let joined =
            self.rooms.lock().get(user).and_then(|r| r.get(key)).map(|s| (s.joined, s.waiting.clone()));
        let Some((false, waiting)) = joined else {
            tracing::info!(user = %user, room = key, text, "room refused a presence");
            return Vec::new();
        };
        tracing::info!(user = %user, room = key, text, "room join refused");
        self.forget_room(user, key);
        let error = v1::Error { code: code as i32, text };
        // A rejoin at start has no Up to answer: the empty id says so.
        let ids = if waiting.is_empty() { vec![String::new()] } else { waiting };
        ids.into_iter().map(|id| inbox_entry(user, None, id, down::Body::Error(error.clone()))).collect()
    }

    /// An occupant joined, changed or left; our own occupant completes a join.
    fn room_occupant(&self, user: &UserName, key: &str, o: v1::Occupant, id: String) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        let mine = o.is_self || o.nick == state.record.nick;
        let leaving = muc::is_leave(&o);
        let mut entry_id = id;
        let mut persist = false;
        if mine && leaving && o.codes.contains(&muc::STATUS_NICK_CHANGE) {
            state.occupants.remove(&o.nick);
            state.record.nick = o.new_nick.clone();
            persist = true;
        } else if mine && leaving {
            // Kicked, banned, or the room went away: the membership ends.
            drop(rooms);
            self.forget_room(user, key);
            tracing::info!(user = %user, room = key, codes = ?o.codes, "removed from a room");
            return vec![inbox_entry(user, None, entry_id, down::Body::Occupant(o))];
        } else if mine && !state.joined {
            state.joined = true;
            // The room may have changed the nick (status 210).
            persist = state.record.nick != o.nick || state.record.last_ts == 0;
            state.record.nick = o.nick.clone();
            // From now on nothing is missed: a rejoin asks for history since here at the latest.
            state.record.last_ts = state.record.last_ts.max(now_ms());
            if let Some(first) = state.waiting.drain(..).next() {
                entry_id = first;
            }
        }
        let known = state.occupants.contains_key(&o.nick);
        if leaving {
            state.occupants.remove(&o.nick);
        } else {
            state.occupants.insert(o.nick.clone(), o.clone());
        }
        let record = persist.then(|| state.record.clone());
        drop(rooms);
        if let Some(record) = record {
            if let Err(e) = self.store.rooms.put(user, key, &record) {
                tracing::error!(error = %e, user = %user, room = key, "updating a room membership failed");
            }
        }
        if known && !leaving {
            // Only show or status changed: worth showing now, not worth keeping.
            self.live(user, down::Body::Occupant(o));
            return Vec::new();
        }
        vec![inbox_entry(user, None, entry_id, down::Body::Occupant(o))]
    }

    /// A groupchat message (live or history) for the user's inbox.
    fn room_chat(&self, user: &UserName, key: &str, mut chat: v1::Chat, id: String) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        if chat.ts == 0 {
            chat.ts = now_ms();
        }
        let nick = chat.peer.rsplit_once('/').map(|(_, n)| n).unwrap_or_default();
        chat.outgoing = !nick.is_empty() && nick == state.record.nick;
        // The reflection of a device's own message skips that device, which has it already.
        let origin = match state.unreflected.iter().position(|(sent, _)| chat.outgoing && *sent == id) {
            Some(at) => state.unreflected.remove(at).map(|(_, device)| device),
            None => None,
        };
        let record = (chat.ts > state.record.last_ts).then(|| {
            state.record.last_ts = chat.ts;
            state.record.clone()
        });
        drop(rooms);
        if let Some(record) = record {
            // No flush: losing it in a crash only means some history comes again on rejoin.
            if let Err(e) = self.store.rooms.put(user, key, &record) {
                tracing::error!(error = %e, user = %user, room = key, "updating a room's last message failed");
            }
        }
        vec![inbox_entry(user, origin, id, down::Body::Chat(chat))]
    }

    /// The subject, stored when it changes (rooms repeat it on every join).
    fn room_subject(
        &self,
        user: &UserName,
        key: &str,
        mut subject: v1::RoomSubject,
        id: String,
    ) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        let previous = state.subject.replace(subject.subject.clone());
        // An empty subject on join means "none set": nothing to tell.
        if previous.as_deref().unwrap_or_default() == subject.subject {
            return Vec::new();
        }
        if subject.ts == 0 {
            subject.ts = now_ms();
        }
        vec![inbox_entry(user, None, id, down::Body::Subject(subject))]
    }
}
