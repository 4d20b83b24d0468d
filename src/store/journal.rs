//! Write-ahead journal in front of sled: an acknowledged write costs one append to a file, not a
//! sled flush.
//!
//! Every write that is acknowledged only once durable is a [`Batch`]. [`Journal::commit`]
//! applies it to the memtable (`memtable.rs`; offline, to sled in memory) and appends it, as one
//! record, to an in-memory buffer, both under one lock, so journal order is apply order. The committer (`commit.rs`) writes the
//! buffer out with one `write(2)` per group commit and syncs it as the policy says.
//!
//! Files are `journal/<index>.wal`, a sequence of records `[len u32][crc32c u32][payload]`
//! (little-endian; the checksum covers the payload). A checkpoint rotates to a new file,
//! freezes the memtable, writes the frozen layer to sled, flushes sled, then deletes the older
//! files. [`recover`] replays every file in order at
//! start-up: records are whole key/value puts and removes, so replaying one that sled already
//! holds changes nothing. A torn record can only be the tail of the last file (a crash
//! mid-write); anywhere else it is corruption and recovery refuses to go on.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::memtable::{Layer, Memtable};
use super::StoreError;
pub use crc32c::crc32c;

const HEADER: usize = 8;
const OP_INSERT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Largest record accepted on replay; a longer length field is corruption, not a big batch.
const MAX_RECORD: usize = 1 << 30;

/// One change to one named tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Insert { tree: String, key: Vec<u8>, value: Vec<u8> },
    /// Delete `key`.
    Remove { tree: String, key: Vec<u8> },
    /// Set `key`, which its writer knows holds nothing anywhere (a fresh inbox sequence
    /// number), to `value`. Journaled as an insert; the memtable may forget the key altogether
    /// when it is removed before its checkpoint (see `memtable.rs`).
    Create { tree: String, key: Vec<u8>, value: Vec<u8> },
}

/// Changes applied together and journaled as one record (sled's own `Batch` cannot be read back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// Sets `key` to `value` in `tree`.
    pub fn insert(&mut self, tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Insert { tree: tree.to_owned(), key: key.into(), value: value.into() });
    }

    /// Sets `key`, which the caller knows holds no value (none in sled, none in the memtable),
    /// to `value` in `tree`.
    pub fn create(&mut self, tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Create { tree: tree.to_owned(), key: key.into(), value: value.into() });
    }

    /// Deletes `key` from `tree`.
    pub fn remove(&mut self, tree: &str, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Remove { tree: tree.to_owned(), key: key.into() });
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Appends this batch as one framed record to `out`.
    pub fn encode_record(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        for op in &self.ops {
            let (kind, tree, key, value) = match op {
                Op::Insert { tree, key, value } | Op::Create { tree, key, value } => {
                    (OP_INSERT, tree, key, Some(value))
                }
                Op::Remove { tree, key } => (OP_REMOVE, tree, key, None),
            };
            out.push(kind);
            // Tree names are tern's own short constants.
            out.push(tree.len() as u8);
            out.extend_from_slice(tree.as_bytes());
            put_bytes(out, key);
            if let Some(value) = value {
                put_bytes(out, value);
            }
        }
        let payload = &out[start + HEADER..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32c(payload).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4..start + HEADER].copy_from_slice(&crc);
    }

    /// Decodes a record payload (what follows the header).
    pub fn decode_payload(mut p: &[u8]) -> Result<Batch, StoreError> {
        let mut batch = Batch::default();
        while let Some((&kind, rest)) = p.split_first() {
            let (&tlen, rest) = rest.split_first().ok_or(CORRUPT)?;
            let tree = rest.get(..tlen as usize).ok_or(CORRUPT)?;
            let tree = std::str::from_utf8(tree).map_err(|_| CORRUPT)?.to_owned();
            let (key, rest) = take_bytes(&rest[tlen as usize..])?;
            p = match kind {
                OP_INSERT => {
                    let (value, rest) = take_bytes(rest)?;
                    batch.ops.push(Op::Insert { tree, key: key.to_vec(), value: value.to_vec() });
                    rest
                }
                OP_REMOVE => {
                    batch.ops.push(Op::Remove { tree, key: key.to_vec() });
                    rest
                }
                _ => return Err(CORRUPT),
            };
        }
        Ok(batch)
    }
}

const CORRUPT: StoreError = StoreError::Corrupt("journal");

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are far below 4 GiB (bodies are limited to kilobytes).
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn take_bytes(p: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let len: [u8; 4] = p.get(..4).ok_or(CORRUPT)?.try_into().map_err(|_| CORRUPT)?;
    let len = u32::from_le_bytes(len) as usize;
    let b = p.get(4..4 + len).ok_or(CORRUPT)?;
    Ok((b, &p[4 + len..]))
}

/// Why reading records stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// The file ended exactly after a record.
    Clean,
    /// A record at this offset is torn or fails its checksum.
    Bad(usize),
}

/// Every whole record of `bytes`, in order, and how the file ends.
pub fn read_records(bytes: &[u8]) -> (Vec<Batch>, Tail) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else { return (out, Tail::Bad(at)) };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload = match bytes.get(at + HEADER..at + HEADER + len) {
            Some(p) if len <= MAX_RECORD && crc32c(p) == crc => p,
            _ => return (out, Tail::Bad(at)),
        };
        match Batch::decode_payload(payload) {
            Ok(b) => out.push(b),
            // A matching checksum over an undecodable payload is not a torn write either way.
            Err(_) => return (out, Tail::Bad(at)),
        }
        at += HEADER + len;
    }
    (out, Tail::Clean)
}

/// The journal files under `dir`, oldest first.
pub fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(index) = index {
            out.push((index, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The path of journal file `index`.
pub fn file_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal"))
}

/// Turns an I/O error into the store's error type.
pub fn io(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

fn apply(db: &sled::Db, trees: &mut HashMap<String, sled::Tree>, batch: &Batch) -> Result<(), StoreError> {
    let mut per_tree: Vec<(&str, sled::Batch)> = Vec::new();
    for op in &batch.ops {
        let name = match op {
            Op::Insert { tree, .. } | Op::Create { tree, .. } | Op::Remove { tree, .. } => tree.as_str(),
        };
        let slot = match per_tree.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                per_tree.push((name, sled::Batch::default()));
                per_tree.len() - 1
            }
        };
        match op {
            Op::Insert { key, value, .. } | Op::Create { key, value, .. } => {
                per_tree[slot].1.insert(key.as_slice(), value.as_slice())
            }
            Op::Remove { key, .. } => per_tree[slot].1.remove(key.as_slice()),
        }
    }
    for (name, b) in per_tree {
        let tree = match trees.get(name) {
            Some(t) => t,
            None => trees.entry(name.to_owned()).or_insert(db.open_tree(name)?),
        };
        tree.apply_batch(b)?;
    }
    Ok(())
}

/// Writes one record's changes to sled key by key: replay needs no atomicity (the files stay
/// until sled is flushed, and replaying twice ends in the same values).
fn replay(db: &sled::Db, trees: &mut HashMap<String, sled::Tree>, batch: &Batch) -> Result<(), StoreError> {
    for op in &batch.ops {
        let (name, key, value) = match op {
            Op::Insert { tree, key, value } | Op::Create { tree, key, value } => (tree, key, Some(value)),
            Op::Remove { tree, key } => (tree, key, None),
        };
        let tree = match trees.get(name.as_str()) {
            Some(t) => t,
            None => trees.entry(name.clone()).or_insert(db.open_tree(name)?),
        };
        write_unbatched(tree, key, value.map(Vec::as_slice))?;
    }
    Ok(())
}

/// One put or removal, outside any sled batch. The first `apply_batch` a process makes switches
/// sled 0.34 for good from a lock-free path to a process-wide `RwLock` that every read takes,
/// and each batch holds its write side throughout: checkpointing a layer of 100k+ keys in
/// batches stopped every dedupe lookup, and with it every append, for seconds under load. The
/// daemon's sled writes (checkpoints and replay) need no atomicity, so they never batch.
fn write_unbatched(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    match value {
        Some(v) => tree.insert(key, v)?,
        None => tree.remove(key)?,
    };
    Ok(())
}

/// Replays every journal file under `dir` into `db`, flushes sled and deletes the files.
/// Returns the index the next file should take and how many records were replayed.
pub fn recover(db: &sled::Db, dir: &Path) -> Result<(u64, usize), StoreError> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let found = files(dir)?;
    let mut trees = HashMap::new();
    let mut replayed = 0;
    for (i, (index, path)) in found.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(io)?;
        let (records, tail) = read_records(&bytes);
        if let Tail::Bad(at) = tail {
            if i + 1 < found.len() {
                tracing::error!(file = %path.display(), offset = at, "corrupt record inside an older journal file");
                return Err(CORRUPT);
            }
            tracing::warn!(file = %path.display(), offset = at, "journal ends in a torn record (a crash mid-write); ignored");
        }
        for r in &records {
            replay(db, &mut trees, r)?;
        }
        replayed += records.len();
        tracing::debug!(file = %path.display(), index, records = records.len(), "journal replayed");
    }
    if !found.is_empty() {
        db.flush()?;
        for (_, path) in &found {
            std::fs::remove_file(path).map_err(io)?;
        }
        tracing::info!(files = found.len(), records = replayed, "journal recovered");
    }
    let next = found.last().map_or(1, |(i, _)| i + 1);
    Ok((next, replayed))
}

/// The in-memory side: applies batches and buffers their records until the committer writes
/// them out.
pub struct Journal {
    db: sled::Db,
    /// Where committed changes wait for a checkpoint; without one they go straight to sled.
    memtable: Option<Memtable>,
    state: Mutex<Buffered>,
}

struct Buffered {
    bytes: Vec<u8>,
    trees: HashMap<String, sled::Tree>,
}

impl Journal {
    /// A journal that applies each batch to sled as it commits it: for offline administration,
    /// where nothing checkpoints and the caller flushes sled.
    pub fn new(db: sled::Db) -> Journal {
        Journal::build(db, None)
    }

    /// A journal that keeps committed changes in a memtable until a checkpoint (the daemon's).
    pub fn with_memtable(db: sled::Db) -> Journal {
        Journal::build(db, Some(Memtable::default()))
    }

    fn build(db: sled::Db, memtable: Option<Memtable>) -> Journal {
        Journal { db, memtable, state: Mutex::new(Buffered { bytes: Vec::new(), trees: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffered> {
        // The buffer is only ever extended by whole records after a successful apply, so a
        // panic elsewhere while holding the lock leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `batch` (to the memtable, or to sled in memory) and buffers its record, in one
    /// critical section. Durable once the committer's next write (and sync) covering it completes.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(memtable) = &self.memtable {
            memtable.wait_for_room();
        }
        self.commit_unthrottled(batch)
    }

    /// [`Journal::commit`] without waiting for room in the memtable.
    pub fn commit_unthrottled(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        let Buffered { bytes, trees } = &mut *state;
        match &self.memtable {
            Some(memtable) => {
                batch.encode_record(bytes);
                memtable.apply(batch.ops);
            }
            None => {
                apply(&self.db, trees, &batch)?;
                batch.encode_record(bytes);
            }
        }
        Ok(())
    }

    /// The memtable reads must look in first, if this journal has one.
    pub fn memtable(&self) -> Option<&Memtable> {
        self.memtable.as_ref()
    }

    /// Freezes the memtable for a checkpoint: called as the journal rotates, so that every
    /// record in the files left behind is in the frozen layer (or already in sled).
    pub fn freeze(&self) -> Option<Arc<Layer>> {
        self.memtable.as_ref().map(Memtable::freeze)
    }

    /// Writes a frozen layer to sled, one key at a time (see [`write_unbatched`]), and flushes
    /// sled; after that the journal files it covered may go.
    pub fn checkpoint(&self, frozen: Option<&Layer>) -> Result<(), StoreError> {
        if let Some(layer) = frozen {
            for (name, changes) in layer.trees() {
                let tree = self.db.open_tree(name)?;
                for (key, change) in changes {
                    write_unbatched(&tree, key, change.value.as_deref())?;
                }
            }
        }
        self.db.flush()?;
        if let (Some(memtable), Some(_)) = (&self.memtable, frozen) {
            memtable.checkpointed();
        }
        Ok(())
    }

    /// True when records wait to be written.
    pub fn has_buffered(&self) -> bool {
        !self.lock().bytes.is_empty()
    }

    /// Takes the buffered records, leaving `spare` (emptied) as the new buffer.
    pub fn take_buffered(&self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.lock().bytes, spare)
    }

    /// Puts back records whose write failed, ahead of anything buffered since.
    pub fn restore_buffered(&self, mut failed: Vec<u8>) {
        let mut state = self.lock();
        failed.extend_from_slice(&state.bytes);
        state.bytes = failed;
    }

    /// The database the journal applies to.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// The journal file being appended to.
pub struct ActiveFile {
    /// Its index.
    pub index: u64,
    /// Its open handle.
    pub file: File,
    /// Bytes written so far.
    pub len: u64,
}

impl ActiveFile {
    /// Creates journal file `index` under `dir`.
    pub fn create(dir: &Path, index: u64) -> Result<ActiveFile, StoreError> {
        let path = file_path(dir, index);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        // The new name must survive a power cut before anything relies on the file.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(ActiveFile { index, file, len })
    }

    /// Appends `bytes` with one write; on failure cuts the file back so no torn record stays.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

mod crc32c;
#[cfg(test)]
mod tests;
