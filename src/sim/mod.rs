//! `spillway simulate`: replay a workload against VM-only, ACI-always and
//! spillway, with the same decision engine the extender uses, on a
//! discrete-event clock (see [`world`]).
//!
//! This module owns scenarios, traces, the simulation and its reports. It
//! reads no clock and does no I/O except through the caller (the CLI reads
//! files and writes the report).

pub mod breakdown;
pub mod dist;
pub mod report;
pub mod scenario;
pub mod trace;
pub mod world;

pub use breakdown::{Breakdown, Stats};
pub use scenario::{InputError, InputErrors, Scenario};
pub use world::{PodOutcome, RunResult, Sample, Strategy};

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
    /// Per namespace and workload, one per result (same order).
    pub breakdowns: Vec<Breakdown>,
    /// The lower bound (see [`breakdown`]).
    pub ideal: Breakdown,
}

/// Threads for [`compare`]: one per strategy, at most the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Run each strategy on the scenario's workload (generated once from `seed`),
/// on up to [`default_threads`] threads. `progress(strategy_index, virtual_ms)`
/// is called now and then, always on the calling thread.
pub fn compare(
    sc: &Scenario,
    policies: &PolicySet,
    seed: u64,
    strategies: &[Strategy],
    progress: &mut dyn FnMut(usize, u64),
) -> Comparison {
    compare_on(sc, policies, seed, strategies, default_threads(), progress)
}

enum Msg {
    Progress(usize, u64),
    Done(usize, Box<RunResult>),
}

/// [`compare`] on `threads` threads (1 = one after the other on the calling
/// thread). The runs share nothing but read-only inputs and every draw is
/// keyed by seed, pod and incarnation, so the result is the same for any
/// number of threads; tests/sim.rs checks it byte for byte.
pub fn compare_on(
    sc: &Scenario,
    policies: &PolicySet,
    seed: u64,
    strategies: &[Strategy],
    threads: usize,
    progress: &mut dyn FnMut(usize, u64),
) -> Comparison {
    let pods = sc.generate(seed);
    let threads = threads.clamp(1, strategies.len().max(1));
    let results: Vec<RunResult> = if threads == 1 {
        strategies
            .iter()
            .enumerate()
            .map(|(i, &s)| world::run(sc, &pods, s, policies, seed, &mut |t| progress(i, t)))
            .collect()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let mut slots: Vec<Option<RunResult>> = vec![None; strategies.len()];
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let tx = tx.clone();
                let (next, pods) = (&next, &pods);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&s) = strategies.get(i) else {
                            return;
                        };
                        let r = world::run(sc, pods, s, policies, seed, &mut |t| {
                            let _ = tx.send(Msg::Progress(i, t));
                        });
                        if tx.send(Msg::Done(i, Box::new(r))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            // Ends when every worker has returned (all senders dropped).
            for msg in rx {
                match msg {
                    Msg::Progress(i, t) => progress(i, t),
                    Msg::Done(i, r) => slots[i] = Some(*r),
                }
            }
        });
        slots.into_iter().flatten().collect()
    };
    let breakdowns = results
        .iter()
        .map(|r| Breakdown::of_run(sc, &pods, r))
        .collect();
    Comparison {
        scenario: sc.name.clone(),
        seed,
        pods: pods.len() as u64,
        horizon_s: sc.horizon().millis() / 1000,
        ideal: breakdown::ideal(sc, &pods, seed),
        results,
        breakdowns,
    }
}

use breakdown::round;

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
            .enumerate()
            .map(|(i, r)| {
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
                    "vs_ideal": self.vs_ideal_json(r),
                    "namespaces": groups_json(self.breakdowns.get(i).map(|b| &b.namespaces)),
                    "workloads": groups_json(self.breakdowns.get(i).map(|b| &b.workloads)),
                })
            })
            .collect();
        let mut ideal = self.ideal.total.json("ideal");
        ideal["namespaces"] = groups_json(Some(&self.ideal.namespaces));
        ideal["workloads"] = groups_json(Some(&self.ideal.workloads));
        json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "pods": self.pods,
            "horizon_s": self.horizon_s,
            "strategies": strategies,
            "ideal": ideal,
        })
    }

    /// How far a strategy is from the ideal: seconds more at each percentile,
    /// and its cost as a multiple of the ideal's.
    fn vs_ideal_json(&self, r: &RunResult) -> Value {
        let ideal = &self.ideal.total;
        let extra = |p: f64| round(r.pending_percentile_s(p) - ideal.pending_percentile_s(p), 3);
        json!({
            "pending_p50_s": extra(50.0),
            "pending_p95_s": extra(95.0),
            "pending_p99_s": extra(99.0),
            "cost_ratio": self.cost_vs_ideal(r.cost_usd()).map(|x| round(x, 3)),
        })
    }

    /// A cost as a multiple of the ideal's (when the ideal costs anything).
    pub fn cost_vs_ideal(&self, cost: f64) -> Option<f64> {
        Some(self.ideal.total.cost_usd)
            .filter(|c| *c > 0.0)
            .map(|c| cost / c)
    }

    /// The tables printed on stdout: one row per strategy and the ideal,
    /// then the same per namespace and per workload.
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
            "p95 vs ideal",
            "cost vs ideal",
        ];
        let mut rows: Vec<Vec<String>> = Vec::new();
        let ideal = &self.ideal.total;
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
                format!(
                    "{:+.1}s",
                    r.pending_percentile_s(95.0) - ideal.pending_percentile_s(95.0)
                ),
                self.cost_vs_ideal(r.cost_usd())
                    .map_or_else(|| "-".to_string(), |x| format!("×{x:.2}")),
            ]);
        }
        let over_60 = ideal.pending_ms.iter().filter(|&&ms| ms > 60_000).count();
        rows.push(vec![
            "ideal".to_string(),
            if ideal.started < ideal.pods {
                format!("{} ({} unfinished)", ideal.pods, ideal.pods - ideal.started)
            } else {
                ideal.pods.to_string()
            },
            format!("{:.1}", ideal.pending_percentile_s(50.0)),
            format!("{:.1}", ideal.pending_percentile_s(95.0)),
            format!("{:.1}", ideal.pending_percentile_s(99.0)),
            over_60.to_string(),
            "0".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("{:.2}", ideal.cost_usd),
            self.vm_only_cost().filter(|c| *c > 0.0).map_or_else(
                || "-".to_string(),
                |c| format!("{:+.1}%", (ideal.cost_usd / c - 1.0) * 100.0),
            ),
            "-".into(),
            "-".into(),
        ]);
        let mut out = format!(
            "scenario {} · seed {} · {} pods · {:.1} h simulated\n",
            self.scenario,
            self.seed,
            self.pods,
            self.horizon_s as f64 / 3600.0
        );
        out.push_str(&render_table(&header, &rows, Some(rows.len() - 1)));
        out.push_str(
            "ideal: every pod starts after only its container start latency, billed at VM prices \
             for what it uses (a lower bound)\n",
        );
        for (title, column, pick) in [
            (
                "by namespace",
                "namespace",
                (|b: &Breakdown| &b.namespaces) as fn(&Breakdown) -> &Vec<(String, Stats)>,
            ),
            ("by workload", "workload", |b: &Breakdown| &b.workloads),
        ] {
            if pick(&self.ideal).is_empty() {
                continue;
            }
            out.push('\n');
            out.push_str(title);
            out.push('\n');
            out.push_str(&self.group_table(column, pick));
        }
        out
    }

    /// One group table: for each group, a row per strategy and the ideal.
    fn group_table(&self, column: &str, pick: fn(&Breakdown) -> &Vec<(String, Stats)>) -> String {
        let header = [
            column, "strategy", "pods", "p50 s", "p95 s", "p99 s", "burst", "cost $",
        ];
        let mut rows = Vec::new();
        for (g, (name, ideal)) in pick(&self.ideal).iter().enumerate() {
            let runs = self
                .results
                .iter()
                .zip(&self.breakdowns)
                .filter_map(|(r, b)| pick(b).get(g).map(|(_, st)| (r.strategy.name(), st)));
            for (k, (strategy, st)) in runs.chain(std::iter::once(("ideal", ideal))).enumerate() {
                rows.push(vec![
                    if k == 0 { name.clone() } else { String::new() },
                    strategy.to_string(),
                    if st.started < st.pods {
                        format!("{} ({} unfinished)", st.pods, st.pods - st.started)
                    } else {
                        st.pods.to_string()
                    },
                    format!("{:.1}", st.pending_percentile_s(50.0)),
                    format!("{:.1}", st.pending_percentile_s(95.0)),
                    format!("{:.1}", st.pending_percentile_s(99.0)),
                    st.burst_pods.to_string(),
                    format!("{:.2}", st.cost_usd),
                ]);
            }
        }
        render_table(&header, &rows, None)
    }
}

fn groups_json(groups: Option<&Vec<(String, Stats)>>) -> Value {
    Value::Array(
        groups
            .into_iter()
            .flatten()
            .map(|(name, st)| st.json(name))
            .collect(),
    )
}

/// Columns aligned (the first to the left, numbers to the right), a rule
/// under the header, and one before row `rule_before` if given.
fn render_table(header: &[&str], rows: &[Vec<String>], rule_before: Option<usize>) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
    let line = |row: &mut dyn Iterator<Item = &str>| -> String {
        let cells: Vec<String> = row
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 || (c == 1 && header.get(1) == Some(&"strategy")) {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    out.push_str(&rule);
    out.push('\n');
    for (i, row) in rows.iter().enumerate() {
        if rule_before == Some(i) {
            out.push_str(&rule);
            out.push('\n');
        }
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}
