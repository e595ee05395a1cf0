//! The embedded provider: spillway *is* the virtual node.
//!
//! Owns the virtual node object, its heartbeat Lease, and the lifecycle of
//! the pods bound to it (pod → backend instance → pod status → deletion),
//! plus orphan GC; the kubelet endpoint for `kubectl logs` is [`crate::kubelet`].
//! It acts only while [`Provider::run`]'s leader signal is true.
//!
//! The controllers here are backend-neutral: they speak to the backend only
//! through the [`backend::Backend`] contract (create / get / delete / read /
//! capacity, with its idempotency rules written down there). ACI is the
//! backend today ([`crate::aci::backend::AciBackend`], the default type
//! parameter, so `Provider::new` builds an ACI provider); IoT Edge is the
//! second ([`crate::edge::backend::EdgeBackend`], via
//! [`Provider::with_backend`]). The node's taint, role labels and condition
//! names come from the backend's [`node::NodeProfile`]. Still ACI-shaped
//! here: the `aci_*` metric names and Event actions and which
//! ConfigMaps/Secrets a pod needs ([`resolve`]); the kubelet endpoint's logs
//! ([`crate::kubelet::logs`]) read ACI only.
//!
//! It does not decide which pods burst (`decision/`, the extender).
//!
//! Shape of the work:
//! - **node loop**: usage → capacity, backend health → Ready, node status
//!   written on change or every `status_interval`, each write bounded by
//!   `status_timeout` and retried on the next tick.
//! - **lease loop**: the node's heartbeat Lease renewed every
//!   `lease_interval`, each renewal bounded by `lease_timeout`. Its own loop:
//!   a stalled status write (or ACI call) must never stop the heartbeat, or
//!   the node controller marks the node NotReady and evicts its pods.
//! - **pod loop**: a reflector over pods with `spec.nodeName=<node>` (a 410
//!   relists, keeping the store); every `sync_interval` one ACI list (+ GETs
//!   for instance views) and [`pods::decide`] per pod; creations and
//!   deletions run as tasks, also started as soon as the watch reports a new
//!   or terminating pod (using the last list). The list and its GETs run as
//!   a background task, one at a time and bounded by `list_timeout` (a
//!   timed-out list is a failed one for node health), so a hung ACI list
//!   never holds back creations, deletions or the handling of finished
//!   tasks: those go on against the last good list. A group created after a
//!   list began is never judged vanished from that list.
//! - **durable creation marker**: once its group is created, a pod gets the
//!   annotation [`pods::GROUP_ANNOTATION`]; a restarted provider that finds
//!   the annotation but no group fails the pod as vanished instead of
//!   creating the group again (before the first status write, nothing else
//!   on the pod shows it had one).
//! - **pods that bypassed spillway** ([`unadmitted`]): a pod another
//!   scheduler bound here, which the admission webhook's rule would have
//!   sent to spillway's scheduler, gets an Event and counts in
//!   `spillway_unadmitted_pods`; with `--unadmitted-pods=reject` it gets
//!   no group until the engine has judged it on a sync (with the view
//!   synced), and is failed (`NotAdmitted`) when the engine would not have
//!   let it onto the virtual node. A pod that already has a group is never
//!   judged: it runs.
//! - **readiness** ([`probe`], ACI only): the leader runs the readiness and
//!   startup probes of running pods with a pod IP (httpGet, tcpSocket) and
//!   the status written for a pod merges their results; a worker whose
//!   result flips sends the pod to the pod loop, which writes its status at
//!   once (the status it shows, results merged, guarded by its
//!   resourceVersion) instead of on the next sync; every sync merges them
//!   too, so a write that lost a race is made up for.
//! - Restart safety comes from deterministic group names, tag checks
//!   ([`pods::ownership`]) and idempotent PUTs: a restarted provider adopts
//!   what it finds and never deletes a group whose pod lives (GC re-reads
//!   the pod from the API server before deleting).

pub mod backend;
pub mod cli;
pub mod node;
pub mod pods;
pub mod probe;
pub mod resolve;
pub mod services;
pub mod unadmitted;

use crate::aci::backend::AciBackend;
use crate::aci::{ContainerGroups, Usage};
use crate::metrics::Metrics;
use backend::{Backend, BackendError, CreateError, CreateNotice, Instance, Read};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeStatus, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use node::{Health, NodeSettings};
use pods::{PodAction, PodFacts};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Why the provider stopped or could not act.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("pod watch on node {node} stopped: {message}")]
    WatchStopped { node: String, message: String },
}

/// Settings of the provider. `new` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub node: NodeSettings,
    /// Tagged on every group; GC only touches groups with this tag.
    pub cluster_id: String,
    /// ACI region (groups and the usage API).
    pub location: String,
    /// Delegated subnets container groups go to (`--aci-subnet-id`); empty:
    /// no VNet (see `aci::translate::network`).
    pub aci_subnets: Vec<crate::aci::translate::SubnetId>,
    /// The Secret of the Log Analytics workspace groups send their logs to
    /// (`--aci-log-analytics`); read for every group created.
    pub aci_log_analytics: Option<resolve::LogAnalyticsSecret>,
    /// One ACI list per this interval (status sync).
    pub sync_interval: Duration,
    pub lease_interval: Duration,
    /// Bound on one Lease renewal; a renewal that takes longer is abandoned
    /// and retried (after a quarter of `lease_interval`).
    pub lease_timeout: Duration,
    /// Node status is rewritten at least this often (and on change).
    pub status_interval: Duration,
    /// Bound on one node status write (or registration); a write that takes
    /// longer is abandoned and retried on the node loop's next tick.
    pub status_timeout: Duration,
    /// How often the ACI quota (capacity) is read.
    pub usage_interval: Duration,
    pub gc_interval: Duration,
    /// The node turns NotReady when ACI has failed for this long.
    pub unreachable_after: Duration,
    /// Running groups are re-read (GET, for instance views) this often.
    pub refresh_interval: Duration,
    /// Bound on instance-view GETs per sync (ARM's read budget is shared).
    pub max_gets_per_sync: usize,
    /// Bound on a sync's ACI list, and again on its instance-view GETs. A
    /// list that takes longer counts as a failed one (node health); until
    /// the next one succeeds, creations and deletions go on against the
    /// last good list.
    pub list_timeout: Duration,
    /// Creations in flight at once (each is paced anyway).
    pub max_concurrent_creates: usize,
    /// First wait before retrying a pod whose creation failed; doubles.
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// Readiness/startup probes of burst pods in flight at once ([`probe`]).
    pub max_concurrent_probes: usize,
}

impl ProviderConfig {
    pub fn new(
        node_name: impl Into<String>,
        cluster_id: impl Into<String>,
        location: impl Into<String>,
        internal_ip: impl Into<String>,
        kubelet_port: u16,
    ) -> Self {
        Self {
            node: NodeSettings {
                name: node_name.into(),
                internal_ip: internal_ip.into(),
                kubelet_port,
                memory_gib_per_core: 4.0,
                os: "linux".into(),
                profile: node::NodeProfile::aci(),
            },
            cluster_id: cluster_id.into(),
            location: location.into(),
            aci_subnets: Vec::new(),
            aci_log_analytics: None,
            sync_interval: Duration::from_secs(5),
            lease_interval: Duration::from_secs(10),
            lease_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            status_timeout: Duration::from_secs(15),
            usage_interval: Duration::from_secs(30),
            gc_interval: Duration::from_secs(60),
            unreachable_after: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(60),
            max_gets_per_sync: 50,
            list_timeout: Duration::from_secs(30),
            max_concurrent_creates: 32,
            retry_backoff: Duration::from_secs(5),
            max_retry_backoff: Duration::from_secs(300),
            max_concurrent_probes: 64,
        }
    }
}

/// Tracks whether ACI answers; read by the node loop.
#[derive(Debug, Default)]
struct HealthTracker {
    failing_since: Option<Instant>,
    last_error: String,
}

impl HealthTracker {
    fn record<E: BackendError>(&mut self, result: Result<(), &E>, now: Instant) {
        match result {
            // Throttling, quota, not-found… are answers: the backend is there.
            Ok(()) => self.failing_since = None,
            Err(e) if e.is_answer() => self.failing_since = None,
            Err(e) => {
                self.failing_since.get_or_insert(now);
                self.last_error = e.to_string();
            }
        }
    }

    fn health(&self, now: Instant, after: Duration) -> Health {
        match self.failing_since {
            Some(since) if now.saturating_duration_since(since) >= after => Health::Unreachable {
                message: self.last_error.clone(),
            },
            _ => Health::Reachable,
        }
    }
}

#[derive(Default)]
struct Shared {
    health: Mutex<HealthTracker>,
    usage: Mutex<Option<Usage>>,
    /// What this node's live pods hold (from the last sync).
    own: Mutex<node::OwnUse>,
}

impl Shared {
    fn record<E: BackendError>(&self, result: Result<(), &E>) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(result, Instant::now());
    }
    fn health(&self, after: Duration) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .health(Instant::now(), after)
    }
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `status` as a JSON merge patch: fields it leaves out are cleared, so a
/// reason or message of an earlier state does not linger (a merge patch
/// keeps what it does not mention).
fn status_patch(status: &k8s_openapi::api::core::v1::PodStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = v.as_object_mut() {
        for key in [
            "reason",
            "message",
            "podIP",
            "podIPs",
            "containerStatuses",
            "initContainerStatuses",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    v
}

/// The embedded virtual-kubelet, over backend `B` (ACI by default).
pub struct Provider<B: Backend = AciBackend> {
    /// Request/response calls (bounded by the client's timeouts).
    client: kube::Client,
    /// The pod watch: a client without a read timeout, since a quiet node's
    /// watch is silent for minutes (see `cli::KubeClients`).
    watch_client: kube::Client,
    backend: Arc<B>,
    config: Arc<ProviderConfig>,
    metrics: Option<Arc<Metrics>>,
    /// Pods bound here by another scheduler: how to recognise and judge them.
    unadmitted: Option<Arc<unadmitted::Gate>>,
    /// Run pods' readiness/startup probes ([`probe`]): ACI pods, reachable
    /// at their group's IP.
    probing: bool,
    /// This node's part of the process-wide pod gauges ([`GaugeShare`]).
    gauges: Arc<Mutex<GaugeShare>>,
}

/// What one provider contributes to the gauges every provider of the
/// process shares (`spillway_provider_pods`, `spillway_unadmitted_pods`):
/// with `--aci-windows` two nodes sync their pods, and each adds only its
/// own change, so a gauge is the sum over the nodes instead of whichever
/// node wrote last. Cleared with the gauges when leadership is lost.
#[derive(Debug, Default)]
struct GaugeShare {
    pods: HashMap<String, i64>,
    unadmitted: HashMap<String, i64>,
}

/// Move `gauge` from this provider's `mine` to `now` by the difference
/// (labels `now` lacks go to zero); a label left at zero is removed when
/// `drop_zero`, as a reset would.
fn share_gauge(
    gauge: &prometheus::IntGaugeVec,
    mine: &mut HashMap<String, i64>,
    now: HashMap<String, i64>,
    drop_zero: bool,
) {
    let keys: HashSet<String> = mine.keys().chain(now.keys()).cloned().collect();
    for k in keys {
        let delta = now.get(&k).copied().unwrap_or(0) - mine.get(&k).copied().unwrap_or(0);
        if delta != 0 {
            let g = gauge.with_label_values(&[k.as_str()]);
            g.add(delta);
            if drop_zero && g.get() == 0 {
                let _ = gauge.remove_label_values(&[k.as_str()]);
            }
        }
    }
    *mine = now;
}

impl<B: Backend> Clone for Provider<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            watch_client: self.watch_client.clone(),
            backend: self.backend.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            unadmitted: self.unadmitted.clone(),
            probing: self.probing,
            gauges: self.gauges.clone(),
        }
    }
}

/// Why one creation did not happen.
#[derive(Debug)]
enum CreateFailure {
    /// Reading what the pod references failed: retried quietly.
    Kube(kube::Error),
    /// The node does not admit the pod, as the kubelet would not
    /// ([`node::admit`]): Failed, with the kubelet's reason.
    NotAdmitted(node::Rejection),
    Backend(CreateError),
}

enum Done {
    Created {
        uid: String,
        pod: Box<Pod>,
        result: Result<Vec<CreateNotice>, CreateFailure>,
    },
    Deleted {
        uid: String,
        result: Result<(), String>,
    },
    /// An orphan GC pass ended.
    Collected,
    /// A pod status written after a probe result flipped.
    StatusWritten,
}

/// What the backend half of a sync read (see [`Provider::read_backend`]).
struct Listing<I, E> {
    /// When the read began: an instance created later may be missing from it.
    at: Instant,
    read: Result<Read<I, E>, E>,
}

struct PodLoop<I> {
    /// uid → when this process's create of its group returned.
    created: HashMap<String, Instant>,
    /// uids whose Running was already timed.
    started: HashSet<String>,
    /// uid → (next attempt, attempts so far).
    retry: HashMap<String, (Instant, u32)>,
    /// uids with a create or delete task in flight.
    busy: HashSet<String>,
    creating: usize,
    /// The last successful list: when it began, and the groups by name.
    last_list: Option<(Instant, HashMap<String, I>)>,
    last_gc: Option<Instant>,
    /// An orphan GC task is running.
    collecting: bool,
    /// Pods another scheduler bound here: uid → whether they bypassed
    /// spillway (see [`unadmitted::bypassed`]; if not, they are left alone).
    bypassed: HashMap<String, bool>,
    /// Bypassing pods (see [`unadmitted`]) whose Event was written.
    reported: HashSet<String>,
    /// Bypassing pods the engine judged (reject mode): uid → admitted.
    judged: HashMap<String, bool>,
    /// Rejected pods whose Failed status could not be written yet: uid → message.
    unwritten: HashMap<String, String>,
    /// The pods' probe workers (ACI; see [`probe`]).
    prober: Option<probe::Prober>,
    /// Instance events published as Kubernetes Events: pod uid → event key
    /// → (count, last time) as last published.
    events: HashMap<String, HashMap<String, (i32, String)>>,
}

impl<I> Default for PodLoop<I> {
    fn default() -> Self {
        Self {
            created: HashMap::new(),
            started: HashSet::new(),
            retry: HashMap::new(),
            busy: HashSet::new(),
            creating: 0,
            last_list: None,
            last_gc: None,
            collecting: false,
            bypassed: HashMap::new(),
            reported: HashSet::new(),
            judged: HashMap::new(),
            unwritten: HashMap::new(),
            prober: None,
            events: HashMap::new(),
        }
    }
}

/// Publish the events of `instance` not published for `pod` yet (new, or
/// counted again, or at a new time) as Kubernetes Events on the pod, the
/// container's as `spec.containers{name}`; `seen` remembers what went out.
async fn publish_instance_events<I: Instance>(
    pod: &Pod,
    instance: &I,
    seen: &mut HashMap<String, (i32, String)>,
    recorder: &Recorder,
) {
    for e in instance.events() {
        let key = e.key();
        let mark = (e.count, e.last.clone());
        if seen.get(&key) == Some(&mark) {
            continue;
        }
        seen.insert(key, mark);
        let mut reference = pod.object_ref(&());
        if let Some(c) = &e.container {
            reference.field_path = Some(format!("spec.containers{{{c}}}"));
        }
        let event = KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.chars().take(128).collect(),
            note: Some(e.message.chars().take(1000).collect()),
            action: format!("{}Event", I::KIND.system),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "event write failed");
        }
    }
}

/// A Warning Event about what creating the pod's instance changed.
async fn publish_notice(pod: &Pod, notice: &CreateNotice, recorder: &Recorder) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: notice.reason.clone(),
        note: Some(notice.message.chars().take(1000).collect()),
        action: "CreateContainerGroup".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::warn!(error = %e, "event write failed");
    }
}

fn who_ns(pod: &Pod) -> String {
    pod.namespace().unwrap_or_else(|| "default".into())
}

/// The status `pod` shows with its probe results merged ([`probe::merge`]),
/// when that differs from it.
fn readiness_merged(
    pod: &Pod,
    prober: &probe::Prober,
) -> Option<k8s_openapi::api::core::v1::PodStatus> {
    let current = pod.status.as_ref()?;
    let mut desired = current.clone();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    probe::merge(
        pod,
        Some(current),
        &mut desired,
        prober.readiness(uid).as_ref(),
        &now_time(),
    );
    pods::status_differs(Some(current), &desired).then_some(desired)
}

fn pod_key(pod: &Pod) -> (String, String, String) {
    (
        pod.namespace().unwrap_or_else(|| "default".into()),
        pod.name_any(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

impl Provider<AciBackend> {
    /// The ACI provider.
    pub fn new(
        client: kube::Client,
        aci: Arc<dyn ContainerGroups>,
        config: ProviderConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let backend = Arc::new(AciBackend::new(aci, &config));
        let mut provider = Self::with_backend(client, backend, config, metrics);
        provider.probing = true;
        provider
    }

    /// Apply the `aci` settings of the policy that selects each pod.
    pub fn with_policies(mut self, store: Arc<crate::policy::reload::PolicyStore>) -> Self {
        self.backend = Arc::new(self.backend.with_policies(store));
        self
    }

    /// Give burst pods cluster DNS (search paths in `cluster_domain`) and
    /// service environment variables, as a kubelet (see [`services`]).
    pub fn with_services(
        mut self,
        services: services::ServiceSource,
        cluster_domain: &str,
    ) -> Self {
        self.backend = Arc::new(self.backend.with_services(services, cluster_domain));
        self
    }
}

impl<B: Backend> Provider<B> {
    /// A provider over any backend.
    pub fn with_backend(
        client: kube::Client,
        backend: Arc<B>,
        config: ProviderConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            watch_client: client.clone(),
            client,
            backend,
            config: Arc::new(config),
            metrics,
            unadmitted: None,
            probing: false,
            gauges: Arc::default(),
        }
    }

    /// Recognise pods bound here that bypassed spillway's scheduler
    /// (`gate.admission.scheduler_name`), and handle them as `gate.mode` says.
    pub fn with_unadmitted(mut self, gate: unadmitted::Gate) -> Self {
        self.unadmitted = Some(Arc::new(gate));
        self
    }

    /// Watch pods through `client` instead of the one given to [`Self::new`].
    pub fn with_watch_client(mut self, client: kube::Client) -> Self {
        self.watch_client = client;
        self
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Run until `stop` resolves, acting only while `leader` is true (a
    /// lost leadership cancels everything in flight; regaining it starts
    /// again by adopting what ACI holds). Returns when `leader`'s sender
    /// is dropped, too.
    pub async fn run(
        self,
        mut leader: tokio::sync::watch::Receiver<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProviderError> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                ok = async { leader.wait_for(|l| *l).await.is_ok() } => if !ok { return Ok(()) },
            }
            tracing::info!(node = %self.config.node.name, "provider active (leader)");
            let mut lost = leader.clone();
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = async { lost.wait_for(|l| !*l).await.is_ok() } => {
                    tracing::info!(node = %self.config.node.name, "provider paused (not leader)");
                    // The new leader's provider reports pods and quota now.
                    if let Some(m) = &self.metrics {
                        m.reset_leader_gauges();
                        *self.gauges.lock().unwrap_or_else(|e| e.into_inner()) =
                            GaugeShare::default();
                    }
                }
                r = self.active() => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "provider stopped; restarting");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn active(&self) -> Result<(), ProviderError> {
        let shared = Arc::new(Shared::default());
        let pods: Api<Pod> = Api::all(self.watch_client.clone());
        let (store, writer) = reflector::store::<Pod>();
        let changed = Arc::new(tokio::sync::Notify::new());
        let selector = format!("spec.nodeName={}", self.config.node.name);
        let events = reflector(
            writer,
            watcher(pods, watcher::Config::default().fields(&selector))
                .modify(|p: &mut Pod| p.metadata.managed_fields = None)
                .default_backoff(),
        );
        let notify = changed.clone();
        let drive = async move {
            events
                .for_each(|ev| {
                    match ev {
                        Ok(_) => notify.notify_one(),
                        Err(e) => tracing::warn!(error = %e, "pod watch error; retrying"),
                    }
                    futures::future::ready(())
                })
                .await;
        };
        let node_name = self.config.node.name.clone();
        // The node loop publishes the node's uid once registered; the lease
        // loop owns the Lease by it.
        let (uid_tx, uid_rx) = tokio::sync::watch::channel(None);
        tokio::select! {
            _ = drive => Err(ProviderError::WatchStopped { node: node_name, message: "stream ended".into() }),
            r = self.node_loop(&shared, uid_tx) => r,
            r = self.lease_loop(uid_rx) => r,
            r = self.usage_loop(&shared) => r,
            r = self.pod_loop(store, changed, &shared) => r,
        }
    }

    // ------------------------------------------------------------------
    // Node

    /// Read the backend's quota every `usage_interval`. Its own loop: a
    /// slow or failing backend (paced retries can take minutes) must never
    /// delay the node Lease, or the node controller would evict the node's pods.
    async fn usage_loop(&self, shared: &Shared) -> Result<(), ProviderError> {
        loop {
            match self.backend.capacity().await {
                Ok(u) => {
                    shared.record::<B::Error>(Ok(()));
                    if let Some(m) = &self.metrics {
                        m.aci_quota_cores
                            .with_label_values(&["limit"])
                            .set(u.cores.limit as f64);
                        m.aci_quota_cores
                            .with_label_values(&["used"])
                            .set(u.cores.current as f64);
                    }
                    *shared.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backend capacity read failed");
                    shared.record(Err(&e));
                }
            }
            tokio::time::sleep(self.config.usage_interval).await;
        }
    }

    /// Register the node and keep its status current: written on change or
    /// every `status_interval`, each attempt bounded by `status_timeout`
    /// (a failed or timed-out write is retried on the next tick). The node's
    /// uid goes to `uid` for the lease loop.
    async fn node_loop(
        &self,
        shared: &Shared,
        uid: tokio::sync::watch::Sender<Option<String>>,
    ) -> Result<(), ProviderError> {
        let cfg = &self.config;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut registered = false;
        let mut last_written: Option<NodeStatus> = None;
        let mut last_write_at: Option<Instant> = None;
        let tick = cfg
            .usage_interval
            .min(cfg.status_interval)
            .min(Duration::from_secs(1).max(cfg.sync_interval / 2));
        loop {
            if !registered {
                match tokio::time::timeout(cfg.status_timeout, self.ensure_node()).await {
                    Ok(Ok(node_uid)) => {
                        registered = true;
                        last_written = None;
                        uid.send_replace(Some(node_uid));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, node = %cfg.node.name, "cannot register the node")
                    }
                    Err(_) => tracing::warn!(
                        node = %cfg.node.name,
                        within = ?cfg.status_timeout,
                        "registering the node timed out; retrying"
                    ),
                }
            }
            let due = last_write_at.is_none_or(|t| t.elapsed() >= cfg.status_interval);
            if registered {
                let own = *shared.own.lock().unwrap_or_else(|e| e.into_inner());
                let usage = shared
                    .usage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(|u| node::schedulable(u, own));
                let health = shared.health(cfg.unreachable_after);
                let mut desired =
                    node::node_status(&cfg.node, usage.as_ref(), &health, &now_time());
                if due || node::status_differs(last_written.as_ref(), &desired) {
                    node::carry_transition_times(last_written.as_ref(), &mut desired);
                    let patch = Patch::Merge(json!({ "status": desired }));
                    let params = PatchParams::default();
                    let write = nodes.patch_status(&cfg.node.name, &params, &patch);
                    match tokio::time::timeout(cfg.status_timeout, write).await {
                        Ok(Ok(n)) => {
                            if health != Health::Reachable
                                || last_written
                                    .as_ref()
                                    .is_some_and(|w| node::status_differs(Some(w), &desired))
                            {
                                tracing::info!(node = %cfg.node.name, ?health, "node status changed");
                            }
                            last_written = n.status;
                            last_write_at = Some(Instant::now());
                        }
                        Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {
                            // Deleted behind our back: register it again; its
                            // Lease (owned by the old node) goes with it.
                            registered = false;
                            uid.send_replace(None);
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "node status write failed"),
                        Err(_) => tracing::warn!(
                            node = %cfg.node.name,
                            within = ?cfg.status_timeout,
                            "node status write timed out; retrying"
                        ),
                    }
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Renew the node's Lease every `lease_interval` while the node is
    /// registered, each renewal bounded by `lease_timeout`. Independent of
    /// the node loop, so a stalled status write never stops the heartbeat.
    async fn lease_loop(
        &self,
        mut uid: tokio::sync::watch::Receiver<Option<String>>,
    ) -> Result<(), ProviderError> {
        let cfg = &self.config;
        let retry = (cfg.lease_interval / 4).max(Duration::from_millis(50));
        loop {
            let Some(node_uid) = uid.borrow_and_update().clone() else {
                // Not registered (yet, or again): no node to own the Lease.
                if uid.changed().await.is_err() {
                    // The node loop is gone, and `active` with it.
                    std::future::pending::<()>().await;
                }
                continue;
            };
            let wait = match tokio::time::timeout(cfg.lease_timeout, self.renew_lease(node_uid))
                .await
            {
                Ok(Ok(())) => cfg.lease_interval,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "node lease renewal failed");
                    retry
                }
                Err(_) => {
                    tracing::warn!(within = ?cfg.lease_timeout, "node lease renewal timed out; retrying");
                    retry
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Create the node, or bring its labels and taint back; its uid.
    async fn ensure_node(&self) -> Result<String, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let settings = &self.config.node;
        let node = match nodes.get_opt(&settings.name).await? {
            None => {
                tracing::info!(node = %settings.name, "registering the virtual node");
                nodes
                    .create(&PostParams::default(), &node::node_object(settings))
                    .await?
            }
            Some(n) if node::node_needs_update(&n, settings) => {
                let want = node::node_object(settings);
                let patch = Patch::Merge(json!({
                    "metadata": { "labels": want.metadata.labels },
                    "spec": { "taints": want.spec.and_then(|s| s.taints) },
                }));
                nodes
                    .patch(&settings.name, &PatchParams::default(), &patch)
                    .await?
            }
            Some(n) => n,
        };
        Ok(node.metadata.uid.unwrap_or_default())
    }

    async fn renew_lease(&self, node_uid: String) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), node::NODE_LEASE_NAMESPACE);
        let name = &self.config.node.name;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let patch = Patch::Merge(json!({ "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": node::LEASE_DURATION_SECONDS,
            "renewTime": now,
        }}));
        match leases.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                let uid = (!node_uid.is_empty()).then_some(node_uid.as_str());
                leases
                    .create(&PostParams::default(), &node::node_lease(name, uid, now))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------------
    // Pods

    async fn pod_loop(
        &self,
        store: Store<Pod>,
        changed: Arc<tokio::sync::Notify>,
        shared: &Shared,
    ) -> Result<(), ProviderError> {
        store
            .wait_until_ready()
            .await
            .map_err(|e| ProviderError::WatchStopped {
                node: self.config.node.name.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(node = %self.config.node.name, pods = store.state().len(), "pod watch synced");
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "spillway-provider".into(),
                instance: Some(self.config.node.name.clone()),
            },
        );
        let mut st: PodLoop<B::Instance> = PodLoop::default();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        // The backend half of a sync (ACI: list + GETs), at most one at a time.
        let mut reads: JoinSet<Listing<B::Instance, B::Error>> = JoinSet::new();
        let mut next_sync = Instant::now();
        // Probe workers end with this loop (lost leadership drops it).
        let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel(256);
        st.prober = self.probing.then(|| {
            probe::Prober::new(
                self.config.max_concurrent_probes,
                self.metrics.clone(),
                probe_tx,
            )
        });
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_sync), if reads.is_empty() => {
                    let this = self.clone();
                    let store = store.clone();
                    reads.spawn(async move { this.read_backend(store).await });
                }
                Some(read) = reads.join_next() => {
                    match read {
                        Ok(listing) => {
                            self.apply_listing(&mut st, listing, &store, &mut tasks, shared, &recorder)
                                .await;
                        }
                        Err(e) => tracing::warn!(error = %e, "backend read task failed"),
                    }
                    next_sync = Instant::now() + self.config.sync_interval;
                }
                _ = changed.notified() => {
                    self.quick_pass(&mut st, &store, &mut tasks);
                }
                Some(who) = probe_rx.recv() => {
                    self.probe_flipped(&who, &store, &mut tasks, st.prober.as_mut());
                }
                Some(done) = tasks.join_next() => {
                    match done {
                        Ok(done) => self.finish(&mut st, done, &recorder).await,
                        Err(e) => tracing::warn!(error = %e, "provider task failed"),
                    }
                }
            }
        }
    }

    fn facts(&self, st: &PodLoop<B::Instance>, uid: &str, list_at: Option<Instant>) -> PodFacts {
        let created = st.created.get(uid).copied();
        // Created after the list began: the list cannot show it yet.
        let created_after = matches!((created, list_at), (Some(c), Some(l)) if c >= l)
            || (created.is_some() && list_at.is_none());
        PodFacts {
            created_before_list: matches!((created, list_at), (Some(c), Some(l)) if c < l),
            created_after_list: created_after,
            busy: st.busy.contains(uid),
        }
    }

    /// Whether `pod` must not get its group (yet): another scheduler bound
    /// it, `--unadmitted-pods=reject` is on, and it is not known to be left
    /// to that scheduler on purpose nor admitted by the engine.
    fn awaits_judgement(&self, st: &PodLoop<B::Instance>, pod: &Pod) -> bool {
        let Some(gate) = &self.unadmitted else {
            return false;
        };
        gate.mode == unadmitted::Mode::Reject
            && unadmitted::foreign(pod, &gate.admission)
            && pod.metadata.uid.as_ref().is_none_or(|uid| {
                st.judged.get(uid) != Some(&true) && st.bypassed.get(uid) != Some(&false)
            })
    }

    /// Pods another scheduler bound here: the gauge, one Event per pod, and
    /// (reject mode) the engine's judgement of those without a group yet,
    /// failing the ones it would not have admitted. Judged only on a synced
    /// view: until then they wait (no group is created for them).
    async fn handle_unadmitted(
        &self,
        st: &mut PodLoop<B::Instance>,
        pods: &[Arc<Pod>],
        groups: &HashMap<String, B::Instance>,
        recorder: &Recorder,
    ) {
        let Some(gate) = &self.unadmitted else {
            return;
        };
        let foreign: Vec<&Pod> = pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                    && unadmitted::foreign(p, &gate.admission)
            })
            .collect();
        // Would the webhook have sent it to spillway? Decided once per pod
        // (with its namespace's labels, read once per pass).
        let policies = gate.policies.current();
        let mut namespaces: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
        for p in &foreign {
            let (ns, _, uid) = pod_key(p);
            if st.bypassed.contains_key(&uid) {
                continue;
            }
            if !namespaces.contains_key(&ns) {
                let labels = self.namespace_labels(&ns).await;
                namespaces.insert(ns.clone(), labels);
            }
            let labels = namespaces.get(&ns).and_then(Option::as_ref);
            let bypassed = unadmitted::bypassed(p, labels, &policies, &gate.admission);
            st.bypassed.insert(uid, bypassed);
        }
        let bypassing: Vec<&Pod> = foreign
            .into_iter()
            .filter(|p| st.bypassed.get(&pod_key(p).2) == Some(&true))
            .collect();
        if let Some(m) = &self.metrics {
            let mut per_ns: HashMap<String, i64> = HashMap::new();
            for p in &bypassing {
                *per_ns.entry(pod_key(p).0).or_default() += 1;
            }
            share_gauge(
                &m.unadmitted_pods,
                &mut self
                    .gauges
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unadmitted,
                per_ns,
                true,
            );
        }
        let spillway = gate.admission.scheduler_name.as_str();
        let then = match gate.mode {
            unadmitted::Mode::Run => {
                "it runs without spillway's wait for VMs and burst budgets (--unadmitted-pods=run)"
            }
            unadmitted::Mode::Reject => {
                "spillway's rules are applied before it may run (--unadmitted-pods=reject)"
            }
        };
        // One Event per pod, written side by side (after an outage there
        // may be many at once).
        let unreported: Vec<(String, KubeEvent, k8s_openapi::api::core::v1::ObjectReference)> =
            bypassing
                .iter()
                .filter(|p| !st.reported.contains(&pod_key(p).2))
                .map(|p| {
                    let scheduler = unadmitted::scheduler_of(p);
                    let event = KubeEvent {
                        type_: EventType::Warning,
                        reason: unadmitted::EVENT_NOT_ADMITTED_BY_SPILLWAY.into(),
                        note: Some(format!(
                            "bound to the virtual node by {scheduler}, not {spillway} (created before spillway's admission webhook, or while it was down); {then}"
                        )),
                        action: "Admit".into(),
                        secondary: None,
                    };
                    (pod_key(p).2, event, p.object_ref(&()))
                })
                .collect();
        let written: Vec<Option<String>> = futures::stream::iter(unreported)
            .map(|(uid, event, reference)| async move {
                match recorder.publish(&event, &reference).await {
                    Ok(()) => Some(uid),
                    Err(e) => {
                        tracing::warn!(error = %e, "event write failed");
                        None
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        st.reported.extend(written.into_iter().flatten());
        if gate.mode != unadmitted::Mode::Reject {
            return;
        }
        let mut to_judge = Vec::new();
        let mut rewrite = Vec::new();
        for p in &bypassing {
            let (ns, name, uid) = pod_key(p);
            if let Some(message) = st.unwritten.get(&uid) {
                rewrite.push((*p, message.clone()));
            }
            if st.judged.contains_key(&uid) {
                continue;
            }
            if groups.contains_key(&self.backend.instance_name(&ns, &name))
                || st.created.contains_key(&uid)
                || pods::had_instance::<B::Instance>(p)
            {
                // It runs already (adopted after a restart, or created
                // before reject mode was on): never taken away.
                st.judged.insert(uid, true);
            } else {
                to_judge.push(*p);
            }
        }
        for (p, message) in rewrite {
            let uid = pod_key(p).2;
            if self
                .report_problem(
                    p,
                    "Failed",
                    unadmitted::REASON_NOT_ADMITTED,
                    &message,
                    recorder,
                )
                .await
            {
                st.unwritten.remove(&uid);
            }
        }
        if to_judge.is_empty() {
            return;
        }
        if !gate.view.is_synced() {
            tracing::info!(
                pods = to_judge.len(),
                "pods bypassed spillway; judged once the cluster view has synced"
            );
            return;
        }
        let rejected: HashSet<String> = st
            .judged
            .iter()
            .filter(|(_, admitted)| !**admitted)
            .map(|(uid, _)| uid.clone())
            .collect();
        let view = gate.view.current();
        let now = crate::units::Timestamp::now_wall();
        // The extender's reservations count as they do for it; if they
        // cannot be read, the view's usage alone is the best there is.
        let reserved = match &gate.reservations {
            Some(r) => r.outstanding(&view, now).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unadmitted pods: burst reservations not readable; judging by the view's usage alone");
                Default::default()
            }),
            None => Default::default(),
        };
        let judgements = unadmitted::judge(
            &gate.engine,
            &view,
            gate.view.config(),
            &gate.policies.current(),
            &to_judge,
            &rejected,
            &reserved,
            now,
        );
        for (p, j) in to_judge.iter().zip(judgements) {
            let (ns, name, _) = pod_key(p);
            st.judged.insert(j.uid.clone(), j.admitted);
            if j.admitted {
                tracing::info!(pod = %format!("{ns}/{name}"), reason = %j.decision.reason, "pod bypassed spillway; the engine admits it");
                continue;
            }
            if let Some(m) = &self.metrics {
                m.unadmitted_rejections
                    .with_label_values(&[j.decision.reason.as_str()])
                    .inc();
            }
            let message = j.rejection_message(unadmitted::scheduler_of(p), spillway);
            tracing::warn!(pod = %format!("{ns}/{name}"), reason = %j.decision.reason, "pod bypassed spillway; rejected");
            if !self
                .report_problem(
                    p,
                    "Failed",
                    unadmitted::REASON_NOT_ADMITTED,
                    &message,
                    recorder,
                )
                .await
            {
                st.unwritten.insert(j.uid.clone(), message);
            }
        }
    }

    /// The labels of namespace `ns` (for its `spillway.io/skip` opt-out),
    /// by a list by name (the webhook's RBAC allows list/watch of
    /// namespaces). `None` when that fails: the pods count as not opted out.
    async fn namespace_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let params = kube::api::ListParams::default().fields(&format!("metadata.name={ns}"));
        match api.list_metadata(&params).await {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .find_map(|n| n.metadata.labels)
                    .unwrap_or_default(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, namespace = %ns, "cannot read the namespace's labels; its pods count as not opted out");
                None
            }
        }
    }

    fn retry_due(&self, st: &PodLoop<B::Instance>, uid: &str) -> bool {
        st.retry
            .get(uid)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    /// On watch changes: start creations and deletions at once, judged
    /// against the last list (statuses wait for the next sync).
    fn quick_pass(
        &self,
        st: &mut PodLoop<B::Instance>,
        store: &Store<Pod>,
        tasks: &mut JoinSet<Done>,
    ) {
        if let Some(prober) = &mut st.prober {
            // A deleted or terminating pod's probes stop at once.
            let live: HashSet<String> = store
                .state()
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| pod_key(p).2)
                .collect();
            prober.retain(|uid| live.contains(uid));
        }
        let Some((list_at, groups)) = st.last_list.as_ref() else {
            return;
        };
        let list_at = *list_at;
        let mut actions = Vec::new();
        for pod in store.state() {
            let (ns, name, uid) = pod_key(&pod);
            let instance = self.backend.instance_name(&ns, &name);
            let group = groups.get(&instance);
            // Status work waits for the sync; only creations and deletions are urgent.
            if group.is_some() && pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let facts = self.facts(st, &uid, Some(list_at));
            let action = pods::decide_for(
                &pod,
                &instance,
                group,
                facts,
                &self.config.node.internal_ip,
                &now_time(),
            );
            if let a @ (PodAction::Create | PodAction::Delete { .. }) = action {
                actions.push((pod, a));
            }
        }
        for (pod, action) in actions {
            self.start_task(st, tasks, &pod, action);
        }
    }

    fn start_task(
        &self,
        st: &mut PodLoop<B::Instance>,
        tasks: &mut JoinSet<Done>,
        pod: &Pod,
        action: PodAction,
    ) {
        let (ns, name, uid) = pod_key(pod);
        match action {
            PodAction::Create => {
                if st.creating >= self.config.max_concurrent_creates
                    || !self.retry_due(st, &uid)
                    || self.awaits_judgement(st, pod)
                {
                    return;
                }
                st.busy.insert(uid.clone());
                st.creating += 1;
                let this = self.clone();
                let pod = pod.clone();
                tasks.spawn(async move {
                    let result = this.create_instance(&pod).await;
                    Done::Created {
                        uid,
                        pod: Box::new(pod),
                        result,
                    }
                });
            }
            PodAction::Delete { delete_group } => {
                st.busy.insert(uid.clone());
                let this = self.clone();
                tasks.spawn(async move {
                    let result = this.delete_pod(&ns, &name, &uid, delete_group).await;
                    Done::Deleted { uid, result }
                });
            }
            PodAction::DeleteStaleGroup => {
                st.busy.insert(uid.clone());
                let backend = self.backend.clone();
                let group = self.backend.instance_name(&ns, &name);
                tasks.spawn(async move {
                    tracing::info!(group = %group, pod = %format!("{ns}/{name}"), "deleting the group of an earlier pod of this name");
                    let result = backend.delete(&group).await.map_err(|e| e.to_string());
                    // Not a pod deletion: only clears `busy`.
                    Done::Deleted {
                        uid: format!("stale:{uid}"),
                        result,
                    }
                });
            }
            _ => {}
        }
    }

    async fn finish(&self, st: &mut PodLoop<B::Instance>, done: Done, recorder: &Recorder) {
        match done {
            Done::Created { uid, pod, result } => {
                st.busy.remove(&uid);
                st.creating = st.creating.saturating_sub(1);
                match result {
                    Ok(notices) => {
                        st.created.insert(uid.clone(), Instant::now());
                        st.retry.remove(&uid);
                        for n in notices {
                            publish_notice(&pod, &n, recorder).await;
                        }
                    }
                    Err(f) => self.creation_failed(st, &pod, &uid, f, recorder).await,
                }
            }
            Done::Deleted { uid, result } => {
                let real = uid.strip_prefix("stale:").unwrap_or(&uid).to_string();
                st.busy.remove(&real);
                match result {
                    Ok(()) if !uid.starts_with("stale:") => {
                        st.created.remove(&real);
                        st.started.remove(&real);
                        st.retry.remove(&real);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "deletion failed; retried on the next sync")
                    }
                }
            }
            Done::Collected => st.collecting = false,
            Done::StatusWritten => {}
        }
    }

    async fn creation_failed(
        &self,
        st: &mut PodLoop<B::Instance>,
        pod: &Pod,
        uid: &str,
        f: CreateFailure,
        recorder: &Recorder,
    ) {
        let (phase, reason, message, metric) = match &f {
            CreateFailure::Kube(e) => {
                tracing::warn!(error = %e, pod = %pod.name_any(), "reading the pod's ConfigMaps/Secrets failed; retrying");
                self.backoff(st, uid);
                return;
            }
            CreateFailure::NotAdmitted(r) => ("Failed", r.reason, r.message.clone(), None),
            CreateFailure::Backend(CreateError::Config { message }) => {
                ("Pending", pods::REASON_CONFIG_ERROR, message.clone(), None)
            }
            CreateFailure::Backend(CreateError::Invalid { message }) => (
                "Failed",
                pods::REASON_PROVIDER_FAILED,
                message.clone(),
                Some("invalid-spec"),
            ),
            CreateFailure::Backend(CreateError::Retry { message, metric }) => {
                ("Pending", pods::REASON_RETRYING, message.clone(), *metric)
            }
        };
        if phase == "Pending" {
            self.backoff(st, uid);
        }
        if let (Some(m), Some(reason)) = (&self.metrics, metric) {
            m.aci_container_group_start_failures
                .with_label_values(&[reason])
                .inc();
        }
        tracing::warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), reason, %message, "container group not created");
        self.report_problem(pod, phase, reason, &message, recorder)
            .await;
    }

    fn backoff(&self, st: &mut PodLoop<B::Instance>, uid: &str) {
        let attempts = st.retry.get(uid).map(|(_, n)| *n).unwrap_or(0);
        let wait = self
            .config
            .retry_backoff
            .saturating_mul(1u32 << attempts.min(16))
            .min(self.config.max_retry_backoff);
        st.retry
            .insert(uid.to_string(), (Instant::now() + wait, attempts + 1));
    }

    /// Write a problem status (when it changes something) and an Event.
    /// False when the status write failed.
    async fn report_problem(
        &self,
        pod: &Pod,
        phase: &str,
        reason: &str,
        message: &str,
        recorder: &Recorder,
    ) -> bool {
        let status = pods::problem_status(
            pod,
            phase,
            reason,
            message,
            &self.config.node.internal_ip,
            &now_time(),
        );
        if !pods::status_differs(pod.status.as_ref(), &status) {
            return true;
        }
        let written = match self.patch_pod_status(pod, &status).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, pod = %pod.name_any(), "pod status write failed");
                false
            }
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(message.chars().take(1000).collect()),
            action: match reason {
                pods::REASON_GROUP_VANISHED => "SyncContainerGroup".into(),
                unadmitted::REASON_NOT_ADMITTED => "Admit".into(),
                _ => "CreateContainerGroup".into(),
            },
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(error = %e, "event write failed");
        }
        written
    }

    async fn patch_pod_status(
        &self,
        pod: &Pod,
        status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &pod.namespace().unwrap_or_else(|| "default".into()),
        );
        let patch = Patch::Merge(json!({ "status": status_patch(status) }));
        match api
            .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(()),
            // Gone meanwhile: nothing to report.
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Read what the pod references, then have the backend create its
    /// instance, then mark the pod.
    async fn create_instance(&self, pod: &Pod) -> Result<Vec<CreateNotice>, CreateFailure> {
        // The kubelet admits a pod before running it; so does the virtual
        // node, before it reads anything or creates an instance.
        node::admit(pod, &self.config.node).map_err(CreateFailure::NotAdmitted)?;
        let sources = self.read_sources(pod).await.map_err(CreateFailure::Kube)?;
        let notices = self
            .backend
            .create(pod, &sources)
            .await
            .map_err(CreateFailure::Backend)?;
        self.mark_created(pod).await;
        Ok(notices)
    }

    /// Record on the pod, durably, that its group was created
    /// ([`pods::GROUP_ANNOTATION`]). Only ever after a successful create: a
    /// crash before this leaves a group that a restart adopts by its tags.
    /// The patch names the pod's uid, so a new pod of the same name is never
    /// marked. A failed write is logged; the first status write (container
    /// ids `aci://…`) records the same fact.
    async fn mark_created(&self, pod: &Pod) {
        let (ns, name, uid) = pod_key(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch = Patch::Merge(json!({ "metadata": {
            "uid": uid,
            "annotations": {
                <B::Instance as Instance>::KIND.marker_annotation:
                    pods::instance_marker::<B::Instance>(&ns, &name, &uid)
            },
        }}));
        match api.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => {}
            // Gone, or replaced by a pod of the same name: nothing to mark.
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(e) => {
                tracing::warn!(error = %e, pod = %format!("{ns}/{name}"), "could not mark the pod as having its group")
            }
        }
    }

    /// Read the ConfigMaps, Secrets and service account tokens `pod` needs.
    async fn read_sources(&self, pod: &Pod) -> Result<resolve::Sources, kube::Error> {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let refs = resolve::references(pod);
        let mut out = resolve::Sources::default();
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        for name in &refs.config_maps {
            if let Some(cm) = cms.get_opt(name).await? {
                out.config_maps
                    .insert(name.clone(), resolve::Sources::config_map_data(&cm));
            }
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for name in &refs.secrets {
            if let Some(s) = secrets.get_opt(name).await? {
                out.secrets
                    .insert(name.clone(), resolve::Sources::secret_data(&s));
            }
        }
        if let Some(la) = &self.config.aci_log_analytics {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &la.namespace);
            out.log_analytics = api
                .get_opt(&la.name)
                .await?
                .map(|s| resolve::Sources::secret_data(&s));
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(out);
        };
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        for v in spec.volumes.iter().flatten() {
            for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                let Some(t) = &src.service_account_token else {
                    continue;
                };
                // Bound to the pod: the token dies with it.
                let request = resolve::token_request(pod, t);
                match accounts
                    .create_token_request(&sa, &PostParams::default(), &request)
                    .await
                {
                    Ok(r) => {
                        if let Some(s) = r.status {
                            out.tokens.insert((v.name.clone(), t.path.clone()), s.token);
                        }
                    }
                    // The container still runs; it just cannot call the API server.
                    Err(e) => tracing::warn!(
                        error = %e,
                        volume = %v.name,
                        pod = %format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()),
                        "no service account token; the container runs without it"
                    ),
                }
            }
        }
        Ok(out)
    }

    /// Delete the pod's group (when ours), then the pod object (grace 0).
    async fn delete_pod(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        delete_group: bool,
    ) -> Result<(), String> {
        let group = self.backend.instance_name(ns, name);
        if delete_group {
            // Re-validate: the group must still be this pod's.
            match self.backend.get(&group).await {
                Ok(Some(g)) if pods::ownership_of(&g, ns, name, uid) == pods::Ownership::Ours => {
                    self.backend
                        .delete(&group)
                        .await
                        .map_err(|e| format!("delete group {group}: {e}"))?;
                    tracing::info!(group = %group, "container group deleted");
                }
                Ok(_) => {}
                Err(e) => return Err(format!("read group {group}: {e}")),
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
            Err(e) => Err(format!("delete pod {ns}/{name}: {e}")),
        }
    }

    /// The backend half of a sync, run as a background task so that a slow
    /// or hung backend never holds back the pod loop. The backend bounds its
    /// own calls; `list_timeout` (twice: ACI lists, then GETs) is the
    /// controllers' backstop.
    async fn read_backend(&self, store: Store<Pod>) -> Listing<B::Instance, B::Error> {
        let at = Instant::now();
        let pods = store.state();
        let limit = self.config.list_timeout.saturating_mul(2) + Duration::from_secs(1);
        let read = match tokio::time::timeout(limit, self.backend.read(&pods)).await {
            Ok(r) => r,
            Err(_) => Err(self
                .backend
                .timed_out(format!("read: no answer within {limit:?}"))),
        };
        Listing { at, read }
    }

    /// The rest of a sync, once its [`Listing`] is in: decide per pod (the
    /// pods as the watch shows them now), act, and keep the list for
    /// [`Self::quick_pass`].
    async fn apply_listing(
        &self,
        st: &mut PodLoop<B::Instance>,
        listing: Listing<B::Instance, B::Error>,
        store: &Store<Pod>,
        tasks: &mut JoinSet<Done>,
        shared: &Shared,
        recorder: &Recorder,
    ) {
        let cfg = &self.config;
        let list_at = listing.at;
        let Read {
            instances: groups,
            unknown,
            errors,
        } = match listing.read {
            Ok(read) => {
                shared.record::<B::Error>(Ok(()));
                read
            }
            Err(e) => {
                shared.record(Err(&e));
                tracing::warn!(error = %e, "backend read failed; no decisions this sync");
                return;
            }
        };
        for e in &errors {
            shared.record(Err(e));
        }
        let pods = store.state();
        self.handle_unadmitted(st, &pods, &groups, recorder).await;

        let now = now_time();
        let mut patches = Vec::new();
        let mut failures = Vec::new();
        let mut starts = Vec::new();
        for pod in pods.iter() {
            let (ns, name, uid) = pod_key(pod);
            let gname = self.backend.instance_name(&ns, &name);
            if unknown.contains(&gname) && pod.metadata.deletion_timestamp.is_none() {
                // Its group's state is not known this time (ACI: between
                // instance-view refreshes): its probes go on from the
                // status it shows.
                if let (Some(prober), Some(status)) = (&mut st.prober, &pod.status) {
                    prober.track(pod, status);
                    if let Some(merged) = readiness_merged(pod, prober) {
                        patches.push((pod.clone(), Box::new(merged)));
                    }
                }
                continue;
            }
            if let Some(instance) = groups.get(&gname)
                && pod.metadata.deletion_timestamp.is_none()
            {
                let seen = st.events.entry(uid.clone()).or_default();
                publish_instance_events(pod, instance, seen, recorder).await;
            }
            let facts = self.facts(st, &uid, Some(list_at));
            let action = self.decide_probed(
                pod,
                &gname,
                groups.get(&gname),
                facts,
                &now,
                st.prober.as_mut(),
            );
            match action {
                PodAction::Nothing => {}
                PodAction::Patch(status) => {
                    let was = pod.status.as_ref().and_then(|s| s.phase.clone());
                    let phase = status.phase.clone();
                    if phase.as_deref() == Some("Running")
                        && let Some(at) = st.created.get(&uid)
                        && st.started.insert(uid.clone())
                    {
                        starts.push(at.elapsed());
                    }
                    if phase.as_deref() == Some("Failed") && was.as_deref() != Some("Failed") {
                        failures.push("provisioning-failed");
                    }
                    patches.push((pod.clone(), status));
                }
                PodAction::Fail { reason, message } => {
                    if reason == pods::REASON_GROUP_VANISHED {
                        // The list may predate the group (another replica
                        // created it during a leader change): fail the pod
                        // only if the group is gone now too.
                        match self.backend.get(&gname).await {
                            Ok(None) => {}
                            Ok(Some(_)) => {
                                tracing::info!(group = %gname, "group missing from the list but present now; judged on the next sync");
                                continue;
                            }
                            Err(e) => {
                                shared.record(Err(&e));
                                continue;
                            }
                        }
                        failures.push("vanished");
                        tracing::warn!(pod = %format!("{ns}/{name}"), "container group vanished");
                    }
                    self.report_problem(pod, "Failed", &reason, &message, recorder)
                        .await;
                }
                a => self.start_task(st, tasks, pod, a),
            }
        }
        if let Some(m) = &self.metrics {
            for d in &starts {
                m.aci_container_group_start.observe(d.as_secs_f64());
            }
            for f in &failures {
                m.aci_container_group_start_failures
                    .with_label_values(&[f])
                    .inc();
            }
        }
        let this = self.clone();
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(patches)
            .map(move |(pod, status)| {
                let this = this.clone();
                async move { this.patch_pod_status(&pod, &status).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            tracing::warn!(error = %e, "pod status write failed");
        }
        if let Some(m) = &self.metrics {
            let mut counts: HashMap<&str, i64> =
                ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
                    .into_iter()
                    .map(|p| (p, 0))
                    .collect();
            for p in pods.iter() {
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("Pending");
                *counts.entry(phase).or_insert(0) += 1;
            }
            let counts = counts
                .into_iter()
                .map(|(phase, n)| (phase.to_string(), n))
                .collect();
            share_gauge(
                &m.provider_pods,
                &mut self.gauges.lock().unwrap_or_else(|e| e.into_inner()).pods,
                counts,
                false,
            );
        }
        let mut own = node::OwnUse::default();
        for pod in pods.iter() {
            let (ns, name, uid) = pod_key(pod);
            let terminal = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if let Some(g) = groups.get(&self.backend.instance_name(&ns, &name))
                && !terminal
                && pods::ownership_of(g, &ns, &name, &uid) == pods::Ownership::Ours
            {
                own.groups += 1;
                own.cores += g.held_cores();
            }
        }
        *shared.own.lock().unwrap_or_else(|e| e.into_inner()) = own;
        let gc_due = st.last_gc.is_none_or(|t| t.elapsed() >= cfg.gc_interval);
        if gc_due && !st.collecting {
            st.last_gc = Some(Instant::now());
            st.collecting = true;
            let this = self.clone();
            let busy = st.busy.clone();
            let listed = groups.clone();
            let pods = pods.clone();
            tasks.spawn(async move {
                this.collect_orphans(&busy, &listed, &pods).await;
                Done::Collected
            });
        }
        st.last_list = Some((list_at, groups));
        // A pod deleted while its creation was queued: forget its state.
        let live: HashSet<String> = pods.iter().map(|p| pod_key(p).2).collect();
        if let Some(prober) = &mut st.prober {
            prober.retain(|uid| live.contains(uid));
        }
        st.created
            .retain(|uid, _| live.contains(uid) || st.busy.contains(uid));
        st.retry.retain(|uid, _| live.contains(uid));
        st.started.retain(|uid| live.contains(uid));
        st.reported.retain(|uid| live.contains(uid));
        st.bypassed.retain(|uid, _| live.contains(uid));
        st.judged.retain(|uid, _| live.contains(uid));
        st.unwritten.retain(|uid, _| live.contains(uid));
        st.events.retain(|uid, _| live.contains(uid));
    }

    /// [`pods::decide_for`], with readiness checked ([`probe`]): for a pod
    /// whose group is ours, its probe worker is started, kept or stopped by
    /// the status mapped from the group, and the status to write merges the
    /// probe results (so a pod with probes is compared, and written, as
    /// ready only when its probes say so). Without a prober (not ACI), as
    /// `decide_for`.
    fn decide_probed(
        &self,
        pod: &Pod,
        instance: &str,
        group: Option<&B::Instance>,
        facts: PodFacts,
        now: &Time,
        prober: Option<&mut probe::Prober>,
    ) -> PodAction {
        let host_ip = &self.config.node.internal_ip;
        let action = pods::decide_for(pod, instance, group, facts, host_ip, now);
        let Some(prober) = prober else {
            return action;
        };
        let (ns, name, uid) = pod_key(pod);
        let ours =
            group.filter(|g| pods::ownership_of(*g, &ns, &name, &uid) == pods::Ownership::Ours);
        match (&action, ours) {
            (PodAction::Nothing | PodAction::Patch(_), Some(g))
                if !facts.busy
                    && !facts.created_after_list
                    && pod.metadata.deletion_timestamp.is_none() =>
            {
                let mut desired = pods::desired_status_for(pod, g, host_ip, now);
                prober.track(pod, &desired);
                probe::merge(
                    pod,
                    pod.status.as_ref(),
                    &mut desired,
                    prober.readiness(&uid).as_ref(),
                    now,
                );
                if pods::status_differs(pod.status.as_ref(), &desired) {
                    PodAction::Patch(Box::new(desired))
                } else {
                    PodAction::Nothing
                }
            }
            (PodAction::Delete { .. } | PodAction::Fail { .. }, _) => {
                prober.stop(&uid);
                action
            }
            _ => action,
        }
    }

    /// A probe worker's result for pod `who` flipped: write its status now,
    /// the one it shows with the results merged, on the condition that the
    /// pod is still as seen (its resourceVersion: a status written
    /// meanwhile, e.g. a Failed phase, is never overwritten from an older
    /// view; the next sync merges the results then). A worker flips at most
    /// once per probe period.
    fn probe_flipped(
        &self,
        who: &probe::PodRef,
        store: &Store<Pod>,
        tasks: &mut JoinSet<Done>,
        prober: Option<&mut probe::Prober>,
    ) {
        let Some(prober) = prober else {
            return;
        };
        let reference = reflector::ObjectRef::<Pod>::new(&who.name).within(&who.namespace);
        let Some(pod) = store.get(&reference) else {
            return;
        };
        if pod.metadata.uid.as_deref() != Some(who.uid.as_str())
            || pod.metadata.deletion_timestamp.is_some()
        {
            return;
        }
        let Some(desired) = readiness_merged(&pod, prober) else {
            return;
        };
        let client = self.client.clone();
        tasks.spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, &who_ns(&pod));
            let patch = Patch::Merge(json!({
                "metadata": { "resourceVersion": pod.metadata.resource_version },
                "status": status_patch(&desired),
            }));
            match api
                .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {}
                // Changed meanwhile (the next sync merges the results) or gone.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(error = %e, pod = %pod.name_any(), "pod status write failed")
                }
            }
            Done::StatusWritten
        });
    }

    /// Delete groups tagged with our cluster id whose pod no longer exists.
    /// The pod is re-read from the API server first: a lagging watch must
    /// never cost a live pod its group.
    async fn collect_orphans(
        &self,
        busy: &HashSet<String>,
        groups: &HashMap<String, B::Instance>,
        pods: &[Arc<Pod>],
    ) {
        let live: HashSet<String> = pods.iter().map(|p| pod_key(p).2).collect();
        for g in groups.values() {
            let owner = g.owner();
            let (Some(uid), Some(ns), Some(name)) = (owner.uid, owner.namespace, owner.name) else {
                continue;
            };
            if live.contains(&uid) || busy.contains(&uid) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            match api.get_opt(&name).await {
                Ok(Some(p)) if p.metadata.uid.as_deref() == Some(uid.as_str()) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, group = %g.name(), "GC: cannot read the pod; keeping the group");
                    continue;
                }
            }
            // The list may be old: a pod of the same name may have been
            // created since and got a group under this name. Delete only
            // the orphan itself, as it is now.
            match self.backend.get(g.name()).await {
                Ok(Some(now)) if now.owner().uid.as_deref() == Some(uid.as_str()) => {}
                Ok(Some(_)) => {
                    tracing::info!(group = %g.name(), "GC: the group now belongs to another pod; keeping it");
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, group = %g.name(), "GC: cannot re-read the group; keeping it");
                    continue;
                }
            }
            match self.backend.delete(g.name()).await {
                Ok(()) => {
                    tracing::info!(group = %g.name(), pod = %format!("{ns}/{name}"), "GC: deleted orphan container group");
                    if let Some(m) = &self.metrics {
                        m.gc_deleted.inc();
                    }
                }
                Err(e) => tracing::warn!(error = %e, group = %g.name(), "GC: delete failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::translate::group_name;
    use crate::aci::{AciError, ContainerGroup, TAG_NAMESPACE, TAG_POD_NAME, TAG_POD_UID};

    /// ACI where `web-a`'s group was recreated for a new pod after the list
    /// that showed the old one; records deletions.
    struct Recreated {
        deleted: std::sync::Mutex<Vec<String>>,
    }

    fn tagged(uid: &str) -> ContainerGroup {
        ContainerGroup {
            name: group_name("web", "a"),
            tags: [
                (TAG_POD_UID, uid),
                (TAG_NAMESPACE, "web"),
                (TAG_POD_NAME, "a"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    impl ContainerGroups for Recreated {
        fn create_or_update<'a>(
            &'a self,
            g: &'a ContainerGroup,
        ) -> futures::future::BoxFuture<'a, Result<ContainerGroup, AciError>> {
            Box::pin(async move { Ok(g.clone()) })
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(Some(tagged("uid-new"))) })
        }
        fn list<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(vec![tagged("uid-new")]) })
        }
        fn delete<'a>(
            &'a self,
            name: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<(), AciError>> {
            Box::pin(async move {
                if let Ok(mut d) = self.deleted.lock() {
                    d.push(name.to_string());
                }
                Ok(())
            })
        }
        fn logs<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: crate::aci::LogOptions,
        ) -> futures::future::BoxFuture<'a, Result<String, AciError>> {
            Box::pin(async { Ok(String::new()) })
        }
        fn metrics<'a>(
            &'a self,
            _: &'a str,
            _: crate::aci::monitor::MetricsSpan,
        ) -> futures::future::BoxFuture<'a, Result<crate::aci::monitor::GroupMetrics, AciError>>
        {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn usage<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::aci::Usage, AciError>> {
            Box::pin(async { Ok(Default::default()) })
        }
        fn exec<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: crate::aci::TerminalSize,
        ) -> futures::future::BoxFuture<'a, Result<crate::aci::ExecSession, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
    }

    #[tokio::test]
    async fn gc_spares_a_group_recreated_for_a_new_pod_since_the_list() {
        // The API server has no pod `web/a` (the old one is gone; the new
        // one is not in this stale view either): every pod read is a 404.
        let api = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"
                })),
            )
        });
        let client = kube::Client::new(api, "default");
        let aci = Arc::new(Recreated {
            deleted: Default::default(),
        });
        let provider = Provider::new(
            client,
            aci.clone(),
            ProviderConfig::new("aci", "c1", "westeurope", "10.0.0.1", 10250),
            None,
        );
        let stale: HashMap<String, ContainerGroup> =
            [(group_name("web", "a"), tagged("uid-old"))].into();
        provider.collect_orphans(&HashSet::new(), &stale, &[]).await;
        let deleted = aci.deleted.lock().map(|d| d.clone()).unwrap_or_default();
        assert!(deleted.is_empty(), "deleted {deleted:?}");
        // The control: a group still tagged with the gone pod is collected.
        let current: HashMap<String, ContainerGroup> =
            [(group_name("web", "a"), tagged("uid-new"))].into();
        provider
            .collect_orphans(&HashSet::new(), &current, &[])
            .await;
        let deleted = aci.deleted.lock().map(|d| d.clone()).unwrap_or_default();
        assert_eq!(deleted, vec![group_name("web", "a")]);
    }

    #[test]
    fn backend_is_unreachable_only_after_failing_for_the_configured_time() {
        let mut h = HealthTracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let down = AciError::Transient {
            message: "connection refused".into(),
        };
        h.record(Err(&down), t0);
        assert_eq!(
            h.health(t0 + Duration::from_secs(59), after),
            Health::Reachable
        );
        assert!(matches!(
            h.health(t0 + Duration::from_secs(60), after),
            Health::Unreachable { ref message } if message.contains("connection refused")
        ));
        // A throttled answer is an answer: ACI is there.
        h.record(
            Err(&AciError::Throttled {
                retry_after: Duration::from_secs(1),
            }),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(
            h.health(t0 + Duration::from_secs(120), after),
            Health::Reachable
        );
        h.record(Err(&down), t0 + Duration::from_secs(130));
        h.record::<AciError>(Ok(()), t0 + Duration::from_secs(131));
        assert_eq!(
            h.health(t0 + Duration::from_secs(300), after),
            Health::Reachable
        );
    }

    #[test]
    fn status_patch_clears_what_the_new_status_leaves_out() {
        let running = k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("20.0.0.1".into()),
            ..Default::default()
        };
        let v = status_patch(&running);
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["podIP"], "20.0.0.1");
        assert!(v["message"].is_null() && v.get("message").is_some());
        assert!(v["reason"].is_null() && v.get("reason").is_some());
    }
}
