//! One c2s connection (RFC 6120): TCP, SASL PLAIN (RFC 4616), resource binding, initial
//! presence (RFC 6121 §4.2), then stanzas both ways; every byte either way is counted.
//!
//! Plaintext only: the bench runs on loopback, where the MQTT phones are plaintext too, so the
//! byte counts of both links compare like with like. tern-bridge's sans-IO stream decoder does
//! all the XML.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use tern_bridge::stanza::{Presence, PresenceType};
use tern_bridge::stream::{stream_close, stream_header, NS_CLIENT};
use tern_bridge::{Element, Jid, Limits, StreamDecoder, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// The SASL PLAIN initial response (RFC 4616 §2: authzid NUL authcid NUL password, here with
/// an empty authzid), base64 as RFC 6120 §6.4.2 carries it.
fn plain_token(local: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{local}\0{password}"))
}

/// A logged-in c2s stream: the socket halves and the decoder of the server's stream.
pub struct Conn {
    /// The full JID the server bound.
    pub jid: Jid,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    decoder: StreamDecoder,
    /// Events decoded but not yet handed out.
    pending: std::collections::VecDeque<StreamEvent>,
    buf: Vec<u8>,
    /// Bytes read from the server so far.
    pub bytes_in: u64,
    /// Bytes written to the server so far.
    pub bytes_out: u64,
}

/// A login that has passed SASL: the restarted stream's features, before binding.
pub struct Authenticated {
    /// The connection, on its second stream.
    pub conn: Conn,
    /// The `<stream:features/>` of that stream (bind, and XEP-0198 `<sm/>` if offered).
    pub features: Element,
}

impl Conn {
    /// Connects to `addr`, authenticates `user` (a bare JID) with `password`, binds `resource`
    /// and sends initial presence, all within `limit`.
    pub async fn login(
        addr: SocketAddr,
        user: &Jid,
        password: &str,
        resource: &str,
        limit: Duration,
    ) -> anyhow::Result<Conn> {
        Self::login_from(addr, None, user, password, resource, limit).await
    }

    /// [`Conn::login`] from the local address `source` (any port), when one address would run
    /// out of ports.
    pub async fn login_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
        user: &Jid,
        password: &str,
        resource: &str,
        limit: Duration,
    ) -> anyhow::Result<Conn> {
        let login = async {
            let Authenticated { mut conn, features } =
                Self::authenticate(addr, source, user, password).await?;
            conn.bind(&features, resource).await?;
            conn.send_initial_presence().await?;
            anyhow::Ok(conn)
        };
        tokio::time::timeout(limit, login)
            .await
            .with_context(|| format!("c2s login of {user} took over {limit:?}"))?
    }

    /// TCP from `source`, a stream, SASL PLAIN and the stream restart after it (RFC 6120
    /// §6.4.6); stops before binding, where XEP-0198 resumption would go instead.
    pub async fn authenticate(
        addr: SocketAddr,
        source: Option<IpAddr>,
        user: &Jid,
        password: &str,
    ) -> anyhow::Result<Authenticated> {
        let stream = crate::raw_mqtt::tcp_from(addr, source).await?;
        let (reader, writer) = stream.into_split();
        let mut c = Conn {
            jid: user.clone(),
            reader,
            writer,
            decoder: StreamDecoder::new(Limits::default()),
            pending: Default::default(),
            buf: vec![0; 16 * 1024],
            bytes_in: 0,
            bytes_out: 0,
        };
        let local = user.local().context("a c2s user needs a localpart")?;

        let features = c.open_stream(user.domain()).await?;
        let mechanisms = features.child("mechanisms", NS_SASL).context("no SASL offered")?;
        if !mechanisms.elements().any(|m| m.text() == "PLAIN") {
            bail!("the server does not offer SASL PLAIN (c2s_require_encryption on?)");
        }
        let auth = Element::new("auth", NS_SASL).with_attr("mechanism", "PLAIN");
        c.send(&auth.with_text(plain_token(local, password))).await?;
        let answer = c.next_element().await?;
        if !answer.is("success", NS_SASL) {
            bail!("SASL PLAIN for {user} failed: {answer}");
        }
        c.decoder.reset();
        let features = c.open_stream(user.domain()).await?;
        Ok(Authenticated { conn: c, features })
    }

    /// Binds `resource` (RFC 6120 §7) on a stream that offers it (`features`), and opens the
    /// RFC 3921 session where a server still requires one.
    pub async fn bind(&mut self, features: &Element, resource: &str) -> anyhow::Result<()> {
        if features.child("bind", NS_BIND).is_none() {
            bail!("no resource binding offered after SASL: {features}");
        }
        let bind =
            Element::new("bind", NS_BIND).with_child(Element::new("resource", NS_BIND).with_text(resource));
        let result = self.iq_set("bind", bind).await?;
        let bound = result.child("bind", NS_BIND).and_then(|b| b.child("jid", NS_BIND)).map(|j| j.text());
        self.jid = Jid::parse(bound.as_deref().context("bind result without a JID")?)?;
        // Only servers that still require RFC 3921 sessions get the extra round trip.
        if let Some(session) = features.child("session", NS_SESSION) {
            if session.child("optional", NS_SESSION).is_none() {
                self.iq_set("session", Element::new("session", NS_SESSION)).await?;
            }
        }
        Ok(())
    }

    /// Sends our stream header; returns the server's `<stream:features/>`.
    async fn open_stream(&mut self, domain: &str) -> anyhow::Result<Element> {
        let header = stream_header(NS_CLIENT, domain, "", None, false);
        self.send_raw(&header).await?;
        match self.next_event().await? {
            StreamEvent::Open { .. } => {}
            other => bail!("expected the server's stream header, got {other:?}"),
        }
        let features = self.next_element().await?;
        if features.name() != "features" {
            bail!("expected stream features, got {features}");
        }
        Ok(features)
    }

    /// An iq of type set with `payload`; returns the result, or fails on anything else.
    async fn iq_set(&mut self, id: &str, payload: Element) -> anyhow::Result<Element> {
        let iq =
            Element::new("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", id).with_child(payload);
        self.send(&iq).await?;
        loop {
            let el = self.next_element().await?;
            if el.name() == "iq" && el.attr("id") == Some(id) {
                if el.attr("type") != Some("result") {
                    bail!("iq {id} failed: {el}");
                }
                return Ok(el);
            }
        }
    }

    /// Initial presence (RFC 6121 §4.2): the session becomes available.
    pub async fn send_initial_presence(&mut self) -> anyhow::Result<()> {
        self.send(&Presence::new(PresenceType::Available).to_element(NS_CLIENT)).await
    }

    /// A roster get and its result: the server has handled everything we sent before it (it
    /// processes one stream in order). Elements arriving meanwhile are dropped.
    pub async fn round_trip(&mut self) -> anyhow::Result<()> {
        let query = Element::new("query", "jabber:iq:roster");
        let iq =
            Element::new("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "sync").with_child(query);
        self.send(&iq).await?;
        loop {
            let el = self.next_element().await?;
            if el.name() == "iq" && el.attr("id") == Some("sync") {
                return Ok(());
            }
        }
    }

    /// Writes one element as a child of our stream.
    pub async fn send(&mut self, el: &Element) -> anyhow::Result<()> {
        let mut out = String::with_capacity(256);
        el.write_in_stream(NS_CLIENT, &mut out);
        self.send_raw(&out).await
    }

    /// Writes already serialised stanzas (several at once: one syscall, same bytes).
    pub async fn send_raw(&mut self, out: &str) -> anyhow::Result<()> {
        self.writer.write_all(out.as_bytes()).await?;
        self.bytes_out += out.len() as u64;
        Ok(())
    }

    /// Whether events are decoded and waiting, so that the next `next_event` will not read.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next element of the server's stream; its close or a stream error is an error.
    pub async fn next_element(&mut self) -> anyhow::Result<Element> {
        match self.next_event().await? {
            StreamEvent::Element(el)
                if el.name() == "error" && el.ns() == tern_bridge::stream::NS_STREAMS =>
            {
                bail!("stream error from the server: {el}")
            }
            StreamEvent::Element(el) => Ok(el),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    /// The next event of the server's stream, reading as needed (cancel-safe: a read that is
    /// dropped half-way has consumed nothing).
    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            let n = self.reader.read(&mut self.buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.bytes_in += n as u64;
            let events = self
                .decoder
                .feed(&self.buf[..n])
                .map_err(|e| anyhow::anyhow!("bad XML from the server: {e}"))?;
            self.pending.extend(events);
        }
    }

    /// Drops the TCP connection with a reset and no stream close, as a phone losing its network.
    pub fn abort(self) {
        // Both halves are needed back to reach the socket; SO_LINGER 0 makes close() send RST.
        if let Ok(stream) = self.reader.reunite(self.writer) {
            let _ = stream.set_zero_linger();
        }
    }

    /// Closes our stream politely and waits (bounded) for the server's close.
    pub async fn close(mut self) {
        let _ = self.send_raw(stream_close()).await;
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            while let Ok(ev) = self.next_event().await {
                if ev == StreamEvent::Close {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_token_is_authzid_nul_authcid_nul_password() {
        // RFC 4616 §4's example user and password, with an empty authzid.
        assert_eq!(plain_token("tim", "tanstaaftanstaaf"), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    }
}
