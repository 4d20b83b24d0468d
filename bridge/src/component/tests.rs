//! The XEP-0114 machine against a fake server written here, in simulated time; every byte goes
//! through the real [`StreamDecoder`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const DOMAIN: &str = "tern.xmpp.test";
const SERVER_ID: &str = "s3rv3r-id";

/// Stand-in digest: not SHA-1, but a function of id and secret like the real one.
fn handshaker(secret: &'static str) -> Arc<dyn Handshaker> {
    Arc::new(move |id: &str| format!("{id}:{secret}"))
}

fn config(secret: &'static str) -> Config {
    let mut c = Config::new(DOMAIN, handshaker(secret));
    c.connect_timeout = Duration::from_secs(10);
    c.keepalive_interval = Duration::from_secs(30);
    c.idle_timeout = Duration::from_secs(300);
    c
}

fn message(from: &str, to: &str, body: &str, ns: &str) -> Element {
    Element::new("message", ns)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_child(Element::new("body", ns).with_text(body))
}

/// A fake XMPP server's component port: expects our header, checks the handshake against
/// `secret`, then records stanzas.
struct FakeServer {
    decoder: StreamDecoder,
    secret: &'static str,
    header: Vec<(String, String)>,
    authed: bool,
    stanzas: Vec<Element>,
    wire: Vec<u8>,
}

impl FakeServer {
    fn new(secret: &'static str) -> Self {
        FakeServer {
            decoder: StreamDecoder::new(Limits::default()),
            secret,
            header: Vec::new(),
            authed: false,
            stanzas: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// Takes bytes from the component; returns bytes to send back.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.wire.extend_from_slice(bytes);
        let mut reply = String::new();
        for event in self.decoder.feed(bytes).expect("the component writes valid XML") {
            match event {
                StreamEvent::Open { attrs } => {
                    self.header = attrs;
                    reply.push_str(&stream_header(NS_COMPONENT, "", DOMAIN, Some(SERVER_ID), false));
                }
                StreamEvent::Element(el) if el.is("handshake", NS_COMPONENT) => {
                    if el.text() == format!("{SERVER_ID}:{}", self.secret) {
                        self.authed = true;
                        reply.push_str("<handshake/>");
                    } else {
                        reply.push_str(&stream_error(&StreamError::NotAuthorized));
                    }
                }
                StreamEvent::Element(el) => {
                    assert!(self.authed, "no stanza before the handshake");
                    self.stanzas.push(el);
                }
                StreamEvent::Close => reply.push_str(stream_close()),
            }
        }
        reply.into_bytes()
    }
}

/// Moves bytes both ways until quiet; returns the component's non-Send outputs.
fn pump(c: &mut Connection, s: &mut FakeServer, now: Instant) -> Vec<Output> {
    let mut events = Vec::new();
    for _ in 0..100 {
        let mut to_server = Vec::new();
        while let Some(out) = c.poll_output() {
            match out {
                Output::Send(b) => to_server.extend(b),
                other => events.push(other),
            }
        }
        if to_server.is_empty() {
            return events;
        }
        let back = s.feed(&to_server);
        c.handle_input(&back, now);
    }
    panic!("no quiescence");
}

#[test]
fn handshake_then_stanzas_both_ways() {
    let now = Instant::now();
    let mut c = Connection::new(config("s3cret"), now);
    let mut s = FakeServer::new("s3cret");
    let queued = message("alice@tern.xmpp.test/phone", "bob@xmpp.test", "early", NS_SERVER);
    c.send_stanza(queued.clone(), now);
    let events = pump(&mut c, &mut s, now);
    assert_eq!(events, vec![Output::Ready]);
    assert!(c.is_ready());
    assert_eq!(c.stream_id(), SERVER_ID);
    let attr = |n: &str| s.header.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(attr("to").as_deref(), Some(DOMAIN));
    assert_eq!(attr("xmlns").as_deref(), Some(NS_COMPONENT));
    assert_eq!(attr("version"), None, "component streams carry no version");

    let later = message("alice@tern.xmpp.test/phone", "bob@xmpp.test", "later", NS_SERVER);
    c.send_stanza(later.clone(), now);
    pump(&mut c, &mut s, now);
    // On the wire the stanzas are in the component namespace.
    assert_eq!(
        s.stanzas,
        vec![retag(&queued, NS_SERVER, NS_COMPONENT), retag(&later, NS_SERVER, NS_COMPONENT)]
    );
    let wire = String::from_utf8(s.wire.clone()).unwrap();
    assert!(!wire.contains("jabber:server"), "{wire}");

    // Server → component: handed over in jabber:server.
    let incoming = message("bob@xmpp.test/x", "alice@tern.xmpp.test", "hi", NS_COMPONENT);
    let mut text = String::new();
    incoming.write_in_stream(NS_COMPONENT, &mut text);
    c.handle_input(text.as_bytes(), now);
    assert_eq!(
        c.poll_output(),
        Some(Output::Stanza(message("bob@xmpp.test/x", "alice@tern.xmpp.test", "hi", NS_SERVER)))
    );
}

#[test]
fn handshake_digest_uses_the_server_stream_id() {
    let now = Instant::now();
    let mut c = Connection::new(config("k"), now);
    let mut s = FakeServer::new("k");
    pump(&mut c, &mut s, now);
    let wire = String::from_utf8(s.wire).unwrap();
    assert!(wire.contains(&format!("<handshake>{SERVER_ID}:k</handshake>")), "{wire}");
}

#[test]
fn wrong_secret_fails_and_bounces_the_queue() {
    let now = Instant::now();
    let mut c = Connection::new(config("wrong"), now);
    let mut s = FakeServer::new("right");
    let m = message("alice@tern.xmpp.test", "bob@xmpp.test", "1", NS_SERVER);
    c.send_stanza(m.clone(), now);
    let events = pump(&mut c, &mut s, now);
    assert_eq!(
        events,
        vec![
            Output::Failed(Failure::Received(StreamError::NotAuthorized)),
            Output::Bounced(vec![m.clone()]),
            Output::Close
        ]
    );
    assert!(s.stanzas.is_empty());
    // After the end, sends bounce straight back.
    c.send_stanza(m.clone(), now);
    assert_eq!(c.poll_output(), Some(Output::Bounced(vec![m])));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn stream_error_after_ready_fails() {
    let now = Instant::now();
    let mut c = Connection::new(config("s"), now);
    let mut s = FakeServer::new("s");
    pump(&mut c, &mut s, now);
    c.handle_input(stream_error(&StreamError::Conflict).as_bytes(), now);
    let outs: Vec<_> =
        std::iter::from_fn(|| c.poll_output()).filter(|o| !matches!(o, Output::Send(_))).collect();
    assert_eq!(
        outs,
        vec![
            Output::Failed(Failure::Received(StreamError::Conflict)),
            Output::Bounced(vec![]),
            Output::Close
        ]
    );
}

#[test]
fn wrong_namespace_header_is_refused() {
    let now = Instant::now();
    let mut c = Connection::new(config("s"), now);
    let _ = std::iter::from_fn(|| c.poll_output()).count();
    c.handle_input(stream_header(NS_SERVER, "", DOMAIN, Some("x"), false).as_bytes(), now);
    let outs: Vec<_> = std::iter::from_fn(|| c.poll_output()).collect();
    assert!(outs.contains(&Output::Failed(Failure::Sent(StreamError::InvalidNamespace))), "{outs:?}");
    assert_eq!(outs.last(), Some(&Output::Close));
}

#[test]
fn silent_server_times_out_the_handshake() {
    let now = Instant::now();
    let mut c = Connection::new(config("s"), now);
    let m = message("alice@tern.xmpp.test", "bob@xmpp.test", "1", NS_SERVER);
    c.send_stanza(m.clone(), now);
    let _ = std::iter::from_fn(|| c.poll_output()).count();
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(10));
    c.handle_timeout(t - Duration::from_millis(1));
    assert_eq!(c.poll_output(), None);
    c.handle_timeout(t);
    let outs: Vec<_> =
        std::iter::from_fn(|| c.poll_output()).filter(|o| !matches!(o, Output::Send(_))).collect();
    assert_eq!(outs, vec![Output::Failed(Failure::Timeout), Output::Bounced(vec![m]), Output::Close]);
}

#[test]
fn keepalives_when_quiet_and_idle_timeout() {
    let start = Instant::now();
    let mut c = Connection::new(config("s"), start);
    let mut s = FakeServer::new("s");
    pump(&mut c, &mut s, start);
    // Keepalive after 30 s of outbound silence.
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, start + Duration::from_secs(30));
    c.handle_timeout(t);
    assert_eq!(c.poll_output(), Some(Output::Send(b" ".to_vec())));
    assert_eq!(c.poll_output(), None);
    // The server's whitespace keeps the stream alive.
    c.handle_input(b" ", start + Duration::from_secs(200));
    let now = loop {
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        let outs: Vec<_> = std::iter::from_fn(|| c.poll_output()).collect();
        if outs.iter().any(|o| matches!(o, Output::Failed(_))) {
            assert!(outs.contains(&Output::Failed(Failure::Sent(StreamError::ConnectionTimeout))));
            break t;
        }
        assert_eq!(outs, vec![Output::Send(b" ".to_vec())]);
    };
    assert_eq!(now, start + Duration::from_secs(500), "idle 300 s after the server's last byte");
}

#[test]
fn peer_close_fails() {
    let now = Instant::now();
    let mut c = Connection::new(config("s"), now);
    let mut s = FakeServer::new("s");
    pump(&mut c, &mut s, now);
    c.handle_input(b"</stream:stream>", now);
    let outs: Vec<_> =
        std::iter::from_fn(|| c.poll_output()).filter(|o| !matches!(o, Output::Send(_))).collect();
    assert_eq!(outs, vec![Output::Failed(Failure::PeerClosed), Output::Bounced(vec![]), Output::Close]);
}
