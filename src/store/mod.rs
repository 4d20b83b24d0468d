//! Everything tern keeps on disk, in one sled database: users, the inbox, rosters, cursors.
//!
//! Inbox entries, dedupe records, cursors and rosters share one tree so that each change is a
//! single atomic `apply_batch`; keys start with a one-byte kind, then the user name, then NUL.
//! Writes go through the journal (`journal.rs`) and wait in its memtable (`memtable.rs`) for a
//! checkpoint to put them into sled; reads merge the two (`table.rs`).

pub mod commit;
pub mod dedupe_runs;
pub mod inbox;
pub mod journal;
pub mod keys;
pub mod memtable;
pub mod rooms;
pub mod roster;
pub mod table;
#[cfg(test)]
pub mod test_support;
pub mod users;

use std::path::Path;
use std::sync::Arc;

pub use commit::{Committer, Durability};
pub use inbox::Inbox;
pub use rooms::Rooms;
pub use roster::Rosters;
pub use users::Users;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O or corruption).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record did not decode: the data dir is damaged or from another version.
    #[error("corrupt record under {0}")]
    Corrupt(&'static str),
    /// The flusher task is gone (shutting down).
    #[error("store is shutting down")]
    Closed,
}

/// The opened database and its handles.
#[derive(Clone)]
pub struct Store {
    /// The sled database.
    pub db: sled::Db,
    /// User accounts.
    pub users: Users,
    /// Inbox, dedupe and cursors.
    pub inbox: Arc<Inbox>,
    /// Rosters and subscription states.
    pub rosters: Rosters,
    /// Group chat rooms joined on users' behalf.
    pub rooms: Rooms,
    /// Group commit: one journal write (and sync) for many writers.
    pub committer: Committer,
}

/// sled's page cache unless `[store] cache_mb` says otherwise: sled's own default, 1 GiB.
pub const DEFAULT_CACHE_MB: u64 = 1024;

impl Store {
    /// Opens (or creates) the store under `dir`, replaying the journal a crash left behind,
    /// with sled's default cache.
    pub fn open(dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        Store::open_with(dir, durability, DEFAULT_CACHE_MB)
    }

    /// [`Store::open`] with a page cache of `cache_mb` MiB for sled.
    pub fn open_with(dir: &Path, durability: Durability, cache_mb: u64) -> Result<Store, StoreError> {
        let (db, next) = open_recovered(dir, cache_mb)?;
        let journal = Arc::new(journal::Journal::with_memtable(db.clone()));
        let data = table::Table::open(&journal, keys::DATA)?;
        let inbox = Arc::new(Inbox::new(data.clone()));
        Ok(Store {
            users: Users::open_journaled(&db, journal.clone())?,
            committer: Committer::spawn(journal.clone(), journal_dir(dir), next, inbox.clone(), durability)?,
            inbox,
            rooms: Rooms::open(journal.clone())?,
            rosters: Rosters::new(data),
            db,
        })
    }
}

/// Opens only the database, for CLI commands that run without the daemon. A journal left by a
/// crash is replayed first, so that nothing done here is later overwritten by older records.
pub fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    Ok(open_recovered(dir, DEFAULT_CACHE_MB)?.0)
}

fn journal_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("journal")
}

/// Opens sled (which locks the directory), replays the journal into it, and returns the index
/// of the next journal file.
fn open_recovered(dir: &Path, cache_mb: u64) -> Result<(sled::Db, u64), StoreError> {
    std::fs::create_dir_all(dir).map_err(journal::io)?;
    let cache = cache_mb.saturating_mul(1 << 20);
    let db = sled::Config::new().path(dir.join("db")).cache_capacity(cache).open()?;
    let (next, _) = journal::recover(&db, &journal_dir(dir))?;
    Ok((db, next))
}
