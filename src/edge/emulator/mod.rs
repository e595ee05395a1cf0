//! An IoT Hub service endpoint with simulated IoT Edge devices, for local
//! runs and tests. It speaks the hub's REST paths and JSON (api-version
//! `2021-04-12`), so [`crate::edge::hub::HubClient`] is tested against it
//! unchanged — only the transport URL differs; tokens are signed for
//! `<hub-name>.azure-devices.net` exactly as for a real hub.
//!
//! Rules it enforces (each has a test of its own):
//! - **Auth**: `Authorization: SharedAccessSignature …` with a known policy
//!   (`skn`), `sr` = the hub host name (or a path below it covering the
//!   request), `se` in the future and a valid HMAC-SHA256 signature; else 401
//!   `IotHubUnauthorizedAccess`. `api-version` is required.
//! - **Configuration ids**: 1–128 characters, lowercase letters, digits and
//!   `-:+%_#*?!(),=@;$'`; else 400 `ArgumentInvalid`.
//! - **Create / update**: PUT without `If-Match` creates (409
//!   `ConfigurationAlreadyExists` if the id is taken; 403
//!   `IotHubQuotaExceeded` beyond [`EmulatorConfig::max_configurations`]);
//!   PUT with `If-Match` updates labels, targetCondition, priority and metric
//!   queries only when it is `*` or the *quoted* current etag (else 412
//!   `PreconditionFailed`; 404 if missing); a PUT that changes `content` is
//!   refused with 400 (content is immutable). Bodies are validated: schema
//!   version `1.0`, exactly one kind of content, module content keys
//!   `properties.desired[.<path>]`, non-negative priority, parseable target
//!   condition and metric queries.
//! - **Delete** needs `If-Match` (`*` or the quoted etag; 412 otherwise); 404
//!   for a missing configuration.
//! - **Queries** (`POST /devices/query`, `x-ms-max-item-count`,
//!   `x-ms-continuation`) in the subset described in [`query`];
//!   `POST /configurations/testQueries` reports parse errors per query.
//! - **Devices** (created through the control API) apply the
//!   highest-priority matching *standard* deployment (one with
//!   `$edgeAgent.properties.desired`) and every matching *layered* one
//!   (`properties.desired.<path>` patches, merged in priority order) — IoT
//!   Edge devices only. Each change bumps the desired `$version`; after
//!   [`EmulatorConfig::report_delay`] an online device reports it in its
//!   `$edgeAgent` twin: `lastDesiredVersion`, `lastDesiredStatus.code` (200;
//!   500 when an image of [`Faults::failing_images`] is in the deployment,
//!   its module in `backoff` with a growing `restartCount`; 417 without a
//!   base deployment; 406 while the device is offline) and per-module
//!   `runtimeStatus` / `exitCode` / `restartCount` / image.
//!   `deviceContent` / `moduleContent` configurations are stored, validated
//!   and counted as targeted, but not applied to device twins.
//! - **Metrics**: `systemMetrics` (targeted, applied, reportedSuccessful,
//!   reportedFailed) are the hub's own queries evaluated by the query engine
//!   on every read (the real hub refreshes them every few minutes), and so
//!   are user `metrics.queries`.
//! - **Throttling**: token buckets per minute for configuration operations
//!   and queries and per second for twin reads → 429 `ThrottlingException`
//!   with `Retry-After`; [`Faults::throttle_next`] answers the next N
//!   requests with 429 regardless.
//! - **Other faults** ([`Faults`]): an outage (503 for everything), 500s
//!   before anything is applied, writes applied whose answer is lost (500),
//!   and extra latency after the operation (for client timeouts).
//!
//! Sources and assumptions (check against a live hub when one is available):
//! the id rule follows the automatic device management docs; 401
//! `IotHubUnauthorizedAccess`, 403 `IotHubQuotaExceeded`, 412
//! `PreconditionFailed` and 429 `ThrottlingException` follow the REST
//! common error codes; the names `ConfigurationNotFound` /
//! `ConfigurationAlreadyExists`, the 400 for a content change and the 412 for
//! a DELETE without `If-Match` (the SDKs always send one) are not confirmed.
//! Error bodies use the hub's `{"Message":"ErrorCode:<code>;<text>",
//! "ExceptionMessage":"Tracking ID:…"}` form.
//!
//! Control API (no auth; never on a real hub): `GET|POST /_emulator/devices`,
//! `PATCH /_emulator/devices/{id}` (`online`, `tags`), `GET|POST
//! /_emulator/faults`, `GET /_emulator/counters`.

pub mod cli;
pub mod query;
mod routes;
mod state;

pub use state::{Counters, DeviceSnapshot, ID_MAX_LEN, ID_SPECIALS, validate_configuration_id};

use crate::edge::sas::{ConnectionString, SharedAccessKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The policy name of the generated key (as on a real hub).
pub const OWNER_POLICY: &str = "iothubowner";

/// Emulator settings. `Default` is a one-unit S1 hub with a random key.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// `<hub_name>.azure-devices.net` is the host tokens must be signed for.
    pub hub_name: String,
    /// Shared access policies: name → key.
    pub policies: Vec<(String, SharedAccessKey)>,
    /// Configurations per hub (the hub's default quota is 100).
    pub max_configurations: usize,
    /// Configuration operations (CRUD, testQueries) per minute.
    pub configuration_ops_per_minute: f64,
    /// Device query pages per minute.
    pub queries_per_minute: f64,
    pub twin_reads_per_second: f64,
    /// Requests a bucket allows at once.
    pub burst: u32,
    /// How long a device takes to report a new desired version.
    pub report_delay: Duration,
    /// A module in backoff restarts this often (`restartCount` grows).
    pub backoff_restart_every: Duration,
    /// Default and largest query page.
    pub max_page_size: usize,
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            hub_name: "spillway-emulator".into(),
            policies: vec![(OWNER_POLICY.into(), random_key())],
            max_configurations: 100,
            configuration_ops_per_minute: 20.0,
            queries_per_minute: 20.0,
            twin_reads_per_second: 10.0,
            burst: 20,
            report_delay: Duration::from_secs(5),
            backoff_restart_every: Duration::from_secs(10),
            max_page_size: 100,
            faults: Faults::default(),
        }
    }
}

impl EmulatorConfig {
    /// `<hub_name>.azure-devices.net`.
    pub fn host_name(&self) -> String {
        format!("{}.azure-devices.net", self.hub_name)
    }

    /// The service connection string of the first policy.
    pub fn connection_string(&self) -> Option<ConnectionString> {
        self.policies.first().map(|(name, key)| ConnectionString {
            host_name: self.host_name(),
            key_name: name.clone(),
            key: key.clone(),
        })
    }

    fn validate(&self) -> Result<(), EmulatorError> {
        let name_ok = (3..=50).contains(&self.hub_name.len())
            && self
                .hub_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !name_ok {
            return Err(EmulatorError::Config(format!(
                "hub name {:?}: 3-50 letters, digits or '-'",
                self.hub_name
            )));
        }
        if self.policies.is_empty() {
            return Err(EmulatorError::Config(
                "at least one policy is needed".into(),
            ));
        }
        for (what, rate) in [
            (
                "configuration_ops_per_minute",
                self.configuration_ops_per_minute,
            ),
            ("queries_per_minute", self.queries_per_minute),
            ("twin_reads_per_second", self.twin_reads_per_second),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(EmulatorError::Config(format!("{what} must be positive")));
            }
        }
        if self.max_page_size == 0 {
            return Err(EmulatorError::Config(
                "max_page_size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// 32 random bytes from the operating system.
pub fn random_key() -> SharedAccessKey {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        // No OS randomness: fall back to a time-seeded generator. An
        // emulator key guards nothing real.
        use rand::{Rng as _, SeedableRng as _};
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        rand::rngs::SmallRng::seed_from_u64(seed ^ u64::from(std::process::id())).fill(&mut bytes);
    }
    SharedAccessKey::from_bytes(bytes.to_vec())
}

/// Injected faults (config or `POST /_emulator/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    /// Answer the next N hub requests with 429, whatever their bucket says.
    pub throttle_next: u32,
    /// `Retry-After` of injected 429s, in seconds.
    pub retry_after_seconds: u64,
    /// Images whose pull fails on every device: the module is in `backoff`
    /// and `$edgeAgent` reports 500.
    pub failing_images: BTreeSet<String>,
    /// Every hub request is answered 503 `ServiceUnavailable` while set.
    pub outage: bool,
    /// Answer the next N hub requests 500 without applying them.
    pub error_next: u32,
    /// Apply the next N writes (PUT, DELETE) but answer 500, as when an
    /// answer is lost: a client that retries must not duplicate anything.
    pub lose_answer_next: u32,
    /// Extra latency on every hub answer, after the operation is applied.
    pub latency_ms: u64,
    /// Before each of the next N conditional PUTs (`If-Match` with an
    /// etag), another writer updates the configuration (new etag, nothing
    /// else): the PUT meets 412 as on a hub with two writers.
    pub concurrent_update_next: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            throttle_next: 0,
            retry_after_seconds: 1,
            failing_images: BTreeSet::new(),
            outage: false,
            error_next: 0,
            lose_answer_next: 0,
            latency_ms: 0,
            concurrent_update_next: 0,
        }
    }
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
    host_name: Arc<str>,
    policies: Arc<[(String, SharedAccessKey)]>,
}

/// A device to create through the control API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDevice {
    pub device_id: String,
    #[serde(default)]
    pub tags: serde_json::Value,
    /// Device twin reported properties.
    #[serde(default)]
    pub reported: serde_json::Value,
    /// IoT Edge device (default true).
    #[serde(default = "yes")]
    pub iot_edge: bool,
}

fn yes() -> bool {
    true
}

impl NewDevice {
    /// An online IoT Edge device with these tags.
    pub fn edge(id: &str, tags: serde_json::Value) -> Self {
        Self {
            device_id: id.into(),
            tags,
            reported: serde_json::json!({}),
            iot_edge: true,
        }
    }
}

impl EmulatorState {
    pub fn new(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        config.validate()?;
        Ok(Self {
            host_name: config.host_name().into(),
            policies: config.policies.clone().into(),
            world: Arc::new(Mutex::new(state::World::new(config))),
        })
    }

    fn lock(&self) -> MutexGuard<'_, state::World> {
        // Every mutation is one step under the lock: the data stays consistent.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The service connection string of the first policy.
    pub fn connection_string(&self) -> Option<ConnectionString> {
        self.policies.first().map(|(name, key)| ConnectionString {
            host_name: self.host_name.to_string(),
            key_name: name.clone(),
            key: key.clone(),
        })
    }

    /// Create a device (409 text if it exists).
    pub fn add_device(&self, device: NewDevice) -> Result<(), String> {
        self.lock()
            .add_device(
                &device.device_id,
                device.tags,
                device.reported,
                device.iot_edge,
                tokio::time::Instant::now(),
            )
            .map_err(|r| r.message)
    }

    /// Take a device offline or bring it back.
    pub fn set_online(&self, device_id: &str, online: bool) -> Result<(), String> {
        self.lock()
            .update_device(device_id, Some(online), None, tokio::time::Instant::now())
            .map_err(|r| r.message)
    }

    pub fn devices(&self) -> Vec<DeviceSnapshot> {
        self.lock().devices(tokio::time::Instant::now())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }
}

/// The router, for `oneshot` tests without a socket.
pub fn app(state: EmulatorState) -> axum::Router {
    routes::router(state)
}

/// A running emulator.
pub struct Emulator;

/// Handle of a running emulator: its URL, state and connection string.
pub struct EmulatorHandle {
    /// `http://127.0.0.1:PORT`: the endpoint to point a client at.
    pub url: String,
    pub addr: SocketAddr,
    pub state: EmulatorState,
    server: crate::served::Served,
}

impl Emulator {
    /// Start on an ephemeral loopback port.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

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
        let server = crate::served::Served::spawn(listener, addr, app(state.clone()));
        tracing::info!(%addr, "IoT Hub emulator listening");
        Ok(EmulatorHandle {
            url: server.url.clone(),
            addr,
            state,
            server,
        })
    }
}

impl EmulatorHandle {
    /// The service connection string clients use.
    pub fn connection_string(&self) -> Option<ConnectionString> {
        self.state.connection_string()
    }

    /// Stop accepting connections and wait (at most 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await
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
