//! [`HubClient`]: spillway's own client for the IoT Hub service REST API
//! (api-version `2021-04-12`). No maintained crate covers the service side.
//!
//! Owns: requests and their SAS `Authorization` header (renewed before
//! expiry), pacing below the hub's throttles, waiting out 429s, bounded
//! timeouts and retries of transient failures, and the etag protocol of
//! configurations (create without `If-Match`; update with the quoted etag,
//! re-read and retry on 412; delete with `If-Match: *`, 404 counting as done).
//!
//! Must not: decide what to deploy (the edge backend does), or hide a 409,
//! 412 or 403 the caller has to act on.
//!
//! Pacing: three token buckets, for configuration operations (CRUD and
//! testQueries), device queries (each page), and twin reads. A 429 pauses
//! its whole bucket until `Retry-After` and empties it, so the bucket
//! refills from zero instead of bursting into the next 429. Waiting here
//! is the pacing itself (tokio timers).

use super::model::*;
use super::sas::{ConnectionString, TokenCache};
use crate::pacing::TokenBucket;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Characters escaped in one path segment (ids may contain `#`, `?`, `%`…).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Client settings. `Default` paces below one S1 unit's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct HubClientConfig {
    /// Base URL requests go to; `None` means `https://<HostName>`. Tokens are
    /// signed for the connection string's host name either way.
    pub endpoint: Option<String>,
    /// Timeout of one HTTP request (connect + answer).
    pub request_timeout: Duration,
    /// Lifetime of SAS tokens (renewed after 80% of it).
    pub token_ttl: Duration,
    /// Configuration operations (create/get/list/update/delete/testQueries)
    /// per minute; the hub allows about 20 per unit.
    pub configuration_ops_per_minute: f64,
    /// Device query pages per minute; the hub allows about 20 per unit.
    pub queries_per_minute: f64,
    /// Twin reads per second.
    pub twin_reads_per_second: f64,
    /// Requests a bucket may send at once after being idle.
    pub burst: u32,
    /// Attempts per request, the first included (429s, 5xx, timeouts).
    pub max_attempts: u32,
    /// First back-off after a transient failure; doubled up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest a call may spend waiting for tokens, pauses and retries.
    pub budget: Duration,
    /// Read-modify-write attempts of an update that keeps meeting 412.
    pub update_attempts: u32,
    /// `x-ms-max-item-count` of device query pages.
    pub query_page_size: u32,
}

impl Default for HubClientConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            request_timeout: Duration::from_secs(30),
            token_ttl: Duration::from_secs(3600),
            configuration_ops_per_minute: 18.0,
            queries_per_minute: 18.0,
            twin_reads_per_second: 8.0,
            burst: 5,
            max_attempts: 6,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            budget: Duration::from_secs(180),
            update_attempts: 5,
            query_page_size: 100,
        }
    }
}

/// What the hub said when it refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFault {
    /// The operation, e.g. `create configuration web-1`.
    pub op: String,
    pub status: u16,
    /// The hub's error code (`PreconditionFailed`, `IotHubUnauthorizedAccess`, …).
    pub code: String,
    pub message: String,
}

impl fmt::Display for HubFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: IoT Hub answered {}", self.op, self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Every way a hub call fails. [`HubError::reason`] names each for metric
/// labels and status messages.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HubError {
    /// 401: bad, expired or foreign SAS token, or an unknown policy.
    #[error("{0}")]
    Unauthorized(HubFault),
    /// 403 `IotHubQuotaExceeded`: e.g. the hub's configuration quota is used up.
    #[error("{0}")]
    QuotaExceeded(HubFault),
    #[error("{0}")]
    NotFound(HubFault),
    /// 409: a configuration with this id exists (content is immutable: use a new id).
    #[error("{0}")]
    AlreadyExists(HubFault),
    /// 412: the etag in `If-Match` is stale or missing.
    #[error("{0}")]
    PreconditionFailed(HubFault),
    /// Any other 4xx, e.g. 400 for an invalid id, body or content change.
    #[error("{0}")]
    Rejected(HubFault),
    /// 5xx after the retries.
    #[error("{0}")]
    Server(HubFault),
    /// 429 after the retries, or pacing would exceed the call's budget.
    #[error("{op}: throttled by IoT Hub; retry after {retry_after:?}")]
    Throttled { op: String, retry_after: Duration },
    #[error("{op}: no answer within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("{op}: {message}")]
    Transport { op: String, message: String },
    #[error("{op}: unreadable answer: {message}")]
    Decode { op: String, message: String },
    /// An update kept meeting 412 (someone else keeps changing it).
    #[error("update configuration {id}: still changed concurrently after {attempts} attempts")]
    UpdateConflict { id: String, attempts: u32 },
    #[error("IoT Hub client configuration: {0}")]
    Config(String),
}

impl HubError {
    /// One name per reason (metric label `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::PreconditionFailed(_) => "precondition_failed",
            Self::Rejected(_) => "rejected",
            Self::Server(_) => "server_error",
            Self::Throttled { .. } => "throttled",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::UpdateConflict { .. } => "update_conflict",
            Self::Config(_) => "config",
        }
    }

    /// The hub's answer, for the variants that carry one.
    pub fn fault(&self) -> Option<&HubFault> {
        match self {
            Self::Unauthorized(f)
            | Self::QuotaExceeded(f)
            | Self::NotFound(f)
            | Self::AlreadyExists(f)
            | Self::PreconditionFailed(f)
            | Self::Rejected(f)
            | Self::Server(f) => Some(f),
            _ => None,
        }
    }

    /// Worth another try later (the hub or the network, not the request).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Server(_)
                | Self::Throttled { .. }
                | Self::Timeout { .. }
                | Self::Transport { .. }
        )
    }

    fn from_answer(op: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let (code, message) = match serde_json::from_slice::<HubErrorBody>(body) {
            Ok(b) if !b.message.is_empty() => b.code_and_text(),
            _ => (
                String::new(),
                String::from_utf8_lossy(body).chars().take(300).collect(),
            ),
        };
        let fault = HubFault {
            op: op.to_string(),
            status: status.as_u16(),
            code,
            message,
        };
        match status.as_u16() {
            401 => Self::Unauthorized(fault),
            403 => Self::QuotaExceeded(fault),
            404 => Self::NotFound(fault),
            409 => Self::AlreadyExists(fault),
            412 => Self::PreconditionFailed(fault),
            429 => Self::Throttled {
                op: op.to_string(),
                retry_after: retry_after(headers),
            },
            500..=599 => Self::Server(fault),
            _ => Self::Rejected(fault),
        }
    }
}

/// `Retry-After` in seconds (default 1 s, at most 5 min).
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
        .unwrap_or(Duration::from_secs(1))
}

/// Mutable fields of a configuration; `None` leaves a field as it is.
/// `content` is not here: it is immutable on the hub.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigurationPatch {
    pub labels: Option<BTreeMap<String, String>>,
    pub target_condition: Option<String>,
    pub priority: Option<i32>,
    /// User metric queries (results are the hub's).
    pub metric_queries: Option<BTreeMap<String, String>>,
}

impl ConfigurationPatch {
    fn apply(&self, c: &mut Configuration) {
        if let Some(l) = &self.labels {
            c.labels = l.clone();
        }
        if let Some(t) = &self.target_condition {
            c.target_condition = t.clone();
        }
        if let Some(p) = self.priority {
            c.priority = p;
        }
        if let Some(q) = &self.metric_queries {
            c.metrics.queries = q.clone();
        }
    }
}

/// One page of a device query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub items: Vec<serde_json::Value>,
    /// Send back to get the next page; `None` on the last page.
    pub continuation: Option<String>,
}

type Bucket = TokenBucket;

/// Which bucket a request spends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Configurations,
    Queries,
    Twins,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Self::Configurations => "configurations",
            Self::Queries => "queries",
            Self::Twins => "twins",
        }
    }
}

struct Buckets {
    configurations: Bucket,
    queries: Bucket,
    twins: Bucket,
    /// Jitter state (xorshift), so retries of many callers spread out.
    jitter: u64,
}

impl Buckets {
    fn lane(&mut self, lane: Lane) -> &mut Bucket {
        match lane {
            Lane::Configurations => &mut self.configurations,
            Lane::Queries => &mut self.queries,
            Lane::Twins => &mut self.twins,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A successful answer.
struct Answer {
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// What the client saw for one HTTP attempt, for metrics
/// (`spillway_edge_hub_requests_total{lane,code}`) kept outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// `configurations`, `queries` or `twins`.
    pub lane: &'static str,
    /// The HTTP status; `None` when no answer came (timeout, connection).
    pub status: Option<u16>,
}

/// Called after every HTTP attempt, retries included.
pub type AttemptObserver = std::sync::Arc<dyn Fn(Attempt) + Send + Sync>;

/// The IoT Hub service client. Cheap to share behind an `Arc`.
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    host_name: String,
    tokens: Mutex<TokenCache>,
    buckets: Mutex<Buckets>,
    config: HubClientConfig,
    observer: Option<AttemptObserver>,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .field("host_name", &self.host_name)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HubClient {
    /// A client for the hub of `connection`; requests go to
    /// `config.endpoint` (or `https://<HostName>`).
    pub fn new(connection: ConnectionString, config: HubClientConfig) -> Result<Self, HubError> {
        let base = match &config.endpoint {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}", connection.host_name),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(HubError::Config(format!(
                "endpoint {base:?} is not an http(s) URL"
            )));
        }
        if config.max_attempts == 0 || config.update_attempts == 0 {
            return Err(HubError::Config(
                "max_attempts and update_attempts must be at least 1".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| HubError::Config(format!("HTTP client: {e}")))?;
        let now = Instant::now();
        let seed = unix_now() | 1;
        Ok(Self {
            http,
            base,
            host_name: connection.host_name.clone(),
            tokens: Mutex::new(TokenCache::new(connection, config.token_ttl)),
            buckets: Mutex::new(Buckets {
                configurations: Bucket::new(
                    config.configuration_ops_per_minute / 60.0,
                    config.burst,
                    now,
                ),
                queries: Bucket::new(config.queries_per_minute / 60.0, config.burst, now),
                twins: Bucket::new(config.twin_reads_per_second, config.burst, now),
                jitter: seed,
            }),
            config,
            observer: None,
        })
    }

    /// Report every HTTP attempt to `observer` (for request metrics).
    pub fn with_observer(mut self, observer: AttemptObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, lane: Lane, status: Option<u16>) {
        if let Some(o) = &self.observer {
            o(Attempt {
                lane: lane.name(),
                status,
            });
        }
    }

    /// The hub's host name (what tokens are signed for).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The base URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token(&self) -> String {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .token(unix_now())
    }

    fn url(&self, path: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("{}{path}?api-version={API_VERSION}{sep}{query}", self.base)
    }

    async fn acquire(&self, op: &str, lane: Lane, deadline: Instant) -> Result<(), HubError> {
        loop {
            let wait = self.buckets().lane(lane).take(Instant::now());
            match wait {
                None => return Ok(()),
                Some(w) if Instant::now() + w > deadline => {
                    return Err(HubError::Throttled {
                        op: op.to_string(),
                        retry_after: w,
                    });
                }
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.max_backoff);
        let jitter = self.buckets().next_jitter();
        exp / 2 + exp.mul_f64(jitter / 2.0)
    }

    /// Send one request with pacing, retries of 429/5xx/timeouts, and the
    /// call's budget. Non-2xx answers other than those become errors.
    async fn send(
        &self,
        op: &str,
        lane: Lane,
        method: Method,
        url: &str,
        extra: &[(&'static str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, HubError> {
        let start = Instant::now();
        let deadline = start + self.config.budget;
        let mut attempt = 0u32;
        loop {
            self.acquire(op, lane, deadline).await?;
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url)
                .header(reqwest::header::AUTHORIZATION, self.token())
                .header(reqwest::header::ACCEPT, "application/json");
            for (name, value) in extra {
                req = req.header(*name, value.as_str());
            }
            if let Some(b) = &body {
                req = req
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/json; charset=utf-8",
                    )
                    .body(b.clone());
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    self.observe(lane, Some(status.as_u16()));
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) if status.is_success() => return Ok(Answer { headers, body }),
                        Ok(body) => HubError::from_answer(op, status, &headers, &body),
                        Err(e) => self.transport_error(op, e),
                    }
                }
                Err(e) => {
                    self.observe(lane, None);
                    self.transport_error(op, e)
                }
            };
            let wait = match &outcome {
                HubError::Throttled { retry_after, .. } => {
                    let now = Instant::now();
                    self.buckets().lane(lane).throttled(now + *retry_after, now);
                    // `acquire` waits the pause out.
                    *retry_after
                }
                e if e.is_transient() => self.backoff(attempt - 1),
                _ => return Err(outcome),
            };
            if attempt >= self.config.max_attempts || Instant::now() + wait > deadline {
                return Err(outcome);
            }
            tracing::debug!(error = %outcome, attempt, ?wait, "retrying IoT Hub call");
            if !matches!(outcome, HubError::Throttled { .. }) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    fn transport_error(&self, op: &str, e: reqwest::Error) -> HubError {
        if e.is_timeout() {
            HubError::Timeout {
                op: op.to_string(),
                timeout: self.config.request_timeout,
            }
        } else {
            // reqwest errors name the URL, never the Authorization header.
            HubError::Transport {
                op: op.to_string(),
                message: e.to_string(),
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, HubError> {
        serde_json::from_slice(body).map_err(|e| HubError::Decode {
            op: op.to_string(),
            message: e.to_string(),
        })
    }

    fn encode<T: serde::Serialize>(op: &str, value: &T) -> Result<Vec<u8>, HubError> {
        serde_json::to_vec(value).map_err(|e| HubError::Decode {
            op: op.to_string(),
            message: e.to_string(),
        })
    }

    fn configuration_url(&self, id: &str) -> String {
        let id = utf8_percent_encode(id, SEGMENT);
        self.url(&format!("/configurations/{id}"), "")
    }

    /// Create a configuration (PUT without `If-Match`). A 409 means the id is
    /// taken; content is immutable, so a changed deployment needs a new id.
    /// If a retried PUT meets 409 because an earlier attempt was applied and
    /// its answer lost, the stored configuration is returned when it has the
    /// same content, target condition and priority.
    pub async fn create_configuration(
        &self,
        configuration: &Configuration,
    ) -> Result<Configuration, HubError> {
        let op = format!("create configuration {}", configuration.id);
        let mut body = configuration.clone();
        body.etag = None;
        body.system_metrics = ConfigurationMetrics::default();
        body.metrics.results.clear();
        if body.schema_version.is_empty() {
            body.schema_version = CONFIGURATION_SCHEMA_VERSION.to_string();
        }
        let bytes = Self::encode(&op, &body)?;
        let url = self.configuration_url(&configuration.id);
        match self
            .send(
                &op,
                Lane::Configurations,
                Method::PUT,
                &url,
                &[],
                Some(bytes),
            )
            .await
        {
            Ok(answer) => Self::decode(&op, &answer.body),
            Err(HubError::AlreadyExists(fault)) => {
                let existing = self.get_configuration(&configuration.id).await?;
                match existing {
                    Some(c)
                        if c.content == body.content
                            && c.target_condition == body.target_condition
                            && c.priority == body.priority =>
                    {
                        tracing::debug!(id = %c.id, "create met 409 for identical content; adopting it");
                        Ok(c)
                    }
                    _ => Err(HubError::AlreadyExists(fault)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Get a configuration; `None` if it does not exist.
    pub async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError> {
        let op = format!("get configuration {id}");
        let url = self.configuration_url(id);
        match self
            .send(&op, Lane::Configurations, Method::GET, &url, &[], None)
            .await
        {
            Ok(a) => Self::decode(&op, &a.body).map(Some),
            Err(HubError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// List configurations (`top` caps the count; the hub's default without it).
    pub async fn list_configurations(
        &self,
        top: Option<u32>,
    ) -> Result<Vec<Configuration>, HubError> {
        let op = "list configurations";
        let query = top.map(|n| format!("top={n}")).unwrap_or_default();
        let url = self.url("/configurations", &query);
        let a = self
            .send(op, Lane::Configurations, Method::GET, &url, &[], None)
            .await?;
        Self::decode(op, &a.body)
    }

    /// Delete a configuration (`If-Match: *`); a missing one counts as deleted.
    pub async fn delete_configuration(&self, id: &str) -> Result<(), HubError> {
        let op = format!("delete configuration {id}");
        let url = self.configuration_url(id);
        match self
            .send(
                &op,
                Lane::Configurations,
                Method::DELETE,
                &url,
                &[("if-match", "*".to_string())],
                None,
            )
            .await
        {
            Ok(_) | Err(HubError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Change mutable fields: read, apply `patch`, PUT with the quoted etag
    /// in `If-Match`; on 412 read again and retry (up to `update_attempts`).
    /// Returns the configuration as stored. `NotFound` if it does not exist.
    pub async fn update_configuration(
        &self,
        id: &str,
        patch: &ConfigurationPatch,
    ) -> Result<Configuration, HubError> {
        let op = format!("update configuration {id}");
        let url = self.configuration_url(id);
        for _ in 0..self.config.update_attempts {
            let Some(mut current) = self.get_configuration(id).await? else {
                return Err(HubError::NotFound(HubFault {
                    op: op.clone(),
                    status: 404,
                    code: "ConfigurationNotFound".into(),
                    message: format!("configuration {id} does not exist"),
                }));
            };
            let Some(etag) = current.etag.clone() else {
                return Err(HubError::Decode {
                    op,
                    message: "the hub returned a configuration without an etag".into(),
                });
            };
            patch.apply(&mut current);
            current.system_metrics = ConfigurationMetrics::default();
            current.metrics.results.clear();
            let bytes = Self::encode(&op, &current)?;
            match self
                .send(
                    &op,
                    Lane::Configurations,
                    Method::PUT,
                    &url,
                    &[("if-match", format!("\"{etag}\""))],
                    Some(bytes),
                )
                .await
            {
                Ok(a) => return Self::decode(&op, &a.body),
                Err(HubError::PreconditionFailed(f)) => {
                    tracing::debug!(%id, fault = %f, "stale etag; reading again");
                }
                Err(e) => return Err(e),
            }
        }
        Err(HubError::UpdateConflict {
            id: id.to_string(),
            attempts: self.config.update_attempts,
        })
    }

    /// Validate a target condition and custom metric queries without
    /// creating anything (`POST /configurations/testQueries`).
    pub async fn test_queries(
        &self,
        target_condition: &str,
        custom_metric_queries: &BTreeMap<String, String>,
    ) -> Result<QueriesTestResult, HubError> {
        let op = "test configuration queries";
        let body = Self::encode(
            op,
            &QueriesTestInput {
                target_condition: target_condition.to_string(),
                custom_metric_queries: custom_metric_queries.clone(),
            },
        )?;
        let url = self.url("/configurations/testQueries", "");
        let a = self
            .send(
                op,
                Lane::Configurations,
                Method::POST,
                &url,
                &[],
                Some(body),
            )
            .await?;
        Self::decode(op, &a.body)
    }

    /// One page of `POST /devices/query`.
    pub async fn query_devices_page(
        &self,
        query: &str,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        let op = "query devices";
        let body = Self::encode(
            op,
            &QuerySpecification {
                query: query.to_string(),
            },
        )?;
        let mut headers = vec![(
            "x-ms-max-item-count",
            self.config.query_page_size.max(1).to_string(),
        )];
        if let Some(c) = continuation {
            headers.push(("x-ms-continuation", c.to_string()));
        }
        let url = self.url("/devices/query", "");
        let a = self
            .send(op, Lane::Queries, Method::POST, &url, &headers, Some(body))
            .await?;
        let items = Self::decode(op, &a.body)?;
        let continuation = a
            .headers
            .get("x-ms-continuation")
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(QueryPage {
            items,
            continuation,
        })
    }

    /// Every result of a device query, following `x-ms-continuation`.
    pub async fn query_devices(&self, query: &str) -> Result<Vec<serde_json::Value>, HubError> {
        let mut all = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .query_devices_page(query, continuation.as_deref())
                .await?;
            all.extend(page.items);
            match page.continuation {
                Some(c) if Some(&c) != continuation.as_ref() => continuation = Some(c),
                Some(_) => {
                    return Err(HubError::Decode {
                        op: "query devices".into(),
                        message: "the hub repeated a continuation token".into(),
                    });
                }
                None => return Ok(all),
            }
        }
    }

    /// A module twin; `None` if the device or module does not exist.
    pub async fn get_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<Option<ModuleTwin>, HubError> {
        let op = format!("get twin {device_id}/{module_id}");
        let url = self.url(
            &format!(
                "/twins/{}/modules/{}",
                utf8_percent_encode(device_id, SEGMENT),
                utf8_percent_encode(module_id, SEGMENT)
            ),
            "",
        );
        match self
            .send(&op, Lane::Twins, Method::GET, &url, &[], None)
            .await
        {
            Ok(a) => Self::decode(&op, &a.body).map(Some),
            Err(HubError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `$edgeAgent` twin of an IoT Edge device.
    pub async fn edge_agent_twin(&self, device_id: &str) -> Result<Option<ModuleTwin>, HubError> {
        self.get_module_twin(device_id, "$edgeAgent").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_and_a_429_refills_from_zero() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 2, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), Some(Duration::from_millis(500)));
        b.throttled(t0 + Duration::from_secs(3), t0);
        assert_eq!(
            b.take(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        let after = t0 + Duration::from_secs(3);
        // 3 s at 2/s refilled to the capacity of 2, no more.
        assert_eq!(b.take(after), None);
        assert_eq!(b.take(after), None);
        assert!(b.take(after).is_some());
    }

    #[test]
    fn errors_map_status_to_reason() {
        let h = HeaderMap::new();
        let body = serde_json::to_vec(&HubErrorBody::new("PreconditionFailed", "stale", "t"))
            .expect("json");
        let e = HubError::from_answer("op", StatusCode::PRECONDITION_FAILED, &h, &body);
        assert_eq!(e.reason(), "precondition_failed");
        assert_eq!(
            e.fault().map(|f| f.code.as_str()),
            Some("PreconditionFailed")
        );
        for (status, reason) in [
            (401, "unauthorized"),
            (403, "quota_exceeded"),
            (404, "not_found"),
            (409, "already_exists"),
            (400, "rejected"),
            (503, "server_error"),
            (429, "throttled"),
        ] {
            let s = StatusCode::from_u16(status).expect("status");
            assert_eq!(HubError::from_answer("op", s, &h, b"").reason(), reason);
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(1));
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Duration::from_secs(3));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&h), Duration::from_secs(1));
    }

    #[test]
    fn calls_are_send_so_the_provider_can_spawn_them() {
        fn send<T: Send>(_: T) {}
        let conn = super::super::sas::ConnectionString::parse(
            "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey=YQ==",
        )
        .expect("conn");
        let c = HubClient::new(conn, HubClientConfig::default()).expect("client");
        let config = Configuration::default();
        send(c.create_configuration(&config));
        send(c.update_configuration("x", &ConfigurationPatch::default()));
        send(c.delete_configuration("x"));
        send(c.list_configurations(None));
        send(c.query_devices("SELECT * FROM devices"));
        send(c.test_queries("tags.a='b'", &BTreeMap::new()));
        send(c.edge_agent_twin("d"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("YQ=="), "{shown}");
    }

    #[test]
    fn ids_are_escaped_as_one_path_segment() {
        let conn = super::super::sas::ConnectionString::parse(
            "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey=YQ==",
        )
        .expect("conn");
        let c = HubClient::new(conn, HubClientConfig::default()).expect("client");
        assert_eq!(
            c.configuration_url("a#b?c%d/e"),
            "https://h.azure-devices.net/configurations/a%23b%3Fc%25d%2Fe?api-version=2021-04-12"
        );
    }
}
