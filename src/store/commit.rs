//! Group commit: writers wait for one journal write (and sync) that covers every write made
//! before they asked.
//!
//! A message is acknowledged only once it is durable, and a sync costs milliseconds, so under
//! load one write must serve many writers. The committer thread takes every waiter queued so
//! far, writes all buffered journal records with one `write(2)`, syncs as [`SyncPolicy`] says,
//! and releases them all; writes made after that started wait for the next round. sled itself
//! is written and flushed only at checkpoints, off this path (see `memtable.rs`).
//!
//! The committer, not the writers, moves the inbox's durable marks and announces them: a writer
//! whose connection vanished mid-commit must not leave an entry on disk that no session will
//! ever read. Entries nobody waits for are committed and announced within [`IDLE_FLUSH`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::inbox::Inbox;
use super::journal::{self, ActiveFile, Journal};
use super::memtable::Layer;
use super::StoreError;
use crate::config::SyncPolicy;
use crate::ids::{Seq, UserName};

/// Longest an appended entry waits for a commit when no writer asks for one.
pub const IDLE_FLUSH: Duration = Duration::from_millis(100);
/// A journal file over this size is checkpointed.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// A journal file with anything in it is checkpointed at least this often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// How often the pruner removes the entries every device has acknowledged.
pub const DROP_ACKED_EVERY: Duration = Duration::from_millis(250);

/// Called after each commit with the users whose entries just became durable.
pub type OnDurable = Box<dyn Fn(&[(UserName, Seq)]) + Send + Sync>;

type Waiter = oneshot::Sender<Result<(), String>>;

/// When an acknowledged write is durable, from `[inbox] sync` and `sync_interval_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Durability {
    /// fdatasync before release, or after the write only.
    pub policy: SyncPolicy,
    /// With [`SyncPolicy::Write`], the longest a written record waits for its fdatasync.
    pub interval: Duration,
    /// A journal file over this many bytes is checkpointed.
    pub checkpoint_bytes: u64,
}

impl Durability {
    /// The policy from config, with the default checkpoint size.
    pub fn new(policy: SyncPolicy, interval: Duration) -> Durability {
        Durability { policy, interval, checkpoint_bytes: CHECKPOINT_BYTES }
    }
}

/// Handle to the committer thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Waiter>,
    on_durable: Arc<OnceLock<OnDurable>>,
}

impl Committer {
    /// Starts the committer thread writing `journal` to `dir` (starting with file `index`) and
    /// moving `inbox`'s durable marks.
    pub fn spawn(
        journal: Arc<Journal>,
        dir: PathBuf,
        index: u64,
        inbox: Arc<Inbox>,
        durability: Durability,
    ) -> Result<Committer, StoreError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let on_durable: Arc<OnceLock<OnDurable>> = Arc::new(OnceLock::new());
        let file = ActiveFile::create(&dir, index)?;
        let syncer = (durability.policy == SyncPolicy::Write)
            .then(|| Syncer::spawn(&file, durability.interval))
            .transpose()?;
        let run = Run {
            journal,
            dir,
            inbox,
            policy: durability.policy,
            checkpoint_bytes: durability.checkpoint_bytes,
            announce: on_durable.clone(),
            file,
            opened: Instant::now(),
            syncer,
            checkpointing: Arc::new(AtomicBool::new(false)),
            spare: Vec::new(),
        };
        let pruned = Arc::downgrade(&run.inbox);
        std::thread::Builder::new()
            .name("tern-journal".into())
            .spawn(move || run.run(rx))
            .map_err(journal::io)?;
        std::thread::Builder::new()
            .name("tern-prune".into())
            .spawn(move || prune_acked(pruned))
            .map_err(journal::io)?;
        Ok(Committer { tx, on_durable })
    }

    /// Sets what runs after each commit (the hub's wake-ups). Only the first call takes effect.
    pub fn on_durable(&self, f: OnDurable) {
        let _ = self.on_durable.set(f);
    }

    /// Resolves once every write made before this call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// The committer thread's state.
struct Run {
    journal: Arc<Journal>,
    dir: PathBuf,
    inbox: Arc<Inbox>,
    policy: SyncPolicy,
    checkpoint_bytes: u64,
    announce: Arc<OnceLock<OnDurable>>,
    file: ActiveFile,
    opened: Instant,
    syncer: Option<Syncer>,
    checkpointing: Arc<AtomicBool>,
    /// The emptied buffer of the last write, reused for the next.
    spare: Vec<u8>,
}

impl Run {
    fn run(mut self, rx: mpsc::Receiver<Waiter>) {
        let mut waiters = Vec::new();
        loop {
            match rx.recv_timeout(IDLE_FLUSH) {
                Ok(w) => waiters.push(w),
                Err(RecvTimeoutError::Timeout) if self.inbox.has_pending() || self.journal.has_buffered() => {
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            waiters.extend(rx.try_iter());
            self.round(&mut waiters);
            self.maybe_checkpoint();
        }
        // Shutting down: whatever is buffered still goes out.
        let bytes = self.journal.take_buffered(Vec::new());
        if let Err(e) = self.file.append(&bytes).and_then(|_| self.file.file.sync_data()) {
            tracing::error!(error = %e, "journal: final write failed");
        }
    }

    /// One group commit: writes (and syncs) every buffered record, moves the durable marks of
    /// the entries it covered and releases `waiters`. False when the write failed.
    fn round(&mut self, waiters: &mut Vec<Waiter>) -> bool {
        // Everything appended before this point is in the buffer taken below.
        let pending = self.inbox.take_pending();
        let bytes = self.journal.take_buffered(std::mem::take(&mut self.spare));
        let started = Instant::now();
        let result = self.write(&bytes);
        metrics::histogram!("tern_store_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tern_store_flush_batch").record(waiters.len() as f64);
        let ok = result.is_ok();
        if ok {
            metrics::counter!("tern_journal_bytes_total").increment(bytes.len() as u64);
            self.inbox.mark_durable(&pending);
            if let Some(announce) = self.announce.get() {
                announce(&pending);
            }
            self.spare = bytes;
        } else {
            // Not durable: keep both so that the next successful commit covers them.
            self.inbox.restore_pending(pending);
            self.journal.restore_buffered(bytes);
        }
        for waiter in waiters.drain(..) {
            // A writer that gave up waiting is not an error for the others.
            let _ = waiter.send(result.clone());
        }
        ok
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if !bytes.is_empty() {
            self.file.append(bytes).map_err(|e| e.to_string())?;
        }
        match (self.policy, &self.syncer) {
            (SyncPolicy::Always, _) if !bytes.is_empty() => {
                self.file.file.sync_data().map_err(|e| e.to_string())
            }
            (SyncPolicy::Write, Some(s)) if !bytes.is_empty() => {
                s.dirty.store(true, Ordering::Release);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Rotates to a new file and lets a background thread flush sled and delete the old ones,
    /// when the file is big or old enough and no checkpoint is running.
    fn maybe_checkpoint(&mut self) {
        let due = self.file.len >= self.checkpoint_bytes
            || (self.file.len > 0 && self.opened.elapsed() >= CHECKPOINT_EVERY);
        if !due || self.checkpointing.load(Ordering::Acquire) {
            return;
        }
        // Entries every device acknowledged go now, while most of their puts are still in the
        // active layer, where each put and its removal cancel: sled never sees them. The
        // removals are written to the file about to be retired, so that no file the checkpoint
        // deletes holds a put whose removal is only in a newer one; if that write fails, the
        // checkpoint waits for a later round.
        // Most went already (see `prune_acked`); this catches the last quarter second's.
        drop_acked(&self.inbox);
        if (self.journal.has_buffered() || self.inbox.has_pending()) && !self.round(&mut Vec::new()) {
            return;
        }
        let next = match ActiveFile::create(&self.dir, self.file.index + 1) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "journal: cannot rotate");
                return;
            }
        };
        let old = std::mem::replace(&mut self.file, next);
        self.opened = Instant::now();
        if let Some(s) = &self.syncer {
            s.switch(&self.file);
        }
        // Everything in the old files was applied to the memtable before it was buffered, so
        // the layer frozen now, once in sled and flushed, makes them all redundant.
        self.checkpointing.store(true, Ordering::Release);
        let frozen = self.journal.freeze();
        let (journal, dir, flag, upto) =
            (self.journal.clone(), self.dir.clone(), self.checkpointing.clone(), old.index);
        drop(old);
        let spawned = std::thread::Builder::new().name("tern-checkpoint".into()).spawn(move || {
            let started = Instant::now();
            match checkpoint(&journal, frozen.as_deref(), &dir, upto) {
                Ok(n) => tracing::debug!(files = n, "journal checkpoint"),
                Err(e) => tracing::error!(error = %e, "journal checkpoint failed; will retry"),
            }
            metrics::histogram!("tern_store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
            flag.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.checkpointing.store(false, Ordering::Release);
        }
    }
}

/// The pruner thread: every [`DROP_ACKED_EVERY`] removes the entries every device has
/// acknowledged, until the inbox is gone. Done at the checkpoint alone, this was a pass over a
/// whole layer's entries (280k at 20k msgs/s) on the committer thread, and no commit round ran
/// for the half second it took; done here, each pass is small, runs beside the committer, and
/// still cancels nearly every entry in the active layer before sled sees it.
fn prune_acked(inbox: std::sync::Weak<Inbox>) {
    loop {
        std::thread::sleep(DROP_ACKED_EVERY);
        let Some(inbox) = inbox.upgrade() else { return };
        drop_acked(&inbox);
    }
}

fn drop_acked(inbox: &Inbox) {
    match inbox.drop_acked() {
        Ok(n) => metrics::counter!("tern_inbox_dropped_acked_total").increment(n),
        Err(e) => tracing::error!(error = %e, "dropping acknowledged entries failed"),
    }
}

/// Writes the `frozen` layer to sled and flushes it, then deletes journal files up to and
/// including `upto`.
pub fn checkpoint(
    journal: &Journal,
    frozen: Option<&Layer>,
    dir: &std::path::Path,
    upto: u64,
) -> Result<usize, StoreError> {
    journal.checkpoint(frozen)?;
    let mut n = 0;
    for (index, path) in journal::files(dir)? {
        if index <= upto {
            std::fs::remove_file(path).map_err(journal::io)?;
            n += 1;
        }
    }
    Ok(n)
}

/// With `sync = "write"`: fdatasyncs the active file in the background at least every interval.
struct Syncer {
    dirty: Arc<AtomicBool>,
    file: Arc<Mutex<std::fs::File>>,
    // Dropping this stops the thread (after a last sync).
    _stop: mpsc::Sender<()>,
}

impl Syncer {
    fn spawn(active: &ActiveFile, interval: Duration) -> Result<Syncer, StoreError> {
        let dirty = Arc::new(AtomicBool::new(false));
        let file = Arc::new(Mutex::new(active.file.try_clone().map_err(journal::io)?));
        let (stop, stopped) = mpsc::channel::<()>();
        let (d, f) = (dirty.clone(), file.clone());
        std::thread::Builder::new()
            .name("tern-journal-sync".into())
            .spawn(move || loop {
                let last = matches!(stopped.recv_timeout(interval), Err(RecvTimeoutError::Disconnected));
                if d.swap(false, Ordering::AcqRel) {
                    let started = Instant::now();
                    // The mutex only guards which file is active; a poisoned one still holds it.
                    let file = f.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = file.sync_data() {
                        d.store(true, Ordering::Release);
                        tracing::error!(error = %e, "journal: background fdatasync failed");
                    }
                    metrics::histogram!("tern_journal_sync_seconds").record(started.elapsed().as_secs_f64());
                }
                if last {
                    return;
                }
            })
            .map_err(journal::io)?;
        Ok(Syncer { dirty, file, _stop: stop })
    }

    /// Syncs the file being left behind, then syncs `next` from now on.
    fn switch(&self, next: &ActiveFile) {
        let Ok(clone) = next.file.try_clone() else {
            tracing::error!("journal: cannot share the new file with the sync thread");
            return;
        };
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, "journal: fdatasync of the rotated file failed");
        }
        *file = clone;
    }
}

#[cfg(test)]
mod tests;
