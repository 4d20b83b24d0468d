//! Everything tern keeps on disk, in one sled database: users, the inbox, rosters, cursors.
//!
//! Inbox entries, dedupe records, cursors and rosters share one tree so that each change is a
//! single atomic `apply_batch`; keys start with a one-byte kind, then the user name, then NUL.

pub mod commit;
pub mod inbox;
pub mod keys;
pub mod rooms;
pub mod roster;
pub mod users;

use std::path::Path;
use std::sync::Arc;

pub use commit::Committer;
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
    /// Group commit: one fsync for many writers.
    pub committer: Committer,
}

impl Store {
    /// Opens (or creates) the store under `dir`. Must be called inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = open_db(dir)?;
        let data = db.open_tree("data")?;
        let inbox = Arc::new(Inbox::new(data.clone()));
        Ok(Store {
            users: Users::open(&db)?,
            committer: Committer::spawn(db.clone(), inbox.clone()),
            inbox,
            rosters: Rosters::new(data),
            rooms: Rooms::new(db.open_tree("rooms")?),
            db,
        })
    }
}

/// Opens only the database, for CLI commands that run without the daemon.
pub fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    Ok(sled::Config::new().path(dir.join("db")).open()?)
}
