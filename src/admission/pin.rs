//! Pods pinned to the virtual node, and how the webhook relaxes the pin.
//!
//! The AKS virtual-node documentation pins its example to the virtual node
//! (`nodeSelector: {type: virtual-kubelet}`): written for a cluster where
//! the virtual node is the only way to ACI, such a pod can never run on a
//! VM, so it bursts at once however soon a VM would have been free. With
//! spillway installed the virtual node is reached through spillway's
//! decision instead, so the webhook (by default, `--webhook-virtual-node-pin
//! relax`) removes the pin as it hands the pod to spillway's scheduler: the
//! pod then waits for VMs like any other and bursts when its policy says so.
//!
//! What "the pin" is, exactly:
//! - a `nodeSelector` entry equal to one of the virtual node's labels
//!   (`type: virtual-kubelet`); other entries (`kubernetes.io/role: agent`,
//!   `kubernetes.io/os: linux`) are kept — VMs carry them too;
//! - in `requiredDuringSchedulingIgnoredDuringExecution`, when *every* term
//!   selects the virtual node (an `In` naming its label value, or `Exists`
//!   on its label key): those expressions. If another term could match a
//!   VM the pod is not pinned and nothing is touched. A term left empty by
//!   the removal would match any node, so then the required affinity goes
//!   (an empty term in the API matches nothing, which would lock the pod
//!   out of every node).
//!
//! Removing only conditions keeps every node that matched before matching
//! (the virtual node included). A pinned pod that does not tolerate the
//! virtual node's taint gets the toleration: it asked for the virtual node,
//! and without the toleration the relaxed pod could never burst. What was
//! removed is written to [`RELAXED_ANNOTATION`], which `spillway explain`
//! shows. `spillway.io/virtual-node-pin: keep` on the pod keeps the pin: the
//! pod is still decided by spillway (policy mode, budgets, quota) but, as no
//! VM can take it, it does not wait for one.

use crate::cluster::{self, VirtualNodeMatcher};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};
use serde_json::{Value, json};

/// On a pod: `keep` keeps its pin to the virtual node.
pub const PIN_ANNOTATION: &str = "spillway.io/virtual-node-pin";
/// Written by the webhook: what it removed to relax the pod's pin.
pub const RELAXED_ANNOTATION: &str = "spillway.io/relaxed-pin";

/// What the webhook does with a pod pinned to the virtual node
/// (`--webhook-virtual-node-pin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PinMode {
    /// Remove the pin so VMs come first (the pod can keep it with the
    /// `spillway.io/virtual-node-pin: keep` annotation).
    #[default]
    Relax,
    /// Leave pinned pods pinned: they burst as soon as their policy allows.
    Keep,
}

/// The webhook's change to one pinned pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Relaxation {
    /// RFC 6902 operations (the annotation included).
    pub ops: Vec<Value>,
    /// What was removed or added, for the annotation and the log.
    pub summary: String,
}

/// Whether this affinity expression selects the virtual node by one of its labels.
fn is_pin(e: &NodeSelectorRequirement, matcher: &VirtualNodeMatcher) -> bool {
    matcher.labels.iter().any(|(k, v)| {
        e.key == *k
            && match e.operator.as_str() {
                "In" => e.values.iter().flatten().any(|x| x == v),
                "Exists" => true,
                _ => false,
            }
    })
}

pub(crate) fn term_pins(t: &NodeSelectorTerm, matcher: &VirtualNodeMatcher) -> bool {
    t.match_expressions
        .iter()
        .flatten()
        .any(|e| is_pin(e, matcher))
}

pub(crate) fn required_terms(pod: &Pod) -> &[NodeSelectorTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default()
}

/// The `nodeSelector` entries that pin the pod, in the selector's order.
pub(crate) fn selector_pins<'a>(
    pod: &'a Pod,
    matcher: &VirtualNodeMatcher,
) -> Vec<(&'a str, &'a str)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .into_iter()
        .flatten()
        .filter(|(k, v)| matcher.labels.iter().any(|(mk, mv)| mk == *k && mv == *v))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn affinity_pins(pod: &Pod, matcher: &VirtualNodeMatcher) -> bool {
    let terms = required_terms(pod);
    !terms.is_empty() && terms.iter().all(|t| term_pins(t, matcher))
}

/// Whether no VM can ever take the pod: its `nodeSelector` or every term
/// of its required node affinity names the virtual node's label.
pub fn pinned_to_virtual(pod: &Pod, matcher: &VirtualNodeMatcher) -> bool {
    !selector_pins(pod, matcher).is_empty() || affinity_pins(pod, matcher)
}

/// Whether the pod asks to keep its pin (`spillway.io/virtual-node-pin: keep`).
pub fn keeps_pin(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PIN_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("keep"))
}

/// What the webhook wrote to relax this pod's pin, if anything.
pub fn relaxed_pin(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RELAXED_ANNOTATION))
        .map(String::as_str)
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn describe(e: &NodeSelectorRequirement) -> String {
    match e.operator.as_str() {
        "Exists" => format!("{} Exists", e.key),
        op => format!(
            "{} {op} [{}]",
            e.key,
            e.values.as_deref().unwrap_or_default().join(",")
        ),
    }
}

/// The change that removes the pod's pin, or `None` when it is not pinned.
pub fn relax(pod: &Pod, matcher: &VirtualNodeMatcher) -> Option<Relaxation> {
    let spec = pod.spec.as_ref()?;
    let mut ops = Vec::new();
    let mut removed = Vec::new();
    for (k, v) in selector_pins(pod, matcher) {
        ops.push(
            json!({"op": "remove", "path": format!("/spec/nodeSelector/{}", pointer_token(k))}),
        );
        removed.push(format!("nodeSelector {k}={v}"));
    }
    if affinity_pins(pod, matcher) {
        const REQUIRED: &str =
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
        let mut terms = Vec::new();
        let mut any_left_empty = false;
        for t in required_terms(pod) {
            let mut kept = t.clone();
            let exprs = t.match_expressions.as_deref().unwrap_or_default();
            for e in exprs.iter().filter(|e| is_pin(e, matcher)) {
                let d = format!("required node affinity {}", describe(e));
                if !removed.contains(&d) {
                    removed.push(d);
                }
            }
            let left: Vec<_> = exprs
                .iter()
                .filter(|e| !is_pin(e, matcher))
                .cloned()
                .collect();
            any_left_empty |= left.is_empty() && t.match_fields.as_ref().is_none_or(Vec::is_empty);
            kept.match_expressions = (!left.is_empty()).then_some(left);
            terms.push(kept);
        }
        if any_left_empty {
            ops.push(json!({"op": "remove", "path": REQUIRED}));
        } else {
            ops.push(json!({
                "op": "replace",
                "path": format!("{REQUIRED}/nodeSelectorTerms"),
                "value": terms,
            }));
        }
    }
    if ops.is_empty() {
        return None;
    }
    if !cluster::tolerates_virtual(pod) {
        let key = matcher
            .taint_keys
            .first()
            .map(String::as_str)
            .unwrap_or(cluster::VIRTUAL_KUBELET_TAINT);
        let toleration = json!({"key": key, "operator": "Exists"});
        if spec.tolerations.is_some() {
            ops.push(json!({"op": "add", "path": "/spec/tolerations/-", "value": toleration}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/tolerations", "value": [toleration]}));
        }
        removed.push(format!("added toleration {key} Exists"));
    }
    let summary = removed.join("; ");
    if pod.metadata.annotations.is_some() {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_token(RELAXED_ANNOTATION)),
            "value": summary,
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": serde_json::Map::from_iter([(RELAXED_ANNOTATION.to_string(), Value::String(summary.clone()))]),
        }));
    }
    Some(Relaxation { ops, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::pod;
    use k8s_openapi::api::core::v1::Toleration;

    /// Apply the operations [`relax`] emits (RFC 6902 `add`, `remove`,
    /// `replace` on object members, `add` at `-` of an array), failing on a
    /// path that does not exist as the API server would.
    fn apply(doc: &mut Value, ops: &[Value]) {
        for op in ops {
            let path = op["path"].as_str().unwrap_or_else(|| panic!("{op}"));
            let (parent, last) = path.rsplit_once('/').unwrap_or_else(|| panic!("{path}"));
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = doc
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("no parent for {path}"));
            match (op["op"].as_str(), target) {
                (Some("add"), Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
                (Some("add"), Value::Object(m)) => {
                    m.insert(last, op["value"].clone());
                }
                (Some("replace"), Value::Object(m)) => {
                    assert!(m.contains_key(&last), "replace of a missing {path}");
                    m.insert(last, op["value"].clone());
                }
                (Some("remove"), Value::Object(m)) => {
                    assert!(m.remove(&last).is_some(), "remove of a missing {path}");
                }
                (o, t) => panic!("unexpected {o:?} on {t}"),
            }
        }
    }

    fn relaxed(p: &Pod) -> (Pod, String) {
        let r = relax(p, &VirtualNodeMatcher::default()).unwrap_or_else(|| panic!("not pinned"));
        let mut doc = serde_json::to_value(p).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut doc, &r.ops);
        let out: Pod = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
        (out, r.summary)
    }

    fn m() -> VirtualNodeMatcher {
        VirtualNodeMatcher::default()
    }

    #[test]
    fn the_aks_example_loses_only_its_virtual_node_selector() {
        let p = pod()
            .ns("web")
            .node_selector("kubernetes.io/role", "agent")
            .node_selector("beta.kubernetes.io/os", "linux")
            .node_selector("type", "virtual-kubelet")
            .tolerate_virtual()
            .build();
        assert!(pinned_to_virtual(&p, &m()));
        let (out, summary) = relaxed(&p);
        let spec = out.spec.as_ref().unwrap_or_else(|| panic!("spec"));
        let sel = spec.node_selector.clone().unwrap_or_default();
        assert_eq!(
            sel.keys().map(String::as_str).collect::<Vec<_>>(),
            ["beta.kubernetes.io/os", "kubernetes.io/role"]
        );
        assert_eq!(
            spec.tolerations.as_ref().map(Vec::len),
            Some(1),
            "already tolerated"
        );
        assert_eq!(summary, "nodeSelector type=virtual-kubelet");
        assert_eq!(relaxed_pin(&out), Some(summary.as_str()));
        assert!(!pinned_to_virtual(&out, &m()));
        assert!(cluster::tolerates_virtual(&out));
    }

    #[test]
    fn a_pod_that_could_use_a_vm_through_another_term_is_not_pinned() {
        let mut p = pod()
            .ns("web")
            .require_node("type", "In", &["virtual-kubelet"])
            .build();
        let required = p
            .spec
            .as_mut()
            .and_then(|s| s.affinity.as_mut())
            .and_then(|a| a.node_affinity.as_mut())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_mut()
            })
            .unwrap_or_else(|| panic!("affinity"));
        required.node_selector_terms.push(NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "agentpool".into(),
                operator: "In".into(),
                values: Some(vec!["nodepool1".into()]),
            }]),
            ..Default::default()
        });
        assert!(!pinned_to_virtual(&p, &m()));
        assert_eq!(relax(&p, &m()), None);
    }

    #[test]
    fn a_pinning_expression_goes_and_the_rest_of_its_term_stays() {
        let p = pod()
            .ns("web")
            .require_node("type", "In", &["virtual-kubelet"])
            .require_node("kubernetes.io/os", "In", &["linux"])
            .tolerate_virtual()
            .build();
        assert!(pinned_to_virtual(&p, &m()));
        let (out, summary) = relaxed(&p);
        let terms = required_terms(&out);
        assert_eq!(terms.len(), 1);
        let exprs = terms[0].match_expressions.clone().unwrap_or_default();
        assert_eq!(exprs.len(), 1);
        assert_eq!(exprs[0].key, "kubernetes.io/os");
        assert_eq!(summary, "required node affinity type In [virtual-kubelet]");
    }

    #[test]
    fn a_term_left_empty_drops_the_required_affinity_and_a_toleration_is_added() {
        let p = pod().ns("web").require_node("type", "Exists", &[]).build();
        assert!(!cluster::tolerates_virtual(&p));
        let (out, summary) = relaxed(&p);
        assert!(required_terms(&out).is_empty());
        assert!(
            out.spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref())
                .is_some_and(|n| n
                    .required_during_scheduling_ignored_during_execution
                    .is_none())
        );
        assert!(
            cluster::tolerates_virtual(&out),
            "it asked for the virtual node"
        );
        assert_eq!(
            summary,
            "required node affinity type Exists; added toleration virtual-kubelet.io/provider Exists"
        );
    }

    #[test]
    fn the_toleration_is_appended_to_existing_ones_and_keys_are_escaped() {
        let matcher = VirtualNodeMatcher {
            labels: vec![("spillway.io/virtual".into(), "true".into())],
            ..VirtualNodeMatcher::default()
        };
        let p = pod()
            .ns("web")
            .node_selector("spillway.io/virtual", "true")
            .toleration(Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            })
            .annotation("team", "a")
            .build();
        let r = relax(&p, &matcher).unwrap_or_else(|| panic!("pinned"));
        assert_eq!(r.ops[0]["path"], "/spec/nodeSelector/spillway.io~1virtual");
        let mut doc = serde_json::to_value(&p).unwrap_or_else(|e| panic!("{e}"));
        apply(&mut doc, &r.ops);
        let out: Pod = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.spec
                .as_ref()
                .and_then(|s| s.tolerations.as_ref())
                .map(Vec::len),
            Some(2)
        );
        let ann = out.metadata.annotations.unwrap_or_default();
        assert_eq!(ann.get("team").map(String::as_str), Some("a"));
        assert!(ann.contains_key(RELAXED_ANNOTATION));
    }

    #[test]
    fn keep_is_read_from_the_annotation() {
        assert!(keeps_pin(&pod().annotation(PIN_ANNOTATION, "Keep").build()));
        assert!(!keeps_pin(
            &pod().annotation(PIN_ANNOTATION, "relax").build()
        ));
        assert!(!keeps_pin(&pod().build()));
    }
}
