//! `GET /metrics/resource` (the Prometheus text metrics-server scrapes) and
//! `GET /stats/summary` (the kubelet's `stats/v1alpha1` Summary) for the
//! virtual node and its burst pods, from Azure Monitor's container-group
//! metrics ([`crate::aci::monitor`]): `CpuUsage` (millicores, a one-minute
//! average) and `MemoryUsage` (bytes).
//!
//! **Which pods.** The burst pods are the container groups tagged with
//! this cluster's id ([`TAG_CLUSTER`], the same ownership check as
//! [`super::logs`]), one ACI list per refresh; their namespace, name and
//! uid come from the group's tags. Groups still provisioning have no
//! metrics and are left out.
//!
//! **CPU is a counter.** The kubelet reports cumulative CPU seconds and
//! metrics-server derives the rate between two scrapes
//! (`Δcpu / Δtimestamp`). Monitor only has per-minute averages, so each
//! container's counter ([`CpuCounter`]) is their integral: every minute
//! with an average adds `average × 60 s`, starting at zero with the first
//! minute seen (after a restart of spillway, the counter starts again:
//! `container_start_time_seconds` is the counter's start, so metrics-server
//! treats it as a restarted container rather than reading a drop). Minutes
//! without data (not running, or not ingested yet: Monitor lags one to a
//! few minutes) add nothing; a minute that arrives after a later one was
//! already counted is not added. Samples carry the end of the last minute
//! counted as their timestamp, so the rate metrics-server computes is the
//! average over exactly the minutes between two scrapes, a few minutes
//! late. Memory is the working set of that last minute (ACI reports one
//! memory figure; it is used for both working set and usage). Node figures
//! are sums over the burst pods.
//!
//! **Its own read budget.** Metrics are fetched per group at most once per
//! [`MetricsConfig::interval`] (Monitor's grain is one minute), with a
//! token bucket of their own (one token per ARM read, the list included)
//! through the kubelet endpoint's own ACI client, never the provider's
//! pacer, and at most [`MetricsConfig::concurrency`] at once. A scrape
//! starts a refresh when the cache is older than the interval and waits for
//! it at most [`MetricsConfig::deadline`]; then it serves the cache.
//! `scrape_error` is 1 when the last refresh had an error.

use crate::aci::monitor::{MetricsSpan, MinutePoint};
use crate::aci::{
    AciError, ContainerGroups, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME, TAG_POD_UID,
};
use crate::pacing::TokenBucket;
use crate::units::Timestamp;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How metrics are fetched and cached.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// A group's metrics are fetched at most once per interval (and the
    /// groups listed at most once per interval).
    pub interval: Duration,
    /// The longest a scrape waits for a refresh before serving the cache.
    pub deadline: Duration,
    /// How far back each query reaches (covers Monitor's ingestion lag
    /// and missed refreshes).
    pub window: Duration,
    /// Metrics queries in flight at once.
    pub concurrency: usize,
    /// ARM reads per second for metrics (the list and each group's query).
    pub per_sec: f64,
    /// ARM reads at once before `per_sec` applies.
    pub burst: u32,
}

impl Default for MetricsConfig {
    /// 60 s (Monitor's PT1M grain), 2 s, 10 min, 8 at once, 2 reads/s
    /// (beside the provider's 12 and the logs' 4), 20 at once.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            deadline: Duration::from_secs(2),
            window: Duration::from_secs(600),
            concurrency: 8,
            per_sec: 2.0,
            burst: 20,
        }
    }
}

/// A container's cumulative CPU time, integrated from Monitor's
/// per-minute averages (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCounter {
    /// Start of the first minute counted: the counter's zero.
    pub origin: Timestamp,
    /// End of the last minute counted: the time of the sample.
    pub through: Timestamp,
    /// CPU time in core-nanoseconds.
    pub core_nanos: u64,
    /// The last minute's average, in nanocores.
    pub nano_cores: u64,
}

/// One minute, in milliseconds.
const MINUTE_MS: i64 = 60_000;

impl CpuCounter {
    /// `counter` with `points` (one container's, in time order) added:
    /// each minute with a CPU average that starts at or after
    /// [`CpuCounter::through`] adds `average millicores × 60 s`. `None`
    /// until a minute with data is seen.
    pub fn integrate(counter: Option<CpuCounter>, points: &[MinutePoint]) -> Option<CpuCounter> {
        let mut counter = counter;
        for p in points {
            let Some(millicores) = p.cpu_millicores else {
                continue;
            };
            if counter.is_some_and(|c| p.start < c.through) {
                continue;
            }
            // millicores / 1000 cores × 60 s × 1e9 ns.
            let nano_cores = (millicores * 1e6).round() as u64;
            let added = nano_cores.saturating_mul(60);
            let end = Timestamp(p.start.millis() + MINUTE_MS);
            counter = Some(match counter {
                None => CpuCounter {
                    origin: p.start,
                    through: end,
                    core_nanos: added,
                    nano_cores,
                },
                Some(c) => CpuCounter {
                    origin: c.origin,
                    through: end,
                    core_nanos: c.core_nanos.saturating_add(added),
                    nano_cores,
                },
            });
        }
        counter
    }
}

/// What is known of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerSample {
    pub cpu: Option<CpuCounter>,
    /// The working set of the newest minute counted (bytes).
    pub memory_bytes: Option<u64>,
}

impl ContainerSample {
    /// Fold a fresh query's points in.
    fn update(&mut self, points: &[MinutePoint]) {
        self.cpu = CpuCounter::integrate(self.cpu, points);
        if let Some(c) = self.cpu
            && let Some(m) = points
                .iter()
                .filter(|p| p.start < c.through)
                .filter_map(|p| p.memory_bytes)
                .next_back()
        {
            self.memory_bytes = Some(m.round() as u64);
        }
    }
}

/// One burst pod in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container group.
    pub group: String,
    pub containers: BTreeMap<String, ContainerSample>,
}

/// What a scrape serves: the cache at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub node_name: String,
    pub pods: Vec<PodSample>,
    /// The last refresh had an error (`scrape_error`).
    pub error: bool,
}

#[derive(Debug)]
struct PodEntry {
    sample: PodSample,
    /// When its metrics were last fetched.
    fetched: Option<Instant>,
}

#[derive(Debug, Default)]
struct Cache {
    pods: BTreeMap<(String, String), PodEntry>,
    refreshed: Option<Instant>,
    error: bool,
}

/// The burst pods' resource metrics, cached and refreshed within a read
/// budget of their own.
pub struct ResourceMetrics {
    aci: Arc<dyn ContainerGroups>,
    cluster_id: Arc<str>,
    node_name: String,
    /// Only groups of this `osType` (a node of one OS beside another).
    os_type: Option<String>,
    config: MetricsConfig,
    bucket: Mutex<TokenBucket>,
    cache: Mutex<Cache>,
    refreshing: AtomicBool,
    generation: tokio::sync::watch::Sender<u64>,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl std::fmt::Debug for ResourceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceMetrics")
            .field("node_name", &self.node_name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ResourceMetrics {
    /// Reading the groups of cluster `cluster_id` through `aci` (a client
    /// of the kubelet endpoint's own, not the provider's paced one), for
    /// node `node_name`.
    pub fn new(
        aci: Arc<dyn ContainerGroups>,
        cluster_id: &str,
        node_name: &str,
        config: MetricsConfig,
    ) -> Self {
        let bucket = TokenBucket::new(config.per_sec, config.burst, Instant::now());
        Self {
            aci,
            cluster_id: cluster_id.into(),
            node_name: node_name.to_string(),
            os_type: None,
            config,
            bucket: Mutex::new(bucket),
            cache: Mutex::new(Cache::default()),
            refreshing: AtomicBool::new(false),
            generation: tokio::sync::watch::channel(0).0,
            clock: Arc::new(Timestamp::now_wall),
        }
    }

    /// The same, reporting only container groups of `os_type` (`Linux`,
    /// `Windows`): with `--aci-windows` each virtual node's endpoint reports
    /// its own pods.
    pub fn with_os_type(mut self, os_type: &str) -> Self {
        self.os_type = Some(os_type.to_string());
        self
    }

    /// The same, with `clock` for the wall-clock time queries end at.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> Timestamp + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for one read token (the refresh runs in the background).
    async fn pace(&self) {
        loop {
            let Some(wait) = self.bucket().take(Instant::now()) else {
                return;
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn note(&self, what: &str, e: &AciError) {
        tracing::warn!(error = %e, what, "kubelet metrics: ACI read failed");
        if let AciError::Throttled { retry_after } = e {
            let now = Instant::now();
            self.bucket().throttled(now + *retry_after, now);
        }
    }

    /// One refresh: list this cluster's groups, then fetch the metrics of
    /// every group not fetched within the interval.
    pub async fn refresh(&self) {
        let mut error = false;
        self.pace().await;
        match self.aci.list(&self.cluster_id).await {
            Ok(groups) => {
                let mut listed = BTreeMap::new();
                for g in groups {
                    // Ours (the list filters by the tag; checked as logs.rs
                    // checks it) and provisioned (else Monitor has nothing).
                    let provisioned = matches!(
                        g.properties.provisioning_state.as_deref(),
                        None | Some("Succeeded")
                    ) && g.tags.get(TAG_CLUSTER).map(String::as_str)
                        == Some(&*self.cluster_id)
                        && self
                            .os_type
                            .as_deref()
                            .is_none_or(|os| g.properties.os_type == os);
                    let tag = |k: &str| g.tags.get(k).cloned();
                    if let (true, Some(ns), Some(pod)) =
                        (provisioned, tag(TAG_NAMESPACE), tag(TAG_POD_NAME))
                    {
                        let uid = tag(TAG_POD_UID).unwrap_or_default();
                        listed.insert((ns, pod), (uid, g.name));
                    }
                }
                let mut cache = self.cache();
                cache.pods.retain(|k, e| {
                    listed.get(k).is_some_and(|(uid, group)| {
                        *uid == e.sample.uid && *group == e.sample.group
                    })
                });
                for ((namespace, name), (uid, group)) in listed {
                    cache
                        .pods
                        .entry((namespace.clone(), name.clone()))
                        .or_insert_with(|| PodEntry {
                            sample: PodSample {
                                namespace,
                                name,
                                uid,
                                group,
                                containers: BTreeMap::new(),
                            },
                            fetched: None,
                        });
                }
            }
            Err(e) => {
                self.note("list", &e);
                error = true;
            }
        }
        let due: Vec<((String, String), String)> = {
            let cache = self.cache();
            cache
                .pods
                .iter()
                .filter(|(_, e)| {
                    e.fetched
                        .is_none_or(|t| t.elapsed() >= self.config.interval)
                })
                .map(|(k, e)| (k.clone(), e.sample.group.clone()))
                .collect()
        };
        let span = MetricsSpan::last(self.config.window, (self.clock)());
        use futures::StreamExt as _;
        let results: Vec<_> =
            futures::stream::iter(due.into_iter().map(|(key, group)| async move {
                self.pace().await;
                let result = self.aci.metrics(&group, span).await;
                (key, group, result)
            }))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let now = Instant::now();
        let mut cache = self.cache();
        for (key, group, result) in results {
            match result {
                Ok(metrics) => {
                    if let Some(entry) = cache.pods.get_mut(&key) {
                        entry.fetched = Some(now);
                        for (container, points) in &metrics.containers {
                            entry
                                .sample
                                .containers
                                .entry(container.clone())
                                .or_default()
                                .update(points);
                        }
                    }
                }
                // The group went between the list and the query.
                Err(AciError::NotFound) => {
                    if cache
                        .pods
                        .get(&key)
                        .is_some_and(|e| e.sample.group == group)
                    {
                        cache.pods.remove(&key);
                    }
                }
                Err(e) => {
                    self.note(&group, &e);
                    error = true;
                }
            }
        }
        cache.refreshed = Some(now);
        cache.error = error;
    }

    /// The cache now, without refreshing.
    pub fn cached(&self) -> Snapshot {
        let cache = self.cache();
        Snapshot {
            node_name: self.node_name.clone(),
            pods: cache.pods.values().map(|e| e.sample.clone()).collect(),
            error: cache.error,
        }
    }

    /// What a scrape serves: when the cache is older than the interval a
    /// refresh starts in the background (one at a time) and is waited for
    /// at most [`MetricsConfig::deadline`]; then the cache.
    pub async fn snapshot(self: &Arc<Self>) -> Snapshot {
        let stale = self
            .cache()
            .refreshed
            .is_none_or(|t| t.elapsed() >= self.config.interval);
        let mut done = self.generation.subscribe();
        let seen = *done.borrow_and_update();
        if stale && !self.refreshing.swap(true, Ordering::SeqCst) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                me.refresh().await;
                me.refreshing.store(false, Ordering::SeqCst);
                me.generation.send_modify(|g| *g += 1);
            });
        }
        if self.refreshing.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(self.config.deadline, done.wait_for(|g| *g > seen)).await;
        }
        self.cached()
    }
}

/// A label value in the text format (`\`, `"` and newlines escaped).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(core_nanos: u64) -> f64 {
    core_nanos as f64 / 1e9
}

/// The kubelet's `/metrics/resource` for `snapshot`, in the Prometheus text
/// format (version 0.0.4): the families of the kubelet's
/// `resource_metrics.go` (`[STABLE]` ones with that prefix in their help),
/// each sample but `container_start_time_seconds` and the scrape errors
/// with its millisecond timestamp. Containers without a CPU sample yet,
/// and pods and the node without any, have no samples.
pub fn render_prometheus(snapshot: &Snapshot) -> String {
    struct Family<'a> {
        name: &'a str,
        help: &'a str,
        kind: &'a str,
        samples: Vec<String>,
    }
    let family = |name, help, kind| Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    };
    let mut container_cpu = family(
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    let mut container_memory = family(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
    );
    let mut container_start = family(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
    );
    let mut node_cpu = family(
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    let mut node_memory = family(
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
    );
    let mut pod_cpu = family(
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    let mut pod_memory = family(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
    );
    let error = if snapshot.error { 1 } else { 0 };
    let mut resource_scrape_error = family(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    resource_scrape_error
        .samples
        .push(format!("resource_scrape_error {error}"));
    let mut scrape_error = family(
        "scrape_error",
        "[ALPHA] (Deprecated since 1.29.0) 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    scrape_error.samples.push(format!("scrape_error {error}"));

    let (mut node_nanos, mut node_bytes, mut node_time) = (0u64, 0u64, None::<Timestamp>);
    for pod in &snapshot.pods {
        let pod_labels = format!(
            "namespace=\"{}\",pod=\"{}\"",
            label(&pod.namespace),
            label(&pod.name)
        );
        let (mut pod_nanos, mut pod_bytes, mut pod_time) = (0u64, 0u64, None::<Timestamp>);
        for (name, c) in &pod.containers {
            let Some(cpu) = c.cpu else { continue };
            let labels = format!("container=\"{}\",{pod_labels}", label(name));
            let at = cpu.through.millis();
            container_start.samples.push(format!(
                "container_start_time_seconds{{{labels}}} {}",
                cpu.origin.secs_f64()
            ));
            container_cpu.samples.push(format!(
                "container_cpu_usage_seconds_total{{{labels}}} {} {at}",
                seconds(cpu.core_nanos)
            ));
            if let Some(m) = c.memory_bytes {
                container_memory.samples.push(format!(
                    "container_memory_working_set_bytes{{{labels}}} {m} {at}"
                ));
                pod_bytes = pod_bytes.saturating_add(m);
            }
            pod_nanos = pod_nanos.saturating_add(cpu.core_nanos);
            pod_time = pod_time.max(Some(cpu.through));
        }
        if let Some(t) = pod_time {
            pod_cpu.samples.push(format!(
                "pod_cpu_usage_seconds_total{{{pod_labels}}} {} {}",
                seconds(pod_nanos),
                t.millis()
            ));
            pod_memory.samples.push(format!(
                "pod_memory_working_set_bytes{{{pod_labels}}} {pod_bytes} {}",
                t.millis()
            ));
            node_nanos = node_nanos.saturating_add(pod_nanos);
            node_bytes = node_bytes.saturating_add(pod_bytes);
            node_time = node_time.max(Some(t));
        }
    }
    if let Some(t) = node_time {
        node_cpu.samples.push(format!(
            "node_cpu_usage_seconds_total {} {}",
            seconds(node_nanos),
            t.millis()
        ));
        node_memory.samples.push(format!(
            "node_memory_working_set_bytes {node_bytes} {}",
            t.millis()
        ));
    }
    let mut out = String::new();
    for f in [
        container_cpu,
        container_memory,
        container_start,
        node_cpu,
        node_memory,
        pod_cpu,
        pod_memory,
        resource_scrape_error,
        scrape_error,
    ] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in f.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// `stats/v1alpha1` `Summary` (the fields spillway can fill).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub containers: Vec<ContainerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    pub usage_nano_cores: u64,
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    pub working_set_bytes: u64,
    pub usage_bytes: u64,
}

/// The Summary of `snapshot`: the same figures as [`render_prometheus`],
/// plus the last minute's CPU rate (`usageNanoCores`).
pub fn summary(snapshot: &Snapshot) -> Summary {
    let memory = |time: Timestamp, bytes: u64| MemoryStats {
        time: time.to_rfc3339(),
        working_set_bytes: bytes,
        usage_bytes: bytes,
    };
    let mut node: Option<(CpuStats, u64, Timestamp)> = None;
    let mut pods = Vec::new();
    for pod in &snapshot.pods {
        let mut containers = Vec::new();
        let mut total: Option<(u64, u64, u64, Timestamp, Timestamp)> = None;
        for (name, c) in &pod.containers {
            let Some(cpu) = c.cpu else { continue };
            let bytes = c.memory_bytes.unwrap_or(0);
            containers.push(ContainerStats {
                name: name.clone(),
                start_time: cpu.origin.to_rfc3339(),
                cpu: CpuStats {
                    time: cpu.through.to_rfc3339(),
                    usage_nano_cores: cpu.nano_cores,
                    usage_core_nano_seconds: cpu.core_nanos,
                },
                memory: c.memory_bytes.map(|b| memory(cpu.through, b)),
            });
            total = Some(match total {
                None => (
                    cpu.nano_cores,
                    cpu.core_nanos,
                    bytes,
                    cpu.origin,
                    cpu.through,
                ),
                Some((n, s, b, o, t)) => (
                    n.saturating_add(cpu.nano_cores),
                    s.saturating_add(cpu.core_nanos),
                    b.saturating_add(bytes),
                    o.min(cpu.origin),
                    t.max(cpu.through),
                ),
            });
        }
        let (cpu, mem, start) = match total {
            Some((n, s, b, o, t)) => {
                let cpu = CpuStats {
                    time: t.to_rfc3339(),
                    usage_nano_cores: n,
                    usage_core_nano_seconds: s,
                };
                node = Some(match node.take() {
                    None => (cpu.clone(), b, t),
                    Some((c, nb, nt)) => (
                        CpuStats {
                            time: t.max(nt).to_rfc3339(),
                            usage_nano_cores: c.usage_nano_cores.saturating_add(n),
                            usage_core_nano_seconds: c.usage_core_nano_seconds.saturating_add(s),
                        },
                        nb.saturating_add(b),
                        t.max(nt),
                    ),
                });
                (Some(cpu), Some(memory(t, b)), Some(o.to_rfc3339()))
            }
            None => (None, None, None),
        };
        pods.push(PodStats {
            pod_ref: PodReference {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                uid: pod.uid.clone(),
            },
            start_time: start,
            containers,
            cpu,
            memory: mem,
        });
    }
    Summary {
        node: NodeStats {
            node_name: snapshot.node_name.clone(),
            memory: node.as_ref().map(|(_, b, t)| memory(*t, *b)),
            cpu: node.map(|(c, _, _)| c),
        },
        pods,
    }
}

/// `GET /metrics/resource`.
pub async fn resource_handler(State(metrics): State<Arc<ResourceMetrics>>) -> Response {
    let snapshot = metrics.snapshot().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_prometheus(&snapshot),
    )
        .into_response()
}

/// `GET /stats/summary`.
pub async fn summary_handler(State(metrics): State<Arc<ResourceMetrics>>) -> Response {
    let snapshot = metrics.snapshot().await;
    axum::Json(summary(&snapshot)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::monitor::GroupMetrics;
    use crate::aci::{BoxFuture, ContainerGroup, LogOptions, Usage};
    use std::sync::atomic::AtomicU32;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn point(start: &str, cpu: Option<f64>, memory: Option<f64>) -> MinutePoint {
        MinutePoint {
            start: t(start),
            cpu_millicores: cpu,
            memory_bytes: memory,
        }
    }

    #[test]
    fn cpu_time_is_the_integral_of_the_minute_averages() {
        let first = [
            point("2024-05-14T09:00:00Z", Some(250.0), Some(100.0)),
            point("2024-05-14T09:01:00Z", Some(500.0), Some(200.0)),
            // Not ingested yet.
            point("2024-05-14T09:02:00Z", None, None),
        ];
        let c = CpuCounter::integrate(None, &first).unwrap_or_else(|| panic!("no counter"));
        // 0.25 core × 60 s + 0.5 core × 60 s = 45 core-seconds.
        assert_eq!(c.core_nanos, 45_000_000_000);
        assert_eq!(c.origin, t("2024-05-14T09:00:00Z"));
        assert_eq!(c.through, t("2024-05-14T09:02:00Z"));
        assert_eq!(c.nano_cores, 500_000_000);
        // The next query overlaps: minutes already counted add nothing,
        // 09:02 has arrived, 09:03 has no data, 09:04 is counted.
        let second = [
            point("2024-05-14T09:01:00Z", Some(500.0), Some(200.0)),
            point("2024-05-14T09:02:00Z", Some(1000.0), Some(300.0)),
            point("2024-05-14T09:03:00Z", None, None),
            point("2024-05-14T09:04:00Z", Some(100.0), Some(400.0)),
        ];
        let c2 = CpuCounter::integrate(Some(c), &second).unwrap_or_else(|| panic!("no counter"));
        assert_eq!(
            c2.core_nanos,
            45_000_000_000 + 60_000_000_000 + 6_000_000_000
        );
        assert_eq!(c2.through, t("2024-05-14T09:05:00Z"));
        assert_eq!(c2.origin, c.origin);
        // The same query again changes nothing: the counter never runs ahead.
        assert_eq!(CpuCounter::integrate(Some(c2), &second), Some(c2));
        // No data at all: no counter.
        assert_eq!(
            CpuCounter::integrate(None, &[point("2024-05-14T09:00:00Z", None, Some(1.0))]),
            None
        );
        // Memory is the last counted minute's.
        let mut s = ContainerSample::default();
        s.update(&first);
        assert_eq!(s.memory_bytes, Some(200));
        s.update(&second);
        assert_eq!(s.memory_bytes, Some(400));
    }

    fn snapshot() -> Snapshot {
        let counter = |secs: u64, through: &str| CpuCounter {
            origin: t("2024-05-14T09:00:00Z"),
            through: t(through),
            core_nanos: secs * 1_000_000_000,
            nano_cores: 250_000_000,
        };
        Snapshot {
            node_name: "spillway-aci".into(),
            pods: vec![
                PodSample {
                    namespace: "web".into(),
                    name: "api".into(),
                    uid: "u1".into(),
                    group: "g1".into(),
                    containers: BTreeMap::from([
                        (
                            "app".to_string(),
                            ContainerSample {
                                cpu: Some(counter(45, "2024-05-14T09:02:00Z")),
                                memory_bytes: Some(1024),
                            },
                        ),
                        (
                            "side\"car".to_string(),
                            ContainerSample {
                                cpu: Some(counter(15, "2024-05-14T09:02:00Z")),
                                memory_bytes: Some(512),
                            },
                        ),
                        ("late".to_string(), ContainerSample::default()),
                    ]),
                },
                PodSample {
                    namespace: "web".into(),
                    name: "new".into(),
                    uid: "u2".into(),
                    group: "g2".into(),
                    containers: BTreeMap::new(),
                },
            ],
            error: false,
        }
    }

    #[test]
    fn resource_metrics_are_the_kubelets_families_with_millisecond_timestamps() {
        let text = render_prometheus(&snapshot());
        let at = t("2024-05-14T09:02:00Z").millis();
        for line in [
            format!(
                "container_cpu_usage_seconds_total{{container=\"app\",namespace=\"web\",pod=\"api\"}} 45 {at}"
            ),
            format!(
                "container_cpu_usage_seconds_total{{container=\"side\\\"car\",namespace=\"web\",pod=\"api\"}} 15 {at}"
            ),
            format!(
                "container_memory_working_set_bytes{{container=\"app\",namespace=\"web\",pod=\"api\"}} 1024 {at}"
            ),
            "container_start_time_seconds{container=\"app\",namespace=\"web\",pod=\"api\"} 1715677200"
                .to_string(),
            format!("pod_cpu_usage_seconds_total{{namespace=\"web\",pod=\"api\"}} 60 {at}"),
            format!("pod_memory_working_set_bytes{{namespace=\"web\",pod=\"api\"}} 1536 {at}"),
            format!("node_cpu_usage_seconds_total 60 {at}"),
            format!("node_memory_working_set_bytes 1536 {at}"),
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            "# TYPE node_memory_working_set_bytes gauge".to_string(),
            "scrape_error 0".to_string(),
            "resource_scrape_error 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // No sample for a container without data, nor for a pod without any.
        assert!(!text.contains("late"), "{text}");
        assert!(!text.contains("pod=\"new\""), "{text}");
        // Nothing known: only the scrape errors.
        let empty = render_prometheus(&Snapshot {
            node_name: "n".into(),
            pods: vec![],
            error: true,
        });
        let samples: Vec<&str> = empty.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, vec!["resource_scrape_error 1", "scrape_error 1"]);
    }

    #[test]
    fn the_summary_carries_the_same_figures() {
        let s = summary(&snapshot());
        assert_eq!(s.node.node_name, "spillway-aci");
        let cpu = s.node.cpu.clone().unwrap_or_else(|| panic!("node cpu"));
        assert_eq!(cpu.usage_core_nano_seconds, 60_000_000_000);
        assert_eq!(cpu.usage_nano_cores, 500_000_000);
        assert_eq!(cpu.time, "2024-05-14T09:02:00Z");
        assert_eq!(
            s.node.memory.as_ref().map(|m| m.working_set_bytes),
            Some(1536)
        );
        assert_eq!(s.pods.len(), 2);
        assert_eq!(s.pods[0].pod_ref.uid, "u1");
        assert_eq!(s.pods[0].containers.len(), 2);
        assert_eq!(s.pods[0].containers[0].name, "app");
        assert_eq!(
            s.pods[0].containers[0].cpu.usage_core_nano_seconds,
            45_000_000_000
        );
        assert_eq!(s.pods[1].cpu, None);
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert!(json["pods"][0]["podRef"]["namespace"] == "web", "{json}");
        assert!(
            json["node"]["cpu"]["usageCoreNanoSeconds"] == 60_000_000_000u64,
            "{json}"
        );
    }

    /// Two groups of cluster `c1` (one still provisioning), a third of
    /// another cluster; counts metrics queries; `hang` makes them never answer.
    #[derive(Default)]
    struct Fake {
        lists: AtomicU32,
        queries: AtomicU32,
        hang: AtomicBool,
        throttle: AtomicBool,
    }

    fn tagged(name: &str, cluster: &str, pod: &str, state: &str) -> ContainerGroup {
        let mut g = ContainerGroup {
            name: name.into(),
            ..ContainerGroup::default()
        };
        g.properties.provisioning_state = Some(state.into());
        g.tags = BTreeMap::from([
            (TAG_CLUSTER.to_string(), cluster.to_string()),
            (TAG_NAMESPACE.to_string(), "web".to_string()),
            (TAG_POD_NAME.to_string(), pod.to_string()),
            (TAG_POD_UID.to_string(), format!("uid-{pod}")),
        ]);
        g
    }

    impl ContainerGroups for Fake {
        fn create_or_update<'a>(
            &'a self,
            group: &'a ContainerGroup,
        ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
            Box::pin(async move { Ok(group.clone()) })
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(None) })
        }
        fn list<'a>(
            &'a self,
            cluster_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
            Box::pin(async move {
                self.lists.fetch_add(1, Ordering::SeqCst);
                // The real list filters by cluster; so does this one.
                Ok([
                    tagged("g-a", "c1", "a", "Succeeded"),
                    tagged("g-b", "c1", "b", "Creating"),
                    tagged("g-x", "c2", "x", "Succeeded"),
                ]
                .into_iter()
                .filter(|g| g.tags.get(TAG_CLUSTER).map(String::as_str) == Some(cluster_id))
                .collect())
            })
        }
        fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
            Box::pin(async { Ok(()) })
        }
        fn logs<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: LogOptions,
        ) -> BoxFuture<'a, Result<String, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn metrics<'a>(
            &'a self,
            name: &'a str,
            span: MetricsSpan,
        ) -> BoxFuture<'a, Result<GroupMetrics, AciError>> {
            Box::pin(async move {
                self.queries.fetch_add(1, Ordering::SeqCst);
                if self.hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                if self.throttle.load(Ordering::SeqCst) {
                    return Err(AciError::Throttled {
                        retry_after: Duration::from_secs(30),
                    });
                }
                assert_eq!(name, "g-a");
                // One minute of 500m ending where the span starts.
                Ok(GroupMetrics {
                    containers: BTreeMap::from([(
                        "app".to_string(),
                        vec![MinutePoint {
                            start: span.start,
                            cpu_millicores: Some(500.0),
                            memory_bytes: Some(4096.0),
                        }],
                    )]),
                })
            })
        }
        fn usage<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn exec<'a>(
            &'a self,
            _name: &'a str,
            _container: &'a str,
            _command: &'a str,
            _terminal: crate::aci::TerminalSize,
        ) -> BoxFuture<'a, Result<crate::aci::ExecSession, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_group_is_read_once_per_interval_and_a_hung_arm_never_holds_a_scrape() {
        let fake = Arc::new(Fake::default());
        let config = MetricsConfig::default();
        let metrics = Arc::new(
            ResourceMetrics::new(fake.clone(), "c1", "spillway-aci", config.clone())
                .with_clock(Arc::new(|| Timestamp::from_secs(1_715_677_200))),
        );
        let first = metrics.snapshot().await;
        assert_eq!(
            first.pods.len(),
            1,
            "only c1's provisioned group: {first:?}"
        );
        assert_eq!(first.pods[0].name, "a");
        assert_eq!(first.pods[0].uid, "uid-a");
        let app = first.pods[0].containers["app"];
        assert_eq!(app.cpu.map(|c| c.core_nanos), Some(30_000_000_000));
        assert_eq!(app.memory_bytes, Some(4096));
        // Scrapes within the interval are answered from the cache.
        for _ in 0..5 {
            assert_eq!(metrics.snapshot().await, first);
        }
        assert_eq!(fake.lists.load(Ordering::SeqCst), 1);
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1);
        // After the interval, one more round; ARM then hangs: the scrape
        // waits the deadline and serves the cache.
        fake.hang.store(true, Ordering::SeqCst);
        tokio::time::advance(config.interval).await;
        let started = Instant::now();
        let cached = metrics.snapshot().await;
        assert_eq!(cached, first);
        assert_eq!(started.elapsed(), config.deadline);
        assert_eq!(fake.queries.load(Ordering::SeqCst), 2);
        // The hung round is still running: no second one is started.
        let _ = metrics.snapshot().await;
        assert_eq!(fake.lists.load(Ordering::SeqCst), 2);
        assert_eq!(fake.queries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_query_is_a_scrape_error_and_pauses_the_budget() {
        let fake = Arc::new(Fake::default());
        fake.throttle.store(true, Ordering::SeqCst);
        let config = MetricsConfig::default();
        let metrics = Arc::new(ResourceMetrics::new(
            fake.clone(),
            "c1",
            "spillway-aci",
            config.clone(),
        ));
        let first = metrics.snapshot().await;
        assert!(first.error);
        assert!(
            render_prometheus(&first)
                .lines()
                .any(|l| l == "scrape_error 1")
        );
        // The pod is known, without samples.
        assert_eq!(first.pods.len(), 1);
        assert!(first.pods[0].containers.is_empty());
        // ARM said 30 s: a read right away waits for the pause to end.
        fake.throttle.store(false, Ordering::SeqCst);
        let started = Instant::now();
        metrics.refresh().await;
        assert!(
            started.elapsed() >= Duration::from_secs(29),
            "{:?}",
            started.elapsed()
        );
        assert!(!metrics.cached().error);
        assert_eq!(metrics.cached().pods[0].containers.len(), 1);
    }
}
