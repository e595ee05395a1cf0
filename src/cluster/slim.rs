//! What the cluster view keeps of a watched (or loaded) object.
//!
//! At 50,000 pods the whole objects cost gigabytes, most of it fields
//! spillway never reads: managedFields, env, images, probes, container
//! statuses, node images. Objects are slimmed once, before they enter the
//! reflector stores (`view::run_reflectors`) or the cluster-state file's
//! object lists (`load`), keeping every field that the view's readers use:
//! `snapshot_from` and the functions it calls (`pending_pod`,
//! `pod_requests`, `aci_incompatibility`, `constraints`), the autoscaler's
//! `observe` and learner, and the extender's reservations.
//!
//! What it must not do: slim an object that is written back or acted on.
//! Writers GET the pod first (`autoscaler::act`), and the embedded provider
//! watches the pods of its own node with its own, unslimmed, store.
//!
//! A reader of a new field must keep it here; `tests` compares every
//! reader's result on full and slimmed objects.

use crate::autoscaler::plan::DELETION_COST_ANNOTATION;
use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec,
    PodStatus, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Annotations kept on pods: the ones spillway reads (the deletion cost of
/// burst pods) and its own. Others (`kubectl.kubernetes.io/last-applied-configuration`,
/// checksums, tool state) are dropped.
fn keep_pod_annotation(key: &str) -> bool {
    key == DELETION_COST_ANNOTATION || key.starts_with("spillway.io/")
}

/// Annotations kept on nodes: spillway's own (pool size marks).
fn keep_node_annotation(key: &str) -> bool {
    key.starts_with("spillway.io/")
}

fn slim_meta(meta: &mut ObjectMeta, keep_annotation: fn(&str) -> bool) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| keep_annotation(k));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A container as far as requests and ACI compatibility go.
fn slim_container(c: Container) -> Container {
    Container {
        name: c.name,
        resources: c.resources,
        restart_policy: c.restart_policy,
        security_context: c
            .security_context
            .and_then(|s| s.privileged)
            .map(|privileged| SecurityContext {
                privileged: Some(privileged),
                ..Default::default()
            }),
        ..Default::default()
    }
}

/// Volumes only say whether ACI can mount them (hostPath and PVCs cannot).
fn slim_volume(v: Volume) -> Volume {
    Volume {
        name: v.name,
        host_path: v.host_path,
        persistent_volume_claim: v.persistent_volume_claim,
        ..Default::default()
    }
}

fn slim_pod_spec(s: PodSpec) -> PodSpec {
    PodSpec {
        node_name: s.node_name,
        priority: s.priority,
        priority_class_name: s.priority_class_name,
        scheduling_gates: s.scheduling_gates,
        containers: s.containers.into_iter().map(slim_container).collect(),
        init_containers: s
            .init_containers
            .map(|cs| cs.into_iter().map(slim_container).collect()),
        resources: s.resources,
        overhead: s.overhead,
        tolerations: s.tolerations,
        host_network: s.host_network,
        volumes: s
            .volumes
            .map(|vs| vs.into_iter().map(slim_volume).collect()),
        node_selector: s.node_selector,
        // Only node affinity decides where a pod may go in the engine.
        affinity: s
            .affinity
            .and_then(|a| a.node_affinity)
            .map(|node_affinity| Affinity {
                node_affinity: Some(node_affinity),
                ..Default::default()
            }),
        ..Default::default()
    }
}

fn slim_pod_status(s: PodStatus) -> PodStatus {
    PodStatus {
        phase: s.phase,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .map(|c| PodCondition {
                    message: None,
                    last_probe_time: None,
                    ..c
                })
                .collect()
        }),
        ..Default::default()
    }
}

/// Keep what the view's readers use of a pod (see the module doc).
pub fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata, keep_pod_annotation);
    pod.spec = pod.spec.take().map(slim_pod_spec);
    pod.status = pod.status.take().map(slim_pod_status);
}

/// Keep what the view's readers use of a node: labels, taints,
/// schedulability, allocatable and conditions.
pub fn slim_node(node: &mut Node) {
    slim_meta(&mut node.metadata, keep_node_annotation);
    node.spec = node.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        unschedulable: s.unschedulable,
        ..Default::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        allocatable: s.allocatable,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .map(|c| NodeCondition {
                    message: None,
                    last_heartbeat_time: None,
                    ..c
                })
                .collect()
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests;
