//! Component mode (XEP-0114): tern as an external component of one XMPP server, instead of
//! federating over s2s. One task owns the stream for the life of the process: it connects,
//! runs `bridge::component::Connection`, carries every non-local stanza out and every stanza
//! in to the hub (the same sinks as s2s), and reconnects with backoff when the stream dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
use tern_bridge::component::{Config as MachineConfig, Connection, Failure, Handshaker, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{BounceReason, Cmd, S2s, CONNECT_TIMEOUT};

/// The first and the longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the component task needs.
pub(crate) struct Settings {
    server: String,
    machine: MachineConfig,
}

impl Settings {
    /// The component stream of `config`, with the size limit, keepalive and idle timeout of
    /// `limits`. (No stanza rate limit: the server is ours and carries every peer's traffic;
    /// it limits each of its own peers.)
    pub(crate) fn new(config: &crate::config::ComponentConfig, limits: &crate::config::S2sConfig) -> Self {
        let handshaker: Arc<dyn Handshaker> = Arc::new(Sha1Handshake(config.secret.clone()));
        let mut machine = MachineConfig::new(&config.domain, handshaker);
        machine.limits.max_stanza_bytes = limits.max_stanza_bytes;
        machine.keepalive_interval = Duration::from_secs(limits.keepalive_secs);
        machine.idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
        Settings { server: config.server.clone(), machine }
    }
}

/// XEP-0114 §3: lowercase hex of SHA-1(stream id ‖ secret).
struct Sha1Handshake(String);

impl Handshaker for Sha1Handshake {
    fn digest(&self, stream_id: &str) -> String {
        handshake_digest(stream_id, &self.0)
    }
}

/// The handshake digest for `stream_id` and `secret`.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut input = String::with_capacity(stream_id.len() + secret.len());
    input.push_str(stream_id);
    input.push_str(secret);
    digest(&SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the component stream forever, reconnecting with backoff.
pub(crate) async fn run(s2s: Arc<S2s>, tx: mpsc::UnboundedSender<Cmd>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let _keep = tx; // the registry holds a clone; this task never unregisters
    let Some(settings) = s2s.component.as_ref() else { return };
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&settings.server)).await;
        let reason = match connected {
            Ok(Ok(sock)) => {
                let _ = sock.set_nodelay(true);
                tracing::debug!(server = %settings.server, "component connected");
                let (reason, was_ready) = drive(&s2s, settings, sock, &mut rx).await;
                tracing::info!(server = %settings.server, "component stream ended; reconnecting");
                if was_ready {
                    backoff = BACKOFF_MIN;
                }
                reason
            }
            Ok(Err(e)) => {
                tracing::info!(server = %settings.server, error = %e, "component connect failed");
                BounceReason::NotFound
            }
            Err(_) => {
                tracing::info!(server = %settings.server, "component connect timed out");
                BounceReason::Timeout
            }
        };
        // Nothing waits for a stream that is down: bounce what is queued and what arrives
        // until the next attempt.
        let mut left = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Stanza(el) = cmd {
                left.push(el);
            }
        }
        s2s.bounce(left, reason);
        let wake = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Stanza(el)) => s2s.bounce(vec![el], BounceReason::NotFound),
                    Some(Cmd::Verify { .. }) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(wake) => break,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: drains every output, then waits for bytes, a command or the timer.
/// Returns the bounce reason and whether the handshake succeeded.
async fn drive(
    s2s: &Arc<S2s>,
    settings: &Settings,
    sock: tokio::net::TcpStream,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> (BounceReason, bool) {
    let mut machine = Connection::new(settings.machine.clone(), Instant::now());
    let mut sock = Some(sock);
    let mut reason = BounceReason::NotFound;
    let mut ready = false;
    let mut buf = vec![0u8; 16 * 1024];
    let mut gone = false;
    loop {
        let mut closed = false;
        while let Some(out) = machine.poll_output() {
            match out {
                Output::Send(bytes) => {
                    if let Err(e) = super::write_or_drop(&mut sock, &bytes).await {
                        tracing::info!(error = %e, "component write failed");
                        machine.close(Instant::now());
                    }
                }
                Output::Ready => {
                    ready = true;
                    tracing::info!(server = %settings.server, domain = %s2s.local, "component stream ready");
                }
                Output::Stanza(el) => s2s.deliver(el),
                Output::Failed(f) => {
                    tracing::info!(failure = ?f, "component stream failed");
                    if f == Failure::Timeout {
                        reason = BounceReason::Timeout;
                    }
                }
                Output::Bounced(stanzas) => s2s.bounce(stanzas, reason),
                Output::Close => closed = true,
            }
        }
        if closed {
            if let Some(mut s) = sock.take() {
                let _ = s.shutdown().await;
            }
            return (reason, ready);
        }
        let sleep = super::sleep_until(machine.poll_timeout());
        let Some(s) = sock.as_mut() else {
            if super::socket_gone(&mut gone, &mut machine) {
                return (reason, ready);
            }
            continue;
        };
        tokio::select! {
            read = s.read(&mut buf) => super::feed(read, &buf, &mut sock, &mut machine),
            cmd = rx.recv() => match cmd {
                Some(Cmd::Stanza(el)) => machine.send_stanza(el, Instant::now()),
                Some(Cmd::Verify { .. }) => {} // no dialback in component mode: reads as invalid
                None => machine.close(Instant::now()),
            },
            () = sleep => machine.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tern_bridge::stream::{stream_header, NS_COMPONENT, NS_SERVER};
    use tern_bridge::{Element, Limits, StreamDecoder, StreamEvent};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::{handshake_digest, Settings};
    use crate::config::ComponentConfig;
    use crate::s2s::{BounceReason, S2s};

    const WAIT: Duration = Duration::from_secs(10);

    async fn next_events(sock: &mut TcpStream, dec: &mut StreamDecoder) -> Vec<StreamEvent> {
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, sock.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "component closed the connection");
            let events = dec.feed(&buf[..n]).unwrap();
            if !events.is_empty() {
                return events;
            }
        }
    }

    /// Accepts the component, checks its header and handshake, and answers `ok`.
    async fn accept(listener: &TcpListener, secret: &str, ok: bool) -> (TcpStream, StreamDecoder) {
        let (mut sock, _) = tokio::time::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let mut dec = StreamDecoder::new(Limits::default());
        let header = next_events(&mut sock, &mut dec).await;
        assert_eq!(header[0].header_attr("to"), Some("tern.test"));
        assert_eq!(header[0].header_attr("xmlns"), Some(NS_COMPONENT));
        let reply = stream_header(NS_COMPONENT, "", "tern.test", Some("abc123"), false);
        sock.write_all(reply.as_bytes()).await.unwrap();
        let hs = next_events(&mut sock, &mut dec).await;
        let StreamEvent::Element(hs) = &hs[0] else { panic!("{hs:?}") };
        assert!(hs.is("handshake", NS_COMPONENT));
        assert_eq!(hs.text(), handshake_digest("abc123", secret));
        let answer: &[u8] = if ok {
            b"<handshake/>"
        } else {
            b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        };
        sock.write_all(answer).await.unwrap();
        (sock, dec)
    }

    fn message(from: &str, to: &str, ns: &str) -> Element {
        Element::new("message", ns)
            .with_attr("from", from)
            .with_attr("to", to)
            .with_child(Element::new("body", ns).with_text("hi"))
    }

    #[test]
    fn the_stream_takes_the_s2s_size_limit_and_timers() {
        let config =
            ComponentConfig { server: "127.0.0.1:1".into(), domain: "tern.test".into(), secret: "s".into() };
        let limits = crate::config::S2sConfig {
            max_stanza_bytes: 12_345,
            keepalive_secs: 7,
            idle_timeout_secs: 70,
            ..Default::default()
        };
        let machine = Settings::new(&config, &limits).machine;
        assert_eq!(machine.limits.max_stanza_bytes, 12_345);
        assert_eq!(machine.keepalive_interval, Duration::from_secs(7));
        assert_eq!(machine.idle_timeout, Duration::from_secs(70));
    }

    #[tokio::test]
    async fn stanzas_flow_both_ways_and_the_stream_is_reconnected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = ComponentConfig {
            server: listener.local_addr().unwrap().to_string(),
            domain: "tern.test".into(),
            secret: "s3cret".into(),
        };
        let s2s = S2s::new_component(&config, &crate::config::S2sConfig::default()).unwrap();
        assert!(s2s.is_component());
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        s2s.set_sinks(
            Arc::new(move |el| drop(in_tx.send(el))),
            Arc::new(move |els, reason| drop(b_tx.send((els, reason)))),
        );
        s2s.start();

        let (mut sock, mut dec) = accept(&listener, "s3cret", true).await;
        // Out: any non-local domain goes over the one stream, in the component namespace.
        s2s.send("xmpp.test", message("alice@tern.test/p", "bob@xmpp.test", NS_SERVER));
        s2s.send("elsewhere.test", message("alice@tern.test/p", "carol@elsewhere.test", NS_SERVER));
        let mut got = Vec::new();
        while got.len() < 2 {
            for ev in next_events(&mut sock, &mut dec).await {
                if let StreamEvent::Element(el) = ev {
                    got.push(el);
                }
            }
        }
        assert!(got.iter().all(|el| el.is("message", NS_COMPONENT)), "{got:?}");
        assert_eq!(got[1].attr("to"), Some("carol@elsewhere.test"));

        // In: handed to the hub sink in jabber:server.
        let mut text = String::new();
        message("bob@xmpp.test/x", "alice@tern.test", NS_COMPONENT).write_in_stream(NS_COMPONENT, &mut text);
        sock.write_all(text.as_bytes()).await.unwrap();
        let el = tokio::time::timeout(WAIT, in_rx.recv()).await.unwrap().unwrap();
        assert_eq!(el, message("bob@xmpp.test/x", "alice@tern.test", NS_SERVER));

        // The server goes away: the component connects again by itself.
        drop(sock);
        let (mut sock, mut dec) = accept(&listener, "s3cret", true).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        s2s.send("xmpp.test", message("alice@tern.test/p", "bob@xmpp.test", NS_SERVER));
        let ev = next_events(&mut sock, &mut dec).await;
        assert!(matches!(&ev[0], StreamEvent::Element(el) if el.is("message", NS_COMPONENT)), "{ev:?}");
        assert!(b_rx.try_recv().is_err(), "nothing was bounced");
    }

    #[tokio::test]
    async fn a_refused_handshake_bounces_and_retries() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = ComponentConfig {
            server: listener.local_addr().unwrap().to_string(),
            domain: "tern.test".into(),
            secret: "wrong".into(),
        };
        let s2s = S2s::new_component(&config, &crate::config::S2sConfig::default()).unwrap();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        s2s.set_sinks(Arc::new(|_| {}), Arc::new(move |els, reason| drop(b_tx.send((els, reason)))));
        s2s.start();
        let queued = message("alice@tern.test/p", "bob@xmpp.test", NS_SERVER);
        s2s.send("xmpp.test", queued.clone());
        let (_sock, _dec) = accept(&listener, "wrong", false).await;
        let (els, reason) = tokio::time::timeout(WAIT, b_rx.recv()).await.unwrap().unwrap();
        assert_eq!((els, reason), (vec![queued], BounceReason::NotFound));
        // And it tries again.
        let _again = accept(&listener, "wrong", false).await;
    }

    #[test]
    fn handshake_digest_is_lowercase_hex_sha1_of_id_then_secret() {
        // Reference value from Python's hashlib.sha1(b"3BF96D32secret").
        assert_eq!(handshake_digest("3BF96D32", "secret"), "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136");
    }
}
