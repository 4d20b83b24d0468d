//! Peer refs: small numbers that stand for roster contacts' JIDs on one phone link (the tern
//! session protocol, docs/PROTOCOL.md "Peer refs").
//!
//! A JID such as `alice@xmpp.example/phone` is most of the bytes of a short envelope. Each roster
//! contact gets a per-user number when it is first listed (`store::roster`), and a device that sent
//! `Hello{peer_refs}` may use it instead of `peer`. The server must never send a ref the device
//! cannot read, so this table tracks which refs *this device* has been told: those of contacts
//! listed at the roster version it announced, plus every item of each roster answer and push the
//! session sends it. A ref is never reused for another JID, so resolving one the device sends is
//! always unambiguous.

use std::collections::HashMap;

use tern_schemas::v1::{self, down, roster_item::Sub, up};

/// The refs of one session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerRefs {
    /// Every ref of the user, tombstoned contacts included: what an `Up` may name.
    jids: HashMap<u32, String>,
    /// Bare JID → ref, for contacts the device knows a ref for: what a `Down` may use.
    known: HashMap<String, u32>,
}

/// An `Up` named a ref that is not this user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownRef(pub u32);

impl PeerRefs {
    /// A table from `(bare JID, ref, the device knows it)` for every contact that has a ref.
    pub fn new(contacts: impl IntoIterator<Item = (String, u32, bool)>) -> PeerRefs {
        let mut refs = PeerRefs::default();
        for (jid, peer_ref, known) in contacts {
            if known {
                refs.known.insert(jid.clone(), peer_ref);
            }
            refs.jids.insert(peer_ref, jid);
        }
        refs
    }

    /// The bare JID `peer_ref` stands for.
    pub fn resolve(&self, peer_ref: u32) -> Option<&str> {
        self.jids.get(&peer_ref).map(String::as_str)
    }

    /// A roster answer or push is on its way to the device: from now on it knows these items.
    pub fn on_roster(&mut self, roster: &v1::Roster) {
        if roster.full {
            // The device replaces its roster, forgetting whatever is not in this one.
            self.known.clear();
        }
        for item in &roster.items {
            if item.sub == Sub::Remove as i32 {
                self.known.remove(&item.jid);
            } else if item.peer_ref != 0 {
                self.jids.insert(item.peer_ref, item.jid.clone());
                self.known.insert(item.jid.clone(), item.peer_ref);
            }
        }
    }

    /// Replaces every `peer_ref` (plus `resource`) of `up` by the `peer` it stands for.
    pub fn expand_up(&self, up: &mut v1::Up) -> Result<(), UnknownRef> {
        let Some(body) = up.body.as_mut() else { return Ok(()) };
        match body {
            up::Body::Chat(c) => self.expand(&mut c.peer, &mut c.peer_ref, std::mem::take(&mut c.resource)),
            up::Body::Receipt(r) => self.expand(&mut r.peer, &mut r.peer_ref, String::new()),
            up::Body::ChatState(s) => self.expand(&mut s.peer, &mut s.peer_ref, String::new()),
            up::Body::Presence(p) => {
                self.expand(&mut p.peer, &mut p.peer_ref, std::mem::take(&mut p.resource))
            }
            up::Body::Subscription(s) => self.expand(&mut s.peer, &mut s.peer_ref, String::new()),
            _ => Ok(()),
        }
    }

    fn expand(&self, peer: &mut String, peer_ref: &mut u32, resource: String) -> Result<(), UnknownRef> {
        if *peer_ref == 0 {
            return Ok(());
        }
        let bare = self.resolve(*peer_ref).ok_or(UnknownRef(*peer_ref))?;
        *peer = if resource.is_empty() { bare.to_owned() } else { format!("{bare}/{resource}") };
        *peer_ref = 0;
        Ok(())
    }

    /// Names the peer of `down` by its ref where the device knows one; true if it changed.
    /// Group chat is left alone: its peer is a room occupant, not a contact. A receipt also
    /// loses its own `id`: the device needs only the id it acknowledges (`receipt.id`), and
    /// dedupes stored envelopes by `seq`.
    pub fn compact_down(&self, down: &mut v1::Down) -> bool {
        let Some(body) = down.body.as_mut() else { return false };
        if matches!(body, down::Body::Receipt(_)) && !down.id.is_empty() {
            down.id.clear();
            let _ = self.compact_body(body);
            return true;
        }
        self.compact_body(body)
    }

    fn compact_body(&self, body: &mut down::Body) -> bool {
        match body {
            down::Body::Chat(c) if c.r#type != v1::MessageType::Groupchat as i32 => {
                self.compact(&mut c.peer, &mut c.peer_ref, Some(&mut c.resource))
            }
            down::Body::Presence(p) => self.compact(&mut p.peer, &mut p.peer_ref, Some(&mut p.resource)),
            // Which resource sent a receipt, a chat state or a subscription changes nothing the
            // device does with it.
            down::Body::Receipt(r) => self.compact(&mut r.peer, &mut r.peer_ref, None),
            down::Body::ChatState(s) => self.compact(&mut s.peer, &mut s.peer_ref, None),
            down::Body::Subscription(s) => self.compact(&mut s.peer, &mut s.peer_ref, None),
            _ => false,
        }
    }

    fn compact(&self, peer: &mut String, peer_ref: &mut u32, resource: Option<&mut String>) -> bool {
        let (bare, res) = match peer.split_once('/') {
            Some((bare, res)) => (bare, res),
            None => (peer.as_str(), ""),
        };
        let Some(&r) = self.known.get(bare) else { return false };
        if let Some(slot) = resource {
            *slot = res.to_owned();
        }
        *peer_ref = r;
        peer.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> PeerRefs {
        PeerRefs::new([
            ("bob@x.test".to_owned(), 1, true),
            ("carol@y.test".to_owned(), 2, false),
            ("dave@x.test".to_owned(), 3, true),
        ])
    }

    fn chat_down(peer: &str, type_: v1::MessageType) -> v1::Down {
        v1::Down {
            seq: 7,
            id: "m1".into(),
            body: Some(down::Body::Chat(v1::Chat {
                peer: peer.into(),
                body: "hi".into(),
                r#type: type_ as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn chat_of(d: &v1::Down) -> &v1::Chat {
        match &d.body {
            Some(down::Body::Chat(c)) => c,
            other => panic!("not a chat: {other:?}"),
        }
    }

    #[test]
    fn known_contacts_are_compacted_with_their_resource() {
        let refs = table();
        let mut d = chat_down("bob@x.test/phone", v1::MessageType::Chat);
        assert!(refs.compact_down(&mut d));
        let c = chat_of(&d);
        assert_eq!((c.peer.as_str(), c.peer_ref, c.resource.as_str()), ("", 1, "phone"));
        let mut bare = chat_down("dave@x.test", v1::MessageType::Chat);
        assert!(refs.compact_down(&mut bare));
        assert_eq!((chat_of(&bare).peer_ref, chat_of(&bare).resource.as_str()), (3, ""));
    }

    #[test]
    fn unknown_refs_strangers_and_rooms_keep_their_jid() {
        let refs = table();
        // carol has a ref, but this device has not been told it.
        for (peer, t) in [
            ("carol@y.test/pc", v1::MessageType::Chat),
            ("eve@x.test/pc", v1::MessageType::Chat),
            ("bob@x.test/nick", v1::MessageType::Groupchat),
        ] {
            let mut d = chat_down(peer, t);
            assert!(!refs.compact_down(&mut d), "{peer}");
            assert_eq!(chat_of(&d).peer, peer);
            assert_eq!(chat_of(&d).peer_ref, 0);
        }
    }

    #[test]
    fn receipts_name_only_the_bare_contact() {
        let refs = table();
        let receipt = |peer: &str| v1::Down {
            seq: 4,
            id: "rm1".into(),
            body: Some(down::Body::Receipt(v1::Receipt {
                peer: peer.into(),
                id: "m1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut d = receipt("bob@x.test/phone");
        assert!(refs.compact_down(&mut d));
        let Some(down::Body::Receipt(r)) = &d.body else { panic!("receipt") };
        assert_eq!((d.id.as_str(), r.peer.as_str(), r.peer_ref, r.id.as_str()), ("", "", 1, "m1"));
        // A stranger's receipt keeps its JID, and loses only the id of its own.
        let mut d = receipt("eve@x.test/pc");
        assert!(refs.compact_down(&mut d));
        let Some(down::Body::Receipt(r)) = &d.body else { panic!("receipt") };
        assert_eq!((d.id.as_str(), r.peer.as_str(), r.peer_ref), ("", "eve@x.test/pc", 0));
    }

    #[test]
    fn ups_are_expanded_and_unknown_refs_refused() {
        let refs = table();
        let mut up = v1::Up {
            id: "m1".into(),
            body: Some(up::Body::Chat(v1::Chat {
                peer_ref: 2,
                resource: "pc".into(),
                body: "hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        // A ref the device may not have been told still names the same JID: refs are never reused.
        refs.expand_up(&mut up).unwrap();
        let Some(up::Body::Chat(c)) = &up.body else { panic!("chat") };
        assert_eq!((c.peer.as_str(), c.peer_ref, c.resource.as_str()), ("carol@y.test/pc", 0, ""));
        let mut bad = v1::Up {
            body: Some(up::Body::Receipt(v1::Receipt { peer_ref: 9, ..Default::default() })),
            ..Default::default()
        };
        assert_eq!(refs.expand_up(&mut bad), Err(UnknownRef(9)));
        let mut plain = v1::Up {
            body: Some(up::Body::Subscription(v1::Subscription {
                peer: "eve@x.test".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let before = plain.clone();
        refs.expand_up(&mut plain).unwrap();
        assert_eq!(plain, before);
    }

    #[test]
    fn roster_pushes_and_answers_teach_and_unteach_refs() {
        let mut refs = table();
        let item = |jid: &str, peer_ref, sub: Sub| v1::RosterItem {
            jid: jid.into(),
            peer_ref,
            sub: sub as i32,
            ..Default::default()
        };
        refs.on_roster(&v1::Roster {
            ver: 5,
            items: vec![item("carol@y.test", 2, Sub::Both), item("bob@x.test", 0, Sub::Remove)],
            full: false,
        });
        let mut d = chat_down("carol@y.test", v1::MessageType::Chat);
        assert!(refs.compact_down(&mut d));
        let mut d = chat_down("bob@x.test", v1::MessageType::Chat);
        assert!(!refs.compact_down(&mut d), "removed contacts are sent by JID");
        assert_eq!(refs.resolve(1), Some("bob@x.test"), "but their old ref still resolves");
        // A full answer forgets everything it does not list.
        refs.on_roster(&v1::Roster { ver: 6, items: vec![item("erin@z.test", 4, Sub::To)], full: true });
        assert!(!refs.compact_down(&mut chat_down("dave@x.test", v1::MessageType::Chat)));
        assert!(refs.compact_down(&mut chat_down("erin@z.test/a", v1::MessageType::Chat)));
        assert_eq!(refs.resolve(4), Some("erin@z.test"));
    }

    proptest! {
        /// Compacting a Down and expanding the same fields as an Up gives back the peer.
        #[test]
        fn compact_then_expand_gives_back_the_peer(
            local in "[a-z]{1,8}", res in proptest::option::of("[a-zA-Z0-9 /]{1,12}"), known: bool,
        ) {
            let bare = format!("{local}@x.test");
            let refs = PeerRefs::new([(bare.clone(), 1, known)]);
            let peer = match &res { Some(r) => format!("{bare}/{r}"), None => bare.clone() };
            let mut d = chat_down(&peer, v1::MessageType::Chat);
            prop_assert_eq!(refs.compact_down(&mut d), known);
            let mut up = v1::Up { body: Some(up::Body::Chat(chat_of(&d).clone())), ..Default::default() };
            refs.expand_up(&mut up).unwrap();
            let Some(up::Body::Chat(c)) = &up.body else { panic!("chat") };
            prop_assert_eq!(&c.peer, &peer);
        }
    }
}
