use super::*;

fn batch(i: u8) -> Batch {
    let mut b = Batch::default();
    b.insert("data", vec![b'k', i], vec![i; 3]);
    b.insert("other", vec![b'o', i], Vec::new());
    b.remove("data", vec![b'x', i]);
    b
}

fn records(n: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        batch(i).encode_record(&mut out);
    }
    out
}

fn db_in(dir: &Path) -> sled::Db {
    crate::store::test_support::sled_at(&dir.join("db"))
}

fn get(db: &sled::Db, tree: &str, key: &[u8]) -> Option<Vec<u8>> {
    db.open_tree(tree).unwrap().get(key).unwrap().map(|v| v.to_vec())
}

#[test]
fn a_record_round_trips() {
    let bytes = records(3);
    let (got, tail) = read_records(&bytes);
    assert_eq!(tail, Tail::Clean);
    assert_eq!(got, vec![batch(0), batch(1), batch(2)]);
}

#[test]
fn the_frame_is_length_then_checksum_then_payload() {
    let mut b = Batch::default();
    b.remove("t", b"k".to_vec());
    let mut out = Vec::new();
    b.encode_record(&mut out);
    let payload = [OP_REMOVE, 1, b't', 1, 0, 0, 0, b'k'];
    assert_eq!(&out[..4], &(payload.len() as u32).to_le_bytes());
    assert_eq!(&out[4..8], &crc32c(&payload).to_le_bytes());
    assert_eq!(&out[8..], &payload);
}

#[test]
fn every_torn_tail_is_ignored_after_the_whole_records() {
    let bytes = records(2);
    let first = {
        let mut one = Vec::new();
        batch(0).encode_record(&mut one);
        one.len()
    };
    for cut in first + 1..bytes.len() {
        let (got, tail) = read_records(&bytes[..cut]);
        assert_eq!(got, vec![batch(0)], "cut at {cut}");
        assert_eq!(tail, Tail::Bad(first), "cut at {cut}");
    }
}

#[test]
fn a_flipped_bit_fails_the_checksum() {
    let mut bytes = records(2);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let (got, tail) = read_records(&bytes);
    assert_eq!(got.len(), 1);
    assert!(matches!(tail, Tail::Bad(_)));
}

#[test]
fn undecodable_payloads_are_exact_errors() {
    for payload in [
        &[9u8][..],
        &[OP_INSERT, 5, b'a'],
        &[OP_INSERT, 1, b'a', 9, 0, 0, 0, 1],
        &[OP_REMOVE, 1, 0xff, 0, 0, 0, 0],
    ] {
        assert!(matches!(Batch::decode_payload(payload), Err(StoreError::Corrupt("journal"))), "{payload:?}");
    }
    assert_eq!(Batch::decode_payload(&[]).unwrap(), Batch::default());
}

#[test]
fn commit_applies_in_memory_and_buffers_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let j = Journal::new(db.clone());
    j.commit(batch(7)).unwrap();
    assert_eq!(get(&db, "data", &[b'k', 7]), Some(vec![7; 3]));
    let bytes = j.take_buffered(Vec::new());
    assert_eq!(read_records(&bytes), (vec![batch(7)], Tail::Clean));
    assert!(!j.has_buffered());
    j.restore_buffered(bytes.clone());
    j.commit(batch(8)).unwrap();
    let again = j.take_buffered(Vec::new());
    assert_eq!(read_records(&again).0, vec![batch(7), batch(8)]);
}

#[test]
fn with_a_memtable_sled_sees_commits_only_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let j = Journal::with_memtable(db.clone());
    j.commit(batch(1)).unwrap();
    assert_eq!(get(&db, "data", &[b'k', 1]), None);
    let frozen = j.freeze();
    // Written after the freeze: stays in the memtable, out of this checkpoint.
    j.commit(batch(2)).unwrap();
    j.checkpoint(frozen.as_deref()).unwrap();
    assert_eq!(get(&db, "data", &[b'k', 1]), Some(vec![1; 3]));
    assert_eq!(get(&db, "data", &[b'k', 2]), None);
    let m = j.memtable().unwrap();
    assert_eq!(m.lookup("data", &[b'k', 1]), crate::store::memtable::Lookup::Unchanged);
    assert_eq!(m.active_len(), 3);
    let both = read_records(&j.take_buffered(Vec::new())).0;
    assert_eq!(both, vec![batch(1), batch(2)]);
}

#[test]
fn a_checkpoint_of_thousands_of_keys_writes_every_key_and_every_removal() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let stale = db.open_tree("data").unwrap();
    stale.insert(b"gone", b"old".as_slice()).unwrap();
    let j = Journal::with_memtable(db.clone());
    let n = 2_055;
    let mut b = Batch::default();
    for i in 0..n as u32 {
        b.insert("data", i.to_be_bytes().to_vec(), vec![1]);
    }
    b.remove("data", b"gone".to_vec());
    j.commit(b).unwrap();
    j.checkpoint(j.freeze().as_deref()).unwrap();
    assert_eq!(stale.len(), n);
    assert_eq!(get(&db, "data", b"gone"), None);
    assert_eq!(get(&db, "data", &(n as u32 - 1).to_be_bytes()), Some(vec![1]));
}

#[test]
fn recovery_replays_every_file_in_order_then_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let mut first = Vec::new();
    let mut set = Batch::default();
    set.insert("data", b"k".to_vec(), b"old".to_vec());
    set.encode_record(&mut first);
    std::fs::write(file_path(&jdir, 4), &first).unwrap();
    let mut second = Vec::new();
    let mut later = Batch::default();
    later.insert("data", b"k".to_vec(), b"new".to_vec());
    later.remove("data", b"gone".to_vec());
    later.encode_record(&mut second);
    std::fs::write(file_path(&jdir, 5), &second).unwrap();
    let db = db_in(dir.path());
    db.open_tree("data").unwrap().insert("gone", "x").unwrap();
    assert_eq!(recover(&db, &jdir).unwrap(), (6, 2));
    assert_eq!(get(&db, "data", b"k"), Some(b"new".to_vec()));
    assert_eq!(get(&db, "data", b"gone"), None);
    assert!(files(&jdir).unwrap().is_empty());
    // Nothing left: the next start-up begins at file 1 again.
    assert_eq!(recover(&db, &jdir).unwrap(), (1, 0));
}

#[test]
fn replaying_twice_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let bytes = records(5);
    let db = db_in(dir.path());
    std::fs::write(file_path(&jdir, 1), &bytes).unwrap();
    recover(&db, &jdir).unwrap();
    let once: Vec<_> = db.open_tree("data").unwrap().iter().map(|r| r.unwrap()).collect();
    // A crash after the replay's flush but before the delete replays the same file again.
    std::fs::write(file_path(&jdir, 1), &bytes).unwrap();
    recover(&db, &jdir).unwrap();
    let twice: Vec<_> = db.open_tree("data").unwrap().iter().map(|r| r.unwrap()).collect();
    assert_eq!(once, twice);
    assert_eq!(once.len(), 5);
}

#[test]
fn a_torn_last_file_is_replayed_up_to_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    std::fs::write(file_path(&jdir, 1), records(2)).unwrap();
    let bytes = records(3);
    std::fs::write(file_path(&jdir, 2), &bytes[..bytes.len() - 2]).unwrap();
    let db = db_in(dir.path());
    assert_eq!(recover(&db, &jdir).unwrap(), (3, 4));
    assert_eq!(get(&db, "data", &[b'k', 1]), Some(vec![1; 3]));
    assert_eq!(get(&db, "data", &[b'k', 2]), None);
}

#[test]
fn corruption_inside_an_older_file_is_an_error_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let mut bytes = records(3);
    bytes[10] ^= 0x40;
    std::fs::write(file_path(&jdir, 1), &bytes).unwrap();
    std::fs::write(file_path(&jdir, 2), records(1)).unwrap();
    let db = db_in(dir.path());
    assert!(matches!(recover(&db, &jdir), Err(StoreError::Corrupt("journal"))));
    assert_eq!(files(&jdir).unwrap().len(), 2);
}

#[test]
fn other_files_in_the_directory_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    std::fs::write(dir.path().join("x.wal"), "x").unwrap();
    assert!(files(dir.path()).unwrap().is_empty());
}

#[test]
fn a_failed_append_leaves_no_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = ActiveFile::create(dir.path(), 1).unwrap();
    f.append(&records(1)).unwrap();
    let len = f.len;
    // A read-only handle makes the next write fail.
    f.file = File::open(file_path(dir.path(), 1)).unwrap();
    assert!(f.append(&records(2)).is_err());
    assert_eq!(f.len, len);
    assert_eq!(std::fs::metadata(file_path(dir.path(), 1)).unwrap().len(), len);
}
