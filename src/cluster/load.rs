//! Reading a cluster state file: the output of
//! `kubectl get nodes,pods -A -o yaml` (or `-o json`), a v1 `List` whose
//! `items` mix kinds. Also accepted: a `NodeList`/`PodList`, or a single
//! `Node`/`Pod`. Items of other kinds are skipped (counted in `skipped`).
//!
//! Every problem names the file and the item index, and every quantity is
//! checked here, so `snapshot_from` never meets a bad one.

use super::{ClusterError, node_allocatable, pod_requests};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;
use std::path::Path;

/// The typed objects of a cluster state file.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Items of other kinds that were ignored.
    pub skipped: usize,
}

/// Read and parse a cluster state file.
pub fn load_cluster_state(path: &Path) -> Result<ClusterObjects, ClusterError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        file: file.clone(),
        source,
    })?;
    parse_cluster_state(&text, &file)
}

/// Parse the text of a cluster state file; `file` is used in messages.
pub fn parse_cluster_state(text: &str, file: &str) -> Result<ClusterObjects, ClusterError> {
    let syntax = |message: String| ClusterError::Syntax {
        file: file.to_string(),
        message,
    };
    let shape = |message: &str| ClusterError::Shape {
        file: file.to_string(),
        message: message.to_string(),
    };
    // JSON is YAML, but serde_json is faster and has better messages for it.
    let root: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?
    };
    let Value::Object(map) = root else {
        return Err(shape(
            "expected a Kubernetes List object (kubectl get nodes,pods -A -o yaml)",
        ));
    };
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let items: Vec<Value> = match kind.as_str() {
        "List" | "NodeList" | "PodList" => match map.get("items") {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(shape("`items` must be a list")),
        },
        "Node" | "Pod" => vec![Value::Object(map)],
        "" => {
            return Err(shape(
                "missing `kind` (expected List, NodeList, PodList, Node or Pod)",
            ));
        }
        other => {
            return Err(shape(&format!(
                "unsupported kind {other:?} (expected List, NodeList, PodList, Node or Pod)"
            )));
        }
    };
    let implied = match kind.as_str() {
        "NodeList" => "Node",
        "PodList" => "Pod",
        _ => "",
    };
    let mut out = ClusterObjects::default();
    for (index, mut item) in items.into_iter().enumerate() {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string();
        let item_kind = item
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or(implied)
            .to_string();
        let err = |message: String| ClusterError::Item {
            file: file.to_string(),
            index,
            kind: if item_kind.is_empty() {
                "?".into()
            } else {
                item_kind.clone()
            },
            name: name.clone(),
            message,
        };
        if !item.is_object() {
            return Err(err("not an object".into()));
        }
        quantities_as_strings(&mut item);
        match item_kind.as_str() {
            "Node" => {
                let node: Node = serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
                node_allocatable(&node).map_err(|e| err(e.to_string()))?;
                out.nodes.push(node);
            }
            "Pod" => {
                let pod: Pod = serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
                pod_requests(&pod).map_err(|e| err(e.to_string()))?;
                out.pods.push(pod);
            }
            "" => return Err(err("missing `kind`".into())),
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Hand-written YAML often says `cpu: 4`; Kubernetes quantities are strings.
/// Turn numbers inside resource lists into strings before typed decoding.
fn quantities_as_strings(v: &mut Value) {
    const LISTS: [&str; 5] = ["requests", "limits", "allocatable", "capacity", "overhead"];
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if LISTS.contains(&k.as_str())
                    && let Value::Object(list) = child
                {
                    for q in list.values_mut() {
                        if let Value::Number(n) = q {
                            *q = Value::String(n.to_string());
                        }
                    }
                } else {
                    quantities_as_strings(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_as_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_list_yaml_parses_by_kind() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: { name: n1, labels: { agentpool: pool1 } }
  status: { allocatable: { cpu: 4, memory: 16Gi } }
- apiVersion: v1
  kind: Pod
  metadata: { name: p1, namespace: web }
  spec: { containers: [ { name: c, resources: { requests: { cpu: 500m } } } ] }
- apiVersion: v1
  kind: Service
  metadata: { name: s }
"#;
        let objs = parse_cluster_state(text, "t.yaml").unwrap();
        assert_eq!(objs.nodes.len(), 1);
        assert_eq!(objs.pods.len(), 1);
        assert_eq!(objs.skipped, 1);
        assert_eq!(node_allocatable(&objs.nodes[0]).unwrap().cpu_millis, 4000);
    }

    #[test]
    fn json_list_parses() {
        let text = r#"{"kind":"PodList","items":[{"metadata":{"name":"a","namespace":"x"},"spec":{"containers":[]}}]}"#;
        let objs = parse_cluster_state(text, "t.json").unwrap();
        assert_eq!(objs.pods.len(), 1);
    }

    #[test]
    fn bad_item_names_file_index_and_object() {
        let text = r#"
kind: List
items:
- kind: Node
  metadata: { name: ok }
- kind: Pod
  metadata: { name: broken, namespace: web }
  spec: { containers: "nope" }
"#;
        let e = parse_cluster_state(text, "state.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("state.yaml: item 1 (Pod broken): "), "{e}");
    }

    #[test]
    fn bad_quantity_is_reported_with_item() {
        let text = r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"q","namespace":"n"},
            "spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"12Qi"}}}]}}]}"#;
        let e = parse_cluster_state(text, "s.json").unwrap_err().to_string();
        assert!(e.contains("item 0 (Pod q)") && e.contains("12Qi"), "{e}");
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(matches!(
            parse_cluster_state("[1,2]", "f"),
            Err(ClusterError::Shape { .. })
        ));
        assert!(matches!(
            parse_cluster_state("{ not json", "f"),
            Err(ClusterError::Syntax { .. })
        ));
        assert!(matches!(
            parse_cluster_state("kind: Deployment\n", "f"),
            Err(ClusterError::Shape { .. })
        ));
        assert!(matches!(
            parse_cluster_state("kind: List\nitems: 3\n", "f"),
            Err(ClusterError::Shape { .. })
        ));
    }
}
