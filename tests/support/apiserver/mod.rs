//! An in-process Kubernetes API server for integration tests.
//!
//! It speaks the real REST/JSON wire format on `127.0.0.1:0`, so
//! `kube::Client` (and everything built on it: `Api<K>`, `watcher`,
//! `reflector`) talks to it unchanged over plain HTTP.
//!
//! Served: core/v1 pods (+ `status`, `binding`, `eviction`), nodes (+
//! `status`), events, configmaps, secrets, namespaces, serviceaccounts (+
//! `token`); coordination/v1 leases; policy/v1 poddisruptionbudgets (+
//! `status`); apps/v1 replicasets (+ `status`; validated in `apps.rs`,
//! no controller runs them); events.k8s.io/v1 events (stored apart from core/v1 events);
//! rbac.authorization.k8s.io/v1 roles, rolebindings, clusterroles,
//! clusterrolebindings; admissionregistration.k8s.io/v1
//! mutatingwebhookconfigurations, whose webhooks are called on pod creates
//! (`webhooks.rs`); authentication.k8s.io/v1 tokenreviews and
//! authorization.k8s.io/v1 subjectaccessreviews (create only, answered from
//! this server's tokens and RBAC: `reviews.rs`). A cluster CA and client
//! certificates it signs, the API server's kubelet client certificate
//! among them, are made on demand for kubelet endpoints (`pki.rs`). Metadata-only requests
//! (`Accept: ...;as=PartialObjectMetadata[List]`) and streaming-list watches
//! (`sendInitialEvents=true`) are served too.
//!
//! Semantics follow kube-apiserver where it matters to a controller (see
//! `store.rs` and `watch.rs`), including Pod Security Admission per
//! namespace label (`psa.rs`) and, for requests with a bearer token,
//! authentication and RBAC authorization (`rbac.rs`). Known simplifications, on purpose:
//! - strategic merge patch and server-side apply use a merge-key-table
//!   approximation (see `patch.rs`); apply has no field ownership/conflicts;
//! - list ignores `resourceVersion`/`resourceVersionMatch` and always serves
//!   the current state (continue tokens pin the first page's rv);
//! - `dryRun` is refused with 400 rather than silently applied;
//! - namespaces are not required to exist and deleting one does not cascade;
//! - PDB checks during eviction compute the budget from the pods; a built-in
//!   stand-in for the disruption controller keeps PDB status current after
//!   every pod/PDB write (`Config::disruption_controller`, on by default;
//!   `sync_disruption_budgets()` forces it when off);
//! - pod admission beyond Pod Security is limited to a few spec defaults (schedulerName,
//!   terminationGracePeriodSeconds, restartPolicy, dnsPolicy, priority,
//!   enableServiceLinks) and status reset to Pending on create; no QoS class,
//!   no default tolerations, no container defaults; `managedFields` are not
//!   kept; the eviction does not write `disruptedPods` into PDB status;
//! - graceful pod deletion: unbound or terminal pods and `grace=0` go at once;
//!   bound pods get `deletionTimestamp` and are removed by a tokio timer after
//!   the grace period ([`PodDeletion::AfterGracePeriod`], default) or left for
//!   a kubelet-like actor to delete with grace 0 ([`PodDeletion::Kubelet`]).
//!
//! It must not grow spillway logic: it is the cluster, not the controller.

mod apps;
mod discovery;
mod patch;
mod pki;
mod pod_dns;
mod proxy;
mod psa;
mod rbac;
mod resources;
mod reviews;
mod selectors;
mod services;
mod status;
mod store;
mod translator;
mod watch;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use pki::{ClientCertificate, KUBELET_CLIENT_CN, KUBELET_CLIENT_ORG};
pub use proxy::AnyServerCert;
pub use rbac::{ExercisedRule, GrantedPermission, RoleId};
pub use status::ApiError;
pub use store::Budget;

use resources::{ResourceType, Route, lookup, lookup_kind, parse_path};
use selectors::{FieldSelector, LabelSelector};
use status::success_status;
use store::{DeleteOptions, Deleted, PatchKind, Store, meta_str};

/// Who finishes a graceful pod deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDeletion {
    /// A timer removes the pod when its grace period ends.
    AfterGracePeriod,
    /// The pod stays terminating until someone deletes it with grace 0 (as
    /// a kubelet, or spillway's virtual-node provider, would).
    Kubelet,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Changes retained for watches; older resourceVersions get 410.
    pub history_limit: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    pub pod_deletion: PodDeletion,
    /// Request bodies above this get 413 (the real limit is 3 MiB).
    pub max_body_bytes: usize,
    /// Keep PDB status (currentHealthy, desiredHealthy, expectedPods,
    /// disruptionsAllowed) current after every pod/PDB write, as the
    /// disruption controller does in a real cluster.
    pub disruption_controller: bool,
    /// Refuse requests without a bearer token (401). Off: a request without
    /// a token is an unrestricted admin, as every existing test expects; a
    /// request with a token is always authenticated and RBAC-authorized.
    pub require_auth: bool,
    /// `--kubelet-preferred-address-types`: which node address `pods/log`
    /// and `nodes/proxy` reach the kubelet at (`proxy.rs`).
    pub kubelet_address_types: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
            pod_deletion: PodDeletion::AfterGracePeriod,
            max_body_bytes: 3 * 1024 * 1024,
            disruption_controller: true,
            require_auth: false,
            kubelet_address_types: proxy::DEFAULT_ADDRESS_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Builds a [`TestApiServer`] with non-default settings.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    pub fn history_limit(mut self, n: usize) -> Self {
        self.config.history_limit = n;
        self
    }

    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.config.bookmark_interval = d;
        self
    }

    pub fn pod_deletion(mut self, mode: PodDeletion) -> Self {
        self.config.pod_deletion = mode;
        self
    }

    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.config.max_body_bytes = n;
        self
    }

    pub fn disruption_controller(mut self, on: bool) -> Self {
        self.config.disruption_controller = on;
        self
    }

    pub fn require_auth(mut self, on: bool) -> Self {
        self.config.require_auth = on;
        self
    }

    pub async fn start(self) -> TestApiServer {
        TestApiServer::start_with(self.config).await
    }
}

/// One request as received, for asserting what a client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    pub path: String,
    /// Raw query string (kube-rs sends a leading `&`), "" if none.
    pub query: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// Request body as (lossy) UTF-8.
    pub body: String,
}

impl RequestRecord {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        let uri = format!("/?{}", self.query).parse().ok()?;
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&uri).ok()?;
        q.get(key).cloned()
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

/// An injected failure or delay for requests to a path.
#[derive(Debug, Clone)]
pub struct Fault {
    path: String,
    method: Option<Method>,
    times: usize,
    status: Option<u16>,
    latency: Duration,
    retry_after: Option<u64>,
    /// Some(true): only watch requests; Some(false): only non-watch ones.
    watch: Option<bool>,
}

impl Fault {
    /// The next request to `path` gets `code` with a `Status` body. A path
    /// ending in `*` matches by prefix.
    pub fn status(path: impl Into<String>, code: u16) -> Self {
        Self {
            path: path.into(),
            method: None,
            times: 1,
            status: Some(code),
            latency: Duration::ZERO,
            retry_after: None,
            watch: None,
        }
    }

    /// The next request to `path` is delayed, then served normally.
    pub fn latency(path: impl Into<String>, delay: Duration) -> Self {
        Self {
            latency: delay,
            status: None,
            ..Self::status(path, 500)
        }
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    pub fn method(mut self, m: Method) -> Self {
        self.method = Some(m);
        self
    }

    pub fn with_latency(mut self, delay: Duration) -> Self {
        self.latency = delay;
        self
    }

    /// Only watch requests (`watch=true|1`) match.
    pub fn watch_only(mut self) -> Self {
        self.watch = Some(true);
        self
    }

    /// Only non-watch requests match (e.g. a list, not the watch on the same path).
    pub fn non_watch_only(mut self) -> Self {
        self.watch = Some(false);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn matches(&self, method: &Method, path: &str, is_watch: bool) -> bool {
        let path_ok = match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        };
        self.times > 0
            && path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.watch.is_none_or(|w| w == is_watch)
    }
}

/// State shared by the HTTP handlers, watch tasks and the test handle.
struct Shared {
    store: Mutex<Store>,
    config: Config,
    requests: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<Fault>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    open_watches: AtomicUsize,
    tokens: Mutex<rbac::Tokens>,
    /// Which rule allowed each authorized request (RBAC recorder).
    exercised: Mutex<std::collections::BTreeSet<ExercisedRule>>,
    /// Every 401/403 the authenticator and authorizer answered, as its message.
    denials: Mutex<Vec<String>>,
    /// The cluster CA, made on first use (`pki.rs`).
    pki: std::sync::OnceLock<pki::Pki>,
    /// How kube-apiserver reaches kubelets (`proxy.rs`), made on first use.
    kubelet: std::sync::OnceLock<Result<proxy::KubeletClient, String>>,
    /// `pods/exec` WebSocket sessions translated to SPDY (`translator.rs`).
    translated_exec: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// How kube-apiserver reaches kubelets (`proxy.rs`), made on first use.
    fn kubelet(&self) -> Result<&proxy::KubeletClient, ApiError> {
        self.kubelet
            .get_or_init(|| {
                let pki = self.pki.get_or_init(|| pki::Pki::new("kubernetes"));
                proxy::KubeletClient::new(
                    &pki.client_certificate(KUBELET_CLIENT_CN, &[KUBELET_CLIENT_ORG]),
                )
            })
            .as_ref()
            .map_err(|e| ApiError::new(500, "InternalError", e.clone()))
    }
}

/// A running test API server. Dropping it stops the server.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

fn rt_of<K: k8s_openapi::Resource>() -> &'static ResourceType {
    lookup(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .unwrap_or_else(|| panic!("the test API server does not serve {}", K::KIND))
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("test objects serialize to JSON")
}

fn from_value<K: DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("stored objects deserialize into their type")
}

impl TestApiServer {
    /// Starts a server with default settings.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    pub async fn start_with(config: Config) -> Self {
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (tx, _) = broadcast::channel(4096);
        let mut store = Store::new(config.history_limit, tx);
        store.set_auto_pdb_status(config.disruption_controller);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            config,
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            shutdown: shutdown_rx.clone(),
            open_watches: AtomicUsize::new(0),
            translated_exec: AtomicUsize::new(0),
            tokens: Mutex::new(rbac::Tokens::default()),
            exercised: Mutex::new(Default::default()),
            denials: Mutex::new(Vec::new()),
            pki: std::sync::OnceLock::new(),
            kubelet: std::sync::OnceLock::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let app = app(shared.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        Self {
            shared,
            addr,
            shutdown_tx,
            server: Some(server),
        }
    }

    /// The same server as a router over the same store, for
    /// `tower::ServiceExt::oneshot` tests that need no socket.
    pub fn router(&self) -> Router {
        app(self.shared.clone())
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// kube 5's `rustls-tls` feature enables no crypto provider, and
    /// `Client::try_from` builds a TLS connector even for `http://` URLs, so
    /// without a process-wide default it panics. Install ring's once.
    fn ensure_crypto_provider() {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race to another test thread is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// The kube config a client for this server uses (default namespace
    /// "default", kube-rs defaults otherwise — including its retry of
    /// 429/503/504 responses).
    pub fn kube_config(&self) -> kube::Config {
        Self::ensure_crypto_provider();
        kube::Config::new(self.url().parse().expect("server URL parses"))
    }

    /// A client exactly as `kube::Client::try_from(Config::new(url))` makes it.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("kube client for test server")
    }

    /// A client with kube-rs' default retry layer off: errors such as an
    /// eviction's 429 come back at once instead of after ~15 backoffs.
    pub fn client_without_retries(&self) -> kube::Client {
        let mut cfg = self.kube_config();
        cfg.default_retry = false;
        kube::Client::try_from(cfg).expect("kube client for test server")
    }

    /// Creates or overwrites an object directly (no admission: status and
    /// other fields are kept as given; namespace defaults to "default").
    pub fn insert<K>(&self, obj: &K) -> K
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let v = self
            .shared
            .store()
            .upsert_raw(rt_of::<K>(), to_value(obj))
            .unwrap_or_else(|e| panic!("insert {}: {}", K::KIND, e.message));
        from_value(v)
    }

    /// One object; `ns` is ignored for cluster-scoped kinds (pass "").
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let store = self.shared.store();
        store.get(rt_of::<K>(), ns, name).cloned().map(from_value)
    }

    /// All objects of a kind, in one namespace or (None) everywhere.
    pub fn list<K>(&self, ns: Option<&str>) -> Vec<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let store = self.shared.store();
        store
            .list(rt_of::<K>(), ns)
            .into_iter()
            .cloned()
            .map(from_value)
            .collect()
    }

    /// Replaces `.status` (e.g. make a pod Running+Ready, as a kubelet would).
    pub fn set_status<K>(&self, ns: &str, name: &str, status: impl Serialize) -> K
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let v = self
            .shared
            .store()
            .set_status_raw(rt_of::<K>(), ns, name, to_value(&status))
            .unwrap_or_else(|e| panic!("set_status {}: {}", K::KIND, e.message));
        from_value(v)
    }

    /// Read-modify-write without admission or concurrency checks.
    pub fn modify<K>(&self, ns: &str, name: &str, f: impl FnOnce(&mut K)) -> K
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let rt = rt_of::<K>();
        let mut store = self.shared.store();
        let current = store
            .get(rt, ns, name)
            .cloned()
            .unwrap_or_else(|| panic!("modify: {} {ns}/{name} not found", K::KIND));
        let mut obj: K = from_value(current);
        f(&mut obj);
        let v = store
            .upsert_raw(rt, to_value(&obj))
            .unwrap_or_else(|e| panic!("modify {}: {}", K::KIND, e.message));
        from_value(v)
    }

    /// Removes an object at once, ignoring finalizers and grace periods.
    pub fn remove<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let v = self.shared.store().remove_raw(rt_of::<K>(), ns, name);
        v.map(from_value)
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Drops the retained change history: watches that (re)start from any
    /// resourceVersion before now get a 410 ERROR event.
    pub fn compact_history(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch with a 410 ERROR event (as when a watcher falls
    /// out of the watch cache window).
    pub fn expire_watches(&self) {
        self.shared.store().expire_watches();
    }

    /// Ends every open watch cleanly (no error event), as a watch timeout
    /// or an apiserver restart would; clients re-watch from their last rv.
    pub fn close_watches(&self) {
        self.shared.store().close_watches();
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` watches are open.
    pub async fn wait_for_watches(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.open_watches() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.open_watches() >= n
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Adds a fault; faults are consumed in the order added.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Writes each PDB's status (currentHealthy, desiredHealthy,
    /// expectedPods, disruptionsAllowed) as the disruption controller would.
    pub fn sync_disruption_budgets(&self) {
        self.shared
            .store()
            .sync_disruption_budgets()
            .unwrap_or_else(|e| panic!("sync_disruption_budgets: {}", e.message));
    }

    /// A token for ServiceAccount `ns/name` (user
    /// `system:serviceaccount:NS:NAME`), valid until the server stops; the
    /// ServiceAccount object need not exist. Requests with it are
    /// authorized by the stored RBAC objects.
    pub fn token_for_service_account(&self, ns: &str, name: &str) -> String {
        lock(&self.shared.tokens).mint(rbac::UserInfo::service_account(ns, name), None, None)
    }

    /// A token for the cluster administrator `kubernetes-admin` (group
    /// `system:masters`: allowed everything, before and without RBAC).
    /// With `require_auth` this is how the rest of the cluster (test
    /// scheduler, kubelet, controllers) talks to the server.
    pub fn admin_token(&self) -> String {
        lock(&self.shared.tokens).mint(rbac::UserInfo::admin(), None, None)
    }

    /// A client acting as the cluster administrator (see [`Self::admin_token`]).
    pub fn admin_client(&self) -> kube::Client {
        self.client_with_token(&self.admin_token())
    }

    /// The kube config of a client that sends `token` as its bearer token
    /// (for code that builds its own clients, e.g. `run_with`).
    pub fn kube_config_with_token(&self, token: &str) -> kube::Config {
        let mut cfg = self.kube_config();
        cfg.headers.push((
            header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .expect("a minted token is a valid header value"),
        ));
        cfg
    }

    /// The kube config of ServiceAccount `ns/sa`, subject to RBAC.
    pub fn kube_config_as(&self, ns: &str, sa: &str) -> kube::Config {
        self.kube_config_with_token(&self.token_for_service_account(ns, sa))
    }

    /// A client that sends `token` as its bearer token (kube-rs defaults
    /// otherwise, retries included).
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.kube_config_with_token(token))
            .expect("kube client for test server")
    }

    /// A client acting as ServiceAccount `ns/sa`, subject to RBAC.
    pub fn client_as(&self, ns: &str, sa: &str) -> kube::Client {
        self.client_with_token(&self.token_for_service_account(ns, sa))
    }

    /// Stores every object of a multi-document YAML stream (e.g. the output
    /// of `kubectl kustomize deploy/overlays/aks`) whose kind this server
    /// serves: new objects are created as through the API (Namespaces get
    /// their `kubernetes.io/metadata.name` label), existing ones are
    /// overwritten. Returns `Kind namespace/name` of the documents skipped
    /// because their kind is not served (Deployments, Services...).
    pub fn apply_manifests(&self, yaml: &str) -> Vec<String> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("manifests: {e}"));
        let mut skipped = Vec::new();
        let mut store = self.shared.store();
        for doc in docs.into_iter().filter(|d| d.is_object()) {
            let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            let ns = meta_str(&doc, "namespace").map(String::from);
            let name = meta_str(&doc, "name").unwrap_or_default().to_string();
            let Some(rt) = lookup_kind(&api_version, &kind) else {
                skipped.push(format!("{kind} {}/{name}", ns.unwrap_or_default()));
                continue;
            };
            let ns = ns.unwrap_or_else(|| "default".into());
            let result = if store.get(rt, &ns, &name).is_some() {
                store.upsert_raw(rt, doc)
            } else {
                store.create(rt, rt.namespaced.then_some(ns.as_str()), doc, true)
            };
            result.unwrap_or_else(|e| panic!("apply {kind} {ns}/{name}: {}", e.message));
        }
        skipped
    }

    /// The message of every request refused by authentication (401) or
    /// RBAC (403) so far, in order: end-to-end tests assert it stays empty.
    pub fn auth_denials(&self) -> Vec<String> {
        lock(&self.shared.denials).clone()
    }

    /// `pods/exec` WebSocket (v5) sessions upgraded and translated to SPDY
    /// towards the kubelet so far.
    pub fn translated_exec_sessions(&self) -> usize {
        self.shared.translated_exec.load(Ordering::SeqCst)
    }

    /// The RBAC rules that allowed requests so far, one entry per distinct
    /// (role, rule index, user, verb, group, resource).
    pub fn exercised_rules(&self) -> Vec<ExercisedRule> {
        lock(&self.shared.exercised).iter().cloned().collect()
    }

    /// Every (verb, group, resource) the stored roles grant ServiceAccount
    /// `ns/sa` through its bindings.
    pub fn granted_permissions(&self, ns: &str, sa: &str) -> Vec<GrantedPermission> {
        rbac::granted(
            &self.shared.store(),
            &rbac::UserInfo::service_account(ns, sa),
        )
    }

    /// Granted permissions of `ns/sa` that no allowed request has used yet.
    pub fn unexercised_permissions(&self, ns: &str, sa: &str) -> Vec<GrantedPermission> {
        let user = rbac::UserInfo::service_account(ns, sa).name;
        let used = self.exercised_rules();
        self.granted_permissions(ns, sa)
            .into_iter()
            .filter(|g| {
                !used.iter().any(|u| {
                    u.user == user
                        && u.role == g.role
                        && u.rule == g.rule
                        && u.verb == g.verb
                        && u.group == g.group
                        && u.resource == g.resource
                })
            })
            .collect()
    }

    fn pki(&self) -> &pki::Pki {
        self.shared.pki.get_or_init(|| pki::Pki::new("kubernetes"))
    }

    /// The cluster CA certificate (PEM): what the root CA publisher puts in
    /// every namespace's `kube-root-ca.crt` as `ca.crt`, and what kubelets
    /// verify client certificates against (`--client-ca-file`).
    pub fn cluster_ca_pem(&self) -> String {
        self.pki().ca_pem()
    }

    /// Stores the ConfigMap `kube-root-ca.crt` (`ca.crt` = the cluster CA)
    /// in `namespace`, as kube-controller-manager's root CA publisher does
    /// in every namespace. Not done by itself, so other tests' ConfigMap
    /// lists stay as they were.
    pub fn publish_root_ca(&self, namespace: &str) {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": namespace},
            "data": {"ca.crt": self.cluster_ca_pem()},
        });
        let rt = lookup("", "v1", "configmaps").expect("configmaps are served");
        self.shared
            .store()
            .upsert_raw(rt, cm)
            .unwrap_or_else(|e| panic!("publish kube-root-ca.crt: {}", e.message));
    }

    /// A client certificate signed by the cluster CA for user `cn` in
    /// groups `orgs` (at most two), client auth only.
    pub fn client_certificate(&self, cn: &str, orgs: &[&str]) -> ClientCertificate {
        self.pki().client_certificate(cn, orgs)
    }

    /// The certificate kube-apiserver presents to kubelets
    /// (`--kubelet-client-certificate`), in kubeadm's form: CN
    /// `kube-apiserver-kubelet-client`, O `system:masters`.
    pub fn kubelet_client_certificate(&self) -> ClientCertificate {
        self.client_certificate(KUBELET_CLIENT_CN, &[KUBELET_CLIENT_ORG])
    }

    /// Stops the server and waits (bounded) for it to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(h) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// The router, for `oneshot` tests without a socket.
fn app(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, shared.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(413, "RequestEntityTooLarge", "request entity too large")
                .into_response();
        }
    };
    let record = RequestRecord {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        accept: parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let is_watch = record.is_watch();
    lock(&shared.requests).push(record);
    let fault = {
        let mut faults = lock(&shared.faults);
        faults
            .iter_mut()
            .find(|f| f.matches(&parts.method, parts.uri.path(), is_watch))
            .map(|f| {
                f.times -= 1;
                f.clone()
            })
    };
    if let Some(f) = fault {
        if !f.latency.is_zero() {
            tokio::time::sleep(f.latency).await;
        }
        if let Some(code) = f.status {
            let mut e = ApiError::for_code(code);
            e.retry_after = f.retry_after;
            return e.into_response();
        }
    }
    let user = match authenticate_and_authorize(&shared, &parts) {
        Ok(u) => u,
        Err(e) => {
            lock(&shared.denials).push(e.message.clone());
            return e.into_response();
        }
    };
    if let Some(target) = proxy::Target::of(parts.uri.path()) {
        return match proxy::forward(&shared, target, &mut parts).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let bytes = match mutating_admission(&shared, &parts, bytes, user).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match route(&shared, &parts, &bytes) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Mutating admission webhooks (`webhooks.rs`) on a pod CREATE: the body
/// the rest of the request sees. Runs after authentication and
/// authorization, on the defaulted pod, before validation and Pod Security
/// (in `Store::create`), as in kube-apiserver. A body that does not parse,
/// or names another namespace, is left for `Store::create` to refuse.
async fn mutating_admission(
    shared: &Shared,
    parts: &Parts,
    bytes: Bytes,
    user: Option<rbac::UserInfo>,
) -> Result<Bytes, ApiError> {
    let Some(route) = parse_path(parts.uri.path()) else {
        return Ok(bytes);
    };
    let pod_create = parts.method == Method::POST
        && route.rt.is_pod()
        && route.name.is_none()
        && route.subresource.is_none();
    let Some(ns) = route.namespace.filter(|_| pod_create) else {
        return Ok(bytes);
    };
    // Only when some configuration exists: otherwise nothing to do.
    if shared
        .store()
        .list(webhooks::configurations(), None)
        .is_empty()
    {
        return Ok(bytes);
    }
    let Ok(mut pod) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(bytes);
    };
    let wrong = |field: &str, want: &str| pod.get(field).is_some_and(|v| v.as_str() != Some(want));
    if !pod.is_object()
        || wrong("kind", "Pod")
        || wrong("apiVersion", "v1")
        || meta_str(&pod, "namespace").is_some_and(|n| !n.is_empty() && n != ns)
    {
        // Decoding fails before admission in kube-apiserver.
        return Ok(bytes);
    }
    pod["kind"] = json!("Pod");
    pod["apiVersion"] = json!("v1");
    if !pod.get("metadata").is_some_and(Value::is_object) {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["namespace"] = json!(ns);
    store::default_pod_spec(&mut pod);
    let requester = match user {
        Some(u) => webhooks::Requester {
            username: u.name,
            groups: u.groups,
        },
        None => webhooks::Requester {
            username: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        },
    };
    // Unpatched, the request goes on byte for byte as it came.
    Ok(
        match webhooks::admit_pod_create(&shared.store, &ns, pod, &requester).await? {
            Some(pod) => Bytes::from(pod.to_string()),
            None => bytes,
        },
    )
}

/// Bearer-token authentication and RBAC (`rbac.rs`). A request without a
/// token is an unrestricted admin unless `require_auth`; any other
/// `Authorization` header, an unknown, expired or unbound token is 401.
/// The authenticated user, if there was a token.
fn authenticate_and_authorize(
    shared: &Shared,
    parts: &Parts,
) -> Result<Option<rbac::UserInfo>, ApiError> {
    let Some(header) = parts.headers.get(header::AUTHORIZATION) else {
        return if shared.config.require_auth {
            Err(rbac::unauthorized())
        } else {
            Ok(None)
        };
    };
    let token = header
        .to_str()
        .ok()
        .and_then(rbac::bearer)
        .ok_or_else(rbac::unauthorized)?;
    let store = shared.store();
    let user = lock(&shared.tokens)
        .authenticate(token, &store)
        .ok_or_else(rbac::unauthorized)?;
    if user.is_privileged() {
        return Ok(Some(user));
    }
    // Non-resource URLs (discovery, health) are open to every authenticated
    // user; unserved kinds get their 404 from `route`.
    let Some(route) = parse_path(parts.uri.path()) else {
        return Ok(Some(user));
    };
    let q = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let attrs = rbac::Attributes::of(&parts.method, &route, &q);
    match rbac::authorize(&store, &user, &attrs) {
        Ok((role, rule)) => {
            lock(&shared.exercised).insert(ExercisedRule {
                role,
                rule,
                user: user.name.clone(),
                verb: attrs.verb.clone(),
                group: attrs.group.clone(),
                resource: attrs.combined_resource(),
            });
            Ok(Some(user))
        }
        Err(reason) => Err(rbac::forbidden(route.rt, &user, &attrs, &reason)),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, axum::Json(v)).into_response()
}

/// kube-rs' `*_metadata` calls and `metadata_watcher` ask for
/// `application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`.
fn wants_partial(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// An object as returned: whole, or as `meta.k8s.io/v1 PartialObjectMetadata`.
fn render(obj: &Value, partial: bool) -> Value {
    if partial {
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        })
    } else {
        obj.clone()
    }
}

fn object_response(code: StatusCode, obj: &Value, partial: bool) -> Response {
    json_response(code, &render(obj, partial))
}

fn parse_body(bytes: &Bytes) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|s| s == "true" || s == "1")
}

struct ListQuery {
    labels: LabelSelector,
    fields: FieldSelector,
}

fn selectors(rt: &ResourceType, q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), rt.fields)
        .map_err(ApiError::bad_request)?;
    Ok(ListQuery { labels, fields })
}

fn route(shared: &Arc<Shared>, parts: &Parts, bytes: &Bytes) -> Result<Response, ApiError> {
    let path = parts.uri.path();
    match path {
        "/version" => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-spillway-test", "platform": "linux/amd64"}),
            ));
        }
        "/healthz" | "/readyz" | "/livez" => return Ok((StatusCode::OK, "ok").into_response()),
        _ => {}
    }
    if parts.method == Method::GET {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if let Some(doc) = discovery::document(path, host) {
            return Ok(json_response(StatusCode::OK, &doc));
        }
    }
    let route = parse_path(path).ok_or_else(ApiError::path_not_found)?;
    let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    if q.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let Route {
        rt,
        namespace,
        name,
        subresource,
    } = route;
    let ns = namespace.as_deref();
    if name.is_some() && rt.namespaced && ns.is_none() {
        return Err(ApiError::path_not_found());
    }
    let ns_key = ns.unwrap_or("");
    let method = &parts.method;
    let partial = wants_partial(parts);
    if rt.is_review() {
        return match (name.as_deref(), subresource.as_deref(), method) {
            (None, None, &Method::POST) => {
                let body = parse_body(bytes)?;
                let store = shared.store();
                let review = if rt.is("authentication.k8s.io", "tokenreviews") {
                    reviews::token_review(&store, &lock(&shared.tokens), &body)?
                } else {
                    reviews::subject_access_review(&store, &body)?
                };
                Ok(json_response(StatusCode::CREATED, &review))
            }
            (None, None, _) => Err(ApiError::method_not_allowed(method.as_str())),
            _ => Err(ApiError::path_not_found()),
        };
    }
    match (name.as_deref(), subresource.as_deref()) {
        (None, None) => match *method {
            Method::GET if is_true(q.get("watch")) => watch(shared, rt, namespace, &q, partial),
            Method::GET => list(shared, rt, ns, &q, partial),
            Method::POST => {
                let body = parse_body(bytes)?;
                let obj = shared.store().create(rt, ns, body, true)?;
                Ok(object_response(StatusCode::CREATED, &obj, partial))
            }
            Method::DELETE => delete_collection(shared, rt, ns, &q, bytes),
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        (Some(name), None) => match *method {
            Method::GET => {
                let store = shared.store();
                let obj = store
                    .get(rt, ns_key, name)
                    .ok_or_else(|| ApiError::not_found(rt, name))?;
                Ok(object_response(StatusCode::OK, obj, partial))
            }
            Method::PUT => {
                let body = parse_body(bytes)?;
                let obj = shared.store().update(rt, ns_key, name, body, false)?;
                Ok(object_response(StatusCode::OK, &obj, partial))
            }
            Method::PATCH => patch(shared, rt, ns_key, name, parts, bytes, &q, false),
            Method::DELETE => delete(shared, rt, ns_key, name, &q, bytes, partial),
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        (Some(name), Some("status")) if rt.status_subresource => match *method {
            Method::GET => {
                let store = shared.store();
                let obj = store
                    .get(rt, ns_key, name)
                    .ok_or_else(|| ApiError::not_found(rt, name))?;
                Ok(object_response(StatusCode::OK, obj, partial))
            }
            Method::PUT => {
                let body = parse_body(bytes)?;
                let obj = shared.store().update(rt, ns_key, name, body, true)?;
                Ok(object_response(StatusCode::OK, &obj, partial))
            }
            Method::PATCH => patch(shared, rt, ns_key, name, parts, bytes, &q, true),
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        (Some(name), Some("binding")) if rt.is_pod() => match *method {
            Method::POST => {
                let body = parse_body(bytes)?;
                shared.store().bind(ns_key, name, &body)?;
                Ok(json_response(StatusCode::CREATED, &success_status(201)))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        (Some(name), Some("token")) if rt.is("", "serviceaccounts") => match *method {
            Method::POST => {
                let body = parse_body(bytes)?;
                let store = shared.store();
                let mut tokens = lock(&shared.tokens);
                let request = rbac::token_request(&store, &mut tokens, ns_key, name, &body)?;
                Ok(json_response(StatusCode::CREATED, &request))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        (Some(name), Some("eviction")) if rt.is_pod() => match *method {
            Method::POST => {
                let body = parse_body(bytes)?;
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "request body must be an Eviction object",
                    ));
                }
                let timer = shared.config.pod_deletion == PodDeletion::AfterGracePeriod;
                let outcome = shared.store().evict(ns_key, name, &body, timer)?;
                after_delete(shared, rt, &outcome);
                Ok(json_response(StatusCode::CREATED, &success_status(201)))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        _ => Err(ApiError::path_not_found()),
    }
}

fn list(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    partial: bool,
) -> Result<Response, ApiError> {
    let sel = selectors(rt, q)?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let store = shared.store();
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token)
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            if rv < store.history_floor() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(key))
        }
        None => (store.resource_version(), None),
    };
    let mut items = Vec::new();
    let mut more = None;
    for obj in store.list_after(rt, ns, after.as_ref()) {
        if !(sel.labels.matches_object(obj) && sel.fields.matches(obj)) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            more = items.last().map(list_key);
            break;
        }
        // Real list items carry no kind/apiVersion (metadata-only ones do).
        let mut item = render(obj, partial);
        if !partial && let Some(m) = item.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        items.push(item);
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some((last_ns, last_name)) = more {
        meta["continue"] = json!(encode_continue(list_rv, &format!("{last_ns}/{last_name}")));
    }
    let (kind, api_version) = if partial {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (rt.list_kind(), rt.api_version())
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items}),
    ))
}

/// The store's sort key (namespace, name).
fn list_key(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_string(),
        meta_str(obj, "name").unwrap_or_default().to_string(),
    )
}

fn encode_continue(rv: u64, key: &str) -> String {
    format!("{rv}:{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let s = String::from_utf8(bytes?).ok()?;
    let (rv, key) = s.split_once(':')?;
    let (ns, name) = key.split_once('/')?;
    Some((rv.parse().ok()?, (ns.to_string(), name.to_string())))
}

fn watch(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    namespace: Option<String>,
    q: &HashMap<String, String>,
    partial: bool,
) -> Result<Response, ApiError> {
    let sel = selectors(rt, q)?;
    let resource_version = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
        })?)),
        None => None,
    };
    Ok(watch::serve(
        shared.clone(),
        watch::WatchRequest {
            rt,
            namespace,
            labels: sel.labels,
            fields: sel.fields,
            resource_version,
            bookmarks: is_true(q.get("allowWatchBookmarks")),
            timeout,
            send_initial_events: is_true(q.get("sendInitialEvents")),
            partial,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn patch(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    parts: &Parts,
    bytes: &Bytes,
    q: &HashMap<String, String>,
    status_only: bool,
) -> Result<Response, ApiError> {
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    let kind = match mime {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
        _ => return Err(ApiError::unsupported_media_type(ct)),
    };
    let body = if kind == PatchKind::Apply {
        if q.get("fieldManager").is_none_or(String::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        // kube-rs sends JSON (a YAML subset); accept real YAML too.
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| ApiError::bad_request("apply body is not UTF-8"))?;
                serde_saphyr::from_str::<Value>(text).map_err(|e| {
                    ApiError::bad_request(format!("apply body is not valid YAML: {e}"))
                })?
            }
        }
    } else {
        parse_body(bytes)?
    };
    if body.is_null() {
        return Err(ApiError::bad_request("empty patch body"));
    }
    let (obj, created) = shared
        .store()
        .patch(rt, ns, name, kind, &body, status_only)?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(object_response(code, &obj, wants_partial(parts)))
}

fn delete_options(q: &HashMap<String, String>, bytes: &Bytes) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::from_value(&parse_body(bytes)?)?;
    if let Some(g) = q.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(opts)
}

fn after_delete(shared: &Arc<Shared>, rt: &'static ResourceType, outcome: &Deleted) {
    if let Deleted::Terminating {
        object,
        grace: Some((secs, uid)),
    } = outcome
    {
        let weak = Arc::downgrade(shared);
        let ns = meta_str(object, "namespace")
            .unwrap_or_default()
            .to_string();
        let name = meta_str(object, "name").unwrap_or_default().to_string();
        let (secs, uid) = (*secs, uid.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            if let Some(shared) = weak.upgrade() {
                shared.store().finish_grace(rt, &ns, &name, &uid);
            }
        });
    }
}

fn delete(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    bytes: &Bytes,
    partial: bool,
) -> Result<Response, ApiError> {
    let opts = delete_options(q, bytes)?;
    let timer = shared.config.pod_deletion == PodDeletion::AfterGracePeriod;
    let outcome = shared.store().delete(rt, ns, name, &opts, timer)?;
    after_delete(shared, rt, &outcome);
    let obj = match outcome {
        Deleted::Removed(o) => o,
        Deleted::Terminating { object, .. } => object,
    };
    Ok(object_response(StatusCode::OK, &obj, partial))
}

fn delete_collection(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let sel = selectors(rt, q)?;
    let opts = delete_options(q, bytes)?;
    let timer = shared.config.pod_deletion == PodDeletion::AfterGracePeriod;
    let mut items = Vec::new();
    let mut outcomes = Vec::new();
    {
        let mut store = shared.store();
        let targets: Vec<(String, String)> = store
            .list(rt, ns)
            .into_iter()
            .filter(|o| sel.labels.matches_object(o) && sel.fields.matches(o))
            .map(|o| {
                (
                    meta_str(o, "namespace").unwrap_or_default().to_string(),
                    meta_str(o, "name").unwrap_or_default().to_string(),
                )
            })
            .collect();
        for (ons, oname) in targets {
            let outcome = store.delete(rt, &ons, &oname, &opts, timer)?;
            items.push(match &outcome {
                Deleted::Removed(o) => o.clone(),
                Deleted::Terminating { object, .. } => object.clone(),
            });
            outcomes.push(outcome);
        }
    }
    for o in &outcomes {
        after_delete(shared, rt, o);
    }
    let rv = shared.store().resource_version();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}
