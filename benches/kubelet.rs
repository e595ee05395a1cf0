//! The virtual node's kubelet endpoint under load beside the provider's
//! status sync: N burst pods (default 500; env `SPILLWAY_BENCH_PODS`)
//! Running on the ACI emulator (ARM's read bucket, 250 at 25/s), then F
//! concurrent `kubectl logs -f` style followers (default 200;
//! `SPILLWAY_BENCH_FOLLOWERS`) of P pods (default F, one follower each;
//! `SPILLWAY_BENCH_FOLLOWED_PODS` for several followers per pod) and 50
//! `/metrics/resource` scrapes per 15 s, as metrics-server and `kubectl`
//! would send them through the API server.
//!
//! Phases: a baseline window without followers or scrapes (default 30 s;
//! `SPILLWAY_BENCH_WINDOW_SECS`); the followers' start (all at once, each
//! retrying a 429 after its `Retry-After`, as a patient user would:
//! time to the first byte, p50/p99, and the 429s); a loaded window of the
//! same length in which every followed container writes a line every 5 s;
//! then a drain until every follower has every line (bounded).
//!
//! Measured at the emulator: ARM reads per second in each window against
//! the configured read budget (the provider's pacer, plus the log and
//! metrics budgets at their `spillway run` defaults). Measured on the pods:
//! status sync lag, sampled by making a few groups vanish through
//! `POST /_emulator/faults` during each window and timing until their pods
//! turn Failed (the provider's sync and status write), p99, loaded beside
//! baseline. Measured on the followers: each line's delivery time, from
//! its append to its arrival, p50/p99, beside the bound the log budget
//! sets (followers poll at half of `--kubelet-log-qps` × 2 reads/s, one
//! read a poll, so a round of P busy followed pods takes P / qps seconds).
//! Writes `target/spillway-bench/kubelet.json`.
//!
//! The provider, the pacer and the kubelet endpoint run with the defaults of
//! `spillway run` (5 s syncs, 12 reads/s; logs 2 requests/s of two reads,
//! followers polling every 2 s; metrics 2 reads/s); only the emulator's
//! lifecycle is 10× faster and its write bucket larger, so the burst that
//! sets the stage does not take minutes.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::aci::ContainerGroups;
use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::aci::paced::{Paced, PacingConfig};
use spillway::kubelet::logs::{LogBudget, LogReader};
use spillway::kubelet::metrics::{MetricsConfig, ResourceMetrics};
use spillway::provider::{Provider, ProviderConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{PodDeletion, TestApiServer};

const NODE: &str = "spillway-aci";
const NS: &str = "burst";
const CLUSTER: &str = "bench";
/// `/metrics/resource` scrapes per this period (metrics-server's default
/// resolution is 15 s).
const SCRAPE_PERIOD: Duration = Duration::from_secs(15);
const SCRAPES_PER_PERIOD: u32 = 50;
/// `spillway run`'s defaults for the kubelet endpoint's budgets.
const LOG_QPS: f64 = 2.0;
const LOG_BURST: u32 = 10;
/// Each followed container writes a line this often in the loaded window.
const LINE_PERIOD: Duration = Duration::from_secs(5);

struct Scale {
    pods: usize,
    followers: usize,
    followed_pods: usize,
    window: Duration,
    samples: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Scale {
    fn from_env() -> Self {
        let pods = env_or("SPILLWAY_BENCH_PODS", 500usize).max(4);
        let samples = env_or("SPILLWAY_BENCH_SAMPLES", 10usize).clamp(1, pods / 4);
        let followers = env_or("SPILLWAY_BENCH_FOLLOWERS", 200usize);
        // Followed pods and vanished groups never overlap.
        let followed_pods = env_or("SPILLWAY_BENCH_FOLLOWED_PODS", followers)
            .clamp(1, followers.max(1))
            .min(pods - 2 * samples);
        Self {
            pods,
            followers,
            followed_pods,
            window: Duration::from_secs(env_or("SPILLWAY_BENCH_WINDOW_SECS", 30u64).max(2)),
            samples,
        }
    }
}

fn pod_name(i: usize) -> String {
    format!("w-{i:05}")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": pod_name(i), "namespace": NS},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

fn phase(srv: &TestApiServer, name: &str) -> Option<String> {
    srv.get::<Pod>(NS, name)
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
}

/// ARM reads the emulator has seen so far (every request but writes).
fn arm_reads(emu: &EmulatorHandle) -> u64 {
    emu.state
        .counters()
        .requests
        .iter()
        .filter(|(op, _)| !matches!(op.as_str(), "put" | "delete" | "exec"))
        .map(|(_, n)| n)
        .sum()
}

/// The `q` quantile (nearest rank); NaN (`null` in the JSON) when any
/// sample timed out or there is none, so a starved sync or a line never
/// delivered never reads as a good figure.
fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((s.len() as f64) * q).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn p99(samples: &[f64]) -> f64 {
    percentile(samples, 0.99)
}

/// What the followers saw.
#[derive(Default)]
struct Follows {
    /// Seconds from the load's start to each follower's first byte.
    starts: std::sync::Mutex<Vec<f64>>,
    /// When line `tick K` was appended, by K.
    ticks: std::sync::Mutex<Vec<Instant>>,
    /// Seconds from a line's append to its arrival, per follower and line.
    latencies: std::sync::Mutex<Vec<f64>>,
    refused: AtomicU64,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Follows {
    fn started(&self) -> usize {
        locked(&self.starts).len()
    }
    fn starts(&self) -> Vec<f64> {
        locked(&self.starts).clone()
    }
    fn ticks(&self) -> Vec<Instant> {
        locked(&self.ticks).clone()
    }
    /// Record a line appended at `at`; its number.
    fn appended(&self, at: Instant) -> usize {
        let mut t = locked(&self.ticks);
        t.push(at);
        t.len() - 1
    }
    fn delivered(&self) -> usize {
        locked(&self.latencies).len()
    }
    /// The delivery times, a NaN for each of `expected` not delivered.
    fn delivery(&self, expected: usize) -> Vec<f64> {
        let mut d = locked(&self.latencies).clone();
        d.resize(expected.max(d.len()), f64::NAN);
        d
    }
    /// A line arrived: if it is a tick, its delivery time.
    fn arrived(&self, line: &str) {
        let Some(k) = line
            .strip_prefix("tick ")
            .and_then(|k| k.trim().parse::<usize>().ok())
        else {
            return;
        };
        let at = locked(&self.ticks).get(k).copied();
        if let Some(at) = at {
            locked(&self.latencies).push(at.elapsed().as_secs_f64());
        }
    }
}

/// One `kubectl logs -f`: follow `url`, and when refused (429), follow
/// again after its `Retry-After`, as a patient user would.
async fn follow(http: &reqwest::Client, url: &str, follows: &Follows, load_started: Instant) {
    let mut first = true;
    loop {
        let pause = match http.get(url).send().await {
            Ok(mut r) if r.status().is_success() => {
                let mut buf = String::new();
                while let Ok(Some(chunk)) = r.chunk().await {
                    if std::mem::take(&mut first) {
                        locked(&follows.starts).push(load_started.elapsed().as_secs_f64());
                    }
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find('\n') {
                        follows.arrived(&buf[..end]);
                        buf.drain(..=end);
                    }
                }
                Duration::from_secs(1)
            }
            Ok(r) => {
                follows.refused.fetch_add(1, Ordering::Relaxed);
                r.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
            }
            Err(_) => {
                follows.refused.fetch_add(1, Ordering::Relaxed);
                Duration::from_secs(1)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// What one measured window saw.
struct Window {
    lags: Vec<f64>,
    reads_per_s: f64,
    /// Of which container log reads.
    log_reads_per_s: f64,
    throttled: u64,
}

/// Over `window`, make the groups of `victims` vanish one by one through
/// the emulator's admin API, evenly spaced, and time each until its pod is
/// Failed (bounded: a pod not Failed within 120 s counts as NaN).
async fn measure(
    srv: &TestApiServer,
    emu: &EmulatorHandle,
    http: &reqwest::Client,
    victims: &[usize],
    window: Duration,
) -> Window {
    let reads_before = arm_reads(emu);
    let log_reads = || {
        emu.state
            .counters()
            .requests
            .get("logs")
            .copied()
            .unwrap_or(0)
    };
    let log_reads_before = log_reads();
    let throttled_before = emu.state.counters().throttled;
    let started = Instant::now();
    let spacing = window / u32::try_from(victims.len().max(1)).unwrap_or(1);
    let mut pending: Vec<(String, Instant)> = Vec::new();
    let mut lags = Vec::new();
    let mut next = 0;
    loop {
        let now = Instant::now();
        if next < victims.len() && now >= started + spacing * u32::try_from(next).unwrap_or(0) {
            let name = pod_name(victims[next]);
            let group = spillway::aci::translate::group_name_in(CLUSTER, NS, &name);
            let answer = http
                .post(format!("{}/_emulator/faults", emu.url))
                .header("content-type", "application/json")
                .body(json!({ "vanish": [group] }).to_string())
                .send()
                .await
                .unwrap_or_else(|e| panic!("vanish {group}: {e}"));
            assert!(
                answer.status().is_success(),
                "vanish {group}: {}",
                answer.status()
            );
            pending.push((name, Instant::now()));
            next += 1;
        }
        pending.retain(|(name, at)| {
            if phase(srv, name).as_deref() == Some("Failed") {
                lags.push(at.elapsed().as_secs_f64());
                false
            } else if at.elapsed() > Duration::from_secs(120) {
                eprintln!("{name}: not Failed 120 s after its group vanished");
                lags.push(f64::NAN);
                false
            } else {
                true
            }
        });
        if next == victims.len() && pending.is_empty() && started.elapsed() >= window {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Window {
        lags,
        reads_per_s: (arm_reads(emu) - reads_before) as f64 / elapsed,
        log_reads_per_s: (log_reads() - log_reads_before) as f64 / elapsed,
        throttled: emu.state.counters().throttled - throttled_before,
    }
}

async fn run(scale: &Scale) -> serde_json::Value {
    let pods = scale.pods;
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .history_limit(20 * pods.max(100))
        .start()
        .await;
    let emu = Emulator::start(EmulatorConfig {
        speed: 10.0,
        cores_limit: (pods as i64) * 2,
        groups_limit: (pods as i64) * 2,
        page_size: 100,
        // The stage is set fast; the window measures reads, not writes.
        writes_per_sec: 200.0,
        write_burst: 1000,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let cfg = AzureConfig::for_emulator(&emu.url, "bench", "sub-bench", "rg-bench");
    let pacing = PacingConfig {
        writes_per_sec: 100.0,
        write_burst: 500,
        ..PacingConfig::default()
    };
    let read_budget_per_s = pacing.reads_per_sec + 2.0 * LOG_QPS + MetricsConfig::default().per_sec;
    let aci: Arc<dyn ContainerGroups> = Arc::new(Paced::new(
        AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("client: {e}")),
        pacing,
    ));
    let config = ProviderConfig::new(NODE, CLUSTER, "westeurope", "127.0.0.1", 10250);
    let sync_interval = config.sync_interval;
    let provider = Provider::new(srv.client(), aci, config, None);
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let provider_task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });

    // The kubelet endpoint as `spillway run` builds it: its own client
    // (unpaced), held to the log and metrics budgets.
    let endpoint_aci: Arc<dyn ContainerGroups> =
        Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("client: {e}")));
    let logs = Arc::new(LogReader::new(
        endpoint_aci.clone(),
        CLUSTER,
        LogBudget {
            per_sec: LOG_QPS,
            burst: LOG_BURST,
            ..LogBudget::default()
        },
    ));
    let resource = Arc::new(ResourceMetrics::new(
        endpoint_aci,
        CLUSTER,
        NODE,
        MetricsConfig::default(),
    ));
    let app =
        spillway::kubelet::router_with_metrics(logs, resource, spillway::kubelet::Access::Open);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("listen: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("listen: {e}"))
        .port();
    let (kubelet_stop_tx, kubelet_stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(spillway::kubelet::serve(
        listener,
        app,
        spillway::kubelet::ServeLimits::default(),
        async {
            let _ = kubelet_stop_rx.await;
        },
    ));
    let kubelet = format!("http://127.0.0.1:{port}");

    // The burst.
    let api: Api<Pod> = Api::namespaced(srv.client(), NS);
    let started = Instant::now();
    let creates = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &pod(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = creates.into_iter().find(|r| r.is_err()) {
        panic!("creating pods: {e}");
    }
    let deadline = started + Duration::from_secs(1200);
    loop {
        let running = srv
            .list::<Pod>(Some(NS))
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gave up: {running}/{pods} Running after 1200 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{pods} pods Running after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for i in 0..scale.followed_pods {
        let group = spillway::aci::translate::group_name_in(CLUSTER, NS, &pod_name(i));
        emu.state
            .append_logs(&group, "app", &[format!("{} started", pod_name(i))]);
    }

    let http = reqwest::Client::new();
    // Victims come from the end: followers read the first pods.
    let victims: Vec<usize> = (0..2 * scale.samples).map(|k| pods - 1 - k).collect();
    let (baseline_victims, loaded_victims) = victims.split_at(scale.samples);
    let baseline = measure(&srv, &emu, &http, baseline_victims, scale.window).await;
    eprintln!(
        "baseline: sync lag p99 {:.2} s, {:.1} ARM reads/s",
        p99(&baseline.lags),
        baseline.reads_per_s
    );

    // The load: scrapes, then the followers, all at once.
    let mut load = tokio::task::JoinSet::new();
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrape_errors = Arc::new(AtomicU64::new(0));
    {
        let url = format!("{kubelet}/metrics/resource");
        let (http, scrapes, scrape_errors) = (http.clone(), scrapes.clone(), scrape_errors.clone());
        load.spawn(async move {
            let mut tick = tokio::time::interval(SCRAPE_PERIOD / SCRAPES_PER_PERIOD);
            loop {
                tick.tick().await;
                let (http, url, scrapes, scrape_errors) = (
                    http.clone(),
                    url.clone(),
                    scrapes.clone(),
                    scrape_errors.clone(),
                );
                tokio::spawn(async move {
                    let ok = match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    let counter = if ok { &scrapes } else { &scrape_errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }
    let follows = Arc::new(Follows::default());
    let load_started = Instant::now();
    for i in 0..scale.followers {
        let url = format!(
            "{kubelet}/containerLogs/{NS}/{}/app?follow=true",
            pod_name(i % scale.followed_pods)
        );
        let (http, follows) = (http.clone(), follows.clone());
        load.spawn(async move { follow(&http, &url, &follows, load_started).await });
    }
    let start_deadline = load_started + Duration::from_secs(900);
    while follows.started() < scale.followers && Instant::now() < start_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let starts = follows.starts();
    eprintln!(
        "{}/{} followers started in {:.1} s (p50 {:.1} s), {} follows answered 429",
        starts.len(),
        scale.followers,
        load_started.elapsed().as_secs_f64(),
        percentile(&starts, 0.5),
        follows.refused.load(Ordering::Relaxed),
    );

    // The loaded window: every followed container writes a line every
    // LINE_PERIOD while the sync lag is sampled.
    let writer = {
        let (emu_state, follows) = (emu.state.clone(), follows.clone());
        let groups: Vec<String> = (0..scale.followed_pods)
            .map(|i| spillway::aci::translate::group_name_in(CLUSTER, NS, &pod_name(i)))
            .collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LINE_PERIOD);
            loop {
                tick.tick().await;
                let k = follows.appended(Instant::now());
                for g in &groups {
                    emu_state.append_logs(g, "app", &[format!("tick {k}")]);
                }
            }
        })
    };
    let loaded = measure(&srv, &emu, &http, loaded_victims, scale.window).await;
    writer.abort();
    let lines_appended = follows.ticks().len();
    let expected = lines_appended * scale.followers;
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    while follows.delivered() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = follows.delivery(expected);
    load.abort_all();
    let refused = follows.refused.load(Ordering::Relaxed);
    // The bound the budget sets on one round of busy followed pods: they
    // poll at LOG_QPS reads/s together (half of 2 × LOG_QPS).
    let round_bound_s = (scale.followed_pods as f64 / LOG_QPS).max(2.0);
    eprintln!(
        "loaded: sync lag p99 {:.2} s, {:.1} ARM reads/s, lines delivered {}/{} p50 {:.1} s p99 {:.1} s (a round of the followed pods at the log budget: {:.0} s), {} follows answered 429, {} scrapes ({} failed)",
        p99(&loaded.lags),
        loaded.reads_per_s,
        follows.delivered(),
        expected,
        percentile(&delivery, 0.5),
        percentile(&delivery, 0.99),
        round_bound_s,
        refused,
        scrapes.load(Ordering::Relaxed),
        scrape_errors.load(Ordering::Relaxed),
    );

    let _ = kubelet_stop_tx.send(());
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), provider_task).await;
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    json!({
        "pods": pods,
        "window_s": scale.window.as_secs(),
        "followers": scale.followers,
        "followed_pods": scale.followed_pods,
        "followers_started": starts.len(),
        "follow_start_p50_s": round(percentile(&starts, 0.5)),
        "follow_start_p99_s": round(percentile(&starts, 0.99)),
        "follows_refused": refused,
        "log_lines_appended": expected,
        "log_lines_delivered": follows.delivered(),
        "log_delivery_p50_s": round(percentile(&delivery, 0.5)),
        "log_delivery_p99_s": round(percentile(&delivery, 0.99)),
        "log_round_bound_s": round(round_bound_s),
        "scrapes": scrapes.load(Ordering::Relaxed),
        "scrape_errors": scrape_errors.load(Ordering::Relaxed),
        "arm_reads_per_s": round(loaded.reads_per_s),
        "log_reads_per_s": round(loaded.log_reads_per_s),
        "baseline_arm_reads_per_s": round(baseline.reads_per_s),
        "read_budget_per_s": read_budget_per_s,
        "arm_throttled": loaded.throttled,
        "sync_interval_s": sync_interval.as_secs_f64(),
        "sync_lag_samples": loaded.lags.len(),
        "sync_lag_p99_s": round(p99(&loaded.lags)),
        "baseline_sync_lag_p99_s": round(p99(&baseline.lags)),
    })
}

fn main() {
    let scale = Scale::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let out = runtime.block_on(run(&scale));
    println!("{out:#}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    let path = dir.join("kubelet.json");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, format!("{out:#}\n"))) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
