//! Rosters (RFC 6121 §2) with versions (§2.6), and the subscription state of every contact.

use prost::Message;
use tern_schemas::v1::{self, roster_item::Sub};

use super::journal::Batch;
use super::table::Table;
use super::{keys, StoreError};
use crate::core::peer_refs::PeerRefs;
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
    /// The contact's peer ref, once it has one; kept by tombstones, since a ref is never reused.
    #[prost(uint32, tag = "9")]
    pub peer_ref: u32,
    /// Roster version at which the contact was last put on the roster with `peer_ref`: a device
    /// that has this version (or later) knows the ref.
    #[prost(uint64, tag = "10")]
    pub ref_ver: u64,
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
            peer_ref: if self.listed { self.peer_ref } else { 0 },
        }
    }

    /// The ref a device that has roster version `known` can be sent instead of the JID.
    pub fn known_ref(&self, known: u64) -> Option<u32> {
        (self.listed && self.peer_ref != 0 && self.ref_ver != 0 && self.ref_ver <= known)
            .then_some(self.peer_ref)
    }
}

fn ref_key(user: &UserName, peer_ref: u32) -> Vec<u8> {
    keys::key(keys::PEER_REF, user, &peer_ref.to_be_bytes())
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
    /// A contact that goes onto the roster visibly gets its peer ref here (a new one the first
    /// time), written in the same batch, so the push that lists it can carry the ref.
    /// Callers serialise writes per user (the hub holds the roster lock).
    pub fn put(
        &self,
        user: &UserName,
        contact: &str,
        record: &mut ContactRecord,
        visible: bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut batch = Batch::default();
        let ver = if visible {
            let v = self.version(user)? + 1;
            record.ver = v;
            batch.insert(keys::DATA, keys::prefix(keys::ROSTER_VER, user), v.to_be_bytes());
            if record.listed {
                let was_listed = self.get(user, contact)?.is_some_and(|r| r.listed && r.ref_ver != 0);
                if record.peer_ref == 0 {
                    record.peer_ref = self.next_ref(user, &mut batch)?;
                    batch.insert(keys::DATA, ref_key(user, record.peer_ref), contact.as_bytes());
                }
                if !was_listed || record.ref_ver == 0 {
                    record.ref_ver = v;
                }
            }
            Some(v)
        } else {
            None
        };
        batch.insert(keys::DATA, keys::key(keys::ROSTER, user, contact.as_bytes()), record.encode_to_vec());
        self.tree.commit(batch)?;
        Ok(ver)
    }

    fn next_ref(&self, user: &UserName, batch: &mut Batch) -> Result<u32, StoreError> {
        let key = keys::prefix(keys::LAST_PEER_REF, user);
        let last = match self.tree.get(&key)? {
            None => 0,
            Some(v) => {
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("peer ref"))?)
            }
        };
        let next = last.checked_add(1).ok_or(StoreError::Corrupt("peer refs exhausted"))?;
        batch.insert(keys::DATA, key, next.to_be_bytes());
        Ok(next)
    }

    /// The bare JID that `peer_ref` stands for in `user`'s envelopes.
    pub fn by_ref(&self, user: &UserName, peer_ref: u32) -> Result<Option<String>, StoreError> {
        match self.tree.get(&ref_key(user, peer_ref))? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec()).map(Some).map_err(|_| StoreError::Corrupt("peer ref")),
        }
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

    /// The peer refs of a device that has roster version `known`: a version from the future
    /// (another server, a wiped store) counts as knowing none.
    pub fn peer_refs(&self, user: &UserName, known: u64) -> Result<PeerRefs, StoreError> {
        let known = if known <= self.version(user)? { known } else { 0 };
        let with_refs = self.all(user)?.into_iter().filter(|(_, r)| r.peer_ref != 0);
        Ok(PeerRefs::new(with_refs.map(|(jid, r)| {
            let knows = r.known_ref(known).is_some();
            (jid, r.peer_ref, knows)
        })))
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
        assert_eq!(r.put(&u, "bob@x", &mut listed.clone(), true).unwrap(), Some(1));
        assert_eq!(r.put(&u, "carol@x", &mut listed.clone(), true).unwrap(), Some(2));
        let full = r.answer(&u, 0).unwrap();
        assert!(full.full);
        assert_eq!(full.items.len(), 2);
        r.put(&u, "bob@x", &mut ContactRecord { listed: false, ..Default::default() }, true).unwrap();
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
        r.put(&u, "eve@x", &mut ContactRecord { pending_in: true, ..Default::default() }, false).unwrap();
        assert!(r.answer(&u, 0).unwrap().items.is_empty());
    }

    #[test]
    fn peer_refs_are_assigned_once_and_never_reused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let r = Rosters::new(Table::open(&Arc::new(Journal::new(db.clone())), keys::DATA).unwrap());
        let u = UserName::parse("alice").unwrap();
        // Only asking to subscribe, invisibly: no ref yet.
        let mut eve = ContactRecord { pending_in: true, ..Default::default() };
        r.put(&u, "eve@x", &mut eve, false).unwrap();
        assert_eq!(eve.peer_ref, 0);
        let mut bob = ContactRecord { listed: true, ..Default::default() };
        assert_eq!(r.put(&u, "bob@x", &mut bob, true).unwrap(), Some(1));
        assert_eq!((bob.peer_ref, bob.ref_ver), (1, 1));
        assert_eq!(bob.to_item("bob@x").peer_ref, 1);
        assert_eq!(r.by_ref(&u, 1).unwrap().as_deref(), Some("bob@x"));
        assert_eq!(bob.known_ref(0), None);
        assert_eq!(bob.known_ref(1), Some(1));
        // A later edit keeps the ref and the version the device learnt it at.
        bob.name = "Bob".into();
        r.put(&u, "bob@x", &mut bob, true).unwrap();
        assert_eq!((bob.peer_ref, bob.ref_ver, bob.ver), (1, 1, 2));
        let mut carol = ContactRecord { listed: true, ..Default::default() };
        r.put(&u, "carol@x", &mut carol, true).unwrap();
        assert_eq!(carol.peer_ref, 2);
        // Removed: the tombstone keeps the ref but the item does not show it.
        let mut gone = ContactRecord { peer_ref: bob.peer_ref, ref_ver: bob.ref_ver, ..Default::default() };
        r.put(&u, "bob@x", &mut gone, true).unwrap();
        assert_eq!(gone.to_item("bob@x").peer_ref, 0);
        assert_eq!(gone.known_ref(99), None);
        assert_eq!(r.by_ref(&u, 1).unwrap().as_deref(), Some("bob@x"));
        // Back on the roster: same ref, learnt anew at this version.
        let mut back = r.get(&u, "bob@x").unwrap().unwrap();
        back.listed = true;
        let v = r.put(&u, "bob@x", &mut back, true).unwrap().unwrap();
        assert_eq!((back.peer_ref, back.ref_ver), (1, v));
        assert_eq!(back.known_ref(v - 1), None);
        // A record stored before refs existed gets one at its next visible change.
        let mut old = ContactRecord { listed: true, ver: 1, ..Default::default() };
        r.put(&u, "dave@x", &mut old, false).unwrap();
        let mut old = r.get(&u, "dave@x").unwrap().unwrap();
        assert_eq!(old.peer_ref, 0);
        r.put(&u, "dave@x", &mut old, true).unwrap();
        assert_eq!(old.peer_ref, 3);
        assert_eq!(r.by_ref(&u, 4).unwrap(), None);
        // Another user's refs are their own.
        assert_eq!(r.by_ref(&UserName::parse("bob").unwrap(), 1).unwrap(), None);
    }
}
