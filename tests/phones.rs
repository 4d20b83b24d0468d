//! End-to-end: phones over real MQTT (rumqttc) against a real `tern serve` process.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{chat, jid, Phone, Tern};
use rumqttc::{ConnectReturnCode, QoS};
use tern_schemas::v1::{self, down, error::Code};

fn chat_body(d: &v1::Down) -> Option<&v1::Chat> {
    match &d.body {
        Some(down::Body::Chat(c)) => Some(c),
        _ => None,
    }
}

fn error_code(d: &v1::Down) -> Option<i32> {
    match &d.body {
        Some(down::Body::Error(e)) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phones_chat_with_receipts_and_one_resumes_after_being_offline() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    assert_eq!(alice.connack().await, ConnectReturnCode::Success);
    assert_eq!(bob.connack().await, ConnectReturnCode::Success);

    alice.chat("a1", &jid("bob"), "hello bob").await;
    let got = bob.next_stored().await;
    let c = chat_body(&got).expect("a chat");
    assert_eq!((got.id.as_str(), c.body.as_str()), ("a1", "hello bob"));
    assert_eq!(c.peer, format!("{}/phone", jid("alice")));
    assert!(c.ts > 0 && !c.outgoing);

    // Receipt back, then a reply.
    let receipt = v1::Up {
        id: "r1".into(),
        body: Some(v1::up::Body::Receipt(v1::Receipt {
            peer: jid("alice"),
            id: "a1".into(),
            kind: 0,
            outgoing: false,
            ..Default::default()
        })),
        ..Default::default()
    };
    bob.send(receipt).await;
    let r = alice.next_where(|d| matches!(d.body, Some(down::Body::Receipt(_)))).await;
    let Some(down::Body::Receipt(r)) = r.body else { unreachable!() };
    assert_eq!((r.id.as_str(), r.peer), ("a1", format!("{}/phone", jid("bob"))));
    bob.chat("b1", &jid("alice"), "hi alice").await;
    let got = alice.next_where(|d| chat_body(d).is_some()).await;
    assert_eq!(chat_body(&got).unwrap().body, "hi alice");

    // Bob's phone loses its network; alice keeps writing.
    bob.drop_network();
    for i in 0..10 {
        alice.chat(&format!("m{i}"), &jid("bob"), &format!("missed {i}")).await;
    }
    // Bob comes back: he gets exactly the ten, in order, unasked.
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    assert_eq!(bob.connack().await, ConnectReturnCode::Success);
    let mut seen = BTreeSet::new();
    let mut bodies = Vec::new();
    let mut last_seq = 0;
    while bodies.len() < 10 {
        let d = bob.next_stored().await;
        assert!(d.seq > last_seq || seen.contains(&d.seq), "in order");
        if seen.insert(d.seq) {
            last_seq = d.seq;
            if let Some(c) = chat_body(&d) {
                bodies.push(c.body.clone());
            }
        }
    }
    assert_eq!(bodies, (0..10).map(|i| format!("missed {i}")).collect::<Vec<_>>());
    let extra = bob.drain_for(Duration::from_millis(500)).await;
    assert!(extra.iter().all(|d| d.seq == 0 || !seen.contains(&d.seq)), "no duplicates");
    assert!(extra.iter().all(|d| chat_body(d).is_none()), "nothing beyond what was missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_other_device_gets_a_copy_but_the_sender_does_not() {
    let tern = Tern::start();
    let mut phone = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut tablet = Phone::connect(tern.tcp, "alice", "tablet", "alice-pw").await;
    phone.connack().await;
    tablet.connack().await;
    phone.chat("c1", &jid("bob"), "copied").await;
    let copy = tablet.next_where(|d| chat_body(d).is_some()).await;
    let c = chat_body(&copy).unwrap();
    assert!(c.outgoing);
    assert_eq!(c.peer, jid("bob"));
    let own = phone.drain_for(Duration::from_millis(300)).await;
    assert!(own.iter().all(|d| chat_body(d).is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_login_issues_a_token_that_logs_in_again() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    let t = alice.next_where(|d| matches!(d.body, Some(down::Body::Token(_)))).await;
    let Some(down::Body::Token(token)) = t.body else { unreachable!() };
    alice.disconnect().await;
    let mut again = Phone::connect(tern.tcp, "alice", "phone", &token.token).await;
    assert_eq!(again.connack().await, ConnectReturnCode::Success);
    // The token is bound to its device.
    let mut other = Phone::connect(tern.tcp, "alice", "tablet", &token.token).await;
    assert_eq!(other.connack().await, ConnectReturnCode::NotAuthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_not_authorized() {
    let tern = Tern::start();
    let mut p = Phone::connect(tern.tcp, "alice", "phone", "wrong").await;
    assert_eq!(p.connack().await, ConnectReturnCode::NotAuthorized);
    let mut p = Phone::connect(tern.tcp, "nobody", "phone", "x").await;
    assert_eq!(p.connack().await, ConnectReturnCode::NotAuthorized);
    assert!(tern.counter("tern_auth_failures_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_hears_nothing_and_its_cross_user_publishes_are_refused() {
    let tern = Tern::start();
    let mut carol = Phone::connect(tern.tcp, "carol", "evil", "carol-pw").await;
    carol.connack().await;
    for filter in ["#", "+/#", "$share/g/#", "$SYS/#", "t/alice/#", "u"] {
        carol.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    // Alice also uses a plain topic, which only her own devices may hear.
    bob.client.subscribe("#", QoS::AtMostOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.chat("s1", &jid("bob"), "secret").await;
    alice.send_raw("sensors/temp", QoS::AtMostOnce, b"21.5".to_vec()).await;
    bob.next_where(|d| chat_body(d).is_some()).await;

    // Carol tries to write where she must not.
    carol.send_raw("d", QoS::AtLeastOnce, b"x".to_vec()).await;
    carol.send_raw("$SYS/broker", QoS::AtLeastOnce, b"x".to_vec()).await;
    let heard = carol.drain_for(Duration::from_millis(800)).await;
    assert!(heard.iter().all(|d| chat_body(d).is_none()), "carol heard a chat");
    let refusals = heard.iter().filter(|d| error_code(d) == Some(Code::NotAllowed as i32)).count();
    assert_eq!(refusals, 2);
    assert!(tern.counter("tern_isolation_denials_total") >= 5.0);
    // Bob's `#` is his own namespace: he did not hear alice's plain topic either.
    let bob_heard = bob.drain_for(Duration::from_millis(300)).await;
    assert!(bob_heard.iter().all(|d| chat_body(d).is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_and_the_session_goes_on() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    alice.send_raw("u", QoS::AtLeastOnce, vec![0xff, 0xff, 0x01, 0x02]).await;
    let e = alice.next_where(|d| error_code(d).is_some()).await;
    assert_eq!(error_code(&e), Some(Code::BadEnvelope as i32));
    alice.send(chat("x", "not a jid@@", "hi")).await;
    let e = alice.next_where(|d| error_code(d).is_some()).await;
    assert_eq!((error_code(&e), e.id.as_str()), (Some(Code::BadJid as i32), "x"));
    alice.send(chat("y", &jid("nobody"), "hi")).await;
    let e = alice.next_where(|d| error_code(d).is_some()).await;
    assert_eq!(error_code(&e), Some(Code::ServiceUnavailable as i32));
    alice.chat("ok", &jid("bob"), "still here").await;
    assert_eq!(chat_body(&bob.next_stored().await).unwrap().body, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_closes_only_that_connection() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    let mut carol = Phone::connect(tern.tcp, "carol", "big", "carol-pw").await;
    carol.connack().await;
    carol.send_raw("u", QoS::AtLeastOnce, vec![0u8; 200 * 1024]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tern.counter("tern_protocol_errors_total") >= 1.0);
    alice.chat("after", &jid("bob"), "unaffected").await;
    assert_eq!(chat_body(&bob.next_stored().await).unwrap().body, "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_stall_others() {
    use tokio::io::AsyncWriteExt;
    let tern = Tern::start();
    // A raw client that logs in as bob/stuck and then never reads its socket again.
    let mut stuck = tokio::net::TcpStream::connect(tern.tcp).await.unwrap();
    let mut connect = rumqttc::Connect::new("stuck");
    connect.set_login("bob", "bob-pw");
    let mut buf = bytes::BytesMut::new();
    rumqttc::Packet::Connect(connect).write(&mut buf, 1 << 20).unwrap();
    stuck.write_all(&buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut carol = Phone::connect(tern.tcp, "carol", "phone", "carol-pw").await;
    alice.connack().await;
    carol.connack().await;
    // Flood bob (whose stuck device never reads) with large messages...
    let body = "x".repeat(8000);
    for i in 0..200 {
        alice.send(chat(&format!("f{i}"), &jid("bob"), &body)).await;
    }
    // ...while alice and carol keep talking.
    for i in 0..20 {
        carol.chat(&format!("c{i}"), &jid("alice"), "ping").await;
    }
    let mut got = 0;
    while got < 20 {
        alice.next_where(|d| chat_body(d).is_some_and(|c| c.body == "ping")).await;
        got += 1;
    }
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_kill_9() {
    nothing_acknowledged_is_lost_across_kill_9_with(None).await;
}

/// With `sync = "write"` an acknowledgement waits for the journal write only: the page cache
/// outlives the process, so a kill -9 still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_kill_9_with_sync_write() {
    nothing_acknowledged_is_lost_across_kill_9_with(Some("[inbox]\nsync = \"write\"\n")).await;
}

async fn nothing_acknowledged_is_lost_across_kill_9_with(config: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    for u in ["alice", "bob"] {
        common::add_user(tmp.path(), u, &format!("{u}-pw"));
    }
    let mut tern = Tern::start_configured(tmp.path(), config);
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    // Queue 300 sends at once, and kill -9 the server once some (not all) are acknowledged.
    let total = 300;
    for i in 0..total {
        alice.send(chat(&format!("k{i}"), &jid("bob"), &format!("{i}"))).await;
    }
    let mut acked = 0;
    while acked < 20 {
        tokio::time::timeout(Duration::from_secs(10), alice.acks.recv()).await.expect("acks").expect("open");
        acked += 1;
    }
    tern.kill9();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), alice.acks.recv()).await {
        acked += 1;
    }
    assert!(acked < total, "the kill came too late to test anything");
    alice.drop_network();
    // The acknowledged writes are in the journal (no checkpoint ran yet): the restart must
    // replay it, not find them in sled.
    let journaled: u64 = std::fs::read_dir(tmp.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(journaled > 0, "nothing in the journal");

    // Restart on the same data dir: bob must get at least every acknowledged message.
    let tern = Tern::start_configured(tmp.path(), config);
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    bob.connack().await;
    let mut ids = BTreeSet::new();
    for d in bob.drain_for(Duration::from_secs(2)).await {
        if chat_body(&d).is_some() {
            assert!(ids.insert(d.id.clone()), "duplicate {}", d.id);
        }
    }
    // PUBACKs arrive in publish order, so the first `acked` messages are the acknowledged ones.
    for i in 0..acked {
        assert!(
            ids.contains(&format!("k{i}")),
            "acknowledged k{i} was lost ({} received, {acked} acked)",
            ids.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_the_same_id_is_stored_once() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    for _ in 0..3 {
        alice.chat("same", &jid("bob"), "once").await;
    }
    alice.chat("next", &jid("bob"), "twice?").await;
    let got: Vec<String> = bob
        .drain_for(Duration::from_millis(800))
        .await
        .iter()
        .filter(|d| chat_body(d).is_some())
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(got, vec!["same", "next"]);
    assert!(tern.counter("tern_duplicates_dropped_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cannot_mark_its_message_as_the_recipients_own() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    let mut bob = Phone::connect(tern.tcp, "bob", "phone", "bob-pw").await;
    alice.connack().await;
    bob.connack().await;
    let mut forged = chat("o1", &jid("bob"), "I am bob");
    if let Some(v1::up::Body::Chat(c)) = forged.body.as_mut() {
        c.outgoing = true;
    }
    alice.send(forged).await;
    let got = bob.next_stored().await;
    let c = chat_body(&got).unwrap();
    assert!(!c.outgoing);
    assert_eq!(c.peer, format!("{}/phone", jid("alice")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_closes_open_sessions_and_kills_old_tokens() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    let t = alice.next_where(|d| matches!(d.body, Some(down::Body::Token(_)))).await;
    let Some(down::Body::Token(token)) = t.body else { unreachable!() };

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--data-dir")
        .arg(&tern.dir)
        .args(["user", "passwd", "alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"new-pw").unwrap();
    assert!(child.wait().unwrap().success());

    // The open session ends: its event loop stops and the channel closes.
    let closed =
        tokio::time::timeout(Duration::from_secs(10), async { while alice.down.recv().await.is_some() {} })
            .await;
    assert!(closed.is_ok(), "the session stayed open after the password change");
    let mut old = Phone::connect(tern.tcp, "alice", "phone", &token.token).await;
    assert_eq!(old.connack().await, ConnectReturnCode::NotAuthorized);
    let mut new = Phone::connect(tern.tcp, "alice", "phone", "new-pw").await;
    assert_eq!(new.connack().await, ConnectReturnCode::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_need_federation_and_a_join_first() {
    let tern = Tern::start();
    let mut alice = Phone::connect(tern.tcp, "alice", "phone", "alice-pw").await;
    alice.connack().await;
    // Without federation no room can be reached.
    let join =
        v1::RoomJoin { room: "lounge@muc.example.org".into(), nick: "Alice".into(), ..Default::default() };
    alice
        .send(v1::Up { id: "j1".into(), body: Some(v1::up::Body::RoomJoin(join)), ..Default::default() })
        .await;
    let e = alice.next_where(|d| error_code(d).is_some()).await;
    assert_eq!((error_code(&e), e.id.as_str()), (Some(Code::RemoteServerNotFound as i32), "j1"));
    // Posting to a room one is not in is refused, and nothing is stored.
    let mut post = chat("g1", "lounge@muc.example.org", "hello room");
    if let Some(v1::up::Body::Chat(c)) = &mut post.body {
        c.r#type = v1::MessageType::Groupchat as i32;
    }
    alice.send(post).await;
    let e = alice.next_where(|d| error_code(d).is_some()).await;
    assert_eq!((error_code(&e), e.id.as_str()), (Some(Code::NotAllowed as i32), "g1"));
    // Leaving a room one is not in is no error.
    let leave = v1::RoomLeave { room: "lounge@muc.example.org".into(), status: String::new() };
    alice
        .send(v1::Up { id: "l1".into(), body: Some(v1::up::Body::RoomLeave(leave)), ..Default::default() })
        .await;
    assert!(alice.drain_for(Duration::from_millis(300)).await.iter().all(|d| error_code(d).is_none()));
}
