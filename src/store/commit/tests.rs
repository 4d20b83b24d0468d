use super::*;
use crate::store::inbox::{Appended, Delivery};
use crate::store::{keys, Store};
use std::path::Path;

fn bob() -> UserName {
    UserName::parse("bob").unwrap()
}

fn to_bob(id: &str) -> Delivery {
    let down = tern_schemas::v1::Down { id: id.into(), ..Default::default() };
    Delivery { user: bob(), origin: None, down }
}

fn durability(policy: SyncPolicy) -> Durability {
    Durability::new(policy, Duration::from_millis(20))
}

/// Opens `dir`, waiting for a previous store's threads to let go of sled's directory lock.
fn open(dir: &Path, d: Durability) -> Store {
    crate::store::test_support::reopening(|| Store::open(dir, d))
}

fn journal_files(dir: &Path) -> Vec<u64> {
    journal::files(&dir.join("journal")).unwrap().into_iter().map(|(i, _)| i).collect()
}

/// Every record in the journal files under `dir`.
fn journaled(dir: &Path) -> Vec<journal::Batch> {
    let mut out = Vec::new();
    for (_, path) in journal::files(&dir.join("journal")).unwrap() {
        out.extend(journal::read_records(&std::fs::read(path).unwrap()).0);
    }
    out
}

/// A writer that never waits (its connection died mid-commit) still gets its entry made
/// durable and announced.
#[tokio::test]
async fn an_entry_nobody_waits_for_still_becomes_durable_and_is_announced() {
    for policy in [SyncPolicy::Always, SyncPolicy::Write] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), durability(policy));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        store.committer.on_durable(Box::new(move |d| sink.lock().unwrap().extend_from_slice(d)));
        store.inbox.append(None, 1, vec![to_bob("1")]).unwrap();
        assert_eq!(store.inbox.durable(&bob()).unwrap(), Seq(0));
        tokio::time::sleep(IDLE_FLUSH * 4).await;
        assert_eq!(store.inbox.durable(&bob()).unwrap(), Seq(1), "{policy:?}");
        assert_eq!(heard.lock().unwrap().as_slice(), &[(bob(), Seq(1))]);
    }
}

#[tokio::test]
async fn a_released_write_is_already_in_the_journal_file() {
    for policy in [SyncPolicy::Always, SyncPolicy::Write] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), durability(policy));
        let Appended::Stored(at) = store.inbox.append(None, 1, vec![to_bob("1")]).unwrap() else { panic!() };
        assert_eq!(at, vec![(bob(), Seq(1))]);
        store.committer.durable().await.unwrap();
        let key = keys::inbox(&bob(), Seq(1));
        let records = journaled(dir.path());
        let found = records
            .iter()
            .flat_map(|b| b.ops())
            .any(|op| matches!(op, journal::Op::Insert { key: k, .. } if *k == key));
        assert!(found, "{policy:?}: {records:?}");
    }
}

#[tokio::test]
async fn checkpoints_rotate_flush_and_delete_and_the_data_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Durability { checkpoint_bytes: 1, ..durability(SyncPolicy::Always) };
    {
        let store = open(dir.path(), tiny);
        for i in 0..3 {
            store.inbox.append(None, 1, vec![to_bob(&i.to_string())]).unwrap();
            store.committer.durable().await.unwrap();
        }
        // Full files rotate (also when idle); the checkpoints leave only the newest, empty one.
        for _ in 0..250 {
            if journal_files(dir.path()).len() == 1 && journaled(dir.path()).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(journal_files(dir.path()).len(), 1);
        assert!(journaled(dir.path()).is_empty());
    }
    let store = open(dir.path(), tiny);
    assert_eq!(store.inbox.durable(&bob()).unwrap(), Seq(3));
    assert_eq!(store.inbox.read(&bob(), Seq(0), 10).unwrap().len(), 3);
}

/// sled lost everything after the last checkpoint (as after a crash); the journal, in two
/// files because a rotation happened and its checkpoint did not finish, brings it all back.
#[tokio::test]
async fn a_crash_between_rotation_and_checkpoint_is_recovered_from_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    {
        // Builds the records against a scratch database: the real one never sees them.
        let scratch = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(scratch.path()).open().unwrap();
        let j = Arc::new(journal::Journal::new(db.clone()));
        let inbox = Inbox::new(crate::store::table::Table::open(&j, keys::DATA).unwrap());
        for (index, id) in [(7, "a"), (8, "b")] {
            inbox.append(None, 1, vec![to_bob(id)]).unwrap();
            std::fs::write(journal::file_path(&jdir, index), j.take_buffered(Vec::new())).unwrap();
        }
    }
    let store = open(dir.path(), durability(SyncPolicy::Always));
    assert_eq!(store.inbox.durable(&bob()).unwrap(), Seq(2));
    let ids: Vec<u64> = store.inbox.read(&bob(), Seq(0), 10).unwrap().iter().map(|e| e.seq.0).collect();
    assert_eq!(ids, vec![1, 2]);
    // Replayed files are gone; the new one continues the numbering.
    assert_eq!(journal_files(dir.path()), vec![9]);
    let Appended::Stored(next) = store.inbox.append(None, 2, vec![to_bob("c")]).unwrap() else { panic!() };
    assert_eq!(next, vec![(bob(), Seq(3))]);
}

/// An account purge is journaled behind the writes it removes: replaying the journal alone
/// (sled lost everything) must not bring the purged inbox back.
#[tokio::test]
async fn a_purge_replays_after_the_writes_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability(SyncPolicy::Always));
    store.inbox.append(None, 1, vec![to_bob("1"), to_bob("2")]).unwrap();
    store.committer.durable().await.unwrap();
    store.users.remove(&bob()).unwrap();
    store.committer.durable().await.unwrap();
    let crashed = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(crashed.path().join("journal")).unwrap();
    for (index, path) in journal::files(&dir.path().join("journal")).unwrap() {
        std::fs::copy(path, journal::file_path(&crashed.path().join("journal"), index)).unwrap();
    }
    let replayed = open(crashed.path(), durability(SyncPolicy::Always));
    assert!(replayed.inbox.read(&bob(), Seq(0), 10).unwrap().is_empty());
    assert_eq!(replayed.inbox.count_all(), 0);
}

fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

fn device(name: &str) -> crate::ids::DeviceId {
    crate::ids::DeviceId::parse(name).unwrap()
}

fn chat_to(name: &str, body: &str) -> Delivery {
    let chat = tern_schemas::v1::Chat { body: body.into(), ..Default::default() };
    let down = tern_schemas::v1::Down {
        id: "x".into(),
        body: Some(tern_schemas::v1::down::Body::Chat(chat)),
        ..Default::default()
    };
    Delivery { user: user(name), origin: None, down }
}

const DEVICES: [(&str, &str); 4] =
    [("bob", "phone"), ("bob", "tablet"), ("carol", "phone"), ("dave", "phone")];

/// Every entry and cursor the inbox holds for the users of [`DEVICES`].
fn state(inbox: &Inbox) -> Vec<(String, Vec<crate::store::inbox::StoredEntry>, Vec<Option<Seq>>)> {
    ["bob", "carol", "dave"]
        .into_iter()
        .map(|u| {
            let cursors = DEVICES
                .iter()
                .filter(|(owner, _)| *owner == u)
                .map(|(_, d)| inbox.cursor(&user(u), &device(d)).unwrap())
                .collect();
            (u.to_owned(), inbox.read(&user(u), Seq(0), 100).unwrap(), cursors)
        })
        .collect()
}

/// The sequence numbers of `name`'s entries in sled itself, under the memtable.
fn in_sled(store: &Store, name: &str) -> Vec<u64> {
    let tree = store.db.open_tree(keys::DATA).unwrap();
    tree.scan_prefix(keys::prefix(keys::INBOX, &user(name)))
        .keys()
        .map(|k| keys::seq_of(&k.unwrap()).unwrap().0)
        .collect()
}

/// Appends one entry per body to `name`'s inbox and waits until they are durable.
async fn deliver(store: &Store, name: &str, bodies: &[&str]) {
    for body in bodies {
        store.inbox.append(None, 1, vec![chat_to(name, body)]).unwrap();
    }
    store.committer.durable().await.unwrap();
}

async fn ack(store: &Store, acks: &[(&str, &str, u64)]) {
    for (u, d, seq) in acks {
        store.inbox.set_cursor(&user(u), &device(d), Seq(*seq)).unwrap();
    }
    store.committer.durable().await.unwrap();
}

/// Entries every device acknowledged before a checkpoint are dropped from the memtable before
/// it is frozen, so sled never sees them (not even as an insert later undone); entries only
/// some devices acknowledged, unacknowledged ones and each user's newest go to sled. A crash
/// (the store dropped without a checkpoint) then replays to the same entries and cursors.
#[tokio::test]
async fn entries_acked_by_every_device_before_a_checkpoint_never_reach_sled() {
    let dir = tempfile::tempdir().unwrap();
    // Small records stay under this; the big one below makes the next round checkpoint.
    let d = Durability { checkpoint_bytes: 4096, ..durability(SyncPolicy::Always) };
    let store = open(dir.path(), d);
    let data = store.db.open_tree(keys::DATA).unwrap();
    let mut events = data.watch_prefix([keys::INBOX]);
    for (u, dev) in DEVICES {
        ack(&store, &[(u, dev, 0)]).await;
    }
    deliver(&store, "bob", &["1", "2", "3", "4"]).await;
    deliver(&store, "carol", &["1", "2", "3"]).await;
    deliver(&store, "dave", &["1", "2"]).await;
    // bob: both devices have 1, only the phone 2 and 3. carol: everything, but her newest
    // entry stays to remember the sequence. dave: nothing.
    ack(&store, &[("bob", "phone", 3), ("bob", "tablet", 1), ("carol", "phone", 3)]).await;
    assert!(journal_files(dir.path()).len() == 1 && in_sled(&store, "bob").is_empty());
    deliver(&store, "dave", &[&"x".repeat(5000)]).await;
    for _ in 0..250 {
        if journal_files(dir.path()).len() == 1 && !in_sled(&store, "dave").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_sled(&store, "bob"), [2, 3, 4]);
    assert_eq!(in_sled(&store, "carol"), [3]);
    assert_eq!(in_sled(&store, "dave"), [1, 2, 3]);
    let mut seen = Vec::new();
    while let Ok(event) = events.next_timeout(Duration::from_millis(50)) {
        let key = event.key().to_vec();
        let inserted = matches!(event, sled::Event::Insert { .. });
        seen.push((
            keys::user_of(&key).unwrap().as_str().to_owned(),
            keys::seq_of(&key).unwrap().0,
            inserted,
        ));
    }
    seen.sort();
    let expected: Vec<(String, u64, bool)> =
        [("bob", 2), ("bob", 3), ("bob", 4), ("carol", 3), ("dave", 1), ("dave", 2), ("dave", 3)]
            .into_iter()
            .map(|(u, s)| (u.to_owned(), s, true))
            .collect();
    assert_eq!(seen, expected, "sled saw only inserts of the entries it keeps");
    // The merged view says the same.
    let seqs = |u: &str| -> Vec<u64> {
        store.inbox.read(&user(u), Seq(0), 100).unwrap().iter().map(|e| e.seq.0).collect()
    };
    assert_eq!((seqs("bob"), seqs("carol")), (vec![2, 3, 4], vec![3]));

    // The next generation stays in the memtable and the journal: a crash loses the memtable.
    deliver(&store, "bob", &["5", "6"]).await;
    ack(&store, &[("bob", "phone", 6), ("bob", "tablet", 5), ("dave", "phone", 2)]).await;
    store.inbox.drop_acked().unwrap();
    store.committer.durable().await.unwrap();
    let before = state(&store.inbox);
    assert_eq!(before[0].1.iter().map(|e| e.seq.0).collect::<Vec<_>>(), [6]);
    drop((store, data, events));
    let reopened = open(dir.path(), d);
    assert_eq!(state(&reopened.inbox), before);
}

/// The journal of a generation whose acknowledged entries were dropped in the memtable (their
/// puts and removals cancelled there) replays, into an empty sled, to what the memtable showed.
#[tokio::test]
async fn a_replay_of_dropped_entries_gives_what_the_memtable_showed() {
    let scratch = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(scratch.path()).open().unwrap();
    let j = Arc::new(journal::Journal::with_memtable(db.clone()));
    let inbox = Inbox::new(crate::store::table::Table::open(&j, keys::DATA).unwrap());
    for (u, d) in DEVICES {
        inbox.set_cursor(&user(u), &device(d), Seq(0)).unwrap();
    }
    for (u, n) in [("bob", 5), ("carol", 3), ("dave", 2)] {
        for i in 0..n {
            let Appended::Stored(s) = inbox.append(None, 1, vec![chat_to(u, &i.to_string())]).unwrap() else {
                panic!()
            };
            inbox.mark_durable(&s);
        }
    }
    for (u, d, seq) in [("bob", "phone", 4), ("bob", "tablet", 2), ("carol", "phone", 3)] {
        inbox.set_cursor(&user(u), &device(d), Seq(seq)).unwrap();
    }
    assert_eq!(inbox.drop_acked().unwrap(), 2 + 2);
    let before = state(&inbox);
    assert!(db.open_tree(keys::DATA).unwrap().is_empty());
    let crashed = tempfile::tempdir().unwrap();
    let jdir = crashed.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    std::fs::write(journal::file_path(&jdir, 1), j.take_buffered(Vec::new())).unwrap();
    let replayed = open(crashed.path(), durability(SyncPolicy::Always));
    assert_eq!(state(&replayed.inbox), before);
    assert_eq!(replayed.inbox.count_all(), 3 + 1 + 2);
}

/// The pruner thread drops what every device acknowledged without waiting for a checkpoint
/// (the newest entry stays), and leaves alone what only some devices acknowledged.
#[tokio::test]
async fn the_pruner_drops_acknowledged_entries_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), durability(SyncPolicy::Always));
    deliver(&store, "carol", &["1", "2", "3"]).await;
    deliver(&store, "bob", &["1", "2"]).await;
    ack(&store, &[("carol", "phone", 3), ("bob", "phone", 2), ("bob", "tablet", 0)]).await;
    let seqs = |u: &str| -> Vec<u64> {
        store.inbox.read(&user(u), Seq(0), 100).unwrap().iter().map(|e| e.seq.0).collect()
    };
    for _ in 0..40 {
        if seqs("carol") == [3] {
            break;
        }
        tokio::time::sleep(DROP_ACKED_EVERY / 2).await;
    }
    assert_eq!((seqs("carol"), seqs("bob")), (vec![3], vec![1, 2]));
    assert_eq!(journal_files(dir.path()), [1], "no checkpoint ran");
}
