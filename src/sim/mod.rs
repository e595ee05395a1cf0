//! `spillway simulate`: replay a workload against VM-only, ACI-always and
//! spillway, with the same decision engine the extender uses, on a
//! discrete-event clock (see [`world`]).
//!
//! This module owns scenarios, traces, the simulation and its reports. It
//! reads no clock and does no I/O except through the caller (the CLI reads
//! files and writes the report).

pub mod dist;
pub mod report;
pub mod scenario;
pub mod trace;
pub mod world;

pub use scenario::{InputError, InputErrors, Scenario};
pub use world::{RunResult, Sample, Strategy};

use crate::policy::{PolicyErrors, PolicySet, parse_file};
use serde_json::{Value, json};

/// The policies of the built-in scenario (the examples in `policies/`).
pub fn builtin_policies() -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut all = Vec::new();
    for (file, text) in scenario::DEFAULT_POLICIES {
        all.extend(parse_file(text, file, &mut errors));
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    PolicySet::new(all)
}

/// The policy for a trace run without `--policies`: a cluster default with
/// mode Auto, spillAfter 30s, maxVmWait 2m and no budgets.
pub fn trace_default_policies() -> PolicySet {
    PolicySet::with_default(crate::policy::BurstPolicy::defaults("trace-default", None))
}

/// Every strategy's result on one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    pub pods: u64,
    pub horizon_s: u64,
    pub results: Vec<RunResult>,
}

/// Run each strategy on the scenario's workload (generated once from `seed`).
/// `progress(strategy_index, virtual_ms)` is called now and then.
pub fn compare(
    sc: &Scenario,
    policies: &PolicySet,
    seed: u64,
    strategies: &[Strategy],
    progress: &mut dyn FnMut(usize, u64),
) -> Comparison {
    let pods = sc.generate(seed);
    let results = strategies
        .iter()
        .enumerate()
        .map(|(i, &s)| world::run(sc, &pods, s, policies, seed, &mut |t| progress(i, t)))
        .collect();
    Comparison {
        scenario: sc.name.clone(),
        seed,
        pods: pods.len() as u64,
        horizon_s: sc.horizon().millis() / 1000,
        results,
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

impl Comparison {
    fn vm_only_cost(&self) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.strategy == Strategy::VmOnly)
            .map(RunResult::cost_usd)
    }

    /// Cost relative to vm-only (1.0 = the same), when vm-only was run.
    pub fn cost_vs_vm_only(&self, r: &RunResult) -> Option<f64> {
        self.vm_only_cost()
            .filter(|c| *c > 0.0)
            .map(|c| r.cost_usd() / c)
    }

    /// The `-o json` document. Deterministic: the same inputs give the same bytes.
    pub fn to_json(&self) -> Value {
        let strategies: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                json!({
                    "name": r.strategy.name(),
                    "pods": r.pods,
                    "started": r.started,
                    "unfinished": r.unfinished,
                    "pending_p50_s": round(r.pending_percentile_s(50.0), 3),
                    "pending_p95_s": round(r.pending_percentile_s(95.0), 3),
                    "pending_p99_s": round(r.pending_percentile_s(99.0), 3),
                    "pending_over_60s": r.pending_over(60),
                    "burst_pods": r.burst_pods,
                    "burst_reasons": r.burst_reasons,
                    "drained_back": r.drained_back,
                    "peak_burst_cores": round(r.peak_burst_cores, 3),
                    "peak_vm_nodes": r.peak_vm_nodes,
                    "vm_node_hours": round(r.vm_node_hours, 3),
                    "aci_vcpu_hours": round(r.aci_vcpu_hours, 3),
                    "aci_gb_hours": round(r.aci_gb_hours, 3),
                    "vm_cost_usd": round(r.vm_cost_usd, 2),
                    "aci_cost_usd": round(r.aci_cost_usd, 2),
                    "cost_usd": round(r.cost_usd(), 2),
                    "cost_vs_vm_only": self.cost_vs_vm_only(r).map(|x| round(x, 3)),
                    "events": r.events,
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "pods": self.pods,
            "horizon_s": self.horizon_s,
            "strategies": strategies,
        })
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let header = [
            "strategy",
            "pods",
            "p50 s",
            "p95 s",
            "p99 s",
            ">60s",
            "burst",
            "peak cores",
            "VM node-h",
            "ACI vCPU-h",
            "cost $",
            "vs vm-only",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for r in &self.results {
            rows.push(vec![
                r.strategy.name().to_string(),
                if r.unfinished > 0 {
                    format!("{} ({} unfinished)", r.pods, r.unfinished)
                } else {
                    r.pods.to_string()
                },
                format!("{:.1}", r.pending_percentile_s(50.0)),
                format!("{:.1}", r.pending_percentile_s(95.0)),
                format!("{:.1}", r.pending_percentile_s(99.0)),
                r.pending_over(60).to_string(),
                r.burst_pods.to_string(),
                format!("{:.1}", r.peak_burst_cores),
                format!("{:.1}", r.vm_node_hours),
                format!("{:.1}", r.aci_vcpu_hours),
                format!("{:.2}", r.cost_usd()),
                self.cost_vs_vm_only(r).map_or_else(
                    || "-".to_string(),
                    |x| format!("{:+.1}%", (x - 1.0) * 100.0),
                ),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "scenario {} · seed {} · {} pods · {:.1} h simulated\n",
            self.scenario,
            self.seed,
            self.pods,
            self.horizon_s as f64 / 3600.0
        );
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
                out.push('\n');
            }
        }
        out
    }
}
