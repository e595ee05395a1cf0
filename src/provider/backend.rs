//! The provider contract: what a backend (ACI, IoT Edge) does for the shared
//! controllers in this module's parent (node registration, Lease, node
//! status, pod lifecycle, status sync, GC).
//!
//! Shaped like virtual-kubelet's provider interface: create / delete / get /
//! list (here [`Backend::read`], one call per sync for every pod) / pod
//! status (from the backend's [`Instance`]) / capacity. The controllers own
//! every Kubernetes write (pod status, Events, the node, the Lease, deleting
//! the pod object) and every decision ([`super::pods::decide_for`]); a backend
//! owns only its side of the wire and the mapping of a pod to its instance.
//!
//! Must not: write to the Kubernetes API (the controllers hand in the
//! ConfigMaps/Secrets a pod references; a backend may read the few objects
//! its mapping needs, e.g. the owning ReplicaSet's revision), decide about
//! pod phases beyond mapping an instance to a status,
//! or hold per-pod state the controllers would need to survive a restart
//! (everything is recovered from [`Backend::read`] and the instances'
//! owner records).
//!
//! # Idempotency contract (every backend must keep it)
//! - **Identity is deterministic.** A pod's instance is named by
//!   [`InstanceKind::instance_name`] from namespace/name alone, and every
//!   instance records its pod (namespace, name, uid; [`Instance::owner`]). A
//!   restarted controller finds what it created by name and adopts it by
//!   owner, so it never creates a second instance for one pod.
//! - **`create` is safe to repeat.** Creating what already exists for the
//!   same pod succeeds (ACI: a PUT of the same group; IoT Edge: a 409 for
//!   the same content-hash id is success). A create that failed with an
//!   unknown outcome may be retried; it must not leak a second instance.
//! - **`delete` of something gone is success** (404 counts as done). The
//!   controllers re-read with [`Backend::get`] and check
//!   [`Instance::owner`] before every delete, so a backend deletes exactly
//!   the instance it is told to.
//! - **`read` is a snapshot, not a promise.** Instances created after the
//!   read began may be missing; the controllers account for that. Instances
//!   whose state the backend could not learn this time go to
//!   [`Read::unknown`] and get no status decision (never a guessed one).
//! - **Errors say whether the backend answered** ([`BackendError::is_answer`]):
//!   throttling, quota and validation are answers (the backend is
//!   reachable); transport failures and timeouts are not and, if they last,
//!   turn the node NotReady.

use super::resolve::Sources;
use crate::aci::Usage;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The pod an instance records as its owner; fields the backend did not
/// store are `None` (such an instance is never judged ours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// Static facts about a backend's instances, used in pod status messages,
/// the durable creation marker and names.
#[derive(Debug, Clone, Copy)]
pub struct InstanceKind {
    /// The system, as people call it (`ACI`).
    pub system: &'static str,
    /// What an instance is called (`container group`).
    pub noun: &'static str,
    /// Pod annotation written once the pod's instance exists (see
    /// [`super::pods::GROUP_ANNOTATION`]).
    pub marker_annotation: &'static str,
    /// Prefix of the container ids in statuses written from an instance
    /// (`aci://`): a pod showing one had an instance.
    pub container_id_scheme: &'static str,
    /// Deterministic instance name of pod namespace/name.
    pub instance_name: fn(&str, &str) -> String,
}

/// What runs one pod on a backend, as [`Backend::read`] or [`Backend::get`]
/// returned it.
pub trait Instance: Clone + Send + Sync + 'static {
    const KIND: InstanceKind;
    fn name(&self) -> &str;
    /// The pod the instance was created for.
    fn owner(&self) -> OwnerRecord;
    /// The pod status this instance shows (phase, conditions, container
    /// statuses, IP); the controllers add host IP and timestamps.
    fn pod_status(&self) -> PodStatus;
    /// CPU cores this instance holds of the backend's quota.
    fn held_cores(&self) -> f64;
    /// What the backend reports happened to the instance (ACI: the
    /// containers' and the group's instance-view events). The controllers
    /// publish each new one (or each count increase) as a Kubernetes Event
    /// on the pod. Default: none.
    fn events(&self) -> Vec<InstanceEvent> {
        Vec::new()
    }
}

/// One event a backend reports about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    /// The container it is about; `None`: the whole instance.
    pub container: Option<String>,
    /// Short CamelCase reason (`Pulling`, `Started`, `Killing`, `BackOff`).
    pub reason: String,
    pub message: String,
    pub warning: bool,
    /// How often it happened, as the backend counts.
    pub count: i32,
    /// When it last happened, as the backend wrote it.
    pub last: String,
}

impl InstanceEvent {
    /// What identifies it across reads (its count and time may grow).
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.container.as_deref().unwrap_or(""),
            self.reason,
            self.message
        )
    }
}

/// A backend error, classified for node health.
pub trait BackendError: std::error::Error + Send + Sync + 'static {
    /// The backend answered (throttled, quota, invalid, not found,
    /// conflict): it is reachable, even if it refused.
    fn is_answer(&self) -> bool;
}

/// Why a backend did not create a pod's instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// Something the pod references is missing (ConfigMap key, Secret):
    /// Pending with `CreateContainerConfigError`, retried.
    #[error("{message}")]
    Config { message: String },
    /// The pod can never run on this backend: Failed. `message` is shown
    /// on the pod as is.
    #[error("{message}")]
    Invalid { message: String },
    /// Refused for now (quota, capacity, transport): Pending, retried with
    /// backoff. `metric` labels the start-failure counter when set.
    #[error("{message}")]
    Retry {
        message: String,
        metric: Option<&'static str>,
    },
}

/// Something a backend changed while creating a pod's instance that the
/// pod's owner should hear about (e.g. ACI limits clamped to the group's
/// request). The controllers publish each as a Warning Event on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateNotice {
    /// Event reason (`LimitsClamped`).
    pub reason: String,
    pub message: String,
}

/// One sync's view of the backend.
#[derive(Debug)]
pub struct Read<I, E> {
    /// Instances by name.
    pub instances: HashMap<String, I>,
    /// Instances whose state is not known this time: no status decision.
    pub unknown: HashSet<String>,
    /// Partial failures (for node health); the read itself succeeded.
    pub errors: Vec<E>,
}

/// What [`Backend::read`] answers.
pub type ReadResult<B> =
    Result<Read<<B as Backend>::Instance, <B as Backend>::Error>, <B as Backend>::Error>;

/// A provider backend. See the module doc for the contract.
pub trait Backend: Send + Sync + 'static {
    type Instance: Instance;
    type Error: BackendError;

    /// Create the pod's instance (or confirm it exists for this pod).
    /// `sources` holds the ConfigMaps, Secrets and tokens the pod
    /// references, read by the controllers. On success, what the backend
    /// had to change about the pod ([`CreateNotice`]s, often none).
    fn create<'a>(
        &'a self,
        pod: &'a Pod,
        sources: &'a Sources,
    ) -> BoxFuture<'a, Result<Vec<CreateNotice>, CreateError>>;

    /// The name of the instance that runs pod `namespace/name` (the backend
    /// may qualify it, e.g. ACI adds the cluster's hash). Defaults to
    /// [`InstanceKind::instance_name`].
    fn instance_name(&self, namespace: &str, name: &str) -> String {
        (<Self::Instance as Instance>::KIND.instance_name)(namespace, name)
    }

    /// The instance named `name`, if it exists.
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Self::Instance>, Self::Error>>;

    /// Delete the instance named `name`; gone already is success.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Self::Error>>;

    /// Everything this cluster runs on the backend, with enough state to
    /// report the status of `pods` (the pods bound to the node now).
    fn read<'a>(&'a self, pods: &'a [Arc<Pod>]) -> BoxFuture<'a, ReadResult<Self>>;

    /// The quota the node's capacity comes from.
    fn capacity(&self) -> BoxFuture<'_, Result<Usage, Self::Error>>;

    /// A timeout of the controllers' own (a read that did not answer in time).
    fn timed_out(&self, what: String) -> Self::Error;
}
