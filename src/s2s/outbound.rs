//! One task per peer domain: keeps the peer's delivery schedule (queue, backoff and send
//! timeout, `schedule.rs`), connects when an attempt is due (`resolve.rs`), runs
//! `bridge::s2s::Outbound` on the stream, carries our stanzas and `<db:verify/>` requests, and
//! bounces the stanzas that waited too long.

use std::sync::Arc;
use std::time::Instant;

use tern_bridge::s2s::{Failure, Outbound, Output, PeerCert};
use tern_bridge::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::schedule::{PeerSchedule, Pushed};
use super::{BounceReason, Cmd, Io, S2s, CONNECT_TIMEOUT};

/// A `<db:verify/>` we were asked to send; dropping `reply` reads as "invalid".
struct Verify {
    from: String,
    to: String,
    id: String,
    key: String,
    reply: oneshot::Sender<bool>,
}

/// Runs everything for `peer` until nothing is left to send or remember; `tx` is this task's
/// own channel (to unregister).
pub(crate) async fn run(
    s2s: Arc<S2s>,
    peer: String,
    tx: mpsc::UnboundedSender<Cmd>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut schedule = PeerSchedule::new(s2s.schedule, Instant::now());
    let mut verifies: Vec<Verify> = Vec::new();
    loop {
        let now = Instant::now();
        // Whatever is already waiting counts before deciding there is nothing to do.
        while let Ok(cmd) = rx.try_recv() {
            take(&s2s, &mut schedule, &mut verifies, cmd, now);
        }
        bounce_expired(&s2s, &peer, &mut schedule, now);
        if schedule.connect_due(now, !verifies.is_empty()) {
            schedule.connecting();
            attempt(&s2s, &peer, &mut schedule, &mut verifies, &mut rx).await;
            continue;
        }
        if schedule.finished(now) && verifies.is_empty() {
            break;
        }
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => take(&s2s, &mut schedule, &mut verifies, cmd, Instant::now()),
                None => break, // never: this task holds a sender
            },
            () = super::sleep_until(schedule.poll_timeout()) => {}
        }
    }
    // Unregister first, so later sends start a new task; commands that raced with the exit
    // go to that new task too.
    s2s.forget(&peer, &tx);
    drop(tx);
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        s2s.command(&peer, Some(cmd));
    }
}

/// A command while no stream is usable: stanzas wait in the schedule (or bounce at once
/// if DNS just said the domain has no server); a verification waits for the attempt it
/// triggers, or fails at once while the peer is in backoff (the peer asking would time out
/// before the next attempt anyway).
fn take(s2s: &S2s, schedule: &mut PeerSchedule, verifies: &mut Vec<Verify>, cmd: Cmd, now: Instant) {
    match cmd {
        Cmd::Stanza(el) if schedule.is_missing(now) => s2s.bounce(vec![el], BounceReason::NotFound),
        Cmd::Stanza(el) => {
            // Not up, so never handed back.
            let _ = push(s2s, schedule, el, now);
        }
        Cmd::Verify { .. } if schedule.in_backoff(now) => {}
        Cmd::Verify { from, to, id, key, reply } => verifies.push(Verify { from, to, id, key, reply }),
    }
}

/// Queues `el` (or hands it back to be written now); a full queue bounces it at once.
fn push(s2s: &S2s, schedule: &mut PeerSchedule, el: Element, now: Instant) -> Option<Element> {
    match schedule.push(el, now) {
        Pushed::Send(el) => Some(el),
        Pushed::Queued => None,
        Pushed::Full(el) => {
            metrics::counter!("tern_s2s_queue_full_total").increment(1);
            s2s.bounce(vec![el], BounceReason::Timeout);
            None
        }
    }
}

fn bounce_expired(s2s: &S2s, peer: &str, schedule: &mut PeerSchedule, now: Instant) {
    if let Some((stanzas, reason)) = schedule.expire(now) {
        tracing::info!(peer, n = stanzas.len(), ?reason, "s2s stanzas waited too long; bouncing");
        s2s.bounce(stanzas, reason);
    }
}

/// One connection attempt, and the stream's whole life if it connects.
async fn attempt(
    s2s: &Arc<S2s>,
    peer: &str,
    schedule: &mut PeerSchedule,
    verifies: &mut Vec<Verify>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) {
    let connect = s2s.resolver.connect(peer);
    tokio::pin!(connect);
    let connected = loop {
        tokio::select! {
            res = &mut connect => break res,
            cmd = rx.recv() => if let Some(cmd) = cmd {
                take(s2s, schedule, verifies, cmd, Instant::now());
            },
            () = super::sleep_until(schedule.poll_timeout()) => {
                bounce_expired(s2s, peer, schedule, Instant::now());
            }
        }
    };
    match connected {
        Ok(sock) => {
            tracing::debug!(peer, "s2s connected");
            drive(s2s, peer, Box::new(sock), rx, schedule, verifies).await;
        }
        Err(e) => {
            verifies.clear();
            let delay = schedule.failed(e.reason, Instant::now(), super::random_u32());
            tracing::info!(peer, error = %e.detail, retry_in = ?delay, "s2s connect failed");
            if e.definitive {
                s2s.bounce(schedule.missing(Instant::now()), e.reason);
            }
        }
    }
}

/// The driver loop: drains every output, then waits for bytes, a command or a timer. Stanzas
/// go to the machine only once it is ready; until then they wait in `schedule`.
async fn drive(
    s2s: &Arc<S2s>,
    peer: &str,
    sock: Box<dyn Io>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    schedule: &mut PeerSchedule,
    verifies: &mut Vec<Verify>,
) {
    let mut machine = Outbound::new(s2s.machine.clone(), &s2s.local, peer, Instant::now());
    for v in verifies.iter() {
        machine.send_verify(&v.from, &v.to, &v.id, &v.key, Instant::now());
    }
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
                        tracing::info!(peer, error = %e, "s2s write failed");
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
                    ready = true;
                    for stanza in schedule.up() {
                        machine.send_stanza(stanza, Instant::now());
                    }
                }
                Output::VerifyResult { from, to, id, valid } => {
                    if let Some(i) = verifies.iter().position(|v| v.from == from && v.to == to && v.id == id)
                    {
                        let _ = verifies.swap_remove(i).reply.send(valid);
                    }
                }
                Output::Failed(f) => {
                    tracing::info!(peer, failure = ?f, "s2s outbound stream failed");
                    if f == Failure::Timeout {
                        reason = BounceReason::Timeout;
                    }
                }
                // Never written: they wait for the next stream.
                Output::Bounced(stanzas) => schedule.requeue(stanzas, Instant::now()),
                Output::Close => closed = true,
                Output::Stanza(_) | Output::VerifyDialback { .. } | Output::Authenticated { .. } => {}
            }
        }
        if closed || (sock.is_none() && gone) {
            if let Some(mut s) = sock.take() {
                let _ = s.shutdown().await;
            }
            break;
        }
        let wake = [machine.poll_timeout(), schedule.poll_timeout()].into_iter().flatten().min();
        let sleep = super::sleep_until(wake);
        let Some(s) = sock.as_mut() else {
            // Ends the loop above, through `gone`, once the machine has had its last word.
            let _ = super::socket_gone(&mut gone, &mut machine);
            continue;
        };
        tokio::select! {
            read = s.read(&mut buf) => super::feed(read, &buf, &mut sock, &mut machine),
            cmd = rx.recv() => match cmd {
                Some(Cmd::Stanza(el)) => {
                    if let Some(el) = push(s2s, schedule, el, Instant::now()) {
                        machine.send_stanza(el, Instant::now());
                    }
                }
                Some(Cmd::Verify { from, to, id, key, reply }) => {
                    machine.send_verify(&from, &to, &id, &key, Instant::now());
                    verifies.push(Verify { from, to, id, key, reply });
                }
                None => {} // never: the task holds a sender
            },
            () = sleep => {
                machine.handle_timeout(Instant::now());
                bounce_expired(s2s, peer, schedule, Instant::now());
            }
        }
    }
    // Unanswered verifications read as invalid; the schedule learns how the stream ended.
    verifies.clear();
    if ready {
        schedule.closed(Instant::now());
    } else {
        let delay = schedule.failed(reason, Instant::now(), super::random_u32());
        tracing::info!(peer, retry_in = ?delay, "s2s stream failed before it was ready");
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
