//! A phone's connection in the session scenarios, whichever protocol it speaks: raw MQTT 3.1.1
//! to tern and mosquitto, or an XMPP c2s stream to Prosody. The scenarios read, keep alive,
//! close and drop it the same way; what differs per protocol is here.

use std::time::Duration;

use anyhow::Context;
use tern_bridge::stanza::Message;
use tern_bridge::stream::NS_CLIENT;
use tern_bridge::{Element, Jid, StreamEvent};
use tokio::time::Instant;

use super::{chat_of, send_all, Phone, System, Target, CONNECT_LIMIT};
use crate::raw_mqtt::{self, Packet};
use crate::xmpp::conn::Conn as C2sConn;
use crate::xmpp::smacks::{self, Managed};

/// One phone's live connection.
pub(crate) enum Link {
    Mqtt(raw_mqtt::Conn),
    Xmpp(Box<C2s>),
}

/// A c2s stream, stream-managed (XEP-0198) or not.
pub(crate) struct C2s {
    pub(crate) conn: C2sConn,
    pub(crate) sm: Option<Managed>,
}

/// Something the server sent, not yet acted on.
pub(crate) enum Incoming {
    Mqtt(Packet),
    Xmpp(Element),
}

/// A chat message to send: to `peer` (a user name; tern and Prosody) or on `topic` (mosquitto),
/// the `k`th message id, the send time in the body.
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) peer: String,
    pub(crate) k: u64,
    pub(crate) sent_us: u64,
}

impl Link {
    /// Bytes both ways so far.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Link::Mqtt(c) => c.bytes_in + c.bytes_out,
            Link::Xmpp(x) => x.conn.bytes_in + x.conn.bytes_out,
        }
    }

    /// The MQTT connection, for what only MQTT does (subscriptions to mosquitto).
    pub(crate) fn mqtt(&mut self) -> anyhow::Result<&mut raw_mqtt::Conn> {
        match self {
            Link::Mqtt(c) => Ok(c),
            Link::Xmpp(_) => anyhow::bail!("not an MQTT connection"),
        }
    }

    /// The next packet or element from the server (cancel-safe: nothing is lost if dropped).
    pub(crate) async fn read(&mut self) -> anyhow::Result<Incoming> {
        match self {
            Link::Mqtt(c) => Ok(Incoming::Mqtt(c.read().await?)),
            Link::Xmpp(x) => match x.conn.next_event().await? {
                StreamEvent::Element(el) => Ok(Incoming::Xmpp(el)),
                other => anyhow::bail!("the server's stream ended: {other:?}"),
            },
        }
    }

    /// Acknowledges what needs it (PUBACK; XEP-0198 counts and acks) and returns the chat
    /// message it carried, as (id, body).
    pub(crate) async fn handle(
        &mut self,
        system: System,
        what: Incoming,
    ) -> anyhow::Result<Option<(String, String)>> {
        match (self, what) {
            (Link::Mqtt(c), Incoming::Mqtt(p)) => {
                let Some(publish) = p.publish() else { return Ok(None) };
                let chat = chat_of(system, &publish);
                if let Some(id) = publish.packet_id {
                    c.puback(id).await?;
                }
                Ok(chat)
            }
            (Link::Xmpp(x), Incoming::Xmpp(el)) => {
                if let Some(sm) = &mut x.sm {
                    sm.on_element(&mut x.conn, &el).await?;
                }
                if el.name() != "message" {
                    return Ok(None);
                }
                let m = Message::parse(&el).map_err(|e| anyhow::anyhow!("unparsable message: {e}"))?;
                Ok(m.id.zip(m.body))
            }
            _ => anyhow::bail!("a packet of the other protocol"),
        }
    }

    /// Reads until the server sends something, handles it, returns its chat message if any.
    pub(crate) async fn next_chat(&mut self, system: System) -> anyhow::Result<Option<(String, String)>> {
        let what = self.read().await?;
        self.handle(system, what).await
    }

    /// Waits until the server has made this session available (XMPP: its initial presence
    /// reflected), so that a message sent next is not stored offline instead; MQTT: at once.
    pub(crate) async fn settle(&mut self) -> anyhow::Result<()> {
        let Link::Xmpp(x) = self else { return Ok(()) };
        while x.conn.next_element().await?.name() != "presence" {}
        Ok(())
    }

    /// The keepalive: PINGREQ (answered by PINGRESP), or one space between XMPP stanzas (RFC
    /// 6120 §4.6.1, unanswered).
    pub(crate) async fn keepalive(&mut self) -> anyhow::Result<()> {
        match self {
            Link::Mqtt(c) => c.pingreq().await,
            Link::Xmpp(x) => x.conn.send_raw(" ").await,
        }
    }

    /// Closes cleanly: DISCONNECT, or (after acknowledging what came in) the stream's close.
    pub(crate) async fn close(self) {
        match self {
            Link::Mqtt(mut c) => c.disconnect().await,
            Link::Xmpp(mut x) => {
                if let Some(sm) = &x.sm {
                    let _ = x.conn.send(&sm.ack()).await;
                }
                x.conn.close().await
            }
        }
    }

    /// Drops the TCP connection with a reset, saying nothing, as a phone losing its network.
    pub(crate) fn abort(self) {
        match self {
            Link::Mqtt(c) => c.abort(),
            Link::Xmpp(x) => x.conn.abort(),
        }
    }

    /// Sends every message and waits until the server has them: MQTT at QoS 1 with at most
    /// `window` unacknowledged, then every PUBACK; XMPP (no acknowledgements without
    /// XEP-0198) flat out, then one iq round trip.
    pub(crate) async fn send_chats(
        &mut self,
        t: &Target,
        messages: impl IntoIterator<Item = Outgoing>,
        window: usize,
    ) -> anyhow::Result<u64> {
        match self {
            Link::Mqtt(c) => {
                let domain = t.domain.clone();
                let packets = messages.into_iter().map(|m| {
                    let peer = if m.peer.is_empty() { String::new() } else { format!("{}@{domain}", m.peer) };
                    (m.topic, crate::chat::chat_up(m.k, &peer, m.sent_us))
                });
                send_all(c, packets, window).await
            }
            Link::Xmpp(x) => {
                let (mut sent, mut out) = (0, String::new());
                for m in messages {
                    let peer = Jid::parse(&format!("{}@{}", m.peer, t.domain))?;
                    out.clear();
                    crate::xmpp::drivers::chat_message(m.k, &peer, m.sent_us, false)
                        .write_in_stream(NS_CLIENT, &mut out);
                    x.conn.send_raw(&out).await?;
                    sent += 1;
                }
                x.conn.round_trip().await?;
                Ok(sent)
            }
        }
    }
}

/// The bare JID of a phone's user on Prosody.
pub(crate) fn jid_of(t: &Target, phone: &Phone) -> anyhow::Result<Jid> {
    Ok(Jid::parse(&format!("{}@{}", phone.user, t.domain))?)
}

/// A c2s login as the MQTT phones' equivalent: SASL PLAIN, bind, initial presence (tern makes
/// a phone available when it connects). Returns the stream and the time it took.
pub(crate) async fn c2s_login(t: &Target, phone: &Phone, password: &str) -> anyhow::Result<(C2s, Duration)> {
    let start = Instant::now();
    let jid = jid_of(t, phone)?;
    let conn =
        C2sConn::login_from(t.addr, phone.source, &jid, password, &phone.client_id, CONNECT_LIMIT).await?;
    Ok((C2s { conn, sm: None }, start.elapsed()))
}

/// A c2s login with XEP-0198 resumption enabled before initial presence; returns once the
/// server has reflected that presence, so that the session is fully set up before it drops.
pub(crate) async fn c2s_login_managed(t: &Target, phone: &Phone, password: &str) -> anyhow::Result<C2s> {
    let setup = async {
        let jid = jid_of(t, phone)?;
        let a = C2sConn::authenticate(t.addr, phone.source, &jid, password).await?;
        let mut conn = a.conn;
        anyhow::ensure!(a.features.child("sm", smacks::NS_SM).is_some(), "no XEP-0198 offered (smacks)");
        conn.bind(&a.features, &phone.client_id).await?;
        let mut sm = smacks::enable(&mut conn).await?;
        conn.send_initial_presence().await?;
        loop {
            let el = conn.next_element().await?;
            sm.on_element(&mut conn, &el).await?;
            if el.name() == "presence" {
                return anyhow::Ok(C2s { conn, sm: Some(sm) });
            }
        }
    };
    tokio::time::timeout(CONNECT_LIMIT, setup).await.context("c2s login took over 30 s")?
}
