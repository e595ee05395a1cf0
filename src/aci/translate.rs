//! Pod → container group, and container group → pod status.
//!
//! Pure functions: no I/O, no clock. Everything that needs the API server
//! (ConfigMap/Secret values, pull secrets, Azure Files keys, service account
//! tokens) is resolved by the caller and handed in through [`Resolved`]; a
//! reference the caller did not resolve is an error, never silently dropped.
//!
//! Decisions worth knowing (ACI cannot express everything a pod can):
//! - **`args` without `command`**: ACI's `command` replaces the image's
//!   ENTRYPOINT *and* CMD, so "keep the entrypoint, replace the arguments"
//!   cannot be said. If the caller knows the image's ENTRYPOINT
//!   ([`Resolved::image_entrypoints`]) it is prepended; otherwise the pod is
//!   rejected (`spec.containers[i].args`) rather than run with the wrong argv.
//! - **Init containers** are supported (ACI has `initContainers` since
//!   2019-12-01): image, command, env and volume mounts. ACI gives init
//!   containers no resources of their own, so their requests are ignored;
//!   ports, probes and sidecar init containers (`restartPolicy: Always`) are
//!   rejected.
//! - **`workingDir`** has no ACI equivalent and is ignored.
//! - **`startupProbe`** has no ACI equivalent: its worst-case duration is
//!   added to the liveness probe's initial delay so a slow start is not
//!   killed; it is dropped otherwise.
//! - **`lifecycle.preStop`** is ignored (ACI stops containers itself);
//!   `postStart` is rejected (work the pod relies on would silently not run).
//! - **`tcpSocket`/`grpc` liveness probes** are rejected (ACI has exec and
//!   httpGet only). A `tcpSocket`/`grpc` **readinessProbe** is not sent to
//!   ACI: spillway probes readiness itself (`crate::provider::probe`).
//! - `emptyDir.medium: Memory` becomes a disk-backed emptyDir.
//! - Secret, ConfigMap, projected and downwardAPI volumes all become ACI
//!   `secret` volumes with the files the caller resolved (including the
//!   service account token volume the API server injects).
//! - `$(VAR)` references in env values, command and args are expanded as
//!   Kubernetes does; a value built from a secret stays a `secureValue`.
//! - **Resources**: CPU in steps of 0.01 core and memory in steps of 0.1 GB
//!   (rounded up). ACI refuses a container limit below its request and a
//!   container limit above the group's *total* request (an ACI limit is a
//!   share of the group, not a cap on a node): by default such limits are
//!   lowered to the total request, or with `aci.resources: raise-requests`
//!   the request is raised to cover them (ACI bills the larger request). Both
//!   come back as a [`TranslateWarning`] the provider shows as a pod Event.
//! - **Windows** groups: the group's `osType` is the bound virtual node's OS
//!   (`--aci-windows` registers a Windows node beside the Linux one), never
//!   against the pod's own `kubernetes.io/os` selector or `spec.os`.
//!   Refused with the field named, as ACI would refuse the group: more than
//!   one container and Azure Files volumes (ACI runs multi-container groups
//!   and Azure Files on Linux only). Dropped with a warning Event:
//!   `dnsConfig` (see [`dns`]). Subnets are kept: ACI deploys Windows groups
//!   into a virtual network too.
//! - `publicIp: always` on a pod without container ports is rejected: ACI
//!   cannot expose an IP without ports.
//! - **Network** ([`network`]): with `--aci-subnet-id` groups go to a
//!   delegated subnet with a private IP (the pod IP) and no public IP.
//! - **DNS and service discovery** as the kubelet: `dnsPolicy`, the pod's
//!   `dnsConfig`, the cluster DNS IP and domain become the group's
//!   `dnsConfig`; every container gets the service environment variables
//!   (user-defined variables win; `$(VAR)` sees them). See [`dns`].
//! - Ignored without error (no ACI equivalent): `hostAliases`,
//!   `securityContext` other than `privileged`, `terminationGracePeriodSeconds`,
//!   `activeDeadlineSeconds`, `imagePullPolicy`.
//! - The group name and the tags are the identity: a restarted spillway
//!   translating the same pod gets the same name and finds the existing group
//!   instead of creating a second one. To avoid needless PUTs, compare
//!   `spec().redacted()` of the translation and of the group read back.

use super::model::*;
use super::{AciError, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME, TAG_POD_UID};
use crate::decision::aci_size::{Declared, MEMORY_STEP_BYTES, aci_cpu_millis, aci_memory_bytes};
use crate::policy::{AciResources, AciSettings, PublicIp, render_dns_label};
use crate::provider::resolve::expand_vars;
use crate::units::{Resources, parse_cpu_millis, parse_memory_bytes};
use base64::Engine as _;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub mod network;
pub use network::{REASON_DNS_LABEL_IGNORED, SUBNET_DELEGATION, SubnetId};
pub mod dns;

/// Annotation that sets the public IP's DNS name label (as the AKS virtual node).
pub const DNS_LABEL_ANNOTATION: &str = "virtualkubelet.io/dnsnamelabel";
/// ACI's limit on container group and DNS label names.
pub const MAX_NAME_LEN: usize = 63;

/// Why a pod cannot become a container group. Each names the pod field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The pod asks for something ACI cannot do, or is malformed.
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },
    /// The pod references something the caller was to resolve and did not.
    #[error("{field}: {what} was not resolved")]
    Unresolved { field: String, what: String },
}

impl TranslateError {
    pub fn field(&self) -> &str {
        match self {
            TranslateError::InvalidSpec { field, .. }
            | TranslateError::Unresolved { field, .. } => field,
        }
    }
}

impl From<TranslateError> for AciError {
    fn from(e: TranslateError) -> Self {
        AciError::InvalidSpec {
            message: e.to_string(),
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// Process-wide translation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateConfig {
    pub cluster_id: String,
    pub location: String,
    /// Largest group ACI will run, summed over containers (ACI standard: 4 vCPU).
    pub max_cpu_millis: u64,
    /// Largest group memory in bytes (ACI standard: 16 GB).
    pub max_memory_bytes: u64,
    /// Public ports ACI allows on one IP.
    pub max_public_ports: usize,
    /// Delegated subnets groups go to (`--aci-subnet-id`); see [`network`].
    pub subnets: Vec<SubnetId>,
    /// The kubelet's `--cluster-domain`: DNS search paths of `ClusterFirst`
    /// pods (default `cluster.local`).
    pub cluster_domain: String,
    /// The operating system of the virtual node the pod is bound to
    /// (`linux` or `windows`; the provider's node): the group's `osType`.
    /// `None` (`spillway aci render`): the pod's own `kubernetes.io/os`
    /// selector or `spec.os` decides.
    pub node_os: Option<String>,
}

impl TranslateConfig {
    pub fn new(cluster_id: impl Into<String>, location: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            location: location.into(),
            max_cpu_millis: 4000,
            max_memory_bytes: 16_000_000_000,
            max_public_ports: 5,
            subnets: Vec::new(),
            cluster_domain: dns::DEFAULT_CLUSTER_DOMAIN.to_string(),
            node_os: None,
        }
    }
}

/// A value resolved from a ConfigMap, Secret or the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    /// Sent as `secureValue`.
    Secret(String),
    /// An `optional` reference whose ConfigMap/Secret or key is missing:
    /// as in Kubernetes, the variable is left out (an earlier definition of
    /// the same name, e.g. from `envFrom`, stays).
    Absent,
}

/// Azure Files credentials from the Secret a volume names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureFileCredential {
    pub account_name: String,
    pub account_key: String,
}

/// Everything the caller looked up for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// container name → env var name → value, for every `env[].valueFrom`
    /// the caller resolved (`fieldRef` to `metadata.*` is resolved here if absent).
    pub env: BTreeMap<String, BTreeMap<String, EnvValue>>,
    /// container name → variables produced by `envFrom` (prefix applied), in order.
    pub env_from: BTreeMap<String, Vec<(String, EnvValue)>>,
    /// volume name → file name → content, for secret, configMap, projected and
    /// downwardAPI volumes.
    pub volume_files: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Secret name → Azure Files account, for `azureFile` and
    /// `file.csi.azure.com` volumes.
    pub azure_file_credentials: BTreeMap<String, AzureFileCredential>,
    /// `imagePullSecrets`, resolved to registry credentials.
    pub registry_credentials: Vec<ImageRegistryCredential>,
    /// image → ENTRYPOINT, when known (see the module doc on `args`).
    pub image_entrypoints: BTreeMap<String, Vec<String>>,
    /// The cluster DNS Service's IPs (`--cluster-dns`, or the `kube-dns`
    /// Service's ClusterIP); empty when unknown ([`dns`]).
    pub cluster_dns: Vec<String>,
    /// The pod's service environment ([`dns::service_env`]), given to every
    /// container beneath its own variables.
    pub service_env: BTreeMap<String, String>,
    /// The Log Analytics workspace the group's logs go to
    /// (`--aci-log-analytics`), resolved from its Secret.
    pub log_analytics: Option<LogAnalytics>,
}

/// Inputs of [`pod_to_group`] besides the pod itself.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    pub config: &'a TranslateConfig,
    /// The `aci` section of the policy that selected the pod.
    pub aci: &'a AciSettings,
    pub resolved: &'a Resolved,
}

/// The cluster-independent name of a pod's group: `{namespace}-{name}`,
/// lowercased, limited to `[a-z0-9-]` without repeated or edge hyphens. When
/// that had to shorten or rewrite the name, a hash of `namespace/name` is
/// appended so distinct pods keep distinct names. (`a-b/c` and `a/b-c` still
/// meet; the provider checks the namespace/pod tags before adopting a group.)
///
/// Releases before cluster hashing named groups exactly this; it stays the
/// pod's identity in the creation marker annotation. Groups are now created
/// as [`group_name_in`].
pub fn group_name(namespace: &str, name: &str) -> String {
    shorten_label(
        &format!("{namespace}-{name}"),
        &format!("{namespace}/{name}"),
        MAX_NAME_LEN,
    )
}

/// Hex digits of the cluster hash in group names.
const CLUSTER_HASH_LEN: usize = 6;

/// Short stable hash of a cluster id (FNV-1a, 6 hex digits), the suffix of
/// every group name a cluster creates.
pub fn cluster_hash(cluster_id: &str) -> String {
    format!(
        "{:0width$x}",
        fnv1a64(cluster_id.as_bytes()) & 0xff_ffff,
        width = CLUSTER_HASH_LEN
    )
}

/// The name of pod `namespace/name`'s group in cluster `cluster_id`:
/// [`group_name`] (shortened, with its own hash, when it would not fit)
/// then `-` and [`cluster_hash`]. Two clusters sharing a resource group
/// name the same pod differently, so one never PUTs over the other's group.
/// Deterministic, at most 63 characters, `[a-z0-9-]`, starting and ending
/// with a letter or digit (ACI's rule for group names).
pub fn group_name_in(cluster_id: &str, namespace: &str, name: &str) -> String {
    let base = shorten_label(
        &format!("{namespace}-{name}"),
        &format!("{namespace}/{name}"),
        MAX_NAME_LEN - 1 - CLUSTER_HASH_LEN,
    );
    format!("{base}-{}", cluster_hash(cluster_id))
}

impl TranslateConfig {
    /// [`group_name_in`] for this cluster.
    pub fn group_name(&self, namespace: &str, name: &str) -> String {
        group_name_in(&self.cluster_id, namespace, name)
    }
}

/// Make `raw` a valid ACI name/DNS label of at most `max_len` characters,
/// hashing `identity` into a suffix when the result is not `raw` itself.
fn shorten_label(raw: &str, identity: &str, max_len: usize) -> String {
    let mut out = String::with_capacity(raw.len());
    for ch in raw.chars() {
        let c = match ch.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out == raw && out.len() <= max_len {
        return out;
    }
    let hash = format!("{:010x}", fnv1a64(identity.as_bytes()) & 0xff_ffff_ffff);
    let keep = max_len.saturating_sub(1 + hash.len());
    out.truncate(keep);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        hash
    } else {
        format!("{out}-{hash}")
    }
}

/// FNV-1a, 64 bit: stable across releases and platforms (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn is_valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Event reason: limits were lowered to the container group's total request.
pub const REASON_LIMITS_CLAMPED: &str = "LimitsClamped";
/// Event reason: the group's request was raised to cover a limit.
pub const REASON_REQUESTS_RAISED: &str = "RequestsRaised";

/// Something the translation changed in the pod's request that its owner
/// should hear about (the provider turns each into a pod Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateWarning {
    /// Event reason ([`REASON_LIMITS_CLAMPED`], [`REASON_REQUESTS_RAISED`]).
    pub reason: &'static str,
    pub message: String,
}

/// A pod's container group and what the translation had to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub group: ContainerGroup,
    pub warnings: Vec<TranslateWarning>,
}

/// Translate a pod bound to the virtual node into the container group to PUT
/// (see [`translate_pod`] for the warnings).
pub fn pod_to_group(
    pod: &k8s::Pod,
    ctx: &PodContext<'_>,
) -> Result<ContainerGroup, TranslateError> {
    translate_pod(pod, ctx).map(|t| t.group)
}

/// Translate a pod into its container group, with the warnings about what
/// ACI's rules made the translation change.
pub fn translate_pod(pod: &k8s::Pod, ctx: &PodContext<'_>) -> Result<Translation, TranslateError> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let pod_name = meta
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("metadata.name", "a pod needs a name"))?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec", "a pod needs a spec"))?;

    for (flag, field) in [
        (spec.host_network, "spec.hostNetwork"),
        (spec.host_pid, "spec.hostPID"),
        (spec.host_ipc, "spec.hostIPC"),
    ] {
        if flag == Some(true) {
            return Err(invalid(field, "host namespaces are not available on ACI"));
        }
    }
    if spec.containers.is_empty() {
        return Err(invalid(
            "spec.containers",
            "a pod needs at least one container",
        ));
    }

    let volumes = translate_volumes(spec, ctx.resolved)?;

    let mut containers = Vec::with_capacity(spec.containers.len());
    let mut total_cpu_millis = 0u64;
    let mut total_memory_bytes = 0u64;
    for (i, c) in spec.containers.iter().enumerate() {
        let (container, cpu, mem) = translate_container(pod, i, c, ctx)?;
        total_cpu_millis += cpu;
        total_memory_bytes += mem;
        containers.push(container);
    }
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| translate_init_container(pod, i, c, ctx))
        .collect::<Result<Vec<_>, _>>()?;

    let mut warnings: Vec<TranslateWarning> =
        apply_group_limit_rule(&mut containers, ctx.aci.resources)
            .into_iter()
            .collect();
    // Raised requests count against ACI's group maximum too.
    let total_cpu_millis = total_cpu_millis.max(
        containers
            .iter()
            .map(|c| centi(c.properties.resources.requests.cpu) * 10)
            .sum(),
    );
    let max = ctx.config;
    let total_cores = cores_from_millis(total_cpu_millis);
    let total_gb: f64 = containers
        .iter()
        .map(|c| deci(c.properties.resources.requests.memory_in_gb))
        .sum::<u64>() as f64
        / 10.0;
    if total_cpu_millis > max.max_cpu_millis {
        return Err(invalid(
            "spec.containers[*].resources.requests.cpu",
            format!(
                "the pod requests {total_cores} vCPU; an ACI container group allows at most {}",
                cores_from_millis(max.max_cpu_millis)
            ),
        ));
    }
    let max_gb = gb_from_bytes(max.max_memory_bytes);
    if total_memory_bytes > max.max_memory_bytes || total_gb > max_gb + 1e-9 {
        return Err(invalid(
            "spec.containers[*].resources.requests.memory",
            format!(
                "the pod requests {total_gb:.1} GB; an ACI container group allows at most {max_gb} GB"
            ),
        ));
    }

    let os_type = os_type(spec, ctx.config.node_os.as_deref())?;
    if os_type == "Windows" {
        // ACI runs multi-container groups and Azure Files mounts on Linux only.
        if containers.len() > 1 {
            return Err(invalid(
                "spec.containers",
                "ACI runs Windows container groups with a single container",
            ));
        }
        if let Some(i) = volumes.iter().position(|v| v.azure_file.is_some()) {
            return Err(invalid(
                format!("spec.volumes[{i}]"),
                "ACI mounts Azure Files in Linux container groups only",
            ));
        }
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => "Always",
        Some("OnFailure") => "OnFailure",
        Some("Never") => "Never",
        Some(other) => {
            return Err(invalid(
                "spec.restartPolicy",
                format!("unknown restart policy {other:?}"),
            ));
        }
    };

    let placement = network::placement(pod, namespace, pod_name, &containers, ctx)?;
    warnings.extend(placement.warnings);
    let (dns_config, dns_warnings) = dns::pod_dns_config(
        pod,
        namespace,
        &ctx.resolved.cluster_dns,
        &ctx.config.cluster_domain,
        os_type,
    )
    .map_err(|(field, message)| invalid(field, message))?;
    let warnings: Vec<TranslateWarning> = warnings.into_iter().chain(dns_warnings).collect();

    let mut tags = BTreeMap::new();
    tags.insert(TAG_CLUSTER.to_string(), ctx.config.cluster_id.clone());
    tags.insert(TAG_NAMESPACE.to_string(), namespace.to_string());
    tags.insert(TAG_POD_NAME.to_string(), pod_name.to_string());
    if let Some(uid) = &meta.uid {
        tags.insert(TAG_POD_UID.to_string(), uid.clone());
    }

    let diagnostics = ctx
        .resolved
        .log_analytics
        .clone()
        .map(|la| ContainerGroupDiagnostics {
            log_analytics: Some(la),
        });
    let group = ContainerGroup {
        id: None,
        name: ctx.config.group_name(namespace, pod_name),
        resource_type: None,
        location: ctx.config.location.clone(),
        tags,
        properties: ContainerGroupProperties {
            provisioning_state: None,
            containers,
            init_containers,
            image_registry_credentials: ctx.resolved.registry_credentials.clone(),
            restart_policy: Some(restart_policy.to_string()),
            ip_address: placement.ip_address,
            os_type: os_type.to_string(),
            volumes,
            sku: Some("Standard".to_string()),
            subnet_ids: placement.subnet_ids,
            dns_config,
            diagnostics,
            instance_view: None,
        },
    };
    Ok(Translation { group, warnings })
}

/// Cores → hundredths of a core (ACI's CPU granularity).
fn centi(cores: f64) -> u64 {
    (cores * 100.0).round().max(0.0) as u64
}

/// GB → tenths of a GB (ACI's memory granularity).
fn deci(gb: f64) -> u64 {
    (gb * 10.0).round().max(0.0) as u64
}

/// ACI refuses a container whose limit is above the group's total request
/// (`ContainerLimitGreaterThanContainerGroupTotalRequest`): a Kubernetes
/// limit bounds one container, an ACI limit is a share of what the group
/// requested. Per resource, either lower such limits to the total request
/// ([`AciResources::ClampLimits`]) or raise the request of the container
/// with the largest limit until the total covers it
/// ([`AciResources::RaiseRequests`]; that container's request stays within
/// its limit). Works in ACI's units (0.01 core, 0.1 GB), so sums are exact.
/// Returns what changed, for an Event.
fn apply_group_limit_rule(
    containers: &mut [Container],
    mode: AciResources,
) -> Option<TranslateWarning> {
    struct Kind {
        name: &'static str,
        unit: &'static str,
        scale: f64,
        get: fn(&ResourceSpec) -> f64,
        set: fn(&mut ResourceSpec, f64),
    }
    let kinds = [
        Kind {
            name: "cpu",
            unit: "",
            scale: 100.0,
            get: |r| r.cpu,
            set: |r, v| r.cpu = v,
        },
        Kind {
            name: "memory",
            unit: " GB",
            scale: 10.0,
            get: |r| r.memory_in_gb,
            set: |r, v| r.memory_in_gb = v,
        },
    ];
    let units = |v: f64, k: &Kind| (v * k.scale).round().max(0.0) as u64;
    let show = |u: u64, k: &Kind| format!("{}{}", u as f64 / k.scale, k.unit);
    let mut changes = Vec::new();
    for k in &kinds {
        let total: u64 = containers
            .iter()
            .map(|c| units((k.get)(&c.properties.resources.requests), k))
            .sum();
        let largest = containers
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let limit = c.properties.resources.limits.as_ref()?;
                Some((units((k.get)(limit), k), i))
            })
            .max_by_key(|(limit, i)| (*limit, std::cmp::Reverse(*i)));
        let Some((max_limit, at)) = largest.filter(|(l, _)| *l > total) else {
            continue;
        };
        match mode {
            AciResources::ClampLimits => {
                for c in containers.iter_mut() {
                    let Some(limit) = c.properties.resources.limits.as_mut() else {
                        continue;
                    };
                    let was = units((k.get)(limit), k);
                    if was > total {
                        (k.set)(limit, total as f64 / k.scale);
                        changes.push(format!(
                            "{} {} limit {} → {}",
                            c.name,
                            k.name,
                            show(was, k),
                            show(total, k)
                        ));
                    }
                }
            }
            AciResources::RaiseRequests => {
                let c = &mut containers[at];
                let requests = &mut c.properties.resources.requests;
                let was = units((k.get)(requests), k);
                let now = was + (max_limit - total);
                (k.set)(requests, now as f64 / k.scale);
                changes.push(format!(
                    "{} {} request {} → {} (group {} → {})",
                    c.name,
                    k.name,
                    show(was, k),
                    show(now, k),
                    show(total, k),
                    show(max_limit, k)
                ));
            }
        }
    }
    if changes.is_empty() {
        return None;
    }
    Some(match mode {
        AciResources::ClampLimits => TranslateWarning {
            reason: REASON_LIMITS_CLAMPED,
            message: format!(
                "ACI allows no container limit above the container group's total request; \
                 limits lowered to it: {} (policy aci.resources: raise-requests raises the request instead)",
                changes.join(", ")
            ),
        },
        AciResources::RaiseRequests => TranslateWarning {
            reason: REASON_REQUESTS_RAISED,
            message: format!(
                "ACI allows no container limit above the container group's total request; \
                 request raised to cover the limits (aci.resources: raise-requests; ACI bills the larger request): {}",
                changes.join(", ")
            ),
        },
    })
}

/// The group's `osType`: the bound node's OS when known, else the pod's
/// `kubernetes.io/os` selector or `spec.os.name` (Linux when neither says).
/// A pod asking for one OS is never made a group of the other: the
/// provider's admission ([`crate::provider::node::admit`]) fails such a pod
/// first, as the kubelet does; this is the translation's own guard.
fn os_type(spec: &k8s::PodSpec, node_os: Option<&str>) -> Result<&'static str, TranslateError> {
    let (field, os) = match spec
        .node_selector
        .as_ref()
        .and_then(|s| s.get("kubernetes.io/os"))
    {
        Some(os) => ("spec.nodeSelector[kubernetes.io/os]", Some(os.as_str())),
        None => ("spec.os.name", spec.os.as_ref().map(|o| o.name.as_str())),
    };
    let of = |os: &str| match os {
        "linux" => Ok("Linux"),
        "windows" => Ok("Windows"),
        other => Err(other.to_string()),
    };
    let wanted = match os.map(of) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(other)) => {
            return Err(invalid(
                field,
                format!("ACI runs linux or windows, not {other:?}"),
            ));
        }
    };
    let Some(node_os) = node_os else {
        return Ok(wanted.unwrap_or("Linux"));
    };
    let node_type = of(node_os).map_err(|other| {
        invalid(
            "spec.nodeName",
            format!("the virtual node runs {other:?}; ACI runs linux or windows"),
        )
    })?;
    match wanted {
        Some(w) if w != node_type => Err(invalid(
            field,
            format!(
                "the pod asks for {}, but it is bound to the {node_os} virtual node",
                os.unwrap_or_default()
            ),
        )),
        _ => Ok(node_type),
    }
}

/// ACI takes CPU in multiples of 0.01 core: round millicores up to that.
fn cores_from_millis(millis: u64) -> f64 {
    aci_cpu_millis(millis) as f64 / 1000.0
}

/// ACI takes memory in multiples of 0.1 GB (10^8 bytes): round up.
fn gb_from_bytes(bytes: u64) -> f64 {
    (aci_memory_bytes(bytes) / MEMORY_STEP_BYTES) as f64 / 10.0
}

type QuantityMap = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

fn quantity<'a>(
    rr: Option<&'a k8s::ResourceRequirements>,
    which: fn(&k8s::ResourceRequirements) -> Option<&QuantityMap>,
    name: &str,
) -> Option<&'a str> {
    rr.and_then(which)
        .and_then(|m| m.get(name))
        .map(|q| q.0.as_str())
}

struct ContainerResources {
    spec: ResourceRequirements,
    cpu_millis: u64,
    memory_bytes: u64,
}

fn translate_resources(
    field: &str,
    rr: Option<&k8s::ResourceRequirements>,
) -> Result<ContainerResources, TranslateError> {
    fn requests(r: &k8s::ResourceRequirements) -> Option<&QuantityMap> {
        r.requests.as_ref()
    }
    fn limits(r: &k8s::ResourceRequirements) -> Option<&QuantityMap> {
        r.limits.as_ref()
    }
    for (kind, map) in [
        ("requests", rr.and_then(requests)),
        ("limits", rr.and_then(limits)),
    ] {
        for key in map.into_iter().flat_map(|m| m.keys()) {
            if !matches!(key.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                return Err(invalid(
                    format!("{field}.resources.{kind}[{key}]"),
                    "ACI offers only cpu and memory",
                ));
            }
        }
    }
    let parsed = |kind: &str, name: &str| -> Result<Option<u64>, TranslateError> {
        let map = if kind == "limits" { limits } else { requests };
        let Some(q) = quantity(rr, map, name) else {
            return Ok(None);
        };
        let parse = if name == "cpu" {
            parse_cpu_millis
        } else {
            parse_memory_bytes
        };
        parse(q)
            .map(Some)
            .map_err(|e| invalid(format!("{field}.resources.{kind}.{name}"), e))
    };
    let declared = Declared {
        cpu_request: parsed("requests", "cpu")?,
        memory_request: parsed("requests", "memory")?,
        cpu_limit: parsed("limits", "cpu")?,
        memory_limit: parsed("limits", "memory")?,
    };
    // Requests default to limits (as the API server does for pods that did
    // not come through it), else to azure-aci's defaults (`aci_size`).
    let wanted = declared.aci_requests();
    let Resources {
        cpu_millis: cpu,
        memory_bytes: mem,
    } = declared.group_requests();
    if declared.cpu_limit.is_some_and(|l| l < cpu) {
        return Err(invalid(
            format!("{field}.resources.limits.cpu"),
            "limit is below the request",
        ));
    }
    if declared.memory_limit.is_some_and(|l| l < mem) {
        return Err(invalid(
            format!("{field}.resources.limits.memory"),
            "limit is below the request",
        ));
    }
    let requests = ResourceSpec {
        cpu: wanted.cpu_millis as f64 / 1000.0,
        memory_in_gb: gb_from_bytes(wanted.memory_bytes),
    };
    let limits =
        (declared.cpu_limit.is_some() || declared.memory_limit.is_some()).then(|| ResourceSpec {
            cpu: declared
                .cpu_limit
                .map(cores_from_millis)
                .unwrap_or(requests.cpu),
            memory_in_gb: declared
                .memory_limit
                .map(gb_from_bytes)
                .unwrap_or(requests.memory_in_gb),
        });
    Ok(ContainerResources {
        spec: ResourceRequirements { requests, limits },
        cpu_millis: cpu,
        memory_bytes: mem,
    })
}

fn translate_command(
    field: &str,
    c: &k8s::Container,
    resolved: &Resolved,
) -> Result<Vec<String>, TranslateError> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    if !command.is_empty() || args.is_empty() {
        return Ok(command.into_iter().chain(args).collect());
    }
    let image = c.image.as_deref().unwrap_or_default();
    match resolved.image_entrypoints.get(image) {
        Some(entrypoint) if !entrypoint.is_empty() => {
            Ok(entrypoint.iter().cloned().chain(args).collect())
        }
        _ => Err(invalid(
            format!("{field}.args"),
            format!(
                "ACI cannot keep the ENTRYPOINT of image {image:?} while replacing its arguments; \
                 set `command` as well"
            ),
        )),
    }
}

fn translate_env(
    pod: &k8s::Pod,
    field: &str,
    c: &k8s::Container,
    resolved: &Resolved,
) -> Result<Vec<EnvironmentVariable>, TranslateError> {
    let mut out: Vec<EnvironmentVariable> = Vec::new();
    fn set(out: &mut Vec<EnvironmentVariable>, name: &str, value: EnvValue) {
        let var = match value {
            EnvValue::Plain(v) => EnvironmentVariable {
                name: name.to_string(),
                value: Some(v),
                secure_value: None,
            },
            EnvValue::Secret(v) => EnvironmentVariable {
                name: name.to_string(),
                value: None,
                secure_value: Some(v),
            },
            EnvValue::Absent => return,
        };
        // Later definitions win, as in Kubernetes; the first position is kept.
        match out.iter_mut().find(|e| e.name == name) {
            Some(existing) => *existing = var,
            None => out.push(var),
        }
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        let from = resolved
            .env_from
            .get(&c.name)
            .ok_or_else(|| TranslateError::Unresolved {
                field: format!("{field}.envFrom"),
                what: "the ConfigMaps/Secrets it names".to_string(),
            })?;
        for (name, value) in from {
            set(&mut out, name, value.clone());
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let efield = format!("{field}.env[{j}]");
        match (&e.value, &e.value_from) {
            (_, Some(source)) => {
                // The pod's and host's IPs exist only once ACI has created
                // the group, after the environment is fixed.
                if let Some(path) = source
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .filter(|p| {
                        matches!(
                            *p,
                            "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs"
                        )
                    })
                {
                    return Err(invalid(
                        format!("{efield}.valueFrom.fieldRef.fieldPath"),
                        format!(
                            "{path} is not known before ACI creates the container group (ACI assigns the IP when it starts the group, after the environment is set); read the address inside the container instead"
                        ),
                    ));
                }
                let value = resolved
                    .env
                    .get(&c.name)
                    .and_then(|m| m.get(&e.name))
                    .cloned()
                    .or_else(|| field_ref_value(pod, source))
                    .ok_or_else(|| TranslateError::Unresolved {
                        field: format!("{efield}.valueFrom"),
                        what: format!("the value of {:?}", e.name),
                    })?;
                set(&mut out, &e.name, value);
            }
            (Some(v), None) => {
                // `$(VAR)` may refer to variables defined earlier in the list.
                let mut secret = false;
                let expanded = expand_vars(v, |name| {
                    // Then the service variables, as the kubelet's mapping.
                    let Some(e) = out.iter().find(|e| e.name == name) else {
                        return resolved.service_env.get(name).map(String::as_str);
                    };
                    // A value built from a secret stays secret.
                    secret |= e.secure_value.is_some();
                    Some(
                        e.secure_value
                            .as_deref()
                            .or(e.value.as_deref())
                            .unwrap_or_default(),
                    )
                });
                set(
                    &mut out,
                    &e.name,
                    if secret {
                        EnvValue::Secret(expanded)
                    } else {
                        EnvValue::Plain(expanded)
                    },
                );
            }
            (None, None) => set(&mut out, &e.name, EnvValue::Plain(String::new())),
        }
    }
    // The service variables the container does not define itself.
    for (name, value) in &resolved.service_env {
        if !out.iter().any(|e| &e.name == name) {
            out.push(EnvironmentVariable {
                name: name.clone(),
                value: Some(value.clone()),
                secure_value: None,
            });
        }
    }
    Ok(out)
}

/// The downward-API values that need only the pod object.
fn field_ref_value(pod: &k8s::Pod, source: &k8s::EnvVarSource) -> Option<EnvValue> {
    let path = source.field_ref.as_ref()?.field_path.as_str();
    let m = &pod.metadata;
    let value = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        _ => {
            let key = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(str::to_string)
            };
            if let Some(k) = key("metadata.labels['") {
                m.labels.as_ref().and_then(|l| l.get(&k).cloned())
            } else if let Some(k) = key("metadata.annotations['") {
                m.annotations.as_ref().and_then(|a| a.get(&k).cloned())
            } else {
                None
            }
        }
    };
    value.map(EnvValue::Plain)
}

fn translate_mounts(field: &str, c: &k8s::Container) -> Result<Vec<VolumeMount>, TranslateError> {
    c.volume_mounts
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, m)| {
            if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
                || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
            {
                return Err(invalid(
                    format!("{field}.volumeMounts[{j}].subPath"),
                    "ACI mounts whole volumes only",
                ));
            }
            Ok(VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only.filter(|r| *r),
            })
        })
        .collect()
}

fn translate_container(
    pod: &k8s::Pod,
    i: usize,
    c: &k8s::Container,
    ctx: &PodContext<'_>,
) -> Result<(Container, u64, u64), TranslateError> {
    let field = format!("spec.containers[{i}]");
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid(format!("{field}.image"), "an image is required"))?;
    if c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
    {
        return Err(invalid(
            format!("{field}.securityContext.privileged"),
            "ACI does not run privileged containers",
        ));
    }
    if c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some()) {
        return Err(invalid(
            format!("{field}.lifecycle.postStart"),
            "ACI runs no lifecycle hooks",
        ));
    }
    let mut ports = Vec::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => "TCP",
            Some("UDP") => "UDP",
            Some(other) => {
                return Err(invalid(
                    format!("{field}.ports[{j}].protocol"),
                    format!("ACI supports TCP and UDP, not {other}"),
                ));
            }
        };
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("{field}.ports[{j}].containerPort"), "out of range"))?;
        ports.push(ContainerPort {
            protocol: Some(protocol.to_string()),
            port,
        });
    }
    let resources = translate_resources(&field, c.resources.as_ref())?;
    let startup_delay = c.startup_probe.as_ref().map(|p| {
        p.initial_delay_seconds.unwrap_or(0)
            + p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3)
    });
    let mut liveness_probe = c
        .liveness_probe
        .as_ref()
        .map(|p| translate_probe(&format!("{field}.livenessProbe"), p, c))
        .transpose()?;
    if let (Some(p), Some(extra)) = (&mut liveness_probe, startup_delay) {
        p.initial_delay_seconds = Some(p.initial_delay_seconds.unwrap_or(0) + extra);
    }
    // Readiness is probed by spillway (`crate::provider::probe`); ACI gets
    // the probes it can express.
    let readiness_probe = c
        .readiness_probe
        .as_ref()
        .filter(|p| p.tcp_socket.is_none() && p.grpc.is_none())
        .map(|p| translate_probe(&format!("{field}.readinessProbe"), p, c))
        .transpose()?;
    let env = translate_env(pod, &field, c, ctx.resolved)?;
    let container = Container {
        name: c.name.clone(),
        properties: ContainerProperties {
            image,
            command: expand_command(translate_command(&field, c, ctx.resolved)?, &env),
            ports,
            environment_variables: env,
            resources: resources.spec,
            volume_mounts: translate_mounts(&field, c)?,
            liveness_probe,
            readiness_probe,
            instance_view: None,
        },
    };
    Ok((container, resources.cpu_millis, resources.memory_bytes))
}

fn translate_init_container(
    pod: &k8s::Pod,
    i: usize,
    c: &k8s::Container,
    ctx: &PodContext<'_>,
) -> Result<InitContainer, TranslateError> {
    let field = format!("spec.initContainers[{i}]");
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid(format!("{field}.image"), "an image is required"))?;
    if c.restart_policy.as_deref() == Some("Always") {
        return Err(invalid(
            format!("{field}.restartPolicy"),
            "ACI has no sidecar containers (init containers with restartPolicy: Always)",
        ));
    }
    if c.ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            format!("{field}.ports"),
            "ACI init containers have no ports",
        ));
    }
    for (probe, name) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        if probe.is_some() {
            return Err(invalid(
                format!("{field}.{name}"),
                "ACI init containers have no probes",
            ));
        }
    }
    if c.lifecycle.is_some() {
        return Err(invalid(
            format!("{field}.lifecycle"),
            "ACI runs no lifecycle hooks",
        ));
    }
    if c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
    {
        return Err(invalid(
            format!("{field}.securityContext.privileged"),
            "ACI does not run privileged containers",
        ));
    }
    let env = translate_env(pod, &field, c, ctx.resolved)?;
    Ok(InitContainer {
        name: c.name.clone(),
        properties: InitContainerProperties {
            image,
            command: expand_command(translate_command(&field, c, ctx.resolved)?, &env),
            environment_variables: env,
            volume_mounts: translate_mounts(&field, c)?,
            instance_view: None,
        },
    })
}

/// `$(VAR)` in command and args refers to the container's environment.
fn expand_command(command: Vec<String>, env: &[EnvironmentVariable]) -> Vec<String> {
    let lookup = |name: &str| {
        let e = env.iter().find(|e| e.name == name)?;
        Some(
            e.secure_value
                .as_deref()
                .or(e.value.as_deref())
                .unwrap_or_default(),
        )
    };
    command.iter().map(|arg| expand_vars(arg, lookup)).collect()
}

fn translate_probe(
    field: &str,
    p: &k8s::Probe,
    c: &k8s::Container,
) -> Result<Probe, TranslateError> {
    let mut out = Probe {
        exec: None,
        http_get: None,
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        timeout_seconds: p.timeout_seconds,
    };
    if let Some(exec) = &p.exec {
        out.exec = Some(ExecProbe {
            command: exec.command.clone().unwrap_or_default(),
        });
    } else if let Some(h) = &p.http_get {
        let port = match &h.port {
            IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
        .ok_or_else(|| {
            invalid(
                format!("{field}.httpGet.port"),
                "not a port number or a declared port name",
            )
        })?;
        if h.host.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(invalid(
                format!("{field}.httpGet.host"),
                "ACI probes the container itself",
            ));
        }
        out.http_get = Some(HttpGetProbe {
            path: h.path.clone(),
            port,
            scheme: h.scheme.as_deref().map(str::to_ascii_lowercase),
            http_headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| HttpHeader {
                    name: hh.name.clone(),
                    value: hh.value.clone(),
                })
                .collect(),
        });
    } else if p.tcp_socket.is_some() {
        return Err(invalid(
            format!("{field}.tcpSocket"),
            "ACI probes are exec or httpGet only",
        ));
    } else if p.grpc.is_some() {
        return Err(invalid(
            format!("{field}.grpc"),
            "ACI probes are exec or httpGet only",
        ));
    } else {
        return Err(invalid(field, "a probe needs a handler"));
    }
    Ok(out)
}

fn translate_volumes(
    spec: &k8s::PodSpec,
    resolved: &Resolved,
) -> Result<Vec<Volume>, TranslateError> {
    let mut out = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let mut vol = Volume {
            name: v.name.clone(),
            ..Default::default()
        };
        let files =
            |kind: &str| -> Result<BTreeMap<String, String>, TranslateError> {
                let files = resolved.volume_files.get(&v.name).ok_or_else(|| {
                    TranslateError::Unresolved {
                        field: format!("{field}.{kind}"),
                        what: format!("the contents of volume {:?}", v.name),
                    }
                })?;
                Ok(files
                    .iter()
                    .map(|(k, bytes)| {
                        (
                            k.clone(),
                            base64::engine::general_purpose::STANDARD.encode(bytes),
                        )
                    })
                    .collect())
            };
        let azure_file = |share: &str, secret: &str, read_only: Option<bool>, kind: &str| {
            let cred = resolved.azure_file_credentials.get(secret).ok_or_else(|| {
                TranslateError::Unresolved {
                    field: format!("{field}.{kind}"),
                    what: format!("the storage account in Secret {secret:?}"),
                }
            })?;
            Ok::<_, TranslateError>(AzureFileVolume {
                share_name: share.to_string(),
                storage_account_name: cred.account_name.clone(),
                storage_account_key: Some(cred.account_key.clone()),
                read_only: read_only.filter(|r| *r),
            })
        };
        if v.empty_dir.is_some() {
            vol.empty_dir = Some(EmptyDir {});
        } else if v.secret.is_some() {
            vol.secret = Some(files("secret")?);
        } else if v.config_map.is_some() {
            vol.secret = Some(files("configMap")?);
        } else if v.projected.is_some() {
            vol.secret = Some(files("projected")?);
        } else if v.downward_api.is_some() {
            vol.secret = Some(files("downwardAPI")?);
        } else if let Some(af) = &v.azure_file {
            vol.azure_file = Some(azure_file(
                &af.share_name,
                &af.secret_name,
                af.read_only,
                "azureFile",
            )?);
        } else if let Some(csi) = &v.csi {
            if csi.driver != "file.csi.azure.com" {
                return Err(invalid(
                    format!("{field}.csi.driver"),
                    format!(
                        "ACI mounts only Azure Files (file.csi.azure.com), not {:?}",
                        csi.driver
                    ),
                ));
            }
            let attrs = csi.volume_attributes.clone().unwrap_or_default();
            let share = attrs.get("shareName").ok_or_else(|| {
                invalid(
                    format!("{field}.csi.volumeAttributes.shareName"),
                    "required",
                )
            })?;
            let secret = attrs
                .get("secretName")
                .cloned()
                .or_else(|| csi.node_publish_secret_ref.as_ref().map(|r| r.name.clone()))
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.csi.volumeAttributes.secretName"),
                        "required",
                    )
                })?;
            vol.azure_file = Some(azure_file(share, &secret, csi.read_only, "csi")?);
        } else {
            let kind = if v.host_path.is_some() {
                "hostPath"
            } else if v.persistent_volume_claim.is_some() {
                "persistentVolumeClaim"
            } else if v.ephemeral.is_some() {
                "ephemeral"
            } else {
                "source"
            };
            return Err(invalid(
                format!("{field}.{kind}"),
                format!(
                    "volume {:?}: ACI supports emptyDir, secret, configMap, projected, downwardAPI and Azure Files volumes",
                    v.name
                ),
            ));
        }
        out.push(vol);
    }
    Ok(out)
}

fn public_ip(
    pod: &k8s::Pod,
    namespace: &str,
    pod_name: &str,
    containers: &[Container],
    ctx: &PodContext<'_>,
) -> Result<Option<IpAddress>, TranslateError> {
    let mut ports: Vec<IpPort> = Vec::new();
    for c in containers {
        for p in &c.properties.ports {
            let ip_port = IpPort {
                protocol: p.protocol.clone(),
                port: p.port,
            };
            if !ports.contains(&ip_port) {
                ports.push(ip_port);
            }
        }
    }
    match ctx.aci.public_ip {
        PublicIp::Never => return Ok(None),
        PublicIp::Auto if ports.is_empty() => return Ok(None),
        PublicIp::Always if ports.is_empty() => {
            return Err(invalid(
                "spec.containers[*].ports",
                "the policy asks for a public IP (publicIp: always) but no container declares a port",
            ));
        }
        _ => {}
    }
    if ports.len() > ctx.config.max_public_ports {
        return Err(invalid(
            "spec.containers[*].ports",
            format!(
                "{} distinct ports; an ACI public IP exposes at most {}",
                ports.len(),
                ctx.config.max_public_ports
            ),
        ));
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DNS_LABEL_ANNOTATION))
        .filter(|s| !s.is_empty());
    let dns_name_label = match (annotation, &ctx.aci.dns_name_label) {
        (Some(label), _) => {
            if !is_valid_label(label) {
                return Err(invalid(
                    format!("metadata.annotations[{DNS_LABEL_ANNOTATION}]"),
                    format!(
                        "{label:?} is not a DNS label (lowercase letters, digits, '-', at most 63)"
                    ),
                ));
            }
            Some(label.clone())
        }
        (None, Some(template)) => {
            let rendered = render_dns_label(template, namespace, pod_name);
            Some(shorten_label(&rendered, &rendered, MAX_NAME_LEN))
        }
        (None, None) => None,
    };
    Ok(Some(IpAddress {
        ip_type: "Public".to_string(),
        ports,
        ip: None,
        dns_name_label,
        fqdn: None,
    }))
}

// ---------------------------------------------------------------------------
// Container group → pod status

fn time(s: Option<&str>) -> Option<Time> {
    s.and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(Time)
}

/// The state that decides the pod phase: the provisioning state until it is
/// `Succeeded`, then the instance view's state (as azure-aci does).
pub fn effective_state(group: &ContainerGroup) -> &str {
    let p = &group.properties;
    match p.provisioning_state.as_deref() {
        Some("Succeeded") | None => p
            .instance_view
            .as_ref()
            .and_then(|v| v.state.as_deref())
            .unwrap_or("Pending"),
        Some(other) => other,
    }
}

/// Pod phase for an ACI state.
pub fn phase_for_state(state: &str) -> &'static str {
    match state {
        "Running" => "Running",
        "Succeeded" => "Succeeded",
        "Failed" | "Canceled" | "Stopped" => "Failed",
        "Accepted" | "Creating" | "Repairing" | "Pending" | "Updating" => "Pending",
        _ => "Unknown",
    }
}

fn container_state(cs: &ContainerState, group_running: bool) -> k8s::ContainerState {
    let detail = cs.detail_status.clone().filter(|d| !d.is_empty());
    match cs.state.as_str() {
        "Running" => k8s::ContainerState {
            running: Some(k8s::ContainerStateRunning {
                started_at: time(cs.start_time.as_deref()),
            }),
            ..Default::default()
        },
        "Terminated" | "Succeeded" | "Failed" | "Canceled" => {
            let failed = matches!(cs.state.as_str(), "Failed" | "Canceled");
            let exit_code = cs.exit_code.unwrap_or(if failed { 1 } else { 0 });
            // ACI says an OOM kill in the detail status (as the kubelet's
            // reason `OOMKilled`, exit code 137).
            let oom = detail
                .as_deref()
                .is_some_and(|d| d.starts_with("OOMKilled"));
            let reason = match (cs.state.as_str(), exit_code) {
                ("Canceled", _) => "Canceled",
                _ if oom => "OOMKilled",
                (_, 0) => "Completed",
                _ => "Error",
            };
            k8s::ContainerState {
                terminated: Some(k8s::ContainerStateTerminated {
                    exit_code,
                    reason: Some(reason.to_string()),
                    message: detail,
                    started_at: time(cs.start_time.as_deref()),
                    finished_at: time(cs.finish_time.as_deref()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        other => {
            // ACI's detail status often starts with a Kubernetes-style reason
            // ("CrashLoopBackOff: ...", "ErrImagePull"); keep it when it does.
            let from_detail = detail.as_deref().and_then(|d| {
                let head = d.split([':', ' ']).next().unwrap_or_default();
                (head.len() > 2
                    && head.starts_with(|c: char| c.is_ascii_uppercase())
                    && head.chars().all(|c| c.is_ascii_alphanumeric()))
                .then(|| head.to_string())
            });
            let reason = from_detail.unwrap_or_else(|| {
                if group_running || other.is_empty() || other == "Waiting" {
                    "ContainerCreating".to_string()
                } else {
                    other.to_string()
                }
            });
            k8s::ContainerState {
                waiting: Some(k8s::ContainerStateWaiting {
                    reason: Some(reason),
                    message: detail,
                }),
                ..Default::default()
            }
        }
    }
}

fn waiting(reason: &str) -> k8s::ContainerState {
    k8s::ContainerState {
        waiting: Some(k8s::ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: None,
        }),
        ..Default::default()
    }
}

fn container_status(
    group: &ContainerGroup,
    name: &str,
    image: &str,
    view: Option<&ContainerInstanceView>,
    phase: &str,
) -> k8s::ContainerStatus {
    let state = view
        .and_then(|v| v.current_state.as_ref())
        .map(|s| container_state(s, phase == "Running"))
        .unwrap_or_else(|| waiting("ContainerCreating"));
    let running = state.running.is_some();
    k8s::ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: String::new(),
        container_id: Some(format!("aci://{}/{}", group.name, name)),
        ready: running && phase == "Running",
        started: Some(running),
        restart_count: view.map(|v| v.restart_count).unwrap_or(0),
        last_state: view
            .and_then(|v| v.previous_state.as_ref())
            .filter(|s| !s.state.is_empty())
            .map(|s| container_state(s, false)),
        state: Some(state),
        ..Default::default()
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>) -> k8s::PodCondition {
    k8s::PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        ..Default::default()
    }
}

/// Whether `group` carries the instance views that [`pod_status_from_group`]
/// needs. ARM's *list* answers omit them (a listed group that finished
/// provisioning would look `Pending`): GET such groups before mapping.
pub fn has_instance_view(group: &ContainerGroup) -> bool {
    group.properties.instance_view.is_some()
        || group
            .properties
            .containers
            .iter()
            .any(|c| c.properties.instance_view.is_some())
}

/// Map a container group (as read from ARM with GET; see
/// [`has_instance_view`]) to the pod status the virtual node reports, with
/// readable reasons. `hostIP` is left to the provider.
pub fn pod_status_from_group(group: &ContainerGroup) -> k8s::PodStatus {
    let state = effective_state(group);
    let phase = phase_for_state(state);
    let p = &group.properties;

    let container_statuses: Vec<k8s::ContainerStatus> = p
        .containers
        .iter()
        .map(|c| {
            container_status(
                group,
                &c.name,
                &c.properties.image,
                c.properties.instance_view.as_ref(),
                phase,
            )
        })
        .collect();
    let init_statuses: Vec<k8s::ContainerStatus> = p
        .init_containers
        .iter()
        .map(|c| {
            let mut s = container_status(
                group,
                &c.name,
                &c.properties.image,
                c.properties.instance_view.as_ref(),
                phase,
            );
            s.ready = s
                .state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            s
        })
        .collect();

    let all_running = !container_statuses.is_empty()
        && container_statuses
            .iter()
            .all(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
    let ready = phase == "Running" && all_running;
    let initialized = init_statuses.iter().all(|s| s.ready)
        && matches!(phase, "Running" | "Succeeded" | "Failed");

    let detail = p
        .instance_view
        .as_ref()
        .and_then(|v| v.events.last())
        .and_then(|e| e.message.clone())
        .or_else(|| {
            p.containers
                .iter()
                .filter_map(|c| c.properties.instance_view.as_ref())
                .filter_map(|v| v.current_state.as_ref())
                .find_map(|s| s.detail_status.clone().filter(|d| !d.is_empty()))
        });
    let (reason, message) = match phase {
        "Failed" => (
            Some(format!("ContainerGroup{state}")),
            Some(match &detail {
                Some(d) => format!("ACI container group {} is {state}: {d}", group.name),
                None => format!("ACI container group {} is {state}", group.name),
            }),
        ),
        "Pending" => (
            None,
            Some(format!("ACI container group {} is {state}", group.name)),
        ),
        "Unknown" => (
            Some("ProviderUnknownState".to_string()),
            Some(format!(
                "ACI container group {} reports state {state:?}",
                group.name
            )),
        ),
        _ => (None, None),
    };
    let not_ready_reason = if matches!(phase, "Succeeded" | "Failed") {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = vec![
        condition("PodScheduled", true, None),
        condition("Initialized", initialized, Some("ContainersNotInitialized")),
        condition("ContainersReady", ready, Some(not_ready_reason)),
        condition("Ready", ready, Some(not_ready_reason)),
    ];

    let ip = p.ip_address.as_ref().and_then(|i| i.ip.clone());
    let start_time = p
        .containers
        .iter()
        .filter_map(|c| c.properties.instance_view.as_ref())
        .filter_map(|v| v.current_state.as_ref())
        .filter_map(|s| time(s.start_time.as_deref()))
        .min_by_key(|t| t.0);

    k8s::PodStatus {
        phase: Some(phase.to_string()),
        reason,
        message,
        conditions: Some(conditions),
        container_statuses: Some(container_statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        pod_ips: ip.clone().map(|ip| vec![k8s::PodIP { ip }]),
        pod_ip: ip,
        start_time,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
