//! Entity capabilities (XEP-0115): the `<c/>` tern puts on its devices' presence, so peers'
//! clients learn what a phone supports from one cached disco#info instead of one per contact.

use std::sync::OnceLock;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use super::iq::FEATURES;
use crate::stream::Element;

/// The caps namespace (XEP-0115).
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// The node naming tern's software (XEP-0115 §4: a URI; a URN needs no web site behind it).
pub const CAPS_NODE: &str = "urn:tern:caps";
/// The disco identity of a phone (`category`, `type`, `name`); the answer to a node query
/// must be exactly what the verification string hashes.
pub const DEVICE_IDENTITY: (&str, &str, &str) = ("client", "phone", "tern");

/// The verification string (XEP-0115 §5.1) of one identity without `xml:lang` and of
/// `features`, which must already be sorted byte-wise.
pub fn verification_string(identity: (&str, &str, &str), features: &[&str]) -> String {
    let (category, type_, name) = identity;
    let mut s = format!("{category}/{type_}//{name}<");
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

/// The `ver` of every tern device (the feature set is fixed at build time).
pub fn device_ver() -> &'static str {
    static VER: OnceLock<String> = OnceLock::new();
    VER.get_or_init(|| verification_string(DEVICE_IDENTITY, &FEATURES))
}

/// The node a peer queries to resolve [`device_ver`]: `node#ver` (XEP-0115 §6.2).
pub fn device_node() -> String {
    format!("{CAPS_NODE}#{}", device_ver())
}

/// The `<c/>` element for a device's available presence.
pub fn caps_element() -> Element {
    Element::new("c", NS_CAPS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", device_ver())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_xep_0115_simple_example() {
        // XEP-0115 §5.2: Exodus 0.9.1 with four features.
        let features = [
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc",
        ];
        assert_eq!(
            verification_string(("client", "pc", "Exodus 0.9.1"), &features),
            "QgayPKawpkPSDYmwT/WM94uAlu0="
        );
    }

    #[test]
    fn features_are_sorted_as_the_hash_requires() {
        let mut sorted = FEATURES;
        sorted.sort_unstable();
        assert_eq!(sorted, FEATURES);
    }

    #[test]
    fn element_and_node_agree() {
        let c = caps_element();
        assert_eq!(c.attr("hash"), Some("sha-1"));
        assert_eq!(format!("{}#{}", c.attr("node").unwrap(), c.attr("ver").unwrap()), device_node());
        assert_eq!(device_ver().len(), 28, "base64 of a 20-byte SHA-1");
    }
}
