//! `spillway simulate`: invariants and sanity of the simulator, through the
//! library and through the binary.

use spillway::policy::{BurstMode, BurstPolicy, PolicySet};
use spillway::sim::{self, Comparison, RunResult, Scenario, Strategy};
use spillway::units::{Duration, GIB};
use std::process::Command;

fn run_all(sc: &Scenario, policies: &PolicySet, seed: u64) -> Comparison {
    sim::compare(sc, policies, seed, &Strategy::ALL, &mut |_, _| {})
}

fn builtin() -> (Scenario, PolicySet) {
    let policies = sim::builtin_policies().unwrap_or_else(|e| panic!("built-in policies: {e}"));
    (Scenario::builtin(), policies)
}

fn result(cmp: &Comparison, s: Strategy) -> &RunResult {
    cmp.results
        .iter()
        .find(|r| r.strategy == s)
        .unwrap_or_else(|| panic!("no result for {}", s.name()))
}

const SPILLWAY: Strategy = Strategy::Spillway { drain_back: true };
const NO_DRAIN: Strategy = Strategy::Spillway { drain_back: false };

#[test]
fn every_pod_is_scheduled_exactly_once_or_reported_unfinished() {
    let (sc, pol) = builtin();
    let cmp = run_all(&sc, &pol, 42);
    for r in &cmp.results {
        let name = r.strategy.name();
        assert_eq!(r.pods, cmp.pods, "{name}");
        assert_eq!(r.started + r.unfinished, r.pods, "{name}");
        assert_eq!(
            r.pending_ms.len() as u64,
            r.started,
            "{name}: one first start per started pod"
        );
        // Restarts only come from drain-back, one per drained pod at most.
        assert!(
            r.starts >= r.started && r.starts <= r.started + r.drained_back,
            "{name}: starts {}",
            r.starts
        );
        assert!(r.burst_pods <= r.pods, "{name}");
        // Every pod that burst was let through by exactly one burst verdict the
        // first time; drained pods may burst again.
        let verdicts: u64 = r.burst_reasons.values().sum();
        assert!(
            verdicts >= r.burst_pods && verdicts <= r.burst_pods + r.drained_back,
            "{name}: {verdicts}"
        );
    }
    // The built-in day leaves time to finish: nothing is left pending.
    assert!(cmp.results.iter().all(|r| r.unfinished == 0));
}

#[test]
fn burst_usage_never_exceeds_budgets_or_quota() {
    let (mut sc, _) = builtin();
    sc.aci.quota_cores_millis = Some(30_000);
    let mut web = BurstPolicy::defaults("web-tight", Some("web"));
    web.budget.max_pods = Some(12);
    web.budget.max_cpu_millis = Some(5_000);
    let mut shop = BurstPolicy::defaults("shop-tight", Some("shop"));
    shop.budget.max_memory_bytes = Some(8 * GIB);
    let mut batch = BurstPolicy::defaults("batch-tight", Some("batch"));
    batch.budget.max_hourly_cost = Some(0.3);
    let policies = PolicySet::new(vec![web, shop, batch]).unwrap_or_else(|e| panic!("{e}"));
    for s in [SPILLWAY, NO_DRAIN] {
        let cmp = sim::compare(&sc, &policies, 7, &[s], &mut |_, _| {});
        let r = &cmp.results[0];
        let peak = &r.peak_burst_by_namespace;
        let web = peak.get("web").copied().unwrap_or_default();
        let shop = peak.get("shop").copied().unwrap_or_default();
        let batch = peak.get("batch").copied().unwrap_or_default();
        // Each budget binds (the workload wants more) and is never exceeded.
        assert!(web.pods == 12 || web.requests.cpu_millis > 4_500, "{web:?}");
        assert!(
            web.pods <= 12 && web.requests.cpu_millis <= 5_000,
            "{web:?}"
        );
        assert!(
            shop.requests.memory_bytes <= 8 * GIB && shop.requests.memory_bytes > 6 * GIB,
            "{shop:?}"
        );
        assert!(
            batch.hourly_cost <= 0.3 + 1e-9 && batch.hourly_cost > 0.2,
            "{batch:?}"
        );
        assert!(r.peak_burst_cores <= 30.0 + 1e-9, "{}", r.peak_burst_cores);
    }
}

#[test]
fn costs_add_up() {
    let (sc, pol) = builtin();
    let cmp = run_all(&sc, &pol, 42);
    let price = sc.pools[0].price_per_hour;
    for r in &cmp.results {
        assert!(
            (r.vm_cost_usd - r.vm_node_hours * price).abs() < 1e-6,
            "{}",
            r.strategy.name()
        );
        let aci =
            r.aci_vcpu_hours * sc.prices.aci_vcpu_hour + r.aci_gb_hours * sc.prices.aci_gb_hour;
        assert!((r.aci_cost_usd - aci).abs() < 1e-6);
        assert!((r.cost_usd() - r.vm_cost_usd - r.aci_cost_usd).abs() < 1e-9);
        // Never below the pool minimum for the whole horizon.
        let min_hours = sc.pools[0].min as f64 * cmp.horizon_s as f64 / 3600.0;
        assert!(
            r.vm_node_hours >= min_hours - 1e-6,
            "{} < {min_hours}",
            r.vm_node_hours
        );
        assert_eq!(
            r.aci_vcpu_hours == 0.0,
            r.burst_pods == 0,
            "{}",
            r.strategy.name()
        );
    }
    let json = cmp.to_json();
    for s in json["strategies"].as_array().into_iter().flatten() {
        let total = s["cost_usd"].as_f64().unwrap_or(-1.0);
        let parts =
            s["vm_cost_usd"].as_f64().unwrap_or(0.0) + s["aci_cost_usd"].as_f64().unwrap_or(0.0);
        assert!((total - parts).abs() <= 0.011, "{s}");
    }
}

#[test]
fn the_same_seed_gives_byte_identical_json() {
    let (sc, pol) = builtin();
    let a = run_all(&sc, &pol, 1234).to_json().to_string();
    let b = run_all(&sc, &pol, 1234).to_json().to_string();
    assert_eq!(a, b);
    let c = run_all(&sc, &pol, 1235).to_json().to_string();
    assert_ne!(a, c);
}

#[test]
fn on_the_builtin_day_spillway_is_fast_and_cheaper_than_aci_always() {
    let (sc, pol) = builtin();
    let cmp = run_all(&sc, &pol, 42);
    let vm = result(&cmp, Strategy::VmOnly);
    let aci = result(&cmp, Strategy::AciAlways);
    let sw = result(&cmp, SPILLWAY);
    let nd = result(&cmp, NO_DRAIN);
    assert!(
        sw.pending_percentile_s(95.0) * 3.0 < vm.pending_percentile_s(95.0),
        "spillway p95 {} vs vm-only {}",
        sw.pending_percentile_s(95.0),
        vm.pending_percentile_s(95.0)
    );
    assert!(sw.pending_over(60) * 2 < vm.pending_over(60));
    assert!(
        sw.cost_usd() < aci.cost_usd(),
        "spillway ${} vs aci-always ${}",
        sw.cost_usd(),
        aci.cost_usd()
    );
    assert_eq!(vm.burst_pods, 0);
    assert!(aci.burst_pods > sw.burst_pods);
    // Placeholders let the pools grow and drain-back brings pods home:
    // fewer ACI hours than without, and pods actually came back.
    assert!(sw.drained_back > 0);
    assert!(sw.aci_vcpu_hours < nd.aci_vcpu_hours);
    assert!(nd.vm_node_hours < sw.vm_node_hours);
}

#[test]
fn mode_never_everywhere_equals_vm_only() {
    let (sc, _) = builtin();
    let mut never = BurstPolicy::defaults("never", None);
    never.burst.mode = BurstMode::Never;
    let policies = PolicySet::with_default(never);
    let cmp = run_all(&sc, &policies, 42);
    let vm = result(&cmp, Strategy::VmOnly);
    for s in [SPILLWAY, NO_DRAIN] {
        let r = result(&cmp, s);
        assert_eq!(r.burst_pods, 0);
        assert_eq!(r.pending_ms, vm.pending_ms);
        assert_eq!(r.vm_node_hours, vm.vm_node_hours);
        assert_eq!(r.cost_usd(), vm.cost_usd());
        assert_eq!(r.series, vm.series);
    }
}

#[test]
fn spill_after_zero_without_budgets_approaches_aci_always() {
    let (sc, _) = builtin();
    let mut eager = BurstPolicy::defaults("eager", None);
    eager.burst.spill_after = Duration::ZERO;
    eager.burst.max_vm_wait = Duration::ZERO;
    let policies = PolicySet::with_default(eager);
    let cmp = run_all(&sc, &policies, 42);
    let aci = result(&cmp, Strategy::AciAlways);
    // Without drain-back it is the same rule as the virtual node's default.
    let nd = result(&cmp, NO_DRAIN);
    assert_eq!(nd.pending_ms, aci.pending_ms);
    assert_eq!(nd.burst_pods, aci.burst_pods);
    // With drain-back, latency stays the same order while pods come home.
    let sw = result(&cmp, SPILLWAY);
    assert!(
        sw.pending_percentile_s(95.0) <= aci.pending_percentile_s(95.0) * 1.5 + 5.0,
        "{} vs {}",
        sw.pending_percentile_s(95.0),
        aci.pending_percentile_s(95.0)
    );
    assert!(sw.aci_vcpu_hours < aci.aci_vcpu_hours);
}

#[test]
fn a_trace_replays_with_the_trace_default_policy() {
    let base = Scenario::builtin();
    let mut csv = String::from("submit_s,duration_s,cpu,memory_mib,namespace,priority\n");
    // 80 one-core pods at once on a 3-node cluster: most must wait or burst.
    for i in 0..80 {
        csv.push_str(&format!(
            "{},{},1,1024,ns{},{}\n",
            i / 10,
            600 + i,
            i % 3,
            i % 2
        ));
    }
    let sc = sim::trace::apply(&base, &csv, "t.csv").unwrap_or_else(|e| panic!("{e}"));
    let cmp = run_all(&sc, &sim::trace_default_policies(), 1);
    for r in &cmp.results {
        assert_eq!(r.pods, 80);
        assert_eq!(r.unfinished, 0, "{}", r.strategy.name());
    }
    let vm = result(&cmp, Strategy::VmOnly);
    let sw = result(&cmp, SPILLWAY);
    // The default policy spills after 30 s: ~30 s + ACI start instead of a VM's minutes.
    assert!(
        sw.pending_percentile_s(99.0) < 120.0,
        "{}",
        sw.pending_percentile_s(99.0)
    );
    assert!(
        vm.pending_percentile_s(99.0) > 150.0,
        "{}",
        vm.pending_percentile_s(99.0)
    );
}

// ---- through the binary ----

fn spillway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running spillway: {e}"))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim-tests");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir.join(name)
}

#[test]
fn cli_simulate_prints_json_and_writes_a_self_contained_report() {
    let report = scratch("report.html");
    let out = spillway(&[
        "simulate",
        "-o",
        "json",
        "--strategies",
        "vm-only,spillway",
        "--report",
        report.to_str().unwrap_or(""),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(v["scenario"], "builtin-day");
    let names: Vec<&str> = v["strategies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["vm-only", "spillway"]);
    assert!(v["ideal"]["pending_p95_s"].is_number());
    assert!(v["strategies"][1]["vs_ideal"]["cost_ratio"].is_number());
    let namespaces: Vec<&str> = v["strategies"][1]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(namespaces, ["batch", "shop", "web"]);
    for key in [
        "pods",
        "pending_p50_s",
        "pending_p95_s",
        "pending_p99_s",
        "burst_pods",
        "vm_node_hours",
        "aci_vcpu_hours",
        "cost_usd",
    ] {
        assert!(v["strategies"][0][key].is_number(), "{key}");
    }
    let html = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(html.matches("<svg").count(), 5);
    assert!(html.contains("Pending time distribution") && html.contains("log scale"));
    assert!(html.contains("by namespace") && html.contains("by workload"));
    assert!(html.contains("The <b>ideal</b> row"));
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http")
    );
    assert!(html.contains("Pending pods") && html.contains("spillway"));
}

#[test]
fn cli_simulate_table_has_a_row_per_strategy() {
    let out = spillway(&["simulate"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["vm-only", "aci-always", "spillway", "spillway-no-drain"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} in\n{text}"
        );
    }
}

#[test]
fn cli_simulate_bad_input_exits_64_with_file_and_line() {
    let scen = scratch("bad-scenario.yaml");
    std::fs::write(&scen, "pools:\n  - name: user\n    nodeCpu: 4\n    nodeMemory: 16Gi\n    max: 3\n    pricePerHour: 0.2\nworkloads:\n  - name: w\n    namespace: a\n    cpu: 1\n    memory: 1Gi\n    duration: { fixed: soon }\n    arrivals: { poisson: { perMinute: 1 } }\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = spillway(&["simulate", "--scenario", scen.to_str().unwrap_or("")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-scenario.yaml:12:") && err.contains("duration"),
        "{err}"
    );

    let trace = scratch("bad-trace.csv");
    std::fs::write(
        &trace,
        "submit_s,duration_s,cpu,memory_mib,namespace\n0,60,1,512,a\n3,sixty,1,512,a\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = spillway(&["simulate", "--trace", trace.to_str().unwrap_or("")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-trace.csv:3:3: duration_s"), "{err}");

    let out = spillway(&["simulate", "--trace", "/nonexistent/trace.csv"]);
    assert_eq!(out.status.code(), Some(64));
    let out = spillway(&["simulate", "--strategies", "fastest"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--strategies"));
}

#[test]
fn cli_print_scenario_round_trips() {
    let out = spillway(&["simulate", "--print-scenario"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = Scenario::parse(&text, "printed.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, Scenario::builtin());
}

// ---- per-group tables, the ideal row, parallel runs ----

#[test]
fn groups_add_up_to_the_strategy_totals() {
    let (sc, pol) = builtin();
    let cmp = run_all(&sc, &pol, 42);
    assert_eq!(cmp.breakdowns.len(), cmp.results.len());
    for (r, b) in cmp.results.iter().zip(&cmp.breakdowns) {
        let name = r.strategy.name();
        assert_eq!(b.total.pods, r.pods, "{name}");
        assert_eq!(b.total.started, r.started, "{name}");
        assert_eq!(b.total.burst_pods, r.burst_pods, "{name}");
        assert_eq!(b.total.pending_ms, r.pending_ms, "{name}");
        assert!((b.total.cost_usd - r.cost_usd()).abs() < 1e-6, "{name}");
        for groups in [&b.namespaces, &b.workloads] {
            assert!(!groups.is_empty());
            let pods: u64 = groups.iter().map(|(_, s)| s.pods).sum();
            let bursts: u64 = groups.iter().map(|(_, s)| s.burst_pods).sum();
            let cost: f64 = groups.iter().map(|(_, s)| s.cost_usd).sum();
            assert_eq!(pods, r.pods, "{name}");
            assert_eq!(bursts, r.burst_pods, "{name}");
            assert!(
                (cost - r.cost_usd()).abs() < 1e-6,
                "{name}: {cost} vs {}",
                r.cost_usd()
            );
        }
        let names: Vec<&str> = b.workloads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["frontend", "worker", "checkout-spike", "nightly-jobs"]
        );
    }
    // Workers never burst (they do not tolerate the virtual node).
    let sw = &cmp.breakdowns[2].workloads[1].1;
    assert_eq!(sw.burst_pods, 0);
}

#[test]
fn the_builtin_days_spillway_p99_comes_from_the_batch_jobs_that_wait_by_policy() {
    // One p99 over all workloads hid where the wait is: per workload it is the
    // nightly jobs (batch-burst waits 5 minutes for VMs on purpose), while the
    // frontends that may burst stay within seconds at p95.
    let (sc, pol) = builtin();
    let cmp = sim::compare(&sc, &pol, 42, &[SPILLWAY], &mut |_, _| {});
    let by = |name: &str| {
        cmp.breakdowns[0]
            .workloads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    let jobs = by("nightly-jobs");
    let frontend = by("frontend");
    assert!(
        jobs.pending_percentile_s(50.0) > 200.0,
        "{}",
        jobs.pending_percentile_s(50.0)
    );
    assert!(
        frontend.pending_percentile_s(95.0) < 10.0,
        "{}",
        frontend.pending_percentile_s(95.0)
    );
    let table = cmp.table();
    assert!(
        table.contains("by workload") && table.contains("nightly-jobs"),
        "{table}"
    );
}

/// A shorter day (3 h of arrivals, the spike and the jobs inside it) for
/// runs over many seeds in a debug build.
fn short_day() -> Scenario {
    let mut sc = Scenario::builtin();
    sc.duration = Duration::from_secs(3 * 3600);
    for w in &mut sc.workloads {
        if let sim::scenario::Arrivals::Burst { at, .. } = &mut w.arrivals {
            *at = Duration::from_millis(at.millis() % (2 * 3_600_000));
        }
        if let sim::scenario::Arrivals::Diurnal { per_minute, .. } = &mut w.arrivals {
            *per_minute *= 3.0;
        }
    }
    sc
}

#[test]
fn the_ideal_row_is_never_worse_than_any_strategy_on_any_seed() {
    let sc = short_day();
    let pol = sim::builtin_policies().unwrap_or_else(|e| panic!("{e}"));
    for seed in 1..=8u64 {
        let cmp = sim::compare(&sc, &pol, seed, &Strategy::ALL, &mut |_, _| {});
        let ideal = &cmp.ideal;
        assert_eq!(ideal.total.pods, cmp.pods);
        assert!(ideal.total.cost_usd > 0.0);
        for (r, b) in cmp.results.iter().zip(&cmp.breakdowns) {
            let name = r.strategy.name();
            // Percentiles compare like with like only when every pod started.
            assert_eq!(r.unfinished, 0, "seed {seed} {name}");
            for p in [50.0, 95.0, 99.0] {
                assert!(
                    ideal.total.pending_percentile_s(p) <= r.pending_percentile_s(p),
                    "seed {seed} {name} p{p}: ideal {} > {}",
                    ideal.total.pending_percentile_s(p),
                    r.pending_percentile_s(p)
                );
            }
            assert!(
                ideal.total.cost_usd <= r.cost_usd(),
                "seed {seed} {name}: ideal ${} > ${}",
                ideal.total.cost_usd,
                r.cost_usd()
            );
            for (groups, ideal_groups) in [
                (&b.namespaces, &ideal.namespaces),
                (&b.workloads, &ideal.workloads),
            ] {
                for ((g, st), (ig, ist)) in groups.iter().zip(ideal_groups) {
                    assert_eq!(g, ig);
                    for p in [50.0, 95.0, 99.0] {
                        assert!(
                            ist.pending_percentile_s(p) <= st.pending_percentile_s(p),
                            "seed {seed} {name} {g} p{p}"
                        );
                    }
                    assert!(
                        ist.cost_usd <= st.cost_usd + 1e-9,
                        "seed {seed} {name} {g}: ideal ${} > ${}",
                        ist.cost_usd,
                        st.cost_usd
                    );
                }
            }
            let vs = cmp.cost_vs_ideal(r.cost_usd()).unwrap_or(0.0);
            assert!(vs >= 1.0, "seed {seed} {name}: {vs}");
        }
    }
}

#[test]
fn parallel_and_sequential_runs_give_byte_identical_output() {
    let (sc, pol) = builtin();
    let mut calls = 0u64;
    let sequential = sim::compare_on(&sc, &pol, 7, &Strategy::ALL, 1, &mut |_, _| calls += 1);
    let mut seen = [false; 4];
    let parallel = sim::compare_on(&sc, &pol, 7, &Strategy::ALL, 4, &mut |i, _| seen[i] = true);
    assert!(calls > 0);
    assert_eq!(
        seen, [true; 4],
        "progress from every strategy reaches the caller"
    );
    assert_eq!(
        sequential.to_json().to_string(),
        parallel.to_json().to_string()
    );
    assert_eq!(sequential.table(), parallel.table());
    let html = |c: &Comparison| sim::report::html(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(html(&sequential), html(&parallel));
    assert_eq!(sequential, parallel);
    // Two threads for four strategies: each takes the next one left.
    let two = sim::compare_on(&sc, &pol, 7, &Strategy::ALL, 2, &mut |_, _| {});
    assert_eq!(two.to_json().to_string(), sequential.to_json().to_string());
}

#[test]
fn cli_simulate_threads_do_not_change_the_output() {
    let one = scratch("threads-1.html");
    let four = scratch("threads-4.html");
    let run = |threads: &str, report: &std::path::Path| {
        let out = spillway(&[
            "simulate",
            "--seed",
            "3",
            "--threads",
            threads,
            "--report",
            report.to_str().unwrap_or(""),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let a = run("1", &one);
    let b = run("4", &four);
    assert_eq!(a, b);
    let text = String::from_utf8_lossy(&a);
    assert!(
        text.lines().any(|l| l.starts_with("ideal ")),
        "an ideal row in\n{text}"
    );
    assert!(text.contains("p95 vs ideal") && text.contains("by namespace"));
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&one), read(&four));
    let out = spillway(&["simulate", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(64));
}
