//! Router-level tests (`oneshot`, no socket) with paused tokio time, so the
//! time-derived lifecycle is exercised without waiting.

use super::*;
use crate::aci::model::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const RG: &str = "/subscriptions/sub-1/resourceGroups/rg-burst/providers/Microsoft.ContainerInstance/containerGroups";
const V: &str = "api-version=2023-05-01";

fn group(name: &str, cores: f64, restart: &str, public_port: Option<u16>) -> ContainerGroup {
    ContainerGroup {
        name: name.to_string(),
        location: "westeurope".into(),
        tags: [(crate::aci::TAG_CLUSTER.to_string(), "c1".to_string())].into(),
        properties: ContainerGroupProperties {
            containers: vec![Container {
                name: "app".into(),
                properties: ContainerProperties {
                    image: "nginx:1.27".into(),
                    command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                    ports: public_port
                        .map(|p| ContainerPort {
                            protocol: Some("TCP".into()),
                            port: p,
                        })
                        .into_iter()
                        .collect(),
                    environment_variables: vec![EnvironmentVariable {
                        name: "TOKEN".into(),
                        value: None,
                        secure_value: Some("s3cr3t".into()),
                    }],
                    resources: ResourceRequirements {
                        requests: ResourceSpec {
                            cpu: cores,
                            memory_in_gb: 1.5,
                        },
                        limits: None,
                    },
                    ..Default::default()
                },
            }],
            restart_policy: Some(restart.into()),
            os_type: "Linux".into(),
            ip_address: public_port.map(|p| IpAddress {
                ip_type: "Public".into(),
                ports: vec![IpPort {
                    protocol: Some("TCP".into()),
                    port: p,
                }],
                dns_name_label: Some(format!("{name}-dns")),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn state_with(config: EmulatorConfig) -> EmulatorState {
    EmulatorState::new(config).expect("valid config")
}

async fn call(
    state: &EmulatorState,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    call_with_token(state, method, uri, body, Some("t0ken")).await
}

async fn call_with_token(
    state: &EmulatorState,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .expect("request");
    let resp = app(state.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, headers, json)
}

fn json(g: &ContainerGroup) -> serde_json::Value {
    serde_json::to_value(g).expect("serializable")
}

#[tokio::test(start_paused = true)]
async fn lifecycle_follows_time_and_speed() {
    let st = state_with(EmulatorConfig {
        speed: 10.0,
        ..Default::default()
    });
    let url = format!("{RG}/web-1?{V}");
    let (s, _, body) = call(
        &st,
        "PUT",
        &url,
        Some(json(&group("web-1", 1.0, "Always", Some(80)))),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["properties"]["provisioningState"], "Accepted");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "20.0.0.4");
    assert_eq!(
        body["properties"]["ipAddress"]["fqdn"],
        "web-1-dns.westeurope.azurecontainer.io"
    );
    assert!(
        body["properties"]["containers"][0]["properties"]["environmentVariables"][0]
            .get("secureValue")
            .is_none(),
        "secrets are never returned"
    );
    // 2 s Accepted + 3 s Creating at speed 10 = 0.5 s real time.
    tokio::time::advance(Duration::from_millis(300)).await;
    let (_, _, body) = call(&st, "GET", &url, None).await;
    assert_eq!(body["properties"]["provisioningState"], "Creating");
    assert_eq!(body["properties"]["instanceView"]["state"], "Pending");
    tokio::time::advance(Duration::from_millis(300)).await;
    let (_, _, body) = call(&st, "GET", &url, None).await;
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(body["properties"]["instanceView"]["state"], "Running");
    assert_eq!(
        body["properties"]["containers"][0]["properties"]["instanceView"]["currentState"]["state"],
        "Running"
    );
}

#[tokio::test(start_paused = true)]
async fn jobs_terminate_when_configured() {
    let st = state_with(EmulatorConfig {
        speed: 100.0,
        job_runs_for: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    let url = format!("{RG}/job-1?{V}");
    call(
        &st,
        "PUT",
        &url,
        Some(json(&group("job-1", 1.0, "Never", None))),
    )
    .await;
    let svc = format!("{RG}/svc-1?{V}");
    call(
        &st,
        "PUT",
        &svc,
        Some(json(&group("svc-1", 1.0, "Always", None))),
    )
    .await;
    tokio::time::advance(Duration::from_secs(1)).await; // 100 s emulated
    let (_, _, body) = call(&st, "GET", &url, None).await;
    assert_eq!(body["properties"]["instanceView"]["state"], "Succeeded");
    let cs = &body["properties"]["containers"][0]["properties"]["instanceView"]["currentState"];
    assert_eq!(
        (cs["state"].as_str(), cs["exitCode"].as_i64()),
        (Some("Terminated"), Some(0))
    );
    let status = crate::aci::translate::pod_status_from_group(
        &serde_json::from_value(body).expect("group parses"),
    );
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let (_, _, body) = call(&st, "GET", &svc, None).await;
    assert_eq!(
        body["properties"]["instanceView"]["state"], "Running",
        "Always groups keep running"
    );
}

#[tokio::test(start_paused = true)]
async fn put_is_idempotent_and_updates_restart() {
    let st = state_with(EmulatorConfig::default());
    let url = format!("{RG}/web-1?{V}");
    let g = group("web-1", 1.0, "Always", Some(80));
    let (s1, _, _) = call(&st, "PUT", &url, Some(json(&g))).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let (s2, _, body) = call(&st, "PUT", &url, Some(json(&g))).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(
        body["properties"]["provisioningState"], "Succeeded",
        "a no-op PUT restarts nothing"
    );
    let mut changed = g.clone();
    changed.properties.containers[0].properties.image = "nginx:1.28".into();
    let (s3, _, body) = call(&st, "PUT", &url, Some(json(&changed))).await;
    assert_eq!(s3, StatusCode::OK);
    assert_eq!(
        body["properties"]["provisioningState"], "Accepted",
        "an update re-provisions"
    );
    let c = st.counters();
    assert_eq!((c.creates, c.noop_puts, c.updates), (1, 1, 1));
    assert_eq!(c.creates_by_name.get("web-1"), Some(&1));
    assert_eq!(st.snapshot()[0].puts, 3);
}

#[tokio::test(start_paused = true)]
async fn auth_and_api_version_are_required() {
    let st = state_with(EmulatorConfig {
        token: Some("right".into()),
        ..Default::default()
    });
    let url = format!("{RG}/x?{V}");
    let (s, _, body) = call_with_token(&st, "GET", &url, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "AuthenticationFailed");
    let (s, _, body) = call_with_token(&st, "GET", &url, None, Some("wrong")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("InvalidAuthenticationToken"))
    );
    let (s, _, _) = call_with_token(&st, "GET", &url, None, Some("right")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, body) = call_with_token(&st, "GET", &format!("{RG}/x"), None, Some("right")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MissingApiVersionParameter"))
    );
}

#[tokio::test(start_paused = true)]
async fn validation_errors_are_arm_400s() {
    let st = state_with(EmulatorConfig::default());
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/Bad_Name?{V}"),
        Some(json(&group("x", 1.0, "Always", None))),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidResourceName"))
    );
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/ok?{V}"),
        Some(serde_json::json!({"nope": 1})),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestContent"))
    );
    let mut g = group("ok", 1.0, "Always", None);
    g.location.clear();
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/ok?{V}"), Some(json(&g))).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("LocationRequired"))
    );
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/big?{V}"),
        Some(json(&group("big", 6.0, "Always", None))),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("ServiceUnavailable"))
    );
}

#[tokio::test(start_paused = true)]
async fn quotas_use_arm_codes_and_usage_reports_them() {
    let st = state_with(EmulatorConfig {
        cores_limit: 3,
        groups_limit: 2,
        ..Default::default()
    });
    for (name, cores) in [("a", 2.0), ("b", 1.0)] {
        let (s, _, _) = call(
            &st,
            "PUT",
            &format!("{RG}/{name}?{V}"),
            Some(json(&group(name, cores, "Always", None))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/c?{V}"),
        Some(json(&group("c", 0.5, "Always", None))),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("ContainerGroupQuotaReached"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'ContainerGroups'"))
    );
    call(&st, "DELETE", &format!("{RG}/b?{V}"), None).await;
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/c?{V}"),
        Some(json(&group("c", 1.5, "Always", None))),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'StandardCores'")),
        "{body}"
    );
    let (s, _, body) = call(
        &st,
        "GET",
        &format!("/subscriptions/sub-1/providers/Microsoft.ContainerInstance/locations/westeurope/usages?{V}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let usage: ListResult<UsageEntry> = serde_json::from_value(body).expect("usage list");
    let u = crate::aci::Usage::from_entries(&usage.value).expect("has lines");
    assert_eq!(
        u.container_groups,
        crate::aci::Quota {
            limit: 2,
            current: 1
        }
    );
    assert_eq!(
        u.cores,
        crate::aci::Quota {
            limit: 3,
            current: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn write_bucket_throttles_with_retry_after_and_refills() {
    let st = state_with(EmulatorConfig {
        write_burst: 3,
        writes_per_sec: 0.5,
        ..Default::default()
    });
    let mut statuses = Vec::new();
    for i in 0..5 {
        let name = format!("g{i}");
        let (s, h, body) = call(
            &st,
            "PUT",
            &format!("{RG}/{name}?{V}"),
            Some(json(&group(&name, 0.5, "Always", None))),
        )
        .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "SubscriptionRequestsThrottled");
            assert_eq!(
                h.get("retry-after").and_then(|v| v.to_str().ok()),
                Some("2")
            );
        } else {
            assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-writes"));
        }
        statuses.push(s.as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    // Reads have their own bucket.
    let (s, h, _) = call(&st, "GET", &format!("{RG}?{V}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-reads"));
    tokio::time::advance(Duration::from_secs(2)).await;
    let (s, _, _) = call(
        &st,
        "PUT",
        &format!("{RG}/g9?{V}"),
        Some(json(&group("g9", 0.5, "Always", None))),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "the bucket refilled");
}

#[tokio::test(start_paused = true)]
async fn list_pages_and_omits_instance_views() {
    let st = state_with(EmulatorConfig {
        page_size: 2,
        ..Default::default()
    });
    for name in ["a", "b", "c"] {
        call(
            &st,
            "PUT",
            &format!("{RG}/{name}?{V}"),
            Some(json(&group(name, 0.5, "Always", None))),
        )
        .await;
    }
    let (_, _, body) = call(&st, "GET", &format!("{RG}?{V}"), None).await;
    let page1: ListResult<ContainerGroup> = serde_json::from_value(body).expect("list");
    assert_eq!(page1.value.len(), 2);
    assert!(page1.value[0].properties.instance_view.is_none());
    assert!(page1.value[0].properties.provisioning_state.is_some());
    let next = page1.next_link.expect("nextLink");
    let path = next
        .split_once("127.0.0.1")
        .map(|(_, p)| p.to_string())
        .expect("absolute link");
    let (_, _, body) = call(&st, "GET", &path, None).await;
    let page2: ListResult<ContainerGroup> = serde_json::from_value(body).expect("list");
    assert_eq!(
        page2
            .value
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert!(page2.next_link.is_none());
    let (_, _, body) = call(
        &st,
        "GET",
        &format!("/subscriptions/SUB-1/providers/Microsoft.ContainerInstance/containerGroups?{V}"),
        None,
    )
    .await;
    assert_eq!(
        body["value"].as_array().map(Vec::len),
        Some(2),
        "subscription list, case-insensitive"
    );
}

#[tokio::test(start_paused = true)]
async fn faults_inject_errors_and_vanish_groups() {
    let st = state_with(EmulatorConfig::default());
    call(
        &st,
        "PUT",
        &format!("{RG}/keep?{V}"),
        Some(json(&group("keep", 0.5, "Always", None))),
    )
    .await;
    call(
        &st,
        "PUT",
        &format!("{RG}/gone?{V}"),
        Some(json(&group("gone", 0.5, "Always", None))),
    )
    .await;
    let plan = serde_json::json!({"operations": {"get": {"errorRate": 1.0}}, "capacityErrorRate": 1.0, "vanish": ["gone"]});
    let (s, _, body) = call(&st, "POST", "/_emulator/faults", Some(plan)).await;
    assert_eq!((s, body["vanished"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, _, body) = call(&st, "GET", &format!("{RG}/keep?{V}"), None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("InternalServerError")
        )
    );
    let (s, _, body) = call(
        &st,
        "PUT",
        &format!("{RG}/new?{V}"),
        Some(json(&group("new", 0.5, "Always", None))),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("ServiceUnavailable"))
    );
    let names: Vec<String> = st.snapshot().into_iter().map(|g| g.name).collect();
    assert_eq!(names, ["keep"]);
    let (s, _, _) = call(
        &st,
        "POST",
        "/_emulator/faults",
        Some(serde_json::json!({"operations": {"get": {"errorRate": 2.0}}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a bad plan is refused");
    let (s, _, _) = call(
        &st,
        "POST",
        "/_emulator/faults",
        Some(serde_json::json!({"operations": {"bogus": {}}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(st.counters().faults_injected >= 2);
}

#[tokio::test(start_paused = true)]
async fn hung_writes_are_applied_before_the_timeout() {
    let st = state_with(EmulatorConfig::default());
    st.set_faults(Faults {
        operations: [(
            "put".to_string(),
            OperationFaults {
                timeout_rate: 1.0,
                ..Default::default()
            },
        )]
        .into(),
        hang_ms: 30_000,
        ..Default::default()
    })
    .expect("valid plan");
    let (s, _, _) = call(
        &st,
        "PUT",
        &format!("{RG}/slow?{V}"),
        Some(json(&group("slow", 0.5, "Always", None))),
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        st.snapshot().len(),
        1,
        "the group exists although the client saw a timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn logs_tail_and_delete_semantics() {
    let st = state_with(EmulatorConfig {
        speed: 1000.0,
        ..Default::default()
    });
    let url = format!("{RG}/web?{V}");
    call(
        &st,
        "PUT",
        &url,
        Some(json(&group("web", 0.5, "Always", None))),
    )
    .await;
    tokio::time::advance(Duration::from_millis(10)).await;
    let (s, _, body) = call(
        &st,
        "GET",
        &format!("{RG}/web/containers/app/logs?{V}&tail=2"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let content = body["content"].as_str().expect("content");
    assert_eq!(content.lines().count(), 2, "{content}");
    let (s, _, body) = call(
        &st,
        "GET",
        &format!("{RG}/web/containers/nope/logs?{V}"),
        None,
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ContainerNotFound"))
    );
    let (s, _, _) = call(&st, "DELETE", &url, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&st, "DELETE", &url, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, body) = call(&st, "GET", &url, None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
}

#[tokio::test(start_paused = true)]
async fn logs_carry_line_times_and_appended_output() {
    let st = state_with(EmulatorConfig {
        speed: 1000.0,
        ..Default::default()
    });
    let url = format!("{RG}/web?{V}");
    call(
        &st,
        "PUT",
        &url,
        Some(json(&group("web", 0.5, "Always", None))),
    )
    .await;
    tokio::time::advance(Duration::from_millis(10)).await;
    let (s, _, body) = call(
        &st,
        "POST",
        "/_emulator/groups/web/containers/app/logs",
        Some(serde_json::json!({ "lines": ["hello", "two\nlines"] })),
    )
    .await;
    assert_eq!((s, body["groups"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, _, _) = call(
        &st,
        "POST",
        "/_emulator/groups/web/containers/nope/logs",
        Some(serde_json::json!({ "lines": ["x"] })),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let logs = |q: &'static str| {
        let st = st.clone();
        async move {
            call(
                &st,
                "GET",
                &format!("{RG}/web/containers/app/logs?{V}{q}"),
                None,
            )
            .await
        }
    };
    let (_, _, body) = logs("&tail=3").await;
    assert_eq!(body["content"], "hello\ntwo\nlines\n");
    // timestamps=true: an RFC 3339 time and a space before every line.
    let (_, _, body) = logs("&tail=3&timestamps=true").await;
    let content = body["content"].as_str().expect("content");
    for (line, text) in content.lines().zip(["hello", "two", "lines"]) {
        let (t, rest) = line.split_once(' ').expect("a time first");
        assert!(crate::units::Timestamp::parse_rfc3339(t).is_ok(), "{line}");
        assert_eq!(rest, text);
    }
    let (_, _, body) = logs("&timestamps=False").await;
    assert!(
        body["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("[emulator] pulling"))
    );
    let (s, _, body) = logs("&timestamps=yes").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidParameter"))
    );
    // Appended output goes with the group.
    call(&st, "DELETE", &url, None).await;
    call(
        &st,
        "PUT",
        &url,
        Some(json(&group("web", 0.5, "Always", None))),
    )
    .await;
    let (_, _, body) = logs("").await;
    assert!(
        !body["content"]
            .as_str()
            .unwrap_or_default()
            .contains("hello"),
        "{body}"
    );
}

#[test]
fn config_is_checked() {
    assert!(
        EmulatorState::new(EmulatorConfig {
            speed: 0.0,
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        EmulatorState::new(EmulatorConfig {
            ip_range_prefix: 31,
            ..Default::default()
        })
        .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn failing_on_failure_jobs_restart_and_count() {
    let st = state_with(EmulatorConfig {
        speed: 100.0,
        job_runs_for: Some(Duration::from_secs(10)),
        job_exit_code: 2,
        ..Default::default()
    });
    let retrying = format!("{RG}/retry?{V}");
    call(
        &st,
        "PUT",
        &retrying,
        Some(json(&group("retry", 1.0, "OnFailure", None))),
    )
    .await;
    let never = format!("{RG}/once?{V}");
    call(
        &st,
        "PUT",
        &never,
        Some(json(&group("once", 1.0, "Never", None))),
    )
    .await;
    // 5 s provisioning + 35 s of runs of 10 s = 3 restarts (emulated).
    tokio::time::advance(Duration::from_millis(400)).await;
    let (_, _, body) = call(&st, "GET", &retrying, None).await;
    assert_eq!(body["properties"]["instanceView"]["state"], "Running");
    let view = &body["properties"]["containers"][0]["properties"]["instanceView"];
    assert_eq!(view["restartCount"], 3);
    assert_eq!(view["previousState"]["exitCode"], 2);
    let status =
        crate::aci::translate::pod_status_from_group(&serde_json::from_value(body).expect("group"));
    let cs = &status.container_statuses.as_ref().expect("statuses")[0];
    assert_eq!(cs.restart_count, 3);
    assert_eq!(
        cs.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(2)
    );
    let (_, _, body) = call(&st, "GET", &never, None).await;
    assert_eq!(body["properties"]["instanceView"]["state"], "Failed");
    let status =
        crate::aci::translate::pod_status_from_group(&serde_json::from_value(body).expect("group"));
    assert_eq!(status.phase.as_deref(), Some("Failed"));
}

#[tokio::test(start_paused = true)]
async fn faults_aimed_at_one_group_leave_the_others_alone() {
    let st = state_with(EmulatorConfig::default());
    for name in ["good", "bad"] {
        let (s, _, _) = call(
            &st,
            "PUT",
            &format!("{RG}/{name}?{V}"),
            Some(json(&group(name, 0.5, "Always", None))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let plan = serde_json::json!({
        "groups": {"bad": {"get": {"errorRate": 1.0}, "*": {"throttleRate": 1.0}}}
    });
    let (s, _, body) = call(&st, "POST", "/_emulator/faults", Some(plan)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["faults"]["groups"]["bad"]["get"]["errorRate"], 1.0);

    let status = |s: &EmulatorState, method: &'static str, name: &'static str| {
        let st = s.clone();
        async move {
            let body = (method == "PUT").then(|| json(&group(name, 0.5, "Always", None)));
            call(&st, method, &format!("{RG}/{name}?{V}"), body).await.0
        }
    };
    assert_eq!(
        status(&st, "GET", "bad").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        status(&st, "PUT", "bad").await,
        StatusCode::TOO_MANY_REQUESTS,
        "`*` covers the group's other operations"
    );
    assert_eq!(status(&st, "GET", "good").await, StatusCode::OK);
    assert_eq!(status(&st, "PUT", "good").await, StatusCode::OK);
    let (s, _, _) = call(&st, "GET", &format!("{RG}?{V}"), None).await;
    assert_eq!(s, StatusCode::OK, "lists are not aimed at a group");

    // The other way round: everything fails except one exempted group.
    st.set_faults(Faults {
        operations: [(
            "*".to_string(),
            OperationFaults {
                error_rate: 1.0,
                ..Default::default()
            },
        )]
        .into(),
        groups: [(
            "good".to_string(),
            [("*".to_string(), OperationFaults::default())].into(),
        )]
        .into(),
        ..Default::default()
    })
    .expect("valid plan");
    assert_eq!(status(&st, "GET", "good").await, StatusCode::OK);
    assert_eq!(
        status(&st, "GET", "bad").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    for bad in [
        serde_json::json!({"groups": {"bad": {"list": {}}}}),
        serde_json::json!({"groups": {"bad": {"get": {"errorRate": 1.5}}}}),
        serde_json::json!({"groups": {"": {"get": {}}}}),
    ] {
        let (s, _, body) = call(&st, "POST", "/_emulator/faults", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
}

#[tokio::test(start_paused = true)]
async fn provisioning_fails_for_named_groups_only() {
    let st = state_with(EmulatorConfig {
        speed: 10.0,
        ..Default::default()
    });
    let put = |name: &'static str| {
        let st = st.clone();
        async move {
            call(
                &st,
                "PUT",
                &format!("{RG}/{name}?{V}"),
                Some(json(&group(name, 0.5, "Always", None))),
            )
            .await
            .0
        }
    };
    assert_eq!(put("early").await, StatusCode::CREATED);
    let detail = "ErrImagePull: pull access denied for nginx:1.27";
    st.set_faults(Faults {
        fail_provisioning: [
            ("early".to_string(), detail.to_string()),
            ("bad".to_string(), detail.to_string()),
        ]
        .into(),
        ..Default::default()
    })
    .expect("valid plan");
    assert_eq!(put("bad").await, StatusCode::CREATED, "accepted first");
    assert_eq!(put("good").await, StatusCode::CREATED);

    let get = |name: &'static str| {
        let st = st.clone();
        async move {
            let (s, _, body) = call(&st, "GET", &format!("{RG}/{name}?{V}"), None).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            serde_json::from_value::<ContainerGroup>(body).expect("group")
        }
    };
    let creating = get("bad").await;
    assert_eq!(
        creating.properties.provisioning_state.as_deref(),
        Some("Accepted")
    );
    // 2 s Accepted + 3 s Creating at speed 10 = 0.5 s.
    tokio::time::advance(Duration::from_millis(600)).await;
    let bad = get("bad").await;
    assert_eq!(bad.properties.provisioning_state.as_deref(), Some("Failed"));
    let view = bad
        .properties
        .instance_view
        .as_ref()
        .expect("instance view");
    assert_eq!(view.state.as_deref(), Some("Failed"));
    assert_eq!(
        view.events.last().and_then(|e| e.message.as_deref()),
        Some(detail)
    );
    let container = bad.properties.containers[0]
        .properties
        .instance_view
        .as_ref()
        .and_then(|v| v.current_state.as_ref())
        .expect("container state");
    assert_eq!(
        (container.state.as_str(), container.detail_status.as_deref()),
        ("Waiting", Some(detail))
    );
    let status = crate::aci::translate::pod_status_from_group(&bad);
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains(detail)),
        "{:?}",
        status.message
    );
    for name in ["good", "early"] {
        let g = get(name).await;
        assert_eq!(
            g.properties.provisioning_state.as_deref(),
            Some("Succeeded"),
            "{name}: only groups created while named fail"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn put_accepts_a_body_without_name_id_or_type() {
    // ARM takes the name from the URL; `name`, `id` and `type` in the body
    // are optional (read-only or redundant). `location` is required.
    let st = state_with(EmulatorConfig::default());
    let mut body = json(&group("named-by-url", 1.0, "Always", None));
    let obj = body.as_object_mut().expect("object");
    obj.remove("name");
    obj.remove("id");
    obj.remove("type");
    let (s, _, answer) = call(&st, "PUT", &format!("{RG}/named-by-url?{V}"), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["name"], "named-by-url");
    assert!(
        answer["id"]
            .as_str()
            .is_some_and(|id| id.ends_with("/containerGroups/named-by-url")),
        "{answer}"
    );
    assert_eq!(answer["type"], RESOURCE_TYPE);

    // Without `location` ARM refuses.
    let mut body = json(&group("no-location", 1.0, "Always", None));
    body.as_object_mut().expect("object").remove("location");
    let (s, _, answer) = call(&st, "PUT", &format!("{RG}/no-location?{V}"), Some(body)).await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("LocationRequired"))
    );

    // Without `osType`, ARM's own wording.
    let mut body = json(&group("no-os", 1.0, "Always", None));
    body["properties"]
        .as_object_mut()
        .expect("object")
        .remove("osType");
    let (s, _, answer) = call(&st, "PUT", &format!("{RG}/no-os?{V}"), Some(body)).await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidOsType"))
    );
    assert_eq!(
        answer["error"]["message"],
        "The 'osType' for container group 'no-os' is invalid. The value must be one of 'Windows,Linux'."
    );
}

/// A group of containers (requests, limits) in cores and GB.
fn group_with_resources(
    name: &str,
    containers: &[(&str, ResourceSpec, Option<ResourceSpec>)],
) -> ContainerGroup {
    let mut g = group(name, 1.0, "Always", None);
    let template = g.properties.containers[0].clone();
    g.properties.containers = containers
        .iter()
        .map(|(cname, requests, limits)| {
            let mut c = template.clone();
            c.name = cname.to_string();
            c.properties.resources = ResourceRequirements {
                requests: *requests,
                limits: *limits,
            };
            c
        })
        .collect();
    g
}

fn res(cpu: f64, memory_in_gb: f64) -> ResourceSpec {
    ResourceSpec { cpu, memory_in_gb }
}

#[tokio::test(start_paused = true)]
async fn limits_below_requests_are_refused_as_arm_does() {
    let st = state_with(EmulatorConfig::default());
    let g = group_with_resources("worker", &[("worker", res(2.0, 4.0), Some(res(1.0, 1.5)))]);
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/worker?{V}"), Some(json(&g))).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("ResourceLimitsLessThanRequests")
        ),
        "{body}"
    );
    // ARM's wording, "contain group" included.
    assert_eq!(
        body["error"]["message"],
        "The resource requirement '{\"requests\":{\"memoryInGB\":4.0,\"cpu\":2.0},\"limits\":{\"memoryInGB\":1.5,\"cpu\":1.0}}' \
         in container 'worker' of contain group 'worker' is invalid. The 'Cpu' limit value must be greater than or equal to the request value."
    );
    let g = group_with_resources("mem", &[("app", res(2.0, 3.0), Some(res(2.0, 2.0)))]);
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/mem?{V}"), Some(json(&g))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(
                "The 'MemoryInGB' limit value must be greater than or equal to the request value."
            )),
        "{body}"
    );
    assert!(st.snapshot().is_empty(), "nothing was created");
}

#[tokio::test(start_paused = true)]
async fn a_limit_above_the_groups_total_request_is_refused_as_arm_does() {
    let st = state_with(EmulatorConfig::default());
    // The usual Burstable pod: requests 0.5 CPU, limit 1.
    let g = group_with_resources("web", &[("nginx", res(0.5, 0.6), Some(res(1.0, 0.6)))]);
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/web?{V}"), Some(json(&g))).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("ContainerLimitGreaterThanContainerGroupTotalRequest")
        ),
        "{body}"
    );
    assert_eq!(
        body["error"]["message"],
        "The 'Cpu' limit '1' in container 'nginx' is greater than the total request '0.5' of container group 'web'."
    );
    // Memory, and a total summed over containers (0.1 + 0.2 is 0.3, not 0.30000000000000004).
    let g = group_with_resources(
        "pair",
        &[
            ("a", res(0.1, 1.0), Some(res(0.3, 3.0))),
            ("b", res(0.2, 1.0), None),
        ],
    );
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/pair?{V}"), Some(json(&g))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "The 'MemoryInGB' limit '3' in container 'a' is greater than the total request '2' of container group 'pair'."
    );
    // A limit up to the group's total request is fine: one container may use
    // what the other requested.
    let g = group_with_resources(
        "pair",
        &[
            ("a", res(0.1, 1.0), Some(res(0.3, 2.0))),
            ("b", res(0.2, 1.0), None),
        ],
    );
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/pair?{V}"), Some(json(&g))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

#[tokio::test(start_paused = true)]
async fn exec_answers_as_arms_execute_command() {
    let st = state_with(EmulatorConfig {
        speed: 1000.0,
        ..Default::default()
    });
    call(
        &st,
        "PUT",
        &format!("{RG}/web?{V}"),
        Some(json(&group("web", 0.5, "Always", None))),
    )
    .await;
    let exec = |g: &str, c: &str| format!("{RG}/{g}/containers/{c}/exec?{V}");
    let body = serde_json::json!({"command": "/bin/sh", "terminalSize": {"rows": 30, "cols": 100}});
    // Without the exec socket (a router without Emulator::start): 500.
    let (s, _, answer) = call(&st, "POST", &exec("web", "app"), Some(body.clone())).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    st.exec.set_base("ws://127.0.0.1:1".into());
    // ARM's refusals.
    let (s, _, _) =
        call_with_token(&st, "POST", &exec("web", "app"), Some(body.clone()), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, answer) = call(&st, "POST", &exec("nope", "app"), Some(body.clone())).await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFound"))
    );
    let (s, _, answer) = call(&st, "POST", &exec("web", "nope"), Some(body.clone())).await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ContainerNotFound"))
    );
    let (s, _, answer) = call(
        &st,
        "POST",
        &exec("web", "app"),
        Some(serde_json::json!([1])),
    )
    .await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestContent"))
    );
    // A session: its socket and password; a write for ARM's throttling.
    let (s, headers, answer) = call(&st, "POST", &exec("web", "app"), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    let uri = answer["webSocketUri"].as_str().unwrap_or_default();
    assert!(uri.starts_with("ws://127.0.0.1:1/exec/"), "{uri}");
    let password = answer["password"].as_str().unwrap_or_default();
    assert_eq!(password.len(), 32, "{password}");
    assert!(headers.contains_key("x-ms-ratelimit-remaining-subscription-writes"));
    let sessions = st.exec_sessions();
    // Only the session made: no record for the refusals.
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let last = &sessions[0];
    assert_eq!(
        (last.command.as_str(), last.rows, last.cols, last.attached),
        ("/bin/sh", 30, 100, false)
    );
}

// --- subnets (subnets.rs) ---------------------------------------------------

const SUBNET: &str = "/subscriptions/sub-1/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci";

/// A group in `subnet`: a private IP with `port`, or no `ipAddress` at all.
fn private_group(name: &str, subnet: &str, port: Option<u16>) -> ContainerGroup {
    let mut g = group(name, 1.0, "Always", port);
    if let Some(ip) = &mut g.properties.ip_address {
        ip.ip_type = "Private".into();
        ip.dns_name_label = None;
    }
    g.properties.subnet_ids = vec![ContainerGroupSubnetId {
        id: subnet.into(),
        name: None,
    }];
    g
}

async fn define(st: &EmulatorState, id: &str, prefix: &str, delegated: bool) -> StatusCode {
    let delegations: Vec<&str> = if delegated {
        vec!["Microsoft.ContainerInstance/containerGroups"]
    } else {
        vec![]
    };
    let (s, _, _) = call(
        st,
        "POST",
        "/_emulator/subnets",
        Some(serde_json::json!({"id": id, "addressPrefix": prefix, "delegations": delegations})),
    )
    .await;
    s
}

async fn put(st: &EmulatorState, g: &ContainerGroup) -> (StatusCode, serde_json::Value) {
    let (s, _, body) = call(st, "PUT", &format!("{RG}/{}?{V}", g.name), Some(json(g))).await;
    (s, body)
}

fn arm_error(status: StatusCode, body: &serde_json::Value) -> (StatusCode, String, String) {
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(start_paused = true)]
async fn groups_in_a_subnet_get_private_ips_from_its_range_released_on_delete() {
    let st = state_with(EmulatorConfig::default());
    assert_eq!(
        define(&st, SUBNET, "10.240.8.0/29", true).await,
        StatusCode::OK
    );
    // With ports: the private IP is in `ipAddress.ip`.
    let (s, body) = put(&st, &private_group("web-1", SUBNET, Some(80))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["properties"]["ipAddress"]["type"], "Private");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "10.240.8.4");
    assert!(body["properties"]["ipAddress"].get("fqdn").is_none());
    // Without ports (no `ipAddress` sent): ACI still assigns one.
    let (s, body) = put(&st, &private_group("job-1", SUBNET, None)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "10.240.8.5");
    // A PUT of the same spec keeps the address.
    let (s, body) = put(&st, &private_group("web-1", SUBNET, Some(80))).await;
    assert_eq!(
        (s, &body["properties"]["ipAddress"]["ip"]),
        (StatusCode::OK, &serde_json::json!("10.240.8.4"))
    );
    // A /29 has three usable addresses (.4-.6): the fourth group is refused.
    let (s, _) = put(&st, &private_group("web-2", SUBNET, Some(80))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = put(&st, &private_group("web-3", SUBNET, Some(80))).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "SubnetIsFull".into(),
            "Subnet aci with address prefix 10.240.8.0/29 does not have enough capacity for 1 IP addresses.".into()
        )
    );
    let (_, _, snap) = call(&st, "GET", "/_emulator/subnets", None).await;
    assert_eq!(
        snap["subnets"][0]["used"],
        serde_json::json!(["10.240.8.4", "10.240.8.5", "10.240.8.6"])
    );
    assert_eq!(snap["subnets"][0]["free"], 0);
    // Deleting a group frees its address for the next one.
    let (s, _, _) = call(&st, "DELETE", &format!("{RG}/job-1?{V}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = put(&st, &private_group("web-3", SUBNET, Some(80))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "10.240.8.5");
    // No public address was taken.
    let (_, _, groups) = call(&st, "GET", "/_emulator/groups", None).await;
    assert!(
        groups["groups"]
            .as_array()
            .expect("list")
            .iter()
            .all(|g| g["ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.240.8."))),
        "{groups}"
    );
}

#[tokio::test(start_paused = true)]
async fn subnet_rules_are_refused_with_arm_codes() {
    let st = state_with(EmulatorConfig::default());
    let undelegated = SUBNET.replace("/aci", "/plain");
    assert_eq!(
        define(&st, SUBNET, "10.240.8.0/24", true).await,
        StatusCode::OK
    );
    assert_eq!(
        define(&st, &undelegated, "10.240.9.0/24", false).await,
        StatusCode::OK
    );

    // A subnet that does not exist.
    let missing = SUBNET.replace("/aci", "/nope");
    let (s, body) = put(&st, &private_group("g-1", &missing, Some(80))).await;
    let (status, code, message) = arm_error(s, &body);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "InvalidResourceReference")
    );
    assert!(
        message.starts_with(&format!(
            "Resource {missing} referenced by resource /subscriptions/"
        )),
        "{message}"
    );
    assert!(message.ends_with("was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."), "{message}");

    // A subnet not delegated to ACI.
    let (s, body) = put(&st, &private_group("g-1", &undelegated, Some(80))).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "SubnetMissingRequiredDelegation".into(),
            "Subnet missing required delegation 'Microsoft.ContainerInstance' for container group 'g-1'.".into()
        )
    );

    // A public IP in a VNet.
    let mut public = private_group("g-1", SUBNET, Some(80));
    if let Some(ip) = &mut public.properties.ip_address {
        ip.ip_type = "Public".into();
    }
    let (s, body) = put(&st, &public).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "PublicIPAddressNotSupported".into(),
            "IP Address type can't be public when network profile is set.".into()
        )
    );

    // A DNS name label on a private IP.
    let mut labelled = private_group("g-1", SUBNET, Some(80));
    if let Some(ip) = &mut labelled.properties.ip_address {
        ip.dns_name_label = Some("shop".into());
    }
    let (s, body) = put(&st, &labelled).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "DnsNameLabelNotSupported".into(),
            "DNS name label for container group is only supported when IP Address type is public."
                .into()
        )
    );

    // A private IP outside any subnet.
    let mut outside = private_group("g-1", SUBNET, Some(80));
    outside.properties.subnet_ids.clear();
    let (s, body) = put(&st, &outside).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "PrivateIPAddressNotSupported".into(),
            "IP Address type in container group 'g-1' is invalid. Private IP address is only supported when network profile is defined.".into()
        )
    );

    // None of them created a group or took an address.
    let (_, _, groups) = call(&st, "GET", "/_emulator/groups", None).await;
    assert_eq!(groups["groups"], serde_json::json!([]));
    // What ARM accepts: the same group, right (ids compare case-insensitively).
    let (s, body) = put(&st, &private_group("g-1", &SUBNET.to_lowercase(), Some(80))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

#[tokio::test(start_paused = true)]
async fn moving_a_group_between_public_and_private_swaps_its_address() {
    let st = state_with(EmulatorConfig::default());
    define(&st, SUBNET, "127.0.8.0/24", true).await;
    let (_, body) = put(&st, &group("web-1", 1.0, "Always", Some(80))).await;
    assert_eq!(body["properties"]["ipAddress"]["ip"], "20.0.0.4");
    // Loopback ranges work (tests point probes at 127.x listeners).
    let (s, body) = put(&st, &private_group("web-1", SUBNET, Some(80))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "127.0.8.4");
    let (_, body) = put(&st, &group("web-2", 1.0, "Always", Some(80))).await;
    assert_eq!(
        body["properties"]["ipAddress"]["ip"], "20.0.0.5",
        "the next public address"
    );
    let (_, _, snap) = call(&st, "GET", "/_emulator/subnets", None).await;
    assert_eq!(snap["subnets"][0]["used"], serde_json::json!(["127.0.8.4"]));
}

#[tokio::test]
async fn subnet_definitions_are_checked() {
    let st = state_with(EmulatorConfig::default());
    assert_eq!(
        define(&st, SUBNET, "10.0.0.0/30", true).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        define(&st, "/subscriptions/x", "10.0.0.0/24", true).await,
        StatusCode::BAD_REQUEST
    );
    let (s, _, body) = call(
        &st,
        "POST",
        "/_emulator/subnets",
        Some(serde_json::json!({"id": SUBNET, "prefix": "10.0.0.0/24"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_group_moved_to_another_subnet_or_vanished_returns_its_address() {
    let st = state_with(EmulatorConfig::default());
    let other = SUBNET.replace("/aci", "/aci-2");
    define(&st, SUBNET, "10.240.8.0/29", true).await;
    define(&st, &other, "10.240.9.0/29", true).await;
    let (_, body) = put(&st, &private_group("web-1", SUBNET, Some(80))).await;
    assert_eq!(body["properties"]["ipAddress"]["ip"], "10.240.8.4");
    let (s, body) = put(&st, &private_group("web-1", &other, Some(80))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["properties"]["ipAddress"]["ip"], "10.240.9.4");
    let used = |st: &EmulatorState| -> Vec<Vec<String>> {
        st.subnets().into_iter().map(|s| s.used).collect()
    };
    assert_eq!(used(&st), [vec![], vec!["10.240.9.4".to_string()]]);
    let (s, _, _) = call(
        &st,
        "POST",
        "/_emulator/faults",
        Some(serde_json::json!({"vanish": ["web-1"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(used(&st), [Vec::<String>::new(), vec![]]);
}

#[tokio::test(start_paused = true)]
async fn an_ip_address_without_ports_is_refused_with_arms_code() {
    // Why a pod without ports in a subnet is sent without `ipAddress`.
    let st = state_with(EmulatorConfig::default());
    define(&st, SUBNET, "10.240.8.0/24", true).await;
    let mut g = private_group("job-1", SUBNET, None);
    g.properties.ip_address = Some(IpAddress {
        ip_type: "Private".into(),
        ..Default::default()
    });
    let (s, body) = put(&st, &g).await;
    assert_eq!(
        arm_error(s, &body),
        (
            StatusCode::BAD_REQUEST,
            "MissingIpAddressPorts".into(),
            "The ports in the 'ipAddress' of container group 'job-1' cannot be empty.".into()
        )
    );
}

/// `dnsConfig` (2023-05-01 `DnsConfiguration`): `nameServers` is required,
/// `searchDomains` and `options` are optional strings; ARM takes it on any
/// group (the spec and the docs state no rule tying it to a subnet) and
/// returns it on read.
#[tokio::test(start_paused = true)]
async fn dns_config_needs_name_servers_and_is_kept() {
    let st = state_with(EmulatorConfig::default());
    let mut body = json(&group("dns", 1.0, "Always", None));
    body["properties"]["dnsConfig"] = serde_json::json!({"searchDomains": "svc.cluster.local"});
    let (s, _, answer) = call(&st, "PUT", &format!("{RG}/dns?{V}"), Some(body.clone())).await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("InvalidRequestContent")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nameServers")),
        "{answer}"
    );
    body["properties"]["dnsConfig"] = serde_json::json!({
        "nameServers": ["10.0.0.10"],
        "searchDomains": "web.svc.cluster.local svc.cluster.local cluster.local",
        "options": "ndots:5"
    });
    let (s, _, _) = call(&st, "PUT", &format!("{RG}/dns?{V}"), Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, got) = call(&st, "GET", &format!("{RG}/dns?{V}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        got["properties"]["dnsConfig"],
        body["properties"]["dnsConfig"]
    );
}

/// `diagnostics.logAnalytics` (2023-05-01 `LogAnalytics`): `workspaceId`
/// and `workspaceKey` required, `logType` one of the enum, metadata only
/// with `ContainerInsights`; kept, and read back without the key (an
/// `x-ms-secret`).
#[tokio::test(start_paused = true)]
async fn log_analytics_is_validated_kept_and_read_without_its_key() {
    let st = state_with(EmulatorConfig::default());
    let mut body = json(&group("la", 1.0, "Always", None));
    let url = format!("{RG}/la?{V}");
    let refused = [
        (
            serde_json::json!({"workspaceKey": "k"}),
            "InvalidRequestContent",
            "workspaceId",
        ),
        (
            serde_json::json!({"workspaceId": "w"}),
            "InvalidRequestContent",
            "workspaceKey",
        ),
        (
            serde_json::json!({"workspaceId": "w", "workspaceKey": "k", "logType": "ContainerInstanceLog"}),
            "InvalidRequestContent",
            "ContainerInstanceLog",
        ),
        (
            serde_json::json!({"workspaceId": "w", "workspaceKey": "k",
                "logType": "ContainerInstanceLogs", "metadata": {"a": "b"}}),
            "LogAnalyticsMetadataNotAllowed",
            "ContainerInstanceLogs",
        ),
        (
            serde_json::json!({"workspaceId": "w", "workspaceKey": "k", "metadata": {"a": "b"}}),
            "LogAnalyticsMetadataNotAllowed",
            "<null>",
        ),
    ];
    for (la, code, names) in refused {
        body["properties"]["diagnostics"] = serde_json::json!({ "logAnalytics": la });
        let (s, _, answer) = call(&st, "PUT", &url, Some(body.clone())).await;
        assert_eq!(
            (s, answer["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{la}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(names)),
            "{la}: {answer}"
        );
    }
    for log_type in [
        None,
        Some("ContainerInsights"),
        Some("ContainerInstanceLogs"),
    ] {
        let mut la = serde_json::json!({"workspaceId": "0f3c-ws", "workspaceKey": "c2VjcmV0"});
        if let Some(t) = log_type {
            la["logType"] = t.into();
        }
        body["properties"]["diagnostics"] = serde_json::json!({ "logAnalytics": la });
        let (s, _, answer) = call(&st, "PUT", &url, Some(body.clone())).await;
        assert!(s.is_success(), "{log_type:?}: {answer}");
        let (_, _, got) = call(&st, "GET", &url, None).await;
        let read = &got["properties"]["diagnostics"]["logAnalytics"];
        assert_eq!(read["workspaceId"], "0f3c-ws", "{got}");
        assert_eq!(read["logType"].as_str(), log_type, "{got}");
        assert!(read.get("workspaceKey").is_none(), "key returned: {got}");
    }
}

/// Monitor's metrics URL of group `name` over `from..to` with `extra` query.
fn metrics_url(
    name: &str,
    from: crate::units::Timestamp,
    to: crate::units::Timestamp,
    extra: &str,
) -> String {
    format!(
        "{RG}/{name}/providers/Microsoft.Insights/metrics?api-version=2018-01-01&timespan={}/{}{extra}",
        from.to_rfc3339(),
        to.to_rfc3339()
    )
}

const PER_CONTAINER: &str = "&metricnames=CpuUsage,MemoryUsage&aggregation=Average&interval=PT1M&$filter=containerName%20eq%20%27*%27";

fn minutes_ago(n: i64) -> crate::units::Timestamp {
    let now = crate::units::Timestamp::now_wall().millis();
    crate::units::Timestamp(now - now.rem_euclid(60_000) - n * 60_000)
}

#[tokio::test(start_paused = true)]
async fn monitor_serves_the_metrics_set_per_container_and_minute_in_its_shape() {
    let st = state_with(EmulatorConfig {
        speed: 1000.0,
        ..Default::default()
    });
    call(
        &st,
        "PUT",
        &format!("{RG}/web?{V}"),
        Some(json(&group("web", 0.5, "Always", None))),
    )
    .await;
    // Running (5 s of lifecycle at speed 1000).
    tokio::time::advance(Duration::from_millis(10)).await;
    let m0 = minutes_ago(10);
    let plus = |m: i64| crate::units::Timestamp(m0.millis() + m * 60_000);
    let (s, _, body) = call(
        &st,
        "POST",
        "/_emulator/groups/web/metrics",
        Some(serde_json::json!({
            "containers": {"app": {"cpuMillicores": 250, "memoryBytes": 1048576}},
            "from": m0.to_rfc3339(), "to": plus(3).to_rfc3339(),
        })),
    )
    .await;
    assert_eq!(
        (s, body["groups"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (s, _, body) = call(
        &st,
        "GET",
        &metrics_url("web", m0, plus(5), PER_CONTAINER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Monitor's shape (metrics_API.json): value[].name.value,
    // timeseries[].metadatavalues[] with containername, data[].timeStamp.
    assert_eq!(body["value"][0]["name"]["value"], "CpuUsage");
    assert_eq!(body["value"][0]["unit"], "Count");
    assert_eq!(body["value"][1]["name"]["value"], "MemoryUsage");
    assert_eq!(body["value"][0]["errorCode"], "Success");
    let series = &body["value"][0]["timeseries"][0];
    assert_eq!(
        series["metadatavalues"][0]["name"]["value"],
        "containername"
    );
    assert_eq!(series["metadatavalues"][0]["value"], "app");
    assert_eq!(series["data"][0]["timeStamp"], m0.to_rfc3339());
    assert_eq!(
        body["timespan"],
        format!("{}/{}", m0.to_rfc3339(), plus(5).to_rfc3339())
    );
    // The client's parser reads it: three minutes of data, then none (the
    // container was not running then).
    let parsed = crate::aci::monitor::parse(body.to_string().as_bytes()).expect("parses");
    let app = &parsed.containers["app"];
    assert_eq!(app.len(), 5);
    assert!(
        app[..3]
            .iter()
            .all(|p| p.cpu_millicores == Some(250.0) && p.memory_bytes == Some(1048576.0))
    );
    assert!(app[3..].iter().all(|p| p.cpu_millicores.is_none()));
    // A coarser grain averages the minutes with data.
    let (_, _, body) = call(
        &st,
        "GET",
        &metrics_url(
            "web",
            m0,
            plus(5),
            "&metricnames=CpuUsage&interval=PT5M&aggregation=Average,Count",
        ),
        None,
    )
    .await;
    let point = &body["value"][0]["timeseries"][0]["data"][0];
    assert_eq!(
        (point["average"].as_f64(), point["count"].as_f64()),
        (Some(250.0), Some(3.0)),
        "{body}"
    );
    assert!(
        body["value"][0]["timeseries"][0]["metadatavalues"]
            .as_array()
            .is_some_and(|m| m.is_empty())
    );

    // A running container's minutes are 0 once over, without a setting.
    let key = state::GroupKey::new("sub-1", "rg-burst", "web");
    let later = crate::units::Timestamp(crate::units::Timestamp::now_wall().millis() + 300_000);
    let minutes = st
        .lock()
        .metric_minutes(
            &key,
            minutes_ago(0),
            later,
            tokio::time::Instant::now(),
            later,
        )
        .expect("group");
    assert!(
        minutes[0].1.iter().any(|(_, v)| *v == Some((0.0, 0.0))),
        "{minutes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn monitor_refuses_what_it_refuses_in_its_error_form() {
    let st = state_with(EmulatorConfig::default());
    let mut g = group("big", 0.5, "Always", None);
    let one = g.properties.containers[0].clone();
    g.properties.containers = (0..11)
        .map(|i| {
            let mut c = one.clone();
            c.name = format!("c{i:02}");
            c.properties.resources.requests.cpu = 0.1;
            c.properties.resources.requests.memory_in_gb = 0.5;
            c
        })
        .collect();
    let (s, _, body) = call(&st, "PUT", &format!("{RG}/big?{V}"), Some(json(&g))).await;
    assert!(s.is_success(), "{body}");
    let (from, to) = (minutes_ago(5), minutes_ago(0));
    // A missing group: 404 with Monitor's top-level code and message.
    let (s, _, body) = call(
        &st,
        "GET",
        &metrics_url("nope", from, to, PER_CONTAINER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "ResourceNotFound", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("containerGroups/nope"))
    );
    // A metric ACI does not have.
    let (s, _, body) = call(
        &st,
        "GET",
        &metrics_url("big", from, to, "&metricnames=CpuPercentage"),
        None,
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Valid metrics: CpuUsage,MemoryUsage")),
        "{body}"
    );
    // A timespan that ends before it starts, a grain Monitor lacks.
    let (s, _, _) = call(&st, "GET", &metrics_url("big", to, from, ""), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = call(
        &st,
        "GET",
        &metrics_url("big", from, to, "&interval=PT2M"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An api-version Monitor does not have.
    let (s, _, body) = call(
        &st,
        "GET",
        &format!("{RG}/big/providers/Microsoft.Insights/metrics?api-version=2023-05-01"),
        None,
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("NoRegisteredProviderFound"))
    );
    // With a $filter, `top` series, 10 when unset (metrics_API.json TopParameter).
    let (_, _, body) = call(
        &st,
        "GET",
        &metrics_url("big", from, to, PER_CONTAINER),
        None,
    )
    .await;
    assert_eq!(
        body["value"][0]["timeseries"].as_array().map(Vec::len),
        Some(10)
    );
    let (_, _, body) = call(
        &st,
        "GET",
        &metrics_url("big", from, to, &format!("{PER_CONTAINER}&top=60")),
        None,
    )
    .await;
    assert_eq!(
        body["value"][0]["timeseries"].as_array().map(Vec::len),
        Some(11)
    );
    // The control API: whole minutes, non-negative numbers, known containers.
    for (body, want) in [
        (
            serde_json::json!({"containers": {"c00": {"cpuMillicores": 1, "memoryBytes": 1}}, "from": "2024-05-14T09:00:30Z"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"containers": {"c00": {"cpuMillicores": -1, "memoryBytes": 1}}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"containers": {"zz": {"cpuMillicores": 1, "memoryBytes": 1}}}),
            StatusCode::NOT_FOUND,
        ),
        // Nothing is set when one container is unknown.
        (
            serde_json::json!({"containers": {
                "c00": {"cpuMillicores": 7, "memoryBytes": 7},
                "zz": {"cpuMillicores": 1, "memoryBytes": 1},
            }}),
            StatusCode::NOT_FOUND,
        ),
        (
            serde_json::json!({"containers": {"c00": {"cpuMillicores": 1, "memoryBytes": 1}}}),
            StatusCode::OK,
        ),
    ] {
        let (s, _, answer) = call(
            &st,
            "POST",
            "/_emulator/groups/big/metrics",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, want, "{body}: {answer}");
    }
    // The refused request set nothing: c00 is still idle (0 while running,
    // nothing before), never 7.
    let key = state::GroupKey::new("sub-1", "rg-burst", "big");
    let now = crate::units::Timestamp::now_wall();
    let minutes = st
        .lock()
        .metric_minutes(&key, minutes_ago(5), now, tokio::time::Instant::now(), now)
        .expect("group");
    assert!(
        minutes
            .iter()
            .flat_map(|(_, m)| m)
            .all(|(_, v)| v.is_none_or(|v| v.0 != 7.0)),
        "{minutes:?}"
    );
}

/// ARM refuses an Azure Files volume in a Windows group
/// (`WindowsContainersVolumeNotSupported`, virtual-kubelet/virtual-kubelet#367)
/// and accepts it in a Linux group.
#[tokio::test(start_paused = true)]
async fn windows_groups_refuse_azure_files() {
    let st = state_with(EmulatorConfig::default());
    let with_share = |name: &str, os: &str| {
        let mut g = group(name, 1.0, "Always", None);
        g.properties.os_type = os.into();
        g.properties.volumes = vec![Volume {
            name: "share".into(),
            azure_file: Some(AzureFileVolume {
                share_name: "data".into(),
                storage_account_name: "acct".into(),
                storage_account_key: Some("a2V5".into()),
                read_only: None,
            }),
            ..Default::default()
        }];
        json(&g)
    };
    let (s, _, answer) = call(
        &st,
        "PUT",
        &format!("{RG}/win-share?{V}"),
        Some(with_share("win-share", "Windows")),
    )
    .await;
    assert_eq!(
        (s, answer["error"]["code"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("WindowsContainersVolumeNotSupported")
        )
    );
    assert_eq!(
        answer["error"]["message"],
        "Azure file volumes are not supported for Windows containers."
    );
    let (s, _, _) = call(
        &st,
        "PUT",
        &format!("{RG}/linux-share?{V}"),
        Some(with_share("linux-share", "Linux")),
    )
    .await;
    assert!(s.is_success(), "{s}");
    // A Windows group without the share is accepted.
    let mut plain = group("win-plain", 1.0, "Always", None);
    plain.properties.os_type = "Windows".into();
    let (s, _, _) = call(
        &st,
        "PUT",
        &format!("{RG}/win-plain?{V}"),
        Some(json(&plain)),
    )
    .await;
    assert!(s.is_success(), "{s}");
}
