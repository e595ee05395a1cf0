//! Translation tests. Golden files live in `tests/data/aci/`; regenerate them
//! with `UPDATE_GOLDEN=1 cargo test --lib aci::translate` and review the diff.

use super::*;
use crate::policy::{AciResources, AciSettings, PublicIp};
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::path::PathBuf;

/// Cluster DNS and service environment (`translate::dns`).
mod dns;

/// Fixture builder: `pod("web", "frontend").container(c("nginx")...)`.
struct PodBuilder(k8s::Pod);

fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(k8s::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec::default()),
        status: None,
    })
}

impl PodBuilder {
    fn spec(&mut self) -> &mut k8s::PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    fn container(mut self, c: CBuilder) -> Self {
        self.spec().containers.push(c.0);
        self
    }
    fn init(mut self, c: CBuilder) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(c.0);
        self
    }
    fn restart(mut self, p: &str) -> Self {
        self.spec().restart_policy = Some(p.to_string());
        self
    }
    fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
        self
    }
    fn volume(mut self, v: k8s::Volume) -> Self {
        self.spec().volumes.get_or_insert_with(Vec::new).push(v);
        self
    }
    fn pull_secret(mut self, name: &str) -> Self {
        self.spec()
            .image_pull_secrets
            .get_or_insert_with(Vec::new)
            .push(k8s::LocalObjectReference {
                name: name.to_string(),
            });
        self
    }
    fn host_network(mut self) -> Self {
        self.spec().host_network = Some(true);
        self
    }
    fn build(self) -> k8s::Pod {
        self.0
    }
}

struct CBuilder(k8s::Container);

fn c(name: &str, image: &str) -> CBuilder {
    CBuilder(k8s::Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        ..Default::default()
    })
}

impl CBuilder {
    fn res(mut self, kind: &str, resource: &str, q: &str) -> Self {
        let rr = self.0.resources.get_or_insert_with(Default::default);
        let map = if kind == "requests" {
            &mut rr.requests
        } else {
            &mut rr.limits
        };
        map.get_or_insert_with(Default::default)
            .insert(resource.to_string(), Quantity(q.to_string()));
        self
    }
    fn cpu(self, q: &str) -> Self {
        self.res("requests", "cpu", q)
    }
    fn mem(self, q: &str) -> Self {
        self.res("requests", "memory", q)
    }
    fn port(mut self, port: i32, name: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(k8s::ContainerPort {
                container_port: port,
                name: (!name.is_empty()).then(|| name.to_string()),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            });
        self
    }
    fn command(mut self, cmd: &[&str]) -> Self {
        self.0.command = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }
    fn args(mut self, args: &[&str]) -> Self {
        self.0.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    fn env(mut self, name: &str, value: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        });
        self
    }
    fn env_from_secret(mut self, name: &str, secret: &str, key: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(k8s::EnvVarSource {
                secret_key_ref: Some(k8s::SecretKeySelector {
                    name: secret.to_string(),
                    key: key.to_string(),
                    optional: None,
                }),
                ..Default::default()
            }),
        });
        self
    }
    fn env_field(mut self, name: &str, path: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(k8s::EnvVarSource {
                field_ref: Some(k8s::ObjectFieldSelector {
                    field_path: path.to_string(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        });
        self
    }
    fn mount(mut self, vol: &str, path: &str, ro: bool) -> Self {
        self.0
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(k8s::VolumeMount {
                name: vol.to_string(),
                mount_path: path.to_string(),
                read_only: ro.then_some(true),
                ..Default::default()
            });
        self
    }
    fn liveness(mut self, p: k8s::Probe) -> Self {
        self.0.liveness_probe = Some(p);
        self
    }
    fn readiness(mut self, p: k8s::Probe) -> Self {
        self.0.readiness_probe = Some(p);
        self
    }
    fn startup(mut self, p: k8s::Probe) -> Self {
        self.0.startup_probe = Some(p);
        self
    }
    fn privileged(mut self) -> Self {
        self.0.security_context = Some(k8s::SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        self
    }
}

fn http_probe(path: &str, port: IntOrString, delay: i32) -> k8s::Probe {
    k8s::Probe {
        http_get: Some(k8s::HTTPGetAction {
            path: Some(path.to_string()),
            port,
            scheme: Some("HTTP".to_string()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(delay),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn exec_probe(cmd: &[&str]) -> k8s::Probe {
    k8s::Probe {
        exec: Some(k8s::ExecAction {
            command: Some(cmd.iter().map(|s| s.to_string()).collect()),
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn vol(name: &str) -> k8s::Volume {
    k8s::Volume {
        name: name.to_string(),
        ..Default::default()
    }
}

fn config() -> TranslateConfig {
    TranslateConfig::new("cluster-a", "westeurope")
}

fn aci(public_ip: PublicIp, dns: Option<&str>) -> AciSettings {
    AciSettings {
        public_ip,
        dns_name_label: dns.map(str::to_string),
        ..AciSettings::default()
    }
}

fn translate(
    pod: &k8s::Pod,
    aci: &AciSettings,
    resolved: &Resolved,
) -> Result<ContainerGroup, TranslateError> {
    let cfg = config();
    pod_to_group(
        pod,
        &PodContext {
            config: &cfg,
            aci,
            resolved,
        },
    )
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/aci")
        .join(format!("{name}.json"))
}

/// Compare `actual` with the golden file strictly; rewrite it with `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &serde_json::Value) {
    let path = golden_path(name);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(actual).expect("serializable")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        expected,
        text,
        "{} differs from the translation (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

fn golden_ok(name: &str, pod: &k8s::Pod, aci: &AciSettings, resolved: &Resolved) -> ContainerGroup {
    let g = translate(pod, aci, resolved).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_golden(name, &serde_json::to_value(&g).expect("serializable"));
    g
}

fn golden_err(
    name: &str,
    pod: &k8s::Pod,
    aci: &AciSettings,
    resolved: &Resolved,
) -> TranslateError {
    let e = match translate(pod, aci, resolved) {
        Ok(g) => panic!("{name}: expected a rejection, got {}", g.name),
        Err(e) => e,
    };
    check_golden(
        name,
        &serde_json::json!({ "field": e.field(), "error": e.to_string() }),
    );
    e
}

#[test]
fn golden_web_with_ports_and_dns_template() {
    let p = pod("web", "frontend-7d9c")
        .container(
            c("nginx", "nginx:1.27")
                .cpu("500m")
                .mem("512Mi")
                .res("limits", "cpu", "1")
                .res("limits", "memory", "1Gi")
                .port(80, "http")
                .port(443, "https"),
        )
        .build();
    let g = golden_ok(
        "web",
        &p,
        &aci(PublicIp::Auto, Some("{{namespace}}-{{name}}")),
        &Resolved::default(),
    );
    let ip = g.properties.ip_address.expect("public ip");
    assert_eq!(ip.ports.len(), 2);
    assert_eq!(ip.dns_name_label.as_deref(), Some("web-frontend-7d9c"));
    // 512Mi = 536870912 bytes → 0.6 GB (rounded up to 0.1 GB).
    assert_eq!(
        g.properties.containers[0]
            .properties
            .resources
            .requests
            .memory_in_gb,
        0.6
    );
}

fn web_pod() -> k8s::Pod {
    pod("web", "frontend-7d9c")
        .container(
            c("nginx", "nginx:1.27")
                .cpu("500m")
                .mem("512Mi")
                .res("limits", "cpu", "1")
                .res("limits", "memory", "1Gi")
                .port(80, "http")
                .port(443, "https"),
        )
        .build()
}

fn translate_with(pod: &k8s::Pod, resources: AciResources) -> Result<Translation, TranslateError> {
    let cfg = config();
    let settings = AciSettings {
        resources,
        ..aci(PublicIp::Auto, Some("{{namespace}}-{{name}}"))
    };
    translate_pod(
        pod,
        &PodContext {
            config: &cfg,
            aci: &settings,
            resolved: &Resolved::default(),
        },
    )
    .map(|mut t| {
        // These tests are about the resource rules, not the missing cluster DNS.
        t.warnings
            .retain(|w| w.reason != super::dns::REASON_MISSING_CLUSTER_DNS);
        t
    })
}

/// Per container: (cpu request, memory request, (cpu limit, memory limit)).
type Sizes = (f64, f64, Option<(f64, f64)>);

fn requests_and_limits(g: &ContainerGroup) -> Vec<Sizes> {
    g.properties
        .containers
        .iter()
        .map(|c| {
            let r = &c.properties.resources;
            (
                r.requests.cpu,
                r.requests.memory_in_gb,
                r.limits.map(|l| (l.cpu, l.memory_in_gb)),
            )
        })
        .collect()
}

#[test]
fn burstable_web_pod_gets_its_limits_clamped_with_a_warning() {
    // web.json (the golden above): requests 0.5 CPU / 512Mi, limits 1 / 1Gi.
    let t = translate_with(&web_pod(), AciResources::ClampLimits).expect("translates");
    assert_eq!(
        requests_and_limits(&t.group),
        [(0.5, 0.6, Some((0.5, 0.6)))]
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert_eq!(t.warnings[0].reason, REASON_LIMITS_CLAMPED);
    assert!(
        t.warnings[0]
            .message
            .contains("nginx cpu limit 1 → 0.5, nginx memory limit 1.1 GB → 0.6 GB"),
        "{}",
        t.warnings[0].message
    );
}

#[test]
fn golden_web_raise_requests() {
    let t = translate_with(&web_pod(), AciResources::RaiseRequests).expect("translates");
    check_golden(
        "web-raise-requests",
        &serde_json::to_value(&t.group).expect("serializable"),
    );
    assert_eq!(
        requests_and_limits(&t.group),
        [(1.0, 1.1, Some((1.0, 1.1)))]
    );
    assert_eq!(t.warnings.len(), 1);
    assert_eq!(t.warnings[0].reason, REASON_REQUESTS_RAISED);
}

#[test]
fn group_limit_rule_sums_requests_over_containers() {
    // app: 0.25 CPU, limit 1; sidecar: 0.25 CPU, no limit. Total request 0.5.
    let p = pod("web", "two")
        .container(
            c("app", "app:1")
                .cpu("250m")
                .mem("1G")
                .res("limits", "cpu", "1"),
        )
        .container(c("sidecar", "proxy:1").cpu("250m").mem("1G"))
        .build();
    let t = translate_with(&p, AciResources::ClampLimits).expect("translates");
    assert_eq!(
        requests_and_limits(&t.group),
        [(0.25, 1.0, Some((0.5, 1.0))), (0.25, 1.0, None)],
        "the limit may use the whole group's request, no more"
    );
    let t = translate_with(&p, AciResources::RaiseRequests).expect("translates");
    assert_eq!(
        requests_and_limits(&t.group),
        [(0.75, 1.0, Some((1.0, 1.0))), (0.25, 1.0, None)],
        "the container with the limit takes the extra request; total = its limit"
    );
    // Limits within the total request are left alone, with no warning.
    let p = pod("web", "fits")
        .container(
            c("app", "app:1")
                .cpu("250m")
                .mem("1G")
                .res("limits", "cpu", "500m"),
        )
        .container(c("sidecar", "proxy:1").cpu("250m").mem("1G"))
        .build();
    for mode in [AciResources::ClampLimits, AciResources::RaiseRequests] {
        let t = translate_with(&p, mode).expect("translates");
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(
            requests_and_limits(&t.group),
            [(0.25, 1.0, Some((0.5, 1.0))), (0.25, 1.0, None)]
        );
    }
}

/// The engine counts (budgets, quota, cost) what the group will request:
/// `cluster::pod_aci_size` agrees with the translated group's total for
/// defaults, rounding, limits-only containers and both `aci.resources` modes.
#[test]
fn the_engines_aci_size_is_the_translated_groups_total_request() {
    let pods = [
        web_pod(),
        pod("web", "two")
            .container(
                c("app", "app:1")
                    .cpu("250m")
                    .mem("1G")
                    .res("limits", "cpu", "1")
                    .res("limits", "memory", "2Gi"),
            )
            .container(c("sidecar", "proxy:1").cpu("255m").mem("64Mi"))
            .build(),
        // No requests at all: azure-aci's defaults per container.
        pod("web", "bare")
            .container(c("a", "a:1"))
            .container(c("b", "b:1"))
            .build(),
        // Limits only: requests default to them.
        pod("web", "limits")
            .container(
                c("a", "a:1")
                    .res("limits", "cpu", "750m")
                    .res("limits", "memory", "300Mi"),
            )
            .build(),
    ];
    for p in &pods {
        let size = crate::cluster::pod_aci_size(p).expect("sizes");
        for mode in [AciResources::ClampLimits, AciResources::RaiseRequests] {
            let t = translate_with(p, mode).expect("translates");
            let (cpu, gb) = t
                .group
                .properties
                .containers
                .iter()
                .fold((0.0, 0.0), |(c, m), x| {
                    (
                        c + x.properties.resources.requests.cpu,
                        m + x.properties.resources.requests.memory_in_gb,
                    )
                });
            let billed = size.billed(mode);
            let name = p.metadata.name.as_deref().unwrap_or_default();
            assert_eq!(
                (
                    (cpu * 1000.0_f64).round() as u64,
                    (gb * 10.0_f64).round() as u64
                ),
                (billed.cpu_millis, billed.memory_bytes / 100_000_000),
                "{name} under {mode:?}"
            );
        }
    }
}

#[test]
fn raised_requests_still_respect_the_group_maximum() {
    let p = pod("web", "huge")
        .container(
            c("app", "app:1")
                .cpu("1")
                .mem("1G")
                .res("limits", "cpu", "8"),
        )
        .build();
    let t = translate_with(&p, AciResources::ClampLimits).expect("clamped fits");
    assert_eq!(
        requests_and_limits(&t.group),
        [(1.0, 1.0, Some((1.0, 1.0)))]
    );
    let e = translate_with(&p, AciResources::RaiseRequests).expect_err("8 vCPU is too large");
    assert_eq!(e.field(), "spec.containers[*].resources.requests.cpu");
}

#[test]
fn golden_job_without_requests_gets_defaults() {
    let p = pod("batch", "report-29123-x7k2")
        .restart("OnFailure")
        .container(
            c("report", "busybox:1.36")
                .command(&["sh", "-c"])
                .args(&["echo done"]),
        )
        .build();
    let g = golden_ok("job", &p, &aci(PublicIp::Auto, None), &Resolved::default());
    let r = &g.properties.containers[0].properties.resources;
    assert_eq!((r.requests.cpu, r.requests.memory_in_gb), (1.0, 1.5));
    assert!(r.limits.is_none());
    assert!(g.properties.ip_address.is_none(), "no ports, auto → no IP");
    assert_eq!(g.properties.restart_policy.as_deref(), Some("OnFailure"));
    assert_eq!(
        g.properties.containers[0].properties.command,
        ["sh", "-c", "echo done"]
    );
}

#[test]
fn golden_secret_env_is_secure_value() {
    let p = pod("shop", "checkout")
        .container(
            c("app", "shop/checkout:3")
                .env("MODE", "prod")
                .env_from_secret("DB_PASSWORD", "db", "password")
                .env_field("POD_NAME", "metadata.name")
                .env("MODE", "canary"),
        )
        .pull_secret("acr")
        .build();
    let mut resolved = Resolved::default();
    resolved
        .env
        .entry("app".into())
        .or_default()
        .insert("DB_PASSWORD".into(), EnvValue::Secret("s3cr3t".into()));
    resolved.env_from.insert(
        "app".into(),
        vec![
            ("FROM_CM".into(), EnvValue::Plain("cm-value".into())),
            ("MODE".into(), EnvValue::Plain("overridden-by-env".into())),
        ],
    );
    resolved.registry_credentials.push(ImageRegistryCredential {
        server: "shop.azurecr.io".into(),
        username: Some("shop".into()),
        password: Some("pull-token".into()),
    });
    let g = golden_ok("secret-env", &p, &aci(PublicIp::Never, None), &resolved);
    let env = &g.properties.containers[0].properties.environment_variables;
    let get = |n: &str| env.iter().find(|e| e.name == n).expect(n);
    assert_eq!(get("DB_PASSWORD").secure_value.as_deref(), Some("s3cr3t"));
    assert_eq!(get("DB_PASSWORD").value, None);
    assert_eq!(
        get("MODE").value.as_deref(),
        Some("canary"),
        "the last definition wins"
    );
    assert_eq!(get("POD_NAME").value.as_deref(), Some("checkout"));
}

#[test]
fn golden_configmap_and_secret_volumes() {
    let mut cm = vol("config");
    cm.config_map = Some(k8s::ConfigMapVolumeSource {
        name: "app-config".into(),
        ..Default::default()
    });
    let mut sec = vol("tls");
    sec.secret = Some(k8s::SecretVolumeSource {
        secret_name: Some("tls".into()),
        ..Default::default()
    });
    let mut scratch = vol("scratch");
    scratch.empty_dir = Some(Default::default());
    let p = pod("web", "api")
        .volume(cm)
        .volume(sec)
        .volume(scratch)
        .container(
            c("api", "api:2")
                .cpu("250m")
                .mem("256Mi")
                .mount("config", "/etc/app", true)
                .mount("tls", "/etc/tls", true)
                .mount("scratch", "/tmp", false),
        )
        .build();
    let mut resolved = Resolved::default();
    resolved.volume_files.insert(
        "config".into(),
        [("app.yaml".to_string(), b"level: debug\n".to_vec())].into(),
    );
    resolved.volume_files.insert(
        "tls".into(),
        [
            ("tls.crt".to_string(), b"CERT".to_vec()),
            ("tls.key".to_string(), b"KEY".to_vec()),
        ]
        .into(),
    );
    let g = golden_ok(
        "configmap-volume",
        &p,
        &aci(PublicIp::Auto, None),
        &resolved,
    );
    assert_eq!(
        g.properties.volumes[0]
            .secret
            .as_ref()
            .and_then(|s| s.get("app.yaml"))
            .map(String::as_str),
        Some("bGV2ZWw6IGRlYnVnCg==")
    );
}

#[test]
fn golden_windows() {
    let p = pod("legacy", "iis")
        .node_selector("kubernetes.io/os", "windows")
        .container(
            c("iis", "mcr.microsoft.com/windows/servercore/iis")
                .cpu("2")
                .mem("4Gi")
                .port(80, ""),
        )
        .build();
    let g = golden_ok(
        "windows",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert_eq!(g.properties.os_type, "Windows");
}

#[test]
fn golden_long_names_are_hashed_and_valid() {
    let ns = "team-payments-settlement-reconciliation";
    let name = "settlement-reconciliation-worker-5f7c9d8b6-abcde";
    let p = pod(ns, name).container(c("w", "worker:1")).build();
    let g = golden_ok(
        "long-name",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert!(g.name.len() <= MAX_NAME_LEN, "{}", g.name);
    assert!(is_valid_label(&g.name), "{}", g.name);
    assert_eq!(
        g.name,
        group_name_in("cluster-a", ns, name),
        "deterministic"
    );
    assert_ne!(
        g.name,
        group_name_in(
            "cluster-a",
            ns,
            "settlement-reconciliation-worker-5f7c9d8b6-abcdf"
        )
    );
    assert_eq!(g.tags.get(TAG_POD_NAME).map(String::as_str), Some(name));
}

#[test]
fn golden_probes_exec_http_and_startup() {
    let p = pod("web", "probed")
        .container(
            c("app", "app:1")
                .port(8080, "http")
                .liveness(http_probe(
                    "/healthz",
                    IntOrString::String("http".into()),
                    5,
                ))
                .readiness(exec_probe(&["cat", "/tmp/ready"]))
                .startup(k8s::Probe {
                    failure_threshold: Some(30),
                    period_seconds: Some(2),
                    ..http_probe("/healthz", IntOrString::Int(8080), 0)
                }),
        )
        .build();
    let g = golden_ok(
        "probes",
        &p,
        &aci(PublicIp::Never, None),
        &Resolved::default(),
    );
    let live = g.properties.containers[0]
        .properties
        .liveness_probe
        .as_ref()
        .expect("liveness");
    assert_eq!(
        live.http_get.as_ref().map(|h| h.port),
        Some(8080),
        "named port resolved"
    );
    assert_eq!(
        live.initial_delay_seconds,
        Some(65),
        "5s + the startup probe's 60s"
    );
}

#[test]
fn tcp_and_grpc_readiness_probes_are_left_to_spillway_but_liveness_ones_are_rejected() {
    let tcp = k8s::Probe {
        tcp_socket: Some(k8s::TCPSocketAction {
            port: IntOrString::Int(8080),
            host: None,
        }),
        ..Default::default()
    };
    let grpc = k8s::Probe {
        grpc: Some(k8s::GRPCAction {
            port: 9090,
            service: None,
        }),
        ..Default::default()
    };
    for probe in [&tcp, &grpc] {
        let p = pod("web", "probed")
            .container(
                c("app", "app:1")
                    .port(8080, "http")
                    .readiness(probe.clone()),
            )
            .build();
        let g = translate(&p, &aci(PublicIp::Auto, None), &Resolved::default())
            .unwrap_or_else(|e| panic!("spillway probes readiness itself: {e}"));
        assert!(
            g.properties.containers[0]
                .properties
                .readiness_probe
                .is_none()
        );
    }
    let p = pod("web", "probed")
        .container(c("app", "app:1").port(8080, "http").liveness(tcp))
        .build();
    let e = translate(&p, &aci(PublicIp::Auto, None), &Resolved::default()).expect_err("rejected");
    assert_eq!(e.field(), "spec.containers[0].livenessProbe.tcpSocket");
}

#[test]
fn golden_azure_file_from_csi_and_init_container() {
    let mut v = vol("share");
    v.csi = Some(k8s::CSIVolumeSource {
        driver: "file.csi.azure.com".into(),
        read_only: Some(true),
        volume_attributes: Some(
            [
                ("shareName".to_string(), "models".to_string()),
                ("secretName".to_string(), "azure-files".to_string()),
            ]
            .into(),
        ),
        ..Default::default()
    });
    let p = pod("ml", "infer")
        .volume(v)
        .init(
            c("fetch", "busybox:1.36")
                .command(&["sh", "-c", "ls /models"])
                .mount("share", "/models", true),
        )
        .container(
            c("infer", "ml/infer:4")
                .cpu("2")
                .mem("8G")
                .mount("share", "/models", true),
        )
        .build();
    let mut resolved = Resolved::default();
    resolved.azure_file_credentials.insert(
        "azure-files".into(),
        AzureFileCredential {
            account_name: "mlstore".into(),
            account_key: "a2V5".into(),
        },
    );
    let g = golden_ok("azure-file", &p, &aci(PublicIp::Auto, None), &resolved);
    let af = g.properties.volumes[0]
        .azure_file
        .as_ref()
        .expect("azureFile");
    assert_eq!(
        (af.share_name.as_str(), af.storage_account_name.as_str()),
        ("models", "mlstore")
    );
    assert_eq!(g.properties.init_containers.len(), 1);
}

#[test]
fn golden_rejects_host_path() {
    let mut v = vol("docker");
    v.host_path = Some(k8s::HostPathVolumeSource {
        path: "/var/run/docker.sock".into(),
        type_: None,
    });
    let p = pod("ci", "builder")
        .volume(v)
        .container(c("b", "docker:27"))
        .build();
    let e = golden_err(
        "reject-hostpath",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert_eq!(e.field(), "spec.volumes[0].hostPath");
}

#[test]
fn golden_rejects_too_large() {
    let p = pod("ml", "train")
        .container(c("a", "t:1").cpu("3").mem("8Gi"))
        .container(c("b", "t:1").cpu("2").mem("1Gi"))
        .build();
    let e = golden_err(
        "reject-too-large",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert_eq!(e.field(), "spec.containers[*].resources.requests.cpu");
}

#[test]
fn golden_rejects_args_without_command() {
    let p = pod("web", "flags")
        .container(c("app", "app:1").args(&["--verbose"]))
        .build();
    let e = golden_err(
        "reject-args-without-command",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert_eq!(e.field(), "spec.containers[0].args");
    // With the image's entrypoint known, the same pod translates.
    let mut resolved = Resolved::default();
    resolved
        .image_entrypoints
        .insert("app:1".into(), vec!["/app".into()]);
    let g = translate(&p, &aci(PublicIp::Auto, None), &resolved).expect("entrypoint known");
    assert_eq!(
        g.properties.containers[0].properties.command,
        ["/app", "--verbose"]
    );
}

#[test]
fn golden_rejects_six_public_ports() {
    let mut cb = c("app", "app:1");
    for port in [80, 81, 82, 83, 84, 85] {
        cb = cb.port(port, "");
    }
    let p = pod("web", "ports").container(cb).build();
    let e = golden_err(
        "reject-six-ports",
        &p,
        &aci(PublicIp::Auto, None),
        &Resolved::default(),
    );
    assert_eq!(e.field(), "spec.containers[*].ports");
    // Without a public IP the ports stay on the container and the pod is fine.
    assert!(translate(&p, &aci(PublicIp::Never, None), &Resolved::default()).is_ok());
}

#[test]
fn rejects_each_unsupported_field_by_name() {
    let none = aci(PublicIp::Auto, None);
    let r = Resolved::default();
    let field = |p: k8s::Pod| {
        translate(&p, &none, &r)
            .err()
            .map(|e| e.field().to_string())
    };
    assert_eq!(
        field(pod("a", "b").host_network().container(c("c", "i")).build()).as_deref(),
        Some("spec.hostNetwork")
    );
    assert_eq!(
        field(pod("a", "b").container(c("c", "i").privileged()).build()).as_deref(),
        Some("spec.containers[0].securityContext.privileged")
    );
    let mut pvc = vol("data");
    pvc.persistent_volume_claim = Some(k8s::PersistentVolumeClaimVolumeSource {
        claim_name: "data".into(),
        read_only: None,
    });
    assert_eq!(
        field(pod("a", "b").volume(pvc).container(c("c", "i")).build()).as_deref(),
        Some("spec.volumes[0].persistentVolumeClaim")
    );
    let mut sidecar = c("proxy", "envoy");
    sidecar.0.restart_policy = Some("Always".into());
    assert_eq!(
        field(pod("a", "b").init(sidecar).container(c("c", "i")).build()).as_deref(),
        Some("spec.initContainers[0].restartPolicy")
    );
    assert_eq!(
        field(
            pod("a", "b")
                .container(c("c", "i").env_from_secret("X", "s", "k"))
                .build()
        )
        .as_deref(),
        Some("spec.containers[0].env[0].valueFrom"),
        "an unresolved secret reference is an error, not an empty value"
    );
    assert_eq!(
        field(
            pod("a", "b")
                .container(c("c", "i").res("limits", "nvidia.com/gpu", "1"))
                .build()
        )
        .as_deref(),
        Some("spec.containers[0].resources.limits[nvidia.com/gpu]")
    );
    assert_eq!(
        field(
            pod("a", "b")
                .node_selector("kubernetes.io/os", "plan9")
                .container(c("c", "i"))
                .build()
        )
        .as_deref(),
        Some("spec.nodeSelector[kubernetes.io/os]")
    );
    assert_eq!(
        field(
            pod("a", "b")
                .annotation(DNS_LABEL_ANNOTATION, "Not_A_Label")
                .container(c("c", "i").port(80, ""))
                .build()
        )
        .as_deref(),
        Some("metadata.annotations[virtualkubelet.io/dnsnamelabel]")
    );
    let always = aci(PublicIp::Always, None);
    assert!(translate(&pod("a", "b").container(c("c", "i")).build(), &always, &r).is_err());
    let e: AciError = translate(
        &pod("a", "b").host_network().container(c("c", "i")).build(),
        &none,
        &r,
    )
    .expect_err("rejected")
    .into();
    assert_eq!(e.reason(), "aci-invalid-spec");
}

#[test]
fn annotation_dns_label_wins_over_template() {
    let p = pod("web", "x")
        .annotation(DNS_LABEL_ANNOTATION, "my-shop")
        .container(c("c", "i").port(80, ""))
        .build();
    let g = translate(
        &p,
        &aci(PublicIp::Auto, Some("{{namespace}}-{{name}}")),
        &Resolved::default(),
    )
    .expect("ok");
    assert_eq!(
        g.properties
            .ip_address
            .and_then(|i| i.dns_name_label)
            .as_deref(),
        Some("my-shop")
    );
}

#[test]
fn group_names_are_valid_for_awkward_inputs() {
    for (ns, name) in [
        ("default", "web-0"),
        ("a", "b.c.d"),
        ("x", &"y".repeat(253)),
        ("ns", "-weird--name-"),
        ("n", "9starts-with-digit"),
    ] {
        let g = group_name(ns, name);
        assert!(is_valid_label(&g), "{ns}/{name} → {g}");
        assert!(!g.contains("--"), "{g}");
    }
    assert_eq!(
        group_name("default", "web-0"),
        "default-web-0",
        "short clean names are kept"
    );
    assert_ne!(
        group_name("a", "b.c"),
        group_name("a", "b-c"),
        "a lossy rewrite adds a hash"
    );
}

#[test]
fn group_names_carry_a_stable_cluster_hash_and_stay_valid() {
    assert_eq!(cluster_hash("cluster-a"), cluster_hash("cluster-a"));
    assert_eq!(cluster_hash("cluster-a").len(), 6);
    assert_ne!(cluster_hash("cluster-a"), cluster_hash("cluster-b"));
    // The pod `web/db-0` of two clusters sharing a resource group.
    let a = group_name_in("cluster-a", "web", "db-0");
    let b = group_name_in("cluster-b", "web", "db-0");
    assert_ne!(a, b, "never the same group");
    assert_eq!(a, format!("web-db-0-{}", cluster_hash("cluster-a")));
    assert_eq!(
        a,
        group_name_in("cluster-a", "web", "db-0"),
        "deterministic"
    );
    assert_eq!(
        config().group_name("web", "db-0"),
        group_name_in("cluster-a", "web", "db-0")
    );
    let long_ns = "n".repeat(63);
    let long_pod = "p".repeat(253);
    for (ns, name) in [
        ("default", "web-0"),
        ("a", "b.c.d"),
        (long_ns.as_str(), long_pod.as_str()),
        (
            "team-payments-settlement-reconciliation",
            "settlement-reconciliation-worker-5f7c9d8b6-abcde",
        ),
        ("ns", "-weird--name-"),
        ("x", &"y".repeat(56)),
        ("x", &"y".repeat(57)),
    ] {
        for cluster in ["cluster-a", "3f1c2a6e-0000-4b7e-9c1d-aaaaaaaaaaaa", ""] {
            let g = group_name_in(cluster, ns, name);
            assert!(is_valid_label(&g), "{ns}/{name} in {cluster:?} → {g}");
            assert!(!g.contains("--"), "{g}");
            assert!(g.ends_with(&cluster_hash(cluster)), "{g}");
        }
    }
    // Long names that differ only at the end stay distinct.
    assert_ne!(
        group_name_in("c", &long_ns, &format!("{long_pod}-a")),
        group_name_in("c", &long_ns, &format!("{long_pod}-b"))
    );
}

#[test]
fn quantities_round_up_to_aci_granularity() {
    assert_eq!(cores_from_millis(1), 0.01);
    assert_eq!(cores_from_millis(1500), 1.5);
    assert_eq!(cores_from_millis(1234), 1.24);
    assert_eq!(gb_from_bytes(1), 0.1);
    assert_eq!(gb_from_bytes(1_000_000_000), 1.0);
    assert_eq!(gb_from_bytes(1_073_741_824), 1.1);
}

// --- status mapping -------------------------------------------------------

fn group_with(
    prov: &str,
    group_state: Option<&str>,
    cstate: Option<ContainerState>,
) -> ContainerGroup {
    ContainerGroup {
        name: "web-frontend".into(),
        location: "westeurope".into(),
        properties: ContainerGroupProperties {
            provisioning_state: Some(prov.into()),
            containers: vec![Container {
                name: "nginx".into(),
                properties: ContainerProperties {
                    image: "nginx:1.27".into(),
                    instance_view: cstate.map(|s| ContainerInstanceView {
                        restart_count: 2,
                        current_state: Some(s),
                        previous_state: None,
                        events: vec![],
                    }),
                    ..Default::default()
                },
            }],
            ip_address: Some(IpAddress {
                ip_type: "Public".into(),
                ports: vec![],
                ip: Some("20.0.0.7".into()),
                dns_name_label: None,
                fqdn: None,
            }),
            os_type: "Linux".into(),
            instance_view: group_state.map(|s| GroupInstanceView {
                state: Some(s.into()),
                events: vec![],
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn cstate(state: &str, exit: Option<i32>, detail: &str) -> ContainerState {
    ContainerState {
        state: state.into(),
        start_time: Some("2024-05-14T09:21:37Z".into()),
        finish_time: exit.map(|_| "2024-05-14T09:25:00Z".into()),
        exit_code: exit,
        detail_status: (!detail.is_empty()).then(|| detail.to_string()),
    }
}

fn cond(s: &k8s::PodStatus, kind: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[test]
fn status_running_group_is_ready_with_ip() {
    let s = pod_status_from_group(&group_with(
        "Succeeded",
        Some("Running"),
        Some(cstate("Running", None, "")),
    ));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("20.0.0.7"));
    assert_eq!(cond(&s, "Ready"), "True");
    let cs = &s.container_statuses.as_ref().expect("statuses")[0];
    assert!(cs.ready);
    assert_eq!(cs.restart_count, 2);
    assert!(s.start_time.is_some());
}

#[test]
fn status_pending_states_while_provisioning() {
    for prov in ["Accepted", "Creating", "Repairing", "Pending"] {
        let s = pod_status_from_group(&group_with(prov, None, None));
        assert_eq!(s.phase.as_deref(), Some("Pending"), "{prov}");
        assert_eq!(cond(&s, "Ready"), "False");
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        let w = cs
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert!(s.message.as_deref().is_some_and(|m| m.contains(prov)));
    }
}

#[test]
fn status_terminal_states() {
    let ok = pod_status_from_group(&group_with(
        "Succeeded",
        Some("Succeeded"),
        Some(cstate("Terminated", Some(0), "Completed")),
    ));
    assert_eq!(ok.phase.as_deref(), Some("Succeeded"));
    let t = ok.container_statuses.as_ref().expect("s")[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));

    let failed = pod_status_from_group(&group_with(
        "Succeeded",
        Some("Failed"),
        Some(cstate("Terminated", Some(137), "Error")),
    ));
    assert_eq!(failed.phase.as_deref(), Some("Failed"));
    assert_eq!(failed.reason.as_deref(), Some("ContainerGroupFailed"));
    let t = failed.container_statuses.as_ref().expect("s")[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("Error")));

    // An OOM kill keeps the kubelet's reason.
    let oom = pod_status_from_group(&group_with(
        "Succeeded",
        Some("Failed"),
        Some(cstate("Terminated", Some(137), "OOMKilled")),
    ));
    let t = oom.container_statuses.as_ref().expect("s")[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));

    let canceled = pod_status_from_group(&group_with("Canceled", None, None));
    assert_eq!(canceled.phase.as_deref(), Some("Failed"));
    assert_eq!(canceled.reason.as_deref(), Some("ContainerGroupCanceled"));

    let provisioning_failed = pod_status_from_group(&group_with("Failed", None, None));
    assert_eq!(provisioning_failed.phase.as_deref(), Some("Failed"));
}

#[test]
fn status_waiting_keeps_kubernetes_style_reason() {
    let s = pod_status_from_group(&group_with(
        "Succeeded",
        Some("Running"),
        Some(cstate(
            "Waiting",
            None,
            "CrashLoopBackOff: Back-off restarting failed container",
        )),
    ));
    let cs = &s.container_statuses.as_ref().expect("s")[0];
    let w = cs
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .expect("waiting");
    assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
    assert!(!cs.ready);
    assert_eq!(cond(&s, "Ready"), "False");
}

#[test]
fn env_references_expand_like_kubernetes() {
    let p = pod("web", "exp")
        .container(
            c("app", "app:1")
                .env("HOST", "db")
                .env_from_secret("PASS", "db", "password")
                .env("URL", "postgres://$(HOST):5432")
                .env("DSN", "user:$(PASS)@$(HOST)")
                .env("LITERAL", "$$(HOST) $(MISSING) $5 $(")
                .command(&["connect", "--to=$(URL)"]),
        )
        .build();
    let mut resolved = Resolved::default();
    resolved
        .env
        .entry("app".into())
        .or_default()
        .insert("PASS".into(), EnvValue::Secret("pw".into()));
    let g = translate(&p, &aci(PublicIp::Auto, None), &resolved).expect("translates");
    let props = &g.properties.containers[0].properties;
    let get = |n: &str| {
        props
            .environment_variables
            .iter()
            .find(|e| e.name == n)
            .expect(n)
            .clone()
    };
    assert_eq!(get("URL").value.as_deref(), Some("postgres://db:5432"));
    let dsn = get("DSN");
    assert_eq!(
        (dsn.value, dsn.secure_value.as_deref()),
        (None, Some("user:pw@db")),
        "a value built from a secret stays secret"
    );
    assert_eq!(
        get("LITERAL").value.as_deref(),
        Some("$(HOST) $(MISSING) $5 $(")
    );
    assert_eq!(props.command, ["connect", "--to=postgres://db:5432"]);
}

#[test]
fn windows_groups_have_one_container_and_no_azure_files() {
    let p = pod("legacy", "two")
        .node_selector("kubernetes.io/os", "windows")
        .container(c("a", "win:1"))
        .container(c("b", "win:1"))
        .build();
    let e = translate(&p, &aci(PublicIp::Auto, None), &Resolved::default()).expect_err("rejected");
    assert_eq!(e.field(), "spec.containers");
}

fn translate_on(node_os: &str, pod: &k8s::Pod) -> Result<ContainerGroup, TranslateError> {
    let cfg = TranslateConfig {
        node_os: Some(node_os.to_string()),
        ..config()
    };
    pod_to_group(
        pod,
        &PodContext {
            config: &cfg,
            aci: &aci(PublicIp::Auto, None),
            resolved: &Resolved::default(),
        },
    )
}

#[test]
fn the_bound_node_decides_the_os_type_and_a_disagreeing_pod_is_refused() {
    let bare = pod("legacy", "iis").container(c("iis", "win:1")).build();
    let os = |r: Result<ContainerGroup, TranslateError>| r.map(|g| g.properties.os_type);
    // No selector: the node's OS.
    assert_eq!(
        os(translate_on("windows", &bare)),
        Ok("Windows".to_string())
    );
    assert_eq!(os(translate_on("linux", &bare)), Ok("Linux".to_string()));
    let windows = pod("legacy", "iis")
        .node_selector("kubernetes.io/os", "windows")
        .container(c("iis", "win:1"))
        .build();
    assert_eq!(
        os(translate_on("windows", &windows)),
        Ok("Windows".to_string())
    );
    let e = translate_on("linux", &windows).expect_err("a windows pod on the linux node");
    assert_eq!(e.field(), "spec.nodeSelector[kubernetes.io/os]");
    assert!(
        e.to_string().contains("bound to the linux virtual node"),
        "{e}"
    );
    let linux = pod("web", "a")
        .node_selector("kubernetes.io/os", "linux")
        .container(c("a", "img"))
        .build();
    let e = translate_on("windows", &linux).expect_err("a linux pod on the windows node");
    assert!(
        e.to_string().contains("bound to the windows virtual node"),
        "{e}"
    );
    // spec.os counts when there is no selector.
    let mut field = pod("web", "b").container(c("a", "img")).build();
    if let Some(spec) = field.spec.as_mut() {
        spec.os = Some(k8s::PodOS {
            name: "linux".into(),
        });
    }
    let e = translate_on("windows", &field).expect_err("spec.os linux on windows");
    assert_eq!(e.field(), "spec.os.name");
    // The Windows rules hold on the Windows node whatever the pod says.
    let two = pod("legacy", "two")
        .container(c("a", "win:1"))
        .container(c("b", "win:1"))
        .build();
    assert_eq!(
        translate_on("windows", &two).map_err(|e| e.field().to_string()),
        Err("spec.containers".to_string())
    );
    assert!(translate_on("linux", &two).is_ok());
}

#[test]
fn listed_groups_without_instance_view_are_flagged() {
    let mut g = group_with(
        "Succeeded",
        Some("Running"),
        Some(cstate("Running", None, "")),
    );
    assert!(has_instance_view(&g));
    g.properties.instance_view = None;
    g.properties.containers[0].properties.instance_view = None;
    assert!(!has_instance_view(&g));
}

#[test]
fn the_pod_ip_from_the_downward_api_is_a_clear_error() {
    for path in ["status.podIP", "status.podIPs", "status.hostIP"] {
        let mut p = pod("web", "knative").container(c("app", "img")).build();
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].env = Some(vec![k8s::EnvVar {
                name: "MY_IP".into(),
                value_from: Some(k8s::EnvVarSource {
                    field_ref: Some(k8s::ObjectFieldSelector {
                        field_path: path.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        }
        let e = translate(&p, &aci(PublicIp::Auto, None), &Resolved::default())
            .expect_err("no IP before the group exists");
        assert_eq!(
            e.field(),
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            "{e}"
        );
        assert!(e.to_string().contains(path), "{e}");
        assert!(
            e.to_string().contains("not known before ACI creates"),
            "{e}"
        );
    }
}

// --- network: delegated subnets (network.rs) --------------------------------

const SUBNET_A: &str = "/subscriptions/0000-1111/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci-a";
const SUBNET_B: &str = "/subscriptions/0000-1111/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci-b";

fn subnet_config(ids: &[&str]) -> TranslateConfig {
    TranslateConfig {
        subnets: ids
            .iter()
            .map(|id| SubnetId::parse(id).expect("valid subnet id"))
            .collect(),
        ..config()
    }
}

fn translate_in(
    cfg: &TranslateConfig,
    pod: &k8s::Pod,
    aci: &AciSettings,
) -> Result<Translation, TranslateError> {
    translate_pod(
        pod,
        &PodContext {
            config: cfg,
            aci,
            resolved: &Resolved::default(),
        },
    )
}

fn golden_subnet_ok(name: &str, pod: &k8s::Pod, aci: &AciSettings) -> Translation {
    let t = translate_in(&subnet_config(&[SUBNET_A]), pod, aci)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_golden(name, &serde_json::to_value(&t.group).expect("serializable"));
    t
}

fn golden_subnet_err(name: &str, cfg: &TranslateConfig, pod: &k8s::Pod, aci: &AciSettings) {
    let e = match translate_in(cfg, pod, aci) {
        Ok(t) => panic!("{name}: expected a rejection, got {}", t.group.name),
        Err(e) => e,
    };
    check_golden(
        name,
        &serde_json::json!({ "field": e.field(), "error": e.to_string() }),
    );
}

#[test]
fn golden_subnet_web_gets_a_private_ip_and_no_dns_label() {
    // The cluster default policy (publicIp: auto, a DNS label template):
    // with a subnet, `auto` means no public IP, and the template is unused.
    let t = golden_subnet_ok(
        "subnet-web",
        &web_pod(),
        &aci(PublicIp::Auto, Some("{{namespace}}-{{name}}")),
    );
    let p = &t.group.properties;
    let ip = p.ip_address.as_ref().expect("private ip with the ports");
    assert_eq!(ip.ip_type, "Private");
    assert_eq!(ip.ports.len(), 2);
    assert_eq!(ip.dns_name_label, None);
    assert_eq!(
        p.subnet_ids,
        [crate::aci::model::ContainerGroupSubnetId {
            id: SUBNET_A.into(),
            name: None
        }]
    );
}

#[test]
fn golden_subnet_job_without_ports_has_no_ip_address_block() {
    // ARM requires `ports` in `ipAddress`: a portless group in a subnet is
    // sent without it (ACI still gives it a private address).
    let p = pod("batch", "report-29123-x7k2")
        .restart("OnFailure")
        .container(c("report", "busybox:1.36").command(&["sh", "-c", "echo done"]))
        .build();
    let t = golden_subnet_ok("subnet-job", &p, &aci(PublicIp::Never, None));
    assert!(t.group.properties.ip_address.is_none());
    assert_eq!(t.group.properties.subnet_ids.len(), 1);
}

#[test]
fn golden_subnet_refuses_public_ip_always_naming_the_field() {
    golden_subnet_err(
        "reject-subnet-public-ip-always",
        &subnet_config(&[SUBNET_A]),
        &web_pod(),
        &aci(PublicIp::Always, None),
    );
}

#[test]
fn golden_private_network_without_a_subnet_is_refused_naming_the_field() {
    let settings = AciSettings {
        network: Some(crate::policy::AciNetwork::Private),
        ..aci(PublicIp::Never, None)
    };
    golden_subnet_err(
        "reject-private-without-subnet",
        &config(),
        &web_pod(),
        &settings,
    );
}

#[test]
fn network_public_keeps_the_public_ip_even_with_subnets() {
    let settings = AciSettings {
        network: Some(crate::policy::AciNetwork::Public),
        ..aci(PublicIp::Auto, None)
    };
    let t = translate_in(&subnet_config(&[SUBNET_A]), &web_pod(), &settings).expect("ok");
    let ip = t.group.properties.ip_address.expect("public ip");
    assert_eq!(ip.ip_type, "Public");
    assert!(t.group.properties.subnet_ids.is_empty());
    // And without subnets the default is public, as before.
    let t = translate_in(&config(), &web_pod(), &aci(PublicIp::Auto, None)).expect("ok");
    assert_eq!(t.group.properties.ip_address.expect("ip").ip_type, "Public");
}

#[test]
fn a_dns_label_annotation_on_a_private_group_is_dropped_with_a_warning() {
    let p = pod("web", "shop")
        .annotation(DNS_LABEL_ANNOTATION, "my-shop")
        .container(c("app", "img").port(8080, "http"))
        .build();
    let t = translate_in(&subnet_config(&[SUBNET_A]), &p, &aci(PublicIp::Auto, None))
        .expect("translates");
    let ip = t.group.properties.ip_address.expect("private ip");
    assert_eq!((ip.ip_type.as_str(), ip.dns_name_label), ("Private", None));
    // (No cluster DNS is configured here: its own warning comes after.)
    let w: Vec<_> = t.warnings.iter().map(|w| w.reason).collect();
    assert_eq!(w, [REASON_DNS_LABEL_IGNORED, "MissingClusterDNS"]);
    assert!(
        t.warnings[0].message.contains("my-shop"),
        "{:?}",
        t.warnings
    );
}

#[test]
fn with_several_subnets_each_pod_keeps_its_subnet_and_both_are_used() {
    let cfg = subnet_config(&[SUBNET_A, SUBNET_B]);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let p = pod("web", &format!("frontend-{i}"))
            .container(c("app", "img"))
            .build();
        let once = translate_in(&cfg, &p, &aci(PublicIp::Auto, None)).expect("ok");
        let again = translate_in(&cfg, &p, &aci(PublicIp::Auto, None)).expect("ok");
        assert_eq!(once.group, again.group, "the same body every time");
        seen.insert(once.group.properties.subnet_ids[0].id.clone());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}
