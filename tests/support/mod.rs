//! Shared integration-test support: `mod support;` from any `tests/*.rs`.
//!
//! The test API server is an in-process kube-apiserver stand-in:
//!
//! ```ignore
//! let srv = support::TestApiServer::start().await;           // 127.0.0.1:<random>
//! srv.insert(&node);                                          // seed state directly
//! let pods: kube::Api<Pod> = kube::Api::namespaced(srv.client(), "web");
//! run_the_code_under_test(srv.client()).await;                // talks HTTP to it
//! assert!(srv.requests().iter().any(|r| r.path.ends_with("/eviction")));
//! srv.inject(support::Fault::status("/api/v1/nodes", 503).times(2));
//! ```
//!
//! Each test binary uses only part of this, hence the allow.
#![allow(dead_code, unused_imports)]

pub mod actors;
pub mod apiserver;
pub mod provider_world;
pub mod webhook;

pub use apiserver::{
    ApiError, Budget, Builder, ClientCertificate, Config, ExercisedRule, Fault, GrantedPermission,
    KUBELET_CLIENT_CN, KUBELET_CLIENT_ORG, PodDeletion, RequestRecord, RoleId, TestApiServer,
};

/// `spillway run` in-process, as ServiceAccount `ns/name` of `srv` (its
/// token, so every call is authenticated and RBAC-authorized; in a pod the
/// client's default namespace is the pod's own), with the policies of
/// `policies` and `/healthz` etc. on a loopback port. `stop` ends it.
pub struct InProcessRun {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), spillway::run::RunError>>,
    /// Its metrics.
    pub metrics: std::sync::Arc<spillway::metrics::Metrics>,
    /// Where its extender (and `/metrics`, `/healthz`) listens, host:port.
    pub extender: String,
}

impl InProcessRun {
    pub async fn start_as(
        srv: &TestApiServer,
        ns: &str,
        name: &str,
        run: spillway::run::RunCommand,
        policies: &std::path::Path,
    ) -> Self {
        let metrics = std::sync::Arc::new(spillway::metrics::Metrics::new());
        let store = std::sync::Arc::new(
            spillway::policy::reload::PolicyStore::open(policies, metrics.clone())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let extender = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut config = srv.kube_config_as(ns, name);
        config.default_namespace = ns.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            spillway::run::run_with(config, &run, store, m, listener, async {
                let _ = rx.await;
            })
            .await
        });
        InProcessRun {
            stop: Some(tx),
            task,
            metrics,
            extender,
        }
    }

    /// Ask it to stop and wait (bounded) for it to end.
    pub async fn stop(mut self) -> Option<Result<(), spillway::run::RunError>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// An ACI emulator with its lifecycle 50× faster (2 s Accepted + 3 s
/// Creating: 100 ms).
pub async fn fast_emulator() -> spillway::aci::emulator::EmulatorHandle {
    spillway::aci::emulator::Emulator::start(spillway::aci::emulator::EmulatorConfig {
        speed: 50.0,
        ..spillway::aci::emulator::EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"))
}

#[derive(clap::Parser)]
struct RunArgs {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// `spillway run`'s flags for a test: the policies of `policies`, identity
/// `replica-a` with a 3 s Lease, the embedded provider on the emulator at
/// `emulator_url` (syncing every second, its kubelet endpoint on a loopback
/// port) for cluster `cluster_id`, then `extra`.
pub fn emulated_run(
    policies: &std::path::Path,
    emulator_url: &str,
    cluster_id: &str,
    extra: &[&str],
) -> spillway::run::RunCommand {
    use clap::Parser as _;
    let mut argv = vec![
        "spillway",
        "--policies",
        policies.to_str().unwrap_or_default(),
        "--identity",
        "replica-a",
        "--lease-seconds",
        "3",
        "--aci",
        "emulator",
        "--aci-emulator-url",
        emulator_url,
        "--kubelet-listen",
        "127.0.0.1:0",
        "--aci-sync-secs",
        "1",
        "--cluster-id",
        cluster_id,
    ];
    argv.extend_from_slice(extra);
    RunArgs::parse_from(argv).run
}

/// Whether node `name` of `srv` reports Ready.
pub fn node_ready(srv: &TestApiServer, name: &str) -> bool {
    srv.get::<k8s_openapi::api::core::v1::Node>("", name)
        .and_then(|n| n.status?.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Poll `check` every 50 ms until it holds or `within` has passed; the last
/// answer is returned (tests assert on it, never sleep to wait for state).
pub async fn poll_until(within: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check()
}

/// A policy directory `name` under the test binary's temporary directory,
/// holding `web.yaml` with `policy` (the same path each run, rewritten).
pub fn policy_dir(name: &str, policy: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    // Tests of one binary share the directory and run in parallel: a plain
    // write truncates the file under another test's policy reader. Write
    // only when it differs, through a rename (atomic), and keep the temp
    // file out of the directory the readers scan.
    let file = dir.join("web.yaml");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(policy) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.with_extension(format!("tmp-{}-{n}", std::process::id()));
        std::fs::write(&tmp, policy).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

/// `kubectl kustomize <repo>/<dir>` (the real tool, as deploy/ is applied),
/// e.g. `kustomize("deploy/overlays/aks")` for
/// [`TestApiServer::apply_manifests`].
pub fn kustomize(dir: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl kustomize {}: {e} (is kubectl installed?)",
                path.display()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// Store the PriorityClass deploy/ ships for capacity placeholders (the API
/// server refuses a pod naming a class that does not exist, as the real
/// `Priority` admission plugin does).
pub fn install_placeholder_priority_class(srv: &TestApiServer) {
    let skipped = srv.apply_manifests(include_str!("../../deploy/base/priorityclass.yaml"));
    assert!(skipped.is_empty(), "not stored: {skipped:?}");
}

/// The container group the provider creates for pod `web/{name}` of
/// cluster `cluster`: one container `app` running `image`, restart policy
/// `restart_policy` (`Always` when `None`), uid `uid-{name}`.
pub fn web_pod_group(
    cluster: &str,
    name: &str,
    image: &str,
    restart_policy: Option<&str>,
) -> spillway::aci::ContainerGroup {
    use k8s_openapi::api::core::v1 as k8s;
    use spillway::aci::translate::{PodContext, Resolved, TranslateConfig, pod_to_group};
    let pod = k8s::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("web".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec {
            restart_policy: restart_policy.map(String::from),
            containers: vec![k8s::Container {
                name: "app".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let cfg = TranslateConfig::new(cluster, "westeurope");
    let policy = spillway::policy::AciSettings::default();
    pod_to_group(
        &pod,
        &PodContext {
            config: &cfg,
            aci: &policy,
            resolved: &Resolved::default(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
