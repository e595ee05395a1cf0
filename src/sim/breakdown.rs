//! Who waited and who paid: a run's pods, pending percentiles, bursts and
//! cost per namespace and per workload, and the `ideal` lower bound every
//! strategy is measured against.
//!
//! The ideal: every pod starts after only its container start latency (the
//! first start the simulator draws for it, on a VM or, if it tolerates the
//! virtual node, on ACI, whichever is sooner) and is billed at VM prices for
//! exactly what it uses: its running time × the larger of its CPU and memory
//! fractions of a node × the node's hourly price, on the pool where that is
//! cheapest. No waiting for nodes, no idle capacity, no ACI premium. With
//! one pod shape dominating one resource (as in the built-in day) no
//! strategy can do better; the property test in tests/sim.rs checks it.
//!
//! Pure functions over the generated workload and each run's per-pod outcomes.

use super::dist::Stream;
use super::scenario::{Arrivals, PodSpec, Scenario};
use super::world::{PodOutcome, RunResult, node_fraction};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The numbers of one set of pods in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub pods: u64,
    /// Pods that started before the end of the simulated time.
    pub started: u64,
    /// Submit → first running, of the pods that started, sorted (ms).
    pub pending_ms: Vec<u64>,
    pub burst_pods: u64,
    pub cost_usd: f64,
}

impl Stats {
    fn of<'a>(items: impl Iterator<Item = (&'a PodOutcome, f64)>) -> Stats {
        let mut s = Stats {
            pods: 0,
            started: 0,
            pending_ms: Vec::new(),
            burst_pods: 0,
            cost_usd: 0.0,
        };
        for (o, cost) in items {
            s.pods += 1;
            if let Some(ms) = o.pending_ms {
                s.started += 1;
                s.pending_ms.push(ms);
            }
            s.burst_pods += u64::from(o.burst);
            s.cost_usd += cost;
        }
        s.pending_ms.sort_unstable();
        s
    }

    /// Nearest-rank percentile of pending seconds (0 when nothing started),
    /// the same rule as [`RunResult::pending_percentile_s`].
    pub fn pending_percentile_s(&self, p: f64) -> f64 {
        if self.pending_ms.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.pending_ms.len() as f64).ceil() as usize;
        self.pending_ms[rank.clamp(1, self.pending_ms.len()) - 1] as f64 / 1000.0
    }

    pub(crate) fn json(&self, name: &str) -> Value {
        json!({
            "name": name,
            "pods": self.pods,
            "started": self.started,
            "pending_p50_s": round(self.pending_percentile_s(50.0), 3),
            "pending_p95_s": round(self.pending_percentile_s(95.0), 3),
            "pending_p99_s": round(self.pending_percentile_s(99.0), 3),
            "burst_pods": self.burst_pods,
            "cost_usd": round(self.cost_usd, 2),
        })
    }
}

pub(crate) fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// One run's numbers over all pods and per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    pub total: Stats,
    /// By namespace, sorted by name.
    pub namespaces: Vec<(String, Stats)>,
    /// By workload, in scenario order; empty for a trace (it has no workloads).
    pub workloads: Vec<(String, Stats)>,
}

impl Breakdown {
    /// Group per-pod outcomes and costs (both indexed like `pods`).
    pub fn new(sc: &Scenario, pods: &[PodSpec], outcomes: &[PodOutcome], costs: &[f64]) -> Self {
        let all = || outcomes.iter().zip(costs.iter().copied());
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut by_workload: Vec<Vec<usize>> = vec![Vec::new(); sc.workloads.len()];
        for (i, p) in pods.iter().enumerate() {
            by_ns.entry(&p.namespace).or_default().push(i);
            if let Some(w) = by_workload.get_mut(p.workload as usize) {
                w.push(i);
            }
        }
        let stats = |idx: &[usize]| Stats::of(idx.iter().map(|&i| (&outcomes[i], costs[i])));
        let is_trace = sc
            .workloads
            .iter()
            .any(|w| matches!(w.arrivals, Arrivals::Trace(_)));
        Breakdown {
            total: Stats::of(all()),
            namespaces: by_ns
                .iter()
                .map(|(ns, idx)| (ns.to_string(), stats(idx)))
                .collect(),
            workloads: if is_trace {
                Vec::new()
            } else {
                sc.workloads
                    .iter()
                    .zip(&by_workload)
                    .map(|(w, idx)| (w.name.clone(), stats(idx)))
                    .collect()
            },
        }
    }

    /// A strategy's run.
    pub fn of_run(sc: &Scenario, pods: &[PodSpec], r: &RunResult) -> Self {
        Breakdown::new(sc, pods, &r.outcomes, &r.pod_costs_usd())
    }
}

/// The ideal run's per-pod outcomes; `vm_use_usd` is each pod's whole cost.
pub fn ideal_outcomes(sc: &Scenario, pods: &[PodSpec], seed: u64) -> Vec<PodOutcome> {
    let horizon = sc.horizon().millis();
    pods.iter()
        .enumerate()
        .map(|(i, p)| {
            // The draws of the pod's first binding (incarnation 1), as the simulation makes them.
            let vm = sc
                .vm_start_latency
                .draw(seed, Stream::VmStart, i as u64, 1)
                .millis();
            let latency = if p.tolerates_virtual {
                vm.min(
                    sc.aci
                        .start_latency
                        .draw(seed, Stream::AciStart, i as u64, 1)
                        .millis(),
                )
            } else {
                vm
            };
            let start = p.submit.millis() + latency;
            if start > horizon {
                return PodOutcome::default();
            }
            let end = (start + p.duration.millis()).min(horizon);
            let hours = (end - start) as f64 / 3_600_000.0;
            let rate = sc
                .pools
                .iter()
                .filter(|pool| p.requests.fits_in(&pool.node))
                .map(|pool| node_fraction(&p.requests, &pool.node) * pool.price_per_hour)
                .min_by(f64::total_cmp)
                .unwrap_or(0.0);
            PodOutcome {
                pending_ms: Some(latency),
                burst: false,
                aci_cost_usd: 0.0,
                vm_use_usd: hours * rate,
            }
        })
        .collect()
}

/// The ideal's breakdown.
pub fn ideal(sc: &Scenario, pods: &[PodSpec], seed: u64) -> Breakdown {
    let outcomes = ideal_outcomes(sc, pods, seed);
    let costs: Vec<f64> = outcomes.iter().map(|o| o.vm_use_usd).collect();
    Breakdown::new(sc, pods, &outcomes, &costs)
}
