//! Tests of s2s certificate checks (RFC 6125, XEP-0178): chains made with rcgen, real TLS
//! handshakes over loopback.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, OtherNameValue, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const XMPP_ADDR: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 5];
const SRV_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 7];

/// A throwaway CA (also used by the tern ⇄ tern tests in `s2s::tests`).
pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    key: KeyPair,
}

pub(crate) fn ca() -> Ca {
    ca_with(None)
}

/// A CA, limited to DNS names under `permitted` when given (RFC 5280 §4.2.1.10).
fn ca_with(permitted: Option<&str>) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.name_constraints = permitted.map(|p| rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(p.to_owned())],
        excluded_subtrees: vec![],
    });
    params.distinguished_name.push(rcgen::DnType::CommonName, "test federation CA");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf with `sans`, signed by `ca` (or self-signed).
pub(crate) fn leaf(ca: Option<&Ca>, sans: Vec<SanType>) -> OwnIdentity {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    OwnIdentity { certs: vec![cert.der().clone()], key }
}

pub(crate) fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn other(oid: &[u64], value: &str) -> SanType {
    SanType::OtherName((oid.to_vec(), OtherNameValue::Utf8String(value.to_owned())))
}

fn trust_in(ca: &Ca) -> Trust {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    Trust { roots: Arc::new(roots), provider: crate::tls::provider() }
}

#[test]
fn chain_from_the_anchor_is_trusted_with_every_identity() {
    let ca = ca();
    let sans = vec![
        dns("a.test"),
        dns("*.a.test"),
        other(XMPP_ADDR, "x.test"),
        other(SRV_NAME, "_xmpp-server.s.test"),
    ];
    let own = leaf(Some(&ca), sans);
    let cert = trust_in(&ca).examine(Some(&own.certs));
    assert_eq!(
        cert,
        PeerCert::Trusted(vec![
            Identity::Dns("a.test".into()),
            Identity::Dns("*.a.test".into()),
            Identity::XmppAddr("x.test".into()),
            Identity::Srv("_xmpp-server.s.test".into()),
        ])
    );
    for domain in ["a.test", "muc.a.test", "x.test", "s.test"] {
        assert_eq!(cert.check(domain), Ok(()), "{domain}");
    }
    assert!(cert.check("b.test").is_err());
}

#[test]
fn a_name_constrained_ca_vouches_for_dns_names_only() {
    // webpki would let otherName entries through a DNS-only constraint; tern ignores them.
    let ca = ca_with(Some("corp.test"));
    let sans = vec![
        dns("xmpp.corp.test"),
        other(XMPP_ADDR, "victim.test"),
        other(SRV_NAME, "_xmpp-server.victim.test"),
    ];
    let cert = trust_in(&ca).examine(Some(&leaf(Some(&ca), sans).certs));
    assert_eq!(cert, PeerCert::Trusted(vec![Identity::Dns("xmpp.corp.test".into())]));
    assert!(cert.check("victim.test").is_err());
    assert_eq!(cert.check("xmpp.corp.test"), Ok(()));
}

#[test]
fn self_signed_and_foreign_chains_are_untrusted() {
    let (ca, other_ca) = (ca(), ca());
    let own = leaf(None, vec![dns("a.test")]);
    assert!(matches!(trust_in(&ca).examine(Some(&own.certs)), PeerCert::Untrusted(_)));
    let foreign = leaf(Some(&other_ca), vec![dns("a.test")]);
    let verdict = trust_in(&ca).examine(Some(&foreign.certs));
    // Same issuer name, other key: found by name, refused by signature.
    assert!(matches!(&verdict, PeerCert::Untrusted(why) if why.contains("BadSignature")), "{verdict:?}");
    assert_eq!(trust_in(&ca).examine(None), PeerCert::Absent);
    assert_eq!(trust_in(&ca).examine(Some(&[])), PeerCert::Absent);
    let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
    assert!(matches!(trust_in(&ca).examine(Some(&garbage)), PeerCert::Untrusted(_)));
}

#[test]
fn srv_name_as_ia5_string_is_read() {
    // GeneralNames { [0] otherName { id-on-dnsSRV, [0] IA5String "_xmpp-server.s.test" } }
    let value = b"_xmpp-server.s.test";
    let mut ia5 = vec![IA5_STRING, value.len() as u8];
    ia5.extend_from_slice(value);
    let mut explicit = vec![EXPLICIT_0, ia5.len() as u8];
    explicit.extend(ia5);
    let mut other_name = vec![OID, OID_SRV_NAME.len() as u8];
    other_name.extend_from_slice(OID_SRV_NAME);
    other_name.extend(explicit);
    let mut names = vec![OTHER_NAME, other_name.len() as u8];
    names.extend(other_name);
    assert_eq!(general_names(&names), vec![Identity::Srv("_xmpp-server.s.test".into())]);
}

#[test]
fn truncated_or_garbage_der_yields_no_identities_and_no_panic() {
    let own = leaf(None, vec![dns("a.test"), other(XMPP_ADDR, "a.test")]);
    let der = own.certs[0].as_ref();
    assert_eq!(identities(der).len(), 2);
    for cut in 0..der.len() {
        let _ = identities(&der[..cut]);
    }
    for bad in [&[][..], &[0x30], &[0x30, 0x85, 1, 1, 1, 1, 1], &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]] {
        assert!(identities(bad).is_empty());
    }
}

#[test]
fn ca_file_without_certificates_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty-ca.pem");
    std::fs::write(&path, "nothing here\n").unwrap();
    let err = format!("{:#}", Trust::load(Some(&path)).err().expect("refused"));
    assert!(err.contains("empty-ca.pem"), "{err}");
}

/// Both directions of a real handshake: the server requests a client certificate without
/// requiring one, nothing is refused during the handshake, and each side examines the other's.
async fn handshake(
    server: &OwnIdentity,
    client: Option<&OwnIdentity>,
    trust: &Trust,
) -> (PeerCert, PeerCert) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(server).unwrap());
    let connector = tokio_rustls::TlsConnector::from(client_config(client).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        tls.get_ref().1.peer_certificates().map(|c| c.to_vec())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("b.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"x").await.unwrap();
    tls.flush().await.unwrap();
    let seen_by_client = trust.examine(tls.get_ref().1.peer_certificates());
    let seen_by_server = accept.await.unwrap();
    (seen_by_client, trust.examine(seen_by_server.as_deref()))
}

#[tokio::test]
async fn handshake_carries_both_certificates() {
    let ca = ca();
    let a = leaf(Some(&ca), vec![dns("a.test")]);
    let b = leaf(Some(&ca), vec![dns("b.test")]);
    let (server_cert, client_cert) = handshake(&b, Some(&a), &trust_in(&ca)).await;
    assert_eq!(server_cert.check("b.test"), Ok(()));
    assert_eq!(client_cert.check("a.test"), Ok(()));
}

#[tokio::test]
async fn handshake_survives_untrusted_and_missing_certificates() {
    let ca = ca();
    let a = leaf(None, vec![dns("a.test")]);
    let b = leaf(None, vec![dns("b.test")]);
    let (server_cert, client_cert) = handshake(&b, Some(&a), &trust_in(&ca)).await;
    assert!(matches!(server_cert, PeerCert::Untrusted(_)));
    assert!(matches!(client_cert, PeerCert::Untrusted(_)));
    let (_, none) = handshake(&b, None, &trust_in(&ca)).await;
    assert_eq!(none, PeerCert::Absent);
}
