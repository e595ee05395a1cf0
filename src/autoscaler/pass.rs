//! One pass of the autoscaler over the cluster as the reflectors see it:
//! observe → engine → plan → act. The leader-elected loop calls this on
//! watch events and on a tick; tests call it directly with a chosen `now`.

use super::act::{ActError, Actor, Outcome};
use super::observe;
use super::plan::{Action, Inputs, LoopConfig, LoopState, plan_actions};
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
            actor,
        }
    }

    /// Decide and act once on the given objects at `now`.
    pub async fn pass<N: Borrow<Node>, P: Borrow<Pod>>(
        &mut self,
        nodes: &[N],
        pods: &[P],
        policies: &PolicySet,
        now: Timestamp,
    ) -> PassReport {
        let snap = snapshot_from(nodes, pods, now, &self.cluster);
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
