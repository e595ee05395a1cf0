//! An ARM-compatible Azure Container Instances endpoint, for local runs and
//! tests. It speaks the same paths and JSON as
//! `management.azure.com` for `Microsoft.ContainerInstance/containerGroups`,
//! so the production client is tested against it unchanged.
//!
//! Behaviour (all knobs in [`EmulatorConfig`]):
//! - **Auth**: a bearer token is required (any non-empty one, or exactly
//!   [`EmulatorConfig::token`]); otherwise 401 with an ARM error body.
//! - **Lifecycle**: `provisioningState` goes `Accepted` → `Creating` →
//!   `Succeeded`, derived from the creation instant and the elapsed time ×
//!   [`EmulatorConfig::speed`] (no background tasks). The instance view is then
//!   `Running`; groups with restartPolicy `Never`/`OnFailure` terminate after
//!   [`EmulatorConfig::job_runs_for`] when set (`OnFailure` groups whose exit
//!   code is not 0 restart instead, counting `restartCount`).
//! - **Reads as ARM**: secrets are never returned; the list operations omit
//!   instance views like ARM does (callers must GET a group for container
//!   states) unless [`EmulatorConfig::list_instance_view`] is set.
//! - **Validation as ARM** (400 with ARM's codes and wording): names,
//!   location, osType, containers, volumes, ports, and ACI's resource rules —
//!   a container's limit not below its request
//!   (`ResourceLimitsLessThanRequests`) and not above the group's total
//!   request (`ContainerLimitGreaterThanContainerGroupTotalRequest`). The
//!   body's `name`, `id` and `type` are optional (the URL names the group).
//! - **Public IPs** come from a test range (20.0.0.0/16 by default), with an
//!   FQDN `{label}.{location}.azurecontainer.io`.
//! - **Subnets** (`POST /_emulator/subnets` with `id`, `addressPrefix` and
//!   `delegations`; `GET` lists them with the addresses in use): a group
//!   naming one in `subnetIds` gets a private IP of its range (the first
//!   four and the last address reserved, as in Azure), released on delete;
//!   ARM's refusals of an unknown or undelegated subnet, a full one, a
//!   public IP or DNS label in a VNet and a private IP outside one (see
//!   `subnets.rs` for the codes and their sources).
//! - **Quotas**: cores and groups per subscription and region →
//!   409 `ContainerGroupQuotaReached` with ARM's message; groups larger than
//!   the region allows → 409 `ServiceUnavailable`.
//! - **Throttling**: token buckets for writes and reads per subscription →
//!   429 `SubscriptionRequestsThrottled` + `Retry-After`; every answer carries
//!   `x-ms-ratelimit-remaining-subscription-writes`/`-reads`.
//! - **Idempotency**: a PUT of the same spec is a no-op (200, nothing
//!   restarts); a new group is 201; DELETE is 200 for an existing group and
//!   204 for a missing one.
//! - **Faults** (config or `POST /_emulator/faults`): per-operation rates of
//!   500s, 429s and hangs past the client's timeout (a hung write is applied
//!   first, so a client that times out and retries must be idempotent), extra
//!   latency, capacity errors, and groups that vanish; the same rates aimed at
//!   one group by name (`groups`), and groups whose provisioning fails
//!   (`failProvisioning`). Seeded randomness.
//! - **Logs**: the container's lifecycle lines plus output appended with
//!   `POST /_emulator/groups/{name}/containers/{container}/logs`
//!   (`{"lines": [...]}`), each line stamped with its wall-clock time;
//!   `tail` and `timestamps=true` (an RFC 3339 time and a space before each
//!   line) as ARM takes them.
//! - **Azure Monitor metrics** of a group
//!   (`{group}/providers/Microsoft.Insights/metrics`, api-version
//!   2018-01-01 and later): ACI's `CpuUsage` (millicores) and
//!   `MemoryUsage` (bytes) per container (`$filter=containerName eq '*'`,
//!   at most `top` series, 10 by default), one point per grain of the
//!   `timespan` up to now; a minute has data once it is over: the values
//!   set with `POST /_emulator/groups/{name}/metrics`
//!   (`{"containers": {"app": {"cpuMillicores": 250, "memoryBytes": N}},
//!   "from": RFC 3339, "to": RFC 3339}`, whole minutes, `from` defaulting
//!   to the current minute, `to` open), else 0 while the container runs.
//!   Unknown metric names, aggregations, grains and timespans are 400,
//!   a missing group 404, in Monitor's error form (`{"code","message"}`).
//! - **Exec**: ARM's `executeCommand` answers a WebSocket URI on a loopback
//!   listener of the emulator's own and a password; the socket speaks ACI's
//!   exec protocol (password first, then terminal input and output), each
//!   session scripted per group and container with
//!   `POST /_emulator/groups/{name}/containers/{container}/exec`
//!   ([`ExecScript`]); `GET /_emulator/exec` lists the sessions started
//!   ([`exec`] module).
//! - **Inspection**: `GET /_emulator/groups` returns every group with its PUT
//!   count, plus counters (`creates`, `createsByName`, …) for duplicate
//!   detection.
//!
//! The `/_emulator/*` admin endpoints need no token. The emulator must not be
//! mistaken for Azure: it listens on loopback by default and accepts any
//! token unless one is configured.

pub mod cli;
pub mod exec;
mod routes;
mod state;
mod subnets;

pub use exec::{ExecEnd, ExecRecord, ExecScript};
pub use state::{Counters, GroupSnapshot, MetricSetting, Op};
pub use subnets::{ACI_DELEGATION, SubnetDefinition, SubnetSnapshot};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Emulator settings. `Default` is a realistic, slowish ACI.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// Required bearer token; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// Time multiplier for the lifecycle (10 = ten times faster than real).
    pub speed: f64,
    /// Time spent in `Accepted` (emulated time).
    pub accepted_for: Duration,
    /// Time spent in `Creating` (emulated time).
    pub creating_for: Duration,
    /// When set, containers of `Never`/`OnFailure` groups terminate this long
    /// after starting, with [`EmulatorConfig::job_exit_code`].
    pub job_runs_for: Option<Duration>,
    pub job_exit_code: i32,
    /// `StandardCores` quota per subscription and region.
    pub cores_limit: i64,
    /// `ContainerGroups` quota per subscription and region.
    pub groups_limit: i64,
    /// Largest group the region can place.
    pub max_group_cores: f64,
    pub max_group_memory_gb: f64,
    /// Public IPs are allocated from this range.
    pub ip_range_base: Ipv4Addr,
    pub ip_range_prefix: u8,
    /// ARM write bucket per subscription: refill rate and size.
    pub writes_per_sec: f64,
    pub write_burst: u32,
    /// ARM read bucket per subscription.
    pub reads_per_sec: f64,
    pub read_burst: u32,
    /// Seed for fault injection.
    pub seed: u64,
    /// Faults in force from the start.
    pub faults: Faults,
    /// Include instance views in list answers (ARM does not).
    pub list_instance_view: bool,
    /// Groups per list page before a `nextLink`.
    pub page_size: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            token: None,
            speed: 1.0,
            accepted_for: Duration::from_secs(2),
            creating_for: Duration::from_secs(3),
            job_runs_for: None,
            job_exit_code: 0,
            cores_limit: 100,
            groups_limit: 100,
            max_group_cores: 4.0,
            max_group_memory_gb: 16.0,
            ip_range_base: Ipv4Addr::new(20, 0, 0, 0),
            ip_range_prefix: 16,
            // ARM's token buckets: 200 writes refilled at 10/s, 250 reads at 25/s.
            writes_per_sec: 10.0,
            write_burst: 200,
            reads_per_sec: 25.0,
            read_burst: 250,
            seed: 1,
            faults: Faults::default(),
            list_instance_view: false,
            page_size: 100,
        }
    }
}

/// Injected faults for one operation (`put`, `get`, `list`, `delete`,
/// `logs`, `metrics`, `usage`, `exec`, or `*` for all without their own entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperationFaults {
    /// Fraction of calls answered 500 `InternalServerError` (not applied).
    pub error_rate: f64,
    /// Fraction answered 429 regardless of the buckets.
    pub throttle_rate: f64,
    /// Fraction that hang for [`Faults::hang_ms`] and then answer 504
    /// (writes are applied before the hang).
    pub timeout_rate: f64,
    /// Extra latency on every call.
    pub latency_ms: u64,
}

/// The fault plan, as set by config or `POST /_emulator/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    pub operations: BTreeMap<String, OperationFaults>,
    /// Fraction of group creations refused with 409 `ServiceUnavailable`.
    pub capacity_error_rate: f64,
    /// How long a "timeout" fault hangs.
    pub hang_ms: u64,
    /// Names of groups to make disappear at once (not kept in the plan).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vanish: Vec<String>,
    /// Faults aimed at one group: group name → operation (`put`, `get`,
    /// `delete`, `logs`, `metrics`, or `*`) → faults. For the operations it lists they
    /// replace [`Faults::operations`] on that group's requests, so one group
    /// can fail while every other works (zero rates exempt the group).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, BTreeMap<String, OperationFaults>>,
    /// Groups whose provisioning fails: group name → the detail ACI shows
    /// (e.g. `ErrImagePull: …`). A group created or updated while named here
    /// goes `Accepted` → `Creating` → `Failed`, its containers stay `Waiting`
    /// with that detail, and a `Failed` event carries it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fail_provisioning: BTreeMap<String, String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            operations: BTreeMap::new(),
            capacity_error_rate: 0.0,
            hang_ms: 60_000,
            vanish: Vec::new(),
            groups: BTreeMap::new(),
            fail_provisioning: BTreeMap::new(),
        }
    }
}

impl Faults {
    /// Check rates and operation names; a message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        validate_operations(
            "operations",
            &self.operations,
            &[
                "put", "get", "list", "delete", "logs", "metrics", "usage", "exec", "*",
            ],
        )?;
        for (group, operations) in &self.groups {
            if group.is_empty() {
                return Err("groups: a group name is empty".into());
            }
            validate_operations(
                &format!("groups.{group}"),
                operations,
                &["put", "get", "delete", "logs", "metrics", "exec", "*"],
            )?;
        }
        if !(0.0..=1.0).contains(&self.capacity_error_rate) {
            return Err(format!(
                "capacityErrorRate: {} is not between 0 and 1",
                self.capacity_error_rate
            ));
        }
        Ok(())
    }

    /// The plan for one request: the group's own entry when it has one,
    /// else the operation-wide one (`*` as the fallback in both).
    pub fn plan_for(&self, op: &str, group: Option<&str>) -> OperationFaults {
        let pick =
            |ops: &BTreeMap<String, OperationFaults>| ops.get(op).or_else(|| ops.get("*")).cloned();
        group
            .and_then(|g| self.groups.get(g))
            .and_then(pick)
            .or_else(|| pick(&self.operations))
            .unwrap_or_default()
    }
}

fn validate_operations(
    at: &str,
    operations: &BTreeMap<String, OperationFaults>,
    known: &[&str],
) -> Result<(), String> {
    let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
    for (op, f) in operations {
        if !known.contains(&op.as_str()) {
            return Err(format!(
                "{at}.{op}: unknown operation ({})",
                known.join(", ")
            ));
        }
        for (name, r) in [
            ("errorRate", f.error_rate),
            ("throttleRate", f.throttle_rate),
            ("timeoutRate", f.timeout_rate),
        ] {
            if !rate_ok(r) {
                return Err(format!("{at}.{op}.{name}: {r} is not between 0 and 1"));
            }
        }
        if f.error_rate + f.throttle_rate + f.timeout_rate > 1.0 + 1e-9 {
            return Err(format!("{at}.{op}: the rates add up to more than 1"));
        }
    }
    Ok(())
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid emulator configuration: {0}")]
    Config(String),
}

/// Shared state behind the router.
#[derive(Clone)]
pub struct EmulatorState {
    world: Arc<Mutex<state::World>>,
    exec: Arc<exec::ExecHub>,
}

impl EmulatorState {
    pub fn new(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        if !(config.speed.is_finite() && config.speed > 0.0) {
            return Err(EmulatorError::Config(format!(
                "speed must be a positive number, not {}",
                config.speed
            )));
        }
        if config.ip_range_prefix > 30 {
            return Err(EmulatorError::Config(format!(
                "the IP range /{} is too small",
                config.ip_range_prefix
            )));
        }
        if config.page_size == 0 {
            return Err(EmulatorError::Config("page size must be at least 1".into()));
        }
        config.faults.validate().map_err(EmulatorError::Config)?;
        Ok(Self {
            world: Arc::new(Mutex::new(state::World::new(config))),
            exec: Arc::new(exec::ExecHub::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, state::World> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so keep serving.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the fault plan (and make `vanish` groups disappear).
    pub fn set_faults(&self, mut faults: Faults) -> Result<usize, String> {
        faults.validate()?;
        let vanish = std::mem::take(&mut faults.vanish);
        let mut w = self.lock();
        w.faults = faults;
        Ok(vanish.iter().map(|name| w.vanish(name)).sum())
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.lock().snapshot(tokio::time::Instant::now())
    }

    /// Append output to `container` of every group named `name` (what
    /// `POST /_emulator/groups/{name}/containers/{container}/logs` does),
    /// stamped with the wall-clock time now; how many groups had it.
    pub fn append_logs(&self, name: &str, container: &str, lines: &[String]) -> usize {
        self.lock()
            .append_logs(name, container, lines, crate::units::Timestamp::now_wall())
    }

    /// Set what Azure Monitor holds for `container` of every group named
    /// `name` (what `POST /_emulator/groups/{name}/metrics` does); how many
    /// groups had that container.
    pub fn set_metrics(&self, name: &str, container: &str, setting: MetricSetting) -> usize {
        self.lock().set_metrics(name, container, setting)
    }

    /// Whether a group named `name` has a container `container`.
    pub fn has_container(&self, name: &str, container: &str) -> bool {
        self.lock().has_container(name, container)
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Script what exec sessions on `container` of group `group` do (what
    /// `POST /_emulator/groups/{name}/containers/{container}/exec` does).
    pub fn set_exec_script(&self, group: &str, container: &str, script: ExecScript) {
        self.exec.set_script(group, container, script);
    }

    /// The exec sessions started so far.
    pub fn exec_sessions(&self) -> Vec<ExecRecord> {
        self.exec.records()
    }

    /// Define (or redefine) a subnet of the emulated VNet (what
    /// `POST /_emulator/subnets` does); a message says what is wrong.
    pub fn define_subnet(&self, def: SubnetDefinition) -> Result<SubnetSnapshot, String> {
        self.lock().subnets.define(def)
    }

    /// The subnets with the addresses they handed out.
    pub fn subnets(&self) -> Vec<SubnetSnapshot> {
        self.lock().subnets.snapshot()
    }
}

/// The router, for `oneshot` tests without a socket.
pub fn app(state: EmulatorState) -> axum::Router {
    routes::router(state)
}

/// A running emulator.
pub struct Emulator;

/// Handle of a running emulator: its URL, its state and a way to stop it.
pub struct EmulatorHandle {
    /// `http://127.0.0.1:PORT` — the ARM endpoint to point a client at.
    pub url: String,
    pub addr: SocketAddr,
    pub state: EmulatorState,
    server: crate::served::Served,
    /// The exec WebSocket listener (loopback, next to `addr`).
    exec: exec::ExecListener,
}

impl Emulator {
    /// Start on an ephemeral loopback port.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Start on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        config: EmulatorConfig,
    ) -> Result<EmulatorHandle, EmulatorError> {
        let state = EmulatorState::new(config)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let exec_at = SocketAddr::new(addr.ip(), 0);
        let exec_listener = tokio::net::TcpListener::bind(exec_at)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: exec_at,
                source,
            })?;
        let exec = exec::spawn(exec_listener, state.exec.clone()).map_err(|source| {
            EmulatorError::Bind {
                addr: exec_at,
                source,
            }
        })?;
        let server = crate::served::Served::spawn(listener, addr, app(state.clone()));
        tracing::info!(%addr, exec = %exec.addr, "ACI emulator listening");
        Ok(EmulatorHandle {
            url: server.url.clone(),
            addr,
            state,
            server,
            exec,
        })
    }
}

impl EmulatorHandle {
    /// Stop accepting connections and wait for in-flight requests (hung
    /// fault requests are cut off after 5 s).
    pub async fn shutdown(self) {
        drop(self.exec);
        self.server.shutdown().await
    }

    /// Where the exec WebSocket listens.
    pub fn exec_addr(&self) -> SocketAddr {
        self.exec.addr
    }

    /// Serve until `stop` completes (or the server fails), then shut down
    /// gracefully. For the standalone subcommand.
    pub async fn run_until<F: std::future::Future<Output = ()>>(
        self,
        stop: F,
    ) -> std::io::Result<()> {
        self.server.run_until(stop).await
    }
}

#[cfg(test)]
mod tests;
