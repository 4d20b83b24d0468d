//! A minimal XMPP c2s load client (RFC 6120, RFC 6121, XEP-0184) on tern-bridge's sans-IO codec:
//! what a legacy client does to chat, and nothing more.

pub mod conn;
pub mod drivers;
pub mod smacks;

pub use drivers::Account;
