//! The Windows virtual node (`--aci-windows`), end to end: `spillway run` as
//! its ServiceAccount with the shipped RBAC plus `deploy/components/aci-windows`,
//! the embedded provider on the ACI emulator over real HTTP, and the test
//! scheduler (kube-scheduler's NodeAffinity and TaintToleration filters,
//! then spillway's extender). Both nodes register Ready; a Windows pod lands
//! on the Windows node and runs as an `osType: Windows` container group; a
//! Linux pod never lands there; a pod bound by `nodeName` to the node of the
//! other OS fails with the kubelet's admission reason and gets no group.

mod support;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spillway::aci::ContainerGroups;
use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::EmulatorHandle;
use spillway::aci::translate::group_name_in;
use std::time::Duration;
use support::actors::{self, Bindings};
use support::{PodDeletion, TestApiServer};

const WAIT: Duration = Duration::from_secs(30);
const LINUX: &str = "spillway-aci";
const WINDOWS: &str = "spillway-aci-windows";
const CLUSTER: &str = "windows-test";
const NS: &str = "web";

const POLICIES: &str = "apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: web, namespace: web }
spec:
  burst: { mode: Always }
";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

struct Spillway {
    emulator: EmulatorHandle,
    run: support::InProcessRun,
}

impl Spillway {
    async fn stop(self) {
        let done = self.run.stop().await;
        assert!(matches!(done, Some(Ok(()))), "{done:?}");
        self.emulator.shutdown().await;
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// The shipped AKS deploy with the Windows component, namespace `web`, and
/// `spillway run --aci emulator --aci-windows` as its ServiceAccount; returns
/// once both virtual nodes are Ready.
async fn start() -> (TestApiServer, Spillway) {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    srv.apply_manifests(&support::kustomize(
        ".ci/fixtures/kustomize/aks-aci-windows",
    ));
    srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    let dir = support::policy_dir("aci-windows-policies", POLICIES);
    let emulator = support::fast_emulator().await;
    let args = support::emulated_run(
        &dir,
        emulator.url.as_str(),
        CLUSTER,
        &[
            "--tick-ms",
            "100",
            "--view-refresh-ms",
            "20",
            "--aci-windows",
            "--aci-windows-kubelet-listen",
            "127.0.0.1:0",
        ],
    );
    let run =
        support::InProcessRun::start_as(&srv, "spillway-system", "spillway", args, &dir).await;
    let both = support::poll_until(WAIT, || {
        support::node_ready(&srv, LINUX) && support::node_ready(&srv, WINDOWS)
    })
    .await;
    assert!(
        both,
        "both virtual nodes register Ready; denials: {:?}",
        srv.auth_denials()
    );
    (srv, Spillway { emulator, run })
}

/// A pod of spillway's scheduler tolerating the virtual nodes' taint, with
/// `kubernetes.io/os: <os>` as its node selector when given.
fn burst_pod(name: &str, os: Option<&str>, node_name: Option<&str>) -> Pod {
    let mut spec = json!({
        "schedulerName": actors::SCHEDULER_NAME,
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
        "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/servercore/iis",
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}],
    });
    if let Some(os) = os {
        spec["nodeSelector"] = json!({"kubernetes.io/os": os});
    }
    if let Some(n) = node_name {
        spec["nodeName"] = json!(n);
    }
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
}

async fn create(srv: &TestApiServer, pod: &Pod) {
    Api::<Pod>::namespaced(srv.client(), NS)
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
}

fn pod_of(srv: &TestApiServer, name: &str) -> Option<Pod> {
    srv.get::<Pod>(NS, name)
}

fn node_of(srv: &TestApiServer, name: &str) -> Option<String> {
    pod_of(srv, name)?.spec?.node_name
}

fn phase_of(srv: &TestApiServer, name: &str) -> Option<String> {
    pod_of(srv, name)?.status?.phase
}

/// The `osType` of pod `pod`'s container group, read back from the
/// emulator through ARM's API (as spillway reads it); `None`: no group.
async fn os_type_of(emu: &EmulatorHandle, pod: &str) -> Option<String> {
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "emulator", "spillway");
    let aci = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("azure client: {e}"));
    aci.get(&group_name_in(CLUSTER, NS, pod))
        .await
        .unwrap_or_else(|e| panic!("GET group of {pod}: {e}"))
        .map(|g| g.properties.os_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_pods_land_on_the_windows_node_and_linux_pods_never_do() {
    let (srv, spillway) = start().await;
    // Both nodes as the AKS virtual node labels them, each with its own Lease.
    let windows = srv.get::<Node>("", WINDOWS).expect("windows node");
    let labels = windows.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.io/os"], "windows");
    assert_eq!(labels["type"], "virtual-kubelet");
    assert_eq!(
        srv.get::<Node>("", LINUX)
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default()["kubernetes.io/os"],
        "linux"
    );
    let taints = windows.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "virtual-kubelet.io/provider" && t.effect == "NoSchedule")
    );
    for n in [LINUX, WINDOWS] {
        let renewed = support::poll_until(WAIT, || {
            srv.get::<Lease>("kube-node-lease", n)
                .and_then(|l| l.spec?.holder_identity)
                .as_deref()
                == Some(n)
        })
        .await;
        assert!(renewed, "each node heartbeats its own Lease: {n}");
    }

    let bindings = Bindings::default();
    let scheduler = tokio::spawn(actors::scheduler(
        srv.client(),
        spillway.run.extender.clone(),
        bindings.clone(),
    ));
    create(&srv, &burst_pod("iis", Some("windows"), None)).await;
    create(&srv, &burst_pod("api", Some("linux"), None)).await;
    // Names no OS: a Linux pod, which the extender keeps off the Windows node.
    create(&srv, &burst_pod("plain", None, None)).await;
    let emu = &spillway.emulator;
    let placed = support::poll_until(WAIT, || {
        ["iis", "api", "plain"]
            .iter()
            .all(|p| phase_of(&srv, p).as_deref() == Some("Running"))
    })
    .await;
    assert!(
        placed,
        "pods: {:?}; denials: {:?}",
        ["iis", "api", "plain"].map(|p| (node_of(&srv, p), phase_of(&srv, p))),
        srv.auth_denials()
    );
    assert_eq!(node_of(&srv, "iis").as_deref(), Some(WINDOWS));
    assert_eq!(os_type_of(emu, "iis").await.as_deref(), Some("Windows"));
    for p in ["api", "plain"] {
        assert_eq!(node_of(&srv, p).as_deref(), Some(LINUX), "{p}");
        assert_eq!(os_type_of(emu, p).await.as_deref(), Some("Linux"), "{p}");
    }
    assert!(
        bindings
            .all()
            .iter()
            .all(|(pod, node, _)| pod == "iis" || node != WINDOWS),
        "only the Windows pod is ever bound to the Windows node: {:?}",
        bindings.all()
    );
    // Both nodes' pods count in the process's pod gauge (a sum, not
    // whichever node synced last).
    let running = || {
        spillway
            .run
            .metrics
            .provider_pods
            .with_label_values(&["Running"])
            .get()
    };
    let counted = support::poll_until(WAIT, || running() == 3).await;
    assert!(
        counted,
        "spillway_provider_pods{{phase=Running}} = {}",
        running()
    );
    // Each node has its own kubelet endpoint, as each kubelet does: its
    // own port, reporting the pods of its OS only.
    let port = |n: &str| {
        srv.get::<Node>("", n)
            .and_then(|n| n.status?.daemon_endpoints?.kubelet_endpoint)
            .map(|e| e.port)
            .unwrap_or_else(|| panic!("{n}: a kubelet endpoint"))
    };
    let (linux_port, windows_port) = (port(LINUX), port(WINDOWS));
    assert_ne!(linux_port, windows_port);
    let summary = |port: i32| async move {
        let mut pods = Vec::new();
        for _ in 0..50 {
            let bytes = reqwest::get(format!("http://127.0.0.1:{port}/stats/summary"))
                .await
                .unwrap_or_else(|e| panic!("summary: {e}"))
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("summary: {e}"));
            let body: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("summary JSON: {e}"));
            pods = body["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["podRef"]["name"].as_str().map(String::from))
                .collect::<Vec<_>>();
            pods.sort();
            if !pods.is_empty() {
                return (body["node"]["nodeName"].clone(), pods);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (Value::Null, pods)
    };
    assert_eq!(
        summary(windows_port).await,
        (json!(WINDOWS), vec!["iis".to_string()])
    );
    assert_eq!(
        summary(linux_port).await,
        (json!(LINUX), vec!["api".to_string(), "plain".to_string()])
    );
    // Both virtual nodes tie on score, so the scheduler alone would send the
    // plain pod to whichever sorts first: the extender's filter is what keeps
    // a pod off the virtual node of the other OS, whatever the order.
    for (pod, keeps) in [("plain", LINUX), ("api", LINUX), ("iis", WINDOWS)] {
        let mut p = pod_of(&srv, pod).expect("pod");
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = None;
        }
        let body = json!({"Pod": p, "NodeNames": [WINDOWS, LINUX]});
        let bytes = reqwest::Client::new()
            .post(format!("http://{}/filter", spillway.run.extender))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_else(|e| panic!("{e}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("filter: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("filter answer: {e}"));
        let resp: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp["NodeNames"], json!([keeps]), "{pod}: {resp}");
    }
    scheduler.abort();
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    spillway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_by_name_to_the_node_of_the_other_os_fails_and_gets_no_group() {
    let (srv, spillway) = start().await;
    // `nodeName` set directly skips every scheduler; the node admits as the
    // kubelet does.
    create(
        &srv,
        &burst_pod("linux-on-win", Some("linux"), Some(WINDOWS)),
    )
    .await;
    create(
        &srv,
        &burst_pod("win-on-linux", Some("windows"), Some(LINUX)),
    )
    .await;
    // And one that agrees, to show the node does run what it admits.
    create(
        &srv,
        &burst_pod("win-on-win", Some("windows"), Some(WINDOWS)),
    )
    .await;
    let settled = support::poll_until(WAIT, || {
        phase_of(&srv, "linux-on-win").as_deref() == Some("Failed")
            && phase_of(&srv, "win-on-linux").as_deref() == Some("Failed")
            && phase_of(&srv, "win-on-win").as_deref() == Some("Running")
    })
    .await;
    assert!(
        settled,
        "phases: {:?}",
        ["linux-on-win", "win-on-linux", "win-on-win"].map(|p| phase_of(&srv, p))
    );
    for (p, node) in [("linux-on-win", WINDOWS), ("win-on-linux", LINUX)] {
        let status = pod_of(&srv, p).and_then(|p| p.status).expect("status");
        assert_eq!(status.reason.as_deref(), Some("NodeAffinity"), "{p}");
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with(
                "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
            ) && message.contains(node),
            "{p}: {message}"
        );
        assert_eq!(
            os_type_of(&spillway.emulator, p).await,
            None,
            "{p} has no group"
        );
    }
    assert_eq!(
        os_type_of(&spillway.emulator, "win-on-win")
            .await
            .as_deref(),
        Some("Windows")
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    spillway.stop().await;
}

/// The engine, autoscaler and webhook know both nodes as virtual by name
/// (`RunCommand::virtual_node_names`, the names placeholders, drain-back
/// and deletion cost compare), custom names too.
#[test]
fn both_node_names_are_virtual_node_names() {
    let names = |extra: &[&str]| {
        let mut argv = vec!["spillway", "--aci", "emulator"];
        argv.extend_from_slice(extra);
        let args = Args::parse_from(argv);
        let config = args.run.cluster_config();
        let names = args.run.virtual_node_names();
        for n in &names {
            assert!(config.virtual_nodes.is_virtual_name(n), "{n}");
        }
        names
    };
    let n = names(&["--aci-windows"]);
    assert!(
        n.iter().any(|x| x == LINUX) && n.iter().any(|x| x == WINDOWS),
        "{n:?}"
    );
    let n = names(&[
        "--node-name",
        "vk",
        "--aci-windows",
        "--aci-windows-node-name",
        "vk-win",
    ]);
    assert!(
        n.iter().any(|x| x == "vk") && n.iter().any(|x| x == "vk-win"),
        "{n:?}"
    );
    let n = names(&[]);
    assert!(!n.iter().any(|x| x == WINDOWS), "{n:?}");
}
