//! Dialback keys as XEP-0185 recommends: HMAC-SHA256 keyed with the hex SHA-256 of a secret.

use ring::{digest, hmac};
use tern_bridge::s2s::dialback::{key_input, Keyer};

/// The XEP-0185 keyer for this server's dialback secret.
pub struct HmacKeyer {
    key: hmac::Key,
}

impl HmacKeyer {
    /// A keyer for `secret` (from config, or random at start-up: XEP-0185 §3 allows either).
    pub fn new(secret: &[u8]) -> HmacKeyer {
        // XEP-0185 §3: the secret is hashed first and its hex form is the HMAC key, so that the
        // key is long enough whatever the secret, and encodes the same everywhere.
        let hashed = hex(digest::digest(&digest::SHA256, secret).as_ref());
        HmacKeyer { key: hmac::Key::new(hmac::HMAC_SHA256, hashed.as_bytes()) }
    }
}

impl Keyer for HmacKeyer {
    fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        hex(hmac::sign(&self.key, key_input(receiving, originating, stream_id).as_bytes()).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of XEP-0185 §4.
    #[test]
    fn the_xep_0185_example() {
        let keyer = HmacKeyer::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            keyer.key("xmpp.example.com", "example.org", "D60000229F"),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let keyer = HmacKeyer::new(b"secret");
        let base = keyer.key("a.example", "b.example", "id1");
        assert_ne!(base, keyer.key("b.example", "a.example", "id1"));
        assert_ne!(base, keyer.key("a.example", "b.example", "id2"));
        assert_ne!(base, HmacKeyer::new(b"other").key("a.example", "b.example", "id1"));
    }
}
