//! One task per peer domain: connects, runs `bridge::s2s::Outbound`, carries our stanzas and
//! `<db:verify/>` requests, and bounces what it could not send.

use std::sync::Arc;
use std::time::Instant;

use tern_bridge::s2s::{Failure, Outbound, Output, PeerCert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{BounceReason, Cmd, Io, S2s, CONNECT_TIMEOUT};

/// Runs the stream to `peer` until it ends; `tx` is this task's own channel (to unregister).
pub(crate) async fn run(
    s2s: Arc<S2s>,
    peer: String,
    tx: mpsc::UnboundedSender<Cmd>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let reason = match connect(&s2s, &peer).await {
        Ok(sock) => drive(&s2s, &peer, sock, &mut rx).await,
        Err((e, reason)) => {
            tracing::info!(peer = %peer, error = %e, "s2s connect failed");
            reason
        }
    };
    // Unregister first, so later sends start a new task; then bounce whatever is left.
    s2s.forget(&peer, &tx);
    drop(tx);
    rx.close();
    let mut left = Vec::new();
    while let Ok(cmd) = rx.try_recv() {
        if let Cmd::Stanza(el) = cmd {
            left.push(el);
        } // a dropped verify reply reads as "invalid"
    }
    s2s.bounce(left, reason);
}

async fn connect(s2s: &S2s, peer: &str) -> Result<Box<dyn Io>, (anyhow::Error, BounceReason)> {
    let addr = s2s.route(peer);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| (anyhow::anyhow!("connect to {addr} timed out"), BounceReason::Timeout))?
        .map_err(|e| (anyhow::anyhow!("connect to {addr}: {e}"), BounceReason::NotFound))?;
    let _ = tcp.set_nodelay(true);
    tracing::debug!(peer, addr, "s2s connected");
    Ok(Box::new(tcp))
}

/// The driver loop: drains every output, then waits for bytes, a command or the timer.
async fn drive(
    s2s: &Arc<S2s>,
    peer: &str,
    sock: Box<dyn Io>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> BounceReason {
    let mut machine = Outbound::new(s2s.machine.clone(), &s2s.local, peer, Instant::now());
    let mut sock = Some(sock);
    let mut verifies: Vec<((String, String, String), oneshot::Sender<bool>)> = Vec::new();
    let mut reason = BounceReason::NotFound;
    let mut buf = vec![0u8; 16 * 1024];
    let mut gone = false;
    let mut rx_open = true;
    loop {
        let mut closed = false;
        while let Some(out) = machine.poll_output() {
            match out {
                Output::Send(bytes) => {
                    let Some(s) = sock.as_mut() else { continue };
                    if let Err(e) = s.write_all(&bytes).await {
                        tracing::info!(peer, error = %e, "s2s write failed");
                        sock = None;
                        machine.close(Instant::now());
                    }
                }
                Output::StartTls => {
                    let upgraded = match sock.take() {
                        Some(plain) => starttls(s2s, peer, plain).await,
                        None => None,
                    };
                    match upgraded {
                        Some((tls, cert)) => {
                            sock = Some(tls);
                            machine.tls_established(cert, Instant::now());
                        }
                        None => machine.close(Instant::now()),
                    }
                }
                Output::Ready => {
                    let method = machine.auth_method();
                    tracing::info!(peer, ?method, "s2s outbound stream ready");
                }
                Output::VerifyResult { from, to, id, valid } => {
                    let key = (from, to, id);
                    if let Some(i) = verifies.iter().position(|(k, _)| *k == key) {
                        let (_, reply) = verifies.swap_remove(i);
                        let _ = reply.send(valid);
                    }
                }
                Output::Failed(f) => {
                    tracing::info!(peer, failure = ?f, "s2s outbound stream failed");
                    if f == Failure::Timeout {
                        reason = BounceReason::Timeout;
                    }
                }
                Output::Bounced(stanzas) => s2s.bounce(stanzas, reason),
                Output::Close => closed = true,
                Output::Stanza(_) | Output::VerifyDialback { .. } | Output::Authenticated { .. } => {}
            }
        }
        if closed {
            if let Some(mut s) = sock.take() {
                let _ = s.shutdown().await;
            }
            return reason;
        }
        let sleep = super::sleep_until(machine.poll_timeout());
        let Some(s) = sock.as_mut() else {
            // The socket is gone: close the machine (which emits its last outputs), and
            // never spin if it was somehow closed already.
            if gone {
                return reason;
            }
            gone = true;
            machine.close(Instant::now());
            continue;
        };
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    sock = None;
                    machine.close(Instant::now());
                }
                Ok(n) => machine.handle_input(&buf[..n], Instant::now()),
            },
            cmd = rx.recv(), if rx_open => match cmd {
                Some(Cmd::Stanza(el)) => machine.send_stanza(el, Instant::now()),
                Some(Cmd::Verify { from, to, id, key, reply }) => {
                    machine.send_verify(&from, &to, &id, &key, Instant::now());
                    verifies.push(((from, to, id), reply));
                }
                None => rx_open = false,
            },
            () = sleep => machine.handle_timeout(Instant::now()),
        }
    }
}

/// The TLS handshake, and the verdict on the peer's certificate for the machine.
async fn starttls(s2s: &S2s, peer: &str, plain: Box<dyn Io>) -> Option<(Box<dyn Io>, PeerCert)> {
    let name = rustls::pki_types::ServerName::try_from(peer.to_owned()).ok()?;
    match tokio::time::timeout(CONNECT_TIMEOUT, s2s.connector.connect(name, plain)).await {
        Ok(Ok(tls)) => {
            let cert = s2s.trust.examine(tls.get_ref().1.peer_certificates());
            tracing::debug!(peer, verdict = ?cert.check(peer), "s2s peer certificate");
            Some((Box::new(tls), cert))
        }
        Ok(Err(e)) => {
            tracing::info!(peer, error = %e, "s2s outbound TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer, "s2s outbound TLS handshake timed out");
            None
        }
    }
}
