//! ACI as a provider backend: [`AciBackend`] implements
//! [`crate::provider::backend::Backend`] over [`ContainerGroups`], and a
//! [`ContainerGroup`] is the backend's [`Instance`].
//!
//! Owns the ACI-specific half of the pod lifecycle: resolving and
//! translating a pod into its group (with the `aci` settings of the policy
//! that selects it), the sync's list plus the instance-view GETs ARM's list
//! leaves out (bounded per sync, oldest first), and the quota read. Groups
//! are named with the cluster's hash ([`crate::aci::translate::group_name_in`]);
//! listed groups are matched to pods by their tags, so groups named by
//! earlier releases are still found and collected; a group another cluster
//! tagged is never PUT over.
//! Must not: talk to the Kubernetes API or decide pod phases (the shared
//! controllers in `provider/` do both).

use super::translate::{
    PodContext, TranslateConfig, Translation, group_name, has_instance_view, pod_status_from_group,
    translate_pod,
};
use super::{
    AciError, ContainerGroup, ContainerGroups, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME,
    TAG_POD_UID,
};
use super::{BoxFuture, Usage};
use crate::policy::AciSettings;
use crate::policy::reload::PolicyStore;
use crate::provider::ProviderConfig;
use crate::provider::backend::{
    Backend, BackendError, CreateError, CreateNotice, Instance, InstanceEvent, InstanceKind,
    OwnerRecord, Read,
};
use crate::provider::resolve::{self, Sources};
use crate::provider::services::{SYNC_WAIT, ServiceSource};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Pod annotation marking that the pod's group was created (kept under its
/// historical name so pods marked by earlier releases stay recognised).
pub const GROUP_ANNOTATION: &str = "spillway.io/aci-group";

impl Instance for ContainerGroup {
    const KIND: InstanceKind = InstanceKind {
        system: "ACI",
        noun: "container group",
        marker_annotation: GROUP_ANNOTATION,
        container_id_scheme: "aci://",
        instance_name: group_name,
    };

    fn name(&self) -> &str {
        &self.name
    }

    fn owner(&self) -> OwnerRecord {
        let tag = |k: &str| self.tags.get(k).cloned();
        OwnerRecord {
            namespace: tag(TAG_NAMESPACE),
            name: tag(TAG_POD_NAME),
            uid: tag(TAG_POD_UID),
        }
    }

    fn pod_status(&self) -> PodStatus {
        pod_status_from_group(self)
    }

    fn events(&self) -> Vec<InstanceEvent> {
        let convert = |container: Option<&str>, e: &crate::aci::model::Event| {
            let reason = e.name.clone().filter(|n| !n.is_empty())?;
            Some(InstanceEvent {
                container: container.map(String::from),
                message: e.message.clone().unwrap_or_default(),
                warning: e.event_type.as_deref() == Some("Warning"),
                count: e.count.unwrap_or(1),
                last: e
                    .last_timestamp
                    .clone()
                    .or_else(|| e.first_timestamp.clone())
                    .unwrap_or_default(),
                reason,
            })
        };
        let containers = self.properties.containers.iter().flat_map(|c| {
            c.properties
                .instance_view
                .iter()
                .flat_map(|v| v.events.iter())
                .filter_map(move |e| convert(Some(&c.name), e))
        });
        let group = self
            .properties
            .instance_view
            .iter()
            .flat_map(|v| v.events.iter())
            .filter_map(|e| convert(None, e));
        containers.chain(group).collect()
    }

    fn held_cores(&self) -> f64 {
        self.properties
            .containers
            .iter()
            .map(|c| c.properties.resources.requests.cpu)
            .sum()
    }
}

impl BackendError for AciError {
    fn is_answer(&self) -> bool {
        // Throttling, quota, not-found… are answers: ACI is there.
        matches!(
            self,
            AciError::Throttled { .. }
                | AciError::QuotaExceeded { .. }
                | AciError::CapacityUnavailable { .. }
                | AciError::InvalidSpec { .. }
                | AciError::NotFound
                | AciError::Conflict { .. }
        )
    }
}

/// Settings of the ACI backend (taken from [`ProviderConfig`]).
#[derive(Debug, Clone, PartialEq)]
struct AciBackendConfig {
    cluster_id: String,
    location: String,
    list_timeout: Duration,
    refresh_interval: Duration,
    max_gets_per_sync: usize,
    /// `--aci-log-analytics`: every group gets this workspace.
    log_analytics: Option<resolve::LogAnalyticsSecret>,
}

/// The ACI backend.
pub struct AciBackend {
    aci: Arc<dyn ContainerGroups>,
    config: AciBackendConfig,
    translate: TranslateConfig,
    /// BurstPolicies: their `aci` section (public IP, DNS label) applies to
    /// the pods they select. Without, every pod gets the defaults.
    policies: Option<Arc<PolicyStore>>,
    /// Cluster DNS IP and service environment of burst pods (`None`: no
    /// cluster DNS, no service variables).
    services: Option<ServiceSource>,
    /// group name → last instance-view GET.
    last_get: Mutex<HashMap<String, Instant>>,
}

impl AciBackend {
    pub fn new(aci: Arc<dyn ContainerGroups>, config: &ProviderConfig) -> Self {
        Self {
            aci,
            config: AciBackendConfig {
                cluster_id: config.cluster_id.clone(),
                location: config.location.clone(),
                list_timeout: config.list_timeout,
                refresh_interval: config.refresh_interval,
                max_gets_per_sync: config.max_gets_per_sync,
                log_analytics: config.aci_log_analytics.clone(),
            },
            translate: TranslateConfig {
                subnets: config.aci_subnets.clone(),
                node_os: Some(config.node.os.clone()),
                ..TranslateConfig::new(config.cluster_id.clone(), config.location.clone())
            },
            policies: None,
            services: None,
            last_get: Mutex::default(),
        }
    }

    /// The same backend, applying the `aci` settings of `store`'s policies.
    pub fn with_policies(&self, store: Arc<PolicyStore>) -> Self {
        Self {
            aci: self.aci.clone(),
            config: self.config.clone(),
            translate: self.translate.clone(),
            policies: Some(store),
            services: self.services.clone(),
            last_get: Mutex::new(self.last_gets()),
        }
    }

    /// The same backend, giving pods cluster DNS (in `cluster_domain`) and
    /// service environment variables from `services`.
    pub fn with_services(&self, services: ServiceSource, cluster_domain: &str) -> Self {
        let mut translate = self.translate.clone();
        translate.cluster_domain = cluster_domain.to_string();
        Self {
            aci: self.aci.clone(),
            config: self.config.clone(),
            translate,
            policies: self.policies.clone(),
            services: Some(services),
            last_get: Mutex::new(self.last_gets()),
        }
    }

    pub fn container_groups(&self) -> &Arc<dyn ContainerGroups> {
        &self.aci
    }

    fn last_gets(&self) -> HashMap<String, Instant> {
        self.last_get
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn settings_for(&self, pod: &Pod) -> AciSettings {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        self.policies
            .as_ref()
            .and_then(|store| {
                store
                    .current()
                    .for_pod(&namespace, &labels)
                    .map(|p| p.aci.clone())
            })
            .unwrap_or_default()
    }

    /// One list (bounded by `list_timeout`), then GETs for instance views
    /// (bounded again): ARM's list has none, so finished groups are read
    /// again, those whose pod is not Running yet first, the others when
    /// their view is older than `refresh_interval`.
    async fn read_groups(
        &self,
        pods: &[Arc<Pod>],
    ) -> Result<Read<ContainerGroup, AciError>, AciError> {
        let cfg = &self.config;
        let listed =
            match tokio::time::timeout(cfg.list_timeout, self.aci.list(&cfg.cluster_id)).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(AciError::Transient {
                        message: format!("list: no answer within {:?}", cfg.list_timeout),
                    });
                }
            };
        let mut groups = self.by_instance_name(listed);
        // Where each listed instance really lives (a group named before
        // cluster hashing keeps its old name until it is deleted).
        let physical: HashMap<String, String> = groups
            .iter()
            .map(|(key, g)| (key.clone(), g.name.clone()))
            .collect();
        let pod_of_group: HashMap<String, &Arc<Pod>> = pods
            .iter()
            .map(|p| {
                let ns = p.namespace().unwrap_or_else(|| "default".into());
                (self.translate.group_name(&ns, &p.name_any()), p)
            })
            .collect();
        let last_get = self.last_gets();

        let mut unknown: HashSet<String> = HashSet::new();
        let mut wanted: Vec<(u8, Option<Instant>, String)> = Vec::new();
        for (key, g) in &groups {
            let finished = matches!(
                g.properties.provisioning_state.as_deref(),
                None | Some("Succeeded" | "Failed" | "Canceled")
            );
            if !finished || has_instance_view(g) {
                continue;
            }
            let Some(pod) = pod_of_group.get(key) else {
                continue;
            };
            let pod_running = pod.status.as_ref().and_then(|s| s.phase.as_deref())
                == Some("Running")
                && crate::provider::pods::had_group(pod);
            let last = last_get.get(key).copied();
            if !pod_running {
                wanted.push((0, last, key.clone()));
            } else if last.is_none_or(|t| t.elapsed() >= cfg.refresh_interval) {
                wanted.push((1, last, key.clone()));
            } else {
                unknown.insert(key.clone());
            }
        }
        wanted.sort();
        let (fetch, skip) = wanted.split_at(wanted.len().min(cfg.max_gets_per_sync));
        unknown.extend(skip.iter().map(|(_, _, n)| n.clone()));
        // Until a GET answers, a group's state is unknown this time.
        unknown.extend(fetch.iter().map(|(_, _, n)| n.clone()));
        let aci = self.aci.clone();
        let targets: Vec<(String, String)> = fetch
            .iter()
            .map(|(_, _, key)| {
                let name = physical.get(key).cloned().unwrap_or_else(|| key.clone());
                (key.clone(), name)
            })
            .collect();
        let mut fetched = futures::stream::iter(targets)
            .map(move |(key, name)| {
                let aci = aci.clone();
                async move {
                    let r = aci.get(&name).await;
                    (key, r)
                }
            })
            .buffer_unordered(8);
        let deadline = Instant::now() + cfg.list_timeout;
        let mut got = Vec::new();
        let mut errors = Vec::new();
        loop {
            let (name, r) = match tokio::time::timeout_at(deadline, fetched.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => break,
                Err(_) => {
                    errors.push(AciError::Transient {
                        message: format!(
                            "instance-view reads: no answer within {:?}",
                            cfg.list_timeout
                        ),
                    });
                    break;
                }
            };
            match r {
                Ok(Some(g)) => {
                    unknown.remove(&name);
                    got.push((name.clone(), Instant::now()));
                    groups.insert(name, g);
                }
                Ok(None) => {
                    unknown.remove(&name);
                    groups.remove(&name);
                }
                Err(e) => errors.push(e),
            }
        }
        {
            let mut last = self.last_get.lock().unwrap_or_else(|e| e.into_inner());
            last.extend(got);
            last.retain(|name, _| groups.contains_key(name));
        }
        Ok(Read {
            instances: groups,
            unknown,
            errors,
        })
    }

    /// Listed groups by the instance name of the pod their tags name
    /// ([`TranslateConfig::group_name`]), so a group created before cluster
    /// hashing (named [`group_name`]) is still found, watched and, once its
    /// pod is gone, collected. A group without pod tags keeps its own name;
    /// when both a hashed and an old-style group name one pod, the hashed
    /// one is the pod's and the other stays listed under its own name.
    fn by_instance_name(&self, listed: Vec<ContainerGroup>) -> HashMap<String, ContainerGroup> {
        let mut out: HashMap<String, ContainerGroup> = HashMap::new();
        for g in listed {
            let key = match (g.tags.get(TAG_NAMESPACE), g.tags.get(TAG_POD_NAME)) {
                (Some(ns), Some(pod)) => self.translate.group_name(ns, pod),
                _ => g.name.clone(),
            };
            // The loser stays listed under its own name, so GC still sees
            // it (e.g. an earlier pod's old-style group).
            let loser = match out.get(&key) {
                Some(kept) if kept.name == key => Some(g),
                _ => out.insert(key, g),
            };
            if let Some(l) = loser {
                out.entry(l.name.clone()).or_insert(l);
            }
        }
        out
    }

    async fn create_group(
        &self,
        pod: &Pod,
        sources: &Sources,
    ) -> Result<Vec<CreateNotice>, CreateError> {
        let mut resolved = resolve::resolve(pod, sources).map_err(|e| CreateError::Config {
            message: e.to_string(),
        })?;
        if let Some(secret) = &self.config.log_analytics {
            resolved.log_analytics = Some(
                resolve::log_analytics(secret, sources.log_analytics.as_ref()).map_err(|e| {
                    CreateError::Config {
                        message: e.to_string(),
                    }
                })?,
            );
        }
        if let Some(services) = &self.services {
            services
                .fill(pod, &mut resolved, SYNC_WAIT)
                .await
                .map_err(|e| CreateError::Retry {
                    message: e.to_string(),
                    metric: None,
                })?;
        }
        let settings = self.settings_for(pod);
        let ctx = PodContext {
            config: &self.translate,
            aci: &settings,
            resolved: &resolved,
        };
        let Translation { group, warnings } =
            translate_pod(pod, &ctx).map_err(|e| CreateError::Invalid {
                message: format!("InvalidSpec: {e}"),
            })?;
        // ARM updates a group a PUT names, whoever created it: never PUT
        // over a group another cluster tagged (two clusters sharing a
        // resource group, or a name that met by chance). ContainerGroups_
        // CreateOrUpdate documents no If-None-Match, so read first; the
        // cluster hash in the name keeps the window between read and PUT
        // to clusters that share an id or a hash.
        if let Some(existing) = self.aci.get(&group.name).await.map_err(create_error)? {
            let ours = self.translate.cluster_id.as_str();
            match existing.tags.get(TAG_CLUSTER).map(String::as_str) {
                Some(c) if c == ours => {}
                other => {
                    return Err(CreateError::Invalid {
                        message: format!(
                            "NameCollision: container group {} already exists in the resource group and belongs to {}; \
                             spillway does not overwrite it",
                            group.name,
                            match other {
                                Some(c) => format!("cluster {c:?} (tag {TAG_CLUSTER})"),
                                None => format!("no spillway cluster (no {TAG_CLUSTER} tag)"),
                            }
                        ),
                    });
                }
            }
        }
        tracing::info!(group = %group.name, pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "creating container group");
        self.aci
            .create_or_update(&group)
            .await
            .map_err(create_error)?;
        Ok(warnings
            .into_iter()
            .map(|w| CreateNotice {
                reason: w.reason.to_string(),
                message: w.message,
            })
            .collect())
    }
}

/// How an ACI refusal shows on the pod.
fn create_error(e: AciError) -> CreateError {
    match e {
        e @ AciError::InvalidSpec { .. } => CreateError::Invalid {
            message: format!("InvalidSpec: {e}"),
        },
        e => {
            let metric = match e {
                AciError::QuotaExceeded { .. } => Some("quota"),
                AciError::CapacityUnavailable { .. } => Some("capacity"),
                _ => None,
            };
            CreateError::Retry {
                message: format!("{}: {e}; retrying", e.reason()),
                metric,
            }
        }
    }
}

impl Backend for AciBackend {
    type Instance = ContainerGroup;
    type Error = AciError;

    fn create<'a>(
        &'a self,
        pod: &'a Pod,
        sources: &'a Sources,
    ) -> BoxFuture<'a, Result<Vec<CreateNotice>, CreateError>> {
        Box::pin(self.create_group(pod, sources))
    }

    fn instance_name(&self, namespace: &str, name: &str) -> String {
        self.translate.group_name(namespace, name)
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
        self.aci.get(name)
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
        self.aci.delete(name)
    }

    fn read<'a>(
        &'a self,
        pods: &'a [Arc<Pod>],
    ) -> BoxFuture<'a, Result<Read<ContainerGroup, AciError>, AciError>> {
        Box::pin(self.read_groups(pods))
    }

    fn capacity(&self) -> BoxFuture<'_, Result<Usage, AciError>> {
        self.aci.usage(&self.config.location)
    }

    fn timed_out(&self, what: String) -> AciError {
        AciError::Transient { message: what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, pod: &str, uid: &str) -> ContainerGroup {
        ContainerGroup {
            name: name.to_string(),
            tags: [
                (TAG_CLUSTER.to_string(), "c1".to_string()),
                (TAG_NAMESPACE.to_string(), "web".to_string()),
                (TAG_POD_NAME.to_string(), pod.to_string()),
                (TAG_POD_UID.to_string(), uid.to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn listed_groups_are_keyed_by_the_pod_their_tags_name() {
        let cfg = ProviderConfig::new("node", "c1", "westeurope", "10.0.0.1", 10250);
        let backend = AciBackend::new(Arc::new(NoAci), &cfg);
        let hashed = backend.instance_name("web", "db-0");
        assert_eq!(
            hashed,
            crate::aci::translate::group_name_in("c1", "web", "db-0")
        );
        // An old-style group alone is found under the pod's instance name.
        let m = backend.by_instance_name(vec![listed("web-db-0", "db-0", "u1")]);
        assert_eq!(m.get(&hashed).map(|g| g.name.as_str()), Some("web-db-0"));
        // With both, the hashed group is the pod's; the old one stays listed
        // under its own name (GC still sees it), whatever the list order.
        for order in [
            vec![
                listed("web-db-0", "db-0", "u0"),
                listed(&hashed, "db-0", "u1"),
            ],
            vec![
                listed(&hashed, "db-0", "u1"),
                listed("web-db-0", "db-0", "u0"),
            ],
        ] {
            let m = backend.by_instance_name(order);
            assert_eq!(m.len(), 2);
            assert_eq!(
                m.get(&hashed).map(|g| g.name.as_str()),
                Some(hashed.as_str())
            );
            assert_eq!(m.get("web-db-0").map(|g| g.name.as_str()), Some("web-db-0"));
        }
    }

    /// A `ContainerGroups` no test here calls.
    struct NoAci;
    impl ContainerGroups for NoAci {
        fn create_or_update<'a>(
            &'a self,
            _: &'a ContainerGroup,
        ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(None) })
        }
        fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
            Box::pin(async { Ok(()) })
        }
        fn logs<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: crate::aci::LogOptions,
        ) -> BoxFuture<'a, Result<String, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn metrics<'a>(
            &'a self,
            _: &'a str,
            _: crate::aci::monitor::MetricsSpan,
        ) -> BoxFuture<'a, Result<crate::aci::monitor::GroupMetrics, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn usage<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
            Box::pin(async { Ok(Usage::default()) })
        }
        fn exec<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: crate::aci::TerminalSize,
        ) -> BoxFuture<'a, Result<crate::aci::ExecSession, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
    }

    #[test]
    fn refusals_are_answers_transport_failures_are_not() {
        assert!(
            AciError::Throttled {
                retry_after: Duration::from_secs(1)
            }
            .is_answer()
        );
        assert!(AciError::NotFound.is_answer());
        assert!(
            !AciError::Transient {
                message: "reset".into()
            }
            .is_answer()
        );
        assert!(
            !AciError::Auth {
                message: "no".into()
            }
            .is_answer()
        );
    }

    #[test]
    fn refusals_map_to_pod_states() {
        assert!(matches!(
            create_error(AciError::InvalidSpec { message: "x".into() }),
            CreateError::Invalid { message } if message.starts_with("InvalidSpec: ")
        ));
        assert!(matches!(
            create_error(AciError::QuotaExceeded { code: "c".into(), message: "m".into() }),
            CreateError::Retry { metric: Some("quota"), message } if message.ends_with("; retrying")
        ));
        assert!(matches!(
            create_error(AciError::Transient {
                message: "m".into()
            }),
            CreateError::Retry { metric: None, .. }
        ));
    }
}
