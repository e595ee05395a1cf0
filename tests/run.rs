//! `spillway run` against the test API server: one process serves the
//! extender and, as the Lease holder, runs the autoscaler; a standby serves
//! the extender but writes nothing, and takes over when the leader stops.

mod support;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use spillway::cluster::build::{node, pod};
use spillway::metrics::Metrics;
use spillway::policy::reload::PolicyStore;
use spillway::run::{RunCommand, run_with};
use spillway::units::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use support::TestApiServer;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: RunCommand,
}

const WAIT: Duration = Duration::from_secs(20);

async fn eventually(check: impl FnMut() -> bool) -> bool {
    support::poll_until(WAIT, check).await
}

fn policies_dir() -> std::path::PathBuf {
    support::policy_dir(
        "run-policies",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec:\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n  drainBack: { enabled: true, after: 5m }\n",
    )
}

fn seed(srv: &TestApiServer) {
    support::install_placeholder_priority_class(srv);
    let now = Timestamp::now_wall();
    srv.insert(&node("vm-0").pool("user").build());
    srv.insert(&node("virtual-node-aci-linux").virtual_kubelet().build());
    let mut filler = pod()
        .ns("web")
        .name("filler")
        .cpu("4")
        .memory("1Gi")
        .on_node("vm-0")
        .build();
    filler.metadata.uid = Some("uid-filler".into());
    srv.insert(&filler);
    let mut due = pod()
        .ns("web")
        .name("due")
        .cpu("1")
        .memory("1Gi")
        .tolerate_virtual()
        .unschedulable_since(Timestamp::from_millis(now.millis() - 60_000))
        .build();
    due.metadata.uid = Some("uid-due".into());
    srv.insert(&due);
    for name in ["a", "b"] {
        let mut p = pod()
            .ns("web")
            .name(name)
            .cpu("1")
            .memory("1Gi")
            .tolerate_virtual()
            .on_node("virtual-node-aci-linux")
            .owned_by("ReplicaSet", &format!("rs-{name}"))
            .build();
        p.metadata.uid = Some(format!("uid-{name}"));
        srv.insert(&p);
    }
}

struct Instance {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), spillway::run::RunError>>,
}

async fn start(srv: &TestApiServer, identity: &str) -> Instance {
    start_with(srv, identity, &[]).await
}

/// A replica with the tests' usual flags plus `extra`.
async fn start_with(srv: &TestApiServer, identity: &str, extra: &[&str]) -> Instance {
    let dir = policies_dir();
    let mut argv = vec![
        "spillway",
        "--policies",
        dir.to_str().unwrap_or_default(),
        "--identity",
        identity,
        "--lease-seconds",
        "3",
        "--tick-ms",
        "200",
        "--view-refresh-ms",
        "50",
    ];
    argv.extend_from_slice(extra);
    let args = Args::parse_from(argv);
    let metrics = Arc::new(Metrics::new());
    let store =
        Arc::new(PolicyStore::open(&dir, metrics.clone()).unwrap_or_else(|e| panic!("{e}")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = srv.kube_config();
    let task = tokio::spawn(async move {
        run_with(config, &args.run, store, metrics, listener, async move {
            let _ = rx.await;
        })
        .await
    });
    Instance {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf))
}

fn holder(srv: &TestApiServer) -> Option<String> {
    srv.get::<Lease>("spillway-system", "spillway-leader")?
        .spec?
        .holder_identity
}

fn placeholder_creates(srv: &TestApiServer) -> usize {
    srv.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces/spillway-system/pods")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_acts_the_standby_serves_and_takes_over() {
    let srv = TestApiServer::start().await;
    seed(&srv);
    let mut a = start(&srv, "replica-a").await;
    assert!(
        eventually(|| holder(&srv).as_deref() == Some("replica-a")).await,
        "a leads"
    );
    let mut b = start(&srv, "replica-b").await;

    // The leader nudged the pending pod and placed one placeholder per burst pod.
    assert!(
        eventually(|| {
            let due: Option<Pod> = srv.get("web", "due");
            due.and_then(|p| p.metadata.annotations)
                .is_some_and(|a| a.contains_key("spillway.io/burst-at"))
        })
        .await
    );
    assert!(eventually(|| srv.list::<Pod>(Some("spillway-system")).len() == 2).await);

    // Both replicas serve the extender and metrics once synced.
    for inst in [&a, &b] {
        let mut ready = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if get(inst.addr, "/readyz")
                .await
                .is_some_and(|(c, _)| c == 200)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "/readyz on {}", inst.addr);
    }
    let (code, metrics) = get(a.addr, "/metrics").await.unwrap_or_default();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("spillway_burst_pods{namespace=\"web\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("spillway_ready 1"));

    // The standby wrote nothing: still exactly two placeholder creations.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(placeholder_creates(&srv), 2);
    assert_eq!(holder(&srv).as_deref(), Some("replica-a"));

    // The leader stops and releases the lease; the standby takes over.
    if let Some(stop) = a.stop.take() {
        let _ = stop.send(());
    }
    let done = tokio::time::timeout(WAIT, &mut a.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    assert!(
        eventually(|| holder(&srv).as_deref() == Some("replica-b")).await,
        "b takes over: {:?}",
        holder(&srv)
    );
    // The new leader finds the placeholders and does not duplicate them.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(srv.list::<Pod>(Some("spillway-system")).len(), 2);
    if let Some(stop) = b.stop.take() {
        let _ = stop.send(());
    }
    let done = tokio::time::timeout(WAIT, &mut b.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}

/// Kills the child process when dropped (a failed assertion must not leak it).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_finds_the_api_server_through_kubeconfig_and_context() {
    let srv = TestApiServer::start().await;
    seed(&srv);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-kubeconfig");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("config");
    // The current context points nowhere; --context picks the test server.
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\nclusters:\n- name: test\n  cluster: {{ server: \"{}\" }}\n- name: nowhere\n  cluster: {{ server: \"http://127.0.0.1:1\" }}\ncontexts:\n- name: test\n  context: {{ cluster: test, user: u }}\n- name: elsewhere\n  context: {{ cluster: nowhere, user: u }}\nusers:\n- name: u\n  user: {{}}\n",
            srv.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--context", "test", "--identity", "from-kubeconfig"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--policies"])
        .arg(policies_dir())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let _child = Child(child);
    assert!(
        eventually(|| holder(&srv).as_deref() == Some("from-kubeconfig")).await,
        "spillway run did not take the lease through --kubeconfig/--context"
    );
}

#[test]
fn an_unreadable_kubeconfig_is_bad_input_naming_the_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args([
            "run",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--policies",
        ])
        .arg(policies_dir())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
}

/// Requests that change something: anything but GET (get, list, watch).
fn writes(srv: &TestApiServer) -> Vec<String> {
    srv.requests()
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn metrics_of(srv_metrics: &Option<(u16, String)>) -> &str {
    srv_metrics.as_ref().map_or("", |(_, body)| body.as_str())
}

/// `--dry-run` decides like a leader (no Lease: taking one is a write) and
/// writes nothing at all: not one request but GET reaches the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_anywhere() {
    let srv = TestApiServer::start().await;
    seed(&srv);
    let mut inst = start_with(&srv, "dry", &["--dry-run"]).await;
    // It decides: the pending pod's verdict is published by the autoscaler
    // pass, and the pod is re-read before the nudge it would make.
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = get(inst.addr, "/metrics").await;
        if metrics_of(&last)
            .contains("spillway_pending_pods{namespace=\"web\",verdict=\"burst\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics_of(&last).contains("spillway_pending_pods{namespace=\"web\",verdict=\"burst\"} 1"),
        "{}",
        metrics_of(&last)
    );
    assert!(
        eventually(|| srv
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/api/v1/namespaces/web/pods/due"))
        .await,
        "the dry-run autoscaler re-read the pod it would nudge"
    );
    // A few more seconds of passes (tick 200 ms), watching for any write.
    let window = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < window {
        assert_eq!(writes(&srv), Vec::<String>::new());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(writes(&srv), Vec::<String>::new());
    assert!(holder(&srv).is_none(), "no leader Lease");
    assert!(srv.list::<Pod>(Some("spillway-system")).is_empty());
    if let Some(stop) = inst.stop.take() {
        let _ = stop.send(());
    }
    let done = tokio::time::timeout(WAIT, &mut inst.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    assert_eq!(writes(&srv), Vec::<String>::new(), "not even on shutdown");
}

/// The embedded virtual node writes by nature (node, Lease, pod status,
/// container groups): `--dry-run --aci ...` is refused up front, exit 64.
#[test]
fn a_dry_run_with_the_embedded_provider_is_refused() {
    for backend in ["emulator", "azure"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["run", "--dry-run", "--aci", backend])
            .args(["--cluster-id", "c", "--aci-subscription", "s"])
            .args(["--aci-resource-group", "rg", "--policies"])
            .arg(policies_dir())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(64), "--aci {backend}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "--dry-run cannot be combined with --aci {backend}"
            )),
            "{err}"
        );
    }
}

/// A replica that loses the Lease forgets the gauges only the leader sets,
/// so they are not summed with the new leader's nor alerted on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_lease_resets_the_leader_gauges() {
    let srv = TestApiServer::start().await;
    seed(&srv);
    let mut a = start(&srv, "replica-a").await;
    assert!(eventually(|| holder(&srv).as_deref() == Some("replica-a")).await);
    let leader_gauges = |m: &str| {
        m.contains("spillway_burst_pods{namespace=\"web\"} 2")
            && m.contains("spillway_pending_pods{namespace=\"web\"")
    };
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !leader_gauges(metrics_of(&last)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = get(a.addr, "/metrics").await;
    }
    assert!(leader_gauges(metrics_of(&last)), "{}", metrics_of(&last));

    // Another holder takes the Lease and keeps it fresh (each poll renews it).
    let intrude = || {
        srv.modify::<Lease>("spillway-system", "spillway-leader", |l| {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some("intruder".into());
            spec.lease_duration_seconds = Some(3600);
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        });
    };
    let reset = |m: &str| {
        m.contains("spillway_ready 1")
            && !m.contains("spillway_burst_pods{")
            && !m.contains("spillway_pending_pods{")
            && !m.contains("spillway_budget_utilization_ratio{")
            && !m.contains("spillway_pending_over_max_vm_wait_pods{")
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !reset(metrics_of(&last)) {
        intrude();
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = get(a.addr, "/metrics").await;
    }
    assert!(reset(metrics_of(&last)), "{}", metrics_of(&last));
    assert_eq!(holder(&srv).as_deref(), Some("intruder"));
    if let Some(stop) = a.stop.take() {
        let _ = stop.send(());
    }
    let _ = tokio::time::timeout(WAIT, &mut a.task).await;
}

/// With a custom `--node-name` the embedded virtual node's pods are burst
/// pods for every step that compares node names: they get placeholders and
/// a deletion cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_node_name_is_a_virtual_node_the_autoscaler_acts_on() {
    const CUSTOM: &str = "burst-aci-1";
    let srv = TestApiServer::builder()
        .pod_deletion(support::PodDeletion::Kubelet)
        .start()
        .await;
    support::install_placeholder_priority_class(&srv);
    srv.insert(&node("vm-0").pool("user").build());
    for name in ["a", "b"] {
        let mut p = pod()
            .ns("web")
            .name(name)
            .cpu("1")
            .memory("1Gi")
            .tolerate_virtual()
            .on_node(CUSTOM)
            .owned_by("ReplicaSet", &format!("rs-{name}"))
            .build();
        p.metadata.uid = Some(format!("uid-{name}"));
        srv.insert(&p);
    }
    let mut inst = start_with(
        &srv,
        "custom",
        &[
            "--aci",
            "emulator",
            "--node-name",
            CUSTOM,
            "--kubelet-listen",
            "127.0.0.1:0",
            "--node-ip",
            "127.0.0.1",
        ],
    )
    .await;
    assert!(
        eventually(|| srv
            .get::<k8s_openapi::api::core::v1::Node>("", CUSTOM)
            .is_some())
        .await,
        "the virtual node registers under its custom name"
    );
    // The first placeholders need the lease, a synced view and a pass: on a
    // loaded 2-core CI machine that once took longer than WAIT.
    assert!(
        support::poll_until(2 * WAIT, || srv.list::<Pod>(Some("spillway-system")).len()
            == 2)
        .await,
        "one placeholder per burst pod: {:?}; lease holder {:?}",
        srv.list::<Pod>(Some("spillway-system")),
        holder(&srv)
    );
    let cost = |name: &str| {
        srv.get::<Pod>("web", name)
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned())
    };
    assert!(
        eventually(|| ["a", "b"]
            .iter()
            .all(|n| cost(n).as_deref() == Some("-1000")))
        .await,
        "deletion cost: {:?} {:?}",
        cost("a"),
        cost("b")
    );
    if let Some(stop) = inst.stop.take() {
        let _ = stop.send(());
    }
    let _ = tokio::time::timeout(WAIT, &mut inst.task).await;
}

/// The `extender` role reports `spillway_ready 1` once its view has synced
/// (`SpillwayNotReady` would otherwise fire for every extender replica).
#[tokio::test]
async fn the_extender_role_reports_ready_once_synced() {
    let srv = TestApiServer::start().await;
    seed(&srv);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("extender-kubeconfig");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster: {{ server: \"{}\" }}\ncontexts:\n- name: test\n  context: {{ cluster: test, user: u }}\nusers:\n- name: u\n  user: {{}}\n",
            srv.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["extender", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--listen", &addr.to_string(), "--policies"])
        .arg(policies_dir())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let _child = Child(child);
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !metrics_of(&last).contains("spillway_ready 1")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = get(addr, "/metrics").await;
    }
    assert!(
        metrics_of(&last).contains("spillway_ready 1"),
        "{}",
        metrics_of(&last)
    );
}

/// `--kube-timeout-secs` bounds request/response calls; watches run on a
/// client without it, so a quiet watch is not cut (on the calls' client it
/// would be, which is why watches have their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_but_quiet_watches_stay_open() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{Api, WatchEvent, WatchParams};
    // No bookmarks within the test: a watch with nothing to report is silent.
    let srv = TestApiServer::builder()
        .bookmark_interval(Duration::from_secs(600))
        .start()
        .await;
    seed(&srv);
    let args = Args::parse_from(["spillway", "--kube-timeout-secs", "1"]);
    let clients = args
        .run
        .kube
        .clients(srv.kube_config())
        .unwrap_or_else(|e| panic!("{e}"));

    // A GET whose answer never comes fails instead of hanging its caller.
    srv.inject(
        support::Fault::latency("/api/v1/namespaces/web/pods/due", Duration::from_secs(300))
            .method(axum::http::Method::GET)
            .times(100),
    );
    let pods: Api<Pod> = Api::namespaced(clients.calls_no_retry.clone(), "web");
    let hung = tokio::time::timeout(WAIT, pods.get("due")).await;
    assert!(matches!(hung, Ok(Err(_))), "{hung:?}");
    srv.clear_faults();

    let rv = srv.resource_version().to_string();
    let watch = |client: kube::Client| {
        let rv = rv.clone();
        async move {
            let api: Api<Pod> = Api::namespaced(client, "web");
            api.watch(&WatchParams::default().timeout(120), &rv)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .boxed()
        }
    };
    let mut quiet = watch(clients.watches.clone()).await;
    let mut cut = watch(clients.calls.clone()).await;
    // Three times the timeout of silence: the watch client's stream stays
    // open, the calls client's is cut by its read timeout.
    let silent = tokio::time::timeout(Duration::from_secs(3), quiet.try_next()).await;
    assert!(silent.is_err(), "the watch ended in silence: {silent:?}");
    let ended = tokio::time::timeout(WAIT, cut.try_next()).await;
    assert!(matches!(ended, Ok(Err(_)) | Ok(Ok(None))), "{ended:?}");
    // ... and still delivers what happens next.
    srv.modify::<Pod>("web", "due", |p| {
        p.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("seen".into(), "yes".into());
    });
    let next = tokio::time::timeout(WAIT, quiet.try_next()).await;
    assert!(
        matches!(next, Ok(Ok(Some(WatchEvent::Modified(_))))),
        "{next:?}"
    );
}

#[test]
fn kube_timeouts_come_from_the_flags() {
    let args = Args::parse_from([
        "spillway",
        "--kube-connect-timeout-secs",
        "4",
        "--kube-timeout-secs",
        "7",
    ]);
    let config = args.run.kube.with_timeouts(kube::Config::new(
        "http://127.0.0.1:1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    ));
    assert_eq!(config.connect_timeout, Some(Duration::from_secs(4)));
    assert_eq!(config.read_timeout, Some(Duration::from_secs(7)));
    assert_eq!(config.write_timeout, Some(Duration::from_secs(7)));
    let defaults = Args::parse_from(["spillway"]);
    assert_eq!(
        (
            defaults.run.kube.kube_connect_timeout_secs,
            defaults.run.kube.kube_timeout_secs
        ),
        (10, 30)
    );
}

/// A leader whose Lease renewals are refused (as when RBAC on the Lease is
/// wrong) while its other writes succeed stops acting once the Lease it last
/// read expires, although nobody else took it and kube-lease-manager still
/// reports leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_renewals_fail_stops_acting_when_the_lease_expires() {
    use axum::http::Method;
    use support::Fault;
    let srv = TestApiServer::start().await;
    seed(&srv);
    let mut a = start(&srv, "replica-a").await;
    assert!(eventually(|| holder(&srv).as_deref() == Some("replica-a")).await);
    assert!(
        eventually(|| placeholder_creates(&srv) == 2).await,
        "a acts"
    );
    let lease = "/apis/coordination.k8s.io/v1/namespaces/spillway-system/leases/spillway-leader";
    for m in [Method::PATCH, Method::PUT] {
        srv.inject(Fault::status(lease, 403).method(m).times(usize::MAX));
    }
    // Once the Lease (3 s) has expired unrenewed the replica no longer acts:
    // the leader gauges are withdrawn, and a placeholder removed behind its
    // back is not created again.
    let stepped_down =
        |m: &str| m.contains("spillway_ready 1") && !m.contains("spillway_burst_pods{");
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !stepped_down(metrics_of(&last)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = get(a.addr, "/metrics").await;
    }
    assert!(stepped_down(metrics_of(&last)), "{}", metrics_of(&last));
    assert_eq!(
        holder(&srv).as_deref(),
        Some("replica-a"),
        "nobody took over"
    );
    for p in srv.list::<Pod>(Some("spillway-system")) {
        srv.remove::<Pod>(
            "spillway-system",
            p.metadata.name.as_deref().unwrap_or_default(),
        );
    }
    let creates = placeholder_creates(&srv);
    // Several ticks (200 ms) of a replica that would act if it thought it led.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        placeholder_creates(&srv),
        creates,
        "no writes after stepping down"
    );
    if let Some(stop) = a.stop.take() {
        let _ = stop.send(());
    }
    let _ = tokio::time::timeout(WAIT, &mut a.task).await;
}

/// `spillway run --edge emulator` registers the IoT Edge virtual node (as
/// the leader, with its own taint and label), which the engine never counts
/// as burst capacity; with `--dry-run` the flag is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_registers_the_edge_virtual_node() {
    use k8s_openapi::api::core::v1::Node;
    let srv = TestApiServer::start().await;
    seed(&srv);
    let mut inst = start_with(
        &srv,
        "edge",
        &["--edge", "emulator", "--edge-node", "edge-munich"],
    )
    .await;
    assert!(
        eventually(|| srv.get::<Node>("", "edge-munich").is_some()).await,
        "the edge node registers"
    );
    let node: Option<Node> = srv.get("", "edge-munich");
    let node = node.unwrap_or_default();
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("spillway.io/edge").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("virtual-kubelet")
    );
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(
            |t| t.key == "virtual-kubelet.io/provider" && t.value.as_deref() == Some("iotedge")
        ),
        "{taints:?}"
    );
    if let Some(stop) = inst.stop.take() {
        let _ = stop.send(());
    }
    let done = tokio::time::timeout(WAIT, &mut inst.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--dry-run", "--edge", "emulator", "--policies"])
        .arg(policies_dir())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dry-run cannot be combined with --edge"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without `--cluster-id`, the embedded virtual node tags and names its
/// container groups by the kube-system namespace's UID (two clusters
/// sharing a resource group never meet), reading it as the shipped
/// ServiceAccount with the shipped RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_id_groups_carry_the_kube_system_uid() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let srv = TestApiServer::start().await;
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    srv.apply_manifests(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-system\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n",
    );
    let uid = srv
        .get::<Namespace>("", "kube-system")
        .and_then(|n| n.metadata.uid)
        .unwrap_or_else(|| panic!("kube-system has a uid"));
    let emu = spillway::aci::emulator::Emulator::start(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = policies_dir();
    let args = Args::parse_from([
        "spillway",
        "--policies",
        dir.to_str().unwrap_or_default(),
        "--identity",
        "r1",
        "--lease-seconds",
        "3",
        "--aci",
        "emulator",
        "--aci-emulator-url",
        emu.url.as_str(),
        "--kubelet-listen",
        "127.0.0.1:0",
        "--aci-sync-secs",
        "1",
    ]);
    let run =
        support::InProcessRun::start_as(&srv, "spillway-system", "spillway", args.run, &dir).await;
    let p: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api", "namespace": "web"},
        "spec": {
            "nodeName": "spillway-aci",
            "schedulerName": "spillway-scheduler",
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "containers": [{"name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Pod>::namespaced(srv.client(), "web")
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tagged = eventually(|| {
        emu.state.snapshot().iter().any(|g| {
            g.tags.get(spillway::aci::TAG_CLUSTER) == Some(&uid)
                && g.name == spillway::aci::translate::group_name_in(&uid, "web", "api")
        })
    })
    .await;
    assert!(
        tagged,
        "groups: {:?}; denials: {:?}",
        emu.state
            .snapshot()
            .iter()
            .map(|g| (g.name.clone(), g.tags.clone()))
            .collect::<Vec<_>>(),
        srv.auth_denials()
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    let done = run.stop().await;
    assert!(matches!(done, Some(Ok(()))), "{done:?}");
}
