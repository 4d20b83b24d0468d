//! User accounts: a slow salted password hash and a token generation per user.

use std::sync::Arc;

use prost::Message;

use super::journal::{Batch, Journal};
use super::table::Table;
use super::{keys, StoreError};
use crate::ids::UserName;

/// What is stored for one user.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// Argon2id PHC string.
    #[prost(string, tag = "1")]
    pub phc: String,
    /// Bumped on every password change, which kills older session tokens.
    #[prost(uint64, tag = "2")]
    pub generation: u64,
}

/// The users tree, the meta tree that holds the token secret, and the data tree (to purge).
#[derive(Clone)]
pub struct Users {
    tree: sled::Tree,
    meta: sled::Tree,
    data: Table,
}

impl Users {
    /// Opens the trees of `db` that user administration needs (without the daemon: purges are
    /// made durable by the flush that follows them, the journal is never written).
    pub fn open(db: &sled::Db) -> Result<Users, StoreError> {
        Users::open_journaled(db, Arc::new(Journal::new(db.clone())))
    }

    /// Like [`Users::open`], purging through the daemon's journal so that a replay after a crash
    /// keeps earlier writes in front of the purge.
    pub fn open_journaled(db: &sled::Db, journal: Arc<Journal>) -> Result<Users, StoreError> {
        let (tree, meta, data) =
            (db.open_tree("users")?, db.open_tree("meta")?, Table::open(&journal, keys::DATA)?);
        Ok(Users { tree, meta, data })
    }

    /// The stored record of `user`, if any.
    pub fn get(&self, user: &UserName) -> Result<Option<UserRecord>, StoreError> {
        match self.tree.get(user.as_str())? {
            None => Ok(None),
            Some(bytes) => UserRecord::decode(&*bytes).map(Some).map_err(|_| StoreError::Corrupt("users")),
        }
    }

    /// True when `user` exists.
    pub fn exists(&self, user: &UserName) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(user.as_str())?)
    }

    /// Creates `user` with the given hash; false if it already exists.
    pub fn add(&self, user: &UserName, phc: String) -> Result<bool, StoreError> {
        // A random first generation: tokens of an earlier, deleted account of the same name
        // must not log into this one.
        let seed = crate::auth::token::TokenKey::generate_secret();
        let generation = u64::from_be_bytes(seed[..8].try_into().expect("a 32-byte secret has 8 bytes"));
        let record = UserRecord { phc, generation }.encode_to_vec();
        let swapped = self.tree.compare_and_swap(user.as_str(), None as Option<&[u8]>, Some(record))?;
        self.tree.flush()?;
        Ok(swapped.is_ok())
    }

    /// Replaces the password hash of `user` and bumps its token generation; false if missing.
    pub fn set_password(&self, user: &UserName, phc: String) -> Result<bool, StoreError> {
        let Some(old) = self.get(user)? else { return Ok(false) };
        let record = UserRecord { phc, generation: old.generation + 1 };
        self.tree.insert(user.as_str(), record.encode_to_vec())?;
        self.tree.flush()?;
        Ok(true)
    }

    /// Deletes `user` and everything stored for it (inbox, cursors, dedupe, roster); false if
    /// missing. A later account of the same name starts empty.
    pub fn remove(&self, user: &UserName) -> Result<bool, StoreError> {
        let removed = self.tree.remove(user.as_str())?.is_some();
        let mut batch = Batch::default();
        for kind in keys::PER_USER {
            for k in self.data.scan_prefix(&keys::prefix(kind, user)).keys() {
                batch.remove(keys::DATA, k?);
            }
        }
        self.data.commit(batch)?;
        self.tree.flush()?;
        Ok(removed)
    }

    /// All user names, sorted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        self.tree
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("users"))
            })
            .collect()
    }

    /// The secret for session tokens, created on first use.
    pub fn token_secret(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(s) = self.meta.get("token_secret")? {
            return Ok(s.to_vec());
        }
        let fresh = crate::auth::token::TokenKey::generate_secret();
        // Two racing starters keep whichever secret landed first.
        let _ = self.meta.compare_and_swap("token_secret", None as Option<&[u8]>, Some(&fresh[..]))?;
        self.meta.flush()?;
        self.meta.get("token_secret")?.map(|s| s.to_vec()).ok_or(StoreError::Corrupt("meta"))
    }
}
