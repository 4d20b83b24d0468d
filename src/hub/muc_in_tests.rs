//! The hub's side of group chat (XEP-0045) against a real store and router, without a room
//! server: room events are fed in as the bridge translates them, and what would be stored is
//! checked. Rooms themselves are exercised with Prosody in tests/python/xmpp/test_muc.py.

use std::sync::Arc;

use tern_schemas::v1::{self, down, occupant, presence::Show};

use super::super::muc::{RoomState, Sent, HELD_FOR_MS};
use super::super::{now_ms, Hub};
use crate::ids::UserName;
use crate::store::inbox::Delivery;
use crate::store::rooms::RoomRecord;
use crate::store::Store;

const ROOM: &str = "lounge@muc.xmpp.test";

async fn hub(dir: &std::path::Path) -> Arc<Hub> {
    let durability = crate::store::Durability::new(
        crate::config::SyncPolicy::Always,
        std::time::Duration::from_millis(20),
    );
    let store = Store::open(dir, durability).unwrap();
    Hub::new("tern.test".into(), store, Arc::new(crate::net::registry::Registry::default()), 3600).unwrap()
}

/// A hub over a fresh store with alice's membership of the room (see [`member`]); the
/// directory lives as long as the hub is used.
async fn setup(nicks: &[&str], waiting: &[&str]) -> (tempfile::TempDir, Arc<Hub>, UserName) {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path()).await;
    member(&hub, nicks, waiting);
    (dir, hub, alice())
}

fn alice() -> UserName {
    UserName::parse("alice").unwrap()
}

fn occupant(nick: &str, me: bool, codes: &[u32]) -> v1::Occupant {
    v1::Occupant {
        room: ROOM.into(),
        nick: nick.into(),
        role: occupant::Role::Participant as i32,
        is_self: me,
        codes: codes.to_vec(),
        ..Default::default()
    }
}

fn left(mut o: v1::Occupant) -> v1::Occupant {
    o.show = Show::Unavailable as i32;
    o
}

/// A membership as after a restart: joined before (`last_ts`), the nicks the user was told of.
fn member(hub: &Hub, nicks: &[&str], waiting: &[&str]) {
    let record = RoomRecord {
        nick: "Alice".into(),
        device: "phone1".into(),
        last_ts: 1_000,
        occupants: nicks.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    hub.store.rooms.put(&alice(), ROOM, &record).unwrap();
    let state = RoomState::new(record, waiting.iter().map(|w| w.to_string()).collect());
    hub.rooms.lock().entry(alice()).or_default().insert(ROOM.into(), state);
}

/// (Down.id, nick, left) of the occupant entries.
fn occupants(out: &[Delivery]) -> Vec<(String, String, bool)> {
    let mut all: Vec<_> = out
        .iter()
        .filter_map(|d| match &d.down.body {
            Some(down::Body::Occupant(o)) => {
                Some((d.down.id.clone(), o.nick.clone(), o.show == Show::Unavailable as i32))
            }
            _ => None,
        })
        .collect();
    all.sort();
    all
}

fn joined(hub: &Hub) -> Option<bool> {
    hub.rooms.lock().get(&alice()).and_then(|r| r.get(ROOM)).map(|s| s.joined)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejoin_stores_only_what_changed_and_answers_every_waiting_join() {
    let (_dir, hub, user) = setup(&["Alice", "bob", "carol"], &["j1", "j2"]).await;
    // bob is still there: not news. dave is.
    assert!(hub.room_occupant(&user, ROOM, occupant("bob", false, &[]), "p1".into()).is_empty());
    let dave = hub.room_occupant(&user, ROOM, occupant("dave", false, &[]), "p2".into());
    assert_eq!(occupants(&dave), [("p2".into(), "dave".into(), false)]);
    // Another occupant holding our nick (the room renamed us) does not complete our join.
    assert!(hub.room_occupant(&user, ROOM, occupant("Alice", false, &[]), "p3".into()).is_empty());
    assert_eq!(joined(&hub), Some(false));
    // Our own presence (110) with the nick the room assigned (210): both phones are answered,
    // carol (not met again) left meanwhile, and the old nick is not reported as leaving.
    let own = hub.room_occupant(&user, ROOM, occupant("Alice2", true, &[210]), "p4".into());
    assert_eq!(
        occupants(&own),
        [
            ("".into(), "carol".into(), true),
            ("j1".into(), "Alice2".into(), false),
            ("j2".into(), "Alice2".into(), false)
        ]
    );
    assert_eq!(joined(&hub), Some(true));
    let stored = hub.store.rooms.get(&user, ROOM).unwrap().unwrap();
    assert_eq!(stored.nick, "Alice2");
    let mut nicks = stored.occupants.clone();
    nicks.sort();
    assert_eq!(nicks, ["Alice", "Alice2", "bob", "dave"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn removal_for_a_delivery_error_keeps_the_membership() {
    let (_dir, hub, user) = setup(&[], &[]).await;
    hub.room_occupant(&user, ROOM, occupant("Alice", true, &[]), String::new());
    let out = hub.room_occupant(&user, ROOM, left(occupant("Alice", true, &[333])), String::new());
    assert_eq!(occupants(&out), [("".into(), "Alice".into(), true)]);
    assert_eq!(joined(&hub), Some(false), "kept, to be joined again");
    assert!(hub.store.rooms.get(&user, ROOM).unwrap().is_some());
    // Coming back is news again, since the user was told we left.
    let back = hub.room_occupant(&user, ROOM, occupant("Alice", true, &[]), "p9".into());
    assert_eq!(occupants(&back), [("p9".into(), "Alice".into(), false)]);
    // A kick ends it.
    hub.room_occupant(&user, ROOM, left(occupant("Alice", true, &[307])), String::new());
    assert_eq!(joined(&hub), None);
    assert_eq!(hub.store.rooms.get(&user, ROOM).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejoin_that_creates_the_room_ends_the_membership() {
    let (_dir, hub, user) = setup(&["bob"], &["j1"]).await;
    let out = hub.room_occupant(&user, ROOM, occupant("Alice", true, &[201]), "p1".into());
    assert_eq!(occupants(&out), [("".into(), "Alice".into(), true)]);
    let error = out.iter().find(|d| d.down.id == "j1").map(|d| d.down.body.clone());
    assert!(matches!(error, Some(Some(down::Body::Error(_)))), "{error:?}");
    assert_eq!(joined(&hub), None);
    assert_eq!(hub.store.rooms.get(&user, ROOM).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn stamps_from_the_future_and_repeats_are_not_stored() {
    let (_dir, hub, user) = setup(&[], &[]).await;
    let chat = |ts| v1::Chat { peer: format!("{ROOM}/bob"), body: "hi".into(), ts, ..Default::default() };
    let out = hub.room_chat(&user, ROOM, chat(253_402_300_799_000), "m1".into(), "s:1");
    assert_eq!(out.len(), 1);
    let last_ts = hub.store.rooms.get(&user, ROOM).unwrap().unwrap().last_ts;
    assert!(last_ts <= now_ms(), "capped at now, not year 9999");
    assert!(hub.room_chat(&user, ROOM, chat(1_031_699_305_000), "m1".into(), "s:1").is_empty());
    // A live message is never a repeat, whatever its key.
    assert_eq!(hub.room_chat(&user, ROOM, chat(0), "m1".into(), "s:1").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subject_is_stored_once_across_restarts() {
    let (_dir, hub, user) = setup(&[], &[]).await;
    let subject = |s: &str| v1::RoomSubject { room: ROOM.into(), subject: s.into(), ..Default::default() };
    assert_eq!(hub.room_subject(&user, ROOM, subject("Friday"), String::new()).len(), 1);
    // A restart: the membership is read back from the store, and the rejoin repeats it.
    let record = hub.store.rooms.get(&user, ROOM).unwrap().unwrap();
    hub.rooms.lock().get_mut(&user).unwrap().insert(ROOM.into(), RoomState::new(record, Vec::new()));
    assert!(hub.room_subject(&user, ROOM, subject("Friday"), String::new()).is_empty());
    assert_eq!(hub.room_subject(&user, ROOM, subject("Saturday"), String::new()).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_user_is_in_no_room() {
    let (_dir, hub, _) = setup(&[], &[]).await;
    // alice has no account in this store: every room goes.
    hub.account_changed(&alice());
    assert_eq!(joined(&hub), None);
    assert!(hub.store.rooms.all().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn held_messages_fail_when_the_membership_ends() {
    use prost::Message;
    let (_dir, hub, user) = setup(&[], &[]).await;
    let sent = sent("m7", now_ms());
    hub.rooms.lock().get_mut(&user).and_then(|r| r.get_mut(ROOM)).unwrap().hold(sent);
    hub.forget_room(&user, ROOM);
    hub.store.committer.durable().await.unwrap();
    let stored = hub.store.inbox.read(&user, crate::ids::Seq(0), 10).unwrap();
    let downs: Vec<_> = stored.iter().map(|e| v1::Down::decode(e.down.clone()).unwrap()).collect();
    assert!(
        matches!(downs.as_slice(), [v1::Down { id, body: Some(down::Body::Error(_)), .. }] if id == "m7"),
        "{downs:?}"
    );
}

fn sent(id: &str, at: u64) -> Sent {
    Sent {
        id: id.into(),
        device: crate::ids::DeviceId::parse("phone1").unwrap(),
        stanza: tern_bridge::Element::new("message", "jabber:server"),
        at,
    }
}

#[test]
fn waiting_joins_and_held_messages_are_bounded() {
    let mut state = RoomState::new(RoomRecord::default(), Vec::new());
    for i in 0..100 {
        state.wait(&format!("j{}", i % 40));
        state.wait("j0");
    }
    assert!(state.waiting.len() <= 16 && state.waiting.iter().filter(|w| *w == "j0").count() == 1);
    state.hold(sent("old", 1_000));
    state.hold(sent("new", 50_000));
    let late: Vec<_> = state.expire_held(1_000 + HELD_FOR_MS).into_iter().map(|s| s.id).collect();
    assert_eq!(late, ["old"]);
    assert_eq!(state.held.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["new"]);
}
