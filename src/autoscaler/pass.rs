//! One pass of the autoscaler over the cluster as the reflectors see it:
//! observe → engine → plan → act. The leader-elected loop calls this on
//! watch events and on a tick; tests call it directly with a chosen `now`.

use super::act::{ActError, Actor, Outcome};
use super::observe;
use super::plan::{Action, EventReason, Inputs, LoopConfig, LoopState, plan_actions};
use super::pools::{self, NodeGroupStatus, ProvisionLearner};
use crate::cluster::ClusterConfig;
use crate::cluster::bound::BoundPod;
use crate::cluster::classify::{Classified, classify_with};
use crate::decision::Engine;
use crate::policy::PolicySet;
use crate::units::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use std::borrow::Borrow;
use std::collections::BTreeSet;

/// The autoscaler's memory and tools.
pub struct Autoscaler {
    pub engine: Engine,
    pub cluster: ClusterConfig,
    pub loop_config: LoopConfig,
    pub placeholder_namespace: String,
    pub state: LoopState,
    pub learner: ProvisionLearner,
    /// Where gauges and drain-back outcomes go, if anywhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// Ready nodes already seen (a node joining the set is a provisioning observation).
    ready_nodes: Option<BTreeSet<String>>,
    /// Burst pod uid → the last placeholder failure announced in an Event.
    placeholder_failures: std::collections::BTreeMap<String, String>,
    actor: Actor,
}

/// What one pass did.
#[derive(Debug)]
pub struct PassReport {
    pub results: Vec<(Action, Result<Outcome, ActError>)>,
}

impl PassReport {
    pub fn count(&self, pred: impl Fn(&Action, &Outcome) -> bool) -> usize {
        self.results
            .iter()
            .filter(|(a, r)| r.as_ref().is_ok_and(|o| pred(a, o)))
            .count()
    }
}

impl Autoscaler {
    pub fn new(
        engine: Engine,
        cluster: ClusterConfig,
        loop_config: LoopConfig,
        placeholder_namespace: String,
        actor: Actor,
    ) -> Self {
        Autoscaler {
            engine,
            cluster,
            loop_config,
            placeholder_namespace,
            state: LoopState::default(),
            learner: ProvisionLearner::new(20),
            metrics: None,
            ready_nodes: None,
            placeholder_failures: Default::default(),
            actor,
        }
    }

    /// Learn provisioning times from nodes that became Ready since the last pass.
    fn learn<N: Borrow<Node>>(&mut self, nodes: &[N], now: Timestamp) {
        let mut ready = BTreeSet::new();
        for n in nodes.iter().map(Borrow::borrow) {
            if self.cluster.virtual_nodes.is_virtual(n) {
                continue;
            }
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let ready_since = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                .map(|c| {
                    c.last_transition_time
                        .as_ref()
                        .map_or(now, |t| Timestamp::from_millis(t.0.as_millisecond()))
                });
            let Some(ready_at) = ready_since else {
                continue;
            };
            let known = self
                .ready_nodes
                .as_ref()
                .is_none_or(|seen| seen.contains(&name));
            if !known {
                let created = n
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(ready_at, |t| Timestamp::from_millis(t.0.as_millisecond()));
                let pool = crate::cluster::node_pool(n, &self.cluster);
                self.learner.observe_ready(&pool, created, ready_at);
            }
            ready.insert(name);
        }
        self.ready_nodes = Some(ready);
    }

    /// Decide and act once on the given objects at `now`. `ca_status` is the
    /// cluster autoscaler's node group status, when it publishes one.
    /// `pdbs`: the cluster's PodDisruptionBudgets (burst pods whose budget
    /// allows no disruption now are not asked to move); empty is fine, the
    /// Eviction API still refuses what a budget forbids.
    pub async fn pass<N: Borrow<Node>, P: Borrow<Pod>, B: Borrow<PodDisruptionBudget>>(
        &mut self,
        nodes: &[N],
        pods: &[P],
        pdbs: &[B],
        policies: &PolicySet,
        ca_status: Option<&[NodeGroupStatus]>,
        now: Timestamp,
    ) -> PassReport {
        let none: &[BoundPod] = &[];
        self.pass_with(nodes, pods, none, pdbs, policies, ca_status, now)
            .await
    }

    /// [`Self::pass`] on the cluster view's objects: whole pods plus the
    /// records of bound pods ([`BoundPod`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn pass_with<
        N: Borrow<Node>,
        P: Borrow<Pod>,
        R: Borrow<BoundPod>,
        B: Borrow<PodDisruptionBudget>,
    >(
        &mut self,
        nodes: &[N],
        pods: &[P],
        bound: &[R],
        pdbs: &[B],
        policies: &PolicySet,
        ca_status: Option<&[NodeGroupStatus]>,
        now: Timestamp,
    ) -> PassReport {
        if let Some(groups) = ca_status {
            self.learner.observe_status(groups, now);
        }
        self.learn(nodes, now);
        let Classified {
            snapshot: mut snap,
            mut burst,
            placeholders,
            pending_owners,
        } = classify_with(
            nodes,
            pods,
            bound,
            now,
            &self.cluster,
            Some(&self.placeholder_namespace),
        );
        pools::apply(&mut snap, ca_status.unwrap_or_default(), &self.learner);
        self.engine.count_raised(&mut snap, policies);
        let plan = self.engine.plan(&snap, policies);
        if let Some(m) = &self.metrics {
            let cfg = &self.engine.config;
            record_gauges(
                m,
                &snap,
                &plan,
                policies,
                cfg.scale_up_delay,
                cfg.default_provision_time,
            );
        }
        observe::mark_pdb_blocked(&mut burst, pdbs.iter().map(Borrow::borrow));
        let inputs = Inputs {
            snap: &snap,
            plan: &plan,
            policies,
            burst: &burst,
            placeholders: &placeholders,
            pending_owners: &pending_owners,
        };
        let rebursts_before = self.state.rebursts;
        let actions = plan_actions(&inputs, &mut self.state, &self.loop_config);
        if let Some(m) = &self.metrics {
            m.drainback_rebursts
                .inc_by(self.state.rebursts - rebursts_before);
        }
        let mut results = Vec::with_capacity(actions.len());
        let mut failed_placeholders = Vec::new();
        for action in actions {
            let outcome = self.actor.act(&action).await;
            if let Action::CreatePlaceholder {
                for_pod, for_uid, ..
            } = &action
            {
                if let Some(m) = &self.metrics {
                    let label = outcome.as_ref().map_or("error", Outcome::as_str);
                    m.placeholder_creates.with_label_values(&[label]).inc();
                }
                let failure = match &outcome {
                    Err(e) => Some(e.to_string()),
                    Ok(Outcome::Refused(why)) => Some(why.clone()),
                    Ok(_) => None,
                };
                if let Some(why) = failure {
                    failed_placeholders.push((for_pod.clone(), for_uid.clone(), why));
                }
            }
            if let Action::Evict { uid, pod, .. } = &action {
                if !matches!(outcome, Ok(Outcome::Done) | Ok(Outcome::WouldDo)) {
                    self.state.forget_eviction(uid);
                }
                if let Some(m) = &self.metrics {
                    let label = outcome.as_ref().map_or("error", Outcome::as_str);
                    m.drainback_evictions
                        .with_label_values(&[&pod.namespace, label])
                        .inc();
                }
            }
            match &outcome {
                Ok(o) => tracing::debug!(?action, outcome = o.as_str(), "autoscaler action"),
                Err(e) => tracing::warn!(?action, error = %e, "autoscaler action failed"),
            }
            results.push((action, outcome));
        }
        // A placeholder the API refuses (admission, RBAC, quota) leaves the
        // cluster autoscaler blind to the burst pod: say so on the pod, once
        // per distinct failure, not on every pass's retry.
        let failing: BTreeSet<&str> = failed_placeholders
            .iter()
            .map(|(_, uid, _)| uid.as_str())
            .collect();
        let live: BTreeSet<&str> = burst.iter().map(|b| b.uid.as_str()).collect();
        self.placeholder_failures
            .retain(|uid, _| failing.contains(uid.as_str()) || live.contains(uid.as_str()));
        for (pod, uid, why) in failed_placeholders {
            if self.placeholder_failures.get(&uid) == Some(&why) {
                continue;
            }
            let event = Action::Event {
                pod,
                reason: EventReason::PlaceholderFailed,
                message: format!(
                    "spillway: cannot create the capacity placeholder that lets the cluster autoscaler grow a VM pool for this pod: {why}"
                ),
            };
            let outcome = self.actor.act(&event).await;
            self.placeholder_failures.insert(uid, why);
            results.push((event, outcome));
        }
        PassReport { results }
    }
}

/// Publish the state gauges of one pass: pending pods by verdict, what each
/// namespace runs on ACI and how much of its budget that is, VM pool timing.
pub fn record_gauges(
    metrics: &crate::metrics::Metrics,
    snap: &crate::decision::Snapshot,
    plan: &crate::decision::Plan,
    policies: &PolicySet,
    scale_up_delay: crate::units::Duration,
    default_provision: crate::units::Duration,
) {
    use std::collections::BTreeMap;
    metrics.pending_pods.reset();
    metrics.pending_over_max_vm_wait.reset();
    let mut pending: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut over: BTreeMap<&str, i64> = BTreeMap::new();
    for (pod, d) in snap.pending.iter().zip(&plan.decisions) {
        *pending
            .entry((pod.namespace.as_str(), d.verdict.as_str()))
            .or_default() += 1;
        if let Some(p) = policies.for_pod(&pod.namespace, &pod.labels)
            && snap.now.since(pod.pending_since) > p.burst.max_vm_wait
        {
            *over.entry(pod.namespace.as_str()).or_default() += 1;
        }
    }
    for ((ns, verdict), n) in pending {
        metrics
            .pending_pods
            .with_label_values(&[ns, verdict])
            .set(n);
    }
    for (ns, n) in over {
        metrics
            .pending_over_max_vm_wait
            .with_label_values(&[ns])
            .set(n);
    }
    metrics.burst_pods.reset();
    metrics.burst_cpu_cores.reset();
    metrics.burst_cost_per_hour.reset();
    metrics.budget_utilization.reset();
    for (ns, u) in &snap.burst_usage {
        metrics
            .burst_pods
            .with_label_values(&[ns])
            .set(u.pods as i64);
        metrics
            .burst_cpu_cores
            .with_label_values(&[ns])
            .set(u.requests.cpu_cores());
        metrics
            .burst_cost_per_hour
            .with_label_values(&[ns])
            .set(u.hourly_cost);
        let Some(b) = policies.budget_policy(ns).map(|p| &p.budget) else {
            continue;
        };
        let ratios = [
            ("pods", b.max_pods.map(|m| (u.pods as f64, m as f64))),
            (
                "cpu",
                b.max_cpu_millis
                    .map(|m| (u.requests.cpu_millis as f64, m as f64)),
            ),
            (
                "memory",
                b.max_memory_bytes
                    .map(|m| (u.requests.memory_bytes as f64, m as f64)),
            ),
            ("cost", b.max_hourly_cost.map(|m| (u.hourly_cost, m))),
        ];
        for (resource, r) in ratios {
            if let Some((used, max)) = r {
                let ratio = if max > 0.0 {
                    used / max
                } else if used > 0.0 {
                    1.0
                } else {
                    0.0
                };
                metrics
                    .budget_utilization
                    .with_label_values(&[ns, resource])
                    .set(ratio);
            }
        }
    }
    metrics.policy_max_vm_wait.reset();
    for p in policies.iter() {
        metrics
            .policy_max_vm_wait
            .with_label_values(&[p.namespace.as_deref().unwrap_or("*"), &p.name])
            .set(p.burst.max_vm_wait.secs_f64());
    }
    for pool in &snap.pools {
        let provision = pool.provision_time.unwrap_or(default_provision);
        metrics
            .vm_provision_seconds
            .with_label_values(&[&pool.name])
            .set(provision.secs_f64());
        metrics
            .vm_eta_seconds
            .with_label_values(&[&pool.name])
            .set((scale_up_delay.millis() + provision.millis()) as f64 / 1000.0);
    }
}
