//! MQTT over WebSocket (MQTT 3.1.1 §6): binary frames carrying a byte stream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use tokio_tungstenite::WebSocketStream;

/// Subprotocols we accept, in order of preference: "mqtt" is MQTT 3.1.1 §6 and 5.0;
/// "mqttv3.1" is what older MQTT 3.1 JavaScript clients still offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the server handshake on `stream`, requiring/echoing the `mqtt` subprotocol (accept "mqttv3.1" too), and returns a byte stream.
pub async fn accept<S>(stream: S, max_frame: usize) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // One MQTT packet may span frames (§6), but a single frame or reassembled message
    // larger than the broker's packet limit is only a way to make us buffer memory.
    let config = WebSocketConfig {
        max_frame_size: Some(max_frame),
        max_message_size: Some(max_frame),
        ..WebSocketConfig::default()
    };

    // The callback cannot return our own error type, so it leaves a mark for why it refused.
    // An atomic rather than a Cell keeps this future Send.
    let no_subprotocol = AtomicBool::new(false);
    // The large Err type is tungstenite's `Callback` signature, not our choice.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| match choose_subprotocol(request) {
        Some(chosen) => {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
            Ok(response)
        }
        None => {
            no_subprotocol.store(true, Ordering::Relaxed);
            let mut refusal =
                ErrorResponse::new(Some("Sec-WebSocket-Protocol must offer \"mqtt\"\n".to_string()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    };
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(inner) => {
            Ok(WsStream { inner, pending: Bytes::new(), max_frame: max_frame.max(1), read_failed: false })
        }
        Err(_) if no_subprotocol.load(Ordering::Relaxed) => Err(WsError::NoMqttSubprotocol),
        Err(e) => Err(WsError::Handshake(Box::new(e))),
    }
}

/// Picks our most preferred subprotocol among those offered; RFC 6455 lets the server choose
/// any offered one, and browsers send the list comma-separated with spaces.
fn choose_subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS.into_iter().find(|ours| offered.iter().any(|theirs| theirs == ours))
}

/// A WebSocket connection seen as a plain byte stream: binary frames in, binary frames out.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Unread rest of the last binary message; MQTT reads in small pieces.
    pending: Bytes,
    /// Largest payload sent in one frame, so a peer with the same limit accepts ours.
    max_frame: usize,
    /// Set after a text frame so later reads fail too instead of resuming mid-stream.
    read_failed: bool,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("pending", &self.pending.len())
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read_failed {
            return Poll::Ready(Err(text_frame_error()));
        }
        while this.pending.is_empty() {
            // Pings are answered and close replies flushed inside tungstenite's read, which
            // is why a Close message loops round: the next poll sends the reply, then ends.
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = Bytes::from(data),
                Some(Ok(Message::Text(_))) => {
                    this.read_failed = true;
                    return Poll::Ready(Err(text_frame_error()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => match to_io(e) {
                    Some(e) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(())),
                },
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        // poll_ready pushes out previously queued frames when the socket was full; it is
        // the backpressure point, so a slow phone stalls its writer instead of growing a queue.
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(write_error)?;
        let n = buf.len().min(this.max_frame);
        Pin::new(&mut this.inner).start_send(Message::Binary(buf[..n].to_vec())).map_err(write_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(write_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(write_error)
    }
}

fn text_frame_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "text WebSocket frame on an MQTT connection (MQTT 3.1.1 §6 requires binary)",
    )
}

/// Maps a read-side error; `None` means end of stream.
fn to_io(e: tungstenite::Error) -> Option<io::Error> {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => None,
        // Phones on bad networks drop TCP without a close frame all the time; that is the
        // same event as EOF on a plain MQTT socket, and the MQTT layer handles it as such.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Io(e) => Some(e),
        e @ (tungstenite::Error::Protocol(_)
        | tungstenite::Error::Capacity(_)
        | tungstenite::Error::Utf8
        | tungstenite::Error::AttackAttempt) => Some(io::Error::new(io::ErrorKind::InvalidData, e)),
        e => Some(io::Error::other(e)),
    }
}

fn write_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e @ (tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        e => io::Error::other(e),
    }
}

/// Why the WebSocket handshake or stream failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The client did not offer the `mqtt` (or `mqttv3.1`) subprotocol; it was sent a 400.
    #[error("WebSocket client did not offer the mqtt subprotocol")]
    NoMqttSubprotocol,
    /// The HTTP upgrade or the socket under it failed.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] Box<tungstenite::Error>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    type Client = WebSocketStream<TcpStream>;

    /// Starts a listener whose one connection is handed to `serve` after `accept`.
    async fn serve_one<F, Fut>(
        max_frame: usize,
        serve: F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(Result<WsStream<TcpStream>, WsError>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(accept(tcp, max_frame).await).await;
        });
        (addr, task)
    }

    async fn connect(
        addr: std::net::SocketAddr,
        protocol: Option<&str>,
    ) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        if let Some(p) = protocol {
            request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
        }
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
        if protocol.is_some() {
            assert!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_some());
        }
        Ok(ws)
    }

    async fn next_binary(client: &mut Client) -> Vec<u8> {
        loop {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(b) => return b,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn byte_stream_both_ways() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let expected = payload.clone();
        let (addr, server) = serve_one(1024, move |ws| async move {
            let mut ws = ws.unwrap();
            let mut got = vec![0u8; expected.len()];
            ws.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
            // 2500 bytes with a 1024 frame cap must arrive as several frames.
            ws.write_all(&got[..2500]).await.unwrap();
            ws.flush().await.unwrap();
            ws.shutdown().await.unwrap();
            let mut rest = Vec::new();
            ws.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        })
        .await;

        let mut client = connect(addr, Some("mqtt")).await.unwrap();
        // Split at arbitrary points, including a 1-byte frame and a ping in between.
        let cuts = [0, 1, 2, 7, 500, 1023, 2047, 2999, 3000];
        for w in cuts.windows(2) {
            client.send(Message::Binary(payload[w[0]..w[1]].to_vec())).await.unwrap();
            if w[0] == 2 {
                client.send(Message::Ping(b"p".to_vec())).await.unwrap();
            }
        }
        let mut echoed = Vec::new();
        while echoed.len() < 2500 {
            let frame = next_binary(&mut client).await;
            assert!(frame.len() <= 1024);
            echoed.extend(frame);
        }
        assert_eq!(echoed, payload[..2500]);
        // The server's shutdown sends a close frame; reading on flushes the client's reply,
        // which is what lets the server's read_to_end finish.
        let mut saw_close = false;
        while let Some(m) = client.next().await {
            match m.unwrap() {
                Message::Close(_) => saw_close = true,
                Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_close);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn client_close_is_eof() {
        let (addr, server) = serve_one(1024, |ws| async move {
            let mut ws = ws.unwrap();
            let mut all = Vec::new();
            ws.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, b"abc");
        })
        .await;
        let mut client = connect(addr, Some("mqtt")).await.unwrap();
        client.send(Message::Binary(b"abc".to_vec())).await.unwrap();
        client.close(None).await.unwrap();
        // The server must answer the close so the client sees a clean end.
        while let Some(m) = client.next().await {
            m.unwrap();
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn dropped_tcp_is_eof() {
        let (addr, server) = serve_one(1024, |ws| async move {
            let mut ws = ws.unwrap();
            let mut all = Vec::new();
            ws.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, b"xy");
        })
        .await;
        let mut client = connect(addr, Some("mqtt")).await.unwrap();
        client.send(Message::Binary(b"xy".to_vec())).await.unwrap();
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn text_frame_is_invalid_data() {
        let (addr, server) = serve_one(1024, |ws| async move {
            let mut ws = ws.unwrap();
            let mut buf = [0u8; 16];
            let err = ws.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let err = ws.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        })
        .await;
        let mut client = connect(addr, Some("mqtt")).await.unwrap();
        client.send(Message::Text("CONNECT".into())).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_frame_is_invalid_data() {
        let (addr, server) = serve_one(64, |ws| async move {
            let mut ws = ws.unwrap();
            let mut buf = [0u8; 128];
            let err = ws.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        })
        .await;
        let mut client = connect(addr, Some("mqtt")).await.unwrap();
        client.send(Message::Binary(vec![0u8; 65])).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn mqttv31_is_accepted_and_echoed() {
        let (addr, server) = serve_one(1024, |ws| async move {
            let mut ws = ws.unwrap();
            let mut buf = [0u8; 1];
            ws.read_exact(&mut buf).await.unwrap();
            ws.write_all(&buf).await.unwrap();
            ws.flush().await.unwrap();
        })
        .await;
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat,mqttv3.1"));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        assert_eq!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(), "mqttv3.1");
        client.send(Message::Binary(vec![9])).await.unwrap();
        assert_eq!(next_binary(&mut client).await, vec![9]);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn mqtt_preferred_over_mqttv31() {
        let (addr, server) = serve_one(1024, |ws| async move {
            ws.unwrap();
        })
        .await;
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqttv3.1,mqtt"));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (_client, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        assert_eq!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(), "mqtt");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_subprotocol_is_refused() {
        for offered in [None, Some("chat")] {
            let (addr, server) = serve_one(1024, |ws| async move {
                assert!(matches!(ws, Err(WsError::NoMqttSubprotocol)), "{ws:?}");
            })
            .await;
            let err = connect(addr, offered).await.unwrap_err();
            match err {
                tungstenite::Error::Http(r) => assert_eq!(r.status(), StatusCode::BAD_REQUEST),
                other => panic!("unexpected {other:?}"),
            }
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn plain_http_is_a_handshake_error() {
        let (addr, server) = serve_one(1024, |ws| async move {
            assert!(matches!(ws, Err(WsError::Handshake(_))), "{ws:?}");
        })
        .await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        let _ = tcp.read_to_end(&mut response).await;
        server.await.unwrap();
    }
}
