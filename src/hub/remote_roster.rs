//! Subscriptions and presence with contacts on other domains (RFC 6121 §3–4 over s2s).
//!
//! The user's side of each remote contact lives in the user's roster like a local one; the
//! contact's side is the peer server's business. Presence goes out as stanzas to remote
//! contacts subscribed `from` the user, probes go to those the user is subscribed `to`, and
//! probes from peers are answered for contacts with `from`.

use std::sync::Arc;

use tern_bridge::stanza::{Presence, PresenceType};
use tern_bridge::stream::NS_SERVER;
use tern_bridge::{Element, Jid};
use tern_schemas::v1::{self, subscription::Kind, up};

use super::roster::Pushes;
use super::{internal, Hub};
use crate::core::session::Identity;
use crate::envelope::EnvelopeError;
use crate::ids::UserName;
use crate::store::roster::ContactRecord;

impl Hub {
    /// The user sends a subscription stanza to a remote bare JID.
    pub(super) async fn subscription_remote(
        &self,
        from: &Identity,
        to: &Jid,
        kind: Kind,
    ) -> Result<(), EnvelopeError> {
        let contact = to.to_bare();
        let contact_jid = contact.to_string();
        let mut pushes = Pushes::new();
        let pass = {
            let _guard = self.roster_guard();
            let rosters = &self.store.rosters;
            let mut mine = rosters.get(&from.user, &contact_jid).map_err(internal)?.unwrap_or_default();
            let t = mine.state().outbound(kind);
            let listed_now = mine.listed || matches!(kind, Kind::Subscribe | Kind::Subscribed);
            let visible = t.state != mine.state() || listed_now != mine.listed;
            mine.set_state(t.state);
            mine.listed = listed_now;
            self.save(&mut pushes, &from.user, &contact_jid, mine, visible)?;
            t.pass
        };
        self.store.committer.durable().await.map_err(internal)?;
        self.push(pushes);
        if !pass {
            return Ok(());
        }
        let body = up::Body::Subscription(v1::Subscription {
            peer: contact_jid,
            kind: kind as i32,
            ..Default::default()
        });
        if let (Some(s2s), Some(el)) = (self.s2s.get(), self.stanza_for(from, "", &body)?) {
            s2s.send(contact.domain(), el);
        }
        match kind {
            // The contact may now hear the user (§3.1.5); after unsubscribed it may not (§3.2.2).
            Kind::Subscribed => self.all_presence_to_remote(&from.user, &contact),
            Kind::Unsubscribed => self.unavailable_to_remote(&from.user, &contact),
            _ => {}
        }
        Ok(())
    }

    /// A subscription stanza from a remote contact to local `user` (RFC 6121 §3 inbound).
    pub(super) fn remote_subscription(self: &Arc<Self>, user: UserName, peer: &Jid, kind: Kind) {
        let peer = peer.to_bare();
        let peer_jid = peer.to_string();
        let mut pushes = Pushes::new();
        let result = (|| -> Result<Option<Kind>, EnvelopeError> {
            let _guard = self.roster_guard();
            let mut theirs = self.store.rosters.get(&user, &peer_jid).map_err(internal)?.unwrap_or_default();
            let ti = theirs.state().inbound(kind);
            let visible = theirs.listed && ti.state != theirs.state();
            theirs.set_state(ti.state);
            self.save(&mut pushes, &user, &peer_jid, theirs, visible)?;
            if ti.pass {
                let delivery = self.subscription_delivery(&user, &peer_jid, kind);
                self.append(None, vec![delivery]).map_err(internal)?;
            }
            Ok(ti.auto_reply)
        })();
        let auto_reply = match result {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = ?e.text, "remote subscription failed"),
        };
        let hub = self.clone();
        tokio::spawn(async move {
            match hub.store.committer.durable().await {
                Ok(()) => hub.push(pushes),
                Err(e) => tracing::error!(error = %e, "committing a remote subscription failed"),
            }
        });
        if auto_reply == Some(Kind::Subscribed) {
            // Approved earlier: answer for the user (§3.1.3), then tell the contact our presence.
            self.send_remote_presence_stanza(&self.bare_jid(&user), &peer, PresenceType::Subscribed);
            self.all_presence_to_remote(&user, &peer);
        }
    }

    /// A probe from a remote server for local `user` (RFC 6121 §4.3.2).
    pub(super) fn remote_probe(&self, user: &UserName, from: &Jid) {
        let peer = from.to_bare();
        let allowed = self.store.rosters.get(user, &peer.to_string()).ok().flatten().is_some_and(|r| r.from);
        if !allowed {
            // §4.3.2: an unsubscribed prober learns nothing (not even that the user exists).
            return;
        }
        if self.presence_of(user).is_empty() {
            self.send_remote_presence_stanza(&self.bare_jid(user), &peer, PresenceType::Unavailable);
        } else {
            self.all_presence_to_remote(user, &peer);
        }
    }

    /// Probes every remote contact `user` is subscribed to (RFC 6121 §4.3.1).
    pub(super) fn probe_remote_contacts(&self, user: &UserName) {
        for contact in self.remote_contacts(user, |r| r.to) {
            self.send_remote_presence_stanza(&self.bare_jid(user), &contact, PresenceType::Probe);
        }
    }

    /// Remote contacts of `user` whose record passes `keep`.
    pub(super) fn remote_contacts(&self, user: &UserName, keep: impl Fn(&ContactRecord) -> bool) -> Vec<Jid> {
        if self.s2s.get().is_none() {
            return Vec::new();
        }
        match self.store.rosters.all(user) {
            Ok(all) => all
                .into_iter()
                .filter(|(_, r)| keep(r))
                .filter_map(|(jid, _)| Jid::parse(&jid).ok())
                .filter(|j| j.domain() != self.domain)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "roster read failed; remote presence not routed");
                Vec::new()
            }
        }
    }

    /// One device's presence to a remote JID.
    pub(super) fn presence_to_remote(&self, from: &Identity, to: &Jid, mut p: v1::Presence) {
        p.peer = to.to_string();
        if let Ok(Some(el)) = self.stanza_for(from, "", &up::Body::Presence(p)) {
            if let Some(s2s) = self.s2s.get() {
                s2s.send(to.domain(), el);
            }
        }
    }

    /// The presence of every online device of `user` to a remote JID.
    fn all_presence_to_remote(&self, user: &UserName, to: &Jid) {
        for (device, p) in self.presence_of(user) {
            self.presence_to_remote(&Identity { user: user.clone(), device }, to, p);
        }
    }

    /// Every online device of `user` goes unavailable for a remote JID.
    fn unavailable_to_remote(&self, user: &UserName, to: &Jid) {
        for (device, _) in self.presence_of(user) {
            let from = format!("{}/{}", self.bare_jid(user), device.as_str());
            self.send_remote_presence_stanza(&from, to, PresenceType::Unavailable);
        }
    }

    fn send_remote_presence_stanza(&self, from: &str, to: &Jid, type_: PresenceType) {
        let (Some(s2s), Ok(from)) = (self.s2s.get(), Jid::parse(from)) else { return };
        let el: Element =
            Presence { from: Some(from), to: Some(to.clone()), ..Presence::new(type_) }.to_element(NS_SERVER);
        s2s.send(to.domain(), el);
    }
}
