//! Accept loops for the TCP, TLS and WebSocket listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::conn::{self, Shared};

/// How a listener frames MQTT.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls(TlsAcceptor),
    /// WebSocket over TCP.
    Ws,
}

/// Handshakes (TLS, WebSocket) must finish within this, or the socket is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr`; returns the bound address (useful with port 0) and the accept loop.
pub async fn bind(
    addr: SocketAddr,
    transport: Transport,
    shared: Arc<Shared>,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name: &'static str = match transport {
        Transport::Tcp => "tcp",
        Transport::Tls(_) => "tls",
        Transport::Ws => "ws",
    };
    tracing::info!(listener = name, addr = %local, "listening");
    let accept_loop = async move {
        loop {
            let (socket, _peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            // A phone that vanishes without a FIN (and with keepalive 0, or a write pending)
            // would otherwise hold its session, and look online, for as long as the kernel likes.
            let probes = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(120))
                .with_interval(Duration::from_secs(30))
                .with_retries(4);
            let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&probes);
            // One task type per transport: a task is as large as its future, and a TLS stream
            // or a WebSocket handshake in the same future would make every plain TCP
            // connection's task as large (9.4 KB where it needs 5.4).
            match &transport {
                Transport::Tcp => drop(tokio::spawn(conn::run(socket, name, shared.clone()))),
                Transport::Tls(acceptor) => {
                    drop(tokio::spawn(serve_tls(socket, acceptor.clone(), name, shared.clone())))
                }
                Transport::Ws => drop(tokio::spawn(serve_ws(socket, name, shared.clone()))),
            }
        }
    };
    Ok((local, accept_loop))
}

/// A TLS connection: the handshake, then the session.
async fn serve_tls(socket: TcpStream, acceptor: TlsAcceptor, name: &'static str, shared: Arc<Shared>) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => conn::run(tls, name, shared).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

/// A WebSocket connection: the HTTP upgrade, then the session.
async fn serve_ws(socket: TcpStream, name: &'static str, shared: Arc<Shared>) {
    let max = shared.max_packet + 16;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, super::ws::accept(socket, max)).await {
        Ok(Ok(ws)) => conn::run(ws, name, shared).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!("WebSocket handshake timed out"),
    }
}
