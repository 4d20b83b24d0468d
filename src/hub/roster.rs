//! Roster edits and the subscription handshake between local users (RFC 6121 §2–3).

use tern_bridge::Jid;
use tern_schemas::v1::{self, down, error::Code, presence::Show, subscription::Kind};

use super::{internal, Hub};
use crate::core::session::Identity;
use crate::envelope::EnvelopeError;
use crate::ids::UserName;
use crate::store::inbox::Delivery;
use crate::store::roster::ContactRecord;

/// Roster pushes waiting for their commit.
pub(super) type Pushes = Vec<(UserName, v1::Roster)>;

fn err(code: Code, text: &str) -> EnvelopeError {
    EnvelopeError { id: String::new(), code, text: text.into() }
}

impl Hub {
    /// Adds or edits a roster item (RFC 6121 §2.3) and pushes it to every device.
    pub(super) async fn roster_set(
        &self,
        from: &Identity,
        jid: &Jid,
        name: String,
        groups: Vec<String>,
    ) -> Result<(), EnvelopeError> {
        let mut pushes = Pushes::new();
        {
            let _guard = self.roster_guard();
            let key = jid.to_string();
            let mut rec = self.store.rosters.get(&from.user, &key).map_err(internal)?.unwrap_or_default();
            rec.listed = true;
            rec.name = name;
            rec.groups = groups;
            self.save(&mut pushes, &from.user, &key, rec, true)?;
        }
        self.store.committer.durable().await.map_err(internal)?;
        self.push(pushes);
        Ok(())
    }

    /// Removes a roster item, cancelling subscriptions both ways (RFC 6121 §2.5.2).
    pub(super) async fn roster_remove(&self, from: &Identity, jid: &Jid) -> Result<(), EnvelopeError> {
        let rec = {
            let _guard = self.roster_guard();
            self.store.rosters.get(&from.user, &jid.to_string()).map_err(internal)?
        };
        let Some(rec) = rec else { return Ok(()) };
        if rec.to || rec.pending_out {
            self.subscription(from, jid, Kind::Unsubscribe).await?;
        }
        if rec.from || rec.pending_in {
            self.subscription(from, jid, Kind::Unsubscribed).await?;
        }
        let mut pushes = Pushes::new();
        {
            let _guard = self.roster_guard();
            // The tombstone keeps the ref: refs are never handed to another JID.
            let tombstone =
                ContactRecord { peer_ref: rec.peer_ref, ref_ver: rec.ref_ver, ..Default::default() };
            self.save(&mut pushes, &from.user, &jid.to_string(), tombstone, true)?;
        }
        self.store.committer.durable().await.map_err(internal)?;
        self.push(pushes);
        Ok(())
    }

    /// The user sends a subscription stanza to a bare JID (RFC 6121 §3).
    pub(super) async fn subscription(
        &self,
        from: &Identity,
        to: &Jid,
        kind: Kind,
    ) -> Result<(), EnvelopeError> {
        if to.domain() != self.domain {
            if self.is_remote(to) {
                return self.subscription_remote(from, to, kind).await;
            }
            return Err(err(Code::RemoteServerNotFound, "no route to that domain"));
        }
        let contact = self.local_user(to).ok_or_else(|| err(Code::ServiceUnavailable, "no such user"))?;
        if !self.store.users.exists(&contact).map_err(internal)? || contact == from.user {
            return Err(err(Code::ServiceUnavailable, "no such user"));
        }
        let user = from.user.clone();
        let user_jid = self.bare_jid(&user);
        let contact_jid = to.to_string();
        let mut deliveries = Vec::new();
        let mut pushes = Pushes::new();
        let mut presence_to_user = false;
        let mut presence_to_contact = false;
        let mut unavailable_to_user = false;
        let mut unavailable_to_contact = false;
        {
            let _guard = self.roster_guard();
            let rosters = &self.store.rosters;
            // The user's side.
            let mut mine = rosters.get(&user, &contact_jid).map_err(internal)?.unwrap_or_default();
            let t = mine.state().outbound(kind);
            let listed_now = mine.listed || matches!(kind, Kind::Subscribe | Kind::Subscribed);
            let visible = t.state != mine.state() || listed_now != mine.listed;
            mine.set_state(t.state);
            mine.listed = listed_now;
            self.save(&mut pushes, &user, &contact_jid, mine, visible)?;
            if t.pass {
                // The contact's side.
                let mut theirs = rosters.get(&contact, &user_jid).map_err(internal)?.unwrap_or_default();
                let ti = theirs.state().inbound(kind);
                let visible = theirs.listed && ti.state != theirs.state();
                theirs.set_state(ti.state);
                self.save(&mut pushes, &contact, &user_jid, theirs, visible)?;
                if ti.pass {
                    deliveries.push(self.subscription_delivery(&contact, &user_jid, kind));
                }
                if ti.auto_reply == Some(Kind::Subscribed) {
                    // The contact approved earlier: answer for them, as their server would.
                    let mut mine = rosters.get(&user, &contact_jid).map_err(internal)?.unwrap_or_default();
                    let back = mine.state().inbound(Kind::Subscribed);
                    if back.pass {
                        mine.set_state(back.state);
                        self.save(&mut pushes, &user, &contact_jid, mine, true)?;
                        deliveries.push(self.subscription_delivery(&user, &contact_jid, Kind::Subscribed));
                        presence_to_user = true;
                    }
                }
            }
            match (kind, t.pass) {
                (Kind::Subscribed, true) => presence_to_contact = true,
                (Kind::Unsubscribed, true) => unavailable_to_contact = true,
                (Kind::Unsubscribe, true) => unavailable_to_user = true,
                _ => {}
            }
            // Appended under the lock, so stanzas about one pair are stored in the order their
            // state changes happened.
            if !deliveries.is_empty() {
                self.append(None, std::mem::take(&mut deliveries)).map_err(internal)?;
            }
        }
        // RFC 6121 §3.3.3: the user stops hearing the contact, so the contact goes unavailable.
        // Sent before the commit, so it comes before the stored stanza (§3.2.2 asks the same of
        // the contact's side).
        if unavailable_to_user {
            self.send_unavailable(&contact, &user);
        }
        self.store.committer.durable().await.map_err(internal)?;
        self.push(pushes);
        // Presence follows the stored subscription stanza it depends on, so a client sees the
        // approval before the presence it unlocks.
        if presence_to_user {
            self.send_presence(&contact, &user);
        }
        if presence_to_contact {
            // The user approved the contact: the contact now hears the user's presence.
            self.send_presence(&user, &contact);
        }
        if unavailable_to_contact {
            // The contact no longer hears the user: tell the contact the user is gone (§3.2.2).
            self.send_unavailable(&user, &contact);
        }
        Ok(())
    }

    /// Sends the current presence of every online device of `of` to `to`'s devices.
    fn send_presence(&self, of: &UserName, to: &UserName) {
        let of_jid = self.bare_jid(of);
        for (device, mut p) in self.presence_of(of) {
            p.peer = format!("{of_jid}/{}", device.as_str());
            self.live(to, down::Body::Presence(p));
        }
    }

    /// Tells `to`'s devices that every online device of `of` is unavailable to them.
    fn send_unavailable(&self, of: &UserName, to: &UserName) {
        let of_jid = self.bare_jid(of);
        for (device, _) in self.presence_of(of) {
            let p = v1::Presence {
                peer: format!("{of_jid}/{}", device.as_str()),
                show: Show::Unavailable as i32,
                ..Default::default()
            };
            self.live(to, down::Body::Presence(p));
        }
    }

    pub(super) fn subscription_delivery(&self, to: &UserName, peer: &str, kind: Kind) -> Delivery {
        Delivery {
            user: to.clone(),
            origin: None,
            down: v1::Down {
                body: Some(down::Body::Subscription(v1::Subscription {
                    peer: peer.to_owned(),
                    kind: kind as i32,
                    ..Default::default()
                })),
                ..Default::default()
            },
        }
    }

    /// Writes a contact record; when it changed visibly, queues a roster push for the user's
    /// devices, to be sent once the change is durable (a version must never be seen and lost).
    pub(super) fn save(
        &self,
        pushes: &mut Pushes,
        user: &UserName,
        jid: &str,
        mut rec: ContactRecord,
        visible: bool,
    ) -> Result<(), EnvelopeError> {
        if let Some(ver) = self.store.rosters.put(user, jid, &mut rec, visible).map_err(internal)? {
            pushes.push((user.clone(), v1::Roster { ver, items: vec![rec.to_item(jid)], full: false }));
        }
        Ok(())
    }

    /// Sends queued roster pushes (after the commit that made them durable).
    pub(super) fn push(&self, pushes: Pushes) {
        for (user, roster) in pushes {
            self.live(&user, down::Body::Roster(roster));
        }
    }
}
