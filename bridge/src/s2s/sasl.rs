//! SASL EXTERNAL between servers (RFC 6120 §6, RFC 4422 Appendix A, XEP-0178 §3): the
//! mechanism offer, `<auth/>`, `<success/>` and `<failure/>` elements.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::stream::Element;

/// The SASL namespace of RFC 6120 §6.4.
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The only mechanism servers use with each other.
const EXTERNAL: &str = "EXTERNAL";

/// A SASL failure condition (RFC 6120 §6.5) we send or receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// §6.5.6: the authzid is not the identity the certificate proves.
    #[error("invalid-authzid")]
    InvalidAuthzid,
    /// §6.5.7: a mechanism other than the ones offered.
    #[error("invalid-mechanism")]
    InvalidMechanism,
    /// §6.5.3: the initial response is not valid base64 or not UTF-8.
    #[error("incorrect-encoding")]
    IncorrectEncoding,
    /// §6.5.10: the certificate does not authenticate the claimed domain.
    #[error("not-authorized")]
    NotAuthorized,
    /// Any other condition, as the peer named it.
    #[error("{0}")]
    Other(String),
}

impl SaslError {
    /// The condition's element name.
    fn condition(&self) -> &str {
        match self {
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::Other(name) => name,
        }
    }

    /// Reads the condition of a peer's `<failure/>`.
    pub fn from_failure(failure: &Element) -> SaslError {
        match failure.elements().find(|c| c.ns() == NS_SASL && c.name() != "text").map(|c| c.name()) {
            Some("invalid-authzid") => SaslError::InvalidAuthzid,
            Some("invalid-mechanism") => SaslError::InvalidMechanism,
            Some("incorrect-encoding") => SaslError::IncorrectEncoding,
            Some("not-authorized") => SaslError::NotAuthorized,
            other => SaslError::Other(other.unwrap_or("undefined").to_owned()),
        }
    }
}

/// `<mechanisms><mechanism>EXTERNAL</mechanism></mechanisms>`, the stream feature (§6.4.1).
pub fn mechanisms_external() -> Element {
    Element::new("mechanisms", NS_SASL).with_child(Element::new("mechanism", NS_SASL).with_text(EXTERNAL))
}

/// Whether a `<stream:features/>` offers SASL EXTERNAL.
pub fn offers_external(features: &Element) -> bool {
    features
        .child("mechanisms", NS_SASL)
        .is_some_and(|m| m.elements().any(|c| c.is("mechanism", NS_SASL) && c.text().trim() == EXTERNAL))
}

/// `<auth mechanism='EXTERNAL'>base64(authzid)</auth>`: XEP-0178 §3 step 7 sends our domain
/// as the authorization identity.
pub fn auth_external(authzid: &str) -> Element {
    Element::new("auth", NS_SASL).with_attr("mechanism", EXTERNAL).with_text(STANDARD.encode(authzid))
}

/// The authorization identity of a peer's `<auth/>`: `None` when it sent none (an empty
/// response, `=`), so the stream's `from` applies (RFC 6120 §6.4.6).
pub fn parse_auth(auth: &Element) -> Result<Option<String>, SaslError> {
    if auth.attr("mechanism") != Some(EXTERNAL) {
        return Err(SaslError::InvalidMechanism);
    }
    let text = auth.text();
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(None);
    }
    let bytes = STANDARD.decode(text).map_err(|_| SaslError::IncorrectEncoding)?;
    let authzid = String::from_utf8(bytes).map_err(|_| SaslError::IncorrectEncoding)?;
    Ok(Some(authzid))
}

/// `<success/>` (§6.4.6).
pub fn success() -> Element {
    Element::new("success", NS_SASL)
}

/// `<failure><condition/></failure>` (§6.4.5).
pub fn failure(err: &SaslError) -> Element {
    Element::new("failure", NS_SASL).with_child(Element::new(err.condition(), NS_SASL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_round_trips_the_authzid() {
        let auth = auth_external("a.example");
        assert_eq!(auth.text(), "YS5leGFtcGxl");
        assert_eq!(parse_auth(&auth), Ok(Some("a.example".to_owned())));
    }

    #[test]
    fn empty_response_means_no_authzid() {
        for text in ["", "=", " = "] {
            let auth = Element::new("auth", NS_SASL).with_attr("mechanism", "EXTERNAL").with_text(text);
            assert_eq!(parse_auth(&auth), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn invalid_auth_gets_the_exact_condition() {
        let plain = Element::new("auth", NS_SASL).with_attr("mechanism", "PLAIN").with_text("AGEAYg==");
        assert_eq!(parse_auth(&plain), Err(SaslError::InvalidMechanism));
        let none = Element::new("auth", NS_SASL);
        assert_eq!(parse_auth(&none), Err(SaslError::InvalidMechanism));
        let ext = |t: &str| Element::new("auth", NS_SASL).with_attr("mechanism", "EXTERNAL").with_text(t);
        assert_eq!(parse_auth(&ext("not base64!")), Err(SaslError::IncorrectEncoding));
        assert_eq!(parse_auth(&ext("/w==")), Err(SaslError::IncorrectEncoding), "0xff is not UTF-8");
    }

    #[test]
    fn failure_round_trips_its_condition() {
        for err in [
            SaslError::InvalidAuthzid,
            SaslError::InvalidMechanism,
            SaslError::IncorrectEncoding,
            SaslError::NotAuthorized,
            SaslError::Other("temporary-auth-failure".into()),
        ] {
            assert_eq!(SaslError::from_failure(&failure(&err)), err);
        }
        let mut text = String::new();
        failure(&SaslError::NotAuthorized).write_to(&mut text);
        assert_eq!(text, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>");
        let bare = Element::new("failure", NS_SASL);
        assert_eq!(SaslError::from_failure(&bare), SaslError::Other("undefined".into()));
    }

    #[test]
    fn external_offer_is_recognised() {
        let features =
            Element::new("features", "http://etherx.jabber.org/streams").with_child(mechanisms_external());
        assert!(offers_external(&features));
        let plain = Element::new("features", "http://etherx.jabber.org/streams").with_child(
            Element::new("mechanisms", NS_SASL)
                .with_child(Element::new("mechanism", NS_SASL).with_text("PLAIN")),
        );
        assert!(!offers_external(&plain));
        assert!(!offers_external(&Element::new("features", "http://etherx.jabber.org/streams")));
    }
}
