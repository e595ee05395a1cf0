//! Readiness that is checked, end to end: the provider between the test API
//! server and the ACI emulator (both over real HTTP), the emulator handing
//! out loopback public IPs (127.x.y.z, which a local listener can bind), so
//! spillway's probes hit a real listener that flips between healthy and
//! failing.

mod support;

use axum::http::{Method, StatusCode};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::metrics::Metrics;
use spillway::provider::node as vnode;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;
use support::provider_world::{NODE, Running, fast_config, paced_aci};
use support::{Fault, PodDeletion, TestApiServer};
use tokio::time::Instant;

const NS: &str = "web";
const WAIT: Duration = Duration::from_secs(30);

/// Poll `check` every 50 ms until it holds or `WAIT` passes; panics with `what`.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    support::provider_world::eventually(what, WAIT, check).await
}

struct World {
    srv: TestApiServer,
    _emu: EmulatorHandle,
    metrics: Arc<Metrics>,
    provider: Running,
}

impl World {
    /// The provider over an emulator whose public IPs come from `ips`/24.
    async fn start(ips: Ipv4Addr) -> Self {
        let srv = TestApiServer::builder()
            .pod_deletion(PodDeletion::Kubelet)
            .start()
            .await;
        let emu = Emulator::start(EmulatorConfig {
            speed: 50.0,
            ip_range_base: ips,
            ip_range_prefix: 24,
            ..EmulatorConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("emulator: {e}"));
        let mut config = fast_config("test-cluster");
        // Running groups are not re-read meanwhile (ARM's list has no
        // instance views): readiness flips are written from the probes alone.
        config.refresh_interval = Duration::from_secs(600);
        let metrics = Arc::new(Metrics::new());
        let provider = Running::start(&srv, paced_aci(&emu), Some(metrics.clone()), config);
        World {
            srv,
            _emu: emu,
            metrics,
            provider,
        }
    }

    async fn stop(self) {
        self.provider.stop().await;
    }

    fn pod(&self, name: &str) -> Option<Pod> {
        self.srv.get::<Pod>(NS, name)
    }

    fn condition(&self, name: &str, kind: &str) -> Option<PodCondition> {
        self.pod(name)
            .and_then(|p| p.status)
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == kind))
    }

    fn ready(&self, name: &str) -> Option<bool> {
        self.condition(name, "Ready").map(|c| c.status == "True")
    }

    fn probes(&self, result: &str) -> u64 {
        self.probes_of("readiness", result)
    }

    fn probes_of(&self, probe: &str, result: &str) -> u64 {
        self.metrics
            .probe_results
            .with_label_values(&[probe, result])
            .get()
    }

    /// `started` and `ready` of the pod's first container.
    fn container(&self, name: &str) -> Option<(Option<bool>, bool)> {
        self.pod(name)
            .and_then(|p| p.status)
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .map(|c| (c.started, c.ready))
    }
}

fn burst_pod(name: &str, readiness: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": NODE,
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": "app:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": readiness,
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
            }]
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

async fn create(w: &World, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
}

/// An HTTP listener on `ip:8080` whose `/healthz` answers `status`
/// (counting the answers that were not 200) and `/started` `started`.
struct App {
    status: Arc<AtomicU16>,
    failures: Arc<AtomicU64>,
    started: Arc<AtomicU16>,
}

/// `/started` answers `started` until told otherwise.
async fn listen(ip: &str, started: u16) -> App {
    let status = Arc::new(AtomicU16::new(200));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU16::new(started));
    let (s, f, st) = (status.clone(), failures.clone(), started.clone());
    let app =
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let (s, f) = (s.clone(), f.clone());
                    async move {
                        let code = s.load(Ordering::SeqCst);
                        if code != 200 {
                            f.fetch_add(1, Ordering::SeqCst);
                        }
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }),
            )
            .route(
                "/started",
                axum::routing::get(move || {
                    let code = st.load(Ordering::SeqCst);
                    async move {
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }),
            );
    let listener = tokio::net::TcpListener::bind(format!("{ip}:8080"))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:8080: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    App {
        status,
        failures,
        started,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_pod_is_ready_only_while_its_readiness_probe_passes() {
    let w = World::start(Ipv4Addr::new(127, 83, 17, 0)).await;
    create(
        &w,
        &burst_pod(
            "web-1",
            json!({"httpGet": {"path": "/healthz", "port": "http"},
                   "periodSeconds": 1, "failureThreshold": 2}),
        ),
    )
    .await;
    eventually("the pod runs with a pod IP", || async {
        w.pod("web-1")
            .and_then(|p| p.status)
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    })
    .await;
    let ip = w
        .pod("web-1")
        .and_then(|p| p.status)
        .and_then(|s| s.pod_ip)
        .unwrap_or_else(|| panic!("pod IP"));
    assert!(
        ip.starts_with("127.83.17."),
        "the emulator's loopback range: {ip}"
    );

    // Nothing listens yet: probes fail (connection refused), not Ready.
    eventually("probes fail against no listener", || async {
        w.probes("failure") >= 2
    })
    .await;
    let c = w
        .condition("web-1", "Ready")
        .unwrap_or_else(|| panic!("Ready condition"));
    assert_eq!(c.status, "False");
    assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(
        c.message.as_deref(),
        Some("containers with unready status: [app]")
    );
    assert_eq!(
        w.condition("web-1", "ContainersReady").map(|c| c.status),
        Some("False".into())
    );
    let statuses = w
        .pod("web-1")
        .and_then(|p| p.status)
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    assert!(!statuses[0].ready, "{statuses:?}");

    // The app comes up: Ready.
    let app = listen(&ip, 200).await;
    let up = Instant::now();
    eventually("Ready once the listener answers 200", || async {
        w.ready("web-1") == Some(true)
    })
    .await;
    eprintln!("Ready {:?} after the listener answered", up.elapsed());
    assert!(
        w.pod("web-1")
            .and_then(|p| p.status)
            .and_then(|s| s.container_statuses)
            .is_some_and(|cs| cs[0].ready)
    );

    // It starts failing: one failure is below failureThreshold 2 …
    app.status.store(500, Ordering::SeqCst);
    let down = Instant::now();
    eventually("the listener answered one failure", || async {
        app.failures.load(Ordering::SeqCst) >= 1
    })
    .await;
    let before = app.failures.load(Ordering::SeqCst);
    let ready = w.ready("web-1");
    if before == 1 && app.failures.load(Ordering::SeqCst) == 1 {
        assert_eq!(ready, Some(true), "one failure keeps the pod Ready");
    }
    // … the second turns it NotReady.
    eventually("NotReady after failureThreshold failures", || async {
        w.ready("web-1") == Some(false)
    })
    .await;
    eprintln!(
        "NotReady {:?} after the listener began failing",
        down.elapsed()
    );
    assert!(app.failures.load(Ordering::SeqCst) >= 2);
    let c = w
        .condition("web-1", "Ready")
        .unwrap_or_else(|| panic!("Ready condition"));
    assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"));

    // It recovers: Ready again.
    app.status.store(200, Ordering::SeqCst);
    eventually("Ready again once it recovers", || async {
        w.ready("web-1") == Some(true)
    })
    .await;
    assert!(w.metrics.probe_workers.get() == 1);

    // Deleted: the worker is gone.
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("web-1", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("the pod is gone", || async { w.pod("web-1").is_none() }).await;
    // The gauge drops only when the worker task's future is dropped.
    eventually("its probe worker is gone", || async {
        w.metrics.probe_workers.get() == 0
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_probed_pod_is_ready_when_running_and_says_the_probe_is_not_run() {
    let w = World::start(Ipv4Addr::new(127, 83, 18, 0)).await;
    create(
        &w,
        &burst_pod(
            "exec-1",
            json!({"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1}),
        ),
    )
    .await;
    eventually("Ready when running", || async {
        w.ready("exec-1") == Some(true)
    })
    .await;
    let c = w
        .condition("exec-1", "Ready")
        .unwrap_or_else(|| panic!("Ready condition"));
    let message = c.message.unwrap_or_default();
    assert!(
        message.contains("container app: the exec app.readinessProbe is not run"),
        "{message}"
    );
    assert_eq!(w.metrics.probe_workers.get(), 0, "nothing to probe");
    assert_eq!(w.probes("success") + w.probes("failure"), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_socket_readiness_probe_is_run_by_spillway_and_stops_with_leadership() {
    let w = World::start(Ipv4Addr::new(127, 83, 19, 0)).await;
    // ACI has no tcpSocket probes: the group is created without it and
    // spillway probes the port.
    create(
        &w,
        &burst_pod(
            "tcp-1",
            json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1}),
        ),
    )
    .await;
    eventually("the pod runs with a pod IP", || async {
        w.pod("tcp-1")
            .and_then(|p| p.status)
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    })
    .await;
    eventually("a refused connection is a failed probe", || async {
        w.probes("failure") >= 1
    })
    .await;
    assert_eq!(w.ready("tcp-1"), Some(false));
    let ip = w
        .pod("tcp-1")
        .and_then(|p| p.status)
        .and_then(|s| s.pod_ip)
        .unwrap_or_else(|| panic!("pod IP"));
    // The first status write after the flip loses a race (409, as for a
    // pod changed meanwhile): the next sync makes up for it.
    let status_path = format!("/api/v1/namespaces/{NS}/pods/tcp-1/status");
    let patches = || {
        w.srv
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == status_path)
            .count()
    };
    let before = patches();
    w.srv
        .inject(Fault::status(status_path.clone(), 409).method(Method::PATCH));
    let _app = listen(&ip, 200).await;
    eventually("Ready once the port accepts connections", || async {
        w.ready("tcp-1") == Some(true)
    })
    .await;
    assert!(
        patches() >= before + 2,
        "the refused write and the next one"
    );
    assert_eq!(w.metrics.probe_workers.get(), 1);

    // Leadership lost: the provider stops, its probe workers with it.
    w.provider.leader.send_replace(false);
    eventually("no probe worker without leadership", || async {
        w.metrics.probe_workers.get() == 0
    })
    .await;
    // Regained: probing starts again, and the Ready pod stays Ready (no
    // status write: a takeover does not flap Endpoints).
    let status_writes = || {
        w.srv
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/pods/tcp-1/status"))
            .count()
    };
    let writes = status_writes();
    let successes = w.probes("success");
    w.provider.leader.send_replace(true);
    eventually("probed again as leader", || async {
        w.metrics.probe_workers.get() == 1 && w.probes("success") > successes
    })
    .await;
    // Another probe a period later: syncs (every 200 ms) merged the first one.
    let after_first = w.probes("success");
    eventually("another probe", || async {
        w.probes("success") > after_first
    })
    .await;
    assert_eq!(w.ready("tcp-1"), Some(true));
    assert_eq!(
        status_writes(),
        writes,
        "no status write after the takeover"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_probe_gates_readiness() {
    let w = World::start(Ipv4Addr::new(127, 83, 20, 0)).await;
    let mut pod = burst_pod(
        "slow-1",
        json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}),
    );
    if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.startup_probe = Some(
            serde_json::from_value(json!({
                "httpGet": {"path": "/started", "port": 8080},
                "periodSeconds": 1, "failureThreshold": 30
            }))
            .unwrap_or_else(|e| panic!("probe json: {e}")),
        );
    }
    create(&w, &pod).await;
    eventually("the pod runs with a pod IP", || async {
        w.pod("slow-1")
            .and_then(|p| p.status)
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    })
    .await;
    let ip = w
        .pod("slow-1")
        .and_then(|p| p.status)
        .and_then(|s| s.pod_ip)
        .unwrap_or_else(|| panic!("pod IP"));
    // The app answers /healthz already, but has not started.
    let app = listen(&ip, 503).await;
    let failures = w.probes_of("startup", "failure");
    eventually("startup probes fail against the app", || async {
        w.probes_of("startup", "failure") >= failures + 2
    })
    .await;
    assert_eq!(w.container("slow-1"), Some((Some(false), false)));
    assert_eq!(w.ready("slow-1"), Some(false));
    assert_eq!(
        w.probes("success") + w.probes("failure"),
        0,
        "no readiness probe before the container started"
    );
    // Started: readiness is probed and passes.
    app.started.store(200, Ordering::SeqCst);
    eventually("started and Ready", || async {
        w.container("slow-1") == Some((Some(true), true)) && w.ready("slow-1") == Some(true)
    })
    .await;
    assert!(w.probes("success") >= 1);
    w.stop().await;
}
