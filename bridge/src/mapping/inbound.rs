//! XMPP → phone: stanzas to `tern.v1` `Down` bodies (RFC 6121 §3–5, XEP-0184, XEP-0333, XEP-0085).

use tern_schemas::v1::{self, chat_state, down, presence, receipt, subscription};

use super::muc::{self, RoomEvent};
use super::{NS_CHATSTATES, NS_CHAT_MARKERS, NS_RECEIPTS};
use crate::jid::Jid;
use crate::stanza::{Message, MessageType, Presence, PresenceType, Show, Stanza};

/// The phone-side envelope body for `stanza`, with the JID it is for (the stanza's `to`).
///
/// `None` for what phones do not receive: iqs (see [`answer_iq`](super::answer_iq)), errors,
/// probes, stanzas without `from` or `to`, and messages that carry nothing a phone shows (a
/// bare processing hint, an unknown extension). Groupchat messages and room subjects are
/// translated by [`muc`](super::muc). The `Down.id` is the stanza's `id`, and a chat's `ts` is
/// left 0 for the caller to stamp, unless it is delayed history (XEP-0203).
pub fn inbound(stanza: &Stanza) -> Option<(Jid, down::Body)> {
    match stanza {
        Stanza::Message(m) => Some((m.to.clone()?, message_body(m)?)),
        Stanza::Presence(p) => Some((p.to.clone()?, presence_body(p)?)),
        Stanza::Iq(_) => None,
    }
}

fn message_body(m: &Message) -> Option<down::Body> {
    let from = m.from.as_ref()?;
    if m.type_ == MessageType::Groupchat {
        return match muc::room_event(&Stanza::Message(m.clone())).ok()?? {
            RoomEvent::Message(chat) => Some(down::Body::Chat(chat)),
            RoomEvent::Subject(subject) => Some(down::Body::Subject(subject)),
            RoomEvent::Occupant(_) | RoomEvent::Error { .. } => None,
        };
    }
    let type_ = match m.type_ {
        MessageType::Chat => v1::MessageType::Chat,
        MessageType::Normal => v1::MessageType::Normal,
        MessageType::Groupchat => v1::MessageType::Groupchat,
        MessageType::Headline => v1::MessageType::Headline,
        MessageType::Error => return None,
    };
    // A body wins over everything else it travels with: a request for a receipt, a marker,
    // `<active/>` (XEP-0085 §5.3 has clients attach it to every message), a delay stamp.
    if let Some(body) = &m.body {
        return Some(down::Body::Chat(v1::Chat {
            peer: from.to_string(),
            body: body.clone(),
            thread: m.thread.clone().unwrap_or_default(),
            r#type: type_ as i32,
            ..Default::default()
        }));
    }
    if let Some((id, kind)) = receipt_of(m) {
        return Some(down::Body::Receipt(v1::Receipt {
            peer: from.to_string(),
            id,
            kind: kind as i32,
            ..Default::default()
        }));
    }
    let state =
        m.payloads.iter().filter(|p| p.ns() == NS_CHATSTATES).find_map(|p| chat_state_of(p.name()))?;
    Some(down::Body::ChatState(v1::ChatState {
        peer: from.to_string(),
        state: state as i32,
        ..Default::default()
    }))
}

/// The message id and kind a bodiless message acknowledges, if it is a receipt or marker.
fn receipt_of(m: &Message) -> Option<(String, receipt::Kind)> {
    m.payloads.iter().find_map(|p| {
        let kind = match (p.ns(), p.name()) {
            (NS_RECEIPTS, "received") | (NS_CHAT_MARKERS, "received") => receipt::Kind::Delivered,
            // Acknowledged implies displayed (XEP-0333 §3).
            (NS_CHAT_MARKERS, "displayed") | (NS_CHAT_MARKERS, "acknowledged") => receipt::Kind::Read,
            _ => return None,
        };
        // Clients of XEP-0184 before 1.1 left out the id and reused the original's as the
        // stanza id, so fall back to it.
        let id = p.attr("id").or(m.id.as_deref()).filter(|i| !i.is_empty())?;
        Some((id.to_owned(), kind))
    })
}

fn chat_state_of(name: &str) -> Option<chat_state::State> {
    Some(match name {
        "active" => chat_state::State::Active,
        "composing" => chat_state::State::Composing,
        "paused" => chat_state::State::Paused,
        "inactive" => chat_state::State::Inactive,
        "gone" => chat_state::State::Gone,
        _ => return None,
    })
}

/// The phone's show for an available or unavailable presence; `None` for the other types.
pub(super) fn show_of(p: &Presence) -> Option<presence::Show> {
    Some(match p.type_ {
        PresenceType::Available => match p.show {
            None => presence::Show::Available,
            Some(Show::Away) => presence::Show::Away,
            Some(Show::Chat) => presence::Show::Chat,
            Some(Show::Dnd) => presence::Show::Dnd,
            Some(Show::Xa) => presence::Show::Xa,
        },
        PresenceType::Unavailable => presence::Show::Unavailable,
        _ => return None,
    })
}

fn presence_body(p: &Presence) -> Option<down::Body> {
    let from = p.from.as_ref()?;
    let show = match p.type_ {
        PresenceType::Available | PresenceType::Unavailable => show_of(p)?,
        PresenceType::Subscribe => return Some(subscription_body(from, subscription::Kind::Subscribe)),
        PresenceType::Subscribed => return Some(subscription_body(from, subscription::Kind::Subscribed)),
        PresenceType::Unsubscribe => return Some(subscription_body(from, subscription::Kind::Unsubscribe)),
        PresenceType::Unsubscribed => return Some(subscription_body(from, subscription::Kind::Unsubscribed)),
        PresenceType::Probe | PresenceType::Error => return None,
    };
    Some(down::Body::Presence(v1::Presence {
        peer: from.to_string(),
        show: show as i32,
        status: p.status.clone().unwrap_or_default(),
        priority: i32::from(p.priority),
        ..Default::default()
    }))
}

/// Subscriptions are about bare JIDs even when a client stamped its full one (RFC 6121 §3.1.3).
fn subscription_body(from: &Jid, kind: subscription::Kind) -> down::Body {
    down::Body::Subscription(v1::Subscription {
        peer: from.bare_str(),
        kind: kind as i32,
        ..Default::default()
    })
}
