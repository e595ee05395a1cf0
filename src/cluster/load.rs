//! Reading a cluster state file: the output of
//! `kubectl get nodes,pods -A -o yaml` (or `-o json`), a v1 `List` whose
//! `items` mix kinds. Also accepted: a `NodeList`/`PodList`, or a single
//! `Node`/`Pod`. Items of other kinds are skipped (counted in `skipped`).
//!
//! Every problem names the file and the item index, and every quantity is
//! checked here, so `snapshot_from` never meets a bad one.
//!
//! A JSON `List` is streamed: one item at a time is parsed, checked and
//! typed (and, for the view, slimmed), so a 100 MB dump never exists as a
//! generic tree. YAML files, single objects, and any JSON the stream does not
//! accept (to report the error exactly as before) take the generic-tree path.

use super::{ClusterError, node_allocatable, pod_requests, slim};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// Whole objects, or only what the cluster view reads ([`slim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Whole,
    ViewFields,
}

fn read(path: &Path) -> Result<(String, String), ClusterError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        file: file.clone(),
        source,
    })?;
    Ok((text, file))
}

/// Read and parse a cluster state file.
pub fn load_cluster_state(path: &Path) -> Result<ClusterObjects, ClusterError> {
    let (text, file) = read(path)?;
    parse_cluster_state(&text, &file)
}

/// Read a cluster state file keeping only what the cluster view reads: the
/// objects of a large dump fit in a fraction of the memory.
pub fn load_cluster_view_objects(path: &Path) -> Result<ClusterObjects, ClusterError> {
    let (text, file) = read(path)?;
    parse_cluster_state_keeping(&text, &file, Keep::ViewFields)
}

/// Parse the text of a cluster state file; `file` is used in messages.
pub fn parse_cluster_state(text: &str, file: &str) -> Result<ClusterObjects, ClusterError> {
    parse_cluster_state_keeping(text, file, Keep::Whole)
}

/// Parse the text of a cluster state file, keeping whole objects or only
/// what the view reads.
pub fn parse_cluster_state_keeping(
    text: &str,
    file: &str,
    keep: Keep,
) -> Result<ClusterObjects, ClusterError> {
    if text.trim_start().starts_with('{')
        && let Some(objects) = parse_json_list_streamed(text, file, keep)
    {
        return Ok(objects);
    }
    let mut objects = parse_cluster_state_tree(text, file)?;
    if keep == Keep::ViewFields {
        objects.nodes.iter_mut().for_each(slim::slim_node);
        objects.pods.iter_mut().for_each(slim::slim_pod);
    }
    Ok(objects)
}

/// The generic-tree loader: the whole file becomes one `serde_json::Value`
/// (YAML through serde-saphyr), then each item is typed. Used for YAML, for
/// single objects and to report errors; the `view_scale` bench's baseline.
pub fn parse_cluster_state_tree(text: &str, file: &str) -> Result<ClusterObjects, ClusterError> {
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
    let implied = implied_kind(&kind);
    let mut out = ClusterObjects::default();
    for (index, item) in items.into_iter().enumerate() {
        add_item(&mut out, item, index, implied, file, Keep::Whole)?;
    }
    Ok(out)
}

/// The kind of items that carry none, from the list's kind.
fn implied_kind(list_kind: &str) -> &'static str {
    match list_kind {
        "NodeList" => "Node",
        "PodList" => "Pod",
        _ => "",
    }
}

/// Check, type and add one item of a list (`index` for messages).
fn add_item(
    out: &mut ClusterObjects,
    mut item: Value,
    index: usize,
    implied: &str,
    file: &str,
    keep: Keep,
) -> Result<(), ClusterError> {
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
            let mut node: Node = serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
            node_allocatable(&node).map_err(|e| err(e.to_string()))?;
            if keep == Keep::ViewFields {
                slim::slim_node(&mut node);
            }
            out.nodes.push(node);
        }
        "Pod" => {
            let mut pod: Pod = serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
            pod_requests(&pod).map_err(|e| err(e.to_string()))?;
            if keep == Keep::ViewFields {
                slim::slim_pod(&mut pod);
            }
            out.pods.push(pod);
        }
        "" => return Err(err("missing `kind`".into())),
        _ => out.skipped += 1,
    }
    Ok(())
}

/// A JSON `List`/`NodeList`/`PodList`, one item in memory at a time. `None`
/// when the text is anything else or has any problem: the tree path then
/// decides, with its messages. Items without a `kind` are accepted only
/// once the list's own `kind` is known (the API server writes it first;
/// kubectl's `List` items carry their own).
fn parse_json_list_streamed(text: &str, file: &str, keep: Keep) -> Option<ClusterObjects> {
    let mut de = serde_json::Deserializer::from_str(text);
    let objects =
        serde::Deserializer::deserialize_map(&mut de, ListVisitor { file, keep }).ok()??;
    de.end().ok()?;
    Some(objects)
}

struct ListVisitor<'a> {
    file: &'a str,
    keep: Keep,
}

impl<'de> Visitor<'de> for ListVisitor<'_> {
    /// `None`: not a list (a single object, or no kind).
    type Value = Option<ClusterObjects>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind: Option<String> = None;
        let mut objects: Option<ClusterObjects> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "kind" => kind = Some(map.next_value()?),
                "items" if objects.is_none() => {
                    objects = Some(map.next_value_seed(ItemsSeed {
                        file: self.file,
                        keep: self.keep,
                        implied: kind.as_deref().map(implied_kind),
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match kind.as_deref() {
            Some("List" | "NodeList" | "PodList") => Ok(Some(objects.unwrap_or_default())),
            _ => Ok(None),
        }
    }
}

struct ItemsSeed<'a> {
    file: &'a str,
    keep: Keep,
    /// The kind of items without one; `None` while the list's kind is unknown.
    implied: Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ClusterObjects;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ClusterObjects;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = ClusterObjects::default();
        let mut index = 0;
        while let Some(item) = seq.next_element::<Value>()? {
            let implied = match self.implied {
                Some(k) => k,
                None if item.get("kind").is_some() => "",
                None => return Err(de::Error::custom("item kind unknown yet")),
            };
            add_item(&mut out, item, index, implied, self.file, self.keep)
                .map_err(de::Error::custom)?;
            index += 1;
        }
        Ok(out)
    }
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
    fn json_lists_are_streamed_and_other_shapes_are_left_to_the_tree() {
        let streamed = |text: &str| parse_json_list_streamed(text, "f", Keep::Whole).is_some();
        assert!(streamed(
            r#"{"apiVersion":"v1","items":[{"kind":"Node","metadata":{"name":"n"}}],"kind":"List"}"#
        ));
        assert!(streamed(
            r#"{"kind":"PodList","items":[{"metadata":{"name":"a","namespace":"x"}}]}"#
        ));
        assert!(streamed(r#"{"kind":"List","items":[]}"#));
        // A single object; kindless items before the list's kind; errors.
        assert!(!streamed(r#"{"kind":"Node","metadata":{"name":"n"}}"#));
        assert!(!streamed(
            r#"{"items":[{"metadata":{"name":"a","namespace":"x"}}],"kind":"PodList"}"#
        ));
        assert!(!streamed(
            r#"{"kind":"List","items":[{"kind":"Pod","spec":3}]}"#
        ));
        assert!(!streamed(r#"{"kind":"List","items":[]} x"#));
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
