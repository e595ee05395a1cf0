//! IoT Edge as a provider backend: [`EdgeBackend`] implements
//! [`crate::provider::backend::Backend`] over [`HubClient`]; an [`EdgePod`]
//! (a pod and the layered deployment its owner maps to) is its
//! [`Instance`].
//!
//! Owns the edge half of the pod lifecycle: the per-node base deployment,
//! one layered deployment per (node, owning controller, content hash)
//! shared by the controller's replicas (reference-counted: the pods bound to
//! the node that are not being deleted), reading status from metrics and
//! `$edgeAgent` twins, deleting a deployment when its last pod goes, and
//! collecting deployments of this node that no pod references (after
//! `orphan_grace`). Everything is recovered from the hub's labels after a
//! restart; the in-memory state is a cache of the last read.
//!
//! **Mutable fields.** A deployment's target condition and priority follow
//! its pods and the node after creation (pod annotations and labels are
//! mutable; the node's base condition is a flag that may change across a
//! restart): each read compares them with [`translate::mutable_fields`] of
//! the first live pod (by name) that references the deployment and updates
//! the hub's configuration in place (etag PUT, re-read on 412) — the same
//! id, as only content changes need a new one. The owning ReplicaSet's
//! revision is read again for it (one API server GET per deployment and
//! sync, no hub call): a rollback gives the old ReplicaSet the next
//! revision, and its deployment's priority and revision label follow.
//!
//! **Rolling updates.** A Deployment's new ReplicaSet maps to a new layered
//! deployment (new owner uid, so a new id) with a higher priority (the
//! revision is added), labelled with the Deployment's uid and the
//! revision. The ReplicaSet controller may delete the old pods before the
//! devices run the new modules; a deployment of a rollout is therefore
//! deleted only once every newer deployment of the same rollout has
//! *handed over* ([`handed_over`]: applied to every device it targets, at
//! least one, and every one of those reports success). Until then its
//! last pod is released (the pod goes) but the deployment stays, and
//! garbage collection deletes it as soon as the hand-over is seen (without
//! waiting `orphan_grace` again). Never both missing from a device, at the
//! price of keeping the old deployment while a targeted device is offline
//! or the new image fails; a rollout to a condition that matches no device
//! keeps the old deployment until the new pods go too.
//!
//! Must not: write to the Kubernetes API (it reads the owning ReplicaSet's
//! revision, nothing else), or decide pod phases (the shared controllers do).

use super::hub::{ConfigurationPatch, HubClient, HubError};
use super::model::{Configuration, ModuleTwin, metric};
use super::status::{self, DeploymentState};
use super::translate::{
    self, EdgeNode, EdgeTranslateError, LABEL_MANAGED_BY, LABEL_NODE, LABEL_OWNER_KIND,
    LABEL_OWNER_UID, LABEL_REVISION, LABEL_ROLE, LABEL_ROLLOUT_UID, LayeredInput, MANAGED_BY,
    MutableFields, REVISION_ANNOTATION, ROLE_BASE, ROLE_LAYERED, Resolved,
};
use crate::aci::translate::EnvValue;
use crate::aci::{Quota, Usage};
use crate::provider::backend::{
    Backend, BackendError, CreateError, CreateNotice, Instance, InstanceKind, OwnerRecord, Read,
    ReadResult,
};
use crate::provider::node::NodeProfile;
use crate::provider::resolve::Sources;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Pod annotation marking that the pod's deployment was created.
pub const DEPLOYMENT_ANNOTATION: &str = "spillway.io/edge-deployment";
/// Taint value of edge nodes (`virtual-kubelet.io/provider=iotedge:NoSchedule`).
pub const TAINT_VALUE: &str = "iotedge";

/// The instance name of pod `namespace/name` (a key, not a hub id: replicas
/// share one hub deployment).
pub fn edge_instance_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The node an edge backend registers: tainted `iotedge`, labelled
/// `spillway.io/edge=true` and never `spillway.io/virtual` (edge nodes are
/// placement targets, not burst capacity).
pub fn node_profile() -> NodeProfile {
    NodeProfile {
        taint_value: TAINT_VALUE.into(),
        labels: BTreeMap::from([("spillway.io/edge".to_string(), "true".to_string())]),
        system: "IoT Edge".into(),
        runtime_version: "iotedge://1.5".into(),
        unreachable_reason: "IotHubUnreachable".into(),
    }
}

/// A pod bound to an edge node and the hub's state of its deployment.
#[derive(Debug, Clone)]
pub struct EdgePod {
    name: String,
    pod: Arc<Pod>,
    pub state: DeploymentState,
}

impl Instance for EdgePod {
    const KIND: InstanceKind = InstanceKind {
        system: "IoT Edge",
        noun: "deployment",
        marker_annotation: DEPLOYMENT_ANNOTATION,
        container_id_scheme: status::CONTAINER_ID_SCHEME,
        instance_name: edge_instance_name,
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn owner(&self) -> OwnerRecord {
        OwnerRecord {
            namespace: self.pod.metadata.namespace.clone(),
            name: self.pod.metadata.name.clone(),
            uid: self.pod.metadata.uid.clone(),
        }
    }

    fn pod_status(&self) -> PodStatus {
        status::pod_status(&self.pod, &self.state)
    }

    fn held_cores(&self) -> f64 {
        0.0
    }
}

impl BackendError for HubError {
    fn is_answer(&self) -> bool {
        matches!(
            self,
            HubError::QuotaExceeded(_)
                | HubError::NotFound(_)
                | HubError::AlreadyExists(_)
                | HubError::PreconditionFailed(_)
                | HubError::Rejected(_)
                | HubError::Throttled { .. }
                | HubError::UpdateConflict { .. }
        )
    }
}

/// Settings of one edge node's backend.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeBackendConfig {
    pub node: EdgeNode,
    /// A managed deployment no pod references is deleted after this long.
    pub orphan_grace: Duration,
    /// The hub's configuration quota (100 per hub by default): node capacity.
    pub deployment_quota: i64,
    /// A deployment's twins are queried again after this long, or sooner
    /// when its system metrics change (device queries are about 20/min per
    /// hub unit: one per deployment per sync would exhaust them).
    pub twin_refresh: Duration,
}

impl EdgeBackendConfig {
    pub fn new(node: EdgeNode) -> Self {
        Self {
            node,
            orphan_grace: Duration::from_secs(60),
            deployment_quota: 100,
            twin_refresh: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Known {
    /// instance name → (pod, deployment id), from the last read and creates.
    pods: HashMap<String, (Arc<Pod>, String)>,
    /// deployment id → when it was first seen without a live pod.
    orphan_since: HashMap<String, Instant>,
    /// Deployments created since the last read (not yet judged orphans).
    created: HashSet<String>,
    deployments: i64,
    /// Why the last read failed; capacity reports it, so node health
    /// follows the hub (capacity itself needs no call of its own).
    last_read_error: Option<HubError>,
    /// deployment id → (when read, its system metrics then, the twins).
    twin_cache: HashMap<String, CachedTwins>,
    /// Deployments whose last pod went while a newer deployment of their
    /// rollout had not handed over: deleted once it has, without grace.
    awaiting_handover: HashSet<String>,
    /// deployment id → mutable fields the hub refused: not sent again
    /// until the pod asks for something else.
    refused_updates: HashMap<String, MutableFields>,
}

/// What the backend reads from a pod's owning ReplicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ReplicaSetInfo {
    /// `deployment.kubernetes.io/revision`.
    revision: Option<i32>,
    /// Uid of the ReplicaSet's controller (its Deployment).
    rollout: Option<String>,
}

/// A newer deployment of a rollout has taken over from the older ones:
/// the hub applied it to every device it targets (at least one) and every
/// one of them reports success (`reportedSuccessfulCount`).
pub fn handed_over(c: &Configuration) -> bool {
    let n = c.device_counts();
    n.applied >= 1 && n.applied >= n.targeted && n.reported_successful >= n.applied
}

fn label_revision(c: &Configuration) -> Option<i32> {
    c.labels
        .get(LABEL_REVISION)
        .and_then(|v| translate::parse_revision(v).ok())
}

/// The newer deployment of `c`'s rollout (same [`LABEL_ROLLOUT_UID`],
/// higher [`LABEL_REVISION`]) that has not [`handed_over`] yet, if any:
/// while there is one, `c` must stay on the hub.
pub fn held_by<'a>(c: &Configuration, managed: &'a [Configuration]) -> Option<&'a Configuration> {
    let rollout = c.labels.get(LABEL_ROLLOUT_UID)?;
    let revision = label_revision(c)?;
    managed.iter().find(|n| {
        n.id != c.id
            && n.labels.get(LABEL_ROLLOUT_UID) == Some(rollout)
            && label_revision(n).is_some_and(|r| r > revision)
            && !handed_over(n)
    })
}

type CachedTwins = (Instant, BTreeMap<String, i64>, Vec<ModuleTwin>);

/// The IoT Edge backend of one edge node.
pub struct EdgeBackend {
    hub: Arc<HubClient>,
    config: EdgeBackendConfig,
    /// Reads the owning ReplicaSet's revision (priority); `None`: revision 0.
    kube: Option<kube::Client>,
    known: Mutex<Known>,
    /// `spillway_edge_deployments` / `spillway_edge_devices`, when exported.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The controller uid a pod's deployment belongs to (the pod's for a bare pod).
fn owner_uid(pod: &Pod) -> Option<String> {
    translate::owner_of(pod).ok().map(|o| o.uid)
}

fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
}

/// `valueFrom` / `envFrom` values from the ConfigMaps and Secrets the
/// controllers read (missing non-optional ones: `CreateContainerConfigError`).
fn edge_resolved(pod: &Pod, sources: &Sources) -> Result<Resolved, CreateError> {
    let needs = pod.spec.iter().flat_map(|s| s.containers.iter()).any(|c| {
        c.env_from.as_ref().is_some_and(|v| !v.is_empty())
            || c.env.iter().flatten().any(|e| {
                e.value_from
                    .as_ref()
                    .is_some_and(|v| v.config_map_key_ref.is_some() || v.secret_key_ref.is_some())
            })
    });
    if !needs {
        return Ok(Resolved::default());
    }
    let aci = crate::provider::resolve::resolve(pod, sources).map_err(|e| CreateError::Config {
        message: e.to_string(),
    })?;
    let mut out = Resolved::default();
    for (container, vars) in aci.env {
        for (name, value) in vars {
            match value {
                EnvValue::Plain(v) | EnvValue::Secret(v) => {
                    out.env
                        .entry(container.clone())
                        .or_default()
                        .insert(name, v);
                }
                EnvValue::Absent => {
                    out.absent
                        .entry(container.clone())
                        .or_default()
                        .insert(name);
                }
            }
        }
    }
    for (container, vars) in aci.env_from {
        let vars = vars
            .into_iter()
            .filter_map(|(name, value)| match value {
                EnvValue::Plain(v) | EnvValue::Secret(v) => Some((name, v)),
                EnvValue::Absent => None,
            })
            .collect();
        out.env_from.insert(container, vars);
    }
    Ok(out)
}

fn create_error(e: &HubError) -> CreateError {
    match e {
        HubError::QuotaExceeded(_) => CreateError::Retry {
            message: format!("{}: {e}; retrying", e.reason()),
            metric: Some("quota"),
        },
        HubError::Rejected(_) | HubError::AlreadyExists(_) => CreateError::Invalid {
            message: format!("InvalidSpec: {e}"),
        },
        e => CreateError::Retry {
            message: format!("{}: {e}; retrying", e.reason()),
            metric: None,
        },
    }
}

impl EdgeBackend {
    pub fn new(hub: Arc<HubClient>, config: EdgeBackendConfig, kube: Option<kube::Client>) -> Self {
        Self {
            hub,
            config,
            kube,
            known: Mutex::default(),
            metrics: None,
        }
    }

    /// Export `spillway_edge_deployments` and `spillway_edge_devices` for
    /// this node after every read.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Set the node's gauges from its managed deployments.
    fn record(&self, managed: &[Configuration]) {
        let Some(m) = &self.metrics else {
            return;
        };
        let node = self.config.node.name.as_str();
        let layered: Vec<&Configuration> = managed
            .iter()
            .filter(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_LAYERED))
            .collect();
        m.edge_deployments
            .with_label_values(&[node])
            .set(layered.len() as i64);
        for (state, key) in [
            ("targeted", metric::TARGETED),
            ("applied", metric::APPLIED),
            ("succeeded", metric::REPORTED_SUCCESSFUL),
            ("failed", metric::REPORTED_FAILED),
        ] {
            let sum: i64 = layered
                .iter()
                .map(|c| c.system_metrics.results.get(key).copied().unwrap_or(0))
                .sum();
            m.edge_devices.with_label_values(&[node, state]).set(sum);
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The managed deployments of this node, by id.
    async fn managed(&self) -> Result<Vec<Configuration>, HubError> {
        // The hub's quota is 100 configurations; list them all.
        let all = self.hub.list_configurations(Some(100)).await?;
        Ok(all
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
                    && c.labels.get(LABEL_NODE) == Some(&self.config.node.name)
            })
            .collect())
    }

    /// The `$edgeAgent` twins of the devices `id` is applied to.
    async fn twins(&self, id: &str) -> Result<Vec<ModuleTwin>, HubError> {
        let query = format!(
            "SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND configurations.[[{id}]].status = 'Applied'"
        );
        let rows = self.hub.query_devices(&query).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| serde_json::from_value(r).ok())
            .collect())
    }

    /// The twins of `c`'s devices: cached, re-queried when the metrics move
    /// or the cache is older than `twin_refresh`.
    async fn cached_twins(&self, c: &Configuration) -> Result<Vec<ModuleTwin>, HubError> {
        if let Some((at, metrics, twins)) = self.known().twin_cache.get(&c.id)
            && at.elapsed() < self.config.twin_refresh
            && *metrics == c.system_metrics.results
        {
            return Ok(twins.clone());
        }
        let twins = self.twins(&c.id).await?;
        self.known().twin_cache.insert(
            c.id.clone(),
            (
                Instant::now(),
                c.system_metrics.results.clone(),
                twins.clone(),
            ),
        );
        Ok(twins)
    }

    async fn replicaset(&self, pod: &Pod) -> ReplicaSetInfo {
        let Some(client) = self.kube.clone() else {
            return ReplicaSetInfo::default();
        };
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true) && r.kind == "ReplicaSet");
        let Some(owner) = owner else {
            return ReplicaSetInfo::default();
        };
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let api: kube::Api<ReplicaSet> = kube::Api::namespaced(client, &ns);
        match api.get_opt(&owner.name).await {
            Ok(Some(rs)) if rs.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                ReplicaSetInfo {
                    revision: rs
                        .annotations()
                        .get(REVISION_ANNOTATION)
                        .and_then(|v| translate::parse_revision(v).ok()),
                    rollout: rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|r| r.controller == Some(true))
                        .map(|r| r.uid.clone())
                        .filter(|uid| !uid.is_empty()),
                }
            }
            Ok(_) => ReplicaSetInfo::default(),
            Err(e) => {
                tracing::warn!(error = %e, replicaset = %owner.name, "cannot read the ReplicaSet's revision; priority without it");
                ReplicaSetInfo::default()
            }
        }
    }

    async fn create_deployment(&self, pod: &Pod, sources: &Sources) -> Result<(), CreateError> {
        let resolved = edge_resolved(pod, sources)?;
        let owner = translate::owner_of(pod).map_err(|e| CreateError::Invalid {
            message: format!("InvalidSpec: {e}"),
        })?;
        let rs = self.replicaset(pod).await;
        let layered = translate::layered_deployment(
            pod,
            LayeredInput {
                node: &self.config.node,
                owner: &owner,
                revision: rs.revision,
                rollout: rs.rollout.as_deref(),
                resolved: &resolved,
            },
        )
        .map_err(|e| match e {
            EdgeTranslateError::Unresolved { .. } => CreateError::Config {
                message: e.to_string(),
            },
            EdgeTranslateError::InvalidSpec { .. } => CreateError::Invalid {
                message: format!("InvalidSpec: {e}"),
            },
        })?;
        let id = layered.id().to_string();
        let test = self
            .hub
            .test_queries(&layered.configuration.target_condition, &BTreeMap::new())
            .await
            .map_err(|e| create_error(&e))?;
        if !test.target_condition_error.is_empty() {
            return Err(CreateError::Invalid {
                message: format!(
                    "InvalidSpec: target condition {:?}: {}",
                    layered.configuration.target_condition, test.target_condition_error
                ),
            });
        }
        self.ensure_base().await.map_err(|e| create_error(&e))?;
        match self.hub.create_configuration(&layered.configuration).await {
            Ok(_) => {
                tracing::info!(deployment = %id, pod = %pod.name_any(), "IoT Edge deployment created")
            }
            // The id holds the content hash: same id, same modules. Another
            // replica created it (its priority or condition may differ only
            // while a revision is read differently).
            Err(HubError::AlreadyExists(_)) => {}
            Err(e) => return Err(create_error(&e)),
        }
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let mut known = self.known();
        known.created.insert(id.clone());
        known.pods.insert(
            edge_instance_name(&ns, &pod.name_any()),
            (Arc::new(pod.clone()), id),
        );
        Ok(())
    }

    /// Delete this node's base deployments other than the current one (its
    /// content changed: new system module images). `managed` holds only
    /// this node's deployments, so another node's base is never touched.
    async fn collect_stale_bases(&self, managed: &[Configuration], errors: &mut Vec<HubError>) {
        let current = translate::base_deployment(&self.config.node).id;
        for c in managed.iter().filter(|c| {
            c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_BASE) && c.id != current
        }) {
            match self.hub.delete_configuration(&c.id).await {
                Ok(()) => {
                    tracing::info!(deployment = %c.id, "GC: deleted a base deployment this node replaced")
                }
                Err(e) => errors.push(e),
            }
        }
    }

    /// Remove everything this node put on the hub: its layered deployments,
    /// then its base deployment(s) — for a node that is being removed
    /// (`--edge-cleanup-on-exit`), never for a restart. Only deployments
    /// labelled with this node's name. Returns how many were deleted.
    pub async fn decommission(&self) -> Result<usize, HubError> {
        let managed = self.managed().await?;
        let (base, layered): (Vec<&Configuration>, Vec<&Configuration>) = managed
            .iter()
            .partition(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_BASE));
        // Layered first: a device never holds modules without the base's
        // system modules.
        for c in layered.iter().chain(base.iter()) {
            self.hub.delete_configuration(&c.id).await?;
            tracing::info!(deployment = %c.id, node = %self.config.node.name, "edge node removed: deployment deleted");
        }
        Ok(managed.len())
    }

    /// Create the node's base deployment unless it exists (idempotent).
    async fn ensure_base(&self) -> Result<(), HubError> {
        let base = translate::base_deployment(&self.config.node);
        if self.hub.get_configuration(&base.id).await?.is_some() {
            return Ok(());
        }
        match self.hub.create_configuration(&base).await {
            Ok(_) | Err(HubError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_all(&self, pods: &[Arc<Pod>]) -> ReadResult<Self> {
        let managed = self.managed().await?;
        self.record(&managed);
        let mut errors = Vec::new();
        // The newest layered deployment of each owner.
        let mut by_owner: HashMap<String, Configuration> = HashMap::new();
        for c in managed
            .iter()
            .filter(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_LAYERED))
        {
            if let Some(uid) = c.labels.get(LABEL_OWNER_UID) {
                let newer = by_owner
                    .get(uid)
                    .is_none_or(|o| o.created_time_utc < c.created_time_utc);
                if newer {
                    by_owner.insert(uid.clone(), c.clone());
                }
            }
        }
        let mut twins: HashMap<String, Vec<ModuleTwin>> = HashMap::new();
        let mut instances = HashMap::new();
        let mut unknown = HashSet::new();
        let mut referenced = HashSet::new();
        for pod in pods {
            let ns = pod.namespace().unwrap_or_else(|| "default".into());
            let name = edge_instance_name(&ns, &pod.name_any());
            let Some(c) = owner_uid(pod).and_then(|uid| by_owner.get(&uid)) else {
                continue;
            };
            if is_live(pod) {
                referenced.insert(c.id.clone());
            }
            if !twins.contains_key(&c.id) {
                match self.cached_twins(c).await {
                    Ok(t) => {
                        twins.insert(c.id.clone(), t);
                    }
                    Err(e) => {
                        errors.push(e);
                        unknown.insert(name);
                        continue;
                    }
                }
            }
            let state = DeploymentState {
                configuration: c.clone(),
                twins: twins.get(&c.id).cloned().unwrap_or_default(),
            };
            instances.insert(
                name.clone(),
                EdgePod {
                    name,
                    pod: pod.clone(),
                    state,
                },
            );
        }
        self.update_mutable_fields(&instances, &mut errors).await;
        // Orphans: managed layered deployments no live pod references.
        let now = Instant::now();
        let orphans: Vec<String> = {
            let mut known = self.known();
            let created = std::mem::take(&mut known.created);
            let mut pods: HashMap<String, (Arc<Pod>, String)> = instances
                .values()
                .map(|i| {
                    (
                        i.name.clone(),
                        (i.pod.clone(), i.state.configuration.id.clone()),
                    )
                })
                .collect();
            // Pods created while this read ran are missing from its list:
            // keep their references, or a sibling's deletion would take
            // their deployment with it.
            for (name, entry) in known.pods.drain() {
                if created.contains(&entry.1) {
                    pods.entry(name).or_insert(entry);
                }
            }
            known.pods = pods;
            known.deployments = managed.len() as i64;
            known
                .twin_cache
                .retain(|id, _| managed.iter().any(|c| c.id == *id));
            known
                .refused_updates
                .retain(|id, _| managed.iter().any(|c| c.id == *id));
            let candidates: HashSet<String> = by_owner
                .values()
                .map(|c| c.id.clone())
                .chain(
                    managed
                        .iter()
                        .filter(|c| {
                            c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_LAYERED)
                        })
                        .map(|c| c.id.clone()),
                )
                .filter(|id| !referenced.contains(id) && !created.contains(id))
                .collect();
            known.orphan_since.retain(|id, _| candidates.contains(id));
            known.awaiting_handover.retain(|id| candidates.contains(id));
            let grace = self.config.orphan_grace;
            let held = |id: &str| {
                managed
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| held_by(c, &managed))
                    .is_some()
            };
            let mut due = Vec::new();
            for id in candidates {
                let since = *known.orphan_since.entry(id.clone()).or_insert(now);
                let expired = known.awaiting_handover.contains(&id)
                    || now.saturating_duration_since(since) >= grace;
                if expired && !held(&id) {
                    due.push(id);
                }
            }
            due
        };
        for id in orphans {
            match self.hub.delete_configuration(&id).await {
                Ok(()) => {
                    tracing::info!(deployment = %id, "GC: deleted an IoT Edge deployment no pod references");
                    let mut known = self.known();
                    known.orphan_since.remove(&id);
                    known.awaiting_handover.remove(&id);
                }
                Err(e) => errors.push(e),
            }
        }
        match self.ensure_base().await {
            Ok(()) => self.collect_stale_bases(&managed, &mut errors).await,
            Err(e) => errors.push(e),
        }
        Ok(Read {
            instances,
            unknown,
            errors,
        })
    }

    /// Update the target condition and priority of every deployment a live
    /// pod references where they differ from what the pod and node say.
    async fn update_mutable_fields(
        &self,
        instances: &HashMap<String, EdgePod>,
        errors: &mut Vec<HubError>,
    ) {
        let mut live: Vec<&EdgePod> = instances.values().filter(|i| is_live(&i.pod)).collect();
        live.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_id: BTreeMap<&str, &EdgePod> = BTreeMap::new();
        for i in live {
            by_id.entry(i.state.configuration.id.as_str()).or_insert(i);
        }
        for (id, i) in by_id {
            let c = &i.state.configuration;
            // The ReplicaSet's revision now: a rollback gives the old
            // ReplicaSet the next revision, and its deployment must win again.
            let labelled = label_revision(c);
            let revision = self.replicaset(&i.pod).await.revision.or(labelled);
            let want = match translate::mutable_fields(&i.pod, &self.config.node, revision) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "cannot compute the deployment's target condition and priority");
                    continue;
                }
            };
            // Deployments created before the revision label: their
            // priority holds a revision that is not known here.
            let priority_known = revision.is_some()
                || c.labels.get(LABEL_OWNER_KIND).map(String::as_str) != Some("ReplicaSet");
            let condition_differs = want.target_condition != c.target_condition;
            let priority_differs = priority_known && want.priority != c.priority;
            let revision_differs = revision.is_some() && revision != labelled;
            if !condition_differs && !priority_differs && !revision_differs {
                continue;
            }
            if self.known().refused_updates.get(id) == Some(&want) {
                continue;
            }
            let labels = revision.filter(|_| revision_differs).map(|r| {
                let mut labels = c.labels.clone();
                labels.insert(LABEL_REVISION.to_string(), r.to_string());
                labels
            });
            let patch = ConfigurationPatch {
                labels,
                target_condition: condition_differs.then(|| want.target_condition.clone()),
                priority: priority_differs.then_some(want.priority),
                ..ConfigurationPatch::default()
            };
            match self.hub.update_configuration(id, &patch).await {
                Ok(_) => {
                    tracing::info!(deployment = %id, condition = %want.target_condition, priority = want.priority, "IoT Edge deployment updated in place");
                    self.known().refused_updates.remove(id);
                }
                Err(e) => {
                    if matches!(e, HubError::Rejected(_)) {
                        tracing::warn!(deployment = %id, error = %e, "the hub refused the deployment's new target condition or priority");
                        self.known().refused_updates.insert(id.to_string(), want);
                    }
                    errors.push(e);
                }
            }
        }
    }

    async fn get_pod(&self, name: &str) -> Result<Option<EdgePod>, HubError> {
        let Some((pod, id)) = self.known().pods.get(name).cloned() else {
            return Ok(None);
        };
        let Some(configuration) = self.hub.get_configuration(&id).await? else {
            return Ok(None);
        };
        let twins = self.twins(&id).await?;
        Ok(Some(EdgePod {
            name: name.to_string(),
            pod,
            state: DeploymentState {
                configuration,
                twins,
            },
        }))
    }

    /// Release the pod's reference; delete the deployment with the last
    /// one, unless a newer deployment of its rollout has not handed over
    /// (then garbage collection deletes it once that one has).
    async fn release(&self, name: &str) -> Result<(), HubError> {
        let (id, others) = {
            let mut known = self.known();
            let Some((_, id)) = known.pods.remove(name) else {
                return Ok(());
            };
            let others = known
                .pods
                .values()
                .filter(|(p, other)| *other == id && is_live(p))
                .count();
            (id, others)
        };
        if others > 0 {
            tracing::debug!(deployment = %id, pods = others, "deployment still referenced");
            return Ok(());
        }
        let managed = self.managed().await?;
        if let Some(newer) = managed
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| held_by(c, &managed))
        {
            tracing::info!(deployment = %id, newer = %newer.id, counts = %newer.device_counts(), "last pod gone; deployment kept until the newer one of its rollout has handed over");
            self.known().awaiting_handover.insert(id);
            return Ok(());
        }
        self.hub.delete_configuration(&id).await?;
        tracing::info!(deployment = %id, "IoT Edge deployment deleted (last pod gone)");
        Ok(())
    }
}

impl Backend for EdgeBackend {
    type Instance = EdgePod;
    type Error = HubError;

    fn create<'a>(
        &'a self,
        pod: &'a Pod,
        sources: &'a Sources,
    ) -> BoxFuture<'a, Result<Vec<CreateNotice>, CreateError>> {
        Box::pin(async move {
            self.create_deployment(pod, sources)
                .await
                .map(|()| Vec::new())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<EdgePod>, HubError>> {
        Box::pin(self.get_pod(name))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(self.release(name))
    }

    fn read<'a>(&'a self, pods: &'a [Arc<Pod>]) -> BoxFuture<'a, ReadResult<Self>> {
        Box::pin(async move {
            let read = self.read_all(pods).await;
            self.known().last_read_error = read.as_ref().err().cloned();
            read
        })
    }

    fn capacity(&self) -> BoxFuture<'_, Result<Usage, HubError>> {
        Box::pin(async move {
            let (used, failed) = {
                let known = self.known();
                (known.deployments, known.last_read_error.clone())
            };
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(Usage {
                // Devices bring their own CPU; the node schedules by pods.
                cores: Quota {
                    limit: 1000,
                    current: 0,
                },
                container_groups: Quota {
                    limit: self.config.deployment_quota,
                    current: used,
                },
            })
        })
    }

    fn timed_out(&self, what: String) -> HubError {
        HubError::Transport {
            op: "read".into(),
            message: what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::hub::HubFault;

    fn fault() -> HubFault {
        HubFault {
            op: "create configuration x".into(),
            status: 400,
            code: "x".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn refusals_are_answers_transport_failures_are_not() {
        assert!(HubError::QuotaExceeded(fault()).is_answer());
        assert!(
            HubError::Throttled {
                op: "x".into(),
                retry_after: Duration::from_secs(1)
            }
            .is_answer()
        );
        assert!(!HubError::Server(fault()).is_answer());
        assert!(
            !HubError::Transport {
                op: "x".into(),
                message: "reset".into()
            }
            .is_answer()
        );
        assert!(!HubError::Unauthorized(fault()).is_answer());
    }

    #[test]
    fn refusals_map_to_pod_states() {
        assert!(matches!(
            create_error(&HubError::QuotaExceeded(fault())),
            CreateError::Retry {
                metric: Some("quota"),
                ..
            }
        ));
        assert!(matches!(
            create_error(&HubError::Rejected(fault())),
            CreateError::Invalid { message } if message.starts_with("InvalidSpec: ")
        ));
        assert!(matches!(
            create_error(&HubError::Server(fault())),
            CreateError::Retry { metric: None, .. }
        ));
    }

    /// A ReplicaSet `sensor-1` (uid `rs-uid-1`) at revision 3, served the
    /// way the API server serves it; everything else is a 404.
    fn api_with_replicaset() -> kube::Client {
        let api = axum::Router::new()
            .route(
                "/apis/apps/v1/namespaces/iot/replicasets/sensor-1",
                axum::routing::get(|| async {
                    axum::Json(serde_json::json!({
                        "apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": {"name": "sensor-1", "namespace": "iot", "uid": "rs-uid-1",
                            "annotations": {"deployment.kubernetes.io/revision": "3"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                "name": "sensor", "uid": "deploy-uid-1", "controller": true}]},
                        "spec": {"selector": {"matchLabels": {"app": "sensor"}}}
                    }))
                }),
            )
            .fallback(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    axum::Json(serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"
                    })),
                )
            });
        kube::Client::new(api, "default")
    }

    fn replica(owner_uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sensor-1-a", "namespace": "iot", "uid": "pod-1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "sensor-1", "uid": owner_uid, "controller": true}]},
            "spec": {"containers": [{"name": "sensor", "image": "sensor:1.0"}]}
        }))
        .unwrap_or_else(|e| panic!("pod: {e}"))
    }

    #[tokio::test]
    async fn priority_adds_the_replicasets_revision_so_a_rollout_wins() {
        use crate::edge::emulator::{Emulator, EmulatorConfig};
        let emu = Emulator::start(EmulatorConfig {
            configuration_ops_per_minute: 60_000.0,
            queries_per_minute: 60_000.0,
            burst: 1_000,
            ..EmulatorConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("emulator: {e}"));
        let conn = emu
            .connection_string()
            .unwrap_or_else(|| panic!("connection string"));
        let hub = HubClient::new(
            conn,
            crate::edge::HubClientConfig {
                endpoint: Some(emu.url.clone()),
                configuration_ops_per_minute: 60_000.0,
                queries_per_minute: 60_000.0,
                burst: 100,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("hub: {e}"));
        let backend = EdgeBackend::new(
            Arc::new(hub),
            EdgeBackendConfig::new(EdgeNode::new("edge-a", "*")),
            Some(api_with_replicaset()),
        );
        assert_eq!(
            backend.replicaset(&replica("rs-uid-1")).await,
            ReplicaSetInfo {
                revision: Some(3),
                rollout: Some("deploy-uid-1".into())
            }
        );
        // A ReplicaSet of the same name but another uid is not the owner.
        assert_eq!(
            backend.replicaset(&replica("rs-uid-old")).await,
            ReplicaSetInfo::default()
        );
        backend
            .create(&replica("rs-uid-1"), &Sources::default())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let ids: Vec<_> = backend
            .known()
            .pods
            .values()
            .map(|(_, id)| id.clone())
            .collect();
        let created = backend
            .hub
            .get_configuration(&ids[0])
            .await
            .unwrap_or_else(|e| panic!("get: {e}"))
            .unwrap_or_else(|| panic!("created"));
        assert_eq!(created.priority, 103, "100 + revision 3");
        assert_eq!(
            created.labels.get(LABEL_ROLLOUT_UID).map(String::as_str),
            Some("deploy-uid-1")
        );
        assert_eq!(
            created.labels.get(LABEL_REVISION).map(String::as_str),
            Some("3")
        );
        // Creating again (another replica, or a retry) is idempotent.
        backend
            .create(&replica("rs-uid-1"), &Sources::default())
            .await
            .unwrap_or_else(|e| panic!("create again: {e}"));
        assert_eq!(emu.state.counters().creates_by_id.get(&ids[0]), Some(&1));
    }

    fn rollout_deployment(id: &str, revision: i32, counts: [i64; 3]) -> Configuration {
        let mut c = Configuration::edge_deployment(id, BTreeMap::new(), "*", 100 + revision);
        c.labels = BTreeMap::from([
            (LABEL_ROLLOUT_UID.to_string(), "deploy-uid-1".to_string()),
            (LABEL_REVISION.to_string(), revision.to_string()),
        ]);
        for (key, n) in [
            (metric::TARGETED, counts[0]),
            (metric::APPLIED, counts[1]),
            (metric::REPORTED_SUCCESSFUL, counts[2]),
        ] {
            c.system_metrics.results.insert(key.to_string(), n);
        }
        c
    }

    #[test]
    fn an_old_deployment_is_held_until_the_newer_one_of_its_rollout_hands_over() {
        let old = rollout_deployment("old", 1, [3, 3, 3]);
        // [targeted, applied, reportedSuccessful] of the newer deployment.
        for (counts, held) in [
            ([0, 0, 0], true),  // just created: the hub has not counted yet
            ([3, 0, 0], true),  // targeted, not applied
            ([3, 2, 2], true),  // applied to some of its devices only
            ([3, 3, 2], true),  // one device has not reported success
            ([3, 3, 3], false), // every device runs the new modules
        ] {
            let managed = vec![old.clone(), rollout_deployment("new", 2, counts)];
            assert_eq!(held_by(&old, &managed).is_some(), held, "{counts:?}");
        }
        // An older revision, another rollout, or no rollout label never holds.
        let older = rollout_deployment("older", 0, [3, 0, 0]);
        assert!(held_by(&old, &[old.clone(), older]).is_none());
        let mut other = rollout_deployment("other", 2, [3, 0, 0]);
        other
            .labels
            .insert(LABEL_ROLLOUT_UID.to_string(), "deploy-uid-2".to_string());
        assert!(held_by(&old, &[old.clone(), other]).is_none());
        let mut bare = old.clone();
        bare.labels.clear();
        let newer = rollout_deployment("new", 2, [3, 0, 0]);
        assert!(held_by(&bare, &[bare.clone(), newer]).is_none());
    }

    #[test]
    fn the_edge_node_is_never_burst_capacity() {
        let p = node_profile();
        assert_eq!(p.taint_value, "iotedge");
        assert_eq!(
            p.labels.get("spillway.io/edge").map(String::as_str),
            Some("true")
        );
        assert!(!p.labels.contains_key("spillway.io/virtual"));
        assert_eq!(edge_instance_name("iot", "sensor-a"), "iot/sensor-a");
    }
}
