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
    node_with(domain, port, routes, S2sConfig { tls, ..S2sConfig::default() }, own_cert(domain, dir)).await
}

/// A self-signed certificate for `domain`, written under `dir`.
fn own_cert(domain: &str, dir: &std::path::Path) -> crate::tls::Identity {
    let (cert, key) = (dir.join(format!("{domain}.crt")), dir.join(format!("{domain}.key")));
    crate::tls::write_self_signed(&cert, &key, &[domain.to_owned()]).unwrap();
    crate::tls::Identity::load(&cert, &key).unwrap()
}

/// A node with `config` (listen, routes and a dead nameserver filled in) presenting `own`.
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
        // Never the system's nameserver: a dead loopback port answers "refused" at once.
        dns_server: Some(format!("127.0.0.1:{}", free_port()).parse().unwrap()),
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
        // A refused peer's stanzas wait out the send timeout like any unreachable peer's.
        send_timeout_secs: 2,
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
async fn the_s2s_config_sets_the_machines_limits() {
    let config = S2sConfig {
        max_stanza_bytes: 20_000,
        max_stanzas_per_sec: 3,
        stanza_burst: 4,
        keepalive_secs: 5,
        idle_timeout_secs: 50,
        ..S2sConfig::default()
    };
    let s2s = S2s::new("a.test", &config, None).unwrap();
    let m = &s2s.machine;
    assert_eq!((m.limits.max_stanza_bytes, m.max_stanzas_per_sec, m.stanza_burst), (20_000, 3, 4));
    assert_eq!((m.keepalive_interval, m.idle_timeout), (Duration::from_secs(5), Duration::from_secs(50)));
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
    let mut a = node_with(
        "a.test",
        free_port(),
        &routes,
        S2sConfig { tls: S2sTls::Preferred, ..quick() },
        own_cert("a.test", dir.path()),
    )
    .await;
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
    let mut a = node_with(
        "a.test",
        pa,
        &routes,
        S2sConfig { tls: S2sTls::Disabled, ..slow },
        own_cert("a.test", dir.path()),
    )
    .await;
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

/// b (with `limits`) hears from a and c; then a `offend`s: c's stream is untouched, a's
/// is closed (its next stanza arrives over a new one). Returns the ids b got from a.
async fn only_the_offenders_stream_closes(limits: S2sConfig, offend: impl FnOnce(&Node)) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let to_b = || vec![("b.test", format!("127.0.0.1:{pb}"))];
    let back = [("a.test", format!("127.0.0.1:{pa}")), ("c.test", format!("127.0.0.1:{pc}"))];
    let mut b = node_with(
        "b.test",
        pb,
        &back,
        S2sConfig { tls: S2sTls::Disabled, ..limits },
        own_cert("b.test", dir.path()),
    )
    .await;
    let a = node("a.test", pa, &to_b(), S2sTls::Disabled, dir.path()).await;
    let c = node("c.test", pc, &to_b(), S2sTls::Disabled, dir.path()).await;
    // Every (sender's domain, id) b got, in order.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut wait_for = async |id: &str| {
        while !seen.iter().any(|(_, i)| i == id) {
            let got = tokio::time::timeout(Duration::from_secs(10), b.stanzas.recv())
                .await
                .unwrap_or_else(|_| panic!("{id} in time"))
                .unwrap();
            let from = got.attr("from").unwrap_or_default().split('@').nth(1).unwrap_or_default().to_owned();
            seen.push((from, got.attr("id").unwrap_or_default().to_owned()));
        }
    };
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "a1", "fits"));
    c.s2s.send("b.test", chat("carol@c.test/p", "bob@b.test", "c1", "fits"));
    wait_for("a1").await;
    wait_for("c1").await;
    offend(&a);
    c.s2s.send("b.test", chat("carol@c.test/p", "bob@b.test", "c2", "still here"));
    wait_for("c2").await;
    // Give b's stream error time to reach a and close its stream first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "a2", "after"));
    wait_for("a2").await;
    seen.into_iter().filter(|(from, _)| from.starts_with("a.test")).map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_stanza_closes_only_its_peers_stream() {
    let limits = S2sConfig { max_stanza_bytes: 10_000, ..S2sConfig::default() };
    let from_a = only_the_offenders_stream_closes(limits, |a| {
        a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", "big", &"x".repeat(20_000)));
    })
    .await;
    assert!(!from_a.iter().any(|id| id == "big"), "{from_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_closes_only_its_peers_stream() {
    let limits = S2sConfig { max_stanzas_per_sec: 1, stanza_burst: 10, ..S2sConfig::default() };
    let from_a = only_the_offenders_stream_closes(limits, |a| {
        for n in 0..50 {
            a.s2s.send("b.test", chat("alice@a.test/p", "bob@b.test", &format!("f{n}"), "flood"));
        }
    })
    .await;
    let flood = from_a.iter().filter(|id| id.starts_with('f')).count();
    assert!(flood < 50, "the flood was cut off: {from_a:?}");
}

#[tokio::test]
async fn a_peer_that_stops_reading_loses_its_connection_not_the_driver() {
    let (_peer, ours) = tokio::io::duplex(1024);
    let mut sock = Some(ours);
    let stalled = super::write_or_drop(&mut sock, &vec![b' '; 64 * 1024]).await;
    assert_eq!(stalled.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    assert!(sock.is_none(), "the connection is dropped");
    // Nothing left to write to: later output is discarded, not an error.
    assert!(super::write_or_drop(&mut sock, b"more").await.is_ok());
}
