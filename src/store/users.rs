//! User accounts: a slow salted password hash and a token generation per user.

use prost::Message;

use super::StoreError;
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

/// The users tree, plus the meta tree that holds the token secret.
#[derive(Clone)]
pub struct Users {
    tree: sled::Tree,
    meta: sled::Tree,
}

impl Users {
    /// Wraps the `users` and `meta` trees.
    pub fn new(tree: sled::Tree, meta: sled::Tree) -> Users {
        Users { tree, meta }
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
        let record = UserRecord { phc, generation: 1 }.encode_to_vec();
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

    /// Deletes `user`; false if missing.
    pub fn remove(&self, user: &UserName) -> Result<bool, StoreError> {
        let removed = self.tree.remove(user.as_str())?.is_some();
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
