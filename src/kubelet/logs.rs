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
//! **Its own read budget.** Each request costs two ARM reads (the group,
//! then its log), through an ACI client of its own (not the provider's
//! paced one), gated by a token bucket of its own ([`LogBudget`]): a flood
//! of log requests spends that bucket and is answered 429 with
//! `Retry-After`, and never touches the read budget the provider's status
//! sync paces itself with. A 429 from ARM pauses the bucket for its
//! `Retry-After`. A follower (`follow=true`) spends one token per poll
//! (two ARM reads), and followers together draw at most half the budget's
//! rate ([`Follower`]), so one-shot requests always have the other half.
//!
//! **Time.** ACI's logs API prefixes each line with its RFC 3339 time when
//! asked (`timestamps=true`); it is asked whenever the caller wants
//! timestamps, a time filter or to follow, and the times are stripped again
//! when the caller did not ask for them. A line without a time of its own
//! (a continuation) carries the time of the line before it.

use crate::aci::translate::{group_name, group_name_in};
use crate::aci::{
    AciError, ContainerGroup, ContainerGroups, LogOptions, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME,
};
use crate::pacing::TokenBucket;
use crate::units::Timestamp;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
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
        "log read budget spent: this node answers at most {per_sec}/s container log requests from ACI ({burst} at once; --kubelet-log-qps, --kubelet-log-burst); retry in {}s",
        retry_after.as_secs_f64().ceil()
    )]
    Budget {
        per_sec: f64,
        burst: u32,
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

    /// Whether ACI must be asked for timestamps: to print them, to filter
    /// by time, or to tell new lines from old ones when following.
    fn needs_times(&self) -> bool {
        self.timestamps || self.since.is_some() || self.follow
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
    for name in [
        group_name_in(cluster_id, namespace, pod),
        group_name(namespace, pod),
    ] {
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

/// Read one container's log text from the group of cluster `cluster_id`
/// (the group's name and ACI's text).
pub async fn container_logs(
    aci: &dyn ContainerGroups,
    cluster_id: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    options: LogOptions,
) -> Result<(ContainerGroup, String), LogsError> {
    let group = find_group(aci, cluster_id, namespace, pod)
        .await?
        .ok_or_else(|| LogsError::NoGroup {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        })?;
    match aci.logs(&group.name, container, options).await {
        Ok(text) => Ok((group, text)),
        Err(AciError::NotFound) => Err(LogsError::NoContainer {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Container log requests answered per second from ACI, and at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogBudget {
    pub per_sec: f64,
    pub burst: u32,
}

impl Default for LogBudget {
    /// 2 requests/s (4 ARM reads/s beside the provider's 12), 10 at once.
    fn default() -> Self {
        Self {
            per_sec: 2.0,
            burst: 10,
        }
    }
}

/// How followers poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowPacing {
    /// The pause between two polls of one follower.
    pub every: Duration,
    /// The longest a follow lasts (the kubelet's server write timeout is
    /// 4 h); the stream then ends and `kubectl logs -f` returns.
    pub at_most: Duration,
}

impl Default for FollowPacing {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(2),
            at_most: Duration::from_secs(4 * 3600),
        }
    }
}

/// Container logs from ACI within a [`LogBudget`].
pub struct LogReader {
    aci: Arc<dyn ContainerGroups>,
    /// Whose groups it reads (their names carry it; their tags must match).
    cluster_id: Arc<str>,
    budget: LogBudget,
    bucket: Mutex<TokenBucket>,
    /// Followers draw from this one first: half the budget's rate, so
    /// together they never take more than half of `bucket`.
    follow_bucket: Mutex<TokenBucket>,
    pacing: FollowPacing,
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
        let now = Instant::now();
        Self {
            aci,
            cluster_id: cluster_id.into(),
            budget,
            bucket: Mutex::new(TokenBucket::new(budget.per_sec, budget.burst, now)),
            follow_bucket: Mutex::new(TokenBucket::new(
                budget.per_sec / 2.0,
                (budget.burst / 2).max(1),
                now,
            )),
            pacing: FollowPacing::default(),
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

    fn lock(bucket: &Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
        bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_throttle(&self, e: &AciError) {
        if let AciError::Throttled { retry_after } = e {
            let now = Instant::now();
            Self::lock(&self.bucket).throttled(now + *retry_after, now);
        }
    }

    /// One container's log (and, with `follow`, a [`Follower`] for what
    /// comes next), if the budget has room now (it never waits).
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
        if let Some(retry_after) = Self::lock(&self.bucket).take(Instant::now()) {
            return Err(LogsError::Budget {
                per_sec: self.budget.per_sec,
                burst: self.budget.burst,
                retry_after,
            });
        }
        let stamped = options.needs_times();
        // A follower reads the window its polls read, whatever tailLines
        // shows: its cursor counts the lines sharing the newest time, and a
        // shorter read would cut some of them off, so the first poll would
        // send them again (lines appended together share their time).
        let tail = match options.tail_lines {
            Some(n) if options.follow => Some(n.max(u64::from(FOLLOW_WINDOW))),
            t => t,
        };
        let aci_options = LogOptions {
            tail: tail.map(|t| u32::try_from(t).unwrap_or(u32::MAX)),
            timestamps: stamped,
        };
        let result = container_logs(
            self.aci.as_ref(),
            &self.cluster_id,
            namespace,
            pod,
            container,
            aci_options,
        )
        .await;
        if let Err(LogsError::Aci(e)) = &result {
            self.note_throttle(e);
        }
        let (group, content) = result?;
        let lines = split_lines(&content, stamped);
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
            }
        });
        Ok(LogAnswer { text, follower })
    }

    /// Wait for a follower's poll token: from the followers' bucket, then
    /// from the shared one; `false` if that would pass `until`.
    async fn pace_follower(&self, until: Instant) -> bool {
        for bucket in [&self.follow_bucket, &self.bucket] {
            loop {
                let now = Instant::now();
                let Some(wait) = Self::lock(bucket).take(now) else {
                    break;
                };
                if now + wait > until {
                    return false;
                }
                tokio::time::sleep(wait).await;
            }
        }
        true
    }
}

/// The rest of a followed log: polls ACI every [`FollowPacing::every`],
/// each poll paced by the [`LogReader`]'s budget (one token, two ARM reads:
/// the group, for the container's state and tags, then the last
/// [`FOLLOW_WINDOW`] lines with their times), and yields only the lines the
/// [`Cursor`] has not seen. It ends when the container has terminated (after
/// sending the lines read with that state), when the group is gone or no
/// longer this pod's, on an ACI error that retrying will not fix, when
/// `limitBytes` is reached, or after [`FollowPacing::at_most`]; and when the
/// client goes, because the response body (this stream) is dropped. It
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
}

impl Follower {
    /// The next piece of the log, or `None` when the follow is over.
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let reader = Arc::clone(&self.reader);
        loop {
            if Instant::now() + reader.pacing.every > self.until {
                return None;
            }
            tokio::time::sleep(reader.pacing.every).await;
            if !reader.pace_follower(self.until).await {
                return None;
            }
            let group = match reader.aci.get(&self.group).await {
                Ok(Some(g)) => g,
                Ok(None) => return None,
                Err(e) if e.is_retryable() => {
                    reader.note_throttle(&e);
                    continue;
                }
                Err(_) => return None,
            };
            if !is_pods_group(&group, &reader.cluster_id, &self.namespace, &self.pod) {
                return None;
            }
            let ended = terminated(&group, &self.container);
            let options = LogOptions {
                tail: Some(FOLLOW_WINDOW),
                timestamps: true,
            };
            let content = match reader.aci.logs(&self.group, &self.container, options).await {
                Ok(c) => c,
                Err(e) if e.is_retryable() => {
                    reader.note_throttle(&e);
                    continue;
                }
                Err(_) => return None,
            };
            let lines = split_lines(&content, true);
            let fresh = self.cursor.fresh(&lines);
            let mut out = Vec::new();
            let full = render(
                &fresh,
                self.since,
                self.timestamps,
                &mut self.remaining,
                &mut out,
            );
            if full || ended {
                self.until = Instant::now();
            }
            if !out.is_empty() {
                return Some(out);
            }
            if full || ended {
                return None;
            }
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

    /// One group `web/api`, counting every call.
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
                g.tags = BTreeMap::from([
                    (TAG_CLUSTER.to_string(), "c1".to_string()),
                    (TAG_NAMESPACE.to_string(), "web".to_string()),
                    (TAG_POD_NAME.to_string(), "api".to_string()),
                ]);
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

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_is_a_429_that_calls_nothing() {
        let aci = Arc::new(Counting::default());
        let reader = Arc::new(LogReader::new(
            aci.clone(),
            "c1",
            LogBudget {
                per_sec: 0.5,
                burst: 2,
            },
        ));
        for _ in 0..2 {
            let text = reader
                .read("web", "api", "app", &PodLogOptions::default())
                .await
                .map(|a| a.text);
            assert_eq!(text.ok().as_deref(), Some(&b"log of app\n"[..]));
        }
        assert_eq!(aci.calls.load(Ordering::SeqCst), 4, "two ARM reads each");
        let refused = reader
            .read("web", "api", "app", &PodLogOptions::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("over budget"));
        assert_eq!(aci.calls.load(Ordering::SeqCst), 4, "ACI not called");
        assert_eq!(
            refused.to_string(),
            "log read budget spent: this node answers at most 0.5/s container log requests from ACI (2 at once; --kubelet-log-qps, --kubelet-log-burst); retry in 2s"
        );
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            reader
                .read("web", "api", "app", &PodLogOptions::default())
                .await
                .is_ok(),
            "refilled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_arm_pauses_the_budget() {
        let aci = Arc::new(Counting {
            throttle: true,
            ..Counting::default()
        });
        let reader = Arc::new(LogReader::new(aci.clone(), "c1", LogBudget::default()));
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
