//! Rosters (RFC 6121 §2) with versions (§2.6), and the subscription state of every contact.

use prost::Message;
use tern_schemas::v1::{self, roster_item::Sub};

use super::journal::Batch;
use super::table::Table;
use super::{keys, StoreError};
use crate::core::subscription::SubState;
use crate::ids::UserName;

/// What is stored per (user, contact).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContactRecord {
    /// Display name the user gave.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Roster groups.
    #[prost(string, repeated, tag = "2")]
    pub groups: Vec<String>,
    /// Subscription flags (RFC 6121 Appendix A.1).
    #[prost(bool, tag = "3")]
    pub to: bool,
    #[prost(bool, tag = "4")]
    pub from: bool,
    #[prost(bool, tag = "5")]
    pub pending_out: bool,
    #[prost(bool, tag = "6")]
    pub pending_in: bool,
    /// On the roster. A contact that only asked to subscribe is not (RFC 6121 §3.1.3).
    #[prost(bool, tag = "7")]
    pub listed: bool,
    /// Roster version of the last visible change; a tombstone keeps its removal version.
    #[prost(uint64, tag = "8")]
    pub ver: u64,
}

impl ContactRecord {
    /// The subscription flags.
    pub fn state(&self) -> SubState {
        SubState { to: self.to, from: self.from, pending_out: self.pending_out, pending_in: self.pending_in }
    }
    /// Replaces the subscription flags.
    pub fn set_state(&mut self, s: SubState) {
        (self.to, self.from, self.pending_out, self.pending_in) = (s.to, s.from, s.pending_out, s.pending_in);
    }
    /// The item as the phone sees it.
    pub fn to_item(&self, jid: &str) -> v1::RosterItem {
        let sub = match (self.listed, self.to, self.from) {
            (false, _, _) => Sub::Remove,
            (true, true, true) => Sub::Both,
            (true, true, false) => Sub::To,
            (true, false, true) => Sub::From,
            (true, false, false) => Sub::None,
        };
        v1::RosterItem {
            jid: jid.to_owned(),
            name: if self.listed { self.name.clone() } else { String::new() },
            groups: if self.listed { self.groups.clone() } else { Vec::new() },
            sub: sub as i32,
            ask: self.listed && self.pending_out,
        }
    }
}

/// Rosters over the `data` tree.
#[derive(Clone)]
pub struct Rosters {
    tree: Table,
}

impl Rosters {
    /// Wraps the `data` table.
    pub fn new(tree: Table) -> Rosters {
        Rosters { tree }
    }

    /// The record of `contact` (a bare JID string) in `user`'s roster.
    pub fn get(&self, user: &UserName, contact: &str) -> Result<Option<ContactRecord>, StoreError> {
        match self.tree.get(&keys::key(keys::ROSTER, user, contact.as_bytes()))? {
            None => Ok(None),
            Some(v) => ContactRecord::decode(&*v).map(Some).map_err(|_| StoreError::Corrupt("roster")),
        }
    }

    /// The current roster version of `user`.
    pub fn version(&self, user: &UserName) -> Result<u64, StoreError> {
        match self.tree.get(&keys::prefix(keys::ROSTER_VER, user))? {
            None => Ok(0),
            Some(v) => {
                Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("roster ver"))?))
            }
        }
    }

    /// Stores `record`; when `visible`, it gets the next roster version, which is returned.
    /// Callers serialise writes per user (the hub holds the roster lock).
    pub fn put(
        &self,
        user: &UserName,
        contact: &str,
        mut record: ContactRecord,
        visible: bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut batch = Batch::default();
        let ver = if visible {
            let v = self.version(user)? + 1;
            record.ver = v;
            batch.insert(keys::DATA, keys::prefix(keys::ROSTER_VER, user), v.to_be_bytes());
            Some(v)
        } else {
            None
        };
        batch.insert(keys::DATA, keys::key(keys::ROSTER, user, contact.as_bytes()), record.encode_to_vec());
        self.tree.commit(batch)?;
        Ok(ver)
    }

    /// Every (contact, record) of `user`, tombstones included.
    pub fn all(&self, user: &UserName) -> Result<Vec<(String, ContactRecord)>, StoreError> {
        let prefix = keys::prefix(keys::ROSTER, user);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let jid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((jid, ContactRecord::decode(&*v).map_err(|_| StoreError::Corrupt("roster"))?));
        }
        Ok(out)
    }

    /// The roster answer for a device that has version `known` (RFC 6121 §2.6.3).
    pub fn answer(&self, user: &UserName, known: u64) -> Result<v1::Roster, StoreError> {
        let ver = self.version(user)?;
        let all = self.all(user)?;
        if known > 0 && known <= ver {
            let items = all.iter().filter(|(_, r)| r.ver > known).map(|(j, r)| r.to_item(j)).collect();
            return Ok(v1::Roster { ver, items, full: false });
        }
        let items = all.iter().filter(|(_, r)| r.listed).map(|(j, r)| r.to_item(j)).collect();
        Ok(v1::Roster { ver, items, full: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::Journal;
    use std::sync::Arc;

    #[test]
    fn versions_give_deltas_with_removals() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let r = Rosters::new(Table::open(&Arc::new(Journal::new(db.clone())), keys::DATA).unwrap());
        let u = UserName::parse("alice").unwrap();
        let listed = ContactRecord { listed: true, name: "Bob".into(), ..Default::default() };
        assert_eq!(r.put(&u, "bob@x", listed.clone(), true).unwrap(), Some(1));
        assert_eq!(r.put(&u, "carol@x", listed.clone(), true).unwrap(), Some(2));
        let full = r.answer(&u, 0).unwrap();
        assert!(full.full);
        assert_eq!(full.items.len(), 2);
        r.put(&u, "bob@x", ContactRecord { listed: false, ..Default::default() }, true).unwrap();
        let delta = r.answer(&u, 2).unwrap();
        assert!(!delta.full);
        assert_eq!(delta.ver, 3);
        assert_eq!(delta.items.len(), 1);
        assert_eq!(delta.items[0].sub, Sub::Remove as i32);
        let none = r.answer(&u, 3).unwrap();
        assert!(none.items.is_empty() && !none.full);
        // A version from the future (another server, a wiped store) gets the full roster.
        assert!(r.answer(&u, 99).unwrap().full);
    }

    #[test]
    fn pending_in_alone_is_not_on_the_roster() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let r = Rosters::new(Table::open(&Arc::new(Journal::new(db.clone())), keys::DATA).unwrap());
        let u = UserName::parse("alice").unwrap();
        r.put(&u, "eve@x", ContactRecord { pending_in: true, ..Default::default() }, false).unwrap();
        assert!(r.answer(&u, 0).unwrap().items.is_empty());
    }
}
