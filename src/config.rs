//! Typed configuration: `config/tern.toml` parsed once at start-up into these structs.
//!
//! Every key has a default, so an empty file (or none) runs tern on loopback with a data
//! directory under the working directory. `config/tern.toml` documents each key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain of tern's users: `alice@<domain>`.
    pub domain: String,
    /// Where the store, the dev certificate and the admin socket live.
    pub data_dir: PathBuf,
    /// MQTT listeners and session limits.
    pub mqtt: MqttConfig,
    /// Certificate for the TLS listeners.
    pub tls: TlsConfig,
    /// Logins and session tokens.
    pub auth: AuthConfig,
    /// The durable inbox.
    pub inbox: InboxConfig,
    /// The database under the inbox.
    pub store: StoreConfig,
    /// Envelope field limits.
    pub limits: LimitsConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Federation with other XMPP domains.
    pub s2s: S2sConfig,
    /// Component mode (XEP-0114), instead of s2s; off when absent.
    pub component: Option<ComponentConfig>,
}

/// tern as an external component (XEP-0114) of one XMPP server: all federation goes through
/// that server, and `domain` here replaces the top-level `domain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The server's component port, `"host:port"` (Prosody's default is 5347).
    pub server: String,
    /// The component's JID domain, which is tern's domain for its users.
    pub domain: String,
    /// The shared secret configured for the component on the server.
    pub secret: String,
}

/// STARTTLS policy on server-to-server streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum S2sTls {
    /// Always negotiate TLS; refuse peers that do not offer it.
    Required,
    /// Negotiate TLS when the peer offers it.
    #[default]
    Preferred,
    /// Never negotiate TLS (tests only).
    Disabled,
}

/// Server-to-server federation (XMPP s2s: STARTTLS, certificates, dialback).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Listener for peers' inbound streams (XMPP uses port 5269); `"off"` disables federation.
    pub listen: Listen,
    /// Fixed routes, domain → `"host:port"`, tried before DNS.
    pub routes: std::collections::BTreeMap<String, String>,
    /// STARTTLS policy.
    pub tls: S2sTls,
    /// Dialback secret (XEP-0185); random at every start when unset.
    pub dialback_secret: Option<String>,
    /// Trust anchors (PEM) for peers' certificates instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Whether a peer whose certificate does not verify may authenticate by dialback instead.
    pub dialback_fallback: bool,
    /// Nameserver (`"ip:port"`) for SRV and address lookups; the system's resolv.conf when unset.
    pub dns_server: Option<SocketAddr>,
    /// Seconds a stanza may wait for a stream to its peer before it bounces to the sender.
    pub send_timeout_secs: u64,
    /// First delay before reconnecting to a peer that failed; doubles up to `retry_max_secs`.
    pub retry_min_secs: u64,
    /// Longest delay between connection attempts to an unreachable peer.
    pub retry_max_secs: u64,
    /// Largest stanza a peer may send, in bytes; larger ones close its stream.
    pub max_stanza_bytes: usize,
    /// Sustained stanzas per second accepted from one peer stream.
    pub max_stanzas_per_sec: u32,
    /// Stanzas a peer may send in a burst above the sustained rate.
    pub stanza_burst: u32,
    /// Seconds of outbound silence before a whitespace keepalive.
    pub keepalive_secs: u64,
    /// Seconds without traffic in either direction before a stream is closed.
    pub idle_timeout_secs: u64,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: Listen(None),
            routes: Default::default(),
            tls: S2sTls::default(),
            dialback_secret: None,
            ca_file: None,
            dialback_fallback: true,
            dns_server: None,
            send_timeout_secs: 60,
            retry_min_secs: 1,
            retry_max_secs: 300,
            max_stanza_bytes: 256 * 1024,
            max_stanzas_per_sec: 100,
            stanza_burst: 200,
            keepalive_secs: 60,
            idle_timeout_secs: 900,
        }
    }
}

/// A listener address, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Listen(pub Option<SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Listen>().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "" => Ok(Listen(None)),
            addr => addr.parse().map(|a| Listen(Some(a))).map_err(|e| format!("{addr:?}: {e}")),
        }
    }
}

/// MQTT listeners and per-session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Plain TCP listener.
    pub tcp: Listen,
    /// TLS listener.
    pub tls: Listen,
    /// WebSocket listener (plain; put a TLS proxy in front for wss, or use `wss`).
    pub ws: Listen,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet: usize,
    /// Downward QoS 1 envelopes in flight per session before waiting for PUBACKs.
    pub max_inflight: usize,
    /// Time allowed between accepting a connection and its CONNECT, in seconds.
    pub connect_timeout_secs: u64,
    /// Most concurrent sessions.
    pub max_connections: usize,
    /// Upward envelopes a session may have in flight (applied but not yet durable).
    pub max_pending_up: usize,
}

/// Certificate files for TLS.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; empty means `<data_dir>/tls/cert.pem`, created self-signed if missing.
    pub cert: Option<PathBuf>,
    /// PEM private key; empty means `<data_dir>/tls/key.pem`.
    pub key: Option<PathBuf>,
}

/// Login settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a session token issued after a password login, in seconds.
    pub token_ttl_secs: u64,
}

/// Inbox retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Most entries kept per user, acknowledged or not; the oldest go first.
    pub max_entries_per_user: u64,
    /// Oldest entry kept, in seconds, acknowledged or not.
    pub max_age_secs: u64,
    /// How long a message id is remembered to drop resends, in seconds.
    pub dedupe_window_secs: u64,
    /// How often retention runs, in seconds.
    pub prune_interval_secs: u64,
    /// When an acknowledged write must be on stable storage.
    pub sync: SyncPolicy,
    /// With `sync = "write"`, the longest time between a write and its fdatasync, in ms.
    pub sync_interval_ms: u64,
}

/// The sled database (`<data_dir>/db`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled's page cache, in MiB. Writes reach sled only at checkpoints, so this mostly serves
    /// reads of what is older than the last checkpoint (backlogs, rosters).
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { cache_mb: crate::store::DEFAULT_CACHE_MB }
    }
}

/// What a PUBACK (or any other acknowledgement of a stored write) promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fdatasync before acknowledging: survives a power cut.
    #[default]
    Always,
    /// Acknowledge once written to the operating system: survives `kill -9` and any crash of
    /// tern, not of the machine; an fdatasync follows within `sync_interval_ms`.
    Write,
}

/// Field limits for envelopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Largest status text, thread or roster name, in bytes.
    pub max_text: usize,
    /// Most groups on a roster item.
    pub max_groups: usize,
}

/// Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listener for `GET /metrics`.
    pub listen: Listen,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("data"),
            mqtt: MqttConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            inbox: InboxConfig::default(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            s2s: S2sConfig::default(),
            component: None,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        let at = |s: &str| Listen(s.parse().ok());
        MqttConfig {
            tcp: at("127.0.0.1:1883"),
            tls: at("127.0.0.1:8883"),
            ws: at("127.0.0.1:8083"),
            max_packet: 64 * 1024,
            max_inflight: 32,
            connect_timeout_secs: 10,
            max_connections: 200_000,
            max_pending_up: 64,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { token_ttl_secs: 30 * 24 * 3600 }
    }
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            max_entries_per_user: 10_000,
            max_age_secs: 30 * 24 * 3600,
            dedupe_window_secs: 7 * 24 * 3600,
            prune_interval_secs: 60,
            sync: SyncPolicy::Always,
            sync_interval_ms: 100,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_body: 16 * 1024, max_text: 1024, max_groups: 16 }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: Listen("127.0.0.1:9464".parse().ok()) }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Refuses values that would make the daemon misbehave rather than fail early.
    pub fn check(&self) -> anyhow::Result<()> {
        tern_bridge::Jid::parse(&self.domain)
            .ok()
            .filter(|j| j.local().is_none() && j.is_bare())
            .ok_or_else(|| anyhow::anyhow!("domain {:?} is not a valid XMPP domain", self.domain))?;
        if let Some(c) = &self.component {
            tern_bridge::Jid::parse(&c.domain)
                .ok()
                .filter(|j| j.local().is_none() && j.is_bare())
                .ok_or_else(|| {
                    anyhow::anyhow!("component.domain {:?} is not a valid XMPP domain", c.domain)
                })?;
            anyhow::ensure!(!c.server.is_empty(), "component.server must be \"host:port\"");
            anyhow::ensure!(!c.secret.is_empty(), "component.secret must not be empty");
            anyhow::ensure!(
                self.s2s.listen.0.is_none(),
                "component mode replaces s2s: set s2s.listen = \"off\" or remove [component]"
            );
        }
        anyhow::ensure!(
            (1..=60_000).contains(&self.inbox.sync_interval_ms),
            "inbox.sync_interval_ms must be 1..=60000"
        );
        let s2s = &self.s2s;
        anyhow::ensure!(
            s2s.max_stanza_bytes >= 10_000,
            "s2s.max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)"
        );
        anyhow::ensure!(s2s.max_stanzas_per_sec >= 1, "s2s.max_stanzas_per_sec must be at least 1");
        anyhow::ensure!(
            (1..=s2s.retry_max_secs).contains(&s2s.retry_min_secs),
            "s2s.retry_min_secs must be 1..=retry_max_secs"
        );
        // Upper bounds keep `Instant + Duration` far from overflow and catch unit mistakes.
        const DAY: u64 = 24 * 3600;
        anyhow::ensure!(
            (1..=DAY).contains(&s2s.send_timeout_secs),
            "s2s.send_timeout_secs must be 1..=86400"
        );
        anyhow::ensure!(s2s.retry_max_secs <= DAY, "s2s.retry_max_secs must be at most 86400");
        anyhow::ensure!(s2s.idle_timeout_secs <= DAY, "s2s.idle_timeout_secs must be at most 86400");
        anyhow::ensure!(s2s.keepalive_secs >= 1, "s2s.keepalive_secs must be at least 1");
        anyhow::ensure!(
            s2s.idle_timeout_secs > s2s.keepalive_secs,
            "s2s.idle_timeout_secs must exceed keepalive_secs"
        );
        anyhow::ensure!(self.mqtt.max_packet >= 1024, "mqtt.max_packet must be at least 1024");
        anyhow::ensure!(
            (1..=65_000).contains(&self.mqtt.max_inflight),
            "mqtt.max_inflight must be 1..=65000"
        );
        anyhow::ensure!(self.mqtt.max_pending_up >= 1, "mqtt.max_pending_up must be at least 1");
        anyhow::ensure!((1..=1 << 20).contains(&self.store.cache_mb), "store.cache_mb must be 1..=1048576");
        anyhow::ensure!(
            self.inbox.max_entries_per_user >= 1,
            "inbox.max_entries_per_user must be at least 1"
        );
        Ok(())
    }

    /// The certificate and key paths, defaulting into the data dir.
    pub fn tls_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self.data_dir.join("tls");
        (
            self.tls.cert.clone().unwrap_or_else(|| dir.join("cert.pem")),
            self.tls.key.clone().unwrap_or_else(|| dir.join("key.pem")),
        )
    }

    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.mqtt.connect_timeout_secs)
    }

    /// Envelope limits for the parser.
    pub fn envelope_limits(&self) -> crate::envelope::Limits {
        crate::envelope::Limits {
            max_body: self.limits.max_body,
            max_text: self.limits.max_text,
            max_groups: self.limits.max_groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_to_the_defaults() {
        let shipped = include_str!("../config/tern.toml");
        let c = Config::parse(shipped).unwrap();
        let d = Config::default();
        assert_eq!(c.domain, d.domain);
        assert_eq!(c.mqtt.tcp, d.mqtt.tcp);
        assert_eq!(c.mqtt.tls, d.mqtt.tls);
        assert_eq!(c.mqtt.ws, d.mqtt.ws);
        assert_eq!(c.mqtt.max_packet, d.mqtt.max_packet);
        assert_eq!(c.inbox.max_entries_per_user, d.inbox.max_entries_per_user);
        assert_eq!((c.inbox.sync, c.inbox.sync_interval_ms), (d.inbox.sync, d.inbox.sync_interval_ms));
        assert_eq!(c.store.cache_mb, d.store.cache_mb);
        assert_eq!(c.metrics.listen, d.metrics.listen);
        assert_eq!(c.s2s.listen, d.s2s.listen);
        assert_eq!(c.s2s.tls, d.s2s.tls);
        assert!(c.s2s.routes.is_empty());
        assert_eq!(format!("{:?}", c.s2s), format!("{:?}", d.s2s));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::parse("domain = \"a@b\"").is_err());
        assert!(Config::parse("[mqtt]\nmax_inflight = 0").is_err());
        assert!(Config::parse("unknown = 1").is_err());
        assert!(Config::parse("[store]\ncache_mb = 0").is_err());
        assert_eq!(Config::parse("[store]\ncache_mb = 64").unwrap().store.cache_mb, 64);
        assert!(Config::parse("[mqtt]\ntcp = \"nonsense\"").is_err());
        assert_eq!(Config::parse("[mqtt]\ntls = \"off\"").unwrap().mqtt.tls, Listen(None));
        assert!(Config::parse("[s2s]\ntls = \"maybe\"").is_err());
        assert!(Config::parse("[s2s]\nsend_timeout_secs = 18446744073709551615").is_err());
        assert!(Config::parse("[s2s]\nretry_max_secs = 1000000").is_err());
        let c = Config::parse("[s2s]\nlisten = \"127.0.0.1:5269\"\ntls = \"disabled\"\n[s2s.routes]\n\"xmpp.test\" = \"127.0.0.2:5269\"").unwrap();
        assert_eq!(c.s2s.tls, S2sTls::Disabled);
        assert_eq!(c.s2s.routes["xmpp.test"], "127.0.0.2:5269");
        assert!(c.component.is_none());
    }

    #[test]
    fn component_section_parses_and_is_checked() {
        let c = Config::parse(
            "[component]\nserver = \"127.0.0.1:5347\"\ndomain = \"tern.xmpp.test\"\nsecret = \"s\"",
        )
        .unwrap();
        let comp = c.component.unwrap();
        assert_eq!(comp.server, "127.0.0.1:5347");
        assert_eq!(comp.domain, "tern.xmpp.test");
        assert!(Config::parse("[component]\nserver = \"x:1\"\ndomain = \"a@b\"\nsecret = \"s\"").is_err());
        assert!(Config::parse("[component]\nserver = \"x:1\"\ndomain = \"b\"\nsecret = \"\"").is_err());
        assert!(Config::parse("[component]\nserver = \"x:1\"\ndomain = \"b\"").is_err());
        assert!(Config::parse(
            "[s2s]\nlisten = \"127.0.0.1:5269\"\n[component]\nserver = \"x:1\"\ndomain = \"b\"\nsecret = \"s\""
        )
        .is_err());
    }
}
