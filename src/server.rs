//! Start-up: opens the store, starts the rumqttd router, binds every listener, starts timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::core::session::SessionConfig;
use crate::hub::{now_ms, Hub};
use crate::net::conn::Shared;
use crate::net::listener::{self, Transport};
use crate::net::registry::Registry;
use crate::store::inbox::Retention;
use crate::store::{Durability, Store};

/// Where a started server listens.
#[derive(Debug, Clone)]
pub struct Bound {
    /// MQTT over TCP.
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSocket.
    pub ws: Option<SocketAddr>,
    /// XMPP server-to-server.
    pub s2s: Option<SocketAddr>,
}

/// Starts everything and returns the bound addresses; the tasks run on the current runtime.
pub async fn start(config: Config) -> anyhow::Result<Bound> {
    let durability = Durability::new(config.inbox.sync, Duration::from_millis(config.inbox.sync_interval_ms));
    let store = Store::open_with(&config.data_dir, durability, config.store.cache_mb)?;
    let depth = store.inbox.count_all();
    metrics::gauge!("tern_inbox_depth").set(depth as f64);

    let broker = Arc::new(rumqttd::Broker::new(router_config(&config)));
    let registry = Arc::new(Registry::default());
    // In component mode the component's domain is tern's domain.
    let domain = match &config.component {
        Some(c) => c.domain.clone(),
        None => tern_bridge::Jid::parse(&config.domain)?.domain().to_owned(),
    };
    let domain_name = domain.clone();
    let hub = Hub::new(domain, store.clone(), registry.clone(), config.auth.token_ttl_secs)?;

    let shared = Arc::new(Shared {
        hub,
        broker,
        registry,
        session: SessionConfig {
            max_inflight: config.mqtt.max_inflight,
            max_pending_up: config.mqtt.max_pending_up,
            connect_timeout: config.connect_timeout(),
            limits: config.envelope_limits(),
        },
        max_packet: config.mqtt.max_packet,
        max_connections: config.mqtt.max_connections,
    });

    let mut bound = Bound { tcp: None, tls: None, ws: None, s2s: None };
    if let Some(addr) = config.mqtt.tcp.0 {
        let (local, accept) = listener::bind(addr, Transport::Tcp, shared.clone()).await?;
        bound.tcp = Some(local);
        tokio::spawn(accept);
    }
    let acceptor = || -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let (cert, key) = config.tls_paths();
        if config.tls.cert.is_none() && !cert.exists() {
            crate::tls::write_self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()])?;
            tracing::warn!(cert = %cert.display(), "no certificate configured: made a self-signed one for development");
        }
        Ok(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&cert, &key)?))
    };
    if let Some(component) = &config.component {
        let s2s = crate::s2s::S2s::new_component(component, &config.s2s)?;
        shared.hub.attach_s2s(s2s.clone());
        s2s.start();
    } else if let Some(addr) = config.s2s.listen.0 {
        let tls = if config.s2s.tls == crate::config::S2sTls::Disabled {
            None
        } else {
            acceptor()?; // makes the development certificate when none is configured
            let (cert, key) = config.tls_paths();
            Some(crate::tls::Identity::load(&cert, &key)?)
        };
        let s2s = crate::s2s::S2s::new(&domain_name, &config.s2s, tls)?;
        shared.hub.attach_s2s(s2s.clone());
        let (local, accept) = crate::s2s::inbound::bind(addr, s2s).await?;
        bound.s2s = Some(local);
        tokio::spawn(accept);
    }
    if let Some(addr) = config.mqtt.tls.0 {
        let acceptor = acceptor()?;
        let (local, accept) = listener::bind(addr, Transport::Tls(acceptor), shared.clone()).await?;
        bound.tls = Some(local);
        tokio::spawn(accept);
    }
    if let Some(addr) = config.mqtt.ws.0 {
        let (local, accept) = listener::bind(addr, Transport::Ws, shared.clone()).await?;
        bound.ws = Some(local);
        tokio::spawn(accept);
    }

    let admin_path = crate::admin::socket_path(&config.data_dir);
    let users = store.users.clone();
    let committer = store.committer.clone();
    let registry = shared.registry.clone();
    let hub = Arc::downgrade(&shared.hub);
    let revoke: crate::admin::Revoke = Arc::new(move |user| {
        let n = registry.kick_user(user);
        tracing::info!(user = %user, sessions = n, "account changed; its sessions were closed");
        if let Some(hub) = hub.upgrade() {
            hub.account_changed(user);
        }
    });
    tokio::spawn(async move {
        if let Err(e) = crate::admin::serve(admin_path, users, committer, revoke).await {
            tracing::error!(error = %e, "admin socket failed");
        }
    });

    let rules = Retention {
        max_entries: config.inbox.max_entries_per_user,
        max_age_ms: config.inbox.max_age_secs.saturating_mul(1000),
        dedupe_ms: config.inbox.dedupe_window_secs.saturating_mul(1000),
    };
    let inbox = store.inbox.clone();
    let every = Duration::from_secs(config.inbox.prune_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let inbox = inbox.clone();
            match tokio::task::spawn_blocking(move || inbox.prune(now_ms(), rules)).await {
                Ok(Ok(p)) if p.entries + p.dedupe > 0 => {
                    tracing::info!(entries = p.entries, dedupe = p.dedupe, "retention pass")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "retention pass failed"),
                _ => {}
            }
        }
    });
    Ok(bound)
}

fn router_config(config: &Config) -> rumqttd::Config {
    rumqttd::Config {
        router: rumqttd::RouterConfig {
            // Sessions that use plain topics (each gets its link on first use).
            max_connections: config.mqtt.max_connections + 16,
            max_outgoing_packet_count: 200,
            // Plain topics are delivered at most once and consumed at once: small segments keep
            // per-topic memory low with many devices.
            max_segment_size: 64 * 1024,
            max_segment_count: 4,
            ..Default::default()
        },
        ..Default::default()
    }
}
