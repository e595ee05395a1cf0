//! Pod (and its owning controller) → IoT Edge deployments.
//!
//! Owns the mapping from Kubernetes objects to hub [`Configuration`]s: one
//! *layered* deployment per (edge virtual node, owning controller, content
//! hash), and the spillway-managed *base* deployment per node that carries
//! the system modules. Pure functions: no I/O, no clock; values the API
//! server holds (`valueFrom`, `envFrom`, the ReplicaSet's revision) are
//! resolved by the caller and handed in. Must not: call the hub, read pod
//! status, or decide when to create or delete (that is the edge backend's).
//!
//! Decisions worth knowing:
//! - **Shared by replicas.** Every replica of a ReplicaSet maps to the same
//!   deployment, so the content may only depend on the pod template. Values
//!   that differ per pod (`fieldRef` to `metadata.name`, `metadata.uid`,
//!   `status.podIP`, …) are rejected; `metadata.namespace` is allowed.
//! - **Content is immutable on the hub.** The deployment id embeds a hash of
//!   (node, namespace, owner uid, `modulesContent`); any content change is a
//!   new id. `targetCondition`, `priority` and `labels` are mutable hub fields
//!   and are *not* hashed: the backend updates them in place (etag PUT).
//! - **Module = container**, named after the container (so `$edgeHub` routes
//!   written against module names work). `$…`, `edgeAgent` and `edgeHub`
//!   (any case) are the runtime's own names and are rejected.
//! - **Docker mapping**: `command` → `Entrypoint`, `args` → `Cmd` (the same
//!   semantics as Kubernetes, so `args` alone keeps the image's entrypoint);
//!   `$(VAR)` references are expanded first, as the kubelet would.
//!   Ports are published on the device: `PortBindings` with `hostPort`, or
//!   the container port when there is none (a virtual node has no pod
//!   network), plus `ExposedPorts`. `limits.memory` → `HostConfig.Memory`,
//!   `limits.cpu` → `HostConfig.NanoCpus`; requests have no Docker
//!   equivalent and are ignored. `createOptions` is split into 512-character
//!   chunks (`createOptions`, `createOptions01` … `createOptions07`), the most
//!   the agent reads.
//! - **Rejected** (would silently not do what the pod says): init
//!   containers, volumes other than the service-account token the API server
//!   injects (its mounts are dropped: the token cannot be used from a
//!   device), `imagePullSecrets` (registry credentials would be readable by
//!   every hub reader), `SCTP` ports, `postStart`.
//! - Env values are written in clear into the hub; secrets in env are the
//!   operator's choice to make, and the caller resolves them.

use super::model::Configuration;
use crate::provider::resolve::expand_vars;
use crate::units::{parse_cpu_millis, parse_memory_bytes};
use k8s_openapi::api::core::v1 as k8s;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Annotation: an extra device query ANDed with the node's base condition.
pub const TARGET_CONDITION_ANNOTATION: &str = "edge.spillway.io/target-condition";
/// Label prefix: `edge.spillway.io/tag.<k>: <v>` → `tags.<k>='<v>'`.
pub const TAG_LABEL_PREFIX: &str = "edge.spillway.io/tag.";
/// Annotation: the deployment's base priority (default [`DEFAULT_PRIORITY`]).
pub const PRIORITY_ANNOTATION: &str = "edge.spillway.io/priority";
/// Annotation prefix: `edge.spillway.io/module-twin.<container>` = JSON
/// object of the module twin's desired properties.
pub const MODULE_TWIN_ANNOTATION_PREFIX: &str = "edge.spillway.io/module-twin.";
/// Annotation prefix: `edge.spillway.io/startup-order.<container>` = integer.
pub const STARTUP_ORDER_ANNOTATION_PREFIX: &str = "edge.spillway.io/startup-order.";
/// Annotation: JSON object of `$edgeHub` routes (name → route string or
/// `{"route": …, "priority": …, "timeToLiveSecs": …}`).
pub const ROUTES_ANNOTATION: &str = "edge.spillway.io/routes";
/// The Deployment controller's revision annotation on a ReplicaSet.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

pub const DEFAULT_PRIORITY: i32 = 100;

/// Labels on every configuration spillway creates; the backend adopts by them.
pub const LABEL_MANAGED_BY: &str = "spillway.io/managed-by";
pub const MANAGED_BY: &str = "spillway";
pub const LABEL_NODE: &str = "spillway.io/edge-node";
pub const LABEL_ROLE: &str = "spillway.io/edge-role";
pub const ROLE_LAYERED: &str = "layered";
pub const ROLE_BASE: &str = "base";
pub const LABEL_NAMESPACE: &str = "spillway.io/namespace";
pub const LABEL_OWNER_KIND: &str = "spillway.io/owner-kind";
pub const LABEL_OWNER_NAME: &str = "spillway.io/owner-name";
pub const LABEL_OWNER_UID: &str = "spillway.io/owner-uid";
pub const LABEL_CONTENT_HASH: &str = "spillway.io/content-hash";
/// Label: uid of the controller that owns the pod's ReplicaSet (a
/// Deployment): the deployments of one rollout share it.
pub const LABEL_ROLLOUT_UID: &str = "spillway.io/rollout-uid";
/// Label: the owning ReplicaSet's `deployment.kubernetes.io/revision`.
pub const LABEL_REVISION: &str = "spillway.io/revision";

/// The hub's limit on configuration ids.
pub const MAX_ID_LEN: usize = 128;
/// Characters of the content hash in ids and labels (64 bits).
pub const HASH_LEN: usize = 16;
/// The agent's limit on one `createOptions` field.
pub const CREATE_OPTIONS_CHUNK: usize = 512;
/// `createOptions` plus `createOptions01` … `createOptions07`.
pub const MAX_CREATE_OPTIONS_CHUNKS: usize = 8;

/// Why a pod cannot become an IoT Edge deployment. Each names the pod field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeTranslateError {
    /// The pod asks for something IoT Edge cannot do, or is malformed.
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },
    /// The pod references something the caller was to resolve and did not.
    #[error("{field}: {what} was not resolved")]
    Unresolved { field: String, what: String },
}

impl EdgeTranslateError {
    pub fn field(&self) -> &str {
        match self {
            Self::InvalidSpec { field, .. } | Self::Unresolved { field, .. } => field,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> EdgeTranslateError {
    EdgeTranslateError::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// One edge virtual node (one IoT Hub, one device population).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeNode {
    /// The Kubernetes node name.
    pub name: String,
    /// Device query every deployment of this node is limited to
    /// (e.g. `tags.fleet='factory'`); empty or `*` means all edge devices.
    pub base_condition: String,
    /// Priority of the base deployment (system modules only).
    pub base_priority: i32,
    pub edge_agent_image: String,
    pub edge_hub_image: String,
}

impl EdgeNode {
    pub fn new(name: impl Into<String>, base_condition: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_condition: base_condition.into(),
            base_priority: 0,
            edge_agent_image: "mcr.microsoft.com/azureiotedge-agent:1.5".into(),
            edge_hub_image: "mcr.microsoft.com/azureiotedge-hub:1.5".into(),
        }
    }
}

/// The object a deployment belongs to: the pod's controller, or the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The pod's controller (`ownerReferences[controller=true]`), or the pod
/// itself for a bare pod.
pub fn owner_of(pod: &k8s::Pod) -> Result<Owner, EdgeTranslateError> {
    let meta = &pod.metadata;
    if let Some(r) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    {
        if r.uid.is_empty() {
            return Err(invalid(
                "metadata.ownerReferences",
                "the controller reference has no uid",
            ));
        }
        return Ok(Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        });
    }
    let name = meta
        .name
        .clone()
        .ok_or_else(|| invalid("metadata.name", "the pod has no name"))?;
    let uid = meta
        .uid
        .clone()
        .ok_or_else(|| invalid("metadata.uid", "the pod has no uid"))?;
    Ok(Owner {
        kind: "Pod".into(),
        name,
        uid,
    })
}

/// Parse a ReplicaSet's `deployment.kubernetes.io/revision` annotation.
pub fn parse_revision(value: &str) -> Result<i32, EdgeTranslateError> {
    value
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            invalid(
                format!("ReplicaSet annotation {REVISION_ANNOTATION}"),
                format!("{value:?} is not a non-negative integer"),
            )
        })
}

/// Values the caller looked up for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// container name → env var name → value, for every `env[].valueFrom`
    /// other than `fieldRef: metadata.namespace`.
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    /// container name → variables produced by `envFrom` (prefix applied), in order.
    pub env_from: BTreeMap<String, Vec<(String, String)>>,
    /// container name → `optional` references whose object or key is
    /// missing: the variable is left out, as the kubelet does.
    pub absent: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// Inputs of [`layered_deployment`] besides the pod.
#[derive(Debug, Clone, Copy)]
pub struct LayeredInput<'a> {
    pub node: &'a EdgeNode,
    pub owner: &'a Owner,
    /// The owning ReplicaSet's revision; `None` for other owners.
    pub revision: Option<i32>,
    /// Uid of the ReplicaSet's own controller (the Deployment), which ties
    /// the deployments of one rollout together; `None` for other owners.
    pub rollout: Option<&'a str>,
    pub resolved: &'a Resolved,
}

/// A layered deployment ready to create, and what it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct LayeredDeployment {
    pub configuration: Configuration,
    /// [`HASH_LEN`] hex characters, also the `spillway.io/content-hash` label.
    pub content_hash: String,
    /// The module names, in container order.
    pub modules: Vec<String>,
}

impl LayeredDeployment {
    pub fn id(&self) -> &str {
        &self.configuration.id
    }
}

/// Translate a pod bound to an edge node into its layered deployment.
pub fn layered_deployment(
    pod: &k8s::Pod,
    input: LayeredInput<'_>,
) -> Result<LayeredDeployment, EdgeTranslateError> {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .ok_or_else(|| invalid("metadata.namespace", "the pod has no namespace"))?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec", "the pod has no spec"))?;
    reject_unsupported(spec)?;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    check_annotation_targets(&annotations, &names)?;

    let restart_policy = restart_policy(spec.restart_policy.as_deref())?;
    let mut agent = Map::new();
    let mut modules_content = BTreeMap::new();
    let mut modules = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let field = format!("spec.containers[{i}]");
        check_module_name(&format!("{field}.name"), &c.name)?;
        let module = module_spec(
            &field,
            c,
            namespace,
            spec,
            restart_policy,
            &annotations,
            input.resolved,
        )?;
        agent.insert(format!("properties.desired.modules.{}", c.name), module);
        if let Some(raw) = annotations.get(&format!("{MODULE_TWIN_ANNOTATION_PREFIX}{}", c.name)) {
            let twin = module_twin(&c.name, raw)?;
            modules_content.insert(c.name.clone(), Value::Object(twin));
        }
        modules.push(c.name.clone());
    }
    if modules.is_empty() {
        return Err(invalid("spec.containers", "the pod has no containers"));
    }
    modules_content.insert("$edgeAgent".to_string(), Value::Object(agent));
    if let Some(raw) = annotations.get(ROUTES_ANNOTATION) {
        modules_content.insert("$edgeHub".to_string(), Value::Object(routes(raw)?));
    }

    let content_hash = content_hash(&[
        "layered",
        &input.node.name,
        namespace,
        &input.owner.uid,
        &canonical(&modules_content),
    ]);
    let id = deployment_id(
        &[&input.node.name, namespace, &input.owner.name],
        &content_hash,
    );
    let MutableFields {
        target_condition,
        priority,
    } = mutable_fields(pod, input.node, input.revision)?;

    let mut configuration =
        Configuration::edge_deployment(id, modules_content, target_condition, priority);
    configuration.labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NODE.to_string(), input.node.name.clone()),
        (LABEL_ROLE.to_string(), ROLE_LAYERED.to_string()),
        (LABEL_NAMESPACE.to_string(), namespace.to_string()),
        (LABEL_OWNER_KIND.to_string(), input.owner.kind.clone()),
        (LABEL_OWNER_NAME.to_string(), input.owner.name.clone()),
        (LABEL_OWNER_UID.to_string(), input.owner.uid.clone()),
        (LABEL_CONTENT_HASH.to_string(), content_hash.clone()),
    ]);
    if let Some(rollout) = input.rollout {
        configuration
            .labels
            .insert(LABEL_ROLLOUT_UID.to_string(), rollout.to_string());
    }
    if let Some(revision) = input.revision {
        configuration
            .labels
            .insert(LABEL_REVISION.to_string(), revision.to_string());
    }
    Ok(LayeredDeployment {
        configuration,
        content_hash,
        modules,
    })
}

/// The fields of a layered deployment the hub lets change in place (the
/// etag PUT), as the pod and the node say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableFields {
    pub target_condition: String,
    pub priority: i32,
}

/// Target condition (node base AND annotation AND tag labels) and priority
/// (annotation, default [`DEFAULT_PRIORITY`], plus the ReplicaSet revision)
/// of `pod`'s deployment. Pod annotations and labels are mutable in
/// Kubernetes, and the node's base condition is a flag: these may change
/// while the deployment runs, unlike its content.
pub fn mutable_fields(
    pod: &k8s::Pod,
    node: &EdgeNode,
    revision: Option<i32>,
) -> Result<MutableFields, EdgeTranslateError> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let target_condition = pod_target_condition(
        &node.base_condition,
        &annotations,
        pod.metadata.labels.as_ref(),
    )?;
    let base_priority = match annotations.get(PRIORITY_ANNOTATION) {
        Some(raw) => raw
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| {
                invalid(
                    format!("metadata.annotations[{PRIORITY_ANNOTATION}]"),
                    format!("{raw:?} is not a non-negative integer"),
                )
            })?,
        None => DEFAULT_PRIORITY,
    };
    let priority = base_priority
        .checked_add(revision.unwrap_or(0))
        .ok_or_else(|| {
            invalid(
                format!("metadata.annotations[{PRIORITY_ANNOTATION}]"),
                "priority plus the ReplicaSet revision overflows",
            )
        })?;
    Ok(MutableFields {
        target_condition,
        priority,
    })
}

/// The node's base deployment: `$edgeAgent`/`$edgeHub` system modules only,
/// so removing a layered deployment really removes its modules.
pub fn base_deployment(node: &EdgeNode) -> Configuration {
    let agent = json!({
        "schemaVersion": "1.1",
        "runtime": {
            "type": "docker",
            "settings": {"minDockerVersion": "v1.25", "loggingOptions": "", "registryCredentials": {}}
        },
        "systemModules": {
            "edgeAgent": {
                "type": "docker",
                "settings": {"image": node.edge_agent_image, "createOptions": "{}"}
            },
            "edgeHub": {
                "type": "docker",
                "status": "running",
                "restartPolicy": "always",
                "startupOrder": 0,
                "settings": {
                    "image": node.edge_hub_image,
                    "createOptions": "{\"HostConfig\":{\"PortBindings\":{\"443/tcp\":[{\"HostPort\":\"443\"}],\"5671/tcp\":[{\"HostPort\":\"5671\"}],\"8883/tcp\":[{\"HostPort\":\"8883\"}]}}}"
                }
            }
        },
        "modules": {}
    });
    let hub = json!({
        "schemaVersion": "1.1",
        "routes": {},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
    });
    let content = BTreeMap::from([
        (
            "$edgeAgent".to_string(),
            json!({ "properties.desired": agent }),
        ),
        ("$edgeHub".to_string(), json!({ "properties.desired": hub })),
    ]);
    let hash = content_hash(&["base", &node.name, &canonical(&content)]);
    let id = deployment_id(&[&node.name, "base"], &hash);
    let mut c = Configuration::edge_deployment(
        id,
        content,
        normalized_base(&node.base_condition),
        node.base_priority,
    );
    c.labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NODE.to_string(), node.name.clone()),
        (LABEL_ROLE.to_string(), ROLE_BASE.to_string()),
        (LABEL_CONTENT_HASH.to_string(), hash),
    ]);
    c
}

// ---- ids and hashing ------------------------------------------------------

/// Serialise with sorted keys (serde_json's map is ordered), the form hashed.
fn canonical<T: serde::Serialize>(v: &T) -> String {
    // Serialising maps of strings and JSON values cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// [`HASH_LEN`] hex characters of SHA-256 over the parts (length-prefixed,
/// so `("ab","c")` and `("a","bc")` differ). Stable across releases.
pub fn content_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(HASH_LEN);
    for b in digest.iter().take(HASH_LEN / 2) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `<readable prefix>-<hash>`: lowercase `[a-z0-9-]`, at most
/// [`MAX_ID_LEN`] characters, no leading, trailing or doubled hyphen. The
/// prefix is for people; the hash makes it unique.
pub fn deployment_id(readable: &[&str], hash: &str) -> String {
    let mut prefix = String::new();
    for ch in readable.join("-").chars() {
        let c = match ch.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        };
        if c == '-' && (prefix.is_empty() || prefix.ends_with('-')) {
            continue;
        }
        prefix.push(c);
    }
    prefix.truncate(MAX_ID_LEN - 1 - hash.len());
    while prefix.ends_with('-') {
        prefix.pop();
    }
    if prefix.is_empty() {
        hash.to_string()
    } else {
        format!("{prefix}-{hash}")
    }
}

// ---- device selection -----------------------------------------------------

fn normalized_base(base: &str) -> String {
    let b = base.trim();
    if b.is_empty() || b == "*" {
        // The hub's "all IoT Edge devices" idiom.
        "capabilities.iotEdge = true".to_string()
    } else {
        b.to_string()
    }
}

/// A query string literal: single-quoted, quotes doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The node's base condition AND the pod's annotation AND its tag labels.
pub fn pod_target_condition(
    base: &str,
    annotations: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<String, EdgeTranslateError> {
    let mut parts = vec![normalized_base(base)];
    if let Some(extra) = annotations.get(TARGET_CONDITION_ANNOTATION) {
        let extra = extra.trim();
        if extra.is_empty() {
            return Err(invalid(
                format!("metadata.annotations[{TARGET_CONDITION_ANNOTATION}]"),
                "empty target condition",
            ));
        }
        parts.push(extra.to_string());
    }
    for (k, v) in labels.into_iter().flatten() {
        let Some(tag) = k.strip_prefix(TAG_LABEL_PREFIX) else {
            continue;
        };
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                format!("metadata.labels[{k}]"),
                "a tag name must be letters, digits, '_' or '-'",
            ));
        }
        parts.push(format!("tags.{tag}={}", quote_literal(v)));
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    Ok(parts
        .iter()
        .map(|p| format!("({p})"))
        .collect::<Vec<_>>()
        .join(" AND "))
}

// ---- modules --------------------------------------------------------------

fn reject_unsupported(spec: &k8s::PodSpec) -> Result<(), EdgeTranslateError> {
    if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(invalid(
            "spec.initContainers",
            "IoT Edge cannot run a module to completion before the others",
        ));
    }
    if spec
        .image_pull_secrets
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(invalid(
            "spec.imagePullSecrets",
            "registry credentials are not supported on edge nodes (they would be readable by every hub reader); configure them in the device's base deployment",
        ));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !is_token_volume(v) {
            return Err(invalid(
                format!("spec.volumes[{i}]"),
                format!(
                    "volume {:?}: volumes are not supported on edge nodes",
                    v.name
                ),
            ));
        }
    }
    Ok(())
}

/// The service-account token volume the API server injects.
fn is_token_volume(v: &k8s::Volume) -> bool {
    v.projected.as_ref().is_some_and(|p| {
        p.sources
            .iter()
            .flatten()
            .any(|s| s.service_account_token.is_some())
    })
}

fn check_module_name(field: &str, name: &str) -> Result<(), EdgeTranslateError> {
    if name.starts_with('$')
        || name.eq_ignore_ascii_case("edgeAgent")
        || name.eq_ignore_ascii_case("edgeHub")
    {
        return Err(invalid(
            field,
            format!("{name:?} is reserved for the IoT Edge runtime; rename the container"),
        ));
    }
    if name.is_empty() || name.contains('.') {
        return Err(invalid(
            field,
            format!("{name:?} cannot be a module name (empty or contains '.')"),
        ));
    }
    Ok(())
}

/// Annotations that name a container must name one that exists.
fn check_annotation_targets(
    annotations: &BTreeMap<String, String>,
    containers: &[&str],
) -> Result<(), EdgeTranslateError> {
    for key in annotations.keys() {
        for prefix in [
            MODULE_TWIN_ANNOTATION_PREFIX,
            STARTUP_ORDER_ANNOTATION_PREFIX,
        ] {
            if let Some(name) = key.strip_prefix(prefix)
                && !containers.contains(&name)
            {
                return Err(invalid(
                    format!("metadata.annotations[{key}]"),
                    format!("no container named {name:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn restart_policy(policy: Option<&str>) -> Result<&'static str, EdgeTranslateError> {
    match policy.unwrap_or("Always") {
        "Always" => Ok("always"),
        "OnFailure" => Ok("on-failure"),
        "Never" => Ok("never"),
        other => Err(invalid(
            "spec.restartPolicy",
            format!("unknown restart policy {other:?}"),
        )),
    }
}

fn module_spec(
    field: &str,
    c: &k8s::Container,
    namespace: &str,
    spec: &k8s::PodSpec,
    restart_policy: &str,
    annotations: &BTreeMap<String, String>,
    resolved: &Resolved,
) -> Result<Value, EdgeTranslateError> {
    let image = c
        .image
        .as_deref()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| invalid(format!("{field}.image"), "no image"))?;
    if c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some()) {
        return Err(invalid(
            format!("{field}.lifecycle.postStart"),
            "IoT Edge has no post-start hook",
        ));
    }
    let env = module_env(field, c, namespace, resolved)?;
    let create_options = create_options(field, c, spec, &env)?;
    let mut settings = Map::new();
    settings.insert("image".into(), Value::String(image.to_string()));
    for (name, chunk) in
        chunk_create_options(&create_options).map_err(|m| invalid(field.to_string(), m))?
    {
        settings.insert(name, Value::String(chunk));
    }
    let mut module = Map::new();
    module.insert("version".into(), json!("1.0"));
    module.insert("type".into(), json!("docker"));
    module.insert("status".into(), json!("running"));
    module.insert("restartPolicy".into(), json!(restart_policy));
    module.insert("settings".into(), Value::Object(settings));
    if c.image_pull_policy.as_deref() == Some("Never") {
        module.insert("imagePullPolicy".into(), json!("never"));
    }
    let key = format!("{STARTUP_ORDER_ANNOTATION_PREFIX}{}", c.name);
    if let Some(raw) = annotations.get(&key) {
        let order = raw.trim().parse::<u32>().map_err(|_| {
            invalid(
                format!("metadata.annotations[{key}]"),
                format!("{raw:?} is not a non-negative integer"),
            )
        })?;
        module.insert("startupOrder".into(), json!(order));
    }
    if !env.is_empty() {
        let env: Map<String, Value> = env
            .into_iter()
            .map(|(k, v)| (k, json!({ "value": v })))
            .collect();
        module.insert("env".into(), Value::Object(env));
    }
    Ok(Value::Object(module))
}

/// The container's environment as Kubernetes builds it: `envFrom` first,
/// then `env` in order, later definitions winning, `$(VAR)` expanded against
/// earlier ones.
fn module_env(
    field: &str,
    c: &k8s::Container,
    namespace: &str,
    resolved: &Resolved,
) -> Result<Vec<(String, String)>, EdgeTranslateError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = env.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            env.push((name, value));
        }
    };
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        let vars =
            resolved
                .env_from
                .get(&c.name)
                .ok_or_else(|| EdgeTranslateError::Unresolved {
                    field: format!("{field}.envFrom"),
                    what: "envFrom".into(),
                })?;
        for (k, v) in vars {
            set(&mut env, k.clone(), v.clone());
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let value = match &e.value_from {
            None => expand_vars(e.value.as_deref().unwrap_or_default(), lookup(&env)),
            Some(source) => {
                if let Some(f) = &source.field_ref {
                    if f.field_path == "metadata.namespace" {
                        namespace.to_string()
                    } else {
                        return Err(invalid(
                            format!("{field}.env[{i}].valueFrom.fieldRef"),
                            format!(
                                "{} differs between replicas, which share one deployment; only metadata.namespace is supported",
                                f.field_path
                            ),
                        ));
                    }
                } else if source.resource_field_ref.is_some() {
                    return Err(invalid(
                        format!("{field}.env[{i}].valueFrom.resourceFieldRef"),
                        "not supported on edge nodes",
                    ));
                } else if resolved
                    .absent
                    .get(&c.name)
                    .is_some_and(|names| names.contains(&e.name))
                {
                    continue;
                } else {
                    resolved
                        .env
                        .get(&c.name)
                        .and_then(|m| m.get(&e.name))
                        .cloned()
                        .ok_or_else(|| EdgeTranslateError::Unresolved {
                            field: format!("{field}.env[{i}].valueFrom"),
                            what: format!("variable {}", e.name),
                        })?
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// The value of a variable defined so far, for `$(VAR)` expansion.
fn lookup<'e>(env: &'e [(String, String)]) -> impl Fn(&str) -> Option<&'e str> {
    move |name| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Docker create options for one container, as a JSON string.
fn create_options(
    field: &str,
    c: &k8s::Container,
    spec: &k8s::PodSpec,
    env: &[(String, String)],
) -> Result<String, EdgeTranslateError> {
    let mut top = Map::new();
    let mut host = Map::new();
    if let Some(cmd) = c.command.as_ref().filter(|v| !v.is_empty()) {
        let cmd: Vec<String> = cmd.iter().map(|a| expand_vars(a, lookup(env))).collect();
        top.insert("Entrypoint".into(), json!(cmd));
    }
    if let Some(args) = c.args.as_ref().filter(|v| !v.is_empty()) {
        let args: Vec<String> = args.iter().map(|a| expand_vars(a, lookup(env))).collect();
        top.insert("Cmd".into(), json!(args));
    }
    if let Some(dir) = c.working_dir.as_ref().filter(|d| !d.is_empty()) {
        top.insert("WorkingDir".into(), json!(dir));
    }
    let mut exposed = Map::new();
    let mut bindings = Map::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => "tcp",
            "UDP" => "udp",
            other => {
                return Err(invalid(
                    format!("{field}.ports[{i}].protocol"),
                    format!("{other} is not supported by Docker port bindings"),
                ));
            }
        };
        if !(1..=65535).contains(&p.container_port) {
            return Err(invalid(
                format!("{field}.ports[{i}].containerPort"),
                "must be 1-65535",
            ));
        }
        let key = format!("{}/{proto}", p.container_port);
        let host_port = p.host_port.filter(|h| *h > 0).unwrap_or(p.container_port);
        let mut binding = Map::new();
        binding.insert("HostPort".into(), json!(host_port.to_string()));
        if let Some(ip) = p.host_ip.as_ref().filter(|ip| !ip.is_empty()) {
            binding.insert("HostIp".into(), json!(ip));
        }
        exposed.insert(key.clone(), json!({}));
        bindings.insert(key, json!([Value::Object(binding)]));
    }
    if !exposed.is_empty() {
        top.insert("ExposedPorts".into(), Value::Object(exposed));
        host.insert("PortBindings".into(), Value::Object(bindings));
    }
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    if let Some(q) = limits.and_then(|l| l.get("memory")) {
        let bytes = parse_memory_bytes(&q.0)
            .map_err(|e| invalid(format!("{field}.resources.limits.memory"), e.to_string()))?;
        host.insert("Memory".into(), json!(bytes));
    }
    if let Some(q) = limits.and_then(|l| l.get("cpu")) {
        let millis = parse_cpu_millis(&q.0)
            .map_err(|e| invalid(format!("{field}.resources.limits.cpu"), e.to_string()))?;
        host.insert("NanoCpus".into(), json!(millis.saturating_mul(1_000_000)));
    }
    if c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
    {
        host.insert("Privileged".into(), json!(true));
    }
    if spec.host_network == Some(true) {
        host.insert("NetworkMode".into(), json!("host"));
    }
    if !host.is_empty() {
        top.insert("HostConfig".into(), Value::Object(host));
    }
    Ok(canonical(&Value::Object(top)))
}

/// Split a `createOptions` string into the agent's fields: `createOptions`,
/// then `createOptions01` … `createOptions07`, each at most
/// [`CREATE_OPTIONS_CHUNK`] characters (characters, not bytes: the limit is
/// on the JSON string value).
pub fn chunk_create_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let chars: Vec<char> = options.chars().collect();
    let chunks: Vec<String> = if chars.is_empty() {
        vec![String::new()]
    } else {
        chars
            .chunks(CREATE_OPTIONS_CHUNK)
            .map(|c| c.iter().collect())
            .collect()
    };
    if chunks.len() > MAX_CREATE_OPTIONS_CHUNKS {
        return Err(format!(
            "createOptions is {} characters; IoT Edge reads at most {}",
            chars.len(),
            CREATE_OPTIONS_CHUNK * MAX_CREATE_OPTIONS_CHUNKS
        ));
    }
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let name = if i == 0 {
                "createOptions".to_string()
            } else {
                format!("createOptions{i:02}")
            };
            (name, c)
        })
        .collect())
}

/// `edge.spillway.io/module-twin.<container>` → `properties.desired.<key>`
/// patches (layered form, so other layers' properties stay).
fn module_twin(container: &str, raw: &str) -> Result<Map<String, Value>, EdgeTranslateError> {
    let field = format!("metadata.annotations[{MODULE_TWIN_ANNOTATION_PREFIX}{container}]");
    let Ok(Value::Object(props)) = serde_json::from_str::<Value>(raw) else {
        return Err(invalid(field, "must be a JSON object"));
    };
    let mut out = Map::new();
    for (k, v) in props {
        if k.is_empty() || k.starts_with('$') || k.contains('.') {
            return Err(invalid(
                field,
                format!("property {k:?}: names may not be empty, start with '$' or contain '.'"),
            ));
        }
        out.insert(format!("properties.desired.{k}"), v);
    }
    if out.is_empty() {
        return Err(invalid(field, "no properties"));
    }
    Ok(out)
}

/// `edge.spillway.io/routes` → `$edgeHub` `properties.desired.routes.<name>`.
fn routes(raw: &str) -> Result<Map<String, Value>, EdgeTranslateError> {
    let field = format!("metadata.annotations[{ROUTES_ANNOTATION}]");
    let Ok(Value::Object(routes)) = serde_json::from_str::<Value>(raw) else {
        return Err(invalid(
            field,
            "must be a JSON object of route name → route",
        ));
    };
    let mut out = Map::new();
    for (name, route) in routes {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                field,
                format!("route name {name:?}: letters, digits, '_' or '-' only"),
            ));
        }
        let ok = match &route {
            Value::String(s) => s.trim_start().to_ascii_uppercase().starts_with("FROM "),
            Value::Object(o) => o
                .get("route")
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim_start().to_ascii_uppercase().starts_with("FROM ")),
            _ => false,
        };
        if !ok {
            return Err(invalid(
                field,
                format!("route {name:?}: expected \"FROM … INTO …\" or {{\"route\": \"FROM …\"}}"),
            ));
        }
        out.insert(format!("properties.desired.routes.{name}"), route);
    }
    if out.is_empty() {
        return Err(invalid(field, "no routes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
