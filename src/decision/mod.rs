//! The decision engine: pure functions from (`Snapshot`, `PolicySet`, `now`)
//! to a `Decision` per pending pod.
//!
//! It owns the "VMs first, spill when the wait is too long, within budgets"
//! rule, the VM arrival prediction and the ACI cost model. It must never do
//! I/O, read a clock, or await: the simulator, the extender, the autoscaler and
//! `explain` all call it, so a decision seen in one is the decision of all.

pub mod aci_size;
pub mod fit;
pub mod placement;
mod reason;
#[cfg(test)]
mod tests;

pub use aci_size::AciSize;
pub use placement::{NodeClass, Placement};
pub use reason::{Reason, Verdict};

use crate::policy::{AciResources, BurstMode, BurstPolicy, PolicySet};
use crate::units::{Duration, GIB, Resources, Timestamp};
use fit::GroupedFit;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Prices used for the burst cost model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// ACI Linux, USD per vCPU-hour.
    pub aci_vcpu_hour: f64,
    /// ACI Linux, USD per GB-hour.
    pub aci_gb_hour: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            aci_vcpu_hour: 0.0405,
            aci_gb_hour: 0.00445,
        }
    }
}

impl Prices {
    /// Hourly ACI cost of a container group with these (ACI-effective) resources.
    pub fn aci_hourly(&self, r: &Resources) -> f64 {
        r.cpu_cores() * self.aci_vcpu_hour + r.memory_gb() * self.aci_gb_hour
    }
}

/// Engine settings that are not per-namespace policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineConfig {
    pub prices: Prices,
    /// Provisioning time assumed for a pool until one has been observed.
    pub default_provision_time: Duration,
    /// Delay between a pod becoming pending and the cluster autoscaler asking for a node.
    pub scale_up_delay: Duration,
    /// Largest container group ACI accepts (per-group vCPU / memory maximum).
    pub aci_max_group: Resources,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prices: Prices::default(),
            default_provision_time: Duration::from_secs(240),
            scale_up_delay: Duration::from_secs(10),
            aci_max_group: Resources::new(4000, 16 * GIB),
        }
    }
}

/// A schedulable VM node as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmNode {
    pub name: String,
    pub pool: String,
    pub allocatable: Resources,
    /// Sum of the requests of pods bound to it.
    pub allocated: Resources,
    /// Ready and not cordoned.
    pub schedulable: bool,
    /// Its labels and taints: an index into [`Snapshot::classes`] (one past
    /// the end, as in a snapshot without classes, is a node with neither).
    pub class: usize,
    /// Pods bound to it (not terminated).
    pub pods: u32,
    /// Its allocatable `pods` (kube-scheduler refuses "Too many pods"
    /// beyond it); `None` when the node does not say (no limit assumed).
    pub max_pods: Option<u32>,
}

impl VmNode {
    /// Room a new pod may take: allocatable minus allocated, none if not schedulable.
    pub fn free_room(&self) -> Resources {
        if self.schedulable {
            self.allocatable.saturating_sub(&self.allocated)
        } else {
            Resources::default()
        }
    }

    /// How many more pods it takes: none if not schedulable, else its
    /// allocatable pods minus those bound (`u32::MAX`: no limit known).
    pub fn free_slots(&self) -> u32 {
        match (self.schedulable, self.max_pods) {
            (false, _) => 0,
            (true, Some(max)) => max.saturating_sub(self.pods),
            (true, None) => u32::MAX,
        }
    }
}

/// A node a pool has asked for and that has not joined yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpcomingNode {
    pub requested_at: Timestamp,
}

/// A VM pool (AKS node pool / VMSS).
#[derive(Debug, Clone, PartialEq)]
pub struct VmPool {
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// Allocatable resources of one node of this pool.
    pub node_allocatable: Resources,
    /// Nodes that exist (ready or not).
    pub nodes: u32,
    pub upcoming: Vec<UpcomingNode>,
    /// Observed provisioning time (request → node ready), if learned.
    pub provision_time: Option<Duration>,
    /// Labels and taints a new node of this pool gets (the most common
    /// class among its nodes), an index into [`Snapshot::classes`].
    pub class: Option<usize>,
}

/// A pod waiting to be scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    /// What kube-scheduler reserves for it on a VM.
    pub requests: Resources,
    /// What its ACI container group would request (and be billed for).
    pub aci: AciSize,
    /// When it became pending (creation, or last unschedulable transition).
    pub pending_since: Timestamp,
    /// Whether it tolerates the virtual node's taint.
    pub tolerates_virtual: bool,
    /// Why ACI cannot run it, if it cannot (hostPath, privileged, DaemonSet …).
    pub aci_incompatible: Option<String>,
    /// The one pool it asks for (nodeSelector on the pool label, or a
    /// required affinity naming one pool); it restricts VM placement as
    /// [`PendingPod::placement`] does, and names the pool in messages.
    pub pool: Option<String>,
    /// Taints it tolerates, nodeSelector and required node affinity.
    pub placement: Placement,
}

/// What a namespace already has on the virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct BurstUsage {
    pub pods: u32,
    /// ACI-effective requests.
    pub requests: Resources,
    pub hourly_cost: f64,
}

impl BurstUsage {
    /// One more pod with these ACI requests and hourly cost.
    pub fn add(&mut self, r: &Resources, hourly: f64) {
        self.pods += 1;
        self.requests = self.requests.add(r);
        self.hourly_cost += hourly;
    }

    /// One pod fewer ([`BurstUsage::add`]'s inverse, never below zero).
    pub fn remove(&mut self, r: &Resources, hourly: f64) {
        self.pods = self.pods.saturating_sub(1);
        self.requests = self.requests.saturating_sub(r);
        self.hourly_cost = (self.hourly_cost - hourly).max(0.0);
    }
}

/// A pod on the virtual node whose container group requests more when its
/// policy says `aci.resources: raise-requests` ([`AciSize::raised`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RaisableBurst {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `raised` minus `requests`.
    pub extra: Resources,
}

/// ACI quota left in the region; `None` = unknown (not limiting).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AciQuota {
    pub cores_millis_left: Option<u64>,
    pub groups_left: Option<u32>,
}

/// Everything the engine needs, as plain data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub now: Timestamp,
    pub nodes: Vec<VmNode>,
    pub pools: Vec<VmPool>,
    pub pending: Vec<PendingPod>,
    /// Per namespace, its pods on the virtual node as ACI bills them under
    /// `aci.resources: clamp-limits`; [`Snapshot::raisable`] holds what
    /// `raise-requests` adds ([`Engine::burst_usage`] counts both).
    pub burst_usage: BTreeMap<String, BurstUsage>,
    /// Pods on the virtual node whose group requests more under
    /// `raise-requests` (a limit above the total request).
    pub raisable: Vec<RaisableBurst>,
    pub aci_quota: AciQuota,
    /// The distinct labels-and-taints of VM nodes ([`VmNode::class`]);
    /// shared, since the extender copies a snapshot per request.
    pub classes: std::sync::Arc<[NodeClass]>,
}

/// The class of nodes and pools without one: no labels, no taints.
static NO_CLASS: std::sync::LazyLock<NodeClass> = std::sync::LazyLock::new(NodeClass::default);

impl Snapshot {
    /// The labels and taints behind a class index.
    pub fn class(&self, i: usize) -> &NodeClass {
        self.classes.get(i).unwrap_or(&NO_CLASS)
    }

    /// Whether `pod` may be placed on VM node `i` (its pool and placement;
    /// room aside).
    pub fn node_admits(&self, pod: &PendingPod, i: usize) -> bool {
        let n = &self.nodes[i];
        pod.pool.as_ref().is_none_or(|p| *p == n.pool)
            && pod.placement.admits(self.class(n.class), &n.name)
    }

    /// Whether a new node of pool `i` would take `pod` (room aside).
    pub fn pool_admits(&self, pod: &PendingPod, i: usize) -> bool {
        let p = &self.pools[i];
        let class = p.class.map_or(&*NO_CLASS, |c| self.class(c));
        pod.pool.as_ref().is_none_or(|name| *name == p.name) && pod.placement.admits(class, "")
    }
}

/// The engine's answer for one pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// For `wait`: when the wait ends (spillAfter elapses), if it ends by time.
    pub until: Option<Timestamp>,
    /// Predicted VM capacity arrival for this pod, if any pool can provide it.
    pub vm_eta: Option<Timestamp>,
    /// `namespace/name` of the governing policy.
    pub policy: Option<String>,
    /// A short explanation for people.
    pub detail: String,
}

impl Decision {
    /// `spillway: <reason>, <detail>` — the text used in extender refusals and Events.
    pub fn message(&self) -> String {
        if self.detail.is_empty() {
            format!("spillway: {}", self.reason)
        } else {
            format!("spillway: {}, {}", self.reason, self.detail)
        }
    }
}

/// The result of one engine pass with placements.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One decision per pending pod, in `snap.pending` order.
    pub decisions: Vec<Decision>,
    /// For `vm` verdicts: the index in `snap.nodes` whose room the pod claimed.
    pub vm_node: Vec<Option<usize>>,
    /// Indices into `snap.pending` in the order the engine considered them.
    pub order: Vec<usize>,
}

/// The decision engine. Cheap to clone; holds only configuration.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: EngineConfig,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { config }
    }

    /// Decide every pending pod of the snapshot. Pods are considered in a
    /// deterministic order (priority desc, then pending longest, then name) and
    /// each claims VM room, upcoming VM room and burst budget in that order, so
    /// later pods see what earlier ones took. Results are in `snap.pending` order.
    pub fn decide_all(&self, snap: &Snapshot, policies: &PolicySet) -> Vec<Decision> {
        self.plan(snap, policies).decisions
    }

    /// Like [`Engine::decide_all`], and also says which VM node (an index into
    /// `snap.nodes`) each `vm` verdict claimed room on, so a caller that acts
    /// (the simulator binding pods) places pods exactly where the engine
    /// counted them.
    pub fn plan(&self, snap: &Snapshot, policies: &PolicySet) -> Plan {
        let mut order: Vec<usize> = (0..snap.pending.len()).collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (&snap.pending[a], &snap.pending[b]);
            pb.priority
                .cmp(&pa.priority)
                .then(pa.pending_since.cmp(&pb.pending_since))
                .then_with(|| pa.namespace.cmp(&pb.namespace))
                .then_with(|| pa.name.cmp(&pb.name))
        });
        let mut pass = Pass::new(self, snap, policies, true);
        let mut out: Vec<Option<Decision>> = vec![None; snap.pending.len()];
        let mut vm_node = vec![None; snap.pending.len()];
        for i in order.iter().copied() {
            pass.last_node = None;
            let d = pass.decide(&snap.pending[i], policies);
            if d.verdict == Verdict::Vm {
                vm_node[i] = pass.last_node;
            }
            out[i] = Some(d);
        }
        Plan {
            decisions: out.into_iter().flatten().collect(),
            vm_node,
            order,
        }
    }

    /// Decide one pod for which the scheduler found no feasible VM node (the
    /// extender's case: only the virtual node survived its filters). The VM
    /// room in the snapshot is not consulted; arrival prediction, budgets and
    /// quota are.
    pub fn decide_without_vm_room(
        &self,
        snap: &Snapshot,
        policies: &PolicySet,
        pod: &PendingPod,
    ) -> Decision {
        Pass::new(self, snap, policies, false).decide(pod, policies)
    }

    /// Per namespace, what its pods on the virtual node request and cost,
    /// each as its policy has ACI size it: the snapshot's `burst_usage` plus,
    /// for pods whose policy says `aci.resources: raise-requests`, the extra
    /// the raised request adds.
    pub fn burst_usage(
        &self,
        snap: &Snapshot,
        policies: &PolicySet,
    ) -> BTreeMap<String, BurstUsage> {
        let mut usage = snap.burst_usage.clone();
        for r in &snap.raisable {
            let raises = policies
                .for_pod(&r.namespace, &r.labels)
                .is_some_and(|p| p.aci.resources == AciResources::RaiseRequests);
            if raises {
                let u = usage.entry(r.namespace.clone()).or_default();
                u.requests = u.requests.add(&r.extra);
                u.hourly_cost += self.config.prices.aci_hourly(&r.extra);
            }
        }
        usage
    }

    /// Fold [`Engine::burst_usage`] into `snap` (nothing is left raisable),
    /// for callers that read `snap.burst_usage` beside the engine: metrics,
    /// `explain`.
    pub fn count_raised(&self, snap: &mut Snapshot, policies: &PolicySet) {
        snap.burst_usage = self.burst_usage(snap, policies);
        snap.raisable.clear();
    }
}

/// A slot of VM capacity that does not exist yet: an upcoming node, or one
/// the pool could still be asked for.
#[derive(Debug, Clone)]
struct FutureNode {
    pool: usize,
    ready_at: Timestamp,
    free: Resources,
}

/// Which VM nodes a placement allows, as groups of nodes that share pool
/// and class ([`Pass::node_group`]).
#[derive(Debug, Clone)]
enum Allowed {
    /// Every node.
    All,
    /// These groups only (few).
    Groups(Vec<u64>),
    /// Many groups: a mask indexed by group.
    Mask(Vec<bool>),
    /// The placement names nodes themselves: judged node by node.
    PerNode,
}

/// Up to this many allowed groups are searched one by one (each has its own
/// index); more go through one search of all nodes with a mask.
const GROUP_SEARCH_LIMIT: usize = 16;

/// Mutable state of one engine pass: what earlier pods have claimed.
struct Pass<'a> {
    engine: &'a Engine,
    snap: &'a Snapshot,
    use_vm_room: bool,
    vm_room: GroupedFit,
    /// Node → its group: one per distinct (pool, class) among the nodes.
    node_group: Vec<u64>,
    /// Group → (pool index or `u64::MAX`, class).
    groups: Vec<(u64, usize)>,
    /// Placement (with its pool) → the groups it allows, worked out once
    /// per distinct placement (a ReplicaSet's pods share theirs).
    allowed: HashMap<(Option<String>, Placement), Allowed>,
    future: Vec<FutureNode>,
    /// Nodes each pool may still add (max - existing - upcoming - added this pass).
    headroom: Vec<u32>,
    usage: BTreeMap<String, BurstUsage>,
    quota: AciQuota,
    /// The node the last `claim_vm_room` took room on.
    last_node: Option<usize>,
}

impl<'a> Pass<'a> {
    fn new(
        engine: &'a Engine,
        snap: &'a Snapshot,
        policies: &PolicySet,
        use_vm_room: bool,
    ) -> Self {
        let pool_index: HashMap<&str, u64> = snap
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i as u64))
            .collect();
        // The extender's case never looks at VM room: skip indexing thousands of nodes.
        let mut groups: Vec<(u64, usize)> = Vec::new();
        let mut node_group = Vec::new();
        let mut room = Vec::new();
        let mut slots = Vec::new();
        if use_vm_room {
            let mut group_of: HashMap<(u64, usize), u64> = HashMap::new();
            for n in &snap.nodes {
                let pool = pool_index.get(n.pool.as_str()).copied().unwrap_or(u64::MAX);
                let g = *group_of.entry((pool, n.class)).or_insert_with(|| {
                    groups.push((pool, n.class));
                    groups.len() as u64 - 1
                });
                node_group.push(g);
                room.push(n.free_room());
                slots.push(n.free_slots());
            }
        }
        let mut future = Vec::new();
        let mut headroom = Vec::with_capacity(snap.pools.len());
        for (pi, p) in snap.pools.iter().enumerate() {
            let provision = p
                .provision_time
                .unwrap_or(engine.config.default_provision_time);
            for u in &p.upcoming {
                future.push(FutureNode {
                    pool: pi,
                    ready_at: u.requested_at.plus(provision),
                    free: p.node_allocatable,
                });
            }
            headroom.push(p.max.saturating_sub(p.nodes + p.upcoming.len() as u32));
        }
        Pass {
            engine,
            snap,
            use_vm_room,
            vm_room: GroupedFit::with_slots(room, slots, &node_group),
            node_group,
            groups,
            allowed: HashMap::new(),
            future,
            headroom,
            usage: engine.burst_usage(snap, policies),
            quota: snap.aci_quota,
            last_node: None,
        }
    }

    /// The node groups `pod` may be placed in.
    fn allowed_groups(&mut self, pod: &PendingPod) -> &Allowed {
        let key = (pod.pool.clone(), pod.placement.clone());
        let (snap, groups) = (self.snap, &self.groups);
        self.allowed.entry(key).or_insert_with(|| {
            if pod.placement.per_node() {
                return Allowed::PerNode;
            }
            let mask: Vec<bool> = groups
                .iter()
                .map(|&(pool, class)| {
                    let pool_ok = match &pod.pool {
                        None => true,
                        Some(name) => snap
                            .pools
                            .get(pool as usize)
                            .is_some_and(|p| p.name == *name),
                    };
                    pool_ok && pod.placement.admits(snap.class(class), "")
                })
                .collect();
            let count = mask.iter().filter(|&&ok| ok).count();
            if count == mask.len() {
                Allowed::All
            } else if count <= GROUP_SEARCH_LIMIT {
                Allowed::Groups(
                    (0..mask.len() as u64)
                        .filter(|&g| mask[g as usize])
                        .collect(),
                )
            } else {
                Allowed::Mask(mask)
            }
        })
    }

    /// Claim room on an existing VM node the pod may use, if one fits.
    fn claim_vm_room(&mut self, pod: &PendingPod) -> Option<usize> {
        if !self.use_vm_room {
            return None;
        }
        let req = pod.requests;
        let idx = match self.allowed_groups(pod).clone() {
            Allowed::All => self.vm_room.first_fit(&req, None),
            // Lowest node index over the groups = first fit among allowed nodes.
            Allowed::Groups(gs) => gs
                .iter()
                .filter_map(|&g| self.vm_room.first_fit(&req, Some(g)))
                .min(),
            Allowed::Mask(mask) => {
                let node_group = &self.node_group;
                self.vm_room
                    .first_fit_where(&req, |i| mask[node_group[i] as usize])
            }
            Allowed::PerNode => {
                let snap = self.snap;
                self.vm_room
                    .first_fit_where(&req, |i| snap.node_admits(pod, i))
            }
        }?;
        self.vm_room.take(idx, &req);
        self.last_node = Some(idx);
        Some(idx)
    }

    /// Predict (and claim) when VM capacity for the pod will exist.
    /// Returns the time and the pool the capacity comes from.
    fn claim_vm_eta(&mut self, pod: &PendingPod) -> Option<(Timestamp, usize)> {
        let now = self.snap.now;
        let cfg = &self.engine.config;
        let snap = self.snap;
        // Earliest upcoming node that has room left.
        let best_future = self
            .future
            .iter()
            .enumerate()
            .filter(|(_, f)| pod.requests.fits_in(&f.free) && snap.pool_admits(pod, f.pool))
            .min_by_key(|(_, f)| f.ready_at)
            .map(|(i, f)| (i, f.ready_at, f.pool));
        // A node the pool could still be asked for.
        let scale_up_start = pod.pending_since.plus(cfg.scale_up_delay).max(now);
        let best_new = self
            .snap
            .pools
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                self.headroom[*i] > 0
                    && pod.requests.fits_in(&p.node_allocatable)
                    && snap.pool_admits(pod, *i)
            })
            .map(|(i, p)| {
                let provision = p.provision_time.unwrap_or(cfg.default_provision_time);
                (i, scale_up_start.plus(provision))
            })
            .min_by_key(|&(i, t)| (t, i));
        match (best_future, best_new) {
            (Some((fi, t, pool)), new) if new.is_none_or(|(_, nt)| t <= nt) => {
                let f = &mut self.future[fi];
                f.free = f.free.saturating_sub(&pod.requests);
                Some((t.max(now), pool))
            }
            (_, Some((pi, t))) => {
                self.headroom[pi] -= 1;
                let shape = self.snap.pools[pi].node_allocatable;
                self.future.push(FutureNode {
                    pool: pi,
                    ready_at: t,
                    free: shape.saturating_sub(&pod.requests),
                });
                Some((t, pi))
            }
            _ => None,
        }
    }

    /// Check budget and quota for a pod about to burst; on success, claim them.
    fn claim_budget(
        &mut self,
        pod: &PendingPod,
        policy: &BurstPolicy,
    ) -> Result<(), (Reason, String)> {
        let cfg = &self.engine.config;
        let r = pod.aci.billed(policy.aci.resources);
        let hourly = cfg.prices.aci_hourly(&r);
        let used = self.usage.get(&pod.namespace).copied().unwrap_or_default();
        let b = &policy.budget;
        if let Some(max) = b.max_pods
            && used.pods + 1 > max
        {
            return Err((
                Reason::BudgetPods,
                format!("{}/{} pods on the virtual node", used.pods, max),
            ));
        }
        if let Some(max) = b.max_cpu_millis
            && used.requests.cpu_millis + r.cpu_millis > max
        {
            return Err((
                Reason::BudgetCpu,
                format!(
                    "{:.2} of {:.2} vCPU used, pod needs {:.2}",
                    used.requests.cpu_cores(),
                    max as f64 / 1000.0,
                    r.cpu_cores()
                ),
            ));
        }
        if let Some(max) = b.max_memory_bytes
            && used.requests.memory_bytes + r.memory_bytes > max
        {
            return Err((
                Reason::BudgetMemory,
                format!(
                    "{:.1} of {:.1} GiB used, pod needs {:.2}",
                    used.requests.memory_bytes as f64 / GIB as f64,
                    max as f64 / GIB as f64,
                    r.memory_bytes as f64 / GIB as f64
                ),
            ));
        }
        if let Some(max) = b.max_hourly_cost
            && used.hourly_cost + hourly > max + 1e-9
        {
            return Err((
                Reason::BudgetCost,
                format!(
                    "${:.2}/h of ${:.2}/h used, pod costs ${:.3}/h",
                    used.hourly_cost, max, hourly
                ),
            ));
        }
        if let Some(left) = self.quota.cores_millis_left
            && r.cpu_millis > left
        {
            return Err((
                Reason::AciQuotaExhausted,
                format!("{:.1} vCPU of ACI quota left", left as f64 / 1000.0),
            ));
        }
        if self.quota.groups_left == Some(0) {
            return Err((
                Reason::AciQuotaExhausted,
                "no container groups left in the ACI quota".into(),
            ));
        }
        if let Some(left) = self.quota.cores_millis_left.as_mut() {
            *left -= r.cpu_millis;
        }
        if let Some(left) = self.quota.groups_left.as_mut() {
            *left -= 1;
        }
        self.usage
            .entry(pod.namespace.clone())
            .or_default()
            .add(&r, hourly);
        Ok(())
    }

    fn incompatibility(&self, pod: &PendingPod, policy: &BurstPolicy) -> Option<String> {
        if let Some(why) = &pod.aci_incompatible {
            return Some(why.clone());
        }
        if !pod.tolerates_virtual {
            return Some("pod does not tolerate the virtual node's taint".into());
        }
        let max = self.engine.config.aci_max_group;
        let group = pod.aci.billed(policy.aci.resources);
        if !group.fits_in(&max) {
            let raised = if group == pod.aci.requests {
                ""
            } else {
                " (raised to its largest limit by aci.resources: raise-requests)"
            };
            return Some(format!(
                "its container group would request {:.2} vCPU / {:.1} GiB{raised}, above ACI's per-group maximum of {:.0} vCPU / {:.0} GiB",
                group.cpu_cores(),
                group.memory_bytes as f64 / GIB as f64,
                max.cpu_cores(),
                max.memory_bytes as f64 / GIB as f64
            ));
        }
        None
    }

    fn decide(&mut self, pod: &PendingPod, policies: &PolicySet) -> Decision {
        let now = self.snap.now;
        let policy = policies.for_pod(&pod.namespace, &pod.labels);
        let mk = |verdict, reason, until, vm_eta, detail: String| Decision {
            verdict,
            reason,
            until,
            vm_eta,
            policy: policy.map(BurstPolicy::id),
            detail,
        };
        let Some(policy) = policy else {
            let fits = self.claim_vm_room(pod).is_some();
            return if fits {
                mk(
                    Verdict::Vm,
                    Reason::VmCapacityAvailable,
                    None,
                    Some(now),
                    "a VM node has room".into(),
                )
            } else {
                mk(
                    Verdict::Ineligible,
                    Reason::NoPolicy,
                    None,
                    None,
                    "no BurstPolicy selects this pod".into(),
                )
            };
        };
        let burst = &policy.burst;
        // VMs first in every mode: `Always` means "burst without waiting
        // when no VM fits", as the extender applies it.
        if self.claim_vm_room(pod).is_some() {
            return mk(
                Verdict::Vm,
                Reason::VmCapacityAvailable,
                None,
                Some(now),
                "a VM node has room".into(),
            );
        }
        if burst.mode == BurstMode::Never {
            return mk(
                Verdict::Ineligible,
                Reason::PolicyNever,
                None,
                None,
                format!("policy {} says mode: Never", policy.id()),
            );
        }
        if let Some(why) = self.incompatibility(pod, policy) {
            return mk(
                Verdict::Ineligible,
                Reason::AciIncompatible,
                None,
                None,
                why,
            );
        }
        if burst.mode == BurstMode::Always {
            return match self.claim_budget(pod, policy) {
                Ok(()) => mk(
                    Verdict::Burst,
                    Reason::PolicyAlways,
                    None,
                    None,
                    format!("policy {} says mode: Always", policy.id()),
                ),
                Err((reason, detail)) => mk(Verdict::Wait, reason, None, None, detail),
            };
        }
        if pod.priority < burst.min_priority {
            return mk(
                Verdict::Ineligible,
                Reason::PriorityBelowMinimum,
                None,
                None,
                format!(
                    "priority {} is below minPriority {}",
                    pod.priority, burst.min_priority
                ),
            );
        }
        let claimed = self.claim_vm_eta(pod);
        let eta = claimed.map(|(t, _)| t);
        let pool = claimed.map_or("", |(_, p)| self.snap.pools[p].name.as_str());
        let waited = now.since(pod.pending_since);
        let (reason, detail) = match eta {
            None => (
                Reason::PoolsAtMax,
                if pod.placement == Placement::default() && pod.pool.is_none() {
                    "no VM pool can grow to fit the pod".to_string()
                } else {
                    "no VM pool the pod's nodeSelector, affinity and tolerations allow can grow to fit it"
                        .to_string()
                },
            ),
            Some(_) if waited >= burst.spill_after => (
                Reason::SpillAfterElapsed,
                format!("pending {} ≥ spillAfter {}", waited, burst.spill_after),
            ),
            Some(t) if t.since(pod.pending_since) > burst.max_vm_wait => (
                Reason::VmEtaExceedsMaxWait,
                format!(
                    "VM (pool {}) predicted {} after the pod became pending > maxVmWait {}",
                    pool,
                    t.since(pod.pending_since),
                    burst.max_vm_wait
                ),
            ),
            Some(t) => {
                let until = pod.pending_since.plus(burst.spill_after);
                return mk(
                    Verdict::Wait,
                    Reason::WaitingForVm,
                    Some(until),
                    Some(t),
                    format!(
                        "{} left of spillAfter {}, VM predicted in {} (pool {})",
                        until.since(now),
                        burst.spill_after,
                        t.since(now),
                        pool
                    ),
                );
            }
        };
        match self.claim_budget(pod, policy) {
            Ok(()) => mk(Verdict::Burst, reason, None, eta, detail),
            Err((reason, detail)) => mk(Verdict::Wait, reason, None, eta, detail),
        }
    }
}
