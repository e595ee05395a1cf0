//! The provider contract (`spillway::provider::backend`), checked the same
//! way for every backend against its emulator: creating twice is one
//! instance, a read shows it owned by its pod, deleting twice (or something
//! that never existed) succeeds, and a deleted instance is gone.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use spillway::provider::backend::{Backend, Instance};
use spillway::provider::resolve::Sources;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

fn pod(tolerated: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "conform-a", "namespace": "conformance", "uid": "uid-conform-a",
            "labels": {"app": "conform"}
        },
        "spec": {
            "containers": [{"name": "app", "image": "busybox:1.36",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
            "tolerations": [{"key": "virtual-kubelet.io/provider", "value": tolerated, "effect": "NoSchedule"}]
        }
    }))
    .unwrap_or_else(|e| panic!("pod: {e}"))
}

async fn instance_of<B: Backend>(
    backend: &B,
    pods: &[Arc<Pod>],
    name: &str,
) -> Option<B::Instance> {
    match backend.read(pods).await {
        Ok(read) => read.instances.get(name).cloned(),
        Err(e) => panic!("read: {e}"),
    }
}

/// Every backend must pass this.
async fn conformance<B: Backend>(backend: &B, pod: Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let instance = backend.instance_name(&ns, &name);
    let pods = [Arc::new(pod.clone())];

    // Nothing yet: a read succeeds, deleting what never existed succeeds.
    assert!(instance_of(backend, &pods, &instance).await.is_none());
    backend
        .delete(&instance)
        .await
        .unwrap_or_else(|e| panic!("delete of nothing: {e}"));

    // Create, and create again: one instance, owned by the pod.
    for attempt in 0..2 {
        backend
            .create(&pod, &Sources::default())
            .await
            .unwrap_or_else(|e| panic!("create #{attempt}: {e}"));
    }
    let deadline = Instant::now() + WAIT;
    let found = loop {
        if let Some(i) = instance_of(backend, &pods, &instance).await {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the instance never showed in a read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let owner = found.owner();
    assert_eq!(
        (
            owner.namespace.as_deref(),
            owner.name.as_deref(),
            owner.uid.as_deref()
        ),
        (Some(ns.as_str()), Some(name.as_str()), Some(uid.as_str()))
    );
    assert_eq!(found.name(), instance);
    let got = backend
        .get(&instance)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"))
        .unwrap_or_else(|| panic!("get finds the instance"));
    assert_eq!(got.owner(), owner);

    // Delete twice; then it is gone for get and for reads.
    for attempt in 0..2 {
        backend
            .delete(&instance)
            .await
            .unwrap_or_else(|e| panic!("delete #{attempt}: {e}"));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let gone_get = backend
            .get(&instance)
            .await
            .unwrap_or_else(|e| panic!("get: {e}"))
            .is_none();
        let gone_read = instance_of(backend, &[], &instance).await.is_none();
        if gone_get && gone_read {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted instance stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn aci_backend_keeps_the_contract() {
    use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
    use spillway::aci::backend::AciBackend;
    use spillway::aci::emulator::{Emulator, EmulatorConfig};
    use spillway::provider::ProviderConfig;
    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "sub-1", "rg-1");
    let aci = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("client: {e}"));
    let config = ProviderConfig::new(
        "spillway-aci",
        "conformance",
        "westeurope",
        "10.0.0.1",
        10250,
    );
    let backend = AciBackend::new(Arc::new(aci), &config);
    conformance(&backend, pod("azure")).await;
}

#[tokio::test]
async fn edge_backend_keeps_the_contract() {
    use spillway::edge::backend::{EdgeBackend, EdgeBackendConfig};
    use spillway::edge::emulator::{Emulator, EmulatorConfig, NewDevice};
    use spillway::edge::translate::EdgeNode;
    use spillway::edge::{HubClient, HubClientConfig};
    let emu = Emulator::start(EmulatorConfig {
        configuration_ops_per_minute: 60_000.0,
        queries_per_minute: 60_000.0,
        burst: 1_000,
        report_delay: Duration::from_millis(100),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    emu.state
        .add_device(NewDevice::edge("d1", json!({"site": "munich"})))
        .unwrap_or_else(|e| panic!("device: {e}"));
    let conn = emu
        .connection_string()
        .unwrap_or_else(|| panic!("connection string"));
    let hub = HubClient::new(
        conn,
        HubClientConfig {
            endpoint: Some(emu.url.clone()),
            configuration_ops_per_minute: 60_000.0,
            queries_per_minute: 60_000.0,
            burst: 100,
            ..HubClientConfig::default()
        },
    )
    .unwrap_or_else(|e| panic!("hub: {e}"));
    let backend = EdgeBackend::new(
        Arc::new(hub),
        EdgeBackendConfig::new(EdgeNode::new("edge-a", "*")),
        None,
    );
    conformance(&backend, pod("iotedge")).await;
}
