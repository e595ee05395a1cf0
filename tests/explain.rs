//! `spillway explain` on tests/data/cluster-state.yaml with the repository's
//! example policies, through the library and through the binary.

use serde_json::Value;
use spillway::cluster::{ClusterConfig, load_cluster_state};
use spillway::decision::{Reason, Verdict};
use spillway::explain::{explain, render_json, render_table};
use spillway::units::{Duration, Timestamp};
use std::path::Path;
use std::process::Command;

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cluster-state.yaml");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
const NOW: &str = "2024-05-14T10:00:00Z";

fn rows() -> Vec<spillway::explain::ExplainRow> {
    let objects = load_cluster_state(Path::new(STATE)).unwrap();
    let policies = spillway::policy::load_dir(Path::new(POLICIES)).unwrap();
    let now = Timestamp::parse_rfc3339(NOW).unwrap();
    explain(&objects, &policies, now, &ClusterConfig::default())
}

fn find<'a>(
    rows: &'a [spillway::explain::ExplainRow],
    ns: &str,
    name: &str,
) -> &'a spillway::explain::ExplainRow {
    rows.iter()
        .find(|r| r.namespace == ns && r.name == name)
        .unwrap_or_else(|| panic!("no row for {ns}/{name}"))
}

#[test]
fn every_pending_pod_gets_its_verdict_and_reason() {
    let rows = rows();
    assert_eq!(rows.len(), 5, "only the pending pods");
    let v = |ns, name| {
        let r = find(&rows, ns, name);
        (r.decision.verdict, r.decision.reason)
    };
    assert_eq!(
        v("web", "frontend-new"),
        (Verdict::Burst, Reason::VmEtaExceedsMaxWait)
    );
    assert_eq!(v("batch", "job-1"), (Verdict::Wait, Reason::WaitingForVm));
    assert_eq!(
        v("web", "worker-1"),
        (Verdict::Ineligible, Reason::PolicyNever)
    );
    assert_eq!(
        v("default", "small"),
        (Verdict::Vm, Reason::VmCapacityAvailable)
    );
    assert_eq!(
        v("default", "logger"),
        (Verdict::Ineligible, Reason::AciIncompatible)
    );
    let job = find(&rows, "batch", "job-1");
    assert_eq!(job.wait_left, Some(Duration::from_mins(3)));
    assert_eq!(
        job.decision.until,
        Timestamp::parse_rfc3339("2024-05-14T10:03:00Z").ok()
    );
    // web already has one 1 vCPU / 2 GiB frontend on ACI.
    let web = find(&rows, "web", "frontend-new");
    assert!(
        web.budget
            .starts_with("1/200 pods, 1.0/400 vCPU, $0.05/$50.00/h"),
        "{}",
        web.budget
    );
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let v: Value = serde_json::from_str(&render_json(&rows())).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 5);
    for obj in arr {
        let mut keys: Vec<&str> = obj
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["name", "namespace", "reason", "until", "verdict"]);
        let waits = obj["verdict"] == "wait";
        assert_eq!(obj["until"].is_string(), waits, "{obj}");
    }
    let job = arr.iter().find(|o| o["name"] == "job-1").unwrap();
    assert_eq!(job["until"], "2024-05-14T10:03:00Z");
    assert_eq!(job["reason"], "waiting-for-vm");
}

#[test]
fn table_has_a_header_and_one_aligned_row_per_pod() {
    let table = render_table(&rows());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("NAMESPACE  NAME"), "{table}");
    let verdict_col = lines[0].find("VERDICT").unwrap();
    let job = lines.iter().find(|l| l.contains("job-1")).unwrap();
    assert_eq!(job.find("wait"), Some(verdict_col), "{table}");
    assert!(
        job.contains("waiting-for-vm") && job.contains("3m"),
        "{job}"
    );
    // Sorted by namespace then name.
    assert!(
        lines[1].starts_with("batch") && lines[2].starts_with("default"),
        "{table}"
    );
}

fn spillway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn binary_prints_table_and_json() {
    let out = spillway(&[
        "explain",
        "--cluster-state",
        STATE,
        "--policies",
        POLICIES,
        "--now",
        NOW,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("frontend-new") && text.contains("vm-eta-exceeds-max-wait"),
        "{text}"
    );

    let out = spillway(&[
        "explain",
        "--cluster-state",
        STATE,
        "--policies",
        POLICIES,
        "--now",
        NOW,
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
}

#[test]
fn binary_uses_the_built_in_default_without_policies() {
    let out = spillway(&[
        "explain",
        "--cluster-state",
        STATE,
        "--now",
        NOW,
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Built-in default: mode Auto everywhere, so worker-1 is no longer "Never".
    let worker = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "worker-1")
        .unwrap();
    assert_ne!(worker["reason"], "policy-never");
}

#[test]
fn pool_limits_change_the_prediction() {
    // pool1 has 2 nodes; capped at 2 no VM can come, so the batch job may burst at once.
    let out = spillway(&[
        "explain",
        "--cluster-state",
        STATE,
        "--policies",
        POLICIES,
        "--now",
        NOW,
        "-o",
        "json",
        "--pool-limit",
        "pool1=2:2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = v
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "job-1")
        .unwrap();
    assert_eq!(
        (job["verdict"].as_str(), job["reason"].as_str()),
        (Some("burst"), Some("pools-at-max"))
    );
    let out = spillway(&[
        "explain",
        "--cluster-state",
        STATE,
        "--pool-limit",
        "pool1=9:2",
    ]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn bad_input_exits_64_with_one_line() {
    let dir = std::env::temp_dir().join(format!("spillway-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: List\nitems:\n- kind: Pod\n  metadata: { name: p }\n  spec: { containers: 3 }\n",
    )
    .unwrap();
    let missing = dir.join("missing.yaml");
    let cases: Vec<Vec<String>> = vec![
        vec!["--cluster-state".into(), bad.display().to_string()],
        vec!["--cluster-state".into(), missing.display().to_string()],
        vec![
            "--cluster-state".into(),
            STATE.into(),
            "--now".into(),
            "yesterday".into(),
        ],
        vec![
            "--cluster-state".into(),
            STATE.into(),
            "-o".into(),
            "xml".into(),
        ],
        vec![
            "--cluster-state".into(),
            STATE.into(),
            "--policies".into(),
            dir.display().to_string() + "/none",
        ],
    ];
    for args in cases {
        let mut full = vec!["explain".to_string()];
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = spillway(&refs);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        if !args.contains(&"--now".to_string()) && !args.contains(&"-o".to_string()) {
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(err.starts_with("spillway explain: "), "{err}");
        }
    }
    let out = spillway(&["explain", "--cluster-state", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: item 0 (Pod p)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn extender_help_shows_defaults_and_bad_flags_exit_64() {
    let out = spillway(&["extender", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for default in [
        "[default: 0.0.0.0:8888]",
        "[default: policies]",
        "[default: 4194304]",
        "[default: virtual-node-aci-linux spillway-aci]",
    ] {
        assert!(help.contains(default), "missing {default} in\n{help}");
    }
    for args in [
        &["extender", "--listen", "not-an-address"][..],
        &["extender", "--max-body-bytes", "-1"],
        &["extender", "--no-such-flag"],
    ] {
        assert_eq!(spillway(args).status.code(), Some(64), "{args:?}");
    }
    let out = spillway(&[
        "extender",
        "--policies",
        "/nonexistent/spillway",
        "--cluster-state",
        STATE,
    ]);
    assert_eq!(out.status.code(), Some(64));
    let out = spillway(&[
        "extender",
        "--policies",
        POLICIES,
        "--cluster-state",
        "/nonexistent/state.yaml",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/state.yaml"));
}

/// A pod pinned (by required affinity) to a full pool, while the only free
/// room is on a tainted pool it does not tolerate: explain says it waits
/// for its own pool, through the binary on a dump.
#[test]
fn a_pinned_pod_waits_for_its_own_pool_not_for_a_tainted_ones_room() {
    use spillway::cluster::build::{node, pod};
    let t0 = Timestamp::parse_rfc3339(NOW).unwrap();
    let items = vec![
        serde_json::to_value(node("aks-nodepool1-0").pool("nodepool1").cpu("4").build()).unwrap(),
        serde_json::to_value(node("aks-gpu-0").pool("gpu").taint("sku", "gpu").build()).unwrap(),
        serde_json::to_value(node("spillway-aci").virtual_kubelet().build()).unwrap(),
        // Fills nodepool1.
        serde_json::to_value(
            pod()
                .ns("default")
                .name("filler")
                .cpu("4")
                .on_node("aks-nodepool1-0")
                .phase("Running")
                .build(),
        )
        .unwrap(),
        serde_json::to_value(
            pod()
                .ns("batch")
                .name("pinned")
                .cpu("1")
                .memory("1Gi")
                .require_node("agentpool", "In", &["nodepool1"])
                .tolerate_virtual()
                .created(Timestamp::from_millis(t0.millis() - 20_000))
                .build(),
        )
        .unwrap(),
        // Not pinned, but it does not tolerate the gpu pool's taint either.
        serde_json::to_value(
            pod()
                .ns("batch")
                .name("unpinned")
                .cpu("1")
                .memory("1Gi")
                .tolerate_virtual()
                .created(Timestamp::from_millis(t0.millis() - 20_000))
                .build(),
        )
        .unwrap(),
    ];
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = std::env::temp_dir().join(format!("spillway-explain-pinned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("cluster.json");
    std::fs::write(&state, list.to_string()).unwrap();
    let out = spillway(&[
        "explain",
        "--cluster-state",
        state.to_str().unwrap(),
        "--policies",
        POLICIES,
        "--now",
        NOW,
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for row in v.as_array().unwrap() {
        assert_eq!(row["verdict"], "wait", "{row}");
        assert_eq!(row["reason"], "waiting-for-vm", "{row}");
    }
    let table = spillway(&[
        "explain",
        "--cluster-state",
        state.to_str().unwrap(),
        "--policies",
        POLICIES,
        "--now",
        NOW,
    ]);
    let table = String::from_utf8_lossy(&table.stdout);
    let pinned = table
        .lines()
        .find(|l| l.contains(" pinned "))
        .unwrap_or_default();
    assert!(
        pinned.contains("VM predicted in 4m (pool nodepool1)"),
        "its own pool, not the gpu pool's free room: {table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The AKS virtual-node example pins its pod with `nodeSelector: {type:
/// virtual-kubelet}`; explain says so, and spillway still decides it.
#[test]
fn a_pod_pinned_to_the_virtual_node_is_explained_as_pinned() {
    use spillway::cluster::ClusterObjects;
    use spillway::cluster::build::{node, pod};
    let now = Timestamp::parse_rfc3339(NOW).unwrap();
    let objects = ClusterObjects {
        nodes: vec![
            node("vm-0").pool("user").build(),
            node("virtual-node-aci-linux").virtual_kubelet().build(),
        ],
        pods: vec![
            pod()
                .ns("web")
                .name("aci-helloworld")
                .cpu("1")
                .memory("1Gi")
                .tolerate_virtual()
                .node_selector("type", "virtual-kubelet")
                .unschedulable_since(Timestamp::from_millis(now.millis() - 60_000))
                .build(),
            pod()
                .ns("web")
                .name("free")
                .cpu("1")
                .memory("1Gi")
                .tolerate_virtual()
                .unschedulable_since(Timestamp::from_millis(now.millis() - 60_000))
                .build(),
            // What the webhook made of the example: the pin relaxed.
            pod()
                .ns("web")
                .name("relaxed")
                .cpu("1")
                .memory("1Gi")
                .tolerate_virtual()
                .annotation(
                    "spillway.io/relaxed-pin",
                    "nodeSelector type=virtual-kubelet",
                )
                .unschedulable_since(Timestamp::from_millis(now.millis() - 60_000))
                .build(),
        ],
        ..Default::default()
    };
    let policies = spillway::policy::load_dir(Path::new(POLICIES)).unwrap();
    let rows = explain(&objects, &policies, now, &ClusterConfig::default());
    assert!(find(&rows, "web", "aci-helloworld").pinned);
    assert!(!find(&rows, "web", "free").pinned);
    let relaxed = find(&rows, "web", "relaxed");
    assert!(!relaxed.pinned);
    assert_eq!(
        relaxed.relaxed_pin.as_deref(),
        Some("nodeSelector type=virtual-kubelet")
    );
    let table = render_table(&rows);
    assert!(
        table
            .lines()
            .find(|l| l.contains("relaxed"))
            .unwrap_or_default()
            .contains(&spillway::explain::relaxed_note(
                "nodeSelector type=virtual-kubelet"
            )),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.contains("aci-helloworld"))
        .unwrap_or_default();
    assert!(line.contains(spillway::explain::PINNED_NOTE), "{table}");
    assert!(
        !table
            .lines()
            .find(|l| l.contains(" free "))
            .unwrap_or_default()
            .contains("pinned"),
        "{table}"
    );
}

/// With a Windows virtual node beside the Linux one (`--aci-windows`),
/// `explain --pod` says which virtual node a pod would spill to: the one
/// of its OS.
#[test]
fn explain_names_the_virtual_node_of_the_pods_os() {
    use spillway::cluster::build::{node, pod};
    let t0 = Timestamp::parse_rfc3339(NOW).unwrap();
    let pending = |name: &str, os: Option<&str>| {
        let mut b = pod()
            .ns("legacy")
            .name(name)
            .cpu("1")
            .memory("1Gi")
            .tolerate_virtual()
            .created(Timestamp::from_millis(t0.millis() - 20_000));
        if let Some(os) = os {
            b = b.node_selector("kubernetes.io/os", os);
        }
        serde_json::to_value(b.build()).unwrap()
    };
    let items = vec![
        serde_json::to_value(node("aks-nodepool1-0").pool("nodepool1").cpu("4").build()).unwrap(),
        serde_json::to_value(
            node("spillway-aci")
                .virtual_kubelet()
                .label("kubernetes.io/os", "linux")
                .build(),
        )
        .unwrap(),
        serde_json::to_value(
            node("spillway-aci-windows")
                .virtual_kubelet()
                .label("kubernetes.io/os", "windows")
                .build(),
        )
        .unwrap(),
        pending("iis", Some("windows")),
        pending("api", None),
    ];
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = std::env::temp_dir().join(format!("spillway-explain-os-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("cluster.json");
    std::fs::write(&state, list.to_string()).unwrap();
    for (name, node) in [("iis", "spillway-aci-windows"), ("api", "spillway-aci")] {
        let args = [
            "explain",
            "--cluster-state",
            state.to_str().unwrap(),
            "--policies",
            POLICIES,
            "--now",
            NOW,
            "-n",
            "legacy",
            "--pod",
            name,
        ];
        let out = spillway(&[&args[..], &["-o", "json"]].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["virtual_node"], node, "{name}: {v}");
        let text = String::from_utf8_lossy(&spillway(&args).stdout).into_owned();
        assert!(text.contains(&format!("Spills to:  {node}\n")), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
