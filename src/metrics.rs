//! The Prometheus endpoint and the descriptions of tern's metrics.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the global recorder and serves `GET /metrics` on `addr`.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    describe();
    tracing::info!(addr = %addr, "metrics endpoint");
    Ok(())
}

fn describe() {
    describe_gauge!("tern_connections", "Open MQTT connections.");
    describe_counter!("tern_connections_total", "Accepted MQTT connections, by listener.");
    describe_counter!("tern_connections_refused_total", "Connections refused before CONNECT, by reason.");
    describe_gauge!("tern_devices_online", "Authenticated sessions.");
    describe_counter!("tern_logins_total", "Successful logins, by method (password, token).");
    describe_counter!("tern_auth_failures_total", "Refused logins, by reason.");
    describe_counter!(
        "tern_isolation_denials_total",
        "Publishes or subscriptions outside the user's namespace."
    );
    describe_counter!("tern_envelopes_in_total", "Valid upward envelopes, by kind.");
    describe_counter!("tern_envelopes_rejected_total", "Refused upward envelopes, by error code.");
    describe_counter!(
        "tern_envelopes_out_total",
        "Downward envelopes produced, by kind (one per recipient user)."
    );
    describe_counter!(
        "tern_envelopes_delivered_total",
        "Downward envelopes written to sessions, by path (inbox, live)."
    );
    describe_counter!("tern_duplicates_dropped_total", "Resent messages dropped by id.");
    describe_counter!("tern_bytes_received_total", Unit::Bytes, "Bytes read from MQTT sockets.");
    describe_counter!("tern_bytes_sent_total", Unit::Bytes, "Bytes written to MQTT sockets.");
    describe_counter!("tern_protocol_errors_total", "Connections closed on malformed or oversized packets.");
    describe_gauge!("tern_inbox_depth", "Retained inbox entries, all users.");
    describe_histogram!(
        "tern_store_flush_seconds",
        Unit::Seconds,
        "Duration of one group commit: the journal write, plus its fdatasync with [inbox] sync = \"always\"."
    );
    describe_histogram!("tern_store_flush_batch", "Writers released by one group commit.");
    describe_histogram!(
        "tern_store_checkpoint_seconds",
        Unit::Seconds,
        "Duration of one checkpoint: sled flushed, older journal files deleted."
    );
    describe_counter!("tern_journal_bytes_total", Unit::Bytes, "Bytes written to the store's journal.");
    describe_histogram!(
        "tern_journal_sync_seconds",
        Unit::Seconds,
        "Duration of one background journal fdatasync with [inbox] sync = \"write\"."
    );
    describe_histogram!("tern_store_append_seconds", Unit::Seconds, "Append until durable, per envelope.");
    describe_counter!("tern_s2s_stanzas_out_total", "Stanzas queued for other XMPP domains.");
    describe_counter!("tern_s2s_stanzas_in_total", "Stanzas received from other XMPP domains.");
}
