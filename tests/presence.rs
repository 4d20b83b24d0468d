//! End-to-end: subscriptions, presence and rosters between phones (RFC 6121 semantics).

mod common;

use std::time::Duration;

use common::{jid, Phone, Tern};
use tern_schemas::v1::{self, down, presence::Show, roster_item::Sub, subscription::Kind};

fn sub(id: &str, peer: &str, kind: Kind) -> v1::Up {
    v1::Up {
        id: id.into(),
        body: Some(v1::up::Body::Subscription(v1::Subscription {
            peer: peer.into(),
            kind: kind as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn is_sub(d: &v1::Down, from: &str, kind: Kind) -> bool {
    matches!(&d.body, Some(down::Body::Subscription(s)) if s.peer == from && s.kind == kind as i32)
}

fn presence_of<'a>(d: &'a v1::Down, peer: &str) -> Option<&'a v1::Presence> {
    match &d.body {
        Some(down::Body::Presence(p)) if p.peer == peer => Some(p),
        _ => None,
    }
}

fn roster_item<'a>(d: &'a v1::Down, contact: &str) -> Option<&'a v1::RosterItem> {
    match &d.body {
        Some(down::Body::Roster(r)) => r.items.iter().find(|i| i.jid == contact),
        _ => None,
    }
}

/// Alice's and bob's phones, connected.
async fn alice_and_bob(tern: &Tern) -> (Phone, Phone) {
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_handshake_both_ways_then_presence_flows() {
    let tern = Tern::start();
    let (mut alice, mut bob) = alice_and_bob(&tern).await;

    alice.send(sub("s1", &jid("bob"), Kind::Subscribe)).await;
    let push = alice.next_where(|d| roster_item(d, &jid("bob")).is_some()).await;
    let item = roster_item(&push, &jid("bob")).unwrap();
    assert_eq!((item.sub, item.ask), (Sub::None as i32, true));
    let req = bob.next_where(|d| is_sub(d, &jid("alice"), Kind::Subscribe)).await;
    assert!(req.seq > 0, "a subscription request is stored");

    bob.send(sub("s2", &jid("alice"), Kind::Subscribed)).await;
    // Alice gets the stored `subscribed` and now hears bob's presence. The presence is live and
    // the `subscribed` waits for its group commit, so they may come in either order.
    let bob_phone = format!("{}/phone", jid("bob"));
    let (mut subscribed, mut presence) = (false, None);
    while !subscribed || presence.is_none() {
        let d = alice
            .next_where(|d| is_sub(d, &jid("bob"), Kind::Subscribed) || presence_of(d, &bob_phone).is_some())
            .await;
        match presence_of(&d, &bob_phone) {
            Some(p) => presence = Some(p.show),
            None => subscribed = true,
        }
    }
    assert_eq!(presence, Some(Show::Available as i32));

    // And the other way round.
    bob.send(sub("s3", &jid("alice"), Kind::Subscribe)).await;
    bob.next_where(|d| roster_item(d, &jid("alice")).is_some_and(|i| i.ask)).await;
    alice.next_where(|d| is_sub(d, &jid("bob"), Kind::Subscribe)).await;
    alice.send(sub("s4", &jid("bob"), Kind::Subscribed)).await;
    bob.next_where(|d| is_sub(d, &jid("alice"), Kind::Subscribed)).await;
    let push =
        alice.next_where(|d| roster_item(d, &jid("bob")).is_some_and(|i| i.sub == Sub::Both as i32)).await;
    let ver = match push.body {
        Some(down::Body::Roster(r)) => r.ver,
        _ => unreachable!(),
    };

    // A status change reaches the contact.
    let away = v1::Presence { show: Show::Away as i32, status: "lunch".into(), ..Default::default() };
    bob.send(v1::Up { id: "p1".into(), body: Some(v1::up::Body::Presence(away)), ..Default::default() })
        .await;
    let p = alice
        .next_where(|d| {
            presence_of(d, &format!("{}/phone", jid("bob"))).is_some_and(|p| p.show == Show::Away as i32)
        })
        .await;
    assert_eq!(presence_of(&p, &format!("{}/phone", jid("bob"))).unwrap().status, "lunch");

    // Bob's phone drops: alice sees it go unavailable.
    bob.drop_network();
    alice
        .next_where(|d| {
            presence_of(d, &format!("{}/phone", jid("bob")))
                .is_some_and(|p| p.show == Show::Unavailable as i32)
        })
        .await;

    // Roster versioning: nothing changed since `ver`, so the delta is empty; from 0 it is full.
    alice
        .send(v1::Up {
            id: "g1".into(),
            body: Some(v1::up::Body::RosterGet(v1::RosterGet { ver })),
            ..Default::default()
        })
        .await;
    let r = alice.next_where(|d| d.id == "g1").await;
    let Some(down::Body::Roster(r)) = r.body else { panic!("roster expected") };
    assert!(!r.full && r.items.is_empty() && r.ver == ver);
    alice
        .send(v1::Up {
            id: "g2".into(),
            body: Some(v1::up::Body::RosterGet(v1::RosterGet { ver: 0 })),
            ..Default::default()
        })
        .await;
    let r = alice.next_where(|d| d.id == "g2").await;
    let Some(down::Body::Roster(r)) = r.body else { panic!("roster expected") };
    assert!(r.full);
    assert_eq!(r.items.len(), 1);
    assert_eq!(r.items[0].sub, Sub::Both as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_an_offline_contact_and_presence_is_answered_on_login() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    alice.send(sub("s1", &jid("carol"), Kind::Subscribe)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Carol was offline; the request is in her inbox when she connects.
    let mut carol = Phone::connect(tern.tcp, "carol", "phone", "carol-pw").await;
    carol.connack().await;
    carol.next_where(|d| is_sub(d, &jid("alice"), Kind::Subscribe)).await;
    carol.send(sub("s2", &jid("alice"), Kind::Subscribed)).await;
    alice.next_where(|d| is_sub(d, &jid("carol"), Kind::Subscribed)).await;

    // Alice reconnects: right after CONNACK she learns carol's presence (the probe answer).
    alice.disconnect().await;
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    alice.next_where(|d| presence_of(d, &format!("{}/phone", jid("carol"))).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_of_the_same_device_takes_over_and_it_stays_online() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    let mut again = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    again.connack().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let online = tern
        .metrics_text()
        .lines()
        .find(|l| l.starts_with("tern_devices_online"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(online, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_sent_after_a_subscription_request_is_stored_after_it() {
    let tern = Tern::start();
    let (alice, mut bob) = alice_and_bob(&tern).await;
    for i in 0..5 {
        // Pipelined: no waiting for PUBACKs in between.
        alice.send(sub(&format!("s{i}"), &jid("bob"), Kind::Subscribe)).await;
        alice.send(common::chat(&format!("c{i}"), &jid("bob"), "after the request")).await;
    }
    // The first stored entry bob gets must be the request, not a chat that overtook it.
    let first = bob.next_stored().await;
    assert!(is_sub(&first, &jid("alice"), Kind::Subscribe), "first stored entry: {first:?}");
}

/// A phone that sends `Hello{peer_refs}` in the same write as its CONNECT, as phones do, gets
/// the contacts' presences that the server sends at the start by ref, not by JID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presences_at_the_start_use_the_refs_of_a_hello_sent_with_the_connect() {
    use prost::Message;
    use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tern = Tern::start();
    let (mut alice, mut bob) = alice_and_bob(&tern).await;
    alice.send(sub("s1", &jid("bob"), Kind::Subscribe)).await;
    bob.next_where(|d| is_sub(d, &jid("alice"), Kind::Subscribe)).await;
    bob.send(sub("s2", &jid("alice"), Kind::Subscribed)).await;
    let push =
        alice.next_where(|d| roster_item(d, &jid("bob")).is_some_and(|i| i.sub == Sub::To as i32)).await;
    let Some(down::Body::Roster(roster)) = push.body else { unreachable!("a roster push") };
    alice.disconnect().await;

    let mut out = bytes::BytesMut::new();
    let mut connect = Connect::new("phone");
    connect.keep_alive = 30;
    connect.clean_session = false;
    connect.set_login("alice", "alice-pw");
    connect.write(&mut out).unwrap();
    let hello = v1::Hello { peer_refs: true, roster_ver: roster.ver, ..Default::default() };
    let up = v1::Up { body: Some(v1::up::Body::Hello(hello)), ..Default::default() };
    Publish::new("u", rumqttc::QoS::AtMostOnce, up.encode_to_vec()).write(&mut out).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(tern.tcp).await.unwrap();
    tcp.write_all(&out).await.unwrap();

    let bob_ref = roster.items.iter().find(|i| i.jid == jid("bob")).unwrap().peer_ref;
    assert_ne!(bob_ref, 0, "bob has a ref");
    let mut inbound = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let presence = loop {
        match Packet::read(&mut inbound, 1 << 20) {
            Ok(Packet::Publish(p)) if p.topic == "d" => {
                let d = v1::Down::decode(p.payload).unwrap();
                if let Some(down::Body::Presence(p)) = d.body {
                    break p;
                }
            }
            Ok(_) => {}
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let read = tokio::time::timeout_at(deadline, tcp.read_buf(&mut inbound)).await;
                assert!(read.expect("a presence in time").unwrap() > 0, "the connection closed");
            }
            Err(e) => panic!("a bad packet from tern: {e:?}"),
        }
    };
    assert_eq!(
        (presence.peer.as_str(), presence.peer_ref, presence.resource.as_str()),
        ("", bob_ref, "phone")
    );
}
