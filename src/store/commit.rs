//! Group commit: writers wait for one fsync that covers every write made before they asked.
//!
//! A message is acknowledged only once it is on disk, and an fsync costs milliseconds, so under
//! load one flush must serve many writers. The flusher takes every waiter queued so far, flushes
//! once, and releases them all; writes made after a flush started wait for the next one.

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the flusher task.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    /// Starts the flusher for `db`. Must be called inside a tokio runtime.
    pub fn spawn(db: sled::Db) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let started = std::time::Instant::now();
                let db = db.clone();
                let result = tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                metrics::histogram!("tern_store_flush_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("tern_store_flush_batch").record(batch.len() as f64);
                for waiter in batch.drain(..) {
                    // A writer that gave up waiting is not an error for the others.
                    let _ = waiter.send(result.clone());
                }
            }
        });
        Committer { tx }
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
