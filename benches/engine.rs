//! Engine bench: full `Engine::decide_all` passes over a large snapshot
//! (10,000 pending pods × 5,000 VM nodes, 100 namespaces with budgets), plus
//! smaller tiers for scale. Plain timing loop; writes
//! `target/spillway-bench/engine.json`.
//!
//! The snapshot has AKS-like node classes (pool and zone labels, a tainted
//! gpu pool) and pods with the API server's default tolerations, some
//! pinned to a pool by nodeSelector or required affinity, some to zones,
//! some tolerating the gpu taint: the pass judges placements per class.
//!
//! Baseline in the same run: the pass's VM first fit (every pending pod takes
//! room on the lowest-index node of its pool that fits) done by the engine's
//! `GroupedFit` (an index over all nodes and one per pool) and by a naive
//! per-pod scan over all nodes, on the same snapshot; both must place every
//! pod alike.
//!
//! `cargo bench --bench engine` (release). Env: `SPILLWAY_BENCH_ITERS` (default 20).

use spillway::decision::fit::GroupedFit;
use spillway::decision::placement::{
    NodeTerm, Operator, Requirement, Taint, TaintEffect, Toleration, TolerationOperator,
};
use spillway::decision::{
    AciSize, BurstUsage, Engine, NodeClass, PendingPod, Placement, Snapshot, VmNode, VmPool,
};
use spillway::policy::{BurstPolicy, PolicySet};
use spillway::units::{Duration, GIB, MIB, Resources, Timestamp};
use std::collections::BTreeMap;
use std::time::Instant;

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

/// Deterministic pseudo-random numbers (xorshift), so every run sees the same snapshot.
struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn snapshot(pending: usize, nodes: usize, namespaces: usize) -> Snapshot {
    let mut rng = Xs(0x9E37_79B9_7F4A_7C15);
    let pools = 10.min(nodes.max(1));
    let shapes = [(4_000, 16 * GIB), (8_000, 32 * GIB), (16_000, 64 * GIB)];
    let vm_pools: Vec<VmPool> = (0..pools)
        .map(|p| {
            let (cpu, mem) = shapes[p % shapes.len()];
            let members = nodes / pools + usize::from(p < nodes % pools);
            VmPool {
                name: format!("pool{p}"),
                min: members as u32,
                max: members as u32 + if p % 3 == 0 { 0 } else { 20 },
                node_allocatable: Resources::new(cpu, mem),
                nodes: members as u32,
                upcoming: Vec::new(),
                provision_time: Some(Duration::from_secs(180 + 30 * p as u64)),
                class: Some(p * 3),
            }
        })
        .collect();
    // AKS-like node classes: pool and zone labels; the last pool is a
    // tainted gpu pool.
    let classes: std::sync::Arc<[NodeClass]> = (0..pools * 3)
        .map(|c| {
            let (p, zone) = (c / 3, c % 3 + 1);
            let labels = BTreeMap::from([
                ("agentpool".to_string(), format!("pool{p}")),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (
                    "topology.kubernetes.io/zone".to_string(),
                    format!("westeurope-{zone}"),
                ),
            ]);
            let taints = if p == pools - 1 && pools > 1 {
                vec![Taint {
                    key: "sku".into(),
                    value: "gpu".into(),
                    effect: TaintEffect::NoSchedule,
                }]
            } else {
                vec![]
            };
            NodeClass::new(labels, taints)
        })
        .collect();
    let vm_nodes: Vec<VmNode> = (0..nodes)
        .map(|i| {
            let pool = &vm_pools[i % pools];
            let a = pool.node_allocatable;
            // Mostly full: 85–100 % allocated, a few nodes with room.
            let used_pct = 85 + rng.below(16);
            VmNode {
                name: format!("aks-{}-{i:05}", pool.name),
                pool: pool.name.clone(),
                allocatable: a,
                allocated: Resources::new(
                    a.cpu_millis * used_pct / 100,
                    a.memory_bytes * used_pct / 100,
                ),
                schedulable: rng.below(50) != 0,
                // Three zones per pool, one class each.
                class: (i % pools) * 3 + i % 3,
                // AKS's default (kubenet/overlay): 110 pods, some nodes full.
                pods: if rng.below(20) == 0 { 110 } else { 30 },
                max_pods: Some(110),
            }
        })
        .collect();
    let pending_pods: Vec<PendingPod> = (0..pending)
        .map(|i| {
            let ns = format!("ns{:03}", i % namespaces);
            let mut labels = BTreeMap::new();
            labels.insert("app".to_string(), format!("app{}", i % 7));
            let mut pod = PendingPod {
                namespace: ns,
                name: format!("pod-{i:06}"),
                labels,
                priority: (rng.below(3) as i32) - 1,
                requests: Resources::new(
                    100 + 100 * rng.below(20),
                    (128 + 128 * rng.below(32)) * MIB,
                ),
                aci: Default::default(),
                pending_since: Timestamp::from_millis(NOW.millis() - rng.below(600_000) as i64),
                tolerates_virtual: rng.below(10) != 0,
                aci_incompatible: (rng.below(50) == 0).then(|| "uses hostNetwork".to_string()),
                pool: None,
                placement: Placement::default(),
            };
            pod.aci = AciSize::of_requests(&pod.requests);
            // As the API server admits them: every pod tolerates not-ready and
            // unreachable for a while (DefaultTolerationSeconds).
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                pod.placement.tolerations.push(Toleration {
                    key: key.into(),
                    operator: TolerationOperator::Exists,
                    value: String::new(),
                    effect: Some(TaintEffect::NoExecute),
                });
            }
            match rng.below(10) {
                // Pinned to a pool: by nodeSelector or by required affinity.
                0 => {
                    let p = format!("pool{}", rng.below(pools as u64));
                    pod.placement
                        .node_selector
                        .insert("agentpool".into(), p.clone());
                    pod.pool = Some(p);
                }
                1 => {
                    let p = format!("pool{}", rng.below(pools as u64));
                    pod.placement.affinity = Some(vec![NodeTerm {
                        expressions: vec![Requirement::new("agentpool", Operator::In, &[&p])],
                        fields: vec![],
                    }]);
                    pod.pool = Some(p);
                }
                // A zone, through affinity.
                2 => {
                    pod.placement.affinity = Some(vec![NodeTerm {
                        expressions: vec![Requirement::new(
                            "topology.kubernetes.io/zone",
                            Operator::In,
                            &["westeurope-1", "westeurope-2"],
                        )],
                        fields: vec![],
                    }]);
                }
                // Tolerates the gpu pool's taint.
                3 => pod.placement.tolerations.push(Toleration {
                    key: "sku".into(),
                    operator: TolerationOperator::Equal,
                    value: "gpu".into(),
                    effect: None,
                }),
                _ => {}
            }
            pod
        })
        .collect();
    let burst_usage = (0..namespaces)
        .map(|n| {
            let mut u = BurstUsage::default();
            for _ in 0..rng.below(5) {
                u.add(&Resources::new(1000, 2 * GIB), 0.05);
            }
            (format!("ns{n:03}"), u)
        })
        .collect();
    Snapshot {
        now: NOW,
        nodes: vm_nodes,
        pools: vm_pools,
        pending: pending_pods,
        burst_usage,
        raisable: Vec::new(),
        aci_quota: Default::default(),
        classes,
    }
}

fn policies(namespaces: usize) -> PolicySet {
    let mut all = Vec::new();
    let mut default = BurstPolicy::defaults("cluster-default", None);
    default.budget.max_pods = Some(50);
    all.push(default);
    for n in (0..namespaces).step_by(2) {
        let ns = format!("ns{n:03}");
        let mut p = BurstPolicy::defaults("burst", Some(&ns));
        p.burst.spill_after = Duration::from_secs(15 + (n as u64 % 4) * 15);
        p.budget.max_pods = Some(20 + n as u32);
        p.budget.max_cpu_millis = Some(40_000);
        p.budget.max_hourly_cost = Some(5.0);
        all.push(p);
    }
    match PolicySet::new(all) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("bench policies are invalid: {e}");
            std::process::exit(1);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (p50, p99) of one pass, in milliseconds.
fn measure(pending: usize, nodes: usize, namespaces: usize, iters: usize) -> (f64, f64) {
    let snap = snapshot(pending, nodes, namespaces);
    let set = policies(namespaces);
    let engine = Engine::default();
    // Warm-up, and a check that the pass decides every pod.
    let decisions = engine.decide_all(&snap, &set);
    assert_eq!(decisions.len(), pending);
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            let d = engine.decide_all(&snap, &set);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            std::hint::black_box(d);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (percentile(&times, 50.0), percentile(&times, 99.0))
}

/// What both first-fit variants start from: free room per node, each node's
/// pool, and the pool each pending pod asks for (as in the engine, an unknown
/// pool is `usize::MAX` on a node and `usize::MAX - 1` on a pod: no match).
struct FitInput {
    room: Vec<Resources>,
    node_pool: Vec<usize>,
    wanted: Vec<Option<usize>>,
    requests: Vec<Resources>,
}

fn fit_input(snap: &Snapshot) -> FitInput {
    let pool_index: BTreeMap<&str, usize> = snap
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let index = |name: &str, unknown: usize| pool_index.get(name).copied().unwrap_or(unknown);
    FitInput {
        room: snap.nodes.iter().map(VmNode::free_room).collect(),
        node_pool: snap
            .nodes
            .iter()
            .map(|n| index(&n.pool, usize::MAX))
            .collect(),
        wanted: snap
            .pending
            .iter()
            .map(|p| p.pool.as_deref().map(|n| index(n, usize::MAX - 1)))
            .collect(),
        requests: snap.pending.iter().map(|p| p.requests).collect(),
    }
}

/// First fit through the engine's segment tree.
fn first_fit_indexed(inp: &FitInput) -> Vec<Option<usize>> {
    // As the engine does: one index over all nodes and one per pool.
    let groups: Vec<u64> = inp.node_pool.iter().map(|&p| p as u64).collect();
    let mut fit = GroupedFit::new(inp.room.clone(), &groups);
    inp.requests
        .iter()
        .zip(&inp.wanted)
        .map(|(req, wanted)| {
            let i = fit.first_fit(req, wanted.map(|w| w as u64))?;
            fit.take(i, req);
            Some(i)
        })
        .collect()
}

/// The naive baseline: for each pod, scan every node from the first.
fn first_fit_naive(inp: &FitInput) -> Vec<Option<usize>> {
    let mut room = inp.room.clone();
    inp.requests
        .iter()
        .zip(&inp.wanted)
        .map(|(req, wanted)| {
            let i = (0..room.len())
                .find(|&i| wanted.is_none_or(|w| inp.node_pool[i] == w) && req.fits_in(&room[i]))?;
            room[i] = room[i].saturating_sub(req);
            Some(i)
        })
        .collect()
}

/// p50 of `f` in milliseconds over `iters` runs (after one warm-up run, whose
/// result is returned).
fn time_p50<T>(iters: usize, f: impl Fn() -> T) -> (f64, T) {
    let first = f();
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (percentile(&times, 50.0), first)
}

fn main() {
    let iters: usize = std::env::var("SPILLWAY_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    println!(
        "{:>8} {:>6} {:>10} {:>10}",
        "pending", "nodes", "p50 ms", "p99 ms"
    );
    for (pending, nodes) in [
        (1_000, 100),
        (1_000, 1_000),
        (10_000, 1_000),
        (100_000, 5_000),
    ] {
        // The largest tier is slow; a few passes show its order of magnitude.
        let n = if pending > 10_000 {
            iters.min(5)
        } else {
            iters
        };
        let (p50, p99) = measure(pending, nodes, 100, n);
        println!("{pending:>8} {nodes:>6} {p50:>10.2} {p99:>10.2}");
    }
    let (pending, nodes) = (10_000, 5_000);
    let (p50, p99) = measure(pending, nodes, 100, iters);
    println!("{pending:>8} {nodes:>6} {p50:>10.2} {p99:>10.2}");

    let inp = fit_input(&snapshot(pending, nodes, 100));
    let (indexed_ms, indexed) = time_p50(iters, || first_fit_indexed(&inp));
    let (naive_ms, naive) = time_p50(iters, || first_fit_naive(&inp));
    if indexed != naive {
        eprintln!("the indexed and the naive first fit place pods differently");
        std::process::exit(1);
    }
    let placed = indexed.iter().filter(|n| n.is_some()).count();
    let ratio = naive_ms / indexed_ms.max(f64::MIN_POSITIVE);
    println!(
        "first fit, {pending} pods × {nodes} nodes ({placed} placed): indexed {indexed_ms:.2} ms, naive scan {naive_ms:.2} ms (p50), naive/indexed {ratio:.1}×"
    );

    let out = serde_json::json!({
        "pending": pending,
        "nodes": nodes,
        "pass_ms_p50": p50,
        "pass_ms_p99": p99,
        "first_fit": {
            "pending": pending,
            "nodes": nodes,
            "placed": placed,
            "indexed_ms_p50": indexed_ms,
            "naive_scan_ms_p50": naive_ms,
            "naive_over_indexed": ratio,
        },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    let path = dir.join("engine.json");
    let written =
        std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, format!("{out:#}\n")));
    match written {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
