//! The autoscaler: the loop that makes "fill VMs first, burst only when VMs
//! are too slow, come back when they arrive" true in a live cluster.
//!
//! [`plan`] is the pure solve step (snapshot + engine plan → actions). The
//! act step (Kubernetes writes, re-validated just before each one) and the
//! leader-elected loop build on it.

pub mod plan;

#[cfg(test)]
mod tests;

pub use plan::{
    Action, BurstPod, EventReason, Inputs, LoopConfig, LoopState, Owner, Placeholder, PodRef,
    plan_actions,
};
