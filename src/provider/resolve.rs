//! What a pod refers to in ConfigMaps and Secrets, resolved into
//! [`Resolved`] for the translation.
//!
//! Split in two: [`references`] lists the objects a pod needs (the caller
//! reads them from the API server into [`Sources`]) and [`resolve`] builds
//! [`Resolved`] from them without I/O. A missing object or key that is not
//! `optional` is an error naming the pod field, as the kubelet's
//! `CreateContainerConfigError`; an `optional` one leaves the environment
//! variable out ([`EnvValue::Absent`]), as the kubelet does.

use crate::aci::ImageRegistryCredential;
use crate::aci::translate::{AzureFileCredential, EnvValue, Resolved};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1 as k8s;
use std::collections::{BTreeMap, BTreeSet};

/// Why a pod's references cannot be resolved (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{field}: {kind} {name:?} not found")]
    MissingObject {
        field: String,
        kind: &'static str,
        name: String,
    },
    #[error("{field}: key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        field: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("imagePullSecrets: Secret {name:?}: {message}")]
    BadPullSecret { name: String, message: String },
    #[error("{LOG_ANALYTICS_FLAG}: Secret {secret}: {message}")]
    BadLogAnalytics {
        secret: LogAnalyticsSecret,
        message: String,
    },
}

/// The flag naming the Log Analytics Secret, as errors name it.
pub const LOG_ANALYTICS_FLAG: &str = "--aci-log-analytics";

/// `--aci-log-analytics NAMESPACE/NAME`: the Secret holding the Log
/// Analytics workspace every container group sends its logs to, with keys
/// `workspaceId`, `workspaceKey` and, optionally, `logType`
/// (`ContainerInsights` or `ContainerInstanceLogs`; absent: ACI's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAnalyticsSecret {
    pub namespace: String,
    pub name: String,
}

impl LogAnalyticsSecret {
    /// Parse `NAMESPACE/NAME` (both DNS-1123 names, as Kubernetes requires).
    pub fn parse(s: &str) -> Result<Self, String> {
        let dns = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        match s.split_once('/') {
            Some((ns, name)) if dns(ns) && dns(name) && !name.contains('/') => Ok(Self {
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            _ => Err(format!(
                "{s:?} is not NAMESPACE/NAME of a Secret (lowercase DNS names, e.g. spillway-system/log-analytics)"
            )),
        }
    }
}

impl std::fmt::Display for LogAnalyticsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Log Analytics settings of every group from the Secret `secret`
/// names (`data`: the Secret as read, `None` when it does not exist). A
/// missing Secret or key, an empty value or an unknown `logType` is an error
/// naming the flag, the Secret and the key: the pod waits with it, as for a
/// missing ConfigMap, rather than running without its logs shipped.
pub fn log_analytics(
    secret: &LogAnalyticsSecret,
    data: Option<&SecretData>,
) -> Result<crate::aci::LogAnalytics, ResolveError> {
    let Some(data) = data else {
        return Err(ResolveError::MissingObject {
            field: LOG_ANALYTICS_FLAG.to_string(),
            kind: "Secret",
            name: secret.to_string(),
        });
    };
    let value = |key: &str| data.data.get(key).map(|v| text(v).trim().to_string());
    let required = |key: &str| match value(key) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ResolveError::BadLogAnalytics {
            secret: secret.clone(),
            message: format!("key {key:?} is empty"),
        }),
        None => Err(ResolveError::MissingKey {
            field: LOG_ANALYTICS_FLAG.to_string(),
            kind: "Secret",
            name: secret.to_string(),
            key: key.to_string(),
        }),
    };
    let workspace_id = required("workspaceId")?;
    let workspace_key = required("workspaceKey")?;
    let log_type = match value("logType").filter(|v| !v.is_empty()) {
        None => None,
        Some(t) if t == "ContainerInsights" || t == "ContainerInstanceLogs" => Some(t),
        Some(t) => {
            return Err(ResolveError::BadLogAnalytics {
                secret: secret.clone(),
                message: format!(
                    "key \"logType\" is {t:?}; ACI takes ContainerInsights or ContainerInstanceLogs (or no logType)"
                ),
            });
        }
    };
    Ok(crate::aci::LogAnalytics {
        workspace_id,
        workspace_key: Some(workspace_key),
        log_type,
        ..Default::default()
    })
}

/// ConfigMap and Secret names a pod refers to (in its own namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// A Secret's type and data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    pub type_: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The objects read for one pod; an absent name means "not found".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: BTreeMap<String, SecretData>,
    /// Service account tokens for `serviceAccountToken` projections, by
    /// volume name and path; a projection without one is left out.
    pub tokens: BTreeMap<(String, String), String>,
    /// The Secret `--aci-log-analytics` names, when given and found.
    pub log_analytics: Option<SecretData>,
}

impl Sources {
    /// ConfigMap data (`data` and `binaryData` together).
    pub fn config_map_data(cm: &k8s::ConfigMap) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        out
    }

    /// Secret data (`data` and `stringData`).
    pub fn secret_data(s: &k8s::Secret) -> SecretData {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        SecretData {
            type_: s.type_.clone().unwrap_or_else(|| "Opaque".into()),
            data,
        }
    }
}

fn containers(spec: &k8s::PodSpec) -> impl Iterator<Item = (&'static str, usize, &k8s::Container)> {
    spec.init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| ("initContainers", i, c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| ("containers", i, c)),
        )
}

/// Which object a [`Reference`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

/// Where a pod uses a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefUse<'a> {
    /// `env[].valueFrom.{configMap,secret}KeyRef` of a container.
    EnvKey { container: &'a str, key: &'a str },
    /// `envFrom[]` of a container: every key.
    EnvFrom { container: &'a str },
    /// A `configMap`/`secret` volume, or a source of a `projected` one:
    /// the keys of its `items`, or `None` for every key.
    Volume {
        volume: &'a str,
        projected: bool,
        items: Option<Vec<&'a str>>,
    },
    /// An `azureFile` volume's account name and key.
    AzureFile { volume: &'a str },
    /// A `csi` volume's secret.
    Csi { volume: &'a str },
    /// `imagePullSecrets`.
    ImagePull,
}

/// One use of a ConfigMap or Secret by a pod (in its own namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    pub kind: RefKind,
    pub name: &'a str,
    pub used: RefUse<'a>,
}

/// Every ConfigMap and Secret use of `pod`, in spec order: the one walk
/// behind [`references`] (what the provider watches and resolves) and
/// `aci render`'s placeholders.
pub fn each_reference<'a>(pod: &'a k8s::Pod, mut f: impl FnMut(Reference<'a>)) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let mut emit = |kind, name: &'a str, used| f(Reference { kind, name, used });
    for (_, _, c) in containers(spec) {
        let container = c.name.as_str();
        for e in c.env.iter().flatten() {
            if let Some(src) = &e.value_from {
                if let Some(k) = &src.config_map_key_ref {
                    let used = RefUse::EnvKey {
                        container,
                        key: &k.key,
                    };
                    emit(RefKind::ConfigMap, &k.name, used);
                }
                if let Some(k) = &src.secret_key_ref {
                    let used = RefUse::EnvKey {
                        container,
                        key: &k.key,
                    };
                    emit(RefKind::Secret, &k.name, used);
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(cm) = &e.config_map_ref {
                emit(RefKind::ConfigMap, &cm.name, RefUse::EnvFrom { container });
            }
            if let Some(s) = &e.secret_ref {
                emit(RefKind::Secret, &s.name, RefUse::EnvFrom { container });
            }
        }
    }
    fn keys(items: Option<&Vec<k8s::KeyToPath>>) -> Option<Vec<&str>> {
        items.map(|is| is.iter().map(|i| i.key.as_str()).collect())
    }
    for v in spec.volumes.iter().flatten() {
        let volume = v.name.as_str();
        let in_volume = |projected, items| RefUse::Volume {
            volume,
            projected,
            items,
        };
        if let Some(s) = &v.secret
            && let Some(name) = &s.secret_name
        {
            emit(
                RefKind::Secret,
                name,
                in_volume(false, keys(s.items.as_ref())),
            );
        }
        if let Some(cm) = &v.config_map {
            emit(
                RefKind::ConfigMap,
                &cm.name,
                in_volume(false, keys(cm.items.as_ref())),
            );
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                emit(
                    RefKind::ConfigMap,
                    &cm.name,
                    in_volume(true, keys(cm.items.as_ref())),
                );
            }
            if let Some(s) = &src.secret {
                emit(
                    RefKind::Secret,
                    &s.name,
                    in_volume(true, keys(s.items.as_ref())),
                );
            }
        }
        if let Some(af) = &v.azure_file {
            emit(
                RefKind::Secret,
                &af.secret_name,
                RefUse::AzureFile { volume },
            );
        }
        if let Some(csi) = &v.csi {
            let name = csi
                .volume_attributes
                .as_ref()
                .and_then(|a| a.get("secretName"))
                .or_else(|| csi.node_publish_secret_ref.as_ref().map(|r| &r.name));
            if let Some(name) = name {
                emit(RefKind::Secret, name, RefUse::Csi { volume });
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        emit(RefKind::Secret, &s.name, RefUse::ImagePull);
    }
}

/// The ConfigMaps and Secrets `pod` refers to.
pub fn references(pod: &k8s::Pod) -> References {
    let mut r = References::default();
    each_reference(pod, |re| {
        let set = match re.kind {
            RefKind::ConfigMap => &mut r.config_maps,
            RefKind::Secret => &mut r.secrets,
        };
        set.insert(re.name.to_string());
    });
    r
}

/// Lifetime asked for a burst pod's projected service account token when
/// its projection names none: one hour, the API's own default for
/// `serviceAccountToken.expirationSeconds`, well above the API server's
/// minimum of 600 s. ACI cannot refresh a token inside a running
/// container group, so the container sees a token that expires; a bound,
/// short-lived token is still far safer than a long-lived one, and a
/// client that re-reads the file sees the same token until the group is
/// recreated.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The TokenRequest for one `serviceAccountToken` projection of `pod`,
/// bound to the pod (name and uid) as the kubelet binds the tokens it
/// mounts: the API server stops accepting it once the pod is deleted, and
/// refuses to issue it if the pod was replaced meanwhile (uid mismatch).
pub fn token_request(
    pod: &k8s::Pod,
    projection: &k8s::ServiceAccountTokenProjection,
) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: projection.audience.clone().into_iter().collect(),
            expiration_seconds: Some(
                projection
                    .expiration_seconds
                    .unwrap_or(TOKEN_EXPIRATION_SECONDS),
            ),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Build [`Resolved`] for `pod` from `sources`.
pub fn resolve(pod: &k8s::Pod, sources: &Sources) -> Result<Resolved, ResolveError> {
    let mut out = Resolved::default();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    let cm = |field: &str,
              name: &str,
              optional: bool|
     -> Result<Option<&BTreeMap<String, Vec<u8>>>, ResolveError> {
        match sources.config_maps.get(name) {
            Some(d) => Ok(Some(d)),
            None if optional => Ok(None),
            None => Err(ResolveError::MissingObject {
                field: field.to_string(),
                kind: "ConfigMap",
                name: name.to_string(),
            }),
        }
    };
    let secret =
        |field: &str, name: &str, optional: bool| -> Result<Option<&SecretData>, ResolveError> {
            match sources.secrets.get(name) {
                Some(d) => Ok(Some(d)),
                None if optional => Ok(None),
                None => Err(ResolveError::MissingObject {
                    field: field.to_string(),
                    kind: "Secret",
                    name: name.to_string(),
                }),
            }
        };
    let missing_key =
        |field: &str, kind: &'static str, name: &str, key: &str| ResolveError::MissingKey {
            field: field.to_string(),
            kind,
            name: name.to_string(),
            key: key.to_string(),
        };

    for (list, i, c) in containers(spec) {
        let field = format!("spec.{list}[{i}]");
        let mut env: BTreeMap<String, EnvValue> = BTreeMap::new();
        for (j, e) in c.env.iter().flatten().enumerate() {
            let efield = format!("{field}.env[{j}].valueFrom");
            let Some(src) = &e.value_from else { continue };
            if let Some(k) = &src.config_map_key_ref {
                let optional = k.optional.unwrap_or(false);
                match cm(&efield, &k.name, optional)?.map(|d| d.get(&k.key)) {
                    Some(Some(v)) => {
                        env.insert(e.name.clone(), EnvValue::Plain(text(v)));
                    }
                    Some(None) if !optional => {
                        return Err(missing_key(&efield, "ConfigMap", &k.name, &k.key));
                    }
                    // Optional and missing (key or whole ConfigMap): the
                    // variable is left out, as the kubelet does.
                    _ => {
                        env.insert(e.name.clone(), EnvValue::Absent);
                    }
                }
            } else if let Some(k) = &src.secret_key_ref {
                let optional = k.optional.unwrap_or(false);
                match secret(&efield, &k.name, optional)?.map(|d| d.data.get(&k.key)) {
                    Some(Some(v)) => {
                        env.insert(e.name.clone(), EnvValue::Secret(text(v)));
                    }
                    Some(None) if !optional => {
                        return Err(missing_key(&efield, "Secret", &k.name, &k.key));
                    }
                    // Optional and missing (key or whole Secret): left out.
                    _ => {
                        env.insert(e.name.clone(), EnvValue::Absent);
                    }
                }
            } else if let Some(r) = &src.resource_field_ref {
                let value = resource_field_value(c, r).ok_or_else(|| ResolveError::MissingKey {
                    field: efield.clone(),
                    kind: "container resources",
                    name: c.name.clone(),
                    key: r.resource.clone(),
                })?;
                env.insert(e.name.clone(), EnvValue::Plain(value));
            }
        }
        if !env.is_empty() {
            out.env.insert(c.name.clone(), env);
        }
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            let mut vars = Vec::new();
            for (j, f) in c.env_from.iter().flatten().enumerate() {
                let ffield = format!("{field}.envFrom[{j}]");
                let prefix = f.prefix.clone().unwrap_or_default();
                if let Some(r) = &f.config_map_ref
                    && let Some(d) = cm(&ffield, &r.name, r.optional.unwrap_or(false))?
                {
                    for (k, v) in d {
                        vars.push((format!("{prefix}{k}"), EnvValue::Plain(text(v))));
                    }
                }
                if let Some(r) = &f.secret_ref
                    && let Some(d) = secret(&ffield, &r.name, r.optional.unwrap_or(false))?
                {
                    for (k, v) in &d.data {
                        vars.push((format!("{prefix}{k}"), EnvValue::Secret(text(v))));
                    }
                }
            }
            out.env_from.insert(c.name.clone(), vars);
        }
    }

    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let select = |data: &BTreeMap<String, Vec<u8>>,
                      items: Option<&Vec<k8s::KeyToPath>>,
                      kind: &'static str,
                      name: &str,
                      optional: bool,
                      files: &mut BTreeMap<String, Vec<u8>>|
         -> Result<(), ResolveError> {
            match items {
                Some(items) if !items.is_empty() => {
                    for it in items {
                        match data.get(&it.key) {
                            Some(b) => {
                                files.insert(it.path.clone(), b.clone());
                            }
                            None if optional => {}
                            None => return Err(missing_key(&field, kind, name, &it.key)),
                        }
                    }
                }
                _ => files.extend(data.iter().map(|(k, b)| (k.clone(), b.clone()))),
            }
            Ok(())
        };
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            let mut files = BTreeMap::new();
            if let Some(d) = secret(&format!("{field}.secret"), &name, optional)? {
                select(
                    &d.data,
                    s.items.as_ref(),
                    "Secret",
                    &name,
                    optional,
                    &mut files,
                )?;
            }
            out.volume_files.insert(v.name.clone(), files);
        } else if let Some(c) = &v.config_map {
            let optional = c.optional.unwrap_or(false);
            let mut files = BTreeMap::new();
            if let Some(d) = cm(&format!("{field}.configMap"), &c.name, optional)? {
                select(
                    d,
                    c.items.as_ref(),
                    "ConfigMap",
                    &c.name,
                    optional,
                    &mut files,
                )?;
            }
            out.volume_files.insert(v.name.clone(), files);
        } else if let Some(p) = &v.projected {
            let mut files = BTreeMap::new();
            for (j, src) in p.sources.iter().flatten().enumerate() {
                let sfield = format!("{field}.projected.sources[{j}]");
                if let Some(c) = &src.config_map {
                    let optional = c.optional.unwrap_or(false);
                    if let Some(d) = cm(&sfield, &c.name, optional)? {
                        select(
                            d,
                            c.items.as_ref(),
                            "ConfigMap",
                            &c.name,
                            optional,
                            &mut files,
                        )?;
                    }
                }
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    if let Some(d) = secret(&sfield, &s.name, optional)? {
                        select(
                            &d.data,
                            s.items.as_ref(),
                            "Secret",
                            &s.name,
                            optional,
                            &mut files,
                        )?;
                    }
                }
                if let Some(d) = &src.downward_api {
                    for it in d.items.iter().flatten() {
                        if let Some(value) = downward_value(pod, it) {
                            files.insert(it.path.clone(), value.into_bytes());
                        }
                    }
                }
                if let Some(t) = &src.service_account_token
                    && let Some(token) = sources.tokens.get(&(v.name.clone(), t.path.clone()))
                {
                    files.insert(t.path.clone(), token.clone().into_bytes());
                }
            }
            out.volume_files.insert(v.name.clone(), files);
        } else if let Some(d) = &v.downward_api {
            let mut files = BTreeMap::new();
            for it in d.items.iter().flatten() {
                if let Some(value) = downward_value(pod, it) {
                    files.insert(it.path.clone(), value.into_bytes());
                }
            }
            out.volume_files.insert(v.name.clone(), files);
        }
        let azure_secret = v
            .azure_file
            .as_ref()
            .map(|a| a.secret_name.clone())
            .or_else(|| {
                v.csi.as_ref().and_then(|csi| {
                    csi.volume_attributes
                        .as_ref()
                        .and_then(|a| a.get("secretName").cloned())
                        .or_else(|| csi.node_publish_secret_ref.as_ref().map(|r| r.name.clone()))
                })
            });
        if let Some(name) = azure_secret
            && let Some(d) = secret(&field, &name, false)?
        {
            let get = |key: &str| {
                d.data
                    .get(key)
                    .map(|b| text(b))
                    .ok_or_else(|| missing_key(&field, "Secret", &name, key))
            };
            out.azure_file_credentials.insert(
                name.clone(),
                AzureFileCredential {
                    account_name: get("azurestorageaccountname")?,
                    account_key: get("azurestorageaccountkey")?,
                },
            );
        }
    }

    for s in spec.image_pull_secrets.iter().flatten() {
        // Kubernetes ignores a missing pull secret (the pull may still work).
        if let Some(d) = sources.secrets.get(&s.name) {
            out.registry_credentials
                .extend(registry_credentials(&s.name, d)?);
        }
    }
    Ok(out)
}

fn resource_field_value(c: &k8s::Container, r: &k8s::ResourceFieldSelector) -> Option<String> {
    let res = c.resources.as_ref()?;
    let (kind, what) = r.resource.split_once('.')?;
    let map = match kind {
        "limits" => res.limits.as_ref().or(res.requests.as_ref())?,
        "requests" => res.requests.as_ref()?,
        _ => return None,
    };
    let q = map.get(what)?;
    match what {
        "cpu" => crate::units::parse_cpu_millis(&q.0)
            .ok()
            .map(|m| m.div_ceil(1000).max(1).to_string()),
        _ => crate::units::parse_memory_bytes(&q.0)
            .ok()
            .map(|b| b.to_string()),
    }
}

fn downward_value(pod: &k8s::Pod, it: &k8s::DownwardAPIVolumeFile) -> Option<String> {
    let path = it.field_ref.as_ref()?.field_path.as_str();
    let m = &pod.metadata;
    let render = |map: Option<&BTreeMap<String, String>>| {
        map.map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => Some(render(m.labels.as_ref())),
        "metadata.annotations" => Some(render(m.annotations.as_ref())),
        _ => None,
    }
}

/// Registry credentials from a `kubernetes.io/dockerconfigjson` (or legacy
/// `dockercfg`) Secret.
pub fn registry_credentials(
    name: &str,
    secret: &SecretData,
) -> Result<Vec<ImageRegistryCredential>, ResolveError> {
    let bad = |message: String| ResolveError::BadPullSecret {
        name: name.to_string(),
        message,
    };
    let (raw, nested) = if let Some(b) = secret.data.get(".dockerconfigjson") {
        (b, true)
    } else if let Some(b) = secret.data.get(".dockercfg") {
        (b, false)
    } else {
        return Err(bad(format!(
            "type {:?} has neither .dockerconfigjson nor .dockercfg",
            secret.type_
        )));
    };
    let json: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not JSON: {e}")))?;
    let auths = if nested {
        json.get("auths")
    } else {
        Some(&json)
    };
    let Some(auths) = auths.and_then(|a| a.as_object()) else {
        return Err(bad("no \"auths\" object".into()));
    };
    let mut out = Vec::new();
    for (server, entry) in auths {
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (mut username, mut password) = (field("username"), field("password"));
        if (username.is_none() || password.is_none())
            && let Some(auth) = field("auth")
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("{server}: auth is not base64: {e}")))?;
            let decoded = text(&decoded);
            if let Some((u, p)) = decoded.split_once(':') {
                username = Some(u.to_string());
                password = Some(p.to_string());
            }
        }
        let server = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        out.push(ImageRegistryCredential {
            server,
            username,
            password,
        });
    }
    Ok(out)
}

/// Kubernetes' `$(VAR)` expansion, as the kubelet applies it to env values,
/// command and args: a reference `lookup` knows is replaced, an unknown one
/// is kept as written, `$$` is a literal `$`. Shared by every backend's
/// translation.
pub fn expand_vars<'e>(input: &str, mut lookup: impl FnMut(&str) -> Option<&'e str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_requests_are_bound_to_the_pod_with_a_documented_lifetime() {
        let p = pod(json!({"containers": [{"name": "c"}]}));
        let plain = k8s::ServiceAccountTokenProjection {
            path: "token".into(),
            ..Default::default()
        };
        let r = token_request(&p, &plain);
        let bound = r.spec.bound_object_ref.expect("bound");
        assert_eq!(
            (
                bound.kind.as_deref(),
                bound.name.as_deref(),
                bound.uid.as_deref()
            ),
            (Some("Pod"), Some("p"), Some("u1"))
        );
        assert_eq!(r.spec.expiration_seconds, Some(TOKEN_EXPIRATION_SECONDS));
        assert!(r.spec.audiences.is_empty(), "the API server's own audience");
        let asked = k8s::ServiceAccountTokenProjection {
            path: "token".into(),
            audience: Some("vault".into()),
            expiration_seconds: Some(7200),
        };
        let r = token_request(&p, &asked);
        assert_eq!(r.spec.expiration_seconds, Some(7200));
        assert_eq!(r.spec.audiences, ["vault"]);
    }

    fn pod(spec: serde_json::Value) -> k8s::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "web", "uid": "u1", "labels": {"app": "x"}},
            "spec": spec,
        }))
        .expect("pod json")
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cfg".into(),
            BTreeMap::from([
                ("MODE".to_string(), b"fast".to_vec()),
                ("level".to_string(), b"3".to_vec()),
            ]),
        );
        s.secrets.insert(
            "db".into(),
            SecretData {
                type_: "Opaque".into(),
                data: BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]),
            },
        );
        let cfg = json!({"auths": {"https://myreg.azurecr.io": {"auth": base64::engine::general_purpose::STANDARD.encode("bob:pw")}}});
        s.secrets.insert(
            "pull".into(),
            SecretData {
                type_: "kubernetes.io/dockerconfigjson".into(),
                data: BTreeMap::from([(
                    ".dockerconfigjson".to_string(),
                    cfg.to_string().into_bytes(),
                )]),
            },
        );
        s
    }

    #[test]
    fn env_and_env_from_resolve_with_secrets_kept_secret() {
        let p = pod(json!({"containers": [{
            "name": "app", "image": "nginx",
            "env": [
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}}
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "C_"}, {"secretRef": {"name": "db"}}]
        }]}));
        let refs = references(&p);
        assert!(refs.secrets.contains("db"));
        assert!(refs.config_maps.contains("cfg") && refs.config_maps.contains("nope"));
        let r = resolve(&p, &sources()).expect("resolves");
        let env = &r.env["app"];
        assert_eq!(env["PW"], EnvValue::Secret("hunter2".into()));
        assert_eq!(env["M"], EnvValue::Plain("fast".into()));
        assert_eq!(env["OPT"], EnvValue::Absent);
        let from = &r.env_from["app"];
        assert!(from.contains(&("C_MODE".to_string(), EnvValue::Plain("fast".into()))));
        assert!(from.contains(&("password".to_string(), EnvValue::Secret("hunter2".into()))));
    }

    #[test]
    fn optional_env_references_that_are_missing_leave_the_variable_out() {
        use crate::aci::translate::{PodContext, TranslateConfig, pod_to_group};
        use crate::policy::{AciSettings, PublicIp};
        let p = pod(json!({"containers": [{
            "name": "app", "image": "nginx",
            "envFrom": [{"configMapRef": {"name": "cfg"}}],
            "env": [
                {"name": "KEEP", "value": "1"},
                {"name": "NO_KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": true}}},
                {"name": "NO_CM", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                {"name": "NO_SKEY", "valueFrom": {"secretKeyRef": {"name": "db", "key": "x", "optional": true}}},
                {"name": "NO_SECRET", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}},
                // Defined by envFrom; a missing optional key does not clear it.
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": true}}},
                {"name": "REF", "value": "[$(NO_KEY)]"}
            ]
        }]}));
        let r = resolve(&p, &sources()).expect("resolves");
        for name in ["NO_KEY", "NO_CM", "NO_SKEY", "NO_SECRET", "MODE"] {
            assert_eq!(r.env["app"][name], EnvValue::Absent, "{name}");
        }
        let config = TranslateConfig::new("c1", "westeurope");
        let aci = AciSettings {
            public_ip: PublicIp::Auto,
            ..AciSettings::default()
        };
        let ctx = PodContext {
            config: &config,
            aci: &aci,
            resolved: &r,
        };
        let g = pod_to_group(&p, &ctx).expect("translates");
        let vars: BTreeMap<String, Option<String>> = g.properties.containers[0]
            .properties
            .environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().or(e.secure_value.clone())))
            .collect();
        assert_eq!(
            vars,
            BTreeMap::from([
                ("KEEP".to_string(), Some("1".to_string())),
                ("MODE".to_string(), Some("fast".to_string())),
                ("level".to_string(), Some("3".to_string())),
                // An undefined reference stays as written (Kubernetes' expansion).
                ("REF".to_string(), Some("[$(NO_KEY)]".to_string())),
            ])
        );
    }

    #[test]
    fn missing_objects_and_keys_name_the_field() {
        let p = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}]}));
        let e = resolve(&p, &sources()).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "spec.containers[0].env[0].valueFrom: Secret \"gone\" not found"
        );
        let p = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nokey"}}}]}]}));
        assert!(matches!(
            resolve(&p, &sources()),
            Err(ResolveError::MissingKey { .. })
        ));
    }

    #[test]
    fn volumes_become_files_honouring_items() {
        let p = pod(json!({"containers": [{"name": "app", "image": "nginx"}],
        "volumes": [
            {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "MODE", "path": "mode.txt"}]}},
            {"name": "s", "secret": {"secretName": "db"}},
            {"name": "pr", "projected": {"sources": [
                {"configMap": {"name": "cfg"}},
                {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"serviceAccountToken": {"path": "token"}}
            ]}}
        ]}));
        let mut src = sources();
        src.tokens
            .insert(("pr".into(), "token".into()), "tok".into());
        let r = resolve(&p, &src).expect("resolves");
        assert_eq!(
            r.volume_files["c"],
            BTreeMap::from([("mode.txt".to_string(), b"fast".to_vec())])
        );
        assert_eq!(r.volume_files["s"]["password"], b"hunter2".to_vec());
        assert_eq!(r.volume_files["pr"]["name"], b"p".to_vec());
        assert_eq!(r.volume_files["pr"]["token"], b"tok".to_vec());
        assert_eq!(r.volume_files["pr"]["level"], b"3".to_vec());
    }

    #[test]
    fn pull_secrets_become_registry_credentials() {
        let p = pod(
            json!({"containers": [{"name": "app", "image": "myreg.azurecr.io/app"}],
            "imagePullSecrets": [{"name": "pull"}, {"name": "absent"}]}),
        );
        let r = resolve(&p, &sources()).expect("resolves");
        assert_eq!(
            r.registry_credentials,
            vec![ImageRegistryCredential {
                server: "myreg.azurecr.io".into(),
                username: Some("bob".into()),
                password: Some("pw".into()),
            }]
        );
        let bad = SecretData {
            type_: "Opaque".into(),
            data: BTreeMap::from([(".dockerconfigjson".to_string(), b"{oops".to_vec())]),
        };
        assert!(registry_credentials("x", &bad).is_err());
    }

    #[test]
    fn dollar_references_expand_like_the_kubelet() {
        let env = [("A", "1"), ("B", "two")];
        let lookup = |n: &str| env.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(expand_vars("$(A)-$(B)", lookup), "1-two");
        assert_eq!(expand_vars("$(C) $$(A) $A $(A", lookup), "$(C) $(A) $A $(A");
        assert_eq!(expand_vars("no refs", lookup), "no refs");
    }

    #[test]
    fn log_analytics_comes_from_its_secret_or_names_what_is_missing() {
        let r = LogAnalyticsSecret::parse("spillway-system/la").expect("parses");
        assert_eq!(r.to_string(), "spillway-system/la");
        for bad in ["la", "/la", "ns/", "ns/a/b", "NS/la"] {
            assert!(LogAnalyticsSecret::parse(bad).is_err(), "{bad}");
        }
        let secret = |pairs: &[(&str, &str)]| SecretData {
            type_: "Opaque".into(),
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        };
        let e = log_analytics(&r, None).expect_err("no Secret");
        assert_eq!(
            e.to_string(),
            "--aci-log-analytics: Secret \"spillway-system/la\" not found"
        );
        let e = log_analytics(&r, Some(&secret(&[("workspaceId", "w")]))).expect_err("no key");
        assert_eq!(
            e.to_string(),
            "--aci-log-analytics: key \"workspaceKey\" not found in Secret \"spillway-system/la\""
        );
        let e = log_analytics(
            &r,
            Some(&secret(&[
                ("workspaceId", "w"),
                ("workspaceKey", "k"),
                ("logType", "Logs"),
            ])),
        )
        .expect_err("bad logType");
        assert!(e.to_string().contains("\"Logs\""), "{e}");
        let la = log_analytics(
            &r,
            Some(&secret(&[
                ("workspaceId", "w-1\n"),
                ("workspaceKey", "k=="),
            ])),
        )
        .expect("resolves");
        assert_eq!(
            (
                la.workspace_id.as_str(),
                la.workspace_key.as_deref(),
                la.log_type
            ),
            ("w-1", Some("k=="), None)
        );
    }
}
