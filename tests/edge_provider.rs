//! The edge virtual node end to end: the shared provider controllers over
//! the IoT Edge backend, between the test API server and the IoT Hub
//! emulator (both in-process over real HTTP).

mod support;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway::edge::backend::{EdgeBackend, EdgeBackendConfig, node_profile};
use spillway::edge::emulator::{Emulator, EmulatorConfig, EmulatorHandle, NewDevice};
use spillway::edge::translate::{EdgeNode, LABEL_NODE, LABEL_ROLE, ROLE_LAYERED};
use spillway::edge::{HubClient, HubClientConfig};
use spillway::provider::{Provider, ProviderConfig};
use std::sync::Arc;
use std::time::Duration;
use support::{PodDeletion, TestApiServer};
use tokio::time::Instant;

const NODE: &str = "edge-munich";
const NS: &str = "iot";
const WAIT: Duration = Duration::from_secs(20);

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(WAIT, what, check).await
}

async fn eventually_within<F, Fut>(wait: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {wait:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fast_emulator() -> EmulatorConfig {
    EmulatorConfig {
        configuration_ops_per_minute: 60_000.0,
        queries_per_minute: 60_000.0,
        twin_reads_per_second: 1_000.0,
        burst: 1_000,
        report_delay: Duration::from_millis(100),
        backoff_restart_every: Duration::from_millis(50),
        ..EmulatorConfig::default()
    }
}

fn fast_client(url: &str) -> HubClientConfig {
    HubClientConfig {
        endpoint: Some(url.to_string()),
        request_timeout: Duration::from_secs(5),
        configuration_ops_per_minute: 60_000.0,
        queries_per_minute: 60_000.0,
        twin_reads_per_second: 1_000.0,
        burst: 100,
        base_backoff: Duration::from_millis(20),
        budget: Duration::from_secs(3),
        ..HubClientConfig::default()
    }
}

fn provider_config() -> ProviderConfig {
    let mut c = ProviderConfig::new(NODE, "test-cluster", "hub", "10.1.2.3", 10250);
    c.node.profile = node_profile();
    c.sync_interval = Duration::from_millis(200);
    c.lease_interval = Duration::from_millis(300);
    c.status_interval = Duration::from_secs(2);
    c.usage_interval = Duration::from_millis(300);
    c.gc_interval = Duration::from_millis(500);
    c.retry_backoff = Duration::from_millis(200);
    c.max_retry_backoff = Duration::from_secs(1);
    c.unreachable_after = Duration::from_millis(800);
    c
}

/// A replica of ReplicaSet `sensor-1` bound to the edge node, for munich.
fn replica(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {"app": "sensor", "edge.spillway.io/tag.site": "munich"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "sensor-1", "uid": "rs-uid-1", "controller": true}]
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "sensor", "image": "sensor:1.0"}],
            "tolerations": [{"key": "virtual-kubelet.io/provider", "value": "iotedge", "effect": "NoSchedule"}]
        }
    }))
    .unwrap_or_else(|e| panic!("pod: {e}"))
}

async fn hub_with_devices() -> (EmulatorHandle, Arc<HubClient>) {
    let emu = Emulator::start(fast_emulator())
        .await
        .unwrap_or_else(|e| panic!("emulator: {e}"));
    for (id, site) in [
        ("munich-1", "munich"),
        ("munich-2", "munich"),
        ("munich-3", "munich"),
        ("berlin-1", "berlin"),
        ("berlin-2", "berlin"),
    ] {
        emu.state
            .add_device(NewDevice::edge(id, json!({"site": site})))
            .unwrap_or_else(|e| panic!("device: {e}"));
    }
    let conn = emu
        .connection_string()
        .unwrap_or_else(|| panic!("connection string"));
    let hub = HubClient::new(conn, fast_client(&emu.url)).unwrap_or_else(|e| panic!("hub: {e}"));
    (emu, Arc::new(hub))
}

async fn layered(hub: &HubClient) -> Vec<String> {
    hub.list_configurations(None)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_LAYERED)
                && c.labels.get(LABEL_NODE).map(String::as_str) == Some(NODE)
        })
        .map(|c| c.id)
        .collect()
}

/// A running provider over the edge backend; `stop` ends it.
struct Running {
    /// Where the backend exports `spillway_edge_*`.
    metrics: Arc<spillway::metrics::Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _leader: tokio::sync::watch::Sender<bool>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn start(srv: &TestApiServer, hub: &Arc<HubClient>, orphan_grace: Duration) -> Running {
    start_node(srv, hub, orphan_grace, EdgeNode::new(NODE, "*"))
}

fn start_node(
    srv: &TestApiServer,
    hub: &Arc<HubClient>,
    orphan_grace: Duration,
    node: EdgeNode,
) -> Running {
    let mut config = EdgeBackendConfig::new(node);
    config.orphan_grace = orphan_grace;
    let metrics = Arc::new(spillway::metrics::Metrics::new());
    let backend = Arc::new(
        EdgeBackend::new(hub.clone(), config, Some(srv.client())).with_metrics(metrics.clone()),
    );
    let provider = Provider::with_backend(srv.client(), backend, provider_config(), None);
    let (leader, leader_rx) = tokio::sync::watch::channel(true);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Running {
        metrics,
        stop,
        task,
        _leader: leader,
    }
}

async fn api_server() -> TestApiServer {
    TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await
}

fn ready_with(pod: &Pod, message: &str) -> bool {
    let Some(s) = &pod.status else {
        return false;
    };
    s.phase.as_deref() == Some("Running")
        && s.message.as_deref() == Some(message)
        && s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test]
async fn two_replicas_share_one_deployment_run_on_the_3_matching_devices_and_go_with_the_last_pod()
{
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let running = start(&srv, &hub, Duration::from_secs(60));

    // The node: edge taint and label, never burst capacity.
    let nodes: Api<Node> = Api::all(srv.client());
    eventually("the edge node is registered", || async {
        nodes.get_opt(NODE).await.ok().flatten().is_some()
    })
    .await;
    let node = nodes
        .get(NODE)
        .await
        .unwrap_or_else(|e| panic!("node: {e}"));
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("spillway.io/edge").map(String::as_str),
        Some("true")
    );
    assert!(!labels.contains_key("spillway.io/virtual"));
    let taint = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .find(|t| t.key == "virtual-kubelet.io/provider");
    assert_eq!(taint.and_then(|t| t.value).as_deref(), Some("iotedge"));

    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    for name in ["sensor-1-a", "sensor-1-b"] {
        pods.create(&PostParams::default(), &replica(name))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    for name in ["sensor-1-a", "sensor-1-b"] {
        eventually(&format!("{name} Ready on 3 devices"), || async {
            pods.get_opt(name)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
        })
        .await;
    }
    let ids = layered(&hub).await;
    assert_eq!(ids.len(), 1, "replicas share one deployment: {ids:?}");
    let id = ids[0].clone();
    // The node's gauges follow the hub's system metrics.
    let gauge = |text: &str, series: &str| -> Option<i64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let text = running.metrics.render();
    assert_eq!(
        gauge(
            &text,
            &format!("spillway_edge_deployments{{node=\"{NODE}\"}}")
        ),
        Some(1),
        "{text}"
    );
    for (state, want) in [
        ("targeted", 3),
        ("applied", 3),
        ("succeeded", 3),
        ("failed", 0),
    ] {
        assert_eq!(
            gauge(
                &text,
                &format!("spillway_edge_devices{{node=\"{NODE}\",state=\"{state}\"}}")
            ),
            Some(want),
            "{state}: {text}"
        );
    }

    // Steady state: twins are cached while the metrics hold (device queries
    // are scarce on a real hub), though a sync runs every 200 ms.
    let queries = |c: &spillway::edge::emulator::Counters| {
        c.requests
            .iter()
            .filter(|(k, _)| k.contains("devices/query"))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let before = queries(&emu.state.counters());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = queries(&emu.state.counters()) - before;
    assert!(
        during <= 1,
        "{during} device queries in 1 s of steady state"
    );

    // One replica goes: the deployment stays for the other.
    pods.delete("sensor-1-a", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("sensor-1-a is removed", || async {
        pods.get_opt("sensor-1-a").await.ok().flatten().is_none()
    })
    .await;
    assert_eq!(layered(&hub).await, vec![id.clone()]);

    // The last replica goes: the deployment is deleted and the module leaves the devices.
    pods.delete("sensor-1-b", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("the deployment is deleted", || async {
        layered(&hub).await.is_empty()
    })
    .await;
    eventually("the gauge says no deployment", || async {
        running
            .metrics
            .render()
            .contains(&format!("spillway_edge_deployments{{node=\"{NODE}\"}} 0"))
    })
    .await;
    eventually("the module is gone from munich-1", || async {
        let Ok(Some(twin)) = hub.edge_agent_twin("munich-1").await else {
            return false;
        };
        twin.edge_agent_report().is_some_and(|r| {
            r.last_desired_version == twin.desired_version() && !r.modules.contains_key("sensor")
        })
    })
    .await;
    eventually("sensor-1-b is removed", || async {
        pods.get_opt("sensor-1-b").await.ok().flatten().is_none()
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_failing_image_keeps_the_pod_unready_with_the_modules_status() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let mut faults = emu.state.faults();
    faults.failing_images.insert("sensor:1.0".into());
    emu.state.set_faults(faults);
    let running = start(&srv, &hub, Duration::from_secs(60));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    pods.create(&PostParams::default(), &replica("sensor-1-a"))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("the module's back-off shows on the pod", || async {
        let Some(p) = pods.get_opt("sensor-1-a").await.ok().flatten() else {
            return false;
        };
        let Some(s) = p.status else { return false };
        let waiting = s
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.clone())
            .next();
        s.phase.as_deref() == Some("Pending")
            && s.reason.as_deref() == Some("DeploymentRollingOut")
            && s.message
                .as_deref()
                .is_some_and(|m| m.contains("failed=3") && m.contains("500"))
            && waiting.is_some_and(|w| {
                w.reason.as_deref() == Some("ModuleBackOff")
                    && w.message.is_some_and(|m| m.contains("manifest unknown"))
            })
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn no_matching_device_is_pending_with_no_target_devices() {
    let srv = api_server().await;
    let (_emu, hub) = hub_with_devices().await;
    let running = start(&srv, &hub, Duration::from_secs(60));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    let mut pod = replica("sensor-1-a");
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.insert("edge.spillway.io/tag.site".into(), "hamburg".into());
    }
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("Pending with NoTargetDevices", || async {
        pods.get_opt("sensor-1-a")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.phase.as_deref() == Some("Pending")
                    && s.reason.as_deref() == Some("NoTargetDevices")
            })
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_restart_adopts_by_labels_creates_nothing_twice_and_collects_orphans() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let first = start(&srv, &hub, Duration::from_millis(300));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    pods.create(&PostParams::default(), &replica("sensor-1-a"))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("Ready", || async {
        pods.get_opt("sensor-1-a")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
    })
    .await;
    let ids = layered(&hub).await;
    assert_eq!(ids.len(), 1);
    first.stop().await;

    // While spillway is down: a deployment of a controller that is gone.
    let mut orphan = hub
        .get_configuration(&ids[0])
        .await
        .unwrap_or_else(|e| panic!("get: {e}"))
        .unwrap_or_else(|| panic!("exists"));
    orphan.id = "edge-munich-iot-gone-0000000000000000".into();
    orphan
        .labels
        .insert("spillway.io/owner-uid".into(), "uid-of-a-deleted-rs".into());
    orphan.etag = None;
    hub.create_configuration(&orphan)
        .await
        .unwrap_or_else(|e| panic!("orphan: {e}"));

    let second = start(&srv, &hub, Duration::from_millis(300));
    eventually("the orphan is collected", || async {
        layered(&hub).await == ids
    })
    .await;
    // The pod stays Ready on the adopted deployment; nothing was created twice.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(layered(&hub).await, ids);
    let p = pods
        .get("sensor-1-a")
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert!(ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"));
    let creates = emu.state.counters().creates_by_id;
    assert!(
        creates.values().all(|n| *n == 1),
        "no duplicate creates: {creates:?}"
    );
    second.stop().await;
}

fn node_ready(node: &Node) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test]
async fn throttling_lost_answers_and_an_outage_leave_no_duplicates_and_no_leaks() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let mut faults = emu.state.faults();
    faults.throttle_next = 20;
    faults.retry_after_seconds = 0;
    faults.lose_answer_next = 2;
    emu.state.set_faults(faults);
    let running = start(&srv, &hub, Duration::from_secs(60));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    for name in ["sensor-1-a", "sensor-1-b"] {
        pods.create(&PostParams::default(), &replica(name))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    for name in ["sensor-1-a", "sensor-1-b"] {
        eventually(
            &format!("{name} Ready despite 429s and lost answers"),
            || async {
                pods.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
            },
        )
        .await;
    }
    assert_eq!(layered(&hub).await.len(), 1);

    // The hub goes away: the node turns NotReady with the reason, then back.
    let mut faults = emu.state.faults();
    faults.outage = true;
    emu.state.set_faults(faults);
    let nodes: Api<Node> = Api::all(srv.client());
    eventually("the node is NotReady with IotHubUnreachable", || async {
        nodes
            .get_opt(NODE)
            .await
            .ok()
            .flatten()
            .and_then(|n| node_ready(&n))
            == Some(("False".into(), "IotHubUnreachable".into()))
    })
    .await;
    let mut faults = emu.state.faults();
    faults.outage = false;
    emu.state.set_faults(faults);
    eventually("the node is Ready again", || async {
        nodes
            .get_opt(NODE)
            .await
            .ok()
            .flatten()
            .and_then(|n| node_ready(&n))
            .is_some_and(|(status, _)| status == "True")
    })
    .await;
    for name in ["sensor-1-a", "sensor-1-b"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
    eventually("nothing leaked on the hub", || async {
        layered(&hub).await.is_empty()
    })
    .await;
    let creates = emu.state.counters().creates_by_id;
    assert!(
        creates.values().all(|n| *n == 1),
        "no duplicate creates: {creates:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn env_from_secrets_reaches_the_module_and_missing_optional_keys_are_left_out() {
    use k8s_openapi::api::core::v1::Secret;
    let srv = api_server().await;
    let (_emu, hub) = hub_with_devices().await;
    let secrets: Api<Secret> = Api::namespaced(srv.client(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hub-creds", "namespace": NS},
        "stringData": {"token": "t0k"}
    }))
    .unwrap_or_else(|e| panic!("secret: {e}"));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret: {e}"));
    let running = start(&srv, &hub, Duration::from_secs(60));
    let mut pod = replica("sensor-1-a");
    if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
        c.env = Some(
            serde_json::from_value(json!([
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-creds", "key": "token"}}},
                {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "hub-creds", "key": "nope", "optional": true}}},
                {"name": "URL", "value": "https://x/?t=$(TOKEN)"}
            ]))
            .unwrap_or_else(|e| panic!("env: {e}")),
        );
    }
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("the deployment exists", || async {
        layered(&hub).await.len() == 1
    })
    .await;
    let id = layered(&hub).await.remove(0);
    let c = hub
        .get_configuration(&id)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"))
        .unwrap_or_else(|| panic!("exists"));
    let modules = c.content.modules_content.unwrap_or_default();
    let env = &modules["$edgeAgent"]["properties.desired.modules.sensor"]["env"];
    assert_eq!(env["TOKEN"]["value"], "t0k");
    assert_eq!(env["URL"]["value"], "https://x/?t=t0k");
    assert!(env.get("EXTRA").is_none(), "{env}");
    running.stop().await;
}

/// The hub's connection string as Secret `spillway/NAME` (key
/// `connectionString`), as `--edge-connection-secret` and `--edge-hub` read it.
async fn connection_secret(srv: &TestApiServer, name: &str, emu: &EmulatorHandle) {
    use k8s_openapi::api::core::v1::Secret;
    let conn = emu
        .connection_string()
        .unwrap_or_else(|| panic!("connection string"))
        .to_connection_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "spillway"},
        "stringData": {"connectionString": conn}
    }))
    .unwrap_or_else(|e| panic!("secret: {e}"));
    Api::<Secret>::namespaced(srv.client(), "spillway")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret: {e}"));
}

/// Edge nodes started as `spillway run` starts them from `args`, as the
/// leader when `leader`; the first sender stops them, the second holds
/// leadership (keep it alive as long as the nodes).
async fn start_from_flags(
    srv: &TestApiServer,
    args: &spillway::edge::node::EdgeArgs,
    leader: bool,
    metrics: Option<Arc<spillway::metrics::Metrics>>,
) -> (
    spillway::edge::node::EdgeStarted,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Sender<bool>,
) {
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(leader);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = spillway::edge::node::start(
        args,
        srv.client(),
        srv.client(),
        "10.1.2.3",
        leader_rx,
        stop_rx,
        metrics,
    )
    .await
    .unwrap_or_else(|e| panic!("start: {e}"))
    .unwrap_or_else(|| panic!("edge nodes"));
    (started, stop_tx, leader_tx)
}

#[tokio::test]
async fn the_edge_flags_start_a_node_from_the_connection_secret() {
    use spillway::edge::node::{EdgeArgs, EdgeMode, start as start_edge};
    let srv = api_server().await;
    let (emu, _hub) = hub_with_devices().await;
    connection_secret(&srv, "hub", &emu).await;
    let args = EdgeArgs {
        mode: EdgeMode::Emulator,
        edge_node: "edge-from-flags".into(),
        edge_connection_secret: Some("spillway/hub".into()),
        edge_hub_url: Some(emu.url.clone()),
        edge_target_condition: "*".into(),
        edge_sync_secs: 1,
        edge_hubs: Vec::new(),
        edge_cleanup_on_exit: false,
    };
    let metrics = Arc::new(spillway::metrics::Metrics::new());
    let (started, stop_tx, _leader) =
        start_from_flags(&srv, &args, true, Some(metrics.clone())).await;
    let nodes: Api<Node> = Api::all(srv.client());
    eventually(
        "the node from the flags is registered and Ready",
        || async {
            nodes
                .get_opt("edge-from-flags")
                .await
                .ok()
                .flatten()
                .and_then(|n| node_ready(&n))
                .is_some_and(|(status, _)| status == "True")
        },
    )
    .await;
    // Every hub request is counted, by lane and status.
    eventually("hub requests are counted", || async {
        metrics.render().contains(
            "spillway_edge_hub_requests_total{code=\"200\",lane=\"configurations\",node=\"edge-from-flags\"}",
        )
    })
    .await;
    // A Secret without the key is a setup error naming it.
    let mut bad = args.clone();
    bad.edge_connection_secret = Some("spillway/missing".into());
    let (_l, l_rx) = tokio::sync::watch::channel(true);
    let (_s, s_rx) = tokio::sync::watch::channel(false);
    let err = start_edge(
        &bad,
        srv.client(),
        srv.client(),
        "10.1.2.3",
        l_rx,
        s_rx,
        None,
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("a missing Secret is refused"));
    assert!(err.to_string().contains("spillway/missing"), "{err}");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), started.task).await;
}

/// ReplicaSet `name` of Deployment `sensor` (uid `deploy-uid-1`) at
/// `revision`, as the Deployment controller writes it.
fn replicaset(name: &str, revision: i32, image: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": NS,
            "annotations": {"deployment.kubernetes.io/revision": revision.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "sensor", "uid": "deploy-uid-1", "controller": true}]
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "sensor", "pod-template-hash": name}},
            "template": {
                "metadata": {"labels": {"app": "sensor", "pod-template-hash": name}},
                "spec": {"containers": [{"name": "sensor", "image": image}]}
            }
        }
    }))
    .unwrap_or_else(|e| panic!("replicaset: {e}"))
}

/// A pod of `rs` bound to the edge node, as the ReplicaSet controller makes it.
fn pod_of(rs: &ReplicaSet, name: &str, image: &str) -> Pod {
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let mut pod = replica(name);
    pod.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: rs_name.clone(),
            uid: rs.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    ]);
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.insert("pod-template-hash".into(), rs_name);
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].image = Some(image.into());
    }
    pod
}

#[tokio::test]
async fn the_test_api_server_validates_replicasets_as_kube_apiserver_does() {
    let srv = api_server().await;
    let api: Api<ReplicaSet> = Api::namespaced(srv.client(), NS);
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        e => panic!("not an API refusal: {e}"),
    };
    let mut no_selector = replicaset("s-0", 1, "sensor:1.0");
    if let Some(spec) = no_selector.spec.as_mut() {
        spec.selector = Default::default();
    }
    let (code, reason, message) = refused(
        api.create(&PostParams::default(), &no_selector)
            .await
            .err()
            .unwrap_or_else(|| panic!("an empty selector is refused")),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("empty selector is invalid for deployment"),
        "{message}"
    );
    let mut mismatched = replicaset("s-1", 1, "sensor:1.0");
    if let Some(t) = mismatched.spec.as_mut().and_then(|s| s.template.as_mut()) {
        t.metadata = Some(Default::default());
    }
    let (code, _, message) = refused(
        api.create(&PostParams::default(), &mismatched)
            .await
            .err()
            .unwrap_or_else(|| panic!("a selector that misses the template is refused")),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.template.metadata.labels")
            && message.contains("`selector` does not match template `labels`"),
        "{message}"
    );
    let mut rs = api
        .create(&PostParams::default(), &replicaset("s-2", 1, "sensor:1.0"))
        .await
        .unwrap_or_else(|e| panic!("a valid ReplicaSet is accepted: {e}"));
    if let Some(spec) = rs.spec.as_mut() {
        spec.selector.match_labels = Some([("app".to_string(), "other".to_string())].into());
        if let Some(t) = spec.template.as_mut().and_then(|t| t.metadata.as_mut()) {
            t.labels = Some([("app".to_string(), "other".to_string())].into());
        }
    }
    let (code, _, message) = refused(
        api.replace("s-2", &PostParams::default(), &rs)
            .await
            .err()
            .unwrap_or_else(|| panic!("the selector is immutable")),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.selector") && message.contains("field is immutable"),
        "{message}"
    );
}

/// Wait until the provider has listed the hub's configurations five more
/// times (each collection pass lists them once).
async fn five_more_hub_lists(emu: &EmulatorHandle) {
    let lists = || {
        emu.state
            .counters()
            .requests
            .get("GET configurations 200")
            .copied()
            .unwrap_or(0)
    };
    let before = lists();
    eventually("five more reads of the hub", || async {
        lists() >= before + 5
    })
    .await;
}

/// Revision 1 of Deployment `sensor` (two replicas of sensor:1.0) Ready on
/// the 3 munich devices, then revision 2 (sensor:2.0, an image the devices
/// cannot pull yet) with its own deployment, and revision 1's pods deleted
/// as the ReplicaSet controller may do before the new modules run. Returns
/// the old and the new deployment ids and the faults in force.
async fn rollout_stuck_on_revision_2(
    srv: &TestApiServer,
    emu: &EmulatorHandle,
    hub: &Arc<HubClient>,
) -> (String, String, spillway::edge::emulator::Faults) {
    let replicasets: Api<ReplicaSet> = Api::namespaced(srv.client(), NS);
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    let ok3 = "targeted=3 applied=3 ok=3 failed=0";

    // Revision 1: two replicas of sensor:1.0 on the 3 munich devices.
    let rs1 = replicasets
        .create(
            &PostParams::default(),
            &replicaset("sensor-1", 1, "sensor:1.0"),
        )
        .await
        .unwrap_or_else(|e| panic!("create rs 1: {e}"));
    for name in ["sensor-1-a", "sensor-1-b"] {
        pods.create(&PostParams::default(), &pod_of(&rs1, name, "sensor:1.0"))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    eventually("revision 1 is Ready", || async {
        pods.get_opt("sensor-1-b")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, ok3))
    })
    .await;
    let ids = layered(hub).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let old = ids[0].clone();

    // Revision 2 with an image the devices cannot pull yet.
    let mut faults = emu.state.faults();
    faults.failing_images.insert("sensor:2.0".into());
    emu.state.set_faults(faults.clone());
    let rs2 = replicasets
        .create(
            &PostParams::default(),
            &replicaset("sensor-2", 2, "sensor:2.0"),
        )
        .await
        .unwrap_or_else(|e| panic!("create rs 2: {e}"));
    for name in ["sensor-2-a", "sensor-2-b"] {
        pods.create(&PostParams::default(), &pod_of(&rs2, name, "sensor:2.0"))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    eventually("revision 2 has its own deployment", || async {
        layered(hub).await.len() == 2
    })
    .await;
    let new = layered(hub)
        .await
        .into_iter()
        .find(|id| *id != old)
        .unwrap_or_else(|| panic!("a new deployment"));
    let priority = |id: String| {
        let hub = hub.clone();
        async move {
            hub.get_configuration(&id)
                .await
                .ok()
                .flatten()
                .map(|c| c.priority)
        }
    };
    assert_eq!(priority(old.clone()).await, Some(101));
    assert_eq!(
        priority(new.clone()).await,
        Some(102),
        "the new revision wins"
    );

    // The old pods go before the new modules run (as the ReplicaSet
    // controller may do): their deployment must stay.
    for name in ["sensor-1-a", "sensor-1-b"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
    eventually("the old pods are removed", || async {
        pods.get_opt("sensor-1-a").await.ok().flatten().is_none()
            && pods.get_opt("sensor-1-b").await.ok().flatten().is_none()
    })
    .await;
    (old, new, faults)
}

#[tokio::test]
async fn a_rolling_update_keeps_the_old_deployment_until_the_new_one_runs_on_every_device() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let running = start(&srv, &hub, Duration::from_millis(200));
    let (old, new, mut faults) = rollout_stuck_on_revision_2(&srv, &emu, &hub).await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    let ok3 = "targeted=3 applied=3 ok=3 failed=0";
    // Several collection passes (each lists the configurations) later,
    // the old deployment is still there.
    five_more_hub_lists(&emu).await;
    assert!(
        layered(&hub).await.contains(&old),
        "the old deployment went before the new one ran"
    );
    let p = pods
        .get("sensor-2-a")
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert!(!ready_with(&p, ok3), "revision 2 is not running yet");

    // The image can be pulled: the new modules run, then the old deployment goes.
    faults.failing_images.clear();
    emu.state.set_faults(faults);
    eventually("the old deployment is deleted", || async {
        layered(&hub).await == vec![new.clone()]
    })
    .await;
    let at_delete = emu
        .state
        .counters()
        .running_at_delete
        .get(&old)
        .cloned()
        .unwrap_or_default();
    for device in ["munich-1", "munich-2", "munich-3"] {
        assert_eq!(
            at_delete
                .get(device)
                .and_then(|m| m.get("sensor"))
                .map(String::as_str),
            Some("sensor:2.0"),
            "{device} ran the new module when the old deployment went: {at_delete:?}"
        );
    }
    for name in ["sensor-2-a", "sensor-2-b"] {
        eventually(&format!("{name} Ready"), || async {
            pods.get_opt(name)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| ready_with(&p, ok3))
        })
        .await;
    }
    running.stop().await;
}

/// A restart in the middle of a rollout (revision 2's deployment created but
/// not handed over, revision 1's pods gone): the new process adopts both
/// deployments by their labels, creates neither again, keeps the old one
/// until the new one has handed over, then deletes it.
#[tokio::test]
async fn a_restart_mid_rollout_adopts_both_deployments_and_still_waits_for_the_hand_over() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let first = start(&srv, &hub, Duration::from_millis(200));
    let (old, new, mut faults) = rollout_stuck_on_revision_2(&srv, &emu, &hub).await;
    first.stop().await;
    let second = start(&srv, &hub, Duration::from_millis(200));
    five_more_hub_lists(&emu).await;
    let mut both = layered(&hub).await;
    both.sort();
    let mut want = vec![old.clone(), new.clone()];
    want.sort();
    assert_eq!(both, want, "both kept across the restart");
    faults.failing_images.clear();
    emu.state.set_faults(faults);
    eventually("the old deployment goes after the hand-over", || async {
        layered(&hub).await == vec![new.clone()]
    })
    .await;
    let creates = emu.state.counters().creates_by_id;
    assert_eq!(creates.get(&old), Some(&1), "{creates:?}");
    assert_eq!(creates.get(&new), Some(&1), "{creates:?}");
    second.stop().await;
}

/// A bare pod (its own deployment) for the munich devices.
fn bare_pod(name: &str, annotations: serde_json::Value) -> Pod {
    let mut pod = replica(name);
    pod.metadata.owner_references = None;
    pod.metadata.annotations = serde_json::from_value(annotations).ok();
    pod
}

fn ready_reason(pod: &Pod) -> Option<(String, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn a_device_taken_offline_is_counted_and_readiness_follows_min_ready() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let running = start(&srv, &hub, Duration::from_secs(60));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    // Two of three devices suffice for one pod; the other needs all three.
    pods.create(
        &PostParams::default(),
        &bare_pod("tolerant", json!({"edge.spillway.io/min-ready": "2"})),
    )
    .await
    .unwrap_or_else(|e| panic!("create tolerant: {e}"));
    pods.create(&PostParams::default(), &bare_pod("strict", json!({})))
        .await
        .unwrap_or_else(|e| panic!("create strict: {e}"));
    for name in ["tolerant", "strict"] {
        eventually(&format!("{name} Ready on 3 devices"), || async {
            pods.get_opt(name)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
        })
        .await;
    }

    // munich-2 goes offline through the emulator's control API.
    let http = reqwest::Client::new();
    let resp = http
        .patch(format!("{}/_emulator/devices/munich-2", emu.url))
        .body(r#"{"online":false}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("control API: {e}"));
    assert_eq!(resp.status().as_u16(), 204);
    let offline = "targeted=3 applied=3 ok=2 failed=1 offline=1: munich-2 reports 406 The device is offline or not sending status reports.";
    eventually(
        "tolerant stays Ready and counts the offline device",
        || async {
            pods.get_opt("tolerant")
                .await
                .ok()
                .flatten()
                .is_some_and(|p| ready_with(&p, offline))
        },
    )
    .await;
    eventually(
        "strict is not Ready, because of the offline device",
        || async {
            pods.get_opt("strict")
                .await
                .ok()
                .flatten()
                .is_some_and(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    s.phase.as_deref() == Some("Running")
                        && s.message.as_deref() == Some(offline)
                        && ready_reason(&p) == Some(("False".into(), Some("DevicesOffline".into())))
                })
        },
    )
    .await;

    // Back online: Ready on all three again.
    let resp = http
        .patch(format!("{}/_emulator/devices/munich-2", emu.url))
        .body(r#"{"online":true}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("control API: {e}"));
    assert_eq!(resp.status().as_u16(), 204);
    eventually("strict is Ready again", || async {
        pods.get_opt("strict")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn two_hubs_are_two_nodes_and_each_pod_lands_on_its_own_hub_only() {
    use clap::Parser as _;
    use k8s_openapi::api::coordination::v1::Lease;
    use spillway::edge::node::EdgeArgs;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeArgs,
    }
    let srv = api_server().await;
    let (emu_a, hub_a) = hub_with_devices().await;
    let (emu_b, hub_b) = hub_with_devices().await;
    for (name, emu) in [("hub-a", &emu_a), ("hub-b", &emu_b)] {
        connection_secret(&srv, name, emu).await;
    }
    let hub_a_flag = format!("edge-a=spillway/hub-a,url={}", emu_a.url);
    // Node b only ever targets its munich devices.
    let hub_b_flag = format!(
        "edge-b=spillway/hub-b,url={},condition=tags.site='munich'",
        emu_b.url
    );
    let args = Cli::try_parse_from([
        "spillway",
        "--edge",
        "emulator",
        "--edge-sync-secs",
        "1",
        "--edge-hub",
        &hub_a_flag,
        "--edge-hub",
        &hub_b_flag,
    ])
    .unwrap_or_else(|e| panic!("flags: {e}"))
    .edge;
    let metrics = Arc::new(spillway::metrics::Metrics::new());
    let (started, stop_tx, _leader) =
        start_from_flags(&srv, &args, true, Some(metrics.clone())).await;
    assert_eq!(
        started.nodes,
        vec!["edge-a".to_string(), "edge-b".to_string()]
    );

    // One node and one Lease per hub.
    let nodes: Api<Node> = Api::all(srv.client());
    let leases: Api<Lease> = Api::namespaced(srv.client(), "kube-node-lease");
    for node in ["edge-a", "edge-b"] {
        eventually(&format!("{node} is registered and Ready"), || async {
            nodes
                .get_opt(node)
                .await
                .ok()
                .flatten()
                .and_then(|n| node_ready(&n))
                .is_some_and(|(status, _)| status == "True")
        })
        .await;
        eventually(&format!("{node} keeps its own Lease"), || async {
            leases.get_opt(node).await.ok().flatten().is_some()
        })
        .await;
    }

    // A pod per node; each becomes a deployment on its own hub only.
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    for (name, node) in [("sensor-a", "edge-a"), ("sensor-b", "edge-b")] {
        let mut pod = bare_pod(name, json!({}));
        if let Some(labels) = pod.metadata.labels.as_mut() {
            // Any site: node b's own condition narrows it to munich.
            labels.remove("edge.spillway.io/tag.site");
        }
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.into());
        }
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    // Nodes from flags pace their hub clients at a real hub's rates (about
    // 20 configuration operations a minute): give them a real hub's time.
    let slow = Duration::from_secs(90);
    eventually_within(slow, "sensor-a Ready on all 5 devices of hub a", || async {
        pods.get_opt("sensor-a")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=5 applied=5 ok=5 failed=0"))
    })
    .await;
    eventually_within(
        slow,
        "sensor-b Ready on the 3 munich devices of hub b",
        || async {
            pods.get_opt("sensor-b")
                .await
                .ok()
                .flatten()
                .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
        },
    )
    .await;
    let on_hub = |hub: Arc<HubClient>| async move {
        hub.list_configurations(None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_LAYERED))
            .map(|c| {
                (
                    c.labels.get(LABEL_NODE).cloned().unwrap_or_default(),
                    c.labels
                        .get("spillway.io/owner-name")
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on_hub(hub_a.clone()).await,
        vec![("edge-a".to_string(), "sensor-a".to_string())]
    );
    assert_eq!(
        on_hub(hub_b.clone()).await,
        vec![("edge-b".to_string(), "sensor-b".to_string())]
    );
    // Each node counts its own hub's requests.
    let text = metrics.render();
    for node in ["edge-a", "edge-b"] {
        assert!(
            text.contains(&format!("spillway_edge_deployments{{node=\"{node}\"}} 1")),
            "{node}: {text}"
        );
        assert!(
            text.contains(&format!(
                "spillway_edge_hub_requests_total{{code=\"200\",lane=\"configurations\",node=\"{node}\"}}"
            )),
            "{node}: {text}"
        );
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), started.task).await;
}

#[tokio::test]
async fn priority_and_condition_changes_update_the_deployment_in_place_through_412() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let first = start(&srv, &hub, Duration::from_secs(60));
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    pods.create(&PostParams::default(), &bare_pod("sensor", json!({})))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("Ready on 3 devices", || async {
        pods.get_opt("sensor")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
    })
    .await;
    let ids = layered(&hub).await;
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    let get = || async {
        hub.get_configuration(&id)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the deployment exists"))
    };
    let before = get().await;
    assert_eq!(before.priority, 100);

    // Pod annotations are mutable: a new priority, while another writer
    // races the update (the first conditional PUT meets 412).
    let mut faults = emu.state.faults();
    faults.concurrent_update_next = 1;
    emu.state.set_faults(faults);
    let patch = json!({"metadata": {"annotations": {"edge.spillway.io/priority": "250"}}});
    pods.patch(
        "sensor",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("patch: {e}"));
    eventually("the priority is updated in place", || async {
        get().await.priority == 250
    })
    .await;
    let counters = emu.state.counters();
    assert_eq!(
        counters.requests.get("PUT configurations/{id} 412"),
        Some(&1),
        "the stale etag was met and re-read: {counters:?}"
    );
    assert_eq!(layered(&hub).await, vec![id.clone()], "the same id");
    first.stop().await;

    // A restart with another base condition: the condition changes in place.
    let node = EdgeNode::new(NODE, "tags.site='munich' OR tags.site='berlin'");
    let second = start_node(&srv, &hub, Duration::from_secs(60), node);
    eventually("the target condition follows the node's flag", || async {
        get().await.target_condition.contains("tags.site='berlin'")
    })
    .await;
    assert_eq!(layered(&hub).await, vec![id.clone()], "still the same id");
    let after = get().await;
    assert_eq!(after.content, before.content);
    assert_eq!(after.priority, 250);
    let creates = emu.state.counters().creates_by_id;
    assert_eq!(creates.get(&id), Some(&1), "created once: {creates:?}");
    eventually("still Ready on the 3 munich devices", || async {
        pods.get_opt("sensor")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn cleanup_on_exit_removes_only_this_nodes_deployments_base_included() {
    use clap::Parser as _;
    use spillway::edge::node::EdgeArgs;
    use spillway::edge::translate::ROLE_BASE;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeArgs,
    }
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    connection_secret(&srv, "hub", &emu).await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);

    // Node edge-munich stays; node edge-a, on the same hub, is removed.
    let staying = start(&srv, &hub, Duration::from_secs(60));
    pods.create(&PostParams::default(), &bare_pod("sensor-b", json!({})))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let flag = format!("edge-a=spillway/hub,url={}", emu.url);
    let args = Cli::try_parse_from([
        "spillway",
        "--edge",
        "emulator",
        "--edge-sync-secs",
        "1",
        "--edge-cleanup-on-exit",
        "--edge-hub",
        &flag,
    ])
    .unwrap_or_else(|e| panic!("flags: {e}"))
    .edge;
    let (removed, stop_tx, _leader) = start_from_flags(&srv, &args, true, None).await;
    let mut pod_a = bare_pod("sensor-a", json!({}));
    if let Some(labels) = pod_a.metadata.labels.as_mut() {
        labels.insert("edge.spillway.io/tag.site".into(), "berlin".into());
    }
    if let Some(spec) = pod_a.spec.as_mut() {
        spec.node_name = Some("edge-a".into());
    }
    pods.create(&PostParams::default(), &pod_a)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let slow = Duration::from_secs(90);
    eventually_within(slow, "sensor-a Ready on the 2 berlin devices", || async {
        pods.get_opt("sensor-a")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=2 applied=2 ok=2 failed=0"))
    })
    .await;
    eventually("sensor-b Ready on the 3 munich devices", || async {
        pods.get_opt("sensor-b")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, "targeted=3 applied=3 ok=3 failed=0"))
    })
    .await;

    let of_node = |node: &'static str| {
        let hub = hub.clone();
        async move {
            let mut out: Vec<(String, String)> = hub
                .list_configurations(None)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.labels.get(LABEL_NODE).map(String::as_str) == Some(node))
                .map(|c| {
                    let role = c.labels.get(LABEL_ROLE).cloned().unwrap_or_default();
                    (role, c.id)
                })
                .collect();
            out.sort();
            out
        }
    };
    // A base deployment edge-a replaced (older system modules) and one of
    // a node that is neither.
    let base_a = of_node("edge-a")
        .await
        .into_iter()
        .find(|(role, _)| role == ROLE_BASE)
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("edge-a has a base deployment"));
    let mut stale = hub
        .get_configuration(&base_a)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("base"));
    stale.etag = None;
    stale.id = "edge-a-base-0000000000000000".into();
    stale.priority = 0;
    hub.create_configuration(&stale)
        .await
        .unwrap_or_else(|e| panic!("stale base: {e}"));
    let mut foreign = stale.clone();
    foreign.id = "edge-other-base-0000000000000000".into();
    foreign
        .labels
        .insert(LABEL_NODE.to_string(), "edge-other".into());
    hub.create_configuration(&foreign)
        .await
        .unwrap_or_else(|e| panic!("foreign base: {e}"));
    eventually_within(slow, "edge-a collects the base it replaced", || async {
        !of_node("edge-a")
            .await
            .iter()
            .any(|(_, id)| id == "edge-a-base-0000000000000000")
    })
    .await;
    let staying_before = of_node(NODE).await;
    assert_eq!(
        staying_before
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>(),
        vec![ROLE_BASE, ROLE_LAYERED]
    );

    // A standby replica with the same flags exits: it is not the leader,
    // so it leaves the hub alone.
    let edge_a_before = of_node("edge-a").await;
    assert_eq!(
        edge_a_before.len(),
        2,
        "base and layered: {edge_a_before:?}"
    );
    let (standby, standby_stop, _standby_leader) = start_from_flags(&srv, &args, false, None).await;
    let _ = standby_stop.send(true);
    tokio::time::timeout(slow, standby.task)
        .await
        .unwrap_or_else(|_| panic!("the standby stops"))
        .unwrap_or_else(|e| panic!("standby task: {e}"));
    assert_eq!(of_node("edge-a").await, edge_a_before);

    // edge-a exits with --edge-cleanup-on-exit: its deployments go, base too.
    let _ = stop_tx.send(true);
    tokio::time::timeout(slow, removed.task)
        .await
        .unwrap_or_else(|_| panic!("edge-a stops"))
        .unwrap_or_else(|e| panic!("edge-a task: {e}"));
    assert_eq!(of_node("edge-a").await, Vec::new());
    // Nothing of another node was touched.
    assert_eq!(of_node(NODE).await, staying_before);
    assert_eq!(
        of_node("edge-other").await,
        vec![(ROLE_BASE.to_string(), foreign.id.clone())]
    );
    eventually("the munich devices still run sensor-b's module", || async {
        let Ok(Some(twin)) = hub.edge_agent_twin("munich-1").await else {
            return false;
        };
        twin.edge_agent_report().is_some_and(|r| {
            r.last_desired_version == twin.desired_version() && r.modules.contains_key("sensor")
        })
    })
    .await;
    staying.stop().await;
}

#[tokio::test]
async fn a_rollback_mid_rollout_raises_the_old_deployment_in_place_before_the_new_one_goes() {
    let srv = api_server().await;
    let (emu, hub) = hub_with_devices().await;
    let running = start(&srv, &hub, Duration::from_millis(200));
    let replicasets: Api<ReplicaSet> = Api::namespaced(srv.client(), NS);
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    let ok3 = "targeted=3 applied=3 ok=3 failed=0";
    let rs1 = replicasets
        .create(
            &PostParams::default(),
            &replicaset("sensor-1", 1, "sensor:1.0"),
        )
        .await
        .unwrap_or_else(|e| panic!("create rs 1: {e}"));
    pods.create(
        &PostParams::default(),
        &pod_of(&rs1, "sensor-1-a", "sensor:1.0"),
    )
    .await
    .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("revision 1 is Ready", || async {
        pods.get_opt("sensor-1-a")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, ok3))
    })
    .await;
    let old = layered(&hub).await.pop().unwrap_or_else(|| panic!("rev 1"));

    // Revision 2 never pulls; its pod replaces revision 1's.
    let mut faults = emu.state.faults();
    faults.failing_images.insert("sensor:2.0".into());
    emu.state.set_faults(faults);
    let rs2 = replicasets
        .create(
            &PostParams::default(),
            &replicaset("sensor-2", 2, "sensor:2.0"),
        )
        .await
        .unwrap_or_else(|e| panic!("create rs 2: {e}"));
    pods.create(
        &PostParams::default(),
        &pod_of(&rs2, "sensor-2-a", "sensor:2.0"),
    )
    .await
    .unwrap_or_else(|e| panic!("create: {e}"));
    eventually("revision 2 has its deployment", || async {
        layered(&hub).await.len() == 2
    })
    .await;
    let new = layered(&hub)
        .await
        .into_iter()
        .find(|id| *id != old)
        .unwrap_or_else(|| panic!("rev 2"));
    pods.delete("sensor-1-a", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("sensor-1-a is removed", || async {
        pods.get_opt("sensor-1-a").await.ok().flatten().is_none()
    })
    .await;

    // `kubectl rollout undo`: the Deployment controller gives the old
    // ReplicaSet the next revision and scales it up, then scales rev 2 down.
    let patch = json!({"metadata": {"annotations": {"deployment.kubernetes.io/revision": "3"}}});
    replicasets
        .patch(
            "sensor-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap_or_else(|e| panic!("patch rs 1: {e}"));
    pods.create(
        &PostParams::default(),
        &pod_of(&rs1, "sensor-1-b", "sensor:1.0"),
    )
    .await
    .unwrap_or_else(|e| panic!("create: {e}"));
    eventually(
        "the old deployment is raised to 100 + revision 3, in place",
        || async {
            hub.get_configuration(&old)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| {
                    c.priority == 103
                        && c.labels.get("spillway.io/revision").map(String::as_str) == Some("3")
                })
        },
    )
    .await;
    pods.delete("sensor-2-a", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("revision 2's deployment goes", || async {
        layered(&hub).await == vec![old.clone()]
    })
    .await;
    let at_delete = emu
        .state
        .counters()
        .running_at_delete
        .get(&new)
        .cloned()
        .unwrap_or_default();
    for device in ["munich-1", "munich-2", "munich-3"] {
        assert_eq!(
            at_delete
                .get(device)
                .and_then(|m| m.get("sensor"))
                .map(String::as_str),
            Some("sensor:1.0"),
            "{device} ran the rolled-back module when revision 2 went: {at_delete:?}"
        );
    }
    assert_eq!(
        emu.state.counters().creates_by_id.get(&old),
        Some(&1),
        "the rolled-back deployment was kept, not created again"
    );
    eventually("sensor-1-b Ready", || async {
        pods.get_opt("sensor-1-b")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready_with(&p, ok3))
    })
    .await;
    running.stop().await;
}
