//! `spillway run` against the test API server: one process serves the
//! extender and, as the Lease holder, runs the autoscaler; a standby serves
//! the extender but writes nothing, and takes over when the leader stops.

mod support;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
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
    let dir = policies_dir();
    let args = Args::parse_from([
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
    ]);
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
