//! Tests for the XEP-0045 mapping, with stanzas as Prosody's `muc` component sends them.

use tern_schemas::v1::{self, error::Code, occupant, presence};

use super::muc::*;
use crate::jid::Jid;
use crate::stanza::tests::parse_xml;
use crate::stanza::{Condition, Iq, Presence, Stanza, StanzaError};
use crate::stream::NS_SERVER;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn event(xml: &str) -> Result<Option<RoomEvent>, MucError> {
    room_event(&Stanza::parse(&parse_xml(xml)).unwrap())
}

fn occupant(xml: &str) -> v1::Occupant {
    match event(xml) {
        Ok(Some(RoomEvent::Occupant(o))) => o,
        other => panic!("not an occupant: {other:?}"),
    }
}

#[test]
fn join_presence_asks_for_history_and_password() {
    let me = jid("alice@tern.test/phone");
    let room = jid("lounge@muc.xmpp.test/Alice");
    let xml = |h, pw| join_presence(&me, &room, h, pw).to_element(NS_SERVER).to_string();
    assert_eq!(
        xml(History::Default, None),
        "<presence xmlns='jabber:server' from='alice@tern.test/phone' to='lounge@muc.xmpp.test/Alice'>\
         <x xmlns='http://jabber.org/protocol/muc'/></presence>"
    );
    assert_eq!(
        xml(History::MaxStanzas(20), Some("s3cret")),
        "<presence xmlns='jabber:server' from='alice@tern.test/phone' to='lounge@muc.xmpp.test/Alice'>\
         <x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='20'/>\
         <password>s3cret</password></x></presence>"
    );
    assert_eq!(
        xml(History::Since(1_031_699_305_000), Some("")),
        "<presence xmlns='jabber:server' from='alice@tern.test/phone' to='lounge@muc.xmpp.test/Alice'>\
         <x xmlns='http://jabber.org/protocol/muc'><history since='2002-09-10T23:08:25Z'/></x></presence>"
    );
    // It round-trips through the stanza parser.
    let p = join_presence(&me, &room, History::MaxStanzas(0), None);
    assert_eq!(Presence::parse(&p.to_element(NS_SERVER)), Ok(p));
}

#[test]
fn leave_presence_is_unavailable_with_status() {
    let p = leave_presence(&jid("alice@tern.test/phone"), &jid("lounge@muc.xmpp.test/Alice"), Some("bye"));
    assert_eq!(
        p.to_element(NS_SERVER).to_string(),
        "<presence xmlns='jabber:server' from='alice@tern.test/phone' to='lounge@muc.xmpp.test/Alice' \
         type='unavailable'><status>bye</status></presence>"
    );
}

#[test]
fn own_presence_after_join() {
    let o = occupant(
        "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/Alice' to='alice@tern.test/phone' \
         id='j1'><x xmlns='http://jabber.org/protocol/muc#user'><status code='100'/>\
         <item affiliation='owner' role='moderator' jid='alice@tern.test/phone'/><status code='110'/>\
         <status code='201'/></x></presence>",
    );
    assert_eq!(
        o,
        v1::Occupant {
            room: "lounge@muc.xmpp.test".into(),
            nick: "Alice".into(),
            show: presence::Show::Available as i32,
            status: String::new(),
            affiliation: occupant::Affiliation::Owner as i32,
            role: occupant::Role::Moderator as i32,
            jid: "alice@tern.test/phone".into(),
            is_self: true,
            codes: vec![100, 201],
            new_nick: String::new(),
        }
    );
    assert!(!is_leave(&o));
}

#[test]
fn other_occupants_change_and_leave() {
    let o = occupant(
        "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone'>\
         <show>away</show><status>lunch</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='n' ver='v'/><x xmlns='http://jabber.org/protocol/muc#user'>\
         <item affiliation='none' role='participant'/></x></presence>",
    );
    assert_eq!((o.nick.as_str(), o.status.as_str(), o.is_self), ("bob", "lunch", false));
    assert_eq!(o.show, presence::Show::Away as i32);
    assert_eq!((o.affiliation, o.role, o.jid.as_str()), (0, 0, ""));
    let left = occupant(
        "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
         type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <item affiliation='none' role='none'><reason>spam</reason></item><status code='307'/></x></presence>",
    );
    assert!(is_leave(&left));
    assert_eq!((left.role, left.codes.as_slice()), (occupant::Role::NoRole as i32, &[307][..]));
    let renamed = occupant(
        "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
         type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <item affiliation='member' role='participant' nick='robert'/><status code='303'/></x></presence>",
    );
    assert_eq!(
        (renamed.new_nick.as_str(), renamed.affiliation),
        ("robert", occupant::Affiliation::Member as i32)
    );
}

#[test]
fn groupchat_messages_history_and_subject() {
    let live = event(
        "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
         type='groupchat' id='g1'><body>hi all</body></message>",
    );
    let chat = |ts| v1::Chat {
        peer: "lounge@muc.xmpp.test/bob".into(),
        body: "hi all".into(),
        thread: String::new(),
        r#type: v1::MessageType::Groupchat as i32,
        ts,
        outgoing: false,
        ..Default::default()
    };
    assert_eq!(live, Ok(Some(RoomEvent::Message(chat(0)))));
    let history = event(
        "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
         type='groupchat' id='g1'><body>hi all</body>\
         <delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test' stamp='2002-09-10T23:08:25Z'/></message>",
    );
    assert_eq!(history, Ok(Some(RoomEvent::Message(chat(1_031_699_305_000)))));
    let subject = event(
        "<message xmlns='jabber:server' from='lounge@muc.xmpp.test' to='alice@tern.test/phone' \
         type='groupchat'><subject/><delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test' \
         stamp='2002-09-10T23:08:25.5Z'/></message>",
    );
    let want = v1::RoomSubject {
        room: "lounge@muc.xmpp.test".into(),
        nick: String::new(),
        subject: String::new(),
        ts: 1_031_699_305_500,
    };
    assert_eq!(subject, Ok(Some(RoomEvent::Subject(want))));
    // Chat states and private messages are not room events.
    let state = "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
                 type='groupchat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
    assert_eq!(event(state), Ok(None));
    let private =
        "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone' \
                   type='chat'><body>psst</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>";
    assert_eq!(event(private), Ok(None));
    // Presence without muc#user is nobody's occupant presence.
    assert_eq!(event("<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/bob'/>"), Ok(None));
}

#[test]
fn join_errors_map_to_codes() {
    let err = |condition: &str| {
        event(&format!(
            "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/Alice' to='alice@tern.test/phone' \
             type='error'><x xmlns='http://jabber.org/protocol/muc'/><error type='cancel' by='lounge@muc.xmpp.test'>\
             <{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ))
    };
    let cases = [
        ("conflict", Code::Conflict),
        ("not-authorized", Code::NotAuthorized),
        ("forbidden", Code::NotAllowed),
        ("registration-required", Code::NotAllowed),
        ("item-not-found", Code::ServiceUnavailable),
        ("service-unavailable", Code::ServiceUnavailable),
        ("remote-server-not-found", Code::RemoteServerNotFound),
    ];
    for (condition, code) in cases {
        let Ok(Some(RoomEvent::Error { code: got, text, error })) = err(condition) else {
            panic!("{condition}")
        };
        assert_eq!((got, text.as_str(), error.condition.name()), (code, condition, condition));
    }
}

#[test]
fn exact_errors_for_invalid_input() {
    let presence = |item: &str, status: &str| {
        format!(
            "<presence xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' to='alice@tern.test/phone'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>{item}{status}</x></presence>"
        )
    };
    let cases = [
        (presence("", ""), MucError::MissingItem),
        (presence("<item affiliation='king' role='none'/>", ""), MucError::BadAffiliation("king".into())),
        (presence("<item affiliation='none' role='god'/>", ""), MucError::BadRole("god".into())),
        (
            presence("<item affiliation='none' role='none'/>", "<status code='11O'/>"),
            MucError::BadStatusCode("11O".into()),
        ),
        (
            presence("<item affiliation='none' role='none'/>", "<status code='+110'/>"),
            MucError::BadStatusCode("+110".into()),
        ),
        (
            presence("<item affiliation='none' role='none'/>", "<status/>"),
            MucError::BadStatusCode(String::new()),
        ),
        (
            "<presence xmlns='jabber:server' from='muc.xmpp.test' to='alice@tern.test/phone'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item/></x></presence>"
                .to_owned(),
            MucError::NoNick("muc.xmpp.test".into()),
        ),
    ];
    for (xml, want) in cases {
        assert_eq!(event(&xml), Err(want), "{xml}");
    }
}

#[test]
fn self_ping_and_its_answers() {
    let me = jid("alice@tern.test/phone");
    let ping = self_ping(&me, &jid("lounge@muc.xmpp.test/Alice"), "sp1");
    assert_eq!(
        ping.to_element(NS_SERVER).to_string(),
        "<iq xmlns='jabber:server' from='alice@tern.test/phone' to='lounge@muc.xmpp.test/Alice' id='sp1' \
         type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
    );
    assert_eq!(Iq::parse(&ping.to_element(NS_SERVER)), Ok(ping.clone()));
    assert_eq!(self_ping_answer(&ping), None);
    assert_eq!(self_ping_answer(&ping.result_reply(None)), Some(Membership::Joined));
    let answer = |c: Condition| self_ping_answer(&ping.error_reply(StanzaError::new(c)));
    for c in [Condition::ServiceUnavailable, Condition::FeatureNotImplemented, Condition::ItemNotFound] {
        assert_eq!(answer(c.clone()), Some(Membership::Joined), "{c:?}");
    }
    for c in [Condition::RemoteServerNotFound, Condition::RemoteServerTimeout] {
        assert_eq!(answer(c.clone()), Some(Membership::Unknown), "{c:?}");
    }
    for c in [Condition::NotAcceptable, Condition::Forbidden, Condition::BadRequest] {
        assert_eq!(answer(c.clone()), Some(Membership::Gone), "{c:?}");
    }
    // As Prosody answers a non-occupant's ping.
    let el = parse_xml(
        "<iq xmlns='jabber:server' from='lounge@muc.xmpp.test/Alice' to='alice@tern.test/phone' id='sp1' \
         type='error'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         </error></iq>",
    );
    assert_eq!(self_ping_answer(&Iq::parse(&el).unwrap()), Some(Membership::Gone));
}

#[test]
fn which_errors_end_a_membership() {
    assert!(is_not_occupant(&StanzaError::new(Condition::NotAcceptable)));
    assert!(is_not_occupant(&StanzaError::new(Condition::ItemNotFound)));
    assert!(!is_not_occupant(&StanzaError::new(Condition::Forbidden)));
    assert!(is_final_refusal(&StanzaError::new(Condition::Conflict)));
    assert!(!is_final_refusal(&StanzaError::new(Condition::RemoteServerNotFound)));
}

#[test]
fn only_the_rooms_delay_stamps_count() {
    let msg = |delay: &str| {
        event(&format!(
            "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' type='groupchat'><body>x</body>\
             {delay}</message>"
        ))
    };
    let ts = |e: Result<Option<RoomEvent>, MucError>| match e {
        Ok(Some(RoomEvent::Message(chat))) => chat.ts,
        other => panic!("not a message: {other:?}"),
    };
    // An occupant's own stamp, one without a from, or one that does not parse: live, not dropped.
    for delay in [
        "<delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test/bob' stamp='9999-12-31T23:59:59Z'/>",
        "<delay xmlns='urn:xmpp:delay' stamp='9999-12-31T23:59:59Z'/>",
        "<delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test' stamp='last tuesday'/>",
    ] {
        assert_eq!(ts(msg(delay)), 0, "{delay}");
    }
    let room = "<delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test' stamp='2002-09-10T23:08:25Z'/>";
    assert_eq!(ts(msg(room)), 1_031_699_305_000);
}

#[test]
fn history_keys_prefer_the_rooms_stanza_id() {
    let key = |xml: &str| {
        let Stanza::Message(m) = Stanza::parse(&parse_xml(xml)).unwrap() else { panic!("not a message") };
        let Ok(Some(RoomEvent::Message(chat))) = room_event(&Stanza::Message(m.clone())) else {
            panic!("{xml}")
        };
        history_key(&m, &chat)
    };
    let with = |attrs: &str, extra: &str| {
        key(&format!(
            "<message xmlns='jabber:server' from='lounge@muc.xmpp.test/bob' type='groupchat' {attrs}>\
             <body>hi</body>{extra}</message>"
        ))
    };
    let sid = "<stanza-id xmlns='urn:xmpp:sid:0' by='lounge@muc.xmpp.test' id='S1'/>";
    let forged = "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@elsewhere' id='F1'/>";
    assert_eq!(with("id='m1'", sid), "s:S1");
    assert_eq!(with("id='m1'", forged), "i:lounge@muc.xmpp.test/bob:m1");
    let stamp = "<delay xmlns='urn:xmpp:delay' from='lounge@muc.xmpp.test' stamp='2002-09-10T23:08:25Z'/>";
    let hashed = with("", stamp);
    assert!(hashed.starts_with("h:") && hashed.len() == 18, "{hashed}");
    // The same history entry hashes the same; another stamp or body does not.
    assert_eq!(with("", stamp), hashed);
    assert_ne!(with("", ""), hashed);
}
