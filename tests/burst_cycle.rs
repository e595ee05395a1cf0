//! A full burst cycle, end to end: `spillway run` (extender + autoscaler +
//! embedded provider) against the test API server and one ACI emulator, with
//! a small scheduler that calls the real extender over HTTP, a kubelet for the
//! VM nodes and a ReplicaSet controller.
//!
//! VMs are full → the ReplicaSet's 50 pods wait `spillAfter`, then burst onto
//! the virtual node and run as container groups with public IPs; placeholders
//! appear; VM nodes join → the placeholders hold room there, drain-back evicts
//! the burst pods one at a time (PDB maxUnavailable 1), their groups are
//! deleted, their replacements land on VMs and the placeholders go. Midway the
//! leader stops and the standby (its provider adopting the groups) finishes
//! the job: one group per burst pod, none left.
//!
//! Also: a scale-in of the ReplicaSet removes the burst replicas first (the
//! test ReplicaSet controller picks victims as kube-controller-manager does).
//!
//! And the cycle once more on a cluster that refuses what AKS refuses:
//! tokens required, RBAC and Pod Security from deploy/, spillway as its
//! ServiceAccount, a cluster autoscaler growing only the pool the
//! placeholders fit; it ends with the least-privilege check of
//! deploy/README.md's RBAC table.

mod support;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;
use spillway::aci::emulator::{Emulator, EmulatorConfig};
use spillway::cluster::build::{node, pod};
use spillway::metrics::Metrics;
use spillway::policy::reload::PolicyStore;
use spillway::run::{RunCommand, run_with};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::actors::{self, Bindings, SCHEDULER_NAME};
use support::{PodDeletion, TestApiServer};

const VIRTUAL: &str = "virtual-node-aci-linux";
/// The Deployment of 50 pods (500m each: 25 cores, room on 7 new VMs).
const REPLICAS: usize = 50;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: RunCommand,
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    let start = Instant::now();
    assert!(
        support::poll_until(WAIT, check).await,
        "timed out waiting for: {what}"
    );
    eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

fn policies_dir() -> std::path::PathBuf {
    support::policy_dir(
        "burst-cycle-policies",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec:\n  burst: { mode: Auto, spillAfter: 3s, maxVmWait: 10m }\n  drainBack: { enabled: true, after: 2s, maxPerMinute: 600 }\n",
    )
}

/// A listener on a free loopback port, and its `host:port`.
async fn loopback() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    (listener, addr)
}

struct Instance {
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), spillway::run::RunError>>,
}

impl Instance {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }
}

async fn start(
    srv: &TestApiServer,
    identity: &str,
    listener: tokio::net::TcpListener,
    extra: &[&str],
) -> Instance {
    start_with_config(srv.kube_config(), identity, listener, extra).await
}

/// [`start`] with every request of the process (extender, autoscaler,
/// embedded provider) made with `config`, e.g. a ServiceAccount's token.
async fn start_with_config(
    config: kube::Config,
    identity: &str,
    listener: tokio::net::TcpListener,
    extra: &[&str],
) -> Instance {
    let dir = policies_dir();
    let mut argv: Vec<String> = [
        "spillway",
        "--policies",
        dir.to_str().unwrap_or_default(),
        "--identity",
        identity,
        "--lease-seconds",
        "2",
        "--tick-ms",
        "100",
        "--view-refresh-ms",
        "20",
        "--eviction-settle-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Args::parse_from(argv);
    let metrics = Arc::new(Metrics::new());
    let store =
        Arc::new(PolicyStore::open(&dir, metrics.clone()).unwrap_or_else(|e| panic!("{e}")));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let own = metrics.clone();
    let task = tokio::spawn(async move {
        run_with(config, &args.run, store, metrics, listener, async move {
            let _ = rx.await;
        })
        .await
    });
    Instance {
        metrics: own,
        stop: Some(tx),
        task,
    }
}

fn web_pods(srv: &TestApiServer) -> Vec<Pod> {
    srv.list::<Pod>(Some("web"))
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && p.metadata.name.as_deref() != Some("filler")
        })
        .collect()
}

fn on_node(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn deletion_cost(p: &Pod) -> Option<String> {
    p.metadata
        .annotations
        .as_ref()?
        .get("controller.kubernetes.io/pod-deletion-cost")
        .cloned()
}

fn running_and_ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn names(pods: &[Pod], on: impl Fn(Option<&str>) -> bool) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| on(on_node(p).as_deref()))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

fn holder(srv: &TestApiServer) -> Option<String> {
    srv.get::<Lease>("spillway-system", "spillway-leader")?
        .spec?
        .holder_identity
}

/// The ReplicaSet's pod template: a 500m web server for the spillway
/// scheduler that tolerates the virtual node (with `publicIp: auto` its
/// container group gets a public IP because it has a port).
fn web_template() -> Pod {
    let mut template = pod()
        .ns("web")
        .label("app", "web")
        .cpu("500m")
        .memory("512Mi")
        .tolerate_virtual()
        .build();
    if let Some(s) = template.spec.as_mut() {
        s.scheduler_name = Some(SCHEDULER_NAME.into());
        s.termination_grace_period_seconds = Some(1);
        for c in &mut s.containers {
            c.ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 80,
                ..Default::default()
            }]);
        }
    }
    template
}

/// The rest of the cluster, talking to the API server with `client`: the
/// test scheduler (calling the extender at `extender`), a kubelet for every
/// node but `kubelet_skips`, and the ReplicaSet `web/web` keeping
/// `replicas` pods of `template`.
fn cluster_actors(
    client: kube::Client,
    extender: String,
    bindings: Bindings,
    kubelet_skips: BTreeSet<String>,
    replicas: Arc<AtomicUsize>,
    template: Pod,
    created: Arc<Mutex<usize>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(actors::scheduler(client.clone(), extender, bindings)),
        tokio::spawn(actors::kubelet_except(client.clone(), kubelet_skips)),
        tokio::spawn(actors::replicaset(
            client,
            "web".into(),
            "web".into(),
            "rs-web-uid".into(),
            replicas,
            template,
            created,
        )),
    ]
}

/// One VM node, full, and the virtual node.
async fn full_cluster() -> TestApiServer {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    support::install_placeholder_priority_class(&srv);
    srv.insert(&node("vm-0").pool("user").cpu("4").memory("16Gi").build());
    srv.insert(&node(VIRTUAL).virtual_kubelet().build());
    srv.insert(
        &pod()
            .ns("web")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
    );
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_drain_back_with_a_leader_change() {
    let srv = full_cluster().await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "web"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    srv.insert(&pdb);

    // spillway: a leader and a standby, both serving the extender.
    let (la, _) = loopback().await;
    let (lb, extender) = loopback().await;
    // ACI: one emulator both replicas' providers talk to (the leader's is
    // the virtual node), 50 times faster than the real lifecycle.
    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let provider_args = [
        "--aci",
        "emulator",
        "--aci-emulator-url",
        emu.url.as_str(),
        "--node-name",
        VIRTUAL,
        "--kubelet-listen",
        "127.0.0.1:0",
        "--aci-sync-secs",
        "1",
        "--cluster-id",
        "burst-cycle",
    ];
    let a = start(&srv, "replica-a", la, &provider_args).await;
    eventually("replica-a leads", || {
        holder(&srv).as_deref() == Some("replica-a")
    })
    .await;
    let b = start(&srv, "replica-b", lb, &provider_args).await;

    // The rest of the cluster.
    let bindings = Bindings::default();
    let created = Arc::new(Mutex::new(0usize));
    let template = web_template();
    let actors = cluster_actors(
        srv.client(),
        extender,
        bindings.clone(),
        // spillway's provider is the virtual node's kubelet.
        BTreeSet::from([VIRTUAL.to_string()]),
        Arc::new(AtomicUsize::new(REPLICAS)),
        template,
        created.clone(),
    );
    let started = Instant::now();

    // 1. VMs are full: every replica bursts, but only after spillAfter (3 s;
    // Kubernetes timestamps have whole seconds, so at least 2 s after creation).
    eventually("all replicas on the virtual node", || {
        let pods = web_pods(&srv);
        pods.len() == REPLICAS && pods.iter().all(|p| on_node(p).as_deref() == Some(VIRTUAL))
    })
    .await;
    let early: Vec<_> = bindings
        .all()
        .into_iter()
        .filter(|(_, node, at)| {
            node == VIRTUAL && at.duration_since(started) < Duration::from_secs(2)
        })
        .collect();
    assert!(
        early.is_empty(),
        "bound to the virtual node before spillAfter: {early:?}"
    );
    // Each burst pod runs as its own container group, with the group's public IP.
    eventually(
        "every burst pod Running with its container group's IP",
        || {
            let groups = emu.state.snapshot();
            let ips: BTreeSet<String> = groups.iter().filter_map(|g| g.ip.clone()).collect();
            let pods = web_pods(&srv);
            groups.len() == REPLICAS
                && pods.iter().all(|p| {
                    running_and_ready(p)
                        && p.status
                            .as_ref()
                            .and_then(|s| s.pod_ip.as_ref())
                            .is_some_and(|ip| ips.contains(ip))
                })
        },
    )
    .await;
    let burst_uids: BTreeSet<String> = web_pods(&srv)
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    eventually("one placeholder per burst pod", || {
        srv.list::<Pod>(Some("spillway-system")).len() == REPLICAS
    })
    .await;
    eventually("burst pods go first on scale-in", || {
        web_pods(&srv).iter().all(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                .map(String::as_str)
                == Some("-1000")
        })
    })
    .await;

    // 2. VM nodes join; the placeholders take the room; drain-back starts.
    for n in ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6", "vm-7"] {
        srv.insert(&node(n).pool("user").cpu("4").memory("16Gi").build());
    }
    eventually("placeholders run on the new VMs", || {
        srv.list::<Pod>(Some("spillway-system"))
            .iter()
            .filter(|p| on_node(p).is_some_and(|n| n.starts_with("vm-")))
            .count()
            == REPLICAS
    })
    .await;
    eventually("some pods came back", || {
        web_pods(&srv)
            .iter()
            .filter(|p| on_node(p).is_some_and(|n| n.starts_with("vm-")))
            .count()
            >= 3
    })
    .await;

    // 3. The leader goes away mid-cycle; the standby takes over and finishes.
    a.stop().await;
    eventually("replica-b leads", || {
        holder(&srv).as_deref() == Some("replica-b")
    })
    .await;
    eventually(
        "every replica is back on a VM and no placeholder is left",
        || {
            let pods = web_pods(&srv);
            pods.len() == REPLICAS
                && pods
                    .iter()
                    .all(|p| on_node(p).is_some_and(|n| n.starts_with("vm-")))
                && srv.list::<Pod>(Some("spillway-system")).is_empty()
        },
    )
    .await;

    // ACI: every group deleted with its pod, one group per burst pod ever
    // (no duplicate across the leader change), nothing leaked.
    eventually("no container group is left", || {
        emu.state.snapshot().is_empty()
    })
    .await;
    let counters = emu.state.counters();
    assert_eq!(counters.creates, REPLICAS as u64, "{counters:?}");
    assert!(
        counters.creates_by_name.values().all(|&n| n == 1),
        "a group was created twice: {:?}",
        counters.creates_by_name
    );
    assert_eq!(counters.deletes, REPLICAS as u64, "{counters:?}");
    // Budget reservations of the burst admissions were all settled and removed.
    eventually("the burst reservations are reconciled away", || {
        srv.get::<k8s_openapi::api::core::v1::ConfigMap>(
            "spillway-system",
            spillway::extender::reservations::DEFAULT_NAME,
        )
        .is_some_and(|cm| cm.data.as_ref().is_none_or(|d| d.is_empty()))
    })
    .await;
    // Each burst pod was evicted exactly once: one replacement per burst pod.
    let total_created = created.lock().map(|c| *c).unwrap_or(0);
    assert_eq!(total_created, 2 * REPLICAS, "replacements created");
    let left: BTreeSet<String> = web_pods(&srv)
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    assert!(left.is_disjoint(&burst_uids));
    // Drained back means a new pod from the template: none keeps the low cost.
    let kept: Vec<String> = web_pods(&srv)
        .iter()
        .filter(|p| deletion_cost(p).is_some())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        kept.is_empty(),
        "back on a VM with a deletion cost: {kept:?}"
    );
    let evictions = srv
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/eviction"))
        .count();
    assert!(evictions >= REPLICAS, "{evictions} eviction requests");
    // The PDB held: never more than one replica missing at a time is what the
    // API server enforced; every refused eviction was retried, none lost.

    for t in actors {
        t.abort();
    }
    b.stop().await;
}

/// The scheduler parks a pod it could not place; only an update of the pod
/// (spillway's nudge) or a cluster event brings it back before its back-off.
/// With the autoscaler in dry-run (no nudges) the extender would let the pods
/// burst, yet they stay pending: the nudge is what makes bursting timely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_nudge_pods_wait_for_the_scheduler_back_off() {
    let srv = full_cluster().await;
    let (listener, extender) = loopback().await;
    let inst = start(&srv, "dry", listener, &["--dry-run"]).await;
    let template = web_template();
    let created = Arc::new(Mutex::new(0usize));
    let actors = cluster_actors(
        srv.client(),
        extender,
        Bindings::default(),
        BTreeSet::new(),
        Arc::new(AtomicUsize::new(4)),
        template,
        created,
    );
    eventually("the replicas exist", || web_pods(&srv).len() == 4).await;
    // Well past spillAfter (3 s): the engine says burst, nobody retries.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pods = web_pods(&srv);
    assert!(
        pods.iter().all(|p| on_node(p).is_none()),
        "bound without a nudge: {pods:?}"
    );
    assert!(pods.iter().all(|p| {
        p.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("spillway.io/burst-at"))
    }));
    // A nudge by hand (what the leader would patch) and the pod goes at once.
    let name = pods[0].metadata.name.clone().unwrap_or_default();
    srv.modify::<Pod>("web", &name, |p| {
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("spillway.io/burst-at".into(), "now".into());
    });
    eventually("the nudged pod is bound to the virtual node", || {
        srv.get::<Pod>("web", &name)
            .and_then(|p| on_node(&p))
            .as_deref()
            == Some(VIRTUAL)
    })
    .await;
    assert_eq!(
        web_pods(&srv)
            .iter()
            .filter(|p| on_node(p).is_some())
            .count(),
        1
    );
    for t in actors {
        t.abort();
    }
    inst.stop().await;
}

/// Scale-in order, end to end: four replicas run on a VM, two burst onto the
/// virtual node, all Running and Ready; the autoscaler gives the burst ones a
/// low `pod-deletion-cost`; scaling the ReplicaSet down by two removes exactly
/// the burst replicas. Without the cost the ReplicaSet controller would remove
/// VM replicas here: more replicas share vm-1 (4) than the virtual node (2),
/// and more pods on the same node go first (rule 5 of its ordering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_removes_the_burst_replicas_first() {
    const ON_VM: usize = 4;
    const BURST: usize = 2;
    let srv = full_cluster().await;
    // Room for exactly ON_VM replicas of 500m beside the full vm-0.
    srv.insert(&node("vm-1").pool("user").cpu("2").memory("16Gi").build());
    let (listener, extender) = loopback().await;
    let inst = start(&srv, "solo", listener, &[]).await;
    let template = web_template();
    let replicas = Arc::new(AtomicUsize::new(ON_VM + BURST));
    let created = Arc::new(Mutex::new(0usize));
    let actors = cluster_actors(
        srv.client(),
        extender,
        Bindings::default(),
        BTreeSet::new(),
        replicas.clone(),
        template,
        created.clone(),
    );

    eventually(
        "4 replicas on vm-1, 2 on the virtual node, all Running and Ready",
        || {
            let pods = web_pods(&srv);
            pods.len() == ON_VM + BURST
                && pods.iter().all(running_and_ready)
                && names(&pods, |n| n == Some("vm-1")).len() == ON_VM
                && names(&pods, |n| n == Some(VIRTUAL)).len() == BURST
        },
    )
    .await;
    eventually("the burst replicas carry the low deletion cost", || {
        web_pods(&srv)
            .iter()
            .filter(|p| on_node(p).as_deref() == Some(VIRTUAL))
            .filter(|p| deletion_cost(p).as_deref() == Some("-1000"))
            .count()
            == BURST
    })
    .await;
    let pods = web_pods(&srv);
    let on_vm = names(&pods, |n| n == Some("vm-1"));
    let burst = names(&pods, |n| n == Some(VIRTUAL));
    assert_eq!(on_vm.len(), ON_VM, "{pods:?}");
    assert_eq!(burst.len(), BURST, "{pods:?}");
    // VM replicas never get it.
    assert!(
        pods.iter()
            .filter(|p| on_node(p).as_deref() == Some("vm-1"))
            .all(|p| deletion_cost(p).is_none()),
        "{pods:?}"
    );

    // Scale in by the number of burst replicas.
    replicas.store(ON_VM, Ordering::SeqCst);
    eventually("the ReplicaSet is down to 4 replicas", || {
        web_pods(&srv).len() == ON_VM
    })
    .await;
    let left = names(&web_pods(&srv), |_| true);
    assert_eq!(
        left, on_vm,
        "scale-in removed other replicas than {burst:?}"
    );
    eventually(
        "the burst replicas are gone with their placeholders",
        || {
            let all: BTreeSet<String> = srv
                .list::<Pod>(Some("web"))
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            all.is_disjoint(&burst) && srv.list::<Pod>(Some("spillway-system")).is_empty()
        },
    )
    .await;
    // Nothing was recreated: the ReplicaSet only deleted.
    assert_eq!(created.lock().map(|c| *c).unwrap_or(0), ON_VM + BURST);
    assert_eq!(names(&web_pods(&srv), |_| true), on_vm);

    for t in actors {
        t.abort();
    }
    inst.stop().await;
}

/// The test ReplicaSet controller's victim order, rule by rule
/// (`ActivePodsWithRanks.Less` in kube-controller-manager).
#[test]
fn replicaset_scale_down_picks_victims_like_kube_controller_manager() {
    use k8s_openapi::api::core::v1::PodCondition;
    let ready = |mut p: Pod| {
        p.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            });
        p
    };
    let cost = |mut p: Pod, c: &str| {
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "controller.kubernetes.io/pod-deletion-cost".into(),
                c.into(),
            );
        p
    };
    let pick = |pods: &[Pod], n: usize| -> Vec<String> {
        actors::pods_to_delete(pods, n)
            .into_iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    };
    // 1. unassigned before assigned; 2. Pending < Unknown < Running.
    let pods = vec![
        ready(pod().name("running").on_node("vm-1").build()),
        pod()
            .name("unknown")
            .on_node("vm-2")
            .phase("Unknown")
            .build(),
        pod()
            .name("pending")
            .on_node("vm-3")
            .phase("Pending")
            .build(),
        pod().name("unassigned").build(),
    ];
    assert_eq!(pick(&pods, 3), ["unassigned", "pending", "unknown"]);
    // 3. not ready before ready, whatever the cost.
    let pods = vec![
        cost(ready(pod().name("ready").on_node("vm-1").build()), "-1000"),
        pod().name("not-ready").on_node("vm-2").build(),
    ];
    assert_eq!(pick(&pods, 1), ["not-ready"]);
    // 4. lower cost first, before the node rank; invalid values count as 0.
    let pods = vec![
        ready(pod().name("a").on_node("vm-1").build()),
        ready(pod().name("b").on_node("vm-1").build()),
        cost(ready(pod().name("plus").on_node("vm-1").build()), "+5"),
        cost(ready(pod().name("cheap").on_node("vm-2").build()), "-1"),
    ];
    assert_eq!(pick(&pods, 1), ["cheap"]);
    assert_eq!(actors::deletion_cost(&pods[2]), 0);
    // 5. at equal cost, pods on the busier node first.
    let pods = vec![
        ready(pod().name("alone").on_node("vm-2").build()),
        ready(pod().name("a").on_node("vm-1").build()),
        ready(pod().name("b").on_node("vm-1").build()),
    ];
    assert_eq!(pick(&pods, 2), ["a", "b"]);
    assert_eq!(pick(&pods, 3).len(), 3);
}

/// Pods pinned to pool `user` (required node affinity) while the only free
/// VM room is on the tainted pool `gpu`: they burst, their placeholders
/// carry the affinity, so neither the placeholders nor drain-back use the
/// gpu room; once the cluster autoscaler grows `user` for the placeholders,
/// drain-back brings every pod home to `user`, none bursts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_pods_drain_back_only_into_their_own_pool() {
    let srv = full_cluster().await;
    srv.insert(
        &node("aks-gpu-0")
            .pool("gpu")
            .cpu("8")
            .memory("32Gi")
            .taint("sku", "gpu")
            .build(),
    );
    let (listener, extender) = loopback().await;
    let a = start(&srv, "replica-a", listener, &[]).await;
    eventually("replica-a leads", || {
        holder(&srv).as_deref() == Some("replica-a")
    })
    .await;
    let mut template = web_template();
    // Pool `user`, or the virtual node (terms are ORed; the scheduler
    // applies required affinity to the virtual node too).
    if let Some(s) = template.spec.as_mut() {
        s.affinity = serde_json::from_value(json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "agentpool", "operator": "In", "values": ["user"]}]},
            {"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]}]}
        ]}}}))
        .ok();
    }
    let replicas = 4;
    let mut tasks = cluster_actors(
        srv.client(),
        extender,
        Bindings::default(),
        BTreeSet::new(),
        Arc::new(AtomicUsize::new(replicas)),
        template,
        Arc::new(Mutex::new(0usize)),
    );
    eventually("all pods burst", || {
        names(&web_pods(&srv), |n| n == Some(VIRTUAL)).len() == replicas
    })
    .await;
    eventually("one placeholder per burst pod, none placed", || {
        let ph = srv.list::<Pod>(Some("spillway-system"));
        ph.len() == replicas && ph.iter().all(|p| on_node(p).is_none())
    })
    .await;
    // Longer than drainBack.after (2 s) with the gpu room free all along:
    // nothing is evicted, nothing lands on the gpu pool.
    let calm = Instant::now();
    while calm.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let evictions = srv
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/eviction"))
            .count();
        assert_eq!(
            evictions, 0,
            "no drain-back while only the tainted pool has room"
        );
    }
    assert!(
        srv.list::<Pod>(None)
            .iter()
            .all(|p| on_node(p).as_deref() != Some("aks-gpu-0"))
    );

    // The cluster autoscaler grows the pool the placeholders ask for.
    let added = Arc::new(Mutex::new(Vec::new()));
    tasks.push(tokio::spawn(actors::cluster_autoscaler(
        srv.client(),
        vec![
            actors::PoolTemplate {
                name: "gpu".into(),
                max: 3,
                cpu: "8".into(),
                memory: "32Gi".into(),
                labels: Default::default(),
                taints: vec![("sku".into(), "gpu".into(), "NoSchedule".into())],
                max_pods: 110,
            },
            actors::PoolTemplate {
                name: "user".into(),
                max: 3,
                cpu: "4".into(),
                memory: "16Gi".into(),
                labels: Default::default(),
                taints: vec![],
                max_pods: 110,
            },
        ],
        added.clone(),
    )));
    eventually("every pod home on pool user", || {
        let pods = web_pods(&srv);
        pods.len() == replicas
            && pods.iter().all(|p| {
                running_and_ready(p) && on_node(p).is_some_and(|n| n.starts_with("aks-user-"))
            })
    })
    .await;
    let grown: Vec<String> = added
        .lock()
        .map(|a| a.iter().map(|(pool, _)| pool.clone()).collect())
        .unwrap_or_default();
    assert!(
        !grown.is_empty() && grown.iter().all(|p| p == "user"),
        "{grown:?}"
    );
    eventually("placeholders gone", || {
        srv.list::<Pod>(Some("spillway-system")).is_empty()
    })
    .await;
    assert_eq!(
        a.metrics.drainback_rebursts.get(),
        0,
        "no replacement burst again"
    );
    assert_eq!(
        a.metrics
            .drainback_evictions
            .with_label_values(&["web", "done"])
            .get(),
        replicas as u64
    );
    assert_eq!(
        a.metrics
            .placeholder_creates
            .with_label_values(&["error"])
            .get(),
        0
    );
    for t in tasks {
        t.abort();
    }
    a.stop().await;
}

/// The ServiceAccount deploy/ gives spillway, and the node name its RBAC
/// pins with `resourceNames` (the provider's default `--node-name`).
const SA_NS: &str = "spillway-system";
const SA: &str = "spillway";
const ACI_NODE: &str = "spillway-aci";

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

/// What a real web Deployment carries and the provider must resolve as the
/// kubelet would, each through its own RBAC rule: an env var from a Secret,
/// one from a ConfigMap, and a projected service-account token (a
/// TokenRequest bound to the pod). Pinned to pool `user` by required node
/// affinity, or the virtual node (terms are ORed; the scheduler applies
/// required affinity to the virtual node too).
fn web_template_with_sources() -> Pod {
    let mut template = web_template();
    if let Some(s) = template.spec.as_mut() {
        s.affinity = Some(obj(json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "agentpool", "operator": "In", "values": ["user"]}]},
            {"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]}]}
        ]}}})));
        for c in &mut s.containers {
            c.env = Some(obj(json!([
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}
            ])));
            c.volume_mounts = Some(obj(
                json!([{"name": "token", "mountPath": "/var/run/token"}]),
            ));
        }
        s.volumes = Some(obj(json!([{"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
        ]}}])));
    }
    template
}

/// Node pools the test cluster autoscaler may grow, in the order it tries
/// them: two that a bare pause pod would fit (a tainted `gpu` pool and an
/// untainted `spot` pool) before the `user` pool the web pods are pinned
/// to. A placeholder without the burst pod's affinity and tolerations would
/// grow the wrong pool.
fn node_pools() -> Vec<actors::PoolTemplate> {
    let pool = |name: &str, taints: Vec<(String, String, String)>| actors::PoolTemplate {
        name: name.into(),
        max: 4,
        cpu: "4".into(),
        memory: "16Gi".into(),
        labels: Default::default(),
        taints,
        max_pods: 110,
    };
    vec![
        pool(
            "gpu",
            vec![("sku".into(), "gpu".into(), "NoSchedule".into())],
        ),
        pool("spot", vec![]),
        pool("user", vec![]),
    ]
}

/// [`eventually`] for a phase run as the ServiceAccount: the first 401/403
/// ends it and fails the test with the refused requests listed (a refused
/// request is usually why a phase would time out), without waiting out the
/// deadline.
async fn eventually_allowed(srv: &TestApiServer, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    let done = support::poll_until(WAIT, || check() || !srv.auth_denials().is_empty()).await;
    let refused = refused_requests(srv);
    assert!(
        done && refused.is_empty(),
        "{what}: {}; refused requests (count: message): {refused:#?}",
        if refused.is_empty() {
            "timed out"
        } else {
            "refused"
        }
    );
    eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

/// Every distinct 401/403 message so far, with how often it came.
fn refused_requests(srv: &TestApiServer) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for d in srv.auth_denials() {
        *counts.entry(d).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(d, n)| format!("{n}: {d}"))
        .collect()
}

fn is_placeholder_on_pool_user(bindings: &Bindings, placeholder: &str) -> bool {
    bindings
        .all()
        .iter()
        .any(|(pod, node, _)| pod == placeholder && node.starts_with("aks-user-"))
}

/// The burst cycle on a cluster that enforces what AKS enforces: the API
/// server requires a bearer token, authorizes it with the RBAC of
/// `kubectl kustomize deploy/overlays/aks` (loaded as is, nothing written by
/// hand) and admits pods by the namespaces' Pod Security labels
/// (spillway-system is `restricted`). Every request of both spillway
/// replicas and their embedded providers runs as
/// `system:serviceaccount:spillway-system:spillway`; the rest of the
/// cluster (scheduler, kubelet, ReplicaSet, cluster autoscaler) as the
/// admin (`system:masters`, allowed before RBAC as upstream).
///
/// 12 replicas rather than the 50 of the test above: the point here is what
/// the cluster refuses, not scale, and it keeps the run near 15 s on two
/// cores. The burst pods use a Secret, a ConfigMap and a projected token,
/// and the standby finds the virtual node with a label removed, so the
/// least-privilege check at the end sees every rule of deploy/base/rbac.yaml
/// used or justified in deploy/README.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_cycle_as_the_service_account_under_pod_security_and_rbac() {
    const REPLICAS: usize = 12;
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .require_auth(true)
        .start()
        .await;
    let skipped = srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    assert!(
        skipped.iter().all(|k| k.starts_with("Deployment ")
            || k.starts_with("Service ")
            || k.starts_with("PodDisruptionBudget ")
            || k.starts_with("PriorityClass ")
            || k.starts_with("NetworkPolicy ")),
        "{skipped:?}"
    );
    // The cluster as it stands: pool `user` full, the web app's namespace
    // (baseline Pod Security), its Secret, ConfigMap and ServiceAccount.
    srv.insert(&node("vm-0").pool("user").cpu("4").memory("16Gi").build());
    srv.insert(
        &pod()
            .ns("web")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
    );
    srv.insert::<k8s_openapi::api::core::v1::Namespace>(&obj(json!({"metadata": {
        "name": "web",
        "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})));
    srv.insert::<k8s_openapi::api::core::v1::Namespace>(&obj(json!({"metadata": {
        "name": "kube-system", "uid": "0d4c6f2e-5b7a-4e39-9d1c-7a8b9c0d1e2f"}})));
    srv.insert::<k8s_openapi::api::core::v1::Secret>(&obj(json!({
        "metadata": {"name": "db", "namespace": "web"},
        "data": {"password": "aHVudGVyMg=="}})));
    srv.insert::<k8s_openapi::api::core::v1::ConfigMap>(&obj(json!({
        "metadata": {"name": "settings", "namespace": "web"},
        "data": {"mode": "fast"}})));
    srv.insert::<k8s_openapi::api::core::v1::ServiceAccount>(&obj(json!({
        "metadata": {"name": "default", "namespace": "web"}})));
    srv.insert::<PodDisruptionBudget>(&obj(json!({
        "metadata": {"name": "web", "namespace": "web"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    })));

    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The default --node-name (spillway-aci), which deploy/'s RBAC names.
    let provider_args = [
        "--aci",
        "emulator",
        "--aci-emulator-url",
        emu.url.as_str(),
        "--kubelet-listen",
        "127.0.0.1:0",
        "--aci-sync-secs",
        "1",
        // No --cluster-id: as shipped, the kube-system namespace's UID.
    ];
    let (la, _) = loopback().await;
    let (lb, extender) = loopback().await;
    let a = start_with_config(
        srv.kube_config_as(SA_NS, SA),
        "replica-a",
        la,
        &provider_args,
    )
    .await;
    eventually_allowed(
        &srv,
        "replica-a leads and registers the virtual node",
        || {
            holder(&srv).as_deref() == Some("replica-a")
                && srv
                    .get::<k8s_openapi::api::core::v1::Node>("", ACI_NODE)
                    .and_then(|n| n.status?.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        },
    )
    .await;
    let b = start_with_config(
        srv.kube_config_as(SA_NS, SA),
        "replica-b",
        lb,
        &provider_args,
    )
    .await;
    let (a_metrics, b_metrics) = (a.metrics.clone(), b.metrics.clone());

    let admin = srv.admin_client();
    let bindings = Bindings::default();
    let created = Arc::new(Mutex::new(0usize));
    let mut tasks = cluster_actors(
        admin.clone(),
        extender,
        bindings.clone(),
        BTreeSet::from([ACI_NODE.to_string()]),
        Arc::new(AtomicUsize::new(REPLICAS)),
        web_template_with_sources(),
        created.clone(),
    );

    // 1. Pool `user` is full: every replica bursts and runs in ACI with
    // its Secret, ConfigMap and token resolved by the provider.
    eventually_allowed(&srv, "every replica Running on the virtual node", || {
        let pods = web_pods(&srv);
        pods.len() == REPLICAS
            && pods
                .iter()
                .all(|p| on_node(p).as_deref() == Some(ACI_NODE) && running_and_ready(p))
    })
    .await;
    let burst_uids: BTreeSet<String> = web_pods(&srv)
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    // Placeholders are admitted by restricted Pod Security, as spillway.
    let placeholders: BTreeSet<String> = burst_uids
        .iter()
        .map(|uid| spillway::autoscaler::act::placeholder_name(uid))
        .collect();
    // Pod Security refusals are not auth denials: spillway reports them as
    // PlaceholderFailed Events on the burst pods, with the API's message.
    let placeholder_failures = || -> Vec<String> {
        srv.list::<k8s_openapi::api::events::v1::Event>(Some("web"))
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("PlaceholderFailed"))
            .filter_map(|e| e.note)
            .collect()
    };
    let settled = support::poll_until(WAIT, || {
        let ph: BTreeSet<String> = srv
            .list::<Pod>(Some(SA_NS))
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        ph == placeholders || !placeholder_failures().is_empty() || !srv.auth_denials().is_empty()
    })
    .await;
    let (failed, refused) = (placeholder_failures(), refused_requests(&srv));
    assert!(
        settled && failed.is_empty() && refused.is_empty(),
        "one admitted placeholder per burst pod: {}; {} PlaceholderFailed Events, the first: {:?}; refused requests: {refused:#?}",
        if settled { "refused" } else { "timed out" },
        failed.len(),
        failed.first(),
    );

    // 2. The cluster autoscaler (only now: a real one takes minutes to add
    // a VM, longer than spillAfter) grows the pool the placeholders ask for.
    let added = Arc::new(Mutex::new(Vec::new()));
    tasks.push(tokio::spawn(actors::cluster_autoscaler(
        admin.clone(),
        node_pools(),
        added.clone(),
    )));
    eventually_allowed(&srv, "some pods came back to pool user", || {
        web_pods(&srv)
            .iter()
            .filter(|p| on_node(p).is_some_and(|n| n.starts_with("aks-user-")))
            .count()
            >= 3
    })
    .await;

    // 3. Someone edits the virtual node (a label removed); then the leader
    // goes away. The standby's provider puts the label back as it takes
    // over, and finishes the cycle.
    const LABEL: &str = "alpha.service-controller.kubernetes.io/exclude-balancer";
    srv.modify::<k8s_openapi::api::core::v1::Node>("", ACI_NODE, |n| {
        if let Some(l) = n.metadata.labels.as_mut() {
            l.remove(LABEL);
        }
    });
    a.stop().await;
    eventually_allowed(
        &srv,
        "replica-b leads and restores the node's label",
        || {
            holder(&srv).as_deref() == Some("replica-b")
                && srv
                    .get::<k8s_openapi::api::core::v1::Node>("", ACI_NODE)
                    .and_then(|n| n.metadata.labels)
                    .is_some_and(|l| l.contains_key(LABEL))
        },
    )
    .await;
    eventually_allowed(
        &srv,
        "every replica home on pool user, Running, no placeholder left",
        || {
            let pods = web_pods(&srv);
            pods.len() == REPLICAS
                && pods.iter().all(|p| {
                    running_and_ready(p) && on_node(p).is_some_and(|n| n.starts_with("aks-user-"))
                })
                && srv.list::<Pod>(Some(SA_NS)).is_empty()
        },
    )
    .await;
    eventually_allowed(&srv, "no container group is left", || {
        emu.state.snapshot().is_empty()
    })
    .await;
    eventually_allowed(&srv, "the burst reservations are reconciled away", || {
        srv.get::<k8s_openapi::api::core::v1::ConfigMap>(
            SA_NS,
            spillway::extender::reservations::DEFAULT_NAME,
        )
        .is_some_and(|cm| cm.data.as_ref().is_none_or(|d| d.is_empty()))
    })
    .await;

    // Every placeholder ran on a VM the autoscaler added to pool user, and
    // only pool user grew.
    let unplaced: Vec<&String> = placeholders
        .iter()
        .filter(|p| !is_placeholder_on_pool_user(&bindings, p))
        .collect();
    assert!(
        unplaced.is_empty(),
        "never scheduled on pool user: {unplaced:?}"
    );
    let grown: Vec<(String, String)> = added.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        !grown.is_empty() && grown.iter().all(|(pool, _)| pool == "user"),
        "{grown:?}"
    );
    // One group and one replacement per burst pod; the new pods are not
    // burst pods.
    let counters = emu.state.counters();
    assert_eq!(counters.creates, REPLICAS as u64, "{counters:?}");
    assert_eq!(counters.deletes, REPLICAS as u64, "{counters:?}");
    assert_eq!(created.lock().map(|c| *c).unwrap_or(0), 2 * REPLICAS);
    let left: BTreeSet<String> = web_pods(&srv)
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    assert!(left.is_disjoint(&burst_uids));
    for m in [&a_metrics, &b_metrics] {
        assert_eq!(m.drainback_rebursts.get(), 0, "a replacement burst again");
        assert_eq!(m.placeholder_creates.with_label_values(&["error"]).get(), 0);
    }
    // Nothing refused, from the first request to the last.
    assert_eq!(srv.auth_denials(), Vec::<String>::new());

    for t in tasks {
        t.abort();
    }
    b.stop().await;
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    assert_every_unexercised_rule_is_justified(&srv);
}

/// Least privilege: every permission deploy/ grants spillway that no
/// request of the run used must say why in deploy/README.md's RBAC table
/// (its last column starts with `untested:`), and a rule marked so that the
/// run did use is a stale note. Prints the lists on failure.
fn assert_every_unexercised_rule_is_justified(srv: &TestApiServer) {
    type Key = (String, String, Vec<String>, String);
    // (where, resource, names, verb) as the README's rows name them.
    let key = |place: &str, resource: &str, names: &[String], verb: &str| -> Key {
        (place.into(), resource.into(), names.to_vec(), verb.into())
    };
    // Shown as a README row would name it: `ClusterRole | events.k8s.io events: patch`.
    let row = |(place, resource, names, verb): &Key| {
        let names: String = names.iter().map(|n| format!(" `{n}`")).collect();
        format!("{place} | {resource}{names}: {verb}")
    };
    let mut unexercised: BTreeSet<Key> = BTreeSet::new();
    let mut shown: std::collections::BTreeMap<Key, String> = Default::default();
    for g in srv.unexercised_permissions(SA_NS, SA) {
        let place = if g.role.namespace.is_empty() {
            g.role.kind.clone()
        } else {
            format!("{} {}", g.role.kind, g.role.namespace)
        };
        let k = key(&place, &g.resource, &g.resource_names, &g.verb);
        let group = if g.group.is_empty() {
            String::new()
        } else {
            format!("{} ", g.group)
        };
        let names: String = g.resource_names.iter().map(|n| format!(" `{n}`")).collect();
        shown.insert(
            k.clone(),
            format!(
                "{place} | {group}{}{names}: {} (rule {} of {})",
                g.resource, g.verb, g.rule, g.role
            ),
        );
        unexercised.insert(k);
    }
    let justified = untested_rules_in_deploy_readme();
    let unjustified: Vec<&String> = unexercised
        .difference(&justified)
        .filter_map(|k| shown.get(k))
        .collect();
    let stale: Vec<String> = justified.difference(&unexercised).map(row).collect();
    assert!(
        unjustified.is_empty() && stale.is_empty(),
        "granted, used by no request of the run, and not marked `untested:` in deploy/README.md: {unjustified:#?}\n\
         marked `untested:` in deploy/README.md but used: {stale:#?}\n\
         every unexercised permission: {:#?}",
        shown.values().collect::<Vec<_>>()
    );
}

/// The (where, resource, resourceNames, verb) of every row of
/// deploy/README.md's RBAC table whose last column starts with `untested:`
/// (a row names `resources: verbs`, e.g. ``nodes `spillway-aci`: get, patch``).
fn untested_rules_in_deploy_readme() -> BTreeSet<(String, String, Vec<String>, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md"))
        .unwrap_or_else(|e| panic!("deploy/README.md: {e}"));
    let mut out = BTreeSet::new();
    for row in readme
        .lines()
        .filter(|l| l.starts_with("| ClusterRole |") || l.starts_with("| Role "))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (place, rule, note) = (cells[1], cells[2], cells.get(4).copied().unwrap_or(""));
        if !note.starts_with("untested:") {
            continue;
        }
        let (what, verbs) = rule
            .split_once(':')
            .unwrap_or_else(|| panic!("`resources: verbs` in {row}"));
        let names: Vec<String> = what
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        let resources = what.split('`').next().unwrap_or_default();
        for resource in resources.split(',') {
            let resource = resource.split_whitespace().last().unwrap_or_default();
            for verb in verbs.split(',') {
                out.insert((
                    place
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                    resource.to_string(),
                    names.clone(),
                    verb.trim().to_string(),
                ));
            }
        }
    }
    out
}
