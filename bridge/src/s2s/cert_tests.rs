//! Tests of certificate authentication in the s2s machines (XEP-0178 SASL EXTERNAL, the
//! dialback fallback of XEP-0220, XEP-0344 §2.4), on the in-memory [`Link`] harness and on
//! scripted peers.

use std::time::Instant;

use super::sasl::SaslError;
use super::test_harness::*;
use super::{AuthMethod, CertError, Config, Failure, Identity, Inbound, Keyer, Outbound, Output, PeerCert};
use crate::stream::{StreamError, StreamEvent};

fn trusted_for(domain: &str) -> PeerCert {
    PeerCert::Trusted(vec![Identity::Dns(domain.to_owned())])
}

fn untrusted() -> PeerCert {
    PeerCert::Untrusted("UnknownIssuer".to_owned())
}

/// a's config with a client certificate to present.
fn with_cert(domain: &str, secret: &'static str) -> Config {
    Config { client_cert: true, ..config(domain, secret) }
}

fn no_fallback(config: Config) -> Config {
    Config { dialback_fallback: false, ..config }
}

fn authenticated(events: &[Output]) -> Vec<(String, String, AuthMethod)> {
    events
        .iter()
        .filter_map(|o| match o {
            Output::Authenticated { remote, local, method } => Some((remote.clone(), local.clone(), *method)),
            _ => None,
        })
        .collect()
}

fn wire_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn external_with_verified_certificates_skips_dialback() {
    let now = Instant::now();
    // No authority: a dialback claim would never be answered, so only SASL can make this ready.
    let mut link = Link::new(with_cert(A, "secret-a"), no_fallback(config(B, "secret-b")), now);
    link.out_peer_cert = trusted_for(B);
    link.in_peer_cert = PeerCert::Trusted(vec![Identity::XmppAddr(A.to_owned())]);
    let queued = vec![message(A, "bob@b.example", "1"), message("alice@a.example/x", "bob@b.example", "2")];
    for m in &queued {
        link.out.send_stanza(m.clone(), now);
    }
    link.settle(now);
    assert_eq!(link.out_events, vec![Output::Ready]);
    assert_eq!(link.out.auth_method(), Some(AuthMethod::SaslExternal));
    assert_eq!(authenticated(&link.in_events), vec![(A.to_owned(), B.to_owned(), AuthMethod::SaslExternal)]);
    assert_eq!(stanzas(&link.in_events), queued);
    let out_wire = wire_text(&link.out_wire);
    assert!(
        out_wire.contains(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>YS5leGFtcGxl</auth>"
        ),
        "{out_wire}"
    );
    assert!(!out_wire.contains("db:result"), "{out_wire}");
    let in_wire = wire_text(&link.in_wire);
    assert!(in_wire.contains("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), "{in_wire}");
    // Three streams: plaintext, after TLS, after SASL with an id of its own.
    let headers: Vec<_> = in_wire.match_indices("<stream:stream").collect();
    assert_eq!(headers.len(), 3, "{in_wire}");
    assert!(in_wire.contains("id='id-1.1'"), "{in_wire}");
}

#[test]
fn external_is_not_offered_for_an_untrusted_or_mismatched_certificate() {
    let now = Instant::now();
    for cert in [untrusted(), trusted_for("evil.example"), PeerCert::Absent] {
        let mut link = Link::new(with_cert(A, "secret-a"), config(B, "secret-b"), now);
        link.authority = Some(FakeKeyer("secret-a"));
        link.in_peer_cert = cert.clone();
        link.settle(now);
        // Fallback is on: dialback authenticates instead.
        assert_eq!(link.out.auth_method(), Some(AuthMethod::Dialback), "{cert:?}");
        let in_wire = wire_text(&link.in_wire);
        assert!(!in_wire.contains("mechanisms"), "{cert:?}: {in_wire}");
        assert!(!wire_text(&link.out_wire).contains("<auth"), "{cert:?}");
    }
}

#[test]
fn verified_certificate_answers_dialback_without_the_round_trip() {
    let now = Instant::now();
    // No client certificate configured on a: it uses dialback, and b needs no authority.
    let mut link = Link::new(config(A, "secret-a"), config(B, "secret-b"), now);
    link.in_peer_cert = trusted_for(A);
    link.settle(now);
    assert_eq!(link.out.auth_method(), Some(AuthMethod::Dialback));
    assert!(!link.in_events.iter().any(|o| matches!(o, Output::VerifyDialback { .. })));
    assert_eq!(
        authenticated(&link.in_events),
        vec![(A.to_owned(), B.to_owned(), AuthMethod::DialbackByCert)]
    );
}

#[test]
fn without_fallback_an_untrusted_peer_gets_policy_violation_for_dialback() {
    let now = Instant::now();
    let mut link = Link::new(config(A, "secret-a"), no_fallback(config(B, "secret-b")), now);
    link.authority = Some(FakeKeyer("secret-a"));
    link.in_peer_cert = untrusted();
    link.out.send_stanza(message(A, "bob@b.example", "x"), now);
    link.settle(now);
    let in_wire = wire_text(&link.in_wire);
    assert!(!in_wire.contains("urn:xmpp:features:dialback"), "dialback not offered: {in_wire}");
    assert_eq!(stream_error_in(&link.in_wire).as_deref(), Some("policy-violation"));
    assert!(link.in_events.contains(&Output::Failed(Failure::Sent(StreamError::PolicyViolation))));
    assert!(link
        .out_events
        .ends_with(&[Output::Bounced(vec![message(A, "bob@b.example", "x")]), Output::Close]));
    assert!(link.out_events.contains(&Output::Failed(Failure::Received(StreamError::PolicyViolation))));
}

#[test]
fn without_fallback_db_verify_is_still_answered() {
    // The authoritative role needs no authentication of the asking stream.
    let key = FakeKeyer("secret-b").key(A, B, "their-id");
    let verify = format!("<db:verify from='a.example' to='b.example' id='their-id'>{key}</db:verify>");
    let (wire, events) = scripted_inbound(no_fallback(config(B, "secret-b")), untrusted(), &verify);
    assert!(!wire.contains("urn:xmpp:features:dialback"), "{wire}");
    assert!(
        wire.ends_with("<db:verify from='b.example' to='a.example' id='their-id' type='valid'/>"),
        "{wire}"
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn without_fallback_outbound_refuses_an_untrusted_receiver() {
    let now = Instant::now();
    let mut link = Link::new(no_fallback(with_cert(A, "secret-a")), config(B, "secret-b"), now);
    link.authority = Some(FakeKeyer("secret-a"));
    link.out_peer_cert = untrusted();
    link.in_peer_cert = trusted_for(A);
    let m = message(A, "bob@b.example", "x");
    link.out.send_stanza(m.clone(), now);
    link.settle(now);
    assert_eq!(
        link.out_events,
        vec![
            Output::Failed(Failure::Certificate(CertError::Untrusted("UnknownIssuer".into()))),
            Output::Bounced(vec![m]),
            Output::Close
        ]
    );
    assert!(!wire_text(&link.out_wire).contains("<auth"));
}

#[test]
fn without_fallback_and_verified_receiver_external_works() {
    let now = Instant::now();
    let mut link = Link::new(no_fallback(with_cert(A, "secret-a")), no_fallback(config(B, "secret-b")), now);
    link.out_peer_cert = PeerCert::Trusted(vec![Identity::Srv("_xmpp-server.b.example".into())]);
    link.in_peer_cert = trusted_for(A);
    link.settle(now);
    assert_eq!(link.out.auth_method(), Some(AuthMethod::SaslExternal));
}

/// Drives an outbound machine from a to b through TLS against a scripted peer; `features`
/// is the peer's post-TLS feature list and `replies` what it answers to our first request.
fn scripted_outbound(config: Config, features: &str, replies: &str) -> (String, Vec<Output>) {
    let now = Instant::now();
    let mut out = Outbound::new(config, A, B, now);
    out.send_stanza(message(A, "bob@b.example", "q"), now);
    let header = |id: &str| {
        format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='b.example' to='a.example' id='{id}' version='1.0'>"
        )
    };
    let tls = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>\
               <proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    out.handle_input(format!("{}{tls}", header("s1")).as_bytes(), now);
    let mut events = Vec::new();
    let mut wire = Vec::new();
    let drain = |out: &mut Outbound, events: &mut Vec<Output>, wire: &mut Vec<u8>| {
        while let Some(o) = out.poll_output() {
            match o {
                Output::Send(b) => wire.extend(b),
                other => events.push(other),
            }
        }
    };
    drain(&mut out, &mut events, &mut wire);
    assert_eq!(events, vec![Output::StartTls]);
    events.clear();
    out.tls_established(trusted_for(B), now);
    out.handle_input(
        format!("{}<stream:features>{features}</stream:features>", header("s2")).as_bytes(),
        now,
    );
    out.handle_input(replies.as_bytes(), now);
    drain(&mut out, &mut events, &mut wire);
    (wire_text(&wire), events)
}

const EXTERNAL_AND_DIALBACK: &str = "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
     <mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'/>";
const REFUSED: &str = "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>";

#[test]
fn external_failure_falls_back_to_dialback() {
    let (wire, events) = scripted_outbound(with_cert(A, "secret-a"), EXTERNAL_AND_DIALBACK, REFUSED);
    let after_auth = &wire[wire.find("<auth ").expect("EXTERNAL tried first")..];
    let key = FakeKeyer("secret-a").key(B, A, "s2");
    assert!(
        after_auth.contains(&format!("<db:result from='a.example' to='b.example'>{key}</db:result>")),
        "{wire}"
    );
    assert!(events.is_empty(), "still negotiating: {events:?}");
}

#[test]
fn external_failure_without_a_dialback_offer_fails() {
    let mechanisms =
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>";
    let (wire, events) = scripted_outbound(with_cert(A, "secret-a"), mechanisms, REFUSED);
    assert!(!wire.contains("db:result"), "{wire}");
    assert_eq!(events[0], Output::Failed(Failure::SaslRejected(SaslError::NotAuthorized)));
    assert_eq!(events.last(), Some(&Output::Close));
}

#[test]
fn external_failure_without_fallback_fails_and_bounces() {
    let (wire, events) =
        scripted_outbound(no_fallback(with_cert(A, "secret-a")), EXTERNAL_AND_DIALBACK, REFUSED);
    assert!(!wire.contains("db:result"), "{wire}");
    assert_eq!(
        events,
        vec![
            Output::Failed(Failure::SaslRejected(SaslError::NotAuthorized)),
            Output::Bounced(vec![message(A, "bob@b.example", "q")]),
            Output::Close
        ]
    );
}

#[test]
fn no_client_certificate_means_no_external_attempt() {
    let (wire, _) = scripted_outbound(config(A, "secret-a"), EXTERNAL_AND_DIALBACK, "");
    assert!(!wire.contains("<auth"), "{wire}");
    assert!(wire.contains("<db:result"), "{wire}");
}

/// An inbound machine for b (`config`) after TLS with `cert`, given a's post-TLS header and `then`;
/// returns b's post-TLS wire and its events.
fn scripted_inbound(config: Config, cert: PeerCert, then: &str) -> (String, Vec<Output>) {
    let now = Instant::now();
    let mut inb = Inbound::new(config, "id-0", now);
    let header = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>";
    inb.handle_input(format!("{header}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").as_bytes(), now);
    while inb.poll_output().is_some() {}
    inb.tls_established("id-1", cert);
    inb.handle_input(format!("{header}{then}").as_bytes(), now);
    let (mut wire, mut events) = (Vec::new(), Vec::new());
    while let Some(o) = inb.poll_output() {
        match o {
            Output::Send(b) => wire.extend(b),
            other => events.push(other),
        }
    }
    (wire_text(&wire), events)
}

fn auth(mechanism: &str, payload: &str) -> String {
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{payload}</auth>")
}

#[test]
fn inbound_refuses_bad_auth_with_the_exact_condition_and_stays_open() {
    let failure = |c: &str| format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{c}/></failure>");
    let cases = [
        (trusted_for(A), auth("PLAIN", "AGEAYg=="), "invalid-mechanism"),
        (trusted_for(A), auth("EXTERNAL", "Yy5leGFtcGxl"), "invalid-authzid"), // c.example
        (trusted_for(A), auth("EXTERNAL", "%%%"), "incorrect-encoding"),
        (untrusted(), auth("EXTERNAL", "YS5leGFtcGxl"), "not-authorized"),
        (trusted_for("c.example"), auth("EXTERNAL", "="), "not-authorized"),
    ];
    for (cert, auth, condition) in cases {
        let (wire, events) = scripted_inbound(config(B, "secret-b"), cert, &auth);
        assert!(wire.ends_with(&failure(condition)), "{auth}: {wire}");
        assert!(events.is_empty(), "{auth}: {events:?}");
    }
}

#[test]
fn inbound_closes_the_stream_after_three_refused_auths() {
    let bad = auth("EXTERNAL", "Yy5leGFtcGxl");
    let (wire, events) = scripted_inbound(config(B, "secret-b"), trusted_for(A), &bad.repeat(2));
    assert!(!wire.contains("policy-violation"), "two refusals leave it open: {wire}");
    assert!(!events.iter().any(|e| matches!(e, Output::Close)), "{events:?}");
    let (wire, events) = scripted_inbound(config(B, "secret-b"), trusted_for(A), &bad.repeat(3));
    assert!(wire.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{wire}");
    assert!(events.iter().any(|e| matches!(e, Output::Close)), "{events:?}");
}

#[test]
fn a_peer_may_not_pile_up_dialback_claims() {
    let claims = |n: usize| -> String {
        (0..n).map(|i| format!("<db:result from='d{i}.example' to='b.example'>k</db:result>")).collect()
    };
    // A burst large enough that only the claim limit can stop the stream.
    let roomy = || Config { stanza_burst: 100, ..config(B, "secret-b") };
    let (wire, events) = scripted_inbound(roomy(), untrusted(), &claims(32));
    let asked = events.iter().filter(|e| matches!(e, Output::VerifyDialback { .. })).count();
    assert_eq!((asked, wire.contains("policy-violation")), (32, false), "{wire}");
    let (wire, events) = scripted_inbound(roomy(), untrusted(), &claims(33));
    assert!(wire.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"), "{wire}");
    assert!(events.iter().any(|e| matches!(e, Output::Close)), "{events:?}");
}

#[test]
fn inbound_accepts_external_with_an_empty_authzid() {
    let (wire, events) = scripted_inbound(config(B, "secret-b"), trusted_for(A), &auth("EXTERNAL", "="));
    assert!(wire.contains("<mechanism>EXTERNAL</mechanism>"), "{wire}");
    assert!(wire.ends_with("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), "{wire}");
    assert_eq!(authenticated(&events), vec![(A.to_owned(), B.to_owned(), AuthMethod::SaslExternal)]);
}

#[test]
fn data_pipelined_after_an_accepted_auth_is_dropped() {
    let mut early = String::new();
    message(A, "bob@b.example", "pipelined").write_in_stream(crate::stream::NS_SERVER, &mut early);
    let (wire, events) =
        scripted_inbound(config(B, "secret-b"), trusted_for(A), &format!("{}{early}", auth("EXTERNAL", "=")));
    assert!(wire.ends_with("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), "{wire}");
    assert!(stanzas(&events).is_empty(), "{events:?}");
    assert_eq!(authenticated(&events).len(), 1);
}

#[test]
fn stanza_before_external_is_not_authorized() {
    let mut early = String::new();
    message(A, "bob@b.example", "early").write_in_stream(crate::stream::NS_SERVER, &mut early);
    let (wire, events) = scripted_inbound(config(B, "secret-b"), trusted_for(A), &early);
    assert_eq!(stream_error_in(wire.as_bytes()).as_deref(), Some("not-authorized"));
    assert_eq!(events.first(), Some(&Output::Failed(Failure::Sent(StreamError::NotAuthorized))));
    let decoded = decode(wire.as_bytes());
    assert!(matches!(decoded.first(), Some(StreamEvent::Open { .. })));
}
