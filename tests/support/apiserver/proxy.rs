//! What kube-apiserver forwards to kubelets: `GET pods/{name}/log`,
//! `pods/{name}/exec` (upgrades, see [`exec`]; WebSocket v5 is translated
//! in `translator.rs`) and `nodes/{name}/proxy/{path}`, with the rules of
//! `pkg/registry/core/pod/strategy.go` (`LogLocation`) and
//! `pkg/registry/core/pod/rest/log.go`:
//!
//! - the container defaults to the pod's only one; with several, 400
//!   `a container name must be specified for pod P, choose one of: [a b]`
//!   (plus ` or one of the init containers: [i]`); an unknown one, 400
//!   `container C is not valid for pod P`;
//! - PodLogOptions are validated (`ValidatePodLogOptions`: at most one of
//!   sinceSeconds/sinceTime, tailLines ≥ 0, limitBytes and sinceSeconds
//!   ≥ 1) — 422 Invalid otherwise;
//! - a pod not yet on a node has an empty log (200, no body);
//! - the kubelet is reached at the node's address of the first preferred
//!   type (`--kubelet-preferred-address-types`, upstream default
//!   Hostname, InternalDNS, InternalIP, ExternalDNS, ExternalIP) and its
//!   `status.daemonEndpoints.kubeletEndpoint.Port`, over HTTPS with the
//!   API server's kubelet client certificate, without verifying the
//!   kubelet's serving certificate (no `--kubelet-certificate-authority`);
//! - the body is streamed through as it comes (`kubectl logs -f`); a
//!   kubelet error becomes a Status with the kubelet's code and its body as
//!   the message; a kubelet that cannot be reached is a 500 naming the URL.

use super::pki::ClientCertificate;
use super::{ApiError, Shared, lookup};
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// kube-apiserver's default `--kubelet-preferred-address-types`.
pub const DEFAULT_ADDRESS_TYPES: &[&str] = &[
    "Hostname",
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
];

/// A request kube-apiserver would forward to a kubelet.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `GET /api/v1/namespaces/{ns}/pods/{name}/log`
    PodLog { namespace: String, pod: String },
    /// `/api/v1/nodes/{name}/proxy/{rest}`
    NodeProxy { node: String, rest: String },
    /// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec` (an upgrade)
    PodExec { namespace: String, pod: String },
}

impl Target {
    pub fn of(path: &str) -> Option<Target> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["api", "v1", "namespaces", ns, "pods", pod, "log"] => Some(Target::PodLog {
                namespace: ns.to_string(),
                pod: pod.to_string(),
            }),
            ["api", "v1", "namespaces", ns, "pods", pod, "exec"] => Some(Target::PodExec {
                namespace: ns.to_string(),
                pod: pod.to_string(),
            }),
            ["api", "v1", "nodes", node, "proxy", rest @ ..] => Some(Target::NodeProxy {
                node: node.to_string(),
                rest: rest.join("/"),
            }),
            _ => None,
        }
    }
}

/// Any server certificate: kube-apiserver without
/// `--kubelet-certificate-authority` does not verify kubelets (the
/// handshake signatures are still checked, with this provider's algorithms).
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What kube-apiserver reaches kubelets with: its kubelet client
/// certificate (`--kubelet-client-certificate`), trusting any serving
/// certificate; the TLS configuration (upgrades) and an HTTPS client over it.
pub struct KubeletClient {
    pub tls: Arc<rustls::ClientConfig>,
    pub http: reqwest::Client,
}

impl KubeletClient {
    pub fn new(cert: &ClientCertificate) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = cert.rustls_pair();
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(KubeletClient {
            tls: Arc::new(tls),
            http,
        })
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError::bad_request(message)
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// `LogLocation`'s and `streamLocation`'s choice of container (logs, exec).
fn container_for(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod.pointer("/spec/containers"));
    let init = names(pod.pointer("/spec/initContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut m = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    m.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(bad_request(m))
            }
        },
    }
}

fn int(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| bad_request(format!("{key}: Invalid value: \"{v}\": not an integer")))
        })
        .transpose()
}

/// `ValidatePodLogOptions`, and the kubelet query kube-apiserver builds
/// from the options (only these parameters are forwarded).
fn log_query(name: &str, q: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    let mut causes = Vec::new();
    let tail = int(q, "tailLines")?;
    let limit = int(q, "limitBytes")?;
    let since = int(q, "sinceSeconds")?;
    if tail.is_some_and(|t| t < 0) {
        causes.push((
            "tailLines",
            "must be greater than or equal to 0".to_string(),
        ));
    }
    if limit.is_some_and(|l| l < 1) {
        causes.push(("limitBytes", "must be greater than 0".to_string()));
    }
    if since.is_some_and(|s| s < 1) {
        causes.push(("sinceSeconds", "must be greater than 0".to_string()));
    }
    if since.is_some() && q.contains_key("sinceTime") {
        causes.push((
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified".to_string(),
        ));
    }
    if !causes.is_empty() {
        let detail: Vec<String> = causes
            .iter()
            .map(|(f, m)| {
                if f.is_empty() {
                    format!("Forbidden: {m}")
                } else {
                    format!("{f}: Invalid value: {m}")
                }
            })
            .collect();
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("PodLogOptions \"{name}\" is invalid: {}", detail.join(", ")),
        ));
    }
    let truthy = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let mut out = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        if truthy(flag) {
            out.push((flag.to_string(), "true".to_string()));
        }
    }
    for (key, v) in [
        ("sinceSeconds", since),
        ("tailLines", tail),
        ("limitBytes", limit),
    ] {
        if let Some(v) = v {
            out.push((key.to_string(), v.to_string()));
        }
    }
    if let Some(t) = q.get("sinceTime") {
        out.push(("sinceTime".to_string(), t.clone()));
    }
    Ok(out)
}

/// `https://{address}:{port}` of a node's kubelet, by the preferred
/// address types.
fn kubelet_base(node: &Value, name: &str, preferred: &[String]) -> Result<String, ApiError> {
    let addresses: Vec<(&str, &str)> = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["type"].as_str()?, a["address"].as_str()?)))
        .collect();
    let address = preferred
        .iter()
        .find_map(|t| addresses.iter().find(|(at, _)| at == t).map(|(_, a)| *a))
        .ok_or_else(|| {
            ApiError::new(
                500,
                "InternalError",
                format!(
                    "Internal error occurred: no preferred addresses found; known addresses: {addresses:?}"
                ),
            )
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: node {name} has no kubelet endpoint port"),
            )
        })?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    Ok(format!("https://{host}:{port}"))
}

fn node_object(shared: &Shared, name: &str) -> Result<Value, ApiError> {
    let rt = lookup("", "v1", "nodes").ok_or_else(ApiError::path_not_found)?;
    shared
        .store()
        .get(rt, "", name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// Forward `target` to its kubelet and stream the answer back.
pub async fn forward(
    shared: &Arc<Shared>,
    target: Target,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let query: HashMap<String, String> =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(q)| q)
            .unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let method = &parts.method;
    let url = match &target {
        Target::PodLog { namespace, pod } => {
            if method != axum::http::Method::GET {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            let rt = lookup("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
            let obj = shared
                .store()
                .get(rt, namespace, pod)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, pod))?;
            let container = container_for(&obj, pod, query.get("container").map(String::as_str))?;
            let params = log_query(pod, &query)?;
            let Some(node) = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                return Ok(text_response(StatusCode::OK, Body::empty()));
            };
            let base = kubelet_base(
                &node_object(shared, node)?,
                node,
                &shared.config.kubelet_address_types,
            )?;
            let mut url = reqwest::Url::parse(&format!(
                "{base}/containerLogs/{namespace}/{pod}/{container}"
            ))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
            if !params.is_empty() {
                url.query_pairs_mut().extend_pairs(params);
            }
            url
        }
        Target::PodExec { namespace, pod } => return exec(shared, namespace, pod, parts).await,
        Target::NodeProxy { node, rest } => {
            let base = kubelet_base(
                &node_object(shared, node)?,
                node,
                &shared.config.kubelet_address_types,
            )?;
            let q = if raw_query.is_empty() {
                String::new()
            } else {
                format!("?{raw_query}")
            };
            reqwest::Url::parse(&format!("{base}/{rest}{q}"))
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        }
    };
    let client = shared.kubelet()?.http.clone();
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let resp = client
        .request(method, url.clone())
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("Get \"{url}\": {}", describe(&e)),
            )
        })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if !status.is_success() {
        let code = status.as_u16();
        let body = resp.text().await.unwrap_or_default();
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            _ => "InternalError",
        };
        return Err(ApiError::new(code, reason, body.trim().to_string()));
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    // Every chunk is forwarded as it arrives (`kubectl logs -f`).
    let stream = futures::stream::unfold(resp, |mut r| async move {
        match r.chunk().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), r)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), r)),
        }
    });
    let mut response = text_response(status, Body::from_stream(stream));
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

fn text_response(status: StatusCode, body: Body) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The kubelet's `/exec` query kube-apiserver builds (`streamParams`):
/// `input`/`output`/`error`/`tty` = `1` from the client's
/// `stdin`/`stdout`/`stderr`/`tty` = `true`, and every `command`.
fn exec_query(raw_query: &str) -> (Vec<(String, String)>, Option<String>) {
    let url = reqwest::Url::parse(&format!("http://x/?{raw_query}"));
    let pairs: Vec<(String, String)> = url
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let truthy = |k: &str| {
        pairs
            .iter()
            .any(|(pk, v)| pk == k && (v == "true" || v == "1"))
    };
    let mut out = Vec::new();
    for (from, to) in [
        ("stdin", "input"),
        ("stdout", "output"),
        ("stderr", "error"),
        ("tty", "tty"),
    ] {
        if truthy(from) {
            out.push((to.to_string(), "1".to_string()));
        }
    }
    for (k, v) in &pairs {
        if k == "command" {
            out.push(("command".to_string(), v.clone()));
        }
    }
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    (out, container)
}

/// The kubelet's `/exec` URL for `pods/{pod}/exec` (`ExecLocation`): the
/// container (`container_for`), the pod's node and its kubelet address,
/// the query kube-apiserver builds (`exec_query`).
fn exec_location(
    shared: &Arc<Shared>,
    namespace: &str,
    pod: &str,
    raw_query: &str,
) -> Result<(reqwest::Url, ExecOptions), ApiError> {
    let rt = lookup("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
    let obj = shared
        .store()
        .get(rt, namespace, pod)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, pod))?;
    let (params, asked) = exec_query(raw_query);
    let container = container_for(&obj, pod, asked.as_deref())?;
    let node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request(format!("pod {pod} does not have a host assigned")))?
        .to_string();
    let base = kubelet_base(
        &node_object(shared, &node)?,
        &node,
        &shared.config.kubelet_address_types,
    )?;
    let mut url = reqwest::Url::parse(&format!("{base}/exec/{namespace}/{pod}/{container}"))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let on = |k: &str| params.iter().any(|(pk, v)| pk == k && v == "1");
    let options = ExecOptions {
        stdin: on("input"),
        stdout: on("output"),
        stderr: on("error"),
        tty: on("tty"),
    };
    url.query_pairs_mut().extend_pairs(params);
    Ok((url, options))
}

/// The streams a `pods/exec` request asks for (`PodExecOptions`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

fn internal(m: String) -> ApiError {
    ApiError::new(500, "InternalError", m)
}

/// A TLS connection to the kubelet of `url`, with the API server's kubelet
/// client certificate.
pub(super) async fn dial_kubelet(
    shared: &Arc<Shared>,
    url: &reqwest::Url,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| internal(format!("error dialing backend: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(shared.kubelet()?.tls.clone());
    let server_name =
        rustls::pki_types::ServerName::try_from(host).map_err(|e| internal(e.to_string()))?;
    connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| internal(format!("error dialing backend: {e}")))
}

/// An HTTP/1.1 answer head read off a raw connection.
pub(super) struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes that came after the head.
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body after the head, as long as `Content-Length` says (bounded).
    pub async fn body<R: tokio::io::AsyncRead + Unpin>(&self, conn: &mut R) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let length = self
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(1 << 20);
        let mut body = self.rest.clone();
        let read = async {
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
        body.truncate(length);
        body
    }
}

/// The answer head to a request written on `conn` (bounded in size and time).
pub(super) async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    conn: &mut R,
) -> Result<Head, ApiError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(internal("kubelet answer head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut chunk))
            .await
            .map_err(|_| internal("kubelet did not answer the upgrade".into()))?
            .map_err(|e| internal(e.to_string()))?;
        if n == 0 {
            return Err(internal("kubelet closed the connection".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| internal(format!("not HTTP: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Head {
        status,
        headers,
        rest: buf[head_end..].to_vec(),
    })
}

/// `Connection` names `upgrade` (apimachinery `httpstream.IsUpgradeRequest`).
fn is_upgrade_request(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Headers the API server does not pass on to the kubelet: the hop's own,
/// and the caller's credentials (the authentication filter removes
/// `Authorization`, impersonation is consumed).
fn forwarded(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(matches!(
        name.as_str(),
        "host" | "authorization" | "content-length" | "transfer-encoding"
    ) || name.starts_with("impersonate-"))
}

/// `kubectl exec` and any other `pods/exec` client, as kube-apiserver does
/// it (`ExecREST.Connect`, `pkg/registry/core/pod/rest/subresources.go`):
/// resolve the container and the node's kubelet; then
/// - a WebSocket request offering `v5.channel.k8s.io` (kubectl 1.30+,
///   feature `TranslateStreamCloseWebsocketRequests`, on by default) is
///   served here and translated to SPDY towards the kubelet
///   ([`super::translator`]);
/// - any other upgrade, SPDY/3.1 or WebSocket (v4 and older: kube-rs, the
///   Python client), is proxied as UpgradeAwareHandler does: the request
///   goes to the kubelet with the client's method and headers (not its
///   credentials; the API server's client certificate instead), and when
///   the kubelet switches protocols the 101 with its headers is passed back
///   and the two connections spliced; any other kubelet answer is passed
///   back as it is;
/// - a request that is no upgrade is a 400 "Upgrade request required".
pub async fn exec(
    shared: &Arc<Shared>,
    namespace: &str,
    pod: &str,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    use tokio::io::AsyncWriteExt;
    let (url, options) = exec_location(
        shared,
        namespace,
        pod,
        parts.uri.query().unwrap_or_default(),
    )?;
    if !is_upgrade_request(&parts.headers) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    if super::translator::wants_translation(&parts.headers) {
        return super::translator::serve(shared, url, options, parts);
    }
    let mut tls = dial_kubelet(shared, &url).await?;
    let host = url.host_str().unwrap_or_default();
    let port = url.port().unwrap_or(443);
    let mut request = format!(
        "{} {}?{} HTTP/1.1\r\nHost: {host}:{port}\r\n",
        parts.method,
        url.path(),
        url.query().unwrap_or_default()
    );
    if parts.method != axum::http::Method::GET {
        request.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in &parts.headers {
        if forwarded(name.as_str())
            && let Ok(v) = value.to_str()
        {
            request.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| internal(e.to_string()))?;
    let head = read_head(&mut tls).await?;
    let status = head.status;
    let mut builder = axum::http::Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in &head.headers {
        let skip = status != 101
            && (k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding")
                || k.eq_ignore_ascii_case("connection"));
        if !skip {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    if status != 101 {
        // Not switched: pass the kubelet's answer back (its body, bounded).
        let body = head.body(&mut tls).await;
        return builder
            .body(Body::from(body))
            .map_err(|e| internal(e.to_string()));
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| internal("the client connection cannot be upgraded".into()))?;
    let rest = head.rest;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut tls).await;
    });
    builder
        .body(Body::empty())
        .map_err(|e| internal(e.to_string()))
}
