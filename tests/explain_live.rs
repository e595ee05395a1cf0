//! `spillway explain` against a live cluster: the binary reads the test API
//! server through a kubeconfig (nodes, pods, the cluster autoscaler's status
//! and the policy ConfigMap), and says what it says on the same objects as
//! a dump — plus `-n`, `--pod` and `-o json|yaml|table`.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;
use spillway::cluster::load_cluster_state;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::TestApiServer;

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cluster-state.yaml");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
const NOW: &str = "2024-05-14T10:00:00Z";

fn config_map(ns: &str, name: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// The repository's policies as the ConfigMap deploy/ mounts, under the
/// name kustomize's configMapGenerator gives it (a content-hash suffix).
fn policies_config_map() -> ConfigMap {
    let mut data = BTreeMap::new();
    for entry in std::fs::read_dir(POLICIES).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let key = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        data.insert(
            key.to_string(),
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    config_map("spillway-system", "spillway-policies-5g7h2k8m9t", data)
}

/// pool1 is scaling up: two nodes asked for at 09:59, not joined yet.
fn ca_status_config_map() -> ConfigMap {
    let status = "nodeGroups:
- health:
    cloudProviderTarget: 4
    maxSize: 10
    minSize: 1
    nodeCounts:
      registered:
        ready: 2
        total: 2
    status: Healthy
  name: aks-pool1-12345678-vmss
  scaleUp:
    status: InProgress
    lastTransitionTime: \"2024-05-14T09:59:00Z\"
";
    config_map(
        "kube-system",
        "cluster-autoscaler-status",
        BTreeMap::from([("status".to_string(), status.to_string())]),
    )
}

async fn seeded() -> TestApiServer {
    let srv = TestApiServer::start().await;
    let objects = load_cluster_state(Path::new(STATE)).unwrap_or_else(|e| panic!("{e}"));
    for node in &objects.nodes {
        srv.insert(node);
    }
    for pod in &objects.pods {
        srv.insert(pod);
    }
    srv
}

fn kubeconfig(srv: &TestApiServer, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("explain-live-{name}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster: {{ server: \"{}\" }}\ncontexts:\n- name: test\n  context: {{ cluster: test, user: u }}\nusers:\n- name: u\n  user: {{}}\n",
            srv.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// Runs the binary off the test's runtime (the server keeps serving).
async fn spillway(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn args(kubeconfig: &Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "explain".to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--now".into(),
        NOW.into(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_explain_says_what_the_dump_says_with_the_cluster_policies() {
    let srv = seeded().await;
    srv.insert(&policies_config_map());
    let kc = kubeconfig(&srv, "rows");

    let out = spillway(args(&kc, &["-o", "json"])).await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("policies from ConfigMap spillway-system/spillway-policies-5g7h2k8m9t"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = stdout(&out);
    let dump = stdout(
        &spillway(vec![
            "explain".into(),
            "--cluster-state".into(),
            STATE.into(),
            "--policies".into(),
            POLICIES.into(),
            "--now".into(),
            NOW.into(),
            "-o".into(),
            "json".into(),
        ])
        .await,
    );
    let live: Value = serde_json::from_str(&live).unwrap_or_else(|e| panic!("{e}: {live}"));
    let dump: Value = serde_json::from_str(&dump).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(live, dump, "the live cluster and its dump disagree");
    // The ConfigMap's policies are in force: web's worker is policy Never.
    let worker = live
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "worker-1"))
        .unwrap_or_else(|| panic!("no worker-1 row: {live}"));
    assert_eq!(worker["reason"], "policy-never", "{worker}");

    // -n keeps one namespace; the table and YAML forms carry the same rows.
    let table = stdout(&spillway(args(&kc, &["-n", "web"])).await);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table.contains("frontend-new") && table.contains("worker-1"),
        "{table}"
    );
    assert!(
        !table.contains("job-1") && !table.contains("small"),
        "{table}"
    );
    let yaml = stdout(&spillway(args(&kc, &["-n", "batch", "-o", "yaml"])).await);
    let rows: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    let names: Vec<&str> = rows
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["job-1"], "{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pods_story_names_its_policy_budget_eta_and_every_node() {
    let srv = seeded().await;
    srv.insert(&policies_config_map());
    srv.insert(&ca_status_config_map());
    let kc = kubeconfig(&srv, "story");

    let out = stdout(&spillway(args(&kc, &["-n", "batch", "--pod", "job-1", "-o", "json"])).await);
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (s["namespace"].as_str(), s["name"].as_str()),
        (Some("batch"), Some("job-1"))
    );
    assert_eq!(s["verdict"], "wait", "{s}");
    let policy = &s["policy"];
    assert!(
        policy["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("batch/")),
        "{policy}"
    );
    assert!(
        policy["selected_because"]
            .as_str()
            .is_some_and(|w| w.contains("namespace batch")),
        "{policy}"
    );
    // The pool the autoscaler is growing: two nodes on their way, asked at 09:59.
    let pools = s["pools"].as_array().cloned().unwrap_or_default();
    let pool1 = pools
        .iter()
        .find(|p| p["name"] == "pool1")
        .unwrap_or_else(|| panic!("no pool1: {s}"));
    assert_eq!(
        pool1["upcoming"].as_array().map(Vec::len),
        Some(2),
        "{pool1}"
    );
    assert!(
        s["vm_eta"].is_string(),
        "a VM ETA from the upcoming nodes: {s}"
    );
    // Every VM node, each with why it cannot take the pod now.
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "aks-pool1-12345678-vmss000000",
            "aks-pool1-12345678-vmss000001"
        ],
        "{s}"
    );
    for n in &nodes {
        assert!(
            n["refused"].is_string(),
            "job-1 waits: no node has room: {n}"
        );
    }

    // The same story for people.
    let text = stdout(&spillway(args(&kc, &["-n", "batch", "--pod", "job-1"])).await);
    for want in [
        "Pod:        batch/job-1",
        "Policy:     batch/",
        "Budget:",
        "VM ETA:",
        "Nodes considered:",
        "aks-pool1-12345678-vmss000000",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // A pod that is not pending says where it is; an unknown one is an error.
    let bound = stdout(&spillway(args(&kc, &["-n", "web", "--pod", "api-0"])).await);
    assert!(bound.contains("is not pending: bound to node"), "{bound}");
    let missing = spillway(args(&kc, &["-n", "web", "--pod", "nope"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("pod web/nope not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_policy_config_map_it_says_so_and_an_unreachable_cluster_is_exit_69() {
    let srv = seeded().await;
    let kc = kubeconfig(&srv, "nopolicies");
    let out = spillway(args(&kc, &["-o", "json"])).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("no policy ConfigMap spillway-system/spillway-policies"),
        "{err}"
    );
    assert!(err.contains("no cluster autoscaler status"), "{err}");
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.as_array().map(Vec::len), Some(5));

    // Nothing listens on port 1.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explain-live-unreachable");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.join("config");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster: { server: \"http://127.0.0.1:1\" }\ncontexts:\n- name: x\n  context: { cluster: x, user: u }\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = spillway(args(&bad, &["--kube-connect-timeout-secs", "2"])).await;
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listing nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
