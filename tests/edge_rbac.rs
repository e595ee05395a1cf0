//! deploy/components/iot-edge under real RBAC: `spillway run --edge hub`
//! with the component's arguments, as the `spillway` ServiceAccount with the
//! rules of the AKS overlay plus the component, registers the edge node,
//! reads the hub's connection Secret, keeps the node's Lease and turns a pod
//! into a layered deployment on the hub — with no request refused. Without
//! the component's rules the same run is refused (the rules are needed).

mod support;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::edge::emulator::{Emulator, EmulatorConfig, NewDevice};
use std::time::Duration;
use support::{PodDeletion, TestApiServer, poll_until};

const SA_NS: &str = "spillway-system";
const SA: &str = "spillway";
const NODE: &str = "spillway-edge";
const WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Parser)]
struct RunArgs {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// The component's `--edge*` arguments, read from the built Deployment.
fn edge_args(manifests: &str) -> Vec<String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple(manifests).unwrap_or_else(|e| panic!("{e}"));
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "spillway")
        .unwrap_or_else(|| panic!("no spillway Deployment"));
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--edge"))
        .map(str::to_string)
        .collect()
}

/// Runs `spillway run` with the edge node under the RBAC of `overlay`;
/// returns the server once the run has had `WAIT` to register and act.
async fn run_under(overlay: &str, expect_success: bool) -> TestApiServer {
    use clap::Parser as _;
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let manifests = support::kustomize(overlay);
    srv.apply_manifests(&manifests);
    srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: sensors\n");
    // The component under test always supplies the arguments; without it
    // the same arguments are given by hand, so only the RBAC differs.
    let mut args = edge_args(&support::kustomize(".ci/fixtures/kustomize/aks-iot-edge"));
    assert!(
        args.iter().any(|a| a == "--edge=hub"),
        "the component turns the edge node on: {args:?}"
    );

    let emu = Emulator::start(EmulatorConfig {
        report_delay: Duration::from_millis(100),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    emu.state
        .add_device(NewDevice::edge("munich-1", json!({"site": "munich"})))
        .unwrap_or_else(|e| panic!("device: {e}"));
    let conn = emu
        .connection_string()
        .unwrap_or_else(|| panic!("connection string"))
        .to_connection_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "spillway-iothub", "namespace": SA_NS},
        "stringData": {"connectionString": conn}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(srv.client(), SA_NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret: {e}"));

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("edge-rbac-policies");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    args.extend([
        format!("--edge-hub-url={}", emu.url),
        "--edge-sync-secs=1".to_string(),
    ]);
    let mut argv = vec![
        "spillway".to_string(),
        "--policies".into(),
        dir.display().to_string(),
        "--identity".into(),
        "r1".into(),
        "--lease-seconds".into(),
        "3".into(),
        "--node-ip".into(),
        "127.0.0.1".into(),
    ];
    argv.extend(args);
    let args = RunArgs::parse_from(argv);
    let run = support::InProcessRun::start_as(&srv, SA_NS, SA, args.run, &dir).await;

    let ready = || {
        srv.get::<Node>("", NODE)
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let registered = poll_until(
        if expect_success {
            WAIT
        } else {
            Duration::from_secs(8)
        },
        ready,
    )
    .await;
    if expect_success {
        assert!(
            registered,
            "edge node Ready; denials: {:?}",
            srv.auth_denials()
        );
        // A bare pod on the edge node becomes a layered deployment.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "sensor", "namespace": "sensors",
                "labels": {"edge.spillway.io/tag.site": "munich"}},
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "sensor", "image": "sensor:1.0"}],
                "tolerations": [{"key": "virtual-kubelet.io/provider", "value": "iotedge", "effect": "NoSchedule"}]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Api::<Pod>::namespaced(srv.client(), "sensors")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod: {e}"));
        let hub = spillway::edge::HubClient::new(
            emu.connection_string()
                .unwrap_or_else(|| panic!("connection string")),
            spillway::edge::HubClientConfig {
                endpoint: Some(emu.url.clone()),
                ..spillway::edge::HubClientConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut layered = false;
        for _ in 0..60 {
            let all = hub.list_configurations(None).await.unwrap_or_default();
            if all.iter().any(|c| {
                c.labels
                    .get(spillway::edge::translate::LABEL_ROLE)
                    .map(String::as_str)
                    == Some(spillway::edge::translate::ROLE_LAYERED)
            }) {
                layered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            layered,
            "a layered deployment on the hub; denials: {:?}",
            srv.auth_denials()
        );
    }
    let _ = run.stop().await;
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iot_edge_component_grants_what_the_edge_node_uses() {
    let srv = run_under(".ci/fixtures/kustomize/aks-iot-edge", true).await;
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_components_rules_the_edge_node_is_refused() {
    let srv = run_under("deploy/overlays/aks", false).await;
    let denials = srv.auth_denials();
    assert!(
        denials.iter().any(|d| d.contains(NODE)),
        "the edge node's own objects need the component's rules: {denials:?}"
    );
}
