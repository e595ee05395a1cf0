//! Wire types of `k8s.io/kube-scheduler/extender/v1`.
//!
//! The Go structs have no json tags, so the scheduler sends the Go field names
//! (`Pod`, `Nodes`, `NodeNames`) with explicit `null`s, while schedulers up to
//! 1.16 sent `pod`, `nodes`, `nodenames`. Go decodes keys case-insensitively;
//! so do these types (hand-written `Deserialize`, unknown keys ignored, `null`
//! = absent). Responses use the capitalized names, which every scheduler reads.
//! Embedded Kubernetes objects keep their usual camelCase.

use k8s_openapi::api::core::v1::Pod;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The largest score an extender may give (`MaxExtenderPriority`).
pub const MAX_PRIORITY: i64 = 10;

/// Implements a `Deserialize` that matches the given keys case-insensitively.
macro_rules! case_insensitive {
    ($ty:ident { $($field:ident => $key:literal),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($ty), ")"))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        while let Some(key) = map.next_key::<String>()? {
                            $(
                                if key.eq_ignore_ascii_case($key) {
                                    out.$field = map.next_value()?;
                                    continue;
                                }
                            )*
                            map.next_value::<IgnoredAny>()?;
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

/// A `v1.NodeList` as the scheduler sends it (`{"metadata":{},"items":[...]}`;
/// `items` may be `null`; `apiVersion`/`kind`, usually absent, are ignored).
///
/// Items are kept as raw JSON: without `nodeCacheCapable` the scheduler uses
/// the returned node objects as-is, so they must come back exactly as sent,
/// including fields newer than this crate's Kubernetes types.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeList {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<serde_json::Value>,
}

#[derive(Debug, Default)]
struct RawNodeList {
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    items: Option<Vec<serde_json::Value>>,
}
case_insensitive!(RawNodeList { metadata => "metadata", items => "items" });

impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawNodeList::deserialize(d)?;
        Ok(NodeList {
            metadata: raw.metadata.unwrap_or_default(),
            items: raw.items.unwrap_or_default(),
        })
    }
}

/// What the extender reads of a node object: its name, labels and taint keys.
/// Decoding it checks the types of exactly those fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeIdentity {
    #[serde(default)]
    pub metadata: IdentityMeta,
    #[serde(default)]
    pub spec: Option<IdentitySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdentityMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdentitySpec {
    #[serde(default)]
    pub taints: Option<Vec<IdentityTaint>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdentityTaint {
    #[serde(default)]
    pub key: Option<String>,
}

impl NodeIdentity {
    pub fn of(node: &serde_json::Value) -> Result<Self, serde_json::Error> {
        NodeIdentity::deserialize(node)
    }
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
    pub fn taint_keys(&self) -> impl Iterator<Item = &str> {
        self.spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .filter_map(|t| t.key.as_deref())
    }
}

/// `ExtenderArgs`: the body of filter and prioritize calls.
#[derive(Debug, Clone, Default)]
pub struct ExtenderArgs {
    pub pod: Option<Pod>,
    /// Candidate nodes, when the extender is not `nodeCacheCapable`.
    pub nodes: Option<NodeList>,
    /// Candidate node names, when the extender is `nodeCacheCapable`.
    pub node_names: Option<Vec<String>>,
}
case_insensitive!(ExtenderArgs { pod => "Pod", nodes => "Nodes", node_names => "NodeNames" });

/// `ExtenderFilterResult`. `Nodes` or `NodeNames` (same form as the request)
/// is always set: leaving both out removes every node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtenderFilterResult {
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeList>,
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<String>>,
    /// Refused; preemption may help. spillway never uses it for the virtual node.
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: BTreeMap<String, String>,
    /// Refused; preemption will not help.
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// Non-empty only when the call failed as a whole (never for a policy decision).
    #[serde(rename = "Error")]
    pub error: String,
}

/// One entry of the prioritize answer (a bare JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}
case_insensitive!(HostPriority { host => "Host", score => "Score" });

/// `ExtenderBindingArgs` (fields optional here so that `null` decodes like Go's zero value).
#[derive(Debug, Clone, Default)]
pub struct ExtenderBindingArgs {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub node: Option<String>,
}
case_insensitive!(ExtenderBindingArgs {
    pod_name => "PodName",
    pod_namespace => "PodNamespace",
    pod_uid => "PodUID",
    node => "Node",
});

/// `ExtenderBindingResult`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtenderBindingResult {
    #[serde(rename = "Error")]
    pub error: String,
}

/// `MetaPod`: a victim named by UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetaPod {
    #[serde(rename = "UID")]
    pub uid: String,
}
case_insensitive!(MetaPod { uid => "UID" });

/// `MetaVictims`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetaVictims {
    #[serde(rename = "Pods")]
    pub pods: Vec<MetaPod>,
    #[serde(rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// Decoding helper: `null` lists and counts become empty/zero like Go.
#[derive(Debug, Default)]
struct RawMetaVictims {
    pods: Option<Vec<MetaPod>>,
    num_pdb_violations: Option<i64>,
}
case_insensitive!(RawMetaVictims { pods => "Pods", num_pdb_violations => "NumPDBViolations" });

impl<'de> Deserialize<'de> for MetaVictims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMetaVictims::deserialize(d)?;
        Ok(MetaVictims {
            pods: raw.pods.unwrap_or_default(),
            num_pdb_violations: raw.num_pdb_violations.unwrap_or(0),
        })
    }
}

/// `Victims`: full victim pods (non-`nodeCacheCapable` preemption).
#[derive(Debug, Clone, Default)]
pub struct Victims {
    pub pods: Option<Vec<Pod>>,
    pub num_pdb_violations: Option<i64>,
}
case_insensitive!(Victims { pods => "Pods", num_pdb_violations => "NumPDBViolations" });

/// `ExtenderPreemptionArgs`: only one of the two maps is filled.
#[derive(Debug, Clone, Default)]
pub struct ExtenderPreemptionArgs {
    pub pod: Option<Pod>,
    pub node_name_to_victims: Option<BTreeMap<String, Option<Victims>>>,
    pub node_name_to_meta_victims: Option<BTreeMap<String, Option<MetaVictims>>>,
}
case_insensitive!(ExtenderPreemptionArgs {
    pod => "Pod",
    node_name_to_victims => "NodeNameToVictims",
    node_name_to_meta_victims => "NodeNameToMetaVictims",
});

/// `ExtenderPreemptionResult`: always meta victims.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtenderPreemptionResult {
    #[serde(rename = "NodeNameToMetaVictims")]
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_field_names_with_nulls() {
        let a: ExtenderArgs =
            serde_json::from_str(r#"{"Pod":{"metadata":{"name":"p","namespace":"n"}},"Nodes":null,"NodeNames":["a","b"]}"#)
                .unwrap();
        assert_eq!(a.node_names.unwrap(), vec!["a", "b"]);
        assert!(a.nodes.is_none());
        assert_eq!(a.pod.unwrap().metadata.namespace.as_deref(), Some("n"));
    }

    #[test]
    fn decodes_legacy_lowercase_and_mixed_case() {
        let a: ExtenderArgs =
            serde_json::from_str(r#"{"pod":{"metadata":{}},"nodenames":["x"]}"#).unwrap();
        assert_eq!(a.node_names.unwrap(), vec!["x"]);
        let a: ExtenderArgs =
            serde_json::from_str(r#"{"POD":null,"nodeNames":["y"],"extra":{"deep":[1]}}"#).unwrap();
        assert!(a.pod.is_none());
        assert_eq!(a.node_names.unwrap(), vec!["y"]);
    }

    #[test]
    fn rejects_wrong_types_and_non_objects() {
        assert!(serde_json::from_str::<ExtenderArgs>(r#"{"NodeNames":{"0":"a"}}"#).is_err());
        assert!(serde_json::from_str::<ExtenderArgs>(r#"{"NodeNames":[1,2]}"#).is_err());
        assert!(serde_json::from_str::<ExtenderArgs>("null").is_err());
        assert!(serde_json::from_str::<ExtenderArgs>("[]").is_err());
        assert!(serde_json::from_str::<ExtenderBindingArgs>(r#"{"PodName":["x"]}"#).is_err());
    }

    #[test]
    fn node_lists_accept_null_items_and_type_meta() {
        let l: NodeList = serde_json::from_str(r#"{"metadata":{},"items":null}"#).unwrap();
        assert!(l.items.is_empty());
        let l: NodeList = serde_json::from_str(
            r#"{"kind":"NodeList","apiVersion":"v1","items":[{"metadata":{"name":"n"}}]}"#,
        )
        .unwrap();
        assert_eq!(NodeIdentity::of(&l.items[0]).unwrap().name(), "n");
        assert!(NodeIdentity::of(&serde_json::json!({"metadata":{"name":42}})).is_err());
        assert!(NodeIdentity::of(&serde_json::json!("node")).is_err());
        let id = NodeIdentity::of(
            &serde_json::json!({"metadata":{"labels":{"type":"virtual-kubelet"}},
            "spec":{"taints":[{"key":"a","effect":"NoSchedule"},{"key":"b"}]},"status":{"new":1}}),
        )
        .unwrap();
        assert_eq!(id.taint_keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(
            serde_json::to_value(NodeList::default()).unwrap(),
            serde_json::json!({"metadata":{},"items":[]})
        );
    }

    #[test]
    fn responses_use_capitalized_names() {
        let r = ExtenderFilterResult {
            node_names: Some(vec!["a".into()]),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Nodes":null,"NodeNames":["a"],"FailedNodes":{},"FailedAndUnresolvableNodes":{},"Error":""})
        );
        let h = serde_json::to_value(vec![HostPriority {
            host: "h".into(),
            score: 10,
        }])
        .unwrap();
        assert_eq!(h, serde_json::json!([{"Host":"h","Score":10}]));
    }

    #[test]
    fn meta_victims_null_fields_are_zero() {
        let m: MetaVictims =
            serde_json::from_str(r#"{"pods":null,"numPDBViolations":null}"#).unwrap();
        assert_eq!(m, MetaVictims::default());
        let m: MetaVictims =
            serde_json::from_str(r#"{"Pods":[{"UID":"u"}],"NumPDBViolations":2}"#).unwrap();
        assert_eq!(m.pods[0].uid, "u");
        assert_eq!(m.num_pdb_violations, 2);
    }
}
