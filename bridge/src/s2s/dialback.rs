//! Server dialback (XEP-0220) elements and keys (XEP-0185), shared by both stream directions.

use crate::stream::{Element, NS_DIALBACK};

/// Computes dialback keys. XEP-0185 §3 specifies
/// `hex(HMAC-SHA256(SHA256(secret), receiving + " " + originating + " " + stream_id))`;
/// the daemon implements it (this crate has no crypto dependency), see [`key_input`].
pub trait Keyer: Send + Sync {
    /// The lowercase hex key for this (receiving, originating, stream id) triple.
    fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String;
}

/// The HMAC input of XEP-0185 §3: the three values joined by single spaces.
pub fn key_input(receiving: &str, originating: &str, stream_id: &str) -> String {
    format!("{receiving} {originating} {stream_id}")
}

/// Compares keys in time independent of where they differ, so an attacker probing keys learns
/// nothing from response timing.
pub fn keys_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `<db:result from to>key</db:result>`: the originating server's claim (XEP-0220 §2.1.1).
pub fn result_request(from: &str, to: &str, key: &str) -> Element {
    Element::new("result", NS_DIALBACK).with_attr("from", from).with_attr("to", to).with_text(key)
}

/// `<db:result from to type/>`: the receiving server's verdict (XEP-0220 §2.1.4).
pub fn result_answer(from: &str, to: &str, valid: bool) -> Element {
    Element::new("result", NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", verdict(valid))
}

/// `<db:verify from to id>key</db:verify>`: asking the authoritative server (XEP-0220 §2.1.2).
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Element {
    Element::new("verify", NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_text(key)
}

/// The authoritative server's answer to a `<db:verify/>` (XEP-0220 §2.1.3), or `None` if the
/// request lacks `from`, `to` or `id`.
///
/// The key is recomputed with `keyer` as receiving = the request's `from` (the server the
/// originating server connected to), originating = its `to` (us). A `to` that is not ours
/// (`is_local` false) is answered `invalid`: we never issued a key for it.
pub fn answer_verify(
    request: &Element,
    keyer: &dyn Keyer,
    is_local: impl Fn(&str) -> bool,
) -> Option<Element> {
    let from = request.attr("from")?;
    let to = request.attr("to")?;
    let id = request.attr("id")?;
    let valid = is_local(to) && keys_equal(&keyer.key(from, to, id), request.text().trim());
    Some(
        Element::new("verify", NS_DIALBACK)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("id", id)
            .with_attr("type", verdict(valid)),
    )
}

/// The `type` attribute value for a verdict.
fn verdict(valid: bool) -> &'static str {
    if valid {
        "valid"
    } else {
        "invalid"
    }
}
