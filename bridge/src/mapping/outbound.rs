//! Phone → XMPP: `tern.v1` `Up` bodies to stanzas (RFC 6121 §3–5, XEP-0184, XEP-0333, XEP-0085).

use tern_schemas::v1::{self, chat_state, presence, receipt, subscription, up};

use super::{NS_CHATSTATES, NS_CHAT_MARKERS, NS_HINTS, NS_RECEIPTS};
use crate::jid::{Jid, JidError};
use crate::stanza::{Message, MessageType, Presence, PresenceType, Show, Stanza};
use crate::stream::Element;

/// Why an `Up` body cannot become a stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// A required field is empty (`peer`, or a receipt's `id`).
    #[error("{0} is empty")]
    MissingField(&'static str),
    /// `peer` is not a valid JID.
    #[error("peer {peer:?} is not a valid JID: {error}")]
    BadPeer {
        /// The peer as sent.
        peer: String,
        /// Why it does not parse.
        error: JidError,
    },
    /// A presence priority outside XMPP's -128..=127 (RFC 6121 §4.7.2.3).
    #[error("priority {0} is outside -128..=127")]
    PriorityOutOfRange(i32),
    /// An enum value this version of the protocol does not define.
    #[error("unknown {what} value {value}")]
    UnknownEnum {
        /// Which enum.
        what: &'static str,
        /// The value sent.
        value: i32,
    },
}

impl OutboundError {
    /// The error code the phone is told (docs/PROTOCOL.md).
    pub fn code(&self) -> v1::error::Code {
        match self {
            OutboundError::MissingField(_) | OutboundError::BadPeer { .. } => v1::error::Code::BadJid,
            OutboundError::PriorityOutOfRange(_) | OutboundError::UnknownEnum { .. } => {
                v1::error::Code::BadEnvelope
            }
        }
    }
}

/// The stanza for an `Up` with id `id` and body `body` from `sender` (the device's full JID).
///
/// `Ok(None)` for bodies that are not stanzas (roster, ack, sync) and room joins and leaves:
/// tern handles those itself.
/// A presence without `peer` comes back with no `to`: it is a broadcast the caller fans out.
pub fn outbound(sender: &Jid, id: &str, body: &up::Body) -> Result<Option<Stanza>, OutboundError> {
    let id = Some(id.to_owned()).filter(|i| !i.is_empty());
    let stanza = match body {
        up::Body::Chat(chat) => Stanza::Message(chat_message(sender, id, chat)?),
        up::Body::Receipt(r) => {
            let mut msg = message_to(sender, id, &r.peer, MessageType::Chat)?;
            if r.id.is_empty() {
                return Err(OutboundError::MissingField("id"));
            }
            let kind = enum_value(receipt::Kind::try_from(r.kind), "receipt kind", r.kind)?;
            let (name, ns) = match kind {
                receipt::Kind::Delivered => ("received", NS_RECEIPTS),
                receipt::Kind::Read => ("displayed", NS_CHAT_MARKERS),
            };
            msg.payloads.push(Element::new(name, ns).with_attr("id", r.id.as_str()));
            // Receipts have no body, and servers only store bodies offline or in the archive
            // unless hinted (XEP-0334); a lost receipt would leave the sender's tick grey.
            msg.payloads.push(Element::new("store", NS_HINTS));
            Stanza::Message(msg)
        }
        up::Body::ChatState(cs) => {
            let mut msg = message_to(sender, id, &cs.peer, MessageType::Chat)?;
            let state = enum_value(chat_state::State::try_from(cs.state), "chat state", cs.state)?;
            msg.payloads.push(Element::new(chat_state_name(state), NS_CHATSTATES));
            Stanza::Message(msg)
        }
        up::Body::Presence(p) => Stanza::Presence(presence_stanza(sender, id, p)?),
        up::Body::Subscription(s) => {
            let kind = enum_value(subscription::Kind::try_from(s.kind), "subscription kind", s.kind)?;
            let type_ = match kind {
                subscription::Kind::Subscribe => PresenceType::Subscribe,
                subscription::Kind::Subscribed => PresenceType::Subscribed,
                subscription::Kind::Unsubscribe => PresenceType::Unsubscribe,
                subscription::Kind::Unsubscribed => PresenceType::Unsubscribed,
            };
            // Subscriptions are between bare JIDs on both ends (RFC 6121 §3.1.2, §3.1.3).
            Stanza::Presence(Presence {
                from: Some(sender.to_bare()),
                to: Some(peer(&s.peer)?.to_bare()),
                id,
                ..Presence::new(type_)
            })
        }
        up::Body::RosterGet(_)
        | up::Body::RosterSet(_)
        | up::Body::RosterRemove(_)
        | up::Body::Ack(_)
        | up::Body::Sync(_)
        | up::Body::Hello(_)
        // Joins and leaves depend on the membership the caller holds: see `muc`.
        | up::Body::RoomJoin(_)
        | up::Body::RoomLeave(_) => return Ok(None),
    };
    Ok(Some(stanza))
}

/// A chat message, asking for receipts and markers where the type allows.
fn chat_message(sender: &Jid, id: Option<String>, chat: &v1::Chat) -> Result<Message, OutboundError> {
    let type_ = match enum_value(v1::MessageType::try_from(chat.r#type), "message type", chat.r#type)? {
        v1::MessageType::Chat => MessageType::Chat,
        v1::MessageType::Normal => MessageType::Normal,
        v1::MessageType::Groupchat => MessageType::Groupchat,
        v1::MessageType::Headline => MessageType::Headline,
    };
    let mut msg = message_to(sender, id, &chat.peer, type_)?;
    msg.body = Some(chat.body.clone());
    msg.thread = Some(chat.thread.clone()).filter(|t| !t.is_empty());
    // Phones show delivered/read ticks, so ask legacy clients for XEP-0184 receipts and let
    // modern ones send XEP-0333 markers (only for markable messages). Receipts must not be
    // asked of a room (XEP-0184 §5.3), and headlines expect no answer at all.
    if matches!(type_, MessageType::Chat | MessageType::Normal) {
        msg.payloads.push(Element::new("request", NS_RECEIPTS));
    }
    if type_ != MessageType::Headline {
        msg.payloads.push(Element::new("markable", NS_CHAT_MARKERS));
    }
    Ok(msg)
}

/// A bodiless message of `type_` from `sender` to `peer`.
fn message_to(
    sender: &Jid,
    id: Option<String>,
    to: &str,
    type_: MessageType,
) -> Result<Message, OutboundError> {
    Ok(Message { from: Some(sender.clone()), to: Some(peer(to)?), id, ..Message::new(type_) })
}

/// This device's presence, broadcast or directed to `peer`.
fn presence_stanza(sender: &Jid, id: Option<String>, p: &v1::Presence) -> Result<Presence, OutboundError> {
    let to = if p.peer.is_empty() { None } else { Some(peer(&p.peer)?) };
    let priority = i8::try_from(p.priority).map_err(|_| OutboundError::PriorityOutOfRange(p.priority))?;
    let mut pres = Presence {
        from: Some(sender.clone()),
        to,
        id,
        status: Some(p.status.clone()).filter(|s| !s.is_empty()),
        ..Presence::default()
    };
    match enum_value(presence::Show::try_from(p.show), "show", p.show)? {
        // Show and priority mean nothing once offline (RFC 6121 §4.5.1); the status stays.
        presence::Show::Unavailable => {
            pres.type_ = PresenceType::Unavailable;
            return Ok(pres);
        }
        presence::Show::Available => {}
        presence::Show::Away => pres.show = Some(Show::Away),
        presence::Show::Chat => pres.show = Some(Show::Chat),
        presence::Show::Dnd => pres.show = Some(Show::Dnd),
        presence::Show::Xa => pres.show = Some(Show::Xa),
    }
    pres.priority = priority;
    // Available presence carries entity caps (XEP-0115 §4), so a peer's client resolves what
    // a phone supports once per tern version, not with a disco#info per contact.
    pres.payloads.push(super::caps::caps_element());
    Ok(pres)
}

/// The element name of a chat state (XEP-0085 §4).
fn chat_state_name(state: chat_state::State) -> &'static str {
    match state {
        chat_state::State::Active => "active",
        chat_state::State::Composing => "composing",
        chat_state::State::Paused => "paused",
        chat_state::State::Inactive => "inactive",
        chat_state::State::Gone => "gone",
    }
}

/// Parses a required peer JID.
fn peer(s: &str) -> Result<Jid, OutboundError> {
    if s.is_empty() {
        return Err(OutboundError::MissingField("peer"));
    }
    Jid::parse(s).map_err(|error| OutboundError::BadPeer { peer: s.to_owned(), error })
}

/// Turns prost's failed enum conversion into [`OutboundError::UnknownEnum`].
fn enum_value<T, E>(r: Result<T, E>, what: &'static str, value: i32) -> Result<T, OutboundError> {
    r.map_err(|_| OutboundError::UnknownEnum { what, value })
}
