//! The sans-IO XML stream codec of RFC 6120 §4: bytes in, [`StreamEvent`]s out, and strings back.
//!
//! XMPP is a restricted XML subset (RFC 6120 §11), so the decoder is deliberately narrower than
//! a general XML parser: no DTDs, no entity declarations, no processing instructions except the
//! leading XML declaration, and only the five predefined entities plus character references.
//! Everything a peer controls is bounded by [`Limits`].
//!
//! quick-xml supplies the incremental pieces (finding the end of a tag across chunks, lexing
//! attributes, namespace scopes); framing, entity decoding, character checks and the XMPP rules
//! are ours, because quick-xml's reader neither resumes after a partial chunk nor enforces
//! XMPP's restrictions.
//!
//! One deliberate deviation: RFC 6120 §11.1 forbids comments, but the decoder skips them (between
//! and inside stanzas) rather than killing the stream, because they carry nothing and some
//! debugging tools emit them.

mod decoder;
mod element;
mod error;
mod text;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use decoder::{StreamDecoder, StreamEvent};
pub use element::{Element, Node};
pub use error::StreamError;
pub use writer::{stream_close, stream_error, stream_header};

/// The namespace of `<stream:stream>`, `<stream:features>` and `<stream:error>` (RFC 6120 §4.8.1).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The content namespace of server-to-server streams (RFC 6120 §4.8.2).
pub const NS_SERVER: &str = "jabber:server";
/// The content namespace of client-to-server streams (RFC 6120 §4.8.2).
pub const NS_CLIENT: &str = "jabber:client";
/// The content namespace of external component streams (XEP-0114).
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// Server dialback (XEP-0220), conventionally bound to the `db` prefix on the stream header.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// STARTTLS negotiation (RFC 6120 §5).
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// The namespace of stream error conditions (RFC 6120 §4.9.3).
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// The namespace the `xml` prefix is permanently bound to (`xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Limits on what a peer may send (from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza (a direct child of the stream, from its `<` to its final `>`) in bytes; also
    /// bounds the stream header and any comment or declaration between stanzas.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza; the stanza itself is depth 1. This also bounds
    /// the recursion of [`Element`]'s drop and writer on parsed trees.
    pub max_depth: usize,
    /// Most attributes on one element, counting namespace declarations.
    pub max_attrs: usize,
}

impl Default for Limits {
    /// Values in line with what Prosody and ejabberd accept by default.
    fn default() -> Self {
        Limits { max_stanza_bytes: 256 * 1024, max_depth: 32, max_attrs: 64 }
    }
}
