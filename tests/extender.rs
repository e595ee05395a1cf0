//! The scheduler extender through its router (`oneshot`), plus one test over a
//! real loopback socket. Fixtures come from ../shared/fixtures (the
//! scheduler's own wire format); other requests are built with the fixture
//! builders.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spillway::cluster::build::{node, pod};
use spillway::cluster::{ClusterConfig, ClusterView};
use spillway::extender::{AppState, PolicySource, app};
use spillway::metrics::Metrics;
use spillway::policy::{BurstMode, BurstPolicy, PolicySet};
use spillway::units::{Duration, Timestamp};
use std::sync::Arc;
use tower::ServiceExt;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/");
const VIRTUAL: &str = "virtual-node-aci-linux";
const VM0: &str = "aks-nodepool1-12345678-vmss000000";
const VM1: &str = "aks-nodepool1-12345678-vmss000001";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixtures' pod was created at 2024-05-14T09:21:37Z.
fn created() -> Timestamp {
    Timestamp::parse_rfc3339("2024-05-14T09:21:37Z").unwrap()
}

fn auto_policy(ns: Option<&str>) -> BurstPolicy {
    let mut p = BurstPolicy::defaults("test", ns);
    p.burst.max_vm_wait = Duration::from_mins(10);
    p
}

struct Harness {
    state: AppState,
    metrics: Arc<Metrics>,
}

/// A cluster with one growable VM pool, the AKS virtual node, and `now` fixed.
fn harness(policies: Vec<BurstPolicy>, now: Timestamp) -> Harness {
    let nodes: Vec<Node> = vec![
        node(VM0).pool("nodepool1").build(),
        node(VM1).pool("nodepool1").build(),
        node(VIRTUAL).virtual_kubelet().build(),
    ];
    let view = ClusterView::new(ClusterConfig::default());
    view.replace(&nodes, &[] as &[Pod], now);
    let metrics = Arc::new(Metrics::new());
    let set = PolicySet::new(policies).unwrap();
    let state = AppState::new(
        PolicySource::Fixed(Arc::new(set)),
        Arc::new(view),
        metrics.clone(),
    )
    .with_clock(move || now);
    Harness { state, metrics }
}

fn default_harness() -> Harness {
    harness(
        vec![auto_policy(None)],
        created().plus(Duration::from_secs(10)),
    )
}

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = app(h.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, text)
}

async fn post(h: &Harness, path: &str, body: &Value) -> (StatusCode, Value) {
    let (s, v, _) = call(h, "POST", path, serde_json::to_vec(body).unwrap()).await;
    (s, v)
}

fn names_request(p: &Pod, names: &[&str]) -> Value {
    json!({"Pod": p, "Nodes": null, "NodeNames": names})
}

fn names(v: &Value) -> Vec<String> {
    serde_json::from_value(v["NodeNames"].clone()).unwrap_or_default()
}

fn unresolvable(v: &Value, node: &str) -> Option<String> {
    v["FailedAndUnresolvableNodes"][node]
        .as_str()
        .map(String::from)
}

/// Same keys, and the same JSON type for each key, as the example response.
fn assert_same_shape(actual: &Value, example: &Value, what: &str) {
    match (actual, example) {
        (Value::Object(a), Value::Object(e)) => {
            let mut ak: Vec<&String> = a.keys().collect();
            let mut ek: Vec<&String> = e.keys().collect();
            ak.sort();
            ek.sort();
            assert_eq!(ak, ek, "{what}: keys");
            for (k, ev) in e {
                let av = &a[k];
                let compatible = matches!(
                    (av, ev),
                    (Value::Null, _)
                        | (_, Value::Null)
                        | (Value::Object(_), Value::Object(_))
                        | (Value::Array(_), Value::Array(_))
                        | (Value::String(_), Value::String(_))
                        | (Value::Number(_), Value::Number(_))
                );
                assert!(compatible, "{what}: {k} is {av} but the example has {ev}");
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            if let (Some(a0), Some(e0)) = (a.first(), e.first()) {
                assert_same_shape(a0, e0, what);
            }
        }
        _ => panic!("{what}: {actual} does not have the shape of {example}"),
    }
}

// ---------------------------------------------------------------- fixtures

#[tokio::test]
async fn every_fixture_gets_the_expected_status() {
    let h = default_harness();
    let cases: &[(&str, &str, StatusCode)] = &[
        ("01-filter-nodecache", "/filter", StatusCode::OK),
        ("02-filter-fullnodes", "/filter", StatusCode::OK),
        ("03-prioritize-nodecache", "/prioritize", StatusCode::OK),
        ("03b-prioritize-fullnodes", "/prioritize", StatusCode::OK),
        ("04-bind", "/bind", StatusCode::OK),
        ("05-preempt-nodecache", "/preempt", StatusCode::OK),
        ("05b-preempt-fullpods", "/preempt", StatusCode::OK),
        (
            "06-filter-virtualnode-toleration",
            "/filter",
            StatusCode::OK,
        ),
        (
            "06b-filter-virtualnode-toleration-fullnodes",
            "/filter",
            StatusCode::OK,
        ),
        ("07-filter-empty-nodenames", "/filter", StatusCode::OK),
        ("07b-filter-empty-nodelist", "/filter", StatusCode::OK),
        ("08-filter-legacy-lowercase-keys", "/filter", StatusCode::OK),
        (
            "09a-malformed-truncated",
            "/filter",
            StatusCode::BAD_REQUEST,
        ),
        (
            "09b-malformed-wrong-types",
            "/filter",
            StatusCode::BAD_REQUEST,
        ),
        (
            "09c-malformed-wrong-types-nested",
            "/filter",
            StatusCode::BAD_REQUEST,
        ),
        ("09d-malformed-not-json", "/filter", StatusCode::BAD_REQUEST),
        (
            "09e-malformed-empty-body",
            "/filter",
            StatusCode::BAD_REQUEST,
        ),
        ("09f-malformed-null", "/filter", StatusCode::BAD_REQUEST),
        (
            "09g-malformed-trailing-garbage",
            "/filter",
            StatusCode::BAD_REQUEST,
        ),
        (
            "09h-malformed-bind-wrong-types",
            "/bind",
            StatusCode::BAD_REQUEST,
        ),
    ];
    // Every stored request fixture is covered.
    let mut stored: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".request.json").map(String::from))
        .collect();
    stored.sort();
    let mut listed: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(stored, listed);

    for (name, path, expected) in cases {
        let (status, body, text) =
            call(&h, "POST", path, fixture(&format!("{name}.request.json"))).await;
        assert_eq!(status, *expected, "{name}: {text}");
        if status == StatusCode::BAD_REQUEST {
            let msg = body["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no error message in {text}"));
            assert!(!msg.is_empty(), "{name}");
        }
    }
}

#[tokio::test]
async fn filter_responses_have_the_scheduler_shapes() {
    let h = default_harness();
    let nodecache = fixture_json("resp-filter-nodecache.example.json");
    let fullnodes = fixture_json("resp-filter-fullnodes.example.json");
    for name in [
        "01-filter-nodecache",
        "06-filter-virtualnode-toleration",
        "07-filter-empty-nodenames",
        "08-filter-legacy-lowercase-keys",
    ] {
        let req = fixture_json(&format!("{name}.request.json"));
        let (status, v) = post(&h, "/filter", &req).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_same_shape(&v, &nodecache, name);
        assert!(
            v["NodeNames"].is_array(),
            "{name}: NodeNames must never be null"
        );
        assert!(v["Nodes"].is_null(), "{name}");
        let asked = req
            .get("NodeNames")
            .or(req.get("nodenames"))
            .cloned()
            .unwrap();
        let asked: Vec<String> = serde_json::from_value(asked).unwrap();
        for n in names(&v) {
            assert!(
                asked.contains(&n),
                "{name}: answered {n} which was not asked"
            );
        }
    }
    for name in [
        "02-filter-fullnodes",
        "06b-filter-virtualnode-toleration-fullnodes",
        "07b-filter-empty-nodelist",
    ] {
        let req = fixture_json(&format!("{name}.request.json"));
        let (status, v) = post(&h, "/filter", &req).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_same_shape(&v, &fullnodes, name);
        assert!(v["NodeNames"].is_null(), "{name}");
        assert!(
            v["Nodes"]["items"].is_array(),
            "{name}: Nodes.items must be a list"
        );
        // Returned items are the request's node objects, unchanged.
        let asked = req["Nodes"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for item in v["Nodes"]["items"].as_array().unwrap() {
            assert!(
                asked.contains(item),
                "{name}: node object changed or invented"
            );
        }
    }
}

#[tokio::test]
async fn legacy_lowercase_and_full_node_requests_get_the_same_decision() {
    let h = default_harness();
    let (_, current) = post(
        &h,
        "/filter",
        &fixture_json("01-filter-nodecache.request.json"),
    )
    .await;
    let (_, legacy) = post(
        &h,
        "/filter",
        &fixture_json("08-filter-legacy-lowercase-keys.request.json"),
    )
    .await;
    assert_eq!(current, legacy);
    assert_eq!(names(&current), vec![VM0, VM1]);
    let (_, full) = post(
        &h,
        "/filter",
        &fixture_json("02-filter-fullnodes.request.json"),
    )
    .await;
    assert_eq!(
        full["FailedAndUnresolvableNodes"],
        current["FailedAndUnresolvableNodes"]
    );
    // An empty candidate list stays empty (never null).
    let (_, empty) = post(
        &h,
        "/filter",
        &fixture_json("07-filter-empty-nodenames.request.json"),
    )
    .await;
    assert_eq!(empty["NodeNames"], json!([]));
    let (_, empty) = post(
        &h,
        "/filter",
        &fixture_json("07b-filter-empty-nodelist.request.json"),
    )
    .await;
    assert_eq!(empty["Nodes"]["items"], json!([]));
}

#[tokio::test]
async fn prioritize_preempt_bind_and_error_shapes() {
    let h = default_harness();
    let example = fixture_json("resp-prioritize.example.json");
    for name in ["03-prioritize-nodecache", "03b-prioritize-fullnodes"] {
        let (status, v) = post(
            &h,
            "/prioritize",
            &fixture_json(&format!("{name}.request.json")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_same_shape(&v, &example, name);
        let scores: Vec<(String, i64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["Host"].as_str().unwrap().to_string(),
                    e["Score"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            scores,
            vec![
                (VM0.to_string(), 10),
                (VM1.to_string(), 10),
                (VIRTUAL.to_string(), 0)
            ],
            "{name}"
        );
    }
    let preempt_example = fixture_json("resp-preempt.example.json");
    for name in ["05-preempt-nodecache", "05b-preempt-fullpods"] {
        let (status, v) = post(
            &h,
            "/preempt",
            &fixture_json(&format!("{name}.request.json")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_same_shape(&v, &preempt_example, name);
        let victims = v["NodeNameToMetaVictims"].as_object().unwrap();
        assert!(!victims.is_empty(), "{name}");
        for (node, mv) in victims {
            assert!(node.starts_with("aks-nodepool1"), "{name}: {node}");
            assert!(
                !mv["Pods"].as_array().unwrap().is_empty(),
                "{name}: a node with zero victims"
            );
            assert!(mv["Pods"][0]["UID"].is_string());
        }
    }
    let (status, v) = post(&h, "/bind", &fixture_json("04-bind.request.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(&v, &fixture_json("resp-bind.example.json"), "bind");
    assert!(v["Error"].as_str().unwrap().contains("does not bind"));
    // Error bodies are JSON with an `error` string.
    let (status, v, _) = call(&h, "POST", "/filter", "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed filter request")
    );
}

// ------------------------------------------------------------ filter rules

#[tokio::test]
async fn vm_candidates_always_refuse_the_virtual_node_as_unresolvable() {
    let h = default_harness();
    // Fixture 06: the pod tolerates the virtual node and VMs passed the scheduler's filters.
    let (status, v) = post(
        &h,
        "/filter",
        &fixture_json("06-filter-virtualnode-toleration.request.json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&v), vec![VM0, VM1]);
    let msg = unresolvable(&v, VIRTUAL).unwrap();
    assert!(
        msg.starts_with("spillway: vm-capacity-available, 2 VM node(s)"),
        "{msg}"
    );
    assert!(
        v["FailedNodes"].as_object().is_none_or(|m| m.is_empty()),
        "refusals never use FailedNodes"
    );
    // The same with full node objects: the virtual node is recognised by label/taint.
    let (_, v) = post(
        &h,
        "/filter",
        &fixture_json("06b-filter-virtualnode-toleration-fullnodes.request.json"),
    )
    .await;
    let kept: Vec<&str> = v["Nodes"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec![VM0, VM1]);
    assert!(
        unresolvable(&v, VIRTUAL)
            .unwrap()
            .contains("vm-capacity-available")
    );
}

#[tokio::test]
async fn only_the_virtual_node_left_young_pod_waits_with_time_left() {
    let now = created().plus(Duration::from_secs(10));
    let h = harness(vec![auto_policy(Some("web"))], now);
    let p = pod()
        .ns("web")
        .name("w")
        .cpu("500m")
        .tolerate_virtual()
        .created(created())
        .build();
    let (status, v) = post(&h, "/filter", &names_request(&p, &[VIRTUAL])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&v), Vec::<String>::new());
    let msg = unresolvable(&v, VIRTUAL).unwrap();
    assert!(
        msg.starts_with("spillway: waiting-for-vm, 20s left of spillAfter 30s"),
        "{msg}"
    );
}

#[tokio::test]
async fn only_the_virtual_node_left_old_pod_bursts() {
    let now = created().plus(Duration::from_secs(45));
    let h = harness(vec![auto_policy(Some("web"))], now);
    let p = pod()
        .ns("web")
        .name("w")
        .cpu("500m")
        .tolerate_virtual()
        .created(created())
        .build();
    let (_, v) = post(&h, "/filter", &names_request(&p, &[VIRTUAL])).await;
    assert_eq!(names(&v), vec![VIRTUAL]);
    assert!(
        v["FailedAndUnresolvableNodes"]
            .as_object()
            .unwrap()
            .is_empty()
    );
    let text = h.metrics.render();
    assert!(
        text.contains(
            r#"spillway_decisions_total{reason="spill-after-elapsed",verdict="burst"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn pending_since_uses_the_unschedulable_condition() {
    let now = created().plus(Duration::from_secs(45));
    let h = harness(vec![auto_policy(Some("web"))], now);
    // Created long ago, but only unschedulable for 5s: still waiting.
    let since = Timestamp::from_millis(now.millis() - 5_000);
    let p = pod()
        .ns("web")
        .tolerate_virtual()
        .created(created())
        .unschedulable_since(since)
        .build();
    let (_, v) = post(&h, "/filter", &names_request(&p, &[VIRTUAL])).await;
    assert!(
        unresolvable(&v, VIRTUAL).unwrap().contains("25s left"),
        "{v}"
    );
}

#[tokio::test]
async fn never_always_and_unmanaged_get_the_obvious_answer() {
    let now = created().plus(Duration::from_secs(3600));
    let mut never = auto_policy(Some("batch"));
    never.burst.mode = BurstMode::Never;
    let mut always = auto_policy(Some("web"));
    always.burst.mode = BurstMode::Always;
    let h = harness(vec![never, always], now);
    let mk = |ns: &str| {
        pod()
            .ns(ns)
            .cpu("1")
            .tolerate_virtual()
            .created(created())
            .build()
    };

    let (_, v) = post(&h, "/filter", &names_request(&mk("batch"), &[VIRTUAL])).await;
    assert!(
        unresolvable(&v, VIRTUAL)
            .unwrap()
            .starts_with("spillway: policy-never")
    );
    assert_eq!(names(&v), Vec::<String>::new());

    let (_, v) = post(&h, "/filter", &names_request(&mk("web"), &[VIRTUAL])).await;
    assert_eq!(
        names(&v),
        vec![VIRTUAL],
        "Always keeps the virtual node at once when no VM fits"
    );
    let (_, v) = post(&h, "/filter", &names_request(&mk("web"), &[VM0, VIRTUAL])).await;
    assert_eq!(names(&v), vec![VM0], "Always still fills VMs first");
    assert!(
        unresolvable(&v, VIRTUAL)
            .unwrap()
            .starts_with("spillway: vm-capacity-available")
    );

    let (_, v) = post(&h, "/filter", &names_request(&mk("unmanaged"), &[VIRTUAL])).await;
    assert_eq!(names(&v), vec![VIRTUAL], "no policy: the scheduler decides");
}

#[tokio::test]
async fn budget_and_incompatibility_refusals() {
    let now = created().plus(Duration::from_secs(3600));
    let mut capped = auto_policy(None);
    capped.budget.max_pods = Some(0);
    let h = harness(vec![capped], now);
    let p = pod()
        .ns("web")
        .tolerate_virtual()
        .created(created())
        .build();
    let (_, v) = post(&h, "/filter", &names_request(&p, &[VIRTUAL])).await;
    assert!(
        unresolvable(&v, VIRTUAL)
            .unwrap()
            .starts_with("spillway: budget-pods, 0/0 pods"),
        "{v}"
    );

    let h = harness(vec![auto_policy(None)], now);
    let p = pod()
        .ns("web")
        .tolerate_virtual()
        .host_path("logs")
        .created(created())
        .build();
    let (_, v) = post(&h, "/filter", &names_request(&p, &[VIRTUAL])).await;
    assert!(
        unresolvable(&v, VIRTUAL)
            .unwrap()
            .contains("aci-incompatible, volume \"logs\" is a hostPath"),
        "{v}"
    );
}

#[tokio::test]
async fn budgets_count_admissions_the_view_has_not_seen_yet() {
    let now = created().plus(Duration::from_secs(3600));
    let mut capped = auto_policy(None);
    capped.budget.max_pods = Some(1);
    let h = harness(vec![capped], now);
    let mk = |name: &str| {
        let mut p = pod()
            .ns("web")
            .name(name)
            .tolerate_virtual()
            .created(created())
            .build();
        p.metadata.uid = Some(format!("uid-{name}"));
        p
    };
    let (_, v) = post(&h, "/filter", &names_request(&mk("a"), &[VIRTUAL])).await;
    assert_eq!(names(&v), vec![VIRTUAL], "first pod fits the budget");
    let (_, v) = post(&h, "/filter", &names_request(&mk("b"), &[VIRTUAL])).await;
    let msg = unresolvable(&v, VIRTUAL).unwrap();
    assert!(msg.starts_with("spillway: budget-pods, 1/1 pods"), "{msg}");
    let (_, v) = post(&h, "/filter", &names_request(&mk("a"), &[VIRTUAL])).await;
    assert_eq!(
        names(&v),
        vec![VIRTUAL],
        "a retry of the admitted pod is not counted twice"
    );
    // A view rebuilt later is authoritative again (here: `a` never got bound).
    h.state.view.replace(
        &[
            node(VM0).pool("nodepool1").build(),
            node(VIRTUAL).virtual_kubelet().build(),
        ],
        &[] as &[Pod],
        now.plus(Duration::from_secs(3)),
    );
    let (_, v) = post(&h, "/filter", &names_request(&mk("b"), &[VIRTUAL])).await;
    assert_eq!(names(&v), vec![VIRTUAL]);
}

#[tokio::test]
async fn virtual_nodes_are_recognised_by_configured_or_observed_name() {
    let h = harness(vec![auto_policy(None)], created());
    let p = pod()
        .ns("web")
        .tolerate_virtual()
        .created(created())
        .build();
    // `spillway-aci` is a configured default name; VM0 is a VM.
    let (_, v) = post(&h, "/filter", &names_request(&p, &[VM0, "spillway-aci"])).await;
    assert_eq!(names(&v), vec![VM0]);
    assert!(unresolvable(&v, "spillway-aci").is_some());
    // A node the view saw as virtual under an unusual name.
    let view = ClusterView::new(ClusterConfig::default());
    view.replace(
        &[node("my-aci").virtual_kubelet().build(), node("vm").build()],
        &[] as &[Pod],
        created(),
    );
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(
        PolicySource::Fixed(Arc::new(PolicySet::new(vec![auto_policy(None)]).unwrap())),
        Arc::new(view),
        metrics.clone(),
    )
    .with_clock(created);
    let h2 = Harness { state, metrics };
    let (_, v) = post(&h2, "/filter", &names_request(&p, &["vm", "my-aci"])).await;
    assert_eq!(names(&v), vec!["vm"]);
    assert!(unresolvable(&v, "my-aci").is_some());
}

// ------------------------------------------------------------- bad input

#[tokio::test]
async fn missing_pod_namespace_or_candidates_is_400() {
    let h = default_harness();
    let cases = [
        json!({"Pod": null, "NodeNames": [VM0]}),
        json!({"NodeNames": [VM0]}),
        json!({"Pod": pod().no_namespace().build(), "NodeNames": [VM0]}),
        json!({"Pod": pod().build(), "Nodes": null, "NodeNames": null}),
        json!({"Pod": pod().build(), "NodeNames": [VM0, 3]}),
    ];
    for body in cases {
        for path in ["/filter", "/prioritize"] {
            let (status, v) = post(&h, path, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
            assert!(v["error"].is_string());
        }
    }
    let text = h.metrics.render();
    assert!(
        text.contains(r#"spillway_extender_requests_total{outcome="bad_request",verb="filter"} 5"#),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let h = Harness {
        state: default_harness().state.with_max_body_bytes(1024),
        metrics: Arc::new(Metrics::new()),
    };
    // Over the limit with a Content-Length, and streamed without one.
    let big = vec![b' '; 2048];
    let (status, v, _) = call(&h, "POST", "/filter", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("1024"));
    let stream = futures::stream::iter(
        big.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let (status, _, _) = call(&h, "POST", "/filter", Body::from_stream(stream)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The 5 MiB bodies of gen.py (valid and unterminated) against the default 4 MiB limit.
    let h = default_harness();
    let blob = "A".repeat(5 * 1024 * 1024);
    let mut valid = fixture_json("01-filter-nodecache.request.json");
    valid["Pod"]["metadata"]["annotations"]["example.com/blob"] = Value::String(blob.clone());
    let (status, _) = post(&h, "/filter", &valid).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let garbage =
        format!("{{\"Pod\":{{\"metadata\":{{\"name\":\"x\",\"annotations\":{{\"a\":\"{blob}");
    let (status, _, _) = call(&h, "POST", "/filter", garbage).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let text = h.metrics.render();
    assert!(
        text.contains(r#"spillway_extender_requests_total{outcome="too_large",verb="filter"} 2"#),
        "{text}"
    );
}

/// Seeded mutations of every fixture: byte flips, truncation, splices, type
/// swaps. The extender answers each with 2xx or 4xx (never 5xx, never a panic).
#[tokio::test]
async fn ten_thousand_mutated_bodies_get_only_2xx_or_4xx() {
    let h = default_harness();
    let router = app(h.state.clone());
    let sources: Vec<(String, Vec<u8>)> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".request.json")
                .then(|| (name.clone(), fixture(&name)))
        })
        .collect();
    assert!(sources.len() >= 20);
    let mut rng = SmallRng::seed_from_u64(0x5EED_F00D);
    let paths = ["/filter", "/prioritize", "/preempt", "/bind"];
    let mut counts = [0usize; 2];
    for i in 0..10_000 {
        let (name, base) = &sources[rng.random_range(0..sources.len())];
        let body = mutate(base, &mut rng);
        let path = paths[i % paths.len()];
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::from(body.clone()))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        assert!(
            status.is_success() || status.is_client_error(),
            "{path} with mutated {name} -> {status}: {}",
            String::from_utf8_lossy(&body)
        );
        counts[usize::from(status.is_success())] += 1;
    }
    // Both outcomes occur: the mutations are neither all fatal nor all harmless.
    assert!(counts[0] > 100 && counts[1] > 100, "{counts:?}");
}

fn mutate(base: &[u8], rng: &mut SmallRng) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.random_range(0..6) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                if !b.is_empty() {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            let n = rng.random_range(0..=b.len());
            b.truncate(n);
        }
        2 => {
            let i = rng.random_range(0..=b.len());
            let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
            b.splice(i..i, junk);
        }
        _ => {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&b) {
                swap_types(&mut v, rng, 0);
                b = serde_json::to_vec(&v).unwrap_or_default();
            } else {
                b.reverse();
            }
        }
    }
    b
}

/// Replace one random value somewhere in the tree with a value of another type.
fn swap_types(v: &mut Value, rng: &mut SmallRng, depth: usize) {
    let replace = depth > 0 && rng.random_range(0..4) == 0;
    if replace {
        *v = match rng.random_range(0..6) {
            0 => Value::Null,
            1 => json!(42),
            2 => json!("text"),
            3 => json!([1, "two", null]),
            4 => json!({"k": true}),
            _ => json!(false),
        };
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            let k = rng.random_range(0..m.len());
            if let Some((_, child)) = m.iter_mut().nth(k) {
                swap_types(child, rng, depth + 1);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let k = rng.random_range(0..a.len());
            swap_types(&mut a[k], rng, depth + 1);
        }
        _ => *v = json!({"swapped": [depth]}),
    }
}

// ---------------------------------------------------------- probes, metrics

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = default_harness();
    let (status, _, text) = call(&h, "GET", "/healthz", Body::empty()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, _) = call(&h, "GET", "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let unsynced_metrics = Arc::new(Metrics::new());
    let unsynced = Harness {
        state: AppState {
            view: Arc::new(ClusterView::new(ClusterConfig::default())),
            metrics: unsynced_metrics.clone(),
            ..h.state.clone()
        },
        metrics: unsynced_metrics,
    };
    let (status, v, _) = call(&unsynced, "GET", "/readyz", Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].is_string());
    // Unsynced, the extender will not decide on the virtual node: it refuses
    // it as unresolvable (an `Error` would make kube-scheduler skip this
    // ignorable extender and keep the virtual node) and keeps the VMs.
    let (status, v) = post(
        &unsynced,
        "/filter",
        &fixture_json("06-filter-virtualnode-toleration.request.json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["Error"].as_str().unwrap_or_default(), "", "{v}");
    assert!(
        unresolvable(&v, "virtual-node-aci-linux").is_some_and(|m| m.contains("not synced")),
        "{v}"
    );
    assert_eq!(
        names(&v),
        vec![
            "aks-nodepool1-12345678-vmss000000".to_string(),
            "aks-nodepool1-12345678-vmss000001".to_string()
        ]
    );
    let (_, v) = post(
        &unsynced,
        "/filter",
        &names_request(&pod().ns("web").build(), &[VM0]),
    )
    .await;
    assert_eq!(
        (v["Error"].as_str(), names(&v)),
        (Some(""), vec![VM0.to_string()]),
        "no virtual node, no decision needed"
    );
    let text = unsynced.metrics.render();
    assert!(
        text.contains(r#"spillway_extender_requests_total{outcome="ok",verb="filter"} 2"#),
        "{text}"
    );
    // `spillway_ready` mirrors /readyz at every scrape, in any role.
    let (_, _, text) = call(&unsynced, "GET", "/metrics", Body::empty()).await;
    assert!(text.contains("spillway_ready 0"), "{text}");
    let (_, _, text) = call(&h, "GET", "/metrics", Body::empty()).await;
    assert!(text.contains("spillway_ready 1"), "{text}");

    post(
        &h,
        "/filter",
        &fixture_json("01-filter-nodecache.request.json"),
    )
    .await;
    let (status, _, text) = call(&h, "GET", "/metrics", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"spillway_extender_requests_total{outcome="ok",verb="filter"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spillway_extender_request_duration_seconds_count{verb="filter"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spillway_decisions_total{reason="vm-capacity-available",verdict="vm"} 1"#),
        "{text}"
    );
    let (status, _, _) = call(&h, "GET", "/filter", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

// ------------------------------------------------------------- real socket

#[tokio::test]
async fn serves_over_a_loopback_socket() {
    let h = default_harness();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(spillway::extender::serve(
        listener,
        h.state.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let body = fixture("01-filter-nodecache.request.json");
    let request = format!(
        "POST /filter HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A plain blocking client on its own thread, with socket timeouts.
    let exchange = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(std::time::Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        stream.write_all(&body)?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out)?;
        Ok::<_, std::io::Error>(out)
    });
    let raw = tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json_start = text.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&text[json_start..]).unwrap();
    assert_eq!(names(&v), vec![VM0, VM1]);
    let _ = stop_tx.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
