//! Tests of the RFC 6120 / XEP-0220 s2s machines, on the in-memory [`Link`] harness.

use std::time::{Duration, Instant};

use super::dialback::{answer_verify, key_input, keys_equal, verify_request};
use super::test_harness::*;
use super::{AuthMethod, Config, Failure, Inbound, Keyer, Outbound, Output, TlsPolicy};
use crate::stream::{Element, StreamError, StreamEvent};

#[test]
fn full_dialback_both_directions_then_stanzas_in_order() {
    let now = Instant::now();
    // a → b and b → a, each authenticated by dialback checked over the other link.
    // Every element counts against the rate limit, negotiation included; allow the lot.
    let roomy = |domain, secret| Config { stanza_burst: 20, ..config(domain, secret) };
    let mut ab = Link::new(roomy(A, "secret-a"), roomy(B, "secret-b"), now);
    let mut ba = Link::new(roomy(B, "secret-b"), roomy(A, "secret-a"), now);
    for _ in 0..STEP_LIMIT {
        let mut moved = ab.pump(now) | ba.pump(now);
        // b's daemon asks a (over b → a) whether a's key on a → b is genuine, and vice versa.
        moved |= route_dialback(&mut ab, &mut ba, now) | route_dialback(&mut ba, &mut ab, now);
        if !moved {
            break;
        }
    }
    for link in [&ab, &ba] {
        assert!(link.out_tls && link.in_tls, "both sides went through STARTTLS");
        assert!(link.out.is_ready());
        assert_eq!(link.out_events, vec![Output::Ready]);
        let (remote, local) = if link.out.peer() == B { (A, B) } else { (B, A) };
        let authed = Output::Authenticated {
            remote: remote.to_owned(),
            local: local.to_owned(),
            method: AuthMethod::Dialback,
        };
        assert_eq!(link.in_events, vec![authed]);
        assert_eq!(link.out.auth_method(), Some(AuthMethod::Dialback));
    }
    assert!(ab.inb.is_authenticated(A, B) && ba.inb.is_authenticated(B, A));

    let a_to_b: Vec<_> =
        (0..4).map(|i| message("alice@a.example/phone", "bob@b.example", &format!("{i}"))).collect();
    let b_to_a: Vec<_> =
        (0..3).map(|i| message("bob@b.example", "alice@a.example", &format!("re {i}"))).collect();
    for m in &a_to_b {
        ab.out.send_stanza(m.clone(), now);
    }
    for m in &b_to_a {
        ba.out.send_stanza(m.clone(), now);
    }
    ab.settle(now);
    ba.settle(now);
    assert_eq!(stanzas(&ab.in_events), a_to_b);
    assert_eq!(stanzas(&ba.in_events), b_to_a);
}

#[test]
fn stanzas_queued_before_ready_are_flushed_in_order() {
    let now = Instant::now();
    let mut link = authed_link(now, "secret-a");
    let queued: Vec<_> = (0..3).map(|i| message("a.example", "bob@b.example", &format!("q{i}"))).collect();
    for m in &queued {
        link.out.send_stanza(m.clone(), now);
    }
    link.settle(now);
    assert_eq!(link.out_events, vec![Output::Ready]);
    assert_eq!(stanzas(&link.in_events), queued);
    // The wire shows the verdict before any stanza.
    let wire = String::from_utf8(link.in_wire.clone()).unwrap_or_default();
    assert!(wire.contains("<db:result from='b.example' to='a.example' type='valid'/>"), "{wire}");
}

#[test]
fn invalid_dialback_fails_and_bounces_the_queue() {
    let now = Instant::now();
    let mut link = authed_link(now, "not-a-secret");
    let queued = vec![message("a.example", "bob@b.example", "1"), message("a.example", "bob@b.example", "2")];
    for m in &queued {
        link.out.send_stanza(m.clone(), now);
    }
    link.settle(now);
    assert_eq!(
        link.out_events,
        vec![Output::Failed(Failure::DialbackRejected), Output::Bounced(queued.clone()), Output::Close]
    );
    assert!(stanzas(&link.in_events).is_empty());
    assert!(!link.inb.is_authenticated(A, B));
    // A stanza sent on the dead stream comes straight back.
    link.out.send_stanza(queued[0].clone(), now);
    assert_eq!(link.out.poll_output(), Some(Output::Bounced(vec![queued[0].clone()])));
}

#[test]
fn spoofed_from_after_auth_is_invalid_from() {
    let now = Instant::now();
    let mut link = authed_link(now, "secret-a");
    link.settle(now);
    assert!(link.out.is_ready());
    link.out.send_stanza(message("a.example", "bob@b.example", "ok"), now);
    link.out.send_stanza(message("mallory@evil.example", "bob@b.example", "spoof"), now);
    link.out.send_stanza(message("a.example", "bob@b.example", "after"), now);
    link.settle(now);
    assert_eq!(stanzas(&link.in_events), vec![message("a.example", "bob@b.example", "ok")]);
    assert!(link
        .in_events
        .ends_with(&[Output::Failed(Failure::Sent(StreamError::InvalidFrom)), Output::Close]));
    assert_eq!(stream_error_in(&link.in_wire).as_deref(), Some("invalid-from"));
    assert!(link.out_events.contains(&Output::Failed(Failure::Received(StreamError::InvalidFrom))));
    assert_eq!(link.out_events.last(), Some(&Output::Close));
}

#[test]
fn stanza_to_a_foreign_domain_is_host_unknown() {
    let now = Instant::now();
    let mut link = authed_link(now, "secret-a");
    link.settle(now);
    link.out.send_stanza(message("a.example", "carol@c.example", "x"), now);
    link.settle(now);
    assert_eq!(stream_error_in(&link.in_wire).as_deref(), Some("host-unknown"));
    assert_eq!(link.in_events.last(), Some(&Output::Close));
}

/// Feeds `input` to a fresh inbound machine and returns what it wrote and emitted.
fn inbound_reply(input: &str) -> (Vec<u8>, Vec<Output>) {
    let now = Instant::now();
    let mut inb = Inbound::new(config(B, "secret-b"), "id-0", now);
    inb.handle_input(input.as_bytes(), now);
    let (mut wire, mut events) = (Vec::new(), Vec::new());
    while let Some(o) = inb.poll_output() {
        match o {
            Output::Send(bytes) => wire.extend(bytes),
            other => events.push(other),
        }
    }
    (wire, events)
}

#[test]
fn bad_headers_get_the_exact_stream_error_after_our_header() {
    let streams = "xmlns:stream='http://etherx.jabber.org/streams'";
    let cases = [
        (
            format!("<stream:stream xmlns='jabber:client' {streams} to='b.example' version='1.0'>"),
            StreamError::InvalidNamespace,
        ),
        (
            format!("<stream:stream xmlns='jabber:server' {streams} to='b.example'>"),
            StreamError::UnsupportedVersion,
        ),
        (
            format!("<stream:stream xmlns='jabber:server' {streams} to='b.example' version='2.0'>"),
            StreamError::UnsupportedVersion,
        ),
        (
            format!("<stream:stream xmlns='jabber:server' {streams} to='z.example' version='1.0'>"),
            StreamError::HostUnknown,
        ),
        // The stream element itself in the wrong namespace: the decoder's verdict.
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='urn:wrong' version='1.0'>".to_owned(),
            StreamError::InvalidNamespace,
        ),
    ];
    for (header, err) in cases {
        let (wire, events) = inbound_reply(&header);
        let decoded = decode(&wire);
        assert!(matches!(decoded.first(), Some(StreamEvent::Open { .. })), "{header}: our header first");
        assert_eq!(stream_error_in(&wire).as_deref(), Some(err.condition()), "{header}");
        assert_eq!(decoded.last(), Some(&StreamEvent::Close), "{header}");
        assert_eq!(events, vec![Output::Failed(Failure::Sent(err)), Output::Close], "{header}");
    }
}

#[test]
fn good_header_gets_features_with_required_starttls_then_dialback_after_tls() {
    let header = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>";
    let (wire, events) = inbound_reply(header);
    assert!(events.is_empty());
    let decoded = decode(&wire);
    assert_eq!(decoded[0].header_attr("id"), Some("id-0"));
    assert_eq!(decoded[0].header_attr("from"), Some(B));
    let StreamEvent::Element(features) = &decoded[1] else { panic!("features expected") };
    let starttls = features.child("starttls", crate::stream::NS_TLS).expect("starttls offered");
    assert!(starttls.child("required", crate::stream::NS_TLS).is_some());
    assert!(features.child("dialback", "urn:xmpp:features:dialback").is_none());
}

#[test]
fn outbound_rejects_a_peer_header_without_version() {
    let now = Instant::now();
    let mut out = Outbound::new(config(A, "secret-a"), A, B, now);
    out.send_stanza(message(A, "bob@b.example", "x"), now);
    out.handle_input(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='1'>",
        now,
    );
    let outputs: Vec<_> = std::iter::from_fn(|| out.poll_output()).collect();
    let wire: Vec<u8> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stream_error_in(&wire).as_deref(), Some("unsupported-version"));
    assert!(outputs.ends_with(&[
        Output::Failed(Failure::Sent(StreamError::UnsupportedVersion)),
        Output::Bounced(vec![message(A, "bob@b.example", "x")]),
        Output::Close,
    ]));
}

#[test]
fn unanswered_connect_fails_at_the_connect_timeout_and_bounces() {
    let start = Instant::now();
    let mut out = Outbound::new(config(A, "secret-a"), A, B, start);
    out.send_stanza(message(A, "bob@b.example", "x"), start);
    while out.poll_output().is_some() {}
    let mut failed_at = None;
    for _ in 0..STEP_LIMIT {
        let Some(now) = out.poll_timeout() else { break };
        out.handle_timeout(now);
        while let Some(o) = out.poll_output() {
            match o {
                Output::Failed(f) => {
                    assert_eq!(f, Failure::Timeout);
                    failed_at = Some(now);
                }
                Output::Bounced(b) => assert_eq!(b, vec![message(A, "bob@b.example", "x")]),
                _ => {}
            }
        }
    }
    assert_eq!(failed_at, Some(start + Duration::from_secs(10)));
    assert_eq!(out.poll_timeout(), None);
}

#[test]
fn silent_inbound_peer_times_out_with_connection_timeout() {
    let start = Instant::now();
    let mut inb = Inbound::new(config(B, "secret-b"), "id-0", start);
    assert_eq!(inb.poll_timeout(), Some(start + Duration::from_secs(10)));
    inb.handle_timeout(start + Duration::from_secs(10));
    let outputs: Vec<_> = std::iter::from_fn(|| inb.poll_output()).collect();
    assert!(
        outputs.ends_with(&[Output::Failed(Failure::Sent(StreamError::ConnectionTimeout)), Output::Close])
    );
}

#[test]
fn keepalives_every_interval_then_idle_close() {
    let t0 = Instant::now();
    let mut link = authed_link(t0, "secret-a");
    link.settle(t0);
    assert!(link.out.is_ready());
    let end = t0 + Duration::from_secs(400);
    link.run_until(t0, end);
    let secs: Vec<u64> = link.out_keepalives.iter().map(|t| (*t - t0).as_secs()).collect();
    assert_eq!(secs, vec![30, 60, 90, 120, 150, 180, 210, 240, 270]);
    // No element either way for the idle timeout: both sides end the stream at t0 + 300 s.
    assert_eq!(link.out_events.last(), Some(&Output::Close));
    assert_eq!(link.in_events.last(), Some(&Output::Close));
    assert_eq!(link.out.poll_timeout(), None);
}

#[test]
fn traffic_postpones_keepalives() {
    let t0 = Instant::now();
    let mut link = authed_link(t0, "secret-a");
    link.settle(t0);
    let t1 = t0 + Duration::from_secs(20);
    link.run_until(t0, t1);
    link.out.send_stanza(message(A, "bob@b.example", "x"), t1);
    link.run_until(t1, t0 + Duration::from_secs(100));
    let secs: Vec<u64> = link.out_keepalives.iter().map(|t| (*t - t0).as_secs()).collect();
    assert_eq!(secs, vec![50, 80]);
}

#[test]
fn stanza_flood_trips_policy_violation() {
    let t0 = Instant::now();
    let mut link = authed_link(t0, "secret-a");
    link.settle(t0);
    // At the sustained rate (10/s) nothing trips.
    let mut now = t0;
    for i in 0..30 {
        now += Duration::from_millis(100);
        link.out.send_stanza(message(A, "bob@b.example", &format!("{i}")), now);
        link.settle(now);
    }
    assert_eq!(stanzas(&link.in_events).len(), 30);
    // After a second's refill the burst (5) is available, and the sixth at once trips.
    now += Duration::from_secs(1);
    for i in 0..6 {
        link.out.send_stanza(message(A, "bob@b.example", &format!("burst {i}")), now);
    }
    link.settle(now);
    assert_eq!(stanzas(&link.in_events).len(), 35);
    assert_eq!(stream_error_in(&link.in_wire).as_deref(), Some("policy-violation"));
    assert!(link
        .in_events
        .ends_with(&[Output::Failed(Failure::Sent(StreamError::PolicyViolation)), Output::Close]));
}

#[test]
fn authoritative_verify_answers() {
    let keyer = FakeKeyer("secret-a");
    let is_local = |d: &str| d == A;
    let key = keyer.key(B, A, "s1");
    let good = verify_request(B, A, "s1", &key);
    let answer = answer_verify(&good, &keyer, is_local).expect("well-formed request");
    assert_eq!(
        answer.to_string(),
        "<db:verify xmlns:db='jabber:server:dialback' from='a.example' to='b.example' id='s1' type='valid'/>"
    );
    // A key for another stream id, another receiving server or from another secret is invalid.
    for request in [
        verify_request(B, A, "s2", &key),
        verify_request("c.example", A, "s1", &key),
        verify_request(B, A, "s1", &FakeKeyer("other").key(B, A, "s1")),
        verify_request(B, "c.example", "s1", &keyer.key(B, "c.example", "s1")),
    ] {
        let answer = answer_verify(&request, &keyer, is_local).expect("well-formed request");
        assert_eq!(answer.attr("type"), Some("invalid"), "{request}");
    }
    let no_id = Element::new("verify", crate::stream::NS_DIALBACK).with_attr("from", B).with_attr("to", A);
    assert!(answer_verify(&no_id, &keyer, is_local).is_none());
}

#[test]
fn key_comparison_and_input() {
    assert!(keys_equal("abc", "abc"));
    assert!(!keys_equal("abc", "abd"));
    assert!(!keys_equal("abc", "abcd"));
    assert_eq!(key_input("b.example", "a.example", "D60000229F"), "b.example a.example D60000229F");
}

#[test]
fn inbound_answers_db_verify_over_the_stream_after_tls() {
    let now = Instant::now();
    // b connects to a only to verify a key a issued for a stream a opened to b.
    let mut link = Link::new(config(B, "secret-b"), config(A, "secret-a"), now);
    let key = FakeKeyer("secret-a").key(B, A, "their-id");
    link.out.send_verify(B, A, "their-id", &key, now);
    link.out.send_verify(B, A, "their-id", "forged", now);
    link.settle(now);
    let answers = take(&mut link.out_events, |o| match o {
        Output::VerifyResult { from, to, id, valid } => Some((from.clone(), to.clone(), id.clone(), *valid)),
        _ => None,
    });
    let verdict = |valid| (B.to_owned(), A.to_owned(), "their-id".to_owned(), valid);
    assert_eq!(answers, vec![verdict(true), verdict(false)]);
    assert!(link.out_tls && link.in_tls);
}

#[test]
fn data_pipelined_after_starttls_is_dropped() {
    let now = Instant::now();
    let mut inb = Inbound::new(config(B, "secret-b"), "id-0", now);
    let header = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>";
    inb.handle_input(header.as_bytes(), now);
    // An attacker appends a plaintext dialback claim after <starttls/>.
    let injected = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
                    <db:result from='a.example' to='b.example'>k</db:result>";
    inb.handle_input(injected.as_bytes(), now);
    let outputs: Vec<_> = std::iter::from_fn(|| inb.poll_output()).collect();
    assert_eq!(outputs.last(), Some(&Output::StartTls));
    assert!(!outputs.iter().any(|o| matches!(o, Output::VerifyDialback { .. })));
}

#[test]
fn outbound_without_tls_facing_required_tls_gives_up() {
    let now = Instant::now();
    let mut out_config = config(A, "secret-a");
    out_config.tls = TlsPolicy::Disabled;
    let mut link = Link::new(out_config, config(B, "secret-b"), now);
    link.settle(now);
    // The outbound side will not do TLS and the peer requires it: it gives up itself.
    assert!(link.out_events.contains(&Output::Failed(Failure::TlsUnavailable)));
    assert!(!link.out_tls && !link.in_tls);
}

#[test]
fn without_tls_on_both_sides_dialback_still_works() {
    let now = Instant::now();
    let (mut a, mut b) = (config(A, "secret-a"), config(B, "secret-b"));
    a.tls = TlsPolicy::Disabled;
    b.tls = TlsPolicy::Preferred;
    let mut link = Link::new(a, b, now);
    link.authority = Some(FakeKeyer("secret-a"));
    link.out.send_stanza(message(A, "bob@b.example", "plain"), now);
    link.settle(now);
    assert!(!link.out_tls && !link.in_tls);
    assert_eq!(stanzas(&link.in_events), vec![message(A, "bob@b.example", "plain")]);
}

#[test]
fn plaintext_dialback_when_tls_required_is_policy_violation() {
    let input = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>\
                 <db:result from='a.example' to='b.example'>k</db:result>";
    let (wire, events) = inbound_reply(input);
    assert_eq!(stream_error_in(&wire).as_deref(), Some("policy-violation"));
    assert_eq!(events, vec![Output::Failed(Failure::Sent(StreamError::PolicyViolation)), Output::Close]);
}

#[test]
fn oversized_stanza_trips_the_decoder_limit() {
    let now = Instant::now();
    let mut tight = config(B, "secret-b");
    tight.limits.max_stanza_bytes = 512;
    let mut inb = Inbound::new(tight, "id-0", now);
    let header = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  to='b.example' version='1.0'>";
    inb.handle_input(header.as_bytes(), now);
    inb.handle_input(format!("<message>{}</message>", "x".repeat(1024)).as_bytes(), now);
    let outputs: Vec<_> = std::iter::from_fn(|| inb.poll_output()).collect();
    assert!(outputs.ends_with(&[Output::Failed(Failure::Sent(StreamError::PolicyViolation)), Output::Close]));
}

#[test]
fn byte_at_a_time_delivery_negotiates_the_same() {
    let now = Instant::now();
    for chunk in [1, 3, 7] {
        let mut link = authed_link(now, "secret-a");
        link.chunk = chunk;
        link.out.send_stanza(message(A, "bob@b.example", "tiny pieces"), now);
        link.settle(now);
        assert!(link.out_tls && link.in_tls, "chunk {chunk}");
        assert_eq!(link.out_events, vec![Output::Ready], "chunk {chunk}");
        assert_eq!(
            stanzas(&link.in_events),
            vec![message(A, "bob@b.example", "tiny pieces")],
            "chunk {chunk}"
        );
    }
}

#[test]
fn peer_closing_before_ready_fails_and_bounces() {
    let now = Instant::now();
    let mut out = Outbound::new(config(A, "secret-a"), A, B, now);
    out.send_stanza(message(A, "bob@b.example", "x"), now);
    out.handle_input(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
          id='s1' version='1.0'></stream:stream>",
        now,
    );
    let outputs: Vec<_> =
        std::iter::from_fn(|| out.poll_output()).filter(|o| !matches!(o, Output::Send(_))).collect();
    assert_eq!(
        outputs,
        vec![
            Output::Failed(Failure::PeerClosed),
            Output::Bounced(vec![message(A, "bob@b.example", "x")]),
            Output::Close
        ]
    );
}

#[test]
fn peer_refusing_starttls_fails() {
    let now = Instant::now();
    let mut out = Outbound::new(config(A, "secret-a"), A, B, now);
    out.handle_input(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
          id='s1' version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
          </stream:features><failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        now,
    );
    let outputs: Vec<_> =
        std::iter::from_fn(|| out.poll_output()).filter(|o| !matches!(o, Output::Send(_))).collect();
    assert_eq!(
        outputs,
        vec![Output::Failed(Failure::TlsUnavailable), Output::Bounced(vec![]), Output::Close]
    );
}
