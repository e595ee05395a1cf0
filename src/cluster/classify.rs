//! One pass from Kubernetes objects to the typed view every consumer reads:
//! each pod is classified once — pending (with what the engine needs to
//! judge where it may go), on the virtual node ([`BurstPod`]), a capacity
//! placeholder ([`Placeholder`]), on a VM (its requests counted on the
//! node), or finished — and each VM node once (pool, room, class).
//!
//! The engine reads the [`Snapshot`]; the autoscaler reads the burst pods,
//! placeholders and pending controllers from the same pass, never the
//! objects. Pure: no I/O, `now` is an argument.

use super::bound::{BoundPod, controller, is_compactable};
use super::constraints;
use super::{
    ClusterConfig, ClusterError, is_pending, is_terminal, node_allocatable, node_pool, node_ready,
    pending_pod, pod_requests, pool_size_marks, pools_from,
};
use crate::decision::{BurstUsage, NodeClass, RaisableBurst, Snapshot, VmNode};
use crate::units::{Resources, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Label on a placeholder pod: the UID of the burst pod it stands in for.
pub const PLACEHOLDER_FOR_LABEL: &str = "spillway.io/placeholder-for";
/// Label on every object spillway creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "spillway";
/// The annotation ReplicaSets read to pick which pods to remove first.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The controller that owns a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A pod running (or starting) on the virtual node.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub owner: Option<Owner>,
    /// When it was bound to the virtual node.
    pub bound_at: Timestamp,
    /// Ready on ACI (never evict a pod that is still starting).
    pub ready: bool,
    /// Being deleted already.
    pub terminating: bool,
    /// Its current `pod-deletion-cost`, if any.
    pub deletion_cost: Option<i64>,
    /// A PodDisruptionBudget covering it allows no disruption now (as its
    /// status says; the Eviction API stays the authority).
    pub pdb_blocked: bool,
}

/// A capacity placeholder pod that exists in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Placeholder {
    pub name: String,
    /// UID of the burst pod it stands in for.
    pub for_uid: String,
    /// The VM node it runs on, if scheduled.
    pub node: Option<String>,
    /// What it holds (the burst pod's requests).
    pub requests: Resources,
}

/// The cluster as the engine and the autoscaler see it, from one pass.
#[derive(Debug, Clone, Default)]
pub struct Classified {
    pub snapshot: Snapshot,
    /// Live pods on a virtual node, by namespace and name.
    pub burst: Vec<BurstPod>,
    /// Placeholders in the placeholder namespace (when one was given), by name.
    pub placeholders: Vec<Placeholder>,
    /// UIDs of controllers with a pod waiting for a node (no node yet, not
    /// terminating): an eviction's replacement that has not landed.
    pub pending_owners: BTreeSet<String>,
}

/// Whether a pod is one of spillway's placeholders (the engine must not decide for them).
pub fn is_placeholder(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(PLACEHOLDER_FOR_LABEL))
}

fn placeholder(pod: &Pod) -> Option<Placeholder> {
    Some(Placeholder {
        name: pod.metadata.name.clone()?,
        for_uid: pod
            .metadata
            .labels
            .as_ref()?
            .get(PLACEHOLDER_FOR_LABEL)?
            .clone(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        requests: pod_requests(pod).unwrap_or_default(),
    })
}

/// Classify every node and pod once. `placeholder_namespace`: where
/// spillway's placeholders live (`None`: placeholders are only left out of
/// the engine's view, as the extender and `explain` need).
///
/// Objects from the API server are validated, so a bad quantity only comes
/// from a hand-written file (which `load` rejects first); here it counts as
/// zero and is logged rather than failing the whole view.
pub fn classify<N: Borrow<Node>, P: Borrow<Pod>>(
    nodes: &[N],
    pods: &[P],
    now: Timestamp,
    cfg: &ClusterConfig,
    placeholder_namespace: Option<&str>,
) -> Classified {
    classify_with(
        nodes,
        pods,
        &[] as &[BoundPod],
        now,
        cfg,
        placeholder_namespace,
    )
}

/// [`classify`] of whole pods plus the records of bound pods the view keeps
/// instead of whole ones ([`BoundPod`]); a whole bound pod counts as its
/// record would, so both forms of a pod give the same result.
pub fn classify_with<N: Borrow<Node>, P: Borrow<Pod>, B: Borrow<BoundPod>>(
    nodes: &[N],
    pods: &[P],
    bound: &[B],
    now: Timestamp,
    cfg: &ClusterConfig,
    placeholder_namespace: Option<&str>,
) -> Classified {
    let lenient = |r: Result<Resources, ClusterError>| {
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unparseable quantity");
            Resources::default()
        })
    };
    let mut virtual_names = BTreeSet::new();
    let mut vm_index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut vm_nodes: Vec<VmNode> = Vec::new();
    let mut labelled_bounds: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut classes: Vec<NodeClass> = Vec::new();
    let mut class_index: HashMap<NodeClass, usize> = HashMap::new();
    // Node order decides first-fit placement: make it independent of the
    // order a store or file happens to list them in.
    let mut sorted: Vec<&Node> = nodes.iter().map(Borrow::borrow).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in sorted {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        // Neither burst capacity nor VM room: its pods count nowhere.
        if super::is_edge_node(node.metadata.labels.as_ref()) {
            continue;
        }
        if cfg.virtual_nodes.is_virtual(node) {
            virtual_names.insert(name);
            continue;
        }
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let pool = node_pool(node, cfg);
        if !pool.is_empty()
            && !labelled_bounds.contains_key(&pool)
            && let Some(bounds) = pool_size_marks(node)
        {
            labelled_bounds.insert(pool.clone(), bounds);
        }
        let class = *class_index
            .entry(constraints::node_class(node))
            .or_insert_with_key(|c| {
                classes.push(c.clone());
                classes.len() - 1
            });
        vm_index.insert(name, vm_nodes.len());
        vm_nodes.push(VmNode {
            name: name.to_string(),
            pool,
            allocatable: lenient(node_allocatable(node)),
            allocated: Resources::default(),
            schedulable: !unschedulable && node_ready(node),
            class,
            pods: 0,
            max_pods: super::node_max_pods(node),
        });
    }

    let mut out = Classified::default();
    let mut pending = Vec::new();
    let mut burst_usage: BTreeMap<String, BurstUsage> = BTreeMap::new();
    let mut raisable = Vec::new();
    let mut records = Vec::new();
    for pod in pods {
        let pod: &Pod = pod.borrow();
        if is_compactable(pod) {
            records.push(BoundPod::from_pod(pod));
            continue;
        }
        // Unbound (or a placeholder).
        if !super::is_bound(pod) && pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod) {
            out.pending_owners.extend(controller(pod).map(|o| o.uid));
        }
        // Capacity placeholders hold VM room for burst pods; any real pod may
        // preempt them, so the engine sees neither their demand nor their room.
        if is_placeholder(pod) {
            if placeholder_namespace.is_some_and(|ns| pod.metadata.namespace.as_deref() == Some(ns))
                && pod.metadata.deletion_timestamp.is_none()
            {
                out.placeholders.extend(placeholder(pod));
            }
            continue;
        }
        if is_pending(pod) {
            match pending_pod(pod, now, cfg) {
                Ok(p) => pending.push(p),
                Err(e) => tracing::warn!(error = %e, "skipping pending pod"),
            }
        }
    }
    for pod in records.iter().chain(bound.iter().map(Borrow::borrow)) {
        if pod.terminal {
            continue;
        }
        let node_name: &str = &pod.node;
        if virtual_names.contains(node_name) || cfg.virtual_nodes.is_virtual_name(node_name) {
            // The engine counts what ACI bills; the autoscaler moves pods
            // whose requests it can read (the extender reports the others).
            let group = pod.aci.requests;
            burst_usage
                .entry(pod.namespace().to_string())
                .or_default()
                .add(&group, cfg.engine.prices.aci_hourly(&group));
            if pod.aci.raised != group {
                raisable.push(RaisableBurst {
                    namespace: pod.namespace().to_string(),
                    labels: pod.labels_map(),
                    extra: pod.aci.raised.saturating_sub(&group),
                });
            }
            if let Ok(r) = &pod.requests {
                out.burst.extend(pod.burst_pod(*r, now));
            }
        } else if let Some(&i) = vm_index.get(node_name) {
            let requests = match &pod.requests {
                Ok(r) => *r,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring unparseable quantity");
                    Resources::default()
                }
            };
            vm_nodes[i].allocated = vm_nodes[i].allocated.add(&requests);
            vm_nodes[i].pods = vm_nodes[i].pods.saturating_add(1);
        }
    }
    out.burst
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.placeholders.sort_by(|a, b| a.name.cmp(&b.name));
    out.snapshot = Snapshot {
        now,
        pools: pools_from(&vm_nodes, &labelled_bounds, cfg),
        nodes: vm_nodes,
        pending,
        burst_usage,
        raisable,
        aci_quota: Default::default(),
        classes: classes.into(),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{node, pod};

    #[test]
    fn every_pod_is_classified_once() {
        let now = Timestamp::from_secs(1_000);
        let nodes = vec![
            node("vm-0").pool("p1").build(),
            node("spillway-aci").virtual_kubelet().build(),
        ];
        let on_aci = pod()
            .ns("web")
            .name("a")
            .cpu("500m")
            .memory("1Gi")
            .on_node("spillway-aci")
            .phase("Running")
            .owned_by("ReplicaSet", "web-7d9")
            .build();
        let on_vm = pod()
            .ns("web")
            .name("b")
            .cpu("1")
            .on_node("vm-0")
            .phase("Running")
            .build();
        let done = pod()
            .ns("web")
            .name("c")
            .on_node("spillway-aci")
            .phase("Succeeded")
            .build();
        let waiting = pod()
            .ns("web")
            .name("d")
            .owned_by("ReplicaSet", "web-7d9")
            .build();
        let mut holder = pod()
            .ns("spillway-system")
            .name("ph")
            .cpu("500m")
            .label(PLACEHOLDER_FOR_LABEL, "uid-a")
            .on_node("vm-0")
            .build();
        let elsewhere = pod()
            .ns("other")
            .name("ph2")
            .label(PLACEHOLDER_FOR_LABEL, "uid-x")
            .build();
        holder.metadata.uid = Some("ph-uid".into());
        let pods = [on_aci, on_vm, done, waiting, holder, elsewhere];
        let c = classify(
            &nodes,
            &pods,
            now,
            &ClusterConfig::default(),
            Some("spillway-system"),
        );
        assert_eq!(c.burst.len(), 1);
        let b = &c.burst[0];
        assert_eq!((b.namespace.as_str(), b.name.as_str()), ("web", "a"));
        assert_eq!(b.requests, Resources::new(500, 1024 * 1024 * 1024));
        assert_eq!(
            b.owner.as_ref().map(|o| o.kind.as_str()),
            Some("ReplicaSet")
        );
        assert!(!b.terminating);
        assert_eq!(b.deletion_cost, None);
        // The engine sees the pending pod, the VM pod's requests and the
        // burst usage, never a placeholder.
        let s = &c.snapshot;
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.pending[0].name, "d");
        assert_eq!(s.nodes[0].allocated.cpu_millis, 1000);
        assert_eq!(s.burst_usage.get("web").map(|u| u.pods), Some(1));
        // Only placeholders in the placeholder namespace count as such.
        assert_eq!(c.placeholders.len(), 1);
        assert_eq!(c.placeholders[0].for_uid, "uid-a");
        assert_eq!(c.placeholders[0].node.as_deref(), Some("vm-0"));
        let owners: Vec<&str> = c.pending_owners.iter().map(String::as_str).collect();
        assert_eq!(owners.len(), 1, "the waiting pod's controller: {owners:?}");
        // An IoT Edge node is neither burst capacity nor VM room.
        let mut edge = node("edge-munich")
            .virtual_kubelet()
            .label("spillway.io/edge", "true")
            .build();
        edge.metadata.name = Some("edge-munich".into());
        let on_edge = pod()
            .ns("web")
            .name("sensor")
            .on_node("edge-munich")
            .phase("Running")
            .build();
        let with_edge = classify(
            &[nodes[0].clone(), nodes[1].clone(), edge],
            &[pods[0].clone(), on_edge],
            now,
            &ClusterConfig::default(),
            None,
        );
        assert_eq!(with_edge.snapshot.nodes.len(), 1, "only vm-0 is VM room");
        assert_eq!(with_edge.burst.len(), 1, "only the pod on spillway-aci");
        assert_eq!(
            with_edge.snapshot.burst_usage.get("web").map(|u| u.pods),
            Some(1)
        );
        // Without a placeholder namespace, nothing is listed as one.
        let plain = classify(&nodes, &pods, now, &ClusterConfig::default(), None);
        assert!(plain.placeholders.is_empty());
        assert_eq!(plain.snapshot, c.snapshot);
    }
}
