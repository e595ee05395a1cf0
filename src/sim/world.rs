//! The discrete-event simulation of one strategy on one workload.
//!
//! Virtual time in milliseconds, a priority queue of events, no threads and
//! no sleeps. The cluster model:
//! - **scheduler**: a pass every `schedulerInterval` while something changed
//!   (pod arrival, node ready, pod completion, a wait ending). Each pass calls
//!   the real decision engine ([`Engine::plan`]) on a snapshot of the
//!   simulated cluster and acts on the verdicts: `vm` binds to the node the
//!   engine chose, `burst` creates an ACI container group (if the create rate
//!   allows), `wait` schedules a pass when the wait ends (spillway's nudge);
//! - **cluster autoscaler**: every `scanInterval`, pending pods and pending
//!   capacity placeholders that fit neither existing nor upcoming nodes get
//!   new nodes (first pool that fits, up to its max), ready after a drawn
//!   provisioning time; nodes empty for `scaleDownAfter` are removed (down to
//!   min). Pods running on ACI are invisible to it, as in a real cluster;
//! - **ACI**: regional core and group quotas, a create-rate token bucket and a
//!   drawn start latency; billed per vCPU-second and GB-second from create to
//!   completion;
//! - **spillway extras** (strategy `spillway` with drain-back on, for pods
//!   whose policy enables drain-back): a capacity placeholder per burst pod
//!   (the lowest priority, preempted by any real pod) so the autoscaler grows
//!   the pool, and drain-back: once the placeholder has held VM room for
//!   `drainBack.after`, the burst pod is evicted (at most `maxPerMinute` per
//!   namespace, as the autoscaler counts) and recreated, and the scheduler
//!   puts it on the VM. Controllers and PDBs are not modelled.
//!
//! The baselines use the same engine with synthetic policies: `vm-only` is
//! `mode: Never` everywhere; `aci-always` (the AKS virtual node's default) is
//! `mode: Auto` with `spillAfter: 0` and no budgets, so anything that tolerates
//! the virtual node and does not fit a VM right now goes to ACI at once.

use super::dist::Stream;
use super::scenario::{PodSpec, Scenario};
use crate::decision::fit::FitIndex;
use crate::decision::{
    AciQuota, AciSize, BurstUsage, Engine, EngineConfig, PendingPod, Reason, Snapshot,
    UpcomingNode, Verdict, VmNode, VmPool,
};
use crate::policy::{BurstMode, BurstPolicy, PolicySet};
use crate::units::{Duration, Resources, Timestamp};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

/// How pods get onto the virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The cluster autoscaler alone; nothing bursts.
    VmOnly,
    /// The AKS virtual node's default: burst at once when no VM has room.
    AciAlways,
    /// spillway's engine with the given policies; drain-back on or off.
    Spillway { drain_back: bool },
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::VmOnly,
        Strategy::AciAlways,
        Strategy::Spillway { drain_back: true },
        Strategy::Spillway { drain_back: false },
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::VmOnly => "vm-only",
            Strategy::AciAlways => "aci-always",
            Strategy::Spillway { drain_back: true } => "spillway",
            Strategy::Spillway { drain_back: false } => "spillway-no-drain",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|st| st.name() == s)
    }

    /// The policies this strategy decides with.
    pub fn policies(self, spillway: &PolicySet) -> PolicySet {
        match self {
            Strategy::VmOnly => {
                let mut p = BurstPolicy::defaults("vm-only", None);
                p.burst.mode = BurstMode::Never;
                p.drain_back.enabled = false;
                PolicySet::with_default(p)
            }
            Strategy::AciAlways => {
                let mut p = BurstPolicy::defaults("aci-always", None);
                p.burst.spill_after = Duration::ZERO;
                p.burst.max_vm_wait = Duration::ZERO;
                p.drain_back.enabled = false;
                PolicySet::with_default(p)
            }
            Strategy::Spillway { .. } => spillway.clone(),
        }
    }
}

/// One point of the time series in the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub t_s: u64,
    pub pending: u32,
    pub vm_nodes: u32,
    pub burst_cores: f64,
}

/// What happened to one pod in a run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodOutcome {
    /// Submit → first running, in milliseconds; `None` if it never started.
    pub pending_ms: Option<u64>,
    /// It ran on ACI at least once.
    pub burst: bool,
    /// Its ACI bill over all its incarnations, USD.
    pub aci_cost_usd: f64,
    /// Its use of VM nodes at list price: hours bound to a node × the larger
    /// of its CPU and memory fractions of that node × the node's hourly
    /// price. The VM bill (idle nodes included) is shared out in proportion.
    pub vm_use_usd: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub strategy: Strategy,
    pub pods: u64,
    /// Pods that started at least once.
    pub started: u64,
    /// Pods that never started before the horizon.
    pub unfinished: u64,
    /// Start events of all incarnations (first starts + restarts after drain-back).
    pub starts: u64,
    /// Submit → first running, per started pod, in milliseconds (sorted).
    pub pending_ms: Vec<u64>,
    pub burst_pods: u64,
    pub burst_reasons: BTreeMap<&'static str, u64>,
    pub drained_back: u64,
    pub peak_burst_cores: f64,
    pub vm_node_hours: f64,
    pub vm_cost_usd: f64,
    pub aci_vcpu_hours: f64,
    pub aci_gb_hours: f64,
    pub aci_cost_usd: f64,
    pub peak_vm_nodes: u32,
    /// The most each namespace ever had on ACI at once.
    pub peak_burst_by_namespace: BTreeMap<String, BurstUsage>,
    pub events: u64,
    pub series: Vec<Sample>,
    /// Per pod, in the order of the generated workload.
    pub outcomes: Vec<PodOutcome>,
}

impl RunResult {
    pub fn cost_usd(&self) -> f64 {
        self.vm_cost_usd + self.aci_cost_usd
    }

    /// Each pod's share of the bill: its ACI cost plus its part of the VM
    /// bill, in proportion to its VM use. They add up to [`Self::cost_usd`]
    /// whenever some pod ran on a VM (else the idle VM bill is nobody's).
    pub fn pod_costs_usd(&self) -> Vec<f64> {
        let use_total: f64 = self.outcomes.iter().map(|o| o.vm_use_usd).sum();
        let per_use = if use_total > 0.0 {
            self.vm_cost_usd / use_total
        } else {
            0.0
        };
        self.outcomes
            .iter()
            .map(|o| o.aci_cost_usd + o.vm_use_usd * per_use)
            .collect()
    }

    /// Nearest-rank percentile of pending seconds (0 when nothing started).
    pub fn pending_percentile_s(&self, p: f64) -> f64 {
        if self.pending_ms.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.pending_ms.len() as f64).ceil() as usize;
        self.pending_ms[rank.clamp(1, self.pending_ms.len()) - 1] as f64 / 1000.0
    }

    pub fn pending_over(&self, secs: u64) -> u64 {
        self.pending_ms
            .iter()
            .filter(|&&ms| ms > secs * 1000)
            .count() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(u32),
    Pass,
    NodeReady(u32),
    Started(u32, u32),
    Complete(u32, u32),
    Tick,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Vm(u32),
    Aci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotArrived,
    Pending,
    Starting(Place),
    Running(Place),
    Done,
}

#[derive(Debug, Clone, Copy)]
struct DrainCfg {
    after: u64,
    per_minute: u32,
    /// Index of the namespace's eviction log: like the autoscaler, the
    /// per-minute limit counts every drain-back in the namespace.
    namespace: usize,
}

#[derive(Debug, Clone, Copy)]
struct OnAci {
    bound_at: u64,
    /// ACI-effective resources (what is billed and counted in budgets).
    res: Resources,
    drain: Option<DrainCfg>,
}

#[derive(Debug, Clone, Copy)]
struct Placeholder {
    node: Option<u32>,
    since: u64,
}

struct Pod {
    phase: Phase,
    inc: u32,
    remaining: u64,
    end_at: u64,
    started: bool,
    aci: Option<OnAci>,
    placeholder: Option<Placeholder>,
    /// When it was bound to its VM node (while on one).
    vm_bound_at: u64,
    pending_pos: usize,
    /// The scheduler tried and could not place it (PodScheduled=False): only
    /// such pods are demand for the cluster autoscaler.
    unschedulable: bool,
}

struct Node {
    pool: usize,
    created: u64,
    ready: bool,
    deleted: Option<u64>,
    real: Resources,
    ph: Resources,
    pods: u32,
    placeholders: Vec<u32>,
    empty_since: Option<u64>,
    /// Index in `snap.nodes` while ready.
    snap_idx: usize,
}

const NONE: usize = usize::MAX;

/// The larger of a pod's CPU and memory fractions of a node: how much of
/// the node it keeps others from using.
pub fn node_fraction(req: &Resources, node: &Resources) -> f64 {
    let cpu = req.cpu_millis as f64 / node.cpu_millis.max(1) as f64;
    let mem = req.memory_bytes as f64 / node.memory_bytes.max(1) as f64;
    cpu.max(mem)
}

/// Run one strategy over a generated workload.
pub fn run(
    sc: &Scenario,
    pods: &[PodSpec],
    strategy: Strategy,
    spillway_policies: &PolicySet,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> RunResult {
    let policies = strategy.policies(spillway_policies);
    let mut w = World::new(sc, pods, strategy, &policies, seed);
    w.run(progress);
    w.finish()
}

struct World<'a> {
    sc: &'a Scenario,
    specs: &'a [PodSpec],
    strategy: Strategy,
    policies: &'a PolicySet,
    engine: Engine,
    seed: u64,
    horizon: u64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pass_times: BTreeSet<u64>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    /// Node ids in `snap.nodes` order.
    ready: Vec<u32>,
    snap: Snapshot,
    pending_ids: Vec<u32>,
    ph_pending: BTreeSet<u32>,
    ph_dirty: bool,
    on_aci: BTreeSet<u32>,
    aci_in_use: Resources,
    aci_groups: u32,
    tokens: f64,
    tokens_at: u64,
    nodes_requested: Vec<u64>,
    provision_sum: Vec<(u64, u64)>,
    drain_namespaces: BTreeMap<String, usize>,
    drain_log: Vec<VecDeque<u64>>,
    // measurements
    events: u64,
    starts: u64,
    pending_ms: Vec<u64>,
    burst_pods: u64,
    burst_reasons: BTreeMap<&'static str, u64>,
    drained_back: u64,
    peak_burst_cores: f64,
    aci_vcpu_hours: f64,
    aci_gb_hours: f64,
    peak_vm_nodes: u32,
    peak_by_ns: BTreeMap<String, BurstUsage>,
    series: Vec<Sample>,
    outcomes: Vec<PodOutcome>,
}

impl<'a> World<'a> {
    fn new(
        sc: &'a Scenario,
        specs: &'a [PodSpec],
        strategy: Strategy,
        policies: &'a PolicySet,
        seed: u64,
    ) -> Self {
        let engine = Engine::new(EngineConfig {
            prices: sc.prices,
            scale_up_delay: sc.autoscaler.scan_interval,
            default_provision_time: sc
                .pools
                .first()
                .map_or(Duration::from_secs(240), |p| p.provision_time.mean()),
            ..EngineConfig::default()
        });
        let pools = sc
            .pools
            .iter()
            .map(|p| VmPool {
                name: p.name.clone(),
                min: p.min,
                max: p.max,
                node_allocatable: p.node,
                nodes: 0,
                upcoming: Vec::new(),
                provision_time: None,
                class: None,
            })
            .collect();
        let mut w = World {
            sc,
            specs,
            strategy,
            policies,
            engine,
            seed,
            horizon: sc.horizon().millis(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            pass_times: BTreeSet::new(),
            pods: specs
                .iter()
                .map(|s| Pod {
                    phase: Phase::NotArrived,
                    inc: 0,
                    remaining: s.duration.millis(),
                    end_at: 0,
                    started: false,
                    aci: None,
                    placeholder: None,
                    vm_bound_at: 0,
                    pending_pos: NONE,
                    unschedulable: false,
                })
                .collect(),
            nodes: Vec::new(),
            ready: Vec::new(),
            snap: Snapshot {
                pools,
                ..Snapshot::default()
            },
            pending_ids: Vec::new(),
            ph_pending: BTreeSet::new(),
            ph_dirty: false,
            on_aci: BTreeSet::new(),
            aci_in_use: Resources::default(),
            aci_groups: 0,
            tokens: sc.aci.creates_per_minute as f64,
            tokens_at: 0,
            nodes_requested: vec![0; sc.pools.len()],
            provision_sum: vec![(0, 0); sc.pools.len()],
            drain_namespaces: BTreeMap::new(),
            drain_log: Vec::new(),
            events: 0,
            starts: 0,
            pending_ms: Vec::new(),
            burst_pods: 0,
            burst_reasons: BTreeMap::new(),
            drained_back: 0,
            peak_burst_cores: 0.0,
            aci_vcpu_hours: 0.0,
            aci_gb_hours: 0.0,
            peak_vm_nodes: 0,
            peak_by_ns: BTreeMap::new(),
            series: Vec::new(),
            outcomes: vec![PodOutcome::default(); specs.len()],
        };
        for (pi, p) in sc.pools.iter().enumerate() {
            for _ in 0..p.min {
                let id = w.add_node(pi);
                w.node_ready(id);
            }
        }
        for (i, s) in specs.iter().enumerate() {
            w.push(s.submit.millis(), Ev::Arrive(i as u32));
        }
        w.push(0, Ev::Tick);
        w.push(0, Ev::Sample);
        w
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn request_pass(&mut self, at: u64) {
        let iv = self.sc.scheduler_interval.millis().max(1);
        let t = at.max(self.now).div_ceil(iv) * iv;
        if self.pass_times.insert(t) {
            self.push(t, Ev::Pass);
        }
    }

    fn run(&mut self, progress: &mut dyn FnMut(u64)) {
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > self.horizon {
                break;
            }
            self.now = t;
            self.events += 1;
            if self.events.is_multiple_of(1 << 14) {
                progress(t);
            }
            match ev {
                Ev::Arrive(p) => self.arrive(p),
                Ev::Pass => {
                    self.pass_times.remove(&t);
                    self.pass();
                }
                Ev::NodeReady(n) => self.node_ready(n),
                Ev::Started(p, inc) => self.started(p, inc),
                Ev::Complete(p, inc) => self.complete(p, inc),
                Ev::Tick => {
                    self.tick();
                    let next = t + self.sc.autoscaler.scan_interval.millis();
                    self.push(next, Ev::Tick);
                }
                Ev::Sample => {
                    self.sample();
                    self.push(t + 60_000, Ev::Sample);
                }
            }
        }
        self.now = self.horizon;
        progress(self.horizon);
    }

    // ---- pods ----

    fn arrive(&mut self, p: u32) {
        let since = self.specs[p as usize].submit;
        self.make_pending(p, Timestamp::from_millis(since.millis() as i64));
    }

    fn make_pending(&mut self, p: u32, since: Timestamp) {
        let s = &self.specs[p as usize];
        self.pods[p as usize].phase = Phase::Pending;
        self.pods[p as usize].unschedulable = false;
        self.pods[p as usize].pending_pos = self.snap.pending.len();
        self.snap.pending.push(PendingPod {
            namespace: s.namespace.to_string(),
            name: s.name.clone(),
            labels: (*s.labels).clone(),
            priority: s.priority,
            requests: s.requests,
            aci: AciSize::of_requests(&s.requests),
            pending_since: since,
            tolerates_virtual: s.tolerates_virtual,
            aci_incompatible: None,
            pool: None,
            placement: Default::default(),
        });
        self.pending_ids.push(p);
        self.request_pass(self.now);
    }

    fn remove_pending(&mut self, idx: usize) {
        let p = self.pending_ids[idx];
        self.pods[p as usize].pending_pos = NONE;
        self.snap.pending.swap_remove(idx);
        self.pending_ids.swap_remove(idx);
        if let Some(&moved) = self.pending_ids.get(idx) {
            self.pods[moved as usize].pending_pos = idx;
        }
    }

    fn started(&mut self, p: u32, inc: u32) {
        let pod = &mut self.pods[p as usize];
        if pod.inc != inc {
            return;
        }
        let Phase::Starting(place) = pod.phase else {
            return;
        };
        pod.phase = Phase::Running(place);
        pod.end_at = self.now + pod.remaining;
        self.starts += 1;
        if !pod.started {
            pod.started = true;
            let submit = self.specs[p as usize].submit.millis();
            self.pending_ms.push(self.now - submit);
            self.outcomes[p as usize].pending_ms = Some(self.now - submit);
        }
        let end = pod.end_at;
        self.push(end, Ev::Complete(p, inc));
    }

    fn complete(&mut self, p: u32, inc: u32) {
        if self.pods[p as usize].inc != inc {
            return;
        }
        let Phase::Running(place) = self.pods[p as usize].phase else {
            return;
        };
        self.pods[p as usize].phase = Phase::Done;
        self.pods[p as usize].remaining = 0;
        match place {
            Place::Vm(n) => self.release_vm(p, n),
            Place::Aci => {
                self.leave_aci(p);
                self.drop_placeholder(p);
            }
        }
        self.request_pass(self.now);
    }

    // ---- scheduling ----

    fn pass(&mut self) {
        if self.snap.pending.is_empty() {
            self.place_placeholders();
            return;
        }
        self.snap.now = Timestamp::from_millis(self.now as i64);
        self.snap.aci_quota = AciQuota {
            cores_millis_left: self
                .sc
                .aci
                .quota_cores_millis
                .map(|q| q.saturating_sub(self.aci_in_use.cpu_millis)),
            groups_left: self
                .sc
                .aci
                .quota_groups
                .map(|q| q.saturating_sub(self.aci_groups)),
        };
        let plan = self.engine.plan(&self.snap, self.policies);
        let mut bound = Vec::new();
        for &i in &plan.order {
            let p = self.pending_ids[i];
            let d = &plan.decisions[i];
            match d.verdict {
                Verdict::Vm => {
                    if let Some(n) = plan.vm_node[i] {
                        self.bind_vm(p, n);
                        bound.push(i);
                    }
                }
                Verdict::Burst => {
                    if self.take_create_token() {
                        self.bind_aci(p, d.reason);
                        bound.push(i);
                    } else {
                        self.pods[p as usize].unschedulable = true;
                        let wait = ((1.0 - self.tokens) * 60_000.0
                            / self.sc.aci.creates_per_minute as f64)
                            .ceil();
                        self.request_pass(self.now + wait.max(1.0) as u64);
                    }
                }
                Verdict::Wait => {
                    self.pods[p as usize].unschedulable = true;
                    if let Some(until) = d.until {
                        self.request_pass(until.millis().max(0) as u64);
                    }
                }
                Verdict::Ineligible => self.pods[p as usize].unschedulable = true,
            }
        }
        bound.sort_unstable_by(|a, b| b.cmp(a));
        for i in bound {
            self.remove_pending(i);
        }
        self.place_placeholders();
    }

    fn take_create_token(&mut self) -> bool {
        let cap = self.sc.aci.creates_per_minute as f64;
        let elapsed = (self.now - self.tokens_at) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.tokens_at = self.now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn bind_vm(&mut self, p: u32, snap_idx: usize) {
        let n = self.ready[snap_idx];
        let req = self.specs[p as usize].requests;
        self.snap.nodes[snap_idx].allocated = self.snap.nodes[snap_idx].allocated.add(&req);
        let node = &mut self.nodes[n as usize];
        node.real = node.real.add(&req);
        node.pods += 1;
        node.empty_since = None;
        self.preempt_placeholders(n);
        let pod = &mut self.pods[p as usize];
        pod.inc += 1;
        pod.phase = Phase::Starting(Place::Vm(n));
        pod.vm_bound_at = self.now;
        let inc = pod.inc;
        let lat = self
            .sc
            .vm_start_latency
            .draw(self.seed, Stream::VmStart, p as u64, inc as u64);
        self.push(self.now + lat.millis(), Ev::Started(p, inc));
    }

    /// Real pods preempt placeholders: evict the newest until the node fits.
    fn preempt_placeholders(&mut self, n: u32) {
        loop {
            let node = &self.nodes[n as usize];
            let alloc = self.snap.nodes[node.snap_idx].allocatable;
            if node.real.add(&node.ph).fits_in(&alloc) {
                return;
            }
            let Some(ph) = self.nodes[n as usize].placeholders.pop() else {
                return;
            };
            let req = self.specs[ph as usize].requests;
            let node = &mut self.nodes[n as usize];
            node.ph = node.ph.saturating_sub(&req);
            if let Some(h) = self.pods[ph as usize].placeholder.as_mut() {
                h.node = None;
                h.since = self.now;
            }
            self.ph_pending.insert(ph);
            self.ph_dirty = true;
        }
    }

    /// Count a pod's time on its VM node, from binding until now.
    fn charge_vm_use(&mut self, p: u32, n: u32) {
        let pool = &self.sc.pools[self.nodes[n as usize].pool];
        let req = self.specs[p as usize].requests;
        let hours = (self.now - self.pods[p as usize].vm_bound_at) as f64 / 3_600_000.0;
        self.outcomes[p as usize].vm_use_usd +=
            hours * node_fraction(&req, &pool.node) * pool.price_per_hour;
    }

    fn release_vm(&mut self, p: u32, n: u32) {
        self.charge_vm_use(p, n);
        let req = self.specs[p as usize].requests;
        let node = &mut self.nodes[n as usize];
        node.real = node.real.saturating_sub(&req);
        node.pods -= 1;
        let idx = node.snap_idx;
        if node.pods == 0 && node.placeholders.is_empty() {
            node.empty_since = Some(self.now);
        }
        self.snap.nodes[idx].allocated = self.snap.nodes[idx].allocated.saturating_sub(&req);
        self.ph_dirty = true;
    }

    fn bind_aci(&mut self, p: u32, reason: Reason) {
        let spec = &self.specs[p as usize];
        let res = AciSize::of_requests(&spec.requests).requests;
        let drain = match self.strategy {
            Strategy::Spillway { drain_back: true } => self
                .policies
                .for_pod(&spec.namespace, &spec.labels)
                .filter(|pol| pol.drain_back.enabled)
                .map(|pol| {
                    let next = self.drain_namespaces.len();
                    let idx = *self
                        .drain_namespaces
                        .entry(spec.namespace.to_string())
                        .or_insert(next);
                    if idx == self.drain_log.len() {
                        self.drain_log.push(VecDeque::new());
                    }
                    DrainCfg {
                        after: pol.drain_back.after.millis(),
                        per_minute: pol.drain_back.max_per_minute,
                        namespace: idx,
                    }
                }),
            _ => None,
        };
        let hourly = self.engine.config.prices.aci_hourly(&res);
        let usage = self
            .snap
            .burst_usage
            .entry(spec.namespace.to_string())
            .or_default();
        usage.add(&res, hourly);
        let usage = *usage;
        let peak = self
            .peak_by_ns
            .entry(spec.namespace.to_string())
            .or_default();
        peak.pods = peak.pods.max(usage.pods);
        peak.requests.cpu_millis = peak.requests.cpu_millis.max(usage.requests.cpu_millis);
        peak.requests.memory_bytes = peak.requests.memory_bytes.max(usage.requests.memory_bytes);
        peak.hourly_cost = peak.hourly_cost.max(usage.hourly_cost);
        self.aci_in_use = self.aci_in_use.add(&res);
        self.aci_groups += 1;
        self.peak_burst_cores = self.peak_burst_cores.max(self.aci_in_use.cpu_cores());
        *self.burst_reasons.entry(reason.as_str()).or_default() += 1;
        let pod = &mut self.pods[p as usize];
        if pod.inc == 0 {
            self.burst_pods += 1;
        }
        self.outcomes[p as usize].burst = true;
        pod.inc += 1;
        pod.phase = Phase::Starting(Place::Aci);
        pod.aci = Some(OnAci {
            bound_at: self.now,
            res,
            drain,
        });
        if drain.is_some() && pod.placeholder.is_none() {
            pod.placeholder = Some(Placeholder {
                node: None,
                since: self.now,
            });
            self.ph_pending.insert(p);
            self.ph_dirty = true;
        }
        self.on_aci.insert(p);
        let inc = pod.inc;
        let lat = self
            .sc
            .aci
            .start_latency
            .draw(self.seed, Stream::AciStart, p as u64, inc as u64);
        self.push(self.now + lat.millis(), Ev::Started(p, inc));
    }

    /// Stop billing a pod on ACI and give back its budget and quota.
    fn leave_aci(&mut self, p: u32) {
        let Some(a) = self.pods[p as usize].aci.take() else {
            return;
        };
        self.on_aci.remove(&p);
        let hours = (self.now - a.bound_at) as f64 / 3_600_000.0;
        self.aci_vcpu_hours += a.res.cpu_cores() * hours;
        self.aci_gb_hours += a.res.memory_gb() * hours;
        self.outcomes[p as usize].aci_cost_usd += hours
            * (a.res.cpu_cores() * self.sc.prices.aci_vcpu_hour
                + a.res.memory_gb() * self.sc.prices.aci_gb_hour);
        self.aci_in_use = self.aci_in_use.saturating_sub(&a.res);
        self.aci_groups -= 1;
        let prices = self.engine.config.prices;
        if let Some(u) = self
            .snap
            .burst_usage
            .get_mut(&*self.specs[p as usize].namespace)
        {
            u.pods -= 1;
            u.requests = u.requests.saturating_sub(&a.res);
            u.hourly_cost = prices.aci_hourly(&u.requests);
        }
    }

    fn drop_placeholder(&mut self, p: u32) {
        let Some(ph) = self.pods[p as usize].placeholder.take() else {
            return;
        };
        match ph.node {
            None => {
                self.ph_pending.remove(&p);
            }
            Some(n) => {
                let req = self.specs[p as usize].requests;
                let node = &mut self.nodes[n as usize];
                node.ph = node.ph.saturating_sub(&req);
                node.placeholders.retain(|&x| x != p);
                if node.pods == 0 && node.placeholders.is_empty() {
                    node.empty_since = Some(self.now);
                }
                self.ph_dirty = true;
            }
        }
    }

    /// VM room left by real pods and bound placeholders, per ready node.
    fn room_after_placeholders(&self) -> FitIndex {
        FitIndex::new(
            self.ready
                .iter()
                .map(|&n| {
                    let node = &self.nodes[n as usize];
                    self.snap.nodes[node.snap_idx]
                        .allocatable
                        .saturating_sub(&node.real)
                        .saturating_sub(&node.ph)
                })
                .collect(),
        )
    }

    /// Bind pending placeholders first-fit into VM room left by real pods and other placeholders.
    fn place_placeholders(&mut self) {
        if !self.ph_dirty || self.ph_pending.is_empty() {
            return;
        }
        self.ph_dirty = false;
        let mut fit = self.room_after_placeholders();
        let waiting: Vec<u32> = self.ph_pending.iter().copied().collect();
        for p in waiting {
            let req = self.specs[p as usize].requests;
            let Some(idx) = fit.first_fit(&req, |_| true) else {
                continue;
            };
            fit.take(idx, &req);
            let n = self.ready[idx];
            let node = &mut self.nodes[n as usize];
            node.ph = node.ph.add(&req);
            node.placeholders.push(p);
            node.empty_since = None;
            self.ph_pending.remove(&p);
            if let Some(h) = self.pods[p as usize].placeholder.as_mut() {
                h.node = Some(n);
                h.since = self.now;
            }
        }
    }

    // ---- nodes and the autoscaler ----

    fn add_node(&mut self, pool: usize) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            pool,
            created: self.now,
            ready: false,
            deleted: None,
            real: Resources::default(),
            ph: Resources::default(),
            pods: 0,
            placeholders: Vec::new(),
            empty_since: None,
            snap_idx: NONE,
        });
        id
    }

    fn node_ready(&mut self, n: u32) {
        let pool = self.nodes[n as usize].pool;
        let created = self.nodes[n as usize].created;
        let spec = &self.sc.pools[pool];
        let node = &mut self.nodes[n as usize];
        node.ready = true;
        node.snap_idx = self.snap.nodes.len();
        node.empty_since = Some(self.now);
        self.ready.push(n);
        self.snap.nodes.push(VmNode {
            name: format!("{}-{n}", spec.name),
            pool: spec.name.clone(),
            allocatable: spec.node,
            allocated: Resources::default(),
            schedulable: true,
            class: 0,
            // The simulator models CPU and memory, not pod counts.
            pods: 0,
            max_pods: None,
        });
        let vp = &mut self.snap.pools[pool];
        vp.nodes += 1;
        if let Some(i) = vp
            .upcoming
            .iter()
            .position(|u| u.requested_at == Timestamp::from_millis(created as i64))
        {
            vp.upcoming.swap_remove(i);
            // Learn the provisioning time, as the autoscaler does from node events.
            let (sum, count) = &mut self.provision_sum[pool];
            *sum += self.now - created;
            *count += 1;
            vp.provision_time = Some(Duration::from_millis(*sum / *count));
        }
        self.peak_vm_nodes = self.peak_vm_nodes.max(self.live_nodes());
        self.ph_dirty = true;
        if !self.snap.pending.is_empty() || !self.ph_pending.is_empty() {
            self.request_pass(self.now);
        }
    }

    fn live_nodes(&self) -> u32 {
        self.snap
            .pools
            .iter()
            .map(|p| p.nodes + p.upcoming.len() as u32)
            .sum()
    }

    fn tick(&mut self) {
        self.scale_up();
        self.scale_down();
        if matches!(self.strategy, Strategy::Spillway { drain_back: true }) {
            self.drain_back();
        }
    }

    /// Ask for nodes for pods (and placeholders) that fit neither the room
    /// left on ready nodes nor the nodes already on their way.
    fn scale_up(&mut self) {
        if self.snap.pending.is_empty() && self.ph_pending.is_empty() {
            return;
        }
        let mut demand: Vec<Resources> = self
            .snap
            .pending
            .iter()
            .zip(&self.pending_ids)
            .filter(|(_, id)| self.pods[**id as usize].unschedulable)
            .map(|(p, _)| p.requests)
            .collect();
        demand.extend(
            self.ph_pending
                .iter()
                .map(|&p| self.specs[p as usize].requests),
        );
        let mut fit = self.room_after_placeholders();
        // Bins: upcoming nodes first, then nodes this scan asks for.
        let mut bins: Vec<(usize, Resources)> = Vec::new();
        for (pi, p) in self.snap.pools.iter().enumerate() {
            bins.extend(p.upcoming.iter().map(|_| (pi, p.node_allocatable)));
        }
        let mut headroom: Vec<u32> = self
            .snap
            .pools
            .iter()
            .map(|p| p.max.saturating_sub(p.nodes + p.upcoming.len() as u32))
            .collect();
        let mut new_nodes = vec![0u32; self.sc.pools.len()];
        for req in demand {
            if let Some(i) = fit.first_fit(&req, |_| true) {
                fit.take(i, &req);
                continue;
            }
            if let Some(b) = bins.iter_mut().find(|(_, free)| req.fits_in(free)) {
                b.1 = b.1.saturating_sub(&req);
                continue;
            }
            if let Some(pi) = (0..self.sc.pools.len())
                .find(|&pi| headroom[pi] > 0 && req.fits_in(&self.sc.pools[pi].node))
            {
                headroom[pi] -= 1;
                new_nodes[pi] += 1;
                bins.push((pi, self.sc.pools[pi].node.saturating_sub(&req)));
            }
        }
        for (pi, count) in new_nodes.into_iter().enumerate() {
            for _ in 0..count {
                let id = self.add_node(pi);
                let k = self.nodes_requested[pi];
                self.nodes_requested[pi] += 1;
                let delay = self.sc.pools[pi].provision_time.draw(
                    self.seed,
                    Stream::VmProvision,
                    pi as u64,
                    k,
                );
                self.snap.pools[pi].upcoming.push(UpcomingNode {
                    requested_at: Timestamp::from_millis(self.now as i64),
                });
                self.push(self.now + delay.millis(), Ev::NodeReady(id));
            }
        }
        self.peak_vm_nodes = self.peak_vm_nodes.max(self.live_nodes());
    }

    fn scale_down(&mut self) {
        let after = self.sc.autoscaler.scale_down_after.millis();
        let mut count: Vec<u32> = self.snap.pools.iter().map(|p| p.nodes).collect();
        let mut remove = Vec::new();
        for &n in &self.ready {
            let node = &self.nodes[n as usize];
            if let Some(since) = node.empty_since
                && node.pods == 0
                && node.placeholders.is_empty()
                && self.now >= since + after
                && count[node.pool] > self.sc.pools[node.pool].min
            {
                count[node.pool] -= 1;
                remove.push(n);
            }
        }
        if remove.is_empty() {
            return;
        }
        for &n in &remove {
            let node = &mut self.nodes[n as usize];
            node.deleted = Some(self.now);
            node.ready = false;
            self.snap.pools[node.pool].nodes -= 1;
        }
        // Rebuild the ready list and the snapshot's node order.
        let old_ready = std::mem::take(&mut self.ready);
        let old_nodes = std::mem::take(&mut self.snap.nodes);
        for (n, vm) in old_ready.into_iter().zip(old_nodes) {
            if self.nodes[n as usize].deleted.is_none() {
                self.nodes[n as usize].snap_idx = self.snap.nodes.len();
                self.ready.push(n);
                self.snap.nodes.push(vm);
            } else {
                self.nodes[n as usize].snap_idx = NONE;
            }
        }
    }

    /// Evict burst pods whose placeholder has held VM room long enough.
    fn drain_back(&mut self) {
        let candidates: Vec<u32> = self
            .on_aci
            .iter()
            .copied()
            .filter(|&p| {
                let pod = &self.pods[p as usize];
                matches!(pod.phase, Phase::Running(Place::Aci))
                    && match (pod.aci.and_then(|a| a.drain), pod.placeholder) {
                        (
                            Some(d),
                            Some(Placeholder {
                                node: Some(_),
                                since,
                            }),
                        ) => self.now >= since + d.after,
                        _ => false,
                    }
            })
            .collect();
        for p in candidates {
            let Some(d) = self.pods[p as usize].aci.and_then(|a| a.drain) else {
                continue;
            };
            let log = &mut self.drain_log[d.namespace];
            while log.front().is_some_and(|&t| t + 60_000 <= self.now) {
                log.pop_front();
            }
            if log.len() >= d.per_minute as usize {
                continue;
            }
            log.push_back(self.now);
            self.drained_back += 1;
            self.leave_aci(p);
            self.drop_placeholder(p);
            let pod = &mut self.pods[p as usize];
            pod.remaining = pod.end_at.saturating_sub(self.now).max(1);
            pod.inc += 1;
            self.make_pending(p, Timestamp::from_millis(self.now as i64));
        }
    }

    fn sample(&mut self) {
        self.series.push(Sample {
            t_s: self.now / 1000,
            pending: self.snap.pending.len() as u32,
            vm_nodes: self.live_nodes(),
            burst_cores: self.aci_in_use.cpu_cores(),
        });
    }

    fn finish(mut self) -> RunResult {
        let end = self.horizon;
        self.now = end;
        let on_aci: Vec<u32> = self.on_aci.iter().copied().collect();
        for p in on_aci {
            self.leave_aci(p);
        }
        for p in 0..self.pods.len() as u32 {
            if let Phase::Starting(Place::Vm(n)) | Phase::Running(Place::Vm(n)) =
                self.pods[p as usize].phase
            {
                self.charge_vm_use(p, n);
            }
        }
        let mut vm_node_hours = 0.0;
        let mut vm_cost_usd = 0.0;
        for n in &self.nodes {
            let hours = (n.deleted.unwrap_or(end).min(end) - n.created) as f64 / 3_600_000.0;
            vm_node_hours += hours;
            vm_cost_usd += hours * self.sc.pools[n.pool].price_per_hour;
        }
        let aci_cost_usd = self.aci_vcpu_hours * self.sc.prices.aci_vcpu_hour
            + self.aci_gb_hours * self.sc.prices.aci_gb_hour;
        let started = self.pods.iter().filter(|p| p.started).count() as u64;
        self.pending_ms.sort_unstable();
        RunResult {
            strategy: self.strategy,
            pods: self.pods.len() as u64,
            started,
            unfinished: self.pods.len() as u64 - started,
            starts: self.starts,
            pending_ms: self.pending_ms,
            burst_pods: self.burst_pods,
            burst_reasons: self.burst_reasons,
            drained_back: self.drained_back,
            peak_burst_cores: self.peak_burst_cores,
            vm_node_hours,
            vm_cost_usd,
            aci_vcpu_hours: self.aci_vcpu_hours,
            aci_gb_hours: self.aci_gb_hours,
            aci_cost_usd,
            peak_vm_nodes: self.peak_vm_nodes,
            peak_burst_by_namespace: self.peak_by_ns,
            events: self.events,
            series: self.series,
            outcomes: self.outcomes,
        }
    }
}
