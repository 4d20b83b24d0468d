//! Group commit: writers wait for one fsync that covers every write made before they asked.
//!
//! A message is acknowledged only once it is on disk, and an fsync costs milliseconds, so under
//! load one flush must serve many writers. The flusher takes every waiter queued so far, flushes
//! once, and releases them all; writes made after a flush started wait for the next one.
//!
//! The flusher, not the writers, moves the inbox's durable marks and announces them: a writer
//! whose connection vanished mid-flush must not leave an entry on disk that no session will
//! ever read. Entries nobody waits for are flushed and announced within [`IDLE_FLUSH`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::inbox::Inbox;
use super::StoreError;
use crate::ids::{Seq, UserName};

/// Longest an appended entry waits for a flush when no writer asks for one.
pub const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// Called after each flush with the users whose entries just became durable.
pub type OnDurable = Box<dyn Fn(&[(UserName, Seq)]) + Send + Sync>;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the flusher task.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
    on_durable: Arc<OnceLock<OnDurable>>,
}

impl Committer {
    /// Starts the flusher for `db`, moving `inbox`'s durable marks. Must be called inside a
    /// tokio runtime.
    pub fn spawn(db: sled::Db, inbox: Arc<Inbox>) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let on_durable: Arc<OnceLock<OnDurable>> = Arc::new(OnceLock::new());
        let announce = on_durable.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                match tokio::time::timeout(IDLE_FLUSH, rx.recv_many(&mut batch, 4096)).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) if inbox.has_pending() => {}
                    Err(_) => continue,
                }
                // Everything appended before this point is covered by the flush below.
                let pending = inbox.take_pending();
                let started = std::time::Instant::now();
                let db = db.clone();
                let result = tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                metrics::histogram!("tern_store_flush_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("tern_store_flush_batch").record(batch.len() as f64);
                if result.is_ok() {
                    inbox.mark_durable(&pending);
                    if let Some(announce) = announce.get() {
                        announce(&pending);
                    }
                } else {
                    // Not on disk: keep them pending so the next successful flush announces them.
                    inbox.restore_pending(pending);
                }
                for waiter in batch.drain(..) {
                    // A writer that gave up waiting is not an error for the others.
                    let _ = waiter.send(result.clone());
                }
            }
        });
        Committer { tx, on_durable }
    }

    /// Sets what runs after each flush (the hub's wake-ups). Only the first call takes effect.
    pub fn on_durable(&self, f: OnDurable) {
        let _ = self.on_durable.set(f);
    }

    /// Resolves once every write made before this call is on disk.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inbox::Delivery;
    use std::sync::Mutex;

    /// A writer that never waits (its connection died mid-flush) still gets its entry made
    /// durable and announced.
    #[tokio::test]
    async fn an_entry_nobody_waits_for_still_becomes_durable_and_is_announced() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let inbox = Arc::new(Inbox::new(db.open_tree("data").unwrap()));
        let committer = Committer::spawn(db, inbox.clone());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        committer.on_durable(Box::new(move |d| sink.lock().unwrap().extend_from_slice(d)));
        let bob = UserName::parse("bob").unwrap();
        let delivery = Delivery { user: bob.clone(), origin: None, down: Default::default() };
        inbox.append(None, 1, vec![delivery]).unwrap();
        assert_eq!(inbox.durable(&bob).unwrap(), Seq(0));
        tokio::time::sleep(IDLE_FLUSH * 4).await;
        assert_eq!(inbox.durable(&bob).unwrap(), Seq(1));
        assert_eq!(heard.lock().unwrap().as_slice(), &[(bob, Seq(1))]);
    }
}
