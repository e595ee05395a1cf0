//! Cluster DNS and service environment variables for burst pods, as the
//! kubelet gives them to the pods it runs.
//!
//! Pure functions, like the rest of the translation: the caller looks up the
//! cluster DNS Service's ClusterIP and the Services (see
//! `provider::services`) and hands them in through [`Resolved`].
//!
//! **DNS** follows the kubelet's `pkg/kubelet/network/dns/dns.go`
//! (`GetPodDNS`):
//! - `ClusterFirst` (the default) and `ClusterFirstWithHostNet` (ACI has no
//!   host network): the cluster DNS IPs as the only nameservers, search
//!   `<ns>.svc.<domain> svc.<domain> <domain>`, options `ndots:5`. Without a
//!   known cluster DNS IP the kubelet falls back to `Default` with a
//!   `MissingClusterDNS` warning Event; so does spillway.
//! - `Default`: the node's resolver, which on ACI is ACI's own: no
//!   `dnsConfig` from the cluster.
//! - `None`: nothing but the pod's `dnsConfig`.
//!
//! Then the pod's own `dnsConfig` is merged as `appendDNSConfig` does
//! (nameservers and searches appended without duplicates, options merged by
//! name with the pod's value winning; the merged options keep their first
//! position, where the kubelet's map iteration gives no order), and the
//! result is cut to the kubelet's limits (`formDNSConfigFitsLimits`: 3
//! nameservers, search paths of at most 253 characters, 32 of them and 2048
//! characters in all, the `ExpandedDNSConfig` limits, GA since 1.28), each
//! cut reported as a `DNSConfigForming` warning as the kubelet does.
//!
//! What ACI adds to that: ARM requires `nameServers` in a `dnsConfig`
//! (2023-05-01 spec, `DnsConfiguration.required`), so a pod whose result has
//! searches or options but no nameserver (`Default` with only `searches` in
//! its `dnsConfig`) gets no `dnsConfig` and a `DNSConfigForming` warning;
//! ACI's resolver applies. ACI adds Azure's resolver (168.63.129.16) to every
//! container's `resolv.conf` itself (ACI's "custom DNS settings" doc), as a
//! node's resolver would be for `Default`. Windows groups get no `dnsConfig`
//! (the AKS virtual node's provider, virtual-kubelet/azure-aci
//! `AmendVnetResources`, never sends one for Windows), with a warning when
//! the pod would have had one.
//!
//! **Service environment** follows `pkg/kubelet/envvars/envvars.go`
//! (`FromServices`) and `getServiceEnvVarMap` in `kubelet_pods.go`: the
//! `kubernetes` Service of `default` always, and with `enableServiceLinks`
//! (default true) every Service of the pod's namespace (a same-named one
//! there wins over `default/kubernetes`); Services without a ClusterIP
//! (headless `None`, `ExternalName`) are skipped.

use super::{DnsConfiguration, TranslateWarning};
use k8s_openapi::api::core::v1 as k8s;
use std::collections::BTreeMap;

/// The kubelet's default `--cluster-domain` on AKS (and kubeadm).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Namespace and name of the cluster DNS Service (CoreDNS on AKS keeps the
/// `kube-dns` name for compatibility).
pub const CLUSTER_DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
/// Namespace and name of the API server's Service, whose variables every
/// pod gets (`masterServices` in `kubelet_pods.go`).
pub const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// Event reason of a DNS configuration cut to fit (the kubelet's).
pub const REASON_DNS_CONFIG_FORMING: &str = "DNSConfigForming";
/// Event reason of a `ClusterFirst` pod without a known cluster DNS IP
/// (the kubelet's).
pub const REASON_MISSING_CLUSTER_DNS: &str = "MissingClusterDNS";

/// `validation.MaxDNSNameservers` (pkg/apis/core/validation).
pub const MAX_DNS_NAMESERVERS: usize = 3;
/// `validation.MaxDNSSearchPathsExpanded`.
pub const MAX_DNS_SEARCH_PATHS: usize = 32;
/// `validation.MaxDNSSearchListCharsExpanded`.
pub const MAX_DNS_SEARCH_LIST_CHARS: usize = 2048;
/// `utilvalidation.DNS1123SubdomainMaxLength`: longer search paths make
/// some resolvers (glibc 2.28) abort, so the kubelet drops them.
const MAX_SEARCH_PATH_LEN: usize = 253;

/// The kubelet's default options for cluster DNS.
const DEFAULT_DNS_OPTIONS: &[&str] = &["ndots:5"];

/// The pod's resolver configuration on ACI and what had to be said about
/// it. `Err` is a pod the API server would have refused (`dnsPolicy: None`
/// without a nameserver), with the field and message.
pub(super) fn pod_dns_config(
    pod: &k8s::Pod,
    namespace: &str,
    cluster_dns: &[String],
    cluster_domain: &str,
    os_type: &str,
) -> Result<(Option<DnsConfiguration>, Vec<TranslateWarning>), (String, String)> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let pod_config = spec.and_then(|s| s.dns_config.as_ref());
    let mut warnings = Vec::new();
    let mut servers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    match policy {
        // ACI has no host network: ClusterFirstWithHostNet is ClusterFirst.
        "ClusterFirst" | "ClusterFirstWithHostNet" => {
            if cluster_dns.is_empty() {
                warnings.push(TranslateWarning {
                    reason: REASON_MISSING_CLUSTER_DNS,
                    message: format!(
                        "spillway does not know the cluster DNS IP (no --cluster-dns and no Service {}/{}) and cannot give the pod the {policy:?} policy; falling back to \"Default\" (ACI's resolver)",
                        CLUSTER_DNS_SERVICE.0, CLUSTER_DNS_SERVICE.1
                    ),
                });
            } else {
                servers = cluster_dns.to_vec();
                if !cluster_domain.is_empty() {
                    searches = vec![
                        format!("{namespace}.svc.{cluster_domain}"),
                        format!("svc.{cluster_domain}"),
                        cluster_domain.to_string(),
                    ];
                }
                options = DEFAULT_DNS_OPTIONS.iter().map(|o| o.to_string()).collect();
            }
        }
        "Default" | "None" => {}
        other => {
            return Err((
                "spec.dnsPolicy".to_string(),
                format!(
                    "Unsupported value: {other:?}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""
                ),
            ));
        }
    }
    // validatePodDNSConfig (pkg/apis/core/validation), for pods that did
    // not come through the API server (`aci render`).
    if policy == "None" {
        if pod_config.is_none() {
            return Err((
                "spec.dnsConfig".to_string(),
                "Required value: must provide `dnsConfig` when `dnsPolicy` is None".to_string(),
            ));
        }
        if pod_config
            .and_then(|c| c.nameservers.as_ref())
            .is_none_or(Vec::is_empty)
        {
            return Err((
                "spec.dnsConfig.nameservers".to_string(),
                "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
                    .to_string(),
            ));
        }
    }
    if let Some(c) = pod_config {
        append_unique(&mut servers, c.nameservers.iter().flatten());
        append_unique(&mut searches, c.searches.iter().flatten());
        merge_options(&mut options, c.options.iter().flatten());
    }
    let servers = fit_nameservers(servers, &mut warnings);
    let searches = fit_searches(searches, &mut warnings);
    if servers.is_empty() && searches.is_empty() && options.is_empty() {
        return Ok((None, warnings));
    }
    if os_type == "Windows" {
        warnings.push(TranslateWarning {
            reason: REASON_DNS_CONFIG_FORMING,
            message: "ACI Windows container groups get no dnsConfig (as on the AKS virtual node); the pod uses ACI's resolver".to_string(),
        });
        return Ok((None, warnings));
    }
    if servers.is_empty() {
        warnings.push(TranslateWarning {
            reason: REASON_DNS_CONFIG_FORMING,
            message: format!(
                "ACI takes a dnsConfig only with nameservers and the pod's {policy:?} policy gives none; its search paths and options are left out ({}) and ACI's resolver applies",
                searches
                    .iter()
                    .map(|s| format!("search {s}"))
                    .chain(options.iter().map(|o| format!("option {o}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        return Ok((None, warnings));
    }
    let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join(" "));
    Ok((
        Some(DnsConfiguration {
            name_servers: servers,
            search_domains: join(searches),
            options: join(options),
        }),
        warnings,
    ))
}

/// `omitDuplicates(append(existing, more...))`.
fn append_unique<'a>(existing: &mut Vec<String>, more: impl IntoIterator<Item = &'a String>) {
    for m in more {
        if !existing.contains(m) {
            existing.push(m.clone());
        }
    }
}

/// `mergeDNSOptions`: options by name (`name[:value]`), the pod's winning.
fn merge_options<'a>(
    existing: &mut Vec<String>,
    pod: impl IntoIterator<Item = &'a k8s::PodDNSConfigOption>,
) {
    let name_of = |o: &str| o.split_once(':').map_or(o, |(n, _)| n).to_string();
    for o in pod {
        let name = o.name.clone().unwrap_or_default();
        let text = match o.value.as_deref() {
            Some(v) if !v.is_empty() => format!("{name}:{v}"),
            _ => name.clone(),
        };
        match existing.iter_mut().find(|e| name_of(e) == name) {
            Some(e) => *e = text,
            None => existing.push(text),
        }
    }
}

/// `formDNSNameserversFitsLimits`.
fn fit_nameservers(mut servers: Vec<String>, warnings: &mut Vec<TranslateWarning>) -> Vec<String> {
    if servers.len() > MAX_DNS_NAMESERVERS {
        servers.truncate(MAX_DNS_NAMESERVERS);
        warnings.push(TranslateWarning {
            reason: REASON_DNS_CONFIG_FORMING,
            message: format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
                servers.join(" ")
            ),
        });
    }
    servers
}

/// `formDNSSearchFitsLimits`: at most 32 paths, none over 253 characters,
/// at most 2048 characters joined (paths cut from the end).
fn fit_searches(mut searches: Vec<String>, warnings: &mut Vec<TranslateWarning>) -> Vec<String> {
    let mut exceeded = false;
    if searches.len() > MAX_DNS_SEARCH_PATHS {
        searches.truncate(MAX_DNS_SEARCH_PATHS);
        exceeded = true;
    }
    let before = searches.len();
    searches.retain(|s| s.len() <= MAX_SEARCH_PATH_LEN);
    exceeded |= searches.len() != before;
    let joined_len =
        |s: &[String]| s.iter().map(String::len).sum::<usize>() + s.len().saturating_sub(1);
    if joined_len(&searches) > MAX_DNS_SEARCH_LIST_CHARS {
        while joined_len(&searches) > MAX_DNS_SEARCH_LIST_CHARS {
            searches.pop();
        }
        exceeded = true;
    }
    if exceeded {
        warnings.push(TranslateWarning {
            reason: REASON_DNS_CONFIG_FORMING,
            message: format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                searches.join(" ")
            ),
        });
    }
    searches
}

/// Whether a Service has a ClusterIP (`IsServiceIPSet`: not `None`, not empty).
fn has_cluster_ip(s: &k8s::Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The kubelet's variable name of a Service or port name: upper case, `-` → `_`.
fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// `host:port`, IPv6 in brackets (`net.JoinHostPort`).
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The variables `envvars.FromServices` makes for one Service (which has a
/// ClusterIP), appended to `out`.
fn service_vars(s: &k8s::Service, out: &mut BTreeMap<String, String>) {
    let Some(spec) = s.spec.as_ref() else {
        return;
    };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return;
    };
    let prefix = env_name(s.metadata.name.as_deref().unwrap_or_default());
    out.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
    let port_var = format!("{prefix}_SERVICE_PORT");
    out.insert(port_var.clone(), first.port.to_string());
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.insert(format!("{port_var}_{}", env_name(name)), p.port.to_string());
        }
    }
    // Docker link variables.
    for (i, p) in ports.iter().enumerate() {
        let protocol = p
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let url = format!(
            "{}://{}",
            protocol.to_lowercase(),
            join_host_port(&ip, p.port)
        );
        if i == 0 {
            out.insert(format!("{prefix}_PORT"), url.clone());
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_uppercase());
        out.insert(format!("{port_prefix}_PROTO"), protocol.to_lowercase());
        out.insert(format!("{port_prefix}_PORT"), p.port.to_string());
        out.insert(format!("{port_prefix}_ADDR"), ip.clone());
        out.insert(port_prefix, url);
    }
}

/// The service environment of a pod in `namespace` (`getServiceEnvVarMap`):
/// `default/kubernetes` always, the namespace's Services when
/// `enable_service_links`. `services` may hold any namespaces; the others
/// are ignored.
pub fn service_env<'a>(
    namespace: &str,
    enable_service_links: bool,
    services: impl IntoIterator<Item = &'a k8s::Service>,
) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<String, &k8s::Service> = BTreeMap::new();
    for s in services {
        if !has_cluster_ip(s) {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if ns == API_SERVICE.0 && name == API_SERVICE.1 {
            chosen.entry(name).or_insert(s);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, s);
        }
    }
    let mut out = BTreeMap::new();
    for s in chosen.values() {
        service_vars(s, &mut out);
    }
    out
}

/// Whether the pod wants its namespace's service links (default true).
pub fn enable_service_links(pod: &k8s::Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
}

/// The cluster DNS IP a `kube-dns` Service gives (its ClusterIP, or its
/// `clusterIPs` when dual-stack), empty when it has none.
pub fn cluster_dns_of(service: &k8s::Service) -> Vec<String> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let ips: Vec<String> = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
        Some(ips) => ips.clone(),
        None => spec.cluster_ip.iter().cloned().collect(),
    };
    ips.into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_paths_over_253_characters_are_dropped_wherever_they_are() {
        let long = format!("a{}", ".b".repeat(130));
        let mut warnings = Vec::new();
        let kept = fit_searches(
            vec!["x.example".into(), long, "y.example".into()],
            &mut warnings,
        );
        assert_eq!(kept, ["x.example", "y.example"]);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .message
                .ends_with("the applied search line is: x.example y.example"),
            "{}",
            warnings[0].message
        );
    }
}
