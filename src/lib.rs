//! spillway: a burst-scaling scheduler extender, autoscaler and embedded ACI
//! provider for AKS. See README.md and ../shared/DESIGN.md for the picture.

pub mod aci;
pub mod admission;
pub mod autoscaler;
pub mod cli;
pub mod cluster;
pub mod decision;
pub mod edge;
pub mod explain;
pub mod extender;
pub mod kubelet;
pub mod leader;
pub mod located;
pub mod metrics;
pub mod pacing;
pub mod policy;
pub mod provider;
pub mod run;
pub mod served;
pub mod sim;
pub mod tls;
pub mod units;
