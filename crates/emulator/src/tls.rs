//! HTTPS for the emulated portal: a throw-away self-signed certificate for
//! `localhost`, `127.0.0.1` and `::1`, since real portals (and the official
//! SDKs, which build `https://` URLs) speak HTTPS only.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::StartError;

pub struct SelfSignedTls {
    pub acceptor: TlsAcceptor,
    /// The certificate in PEM, for clients to trust.
    pub cert_pem: String,
}

pub fn self_signed() -> Result<SelfSignedTls, StartError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| StartError::Tls(e.to_string()))?;
    let cert_der: CertificateDer<'static> = certified.cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(SelfSignedTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        cert_pem: certified.cert.pem(),
    })
}
