//! tern ⇄ tern over loopback: two [`S2s`] services federating, STARTTLS and dialback included.
//! (tern ⇄ Prosody is tests/python/xmpp/test_federation.py.)

use std::sync::Arc;
use std::time::Duration;

use tern_bridge::stream::NS_SERVER;
use tern_bridge::Element;
use tokio::sync::mpsc;

use super::*;
use crate::config::{S2sConfig, S2sTls};

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    s2s: Arc<S2s>,
    stanzas: mpsc::UnboundedReceiver<Element>,
    bounces: mpsc::UnboundedReceiver<(Vec<Element>, BounceReason)>,
}

async fn node(
    domain: &str,
    port: u16,
    routes: &[(&str, String)],
    tls: S2sTls,
    dir: &std::path::Path,
) -> Node {
    let (cert, key) = (dir.join(format!("{domain}.crt")), dir.join(format!("{domain}.key")));
    crate::tls::write_self_signed(&cert, &key, &[domain.to_owned()]).unwrap();
    let own = crate::tls::Identity::load(&cert, &key).unwrap();
    node_with(domain, port, routes, S2sConfig { tls, ..S2sConfig::default() }, own).await
}

/// A node with `config` (listen and routes filled in) presenting the certificate `own`.
async fn node_with(
    domain: &str,
    port: u16,
    routes: &[(&str, String)],
    config: S2sConfig,
    own: crate::tls::Identity,
) -> Node {
    let config = S2sConfig {
        listen: crate::config::Listen(Some(format!("127.0.0.1:{port}").parse().unwrap())),
        routes: routes.iter().map(|(d, a)| (d.to_string(), a.clone())).collect(),
        ..config
    };
    let s2s = S2s::new(domain, &config, Some(own)).unwrap();
    let (stx, stanzas) = mpsc::unbounded_channel();
    let (btx, bounces) = mpsc::unbounded_channel();
    s2s.set_sinks(
        Arc::new(move |el| {
            let _ = stx.send(el);
        }),
        Arc::new(move |els, why| {
            let _ = btx.send((els, why));
        }),
    );
    let (_, accept) = inbound::bind(config.listen.0.unwrap(), s2s.clone()).await.unwrap();
    tokio::spawn(accept);
    Node { s2s, stanzas, bounces }
}

fn chat(from: &str, to: &str, id: &str, body: &str) -> Element {
    Element::new("message", NS_SERVER)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_attr("type", "chat")
        .with_child(Element::new("body", NS_SERVER).with_text(body))
}

async fn federate(tls: S2sTls) {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let mut a = node("a.test", pa, &[("b.test", format!("127.0.0.1:{pb}"))], tls, dir.path()).await;
    let mut b = node("b.test", pb, &[("a.test", format!("127.0.0.1:{pa}"))], tls, dir.path()).await;

    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "hi bob"));
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m2", "again"));
    let wait = Duration::from_secs(10);
    for (id, body) in [("m1", "hi bob"), ("m2", "again")] {
        let got = tokio::time::timeout(wait, b.stanzas.recv()).await.expect("stanza in time").unwrap();
        assert_eq!(got.attr("id"), Some(id));
        assert_eq!(got.attr("from"), Some("alice@a.test/p"));
        assert_eq!(got.child("body", NS_SERVER).map(|e| e.text()), Some(body.to_owned()));
    }
    b.s2s.send("a.test", chat("bob@b.test/x", "alice@a.test", "r1", "hi alice"));
    let got = tokio::time::timeout(wait, a.stanzas.recv()).await.expect("reply in time").unwrap();
    assert_eq!(got.attr("id"), Some("r1"));
    assert!(a.bounces.try_recv().is_err() && b.bounces.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_terns_federate_with_starttls_and_dialback() {
    federate(S2sTls::Required).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_terns_federate_in_plaintext() {
    federate(S2sTls::Disabled).await;
}

/// Two nodes whose certificates come from one CA that both trust, neither allowing dialback:
/// only SASL EXTERNAL (XEP-0178) can carry stanzas either way. `b_signed: false` gives b a
/// self-signed certificate instead.
async fn cert_pair(dir: &std::path::Path, b_signed: bool) -> (Node, Node) {
    use super::certs::tests::{ca, dns, leaf};
    let ca = ca();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let strict = S2sConfig {
        tls: S2sTls::Required,
        ca_file: Some(ca_file),
        dialback_fallback: false,
        ..S2sConfig::default()
    };
    let (pa, pb) = (free_port(), free_port());
    let b_cert = leaf(b_signed.then_some(&ca), vec![dns("b.test")]);
    let a_routes = [("b.test", format!("127.0.0.1:{pb}"))];
    let a = node_with("a.test", pa, &a_routes, strict.clone(), leaf(Some(&ca), vec![dns("a.test")])).await;
    let b = node_with("b.test", pb, &[("a.test", format!("127.0.0.1:{pa}"))], strict, b_cert).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_terns_federate_with_certificates_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = cert_pair(dir.path(), true).await;
    let wait = Duration::from_secs(10);
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "by certificate"));
    let got = tokio::time::timeout(wait, b.stanzas.recv()).await.expect("stanza in time").unwrap();
    assert_eq!(got.attr("id"), Some("m1"));
    b.s2s.send("a.test", chat("bob@b.test/x", "alice@a.test", "r1", "likewise"));
    let got = tokio::time::timeout(wait, a.stanzas.recv()).await.expect("reply in time").unwrap();
    assert_eq!(got.attr("id"), Some("r1"));
    assert!(a.bounces.try_recv().is_err() && b.bounces.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_without_fallback_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = cert_pair(dir.path(), false).await;
    let wait = Duration::from_secs(10);
    // a refuses b's self-signed server certificate…
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "not to you"));
    let (els, why) = tokio::time::timeout(wait, a.bounces.recv()).await.expect("bounce in time").unwrap();
    assert_eq!((els[0].attr("id"), why), (Some("m1"), BounceReason::NotFound));
    // …and b, whose client certificate a cannot verify, is refused dialback (policy-violation).
    b.s2s.send("a.test", chat("bob@b.test/x", "alice@a.test", "r1", "let me in"));
    let (els, _) = tokio::time::timeout(wait, b.bounces.recv()).await.expect("bounce in time").unwrap();
    assert_eq!(els[0].attr("id"), Some("r1"));
    assert!(a.stanzas.try_recv().is_err() && b.stanzas.try_recv().is_err());
}

#[tokio::test]
async fn an_unreachable_peer_bounces_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port(); // nothing listens there
    let mut a = node(
        "a.test",
        free_port(),
        &[("b.test", format!("127.0.0.1:{dead}"))],
        S2sTls::Preferred,
        dir.path(),
    )
    .await;
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "lost"));
    let (els, why) = tokio::time::timeout(Duration::from_secs(10), a.bounces.recv())
        .await
        .expect("bounce in time")
        .unwrap();
    assert_eq!(why, BounceReason::NotFound);
    assert_eq!(els.len(), 1);
    assert_eq!(els[0].attr("id"), Some("m1"));
    // The next send tries again (and bounces again) rather than vanishing.
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m2", "lost too"));
    let (els, _) = tokio::time::timeout(Duration::from_secs(10), a.bounces.recv())
        .await
        .expect("bounce in time")
        .unwrap();
    assert_eq!(els[0].attr("id"), Some("m2"));
}
