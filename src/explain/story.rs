//! `spillway explain --pod NAME`: one pending pod's whole story — the policy
//! that governs it and why, its namespace's budget use, the VM ETA and what
//! it rests on, every node considered and why each was refused, and the
//! verdict.
//!
//! Built from the same snapshot and engine pass as the rows; nothing here
//! decides anything the engine does not.

use super::{PINNED_NOTE, budget_use};
use crate::decision::{Decision, PendingPod, Snapshot};
use crate::policy::{BurstPolicy, PolicySet};
use crate::units::{Duration, Resources, Timestamp};
use serde::Serialize;
use std::fmt::Write as _;

/// Everything `explain --pod` says about one pending pod.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub namespace: String,
    pub name: String,
    pub pending_since: Timestamp,
    pub pending_for: Duration,
    pub requests: Quantities,
    pub priority: i32,
    /// Selects the virtual node itself (no VM can take it).
    pub pinned: bool,
    /// What the webhook removed to relax its pin to the virtual node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relaxed_pin: Option<String>,
    pub tolerates_virtual_node: bool,
    /// The virtual node it would spill to: the first (by name) that runs
    /// its operating system (`kubernetes.io/os`; with `--aci-windows` a
    /// Windows pod's is the Windows node). `None`: no virtual node runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_node: Option<String>,
    /// Why ACI cannot run it, if it cannot.
    pub aci_incompatible: Option<String>,
    pub policy: Option<PolicyStory>,
    /// Namespace burst usage against the policy's budget.
    pub budget: String,
    pub verdict: String,
    pub reason: String,
    pub detail: String,
    /// For `wait`: when the wait ends.
    pub until: Option<Timestamp>,
    /// When VM room is predicted for it, if any pool can provide it.
    pub vm_eta: Option<Timestamp>,
    pub pools: Vec<PoolStory>,
    pub nodes: Vec<NodeStory>,
}

/// CPU and memory as Kubernetes quantities.
#[derive(Debug, Clone, Serialize)]
pub struct Quantities {
    pub cpu: String,
    pub memory: String,
}

impl From<Resources> for Quantities {
    fn from(r: Resources) -> Self {
        Quantities {
            cpu: format!("{}m", r.cpu_millis),
            memory: format!("{}Mi", r.memory_bytes / (1024 * 1024)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyStory {
    /// `namespace/name` (`*/name` for the cluster default).
    pub id: String,
    /// The file it came from.
    pub source: String,
    /// Why it governs this pod.
    pub selected_because: String,
    pub mode: String,
    pub spill_after: Duration,
    pub max_vm_wait: Duration,
    pub min_priority: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStory {
    pub name: String,
    /// Why a new node of this pool would not take the pod, if it would not.
    pub refused: Option<String>,
    pub nodes: u32,
    pub max: u32,
    /// When each node it has asked for and that has not joined was requested.
    pub upcoming: Vec<Timestamp>,
    pub provision_time: Duration,
    /// `observed` (cluster-autoscaler status or joined nodes) or `default`.
    pub provision_time_source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStory {
    pub name: String,
    pub pool: String,
    /// Free room now (allocatable minus what its pods request).
    pub free: Quantities,
    /// Why it cannot take the pod, or `None` when it has room for it now
    /// (other pending pods may claim that room first: see the verdict).
    pub refused: Option<String>,
}

fn policy_story(p: &BurstPolicy) -> PolicyStory {
    let selected_because = match &p.namespace {
        None => "cluster default: no policy in the pod's namespace selects it".to_string(),
        Some(ns) => {
            let mut parts: Vec<String> = p
                .selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.extend(
                p.selector
                    .match_expressions
                    .iter()
                    .map(|(k, op)| format!("{k} {op:?}")),
            );
            if parts.is_empty() {
                format!("the most specific policy in namespace {ns}; it selects every pod")
            } else {
                format!(
                    "the most specific policy in namespace {ns} whose selector matches the pod's labels ({})",
                    parts.join(", ")
                )
            }
        }
    };
    PolicyStory {
        id: p.id(),
        source: p.source.clone(),
        selected_because,
        mode: format!("{:?}", p.burst.mode),
        spill_after: p.burst.spill_after,
        max_vm_wait: p.burst.max_vm_wait,
        min_priority: p.burst.min_priority,
    }
}

fn fits(need: &Resources, free: &Resources) -> Option<String> {
    let mut short = Vec::new();
    if need.cpu_millis > free.cpu_millis {
        short.push(format!(
            "cpu (needs {}m, {}m free)",
            need.cpu_millis, free.cpu_millis
        ));
    }
    if need.memory_bytes > free.memory_bytes {
        short.push(format!(
            "memory (needs {}Mi, {}Mi free)",
            need.memory_bytes / (1024 * 1024),
            free.memory_bytes / (1024 * 1024)
        ));
    }
    (!short.is_empty()).then(|| format!("insufficient {}", short.join(", ")))
}

/// The story of `snap.pending[i]`, whose decision is `decision`.
#[allow(clippy::too_many_arguments)]
pub fn story(
    snap: &Snapshot,
    i: usize,
    decision: &Decision,
    policies: &PolicySet,
    default_provision_time: Duration,
    pinned: bool,
    now: Timestamp,
) -> Story {
    let pod: &PendingPod = &snap.pending[i];
    let policy = policies.for_pod(&pod.namespace, &pod.labels);
    let usage = snap
        .burst_usage
        .get(&pod.namespace)
        .copied()
        .unwrap_or_default();
    let pools = snap
        .pools
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            let refused = if snap.pool_admits(pod, pi) {
                fits(&pod.requests, &p.node_allocatable)
                    .map(|s| format!("a new node is too small: {s}"))
            } else if let Some(want) = pod.pool.as_ref().filter(|w| **w != p.name) {
                Some(format!("the pod asks for pool {want}"))
            } else {
                let class = p.class.map(|c| snap.class(c));
                Some(
                    class
                        .and_then(|c| pod.placement.refusal(c, ""))
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "its nodes' labels or taints refuse the pod".into()),
                )
            };
            PoolStory {
                name: p.name.clone(),
                refused,
                nodes: p.nodes,
                max: p.max,
                upcoming: p.upcoming.iter().map(|u| u.requested_at).collect(),
                provision_time: p.provision_time.unwrap_or(default_provision_time),
                provision_time_source: if p.provision_time.is_some() {
                    "observed".into()
                } else {
                    "default".into()
                },
            }
        })
        .collect();
    let mut nodes: Vec<NodeStory> = snap
        .nodes
        .iter()
        .enumerate()
        .map(|(ni, n)| {
            let free = n.free_room();
            let refused = if !n.schedulable {
                Some("not schedulable (cordoned or not Ready)".to_string())
            } else if !snap.node_admits(pod, ni) {
                match pod.pool.as_ref().filter(|w| **w != n.pool) {
                    Some(want) => Some(format!("the pod asks for pool {want}")),
                    None => Some(
                        pod.placement
                            .refusal(snap.class(n.class), &n.name)
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "its labels or taints refuse the pod".into()),
                    ),
                }
            } else if n.free_slots() == 0 {
                Some(format!(
                    "too many pods ({} of {} allocatable)",
                    n.pods,
                    n.max_pods.unwrap_or_default()
                ))
            } else {
                fits(&pod.requests, &free)
            };
            NodeStory {
                name: n.name.clone(),
                pool: n.pool.clone(),
                free: free.into(),
                refused,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Story {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        pending_since: pod.pending_since,
        pending_for: now.since(pod.pending_since),
        requests: pod.requests.into(),
        priority: pod.priority,
        pinned,
        relaxed_pin: None,
        tolerates_virtual_node: pod.tolerates_virtual,
        virtual_node: None,
        aci_incompatible: pod.aci_incompatible.clone(),
        policy: policy.map(policy_story),
        budget: budget_use(policy, &usage),
        verdict: decision.verdict.to_string(),
        reason: decision.reason.to_string(),
        detail: decision.detail.clone(),
        until: decision.until,
        vm_eta: decision.vm_eta,
        pools,
        nodes,
    }
}

/// The story for people.
pub fn render_text(s: &Story) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Pod:        {}/{}", s.namespace, s.name);
    let _ = writeln!(
        o,
        "Pending:    since {} ({})",
        s.pending_since.to_rfc3339(),
        s.pending_for
    );
    let _ = writeln!(
        o,
        "Requests:   cpu {}, memory {}; priority {}",
        s.requests.cpu, s.requests.memory, s.priority
    );
    let virt = match (&s.aci_incompatible, s.tolerates_virtual_node, s.pinned) {
        (Some(why), _, _) => format!("ACI cannot run it: {why}"),
        (None, _, true) => PINNED_NOTE.to_string(),
        (None, _, false) if s.relaxed_pin.is_some() => {
            super::relaxed_note(s.relaxed_pin.as_deref().unwrap_or_default())
        }
        (None, true, false) => "tolerates the virtual node".to_string(),
        (None, false, false) => "does not tolerate the virtual node's taint: VMs only".to_string(),
    };
    let _ = writeln!(o, "Virtual:    {virt}");
    if let Some(n) = &s.virtual_node {
        let _ = writeln!(o, "Spills to:  {n}");
    }
    match &s.policy {
        Some(p) => {
            let _ = writeln!(o, "Policy:     {} ({})", p.id, p.source);
            let _ = writeln!(o, "            {}", p.selected_because);
            let _ = writeln!(
                o,
                "            mode {}, spillAfter {}, maxVmWait {}, minPriority {}",
                p.mode, p.spill_after, p.max_vm_wait, p.min_priority
            );
        }
        None => {
            let _ = writeln!(
                o,
                "Policy:     none selects it (it never bursts; add a cluster default)"
            );
        }
    }
    let _ = writeln!(o, "Budget:     {}", s.budget);
    let _ = writeln!(
        o,
        "VM ETA:     {}",
        s.vm_eta
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "none: no pool can provide room for it".into())
    );
    let _ = writeln!(o, "Verdict:    {} ({})", s.verdict, s.reason);
    if !s.detail.is_empty() {
        let _ = writeln!(o, "            {}", s.detail);
    }
    if let Some(until) = s.until {
        let _ = writeln!(o, "            until {}", until.to_rfc3339());
    }
    let _ = writeln!(o, "\nPools:");
    if s.pools.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for p in &s.pools {
        let upcoming = if p.upcoming.is_empty() {
            "none coming".to_string()
        } else {
            format!(
                "{} coming (asked at {})",
                p.upcoming.len(),
                p.upcoming
                    .iter()
                    .map(|t| t.to_rfc3339())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            o,
            "  {:<16} {}/{} nodes, {}; provision time {} ({}){}",
            p.name,
            p.nodes,
            p.max,
            upcoming,
            p.provision_time,
            p.provision_time_source,
            p.refused
                .as_ref()
                .map(|r| format!(" — refused: {r}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(o, "\nNodes considered:");
    if s.nodes.is_empty() {
        let _ = writeln!(o, "  (no VM nodes)");
    }
    for n in &s.nodes {
        let _ = writeln!(
            o,
            "  {:<24} {:<16} free cpu {}, memory {}: {}",
            n.name,
            n.pool,
            n.free.cpu,
            n.free.memory,
            n.refused.as_deref().unwrap_or("has room now")
        );
    }
    o
}
