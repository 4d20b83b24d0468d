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
    node_with(domain, port, routes, tls, dir, S2sConfig::default()).await
}

/// A node with the limits and timings of `base`.
async fn node_with(
    domain: &str,
    port: u16,
    routes: &[(&str, String)],
    tls: S2sTls,
    dir: &std::path::Path,
    base: S2sConfig,
) -> Node {
    let config = S2sConfig {
        listen: crate::config::Listen(Some(format!("127.0.0.1:{port}").parse().unwrap())),
        routes: routes.iter().map(|(d, a)| (d.to_string(), a.clone())).collect(),
        tls,
        dialback_secret: None,
        // Never the system's nameserver: a dead loopback port answers "refused" at once.
        dns_server: Some(format!("127.0.0.1:{}", free_port()).parse().unwrap()),
        ..base
    };
    let (cert, key) = (dir.join(format!("{domain}.crt")), dir.join(format!("{domain}.key")));
    crate::tls::write_self_signed(&cert, &key, &[domain.to_owned()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&cert, &key).unwrap());
    let s2s = S2s::new(domain, &config, Some(acceptor)).unwrap();
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

/// Short timings for the retry tests.
fn quick() -> S2sConfig {
    S2sConfig { send_timeout_secs: 2, retry_min_secs: 1, retry_max_secs: 2, ..S2sConfig::default() }
}

async fn next_bounce(node: &mut Node) -> (Vec<Element>, BounceReason) {
    tokio::time::timeout(Duration::from_secs(15), node.bounces.recv()).await.expect("bounce in time").unwrap()
}

#[tokio::test]
async fn an_unreachable_peer_bounces_after_the_send_timeout_and_keeps_backing_off() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port(); // nothing listens there
    let routes = [("b.test", format!("127.0.0.1:{dead}"))];
    let mut a = node_with("a.test", free_port(), &routes, S2sTls::Preferred, dir.path(), quick()).await;
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "lost"));
    let (els, why) = next_bounce(&mut a).await;
    assert_eq!(why, BounceReason::NotFound);
    assert_eq!(els.len(), 1);
    assert_eq!(els[0].attr("id"), Some("m1"));
    // The next send waits out the backoff and bounces in turn rather than vanishing.
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m2", "lost too"));
    let (els, why) = next_bounce(&mut a).await;
    assert_eq!((els[0].attr("id"), why), (Some("m2"), BounceReason::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_queued_for_a_peer_that_comes_up_late_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let routes = [("b.test", format!("127.0.0.1:{pb}"))];
    let slow =
        S2sConfig { send_timeout_secs: 30, retry_min_secs: 1, retry_max_secs: 1, ..S2sConfig::default() };
    let mut a = node_with("a.test", pa, &routes, S2sTls::Disabled, dir.path(), slow).await;
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m1", "early"));
    tokio::time::sleep(Duration::from_millis(1500)).await; // at least one refused attempt
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "m2", "in backoff"));
    let mut b =
        node("b.test", pb, &[("a.test", format!("127.0.0.1:{pa}"))], S2sTls::Disabled, dir.path()).await;
    for id in ["m1", "m2"] {
        let got = tokio::time::timeout(Duration::from_secs(15), b.stanzas.recv())
            .await
            .expect("delivered")
            .unwrap();
        assert_eq!(got.attr("id"), Some(id));
    }
    assert!(a.bounces.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_stanza_closes_only_its_peers_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let small = S2sConfig { max_stanza_bytes: 10_000, ..S2sConfig::default() };
    let to_b = || vec![("b.test", format!("127.0.0.1:{pb}"))];
    let back = [("a.test", format!("127.0.0.1:{pa}")), ("c.test", format!("127.0.0.1:{pc}"))];
    let mut b = node_with("b.test", pb, &back, S2sTls::Disabled, dir.path(), small).await;
    let a = node("a.test", pa, &to_b(), S2sTls::Disabled, dir.path()).await;
    let c = node("c.test", pc, &to_b(), S2sTls::Disabled, dir.path()).await;
    let wait = Duration::from_secs(10);
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "a1", "fits"));
    c.s2s.send("b.test", chat("carol@c.test/p", "bob@b.test", "c1", "fits"));
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(tokio::time::timeout(wait, b.stanzas.recv()).await.expect("stanza").unwrap());
    }
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "big", &"x".repeat(20_000)));
    c.s2s.send("b.test", chat("carol@c.test/p", "bob@b.test", "c2", "still here"));
    let next = tokio::time::timeout(wait, b.stanzas.recv()).await.expect("c's stream is untouched").unwrap();
    assert_eq!(next.attr("id"), Some("c2"));
    // a's stream got a policy-violation and closed; its next stanza opens a new one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "a2", "after"));
    let next = tokio::time::timeout(wait, b.stanzas.recv()).await.expect("a reconnects").unwrap();
    assert_eq!(next.attr("id"), Some("a2"));
    assert!(got.iter().chain([&next]).all(|s| s.attr("id") != Some("big")));
}
