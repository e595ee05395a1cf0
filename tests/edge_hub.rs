//! The IoT Hub client against the IoT Hub emulator over loopback HTTP, and
//! each rule of the emulator on its own. The client is the production one,
//! pointed at the emulator's URL while its tokens are signed for the hub's
//! host name. Raw requests (for what the client never sends, like a stale
//! etag) use reqwest with tokens from the same connection string.
//! Waits are polls with deadlines; device reports take 100 ms.

use serde_json::{Value, json};
use spillway::edge::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Faults, NewDevice};
use spillway::edge::model::{Configuration, metric};
use spillway::edge::sas::{ConnectionString, SharedAccessKey, sign_token};
use spillway::edge::{ConfigurationPatch, HubClient, HubClientConfig, HubError};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REPORT_DELAY: Duration = Duration::from_millis(100);

fn fast_emulator() -> EmulatorConfig {
    EmulatorConfig {
        configuration_ops_per_minute: 60_000.0,
        queries_per_minute: 60_000.0,
        twin_reads_per_second: 1_000.0,
        burst: 1_000,
        report_delay: REPORT_DELAY,
        backoff_restart_every: Duration::from_millis(50),
        ..EmulatorConfig::default()
    }
}

fn fast_client(url: &str) -> HubClientConfig {
    HubClientConfig {
        endpoint: Some(url.to_string()),
        request_timeout: Duration::from_secs(5),
        configuration_ops_per_minute: 60_000.0,
        queries_per_minute: 60_000.0,
        twin_reads_per_second: 1_000.0,
        burst: 100,
        base_backoff: Duration::from_millis(20),
        budget: Duration::from_secs(30),
        ..HubClientConfig::default()
    }
}

async fn start(config: EmulatorConfig) -> (EmulatorHandle, HubClient) {
    let emu = Emulator::start(config).await.expect("emulator starts");
    let conn = emu.connection_string().expect("connection string");
    let client = HubClient::new(conn, fast_client(&emu.url)).expect("client");
    (emu, client)
}

fn conn(emu: &EmulatorHandle) -> ConnectionString {
    emu.connection_string().expect("connection string")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Poll `check` until it gives `Some`, or fail after 10 s with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A base (standard) deployment: the system modules only.
fn base_deployment(id: &str, target: &str, priority: i32) -> Configuration {
    let mut modules = BTreeMap::new();
    modules.insert(
        "$edgeAgent".to_string(),
        json!({"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5"}}
            },
            "modules": {}
        }}),
    );
    modules.insert(
        "$edgeHub".to_string(),
        json!({"properties.desired": {"schemaVersion": "1.1", "routes": {}, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}),
    );
    Configuration::edge_deployment(id, modules, target, priority)
}

/// A layered deployment adding one module.
fn layered_deployment(
    id: &str,
    module: &str,
    image: &str,
    target: &str,
    priority: i32,
) -> Configuration {
    let mut modules = BTreeMap::new();
    modules.insert(
        "$edgeAgent".to_string(),
        json!({ format!("properties.desired.modules.{module}"): {
            "type": "docker", "status": "running", "restartPolicy": "always",
            "settings": {"image": image, "createOptions": "{}"}
        }}),
    );
    Configuration::edge_deployment(id, modules, target, priority)
}

async fn add_devices(emu: &EmulatorHandle, devices: &[(&str, &str)]) {
    for (id, site) in devices {
        emu.state
            .add_device(NewDevice::edge(id, json!({"site": site})))
            .expect("device added");
    }
}

const FIVE: [(&str, &str); 5] = [
    ("munich-1", "munich"),
    ("munich-2", "munich"),
    ("munich-3", "munich"),
    ("berlin-1", "berlin"),
    ("berlin-2", "berlin"),
];

/// A raw request with an explicit Authorization header.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Raw {
    fn code(&self) -> String {
        let msg = self.json["Message"].as_str().unwrap_or_default();
        msg.strip_prefix("ErrorCode:")
            .and_then(|r| r.split(';').next())
            .unwrap_or_default()
            .to_string()
    }
}

async fn raw(
    emu: &EmulatorHandle,
    method: reqwest::Method,
    path_and_query: &str,
    auth: Option<String>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Raw {
    let mut req = reqwest::Client::new().request(method, format!("{}{path_and_query}", emu.url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Raw {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn good_token(emu: &EmulatorHandle) -> String {
    conn(emu).token(now_unix() + 600)
}

const API: &str = "api-version=2021-04-12";

// ---- client: configurations -------------------------------------------------

#[tokio::test]
async fn configurations_create_get_list_update_delete() {
    let (_emu, hub) = start(fast_emulator()).await;
    let created = hub
        .create_configuration(&base_deployment("base-1", "tags.site='munich'", 10))
        .await
        .expect("created");
    assert_eq!(created.id, "base-1");
    assert_eq!(created.schema_version, "1.0");
    let etag1 = created.etag.clone().expect("etag");
    assert!(created.created_time_utc.is_some());
    hub.create_configuration(&layered_deployment(
        "web-1",
        "web",
        "nginx:1",
        "tags.site='munich'",
        100,
    ))
    .await
    .expect("second");

    let got = hub
        .get_configuration("base-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.content, created.content);
    assert_eq!(got.target_condition, "tags.site='munich'");
    assert!(hub.get_configuration("nope").await.expect("get").is_none());

    let all = hub.list_configurations(None).await.expect("list");
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["base-1", "web-1"]
    );
    assert_eq!(
        hub.list_configurations(Some(1)).await.expect("top").len(),
        1
    );

    let mut labels = BTreeMap::new();
    labels.insert("spillway.io/node".to_string(), "edge-a".to_string());
    let updated = hub
        .update_configuration(
            "base-1",
            &ConfigurationPatch {
                labels: Some(labels.clone()),
                target_condition: Some("tags.site='berlin'".into()),
                priority: Some(20),
                metric_queries: Some(BTreeMap::from([(
                    "running".to_string(),
                    "SELECT deviceId FROM devices WHERE tags.site='berlin'".to_string(),
                )])),
            },
        )
        .await
        .expect("updated");
    assert_eq!(updated.labels, labels);
    assert_eq!(updated.priority, 20);
    assert_eq!(updated.target_condition, "tags.site='berlin'");
    assert_eq!(updated.content, created.content, "content untouched");
    assert_ne!(updated.etag.as_deref(), Some(etag1.as_str()), "new etag");

    hub.delete_configuration("base-1").await.expect("deleted");
    assert!(
        hub.get_configuration("base-1")
            .await
            .expect("get")
            .is_none()
    );
    hub.delete_configuration("base-1")
        .await
        .expect("a missing one counts as deleted");
    assert_eq!(hub.list_configurations(None).await.expect("list").len(), 1);
}

#[tokio::test]
async fn create_of_an_existing_id_is_409_unless_it_is_the_same_deployment() {
    let (_emu, hub) = start(fast_emulator()).await;
    let c = layered_deployment("web-1", "web", "nginx:1", "tags.site='munich'", 100);
    hub.create_configuration(&c).await.expect("created");
    // Same content again (a retried create whose answer was lost): adopted.
    let again = hub
        .create_configuration(&c)
        .await
        .expect("identical create is adopted");
    assert_eq!(again.id, "web-1");
    let changed = layered_deployment("web-1", "web", "nginx:2", "tags.site='munich'", 100);
    let err = hub.create_configuration(&changed).await.expect_err("409");
    assert_eq!(err.reason(), "already_exists", "{err}");
    assert_eq!(
        err.fault().map(|f| f.code.as_str()),
        Some("ConfigurationAlreadyExists")
    );
}

#[tokio::test]
async fn concurrent_updates_reread_on_412_and_all_land() {
    let (emu, hub) = start(fast_emulator()).await;
    hub.create_configuration(&base_deployment("base-1", "tags.site='munich'", 10))
        .await
        .expect("created");
    let updates = (0..5).map(|i| {
        let hub = &hub;
        async move {
            hub.update_configuration(
                "base-1",
                &ConfigurationPatch {
                    priority: Some(10 + i),
                    ..Default::default()
                },
            )
            .await
        }
    });
    for r in futures::future::join_all(updates).await {
        r.expect("every update lands after re-reading");
    }
    let counters = emu.state.counters();
    let stale = counters
        .requests
        .get("PUT configurations/{id} 412")
        .copied()
        .unwrap_or(0);
    assert!(stale >= 1, "some updates met a stale etag: {counters:?}");
}

#[tokio::test]
async fn an_injected_concurrent_writer_makes_a_conditional_put_meet_412_once() {
    let (emu, hub) = start(fast_emulator()).await;
    hub.create_configuration(&base_deployment("base-1", "tags.site='munich'", 10))
        .await
        .expect("created");
    let mut faults = emu.state.faults();
    faults.concurrent_update_next = 1;
    emu.state.set_faults(faults);
    let updated = hub
        .update_configuration(
            "base-1",
            &ConfigurationPatch {
                priority: Some(20),
                ..Default::default()
            },
        )
        .await
        .expect("lands after re-reading");
    assert_eq!(updated.priority, 20);
    let counters = emu.state.counters();
    assert_eq!(
        counters.requests.get("PUT configurations/{id} 412"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(emu.state.faults().concurrent_update_next, 0);
}

#[tokio::test]
async fn update_of_a_missing_configuration_is_not_found() {
    let (_emu, hub) = start(fast_emulator()).await;
    let err = hub
        .update_configuration("ghost", &ConfigurationPatch::default())
        .await
        .expect_err("missing");
    assert_eq!(err.reason(), "not_found");
}

#[tokio::test]
async fn a_wrong_key_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    let mut wrong = conn(&emu);
    wrong.key = SharedAccessKey::from_bytes(b"not the hub's key".to_vec());
    let hub = HubClient::new(wrong, fast_client(&emu.url)).expect("client");
    let err = hub.list_configurations(None).await.expect_err("401");
    assert_eq!(err.reason(), "unauthorized", "{err}");
    assert_eq!(
        err.fault().map(|f| f.code.as_str()),
        Some("IotHubUnauthorizedAccess")
    );
    assert!(!err.to_string().contains(&conn(&emu).key.to_base64()));
}

// ---- emulator rules, one test each ----------------------------------------

#[tokio::test]
async fn rule_no_authorization_header_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "IotHubUnauthorizedAccess")
    );
}

#[tokio::test]
async fn rule_an_expired_token_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    let expired = conn(&emu).token(now_unix() - 1);
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(expired),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.json["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{}",
        r.json
    );
}

#[tokio::test]
async fn rule_a_token_for_another_hub_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    let c = conn(&emu);
    let token = sign_token(
        "other-hub.azure-devices.net",
        &c.key_name,
        &c.key,
        now_unix() + 600,
    );
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(token),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    // A resource below this hub that covers the request is accepted.
    let scoped = sign_token(
        &format!("{}/configurations", c.host_name),
        &c.key_name,
        &c.key,
        now_unix() + 600,
    );
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(scoped),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test]
async fn rule_an_unknown_policy_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    let c = conn(&emu);
    let token = sign_token(&c.host_name, "registryReadWrite", &c.key, now_unix() + 600);
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(token),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn rule_a_tampered_signature_is_401() {
    let (emu, _) = start(fast_emulator()).await;
    // Signed for one expiry, sent with another.
    let se = now_unix() + 600;
    let token = conn(&emu)
        .token(se)
        .replace(&format!("se={se}"), &format!("se={}", se + 6000));
    assert!(token.contains(&format!("se={}", se + 6000)));
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(token),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn rule_api_version_is_required() {
    let (emu, _) = start(fast_emulator()).await;
    let r = raw(
        &emu,
        reqwest::Method::GET,
        "/configurations",
        Some(good_token(&emu)),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn rule_configuration_ids_lowercase_up_to_128_with_the_hubs_specials() {
    let (_emu, hub) = start(fast_emulator()).await;
    let special = "a:b+c%d_e#f*g?h!i(j)k,l=m@n;o$p'q-1";
    hub.create_configuration(&base_deployment(special, "tags.site='x'", 1))
        .await
        .expect("special characters are allowed (and escaped in the URL)");
    assert!(hub.get_configuration(special).await.expect("get").is_some());
    hub.delete_configuration(special).await.expect("delete");
    for bad in ["Upper-case".to_string(), "dot.ted".into(), "a".repeat(129)] {
        let err = hub
            .create_configuration(&base_deployment(&bad, "tags.site='x'", 1))
            .await
            .expect_err("invalid id");
        assert_eq!(err.reason(), "rejected", "{bad}: {err}");
        assert_eq!(err.fault().map(|f| f.status), Some(400));
    }
    hub.create_configuration(&base_deployment(&"a".repeat(128), "tags.site='x'", 1))
        .await
        .expect("128 characters are fine");
}

#[tokio::test]
async fn rule_update_needs_the_quoted_current_etag() {
    let (emu, hub) = start(fast_emulator()).await;
    let c = hub
        .create_configuration(&base_deployment("base-1", "tags.site='a'", 1))
        .await
        .expect("created");
    let etag = c.etag.clone().expect("etag");
    let mut body = serde_json::to_value(&c).expect("json");
    body["priority"] = json!(5);
    let put = |if_match: String, body: Value| {
        let emu = &emu;
        async move {
            raw(
                emu,
                reqwest::Method::PUT,
                &format!("/configurations/base-1?{API}"),
                Some(good_token(emu)),
                &[("if-match", if_match.as_str())],
                Some(body),
            )
            .await
        }
    };
    let unquoted = put(etag.clone(), body.clone()).await;
    assert_eq!(
        (unquoted.status, unquoted.code().as_str()),
        (412, "PreconditionFailed")
    );
    let ok = put(format!("\"{etag}\""), body.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let stale = put(format!("\"{etag}\""), body.clone()).await;
    assert_eq!(
        (stale.status, stale.code().as_str()),
        (412, "PreconditionFailed"),
        "the etag changed"
    );
    let star = put("*".into(), body.clone()).await;
    assert_eq!(star.status, 200);
    let missing = raw(
        &emu,
        reqwest::Method::PUT,
        &format!("/configurations/ghost?{API}"),
        Some(good_token(&emu)),
        &[("if-match", "*")],
        Some(json!({"id": "ghost", "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {}}}}})),
    )
    .await;
    assert_eq!(missing.status, 404, "an update of a missing configuration");
}

#[tokio::test]
async fn rule_content_is_immutable() {
    let (emu, hub) = start(fast_emulator()).await;
    let c = hub
        .create_configuration(&layered_deployment(
            "web-1",
            "web",
            "nginx:1",
            "tags.site='a'",
            1,
        ))
        .await
        .expect("created");
    let changed = layered_deployment("web-1", "web", "nginx:2", "tags.site='a'", 1);
    let mut body = serde_json::to_value(&changed).expect("json");
    body["etag"] = json!(c.etag);
    let r = raw(
        &emu,
        reqwest::Method::PUT,
        &format!("/configurations/web-1?{API}"),
        Some(good_token(&emu)),
        &[("if-match", "*")],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert!(
        r.json["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("content cannot be updated")
    );
    let stored = hub
        .get_configuration("web-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored.content, c.content);
}

#[tokio::test]
async fn rule_delete_needs_if_match() {
    let (emu, hub) = start(fast_emulator()).await;
    let c = hub
        .create_configuration(&base_deployment("base-1", "tags.site='a'", 1))
        .await
        .expect("created");
    let del = |if_match: Option<&'static str>| {
        let emu = &emu;
        async move {
            let h: Vec<(&str, &str)> = if_match.map(|m| vec![("if-match", m)]).unwrap_or_default();
            raw(
                emu,
                reqwest::Method::DELETE,
                &format!("/configurations/base-1?{API}"),
                Some(good_token(emu)),
                &h,
                None,
            )
            .await
        }
    };
    let r = del(None).await;
    assert_eq!((r.status, r.code().as_str()), (412, "PreconditionFailed"));
    let r = del(Some("\"bm90LXRoZS1ldGFn\"")).await;
    assert_eq!(r.status, 412, "a stale etag");
    let quoted: &'static str = Box::leak(format!("\"{}\"", c.etag.expect("etag")).into_boxed_str());
    assert_eq!(del(Some(quoted)).await.status, 204);
    assert_eq!(del(Some("*")).await.status, 404, "gone");
}

#[tokio::test]
async fn rule_the_configuration_quota() {
    let (_emu, hub) = start(EmulatorConfig {
        max_configurations: 2,
        ..fast_emulator()
    })
    .await;
    for id in ["a", "b"] {
        hub.create_configuration(&base_deployment(id, "tags.site='a'", 1))
            .await
            .expect("within the quota");
    }
    let err = hub
        .create_configuration(&base_deployment("c", "tags.site='a'", 1))
        .await
        .expect_err("quota");
    assert_eq!(err.reason(), "quota_exceeded", "{err}");
    assert_eq!(
        err.fault().map(|f| f.code.as_str()),
        Some("IotHubQuotaExceeded")
    );
    hub.delete_configuration("a").await.expect("delete");
    hub.create_configuration(&base_deployment("c", "tags.site='a'", 1))
        .await
        .expect("room again");
}

#[tokio::test]
async fn rule_bodies_are_validated() {
    let (_emu, hub) = start(fast_emulator()).await;
    let mut bad_target = base_deployment("x1", "tags.site='a", 1);
    let mut negative = base_deployment("x2", "tags.site='a'", 1);
    negative.priority = -1;
    let mut schema = base_deployment("x3", "tags.site='a'", 1);
    schema.schema_version = "2.0".into();
    let mut no_content = base_deployment("x4", "tags.site='a'", 1);
    no_content.content.modules_content = None;
    let mut bad_key = layered_deployment("x5", "web", "nginx", "tags.site='a'", 1);
    if let Some(m) = bad_key.content.modules_content.as_mut() {
        m.insert("$edgeAgent".into(), json!({"modules.web": {}}));
    }
    bad_target.labels.insert("k".into(), "v".into());
    for c in [bad_target, negative, schema, no_content, bad_key] {
        let err = hub.create_configuration(&c).await.expect_err(&c.id);
        assert_eq!(err.fault().map(|f| f.status), Some(400), "{}: {err}", c.id);
    }
}

// ---- queries ---------------------------------------------------------------

#[tokio::test]
async fn device_queries_page_with_continuation() {
    let (emu, _) = start(fast_emulator()).await;
    let hub = HubClient::new(
        conn(&emu),
        HubClientConfig {
            query_page_size: 2,
            ..fast_client(&emu.url)
        },
    )
    .expect("client");
    add_devices(&emu, &FIVE).await;
    let first = hub
        .query_devices_page("SELECT * FROM devices", None)
        .await
        .expect("page");
    assert_eq!(first.items.len(), 2);
    assert!(first.continuation.is_some());
    assert_eq!(first.items[0]["capabilities"]["iotEdge"], true);
    let all = hub
        .query_devices("SELECT deviceId FROM devices")
        .await
        .expect("all");
    assert_eq!(all.len(), 5);
    assert_eq!(all[0], json!({"deviceId": "berlin-1"}));
    let munich = hub
        .query_devices("SELECT deviceId FROM devices WHERE tags.site = 'munich' AND capabilities.iotEdge = true")
        .await
        .expect("munich");
    assert_eq!(munich.len(), 3);
    let not_munich = hub
        .query_devices(
            "SELECT deviceId FROM devices WHERE tags.site != 'munich' OR deviceId = 'munich-1'",
        )
        .await
        .expect("or");
    assert_eq!(not_munich.len(), 3);
    let modules = hub
        .query_devices("SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'")
        .await
        .expect("modules");
    assert_eq!(modules.len(), 5);
    let err = hub
        .query_devices("SELECT COUNT() FROM devices")
        .await
        .expect_err("unsupported");
    assert_eq!(err.fault().map(|f| f.status), Some(400));
}

#[tokio::test]
async fn device_queries_on_reported_properties() {
    let (emu, hub) = start(fast_emulator()).await;
    emu.state
        .add_device(NewDevice {
            device_id: "sensor-1".into(),
            tags: json!({}),
            reported: json!({"firmware": {"version": "2.1"}}),
            iot_edge: false,
        })
        .expect("device");
    add_devices(&emu, &[("edge-1", "munich")]).await;
    let hits = hub
        .query_devices(
            "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.1'",
        )
        .await
        .expect("query");
    assert_eq!(hits, vec![json!({"deviceId": "sensor-1"})]);
    let edge = hub
        .query_devices("SELECT deviceId FROM devices WHERE capabilities.iotEdge = true")
        .await
        .expect("query");
    assert_eq!(edge, vec![json!({"deviceId": "edge-1"})]);
}

#[tokio::test]
async fn test_queries_reports_errors_per_query() {
    let (_emu, hub) = start(fast_emulator()).await;
    let ok = hub
        .test_queries(
            "tags.site='munich' AND capabilities.iotEdge=true",
            &BTreeMap::from([("up".to_string(), "SELECT deviceId FROM devices".to_string())]),
        )
        .await
        .expect("answered");
    assert!(ok.is_ok(), "{ok:?}");
    let bad = hub
        .test_queries(
            "tags.site='munich",
            &BTreeMap::from([("broken".to_string(), "SELECT FROM".to_string())]),
        )
        .await
        .expect("answered");
    assert!(!bad.is_ok());
    assert!(!bad.target_condition_error.is_empty());
    assert!(!bad.custom_metric_query_errors["broken"].is_empty());
}

// ---- deployments on simulated devices --------------------------------------

async fn metrics(hub: &HubClient, id: &str) -> (i64, i64, i64, i64) {
    let c = hub
        .get_configuration(id)
        .await
        .expect("get")
        .expect("exists");
    (
        c.system_metric(metric::TARGETED),
        c.system_metric(metric::APPLIED),
        c.system_metric(metric::REPORTED_SUCCESSFUL),
        c.system_metric(metric::REPORTED_FAILED),
    )
}

async fn munich_setup() -> (EmulatorHandle, HubClient) {
    let (emu, hub) = start(fast_emulator()).await;
    add_devices(&emu, &FIVE).await;
    hub.create_configuration(&base_deployment(
        "spillway-base",
        "tags.site='munich' OR tags.site='berlin'",
        1,
    ))
    .await
    .expect("base");
    hub.create_configuration(&layered_deployment(
        "web-1",
        "web",
        "nginx:1.27",
        "tags.site='munich'",
        100,
    ))
    .await
    .expect("layered");
    (emu, hub)
}

#[tokio::test]
async fn a_deployment_for_munich_reaches_3_of_5_devices() {
    let (_emu, hub) = munich_setup().await;
    let m = eventually("3 devices report success", || async {
        let m = metrics(&hub, "web-1").await;
        (m.2 == 3).then_some(m)
    })
    .await;
    assert_eq!(m, (3, 3, 3, 0), "targeted, applied, successful, failed");
    let web1 = hub
        .get_configuration("web-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        web1.device_counts().to_string(),
        "targeted=3 applied=3 ok=3 failed=0"
    );
    assert!(web1.is_layered());
    let base = hub
        .get_configuration("spillway-base")
        .await
        .expect("get")
        .expect("exists");
    assert!(!base.is_layered());
    assert_eq!(metrics(&hub, "spillway-base").await, (5, 5, 5, 0));

    let twin = hub
        .edge_agent_twin("munich-1")
        .await
        .expect("twin")
        .expect("exists");
    let report = twin.edge_agent_report().expect("report");
    assert_eq!(report.last_desired_version, twin.desired_version());
    assert_eq!(
        report.last_desired_status.as_ref().map(|s| s.code),
        Some(200)
    );
    let web = &report.modules["web"];
    assert_eq!(web.runtime_status, "running");
    assert_eq!(web.exit_code, Some(0));
    assert_eq!(web.restart_count, Some(0));
    assert_eq!(
        web.settings.as_ref().map(|s| s.image.as_str()),
        Some("nginx:1.27")
    );
    assert_eq!(report.system_modules["edgeHub"].runtime_status, "running");
    assert_eq!(twin.configurations["web-1"]["status"], "Applied");

    let berlin = hub
        .edge_agent_twin("berlin-1")
        .await
        .expect("twin")
        .expect("exists");
    let report = berlin.edge_agent_report().expect("report");
    assert!(
        report.modules.is_empty(),
        "berlin runs no web module: {report:?}"
    );
    assert!(
        hub.edge_agent_twin("nowhere")
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn deleting_a_layered_deployment_removes_its_module_from_the_devices() {
    let (_emu, hub) = munich_setup().await;
    eventually("rolled out", || async {
        (metrics(&hub, "web-1").await.2 == 3).then_some(())
    })
    .await;
    let before = hub
        .edge_agent_twin("munich-2")
        .await
        .expect("twin")
        .expect("exists");
    hub.delete_configuration("web-1").await.expect("deleted");
    let after = eventually("module gone from munich-2", || async {
        let t = hub.edge_agent_twin("munich-2").await.expect("twin")?;
        let r = t.edge_agent_report()?;
        (r.last_desired_version == t.desired_version() && !r.modules.contains_key("web"))
            .then_some(t)
    })
    .await;
    assert!(after.desired_version() > before.desired_version());
}

#[tokio::test]
async fn an_offline_device_reports_406_and_is_counted() {
    let (emu, hub) = munich_setup().await;
    eventually("rolled out", || async {
        (metrics(&hub, "web-1").await.2 == 3).then_some(())
    })
    .await;
    emu.state.set_online("munich-2", false).expect("offline");
    let twin = hub
        .edge_agent_twin("munich-2")
        .await
        .expect("twin")
        .expect("exists");
    assert_eq!(twin.connection_state.as_deref(), Some("Disconnected"));
    let report = twin.edge_agent_report().expect("report");
    assert_eq!(report.last_desired_status.map(|s| s.code), Some(406));
    assert_eq!(metrics(&hub, "web-1").await, (3, 3, 2, 1));
    emu.state.set_online("munich-2", true).expect("online");
    eventually("back to 3 successful", || async {
        (metrics(&hub, "web-1").await == (3, 3, 3, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_image_pull_failure_backs_off_and_reports_500() {
    let (emu, hub) = start(fast_emulator()).await;
    add_devices(&emu, &FIVE).await;
    emu.state.set_faults(Faults {
        failing_images: ["ghcr.io/x/broken:1".to_string()].into(),
        ..Faults::default()
    });
    hub.create_configuration(&base_deployment("base", "tags.site='munich'", 1))
        .await
        .expect("base");
    hub.create_configuration(&layered_deployment(
        "bad-1",
        "bad",
        "ghcr.io/x/broken:1",
        "tags.site='munich'",
        100,
    ))
    .await
    .expect("layered");
    let m = eventually("3 failures", || async {
        let m = metrics(&hub, "bad-1").await;
        (m.3 == 3).then_some(m)
    })
    .await;
    assert_eq!(m, (3, 3, 0, 3));
    let report = eventually("restarts grow", || async {
        let r = hub
            .edge_agent_twin("munich-1")
            .await
            .ok()??
            .edge_agent_report()?;
        (r.modules.get("bad")?.restart_count? >= 2).then_some(r)
    })
    .await;
    let status = report.last_desired_status.expect("status");
    assert_eq!(status.code, 500);
    assert!(status.description.contains("bad"), "{}", status.description);
    let bad = &report.modules["bad"];
    assert_eq!(bad.runtime_status, "backoff");
    assert_eq!(bad.exit_code, Some(1));
}

#[tokio::test]
async fn layered_without_a_base_reports_417() {
    let (emu, hub) = start(fast_emulator()).await;
    add_devices(&emu, &[("lonely", "munich")]).await;
    hub.create_configuration(&layered_deployment(
        "web-1",
        "web",
        "nginx",
        "tags.site='munich'",
        100,
    ))
    .await
    .expect("layered");
    let code = eventually("a report", || async {
        hub.edge_agent_twin("lonely")
            .await
            .ok()??
            .edge_agent_report()?
            .last_desired_status
            .map(|s| s.code)
    })
    .await;
    assert_eq!(code, 417);
    assert_eq!(metrics(&hub, "web-1").await, (1, 1, 0, 1));
}

#[tokio::test]
async fn the_highest_priority_base_wins_and_higher_layers_override_lower() {
    let (emu, hub) = start(fast_emulator()).await;
    add_devices(&emu, &[("d1", "munich")]).await;
    hub.create_configuration(&base_deployment("base-low", "tags.site='munich'", 1))
        .await
        .expect("low");
    hub.create_configuration(&base_deployment("base-high", "tags.site='munich'", 5))
        .await
        .expect("high");
    hub.create_configuration(&layered_deployment(
        "web-old",
        "web",
        "nginx:1",
        "tags.site='munich'",
        100,
    ))
    .await
    .expect("old");
    hub.create_configuration(&layered_deployment(
        "web-new",
        "web",
        "nginx:2",
        "tags.site='munich'",
        101,
    ))
    .await
    .expect("new");
    let report = eventually("reported", || async {
        let t = hub.edge_agent_twin("d1").await.ok()??;
        let r = t.edge_agent_report()?;
        (r.last_desired_version == t.desired_version()).then_some((t, r))
    })
    .await;
    let (twin, report) = report;
    assert_eq!(twin.configurations["base-high"]["status"], "Applied");
    assert_eq!(twin.configurations["base-low"]["status"], "Targeted");
    assert_eq!(
        report.modules["web"]
            .settings
            .as_ref()
            .map(|s| s.image.as_str()),
        Some("nginx:2")
    );
    assert_eq!(
        metrics(&hub, "base-low").await.1,
        0,
        "targeted, not applied"
    );
}

// ---- throttling ------------------------------------------------------------

#[tokio::test]
async fn a_429_storm_is_waited_out_without_failure() {
    let (emu, hub) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        throttle_next: 3,
        retry_after_seconds: 1,
        ..Faults::default()
    });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let hub = hub.with_observer(std::sync::Arc::new(move |a| {
        log.lock().expect("log").push((a.lane, a.status));
    }));
    let started = Instant::now();
    hub.create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect("created despite the storm");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(
        seen,
        [
            ("configurations", Some(429)),
            ("configurations", Some(429)),
            ("configurations", Some(429)),
            ("configurations", Some(200)),
        ],
        "every attempt is observed"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After honoured"
    );
    let c = emu.state.counters();
    assert_eq!(c.throttled, 3);
    assert_eq!(c.creates_by_id["base"], 1, "no duplicate");
}

#[tokio::test]
async fn the_hubs_bucket_throttles_and_the_client_paces_through_it() {
    let (emu, _) = start(EmulatorConfig {
        configuration_ops_per_minute: 120.0,
        burst: 2,
        ..fast_emulator()
    })
    .await;
    // A client configured faster than the hub allows meets 429s and waits them out.
    let hub = HubClient::new(
        conn(&emu),
        HubClientConfig {
            configuration_ops_per_minute: 6_000.0,
            burst: 10,
            ..fast_client(&emu.url)
        },
    )
    .expect("client");
    for i in 0..4 {
        hub.create_configuration(&base_deployment(&format!("c{i}"), "tags.site='a'", 1))
            .await
            .expect("paced through");
    }
    let c = emu.state.counters();
    assert!(c.throttled >= 1, "{c:?}");
    assert_eq!(
        c.requests
            .get("PUT configurations/{id} 429")
            .copied()
            .unwrap_or(0),
        c.throttled
    );
    assert_eq!(hub.list_configurations(None).await.expect("list").len(), 4);
}

#[tokio::test]
async fn throttling_answers_carry_retry_after() {
    let (emu, _) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        throttle_next: 1,
        retry_after_seconds: 7,
        ..Faults::default()
    });
    let r = raw(
        &emu,
        reqwest::Method::GET,
        &format!("/configurations?{API}"),
        Some(good_token(&emu)),
        &[],
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (429, "ThrottlingException"));
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
}

#[tokio::test]
async fn a_paced_client_with_too_small_a_budget_says_throttled() {
    let (emu, _) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        throttle_next: 10,
        retry_after_seconds: 5,
        ..Faults::default()
    });
    let hub = HubClient::new(
        conn(&emu),
        HubClientConfig {
            budget: Duration::from_secs(1),
            ..fast_client(&emu.url)
        },
    )
    .expect("client");
    let err = hub.list_configurations(None).await.expect_err("gives up");
    assert!(matches!(err, HubError::Throttled { .. }), "{err}");
}

// ---- the subcommand --------------------------------------------------------

/// Kills the child process when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_subcommand_prints_the_connection_string_first() {
    use std::io::BufRead as _;
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args([
                "iothub-emulator",
                "--listen",
                "127.0.0.1:0",
                "--hub-name",
                "test-hub",
                "--shared-access-key",
                "c2VjcmV0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // If the emulator fails it exits, and the read ends with an empty line.
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read");
    assert_eq!(
        first.trim_end(),
        "HostName=test-hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0"
    );
    ConnectionString::parse(first.trim_end()).expect("parses");
}

// ---- outages, errors, lost answers, latency --------------------------------

#[tokio::test]
async fn a_lost_create_answer_is_retried_without_a_duplicate() {
    let (emu, hub) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        lose_answer_next: 1,
        ..Faults::default()
    });
    let c = hub
        .create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect("the retry finds the applied create and adopts it");
    assert_eq!(c.id, "base");
    let counters = emu.state.counters();
    assert_eq!(counters.creates_by_id["base"], 1, "no duplicate");
    assert_eq!(counters.requests["PUT configurations/{id} 500"], 1);
    assert_eq!(counters.requests["PUT configurations/{id} 409"], 1);
}

#[tokio::test]
async fn a_lost_delete_answer_is_retried_and_404_counts_as_done() {
    let (emu, hub) = start(fast_emulator()).await;
    hub.create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect("created");
    emu.state.set_faults(Faults {
        lose_answer_next: 1,
        ..Faults::default()
    });
    hub.delete_configuration("base").await.expect("deleted");
    assert!(hub.get_configuration("base").await.expect("get").is_none());
    assert_eq!(
        emu.state.counters().requests["DELETE configurations/{id} 404"],
        1
    );
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (emu, hub) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        error_next: 2,
        ..Faults::default()
    });
    hub.create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect("third attempt lands");
    assert_eq!(emu.state.counters().creates_by_id["base"], 1);
}

#[tokio::test]
async fn an_outage_fails_within_the_budget_and_changes_nothing() {
    let (emu, _) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let hub = HubClient::new(
        conn(&emu),
        HubClientConfig {
            budget: Duration::from_secs(1),
            ..fast_client(&emu.url)
        },
    )
    .expect("client");
    let started = Instant::now();
    let err = hub
        .create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect_err("the hub is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the budget"
    );
    assert_eq!(err.reason(), "server_error", "{err}");
    assert_eq!(err.fault().map(|f| f.status), Some(503));
    assert!(err.is_transient());
    emu.state.set_faults(Faults::default());
    assert!(
        hub.list_configurations(None)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_slow_hub_times_out_and_a_late_write_is_not_duplicated() {
    let (emu, _) = start(fast_emulator()).await;
    emu.state.set_faults(Faults {
        latency_ms: 1_500,
        ..Faults::default()
    });
    let hub = HubClient::new(
        conn(&emu),
        HubClientConfig {
            request_timeout: Duration::from_millis(300),
            max_attempts: 2,
            ..fast_client(&emu.url)
        },
    )
    .expect("client");
    let err = hub
        .create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect_err("times out");
    assert_eq!(err.reason(), "timeout", "{err}");
    emu.state.set_faults(Faults::default());
    let created = eventually("the late write is visible", || async {
        emu.state.counters().creates_by_id.get("base").copied()
    })
    .await;
    assert_eq!(created, 1, "applied once, the retry met 409");
    let again = hub
        .create_configuration(&base_deployment("base", "tags.site='a'", 1))
        .await
        .expect("the caller's next try adopts it");
    assert_eq!(again.id, "base");
}

/// The mapping's output is what the hub accepts: a translated pod (with its
/// tag label) and the node's base deployment reach exactly the matching
/// devices, with the module running at the pod's image.
#[tokio::test]
async fn translated_deployments_are_accepted_and_reach_the_matching_devices() {
    use k8s_openapi::api::core::v1 as k8s;
    use spillway::edge::translate::{
        EdgeNode, LayeredInput, Resolved, base_deployment, layered_deployment, owner_of,
    };
    let (emu, hub) = start(fast_emulator()).await;
    add_devices(&emu, &FIVE).await;
    let node = EdgeNode::new("edge-a", "*");
    let pod: k8s::Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "sensor-abc", "namespace": "iot", "uid": "pod-uid",
            "labels": {"edge.spillway.io/tag.site": "munich"},
            "annotations": {"edge.spillway.io/routes":
                "{\"up\":\"FROM /messages/modules/sensor/outputs/* INTO $upstream\"}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "sensor", "uid": "rs-uid", "controller": true}]
        },
        "spec": {"containers": [{"name": "sensor", "image": "sensor:1.0",
            "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"memory": "64Mi"}}}]}
    }))
    .expect("pod");
    let owner = owner_of(&pod).expect("owner");
    let layered = layered_deployment(
        &pod,
        LayeredInput {
            node: &node,
            owner: &owner,
            revision: Some(2),
            rollout: None,
            resolved: &Resolved::default(),
        },
    )
    .expect("translates");
    let test = hub
        .test_queries(&layered.configuration.target_condition, &BTreeMap::new())
        .await
        .expect("testQueries");
    assert!(test.is_ok(), "{test:?}");
    hub.create_configuration(&base_deployment(&node))
        .await
        .expect("base accepted");
    hub.create_configuration(&layered.configuration)
        .await
        .expect("layered accepted");
    let id = layered.id().to_string();
    let m = eventually("3 devices report success", || async {
        let m = metrics(&hub, &id).await;
        (m.2 == 3).then_some(m)
    })
    .await;
    assert_eq!(m, (3, 3, 3, 0));
    let twin = hub
        .edge_agent_twin("munich-1")
        .await
        .expect("twin")
        .expect("exists");
    let report = twin.edge_agent_report().expect("report");
    let sensor = &report.modules["sensor"];
    assert_eq!(sensor.runtime_status, "running");
    assert_eq!(
        sensor.settings.as_ref().map(|s| s.image.as_str()),
        Some("sensor:1.0")
    );

    // The pod status read from what the hub reports: Ready on 3 of 3.
    let mut twins = Vec::new();
    for (device, _) in FIVE {
        twins.extend(hub.edge_agent_twin(device).await.expect("twin"));
    }
    let state = spillway::edge::status::DeploymentState {
        configuration: hub
            .get_configuration(&id)
            .await
            .expect("get")
            .expect("exists"),
        twins,
    };
    let status = spillway::edge::status::pod_status(&pod, &state);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        status.message.as_deref(),
        Some("targeted=3 applied=3 ok=3 failed=0")
    );
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}
