//! Server-to-server federation (RFC 6120, XEP-0220): the daemon side of `tern_bridge::s2s`.
//!
//! The sans-IO stream machines live in `bridge/`; this module gives them sockets, TLS, a clock
//! and routing. One task per connection drains every output of its machine, like
//! `net/conn.rs` does for MQTT:
//!
//! * [`outbound`]: one task per peer domain, started by the first [`S2s::send`] to it. It
//!   keeps the peer's [`schedule`] (queue, backoff, send timeout), connects through
//!   [`resolve`] (fixed route, SRV, A/AAAA), negotiates STARTTLS, then SASL EXTERNAL or
//!   dialback, then carries our stanzas and our `<db:verify/>` requests over that one stream.
//!   Stanzas that waited `send_timeout` go to the bounce callback; the task ends when nothing
//!   is left to send and no backoff to remember.
//! * [`inbound`]: the listener and one task per peer connection. Stanzas from authenticated
//!   peers go to the stanza callback (the hub); dialback keys are checked with the claimed
//!   domain's authoritative server over an outbound stream.
//! * [`certs`]: TLS configs that let any certificate through the handshake, and the chain
//!   check after it whose verdict the machines use (XEP-0178, with dialback as fallback).
//! * [`component`]: instead of both, with `[component]` configured: one XEP-0114 stream to
//!   one server carries every stanza both ways (`bridge::component::Connection`).

pub mod certs;
pub mod component;
pub mod inbound;
pub mod keyer;
pub mod outbound;
pub mod resolve;
pub mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tern_bridge::s2s::{Config as MachineConfig, TlsPolicy};
use tern_bridge::Element;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::config::S2sTls;

/// A byte stream a machine runs over: TCP, or TLS over TCP after STARTTLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why stanzas come back unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceReason {
    /// The peer could not be reached, refused us, or failed the stream.
    NotFound,
    /// The peer did not answer in time.
    Timeout,
}

/// Gets every stanza an authenticated peer sends us.
pub type StanzaSink = Arc<dyn Fn(Element) + Send + Sync>;
/// Gets the stanzas an outbound stream could not deliver.
pub type BounceSink = Arc<dyn Fn(Vec<Element>, BounceReason) + Send + Sync>;

/// A request for an outbound task.
pub(crate) enum Cmd {
    /// Send a stanza.
    Stanza(Element),
    /// Ask the peer (authoritative for `to`) about a dialback key; the answer goes to `reply`
    /// (dropped = invalid).
    Verify { from: String, to: String, id: String, key: String, reply: oneshot::Sender<bool> },
}

/// The federation service: routes stanzas to peer domains and takes theirs.
pub struct S2s {
    local: String,
    machine: MachineConfig,
    resolver: resolve::Resolver,
    schedule: schedule::Settings,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    connector: tokio_rustls::TlsConnector,
    /// The anchors peers' certificates are checked against after each handshake.
    trust: certs::Trust,
    peers: Mutex<HashMap<String, mpsc::UnboundedSender<Cmd>>>,
    on_stanza: OnceLock<StanzaSink>,
    on_bounce: OnceLock<BounceSink>,
    /// Component mode (XEP-0114): every stanza goes over one stream to this server.
    component: Option<component::Settings>,
}

impl S2s {
    /// A service for our domain `local`. `tls` is our certificate and key, offered to
    /// inbound peers and presented on outbound streams (`None` when TLS is disabled).
    pub fn new(
        local: &str,
        config: &crate::config::S2sConfig,
        tls: Option<crate::tls::Identity>,
    ) -> anyhow::Result<Arc<S2s>> {
        Ok(Arc::new(S2s::build(local, config, tls)?))
    }

    /// Component mode (XEP-0114): tern is the external component `config.domain` of the
    /// server at `config.server`; every non-local stanza goes over that one stream, which is
    /// connected by [`start`](Self::start) and reconnected with backoff. No s2s listener or
    /// dialback is involved.
    /// `limits` gives the stream's size limit, keepalive and idle timeout (`[s2s]` keys).
    pub fn new_component(
        config: &crate::config::ComponentConfig,
        limits: &crate::config::S2sConfig,
    ) -> anyhow::Result<Arc<S2s>> {
        let mut s2s = S2s::build(&config.domain, limits, None)?;
        s2s.component = Some(component::Settings::new(config, limits));
        Ok(Arc::new(s2s))
    }

    /// In component mode, connects the component stream now (after [`set_sinks`](Self::set_sinks)),
    /// so the server routes our domain's traffic to us before we send anything. Otherwise a no-op:
    /// s2s streams start on demand.
    pub fn start(self: &Arc<Self>) {
        if self.component.is_some() {
            self.command("", None);
        }
    }

    /// Whether this is component mode.
    pub fn is_component(&self) -> bool {
        self.component.is_some()
    }

    fn build(
        local: &str,
        config: &crate::config::S2sConfig,
        tls: Option<crate::tls::Identity>,
    ) -> anyhow::Result<S2s> {
        let secret = match &config.dialback_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut b = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .map_err(|_| anyhow::anyhow!("no system randomness for the dialback secret"))?;
                b.to_vec()
            }
        };
        let keyer = Arc::new(keyer::HmacKeyer::new(&secret));
        let mut machine = MachineConfig::new(vec![local.to_owned()], keyer);
        machine.tls = match config.tls {
            S2sTls::Required => TlsPolicy::Required,
            S2sTls::Preferred => TlsPolicy::Preferred,
            S2sTls::Disabled => TlsPolicy::Disabled,
        };
        let tls = if machine.tls == TlsPolicy::Disabled { None } else { tls };
        machine.dialback_fallback = config.dialback_fallback;
        machine.client_cert = tls.is_some();
        apply_limits(&mut machine, config);
        let acceptor = match &tls {
            Some(own) => Some(tokio_rustls::TlsAcceptor::from(certs::server_config(own)?)),
            None => None,
        };
        Ok(S2s {
            local: local.to_owned(),
            machine,
            resolver: resolve::Resolver::new(config)?,
            schedule: schedule::Settings::from_config(config),
            acceptor,
            connector: tokio_rustls::TlsConnector::from(certs::client_config(tls.as_ref())?),
            trust: certs::Trust::load(config.ca_file.as_deref())?,
            peers: Mutex::new(HashMap::new()),
            on_stanza: OnceLock::new(),
            on_bounce: OnceLock::new(),
            component: None,
        })
    }

    /// Sets where inbound stanzas and bounces go (once; the hub does it at start-up).
    pub fn set_sinks(&self, stanza: StanzaSink, bounce: BounceSink) {
        let _ = self.on_stanza.set(stanza);
        let _ = self.on_bounce.set(bounce);
    }

    /// Our domain.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Sends `stanza` to `domain`, connecting if needed. Never blocks; failures come back
    /// through the bounce callback.
    pub fn send(self: &Arc<Self>, domain: &str, stanza: Element) {
        self.command(domain, Some(Cmd::Stanza(stanza)));
    }

    /// Asks `to`'s authoritative server whether `key` is valid for stream `id` it opened to
    /// our `from`.
    pub(crate) fn verify(
        self: &Arc<Self>,
        from: &str,
        to: &str,
        id: &str,
        key: &str,
    ) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Verify { from: from.into(), to: to.into(), id: id.into(), key: key.into(), reply };
        self.command(to, Some(cmd));
        rx
    }

    /// Hands `cmd` to the task for `domain` (in component mode, the one component task),
    /// starting it if needed; `None` only starts it.
    fn command(self: &Arc<Self>, domain: &str, cmd: Option<Cmd>) {
        let domain = if self.component.is_some() { "" } else { domain };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let cmd = match (peers.get(domain), cmd) {
            (Some(_), None) => return,
            (Some(tx), Some(cmd)) => match tx.send(cmd) {
                Ok(()) => return,
                Err(mpsc::error::SendError(cmd)) => Some(cmd),
            },
            (None, cmd) => cmd,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(cmd) = cmd {
            let _ = tx.send(cmd);
        }
        peers.insert(domain.to_owned(), tx.clone());
        drop(peers);
        match &self.component {
            Some(_) => tokio::spawn(component::run(self.clone(), tx, rx)),
            None => tokio::spawn(outbound::run(self.clone(), domain.to_owned(), tx, rx)),
        };
    }

    /// Forgets the task for `domain` if `tx` is still its channel.
    pub(crate) fn forget(&self, domain: &str, tx: &mpsc::UnboundedSender<Cmd>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.get(domain).is_some_and(|t| t.same_channel(tx)) {
            peers.remove(domain);
        }
    }

    pub(crate) fn deliver(&self, stanza: Element) {
        match self.on_stanza.get() {
            Some(sink) => sink(stanza),
            None => tracing::warn!("s2s stanza dropped: no hub attached"),
        }
    }

    pub(crate) fn bounce(&self, stanzas: Vec<Element>, reason: BounceReason) {
        if stanzas.is_empty() {
            return;
        }
        match self.on_bounce.get() {
            Some(sink) => sink(stanzas, reason),
            None => tracing::warn!(n = stanzas.len(), "s2s bounce dropped: no hub attached"),
        }
    }
}

/// Puts the per-peer limits of `config` into the machines' config: what one peer's stream may
/// send us (size, rate) and how it is kept alive, so a peer over them loses only its stream.
fn apply_limits(machine: &mut MachineConfig, config: &crate::config::S2sConfig) {
    machine.limits.max_stanza_bytes = config.max_stanza_bytes;
    machine.max_stanzas_per_sec = config.max_stanzas_per_sec;
    machine.stanza_burst = config.stanza_burst;
    machine.keepalive_interval = Duration::from_secs(config.keepalive_secs);
    machine.idle_timeout = Duration::from_secs(config.idle_timeout_secs);
}

/// How long a TCP connect or a TLS handshake may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one write may wait for the peer to read. A peer that stops reading would otherwise
/// hold its driver in `write_all`, where no keepalive, idle timeout or bounce can run.
#[cfg(not(test))]
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
#[cfg(test)]
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Writes `bytes` to the connection, if there still is one. A write that fails or stalls for
/// [`WRITE_TIMEOUT`] drops the connection (`sock` becomes `None`); the caller then closes its
/// machine, which bounces or requeues what it still held.
pub(crate) async fn write_or_drop<S: AsyncWrite + Unpin>(
    sock: &mut Option<S>,
    bytes: &[u8],
) -> std::io::Result<()> {
    let Some(s) = sock.as_mut() else { return Ok(()) };
    let result = match tokio::time::timeout(WRITE_TIMEOUT, s.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer stopped reading")),
    };
    if result.is_err() {
        *sock = None;
    }
    result
}

/// A random number, for backoff jitter and SRV weights; 0 in the (never seen) case that the
/// system has no randomness, which leaves both merely less spread.
pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// A fresh, unpredictable stream id (dialback keys are bound to it).
pub(crate) fn stream_id() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests;

/// What the three driver loops (outbound, inbound, component) need of their machine to handle
/// the socket's side.
pub(crate) trait Machine {
    /// Bytes the peer sent.
    fn handle_input(&mut self, bytes: &[u8], now: Instant);
    /// The connection is gone or must go; the machine emits its last outputs.
    fn close(&mut self, now: Instant);
}

macro_rules! machine {
    ($($t:ty),*) => {$(
        impl Machine for $t {
            fn handle_input(&mut self, bytes: &[u8], now: Instant) {
                <$t>::handle_input(self, bytes, now)
            }
            fn close(&mut self, now: Instant) {
                <$t>::close(self, now)
            }
        }
    )*};
}
machine!(tern_bridge::s2s::Outbound, tern_bridge::s2s::Inbound, tern_bridge::component::Connection);

/// Hands what a read returned to the machine: bytes are input; end of stream or an error drops
/// the socket and closes the machine.
pub(crate) fn feed<S>(
    read: std::io::Result<usize>,
    buf: &[u8],
    sock: &mut Option<S>,
    machine: &mut impl Machine,
) {
    match read {
        Ok(n) if n > 0 => machine.handle_input(&buf[..n], Instant::now()),
        _ => {
            *sock = None;
            machine.close(Instant::now());
        }
    }
}

/// The socket is gone: closes the machine (it emits its last outputs) the first time; true when
/// that was done already, so the loop must end rather than spin.
pub(crate) fn socket_gone(gone: &mut bool, machine: &mut impl Machine) -> bool {
    if *gone {
        return true;
    }
    *gone = true;
    machine.close(Instant::now());
    false
}

/// Sleeps until the machine's next deadline, or forever when it has none.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
