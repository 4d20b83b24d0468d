//! Multi-user chat (XEP-0045): join and leave presences, occupant presence, groupchat messages
//! and subjects, and join errors, as `tern.v1` envelopes; and the self-ping of XEP-0410 that
//! tells whether the room still knows us.
//!
//! Which room a stanza belongs to, and whether the user is in it, is the caller's business (it
//! holds the membership); these functions only translate.

use tern_schemas::v1::{self, error::Code, occupant, presence};

use super::delay::{delay_stamp_by, format_datetime};
use super::inbound::show_of;
use super::NS_PING;
use crate::jid::Jid;
use crate::stanza::{
    Condition, Iq, IqType, Message, MessageType, Presence, PresenceType, Stanza, StanzaError,
};
use crate::stream::Element;

/// The join protocol (XEP-0045 §7.2).
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// Occupant information from the room (XEP-0045 §7.2.3).
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Status code: this presence is about the recipient's own occupant (XEP-0045 §7.2.3).
pub const STATUS_SELF: u32 = 110;
/// Status code: the room was just created by this join (XEP-0045 §10.1.1).
pub const STATUS_CREATED: u32 = 201;
/// Status code: the room assigned or changed our nick on join (§7.2.10).
pub const STATUS_NICK_ASSIGNED: u32 = 210;
/// Status code: the occupant changed its nick; the item carries the new one (§7.6).
pub const STATUS_NICK_CHANGE: u32 = 303;
/// Status code: the room service is shutting down (§10.10); the room may come back.
pub const STATUS_SHUTDOWN: u32 = 332;
/// Status code: removed because a stanza to us bounced (§9.3, "technical reasons"): a passing
/// outage, so the room is worth joining again.
pub const STATUS_DELIVERY_ERROR: u32 = 333;
/// Unique and stable stanza ids (XEP-0359).
pub const NS_SID: &str = "urn:xmpp:sid:0";

/// What a room's answer to a self-ping says about our membership (XEP-0410 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Still an occupant.
    Joined,
    /// The room does not know us (any more): join again.
    Gone,
    /// The room could not be reached: ask again later.
    Unknown,
}

/// How much history to ask for on join (XEP-0045 §7.2.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Whatever the room sends by default.
    Default,
    /// At most this many messages.
    MaxStanzas(u32),
    /// Messages since this time, ms since the epoch (a rejoin after a restart).
    Since(u64),
}

/// Why a stanza from a room does not translate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MucError {
    /// Occupant presence must come from `room@service/nick`.
    #[error("occupant presence from {0} has no nick")]
    NoNick(String),
    /// `<x xmlns='…muc#user'/>` without an `<item/>`.
    #[error("occupant presence without <item/>")]
    MissingItem,
    /// An affiliation outside XEP-0045 §5.2.
    #[error("unknown affiliation {0:?}")]
    BadAffiliation(String),
    /// A role outside XEP-0045 §5.1.
    #[error("unknown role {0:?}")]
    BadRole(String),
    /// A status code that is not a three-digit number.
    #[error("bad status code {0:?}")]
    BadStatusCode(String),
}

/// What a stanza from a room means to the phone.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    /// An occupant joined, changed or left.
    Occupant(v1::Occupant),
    /// A groupchat message. `ts` is the room's XEP-0203 stamp of history, 0 for a live message
    /// (or one whose stamp is not the room's, or does not parse).
    Message(v1::Chat),
    /// The subject, set now (`ts` 0) or delayed.
    Subject(v1::RoomSubject),
    /// The room refused what we sent (a join, usually).
    Error {
        /// The phone's error code.
        code: Code,
        /// The condition and the room's text.
        text: String,
        /// The error as the room sent it.
        error: StanzaError,
    },
}

/// The presence that joins `room_nick` (`room@service/nick`) as `occupant` (a full JID).
pub fn join_presence(occupant: &Jid, room_nick: &Jid, history: History, password: Option<&str>) -> Presence {
    let mut x = Element::new("x", NS_MUC);
    let hist = Element::new("history", NS_MUC);
    match history {
        History::Default => {}
        History::MaxStanzas(n) => x.push_child(hist.with_attr("maxstanzas", n.to_string())),
        History::Since(ms) => x.push_child(hist.with_attr("since", format_datetime(ms))),
    }
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        x.push_child(Element::new("password", NS_MUC).with_text(pw));
    }
    Presence {
        from: Some(occupant.clone()),
        to: Some(room_nick.clone()),
        payloads: vec![x],
        ..Presence::default()
    }
}

/// The presence that leaves `room_nick` (XEP-0045 §7.14).
pub fn leave_presence(occupant: &Jid, room_nick: &Jid, status: Option<&str>) -> Presence {
    Presence {
        from: Some(occupant.clone()),
        to: Some(room_nick.clone()),
        status: status.filter(|s| !s.is_empty()).map(str::to_owned),
        ..Presence::new(PresenceType::Unavailable)
    }
}

/// The self-ping (XEP-0410 §3.2): an XMPP ping from our occupant JID to our own nick.
pub fn self_ping(occupant: &Jid, room_nick: &Jid, id: &str) -> Iq {
    Iq {
        from: Some(occupant.clone()),
        to: Some(room_nick.clone()),
        ..Iq::request(IqType::Get, id, Element::new("ping", NS_PING))
    }
}

/// What the answer `iq` to a self-ping says; `None` for a request.
pub fn self_ping_answer(iq: &Iq) -> Option<Membership> {
    let error = match iq.type_ {
        IqType::Result => return Some(Membership::Joined),
        IqType::Error => iq.error.as_ref(),
        IqType::Get | IqType::Set => return None,
    };
    Some(match error.map(|e| &e.condition) {
        // The ping reached one of our own sessions, which does not do pings, or the nick was
        // changed by another session: either way the occupant is there.
        Some(Condition::ServiceUnavailable | Condition::FeatureNotImplemented | Condition::ItemNotFound) => {
            Membership::Joined
        }
        Some(Condition::RemoteServerNotFound | Condition::RemoteServerTimeout) => Membership::Unknown,
        _ => Membership::Gone,
    })
}

/// Whether an error answer to our groupchat message means the room does not know us: rooms
/// refuse non-occupants with not-acceptable (XEP-0045 §7.4), and a room that went away with
/// its server answers item-not-found.
pub fn is_not_occupant(error: &StanzaError) -> bool {
    matches!(error.condition, Condition::NotAcceptable | Condition::ItemNotFound)
}

/// Whether a refused join is final; otherwise (the room's server is away) it is worth trying
/// again later.
pub fn is_final_refusal(error: &StanzaError) -> bool {
    !matches!(
        error.condition,
        Condition::RemoteServerNotFound
            | Condition::RemoteServerTimeout
            | Condition::InternalServerError
            | Condition::ResourceConstraint
    )
}

/// What `stanza`, which came from a room the caller knows, means to the phone.
///
/// `Ok(None)` for what phones do not see: iqs, chat states and other bodiless groupchat
/// messages, presence without occupant information, and messages that are not groupchat
/// (private messages are ordinary chats: see [`inbound`](super::inbound)).
pub fn room_event(stanza: &Stanza) -> Result<Option<RoomEvent>, MucError> {
    match stanza {
        Stanza::Message(m) if m.type_ == MessageType::Groupchat => message_event(m),
        Stanza::Message(m) if m.type_ == MessageType::Error => Ok(m.error.as_ref().map(error_event)),
        Stanza::Presence(p) if p.type_ == PresenceType::Error => Ok(p.error.as_ref().map(error_event)),
        Stanza::Presence(p) => presence_event(p),
        _ => Ok(None),
    }
}

fn message_event(m: &Message) -> Result<Option<RoomEvent>, MucError> {
    let Some(from) = &m.from else { return Ok(None) };
    // Only the room's own stamp counts; anything else is treated as live rather than dropped.
    let ts = delay_stamp_by(&m.payloads, from).unwrap_or(0);
    let nick = from.resource().unwrap_or_default().to_owned();
    if let Some(body) = &m.body {
        return Ok(Some(RoomEvent::Message(v1::Chat {
            peer: from.to_string(),
            body: body.clone(),
            thread: m.thread.clone().unwrap_or_default(),
            r#type: v1::MessageType::Groupchat as i32,
            ts,
            ..Default::default()
        })));
    }
    // A subject message has a subject and no body (XEP-0045 §8.1); an empty one clears it.
    Ok(m.subject.as_ref().map(|subject| {
        RoomEvent::Subject(v1::RoomSubject { room: from.bare_str(), nick, subject: subject.clone(), ts })
    }))
}

fn presence_event(p: &Presence) -> Result<Option<RoomEvent>, MucError> {
    let (Some(from), Some(x)) = (&p.from, p.payload("x", NS_MUC_USER)) else { return Ok(None) };
    let Some(show) = show_of(p) else { return Ok(None) };
    let nick = from.resource().ok_or_else(|| MucError::NoNick(from.to_string()))?;
    let item = x.child("item", NS_MUC_USER).ok_or(MucError::MissingItem)?;
    let mut codes = Vec::new();
    for status in x.elements().filter(|e| e.is("status", NS_MUC_USER)) {
        let raw = status.attr("code").unwrap_or_default();
        let code = raw
            .parse::<u32>()
            .ok()
            .filter(|c| (100..1000).contains(c) && raw.len() == 3)
            .ok_or_else(|| MucError::BadStatusCode(raw.to_owned()))?;
        codes.push(code);
    }
    let is_self = codes.contains(&STATUS_SELF);
    codes.retain(|c| *c != STATUS_SELF);
    let new_nick = match codes.contains(&STATUS_NICK_CHANGE) {
        true => item.attr("nick").unwrap_or_default().to_owned(),
        false => String::new(),
    };
    Ok(Some(RoomEvent::Occupant(v1::Occupant {
        room: from.bare_str(),
        nick: nick.to_owned(),
        show: show as i32,
        status: p.status.clone().unwrap_or_default(),
        affiliation: affiliation(item.attr("affiliation").unwrap_or("none"))? as i32,
        role: role(item.attr("role").unwrap_or("none"))? as i32,
        jid: item.attr("jid").unwrap_or_default().to_owned(),
        is_self,
        codes,
        new_nick,
    })))
}

fn affiliation(s: &str) -> Result<occupant::Affiliation, MucError> {
    Ok(match s {
        "none" => occupant::Affiliation::None,
        "member" => occupant::Affiliation::Member,
        "admin" => occupant::Affiliation::Admin,
        "owner" => occupant::Affiliation::Owner,
        "outcast" => occupant::Affiliation::Outcast,
        _ => return Err(MucError::BadAffiliation(s.to_owned())),
    })
}

fn role(s: &str) -> Result<occupant::Role, MucError> {
    Ok(match s {
        "participant" => occupant::Role::Participant,
        "visitor" => occupant::Role::Visitor,
        "moderator" => occupant::Role::Moderator,
        "none" => occupant::Role::NoRole,
        _ => return Err(MucError::BadRole(s.to_owned())),
    })
}

/// A room's error answer, as the phone's code (XEP-0045 §7.2.5–7.2.11 for joins).
fn error_event(e: &StanzaError) -> RoomEvent {
    let code = match e.condition {
        Condition::Conflict => Code::Conflict,
        Condition::NotAuthorized => Code::NotAuthorized,
        Condition::Forbidden | Condition::RegistrationRequired | Condition::NotAllowed => Code::NotAllowed,
        Condition::RemoteServerNotFound => Code::RemoteServerNotFound,
        Condition::RemoteServerTimeout => Code::RemoteServerTimeout,
        _ => Code::ServiceUnavailable,
    };
    RoomEvent::Error { code, text: e.summary(), error: e.clone() }
}

/// What recognises a groupchat message that a rejoin's history brings again: the room's
/// XEP-0359 stanza id when it gives one, else the sender and message id, else a hash of
/// sender, stamp and body (which only matches a repeat of the same history entry).
pub fn history_key(m: &Message, chat: &v1::Chat) -> String {
    let room = m.from.as_ref().map(Jid::bare_str).unwrap_or_default();
    let by_room =
        m.payloads.iter().find(|p| p.is("stanza-id", NS_SID) && p.attr("by") == Some(room.as_str()));
    if let Some(id) = by_room.and_then(|p| p.attr("id")).filter(|id| !id.is_empty()) {
        return format!("s:{id}");
    }
    // Senders choose their ids: qualified by the sender, another's cannot hide a message.
    if let Some(id) = m.id.as_deref().filter(|id| !id.is_empty()) {
        return format!("i:{}:{id}", chat.peer);
    }
    // FNV-1a: stable across builds, unlike the std hasher, since the keys are stored.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let ts = chat.ts.to_string();
    for part in [chat.peer.as_bytes(), ts.as_bytes(), chat.body.as_bytes()] {
        for b in part.iter().chain(&[0u8]) {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("h:{hash:016x}")
}

/// Whether an occupant presence says the occupant is gone.
pub fn is_leave(o: &v1::Occupant) -> bool {
    o.show == presence::Show::Unavailable as i32
}
