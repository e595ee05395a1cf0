//! The virtual node object and its Lease, as pure functions of the
//! provider's settings, the last usage answer and the backend's health.
//! What differs per backend (taint value, role labels, the names in
//! condition messages) is the settings' [`NodeProfile`].
//!
//! Nothing here talks to the API server; `mod.rs` writes what these build.

use crate::aci::Usage;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Pod, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use std::collections::BTreeMap;

/// Namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The taint the AKS virtual node carries; manifests tolerate exactly this.
pub const TAINT_KEY: &str = "virtual-kubelet.io/provider";
pub const TAINT_VALUE: &str = "azure";
/// Reported as `nodeInfo.kubeletVersion` (virtual-kubelet reports its own
/// version there; tools only check it is non-empty and parseable).
pub const KUBELET_VERSION: &str = "v1.33.0-spillway";
/// The label naming a node's (and, on a pod, its wanted) operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";
/// Operating systems a virtual node runs (`NodeSettings::os`, the value of
/// [`OS_LABEL`]).
pub const OS_LINUX: &str = "linux";
pub const OS_WINDOWS: &str = "windows";
/// Ready condition reasons.
pub const REASON_READY: &str = "KubeletReady";
pub const REASON_ACI_UNREACHABLE: &str = "AciUnreachable";

/// What the node says about itself, besides usage and health.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub name: String,
    /// `InternalIP` address (where the kubelet endpoint listens).
    pub internal_ip: String,
    /// Port of the kubelet endpoint (`kubectl logs`).
    pub kubelet_port: u16,
    /// Memory reported per core left (GiB).
    pub memory_gib_per_core: f64,
    /// Operating system of the pods this node runs.
    pub os: String,
    /// What the backend makes the node say about itself.
    pub profile: NodeProfile,
}

/// The backend-specific part of the node: its taint, role labels and the
/// names its conditions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProfile {
    /// Value of the [`TAINT_KEY`] taint (`azure` for ACI, as the AKS virtual node).
    pub taint_value: String,
    /// Labels besides the common virtual-kubelet ones (ACI:
    /// `spillway.io/virtual=true`, which marks burst capacity).
    pub labels: BTreeMap<String, String>,
    /// The backend as people call it, in condition messages (`ACI`).
    pub system: String,
    /// `nodeInfo.containerRuntimeVersion`.
    pub runtime_version: String,
    /// Ready=False reason while the backend is unreachable.
    pub unreachable_reason: String,
}

impl NodeProfile {
    /// The ACI virtual node.
    pub fn aci() -> Self {
        Self {
            taint_value: TAINT_VALUE.into(),
            labels: BTreeMap::from([("spillway.io/virtual".to_string(), "true".to_string())]),
            system: "ACI".into(),
            runtime_version: "aci://2023-05-01".into(),
            unreachable_reason: REASON_ACI_UNREACHABLE.into(),
        }
    }
}

/// The labels manifests written for the AKS virtual node select on.
pub fn node_labels(settings: &NodeSettings) -> BTreeMap<String, String> {
    [
        ("type", "virtual-kubelet"),
        ("kubernetes.io/role", "agent"),
        ("kubernetes.io/os", settings.os.as_str()),
        ("beta.kubernetes.io/os", settings.os.as_str()),
        ("kubernetes.io/hostname", settings.name.as_str()),
        ("kubernetes.azure.com/managed", "false"),
        (
            "alpha.service-controller.kubernetes.io/exclude-balancer",
            "true",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(settings.profile.labels.clone())
    .collect()
}

pub fn node_taints(profile: &NodeProfile) -> Vec<Taint> {
    vec![Taint {
        key: TAINT_KEY.to_string(),
        value: Some(profile.taint_value.clone()),
        effect: "NoSchedule".to_string(),
        time_added: None,
    }]
}

/// Capacity from the ACI quota: cpu = cores left, memory = cores left ×
/// ratio, pods = container groups left. With no usage answer yet, zero:
/// nothing is scheduled before the quota is known.
pub fn capacity(usage: Option<&Usage>, memory_gib_per_core: f64) -> BTreeMap<String, Quantity> {
    let cores = usage.map(|u| u.cores.available()).unwrap_or(0);
    let groups = usage.map(|u| u.container_groups.available()).unwrap_or(0);
    // Whole MiB, so the quantity is an exact integer.
    let memory_mib = (cores as f64 * memory_gib_per_core.max(0.0) * 1024.0).floor() as i64;
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cores.to_string())),
        ("memory".to_string(), Quantity(format!("{memory_mib}Mi"))),
        ("pods".to_string(), Quantity(groups.to_string())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ])
}

/// What this node's own live pods hold of the quota.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnUse {
    pub cores: f64,
    pub groups: i64,
}

/// The quota as the scheduler must see it. The scheduler subtracts the
/// requests of the pods bound to this node from its allocatable, so what
/// they already hold of the quota is added back; otherwise every running
/// pod would count twice. Other clusters' groups stay counted as used.
pub fn schedulable(usage: Usage, own: OwnUse) -> Usage {
    let mut u = usage;
    u.cores.current = (u.cores.current - own.cores.max(0.0).ceil() as i64).max(0);
    u.container_groups.current = (u.container_groups.current - own.groups.max(0)).max(0);
    u
}

/// Whether the ACI backend answers, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Reachable,
    /// Unreachable for longer than the configured time; the last error.
    Unreachable {
        message: String,
    },
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: kind.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Node conditions: Ready follows the backend's health; the pressure
/// conditions are always False (ACI has no shared node to pressure).
pub fn conditions(profile: &NodeProfile, health: &Health, now: &Time) -> Vec<NodeCondition> {
    let system = profile.system.as_str();
    let ready = match health {
        Health::Reachable => condition(
            "Ready",
            true,
            REASON_READY,
            &format!("spillway {system} provider is ready"),
            now,
        ),
        Health::Unreachable { message } => condition(
            "Ready",
            false,
            &profile.unreachable_reason,
            &format!("{system} backend unreachable: {message}"),
            now,
        ),
    };
    vec![
        ready,
        condition(
            "MemoryPressure",
            false,
            "KubeletHasSufficientMemory",
            &format!("{system} has no memory pressure"),
            now,
        ),
        condition(
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            &format!("{system} has no disk pressure"),
            now,
        ),
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            &format!("{system} has no PID pressure"),
            now,
        ),
        condition(
            "NetworkUnavailable",
            false,
            "RouteCreated",
            &format!("{system} networking is managed by Azure"),
            now,
        ),
    ]
}

/// The node's status.
pub fn node_status(
    settings: &NodeSettings,
    usage: Option<&Usage>,
    health: &Health,
    now: &Time,
) -> NodeStatus {
    let capacity = capacity(usage, settings.memory_gib_per_core);
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        conditions: Some(conditions(&settings.profile, health, now)),
        // Only the InternalIP, as virtual-kubelet's providers register it:
        // kube-apiserver reaches a kubelet (logs, exec, node proxy) at the
        // first address of its --kubelet-preferred-address-types, Hostname
        // first by default, and the virtual node's name resolves nowhere.
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: settings.internal_ip.clone(),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(settings.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: String::new(),
            container_runtime_version: settings.profile.runtime_version.clone(),
            kernel_version: String::new(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: String::new(),
            operating_system: settings.os.clone(),
            os_image: String::new(),
            system_uuid: String::new(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// The node object to create (status is written separately, through
/// `nodes/status`).
pub fn node_object(settings: &NodeSettings) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            labels: Some(node_labels(settings)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(node_taints(&settings.profile)),
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether the node's metadata/spec lack the labels or taint we own.
pub fn node_needs_update(node: &Node, settings: &NodeSettings) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let labels_ok = node_labels(settings)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let taint_ok = taints.iter().any(|t| {
        t.key == TAINT_KEY
            && t.value.as_deref() == Some(settings.profile.taint_value.as_str())
            && t.effect == "NoSchedule"
    });
    !(labels_ok && taint_ok)
}

/// Whether `desired` differs from `current` in anything but heartbeat and
/// transition times: what decides an "on change" status write.
pub fn status_differs(current: Option<&NodeStatus>, desired: &NodeStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    let key = |s: &NodeStatus| {
        let conds: Vec<(String, String, Option<String>)> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        (
            conds,
            s.capacity.clone(),
            s.allocatable.clone(),
            s.addresses.clone(),
            s.daemon_endpoints.clone(),
        )
    };
    key(current) != key(desired)
}

/// Keep `lastTransitionTime` of conditions whose status did not change.
pub fn carry_transition_times(current: Option<&NodeStatus>, desired: &mut NodeStatus) {
    let Some(current) = current else { return };
    for c in desired.conditions.iter_mut().flatten() {
        if let Some(old) = current
            .conditions
            .iter()
            .flatten()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            && old.last_transition_time.is_some()
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// Why the node does not admit a pod bound to it, as the kubelet says it:
/// the pod is failed with this reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

/// Kubelet admission reasons (kubernetes `pkg/kubelet/lifecycle/predicate.go`).
pub const REASON_OS_SELECTOR_MISMATCH: &str = "PodOSSelectorNodeLabelDoesNotMatch";
pub const REASON_OS_NOT_SUPPORTED: &str = "PodOSNotSupported";
/// kube-scheduler's NodeAffinity plugin name, the reason the kubelet gives
/// a pod whose `nodeSelector` or required node affinity its node fails.
pub const REASON_NODE_AFFINITY: &str = "NodeAffinity";

/// The kubelet's admission of a pod bound to this node, in its order
/// (kubernetes `pkg/kubelet/lifecycle/predicate.go`, `predicateAdmitHandler.Admit`):
/// the pod's `kubernetes.io/os` *label* against the node's
/// (`rejectPodAdmissionBasedOnOSSelector`), `spec.os.name` against the
/// node's OS (`rejectPodAdmissionBasedOnOSField`), then `generalFilter`'s
/// NodeAffinity (`nodeSelector` and the required node affinity against the
/// node's labels). Taints are left out: the kubelet checks only `NoExecute`
/// ones and a virtual node has none. Someone who sets `nodeName` directly
/// skips the scheduler, never this: a Windows pod bound to the Linux node
/// fails here instead of becoming a Linux container group.
pub fn admit(pod: &Pod, settings: &NodeSettings) -> Result<(), Rejection> {
    let os = settings.os.as_str();
    let pod_os_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OS_LABEL))
        .map(String::as_str);
    if pod_os_label.is_some_and(|l| l != os) {
        return Err(Rejection {
            reason: REASON_OS_SELECTOR_MISMATCH,
            message: format!(
                "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label (pod label {OS_LABEL}={}, node {} runs {os})",
                pod_os_label.unwrap_or_default(),
                settings.name
            ),
        });
    }
    let spec = pod.spec.as_ref();
    if let Some(field) = spec.and_then(|s| s.os.as_ref())
        && field.name != os
    {
        return Err(Rejection {
            reason: REASON_OS_NOT_SUPPORTED,
            message: format!(
                "Failed to admit pod as the OS field doesn't match node OS (spec.os.name {}, node {} runs {os})",
                field.name, settings.name
            ),
        });
    }
    let class = crate::decision::NodeClass::new(node_labels(settings), Vec::new());
    if let Some(refusal) =
        crate::cluster::constraints::pod_placement(pod).refusal(&class, &settings.name)
    {
        return Err(Rejection {
            reason: REASON_NODE_AFFINITY,
            message: format!(
                "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector ({refusal} on node {})",
                settings.name
            ),
        });
    }
    Ok(())
}

/// Lease duration written to the node Lease (as the kubelet: 40 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// The node's heartbeat Lease, owned by the node so it goes with it.
pub fn node_lease(node_name: &str, node_uid: Option<&str>, now: MicroTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_string()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node_name.to_string(),
                    uid: uid.to_string(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::Quota;

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "spillway-aci".into(),
            internal_ip: "10.0.0.7".into(),
            kubelet_port: 10250,
            memory_gib_per_core: 4.0,
            os: "linux".into(),
            profile: NodeProfile::aci(),
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("valid"))
    }

    fn usage(cores_used: i64) -> Usage {
        Usage {
            cores: Quota {
                limit: 100,
                current: cores_used,
            },
            container_groups: Quota {
                limit: 50,
                current: 10,
            },
        }
    }

    #[test]
    fn node_carries_the_aks_virtual_node_labels_and_taint() {
        let n = node_object(&settings());
        let labels = n.metadata.labels.clone().unwrap_or_default();
        for (k, v) in [
            ("type", "virtual-kubelet"),
            ("kubernetes.io/role", "agent"),
            ("kubernetes.io/os", "linux"),
            ("spillway.io/virtual", "true"),
            ("kubernetes.azure.com/managed", "false"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
        }
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        assert_eq!(taints.len(), 1);
        assert_eq!(taints[0].key, TAINT_KEY);
        assert_eq!(taints[0].effect, "NoSchedule");
        assert!(!node_needs_update(&node_object(&settings()), &settings()));
        let mut stripped = node_object(&settings());
        stripped.spec = None;
        assert!(node_needs_update(&stripped, &settings()));
    }

    #[test]
    fn capacity_is_what_the_quota_leaves() {
        let c = capacity(Some(&usage(30)), 4.0);
        assert_eq!(c["cpu"].0, "70");
        assert_eq!(c["memory"].0, format!("{}Mi", 70 * 4 * 1024));
        assert_eq!(c["pods"].0, "40");
        let none = capacity(None, 4.0);
        assert_eq!(none["cpu"].0, "0");
        let over = capacity(Some(&usage(130)), 4.0);
        assert_eq!(over["cpu"].0, "0");
    }

    #[test]
    fn own_pods_do_not_count_twice() {
        let u = schedulable(
            usage(30),
            OwnUse {
                cores: 9.5,
                groups: 4,
            },
        );
        assert_eq!(u.cores.current, 20);
        assert_eq!(u.container_groups.current, 6);
        let clamp = schedulable(
            usage(1),
            OwnUse {
                cores: 5.0,
                groups: 50,
            },
        );
        assert_eq!(
            (clamp.cores.current, clamp.container_groups.current),
            (0, 0)
        );
    }

    #[test]
    fn status_reports_ready_endpoint_and_addresses() {
        let s = node_status(&settings(), Some(&usage(0)), &Health::Reachable, &now());
        let conds = s.conditions.clone().unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.status, "True");
        for kind in [
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
            "NetworkUnavailable",
        ] {
            let c = conds.iter().find(|c| c.type_ == kind).expect(kind);
            assert_eq!(c.status, "False", "{kind}");
        }
        let port = s
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        assert_eq!(port, Some(10250));
        let ip = s.addresses.unwrap_or_default();
        assert!(
            ip.iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "10.0.0.7")
        );
        assert_eq!(
            s.node_info.map(|i| i.kubelet_version),
            Some(KUBELET_VERSION.to_string())
        );
    }

    #[test]
    fn unreachable_backend_makes_the_node_not_ready_with_a_reason() {
        let health = Health::Unreachable {
            message: "connection refused".into(),
        };
        let s = node_status(&settings(), Some(&usage(0)), &health, &now());
        let ready = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some(REASON_ACI_UNREACHABLE));
        assert!(
            ready
                .message
                .unwrap_or_default()
                .contains("connection refused")
        );
    }

    #[test]
    fn status_diff_ignores_heartbeats_but_sees_capacity_and_readiness() {
        let a = node_status(&settings(), Some(&usage(0)), &Health::Reachable, &now());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).expect("valid"));
        let mut b = node_status(&settings(), Some(&usage(0)), &Health::Reachable, &later);
        assert!(!status_differs(Some(&a), &b));
        carry_transition_times(Some(&a), &mut b);
        let t = |s: &NodeStatus| {
            s.conditions.clone().unwrap_or_default()[0]
                .last_transition_time
                .clone()
        };
        assert_eq!(t(&b), t(&a));
        let c = node_status(&settings(), Some(&usage(4)), &Health::Reachable, &later);
        assert!(status_differs(Some(&a), &c));
        let d = node_status(
            &settings(),
            Some(&usage(0)),
            &Health::Unreachable {
                message: "x".into(),
            },
            &later,
        );
        assert!(status_differs(Some(&a), &d));
        assert!(status_differs(None, &a));
    }

    #[test]
    fn lease_is_held_by_the_node_and_owned_by_it() {
        let now =
            MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("valid"));
        let l = node_lease("spillway-aci", Some("uid-1"), now.clone());
        assert_eq!(l.metadata.namespace.as_deref(), Some(NODE_LEASE_NAMESPACE));
        let spec = l.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("spillway-aci"));
        assert_eq!(spec.renew_time, Some(now));
        assert_eq!(
            l.metadata.owner_references.unwrap_or_default()[0].kind,
            "Node"
        );
    }

    #[test]
    fn the_profile_decides_taint_role_labels_and_condition_names() {
        let mut edge = settings();
        edge.profile = NodeProfile {
            taint_value: "iotedge".into(),
            labels: BTreeMap::from([("spillway.io/edge".to_string(), "true".to_string())]),
            system: "IoT Edge".into(),
            runtime_version: "iotedge://1.5".into(),
            unreachable_reason: "IotHubUnreachable".into(),
        };
        let node = node_object(&edge);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("spillway.io/edge").map(String::as_str),
            Some("true")
        );
        assert!(
            !labels.contains_key("spillway.io/virtual"),
            "an edge node is never burst capacity"
        );
        assert_eq!(labels["type"], "virtual-kubelet");
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert_eq!(taints[0].value.as_deref(), Some("iotedge"));
        assert!(!node_needs_update(&node, &edge));
        // The ACI node's taint does not satisfy the edge profile.
        assert!(node_needs_update(&node_object(&settings()), &edge));
        let down = Health::Unreachable {
            message: "x".into(),
        };
        let conds = conditions(
            &edge.profile,
            &down,
            &Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(conds[0].reason.as_deref(), Some("IotHubUnreachable"));
        assert_eq!(
            conds[0].message.as_deref(),
            Some("IoT Edge backend unreachable: x")
        );
        // The ACI profile says what it always said.
        let aci = node_object(&settings());
        assert_eq!(
            aci.metadata.labels.unwrap_or_default()["spillway.io/virtual"],
            "true"
        );
    }

    fn windows() -> NodeSettings {
        NodeSettings {
            name: "spillway-aci-windows".into(),
            os: OS_WINDOWS.into(),
            ..settings()
        }
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("valid pod")
    }

    #[test]
    fn the_windows_node_says_windows_with_the_same_taint_and_virtual_label() {
        let n = node_object(&windows());
        let labels = n.metadata.labels.clone().unwrap_or_default();
        for (k, v) in [
            ("kubernetes.io/os", "windows"),
            ("beta.kubernetes.io/os", "windows"),
            ("type", "virtual-kubelet"),
            ("spillway.io/virtual", "true"),
            ("kubernetes.io/hostname", "spillway-aci-windows"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
        }
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        assert_eq!(
            (taints[0].key.as_str(), taints[0].value.as_deref()),
            (TAINT_KEY, Some(TAINT_VALUE))
        );
        let status = node_status(&windows(), Some(&usage(0)), &Health::Reachable, &now());
        assert_eq!(
            status.node_info.map(|i| i.operating_system).as_deref(),
            Some("windows")
        );
        // A Linux node object does not satisfy the Windows settings.
        assert!(node_needs_update(&node_object(&settings()), &windows()));
    }

    #[test]
    fn admission_refuses_a_pod_of_the_other_os_as_the_kubelet_does() {
        let selector = |os: &str| {
            pod(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [], "nodeSelector": {"kubernetes.io/os": os}},
            }))
        };
        assert_eq!(admit(&selector("windows"), &windows()), Ok(()));
        assert_eq!(admit(&selector("linux"), &settings()), Ok(()));
        let e = admit(&selector("windows"), &settings()).expect_err("windows pod, linux node");
        assert_eq!(e.reason, REASON_NODE_AFFINITY);
        assert!(
            e.message.starts_with(
                "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
            ) && e.message.contains("kubernetes.io/os=windows"),
            "{}",
            e.message
        );
        let e = admit(&selector("linux"), &windows()).expect_err("linux pod, windows node");
        assert_eq!(e.reason, REASON_NODE_AFFINITY);
        // No selector at all: the node's OS decides (a nodeName pod).
        let bare = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(admit(&bare, &windows()), Ok(()));
        assert_eq!(admit(&bare, &settings()), Ok(()));
        // Required affinity on the OS label counts too.
        let affinity = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}
                ]}}}},
        }));
        assert_eq!(admit(&affinity, &windows()), Ok(()));
        assert_eq!(
            admit(&affinity, &settings()).map_err(|e| e.reason),
            Err(REASON_NODE_AFFINITY)
        );
        // The pod's own OS label and spec.os are checked first, with the
        // kubelet's reasons.
        let labelled = pod(serde_json::json!({
            "metadata": {"name": "p", "labels": {"kubernetes.io/os": "windows"}},
            "spec": {"containers": []},
        }));
        let e = admit(&labelled, &settings()).expect_err("label");
        assert_eq!(e.reason, REASON_OS_SELECTOR_MISMATCH);
        assert!(
            e.message.starts_with(
                "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
            ),
            "{}",
            e.message
        );
        let field = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "os": {"name": "windows"}},
        }));
        assert_eq!(admit(&field, &windows()), Ok(()));
        let e = admit(&field, &settings()).expect_err("spec.os");
        assert_eq!(e.reason, REASON_OS_NOT_SUPPORTED);
        assert!(
            e.message
                .starts_with("Failed to admit pod as the OS field doesn't match node OS"),
            "{}",
            e.message
        );
    }
}
