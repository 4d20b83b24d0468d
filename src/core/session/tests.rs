//! Deterministic tests of the session core: events in, actions out, simulated time.

use super::*;
use crate::mqtt::Version;

fn cfg() -> SessionConfig {
    SessionConfig {
        max_inflight: 2,
        max_pending_up: 4,
        connect_timeout: Duration::from_secs(10),
        limits: Limits::default(),
    }
}

fn connect(client_id: &str, user: &str, keep_alive: u16) -> Inbound {
    Inbound::Connect(ConnectReq {
        version: Version::V4,
        client_id: client_id.into(),
        clean: false,
        keep_alive,
        login: Some((user.into(), "pw".into())),
        will: Some(Will {
            topic: "status".into(),
            payload: Bytes::from_static(b"gone"),
            qos: 0,
            retain: false,
        }),
        receive_max: None,
        max_packet: None,
    })
}

fn drain(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn entry(seq: u64, origin: Option<&str>) -> StoredEntry {
    let down = v1::Down { seq, id: format!("m{seq}"), ..Default::default() };
    StoredEntry {
        seq: Seq(seq),
        origin: origin.map(Into::into),
        ts_ms: 0,
        down: Bytes::from(down.encode_to_vec()),
    }
}

/// A session logged in with `durable` entries waiting and cursor `cursor`.
fn open(now: Instant, cursor: Option<u64>, durable: u64) -> (Session, Vec<Action>) {
    let mut s = Session::new(cfg(), now);
    s.on_packet(now, connect("phone", "alice", 60));
    let a = drain(&mut s);
    assert!(
        matches!(&a[..], [Action::Authenticate { id, secret }] if id.user.as_str() == "alice" && secret == "pw")
    );
    s.on_login(now, Ok(LoginOk { cursor: cursor.map(Seq), durable: Seq(durable), token: None }));
    let a = drain(&mut s);
    (s, a)
}

fn chat_up(id: &str) -> Bytes {
    let up = v1::Up {
        id: id.into(),
        body: Some(v1::up::Body::Chat(v1::Chat {
            peer: "bob@x".into(),
            body: "hi".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    Bytes::from(up.encode_to_vec())
}

/// A live `Down{presence}`.
fn presence_down(p: v1::Presence) -> Bytes {
    Bytes::from(v1::Down { body: Some(down::Body::Presence(p)), ..Default::default() }.encode_to_vec())
}

/// The presences among the envelopes `actions` publish.
fn presences(actions: &[Action]) -> Vec<v1::Presence> {
    downs(actions)
        .into_iter()
        .filter_map(|d| match d.body {
            Some(down::Body::Presence(p)) => Some(p),
            _ => None,
        })
        .collect()
}

/// `Up{hello}` at QoS 0, as phones send it.
fn hello(h: v1::Hello) -> Inbound {
    let up = v1::Up { body: Some(v1::up::Body::Hello(h)), ..Default::default() };
    publish("u", Bytes::from(up.encode_to_vec()), 0, 0)
}

fn publish(topic: &str, payload: Bytes, qos: u8, pkid: u16) -> Inbound {
    Inbound::Publish(PublishIn { topic: topic.into(), payload, qos, pkid, retain: false })
}

fn sent_pubacks(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::PubAck { pkid, .. }) => Some(*pkid),
            _ => None,
        })
        .collect()
}

fn downward(actions: &[Action]) -> Vec<(u16, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::Publish { topic, payload, pkid, .. }) if topic == "d" => {
                let d = v1::Down::decode(payload.clone()).ok()?;
                (d.seq > 0).then_some((*pkid, d.seq))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn login_opens_the_session_and_fetches_what_was_missed() {
    let now = Instant::now();
    let (_s, a) = open(now, Some(3), 5);
    assert_eq!(a[0], Action::Send(Outbound::ConnAck { session_present: true, code: ConnCode::Accepted }));
    assert!(matches!(a[1], Action::Started { .. }));
    assert_eq!(a[2], Action::Fetch { after: Seq(3), limit: 2 });
}

#[test]
fn a_refused_login_gets_connack_and_close() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.on_packet(now, connect("phone", "alice", 60));
    drain(&mut s);
    s.on_login(now, Err(ConnCode::BadCredentials));
    let a = drain(&mut s);
    assert_eq!(
        a[0],
        Action::Send(Outbound::ConnAck { session_present: false, code: ConnCode::BadCredentials })
    );
    assert!(matches!(a[1], Action::Close(_)));
    assert!(s.is_closed());
}

#[test]
fn bad_client_ids_and_missing_logins_are_refused_at_once() {
    let now = Instant::now();
    for (packet, code) in [
        (connect("a/b", "alice", 0), ConnCode::BadClientId),
        (connect("phone", "Bad User", 0), ConnCode::BadCredentials),
    ] {
        let mut s = Session::new(cfg(), now);
        s.on_packet(now, packet);
        assert_eq!(drain(&mut s)[0], Action::Send(Outbound::ConnAck { session_present: false, code }));
    }
}

#[test]
fn pubacks_wait_for_durability_and_keep_publish_order() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, publish("u", chat_up("a"), 1, 10));
    s.on_packet(now, publish("u", chat_up("b"), 1, 11));
    let tickets: Vec<u64> = drain(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Apply { ticket, .. } => Some(ticket),
            _ => None,
        })
        .collect();
    assert_eq!(tickets.len(), 2);
    // The second finishes first: nothing may be acknowledged yet.
    s.on_applied(tickets[1], Ok(Applied { ts: 1, reply: None }));
    assert!(sent_pubacks(&drain(&mut s)).is_empty());
    s.on_applied(tickets[0], Ok(Applied { ts: 1, reply: None }));
    assert_eq!(sent_pubacks(&drain(&mut s)), vec![10, 11]);
}

#[test]
fn garbage_on_u_gets_an_error_envelope_and_the_session_goes_on() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, publish("u", Bytes::from_static(b"\xff\x00garbage"), 1, 5));
    let a = drain(&mut s);
    let errors: Vec<v1::Down> = a
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::Publish { payload, .. }) => v1::Down::decode(payload.clone()).ok(),
            _ => None,
        })
        .collect();
    assert!(matches!(errors[0].body, Some(down::Body::Error(ref e)) if e.code == Code::BadEnvelope as i32));
    assert_eq!(sent_pubacks(&a), vec![5]);
    s.on_packet(now, Inbound::PingReq);
    assert_eq!(drain(&mut s), vec![Action::Send(Outbound::PingResp)]);
}

#[test]
fn cross_user_and_reserved_publishes_are_refused_and_not_routed() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    for topic in ["d", "$SYS/x", "a/+"] {
        s.on_packet(now, publish(topic, Bytes::from_static(b"x"), 1, 9));
        let a = drain(&mut s);
        assert!(a.iter().all(|a| !matches!(a, Action::RouterPublish { .. })), "{topic} was routed");
        assert!(a.contains(&Action::Send(Outbound::PubAck { pkid: 9, refused: true })));
    }
    s.on_packet(now, publish("t/bob/x", Bytes::from_static(b"x"), 0, 0));
    let a = drain(&mut s);
    assert!(a.contains(&Action::RouterPublish {
        topic: "t/alice/t/bob/x".into(),
        payload: Bytes::from_static(b"x")
    }));
}

#[test]
fn hostile_subscriptions_stay_in_the_users_namespace() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    let filters = ["#", "+/#", "$share/g/#", "$SYS/#", "u", "d"].map(|f| (f.to_string(), 1));
    s.on_packet(now, Inbound::Subscribe { pkid: 3, filters: filters.to_vec() });
    let a = drain(&mut s);
    let subs: Vec<&String> = a
        .iter()
        .filter_map(|a| match a {
            Action::RouterSubscribe(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(subs, vec!["t/alice/#", "t/alice/+/#"]);
    assert!(a.contains(&Action::Send(Outbound::SubAck {
        pkid: 3,
        granted: vec![Some(0), Some(0), None, None, None, Some(1)],
    })));
}

#[test]
fn the_window_bounds_inflight_and_pubacks_move_the_cursor() {
    let now = Instant::now();
    let (mut s, a) = open(now, Some(0), 5);
    assert!(a.contains(&Action::Fetch { after: Seq(0), limit: 2 }));
    s.on_entries(vec![entry(1, None), entry(2, None)]);
    let a = drain(&mut s);
    let sent = downward(&a);
    assert_eq!(sent.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1, 2]);
    assert!(!a.iter().any(|a| matches!(a, Action::Fetch { .. })), "window is full");
    // Acks out of order: the cursor moves only over a contiguous acked prefix.
    s.on_packet(now, Inbound::PubAck(sent[1].0));
    assert!(!drain(&mut s).iter().any(|a| matches!(a, Action::SaveCursor(_))));
    s.on_packet(now, Inbound::PubAck(sent[0].0));
    let a = drain(&mut s);
    assert!(a.contains(&Action::SaveCursor(Seq(2))));
    assert!(a.contains(&Action::Fetch { after: Seq(2), limit: 2 }));
}

#[test]
fn a_devices_own_copies_are_skipped_but_counted() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 2);
    s.on_entries(vec![entry(1, Some("phone")), entry(2, Some("tablet"))]);
    let a = drain(&mut s);
    assert_eq!(downward(&a).iter().map(|x| x.1).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn wakes_pull_new_entries() {
    let now = Instant::now();
    let (mut s, a) = open(now, Some(0), 0);
    assert!(!a.iter().any(|a| matches!(a, Action::Fetch { .. })));
    s.on_wake(Seq(1));
    assert_eq!(drain(&mut s), vec![Action::Fetch { after: Seq(0), limit: 2 }]);
    // A second wake while fetching asks for nothing more.
    s.on_wake(Seq(2));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn sync_rewinds_and_reports_done() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(2), 2);
    let up = v1::Up {
        id: "s1".into(),
        body: Some(v1::up::Body::Sync(v1::Sync { after: 0 })),
        ..Default::default()
    };
    s.on_packet(now, publish("u", Bytes::from(up.encode_to_vec()), 0, 0));
    assert!(drain(&mut s).contains(&Action::Fetch { after: Seq(0), limit: 2 }));
    s.on_entries(vec![entry(1, None), entry(2, None)]);
    let a = drain(&mut s);
    let done = a.iter().any(|a| match a {
        Action::Send(Outbound::Publish { payload, .. }) => matches!(
            v1::Down::decode(payload.clone()).map(|d| d.body),
            Ok(Some(down::Body::SyncDone(v1::SyncDone { upto: 2 })))
        ),
        _ => false,
    });
    assert!(done);
}

#[test]
fn keepalive_timeout_publishes_the_will_and_ends() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(90)));
    s.on_timeout(now + Duration::from_secs(89));
    assert!(!s.is_closed());
    s.on_timeout(now + Duration::from_secs(90));
    let a = drain(&mut s);
    assert!(a.contains(&Action::RouterPublish {
        topic: "t/alice/status".into(),
        payload: Bytes::from_static(b"gone")
    }));
    assert!(matches!(a.last(), Some(Action::Ended { graceful: false, .. })));
}

#[test]
fn a_clean_disconnect_drops_the_will() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, Inbound::Disconnect);
    let a = drain(&mut s);
    assert!(!a.iter().any(|a| matches!(a, Action::RouterPublish { .. })));
    assert!(matches!(a.last(), Some(Action::Ended { graceful: true, .. })));
}

#[test]
fn no_connect_within_the_timeout_closes() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.on_timeout(now + Duration::from_secs(10));
    assert!(s.is_closed());
}

#[test]
fn backpressure_stops_reading_when_too_much_is_pending() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    for i in 0..4 {
        s.on_packet(now, publish("u", chat_up(&i.to_string()), 1, i + 1));
    }
    assert!(!s.wants_read());
}

/// Two sessions of one user over a shared in-memory inbox, driven in simulated time with a step
/// limit: what one device sends reaches the other exactly once and in order, even though the
/// receiving device drops its connection half-way and resumes from its saved cursor.
#[test]
fn simulated_resume_delivers_exactly_what_was_missed() {
    let start = Instant::now();
    let mut inbox: Vec<StoredEntry> = Vec::new();
    let mut saved_cursor: Option<u64> = None;
    let mut received: Vec<u64> = Vec::new();
    let total = 20u64;
    let mut steps = 0;
    for round in 0..2 {
        let now = start + Duration::from_secs(round * 100);
        let durable = inbox.len() as u64;
        let mut s = Session::new(cfg(), now);
        s.on_packet(now, connect("phone", "alice", 60));
        drain(&mut s);
        s.on_login(now, Ok(LoginOk { cursor: saved_cursor.map(Seq), durable: Seq(durable), token: None }));
        let mut produced = inbox.len() as u64;
        let mut pending: VecDeque<Action> = VecDeque::new();
        loop {
            steps += 1;
            assert!(steps < 10_000, "step limit");
            pending.extend(drain(&mut s));
            // Produce one entry per step until the round's share is stored.
            let target = if round == 0 { total / 2 } else { total };
            if produced < target {
                produced += 1;
                inbox.push(entry(produced, None));
                s.on_wake(Seq(produced));
                continue;
            }
            let Some(action) = pending.pop_front() else { break };
            match action {
                Action::Fetch { after, limit } => {
                    let upto = s.durable.0;
                    let got = inbox
                        .iter()
                        .filter(|e| e.seq > after && e.seq.0 <= upto)
                        .take(limit)
                        .cloned()
                        .collect();
                    s.on_entries(got);
                }
                Action::Send(Outbound::Publish { pkid, payload, .. }) => {
                    let d = v1::Down::decode(payload).unwrap();
                    if d.seq > 0 {
                        // Round 0 loses the connection after taking 7 entries but acking only 6.
                        if round == 0 && received.len() == 7 {
                            s.on_transport_closed();
                            continue;
                        }
                        if !received.contains(&d.seq) {
                            received.push(d.seq);
                        }
                        if !(round == 0 && received.len() == 7) {
                            s.on_packet(now, Inbound::PubAck(pkid));
                        }
                    }
                }
                Action::SaveCursor(c) => saved_cursor = Some(c.0),
                _ => {}
            }
        }
    }
    assert_eq!(received, (1..=total).collect::<Vec<_>>());
}

#[test]
fn a_sync_or_ack_beyond_the_inbox_cannot_move_the_cursor_past_it() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 5);
    drain(&mut s);
    let sync = v1::Up {
        id: "s".into(),
        body: Some(v1::up::Body::Sync(v1::Sync { after: 1000 })),
        ..Default::default()
    };
    s.on_packet(now, publish("u", Bytes::from(sync.encode_to_vec()), 0, 0));
    let ack = v1::Up {
        id: "a".into(),
        body: Some(v1::up::Body::Ack(v1::Ack { upto: 1000 })),
        ..Default::default()
    };
    s.on_packet(now, publish("u", Bytes::from(ack.encode_to_vec()), 0, 0));
    for a in drain(&mut s) {
        if let Action::SaveCursor(c) = a {
            assert!(c <= Seq(5), "cursor {c:?} beyond the durable mark");
        }
    }
}

#[test]
fn a_qos0_subscriber_to_d_is_served_at_most_once_and_never_stalls() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, Inbound::Subscribe { pkid: 1, filters: vec![("d".into(), 0)] });
    drain(&mut s);
    let mut delivered = 0;
    for seq in 1..=10u64 {
        s.on_wake(Seq(seq));
        for a in drain(&mut s) {
            if let Action::Fetch { after, .. } = a {
                s.on_entries((after.0 + 1..=seq).map(|n| entry(n, None)).collect());
                delivered += downward(&drain(&mut s)).len();
            }
        }
    }
    assert_eq!(delivered, 10, "a QoS 0 client that never acks still gets everything");
}

#[test]
fn nothing_is_read_while_a_login_is_checked() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.on_packet(now, connect("phone", "alice", 60));
    assert!(!s.wants_read());
}

#[test]
fn an_entry_larger_than_the_client_accepts_is_replaced_by_an_error_and_passed() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    let Inbound::Connect(mut req) = connect("phone", "alice", 60) else { unreachable!() };
    req.max_packet = Some(64);
    s.on_packet(now, Inbound::Connect(req));
    drain(&mut s);
    s.on_login(now, Ok(LoginOk { cursor: Some(Seq(0)), durable: Seq(1), token: None }));
    drain(&mut s);
    let big = v1::Down {
        seq: 1,
        id: "big".into(),
        body: Some(down::Body::Chat(v1::Chat { body: "x".repeat(500), ..Default::default() })),
        ..Default::default()
    };
    s.on_entries(vec![StoredEntry {
        seq: Seq(1),
        origin: None,
        ts_ms: 0,
        down: Bytes::from(big.encode_to_vec()),
    }]);
    let a = drain(&mut s);
    let sent: Vec<v1::Down> = a
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::Publish { payload, .. }) => v1::Down::decode(payload.clone()).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].seq, sent[0].id.as_str()), (1, "big"));
    assert!(matches!(sent[0].body, Some(down::Body::Error(ref e)) if e.code == Code::TooLarge as i32));
}

/// Every `Down` the session published on `d`.
fn downs(actions: &[Action]) -> Vec<v1::Down> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::Publish { topic, payload, .. }) if topic == "d" => {
                v1::Down::decode(payload.clone()).ok()
            }
            _ => None,
        })
        .collect()
}

fn chat_entry(seq: u64, peer: &str) -> StoredEntry {
    let chat = v1::Chat { peer: peer.into(), body: "hi".into(), ..Default::default() };
    let down =
        v1::Down { seq, id: format!("m{seq}"), body: Some(down::Body::Chat(chat)), ..Default::default() };
    StoredEntry { seq: Seq(seq), origin: None, ts_ms: 0, down: Bytes::from(down.encode_to_vec()) }
}

#[test]
fn hello_turns_on_peer_refs_which_roster_pushes_teach() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, hello(v1::Hello { peer_refs: true, roster_ver: 4, ..Default::default() }));
    let a = drain(&mut s);
    // Nothing answers a QoS 0 Hello; the driver is asked for the table.
    assert_eq!(a, vec![Action::LoadPeerRefs { roster_ver: 4 }]);
    s.on_peer_refs(PeerRefs::new([("bob@x".to_owned(), 1, true)]));
    // A push teaches carol's ref; the next envelopes name both by ref.
    let item = v1::RosterItem { jid: "carol@y".into(), peer_ref: 2, sub: 3, ..Default::default() };
    let push = v1::Down {
        body: Some(down::Body::Roster(v1::Roster { ver: 5, items: vec![item], full: false })),
        ..Default::default()
    };
    s.on_live(Bytes::from(push.encode_to_vec()));
    s.on_wake(Seq(3));
    drain(&mut s);
    s.on_entries(vec![chat_entry(1, "bob@x/phone"), chat_entry(2, "carol@y"), chat_entry(3, "eve@z/pc")]);
    let got: Vec<_> = downs(&drain(&mut s))
        .into_iter()
        .filter_map(|d| match d.body {
            Some(down::Body::Chat(c)) => Some((c.peer, c.peer_ref, c.resource)),
            _ => None,
        })
        .collect();
    let want = [("", 1, "phone"), ("", 2, ""), ("eve@z/pc", 0, "")];
    let want: Vec<_> = want.iter().map(|(p, r, res)| (p.to_string(), *r, res.to_string())).collect();
    assert_eq!(got, want);
    // Up envelopes may name them by ref too; an unknown ref is refused with its reason.
    let up = |peer_ref| v1::Up {
        id: "u1".into(),
        body: Some(v1::up::Body::Chat(v1::Chat { peer_ref, body: "yo".into(), ..Default::default() })),
        ..Default::default()
    };
    s.on_packet(now, publish("u", Bytes::from(up(2).encode_to_vec()), 1, 7));
    let ticket = drain(&mut s)
        .into_iter()
        .find_map(|a| match a {
            Action::Apply { ticket, env } => match &env.cmd {
                UpCmd::Chat { to, .. } if to.to_string() == "carol@y" => Some(ticket),
                _ => None,
            },
            _ => None,
        })
        .expect("the chat by ref is applied to carol");
    s.on_packet(now, publish("u", Bytes::from(up(9).encode_to_vec()), 0, 0));
    s.on_applied(ticket, Ok(Applied { ts: 1, reply: None }));
    let errors: Vec<_> = downs(&drain(&mut s))
        .into_iter()
        .filter_map(|d| match d.body {
            Some(down::Body::Error(e)) => Some(e.text),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec!["unknown peer_ref 9".to_owned()]);
}

#[test]
fn hello_turns_on_numeric_ids_for_ids_that_are_numbers() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, hello(v1::Hello { numeric_ids: true, ..Default::default() }));
    // Without peer refs there is no table to load.
    assert_eq!(drain(&mut s), vec![]);
    s.on_wake(Seq(2));
    drain(&mut s);
    let with_id = |seq, id: &str| {
        let chat = v1::Chat { peer: "bob@x".into(), body: "hi".into(), ..Default::default() };
        let down = v1::Down { seq, id: id.into(), body: Some(down::Body::Chat(chat)), ..Default::default() };
        StoredEntry { seq: Seq(seq), origin: None, ts_ms: 0, down: Bytes::from(down.encode_to_vec()) }
    };
    s.on_entries(vec![with_id(1, "Po"), with_id(2, "m.2")]);
    let got: Vec<_> = downs(&drain(&mut s)).into_iter().map(|d| (d.id, d.num_id)).collect();
    assert_eq!(got, vec![(String::new(), 1000), ("m.2".to_owned(), 0)]);
}

#[test]
fn presences_that_come_while_the_refs_load_wait_for_them_and_go_by_ref_in_order() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    s.on_packet(now, connect("phone", "alice", 60));
    drain(&mut s);
    // The phone sends Hello with its CONNECT: it arrives while the login is checked.
    s.on_packet(now, hello(v1::Hello { peer_refs: true, roster_ver: 4, ..Default::default() }));
    s.on_login(now, Ok(LoginOk { cursor: None, durable: Seq(0), token: None }));
    let a = drain(&mut s);
    assert!(a.contains(&Action::LoadPeerRefs { roster_ver: 4 }), "{a:?}");
    // The driver binds (sending the contacts' presences) before it loads the table.
    let presence = |show: &str| {
        presence_down(v1::Presence { peer: "bob@x/phone".into(), status: show.into(), ..Default::default() })
    };
    s.on_live(presence("away"));
    s.on_live(presence("dnd"));
    assert_eq!(drain(&mut s), vec![], "held until the table is there");
    s.on_peer_refs(PeerRefs::new([("bob@x".to_owned(), 1, true)]));
    let got: Vec<_> =
        presences(&drain(&mut s)).into_iter().map(|p| (p.peer, p.peer_ref, p.resource, p.status)).collect();
    let by_ref = |show: &str| (String::new(), 1, "phone".to_owned(), show.to_owned());
    assert_eq!(got, vec![by_ref("away"), by_ref("dnd")]);
    // From now on nothing waits.
    s.on_live(presence("xa"));
    assert_eq!(downs(&drain(&mut s)).len(), 1);
}

#[test]
fn a_flood_of_live_envelopes_while_the_refs_load_goes_out_as_it_is_in_order() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, hello(v1::Hello { peer_refs: true, ..Default::default() }));
    drain(&mut s);
    for i in 0..=MAX_HELD_LIVE {
        s.on_live(presence_down(v1::Presence { peer: format!("c{i}@x"), ..Default::default() }));
    }
    let peers: Vec<_> = presences(&drain(&mut s)).into_iter().map(|p| p.peer).collect();
    assert_eq!(peers, (0..=MAX_HELD_LIVE).map(|i| format!("c{i}@x")).collect::<Vec<_>>());
}

#[test]
fn while_the_refs_load_the_sessions_own_replies_keep_their_order_with_the_pubacks() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, hello(v1::Hello { peer_refs: true, ..Default::default() }));
    drain(&mut s);
    // An Up that does not decode gets its error, then its PUBACK, even while presences wait.
    s.on_live(presence_down(v1::Presence { peer: "bob@x/phone".into(), ..Default::default() }));
    s.on_packet(now, publish("u", Bytes::from_static(b"\xff\xff\xff"), 1, 5));
    let a = drain(&mut s);
    let error_at = a.iter().position(|a| matches!(a, Action::Send(Outbound::Publish { .. })));
    let puback_at = a.iter().position(|a| matches!(a, Action::Send(Outbound::PubAck { pkid: 5, .. })));
    assert!(error_at.is_some() && error_at < puback_at, "{a:?}");
    assert!(presences(&a).is_empty(), "the presence still waits");
}

#[test]
fn a_table_loaded_for_a_hello_that_a_later_hello_took_back_is_not_used() {
    let now = Instant::now();
    let (mut s, _) = open(now, Some(0), 0);
    s.on_packet(now, hello(v1::Hello { peer_refs: true, ..Default::default() }));
    s.on_packet(now, hello(v1::Hello { peer_refs: false, ..Default::default() }));
    drain(&mut s);
    s.on_peer_refs(PeerRefs::new([("bob@x".to_owned(), 1, true)]));
    s.on_live(presence_down(v1::Presence { peer: "bob@x/phone".into(), ..Default::default() }));
    let got: Vec<_> = presences(&drain(&mut s)).into_iter().map(|p| (p.peer, p.peer_ref)).collect();
    assert_eq!(got, vec![("bob@x/phone".to_owned(), 0)]);
}
