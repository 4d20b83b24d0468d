//! The receiving side of a server-to-server stream (RFC 6120 §4–6, §13; XEP-0178; XEP-0220 §2):
//! header checks, STARTTLS, SASL EXTERNAL, dialback verdicts, the authoritative `<db:verify/>`
//! role, and validated stanzas from the peer.

use std::time::Instant;

use super::conn::{check_header, peer_error, Conn};
use super::dialback::{answer_verify, result_answer};
use super::sasl::{self, SaslError, NS_SASL};
use super::{AuthMethod, Config, Failure, Output, PeerCert, TlsPolicy, NS_DIALBACK_FEATURE};
use crate::stream::{stream_header, Element, StreamEvent, NS_DIALBACK, NS_SERVER, NS_STREAMS, NS_TLS};
use crate::{Jid, StreamError};

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's header (at the start or after the TLS restart).
    AwaitHeader,
    /// Headers and features exchanged; elements flow.
    Open,
    /// `<proceed/>` sent; the driver is doing the TLS handshake.
    AwaitTls,
    /// Closed; inert.
    Done,
}

/// An inbound s2s stream: a peer connected to us.
pub struct Inbound {
    conn: Conn,
    state: State,
    /// Our id for the current stream; the peer's dialback keys must cover it.
    stream_id: String,
    /// Whether our header for the current stream is out.
    header_sent: bool,
    /// (peer domain, our domain) pairs awaiting the daemon's verdict.
    pending: Vec<(String, String)>,
    /// (peer domain, our domain) pairs dialback authenticated on this stream.
    authed: Vec<(String, String)>,
    /// Authentication deadline; cleared once a domain is authenticated.
    deadline: Option<Instant>,
    /// Token bucket for the per-peer element rate, in elements.
    tokens: f64,
    refilled: Instant,
    /// The peer's certificate as the driver verified it (`Absent` before TLS).
    peer_cert: PeerCert,
    /// The `from` and (our) `to` of the peer's current stream header.
    header_from: String,
    header_to: String,
    /// Whether SASL succeeded; the restarted stream then offers nothing more.
    sasl_done: bool,
    /// Refused `<auth/>` attempts so far on this connection.
    sasl_failures: u8,
}

/// Refused `<auth/>` attempts after which the stream is closed (RFC 6120 §6.4.5 leaves the
/// number to the server; a peer with a valid certificate needs one).
const MAX_SASL_FAILURES: u8 = 3;

/// Dialback claims awaiting their authoritative server's verdict on one stream. Each starts an
/// outbound connection to a domain the peer names, so a peer may not queue up many.
const MAX_PENDING_DIALBACK: usize = 32;

impl Inbound {
    /// A peer just connected; `stream_id` must be fresh and unpredictable (dialback keys are
    /// bound to it).
    pub fn new(config: Config, stream_id: &str, now: Instant) -> Self {
        let deadline = Some(now + config.connect_timeout);
        let tokens = f64::from(config.stanza_burst.max(1));
        Inbound {
            conn: Conn::new(config, now),
            state: State::AwaitHeader,
            stream_id: stream_id.to_owned(),
            header_sent: false,
            pending: Vec::new(),
            authed: Vec::new(),
            deadline,
            tokens,
            refilled: now,
            peer_cert: PeerCert::Absent,
            header_from: String::new(),
            header_to: String::new(),
            sasl_done: false,
            sasl_failures: 0,
        }
    }

    /// Whether `remote` is dialback authenticated to send to our `local` on this stream.
    pub fn is_authenticated(&self, remote: &str, local: &str) -> bool {
        self.authed.iter().any(|(r, l)| r == remote && l == local)
    }

    /// Feeds bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Done | State::AwaitTls) {
            return;
        }
        if bytes.is_empty() {
            // An empty read carries nothing, and an empty feed in the middle of a `<?...?>`
            // currently confuses the decoder's resumable scan, so it never gets one.
            return;
        }
        let events = match self.conn.decoder.feed(bytes) {
            Ok(events) => events,
            Err(err) => return self.fail(err, now),
        };
        self.conn.restarted = false;
        for event in events {
            // Anything pipelined after `<starttls/>` predates TLS and is dropped unread; so is
            // anything after an `<auth/>` we accepted.
            if self.conn.restarted || matches!(self.state, State::Done | State::AwaitTls) {
                break;
            }
            self.handle_event(event, now);
        }
    }

    /// The driver finished the TLS handshake and verified the peer's client certificate
    /// chain as `peer_cert`; the peer will restart the stream, which gets the fresh
    /// `stream_id` (RFC 6120 §4.7.3).
    pub fn tls_established(&mut self, stream_id: &str, peer_cert: PeerCert) {
        if self.state != State::AwaitTls {
            return;
        }
        self.conn.tls = true;
        self.peer_cert = peer_cert;
        // Nothing negotiated before the restart carries over (RFC 6120 §5.4.3.3).
        self.pending.clear();
        self.authed.clear();
        self.restart(stream_id.to_owned());
    }

    /// Expects the peer's next stream header, which gets `stream_id`.
    fn restart(&mut self, stream_id: String) {
        self.conn.decoder.reset();
        self.conn.restarted = true;
        self.stream_id = stream_id;
        self.header_sent = false;
        self.state = State::AwaitHeader;
    }

    /// The daemon's verdict on a [`Output::VerifyDialback`] for `from` → `to`: answers the
    /// peer (XEP-0220 §2.1.4) and, if valid, lets `from` send to `to` on this stream.
    pub fn dialback_result(&mut self, from: &str, to: &str, valid: bool, now: Instant) {
        if self.state != State::Open {
            return;
        }
        let Some(i) = self.pending.iter().position(|(f, t)| f == from && t == to) else { return };
        self.pending.remove(i);
        self.answer_result(from, to, valid, AuthMethod::Dialback, now);
    }

    /// Sends the `<db:result type/>` verdict and, if valid, authenticates `from` → `to`.
    fn answer_result(&mut self, from: &str, to: &str, valid: bool, method: AuthMethod, now: Instant) {
        self.conn.send_element(&result_answer(to, from, valid), now);
        if valid {
            self.authenticate(from, to, method);
        }
    }

    /// Lets `remote` send to our `local` on this stream.
    fn authenticate(&mut self, remote: &str, local: &str, method: AuthMethod) {
        self.deadline = None;
        let pair = (remote.to_owned(), local.to_owned());
        if !self.authed.contains(&pair) {
            self.authed.push(pair);
        }
        self.conn.emit(Output::Authenticated { remote: remote.to_owned(), local: local.to_owned(), method });
    }

    /// Closes the stream from our side.
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.conn.send_close(now);
        self.state = State::Done;
        self.conn.finish();
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.conn.poll_output()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.conn.poll_timeout()?;
        Some(self.deadline.map_or(conn, |d| d.min(conn)))
    }

    /// Fires whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        // Both an unauthenticated stream past its deadline and an idle one get
        // connection-timeout (RFC 6120 §4.9.3.4), so the peer knows not to retry at once.
        let late = self.deadline.is_some_and(|d| now >= d);
        if late || self.conn.handle_timeout(now) {
            self.fail(StreamError::ConnectionTimeout, now);
        }
    }

    /// Sends our header for the current stream, replying from the domain the peer addressed.
    fn send_header(&mut self, peer: &str, local: &str, now: Instant) {
        let header = stream_header(NS_SERVER, peer, local, Some(&self.stream_id), true);
        self.conn.send_raw(&header, now);
        self.conn.writable = true;
        self.header_sent = true;
    }

    fn default_domain(&self) -> String {
        self.conn.config.local_domains.first().cloned().unwrap_or_default()
    }

    fn handle_event(&mut self, event: StreamEvent, now: Instant) {
        match event {
            StreamEvent::Open { attrs } => self.on_header(&attrs, now),
            StreamEvent::Close => {
                self.conn.send_close(now);
                if self.authed.is_empty() {
                    self.conn.emit(Output::Failed(Failure::PeerClosed));
                }
                self.state = State::Done;
                self.conn.finish();
            }
            StreamEvent::Element(element) => self.on_element(element, now),
        }
    }

    fn on_header(&mut self, attrs: &[(String, String)], now: Instant) {
        let attr = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let to = attr("to").unwrap_or_default();
        let local = if self.conn.config.is_local(&to) { to.clone() } else { self.default_domain() };
        // RFC 6120 §4.9.1.2: even to reject a stream we first open ours.
        self.send_header(&attr("from").unwrap_or_default(), &local, now);
        if let Err(err) = check_header(attrs) {
            return self.fail(err, now);
        }
        if !to.is_empty() && to != local {
            return self.fail(StreamError::HostUnknown, now);
        }
        self.header_from = attr("from").unwrap_or_default();
        self.header_to = local;
        let features = self.features();
        self.conn.send_element(&features, now);
        self.state = State::Open;
    }

    /// The features for the current stream: STARTTLS first; then EXTERNAL if the peer's
    /// certificate proves the domain in its header, and dialback unless policy forbids it.
    fn features(&self) -> Element {
        let mut features = Element::new("features", NS_STREAMS);
        if self.sasl_done {
            return features;
        }
        let policy = self.conn.config.tls;
        if !self.conn.tls && policy != TlsPolicy::Disabled {
            let mut starttls = Element::new("starttls", NS_TLS);
            if policy == TlsPolicy::Required {
                starttls.push_child(Element::new("required", NS_TLS));
            }
            features.push_child(starttls);
        }
        let cert_ok = self.peer_cert.check(&self.header_from).is_ok();
        if self.conn.tls && cert_ok {
            features.push_child(sasl::mechanisms_external());
        }
        if (self.conn.tls || policy != TlsPolicy::Required) && (self.conn.config.dialback_fallback || cert_ok)
        {
            features.push_child(Element::new("dialback", NS_DIALBACK_FEATURE));
        }
        features
    }

    fn on_element(&mut self, element: Element, now: Instant) {
        self.conn.received(now);
        if element.is("error", NS_STREAMS) {
            self.conn.send_close(now);
            self.conn.emit(Output::Failed(Failure::Received(peer_error(&element))));
            self.state = State::Done;
            return self.conn.finish();
        }
        if !self.take_token(now) {
            return self.fail(StreamError::PolicyViolation, now);
        }
        if element.is("starttls", NS_TLS) {
            return self.on_starttls(now);
        }
        if !self.conn.tls && self.conn.config.tls == TlsPolicy::Required {
            // RFC 6120 §5.3.1: TLS is mandatory here and the peer skipped it.
            return self.fail(StreamError::PolicyViolation, now);
        }
        match (element.ns(), element.name()) {
            (NS_SASL, "auth") => self.on_auth(&element, now),
            (NS_DIALBACK, "result") => self.on_result(&element, now),
            (NS_DIALBACK, "verify") => {
                let config = &self.conn.config;
                match answer_verify(&element, config.keyer.as_ref(), |d| config.is_local(d)) {
                    Some(answer) => self.conn.send_element(&answer, now),
                    None => self.fail(StreamError::ImproperAddressing, now),
                }
            }
            (NS_SERVER, "message" | "presence" | "iq") => match self.check_stanza(&element) {
                Ok(()) => self.conn.emit(Output::Stanza(element)),
                Err(err) => self.fail(err, now),
            },
            _ => self.fail(StreamError::UnsupportedStanzaType, now),
        }
    }

    fn on_starttls(&mut self, now: Instant) {
        if self.conn.tls || self.conn.config.tls == TlsPolicy::Disabled {
            // RFC 6120 §5.4.2.2: refuse with <failure/> and close.
            self.conn.send_element(&Element::new("failure", NS_TLS), now);
            self.conn.send_close(now);
            self.conn.emit(Output::Failed(Failure::TlsUnavailable));
            self.state = State::Done;
            return self.conn.finish();
        }
        self.conn.send_element(&Element::new("proceed", NS_TLS), now);
        self.conn.writable = false;
        self.state = State::AwaitTls;
        self.conn.emit(Output::StartTls);
    }

    /// A `<db:result from to>key</db:result>` claim (XEP-0220 §2.1.1): hand it to the daemon.
    fn on_result(&mut self, element: &Element, now: Instant) {
        let (Some(from), Some(to)) = (element.attr("from"), element.attr("to")) else {
            return self.fail(StreamError::ImproperAddressing, now);
        };
        if !self.conn.config.is_local(to) {
            return self.fail(StreamError::HostUnknown, now);
        }
        // The claimed domain must be a bare domain, as it is what stanzas' from is checked against.
        if !is_bare_domain(from) {
            return self.fail(StreamError::InvalidFrom, now);
        }
        // A verified certificate for the claimed domain already proves what the key would
        // (XEP-0344 §2.4); without fallback it is the only proof accepted.
        match self.peer_cert.check(from) {
            Ok(()) => return self.answer_result(from, to, true, AuthMethod::DialbackByCert, now),
            Err(_) if !self.conn.config.dialback_fallback => {
                return self.fail(StreamError::PolicyViolation, now)
            }
            Err(_) => {}
        }
        let pair = (from.to_owned(), to.to_owned());
        if !self.pending.contains(&pair) {
            if self.pending.len() >= MAX_PENDING_DIALBACK {
                return self.fail(StreamError::PolicyViolation, now);
            }
            self.pending.push(pair);
        }
        let key = element.text().trim().to_owned();
        let id = self.stream_id.clone();
        self.conn.emit(Output::VerifyDialback { from: from.to_owned(), to: to.to_owned(), id, key });
    }

    /// `<auth mechanism='EXTERNAL'/>` (RFC 6120 §6.4, XEP-0178 §3): the certificate must prove
    /// the domain in the stream header, which the authzid, if any, must repeat. A failure
    /// leaves the stream open, so the peer can still try dialback.
    fn on_auth(&mut self, auth: &Element, now: Instant) {
        match self.check_auth(auth) {
            Ok(remote) => {
                self.conn.send_element(&sasl::success(), now);
                let local = self.header_to.clone();
                self.authenticate(&remote, &local, AuthMethod::SaslExternal);
                self.sasl_done = true;
                // The restarted stream needs an id of its own; deriving it keeps it as
                // unpredictable as the one it replaces (dialback keys may be bound to it).
                let id = format!("{}.1", self.stream_id);
                self.restart(id);
            }
            Err(err) => {
                self.conn.send_element(&sasl::failure(&err), now);
                self.sasl_failures += 1;
                if self.sasl_failures >= MAX_SASL_FAILURES {
                    self.fail(StreamError::PolicyViolation, now);
                }
            }
        }
    }

    /// The domain an `<auth/>` authenticates, or the SASL condition refusing it.
    fn check_auth(&self, auth: &Element) -> Result<String, SaslError> {
        if !self.conn.tls || self.sasl_done {
            return Err(SaslError::InvalidMechanism);
        }
        let claimed = sasl::parse_auth(auth)?;
        let remote = self.header_from.clone();
        if claimed.is_some_and(|c| c != remote) {
            return Err(SaslError::InvalidAuthzid);
        }
        if !is_bare_domain(&remote) || self.peer_cert.check(&remote).is_err() {
            return Err(SaslError::NotAuthorized);
        }
        Ok(remote)
    }

    /// RFC 6120 §13 / XEP-0220 §4: a stanza's `from` must be a domain authenticated on this
    /// stream and its `to` one of ours.
    fn check_stanza(&self, stanza: &Element) -> Result<(), StreamError> {
        if self.authed.is_empty() {
            return Err(StreamError::NotAuthorized);
        }
        let jid = |name| stanza.attr(name).map(Jid::parse);
        let from = match jid("from") {
            Some(Ok(from)) => from,
            _ => return Err(StreamError::ImproperAddressing),
        };
        if !self.authed.iter().any(|(r, _)| r == from.domain()) {
            return Err(StreamError::InvalidFrom);
        }
        let to = match jid("to") {
            Some(Ok(to)) => to,
            _ => return Err(StreamError::ImproperAddressing),
        };
        if !self.conn.config.is_local(to.domain()) {
            return Err(StreamError::HostUnknown);
        }
        if !self.is_authenticated(from.domain(), to.domain()) {
            return Err(StreamError::InvalidFrom);
        }
        Ok(())
    }

    /// Takes one token from the rate-limit bucket, refilled at the configured rate since
    /// the last element; zero `max_stanzas_per_sec` disables the limit.
    fn take_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.conn.config.max_stanzas_per_sec);
        if rate == 0.0 {
            return true;
        }
        let burst = f64::from(self.conn.config.stanza_burst.max(1));
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Sends `err` (after our header, which must precede it) and stops.
    fn fail(&mut self, err: StreamError, now: Instant) {
        if self.state == State::Done {
            return;
        }
        if !self.header_sent && self.state == State::AwaitHeader {
            let local = self.default_domain();
            self.send_header("", &local, now);
        }
        self.conn.send_error(err, now);
        self.state = State::Done;
        self.conn.finish();
    }
}

/// Whether `domain` is a JID with neither localpart nor resource, written as it normalises.
fn is_bare_domain(domain: &str) -> bool {
    Jid::parse(domain)
        .is_ok_and(|jid| jid.local().is_none() && jid.resource().is_none() && jid.domain() == domain)
}
