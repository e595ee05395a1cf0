//! Extender bench: `/filter` with 5,000 node names through the real router
//! (`oneshot`), beside a parse-only echo handler over the same bodies in the
//! same run, so the ratio shows what spillway adds on top of reading the
//! request. Writes `target/spillway-bench/extender.json`.
//!
//! `cargo bench --bench extender` (release). Env: `SPILLWAY_BENCH_ITERS` (default 2000).

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use spillway::cluster::build::{node, pod};
use spillway::cluster::{ClusterConfig, ClusterView};
use spillway::extender::wire::{ExtenderArgs, ExtenderFilterResult};
use spillway::extender::{AppState, DEFAULT_MAX_BODY_BYTES, PolicySource, app, decode, read_body};
use spillway::metrics::Metrics;
use spillway::policy::{BurstPolicy, PolicySet};
use spillway::units::Timestamp;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const NODES: usize = 5_000;
const VIRTUAL: &str = "virtual-node-aci-linux";
const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

/// The baseline: read and decode the same request, answer every name back.
async fn echo(req: Request) -> Response {
    let bytes = match read_body(req, DEFAULT_MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match decode::<ExtenderArgs>("filter", &bytes) {
        Ok(args) => axum::Json(ExtenderFilterResult {
            node_names: args.node_names,
            ..Default::default()
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

fn state() -> AppState {
    let mut nodes: Vec<Node> = (0..NODES - 1)
        .map(|i| {
            node(&format!("aks-pool{}-vmss{i:06}", i % 10))
                .pool(&format!("pool{}", i % 10))
                .build()
        })
        .collect();
    nodes.push(node(VIRTUAL).virtual_kubelet().build());
    let pods: Vec<Pod> = (0..2_000)
        .map(|i| {
            pod()
                .ns(&format!("ns{}", i % 100))
                .name(&format!("run-{i}"))
                .cpu("500m")
                .on_node(&format!("aks-pool{}-vmss{:06}", i % 10, i % (NODES - 1)))
                .build()
        })
        .collect();
    let view = ClusterView::new(ClusterConfig::default());
    view.replace(&nodes, &pods, NOW);
    let policies = PolicySet::with_default(BurstPolicy::defaults("cluster-default", None));
    AppState::new(
        PolicySource::Fixed(Arc::new(policies)),
        Arc::new(view),
        Arc::new(Metrics::new()),
    )
    .with_clock(|| NOW)
}

/// Bodies as the scheduler sends them: different pods, 5,000 names each
/// (every VM and the virtual node, which is refused because VMs survived).
fn bodies() -> Vec<Vec<u8>> {
    (0..16)
        .map(|i| {
            let p = pod()
                .ns(&format!("ns{}", i % 100))
                .name(&format!("pending-{i}"))
                .cpu("1")
                .memory("1Gi")
                .tolerate_virtual()
                .created(Timestamp::from_secs(NOW.millis() / 1000 - 5 * i as i64))
                .build();
            let mut names: Vec<String> = (0..NODES - 1)
                .map(|n| format!("aks-pool{}-vmss{n:06}", n % 10))
                .collect();
            names.push(VIRTUAL.to_string());
            let body = serde_json::json!({"Pod": p, "Nodes": null, "NodeNames": names});
            serde_json::to_vec(&body).unwrap_or_default()
        })
        .collect()
}

async fn time_one(router: &Router, body: &[u8]) -> f64 {
    let req = match Request::builder()
        .method("POST")
        .uri("/filter")
        .body(Body::from(body.to_vec()))
    {
        Ok(r) => r,
        Err(e) => panic!("bench request: {e}"),
    };
    let t = Instant::now();
    let resp = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let us = t.elapsed().as_secs_f64() * 1e6;
    std::hint::black_box(bytes);
    us
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let iters: usize = std::env::var("SPILLWAY_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
        .max(1);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let filter = app(state());
    let baseline = Router::new().route("/filter", post(echo));
    let bodies = bodies();
    let (mut f, mut e) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    rt.block_on(async {
        for b in bodies.iter().take(4) {
            time_one(&filter, b).await;
            time_one(&baseline, b).await;
        }
        // Interleaved, so both see the same machine load.
        for i in 0..iters {
            let b = &bodies[i % bodies.len()];
            f.push(time_one(&filter, b).await);
            e.push(time_one(&baseline, b).await);
        }
    });
    f.sort_by(f64::total_cmp);
    e.sort_by(f64::total_cmp);
    let (f50, f99, e50, e99) = (
        percentile(&f, 50.0),
        percentile(&f, 99.0),
        percentile(&e, 50.0),
        percentile(&e, 99.0),
    );
    let ratio = if e99 > 0.0 { f99 / e99 } else { 0.0 };
    println!("/filter, {NODES} names, {iters} requests each");
    println!("  filter p50 {f50:8.1} us  p99 {f99:8.1} us");
    println!("  echo   p50 {e50:8.1} us  p99 {e99:8.1} us");
    println!("  ratio p99 {ratio:.2}");
    let out = serde_json::json!({
        "nodes": NODES,
        "filter_p50_us": f50,
        "filter_p99_us": f99,
        "echo_p50_us": e50,
        "echo_p99_us": e99,
        "ratio_p99": ratio,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    let path = dir.join("extender.json");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, format!("{out:#}\n"))) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(err) => {
            eprintln!("cannot write {}: {err}", path.display());
            std::process::exit(1);
        }
    }
}
