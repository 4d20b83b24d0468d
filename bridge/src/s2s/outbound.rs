//! The initiating side of a server-to-server stream (RFC 6120 §4–6, XEP-0178, XEP-0220 §2.1):
//! header, STARTTLS, SASL EXTERNAL or dialback, then our stanzas to the peer.

use std::time::Instant;

use super::conn::{check_header, peer_error, Conn};
use super::dialback::{result_request, verify_request};
use super::sasl::{auth_external, offers_external, SaslError, NS_SASL};
use super::{AuthMethod, Config, Failure, Output, PeerCert, TlsPolicy};
use crate::stream::{
    stream_header, Element, StreamError, StreamEvent, NS_DIALBACK, NS_SERVER, NS_STREAMS, NS_TLS,
};

/// Where the negotiation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our header is out; waiting for the peer's.
    AwaitHeader,
    /// Waiting for `<stream:features/>`.
    AwaitFeatures,
    /// `<starttls/>` sent; waiting for `<proceed/>`.
    AwaitProceed,
    /// The driver is doing the TLS handshake.
    AwaitTls,
    /// `<auth mechanism='EXTERNAL'/>` sent; waiting for `<success/>` or `<failure/>`.
    AwaitSasl,
    /// `<db:result/>` sent; waiting for the verdict.
    AwaitResult,
    /// Authenticated: stanzas flow.
    Ready,
    /// Closed; inert.
    Done,
}

/// A `<db:verify/>` we send for the daemon, acting as a receiving server (XEP-0220 §2.1.2).
#[derive(Debug, Clone)]
struct Verify {
    from: String,
    to: String,
    id: String,
    key: String,
}

/// An outbound s2s stream from `local` to `peer`.
pub struct Outbound {
    conn: Conn,
    local: String,
    peer: String,
    state: State,
    /// The peer's stream id for the current (post-restart) stream; dialback keys cover it.
    stream_id: String,
    /// Stanzas waiting for authentication, in order.
    queue: Vec<Element>,
    /// Verify requests not yet sendable (before features) and ones awaiting an answer.
    verify_pending: Vec<Verify>,
    verify_sent: Vec<Verify>,
    /// Connect/authentication deadline.
    deadline: Instant,
    /// The peer's certificate as the driver verified it (`Absent` before TLS).
    peer_cert: PeerCert,
    /// Whether the peer's latest features offered dialback (XEP-0220 §2.1).
    peer_offers_dialback: bool,
    /// How we authenticated, once we have; after SASL success this is set across the restart.
    method: Option<AuthMethod>,
}

impl Outbound {
    /// Starts a stream from our domain `local` to `peer`; the header goes out immediately.
    pub fn new(config: Config, local: &str, peer: &str, now: Instant) -> Self {
        let deadline = now + config.connect_timeout;
        let mut out = Outbound {
            conn: Conn::new(config, now),
            local: local.to_owned(),
            peer: peer.to_owned(),
            state: State::AwaitHeader,
            stream_id: String::new(),
            queue: Vec::new(),
            verify_pending: Vec::new(),
            verify_sent: Vec::new(),
            deadline,
            peer_cert: PeerCert::Absent,
            peer_offers_dialback: false,
            method: None,
        };
        out.send_header(now);
        out
    }

    /// The peer domain this stream goes to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the stream is authenticated and not closed.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// How we authenticated to the peer, once we have.
    pub fn auth_method(&self) -> Option<AuthMethod> {
        self.method
    }

    /// Sends a stanza, or queues it until the stream is ready. On a dead stream it comes
    /// straight back as [`Output::Bounced`].
    pub fn send_stanza(&mut self, stanza: Element, now: Instant) {
        match self.state {
            State::Ready => self.conn.send_element(&stanza, now),
            State::Done => self.conn.emit(Output::Bounced(vec![stanza])),
            _ => self.queue.push(stanza),
        }
    }

    /// Asks the peer, as authoritative server for `to`, whether `key` is valid for a stream
    /// `id` that `to` opened to our domain `from` (XEP-0220 §2.1.2). The answer comes back as
    /// [`Output::VerifyResult`]; `<db:verify/>` needs no authentication of this stream.
    pub fn send_verify(&mut self, from: &str, to: &str, id: &str, key: &str, now: Instant) {
        let verify =
            Verify { from: from.to_owned(), to: to.to_owned(), id: id.to_owned(), key: key.to_owned() };
        match self.state {
            State::AwaitResult | State::Ready => self.write_verify(verify, now),
            State::Done => self.conn.emit(verify_failed(&verify)),
            _ => self.verify_pending.push(verify),
        }
    }

    /// Feeds bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.state == State::Done || self.state == State::AwaitTls {
            return;
        }
        if bytes.is_empty() {
            // An empty read carries nothing, and an empty feed in the middle of a `<?...?>`
            // currently confuses the decoder's resumable scan, so it never gets one.
            return;
        }
        let events = match self.conn.decoder.feed(bytes) {
            Ok(events) => events,
            Err(err) => return self.fail(Failure::Sent(err), now),
        };
        self.conn.restarted = false;
        for event in events {
            // After `<proceed/>` anything else in the same read predates TLS and must not be
            // trusted (the STARTTLS command-injection class of bugs), so it is dropped; the
            // same goes for anything after `<success/>`, which predates the stream restart.
            if self.conn.restarted || matches!(self.state, State::Done | State::AwaitTls) {
                break;
            }
            self.handle_event(event, now);
        }
    }

    /// The driver finished the TLS handshake and verified the peer's certificate chain as
    /// `peer_cert`: restart the stream (RFC 6120 §5.4.3.3).
    pub fn tls_established(&mut self, peer_cert: PeerCert, now: Instant) {
        if self.state != State::AwaitTls {
            return;
        }
        self.conn.tls = true;
        self.peer_cert = peer_cert;
        self.restart(now);
    }

    /// Opens a fresh stream on the same connection (after TLS or SASL).
    fn restart(&mut self, now: Instant) {
        self.conn.decoder.reset();
        self.conn.restarted = true;
        self.stream_id.clear();
        self.state = State::AwaitHeader;
        self.send_header(now);
    }

    /// Closes the stream from our side; queued stanzas come back in [`Output::Bounced`]
    /// (empty if none) before [`Output::Close`].
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.conn.send_close(now);
        self.finish();
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.conn.poll_output()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done => None,
            State::Ready => self.conn.poll_timeout(),
            _ => Some(self.conn.poll_timeout().map_or(self.deadline, |t| t.min(self.deadline))),
        }
    }

    /// Fires whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        if self.state != State::Ready && now >= self.deadline {
            return self.fail(Failure::Timeout, now);
        }
        if self.conn.handle_timeout(now) {
            if self.state == State::Ready {
                // An idle, authenticated stream simply ends; the daemon reconnects on demand.
                self.close(now);
            } else {
                self.fail(Failure::Timeout, now);
            }
        }
    }

    fn send_header(&mut self, now: Instant) {
        let header = stream_header(NS_SERVER, &self.peer, &self.local, None, true);
        self.conn.send_raw(&header, now);
        self.conn.writable = true;
    }

    fn handle_event(&mut self, event: StreamEvent, now: Instant) {
        let element = match event {
            StreamEvent::Open { attrs } => {
                if let Err(err) = check_header(&attrs) {
                    return self.fail(Failure::Sent(err), now);
                }
                // Dialback keys are bound to the receiving server's stream id (XEP-0185).
                match attrs.iter().find(|(n, _)| n == "id") {
                    Some((_, id)) if !id.is_empty() => self.stream_id = id.clone(),
                    _ => return self.fail(Failure::Sent(StreamError::InvalidXml), now),
                }
                self.state = State::AwaitFeatures;
                return;
            }
            StreamEvent::Close => {
                return match self.state {
                    State::Ready => self.close(now),
                    _ => self.fail(Failure::PeerClosed, now),
                };
            }
            StreamEvent::Element(element) => element,
        };
        self.conn.received(now);
        if element.is("error", NS_STREAMS) {
            return self.fail(Failure::Received(peer_error(&element)), now);
        }
        match self.state {
            State::AwaitFeatures if element.is("features", NS_STREAMS) => self.on_features(&element, now),
            State::AwaitProceed if element.is("proceed", NS_TLS) => {
                self.conn.writable = false;
                self.state = State::AwaitTls;
                self.conn.emit(Output::StartTls);
            }
            State::AwaitProceed if element.is("failure", NS_TLS) => self.fail(Failure::TlsUnavailable, now),
            State::AwaitSasl if element.is("success", NS_SASL) => {
                // RFC 6120 §6.4.6: authenticated; the stream restarts and the next features
                // make us ready.
                self.method = Some(AuthMethod::SaslExternal);
                self.restart(now);
            }
            State::AwaitSasl if element.is("failure", NS_SASL) => {
                self.on_sasl_failure(SaslError::from_failure(&element), now)
            }
            State::AwaitResult | State::Ready if element.ns() == NS_DIALBACK => {
                self.on_dialback(&element, now)
            }
            // Streams are unidirectional: a peer must not send stanzas on our stream.
            _ => self.fail(Failure::Sent(StreamError::UnsupportedStanzaType), now),
        }
    }

    fn on_features(&mut self, features: &Element, now: Instant) {
        let policy = self.conn.config.tls;
        if !self.conn.tls {
            match features.child("starttls", NS_TLS) {
                Some(_) if policy != TlsPolicy::Disabled => {
                    self.conn.send_element(&Element::new("starttls", NS_TLS), now);
                    self.state = State::AwaitProceed;
                    return;
                }
                Some(offer) if offer.child("required", NS_TLS).is_some() => {
                    return self.fail(Failure::TlsUnavailable, now)
                }
                None if policy == TlsPolicy::Required => return self.fail(Failure::TlsUnavailable, now),
                _ => {}
            }
        }
        if self.method == Some(AuthMethod::SaslExternal) {
            return self.ready(now);
        }
        // Without fallback, the peer must prove its name by certificate, whichever way we
        // authenticate ourselves (XEP-0178 §4: the initiating server checks the receiver too).
        if !self.conn.config.dialback_fallback {
            if let Err(err) = self.peer_cert.check(&self.peer) {
                return self.fail(Failure::Certificate(err), now);
            }
        }
        self.peer_offers_dialback = features.child("dialback", super::NS_DIALBACK_FEATURE).is_some();
        if self.conn.tls && self.conn.config.client_cert && offers_external(features) {
            // XEP-0178 §3: our certificate speaks for our domain.
            self.conn.send_element(&auth_external(&self.local), now);
            self.state = State::AwaitSasl;
            return;
        }
        self.start_dialback(now);
    }

    /// The peer refused our certificate: dialback takes over if both sides allow it.
    fn on_sasl_failure(&mut self, err: SaslError, now: Instant) {
        if self.conn.config.dialback_fallback && self.peer_offers_dialback {
            return self.start_dialback(now);
        }
        self.fail(Failure::SaslRejected(err), now);
    }

    /// XEP-0220 §2.1.1: claim our domain with a key the peer can check with us.
    fn start_dialback(&mut self, now: Instant) {
        let key = self.conn.config.keyer.key(&self.peer, &self.local, &self.stream_id);
        self.conn.send_element(&result_request(&self.local, &self.peer, &key), now);
        self.state = State::AwaitResult;
        self.flush_verifies(now);
    }

    /// Writes the `<db:verify/>` requests that waited for a usable stream.
    fn flush_verifies(&mut self, now: Instant) {
        for verify in std::mem::take(&mut self.verify_pending) {
            self.write_verify(verify, now);
        }
    }

    /// Authenticated: stanzas queued so far go out in order.
    fn ready(&mut self, now: Instant) {
        self.state = State::Ready;
        self.conn.emit(Output::Ready);
        for stanza in std::mem::take(&mut self.queue) {
            self.conn.send_element(&stanza, now);
        }
        self.flush_verifies(now);
    }

    fn on_dialback(&mut self, element: &Element, now: Instant) {
        let kind = element.attr("type");
        if element.name() == "verify" {
            let (from, to, id) = (element.attr("from"), element.attr("to"), element.attr("id"));
            // The answer swaps from/to relative to our request.
            let pos = self.verify_sent.iter().position(|v| {
                Some(v.to.as_str()) == from && Some(v.from.as_str()) == to && Some(v.id.as_str()) == id
            });
            if let Some(verify) = pos.map(|i| self.verify_sent.remove(i)) {
                let valid = kind == Some("valid");
                let Verify { from, to, id, .. } = verify;
                self.conn.emit(Output::VerifyResult { from, to, id, valid });
            }
            return;
        }
        if element.name() != "result" || self.state != State::AwaitResult {
            return;
        }
        if element.attr("from") != Some(self.peer.as_str()) || element.attr("to") != Some(self.local.as_str())
        {
            return;
        }
        match kind {
            Some("valid") => {
                self.method = Some(AuthMethod::Dialback);
                self.ready(now);
            }
            _ => self.fail(Failure::DialbackRejected, now),
        }
    }

    fn write_verify(&mut self, verify: Verify, now: Instant) {
        self.conn.send_element(&verify_request(&verify.from, &verify.to, &verify.id, &verify.key), now);
        self.verify_sent.push(verify);
    }

    /// Ends the stream with `failure`: error or close out, `Failed`, then everything owed back.
    fn fail(&mut self, failure: Failure, now: Instant) {
        if self.state == State::Done {
            return;
        }
        match failure {
            Failure::Sent(err) => self.conn.send_error(err, now),
            other => {
                self.conn.send_close(now);
                self.conn.emit(Output::Failed(other));
            }
        }
        self.finish();
    }

    /// Bounces the queue, fails outstanding verifies, and stops.
    fn finish(&mut self) {
        self.state = State::Done;
        let queued = std::mem::take(&mut self.queue);
        self.conn.emit(Output::Bounced(queued));
        let verifies: Vec<Verify> = self.verify_pending.drain(..).chain(self.verify_sent.drain(..)).collect();
        for verify in &verifies {
            self.conn.emit(verify_failed(verify));
        }
        self.conn.finish();
    }
}

/// A verify that can never be answered reports invalid: dialback fails closed.
fn verify_failed(verify: &Verify) -> Output {
    Output::VerifyResult {
        from: verify.from.clone(),
        to: verify.to.clone(),
        id: verify.id.clone(),
        valid: false,
    }
}
