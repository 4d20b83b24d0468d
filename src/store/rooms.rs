//! The group chat rooms (XEP-0045) tern stays in on each user's behalf, so it can rejoin them
//! after a restart. Its own tree, keyed `user \0 room`: rooms change rarely and need no batch
//! with the inbox.

use prost::Message;

use std::sync::Arc;

use super::journal::{Batch, Journal};
use super::table::Table;
use super::StoreError;
use crate::ids::UserName;

/// What is kept per (user, room).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomRecord {
    /// The user's nick in the room.
    #[prost(string, tag = "1")]
    pub nick: String,
    /// The device whose full JID is the occupant JID (the one that joined).
    #[prost(string, tag = "2")]
    pub device: String,
    /// The newest groupchat message stored for the user, ms since the epoch: a rejoin asks
    /// for history since then.
    #[prost(uint64, tag = "3")]
    pub last_ts: u64,
    /// The room password, needed again to rejoin.
    #[prost(string, tag = "4")]
    pub password: String,
    /// Keys (`muc::history_key`) of the newest groupchat messages stored, oldest first:
    /// history a rejoin brings again is recognised by them. At most [`RECENT_IDS`].
    #[prost(string, repeated, tag = "5")]
    pub recent: Vec<String>,
    /// The room's subject as last stored for the user: rooms repeat it on every join, and
    /// only a change is worth an inbox entry, across restarts too.
    #[prost(string, optional, tag = "6")]
    pub subject: Option<String>,
    /// Nicks of the occupants the user was told of: a rejoin after a restart stores only who
    /// came or went meanwhile, not everyone again.
    #[prost(string, repeated, tag = "7")]
    pub occupants: Vec<String>,
    // next id: 8
}

/// How many keys of the newest messages are kept per room to recognise repeated history: a
/// rejoin asks for a couple of minutes more than was missed, which a busy room fills quickly.
pub const RECENT_IDS: usize = 256;

impl RoomRecord {
    /// Notes a groupchat message stamped `ts` (already no later than now) under `key`; `false`
    /// when that key is stored already (history repeated by a rejoin).
    pub fn remember(&mut self, key: &str, ts: u64) -> bool {
        if self.recent.iter().any(|k| k == key) {
            return false;
        }
        if self.recent.len() >= RECENT_IDS {
            self.recent.drain(..=self.recent.len() - RECENT_IDS);
        }
        self.recent.push(key.to_owned());
        self.last_ts = self.last_ts.max(ts);
        true
    }
}

/// The tree memberships live in.
pub const ROOMS: &str = "rooms";

/// Joined rooms over their own tree. Writes go through the store's journal, so a membership
/// the phone was told about survives a crash like its inbox does.
#[derive(Clone)]
pub struct Rooms {
    tree: Table,
}

fn key(user: &UserName, room: &str) -> Vec<u8> {
    [user.as_str().as_bytes(), b"\0", room.as_bytes()].concat()
}

impl Rooms {
    /// The rooms tree of `journal`'s database, written through `journal`. Without the daemon
    /// (offline admin) nothing writes the journal out: the caller flushes sled instead.
    pub fn open(journal: Arc<Journal>) -> Result<Rooms, StoreError> {
        Ok(Rooms { tree: Table::open(&journal, ROOMS)? })
    }

    /// Records (or replaces) `user`'s membership of `room` (a bare JID string).
    pub fn put(&self, user: &UserName, room: &str, record: &RoomRecord) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.insert(ROOMS, key(user, room), record.encode_to_vec());
        self.tree.commit(batch)
    }

    /// `user`'s record for `room`.
    pub fn get(&self, user: &UserName, room: &str) -> Result<Option<RoomRecord>, StoreError> {
        self.tree.get(&key(user, room))?.map(|v| decode(&v)).transpose()
    }

    /// Forgets `user`'s membership of `room`.
    pub fn remove(&self, user: &UserName, room: &str) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.remove(ROOMS, key(user, room));
        self.tree.commit(batch)
    }

    /// Forgets every membership of `user` (the account was deleted); the rooms it was in.
    pub fn remove_user(&self, user: &UserName) -> Result<Vec<String>, StoreError> {
        let prefix = key(user, "");
        let mut rooms = Vec::new();
        let mut batch = Batch::default();
        for k in self.tree.scan_prefix(&prefix).keys() {
            let k = k?;
            rooms.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            batch.remove(ROOMS, k);
        }
        self.tree.commit(batch)?;
        Ok(rooms)
    }

    /// Every (user, room, record): the rooms to rejoin at start. Records whose key does not
    /// parse are skipped with a warning rather than stopping every other rejoin.
    pub fn all(&self) -> Result<Vec<(UserName, String, RoomRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let split = k.iter().position(|b| *b == 0);
            let parsed = split.and_then(|at| {
                let user = UserName::parse(std::str::from_utf8(&k[..at]).ok()?).ok()?;
                let room = std::str::from_utf8(&k[at + 1..]).ok()?.to_owned();
                Some((user, room))
            });
            match (parsed, decode(&v)) {
                (Some((user, room)), Ok(record)) => out.push((user, room, record)),
                _ => tracing::warn!(key = ?String::from_utf8_lossy(&k), "unreadable room record skipped"),
            }
        }
        Ok(out)
    }
}

fn decode(v: &[u8]) -> Result<RoomRecord, StoreError> {
    RoomRecord::decode(v).map_err(|_| StoreError::Corrupt("room"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(nick: &str) -> RoomRecord {
        RoomRecord { nick: nick.into(), device: "phone".into(), ..Default::default() }
    }

    #[test]
    fn persists_across_reopen_and_lists_rooms_to_rejoin() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, al) = (UserName::parse("alice").unwrap(), UserName::parse("al").unwrap());
        {
            let db = crate::store::test_support::sled_at(dir.path());
            let rooms = Rooms::open(Arc::new(Journal::new(db.clone()))).unwrap();
            rooms.put(&alice, "lounge@muc.x", &record("Alice")).unwrap();
            rooms.put(&alice, "dev@muc.x", &record("A")).unwrap();
            // "al" is a prefix of "alice": the NUL keeps their rooms apart.
            rooms.put(&al, "lounge@muc.x", &record("Al")).unwrap();
            let mut moved = record("Alice");
            moved.last_ts = 42;
            moved.recent = vec!["m1".into(), "m2".into()];
            moved.subject = Some(String::new());
            rooms.put(&alice, "lounge@muc.x", &moved).unwrap();
            rooms.remove(&alice, "dev@muc.x").unwrap();
            db.flush().unwrap();
        }
        let db = crate::store::test_support::sled_at(dir.path());
        let rooms = Rooms::open(Arc::new(Journal::new(db.clone()))).unwrap();
        let lounge = rooms.get(&alice, "lounge@muc.x").unwrap().unwrap();
        assert_eq!((lounge.last_ts, lounge.recent.as_slice()), (42, &["m1".to_owned(), "m2".to_owned()][..]));
        // "No subject set" is kept apart from "never seen one".
        assert_eq!(lounge.subject.as_deref(), Some(""));
        assert_eq!(rooms.get(&al, "lounge@muc.x").unwrap().unwrap().subject, None);
        assert_eq!(rooms.get(&alice, "dev@muc.x").unwrap(), None);
        let mut all: Vec<_> =
            rooms.all().unwrap().into_iter().map(|(u, r, rec)| (u.to_string(), r, rec.nick)).collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("al".into(), "lounge@muc.x".into(), "Al".into()),
                ("alice".into(), "lounge@muc.x".into(), "Alice".into())
            ]
        );
    }

    #[test]
    fn remembers_a_bounded_number_of_keys_and_the_newest_stamp() {
        let mut r = record("A");
        assert!(r.remember("s:1", 10));
        assert!(!r.remember("s:1", 20), "a repeat is recognised");
        assert_eq!(r.last_ts, 10);
        assert!(r.remember("s:2", 5));
        assert_eq!(r.last_ts, 10, "older history does not move it back");
        // An over-long list (an older version kept fewer; a bug kept more) shrinks to the bound.
        r.recent = (0..RECENT_IDS + 5).map(|i| format!("k{i}")).collect();
        assert!(r.remember("new", 11));
        assert_eq!(r.recent.len(), RECENT_IDS);
        assert_eq!((r.recent[0].as_str(), r.recent.last().map(String::as_str)), ("k6", Some("new")));
    }

    #[test]
    fn a_deleted_users_rooms_all_go() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let rooms = Rooms::open(Arc::new(Journal::new(db.clone()))).unwrap();
        let (alice, al) = (UserName::parse("alice").unwrap(), UserName::parse("al").unwrap());
        rooms.put(&alice, "a@muc.x", &record("A")).unwrap();
        rooms.put(&alice, "b@muc.x", &record("A")).unwrap();
        rooms.put(&al, "a@muc.x", &record("Al")).unwrap();
        let mut gone = rooms.remove_user(&alice).unwrap();
        gone.sort();
        assert_eq!(gone, ["a@muc.x", "b@muc.x"]);
        let left: Vec<_> = rooms.all().unwrap().into_iter().map(|(u, r, _)| (u.to_string(), r)).collect();
        assert_eq!(left, [("al".to_owned(), "a@muc.x".to_owned())]);
    }

    #[test]
    fn corrupt_records_are_reported_or_skipped() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(ROOMS).unwrap();
        let rooms = Rooms::open(Arc::new(Journal::new(db.clone()))).unwrap();
        let alice = UserName::parse("alice").unwrap();
        tree.insert(key(&alice, "bad@muc.x"), &[0xff, 0xff][..]).unwrap();
        tree.insert(b"no-separator", &[][..]).unwrap();
        assert!(matches!(rooms.get(&alice, "bad@muc.x"), Err(StoreError::Corrupt("room"))));
        rooms.put(&alice, "good@muc.x", &record("A")).unwrap();
        let all = rooms.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1, "good@muc.x");
    }
}
