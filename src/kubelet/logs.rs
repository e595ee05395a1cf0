//! `GET /containerLogs/{namespace}/{pod}/{container}` (what the API server
//! proxies `kubectl logs` to), answered from the ACI logs API with the
//! kubelet's query options ([`PodLogOptions`]): `tailLines`, `timestamps`,
//! `sinceSeconds`/`sinceTime`, `limitBytes`, `follow`; `previous` is refused
//! (ACI keeps no previous container instance). Also the refusals for what
//! ACI cannot do at all: `/attach` and `/portForward` ([`not_supported`]).
//!
//! It reads only ACI; it never trusts the group name alone (names can
//! collide) and checks the group's namespace/pod tags.
//!
//! **Its own read budget.** Each request costs at most two ARM reads (the
//! group, then its log), through an ACI client of its own (not the
//! provider's paced one), within a budget of its own ([`LogBudget`]) that
//! never touches the read budget the provider's status sync paces itself
//! with. Callers wait for their turn in line, first come first served; a
//! request whose turn would come after [`LogBudget::max_wait`] is answered
//! 429 with `Retry-After`. A 429 from ARM pauses the budget for its
//! `Retry-After`. A follower (`follow=true`) spends one read per poll, and
//! followers together read at most half the budget's rate, so one-shot
//! requests always have the other half ([`LogReader`], [`Follower`]).
//!
//! **Shared reads.** Callers moments apart share reads: requests for the
//! same pod share its group read, requests and followers of the same
//! container share its log read, and a read in flight is waited for rather
//! than repeated. So ten people following one pod cost what one does.
//!
//! **Time.** ACI's logs API prefixes each line with its RFC 3339 time when
//! asked (`timestamps=true`); it is always asked (so any read serves any
//! caller), and the times are stripped again when the caller did not ask
//! for them. A line without a time of its own (a continuation) carries the
//! time of the line before it.

use super::shared_reads::{Gate, Recent};
use crate::aci::translate::{group_name, group_name_in};
use crate::aci::{
    AciError, ContainerGroup, ContainerGroups, LogOptions, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME,
};
use crate::metrics::Metrics;
use crate::units::Timestamp;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Why a log request failed; the variant picks the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// A query value that does not parse (the kubelet: 400 "Unable to
    /// decode query").
    #[error("Unable to decode query: {0}")]
    Query(String),
    /// Options that parse but are not allowed (the kubelet and the API
    /// server validate with `ValidatePodLogOptions`: 422).
    #[error("Invalid request: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// `previous=true`: the kubelet answers 400 when there is no previous
    /// terminated container, and on ACI there never is.
    #[error(
        "previous terminated container {container:?} in pod {pod:?} not found: ACI keeps no previous instance of a container"
    )]
    Previous { pod: String, container: String },
    /// Something the kubelet can do and ACI cannot.
    #[error(
        "{0} is not supported on ACI: spillway's virtual node runs pods as ACI container groups, which offer no such stream"
    )]
    NotSupported(&'static str),
    #[error("no container group for pod {namespace}/{pod}")]
    NoGroup { namespace: String, pod: String },
    #[error("container {container:?} not found in pod {namespace}/{pod}")]
    NoContainer {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error(
        "log read budget spent: this node answers at most {per_sec}/s container log requests from ACI ({burst} at once; --kubelet-log-qps, --kubelet-log-burst) and this one's turn would not come within {}s (--kubelet-log-max-wait); retry in {}s",
        max_wait.as_secs(),
        retry_after.as_secs_f64().ceil().max(1.0)
    )]
    Budget {
        per_sec: f64,
        burst: u32,
        max_wait: Duration,
        retry_after: Duration,
    },
    #[error("ACI: {0}")]
    Aci(#[from] AciError),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::Query(_) | LogsError::Previous { .. } => StatusCode::BAD_REQUEST,
            LogsError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            LogsError::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            LogsError::NoGroup { .. } | LogsError::NoContainer { .. } => StatusCode::NOT_FOUND,
            LogsError::Budget { .. } => StatusCode::TOO_MANY_REQUESTS,
            LogsError::Aci(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            LogsError::Aci(_) => StatusCode::BAD_GATEWAY,
        };
        let retry_after = match &self {
            LogsError::Budget { retry_after, .. } => Some(*retry_after),
            LogsError::Aci(AciError::Throttled { retry_after }) => Some(*retry_after),
            _ => None,
        };
        let mut response = (status, self.to_string()).into_response();
        if let Some(wait) = retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// A point in time with nanoseconds, as log lines carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogTime {
    /// Nanoseconds since the Unix epoch.
    nanos: i128,
}

impl LogTime {
    const NANOS_PER_SEC: i128 = 1_000_000_000;

    /// Parse RFC 3339 with any number of fractional digits (up to
    /// nanoseconds are kept) and a `Z` or numeric offset.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let (fraction, rest) = if b.get(19) == Some(&b'.') {
            let digits = s.get(20..)?.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            (s.get(20..20 + digits)?, s.get(20 + digits..)?)
        } else {
            ("", s.get(19..)?)
        };
        let whole = format!("{}{rest}", s.get(..19)?);
        let secs = Timestamp::parse_rfc3339(&whole)
            .ok()?
            .millis()
            .div_euclid(1000);
        // Digits finer than nanoseconds are dropped.
        let mut nanos: i128 = 0;
        for (i, d) in fraction.bytes().take(9).enumerate() {
            nanos += i128::from(d - b'0') * 10i128.pow(8 - i as u32);
        }
        Some(Self {
            nanos: i128::from(secs) * Self::NANOS_PER_SEC + nanos,
        })
    }

    /// The kubelet's rendering (`RFC3339NanoFixed`): UTC, nine fractional
    /// digits, e.g. `2024-05-14T09:21:37.120000000Z`.
    pub fn to_rfc3339_nano(self) -> String {
        let secs = self.nanos.div_euclid(Self::NANOS_PER_SEC);
        let frac = self.nanos.rem_euclid(Self::NANOS_PER_SEC);
        // Clamped to what `Timestamp` holds (milliseconds in an i64).
        let bound = i128::from(i64::MAX / 1000);
        let secs = i64::try_from(secs.clamp(-bound, bound)).unwrap_or_default();
        let whole = Timestamp::from_secs(secs).to_rfc3339();
        let base = whole.strip_suffix('Z').unwrap_or(&whole);
        format!("{base}.{frac:09}Z")
    }

    /// The wall-clock time now.
    pub fn now() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self { nanos }
    }

    /// `secs` seconds earlier.
    pub fn minus_secs(self, secs: i64) -> Self {
        Self {
            nanos: self.nanos - i128::from(secs) * Self::NANOS_PER_SEC,
        }
    }
}

/// Where `sinceSeconds`/`sinceTime` start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This many seconds before the request.
    Seconds(i64),
    /// From this time on.
    Time(LogTime),
}

/// The kubelet's `PodLogOptions` for `/containerLogs`, parsed and validated
/// as the kubelet does (`getContainerLogs`: the query decoded into
/// `v1.PodLogOptions`, then `ValidatePodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLogOptions {
    pub follow: bool,
    pub previous: bool,
    pub since: Option<Since>,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

impl PodLogOptions {
    /// Decode the query pairs. As the kubelet: the first value of a
    /// repeated parameter counts; a boolean is false when absent, `false`
    /// (any case) or `0` and true otherwise; integers are decimal; the old
    /// `tail` parameter stands for `tailLines` (`tail=all` for none);
    /// unknown parameters are ignored. A value that does not decode is a
    /// [`LogsError::Query`] (400); values that decode but break the rules
    /// (negative `tailLines`, `limitBytes` or `sinceSeconds` below 1, both
    /// `sinceSeconds` and `sinceTime`) are [`LogsError::Invalid`] (422),
    /// naming every field at fault.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, LogsError> {
        let first = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let boolean = |name: &str| match first(name) {
            None => false,
            Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
        };
        let int = |name: &str, v: &str| {
            v.parse::<i64>()
                .map_err(|_| LogsError::Query(format!("{name}: {v:?} is not an integer")))
        };
        let mut tail_value = first("tailLines").map(|v| ("tailLines", v));
        if let Some(t) = first("tail") {
            tail_value = (t != "all").then_some(("tail", t));
        }
        let tail_lines = tail_value.map(|(n, v)| int(n, v)).transpose()?;
        let limit_bytes = first("limitBytes")
            .map(|v| int("limitBytes", v))
            .transpose()?;
        let since_seconds = first("sinceSeconds")
            .map(|v| int("sinceSeconds", v))
            .transpose()?;
        // An empty sinceTime decodes to the zero time: no filter.
        let since_time = first("sinceTime")
            .filter(|v| !v.is_empty())
            .map(|v| {
                LogTime::parse_rfc3339(v).ok_or_else(|| {
                    LogsError::Query(format!("sinceTime: {v:?} is not an RFC 3339 time"))
                })
            })
            .transpose()?;

        let mut invalid = Vec::new();
        if let Some(t) = tail_lines.filter(|t| *t < 0) {
            invalid.push(format!(
                "tailLines: Invalid value: {t}: must be greater than or equal to 0"
            ));
        }
        if let Some(l) = limit_bytes.filter(|l| *l < 1) {
            invalid.push(format!(
                "limitBytes: Invalid value: {l}: must be greater than 0"
            ));
        }
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                invalid.push(
                    "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                        .to_string(),
                );
                None
            }
            (Some(s), None) => {
                if s < 1 {
                    invalid.push(format!(
                        "sinceSeconds: Invalid value: {s}: must be greater than 0"
                    ));
                }
                Some(Since::Seconds(s))
            }
            (None, t) => t.map(Since::Time),
        };
        if !invalid.is_empty() {
            return Err(LogsError::Invalid(invalid));
        }
        Ok(Self {
            follow: boolean("follow"),
            previous: boolean("previous"),
            since,
            timestamps: boolean("timestamps"),
            tail_lines: tail_lines.map(|t| t.unsigned_abs()),
            limit_bytes: limit_bytes.map(|l| l.unsigned_abs()),
        })
    }
}

/// One line of ACI's log text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line<'a> {
    /// Its own time, else that of the line before it (`None` before any).
    time: Option<LogTime>,
    /// The line without ACI's time prefix, with its `\n` if it had one.
    text: &'a str,
}

/// Split ACI's log text into lines; with `stamped`, take each line's
/// leading RFC 3339 time (and the one space after it) off.
fn split_lines(content: &str, stamped: bool) -> Vec<Line<'_>> {
    let mut last = None;
    content
        .split_inclusive('\n')
        .map(|raw| {
            if stamped
                && let Some((head, rest)) = raw.split_once(' ')
                && let Some(t) = LogTime::parse_rfc3339(head)
            {
                last = Some(t);
                return Line {
                    time: Some(t),
                    text: rest,
                };
            }
            Line {
                time: last,
                text: raw,
            }
        })
        .collect()
}

/// What the caller sees of `lines`: those at or after `since` (lines
/// without any time are kept: nothing says they are older), prefixed with
/// their time when `timestamps`, cut after `remaining` bytes (mid-line, as
/// the kubelet's limited writer does; `remaining` is decreased). Whether
/// the limit was reached.
fn render(
    lines: &[Line<'_>],
    since: Option<LogTime>,
    timestamps: bool,
    remaining: &mut Option<u64>,
    out: &mut Vec<u8>,
) -> bool {
    for line in lines {
        if let (Some(since), Some(t)) = (since, line.time)
            && t < since
        {
            continue;
        }
        let mut piece = Vec::with_capacity(line.text.len() + 31);
        if timestamps && let Some(t) = line.time {
            piece.extend_from_slice(t.to_rfc3339_nano().as_bytes());
            piece.push(b' ');
        }
        piece.extend_from_slice(line.text.as_bytes());
        match remaining {
            None => out.extend_from_slice(&piece),
            Some(left) => {
                let take = piece
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&piece[..take]);
                *left -= take as u64;
                if *left == 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// Which lines a follower has sent: the newest time seen and how many lines
/// carried exactly that time. ACI's logs API has no "since" or offset, so
/// every poll reads the last [`FOLLOW_WINDOW`] lines with their times and
/// keeps those after the cursor (lines at the cursor's time beyond the
/// count already sent are new too: several lines can share a time). More
/// than [`FOLLOW_WINDOW`] lines written between two polls are not all seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    newest: Option<(LogTime, usize)>,
}

impl Cursor {
    /// The lines of `lines` not seen yet; moves the cursor past them.
    fn fresh<'a>(&mut self, lines: &[Line<'a>]) -> Vec<Line<'a>> {
        let mut out = Vec::new();
        let mut at_cursor = 0usize;
        for line in lines {
            let new = match (self.newest, line.time) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some((t, seen)), Some(lt)) => {
                    if lt == t {
                        at_cursor += 1;
                        at_cursor > seen
                    } else {
                        lt > t
                    }
                }
            };
            if new {
                out.push(*line);
            }
        }
        self.see(lines);
        out
    }

    /// Move the cursor to the newest line of `lines` (the whole read).
    fn see(&mut self, lines: &[Line<'_>]) {
        if let Some(newest) = lines.iter().filter_map(|l| l.time).max() {
            let count = lines.iter().filter(|l| l.time == Some(newest)).count();
            self.newest = match self.newest {
                Some((t, n)) if t == newest => Some((t, n.max(count))),
                Some((t, _)) if t > newest => self.newest,
                _ => Some((newest, count)),
            };
        }
    }
}

/// Lines read per follow poll.
pub const FOLLOW_WINDOW: u32 = 5_000;

/// The group of cluster `cluster_id` that runs `namespace/pod`: this
/// cluster's name for it, else the name groups had before cluster hashing
/// (still running after an upgrade); the tags decide.
pub(crate) async fn find_group(
    aci: &dyn ContainerGroups,
    cluster_id: &str,
    namespace: &str,
    pod: &str,
) -> Result<Option<ContainerGroup>, AciError> {
    find_group_paced(aci, cluster_id, namespace, pod, || async { Ok(()) }).await
}

/// [`find_group`], calling `before_read` before each ARM read (a budget's
/// turn; its error ends the search).
async fn find_group_paced<E, F, Fut>(
    aci: &dyn ContainerGroups,
    cluster_id: &str,
    namespace: &str,
    pod: &str,
    mut before_read: F,
) -> Result<Option<ContainerGroup>, E>
where
    E: From<AciError>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    for name in [
        group_name_in(cluster_id, namespace, pod),
        group_name(namespace, pod),
    ] {
        before_read().await?;
        if let Some(g) = aci.get(&name).await?
            && is_pods_group(&g, cluster_id, namespace, pod)
        {
            return Ok(Some(g));
        }
    }
    Ok(None)
}

fn is_pods_group(g: &ContainerGroup, cluster_id: &str, namespace: &str, pod: &str) -> bool {
    let tag = |k: &str| g.tags.get(k).map(String::as_str);
    tag(TAG_CLUSTER) == Some(cluster_id)
        && tag(TAG_NAMESPACE) == Some(namespace)
        && tag(TAG_POD_NAME) == Some(pod)
}

/// Whether `container` of `g` has terminated (by its instance view).
fn terminated(g: &ContainerGroup, container: &str) -> bool {
    g.properties
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.properties.instance_view.as_ref())
        .and_then(|v| v.current_state.as_ref())
        .is_some_and(|s| s.state == "Terminated")
}

/// Container log requests answered per second from ACI, and at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogBudget {
    /// Requests per second; each is two ARM reads (the group, its log), so
    /// the endpoint reads ACI at most twice this rate.
    pub per_sec: f64,
    pub burst: u32,
    /// How long a request waits in line for its turn before it is answered
    /// 429 with `Retry-After` (the API server waits for the kubelet's
    /// answer with no timeout of its own; kubectl neither).
    pub max_wait: Duration,
}

impl Default for LogBudget {
    /// 2 requests/s (4 ARM reads/s beside the provider's 12), 10 at once,
    /// a request waiting up to 30 s for its turn.
    fn default() -> Self {
        Self {
            per_sec: 2.0,
            burst: 10,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// How followers poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowPacing {
    /// The pause between two polls of a log that is being written.
    pub every: Duration,
    /// The longest pause between two polls of a quiet log: each poll that
    /// finds nothing new doubles the pause, up to this; a new line brings
    /// it back to `every`. A quiet follower also checks, at most this
    /// often, whether its container has ended.
    pub idle_every: Duration,
    /// The longest a follow lasts (the kubelet's server write timeout is
    /// 4 h); the stream then ends and `kubectl logs -f` returns.
    pub at_most: Duration,
}

impl Default for FollowPacing {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(2),
            idle_every: Duration::from_secs(10),
            at_most: Duration::from_secs(4 * 3600),
        }
    }
}

/// How long a one-shot request may use a log another caller read (and a
/// follower polling every 2 s, one read 1 s before it).
const SHARE_LOGS_WITHIN: Duration = Duration::from_secs(1);
/// How long a request may use a group another caller read: its name and
/// tags do not change while it lives (a recreated pod's group has the same
/// name, and the pod's name is what the caller asked for).
const SHARE_GROUPS_WITHIN: Duration = Duration::from_secs(10);

/// Whose turn an ARM read is.
#[derive(Clone, Copy)]
enum Turn<'a> {
    /// A request's, paid for at its one turn in line.
    Request(&'a Paid<'a>),
    /// A follower's poll, waiting at most until its follow ends.
    Follow(Instant),
}

/// A container's log requests in progress, by (namespace, pod, container).
type InProgress = std::sync::Mutex<HashMap<(String, String, String), usize>>;

/// The reads a request paid for at its one turn (those it expects to make:
/// the group and the log, unless a read moments old will serve or another
/// request for the same container is in progress, whose reads it will
/// share); what it did not use goes back to the budget when it is dropped.
struct Paid<'a> {
    gate: &'a Gate,
    left: AtomicU32,
    /// A read beyond those paid for waits in line until then.
    deadline: Instant,
    in_progress: &'a InProgress,
    key: (String, String, String),
}

impl Drop for Paid<'_> {
    fn drop(&mut self) {
        self.gate.refund(self.left.load(Ordering::Relaxed));
        let mut requests = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = requests.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                requests.remove(&self.key);
            }
        }
    }
}

/// One container's log as ACI gave it, with its times, and how far back.
#[derive(Debug)]
struct LogText {
    /// The `tail` it was read with (`None`: all of it).
    tail: Option<u32>,
    text: String,
}

impl LogText {
    /// Whether it holds what a read of `tail` lines would.
    fn covers(&self, tail: Option<u32>) -> bool {
        match (self.tail, tail) {
            (None, _) => true,
            (Some(have), Some(want)) => want <= have,
            (Some(_), None) => false,
        }
    }
}

/// Container logs from ACI within a [`LogBudget`]: every ARM read waits
/// for its turn at one bucket (twice the budget's rate: two reads a
/// request), first come first served; followers' polls first pass a
/// bucket of their own at half that rate, so one-shot requests always have
/// the other half. Callers within moments of each other share reads: a
/// group read serves requests for the same pod for
/// [`SHARE_GROUPS_WITHIN`], a log read serves requests and polls of the
/// same container for [`SHARE_LOGS_WITHIN`] (followers: half their poll
/// pause), and a read in flight is waited for, not repeated.
pub struct LogReader {
    aci: Arc<dyn ContainerGroups>,
    /// Whose groups it reads (their names carry it; their tags must match).
    cluster_id: Arc<str>,
    budget: LogBudget,
    pacing: FollowPacing,
    reads: Gate,
    follow: Gate,
    /// (namespace, pod) → its group (`None` is never shared: the group may
    /// be moments from being created).
    groups: Recent<(String, String), Option<Arc<ContainerGroup>>>,
    /// (group, container) → its log.
    texts: Recent<(String, String), Arc<LogText>>,
    in_progress: InProgress,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("budget", &self.budget)
            .field("pacing", &self.pacing)
            .finish_non_exhaustive()
    }
}

/// One answer: the text so far, and for `follow` what sends the rest.
pub struct LogAnswer {
    pub text: Vec<u8>,
    pub follower: Option<Follower>,
}

impl LogReader {
    /// Reading through `aci`, which should be a client of its own (see the
    /// module documentation), within `budget`.
    pub fn new(aci: Arc<dyn ContainerGroups>, cluster_id: &str, budget: LogBudget) -> Self {
        let reads_per_sec = 2.0 * budget.per_sec;
        let burst = budget.burst.max(1);
        Self {
            aci,
            cluster_id: cluster_id.into(),
            budget,
            pacing: FollowPacing::default(),
            reads: Gate::new(reads_per_sec, burst.saturating_mul(2)),
            follow: Gate::new(reads_per_sec / 2.0, burst),
            groups: Recent::new(SHARE_GROUPS_WITHIN),
            texts: Recent::new(Duration::from_secs(60)),
            in_progress: InProgress::default(),
            metrics: None,
        }
    }

    /// The ACI client it reads through (the exec bridge of
    /// [`crate::kubelet::router`] shares it).
    pub fn aci(&self) -> Arc<dyn ContainerGroups> {
        self.aci.clone()
    }

    /// Whose groups it reads.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The same, with followers paced by `pacing`.
    pub fn with_follow_pacing(mut self, pacing: FollowPacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// The same, counting its reads, followers and refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_read(&self, call: &str, shared: bool) {
        if let Some(m) = &self.metrics {
            m.kubelet_log_reads
                .with_label_values(&[call, if shared { "shared" } else { "aci" }])
                .inc();
        }
    }

    fn note_throttle(&self, e: &AciError) {
        if let AciError::Throttled { retry_after } = e {
            self.reads.throttled(Instant::now() + *retry_after);
        }
    }

    /// Wait for the turn of one ARM read.
    async fn turn(&self, turn: Turn<'_>) -> Result<(), LogsError> {
        let waited = match turn {
            Turn::Request(paid) => {
                let prepaid = paid
                    .left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if prepaid {
                    return Ok(());
                }
                self.reads.take(paid.deadline).await
            }
            Turn::Follow(until) => match self.follow.take(until).await {
                Ok(()) => self.reads.take(until).await,
                Err(wait) => Err(wait),
            },
        };
        waited.map_err(|retry_after| self.spent(retry_after, matches!(turn, Turn::Request(_))))
    }

    /// The answer when a caller's turn would not come in time (a request's
    /// refusal is counted).
    fn spent(&self, retry_after: Duration, request: bool) -> LogsError {
        if request && let Some(m) = &self.metrics {
            m.kubelet_log_refused.inc();
        }
        LogsError::Budget {
            per_sec: self.budget.per_sec,
            burst: self.budget.burst,
            max_wait: self.budget.max_wait,
            retry_after,
        }
    }

    /// A request's one turn in line: the reads it expects to make, paid
    /// for (none when others' reads will serve it).
    async fn pay(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        tail: Option<u32>,
    ) -> Result<Paid<'_>, LogsError> {
        let deadline = Instant::now() + self.budget.max_wait;
        let key = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        let others = {
            let mut requests = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
            let n = requests.entry(key.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let reads = if others > 0 {
            0
        } else {
            let group_key = (key.0.clone(), key.1.clone());
            let text_key = (
                group_name_in(&self.cluster_id, namespace, pod),
                key.2.clone(),
            );
            u32::from(!self.groups.would_share(&group_key, |g, age| {
                g.is_some() && age <= SHARE_GROUPS_WITHIN
            })) + u32::from(!self.texts.would_share(&text_key, |t, age| {
                age <= SHARE_LOGS_WITHIN && t.covers(tail)
            }))
        };
        let paid = Paid {
            gate: &self.reads,
            left: AtomicU32::new(0),
            deadline,
            in_progress: &self.in_progress,
            key,
        };
        if reads > 0 {
            self.reads
                .take_n(reads, deadline)
                .await
                .map_err(|retry_after| self.spent(retry_after, true))?;
            paid.left.store(reads, Ordering::Relaxed);
        }
        Ok(paid)
    }

    /// The group of `namespace/pod` (see [`find_group`]), read within
    /// `max_age` by anyone, else now.
    async fn group(
        &self,
        namespace: &str,
        pod: &str,
        max_age: Duration,
        turn: Turn<'_>,
    ) -> Result<Option<Arc<ContainerGroup>>, LogsError> {
        let key = (namespace.to_string(), pod.to_string());
        let (group, shared) = self
            .groups
            .get(
                &key,
                |g, age| g.is_some() && age <= max_age,
                || async {
                    let found = find_group_paced(
                        self.aci.as_ref(),
                        &self.cluster_id,
                        namespace,
                        pod,
                        || self.turn(turn),
                    )
                    .await;
                    if let Err(LogsError::Aci(e)) = &found {
                        self.note_throttle(e);
                    }
                    found.map(|g| g.map(Arc::new))
                },
            )
            .await?;
        self.count_read("group", shared);
        Ok(group)
    }

    /// `container`'s log in `group` (with ACI's times), `tail` lines or
    /// more, read within `max_age` by anyone, else now. ACI's 404 (the
    /// group or the container is gone) is [`AciError::NotFound`].
    async fn text(
        &self,
        group: &str,
        container: &str,
        tail: Option<u32>,
        max_age: Duration,
        turn: Turn<'_>,
    ) -> Result<Arc<LogText>, LogsError> {
        let key = (group.to_string(), container.to_string());
        let (text, shared) = self
            .texts
            .get(
                &key,
                |t, age| age <= max_age && t.covers(tail),
                || async {
                    self.turn(turn).await?;
                    let options = LogOptions {
                        tail,
                        timestamps: true,
                    };
                    match self.aci.logs(group, container, options).await {
                        Ok(text) => Ok(Arc::new(LogText { tail, text })),
                        Err(e) => {
                            self.note_throttle(&e);
                            Err(LogsError::Aci(e))
                        }
                    }
                },
            )
            .await?;
        self.count_read("logs", shared);
        Ok(text)
    }

    /// One container's log (and, with `follow`, a [`Follower`] for what
    /// comes next), after waiting in line for the budget at most
    /// [`LogBudget::max_wait`].
    pub async fn read(
        self: &Arc<Self>,
        namespace: &str,
        pod: &str,
        container: &str,
        options: &PodLogOptions,
    ) -> Result<LogAnswer, LogsError> {
        if options.previous {
            return Err(LogsError::Previous {
                pod: pod.to_string(),
                container: container.to_string(),
            });
        }
        // A follower reads the window its polls read, whatever tailLines
        // shows: its cursor counts the lines sharing the newest time, and a
        // shorter read would cut some of them off, so the first poll would
        // send them again (lines appended together share their time).
        let tail = match options.tail_lines {
            Some(n) if options.follow => Some(n.max(u64::from(FOLLOW_WINDOW))),
            t => t,
        }
        .map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        let paid = self.pay(namespace, pod, container, tail).await?;
        let turn = Turn::Request(&paid);
        let group = self
            .group(namespace, pod, SHARE_GROUPS_WITHIN, turn)
            .await?
            .ok_or_else(|| LogsError::NoGroup {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            })?;
        let no_container = || LogsError::NoContainer {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        };
        if !group
            .properties
            .containers
            .iter()
            .any(|c| c.name == container)
        {
            return Err(no_container());
        }
        let log = match self
            .text(&group.name, container, tail, SHARE_LOGS_WITHIN, turn)
            .await
        {
            Err(LogsError::Aci(AciError::NotFound)) => {
                self.groups
                    .forget(&(namespace.to_string(), pod.to_string()));
                return Err(no_container());
            }
            other => other?,
        };
        let lines = split_lines(&log.text, true);
        let shown = match options.tail_lines {
            Some(n) => {
                &lines[lines
                    .len()
                    .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX))..]
            }
            None => &lines[..],
        };
        let since = options.since.map(|s| match s {
            Since::Seconds(secs) => LogTime::now().minus_secs(secs),
            Since::Time(t) => t,
        });
        let mut remaining = options.limit_bytes;
        let mut text = Vec::new();
        let full = render(shown, since, options.timestamps, &mut remaining, &mut text);
        let follower = (options.follow && !full && !terminated(&group, container)).then(|| {
            let mut cursor = Cursor::default();
            cursor.see(&lines);
            if let Some(m) = &self.metrics {
                m.kubelet_log_followers.inc();
            }
            Follower {
                reader: Arc::clone(self),
                group: group.name.clone(),
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
                since,
                timestamps: options.timestamps,
                remaining,
                cursor,
                until: Instant::now() + self.pacing.at_most,
                pause: self.pacing.every,
                state_checked: Instant::now(),
                quiet_polls: 0,
            }
        });
        Ok(LogAnswer { text, follower })
    }
}

/// The rest of a followed log. It polls ACI for the last [`FOLLOW_WINDOW`]
/// lines with their times (one ARM read, in turn with every other
/// follower's, or shared with followers of the same container), and yields
/// only the lines the [`Cursor`] has not seen. Its pause between polls is
/// [`FollowPacing::every`] while the log grows and doubles up to
/// [`FollowPacing::idle_every`] while it is quiet; a quiet follower reads
/// the group (a second ARM read) at most every `idle_every` to learn
/// whether its container has ended, and while other followers wait for
/// their turn, only after [`QUIET_POLLS_PER_CHECK`] quiet polls (so under
/// load quiet followers do not spend half the followers' reads on checks
/// and double everyone's wait). It ends when the container has
/// terminated (after sending its last lines), when the group is gone or no
/// longer this pod's, on an ACI error that retrying will not fix, when
/// `limitBytes` is reached, or after [`FollowPacing::at_most`]; and when
/// the client goes, because the response body (this stream) is dropped. It
/// holds one poll's text at a time.
pub struct Follower {
    reader: Arc<LogReader>,
    group: String,
    namespace: String,
    pod: String,
    container: String,
    since: Option<LogTime>,
    timestamps: bool,
    remaining: Option<u64>,
    cursor: Cursor,
    until: Instant,
    /// The pause before the next poll.
    pause: Duration,
    /// When it last learned whether its container has ended.
    state_checked: Instant,
    /// Quiet polls since then.
    quiet_polls: u32,
}

/// While followers wait for their turn, a quiet follower reads its group
/// once per this many quiet polls.
pub const QUIET_POLLS_PER_CHECK: u32 = 5;

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(m) = &self.reader.metrics {
            m.kubelet_log_followers.dec();
        }
    }
}

/// What a follower's poll came to.
enum Poll {
    /// Text to send (not empty).
    Text(Vec<u8>),
    /// Nothing new.
    Quiet,
    /// Poll again at once (ACI asked to retry).
    Retry,
    /// The follow is over.
    End,
}

impl Follower {
    /// The next piece of the log, or `None` when the follow is over.
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let pacing = self.reader.pacing;
        loop {
            if Instant::now() + self.pause > self.until {
                return None;
            }
            tokio::time::sleep(self.pause).await;
            match self.poll(pacing.every / 2).await {
                Poll::Text(out) => {
                    self.pause = pacing.every;
                    self.quiet_polls = 0;
                    return Some(out);
                }
                Poll::End => return None,
                Poll::Retry => continue,
                Poll::Quiet => {}
            }
            self.pause = (self.pause * 2).min(pacing.idle_every.max(pacing.every));
            self.quiet_polls += 1;
            let others_wait = self.reader.follow.waiting() > 0;
            if self.state_checked.elapsed() < pacing.idle_every
                || (others_wait && self.quiet_polls < QUIET_POLLS_PER_CHECK)
            {
                continue;
            }
            self.state_checked = Instant::now();
            self.quiet_polls = 0;
            let turn = Turn::Follow(self.until);
            let group = self
                .reader
                .group(&self.namespace, &self.pod, pacing.idle_every / 2, turn)
                .await;
            match group {
                Ok(Some(g)) if g.name == self.group => {
                    if terminated(&g, &self.container) {
                        // Its last lines, read after it ended, then the end.
                        self.until = Instant::now() + pacing.idle_every;
                        let last = self.poll(Duration::ZERO).await;
                        self.until = Instant::now();
                        return match last {
                            Poll::Text(out) => Some(out),
                            _ => None,
                        };
                    }
                }
                Err(LogsError::Aci(e)) if e.is_retryable() => {}
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// Read the log (shared if read within `max_age`) and render what is
    /// new.
    async fn poll(&mut self, max_age: Duration) -> Poll {
        let turn = Turn::Follow(self.until);
        let log = match self
            .reader
            .text(
                &self.group,
                &self.container,
                Some(FOLLOW_WINDOW),
                max_age,
                turn,
            )
            .await
        {
            Ok(log) => log,
            Err(LogsError::Aci(e)) if e.is_retryable() => return Poll::Retry,
            Err(_) => return Poll::End,
        };
        let lines = split_lines(&log.text, true);
        let fresh = self.cursor.fresh(&lines);
        let mut out = Vec::new();
        let full = render(
            &fresh,
            self.since,
            self.timestamps,
            &mut self.remaining,
            &mut out,
        );
        if full {
            self.until = Instant::now();
        }
        match (out.is_empty(), full) {
            (false, _) => Poll::Text(out),
            (true, true) => Poll::End,
            (true, false) => Poll::Quiet,
        }
    }

    /// As a response body stream.
    fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Send {
        futures::stream::unfold(self, |mut f| async move {
            f.next_chunk()
                .await
                .map(|chunk| (Ok(bytes::Bytes::from(chunk)), f))
        })
    }
}

/// The `/containerLogs` handler.
pub async fn handler(
    State(logs): State<Arc<LogReader>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, LogsError> {
    let options = PodLogOptions::from_query(&query)?;
    let answer = logs.read(&namespace, &pod, &container, &options).await?;
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    Ok(match answer.follower {
        None => (text_plain, answer.text).into_response(),
        Some(follower) => {
            let first = futures::stream::once(async move {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(answer.text))
            });
            use futures::StreamExt as _;
            let body = axum::body::Body::from_stream(first.chain(follower.into_stream()));
            (text_plain, body).into_response()
        }
    })
}

/// `/attach/...` and `/portForward/...`: ACI offers neither stream, so the
/// answer is 501 with the reason (not 404, which would read as a wrong
/// path or a missing pod).
pub async fn not_supported(uri: axum::http::Uri) -> LogsError {
    if uri.path().starts_with("/attach") {
        LogsError::NotSupported("attach")
    } else {
        LogsError::NotSupported("port-forward")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::{BoxFuture, ContainerGroup, Usage};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The groups of pods `web/*`, counting every call.
    #[derive(Default)]
    struct Counting {
        calls: AtomicU32,
        throttle: bool,
    }

    impl ContainerGroups for Counting {
        fn create_or_update<'a>(
            &'a self,
            group: &'a ContainerGroup,
        ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
            Box::pin(async move { Ok(group.clone()) })
        }
        fn get<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.throttle {
                    return Err(AciError::Throttled {
                        retry_after: Duration::from_secs(7),
                    });
                }
                let mut g = ContainerGroup {
                    name: name.to_string(),
                    ..ContainerGroup::default()
                };
                // `web-<pod>-<hash>`: the group of pod `web/<pod>`.
                let pod = name.split('-').nth(1).unwrap_or_default();
                g.tags = BTreeMap::from([
                    (TAG_CLUSTER.to_string(), "c1".to_string()),
                    (TAG_NAMESPACE.to_string(), "web".to_string()),
                    (TAG_POD_NAME.to_string(), pod.to_string()),
                ]);
                g.properties.containers = ["app", "side"]
                    .map(|c| crate::aci::Container {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .to_vec();
                Ok(Some(g))
            })
        }
        fn list<'a>(
            &'a self,
            _cluster_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
            Box::pin(async { Ok(()) })
        }
        fn logs<'a>(
            &'a self,
            _name: &'a str,
            container: &'a str,
            _options: LogOptions,
        ) -> BoxFuture<'a, Result<String, AciError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(format!("log of {container}\n"))
            })
        }
        fn metrics<'a>(
            &'a self,
            _name: &'a str,
            _span: crate::aci::monitor::MetricsSpan,
        ) -> BoxFuture<'a, Result<crate::aci::monitor::GroupMetrics, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn usage<'a>(&'a self, _location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
        fn exec<'a>(
            &'a self,
            _name: &'a str,
            _container: &'a str,
            _command: &'a str,
            _terminal: crate::aci::TerminalSize,
        ) -> BoxFuture<'a, Result<crate::aci::ExecSession, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
    }

    /// A reader of `aci` within `per_sec` requests/s, `burst` at once,
    /// each waiting `max_wait` at most.
    fn reader(aci: Arc<Counting>, per_sec: f64, burst: u32, max_wait: Duration) -> Arc<LogReader> {
        Arc::new(LogReader::new(
            aci,
            "c1",
            LogBudget {
                per_sec,
                burst,
                max_wait,
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_moments_apart_share_reads_and_a_spent_budget_is_a_429_that_calls_nothing() {
        let aci = Arc::new(Counting::default());
        let reader = reader(aci.clone(), 0.5, 1, Duration::ZERO);
        let calls = || aci.calls.load(Ordering::SeqCst);
        let read = |container: &'static str| {
            let reader = reader.clone();
            async move {
                reader
                    .read("web", "api", container, &PodLogOptions::default())
                    .await
            }
        };
        for _ in 0..3 {
            let text = read("app").await.map(|a| a.text);
            assert_eq!(text.ok().as_deref(), Some(&b"log of app\n"[..]));
        }
        assert_eq!(
            calls(),
            2,
            "one group read and one log read served all three"
        );
        // A second later the log is read again (the group is still shared);
        // the other container's log then finds the budget spent.
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(read("app").await.is_ok());
        assert_eq!(calls(), 3);
        let refused = read("side")
            .await
            .err()
            .unwrap_or_else(|| panic!("over budget"));
        assert_eq!(calls(), 3, "ACI not called");
        assert_eq!(
            refused.to_string(),
            "log read budget spent: this node answers at most 0.5/s container log requests from ACI (1 at once; --kubelet-log-qps, --kubelet-log-burst) and this one's turn would not come within 0s (--kubelet-log-max-wait); retry in 1s"
        );
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(read("side").await.is_ok(), "refilled");
        assert_eq!(calls(), 4);
        // A container the group does not have: 404 without a log read (the
        // read it paid for goes back).
        tokio::time::advance(Duration::from_secs(1)).await;
        let missing = read("nope").await.err().map(|e| e.into_response().status());
        assert_eq!(missing, Some(StatusCode::NOT_FOUND));
        assert_eq!(calls(), 4);
        assert!(read("app").await.is_ok(), "the refunded read");
        assert_eq!(calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_its_turn_up_to_its_deadline() {
        let aci = Arc::new(Counting::default());
        let reader = reader(aci.clone(), 0.5, 1, Duration::from_secs(5));
        let t0 = Instant::now();
        // Two reads at once (group, log), a third after 1 s at 1 read/s.
        for container in ["app", "side"] {
            let answer = reader
                .read("web", "api", container, &PodLogOptions::default())
                .await;
            assert!(answer.is_ok(), "{:?}", answer.err());
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "waited for its turn");
        assert_eq!(aci.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_in_line_once_for_all_its_reads() {
        // 1 read/s, 2 at once: six requests for six pods, two reads each,
        // all at once. Served in turn, the last is done after 10 s; had
        // each read queued on its own, the logs would wait behind every
        // group read and the last request past 11 s.
        let aci = Arc::new(Counting::default());
        let reader = reader(aci.clone(), 0.5, 1, Duration::from_secs(11));
        let t0 = Instant::now();
        let mut requests = Vec::new();
        for i in 0..6 {
            let reader = reader.clone();
            requests.push(tokio::spawn(async move {
                let pod = format!("p{i}");
                let answer = reader
                    .read("web", &pod, "app", &PodLogOptions::default())
                    .await;
                (answer.map(|a| a.text), t0.elapsed())
            }));
            tokio::task::yield_now().await;
        }
        let mut done = Vec::new();
        for r in requests {
            let (answer, at) = r.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(answer.ok().as_deref(), Some(&b"log of app\n"[..]));
            done.push(at.as_secs());
        }
        assert_eq!(done, vec![0, 2, 4, 6, 8, 10], "each in its turn");
        assert_eq!(aci.calls.load(Ordering::SeqCst), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_arm_pauses_the_budget() {
        let aci = Arc::new(Counting {
            throttle: true,
            ..Counting::default()
        });
        let reader = Arc::new(LogReader::new(
            aci.clone(),
            "c1",
            LogBudget {
                max_wait: Duration::from_secs(1),
                ..LogBudget::default()
            },
        ));
        let first = reader
            .read("web", "api", "app", &PodLogOptions::default())
            .await;
        let response = first
            .err()
            .unwrap_or_else(|| panic!("throttled"))
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let second = reader
            .read("web", "api", "app", &PodLogOptions::default())
            .await;
        assert!(
            matches!(second, Err(LogsError::Budget { .. })),
            "{:?}",
            second.err()
        );
        assert_eq!(
            aci.calls.load(Ordering::SeqCst),
            1,
            "no call during the pause"
        );
    }

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn parse(q: &str) -> Result<PodLogOptions, LogsError> {
        PodLogOptions::from_query(&pairs(q))
    }

    fn time(s: &str) -> LogTime {
        LogTime::parse_rfc3339(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn ok(q: &str) -> PodLogOptions {
        parse(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// The status and message a query is refused with.
    fn refused(q: &str) -> (StatusCode, String) {
        let e = parse(q).err().unwrap_or_else(|| panic!("{q} accepted"));
        let message = e.to_string();
        (e.into_response().status(), message)
    }

    #[test]
    fn options_decode_as_the_kubelet_decodes_them() {
        assert_eq!(ok(""), PodLogOptions::default());
        let all =
            ok("follow=true&previous=1&timestamps=TRUE&tailLines=5&limitBytes=100&sinceSeconds=30");
        assert_eq!(
            all,
            PodLogOptions {
                follow: true,
                previous: true,
                since: Some(Since::Seconds(30)),
                timestamps: true,
                tail_lines: Some(5),
                limit_bytes: Some(100),
            }
        );
        // Booleans: only absent, "false" (any case) and "0" are false.
        for (v, want) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(ok(&format!("follow={v}")).follow, want, "follow={v}");
        }
        // The first of repeated values counts; unknown parameters are ignored.
        assert_eq!(ok("tailLines=2&tailLines=9&color=red").tail_lines, Some(2));
        // The old `tail` parameter.
        assert_eq!(ok("tail=3").tail_lines, Some(3));
        assert_eq!(ok("tailLines=4&tail=all").tail_lines, None);
        assert_eq!(
            ok("sinceTime=2024-05-14T09:21:37.5%2B02:00"
                .replace("%2B", "+")
                .as_str())
            .since,
            Some(Since::Time(time("2024-05-14T07:21:37.500Z")))
        );
        assert_eq!(ok("sinceTime=").since, None);
    }

    #[test]
    fn undecodable_values_are_400_and_invalid_ones_422_naming_the_field() {
        for (q, field) in [
            ("tailLines=ten", "tailLines"),
            ("limitBytes=1.5", "limitBytes"),
            ("sinceSeconds=", "sinceSeconds"),
            ("sinceTime=yesterday", "sinceTime"),
        ] {
            let (status, message) = refused(q);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
            assert!(message.contains(field), "{q}: {message}");
        }
        for (q, field) in [
            (
                "tailLines=-1",
                "tailLines: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                "limitBytes=0",
                "limitBytes: Invalid value: 0: must be greater than 0",
            ),
            (
                "limitBytes=-5",
                "limitBytes: Invalid value: -5: must be greater than 0",
            ),
            (
                "sinceSeconds=-3",
                "sinceSeconds: Invalid value: -3: must be greater than 0",
            ),
            (
                "sinceSeconds=0",
                "sinceSeconds: Invalid value: 0: must be greater than 0",
            ),
            (
                "sinceSeconds=10&sinceTime=2024-05-14T09:21:37Z",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ),
        ] {
            let (status, message) = refused(q);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
            assert!(message.contains(field), "{q}: {message}");
        }
        // Every field at fault is named.
        let (_, message) = refused("tailLines=-1&limitBytes=0");
        assert!(
            message.contains("tailLines") && message.contains("limitBytes"),
            "{message}"
        );
    }

    #[test]
    fn log_times_keep_nanoseconds_and_print_as_the_kubelet_does() {
        let t = time("2024-05-14T09:21:37.123456789Z");
        assert_eq!(t.to_rfc3339_nano(), "2024-05-14T09:21:37.123456789Z");
        assert_eq!(
            time("2024-05-14T09:21:37Z").to_rfc3339_nano(),
            "2024-05-14T09:21:37.000000000Z"
        );
        assert_eq!(
            time("2024-05-14T11:21:37.1+02:00").to_rfc3339_nano(),
            "2024-05-14T09:21:37.100000000Z"
        );
        assert_eq!(
            time("2024-05-14T09:21:37.1234567891Z"),
            t,
            "finer than ns dropped"
        );
        assert_eq!(
            t.minus_secs(60).to_rfc3339_nano(),
            "2024-05-14T09:20:37.123456789Z"
        );
        assert!(time("2024-05-14T09:21:37.000000001Z") > time("2024-05-14T09:21:37Z"));
        assert_eq!(LogTime::parse_rfc3339("not a time"), None);
        assert_eq!(LogTime::parse_rfc3339("2024-05-14T09:21:37.Z"), None);
    }

    #[test]
    fn lines_lose_acis_time_prefix_and_continuations_inherit_it() {
        let text =
            "2024-05-14T09:21:37.100000000Z one\n  continued\n2024-05-14T09:21:38Z two\nlast";
        let lines = split_lines(text, true);
        let t1 = time("2024-05-14T09:21:37.1Z");
        let t2 = time("2024-05-14T09:21:38Z");
        assert_eq!(
            lines,
            vec![
                Line {
                    time: Some(t1),
                    text: "one\n"
                },
                Line {
                    time: Some(t1),
                    text: "  continued\n"
                },
                Line {
                    time: Some(t2),
                    text: "two\n"
                },
                Line {
                    time: Some(t2),
                    text: "last"
                },
            ]
        );
        // Unstamped text is taken as it is.
        assert_eq!(
            split_lines("a b\n", false),
            vec![Line {
                time: None,
                text: "a b\n"
            }]
        );
    }

    #[test]
    fn render_filters_by_time_prefixes_and_cuts_mid_line() {
        let text =
            "2024-05-14T09:21:37Z old\n2024-05-14T09:21:40Z new\n2024-05-14T09:21:41Z newer\n";
        let lines = split_lines(text, true);
        let mut out = Vec::new();
        let mut limit = None;
        assert!(!render(
            &lines,
            Some(time("2024-05-14T09:21:40Z")),
            false,
            &mut limit,
            &mut out
        ));
        assert_eq!(String::from_utf8_lossy(&out), "new\nnewer\n");
        out.clear();
        render(&lines[..1], None, true, &mut limit, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "2024-05-14T09:21:37.000000000Z old\n"
        );
        out.clear();
        let mut limit = Some(6);
        assert!(render(&lines, None, false, &mut limit, &mut out));
        assert_eq!(String::from_utf8_lossy(&out), "old\nne");
        assert_eq!(limit, Some(0));
    }

    #[test]
    fn the_cursor_sends_each_line_once_even_when_lines_share_a_time() {
        let first = "2024-05-14T09:21:37Z a\n2024-05-14T09:21:38Z b\n2024-05-14T09:21:38Z c\n";
        let mut cursor = Cursor::default();
        cursor.see(&split_lines(first, true));
        // The same read again: nothing new.
        assert!(cursor.fresh(&split_lines(first, true)).is_empty());
        // A third line at 09:21:38 and a later one are new; the window may
        // have dropped the oldest line.
        let second = "2024-05-14T09:21:38Z b\n2024-05-14T09:21:38Z c\n2024-05-14T09:21:38Z d\n2024-05-14T09:21:39Z e\n";
        let fresh: Vec<&str> = cursor
            .fresh(&split_lines(second, true))
            .iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(fresh, vec!["d\n", "e\n"]);
        assert!(cursor.fresh(&split_lines(second, true)).is_empty());
        // An empty log at the start: everything is new.
        let mut empty = Cursor::default();
        assert_eq!(empty.fresh(&split_lines(first, true)).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn previous_is_refused_with_400_before_calling_aci() {
        let aci = Arc::new(Counting::default());
        let reader = Arc::new(LogReader::new(aci.clone(), "c1", LogBudget::default()));
        let options = ok("previous=true");
        let e = reader
            .read("web", "api", "app", &options)
            .await
            .err()
            .unwrap_or_else(|| panic!("previous accepted"));
        assert_eq!(
            e.to_string(),
            "previous terminated container \"app\" in pod \"api\" not found: ACI keeps no previous instance of a container"
        );
        assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
        assert_eq!(aci.calls.load(Ordering::SeqCst), 0);
    }
}
