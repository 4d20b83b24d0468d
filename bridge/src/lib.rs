//! The sans-IO XMPP side of tern. Nothing here touches a socket or a clock.

pub mod component;
pub mod jid;
pub mod mapping;
pub mod s2s;
pub mod stanza;
pub mod stream;

pub use jid::{Jid, JidError};
pub use stream::{Element, Limits, Node, StreamDecoder, StreamError, StreamEvent};
