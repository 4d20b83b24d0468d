//! Golden tests for the envelope ⇄ stanza mapping (RFC 6121, XEP-0184, XEP-0333, XEP-0085,
//! XEP-0030, XEP-0199, XEP-0092), with stanzas as Prosody and Conversations send them.

use tern_schemas::v1::{self, chat_state, down, presence, receipt, subscription, up};

use super::*;
use crate::jid::{Jid, JidError};
use crate::stanza::tests::parse_xml;
use crate::stanza::{Iq, Stanza};
use crate::stream::NS_SERVER;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn alice() -> Jid {
    jid("alice@tern.test/phone")
}

/// The XML `outbound` writes for `body` from alice's phone with Up id `id`.
fn out_xml(id: &str, body: up::Body) -> String {
    outbound(&alice(), id, &body).unwrap().expect("a stanza").to_element(NS_SERVER).to_string()
}

/// `inbound` of the stanza `xml`.
fn in_body(xml: &str) -> Option<(Jid, down::Body)> {
    inbound(&Stanza::parse(&parse_xml(xml)).unwrap())
}

fn chat(peer: &str, body: &str, thread: &str, type_: v1::MessageType) -> v1::Chat {
    v1::Chat {
        peer: peer.into(),
        body: body.into(),
        thread: thread.into(),
        r#type: type_ as i32,
        ts: 0,
        outgoing: false,
        ..Default::default()
    }
}

#[test]
fn outbound_chat() {
    let xml = out_xml("m1", up::Body::Chat(chat("bob@example.org", "hi & bye", "t1", v1::MessageType::Chat)));
    assert_eq!(
        xml,
        "<message xmlns='jabber:server' from='alice@tern.test/phone' to='bob@example.org' id='m1' \
         type='chat'><body>hi &amp; bye</body><thread>t1</thread><request xmlns='urn:xmpp:receipts'/>\
         <markable xmlns='urn:xmpp:chat-markers:0'/></message>"
    );
    let groupchat = chat("room@muc.example.org", "hello room", "", v1::MessageType::Groupchat);
    assert_eq!(
        out_xml("m2", up::Body::Chat(groupchat)),
        "<message xmlns='jabber:server' from='alice@tern.test/phone' to='room@muc.example.org' id='m2' \
         type='groupchat'><body>hello room</body><markable xmlns='urn:xmpp:chat-markers:0'/></message>"
    );
}

#[test]
fn outbound_receipts_and_chat_states() {
    let delivered = v1::Receipt {
        peer: "bob@example.org/laptop".into(),
        id: "b4e3f2".into(),
        kind: receipt::Kind::Delivered as i32,
        outgoing: false,
        ..Default::default()
    };
    assert_eq!(
        out_xml("r1", up::Body::Receipt(delivered.clone())),
        "<message xmlns='jabber:server' from='alice@tern.test/phone' to='bob@example.org/laptop' id='r1' \
         type='chat'><received xmlns='urn:xmpp:receipts' id='b4e3f2'/><store xmlns='urn:xmpp:hints'/>\
         </message>"
    );
    let read = v1::Receipt { kind: receipt::Kind::Read as i32, ..delivered };
    assert_eq!(
        out_xml("r2", up::Body::Receipt(read)),
        "<message xmlns='jabber:server' from='alice@tern.test/phone' to='bob@example.org/laptop' id='r2' \
         type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='b4e3f2'/>\
         <store xmlns='urn:xmpp:hints'/></message>"
    );
    let composing = v1::ChatState {
        peer: "bob@example.org".into(),
        state: chat_state::State::Composing as i32,
        ..Default::default()
    };
    assert_eq!(
        out_xml("", up::Body::ChatState(composing)),
        "<message xmlns='jabber:server' from='alice@tern.test/phone' to='bob@example.org' type='chat'>\
         <composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    );
}

#[test]
fn outbound_presence_and_subscription() {
    let away = v1::Presence {
        peer: String::new(),
        show: presence::Show::Away as i32,
        status: "lunch".into(),
        priority: 5,
        ..Default::default()
    };
    assert_eq!(
        out_xml("p1", up::Body::Presence(away)),
        format!(
            "<presence xmlns='jabber:server' from='alice@tern.test/phone' id='p1'><show>away</show>\
             <status>lunch</status><priority>5</priority>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:tern:caps' ver='{}'/></presence>",
            caps::device_ver()
        )
    );
    let offline = v1::Presence {
        peer: "room@muc.example.org/alice".into(),
        show: presence::Show::Unavailable as i32,
        status: String::new(),
        priority: 3,
        ..Default::default()
    };
    assert_eq!(
        out_xml("", up::Body::Presence(offline)),
        "<presence xmlns='jabber:server' from='alice@tern.test/phone' to='room@muc.example.org/alice' \
         type='unavailable'/>"
    );
    let sub = v1::Subscription {
        peer: "bob@example.org/laptop".into(),
        kind: subscription::Kind::Subscribe as i32,
        ..Default::default()
    };
    assert_eq!(
        out_xml("s1", up::Body::Subscription(sub)),
        "<presence xmlns='jabber:server' from='alice@tern.test' to='bob@example.org' id='s1' type='subscribe'/>"
    );
    for (kind, t) in [
        (subscription::Kind::Subscribed, "subscribed"),
        (subscription::Kind::Unsubscribe, "unsubscribe"),
        (subscription::Kind::Unsubscribed, "unsubscribed"),
    ] {
        let sub =
            v1::Subscription { peer: "bob@example.org".into(), kind: kind as i32, ..Default::default() };
        assert!(out_xml("", up::Body::Subscription(sub)).ends_with(&format!("type='{t}'/>")));
    }
}

#[test]
fn outbound_non_stanzas_and_errors() {
    let a = alice();
    assert_eq!(outbound(&a, "x", &up::Body::Ack(v1::Ack { upto: 3 })), Ok(None));
    assert_eq!(outbound(&a, "x", &up::Body::RosterGet(v1::RosterGet { ver: 0 })), Ok(None));

    let no_peer = up::Body::Chat(chat("", "hi", "", v1::MessageType::Chat));
    assert_eq!(outbound(&a, "x", &no_peer), Err(OutboundError::MissingField("peer")));
    let bad_peer = up::Body::Chat(chat("bob@", "hi", "", v1::MessageType::Chat));
    let err = outbound(&a, "x", &bad_peer).unwrap_err();
    assert_eq!(err, OutboundError::BadPeer { peer: "bob@".into(), error: JidError::EmptyDomain });
    assert_eq!(err.code(), v1::error::Code::BadJid);
    let bad_type = up::Body::Chat(v1::Chat { r#type: 9, ..chat("b@c", "hi", "", v1::MessageType::Chat) });
    assert_eq!(
        outbound(&a, "x", &bad_type),
        Err(OutboundError::UnknownEnum { what: "message type", value: 9 })
    );
    let no_id = up::Body::Receipt(v1::Receipt { peer: "b@c".into(), ..Default::default() });
    assert_eq!(outbound(&a, "x", &no_id), Err(OutboundError::MissingField("id")));
    let loud = up::Body::Presence(v1::Presence { priority: 128, ..Default::default() });
    let err = outbound(&a, "x", &loud).unwrap_err();
    assert_eq!(err, OutboundError::PriorityOutOfRange(128));
    assert_eq!(err.code(), v1::error::Code::BadEnvelope);
}

#[test]
fn inbound_conversations_chat() {
    // Everything besides the body (receipt request, marker, chat state, delay, ids, OMEMO-less
    // unknown payloads) is ignored.
    let got = in_body(
        "<message xmlns='jabber:server' from='romeo@montague.example/Conversations.x1' \
         to='juliet@tern.test' type='chat' id='b4e3f2' xml:lang='en'>\
         <body>Art thou not Romeo?</body><thread>e0ffe42b</thread>\
         <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/>\
         <active xmlns='http://jabber.org/protocol/chatstates'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='b4e3f2'/>\
         <delay xmlns='urn:xmpp:delay' from='montague.example' stamp='2026-11-23T15:00:00Z'/>\
         <x xmlns='urn:example:unknown'><y/></x></message>",
    );
    let want = chat(
        "romeo@montague.example/Conversations.x1",
        "Art thou not Romeo?",
        "e0ffe42b",
        v1::MessageType::Chat,
    );
    assert_eq!(got, Some((jid("juliet@tern.test"), down::Body::Chat(want))));
}

#[test]
fn inbound_groupchat_and_normal() {
    let got = in_body(
        "<message xmlns='jabber:server' from='room@muc.example.org/romeo' to='alice@tern.test/phone' \
         type='groupchat' id='g1'><body>hello room</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='abc' by='room@muc.example.org'/></message>",
    );
    let want = chat("room@muc.example.org/romeo", "hello room", "", v1::MessageType::Groupchat);
    assert_eq!(got, Some((alice(), down::Body::Chat(want))));
    let got = in_body(
        "<message xmlns='jabber:server' from='example.org' to='alice@tern.test'><body>motd</body></message>",
    );
    let want = chat("example.org", "motd", "", v1::MessageType::Normal);
    assert_eq!(got, Some((jid("alice@tern.test"), down::Body::Chat(want))));
    // A room subject change carries no body: it becomes a RoomSubject (XEP-0045 §8.1).
    let subject = "<message xmlns='jabber:server' from='room@muc.example.org/romeo' \
                   to='alice@tern.test/phone' type='groupchat'><subject>Topic</subject></message>";
    let want = v1::RoomSubject {
        room: "room@muc.example.org".into(),
        nick: "romeo".into(),
        subject: "Topic".into(),
        ts: 0,
    };
    assert_eq!(in_body(subject), Some((alice(), down::Body::Subject(want))));
}

#[test]
fn inbound_receipts() {
    let receipt = |peer: &str, id: &str, kind: receipt::Kind| {
        Some((
            jid("alice@tern.test"),
            down::Body::Receipt(v1::Receipt {
                peer: peer.into(),
                id: id.into(),
                kind: kind as i32,
                outgoing: false,
                ..Default::default()
            }),
        ))
    };
    let delivered = "<message xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test' \
                     id='r9'><received xmlns='urn:xmpp:receipts' id='m1'/><store xmlns='urn:xmpp:hints'/></message>";
    assert_eq!(in_body(delivered), receipt("bob@example.org/laptop", "m1", receipt::Kind::Delivered));
    let displayed = "<message xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test' \
                     type='chat' id='r10'><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>";
    assert_eq!(in_body(displayed), receipt("bob@example.org/laptop", "m1", receipt::Kind::Read));
    // Pre-1.1 XEP-0184: the receipt reuses the original's id as its own.
    let legacy = "<message xmlns='jabber:server' from='bob@example.org/old' to='alice@tern.test' id='m2'>\
                  <received xmlns='urn:xmpp:receipts'/></message>";
    assert_eq!(in_body(legacy), receipt("bob@example.org/old", "m2", receipt::Kind::Delivered));
    let no_id = "<message xmlns='jabber:server' from='b@x' to='alice@tern.test'>\
                 <received xmlns='urn:xmpp:receipts'/></message>";
    assert_eq!(in_body(no_id), None);
}

#[test]
fn inbound_chat_state_and_ignored() {
    let got = in_body(
        "<message xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test/phone' \
         type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/>\
         <no-store xmlns='urn:xmpp:hints'/></message>",
    );
    let want = v1::ChatState {
        peer: "bob@example.org/laptop".into(),
        state: chat_state::State::Paused as i32,
        ..Default::default()
    };
    assert_eq!(got, Some((alice(), down::Body::ChatState(want))));
    for xml in [
        // Only unknown payloads.
        "<message xmlns='jabber:server' from='b@x' to='alice@tern.test'><x xmlns='urn:example'/></message>",
        // An error bounce.
        "<message xmlns='jabber:server' from='b@x' to='alice@tern.test' type='error'><body>hi</body>\
         <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        // No from or no to.
        "<message xmlns='jabber:server' to='alice@tern.test'><body>hi</body></message>",
        "<message xmlns='jabber:server' from='b@x'><body>hi</body></message>",
        "<presence xmlns='jabber:server' from='b@x' to='alice@tern.test' type='probe'/>",
        "<iq xmlns='jabber:server' from='b@x' to='alice@tern.test' id='1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
    ] {
        assert_eq!(in_body(xml), None, "{xml}");
    }
}

#[test]
fn inbound_presence_and_subscription() {
    let got = in_body(
        "<presence xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test'>\
         <show>xa</show><status>gone fishing</status><priority>-1</priority>\
         <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://conversations.im' ver='x='/>\
         <delay xmlns='urn:xmpp:delay' stamp='2026-11-23T15:00:00Z'/></presence>",
    );
    let want = v1::Presence {
        peer: "bob@example.org/laptop".into(),
        show: presence::Show::Xa as i32,
        status: "gone fishing".into(),
        priority: -1,
        ..Default::default()
    };
    assert_eq!(got, Some((jid("alice@tern.test"), down::Body::Presence(want))));
    let gone = in_body("<presence xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test' type='unavailable'/>");
    let want = v1::Presence {
        peer: "bob@example.org/laptop".into(),
        show: presence::Show::Unavailable as i32,
        ..Default::default()
    };
    assert_eq!(gone, Some((jid("alice@tern.test"), down::Body::Presence(want))));
    let sub = in_body("<presence xmlns='jabber:server' from='bob@example.org/laptop' to='alice@tern.test' type='subscribed'/>");
    let want = v1::Subscription {
        peer: "bob@example.org".into(),
        kind: subscription::Kind::Subscribed as i32,
        ..Default::default()
    };
    assert_eq!(sub, Some((jid("alice@tern.test"), down::Body::Subscription(want))));
}

#[test]
fn round_trips_through_xmpp() {
    // What alice's phone sends, as bob's server would hand it back to a phone of bob's.
    let bob = "bob@example.org/laptop";
    let cases = [
        (
            up::Body::Chat(chat(bob, "hi", "t", v1::MessageType::Chat)),
            down::Body::Chat(chat("alice@tern.test/phone", "hi", "t", v1::MessageType::Chat)),
        ),
        (
            up::Body::Receipt(v1::Receipt {
                peer: bob.into(),
                id: "m1".into(),
                kind: 1,
                outgoing: false,
                ..Default::default()
            }),
            down::Body::Receipt(v1::Receipt {
                peer: "alice@tern.test/phone".into(),
                id: "m1".into(),
                kind: 1,
                outgoing: false,
                ..Default::default()
            }),
        ),
        (
            up::Body::ChatState(v1::ChatState { peer: bob.into(), state: 4, ..Default::default() }),
            down::Body::ChatState(v1::ChatState {
                peer: "alice@tern.test/phone".into(),
                state: 4,
                ..Default::default()
            }),
        ),
        (
            up::Body::Presence(v1::Presence {
                peer: bob.into(),
                show: 3,
                status: "busy".into(),
                priority: -3,
                ..Default::default()
            }),
            down::Body::Presence(v1::Presence {
                peer: "alice@tern.test/phone".into(),
                show: 3,
                status: "busy".into(),
                priority: -3,
                ..Default::default()
            }),
        ),
        (
            up::Body::Subscription(v1::Subscription { peer: bob.into(), kind: 3, ..Default::default() }),
            down::Body::Subscription(v1::Subscription {
                peer: "alice@tern.test".into(),
                kind: 3,
                ..Default::default()
            }),
        ),
    ];
    for (up_body, want) in cases {
        let stanza = outbound(&alice(), "id1", &up_body).unwrap().unwrap();
        let reparsed = Stanza::parse(&parse_xml(&stanza.to_element(NS_SERVER).to_string())).unwrap();
        assert_eq!(reparsed, stanza);
        let (to, body) = inbound(&reparsed).unwrap();
        assert_eq!(to.bare_str(), "bob@example.org");
        assert_eq!(body, want);
    }
}

/// The answer to the iq `xml` from tern.test, written out.
fn answer(xml: &str) -> Option<String> {
    let iq = Iq::parse(&parse_xml(xml)).unwrap();
    answer_iq(&iq, "tern.test", "0.1.0").map(|a| a.to_element(NS_SERVER).to_string())
}

const FEATURE_XML: &str = "<feature var='http://jabber.org/protocol/chatstates'/>\
    <feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/>\
    <feature var='jabber:iq:version'/><feature var='urn:xmpp:chat-markers:0'/><feature var='urn:xmpp:ping'/>\
    <feature var='urn:xmpp:receipts'/>";

#[test]
fn answers_disco_info() {
    let domain = answer(
        "<iq xmlns='jabber:server' from='montague.example' to='tern.test' id='d1' type='get'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    );
    assert_eq!(
        domain.unwrap(),
        format!(
            "<iq xmlns='jabber:server' from='tern.test' to='montague.example' id='d1' type='result'>\
             <query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im' name='tern'/>{FEATURE_XML}</query></iq>"
        )
    );
    let account = answer(
        "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='alice@tern.test' id='d2' type='get'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .unwrap();
    assert!(account.contains("<identity category='account' type='registered' name='tern'/>"), "{account}");
    let device = answer(
        "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='alice@tern.test/phone' id='d3' \
         type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .unwrap();
    assert!(device.contains("<identity category='client' type='phone' name='tern'/>"), "{device}");
    assert!(device.contains(FEATURE_XML));
    let node = answer(
        "<iq xmlns='jabber:server' from='r@m' to='tern.test' id='d4' type='get'>\
         <query xmlns='http://jabber.org/protocol/disco#info' node='http://x#y'/></iq>",
    );
    assert!(node.unwrap().contains("<item-not-found "));
}

#[test]
fn answers_the_caps_node_with_what_the_hash_covers() {
    let node = caps::device_node();
    let got = answer(&format!(
        "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='alice@tern.test/phone' id='c1' \
         type='get'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>"
    ))
    .unwrap();
    assert_eq!(
        got,
        format!(
            "<iq xmlns='jabber:server' from='alice@tern.test/phone' to='romeo@montague.example/x' id='c1' \
             type='result'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'>\
             <identity category='client' type='phone' name='tern'/>{FEATURE_XML}</query></iq>"
        )
    );
    // A node with another ver (an older tern, or a guess) is unknown.
    let stale = answer(
        "<iq xmlns='jabber:server' from='r@m' to='alice@tern.test/phone' id='c2' type='get'>\
         <query xmlns='http://jabber.org/protocol/disco#info' node='urn:tern:caps#AAAA'/></iq>",
    );
    assert!(stale.unwrap().contains("<item-not-found "));
}

#[test]
fn answers_items_ping_version() {
    assert_eq!(
        answer(
            "<iq xmlns='jabber:server' from='montague.example' to='tern.test' id='i1' type='get'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        )
        .unwrap(),
        "<iq xmlns='jabber:server' from='tern.test' to='montague.example' id='i1' type='result'>\
         <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
    );
    assert_eq!(
        answer(
            "<iq xmlns='jabber:server' from='montague.example' to='tern.test' id='p1' type='get'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        )
        .unwrap(),
        "<iq xmlns='jabber:server' from='tern.test' to='montague.example' id='p1' type='result'/>"
    );
    assert_eq!(
        answer(
            "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='tern.test' id='v1' type='get'>\
             <query xmlns='jabber:iq:version'/></iq>"
        )
        .unwrap(),
        "<iq xmlns='jabber:server' from='tern.test' to='romeo@montague.example/x' id='v1' type='result'>\
         <query xmlns='jabber:iq:version'><name>tern</name><version>0.1.0</version></query></iq>"
    );
}

#[test]
fn refuses_the_rest() {
    let unavailable = "<iq xmlns='jabber:server' from='tern.test' to='romeo@montague.example/x' id='q1' \
                       type='error'><error type='cancel'><service-unavailable \
                       xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
    let vcard =
        "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='tern.test' id='q1' type='get'>\
                 <vCard xmlns='vcard-temp'/></iq>";
    assert_eq!(answer(vcard).unwrap(), unavailable);
    let set = "<iq xmlns='jabber:server' from='romeo@montague.example/x' to='tern.test' id='q1' type='set'>\
               <ping xmlns='urn:xmpp:ping'/></iq>";
    assert_eq!(answer(set).unwrap(), unavailable);
    for xml in [
        "<iq xmlns='jabber:server' from='r@m' to='tern.test' id='q2' type='result'/>",
        "<iq xmlns='jabber:server' from='r@m' to='tern.test' id='q3' type='error'>\
         <error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        "<iq xmlns='jabber:server' from='r@m' to='other.example' id='q4' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
    ] {
        assert_eq!(answer(xml), None, "{xml}");
    }
}
