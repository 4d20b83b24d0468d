//! Stanzas from group chat rooms (XEP-0045, XEP-0410) for the users tern is an occupant for:
//! joins, leaves, messages and subject changes go into the user's inbox; show/status changes
//! of occupants are only sent to online devices.

use std::collections::HashMap;

use tern_bridge::mapping::muc::{self, Membership, RoomEvent};
use tern_bridge::stanza::{Stanza, StanzaError};
use tern_schemas::v1::{self, down, error::Code};

use super::muc::{inbox_entry, RoomState};
use super::{now_ms, Hub};
use crate::ids::UserName;
use crate::store::inbox::Delivery;
use crate::store::rooms::RoomRecord;

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
        if member && !self.user_exists(&user) {
            // The account was deleted under a running daemon: nothing is stored for it.
            self.leave_all_rooms(&user);
            return true;
        }
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
            RoomEvent::Message(chat) => {
                let Stanza::Message(m) = stanza else { return true };
                let seen = muc::history_key(m, &chat);
                self.room_chat(&user, &key, chat, id, &seen)
            }
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
            let sent = sent.clone();
            state.hold(sent);
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

    /// An occupant joined, changed or left; our own occupant (status 110, XEP-0045 §7.2.3)
    /// completes a join.
    fn room_occupant(&self, user: &UserName, key: &str, o: v1::Occupant, id: String) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        // Only 110 says "you": another occupant may hold our old nick after the room changed it.
        let mine = o.is_self;
        let leaving = muc::is_leave(&o);
        let own = |o: v1::Occupant, id: String| vec![inbox_entry(user, None, id, down::Body::Occupant(o))];
        if mine && leaving && o.codes.contains(&muc::STATUS_NICK_CHANGE) {
            state.record.nick = o.new_nick.clone();
            self.persist(user, key, &state.record);
        } else if mine
            && leaving
            && (o.codes.contains(&muc::STATUS_SHUTDOWN) || o.codes.contains(&muc::STATUS_DELIVERY_ERROR))
        {
            // The service is going down, or a stanza to us bounced in a passing outage: the
            // room may have us again, and the checks join again.
            state.joined = false;
            state.joining_since = None;
            state.forget_occupants();
            // The user is told we left: coming back is news again.
            state.previous.remove(&o.nick);
            state.note_occupants();
            self.persist(user, key, &state.record);
            return own(o, id);
        } else if mine && leaving {
            // Kicked, banned, or the room was destroyed: the membership ends.
            drop(rooms);
            self.forget_room(user, key);
            tracing::info!(user = %user, room = key, codes = ?o.codes, "removed from a room");
            return own(o, id);
        } else if mine && !state.joined {
            return self.room_joined(rooms, user, key, o, id);
        }
        let before = state.previous.remove(&o.nick);
        let known = state.occupants.contains_key(&o.nick) || before.is_some();
        if !known && state.occupants.len() >= super::muc::MAX_OCCUPANTS {
            tracing::debug!(user = %user, room = key, "more occupants than tracked; change not stored");
            return Vec::new();
        }
        if leaving {
            state.occupants.remove(&o.nick);
        } else {
            state.occupants.insert(o.nick.clone(), o.clone());
        }
        if known == leaving {
            state.note_occupants();
            self.persist(user, key, &state.record);
        }
        drop(rooms);
        if known && !leaving {
            // Only show or status changed (or a rejoin met the occupant again): worth showing
            // now when it differs, not worth keeping.
            if before.as_ref() != Some(&o) {
                self.live(user, down::Body::Occupant(o));
            }
            return Vec::new();
        }
        own(o, id)
    }

    /// Our own presence completes a (re)join: every phone waiting is answered, held messages go
    /// out, and occupants not met again since the rejoin have left meanwhile.
    fn room_joined(
        &self,
        mut rooms: std::sync::MutexGuard<'_, HashMap<UserName, HashMap<String, RoomState>>>,
        user: &UserName,
        key: &str,
        o: v1::Occupant,
        id: String,
    ) -> Vec<Delivery> {
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        let now = now_ms();
        if o.codes.contains(&muc::STATUS_CREATED) && state.record.last_ts != 0 {
            // A room we were in before is gone, and this rejoin created it afresh, owned by us
            // and locked: leave it, and tell the user's devices the membership ended.
            let record = state.record.clone();
            let waiting = std::mem::take(&mut state.waiting);
            drop(rooms);
            self.send_leave(user, key, &record, None);
            self.forget_room(user, key);
            tracing::info!(user = %user, room = key, "room no longer exists; membership ended");
            let gone = v1::Occupant {
                show: v1::presence::Show::Unavailable as i32,
                role: v1::occupant::Role::NoRole as i32,
                status: "the room no longer exists".into(),
                ..o
            };
            let error =
                v1::Error { code: Code::ServiceUnavailable as i32, text: "the room no longer exists".into() };
            let mut out = vec![inbox_entry(user, None, String::new(), down::Body::Occupant(gone))];
            out.extend(
                waiting.into_iter().map(|w| inbox_entry(user, None, w, down::Body::Error(error.clone()))),
            );
            return out;
        }
        state.joined = true;
        state.joining_since = None;
        // The room may have assigned another nick (status 210): that is ours now.
        let old_nick = std::mem::replace(&mut state.record.nick, o.nick.clone());
        // From now on nothing is missed: a rejoin asks for history since here at the latest.
        state.record.last_ts = state.record.last_ts.max(now);
        let late = state.expire_held(now);
        let held = std::mem::take(&mut state.held);
        let mut gone = std::mem::take(&mut state.previous);
        // Our own occupant is news only on a phone's join, or when the room changed it.
        let was = gone.remove(&o.nick);
        gone.remove(&old_nick);
        state.occupants.insert(o.nick.clone(), o.clone());
        state.note_occupants();
        self.persist(user, key, &state.record);
        let waiting = std::mem::take(&mut state.waiting);
        drop(rooms);
        self.send_held(key, held);
        let mut out = super::muc::unsent(user, late, "the room did not have us back in time");
        // A rejoin has no Up to answer: the room's id, as for other room events.
        let ids = match waiting.is_empty() {
            true if was.is_some() => Vec::new(),
            true => vec![id],
            false => waiting,
        };
        out.extend(ids.into_iter().map(|w| inbox_entry(user, None, w, down::Body::Occupant(o.clone()))));
        for (_, mut left) in gone {
            left.room = key.to_owned();
            left.show = v1::presence::Show::Unavailable as i32;
            left.role = v1::occupant::Role::NoRole as i32;
            left.codes.clear();
            out.push(inbox_entry(user, None, String::new(), down::Body::Occupant(left)));
        }
        out
    }

    /// Stores a membership's record; called under the rooms lock, so a leave racing with it
    /// cannot be undone by it.
    fn persist(&self, user: &UserName, key: &str, record: &RoomRecord) {
        // No flush: losing it in a crash only means some history comes again on rejoin.
        if let Err(e) = self.store.rooms.put(user, key, record) {
            tracing::error!(error = %e, user = %user, room = key, "updating a room membership failed");
        }
    }

    /// Sends the messages that waited for the room to have us again.
    fn send_held(&self, key: &str, held: Vec<super::muc::Sent>) {
        for sent in held {
            metrics::counter!("tern_s2s_stanzas_out_total").increment(1);
            self.to_room(key, sent.stanza);
        }
    }

    /// A groupchat message (live or history) for the user's inbox; history already stored
    /// (a rejoin asks for a little more than was missed) is recognised by `seen`
    /// (`muc::history_key`) and dropped.
    fn room_chat(
        &self,
        user: &UserName,
        key: &str,
        mut chat: v1::Chat,
        id: String,
        seen: &str,
    ) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        let delayed = chat.ts != 0;
        // A room clock ahead of ours must not move `last_ts` (and so every rejoin) ahead.
        chat.ts = stamp(chat.ts);
        // Only history can be a repeat: a live message whose id a sender reused is new.
        if !state.record.remember(seen, chat.ts) && delayed {
            return Vec::new();
        }
        // A resource (the nick) may itself contain '/': it starts after the first one.
        let nick = chat.peer.split_once('/').map(|(_, n)| n).unwrap_or_default();
        chat.outgoing = !nick.is_empty() && nick == state.record.nick;
        // The reflection of a device's own message skips that device, which has it already.
        let origin = match state.unreflected.iter().position(|s| chat.outgoing && s.id == id) {
            Some(at) => state.unreflected.remove(at).map(|s| s.device),
            None => None,
        };
        self.persist(user, key, &state.record);
        drop(rooms);
        vec![inbox_entry(user, origin, id, down::Body::Chat(chat))]
    }

    /// The subject, stored when it differs from the one stored last (rooms repeat it on every
    /// join, and tern restarts).
    fn room_subject(
        &self,
        user: &UserName,
        key: &str,
        mut subject: v1::RoomSubject,
        id: String,
    ) -> Vec<Delivery> {
        let mut rooms = self.rooms.lock();
        let Some(state) = rooms.get_mut(user).and_then(|r| r.get_mut(key)) else { return Vec::new() };
        if state.record.subject.as_ref() == Some(&subject.subject) {
            return Vec::new();
        }
        let previous = state.record.subject.replace(subject.subject.clone());
        self.persist(user, key, &state.record);
        drop(rooms);
        // An empty subject on join means "none set": nothing to tell.
        if previous.unwrap_or_default() == subject.subject {
            return Vec::new();
        }
        subject.ts = stamp(subject.ts);
        vec![inbox_entry(user, None, id, down::Body::Subject(subject))]
    }
}

/// The time to store for a room event the room stamped `ts` (0: live): now at the latest, so a
/// room clock ahead of ours cannot move `last_ts`, and with it every rejoin, into the future.
fn stamp(ts: u64) -> u64 {
    match ts {
        0 => now_ms(),
        ts => ts.min(now_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_capped_at_now() {
        let now = now_ms();
        assert!((now..now + 60_000).contains(&stamp(0)), "live: now");
        assert!(stamp(253_402_300_799_000) <= now_ms(), "year 9999: now");
        assert_eq!(stamp(1_031_699_305_000), 1_031_699_305_000, "history keeps its stamp");
    }
}

#[cfg(test)]
#[path = "muc_in_tests.rs"]
mod hub_tests;
