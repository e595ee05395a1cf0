//! What ACI allocates, and bills, for a pod's container group.
//!
//! One set of rules for the translation (`aci::translate`, which builds the
//! group) and the engine (budgets, quota and cost, which must count what the
//! group will really request):
//!
//! - A container's request is its Kubernetes request, else its limit (the
//!   API server's defaulting), else azure-aci's default of 1 vCPU and 1.5 GB.
//! - ACI takes CPU in steps of 0.01 core and memory in steps of 0.1 GB
//!   (10⁸ bytes); every container requests at least one step. Amounts round
//!   up to a step.
//! - The group's request is the sum of its containers' (init containers have
//!   no resources in ACI's API and take none).
//! - ACI refuses a container limit above the group's total request
//!   (`ContainerLimitGreaterThanContainerGroupTotalRequest`). Under
//!   `aci.resources: clamp-limits` such limits are lowered, and the group
//!   requests (and costs) what the pod asked; under `raise-requests` the
//!   group's request rises to the largest limit ([`AciSize::raised`]).

use crate::policy::AciResources;
use crate::units::Resources;
use serde::Serialize;

/// azure-aci's CPU request for a container that declares none.
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// azure-aci's memory request for a container that declares none (1.5 GB).
pub const DEFAULT_MEMORY_BYTES: u64 = 1_500_000_000;
/// ACI's CPU granularity: 0.01 core.
pub const CPU_STEP_MILLIS: u64 = 10;
/// ACI's memory granularity: 0.1 GB.
pub const MEMORY_STEP_BYTES: u64 = 100_000_000;

/// `millis` rounded up to ACI's step, at least one step.
pub fn aci_cpu_millis(millis: u64) -> u64 {
    millis.div_ceil(CPU_STEP_MILLIS).max(1) * CPU_STEP_MILLIS
}

/// `bytes` rounded up to ACI's step, at least one step.
pub fn aci_memory_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(MEMORY_STEP_BYTES).max(1) * MEMORY_STEP_BYTES
}

/// One container's resources as declared (parsed, nothing defaulted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Declared {
    pub cpu_request: Option<u64>,
    pub memory_request: Option<u64>,
    pub cpu_limit: Option<u64>,
    pub memory_limit: Option<u64>,
}

impl Declared {
    /// What kube-scheduler counts: the request, else the limit, else nothing.
    pub fn kube_requests(&self) -> Resources {
        Resources::new(
            self.cpu_request.or(self.cpu_limit).unwrap_or(0),
            self.memory_request.or(self.memory_limit).unwrap_or(0),
        )
    }

    /// What a container group asks ACI for, before ACI's steps: the
    /// request, else the limit, else azure-aci's default.
    pub fn group_requests(&self) -> Resources {
        Resources::new(
            self.cpu_request
                .or(self.cpu_limit)
                .unwrap_or(DEFAULT_CPU_MILLIS),
            self.memory_request
                .or(self.memory_limit)
                .unwrap_or(DEFAULT_MEMORY_BYTES),
        )
    }

    /// [`Declared::group_requests`] in ACI's steps.
    pub fn aci_requests(&self) -> Resources {
        let r = self.group_requests();
        Resources::new(
            aci_cpu_millis(r.cpu_millis),
            aci_memory_bytes(r.memory_bytes),
        )
    }

    /// Its limits in ACI's steps (a resource without a limit has none).
    pub fn aci_limits(&self) -> (Option<u64>, Option<u64>) {
        (
            self.cpu_limit.map(aci_cpu_millis),
            self.memory_limit.map(aci_memory_bytes),
        )
    }
}

/// A container group's request under each `aci.resources` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AciSize {
    /// The sum of the containers' requests (`clamp-limits`).
    pub requests: Resources,
    /// Per resource, the larger of that sum and the largest container limit
    /// (`raise-requests`).
    pub raised: Resources,
}

impl AciSize {
    /// The group of these containers.
    pub fn of_containers<'a>(containers: impl IntoIterator<Item = &'a Declared>) -> AciSize {
        let mut requests = Resources::default();
        let mut largest = Resources::default();
        for c in containers {
            requests = requests.add(&c.aci_requests());
            let (cpu, memory) = c.aci_limits();
            largest.cpu_millis = largest.cpu_millis.max(cpu.unwrap_or(0));
            largest.memory_bytes = largest.memory_bytes.max(memory.unwrap_or(0));
        }
        AciSize {
            requests,
            raised: Resources::new(
                requests.cpu_millis.max(largest.cpu_millis),
                requests.memory_bytes.max(largest.memory_bytes),
            ),
        }
    }

    /// A group of one container that requests `r` and declares no limits
    /// (the simulator's pods; a zero resource takes ACI's default).
    pub fn of_requests(r: &Resources) -> AciSize {
        let c = Declared {
            cpu_request: (r.cpu_millis > 0).then_some(r.cpu_millis),
            memory_request: (r.memory_bytes > 0).then_some(r.memory_bytes),
            ..Declared::default()
        };
        AciSize::of_containers([&c])
    }

    /// What the group requests, and ACI bills, under `mode`.
    pub fn billed(&self, mode: AciResources) -> Resources {
        match mode {
            AciResources::ClampLimits => self.requests,
            AciResources::RaiseRequests => self.raised,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{GIB, MIB};

    fn declared(req: (Option<u64>, Option<u64>), lim: (Option<u64>, Option<u64>)) -> Declared {
        Declared {
            cpu_request: req.0,
            memory_request: req.1,
            cpu_limit: lim.0,
            memory_limit: lim.1,
        }
    }

    #[test]
    fn requests_default_to_limits_then_to_azure_aci_defaults_in_aci_steps() {
        let only_limits = declared((None, None), (Some(1500), Some(GIB)));
        assert_eq!(only_limits.kube_requests(), Resources::new(1500, GIB));
        // 1 GiB = 1.073741824 GB → 1.1 GB.
        assert_eq!(
            only_limits.aci_requests(),
            Resources::new(1500, 1_100_000_000)
        );
        let nothing = Declared::default();
        assert_eq!(nothing.kube_requests(), Resources::default());
        assert_eq!(
            nothing.aci_requests(),
            Resources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES)
        );
        // An explicit zero is one step, not the default.
        let zero = declared((Some(0), Some(0)), (None, None));
        assert_eq!(
            zero.aci_requests(),
            Resources::new(CPU_STEP_MILLIS, MEMORY_STEP_BYTES)
        );
        assert_eq!(aci_cpu_millis(255), 260);
        assert_eq!(aci_memory_bytes(128 * MIB), 200_000_000);
    }

    #[test]
    fn raised_is_the_largest_limit_when_it_exceeds_the_sum() {
        // The usual Burstable web pod: 0.5 CPU / 512Mi requested, 1 CPU / 1Gi limit,
        // beside a sidecar asking 0.1 CPU / 64Mi with no limit.
        let web = declared((Some(500), Some(512 * MIB)), (Some(1000), Some(GIB)));
        let sidecar = declared((Some(100), Some(64 * MIB)), (None, None));
        let size = AciSize::of_containers([&web, &sidecar]);
        assert_eq!(size.requests, Resources::new(600, 700_000_000));
        assert_eq!(size.raised, Resources::new(1000, 1_100_000_000));
        assert_eq!(size.billed(AciResources::ClampLimits), size.requests);
        assert_eq!(size.billed(AciResources::RaiseRequests), size.raised);
        // Limits within the sum raise nothing.
        let small = declared((Some(500), Some(GIB)), (Some(600), Some(GIB)));
        let size = AciSize::of_containers([&small, &sidecar]);
        assert_eq!(size.raised, size.requests);
    }

    #[test]
    fn of_requests_is_one_container_with_defaults_for_zeros() {
        let s = AciSize::of_requests(&Resources::new(0, 2 * GIB));
        assert_eq!(s.requests, Resources::new(1000, 2_200_000_000));
        assert_eq!(s.raised, s.requests);
    }
}
