//! The ACI layer: the only door to Azure Container Instances.
//!
//! Owns the ARM wire types ([`model`]), the [`ContainerGroups`] trait every
//! backend implements, the error classification ([`AciError`]), the pod →
//! container group translation ([`translate`]) and the ARM-compatible
//! [`emulator`]. It does not decide *whether* a pod should run on ACI (that is
//! `decision/`) nor keep pods in sync (that is the provider); it only speaks
//! to ACI.

pub mod azure;
pub mod backend;
pub mod emulator;
pub mod metered;
pub mod model;
pub mod monitor;
pub mod paced;
pub mod render;
pub mod translate;

pub use model::*;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Tag on every group spillway creates: the cluster id. `list` filters on it.
pub const TAG_CLUSTER: &str = "spillway-cluster";
/// Tag: the pod's namespace.
pub const TAG_NAMESPACE: &str = "spillway-namespace";
/// Tag: the pod's name.
pub const TAG_POD_NAME: &str = "spillway-pod";
/// Tag: the pod's uid (a recreated pod with the same name gets a new group).
pub const TAG_POD_UID: &str = "spillway-pod-uid";

/// A boxed, `Send` future: lets [`ContainerGroups`] be used as `Arc<dyn ContainerGroups>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an ACI call failed, classified by what the caller should do about it.
/// The variant names (see [`AciError::reason`]) are used as metric labels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AciError {
    /// ARM throttled the call (429). Retry after the given time.
    #[error("throttled by ARM; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    /// 5xx, connection reset, timeout: retry with back-off.
    #[error("transient ACI error: {message}")]
    Transient { message: String },
    /// Cores or container-group quota reached: retrying will not help until
    /// something is deleted or the quota raised.
    #[error("ACI quota exceeded ({code}): {message}")]
    QuotaExceeded { code: String, message: String },
    /// The region has no capacity for this request right now (ARM
    /// `ServiceUnavailable` 409); may succeed later or elsewhere.
    #[error("ACI capacity unavailable: {message}")]
    CapacityUnavailable { message: String },
    /// The spec is invalid (400 from ARM, or rejected by translation).
    #[error("invalid container group spec: {message}")]
    InvalidSpec { message: String },
    /// The group (or container) does not exist.
    #[error("container group not found")]
    NotFound,
    /// Authentication or authorization failed (401/403).
    #[error("ACI authentication failed: {message}")]
    Auth { message: String },
    /// Another operation on the same group is in progress (409 Conflict).
    #[error("conflicting operation: {message}")]
    Conflict { message: String },
    /// The response could not be understood.
    #[error("unexpected ACI response: {message}")]
    Protocol { message: String },
}

impl AciError {
    /// Canonical reason name for metrics labels and pod status reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            AciError::Throttled { .. } => "aci-throttled",
            AciError::Transient { .. } => "aci-transient",
            AciError::QuotaExceeded { .. } => "aci-quota-exceeded",
            AciError::CapacityUnavailable { .. } => "aci-capacity-unavailable",
            AciError::InvalidSpec { .. } => "aci-invalid-spec",
            AciError::NotFound => "aci-not-found",
            AciError::Auth { .. } => "aci-auth",
            AciError::Conflict { .. } => "aci-conflict",
            AciError::Protocol { .. } => "aci-protocol",
        }
    }

    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AciError::Throttled { .. }
                | AciError::Transient { .. }
                | AciError::CapacityUnavailable { .. }
                | AciError::Conflict { .. }
        )
    }

    /// Classify an ARM error response (status, `error.code`, `error.message`,
    /// `Retry-After` seconds). Every HTTP backend uses this, so the emulator
    /// and Azure map to the same variants.
    pub fn from_arm(status: u16, code: &str, message: &str, retry_after: Option<Duration>) -> Self {
        let message = if code.is_empty() {
            message.to_string()
        } else {
            format!("{code}: {message}")
        };
        match (status, code) {
            (429, _) => AciError::Throttled {
                retry_after: retry_after.unwrap_or(Duration::from_secs(10)),
            },
            (401 | 403, _) => AciError::Auth { message },
            (404, _) => AciError::NotFound,
            (_, c) if is_quota_code(c) => AciError::QuotaExceeded {
                code: c.to_string(),
                message,
            },
            (409, "ServiceUnavailable") | (_, "ResourceUnavailable") => {
                AciError::CapacityUnavailable { message }
            }
            (409, _) => AciError::Conflict { message },
            (400 | 422, _) => AciError::InvalidSpec { message },
            (s, _) if s >= 500 => AciError::Transient { message },
            _ => AciError::Protocol {
                message: format!("HTTP {status}: {message}"),
            },
        }
    }
}

fn is_quota_code(code: &str) -> bool {
    // A full subnet (`--aci-subnet-id`) is a quota too: the group fits once
    // another group of the subnet is deleted, so the pod waits, not fails.
    matches!(
        code,
        "ContainerGroupQuotaReached" | "QuotaExceeded" | "OperationNotAllowed" | "SubnetIsFull"
    ) || code.ends_with("QuotaExceeded")
}

/// One quota line: how much is allowed and how much is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub limit: i64,
    pub current: i64,
}

impl Quota {
    /// What is left; zero when over.
    pub fn available(&self) -> i64 {
        (self.limit - self.current).max(0)
    }
}

/// ACI usage in one location (the `locations/{loc}/usages` API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `StandardCores`.
    pub cores: Quota,
    /// `ContainerGroups`.
    pub container_groups: Quota,
}

impl Usage {
    /// Pick the lines spillway cares about out of an ARM usage list.
    pub fn from_entries(entries: &[UsageEntry]) -> Result<Self, AciError> {
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name.value.eq_ignore_ascii_case(name))
                .map(|e| Quota {
                    limit: e.limit,
                    current: e.current_value,
                })
                .ok_or_else(|| AciError::Protocol {
                    message: format!("usage list has no {name:?} entry"),
                })
        };
        Ok(Usage {
            cores: find("StandardCores")?,
            container_groups: find("ContainerGroups")?,
        })
    }
}

/// The query options of ACI's container logs call
/// (`containers/{name}/logs?tail=N&timestamps=true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail: Option<u32>,
    /// Prefix every line with its RFC 3339 timestamp and a space.
    pub timestamps: bool,
}

/// The terminal ACI opens for an exec session (executeCommand's
/// `terminalSize`; it cannot be changed once the session runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for TerminalSize {
    /// 24 rows of 80 columns, what `az container exec` falls back to.
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// What ACI's executeCommand answers: the session's WebSocket and the
/// password to send as its first (text) message. The password is a secret
/// and is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ExecSession {
    pub web_socket_uri: String,
    pub password: String,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("web_socket_uri", &self.web_socket_uri)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The door to ACI: one resource group of one subscription.
///
/// Contract every implementation keeps (the emulator tests check it):
/// - **`create_or_update`** is idempotent: a PUT of the same name and the same
///   spec ([`ContainerGroup::spec`], compared after
///   [`ContainerGroup::redacted`]) changes nothing and returns the existing
///   group; a different spec updates it. It returns the group as ARM answered,
///   usually still `Accepted`/`Creating`; callers poll `get` or `list` rather
///   than waiting. It never retries by itself.
/// - **`get`** returns `Ok(None)` for a missing group; never `NotFound`.
/// - **`list`** returns the groups of the resource group whose
///   [`TAG_CLUSTER`] tag equals `cluster_id`, following `nextLink`s; one call
///   per sync, not one `get` per pod.
/// - **`delete`** of a missing group is success.
/// - **`logs`** returns the container's log text ([`LogOptions::tail`] last
///   lines when set; each line prefixed with its RFC 3339 timestamp and a
///   space when [`LogOptions::timestamps`]); `NotFound` when the group or
///   container does not exist.
/// - **`metrics`** returns the group's per-container `CpuUsage`
///   (millicores) and `MemoryUsage` (bytes) one-minute averages over the
///   span from Azure Monitor ([`monitor`]); `NotFound` when the group does
///   not exist. It is a read (ARM's read budget).
/// - **`usage`** returns the `StandardCores` and `ContainerGroups` lines of
///   the location's quota.
/// - **`exec`** starts `command` (one string: ACI runs a single process,
///   without arguments, in a terminal of [`TerminalSize`]) in the container
///   (ARM's `containers/{name}/exec` POST) and returns the [`ExecSession`]
///   to connect to; `NotFound` when the group or container does not exist.
///   It is a write for ARM's throttling. It never retries by itself.
/// - Reads never return secrets (`secureValue`, secret volume contents,
///   storage keys, registry passwords).
/// - Every error is an [`AciError`], classified so the caller knows whether to
///   retry ([`AciError::is_retryable`]) and how long to wait (`Throttled`).
///   Each call is bounded by the implementation's timeout (`Transient`).
pub trait ContainerGroups: Send + Sync {
    fn create_or_update<'a>(
        &'a self,
        group: &'a ContainerGroup,
    ) -> BoxFuture<'a, Result<ContainerGroup, AciError>>;
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>>;
    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>>;
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AciError>>;
    fn logs<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<String, AciError>>;
    fn metrics<'a>(
        &'a self,
        name: &'a str,
        span: monitor::MetricsSpan,
    ) -> BoxFuture<'a, Result<monitor::GroupMetrics, AciError>>;
    fn usage<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>>;
    fn exec<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        command: &'a str,
        terminal: TerminalSize,
    ) -> BoxFuture<'a, Result<ExecSession, AciError>>;
}

/// `list`, completed with what ARM's list omits: every listed group whose
/// provisioning has finished (`Succeeded`, `Failed`, `Canceled`) but that
/// carries no instance view is read again with `get`, so
/// [`translate::pod_status_from_group`] sees container states. Groups still
/// provisioning are returned as listed (their phase comes from
/// `provisioningState`); a group deleted between the list and its `get` is
/// left out. Order is kept. The first error of any call is returned: a
/// status mapped from a group without its instance view would be wrong.
pub async fn list_with_instance_views<C: ContainerGroups + ?Sized>(
    aci: &C,
    cluster_id: &str,
) -> Result<Vec<ContainerGroup>, AciError> {
    use futures::StreamExt as _;
    /// Concurrent GETs; a pacer in `aci` still bounds the rate.
    const CONCURRENT_GETS: usize = 8;
    let listed = aci.list(cluster_id).await?;
    let completed: Vec<Result<Option<ContainerGroup>, AciError>> =
        futures::stream::iter(listed.into_iter().map(|g| async move {
            let finished = matches!(
                g.properties.provisioning_state.as_deref(),
                None | Some("Succeeded" | "Failed" | "Canceled")
            );
            if finished && !translate::has_instance_view(&g) {
                aci.get(&g.name).await
            } else {
                Ok(Some(g))
            }
        }))
        .buffered(CONCURRENT_GETS)
        .collect()
        .await;
    completed
        .into_iter()
        .filter_map(Result::transpose)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_errors_are_classified_by_what_to_do() {
        let t = AciError::from_arm(429, "TooManyRequests", "slow", Some(Duration::from_secs(7)));
        assert_eq!(
            t,
            AciError::Throttled {
                retry_after: Duration::from_secs(7)
            }
        );
        assert!(t.is_retryable());
        let q = AciError::from_arm(409, "ContainerGroupQuotaReached", "quota", None);
        assert_eq!(q.reason(), "aci-quota-exceeded");
        assert!(!q.is_retryable());
        assert_eq!(
            AciError::from_arm(400, "SubnetIsFull", "full", None).reason(),
            "aci-quota-exceeded",
            "a full subnet waits like a quota"
        );
        let c = AciError::from_arm(409, "ServiceUnavailable", "no capacity", None);
        assert_eq!(c.reason(), "aci-capacity-unavailable");
        assert_eq!(
            AciError::from_arm(404, "ResourceNotFound", "x", None),
            AciError::NotFound
        );
        assert_eq!(
            AciError::from_arm(401, "AuthenticationFailed", "x", None).reason(),
            "aci-auth"
        );
        assert_eq!(
            AciError::from_arm(400, "InvalidRequestContent", "x", None).reason(),
            "aci-invalid-spec"
        );
        assert!(AciError::from_arm(503, "InternalServerError", "x", None).is_retryable());
    }

    #[test]
    fn usage_picks_cores_and_groups() {
        let e = |n: &str, cur, lim| UsageEntry {
            unit: "Count".into(),
            current_value: cur,
            limit: lim,
            name: UsageName {
                value: n.into(),
                localized_value: n.into(),
            },
        };
        let u = Usage::from_entries(&[e("ContainerGroups", 3, 100), e("StandardCores", 12, 10)])
            .expect("ok");
        assert_eq!(u.container_groups.available(), 97);
        assert_eq!(u.cores.available(), 0);
        assert!(Usage::from_entries(&[e("ContainerGroups", 3, 100)]).is_err());
    }
}
