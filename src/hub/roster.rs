//! Roster edits and the subscription handshake between local users (RFC 6121 §2–3).

use tern_bridge::Jid;
use tern_schemas::v1::{self, down, error::Code, presence::Show, subscription::Kind};

use super::{internal, Hub};
use crate::core::session::Identity;
use crate::envelope::EnvelopeError;
use crate::ids::UserName;
use crate::store::inbox::Delivery;
use crate::store::roster::ContactRecord;

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
        let _guard = self.roster_lock.lock().await;
        let key = jid.to_string();
        let mut rec = self.store.rosters.get(&from.user, &key).map_err(internal)?.unwrap_or_default();
        rec.listed = true;
        rec.name = name;
        rec.groups = groups;
        self.save_and_push(&from.user, &key, rec, true)?;
        self.store.committer.durable().await.map_err(internal)
    }

    /// Removes a roster item, cancelling subscriptions both ways (RFC 6121 §2.5.2).
    pub(super) async fn roster_remove(&self, from: &Identity, jid: &Jid) -> Result<(), EnvelopeError> {
        let rec = {
            let _guard = self.roster_lock.lock().await;
            self.store.rosters.get(&from.user, &jid.to_string()).map_err(internal)?
        };
        let Some(rec) = rec else { return Ok(()) };
        if rec.to || rec.pending_out {
            self.subscription(from, jid, Kind::Unsubscribe).await?;
        }
        if rec.from || rec.pending_in {
            self.subscription(from, jid, Kind::Unsubscribed).await?;
        }
        let _guard = self.roster_lock.lock().await;
        self.save_and_push(&from.user, &jid.to_string(), ContactRecord::default(), true)?;
        self.store.committer.durable().await.map_err(internal)
    }

    /// The user sends a subscription stanza to a bare JID (RFC 6121 §3).
    pub(super) async fn subscription(
        &self,
        from: &Identity,
        to: &Jid,
        kind: Kind,
    ) -> Result<(), EnvelopeError> {
        if to.domain() != self.domain {
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
        let mut presence_to_user = false;
        let mut presence_to_contact = false;
        let mut unavailable_to_contact = false;
        {
            let _guard = self.roster_lock.lock().await;
            let rosters = &self.store.rosters;
            // The user's side.
            let mut mine = rosters.get(&user, &contact_jid).map_err(internal)?.unwrap_or_default();
            let t = mine.state().outbound(kind);
            let listed_now = mine.listed || matches!(kind, Kind::Subscribe | Kind::Subscribed);
            let visible = t.state != mine.state() || listed_now != mine.listed;
            mine.set_state(t.state);
            mine.listed = listed_now;
            self.save_and_push(&user, &contact_jid, mine, visible)?;
            if t.pass {
                // The contact's side.
                let mut theirs = rosters.get(&contact, &user_jid).map_err(internal)?.unwrap_or_default();
                let ti = theirs.state().inbound(kind);
                let visible = theirs.listed && ti.state != theirs.state();
                theirs.set_state(ti.state);
                self.save_and_push(&contact, &user_jid, theirs, visible)?;
                if ti.pass {
                    deliveries.push(self.subscription_delivery(&contact, &user_jid, kind));
                }
                if ti.auto_reply == Some(Kind::Subscribed) {
                    // The contact approved earlier: answer for them, as their server would.
                    let mut mine = rosters.get(&user, &contact_jid).map_err(internal)?.unwrap_or_default();
                    let back = mine.state().inbound(Kind::Subscribed);
                    if back.pass {
                        mine.set_state(back.state);
                        self.save_and_push(&user, &contact_jid, mine, true)?;
                        deliveries.push(self.subscription_delivery(&user, &contact_jid, Kind::Subscribed));
                        presence_to_user = true;
                    }
                }
            }
            match (kind, t.pass) {
                (Kind::Subscribed, true) => presence_to_contact = true,
                (Kind::Unsubscribed, true) => unavailable_to_contact = true,
                _ => {}
            }
        }
        if !deliveries.is_empty() {
            self.store_durably(None, deliveries).await.map_err(internal)?;
        } else {
            self.store.committer.durable().await.map_err(internal)?;
        }
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
            for (device, _) in self.presence_of(&user) {
                let p = v1::Presence {
                    peer: format!("{user_jid}/{}", device.as_str()),
                    show: Show::Unavailable as i32,
                    ..Default::default()
                };
                self.live(&contact, down::Body::Presence(p));
            }
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

    fn subscription_delivery(&self, to: &UserName, peer: &str, kind: Kind) -> Delivery {
        Delivery {
            user: to.clone(),
            origin: None,
            down: v1::Down {
                body: Some(down::Body::Subscription(v1::Subscription {
                    peer: peer.to_owned(),
                    kind: kind as i32,
                })),
                ..Default::default()
            },
        }
    }

    /// Writes a contact record and, when it changed visibly, pushes it to the user's devices.
    fn save_and_push(
        &self,
        user: &UserName,
        jid: &str,
        rec: ContactRecord,
        visible: bool,
    ) -> Result<(), EnvelopeError> {
        let item = rec.to_item(jid);
        let listed_or_tombstone = rec.listed || visible;
        let ver = self.store.rosters.put(user, jid, rec, visible && listed_or_tombstone).map_err(internal)?;
        if let Some(ver) = ver {
            self.live(user, down::Body::Roster(v1::Roster { ver, items: vec![item], full: false }));
        }
        Ok(())
    }
}
