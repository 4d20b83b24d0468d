//! The s2s listener and one task per peer connection running `bridge::s2s::Inbound`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tern_bridge::s2s::{Inbound, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{stream_id, Io, S2s, CONNECT_TIMEOUT};

/// Binds the s2s listener; returns the bound address and the accept loop to spawn.
pub async fn bind(
    addr: SocketAddr,
    s2s: Arc<S2s>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let accept = async move {
        loop {
            match listener.accept().await {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(run(s2s.clone(), tcp, remote));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "s2s accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    };
    Ok((local, accept))
}

/// The driver loop of one inbound stream.
async fn run(s2s: Arc<S2s>, tcp: TcpStream, remote: SocketAddr) {
    tracing::debug!(%remote, "s2s inbound connection");
    let mut machine = Inbound::new(s2s.machine.clone(), &stream_id(), Instant::now());
    let mut sock: Option<Box<dyn Io>> = Some(Box::new(tcp));
    // Dialback verdicts arrive from other tasks: (from, to, valid).
    let (verdict_tx, mut verdicts) = mpsc::unbounded_channel::<(String, String, bool)>();
    let mut buf = vec![0u8; 16 * 1024];
    let mut gone = false;
    loop {
        let mut closed = false;
        while let Some(out) = machine.poll_output() {
            match out {
                Output::Send(bytes) => {
                    if let Err(e) = super::write_or_drop(&mut sock, &bytes).await {
                        tracing::info!(%remote, error = %e, "s2s write failed");
                        machine.close(Instant::now());
                    }
                }
                Output::StartTls => {
                    let upgraded = match (sock.take(), s2s.acceptor.as_ref()) {
                        (Some(plain), Some(acceptor)) => {
                            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(plain)).await {
                                Ok(Ok(tls)) => {
                                    let cert = s2s.trust.examine(tls.get_ref().1.peer_certificates());
                                    Some((Box::new(tls) as Box<dyn Io>, cert))
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%remote, error = %e, "s2s inbound TLS handshake failed");
                                    None
                                }
                                Err(_) => None,
                            }
                        }
                        _ => None,
                    };
                    match upgraded {
                        Some((tls, cert)) => {
                            sock = Some(tls);
                            machine.tls_established(&stream_id(), cert);
                        }
                        None => machine.close(Instant::now()),
                    }
                }
                Output::Stanza(el) => s2s.deliver(el),
                Output::VerifyDialback { from, to, id, key } => {
                    // Ask `from`'s authoritative server over our outbound stream to it.
                    let answer = s2s.verify(&to, &from, &id, &key);
                    let tx = verdict_tx.clone();
                    tokio::spawn(async move {
                        let valid = answer.await.unwrap_or(false);
                        let _ = tx.send((from, to, valid));
                    });
                }
                Output::Authenticated { remote: domain, local, method } => {
                    tracing::info!(%remote, peer = domain, local, ?method, "s2s inbound peer authenticated");
                }
                Output::Failed(f) => tracing::info!(%remote, failure = ?f, "s2s inbound stream failed"),
                Output::Close => closed = true,
                Output::Ready | Output::VerifyResult { .. } | Output::Bounced(_) => {}
            }
        }
        if closed {
            if let Some(mut s) = sock.take() {
                let _ = s.shutdown().await;
            }
            return;
        }
        let sleep = super::sleep_until(machine.poll_timeout());
        let Some(s) = sock.as_mut() else {
            if super::socket_gone(&mut gone, &mut machine) {
                return;
            }
            continue;
        };
        tokio::select! {
            read = s.read(&mut buf) => super::feed(read, &buf, &mut sock, &mut machine),
            Some((from, to, valid)) = verdicts.recv() => {
                if !valid {
                    tracing::info!(%remote, from, to, "s2s dialback key refused");
                }
                machine.dialback_result(&from, &to, valid, Instant::now());
            }
            () = sleep => machine.handle_timeout(Instant::now()),
        }
    }
}
