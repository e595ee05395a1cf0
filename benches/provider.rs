//! The embedded provider under a burst: N pods (default 1,000; env
//! `SPILLWAY_BENCH_PODS`) bound to the virtual node at once, against the
//! in-process test API server and the ACI emulator with ARM's throttling
//! limits (200 writes refilled at 10/s, 250 reads at 25/s) and quotas large
//! enough for the burst. Measures seconds until every pod is Running,
//! duplicate groups, leaked groups and peak RSS. Writes
//! `target/spillway-bench/provider.json`.
//!
//! The emulator runs ACI's lifecycle 10× faster than real time (5 s of
//! Accepted + Creating → 0.5 s); the limit is ARM's write budget, so the
//! figure is close to what a real burst of this size needs.

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::aci::ContainerGroups;
use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig};
use spillway::aci::paced::{Paced, PacingConfig};
use spillway::provider::{Provider, ProviderConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{PodDeletion, TestApiServer};

const NODE: &str = "spillway-aci";
const NS: &str = "burst";

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("w-{i:05}"), "namespace": NS},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

async fn run(pods: usize) -> serde_json::Value {
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
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let cfg = AzureConfig::for_emulator(&emu.url, "bench", "sub-bench", "rg-bench");
    let client = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("client: {e}"));
    // Just under ARM's buckets.
    let pacing = PacingConfig {
        writes_per_sec: 9.0,
        write_burst: 180,
        reads_per_sec: 22.0,
        read_burst: 220,
        ..PacingConfig::default()
    };
    let aci: Arc<dyn ContainerGroups> = Arc::new(Paced::new(client, pacing));
    let mut config = ProviderConfig::new(NODE, "bench", "westeurope", "10.0.0.1", 10250);
    config.sync_interval = Duration::from_secs(2);
    config.max_gets_per_sync = 40;
    let provider = Provider::new(srv.client(), aci, config, None);
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });

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
    let mut last_report = Instant::now();
    let seconds = loop {
        let running = srv
            .list::<Pod>(Some(NS))
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == pods {
            break started.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            eprintln!("gave up: {running}/{pods} Running");
            break f64::NAN;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "{:>6.1}s: {running}/{pods} Running",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

    let counters = emu.state.counters();
    let duplicates: u64 = counters
        .creates_by_name
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    let uids: BTreeSet<String> = srv
        .list::<Pod>(Some(NS))
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    let snapshot = emu.state.snapshot();
    let leaked = snapshot
        .iter()
        .filter(|g| {
            g.tags
                .get(spillway::aci::TAG_POD_UID)
                .is_none_or(|u| !uids.contains(u))
        })
        .count();
    json!({
        "pods": pods,
        "seconds_to_all_running": seconds,
        "duplicates": duplicates,
        "leaked": leaked,
        "groups": snapshot.len(),
        "aci_requests": counters.requests,
        "aci_throttled": counters.throttled,
        "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
    })
}

use futures::StreamExt as _;

fn main() {
    let pods = std::env::var("SPILLWAY_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1000);
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
    let out = runtime.block_on(run(pods));
    println!("{out:#}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    let path = dir.join("provider.json");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, format!("{out:#}\n"))) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
