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
    for _ in 0..250 {
        match Store::open(dir, d) {
            Ok(s) => return s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("the store did not reopen");
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
