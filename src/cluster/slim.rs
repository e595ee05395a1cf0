//! What the cluster view keeps of a watched (or loaded) object.
//!
//! At 50,000 pods the whole objects cost gigabytes, most of it fields
//! spillway never reads: managedFields, env, images, probes, container
//! statuses, node images. Objects are slimmed once, before they enter the
//! view's stores (`view::run_reflectors`; pods bound to a node are kept
//! as even smaller records there, `bound::BoundPod`) or the cluster-state file's
//! object lists (`load`), keeping every field that the view's readers use:
//! `snapshot_from` and the functions it calls (`pending_pod`,
//! `pod_requests`, `pod_aci_size`, `aci_incompatibility`, `constraints`), the autoscaler's
//! `observe` and learner, and the extender's reservations.
//!
//! What it must not do: slim an object that is written back or acted on.
//! Writers GET the pod first (`autoscaler::act`), and the embedded provider
//! watches the pods of its own node with its own, unslimmed, store.
//!
//! A reader of a new field must keep it here; `tests` compares every
//! reader's result on full and slimmed objects.

use super::{pod_aci_size, pod_requests};
use crate::autoscaler::plan::DELETION_COST_ANNOTATION;
use crate::decision::AciSize;
use crate::units::Resources;
use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec,
    PodStatus, ResourceRequirements, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// On a slimmed pod whose ACI group the pod-level total does not size
/// (several containers, defaults, limits above requests): the group's
/// [`AciSize`] as `cpu,memory,raised cpu,raised memory` (millicores, bytes).
/// Read by `pod_aci_size` only on a pod without containers, which only
/// slimming makes (the API server requires a container), so it is never
/// taken from a pod as written.
pub(super) const SLIM_ACI_SIZE_ANNOTATION: &str = "spillway.io/slim-aci-size";

fn format_aci_size(a: &AciSize) -> String {
    format!(
        "{},{},{},{}",
        a.requests.cpu_millis, a.requests.memory_bytes, a.raised.cpu_millis, a.raised.memory_bytes
    )
}

/// [`SLIM_ACI_SIZE_ANNOTATION`]'s value, when well-formed.
pub(super) fn parse_aci_size(v: &str) -> Option<AciSize> {
    let n: Vec<u64> = v
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [cpu, memory, raised_cpu, raised_memory] = n[..] else {
        return None;
    };
    Some(AciSize {
        requests: Resources::new(cpu, memory),
        raised: Resources::new(raised_cpu, raised_memory),
    })
}

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

/// What ACI compatibility reads of a container: its name, if privileged.
fn privileged_only(c: &Container) -> Option<Container> {
    let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
    privileged.then(|| Container {
        name: c.name.clone(),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A container as far as requests and ACI compatibility go.
fn slim_container(c: Container) -> Container {
    let privileged = privileged_only(&c).and_then(|p| p.security_context);
    Container {
        name: c.name,
        resources: c.resources,
        restart_policy: c.restart_policy,
        security_context: privileged,
        ..Default::default()
    }
}

/// `pod_requests` as a pod-level request list (which `pod_requests` reads
/// first): one small map instead of whole containers (2 KB each in memory
/// before any field is set).
fn requests_as_pod_level(requests: Resources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}m", requests.cpu_millis)),
            ),
            (
                "memory".to_string(),
                Quantity(requests.memory_bytes.to_string()),
            ),
        ])),
        ..Default::default()
    }
}

fn slim_pod_spec(s: PodSpec, requests: Option<Resources>) -> PodSpec {
    let pending = s.node_name.as_deref().is_none_or(str::is_empty);
    let mut out = match requests {
        // The requests, the overhead included, as pod-level requests; of the
        // containers only the privileged ones of a pending pod (ACI refuses
        // them, by name). The ACI group's size goes to an annotation where
        // the total does not give it (`slim_pod`).
        Some(total) => PodSpec {
            containers: if pending {
                s.containers.iter().filter_map(privileged_only).collect()
            } else {
                Vec::new()
            },
            init_containers: Some(
                s.init_containers
                    .iter()
                    .flatten()
                    .filter_map(privileged_only)
                    .collect::<Vec<_>>(),
            )
            .filter(|v| pending && !v.is_empty()),
            resources: Some(requests_as_pod_level(total)),
            ..Default::default()
        },
        None => PodSpec {
            containers: s.containers.into_iter().map(slim_container).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(slim_container).collect()),
            resources: s.resources,
            overhead: s.overhead,
            ..Default::default()
        },
    };
    out.node_name = s.node_name;
    if !pending {
        // Placement, priority and ACI compatibility are read of pending
        // pods only (a binding is final; writers GET the pod first).
        return out;
    }
    PodSpec {
        priority: s.priority,
        scheduling_gates: s.scheduling_gates,
        tolerations: s.tolerations,
        host_network: s.host_network,
        volumes: s
            .volumes
            .map(|vs| {
                vs.into_iter()
                    .filter(|v| v.host_path.is_some() || v.persistent_volume_claim.is_some())
                    .map(|v| Volume {
                        name: v.name,
                        host_path: v.host_path,
                        persistent_volume_claim: v.persistent_volume_claim,
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty()),
        node_selector: s.node_selector,
        // Only node affinity decides where a pod may go in the engine.
        affinity: s
            .affinity
            .and_then(|a| a.node_affinity)
            .map(|node_affinity| Affinity {
                node_affinity: Some(node_affinity),
                ..Default::default()
            }),
        ..out
    }
}

/// The conditions anyone reads: when the pod was (or failed to be)
/// scheduled, and whether it is Ready.
fn slim_pod_status(s: PodStatus) -> PodStatus {
    PodStatus {
        phase: s.phase,
        conditions: s
            .conditions
            .map(|cs| {
                cs.into_iter()
                    .filter(|c| c.type_ == "PodScheduled" || c.type_ == "Ready")
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        last_transition_time: c.last_transition_time,
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|cs| !cs.is_empty()),
        ..Default::default()
    }
}

/// Keep what the view's readers use of a pod (see the module doc). The
/// containers' requests become one pod-level request list holding what
/// `pod_requests` computes (unless a quantity does not parse: then the
/// containers stay, with their resources only).
pub fn slim_pod(pod: &mut Pod) {
    let requests = pod_requests(pod).ok();
    let aci = pod_aci_size(pod).ok();
    slim_meta(&mut pod.metadata, keep_pod_annotation);
    pod.metadata.generate_name = None;
    if let Some(a) = pod.metadata.annotations.as_mut() {
        // Only slimming writes it: one arriving on a pod is not believed.
        a.remove(SLIM_ACI_SIZE_ANNOTATION);
    }
    if let (Some(total), Some(aci)) = (requests, aci)
        && aci != AciSize::of_requests(&total)
    {
        pod.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(SLIM_ACI_SIZE_ANNOTATION.to_string(), format_aci_size(&aci));
    }
    pod.spec = pod.spec.take().map(|s| slim_pod_spec(s, requests));
    pod.status = pod.status.take().map(slim_pod_status);
}

/// Keep what the view's readers use of a node: labels, taints,
/// schedulability, allocatable CPU, memory and pod count, and its Ready
/// condition.
pub fn slim_node(node: &mut Node) {
    slim_meta(&mut node.metadata, keep_node_annotation);
    node.spec = node.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        unschedulable: s.unschedulable,
        ..Default::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        allocatable: s.allocatable.map(|mut a| {
            a.retain(|k, _| k == "cpu" || k == "memory" || k == "pods");
            a
        }),
        // Readiness decides whether a node takes pods, and when it became
        // Ready how long provisioning took.
        conditions: s
            .conditions
            .map(|cs| {
                cs.into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|c| NodeCondition {
                        type_: c.type_,
                        status: c.status,
                        last_transition_time: c.last_transition_time,
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|cs| !cs.is_empty()),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests;
