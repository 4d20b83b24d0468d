//! The durable inbox: per-user sequenced entries, per-device cursors, dedupe of resends, retention.
//!
//! Every downward envelope worth keeping gets the next sequence number of its user and is written
//! before anyone is told about it. A session only ever reads entries up to the user's *durable*
//! mark, which moves after the group commit that covered them, so a device can never acknowledge
//! an entry that a crash could take back.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

use bytes::Bytes;
use prost::Message;
use tern_schemas::v1;

use super::dedupe_runs::{Inserted, Runs};
use super::journal::Batch;
use super::table::Table;
use super::{keys, StoreError};
use crate::ids::{DeviceId, MsgId, Seq, UserName};

use keys::LAST_SEQ;

/// One envelope to store for one user.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Whose inbox.
    pub user: UserName,
    /// The device of that same user that caused it, which does not need its own copy.
    pub origin: Option<DeviceId>,
    /// The envelope; its `seq` is filled in here.
    pub down: v1::Down,
}

/// A stored entry, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// Its position.
    pub seq: Seq,
    /// The device it came from, if it is a copy of that device's own envelope.
    pub origin: Option<String>,
    /// When it was stored, ms since the epoch.
    pub ts_ms: u64,
    /// The encoded `Down`, `seq` included, ready to publish.
    pub down: Bytes,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored at these positions (not yet durable).
    Stored(Vec<(UserName, Seq)>),
    /// The (sender, id) pair was seen before: nothing stored.
    Duplicate,
}

/// Counts from one retention pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Entries removed.
    pub entries: u64,
    /// Dedupe records removed.
    pub dedupe: u64,
}

/// Retention rules, from config.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Most entries per user.
    pub max_entries: u64,
    /// Oldest entry, ms.
    pub max_age_ms: u64,
    /// Oldest dedupe record, ms.
    pub dedupe_ms: u64,
}

#[derive(Default, Clone, Copy)]
struct Marks {
    last: u64,
    durable: u64,
}

/// The inbox over the `data` tree.
pub struct Inbox {
    tree: Table,
    /// Highest entry per user appended since the last flush began.
    pending: Mutex<HashMap<UserName, Seq>>,
    // One lock for all appends: the critical section is a few microseconds of in-memory work
    // plus one journal commit, and a single lock keeps seq order equal to journal order across
    // users.
    marks: Mutex<HashMap<UserName, Marks>>,
    /// The highest entry made durable of each user that got one since start-up: what
    /// [`Inbox::drop_acked`] keeps, without the append lock.
    durable_seen: Mutex<HashMap<UserName, Seq>>,
    /// Users with a cursor moved since the last [`Inbox::drop_acked`]: only a moved cursor can
    /// make more entries acknowledged by every device.
    acked: Mutex<HashSet<UserName>>,
}

impl Inbox {
    /// Wraps the `data` table.
    pub fn new(tree: Table) -> Inbox {
        Inbox {
            tree,
            pending: Mutex::new(HashMap::new()),
            marks: Mutex::new(HashMap::new()),
            durable_seen: Mutex::new(HashMap::new()),
            acked: Mutex::new(HashSet::new()),
        }
    }

    fn load_marks(&self, user: &UserName) -> Result<Marks, StoreError> {
        let recorded = match self.tree.get(&keys::prefix(LAST_SEQ, user))? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("inbox seq"))?)
            }
            None => 0,
        };
        // The newest entry is never pruned, so the highest key is the last number handed out
        // that anyone could have seen (an entry lost before its flush was never readable).
        let newest = match self.tree.last_with_prefix(&keys::prefix(keys::INBOX, user))? {
            Some((k, _)) => keys::seq_of(&k).ok_or(StoreError::Corrupt("inbox key"))?.0,
            None => 0,
        };
        let last = recorded.max(newest);
        // Everything that survived a restart is on disk, hence durable.
        Ok(Marks { last, durable: last })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, Marks>> {
        // A panic while holding this lock leaves only in-memory marks behind, which are
        // re-read from disk on demand; recovering the guard is safe.
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `deliveries` atomically, with a dedupe record for `dedupe` (sender, sending
    /// device, message id) if given. The device is part of the key because two devices of one
    /// user pick their ids independently.
    pub fn append(
        &self,
        dedupe: Option<(&UserName, &DeviceId, &MsgId)>,
        now_ms: u64,
        deliveries: Vec<Delivery>,
    ) -> Result<Appended, StoreError> {
        let mut marks = self.lock();
        let mut batch = Batch::default();
        if let Some((sender, device, id)) = dedupe {
            if self.seen_before(sender, device, id, now_ms, &mut batch)? {
                return Ok(Appended::Duplicate);
            }
        }
        let mut stored = Vec::with_capacity(deliveries.len());
        let mut bumped: Vec<(UserName, Marks)> = Vec::new();
        for mut d in deliveries {
            let mut m = match bumped.iter().find(|(u, _)| *u == d.user) {
                Some((_, m)) => *m,
                None => match marks.get(&d.user) {
                    Some(m) => *m,
                    None => self.load_marks(&d.user)?,
                },
            };
            m.last += 1;
            d.down.seq = m.last;
            let entry = encode_entry(now_ms, d.origin.as_ref(), &d.down);
            // A number above every entry of the user: nothing holds this key, so the memtable
            // may forget it if it is pruned before its checkpoint (see `drop_acked`).
            batch.create(keys::DATA, keys::inbox(&d.user, Seq(m.last)), entry);
            if m.last == 1 {
                // Marks the user as having an inbox (retention walks these keys); the number
                // itself comes from the newest entry, which saves a write per message.
                batch.insert(keys::DATA, keys::prefix(LAST_SEQ, &d.user), m.last.to_be_bytes());
            }
            stored.push((d.user.clone(), Seq(m.last)));
            match bumped.iter_mut().find(|(u, _)| *u == d.user) {
                Some(slot) => slot.1 = m,
                None => bumped.push((d.user, m)),
            }
        }
        self.tree.commit(batch)?;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (user, m) in &bumped {
                pending.insert(user.clone(), Seq(m.last));
            }
        }
        for (user, m) in bumped {
            marks.insert(user, m);
        }
        metrics::gauge!("tern_inbox_depth").increment(stored.len() as f64);
        Ok(Appended::Stored(stored))
    }

    /// True if `device` of `sender` sent `id` within the dedupe window. Otherwise the write
    /// that remembers it goes into `batch`: a numeric id into the device's runs, or, if it
    /// does not fit there or is not numeric, a record of its own.
    fn seen_before(
        &self,
        sender: &UserName,
        device: &DeviceId,
        id: &MsgId,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<bool, StoreError> {
        let own_key = || {
            let rest = [device.as_str().as_bytes(), b"\0", id.as_str().as_bytes()].concat();
            keys::key(keys::DEDUPE, sender, &rest)
        };
        let Some(n) = tern_schemas::num_id::parse(id.as_str()) else {
            let key = own_key();
            if self.tree.contains_key(&key)? {
                return Ok(true);
            }
            batch.insert(keys::DATA, key, now_ms.to_be_bytes());
            return Ok(false);
        };
        let runs_key = keys::key(keys::DEDUPE_RUNS, sender, device.as_str().as_bytes());
        let mut runs = match self.tree.get(&runs_key)? {
            Some(v) => Runs::decode(&v).ok_or(StoreError::Corrupt("dedupe runs"))?,
            // The device's first runs, or its first since retention dropped them all: any
            // per-id records it has are older than they are.
            None => Runs::new(self.has_own_records(&runs_key)?),
        };
        if runs.contains(n) || (runs.singles() && self.tree.contains_key(&own_key())?) {
            return Ok(true);
        }
        match runs.insert(n, now_ms) {
            Inserted::Duplicate => return Ok(true),
            Inserted::Added => {}
            Inserted::Full => {
                batch.insert(keys::DATA, own_key(), now_ms.to_be_bytes());
                if runs.singles() {
                    return Ok(false);
                }
                runs.mark_singles();
            }
        }
        batch.insert(keys::DATA, runs_key, runs.encode());
        Ok(false)
    }

    /// True if some id of the device whose runs are under `runs_key` has a dedupe record of its
    /// own (`m user \0 device \0 …` beside `d user \0 device`).
    fn has_own_records(&self, runs_key: &[u8]) -> Result<bool, StoreError> {
        let mut prefix = Vec::with_capacity(runs_key.len() + 1);
        prefix.push(keys::DEDUPE);
        prefix.extend_from_slice(runs_key.get(1..).unwrap_or_default());
        prefix.push(0);
        Ok(self.tree.scan_prefix(&prefix).next().transpose()?.is_some())
    }

    /// True when entries wait for a flush.
    pub fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Takes the entries appended so far; the caller flushes, then marks them durable.
    pub fn take_pending(&self) -> Vec<(UserName, Seq)> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).drain().collect()
    }

    /// Puts back entries whose flush failed.
    pub fn restore_pending(&self, stored: Vec<(UserName, Seq)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (user, seq) in stored {
            let slot = pending.entry(user).or_insert(seq);
            *slot = (*slot).max(seq);
        }
    }

    /// Moves the durable marks after a commit that covered `stored`.
    pub fn mark_durable(&self, stored: &[(UserName, Seq)]) {
        {
            let mut marks = self.lock();
            for (user, seq) in stored {
                if let Some(m) = marks.get_mut(user) {
                    m.durable = m.durable.max(seq.0);
                }
            }
        }
        let mut seen = self.durable_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (user, seq) in stored {
            let slot = seen.entry(user.clone()).or_insert(*seq);
            *slot = (*slot).max(*seq);
        }
    }

    /// The highest entry of `user` that is on disk.
    pub fn durable(&self, user: &UserName) -> Result<Seq, StoreError> {
        let mut marks = self.lock();
        if let Some(m) = marks.get(user) {
            return Ok(Seq(m.durable));
        }
        let m = self.load_marks(user)?;
        marks.insert(user.clone(), m);
        Ok(Seq(m.durable))
    }

    /// Up to `limit` durable entries of `user` after `after`, in order.
    pub fn read(&self, user: &UserName, after: Seq, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        let upto = self.durable(user)?;
        if after >= upto {
            return Ok(Vec::new());
        }
        let from = keys::inbox(user, after.next());
        let to = keys::inbox(user, upto.next());
        // At most one entry per sequence number in the range (fewer once pruned).
        let mut out = Vec::with_capacity(usize::try_from(upto.0 - after.0).unwrap_or(limit).min(limit));
        for item in self.tree.range((Bound::Included(from), Bound::Excluded(to))).take(limit) {
            let (k, v) = item?;
            let seq = keys::seq_of(&k).ok_or(StoreError::Corrupt("inbox key"))?;
            out.push(decode_entry(seq, &v)?);
        }
        Ok(out)
    }

    /// The last entry `device` of `user` acknowledged.
    pub fn cursor(&self, user: &UserName, device: &DeviceId) -> Result<Option<Seq>, StoreError> {
        let key = keys::key(keys::CURSOR, user, device.as_str().as_bytes());
        match self.tree.get(&key)? {
            None => Ok(None),
            Some(v) => Ok(Some(Seq(u64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt("cursor"))?,
            )))),
        }
    }

    /// Records that `device` acknowledged up to `seq`. Journaled (so that it stays behind an
    /// account purge on replay) but nobody waits for it: losing it only means a resend.
    pub fn set_cursor(&self, user: &UserName, device: &DeviceId, seq: Seq) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.insert(
            keys::DATA,
            keys::key(keys::CURSOR, user, device.as_str().as_bytes()),
            seq.0.to_be_bytes(),
        );
        self.tree.commit(batch)?;
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        if !acked.contains(user) {
            acked.insert(user.clone());
        }
        Ok(())
    }

    /// Applies retention to every user: acknowledged by all devices, over the count, or too old.
    pub fn prune(&self, now_ms: u64, rules: Retention) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let mut users: Vec<UserName> = Vec::new();
        for k in self.tree.scan_prefix(&[LAST_SEQ]).keys() {
            if let Some(u) = keys::user_of(&k?) {
                users.push(u);
            }
        }
        for user in users {
            pruned.entries += self.prune_user(&user, now_ms, rules)?;
        }
        let cutoff = now_ms.saturating_sub(rules.dedupe_ms);
        let mut batch = Batch::default();
        for item in self.tree.scan_prefix(&[keys::DEDUPE]) {
            let (k, v) = item?;
            let ts = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if ts < cutoff {
                batch.remove(keys::DATA, k);
                pruned.dedupe += 1;
            }
        }
        // Journaled like appends, so that a replay after a crash cannot bring pruned records back
        // in front of later writes.
        self.tree.commit(batch)?;
        pruned.dedupe += self.prune_runs(cutoff)?;
        metrics::gauge!("tern_inbox_depth").decrement(pruned.entries as f64);
        Ok(pruned)
    }

    /// Drops the dedupe runs whose newest id was seen before `cutoff_ms`. Holds the append
    /// lock throughout: each device's runs are read, changed and written back, as appends do.
    fn prune_runs(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let _appends = self.lock();
        let mut batch = Batch::default();
        let mut dropped = 0;
        for item in self.tree.scan_prefix(&[keys::DEDUPE_RUNS]) {
            let (k, v) = item?;
            let mut runs = Runs::decode(&v).ok_or(StoreError::Corrupt("dedupe runs"))?;
            let n = runs.prune(cutoff_ms);
            // Per-id records age out as runs do; once the last is gone the device's new ids
            // need no lookup again. Appends, which add them, wait for the lock held here.
            let unbacked = runs.singles() && !self.has_own_records(&k)?;
            if unbacked {
                runs.clear_singles();
            } else if n == 0 {
                continue;
            }
            dropped += n as u64;
            if runs.is_empty() {
                batch.remove(keys::DATA, k);
            } else {
                batch.insert(keys::DATA, k, runs.encode());
            }
        }
        self.tree.commit(batch)?;
        Ok(dropped)
    }

    /// Retention's first rule, for the users with a cursor moved since the last call only:
    /// removes their entries that every device has acknowledged, journaled as `prune` does (so
    /// that a replay cannot bring them back), and returns how many went.
    ///
    /// The store's pruner thread calls this a few times a second, and the committer just
    /// before a checkpoint freezes the memtable. An entry is usually acknowledged within
    /// milliseconds of being stored, long before its checkpoint, so its put is still in the
    /// active layer and the removal cancels it there (the key was created, see
    /// [`Batch::create`]): sled never sees the entry. Without this, every entry
    /// went into sled at its checkpoint and out again at the next retention pass. Dedupe
    /// records and cursors are left alone; the newest entry stays, as in `prune`.
    ///
    /// Commits without waiting for room in the memtable (see [`Table::commit_unthrottled`]),
    /// and never takes the append lock, which a writer waiting for room may hold.
    pub fn drop_acked(&self) -> Result<u64, StoreError> {
        let moved = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut n = 0;
        for user in moved {
            // Entries durable before start-up are left to `prune`.
            let durable = self.durable_seen.lock().unwrap_or_else(|p| p.into_inner()).get(&user).copied();
            let (Some(durable), Some(acked)) = (durable, self.acked_by_all(&user)?) else { continue };
            // Below the durable mark seen then, so below the newest entry.
            let upto = acked.min(durable.0.saturating_sub(1));
            if upto == 0 {
                continue;
            }
            let range = (
                Bound::Included(keys::prefix(keys::INBOX, &user)),
                Bound::Included(keys::inbox(&user, Seq(upto))),
            );
            let mut batch = Batch::default();
            for k in self.tree.range(range).keys() {
                batch.remove(keys::DATA, k?);
                n += 1;
            }
            self.tree.commit_unthrottled(batch)?;
        }
        metrics::gauge!("tern_inbox_depth").decrement(n as f64);
        Ok(n)
    }

    /// The highest entry every device of `user` has acknowledged; `None` without devices.
    fn acked_by_all(&self, user: &UserName) -> Result<Option<u64>, StoreError> {
        let mut acked: Option<u64> = None;
        for v in self.tree.scan_prefix(&keys::prefix(keys::CURSOR, user)).values() {
            let v = v?;
            let seq = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            acked = Some(acked.map_or(seq, |m| m.min(seq)));
        }
        Ok(acked)
    }

    fn prune_user(&self, user: &UserName, now_ms: u64, rules: Retention) -> Result<u64, StoreError> {
        let acked_by_all = self.acked_by_all(user)?;
        let last = self.durable(user)?.0;
        let keep_from_count = last.saturating_sub(rules.max_entries);
        let age_cutoff = now_ms.saturating_sub(rules.max_age_ms);
        let mut batch = Batch::default();
        let mut n = 0;
        for item in self.tree.scan_prefix(&keys::prefix(keys::INBOX, user)) {
            let (k, v) = item?;
            let seq = keys::seq_of(&k).ok_or(StoreError::Corrupt("inbox key"))?.0;
            let ts = decode_entry(Seq(seq), &v)?.ts_ms;
            let expired = seq <= acked_by_all.unwrap_or(0) || seq <= keep_from_count || ts < age_cutoff;
            // The newest entry stays: it is what remembers the last sequence number.
            if !expired || seq >= last {
                break;
            }
            batch.remove(keys::DATA, k);
            n += 1;
        }
        self.tree.commit(batch)?;
        Ok(n)
    }

    /// Number of retained entries over all users (a full scan: for start-up and tests).
    pub fn count_all(&self) -> usize {
        self.tree.scan_prefix(&[keys::INBOX]).count()
    }
}

fn encode_entry(ts_ms: u64, origin: Option<&DeviceId>, down: &v1::Down) -> Vec<u8> {
    let origin = origin.map(|d| d.as_str().as_bytes()).unwrap_or_default();
    let mut v = Vec::with_capacity(9 + origin.len() + down.encoded_len());
    v.extend_from_slice(&ts_ms.to_be_bytes());
    // Device ids are at most 64 bytes, so the length fits a byte.
    v.push(origin.len() as u8);
    v.extend_from_slice(origin);
    down.encode(&mut v).expect("a Vec grows to fit: encoding cannot run out of room");
    v
}

fn decode_entry(seq: Seq, v: &[u8]) -> Result<StoredEntry, StoreError> {
    let corrupt = || StoreError::Corrupt("inbox entry");
    let ts_ms = u64::from_be_bytes(v.get(..8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?);
    let olen = *v.get(8).ok_or_else(corrupt)? as usize;
    let origin = v.get(9..9 + olen).ok_or_else(corrupt)?;
    let origin = (olen > 0).then(|| String::from_utf8_lossy(origin).into_owned());
    let down = Bytes::copy_from_slice(v.get(9 + olen..).ok_or_else(corrupt)?);
    Ok(StoredEntry { seq, origin, ts_ms, down })
}

#[cfg(test)]
mod tests;
