//! Issue 12's "Done when", end to end: Deployments written from the AKS
//! virtual-node documentation, applied unchanged to a cluster with spillway
//! installed (deploy/overlays/aks: RBAC, the MutatingWebhookConfiguration),
//! go through spillway's webhook (schedulerName spillway-scheduler), the
//! test scheduler calling spillway's extender, and spillway's embedded
//! provider on the ACI emulator.
//!
//! - The "Deploy a sample app" Deployment (aci-helloworld, pinned to the
//!   virtual node by `nodeSelector: type: virtual-kubelet`) scaled to 3:
//!   the webhook relaxes the pin (`spillway.io/relaxed-pin`), so VMs come
//!   first: it requests nothing, so the full VM still takes all three.
//! - The same Deployment with `spillway.io/virtual-node-pin: keep`: no VM
//!   can ever take it, so it bursts at once (`pools-at-max`), and only as
//!   far as its namespace's budget (`maxPods: 2`) allows.
//! - The documentation's "on ACI after using VMs" pod spec (the same
//!   tolerations, a preferred affinity away from the virtual node), given
//!   requests: the pods wait `spillAfter` while the cluster autoscaler adds
//!   a VM, the VM takes what fits, the rest burst after `spillAfter`, again
//!   only up to the budget.
//! - The sample app again, unchanged, where the VMs are at their pod count
//!   (`maxPods`): though it requests nothing it waits `spillAfter` while the
//!   cluster autoscaler adds a VM, the VM takes what its pod count allows,
//!   and only the rest bursts, up to the budget.
//!
//! And pods that bypassed spillway (bound to the virtual node by another
//! scheduler): with `--unadmitted-pods=run` they run, with one
//! `NotAdmittedBySpillway` Event each and `spillway_unadmitted_pods`; with
//! `--unadmitted-pods=reject` those the engine would not have admitted are
//! failed (`NotAdmitted`, the rule named) and never get a container group.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spillway::aci::emulator::EmulatorHandle;
use spillway::cluster::build::{node, pod};
use spillway::metrics::Metrics;
use support::actors::{self, Bindings};
use support::{PodDeletion, TestApiServer};

const WAIT: Duration = Duration::from_secs(30);
const ACI_NODE: &str = "spillway-aci";
const SCHEDULER: &str = "spillway-scheduler";
/// `shop`'s spillAfter, in seconds.
const SPILL_AFTER_SECS: u64 = 4;

/// The Deployment of the AKS virtual-node documentation ("Deploy a sample
/// app", az aks enable-addons --addons virtual-node), unchanged.
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

/// The documentation's pod spec for "on ACI after using VMs" (AKS advanced
/// autoscaling, burst to ACI): the same tolerations, and a preferred node
/// affinity away from the virtual node. Its snippet names no resources; a
/// pod that requests nothing fits any VM, so this Deployment adds requests.
const AKS_AFTER_VMS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 5
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
    spec:
      containers:
      - name: shop
        image: mcr.microsoft.com/azuredocs/aci-helloworld
        ports:
        - containerPort: 80
        resources:
          requests:
            cpu: 500m
            memory: 512Mi
      tolerations:
      - key: virtual-kubelet.io/provider
        operator: Exists
      - key: azure.com/aci
        effect: NoSchedule
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 1
            preference:
              matchExpressions:
              - key: type
                operator: NotIn
                values:
                - virtual-kubelet
"#;

const POLICIES: &str = "apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: web, namespace: web }
spec:
  burst: { mode: Auto, spillAfter: 4s, maxVmWait: 10m }
  budget: { maxPods: 2 }
---
apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: shop, namespace: shop }
spec:
  burst: { mode: Auto, spillAfter: 4s, maxVmWait: 10m }
  budget: { maxPods: 2 }
---
apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: vm-only, namespace: vm-only }
spec:
  burst: { mode: Never }
---
apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: opted-out, namespace: opted-out }
spec:
  burst: { mode: Never }
";

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// The pod template of a Deployment manifest, as its ReplicaSet stamps pods.
fn template_of(manifest: &str) -> Pod {
    let d: Value = serde_saphyr::from_str(manifest).unwrap_or_else(|e| panic!("{e}"));
    let mut p = d["spec"]["template"].clone();
    p["apiVersion"] = json!("v1");
    p["kind"] = json!("Pod");
    obj(p)
}

fn on_node(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref()?.phase.clone()
}

fn live(srv: &TestApiServer, ns: &str) -> Vec<Pod> {
    srv.list::<Pod>(Some(ns))
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(phase(p).as_deref(), Some("Failed" | "Succeeded"))
        })
        .collect()
}

fn count_on(pods: &[Pod], node: &str) -> usize {
    pods.iter()
        .filter(|p| on_node(p).as_deref() == Some(node))
        .count()
}

/// Container groups in the emulator, by the pod name they are tagged with.
fn groups_by_pod(emu: &EmulatorHandle) -> BTreeMap<String, String> {
    emu.state
        .snapshot()
        .into_iter()
        .map(|g| {
            let pod = g
                .tags
                .get(spillway::aci::TAG_POD_NAME)
                .cloned()
                .unwrap_or_default();
            (pod, g.name)
        })
        .collect()
}

fn events(srv: &TestApiServer, ns: &str, reason: &str) -> Vec<(String, String)> {
    srv.list::<k8s_openapi::api::events::v1::Event>(Some(ns))
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            (
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// The shipped deploy (namespaces, RBAC, the webhook configuration) and
/// the test's namespaces; the virtual node is registered by spillway.
async fn cluster() -> TestApiServer {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    let namespaces: Api<Namespace> = Api::all(srv.client());
    for (name, labels) in [
        ("web", json!({})),
        ("shop", json!({})),
        ("vm-only", json!({})),
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

struct Spillway {
    metrics: Arc<Metrics>,
    emulator: EmulatorHandle,
    extender: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), spillway::run::RunError>>,
}

impl Spillway {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let done = tokio::time::timeout(WAIT, &mut self.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        self.emulator.shutdown().await;
    }

    fn unadmitted_gauge(&self, ns: &str) -> i64 {
        self.metrics.unadmitted_pods.with_label_values(&[ns]).get()
    }

    fn decisions(&self, verdict: &str, reason: &str) -> u64 {
        self.metrics
            .decisions
            .with_label_values(&[verdict, reason])
            .get()
    }

    fn aci_lists(&self) -> u64 {
        self.metrics
            .aci_requests
            .with_label_values(&["list", "ok"])
            .get()
    }
}

/// `spillway run` as its ServiceAccount with the embedded provider on a
/// fresh ACI emulator; with the webhook (its configuration pointed at it
/// and waited for) when `webhook` is true.
async fn start(srv: &TestApiServer, webhook: bool, extra: &[&str]) -> Spillway {
    let dir = support::policy_dir("aks-virtual-node-example-policies", POLICIES);
    let emulator = support::fast_emulator().await;
    let mut flags = vec![
        "--tick-ms",
        "100",
        "--view-refresh-ms",
        "20",
        "--webhook-cert-host",
        "127.0.0.1",
    ];
    flags.extend_from_slice(extra);
    let run = support::emulated_run(&dir, emulator.url.as_str(), "aks-example", &flags);
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
    let (listener, hook) = (bind().await, bind().await);
    let extender = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let port = hook.local_addr().map(|a| a.port()).unwrap_or_default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = srv.kube_config_as("spillway-system", "spillway");
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        spillway::run::run_with_webhook(
            config,
            &run,
            store,
            m,
            listener,
            webhook.then_some(hook),
            async move {
                let _ = rx.await;
            },
        )
        .await
    });
    if webhook {
        // Tests cannot dial Service DNS: call spillway by URL, as the real
        // API server accepts too; everything else as shipped.
        let url = format!(
            "https://127.0.0.1:{port}{}",
            spillway::admission::MUTATE_PATH
        );
        srv.modify::<MutatingWebhookConfiguration>("", "spillway", |m| {
            for h in m.webhooks.iter_mut().flatten() {
                h.client_config.service = None;
                h.client_config.url = Some(url.clone());
            }
        });
        let published = support::poll_until(WAIT, || {
            srv.get::<MutatingWebhookConfiguration>("", "spillway")
                .and_then(|m| m.webhooks)
                .and_then(|w| w.first().and_then(|h| h.client_config.ca_bundle.clone()))
                .is_some_and(|b| !b.0.is_empty())
        })
        .await;
        assert!(
            published,
            "spillway publishes its CA; denials: {:?}",
            srv.auth_denials()
        );
    }
    let registered = support::poll_until(WAIT, || support::node_ready(srv, ACI_NODE)).await;
    assert!(
        registered,
        "spillway registers {ACI_NODE}; denials: {:?}",
        srv.auth_denials()
    );
    Spillway {
        metrics,
        emulator,
        extender,
        stop: Some(tx),
        task,
    }
}

/// A ReplicaSet controller for `template` in `ns` keeping `replicas` pods.
fn replicaset(
    srv: &TestApiServer,
    ns: &str,
    name: &str,
    replicas: usize,
    template: Pod,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(actors::replicaset(
        srv.client(),
        ns.into(),
        name.into(),
        format!("rs-{name}-uid"),
        Arc::new(AtomicUsize::new(replicas)),
        template,
        Arc::new(Mutex::new(0)),
    ))
}

/// Pool `user` as the cluster autoscaler may grow it: at most 2 nodes of
/// `cpu` vCPU, 4Gi and `max_pods` pods, labelled as AKS labels agent nodes.
fn user_pool(cpu: &str, max_pods: u32) -> actors::PoolTemplate {
    actors::PoolTemplate {
        name: "user".into(),
        max: 2,
        cpu: cpu.into(),
        memory: "4Gi".into(),
        labels: BTreeMap::from([
            ("kubernetes.io/role".into(), "agent".into()),
            ("beta.kubernetes.io/os".into(), "linux".into()),
            ("kubernetes.io/os".into(), "linux".into()),
        ]),
        taints: Vec::new(),
        max_pods,
    }
}

/// The rest of the cluster: kube-scheduler (calling spillway's extender),
/// the VMs' kubelets and the cluster autoscaler growing `pool`.
struct Actors {
    bindings: Bindings,
    /// (pool, node) added by the cluster autoscaler.
    added: Arc<Mutex<Vec<(String, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn actors(srv: &TestApiServer, spillway: &Spillway, pool: actors::PoolTemplate) -> Actors {
    let bindings = Bindings::default();
    let added = Arc::new(Mutex::new(Vec::new()));
    let tasks = vec![
        tokio::spawn(actors::scheduler(
            srv.client(),
            spillway.extender.clone(),
            bindings.clone(),
        )),
        tokio::spawn(actors::kubelet_except(
            srv.client(),
            BTreeSet::from([ACI_NODE.to_string()]),
        )),
        tokio::spawn(actors::cluster_autoscaler(
            srv.client(),
            vec![pool],
            added.clone(),
        )),
    ];
    Actors {
        bindings,
        added,
        tasks,
    }
}

/// Where each of `names`' pods was bound, and when.
fn bindings_of(bindings: &Bindings, names: &BTreeSet<String>) -> Vec<(String, String, Instant)> {
    bindings
        .all()
        .into_iter()
        .filter(|(name, _, _)| names.contains(name))
        .collect()
}

/// The first binding to the virtual node.
fn first_burst(bound: &[(String, String, Instant)]) -> Instant {
    bound
        .iter()
        .filter(|(_, node, _)| node == ACI_NODE)
        .map(|(_, _, at)| *at)
        .min()
        .unwrap_or_else(|| panic!("no pod on {ACI_NODE}: {bound:?}"))
}

/// The documentation's sample app, applied unchanged, where it cannot run
/// at once: the VMs are at their pod count (`maxPods`), so a pod that
/// requests nothing still has no room. It waits `spillAfter` while the
/// cluster autoscaler adds a VM, the VM takes what its pod count allows,
/// and only the rest bursts, up to `maxPods: 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unchanged_sample_waits_for_a_vm_when_the_vms_are_full_of_pods() {
    let srv = cluster().await;
    srv.insert(
        &node("vm-0")
            .pool("user")
            .label("kubernetes.io/role", "agent")
            .label("beta.kubernetes.io/os", "linux")
            .label("kubernetes.io/os", "linux")
            .max_pods(2)
            .build(),
    );
    for i in 0..2 {
        srv.insert(
            &pod()
                .ns("default")
                .name(&format!("filler-{i}"))
                .cpu("100m")
                .on_node("vm-0")
                .build(),
        );
    }
    let spillway = start(&srv, true, &[]).await;
    let Actors {
        bindings,
        added,
        mut tasks,
    } = actors(&srv, &spillway, user_pool("4", 2));
    let t0 = Instant::now();
    tasks.push(replicaset(
        &srv,
        "web",
        "aci-helloworld-7d9f8c",
        5,
        template_of(AKS_EXAMPLE),
    ));
    let mut most_on_aci = 0;
    let settled = support::poll_until(WAIT, || {
        let web = live(&srv, "web");
        most_on_aci = most_on_aci.max(count_on(&web, ACI_NODE));
        let running_on_aci = web
            .iter()
            .filter(|p| {
                on_node(p).as_deref() == Some(ACI_NODE) && phase(p).as_deref() == Some("Running")
            })
            .count();
        web.len() == 5 && count_on(&web, "aks-user-1") == 2 && running_on_aci == 2
    })
    .await;
    let web = live(&srv, "web");
    let summary: Vec<_> = web
        .iter()
        .map(|p| (p.metadata.name.clone(), on_node(p), phase(p)))
        .collect();
    assert!(
        settled,
        "web: {summary:?}\nVMs added: {:?}\ndenials: {:?}",
        added.lock().map(|a| a.clone()).unwrap_or_default(),
        srv.auth_denials()
    );
    assert_eq!(most_on_aci, 2, "maxPods: 2 held at every moment");
    assert_eq!(count_on(&web, "vm-0"), 0, "vm-0 was at its pod count");
    assert_eq!(
        web.iter().filter(|p| on_node(p).is_none()).count(),
        1,
        "the fifth waits for budget: {summary:?}"
    );
    // Scheduled by spillway-scheduler with the pin relaxed, as shipped.
    for p in &web {
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
            Some(SCHEDULER)
        );
        assert!(
            p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("spillway.io/relaxed-pin"))
        );
    }
    // It waited for the VM, and burst only after spillAfter (creation
    // timestamps have whole seconds: one of slack), the new VM filled first.
    assert!(spillway.decisions("wait", "waiting-for-vm") > 0);
    // Asked again, the extender refuses the fifth for its budget.
    let fifth = web.iter().find(|p| on_node(p).is_none());
    let answer = actors::extender_call(
        &spillway.extender,
        "/filter",
        &json!({"Pod": fifth, "Nodes": null, "NodeNames": [ACI_NODE]}),
    )
    .await
    .unwrap_or_default();
    let why = answer["FailedAndUnresolvableNodes"][ACI_NODE]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("budget-pods"), "{answer}");
    let names: BTreeSet<String> = web.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let bound = bindings_of(&bindings, &names);
    let burst = first_burst(&bound);
    assert!(
        burst.duration_since(t0) >= Duration::from_secs(SPILL_AFTER_SECS - 1),
        "the sample burst {:?} after its pods were created, before spillAfter",
        burst.duration_since(t0)
    );
    let last_vm = bound
        .iter()
        .filter(|(_, node, _)| node == "aks-user-1")
        .map(|(_, _, at)| *at)
        .max();
    assert!(
        last_vm.is_some_and(|vm| vm < burst),
        "the new VM filled before anything burst: {bound:?}"
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    for t in tasks {
        t.abort();
    }
    spillway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aks_virtual_node_example_is_decided_by_spillway() {
    let srv = cluster().await;
    // Pool `user`: one VM, full. The cluster autoscaler may add one more
    // (1 vCPU: room for two of `shop`'s 500m pods).
    // An AKS agent node's labels: the sample app's other selectors match.
    srv.insert(
        &node("vm-0")
            .pool("user")
            .label("kubernetes.io/role", "agent")
            .label("beta.kubernetes.io/os", "linux")
            .label("kubernetes.io/os", "linux")
            .cpu("4")
            .memory("16Gi")
            .build(),
    );
    srv.insert(
        &pod()
            .ns("default")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
    );
    let spillway = start(&srv, true, &[]).await;
    let Actors {
        bindings,
        added,
        mut tasks,
    } = actors(&srv, &spillway, user_pool("1", 110));
    let t0 = Instant::now();
    // `kubectl apply` of both Deployments; the sample app scaled to 3.
    tasks.push(replicaset(
        &srv,
        "web",
        "aci-helloworld-7d9f8c",
        3,
        template_of(AKS_EXAMPLE),
    ));
    let mut kept = template_of(AKS_EXAMPLE);
    kept.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("spillway.io/virtual-node-pin".into(), "keep".into());
    tasks.push(replicaset(
        &srv,
        "web",
        "aci-helloworld-kept-5f4e3d",
        3,
        kept,
    ));
    tasks.push(replicaset(
        &srv,
        "shop",
        "shop-5c6b7d",
        5,
        template_of(AKS_AFTER_VMS),
    ));

    // Until everything settles, never more than the budget on ACI.
    let mut most_on_aci: BTreeMap<&str, usize> = BTreeMap::new();
    let settled = support::poll_until(WAIT, || {
        let (web, shop) = (live(&srv, "web"), live(&srv, "shop"));
        for (ns, pods) in [("web", &web), ("shop", &shop)] {
            let n = count_on(pods, ACI_NODE);
            let most = most_on_aci.entry(ns).or_default();
            *most = (*most).max(n);
        }
        let running_on_aci = |pods: &[Pod]| {
            pods.iter()
                .filter(|p| {
                    on_node(p).as_deref() == Some(ACI_NODE)
                        && phase(p).as_deref() == Some("Running")
                })
                .count()
        };
        web.len() == 6
            && running_on_aci(&web) == 2
            && count_on(&web, "vm-0") == 3
            && shop.len() == 5
            && running_on_aci(&shop) == 2
            && count_on(&shop, "aks-user-1") == 2
    })
    .await;
    let summary = |ns: &str| -> Vec<(String, Option<String>, Option<String>)> {
        live(&srv, ns)
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    on_node(p),
                    phase(p),
                )
            })
            .collect()
    };
    assert!(
        settled,
        "web: {:?}\nshop: {:?}\nVMs added: {:?}\ndenials: {:?}",
        summary("web"),
        summary("shop"),
        added.lock().map(|a| a.clone()).unwrap_or_default(),
        srv.auth_denials()
    );
    assert_eq!(
        most_on_aci,
        BTreeMap::from([("shop", 2), ("web", 2)]),
        "maxPods: 2 held at every moment"
    );

    // Every pod went through the webhook to spillway's scheduler.
    for ns in ["web", "shop"] {
        for p in live(&srv, ns) {
            assert_eq!(
                p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
                Some(SCHEDULER),
                "{ns}/{:?}",
                p.metadata.name
            );
        }
    }
    // The one pod of each over the budget stays pending, refused for it.
    for ns in ["web", "shop"] {
        let pending: Vec<Pod> = live(&srv, ns)
            .into_iter()
            .filter(|p| on_node(p).is_none())
            .collect();
        assert_eq!(pending.len(), 1, "{ns}: {:?}", summary(ns));
    }
    assert!(spillway.decisions("wait", "budget-pods") > 0);

    // The sample app's pin was relaxed at admission: it ran on the VM.
    // The copy that keeps its pin burst at once: no VM can ever take it.
    for p in live(&srv, "web") {
        let keeps = p
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("spillway.io/virtual-node-pin"));
        let relaxed = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("spillway.io/relaxed-pin"))
            .cloned();
        let selector = p
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        if keeps {
            assert_eq!(relaxed, None);
            assert_eq!(
                selector.get("type").map(String::as_str),
                Some("virtual-kubelet")
            );
            assert_ne!(on_node(&p).as_deref(), Some("vm-0"));
        } else {
            assert_eq!(
                relaxed.as_deref(),
                Some("nodeSelector type=virtual-kubelet")
            );
            assert!(!selector.contains_key("type"), "{selector:?}");
            assert_eq!(
                selector.get("kubernetes.io/role").map(String::as_str),
                Some("agent")
            );
            assert_eq!(on_node(&p).as_deref(), Some("vm-0"));
        }
    }
    assert!(spillway.decisions("burst", "pools-at-max") >= 2);
    // `shop` waited: VMs first (the new VM took two), the rest only after
    // spillAfter (creation timestamps have whole seconds: one of slack).
    assert!(spillway.decisions("wait", "waiting-for-vm") > 0);
    assert!(spillway.decisions("burst", "spill-after-elapsed") >= 2);
    let shop_names: BTreeSet<String> = live(&srv, "shop")
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let shop_bindings = bindings_of(&bindings, &shop_names);
    let first_burst = first_burst(&shop_bindings);
    assert!(
        first_burst.duration_since(t0) >= Duration::from_secs(SPILL_AFTER_SECS - 1),
        "shop burst {:?} after its pods were created, before spillAfter",
        first_burst.duration_since(t0)
    );
    let last_vm = shop_bindings
        .iter()
        .filter(|(_, node, _)| node == "aks-user-1")
        .map(|(_, _, at)| *at)
        .max();
    assert!(
        last_vm.is_some_and(|vm| vm < first_burst),
        "the new VM filled before anything burst: {shop_bindings:?}"
    );

    // One container group per pod on the virtual node, and nothing bypassed.
    let groups = groups_by_pod(&spillway.emulator);
    let on_aci: BTreeSet<String> = ["web", "shop"]
        .iter()
        .flat_map(|ns| live(&srv, ns))
        .filter(|p| on_node(p).as_deref() == Some(ACI_NODE))
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(groups.keys().cloned().collect::<BTreeSet<_>>(), on_aci);
    assert_eq!(spillway.unadmitted_gauge("web"), 0);
    assert_eq!(spillway.unadmitted_gauge("shop"), 0);
    assert!(events(&srv, "web", "NotAdmittedBySpillway").is_empty());
    assert_eq!(srv.auth_denials(), Vec::<String>::new());

    for t in tasks {
        t.abort();
    }
    spillway.stop().await;
}

/// Create `name` in `ns` as the default scheduler's: the AKS example's
/// pod spec (pinned to the virtual node), no webhook in the way.
async fn create_bypassing(srv: &TestApiServer, ns: &str, name: &str) {
    create_bypassing_labelled(srv, ns, name, &[]).await
}

async fn create_bypassing_labelled(
    srv: &TestApiServer,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) {
    let mut p = template_of(AKS_EXAMPLE);
    p.metadata.name = Some(name.into());
    for (k, v) in labels {
        p.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
    }
    let api: Api<Pod> = Api::namespaced(srv.client(), ns);
    let created = api
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
    assert_eq!(
        created.spec.and_then(|s| s.scheduler_name).as_deref(),
        Some("default-scheduler")
    );
}

fn get_pod(srv: &TestApiServer, ns: &str, name: &str) -> Pod {
    srv.get::<Pod>(ns, name)
        .unwrap_or_else(|| panic!("{ns}/{name} is gone"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_another_scheduler_bound_run_with_an_event_and_the_gauge() {
    let srv = cluster().await;
    // Without the webhook (spillway was down when they were created).
    let spillway = start(&srv, false, &[]).await;
    let scheduler = tokio::spawn(actors::scheduler(
        srv.client(),
        spillway.extender.clone(),
        Bindings::default(),
    ));
    // Three pods, though web's budget is two: they bypass it.
    for name in ["a", "b", "c"] {
        create_bypassing(&srv, "web", name).await;
    }
    let running = support::poll_until(WAIT, || {
        ["a", "b", "c"].iter().all(|n| {
            let p = get_pod(&srv, "web", n);
            on_node(&p).as_deref() == Some(ACI_NODE) && phase(&p).as_deref() == Some("Running")
        })
    })
    .await;
    assert!(running, "{:?}", live(&srv, "web"));
    assert_eq!(groups_by_pod(&spillway.emulator).len(), 3);
    // Once per pod, not once per sync: let three more syncs pass.
    let lists = spillway.aci_lists();
    assert!(support::poll_until(WAIT, || spillway.aci_lists() >= lists + 3).await);
    let mut reported = events(&srv, "web", "NotAdmittedBySpillway");
    reported.sort();
    assert_eq!(
        reported.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{reported:?}"
    );
    assert!(
        reported[0]
            .1
            .contains("by default-scheduler, not spillway-scheduler")
            && reported[0].1.contains("--unadmitted-pods=run"),
        "{}",
        reported[0].1
    );
    assert_eq!(spillway.unadmitted_gauge("web"), 3);
    assert!(
        spillway
            .metrics
            .render()
            .contains("spillway_unadmitted_pods{namespace=\"web\"} 3")
    );
    assert!(events(&srv, "web", "NotAdmitted").is_empty());

    // Gone from the node, gone from the gauge.
    let api: Api<Pod> = Api::namespaced(srv.client(), "web");
    for name in ["a", "b", "c"] {
        api.delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(support::poll_until(WAIT, || spillway.unadmitted_gauge("web") == 0).await);
    scheduler.abort();
    spillway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_fails_what_the_engine_would_not_admit_and_creates_no_group() {
    let srv = cluster().await;
    let spillway = start(&srv, false, &["--unadmitted-pods", "reject"]).await;
    let scheduler = tokio::spawn(actors::scheduler(
        srv.client(),
        spillway.extender.clone(),
        Bindings::default(),
    ));
    // Pinned, no VM can take them: the engine lets them burst, within budget.
    for name in ["a", "b"] {
        create_bypassing(&srv, "web", name).await;
    }
    let two_running = support::poll_until(WAIT, || {
        ["a", "b"]
            .iter()
            .all(|n| phase(&get_pod(&srv, "web", n)).as_deref() == Some("Running"))
    })
    .await;
    assert!(two_running, "{:?}", live(&srv, "web"));
    // Over the budget (maxPods 2), and a namespace whose policy says Never.
    create_bypassing(&srv, "web", "c").await;
    create_bypassing(&srv, "vm-only", "d").await;
    let failed = support::poll_until(WAIT, || {
        [("web", "c"), ("vm-only", "d")]
            .iter()
            .all(|(ns, n)| phase(&get_pod(&srv, ns, n)).as_deref() == Some("Failed"))
    })
    .await;
    assert!(
        failed,
        "{:?} {:?}",
        srv.get::<Pod>("web", "c").and_then(|p| p.status),
        srv.get::<Pod>("vm-only", "d").and_then(|p| p.status)
    );
    for (ns, name, rule) in [
        ("web", "c", "budget-pods"),
        ("vm-only", "d", "policy-never"),
    ] {
        let p = get_pod(&srv, ns, name);
        let status = p.status.unwrap_or_default();
        assert_eq!(status.reason.as_deref(), Some("NotAdmitted"), "{ns}/{name}");
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with(&format!("spillway: {rule}"))
                && message.contains("by default-scheduler, not spillway-scheduler"),
            "{ns}/{name}: {message}"
        );
        // The Event follows the status write.
        let named = support::poll_until(WAIT, || {
            events(&srv, ns, "NotAdmitted")
                .iter()
                .any(|(n, note)| n == name && note.contains(rule))
        })
        .await;
        assert!(named, "{ns}: {:?}", events(&srv, ns, "NotAdmitted"));
        assert_eq!(
            spillway
                .metrics
                .unadmitted_rejections
                .with_label_values(&[rule])
                .get(),
            1
        );
    }
    // Opted out (pod label; namespace label, though its policy says
    // Never): left alone, they run, unreported, past the budget.
    create_bypassing_labelled(&srv, "web", "e", &[("spillway.io/skip", "true")]).await;
    create_bypassing(&srv, "opted-out", "f").await;
    let opted_running = support::poll_until(WAIT, || {
        [("web", "e"), ("opted-out", "f")]
            .iter()
            .all(|(ns, n)| phase(&get_pod(&srv, ns, n)).as_deref() == Some("Running"))
    })
    .await;
    assert!(
        opted_running,
        "{:?}",
        srv.get::<Pod>("opted-out", "f").and_then(|p| p.status)
    );
    // No group for the rejected pods, then or later; the admitted run.
    let lists = spillway.aci_lists();
    assert!(support::poll_until(WAIT, || spillway.aci_lists() >= lists + 3).await);
    let groups = groups_by_pod(&spillway.emulator);
    assert_eq!(
        groups.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "e", "f"],
        "{groups:?}"
    );
    assert_eq!(spillway.emulator.state.counters().creates, 4);
    for name in ["a", "b"] {
        assert_eq!(
            phase(&get_pod(&srv, "web", name)).as_deref(),
            Some("Running")
        );
    }
    assert!(events(&srv, "opted-out", "NotAdmittedBySpillway").is_empty());
    // Every bypassing pod was reported once; the gauge counts the live ones.
    let mut reported: Vec<String> = events(&srv, "web", "NotAdmittedBySpillway")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    reported.sort();
    assert_eq!(reported, ["a", "b", "c"]);
    assert_eq!(events(&srv, "vm-only", "NotAdmittedBySpillway").len(), 1);
    assert_eq!(spillway.unadmitted_gauge("web"), 2);
    assert_eq!(spillway.unadmitted_gauge("vm-only"), 0);
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    scheduler.abort();
    spillway.stop().await;
}
