use super::*;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use serde_json::json;

fn spec(success: u32, failure: u32, delay: u64, period: u64) -> ProbeSpec {
    ProbeSpec {
        action: Action::TcpSocket {
            host: None,
            port: 80,
        },
        initial_delay: Duration::from_secs(delay),
        period: Duration::from_secs(period),
        timeout: Duration::from_secs(1),
        success_threshold: success,
        failure_threshold: failure,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------
// The worker's state machine (worker.go's doProbe), on a fake clock.

#[test]
fn readiness_starts_not_ready_and_turns_ready_on_the_first_success() {
    let t0 = Instant::now();
    let mut w = Worker::new(ProbeKind::Readiness, spec(1, 3, 0, 10), t0);
    assert_eq!(w.result(), Some(false), "readiness starts as failure");
    assert!(w.tick(t0, t0, true), "the first probe runs at once");
    assert!(!w.record(false), "still not ready: no flip");
    assert!(!w.tick(t0 + secs(9), t0, true), "not before the period");
    assert!(w.tick(t0 + secs(10), t0, true));
    assert!(w.record(true), "the first success flips it");
    assert_eq!(w.result(), Some(true));
}

#[test]
fn failure_threshold_counts_consecutive_failures_only() {
    let t0 = Instant::now();
    let mut w = Worker::new(ProbeKind::Readiness, spec(1, 3, 0, 1), t0);
    assert!(w.record(true));
    assert!(!w.record(false));
    assert!(!w.record(false));
    assert!(!w.record(true), "a success breaks the run");
    assert!(!w.record(false));
    assert!(!w.record(false));
    assert_eq!(w.result(), Some(true), "two failures in a row are below 3");
    assert!(w.record(false), "the third in a row flips it");
    assert_eq!(w.result(), Some(false));
}

#[test]
fn success_threshold_needs_consecutive_successes() {
    let t0 = Instant::now();
    let mut w = Worker::new(ProbeKind::Readiness, spec(2, 1, 0, 1), t0);
    assert!(!w.record(true));
    assert!(!w.record(false), "already failing: no flip");
    assert!(!w.record(true));
    assert!(w.record(true), "two in a row");
    assert!(
        w.record(false),
        "failureThreshold 1: one failure flips back"
    );
}

#[test]
fn initial_delay_counts_from_the_container_start_and_probes_on_period_ticks() {
    let t0 = Instant::now();
    // The container started 2 s before the worker; delay 5 s, period 2 s.
    let since = t0;
    let start = t0 + secs(2);
    let mut w = Worker::new(ProbeKind::Readiness, spec(1, 3, 5, 2), start);
    assert!(!w.tick(start, since, true), "2 s after start");
    assert!(!w.tick(start + secs(2), since, true), "4 s after start");
    assert!(w.tick(start + secs(4), since, true), "6 s after start");
    assert_eq!(w.next_tick(), start + secs(6));
    // A late wake-up skips the ticks it missed (no burst of probes).
    assert!(w.tick(start + secs(11), since, true));
    assert_eq!(w.next_tick(), start + secs(12));
}

#[test]
fn startup_gates_readiness_and_stops_once_started() {
    let t0 = Instant::now();
    let mut startup = Worker::new(ProbeKind::Startup, spec(1, 3, 0, 1), t0);
    let mut ready = Worker::new(ProbeKind::Readiness, spec(1, 3, 0, 1), t0);
    assert_eq!(startup.result(), None, "startup starts unknown");
    assert!(!ready.tick(t0, t0, false), "readiness waits for startup");
    assert!(startup.tick(t0, t0, false));
    assert!(!startup.record(false), "one failure is below the threshold");
    assert_eq!(startup.result(), None);
    assert!(startup.tick(t0 + secs(1), t0, false));
    assert!(startup.record(true));
    assert!(
        !startup.tick(t0 + secs(2), t0, true),
        "no more startup probes once started"
    );
    assert!(ready.tick(t0 + secs(2), t0, true));
    assert!(ready.record(true));
}

#[test]
fn startup_failures_past_the_threshold_keep_the_container_not_started() {
    let t0 = Instant::now();
    let mut startup = Worker::new(ProbeKind::Startup, spec(1, 2, 0, 1), t0);
    assert!(!startup.record(false));
    assert!(startup.record(false), "unknown → failure is a change");
    assert_eq!(startup.result(), Some(false));
    assert!(
        startup.tick(t0 + secs(1), t0, false),
        "still probed: ACI restarts the container, not spillway"
    );
}

// ---------------------------------------------------------------------------
// Specs from the pod.

fn container(v: serde_json::Value) -> k8s::Container {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("container json: {e}"))
}

#[test]
fn probe_specs_take_the_kubelets_defaults_and_resolve_named_ports() {
    let c = container(json!({
        "name": "app", "image": "app:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready", "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}},
        "startupProbe": {"tcpSocket": {"port": "nope"}, "periodSeconds": 2, "failureThreshold": 30}
    }));
    let plans = plan(&k8s::Pod {
        spec: Some(k8s::PodSpec {
            containers: vec![c],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(plans.len(), 1);
    let r = plans[0]
        .readiness
        .clone()
        .unwrap_or_else(|| panic!("readiness"));
    assert_eq!(
        r.action,
        Action::HttpGet {
            scheme: Scheme::Https,
            host: None,
            path: "/ready".into(),
            port: 8080,
            headers: vec![("X-Probe".into(), "yes".into())],
        }
    );
    assert_eq!(
        (
            r.period,
            r.timeout,
            r.success_threshold,
            r.failure_threshold
        ),
        (secs(10), secs(1), 1, 3)
    );
    let s = plans[0]
        .startup
        .clone()
        .unwrap_or_else(|| panic!("startup"));
    assert_eq!(
        s.action,
        Action::Broken {
            message: "couldn't find port: nope in container app".into()
        }
    );
    assert_eq!((s.period, s.failure_threshold), (secs(2), 30));
    assert!(s.runs(), "a broken probe runs, and fails, as the kubelet's");
}

#[test]
fn exec_and_grpc_probes_are_not_run() {
    let c = container(json!({
        "name": "app", "image": "app:1",
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}},
        "startupProbe": {"grpc": {"port": 9090}}
    }));
    let r = ProbeSpec::new(
        ProbeKind::Readiness,
        c.readiness_probe
            .as_ref()
            .unwrap_or_else(|| panic!("probe")),
        &c,
    );
    assert!(!r.runs());
    assert!(
        matches!(&r.action, Action::NotRun { note } if note.contains("exec app.readinessProbe is not run"))
    );
    let s = ProbeSpec::new(
        ProbeKind::Startup,
        c.startup_probe.as_ref().unwrap_or_else(|| panic!("probe")),
        &c,
    );
    assert!(
        matches!(&s.action, Action::NotRun { note } if note.contains("grpc app.startupProbe is not run"))
    );
}

// ---------------------------------------------------------------------------
// Merging results into the status.

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap_or_else(|e| panic!("{e}")))
}

fn later() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap_or_else(|e| panic!("{e}")))
}

fn probed_pod(readiness: serde_json::Value) -> k8s::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "web", "uid": "u1"},
        "spec": {"containers": [
            {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}],
             "readinessProbe": readiness},
            {"name": "side", "image": "side:1"}
        ]}
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

/// The status mapped from a Running group: every container running and ready.
fn running_status(ip: Option<&str>) -> k8s::PodStatus {
    let cs = |name: &str| k8s::ContainerStatus {
        name: name.into(),
        ready: true,
        started: Some(true),
        state: Some(k8s::ContainerState {
            running: Some(k8s::ContainerStateRunning { started_at: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cond = |t: &str| k8s::PodCondition {
        type_: t.into(),
        status: "True".into(),
        last_transition_time: Some(now()),
        ..Default::default()
    };
    k8s::PodStatus {
        phase: Some("Running".into()),
        pod_ip: ip.map(str::to_string),
        container_statuses: Some(vec![cs("app"), cs("side")]),
        conditions: Some(vec![
            cond("PodScheduled"),
            cond("ContainersReady"),
            cond("Ready"),
        ]),
        ..Default::default()
    }
}

fn condition<'a>(s: &'a k8s::PodStatus, t: &str) -> &'a k8s::PodCondition {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

fn http_readiness() -> serde_json::Value {
    json!({"httpGet": {"port": 8080, "path": "/healthz"}})
}

#[test]
fn a_probed_container_is_not_ready_until_its_probe_says_so() {
    let pod = probed_pod(http_readiness());
    let mut s = running_status(Some("127.0.0.1"));
    merge(&pod, None, &mut s, None, &later());
    let cs = s.container_statuses.clone().unwrap_or_default();
    assert!(!cs[0].ready, "no result yet");
    assert!(
        cs[1].ready,
        "a container without probes stays ready when running"
    );
    for t in ["ContainersReady", "Ready"] {
        let c = condition(&s, t);
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            c.message.as_deref(),
            Some("containers with unready status: [app]")
        );
        assert_eq!(c.last_transition_time, Some(later()));
    }
    assert_eq!(condition(&s, "PodScheduled").status, "True");

    let ready: PodReadiness = [(
        "app".to_string(),
        ContainerReadiness {
            started: true,
            ready: true,
        },
    )]
    .into();
    let current = running_status(Some("127.0.0.1"));
    let mut s = running_status(Some("127.0.0.1"));
    merge(&pod, Some(&current), &mut s, Some(&ready), &later());
    assert!(s.container_statuses.iter().flatten().all(|c| c.ready));
    let c = condition(&s, "Ready");
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", None));
    assert_eq!(c.message, None);
    assert_eq!(
        c.last_transition_time,
        Some(now()),
        "unchanged: its transition time is kept"
    );
}

#[test]
fn before_the_first_round_the_same_container_keeps_its_readiness() {
    let pod = probed_pod(http_readiness());
    let at = |t: Time| {
        let mut s = running_status(Some("127.0.0.1"));
        for c in s.container_statuses.iter_mut().flatten() {
            c.state = Some(k8s::ContainerState {
                running: Some(k8s::ContainerStateRunning {
                    started_at: Some(t.clone()),
                }),
                ..Default::default()
            });
        }
        s
    };
    // A new leader, no result yet: the Ready pod stays Ready.
    let current = at(now());
    let mut s = at(now());
    merge(&pod, Some(&current), &mut s, None, &later());
    assert_eq!(condition(&s, "Ready").status, "True");
    // A restarted container (another start time) starts not ready.
    let mut s = at(later());
    merge(&pod, Some(&current), &mut s, None, &later());
    assert_eq!(condition(&s, "Ready").status, "False");
    // A result, once in, decides.
    let failing: PodReadiness = [(
        "app".to_string(),
        ContainerReadiness {
            started: true,
            ready: false,
        },
    )]
    .into();
    let mut s = at(now());
    merge(&pod, Some(&current), &mut s, Some(&failing), &later());
    assert_eq!(condition(&s, "Ready").status, "False");
}

#[test]
fn a_container_not_started_is_neither_started_nor_ready() {
    let pod: k8s::Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "web", "uid": "u1"},
        "spec": {"containers": [
            {"name": "app", "image": "app:1",
             "startupProbe": {"tcpSocket": {"port": 8080}}}
        ]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = running_status(Some("127.0.0.1"));
    if let Some(c) = s.container_statuses.as_mut() {
        c.truncate(1);
    }
    let results: PodReadiness = [(
        "app".to_string(),
        ContainerReadiness {
            started: false,
            ready: false,
        },
    )]
    .into();
    merge(&pod, None, &mut s, Some(&results), &later());
    let cs = &s.container_statuses.clone().unwrap_or_default()[0];
    assert_eq!((cs.started, cs.ready), (Some(false), false));
    assert_eq!(condition(&s, "Ready").status, "False");
}

#[test]
fn exec_probes_and_pods_without_an_ip_are_ready_when_running_and_say_why() {
    let pod = probed_pod(json!({"exec": {"command": ["true"]}}));
    let mut s = running_status(Some("127.0.0.1"));
    merge(&pod, None, &mut s, None, &later());
    let c = condition(&s, "Ready");
    assert_eq!(c.status, "True");
    assert!(
        c.message
            .as_deref()
            .is_some_and(|m| m.contains("container app: the exec app.readinessProbe is not run")),
        "{:?}",
        c.message
    );

    let pod = probed_pod(http_readiness());
    let mut s = running_status(None);
    merge(&pod, None, &mut s, None, &later());
    let c = condition(&s, "Ready");
    assert_eq!(c.status, "True");
    assert!(
        c.message
            .as_deref()
            .is_some_and(|m| m.contains("the pod has no IP")),
        "{:?}",
        c.message
    );
}

#[test]
fn pods_without_probes_or_not_running_are_left_alone() {
    let pod: k8s::Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "web", "uid": "u1"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let before = running_status(Some("127.0.0.1"));
    let mut s = before.clone();
    merge(&pod, None, &mut s, None, &later());
    assert_eq!(s, before);
    let pod = probed_pod(http_readiness());
    let mut pending = running_status(Some("127.0.0.1"));
    pending.phase = Some("Pending".into());
    let before = pending.clone();
    merge(&pod, None, &mut pending, None, &later());
    assert_eq!(pending, before);
}

// ---------------------------------------------------------------------------
// Probes against real loopback listeners.

async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn http(path: &str, port: u16, headers: &[(&str, &str)]) -> Action {
    Action::HttpGet {
        scheme: Scheme::Http,
        host: None,
        path: path.into(),
        port,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn redirect(to: String) -> (StatusCode, [(header::HeaderName, String); 1]) {
    (StatusCode::FOUND, [(header::LOCATION, to)])
}

#[tokio::test]
async fn http_probes_follow_the_kubelets_rules() {
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/not-modified", get(|| async { StatusCode::NOT_MODIFIED }))
        .route(
            "/headers",
            get(|h: HeaderMap| async move {
                let ua = h.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
                let accept = h.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let custom = h.get("x-probe").and_then(|v| v.to_str().ok());
                if ua == Some(USER_AGENT) && accept == Some("*/*") && custom == Some("yes") {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let port = serve(app).await;
    let same = format!("http://127.0.0.1:{port}");
    let other = format!("http://localhost:{port}");
    let app = axum::Router::new()
        .route(
            "/to-fail-same-host",
            get({
                let to = format!("{same}/fail");
                move || async move { redirect(to) }
            }),
        )
        .route(
            "/to-fail-other-host",
            get({
                let to = format!("{other}/fail");
                move || async move { redirect(to) }
            }),
        );
    let redirector = serve(app).await;
    let client = http_client();
    let t = Duration::from_secs(2);
    let ip = "127.0.0.1";
    let run = |a: Action| {
        let client = &client;
        async move { run_action(client, &a, ip, t).await }
    };

    assert!(run(http("/ok", port, &[])).await.ok);
    assert!(
        run(http("ok", port, &[])).await.ok,
        "a path without / is rooted"
    );
    let o = run(http("/fail", port, &[])).await;
    assert!(!o.ok);
    assert_eq!(o.message, "HTTP probe failed with statuscode: 500");
    assert!(
        run(http("/not-modified", port, &[])).await.ok,
        "3xx is success"
    );
    assert!(!run(http("/headers", port, &[])).await.ok);
    assert!(
        run(http("/headers", port, &[("X-Probe", "yes")])).await.ok,
        "kube-probe User-Agent, Accept */* and the probe's headers"
    );
    // A redirect to the same host is followed (and its 500 fails) …
    assert!(!run(http("/to-fail-same-host", redirector, &[])).await.ok);
    // … one to another host is not: its 302 counts as success ("same
    // host" is the host name, as Go's URL.Hostname()).
    let cross = Action::HttpGet {
        scheme: Scheme::Http,
        host: Some("127.0.0.1".into()),
        path: "/to-fail-other-host".into(),
        port: redirector,
        headers: vec![],
    };
    assert!(run(cross).await.ok, "not followed to localhost");

    let o = run_action(
        &client,
        &http("/slow", port, &[]),
        ip,
        Duration::from_millis(200),
    )
    .await;
    assert!(!o.ok);
    assert!(o.message.contains("timed out"), "{}", o.message);

    // Nothing listens on port 1.
    let o = run(http("/ok", 1, &[])).await;
    assert!(!o.ok);
    assert!(
        o.message.starts_with("Get \"http://127.0.0.1:1/ok\""),
        "{}",
        o.message
    );
}

#[tokio::test]
async fn http_probes_stop_after_ten_redirects() {
    let app = axum::Router::new().route(
        "/loop/{n}",
        get(
            |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                redirect(format!("/loop/{}", n + 1))
            },
        ),
    );
    let port = serve(app).await;
    let o = run_action(
        &http_client(),
        &http("/loop/0", port, &[]),
        "127.0.0.1",
        secs(2),
    )
    .await;
    assert!(!o.ok);
    assert!(
        o.message.contains("stopped after 10 redirects"),
        "{}",
        o.message
    );
}

#[tokio::test]
async fn tcp_probes_connect_or_fail() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let client = http_client();
    let tcp = Action::TcpSocket { host: None, port };
    assert!(run_action(&client, &tcp, "127.0.0.1", secs(1)).await.ok);
    drop(listener);
    let o = run_action(&client, &tcp, "127.0.0.1", secs(1)).await;
    assert!(!o.ok);
    assert!(
        o.message.starts_with(&format!("dial tcp 127.0.0.1:{port}")),
        "{}",
        o.message
    );
}

// ---------------------------------------------------------------------------
// The prober: one worker per running pod, gone when the pod is.

#[tokio::test]
async fn workers_report_flips_and_are_gone_once_stopped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let pod = probed_pod(json!({
        "tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1
    }));
    let metrics = Arc::new(Metrics::new());
    let (tx, mut rx) = mpsc::channel(8);
    let mut prober = Prober::new(4, Some(metrics.clone()), tx);
    prober.track(&pod, &running_status(Some("127.0.0.1")));
    assert_eq!(prober.pods(), 1);
    let who = tokio::time::timeout(secs(5), rx.recv()).await;
    let who = who
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no flip reported"));
    assert_eq!(who.uid, "u1");
    assert_eq!(
        prober.readiness("u1").and_then(|r| r.get("app").copied()),
        Some(ContainerReadiness {
            started: true,
            ready: true
        })
    );
    assert_eq!(metrics.probe_workers.get(), 1);
    // The same target keeps the worker (and its results).
    prober.track(&pod, &running_status(Some("127.0.0.1")));
    assert!(prober.readiness("u1").is_some_and(|r| r["app"].ready));

    drop(listener);
    let who = tokio::time::timeout(secs(5), rx.recv()).await;
    assert!(who.ok().flatten().is_some(), "the failure is reported");
    assert_eq!(prober.readiness("u1").map(|r| r["app"].ready), Some(false));
    let successes = metrics
        .probe_results
        .with_label_values(&["readiness", "success"])
        .get();
    assert!(successes >= 1);

    // Not running any more: the worker stops, its task is dropped.
    let mut pending = running_status(Some("127.0.0.1"));
    pending.phase = Some("Pending".into());
    prober.track(&pod, &pending);
    assert_eq!(prober.pods(), 0);
    assert!(prober.readiness("u1").is_none());
    for _ in 0..100 {
        if metrics.probe_workers.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.probe_workers.get(), 0, "the worker's task is gone");

    // Dropping the prober (lost leadership) ends every worker.
    prober.track(&pod, &running_status(Some("127.0.0.1")));
    for _ in 0..100 {
        if metrics.probe_workers.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.probe_workers.get(), 1);
    drop(prober);
    for _ in 0..100 {
        if metrics.probe_workers.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.probe_workers.get(), 0);
}

#[tokio::test]
async fn https_probes_skip_certificate_verification() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Self-signed, for another name and address: verification would fail twice.
    let tls = crate::kubelet::self_signed_tls_config("10.9.9.9", "elsewhere.example")
        .unwrap_or_else(|e| panic!("certificate: {e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let https = Action::HttpGet {
        scheme: Scheme::Https,
        host: None,
        path: "/healthz".into(),
        port,
        headers: vec![],
    };
    let o = run_action(&http_client(), &https, "127.0.0.1", secs(2)).await;
    assert!(o.ok, "{}", o.message);
    // The same listener over plain HTTP is no answer.
    let o = run_action(
        &http_client(),
        &http("/healthz", port, &[]),
        "127.0.0.1",
        secs(2),
    )
    .await;
    assert!(!o.ok);
}
