//! `/metrics/resource` and `/stats/summary` on the virtual node's kubelet
//! endpoint, over loopback HTTP, with the kubelet endpoint's ACI client on
//! the ACI emulator (its Azure Monitor route): two burst pods, metrics set
//! per container through `/_emulator`, scraped the way metrics-server
//! scrapes (the text format parsed, CPU usage = Δcpu_seconds / Δt between
//! two scrapes, memory = the working set), and the Summary parsed. Also:
//! `/metrics/resource` is authorized as `nodes/metrics`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::aci::{ContainerGroup, ContainerGroups};
use spillway::kubelet::logs::{LogBudget, LogReader};
use spillway::kubelet::metrics::{MetricsConfig, ResourceMetrics};
use spillway::units::Timestamp;
use tokio::time::Instant;

const CLUSTER: &str = "c1";
const NODE: &str = "spillway-aci";
const WAIT: Duration = Duration::from_secs(20);

/// The group of pod `web/{name}` (one container `app`) as the provider
/// creates it.
fn group(name: &str) -> ContainerGroup {
    support::web_pod_group(CLUSTER, name, "nginx:1.27", None)
}

/// The start of the minute `n` minutes before this one.
fn minutes_ago(n: i64) -> Timestamp {
    let now = Timestamp::now_wall().millis();
    Timestamp(now - now.rem_euclid(60_000) - n * 60_000)
}

fn minute(t: Timestamp) -> i64 {
    t.millis().div_euclid(60_000)
}

struct Node {
    emu: EmulatorHandle,
    url: String,
    groups: BTreeMap<String, String>,
    /// The minute before the groups were created.
    started: i64,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    /// An emulator running pods `web/api` and `web/worker`, and a kubelet
    /// endpoint serving their metrics, refreshed at most every 100 ms.
    async fn start() -> Self {
        let emu = Emulator::start(EmulatorConfig {
            speed: 100.0,
            ..EmulatorConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = AzureConfig::for_emulator(&emu.url, "tok", "sub", "rg");
        let aci: Arc<dyn ContainerGroups> =
            Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
        let started = minute(Timestamp::now_wall());
        let mut groups = BTreeMap::new();
        for pod in ["api", "worker"] {
            let g = group(pod);
            aci.create_or_update(&g)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            groups.insert(pod.to_string(), g.name);
        }
        let deadline = Instant::now() + WAIT;
        for name in groups.values() {
            loop {
                let g = aci.get(name).await.ok().flatten();
                if g.is_some_and(|g| {
                    g.properties.provisioning_state.as_deref() == Some("Succeeded")
                }) {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} never ran");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let metrics = ResourceMetrics::new(
            aci.clone(),
            CLUSTER,
            NODE,
            MetricsConfig {
                interval: Duration::from_millis(100),
                deadline: Duration::from_secs(5),
                window: Duration::from_secs(900),
                ..MetricsConfig::default()
            },
        );
        let app = spillway::kubelet::router_with_metrics(
            Arc::new(LogReader::new(aci, CLUSTER, LogBudget::default())),
            Arc::new(metrics),
            spillway::kubelet::Access::Open,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(spillway::kubelet::serve(
            listener,
            app,
            spillway::kubelet::ServeLimits::default(),
            async {
                let _ = rx.await;
            },
        ));
        Node {
            emu,
            url: format!("http://127.0.0.1:{port}"),
            groups,
            started,
            _stop: tx,
        }
    }

    /// Set `app` of `pod` to `cpu` millicores and `memory` bytes for the
    /// minutes `[from, to)`, through the emulator's control API.
    async fn set(&self, pod: &str, cpu: f64, memory: f64, from: Timestamp, to: Timestamp) {
        let body = serde_json::json!({
            "containers": {"app": {"cpuMillicores": cpu, "memoryBytes": memory}},
            "from": from.to_rfc3339(),
            "to": to.to_rfc3339(),
        });
        let r = reqwest::Client::new()
            .post(format!(
                "{}/_emulator/groups/{}/metrics",
                self.emu.url, self.groups[pod]
            ))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }
}

/// One container's point as metrics-server's decoder keeps it
/// (`pkg/scraper/client/resource/decode.go`): cumulative CPU in
/// nanoseconds, memory in bytes, the timestamp in milliseconds, the start
/// time in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Point {
    cpu_nanos: u64,
    memory: u64,
    timestamp_ms: i64,
    start_time_s: f64,
}

/// What one scrape gave metrics-server: the node's point and each
/// container's, by (namespace, pod, container).
#[derive(Debug, Default)]
struct Batch {
    node: Point,
    containers: BTreeMap<(String, String, String), Point>,
    scrape_error: Option<f64>,
}

/// Parse the text format as metrics-server does: series lines only,
/// `name{labels} value [timestamp]`, the container's labels by name.
fn decode(text: &str) -> Batch {
    let mut batch = Batch::default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, rest) = match line.find('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => line
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}")),
        };
        let mut fields = rest.split_whitespace();
        let value: f64 = fields
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let timestamp: Option<i64> = fields.next().map(|t| {
            t.parse()
                .unwrap_or_else(|_| panic!("bad timestamp: {line:?}"))
        });
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            let start = labels
                .find(&format!("{key}=\""))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                + key.len()
                + 2;
            let end = labels[start..]
                .find('"')
                .unwrap_or_else(|| panic!("{line:?}"));
            labels[start..start + end].to_string()
        };
        let container_key = || (label("namespace"), label("pod"), label("container"));
        match name {
            "node_cpu_usage_seconds_total" => {
                batch.node.cpu_nanos = (value * 1e9) as u64;
                batch.node.timestamp_ms = timestamp.unwrap_or_default();
            }
            "node_memory_working_set_bytes" => batch.node.memory = value as u64,
            "container_cpu_usage_seconds_total" => {
                let ts = timestamp.unwrap_or_else(|| panic!("no timestamp: {line:?}"));
                let p = batch.containers.entry(container_key()).or_default();
                p.cpu_nanos = (value * 1e9) as u64;
                p.timestamp_ms = ts;
            }
            "container_memory_working_set_bytes" => {
                let ts = timestamp.unwrap_or_else(|| panic!("no timestamp: {line:?}"));
                let p = batch.containers.entry(container_key()).or_default();
                p.memory = value as u64;
                p.timestamp_ms = ts;
            }
            "container_start_time_seconds" => {
                batch
                    .containers
                    .entry(container_key())
                    .or_default()
                    .start_time_s = value
            }
            "scrape_error" => batch.scrape_error = Some(value),
            _ => {}
        }
    }
    batch
}

/// metrics-server's usage between two points (`pkg/storage/types.go`
/// `resourceUsage`): CPU cores = Δcumulative / Δt, memory = the newer
/// working set. Also its refusals: a start time that moved back, a counter
/// that went down, a zero counter or memory (`checkContainerMetrics`).
fn usage(prev: Point, last: Point) -> (f64, u64) {
    assert!(
        last.start_time_s >= prev.start_time_s,
        "start time went back"
    );
    assert!(
        last.cpu_nanos >= prev.cpu_nanos,
        "the CPU counter went down"
    );
    assert!(prev.cpu_nanos > 0 && prev.memory > 0, "dropped: {prev:?}");
    assert!(
        last.start_time_s * 1000.0 < last.timestamp_ms as f64,
        "start after sample"
    );
    let window_s = (last.timestamp_ms - prev.timestamp_ms) as f64 / 1000.0;
    assert!(window_s > 0.0, "the same point twice: {prev:?} {last:?}");
    (
        (last.cpu_nanos - prev.cpu_nanos) as f64 / 1e9 / window_s,
        last.memory,
    )
}

/// Scrape `/metrics/resource` until `done` holds for the batch.
async fn scrape_until(node: &Node, done: impl Fn(&Batch) -> bool) -> Batch {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = node.get("/metrics/resource").await;
        assert_eq!(status, 200, "{text}");
        let batch = decode(&text);
        if done(&batch) {
            return batch;
        }
        assert!(Instant::now() < deadline, "never: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key(pod: &str) -> (String, String, String) {
    ("web".to_string(), pod.to_string(), "app".to_string())
}

/// Two scrapes as metrics-server makes them, with Monitor's minutes set in
/// between: the CPU rates and memory it would compute for `api` and
/// `worker`. `None` if a minute ended since the groups started (the
/// emulator's idle running minute would then enter the counters).
async fn two_scrapes(node: &Node) -> Option<(BTreeMap<String, (f64, u64)>, Batch)> {
    let m0 = minutes_ago(10);
    let at = |m: i64| Timestamp(m0.millis() + m * 60_000);
    const MIB: f64 = 1024.0 * 1024.0;
    node.set("api", 250.0, 100.0 * MIB, at(0), at(3)).await;
    node.set("worker", 500.0, 200.0 * MIB, at(0), at(3)).await;
    let first = scrape_until(node, |b| {
        ["api", "worker"].iter().all(|p| {
            b.containers
                .get(&key(p))
                .is_some_and(|c| c.timestamp_ms >= at(3).millis())
        })
    })
    .await;
    if minute(Timestamp::now_wall()) != node.started {
        return None;
    }
    // 0.25 core × 180 s and 0.5 core × 180 s, stamped at the end of the
    // last minute counted; the counter starts with the first minute seen.
    assert_eq!(first.containers[&key("api")].cpu_nanos, 45_000_000_000);
    assert_eq!(first.containers[&key("worker")].cpu_nanos, 90_000_000_000);
    assert_eq!(first.containers[&key("api")].start_time_s, m0.secs_f64());
    assert_eq!(first.node.cpu_nanos, 135_000_000_000);
    assert_eq!(first.node.memory, (300.0 * MIB) as u64);
    assert_eq!(first.scrape_error, Some(0.0));

    node.set("api", 1000.0, 300.0 * MIB, at(3), at(6)).await;
    node.set("worker", 100.0, 50.0 * MIB, at(3), at(6)).await;
    let second = scrape_until(node, |b| {
        ["api", "worker"].iter().all(|p| {
            b.containers
                .get(&key(p))
                .is_some_and(|c| c.timestamp_ms >= at(6).millis())
        })
    })
    .await;
    if minute(Timestamp::now_wall()) != node.started {
        return None;
    }
    let rates = ["api", "worker"]
        .iter()
        .map(|p| {
            (
                p.to_string(),
                usage(first.containers[&key(p)], second.containers[&key(p)]),
            )
        })
        .collect();
    Some((rates, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_server_sees_the_burst_pods_cpu_and_memory_from_monitor() {
    const MIB: u64 = 1024 * 1024;
    // A minute boundary during the run changes what Monitor has; run again.
    let mut outcome = None;
    for _ in 0..3 {
        let node = Node::start().await;
        if let Some(o) = two_scrapes(&node).await {
            outcome = Some((node, o));
            break;
        }
    }
    let (node, (rates, last)) = outcome.unwrap_or_else(|| panic!("a minute ended in every run"));
    // What `kubectl top pod` would show: the average over the minutes
    // between the two scrapes, and the last minute's working set.
    assert_eq!(rates["api"], (1.0, 300 * MIB));
    assert_eq!(rates["worker"], (0.1, 50 * MIB));
    assert_eq!(last.node.memory, 350 * MIB);

    // The Summary carries the same figures.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Summary {
        node: NodeStats,
        pods: Vec<PodStats>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NodeStats {
        node_name: String,
        cpu: Cpu,
        memory: Memory,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PodStats {
        pod_ref: PodRef,
        containers: Vec<ContainerStats>,
    }
    #[derive(serde::Deserialize)]
    struct PodRef {
        name: String,
        namespace: String,
        uid: String,
    }
    #[derive(serde::Deserialize)]
    struct ContainerStats {
        name: String,
        cpu: Cpu,
        memory: Memory,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Cpu {
        time: String,
        usage_nano_cores: u64,
        usage_core_nano_seconds: u64,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Memory {
        working_set_bytes: u64,
    }
    let (status, text) = node.get("/stats/summary").await;
    assert_eq!(status, 200, "{text}");
    let s: Summary = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(s.node.node_name, NODE);
    assert_eq!(s.node.cpu.usage_core_nano_seconds, last.node.cpu_nanos);
    assert_eq!(s.node.memory.working_set_bytes, 350 * MIB);
    let api = s
        .pods
        .iter()
        .find(|p| p.pod_ref.name == "api")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (api.pod_ref.namespace.as_str(), api.pod_ref.uid.as_str()),
        ("web", "uid-api")
    );
    assert_eq!(api.containers[0].name, "app");
    assert_eq!(api.containers[0].cpu.usage_nano_cores, 1_000_000_000);
    assert_eq!(
        api.containers[0].cpu.usage_core_nano_seconds,
        last.containers[&key("api")].cpu_nanos
    );
    assert_eq!(api.containers[0].memory.working_set_bytes, 300 * MIB);
    assert_eq!(
        Timestamp::parse_rfc3339(&api.containers[0].cpu.time).map(Timestamp::millis),
        Ok(last.containers[&key("api")].timestamp_ms)
    );

    // A deleted group's pod leaves the metrics.
    let cfg = AzureConfig::for_emulator(&node.emu.url, "tok", "sub", "rg");
    let aci = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}"));
    aci.delete(&node.groups["worker"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    scrape_until(&node, |b| !b.containers.contains_key(&key("worker"))).await;
}

#[tokio::test]
async fn resource_metrics_need_nodes_metrics() {
    use spillway::kubelet::auth::{AuthConfig, ClientCa, KubeReviews, NodeAuth};
    use tower::ServiceExt as _;
    let srv = support::TestApiServer::start().await;
    srv.apply_manifests(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-metrics-reader}
rules:
  - apiGroups: [""]
    resources: ["nodes/metrics"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: metrics-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-metrics-reader}
subjects:
  - {kind: ServiceAccount, name: metrics-server, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy-reader}
rules:
  - apiGroups: [""]
    resources: ["nodes/proxy"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: log-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects:
  - {kind: ServiceAccount, name: log-reader, namespace: web}
"#,
    );
    let auth = NodeAuth::new(
        NODE,
        ClientCa::empty(),
        Arc::new(KubeReviews::new(srv.client(), Duration::from_secs(10))),
        AuthConfig::default(),
    );
    // The endpoint's reads go nowhere: only the authorization is judged
    // (an authorized scrape is answered from the empty cache).
    let cfg = AzureConfig::for_emulator("http://127.0.0.1:9", "t", "s", "rg");
    let aci: Arc<dyn ContainerGroups> =
        Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
    let app = spillway::kubelet::router_with_metrics(
        Arc::new(LogReader::new(aci.clone(), "local", LogBudget::default())),
        Arc::new(ResourceMetrics::new(
            aci,
            "local",
            NODE,
            MetricsConfig {
                deadline: Duration::from_millis(100),
                ..MetricsConfig::default()
            },
        )),
        spillway::kubelet::Access::Checked(Arc::new(auth)),
    );
    let get = |path: &str, token: String| {
        axum::http::Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let metrics_server = srv.token_for_service_account("kube-system", "metrics-server");
    let log_reader = srv.token_for_service_account("web", "log-reader");
    for (path, token, want) in [
        ("/metrics/resource", metrics_server.clone(), 200),
        ("/metrics/resource", log_reader.clone(), 403),
        // `/stats/…` is `nodes/stats`: neither has it.
        ("/stats/summary", metrics_server, 403),
        ("/stats/summary", log_reader, 403),
    ] {
        let r = app
            .clone()
            .oneshot(get(path, token))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), want, "{path}");
    }
}

/// The Azure client's metrics call against the emulator over HTTP: the
/// answer parsed, a missing group `NotFound` (Monitor's top-level error
/// form), an injected 429 `Throttled` with its `Retry-After`.
#[tokio::test]
async fn the_azure_client_reads_monitor_and_classifies_its_refusals() {
    use spillway::aci::AciError;
    use spillway::aci::monitor::MetricsSpan;
    let node = Node::start().await;
    let cfg = AzureConfig::for_emulator(&node.emu.url, "tok", "sub", "rg");
    let aci = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let m0 = minutes_ago(5);
    let span = MetricsSpan {
        start: m0,
        end: Timestamp(m0.millis() + 120_000),
    };
    node.set("api", 125.0, 4096.0, m0, span.end).await;
    let m = aci
        .metrics(&node.groups["api"], span)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let points = &m.containers["app"];
    assert_eq!(points.len(), 2);
    assert!(
        points
            .iter()
            .all(|p| p.cpu_millicores == Some(125.0) && p.memory_bytes == Some(4096.0)),
        "{points:?}"
    );
    assert_eq!(
        aci.metrics("no-such-group", span).await.err(),
        Some(AciError::NotFound)
    );
    node.emu
        .state
        .set_faults(
            serde_json::from_value(serde_json::json!({
                "operations": {"metrics": {"throttleRate": 1.0}}
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        aci.metrics(&node.groups["api"], span).await.err(),
        Some(AciError::Throttled {
            retry_after: Duration::from_secs(1)
        })
    );
}
