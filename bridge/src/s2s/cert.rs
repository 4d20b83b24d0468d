//! Peer certificate identities for s2s authentication: matching a domain against a
//! certificate's DNS-IDs, SRV-IDs and XmppAddrs (RFC 6125 §6, RFC 7590 §3.1, RFC 6120 §13.7.1.4,
//! XEP-0178).
//!
//! Chain validation needs crypto and trust anchors, so the driver does it after the TLS
//! handshake and hands the machine a [`PeerCert`]; matching names is pure and lives here.

/// The SRV service name an XMPP server certificate is issued for (RFC 6120 §13.7.1.2.1).
const SRV_XMPP_SERVER: &str = "_xmpp-server.";

/// One reference identity found in a certificate's subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A `dNSName` (DNS-ID), possibly with a `*` as its whole leftmost label.
    Dns(String),
    /// An `SRVName` otherName (SRV-ID, RFC 4985), e.g. `_xmpp-server.example.org`.
    Srv(String),
    /// An `id-on-xmppAddr` otherName (RFC 6120 §13.7.1.4): a bare domain for a server.
    XmppAddr(String),
}

impl Identity {
    /// Whether this identity names `domain` (already lowercased, no trailing dot).
    fn matches(&self, domain: &str) -> bool {
        match self {
            Identity::Dns(name) => dns_id_matches(&normalize(name), domain),
            // SRV-IDs carry no wildcards (RFC 6125 §6.4.3 allows them only in DNS-IDs).
            Identity::Srv(name) => {
                let name = normalize(name);
                name.strip_prefix(SRV_XMPP_SERVER).is_some_and(|d| d == domain)
            }
            // RFC 6120 §13.7.1.4: compared as a whole, no wildcards.
            Identity::XmppAddr(addr) => normalize(addr) == domain,
        }
    }
}

/// Why a peer's certificate does not authenticate a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The peer presented no certificate.
    #[error("no certificate presented")]
    Absent,
    /// The chain does not lead to a trust anchor (self-signed, expired, unknown CA, …).
    #[error("certificate not trusted: {0}")]
    Untrusted(String),
    /// The chain is trusted but names other domains.
    #[error("certificate is not valid for {0}")]
    NameMismatch(String),
}

/// What the driver learned about the peer's certificate during the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No TLS, or no certificate presented.
    Absent,
    /// The chain did not verify; why, for logs.
    Untrusted(String),
    /// The chain verified against the trust anchors; the identities it carries.
    Trusted(Vec<Identity>),
}

impl PeerCert {
    /// Whether this certificate authenticates `domain` (RFC 6125 §6: any one identity suffices).
    pub fn check(&self, domain: &str) -> Result<(), CertError> {
        match self {
            PeerCert::Absent => Err(CertError::Absent),
            PeerCert::Untrusted(why) => Err(CertError::Untrusted(why.clone())),
            PeerCert::Trusted(ids) => {
                let domain = normalize(domain);
                if !domain.is_empty() && ids.iter().any(|id| id.matches(&domain)) {
                    Ok(())
                } else {
                    Err(CertError::NameMismatch(domain))
                }
            }
        }
    }
}

/// Lowercases ASCII and drops one trailing dot: DNS names compare that way (RFC 6125 §6.4.1).
/// Internationalized names are compared as the A-labels certificates carry.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// RFC 6125 §6.4.3, with the stricter RFC 9525 reading: `*` may only be the entire leftmost
/// label, matches exactly one non-empty label, and never stands for a public suffix alone
/// (the rest must still have two labels).
fn dns_id_matches(id: &str, domain: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let Some(base) = id.strip_prefix("*.") else {
        return !id.contains('*') && id == domain;
    };
    if base.contains('*') || !base.contains('.') {
        return false;
    }
    match domain.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest == base,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ids: &[Identity]) -> PeerCert {
        PeerCert::Trusted(ids.to_vec())
    }

    #[test]
    fn dns_id_exact_and_case_insensitive() {
        let cert = trusted(&[Identity::Dns("XMPP.Example.org".into())]);
        assert_eq!(cert.check("xmpp.example.org"), Ok(()));
        assert_eq!(cert.check("xmpp.example.org."), Ok(()));
        assert_eq!(cert.check("XMPP.EXAMPLE.ORG"), Ok(()));
        assert_eq!(cert.check("example.org"), Err(CertError::NameMismatch("example.org".into())));
    }

    #[test]
    fn wildcard_matches_exactly_one_leftmost_label() {
        let cert = trusted(&[Identity::Dns("*.example.org".into())]);
        assert_eq!(cert.check("chat.example.org"), Ok(()));
        assert!(cert.check("example.org").is_err(), "the wildcard needs a label");
        assert!(cert.check("a.b.example.org").is_err(), "one label only");
        assert!(cert.check(".example.org").is_err(), "an empty label is not a label");
    }

    #[test]
    fn malformed_wildcards_match_nothing() {
        for id in ["*.org", "*", "f*.example.org", "a.*.example.org", "*.*.example.org", ""] {
            let cert = trusted(&[Identity::Dns(id.into())]);
            assert!(cert.check("foo.example.org").is_err(), "{id}");
            assert!(cert.check("example.org").is_err(), "{id}");
        }
    }

    #[test]
    fn srv_id_needs_the_xmpp_server_service() {
        let cert = trusted(&[Identity::Srv("_xmpp-server.Example.org".into())]);
        assert_eq!(cert.check("example.org"), Ok(()));
        assert!(cert.check("other.org").is_err());
        let client = trusted(&[Identity::Srv("_xmpp-client.example.org".into())]);
        assert!(client.check("example.org").is_err());
        let wild = trusted(&[Identity::Srv("_xmpp-server.*.example.org".into())]);
        assert!(wild.check("a.example.org").is_err());
    }

    #[test]
    fn xmpp_addr_is_compared_whole() {
        let cert = trusted(&[Identity::XmppAddr("example.org".into())]);
        assert_eq!(cert.check("example.org"), Ok(()));
        assert!(cert.check("sub.example.org").is_err());
        let wild = trusted(&[Identity::XmppAddr("*.example.org".into())]);
        assert!(wild.check("a.example.org").is_err());
    }

    #[test]
    fn any_identity_suffices() {
        let cert = trusted(&[Identity::Dns("a.example".into()), Identity::XmppAddr("b.example".into())]);
        assert_eq!(cert.check("a.example"), Ok(()));
        assert_eq!(cert.check("b.example"), Ok(()));
        assert!(cert.check("c.example").is_err());
    }

    #[test]
    fn untrusted_and_absent_never_match() {
        assert_eq!(PeerCert::Absent.check("a.example"), Err(CertError::Absent));
        let cert = PeerCert::Untrusted("UnknownIssuer".into());
        assert_eq!(cert.check("a.example"), Err(CertError::Untrusted("UnknownIssuer".into())));
        assert_eq!(
            CertError::Untrusted("UnknownIssuer".into()).to_string(),
            "certificate not trusted: UnknownIssuer"
        );
        assert!(trusted(&[Identity::Dns("a.example".into())]).check("").is_err());
    }
}
