//! Parses upward envelopes (`tern.v1.Up`) into typed commands and builds downward ones.
//!
//! Everything a phone sends is checked here once, so the rest of the daemon handles only values
//! that are already valid: JIDs parsed, ids bounded, sizes within the configured limits.

use prost::Message;
use tern_bridge::Jid;
use tern_schemas::num_id;
use tern_schemas::v1::{self, down, error::Code, up};

use crate::core::peer_refs::{PeerRefs, UnknownRef};
use crate::ids::{MsgId, Seq};

/// Size limits on envelope fields, from config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Largest presence status or roster name, in bytes.
    pub max_text: usize,
    /// Most groups on one roster item.
    pub max_groups: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body: 16 * 1024, max_text: 1024, max_groups: 16 }
    }
}

/// A valid upward envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct UpEnvelope {
    /// The client's id for this envelope (may be empty where the kind does not need one).
    pub id: String,
    /// What the client asks for.
    pub cmd: UpCmd,
}

/// What an upward envelope asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum UpCmd {
    /// Send a message; `id` is its message id.
    Chat { id: MsgId, to: Jid, chat: v1::Chat },
    /// Send a receipt for message `of`.
    Receipt { id: MsgId, to: Jid, receipt: v1::Receipt },
    /// Send a chat state notification.
    ChatState { to: Jid, state: v1::ChatState },
    /// Set this device's presence, or send directed presence.
    Presence { to: Option<Jid>, presence: v1::Presence },
    /// A subscription request or answer to a bare JID.
    Subscription { to: Jid, kind: v1::subscription::Kind },
    /// Fetch the roster, or the delta since `ver`.
    RosterGet { ver: u64 },
    /// Add or change a roster item.
    RosterSet { jid: Jid, name: String, groups: Vec<String> },
    /// Remove a roster item.
    RosterRemove { jid: Jid },
    /// The device has processed the inbox up to here.
    Ack { upto: Seq },
    /// Resend the inbox after here.
    Sync { after: Seq },
    /// Join a group chat room (XEP-0045): `room` is bare, `nick` is a valid resource of it.
    RoomJoin { room: Jid, nick: String, history: u32, password: String },
    /// Leave a group chat room.
    RoomLeave { room: Jid, status: String },
    /// Session options for this connection.
    Hello { peer_refs: bool, roster_ver: u64, numeric_ids: bool },
}

/// Why an upward envelope was refused, ready to send back as a `Down.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    /// The id of the refused envelope, when it could be read.
    pub id: String,
    /// The error code.
    pub code: Code,
    /// A short, human-readable reason.
    pub text: String,
}

impl EnvelopeError {
    fn new(id: &str, code: Code, text: impl Into<String>) -> Self {
        EnvelopeError { id: id.to_owned(), code, text: text.into() }
    }
    /// The `Down` envelope that reports this error.
    pub fn to_down(&self) -> v1::Down {
        error_down(&self.id, self.code, &self.text)
    }
}

/// A `Down` carrying an error about the envelope `id`.
pub fn error_down(id: &str, code: Code, text: &str) -> v1::Down {
    v1::Down {
        id: id.to_owned(),
        body: Some(down::Body::Error(v1::Error { code: code as i32, text: text.to_owned() })),
        ..Default::default()
    }
}

/// Decodes and validates one upward payload; `refs` are the session's peer refs, if it asked
/// for them.
pub fn decode_up(
    payload: &[u8],
    limits: &Limits,
    refs: Option<&PeerRefs>,
) -> Result<UpEnvelope, EnvelopeError> {
    let mut up = v1::Up::decode(payload)
        .map_err(|e| EnvelopeError::new("", Code::BadEnvelope, format!("not an Up: {e}")))?;
    if up.id.len() > crate::ids::MAX_MSG_ID {
        return Err(EnvelopeError::new("", Code::TooLarge, "id too long"));
    }
    if let Err(text) = expand_num_ids(&mut up) {
        return Err(EnvelopeError::new(&up.id, Code::BadEnvelope, text));
    }
    // A session without refs has none to resolve: any ref is unknown.
    let expanded = match refs {
        Some(refs) => refs.expand_up(&mut up),
        None => PeerRefs::default().expand_up(&mut up),
    };
    if let Err(UnknownRef(r)) = expanded {
        return Err(EnvelopeError::new(&up.id, Code::BadJid, format!("unknown peer_ref {r}")));
    }
    let id = up.id;
    let err = |code, text: &str| EnvelopeError::new(&id, code, text);
    let msg_id = || MsgId::parse(&id).map_err(|e| err(Code::BadEnvelope, &format!("id: {e}")));
    let jid = |s: &str| Jid::parse(s).map_err(|e| err(Code::BadJid, &e.to_string()));
    let cmd = match up.body.ok_or_else(|| err(Code::BadEnvelope, "empty body"))? {
        up::Body::Chat(chat) => {
            if chat.body.len() > limits.max_body || chat.thread.len() > limits.max_text {
                return Err(err(Code::TooLarge, "body too large"));
            }
            if v1::MessageType::try_from(chat.r#type).is_err() {
                return Err(err(Code::BadEnvelope, "unknown message type"));
            }
            UpCmd::Chat { id: msg_id()?, to: jid(&chat.peer)?, chat }
        }
        up::Body::Receipt(receipt) => {
            MsgId::parse(&receipt.id).map_err(|e| err(Code::BadEnvelope, &format!("receipt id: {e}")))?;
            if v1::receipt::Kind::try_from(receipt.kind).is_err() {
                return Err(err(Code::BadEnvelope, "unknown receipt kind"));
            }
            UpCmd::Receipt { id: msg_id()?, to: jid(&receipt.peer)?, receipt }
        }
        up::Body::ChatState(state) => {
            if v1::chat_state::State::try_from(state.state).is_err() {
                return Err(err(Code::BadEnvelope, "unknown chat state"));
            }
            UpCmd::ChatState { to: jid(&state.peer)?, state }
        }
        up::Body::Presence(presence) => {
            if presence.status.len() > limits.max_text {
                return Err(err(Code::TooLarge, "status too large"));
            }
            if v1::presence::Show::try_from(presence.show).is_err() {
                return Err(err(Code::BadEnvelope, "unknown show"));
            }
            let to = match presence.peer.as_str() {
                "" => None,
                peer => Some(jid(peer)?),
            };
            UpCmd::Presence { to, presence }
        }
        up::Body::Subscription(sub) => {
            let kind = v1::subscription::Kind::try_from(sub.kind)
                .map_err(|_| err(Code::BadEnvelope, "unknown subscription kind"))?;
            UpCmd::Subscription { to: jid(&sub.peer)?.to_bare(), kind }
        }
        up::Body::RosterGet(get) => UpCmd::RosterGet { ver: get.ver },
        up::Body::RosterSet(item) => {
            if item.name.len() > limits.max_text
                || item.groups.len() > limits.max_groups
                || item.groups.iter().any(|g| g.len() > limits.max_text)
            {
                return Err(err(Code::TooLarge, "roster item too large"));
            }
            UpCmd::RosterSet { jid: jid(&item.jid)?.to_bare(), name: item.name, groups: item.groups }
        }
        up::Body::RosterRemove(rm) => UpCmd::RosterRemove { jid: jid(&rm.jid)?.to_bare() },
        up::Body::Ack(ack) => UpCmd::Ack { upto: Seq(ack.upto) },
        up::Body::Sync(sync) => UpCmd::Sync { after: Seq(sync.after) },
        up::Body::RoomJoin(join) => {
            if join.nick.len() > limits.max_text || join.password.len() > limits.max_text {
                return Err(err(Code::TooLarge, "nick or password too large"));
            }
            let room = room_jid(&join.room).map_err(|text| err(Code::BadJid, &text))?;
            // The nick is the resource of the occupant JID (XEP-0045 §7.2.2).
            room.with_resource(&join.nick).map_err(|e| err(Code::BadJid, &format!("nick: {e}")))?;
            UpCmd::RoomJoin { room, nick: join.nick, history: join.history, password: join.password }
        }
        up::Body::RoomLeave(leave) => {
            if leave.status.len() > limits.max_text {
                return Err(err(Code::TooLarge, "status too large"));
            }
            let room = room_jid(&leave.room).map_err(|text| err(Code::BadJid, &text))?;
            UpCmd::RoomLeave { room, status: leave.status }
        }
        up::Body::Hello(hello) => UpCmd::Hello {
            peer_refs: hello.peer_refs,
            roster_ver: hello.roster_ver,
            numeric_ids: hello.numeric_ids,
        },
    };
    Ok(UpEnvelope { id, cmd })
}

/// Replaces each numeric id of `up` by the string id it stands for (docs/PROTOCOL.md "Numeric
/// ids"), so that nothing past decoding sees the numeric form.
fn expand_num_ids(up: &mut v1::Up) -> Result<(), &'static str> {
    if !num_id::expand(&mut up.id, &mut up.num_id) {
        return Err("both id and num_id");
    }
    if let Some(up::Body::Receipt(r)) = up.body.as_mut() {
        if !num_id::expand(&mut r.id, &mut r.num_id) {
            return Err("receipt has both id and num_id");
        }
    }
    Ok(())
}

/// Sends each id of `down` that is a number as its `num_id`, for a device that asked for
/// numeric ids; true if anything changed.
pub fn compact_num_ids(down: &mut v1::Down) -> bool {
    let mut changed = num_id::compact(&mut down.id, &mut down.num_id);
    if let Some(down::Body::Receipt(r)) = down.body.as_mut() {
        changed |= num_id::compact(&mut r.id, &mut r.num_id);
    }
    changed
}

/// A room's JID: bare, with a local part (the room name).
fn room_jid(s: &str) -> Result<Jid, String> {
    let room = Jid::parse(s).map_err(|e| e.to_string())?;
    if !room.is_bare() || room.local().is_none() {
        return Err(format!("{s:?} is not a room's bare JID"));
    }
    Ok(room)
}

/// Short name of an envelope kind, for metric labels.
pub fn up_kind(cmd: &UpCmd) -> &'static str {
    match cmd {
        UpCmd::Chat { .. } => "chat",
        UpCmd::Receipt { .. } => "receipt",
        UpCmd::ChatState { .. } => "chat_state",
        UpCmd::Presence { .. } => "presence",
        UpCmd::Subscription { .. } => "subscription",
        UpCmd::RosterGet { .. } => "roster_get",
        UpCmd::RosterSet { .. } => "roster_set",
        UpCmd::RosterRemove { .. } => "roster_remove",
        UpCmd::Ack { .. } => "ack",
        UpCmd::Sync { .. } => "sync",
        UpCmd::RoomJoin { .. } => "room_join",
        UpCmd::RoomLeave { .. } => "room_leave",
        UpCmd::Hello { .. } => "hello",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(up: v1::Up) -> Vec<u8> {
        up.encode_to_vec()
    }

    fn chat_to(peer: &str, body: &str) -> v1::Up {
        v1::Up {
            id: "m1".into(),
            body: Some(up::Body::Chat(v1::Chat {
                peer: peer.into(),
                body: body.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_chat_round_trips_into_a_command() {
        let env = decode_up(&encode(chat_to("Bob@Example.org", "hi")), &Limits::default(), None).unwrap();
        let UpCmd::Chat { id, to, chat } = env.cmd else { panic!("chat expected") };
        assert_eq!(id.as_str(), "m1");
        assert_eq!(to.to_string(), "bob@example.org");
        assert_eq!(chat.body, "hi");
    }

    #[test]
    fn exact_errors() {
        let limits = Limits { max_body: 4, ..Limits::default() };
        let e = decode_up(&encode(chat_to("bob@x", "hello")), &limits, None).unwrap_err();
        assert_eq!((e.id.as_str(), e.code), ("m1", Code::TooLarge));
        let e = decode_up(&encode(chat_to("@x", "hi")), &limits, None).unwrap_err();
        assert_eq!(e.code, Code::BadJid);
        let e = decode_up(b"\xff\xff\xff", &limits, None).unwrap_err();
        assert_eq!((e.id.as_str(), e.code), ("", Code::BadEnvelope));
        let e =
            decode_up(&encode(v1::Up { id: "x".into(), body: None, ..Default::default() }), &limits, None)
                .unwrap_err();
        assert_eq!((e.id.as_str(), e.code), ("x", Code::BadEnvelope));
        let mut no_id = chat_to("bob@x", "hi");
        no_id.id.clear();
        assert_eq!(decode_up(&encode(no_id), &limits, None).unwrap_err().code, Code::BadEnvelope);
    }

    #[test]
    fn subscriptions_and_roster_items_are_bare() {
        let up = v1::Up {
            id: "s".into(),
            body: Some(up::Body::Subscription(v1::Subscription {
                peer: "bob@x/phone".into(),
                kind: 0,
                ..Default::default()
            })),
            ..Default::default()
        };
        let UpCmd::Subscription { to, .. } = decode_up(&encode(up), &Limits::default(), None).unwrap().cmd
        else {
            panic!("subscription expected")
        };
        assert!(to.is_bare());
    }

    #[test]
    fn room_joins_and_leaves_are_checked() {
        let join = |room: &str, nick: &str| {
            let body = up::Body::RoomJoin(v1::RoomJoin {
                room: room.into(),
                nick: nick.into(),
                history: 5,
                password: String::new(),
            });
            decode_up(
                &encode(v1::Up { id: "j".into(), body: Some(body), ..Default::default() }),
                &Limits::default(),
                None,
            )
        };
        let UpCmd::RoomJoin { room, nick, history, .. } = join("Lounge@muc.x", "Alice").unwrap().cmd else {
            panic!("join expected")
        };
        assert_eq!((room.to_string().as_str(), nick.as_str(), history), ("lounge@muc.x", "Alice", 5));
        for (room, nick) in
            [("lounge@muc.x/Alice", "A"), ("muc.x", "A"), ("@muc.x", "A"), ("lounge@muc.x", "")]
        {
            let e = join(room, nick).unwrap_err();
            assert_eq!((e.id.as_str(), e.code), ("j", Code::BadJid), "{room} {nick}");
        }
        assert_eq!(join("lounge@muc.x", &"n".repeat(2000)).unwrap_err().code, Code::TooLarge);
        let leave = v1::Up {
            id: "l".into(),
            body: Some(up::Body::RoomLeave(v1::RoomLeave {
                room: "lounge@muc.x".into(),
                status: "bye".into(),
            })),
            ..Default::default()
        };
        let cmd = decode_up(&encode(leave), &Limits::default(), None).unwrap().cmd;
        assert!(matches!(cmd, UpCmd::RoomLeave { ref status, .. } if status == "bye"));
    }

    #[test]
    fn peer_refs_stand_for_contacts_and_unknown_ones_are_refused() {
        let refs = PeerRefs::new([("bob@example.org".to_owned(), 3, true)]);
        let by_ref = |peer_ref| v1::Up {
            id: "m1".into(),
            body: Some(up::Body::Chat(v1::Chat {
                peer_ref,
                resource: "phone".into(),
                body: "hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let env = decode_up(&encode(by_ref(3)), &Limits::default(), Some(&refs)).unwrap();
        let UpCmd::Chat { to, chat, .. } = env.cmd else { panic!("chat") };
        assert_eq!(
            (to.to_string(), chat.peer.as_str()),
            ("bob@example.org/phone".into(), "bob@example.org/phone")
        );
        let e = decode_up(&encode(by_ref(4)), &Limits::default(), Some(&refs)).unwrap_err();
        assert_eq!((e.id.as_str(), e.code, e.text.as_str()), ("m1", Code::BadJid, "unknown peer_ref 4"));
        // Without Hello{peer_refs} no ref means anything.
        let e = decode_up(&encode(by_ref(3)), &Limits::default(), None).unwrap_err();
        assert_eq!((e.code, e.text.as_str()), (Code::BadJid, "unknown peer_ref 3"));
    }

    #[test]
    fn hello_carries_the_session_options() {
        let hello = v1::Up {
            id: String::new(),
            body: Some(up::Body::Hello(v1::Hello { peer_refs: true, roster_ver: 12, numeric_ids: true })),
            ..Default::default()
        };
        let cmd = decode_up(&encode(hello), &Limits::default(), None).unwrap().cmd;
        assert_eq!(cmd, UpCmd::Hello { peer_refs: true, roster_ver: 12, numeric_ids: true });
        assert_eq!(up_kind(&cmd), "hello");
    }

    #[test]
    fn numeric_ids_stand_for_their_rendering() {
        let chat = v1::Up {
            num_id: 1000,
            body: Some(up::Body::Chat(v1::Chat { peer: "bob@x.test".into(), ..Default::default() })),
            ..Default::default()
        };
        let env = decode_up(&encode(chat.clone()), &Limits::default(), None).unwrap();
        assert_eq!(env.id, "Po");
        assert!(matches!(env.cmd, UpCmd::Chat { ref id, .. } if id.as_str() == "Po"));
        let receipt = v1::Up {
            num_id: 1001,
            body: Some(up::Body::Receipt(v1::Receipt {
                peer: "bob@x.test".into(),
                num_id: 64,
                ..Default::default()
            })),
            ..Default::default()
        };
        let env = decode_up(&encode(receipt), &Limits::default(), None).unwrap();
        let UpCmd::Receipt { id, receipt, .. } = env.cmd else { panic!("a receipt") };
        assert_eq!((id.as_str(), receipt.id.as_str(), receipt.num_id), ("Pp", "BA", 0));
    }

    #[test]
    fn an_id_given_both_ways_is_refused() {
        let both = v1::Up { id: "Po".into(), ..v1::Up::default() };
        let mut chat = v1::Up { num_id: 1000, ..both };
        chat.body = Some(up::Body::Chat(v1::Chat { peer: "bob@x.test".into(), ..Default::default() }));
        let e = decode_up(&encode(chat), &Limits::default(), None).unwrap_err();
        assert_eq!((e.code, e.text.as_str()), (Code::BadEnvelope, "both id and num_id"));
        let receipt = v1::Up {
            num_id: 7,
            body: Some(up::Body::Receipt(v1::Receipt {
                peer: "bob@x.test".into(),
                id: "m1".into(),
                num_id: 8,
                ..Default::default()
            })),
            ..Default::default()
        };
        let e = decode_up(&encode(receipt), &Limits::default(), None).unwrap_err();
        assert_eq!(
            (e.id.as_str(), e.code, e.text.as_str()),
            ("H", Code::BadEnvelope, "receipt has both id and num_id")
        );
    }

    #[test]
    fn downs_carry_numbers_only_where_the_id_is_one() {
        let mut down = v1::Down {
            id: "Po".into(),
            body: Some(down::Body::Receipt(v1::Receipt { id: "m.17".into(), ..Default::default() })),
            ..Default::default()
        };
        assert!(compact_num_ids(&mut down));
        let Some(down::Body::Receipt(r)) = &down.body else { panic!("a receipt") };
        assert_eq!((down.id.as_str(), down.num_id, r.id.as_str(), r.num_id), ("", 1000, "m.17", 0));
        let mut kept = v1::Down { id: "APo".into(), ..Default::default() };
        assert!(!compact_num_ids(&mut kept));
        assert_eq!((kept.id.as_str(), kept.num_id), ("APo", 0));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_up(&bytes, &Limits::default(), None);
            let refs = PeerRefs::new([("bob@x.test".to_owned(), 1, true)]);
            let _ = decode_up(&bytes, &Limits::default(), Some(&refs));
        }

        #[test]
        fn mutated_valid_envelopes_never_panic(flip in 0usize..64, bit in 0u8..8) {
            let mut bytes = encode(chat_to("bob@example.org/phone", "hello there"));
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode_up(&bytes, &Limits::default(), None);
        }
    }
}
