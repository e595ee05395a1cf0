//! HTTP surface of the emulator: ARM paths, auth, throttling, faults.

use super::state::{Admit, Fault, GroupKey, MetricSetting, MinuteValue, Op, PutError};
use super::{EmulatorState, Faults};
use crate::aci::model::*;
use crate::units::Timestamp;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const PROVIDER: &str = "providers/Microsoft.ContainerInstance";

pub fn router(state: EmulatorState) -> Router {
    let group = format!("/subscriptions/{{sub}}/resourceGroups/{{rg}}/{PROVIDER}/containerGroups");
    Router::new()
        .route(&group, get(list_rg))
        .route(
            &format!("{group}/{{name}}"),
            get(get_group).put(put_group).delete(delete_group),
        )
        .route(
            &format!("{group}/{{name}}/containers/{{container}}/logs"),
            get(logs),
        )
        .route(
            &format!("{group}/{{name}}/providers/Microsoft.Insights/metrics"),
            get(monitor_metrics),
        )
        .route(
            &format!("{group}/{{name}}/containers/{{container}}/exec"),
            axum::routing::post(exec),
        )
        .route(
            &format!("/subscriptions/{{sub}}/{PROVIDER}/containerGroups"),
            get(list_sub),
        )
        .route(
            &format!("/subscriptions/{{sub}}/{PROVIDER}/locations/{{loc}}/usages"),
            get(usages),
        )
        .route("/_emulator/faults", get(get_faults).post(post_faults))
        .route("/_emulator/groups", get(groups_snapshot))
        .route("/_emulator/subnets", get(get_subnets).post(post_subnet))
        .route(
            "/_emulator/groups/{name}/containers/{container}/logs",
            axum::routing::post(append_logs),
        )
        .route(
            "/_emulator/groups/{name}/metrics",
            axum::routing::post(set_metrics),
        )
        .route(
            "/_emulator/groups/{name}/containers/{container}/exec",
            axum::routing::post(set_exec_script),
        )
        .route("/_emulator/exec", get(exec_sessions))
        .fallback(|| async {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requested path is not an emulated ARM resource.",
            )
        })
        .with_state(state)
}

/// An ARM error answer: `{"error":{"code","message"}}` plus headers.
#[derive(Debug)]
struct ArmError {
    status: StatusCode,
    code: String,
    message: String,
    headers: Vec<(HeaderName, String)>,
}

impl ArmError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            headers: Vec::new(),
        }
    }
    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let body = ArmErrorBody {
            error: ArmErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

fn ratelimit_header(op: Op) -> HeaderName {
    HeaderName::from_static(if op.is_write() {
        "x-ms-ratelimit-remaining-subscription-writes"
    } else {
        "x-ms-ratelimit-remaining-subscription-reads"
    })
}

/// What the gate lets through: headers to add and a hang to apply after the
/// operation.
struct Pass {
    headers: Vec<(HeaderName, String)>,
    hang: Option<Duration>,
}

impl Pass {
    fn respond(self, status: StatusCode, body: Option<serde_json::Value>) -> Response {
        let mut resp = match body {
            Some(b) => (status, axum::Json(b)).into_response(),
            None => status.into_response(),
        };
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }

    /// Apply a hang fault after the operation ran: the client gives up,
    /// the work is done.
    async fn finish(self, status: StatusCode, body: Option<serde_json::Value>) -> Response {
        if let Some(hang) = self.hang {
            tokio::time::sleep(hang).await;
            return ArmError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "The gateway did not receive a response within the specified time period.",
            )
            .into_response();
        }
        self.respond(status, body)
    }
}

/// Auth → api-version → faults (latency, 500, 429) → ARM token bucket.
async fn gate(
    state: &EmulatorState,
    op: Op,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    subscription: &str,
    group: Option<&str>,
) -> Result<Pass, ArmError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let expected = state.lock().config.token.clone();
    match (token, expected) {
        (None, _) => {
            return Err(ArmError::new(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
            .header(
                header::WWW_AUTHENTICATE,
                "Bearer authorization_uri=\"https://login.microsoftonline.com/emulator\"",
            ));
        }
        (Some(t), Some(exp)) if t != exp => {
            return Err(ArmError::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            ));
        }
        _ => {}
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    let (fault, latency) = state.lock().fault_for(op, group);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Fault::ServerError => {
            return Err(ArmError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Encountered internal server error (injected by the emulator).",
            ));
        }
        Fault::Throttle => {
            return Err(throttled(op, subscription, 1));
        }
        _ => {}
    }
    let admit = state
        .lock()
        .admit(subscription, op.is_write(), Instant::now());
    match admit {
        Admit::Ok { remaining } => Ok(Pass {
            headers: vec![
                (ratelimit_header(op), remaining.to_string()),
                (
                    HeaderName::from_static("x-ms-request-id"),
                    format!("emulator-{}", op.name()),
                ),
            ],
            hang: match fault {
                Fault::Hang(d) => Some(d),
                _ => None,
            },
        }),
        Admit::Throttled { retry_after_secs } => Err(throttled(op, subscription, retry_after_secs)),
    }
}

fn throttled(op: Op, subscription: &str, retry_after_secs: u64) -> ArmError {
    let kind = if op.is_write() { "write" } else { "read" };
    ArmError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "SubscriptionRequestsThrottled",
        format!(
            "Number of '{kind}' requests for subscription '{subscription}' exceeded. \
             Please try again after '{retry_after_secs}' seconds."
        ),
    )
    .header(header::RETRY_AFTER, retry_after_secs.to_string())
    .header(ratelimit_header(op), "0")
}

fn not_found(rg: &str, name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The Resource '{RESOURCE_TYPE}/{name}' under resource group '{rg}' was not found."),
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

type Q = Query<HashMap<String, String>>;

async fn put_group(
    State(state): State<EmulatorState>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Put, &headers, &q, &sub, Some(&name)).await?;
    let group: ContainerGroup = serde_json::from_slice(&body).map_err(|e| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: {e}"),
        )
    })?;
    let result = state.lock().put(
        GroupKey::new(&sub, &rg, &name),
        &rg,
        group,
        Instant::now(),
        Timestamp::now_wall(),
    );
    match result {
        Ok((g, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(pass.finish(status, to_json(&g)).await)
        }
        Err(PutError::Invalid { code, message }) => {
            Err(ArmError::new(StatusCode::BAD_REQUEST, code, message))
        }
        Err(PutError::Quota { message }) => Err(ArmError::new(
            StatusCode::CONFLICT,
            "ContainerGroupQuotaReached",
            message,
        )),
        Err(PutError::Capacity { message }) => Err(ArmError::new(
            StatusCode::CONFLICT,
            "ServiceUnavailable",
            message,
        )),
    }
}

async fn get_group(
    State(state): State<EmulatorState>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Get, &headers, &q, &sub, Some(&name)).await?;
    let g = state
        .lock()
        .get(&GroupKey::new(&sub, &rg, &name), Instant::now());
    match g {
        Some(g) => Ok(pass.finish(StatusCode::OK, to_json(&g)).await),
        None => Err(not_found(&rg, &name)),
    }
}

async fn delete_group(
    State(state): State<EmulatorState>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Delete, &headers, &q, &sub, Some(&name)).await?;
    let key = GroupKey::new(&sub, &rg, &name);
    let deleted = {
        let mut w = state.lock();
        let last = w.get(&key, Instant::now());
        w.delete(&key).then_some(last).flatten()
    };
    match deleted {
        Some(g) => Ok(pass.finish(StatusCode::OK, to_json(&g)).await),
        None => Ok(pass.finish(StatusCode::NO_CONTENT, None).await),
    }
}

fn page(
    groups: Vec<ContainerGroup>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    path: &str,
    page_size: usize,
) -> ListResult<ContainerGroup> {
    let skip: usize = q
        .get("$skipToken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let total = groups.len();
    let value: Vec<ContainerGroup> = groups.into_iter().skip(skip).take(page_size).collect();
    let next = skip + value.len();
    let next_link = (next < total).then(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let api = q
            .get("api-version")
            .map(String::as_str)
            .unwrap_or(API_VERSION);
        format!("http://{host}{path}?api-version={api}&$skipToken={next}")
    });
    ListResult { value, next_link }
}

async fn list_rg(
    State(state): State<EmulatorState>,
    Path((sub, rg)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::List, &headers, &q, &sub, None).await?;
    let (groups, page_size) = {
        let w = state.lock();
        (w.list(&sub, Some(&rg), Instant::now()), w.config.page_size)
    };
    let path = format!("/subscriptions/{sub}/resourceGroups/{rg}/{PROVIDER}/containerGroups");
    let result = page(groups, &q, &headers, &path, page_size);
    Ok(pass.finish(StatusCode::OK, to_json(&result)).await)
}

async fn list_sub(
    State(state): State<EmulatorState>,
    Path(sub): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::List, &headers, &q, &sub, None).await?;
    let (groups, page_size) = {
        let w = state.lock();
        (w.list(&sub, None, Instant::now()), w.config.page_size)
    };
    let path = format!("/subscriptions/{sub}/{PROVIDER}/containerGroups");
    let result = page(groups, &q, &headers, &path, page_size);
    Ok(pass.finish(StatusCode::OK, to_json(&result)).await)
}

async fn logs(
    State(state): State<EmulatorState>,
    Path((sub, rg, name, container)): Path<(String, String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Logs, &headers, &q, &sub, Some(&name)).await?;
    let tail = match q.get("tail") {
        None => None,
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("The 'tail' parameter '{t}' is not a non-negative integer."),
            )
        })?),
    };
    let timestamps = match q.get("timestamps").map(|t| t.to_ascii_lowercase()) {
        None => false,
        Some(t) if t == "true" => true,
        Some(t) if t == "false" => false,
        Some(t) => {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("The 'timestamps' parameter '{t}' is not a boolean."),
            ));
        }
    };
    let key = GroupKey::new(&sub, &rg, &name);
    let (exists, content) = {
        let w = state.lock();
        (
            w.get(&key, Instant::now()).is_some(),
            w.logs(&key, &container, tail, timestamps, Instant::now()),
        )
    };
    match (exists, content) {
        (_, Some(content)) => Ok(pass
            .finish(StatusCode::OK, to_json(&Logs { content }))
            .await),
        (false, None) => Err(not_found(&rg, &name)),
        (true, None) => Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            format!("The container '{container}' is not found in container group '{name}'."),
        )),
    }
}

/// ARM's executeCommand: the group and container must exist (404 as for
/// logs); the body is `{command, terminalSize: {rows, cols}}`; the answer
/// `{webSocketUri, password}` (the REST reference "Containers - Execute
/// Command", learn.microsoft.com/rest/api/container-instances/containers/execute-command).
async fn exec(
    State(state): State<EmulatorState>,
    Path((sub, rg, name, container)): Path<(String, String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Exec, &headers, &q, &sub, Some(&name)).await?;
    let request: ExecRequestBody = serde_json::from_slice(&body).map_err(|e| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )
    })?;
    let key = GroupKey::new(&sub, &rg, &name);
    let group = state.lock().get(&key, Instant::now());
    let Some(group) = group else {
        return Err(not_found(&rg, &name));
    };
    if !group
        .properties
        .containers
        .iter()
        .any(|c| c.name == container)
    {
        return Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            format!("The container '{container}' is not found in container group '{name}'."),
        ));
    }
    let size = request.terminal_size.unwrap_or_default();
    let started = state.exec.start(
        &name,
        &container,
        request.command.as_deref().unwrap_or_default(),
        size.rows.unwrap_or_default(),
        size.cols.unwrap_or_default(),
    );
    match started {
        Ok((web_socket_uri, password)) => Ok(pass
            .finish(
                StatusCode::OK,
                to_json(&ExecResponse {
                    web_socket_uri,
                    password,
                }),
            )
            .await),
        Err(super::exec::StartError::NoListener) => Err(ArmError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "The emulator's exec socket is not listening (router used without Emulator::start).",
        )),
    }
}

/// executeCommand's body as ARM reads it: both fields optional.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecRequestBody {
    command: Option<String>,
    terminal_size: Option<ExecSizeBody>,
}

#[derive(serde::Deserialize, Default)]
struct ExecSizeBody {
    rows: Option<i32>,
    cols: Option<i32>,
}

async fn usages(
    State(state): State<EmulatorState>,
    Path((sub, loc)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, ArmError> {
    let pass = gate(&state, Op::Usage, &headers, &q, &sub, None).await?;
    let value = state.lock().usage(&sub, &loc);
    let result = ListResult {
        value,
        next_link: None,
    };
    Ok(pass.finish(StatusCode::OK, to_json(&result)).await)
}

async fn get_faults(State(state): State<EmulatorState>) -> Response {
    axum::Json(state.faults()).into_response()
}

async fn post_faults(
    State(state): State<EmulatorState>,
    body: Bytes,
) -> Result<Response, ArmError> {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("fault plan: {e}"),
        )
    })?;
    let vanished = state
        .set_faults(faults)
        .map_err(|e| ArmError::new(StatusCode::BAD_REQUEST, "InvalidRequestContent", e))?;
    Ok(
        axum::Json(serde_json::json!({ "faults": state.faults(), "vanished": vanished }))
            .into_response(),
    )
}

/// The body of `POST /_emulator/groups/{name}/containers/{container}/logs`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendLogs {
    lines: Vec<String>,
}

/// Append output lines to a container of every group of that name,
/// stamped now: 200 `{"groups": N}`, 404 when no group has that container.
async fn append_logs(
    State(state): State<EmulatorState>,
    Path((name, container)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let lines: AppendLogs = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": format!("body: {e}") })),
            )
                .into_response();
        }
    };
    let groups = state.append_logs(&name, &container, &lines.lines);
    if groups == 0 {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": format!("no group {name:?} with a container {container:?}")
            })),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "groups": groups })).into_response()
}

/// Script the exec sessions of a container (any group of that name): the
/// body is an [`super::ExecScript`].
async fn set_exec_script(
    State(state): State<EmulatorState>,
    Path((name, container)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<super::ExecScript>(&body) {
        Ok(script) => {
            state.set_exec_script(&name, &container, script);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": format!("exec script: {e}") })),
        )
            .into_response(),
    }
}

async fn exec_sessions(State(state): State<EmulatorState>) -> Response {
    axum::Json(serde_json::json!({ "sessions": state.exec_sessions() })).into_response()
}

async fn get_subnets(State(state): State<EmulatorState>) -> Response {
    axum::Json(serde_json::json!({ "subnets": state.subnets() })).into_response()
}

/// Define a subnet: 200 with it, 400 with what is wrong.
async fn post_subnet(
    State(state): State<EmulatorState>,
    body: Bytes,
) -> Result<Response, ArmError> {
    let def: super::SubnetDefinition = serde_json::from_slice(&body).map_err(|e| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("subnet: {e}"),
        )
    })?;
    let subnet = state
        .define_subnet(def)
        .map_err(|e| ArmError::new(StatusCode::BAD_REQUEST, "InvalidRequestContent", e))?;
    Ok(axum::Json(subnet).into_response())
}

async fn groups_snapshot(State(state): State<EmulatorState>) -> Response {
    axum::Json(serde_json::json!({
        "groups": state.snapshot(),
        "counters": state.counters(),
    }))
    .into_response()
}

// ----------------------------------------------------------------------
// Azure Monitor metrics

/// Azure Monitor's error answer: `{"code","message"}` at the top level
/// (metrics_API.json 2018-01-01, `ErrorResponse`), unlike ARM's
/// `{"error":{...}}`.
struct MonitorError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl MonitorError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "BadRequest",
            message: message.into(),
        }
    }
}

impl IntoResponse for MonitorError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

/// The api-versions of `Microsoft.Insights/metrics` (azure-rest-api-specs
/// `monitor/resource-manager/Microsoft.Insights`).
const MONITOR_API_VERSIONS: [&str; 5] = [
    "2018-01-01",
    "2019-07-01",
    "2021-05-01",
    "2023-10-01",
    "2024-02-01",
];

/// ACI's metrics (Azure Monitor's supported metrics for
/// `Microsoft.ContainerInstance/containerGroups`): name, display name, unit.
const ACI_METRICS: [(&str, &str, &str); 4] = [
    ("CpuUsage", "CPU Usage", "Count"),
    ("MemoryUsage", "Memory Usage", "Bytes"),
    (
        "NetworkBytesReceivedPerSecond",
        "Network Bytes Received Per Second",
        "Bytes",
    ),
    (
        "NetworkBytesTransmittedPerSecond",
        "Network Bytes Transmitted Per Second",
        "Bytes",
    ),
];

/// Monitor's time grains (`interval`), in minutes; `FULL` is one point for
/// the whole timespan.
const GRAINS: [(&str, i64); 8] = [
    ("PT1M", 1),
    ("PT5M", 5),
    ("PT15M", 15),
    ("PT30M", 30),
    ("PT1H", 60),
    ("PT6H", 360),
    ("PT12H", 720),
    ("P1D", 1440),
];

const AGGREGATIONS: [&str; 5] = ["average", "minimum", "maximum", "total", "count"];

/// `$filter` on ACI's one dimension: every container, one, or none (the
/// group as one series).
enum ContainerFilter {
    All,
    One(String),
}

fn parse_filter(f: &str) -> Result<ContainerFilter, MonitorError> {
    let invalid = || {
        MonitorError::bad_request(format!(
            "Invalid $filter {f:?}: the metrics of {RESOURCE_TYPE} have one dimension, containerName (containerName eq '*' or containerName eq 'NAME')"
        ))
    };
    let (dimension, value) = f.trim().split_once(" eq ").ok_or_else(invalid)?;
    if !dimension.trim().eq_ignore_ascii_case("containerName") {
        return Err(invalid());
    }
    let value = value
        .trim()
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(invalid)?;
    Ok(if value == "*" {
        ContainerFilter::All
    } else {
        ContainerFilter::One(value.to_string())
    })
}

/// One point of a series over `minutes` (those with data), with the
/// aggregations asked for.
fn data_point(
    start: Timestamp,
    values: &[f64],
    aggregations: &[&str],
) -> crate::aci::monitor::DataPoint {
    let mut p = crate::aci::monitor::DataPoint {
        time_stamp: start.to_rfc3339(),
        ..Default::default()
    };
    let n = values.len() as f64;
    for a in aggregations {
        match *a {
            "count" => p.count = Some(n),
            _ if values.is_empty() => {}
            "average" => p.average = Some(values.iter().sum::<f64>() / n),
            "minimum" => p.minimum = values.iter().copied().reduce(f64::min),
            "maximum" => p.maximum = values.iter().copied().reduce(f64::max),
            "total" => p.total = Some(values.iter().sum()),
            _ => {}
        }
    }
    p
}

/// `GET {group}/providers/Microsoft.Insights/metrics`: ACI's metrics of one
/// group as Azure Monitor answers them.
async fn monitor_metrics(
    State(state): State<EmulatorState>,
    Path((sub, rg, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, Response> {
    use crate::aci::monitor as m;
    let pass = gate(&state, Op::Metrics, &headers, &q, &sub, Some(&name))
        .await
        .map_err(IntoResponse::into_response)?;
    let api = q.get("api-version").map(String::as_str).unwrap_or_default();
    if !MONITOR_API_VERSIONS.contains(&api) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for API version '{api}' for type 'metrics'. The supported api-versions are '{}'.",
                MONITOR_API_VERSIONS.join(", ")
            ),
        )
        .into_response());
    }
    let key = GroupKey::new(&sub, &rg, &name);
    let Some(location) = state.lock().location(&key) else {
        return Err(MonitorError {
            status: StatusCode::NOT_FOUND,
            code: "ResourceNotFound",
            message: format!(
                "The Resource '{RESOURCE_TYPE}/{name}' under resource group '{rg}' was not found."
            ),
        }
        .into_response());
    };
    let fail = |e: MonitorError| e.into_response();
    // Which metrics: CpuUsage when none is named.
    let mut metrics = Vec::new();
    for wanted in q
        .get("metricnames")
        .map(String::as_str)
        .unwrap_or(m::CPU_USAGE)
        .split(',')
        .map(str::trim)
    {
        let known = ACI_METRICS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                fail(MonitorError::bad_request(format!(
                    "Failed to find metric configuration for provider: Microsoft.ContainerInstance, resource Type: containerGroups, metric: {wanted}, Valid metrics: {}",
                    ACI_METRICS.map(|(n, _, _)| n).join(",")
                )))
            })?;
        metrics.push(*known);
    }
    let mut aggregations = Vec::new();
    for a in q
        .get("aggregation")
        .map(String::as_str)
        .unwrap_or("average")
        .split(',')
        .map(str::trim)
    {
        let known = AGGREGATIONS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(a))
            .ok_or_else(|| {
                fail(MonitorError::bad_request(format!(
                    "Invalid aggregation '{a}': use one or more of Average, Minimum, Maximum, Total, Count"
                )))
            })?;
        aggregations.push(*known);
    }
    let now_wall = Timestamp::now_wall();
    let span = match q.get("timespan") {
        None => m::MetricsSpan::last(Duration::from_secs(3600), now_wall),
        Some(t) => m::MetricsSpan::parse(t).map_err(|e| fail(MonitorError::bad_request(e)))?,
    };
    let interval = q.get("interval").map(String::as_str).unwrap_or("PT1M");
    let grain_minutes = if interval.eq_ignore_ascii_case("FULL") {
        None
    } else {
        Some(
            GRAINS
                .iter()
                .find(|(g, _)| g.eq_ignore_ascii_case(interval))
                .map(|(_, minutes)| *minutes)
                .ok_or_else(|| {
                    fail(MonitorError::bad_request(format!(
                        "Invalid time grain '{interval}': supported are {} and FULL",
                        GRAINS.map(|(g, _)| g).join(", ")
                    )))
                })?,
        )
    };
    let filter = q
        .get("$filter")
        .map(|f| parse_filter(f))
        .transpose()
        .map_err(fail)?;
    // With a $filter Monitor returns at most `top` series, 10 by default
    // (metrics_API.json, TopParameter).
    let top = match q.get("top") {
        None => 10,
        Some(t) => t.parse::<usize>().ok().filter(|t| *t >= 1).ok_or_else(|| {
            fail(MonitorError::bad_request(format!(
                "Invalid top '{t}': a positive integer"
            )))
        })?,
    };
    let minutes = state
        .lock()
        .metric_minutes(&key, span.start, span.end, Instant::now(), now_wall)
        .unwrap_or_default();
    // The series: per container, or the group as one (values summed).
    let mut series: Vec<(Option<String>, Vec<MinuteValue>)> = match &filter {
        Some(ContainerFilter::All) => minutes
            .into_iter()
            .map(|(c, values)| (Some(c), values))
            .collect(),
        Some(ContainerFilter::One(want)) => minutes
            .into_iter()
            .filter(|(c, _)| c == want)
            .map(|(c, values)| (Some(c), values))
            .collect(),
        None => {
            let mut total: Vec<MinuteValue> = Vec::new();
            for (_, values) in minutes {
                if total.is_empty() {
                    total = values;
                    continue;
                }
                for (t, v) in total.iter_mut().zip(values) {
                    t.1 = match (t.1, v.1) {
                        (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
                        (a, b) => a.or(b),
                    };
                }
            }
            vec![(None, total)]
        }
    };
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series.truncate(if filter.is_some() { top } else { 1 });
    let group_id =
        format!("/subscriptions/{sub}/resourceGroups/{rg}/{PROVIDER}/containerGroups/{name}");
    let value = metrics
        .iter()
        .map(|(metric, display, unit)| {
            let per_container = metric.eq_ignore_ascii_case(m::CPU_USAGE)
                || metric.eq_ignore_ascii_case(m::MEMORY_USAGE);
            let timeseries = if per_container {
                series
                    .iter()
                    .map(|(container, values)| {
                        let pick = |v: &(f64, f64)| {
                            if metric.eq_ignore_ascii_case(m::CPU_USAGE) {
                                v.0
                            } else {
                                v.1
                            }
                        };
                        let buckets: Vec<&[MinuteValue]> = match grain_minutes {
                            Some(g) => values.chunks(usize::try_from(g).unwrap_or(1)).collect(),
                            None => vec![&values[..]],
                        };
                        m::TimeSeries {
                            metadatavalues: container
                                .iter()
                                .map(|c| m::MetadataValue {
                                    name: m::LocalizableString {
                                        value: m::CONTAINER_DIMENSION.to_string(),
                                        localized_value: m::CONTAINER_DIMENSION.to_string(),
                                    },
                                    value: c.clone(),
                                })
                                .collect(),
                            data: buckets
                                .iter()
                                .filter_map(|b| {
                                    let start = b.first()?.0;
                                    let with_data: Vec<f64> = b
                                        .iter()
                                        .filter_map(|(_, v)| v.as_ref().map(pick))
                                        .collect();
                                    Some(data_point(start, &with_data, &aggregations))
                                })
                                .collect(),
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            m::Metric {
                id: format!("{group_id}/providers/Microsoft.Insights/metrics/{metric}"),
                kind: "Microsoft.Insights/metrics".to_string(),
                name: m::LocalizableString {
                    value: metric.to_string(),
                    localized_value: display.to_string(),
                },
                display_description: None,
                unit: unit.to_string(),
                timeseries,
                error_code: Some("Success".to_string()),
                error_message: None,
            }
        })
        .collect();
    let response = m::Response {
        cost: Some(0.0),
        timespan: span.to_query(),
        interval: Some(interval.to_string()),
        namespace: Some(RESOURCE_TYPE.to_string()),
        resourceregion: Some(location.to_ascii_lowercase()),
        value,
    };
    Ok(pass.finish(StatusCode::OK, to_json(&response)).await)
}

/// The body of `POST /_emulator/groups/{name}/metrics`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetMetrics {
    containers: std::collections::BTreeMap<String, ContainerMetrics>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerMetrics {
    cpu_millicores: f64,
    memory_bytes: f64,
}

/// Set what Monitor holds for containers of every group of that name:
/// 200 `{"groups": N}`; 400 for values that are not non-negative numbers
/// or times that are not whole minutes; 404 when no group has a container.
async fn set_metrics(
    State(state): State<EmulatorState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let refuse = |status: StatusCode, message: String| {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    };
    let body: SetMetrics = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let minute = |field: &str, t: &str| -> Result<Timestamp, String> {
        let at = Timestamp::parse_rfc3339(t).map_err(|e| format!("{field}: {e}"))?;
        if at.millis().rem_euclid(60_000) != 0 {
            return Err(format!(
                "{field}: {t} is not a whole minute (Monitor's finest grain for ACI is PT1M)"
            ));
        }
        Ok(at)
    };
    let from = match body.from.as_deref().map(|t| minute("from", t)).transpose() {
        Ok(Some(t)) => t,
        Ok(None) => {
            let now = Timestamp::now_wall().millis();
            Timestamp(now - now.rem_euclid(60_000))
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let to = match body.to.as_deref().map(|t| minute("to", t)).transpose() {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    if to.is_some_and(|to| to <= from) {
        return refuse(StatusCode::BAD_REQUEST, "to: not after from".to_string());
    }
    for (container, v) in &body.containers {
        for (field, x) in [
            ("cpuMillicores", v.cpu_millicores),
            ("memoryBytes", v.memory_bytes),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("containers.{container}.{field}: {x} is not a non-negative number"),
                );
            }
        }
    }
    // Every container must exist before anything is set.
    if let Some(missing) = body
        .containers
        .keys()
        .find(|c| !state.has_container(&name, c))
    {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no group {name:?} with a container {missing:?}"),
        );
    }
    let mut groups = 0;
    for (container, v) in &body.containers {
        let n = state.set_metrics(
            &name,
            container,
            MetricSetting {
                from,
                to,
                cpu_millicores: v.cpu_millicores,
                memory_bytes: v.memory_bytes,
            },
        );
        if n == 0 {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no group {name:?} with a container {container:?}"),
            );
        }
        groups = groups.max(n);
    }
    axum::Json(serde_json::json!({ "groups": groups })).into_response()
}
