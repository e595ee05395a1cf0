//! Server TLS and the one accept loop shared by the kubelet endpoint
//! (`kubelet/`) and the admission webhook (`admission/tls.rs`):
//! - a rustls configuration on the `ring` provider from a certificate chain
//!   and its key, and that pair read from PEM files (each caller wraps the
//!   errors in its own, which name the flag the files came from);
//! - [`RequestClientCert`]: ask for a client certificate without requiring
//!   one, as Go's `tls.RequestClientCert` that the kubelet uses; the chain is
//!   checked by the application (`kubelet/auth.rs`), which answers 401;
//! - [`serve_tls`] / [`serve_plain`]: accept connections up to
//!   [`ServeLimits::max_connections`] at once (more wait in the listen
//!   backlog, as Go's `netutil.LimitListener`), bound the TLS handshake and
//!   the reading of each request's headers, and hand every request its
//!   [`Peer`] (address and the certificates it presented).

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration (safe default protocol versions, no client
/// authentication) serving `chain` with `key`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A server configuration serving `chain` with `key` that asks every client
/// for a certificate ([`RequestClientCert`]) and accepts clients without
/// one.
pub fn server_config_requesting_client_certs(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(RequestClientCert::new()))
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Client certificates requested, not required, and their chain left to
/// the application (Go's `tls.RequestClientCert`, which the kubelet serves
/// with, verifying the chain in its x509 authenticator so a wrong CA is a
/// 401 rather than a failed handshake).
///
/// The handshake still proves that the client holds the private key of the
/// certificate it sent: the TLS 1.2/1.3 `CertificateVerify` signature is
/// checked against the leaf's public key here. No CA names are sent as
/// hints: Go clients then offer their certificate whoever issued it.
#[derive(Debug)]
pub struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl RequestClientCert {
    pub fn new() -> Self {
        Self {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl Default for RequestClientCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain is the application's to judge (it knows the CA, which
        // can change while the listener stays up).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The other end of a connection, in the extensions of each of its
/// requests.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The certificate chain the client sent in the TLS handshake, leaf
    /// first; empty on plain HTTP or when it sent none. With
    /// [`RequestClientCert`] only possession of the leaf's key is proven:
    /// the chain is not verified.
    pub certificates: Arc<[CertificateDer<'static>]>,
}

/// Bounds of a served port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// A TLS handshake not done by then drops the connection.
    pub handshake_timeout: Duration,
    /// A request whose headers have not all arrived by then drops the
    /// connection; it also ends idle keep-alive connections (hyper starts
    /// the clock whenever it waits for a request).
    pub header_read_timeout: Duration,
    /// Connections served at once; more are not accepted (they wait in the
    /// listen backlog) until one ends.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    /// 10 s handshake, 10 s headers, 256 connections.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serve `app` over TLS on `listener` until `stop` resolves, within
/// `limits`. A client that fails or stalls the handshake only loses its own
/// connection. `name` labels the log lines (`"webhook"`, `"kubelet endpoint"`).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: ServeLimits,
    name: &'static str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake_within = limits.handshake_timeout;
    let header_within = limits.header_read_timeout;
    accept_loop(
        listener,
        limits.max_connections,
        name,
        stop,
        move |tcp, addr| {
            let acceptor = acceptor.clone();
            let app = app.clone();
            async move {
                let stream = match tokio::time::timeout(handshake_within, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %addr, "{name}: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %addr, "{name}: TLS handshake timed out");
                        return;
                    }
                };
                let certificates: Arc<[CertificateDer<'static>]> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().cloned().collect())
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                let peer = Peer { addr, certificates };
                serve_http1(stream, app, peer, header_within, name).await;
            }
        },
    )
    .await
}

/// Serve `app` over plain HTTP on `listener` until `stop` resolves, within
/// `limits` (no handshake).
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    name: &'static str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_within = limits.header_read_timeout;
    accept_loop(
        listener,
        limits.max_connections,
        name,
        stop,
        move |tcp, addr| {
            let app = app.clone();
            async move {
                let peer = Peer {
                    addr,
                    certificates: Arc::from(Vec::new()),
                };
                serve_http1(tcp, app, peer, header_within, name).await;
            }
        },
    )
    .await
}

/// Accept while fewer than `max` connections are open, each handled by its
/// own task; the slot is freed when `handle`'s future ends.
async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    max: usize,
    name: &'static str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let max = max.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut at_cap = false;
    tokio::pin!(stop);
    loop {
        if slots.available_permits() == 0 && !at_cap {
            tracing::warn!(
                max_connections = max,
                "{name}: connection limit reached; new connections wait until one ends"
            );
        }
        at_cap = slots.available_permits() == 0;
        let slot = tokio::select! {
            _ = &mut stop => return Ok(()),
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return Ok(()), // never closed
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // E.g. out of file descriptors: do not spin.
                    tracing::warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let work = handle(tcp, addr);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

/// HTTP/1.1 on one connection, each request carrying `peer`.
async fn serve_http1<I>(
    io: I,
    app: axum::Router,
    peer: Peer,
    header_read_timeout: Duration,
    name: &'static str,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let app = tower::ServiceExt::map_request(
        app,
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            req
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(header_read_timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        // Upgrades (the kubelet endpoint's exec: SPDY/3.1) take the connection over.
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, peer = %addr, "{name}: connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn plain_server(limits: ServeLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let app = axum::Router::new().route(
            "/peer",
            axum::routing::get(|axum::Extension(p): axum::Extension<Peer>| async move {
                format!("{} {}", p.addr.ip(), p.certificates.len())
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_plain(listener, app, limits, "test", async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn every_request_knows_its_peer() {
        let (addr, _stop) = plain_server(ServeLimits::default()).await;
        let answer = get(addr, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("127.0.0.1 0"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_dropped() {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_millis(200),
            ..ServeLimits::default()
        };
        let (addr, _stop) = plain_server(limits).await;
        let mut slow = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "still open after 5 s");
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let limits = ServeLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(30),
            ..ServeLimits::default()
        };
        let (addr, _stop) = plain_server(limits).await;
        // The one slot, held by a connection that sends nothing.
        let holder = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(async move { get(addr, "/peer").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served past the cap");
        drop(holder);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap_or_else(|_| panic!("not served after the slot freed"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
