//! Cluster DNS and service discovery of burst pods, end to end: Services
//! created through the test API server (which allocates and validates
//! ClusterIPs as kube-apiserver does), spillway's provider reading them with
//! its Service watch, and the container group that reaches the ACI emulator
//! over HTTP carrying the kubelet's `dnsConfig` and service environment.

mod support;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spillway::aci::ContainerGroups;
use spillway::aci::emulator::{Emulator, EmulatorConfig};
use spillway::aci::model::{ContainerGroup, DnsConfiguration};
use spillway::aci::translate::group_name_in;
use spillway::provider::services::ServiceSource;
use spillway::provider::{Provider, node as vnode};
use std::sync::Arc;
use std::time::Duration;
use support::provider_world::{NODE, aci, fast_config};
use support::{PodDeletion, TestApiServer};

const CLUSTER: &str = "dns-cluster";
const NS: &str = "web";
const WAIT: Duration = Duration::from_secs(20);

/// Poll `check` every 50 ms until it gives a value or `WAIT` passes.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    support::provider_world::eventually_some(what, WAIT, check).await
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("service json: {e}"))
}

async fn create_service(srv: &TestApiServer, ns: &str, v: serde_json::Value) -> Service {
    Api::<Service>::namespaced(srv.client(), ns)
        .create(&PostParams::default(), &service(v))
        .await
        .unwrap_or_else(|e| panic!("create service in {ns}: {e}"))
}

fn pod(name: &str, spec_extra: serde_json::Value) -> Pod {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": NODE,
            "tolerations": [{"key": vnode::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": "registry.example/frontend:2",
                "command": ["/app", "--api=$(KUBERNETES_SERVICE_HOST)"],
                "env": [
                    {"name": "BACKEND_URL", "value": "http://$(BACKEND_SERVICE_HOST):$(BACKEND_SERVICE_PORT_HTTP)"},
                    {"name": "CACHE_SERVICE_PORT", "value": "16379"}
                ],
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}
            }]
        }
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), spec_extra.as_object()) {
        for (k, val) in extra {
            spec.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("pod json: {e}"))
}

/// The group of pod `name` once the provider has created it.
async fn group_of(aci: &Arc<dyn ContainerGroups>, name: &str) -> ContainerGroup {
    let group = group_name_in(CLUSTER, NS, name);
    eventually(&format!("group {group}"), || async {
        aci.get(&group).await.ok().flatten()
    })
    .await
}

fn env(g: &ContainerGroup, name: &str) -> Option<String> {
    g.properties.containers[0]
        .properties
        .environment_variables
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn burst_pods_get_the_cluster_dns_and_the_service_environment() {
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let emu = Emulator::start(EmulatorConfig {
        speed: 50.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("emulator: {e}"));
    let aci = aci(&emu);

    // The API server's own Service and CoreDNS's, at AKS's addresses.
    create_service(&srv, "default", json!({
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}
    }))
    .await;
    create_service(
        &srv,
        "kube-system",
        json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.0.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
            ]}
        }),
    )
    .await;
    // The app's: one allocated by the API server, a headless one, and one
    // whose variable the pod defines itself.
    let backend = create_service(
        &srv,
        NS,
        json!({
            "metadata": {"name": "backend", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9000}]}
        }),
    )
    .await;
    let backend_ip = backend
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_else(|| panic!("the API server allocates a ClusterIP"));
    create_service(
        &srv,
        NS,
        json!({
            "metadata": {"name": "peers", "namespace": NS},
            "spec": {"clusterIP": "None", "ports": [{"port": 7946}]}
        }),
    )
    .await;
    create_service(
        &srv,
        NS,
        json!({
            "metadata": {"name": "cache", "namespace": NS},
            "spec": {"ports": [{"port": 6379}]}
        }),
    )
    .await;

    let (services, watch) = ServiceSource::watch(srv.client(), Vec::new());
    let watch = tokio::spawn(watch);
    let provider = Provider::new(srv.client(), aci.clone(), fast_config(CLUSTER), None)
        .with_services(services.clone(), "cluster.local");
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = provider
            .run(leader_rx, async {
                let _ = stop_rx.await;
            })
            .await;
    });

    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    pods.create(&PostParams::default(), &pod("frontend", json!({})))
        .await
        .unwrap_or_else(|e| panic!("create pod: {e}"));
    let g = group_of(&aci, "frontend").await;
    // The API server defaulted dnsPolicy to ClusterFirst.
    assert_eq!(
        g.properties.dns_config,
        Some(DnsConfiguration {
            name_servers: vec!["10.0.0.10".into()],
            search_domains: Some("web.svc.cluster.local svc.cluster.local cluster.local".into()),
            options: Some("ndots:5".into()),
        })
    );
    assert_eq!(
        env(&g, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(env(&g, "KUBERNETES_SERVICE_PORT").as_deref(), Some("443"));
    assert_eq!(
        env(&g, "KUBERNETES_PORT_443_TCP").as_deref(),
        Some("tcp://10.0.0.1:443")
    );
    assert_eq!(env(&g, "BACKEND_SERVICE_HOST"), Some(backend_ip.clone()));
    assert_eq!(
        env(&g, "BACKEND_SERVICE_PORT_GRPC").as_deref(),
        Some("9000")
    );
    assert_eq!(
        env(&g, "BACKEND_URL"),
        Some(format!("http://{backend_ip}:8080")),
        "$(VAR) sees the service variables"
    );
    assert_eq!(
        env(&g, "CACHE_SERVICE_PORT").as_deref(),
        Some("16379"),
        "the pod's own value wins"
    );
    assert!(env(&g, "CACHE_SERVICE_HOST").is_some());
    assert_eq!(
        env(&g, "PEERS_SERVICE_HOST"),
        None,
        "headless Services give no variables"
    );
    assert_eq!(
        env(&g, "KUBE_DNS_SERVICE_HOST"),
        None,
        "other namespaces' Services neither"
    );
    assert_eq!(
        g.properties.containers[0].properties.command,
        ["/app", "--api=10.0.0.1"]
    );

    // CoreDNS moves (a Service's ClusterIP is immutable: delete and
    // recreate): the next pod gets the new address; enableServiceLinks off
    // keeps only the API server's variables.
    Api::<Service>::namespaced(srv.client(), "kube-system")
        .delete("kube-dns", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete kube-dns: {e}"));
    create_service(&srv, "kube-system", json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.0.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
    }))
    .await;
    eventually("the watch sees kube-dns move", || async {
        (services.cluster_dns() == ["10.0.0.53"]).then_some(())
    })
    .await;
    pods.create(
        &PostParams::default(),
        &pod("worker", json!({"enableServiceLinks": false})),
    )
    .await
    .unwrap_or_else(|e| panic!("create pod: {e}"));
    let g = group_of(&aci, "worker").await;
    let dns = g.properties.dns_config.clone().expect("dnsConfig");
    assert_eq!(dns.name_servers, ["10.0.0.53"]);
    assert_eq!(
        env(&g, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(env(&g, "BACKEND_SERVICE_HOST"), None);
    assert_eq!(
        env(&g, "BACKEND_URL").as_deref(),
        Some("http://$(BACKEND_SERVICE_HOST):$(BACKEND_SERVICE_PORT_HTTP)"),
        "an undefined $(VAR) stays as written"
    );

    // dnsPolicy None: the pod's own resolver only.
    pods.create(
        &PostParams::default(),
        &pod(
            "resolver",
            json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["192.168.0.53"],
                "searches": ["corp.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]
            }}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("create pod: {e}"));
    let g = group_of(&aci, "resolver").await;
    assert_eq!(
        g.properties.dns_config,
        Some(DnsConfiguration {
            name_servers: vec!["192.168.0.53".into()],
            search_domains: Some("corp.example".into()),
            options: Some("ndots:2 edns0".into()),
        })
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    drop(leader_tx);
    watch.abort();
}

/// The test API server allocates and validates Services as kube-apiserver
/// does (ValidateService, the ClusterIP allocator): what the Service watch
/// reads is what a real cluster would hold.
#[tokio::test]
async fn services_are_allocated_and_validated_like_kube_apiserver() {
    let srv = TestApiServer::start().await;
    let api: Api<Service> = Api::namespaced(srv.client(), NS);
    let create = |v: serde_json::Value| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &service(v)).await }
    };
    let a = create(json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = a.spec.unwrap_or_default();
    let ip = spec.cluster_ip.unwrap_or_default();
    assert!(
        ip.starts_with("10.0."),
        "allocated from the service CIDR: {ip}"
    );
    assert_eq!(spec.cluster_ips, Some(vec![ip.clone()]));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.unwrap_or_default()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));

    let refused = |r: Result<Service, kube::Error>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (code, message) = refused(
        create(
            json!({"metadata": {"name": "b"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("provided IP is already allocated"),
        "{message}"
    );
    let (code, message) = refused(
        create(json!({"metadata": {"name": "c"}, "spec": {"clusterIP": "192.168.1.1", "ports": [{"port": 80}]}})).await,
    );
    assert_eq!(code, 422);
    assert!(message.contains("not in the valid range"), "{message}");
    let (code, message) = refused(create(json!({"metadata": {"name": "d"}, "spec": {}})).await);
    assert_eq!(
        (code, message.as_str()),
        (422, "Service \"d\" is invalid: spec.ports: Required value")
    );
    let (_, message) = refused(
        create(json!({"metadata": {"name": "e"}, "spec": {"ports": [{"port": 80}, {"port": 81}]}}))
            .await,
    );
    assert!(
        message.contains("spec.ports[0].name: Required value"),
        "{message}"
    );
    // Headless without ports and ExternalName without a ClusterIP are fine.
    let h = create(json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.spec.and_then(|s| s.cluster_ip).as_deref(), Some("None"));
    let x = create(json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "api.partner.example"}}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(x.spec.and_then(|s| s.cluster_ip), None);
    // Pods' DNS settings are validated too (validatePodDNSConfig): what the
    // translation meets has passed these.
    let pods: Api<Pod> = Api::namespaced(srv.client(), NS);
    for (extra, why) in [
        (
            json!({"dnsPolicy": "None"}),
            "spec.dnsConfig: Required value",
        ),
        (
            json!({"dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "10.0.0.10"]}}),
            "must not have more than 3 nameservers",
        ),
        (
            json!({"dnsConfig": {"nameservers": ["dns.example"]}}),
            "must be a valid IP address",
        ),
        (
            json!({"dnsPolicy": "Cluster"}),
            "spec.dnsPolicy: Unsupported value",
        ),
    ] {
        let (code, message) = match pods
            .create(&PostParams::default(), &pod("bad-dns", extra))
            .await
        {
            Err(kube::Error::Api(s)) => (s.code, s.message),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(code, 422, "{message}");
        assert!(message.contains(why), "{why}: {message}");
    }
    // A ClusterIP never changes.
    let mut changed = api.get("a").await.unwrap_or_else(|e| panic!("{e}"));
    if let Some(s) = changed.spec.as_mut() {
        s.cluster_ip = Some("10.0.7.7".into());
        s.cluster_ips = Some(vec!["10.0.7.7".into()]);
    }
    let (code, message) = refused(api.replace("a", &PostParams::default(), &changed).await);
    assert_eq!(code, 422);
    assert!(message.contains("may not change once set"), "{message}");
}
