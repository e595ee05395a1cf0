//! The virtual node's kubelet endpoint (port 10250), as far as ACI can serve
//! it: `GET /containerLogs/{namespace}/{pod}/{container}` ([`logs`]),
//! `GET`/`POST /exec/{namespace}/{pod}/[{uid}/]{container}` (`kubectl exec`
//! over SPDY/3.1 or WebSocket, bridged to ACI's exec socket: [`exec`],
//! [`spdy`], [`exec_ws`]),
//! `GET /metrics/resource` and `GET /stats/summary` from Azure Monitor
//! ([`metrics`]), `GET /healthz`, and a 501 "not supported on ACI" for `/attach` and
//! `/portForward` ([`logs::not_supported`]).
//!
//! Served over TLS (the API server talks HTTPS to kubelets) with a
//! certificate and key from PEM files ([`tls_config`]) or one generated in
//! memory at start-up for the node IP and name ([`self_signed_tls_config`],
//! what deploy/ uses by default); plain HTTP otherwise (tests, local runs).
//! Either way through [`crate::tls`]'s accept loop: TLS handshakes and
//! request headers are bounded in time, connections in number.
//!
//! With [`Access::Checked`] every request, unknown paths and `/healthz`
//! included (the kubelet authorizes `/healthz` on this port too, as
//! `nodes/healthz` or `nodes/proxy`), is authenticated and authorized as
//! the kubelet does it ([`auth`]). With TLS, clients are asked for a
//! certificate but may send a bearer token instead.
//!
//! Adding a route: put it in [`router`] before the authorization layer;
//! [`auth::request_attributes`] derives its `nodes/<subresource>` from the
//! path as the kubelet does (`/exec`, `/attach`, `/portForward` are
//! `proxy`, `/metrics…` is `metrics`, `/stats/…` is `stats`), so it is
//! checked with no further change.

pub mod auth;
pub mod exec;
pub mod exec_ws;
pub mod logs;
pub mod metrics;
pub mod shared_reads;
pub mod spdy;

use axum::http::StatusCode;
use std::sync::Arc;

pub use crate::tls::ServeLimits;

/// How callers of the endpoint are checked.
#[derive(Debug, Clone)]
pub enum Access {
    /// Nobody is checked: plain HTTP for local runs and tests only.
    Open,
    /// Authenticated and authorized as the kubelet does ([`auth::NodeAuth`]).
    Checked(Arc<auth::NodeAuth>),
}

/// The endpoint's router: every route, then (with [`Access::Checked`]) the
/// authentication and authorization layer around all of them. `/exec`
/// starts sessions through the [`logs::LogReader`]'s ACI client with the
/// default [`exec::ExecLimits`] and metrics of its own; no resource metrics
/// (`/metrics/resource` and `/stats/summary` are 404). See [`router_with`].
pub fn router(logs: Arc<logs::LogReader>, access: Access) -> axum::Router {
    let exec = default_exec(&logs);
    router_with(logs, exec, None, access)
}

/// An exec bridge over `logs`' ACI client with the default limits and
/// metrics of its own.
fn default_exec(logs: &logs::LogReader) -> Arc<exec::ExecBridge> {
    Arc::new(exec::ExecBridge::new(
        logs.aci(),
        logs.cluster_id(),
        exec::ExecLimits::default(),
        Arc::new(crate::metrics::Metrics::new()),
    ))
}

/// [`router`] with `/metrics/resource` and `/stats/summary` served from
/// `metrics` (and the default exec bridge).
pub fn router_with_metrics(
    logs: Arc<logs::LogReader>,
    metrics: Arc<metrics::ResourceMetrics>,
    access: Access,
) -> axum::Router {
    let exec = default_exec(&logs);
    router_with(logs, exec, Some(metrics), access)
}

/// [`router`] with the given exec bridge and, when given, `/metrics/resource`
/// and `/stats/summary` served from `metrics` (authorized as `nodes/metrics`
/// and `nodes/stats`).
pub fn router_with(
    logs: Arc<logs::LogReader>,
    exec: Arc<exec::ExecBridge>,
    metrics: Option<Arc<metrics::ResourceMetrics>>,
    access: Access,
) -> axum::Router {
    let resource = match metrics {
        Some(m) => axum::Router::new()
            .route(
                "/metrics/resource",
                axum::routing::get(metrics::resource_handler),
            )
            .route(
                "/stats/summary",
                axum::routing::get(metrics::summary_handler),
            )
            .with_state(m),
        None => axum::Router::new(),
    };
    // `kubectl exec`: GET or POST, with or without the pod's uid (the
    // kubelet's routes); authorized as `nodes/proxy`.
    let exec_routes = axum::Router::new()
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::get(exec::handler).post(exec::handler),
        )
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            axum::routing::get(exec::handler).post(exec::handler),
        )
        .with_state(exec);
    let routes = axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(logs::handler),
        )
        // What ACI cannot do: a clear 501, after authorization (`proxy`).
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(logs::not_supported),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            axum::routing::any(logs::not_supported),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(logs::not_supported),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            axum::routing::any(logs::not_supported),
        )
        .with_state(logs)
        .merge(resource)
        .merge(exec_routes)
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") });
    match access {
        Access::Open => routes,
        Access::Checked(auth) => {
            routes.layer(axum::middleware::from_fn_with_state(auth, auth::require))
        }
    }
}

/// Serve `app` over TLS on `listener` until `stop` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: ServeLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::tls::serve_tls(listener, app, tls, limits, "kubelet endpoint", stop).await
}

/// Serve `app` over plain HTTP on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::tls::serve_plain(listener, app, limits, "kubelet endpoint", stop).await
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
/// Clients are asked for a certificate, not required to send one.
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
        config: crate::tls::server_config_requesting_client_certs(vec![certificate.clone()], key)?,
        certificate,
    })
}

/// The server TLS configuration from PEM files (a chain and its private
/// key); clients are asked for a certificate, not required to send one.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = crate::tls::read_pem_pair(cert, key).map_err(|e| TlsError::File {
        path: e.path,
        message: e.message,
    })?;
    Ok(crate::tls::server_config_requesting_client_certs(
        chain, key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::ContainerGroups;
    use crate::aci::azure::{AzureConfig, AzureContainerGroups};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("spillway-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn open_app() -> axum::Router {
        // /healthz never calls ACI; the client only has to exist.
        let cfg = AzureConfig::for_emulator("http://127.0.0.1:9", "t", "sub", "rg");
        let aci: Arc<dyn ContainerGroups> =
            Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
        router(
            Arc::new(logs::LogReader::new(
                aci,
                "local",
                logs::LogBudget::default(),
            )),
            Access::Open,
        )
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
        let server = tokio::spawn(serve_tls(
            listener,
            open_app(),
            tls,
            ServeLimits::default(),
            async {
                let _ = stop_rx.await;
            },
        ));

        // A client that trusts only this certificate gets an answer over TLS.
        let answer = healthz_over_tls(addr, ck.cert.der(), "localhost")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
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
        let server = tokio::spawn(serve_tls(
            listener,
            open_app(),
            made.config,
            ServeLimits::default(),
            async {
                let _ = stop_rx.await;
            },
        ));
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
