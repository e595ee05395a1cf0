//! Readiness that is checked: the leader runs the `startupProbe` and
//! `readinessProbe` of burst pods' containers itself, as the kubelet's
//! prober would, and the pod's `ContainersReady`/`Ready` conditions and
//! `containerStatuses[].ready`/`started` come from the results.
//!
//! Owns: turning a pod's probes into [`ProbeSpec`]s (defaults and port
//! names resolved as the kubelet does), the per-probe state machine
//! ([`Worker`], thresholds, startup gating, initial delay: like
//! `pkg/kubelet/prober/worker.go`), running probes ([`run_action`]: httpGet
//! and tcpSocket from spillway's own network position), one task per
//! running pod ([`Prober`]; a cap on probes in flight, every probe bounded
//! by its `timeoutSeconds`) and merging the results into the status the
//! provider writes ([`merge`]).
//!
//! Not run, with a condition message saying so (the pod is ready when
//! running, as before): `exec` (ACI cannot be entered from outside to run a
//! probe command; ACI itself runs exec readiness probes it was given) and
//! `grpc` (spillway's crate graph has no HTTP/2 client). A pod without a pod
//! IP cannot be reached and is treated the same way. Liveness is ACI's own
//! (see `crate::aci::translate`).
//!
//! Must not: write to the API server (the provider's pod loop writes the
//! merged status, promptly after a worker's result flips: [`Prober`] sends
//! the pod on its channel) or decide anything beyond readiness.

use crate::metrics::Metrics;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

// Defaults of `core/v1` Probe (`pkg/apis/core/v1/defaults.go`, SetDefaults_Probe).
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// `pkg/probe/http/request.go`: the kubelet's User-Agent is
/// `kube-probe/<major>.<minor>` of its version; spillway speaks for a 1.33 node.
pub const USER_AGENT: &str = "kube-probe/1.33";

/// `pkg/probe/http/http.go`: at most 10 redirects are followed.
const MAX_REDIRECTS: usize = 10;

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Readiness,
    Startup,
}

impl ProbeKind {
    /// The metric label and the spec field's stem.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }

    fn field(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }
}

/// `httpGet.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// Without certificate verification, as the kubelet does.
    Https,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    HttpGet {
        scheme: Scheme,
        /// `httpGet.host`; the pod IP when unset.
        host: Option<String>,
        /// Path (and query) as given, `/` when empty.
        path: String,
        port: u16,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        /// `tcpSocket.host`; the pod IP when unset.
        host: Option<String>,
        port: u16,
    },
    /// A probe spillway can express but that always fails, as the
    /// kubelet's does (a port name the container does not declare).
    Broken { message: String },
    /// Not run by spillway (`exec`, `grpc`): why, for the condition message.
    NotRun { note: String },
}

/// One probe with the kubelet's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn seconds(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(min)).unwrap_or(0))
}

fn count(v: Option<i32>, default: i32) -> u32 {
    u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1)
}

/// `pkg/kubelet/prober/prober.go` (`probe.ResolveContainerPort`): a number,
/// or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, c: &k8s::Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port number: {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok().filter(|p| *p > 0))
            .ok_or_else(|| format!("couldn't find port: {name} in container {}", c.name)),
    }
}

impl ProbeSpec {
    /// The probe `p` of container `c`, as spillway runs it.
    pub fn new(kind: ProbeKind, p: &k8s::Probe, c: &k8s::Container) -> Self {
        let field = format!("{}.{}", c.name, kind.field());
        let action = if let Some(h) = &p.http_get {
            match resolve_port(&h.port, c) {
                Ok(port) => Action::HttpGet {
                    scheme: if h.scheme.as_deref() == Some("HTTPS") {
                        Scheme::Https
                    } else {
                        Scheme::Http
                    },
                    host: h.host.clone().filter(|h| !h.is_empty()),
                    path: h.path.clone().filter(|p| !p.is_empty()).unwrap_or_default(),
                    port,
                    headers: h
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|hh| (hh.name.clone(), hh.value.clone()))
                        .collect(),
                },
                Err(message) => Action::Broken { message },
            }
        } else if let Some(t) = &p.tcp_socket {
            match resolve_port(&t.port, c) {
                Ok(port) => Action::TcpSocket {
                    host: t.host.clone().filter(|h| !h.is_empty()),
                    port,
                },
                Err(message) => Action::Broken { message },
            }
        } else if p.exec.is_some() {
            Action::NotRun {
                note: format!(
                    "the exec {field} is not run (spillway cannot run commands in an ACI container to probe it); ready when running"
                ),
            }
        } else if p.grpc.is_some() {
            Action::NotRun {
                note: format!(
                    "the grpc {field} is not run (spillway has no gRPC client); ready when running"
                ),
            }
        } else {
            Action::NotRun {
                note: format!("{field} has no handler; ready when running"),
            }
        };
        ProbeSpec {
            action,
            initial_delay: seconds(p.initial_delay_seconds, 0, 0),
            period: seconds(p.period_seconds, DEFAULT_PERIOD_SECONDS, 1),
            timeout: seconds(p.timeout_seconds, DEFAULT_TIMEOUT_SECONDS, 1),
            success_threshold: count(p.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            failure_threshold: count(p.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }

    /// Whether spillway runs it.
    pub fn runs(&self) -> bool {
        !matches!(self.action, Action::NotRun { .. })
    }
}

/// The probe state machine of one container's readiness or startup probe,
/// as `pkg/kubelet/prober/worker.go` (`doProbe`) keeps it: a result changes
/// only after `successThreshold` successes or `failureThreshold` failures
/// in a row; readiness starts as failure (not ready until the first
/// success), startup as unknown (not started); readiness is not probed
/// before the startup probe succeeded, startup no more after; neither before
/// `initialDelaySeconds` since the container started. Pure: `now` is handed in.
#[derive(Debug, Clone)]
pub struct Worker {
    kind: ProbeKind,
    spec: ProbeSpec,
    /// What the results manager holds: `None` = unknown.
    result: Option<bool>,
    last: Option<bool>,
    run: u32,
    next: Instant,
}

impl Worker {
    /// A worker whose first probe is due at `now` (the kubelet probes once
    /// at once, then on every period tick).
    pub fn new(kind: ProbeKind, spec: ProbeSpec, now: Instant) -> Self {
        Self {
            kind,
            result: match kind {
                ProbeKind::Readiness => Some(false),
                ProbeKind::Startup => None,
            },
            spec,
            last: None,
            run: 0,
            next: now,
        }
    }

    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// The published result: `Some(true)` ready / started.
    pub fn result(&self) -> Option<bool> {
        self.result
    }

    /// When the worker's next tick is.
    pub fn next_tick(&self) -> Instant {
        self.next
    }

    /// Take the tick due at `now` (the next one is a period later, as the
    /// kubelet's ticker): whether to probe on it. `running_since` is when
    /// the container started; `started` whether its startup probe (if any)
    /// succeeded.
    pub fn tick(&mut self, now: Instant, running_since: Instant, started: bool) -> bool {
        if now < self.next {
            return false;
        }
        while self.next <= now {
            self.next += self.spec.period;
        }
        if now.saturating_duration_since(running_since) < self.spec.initial_delay {
            return false;
        }
        match self.kind {
            // Stop probing for startup once the container has started.
            ProbeKind::Startup => self.result != Some(true),
            // Other probes wait until the container has started.
            ProbeKind::Readiness => started,
        }
    }

    /// Record one probe's outcome; true when the published result changed.
    pub fn record(&mut self, ok: bool) -> bool {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.spec.success_threshold
        } else {
            self.spec.failure_threshold
        };
        if self.run < threshold {
            return false;
        }
        let changed = self.result != Some(ok);
        self.result = Some(ok);
        changed
    }
}

/// What the probes say about one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerReadiness {
    /// Its startup probe succeeded (or it has none spillway runs).
    pub started: bool,
    /// Started, and its readiness probe succeeded (or it has none spillway runs).
    pub ready: bool,
}

/// The probe results of one pod, by container name.
pub type PodReadiness = BTreeMap<String, ContainerReadiness>;

/// The probes of one container, as they apply to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub startup: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
}

impl ContainerPlan {
    fn runs(&self) -> bool {
        self.startup.as_ref().is_some_and(ProbeSpec::runs)
            || self.readiness.as_ref().is_some_and(ProbeSpec::runs)
    }

    fn notes(&self) -> impl Iterator<Item = &str> {
        [&self.startup, &self.readiness]
            .into_iter()
            .flatten()
            .filter_map(|s| match &s.action {
                Action::NotRun { note } => Some(note.as_str()),
                _ => None,
            })
    }
}

/// The containers of `pod` with a startup or readiness probe.
pub fn plan(pod: &k8s::Pod) -> Vec<ContainerPlan> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.startup_probe.is_some() || c.readiness_probe.is_some())
        .map(|c| ContainerPlan {
            name: c.name.clone(),
            startup: c
                .startup_probe
                .as_ref()
                .map(|p| ProbeSpec::new(ProbeKind::Startup, p, c)),
            readiness: c
                .readiness_probe
                .as_ref()
                .map(|p| ProbeSpec::new(ProbeKind::Readiness, p, c)),
        })
        .collect()
}

const NO_POD_IP: &str = "spillway cannot probe it: the pod has no IP (its container group has none: declare a containerPort for a public IP, or place it in a subnet); ready when running";

/// Patch `desired` (the status mapped from the pod's group, stamped against
/// `current`, or `current` itself when only the probes changed) with the
/// probe results: for containers with a probe spillway
/// runs, `started`/`ready` come from `probed`. Before a worker's first
/// round (a new leader, a restarted spillway) a container keeps what
/// `current` says of the same container instance (same start time), so a
/// takeover does not flap Endpoints; a new container is not started, not
/// ready. Containers without such a probe stay ready when running. Then
/// `ContainersReady`/`Ready` follow the containers (messages as the
/// kubelet's `pkg/kubelet/status/generate.go`, plus what was not probed
/// and why), with transition times re-stamped. A pod without probes, or not
/// Running, is left alone.
pub fn merge(
    pod: &k8s::Pod,
    current: Option<&k8s::PodStatus>,
    desired: &mut k8s::PodStatus,
    probed: Option<&PodReadiness>,
    now: &Time,
) {
    let plans = plan(pod);
    if plans.is_empty() || desired.phase.as_deref() != Some("Running") {
        return;
    }
    let reachable = desired.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty());
    let mut notes: Vec<String> = Vec::new();
    for p in &plans {
        if !reachable && p.runs() {
            notes.push(format!("container {}: {NO_POD_IP}", p.name));
        }
        notes.extend(p.notes().map(|n| format!("container {}: {n}", p.name)));
        let Some(cs) = desired
            .container_statuses
            .iter_mut()
            .flatten()
            .find(|cs| cs.name == p.name)
        else {
            continue;
        };
        let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
        if !running || !reachable {
            continue;
        }
        let result = probed.and_then(|r| r.get(&p.name)).copied().or_else(|| {
            let started_at = |c: &k8s::ContainerStatus| {
                c.state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .map(|r| r.started_at.clone())
            };
            let was = current
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == p.name))
                .filter(|c| started_at(c).is_some() && started_at(c) == started_at(cs))?;
            Some(ContainerReadiness {
                started: was.started.unwrap_or(false),
                ready: was.ready,
            })
        });
        let started = if p.startup.as_ref().is_some_and(ProbeSpec::runs) {
            result.is_some_and(|r| r.started)
        } else {
            true
        };
        let ready = if p.readiness.as_ref().is_some_and(ProbeSpec::runs) {
            started && result.is_some_and(|r| r.ready)
        } else {
            started
        };
        cs.started = Some(started);
        cs.ready = ready;
    }
    let statuses = desired.container_statuses.as_deref().unwrap_or_default();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let ready = !statuses.is_empty() && unready.is_empty();
    let mut message = (!ready).then(|| {
        // Go's %s of a []string.
        format!("containers with unready status: [{}]", unready.join(" "))
    });
    if !notes.is_empty() {
        let joined = notes.join("; ");
        message = Some(match message {
            Some(m) => format!("{m}; {joined}"),
            None => joined,
        });
    }
    for c in desired.conditions.iter_mut().flatten() {
        if c.type_ != "ContainersReady" && c.type_ != "Ready" {
            continue;
        }
        c.status = if ready { "True" } else { "False" }.into();
        c.reason = (!ready).then(|| "ContainersNotReady".to_string());
        c.message = message.clone();
        c.last_transition_time = current
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
            })
            .and_then(|o| o.last_transition_time.clone())
            .or_else(|| Some(now.clone()));
    }
}

/// A pod a worker probes, as the provider names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What a pod's worker is started with; a different target restarts it
/// (a new IP, a restarted container: a new container starts not ready).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    ip: String,
    /// Running containers with probes spillway runs, and when each started.
    containers: Vec<(ContainerPlan, Option<Time>)>,
}

/// Why a probe did not succeed, or what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
}

impl Outcome {
    fn fail(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

/// The HTTP client of httpGet probes, configured as the kubelet's
/// (`pkg/probe/http/http.go`): no certificate verification, no proxy, no
/// kept-alive connections, redirects followed to the same host only (a
/// redirect elsewhere is not followed and its 3xx answer counts as success,
/// the kubelet's "Warning"), at most 10.
pub fn http_client() -> Result<reqwest::Client, String> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().and_then(|u| u.host_str());
        if attempt.url().host_str() != first {
            attempt.stop()
        } else if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("stopped after {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(redirects)
        .build()
        .map_err(|e| format!("probe HTTP client: {e}"))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Run `action` once against pod IP `ip`, bounded by `timeout`.
pub async fn run_action(
    http: &Result<reqwest::Client, String>,
    action: &Action,
    ip: &str,
    timeout: Duration,
) -> Outcome {
    match tokio::time::timeout(timeout, run_unbounded(http, action, ip, timeout)).await {
        Ok(o) => o,
        Err(_) => Outcome::fail(format!("probe timed out after {timeout:?}")),
    }
}

async fn run_unbounded(
    http: &Result<reqwest::Client, String>,
    action: &Action,
    ip: &str,
    timeout: Duration,
) -> Outcome {
    match action {
        Action::HttpGet {
            scheme,
            host,
            path,
            port,
            headers,
        } => {
            let client = match http {
                Ok(c) => c,
                Err(e) => return Outcome::fail(e.clone()),
            };
            let scheme = match scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            let target = host_port(host.as_deref().unwrap_or(ip), *port);
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let url = match reqwest::Url::parse(&format!("{scheme}://{target}{path}")) {
                Ok(u) => u,
                Err(e) => return Outcome::fail(format!("invalid probe URL: {e}")),
            };
            // `pkg/probe/http/request.go`: the kubelet's User-Agent and
            // `Accept: */*` unless the probe sets them (an empty Accept
            // removes it); a Host header names the virtual host.
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in headers {
                let (Ok(n), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                    reqwest::header::HeaderValue::from_str(value),
                ) else {
                    return Outcome::fail(format!("invalid probe header {name:?}"));
                };
                map.append(n, v);
            }
            if !map.contains_key(reqwest::header::USER_AGENT) {
                map.insert(
                    reqwest::header::USER_AGENT,
                    reqwest::header::HeaderValue::from_static(USER_AGENT),
                );
            }
            match map.get(reqwest::header::ACCEPT) {
                None => {
                    map.insert(
                        reqwest::header::ACCEPT,
                        reqwest::header::HeaderValue::from_static("*/*"),
                    );
                }
                Some(v) if v.is_empty() => {
                    map.remove(reqwest::header::ACCEPT);
                }
                Some(_) => {}
            }
            let answer = client
                .get(url.clone())
                .headers(map)
                .timeout(timeout)
                .send()
                .await;
            match answer {
                Ok(res) => {
                    let code = res.status().as_u16();
                    // `pkg/probe/http/http.go`: 200 ≤ status < 400 is
                    // success (3xx: a redirect not followed, "Warning").
                    if (200..400).contains(&code) {
                        Outcome {
                            ok: true,
                            message: format!("HTTP probe of {url} answered {code}"),
                        }
                    } else {
                        Outcome::fail(format!("HTTP probe failed with statuscode: {code}"))
                    }
                }
                Err(e) => Outcome::fail(format!("Get \"{url}\": {}", error_chain(&e))),
            }
        }
        Action::TcpSocket { host, port } => {
            let target = host_port(host.as_deref().unwrap_or(ip), *port);
            match tokio::net::TcpStream::connect(target.as_str()).await {
                Ok(_) => Outcome {
                    ok: true,
                    message: format!("TCP probe of {target} connected"),
                },
                Err(e) => Outcome::fail(format!("dial tcp {target}: {e}")),
            }
        }
        Action::Broken { message } => Outcome::fail(message.clone()),
        Action::NotRun { note } => Outcome {
            ok: true,
            message: note.clone(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What the workers share.
struct Context {
    http: Result<reqwest::Client, String>,
    /// Probes in flight, across pods.
    limit: Semaphore,
    metrics: Option<Arc<Metrics>>,
    results: Mutex<HashMap<String, PodReadiness>>,
    changed: mpsc::Sender<PodRef>,
}

/// Counts a live worker in `spillway_probe_workers` until its task's future
/// is dropped (ended, or aborted).
struct Live(Option<Arc<Metrics>>);

impl Live {
    fn new(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.probe_workers.inc();
        }
        Self(metrics)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.probe_workers.dec();
        }
    }
}

/// The probe workers of the pods on the node: one task per running pod
/// with probes spillway runs, started and stopped by the provider's pod loop
/// ([`Prober::track`], [`Prober::stop`], [`Prober::retain`]). Dropping it
/// (lost leadership) aborts every worker.
pub struct Prober {
    ctx: Arc<Context>,
    tasks: JoinSet<()>,
    workers: HashMap<String, (Target, AbortHandle)>,
}

impl Prober {
    /// At most `max_in_flight` probes at once; a pod whose result flipped is
    /// sent on `changed`.
    pub fn new(
        max_in_flight: usize,
        metrics: Option<Arc<Metrics>>,
        changed: mpsc::Sender<PodRef>,
    ) -> Self {
        Self {
            ctx: Arc::new(Context {
                http: http_client(),
                limit: Semaphore::new(max_in_flight.max(1)),
                metrics,
                results: Mutex::new(HashMap::new()),
                changed,
            }),
            tasks: JoinSet::new(),
            workers: HashMap::new(),
        }
    }

    /// The latest results of pod `uid` (none before its first worker ran).
    pub fn readiness(&self, uid: &str) -> Option<PodReadiness> {
        self.ctx
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// Pods with a worker.
    pub fn pods(&self) -> usize {
        self.workers.len()
    }

    /// Start, keep or restart the worker of `pod` whose status (as mapped
    /// from its group) is `status`; stop it when the pod is not running,
    /// has no pod IP, or no running container has a probe spillway runs.
    pub fn track(&mut self, pod: &k8s::Pod, status: &k8s::PodStatus) {
        self.reap();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(target) = target(pod, status) else {
            self.stop(&uid);
            return;
        };
        if self.workers.get(&uid).is_some_and(|(t, _)| *t == target) {
            return;
        }
        self.stop(&uid);
        let who = PodRef {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
        };
        let ctx = self.ctx.clone();
        let handle = self
            .tasks
            .spawn(probe_pod(ctx, who, target.clone(), Instant::now()));
        self.workers.insert(uid, (target, handle));
    }

    /// Stop pod `uid`'s worker and forget its results.
    pub fn stop(&mut self, uid: &str) {
        if let Some((_, handle)) = self.workers.remove(uid) {
            handle.abort();
        }
        self.ctx
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Stop the workers of pods not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !keep(uid))
            .cloned()
            .collect();
        for uid in gone {
            self.stop(&uid);
        }
        self.reap();
    }

    /// Forget tasks that ended (aborted ones included).
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// What pod `pod` with status `status` needs probed, if anything.
fn target(pod: &k8s::Pod, status: &k8s::PodStatus) -> Option<Target> {
    if pod.metadata.deletion_timestamp.is_some() || status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let containers: Vec<(ContainerPlan, Option<Time>)> = plan(pod)
        .into_iter()
        .filter(ContainerPlan::runs)
        .filter_map(|p| {
            let running = status
                .container_statuses
                .iter()
                .flatten()
                .find(|cs| cs.name == p.name)
                .and_then(|cs| cs.state.as_ref())
                .and_then(|s| s.running.as_ref())?;
            Some((p, running.started_at.clone()))
        })
        .collect();
    (!containers.is_empty()).then_some(Target { ip, containers })
}

/// When a container that started at `started_at` (wall clock) started, on
/// the monotonic clock; `fallback` when unknown or in the future.
fn running_since(started_at: Option<&Time>, fallback: Instant) -> Instant {
    let Some(t) = started_at else {
        return fallback;
    };
    let ago = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
    match Duration::try_from(ago) {
        Ok(ago) => Instant::now().checked_sub(ago).unwrap_or(fallback),
        Err(_) => fallback,
    }
}

struct ContainerWorkers {
    name: String,
    since: Instant,
    startup: Option<Worker>,
    readiness: Option<Worker>,
}

impl ContainerWorkers {
    fn readiness(&self) -> ContainerReadiness {
        let started = self
            .startup
            .as_ref()
            .is_none_or(|w| w.result() == Some(true));
        let ready = started
            && self
                .readiness
                .as_ref()
                .is_none_or(|w| w.result() == Some(true));
        ContainerReadiness { started, ready }
    }
}

/// One pod's worker: every due probe of its containers on each tick,
/// results published, the pod sent on `changed` when they flip. Runs until
/// aborted.
async fn probe_pod(ctx: Arc<Context>, who: PodRef, target: Target, start: Instant) {
    let _live = Live::new(ctx.metrics.clone());
    let mut containers: Vec<ContainerWorkers> = target
        .containers
        .iter()
        .map(|(p, started_at)| ContainerWorkers {
            name: p.name.clone(),
            since: running_since(started_at.as_ref(), start),
            startup: p
                .startup
                .clone()
                .filter(ProbeSpec::runs)
                .map(|s| Worker::new(ProbeKind::Startup, s, start)),
            readiness: p
                .readiness
                .clone()
                .filter(ProbeSpec::runs)
                .map(|s| Worker::new(ProbeKind::Readiness, s, start)),
        })
        .collect();
    let snapshot = |cs: &[ContainerWorkers]| -> PodReadiness {
        cs.iter().map(|c| (c.name.clone(), c.readiness())).collect()
    };
    // Published after the first round (probes due at once), not before:
    // until then the pod's status keeps what it says (see [`merge`]).
    let mut published: Option<PodReadiness> = None;
    loop {
        let now = Instant::now();
        let mut due: Vec<(usize, ProbeKind)> = Vec::new();
        for (i, c) in containers.iter_mut().enumerate() {
            let started = c.readiness().started;
            if let Some(w) = &mut c.startup
                && w.tick(now, c.since, started)
            {
                due.push((i, ProbeKind::Startup));
            }
            if let Some(w) = &mut c.readiness
                && w.tick(now, c.since, started)
            {
                due.push((i, ProbeKind::Readiness));
            }
        }
        let runs = due.iter().map(|(i, kind)| {
            let c = &containers[*i];
            let w = match kind {
                ProbeKind::Startup => c.startup.as_ref(),
                ProbeKind::Readiness => c.readiness.as_ref(),
            };
            let spec = w.map(|w| w.spec().clone());
            let ctx = ctx.clone();
            let ip = target.ip.clone();
            async move {
                let spec = spec?;
                let _permit = ctx.limit.acquire().await.ok()?;
                let began = Instant::now();
                let outcome = run_action(&ctx.http, &spec.action, &ip, spec.timeout).await;
                if let Some(m) = &ctx.metrics {
                    let result = if outcome.ok { "success" } else { "failure" };
                    m.probe_results
                        .with_label_values(&[kind.as_str(), result])
                        .inc();
                    m.probe_duration
                        .with_label_values(&[kind.as_str()])
                        .observe(began.elapsed().as_secs_f64());
                }
                Some(outcome)
            }
        });
        let outcomes = futures::future::join_all(runs).await;
        for ((i, kind), outcome) in due.into_iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            let c = &mut containers[i];
            let w = match kind {
                ProbeKind::Startup => c.startup.as_mut(),
                ProbeKind::Readiness => c.readiness.as_mut(),
            };
            if let Some(w) = w
                && w.record(outcome.ok)
            {
                tracing::info!(
                    pod = %format!("{}/{}", who.namespace, who.name),
                    container = %c.name,
                    probe = kind.as_str(),
                    ok = outcome.ok,
                    message = %outcome.message,
                    "probe result changed"
                );
            }
        }
        let now_state = snapshot(&containers);
        if published.as_ref() != Some(&now_state) {
            ctx.results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(who.uid.clone(), now_state.clone());
            published = Some(now_state);
            // A full channel is fine: the next sync merges the results too.
            let _ = ctx.changed.try_send(who.clone());
        }
        let next = containers
            .iter()
            .flat_map(|c| [c.startup.as_ref(), c.readiness.as_ref()])
            .flatten()
            .map(Worker::next_tick)
            .min();
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests;
