//! A tiny counting TCP proxy on loopback.
//!
//! Every client connection of a measured role goes through one of these: it accepts, connects
//! to the broker, and copies both ways, adding every byte it forwards to a counter. The counts
//! are MQTT bytes as they travel in TCP segments (no TCP/IP headers), so they do not depend on
//! how the kernel batches segments.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes forwarded so far, per direction.
#[derive(Default)]
pub struct Counters {
    /// Client → broker.
    pub up: AtomicU64,
    /// Broker → client.
    pub down: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub up: u64,
    pub down: u64,
}

impl Snapshot {
    /// What was forwarded between `earlier` and `self`.
    pub fn since(self, earlier: Snapshot) -> Snapshot {
        Snapshot { up: self.up - earlier.up, down: self.down - earlier.down }
    }
}

/// A running proxy; stops (listener and every connection) when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream` (a loopback address).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        anyhow::ensure!(upstream.ip().is_loopback(), "the proxy only forwards to loopback, not {upstream}");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let counters = counters.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let counters = counters.clone();
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let up = pump(cr, sw, &counters.up);
                        let down = pump(sr, cw, &counters.down);
                        let _ = tokio::join!(up, down);
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Ok(Proxy { addr, counters, accept, conns })
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            up: self.counters.up.load(Ordering::SeqCst),
            down: self.counters.down.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` into `to` until EOF or an error, counting; then half-closes `to`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_both_directions() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong!!").await.unwrap();
        });
        let proxy = Proxy::start(echo_addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"ping!").await.unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong!!");
        // The counter is bumped after the write, so give it a moment.
        for _ in 0..100 {
            if proxy.snapshot().down == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let s = proxy.snapshot();
        assert_eq!((s.up, s.down), (5, 6));
    }
}
