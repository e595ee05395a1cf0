//! Verdicts and their canonical reasons. These names are used verbatim in
//! metric labels, Kubernetes Events, extender messages, `explain` output and
//! dashboards: change one and you change them all.

use serde::Serialize;
use std::fmt;

/// What should happen to a pending pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// A VM has room now: the pod belongs there.
    Vm,
    /// Not yet: wait for a VM (until a given time, or until budget frees up).
    Wait,
    /// Let it onto the virtual node now.
    Burst,
    /// Never bursts (policy, priority, or ACI cannot run it).
    Ineligible,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Vm,
        Verdict::Wait,
        Verdict::Burst,
        Verdict::Ineligible,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Vm => "vm",
            Verdict::Wait => "wait",
            Verdict::Burst => "burst",
            Verdict::Ineligible => "ineligible",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why. Exactly one per decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    VmCapacityAvailable,
    WaitingForVm,
    SpillAfterElapsed,
    VmEtaExceedsMaxWait,
    PoolsAtMax,
    PolicyAlways,
    PolicyNever,
    NoPolicy,
    PriorityBelowMinimum,
    BudgetPods,
    BudgetCpu,
    BudgetMemory,
    BudgetCost,
    AciQuotaExhausted,
    AciIncompatible,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::VmCapacityAvailable,
        Reason::WaitingForVm,
        Reason::SpillAfterElapsed,
        Reason::VmEtaExceedsMaxWait,
        Reason::PoolsAtMax,
        Reason::PolicyAlways,
        Reason::PolicyNever,
        Reason::NoPolicy,
        Reason::PriorityBelowMinimum,
        Reason::BudgetPods,
        Reason::BudgetCpu,
        Reason::BudgetMemory,
        Reason::BudgetCost,
        Reason::AciQuotaExhausted,
        Reason::AciIncompatible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::VmCapacityAvailable => "vm-capacity-available",
            Reason::WaitingForVm => "waiting-for-vm",
            Reason::SpillAfterElapsed => "spill-after-elapsed",
            Reason::VmEtaExceedsMaxWait => "vm-eta-exceeds-max-wait",
            Reason::PoolsAtMax => "pools-at-max",
            Reason::PolicyAlways => "policy-always",
            Reason::PolicyNever => "policy-never",
            Reason::NoPolicy => "no-policy",
            Reason::PriorityBelowMinimum => "priority-below-minimum",
            Reason::BudgetPods => "budget-pods",
            Reason::BudgetCpu => "budget-cpu",
            Reason::BudgetMemory => "budget-memory",
            Reason::BudgetCost => "budget-cost",
            Reason::AciQuotaExhausted => "aci-quota-exhausted",
            Reason::AciIncompatible => "aci-incompatible",
        }
    }

    /// One sentence for people (README table, `explain --help`).
    pub fn describe(self) -> &'static str {
        match self {
            Reason::VmCapacityAvailable => {
                "a VM node has room for the pod; VMs are always filled first"
            }
            Reason::WaitingForVm => {
                "no VM has room yet; waiting up to spillAfter for one to appear"
            }
            Reason::SpillAfterElapsed => "the pod waited longer than spillAfter; it may burst",
            Reason::VmEtaExceedsMaxWait => {
                "the predicted VM arrival is later than maxVmWait; burst at once"
            }
            Reason::PoolsAtMax => {
                "no VM pool can grow to fit the pod (all at max size or too small)"
            }
            Reason::PolicyAlways => {
                "the policy says mode: Always; the virtual node is allowed at once"
            }
            Reason::PolicyNever => "the policy says mode: Never; the pod only runs on VMs",
            Reason::NoPolicy => "no policy selects the pod; spillway leaves it to the scheduler",
            Reason::PriorityBelowMinimum => "the pod's priority is below the policy's minPriority",
            Reason::BudgetPods => "the namespace's burst budget maxPods is used up",
            Reason::BudgetCpu => "the namespace's burst budget maxCpu is used up",
            Reason::BudgetMemory => "the namespace's burst budget maxMemory is used up",
            Reason::BudgetCost => "the namespace's burst budget maxHourlyCost is used up",
            Reason::AciQuotaExhausted => {
                "the ACI quota (cores or container groups) in the region is used up"
            }
            Reason::AciIncompatible => {
                "ACI cannot run this pod (volumes, privileges, size, DaemonSet, or no toleration)"
            }
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
