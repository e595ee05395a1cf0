//! Every reader of the view gets the same answer from a slimmed object as
//! from the whole one.

use super::*;
use crate::cluster::classify::{self, PLACEHOLDER_FOR_LABEL, classify, is_placeholder};
use crate::cluster::{
    ClusterConfig, aci_incompatibility, constraints, is_pending, node_allocatable, node_pool,
    pending_pod, pod_requests, snapshot_from, tolerates_virtual,
};
use crate::units::Timestamp;
use serde_json::json;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A pod with every part a real one has, in the shape `extra` gives it.
fn full_pod(name: &str, extra: serde_json::Value) -> Pod {
    let mut v = json!({
        "metadata": {
            "name": name, "namespace": "web", "uid": format!("uid-{name}"),
            "generateName": "web-7c9f8b6d4-", "resourceVersion": "42",
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7c9f8b6d4"},
            "annotations": {
                LAST_APPLIED: "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
                "checksum/config": "0123456789abcdef",
                "controller.kubernetes.io/pod-deletion-cost": "-1000",
                "spillway.io/burst-reason": "spill-after-elapsed",
            },
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9f8b6d4",
                 "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "cm-uid"},
            ],
            "finalizers": ["example.com/keep"],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
        },
        "spec": {
            "priority": 100,
            "priorityClassName": "high",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "web",
            "nodeSelector": {"agentpool": "pool1", "disk": "ssd"},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [
                            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1", "z2"]},
                            {"key": "gpu", "operator": "DoesNotExist"},
                            {"key": "cores", "operator": "Gt", "values": ["4"]}]}]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "preference": {"matchExpressions": [
                            {"key": "spot", "operator": "Exists"}]}}],
                },
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]},
            },
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"},
            ],
            "initContainers": [
                {"name": "migrate", "image": "migrate:1", "env": [{"name": "A", "value": "b"}],
                 "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
                {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
            ],
            "containers": [
                {"name": "app", "image": "web:1.2", "command": ["/web"], "args": ["--port=8080"],
                 "env": [{"name": "LOG", "value": "info"},
                         {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
                 "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true},
                 "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}},
                {"name": "limits-only", "image": "sidecar:1",
                 "resources": {"limits": {"cpu": "250m", "memory": "256Mi"}}},
            ],
            "overhead": {"cpu": "10m", "memory": "16Mi"},
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            ],
        },
        "status": {
            "phase": "Pending",
            "qosClass": "Burstable",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
                "lastTransitionTime": "2026-11-29T11:59:00Z"}],
        },
    });
    merge(&mut v, extra);
    from(v)
}

fn merge(into: &mut serde_json::Value, extra: serde_json::Value) {
    match (into, extra) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if v.is_object() => merge(slot, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn running_on(node: &str) -> serde_json::Value {
    json!({
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running", "podIP": "10.0.0.7", "hostIP": "10.224.0.4",
            "startTime": "2026-11-29T10:00:05Z",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-29T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29T10:00:09Z",
                 "lastProbeTime": "2026-11-29T10:00:09Z"},
            ],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "web:1.2",
                "imageID": "web@sha256:00", "state": {"running": {"startedAt": "2026-11-29T10:00:06Z"}}}],
        },
    })
}

/// Pods in every state the view's readers tell apart.
/// One container requesting `cpu` (and 512Mi), with a CPU limit if given:
/// no init containers, no overhead.
fn single_container(cpu: &str, limit: Option<&str>) -> serde_json::Value {
    let mut resources = json!({"requests": {"cpu": cpu, "memory": "512Mi"}});
    if let Some(l) = limit {
        resources["limits"] = json!({"cpu": l});
    }
    json!({"spec": {"initContainers": null, "overhead": null,
        "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "b"}],
            "resources": resources}]}})
}

fn pods() -> Vec<Pod> {
    vec![
        full_pod("pending", json!({})),
        full_pod(
            "pending-pod-level",
            json!({"spec": {"resources": {"requests": {"cpu": "3", "memory": "3Gi"}}}}),
        ),
        full_pod(
            "host-path",
            json!({"spec": {"volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]}}),
        ),
        full_pod(
            "claim",
            json!({"spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]}}),
        ),
        full_pod(
            "privileged",
            json!({"spec": {"initContainers": [{"name": "setup", "securityContext": {"privileged": true}}]}}),
        ),
        full_pod("host-network", json!({"spec": {"hostNetwork": true}})),
        full_pod(
            "daemon",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                "name": "ds", "uid": "ds-uid", "controller": true}]}}),
        ),
        full_pod(
            "gated",
            json!({"spec": {"schedulingGates": [{"name": "example.com/wait"}]}}),
        ),
        full_pod(
            "terminating",
            json!({"metadata": {"deletionTimestamp": "2026-11-29T11:59:30Z"}}),
        ),
        full_pod("on-vm", running_on("vm-1")),
        full_pod("on-aci", running_on("virtual-node-aci-linux")),
        full_pod(
            "on-aci-unready",
            json!({"spec": {"nodeName": "virtual-node-aci-linux"}, "status": {"phase": "Pending"}}),
        ),
        full_pod(
            "done-on-aci",
            json!({"spec": {"nodeName": "virtual-node-aci-linux"}, "status": {"phase": "Succeeded"}}),
        ),
        full_pod(
            "placeholder",
            json!({"metadata": {"namespace": "spillway-system",
                "labels": {PLACEHOLDER_FOR_LABEL: "uid-on-aci"}},
                "spec": {"nodeName": "vm-2"}, "status": {"phase": "Running"}}),
        ),
        full_pod("single", single_container("250m", None)),
        full_pod("single-on-aci", {
            let mut v = single_container("250m", None);
            merge(&mut v, running_on("virtual-node-aci-linux"));
            v
        }),
        full_pod("raised-on-aci", {
            let mut v = single_container("250m", Some("1"));
            merge(&mut v, running_on("virtual-node-aci-linux"));
            v
        }),
        from(json!({"metadata": {"name": "bare", "namespace": "web"}})),
        // Never from the API server (it validates quantities), but from a
        // hand-written file: the containers stay, so readers fail alike.
        full_pod(
            "bad-quantity",
            json!({"spec": {"nodeName": "virtual-node-aci-linux", "containers": [{"name": "c",
                "resources": {"requests": {"memory": "12Qi"}}}]}, "status": {"phase": "Running"}}),
        ),
    ]
}

fn full_node(name: &str, extra: serde_json::Value) -> Node {
    let mut v = json!({
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2026-11-29T09:00:00Z",
            "labels": {"agentpool": "pool1", "kubernetes.azure.com/agentpool": "pool1",
                       "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "z1", "disk": "ssd"},
            "annotations": {"spillway.io/pool-min-size": "1", "spillway.io/pool-max-size": "9",
                            "node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}],
        },
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": "azure:///vm/1",
                 "taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "15820m", "memory": "57001404Ki", "pods": "110"},
            "capacity": {"cpu": "16", "memory": "65851324Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available",
                 "lastHeartbeatTime": "2026-11-29T11:59:00Z", "lastTransitionTime": "2026-11-29T09:00:00Z"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                 "lastHeartbeatTime": "2026-11-29T11:59:00Z", "lastTransitionTime": "2026-11-29T09:02:00Z"},
            ],
            "images": [{"names": ["web:1.2"], "sizeBytes": 1000}],
            "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7",
                "kernelVersion": "5.15", "kubeProxyVersion": "v1.31", "kubeletVersion": "v1.31",
                "machineID": "m", "operatingSystem": "linux", "osImage": "Ubuntu", "systemUUID": "s"},
            "addresses": [{"type": "InternalIP", "address": "10.224.0.4"}],
        },
    });
    merge(&mut v, extra);
    from(v)
}

fn nodes() -> Vec<Node> {
    vec![
        full_node("vm-1", json!({})),
        full_node(
            "vm-2",
            json!({"metadata": {"labels": {"agentpool": "pool2", "kubernetes.azure.com/agentpool": "pool2"}},
                   "spec": {"unschedulable": true}}),
        ),
        full_node(
            "vm-3",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        full_node(
            "virtual-node-aci-linux",
            json!({"metadata": {"labels": {"type": "virtual-kubelet"}},
                   "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "azure", "effect": "NoSchedule"}]}}),
        ),
    ]
}

fn slimmed<T: Clone>(objects: &[T], f: fn(&mut T)) -> Vec<T> {
    objects
        .iter()
        .cloned()
        .map(|mut o| {
            f(&mut o);
            o
        })
        .collect()
}

fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

#[test]
fn every_pod_reader_answers_the_same_on_a_slim_pod() {
    let now = Timestamp::from_secs(1_795_000_000);
    let cfg = ClusterConfig::default();
    let full = pods();
    let slim = slimmed(&full, slim_pod);
    for (f, s) in full.iter().zip(&slim) {
        let name = f.metadata.name.clone().unwrap_or_default();
        assert_eq!(
            pod_requests(f).ok(),
            pod_requests(s).ok(),
            "{name}: requests"
        );
        assert_eq!(is_pending(f), is_pending(s), "{name}");
        // What only a pending pod is asked (`snapshot_from`'s pending branch;
        // the extender asks the scheduler's copy of a pod, not the view's).
        if is_pending(f) {
            assert_eq!(
                pending_pod(f, now, &cfg).ok(),
                pending_pod(s, now, &cfg).ok(),
                "{name}: pending_pod"
            );
            assert_eq!(aci_incompatibility(f), aci_incompatibility(s), "{name}");
            assert_eq!(tolerates_virtual(f), tolerates_virtual(s), "{name}");
            assert_eq!(
                constraints::pod_placement(f),
                constraints::pod_placement(s),
                "{name}: placement"
            );
        }
        assert_eq!(
            crate::extender::reservations::reservation_key(f),
            crate::extender::reservations::reservation_key(s),
            "{name}"
        );
        assert_eq!(is_placeholder(f), is_placeholder(s), "{name}");
    }
    // The autoscaler's inputs, from the one classification pass.
    let no_nodes: &[k8s_openapi::api::core::v1::Node] = &[];
    let of = |pods: &[Pod]| classify(no_nodes, pods, now, &cfg, Some("spillway-system"));
    let (cf, cs): (classify::Classified, classify::Classified) = (of(&full), of(&slim));
    assert_eq!(cf.burst, cs.burst);
    assert!(
        cs.burst
            .iter()
            .any(|b| b.deletion_cost == Some(-1000) && b.ready && b.owner.is_some()),
        "the fixture has a ready, owned burst pod with a deletion cost"
    );
    assert_eq!(cf.placeholders, cs.placeholders);
    assert_eq!(cs.placeholders.len(), 1);
    assert_eq!(cf.pending_owners, cs.pending_owners);
    assert_eq!(cf.snapshot, cs.snapshot);
}

#[test]
fn every_node_reader_and_the_snapshot_are_the_same_on_slim_objects() {
    let now = Timestamp::from_secs(1_795_000_000);
    let cfg = ClusterConfig::default();
    let (full_nodes, full_pods) = (nodes(), pods());
    let slim_nodes = slimmed(&full_nodes, slim_node);
    let slim_pods = slimmed(&full_pods, slim_pod);
    for (f, s) in full_nodes.iter().zip(&slim_nodes) {
        let name = f.metadata.name.clone().unwrap_or_default();
        assert_eq!(node_pool(f, &cfg), node_pool(s, &cfg), "{name}");
        assert_eq!(node_allocatable(f).ok(), node_allocatable(s).ok(), "{name}");
        assert_eq!(
            constraints::node_class(f),
            constraints::node_class(s),
            "{name}"
        );
        assert_eq!(
            cfg.virtual_nodes.is_virtual(f),
            cfg.virtual_nodes.is_virtual(s),
            "{name}"
        );
        // The autoscaler's learner reads when Ready turned true and when the node was made.
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| (c.status.clone(), c.last_transition_time.clone()))
        };
        assert_eq!(ready(f), ready(s), "{name}");
        assert_eq!(
            f.metadata.creation_timestamp, s.metadata.creation_timestamp,
            "{name}"
        );
    }
    let full_snap = snapshot_from(&full_nodes, &full_pods, now, &cfg);
    let slim_snap = snapshot_from(&slim_nodes, &slim_pods, now, &cfg);
    assert_eq!(full_snap, slim_snap);
    // The pool size marks (annotations) made it through.
    let pool1 = full_snap.pools.iter().find(|p| p.name == "pool1");
    assert_eq!(pool1.map(|p| (p.min, p.max)), Some((1, 9)));
    assert!(!slim_snap.pending.is_empty() && !slim_snap.burst_usage.is_empty());
}

#[test]
fn slimming_drops_the_bulk_and_is_idempotent() {
    let full = pods();
    let slim = slimmed(&full, slim_pod);
    let (before, after) = (json_len(&full), json_len(&slim));
    assert!(after * 2 < before, "pods: {before} B -> {after} B");
    let p = &slim[0];
    assert!(p.metadata.managed_fields.is_none());
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key(LAST_APPLIED) && !annotations.contains_key("checksum/config")
    );
    // The containers' requests as one pod-level list; no container kept
    // unless privileged (a pending pod's, for ACI compatibility). This pod's
    // ACI group (two containers, one with limits only) is not the total:
    // its size goes to an annotation.
    let spec = p.spec.clone().unwrap_or_default();
    assert!(spec.containers.is_empty() && spec.init_containers.is_none());
    assert!(
        spec.resources
            .is_some_and(|r| r.requests.is_some_and(|q| q.len() == 2))
    );
    assert_eq!(
        annotations
            .get(SLIM_ACI_SIZE_ANNOTATION)
            .map(String::as_str),
        Some("750,900000000,750,1100000000")
    );
    // One container whose requests size its group: no annotation, pending
    // or bound; with a limit above its request (raise-requests sizes the
    // group by it), one.
    let noted = |name: &str| {
        slim.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .map(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(SLIM_ACI_SIZE_ANNOTATION))
            })
    };
    assert_eq!(noted("single"), Some(false));
    assert_eq!(noted("single-on-aci"), Some(false));
    assert_eq!(noted("raised-on-aci"), Some(true));
    let privileged = slim
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("privileged"));
    let init = privileged.and_then(|p| p.spec.clone()?.init_containers);
    assert_eq!(init.map(|cs| cs.len()), Some(1));
    // A bound pod keeps no placement.
    let on_vm = slim
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("on-vm"));
    assert!(
        on_vm
            .and_then(|p| p.spec.clone())
            .is_some_and(|s| s.tolerations.is_none()
                && s.affinity.is_none()
                && s.node_selector.is_none())
    );
    assert_eq!(
        slimmed(&slim, slim_pod),
        slim,
        "slimming twice changes nothing"
    );

    let full = nodes();
    let slim = slimmed(&full, slim_node);
    assert!(json_len(&slim) * 2 < json_len(&full));
    assert!(
        slim[0]
            .status
            .as_ref()
            .is_some_and(|s| s.images.is_none() && s.node_info.is_none())
    );
    assert_eq!(slimmed(&slim, slim_node), slim);
}

#[test]
fn a_size_annotation_on_a_pod_as_written_is_never_believed() {
    let mut forged = full_pod(
        "forged",
        json!({"metadata": {"annotations": {SLIM_ACI_SIZE_ANNOTATION: "10,100000000,10,100000000"}}}),
    );
    let real = crate::cluster::pod_aci_size(&forged).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(real.requests, Resources::new(10, 100_000_000));
    slim_pod(&mut forged);
    assert_eq!(crate::cluster::pod_aci_size(&forged).ok(), Some(real));
}
