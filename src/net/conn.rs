//! The driver of one MQTT connection: feeds bytes, results and timers into the sans-IO
//! [`Session`], and carries out every action it returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::core::session::{Action, Applied, Identity, LoginOk, Session, SessionConfig};
use crate::envelope::EnvelopeError;
use crate::hub::Hub;
use crate::ids::Seq;
use crate::mqtt::{CloseReason, Codec, CodecError, ConnCode, Inbound, Outbound};
use crate::net::registry::{Claim, Registry};
use crate::topic;

/// What every connection shares.
pub struct Shared {
    /// The hub.
    pub hub: Arc<Hub>,
    /// The rumqttd broker whose router carries wakes, live envelopes and plain topics.
    pub broker: Arc<rumqttd::Broker>,
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// Session limits.
    pub session: SessionConfig,
    /// Largest MQTT packet.
    pub max_packet: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
}

/// A peer that takes longer than this to accept our bytes is gone, whatever its keepalive says:
/// keepalive only watches what the peer sends, and a dead phone's TCP window stays shut for
/// many minutes before the kernel gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What woke the driver. Lives on the stack for one loop turn, so variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Event {
    Read(std::io::Result<usize>),
    Login(Result<LoginOk, ConnCode>),
    Applied(u64, Result<Applied, EnvelopeError>),
    Router(Result<Option<Notification>, rumqttd::local::LinkError>),
    Mail,
    Timer,
}

/// An open session's registration: its mailbox, and its router link once it uses plain topics.
struct Bound {
    id: Identity,
    claim: Claim,
    link: Option<Link>,
}

/// A session's own link to the rumqttd router, which matches and carries plain topics.
struct Link {
    tx: LinkTx,
    rx: LinkRx,
}

/// Runs one connection to its end. Never panics on input; errors end only this connection.
pub async fn run<S>(stream: S, listener: &'static str, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    metrics::counter!("tern_connections_total", "listener" => listener).increment(1);
    if !shared.registry.try_connect(shared.max_connections) {
        metrics::counter!("tern_connections_refused_total", "reason" => "max_connections").increment(1);
        refuse_busy(stream).await;
        return;
    }
    metrics::gauge!("tern_connections").increment(1.0);
    let mut driver = Driver {
        session: Session::new(shared.session.clone(), Instant::now().into_std()),
        codec: Codec::new(shared.max_packet),
        shared: shared.clone(),
        wbuf: BytesMut::with_capacity(1024),
        bound: None,
        login: None,
        applies: FuturesUnordered::new(),
        closing: false,
        cursor: CursorWrites::default(),
    };
    driver.run(stream).await;
    if let Some(b) = driver.bound.take() {
        driver.unbind(b);
    }
    shared.registry.disconnect();
    metrics::gauge!("tern_connections").decrement(1.0);
}

/// How long a connection refused for `max_connections` may take to send its CONNECT.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// Over `max_connections`: reads the CONNECT (briefly, and only a small one) so the client gets
/// a CONNACK in its own protocol version saying "server unavailable", which well-behaved
/// clients back off from, instead of a bare close that many retry at once.
async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin + Send>(mut stream: S) {
    let mut codec = Codec::new(REFUSE_MAX_CONNECT);
    let mut rbuf = BytesMut::with_capacity(256);
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        while stream.read_buf(&mut rbuf).await? > 0 {
            match codec.decode(&mut rbuf) {
                Ok(None) => continue,
                Ok(Some(Inbound::Connect(_))) => {
                    let mut out = BytesMut::new();
                    let refusal =
                        Outbound::ConnAck { session_present: false, code: ConnCode::ServerUnavailable };
                    codec.encode(refusal, &mut out);
                    stream.write_all(&out).await?;
                    stream.shutdown().await?;
                    break;
                }
                Ok(Some(_)) | Err(_) => break,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// The largest CONNECT read from a refused connection (a token or password fits easily).
const REFUSE_MAX_CONNECT: usize = 4096;

struct Driver {
    session: Session,
    codec: Codec,
    shared: Arc<Shared>,
    wbuf: BytesMut,
    bound: Option<Bound>,
    login: Option<Pending<Result<LoginOk, ConnCode>>>,
    applies: FuturesUnordered<Pending<(u64, Result<Applied, EnvelopeError>)>>,
    closing: bool,
    cursor: CursorWrites,
}

/// A device's cursor is written every [`CURSOR_EVERY`] entries and when its session ends, not
/// on every PUBACK: after a crash the device is sent at most that many entries again, which it
/// drops by `seq`, and a store write per acknowledgement is saved.
const CURSOR_EVERY: u64 = 32;

/// Most ready events folded into one write, so that a busy connection still writes often.
const COALESCE_EVENTS: u32 = 64;

/// Encoded bytes past which a write goes out without waiting for more ready events.
const COALESCE_BYTES: usize = 16 * 1024;

#[derive(Default)]
struct CursorWrites {
    saved: Seq,
    unsaved: Option<Seq>,
}

impl Driver {
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(&mut self, stream: S) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut rbuf = BytesMut::with_capacity(1024);
        let mut coalesced = 0;
        loop {
            self.drain().await;
            let event = if self.wbuf.is_empty() {
                if self.closing {
                    let _ = wr.shutdown().await;
                    return;
                }
                self.next_event(&mut rd, &mut rbuf).await
            } else {
                // Events that are already waiting (the PUBACKs of one group commit, a
                // recipient's PUBACK beside its next delivery) go out in the same write: a
                // send per packet was the largest cost on the message path after the store.
                // Only ready events are taken, so a lone packet is written at once.
                let more = !self.closing && coalesced < COALESCE_EVENTS && self.wbuf.len() < COALESCE_BYTES;
                match more.then(|| self.next_event(&mut rd, &mut rbuf).now_or_never()).flatten() {
                    Some(event) => {
                        coalesced += 1;
                        event
                    }
                    None => {
                        coalesced = 0;
                        self.write_out(&mut wr).await;
                        continue;
                    }
                }
            };
            self.handle(event, &mut rbuf).await;
        }
    }

    /// Waits for the next thing that wakes this connection.
    async fn next_event<R: AsyncRead + Unpin>(&mut self, rd: &mut R, rbuf: &mut BytesMut) -> Event {
        let deadline = self.session.poll_timeout().map(Instant::from_std);
        let reading = self.session.wants_read();
        let mailbox = self.bound.as_ref().map(|b| b.claim.mailbox.clone());
        let link = self.bound.as_mut().and_then(|b| b.link.as_mut());
        let (login, applies) = (&mut self.login, &mut self.applies);
        tokio::select! {
            r = rd.read_buf(rbuf), if reading => Event::Read(r),
            r = async { login.as_mut().expect("guarded by the select condition").await }, if login.is_some() => Event::Login(r),
            Some((t, r)) = applies.next(), if !applies.is_empty() => Event::Applied(t, r),
            n = async { link.expect("guarded by the select condition").rx.next().await }, if link.is_some() => Event::Router(n),
            _ = async { mailbox.as_ref().expect("guarded by the select condition").wait().await }, if mailbox.is_some() => Event::Mail,
            _ = sleep_until(deadline), if deadline.is_some() => Event::Timer,
        }
    }

    /// Feeds one event into the session.
    async fn handle(&mut self, event: Event, rbuf: &mut BytesMut) {
        match event {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => self.session.on_transport_closed(),
            Event::Read(Ok(n)) => {
                metrics::counter!("tern_bytes_received_total").increment(n as u64);
                self.decode(rbuf);
                if rbuf.is_empty() && rbuf.capacity() > 2 * self.shared.max_packet.max(4096) {
                    *rbuf = BytesMut::with_capacity(1024);
                }
            }
            Event::Login(r) => {
                self.login = None;
                self.session.on_login(Instant::now().into_std(), r);
            }
            Event::Applied(ticket, r) => self.session.on_applied(ticket, r),
            Event::Router(n) => self.on_notification(n).await,
            Event::Mail => self.on_mail(),
            Event::Timer => self.session.on_timeout(Instant::now().into_std()),
        }
    }

    /// Writes everything encoded so far; a peer that will not take it is closed.
    async fn write_out<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) {
        let n = self.wbuf.len();
        // The flush matters for WebSocket, whose writer only queues a frame.
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            wr.write_all(&self.wbuf).await?;
            wr.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            self.session.on_transport_closed();
            self.closing = true;
        } else {
            metrics::counter!("tern_bytes_sent_total").increment(n as u64);
        }
        self.wbuf.clear();
        if self.wbuf.capacity() > 64 * 1024 {
            // One large burst should not pin memory for the life of an idle session.
            self.wbuf = BytesMut::with_capacity(1024);
        }
    }

    fn decode(&mut self, rbuf: &mut BytesMut) {
        loop {
            match self.codec.decode(rbuf) {
                Ok(Some(p)) => self.session.on_packet(Instant::now().into_std(), p),
                Ok(None) => return,
                Err(e) => {
                    metrics::counter!("tern_protocol_errors_total").increment(1);
                    tracing::info!(error = %e, "closing a connection on a bad packet");
                    match e {
                        CodecError::UnsupportedLevel(_) => {
                            self.codec.encode(
                                Outbound::ConnAck { session_present: false, code: ConnCode::BadProtocol },
                                &mut self.wbuf,
                            );
                            self.session.on_protocol_error(CloseReason::Normal);
                        }
                        CodecError::TooLarge(_) => {
                            self.session.on_protocol_error(CloseReason::PacketTooLarge)
                        }
                        _ => self.session.on_protocol_error(CloseReason::ProtocolError),
                    }
                    rbuf.clear();
                    return;
                }
            }
        }
    }

    fn on_mail(&mut self) {
        let Some(bound) = self.bound.as_ref() else { return };
        let mail = bound.claim.mailbox.take();
        if mail.kicked {
            self.session.on_taken_over();
            return;
        }
        if let Some(seq) = mail.wake {
            self.session.on_wake(seq);
        }
        for down in mail.live {
            self.session.on_live(down);
        }
    }

    async fn on_notification(&mut self, n: Result<Option<Notification>, rumqttd::local::LinkError>) {
        let Some(bound) = self.bound.as_mut() else { return };
        let Some(link) = bound.link.as_mut() else { return };
        match n {
            Ok(Some(Notification::Forward(f))) => {
                let topic = String::from_utf8_lossy(&f.publish.topic);
                if let Some(t) = topic::strip_namespace(&bound.id.user, &topic) {
                    self.session.on_router_message(t.to_owned(), f.publish.payload);
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                let _ = link.rx.wake().await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "router link failed; closing the session");
                self.session.on_transport_closed();
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(p) => self.codec.encode(p, &mut self.wbuf),
                Action::Authenticate { id, secret } => {
                    let hub = self.shared.hub.clone();
                    self.login = Some(Box::pin(async move { hub.login(&id, secret).await }));
                }
                Action::Started { id } => self.bind(id),
                Action::Apply { ticket, env } => {
                    let Some(id) = self.session.identity().cloned() else { continue };
                    let hub = self.shared.hub.clone();
                    // Pushed in order and first polled in order, so the synchronous part of
                    // `apply` (which assigns inbox sequence numbers) runs in PUBLISH order.
                    self.applies.push(Box::pin(async move { (ticket, hub.apply(&id, env).await) }));
                }
                Action::Fetch { after, limit } => {
                    let Some(id) = self.session.identity() else { continue };
                    match self.shared.hub.store().inbox.read(&id.user, after, limit) {
                        Ok(entries) => self.session.on_entries(entries),
                        Err(e) => {
                            tracing::error!(error = %e, "inbox read failed; closing the session");
                            self.session.on_transport_closed();
                        }
                    }
                }
                Action::LoadPeerRefs { roster_ver } => {
                    let Some(id) = self.session.identity() else { continue };
                    match self.shared.hub.store().rosters.peer_refs(&id.user, roster_ver) {
                        Ok(refs) => self.session.on_peer_refs(refs),
                        Err(e) => {
                            tracing::error!(error = %e, "loading peer refs failed; closing the session");
                            self.session.on_transport_closed();
                        }
                    }
                }
                Action::SaveCursor(seq) => {
                    self.cursor.unsaved = Some(seq);
                    if seq.0 >= self.cursor.saved.0 + CURSOR_EVERY {
                        self.save_cursor();
                    }
                }
                Action::RouterSubscribe(f) => self.with_link(|tx| tx.subscribe(f).map(|_| ())),
                Action::RouterUnsubscribe(f) => self.with_link(|tx| tx.unsubscribe(f).map(|_| ())),
                Action::RouterPublish { topic, payload } => {
                    self.with_link(|tx| tx.publish(topic, payload).map(|_| ()))
                }
                Action::Close(_) => self.closing = true,
                Action::Ended { id, graceful } => {
                    tracing::debug!(user = %id.user, device = %id.device, graceful, "session ended");
                    if let Some(b) = self.bound.take() {
                        self.unbind(b);
                    }
                }
            }
        }
    }

    // rumqttd's LinkError is large; it is built only on failure, so boxing buys nothing.
    #[allow(clippy::result_large_err)]
    fn with_link(&mut self, f: impl FnOnce(&mut LinkTx) -> Result<(), rumqttd::local::LinkError>) {
        let Some(b) = self.bound.as_mut() else { return };
        if b.link.is_none() {
            let link_id = Registry::link_id(&b.id, &b.claim);
            // `Broker::link` waits on the router thread's reply with a blocking channel; it
            // answers in microseconds, but a tokio worker must be told it is blocking.
            match tokio::task::block_in_place(|| self.shared.broker.link(&link_id)) {
                Ok((tx, rx)) => b.link = Some(Link { tx, rx }),
                Err(e) => {
                    tracing::error!(error = %e, "router refused a link; closing the session");
                    self.session.on_transport_closed();
                    return;
                }
            }
        }
        let link = b.link.as_mut().expect("made just above when missing");
        if let Err(e) = f(&mut link.tx) {
            tracing::warn!(error = %e, "router refused a request");
        }
    }

    fn bind(&mut self, id: Identity) {
        let claim = self.shared.registry.claim(&id);
        // Entries made durable between the login read and the claim woke nobody.
        if let Ok(durable) = self.shared.hub.store().inbox.durable(&id.user) {
            self.session.on_wake(durable);
        }
        for presence in self.shared.hub.device_online(&id) {
            self.session.on_live(presence);
        }
        tracing::debug!(user = %id.user, device = %id.device, "session started");
        self.bound = Some(Bound { id, claim, link: None });
    }

    fn save_cursor(&mut self) {
        let (Some(seq), Some(id)) = (self.cursor.unsaved.take(), self.session.identity()) else { return };
        match self.shared.hub.store().inbox.set_cursor(&id.user, &id.device, seq) {
            Ok(()) => self.cursor.saved = seq,
            Err(e) => tracing::error!(error = %e, "saving a cursor failed"),
        }
    }

    fn unbind(&mut self, b: Bound) {
        self.save_cursor();
        if self.shared.registry.release(&b.id, &b.claim) {
            self.shared.hub.device_offline(&b.id);
        }
        let Some(mut link) = b.link else { return };
        let disconnect = rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
        };
        // Tells the router to drop the link now rather than when it next fails to reach it.
        let _ = futures_util::FutureExt::now_or_never(
            link.tx.send(rumqttd::protocol::Packet::Disconnect(disconnect, None)),
        );
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refused client reads after sending `connect`.
    async fn refusal_for(connect: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(refuse_busy(server));
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(connect).await.unwrap();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        task.await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_busy_server_answers_each_version_with_server_unavailable() {
        let v4 = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'a'];
        assert_eq!(refusal_for(&v4).await, [0x20, 2, 0, 3], "v4 return code 3");
        let v5 = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 1, b'a'];
        let got = refusal_for(&v5).await;
        assert_eq!((got[0], got[2], got[3]), (0x20, 0, 0x88), "v5 reason 0x88: {got:?}");
    }

    #[tokio::test]
    async fn a_busy_server_just_closes_on_garbage_or_silence() {
        assert_eq!(refusal_for(&[0xff; 8]).await, Vec::<u8>::new());
        // A client that never sends its CONNECT is dropped after REFUSE_WAIT.
        let (_client, server) = tokio::io::duplex(64);
        tokio::time::timeout(REFUSE_WAIT * 3, refuse_busy(server)).await.expect("gives up by itself");
    }
}
