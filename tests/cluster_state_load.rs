//! The streamed JSON loader gives the objects (and the errors) the
//! generic-tree loader gives, on tests/data/cluster-state.yaml turned into
//! JSON and on kubectl- and API-server-shaped JSON dumps; the view's loader
//! gives them slimmed.

use serde_json::{Value, json};
use spillway::cluster::load::{
    ClusterObjects, Keep, parse_cluster_state, parse_cluster_state_keeping,
    parse_cluster_state_tree,
};
use spillway::cluster::slim::{slim_node, slim_pod};

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cluster-state.yaml");

fn same(a: &ClusterObjects, b: &ClusterObjects, what: &str) {
    assert_eq!(a.nodes, b.nodes, "{what}: nodes");
    assert_eq!(a.pods, b.pods, "{what}: pods");
    assert_eq!(a.skipped, b.skipped, "{what}: skipped");
}

fn yaml_as_json() -> String {
    let yaml = std::fs::read_to_string(STATE).unwrap_or_else(|e| panic!("{STATE}: {e}"));
    let tree: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    serde_json::to_string(&tree).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_cluster_state_loads_the_same_from_yaml_and_streamed_json() {
    let yaml = std::fs::read_to_string(STATE).unwrap_or_else(|e| panic!("{e}"));
    let from_yaml = parse_cluster_state_tree(&yaml, "state.yaml").unwrap_or_else(|e| panic!("{e}"));
    let json = yaml_as_json();
    let streamed = parse_cluster_state(&json, "state.json").unwrap_or_else(|e| panic!("{e}"));
    assert!(!streamed.nodes.is_empty() && !streamed.pods.is_empty());
    same(&from_yaml, &streamed, "yaml vs streamed json");
    same(
        &parse_cluster_state_tree(&json, "state.json").unwrap_or_else(|e| panic!("{e}")),
        &streamed,
        "tree vs streamed json",
    );
    // The public YAML path is unchanged.
    same(
        &from_yaml,
        &parse_cluster_state(&yaml, "state.yaml").unwrap_or_else(|e| panic!("{e}")),
        "yaml",
    );
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"agentpool": "pool1"},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "status": {"allocatable": {"cpu": "4", "memory": "16Gi"},
            "images": [{"names": ["a:1"], "sizeBytes": 10}],
            "conditions": [{"type": "Ready", "status": "True", "message": "ready",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

fn pod(name: &str, node: Option<&str>) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "web", "uid": format!("u-{name}"),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "web:1",
            "env": [{"name": "A", "value": "b"}],
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]},
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}})
}

/// `kubectl get nodes,pods -A -o json`: keys sorted, so `kind` comes after `items`.
fn kubectl_dump() -> String {
    let items = vec![
        node("n1"),
        pod("a", Some("n1")),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
        pod("b", None),
        node("n2"),
        // A hand-edited number where Kubernetes writes a string.
        json!({"kind": "Pod", "metadata": {"name": "c", "namespace": "web"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": 2}}}]}}),
    ];
    format!(
        r#"{{"apiVersion":"v1","items":{},"kind":"List","metadata":{{"resourceVersion":""}}}}"#,
        serde_json::to_string(&items).unwrap_or_default()
    )
}

#[test]
fn a_kubectl_json_dump_streams_to_the_same_objects() {
    let text = kubectl_dump();
    let tree = parse_cluster_state_tree(&text, "dump.json").unwrap_or_else(|e| panic!("{e}"));
    let streamed = parse_cluster_state(&text, "dump.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (streamed.nodes.len(), streamed.pods.len(), streamed.skipped),
        (2, 3, 1)
    );
    same(&tree, &streamed, "kubectl dump");
}

#[test]
fn api_server_lists_with_kindless_items_stream_too() {
    // The API server writes `kind` first and leaves it out of items.
    let mut items = vec![pod("a", Some("n1")), pod("b", None)];
    for i in &mut items {
        if let Some(m) = i.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
    }
    let first = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    let text = serde_json::to_string(&first).unwrap_or_default();
    let streamed = parse_cluster_state(&text, "pods.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(streamed.pods.len(), 2);
    same(
        &parse_cluster_state_tree(&text, "pods.json").unwrap_or_else(|e| panic!("{e}")),
        &streamed,
        "PodList",
    );
    // The list's kind after kindless items: still the same objects.
    let last = format!(
        r#"{{"items":{},"kind":"PodList"}}"#,
        serde_json::to_string(&items).unwrap_or_default()
    );
    same(
        &streamed,
        &parse_cluster_state(&last, "pods.json").unwrap_or_else(|e| panic!("{e}")),
        "PodList, kind last",
    );
}

#[test]
fn errors_are_the_tree_loaders_errors() {
    let cases = [
        r#"{"kind":"List","items":[{"kind":"Node","metadata":{"name":"ok"}},{"kind":"Pod","metadata":{"name":"broken","namespace":"web"},"spec":{"containers":"nope"}}]}"#,
        r#"{"items":[{"kind":"Pod","metadata":{"name":"q","namespace":"n"},"spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"12Qi"}}}]}}],"kind":"List"}"#,
        r#"{"kind":"List","items":3}"#,
        r#"{"kind":"Deployment","items":[]}"#,
        r#"{"items":[]}"#,
        r#"{"kind":"List","items":[1]}"#,
        r#"{"kind":"List","items":[{"metadata":{"name":"x"}}]}"#,
        r#"{"kind":"List","items":[]"#,
        r#"{"kind":"List","items":[]} trailing"#,
    ];
    for text in cases {
        let tree = parse_cluster_state_tree(text, "f.json").map(|_| ());
        let streamed = parse_cluster_state(text, "f.json").map(|_| ());
        let (Err(tree), Err(streamed)) = (tree, streamed) else {
            panic!("{text}: expected errors from both loaders");
        };
        assert_eq!(tree.to_string(), streamed.to_string(), "{text}");
    }
    // A single object is a cluster state too.
    let one = serde_json::to_string(&node("n1")).unwrap_or_default();
    same(
        &parse_cluster_state_tree(&one, "n.json").unwrap_or_else(|e| panic!("{e}")),
        &parse_cluster_state(&one, "n.json").unwrap_or_else(|e| panic!("{e}")),
        "single node",
    );
}

#[test]
fn the_views_loader_gives_the_same_objects_slimmed() {
    for (text, file) in [
        (kubectl_dump(), "dump.json"),
        (yaml_as_json(), "state.json"),
        (
            std::fs::read_to_string(STATE).unwrap_or_else(|e| panic!("{e}")),
            "state.yaml",
        ),
    ] {
        let mut want = parse_cluster_state_tree(&text, file).unwrap_or_else(|e| panic!("{e}"));
        want.nodes.iter_mut().for_each(slim_node);
        want.pods.iter_mut().for_each(slim_pod);
        let got = parse_cluster_state_keeping(&text, file, Keep::ViewFields)
            .unwrap_or_else(|e| panic!("{e}"));
        same(&want, &got, file);
    }
}
