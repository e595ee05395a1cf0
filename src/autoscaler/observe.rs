//! What the autoscaler adds to the cluster's typed view
//! ([`crate::cluster::classify`], which classifies every pod once): which
//! burst pods a PodDisruptionBudget protects right now. Pure.

use crate::cluster::classify::BurstPod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::pod;
    use crate::cluster::{ClusterConfig, classify::classify};
    use crate::units::Timestamp;
    use k8s_openapi::api::core::v1::Node;

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
        let now = Timestamp::from_secs(1);
        let nodes: &[Node] = &[];
        let mut burst = classify(nodes, &[on_aci], now, &ClusterConfig::default(), None).burst;
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
}
