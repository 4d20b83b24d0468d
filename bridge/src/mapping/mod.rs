//! Mapping between the phone protocol (`tern.v1` envelopes) and XMPP stanzas (RFC 6121, XEP-0184,
//! XEP-0333, XEP-0085, XEP-0030, XEP-0115, XEP-0199, XEP-0092, XEP-0045, XEP-0203).
//!
//! Pure functions: [`outbound`] turns what a phone sends into a stanza, [`inbound`] turns a
//! stanza from the XMPP side into what a phone receives, and [`answer_iq`] answers the iqs tern
//! handles itself on behalf of its domain and its users (phones never see iqs).

pub mod caps;
pub mod delay;
mod inbound;
mod iq;
pub mod muc;
mod outbound;

#[cfg(test)]
mod muc_tests;
#[cfg(test)]
mod tests;

pub use inbound::inbound;
pub use iq::{answer_iq, FEATURES};
pub use outbound::{outbound, OutboundError};

/// Message delivery receipts (XEP-0184).
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";
/// Chat markers (XEP-0333).
pub const NS_CHAT_MARKERS: &str = "urn:xmpp:chat-markers:0";
/// Chat state notifications (XEP-0085).
pub const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Message processing hints (XEP-0334).
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// Service discovery, info (XEP-0030).
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Service discovery, items (XEP-0030).
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XMPP ping (XEP-0199).
pub const NS_PING: &str = "urn:xmpp:ping";
/// Software version (XEP-0092).
pub const NS_VERSION: &str = "jabber:iq:version";
