//! The autoscaler: the loop that makes "fill VMs first, burst only when VMs
//! are too slow, come back when they arrive" true in a live cluster.
//!
//! - [`crate::cluster::classify`] (not here): every node and pod classified
//!   once into the engine's snapshot, burst pods, placeholders and pending
//!   controllers; the autoscaler reads that, never the objects;
//! - [`observe`]: what a PodDisruptionBudget allows for each burst pod (pure);
//! - [`plan`]: the solve step, snapshot + engine plan → actions (pure);
//! - [`act`]: each action re-validated against the latest object, then written.

pub mod act;
pub mod observe;
pub mod pass;
pub mod plan;
pub mod pools;

#[cfg(test)]
mod tests;

pub use act::{ActConfig, ActError, Actor, Outcome};
pub use pass::{Autoscaler, PassReport};
pub use plan::{
    Action, BurstPod, EventReason, Inputs, LoopConfig, LoopState, Owner, Placeholder, PodRef,
    plan_actions,
};
