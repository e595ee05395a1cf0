//! The real `kubectl` against burst pods, end to end: the `kubectl` binary
//! talks to the test API server (discovery, `pods/log`, `nodes/proxy`),
//! which reaches the virtual node's kubelet endpoint as kube-apiserver
//! does (the node's preferred address and kubelet port from its status,
//! HTTPS, the API server's kubelet client certificate; `kubectl exec` over
//! WebSocket translated to SPDY, or over SPDY proxied); `spillway run`
//! serves that endpoint with a self-signed certificate and checks callers
//! against the cluster CA, and reads the logs from the ACI emulator.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::aci::emulator::EmulatorHandle;
use support::TestApiServer;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);
const ACI_NODE: &str = "spillway-aci";
const CLUSTER_ID: &str = "kubectl-e2e";

const POLICIES: &str = "apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: web, namespace: web }
spec:
  burst: { mode: Auto, spillAfter: 1s }
";

struct Spillway {
    emulator: EmulatorHandle,
    run: support::InProcessRun,
}

/// `spillway run` as deploy/overlays/aks runs it (its ServiceAccount and
/// RBAC), with the kubelet endpoint on HTTPS and authenticating callers;
/// the burst pods' namespace `web` is created too.
async fn start(srv: &TestApiServer) -> Spillway {
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    srv.publish_root_ca("spillway-system");
    let dir = support::policy_dir("kubectl-e2e-policies", POLICIES);
    let emulator = support::fast_emulator().await;
    let args = support::emulated_run(
        &dir,
        emulator.url.as_str(),
        CLUSTER_ID,
        &["--kubelet-tls-self-signed"],
    );
    let run = support::InProcessRun::start_as(srv, "spillway-system", "spillway", args, &dir).await;
    let registered = support::poll_until(WAIT, || support::node_ready(srv, ACI_NODE)).await;
    assert!(
        registered,
        "spillway registers {ACI_NODE}; denials: {:?}",
        srv.auth_denials()
    );
    Spillway { emulator, run }
}

/// A kubeconfig for `server` in a fresh directory, which is also kubectl's
/// HOME (its discovery cache stays out of the real one).
fn kubeconfig(server: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kubectl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("config");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: web\ncurrent-context: test\nusers:\n- name: admin\n  user: {{}}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    file
}

fn kubectl(config: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("kubectl");
    let home = config.parent().unwrap_or(config);
    c.env("KUBECONFIG", config)
        .env("HOME", home)
        .arg("--request-timeout=20s")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Run kubectl to the end (bounded): (exit code, stdout, stderr).
async fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    run_with(config, args, &[]).await
}

/// [`run`] with more environment variables.
async fn run_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = kubectl(config);
    command.args(args).envs(env.iter().copied());
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e} (is kubectl installed?)"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn burst_pod(name: &str, containers: &[&str]) -> Pod {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {
            "schedulerName": "spillway-scheduler",
            "nodeName": ACI_NODE,
            "containers": containers,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn create_running(srv: &TestApiServer, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(srv.client(), "web");
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = pod.metadata.name.clone().unwrap_or_default();
    let running = support::poll_until(WAIT, || {
        srv.get::<Pod>("web", &name)
            .and_then(|p| p.status?.phase)
            .is_some_and(|p| p == "Running")
    })
    .await;
    assert!(running, "{name} never ran on ACI");
}

fn group_of(emu: &EmulatorHandle, pod: &str) -> String {
    emu.state
        .snapshot()
        .into_iter()
        .find(|g| g.tags.get(spillway::aci::TAG_POD_NAME).map(String::as_str) == Some(pod))
        .map(|g| g.name)
        .unwrap_or_else(|| panic!("no container group for {pod}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_reaches_burst_pods_through_the_api_server() {
    let srv = TestApiServer::start().await;
    let spillway = start(&srv).await;
    let config = kubeconfig(&srv.url(), "logs");

    create_running(&srv, &burst_pod("api", &["app"])).await;
    let group = group_of(&spillway.emulator, "api");
    let lines: Vec<String> = ["one", "two", "three"].map(String::from).to_vec();
    assert_eq!(
        spillway.emulator.state.append_logs(&group, "app", &lines),
        1
    );

    // Plain, --tail, --timestamps, --since, --limit-bytes.
    let (code, out, err) = run(&config, &["logs", "api"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.ends_with("one\ntwo\nthree\n"), "{out:?}");
    let (code, out, err) = run(&config, &["logs", "api", "--tail=1"]).await;
    assert_eq!((code, out.as_str()), (0, "three\n"), "stderr: {err}");
    let (code, out, err) = run(&config, &["logs", "pod/api", "--timestamps", "--tail=2"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    let stamped: Vec<&str> = out.lines().collect();
    assert_eq!(stamped.len(), 2, "{out:?}");
    for (line, text) in stamped.iter().zip(["two", "three"]) {
        let (time, rest) = line.split_once(' ').unwrap_or_default();
        assert_eq!(rest, text);
        assert!(
            spillway::units::Timestamp::parse_rfc3339(time).is_ok(),
            "{line:?} starts with an RFC 3339 time"
        );
    }
    let (code, out, err) = run(&config, &["logs", "api", "--since=1h"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.ends_with("three\n"), "{out:?}");
    let (code, out, err) = run(&config, &["logs", "api", "--tail=1", "--limit-bytes=3"]).await;
    assert_eq!((code, out.as_str()), (0, "thr"), "stderr: {err}");

    // What the API server itself refuses, in its words.
    let (code, _, err) = run(&config, &["logs", "api", "-c", "nope"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod api"),
        "{err}"
    );
    let (code, _, err) = run(&config, &["logs", "api", "--previous"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("previous"),
        "the kubelet endpoint's refusal: {err}"
    );

    // -f: what is appended later arrives while kubectl follows.
    let mut follow = kubectl(&config)
        .args(["logs", "-f", "api", "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = follow.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut reader = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, reader.next_line()).await;
    assert!(
        matches!(&first, Ok(Ok(Some(l))) if l == "three"),
        "{first:?}"
    );
    spillway
        .emulator
        .state
        .append_logs(&group, "app", &["four".to_string()]);
    let next = tokio::time::timeout(WAIT, reader.next_line()).await;
    assert!(matches!(&next, Ok(Ok(Some(l))) if l == "four"), "{next:?}");
    let _ = follow.kill().await;

    // Several containers: kubectl picks the first and says so; a client
    // that names none is asked by the API server which one.
    create_running(&srv, &burst_pod("duo", &["app", "sidecar"])).await;
    let duo = spillway::aci::translate::group_name_in(CLUSTER_ID, "web", "duo");
    spillway
        .emulator
        .state
        .append_logs(&duo, "sidecar", &["from the sidecar".to_string()]);
    let (code, _, err) = run(&config, &["logs", "duo"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        err.contains("Defaulted container \"app\" out of: app, sidecar"),
        "{err}"
    );
    let (code, out, err) = run(&config, &["logs", "duo", "-c", "sidecar", "--tail=1"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from the sidecar\n"),
        "stderr: {err}"
    );
    let api: Api<Pod> = Api::namespaced(srv.client(), "web");
    let asked = api.logs("duo", &Default::default()).await;
    assert!(
        matches!(&asked, Err(kube::Error::Api(s)) if s.code == 400
            && s.message == "a container name must be specified for pod duo, choose one of: [app sidecar]"),
        "{asked:?}"
    );

    // The node proxy reaches the same endpoint (as `kubectl get --raw` does).
    let (code, out, err) = run(
        &config,
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{ACI_NODE}/proxy/healthz"),
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "ok"), "stderr: {err}");

    let done = spillway.run.stop().await;
    assert!(matches!(done, Some(Ok(()))), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_reaches_burst_pods_through_the_api_server() {
    use spillway::aci::emulator::{ExecEnd, ExecScript};
    let srv = TestApiServer::start().await;
    let spillway = start(&srv).await;
    let config = kubeconfig(&srv.url(), "exec");
    create_running(&srv, &burst_pod("shell", &["app"])).await;
    let group = group_of(&spillway.emulator, "shell");
    spillway.emulator.state.set_exec_script(
        &group,
        "app",
        ExecScript {
            output: "hello from ACI\r\n".into(),
            ..Default::default()
        },
    );

    // kubectl 1.30+ speaks WebSocket (v5.channel.k8s.io) first; the API
    // server accepts it and translates it to SPDY towards the kubelet
    // endpoint, so kubectl never falls back.
    assert_eq!(srv.translated_exec_sessions(), 0);
    let (code, out, err) = run(&config, &["exec", "shell", "--", "/bin/hostname"]).await;
    assert_eq!(code, 0, "stdout: {out:?}, stderr: {err}");
    assert!(out.contains("hello from ACI"), "{out:?}");
    assert_eq!(
        srv.translated_exec_sessions(),
        1,
        "kubectl went over WebSocket"
    );
    let sessions = spillway.emulator.state.exec_sessions();
    assert!(
        sessions
            .iter()
            .any(|s| s.container == "app" && s.command == "/bin/hostname" && s.attached),
        "{sessions:?}"
    );

    // SPDY, as kubectl speaks it when told to (or to an older API server):
    // proxied to the kubelet endpoint as an upgrade, not translated.
    let (code, out, err) = run_with(
        &config,
        &["exec", "shell", "--", "/bin/hostname"],
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
    )
    .await;
    assert_eq!(code, 0, "stdout: {out:?}, stderr: {err}");
    assert!(out.contains("hello from ACI"), "{out:?}");
    assert_eq!(srv.translated_exec_sessions(), 1, "SPDY is not translated");
    assert_eq!(
        spillway
            .emulator
            .state
            .exec_sessions()
            .iter()
            .filter(|s| s.attached)
            .count(),
        2
    );

    // A session ACI breaks: kubectl reports the kubelet's failure through
    // the translator's Status and exits 1.
    spillway.emulator.state.set_exec_script(
        &group,
        "app",
        ExecScript {
            output: "partial\r\n".into(),
            end: ExecEnd::Drop,
            ..Default::default()
        },
    );
    let (code, out, err) = run(&config, &["exec", "shell", "--", "/bin/hostname"]).await;
    assert_eq!(code, 1, "stdout: {out:?}, stderr: {err}");
    assert!(out.contains("partial"), "{out:?}");
    assert!(
        err.contains("error executing command in container"),
        "{err}"
    );
    assert_eq!(srv.translated_exec_sessions(), 2);

    // What ACI cannot do, in kubectl's words, before any session starts.
    let (code, _, err) = run(&config, &["exec", "shell", "--", "ls", "/"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("ACI cannot run"), "{err}");
    // A container the pod does not have: the API server's rule.
    let (code, _, err) = run(&config, &["exec", "shell", "-c", "nope", "--", "/bin/sh"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod shell"),
        "{err}"
    );

    let done = spillway.run.stop().await;
    assert!(matches!(done, Some(Ok(()))), "{done:?}");
}
