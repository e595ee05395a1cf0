//! One pass of the autoscaler over the cluster as the reflectors see it:
//! observe → engine → plan → act. The leader-elected loop calls this on
//! watch events and on a tick; tests call it directly with a chosen `now`.

use super::act::{ActError, Actor, Outcome};
use super::observe;
use super::plan::{Action, Inputs, LoopConfig, LoopState, plan_actions};
use super::pools::{self, NodeGroupStatus, ProvisionLearner};
use crate::cluster::{ClusterConfig, snapshot_from};
use crate::decision::Engine;
use crate::policy::PolicySet;
use crate::units::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
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
    /// Ready nodes already seen (a node joining the set is a provisioning observation).
    ready_nodes: Option<BTreeSet<String>>,
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
            ready_nodes: None,
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
            let Some(name) = n.metadata.name.clone() else { continue };
            let ready_since = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                .map(|c| c.last_transition_time.as_ref().map_or(now, |t| Timestamp::from_millis(t.0.as_millisecond())));
            let Some(ready_at) = ready_since else { continue };
            let known = self.ready_nodes.as_ref().is_none_or(|seen| seen.contains(&name));
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
    pub async fn pass<N: Borrow<Node>, P: Borrow<Pod>>(
        &mut self,
        nodes: &[N],
        pods: &[P],
        policies: &PolicySet,
        ca_status: Option<&[NodeGroupStatus]>,
        now: Timestamp,
    ) -> PassReport {
        if let Some(groups) = ca_status {
            self.learner.observe_status(groups, now);
        }
        self.learn(nodes, now);
        let mut snap = snapshot_from(nodes, pods, now, &self.cluster);
        pools::apply(&mut snap, ca_status.unwrap_or_default(), &self.learner);
        let plan = self.engine.plan(&snap, policies);
        let virtual_nodes: BTreeSet<String> = nodes
            .iter()
            .map(Borrow::borrow)
            .filter(|n| self.cluster.virtual_nodes.is_virtual(n))
            .filter_map(|n| n.metadata.name.clone())
            .chain(self.cluster.virtual_nodes.names.iter().cloned())
            .collect();
        let burst = observe::burst_pods(pods.iter().map(Borrow::borrow), &virtual_nodes, now);
        let placeholders =
            observe::placeholders(pods.iter().map(Borrow::borrow), &self.placeholder_namespace);
        let inputs = Inputs {
            snap: &snap,
            plan: &plan,
            policies,
            burst: &burst,
            placeholders: &placeholders,
        };
        let actions = plan_actions(&inputs, &mut self.state, &self.loop_config);
        let mut results = Vec::with_capacity(actions.len());
        for action in actions {
            let outcome = self.actor.act(&action).await;
            if let Action::Evict { uid, .. } = &action
                && !matches!(outcome, Ok(Outcome::Done) | Ok(Outcome::WouldDo))
            {
                self.state.forget_eviction(uid);
            }
            match &outcome {
                Ok(o) => tracing::debug!(?action, outcome = o.as_str(), "autoscaler action"),
                Err(e) => tracing::warn!(?action, error = %e, "autoscaler action failed"),
            }
            results.push((action, outcome));
        }
        PassReport { results }
    }
}
