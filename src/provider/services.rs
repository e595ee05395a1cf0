//! The Services a burst pod's environment and DNS come from, read the way
//! the kubelet reads them: one cluster-wide list/watch of Services (a
//! reflector, as the kubelet's service informer), from which each pod
//! creation takes
//! - the cluster DNS IP: `--cluster-dns` when given, else the ClusterIP of
//!   `kube-system/kube-dns` (CoreDNS on AKS keeps that name), current at
//!   the time of the creation (a changed Service applies to the next pod);
//! - the service environment ([`crate::aci::translate::dns::service_env`]):
//!   `default/kubernetes` always, the pod's namespace's Services with
//!   `enableServiceLinks`.
//!
//! Like the kubelet (which refuses to build a container's environment
//! "until services have been read at least once"), a creation waits for the
//! first list, up to [`SYNC_WAIT`], and is retried after that rather than
//! run with a partial environment.
//!
//! RBAC: `list` and `watch` on `services` cluster-wide (the kubelet's node
//! authorizer grants the same); a namespaced read per burst namespace would
//! need a watch per namespace and the `kube-dns` and `kubernetes` objects
//! besides.

use crate::aci::translate::Resolved;
use crate::aci::translate::dns::{self, CLUSTER_DNS_SERVICE};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::time::Duration;

/// How long a pod creation waits for the first list of Services.
pub const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Why a pod's service environment cannot be built yet (retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "services have not yet been read at least once, cannot construct envvars (list/watch of Services: {0})"
)]
pub struct NotSynced(pub String);

/// Cluster DNS IP and Services for the translation; cheap to clone.
#[derive(Clone)]
pub struct ServiceSource {
    /// `--cluster-dns`: wins over the looked-up Service.
    cluster_dns: Vec<String>,
    /// The reflector's store; `None` when nothing watches Services (then
    /// only `--cluster-dns` and no service environment).
    store: Option<Store<Service>>,
}

impl std::fmt::Debug for ServiceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSource")
            .field("cluster_dns", &self.cluster_dns)
            .field("watching", &self.store.is_some())
            .finish()
    }
}

impl ServiceSource {
    /// No Service reader: the cluster DNS IPs given, no service environment.
    pub fn fixed(cluster_dns: Vec<String>) -> Self {
        Self {
            cluster_dns,
            store: None,
        }
    }

    /// A reader of every Service through `client`, and the task that keeps
    /// it current (run it for as long as the provider runs; watch errors are
    /// retried with kube's default backoff).
    pub fn watch(
        client: kube::Client,
        cluster_dns: Vec<String>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let api: kube::Api<Service> = kube::Api::all(client);
        let (store, writer) = reflector::store::<Service>();
        let events = reflector(
            writer,
            watcher(api, watcher::Config::default())
                .modify(|s: &mut Service| s.metadata.managed_fields = None)
                .default_backoff(),
        );
        let drive = async move {
            let mut events = std::pin::pin!(events);
            let mut failing = false;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("watch of Services recovered");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "watch of Services failed; burst pods get no service environment until it works (retrying)");
                        }
                        failing = true;
                    }
                }
            }
        };
        (
            Self {
                cluster_dns,
                store: Some(store),
            },
            drive,
        )
    }

    /// The cluster DNS IPs now: `--cluster-dns`, else `kube-system/kube-dns`'s
    /// ClusterIP(s) as last read; empty when neither is known.
    pub fn cluster_dns(&self) -> Vec<String> {
        if !self.cluster_dns.is_empty() {
            return self.cluster_dns.clone();
        }
        let key = ObjectRef::<Service>::new(CLUSTER_DNS_SERVICE.1).within(CLUSTER_DNS_SERVICE.0);
        self.store
            .as_ref()
            .and_then(|s| s.get(&key))
            .map(|s| dns::cluster_dns_of(&s))
            .unwrap_or_default()
    }

    /// Fill `resolved`'s cluster DNS and service environment for `pod`,
    /// waiting up to `wait` for the first list of Services.
    pub async fn fill(
        &self,
        pod: &Pod,
        resolved: &mut Resolved,
        wait: Duration,
    ) -> Result<(), NotSynced> {
        if let Some(store) = &self.store {
            match tokio::time::timeout(wait, store.wait_until_ready()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NotSynced("the reader stopped".into())),
                Err(_) => {
                    return Err(NotSynced(format!("no complete list within {wait:?}")));
                }
            }
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let services = store.state();
            resolved.service_env = dns::service_env(
                namespace,
                dns::enable_service_links(pod),
                services.iter().map(|s| s.as_ref()),
            );
        }
        resolved.cluster_dns = self.cluster_dns();
        Ok(())
    }
}

/// Parse `--cluster-dns` values: IP addresses (the kubelet's flag takes a
/// comma-separated list too).
pub fn parse_cluster_dns(values: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')) {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let ip: std::net::IpAddr = v
            .parse()
            .map_err(|_| format!("--cluster-dns: {v:?} is not an IP address"))?;
        let ip = ip.to_string();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Check `--cluster-domain`: a DNS subdomain (what the kubelet's search
/// paths need), without a trailing dot.
pub fn check_cluster_domain(domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--cluster-domain: {domain:?} is not a DNS domain (lowercase labels of letters, digits and '-', separated by '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dns_flags_are_ip_lists() {
        assert_eq!(
            parse_cluster_dns(&["10.0.0.10".into(), "fd00::a,10.0.0.10".into()]),
            Ok(vec!["10.0.0.10".to_string(), "fd00::a".to_string()])
        );
        let e = parse_cluster_dns(&["kube-dns".into()]).expect_err("not an IP");
        assert!(e.contains("\"kube-dns\""), "{e}");
        assert!(check_cluster_domain("cluster.local").is_ok());
        for bad in ["", "cluster.local.", "Cluster.local", "-a.b", "a..b"] {
            assert!(check_cluster_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_flag_wins_and_a_fixed_source_gives_no_service_environment() {
        let pod = Pod::default();
        let mut r = Resolved::default();
        ServiceSource::fixed(vec!["10.0.0.10".into()])
            .fill(&pod, &mut r, Duration::from_millis(1))
            .await
            .expect("nothing to wait for");
        assert_eq!(r.cluster_dns, ["10.0.0.10"]);
        assert!(r.service_env.is_empty());
    }
}
