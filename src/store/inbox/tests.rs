use super::*;
use crate::store::journal::Journal;
use std::sync::Arc;

fn open() -> (tempfile::TempDir, Inbox) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
    // The daemon's arrangement: writes stay in the memtable, reads merge it over sled.
    let journal = Arc::new(Journal::with_memtable(db));
    (dir, Inbox::new(Table::open(&journal, keys::DATA).unwrap()))
}

/// An inbox on `db` whose journal applies to sled and is never written (these tests flush
/// sled themselves).
fn over(db: &sled::Db) -> Inbox {
    Inbox::new(Table::open(&Arc::new(Journal::new(db.clone())), keys::DATA).unwrap())
}

fn user(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn chat(user_name: &str, id: &str) -> Delivery {
    Delivery { user: user(user_name), origin: None, down: v1::Down { id: id.into(), ..Default::default() } }
}

fn all_durable(inbox: &Inbox, a: &Appended) {
    if let Appended::Stored(s) = a {
        inbox.mark_durable(s);
    }
}

#[test]
fn sequences_are_per_user_and_dense() {
    let (_d, inbox) = open();
    let a = inbox.append(None, 1, vec![chat("bob", "1"), chat("alice", "1c")]).unwrap();
    assert_eq!(a, Appended::Stored(vec![(user("bob"), Seq(1)), (user("alice"), Seq(1))]));
    let b = inbox.append(None, 2, vec![chat("bob", "2")]).unwrap();
    assert_eq!(b, Appended::Stored(vec![(user("bob"), Seq(2))]));
}

#[test]
fn nothing_is_readable_before_it_is_durable() {
    let (_d, inbox) = open();
    let a = inbox.append(None, 1, vec![chat("bob", "1")]).unwrap();
    assert!(inbox.read(&user("bob"), Seq(0), 10).unwrap().is_empty());
    all_durable(&inbox, &a);
    let got = inbox.read(&user("bob"), Seq(0), 10).unwrap();
    assert_eq!(got.len(), 1);
    let down = v1::Down::decode(got[0].down.clone()).unwrap();
    assert_eq!((down.seq, down.id.as_str()), (1, "1"));
}

#[test]
fn resends_with_the_same_id_are_dropped() {
    let (_d, inbox) = open();
    let id = MsgId::parse("x").unwrap();
    let (phone, tablet) = (DeviceId::parse("phone").unwrap(), DeviceId::parse("tablet").unwrap());
    let first = inbox.append(Some((&user("alice"), &phone, &id)), 1, vec![chat("bob", "x")]).unwrap();
    assert!(matches!(first, Appended::Stored(_)));
    let again = inbox.append(Some((&user("alice"), &phone, &id)), 2, vec![chat("bob", "x")]).unwrap();
    assert_eq!(again, Appended::Duplicate);
    // The same id from another sender, or another device of the same sender, is another message.
    let other = inbox.append(Some((&user("carol"), &phone, &id)), 3, vec![chat("bob", "x")]).unwrap();
    assert!(matches!(other, Appended::Stored(_)));
    let tablet_msg = inbox.append(Some((&user("alice"), &tablet, &id)), 4, vec![chat("bob", "x")]).unwrap();
    assert!(matches!(tablet_msg, Appended::Stored(_)));
}

#[test]
fn reads_resume_after_a_cursor_in_order() {
    let (_d, inbox) = open();
    for i in 0..10 {
        let a = inbox.append(None, i, vec![chat("bob", &i.to_string())]).unwrap();
        all_durable(&inbox, &a);
    }
    let dev = DeviceId::parse("phone").unwrap();
    inbox.set_cursor(&user("bob"), &dev, Seq(4)).unwrap();
    let after = inbox.cursor(&user("bob"), &dev).unwrap().unwrap();
    let seqs: Vec<u64> = inbox.read(&user("bob"), after, 100).unwrap().iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
    assert_eq!(inbox.read(&user("bob"), Seq(4), 2).unwrap().len(), 2);
}

#[test]
fn numeric_ids_share_one_runs_record_per_device_across_a_reopen_until_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, phone) = (user("alice"), DeviceId::parse("phone").unwrap());
    let send = |inbox: &Inbox, n: u64, now_ms: u64| {
        let id = MsgId::parse(&tern_schemas::num_id::render(n).unwrap()).unwrap();
        inbox.append(Some((&alice, &phone, &id)), now_ms, vec![chat("bob", id.as_str())]).unwrap()
    };
    {
        let db = crate::store::test_support::sled_at(dir.path());
        let inbox = over(&db);
        for n in 1..=300 {
            assert!(matches!(send(&inbox, n, 10), Appended::Stored(_)), "id {n}");
        }
        assert_eq!(send(&inbox, 150, 11), Appended::Duplicate);
        let records = db.open_tree(keys::DATA).unwrap();
        let dedupe_keys = |kind: u8| records.scan_prefix([kind]).count();
        assert_eq!((dedupe_keys(keys::DEDUPE_RUNS), dedupe_keys(keys::DEDUPE)), (1, 0));
        db.flush().unwrap();
    }
    let db = crate::store::test_support::sled_at(dir.path());
    let inbox = over(&db);
    assert_eq!(send(&inbox, 300, 12), Appended::Duplicate);
    // The string form of a number is the same message: "B" renders 1.
    let by_string = MsgId::parse("B").unwrap();
    let again = inbox.append(Some((&alice, &phone, &by_string)), 13, vec![chat("bob", "B")]).unwrap();
    assert_eq!(again, Appended::Duplicate);
    let rules = Retention { max_entries: 1000, max_age_ms: u64::MAX, dedupe_ms: 100 };
    assert_eq!(inbox.prune(1_000, rules).unwrap().dedupe, 1);
    assert!(matches!(send(&inbox, 150, 1_001), Appended::Stored(_)), "past the window it is a new message");
}

#[test]
fn an_id_past_the_runs_and_a_per_id_record_from_before_them_are_still_duplicates() {
    let (_d, inbox) = open();
    let (alice, phone, tablet) =
        (user("alice"), DeviceId::parse("phone").unwrap(), DeviceId::parse("tablet").unwrap());
    let id = |n: u64| MsgId::parse(&tern_schemas::num_id::render(n).unwrap()).unwrap();
    let send = |device: &DeviceId, n: u64| {
        inbox.append(Some((&alice, device, &id(n))), 10, vec![chat("bob", id(n).as_str())]).unwrap()
    };
    // Out of order: every id starts a run of its own, and the one past the cap gets a record.
    let spread: Vec<u64> = (1..=crate::store::dedupe_runs::MAX_RUNS as u64 + 1).map(|i| i * 10).collect();
    for &n in &spread {
        assert!(matches!(send(&phone, n), Appended::Stored(_)), "id {n}");
    }
    for &n in &spread {
        assert_eq!(send(&phone, n), Appended::Duplicate, "id {n}");
    }
    // A per-id record written before the device had runs (as an older tern did).
    let mut old = Batch::default();
    let rest = [tablet.as_str().as_bytes(), b"\0", id(7).as_str().as_bytes()].concat();
    old.insert(keys::DATA, keys::key(keys::DEDUPE, &alice, &rest), 10u64.to_be_bytes());
    inbox.tree.commit(old).unwrap();
    assert!(matches!(send(&tablet, 8), Appended::Stored(_)));
    assert_eq!(send(&tablet, 7), Appended::Duplicate);
    assert_eq!(send(&tablet, 8), Appended::Duplicate);
}

#[test]
fn the_flag_for_per_id_records_follows_them_through_an_old_format_and_retention() {
    use crate::store::dedupe_runs::Runs;
    let (_d, inbox) = open();
    let alice = user("alice");
    let id = |n: u64| MsgId::parse(&tern_schemas::num_id::render(n).unwrap()).unwrap();
    let send = |device: &DeviceId, n: u64, now_ms: u64| {
        inbox.append(Some((&alice, device, &id(n))), now_ms, vec![chat("bob", id(n).as_str())]).unwrap()
    };
    let own_record = |device: &DeviceId, n: u64, seen_ms: u64| {
        let mut b = Batch::default();
        let rest = [device.as_str().as_bytes(), b"\0", id(n).as_str().as_bytes()].concat();
        b.insert(keys::DATA, keys::key(keys::DEDUPE, &alice, &rest), seen_ms.to_be_bytes());
        inbox.tree.commit(b).unwrap();
    };
    let runs_key = |device: &DeviceId| keys::key(keys::DEDUPE_RUNS, &alice, device.as_str().as_bytes());
    let runs_of =
        |device: &DeviceId| inbox.tree.get(&runs_key(device)).unwrap().map(|v| Runs::decode(&v).unwrap());

    // Runs in the format before the flag (no trailing byte), beside a per-id record.
    let phone = DeviceId::parse("phone").unwrap();
    let mut old = Runs::new(false);
    for n in 1..=3 {
        old.insert(n, 500);
    }
    let bytes = old.encode();
    let mut b = Batch::default();
    b.insert(keys::DATA, runs_key(&phone), bytes[..bytes.len() - 1].to_vec());
    inbox.tree.commit(b).unwrap();
    own_record(&phone, 7, 10);
    assert_eq!(send(&phone, 7, 600), Appended::Duplicate, "the old runs read as flagged");
    assert_eq!(send(&phone, 2, 600), Appended::Duplicate);
    // The record ages out, the runs (newer) stay: the flag goes with the record.
    let rules = Retention { max_entries: 1000, max_age_ms: u64::MAX, dedupe_ms: 600 };
    inbox.prune(1_000, rules).unwrap();
    assert!(!runs_of(&phone).unwrap().singles());
    assert!(matches!(send(&phone, 7, 1_001), Appended::Stored(_)), "past the window it is new");

    // Runs that age out before a record: the next runs find it.
    let tablet = DeviceId::parse("tablet").unwrap();
    own_record(&tablet, 7, 3_000);
    assert!(matches!(send(&tablet, 1, 1_500), Appended::Stored(_)));
    assert!(runs_of(&tablet).unwrap().singles());
    inbox.prune(2_500, rules).unwrap();
    assert_eq!(runs_of(&tablet), None, "every run of the tablet aged out");
    assert_eq!(send(&tablet, 7, 2_600), Appended::Duplicate);
}

#[test]
fn retention_prunes_acked_old_and_excess_but_never_reuses_a_seq() {
    let (_d, inbox) = open();
    let rules = Retention { max_entries: 5, max_age_ms: 1000, dedupe_ms: 1000 };
    for i in 0..8 {
        let a = inbox.append(None, 10_000 + i, vec![chat("bob", &i.to_string())]).unwrap();
        all_durable(&inbox, &a);
    }
    let dev = DeviceId::parse("phone").unwrap();
    inbox.set_cursor(&user("bob"), &dev, Seq(2)).unwrap();
    // Count rule: keep the last 5 (4..=8); ack rule alone would keep 3..=8.
    let p = inbox.prune(10_010, rules).unwrap();
    assert_eq!(p.entries, 3);
    let seqs: Vec<u64> = inbox.read(&user("bob"), Seq(0), 100).unwrap().iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    // Age rule: everything is old now, but the newest entry stays to remember the sequence.
    inbox.prune(20_000, rules).unwrap();
    let left: Vec<u64> = inbox.read(&user("bob"), Seq(0), 100).unwrap().iter().map(|e| e.seq.0).collect();
    assert_eq!(left, vec![8]);
    let a = inbox.append(None, 20_001, vec![chat("bob", "new")]).unwrap();
    assert_eq!(a, Appended::Stored(vec![(user("bob"), Seq(9))]));
}

#[test]
fn the_sequence_survives_pruning_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rules = Retention { max_entries: 1, max_age_ms: 0, dedupe_ms: 0 };
    {
        let db = crate::store::test_support::sled_at(dir.path());
        let inbox = over(&db);
        for i in 0..5 {
            let a = inbox.append(None, 1, vec![chat("bob", &i.to_string())]).unwrap();
            all_durable(&inbox, &a);
        }
        inbox.prune(10, rules).unwrap();
        db.flush().unwrap();
    }
    let db = crate::store::test_support::sled_at(dir.path());
    let inbox = over(&db);
    let a = inbox.append(None, 11, vec![chat("bob", "after")]).unwrap();
    assert_eq!(a, Appended::Stored(vec![(user("bob"), Seq(6))]));
}

#[test]
fn marks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = crate::store::test_support::sled_at(dir.path());
        let inbox = over(&db);
        inbox.append(None, 1, vec![chat("bob", "1"), chat("bob", "2")]).unwrap();
        db.flush().unwrap();
    }
    let db = crate::store::test_support::sled_at(dir.path());
    let inbox = over(&db);
    assert_eq!(inbox.durable(&user("bob")).unwrap(), Seq(2));
    assert_eq!(inbox.read(&user("bob"), Seq(0), 10).unwrap().len(), 2);
}
