//! The group chat rooms (XEP-0045) tern stays in on each user's behalf, so it can rejoin them
//! after a restart. Its own tree, keyed `user \0 room`: rooms change rarely and need no batch
//! with the inbox.

use prost::Message;

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
    /// Ids of the newest groupchat messages stored, oldest first: history a rejoin brings
    /// again is recognised by them.
    #[prost(string, repeated, tag = "5")]
    pub recent: Vec<String>,
}

/// Joined rooms over their own tree.
#[derive(Clone)]
pub struct Rooms {
    tree: sled::Tree,
}

fn key(user: &UserName, room: &str) -> Vec<u8> {
    [user.as_str().as_bytes(), b"\0", room.as_bytes()].concat()
}

impl Rooms {
    /// Wraps the `rooms` tree.
    pub fn new(tree: sled::Tree) -> Rooms {
        Rooms { tree }
    }

    /// Records (or replaces) `user`'s membership of `room` (a bare JID string).
    pub fn put(&self, user: &UserName, room: &str, record: &RoomRecord) -> Result<(), StoreError> {
        self.tree.insert(key(user, room), record.encode_to_vec())?;
        Ok(())
    }

    /// `user`'s record for `room`.
    pub fn get(&self, user: &UserName, room: &str) -> Result<Option<RoomRecord>, StoreError> {
        self.tree.get(key(user, room))?.map(|v| decode(&v)).transpose()
    }

    /// Forgets `user`'s membership of `room`.
    pub fn remove(&self, user: &UserName, room: &str) -> Result<(), StoreError> {
        self.tree.remove(key(user, room))?;
        Ok(())
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
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let rooms = Rooms::new(db.open_tree("rooms").unwrap());
            rooms.put(&alice, "lounge@muc.x", &record("Alice")).unwrap();
            rooms.put(&alice, "dev@muc.x", &record("A")).unwrap();
            // "al" is a prefix of "alice": the NUL keeps their rooms apart.
            rooms.put(&al, "lounge@muc.x", &record("Al")).unwrap();
            let mut moved = record("Alice");
            moved.last_ts = 42;
            moved.recent = vec!["m1".into(), "m2".into()];
            rooms.put(&alice, "lounge@muc.x", &moved).unwrap();
            rooms.remove(&alice, "dev@muc.x").unwrap();
            db.flush().unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let rooms = Rooms::new(db.open_tree("rooms").unwrap());
        let lounge = rooms.get(&alice, "lounge@muc.x").unwrap().unwrap();
        assert_eq!((lounge.last_ts, lounge.recent.as_slice()), (42, &["m1".to_owned(), "m2".to_owned()][..]));
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
    fn corrupt_records_are_reported_or_skipped() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("rooms").unwrap();
        let rooms = Rooms::new(tree.clone());
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
