//! spillway's own API calls under the RBAC it ships: the objects of
//! `kubectl kustomize deploy/overlays/aks` are loaded into the test API
//! server, and the code runs with the `spillway` ServiceAccount's token.
//! Every request must be allowed (no 401/403); a rule removed from
//! deploy/base/rbac.yaml that the code needs fails here.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway::aci::ContainerGroups;
use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig};
use spillway::aci::paced::Paced;
use spillway::cluster::ca_status;
use spillway::provider::services::ServiceSource;
use spillway::provider::{Provider, ProviderConfig, node as vnode};
use support::provider_world::fast_pacing;
use support::{PodDeletion, TestApiServer, poll_until};

const SA_NS: &str = "spillway-system";
const SA: &str = "spillway";
const WAIT: Duration = Duration::from_secs(20);

async fn cluster(srv: TestApiServer) -> TestApiServer {
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    // The workload namespace: the shipped webhook's namespaceSelector needs
    // the Namespace object of every pod create, as in kube-apiserver.
    srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    srv
}

#[tokio::test]
async fn the_cluster_autoscaler_status_is_watched_as_spillway() {
    let srv = cluster(TestApiServer::start().await).await;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(ca_status::watch(srv.client_as(SA_NS, SA), tx));
    assert!(srv.wait_for_watches(1, Duration::from_secs(10)).await);
    let status = "nodeGroups:
- health:
    cloudProviderTarget: 3
    maxSize: 5
    minSize: 1
    nodeCounts:
      registered:
        ready: 2
        total: 2
    status: Healthy
  name: aks-user-25795745-vmss
";
    srv.insert(&ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(ca_status::NAME.into()),
            namespace: Some(ca_status::NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("status".to_string(), status.to_string())])),
        ..Default::default()
    });
    assert!(
        poll_until(Duration::from_secs(10), || rx.borrow().is_some()).await,
        "status seen; denials: {:?}",
        srv.auth_denials()
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    task.abort();
}

fn provider_config() -> ProviderConfig {
    // The node name deploy/base/rbac.yaml pins with resourceNames.
    let mut c = ProviderConfig::new(
        "spillway-aci",
        "test-cluster",
        "westeurope",
        "10.1.2.3",
        10250,
    );
    c.sync_interval = Duration::from_millis(200);
    c.lease_interval = Duration::from_millis(300);
    c.status_interval = Duration::from_secs(2);
    c.usage_interval = Duration::from_millis(300);
    c.gc_interval = Duration::from_millis(500);
    c.unreachable_after = Duration::from_millis(800);
    c.refresh_interval = Duration::from_millis(500);
    c.retry_backoff = Duration::from_millis(200);
    c.max_retry_backoff = Duration::from_secs(1);
    c
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_runs_a_burst_pod_as_spillway() {
    let srv = cluster(
        TestApiServer::builder()
            .pod_deletion(PodDeletion::Kubelet)
            .start()
            .await,
    )
    .await;
    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "sub-1", "rg-1");
    let aci: Arc<dyn ContainerGroups> = Arc::new(Paced::new(
        AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("azure client: {e}")),
        fast_pacing(),
    ));
    // What a burst pod refers to: a Secret, a ConfigMap, a projected token.
    srv.insert::<Secret>(&obj(json!({"metadata": {"name": "db", "namespace": "web"},
        "data": {"password": "aHVudGVyMg=="}})));
    srv.insert::<ConfigMap>(&obj(
        json!({"metadata": {"name": "settings", "namespace": "web"},
        "data": {"mode": "fast"}}),
    ));
    srv.insert::<ServiceAccount>(&obj(
        json!({"metadata": {"name": "default", "namespace": "web"}}),
    ));
    let pod: Pod = obj(json!({
        "metadata": {"name": "api", "namespace": "web"},
        "spec": {
            "nodeName": "spillway-aci",
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}
                ],
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/token"}]
            }],
            "volumes": [{"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
            ]}}]
        }
    }));
    // The Service watch (cluster DNS, service environment) as spillway.
    let (services, services_watch) = ServiceSource::watch(srv.client_as(SA_NS, SA), Vec::new());
    let services_watch = tokio::spawn(services_watch);
    let provider = Provider::new(srv.client_as(SA_NS, SA), aci, provider_config(), None)
        .with_services(services, "cluster.local");
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Api::<Pod>::namespaced(srv.client(), "web")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
    let running = || {
        srv.get::<Pod>("web", "api")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    };
    assert!(
        poll_until(WAIT, running).await,
        "pod Running; denials: {:?}",
        srv.auth_denials()
    );
    // Node registered with status, its Lease renewed.
    let node: Option<Node> = srv.get("", "spillway-aci");
    assert!(
        node.and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some()
    );
    assert!(
        srv.get::<Lease>("kube-node-lease", "spillway-aci")
            .is_some()
    );
    // Deleting the pod: the provider removes its group, then the pod.
    Api::<Pod>::namespaced(srv.client(), "web")
        .delete("api", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete pod: {e}"));
    assert!(
        poll_until(WAIT, || srv.get::<Pod>("web", "api").is_none()).await,
        "pod deleted by the provider; denials: {:?}",
        srv.auth_denials()
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    // The provider's rules were the ones used (a sample, by resource).
    let used: Vec<(String, String)> = srv
        .exercised_rules()
        .into_iter()
        .map(|r| (r.verb, r.resource))
        .collect();
    for (verb, resource) in [
        ("create", "nodes"),
        ("patch", "nodes/status"),
        ("create", "leases"),
        ("patch", "leases"),
        ("get", "secrets"),
        ("get", "configmaps"),
        ("create", "serviceaccounts/token"),
        ("patch", "pods/status"),
        ("delete", "pods"),
        ("list", "services"),
        ("watch", "services"),
    ] {
        assert!(
            used.contains(&(verb.to_string(), resource.to_string())),
            "{verb} {resource} not used: {used:?}"
        );
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    services_watch.abort();
}

/// deploy/README.md's RBAC table names every granted permission, and
/// nothing that is not granted: (where, resource, names, verb).
#[tokio::test]
async fn every_granted_rule_is_documented_in_the_deploy_readme() {
    let srv = cluster(TestApiServer::start().await).await;
    type Key = (String, String, Vec<String>, String);
    let granted: std::collections::BTreeSet<Key> = srv
        .granted_permissions(SA_NS, SA)
        .into_iter()
        .map(|g| {
            let place = if g.role.namespace.is_empty() {
                g.role.kind.clone()
            } else {
                format!("{} {}", g.role.kind, g.role.namespace)
            };
            (place, g.resource, g.resource_names, g.verb)
        })
        .collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md"))
        .expect("deploy/README.md");
    let mut documented = std::collections::BTreeSet::new();
    for row in readme
        .lines()
        .filter(|l| l.starts_with("| ClusterRole |") || l.starts_with("| Role "))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (place, rule) = (cells[1], cells[2]);
        let (what, verbs) = rule.split_once(':').expect("`resources: verbs`");
        // `nodes `spillway-aci`` / `policy poddisruptionbudgets` / `configmaps, secrets`.
        let names: Vec<String> = what
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        let resources = what.split('`').next().unwrap_or_default();
        let resources = resources
            .split(',')
            .map(|r| r.split_whitespace().last().unwrap_or_default().to_string());
        for resource in resources {
            for verb in verbs.split(',') {
                documented.insert((
                    place
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                    resource.clone(),
                    names.clone(),
                    verb.trim().to_string(),
                ));
            }
        }
    }
    let undocumented: Vec<&Key> = granted.difference(&documented).collect();
    let not_granted: Vec<&Key> = documented.difference(&granted).collect();
    assert!(
        undocumented.is_empty() && not_granted.is_empty(),
        "granted but not in the README table: {undocumented:?}\nin the table but not granted: {not_granted:?}"
    );
}

/// deploy/components/aci-log-analytics: with the base's cluster-wide
/// secrets `get` narrowed away (as deploy/README.md describes), the
/// component's Role alone lets the provider read the workspace Secret, and
/// the pod's group carries the workspace, without a denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_analytics_component_reads_its_secret_by_name() {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    srv.apply_manifests(&support::kustomize(
        ".ci/fixtures/kustomize/aks-aci-log-analytics",
    ));
    srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    let mut role: k8s_openapi::api::rbac::v1::ClusterRole = srv
        .get("", "spillway")
        .unwrap_or_else(|| panic!("the base's ClusterRole spillway"));
    for rule in role.rules.iter_mut().flatten() {
        if rule.resource_names.is_none()
            && let Some(resources) = rule.resources.as_mut()
        {
            resources.retain(|r| r != "secrets");
        }
    }
    srv.insert(&role);
    srv.insert::<Secret>(&obj(json!({
        "metadata": {"name": "spillway-log-analytics", "namespace": SA_NS},
        "data": {"workspaceId": "d3MtMDAwMQ==", "workspaceKey": "a2V5"}
    })));
    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "sub-1", "rg-1");
    let aci: Arc<dyn ContainerGroups> = Arc::new(Paced::new(
        AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("azure client: {e}")),
        fast_pacing(),
    ));
    let mut config = provider_config();
    config.aci_log_analytics = Some(
        spillway::provider::resolve::LogAnalyticsSecret::parse(
            "spillway-system/spillway-log-analytics",
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let provider = Provider::new(srv.client_as(SA_NS, SA), aci.clone(), config, None);
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let pod: Pod = obj(json!({
        "metadata": {"name": "api", "namespace": "web"},
        "spec": {
            "nodeName": "spillway-aci",
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]
        }
    }));
    Api::<Pod>::namespaced(srv.client(), "web")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
    let running = || {
        srv.get::<Pod>("web", "api")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    };
    assert!(
        poll_until(WAIT, running).await,
        "pod Running; denials: {:?}; status: {:?}",
        srv.auth_denials(),
        srv.get::<Pod>("web", "api").and_then(|p| p.status)
    );
    let name = emu.state.snapshot()[0].name.clone();
    let group = aci
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("group {name}"));
    assert_eq!(
        group
            .properties
            .diagnostics
            .and_then(|d| d.log_analytics)
            .map(|la| la.workspace_id),
        Some("ws-0001".to_string())
    );
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[derive(clap::Parser)]
struct RunArgs {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// `spillway run` (extender + leader election + autoscaler) as the
/// ServiceAccount: it takes the leader Lease, nudges a pending pod and
/// places one placeholder per burst pod, and is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spillway_run_leads_and_acts_as_spillway() {
    use clap::Parser;
    use spillway::cluster::build::{node, pod};
    use spillway::units::Timestamp;
    let srv = cluster(TestApiServer::start().await).await;
    let now = Timestamp::now_wall();
    srv.insert(&node("vm-0").pool("user").build());
    srv.insert(&node("virtual-node-aci-linux").virtual_kubelet().build());
    srv.insert(
        &pod()
            .ns("web")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
    );
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
    let dir = support::policy_dir(
        "rbac-deploy-policies",
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: web, namespace: web }\nspec:\n  burst: { mode: Auto, spillAfter: 30s, maxVmWait: 2m }\n  drainBack: { enabled: true, after: 5m }\n",
    );
    let args = RunArgs::parse_from([
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
    ]);
    let metrics = Arc::new(spillway::metrics::Metrics::new());
    let store = Arc::new(
        spillway::policy::reload::PolicyStore::open(&dir, metrics.clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = srv.kube_config_as(SA_NS, SA);
    let task = tokio::spawn(async move {
        spillway::run::run_with(config, &args.run, store, metrics, listener, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let holder = || {
        srv.get::<Lease>(SA_NS, "spillway-leader")
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    assert!(
        poll_until(WAIT, || holder().as_deref() == Some("replica-a")).await,
        "leads; denials: {:?}",
        srv.auth_denials()
    );
    assert!(
        poll_until(WAIT, || srv.list::<Pod>(Some(SA_NS)).len() == 2).await,
        "placeholders; denials: {:?}",
        srv.auth_denials()
    );
    assert!(
        poll_until(WAIT, || {
            srv.get::<Pod>("web", "due")
                .and_then(|p| p.metadata.annotations)
                .is_some_and(|a| a.contains_key("spillway.io/burst-at"))
        })
        .await,
        "nudge; denials: {:?}",
        srv.auth_denials()
    );
    let _ = stop_tx.send(());
    let done = tokio::time::timeout(WAIT, task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
}
