//! Golden translations of cluster DNS and service environment variables,
//! checked against the kubelet's rules (`pkg/kubelet/network/dns/dns.go`,
//! `pkg/kubelet/envvars/envvars.go`).

use super::*;
use crate::aci::translate::dns::{
    REASON_DNS_CONFIG_FORMING, REASON_MISSING_CLUSTER_DNS, enable_service_links, service_env,
};

fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> k8s::Service {
    k8s::Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        spec: Some(k8s::ServiceSpec {
            cluster_ip: Some(ip.to_string()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, port, proto)| k8s::ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *port,
                        protocol: (!proto.is_empty()).then(|| proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Services of a small cluster: the API server's, two in `web` (one
/// with two named ports), a headless one and an ExternalName one (no
/// variables for either), and one in another namespace.
fn services() -> Vec<k8s::Service> {
    let mut external = service("web", "partner-api", "", &[]);
    if let Some(s) = external.spec.as_mut() {
        s.type_ = Some("ExternalName".into());
        s.external_name = Some("api.partner.example".into());
        s.cluster_ip = None;
    }
    vec![
        service(
            "default",
            "kubernetes",
            "10.0.0.1",
            &[("https", 443, "TCP")],
        ),
        service(
            "web",
            "backend-api",
            "10.0.0.20",
            &[("http", 80, "TCP"), ("metrics", 9090, "")],
        ),
        service("web", "cache", "10.0.0.21", &[("", 6379, "TCP")]),
        service("web", "peers", "None", &[("gossip", 7946, "UDP")]),
        external,
        service("billing", "ledger", "10.0.0.30", &[("sql", 5432, "TCP")]),
    ]
}

/// What the provider resolves for a pod in `web`: cluster DNS 10.0.0.10 and
/// the pod's service environment.
fn resolved_for(p: &k8s::Pod) -> Resolved {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    Resolved {
        cluster_dns: vec!["10.0.0.10".into()],
        service_env: service_env(ns, enable_service_links(p), &services()),
        ..Resolved::default()
    }
}

fn translate_full(p: &k8s::Pod, resolved: &Resolved) -> Translation {
    let cfg = config();
    let settings = aci(PublicIp::Never, None);
    translate_pod(
        p,
        &PodContext {
            config: &cfg,
            aci: &settings,
            resolved,
        },
    )
    .unwrap_or_else(|e| panic!("translates: {e}"))
}

fn dns_of(g: &ContainerGroup) -> (Vec<&str>, Option<&str>, Option<&str>) {
    let d = g.properties.dns_config.as_ref().expect("a dnsConfig");
    (
        d.name_servers.iter().map(String::as_str).collect(),
        d.search_domains.as_deref(),
        d.options.as_deref(),
    )
}

fn env_value<'a>(g: &'a ContainerGroup, name: &str) -> Option<&'a str> {
    g.properties.containers[0]
        .properties
        .environment_variables
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn with_dns(mut p: k8s::Pod, policy: &str, config: Option<k8s::PodDNSConfig>) -> k8s::Pod {
    if let Some(s) = p.spec.as_mut() {
        s.dns_policy = Some(policy.to_string());
        s.dns_config = config;
    }
    p
}

fn pod_dns(
    servers: &[&str],
    searches: &[&str],
    options: &[(&str, Option<&str>)],
) -> k8s::PodDNSConfig {
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    k8s::PodDNSConfig {
        nameservers: strings(servers),
        searches: strings(searches),
        options: Some(
            options
                .iter()
                .map(|(n, v)| k8s::PodDNSConfigOption {
                    name: Some(n.to_string()),
                    value: v.map(str::to_string),
                })
                .collect(),
        ),
    }
}

fn frontend() -> k8s::Pod {
    pod("web", "frontend")
        .container(
            c("app", "registry.example/frontend:2")
                .cpu("250m")
                .mem("256Mi")
                .command(&[
                    "/app",
                    "--backend=$(BACKEND_API_SERVICE_HOST):$(BACKEND_API_SERVICE_PORT)",
                ])
                .env("CACHE_SERVICE_HOST", "cache.example")
                .env(
                    "CACHE_URL",
                    "redis://$(CACHE_SERVICE_HOST):$(CACHE_SERVICE_PORT)",
                )
                .env(
                    "API",
                    "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT_HTTPS)",
                ),
        )
        .build()
}

#[test]
fn golden_cluster_first_with_service_links() {
    let p = frontend();
    let t = translate_full(&p, &resolved_for(&p));
    check_golden(
        "dns-cluster-first",
        &serde_json::to_value(&t.group).expect("json"),
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(
        dns_of(&t.group),
        (
            vec!["10.0.0.10"],
            Some("web.svc.cluster.local svc.cluster.local cluster.local"),
            Some("ndots:5")
        )
    );
    // envvars.FromServices, for a Service with two named ports.
    for (name, value) in [
        ("BACKEND_API_SERVICE_HOST", "10.0.0.20"),
        ("BACKEND_API_SERVICE_PORT", "80"),
        ("BACKEND_API_SERVICE_PORT_HTTP", "80"),
        ("BACKEND_API_SERVICE_PORT_METRICS", "9090"),
        ("BACKEND_API_PORT", "tcp://10.0.0.20:80"),
        ("BACKEND_API_PORT_80_TCP", "tcp://10.0.0.20:80"),
        ("BACKEND_API_PORT_80_TCP_PROTO", "tcp"),
        ("BACKEND_API_PORT_80_TCP_PORT", "80"),
        ("BACKEND_API_PORT_80_TCP_ADDR", "10.0.0.20"),
        ("BACKEND_API_PORT_9090_TCP", "tcp://10.0.0.20:9090"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.0.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.0.0.1"),
        ("CACHE_SERVICE_PORT", "6379"),
        // The user's own definition wins over the service variable, and
        // `$(VAR)` sees it; other references fall through to the service
        // variables.
        ("CACHE_SERVICE_HOST", "cache.example"),
        ("CACHE_URL", "redis://cache.example:6379"),
        ("API", "https://10.0.0.1:443"),
    ] {
        assert_eq!(env_value(&t.group, name), Some(value), "{name}");
    }
    // Headless, ExternalName and other namespaces' Services give nothing.
    for prefix in ["PEERS_", "PARTNER_API_", "LEDGER_"] {
        let env = &t.group.properties.containers[0]
            .properties
            .environment_variables;
        assert!(
            !env.iter().any(|e| e.name.starts_with(prefix)),
            "{prefix}: {env:?}"
        );
    }
    assert_eq!(
        t.group.properties.containers[0].properties.command,
        ["/app", "--backend=10.0.0.20:80"]
    );
}

#[test]
fn golden_service_links_off_keeps_only_the_api_server() {
    let mut p = frontend();
    if let Some(s) = p.spec.as_mut() {
        s.enable_service_links = Some(false);
    }
    let t = translate_full(&p, &resolved_for(&p));
    check_golden(
        "dns-service-links-off",
        &serde_json::to_value(&t.group).expect("json"),
    );
    let env = &t.group.properties.containers[0]
        .properties
        .environment_variables;
    let service_vars: Vec<&str> = env
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| n.contains("_SERVICE_") || n.contains("_PORT"))
        .filter(|n| *n != "CACHE_SERVICE_HOST")
        .collect();
    assert!(
        service_vars.iter().all(|n| n.starts_with("KUBERNETES_")),
        "{service_vars:?}"
    );
    assert_eq!(
        env_value(&t.group, "KUBERNETES_SERVICE_HOST"),
        Some("10.0.0.1")
    );
    // `$(VAR)` of an undefined variable stays as written (Kubernetes' rule).
    assert_eq!(
        t.group.properties.containers[0].properties.command,
        [
            "/app",
            "--backend=$(BACKEND_API_SERVICE_HOST):$(BACKEND_API_SERVICE_PORT)"
        ]
    );
}

#[test]
fn golden_pod_dns_config_merges_like_the_kubelet() {
    let p = with_dns(
        frontend(),
        "ClusterFirst",
        Some(pod_dns(
            &["10.0.0.10", "192.168.0.53"],
            &["svc.cluster.local", "corp.example"],
            &[("ndots", Some("2")), ("edns0", None)],
        )),
    );
    let t = translate_full(&p, &resolved_for(&p));
    check_golden("dns-merge", &serde_json::to_value(&t.group).expect("json"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(
        dns_of(&t.group),
        (
            vec!["10.0.0.10", "192.168.0.53"],
            Some("web.svc.cluster.local svc.cluster.local cluster.local corp.example"),
            Some("ndots:2 edns0")
        )
    );
}

#[test]
fn golden_default_policy_takes_only_the_pods_dns_config() {
    let p = with_dns(
        frontend(),
        "Default",
        Some(pod_dns(
            &["1.1.1.1"],
            &["corp.example"],
            &[("timeout", Some("2"))],
        )),
    );
    let t = translate_full(&p, &resolved_for(&p));
    check_golden(
        "dns-default",
        &serde_json::to_value(&t.group).expect("json"),
    );
    assert_eq!(
        dns_of(&t.group),
        (vec!["1.1.1.1"], Some("corp.example"), Some("timeout:2"))
    );
    // Without a dnsConfig of its own, Default is ACI's resolver.
    let p = with_dns(frontend(), "Default", None);
    let t = translate_full(&p, &resolved_for(&p));
    assert_eq!(t.group.properties.dns_config, None);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn golden_none_policy_needs_a_nameserver() {
    let p = with_dns(
        frontend(),
        "None",
        Some(pod_dns(
            &["9.9.9.9", "149.112.112.112"],
            &["example.org"],
            &[("ndots", Some("1"))],
        )),
    );
    let t = translate_full(&p, &resolved_for(&p));
    check_golden("dns-none", &serde_json::to_value(&t.group).expect("json"));
    assert_eq!(
        dns_of(&t.group),
        (
            vec!["9.9.9.9", "149.112.112.112"],
            Some("example.org"),
            Some("ndots:1")
        )
    );
    // The API server's rule (ValidatePodDNSConfig), for pods that did not
    // come through it (`aci render`).
    for (config, field, why) in [
        (None, "spec.dnsConfig", "must provide `dnsConfig`"),
        (
            Some(pod_dns(&[], &["example.org"], &[])),
            "spec.dnsConfig.nameservers",
            "at least one DNS nameserver",
        ),
    ] {
        let p = with_dns(frontend(), "None", config);
        let e = translate(&p, &aci(PublicIp::Never, None), &resolved_for(&p))
            .expect_err("None without a nameserver");
        assert_eq!(e.field(), field, "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    let p = with_dns(frontend(), "Cluster", None);
    let e = translate(&p, &aci(PublicIp::Never, None), &resolved_for(&p)).expect_err("bad policy");
    assert_eq!(e.field(), "spec.dnsPolicy", "{e}");
}

#[test]
fn golden_limits_truncate_with_dns_config_forming_warnings() {
    // The API server lets a pod name 3 nameservers and 32 search paths;
    // with the cluster's they are 4 and 35, more than the kubelet applies.
    let searches: Vec<String> = (0..32)
        .map(|i| format!("team-{i:02}.corp.example"))
        .collect();
    let refs: Vec<&str> = searches.iter().map(String::as_str).collect();
    let p = with_dns(
        frontend(),
        "ClusterFirst",
        Some(pod_dns(
            &["192.168.0.53", "192.168.1.53", "192.168.2.53"],
            &refs,
            &[],
        )),
    );
    let t = translate_full(&p, &resolved_for(&p));
    check_golden(
        "dns-truncated",
        &serde_json::to_value(&t.group).expect("json"),
    );
    let (servers, search, _) = dns_of(&t.group);
    assert_eq!(servers, ["10.0.0.10", "192.168.0.53", "192.168.1.53"]);
    let search: Vec<&str> = search.expect("searches").split(' ').collect();
    assert_eq!(search.len(), 32);
    assert_eq!(
        &search[..3],
        [
            "web.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
    assert!(
        t.warnings
            .iter()
            .all(|w| w.reason == REASON_DNS_CONFIG_FORMING)
    );
    assert!(
        t.warnings[0]
            .message
            .starts_with("Nameserver limits were exceeded")
    );
    assert!(
        t.warnings[1]
            .message
            .starts_with("Search Line limits were exceeded")
    );
    // The kubelet's words, with the line applied.
    assert_eq!(
        t.warnings[0].message,
        "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: 10.0.0.10 192.168.0.53 192.168.1.53"
    );
    assert!(
        t.warnings[1]
            .message
            .ends_with("team-27.corp.example team-28.corp.example"),
        "{}",
        t.warnings[1].message
    );

    // The 2048-character line: the pod's 10 × 192 characters and an 11th
    // path of 100 (2030 with spaces, within the API server's limit) after
    // the cluster's 53 are 2084; the last path is cut.
    let mut long: Vec<String> = (0..10)
        .map(|i| format!("{i:02}{}", ".x".repeat(95)))
        .collect();
    long.push(format!("last{}", ".y".repeat(48)));
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    assert_eq!(refs.join(" ").len(), 2030);
    let p = with_dns(frontend(), "ClusterFirst", Some(pod_dns(&[], &refs, &[])));
    let t = translate_full(&p, &resolved_for(&p));
    let (_, search, _) = dns_of(&t.group);
    let search = search.expect("searches");
    assert_eq!(search.len(), 53 + 1 + 10 * 192 + 9);
    assert!(!search.contains("last."), "{search}");
    assert_eq!(t.warnings[0].reason, REASON_DNS_CONFIG_FORMING);
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
}

#[test]
fn cluster_first_without_a_cluster_dns_ip_falls_back_with_a_warning() {
    let p = frontend();
    let mut resolved = resolved_for(&p);
    resolved.cluster_dns.clear();
    let t = translate_full(&p, &resolved);
    assert_eq!(t.group.properties.dns_config, None);
    assert_eq!(t.warnings.len(), 1);
    assert_eq!(t.warnings[0].reason, REASON_MISSING_CLUSTER_DNS);
    assert!(
        t.warnings[0].message.contains("kube-system/kube-dns"),
        "{}",
        t.warnings[0].message
    );
    // The pod's own nameservers still apply (the kubelet's fallthrough to Default).
    let p = with_dns(
        frontend(),
        "ClusterFirst",
        Some(pod_dns(&["192.168.0.53"], &[], &[])),
    );
    let t = translate_full(&p, &resolved);
    assert_eq!(dns_of(&t.group), (vec!["192.168.0.53"], None, None));
}

#[test]
fn aci_needs_nameservers_and_windows_groups_get_no_dns_config() {
    // Default with searches but no nameserver: ARM requires nameServers.
    let p = with_dns(
        frontend(),
        "Default",
        Some(pod_dns(&[], &["corp.example"], &[])),
    );
    let t = translate_full(&p, &resolved_for(&p));
    assert_eq!(t.group.properties.dns_config, None);
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert_eq!(t.warnings[0].reason, REASON_DNS_CONFIG_FORMING);
    assert!(
        t.warnings[0].message.contains("search corp.example"),
        "{}",
        t.warnings[0].message
    );

    let p = pod("web", "win")
        .container(c("app", "mcr.microsoft.com/windows/servercore:ltsc2022"))
        .node_selector("kubernetes.io/os", "windows")
        .build();
    let t = translate_full(&p, &resolved_for(&p));
    assert_eq!(t.group.properties.os_type, "Windows");
    assert_eq!(t.group.properties.dns_config, None);
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert!(
        t.warnings[0].message.contains("Windows"),
        "{:?}",
        t.warnings
    );
    // Service variables do not depend on the OS.
    assert_eq!(
        env_value(&t.group, "KUBERNETES_SERVICE_HOST"),
        Some("10.0.0.1")
    );
}

#[test]
fn cluster_domain_and_ipv6_services_follow_the_kubelet() {
    let mut cfg = config();
    cfg.cluster_domain = "k8s.corp".into();
    let p = frontend();
    let resolved = Resolved {
        cluster_dns: vec!["fd00::a".into()],
        service_env: service_env(
            "web",
            true,
            &[service("web", "v6", "fd00::1:2", &[("", 8080, "")])],
        ),
        ..Resolved::default()
    };
    let settings = aci(PublicIp::Never, None);
    let g = pod_to_group(
        &p,
        &PodContext {
            config: &cfg,
            aci: &settings,
            resolved: &resolved,
        },
    )
    .expect("translates");
    assert_eq!(
        dns_of(&g),
        (
            vec!["fd00::a"],
            Some("web.svc.k8s.corp svc.k8s.corp k8s.corp"),
            Some("ndots:5")
        )
    );
    // net.JoinHostPort brackets IPv6 addresses; no API server Service here.
    assert_eq!(env_value(&g, "V6_PORT"), Some("tcp://[fd00::1:2]:8080"));
    assert_eq!(env_value(&g, "V6_PORT_8080_TCP_ADDR"), Some("fd00::1:2"));
    assert_eq!(env_value(&g, "KUBERNETES_SERVICE_HOST"), None);
}

#[test]
fn a_namespace_service_named_kubernetes_wins_over_the_api_servers() {
    let mut all = services();
    all.push(service(
        "web",
        "kubernetes",
        "10.0.0.99",
        &[("", 8443, "TCP")],
    ));
    for order in [all.clone(), all.into_iter().rev().collect()] {
        let env = service_env("web", true, &order);
        assert_eq!(
            env.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
            Some("10.0.0.99")
        );
        let env = service_env("web", false, &order);
        assert_eq!(
            env.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
            Some("10.0.0.1")
        );
    }
}
