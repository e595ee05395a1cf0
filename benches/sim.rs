//! Bench `sim`: a synthetic 1,000,000-pod day through the spillway strategy,
//! beside the vm-only strategy on the same workload in the same run.
//! Target: < 5 s for the spillway run on a 2-core machine.
//! Writes `target/spillway-bench/sim.json`.
//!
//! `cargo bench --bench sim [-- --pods N]`

use spillway::sim::dist::Dist;
use spillway::sim::scenario::{Arrivals, WorkloadSpec};
use spillway::sim::{self, Scenario, Strategy};
use spillway::units::{Duration, MIB, Resources};
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods: f64 = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000.0);
    let mut sc = Scenario::builtin();
    sc.name = format!("synthetic-{}", pods as u64);
    sc.pools[0].max = 2_000;
    sc.aci.quota_cores_millis = None;
    sc.aci.quota_groups = None;
    sc.aci.creates_per_minute = 10_000;
    let per_minute = pods / 1440.0;
    let workload =
        |name: &str, ns: &str, share: f64, cpu: u64, mem_mib: u64, mean_s: u64, amplitude: f64| {
            WorkloadSpec {
                name: name.into(),
                namespace: ns.into(),
                labels: BTreeMap::new(),
                priority: 0,
                requests: Resources::new(cpu, mem_mib * MIB),
                duration: Dist::Exponential {
                    mean: Duration::from_secs(mean_s),
                },
                tolerates_virtual: true,
                arrivals: Arrivals::Diurnal {
                    per_minute: per_minute * share,
                    amplitude,
                    peak_at: Duration::from_secs(14 * 3600),
                },
            }
        };
    sc.workloads = vec![
        workload("api", "web", 0.6, 250, 512, 300, 0.6),
        workload("jobs", "batch", 0.3, 500, 1024, 240, 0.3),
        workload("misc", "tools", 0.1, 100, 256, 600, 0.0),
    ];
    let policies = sim::trace_default_policies();
    let seed = 42;

    let t = Instant::now();
    let workload_pods = sc.generate(seed);
    let gen_s = t.elapsed().as_secs_f64();

    let measure = |s: Strategy| {
        let t = Instant::now();
        let r = sim::world::run(&sc, &workload_pods, s, &policies, seed, &mut |_| {});
        (r, t.elapsed().as_secs_f64())
    };
    let (sw, sw_s) = measure(Strategy::Spillway { drain_back: true });
    let (vm, vm_s) = measure(Strategy::VmOnly);

    println!(
        "workload: {} pods generated in {gen_s:.2} s",
        workload_pods.len()
    );
    for (name, r, secs) in [("spillway", &sw, sw_s), ("vm-only (baseline)", &vm, vm_s)] {
        println!(
            "{name:>20}: {:>9} events in {secs:>6.2} s = {:>10.0} events/s; p95 pending {:>6.1} s, burst {:>7}, peak nodes {}",
            r.events,
            r.events as f64 / secs,
            r.pending_percentile_s(95.0),
            r.burst_pods,
            r.peak_vm_nodes
        );
    }
    let target_met = sw_s < 5.0;
    println!(
        "target < 5 s for the spillway run: {}",
        if target_met { "met" } else { "NOT met" }
    );
    let json = serde_json::json!({
        "pods": workload_pods.len(),
        "events": sw.events,
        "seconds": sw_s,
        "events_per_s": sw.events as f64 / sw_s,
        "target_seconds": 5.0,
        "target_met": target_met,
        "generate_seconds": gen_s,
        "baseline_vm_only": {
            "events": vm.events,
            "seconds": vm_s,
            "events_per_s": vm.events as f64 / vm_s,
        },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("sim.json"), format!("{json:#}\n")))
    {
        eprintln!("writing sim.json: {e}");
        std::process::exit(1);
    }
    println!("wrote {}", dir.join("sim.json").display());
}
