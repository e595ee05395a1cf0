//! The ACI emulator over real loopback HTTP, driven by a plain HTTP client the
//! way an ARM client would: bearer token, api-version, ARM paths and JSON.
//! Waits are polls with deadlines; the emulator's speed factor keeps them short.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::aci::{self, AciError, ContainerGroup, ListResult, Usage, UsageEntry};
use std::time::{Duration, Instant};

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const RG: &str = "rg-burst";
const API: &str = "api-version=2023-05-01";

#[derive(Clone)]
struct Arm {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
    /// Classify as the production client does.
    fn error(&self) -> AciError {
        let retry_after = self
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        AciError::from_arm(
            self.status.as_u16(),
            self.code(),
            self.json["error"]["message"].as_str().unwrap_or_default(),
            retry_after,
        )
    }
}

impl Arm {
    fn new(emu: &EmulatorHandle) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: emu.url.clone(),
            token: Some("test-token".into()),
            timeout: Duration::from_secs(10),
        }
    }

    fn group_path(name: &str) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerInstance/containerGroups/{name}?{API}"
        )
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let json = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| format!("{e}: {bytes:?}"))?
            };
            Ok(Answer {
                status,
                headers,
                json,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| "client timeout".to_string())?
    }

    async fn send(&self, method: Method, path: &str, body: Option<&serde_json::Value>) -> Answer {
        match self.try_send(method, path, body).await {
            Ok(a) => a,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    async fn put(&self, g: &ContainerGroup) -> Answer {
        let body = serde_json::to_value(g).expect("serializable");
        self.send(Method::PUT, &Self::group_path(&g.name), Some(&body))
            .await
    }

    async fn get(&self, name: &str) -> Answer {
        self.send(Method::GET, &Self::group_path(name), None).await
    }

    /// Poll GET until `done` holds, failing after `deadline`.
    async fn poll_until(
        &self,
        name: &str,
        deadline: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let a = self.get(name).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.json);
            if done(&a.json) {
                return a.json;
            }
            assert!(
                start.elapsed() < deadline,
                "{name} never reached the state: {}",
                a.json
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A group as the translation would produce it, via the real translation.
fn group(name: &str, cpu: &str, ports: &[i32]) -> ContainerGroup {
    use k8s_openapi::api::core::v1 as k8s;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let container = k8s::Container {
        name: "app".into(),
        image: Some("nginx:1.27".into()),
        command: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]),
        ports: Some(
            ports
                .iter()
                .map(|p| k8s::ContainerPort {
                    container_port: *p,
                    ..Default::default()
                })
                .collect(),
        ),
        resources: Some(k8s::ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity(cpu.to_string()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = k8s::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("web".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec {
            containers: vec![container],
            ..Default::default()
        }),
        status: None,
    };
    let cfg = aci::translate::TranslateConfig::new("cluster-1", "westeurope");
    let policy = spillway::policy::AciSettings {
        public_ip: spillway::policy::PublicIp::Auto,
        dns_name_label: Some("{{namespace}}-{{name}}".into()),
        ..Default::default()
    };
    let resolved = aci::translate::Resolved::default();
    let ctx = aci::translate::PodContext {
        config: &cfg,
        aci: &policy,
        resolved: &resolved,
    };
    aci::translate::pod_to_group(&pod, &ctx).expect("translates")
}

fn fast() -> EmulatorConfig {
    // 2 s + 3 s of provisioning in 50 ms.
    EmulatorConfig {
        speed: 100.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn lifecycle_put_poll_list_logs_delete() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let arm = Arm::new(&emu);
    let g = group("frontend", "500m", &[80]);

    let created = arm.put(&g).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert!(matches!(
        created.json["properties"]["provisioningState"].as_str(),
        Some("Accepted" | "Creating")
    ));

    let done = arm
        .poll_until(&g.name, Duration::from_secs(10), |j| {
            j["properties"]["provisioningState"] == "Succeeded"
        })
        .await;
    assert_eq!(done["properties"]["instanceView"]["state"], "Running");
    let read: ContainerGroup =
        serde_json::from_value(done).expect("ARM JSON parses into the model");
    let status = aci::translate::pod_status_from_group(&read);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ip = status.pod_ip.expect("public IP allocated");
    assert!(ip.starts_with("20.0."), "{ip}");
    assert_eq!(
        read.properties.ip_address.and_then(|i| i.fqdn).as_deref(),
        Some("web-frontend.westeurope.azurecontainer.io")
    );

    let list = arm
        .send(
            Method::GET,
            &format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerInstance/containerGroups?{API}"),
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let list: ListResult<ContainerGroup> = serde_json::from_value(list.json).expect("list parses");
    let ours: Vec<&ContainerGroup> = list
        .value
        .iter()
        .filter(|g| g.tags.get(aci::TAG_CLUSTER).map(String::as_str) == Some("cluster-1"))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].name, g.name);

    let logs = arm
        .send(
            Method::GET,
            &format!(
                "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerInstance/containerGroups/{}/containers/app/logs?{API}&tail=1",
                g.name
            ),
            None,
        )
        .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(
        logs.json["content"].as_str().map(|c| c.lines().count()),
        Some(1)
    );

    let usage = arm
        .send(
            Method::GET,
            &format!("/subscriptions/{SUB}/providers/Microsoft.ContainerInstance/locations/westeurope/usages?{API}"),
            None,
        )
        .await;
    let usage: ListResult<UsageEntry> = serde_json::from_value(usage.json).expect("usage parses");
    let usage = Usage::from_entries(&usage.value).expect("cores and groups");
    assert_eq!(
        (usage.container_groups.current, usage.cores.current),
        (1, 1)
    );

    let del = arm
        .send(Method::DELETE, &Arm::group_path(&g.name), None)
        .await;
    assert_eq!(del.status, StatusCode::OK);
    let gone = arm.get(&g.name).await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "ResourceNotFound")
    );
    assert_eq!(gone.error(), AciError::NotFound);
    let again = arm
        .send(Method::DELETE, &Arm::group_path(&g.name), None)
        .await;
    assert_eq!(
        again.status,
        StatusCode::NO_CONTENT,
        "deleting a missing group succeeds"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn same_spec_put_is_a_no_op() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let arm = Arm::new(&emu);
    let g = group("api", "250m", &[]);
    assert_eq!(arm.put(&g).await.status, StatusCode::CREATED);
    assert_eq!(arm.put(&g).await.status, StatusCode::OK);
    assert_eq!(arm.put(&g).await.status, StatusCode::OK);
    let snap = arm.send(Method::GET, "/_emulator/groups", None).await;
    assert_eq!(snap.json["groups"][0]["puts"], 3);
    assert_eq!(snap.json["counters"]["creates"], 1);
    assert_eq!(snap.json["counters"]["noopPuts"], 2);
    assert_eq!(snap.json["counters"]["createsByName"][&g.name], 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let emu = Emulator::start(EmulatorConfig {
        token: Some("s3cret".into()),
        ..fast()
    })
    .await
    .expect("starts");
    let mut arm = Arm::new(&emu);
    arm.token = None;
    let a = arm.get("x").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "AuthenticationFailed")
    );
    assert!(matches!(a.error(), AciError::Auth { .. }));
    arm.token = Some("guess".into());
    assert_eq!(arm.get("x").await.status, StatusCode::UNAUTHORIZED);
    arm.token = Some("s3cret".into());
    assert_eq!(arm.get("x").await.status, StatusCode::NOT_FOUND);
    emu.shutdown().await;
}

#[tokio::test]
async fn quotas_answer_with_arm_error_codes() {
    let emu = Emulator::start(EmulatorConfig {
        cores_limit: 2,
        groups_limit: 2,
        ..fast()
    })
    .await
    .expect("starts");
    let arm = Arm::new(&emu);
    assert_eq!(
        arm.put(&group("one", "1500m", &[])).await.status,
        StatusCode::CREATED
    );
    let cores = arm.put(&group("two", "1", &[])).await;
    assert_eq!(
        (cores.status, cores.code()),
        (StatusCode::CONFLICT, "ContainerGroupQuotaReached")
    );
    assert!(
        cores.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'StandardCores'"))
    );
    assert!(matches!(cores.error(), AciError::QuotaExceeded { .. }));
    assert!(!cores.error().is_retryable());
    assert_eq!(
        arm.put(&group("two", "500m", &[])).await.status,
        StatusCode::CREATED
    );
    let groups = arm.put(&group("three", "100m", &[])).await;
    assert_eq!(groups.code(), "ContainerGroupQuotaReached");
    assert!(
        groups.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'ContainerGroups'"))
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_writes_is_throttled_with_retry_after() {
    let emu = Emulator::start(EmulatorConfig {
        write_burst: 5,
        writes_per_sec: 1.0,
        ..fast()
    })
    .await
    .expect("starts");
    let arm = Arm::new(&emu);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let g = group(&format!("burst-{i}"), "100m", &[]);
        let arm = arm.clone();
        set.spawn(async move { arm.put(&g).await });
    }
    let answers: Vec<Answer> = set.join_all().await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let throttled: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        (5..=6).contains(&ok),
        "{ok} writes got through a bucket of 5"
    );
    assert_eq!(ok + throttled.len(), 20);
    for a in &throttled {
        assert_eq!(a.code(), "SubscriptionRequestsThrottled");
        let retry: u64 = a
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!(retry >= 1);
        assert_eq!(
            a.headers
                .get("x-ms-ratelimit-remaining-subscription-writes")
                .and_then(|v| v.to_str().ok()),
            Some("0")
        );
        assert!(
            matches!(a.error(), AciError::Throttled { retry_after } if retry_after >= Duration::from_secs(1))
        );
    }
    // Reads are counted separately and still pass.
    let created = answers
        .iter()
        .find(|a| a.status == StatusCode::CREATED)
        .and_then(|a| a.json["name"].as_str())
        .expect("a created group");
    assert_eq!(arm.get(created).await.status, StatusCode::OK);
    emu.shutdown().await;
}

#[tokio::test]
async fn injected_faults_errors_timeouts_and_vanishing_groups() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let arm = Arm::new(&emu);
    let arm_ref = &arm;
    let plan = |j: serde_json::Value| async move {
        arm_ref
            .send(Method::POST, "/_emulator/faults", Some(&j))
            .await
    };

    // 5xx on every GET: classified as transient.
    assert_eq!(
        plan(serde_json::json!({"operations": {"get": {"errorRate": 1.0}}}))
            .await
            .status,
        StatusCode::OK
    );
    let a = arm.get("anything").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(matches!(a.error(), AciError::Transient { .. }) && a.error().is_retryable());

    // A PUT that hangs past the client's timeout is still applied; the retry
    // after the timeout must be (and is) idempotent.
    plan(serde_json::json!({"operations": {"put": {"timeoutRate": 1.0}}, "hangMs": 3000})).await;
    let g = group("slow", "250m", &[]);
    let short = Arm {
        timeout: Duration::from_millis(300),
        ..Arm::new(&emu)
    };
    let body = serde_json::to_value(&g).expect("serializable");
    let err = short
        .try_send(Method::PUT, &Arm::group_path(&g.name), Some(&body))
        .await;
    assert!(
        matches!(err, Err(ref e) if e == "client timeout"),
        "{:?}",
        err.as_ref().map(|a| a.status)
    );
    plan(serde_json::json!({})).await;
    let retry = arm.put(&g).await;
    assert_eq!(
        retry.status,
        StatusCode::OK,
        "the timed-out PUT had created the group"
    );
    let snap = arm.send(Method::GET, "/_emulator/groups", None).await;
    assert_eq!(
        snap.json["counters"]["createsByName"][&g.name], 1,
        "no duplicate create"
    );

    // Extra latency is applied.
    plan(serde_json::json!({"operations": {"*": {"latencyMs": 150}}})).await;
    let t = Instant::now();
    assert_eq!(arm.get(&g.name).await.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(150));

    // Capacity errors on new groups, as ARM's ServiceUnavailable.
    plan(serde_json::json!({"capacityErrorRate": 1.0})).await;
    let cap = arm.put(&group("other", "250m", &[])).await;
    assert_eq!(
        (cap.status, cap.code()),
        (StatusCode::CONFLICT, "ServiceUnavailable")
    );
    assert!(matches!(cap.error(), AciError::CapacityUnavailable { .. }));

    // A group vanishes without a DELETE.
    let v = plan(serde_json::json!({"vanish": [g.name]})).await;
    assert_eq!(v.json["vanished"], 1);
    assert_eq!(arm.get(&g.name).await.status, StatusCode::NOT_FOUND);

    // A bad plan is refused and the old one kept (a POST replaces the plan).
    plan(serde_json::json!({"capacityErrorRate": 0.5})).await;
    let bad = plan(serde_json::json!({"operations": {"put": {"errorRate": 1.5}}})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let current = arm.send(Method::GET, "/_emulator/faults", None).await;
    assert_eq!(current.json["capacityErrorRate"], 0.5);
    emu.shutdown().await;
}

#[test]
fn standalone_subcommand_serves_and_rejects_bad_flags() {
    let exe = env!("CARGO_BIN_EXE_spillway");
    let bad = std::process::Command::new(exe)
        .args(["aci-emulator", "--speed=-2"])
        .output()
        .expect("runs");
    assert_eq!(
        bad.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = std::process::Command::new(exe)
        .args(["aci-emulator", "--cores", "many"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(64));
    let help = std::process::Command::new(exe)
        .args(["aci-emulator", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--listen", "--speed", "--token", "--cores", "--groups"] {
        let line = help.lines().find(|l| l.contains(flag)).unwrap_or_default();
        assert!(
            line.contains("[default:"),
            "{flag} shows its default: {help}"
        );
    }

    let mut child = std::process::Command::new(exe)
        .args([
            "aci-emulator",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "100",
            "--token",
            "tok",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawns");
    let result = (|| -> Result<(), String> {
        use std::io::BufRead as _;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let url = line.trim().rsplit(' ').next().ok_or("no URL")?.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let req = Request::get(format!("{url}{}", Arm::group_path("x")))
                .header("authorization", "Bearer tok")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            if resp.status() == StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(format!("unexpected {}", resp.status()))
            }
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        panic!("standalone emulator: {e}");
    }
}

/// Every golden translation in tests/data/aci/ (except the `reject-*`
/// errors) is a body ARM accepts: the emulator, enforcing ARM's rules,
/// creates each one as PUT.
#[tokio::test]
async fn every_golden_translation_is_accepted() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let arm = Arm::new(&emu);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/aci");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with("reject-"))
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == "web.json"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "web-raise-requests.json"),
        "{names:?}"
    );
    for file in names {
        let text = std::fs::read_to_string(dir.join(&file)).expect("readable");
        let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let name = body["name"].as_str().expect("named").to_string();
        // Goldens in a subnet: the VNet has it, delegated to ACI.
        for (i, s) in body["properties"]["subnetIds"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let id = s["id"].as_str().expect("subnet id").to_string();
            emu.state
                .define_subnet(spillway::aci::emulator::SubnetDefinition {
                    id,
                    address_prefix: format!("10.240.{i}.0/24"),
                    delegations: vec![spillway::aci::emulator::ACI_DELEGATION.into()],
                })
                .expect("subnet defined");
        }
        let a = arm
            .send(Method::PUT, &Arm::group_path(&name), Some(&body))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{file}: {}", a.json);
        // Goldens may share a pod (and so a group name): start clean.
        let d = arm
            .send(Method::DELETE, &Arm::group_path(&name), None)
            .await;
        assert_eq!(d.status, StatusCode::OK, "{file}: {}", d.json);
    }
    emu.shutdown().await;
}

/// The Burstable pod as a translation without ACI's rules would send it
/// (limit 1 CPU over a 0.5 CPU group) is refused with ARM's code, and the
/// production client classifies it as an invalid spec (the pod fails).
#[tokio::test]
async fn an_unclamped_burstable_group_is_refused_with_arms_code() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let arm = Arm::new(&emu);
    let mut g = group("frontend", "500m", &[80]);
    g.properties.containers[0].properties.resources.limits = Some(aci::ResourceSpec {
        cpu: 1.0,
        memory_in_gb: 1.5,
    });
    let a = arm.put(&g).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.json);
    assert_eq!(
        a.code(),
        "ContainerLimitGreaterThanContainerGroupTotalRequest"
    );
    assert_eq!(a.error().reason(), "aci-invalid-spec");
    emu.shutdown().await;
}
