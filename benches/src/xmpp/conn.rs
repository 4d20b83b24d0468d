//! One c2s connection (RFC 6120): TCP, SASL PLAIN (RFC 4616), resource binding, initial
//! presence (RFC 6121 §4.2), then stanzas both ways.
//!
//! Plaintext only: the bench runs on loopback, where the MQTT phones are plaintext too, so the
//! byte counts of both links compare like with like. tern-bridge's sans-IO stream decoder does
//! all the XML.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use tern_bridge::stanza::{Presence, PresenceType};
use tern_bridge::stream::{stream_close, stream_header, NS_CLIENT};
use tern_bridge::{Element, Jid, Limits, StreamDecoder, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

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
        tokio::time::timeout(limit, Self::login_inner(addr, user, password, resource))
            .await
            .with_context(|| format!("c2s login of {user} took over {limit:?}"))?
    }

    async fn login_inner(
        addr: SocketAddr,
        user: &Jid,
        password: &str,
        resource: &str,
    ) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut c = Conn {
            jid: user.clone(),
            reader,
            writer,
            decoder: StreamDecoder::new(Limits::default()),
            pending: Default::default(),
            buf: vec![0; 16 * 1024],
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

        // RFC 6120 §6.4.6: a fresh stream after SASL success, then bind (§7).
        c.decoder.reset();
        let features = c.open_stream(user.domain()).await?;
        if features.child("bind", NS_BIND).is_none() {
            bail!("no resource binding offered after SASL: {features}");
        }
        let bind =
            Element::new("bind", NS_BIND).with_child(Element::new("resource", NS_BIND).with_text(resource));
        let result = c.iq_set("bind", bind).await?;
        let bound = result.child("bind", NS_BIND).and_then(|b| b.child("jid", NS_BIND)).map(|j| j.text());
        c.jid = Jid::parse(bound.as_deref().context("bind result without a JID")?)?;
        // RFC 3921 sessions: only servers that still require them get the extra round trip.
        if let Some(session) = features.child("session", NS_SESSION) {
            if session.child("optional", NS_SESSION).is_none() {
                c.iq_set("session", Element::new("session", NS_SESSION)).await?;
            }
        }
        c.send(&Presence::new(PresenceType::Available).to_element(NS_CLIENT)).await?;
        Ok(c)
    }

    /// Sends our stream header; returns the server's `<stream:features/>`.
    async fn open_stream(&mut self, domain: &str) -> anyhow::Result<Element> {
        let header = stream_header(NS_CLIENT, domain, "", None, false);
        self.writer.write_all(header.as_bytes()).await?;
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

    /// Writes one element as a child of our stream.
    pub async fn send(&mut self, el: &Element) -> anyhow::Result<()> {
        let mut out = String::with_capacity(256);
        el.write_in_stream(NS_CLIENT, &mut out);
        self.writer.write_all(out.as_bytes()).await?;
        Ok(())
    }

    /// Writes already serialised stanzas (several at once: one syscall, same bytes).
    pub async fn send_raw(&mut self, out: &str) -> anyhow::Result<()> {
        self.writer.write_all(out.as_bytes()).await?;
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
            let events = self
                .decoder
                .feed(&self.buf[..n])
                .map_err(|e| anyhow::anyhow!("bad XML from the server: {e}"))?;
            self.pending.extend(events);
        }
    }

    /// Closes our stream politely and waits (bounded) for the server's close.
    pub async fn close(mut self) {
        let _ = self.writer.write_all(stream_close().as_bytes()).await;
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
