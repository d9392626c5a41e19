//! A certificate for a test server on loopback.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `127.0.0.1` and `localhost`, written as
/// PEM files; clients trust `cert_pem` alone.
pub struct SelfSigned {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl SelfSigned {
    /// Writes `cert.pem` and `key.pem` into `dir`.
    pub fn write(dir: &Path) -> SelfSigned {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let certified =
            rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
        let cert_pem = certified.cert.pem();
        let cert_path = crate::config::write(dir, "cert.pem", &cert_pem);
        let key_path = crate::config::write(dir, "key.pem", &certified.signing_key.serialize_pem());
        SelfSigned {
            cert_pem,
            cert_path,
            key_path,
        }
    }
}
