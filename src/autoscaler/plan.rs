//! The autoscaler's solve step: from the cluster as data to a list of actions.
//!
//! Pure like the engine: it takes the snapshot, the engine's plan for pending
//! pods, the pods on the virtual node, the placeholders that exist and `now`,
//! and returns [`Action`]s plus the loop's memory for the next pass
//! ([`LoopState`]). A separate step re-validates each action against the
//! latest state and performs it (gate → decide → re-validate → act).
//!
//! What it decides:
//! - **nudges**: a pending pod whose verdict became `burst` gets an annotation
//!   patch so kube-scheduler retries it now instead of after its back-off;
//!   repeated every `renudge_after` while it stays pending. Why an
//!   annotation is enough (kube-scheduler source, v1.29 on): when an extender
//!   filters out a node and the pod ends up unschedulable, `findNodesThatFitPod`
//!   (pkg/scheduler/schedule_one.go) adds `framework.ExtenderName` to the pod's
//!   unschedulable plugins, and the framework registers a default enqueue
//!   extension for that name which matches every cluster event (extenders have
//!   no queueing hints; kubernetes/kubernetes#122019). An update of the pod
//!   itself is the `UnschedulablePod/Update` event (`PodSchedulingPropertiesChange`
//!   falls back to the general Update when no label, toleration, gate or
//!   resource changed), so the pod moves to the backoff/active queue
//!   (at most the 10 s pod back-off) instead of waiting in the unschedulable
//!   pool for up to 5 minutes. Without queueing hints, `isPodUpdated` counts
//!   an annotation change as an update too. The virtual node is always among
//!   the nodes the extender filtered out while a pod waits, so this holds
//!   whenever a nudge is due;
//! - **events** when a pending pod's verdict or reason changes
//!   (`WaitingForVM`, `BudgetExhausted`, `Bursting`) and on drain-back;
//! - **capacity placeholders**: one per burst pod whose policy enables
//!   drain-back and that has a controller; placeholders whose burst pod is
//!   gone are deleted;
//! - **drain-back**: a burst pod is evicted once VM room for it has existed
//!   continuously for `drainBack.after` — the room its own placeholder holds
//!   on a VM (the placeholder carries the pod's placement, so that room is
//!   room the pod may use; free room elsewhere may be on a pool it cannot
//!   use, and evicting it there would only send it back to ACI), at most `maxPerMinute`
//!   per namespace, one eviction in flight per controller, never a pod
//!   without a controller;
//! - **scale-in order**: burst pods get a low `pod-deletion-cost`.

pub use crate::cluster::classify::{BurstPod, DELETION_COST_ANNOTATION, Owner, Placeholder};
use crate::decision::{Plan, Reason, Snapshot, Verdict};
use crate::policy::PolicySet;
use crate::units::{Duration, Resources, Timestamp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The annotation whose change makes the scheduler retry a pod.
pub const NUDGE_ANNOTATION: &str = "spillway.io/burst-at";

/// Settings of the loop that are not per-namespace policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// Nudge a still-pending burst pod again after this long.
    pub renudge_after: Duration,
    /// `pod-deletion-cost` given to burst pods (lower goes first on scale-in).
    pub burst_deletion_cost: i64,
    /// An eviction stays in flight (blocking further evictions of the same
    /// controller) while the evicted pod exists or its controller has a pod
    /// pending, and for at least this long (the replacement may not exist yet).
    pub eviction_settle: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            renudge_after: Duration::from_secs(30),
            burst_deletion_cost: -1000,
            eviction_settle: Duration::from_secs(2),
        }
    }
}

/// A reference to a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Event reasons on pods (PascalCase, as Kubernetes events use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    WaitingForVM,
    BudgetExhausted,
    Bursting,
    DrainedBack,
    /// The burst pod's capacity placeholder could not be created.
    PlaceholderFailed,
}

impl EventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::WaitingForVM => "WaitingForVM",
            EventReason::BudgetExhausted => "BudgetExhausted",
            EventReason::Bursting => "Bursting",
            EventReason::DrainedBack => "DrainedBack",
            EventReason::PlaceholderFailed => "PlaceholderFailed",
        }
    }
}

/// One thing the act step should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Patch [`NUDGE_ANNOTATION`] = `at` so the scheduler retries the pod.
    Nudge {
        pod: PodRef,
        at: Timestamp,
    },
    /// Record a Kubernetes Event on the pod.
    Event {
        pod: PodRef,
        reason: EventReason,
        message: String,
    },
    /// Create a placeholder with these requests for the burst pod `for_uid`.
    CreatePlaceholder {
        for_pod: PodRef,
        for_uid: String,
        requests: Resources,
    },
    DeletePlaceholder {
        name: String,
    },
    /// Drain-back: evict through the Eviction API (PDBs apply); once the
    /// eviction is accepted, delete the pod's placeholder (its room is for the
    /// recreated pod) and record a `DrainedBack` event with `message`.
    Evict {
        pod: PodRef,
        uid: String,
        placeholder: Option<String>,
        message: String,
    },
    /// Set [`DELETION_COST_ANNOTATION`].
    SetDeletionCost {
        pod: PodRef,
        cost: i64,
    },
}

/// What the loop remembers between passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopState {
    /// Burst pod uid → since when VM room for it has existed without a break.
    pub room_since: BTreeMap<String, Timestamp>,
    /// Pending pod → when it was last nudged.
    pub nudged: BTreeMap<PodRef, Timestamp>,
    /// Pending pod → the last (verdict, reason) an Event was recorded for.
    pub announced: BTreeMap<PodRef, (Verdict, Reason)>,
    /// Recent evictions: (when, namespace, pod uid).
    pub evictions: VecDeque<(Timestamp, String, String)>,
    /// Controller uid → (evicted pod uid, when).
    pub in_flight: BTreeMap<String, (String, Timestamp)>,
    /// Controller uid → (the pod drained back, when), for
    /// [`REBURST_WINDOW`] after each eviction.
    pub drained: BTreeMap<String, (String, Timestamp)>,
    /// Drain-backs whose replacement burst again (goal: none).
    pub rebursts: u64,
}

impl LoopState {
    /// An eviction the act step could not carry out (a PDB refused it, the
    /// pod changed): it neither counts against the rate nor blocks its controller.
    pub fn forget_eviction(&mut self, pod_uid: &str) {
        self.evictions.retain(|(_, _, uid)| uid != pod_uid);
        self.in_flight.retain(|_, (uid, _)| uid != pod_uid);
        self.drained.retain(|_, (uid, _)| uid != pod_uid);
    }
}

/// Everything one pass looks at.
pub struct Inputs<'a> {
    pub snap: &'a Snapshot,
    /// The engine's plan for `snap.pending`.
    pub plan: &'a Plan,
    pub policies: &'a PolicySet,
    pub burst: &'a [BurstPod],
    pub placeholders: &'a [Placeholder],
    /// UIDs of controllers that have a pod waiting to be scheduled.
    pub pending_owners: &'a BTreeSet<String>,
}

/// Decide this pass's actions and update the loop's memory.
pub fn plan_actions(inp: &Inputs<'_>, state: &mut LoopState, cfg: &LoopConfig) -> Vec<Action> {
    let mut actions = Vec::new();
    pending_actions(inp, state, cfg, &mut actions);
    placeholder_actions(inp, &mut actions);
    drain_actions(inp, state, cfg, &mut actions);
    for b in inp.burst {
        if !b.terminating && b.deletion_cost != Some(cfg.burst_deletion_cost) {
            actions.push(Action::SetDeletionCost {
                pod: PodRef {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                },
                cost: cfg.burst_deletion_cost,
            });
        }
    }
    actions
}

fn pending_actions(
    inp: &Inputs<'_>,
    state: &mut LoopState,
    cfg: &LoopConfig,
    out: &mut Vec<Action>,
) {
    let now = inp.snap.now;
    let mut still_pending = BTreeSet::new();
    for &i in &inp.plan.order {
        let (pod, d) = (&inp.snap.pending[i], &inp.plan.decisions[i]);
        let key = PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        still_pending.insert(key.clone());
        let event = match (d.verdict, d.reason) {
            (Verdict::Burst, _) => Some(EventReason::Bursting),
            (Verdict::Wait, Reason::WaitingForVm) => Some(EventReason::WaitingForVM),
            (
                Verdict::Wait,
                Reason::BudgetPods
                | Reason::BudgetCpu
                | Reason::BudgetMemory
                | Reason::BudgetCost
                | Reason::AciQuotaExhausted,
            ) => Some(EventReason::BudgetExhausted),
            _ => None,
        };
        if let Some(reason) = event
            && state.announced.get(&key) != Some(&(d.verdict, d.reason))
        {
            out.push(Action::Event {
                pod: key.clone(),
                reason,
                message: d.message(),
            });
        }
        state.announced.insert(key.clone(), (d.verdict, d.reason));
        if d.verdict == Verdict::Burst {
            let due = state
                .nudged
                .get(&key)
                .is_none_or(|&last| now.since(last) >= cfg.renudge_after);
            if due {
                state.nudged.insert(key.clone(), now);
                out.push(Action::Nudge { pod: key, at: now });
            }
        }
    }
    state.nudged.retain(|k, _| still_pending.contains(k));
    state.announced.retain(|k, _| still_pending.contains(k));
}

fn wants_drain_back(inp: &Inputs<'_>, b: &BurstPod) -> bool {
    b.owner.is_some()
        && inp
            .policies
            .for_pod(&b.namespace, &b.labels)
            .is_some_and(|p| p.drain_back.enabled)
}

fn placeholder_actions(inp: &Inputs<'_>, out: &mut Vec<Action>) {
    let have: BTreeSet<&str> = inp
        .placeholders
        .iter()
        .map(|p| p.for_uid.as_str())
        .collect();
    let live: BTreeSet<&str> = inp
        .burst
        .iter()
        .filter(|b| !b.terminating && wants_drain_back(inp, b))
        .map(|b| b.uid.as_str())
        .collect();
    for b in inp.burst {
        if live.contains(b.uid.as_str()) && !have.contains(b.uid.as_str()) {
            out.push(Action::CreatePlaceholder {
                for_pod: PodRef {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                },
                for_uid: b.uid.clone(),
                requests: b.requests,
            });
        }
    }
    let mut seen = BTreeSet::new();
    for p in inp.placeholders {
        // Orphans, and duplicates left by a crash between create and record.
        if !live.contains(p.for_uid.as_str()) || !seen.insert(p.for_uid.as_str()) {
            out.push(Action::DeletePlaceholder {
                name: p.name.clone(),
            });
        }
    }
}

fn drain_actions(inp: &Inputs<'_>, state: &mut LoopState, cfg: &LoopConfig, out: &mut Vec<Action>) {
    let now = inp.snap.now;
    // A burst pod has VM room only where its own placeholder runs: the
    // placeholder carries the pod's nodeSelector, affinity and tolerations,
    // so the scheduler put it where the pod may go, and the room is held
    // until the pod is evicted (the placeholder is deleted with it). Free
    // room elsewhere may be on a pool the pod cannot use.
    let vm_nodes: BTreeSet<&str> = inp.snap.nodes.iter().map(|n| n.name.as_str()).collect();
    let placed: BTreeSet<&str> = inp
        .placeholders
        .iter()
        .filter(|p| p.node.as_deref().is_some_and(|n| vm_nodes.contains(n)))
        .map(|p| p.for_uid.as_str())
        .collect();
    count_rebursts(inp, state);

    // Forget what no longer exists; settle in-flight evictions.
    let burst_uids: BTreeSet<&str> = inp.burst.iter().map(|b| b.uid.as_str()).collect();
    state
        .room_since
        .retain(|uid, _| burst_uids.contains(uid.as_str()));
    state.in_flight.retain(|owner, (uid, at)| {
        burst_uids.contains(uid.as_str())
            || inp.pending_owners.contains(owner)
            || now.since(*at) < cfg.eviction_settle
    });
    while state
        .evictions
        .front()
        .is_some_and(|(t, _, _)| now.since(*t) >= Duration::from_secs(60))
    {
        state.evictions.pop_front();
    }

    // Oldest burst pods first: they have waited longest to come home.
    let mut order: Vec<&BurstPod> = inp.burst.iter().filter(|b| !b.terminating).collect();
    order.sort_by(|a, b| a.bound_at.cmp(&b.bound_at).then_with(|| a.uid.cmp(&b.uid)));
    for b in order {
        if !wants_drain_back(inp, b) {
            continue;
        }
        let Some(policy) = inp.policies.for_pod(&b.namespace, &b.labels) else {
            continue;
        };
        if !placed.contains(b.uid.as_str()) {
            state.room_since.remove(&b.uid);
            continue;
        }
        let since = *state.room_since.entry(b.uid.clone()).or_insert(now);
        if !b.ready || now.since(since) < policy.drain_back.after {
            continue;
        }
        let recent = state
            .evictions
            .iter()
            .filter(|(_, ns, _)| *ns == b.namespace)
            .count();
        if recent >= policy.drain_back.max_per_minute as usize {
            continue;
        }
        let Some(owner) = &b.owner else { continue };
        if state.in_flight.contains_key(&owner.uid) {
            continue;
        }
        // Its budget is spent: asking would only earn a 429. Its room stays
        // counted, so it goes as soon as the budget allows.
        if b.pdb_blocked {
            continue;
        }
        let pod = PodRef {
            namespace: b.namespace.clone(),
            name: b.name.clone(),
        };
        out.push(Action::Evict {
            pod,
            uid: b.uid.clone(),
            placeholder: inp
                .placeholders
                .iter()
                .find(|p| p.for_uid == b.uid)
                .map(|p| p.name.clone()),
            message: format!(
                "spillway: VM room available for {} ≥ drainBack.after {}, moving the pod back to a VM",
                now.since(since),
                policy.drain_back.after
            ),
        });
        state
            .evictions
            .push_back((now, b.namespace.clone(), b.uid.clone()));
        state
            .in_flight
            .insert(owner.uid.clone(), (b.uid.clone(), now));
        state
            .drained
            .insert(owner.uid.clone(), (b.uid.clone(), now));
    }
}

/// How long after a drain-back a burst pod of the same controller counts as
/// its replacement having burst again.
pub const REBURST_WINDOW: Duration = Duration::from_secs(300);

/// Count drain-backs whose replacement went back to the virtual node: a burst
/// pod of the evicted pod's controller, bound after the eviction, within
/// [`REBURST_WINDOW`]. Each drain-back counts at most once.
fn count_rebursts(inp: &Inputs<'_>, state: &mut LoopState) {
    let now = inp.snap.now;
    state
        .drained
        .retain(|_, (_, at)| now.since(*at) < REBURST_WINDOW);
    for b in inp.burst {
        let Some(owner) = &b.owner else { continue };
        if let Some((evicted, at)) = state.drained.get(&owner.uid)
            && *evicted != b.uid
            && b.bound_at >= *at
        {
            state.drained.remove(&owner.uid);
            state.rebursts += 1;
        }
    }
}
