//! The solve step of the autoscaler: nudges, events, placeholders, drain-back.

use super::plan::*;
use crate::decision::{AciQuota, Engine, PendingPod, Snapshot, VmNode, VmPool};
use crate::policy::{BurstPolicy, PolicySet};
use crate::units::{Duration, GIB, Resources, Timestamp};
use std::collections::BTreeMap;

const T0: Timestamp = Timestamp::from_secs(100_000);

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0.millis() + secs * 1000)
}

fn node(name: &str, free_cpu: u64) -> VmNode {
    VmNode {
        name: name.into(),
        pool: "a".into(),
        allocatable: Resources::new(4000, 16 * GIB),
        allocated: Resources::new(4000 - free_cpu, 4 * GIB),
        schedulable: true,
        class: 0,
        pods: 0,
        max_pods: None,
    }
}

fn pending(name: &str, waited: i64) -> PendingPod {
    PendingPod {
        namespace: "web".into(),
        name: name.into(),
        labels: BTreeMap::new(),
        priority: 0,
        requests: Resources::new(1000, GIB),
        aci: crate::decision::AciSize::of_requests(&Resources::new(1000, GIB)),
        pending_since: Timestamp::from_millis(T0.millis() - waited * 1000),
        tolerates_virtual: true,
        aci_incompatible: None,
        pool: None,
        placement: Default::default(),
    }
}

fn burst(name: &str, bound: i64) -> BurstPod {
    BurstPod {
        namespace: "web".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: BTreeMap::new(),
        requests: Resources::new(1000, GIB),
        owner: Some(Owner {
            kind: "ReplicaSet".into(),
            name: format!("rs-{name}"),
            uid: format!("rs-uid-{name}"),
        }),
        bound_at: at(bound),
        ready: true,
        terminating: false,
        deletion_cost: Some(-1000),
        pdb_blocked: false,
    }
}

fn placeholder(for_pod: &str, node: Option<&str>) -> Placeholder {
    Placeholder {
        name: format!("ph-{for_pod}"),
        for_uid: format!("uid-{for_pod}"),
        node: node.map(str::to_string),
        requests: Resources::new(1000, GIB),
    }
}

fn policies(drain: bool, per_minute: u32) -> PolicySet {
    let mut p = BurstPolicy::defaults("web", Some("web"));
    p.burst.spill_after = Duration::from_secs(30);
    p.drain_back.enabled = drain;
    p.drain_back.after = Duration::from_secs(300);
    p.drain_back.max_per_minute = per_minute;
    PolicySet::with_default(p)
}

struct Pass {
    snap: Snapshot,
    policies: PolicySet,
    burst: Vec<BurstPod>,
    placeholders: Vec<Placeholder>,
    pending_owners: std::collections::BTreeSet<String>,
}

impl Pass {
    fn new(now: Timestamp, nodes: Vec<VmNode>, pending: Vec<PendingPod>) -> Self {
        Pass {
            snap: Snapshot {
                now,
                raisable: Vec::new(),
                nodes,
                pools: vec![VmPool {
                    name: "a".into(),
                    min: 1,
                    max: 10,
                    node_allocatable: Resources::new(4000, 16 * GIB),
                    nodes: 1,
                    upcoming: vec![],
                    provision_time: Some(Duration::from_secs(60)),
                    class: None,
                }],
                pending,
                burst_usage: BTreeMap::new(),
                aci_quota: AciQuota::default(),
                classes: Default::default(),
            },
            policies: policies(true, 10),
            burst: vec![],
            placeholders: vec![],
            pending_owners: Default::default(),
        }
    }

    fn run(&self, state: &mut LoopState) -> Vec<Action> {
        let plan = Engine::default().plan(&self.snap, &self.policies);
        let inp = Inputs {
            snap: &self.snap,
            plan: &plan,
            policies: &self.policies,
            burst: &self.burst,
            placeholders: &self.placeholders,
            pending_owners: &self.pending_owners,
        };
        plan_actions(&inp, state, &LoopConfig::default())
    }
}

fn nudges(a: &[Action]) -> Vec<&str> {
    a.iter()
        .filter_map(|a| match a {
            Action::Nudge { pod, .. } => Some(pod.name.as_str()),
            _ => None,
        })
        .collect()
}

fn events(a: &[Action]) -> Vec<(&str, EventReason)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event { pod, reason, .. } => Some((pod.name.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

fn evictions(a: &[Action]) -> Vec<&str> {
    a.iter()
        .filter_map(|a| match a {
            Action::Evict { pod, .. } => Some(pod.name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn burst_verdicts_are_nudged_once_then_again_after_the_renudge_delay() {
    let full = vec![node("vm-0", 0)];
    let mut state = LoopState::default();
    let pass = Pass::new(
        T0,
        full.clone(),
        vec![pending("due", 31), pending("young", 5)],
    );
    let a = pass.run(&mut state);
    assert_eq!(nudges(&a), ["due"]);
    assert_eq!(
        events(&a),
        [
            ("due", EventReason::Bursting),
            ("young", EventReason::WaitingForVM)
        ]
    );
    let again = Pass::new(
        at(10),
        full.clone(),
        vec![pending("due", 41), pending("young", 15)],
    );
    let a = again.run(&mut state);
    assert!(nudges(&a).is_empty(), "not again within 30 s: {a:?}");
    assert!(events(&a).is_empty(), "no event without a change: {a:?}");
    let later = Pass::new(
        at(31),
        full.clone(),
        vec![pending("due", 62), pending("young", 36)],
    );
    let a = later.run(&mut state);
    assert_eq!(nudges(&a), ["due", "young"]);
    assert_eq!(events(&a), [("young", EventReason::Bursting)]);
    // Once bound, it is forgotten.
    let gone = Pass::new(at(40), full, vec![]);
    gone.run(&mut state);
    assert!(state.nudged.is_empty() && state.announced.is_empty());
}

#[test]
fn budget_waits_announce_budget_exhausted() {
    let mut pass = Pass::new(T0, vec![node("vm-0", 0)], vec![pending("p", 60)]);
    let mut p = BurstPolicy::defaults("web", Some("web"));
    p.budget.max_pods = Some(0);
    pass.policies = PolicySet::with_default(p);
    let a = pass.run(&mut LoopState::default());
    assert_eq!(events(&a), [("p", EventReason::BudgetExhausted)]);
    assert!(nudges(&a).is_empty());
    match &a[0] {
        Action::Event { message, .. } => {
            assert!(message.starts_with("spillway: budget-pods"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn placeholders_follow_burst_pods_that_want_drain_back() {
    let mut pass = Pass::new(T0, vec![node("vm-0", 0)], vec![]);
    let mut orphanless = burst("bare", 0);
    orphanless.owner = None;
    pass.burst = vec![burst("a", 0), burst("b", 0), orphanless];
    pass.placeholders = vec![
        placeholder("b", None),
        placeholder("gone", Some("vm-0")),
        placeholder("b", None),
    ];
    let a = pass.run(&mut LoopState::default());
    let creates: Vec<&str> = a
        .iter()
        .filter_map(|x| match x {
            Action::CreatePlaceholder { for_pod, .. } => Some(for_pod.name.as_str()),
            _ => None,
        })
        .collect();
    let deletes: Vec<&str> = a
        .iter()
        .filter_map(|x| match x {
            Action::DeletePlaceholder { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(creates, ["a"], "one per burst pod with a controller");
    assert_eq!(deletes, ["ph-gone", "ph-b"], "orphan and duplicate");
    // Policy without drain-back: no placeholders at all, existing ones go.
    pass.policies = policies(false, 10);
    let a = pass.run(&mut LoopState::default());
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::CreatePlaceholder { .. }))
    );
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, Action::DeletePlaceholder { .. }))
            .count(),
        3
    );
}

#[test]
fn drain_back_waits_for_stable_room_then_evicts_and_frees_the_placeholder() {
    let mut state = LoopState::default();
    let mut pass = Pass::new(T0, vec![node("vm-0", 0)], vec![]);
    pass.burst = vec![burst("a", -600)];
    pass.placeholders = vec![placeholder("a", Some("vm-0"))];
    assert!(
        evictions(&pass.run(&mut state)).is_empty(),
        "room just appeared"
    );
    pass.snap.now = at(299);
    assert!(
        evictions(&pass.run(&mut state)).is_empty(),
        "299 s < after 300 s"
    );
    pass.snap.now = at(300);
    let a = pass.run(&mut state);
    assert_eq!(evictions(&a), ["a"]);
    // The placeholder goes with the eviction (only if it is accepted), not before.
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::DeletePlaceholder { .. })),
        "{a:?}"
    );
    match a.iter().find(|x| matches!(x, Action::Evict { .. })) {
        Some(Action::Evict {
            placeholder,
            message,
            ..
        }) => {
            assert_eq!(placeholder.as_deref(), Some("ph-a"));
            assert!(message.contains("drainBack.after 5m"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn room_must_be_continuous() {
    let mut state = LoopState::default();
    let mut pass = Pass::new(T0, vec![node("vm-0", 2000)], vec![]);
    pass.burst = vec![burst("a", -600)];
    pass.placeholders = vec![placeholder("a", Some("vm-0"))];
    pass.run(&mut state);
    // The room is gone for one pass (a real pod preempted the placeholder).
    pass.snap.now = at(200);
    pass.placeholders = vec![placeholder("a", None)];
    pass.run(&mut state);
    pass.placeholders = vec![placeholder("a", Some("vm-0"))];
    pass.snap.now = at(400);
    assert!(
        evictions(&pass.run(&mut state)).is_empty(),
        "timer restarted at 400 s"
    );
    pass.snap.now = at(700);
    assert_eq!(evictions(&pass.run(&mut state)), ["a"]);
}

#[test]
fn free_room_is_not_room_until_the_pods_own_placeholder_holds_it() {
    let mut state = LoopState::default();
    // Plenty of free room, but it may be on a pool the pod cannot use: only
    // its placeholder, scheduled with the pod's own constraints, tells.
    let mut pass = Pass::new(T0, vec![node("vm-0", 4000)], vec![]);
    pass.burst = vec![burst("a", -600)];
    pass.run(&mut state);
    assert!(state.room_since.is_empty());
    pass.placeholders = vec![placeholder("a", None)];
    pass.run(&mut state);
    assert!(state.room_since.is_empty(), "an unscheduled placeholder");
    pass.placeholders = vec![placeholder("a", Some("virtual-node-aci-linux"))];
    pass.run(&mut state);
    assert!(state.room_since.is_empty(), "not a VM node");
    pass.placeholders = vec![placeholder("a", Some("vm-0"))];
    pass.run(&mut state);
    assert_eq!(state.room_since.get("uid-a"), Some(&T0));
    pass.snap.now = at(300);
    assert_eq!(evictions(&pass.run(&mut state)), ["a"]);
}

#[test]
fn a_replacement_that_bursts_again_is_counted_once() {
    let mut state = LoopState::default();
    let mut pass = Pass::new(T0, vec![node("vm-0", 4000)], vec![]);
    pass.burst = vec![burst("a", -600)];
    pass.placeholders = vec![placeholder("a", Some("vm-0"))];
    pass.run(&mut state);
    pass.snap.now = at(300);
    assert_eq!(evictions(&pass.run(&mut state)), ["a"]);
    // The replacement (same controller, new uid) lands on ACI again.
    let mut again = burst("a-2", 310);
    again.owner = burst("a", 0).owner;
    pass.burst = vec![again];
    pass.placeholders.clear();
    pass.snap.now = at(320);
    pass.run(&mut state);
    pass.snap.now = at(330);
    pass.run(&mut state);
    assert_eq!(state.rebursts, 1);
    // Past the window, another burst of that controller is not a reburst.
    let mut state = LoopState::default();
    state
        .drained
        .insert("rs-uid-a".into(), ("uid-a".into(), at(0)));
    pass.snap.now = at(0).plus(REBURST_WINDOW);
    pass.run(&mut state);
    assert_eq!(state.rebursts, 0);
}

#[test]
fn drain_back_respects_rate_in_flight_readiness_and_controllers() {
    let mut state = LoopState::default();
    let mut pass = Pass::new(T0, vec![node("vm-0", 4000), node("vm-1", 4000)], vec![]);
    pass.policies = policies(true, 2);
    let mut starting = burst("starting", -900);
    starting.ready = false;
    let mut bare = burst("bare", -900);
    bare.owner = None;
    let mut sibling = burst("sibling", -850);
    sibling.owner = burst("a", 0).owner;
    pass.burst = vec![
        burst("a", -800),
        sibling,
        burst("b", -700),
        burst("c", -600),
        starting,
        bare,
    ];
    pass.placeholders = ["a", "sibling", "b", "c", "starting", "bare"]
        .iter()
        .map(|b| placeholder(b, Some("vm-0")))
        .collect();
    pass.run(&mut state);
    pass.snap.now = at(300);
    let a = pass.run(&mut state);
    // Oldest first; one per controller; 2 per minute; never unready or ownerless pods.
    assert_eq!(evictions(&a), ["sibling", "b"]);
    pass.burst.retain(|b| b.name != "sibling" && b.name != "b");
    pass.snap.now = at(330);
    assert!(
        evictions(&pass.run(&mut state)).is_empty(),
        "rate limit: 2 in the last minute"
    );
    pass.snap.now = at(361);
    assert_eq!(
        evictions(&pass.run(&mut state)),
        ["a", "c"],
        "a's sibling is gone and settled"
    );
}

#[test]
fn burst_pods_get_a_low_deletion_cost_once() {
    let mut pass = Pass::new(T0, vec![node("vm-0", 0)], vec![]);
    let mut fresh = burst("fresh", 0);
    fresh.deletion_cost = None;
    let mut dying = burst("dying", 0);
    dying.deletion_cost = None;
    dying.terminating = true;
    pass.burst = vec![fresh, burst("done", 0), dying];
    let a = pass.run(&mut LoopState::default());
    let costs: Vec<(&str, i64)> = a
        .iter()
        .filter_map(|x| match x {
            Action::SetDeletionCost { pod, cost } => Some((pod.name.as_str(), *cost)),
            _ => None,
        })
        .collect();
    assert_eq!(costs, [("fresh", -1000)]);
}

#[test]
fn a_placeholder_holds_room_only_for_its_own_burst_pod() {
    let mut state = LoopState::default();
    // vm-0 shows 1 vCPU free because the engine does not see placeholders;
    // that vCPU is b's placeholder, not room for a.
    let mut pass = Pass::new(T0, vec![node("vm-0", 1000)], vec![]);
    pass.burst = vec![burst("a", -900), burst("b", -600)];
    pass.placeholders = vec![placeholder("b", Some("vm-0"))];
    pass.run(&mut state);
    assert_eq!(state.room_since.keys().collect::<Vec<_>>(), ["uid-b"]);
}

#[test]
fn an_eviction_stays_in_flight_until_the_replacement_is_scheduled() {
    let mut state = LoopState::default();
    let mut pass = Pass::new(T0, vec![node("vm-0", 4000)], vec![]);
    let mut first = burst("first", -900);
    let mut second = burst("second", -800);
    first.owner = burst("rs", 0).owner;
    second.owner = burst("rs", 0).owner;
    pass.burst = vec![first, second];
    pass.placeholders = vec![
        placeholder("first", Some("vm-0")),
        placeholder("second", Some("vm-0")),
    ];
    pass.run(&mut state);
    pass.snap.now = at(300);
    assert_eq!(evictions(&pass.run(&mut state)), ["first"]);
    // The evicted pod is gone but its replacement is still pending: hold.
    pass.burst.retain(|b| b.name != "first");
    pass.pending_owners.insert("rs-uid-rs".into());
    pass.snap.now = at(400);
    assert!(evictions(&pass.run(&mut state)).is_empty());
    // Replacement scheduled: the next one may go.
    pass.pending_owners.clear();
    pass.snap.now = at(401);
    assert_eq!(evictions(&pass.run(&mut state)), ["second"]);
}
