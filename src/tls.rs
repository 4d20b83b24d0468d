//! TLS for tern's listeners: rustls with the ring provider, PEM files from config, and a self-signed dev certificate.

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// tern's own certificate chain and key, as loaded from the `[tls]` PEM files.
pub struct Identity {
    /// The chain, end entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key of the end entity.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads the chain and key from PEM files (cert chain, then PKCS#8/RSA/SEC1 key).
    pub fn load(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<Identity> {
        Ok(Identity { certs: read_certs(cert_pem)?, key: read_key(key_pem)? })
    }
}

/// Builds a rustls server config from PEM files (cert chain, then PKCS#8/RSA/SEC1 key). ALPN is left empty.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let Identity { certs, key } = Identity::load(cert_pem, key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("ring provider does not support the default TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!("TLS key {} does not fit certificate {}", key_pem.display(), cert_pem.display())
        })?;
    Ok(Arc::new(config))
}

/// Writes a self-signed certificate and key for `names` (DNS names or IP addresses) to the two paths, key file mode 0600.
pub fn write_self_signed(cert_pem: &Path, key_pem: &Path, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        bail!("a self-signed certificate needs at least one DNS name or IP address");
    }
    // rcgen turns each name that parses as an IP address into an IP SAN, the rest into DNS SANs.
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .with_context(|| format!("invalid certificate name in {names:?}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "tern development certificate");
    let key_pair = rcgen::KeyPair::generate().context("generating TLS key pair")?;
    let cert = params.self_signed(&key_pair).context("signing self-signed certificate")?;
    // Key first: a certificate without its key is useless, and a crash between the two
    // writes then leaves at worst an orphan key, never a cert that seems usable.
    write_private(key_pem, key_pair.serialize_pem().as_bytes())?;
    create_parent(cert_pem)?;
    fs::write(cert_pem, cert.pem())
        .with_context(|| format!("writing TLS certificate {}", cert_pem.display()))?;
    Ok(())
}

/// The ring crypto provider tern uses everywhere (never aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    // One shared instance: every config built from it then agrees on cipher suites.
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The PEM certificates in `path`, at least one.
pub(crate) fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let file = File::open(path).with_context(|| format!("opening TLS certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading PEM certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate found in {}", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let file = File::open(path).with_context(|| format!("opening TLS key {}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .with_context(|| format!("reading PEM private key from {}", path.display()))?
        .with_context(|| format!("no PKCS#8, RSA or SEC1 private key found in {}", path.display()))
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Writes a file only its owner can read. Permissions are narrowed before any secret byte
/// is written, so an existing world-readable file is never briefly readable with the new key.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    create_parent(path)?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("creating TLS key {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // `mode` above only applies when the file is new.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", path.display()))?;
    }
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing TLS key {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn dev_cert(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        write_self_signed(&cert, &key, &names).unwrap();
        (cert, key)
    }

    fn client_config(cert: &Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(cert).unwrap() {
            roots.add(c).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    async fn handshake_and_echo(server_name: &'static str) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = dev_cert(dir.path(), &["localhost", "127.0.0.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&cert, &key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            tls.write_all(b"world").await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let connector = tokio_rustls::TlsConnector::from(client_config(&cert));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(server_name).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"world");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn handshake_by_dns_name() {
        handshake_and_echo("localhost").await;
    }

    #[tokio::test]
    async fn handshake_by_ip_address() {
        handshake_and_echo("127.0.0.1").await;
    }

    #[tokio::test]
    async fn wrong_name_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = dev_cert(dir.path(), &["localhost"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&cert, &key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            assert!(acceptor.accept(tcp).await.is_err());
        });
        let connector = tokio_rustls::TlsConnector::from(client_config(&cert));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("example.org").unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
        server.await.unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_even_if_it_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/key.pem");
        let cert = dir.path().join("sub/cert.pem");
        fs::create_dir_all(key.parent().unwrap()).unwrap();
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_self_signed(&cert, &key, &["tern.test".to_string()]).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        assert!(fs::read_to_string(&cert).unwrap().contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let (cert, key) = dev_cert(dir.path(), &["localhost"]);

        let err = format!("{:#}", server_config(&missing, &key).unwrap_err());
        assert!(err.contains("nope.pem"), "{err}");
        let err = format!("{:#}", server_config(&cert, &missing).unwrap_err());
        assert!(err.contains("nope.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not pem at all\n").unwrap();
        let err = format!("{:#}", server_config(&garbage, &key).unwrap_err());
        assert!(err.contains("garbage.pem"), "{err}");
        // The cert file holds no key; the key file holds no cert.
        let err = format!("{:#}", server_config(&cert, &cert).unwrap_err());
        assert!(err.contains("cert.pem") && err.contains("private key"), "{err}");
        let err = format!("{:#}", server_config(&key, &key).unwrap_err());
        assert!(err.contains("key.pem"), "{err}");
    }

    #[test]
    fn mismatched_key_is_an_error() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert_a, _) = dev_cert(a.path(), &["localhost"]);
        let (_, key_b) = dev_cert(b.path(), &["localhost"]);
        let err = format!("{:#}", server_config(&cert_a, &key_b).unwrap_err());
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn empty_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = write_self_signed(&dir.path().join("c"), &dir.path().join("k"), &[]);
        assert!(r.is_err());
    }

    #[test]
    fn provider_is_ring_and_shared() {
        let p = provider();
        assert!(Arc::ptr_eq(&p, &provider()));
        assert!(!p.cipher_suites.is_empty());
    }
}
