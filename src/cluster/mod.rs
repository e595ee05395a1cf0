//! The cluster view: Kubernetes `Node`/`Pod` objects turned into the engine's
//! plain data (`Snapshot`).
//!
//! This module owns the translation rules (what is a virtual node, which pool a
//! node is in, what a pod requests, whether ACI can run it) and the shared,
//! non-blocking `ClusterView` the extender reads; [`classify`] turns nodes and
//! pods into typed data in one pass. It decides nothing: the
//! engine does. The only I/O is in `load` (reading a `kubectl get -o yaml`
//! file) and `view::run_reflectors` (watching the API server).

pub mod bound;
pub mod build;
pub mod ca_status;
pub mod classify;
pub mod constraints;
pub mod load;
pub mod slim;
pub mod view;

pub use load::{
    ClusterObjects, load_cluster_state, load_cluster_view_objects, parse_cluster_state,
};
pub use view::{ClusterState, ClusterView};

use crate::decision::aci_size::Declared;
use crate::decision::{AciSize, EngineConfig, PendingPod, Snapshot, VmNode, VmPool};
use crate::units::{Resources, Timestamp, parse_cpu_millis, parse_memory_bytes};
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

/// Label and taint keys shared with virtual-kubelet and the AKS virtual node.
pub const VIRTUAL_KUBELET_TAINT: &str = "virtual-kubelet.io/provider";
pub const POOL_LABELS: [&str; 2] = ["agentpool", "kubernetes.azure.com/agentpool"];

/// Node label or annotation giving its pool's autoscaler minimum (e.g. set as
/// an AKS node pool label, `az aks nodepool update --labels`).
pub const POOL_MIN_SIZE: &str = "spillway.io/pool-min-size";
/// Node label or annotation giving its pool's autoscaler maximum.
pub const POOL_MAX_SIZE: &str = "spillway.io/pool-max-size";

/// Errors of this module. Each names the object (and, for files, where it is).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML or JSON: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {message}")]
    Shape { file: String, message: String },
    #[error("{file}: item {index} ({kind} {name}): {message}")]
    Item {
        file: String,
        index: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{object}: invalid quantity {resource}={value:?}: {message}")]
    Quantity {
        object: String,
        resource: String,
        value: String,
        message: String,
    },
    #[error("kubernetes client: {0}")]
    Kube(String),
}

/// Label of spillway's IoT Edge virtual nodes: placement targets chosen by
/// selector, never burst capacity and never VM room.
pub const EDGE_NODE_LABEL: (&str, &str) = ("spillway.io/edge", "true");

/// Whether a node is an IoT Edge virtual node (see [`EDGE_NODE_LABEL`]).
pub fn is_edge_node(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(EDGE_NODE_LABEL.0))
        .map(String::as_str)
        == Some(EDGE_NODE_LABEL.1)
}

/// Decides which nodes are virtual (ACI) nodes. Edge nodes carry the
/// virtual-kubelet label and taint too, but are not burst capacity: they
/// never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualNodeMatcher {
    /// A node with any of these `key=value` labels is virtual.
    pub labels: Vec<(String, String)>,
    /// A node with a taint of any of these keys is virtual.
    pub taint_keys: Vec<String>,
    /// Node names that are always virtual (used when only names are known).
    pub names: BTreeSet<String>,
}

impl Default for VirtualNodeMatcher {
    fn default() -> Self {
        VirtualNodeMatcher {
            labels: vec![("type".into(), "virtual-kubelet".into())],
            taint_keys: vec![VIRTUAL_KUBELET_TAINT.into()],
            names: ["virtual-node-aci-linux", "spillway-aci"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl VirtualNodeMatcher {
    pub fn is_virtual(&self, node: &Node) -> bool {
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
        self.matches(
            node.metadata.name.as_deref().unwrap_or_default(),
            node.metadata.labels.as_ref(),
            taints.into_iter().flatten().map(|t| t.key.as_str()),
        )
    }

    /// The rule on the parts of a node it looks at (for raw node JSON).
    pub fn matches<'a>(
        &self,
        name: &str,
        labels: Option<&BTreeMap<String, String>>,
        mut taint_keys: impl Iterator<Item = &'a str>,
    ) -> bool {
        if is_edge_node(labels) {
            return false;
        }
        self.names.contains(name)
            || self
                .labels
                .iter()
                .any(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            || taint_keys.any(|key| self.taint_keys.iter().any(|k| k == key))
    }

    pub fn is_virtual_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// The command-line flags every role that reads the cluster shares.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ClusterFlags {
    /// Name of a virtual node, recognised when the scheduler sends only node names
    /// (repeat for several; nodes labelled type=virtual-kubelet or tainted
    /// virtual-kubelet.io/provider are recognised too).
    #[arg(long = "virtual-node-name", value_name = "NAME", default_values_t = ["virtual-node-aci-linux".to_string(), "spillway-aci".to_string()])]
    pub virtual_node_names: Vec<String>,
    /// Known VM pool bounds, NAME=MIN:MAX (repeatable; e.g. the cluster autoscaler's
    /// settings). Pools without one are assumed to grow by --pool-headroom nodes.
    #[arg(long = "pool-limit", value_name = "NAME=MIN:MAX", value_parser = parse_pool_limit)]
    pub pool_limits: Vec<(String, (u32, u32))>,
    /// Nodes a pool without --pool-limit (or pool-size labels) may still add
    /// beyond its current size.
    #[arg(long, default_value_t = 10)]
    pub pool_headroom: u32,
    /// Node label naming a node's VM pool (repeatable; the first present wins).
    #[arg(long = "pool-label", value_name = "KEY", default_values_t = POOL_LABELS.map(String::from))]
    pub pool_labels: Vec<String>,
}

impl ClusterFlags {
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            virtual_nodes: VirtualNodeMatcher {
                names: self.virtual_node_names.iter().cloned().collect(),
                ..VirtualNodeMatcher::default()
            },
            pool_limits: self.pool_limits.iter().cloned().collect(),
            default_pool_headroom: self.pool_headroom,
            pool_labels: self.pool_labels.clone(),
            ..ClusterConfig::default()
        }
    }
}

/// Settings for turning cluster objects into a `Snapshot`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub virtual_nodes: VirtualNodeMatcher,
    /// Node labels naming a node's pool, first match wins.
    pub pool_labels: Vec<String>,
    /// Known pool sizes `pool -> (min, max)` (from the cluster autoscaler's
    /// configuration, which is not visible on nodes). They win over the
    /// nodes' [`POOL_MIN_SIZE`]/[`POOL_MAX_SIZE`] labels; the cluster
    /// autoscaler's status, when published, wins over both.
    pub pool_limits: BTreeMap<String, (u32, u32)>,
    /// For a pool without known limits: `min` = its current node count and
    /// `max` = current + this. AKS does not publish autoscaler bounds on nodes;
    /// a modest default lets the engine predict scale-ups without pretending a
    /// pool can grow without end.
    pub default_pool_headroom: u32,
    /// Prices and ACI sizing, for burst usage.
    pub engine: EngineConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            virtual_nodes: VirtualNodeMatcher::default(),
            pool_labels: POOL_LABELS.iter().map(|s| s.to_string()).collect(),
            pool_limits: BTreeMap::new(),
            default_pool_headroom: 10,
            engine: EngineConfig::default(),
        }
    }
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    Timestamp::from_millis(t.0.as_millisecond())
}

/// `namespace/name` for messages.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Parse a CPU/memory resource list into `Resources` (other resources ignored).
pub fn resource_list(
    list: Option<&BTreeMap<String, Quantity>>,
    object: &str,
) -> Result<Resources, ClusterError> {
    let mut r = Resources::default();
    let Some(list) = list else { return Ok(r) };
    let bad = |resource: &str, value: &str, message: String| ClusterError::Quantity {
        object: object.to_string(),
        resource: resource.to_string(),
        value: value.to_string(),
        message,
    };
    if let Some(q) = list.get("cpu") {
        r.cpu_millis = parse_cpu_millis(&q.0).map_err(|m| bad("cpu", &q.0, m))?;
    }
    if let Some(q) = list.get("memory") {
        r.memory_bytes = parse_memory_bytes(&q.0).map_err(|m| bad("memory", &q.0, m))?;
    }
    Ok(r)
}

/// A container's declared cpu/memory requests and limits, parsed.
fn declared(c: &Container, object: &str) -> Result<Declared, ClusterError> {
    let res = c.resources.as_ref();
    let list = |l: Option<&BTreeMap<String, Quantity>>| {
        resource_list(l, object).map(|r| {
            let has = |k: &str| l.is_some_and(|m| m.contains_key(k));
            (
                has("cpu").then_some(r.cpu_millis),
                has("memory").then_some(r.memory_bytes),
            )
        })
    };
    let (cpu_request, memory_request) = list(res.and_then(|r| r.requests.as_ref()))?;
    let (cpu_limit, memory_limit) = list(res.and_then(|r| r.limits.as_ref()))?;
    Ok(Declared {
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    })
}

/// A container's requests; a resource with a limit but no request requests
/// its limit (the API server's defaulting, repeated for hand-written files).
fn container_requests(c: &Container, object: &str) -> Result<Resources, ClusterError> {
    declared(c, object).map(|d| d.kube_requests())
}

/// What the pod's ACI container group would request, under each
/// `aci.resources` mode ([`AciSize`]): its regular containers only (ACI's
/// init containers take no resources), with azure-aci's defaults.
pub fn pod_aci_size(pod: &Pod) -> Result<AciSize, ClusterError> {
    let object = pod_key(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(AciSize::default());
    };
    if spec.containers.is_empty() {
        // Only a slimmed pod has no containers (the API server requires
        // one): the group's size is in its annotation where the pod-level
        // total (which holds the requests) does not give it.
        let noted = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(slim::SLIM_ACI_SIZE_ANNOTATION))
            .and_then(|v| slim::parse_aci_size(v));
        if let Some(size) = noted {
            return Ok(size);
        }
        let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
        return Ok(AciSize::of_requests(&resource_list(pod_level, &object)?));
    }
    let containers = spec
        .containers
        .iter()
        .map(|c| declared(c, &object))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AciSize::of_containers(&containers))
}

fn max_each(a: Resources, b: Resources) -> Resources {
    Resources::new(
        a.cpu_millis.max(b.cpu_millis),
        a.memory_bytes.max(b.memory_bytes),
    )
}

/// What the scheduler reserves for a pod: per resource, the larger of the
/// regular containers (plus restartable init "sidecars") and the largest init
/// step, plus the pod overhead. Pod-level requests, when set, win.
pub fn pod_requests(pod: &Pod) -> Result<Resources, ClusterError> {
    let object = pod_key(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Resources::default());
    };
    let mut main = Resources::default();
    for c in &spec.containers {
        main = main.add(&container_requests(c, &object)?);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, &object)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.add(&r);
            init_peak = max_each(init_peak, sidecars);
        } else {
            init_peak = max_each(init_peak, r.add(&sidecars));
        }
    }
    let mut total = max_each(main.add(&sidecars), init_peak);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let p = resource_list(Some(pod_level), &object)?;
        if pod_level.contains_key("cpu") {
            total.cpu_millis = p.cpu_millis;
        }
        if pod_level.contains_key("memory") {
            total.memory_bytes = p.memory_bytes;
        }
    }
    let overhead = resource_list(spec.overhead.as_ref(), &object)?;
    Ok(total.add(&overhead))
}

/// Whether the pod tolerates the virtual node's `virtual-kubelet.io/provider=azure` taint.
pub fn tolerates_virtual(pod: &Pod) -> bool {
    let Some(tols) = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref()) else {
        return false;
    };
    tols.iter().any(|t| {
        let key = t.key.as_deref().unwrap_or("");
        let op = t.operator.as_deref().unwrap_or("Equal");
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoSchedule");
        let matches = match (key, op) {
            ("", "Exists") => true,
            (VIRTUAL_KUBELET_TAINT, "Exists") => true,
            (VIRTUAL_KUBELET_TAINT, "Equal") => t.value.as_deref() == Some("azure"),
            _ => false,
        };
        matches && effect_ok
    })
}

/// Why ACI cannot run this pod, if it cannot.
pub fn aci_incompatibility(pod: &Pod) -> Option<String> {
    let owned_by_daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    if owned_by_daemonset {
        return Some("owned by a DaemonSet".into());
    }
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return Some("uses hostNetwork".into());
    }
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            return Some(format!("volume {:?} is a hostPath", v.name));
        }
        if v.persistent_volume_claim.is_some() {
            return Some(format!("volume {:?} is a PersistentVolumeClaim", v.name));
        }
    }
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
            return Some(format!("container {:?} is privileged", c.name));
        }
    }
    None
}

pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Bound to a node (a non-empty `spec.nodeName`).
pub fn is_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Unbound, phase Pending (or unset), not being deleted, and not held back by
/// scheduling gates (the scheduler does not try a gated pod, so neither
/// bursting nor waiting applies to it yet).
pub fn is_pending(pod: &Pod) -> bool {
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !is_bound(pod)
        && !gated
        && matches!(phase, None | Some("Pending"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod became pending: the `PodScheduled=False` transition, else creation.
pub fn pending_since(pod: &Pod, fallback: Timestamp) -> Timestamp {
    let unschedulable_at = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.last_transition_time.as_ref())
        });
    unschedulable_at
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(ts)
        .unwrap_or(fallback)
}

/// A pod as the engine sees it. Fails only on an unparseable quantity.
pub fn pending_pod(
    pod: &Pod,
    now: Timestamp,
    cfg: &ClusterConfig,
) -> Result<PendingPod, ClusterError> {
    let spec = pod.spec.as_ref();
    let placement = constraints::pod_placement(pod);
    let pool = cfg
        .pool_labels
        .iter()
        .find_map(|k| placement.single_value(k).map(String::from));
    Ok(PendingPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        priority: spec.and_then(|s| s.priority).unwrap_or(0),
        requests: pod_requests(pod)?,
        aci: pod_aci_size(pod)?,
        pending_since: pending_since(pod, now),
        tolerates_virtual: tolerates_virtual(pod),
        aci_incompatible: aci_incompatibility(pod),
        pool,
        placement,
    })
}

pub fn node_pool(node: &Node, cfg: &ClusterConfig) -> String {
    let labels = node.metadata.labels.as_ref();
    cfg.pool_labels
        .iter()
        .find_map(|k| labels.and_then(|l| l.get(k)).cloned())
        .unwrap_or_default()
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Node allocatable; an unparseable value (never sent by a kubelet) counts as zero.
pub fn node_allocatable(node: &Node) -> Result<Resources, ClusterError> {
    let object = format!("node {}", node.metadata.name.as_deref().unwrap_or(""));
    resource_list(
        node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
        &object,
    )
}

/// Node allocatable `pods`, if the node reports a readable count.
pub fn node_max_pods(node: &Node) -> Option<u32> {
    let q = node.status.as_ref()?.allocatable.as_ref()?.get("pods")?;
    q.0.trim().parse::<u32>().ok()
}

/// Build the engine's snapshot from nodes and pods (see [`classify::classify`]).
pub fn snapshot_from<N: Borrow<Node>, P: Borrow<Pod>>(
    nodes: &[N],
    pods: &[P],
    now: Timestamp,
    cfg: &ClusterConfig,
) -> Snapshot {
    classify::classify(nodes, pods, now, cfg, None).snapshot
}

/// One `VmPool` per distinct pool label. A pool's node shape is the most
/// common allocatable among its nodes (ties: the larger), since a VMSS pool
/// has one VM size.
fn pools_from(
    nodes: &[VmNode],
    labelled: &BTreeMap<String, (u32, u32)>,
    cfg: &ClusterConfig,
) -> Vec<VmPool> {
    let mut by_pool: BTreeMap<&str, Vec<&VmNode>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| !n.pool.is_empty()) {
        by_pool.entry(n.pool.as_str()).or_default().push(n);
    }
    by_pool
        .into_iter()
        .map(|(name, members)| {
            let mut shapes: BTreeMap<(u64, u64), u32> = BTreeMap::new();
            let mut classes: BTreeMap<usize, u32> = BTreeMap::new();
            for n in &members {
                *shapes
                    .entry((n.allocatable.cpu_millis, n.allocatable.memory_bytes))
                    .or_default() += 1;
                *classes.entry(n.class).or_default() += 1;
            }
            // A new node gets the labels and taints most of the pool has
            // (ties: the first class seen, i.e. of the first node by name).
            let class = classes
                .iter()
                .max_by_key(|&(&c, &count)| (count, std::cmp::Reverse(c)))
                .map(|(&c, _)| c);
            let shape = shapes
                .iter()
                .max_by_key(|(k, count)| (**count, **k))
                .map(|(&(c, m), _)| Resources::new(c, m))
                .unwrap_or_default();
            let count = members.len() as u32;
            let (min, max) = cfg
                .pool_limits
                .get(name)
                .or_else(|| labelled.get(name))
                .copied()
                .unwrap_or((count, count.saturating_add(cfg.default_pool_headroom)));
            VmPool {
                name: name.to_string(),
                min,
                max,
                node_allocatable: shape,
                nodes: count,
                upcoming: Vec::new(),
                provision_time: None,
                class,
            }
        })
        .collect()
}

/// A node's [`POOL_MIN_SIZE`]/[`POOL_MAX_SIZE`] (label or annotation), when
/// both are present and make sense; anything else is logged and ignored.
fn pool_size_marks(node: &Node) -> Option<(u32, u32)> {
    let m = &node.metadata;
    let mark = |key: &str| {
        m.labels
            .as_ref()
            .and_then(|l| l.get(key))
            .or_else(|| m.annotations.as_ref().and_then(|a| a.get(key)))
    };
    let (min, max) = (mark(POOL_MIN_SIZE)?, mark(POOL_MAX_SIZE)?);
    match (min.trim().parse::<u32>(), max.trim().parse::<u32>()) {
        (Ok(min), Ok(max)) if min <= max => Some((min, max)),
        _ => {
            tracing::warn!(
                node = m.name.as_deref().unwrap_or_default(),
                min = %min,
                max = %max,
                "ignoring pool size marks: expected whole numbers with min <= max"
            );
            None
        }
    }
}

/// Parse a `--pool-limit` value: `NAME=MIN:MAX` (e.g. `nodepool1=3:20`).
pub fn parse_pool_limit(s: &str) -> Result<(String, (u32, u32)), String> {
    let err = || format!("invalid pool limit {s:?}: expected NAME=MIN:MAX, e.g. nodepool1=3:20");
    let (name, range) = s.split_once('=').ok_or_else(err)?;
    let (min, max) = range.split_once(':').ok_or_else(err)?;
    let min: u32 = min.trim().parse().map_err(|_| err())?;
    let max: u32 = max.trim().parse().map_err(|_| err())?;
    if name.trim().is_empty() || min > max {
        return Err(err());
    }
    Ok((name.trim().to_string(), (min, max)))
}

/// Names of the virtual nodes among `nodes`.
pub fn virtual_node_names<N: Borrow<Node>>(nodes: &[N], cfg: &ClusterConfig) -> BTreeSet<String> {
    nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|n: &&Node| cfg.virtual_nodes.is_virtual(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
