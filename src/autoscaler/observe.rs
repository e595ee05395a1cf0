//! From Kubernetes objects to the autoscaler's inputs: which pods run on the
//! virtual node ([`BurstPod`]) and which capacity placeholders exist.
//! Pure conversions; the reflector stores are read by the caller.

use super::plan::{BurstPod, DELETION_COST_ANNOTATION, Owner, Placeholder};
use crate::cluster::pod_requests;
use crate::units::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};

/// Label on a placeholder pod: the UID of the burst pod it stands in for.
pub const PLACEHOLDER_FOR_LABEL: &str = "spillway.io/placeholder-for";
/// Label on every object spillway creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "spillway";

fn condition_true_since(pod: &Pod, kind: &str) -> Option<Option<Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| Timestamp::from_millis(t.0.as_millisecond())),
    )
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| Timestamp::from_millis(t.0.as_millisecond()))
}

/// Pods bound to one of `virtual_nodes` that are not finished.
/// Pods whose requests cannot be read are skipped (the extender reports them).
pub fn burst_pods<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    virtual_nodes: &BTreeSet<String>,
    now: Timestamp,
) -> Vec<BurstPod> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if !virtual_nodes.contains(node) {
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let (Some(namespace), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            continue;
        };
        let Ok(requests) = pod_requests(pod) else {
            continue;
        };
        let owner = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)))
            .map(|r| Owner {
                kind: r.kind.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
            });
        let bound_at = condition_true_since(pod, "PodScheduled")
            .flatten()
            .or_else(|| created(pod))
            .unwrap_or(now);
        out.push(BurstPod {
            namespace,
            name,
            uid,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests,
            owner,
            bound_at,
            ready: condition_true_since(pod, "Ready").is_some(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            deletion_cost: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DELETION_COST_ANNOTATION))
                .and_then(|v| v.trim().parse().ok()),
            pdb_blocked: false,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Whether a `policy/v1` label selector selects `labels`: a missing
/// selector selects nothing, an empty one everything.
pub fn selector_matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return false };
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would have rejected: select nothing.
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Mark the burst pods a PodDisruptionBudget currently protects from any
/// eviction: one in their namespace selects them and its status (current
/// for its spec) allows no disruption. A budget without status, or with a
/// status older than its spec, is left to the Eviction API to judge.
pub fn mark_pdb_blocked<'a>(
    burst: &mut [BurstPod],
    pdbs: impl IntoIterator<Item = &'a PodDisruptionBudget>,
) {
    let spent: Vec<&PodDisruptionBudget> = pdbs
        .into_iter()
        .filter(|b| {
            b.status.as_ref().is_some_and(|s| {
                s.disruptions_allowed <= 0
                    && s.observed_generation.unwrap_or(0) >= b.metadata.generation.unwrap_or(0)
            })
        })
        .collect();
    for pod in burst.iter_mut() {
        pod.pdb_blocked = spent.iter().any(|b| {
            b.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && selector_matches(
                    b.spec.as_ref().and_then(|s| s.selector.as_ref()),
                    &pod.labels,
                )
        });
    }
}

/// Placeholder pods in `namespace` (those carrying [`PLACEHOLDER_FOR_LABEL`]).
pub fn placeholders<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespace: &str,
) -> Vec<Placeholder> {
    let mut out: Vec<Placeholder> = pods
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|p| {
            let for_uid = p
                .metadata
                .labels
                .as_ref()?
                .get(PLACEHOLDER_FOR_LABEL)?
                .clone();
            Some(Placeholder {
                name: p.metadata.name.clone()?,
                for_uid,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                requests: pod_requests(p).unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// UIDs of the controllers of pods that wait to be scheduled (no node yet,
/// not terminating): an eviction's replacement that has not landed.
pub fn pending_owners<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
                && p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .filter_map(|p| {
            p.metadata
                .owner_references
                .as_ref()?
                .iter()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone())
        })
        .collect()
}

/// Whether a pod is one of spillway's placeholders (the engine must not decide for them).
pub fn is_placeholder(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(PLACEHOLDER_FOR_LABEL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::pod;
    use crate::units::Resources;

    fn virt() -> BTreeSet<String> {
        ["virtual-node-aci-linux".to_string()].into()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (serde_json::json!({}), true),
            (serde_json::json!({"matchLabels": {"app": "web"}}), true),
            (serde_json::json!({"matchLabels": {"app": "api"}}), false),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "canary", "operator": "NotIn", "values": ["yes"]}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}, {"key": "canary", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                serde_json::json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(
                selector_matches(Some(&selector(sel.clone())), &web),
                want,
                "{sel}"
            );
        }
        assert!(
            !selector_matches(None, &web),
            "a null selector selects nothing"
        );
    }

    #[test]
    fn only_a_current_spent_budget_in_the_pods_namespace_blocks_it() {
        let pdb = |ns: &str, allowed: i32, generation: i64, observed: i64| -> PodDisruptionBudget {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "b", "namespace": ns, "generation": generation},
                "spec": {"selector": {"matchLabels": {"app": "web"}}},
                "status": {"disruptionsAllowed": allowed, "observedGeneration": observed,
                           "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
            }))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let on_aci = pod()
            .ns("web")
            .name("a")
            .label("app", "web")
            .on_node("virtual-node-aci-linux")
            .build();
        let mut burst = burst_pods([&on_aci], &virt(), Timestamp::from_secs(1));
        let blocked = |burst: &mut Vec<BurstPod>, pdbs: &[PodDisruptionBudget]| {
            mark_pdb_blocked(burst, pdbs);
            burst[0].pdb_blocked
        };
        assert!(blocked(&mut burst, &[pdb("web", 0, 2, 2)]));
        assert!(!blocked(&mut burst, &[pdb("web", 1, 2, 2)]), "room left");
        assert!(
            !blocked(&mut burst, &[pdb("other", 0, 2, 2)]),
            "other namespace"
        );
        assert!(
            !blocked(&mut burst, &[pdb("web", 0, 3, 2)]),
            "status older than spec"
        );
        assert!(!blocked(&mut burst, &[]));
    }

    #[test]
    fn burst_pods_are_the_live_pods_on_virtual_nodes() {
        let now = Timestamp::from_secs(1_000);
        let on_aci = pod()
            .ns("web")
            .name("a")
            .cpu("500m")
            .memory("1Gi")
            .on_node("virtual-node-aci-linux")
            .phase("Running")
            .owned_by("ReplicaSet", "web-7d9")
            .build();
        let on_vm = pod()
            .ns("web")
            .name("b")
            .on_node("vm-0")
            .phase("Running")
            .build();
        let done = pod()
            .ns("web")
            .name("c")
            .on_node("virtual-node-aci-linux")
            .phase("Succeeded")
            .build();
        let pods = [on_aci, on_vm, done];
        let burst = burst_pods(pods.iter(), &virt(), now);
        assert_eq!(burst.len(), 1);
        let b = &burst[0];
        assert_eq!((b.namespace.as_str(), b.name.as_str()), ("web", "a"));
        assert_eq!(b.requests, Resources::new(500, 1024 * 1024 * 1024));
        assert_eq!(
            b.owner.as_ref().map(|o| o.kind.as_str()),
            Some("ReplicaSet")
        );
        assert!(!b.terminating);
        assert_eq!(b.deletion_cost, None);
    }
}
