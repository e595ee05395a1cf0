//! Unit tests of the filter rule (`decide_for_virtual`); the HTTP surface is
//! tested through the router in tests/extender.rs.

use super::wire::ExtenderArgs;
use super::*;
use crate::cluster::build::{node, pod};
use crate::cluster::{ClusterConfig, ClusterView};
use crate::decision::{Reason, Verdict};
use crate::policy::{BurstMode, BurstPolicy, PolicySet};
use k8s_openapi::api::core::v1::Pod;

const NOW: i64 = 1_000_000;

fn state(policies: Vec<BurstPolicy>) -> AppState {
    // One pool that can still grow, so the engine predicts a VM (default 240s away).
    let nodes = vec![
        node("vm-0").pool("pool1").build(),
        node("aci").virtual_kubelet().build(),
    ];
    let view = ClusterView::new(ClusterConfig::default());
    view.replace(&nodes, &[] as &[Pod], Timestamp::from_secs(NOW));
    let set = PolicySet::new(policies).unwrap();
    AppState::new(
        PolicySource::Fixed(Arc::new(set)),
        Arc::new(view),
        Arc::new(Metrics::new()),
    )
    .with_clock(|| Timestamp::from_secs(NOW))
}

fn policy(ns: Option<&str>, mode: BurstMode) -> BurstPolicy {
    let mut p = BurstPolicy::defaults("p", ns);
    p.burst.mode = mode;
    // Longer than the default VM provisioning estimate (4m), so waiting is possible.
    p.burst.max_vm_wait = crate::units::Duration::from_mins(10);
    p
}

fn web_pod(pending_for_secs: i64) -> Pod {
    pod()
        .ns("web")
        .name("w")
        .cpu("500m")
        .memory("512Mi")
        .tolerate_virtual()
        .created(Timestamp::from_secs(NOW - pending_for_secs))
        .build()
}

#[tokio::test]
async fn unmanaged_pods_keep_the_virtual_node() {
    let s = state(vec![policy(Some("other"), BurstMode::Auto)]);
    let d = decide_for_virtual(&s, &web_pod(0), 2).await.unwrap();
    assert_eq!(
        (d.verdict, d.reason, d.refusal),
        (Verdict::Ineligible, Reason::NoPolicy, None)
    );
}

#[tokio::test]
async fn vm_candidates_refuse_the_virtual_node() {
    let s = state(vec![policy(None, BurstMode::Auto)]);
    let d = decide_for_virtual(&s, &web_pod(3600), 1).await.unwrap();
    assert_eq!(d.reason, Reason::VmCapacityAvailable);
    let msg = d.refusal.unwrap();
    assert!(
        msg.starts_with("spillway: vm-capacity-available, 1 VM node(s)"),
        "{msg}"
    );
}

#[tokio::test]
async fn young_pod_waits_with_time_left() {
    let s = state(vec![policy(None, BurstMode::Auto)]);
    let d = decide_for_virtual(&s, &web_pod(10), 0).await.unwrap();
    assert_eq!((d.verdict, d.reason), (Verdict::Wait, Reason::WaitingForVm));
    let msg = d.refusal.unwrap();
    assert!(
        msg.starts_with("spillway: waiting-for-vm, 20s left of spillAfter 30s"),
        "{msg}"
    );
}

#[tokio::test]
async fn pod_past_spill_after_bursts() {
    let s = state(vec![policy(None, BurstMode::Auto)]);
    let d = decide_for_virtual(&s, &web_pod(31), 0).await.unwrap();
    assert_eq!(
        (d.verdict, d.reason, d.refusal),
        (Verdict::Burst, Reason::SpillAfterElapsed, None)
    );
}

#[tokio::test]
async fn never_refuses_even_without_vms_and_always_bursts_at_once_only_without_vms() {
    let s = state(vec![policy(Some("web"), BurstMode::Never)]);
    let d = decide_for_virtual(&s, &web_pod(3600), 0).await.unwrap();
    assert_eq!(d.reason, Reason::PolicyNever);
    assert!(d.refusal.unwrap().starts_with("spillway: policy-never"));
    let s = state(vec![policy(Some("web"), BurstMode::Always)]);
    let d = decide_for_virtual(&s, &web_pod(0), 0).await.unwrap();
    assert_eq!(
        (d.verdict, d.reason, d.refusal),
        (Verdict::Burst, Reason::PolicyAlways, None)
    );
    assert_eq!(s.admissions.len(), 1, "a burst is counted in the ledger");
    // VMs come first: with a feasible VM the virtual node is refused and
    // nothing is held against the budget.
    let s = state(vec![policy(Some("web"), BurstMode::Always)]);
    let d = decide_for_virtual(&s, &web_pod(0), 3).await.unwrap();
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Vm, Reason::VmCapacityAvailable)
    );
    assert!(
        d.refusal
            .is_some_and(|m| m.contains("VMs are filled first"))
    );
    assert!(s.admissions.is_empty(), "no ledger admission for a VM pod");
}

#[tokio::test]
async fn budget_and_compatibility_refusals_carry_the_engine_reason() {
    let mut p = policy(None, BurstMode::Always);
    p.budget.max_pods = Some(0);
    let s = state(vec![p]);
    let d = decide_for_virtual(&s, &web_pod(0), 0).await.unwrap();
    assert_eq!((d.verdict, d.reason), (Verdict::Wait, Reason::BudgetPods));
    let s = state(vec![policy(None, BurstMode::Auto)]);
    let no_toleration = pod().ns("web").created(Timestamp::from_secs(0)).build();
    let d = decide_for_virtual(&s, &no_toleration, 0).await.unwrap();
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Ineligible, Reason::AciIncompatible)
    );
    assert!(d.refusal.unwrap().contains("does not tolerate"));
}

#[tokio::test]
async fn bad_quantity_in_the_request_pod_is_invalid_input() {
    let s = state(vec![policy(None, BurstMode::Auto)]);
    let p = pod().ns("web").cpu("a lot").tolerate_virtual().build();
    let e = decide_for_virtual(&s, &p, 0).await.unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn error_statuses_and_outcomes() {
    assert_eq!(
        ExtenderError::TooLarge { limit: 1 }.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(ExtenderError::TooLarge { limit: 1 }.outcome(), "too_large");
    let m = ExtenderError::Malformed {
        verb: "filter",
        message: "x".into(),
    };
    assert_eq!(
        (m.status(), m.outcome()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

/// A call past the deadline is answered 503 (`deadline`) before the
/// scheduler's timeout, and while the one permitted call is in progress
/// another is shed at once with 503 (`overloaded`), never queued.
#[tokio::test]
async fn calls_past_the_deadline_or_the_concurrency_limit_get_503() {
    use tower::ServiceExt;
    let st = state(vec![policy(None, BurstMode::Auto)])
        .with_limits(1, std::time::Duration::from_millis(200));
    let stalled = || {
        // A body that never arrives: the call holds its permit until the deadline.
        let body = axum::body::Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        axum::http::Request::post("/filter")
            .header("content-type", "application/json")
            .body(body)
            .unwrap_or_default()
    };
    let first = tokio::spawn(app(st.clone()).oneshot(stalled()));
    // Wait until the first call holds the only permit.
    for _ in 0..200 {
        if st.limits.permits.available_permits() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(st.limits.permits.available_permits(), 0);
    let shed = app(st.clone())
        .oneshot(stalled())
        .await
        .ok()
        .map(|r| r.status());
    assert_eq!(
        shed,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "second call shed"
    );
    let first = first.await.ok().and_then(Result::ok).map(|r| r.status());
    assert_eq!(
        first,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "first call cut at the deadline"
    );
    let text = st.metrics.render();
    assert!(
        text.contains("spillway_extender_requests_total{outcome=\"overloaded\",verb=\"filter\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spillway_extender_requests_total{outcome=\"deadline\",verb=\"filter\"} 1"),
        "{text}"
    );
    // The permit is back: a normal call is answered.
    let ok = app(st.clone())
        .oneshot(
            axum::http::Request::post("/filter")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    serde_json::json!({"Pod": web_pod(0), "NodeNames": ["vm-0", "aci"]})
                        .to_string(),
                ))
                .unwrap_or_default(),
        )
        .await
        .ok()
        .map(|r| r.status());
    assert_eq!(ok, Some(StatusCode::OK));
}

/// A Linux and a Windows virtual node (`--aci-windows`), no VM.
fn two_os_state() -> AppState {
    let nodes = vec![
        node("spillway-aci")
            .virtual_kubelet()
            .label("kubernetes.io/os", "linux")
            .build(),
        node("spillway-aci-windows")
            .virtual_kubelet()
            .label("kubernetes.io/os", "windows")
            .build(),
    ];
    let view = ClusterView::new(ClusterConfig::default());
    view.replace(&nodes, &[] as &[Pod], Timestamp::from_secs(NOW));
    let set = PolicySet::new(vec![policy(Some("web"), BurstMode::Always)]).unwrap();
    AppState::new(
        PolicySource::Fixed(Arc::new(set)),
        Arc::new(view),
        Arc::new(Metrics::new()),
    )
    .with_clock(|| Timestamp::from_secs(NOW))
}

#[tokio::test]
async fn a_pod_is_let_onto_the_virtual_node_of_its_os_only() {
    let s = two_os_state();
    let names = || {
        Some(vec![
            "spillway-aci".to_string(),
            "spillway-aci-windows".to_string(),
        ])
    };
    let windows = pod()
        .ns("web")
        .name("iis")
        .tolerate_virtual()
        .node_selector("kubernetes.io/os", "windows")
        .created(Timestamp::from_secs(NOW))
        .build();
    let r = super::logic::filter(
        &s,
        ExtenderArgs {
            pod: Some(windows),
            nodes: None,
            node_names: names(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.node_names, Some(vec!["spillway-aci-windows".to_string()]));
    let why = &r.failed_and_unresolvable_nodes["spillway-aci"];
    assert!(
        why.contains("the pod runs windows; virtual node spillway-aci runs linux"),
        "{why}"
    );
    // A pod that names no OS is a Linux pod: never the Windows node.
    for linux in [
        web_pod(0),
        pod()
            .ns("web")
            .name("l")
            .tolerate_virtual()
            .node_selector("kubernetes.io/os", "linux")
            .created(Timestamp::from_secs(NOW))
            .build(),
    ] {
        let r = super::logic::filter(
            &s,
            ExtenderArgs {
                pod: Some(linux),
                nodes: None,
                node_names: names(),
            },
        )
        .await
        .unwrap();
        assert_eq!(r.node_names, Some(vec!["spillway-aci".to_string()]));
        assert!(r.failed_and_unresolvable_nodes["spillway-aci-windows"].contains("runs windows"));
    }
    assert_eq!(super::logic::pod_os(&web_pod(0)), "linux");
}
