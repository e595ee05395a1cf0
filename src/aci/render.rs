//! `spillway aci render -f pod.yaml`: the ARM request body spillway would
//! PUT for a pod (secure values masked), or the exact errors — what a user
//! runs before letting a new workload burst.
//!
//! It runs the provider's own code: the policy the pod would get
//! (`--policies`), `provider::resolve` for its ConfigMaps, Secrets and
//! tokens, and `translate::pod_to_group`. ConfigMaps and Secrets come from a
//! dump (`--cluster-state`, any `kubectl get ... -o yaml` List holding them)
//! or, without one, are placeholders named as such (`<configmap NAME/KEY>`).
//! A workload file (Deployment, StatefulSet, ReplicaSet, Job) renders its
//! pod template. Cluster DNS comes from `--cluster-dns` or the dump's
//! `kube-system/kube-dns` Service, the service environment variables from
//! the dump's Services (`kubectl get services -A -o yaml` in the dump).

use super::model::ContainerGroup;
use super::translate::{PodContext, TranslateConfig, Translation, dns, translate_pod};
use crate::policy::PolicySet;
use crate::provider::resolve::{self, SecretData, Sources};
use k8s_openapi::api::core::v1 as k8s;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// What masked values read as.
pub const MASKED: &str = "<masked>";
/// Exit status for a pod spillway cannot run (EX_DATAERR).
pub const EXIT_INVALID_POD: u8 = 65;

/// Print the ARM body spillway would send for a pod.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// The pod (or a workload with a pod template), YAML or JSON.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Directory of BurstPolicy files: the pod's policy decides its `aci`
    /// settings (public IP, DNS label) [default: public IP auto].
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// ConfigMaps and Secrets to resolve references from (`kubectl get
    /// configmaps,secrets -n NS -o yaml`); without it they are placeholders.
    #[arg(long, value_name = "FILE")]
    pub cluster_state: Option<PathBuf>,
    /// Azure region the group goes to.
    #[arg(long, default_value = "westeurope", env = "SPILLWAY_ACI_REGION")]
    pub aci_region: String,
    /// The cluster id the provider tags groups with.
    #[arg(long, default_value = "render", env = "SPILLWAY_CLUSTER_ID")]
    pub cluster_id: String,
    /// A delegated subnet groups go to, as `spillway run --aci-subnet-id`
    /// (repeatable): the body gets `subnetIds` and a private IP.
    #[arg(
        long = "aci-subnet-id",
        value_name = "ID",
        value_parser = crate::provider::cli::parse_subnet_id,
        value_delimiter = ',',
        env = "SPILLWAY_ACI_SUBNET_IDS"
    )]
    pub aci_subnet_ids: Vec<super::translate::SubnetId>,
    /// Cluster DNS server IP(s) for `dnsPolicy: ClusterFirst` (as the
    /// provider's flag) [default: the dump's kube-system/kube-dns Service].
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (search paths of ClusterFirst pods).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// As `spillway run --aci-log-analytics`: NAMESPACE/NAME of the Secret
    /// of the Log Analytics workspace, read from --cluster-state (else
    /// placeholders); the body gets `diagnostics.logAnalytics`, key masked.
    #[arg(
        long,
        value_name = "NS/SECRET",
        value_parser = crate::provider::cli::parse_log_analytics,
        env = "SPILLWAY_ACI_LOG_ANALYTICS"
    )]
    pub aci_log_analytics: Option<resolve::LogAnalyticsSecret>,
}

/// The cluster-wide inputs of a render: cluster DNS IPs and the Services
/// whose environment variables pods get.
#[derive(Debug, Clone, Default)]
pub struct RenderCluster {
    pub cluster_dns: Vec<String>,
    pub services: Vec<k8s::Service>,
    /// `--aci-log-analytics` and its Secret (`None`: not in the dump).
    pub log_analytics: Option<(resolve::LogAnalyticsSecret, Option<SecretData>)>,
}

/// Why a pod cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Invalid(String),
}

/// The documents of a YAML (several, `---`-separated) or JSON file.
fn documents(text: &str) -> Result<Vec<serde_json::Value>, RenderError> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text)
            .map(|v| vec![v])
            .map_err(|e| RenderError::Input(e.to_string()));
    }
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| RenderError::Input(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

const WORKLOADS: [&str; 4] = ["Deployment", "StatefulSet", "ReplicaSet", "Job"];

/// The pod in `text`: the first Pod, or pod template of a workload, among
/// its documents (a manifest may carry a Service or a PDB beside it).
pub fn pod_from_text(text: &str) -> Result<k8s::Pod, RenderError> {
    let docs = documents(text)?;
    let kind_of = |v: &serde_json::Value| {
        v.get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let Some(v) = docs
        .iter()
        .find(|d| kind_of(d) == "Pod" || WORKLOADS.contains(&kind_of(d).as_str()))
    else {
        let kinds: Vec<String> = docs.iter().map(kind_of).collect();
        return Err(RenderError::Input(format!(
            "no Pod or workload (Deployment, StatefulSet, ReplicaSet, Job) in the file; found kind {}",
            if kinds.is_empty() {
                "nothing".to_string()
            } else {
                kinds.join(", ")
            }
        )));
    };
    let kind = kind_of(v);
    if kind == "Pod" {
        return serde_json::from_value(v.clone())
            .map_err(|e| RenderError::Input(format!("Pod: {e}")));
    }
    let template = v
        .pointer("/spec/template")
        .cloned()
        .ok_or_else(|| RenderError::Input(format!("{kind} without spec.template")))?;
    let mut pod: k8s::Pod = serde_json::from_value(template)
        .map_err(|e| RenderError::Input(format!("{kind} spec.template: {e}")))?;
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("workload");
    pod.metadata.name = Some(format!("{name}-render"));
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .map(str::to_string);
    }
    Ok(pod)
}

/// ConfigMaps and Secrets of namespace `ns` in a List (or single object) dump.
pub fn sources_from_dump(text: &str, ns: &str) -> Result<Sources, RenderError> {
    let mut items = Vec::new();
    for v in documents(text)? {
        match v.get("items").and_then(|i| i.as_array()) {
            Some(list) => items.extend(list.iter().cloned()),
            None => items.push(v),
        }
    }
    let mut out = Sources::default();
    for item in items {
        let in_ns = item
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            == ns;
        match item.get("kind").and_then(|k| k.as_str()) {
            Some("ConfigMap") if in_ns => {
                let cm: k8s::ConfigMap = serde_json::from_value(item)
                    .map_err(|e| RenderError::Input(format!("ConfigMap: {e}")))?;
                let name = cm.metadata.name.clone().unwrap_or_default();
                out.config_maps.insert(name, Sources::config_map_data(&cm));
            }
            Some("Secret") if in_ns => {
                let s: k8s::Secret = serde_json::from_value(item)
                    .map_err(|e| RenderError::Input(format!("Secret: {e}")))?;
                let name = s.metadata.name.clone().unwrap_or_default();
                out.secrets.insert(name, Sources::secret_data(&s));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The Services (every namespace) in a List (or single object) dump.
pub fn services_from_dump(text: &str) -> Result<Vec<k8s::Service>, RenderError> {
    let mut out = Vec::new();
    for v in documents(text)? {
        let items = match v.get("items").and_then(|i| i.as_array()) {
            Some(list) => list.clone(),
            None => vec![v],
        };
        for item in items {
            if item.get("kind").and_then(|k| k.as_str()) == Some("Service") {
                out.push(
                    serde_json::from_value(item)
                        .map_err(|e| RenderError::Input(format!("Service: {e}")))?,
                );
            }
        }
    }
    Ok(out)
}

/// Placeholders for everything `pod` refers to: every key it names gets the
/// value `<configmap NAME/KEY>` / `<secret NAME/KEY>`. What it takes whole
/// (`envFrom`, volumes without `items`) has unknown keys: those are listed
/// in the returned notes.
pub fn placeholder_sources(pod: &k8s::Pod) -> (Sources, Vec<String>) {
    use resolve::{RefKind, RefUse};
    let refs = resolve::references(pod);
    let mut out = Sources::default();
    let mut notes = Vec::new();
    let mut cm_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut secret_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return (out, notes);
    };
    resolve::each_reference(pod, |r| {
        let (keys, what) = match r.kind {
            RefKind::ConfigMap => (&mut cm_keys, "configMap"),
            RefKind::Secret => (&mut secret_keys, "secret"),
        };
        let keys = keys.entry(r.name.to_string()).or_default();
        match r.used {
            RefUse::EnvKey { key, .. } => keys.push(key.to_string()),
            RefUse::EnvFrom { container } => notes.push(format!(
                "container {container}: envFrom {what} {}: its keys are unknown without --cluster-state; left out",
                r.name
            )),
            RefUse::Volume {
                items: Some(items), ..
            } => keys.extend(items.into_iter().map(String::from)),
            RefUse::Volume {
                volume,
                projected: false,
                items: None,
            } => notes.push(format!(
                "volume {volume}: {what} {} without items: its files are unknown without --cluster-state",
                r.name
            )),
            RefUse::AzureFile { .. } => keys.extend([
                "azurestorageaccountname".to_string(),
                "azurestorageaccountkey".to_string(),
            ]),
            RefUse::Volume { .. } | RefUse::Csi { .. } | RefUse::ImagePull => {}
        }
    });
    for v in spec.volumes.iter().flatten() {
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &src.service_account_token {
                out.tokens.insert(
                    (v.name.clone(), t.path.clone()),
                    "<service account token>".into(),
                );
            }
        }
    }
    let pull: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    for name in &refs.config_maps {
        let data = cm_keys
            .get(name)
            .into_iter()
            .flatten()
            .map(|k| (k.clone(), format!("<configmap {name}/{k}>").into_bytes()))
            .collect();
        out.config_maps.insert(name.clone(), data);
    }
    for name in &refs.secrets {
        if pull.contains(name) {
            notes.push(format!(
                "imagePullSecrets {name}: registry credentials are unknown without --cluster-state; left out"
            ));
            out.secrets.insert(
                name.clone(),
                SecretData {
                    type_: "kubernetes.io/dockerconfigjson".into(),
                    data: BTreeMap::from([(
                        ".dockerconfigjson".to_string(),
                        br#"{"auths":{}}"#.to_vec(),
                    )]),
                },
            );
            continue;
        }
        let data = secret_keys
            .get(name)
            .into_iter()
            .flatten()
            .map(|k| (k.clone(), format!("<secret {name}/{k}>").into_bytes()))
            .collect();
        out.secrets.insert(
            name.clone(),
            SecretData {
                type_: "Opaque".into(),
                data,
            },
        );
    }
    (out, notes)
}

/// Placeholders for the Log Analytics Secret `r`: `<secret NS/NAME/KEY>`
/// for `workspaceId` and `workspaceKey`.
pub fn log_analytics_placeholder(r: &resolve::LogAnalyticsSecret) -> SecretData {
    SecretData {
        type_: "Opaque".into(),
        data: ["workspaceId", "workspaceKey"]
            .into_iter()
            .map(|k| (k.to_string(), format!("<secret {r}/{k}>").into_bytes()))
            .collect(),
    }
}

/// The ARM body of `group` as JSON, secret material masked.
pub fn masked_body(group: &ContainerGroup) -> serde_json::Value {
    let mut g = group.spec();
    let mask_env = |env: &mut Vec<super::model::EnvironmentVariable>| {
        for e in env {
            if e.secure_value.is_some() {
                e.secure_value = Some(MASKED.into());
            }
        }
    };
    for c in &mut g.properties.containers {
        mask_env(&mut c.properties.environment_variables);
    }
    for c in &mut g.properties.init_containers {
        mask_env(&mut c.properties.environment_variables);
    }
    for v in &mut g.properties.volumes {
        if let Some(s) = &mut v.secret {
            for val in s.values_mut() {
                *val = MASKED.into();
            }
        }
        if let Some(f) = &mut v.azure_file
            && f.storage_account_key.is_some()
        {
            f.storage_account_key = Some(MASKED.into());
        }
    }
    for c in &mut g.properties.image_registry_credentials {
        if c.password.is_some() {
            c.password = Some(MASKED.into());
        }
    }
    if let Some(la) = g
        .properties
        .diagnostics
        .as_mut()
        .and_then(|d| d.log_analytics.as_mut())
    {
        for secret in [&mut la.workspace_key, &mut la.workspace_resource_id] {
            if secret.is_some() {
                *secret = Some(MASKED.into());
            }
        }
    }
    serde_json::to_value(&g).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// Render `pod` as the provider would: its policy's ACI settings, its
/// references resolved from `sources`, then the translation (with the
/// warnings the provider turns into Events, e.g. `LimitsClamped`).
pub fn render(
    pod: &k8s::Pod,
    policies: Option<&PolicySet>,
    sources: &Sources,
    config: &TranslateConfig,
    cluster: &RenderCluster,
) -> Result<Translation, RenderError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let aci = policies
        .and_then(|p| p.for_pod(namespace, &labels))
        .map(|p| p.aci.clone())
        .unwrap_or_default();
    let mut resolved =
        resolve::resolve(pod, sources).map_err(|e| RenderError::Invalid(e.to_string()))?;
    resolved.cluster_dns = cluster.cluster_dns.clone();
    resolved.service_env =
        dns::service_env(namespace, dns::enable_service_links(pod), &cluster.services);
    if let Some((secret, data)) = &cluster.log_analytics {
        resolved.log_analytics = Some(
            resolve::log_analytics(secret, data.as_ref())
                .map_err(|e| RenderError::Invalid(e.to_string()))?,
        );
    }
    let ctx = PodContext {
        config,
        aci: &aci,
        resolved: &resolved,
    };
    translate_pod(pod, &ctx).map_err(|e| RenderError::Invalid(e.to_string()))
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("spillway aci render: {msg}");
    ExitCode::from(code)
}

/// `spillway aci render`.
pub fn run(args: &RenderArgs) -> ExitCode {
    let bad = crate::cli::EXIT_BAD_INPUT;
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return fail(bad, format!("{}: {e}", args.file.display())),
    };
    let pod = match pod_from_text(&text) {
        Ok(p) => p,
        Err(e) => return fail(bad, format!("{}: {e}", args.file.display())),
    };
    let policies = match &args.policies {
        Some(dir) => match crate::policy::load_dir(dir) {
            Ok(set) => Some(set),
            Err(errors) => {
                let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                return fail(
                    bad,
                    format!("{} policy error(s); first: {first}", errors.0.len()),
                );
            }
        },
        None => None,
    };
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut cluster = RenderCluster {
        cluster_dns: match crate::provider::services::parse_cluster_dns(&args.cluster_dns) {
            Ok(ips) => ips,
            Err(e) => return fail(bad, e),
        },
        services: Vec::new(),
        log_analytics: None,
    };
    if let Err(e) = crate::provider::services::check_cluster_domain(&args.cluster_domain) {
        return fail(bad, e);
    }
    let sources = match &args.cluster_state {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| RenderError::Input(e.to_string()))
            .and_then(|t| {
                let la = match &args.aci_log_analytics {
                    Some(r) => Some((
                        r.clone(),
                        sources_from_dump(&t, &r.namespace)?.secrets.remove(&r.name),
                    )),
                    None => None,
                };
                Ok((
                    sources_from_dump(&t, &namespace)?,
                    services_from_dump(&t)?,
                    la,
                ))
            }) {
            Ok((s, services, la)) => {
                cluster.services = services;
                cluster.log_analytics = la;
                s
            }
            Err(e) => return fail(bad, format!("{}: {e}", path.display())),
        },
        None => {
            let (s, notes) = placeholder_sources(&pod);
            for n in notes {
                eprintln!("spillway aci render: note: {n}");
            }
            if let Some(r) = &args.aci_log_analytics {
                eprintln!(
                    "spillway aci render: note: {}: Secret {r}: its logType is unknown without --cluster-state; left out",
                    resolve::LOG_ANALYTICS_FLAG
                );
                cluster.log_analytics = Some((r.clone(), Some(log_analytics_placeholder(r))));
            }
            s
        }
    };
    if cluster.services.is_empty() {
        eprintln!(
            "spillway aci render: note: no Services in --cluster-state (add `kubectl get services -A -o yaml`): the service environment variables (KUBERNETES_SERVICE_HOST, ...) are left out"
        );
    }
    if cluster.cluster_dns.is_empty() {
        let (ns, name) = dns::CLUSTER_DNS_SERVICE;
        cluster.cluster_dns = cluster
            .services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .map(dns::cluster_dns_of)
            .unwrap_or_default();
    }
    let mut config = TranslateConfig::new(args.cluster_id.clone(), args.aci_region.clone());
    config.cluster_domain = args.cluster_domain.clone();
    config.subnets = args.aci_subnet_ids.clone();
    match render(&pod, policies.as_ref(), &sources, &config, &cluster) {
        Ok(Translation { group, warnings }) => {
            for w in warnings {
                eprintln!("spillway aci render: warning: {}: {}", w.reason, w.message);
            }
            match serde_json::to_string_pretty(&masked_body(&group)) {
                // A closed pipe (`| head`) is not an error worth a panic.
                Ok(json) => {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stdout().lock(), "{json}");
                }
                Err(e) => return fail(1, e),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_INVALID_POD, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_hold_every_named_key_and_notes_say_what_is_unknown() {
        let pod: k8s::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "web"},
            "spec": {
                "containers": [{"name": "app", "image": "app:1",
                    "env": [
                        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b"}}}],
                    "envFrom": [{"configMapRef": {"name": "bulk"}}]}],
                "volumes": [
                    {"name": "whole", "configMap": {"name": "files"}},
                    {"name": "some", "secret": {"secretName": "creds", "items": [{"key": "tls.crt", "path": "c"}]}},
                    {"name": "proj", "projected": {"sources": [
                        {"configMap": {"name": "cfg", "items": [{"key": "b", "path": "b"}]}},
                        {"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "share", "azureFile": {"secretName": "storage", "shareName": "s"}}],
                "imagePullSecrets": [{"name": "acr"}],
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let (sources, notes) = placeholder_sources(&pod);
        let keys = |m: Option<&BTreeMap<String, Vec<u8>>>| -> Vec<String> {
            m.map(|m| m.keys().cloned().collect()).unwrap_or_default()
        };
        assert_eq!(keys(sources.config_maps.get("cfg")), ["a", "b"]);
        assert_eq!(keys(sources.config_maps.get("bulk")), Vec::<String>::new());
        assert_eq!(
            keys(sources.secrets.get("creds").map(|s| &s.data)),
            ["b", "tls.crt"]
        );
        assert_eq!(
            keys(sources.secrets.get("storage").map(|s| &s.data)),
            ["azurestorageaccountkey", "azurestorageaccountname"]
        );
        assert_eq!(
            sources.secrets.get("acr").map(|s| s.type_.as_str()),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert!(
            sources
                .tokens
                .contains_key(&("proj".to_string(), "token".to_string()))
        );
        assert_eq!(
            notes,
            [
                "container app: envFrom configMap bulk: its keys are unknown without --cluster-state; left out",
                "volume whole: configMap files without items: its files are unknown without --cluster-state",
                "imagePullSecrets acr: registry credentials are unknown without --cluster-state; left out",
            ]
        );
    }
}
