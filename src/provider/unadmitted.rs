//! Pods that reached the virtual node without spillway deciding.
//!
//! A pod bound to the virtual node whose `schedulerName` is not spillway's
//! (the one the admission webhook sets) was placed by another scheduler —
//! created before the webhook existed, while it was down, or bound by hand —
//! with no extender call, no wait for VMs and no budget. It *bypassed*
//! spillway ([`bypassed`]) when the webhook's own rule
//! ([`crate::admission::decide`]) would have given it spillway's scheduler:
//! pods left to another scheduler on purpose (opted out with
//! `spillway.io/skip`, no BurstPolicy, a DaemonSet's, another named
//! scheduler's, kube-system's) are not reported or judged. The provider
//! handles a bypassing pod as `--unadmitted-pods` says ([`Mode`]):
//! - `run` (default): runs it, with an Event `NotAdmittedBySpillway` and the
//!   gauge `spillway_unadmitted_pods`;
//! - `reject`: asks the engine whether it would have let the pod onto the
//!   virtual node ([`judge`]); if not, the pod is failed (reason
//!   [`REASON_NOT_ADMITTED`]) before any container group exists, with an
//!   Event naming the engine's reason (`policy-never`, `budget-pods`,
//!   `priority-below-minimum`, `waiting-for-vm`, …).
//!
//! It decides nothing itself: [`judge`] hands the pods to
//! [`Engine::plan`] with the view's pools, quota and burst usage, the same
//! engine the extender asks (without VM room: like the extender, it judges
//! the virtual node only). Pure: no I/O, no clock (`mod.rs` acts).

use crate::admission::{self, AdmissionConfig};
use crate::cluster::{self, ClusterConfig, ClusterState, ClusterView};
use crate::decision::{BurstUsage, Decision, Engine, Reason, Snapshot, Verdict};
use crate::extender::reservations::{Reservation, SharedReservations};
use crate::policy::PolicySet;
use crate::policy::reload::PolicyStore;
use crate::units::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Event reason on a pod bound to the virtual node by another scheduler.
pub const EVENT_NOT_ADMITTED_BY_SPILLWAY: &str = "NotAdmittedBySpillway";
/// Pod status (and Event) reason of a pod failed by `--unadmitted-pods=reject`.
pub const REASON_NOT_ADMITTED: &str = "NotAdmitted";
/// The scheduler a pod without `schedulerName` gets.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What the virtual node does with a pod another scheduler bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Run it; report it (Event, metric, alert).
    #[default]
    Run,
    /// Fail it when spillway's engine would not have let it onto the
    /// virtual node; run it when it would have.
    Reject,
}

/// What the provider needs to recognise and judge bypassing pods: the
/// webhook's settings (the scheduler name it sets, the namespaces it never
/// touches), and the view, policies and engine the extender decides with.
#[derive(Debug, Clone)]
pub struct Gate {
    pub mode: Mode,
    pub admission: AdmissionConfig,
    pub view: Arc<ClusterView>,
    pub policies: Arc<PolicyStore>,
    pub engine: Engine,
    /// The extender's burst reservations (`None` in a dry run: none made).
    pub reservations: Option<SharedReservations>,
}

/// The scheduler that bound `pod` (`default-scheduler` when unset).
pub fn scheduler_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SCHEDULER)
}

/// Whether `pod` (bound to the virtual node) reached it through a
/// scheduler other than spillway's (`config.scheduler_name`, the name the
/// webhook sets).
pub fn foreign(pod: &Pod, config: &AdmissionConfig) -> bool {
    scheduler_of(pod) != config.scheduler_name
}

/// Whether `pod` (bound to the virtual node, [`foreign`]) bypassed
/// spillway: the webhook's rule, given its namespace's labels (`None`:
/// unknown) and the policies, would have sent it to spillway's scheduler.
pub fn bypassed(
    pod: &Pod,
    namespace_labels: Option<&BTreeMap<String, String>>,
    policies: &PolicySet,
    config: &AdmissionConfig,
) -> bool {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    foreign(pod, config)
        && matches!(
            admission::decide(pod, namespace, namespace_labels, policies, config),
            admission::Verdict::SetScheduler(_)
        )
}

/// The engine's answer for one bypassing pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub uid: String,
    /// Whether spillway would have let it onto the virtual node.
    pub admitted: bool,
    pub decision: Decision,
}

impl Judgement {
    /// The pod status message (and Event note) of a rejected pod: the
    /// engine's reason first, then how the pod got here.
    pub fn rejection_message(&self, scheduler: &str, spillway_scheduler: &str) -> String {
        let policy = self
            .decision
            .policy
            .as_deref()
            .map(|p| format!(" (policy {p})"))
            .unwrap_or_default();
        format!(
            "{}{policy}; bound to the virtual node by {scheduler}, not {spillway_scheduler}, and refused by --unadmitted-pods=reject",
            self.decision.message()
        )
    }
}

/// Whether the engine's decision lets a pod onto the virtual node, as the
/// extender answers it: `burst`, or no policy at all (spillway leaves such
/// pods to the scheduler's own taint rules and keeps the virtual node).
pub fn admits(d: &Decision) -> bool {
    d.verdict == Verdict::Burst || d.reason == Reason::NoPolicy
}

/// Judge `pods` (bypassing pods bound to the virtual node, no group yet)
/// together, at `now`, as if each were pending since its creation and the
/// scheduler had found no VM for it: one [`Engine::plan`] over the view's
/// pools and ACI quota, so they claim the namespace budgets in the engine's
/// order (priority, then age). The view counts bound pods in the burst
/// usage; `pods` themselves, and the pods in `not_counted` (uids already
/// rejected whose failure the view may not show yet), are taken out of it
/// first, so a pod never competes with itself. `reserved` (the extender's
/// outstanding reservations: pods it admitted that the view does not show
/// bound yet) count on top, as they do for the extender.
///
/// A pod whose requests cannot be read (the API server validates them, so
/// never in practice) is judged admitted: the engine has nothing to say and
/// the translation reports it.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    engine: &Engine,
    state: &ClusterState,
    config: &ClusterConfig,
    policies: &PolicySet,
    pods: &[&Pod],
    not_counted: &HashSet<String>,
    reserved: &BTreeMap<String, Reservation>,
    now: Timestamp,
) -> Vec<Judgement> {
    let mut usage: BTreeMap<String, BurstUsage> = engine.burst_usage(&state.snapshot, policies);
    let judged: HashSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    // Bound pods are in the view as records (`cluster::bound`).
    for p in &state.bound {
        let Some(uid) = p.uid.as_deref() else {
            continue;
        };
        if !(judged.contains(uid) || not_counted.contains(uid)) || p.terminal {
            continue;
        }
        // What `Engine::burst_usage` counted for it.
        let mode = policies
            .for_pod(p.namespace(), &p.labels_map())
            .map(|policy| policy.aci.resources)
            .unwrap_or_default();
        let group = p.aci.billed(mode);
        if let Some(u) = usage.get_mut(p.namespace()) {
            u.remove(&group, engine.config.prices.aci_hourly(&group));
        }
    }
    let usage = crate::extender::reservations::add_usage(&usage, reserved, "");
    let mut pending = Vec::with_capacity(pods.len());
    let mut unreadable = Vec::new();
    for p in pods {
        match cluster::pending_pod(p, now, config) {
            Ok(pp) => pending.push((p.metadata.uid.clone().unwrap_or_default(), pp)),
            Err(e) => unreadable.push((p.metadata.uid.clone().unwrap_or_default(), e)),
        }
    }
    let snap = Snapshot {
        now,
        nodes: Vec::new(),
        pools: state.snapshot.pools.clone(),
        pending: pending.iter().map(|(_, p)| p.clone()).collect(),
        burst_usage: usage,
        raisable: Vec::new(),
        aci_quota: state.snapshot.aci_quota,
        classes: state.snapshot.classes.clone(),
    };
    let plan = engine.plan(&snap, policies);
    let mut out: Vec<Judgement> = pending
        .into_iter()
        .zip(plan.decisions)
        .map(|((uid, _), decision)| Judgement {
            uid,
            admitted: admits(&decision),
            decision,
        })
        .collect();
    out.extend(unreadable.into_iter().map(|(uid, e)| Judgement {
        uid,
        admitted: true,
        decision: Decision {
            verdict: Verdict::Ineligible,
            reason: Reason::AciIncompatible,
            until: None,
            vm_eta: None,
            policy: None,
            detail: e.to_string(),
        },
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{node, pod};
    use crate::policy::{BurstMode, BurstPolicy};
    use crate::units::Duration;

    const NOW: Timestamp = Timestamp::from_secs(10_000);

    fn policy(mode: BurstMode, max_pods: Option<u32>, min_priority: i32) -> PolicySet {
        let mut p = BurstPolicy::defaults("web", Some("web"));
        p.burst.mode = mode;
        p.burst.spill_after = Duration::from_secs(30);
        p.burst.max_vm_wait = Duration::from_secs(600);
        p.burst.min_priority = min_priority;
        p.budget.max_pods = max_pods;
        PolicySet::new(vec![p]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A pod created `age` seconds before NOW, bound to the virtual node by
    /// the default scheduler.
    fn bound(name: &str, age: i64) -> Pod {
        let mut p = pod()
            .ns("web")
            .name(name)
            .cpu("500m")
            .memory("512Mi")
            .tolerate_virtual()
            .created(Timestamp::from_secs(10_000 - age))
            .on_node("spillway-aci")
            .build();
        p.metadata.uid = Some(format!("uid-{name}"));
        p
    }

    fn state(pods: &[Pod], with_pool: bool) -> ClusterState {
        let mut nodes = vec![node("spillway-aci").virtual_kubelet().build()];
        if with_pool {
            nodes.push(node("vm-0").pool("user").cpu("4").memory("16Gi").build());
        }
        let view = crate::cluster::ClusterView::new(ClusterConfig::default());
        view.replace(&nodes, pods, NOW);
        (*view.current()).clone()
    }

    fn run(policies: &PolicySet, pods: &[Pod], judged: &[&Pod], with_pool: bool) -> Vec<Judgement> {
        judge(
            &Engine::default(),
            &state(pods, with_pool),
            &ClusterConfig::default(),
            policies,
            judged,
            &HashSet::new(),
            &BTreeMap::new(),
            NOW,
        )
    }

    #[test]
    fn a_pod_bypassed_spillway_when_the_webhook_would_have_sent_it_there() {
        let config = AdmissionConfig::default();
        let policies = policy(BurstMode::Auto, None, 0);
        let skip = BTreeMap::from([("spillway.io/skip".to_string(), "true".to_string())]);
        let mut p = bound("a", 0);
        assert_eq!(scheduler_of(&p), "default-scheduler");
        assert!(bypassed(&p, None, &policies, &config));
        // Opted out, pod or namespace: left to the default scheduler on purpose.
        assert!(!bypassed(&p, Some(&skip), &policies, &config));
        let mut labelled = p.clone();
        labelled.metadata.labels = Some(skip.clone());
        assert!(!bypassed(&labelled, None, &policies, &config));
        // No policy covers it: spillway has nothing to say.
        let none = PolicySet::new(vec![]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!bypassed(&p, None, &none, &config));
        // Spillway's scheduler (the configured name), or another named one.
        if let Some(s) = p.spec.as_mut() {
            s.scheduler_name = Some("spillway-scheduler".into());
        }
        assert!(!foreign(&p, &config));
        assert!(!bypassed(&p, None, &policies, &config));
        let renamed = AdmissionConfig {
            scheduler_name: "my-spillway".into(),
            ..AdmissionConfig::default()
        };
        assert!(foreign(&p, &renamed));
        assert!(
            !bypassed(&p, None, &policies, &renamed),
            "another named scheduler"
        );
    }

    #[test]
    fn the_budget_admits_the_oldest_and_the_pod_never_competes_with_itself() {
        // maxPods 2; three bypassing pods, all bound (so the view counts all
        // three): the two oldest are admitted, the third is over budget.
        let pods = [bound("a", 300), bound("b", 200), bound("c", 100)];
        let all: Vec<&Pod> = pods.iter().collect();
        let out = run(&policy(BurstMode::Always, Some(2), 0), &pods, &all, false);
        let verdicts: Vec<(bool, Reason)> = out
            .iter()
            .map(|j| (j.admitted, j.decision.reason))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (true, Reason::PolicyAlways),
                (true, Reason::PolicyAlways),
                (false, Reason::BudgetPods)
            ]
        );
        let msg = out[2].rejection_message("default-scheduler", "spillway-scheduler");
        assert!(
            msg.starts_with("spillway: budget-pods, 2/2 pods on the virtual node (policy web/web)"),
            "{msg}"
        );
        // Judged alone after the two others were admitted, `c` is still over.
        let out = run(
            &policy(BurstMode::Always, Some(2), 0),
            &pods,
            &[&pods[2]],
            false,
        );
        assert_eq!(out.len(), 1);
        assert!(!out[0].admitted);
        // ... and admitted once one of them is rejected.
        let out = judge(
            &Engine::default(),
            &state(&pods, false),
            &ClusterConfig::default(),
            &policy(BurstMode::Always, Some(2), 0),
            &[&pods[2]],
            &HashSet::from(["uid-a".to_string()]),
            &BTreeMap::new(),
            NOW,
        );
        assert!(out[0].admitted, "{:?}", out[0].decision);
        // ... unless the extender has just admitted another pod of the
        // namespace (its reservation counts until the view shows it bound).
        let reserved = BTreeMap::from([(
            "uid-other".to_string(),
            Reservation {
                namespace: "web".into(),
                pod: "web/other".into(),
                cpu_millis: 500,
                memory_bytes: 512 << 20,
                hourly_cost: 0.02,
                at_millis: NOW.millis(),
                replica: "r1".into(),
            },
        )]);
        let out = judge(
            &Engine::default(),
            &state(&pods, false),
            &ClusterConfig::default(),
            &policy(BurstMode::Always, Some(2), 0),
            &[&pods[2]],
            &HashSet::from(["uid-a".to_string()]),
            &reserved,
            NOW,
        );
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (false, Reason::BudgetPods)
        );
    }

    #[test]
    fn each_policy_rule_is_named() {
        let p = bound("a", 0);
        let out = run(
            &policy(BurstMode::Never, None, 0),
            std::slice::from_ref(&p),
            &[&p],
            false,
        );
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (false, Reason::PolicyNever)
        );
        let out = run(
            &policy(BurstMode::Auto, None, 100),
            std::slice::from_ref(&p),
            &[&p],
            false,
        );
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (false, Reason::PriorityBelowMinimum)
        );
        // A pool that can grow: spillway would have waited spillAfter.
        let out = run(
            &policy(BurstMode::Auto, None, 0),
            std::slice::from_ref(&p),
            &[&p],
            true,
        );
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (false, Reason::WaitingForVm)
        );
        // Waited longer than spillAfter already: admitted.
        let old = bound("old", 60);
        let out = run(
            &policy(BurstMode::Auto, None, 0),
            std::slice::from_ref(&old),
            &[&old],
            true,
        );
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (true, Reason::SpillAfterElapsed)
        );
        // No policy: the scheduler's own rules decide, as in the extender.
        let empty = PolicySet::new(vec![]).unwrap_or_else(|e| panic!("{e}"));
        let out = run(&empty, std::slice::from_ref(&p), &[&p], true);
        assert_eq!(
            (out[0].admitted, out[0].decision.reason),
            (true, Reason::NoPolicy)
        );
    }
}
