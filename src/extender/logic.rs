//! The extender's answers, as functions of (state, decoded request). No HTTP here.

use super::reservations::{self, Outcome, Reservation, ReservationError, SharedReservations};
use super::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, HostPriority, MAX_PRIORITY, MetaPod,
    MetaVictims, NodeIdentity, NodeList,
};
use super::{AppState, ExtenderError};
use crate::cluster;
use crate::decision::{BurstUsage, Decision, Reason, Snapshot, Verdict};
use crate::policy::BurstMode;
use crate::units::{Resources, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

/// What the extender does with the virtual node for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterDecision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// `None`: keep the virtual node. `Some(message)`: refuse it with this message.
    pub refusal: Option<String>,
}

/// The candidates of a filter/prioritize call, in the form they came in.
enum Candidates {
    Names(Vec<String>),
    /// The list as sent, and what the extender reads of each item.
    Nodes(NodeList, Vec<NodeIdentity>),
}

fn invalid(verb: &'static str, message: impl Into<String>) -> ExtenderError {
    ExtenderError::Invalid {
        verb,
        message: message.into(),
    }
}

/// The pod, which must be present and have a namespace.
fn require_pod(verb: &'static str, pod: Option<Pod>) -> Result<Pod, ExtenderError> {
    let pod = pod.ok_or_else(|| invalid(verb, "Pod is missing or null"))?;
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(verb, "Pod has no metadata.namespace"));
    }
    Ok(pod)
}

fn candidates(verb: &'static str, args: &mut ExtenderArgs) -> Result<Candidates, ExtenderError> {
    if let Some(names) = args.node_names.take() {
        Ok(Candidates::Names(names))
    } else if let Some(list) = args.nodes.take() {
        let ids = list
            .items
            .iter()
            .enumerate()
            .map(|(i, n)| {
                NodeIdentity::of(n).map_err(|e| ExtenderError::Malformed {
                    verb,
                    message: format!("Nodes.items[{i}]: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Candidates::Nodes(list, ids))
    } else {
        Err(invalid(verb, "neither NodeNames nor Nodes is set"))
    }
}

/// Whether a candidate is the virtual node: by label/taint when the node
/// object came with the request, by name (seen in the cluster or configured)
/// otherwise.
struct VirtualTest<'a> {
    config: &'a cluster::ClusterConfig,
    /// Every known virtual node name (seen in the cluster or configured):
    /// a handful, checked length-first, since requests carry thousands of
    /// VM names that almost never share a virtual name's length.
    names: Vec<&'a str>,
}

impl<'a> VirtualTest<'a> {
    fn new(state: &'a cluster::ClusterState, config: &'a cluster::ClusterConfig) -> Self {
        let mut names: Vec<&str> = state
            .virtual_nodes
            .iter()
            .chain(config.virtual_nodes.names.iter())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        VirtualTest { config, names }
    }

    fn name(&self, name: &str) -> bool {
        self.names
            .iter()
            .any(|v| v.len() == name.len() && *v == name)
    }
    fn node(&self, node: &NodeIdentity) -> bool {
        let matcher = &self.config.virtual_nodes;
        matcher.matches(
            node.name(),
            node.metadata.labels.as_ref(),
            node.taint_keys(),
        ) || self.name(node.name())
    }
}

/// The operating system a pod runs: its `kubernetes.io/os` node selector or
/// required affinity (one value), else `spec.os.name`, else `linux` (what a
/// pod that names none gets on a virtual node: a Linux container group).
pub fn pod_os(pod: &Pod) -> String {
    let placement = cluster::constraints::pod_placement(pod);
    placement
        .single_value(OS_LABEL)
        .map(str::to_string)
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.os.as_ref())
                .map(|o| o.name.clone())
        })
        .unwrap_or_else(|| "linux".to_string())
}

use crate::provider::node::OS_LABEL;

/// Whether a virtual node with `labels` runs pods of `os`: a node whose
/// labels are unknown or name no OS runs any.
pub fn runs_os(labels: Option<&BTreeMap<String, String>>, os: &str) -> bool {
    labels
        .and_then(|l| l.get(OS_LABEL))
        .is_none_or(|node_os| node_os == os)
}

/// Why virtual node `name` (with `labels`) is no place for a pod of `os`:
/// it runs another OS.
fn os_refusal(os: &str, name: &str, labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    (!runs_os(labels, os)).then(|| {
        let node_os = labels.and_then(|l| l.get(OS_LABEL)).map_or("", String::as_str);
        format!(
            "spillway: the pod runs {os}; virtual node {name} runs {node_os} (a {node_os} container group cannot run it)"
        )
    })
}

/// DESIGN.md's filter rule for the virtual node, given how many VM nodes
/// survived the scheduler's own filters. VMs come first for `Auto` and
/// `Always` alike: while a VM node is feasible the virtual node is refused,
/// and nothing is reserved (`Always` means "burst without waiting for a VM
/// that is not there", not "prefer ACI over a VM that is"; a reservation
/// would hold budget for 30 s for a pod that goes to the VM). A `burst` is
/// recorded against the namespace's budget before it is answered: in the
/// replicas' shared reservations when there are any (`reservations.rs`),
/// else in this replica's ledger.
pub async fn decide_for_virtual(
    state: &AppState,
    pod: &Pod,
    vm_candidates: usize,
) -> Result<FilterDecision, ExtenderError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let empty = Default::default();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let policies = state.policies.current();
    let Some(policy) = policies.for_pod(namespace, labels) else {
        // Not managed: the scheduler's own taint/toleration rules decide.
        return Ok(FilterDecision {
            verdict: Verdict::Ineligible,
            reason: Reason::NoPolicy,
            refusal: None,
        });
    };
    if policy.burst.mode != BurstMode::Never && vm_candidates > 0 {
        return Ok(FilterDecision {
            verdict: Verdict::Vm,
            reason: Reason::VmCapacityAvailable,
            refusal: Some(format!(
                "spillway: {}, {} VM node(s) passed the scheduler's filters; VMs are filled first",
                Reason::VmCapacityAvailable,
                vm_candidates
            )),
        });
    }
    let now = (state.clock)();
    let cluster = state.view.current();
    let pending = cluster::pending_pod(pod, now, state.view.config())
        .map_err(|e| invalid("filter", e.to_string()))?;
    // The engine does not consult VM room here, so the (large) node list is
    // left out; `usage` already counts raised requests, so nothing is raisable.
    let decide = |usage: &BTreeMap<String, BurstUsage>| {
        let snap = Snapshot {
            now,
            nodes: Vec::new(),
            pools: cluster.snapshot.pools.clone(),
            pending: Vec::new(),
            burst_usage: usage.clone(),
            raisable: Vec::new(),
            aci_quota: cluster.snapshot.aci_quota,
            classes: cluster.snapshot.classes.clone(),
        };
        state
            .engine
            .decide_without_vm_room(&snap, &policies, &pending)
    };
    let base = state.engine.burst_usage(&cluster.snapshot, &policies);
    let effective = pending.aci.billed(policy.aci.resources);
    let hourly = state.engine.config.prices.aci_hourly(&effective);
    let d = match &state.reservations {
        Some(shared) => {
            // Others' reservations only add usage: a pod refused without
            // them is refused with them, and needs no round trip.
            let d = decide(&base);
            if d.verdict == Verdict::Burst {
                reserve_shared(
                    state, shared, &cluster, &base, pod, d, effective, hourly, now, decide,
                )
                .await
            } else {
                d
            }
        }
        None => {
            let key = pod
                .metadata
                .uid
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| cluster::pod_key(pod));
            let usage = state
                .admissions
                .usage(&base, cluster.snapshot.now, now, &key);
            let d = decide(&usage);
            if d.verdict == Verdict::Burst {
                state
                    .admissions
                    .record(&key, namespace, effective, hourly, now);
            }
            d
        }
    };
    let refusal = (d.verdict != Verdict::Burst).then(|| d.message());
    Ok(FilterDecision {
        verdict: d.verdict,
        reason: d.reason,
        refusal,
    })
}

/// How long a reservation may take. kube-scheduler's extender `httpTimeout`
/// is 1 s in deploy/, and a timed-out (ignorable) extender is skipped, which
/// would let the pod onto the virtual node unchecked: answer well before.
pub const RESERVE_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Reserve budget for `pod` in the shared reservations; the decision to
/// answer with. Failing to reserve refuses the virtual node (fail closed).
#[allow(clippy::too_many_arguments)]
async fn reserve_shared(
    state: &AppState,
    shared: &SharedReservations,
    cluster: &cluster::ClusterState,
    base: &BTreeMap<String, BurstUsage>,
    pod: &Pod,
    admitted: Decision,
    effective: Resources,
    hourly: f64,
    now: Timestamp,
    decide: impl Fn(&BTreeMap<String, BurstUsage>) -> Decision,
) -> Decision {
    let reservation = Reservation {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: cluster::pod_key(pod),
        cpu_millis: effective.cpu_millis,
        memory_bytes: effective.memory_bytes,
        hourly_cost: hourly,
        at_millis: now.millis(),
        replica: String::new(),
    };
    let key = reservations::reservation_key(pod);
    let counter = |outcome: &str| {
        state
            .metrics
            .burst_reservations
            .with_label_values(&[outcome])
            .inc();
    };
    let reserved = tokio::time::timeout(
        RESERVE_WITHIN,
        shared.reserve(cluster, base, &key, reservation, now, decide),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ReservationError::TimedOut {
            within: RESERVE_WITHIN,
        })
    });
    match reserved {
        Ok(Outcome::Admitted) => {
            counter("admitted");
            admitted
        }
        Ok(Outcome::Refused(d)) => {
            counter("refused");
            d
        }
        Err(e) => {
            counter("error");
            tracing::warn!(pod = %cluster::pod_key(pod), error = %e, "cannot reserve burst budget; refusing the virtual node");
            Decision {
                verdict: Verdict::Wait,
                detail: format!(
                    "cannot reserve burst budget ({e}); the pod stays off the virtual node until a reservation succeeds"
                ),
                ..admitted
            }
        }
    }
}

/// The refusal of the virtual node while this replica's view is not synced.
pub const NOT_SYNCED: &str =
    "spillway: the cluster view is not synced yet; the virtual node is refused until it is";

pub(super) async fn filter(
    state: &AppState,
    mut args: ExtenderArgs,
) -> Result<ExtenderFilterResult, ExtenderError> {
    const VERB: &str = "filter";
    let cands = candidates(VERB, &mut args)?;
    let pod = require_pod(VERB, args.pod.take())?;
    let cluster = state.view.current();
    let is_virtual = VirtualTest::new(&cluster, state.view.config());
    let flags: Vec<bool> = match &cands {
        Candidates::Names(names) => names.iter().map(|n| is_virtual.name(n)).collect(),
        Candidates::Nodes(_, ids) => ids.iter().map(|n| is_virtual.node(n)).collect(),
    };
    let virtual_count = flags.iter().filter(|v| **v).count();
    // A virtual node of another OS than the pod's is never a place for it
    // (the Windows node beside the Linux one, `--aci-windows`): refused per
    // node, before and apart from the engine's verdict.
    let os = pod_os(&pod);
    let os_refusals: Vec<Option<String>> = match &cands {
        Candidates::Names(names) => names
            .iter()
            .zip(&flags)
            .map(|(n, virt)| {
                // Only virtual candidates (one or two) look their node up.
                virt.then(|| {
                    let labels = cluster
                        .nodes
                        .iter()
                        .find(|node| node.metadata.name.as_deref() == Some(n.as_str()))
                        .and_then(|node| node.metadata.labels.as_ref());
                    os_refusal(&os, n, labels)
                })
                .flatten()
            })
            .collect(),
        Candidates::Nodes(_, ids) => ids
            .iter()
            .zip(&flags)
            .map(|(id, virt)| {
                virt.then(|| os_refusal(&os, id.name(), id.metadata.labels.as_ref()))
                    .flatten()
            })
            .collect(),
    };
    let usable_virtual = flags
        .iter()
        .zip(&os_refusals)
        .filter(|(v, os)| **v && os.is_none())
        .count();
    let refusal = if usable_virtual == 0 {
        None
    } else if !cluster.synced {
        // Without pools and burst usage the engine would see "every pool at
        // max" and let everything burst. An `Error` answer would be no
        // better: kube-scheduler skips an ignorable extender that errs and
        // keeps the virtual node. Refuse it as unresolvable instead; VMs
        // stay, and the pod is retried once the view has synced.
        Some(NOT_SYNCED.to_string())
    } else {
        let d = decide_for_virtual(state, &pod, flags.len() - virtual_count).await?;
        state
            .metrics
            .decisions
            .with_label_values(&[d.verdict.as_str(), d.reason.as_str()])
            .inc();
        d.refusal
    };
    let mut result = ExtenderFilterResult::default();
    let mut refuse = |name: &str, msg: &str| {
        result
            .failed_and_unresolvable_nodes
            .insert(name.to_string(), msg.to_string());
    };
    match cands {
        Candidates::Names(names) => {
            let mut kept = Vec::with_capacity(names.len());
            for ((name, virt), os) in names.into_iter().zip(&flags).zip(&os_refusals) {
                match (&refusal, virt, os) {
                    (_, _, Some(msg)) | (Some(msg), true, None) => refuse(&name, msg),
                    _ => kept.push(name),
                }
            }
            result.node_names = Some(kept);
        }
        Candidates::Nodes(list, ids) => {
            let mut kept = Vec::with_capacity(list.items.len());
            for (((node, id), virt), os) in list
                .items
                .into_iter()
                .zip(&ids)
                .zip(&flags)
                .zip(&os_refusals)
            {
                match (&refusal, virt, os) {
                    (_, _, Some(msg)) | (Some(msg), true, None) => refuse(id.name(), msg),
                    _ => kept.push(node),
                }
            }
            result.nodes = Some(NodeList {
                items: kept,
                metadata: list.metadata,
            });
        }
    }
    Ok(result)
}

pub(super) fn prioritize(
    state: &AppState,
    mut args: ExtenderArgs,
) -> Result<Vec<HostPriority>, ExtenderError> {
    const VERB: &str = "prioritize";
    let cands = candidates(VERB, &mut args)?;
    require_pod(VERB, args.pod.take())?;
    let cluster = state.view.current();
    let is_virtual = VirtualTest::new(&cluster, state.view.config());
    let score = |virt: bool| if virt { 0 } else { MAX_PRIORITY };
    Ok(match cands {
        Candidates::Names(names) => names
            .into_iter()
            .map(|n| HostPriority {
                score: score(is_virtual.name(&n)),
                host: n,
            })
            .collect(),
        Candidates::Nodes(_, ids) => ids
            .iter()
            .map(|n| HostPriority {
                host: n.name().to_string(),
                score: score(is_virtual.node(n)),
            })
            .collect(),
    })
}

/// spillway has no opinion on preemption (the virtual node is never a
/// candidate: it is refused as unresolvable). Answer with the scheduler's own
/// candidates, as meta victims; nodes left with no identifiable victim are
/// dropped, since the scheduler rejects a node with zero victims.
pub(super) fn preempt(
    args: ExtenderPreemptionArgs,
) -> Result<ExtenderPreemptionResult, ExtenderError> {
    const VERB: &str = "preempt";
    require_pod(VERB, args.pod)?;
    let mut out = ExtenderPreemptionResult::default();
    if let Some(meta) = args.node_name_to_meta_victims {
        for (node, victims) in meta {
            if let Some(v) = victims.filter(|v| !v.pods.is_empty()) {
                out.node_name_to_meta_victims.insert(node, v);
            }
        }
    } else if let Some(full) = args.node_name_to_victims {
        for (node, victims) in full {
            let Some(v) = victims else { continue };
            let pods: Vec<MetaPod> = v
                .pods
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    p.metadata
                        .uid
                        .filter(|u| !u.is_empty())
                        .map(|uid| MetaPod { uid })
                })
                .collect();
            if !pods.is_empty() {
                out.node_name_to_meta_victims.insert(
                    node,
                    MetaVictims {
                        pods,
                        num_pdb_violations: v.num_pdb_violations.unwrap_or(0),
                    },
                );
            }
        }
    } else {
        return Err(invalid(
            VERB,
            "neither NodeNameToVictims nor NodeNameToMetaVictims is set",
        ));
    }
    Ok(out)
}

/// spillway is not a binder (`bindVerb` must stay empty); a well-formed call
/// gets an `Error` so the scheduler falls back to its default binder when the
/// extender is ignorable, and the misconfiguration is visible either way.
pub(super) fn bind(args: ExtenderBindingArgs) -> Result<ExtenderBindingResult, ExtenderError> {
    const VERB: &str = "bind";
    let (Some(name), Some(ns), Some(node)) = (args.pod_name, args.pod_namespace, args.node) else {
        return Err(invalid(VERB, "PodName, PodNamespace and Node are required"));
    };
    if name.is_empty() || ns.is_empty() || node.is_empty() {
        return Err(invalid(
            VERB,
            "PodName, PodNamespace and Node must not be empty",
        ));
    }
    Ok(ExtenderBindingResult {
        error: format!(
            "spillway does not bind pods (asked to bind {ns}/{name} to {node}); leave bindVerb empty in the scheduler configuration"
        ),
    })
}
