//! Writing the stream-level framing of RFC 6120 §4: header, error and close.

use super::text::escape_attr;
use super::{StreamError, NS_COMPONENT, NS_DIALBACK, NS_STREAMS, NS_STREAM_ERRORS};

/// The XML declaration and `<stream:stream>` open tag (RFC 6120 §4.7), binding `default_ns` as
/// the content namespace, `stream:` and, with `with_dialback`, `db:` (XEP-0220 §2.1).
///
/// Empty `to`/`from` are omitted (a responder may not know the initiator's domain yet).
/// `version='1.0'` is sent except on component streams, because XEP-0114 predates it and
/// components that see it may wait for stream features that never come.
pub fn stream_header(
    default_ns: &str,
    to: &str,
    from: &str,
    id: Option<&str>,
    with_dialback: bool,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    escape_attr(default_ns, &mut out);
    out.push_str("' xmlns:stream='");
    out.push_str(NS_STREAMS);
    out.push('\'');
    if with_dialback {
        out.push_str(" xmlns:db='");
        out.push_str(NS_DIALBACK);
        out.push('\'');
    }
    for (name, value) in [("to", to), ("from", from), ("id", id.unwrap_or(""))] {
        if !value.is_empty() {
            out.push(' ');
            out.push_str(name);
            out.push_str("='");
            escape_attr(value, &mut out);
            out.push('\'');
        }
    }
    if default_ns != NS_COMPONENT {
        out.push_str(" version='1.0'");
    }
    out.push('>');
    out
}

/// A stream error followed by the stream close (RFC 6120 §4.9.1.1): the last thing written
/// before closing the connection.
pub fn stream_error(err: &StreamError) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("<stream:error><");
    out.push_str(err.condition());
    out.push_str(" xmlns='");
    out.push_str(NS_STREAM_ERRORS);
    match err {
        StreamError::SeeOtherHost(host) => {
            out.push_str("'>");
            super::text::escape_text(host, &mut out);
            out.push_str("</");
            out.push_str(err.condition());
            out.push('>');
        }
        _ => out.push_str("'/>"),
    }
    out.push_str("</stream:error>");
    out.push_str(stream_close());
    out
}

/// The stream close tag (RFC 6120 §4.4).
pub fn stream_close() -> &'static str {
    "</stream:stream>"
}
