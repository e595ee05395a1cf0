//! Budgets hold across extender replicas: every replica reserves burst
//! budget in one ConfigMap with compare-and-swap, and the leader's loop
//! drops reservations once its view shows the pods bound.
//!
//! Two replicas, each with its own cluster view fed by watches of the test
//! API server, answer concurrent `/filter` calls for pods of one namespace
//! whose policy allows 4 burst pods. With the shared reservations exactly 4
//! are let onto the virtual node; with per-replica ledgers only (the control
//! run) each replica admits 4, so the namespace gets 8.

mod support;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use serde_json::{Value, json};
use spillway::cluster::build::{node, pod};
use spillway::cluster::view::run_reflectors;
use spillway::cluster::{ClusterConfig, ClusterView};
use spillway::extender::reservations::{DEFAULT_NAME, SharedReservations, parse};
use spillway::extender::{AppState, PolicySource, app};
use spillway::metrics::Metrics;
use spillway::policy::{BurstPolicy, PolicySet};
use spillway::units::{Duration as Span, Timestamp};
use std::sync::Arc;
use std::time::Duration;
use support::{TestApiServer, poll_until};
use tower::ServiceExt;

const VIRTUAL: &str = "virtual-node-aci-linux";
const NS: &str = "spillway-system";
const PODS: usize = 12;
const MAX_PODS: u32 = 4;

struct Replica {
    state: AppState,
    view: Arc<ClusterView>,
    metrics: Arc<Metrics>,
    reflectors: tokio::task::JoinHandle<Result<(), spillway::cluster::ClusterError>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.reflectors.abort();
    }
}

fn policies() -> PolicySource {
    let mut p = BurstPolicy::defaults("capped", Some("web"));
    p.burst.spill_after = Span::ZERO;
    p.budget.max_pods = Some(MAX_PODS);
    PolicySource::Fixed(Arc::new(PolicySet::new(vec![p]).expect("valid policy")))
}

async fn replica(srv: &TestApiServer, name: &str, shared: bool) -> Replica {
    replica_with(srv, name, shared, policies()).await
}

async fn replica_with(
    srv: &TestApiServer,
    name: &str,
    shared: bool,
    policies: PolicySource,
) -> Replica {
    let view = Arc::new(ClusterView::new(ClusterConfig::default()));
    let reflectors = tokio::spawn(run_reflectors(
        srv.client(),
        view.clone(),
        Duration::from_millis(20),
    ));
    let metrics = Arc::new(Metrics::new());
    let mut state = AppState::new(policies, view.clone(), metrics.clone());
    if shared {
        state = state.with_reservations(SharedReservations::new(
            srv.client_without_retries(),
            NS,
            DEFAULT_NAME,
            name,
        ));
    }
    Replica {
        state,
        view,
        metrics,
        reflectors,
    }
}

fn web_pod(i: usize) -> Pod {
    let mut p = pod()
        .ns("web")
        .name(&format!("web-{i}"))
        .cpu("1")
        .memory("1Gi")
        .tolerate_virtual()
        .created(Timestamp::now_wall())
        .build();
    p.metadata.uid = Some(format!("uid-web-{i}"));
    p
}

/// A cluster whose only node is the virtual node, and `PODS` pending web pods.
async fn cluster() -> TestApiServer {
    let srv = TestApiServer::start().await;
    srv.insert::<Node>(&node(VIRTUAL).virtual_kubelet().build());
    for i in 0..PODS {
        srv.insert(&web_pod(i));
    }
    srv
}

async fn synced(replicas: &[&Replica], pending: usize) {
    let ok = poll_until(Duration::from_secs(20), || {
        replicas.iter().all(|r| {
            let s = r.view.current();
            s.synced && s.snapshot.pending.len() == pending
        })
    })
    .await;
    assert!(ok, "the replicas' views did not sync");
}

/// Ask `r` about pod `i`; true when the virtual node was kept.
async fn admitted(r: &Replica, i: usize) -> bool {
    admitted_among(r, i, &[VIRTUAL]).await
}

/// Ask `r` about pod `i` with these candidate nodes; true when the virtual
/// node was kept.
async fn admitted_among(r: &Replica, i: usize, candidates: &[&str]) -> bool {
    let body = json!({"Pod": web_pod(i), "NodeNames": candidates});
    let req = Request::builder()
        .method("POST")
        .uri("/filter")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = app(r.state.clone()).oneshot(req).await.expect("answer");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    assert_eq!(v["Error"].as_str().unwrap_or_default(), "", "{v}");
    v["NodeNames"]
        .as_array()
        .is_some_and(|n| n.iter().any(|x| x == VIRTUAL))
}

/// Ask about every pod at once, alternating replicas; the admitted pods.
async fn burst_storm(a: &Replica, b: &Replica) -> Vec<usize> {
    let asks = (0..PODS).map(|i| {
        let r = if i % 2 == 0 { a } else { b };
        async move { (i, admitted(r, i).await) }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(i, ok)| ok.then_some(i))
        .collect()
}

fn reservations(srv: &TestApiServer) -> Vec<String> {
    srv.get::<ConfigMap>(NS, DEFAULT_NAME)
        .map(|cm| parse(&cm).into_values().map(|r| r.pod).collect())
        .unwrap_or_default()
}

/// `Always` fills VMs first too: while the scheduler sends a feasible VM the
/// virtual node is refused and no budget is reserved (a reservation would
/// hold budget for 30 s for a pod that lands on the VM); with only the
/// virtual node left it is reserved as usual.
#[tokio::test]
async fn always_reserves_no_budget_while_a_vm_is_feasible() {
    let srv = cluster().await;
    srv.insert::<Node>(&node("vm-0").pool("user").build());
    let mut p = BurstPolicy::defaults("always", Some("web"));
    p.burst.mode = spillway::policy::BurstMode::Always;
    p.budget.max_pods = Some(MAX_PODS);
    let set = PolicySet::new(vec![p]).expect("valid policy");
    let r = replica_with(&srv, "a", true, PolicySource::Fixed(Arc::new(set))).await;
    synced(&[&r], PODS).await;
    let reservation_writes = |srv: &TestApiServer| {
        srv.requests()
            .iter()
            .filter(|q| q.path.contains("/configmaps") && q.method != "GET")
            .count()
    };
    for i in 0..PODS {
        assert!(!admitted_among(&r, i, &["vm-0", VIRTUAL]).await, "pod {i}");
    }
    assert_eq!(reservation_writes(&srv), 0);
    assert!(reservations(&srv).is_empty());
    assert_eq!(
        r.metrics
            .burst_reservations
            .with_label_values(&["admitted"])
            .get(),
        0
    );
    assert!(admitted_among(&r, 0, &[VIRTUAL]).await);
    assert_eq!(reservations(&srv), vec!["web/web-0".to_string()]);
}

#[tokio::test]
async fn per_replica_ledgers_alone_let_two_replicas_overshoot_a_budget() {
    let srv = cluster().await;
    let (a, b) = (
        replica(&srv, "a", false).await,
        replica(&srv, "b", false).await,
    );
    synced(&[&a, &b], PODS).await;
    let admitted = burst_storm(&a, &b).await;
    // The control: this is the failure the shared reservations prevent.
    assert_eq!(admitted.len(), 2 * MAX_PODS as usize, "{admitted:?}");
}

#[tokio::test]
async fn shared_reservations_hold_a_budget_across_replicas() {
    let srv = cluster().await;
    let (a, b) = (
        replica(&srv, "a", true).await,
        replica(&srv, "b", true).await,
    );
    synced(&[&a, &b], PODS).await;

    let first = burst_storm(&a, &b).await;
    assert_eq!(first.len(), MAX_PODS as usize, "admitted {first:?}");
    let held = reservations(&srv);
    assert_eq!(held.len(), MAX_PODS as usize, "{held:?}");
    let count = |r: &Replica, outcome: &str| {
        r.metrics
            .burst_reservations
            .with_label_values(&[outcome])
            .get()
    };
    assert_eq!(count(&a, "admitted") + count(&b, "admitted"), 4);
    assert_eq!(count(&a, "error") + count(&b, "error"), 0);
    // The asks really raced: more writes than admissions means some lost
    // the compare-and-swap (409) and were decided again.
    let writes = srv
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(DEFAULT_NAME))
        .count();
    assert!(writes > MAX_PODS as usize, "{writes} writes");

    // A retry of an admitted pod is not counted against itself; others are refused.
    assert!(admitted(&b, first[0]).await, "an admitted pod asking again");
    let other = (0..PODS).find(|i| !first.contains(i)).unwrap_or_default();
    assert!(!admitted(&a, other).await && !admitted(&b, other).await);

    // The scheduler binds the admitted pods; once the views show them bound
    // the reservations are no longer needed and the leader drops them.
    for &i in &first {
        srv.modify::<Pod>("web", &format!("web-{i}"), |p| {
            if let Some(spec) = p.spec.as_mut() {
                spec.node_name = Some(VIRTUAL.into());
            }
        });
    }
    synced(&[&a, &b], PODS - first.len()).await;
    let leader = SharedReservations::new(srv.client_without_retries(), NS, DEFAULT_NAME, "a");
    let removed = leader
        .reconcile(&a.view.current(), Timestamp::now_wall())
        .await
        .expect("reconcile");
    assert_eq!(removed, MAX_PODS as usize);
    assert!(reservations(&srv).is_empty());

    // The budget is now used by bound pods the views count themselves.
    let rest: Vec<usize> = (0..PODS).filter(|i| !first.contains(i)).collect();
    assert!(!admitted(&a, rest[0]).await && !admitted(&b, rest[1]).await);

    // Two burst pods finish: exactly two more are admitted, across replicas.
    for &i in &first[..2] {
        srv.remove::<Pod>("web", &format!("web-{i}"));
    }
    synced(&[&a, &b], PODS - first.len()).await;
    let ok = poll_until(Duration::from_secs(10), || {
        [&a, &b]
            .iter()
            .all(|r| r.view.current().snapshot.burst_usage["web"].pods == 2)
    })
    .await;
    assert!(ok, "the views did not see the finished pods go");
    let mut second = Vec::new();
    for (n, &i) in rest.iter().enumerate() {
        let r = if n % 2 == 0 { &a } else { &b };
        if admitted(r, i).await {
            second.push(i);
        }
    }
    assert_eq!(second.len(), 2, "admitted {second:?}");
}

#[tokio::test]
async fn an_unreachable_configmap_refuses_the_virtual_node() {
    let srv = cluster().await;
    let a = replica(&srv, "a", true).await;
    synced(&[&a], PODS).await;
    srv.inject(
        support::Fault::status(format!("/api/v1/namespaces/{NS}/configmaps*"), 500).times(1000),
    );
    assert!(!admitted(&a, 0).await, "fails closed");
    assert_eq!(
        a.metrics
            .burst_reservations
            .with_label_values(&["error"])
            .get(),
        1
    );
    srv.clear_faults();
    assert!(
        admitted(&a, 0).await,
        "admitted once the ConfigMap is reachable"
    );
}

#[tokio::test]
async fn a_slow_api_server_refuses_the_virtual_node_before_the_scheduler_gives_up() {
    let srv = cluster().await;
    let a = replica(&srv, "a", true).await;
    synced(&[&a], PODS).await;
    // Slower than RESERVE_WITHIN (500 ms), then answered normally: without
    // the bound the reservation would succeed after 2 s, past kube-scheduler's
    // 1 s httpTimeout, which skips an ignorable extender.
    srv.inject(
        support::Fault::latency(
            format!("/api/v1/namespaces/{NS}/configmaps*"),
            Duration::from_secs(2),
        )
        .times(1),
    );
    assert!(!admitted(&a, 0).await, "refused instead of answering late");
    assert_eq!(
        a.metrics
            .burst_reservations
            .with_label_values(&["error"])
            .get(),
        1
    );
    assert!(reservations(&srv).is_empty());
}
