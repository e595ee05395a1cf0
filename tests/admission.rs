//! End to end: `spillway run` serves its mutating webhook, publishes its CA
//! into the MutatingWebhookConfiguration shipped in deploy/webhook/ (loaded
//! from `kubectl kustomize deploy/overlays/aks`, its clientConfig pointed at
//! the test process by URL), and the test API server calls it on every pod
//! create, as kube-apiserver does. spillway runs as its ServiceAccount under
//! the shipped RBAC.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spillway::metrics::Metrics;
use support::TestApiServer;

const WAIT: Duration = Duration::from_secs(20);
const SCHEDULER: &str = "spillway-scheduler";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// The Deployment of the AKS virtual-node documentation ("Deploy a sample
/// app"), unchanged.
const AKS_EXAMPLE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: aci-helloworld
spec:
  replicas: 1
  selector:
    matchLabels:
      app: aci-helloworld
  template:
    metadata:
      labels:
        app: aci-helloworld
    spec:
      containers:
      - name: aci-helloworld
        image: mcr.microsoft.com/azuredocs/aci-helloworld
        ports:
        - containerPort: 80
      nodeSelector:
        kubernetes.io/role: agent
        beta.kubernetes.io/os: linux
        type: virtual-kubelet
      tolerations:
      - key: virtual-kubelet.io/provider
        operator: Exists
      - key: azure.com/aci
        effect: NoSchedule
"#;

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// A pod as a controller of `kind` creates it from `template`.
fn pod_of(kind: &str, owner: &str, template: &Value) -> Pod {
    let mut p = template.clone();
    p["apiVersion"] = json!("v1");
    p["kind"] = json!("Pod");
    p["metadata"]["generateName"] = json!(format!("{owner}-"));
    p["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": kind, "name": owner,
        "uid": format!("uid-{owner}"), "controller": true, "blockOwnerDeletion": true,
    }]);
    obj(p)
}

fn aks_example_pod() -> Pod {
    let d: Value = serde_saphyr::from_str(AKS_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    pod_of(
        "ReplicaSet",
        "aci-helloworld-7d9f8c",
        &d["spec"]["template"],
    )
}

fn simple_pod(name: &str, labels: Value, tolerations: Value) -> Pod {
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "app:1"}], "tolerations": tolerations},
    }))
}

fn tolerate_virtual() -> Value {
    json!([{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}])
}

fn scheduler_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.clone())
        .unwrap_or_default()
}

async fn create(srv: &TestApiServer, ns: &str, p: &Pod) -> Pod {
    let api: Api<Pod> = Api::namespaced(srv.client_without_retries(), ns);
    api.create(&PostParams::default(), p)
        .await
        .unwrap_or_else(|e| panic!("create in {ns}: {e}"))
}

/// The shipped deploy (namespaces, RBAC, the webhook configuration) plus the
/// namespaces of the tests; policies for `web` and `batch`, none for `other`.
async fn cluster() -> TestApiServer {
    let srv = TestApiServer::start().await;
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    let namespaces: Api<Namespace> = Api::all(srv.client());
    for (name, labels) in [
        ("web", json!({})),
        ("batch", json!({})),
        ("other", json!({})),
        ("opted-out", json!({"spillway.io/skip": "true"})),
    ] {
        namespaces
            .create(
                &PostParams::default(),
                &obj(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    srv
}

/// Point the shipped configuration at `url` (tests cannot dial Service DNS;
/// `url` is what the real API accepts too), keeping everything else.
fn point_at(srv: &TestApiServer, url: &str, ca_bundle: Option<String>) {
    srv.modify::<MutatingWebhookConfiguration>("", "spillway", |m| {
        for h in m.webhooks.iter_mut().flatten() {
            h.client_config.service = None;
            h.client_config.url = Some(url.to_string());
            if let Some(b) = &ca_bundle {
                h.client_config.ca_bundle = Some(k8s_openapi::ByteString(b.clone().into_bytes()));
            }
        }
    });
}

fn ca_bundle(srv: &TestApiServer) -> Option<Vec<u8>> {
    srv.get::<MutatingWebhookConfiguration>("", "spillway")
        .and_then(|m| m.webhooks)
        .and_then(|w| w.first().and_then(|h| h.client_config.ca_bundle.clone()))
        .map(|b| b.0)
        .filter(|b| !b.is_empty())
}

struct Spillway {
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), spillway::run::RunError>>,
}

impl Spillway {
    fn reviews(&self, outcome: &str) -> u64 {
        self.metrics
            .admission_reviews
            .with_label_values(&[outcome])
            .get()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let done = tokio::time::timeout(WAIT, &mut self.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }
}

/// `spillway run` as the spillway ServiceAccount, its webhook on a port of
/// its own; the URL the configuration must call.
async fn start(srv: &TestApiServer, extra: &[&str]) -> (Spillway, String) {
    let dir = support::policy_dir(
        "admission-policies",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec:\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n---\napiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: batch, namespace: batch }\nspec:\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n---\napiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: opted-out, namespace: opted-out }\nspec:\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n",
    );
    let mut argv = vec![
        "spillway",
        "--policies",
        dir.to_str().unwrap_or_default(),
        "--identity",
        "replica-a",
        "--lease-seconds",
        "3",
        "--tick-ms",
        "200",
        "--view-refresh-ms",
        "50",
        "--webhook-cert-host",
        "127.0.0.1",
    ];
    argv.extend_from_slice(extra);
    let args = Args::parse_from(argv);
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        spillway::policy::reload::PolicyStore::open(&dir, metrics.clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (listener, webhook) = (bind().await, bind().await);
    let port = webhook.local_addr().map(|a| a.port()).unwrap_or_default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = srv.kube_config_as("spillway-system", "spillway");
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        spillway::run::run_with_webhook(
            config,
            &args.run,
            store,
            m,
            listener,
            Some(webhook),
            async move {
                let _ = rx.await;
            },
        )
        .await
    });
    (
        Spillway {
            metrics,
            stop: Some(tx),
            task,
        },
        format!(
            "https://127.0.0.1:{port}{}",
            spillway::admission::MUTATE_PATH
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_may_reach_the_virtual_node_get_spillways_scheduler_and_an_outage_blocks_nothing()
{
    let srv = cluster().await;
    let (spillway, url) = start(&srv, &[]).await;
    point_at(&srv, &url, None);
    assert!(
        support::poll_until(WAIT, || ca_bundle(&srv).is_some()).await,
        "spillway publishes its CA; denials: {:?}",
        srv.auth_denials()
    );

    // The AKS virtual-node example, as its ReplicaSet creates the pod.
    let aks = create(&srv, "web", &aks_example_pod()).await;
    assert_eq!(scheduler_of(&aks), SCHEDULER);
    // Its pin to the virtual node is relaxed, as stored by the API server.
    let selector = aks
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    assert!(!selector.contains_key("type"), "{selector:?}");
    assert_eq!(
        aks.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("spillway.io/relaxed-pin"))
            .map(String::as_str),
        Some("nodeSelector type=virtual-kubelet")
    );
    assert_eq!(spillway.reviews("mutated-relaxed-pin"), 1);
    // A blanket toleration reaches the virtual node too.
    let blanket = create(
        &srv,
        "batch",
        &simple_pod("blanket", json!({}), json!([{"operator": "Exists"}])),
    )
    .await;
    assert_eq!(scheduler_of(&blanket), SCHEDULER);
    assert_eq!(spillway.reviews("mutated"), 1);

    // Left alone: no access to the virtual node, a DaemonSet's pod, no
    // policy, an opted-out pod, an opted-out namespace.
    let plain = create(&srv, "web", &simple_pod("plain", json!({}), json!([]))).await;
    assert_eq!(scheduler_of(&plain), "default-scheduler");
    assert_eq!(spillway.reviews("skipped-no-virtual-node-access"), 1);
    let template = json!({"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "agent:1"}], "tolerations": [{"operator": "Exists"}]}});
    let ds = create(&srv, "web", &pod_of("DaemonSet", "agent", &template)).await;
    assert_eq!(scheduler_of(&ds), "default-scheduler");
    assert_eq!(spillway.reviews("skipped-daemonset"), 1);
    let other = create(
        &srv,
        "other",
        &simple_pod("o", json!({}), tolerate_virtual()),
    )
    .await;
    assert_eq!(scheduler_of(&other), "default-scheduler");
    assert_eq!(spillway.reviews("skipped-no-policy"), 1);
    let before = srv.requests().len();
    let opted = create(
        &srv,
        "web",
        &simple_pod(
            "opted",
            json!({"spillway.io/skip": "true"}),
            tolerate_virtual(),
        ),
    )
    .await;
    assert_eq!(scheduler_of(&opted), "default-scheduler");
    let in_opted_ns = create(
        &srv,
        "opted-out",
        &simple_pod("p", json!({}), tolerate_virtual()),
    )
    .await;
    assert_eq!(scheduler_of(&in_opted_ns), "default-scheduler");
    // Those two never reached spillway: the configuration's selectors excluded them.
    let total: u64 = [
        "mutated",
        "mutated-relaxed-pin",
        "skipped-no-virtual-node-access",
        "skipped-daemonset",
        "skipped-no-policy",
        "skipped-opt-out",
        "skipped-namespace-opt-out",
        "error",
    ]
    .iter()
    .map(|o| spillway.reviews(o))
    .sum();
    assert_eq!(total, 5, "{} requests since", srv.requests().len() - before);
    assert_eq!(srv.auth_denials(), Vec::<String>::new());

    // spillway down: pods are still created (failurePolicy Ignore), unchanged.
    spillway.stop().await;
    let during_outage = create(
        &srv,
        "web",
        &simple_pod("outage", json!({}), tolerate_virtual()),
    )
    .await;
    assert_eq!(scheduler_of(&during_outage), "default-scheduler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_handshake_and_is_ignored() {
    let srv = cluster().await;
    // spillway publishes nothing here; the bundle trusts some other CA.
    let (spillway, url) = start(&srv, &["--webhook-configuration", ""]).await;
    let stranger =
        spillway::admission::tls::generate(&["127.0.0.1".into()]).unwrap_or_else(|e| panic!("{e}"));
    point_at(&srv, &url, Some(stranger.ca_pem));
    let p = create(&srv, "web", &simple_pod("p", json!({}), tolerate_virtual())).await;
    assert_eq!(scheduler_of(&p), "default-scheduler");
    let answered: u64 = ["mutated", "error"]
        .iter()
        .map(|o| spillway.reviews(o))
        .sum();
    assert_eq!(answered, 0, "no review got past the handshake");
    // An unreachable URL is ignored the same way.
    point_at(&srv, "https://127.0.0.1:1/mutate-pods", None);
    let q = create(&srv, "web", &simple_pod("q", json!({}), tolerate_virtual())).await;
    assert_eq!(scheduler_of(&q), "default-scheduler");
    spillway.stop().await;
}

/// spillway checks the opt-out labels itself too (second lock): with the
/// configuration's selectors removed, the API server calls it for an
/// opted-out namespace and pod, and it leaves both alone, reading the
/// namespace's labels from its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spillway_honours_the_opt_out_labels_without_the_configurations_selectors() {
    let srv = cluster().await;
    let (spillway, url) = start(&srv, &[]).await;
    point_at(&srv, &url, None);
    srv.modify::<MutatingWebhookConfiguration>("", "spillway", |m| {
        for h in m.webhooks.iter_mut().flatten() {
            h.namespace_selector = None;
            h.object_selector = None;
        }
    });
    assert!(support::poll_until(WAIT, || ca_bundle(&srv).is_some()).await);
    // The namespace watch has listed (its watch request follows the list).
    assert!(
        support::poll_until(WAIT, || srv
            .requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces" && r.is_watch()))
        .await
    );
    let in_ns = create(
        &srv,
        "opted-out",
        &simple_pod("p", json!({}), tolerate_virtual()),
    )
    .await;
    assert_eq!(scheduler_of(&in_ns), "default-scheduler");
    assert_eq!(spillway.reviews("skipped-namespace-opt-out"), 1);
    let pod = create(
        &srv,
        "web",
        &simple_pod("q", json!({"spillway.io/skip": "true"}), tolerate_virtual()),
    )
    .await;
    assert_eq!(scheduler_of(&pod), "default-scheduler");
    assert_eq!(spillway.reviews("skipped-opt-out"), 1);
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    spillway.stop().await;
}

#[test]
fn an_empty_scheduler_name_is_refused_before_anything_starts() {
    let args = Args::parse_from(["spillway", "--webhook-scheduler-name", ""]);
    let err = args
        .run
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("--webhook-scheduler-name"), "{err}");
}

/// Two replicas publishing at once both end up trusted: the write is
/// conditional on the resourceVersion read, and the loser re-reads.
#[tokio::test]
async fn concurrent_publishers_both_end_up_in_the_ca_bundle() {
    use spillway::admission::tls;
    let srv = cluster().await;
    let client = srv.client_as("spillway-system", "spillway");
    let (a, b) = (
        tls::generate(&["a".into()]).unwrap_or_else(|e| panic!("{e}")),
        tls::generate(&["b".into()]).unwrap_or_else(|e| panic!("{e}")),
    );
    let (ra, rb) = tokio::join!(
        tls::publish_ca(&client, "spillway", &a.ca_pem),
        tls::publish_ca(&client, "spillway", &b.ca_pem)
    );
    assert!(matches!((&ra, &rb), (Ok(true), Ok(true))), "{ra:?} {rb:?}");
    let bundle = String::from_utf8(ca_bundle(&srv).unwrap_or_default()).unwrap_or_default();
    let certs = tls::pem_certificates(&bundle);
    for ca in [&a.ca_pem, &b.ca_pem] {
        assert!(certs.contains(&tls::pem_certificates(ca)[0]));
    }
    // Publishing again changes nothing.
    assert!(matches!(
        tls::publish_ca(&client, "spillway", &a.ca_pem).await,
        Ok(false)
    ));
    // Everything else of the configuration is kept.
    let mwc = srv
        .get::<MutatingWebhookConfiguration>("", "spillway")
        .and_then(|m| m.webhooks)
        .unwrap_or_default();
    assert_eq!(mwc.len(), 1);
    assert_eq!(mwc[0].failure_policy.as_deref(), Some("Ignore"));
    assert!(mwc[0].namespace_selector.is_some());
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    let patches = srv
        .requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH" && r.path.ends_with("/mutatingwebhookconfigurations/spillway")
        })
        .count();
    assert!(patches >= 2, "{patches} patches");
}

#[tokio::test]
async fn an_unreadable_certificate_file_stops_spillway_before_it_starts() {
    let srv = TestApiServer::start().await;
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-webhook.crt");
    let path = missing.to_str().unwrap_or_default();
    let args = Args::parse_from([
        "spillway",
        "--webhook-tls-cert",
        path,
        "--webhook-tls-key",
        path,
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = support::policy_dir(
        "admission-bad-cert",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec: {}\n",
    );
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        spillway::policy::reload::PolicyStore::open(&dir, metrics.clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let result = spillway::run::run_with_webhook(
        srv.kube_config(),
        &args.run,
        store,
        metrics,
        listener,
        Some(webhook),
        std::future::pending(),
    )
    .await;
    let err = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("no-such-webhook.crt"), "{err}");
    assert!(
        srv.requests().is_empty(),
        "nothing started: {:?}",
        srv.requests()
    );
}
