//! The embedded provider end to end: the test API server and the ACI
//! emulator, both in-process over real HTTP; spillway's provider between
//! them as the virtual node.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Faults, OperationFaults};
use spillway::aci::paced::PacingConfig;
use spillway::aci::translate::{group_name, group_name_in};
use spillway::aci::{ContainerGroups, TAG_POD_UID};
use spillway::kubelet::logs::{LogBudget, LogReader};
use spillway::metrics::Metrics;
use spillway::provider::{Provider, ProviderConfig, node as vnode, pods as vpods};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::provider_world::{
    Running, eventually as eventually_within, fast_config, fast_pacing as pacing,
    paced_aci_with as aci,
};
use support::{PodDeletion, TestApiServer};
use tokio::time::Instant;

const NODE: &str = "spillway-aci";
const CLUSTER: &str = "test-cluster";
const NS: &str = "web";
const HOST_IP: &str = "10.1.2.3";
const WAIT: Duration = Duration::from_secs(20);

/// Poll `check` every 50 ms until it holds or `WAIT` passes; panics with `what`.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, check).await
}

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        // 2 s Accepted + 3 s Creating at ×50: 100 ms.
        speed: 50.0,
        ..EmulatorConfig::default()
    }
}

fn provider_config() -> ProviderConfig {
    let mut c = fast_config(CLUSTER);
    c.status_interval = Duration::from_secs(2);
    c.unreachable_after = Duration::from_millis(800);
    c
}

fn start(
    srv: &TestApiServer,
    aci: Arc<dyn ContainerGroups>,
    metrics: Option<Arc<Metrics>>,
) -> Running {
    start_with(srv, aci, metrics, provider_config())
}

fn start_with(
    srv: &TestApiServer,
    aci: Arc<dyn ContainerGroups>,
    metrics: Option<Arc<Metrics>>,
    config: ProviderConfig,
) -> Running {
    Running::start(srv, aci, metrics, config)
}

struct World {
    srv: TestApiServer,
    emu: EmulatorHandle,
    aci: Arc<dyn ContainerGroups>,
}

async fn world() -> World {
    world_at(emulator_config()).await
}

async fn world_at(emulator: EmulatorConfig) -> World {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let emu = Emulator::start(emulator)
        .await
        .unwrap_or_else(|e| panic!("emulator: {e}"));
    let aci = aci(&emu, pacing());
    World { srv, emu, aci }
}

/// From now on every call of the ACI operations `ops` (`*`: all) meets
/// `faults`; hung calls hang for `hang_ms` (default: the emulator's).
fn fault_ops(w: &World, ops: &[&str], faults: OperationFaults, hang_ms: Option<u64>) {
    let defaults = Faults::default();
    w.emu
        .state
        .set_faults(Faults {
            operations: ops
                .iter()
                .map(|op| (op.to_string(), faults.clone()))
                .collect(),
            hang_ms: hang_ms.unwrap_or(defaults.hang_ms),
            ..defaults
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// From now on every call of these ACI operations hangs for `ms`, then
/// gets a gateway timeout (the work itself is done).
fn hang(w: &World, ops: &[&str], ms: u64) {
    let hung = OperationFaults {
        timeout_rate: 1.0,
        ..OperationFaults::default()
    };
    fault_ops(w, ops, hung, Some(ms));
}

fn app_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": NODE,
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": "nginx:1.27",
                "ports": [{"containerPort": 80}],
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
            }]
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

async fn create_pod(srv: &TestApiServer, pod: &Pod) -> Pod {
    let api: Api<Pod> = Api::namespaced(srv.client(), NS);
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"))
}

fn phase(srv: &TestApiServer, name: &str) -> Option<String> {
    srv.get::<Pod>(NS, name)
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
}

fn running(srv: &TestApiServer, name: &str) -> bool {
    phase(srv, name).as_deref() == Some("Running")
}

fn ready_condition(srv: &TestApiServer) -> Option<(String, Option<String>)> {
    srv.get::<Node>("", NODE)
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status, c.reason))
}

/// Groups per name ever created, and the groups present now.
fn groups_created(w: &World) -> BTreeMap<String, u64> {
    w.emu.state.counters().creates_by_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_with_labels_taint_capacity_and_renews_its_lease() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    eventually("node registered with capacity and Ready", || async {
        let Some(n) = w.srv.get::<Node>("", NODE) else {
            return false;
        };
        let cap = n
            .status
            .as_ref()
            .and_then(|s| s.capacity.clone())
            .unwrap_or_default();
        cap.get("cpu").map(|q| q.0.as_str()) == Some("100")
            && ready_condition(&w.srv).map(|r| r.0).as_deref() == Some("True")
    })
    .await;
    let n = w
        .srv
        .get::<Node>("", NODE)
        .unwrap_or_else(|| panic!("node"));
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("virtual-kubelet")
    );
    assert_eq!(
        labels.get("kubernetes.io/role").map(String::as_str),
        Some("agent")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        labels.get("spillway.io/virtual").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels
            .get("kubernetes.azure.com/managed")
            .map(String::as_str),
        Some("false")
    );
    let taints = n.spec.clone().and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "virtual-kubelet.io/provider"
            && t.value.as_deref() == Some("azure")
            && t.effect == "NoSchedule"),
        "taint: {taints:?}"
    );
    let status = n.status.unwrap_or_default();
    let cap = status.capacity.unwrap_or_default();
    assert_eq!(cap["pods"].0, "100", "groups left in the emulator's quota");
    assert_eq!(cap["memory"].0, format!("{}Mi", 100 * 4 * 1024));
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(10250)
    );
    assert!(
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == HOST_IP)
    );

    let renew = || {
        w.srv
            .get::<Lease>(vnode::NODE_LEASE_NAMESPACE, NODE)
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
    };
    eventually("lease created", || async { renew().is_some() }).await;
    let first = renew();
    eventually("lease renewed", || async { renew() > first }).await;
    let lease = w
        .srv
        .get::<Lease>(vnode::NODE_LEASE_NAMESPACE, NODE)
        .unwrap_or_else(|| panic!("lease"));
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(NODE)
    );

    // Capacity is the quota the scheduler may still fill: this node's own
    // pods are already subtracted by the scheduler (not counted twice);
    // another cluster's groups in the subscription use quota up.
    create_pod(&w.srv, &app_pod("a")).await;
    eventually("pod Running", || async { running(&w.srv, "a") }).await;
    let other: spillway::aci::ContainerGroup = serde_json::from_value(json!({
        "name": "someone-else", "location": "westeurope",
        "tags": {"spillway-cluster": "another-cluster"},
        "properties": {"osType": "Linux", "containers": [{"name": "c", "properties": {
            "image": "nginx", "resources": {"requests": {"cpu": 2.0, "memoryInGB": 1.0}}}}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    w.aci
        .create_or_update(&other)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let capacity = |key: &'static str| {
        w.srv
            .get::<Node>("", NODE)
            .and_then(|n| n.status)
            .and_then(|s| s.capacity)
            .and_then(|c| c.get(key).map(|q| q.0.clone()))
    };
    eventually(
        "capacity shrinks by the other cluster's group only",
        || async {
            capacity("cpu").as_deref() == Some("98") && capacity("pods").as_deref() == Some("99")
        },
    )
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_pod_runs_with_the_emulators_ip_secrets_stay_secret_and_logs_are_served() {
    // Slow enough (1 s to Running) that the pod is seen Pending first.
    let w = world_at(EmulatorConfig {
        speed: 5.0,
        ..emulator_config()
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(w.srv.client(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": NS},
        "stringData": {"password": "hunter2"}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("secret: {e}"));
    let mut pod = app_pod("api");
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].env = Some(
            serde_json::from_value(json!([
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "MODE", "value": "fast"}
            ]))
            .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let metrics = Arc::new(Metrics::new());
    let p = start(&w.srv, w.aci.clone(), Some(metrics.clone()));
    let created = create_pod(&w.srv, &pod).await;

    eventually("pod Pending while its group is created", || async {
        w.srv
            .get::<Pod>(NS, "api")
            .and_then(|p| p.status)
            .and_then(|s| s.message)
            .is_some_and(|m| m.contains("ACI container group"))
    })
    .await;
    eventually("pod Running", || async { running(&w.srv, "api") }).await;
    let status = w
        .srv
        .get::<Pod>(NS, "api")
        .and_then(|p| p.status)
        .unwrap_or_default();
    let snapshot = w.emu.state.snapshot();
    let group = snapshot
        .iter()
        .find(|g| g.name == group_name_in(CLUSTER, NS, "api"))
        .unwrap_or_else(|| panic!("group in {snapshot:?}"));
    assert_eq!(status.pod_ip, group.ip, "podIP is the group's IP");
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("20.0."))
    );
    assert_eq!(status.host_ip.as_deref(), Some(HOST_IP));
    assert!(status.start_time.is_some());
    assert_eq!(
        group.tags.get(TAG_POD_UID),
        created.metadata.uid.as_ref(),
        "group tagged with the pod uid"
    );
    assert_eq!(
        group.secure_env.get("app").cloned().unwrap_or_default(),
        vec!["DB_PASSWORD".to_string()],
        "the Secret's value went as secureValue, the plain one did not"
    );
    assert_eq!(groups_created(&w).get(&group.name), Some(&1));
    assert_eq!(metrics.aci_container_group_start.get_sample_count(), 1);
    eventually("provider_pods{phase=Running} = 1", || async {
        metrics.provider_pods.with_label_values(&["Running"]).get() == 1
    })
    .await;

    // Steady state writes nothing: a stale reason/message must not make
    // every sync patch again.
    let status_writes = || {
        w.srv
            .requests()
            .iter()
            .filter(|r| {
                r.method == "PATCH" && r.path == format!("/api/v1/namespaces/{NS}/pods/api/status")
            })
            .count()
    };
    let before = status_writes();
    tokio::time::sleep(Duration::from_millis(1000)).await; // five syncs; a write would show
    assert_eq!(
        status_writes(),
        before,
        "no status writes while nothing changes"
    );
    let status = w
        .srv
        .get::<Pod>(NS, "api")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(status.message, None, "the Pending message is cleared");

    // kubectl logs → the kubelet endpoint → ACI logs.
    use tower::ServiceExt as _;
    let get = |uri: String| {
        axum::http::Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let router = spillway::kubelet::router(
        Arc::new(LogReader::new(w.aci.clone(), CLUSTER, LogBudget::default())),
        spillway::kubelet::Access::Open,
    );
    let r = router
        .clone()
        .oneshot(get(format!("/containerLogs/{NS}/api/app?tailLines=10")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("nginx:1.27"),
        "log text: {body:?}"
    );
    let r = router
        .oneshot(get(format!("/containerLogs/{NS}/nope/app")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_removes_its_group_then_the_pod() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    create_pod(&w.srv, &app_pod("gone")).await;
    eventually("pod Running", || async { running(&w.srv, "gone") }).await;
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("gone", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("pod object removed", || async {
        w.srv.get::<Pod>(NS, "gone").is_none()
    })
    .await;
    assert!(
        w.emu
            .state
            .snapshot()
            .iter()
            .all(|g| g.name != group_name_in(CLUSTER, NS, "gone")),
        "the group is deleted before the pod"
    );
    assert_eq!(w.emu.state.counters().deletes, 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deleted_behind_our_back_fails_the_pod() {
    let w = world().await;
    let metrics = Arc::new(Metrics::new());
    let p = start(&w.srv, w.aci.clone(), Some(metrics.clone()));
    create_pod(&w.srv, &app_pod("victim")).await;
    eventually("pod Running", || async { running(&w.srv, "victim") }).await;
    w.emu
        .state
        .set_faults(Faults {
            vanish: vec![group_name_in(CLUSTER, NS, "victim")],
            ..Faults::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("pod Failed", || async {
        phase(&w.srv, "victim").as_deref() == Some("Failed")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "victim")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some(vpods::REASON_GROUP_VANISHED));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("deleted outside spillway"), "{message}");
    // It names the group as ACI knows it (the cluster-hashed name).
    assert!(
        message.contains(&group_name_in(CLUSTER, NS, "victim")),
        "{message}"
    );
    // No second group for the failed pod.
    tokio::time::sleep(Duration::from_millis(600)).await; // three syncs: a recreate would show
    assert_eq!(
        groups_created(&w).get(&group_name_in(CLUSTER, NS, "victim")),
        Some(&1)
    );
    assert!(w.emu.state.snapshot().is_empty());
    assert_eq!(
        metrics
            .aci_container_group_start_failures
            .with_label_values(&["vanished"])
            .get(),
        1
    );
    p.stop().await;
}

/// ACI whose lists leave out one group while it still exists: a list taken
/// before another replica created it, as during a leader change.
struct StaleList {
    inner: Arc<dyn ContainerGroups>,
    hide: std::sync::Mutex<Option<String>>,
    lists: std::sync::atomic::AtomicUsize,
}

impl ContainerGroups for StaleList {
    fn create_or_update<'a>(
        &'a self,
        g: &'a spillway::aci::model::ContainerGroup,
    ) -> futures::future::BoxFuture<
        'a,
        Result<spillway::aci::model::ContainerGroup, spillway::aci::AciError>,
    > {
        self.inner.create_or_update(g)
    }
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Option<spillway::aci::model::ContainerGroup>, spillway::aci::AciError>,
    > {
        self.inner.get(name)
    }
    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Vec<spillway::aci::model::ContainerGroup>, spillway::aci::AciError>,
    > {
        Box::pin(async move {
            let mut groups = self.inner.list(cluster_id).await?;
            let hide = self.hide.lock().map(|h| h.clone()).unwrap_or_default();
            if let Some(hide) = hide {
                groups.retain(|g| g.name != hide);
                self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(groups)
        })
    }
    fn delete<'a>(
        &'a self,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), spillway::aci::AciError>> {
        self.inner.delete(name)
    }
    fn logs<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        options: spillway::aci::LogOptions,
    ) -> futures::future::BoxFuture<'a, Result<String, spillway::aci::AciError>> {
        self.inner.logs(name, container, options)
    }
    fn metrics<'a>(
        &'a self,
        name: &'a str,
        span: spillway::aci::monitor::MetricsSpan,
    ) -> futures::future::BoxFuture<
        'a,
        Result<spillway::aci::monitor::GroupMetrics, spillway::aci::AciError>,
    > {
        self.inner.metrics(name, span)
    }
    fn usage<'a>(
        &'a self,
        location: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<spillway::aci::Usage, spillway::aci::AciError>> {
        self.inner.usage(location)
    }
    fn exec<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        command: &'a str,
        terminal: spillway::aci::TerminalSize,
    ) -> futures::future::BoxFuture<'a, Result<spillway::aci::ExecSession, spillway::aci::AciError>>
    {
        self.inner.exec(name, container, command, terminal)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_misses_a_live_group_does_not_fail_its_pod() {
    let w = world().await;
    let stale = Arc::new(StaleList {
        inner: w.aci.clone(),
        hide: Default::default(),
        lists: Default::default(),
    });
    let p = start(&w.srv, stale.clone(), None);
    create_pod(&w.srv, &app_pod("kept")).await;
    eventually("pod Running", || async { running(&w.srv, "kept") }).await;
    // Lists stop showing the group, which still exists: the pod stays Running.
    if let Ok(mut h) = stale.hide.lock() {
        *h = Some(group_name_in(CLUSTER, NS, "kept"));
    }
    eventually_within(
        "five lists without the group",
        Duration::from_secs(10),
        || async { stale.lists.load(std::sync::atomic::Ordering::SeqCst) >= 5 },
    )
    .await;
    assert_eq!(phase(&w.srv, "kept").as_deref(), Some("Running"));
    // The control: once the group is really gone, the pod fails.
    w.aci
        .delete(&group_name_in(CLUSTER, NS, "kept"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("pod Failed", || async {
        phase(&w.srv, "kept").as_deref() == Some("Failed")
    })
    .await;
    assert_eq!(
        groups_created(&w).get(&group_name_in(CLUSTER, NS, "kept")),
        Some(&1)
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_vanished_before_the_first_status_write_fails_the_pod_after_a_restart() {
    let w = world().await;
    let group = group_name_in(CLUSTER, NS, "early");
    // Bound before the provider starts: its first sync creates the group,
    // and the next sync (which would write Running) is a minute away.
    create_pod(&w.srv, &app_pod("early")).await;
    let mut slow = provider_config();
    slow.sync_interval = Duration::from_secs(60);
    let first = start_with(&w.srv, w.aci.clone(), None, slow);
    let marked = || {
        w.srv
            .get::<Pod>(NS, "early")
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get(vpods::GROUP_ANNOTATION).cloned())
    };
    eventually("group created and the pod marked", || async {
        groups_created(&w).contains_key(&group) && marked().is_some()
    })
    .await;
    first.stop().await;
    let uid = w
        .srv
        .get::<Pod>(NS, "early")
        .and_then(|p| p.metadata.uid)
        .unwrap_or_default();
    // The marker names the pod's cluster-independent group name (as
    // releases before cluster hashing did), so old markers stay valid.
    assert_eq!(marked(), Some(format!("{}/{uid}", group_name(NS, "early"))));
    let status = w
        .srv
        .get::<Pod>(NS, "early")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(
        status.container_statuses.is_none(),
        "no status was written: {status:?}"
    );

    // The group disappears while no provider runs.
    w.emu
        .state
        .set_faults(Faults {
            vanish: vec![group.clone()],
            ..Faults::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(w.emu.state.snapshot().is_empty());

    let lists_before = lists_seen(&w);
    let second = start(&w.srv, w.aci.clone(), None);
    eventually("pod Failed", || async {
        phase(&w.srv, "early").as_deref() == Some("Failed")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "early")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some(vpods::REASON_GROUP_VANISHED));
    // Later syncs leave the failed pod alone: still one create, no group.
    eventually("three more lists", || async {
        lists_seen(&w) >= lists_before + 4
    })
    .await;
    assert_eq!(groups_created(&w).get(&group), Some(&1));
    assert!(w.emu.state.snapshot().is_empty());
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm_error_storm_still_runs_every_pod_once() {
    let w = world().await;
    let storm = OperationFaults {
        // Every 429 pauses its whole lane for Retry-After (1 s).
        error_rate: 0.25,
        throttle_rate: 0.1,
        ..OperationFaults::default()
    };
    fault_ops(&w, &["*"], storm, None);
    let p = start(&w.srv, w.aci.clone(), None);
    let names: Vec<String> = (0..12).map(|i| format!("storm-{i}")).collect();
    for n in &names {
        create_pod(&w.srv, &app_pod(n)).await;
    }
    eventually_within(
        "all pods Running through the storm",
        Duration::from_secs(40),
        || async { names.iter().all(|n| running(&w.srv, n)) },
    )
    .await;
    let counters = w.emu.state.counters();
    assert!(
        counters.faults_injected > 0,
        "the storm happened: {counters:?}"
    );
    assert_eq!(counters.creates, 12, "{counters:?}");
    assert!(
        counters.creates_by_name.values().all(|n| *n == 1),
        "{counters:?}"
    );
    assert_eq!(w.emu.state.snapshot().len(), 12);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_restarted_mid_burst_creates_no_duplicates_and_leaks_nothing() {
    let w = world().await;
    // Slow writes so the first provider stops with the burst half done.
    let slow = PacingConfig {
        writes_per_sec: 4.0,
        write_burst: 2,
        ..pacing()
    };
    let first = start(&w.srv, aci(&w.emu, slow.clone()), None);
    let names: Vec<String> = (0..16).map(|i| format!("burst-{i}")).collect();
    for n in &names {
        create_pod(&w.srv, &app_pod(n)).await;
    }
    eventually("some groups created", || async {
        w.emu.state.snapshot().len() >= 3
    })
    .await;
    first.stop().await;
    let halfway = w.emu.state.snapshot().len();
    assert!(
        halfway < names.len(),
        "stopped mid-burst ({halfway} groups)"
    );

    let second = start(&w.srv, aci(&w.emu, pacing()), None);
    eventually("all pods Running after the restart", || async {
        names.iter().all(|n| running(&w.srv, n))
    })
    .await;
    let counters = w.emu.state.counters();
    assert_eq!(counters.creates, 16, "{counters:?}");
    assert!(
        counters.creates_by_name.values().all(|n| *n == 1),
        "{counters:?}"
    );
    assert_eq!(counters.deletes, 0, "nothing of a live pod deleted");
    let uids: std::collections::BTreeSet<String> = w
        .srv
        .list::<Pod>(Some(NS))
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    let snapshot = w.emu.state.snapshot();
    assert_eq!(snapshot.len(), 16);
    assert!(
        snapshot
            .iter()
            .all(|g| g.tags.get(TAG_POD_UID).is_some_and(|u| uids.contains(u))),
        "every group belongs to a live pod"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_a_pod() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    create_pod(&w.srv, &app_pod("before")).await;
    eventually("first pod Running", || async { running(&w.srv, "before") }).await;
    let lists_before = pod_lists(&w.srv);
    w.srv.expire_watches();
    create_pod(&w.srv, &app_pod("after")).await;
    eventually("pod created across the 410 Running", || async {
        running(&w.srv, "after")
    })
    .await;
    assert!(pod_lists(&w.srv) > lists_before, "the watcher relisted");
    assert!(running(&w.srv, "before"));
    assert_eq!(w.emu.state.counters().creates, 2);
    p.stop().await;
}

fn pod_lists(srv: &TestApiServer) -> usize {
    srv.requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == "/api/v1/pods"
                && !r.is_watch()
                && r.param("fieldSelector").is_some_and(|f| f.contains(NODE))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_fails_with_a_readable_reason_and_an_event() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    let mut pod = app_pod("hostpath");
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = Some(
            serde_json::from_value(json!([{"name": "h", "hostPath": {"path": "/var/run"}}]))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    create_pod(&w.srv, &pod).await;
    eventually("pod Failed", || async {
        phase(&w.srv, "hostpath").as_deref() == Some("Failed")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "hostpath")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(
        status.reason.as_deref(),
        Some(vpods::REASON_PROVIDER_FAILED)
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("InvalidSpec: ") && message.contains("hostPath"),
        "message: {message}"
    );
    eventually("a Warning event for the pod", || async {
        w.srv.list::<Event>(Some(NS)).iter().any(|e| {
            e.reason.as_deref() == Some(vpods::REASON_PROVIDER_FAILED)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hostpath")
                && e.type_.as_deref() == Some("Warning")
        })
    })
    .await;
    assert!(
        w.emu.state.snapshot().is_empty(),
        "no group for an invalid pod"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_goes_not_ready_while_aci_is_unreachable_and_recovers() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    eventually("node Ready", || async {
        ready_condition(&w.srv).map(|r| r.0).as_deref() == Some("True")
    })
    .await;
    let down = OperationFaults {
        error_rate: 1.0,
        ..OperationFaults::default()
    };
    fault_ops(&w, &["*"], down, None);
    eventually("node NotReady with the ACI reason", || async {
        ready_condition(&w.srv)
            == Some((
                "False".to_string(),
                Some(vnode::REASON_ACI_UNREACHABLE.to_string()),
            ))
    })
    .await;
    w.emu
        .state
        .set_faults(Faults::default())
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("node Ready again", || async {
        ready_condition(&w.srv).map(|r| r.0).as_deref() == Some("True")
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_does_nothing_until_it_leads() {
    let w = world().await;
    let provider = Provider::new(w.srv.client(), w.aci.clone(), provider_config(), None);
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = rx.await;
            })
            .await;
    });
    create_pod(&w.srv, &app_pod("waits")).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // several sync intervals: nothing may happen
    assert!(
        w.srv.get::<Node>("", NODE).is_none(),
        "no node while standby"
    );
    assert!(w.emu.state.snapshot().is_empty(), "no group while standby");
    let _ = leader_tx.send(true);
    eventually("pod Running once leading", || async {
        running(&w.srv, "waits")
    })
    .await;
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// Accepts whatever certificate the server shows and keeps it: how a test
/// learns the certificate a self-signed endpoint made (the strict check then
/// pins it).
#[derive(Debug)]
struct CaptureCertificate {
    seen: std::sync::Mutex<Option<rustls::pki_types::CertificateDer<'static>>>,
    crypto: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for CaptureCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.crypto
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTP/1.1 GET over TLS to 127.0.0.1:`port`, asking for `name`.
async fn tls_get(
    port: u16,
    client: rustls::ClientConfig,
    name: &str,
    path: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let server_name =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut answer))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(clap::Parser)]
struct RunArgs {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spillway_run_with_the_embedded_emulator_is_the_virtual_node() {
    use clap::Parser as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    // The kubelet endpoint verifies client certificates against the
    // cluster CA of kube-root-ca.crt in spillway's namespace (the client's
    // default namespace here).
    srv.publish_root_ca("default");
    let (client_chain, client_key) = srv.kubelet_client_certificate().rustls_pair();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("provider-run-policies");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let args = RunArgs::parse_from([
        "spillway",
        "--policies",
        dir.to_str().unwrap_or_default(),
        "--identity",
        "r1",
        "--lease-seconds",
        "3",
        "--aci",
        "emulator",
        "--kubelet-listen",
        "127.0.0.1:0",
        "--node-ip",
        "127.0.0.1",
        "--kubelet-tls-self-signed",
        "--aci-sync-secs",
        "1",
        // The embedded emulator defines the subnet itself (delegated to ACI,
        // 10.240.100.0/24): a burst pod gets a private IP from it.
        "--aci-subnet-id",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci",
    ]);
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        spillway::policy::reload::PolicyStore::open(&dir, metrics.clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = srv.kube_config();
    let shared_metrics = metrics.clone();
    let task = tokio::spawn(async move {
        spillway::run::run_with(config, &args.run, store, metrics, listener, async {
            let _ = rx.await;
        })
        .await
    });
    eventually("virtual node registered and Ready", || async {
        ready_condition(&srv).map(|r| r.0).as_deref() == Some("True")
    })
    .await;
    create_pod(&srv, &app_pod("demo")).await;
    eventually("pod Running on the embedded emulator", || async {
        running(&srv, "demo")
    })
    .await;
    let pod_ip = srv
        .get::<Pod>(NS, "demo")
        .and_then(|p| p.status?.pod_ip)
        .unwrap_or_default();
    assert!(
        pod_ip.starts_with("10.240.100."),
        "a private IP from the embedded subnet, not {pod_ip:?}"
    );

    // kubectl logs goes to the node's kubelet endpoint: HTTPS with the
    // certificate made at start-up (the API server does not verify it),
    // the API server presenting its kubelet client certificate.
    let port = srv
        .get::<Node>("", NODE)
        .and_then(|n| n.status)
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port as u16)
        .unwrap_or_else(|| panic!("kubelet endpoint port"));
    let capture = Arc::new(CaptureCertificate {
        seen: std::sync::Mutex::new(None),
        crypto: ring(),
    });
    let trusting = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_client_auth_cert(client_chain.clone(), client_key.clone_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let logs_path = format!("/containerLogs/{NS}/demo/app?tailLines=5");
    let answer = tls_get(port, trusting, "127.0.0.1", &logs_path)
        .await
        .unwrap_or_else(|e| panic!("logs over TLS: {e}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("nginx:1.27"), "{answer}");
    // Plain HTTP gets no answer on the TLS port.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    // The certificate served is valid for the node IP and the node name.
    let served = capture
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| panic!("no certificate seen"));
    for name in ["127.0.0.1", NODE] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(served.clone()).unwrap_or_else(|e| panic!("{e}"));
        let strict = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_client_auth_cert(client_chain.clone(), client_key.clone_key())
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = tls_get(port, strict, name, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
    }
    // The production ACI stack counts every call it made.
    let rendered = shared_metrics.render();
    assert!(
        rendered.contains("spillway_aci_requests_total{code=\"ok\",op=\"create\"} 1"),
        "{rendered}"
    );
    assert!(rendered.contains("spillway_aci_request_duration_seconds_count{op=\"list\"}"));

    let _ = tx.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("run_with did not stop"));
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_lease_keeps_renewing_while_aci_hangs() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    let renew = || {
        w.srv
            .get::<Lease>(vnode::NODE_LEASE_NAMESPACE, NODE)
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
    };
    eventually("lease created", || async { renew().is_some() }).await;
    hang(&w, &["usage", "list", "get"], 4000);
    // Let the hung calls start, then demand two renewals well inside one hang.
    tokio::time::sleep(Duration::from_millis(400)).await; // lets hung calls begin; the checks below poll
    for _ in 0..2 {
        let before = renew();
        let deadline = Instant::now() + Duration::from_millis(1500);
        while renew() <= before {
            assert!(
                Instant::now() < deadline,
                "lease not renewed within 1.5 s while ACI hangs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    w.emu
        .state
        .set_faults(Faults::default())
        .unwrap_or_else(|e| panic!("{e}"));
    p.stop().await;
}

/// ACI list calls the emulator has seen so far.
fn lists_seen(w: &World) -> u64 {
    w.emu
        .state
        .counters()
        .requests
        .get("list")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_aci_list_holds_back_neither_creations_nor_the_lease() {
    let w = world().await;
    let mut config = provider_config();
    config.list_timeout = Duration::from_secs(1);
    let p = start_with(&w.srv, w.aci.clone(), None, config);
    create_pod(&w.srv, &app_pod("first")).await;
    eventually("first pod Running", || async { running(&w.srv, "first") }).await;
    eventually("node Ready", || async {
        ready_condition(&w.srv).is_some_and(|(s, _)| s == "True")
    })
    .await;
    let renew = || {
        w.srv
            .get::<Lease>(vnode::NODE_LEASE_NAMESPACE, NODE)
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
    };
    // Every list (and the quota read) hangs far longer than the test waits.
    hang(&w, &["list", "usage"], 30_000);
    let lists_before = lists_seen(&w);
    eventually("a list is hanging", || async {
        lists_seen(&w) > lists_before
    })
    .await;
    create_pod(&w.srv, &app_pod("second")).await;
    eventually_within(
        "the new pod's group created while the list hangs",
        Duration::from_secs(3),
        || async { groups_created(&w).contains_key(&group_name_in(CLUSTER, NS, "second")) },
    )
    .await;
    let before = renew();
    eventually_within(
        "lease renewed while the list hangs",
        Duration::from_millis(1500),
        || async { renew() > before },
    )
    .await;
    // Lists that time out are failures like any other: the node turns NotReady.
    eventually_within(
        "node NotReady after lists time out",
        Duration::from_secs(5),
        || async { ready_condition(&w.srv).is_some_and(|(s, _)| s == "False") },
    )
    .await;
    assert_eq!(
        groups_created(&w).get(&group_name_in(CLUSTER, NS, "second")),
        Some(&1),
        "one create, no repeats from stale lists"
    );
    // Deleting that pod (its group is in no list yet) is not held back either.
    let pods: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    pods.delete("second", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete pod: {e}"));
    eventually_within(
        "group and pod deleted while the list hangs",
        Duration::from_secs(3),
        || async {
            w.srv.get::<Pod>(NS, "second").is_none()
                && !w
                    .emu
                    .state
                    .snapshot()
                    .iter()
                    .any(|g| g.name == group_name_in(CLUSTER, NS, "second"))
        },
    )
    .await;
    w.emu
        .state
        .set_faults(Faults::default())
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("node Ready again once lists answer", || async {
        ready_condition(&w.srv).is_some_and(|(s, _)| s == "True")
    })
    .await;
    create_pod(&w.srv, &app_pod("third")).await;
    eventually("a pod created after the hang runs", || async {
        running(&w.srv, "third")
    })
    .await;
    assert!(running(&w.srv, "first"));
    let counters = w.emu.state.counters();
    assert_eq!((counters.creates, counters.deletes), (3, 1), "{counters:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_quota_waits_visibly_and_runs_when_quota_frees() {
    let w = world_at(EmulatorConfig {
        groups_limit: 1,
        ..emulator_config()
    })
    .await;
    let metrics = Arc::new(Metrics::new());
    let p = start(&w.srv, w.aci.clone(), Some(metrics.clone()));
    create_pod(&w.srv, &app_pod("first")).await;
    eventually("first pod Running", || async { running(&w.srv, "first") }).await;
    create_pod(&w.srv, &app_pod("second")).await;
    eventually("second pod Pending with a quota reason", || async {
        w.srv
            .get::<Pod>(NS, "second")
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.phase.as_deref() == Some("Pending")
                    && s.reason.as_deref() == Some(vpods::REASON_RETRYING)
                    && s.message.is_some_and(|m| m.contains("quota"))
            })
    })
    .await;
    eventually("a Warning event says why", || async {
        w.srv.list::<Event>(Some(NS)).iter().any(|e| {
            e.reason.as_deref() == Some(vpods::REASON_RETRYING)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second")
        })
    })
    .await;
    assert!(
        metrics
            .aci_container_group_start_failures
            .with_label_values(&["quota"])
            .get()
            >= 1
    );
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("first", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("second pod Running once the quota frees", || async {
        running(&w.srv, "second")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "second")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(status.reason, None, "the retry reason is cleared");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_start_groups_of_live_pods_are_adopted_and_orphans_collected() {
    let w = world().await;
    let first = start(&w.srv, w.aci.clone(), None);
    for n in ["live", "doomed"] {
        create_pod(&w.srv, &app_pod(n)).await;
    }
    eventually("both Running", || async {
        running(&w.srv, "live") && running(&w.srv, "doomed")
    })
    .await;
    first.stop().await;
    // Force-deleted while no provider ran: its group is an orphan now.
    w.srv.remove::<Pod>(NS, "doomed");

    let metrics = Arc::new(Metrics::new());
    let second = start(&w.srv, w.aci.clone(), Some(metrics.clone()));
    eventually("the orphan's group collected", || async {
        w.emu
            .state
            .snapshot()
            .iter()
            .all(|g| g.name != group_name_in(CLUSTER, NS, "doomed"))
    })
    .await;
    assert_eq!(metrics.gc_deleted.get(), 1);
    let snapshot = w.emu.state.snapshot();
    assert_eq!(
        snapshot.len(),
        1,
        "the live pod's group is kept: {snapshot:?}"
    );
    assert_eq!(snapshot[0].name, group_name_in(CLUSTER, NS, "live"));
    let counters = w.emu.state.counters();
    assert_eq!(
        counters.creates, 2,
        "adopted, not created again: {counters:?}"
    );
    assert!(running(&w.srv, "live"));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_map_holds_the_pod_until_it_exists() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    let mut pod = app_pod("cfg");
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].env_from = Some(
            serde_json::from_value(json!([{"configMapRef": {"name": "settings"}}]))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        spec.volumes = Some(
            serde_json::from_value(json!([{"name": "conf", "configMap": {"name": "settings"}}]))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        spec.containers[0].volume_mounts = Some(
            serde_json::from_value(json!([{"name": "conf", "mountPath": "/etc/app"}]))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    create_pod(&w.srv, &pod).await;
    eventually("pod Pending with CreateContainerConfigError", || async {
        w.srv
            .get::<Pod>(NS, "cfg")
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.reason.as_deref() == Some(vpods::REASON_CONFIG_ERROR)
                    && s.message
                        .is_some_and(|m| m.contains("ConfigMap \"settings\" not found"))
            })
    })
    .await;
    assert!(w.emu.state.snapshot().is_empty());
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(w.srv.client(), NS);
    let cm = serde_json::from_value(json!({
        "metadata": {"name": "settings", "namespace": NS},
        "data": {"LEVEL": "debug", "app.yaml": "a: 1"}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    cms.create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("pod Running once the ConfigMap exists", || async {
        running(&w.srv, "cfg")
    })
    .await;
    let snapshot = w.emu.state.snapshot();
    assert_eq!(
        snapshot[0]
            .secret_files
            .get("conf")
            .cloned()
            .unwrap_or_default(),
        vec!["LEVEL".to_string(), "app.yaml".to_string()],
        "the ConfigMap's files reached the group"
    );
    p.stop().await;
}

/// `--aci-log-analytics`: without its Secret the pod waits with an error
/// naming the flag and the Secret (never a group without diagnostics); once
/// the Secret exists the group carries the workspace (ARM hides the key on
/// read, so the provider's own read shows the id and log type only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_analytics_comes_from_its_secret_and_reaches_every_group() {
    let w = world().await;
    let mut config = provider_config();
    config.aci_log_analytics = Some(
        spillway::provider::resolve::LogAnalyticsSecret::parse("spillway-system/la")
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let p = start_with(&w.srv, w.aci.clone(), None, config);
    create_pod(&w.srv, &app_pod("logged")).await;
    eventually("pod Pending with CreateContainerConfigError", || async {
        w.srv
            .get::<Pod>(NS, "logged")
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.reason.as_deref() == Some(vpods::REASON_CONFIG_ERROR)
                    && s.message.is_some_and(|m| {
                        m.contains("--aci-log-analytics: Secret \"spillway-system/la\" not found")
                    })
            })
    })
    .await;
    assert!(
        w.emu.state.snapshot().is_empty(),
        "no group without diagnostics"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(w.srv.client(), "spillway-system");
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "la", "namespace": "spillway-system"},
        "stringData": {
            "workspaceId": "4b1d6a4e-0000-4000-8000-0123456789ab",
            "workspaceKey": "c2hhcmVkLWtleQ==",
            "logType": "ContainerInstanceLogs"
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("pod Running once the Secret exists", || async {
        running(&w.srv, "logged")
    })
    .await;
    let name = w.emu.state.snapshot()[0].name.clone();
    let group = w
        .aci
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("group {name} gone"));
    let la = group
        .properties
        .diagnostics
        .and_then(|d| d.log_analytics)
        .unwrap_or_else(|| panic!("group {name} has no diagnostics.logAnalytics"));
    assert_eq!(la.workspace_id, "4b1d6a4e-0000-4000-8000-0123456789ab");
    assert_eq!(la.log_type.as_deref(), Some("ContainerInstanceLogs"));
    assert_eq!(la.workspace_key, None, "ARM never returns the key");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selecting_policys_aci_section_shapes_the_group() {
    let w = world().await;
    let dir = support::policy_dir(
        "provider-aci-policies",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec:\n  podSelector: { matchLabels: { app: web } }\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n  aci: { publicIp: auto, dnsNameLabel: \"{{namespace}}-{{name}}-pub\" }\n",
    );
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        spillway::policy::reload::PolicyStore::open(&dir, metrics)
            .unwrap_or_else(|e| panic!("{e:?}")),
    );
    let provider =
        Provider::new(w.srv.client(), w.aci.clone(), provider_config(), None).with_policies(store);
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = rx.await;
            })
            .await;
    });
    create_pod(&w.srv, &app_pod("site")).await;
    eventually("pod Running", || async { running(&w.srv, "site") }).await;
    let group = w
        .aci
        .get(&group_name_in(CLUSTER, NS, "site"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("group"));
    assert_eq!(
        group
            .properties
            .ip_address
            .and_then(|ip| ip.dns_name_label)
            .as_deref(),
        Some("web-site-pub"),
        "the policy's dnsNameLabel template was applied"
    );
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// The node's heartbeat does not wait on its status: with every status
/// write hanging far past its deadline, the Lease keeps being renewed, the
/// node stays Ready, and each hung write is abandoned and tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_status_write_stops_neither_the_lease_nor_readiness() {
    let w = world().await;
    let mut config = provider_config();
    config.status_interval = Duration::from_millis(500);
    config.status_timeout = Duration::from_millis(400);
    config.lease_timeout = Duration::from_secs(1);
    let p = start_with(&w.srv, w.aci.clone(), None, config);
    let renew = || {
        w.srv
            .get::<Lease>(vnode::NODE_LEASE_NAMESPACE, NODE)
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
    };
    eventually("node Ready and its lease created", || async {
        ready_condition(&w.srv).map(|r| r.0).as_deref() == Some("True") && renew().is_some()
    })
    .await;
    let status_path = format!("/api/v1/nodes/{NODE}/status");
    w.srv.inject(
        support::Fault::latency(status_path.clone(), Duration::from_secs(300))
            .method(axum::http::Method::PATCH)
            .times(usize::MAX),
    );
    let status_writes = || {
        w.srv
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == status_path)
            .count()
    };
    let hung_from = status_writes();
    // Renewals every 300 ms go on, each well inside one hung write (300 s).
    for _ in 0..5 {
        let before = renew();
        eventually_within(
            "lease renewed while status writes hang",
            Duration::from_secs(3),
            || async { renew() > before },
        )
        .await;
    }
    eventually("hung status writes abandoned and retried", || async {
        status_writes() >= hung_from + 3
    })
    .await;
    assert_eq!(
        ready_condition(&w.srv).map(|r| r.0).as_deref(),
        Some("True"),
        "the node stays Ready"
    );
    w.srv.clear_faults();
    p.stop().await;
}

/// The usual Burstable pod (requests 0.5 CPU, limits 1) runs on ACI: its
/// limits are lowered to the group's request (ACI refuses a limit above the
/// group's total request) and the pod gets a `LimitsClamped` Event saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burstable_pod_runs_with_clamped_limits_and_an_event() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    let mut pod = app_pod("burstable");
    if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
        c.resources = Some(
            serde_json::from_value(json!({
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"}
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    create_pod(&w.srv, &pod).await;
    eventually("pod Running", || async { running(&w.srv, "burstable") }).await;
    let group = w
        .aci
        .get(&group_name_in(CLUSTER, NS, "burstable"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("group"));
    let r = &group.properties.containers[0].properties.resources;
    assert_eq!((r.requests.cpu, r.requests.memory_in_gb), (0.5, 0.6));
    assert_eq!(
        r.limits.map(|l| (l.cpu, l.memory_in_gb)),
        Some((0.5, 0.6)),
        "limits clamped to the group's total request"
    );
    eventually("a LimitsClamped event for the pod", || async {
        w.srv.list::<Event>(Some(NS)).iter().any(|e| {
            e.reason.as_deref() == Some("LimitsClamped")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("burstable")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("app cpu limit 1 → 0.5"))
        })
    })
    .await;
    p.stop().await;
}

/// The group `group_name` would create for `pod` in `cluster`, under `name`.
fn translated_group(pod: &Pod, cluster: &str, name: &str) -> spillway::aci::ContainerGroup {
    use spillway::aci::translate::{PodContext, Resolved, TranslateConfig, pod_to_group};
    let config = TranslateConfig::new(cluster, "westeurope");
    let settings = spillway::policy::AciSettings::default();
    let resolved = Resolved::default();
    let mut g = pod_to_group(
        pod,
        &PodContext {
            config: &config,
            aci: &settings,
            resolved: &resolved,
        },
    )
    .unwrap_or_else(|e| panic!("translate: {e}"));
    g.name = name.to_string();
    g
}

/// Two clusters share a resource group. A group of the other cluster under
/// the very name this cluster would use for `web/db-0` is never PUT over:
/// the pod fails with a NameCollision naming the other cluster, with an
/// Event, and the other cluster's group is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_another_cluster_is_never_overwritten() {
    let w = world().await;
    let name = group_name_in(CLUSTER, NS, "db-0");
    let theirs = translated_group(&app_pod("db-0"), "other-cluster", &name);
    w.aci
        .create_or_update(&theirs)
        .await
        .unwrap_or_else(|e| panic!("the other cluster's group: {e}"));
    let p = start(&w.srv, w.aci.clone(), None);
    create_pod(&w.srv, &app_pod("db-0")).await;
    eventually("pod Failed", || async {
        phase(&w.srv, "db-0").as_deref() == Some("Failed")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "db-0")
        .and_then(|p| p.status)
        .unwrap_or_default();
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("NameCollision") && message.contains("\"other-cluster\""),
        "message: {message}"
    );
    eventually("a Warning event for the pod", || async {
        w.srv.list::<Event>(Some(NS)).iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("db-0")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("NameCollision"))
        })
    })
    .await;
    let snapshot = w.emu.state.snapshot();
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0].puts, 1, "never PUT over");
    assert_eq!(
        snapshot[0].tags.get("spillway-cluster").map(String::as_str),
        Some("other-cluster")
    );
    p.stop().await;
}

/// A group created before cluster hashing (named `web-legacy`) keeps
/// running its pod after the upgrade: it is found by its tags, no second
/// group is created, and once the pod is deleted the old group is collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_named_before_cluster_hashing_is_adopted_then_collected() {
    let w = world().await;
    let pod = create_pod(&w.srv, &app_pod("legacy")).await;
    let old_name = group_name(NS, "legacy");
    assert_eq!(old_name, "web-legacy");
    w.aci
        .create_or_update(&translated_group(&pod, CLUSTER, &old_name))
        .await
        .unwrap_or_else(|e| panic!("old-style group: {e}"));
    let p = start(&w.srv, w.aci.clone(), None);
    eventually("pod Running on its old group", || async {
        running(&w.srv, "legacy")
    })
    .await;
    let ip = w
        .srv
        .get::<Pod>(NS, "legacy")
        .and_then(|p| p.status)
        .and_then(|s| s.pod_ip);
    assert!(ip.is_some(), "the old group's IP is the pod IP");
    assert_eq!(
        groups_created(&w).keys().collect::<Vec<_>>(),
        [&old_name],
        "no second group"
    );
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("legacy", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("pod removed and its old group collected", || async {
        w.srv.get::<Pod>(NS, "legacy").is_none() && w.emu.state.snapshot().is_empty()
    })
    .await;
    p.stop().await;
}

/// ACI's instance-view events (pulling, started, …) reach `kubectl describe
/// pod` as Events on the pod (the container's as `spec.containers{app}`),
/// once each, however many syncs read them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aci_events_become_pod_events_once() {
    let w = world().await;
    let p = start(&w.srv, w.aci.clone(), None);
    create_pod(&w.srv, &app_pod("evented")).await;
    eventually("pod Running", || async { running(&w.srv, "evented") }).await;
    let of = |reason: &str| -> Vec<Event> {
        w.srv
            .list::<Event>(Some(NS))
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("evented")
            })
            .collect()
    };
    eventually("Pulling and Started events", || async {
        !of("Pulling").is_empty() && !of("Started").is_empty()
    })
    .await;
    let started = of("Started");
    assert_eq!(
        started[0]
            .regarding
            .as_ref()
            .and_then(|r| r.field_path.as_deref()),
        Some("spec.containers{app}")
    );
    assert_eq!(started[0].type_.as_deref(), Some("Normal"));
    assert!(
        of("Pulling")[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("pulling image")),
        "{:?}",
        of("Pulling")
    );
    // Several more syncs read the same events: nothing new is published.
    let reads = || -> u64 { w.emu.state.counters().requests.values().sum() };
    let before = reads();
    eventually("more ARM reads (syncs)", || async { reads() >= before + 6 }).await;
    assert_eq!((of("Pulling").len(), of("Started").len()), (1, 1));
    for e in of("Started").iter().chain(of("Pulling").iter()) {
        assert!(e.series.is_none(), "published once, not repeated: {e:?}");
    }
    p.stop().await;
}
