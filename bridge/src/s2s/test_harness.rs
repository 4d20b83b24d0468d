//! Test harness for the RFC 6120 / XEP-0220 s2s machines: a fake XEP-0185 keyer, and an
//! outbound and an inbound machine joined by in-memory pipes in simulated time, every byte going
//! through the real [`StreamDecoder`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dialback::{key_input, keys_equal};
use super::{Config, Inbound, Keyer, Outbound, Output, PeerCert};
use crate::stream::{Element, Limits, StreamDecoder, StreamEvent, NS_SERVER, NS_STREAMS};

pub(super) const A: &str = "a.example";
pub(super) const B: &str = "b.example";
/// Rounds a pair of machines may take before a test is declared stuck.
pub(super) const STEP_LIMIT: usize = 200;

/// A deterministic stand-in for the daemon's XEP-0185 HMAC.
pub(super) struct FakeKeyer(pub(super) &'static str);

impl Keyer for FakeKeyer {
    fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let input = key_input(receiving, originating, stream_id);
        // FNV-1a over secret and input: deterministic, and different secrets give different keys.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes().chain([0]).chain(input.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

pub(super) fn config(domain: &str, secret: &'static str) -> Config {
    let mut config = Config::new(vec![domain.to_owned()], Arc::new(FakeKeyer(secret)));
    config.connect_timeout = Duration::from_secs(10);
    config.keepalive_interval = Duration::from_secs(30);
    config.idle_timeout = Duration::from_secs(300);
    config.max_stanzas_per_sec = 10;
    config.stanza_burst = 5;
    config
}

pub(super) fn message(from: &str, to: &str, body: &str) -> Element {
    Element::new("message", NS_SERVER)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_child(Element::new("body", NS_SERVER).with_text(body))
}

pub(super) fn decode(bytes: &[u8]) -> Vec<StreamEvent> {
    StreamDecoder::new(Limits::default()).feed(bytes).expect("our own output decodes")
}

/// The condition of the `<stream:error/>` in `bytes`, if any.
pub(super) fn stream_error_in(bytes: &[u8]) -> Option<String> {
    // Only the last stream counts: a wire log holds the pre-TLS stream too.
    let start = bytes.windows(5).rposition(|w| w == b"<?xml").unwrap_or(0);
    decode(&bytes[start..]).into_iter().find_map(|e| match e {
        StreamEvent::Element(el) if el.is("error", NS_STREAMS) => {
            el.elements().next().map(|c| c.name().to_owned())
        }
        _ => None,
    })
}

pub(super) fn stanzas(events: &[Output]) -> Vec<Element> {
    events
        .iter()
        .filter_map(|o| match o {
            Output::Stanza(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// An outbound machine wired to an inbound one, both with simulated TLS.
pub(super) struct Link {
    pub(super) out: Outbound,
    pub(super) inb: Inbound,
    to_in: Vec<u8>,
    to_out: Vec<u8>,
    /// Everything each side wrote, for assertions on the wire format.
    pub(super) out_wire: Vec<u8>,
    pub(super) in_wire: Vec<u8>,
    /// Each side's outputs other than `Send` and `StartTls`, in order.
    pub(super) out_events: Vec<Output>,
    pub(super) in_events: Vec<Output>,
    /// When each whitespace keepalive was written by the outbound side.
    pub(super) out_keepalives: Vec<Instant>,
    pub(super) out_tls: bool,
    pub(super) in_tls: bool,
    next_id: u32,
    /// If set, the receiving side's daemon checks dialback keys directly with this keyer
    /// (standing in for the authoritative server); otherwise the test routes them.
    pub(super) authority: Option<FakeKeyer>,
    /// Deliver bytes in chunks of this size (0: as written), to exercise resumable decoding.
    pub(super) chunk: usize,
    /// What each side's driver reports about its peer's certificate after TLS.
    pub(super) out_peer_cert: PeerCert,
    pub(super) in_peer_cert: PeerCert,
}

impl Link {
    pub(super) fn new(out_config: Config, in_config: Config, now: Instant) -> Link {
        let from = out_config.local_domains[0].clone();
        let to = in_config.local_domains[0].clone();
        Link {
            out: Outbound::new(out_config, &from, &to, now),
            inb: Inbound::new(in_config, "id-0", now),
            to_in: Vec::new(),
            to_out: Vec::new(),
            out_wire: Vec::new(),
            in_wire: Vec::new(),
            out_events: Vec::new(),
            in_events: Vec::new(),
            out_keepalives: Vec::new(),
            out_tls: false,
            in_tls: false,
            next_id: 0,
            authority: None,
            chunk: 0,
            out_peer_cert: PeerCert::Absent,
            in_peer_cert: PeerCert::Absent,
        }
    }

    /// One round: drain both sides' outputs, delivering bytes. Returns whether anything moved.
    pub(super) fn pump(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(output) = self.out.poll_output() {
            moved = true;
            match output {
                Output::Send(bytes) => {
                    if bytes == b" " {
                        self.out_keepalives.push(now);
                    }
                    self.to_in.extend_from_slice(&bytes);
                    self.out_wire.extend_from_slice(&bytes);
                }
                Output::StartTls => {
                    self.out_tls = true;
                    self.out.tls_established(self.out_peer_cert.clone(), now);
                }
                other => self.out_events.push(other),
            }
        }
        if !self.to_in.is_empty() {
            moved = true;
            let bytes = std::mem::take(&mut self.to_in);
            for piece in bytes.chunks(self.chunk_size(bytes.len())) {
                self.inb.handle_input(piece, now);
            }
        }
        let mut verdicts = Vec::new();
        while let Some(output) = self.inb.poll_output() {
            moved = true;
            match output {
                Output::Send(bytes) => {
                    self.to_out.extend_from_slice(&bytes);
                    self.in_wire.extend_from_slice(&bytes);
                }
                Output::StartTls => {
                    // The handshake happens before any further byte reaches the inbound side.
                    self.in_tls = true;
                    self.next_id += 1;
                    self.inb.tls_established(&format!("id-{}", self.next_id), self.in_peer_cert.clone());
                }
                Output::VerifyDialback { from, to, id, key } if self.authority.is_some() => {
                    let keyer = self.authority.as_ref().map(|k| k.key(&to, &from, &id));
                    verdicts.push((from, to, keyer.is_some_and(|k| keys_equal(&k, &key))));
                }
                other => self.in_events.push(other),
            }
        }
        for (from, to, valid) in verdicts {
            self.inb.dialback_result(&from, &to, valid, now);
        }
        if !self.to_out.is_empty() {
            moved = true;
            let bytes = std::mem::take(&mut self.to_out);
            for piece in bytes.chunks(self.chunk_size(bytes.len())) {
                self.out.handle_input(piece, now);
            }
        }
        moved
    }

    /// The delivery chunk size for `len` pending bytes (never zero: `len` is never zero).
    fn chunk_size(&self, len: usize) -> usize {
        if self.chunk == 0 {
            len
        } else {
            self.chunk
        }
    }

    /// Pumps until nothing moves.
    pub(super) fn settle(&mut self, now: Instant) {
        for _ in 0..STEP_LIMIT {
            if !self.pump(now) {
                return;
            }
        }
        panic!("link did not settle within {STEP_LIMIT} steps");
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        [self.out.poll_timeout(), self.inb.poll_timeout()].into_iter().flatten().min()
    }

    /// Advances simulated time to `end`, firing every timer on the way.
    pub(super) fn run_until(&mut self, start: Instant, end: Instant) -> Instant {
        let mut now = start;
        for _ in 0..STEP_LIMIT {
            self.settle(now);
            match self.next_timeout() {
                Some(t) if t <= end => {
                    now = t.max(now);
                    self.out.handle_timeout(now);
                    self.inb.handle_timeout(now);
                }
                _ => return end,
            }
        }
        panic!("timers did not settle within {STEP_LIMIT} steps");
    }
}

/// A single link whose receiving daemon checks keys with `authority_secret`.
pub(super) fn authed_link(now: Instant, authority_secret: &'static str) -> Link {
    let mut link = Link::new(config(A, "secret-a"), config(B, "secret-b"), now);
    link.authority = Some(FakeKeyer(authority_secret));
    link
}

/// Removes and returns the outputs matching `pick`.
pub(super) fn take<T>(events: &mut Vec<Output>, mut pick: impl FnMut(&Output) -> Option<T>) -> Vec<T> {
    let mut taken = Vec::new();
    events.retain(|o| match pick(o) {
        Some(t) => {
            taken.push(t);
            false
        }
        None => true,
    });
    taken
}

/// The receiving daemon of `link` checks dialback claims with the authoritative server over
/// `back` (its own outbound stream to the claimed domain). Returns whether anything was routed.
pub(super) fn route_dialback(link: &mut Link, back: &mut Link, now: Instant) -> bool {
    let claims = take(&mut link.in_events, |o| match o {
        Output::VerifyDialback { from, to, id, key } => {
            Some((from.clone(), to.clone(), id.clone(), key.clone()))
        }
        _ => None,
    });
    let mut moved = !claims.is_empty();
    for (from, to, id, key) in claims {
        back.out.send_verify(&to, &from, &id, &key, now);
    }
    let answers = take(&mut back.out_events, |o| match o {
        Output::VerifyResult { from, to, valid, .. } => Some((from.clone(), to.clone(), *valid)),
        _ => None,
    });
    moved |= !answers.is_empty();
    for (us, claimed, valid) in answers {
        link.inb.dialback_result(&claimed, &us, valid, now);
    }
    moved
}
