//! Kubernetes scheduling constraints ⇄ the engine's [`Placement`] and
//! [`NodeClass`]: a pod's tolerations, `nodeSelector` and required node
//! affinity, a node's labels and taints. Both directions live here, so
//! what the engine judges and what a placeholder asks the scheduler for are
//! the same rules.

use crate::decision::placement::{
    NodeTerm, Operator, Requirement, Taint, TaintEffect, Toleration, TolerationOperator,
};
use crate::decision::{NodeClass, Placement};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::core::v1::{Node, Pod};

fn requirement(r: &core::NodeSelectorRequirement) -> Requirement {
    Requirement {
        key: r.key.clone(),
        operator: Operator::parse(&r.operator),
        values: r.values.clone().unwrap_or_default(),
    }
}

fn term(t: &core::NodeSelectorTerm) -> NodeTerm {
    NodeTerm {
        expressions: t
            .match_expressions
            .iter()
            .flatten()
            .map(requirement)
            .collect(),
        fields: t.match_fields.iter().flatten().map(requirement).collect(),
    }
}

fn toleration(t: &core::Toleration) -> Toleration {
    Toleration {
        key: t.key.clone().unwrap_or_default(),
        operator: match t.operator.as_deref() {
            None | Some("") | Some("Equal") => TolerationOperator::Equal,
            Some("Exists") => TolerationOperator::Exists,
            Some(_) => TolerationOperator::Unknown,
        },
        value: t.value.clone().unwrap_or_default(),
        // An effect the API server would refuse: taken as PreferNoSchedule,
        // which never decides where a pod may go.
        effect: match t.effect.as_deref() {
            None | Some("") => None,
            Some(e) => Some(TaintEffect::parse(e).unwrap_or(TaintEffect::PreferNoSchedule)),
        },
    }
}

/// A pod's hard placement rules among nodes.
pub fn pod_placement(pod: &Pod) -> Placement {
    let Some(spec) = pod.spec.as_ref() else {
        return Placement::default();
    };
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    Placement {
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        affinity: required.map(|r| r.node_selector_terms.iter().map(term).collect()),
        tolerations: spec.tolerations.iter().flatten().map(toleration).collect(),
    }
}

/// A node's taints (effects the engine does not know are left out).
pub fn node_taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: TaintEffect::parse(&t.effect)?,
            })
        })
        .collect()
}

/// A node's labels and taints, its hostname label left out.
pub fn node_class(node: &Node) -> NodeClass {
    NodeClass::new(
        node.metadata.labels.clone().unwrap_or_default(),
        node_taints(node),
    )
}

fn requirement_k8s(r: &Requirement) -> core::NodeSelectorRequirement {
    core::NodeSelectorRequirement {
        key: r.key.clone(),
        operator: r.operator.as_str().to_string(),
        values: (!matches!(r.operator, Operator::Exists | Operator::DoesNotExist))
            .then(|| r.values.clone()),
    }
}

fn toleration_k8s(t: &Toleration) -> core::Toleration {
    core::Toleration {
        key: (!t.key.is_empty()).then(|| t.key.clone()),
        operator: Some(
            match t.operator {
                TolerationOperator::Exists => "Exists",
                _ => "Equal",
            }
            .to_string(),
        ),
        value: (t.operator != TolerationOperator::Exists).then(|| t.value.clone()),
        effect: t.effect.map(|e| e.as_str().to_string()),
        toleration_seconds: None,
    }
}

/// The Kubernetes form of `placement` for a pod that must also stay off the
/// nodes `keep_off` selects (added to every affinity term, since terms are
/// ORed), with the tolerations `drop` says to leave out.
pub fn placement_k8s(
    placement: &Placement,
    keep_off: &Requirement,
    drop: impl Fn(&Toleration) -> bool,
) -> (
    Option<std::collections::BTreeMap<String, String>>,
    core::NodeSelector,
    Option<Vec<core::Toleration>>,
) {
    let terms = match &placement.affinity {
        Some(terms) => terms
            .iter()
            .map(|t| core::NodeSelectorTerm {
                match_expressions: Some(
                    t.expressions
                        .iter()
                        .chain(std::iter::once(keep_off))
                        .map(requirement_k8s)
                        .collect(),
                ),
                match_fields: (!t.fields.is_empty())
                    .then(|| t.fields.iter().map(requirement_k8s).collect()),
            })
            .collect(),
        None => vec![core::NodeSelectorTerm {
            match_expressions: Some(vec![requirement_k8s(keep_off)]),
            match_fields: None,
        }],
    };
    let tolerations: Vec<core::Toleration> = placement
        .tolerations
        .iter()
        .filter(|t| !drop(t))
        .map(toleration_k8s)
        .collect();
    (
        (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone()),
        core::NodeSelector {
            node_selector_terms: terms,
        },
        (!tolerations.is_empty()).then_some(tolerations),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "web"},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pods_constraints_survive_the_round_trip_with_the_virtual_node_kept_off() {
        let pod = pod_json(serde_json::json!({
            "containers": [{"name": "c"}],
            "nodeSelector": {"agentpool": "nodepool1"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["1", "2"]}]},
                    {"matchExpressions": [{"key": "spot", "operator": "Exists"}]}
                ]}}},
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Exists"},
                {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ]
        }));
        let p = pod_placement(&pod);
        assert_eq!(p.affinity.as_ref().map(Vec::len), Some(2));
        assert_eq!(p.tolerations.len(), 2);
        let keep_off = Requirement::new("type", Operator::NotIn, &["virtual-kubelet"]);
        let (selector, affinity, tolerations) =
            placement_k8s(&p, &keep_off, |t| t.key == "virtual-kubelet.io/provider");
        assert_eq!(
            selector,
            Some([("agentpool".into(), "nodepool1".into())].into())
        );
        assert_eq!(affinity.node_selector_terms.len(), 2);
        for t in &affinity.node_selector_terms {
            let last = t.match_expressions.as_ref().and_then(|e| e.last());
            assert_eq!(last.map(|r| r.operator.as_str()), Some("NotIn"), "{t:?}");
        }
        let tolerations = tolerations.unwrap_or_default();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].key.as_deref(), Some("sku"));
        // Back again: the same rules, plus the virtual node kept off.
        let back = pod_json(serde_json::json!({
            "containers": [{"name": "c"}],
            "nodeSelector": selector,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": affinity}},
            "tolerations": tolerations,
        }));
        let q = pod_placement(&back);
        assert_eq!(q.node_selector, p.node_selector);
        assert_eq!(q.tolerations, p.tolerations[1..].to_vec());
        let exprs: Vec<String> = q
            .affinity
            .iter()
            .flatten()
            .map(|t| {
                t.expressions
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(" & ")
            })
            .collect();
        assert_eq!(
            exprs,
            [
                "zone In [1,2] & type NotIn [virtual-kubelet]",
                "spot Exists & type NotIn [virtual-kubelet]"
            ]
        );
    }

    #[test]
    fn node_classes_keep_taints_and_drop_the_hostname() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"agentpool": "gpu", "kubernetes.io/hostname": "n1"}},
            "spec": {"taints": [
                {"key": "sku", "value": "gpu", "effect": "NoSchedule"},
                {"key": "odd", "effect": "Sometimes"}
            ]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let c = node_class(&node);
        assert_eq!(c.labels.len(), 1);
        assert_eq!(c.taints.len(), 1, "an unknown effect is left out");
        assert_eq!(c.taints[0].to_string(), "sku=gpu:NoSchedule");
    }
}
