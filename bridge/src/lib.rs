//! The sans-IO XMPP side of tern. Nothing here touches a socket or a clock.

pub mod jid;

pub use jid::{Jid, JidError};
