//! Stage 3 of the request path, server-side TLS: the rustls configuration
//! (TLS 1.2 + 1.3, ALPN h2 and http/1.1), the handshake, and a certificate
//! that can be replaced while the server runs.
//!
//! The certificate lives behind an [`ArcSwap`] read by rustls' certificate
//! resolver at each handshake, so a reload affects new connections only and
//! never touches established ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a client's TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    #[error("TLS handshake timed out")]
    Timeout,
}

/// Completes the server side of a TLS handshake within `timeout`.
pub async fn handshake<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: IO,
    timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<IO>, HandshakeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("cannot read the key file {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain and key loaded from PEM files, with the leaf's
/// expiry time.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Unix seconds of the leaf certificate's `notAfter`.
    pub not_after: i64,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("chain", &self.key.cert.len())
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The certificates of a PEM file, in order; the error says why not, for
/// the caller to name the file.
pub(crate) fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// Reads and checks a certificate chain and its private key.
pub fn load_cert(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, TlsError> {
    let cert_err = |detail: String| TlsError::Cert {
        path: cert_path.display().to_string(),
        detail,
    };
    // The key's content never goes into an error: only its path.
    let key_err = |detail: String| TlsError::Key {
        path: key_path.display().to_string(),
        detail,
    };
    let chain = pem_certificates(cert_path).map_err(cert_err)?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_err("no PEM certificate in it".into()))?;
    let not_after = not_after(leaf).map_err(cert_err)?;
    let key_der = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|_| key_err("unsupported or malformed private key".into()))?;
    let key = CertifiedKey::new(chain, signing_key);
    key.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
    })?;
    Ok(LoadedCert {
        key: Arc::new(key),
        not_after,
    })
}

fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the first certificate is not valid X.509: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The certificate the server presents, replaceable at run time.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    not_after: AtomicI64,
    stamp: std::sync::Mutex<Option<FilesStamp>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// What identifies a version of the certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FilesStamp(Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl CertStore {
    /// Loads the files; fails if they are unusable.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<CertStore, TlsError> {
        let stamp = FilesStamp(stamp_of(cert_path), stamp_of(key_path));
        let loaded = load_cert(cert_path, key_path)?;
        Ok(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::new(loaded.key),
            not_after: AtomicI64::new(loaded.not_after),
            stamp: std::sync::Mutex::new(Some(stamp)),
        })
    }

    /// Re-reads the files. On error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = FilesStamp(stamp_of(&self.cert_path), stamp_of(&self.key_path));
        *self.stamp.lock().expect("stamp lock") = Some(stamp);
        let loaded = load_cert(&self.cert_path, &self.key_path)?;
        self.current.store(loaded.key);
        self.not_after.store(loaded.not_after, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads if either file changed since the last load or attempt;
    /// `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let stamp = FilesStamp(stamp_of(&self.cert_path), stamp_of(&self.key_path));
        if self.stamp.lock().expect("stamp lock").as_ref() == Some(&stamp) {
            return None;
        }
        Some(self.reload())
    }

    /// Unix seconds at which the current certificate expires.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// The server's rustls configuration, presenting whatever `store` holds.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks the files every `period` and reloads them when they change, until
/// `stop` is cancelled.
pub async fn watch_files(
    store: Arc<CertStore>,
    period: Duration,
    stop: tokio_util::sync::CancellationToken,
    on_reload: impl Fn(&Result<(), TlsError>) + Send + 'static,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        if let Some(result) = store.reload_if_changed() {
            on_reload(&result);
        }
    }
}
