//! tern: an MQTT broker for phones on bad networks that is also an XMPP domain.
//!
//! See ARCHITECTURE.md for how an MQTT publish becomes an inbox entry (and, later, a stanza).

// rumqttd's LinkError is large and only built on failure; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod core;
pub mod envelope;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod s2s;
pub mod server;
pub mod store;
pub mod tls;
pub mod topic;
