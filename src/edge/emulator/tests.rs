//! The control API and error bodies through the router, without a socket.

use super::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn state() -> EmulatorState {
    EmulatorState::new(EmulatorConfig {
        report_delay: Duration::ZERO,
        ..EmulatorConfig::default()
    })
    .expect("state")
}

async fn call(
    state: &EmulatorState,
    method: Method,
    uri: &str,
    auth: Option<String>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app(state.clone())
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn token(state: &EmulatorState) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    state
        .connection_string()
        .expect("connection string")
        .token(now + 600)
}

#[tokio::test]
async fn control_api_creates_devices_and_takes_them_offline() {
    let s = state();
    let device = json!({"deviceId": "d1", "tags": {"site": "munich"}});
    let (status, _) = call(
        &s,
        Method::POST,
        "/_emulator/devices",
        None,
        Some(device.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(&s, Method::POST, "/_emulator/devices", None, Some(device)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(
        &s,
        Method::POST,
        "/_emulator/devices",
        None,
        Some(json!({"deviceId": "d2", "colour": "red"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );

    let (status, _) = call(
        &s,
        Method::PATCH,
        "/_emulator/devices/d1",
        None,
        Some(json!({"online": false, "tags": {"site": "berlin"}})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, devices) = call(&s, Method::GET, "/_emulator/devices", None, None).await;
    assert_eq!(devices[0]["deviceId"], "d1");
    assert_eq!(devices[0]["online"], false);
    assert_eq!(devices[0]["tags"]["site"], "berlin");
    let (status, _) = call(
        &s,
        Method::PATCH,
        "/_emulator/devices/ghost",
        None,
        Some(json!({"online": true})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn control_api_sets_and_shows_faults() {
    let s = state();
    let faults = json!({
        "throttleNext": 2, "retryAfterSeconds": 3, "failingImages": ["bad:1"],
        "outage": false, "errorNext": 1, "loseAnswerNext": 0, "latencyMs": 0,
        "concurrentUpdateNext": 0
    });
    let (status, _) = call(
        &s,
        Method::POST,
        "/_emulator/faults",
        None,
        Some(faults.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, shown) = call(&s, Method::GET, "/_emulator/faults", None, None).await;
    assert_eq!(shown, faults);
    let (status, _) = call(
        &s,
        Method::POST,
        "/_emulator/faults",
        None,
        Some(json!({"throttle": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn errors_have_the_hubs_body_and_requests_are_counted() {
    let s = state();
    let (status, body) = call(&s, Method::GET, "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ErrorCode:")),
        "{body}"
    );
    let (status, body) = call(
        &s,
        Method::GET,
        "/configurations/missing?api-version=2021-04-12",
        Some(token(&s)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ErrorCode:ConfigurationNotFound;")),
        "{body}"
    );
    assert!(
        body["ExceptionMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("Tracking ID:"))
    );
    let (_, counters) = call(&s, Method::GET, "/_emulator/counters", None, None).await;
    assert_eq!(counters["requests"]["GET configurations/{id} 404"], 1);
}

#[tokio::test]
async fn device_twins_and_non_edge_devices() {
    let s = state();
    s.add_device(NewDevice {
        device_id: "sensor".into(),
        tags: json!({}),
        reported: json!({}),
        iot_edge: false,
    })
    .expect("device");
    let (status, twin) = call(
        &s,
        Method::GET,
        "/twins/sensor?api-version=2021-04-12",
        Some(token(&s)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(twin["capabilities"]["iotEdge"], false);
    let (status, body) = call(
        &s,
        Method::GET,
        "/twins/sensor/modules/$edgeAgent?api-version=2021-04-12",
        Some(token(&s)),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no $edgeAgent on a non-edge device: {body}"
    );
}

#[test]
fn configuration_is_checked_before_start() {
    for bad in [
        EmulatorConfig {
            hub_name: "x".into(),
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            policies: Vec::new(),
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            queries_per_minute: 0.0,
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            max_page_size: 0,
            ..EmulatorConfig::default()
        },
    ] {
        assert!(EmulatorState::new(bad).is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn devices_report_after_the_delay_in_tokio_time() {
    let s = EmulatorState::new(EmulatorConfig {
        report_delay: Duration::from_secs(30),
        ..EmulatorConfig::default()
    })
    .expect("state");
    s.add_device(NewDevice::edge("d1", json!({"site": "munich"})))
        .expect("device");
    let base = json!({
        "id": "base",
        "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "systemModules": {"edgeAgent": {"settings": {"image": "agent:1"}}, "edgeHub": {"settings": {"image": "hub:1"}}},
            "modules": {"web": {"settings": {"image": "nginx:1"}}}
        }}}},
        "targetCondition": "tags.site='munich'",
        "priority": 1
    });
    let (status, body) = call(
        &s,
        Method::PUT,
        "/configurations/base?api-version=2021-04-12",
        Some(token(&s)),
        Some(base),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let twin = |s: EmulatorState| async move {
        call(
            &s,
            Method::GET,
            "/twins/d1/modules/$edgeAgent?api-version=2021-04-12",
            Some(token(&s)),
            None,
        )
        .await
        .1
    };
    let before = twin(s.clone()).await;
    assert!(
        before["properties"]["reported"]["lastDesiredVersion"].is_null(),
        "{before}"
    );
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(twin(s.clone()).await["properties"]["reported"]["lastDesiredVersion"].is_null());
    tokio::time::advance(Duration::from_secs(1)).await;
    let after = twin(s.clone()).await;
    let reported = &after["properties"]["reported"];
    assert_eq!(
        reported["lastDesiredVersion"],
        after["properties"]["desired"]["$version"]
    );
    assert_eq!(reported["lastDesiredStatus"]["code"], 200);
    assert_eq!(reported["modules"]["web"]["runtimeStatus"], "running");
}
