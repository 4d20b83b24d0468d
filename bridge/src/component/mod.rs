//! The component side of an external component stream (XEP-0114, `jabber:component:accept`),
//! sans-IO like [`crate::s2s`]: bytes, stanzas and `now` in; [`Output`]s and a deadline out.
//!
//! We open the stream to the server with `to` = our component domain (no `version`), read the
//! server's header and stream id, prove the shared secret with
//! `<handshake>hex(SHA1(stream_id + secret))</handshake>`, and wait for the empty
//! `<handshake/>`. Then stanzas flow both ways. The SHA-1 comes from the caller
//! ([`Handshaker`]), because the bridge has no crypto dependency.
//!
//! Stanzas are `jabber:server` elements on both sides of the machine's API: outgoing ones are
//! written in the component namespace, incoming ones are handed back in `jabber:server`, so the
//! daemon treats them exactly like s2s stanzas.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stream::{
    stream_close, stream_error, stream_header, Element, Limits, Node, StreamDecoder, StreamError,
    StreamEvent, NS_COMPONENT, NS_SERVER, NS_STREAMS, NS_STREAM_ERRORS,
};

/// Computes the XEP-0114 handshake digest: lowercase hex of SHA-1 over `stream_id + secret`.
pub trait Handshaker: Send + Sync {
    /// The hex digest for the server's stream id (the secret is the implementor's).
    fn digest(&self, stream_id: &str) -> String;
}

impl<F: Fn(&str) -> String + Send + Sync> Handshaker for F {
    fn digest(&self, stream_id: &str) -> String {
        self(stream_id)
    }
}

/// Settings of a component stream.
#[derive(Clone)]
pub struct Config {
    /// Our component domain (the `to` of our header).
    pub domain: String,
    /// Decoder limits applied to what the server sends.
    pub limits: Limits,
    /// How long from creation to the server's `<handshake/>`.
    pub connect_timeout: Duration,
    /// Send a whitespace keepalive after this much outbound silence.
    pub keepalive_interval: Duration,
    /// Close the stream after this long without anything from the server (whitespace counts
    /// here: servers answer keepalives with their own).
    pub idle_timeout: Duration,
    /// Computes the handshake digest (holds the secret).
    pub handshaker: Arc<dyn Handshaker>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("domain", &self.domain)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults close to the s2s machines'.
    pub fn new(domain: &str, handshaker: Arc<dyn Handshaker>) -> Self {
        Config {
            domain: domain.to_owned(),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(900),
            handshaker,
        }
    }
}

/// Why the stream ended without being (or staying) usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// We sent this stream error.
    Sent(StreamError),
    /// The server sent this stream error (`not-authorized` for a wrong secret).
    Received(StreamError),
    /// The server closed the stream.
    PeerClosed,
    /// The handshake deadline or the idle timeout passed.
    Timeout,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes.
    Send(Vec<u8>),
    /// The handshake succeeded; stanzas flow.
    Ready,
    /// A stanza from the server, in `jabber:server`.
    Stanza(Element),
    /// The stream failed; [`Output::Bounced`] follows.
    Failed(Failure),
    /// Stanzas never sent (possibly empty); always emitted once before [`Output::Close`].
    Bounced(Vec<Element>),
    /// Close the connection; the machine does nothing more.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    AwaitHandshake,
    Ready,
    Done,
}

/// One component stream.
pub struct Connection {
    config: Config,
    decoder: StreamDecoder,
    out: VecDeque<Output>,
    state: State,
    stream_id: String,
    queue: Vec<Element>,
    deadline: Instant,
    last_sent: Instant,
    last_received: Instant,
}

impl Connection {
    /// Starts the stream; our header goes out immediately.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut c = Connection {
            decoder: StreamDecoder::new(config.limits),
            deadline: now + config.connect_timeout,
            config,
            out: VecDeque::new(),
            state: State::AwaitHeader,
            stream_id: String::new(),
            queue: Vec::new(),
            last_sent: now,
            last_received: now,
        };
        let header = stream_header(NS_COMPONENT, &c.config.domain, "", None, false);
        c.send_raw(&header, now);
        c
    }

    /// Whether the handshake succeeded and the stream is open.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The server's stream id, once its header arrived.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Sends a `jabber:server` stanza, queued until ready; on a dead stream it is bounced.
    pub fn send_stanza(&mut self, stanza: Element, now: Instant) {
        match self.state {
            State::Ready => self.send_element(&stanza, now),
            State::Done => self.out.push_back(Output::Bounced(vec![stanza])),
            _ => self.queue.push(stanza),
        }
    }

    /// Feeds bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.state == State::Done || bytes.is_empty() {
            return;
        }
        self.last_received = now;
        let events = match self.decoder.feed(bytes) {
            Ok(events) => events,
            Err(err) => return self.fail(Failure::Sent(err), now),
        };
        for event in events {
            if self.state == State::Done {
                break;
            }
            self.handle_event(event, now);
        }
    }

    /// Closes from our side; queued stanzas come back in [`Output::Bounced`].
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.send_raw(stream_close(), now);
        self.finish();
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_received + self.config.idle_timeout;
        match self.state {
            State::Done => None,
            State::Ready => Some(idle.min(self.last_sent + self.config.keepalive_interval)),
            _ => Some(idle.min(self.deadline)),
        }
    }

    /// Fires whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Done => {}
            State::AwaitHeader | State::AwaitHandshake if now >= self.deadline => {
                self.fail(Failure::Timeout, now)
            }
            _ if now >= self.last_received + self.config.idle_timeout => {
                self.fail(Failure::Sent(StreamError::ConnectionTimeout), now)
            }
            State::Ready if now >= self.last_sent + self.config.keepalive_interval => {
                // RFC 6120 §4.6.1: a single space.
                self.last_sent = now;
                self.out.push_back(Output::Send(b" ".to_vec()));
            }
            _ => {}
        }
    }

    fn handle_event(&mut self, event: StreamEvent, now: Instant) {
        let element = match event {
            StreamEvent::Open { attrs } => {
                let attr = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                if attr("xmlns") != Some(NS_COMPONENT) {
                    return self.fail(Failure::Sent(StreamError::InvalidNamespace), now);
                }
                let Some(id) = attr("id").filter(|id| !id.is_empty()) else {
                    return self.fail(Failure::Sent(StreamError::InvalidXml), now);
                };
                self.stream_id = id.to_owned();
                let digest = self.config.handshaker.digest(&self.stream_id);
                let handshake = Element::new("handshake", NS_COMPONENT).with_text(digest);
                self.send_element_raw(&handshake, now);
                self.state = State::AwaitHandshake;
                return;
            }
            StreamEvent::Close => return self.fail(Failure::PeerClosed, now),
            StreamEvent::Element(element) => element,
        };
        if element.is("error", NS_STREAMS) {
            return self.fail(Failure::Received(peer_error(&element)), now);
        }
        match self.state {
            State::AwaitHandshake if element.is("handshake", NS_COMPONENT) => {
                self.state = State::Ready;
                self.out.push_back(Output::Ready);
                for stanza in std::mem::take(&mut self.queue) {
                    self.send_element(&stanza, now);
                }
            }
            State::Ready
                if element.ns() == NS_COMPONENT
                    && matches!(element.name(), "message" | "presence" | "iq") =>
            {
                self.out.push_back(Output::Stanza(retag(&element, NS_COMPONENT, NS_SERVER)));
            }
            State::Ready => {} // anything else at stream level is ignored
            _ => self.fail(Failure::Sent(StreamError::NotAuthorized), now),
        }
    }

    fn send_raw(&mut self, text: &str, now: Instant) {
        self.last_sent = now;
        self.out.push_back(Output::Send(text.as_bytes().to_vec()));
    }

    fn send_element_raw(&mut self, element: &Element, now: Instant) {
        let mut text = String::new();
        element.write_in_stream(NS_COMPONENT, &mut text);
        self.send_raw(&text, now);
    }

    fn send_element(&mut self, stanza: &Element, now: Instant) {
        self.send_element_raw(&retag(stanza, NS_SERVER, NS_COMPONENT), now);
    }

    fn fail(&mut self, failure: Failure, now: Instant) {
        if self.state == State::Done {
            return;
        }
        match &failure {
            Failure::Sent(err) => self.send_raw(&stream_error(err), now),
            _ => self.send_raw(stream_close(), now),
        }
        self.out.push_back(Output::Failed(failure));
        self.finish();
    }

    fn finish(&mut self) {
        self.state = State::Done;
        let queued = std::mem::take(&mut self.queue);
        self.out.push_back(Output::Bounced(queued));
        self.out.push_back(Output::Close);
    }
}

/// Reads a server's `<stream:error/>` condition.
fn peer_error(element: &Element) -> StreamError {
    element
        .elements()
        .find_map(|c| {
            (c.ns() == NS_STREAM_ERRORS).then(|| StreamError::from_condition(c.name(), &c.text())).flatten()
        })
        .unwrap_or(StreamError::UndefinedCondition)
}

/// A copy of `element` with every element in namespace `from` moved to `to`.
pub fn retag(element: &Element, from: &str, to: &str) -> Element {
    let ns = if element.ns() == from { to } else { element.ns() };
    let mut out = Element::new(element.name(), ns);
    for (name, value) in element.attrs() {
        if name == "xmlns" {
            continue;
        }
        out.set_attr(name.clone(), value.clone());
    }
    for child in element.children() {
        match child {
            Node::Element(e) => out.push_child(retag(e, from, to)),
            Node::Text(t) => out.push_text(t.clone()),
        }
    }
    out
}
