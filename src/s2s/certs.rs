//! Peer certificates on s2s streams (RFC 6120 §13.7.2, RFC 6125, RFC 7590, XEP-0178).
//!
//! The TLS handshake never fails over a certificate: an unverifiable one must still allow
//! dialback (XEP-0220). So the rustls verifiers here check only that the handshake signatures
//! are sound (the peer holds the key of the certificate it sent), and once the handshake is
//! done [`Trust::examine`] checks the chain against the trust anchors and reads the
//! certificate's identities into a [`PeerCert`] for the machine, which matches them against
//! the domain the peer claims.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tern_bridge::s2s::{Identity, PeerCert};

use crate::tls::Identity as OwnIdentity;

/// The trust anchors peers' certificates are checked against.
pub struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl Trust {
    /// The anchors in `ca_file` (PEM), or the system's roots when `None`.
    pub fn load(ca_file: Option<&Path>) -> anyhow::Result<Trust> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in crate::tls::read_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    // Not fatal: peers can still use dialback if fallback is on.
                    tracing::warn!(errors = ?found.errors, "no system trust anchors: s2s certificates will not verify");
                }
            }
        }
        Ok(Trust { roots: Arc::new(roots), provider: crate::tls::provider() })
    }

    /// The verdict on a peer's certificate chain (end entity first), as the handshake left it.
    pub fn examine(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerCert {
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return PeerCert::Absent;
        };
        let parsed = match rustls::server::ParsedCertificate::try_from(end_entity) {
            Ok(parsed) => parsed,
            Err(e) => return PeerCert::Untrusted(e.to_string()),
        };
        // A server's certificate is what XMPP peers present in both roles, so the serverAuth
        // purpose is checked for client certificates too (as Prosody and ejabberd accept).
        let verified = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        );
        if let Err(e) = verified {
            return PeerCert::Untrusted(e.to_string());
        }
        let mut names = identities(end_entity);
        // webpki applies a CA's name constraints to DNS names only and skips otherName
        // entries, so under a constrained CA an XmppAddr or SRV-ID could name any domain.
        // Such names count only where no constraint was meant to limit them.
        let constrained = self.roots.roots.iter().any(|anchor| anchor.name_constraints.is_some())
            || chain.is_some_and(|c| c.iter().any(|cert| extension(cert, OID_NAME_CONSTRAINTS).is_some()));
        if constrained {
            names.retain(|id| matches!(id, Identity::Dns(_)));
        }
        PeerCert::Trusted(names)
    }
}

/// The TLS client config for outbound streams: any server certificate passes the handshake
/// (see the module doc), and ours is offered for SASL EXTERNAL.
pub fn client_config(own: Option<&OwnIdentity>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)));
    let config = match own {
        Some(own) => builder
            .with_client_auth_cert(own.certs.clone(), own.key.clone_key())
            .context("our TLS key does not fit our certificate")?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The TLS server config for inbound streams: requests, but does not require, the peer's
/// certificate, and lets any through the handshake.
pub fn server_config(own: &OwnIdentity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = crate::tls::provider();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyCert(provider)))
        .with_single_cert(own.certs.clone(), own.key.clone_key())
        .context("our TLS key does not fit our certificate")?;
    Ok(Arc::new(config))
}

/// Accepts any certificate in either role, checking only the handshake signatures; the
/// chain is judged afterwards by [`Trust::examine`].
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

/// The handshake-signature half of both verifier traits, identical for either role.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> SigResult {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> SigResult {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    };
}

type SigResult = Result<HandshakeSignatureValid, rustls::Error>;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for AnyCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a peer with a certificate from any CA should send it.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// DER tags used below.
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTF8_STRING: u8 = 0x0c;
const IA5_STRING: u8 = 0x16;
/// `[3] EXPLICIT Extensions` in TBSCertificate (RFC 5280 §4.1).
const EXTENSIONS: u8 = 0xa3;
/// GeneralName choices (RFC 5280 §4.2.1.6): `[0] otherName`, `[2] dNSName`.
const OTHER_NAME: u8 = 0xa0;
const DNS_NAME: u8 = 0x82;
/// `[0] EXPLICIT` value of an otherName.
const EXPLICIT_0: u8 = 0xa0;
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// id-ce-nameConstraints, 2.5.29.30.
const OID_NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];
/// id-on-xmppAddr, 1.3.6.1.5.5.7.8.5 (RFC 6120 §13.7.1.4).
const OID_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// id-on-dnsSRV, 1.3.6.1.5.5.7.8.7 (RFC 4985).
const OID_SRV_NAME: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];

/// The DNS-IDs, SRV-IDs and XmppAddrs in a certificate's subjectAltName. The certificate has
/// already been parsed by webpki, so a structure this walk does not understand simply yields
/// fewer identities (never a panic, never a wrong one). The subject CN is not consulted
/// (RFC 9525 retired CN-IDs).
fn identities(cert: &[u8]) -> Vec<Identity> {
    san(cert).map(general_names).unwrap_or_default()
}

/// The contents of the subjectAltName extension value (a GeneralNames SEQUENCE).
fn san(cert: &[u8]) -> Option<&[u8]> {
    Some(tagged(extension(cert, OID_SAN)?, SEQUENCE)?.0)
}

/// The DER value (the OCTET STRING's contents) of the extension `oid` of a certificate.
fn extension<'a>(cert: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (cert, _) = tagged(cert, SEQUENCE)?;
    let (tbs, _) = tagged(cert, SEQUENCE)?;
    let explicit = children(tbs).find(|(tag, _)| *tag == EXTENSIONS)?.1;
    let (exts, _) = tagged(explicit, SEQUENCE)?;
    children(exts).filter(|(tag, _)| *tag == SEQUENCE).find_map(|(_, ext)| {
        let (ext_oid, rest) = tagged(ext, OID)?;
        if ext_oid != oid {
            return None;
        }
        // `critical BOOLEAN DEFAULT FALSE` may sit between the OID and the value.
        children(rest).find(|(tag, _)| *tag == OCTET_STRING).map(|(_, value)| value)
    })
}

fn general_names(names: &[u8]) -> Vec<Identity> {
    children(names)
        .filter_map(|(tag, value)| match tag {
            DNS_NAME => text(value).map(Identity::Dns),
            OTHER_NAME => {
                let (oid, rest) = tagged(value, OID)?;
                let (inner, _) = tagged(rest, EXPLICIT_0)?;
                let (&string_tag, _) = inner.split_first()?;
                // RFC 4985 says IA5String for SRVName; some issuers write UTF8String.
                let (string, _) = match string_tag {
                    UTF8_STRING | IA5_STRING => tagged(inner, string_tag)?,
                    _ => return None,
                };
                match oid {
                    OID_XMPP_ADDR => text(string).map(Identity::XmppAddr),
                    OID_SRV_NAME => text(string).map(Identity::Srv),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Splits one DER TLV off `input`: (tag, contents, rest). Only the short tag form occurs in
/// the structures read here; lengths over 4 bytes are refused.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        (len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The contents of a TLV with `tag` at the start of `input`, and what follows it.
fn tagged(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = tlv(input)?;
    (t == tag).then_some((contents, rest))
}

/// The TLVs of a constructed value's contents, in order, up to the first malformed one.
fn children(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = tlv(input)?;
        input = rest;
        Some((tag, contents))
    })
}

#[cfg(test)]
#[path = "certs_tests.rs"]
pub(crate) mod tests;
