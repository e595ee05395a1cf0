//! Builders for `Pod` and `Node` objects, for tests, benches and examples:
//! `pod().ns("web").cpu("500m").build()` instead of copied YAML blobs.
//!
//! Builders produce what the API server would store (requests defaulted,
//! timestamps set); they never fail, so invalid quantities are possible on
//! purpose (to test error paths).

use crate::units::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Node, NodeCondition, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, PersistentVolumeClaimVolumeSource, Pod, PodCondition,
    PodSpec, PodStatus, ResourceRequirements, SecurityContext, Taint, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use std::collections::BTreeMap;

fn time(t: Timestamp) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(t.millis())
        .ok()
        .map(Time)
}

/// Start building a pending pod `default/pod` with one container `main`.
pub fn pod() -> PodBuilder {
    PodBuilder {
        pod: Pod {
            metadata: ObjectMeta {
                name: Some("pod".into()),
                namespace: Some("default".into()),
                uid: Some("00000000-0000-4000-8000-000000000000".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("nginx".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        },
    }
}

#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Pod,
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.pod.spec.get_or_insert_with(Default::default)
    }
    fn main_requests(&mut self) -> &mut BTreeMap<String, Quantity> {
        let c = &mut self.spec().containers[0];
        c.resources
            .get_or_insert_with(ResourceRequirements::default)
            .requests
            .get_or_insert_with(BTreeMap::new)
    }
    pub fn ns(mut self, ns: &str) -> Self {
        self.pod.metadata.namespace = Some(ns.into());
        self
    }
    /// A pod without `metadata.namespace` (invalid in a request).
    pub fn no_namespace(mut self) -> Self {
        self.pod.metadata.namespace = None;
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.pod.metadata.name = Some(name.into());
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.pod
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.pod
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn cpu(mut self, q: &str) -> Self {
        self.main_requests()
            .insert("cpu".into(), Quantity(q.into()));
        self
    }
    pub fn memory(mut self, q: &str) -> Self {
        self.main_requests()
            .insert("memory".into(), Quantity(q.into()));
        self
    }
    /// Add a container with these requests.
    pub fn container(mut self, name: &str, cpu: &str, memory: &str) -> Self {
        self.spec().containers.push(requesting(name, cpu, memory));
        self
    }
    /// Add a (run-to-completion) init container with these requests.
    pub fn init_container(mut self, name: &str, cpu: &str, memory: &str) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(requesting(name, cpu, memory));
        self
    }
    /// Add a restartable init container (sidecar) with these requests.
    pub fn sidecar(mut self, name: &str, cpu: &str, memory: &str) -> Self {
        let mut c = requesting(name, cpu, memory);
        c.restart_policy = Some("Always".into());
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(c);
        self
    }
    pub fn overhead(mut self, cpu: &str, memory: &str) -> Self {
        self.spec().overhead = Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ]));
        self
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }
    /// Tolerate the virtual node taint (`virtual-kubelet.io/provider=azure`, as the AKS docs show).
    pub fn tolerate_virtual(self) -> Self {
        self.toleration(Toleration {
            key: Some(super::VIRTUAL_KUBELET_TAINT.into()),
            operator: Some("Equal".into()),
            value: Some("azure".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        })
    }
    pub fn toleration(mut self, t: Toleration) -> Self {
        self.spec().tolerations.get_or_insert_with(Vec::new).push(t);
        self
    }
    pub fn created(mut self, t: Timestamp) -> Self {
        self.pod.metadata.creation_timestamp = time(t);
        self
    }
    /// `PodScheduled=False` since `t` (the scheduler found no node at `t`).
    pub fn unschedulable_since(mut self, t: Timestamp) -> Self {
        let status = self.pod.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                last_transition_time: time(t),
                ..Default::default()
            });
        self
    }
    /// Bound to `node` and running.
    pub fn on_node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.into());
        self.phase("Running")
    }
    pub fn phase(mut self, phase: &str) -> Self {
        self.pod.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }
    pub fn deleting(mut self) -> Self {
        self.pod.metadata.deletion_timestamp = time(Timestamp::from_secs(0));
        self
    }
    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// Add `key operator values` to the first required node affinity term
    /// (creating it): e.g. `require_node("agentpool", "In", &["nodepool1"])`.
    pub fn require_node(mut self, key: &str, operator: &str, values: &[&str]) -> Self {
        let affinity = self.spec().affinity.get_or_insert_with(Default::default);
        let required = affinity
            .node_affinity
            .get_or_insert_with(Default::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Default::default);
        if required.node_selector_terms.is_empty() {
            required
                .node_selector_terms
                .push(NodeSelectorTerm::default());
        }
        required.node_selector_terms[0]
            .match_expressions
            .get_or_insert_with(Vec::new)
            .push(NodeSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            });
        self
    }
    pub fn host_path(mut self, volume: &str) -> Self {
        self.spec()
            .volumes
            .get_or_insert_with(Vec::new)
            .push(Volume {
                name: volume.into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/var/log".into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        self
    }
    pub fn pvc(mut self, volume: &str) -> Self {
        self.spec()
            .volumes
            .get_or_insert_with(Vec::new)
            .push(Volume {
                name: volume.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: volume.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        self
    }
    pub fn privileged(mut self) -> Self {
        self.spec().containers[0].security_context = Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        self
    }
    pub fn host_network(mut self) -> Self {
        self.spec().host_network = Some(true);
        self
    }
    pub fn owned_by(mut self, kind: &str, name: &str) -> Self {
        self.pod
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                controller: Some(true),
                ..Default::default()
            });
        self
    }
    pub fn build(self) -> Pod {
        self.pod
    }
}

fn requesting(name: &str, cpu: &str, memory: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Start building a Ready, schedulable node with 4 CPU / 16Gi allocatable.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder {
        node: Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("4".into())),
                    ("memory".to_string(), Quantity("16Gi".into())),
                    ("pods".to_string(), Quantity("110".into())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        },
    }
}

#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    fn allocatable(&mut self) -> &mut BTreeMap<String, Quantity> {
        self.node
            .status
            .get_or_insert_with(Default::default)
            .allocatable
            .get_or_insert_with(BTreeMap::new)
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.node
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    /// `agentpool=<pool>`, as AKS labels its nodes.
    pub fn pool(self, pool: &str) -> Self {
        self.label("agentpool", pool)
    }
    pub fn cpu(mut self, q: &str) -> Self {
        self.allocatable().insert("cpu".into(), Quantity(q.into()));
        self
    }
    pub fn memory(mut self, q: &str) -> Self {
        self.allocatable()
            .insert("memory".into(), Quantity(q.into()));
        self
    }
    /// Allocatable pod count (110 by default, as a kubelet's `maxPods`).
    pub fn max_pods(mut self, n: u32) -> Self {
        self.allocatable()
            .insert("pods".into(), Quantity(n.to_string()));
        self
    }
    /// Labels and taint of the AKS virtual node (`type=virtual-kubelet`, `virtual-kubelet.io/provider=azure:NoSchedule`).
    pub fn virtual_kubelet(self) -> Self {
        self.label("type", "virtual-kubelet")
            .taint(super::VIRTUAL_KUBELET_TAINT, "azure")
    }
    pub fn taint(mut self, key: &str, value: &str) -> Self {
        self.node
            .spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.into(),
                value: Some(value.into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        self
    }
    pub fn cordoned(mut self) -> Self {
        self.node
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        self
    }
    pub fn not_ready(mut self) -> Self {
        if let Some(cs) = self
            .node
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
        {
            for c in cs.iter_mut().filter(|c| c.type_ == "Ready") {
                c.status = "False".into();
            }
        }
        self
    }
    pub fn build(self) -> Node {
        self.node
    }
}
