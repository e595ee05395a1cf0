//! Server TLS shared by the kubelet endpoint (`provider/logs.rs`) and the
//! admission webhook (`admission/tls.rs`): a rustls configuration on the
//! `ring` provider from a certificate chain and its key, and that pair read
//! from PEM files. Each caller wraps the errors in its own, which name the
//! flag the files came from.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A PEM file that could not be read or held nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFileError {
    pub path: String,
    pub message: String,
}

/// The certificate chain in `cert` and the private key in `key` (PEM).
pub fn read_pem_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemFileError> {
    use rustls::pki_types::pem::PemObject;
    let file_err = |path: &Path, e: &dyn std::fmt::Display| PemFileError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, &e))?;
    if chain.is_empty() {
        return Err(file_err(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
    Ok((chain, key))
}

/// A server configuration (safe default protocol versions, no client
/// authentication) serving `chain` with `key`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}
