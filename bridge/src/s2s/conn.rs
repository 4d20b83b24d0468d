//! Plumbing shared by both s2s directions (RFC 6120 §4, XEP-0220): the decoder, the output
//! queue, keepalive and idle timers, and the close sequence.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Config, Failure, Output};
use crate::stream::{stream_close, stream_error, Element, StreamDecoder, StreamError, NS_SERVER};

/// One connection's stream plumbing; the direction-specific machine drives it.
pub(super) struct Conn {
    pub config: Config,
    pub decoder: StreamDecoder,
    out: VecDeque<Output>,
    /// When we last wrote anything, keepalives included (for the keepalive timer).
    last_sent: Instant,
    /// When an element last went either way (for the idle timer); whitespace does not count,
    /// or keepalives would keep an unused stream alive forever.
    last_traffic: Instant,
    /// Whether our header is out and the connection is not mid-TLS-handshake, i.e. whether
    /// writing stream-level data now is meaningful.
    pub writable: bool,
    /// Whether the stream is over; nothing more is emitted.
    pub closed: bool,
    /// Whether TLS has been established on this connection.
    pub tls: bool,
    /// Set when the stream restarts (after SASL) in the middle of a read: the rest of that
    /// read was sent before the peer saw the restart, so it is dropped unread.
    pub restarted: bool,
}

impl Conn {
    /// Fresh plumbing at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        Conn {
            decoder: StreamDecoder::new(config.limits),
            config,
            out: VecDeque::new(),
            last_sent: now,
            last_traffic: now,
            writable: false,
            closed: false,
            tls: false,
            restarted: false,
        }
    }

    /// Queues an output for the driver.
    pub fn emit(&mut self, output: Output) {
        self.out.push_back(output);
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Writes raw stream text (a header, an error).
    pub fn send_raw(&mut self, text: &str, now: Instant) {
        self.last_sent = now;
        self.last_traffic = now;
        self.emit(Output::Send(text.as_bytes().to_vec()));
    }

    /// Writes one element as a direct child of a `jabber:server` stream.
    pub fn send_element(&mut self, element: &Element, now: Instant) {
        let mut text = String::new();
        element.write_in_stream(NS_SERVER, &mut text);
        self.send_raw(&text, now);
    }

    /// Notes that an element arrived.
    pub fn received(&mut self, now: Instant) {
        self.last_traffic = now;
    }

    /// Sends `err` (if the stream is writable), then reports `Failed(Sent(err))`. The caller
    /// adds whatever must follow (bounces) and then calls [`finish`](Self::finish).
    pub fn send_error(&mut self, err: StreamError, now: Instant) {
        if self.writable {
            self.send_raw(&stream_error(&err), now);
        }
        self.emit(Output::Failed(Failure::Sent(err)));
    }

    /// Sends our stream close if the stream is writable (a graceful end).
    pub fn send_close(&mut self, now: Instant) {
        if self.writable {
            self.send_raw(stream_close(), now);
        }
    }

    /// Ends the machine: emits `Close` and stops all timers.
    pub fn finish(&mut self) {
        self.writable = false;
        self.closed = true;
        self.emit(Output::Close);
    }

    /// The next keepalive or idle deadline, if the stream is live.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let idle = self.last_traffic + self.config.idle_timeout;
        if !self.writable {
            return Some(idle);
        }
        Some(idle.min(self.last_sent + self.config.keepalive_interval))
    }

    /// Sends a keepalive if due; returns whether the idle timeout has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.closed {
            return false;
        }
        if now >= self.last_traffic + self.config.idle_timeout {
            return true;
        }
        if self.writable && now >= self.last_sent + self.config.keepalive_interval {
            // RFC 6120 §4.6.1: a single space is the conventional whitespace keepalive.
            self.last_sent = now;
            self.emit(Output::Send(b" ".to_vec()));
        }
        false
    }
}

/// Reads a peer's `<stream:error/>` condition.
pub(super) fn peer_error(element: &Element) -> StreamError {
    element
        .elements()
        .find_map(|c| {
            (c.ns() == crate::stream::NS_STREAM_ERRORS)
                .then(|| StreamError::from_condition(c.name(), &c.text()))
                .flatten()
        })
        .unwrap_or(StreamError::UndefinedCondition)
}

/// Checks a peer's stream header (RFC 6120 §4.7): the content namespace must be
/// `jabber:server` and the version 1.0 (we never speak the pre-RFC 0.9 protocol).
pub(super) fn check_header(attrs: &[(String, String)]) -> Result<(), StreamError> {
    let attr = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if attr("xmlns") != Some(NS_SERVER) {
        return Err(StreamError::InvalidNamespace);
    }
    // RFC 6120 §4.7.5: the major version must match; a higher minor is fine.
    match attr("version").and_then(|v| v.split_once('.')) {
        Some(("1", minor)) if !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(StreamError::UnsupportedVersion),
    }
}
