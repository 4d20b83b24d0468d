//! Federation in the hub: envelopes to users of other domains go out as stanzas over s2s;
//! stanzas from other domains land in local inboxes through the same durable path.
//!
//! A remote send is acknowledged (PUBACK) once the sender's copy is durable and the stanza is
//! queued for the peer's stream; it is not a delivery receipt. If the peer cannot be reached,
//! the stanza comes back as a `Down{id, error{REMOTE_SERVER_NOT_FOUND | REMOTE_SERVER_TIMEOUT}}`
//! in the sender's inbox.

use std::sync::Arc;

use tern_bridge::mapping;
use tern_bridge::stanza::{error_reply, Condition, PresenceType, Stanza, StanzaError};
use tern_bridge::stream::NS_SERVER;
use tern_bridge::{Element, Jid};
use tern_schemas::v1::{self, down, error::Code, subscription::Kind, up};

use super::{internal, now_ms, Hub};
use crate::core::session::Identity;
use crate::envelope::EnvelopeError;
use crate::ids::MsgId;
use crate::s2s::{BounceReason, S2s};
use crate::store::inbox::{Appended, Delivery};

impl Hub {
    /// Attaches federation: outbound sends go to `s2s`, its stanzas and bounces come here.
    /// In component mode (XEP-0114) `s2s` routes everything over its one component stream;
    /// nothing here differs.
    pub fn attach_s2s(self: &Arc<Self>, s2s: Arc<S2s>) {
        let weak = Arc::downgrade(self);
        let stanza = Arc::new(move |el: Element| {
            if let Some(hub) = weak.upgrade() {
                // Synchronously, in the stream's driver task: one peer's stanzas get inbox
                // sequence numbers in the order they arrived.
                hub.on_remote_stanza(el);
            }
        });
        let weak = Arc::downgrade(self);
        let bounce = Arc::new(move |els: Vec<Element>, reason: BounceReason| {
            if let Some(hub) = weak.upgrade() {
                hub.bounced(els, reason);
            }
        });
        s2s.set_sinks(stanza, bounce);
        let _ = self.s2s.set(s2s);
        // Outbound stanzas wait in the peer's queue until its stream is up.
        self.start_rooms();
    }

    /// Whether `to` is on another domain that federation can reach.
    pub(super) fn is_remote(&self, to: &Jid) -> bool {
        to.domain() != self.domain && self.s2s.get().is_some()
    }

    pub(super) fn stanza_for(
        &self,
        from: &Identity,
        id: &str,
        body: &up::Body,
    ) -> Result<Option<Element>, EnvelopeError> {
        self.stanza_as(&self.full_jid(from), id, body)
    }

    /// The stanza for `body`, sent as `sender` (a device's or a room occupant's full JID).
    fn stanza_as(&self, sender: &str, id: &str, body: &up::Body) -> Result<Option<Element>, EnvelopeError> {
        let err = |code, text: String| EnvelopeError { id: String::new(), code, text };
        let sender = Jid::parse(sender).map_err(|e| err(Code::Internal, e.to_string()))?;
        let stanza = mapping::outbound(&sender, id, body).map_err(|e| err(e.code(), e.to_string()))?;
        Ok(stanza.map(|s| s.to_element(NS_SERVER)))
    }

    /// Stores the sender's copy (deduped by `msg_id`), then queues the stanza for the peer.
    pub(super) async fn send_remote(
        &self,
        from: &Identity,
        msg_id: &MsgId,
        to: &Jid,
        body: &up::Body,
        copy: down::Body,
    ) -> Result<(), EnvelopeError> {
        let stanza = self.stanza_as(&self.sender_for(from, to), msg_id.as_str(), body)?;
        let deliveries = vec![Delivery {
            user: from.user.clone(),
            origin: Some(from.device.clone()),
            down: v1::Down { id: msg_id.as_str().to_owned(), body: Some(copy), ..Default::default() },
        }];
        let appended = self.append(Some((&from.user, &from.device, msg_id)), deliveries).map_err(internal)?;
        self.store.committer.durable().await.map_err(internal)?;
        if appended == Appended::Duplicate {
            // A resend after a lost PUBACK: the original already went out.
            metrics::counter!("tern_duplicates_dropped_total").increment(1);
            return Ok(());
        }
        if let (Some(s2s), Some(el)) = (self.s2s.get(), stanza) {
            metrics::counter!("tern_s2s_stanzas_out_total").increment(1);
            s2s.send(to.domain(), el);
        }
        Ok(())
    }

    /// Sends an ephemeral stanza (chat state) to a remote peer; failures are ignored.
    pub(super) fn send_remote_ephemeral(&self, from: &Identity, id: &str, to: &Jid, body: &up::Body) {
        if let (Some(s2s), Ok(Some(el))) =
            (self.s2s.get(), self.stanza_as(&self.sender_for(from, to), id, body))
        {
            s2s.send(to.domain(), el);
        }
    }

    /// A stanza from an authenticated peer.
    fn on_remote_stanza(self: &Arc<Self>, el: Element) {
        let stanza = match Stanza::parse(&el) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "s2s stanza does not parse; dropped");
                return;
            }
        };
        metrics::counter!("tern_s2s_stanzas_in_total").increment(1);
        // Nothing from outside may speak for this domain's users. s2s already refuses such a
        // `from` (dialback for our domain can only succeed with our own key), but a component
        // stream trusts its server, so the check lives here, for both.
        let claimed = match &stanza {
            Stanza::Message(m) => m.from.as_ref(),
            Stanza::Presence(p) => p.from.as_ref(),
            Stanza::Iq(i) => i.from.as_ref(),
        };
        if claimed.is_none_or(|from| from.domain() == self.domain) {
            metrics::counter!("tern_s2s_spoofed_total").increment(1);
            tracing::info!(from = ?claimed.map(|j| j.to_string()), "dropped a remote stanza claiming our own domain");
            return;
        }
        if self.on_room_stanza(&stanza) {
            return;
        }
        if let Stanza::Iq(iq) = &stanza {
            let reply = mapping::answer_iq(iq, &self.domain, env!("CARGO_PKG_VERSION"));
            if let (Some(reply), Some(s2s)) = (reply, self.s2s.get()) {
                if let Some(to) = reply.to.clone() {
                    s2s.send(to.domain(), reply.to_element(NS_SERVER));
                }
            }
            return;
        }
        if let Stanza::Message(m) = &stanza {
            if let (Some(error), Some(to)) = (&m.error, &m.to) {
                return self.remote_error(to, m.id.clone().unwrap_or_default(), error);
            }
        }
        if let Stanza::Presence(p) = &stanza {
            let user = p.to.as_ref().and_then(|to| self.local_user(to));
            if let (Some(user), Some(from), PresenceType::Probe) = (user, &p.from, p.type_) {
                return self.remote_probe(&user, from);
            }
        }
        let Some((to, mut body)) = mapping::inbound(&stanza) else { return };
        let user = self.local_user(&to);
        let known = match &user {
            Some(u) => self.store.users.exists(u),
            None => Ok(false),
        };
        let user = match (user, known) {
            (Some(u), Ok(true)) => u,
            (_, Ok(_)) => {
                // RFC 6121 §8.5.2.2.1 (and §8.5.1): a message for an account that does not
                // exist gets service-unavailable; presence is silently dropped.
                if matches!(stanza, Stanza::Message(_)) {
                    let error = StanzaError::new(Condition::ServiceUnavailable);
                    if let (Some(reply), Some(s2s)) = (error_reply(&el, &error), self.s2s.get()) {
                        if let Some(peer) = reply.attr("to").and_then(|t| Jid::parse(t).ok()) {
                            s2s.send(peer.domain(), reply);
                        }
                    }
                }
                return;
            }
            (_, Err(e)) => return tracing::error!(error = %e, "user store failure on an s2s stanza"),
        };
        let id = el.attr("id").unwrap_or_default().to_owned();
        match &mut body {
            down::Body::Chat(chat) => chat.ts = now_ms(),
            down::Body::Subscription(sub) => {
                let (Ok(peer), Ok(kind)) = (Jid::parse(&sub.peer), Kind::try_from(sub.kind)) else { return };
                return self.remote_subscription(user, &peer, kind);
            }
            down::Body::ChatState(_) | down::Body::Presence(_) => {
                // Ephemeral: straight to online devices.
                return self.live(&user, body);
            }
            _ => {}
        }
        let delivery =
            Delivery { user, origin: None, down: v1::Down { id, body: Some(body), ..Default::default() } };
        self.store_soon(vec![delivery]);
    }

    /// Appends now (so sequence numbers follow arrival order) and has the group commit run
    /// soon; the committer wakes the recipients once the entries are durable. Nobody is
    /// acknowledged for these, so there is nothing to wait for here: a crash before the
    /// commit loses them the way a crash loses a stanza still in the socket.
    pub(super) fn store_soon(&self, deliveries: Vec<Delivery>) {
        if let Err(e) = self.append(None, deliveries) {
            tracing::error!(error = %e, "storing an s2s stanza failed");
            return;
        }
        let committer = self.store.committer.clone();
        tokio::spawn(async move {
            if let Err(e) = committer.durable().await {
                tracing::error!(error = %e, "committing s2s stanzas failed");
            }
        });
    }

    /// A peer's error answer to a message one of our users sent: the sender's inbox gets
    /// `Down{id, error}`, as for a bounce (the phone was acknowledged long ago).
    fn remote_error(&self, to: &Jid, id: String, error: &StanzaError) {
        let Some(user) = self.local_user(to) else { return };
        let code = match error.condition {
            Condition::RemoteServerNotFound => Code::RemoteServerNotFound,
            Condition::RemoteServerTimeout => Code::RemoteServerTimeout,
            _ => Code::ServiceUnavailable,
        };
        let error = v1::Error { code: code as i32, text: error.summary() };
        let down = v1::Down { id, body: Some(down::Body::Error(error)), ..Default::default() };
        self.store_soon(vec![Delivery { user, origin: None, down }]);
    }

    /// Stanzas an outbound stream could not deliver: tell their senders.
    fn bounced(&self, stanzas: Vec<Element>, reason: BounceReason) {
        let (code, text) = match reason {
            BounceReason::NotFound => (Code::RemoteServerNotFound, "the peer's server could not be reached"),
            BounceReason::Timeout => (Code::RemoteServerTimeout, "the peer's server did not answer in time"),
        };
        let mut deliveries = Vec::new();
        for el in &stanzas {
            if el.name() == "presence" {
                self.join_bounced(el, code);
                continue;
            }
            // Only messages with a body or receipt were acknowledged to a phone; chat states
            // and iq answers are dropped silently.
            if el.name() != "message"
                || !el.elements().any(|c| matches!(c.name(), "body" | "received" | "displayed"))
            {
                continue;
            }
            let Some(user) =
                el.attr("from").and_then(|f| Jid::parse(f).ok()).and_then(|j| self.local_user(&j))
            else {
                continue;
            };
            let id = el.attr("id").unwrap_or_default().to_owned();
            let error = v1::Error { code: code as i32, text: text.into() };
            deliveries.push(Delivery {
                user,
                origin: None,
                down: v1::Down { id, body: Some(down::Body::Error(error)), ..Default::default() },
            });
        }
        if !deliveries.is_empty() {
            self.store_soon(deliveries);
        }
    }
}
