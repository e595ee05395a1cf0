//! Burst policies: the per-namespace rules that say when a pod may spill onto
//! the virtual node, how much, and when it comes back.
//!
//! This module owns parsing (strict, with file:line:column errors), validation
//! and lookup (`PolicySet::for_pod`). It does no I/O except reading the policy
//! files it is pointed at, and it never decides anything: the decision engine
//! reads policies, policies do not read the cluster.

pub mod check;
mod raw;
pub mod reload;

use crate::units::{Duration, parse_cpu_millis, parse_memory_bytes};
use raw::{QuantityValue, RawPolicy, RawSelector};
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const API_VERSION: &str = "spillway.io/v1alpha1";
pub const KIND: &str = "BurstPolicy";

/// When a policy lets pods onto the virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BurstMode {
    /// Wait for VMs first; spill when the wait is too long (the point of spillway).
    Auto,
    /// Never use the virtual node.
    Never,
    /// Use the virtual node at once, like the stock AKS virtual node.
    Always,
}

/// Whether ACI container groups get a public IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PublicIp {
    /// Only when the pod declares container ports.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A Kubernetes label selector (matchLabels + matchExpressions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<(String, SelectorOp)>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, op)| match op {
                SelectorOp::In(vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                SelectorOp::NotIn(vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                SelectorOp::Exists => labels.contains_key(k),
                SelectorOp::DoesNotExist => !labels.contains_key(k),
            })
    }
    /// More requirements = more specific. An empty selector matches everything.
    pub fn specificity(&self) -> usize {
        self.match_labels.len() + self.match_expressions.len()
    }
    /// Could one pod satisfy both selectors? Exact for matchLabels; for
    /// expressions we only treat identical requirement lists as overlapping.
    fn may_overlap(&self, other: &LabelSelector) -> bool {
        let labels_compatible = self
            .match_labels
            .iter()
            .all(|(k, v)| other.match_labels.get(k).is_none_or(|ov| ov == v));
        labels_compatible && self.match_expressions == other.match_expressions
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BurstSettings {
    pub mode: BurstMode,
    pub spill_after: Duration,
    pub max_vm_wait: Duration,
    pub min_priority: i32,
}

/// Per-namespace ceilings on what may run on the virtual node at once.
/// `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Budget {
    pub max_pods: Option<u32>,
    pub max_cpu_millis: Option<u64>,
    pub max_memory_bytes: Option<u64>,
    pub max_hourly_cost: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrainBack {
    pub enabled: bool,
    pub after: Duration,
    pub max_per_minute: u32,
}

/// How a pod's resources become ACI's: ACI refuses a container whose limit
/// is above the container group's total request
/// (`ContainerLimitGreaterThanContainerGroupTotalRequest`), which the usual
/// Burstable pod (requests below limits) would hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum AciResources {
    /// Lower such limits to the group's total request (an Event says so);
    /// ACI bills the requests as asked.
    #[default]
    ClampLimits,
    /// Raise the group's request to the largest limit; the larger request is
    /// what ACI bills and what budgets count.
    RaiseRequests,
}

/// Where ACI container groups sit on the network (`aci.network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AciNetwork {
    /// In a delegated subnet of the cluster's VNet (`--aci-subnet-id`), with
    /// a private IP; ACI gives such a group no public IP and no DNS label.
    Private,
    /// Outside any VNet: a public IP per `publicIp`, or no IP.
    Public,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AciSettings {
    /// `auto` gives a public IP to pods that declare ports, on a public
    /// network only (so on a private network it behaves as `never`).
    pub public_ip: PublicIp,
    pub dns_name_label: Option<String>,
    /// `aci.resources`.
    pub resources: AciResources,
    /// `aci.network`; `None` = `private` when spillway has subnets
    /// (`--aci-subnet-id`), `public` otherwise.
    pub network: Option<AciNetwork>,
}

impl Default for AciSettings {
    /// What a pod gets without a policy: public IP when it has ports, no DNS
    /// label, limits clamped.
    fn default() -> Self {
        AciSettings {
            public_ip: PublicIp::Auto,
            dns_name_label: None,
            resources: AciResources::ClampLimits,
            network: None,
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstPolicy {
    pub name: String,
    /// `None` = the cluster default, which applies to pods no namespaced policy selects.
    pub namespace: Option<String>,
    pub selector: LabelSelector,
    pub burst: BurstSettings,
    pub budget: Budget,
    pub drain_back: DrainBack,
    pub aci: AciSettings,
    /// Where it came from, for messages: the file, and the line and column
    /// of its `metadata.name` (0 when built in code).
    pub source: String,
    pub line: u64,
    pub column: u64,
}

impl BurstPolicy {
    /// `namespace/name`, or `*/name` for the cluster default.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace.as_deref().unwrap_or("*"), self.name)
    }

    /// `file:line:column` of its `metadata.name`, or just the file when unknown.
    pub fn place(&self) -> String {
        if self.line == 0 {
            self.source.clone()
        } else {
            format!("{}:{}:{}", self.source, self.line, self.column)
        }
    }

    /// A policy with the documented defaults (mode Auto, spillAfter 30s,
    /// maxVmWait 2m, no budgets, drain-back on after 5m).
    pub fn defaults(name: &str, namespace: Option<&str>) -> Self {
        BurstPolicy {
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            selector: LabelSelector::default(),
            burst: BurstSettings {
                mode: BurstMode::Auto,
                spill_after: DEFAULT_SPILL_AFTER,
                max_vm_wait: DEFAULT_MAX_VM_WAIT,
                min_priority: i32::MIN,
            },
            budget: Budget::default(),
            drain_back: DrainBack {
                enabled: true,
                after: DEFAULT_DRAIN_AFTER,
                max_per_minute: DEFAULT_DRAIN_PER_MINUTE,
            },
            aci: AciSettings::default(),
            source: "<built-in>".into(),
            line: 0,
            column: 0,
        }
    }
}

pub const DEFAULT_SPILL_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_VM_WAIT: Duration = Duration::from_secs(120);
pub const DEFAULT_DRAIN_AFTER: Duration = Duration::from_mins(5);
pub const DEFAULT_DRAIN_PER_MINUTE: u32 = 10;

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path such as `spec.burst.spillAfter` (empty for syntax errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not about a place in the file (it could not be read at all).
            write!(f, "{}: ", self.file)?;
        } else {
            crate::located::write_at(f, &self.file, self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every error found while loading a set of policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::located::write_all(f, &self.0)
    }
}

struct Collector<'a> {
    file: &'a str,
    errors: Vec<PolicyError>,
}

impl Collector<'_> {
    fn at(&mut self, loc: Location, field: &str, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.to_string(),
            line: loc.line(),
            column: loc.column(),
            field: field.to_string(),
            message: message.into(),
        });
    }
    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match Duration::parse(&s.value) {
                Ok(d) => d,
                Err(e) => {
                    self.at(s.referenced, field, e);
                    default
                }
            },
        }
    }
    fn quantity(
        &mut self,
        v: &Option<Spanned<QuantityValue>>,
        field: &str,
        parse: fn(&str) -> Result<u64, String>,
    ) -> Option<u64> {
        let s = v.as_ref()?;
        match parse(&s.value.as_text()) {
            Ok(q) => Some(q),
            Err(e) => {
                self.at(s.referenced, field, e);
                None
            }
        }
    }
}

fn validate(raw: RawPolicy, file: &str, errors: &mut Vec<PolicyError>) -> Option<BurstPolicy> {
    let mut c = Collector {
        file,
        errors: Vec::new(),
    };
    if raw.api_version.value != API_VERSION {
        c.at(
            raw.api_version.referenced,
            "apiVersion",
            format!("expected {API_VERSION:?}, got {:?}", raw.api_version.value),
        );
    }
    if raw.kind.value != KIND {
        c.at(
            raw.kind.referenced,
            "kind",
            format!("expected {KIND:?}, got {:?}", raw.kind.value),
        );
    }
    let name = raw.metadata.name.value.clone();
    let (line, column) = (
        raw.metadata.name.referenced.line(),
        raw.metadata.name.referenced.column(),
    );
    if !is_dns_label(&name, 253) {
        c.at(
            raw.metadata.name.referenced,
            "metadata.name",
            format!("{name:?} is not a valid Kubernetes object name"),
        );
    }
    let namespace = match &raw.metadata.namespace {
        Some(ns) if !is_dns_label(&ns.value, 63) => {
            c.at(
                ns.referenced,
                "metadata.namespace",
                format!("{:?} is not a valid namespace name", ns.value),
            );
            None
        }
        Some(ns) => Some(ns.value.clone()),
        None => None,
    };
    let selector = match &raw.spec.pod_selector {
        None => LabelSelector::default(),
        Some(sel) => selector_from_raw(&sel.value, sel.referenced, &mut c),
    };
    let spec = &raw.spec;
    let mode = match spec.burst.mode.as_ref() {
        None => BurstMode::Auto,
        Some(m) => match m.value.as_str() {
            "Auto" => BurstMode::Auto,
            "Never" => BurstMode::Never,
            "Always" => BurstMode::Always,
            other => {
                c.at(
                    m.referenced,
                    "spec.burst.mode",
                    format!("unknown mode {other:?} (expected Auto, Never or Always)"),
                );
                BurstMode::Auto
            }
        },
    };
    let spill_after = c.duration(
        &spec.burst.spill_after,
        "spec.burst.spillAfter",
        DEFAULT_SPILL_AFTER,
    );
    let max_vm_wait = c.duration(
        &spec.burst.max_vm_wait,
        "spec.burst.maxVmWait",
        DEFAULT_MAX_VM_WAIT.max(spill_after),
    );
    let max_cpu_millis = c.quantity(&spec.budget.max_cpu, "spec.budget.maxCpu", parse_cpu_millis);
    let max_memory_bytes = c.quantity(
        &spec.budget.max_memory,
        "spec.budget.maxMemory",
        parse_memory_bytes,
    );
    let max_hourly_cost = match &spec.budget.max_hourly_cost {
        Some(v) if !(v.value.is_finite() && v.value >= 0.0) => {
            c.at(
                v.referenced,
                "spec.budget.maxHourlyCost",
                format!(
                    "must be a non-negative number of USD per hour, got {}",
                    v.value
                ),
            );
            None
        }
        Some(v) => Some(v.value),
        None => None,
    };
    let drain_after = c.duration(
        &spec.drain_back.after,
        "spec.drainBack.after",
        DEFAULT_DRAIN_AFTER,
    );
    let max_per_minute = match &spec.drain_back.max_per_minute {
        Some(v) if v.value == 0 => {
            c.at(
                v.referenced,
                "spec.drainBack.maxPerMinute",
                "must be at least 1 (set enabled: false to turn drain-back off)",
            );
            DEFAULT_DRAIN_PER_MINUTE
        }
        Some(v) => v.value,
        None => DEFAULT_DRAIN_PER_MINUTE,
    };
    let public_ip = match &spec.aci.public_ip {
        None => PublicIp::Auto,
        Some(p) => match p.value.as_str() {
            "auto" => PublicIp::Auto,
            "always" => PublicIp::Always,
            "never" => PublicIp::Never,
            other => {
                c.at(
                    p.referenced,
                    "spec.aci.publicIp",
                    format!("unknown value {other:?} (expected auto, always or never)"),
                );
                PublicIp::Auto
            }
        },
    };
    let dns_name_label =
        spec.aci
            .dns_name_label
            .as_ref()
            .and_then(|t| match check_dns_template(&t.value) {
                Ok(()) => Some(t.value.clone()),
                Err(e) => {
                    c.at(t.referenced, "spec.aci.dnsNameLabel", e);
                    None
                }
            });
    let resources = match &spec.aci.resources {
        None => AciResources::ClampLimits,
        Some(r) => match r.value.as_str() {
            "clamp-limits" => AciResources::ClampLimits,
            "raise-requests" => AciResources::RaiseRequests,
            other => {
                c.at(
                    r.referenced,
                    "spec.aci.resources",
                    format!("unknown value {other:?} (expected clamp-limits or raise-requests)"),
                );
                AciResources::ClampLimits
            }
        },
    };
    let network = match &spec.aci.network {
        None => None,
        Some(n) => match n.value.as_str() {
            "private" => Some(AciNetwork::Private),
            "public" => Some(AciNetwork::Public),
            other => {
                c.at(
                    n.referenced,
                    "spec.aci.network",
                    format!("unknown value {other:?} (expected private or public)"),
                );
                None
            }
        },
    };
    // ARM refuses a public IP and a DNS name label on a group in a VNet
    // (container-instances-virtual-network-concepts, "Unsupported networking
    // scenarios": "Public IP or DNS label"), so a private policy cannot ask
    // for either.
    if network == Some(AciNetwork::Private) {
        if let Some(p) = spec.aci.public_ip.as_ref().filter(|p| p.value == "always") {
            c.at(
                p.referenced,
                "spec.aci.publicIp",
                "always contradicts network: private (ACI gives no public IP to a container group in a virtual network); use never, or network: public",
            );
        }
        if let Some(t) = &spec.aci.dns_name_label {
            c.at(
                t.referenced,
                "spec.aci.dnsNameLabel",
                "a DNS name label needs a public IP, which ACI does not give to a container group in a virtual network (network: private); remove it, or use network: public",
            );
        }
    }
    let ok = c.errors.is_empty();
    errors.append(&mut c.errors);
    ok.then(|| BurstPolicy {
        name,
        namespace,
        selector,
        burst: BurstSettings {
            mode,
            spill_after,
            max_vm_wait,
            min_priority: spec.burst.min_priority.unwrap_or(i32::MIN),
        },
        budget: Budget {
            max_pods: spec.budget.max_pods,
            max_cpu_millis,
            max_memory_bytes,
            max_hourly_cost,
        },
        drain_back: DrainBack {
            enabled: spec.drain_back.enabled.unwrap_or(true),
            after: drain_after,
            max_per_minute,
        },
        aci: AciSettings {
            public_ip,
            dns_name_label,
            resources,
            network,
        },
        source: file.to_string(),
        line,
        column,
    })
}

fn selector_from_raw(raw: &RawSelector, loc: Location, c: &mut Collector) -> LabelSelector {
    let mut exprs = Vec::new();
    for (i, e) in raw.match_expressions.iter().enumerate() {
        let field = format!("spec.podSelector.matchExpressions[{i}]");
        let op = match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                c.at(
                    loc,
                    &field,
                    format!("operator {} needs at least one value", e.operator),
                );
                continue;
            }
            "In" => SelectorOp::In(e.values.clone()),
            "NotIn" => SelectorOp::NotIn(e.values.clone()),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                c.at(
                    loc,
                    &field,
                    format!("operator {} takes no values", e.operator),
                );
                continue;
            }
            "Exists" => SelectorOp::Exists,
            "DoesNotExist" => SelectorOp::DoesNotExist,
            other => {
                c.at(
                    loc,
                    &field,
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists, DoesNotExist)"
                    ),
                );
                continue;
            }
        };
        exprs.push((e.key.clone(), op));
    }
    LabelSelector {
        match_labels: raw.match_labels.clone(),
        match_expressions: exprs,
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// DNS name label templates may use `{{namespace}}` and `{{name}}`.
fn check_dns_template(t: &str) -> Result<(), String> {
    let probe = render_dns_label(t, "ns", "pod");
    if probe.contains("{{") || probe.contains("}}") {
        return Err(format!(
            "template {t:?} uses an unknown placeholder (only {{{{namespace}}}} and {{{{name}}}})"
        ));
    }
    if !is_dns_label(&probe, 63) || probe.contains('.') {
        return Err(format!(
            "template {t:?} does not render to a DNS label (lowercase letters, digits, '-')"
        ));
    }
    Ok(())
}

/// Render a DNS name label template for a pod.
pub fn render_dns_label(template: &str, namespace: &str, name: &str) -> String {
    template
        .replace("{{namespace}}", namespace)
        .replace("{{name}}", name)
}

/// Parse every policy document in one file's text. Every error found is
/// appended to `errors` (see [`check::parse_documents`]); only documents
/// without errors yield a policy.
pub fn parse_file(text: &str, file: &str, errors: &mut Vec<PolicyError>) -> Vec<BurstPolicy> {
    check::parse_documents(text, file, errors)
}

/// An immutable, validated set of policies with lookup by pod.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Arc<BurstPolicy>>,
    by_namespace: BTreeMap<String, Vec<usize>>,
    default: Option<usize>,
}

impl PolicySet {
    /// Build a set, checking for conflicts (duplicate names, two cluster
    /// defaults, two policies of equal specificity that could select the same pod).
    pub fn new(policies: Vec<BurstPolicy>) -> Result<Self, PolicyErrors> {
        let mut errors = Vec::new();
        let mut set = PolicySet::default();
        for p in policies {
            let idx = set.policies.len();
            // Reported at this policy, naming where the other one is, so both
            // places are in the message.
            let conflict_err = |other: &BurstPolicy, field: &str, why: &str| PolicyError {
                file: p.source.clone(),
                line: p.line.max(1),
                column: p.column.max(1),
                field: field.into(),
                message: format!("{} {why} {} (at {})", p.id(), other.id(), other.place()),
            };
            let mut clashes = Vec::new();
            match &p.namespace {
                None => {
                    if let Some(d) = set.default {
                        clashes.push(conflict_err(
                            &set.policies[d],
                            "metadata.namespace",
                            "is a second cluster default besides",
                        ));
                    }
                }
                Some(ns) => {
                    let existing = set.by_namespace.get(ns).map(Vec::as_slice).unwrap_or(&[]);
                    for &j in existing {
                        let other = &set.policies[j];
                        if other.name == p.name {
                            clashes.push(conflict_err(
                                other,
                                "metadata.name",
                                "has the same name as",
                            ));
                        } else if other.selector.specificity() == p.selector.specificity()
                            && other.selector.may_overlap(&p.selector)
                        {
                            clashes.push(conflict_err(
                                other,
                                "spec.podSelector",
                                "claims the same pods with equal specificity as",
                            ));
                        }
                    }
                }
            }
            if !clashes.is_empty() {
                errors.extend(clashes);
                continue;
            }
            match &p.namespace {
                None => set.default = Some(idx),
                Some(ns) => set.by_namespace.entry(ns.clone()).or_default().push(idx),
            }
            set.policies.push(Arc::new(p));
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// A set with only the given cluster default.
    pub fn with_default(policy: BurstPolicy) -> Self {
        let mut p = policy;
        p.namespace = None;
        PolicySet {
            policies: vec![Arc::new(p)],
            by_namespace: BTreeMap::new(),
            default: Some(0),
        }
    }

    /// The policy that governs a pod: the most specific matching policy in its
    /// namespace, else the cluster default if it matches, else none.
    pub fn for_pod(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&BurstPolicy> {
        let best = self.by_namespace.get(namespace).and_then(|idxs| {
            idxs.iter()
                .map(|&i| &self.policies[i])
                .filter(|p| p.selector.matches(labels))
                // Ties cannot match the same pod (rejected in `new`), but keep
                // the choice deterministic regardless: by name.
                .max_by(|a, b| {
                    a.selector
                        .specificity()
                        .cmp(&b.selector.specificity())
                        .then_with(|| b.name.cmp(&a.name))
                })
        });
        best.map(|p| p.as_ref()).or_else(|| {
            self.default
                .map(|d| self.policies[d].as_ref())
                .filter(|p| p.selector.matches(labels))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &BurstPolicy> {
        self.policies.iter().map(|p| p.as_ref())
    }
    pub fn len(&self) -> usize {
        self.policies.len()
    }
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
    /// Namespaces that have their own policies.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.by_namespace.keys().map(String::as_str)
    }
    /// The policy for a namespace's budget: the namespace's policies share one
    /// budget; the most permissive (first by name) is used when they differ.
    pub fn budget_policy(&self, namespace: &str) -> Option<&BurstPolicy> {
        match self.by_namespace.get(namespace) {
            Some(idxs) => idxs
                .iter()
                .map(|&i| self.policies[i].as_ref())
                .min_by(|a, b| a.name.cmp(&b.name)),
            None => self.default.map(|d| self.policies[d].as_ref()),
        }
    }
}

/// Files considered policy files in a directory: `*.yaml` / `*.yml`, sorted,
/// skipping hidden files (ConfigMap mounts keep `..data` symlinks there).
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            is_policy_file_name(p.file_name().and_then(|n| n.to_str()).unwrap_or("")) && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a file of a policy directory holds policies: `*.yaml`/`*.yml`,
/// not hidden (a mounted ConfigMap's `..data` links are).
pub fn is_policy_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Load and validate policy files given as (name, text), as [`load_dir`]
/// reads a directory's files (names in that order, e.g. a ConfigMap's keys).
pub fn load_texts<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    for (name, text) in files {
        policies.extend(parse_file(text, name, &mut errors));
    }
    let set = PolicySet::new(policies);
    match set {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(more) => {
            errors.extend(more.0);
            Err(PolicyErrors(errors))
        }
    }
}

/// Load and validate every policy file in `dir`, reporting every error found
/// (the same reading as `spillway policy check`, see [`check::check_paths`]).
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    let report = check::check_paths(&[dir.to_path_buf()]);
    match report.set {
        Some(set) if report.errors.is_empty() => Ok(set),
        _ => Err(PolicyErrors(report.errors)),
    }
}

#[cfg(test)]
mod tests;
