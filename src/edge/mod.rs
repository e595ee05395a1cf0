//! The IoT Hub side of the IoT Edge provider: everything spillway says to an
//! IoT Hub, and a hub to say it to in tests.
//!
//! - [`sas`]: connection strings and shared access signatures.
//! - [`model`]: the hub's wire types (configurations, metrics, module twins).
//! - [`hub`]: [`hub::HubClient`], the paced REST client (api-version `2021-04-12`).
//! - [`emulator`]: an in-process / standalone IoT Hub with simulated IoT Edge
//!   devices (`spillway iothub-emulator`).
//! - [`translate`]: pods (and their owning controller) → layered IoT Edge
//!   deployments, and the per-node base deployment; pure.
//! - [`status`]: a deployment's metrics and `$edgeAgent` twins → pod status; pure.
//! - [`backend`]: [`backend::EdgeBackend`], the provider backend over the hub
//!   (reference-counted layered deployments, base deployment, orphan GC).
//! - [`node`]: the edge node's flags and start-up (`--edge hub|emulator`).
//!
//! Must not: know about Kubernetes outside [`translate`], [`status`], [`backend`] and [`node`] (the hub layer
//! speaks only hub types). Deciding when to create, update or delete
//! deployments and reading pod status from metrics and twins belongs to the
//! edge backend of the provider, which calls [`hub::HubClient`].

pub mod backend;
pub mod emulator;
pub mod hub;
pub mod model;
pub mod node;
pub mod sas;
pub mod status;
pub mod translate;

pub use hub::{
    Attempt, AttemptObserver, ConfigurationPatch, HubClient, HubClientConfig, HubError, HubFault,
    QueryPage,
};
pub use model::{Configuration, DeviceCounts, EdgeAgentReport, ModuleTwin, QueriesTestResult};
pub use sas::{ConnectionString, SasError, TokenCache};
