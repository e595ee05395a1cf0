//! The node's kubelet endpoint, as far as ACI can serve it:
//! `GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N` (what the
//! API server proxies `kubectl logs` to), answered from the ACI logs API.
//!
//! It reads only ACI; it never trusts the group name alone (names can
//! collide) and checks the group's namespace/pod tags.
//!
//! Served over TLS (the API server talks HTTPS to kubelets) with a
//! certificate and key from PEM files ([`tls_config`]) or one generated in
//! memory at start-up for the node IP and name ([`self_signed_tls_config`],
//! what deploy/ uses by default); plain HTTP otherwise (tests, local runs).

use crate::aci::translate::{group_name, group_name_in};
use crate::aci::{AciError, ContainerGroups, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Why a log request failed; the variant picks the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no container group for pod {namespace}/{pod}")]
    NoGroup { namespace: String, pod: String },
    #[error("container {container:?} not found in pod {namespace}/{pod}")]
    NoContainer {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error("ACI: {0}")]
    Aci(#[from] AciError),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::NoGroup { .. } | LogsError::NoContainer { .. } => StatusCode::NOT_FOUND,
            LogsError::Aci(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            LogsError::Aci(_) => StatusCode::BAD_GATEWAY,
        };
        (status, self.to_string()).into_response()
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct LogQuery {
    #[serde(rename = "tailLines")]
    pub tail_lines: Option<u32>,
}

/// Read one container's log.
pub async fn container_logs(
    aci: &dyn ContainerGroups,
    cluster_id: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    tail: Option<u32>,
) -> Result<String, LogsError> {
    let no_group = || LogsError::NoGroup {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    };
    // This cluster's name for the group, else the name groups had before
    // cluster hashing (still running after an upgrade).
    let mut found = None;
    for name in [
        group_name_in(cluster_id, namespace, pod),
        group_name(namespace, pod),
    ] {
        if let Some(g) = aci.get(&name).await? {
            let tag = |k: &str| g.tags.get(k).map(String::as_str);
            if tag(TAG_CLUSTER) == Some(cluster_id)
                && tag(TAG_NAMESPACE) == Some(namespace)
                && tag(TAG_POD_NAME) == Some(pod)
            {
                found = Some(name);
                break;
            }
        }
    }
    let name = found.ok_or_else(no_group)?;
    match aci.logs(&name, container, tail).await {
        Ok(text) => Ok(text),
        Err(AciError::NotFound) => Err(LogsError::NoContainer {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

async fn handler(
    State((aci, cluster_id)): State<(Arc<dyn ContainerGroups>, Arc<str>)>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<String, LogsError> {
    container_logs(
        aci.as_ref(),
        &cluster_id,
        &namespace,
        &pod,
        &container,
        q.tail_lines,
    )
    .await
}

/// The kubelet endpoint's router, for the groups of cluster `cluster_id`.
pub fn router(aci: Arc<dyn ContainerGroups>, cluster_id: &str) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(handler),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state((aci, Arc::<str>::from(cluster_id)))
}

/// A certificate or key for the kubelet endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate made in memory at start-up (`--kubelet-tls-self-signed`).
pub struct SelfSigned {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate served (DER), e.g. for a client that pins it.
    pub certificate: rustls::pki_types::CertificateDer<'static>,
}

/// A server TLS configuration with a new self-signed certificate whose
/// subject alternative names are `node_ip` (an IP SAN when it is an IP
/// address) and `node_name` (the names the API server and clients use for
/// the virtual node). The key never leaves the process; every start makes a
/// new one. The API server does not verify kubelet certificates unless
/// `--kubelet-certificate-authority` is set; then use real files instead.
pub fn self_signed_tls_config(node_ip: &str, node_name: &str) -> Result<SelfSigned, TlsError> {
    let mut params =
        rcgen::CertificateParams::new(vec![node_ip.to_string(), node_name.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let certificate = cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(SelfSigned {
        config: crate::tls::server_config(vec![certificate.clone()], key)?,
        certificate,
    })
}

/// The server TLS configuration from PEM files (a chain and its private key).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = crate::tls::read_pem_pair(cert, key).map_err(|e| TlsError::File {
        path: e.path,
        message: e.message,
    })?;
    Ok(crate::tls::server_config(chain, key)?)
}

/// Serve the kubelet endpoint over TLS on `listener` until `stop` resolves.
/// A client that fails the handshake only loses its own connection.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    aci: Arc<dyn ContainerGroups>,
    cluster_id: &str,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(aci, cluster_id);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet endpoint: accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "kubelet endpoint: TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, %peer, "kubelet endpoint: connection ended with an error");
            }
        });
    }
}

/// Serve the kubelet endpoint on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    aci: Arc<dyn ContainerGroups>,
    cluster_id: &str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(aci, cluster_id))
        .with_graceful_shutdown(stop)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::azure::{AzureConfig, AzureContainerGroups};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("spillway-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn unused_aci() -> Arc<dyn ContainerGroups> {
        // /healthz never calls ACI; the client only has to exist.
        let cfg = AzureConfig::for_emulator("http://127.0.0.1:9", "t", "sub", "rg");
        Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")))
    }

    #[tokio::test]
    async fn the_kubelet_endpoint_speaks_tls_with_the_configured_certificate() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = scratch("ok");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        let tls = tls_config(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, unused_aci(), "c", tls, async {
            let _ = stop_rx.await;
        }));

        // A client that trusts only this certificate gets an answer over TLS.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ck.cert.der().clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name =
            rustls::pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let mut stream = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_string(&mut answer),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        // Plain HTTP on the TLS port gets no HTTP answer, and the server stays up.
        let mut plain = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            plain.read_to_end(&mut raw),
        )
        .await;
        assert!(!String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

        let _ = stop_tx.send(());
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }

    /// `GET /healthz` over TLS from a client that trusts only `trusted`,
    /// asking for `name`; the answer, or why the handshake failed.
    async fn healthz_over_tls(
        addr: std::net::SocketAddr,
        trusted: &rustls::pki_types::CertificateDer<'static>,
        name: &str,
    ) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).map_err(|e| e.to_string())?;
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let mut stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_string(&mut answer),
        )
        .await;
        Ok(answer)
    }

    #[tokio::test]
    async fn the_self_signed_certificate_serves_tls_for_the_node_ip_and_name() {
        let made =
            self_signed_tls_config("127.0.0.1", "spillway-aci").unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, unused_aci(), "c", made.config, async {
            let _ = stop_rx.await;
        }));
        // The handshake verifies the certificate for both of its names.
        for name in ["127.0.0.1", "spillway-aci"] {
            let answer = healthz_over_tls(addr, &made.certificate, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
            assert!(answer.ends_with("ok"), "{name}: {answer}");
        }
        // Names it was not made for are refused.
        for name in ["127.0.0.2", "other-node"] {
            let refused = healthz_over_tls(addr, &made.certificate, name).await;
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("certificate")),
                "{name}: {refused:?}"
            );
        }
        // Each start makes a new certificate.
        let again =
            self_signed_tls_config("127.0.0.1", "spillway-aci").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(again.certificate, made.certificate);

        let _ = stop_tx.send(());
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }

    #[test]
    fn unusable_certificate_files_name_the_file() {
        let dir = scratch("bad");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, "not a key").unwrap_or_else(|e| panic!("{e}"));
        let e = tls_config(&cert, &key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("tls.crt"), "{e}");
        let missing = dir.join("missing.crt");
        let e = tls_config(&missing, &key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("missing.crt"), "{e}");
    }
}
