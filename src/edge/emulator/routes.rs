//! HTTP surface of the IoT Hub emulator: the hub's paths, SAS checks,
//! throttling, error bodies; and the `/_emulator` control API.

use super::state::{Class, HubRefusal, World};
use super::{EmulatorState, Faults, NewDevice};
use crate::edge::model::{Configuration, HubErrorBody, QueriesTestInput, QuerySpecification};
use crate::edge::sas::SasToken;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine as _;
use serde::Deserialize;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

pub fn router(state: EmulatorState) -> Router {
    Router::new()
        .route("/configurations", get(list_configurations))
        .route("/configurations/testQueries", post(test_queries))
        .route(
            "/configurations/{id}",
            get(get_configuration)
                .put(put_configuration)
                .delete(delete_configuration),
        )
        .route("/devices/query", post(query_devices))
        .route("/twins/{device}", get(device_twin))
        .route("/twins/{device}/modules/{module}", get(module_twin))
        .route("/_emulator/devices", get(list_devices).post(add_device))
        .route("/_emulator/devices/{id}", patch(update_device))
        .route("/_emulator/faults", get(get_faults).post(set_faults))
        .route("/_emulator/counters", get(counters))
        .fallback(|| async {
            refusal(
                HubRefusal::new(
                    404,
                    "NotFound",
                    "The requested resource is not an emulated IoT Hub API.",
                ),
                "fallback",
            )
        })
        .with_state(state)
}

/// The hub's error answer.
fn refusal(r: HubRefusal, tracking: &str) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        axum::Json(HubErrorBody::new(r.code, &r.message, tracking)),
    )
        .into_response();
    if let Some(secs) = r.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unauthorized(why: &str) -> HubRefusal {
    HubRefusal::new(
        401,
        "IotHubUnauthorizedAccess",
        format!("Unauthorized: {why}"),
    )
}

/// Check the SAS token as the hub does.
fn authorize(state: &EmulatorState, headers: &HeaderMap, path: &str) -> Result<(), HubRefusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("no Authorization header"))?
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let token = SasToken::parse(value).map_err(|e| unauthorized(&e.to_string()))?;
    let name = token
        .key_name
        .as_deref()
        .ok_or_else(|| unauthorized("the token names no shared access policy (skn)"))?;
    let key = state
        .policies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, k)| k)
        .ok_or_else(|| unauthorized("unknown shared access policy"))?;
    let sr = token.resource_uri.to_lowercase();
    let host = state.host_name.to_lowercase();
    let resource = format!("{host}{}", path.to_lowercase());
    let covers = sr == host || (sr.starts_with(&format!("{host}/")) && resource.starts_with(&sr));
    if !covers {
        return Err(unauthorized("the token's resource (sr) is not this hub"));
    }
    if token.expiry_unix <= unix_now() {
        return Err(unauthorized("the token has expired"));
    }
    if !token.signed_by(key) {
        return Err(unauthorized("the signature does not match"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ApiQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    top: Option<String>,
}

/// Everything a hub request goes through before its operation: the
/// api-version, auth, then throttling. Counts the answer.
/// Which hub operation a request is: for counters, auth and throttling.
struct Call<'a> {
    method: &'static str,
    route: &'static str,
    /// The request path, for the token's `sr` check.
    path: &'a str,
    class: Class,
}

async fn hub_call<F>(
    state: &EmulatorState,
    call: Call<'_>,
    api: &ApiQuery,
    headers: &HeaderMap,
    op: F,
) -> Response
where
    F: FnOnce(&mut World, Instant) -> Result<Response, HubRefusal>,
{
    let (resp, latency) = {
        let now = Instant::now();
        let mut w = state.lock();
        let tracking = w.tracking_id();
        let write = matches!(call.method, "PUT" | "DELETE");
        let result = if api.api_version.as_deref().is_none_or(str::is_empty) {
            Err(HubRefusal::new(
                400,
                "InvalidProtocolVersion",
                "The api-version query parameter is required.",
            ))
        } else {
            authorize(state, headers, call.path)
                .and_then(|()| w.injected_failure())
                .and_then(|()| w.admit(call.class, now))
                .and_then(|()| op(&mut w, now))
                .and_then(|resp| w.lose_answer(write).map(|()| resp))
        };
        let resp = match result {
            Ok(r) => r,
            Err(r) => refusal(r, &tracking),
        };
        *w.counters
            .requests
            .entry(format!(
                "{} {} {}",
                call.method,
                call.route,
                resp.status().as_u16()
            ))
            .or_default() += 1;
        (resp, std::time::Duration::from_millis(w.faults.latency_ms))
    };
    // Latency is added after the operation, outside the lock: a client that
    // times out may have had its write applied.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    resp
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HubRefusal> {
    serde_json::from_slice(body).map_err(|e| {
        HubRefusal::new(
            400,
            "ArgumentInvalid",
            format!("The request body is not valid: {e}"),
        )
    })
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn put_configuration(
    State(state): State<EmulatorState>,
    Path(id): Path<String>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/configurations/{id}");
    hub_call(
        &state,
        Call {
            method: "PUT",
            route: "configurations/{id}",
            path: &path,
            class: Class::Configurations,
        },
        &api,
        &headers,
        |w, now| {
            let config: Configuration = json_body(&body)?;
            let stored = w.put_configuration(&id, if_match(&headers).as_deref(), config, now)?;
            Ok((StatusCode::OK, axum::Json(stored)).into_response())
        },
    )
    .await
}

async fn get_configuration(
    State(state): State<EmulatorState>,
    Path(id): Path<String>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/configurations/{id}");
    hub_call(
        &state,
        Call {
            method: "GET",
            route: "configurations/{id}",
            path: &path,
            class: Class::Configurations,
        },
        &api,
        &headers,
        |w, now| Ok(axum::Json(w.get_configuration(&id, now)?).into_response()),
    )
    .await
}

async fn delete_configuration(
    State(state): State<EmulatorState>,
    Path(id): Path<String>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/configurations/{id}");
    hub_call(
        &state,
        Call {
            method: "DELETE",
            route: "configurations/{id}",
            path: &path,
            class: Class::Configurations,
        },
        &api,
        &headers,
        |w, now| {
            w.delete_configuration(&id, if_match(&headers).as_deref(), now)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        },
    )
    .await
}

async fn list_configurations(
    State(state): State<EmulatorState>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
) -> Response {
    hub_call(
        &state,
        Call {
            method: "GET",
            route: "configurations",
            path: "/configurations",
            class: Class::Configurations,
        },
        &api,
        &headers,
        |w, now| {
            let top = match &api.top {
                None => None,
                Some(t) => Some(t.parse::<usize>().map_err(|_| {
                    HubRefusal::new(
                        400,
                        "ArgumentInvalid",
                        format!("top '{t}' is not a non-negative integer."),
                    )
                })?),
            };
            Ok(axum::Json(w.list_configurations(top, now)).into_response())
        },
    )
    .await
}

async fn test_queries(
    State(state): State<EmulatorState>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hub_call(
        &state,
        Call {
            method: "POST",
            route: "configurations/testQueries",
            path: "/configurations/testQueries",
            class: Class::Configurations,
        },
        &api,
        &headers,
        |w, _| {
            let input: QueriesTestInput = json_body(&body)?;
            Ok(axum::Json(w.test_queries(&input)).into_response())
        },
    )
    .await
}

/// Continuation tokens are opaque to clients: base64 of the next offset.
fn encode_continuation(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("offset:{offset}"))
}

fn decode_continuation(token: &str) -> Result<usize, HubRefusal> {
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            HubRefusal::new(
                400,
                "ArgumentInvalid",
                "The continuation token is not valid.",
            )
        })
}

async fn query_devices(
    State(state): State<EmulatorState>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hub_call(
        &state,
        Call {
            method: "POST",
            route: "devices/query",
            path: "/devices/query",
            class: Class::Queries,
        },
        &api,
        &headers,
        |w, now| {
            let spec: QuerySpecification = json_body(&body)?;
            let max = w.config.max_page_size;
            let page = headers
                .get("x-ms-max-item-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<usize>().ok())
                .map_or(max, |n| n.clamp(1, max));
            let offset = match headers
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
            {
                Some(t) if !t.is_empty() => decode_continuation(t)?,
                _ => 0,
            };
            let (rows, next) = w.query_page(&spec.query, offset, page, now)?;
            let mut resp = axum::Json(rows).into_response();
            resp.headers_mut()
                .insert("x-ms-item-type", HeaderValue::from_static("Twin"));
            if let Some(n) = next
                && let Ok(v) = HeaderValue::from_str(&encode_continuation(n))
            {
                resp.headers_mut().insert("x-ms-continuation", v);
            }
            Ok(resp)
        },
    )
    .await
}

async fn device_twin(
    State(state): State<EmulatorState>,
    Path(device): Path<String>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/twins/{device}");
    hub_call(
        &state,
        Call {
            method: "GET",
            route: "twins/{device}",
            path: &path,
            class: Class::Twins,
        },
        &api,
        &headers,
        |w, now| Ok(axum::Json(w.device_twin(&device, now)?).into_response()),
    )
    .await
}

async fn module_twin(
    State(state): State<EmulatorState>,
    Path((device, module)): Path<(String, String)>,
    Query(api): Query<ApiQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/twins/{device}/modules/{module}");
    hub_call(
        &state,
        Call {
            method: "GET",
            route: "twins/{device}/modules/{module}",
            path: &path,
            class: Class::Twins,
        },
        &api,
        &headers,
        |w, now| Ok(axum::Json(w.module_twin(&device, &module, now)?).into_response()),
    )
    .await
}

// ---- control API ----------------------------------------------------------

fn control_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

async fn list_devices(State(state): State<EmulatorState>) -> Response {
    axum::Json(state.devices()).into_response()
}

async fn add_device(State(state): State<EmulatorState>, body: Bytes) -> Response {
    let device: NewDevice = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut w = state.lock();
    match w.add_device(
        &device.device_id,
        device.tags,
        device.reported,
        device.iot_edge,
        Instant::now(),
    ) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(r) => control_error(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.message,
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceChange {
    online: Option<bool>,
    tags: Option<serde_json::Value>,
}

async fn update_device(
    State(state): State<EmulatorState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let change: DeviceChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut w = state.lock();
    match w.update_device(&id, change.online, change.tags, Instant::now()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => control_error(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.message,
        ),
    }
}

async fn get_faults(State(state): State<EmulatorState>) -> Response {
    axum::Json(state.faults()).into_response()
}

async fn set_faults(State(state): State<EmulatorState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            state.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => control_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn counters(State(state): State<EmulatorState>) -> Response {
    axum::Json(state.counters()).into_response()
}
