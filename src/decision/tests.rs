//! Engine unit tests: every reason, every budget edge, ordering and prediction.

use super::*;
use crate::policy::{AciResources, BurstMode, BurstPolicy, PolicySet};
use crate::units::{Duration, GIB, Resources, Timestamp};

const NOW: Timestamp = Timestamp::from_secs(10_000);

struct PodB(PendingPod);

fn pod(ns: &str, name: &str) -> PodB {
    PodB(PendingPod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        priority: 0,
        requests: Resources::new(500, GIB),
        aci: AciSize::of_requests(&Resources::new(500, GIB)),
        pending_since: NOW,
        tolerates_virtual: true,
        aci_incompatible: None,
        pool: None,
        placement: Default::default(),
    })
}

impl PodB {
    fn cpu(mut self, m: u64) -> Self {
        self.0.requests.cpu_millis = m;
        self.0.aci = AciSize::of_requests(&self.0.requests);
        self
    }
    fn mem_gib(mut self, g: u64) -> Self {
        self.0.requests.memory_bytes = g * GIB;
        self.0.aci = AciSize::of_requests(&self.0.requests);
        self
    }
    fn waited(mut self, secs: i64) -> Self {
        self.0.pending_since = Timestamp::from_millis(NOW.millis() - secs * 1000);
        self
    }
    fn priority(mut self, p: i32) -> Self {
        self.0.priority = p;
        self
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.0.labels.insert(k.into(), v.into());
        self
    }
    fn no_toleration(mut self) -> Self {
        self.0.tolerates_virtual = false;
        self
    }
    fn incompatible(mut self, why: &str) -> Self {
        self.0.aci_incompatible = Some(why.into());
        self
    }
    fn in_pool(mut self, p: &str) -> Self {
        self.0.pool = Some(p.into());
        self
    }
}

fn vm(name: &str, pool: &str, free_cpu: u64, free_gib: u64) -> VmNode {
    VmNode {
        name: name.into(),
        pool: pool.into(),
        allocatable: Resources::new(4000, 16 * GIB),
        allocated: Resources::new(4000 - free_cpu, (16 - free_gib) * GIB),
        schedulable: true,
        class: 0,
        pods: 0,
        max_pods: None,
    }
}

fn pool(name: &str, nodes: u32, max: u32) -> VmPool {
    VmPool {
        name: name.into(),
        min: 1,
        max,
        node_allocatable: Resources::new(4000, 16 * GIB),
        nodes,
        upcoming: vec![],
        provision_time: Some(Duration::from_secs(180)),
        class: None,
    }
}

fn snap(nodes: Vec<VmNode>, pools: Vec<VmPool>, pending: Vec<PodB>) -> Snapshot {
    Snapshot {
        now: NOW,
        nodes,
        pools,
        pending: pending.into_iter().map(|p| p.0).collect(),
        burst_usage: BTreeMap::new(),
        raisable: Vec::new(),
        aci_quota: AciQuota::default(),
        classes: Default::default(),
    }
}

fn auto(spill_after: u64, max_vm_wait: u64) -> BurstPolicy {
    let mut p = BurstPolicy::defaults("default", None);
    p.burst.spill_after = Duration::from_secs(spill_after);
    p.burst.max_vm_wait = Duration::from_secs(max_vm_wait);
    p
}

fn decide(s: &Snapshot, p: BurstPolicy) -> Vec<Decision> {
    Engine::default().decide_all(s, &PolicySet::with_default(p))
}

fn reasons(ds: &[Decision]) -> Vec<(Verdict, Reason)> {
    ds.iter().map(|d| (d.verdict, d.reason)).collect()
}

/// A full cluster whose only pool can still grow: VM predicted in 180 s.
fn full_cluster(pending: Vec<PodB>) -> Snapshot {
    snap(vec![vm("vm-0", "a", 0, 0)], vec![pool("a", 1, 5)], pending)
}

#[test]
fn vm_room_first() {
    let s = snap(
        vec![vm("vm-0", "a", 1000, 4)],
        vec![pool("a", 1, 5)],
        vec![pod("ns", "p").waited(600)],
    );
    let d = decide(&s, auto(30, 120));
    assert_eq!(reasons(&d), [(Verdict::Vm, Reason::VmCapacityAvailable)]);
}

#[test]
fn vm_room_is_claimed_in_order() {
    // Room for exactly two 500m pods; the older two get it, the third waits.
    let s = snap(
        vec![vm("vm-0", "a", 1000, 4)],
        vec![pool("a", 1, 5)],
        vec![
            pod("ns", "young").waited(1),
            pod("ns", "old").waited(20),
            pod("ns", "mid").waited(10),
        ],
    );
    let d = decide(&s, auto(30, 600));
    assert_eq!(d[0].reason, Reason::WaitingForVm, "youngest waits");
    assert_eq!(d[1].verdict, Verdict::Vm);
    assert_eq!(d[2].verdict, Verdict::Vm);
}

#[test]
fn higher_priority_claims_room_first() {
    let s = snap(
        vec![vm("vm-0", "a", 500, 4)],
        vec![pool("a", 1, 5)],
        vec![
            pod("ns", "old-low").waited(100).priority(0),
            pod("ns", "new-high").priority(100),
        ],
    );
    let d = decide(&s, auto(300, 600));
    assert_eq!(d[0].verdict, Verdict::Wait);
    assert_eq!(d[1].verdict, Verdict::Vm);
}

#[test]
fn cordoned_nodes_and_memory_are_respected() {
    let mut cordoned = vm("vm-0", "a", 4000, 16);
    cordoned.schedulable = false;
    let s = snap(
        vec![cordoned, vm("vm-1", "a", 4000, 0)],
        vec![pool("a", 2, 5)],
        vec![pod("ns", "p")],
    );
    assert_eq!(decide(&s, auto(30, 600))[0].reason, Reason::WaitingForVm);
}

#[test]
fn a_node_at_its_pod_count_is_no_room_even_for_a_pod_that_requests_nothing() {
    // kube-scheduler's NodeResourcesFit: "Too many pods".
    let mut full = vm("vm-0", "a", 4000, 16);
    full.pods = 30;
    full.max_pods = Some(30);
    let mut one_slot = vm("vm-1", "a", 4000, 16);
    one_slot.pods = 29;
    one_slot.max_pods = Some(30);
    let mut cordoned = vm("vm-2", "a", 4000, 16);
    cordoned.schedulable = false;
    let nothing = |name: &str| pod("ns", name).cpu(0).mem_gib(0).waited(600);
    let s = snap(
        vec![full, one_slot, cordoned],
        vec![pool("a", 3, 3)],
        vec![nothing("first"), nothing("second")],
    );
    let plan = Engine::default().plan(&s, &PolicySet::with_default(auto(30, 600)));
    // The one free slot takes one pod; the pool cannot grow: the other bursts.
    let on: Vec<Option<usize>> = plan.order.iter().map(|&i| plan.vm_node[i]).collect();
    assert_eq!(on, [Some(1), None]);
    let d = decide(&s, auto(30, 600));
    assert_eq!(
        reasons(&d),
        [
            (Verdict::Vm, Reason::VmCapacityAvailable),
            (Verdict::Burst, Reason::PoolsAtMax)
        ]
    );
}

#[test]
fn waiting_reports_until_and_eta() {
    let s = full_cluster(vec![pod("ns", "p").waited(8)]);
    let d = &decide(&s, auto(30, 600))[0];
    assert_eq!((d.verdict, d.reason), (Verdict::Wait, Reason::WaitingForVm));
    assert_eq!(d.until, Some(Timestamp::from_secs(10_000 - 8 + 30)));
    // pending 8 s ago + 10 s scale-up delay → the request goes out in 2 s, + 180 s provisioning.
    assert_eq!(d.vm_eta, Some(Timestamp::from_secs(10_000 + 2 + 180)));
    assert_eq!(
        d.message(),
        "spillway: waiting-for-vm, 22s left of spillAfter 30s, VM predicted in 3m2s (pool a)"
    );
}

#[test]
fn spill_after_elapsed_bursts_exactly_at_the_boundary() {
    let s = full_cluster(vec![
        pod("ns", "at").waited(30),
        pod("ns", "before").waited(29),
    ]);
    let d = decide(&s, auto(30, 600));
    assert_eq!(
        (d[0].verdict, d[0].reason),
        (Verdict::Burst, Reason::SpillAfterElapsed)
    );
    assert_eq!(
        (d[1].verdict, d[1].reason),
        (Verdict::Wait, Reason::WaitingForVm)
    );
}

#[test]
fn slow_vms_burst_at_once() {
    let s = full_cluster(vec![pod("ns", "p")]);
    // VM in ~190 s from pending start > maxVmWait 60 s.
    let d = &decide(&s, auto(300, 60))[0];
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Burst, Reason::VmEtaExceedsMaxWait)
    );
    // With maxVmWait above the ETA it waits.
    assert_eq!(decide(&s, auto(300, 600))[0].reason, Reason::WaitingForVm);
}

#[test]
fn upcoming_nodes_shorten_the_eta_and_are_shared() {
    let mut p = pool("a", 1, 2);
    // Requested 170 s ago with 180 s provisioning: ready in 10 s. Room for 8 × 500m.
    p.upcoming.push(UpcomingNode {
        requested_at: Timestamp::from_secs(10_000 - 170),
    });
    let pods: Vec<PodB> = (0..9)
        .map(|i| pod("ns", &format!("p{i}")).waited(i))
        .collect();
    let s = snap(vec![vm("vm-0", "a", 0, 0)], vec![p], pods);
    let d = decide(&s, auto(300, 60));
    let eta10 = Some(Timestamp::from_secs(10_010));
    // The eight oldest fit the upcoming node; the youngest finds no room and the pool is at max.
    let waiting = d
        .iter()
        .filter(|d| d.vm_eta == eta10 && d.verdict == Verdict::Wait)
        .count();
    assert_eq!(waiting, 8);
    let youngest = &d[0];
    assert_eq!(
        (youngest.verdict, youngest.reason),
        (Verdict::Burst, Reason::PoolsAtMax)
    );
}

#[test]
fn pools_at_max_or_too_small_burst() {
    let s = snap(
        vec![vm("vm-0", "a", 0, 0)],
        vec![pool("a", 5, 5)],
        vec![pod("ns", "p")],
    );
    assert_eq!(decide(&s, auto(300, 600))[0].reason, Reason::PoolsAtMax);
    // A pod bigger than any pool's node shape can never get a VM.
    let s = full_cluster(vec![pod("ns", "big").mem_gib(15).cpu(3500)]);
    assert_eq!(decide(&s, auto(300, 600))[0].reason, Reason::WaitingForVm);
    let s = full_cluster(vec![pod("ns", "huge").cpu(4000).mem_gib(17)]);
    let d = &decide(&s, auto(300, 600))[0];
    // 17 GiB exceeds ACI's 16 GiB maximum too.
    assert_eq!(d.reason, Reason::AciIncompatible);
}

#[test]
fn pool_constraint_limits_vm_room_and_eta() {
    let s = snap(
        vec![vm("vm-a", "a", 4000, 16), vm("vm-b", "b", 0, 0)],
        vec![pool("a", 1, 5), pool("b", 1, 1)],
        vec![pod("ns", "p").in_pool("b")],
    );
    let d = &decide(&s, auto(300, 600))[0];
    assert_eq!(d.reason, Reason::PoolsAtMax, "{d:?}");
}

#[test]
fn policy_modes() {
    let s = snap(
        vec![vm("vm-0", "a", 4000, 16)],
        vec![pool("a", 1, 5)],
        vec![pod("ns", "p")],
    );
    let mut always = auto(30, 60);
    always.burst.mode = BurstMode::Always;
    let d = &decide(&s, always.clone())[0];
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Vm, Reason::VmCapacityAvailable),
        "VMs first, in every mode"
    );
    let d = &decide(&full_cluster(vec![pod("ns", "p")]), always)[0];
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Burst, Reason::PolicyAlways),
        "no VM fits: at once, no waiting"
    );

    let full = full_cluster(vec![pod("ns", "p").waited(1000)]);
    let mut never = auto(30, 60);
    never.burst.mode = BurstMode::Never;
    let d = &decide(&full, never.clone())[0];
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Ineligible, Reason::PolicyNever)
    );
    // Never still lands on VMs when there is room.
    assert_eq!(decide(&s, never)[0].verdict, Verdict::Vm);
}

#[test]
fn no_policy_is_left_alone() {
    let mut p = auto(30, 60);
    p.selector.match_labels.insert("app".into(), "web".into());
    let s = full_cluster(vec![
        pod("ns", "other").waited(1000),
        pod("ns", "web").label("app", "web").waited(1000),
    ]);
    let d = decide(&s, p);
    assert_eq!(
        (d[0].verdict, d[0].reason),
        (Verdict::Ineligible, Reason::NoPolicy)
    );
    assert_eq!(d[0].policy, None);
    assert_eq!(d[1].reason, Reason::SpillAfterElapsed);
    assert_eq!(d[1].policy.as_deref(), Some("*/default"));
}

#[test]
fn priority_below_minimum_never_bursts() {
    let mut p = auto(0, 0);
    p.burst.min_priority = 10;
    let s = full_cluster(vec![
        pod("ns", "low").priority(9).waited(999),
        pod("ns", "ok").priority(10),
    ]);
    let d = decide(&s, p);
    assert_eq!(
        (d[0].verdict, d[0].reason),
        (Verdict::Ineligible, Reason::PriorityBelowMinimum)
    );
    assert_eq!(d[1].verdict, Verdict::Burst);
}

#[test]
fn aci_incompatible_pods_never_burst() {
    let s = full_cluster(vec![
        pod("ns", "hostpath")
            .incompatible("hostPath volumes are not supported on ACI")
            .waited(999),
        pod("ns", "untolerated").no_toleration().waited(999),
    ]);
    let d = decide(&s, auto(0, 0));
    assert_eq!(
        reasons(&d),
        [(Verdict::Ineligible, Reason::AciIncompatible); 2]
    );
    assert!(d[0].detail.contains("hostPath"));
    assert!(d[1].detail.contains("tolerate"));
}

fn budget_case(set: impl Fn(&mut BurstPolicy), used: BurstUsage, p: PodB) -> Decision {
    let mut s = full_cluster(vec![p.waited(999)]);
    s.burst_usage.insert("ns".into(), used);
    let mut pol = auto(30, 600);
    set(&mut pol);
    decide(&s, pol).remove(0)
}

fn usage(pods: u32, cpu: u64, gib: u64) -> BurstUsage {
    let r = Resources::new(cpu, gib * GIB);
    BurstUsage {
        pods,
        requests: r,
        hourly_cost: Prices::default().aci_hourly(&r),
    }
}

#[test]
fn budget_pods_edge() {
    let d = budget_case(
        |p| p.budget.max_pods = Some(3),
        usage(2, 0, 0),
        pod("ns", "p"),
    );
    assert_eq!(d.verdict, Verdict::Burst, "third pod fits a budget of 3");
    let d = budget_case(
        |p| p.budget.max_pods = Some(3),
        usage(3, 0, 0),
        pod("ns", "p"),
    );
    assert_eq!((d.verdict, d.reason), (Verdict::Wait, Reason::BudgetPods));
    assert_eq!(
        d.message(),
        "spillway: budget-pods, 3/3 pods on the virtual node"
    );
}

#[test]
fn budget_cpu_edge_uses_aci_effective_requests() {
    let d = budget_case(
        |p| p.budget.max_cpu_millis = Some(2000),
        usage(1, 1500, 0),
        pod("ns", "p").cpu(500),
    );
    assert_eq!(d.verdict, Verdict::Burst, "exactly at the limit is allowed");
    let d = budget_case(
        |p| p.budget.max_cpu_millis = Some(2000),
        usage(1, 1501, 0),
        pod("ns", "p").cpu(500),
    );
    assert_eq!(d.reason, Reason::BudgetCpu);
    // A pod requesting nothing is billed ACI's default 1 vCPU.
    let d = budget_case(
        |p| p.budget.max_cpu_millis = Some(2000),
        usage(1, 1500, 0),
        pod("ns", "p").cpu(0),
    );
    assert_eq!(d.reason, Reason::BudgetCpu);
}

#[test]
fn raise_requests_budgets_count_the_raised_group() {
    // 0.5 vCPU requested, a 1 vCPU limit: under raise-requests ACI bills 1 vCPU.
    let mut p = pod("ns", "p").cpu(500);
    p.0.aci.raised.cpu_millis = 1000;
    let cap = |pol: &mut BurstPolicy| pol.budget.max_cpu_millis = Some(2000);
    let d = budget_case(cap, usage(1, 1500, 0), PodB(p.0.clone()));
    assert_eq!(
        d.verdict,
        Verdict::Burst,
        "clamp-limits bills the 0.5 asked"
    );
    let d = budget_case(
        |pol| {
            cap(pol);
            pol.aci.resources = AciResources::RaiseRequests;
        },
        usage(1, 1500, 0),
        PodB(p.0.clone()),
    );
    assert_eq!(d.reason, Reason::BudgetCpu, "{}", d.message());
    assert!(d.detail.contains("pod needs 1.00"), "{}", d.detail);
}

#[test]
fn pods_on_aci_count_their_raised_request_when_their_policy_raises() {
    let mut s = snap(vec![], vec![], vec![]);
    s.burst_usage.insert("ns".into(), usage(2, 1000, 1));
    s.raisable.push(RaisableBurst {
        namespace: "ns".into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        extra: Resources::new(500, 0),
    });
    let engine = Engine::default();
    let clamp = PolicySet::with_default(auto(30, 600));
    assert_eq!(engine.burst_usage(&s, &clamp)["ns"], usage(2, 1000, 1));
    let mut pol = auto(30, 600);
    pol.aci.resources = AciResources::RaiseRequests;
    let raise = PolicySet::with_default(pol);
    let u = engine.burst_usage(&s, &raise)["ns"];
    assert_eq!((u.pods, u.requests.cpu_millis), (2, 1500));
    assert!((u.hourly_cost - usage(2, 1500, 1).hourly_cost).abs() < 1e-12);
    engine.count_raised(&mut s, &raise);
    assert!(s.raisable.is_empty());
    assert_eq!(s.burst_usage["ns"].requests.cpu_millis, 1500);
}

#[test]
fn budget_memory_edge() {
    // ACI sizes 1 GiB (1.074 GB) as 1.1 GB: exactly at the limit is allowed.
    let d = budget_case(
        |p| p.budget.max_memory_bytes = Some(3 * GIB + 1_100_000_000),
        usage(1, 0, 3),
        pod("ns", "p").mem_gib(1),
    );
    assert_eq!(d.verdict, Verdict::Burst);
    let d = budget_case(
        |p| p.budget.max_memory_bytes = Some(3 * GIB + 1_099_999_999),
        usage(1, 0, 3),
        pod("ns", "p").mem_gib(1),
    );
    assert_eq!(d.reason, Reason::BudgetMemory);
    let d = budget_case(
        |p| p.budget.max_memory_bytes = Some(4 * GIB),
        usage(1, 0, 3),
        pod("ns", "p").mem_gib(2),
    );
    assert_eq!(d.reason, Reason::BudgetMemory);
}

#[test]
fn budget_cost_edge() {
    let prices = Prices::default();
    // What ACI bills for 0.5 vCPU / 1 GiB: 1 GiB rounds up to 1.1 GB.
    let pod_cost = prices.aci_hourly(&Resources::new(500, 1_100_000_000));
    let d = budget_case(
        |p| p.budget.max_hourly_cost = Some(1.0),
        BurstUsage {
            hourly_cost: 1.0 - pod_cost,
            ..Default::default()
        },
        pod("ns", "p"),
    );
    assert_eq!(d.verdict, Verdict::Burst);
    let d = budget_case(
        |p| p.budget.max_hourly_cost = Some(1.0),
        BurstUsage {
            hourly_cost: 1.0 - pod_cost + 0.001,
            ..Default::default()
        },
        pod("ns", "p"),
    );
    assert_eq!(d.reason, Reason::BudgetCost);
}

#[test]
fn budgets_are_claimed_within_a_pass_in_order() {
    let pods: Vec<PodB> = (0..5)
        .map(|i| pod("ns", &format!("p{i}")).waited(100 + i))
        .collect();
    let mut s = full_cluster(pods);
    s.pools[0].max = 1; // no VM will come: all want to burst
    let mut p = auto(30, 600);
    p.budget.max_pods = Some(2);
    let d = decide(&s, p);
    let burst: Vec<&str> = s
        .pending
        .iter()
        .zip(&d)
        .filter(|(_, d)| d.verdict == Verdict::Burst)
        .map(|(p, _)| p.name.as_str())
        .collect();
    assert_eq!(burst, ["p3", "p4"], "the two oldest burst");
    assert_eq!(
        d.iter().filter(|d| d.reason == Reason::BudgetPods).count(),
        3
    );
}

#[test]
fn budgets_are_per_namespace() {
    let mut s = full_cluster(vec![pod("a", "p").waited(999), pod("b", "p").waited(999)]);
    s.burst_usage.insert("a".into(), usage(1, 0, 0));
    let mut p = auto(30, 600);
    p.budget.max_pods = Some(1);
    let d = decide(&s, p);
    assert_eq!(d[0].reason, Reason::BudgetPods);
    assert_eq!(d[1].verdict, Verdict::Burst);
}

#[test]
fn aci_quota_limits_bursts() {
    let mut s = full_cluster(vec![
        pod("ns", "a").waited(999).cpu(1000),
        pod("ns", "b").waited(998).cpu(1000),
    ]);
    s.aci_quota = AciQuota {
        cores_millis_left: Some(1500),
        groups_left: None,
    };
    let d = decide(&s, auto(30, 600));
    assert_eq!(d[0].verdict, Verdict::Burst);
    assert_eq!(
        (d[1].verdict, d[1].reason),
        (Verdict::Wait, Reason::AciQuotaExhausted)
    );
    s.aci_quota = AciQuota {
        cores_millis_left: None,
        groups_left: Some(0),
    };
    assert_eq!(
        decide(&s, auto(30, 600))[0].reason,
        Reason::AciQuotaExhausted
    );
}

#[test]
fn always_mode_respects_budgets() {
    let mut s = full_cluster(vec![pod("ns", "p")]);
    s.burst_usage.insert("ns".into(), usage(1, 0, 0));
    let mut p = auto(30, 600);
    p.burst.mode = BurstMode::Always;
    p.budget.max_pods = Some(1);
    assert_eq!(decide(&s, p)[0].reason, Reason::BudgetPods);
}

#[test]
fn extender_path_ignores_snapshot_vm_room() {
    // The scheduler says no VM fits (only the virtual node survived), even if
    // the snapshot (possibly stale) shows room.
    let s = snap(
        vec![vm("vm-0", "a", 4000, 16)],
        vec![pool("a", 1, 5)],
        vec![],
    );
    let p = pod("ns", "p").waited(40).0;
    let d =
        Engine::default().decide_without_vm_room(&s, &PolicySet::with_default(auto(30, 600)), &p);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Burst, Reason::SpillAfterElapsed)
    );
}

#[test]
fn every_reason_has_a_unique_kebab_name() {
    let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!(r.as_str())
        );
        assert!(!r.describe().is_empty());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Reason::ALL.len());
}

#[test]
fn decisions_are_deterministic_regardless_of_input_order() {
    let pods = || {
        (0..20).map(|i| {
            pod("ns", &format!("p{i}"))
                .waited(i % 7)
                .cpu(300 + (i as u64 % 3) * 200)
        })
    };
    let a = full_cluster(pods().collect());
    let mut b = full_cluster(pods().collect());
    b.pending.reverse();
    let da = decide(&a, auto(5, 600));
    let mut db = decide(&b, auto(5, 600));
    db.reverse();
    assert_eq!(da, db);
}

#[test]
fn plan_names_the_node_each_vm_verdict_claimed() {
    // vm-0 fits one 500m pod, vm-1 fits two; the pool-b pod may only use vm-2.
    let s = snap(
        vec![
            vm("vm-0", "a", 500, 4),
            vm("vm-1", "a", 1000, 4),
            vm("vm-2", "b", 4000, 16),
        ],
        vec![pool("a", 2, 2), pool("b", 1, 1)],
        vec![
            pod("ns", "p3").waited(1),
            pod("ns", "p1").waited(30),
            pod("ns", "pb").waited(20).in_pool("b"),
            pod("ns", "p2").waited(10),
            pod("ns", "p4").waited(0).cpu(1500),
        ],
    );
    let plan = Engine::default().plan(&s, &PolicySet::with_default(auto(30, 600)));
    assert_eq!(
        plan.decisions,
        decide(&s, auto(30, 600)),
        "plan and decide_all agree"
    );
    // Oldest first: p1 (30 s), pb (20 s), p2 (10 s), p3 (1 s), p4 (0 s).
    assert_eq!(plan.order, [1, 2, 3, 0, 4]);
    assert_eq!(plan.vm_node, [Some(1), Some(0), Some(2), Some(1), Some(2)]);
    // Every placement holds: no node is given more than its room.
    let mut used = vec![Resources::default(); s.nodes.len()];
    for (i, n) in plan.vm_node.iter().enumerate() {
        if let Some(n) = n {
            used[*n] = used[*n].add(&s.pending[i].requests);
        }
    }
    for (n, u) in used.iter().enumerate() {
        assert!(
            u.fits_in(&s.nodes[n].allocatable.saturating_sub(&s.nodes[n].allocated)),
            "node {n}"
        );
    }
}

/// The engine's VM placements (classes, groups, memoised allowed sets,
/// per-group indexes, masks) agree with a direct evaluation of every pod
/// against every node, in the engine's order, as room shrinks.
#[test]
fn placements_agree_with_a_direct_per_node_evaluation() {
    use placement::{HOSTNAME_LABEL, TolerationOperator};
    use placement::{NodeTerm, Operator, Requirement, Taint, TaintEffect, Toleration};
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let taints = [
        Taint {
            key: "sku".into(),
            value: "gpu".into(),
            effect: TaintEffect::NoSchedule,
        },
        Taint {
            key: "spot".into(),
            value: String::new(),
            effect: TaintEffect::NoExecute,
        },
        Taint {
            key: "soft".into(),
            value: String::new(),
            effect: TaintEffect::PreferNoSchedule,
        },
    ];
    let ops = [
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
        Operator::DoesNotExist,
        Operator::Gt,
        Operator::Lt,
    ];
    let keys = ["agentpool", "zone", "gen", "spot", HOSTNAME_LABEL];
    let mut paths = BTreeMap::<&str, usize>::new();
    for round in 0..60 {
        let pools = ["p0", "p1", "p2"];
        let nclasses = 1 + next(30) as usize;
        let classes: Vec<NodeClass> = (0..nclasses)
            .map(|_| {
                let mut labels = BTreeMap::new();
                labels.insert("agentpool".to_string(), pools[next(3) as usize].to_string());
                labels.insert("zone".to_string(), (1 + next(3)).to_string());
                if next(2) == 0 {
                    labels.insert("gen".to_string(), next(6).to_string());
                }
                if next(3) == 0 {
                    labels.insert("spot".to_string(), "true".to_string());
                }
                let t = taints.iter().filter(|_| next(4) == 0).cloned().collect();
                NodeClass::new(labels, t)
            })
            .collect();
        let nodes: Vec<VmNode> = (0..1 + next(80))
            .map(|i| {
                let class = next(nclasses as u64) as usize;
                VmNode {
                    name: format!("n{i}"),
                    pool: classes[class].labels["agentpool"].clone(),
                    allocatable: Resources::new(4000, 16 * GIB),
                    allocated: Resources::new(next(9) * 500, next(17) * GIB),
                    schedulable: next(10) != 0,
                    class,
                    pods: next(4) as u32,
                    max_pods: match next(3) {
                        0 => None,
                        _ => Some(next(6) as u32),
                    },
                }
            })
            .collect();
        let value = |key: &str, next: &mut dyn FnMut(u64) -> u64| match key {
            "agentpool" => pools[next(3) as usize].to_string(),
            HOSTNAME_LABEL => format!("n{}", next(90)),
            _ => next(6).to_string(),
        };
        // A few distinct placements, shared by many pods (as a ReplicaSet's are).
        let placements: Vec<Placement> = (0..1 + next(6))
            .map(|_| {
                let mut p = Placement::default();
                if next(3) == 0 {
                    let key = keys[next(keys.len() as u64) as usize];
                    p.node_selector.insert(key.into(), value(key, &mut next));
                }
                if next(2) == 0 {
                    p.affinity = Some(
                        (0..next(3))
                            .map(|_| {
                                let expressions = (0..next(3))
                                    .map(|_| {
                                        let key = keys[next(keys.len() as u64) as usize];
                                        let op = ops[next(ops.len() as u64) as usize];
                                        let values = match op {
                                            Operator::Exists | Operator::DoesNotExist => vec![],
                                            _ => (0..1 + next(2))
                                                .map(|_| value(key, &mut next))
                                                .collect(),
                                        };
                                        Requirement {
                                            key: key.into(),
                                            operator: op,
                                            values,
                                        }
                                    })
                                    .collect();
                                let fields = if next(8) == 0 {
                                    vec![Requirement::new("metadata.name", Operator::In, &["n3"])]
                                } else {
                                    vec![]
                                };
                                NodeTerm {
                                    expressions,
                                    fields,
                                }
                            })
                            .collect(),
                    );
                }
                p.tolerations = (0..next(3))
                    .map(|_| {
                        let t = &taints[next(3) as usize];
                        Toleration {
                            key: if next(5) == 0 {
                                String::new()
                            } else {
                                t.key.clone()
                            },
                            operator: if next(2) == 0 {
                                TolerationOperator::Exists
                            } else {
                                TolerationOperator::Equal
                            },
                            value: t.value.clone(),
                            effect: (next(2) == 0).then_some(t.effect),
                        }
                    })
                    .collect();
                p
            })
            .collect();
        let pending: Vec<PendingPod> = (0..1 + next(120))
            .map(|i| {
                let PodB(mut p) = pod("ns", &format!("p{i:03}"))
                    .cpu(next(5) * 500)
                    .mem_gib(next(5))
                    .waited(next(100) as i64);
                p.placement = placements[next(placements.len() as u64) as usize].clone();
                if next(6) == 0 {
                    p.pool = Some(pools[next(3) as usize].to_string());
                }
                p
            })
            .collect();
        let s = Snapshot {
            now: NOW,
            raisable: Vec::new(),
            pools: pools.iter().map(|p| pool(p, 1, 5)).collect(),
            nodes,
            pending,
            burst_usage: BTreeMap::new(),
            aci_quota: AciQuota::default(),
            classes: classes.into(),
        };
        let plan = Engine::default().plan(&s, &PolicySet::with_default(auto(30, 600)));
        // Direct: each pod in the engine's order takes the first node whose own
        // labels and taints admit it and that still has room.
        let mut room: Vec<Resources> = s.nodes.iter().map(VmNode::free_room).collect();
        let mut slots: Vec<u32> = s.nodes.iter().map(VmNode::free_slots).collect();
        for &i in &plan.order {
            let p = &s.pending[i];
            let want = (0..s.nodes.len()).find(|&n| {
                let node = &s.nodes[n];
                p.pool.as_ref().is_none_or(|name| *name == node.pool)
                    && p.placement
                        .refusal(&s.classes[node.class], &node.name)
                        .is_none()
                    && slots[n] > 0
                    && p.requests.fits_in(&room[n])
            });
            assert_eq!(
                plan.vm_node[i], want,
                "round {round}, pod {}: {:?}",
                p.name, p.placement
            );
            if let Some(n) = want {
                room[n] = room[n].saturating_sub(&p.requests);
                if slots[n] != u32::MAX {
                    slots[n] -= 1;
                }
            }
            let path = if p.placement.per_node() {
                "per-node"
            } else {
                "classes"
            };
            *paths.entry(path).or_default() += 1;
        }
    }
    assert!(
        paths.values().all(|&n| n > 100),
        "both paths exercised: {paths:?}"
    );
}

#[test]
fn room_on_a_tainted_pool_the_pod_does_not_tolerate_is_no_room() {
    use placement::{NodeTerm, Operator, Requirement, Taint, TaintEffect};
    let pinned = || {
        let PodB(mut p) = pod("ns", "web-1").waited(5);
        p.placement.affinity = Some(vec![NodeTerm {
            expressions: vec![Requirement::new("agentpool", Operator::In, &["a"])],
            fields: vec![],
        }]);
        PodB(p)
    };
    let mut s = snap(
        vec![vm("a-0", "a", 0, 0), vm("gpu-0", "gpu", 4000, 16)],
        vec![pool("a", 1, 5), pool("gpu", 1, 1)],
        vec![pinned(), pod("ns", "free").waited(5)],
    );
    let label = |pool: &str| BTreeMap::from([("agentpool".to_string(), pool.to_string())]);
    let gpu_taint = Taint {
        key: "sku".into(),
        value: "gpu".into(),
        effect: TaintEffect::NoSchedule,
    };
    s.classes = vec![
        NodeClass::new(label("a"), vec![]),
        NodeClass::new(label("gpu"), vec![gpu_taint]),
    ]
    .into();
    s.nodes[1].class = 1;
    s.pools[0].class = Some(0);
    s.pools[1].class = Some(1);
    let ds = decide(&s, auto(30, 600));
    assert_eq!(
        reasons(&ds),
        [
            (Verdict::Wait, Reason::WaitingForVm),
            (Verdict::Wait, Reason::WaitingForVm)
        ],
        "{ds:?}"
    );
    // The gpu pool's room repels both (taint); pool a grows for both.
    assert!(
        ds.iter()
            .all(|d| d.vm_eta == Some(NOW.plus(Duration::from_secs(185))))
    );
    // Tolerating the taint opens the gpu room to the unpinned pod only.
    s.pending[1].placement.tolerations = vec![placement::Toleration {
        key: "sku".into(),
        operator: placement::TolerationOperator::Exists,
        ..Default::default()
    }];
    s.pending[0].placement.tolerations = s.pending[1].placement.tolerations.clone();
    let ds = decide(&s, auto(30, 600));
    assert_eq!(
        reasons(&ds),
        [
            (Verdict::Wait, Reason::WaitingForVm),
            (Verdict::Vm, Reason::VmCapacityAvailable)
        ]
    );
}
