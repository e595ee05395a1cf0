//! Cluster mode: `run_reflectors` lists and watches nodes and pods through a
//! real `kube::Client` and publishes a synced `ClusterView` that the extender
//! answers from.
//!
//! The API side is a minimal stub (one list per resource, watches that stay
//! open and silent), just enough for kube's watcher; the full test API server
//! (tests/support, on its own branch) replaces it once merged.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use spillway::cluster::build::{node, pod};
use spillway::cluster::view::run_reflectors;
use spillway::cluster::{ClusterConfig, ClusterView};
use spillway::extender::{AppState, PolicySource, app};
use spillway::metrics::Metrics;
use spillway::policy::{BurstPolicy, PolicySet};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[derive(Clone)]
struct Lists {
    nodes: Value,
    pods: Value,
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "7"}, "items": items})
}

async fn serve_list(which: &'static str, lists: &Lists, q: &HashMap<String, String>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        // An open, silent watch: no changes after the list.
        let body = Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        return (StatusCode::OK, [("content-type", "application/json")], body).into_response();
    }
    let v = if which == "nodes" {
        &lists.nodes
    } else {
        &lists.pods
    };
    axum::Json(v.clone()).into_response()
}

async fn nodes(State(l): State<Lists>, Query(q): Query<HashMap<String, String>>) -> Response {
    serve_list("nodes", &l, &q).await
}

async fn pods(State(l): State<Lists>, Query(q): Query<HashMap<String, String>>) -> Response {
    serve_list("pods", &l, &q).await
}

#[tokio::test]
async fn reflectors_sync_the_view_and_the_extender_answers_from_it() {
    let to_value = |v: serde_json::Result<Value>| v.unwrap();
    let lists = Lists {
        nodes: list(
            "NodeList",
            vec![
                to_value(serde_json::to_value(node("vm-a").pool("p1").build())),
                to_value(serde_json::to_value(node("vm-b").pool("p1").build())),
                to_value(serde_json::to_value(
                    node("aci-1").virtual_kubelet().build(),
                )),
            ],
        ),
        pods: list(
            "PodList",
            vec![
                to_value(serde_json::to_value(
                    pod().ns("web").name("r").cpu("1").on_node("vm-a").build(),
                )),
                to_value(serde_json::to_value(
                    pod()
                        .ns("web")
                        .name("b")
                        .cpu("2")
                        .memory("2Gi")
                        .on_node("aci-1")
                        .build(),
                )),
                to_value(serde_json::to_value(
                    pod().ns("web").name("p").cpu("1").build(),
                )),
            ],
        ),
    };
    let api = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/pods", get(pods))
        .with_state(lists);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let api_server = tokio::spawn(async move { axum::serve(listener, api).await });

    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let view = Arc::new(ClusterView::new(ClusterConfig::default()));
    let reflectors = tokio::spawn(run_reflectors(
        client,
        view.clone(),
        Duration::from_millis(10),
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    while !view.is_synced() {
        assert!(
            Instant::now() < deadline,
            "the view did not sync within 20s"
        );
        assert!(!reflectors.is_finished(), "run_reflectors stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = view.current();
    assert_eq!(
        state.virtual_nodes.iter().collect::<Vec<_>>(),
        vec!["aci-1"]
    );
    assert_eq!(state.vm_nodes.len(), 2);
    assert_eq!(state.snapshot.pending.len(), 1);
    assert_eq!(state.snapshot.burst_usage["web"].pods, 1);
    assert_eq!(state.snapshot.nodes[0].allocated.cpu_millis, 1000);

    // The extender recognises `aci-1` by name only because the view saw it.
    let policies = PolicySource::Fixed(Arc::new(PolicySet::with_default(BurstPolicy::defaults(
        "d", None,
    ))));
    let router = app(AppState::new(
        policies,
        view.clone(),
        Arc::new(Metrics::new()),
    ));
    let p = pod().ns("web").tolerate_virtual().build();
    let body =
        serde_json::to_vec(&json!({"Pod": p, "Nodes": null, "NodeNames": ["vm-a", "aci-1"]}))
            .unwrap();
    let req = Request::builder()
        .method("POST")
        .uri("/filter")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["NodeNames"], json!(["vm-a"]));
    assert!(
        v["FailedAndUnresolvableNodes"]["aci-1"]
            .as_str()
            .unwrap()
            .contains("vm-capacity-available")
    );
    let ready = router
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    reflectors.abort();
    api_server.abort();
}
