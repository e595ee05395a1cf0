//! The Azure implementation of `ContainerGroups` against the emulator over
//! loopback HTTP: the production code path, the emulated cloud. This is also
//! the contract every `ContainerGroups` keeps (see the trait's doc comment).

use spillway::aci::azure::{AzureConfig, AzureContainerGroups, Credential};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Faults, OperationFaults};
use spillway::aci::translate::{
    PodContext, Resolved, TranslateConfig, group_name_in, pod_status_from_group, pod_to_group,
};
use spillway::aci::{AciError, ContainerGroup, ContainerGroups, LogOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUB: &str = "00000000-0000-0000-0000-0000000000aa";

fn client(emu: &EmulatorHandle, token: &str, timeout: Duration) -> Arc<dyn ContainerGroups> {
    let mut cfg = AzureConfig::new(SUB, "rg-burst", Credential::StaticToken(token.into()));
    cfg.endpoint = emu.url.clone();
    cfg.timeout = timeout;
    Arc::new(AzureContainerGroups::new(&cfg).expect("client builds"))
}

fn group(cluster: &str, name: &str, cpu: &str, port: Option<i32>) -> ContainerGroup {
    use k8s_openapi::api::core::v1 as k8s;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let pod = k8s::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("jobs".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec {
            containers: vec![k8s::Container {
                name: "main".into(),
                image: Some("busybox:1.36".into()),
                command: Some(vec!["sleep".into(), "3600".into()]),
                env: Some(vec![k8s::EnvVar {
                    name: "TOKEN".into(),
                    value_from: Some(k8s::EnvVarSource {
                        secret_key_ref: Some(k8s::SecretKeySelector {
                            name: "s".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    value: None,
                }]),
                ports: port.map(|p| {
                    vec![k8s::ContainerPort {
                        container_port: p,
                        ..Default::default()
                    }]
                }),
                resources: Some(k8s::ResourceRequirements {
                    requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let mut resolved = Resolved::default();
    resolved.env.entry("main".into()).or_default().insert(
        "TOKEN".into(),
        spillway::aci::translate::EnvValue::Secret("s3cr3t".into()),
    );
    let cfg = TranslateConfig::new(cluster, "westeurope");
    let policy = spillway::policy::AciSettings::default();
    pod_to_group(
        &pod,
        &PodContext {
            config: &cfg,
            aci: &policy,
            resolved: &resolved,
        },
    )
    .expect("translates")
}

async fn poll_running(aci: &dyn ContainerGroups, name: &str) -> ContainerGroup {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = aci.get(name).await.expect("get").expect("exists");
        if pod_status_from_group(&g).phase.as_deref() == Some("Running") {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never ran: {:?}",
            g.properties.provisioning_state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast() -> EmulatorConfig {
    EmulatorConfig {
        speed: 100.0,
        token: Some("tok".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn contract_create_get_list_logs_usage_delete() {
    let emu = Emulator::start(EmulatorConfig {
        page_size: 2,
        ..fast()
    })
    .await
    .expect("starts");
    let aci = client(&emu, "tok", Duration::from_secs(10));
    let web = group("c1", "web", "500m", Some(8080));
    let created = aci.create_or_update(&web).await.expect("created");
    assert!(matches!(
        created.properties.provisioning_state.as_deref(),
        Some("Accepted" | "Creating")
    ));
    for name in ["a", "b", "c"] {
        aci.create_or_update(&group("c1", name, "100m", None))
            .await
            .expect("created");
    }
    aci.create_or_update(&group("other-cluster", "d", "100m", None))
        .await
        .expect("created");

    let running = poll_running(aci.as_ref(), &web.name).await;
    let status = pod_status_from_group(&running);
    assert!(status.pod_ip.is_some_and(|ip| ip.starts_with("20.0.")));
    let env = &running.properties.containers[0]
        .properties
        .environment_variables;
    assert_eq!(env[0].secure_value, None, "secrets never come back");

    // Pages of 2 are followed; only this cluster's groups are listed; a listed
    // group is the GET answer without instance views (as ARM lists).
    let listed = aci.list("c1").await.expect("list");
    let listed_web = listed
        .iter()
        .find(|g| g.name == web.name)
        .expect("web listed");
    let mut expected = aci.get(&web.name).await.expect("get").expect("exists");
    expected.properties.instance_view = None;
    for c in &mut expected.properties.containers {
        c.properties.instance_view = None;
    }
    assert_eq!(
        listed_web, &expected,
        "nothing lost through the SDK's list models"
    );
    let mut names: Vec<String> = listed.into_iter().map(|g| g.name).collect();
    names.sort();
    let expected: Vec<String> = ["a", "b", "c", "web"]
        .iter()
        .map(|n| group_name_in("c1", "jobs", n))
        .collect();
    assert_eq!(names, expected);

    let logs = aci
        .logs(
            &web.name,
            "main",
            LogOptions {
                tail: Some(1),
                ..LogOptions::default()
            },
        )
        .await
        .expect("logs");
    assert_eq!(logs.lines().count(), 1);
    // `timestamps` reaches ARM through the SDK: each line starts with its time.
    let stamped = aci
        .logs(
            &web.name,
            "main",
            LogOptions {
                tail: Some(1),
                timestamps: true,
            },
        )
        .await
        .expect("logs");
    let (time, rest) = stamped.split_once(' ').expect("a time first");
    assert!(
        spillway::units::Timestamp::parse_rfc3339(time).is_ok(),
        "{stamped}"
    );
    assert_eq!(rest, logs, "the same line, with its time");
    assert_eq!(
        aci.logs(&web.name, "nope", LogOptions::default()).await,
        Err(AciError::NotFound)
    );

    let usage = aci.usage("westeurope").await.expect("usage");
    assert_eq!(usage.container_groups.current, 5);
    assert_eq!(usage.cores.limit, 100);

    aci.delete(&web.name).await.expect("deleted");
    assert_eq!(aci.get(&web.name).await.expect("get"), None);
    aci.delete(&web.name)
        .await
        .expect("deleting a missing group is success");
    emu.shutdown().await;
}

#[tokio::test]
async fn create_is_idempotent() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let aci = client(&emu, "tok", Duration::from_secs(10));
    let g = group("c1", "job", "250m", None);
    aci.create_or_update(&g).await.expect("created");
    let again = aci.create_or_update(&g).await.expect("same spec");
    assert_eq!(again.name, g.name);
    let counters = emu.state.counters();
    assert_eq!((counters.creates, counters.noop_puts), (1, 1));
    emu.shutdown().await;
}

#[tokio::test]
async fn errors_are_classified() {
    let emu = Emulator::start(EmulatorConfig {
        cores_limit: 1,
        write_burst: 3,
        writes_per_sec: 0.2,
        ..fast()
    })
    .await
    .expect("starts");
    let wrong = client(&emu, "wrong", Duration::from_secs(10));
    assert!(matches!(wrong.get("x").await, Err(AciError::Auth { .. })));

    let aci = client(&emu, "tok", Duration::from_secs(10));
    aci.create_or_update(&group("c1", "one", "1", None))
        .await
        .expect("created");
    let quota = aci.create_or_update(&group("c1", "two", "1", None)).await;
    assert!(
        matches!(quota, Err(AciError::QuotaExceeded { ref code, .. }) if code == "ContainerGroupQuotaReached"),
        "{quota:?}"
    );

    // The third write empties the bucket of 3: the next is throttled, and
    // Retry-After (1 token at 0.2/s = 5 s) reaches the caller.
    let _ = aci.delete("nothing").await;
    let throttled = aci.delete("nothing").await;
    assert_eq!(
        throttled,
        Err(AciError::Throttled {
            retry_after: Duration::from_secs(5)
        })
    );

    emu.state
        .set_faults(Faults {
            operations: [(
                "get".to_string(),
                OperationFaults {
                    error_rate: 1.0,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .expect("valid plan");
    let transient = aci.get("one").await;
    assert!(
        matches!(transient, Err(ref e @ AciError::Transient { .. }) if e.is_retryable()),
        "{transient:?}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_create_is_safe_to_retry() {
    let emu = Emulator::start(fast()).await.expect("starts");
    emu.state
        .set_faults(Faults {
            operations: [(
                "put".to_string(),
                OperationFaults {
                    timeout_rate: 1.0,
                    ..Default::default()
                },
            )]
            .into(),
            hang_ms: 5_000,
            ..Default::default()
        })
        .expect("valid plan");
    let impatient = client(&emu, "tok", Duration::from_millis(300));
    let g = group("c1", "slow", "250m", None);
    let first = impatient.create_or_update(&g).await;
    assert!(
        matches!(first, Err(AciError::Transient { .. })),
        "{first:?}"
    );
    emu.state.set_faults(Faults::default()).expect("valid plan");
    impatient
        .create_or_update(&g)
        .await
        .expect("the retry succeeds");
    let counters = emu.state.counters();
    assert_eq!(
        counters.creates_by_name.get(&g.name),
        Some(&1),
        "no duplicate group"
    );
    emu.shutdown().await;
}

/// ARM's list omits instance views: the helper GETs exactly the listed groups
/// that finished provisioning, and fails rather than map a group without one.
#[tokio::test]
async fn list_with_instance_views_reads_finished_groups_again() {
    use spillway::aci::list_with_instance_views;
    use spillway::aci::translate::has_instance_view;
    let gets = |emu: &EmulatorHandle| emu.state.counters().requests.get("get").copied();

    // Still provisioning (a very slow emulator): returned as listed, no GET.
    let slow = Emulator::start(EmulatorConfig {
        speed: 0.001,
        ..fast()
    })
    .await
    .expect("starts");
    let aci = client(&slow, "tok", Duration::from_secs(10));
    for name in ["a", "b"] {
        aci.create_or_update(&group("c1", name, "100m", None))
            .await
            .expect("created");
    }
    let listed = list_with_instance_views(aci.as_ref(), "c1")
        .await
        .expect("listed");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|g| {
        g.properties.provisioning_state.as_deref() == Some("Accepted") && !has_instance_view(g)
    }));
    assert_eq!(gets(&slow), None, "no GET for groups still provisioning");
    slow.shutdown().await;

    // Finished: every group of the cluster is read again, in list order.
    let emu = Emulator::start(fast()).await.expect("starts");
    let aci = client(&emu, "tok", Duration::from_secs(10));
    for name in ["a", "b", "c"] {
        let g = group("c1", name, "100m", None);
        aci.create_or_update(&g).await.expect("created");
        poll_running(aci.as_ref(), &g.name).await;
    }
    aci.create_or_update(&group("other", "d", "100m", None))
        .await
        .expect("created");
    let plain = aci.list("c1").await.expect("list");
    assert!(plain.iter().all(|g| !has_instance_view(g)), "as ARM lists");
    let before = gets(&emu).unwrap_or(0);
    let full = list_with_instance_views(aci.as_ref(), "c1")
        .await
        .expect("listed");
    assert_eq!(gets(&emu).unwrap_or(0) - before, 3, "one GET per group");
    let names: Vec<&str> = full.iter().map(|g| g.name.as_str()).collect();
    let expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| group_name_in("c1", "jobs", n))
        .collect();
    assert_eq!(names, expected);
    for g in &full {
        assert!(has_instance_view(g), "{} has its instance view", g.name);
        assert_eq!(
            pod_status_from_group(g).phase.as_deref(),
            Some("Running"),
            "{}",
            g.name
        );
    }

    // One group's GET fails (a fault aimed at it): the whole call fails.
    emu.state
        .set_faults(Faults {
            groups: [(
                group_name_in("c1", "jobs", "b"),
                [(
                    "get".to_string(),
                    OperationFaults {
                        error_rate: 1.0,
                        ..Default::default()
                    },
                )]
                .into(),
            )]
            .into(),
            ..Default::default()
        })
        .expect("valid plan");
    let failed = list_with_instance_views(aci.as_ref(), "c1").await;
    assert!(
        matches!(failed, Err(AciError::Transient { .. })),
        "{failed:?}"
    );
    assert!(
        aci.get(&group_name_in("c1", "jobs", "a"))
            .await
            .expect("other groups work")
            .is_some(),
        "the fault is aimed at jobs-b only"
    );
    emu.shutdown().await;
}

/// Every golden translation survives the trip through the SDK's models (used
/// for list pages), except secret volume contents: the SDK's `SecretVolume` is
/// an empty struct. PUT bodies therefore bypass the SDK models (see
/// `secret_volume_files_reach_the_service`), and ARM never returns secret
/// contents anyway.
#[test]
fn sdk_models_carry_every_translated_field() {
    use azure_mgmt_containerinstance::package_preview_2024_05::models as sdk;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/aci");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if json.get("error").is_some() {
            continue;
        }
        let mut json = json;
        let volumes = json
            .get_mut("properties")
            .and_then(|p| p.get_mut("volumes"));
        for v in volumes.and_then(|v| v.as_array_mut()).into_iter().flatten() {
            if let Some(secret) = v.get_mut("secret") {
                *secret = serde_json::json!({});
            }
        }
        let ours: ContainerGroup = serde_json::from_value(json.clone()).expect("our model");
        let theirs: sdk::ContainerGroup =
            serde_json::from_value(serde_json::to_value(&ours).expect("ser")).expect("SDK model");
        let back: serde_json::Value = serde_json::to_value(&theirs).expect("ser");
        assert_eq!(
            back,
            json,
            "{} changed through the SDK model",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} golden groups found");
}

#[tokio::test]
async fn secret_volume_files_reach_the_service() {
    let emu = Emulator::start(fast()).await.expect("starts");
    let aci = client(&emu, "tok", Duration::from_secs(10));
    let mut g = group("c1", "with-secret", "250m", None);
    g.properties.volumes.push(spillway::aci::Volume {
        name: "tls".into(),
        secret: Some([("tls.crt".to_string(), "Q0VSVA==".to_string())].into()),
        ..Default::default()
    });
    g.properties.containers[0]
        .properties
        .volume_mounts
        .push(spillway::aci::VolumeMount {
            name: "tls".into(),
            mount_path: "/etc/tls".into(),
            read_only: Some(true),
        });
    aci.create_or_update(&g).await.expect("created");
    let snap = emu.state.snapshot();
    assert_eq!(
        snap[0].secret_files.get("tls").map(Vec::as_slice),
        Some(&["tls.crt".to_string()][..]),
        "the secret volume's files were sent"
    );
    emu.shutdown().await;
}

/// Workload identity: the projected token file is read again on refresh, and
/// the ARM scope is requested even though the endpoint is the emulator.
#[tokio::test]
async fn workload_identity_rereads_the_token_file() {
    use axum::routing::post;
    type Seen = Arc<std::sync::Mutex<Vec<(String, String)>>>;
    let seen: Seen = Arc::default();
    let authority = axum::Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(|axum::extract::State(seen): axum::extract::State<Seen>, body: String| async move {
                let field = |name: &str| {
                    body.split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .unwrap_or_default()
                        .replace("%2F", "/")
                        .replace("%3A", ":")
                };
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((field("client_assertion"), field("scope")));
                // Short-lived, so every call refreshes.
                axum::Json(serde_json::json!({
                    "token_type": "Bearer", "expires_in": 60, "ext_expires_in": 60, "access_token": "tok"
                }))
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let authority_url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, authority).await });

    let emu = Emulator::start(fast()).await.expect("starts");
    let token_file = std::env::temp_dir().join(format!(
        "spillway-wi-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::write(&token_file, "assertion-1\n").expect("write token");
    let mut cfg = AzureConfig::new(
        SUB,
        "rg-burst",
        Credential::WorkloadIdentity {
            tenant_id: "tenant-1".into(),
            client_id: "client-1".into(),
            token_file: token_file.clone(),
            authority_host: authority_url,
        },
    );
    cfg.endpoint = emu.url.clone();
    let aci = AzureContainerGroups::new(&cfg).expect("client builds");

    assert_eq!(
        aci.get("x").await,
        Ok(None),
        "authenticated with the exchanged token"
    );
    std::fs::write(&token_file, "assertion-2\n").expect("rotate token");
    assert_eq!(aci.get("x").await, Ok(None));
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let assertions: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        assertions,
        ["assertion-1", "assertion-2"],
        "the rotated file was read"
    );
    assert!(
        seen.iter()
            .all(|(_, scope)| scope == "https://management.azure.com/.default"),
        "{seen:?}"
    );

    std::fs::remove_file(&token_file).expect("cleanup");
    assert!(
        matches!(aci.get("x").await, Err(AciError::Auth { .. })),
        "a missing token file is an auth error"
    );
    emu.shutdown().await;
    server.abort();
}

mod paced {
    use super::*;
    use spillway::aci::paced::{Paced, PacingConfig};

    fn paced(emu: &EmulatorHandle, config: PacingConfig) -> Paced<AzureContainerGroups> {
        let cfg = AzureConfig::for_emulator(emu.url.clone(), "tok", SUB, "rg-burst");
        Paced::new(
            AzureContainerGroups::new(&cfg).expect("client builds"),
            config,
        )
    }

    fn quick() -> PacingConfig {
        PacingConfig {
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            budget: Duration::from_secs(10),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn waits_out_retry_after_instead_of_failing() {
        // ARM side: 2 writes, then one per second.
        let emu = Emulator::start(EmulatorConfig {
            write_burst: 2,
            writes_per_sec: 1.0,
            ..fast()
        })
        .await
        .expect("starts");
        let aci = paced(&emu, quick());
        let start = Instant::now();
        for name in ["a", "b", "c"] {
            aci.create_or_update(&group("c1", name, "100m", None))
                .await
                .expect("created despite throttling");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "waited for Retry-After"
        );
        let counters = emu.state.counters();
        assert_eq!(
            (counters.creates, counters.throttled),
            (3, 1),
            "one 429, then waited"
        );
        emu.shutdown().await;
    }

    #[tokio::test]
    async fn own_bucket_keeps_below_arm_limits() {
        let emu = Emulator::start(EmulatorConfig {
            write_burst: 3,
            writes_per_sec: 1.0,
            ..fast()
        })
        .await
        .expect("starts");
        let aci = paced(
            &emu,
            PacingConfig {
                writes_per_sec: 20.0,
                write_burst: 1,
                ..quick()
            },
        );
        let start = Instant::now();
        for _ in 0..3 {
            aci.delete("missing").await.expect("deleted");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "paced at 20/s"
        );
        assert_eq!(
            emu.state.counters().throttled,
            0,
            "ARM never had to throttle"
        );
        emu.shutdown().await;
    }

    #[tokio::test]
    async fn retries_transient_errors_but_not_quota() {
        let emu = Emulator::start(EmulatorConfig {
            cores_limit: 1,
            seed: 7,
            ..fast()
        })
        .await
        .expect("starts");
        emu.state
            .set_faults(Faults {
                operations: [(
                    "get".to_string(),
                    OperationFaults {
                        error_rate: 0.5,
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            })
            .expect("valid plan");
        let aci = paced(
            &emu,
            PacingConfig {
                max_attempts: 20,
                ..quick()
            },
        );
        for _ in 0..10 {
            assert_eq!(aci.get("x").await, Ok(None), "5xx retried away");
        }
        assert!(
            emu.state.counters().faults_injected > 0,
            "faults were injected"
        );

        aci.create_or_update(&group("c1", "one", "1", None))
            .await
            .expect("created");
        let puts_before = emu.state.counters().requests.get("put").copied();
        let quota = aci.create_or_update(&group("c1", "two", "1", None)).await;
        assert!(
            matches!(quota, Err(AciError::QuotaExceeded { .. })),
            "{quota:?}"
        );
        assert_eq!(
            emu.state.counters().requests.get("put").copied(),
            puts_before.map(|n| n + 1),
            "a quota error is not retried"
        );
        emu.shutdown().await;
    }

    #[tokio::test]
    async fn gives_up_within_its_budget() {
        let emu = Emulator::start(fast()).await.expect("starts");
        emu.state
            .set_faults(Faults {
                operations: [(
                    "*".to_string(),
                    OperationFaults {
                        error_rate: 1.0,
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            })
            .expect("valid plan");
        let aci = paced(
            &emu,
            PacingConfig {
                max_attempts: 3,
                ..quick()
            },
        );
        let err = aci.get("x").await;
        assert!(matches!(err, Err(AciError::Transient { .. })), "{err:?}");
        assert_eq!(
            emu.state.counters().requests.get("get"),
            Some(&3),
            "three attempts"
        );
        emu.shutdown().await;
    }
}

/// `Paced<Metered<Azure>>` against the emulator with faults: every attempt is
/// counted by operation and outcome, every 429 once, usage sets the quota gauges.
mod metrics {
    use super::*;
    use spillway::aci::metered::Metered;
    use spillway::aci::paced::{Paced, PacingConfig};
    use spillway::metrics::Metrics;

    /// The value of the sample `name{labels}` in a Prometheus text exposition,
    /// whatever the label order.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let mut found: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let mut wanted = labels.to_vec();
            found.sort_unstable();
            wanted.sort_unstable();
            (found == wanted)
                .then(|| value.trim().parse().ok())
                .flatten()
        })
    }

    fn requests(text: &str, op: &str, code: &str) -> Option<f64> {
        sample(
            text,
            "spillway_aci_requests_total",
            &[("op", op), ("code", code)],
        )
    }

    #[tokio::test]
    async fn every_attempt_is_counted_by_operation_and_outcome() {
        // ARM side: 3 writes, then one per second; 1 core of quota.
        let emu = Emulator::start(EmulatorConfig {
            write_burst: 3,
            writes_per_sec: 1.0,
            cores_limit: 1,
            ..fast()
        })
        .await
        .expect("starts");
        let metrics = Arc::new(Metrics::new());
        let cfg = AzureConfig::for_emulator(emu.url.clone(), "tok", SUB, "rg-burst");
        let aci = Paced::new(
            Metered::new(
                AzureContainerGroups::new(&cfg).expect("client builds"),
                metrics.clone(),
            ),
            PacingConfig {
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                budget: Duration::from_secs(10),
                max_attempts: 3,
                ..Default::default()
            },
        )
        .with_metrics(metrics.clone());

        // Writes: ok, quota, ok (delete of a missing group), then a 429
        // waited out and the same delete retried.
        aci.create_or_update(&group("c1", "one", "1", None))
            .await
            .expect("created");
        let quota = aci.create_or_update(&group("c1", "two", "1", None)).await;
        assert!(
            matches!(quota, Err(AciError::QuotaExceeded { .. })),
            "{quota:?}"
        );
        aci.delete("missing").await.expect("deleted");
        aci.delete("missing")
            .await
            .expect("deleted after Retry-After");
        assert_eq!(
            emu.state.counters().throttled,
            1,
            "the emulator sent one 429"
        );

        // Reads: a found and a missing group, then 5xx on every get.
        assert!(
            aci.get(&group_name_in("c1", "jobs", "one"))
                .await
                .expect("get")
                .is_some()
        );
        assert_eq!(aci.get("missing").await, Ok(None));
        emu.state
            .set_faults(Faults {
                operations: [(
                    "get".to_string(),
                    OperationFaults {
                        error_rate: 1.0,
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            })
            .expect("valid plan");
        let transient = aci.get(&group_name_in("c1", "jobs", "one")).await;
        assert!(
            matches!(transient, Err(AciError::Transient { .. })),
            "{transient:?}"
        );
        assert_eq!(aci.list("c1").await.map(|l| l.len()), Ok(1));
        let usage = aci.usage("westeurope").await.expect("usage");
        assert_eq!((usage.cores.limit, usage.cores.current), (1, 1));

        let text = metrics.render();
        assert_eq!(requests(&text, "create", "ok"), Some(1.0), "{text}");
        assert_eq!(requests(&text, "create", "quota"), Some(1.0), "{text}");
        assert_eq!(requests(&text, "delete", "ok"), Some(2.0), "{text}");
        assert_eq!(requests(&text, "delete", "throttled"), Some(1.0), "{text}");
        assert_eq!(requests(&text, "get", "ok"), Some(1.0), "{text}");
        assert_eq!(requests(&text, "get", "not_found"), Some(1.0), "{text}");
        assert_eq!(
            requests(&text, "get", "transient"),
            Some(3.0),
            "each of the 3 attempts: {text}"
        );
        assert_eq!(requests(&text, "list", "ok"), Some(1.0), "{text}");
        assert_eq!(requests(&text, "usage", "ok"), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "spillway_aci_throttled_total", &[]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "spillway_aci_request_duration_seconds_count",
                &[("op", "delete")]
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "spillway_aci_quota_cores", &[("kind", "limit")]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "spillway_aci_quota_cores", &[("kind", "used")]),
            Some(1.0),
            "{text}"
        );
        emu.shutdown().await;
    }
}
