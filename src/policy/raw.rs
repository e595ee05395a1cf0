//! The on-disk shape of a `BurstPolicy`, exactly as users write it. Every
//! struct denies unknown fields; values that need validation keep their source
//! location (`Spanned`) so errors can point at file:line:column.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
// labels/annotations are accepted so kubectl-style metadata parses; spillway does not read them.
#[allow(dead_code)]
pub struct RawMetadata {
    pub name: Spanned<String>,
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSpec {
    #[serde(default)]
    pub pod_selector: Option<Spanned<RawSelector>>,
    #[serde(default)]
    pub burst: RawBurst,
    #[serde(default)]
    pub budget: RawBudget,
    #[serde(default)]
    pub drain_back: RawDrainBack,
    #[serde(default)]
    pub aci: RawAci,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<RawExpression>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawExpression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBurst {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub spill_after: Option<Spanned<String>>,
    #[serde(default)]
    pub max_vm_wait: Option<Spanned<String>>,
    #[serde(default)]
    pub min_priority: Option<i32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBudget {
    #[serde(default)]
    pub max_pods: Option<u32>,
    #[serde(default)]
    pub max_cpu: Option<Spanned<QuantityValue>>,
    #[serde(default)]
    pub max_memory: Option<Spanned<QuantityValue>>,
    #[serde(default)]
    pub max_hourly_cost: Option<Spanned<f64>>,
}

/// Quantities may be written as a string (`"400"`, `800Gi`) or a bare number.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum QuantityValue {
    Int(u64),
    Float(f64),
    Str(String),
}

impl QuantityValue {
    pub fn as_text(&self) -> String {
        match self {
            QuantityValue::Int(i) => i.to_string(),
            QuantityValue::Float(f) => f.to_string(),
            QuantityValue::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDrainBack {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub after: Option<Spanned<String>>,
    #[serde(default)]
    pub max_per_minute: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAci {
    #[serde(default)]
    pub public_ip: Option<Spanned<String>>,
    #[serde(default)]
    pub dns_name_label: Option<Spanned<String>>,
    /// `clamp-limits` (default) or `raise-requests`.
    #[serde(default)]
    pub resources: Option<Spanned<String>>,
    /// `private` or `public` (default: private when spillway has subnets).
    #[serde(default)]
    pub network: Option<Spanned<String>>,
}
