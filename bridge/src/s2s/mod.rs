//! The server-to-server state machines of RFC 6120 (STARTTLS) and XEP-0220 (dialback), sans-IO.
//!
//! Like quinn-proto or str0m, the machines never touch a socket, a TLS library or a clock: the
//! driver feeds them bytes and the current [`Instant`](std::time::Instant), drains [`Output`]s with `poll_output`,
//! and calls `handle_timeout` once `poll_timeout` passes. TLS is the driver's job: on
//! [`Output::StartTls`] it wraps the socket and calls `tls_established`, after which the
//! stream restarts (RFC 6120 §5.4.3.3).
//!
//! Streams are unidirectional, as RFC 6120 §4.4 allows for s2s: [`Outbound`] carries our
//! stanzas to a peer, [`Inbound`] carries a peer's stanzas to us. Peers authenticate with
//! their certificate through SASL EXTERNAL (XEP-0178) when it verifies, else with dialback
//! (XEP-0220) if [`Config::dialback_fallback`] allows. The driver verifies the certificate
//! chain and passes the result ([`PeerCert`]) to `tls_established`.

pub mod cert;
mod conn;
pub mod dialback;
mod inbound;
mod outbound;
pub mod sasl;

#[cfg(test)]
mod cert_tests;
#[cfg(test)]
mod test_harness;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use cert::{CertError, Identity, PeerCert};
pub use dialback::Keyer;
pub use inbound::Inbound;
pub use outbound::Outbound;

use crate::stream::{Element, Limits, StreamError};

/// The namespace of the dialback stream feature (XEP-0220 §2.1), advertised once dialback is allowed.
const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// Whether STARTTLS (RFC 6120 §5) is used on s2s streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never negotiate TLS (tests, or a tunnel that already encrypts).
    Disabled,
    /// Use TLS when the peer offers it; accept plaintext otherwise.
    Preferred,
    /// Refuse to authenticate or exchange stanzas without TLS.
    Required,
}

/// Settings shared by both directions.
#[derive(Clone)]
pub struct Config {
    /// The domains we serve; an inbound stream may address any of them.
    pub local_domains: Vec<String>,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// Decoder limits applied to whatever the peer sends.
    pub limits: Limits,
    /// How long a stream may take from creation to authentication.
    pub connect_timeout: Duration,
    /// Send a whitespace keepalive after this much outbound silence.
    pub keepalive_interval: Duration,
    /// Close the stream after this long without elements in either direction.
    pub idle_timeout: Duration,
    /// Sustained stanzas per second accepted on an inbound stream.
    pub max_stanzas_per_sec: u32,
    /// Stanzas an inbound peer may send in a burst above the sustained rate.
    pub stanza_burst: u32,
    /// Computes and checks dialback keys (XEP-0185); the daemon supplies an HMAC.
    pub keyer: Arc<dyn Keyer>,
    /// Whether a peer whose certificate does not authenticate it may use dialback instead;
    /// `false` means every peer must prove its domain by certificate, both when it connects to
    /// us and when we connect to it (XEP-0178 §4). It governs what we accept: towards a peer
    /// whose certificate verified, we may still prove ourselves by dialback if it allows that.
    pub dialback_fallback: bool,
    /// Whether our outbound TLS presents a certificate, so SASL EXTERNAL is worth trying.
    pub client_cert: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keyer holds the dialback secret, so it is deliberately left out.
        f.debug_struct("Config")
            .field("local_domains", &self.local_domains)
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_stanzas_per_sec", &self.max_stanzas_per_sec)
            .field("stanza_burst", &self.stanza_burst)
            .field("dialback_fallback", &self.dialback_fallback)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A config for `local_domains` with defaults close to Prosody's.
    pub fn new(local_domains: Vec<String>, keyer: Arc<dyn Keyer>) -> Self {
        Config {
            local_domains,
            tls: TlsPolicy::Required,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(900),
            max_stanzas_per_sec: 100,
            stanza_burst: 200,
            keyer,
            dialback_fallback: true,
            client_cert: false,
        }
    }

    /// Whether `domain` is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d == domain)
    }
}

/// Why a stream ended without being (or staying) usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// We sent this stream error and closed.
    Sent(StreamError),
    /// The peer sent this stream error.
    Received(StreamError),
    /// The peer closed the stream before it was usable.
    PeerClosed,
    /// The connect/authentication deadline passed.
    Timeout,
    /// The peer answered our dialback with `type='invalid'` or `type='error'`.
    DialbackRejected,
    /// TLS is required on one side but not available on the other.
    TlsUnavailable,
    /// The peer's certificate does not authenticate it and dialback fallback is off.
    Certificate(CertError),
    /// The peer refused our SASL EXTERNAL and dialback could not take over.
    SaslRejected(sasl::SaslError),
}

/// How a domain authenticated on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with a verified certificate (XEP-0178).
    SaslExternal,
    /// Dialback (XEP-0220) with the key checked by the authoritative server.
    Dialback,
    /// Dialback answered from the peer's verified certificate, without the key round trip
    /// (XEP-0344 §2.4).
    DialbackByCert,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection.
    Send(Vec<u8>),
    /// Wrap the connection in TLS, then call `tls_established`.
    StartTls,
    /// The outbound stream is authenticated; stanzas now flow.
    Ready,
    /// A validated stanza from an authenticated peer.
    Stanza(Element),
    /// An inbound peer authenticated `remote` to send to our `local`.
    Authenticated {
        /// The peer's domain.
        remote: String,
        /// Our domain.
        local: String,
        /// How it proved itself.
        method: AuthMethod,
    },
    /// A peer claims `from` on this inbound stream; verify `key` with `from`'s authoritative
    /// server (an [`Outbound::send_verify`]) and report with [`Inbound::dialback_result`].
    VerifyDialback {
        /// The originating (claimed) domain.
        from: String,
        /// Our domain the peer wants to send to.
        to: String,
        /// Our stream id the key was computed over.
        id: String,
        /// The key the peer presented.
        key: String,
    },
    /// The authoritative server's answer to an [`Outbound::send_verify`].
    VerifyResult {
        /// The domain that sent the `<db:verify>` (the receiving server, us).
        from: String,
        /// The authoritative domain that answered.
        to: String,
        /// The stream id the key was computed over.
        id: String,
        /// Whether the key was valid. Unanswered requests report `false` when the stream dies.
        valid: bool,
    },
    /// The stream failed; on an outbound stream [`Output::Bounced`] follows.
    Failed(Failure),
    /// Stanzas that were queued but never sent, for the daemon to bounce. An outbound stream
    /// always emits one (possibly empty) before [`Output::Close`].
    Bounced(Vec<Element>),
    /// Close the connection; the machine does nothing more.
    Close,
}
