//! Stanzas from group chat rooms (XEP-0045, XEP-0410) for the users tern is an occupant for:
//! joins, leaves, messages and subject changes go into the user's inbox; show/status changes
//! of occupants are only sent to online devices.

use tern_bridge::mapping::muc::{self, Membership, RoomEvent};
use tern_bridge::stanza::{Stanza, StanzaError};
use tern_bridge::Element;
use tern_schemas::v1::{self, down, error::Code};

use super::muc::inbox_entry;
use super::{now_ms, Hub};
use crate::ids::UserName;
use crate::store::inbox::Delivery;

impl Hub {
    /// A stanza from another domain: handles it if it comes from a room the user it is for is
    /// in, and drops room traffic for rooms the user is not in. `false` leaves it to the
    /// ordinary path (private messages, other iqs, errors not about the membership).
    pub(super) fn on_room_stanza(&self, stanza: &Stanza) -> bool {
        let (from, to, id) = match stanza {
            Stanza::Message(m) => (m.from.as_ref(), m.to.as_ref(), m.id.clone().unwrap_or_default()),
            Stanza::Presence(p) => (p.from.as_ref(), p.to.as_ref(), p.id.clone().unwrap_or_default()),
            Stanza::Iq(iq) => (iq.from.as_ref(), iq.to.as_ref(), iq.id.clone()),
        };
        let (Some(from), Some(user)) = (from, to.and_then(|t| self.local_user(t))) else { return false };
        let key = from.bare_str();
        let member = self.rooms.lock().get(&user).is_some_and(|r| r.contains_key(&key));
        if let Stanza::Iq(iq) = stanza {
            return member
                && muc::self_ping_answer(iq).is_some_and(|m| self.ping_answered(&user, &key, &id, m));
        }
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
        let deliveries = match event {
            RoomEvent::Error { code, text, error } if matches!(stanza, Stanza::Presence(_)) => {
                self.room_refused(&user, &key, code, text, &error)
            }
            RoomEvent::Error { error, .. } => return self.message_refused(&user, &key, &id, &error),
            RoomEvent::Occupant(o) => self.room_occupant(&user, &key, o, id),
            RoomEvent::Message(chat) => self.room_chat(&user, &key, chat, id),
            RoomEvent::Subject(subject) => self.room_subject(&user, &key, subject, id),
        };
        if !deliveries.is_empty() {
            self.store_soon(deliveries);
        }
        true
    }

    /// The answer to a self-ping: a room that forgot us is joined again. `false` when `id` is
    /// not the ping in flight.
    fn ping_answered(&self, user: &UserName, key: &str, id: &str, membership: Membership) -> bool {
        {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return false };
            if state.ping.as_deref() != Some(id) {
                return false;
            }
            state.ping = None;
        }
        tracing::debug!(user = %user, room = key, ?membership, "self-ping answered");
        if membership == Membership::Gone {
            self.rejoin(user, key);
        }
        true
    }

    /// The room refused one of our groupchat messages. If it no longer knows us, the message
    /// waits for a rejoin and is sent again; otherwise the sender learns of it the ordinary way.
    fn message_refused(&self, user: &UserName, key: &str, id: &str, error: &StanzaError) -> bool {
        if !muc::is_not_occupant(error) {
            return false;
        }
        let rejoin = {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return false };
            let Some(sent) = state.unreflected.iter().find(|s| s.id == id) else { return false };
            let stanza = sent.stanza.clone();
            state.hold(stanza);
            state.joined = false;
            state.joining_since.is_none()
        };
        tracing::info!(user = %user, room = key, "the room no longer knows us; message held for a rejoin");
        if rejoin {
            self.rejoin(user, key);
        }
        true
    }

    /// The room refused our presence: a phone's join fails and the membership is dropped; a
    /// rejoin is tried again later unless the refusal is final.
    pub(super) fn room_refused(
        &self,
        user: &UserName,
        key: &str,
        code: Code,
        text: String,
        error: &StanzaError,
    ) -> Vec<Delivery> {
        let waiting = {
            let mut rooms = self.rooms.lock();
            let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
            if state.joined {
                tracing::info!(user = %user, room = key, text, "room refused a presence");
                return Vec::new();
            }
            if state.waiting.is_empty() && !muc::is_final_refusal(error) {
                // The room's server is away: the next check joins again.
                state.joining_since = None;
                tracing::info!(user = %user, room = key, text, "rejoin failed; will retry");
                return Vec::new();
            }
            std::mem::take(&mut state.waiting)
        };
        tracing::info!(user = %user, room = key, text, "room join refused");
        self.forget_room(user, key);
        let error = v1::Error { code: code as i32, text };
        // A rejoin has no Up to answer: the empty id says so.
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
        let mut held = Vec::new();
        if mine && leaving && o.codes.contains(&muc::STATUS_NICK_CHANGE) {
            state.record.nick = o.new_nick.clone();
            persist = true;
        } else if mine && leaving && o.codes.contains(&muc::STATUS_SHUTDOWN) {
            // The service is going down; it may come back, and the checks will join again.
            state.joined = false;
            state.joining_since = None;
            state.occupants.clear();
            drop(rooms);
            return vec![inbox_entry(user, None, entry_id, down::Body::Occupant(o))];
        } else if mine && leaving {
            // Kicked, banned, or the room was destroyed: the membership ends.
            drop(rooms);
            self.forget_room(user, key);
            tracing::info!(user = %user, room = key, codes = ?o.codes, "removed from a room");
            return vec![inbox_entry(user, None, entry_id, down::Body::Occupant(o))];
        } else if mine && !state.joined {
            state.joined = true;
            state.joining_since = None;
            // The room may have changed the nick (status 210).
            persist = state.record.nick != o.nick || state.record.last_ts == 0;
            state.record.nick = o.nick.clone();
            // From now on nothing is missed: a rejoin asks for history since here at the latest.
            state.record.last_ts = state.record.last_ts.max(now_ms());
            if let Some(first) = state.waiting.drain(..).next() {
                entry_id = first;
            }
            held = std::mem::take(&mut state.held);
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
        self.send_held(key, held);
        if known && !leaving {
            // Only show or status changed: worth showing now, not worth keeping.
            self.live(user, down::Body::Occupant(o));
            return Vec::new();
        }
        vec![inbox_entry(user, None, entry_id, down::Body::Occupant(o))]
    }

    /// Sends the messages that waited for the room to have us again.
    fn send_held(&self, key: &str, held: Vec<Element>) {
        for stanza in held {
            metrics::counter!("tern_s2s_stanzas_out_total").increment(1);
            self.to_room(key, stanza);
        }
    }

    /// A groupchat message (live or history) for the user's inbox; history already stored
    /// (a rejoin asks for a little more than was missed) is dropped.
    fn room_chat(&self, user: &UserName, key: &str, mut chat: v1::Chat, id: String) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        let delayed = chat.ts != 0;
        if delayed && !id.is_empty() && state.record.recent.contains(&id) {
            return Vec::new();
        }
        if !delayed {
            chat.ts = now_ms();
        }
        // A resource (the nick) may itself contain '/': it starts after the first one.
        let nick = chat.peer.split_once('/').map(|(_, n)| n).unwrap_or_default();
        chat.outgoing = !nick.is_empty() && nick == state.record.nick;
        // The reflection of a device's own message skips that device, which has it already.
        let origin = match state.unreflected.iter().position(|s| chat.outgoing && s.id == id) {
            Some(at) => state.unreflected.remove(at).map(|s| s.device),
            None => None,
        };
        if !id.is_empty() {
            if state.record.recent.len() >= super::muc::RECENT_IDS {
                state.record.recent.remove(0);
            }
            state.record.recent.push(id.clone());
        }
        state.record.last_ts = state.record.last_ts.max(chat.ts);
        let record = state.record.clone();
        drop(rooms);
        // No flush: losing it in a crash only means some history comes again on rejoin.
        if let Err(e) = self.store.rooms.put(user, key, &record) {
            tracing::error!(error = %e, user = %user, room = key, "updating a room's last message failed");
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
