//! The kube-scheduler HTTP extender: `/filter`, `/prioritize` (and `/preempt`,
//! `/bind`), plus `/healthz`, `/readyz` and `/metrics`.
//!
//! It owns the wire format and the filter rule of DESIGN.md: VMs are always
//! filled first; the virtual node is kept only when the engine says `burst`,
//! and every refusal of it goes to `FailedAndUnresolvableNodes` with a reason
//! for people. It decides nothing itself (the engine does) and never waits on
//! the API server: it reads the `ClusterView`. It must never panic on input:
//! malformed bodies get 400 with a JSON error, oversized ones 413.

pub mod cli;
pub mod ledger;
mod logic;
pub mod reservations;
pub mod wire;

pub use cli::{ExtenderCommand, run};
pub use logic::{FilterDecision, decide_for_virtual, pod_os, runs_os};

use crate::cluster::ClusterView;
use crate::decision::Engine;
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::policy::reload::PolicyStore;
use crate::units::Timestamp;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;

/// Default request body limit. The scheduler's bodies are small with
/// `nodeCacheCapable: true` (names only); full node lists of a few hundred
/// nodes fit too. Kubernetes caps annotations at 256 KiB, so a pod alone never
/// comes near it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Extender calls served at once by one replica; more are refused at once
/// with 503 rather than queued past the scheduler's 1 s `httpTimeout`.
/// The scheduler makes one filter and one prioritize call per pod, one pod
/// at a time per profile, so this only bites when something else floods it.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Each extender call is answered (or refused with 503) within this, below
/// kube-scheduler's `httpTimeout` (1 s in deploy/scheduler/).
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_millis(900);

/// Load limits of the extender's `/filter`, `/prioritize`, `/preempt`, `/bind`.
#[derive(Debug)]
pub struct RequestLimits {
    permits: tokio::sync::Semaphore,
    max: usize,
    pub deadline: std::time::Duration,
}

impl RequestLimits {
    pub fn new(max_concurrent: usize, deadline: std::time::Duration) -> Self {
        let max = max_concurrent.max(1);
        RequestLimits {
            permits: tokio::sync::Semaphore::new(max),
            max,
            deadline,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits::new(DEFAULT_MAX_CONCURRENT, DEFAULT_DEADLINE)
    }
}

/// Errors of the extender; each maps to an HTTP status and a metric outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExtenderError {
    #[error("request body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    Body(String),
    #[error("malformed {verb} request: {message}")]
    Malformed { verb: &'static str, message: String },
    #[error("invalid {verb} request: {message}")]
    Invalid { verb: &'static str, message: String },
    #[error("{limit} requests already in progress; try again")]
    Overloaded { limit: usize },
    #[error("no answer within the {millis} ms request deadline")]
    Deadline { millis: u128 },
}

impl ExtenderError {
    pub fn status(&self) -> StatusCode {
        match self {
            ExtenderError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ExtenderError::Overloaded { .. } | ExtenderError::Deadline { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
    /// The `outcome` label of `spillway_extender_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ExtenderError::TooLarge { .. } => "too_large",
            ExtenderError::Overloaded { .. } => "overloaded",
            ExtenderError::Deadline { .. } => "deadline",
            _ => "bad_request",
        }
    }
}

impl IntoResponse for ExtenderError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// Where policies come from: a fixed set (tests, `explain`) or the hot-reloaded store.
#[derive(Debug, Clone)]
pub enum PolicySource {
    Fixed(Arc<PolicySet>),
    Store(Arc<PolicyStore>),
}

impl PolicySource {
    pub fn current(&self) -> Arc<PolicySet> {
        match self {
            PolicySource::Fixed(set) => set.clone(),
            PolicySource::Store(store) => store.current(),
        }
    }
}

/// The clock the extender reads `now` from (injected so tests are exact).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Everything the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub policies: PolicySource,
    pub view: Arc<ClusterView>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub clock: Clock,
    /// Burst admissions not yet visible in the view (counted against
    /// budgets) when there are no shared reservations.
    pub admissions: Arc<ledger::Admissions>,
    /// Budget reservations shared by every replica (a ConfigMap); replaces
    /// `admissions` when set.
    pub reservations: Option<Arc<reservations::SharedReservations>>,
    pub limits: Arc<RequestLimits>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("policies", &self.policies)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Wall clock, default engine and body limit.
    pub fn new(policies: PolicySource, view: Arc<ClusterView>, metrics: Arc<Metrics>) -> Self {
        AppState {
            policies,
            view,
            engine: Arc::new(Engine::default()),
            metrics,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            clock: Arc::new(Timestamp::now_wall),
            admissions: Arc::new(ledger::Admissions::default()),
            reservations: None,
            limits: Arc::new(RequestLimits::default()),
        }
    }
    /// At most `max_concurrent` calls at once, each within `deadline`.
    pub fn with_limits(mut self, max_concurrent: usize, deadline: std::time::Duration) -> Self {
        self.limits = Arc::new(RequestLimits::new(max_concurrent, deadline));
        self
    }
    /// Count budgets through reservations shared with the other replicas.
    pub fn with_reservations(mut self, shared: reservations::SharedReservations) -> Self {
        self.reservations = Some(Arc::new(shared));
        self
    }
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    pub fn with_max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = Arc::new(engine);
        self
    }
}

/// The extender's HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/preempt", post(preempt))
        .route("/bind", post(bind))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Read the whole body, refusing more than `limit` bytes (before reading, when
/// Content-Length already says so).
pub async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, ExtenderError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ExtenderError::TooLarge { limit });
    }
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ExtenderError::TooLarge { limit })
        }
        Err(e) => Err(ExtenderError::Body(e.to_string())),
    }
}

/// Decode a JSON body (one value, nothing after it but whitespace).
pub fn decode<T: serde::de::DeserializeOwned>(
    verb: &'static str,
    bytes: &[u8],
) -> Result<T, ExtenderError> {
    serde_json::from_slice(bytes).map_err(|e| ExtenderError::Malformed {
        verb,
        message: e.to_string(),
    })
}

/// Read, decode, answer, and record metrics for one extender call.
async fn handle<T, F>(state: &AppState, verb: &'static str, req: Request, answer: F) -> Response
where
    T: serde::de::DeserializeOwned,
    F: AsyncFnOnce(&AppState, T) -> Result<(Response, &'static str), ExtenderError>,
{
    let started = Instant::now();
    let limits = &state.limits;
    // Shed, never queue: a queued call would answer after the scheduler
    // gave up on it. A call cut off at the deadline may leave a budget
    // reservation behind; it expires as any unbound one does (30 s).
    let result = match limits.permits.try_acquire() {
        Err(_) => Err(ExtenderError::Overloaded { limit: limits.max }),
        Ok(_permit) => {
            let work = async {
                match read_body(req, state.max_body_bytes).await {
                    Ok(bytes) => match decode::<T>(verb, &bytes) {
                        Ok(args) => answer(state, args).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            };
            tokio::time::timeout(limits.deadline, work)
                .await
                .unwrap_or(Err(ExtenderError::Deadline {
                    millis: limits.deadline.as_millis(),
                }))
        }
    };
    let (response, outcome) = match result {
        Ok(answered) => answered,
        Err(e) => {
            tracing::debug!(verb, error = %e, "rejected extender request");
            let outcome = e.outcome();
            (e.into_response(), outcome)
        }
    };
    state
        .metrics
        .extender_requests
        .with_label_values(&[verb, outcome])
        .inc();
    state
        .metrics
        .extender_duration
        .with_label_values(&[verb])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn filter(State(state): State<AppState>, req: Request) -> Response {
    handle(&state, "filter", req, async |s, args| {
        logic::filter(s, args).await.map(|r| {
            // A filter result with `Error` set is an answer, but not a decision.
            let outcome = if r.error.is_empty() { "ok" } else { "error" };
            (axum::Json(r).into_response(), outcome)
        })
    })
    .await
}

async fn prioritize(State(state): State<AppState>, req: Request) -> Response {
    handle(&state, "prioritize", req, async |s, args| {
        logic::prioritize(s, args).map(|r| (axum::Json(r).into_response(), "ok"))
    })
    .await
}

async fn preempt(State(state): State<AppState>, req: Request) -> Response {
    handle(&state, "preempt", req, async |_, args| {
        logic::preempt(args).map(|r| (axum::Json(r).into_response(), "ok"))
    })
    .await
}

async fn bind(State(state): State<AppState>, req: Request) -> Response {
    handle(&state, "bind", req, async |_, args| {
        logic::bind(args).map(|r| (axum::Json(r).into_response(), "ok"))
    })
    .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.view.is_synced() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = serde_json::json!({ "error": "cluster view not synced yet" });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    // `spillway_ready` mirrors /readyz at every scrape, whichever role serves
    // this router (the `extender` role has no loop of its own to set it).
    state.metrics.ready.set(i64::from(state.view.is_synced()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Serve `app(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests;
