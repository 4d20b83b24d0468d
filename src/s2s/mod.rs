//! Server-to-server federation (RFC 6120, XEP-0220): the daemon side of `tern_bridge::s2s`.
//!
//! The sans-IO stream machines live in `bridge/`; this module supplies what they need from the
//! outside world. Sockets, TLS and routing come with the federation issue.

pub mod keyer;
