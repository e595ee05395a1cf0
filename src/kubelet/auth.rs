//! Who may call the kubelet endpoint, decided as the kubelet decides it
//! with `--anonymous-auth=false --client-ca-file=… --authentication-token-webhook
//! --authorization-mode=Webhook` (upstream pkg/kubelet/server/auth.go and
//! k8s.io/apiserver's delegating authenticator and authorizer).
//!
//! **Authentication**, first that succeeds:
//! 1. a TLS client certificate whose chain verifies against the cluster CA
//!    ([`ClientCa`]: the `kube-root-ca.crt` ConfigMap or `--kubelet-client-ca`)
//!    for client auth: user = subject CN, groups = subject O values (a
//!    certificate without a CN authenticates no one). The TLS layer only
//!    asks for the certificate ([`crate::tls::RequestClientCert`]); a chain
//!    from another CA is a 401 here, as the kubelet answers, not a failed
//!    handshake;
//! 2. an `Authorization: Bearer` token, checked with a TokenReview
//!    (authentication.k8s.io/v1, the API server's default audiences), the
//!    answer cached for 2 minutes (30 s when unauthenticated) by SHA-256 of
//!    the token.
//!
//! Every authenticated user is also in `system:authenticated`. Nobody →
//! 401 `Unauthorized` (anonymous requests are refused).
//!
//! **Authorization**: SubjectAccessReviews (authorization.k8s.io/v1) on
//! resource `nodes`, name = this node, verb from the HTTP method (GET get,
//! POST create, PUT update, PATCH patch, DELETE delete, anything else ""),
//! subresource from the path by upstream `GetRequestAttributes` with
//! `KubeletFineGrainedAuthz` (on by default since 1.33): see
//! [`request_attributes`]. Allowed when any of the subresources is;
//! decisions cached 5 minutes (allowed) / 30 s (denied). Denied → 403
//! `Forbidden (user=U, verb=V, resource=nodes, subresource(s)=[a b])`; a
//! review that cannot be made → 500 `Authorization error (…)`.
//!
//! New routes need nothing here: the middleware ([`require`]) wraps the
//! whole router, and the path decides the subresource. A path family the
//! kubelet authorizes specially goes into [`FINE_GRAINED`] or [`COARSE`].

use crate::tls::Peer;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// `user.AllAuthenticated`, added to every authenticated user.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The ConfigMap every namespace gets from the root CA publisher.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Its key holding the cluster CA bundle (PEM).
pub const ROOT_CA_KEY: &str = "ca.crt";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// Upstream's `AuthenticatedGroupAdder`.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_string());
        }
        self
    }
}

// ---------------------------------------------------------------------------
// Request attributes
// ---------------------------------------------------------------------------

/// What a request is authorized as (always resource `nodes`, this node's
/// name, API group "" and version v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub verb: &'static str,
    /// Tried in order; any one allowed is enough.
    pub subresources: Vec<&'static str>,
}

/// Checked first (fine-grained authorization), then [`COARSE`]'s answer:
/// `/pods` → `[pods proxy]`.
pub const FINE_GRAINED: &[(&str, &str)] = &[
    ("/pods", "pods"),
    ("/healthz", "healthz"),
    ("/configz", "configz"),
    ("/statusz", "statusz"),
    ("/runningpods/", "pods"),
];

/// The one coarse subresource by path; everything else is `proxy`
/// (`/containerLogs`, `/exec`, `/attach`, `/portForward`, `/run`…).
pub const COARSE: &[(&str, &str)] = &[
    ("/stats/", "stats"),
    ("/metrics", "metrics"),
    ("/logs/", "log"),
    ("/checkpoint/", "checkpoint"),
];

/// Upstream `isSubpath`: `path` itself or below it.
fn is_subpath(subpath: &str, path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    subpath == path
        || (subpath.starts_with(path) && subpath.as_bytes().get(path.len()) == Some(&b'/'))
}

/// Upstream `GetRequestAttributes` on the decoded path.
pub fn request_attributes(method: &Method, path: &str) -> RequestAttributes {
    let verb = match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut subresources = Vec::with_capacity(2);
    if let Some((_, s)) = FINE_GRAINED.iter().find(|(p, _)| is_subpath(&path, p)) {
        subresources.push(*s);
    }
    subresources.push(
        COARSE
            .iter()
            .find(|(p, _)| is_subpath(&path, p))
            .map_or("proxy", |(_, s)| *s),
    );
    RequestAttributes { verb, subresources }
}

// ---------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------

/// Why a client certificate authenticated no one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no client CA loaded yet")]
    NoCa,
    #[error("certificate: {0}")]
    Invalid(String),
    #[error("certificate has no subject CommonName")]
    NoCommonName,
}

/// A CA bundle that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("no certificate in the CA bundle")]
    Empty,
    #[error("CA bundle: {0}")]
    Parse(String),
}

struct CaBundle {
    pem: String,
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

/// The CAs client certificates must chain to; replaced in place when the
/// bundle changes (CA rotation) while connections keep being served.
#[derive(Clone, Default)]
pub struct ClientCa {
    current: Arc<RwLock<Option<Arc<CaBundle>>>>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ClientCa {
    /// None loaded: every certificate is refused until [`Self::set_pem`].
    pub fn empty() -> Self {
        Self::default()
    }

    /// Trusting the certificates of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let ca = Self::empty();
        ca.set_pem(pem)?;
        Ok(ca)
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Trust the certificates of `pem` from now on; whether that changed
    /// anything. A bundle without a usable certificate is refused and the
    /// previous one kept.
    pub fn set_pem(&self, pem: &str) -> Result<bool, CaError> {
        use rustls::pki_types::pem::PemObject;
        if self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|b| b.pem == pem)
        {
            return Ok(false);
        }
        let mut anchors = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| CaError::Parse(e.to_string()))?;
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| CaError::Parse(e.to_string()))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(CaError::Empty);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(CaBundle {
            pem: pem.to_string(),
            anchors,
        }));
        Ok(true)
    }

    /// The user of a client certificate chain (leaf first), as upstream's
    /// x509 authenticator with `CommonNameUserConversion`: the chain must
    /// verify to a trusted CA at `now` for client authentication (an
    /// extended key usage, when present, must include clientAuth).
    pub fn authenticate(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, CertError> {
        let bundle = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(CertError::NoCa)?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| CertError::Invalid("empty chain".into()))?;
        let cert =
            webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::Invalid(e.to_string()))?;
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        cert.verify_for_usage(
            algorithms,
            &bundle.anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| CertError::Invalid(e.to_string()))?;
        let (cn, orgs) = subject_cn_and_orgs(cert.subject())
            .ok_or_else(|| CertError::Invalid("unreadable subject".into()))?;
        let name = cn
            .filter(|c| !c.is_empty())
            .ok_or(CertError::NoCommonName)?;
        Ok(Identity {
            name,
            groups: orgs,
            ..Identity::default()
        })
    }
}

/// One DER TLV: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A DirectoryString value as Go's `encoding/asn1` reads it into a string.
fn der_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, NumericString, PrintableString, IA5String
        0x0c | 0x12 | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
        // T61String: Latin-1 as Go reads it
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// From a certificate's subject (the contents of its Name SEQUENCE): the
/// last CommonName and every Organization in order, as Go's
/// `pkix.Name.FillFromRDNSequence`. None if the DER is malformed.
fn subject_cn_and_orgs(mut name: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    let (mut cn, mut orgs) = (None, Vec::new());
    while !name.is_empty() {
        let (tag, mut set, rest) = der_tlv(name)?;
        if tag != 0x31 {
            return None;
        }
        name = rest;
        while !set.is_empty() {
            let (tag, atv, rest) = der_tlv(set)?;
            if tag != 0x30 {
                return None;
            }
            set = rest;
            let (tag, oid, value) = der_tlv(atv)?;
            if tag != 0x06 {
                return None;
            }
            let (vtag, v, _) = der_tlv(value)?;
            let Some(text) = der_string(vtag, v) else {
                continue;
            };
            if oid == CN {
                cn = Some(text);
            } else if oid == O {
                orgs.push(text);
            }
        }
    }
    Some((cn, orgs))
}

/// Where the client CA comes from.
#[derive(Clone)]
pub enum CaSource {
    /// A PEM file (`--kubelet-client-ca`).
    File(std::path::PathBuf),
    /// `ca.crt` of a ConfigMap (`kube-root-ca.crt` in spillway's namespace):
    /// one `get` by name, no list or watch.
    ConfigMap {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

impl std::fmt::Display for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::File(p) => write!(f, "{}", p.display()),
            CaSource::ConfigMap {
                namespace, name, ..
            } => write!(f, "ConfigMap {namespace}/{name}"),
        }
    }
}

impl CaSource {
    /// The PEM bundle now.
    pub async fn read(&self) -> Result<String, String> {
        match self {
            CaSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
            CaSource::ConfigMap {
                client,
                namespace,
                name,
            } => {
                let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                    kube::Api::namespaced(client.clone(), namespace);
                let cm = tokio::time::timeout(Duration::from_secs(10), api.get(name))
                    .await
                    .map_err(|_| format!("ConfigMap {namespace}/{name}: no answer within 10 s"))?
                    .map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
                cm.data
                    .and_then(|mut d| d.remove(ROOT_CA_KEY))
                    .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no {ROOT_CA_KEY}"))
            }
        }
    }

    /// Read once into `ca`; whether it changed.
    pub async fn load_into(&self, ca: &ClientCa) -> Result<bool, String> {
        let pem = self.read().await?;
        ca.set_pem(&pem).map_err(|e| format!("{self}: {e}"))
    }
}

/// Keep `ca` current from `source`: now, then every `every` (the kubelet
/// reloads its client CA file too). A failed read keeps the last good
/// bundle; until a first one loads, client certificates authenticate no
/// one (bearer tokens still work). Runs until the task is dropped.
pub async fn keep_client_ca_loaded(source: CaSource, ca: ClientCa, every: Duration) {
    let mut warned = false;
    loop {
        match source.load_into(&ca).await {
            Ok(true) => {
                tracing::info!(source = %source, "kubelet endpoint: client CA loaded");
                warned = false;
            }
            Ok(false) => warned = false,
            Err(e) if !warned => {
                let effect = if ca.is_loaded() {
                    "keeping the last one"
                } else {
                    "client certificates (the API server's) are refused until it loads; bearer tokens still work"
                };
                tracing::warn!(source = %source, error = %e, "kubelet endpoint: cannot read the client CA; {effect}");
                warned = true;
            }
            Err(e) => {
                tracing::debug!(source = %source, error = %e, "kubelet endpoint: cannot read the client CA")
            }
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------
// Reviews
// ---------------------------------------------------------------------------

/// The API server's answers: TokenReview and SubjectAccessReview. An
/// `Err` is a review that could not be made (not a "no").
pub trait Reviews: Send + Sync {
    /// Who `token` belongs to; None when the API server says nobody.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>>;
    /// Whether `who` may `verb` `nodes/<subresource>` named `node`.
    fn review_access<'a>(
        &'a self,
        who: &'a Identity,
        node: &'a str,
        verb: &'a str,
        subresource: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// [`Reviews`] through the API server (needs `create` on
/// `tokenreviews.authentication.k8s.io` and
/// `subjectaccessreviews.authorization.k8s.io`, what the bootstrap
/// ClusterRole `system:auth-delegator` grants).
#[derive(Clone)]
pub struct KubeReviews {
    client: kube::Client,
    timeout: Duration,
}

impl KubeReviews {
    /// Each review bounded by `timeout`.
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Reviews for KubeReviews {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>> {
        Box::pin(async move {
            use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = tokio::time::timeout(
                self.timeout,
                api.create(&kube::api::PostParams::default(), &review),
            )
            .await
            .map_err(|_| format!("TokenReview: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("TokenReview: {e}"))?;
            let Some(status) = answer.status else {
                return Ok(None);
            };
            if status.authenticated != Some(true) {
                if let Some(e) = status.error.filter(|e| !e.is_empty()) {
                    tracing::debug!(error = %e, "kubelet endpoint: token not authenticated");
                }
                return Ok(None);
            }
            let user = status.user.unwrap_or_default();
            let name = user.username.unwrap_or_default();
            if name.is_empty() {
                return Ok(None);
            }
            Ok(Some(Identity {
                name,
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }))
        })
    }

    fn review_access<'a>(
        &'a self,
        who: &'a Identity,
        node: &'a str,
        verb: &'a str,
        subresource: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            use k8s_openapi::api::authorization::v1::{
                ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
            };
            let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: non_empty(&who.name),
                    uid: non_empty(&who.uid),
                    groups: (!who.groups.is_empty()).then(|| who.groups.clone()),
                    extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: non_empty(verb),
                        version: Some("v1".into()),
                        resource: Some("nodes".into()),
                        subresource: non_empty(subresource),
                        name: non_empty(node),
                        ..ResourceAttributes::default()
                    }),
                    non_resource_attributes: None,
                },
                ..SubjectAccessReview::default()
            };
            let answer = tokio::time::timeout(
                self.timeout,
                api.create(&kube::api::PostParams::default(), &review),
            )
            .await
            .map_err(|_| format!("SubjectAccessReview: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            let status = answer.status.unwrap_or_default();
            if let Some(e) = status.evaluation_error.filter(|e| !e.is_empty()) {
                tracing::debug!(error = %e, user = %who.name, "kubelet endpoint: SubjectAccessReview evaluation error");
            }
            Ok(status.allowed && status.denied != Some(true))
        })
    }
}

// ---------------------------------------------------------------------------
// Caches
// ---------------------------------------------------------------------------

/// A map whose entries expire, holding at most `max` (the soonest to
/// expire goes first when full).
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((v, until)) if *until > now => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.max
                && let Some(first) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&first);
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

// ---------------------------------------------------------------------------
// The authenticator and authorizer
// ---------------------------------------------------------------------------

/// Cache lifetimes and review bounds; the defaults are the kubelet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `--authentication-token-webhook-cache-ttl` (2 min).
    pub token_ttl: Duration,
    /// A token the API server did not authenticate (30 s).
    pub token_ttl_unauthenticated: Duration,
    /// `--authorization-webhook-cache-authorized-ttl` (5 min).
    pub allowed_ttl: Duration,
    /// `--authorization-webhook-cache-unauthorized-ttl` (30 s).
    pub denied_ttl: Duration,
    /// Entries per cache (tokens, decisions).
    pub cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(120),
            token_ttl_unauthenticated: Duration::from_secs(30),
            allowed_ttl: Duration::from_secs(300),
            denied_ttl: Duration::from_secs(30),
            cache_entries: 4096,
        }
    }
}

/// Why a request is refused; the variant picks the status, the text is the
/// kubelet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401 `Unauthorized`.
    Unauthenticated,
    /// 403 `Forbidden (…)`.
    Forbidden(String),
    /// 500 `Authorization error (…)`.
    Error(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m).into_response(),
            Refusal::Error(m) => (StatusCode::INTERNAL_SERVER_ERROR, m).into_response(),
        }
    }
}

/// The bearer token of a request (upstream `bearertoken`): `Bearer` in any
/// case, one space, the token up to the next space.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

type DecisionKey = (Identity, &'static str, &'static str);

/// Authentication and authorization of one node's kubelet endpoint.
pub struct NodeAuth {
    node_name: String,
    ca: ClientCa,
    reviews: Arc<dyn Reviews>,
    config: AuthConfig,
    tokens: TtlCache<[u8; 32], Option<Identity>>,
    decisions: TtlCache<DecisionKey, bool>,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("node_name", &self.node_name)
            .field("ca", &self.ca)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeAuth {
    pub fn new(
        node_name: impl Into<String>,
        ca: ClientCa,
        reviews: Arc<dyn Reviews>,
        config: AuthConfig,
    ) -> Self {
        let entries = config.cache_entries;
        Self {
            node_name: node_name.into(),
            ca,
            reviews,
            config,
            tokens: TtlCache::new(entries),
            decisions: TtlCache::new(entries),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The caller: its client certificate first, then its bearer token.
    /// None → 401.
    pub async fn authenticate(
        &self,
        certificates: &[CertificateDer<'_>],
        headers: &HeaderMap,
    ) -> Option<Identity> {
        if !certificates.is_empty() {
            match self.ca.authenticate(certificates, UnixTime::now()) {
                Ok(who) => return Some(who.authenticated()),
                Err(e) => {
                    tracing::debug!(error = %e, "kubelet endpoint: client certificate not accepted")
                }
            }
        }
        let token = bearer_token(headers)?;
        let key: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        if let Some(cached) = self.tokens.get(&key, Instant::now()) {
            return cached;
        }
        match self.reviews.review_token(token).await {
            Ok(found) => {
                let found = found.map(Identity::authenticated);
                let ttl = if found.is_some() {
                    self.config.token_ttl
                } else {
                    self.config.token_ttl_unauthenticated
                };
                self.tokens.put(key, found.clone(), ttl, Instant::now());
                found
            }
            Err(e) => {
                tracing::warn!(error = %e, "kubelet endpoint: unable to authenticate the request due to an error");
                None
            }
        }
    }

    /// Whether `who` may make this request: SubjectAccessReviews on this
    /// node, any subresource of [`request_attributes`] allowed.
    pub async fn authorize(
        &self,
        who: &Identity,
        method: &Method,
        path: &str,
    ) -> Result<(), Refusal> {
        let attrs = request_attributes(method, path);
        let describe = || {
            format!(
                "user={}, verb={}, resource=nodes, subresource(s)=[{}]",
                who.name,
                attrs.verb,
                attrs.subresources.join(" ")
            )
        };
        for &subresource in &attrs.subresources {
            let key = (who.clone(), attrs.verb, subresource);
            let allowed = match self.decisions.get(&key, Instant::now()) {
                Some(a) => a,
                None => match self
                    .reviews
                    .review_access(who, &self.node_name, attrs.verb, subresource)
                    .await
                {
                    Ok(a) => {
                        let ttl = if a {
                            self.config.allowed_ttl
                        } else {
                            self.config.denied_ttl
                        };
                        self.decisions.put(key, a, ttl, Instant::now());
                        a
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kubelet endpoint: authorization error ({})", describe());
                        return Err(Refusal::Error(format!(
                            "Authorization error ({})",
                            describe()
                        )));
                    }
                },
            };
            if allowed {
                return Ok(());
            }
        }
        tracing::debug!("kubelet endpoint: forbidden ({})", describe());
        Err(Refusal::Forbidden(format!("Forbidden ({})", describe())))
    }
}

/// Axum middleware: authenticate and authorize every request before its
/// route (unknown paths included) or answer 401/403/500. The caller's
/// [`Identity`] is put in the request's extensions for the handler.
pub async fn require(State(auth): State<Arc<NodeAuth>>, mut req: Request, next: Next) -> Response {
    let certificates = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.certificates.clone());
    let certificates = certificates.as_deref().unwrap_or(&[]);
    let Some(who) = auth.authenticate(certificates, req.headers()).await else {
        return Refusal::Unauthenticated.into_response();
    };
    if let Err(refused) = auth.authorize(&who, req.method(), req.uri().path()).await {
        return refused.into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subresources_follow_the_kubelet() {
        let cases: &[(&str, &[&str])] = &[
            ("/containerLogs/ns/pod/c", &["proxy"]),
            ("/exec/ns/pod/c", &["proxy"]),
            ("/attach/ns/pod/c", &["proxy"]),
            ("/portForward/ns/pod", &["proxy"]),
            ("/run/ns/pod/c", &["proxy"]),
            ("/debug/pprof/heap", &["proxy"]),
            ("/logs/", &["log"]),
            ("/logs/kern.log", &["log"]),
            ("/logs", &["log"]),
            ("/logsfoo", &["proxy"]),
            ("/stats/", &["stats"]),
            ("/stats/summary", &["stats"]),
            ("/metrics", &["metrics"]),
            ("/metrics/cadvisor", &["metrics"]),
            ("/metrics/resource", &["metrics"]),
            ("/metricsx", &["proxy"]),
            ("/checkpoint/ns/pod/c", &["checkpoint"]),
            ("/healthz", &["healthz", "proxy"]),
            ("/healthz/ping", &["healthz", "proxy"]),
            ("/pods", &["pods", "proxy"]),
            ("/pods/", &["pods", "proxy"]),
            ("/runningpods/", &["pods", "proxy"]),
            ("/configz", &["configz", "proxy"]),
            ("/statusz", &["statusz", "proxy"]),
            ("/spec/", &["proxy"]),
            ("/%6cogs/x", &["log"]),
        ];
        for (path, want) in cases {
            let got = request_attributes(&Method::GET, path);
            assert_eq!(got.subresources, *want, "{path}");
            assert_eq!(got.verb, "get");
        }
        for (method, verb) in [
            (Method::POST, "create"),
            (Method::PUT, "update"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
            (Method::HEAD, ""),
            (Method::OPTIONS, ""),
        ] {
            assert_eq!(request_attributes(&method, "/exec/a/b/c").verb, verb);
        }
    }

    #[test]
    fn a_bearer_token_is_the_second_word_of_a_bearer_header() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::AUTHORIZATION,
                v.parse().unwrap_or_else(|e| panic!("{e}")),
            );
            m
        };
        assert_eq!(bearer_token(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&h("bearer abc extra")), Some("abc"));
        assert_eq!(bearer_token(&h("  BEARER abc  ")), Some("abc"));
        assert_eq!(bearer_token(&h("Basic abc")), None);
        assert_eq!(bearer_token(&h("Bearer")), None);
        assert_eq!(bearer_token(&h("Bearer  abc")), None, "empty token");
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    struct Pki {
        ca_pem: String,
        ca: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Pki {
        let mut p =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = p.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        Pki {
            ca_pem: cert.pem(),
            ca: cert,
            key,
        }
    }

    fn client(
        pki: &Pki,
        cn: Option<&str>,
        orgs: &[&str],
        eku: rcgen::ExtendedKeyUsagePurpose,
    ) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type: a second Organization
        // goes in as the same OID spelled as a custom type.
        assert!(orgs.len() <= 2, "at most two organizations");
        for (i, o) in orgs.iter().enumerate() {
            let ty = if i == 0 {
                rcgen::DnType::OrganizationName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
            };
            p.distinguished_name.push(ty, *o);
        }
        p.extended_key_usages = vec![eku];
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        p.signed_by(&key, &pki.ca, &pki.key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .clone()
    }

    #[test]
    fn a_client_certificate_is_its_common_name_in_its_organizations() {
        let cluster = ca("cluster-ca");
        let trusted = ClientCa::from_pem(&cluster.ca_pem).unwrap_or_else(|e| panic!("{e}"));
        let cert = client(
            &cluster,
            Some("kube-apiserver-kubelet-client"),
            &["system:masters"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let who = trusted
            .authenticate(&[cert], UnixTime::now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(who.name, "kube-apiserver-kubelet-client");
        assert_eq!(who.groups, vec!["system:masters".to_string()]);

        let two = client(
            &cluster,
            Some("ops"),
            &["a", "b"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let who = trusted.authenticate(&[two], UnixTime::now());
        assert_eq!(
            who.map(|w| w.groups),
            Ok(vec!["a".to_string(), "b".to_string()])
        );

        // Another CA, a server-only certificate, no CN, no CA loaded: nobody.
        let other = ca("other-ca");
        let foreign = client(
            &other,
            Some("mallory"),
            &["system:masters"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert!(matches!(
            trusted.authenticate(std::slice::from_ref(&foreign), UnixTime::now()),
            Err(CertError::Invalid(_))
        ));
        let server_only = client(
            &cluster,
            Some("web"),
            &[],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        assert!(matches!(
            trusted.authenticate(&[server_only], UnixTime::now()),
            Err(CertError::Invalid(_))
        ));
        let nameless = client(
            &cluster,
            None,
            &["system:masters"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert_eq!(
            trusted.authenticate(&[nameless], UnixTime::now()),
            Err(CertError::NoCommonName)
        );
        assert_eq!(
            ClientCa::empty().authenticate(std::slice::from_ref(&foreign), UnixTime::now()),
            Err(CertError::NoCa)
        );

        // A rotated bundle trusting both CAs accepts both.
        let both = format!("{}{}", cluster.ca_pem, other.ca_pem);
        assert_eq!(trusted.set_pem(&both), Ok(true));
        assert_eq!(trusted.set_pem(&both), Ok(false), "unchanged");
        assert!(trusted.authenticate(&[foreign], UnixTime::now()).is_ok());
        assert_eq!(trusted.set_pem("junk"), Err(CaError::Empty));
        assert!(trusted.is_loaded(), "a bad bundle keeps the last good one");
    }

    #[test]
    fn subject_strings_decode_as_go_reads_them() {
        assert_eq!(der_string(0x13, b"abc"), Some("abc".into()));
        assert_eq!(der_string(0x14, &[0x61, 0xe9]), Some("a\u{e9}".into()));
        assert_eq!(der_string(0x1e, &[0, 0x61, 0, 0x62]), Some("ab".into()));
        assert_eq!(der_string(0x04, b"x"), None, "OCTET STRING is not a string");
        assert_eq!(der_tlv(&[0x30, 0x82, 0x00]), None, "truncated length");
        assert_eq!(der_tlv(&[0x30, 0x05, 0x00]), None, "short contents");
        assert_eq!(subject_cn_and_orgs(&[0x30, 0x00]), None, "not a SET");
    }

    /// Counts reviews; tokens "good-<user>" are that user, groups from the
    /// `allowed` map say which (user, subresource) pairs are allowed.
    #[derive(Default)]
    struct FakeReviews {
        token_calls: Mutex<u32>,
        access_calls: Mutex<Vec<String>>,
        allowed: Vec<(String, &'static str)>,
        broken: bool,
    }

    impl Reviews for FakeReviews {
        fn review_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<Identity>, String>> {
            Box::pin(async move {
                *self.token_calls.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                if self.broken {
                    return Err("down".into());
                }
                Ok(token.strip_prefix("good-").map(|u| Identity {
                    name: u.to_string(),
                    ..Identity::default()
                }))
            })
        }

        fn review_access<'a>(
            &'a self,
            who: &'a Identity,
            node: &'a str,
            verb: &'a str,
            subresource: &'a str,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move {
                self.access_calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{} {verb} nodes/{subresource} {node}", who.name));
                if self.broken {
                    return Err("down".into());
                }
                Ok(self
                    .allowed
                    .iter()
                    .any(|(u, s)| *u == who.name && *s == subresource))
            })
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        m
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reviewed_once_per_cache_lifetime() {
        let reviews = Arc::new(FakeReviews::default());
        let auth = NodeAuth::new(
            "vn",
            ClientCa::empty(),
            reviews.clone(),
            AuthConfig::default(),
        );
        let calls = || {
            *reviews
                .token_calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        let who = auth.authenticate(&[], &bearer("good-ann")).await;
        assert_eq!(who.as_ref().map(|w| w.name.as_str()), Some("ann"));
        assert_eq!(
            who.map(|w| w.groups),
            Some(vec![AUTHENTICATED_GROUP.to_string()])
        );
        assert!(auth.authenticate(&[], &bearer("good-ann")).await.is_some());
        assert_eq!(calls(), 1, "cached");
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(auth.authenticate(&[], &bearer("good-ann")).await.is_some());
        assert_eq!(calls(), 2, "expired after 2 minutes");

        assert!(auth.authenticate(&[], &bearer("bad")).await.is_none());
        assert!(auth.authenticate(&[], &bearer("bad")).await.is_none());
        assert_eq!(calls(), 3, "a refusal is cached too");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(auth.authenticate(&[], &bearer("bad")).await.is_none());
        assert_eq!(calls(), 4, "for 30 s");

        assert!(auth.authenticate(&[], &HeaderMap::new()).await.is_none());
        assert_eq!(calls(), 4, "no token, no review");
    }

    #[tokio::test]
    async fn decisions_try_each_subresource_and_say_what_was_refused() {
        let reviews = Arc::new(FakeReviews {
            allowed: vec![("ops".into(), "healthz"), ("admin".into(), "proxy")],
            ..FakeReviews::default()
        });
        let auth = NodeAuth::new(
            "vn",
            ClientCa::empty(),
            reviews.clone(),
            AuthConfig::default(),
        );
        let user = |n: &str| Identity {
            name: n.into(),
            ..Identity::default()
        };
        assert_eq!(
            auth.authorize(&user("ops"), &Method::GET, "/healthz").await,
            Ok(())
        );
        assert_eq!(
            auth.authorize(&user("ops"), &Method::GET, "/containerLogs/a/b/c")
                .await,
            Err(Refusal::Forbidden(
                "Forbidden (user=ops, verb=get, resource=nodes, subresource(s)=[proxy])".into()
            ))
        );
        assert_eq!(
            auth.authorize(&user("nobody"), &Method::POST, "/pods")
                .await,
            Err(Refusal::Forbidden(
                "Forbidden (user=nobody, verb=create, resource=nodes, subresource(s)=[pods proxy])"
                    .into()
            ))
        );
        assert_eq!(
            auth.authorize(&user("admin"), &Method::GET, "/healthz")
                .await,
            Ok(())
        );
        // Cached: asking again reviews nothing new.
        let before = reviews
            .access_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        assert_eq!(
            auth.authorize(&user("admin"), &Method::GET, "/healthz")
                .await,
            Ok(())
        );
        assert!(
            auth.authorize(&user("ops"), &Method::GET, "/containerLogs/a/b/c")
                .await
                .is_err()
        );
        let calls = reviews
            .access_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert_eq!(calls.len(), before);
        assert!(
            calls.contains(&"admin get nodes/healthz vn".to_string()),
            "{calls:?}"
        );
        assert!(
            calls.contains(&"admin get nodes/proxy vn".to_string()),
            "{calls:?}"
        );

        let broken = NodeAuth::new(
            "vn",
            ClientCa::empty(),
            Arc::new(FakeReviews {
                broken: true,
                ..FakeReviews::default()
            }),
            AuthConfig::default(),
        );
        assert_eq!(
            broken
                .authorize(&user("ops"), &Method::GET, "/containerLogs/a/b/c")
                .await,
            Err(Refusal::Error(
                "Authorization error (user=ops, verb=get, resource=nodes, subresource(s)=[proxy])"
                    .into()
            ))
        );
        assert!(
            broken.authenticate(&[], &bearer("good-x")).await.is_none(),
            "an error is a 401"
        );
    }

    #[test]
    fn a_full_cache_drops_what_expires_first() {
        let cache: TtlCache<u32, u32> = TtlCache::new(2);
        let t0 = Instant::now();
        cache.put(1, 1, Duration::from_secs(10), t0);
        cache.put(2, 2, Duration::from_secs(20), t0);
        cache.put(3, 3, Duration::from_secs(30), t0);
        assert_eq!(cache.get(&1, t0), None);
        assert_eq!(cache.get(&2, t0), Some(2));
        assert_eq!(cache.get(&3, t0), Some(3));
        assert_eq!(cache.get(&3, t0 + Duration::from_secs(30)), None);
        cache.put(4, 4, Duration::ZERO, t0);
        assert_eq!(cache.get(&4, t0), None, "a zero TTL caches nothing");
    }
}
