//! Burst pods in a delegated VNet subnet, end to end: the test API server
//! and the ACI emulator in-process over real HTTP, spillway's provider with
//! `--aci-subnet-id` between them. A pod's group joins the subnet, the
//! emulator hands it a private address of the subnet's range, and that
//! address becomes the pod IP; ARM's refusal of an undelegated subnet
//! reaches the pod as a readable failure.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::aci::emulator::{
    ACI_DELEGATION, Emulator, EmulatorConfig, EmulatorHandle, SubnetDefinition,
};
use spillway::aci::translate::{SubnetId, group_name_in};
use spillway::provider::{node as vnode, pods as vpods};
use std::net::Ipv4Addr;
use std::time::Duration;
use support::provider_world::{NODE, Running, fast_config, paced_aci};
use support::{PodDeletion, TestApiServer};

const CLUSTER: &str = "test-cluster";
const NS: &str = "web";
const WAIT: Duration = Duration::from_secs(20);
const SUBNET: &str = "/subscriptions/sub-1/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci";
const PREFIX: &str = "10.240.8.0/24";

/// Poll `check` every 50 ms until it holds or `WAIT` passes; panics with `what`.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    support::provider_world::eventually(what, WAIT, check).await
}

struct World {
    srv: TestApiServer,
    emu: EmulatorHandle,
    provider: Running,
}

impl World {
    async fn stop(self) {
        self.provider.stop().await;
    }
}

/// The API server, an emulator whose VNet has `subnets`, and a provider
/// configured with `--aci-subnet-id SUBNET`.
async fn world(subnets: Vec<SubnetDefinition>) -> World {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let emu = Emulator::start(EmulatorConfig {
        // 2 s Accepted + 3 s Creating at ×50: 100 ms.
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    // Through the emulator's admin API, as a test or a local run would.
    let http = reqwest::Client::new();
    for s in subnets {
        let resp = http
            .post(format!("{}/_emulator/subnets", emu.url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&s).unwrap_or_else(|e| panic!("{e}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("define subnet: {e}"));
        assert!(resp.status().is_success(), "define subnet: {resp:?}");
    }
    let mut config = fast_config(CLUSTER);
    config.aci_subnets = vec![SubnetId::parse(SUBNET).unwrap_or_else(|e| panic!("{e}"))];
    let provider = Running::start(&srv, paced_aci(&emu), None, config);
    World { srv, emu, provider }
}

fn delegated(delegations: &[&str]) -> SubnetDefinition {
    SubnetDefinition {
        id: SUBNET.into(),
        address_prefix: PREFIX.into(),
        delegations: delegations.iter().map(|d| d.to_string()).collect(),
    }
}

fn burst_pod(name: &str, ports: bool) -> Pod {
    let ports = if ports {
        json!([{"containerPort": 80}])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": NODE,
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": "nginx:1.27",
                "ports": ports,
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
            }]
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

async fn create_pod(srv: &TestApiServer, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(srv.client(), NS);
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
}

fn pod_ip(srv: &TestApiServer, name: &str) -> Option<String> {
    srv.get::<Pod>(NS, name)
        .and_then(|p| p.status)
        .filter(|s| s.phase.as_deref() == Some("Running"))
        .and_then(|s| s.pod_ip)
}

/// Whether `ip` is a host address of `PREFIX` that Azure hands out (not the
/// first four, not the broadcast).
fn in_subnet(ip: &str) -> bool {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return false;
    };
    let [a, b, c, d] = ip.octets();
    (a, b, c) == (10, 240, 8) && (4..255).contains(&d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_pod_in_a_subnet_gets_a_private_pod_ip_from_its_range() {
    let w = world(vec![delegated(&[ACI_DELEGATION])]).await;
    create_pod(&w.srv, &burst_pod("frontend", true)).await;
    create_pod(&w.srv, &burst_pod("worker", false)).await;

    eventually("both pods Running with a pod IP", || async {
        pod_ip(&w.srv, "frontend").is_some() && pod_ip(&w.srv, "worker").is_some()
    })
    .await;
    let frontend = pod_ip(&w.srv, "frontend").unwrap_or_default();
    let worker = pod_ip(&w.srv, "worker").unwrap_or_default();
    assert!(in_subnet(&frontend), "frontend podIP {frontend}");
    assert!(in_subnet(&worker), "a pod without ports too: {worker}");
    assert_ne!(frontend, worker);

    // The groups were PUT into the subnet, without a public IP, and the
    // addresses the pods show are the ones the subnet handed out.
    let groups = w.emu.state.snapshot();
    for pod in ["frontend", "worker"] {
        let g = groups
            .iter()
            .find(|g| g.name == group_name_in(CLUSTER, NS, pod))
            .unwrap_or_else(|| panic!("group of {pod} in {groups:?}"));
        assert_eq!(g.subnet.as_deref(), Some(SUBNET), "{g:?}");
        assert_eq!(g.ip, pod_ip(&w.srv, pod), "{pod}");
    }
    let used = &w.emu.state.subnets()[0].used;
    assert!(
        used.contains(&frontend) && used.contains(&worker),
        "{used:?}"
    );

    // Deleting the pod deletes the group and returns its address.
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("worker", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("the worker's address returned to the subnet", || async {
        !w.emu.state.subnets()[0].used.contains(&worker)
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_without_the_aci_delegation_fails_the_pod_with_arms_reason() {
    let w = world(vec![delegated(&["Microsoft.Web/serverFarms"])]).await;
    create_pod(&w.srv, &burst_pod("frontend", true)).await;
    eventually("pod Failed", || async {
        w.srv
            .get::<Pod>(NS, "frontend")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Failed")
    })
    .await;
    let status = w
        .srv
        .get::<Pod>(NS, "frontend")
        .and_then(|p| p.status)
        .unwrap_or_default();
    assert_eq!(
        status.reason.as_deref(),
        Some(vpods::REASON_PROVIDER_FAILED)
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("SubnetMissingRequiredDelegation"),
        "message: {message}"
    );
    assert!(w.emu.state.snapshot().is_empty(), "no group was created");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_while_its_subnet_is_full_and_runs_when_an_address_frees() {
    // A /29 has three addresses for groups (Azure keeps five of eight).
    let w = world(vec![SubnetDefinition {
        address_prefix: "10.240.8.0/29".into(),
        ..delegated(&[ACI_DELEGATION])
    }])
    .await;
    for name in ["a", "b", "c"] {
        create_pod(&w.srv, &burst_pod(name, true)).await;
    }
    eventually("three pods Running in the subnet", || async {
        ["a", "b", "c"].iter().all(|p| pod_ip(&w.srv, p).is_some())
    })
    .await;
    create_pod(&w.srv, &burst_pod("d", true)).await;
    eventually(
        "the fourth pod Pending, saying the subnet is full",
        || async {
            w.srv
                .get::<Pod>(NS, "d")
                .and_then(|p| p.status)
                .is_some_and(|s| {
                    s.phase.as_deref() == Some("Pending")
                        && s.reason.as_deref() == Some(vpods::REASON_RETRYING)
                        && s.message.is_some_and(|m| m.contains("SubnetIsFull"))
                })
        },
    )
    .await;
    let freed = pod_ip(&w.srv, "b").unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(w.srv.client(), NS);
    api.delete("b", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    eventually("the fourth pod Running with the freed address", || async {
        pod_ip(&w.srv, "d").as_deref() == Some(freed.as_str())
    })
    .await;
    w.stop().await;
}
