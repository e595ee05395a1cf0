//! `spillway aci render`: the binary prints the ARM body the provider would
//! PUT (secure values masked) for the README's example and for pods with
//! references, resolved from a dump or as named placeholders; an invalid pod
//! is exit 65 naming the field, bad flags exit 64.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/examples/web-burst.yaml"
);
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

fn render(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["aci", "render"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aci-render");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn body(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

const SECRET_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: checkout, namespace: shop, labels: { app: checkout } }
spec:
  containers:
    - name: app
      image: shop/checkout:3
      ports: [{ containerPort: 8080 }]
      env:
        - name: MODE
          valueFrom: { configMapKeyRef: { name: settings, key: mode } }
        - name: DB_PASSWORD
          valueFrom: { secretKeyRef: { name: db, key: password } }
      resources:
        requests: { cpu: 250m, memory: 256Mi }
"#;

const DUMP: &str = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: { name: settings, namespace: shop }
    data: { mode: canary }
  - apiVersion: v1
    kind: Secret
    metadata: { name: db, namespace: shop }
    type: Opaque
    data: { password: czNjcjN0 }
  - apiVersion: v1
    kind: ConfigMap
    metadata: { name: settings, namespace: elsewhere }
    data: { mode: wrong-namespace }
"#;

fn env_of(body: &Value) -> Vec<Value> {
    body.pointer("/properties/containers/0/properties/environmentVariables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn var<'a>(env: &'a [Value], name: &str) -> &'a Value {
    env.iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {env:?}"))
}

#[test]
fn the_readme_example_renders_to_an_arm_body() {
    let b = body(&render(&[
        "-f",
        EXAMPLE,
        "--policies",
        POLICIES,
        "--aci-region",
        "northeurope",
    ]));
    assert_eq!(b["location"], "northeurope");
    let name = b["name"].as_str().unwrap_or_default();
    assert!(name.starts_with("web-frontend-render"), "{name}");
    let c = &b["properties"]["containers"][0]["properties"];
    assert!(
        c["image"]
            .as_str()
            .is_some_and(|i| i.contains("aci-helloworld")),
        "{c}"
    );
    assert_eq!(b["properties"]["osType"], "Linux", "{b}");
    // ACI refuses a limit above the group's request: the example's 1 CPU
    // limit is clamped to its 0.5 request, and the render says so.
    assert_eq!(c["resources"]["limits"]["cpu"], 0.5, "{c}");
    assert_eq!(c["resources"]["requests"]["cpu"], 0.5, "{c}");
    // Only the ARM body: no read-only fields.
    for key in ["id", "type"] {
        assert!(b.get(key).is_none(), "{key} in {b}");
    }
}

#[test]
fn references_resolve_from_a_dump_with_secrets_masked() {
    let pod = scratch("secret-pod.yaml", SECRET_POD);
    let dump = scratch("dump.yaml", DUMP);
    let b = body(&render(&[
        "-f",
        pod.to_str().unwrap_or_default(),
        "--cluster-state",
        dump.to_str().unwrap_or_default(),
    ]));
    let env = env_of(&b);
    assert_eq!(var(&env, "MODE")["value"], "canary");
    assert_eq!(var(&env, "DB_PASSWORD")["secureValue"], "<masked>");
    assert!(
        !String::from_utf8_lossy(&serde_json::to_vec(&b).unwrap_or_default()).contains("s3cr3t")
    );
}

#[test]
fn without_a_dump_references_are_named_placeholders() {
    let pod = scratch("secret-pod-2.yaml", SECRET_POD);
    let out = render(&["-f", pod.to_str().unwrap_or_default()]);
    let b = body(&out);
    let env = env_of(&b);
    assert_eq!(var(&env, "MODE")["value"], "<configmap settings/mode>");
    assert_eq!(var(&env, "DB_PASSWORD")["secureValue"], "<masked>");
}

#[test]
fn an_invalid_pod_is_exit_65_naming_the_field_and_bad_flags_exit_64() {
    let pod = scratch(
        "hostpath.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: { name: logger, namespace: default }
spec:
  containers: [{ name: c, image: busybox }]
  volumes: [{ name: docker, hostPath: { path: /var/run/docker.sock } }]
"#,
    );
    let out = render(&["-f", pod.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.volumes[0].hostPath"), "{err}");
    assert!(out.stdout.is_empty());

    let out = render(&["-f", EXAMPLE, "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = render(&[]);
    assert_eq!(out.status.code(), Some(64), "-f is required: {out:?}");
    let service = scratch(
        "service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: { name: s }\n",
    );
    let out = render(&["-f", service.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("found kind Service"));
}

const SUBNET: &str = "/subscriptions/0000-1111/resourceGroups/rg-aks/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci";

#[test]
fn with_a_subnet_the_readme_example_gets_subnet_ids_and_a_private_ip() {
    let b = body(&render(&[
        "-f",
        EXAMPLE,
        "--policies",
        POLICIES,
        "--aci-subnet-id",
        SUBNET,
    ]));
    assert_eq!(
        b["properties"]["subnetIds"],
        serde_json::json!([{ "id": SUBNET }]),
        "{b}"
    );
    let ip = &b["properties"]["ipAddress"];
    assert_eq!(ip["type"], "Private", "{b}");
    assert!(ip.get("dnsNameLabel").is_none(), "{ip}");
    assert!(
        ip["ports"].as_array().is_some_and(|p| !p.is_empty()),
        "{ip}"
    );
}

#[test]
fn a_malformed_subnet_id_is_exit_64_saying_what_is_expected() {
    let out = render(&[
        "-f",
        EXAMPLE,
        "--aci-subnet-id",
        "/subscriptions/0000-1111/resourceGroups/rg-aks/providers/Microsoft.Network/virtualNetworks/aks-vnet",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--aci-subnet-id"), "{err}");
    assert!(err.contains("is not an ARM subnet id"), "{err}");
    assert!(err.contains("virtualNetworks/VNET/subnets/SUBNET"), "{err}");
}

#[test]
fn a_private_policy_without_a_subnet_is_exit_65_naming_the_field() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aci-render-private-policy");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("default.yaml"),
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: d }\nspec: { aci: { network: private } }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = render(&[
        "-f",
        EXAMPLE,
        "--policies",
        dir.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.aci.network"), "{err}");
    assert!(err.contains("--aci-subnet-id"), "{err}");
}

/// `--cluster-dns` gives ClusterFirst pods the kubelet's resolver
/// configuration; the dump's Services give the service environment (and the
/// kube-dns ClusterIP when the flag is absent); a bad IP is exit 64.
#[test]
fn cluster_dns_and_services_shape_the_body() {
    let pod = scratch("dns-pod.yaml", SECRET_POD);
    let b = body(&render(&[
        "-f",
        pod.to_str().unwrap_or_default(),
        "--cluster-dns",
        "10.0.0.10",
    ]));
    assert_eq!(
        b["properties"]["dnsConfig"],
        serde_json::json!({
            "nameServers": ["10.0.0.10"],
            "searchDomains": "shop.svc.cluster.local svc.cluster.local cluster.local",
            "options": "ndots:5"
        }),
        "{b}"
    );
    // Without the flag and without a dump: no cluster nameserver, a warning.
    let out = render(&["-f", pod.to_str().unwrap_or_default()]);
    let b = body(&out);
    assert!(b["properties"].get("dnsConfig").is_none(), "{b}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: MissingClusterDNS"), "{err}");

    let dump = scratch(
        "dns-dump.yaml",
        &format!(
            "{DUMP}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {{ name: kube-dns, namespace: kube-system }}
    spec: {{ clusterIP: 10.0.0.10, ports: [{{ name: dns, port: 53, protocol: UDP }}, {{ name: dns-tcp, port: 53, protocol: TCP }}] }}
  - apiVersion: v1
    kind: Service
    metadata: {{ name: kubernetes, namespace: default }}
    spec: {{ clusterIP: 10.0.0.1, ports: [{{ name: https, port: 443, protocol: TCP }}] }}
  - apiVersion: v1
    kind: Service
    metadata: {{ name: payments, namespace: shop }}
    spec: {{ clusterIP: 10.0.40.2, ports: [{{ port: 8080 }}] }}
"
        ),
    );
    let b = body(&render(&[
        "-f",
        pod.to_str().unwrap_or_default(),
        "--cluster-state",
        dump.to_str().unwrap_or_default(),
        "--cluster-domain",
        "corp.internal",
    ]));
    assert_eq!(
        b["properties"]["dnsConfig"]["searchDomains"],
        "shop.svc.corp.internal svc.corp.internal corp.internal",
        "{b}"
    );
    assert_eq!(b["properties"]["dnsConfig"]["nameServers"][0], "10.0.0.10");
    let env = env_of(&b);
    assert_eq!(var(&env, "KUBERNETES_SERVICE_HOST")["value"], "10.0.0.1");
    assert_eq!(var(&env, "PAYMENTS_PORT")["value"], "tcp://10.0.40.2:8080");
    assert!(
        !env.iter().any(|e| e["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("KUBE_DNS"))),
        "kube-system's Services are not the pod's namespace's: {env:?}"
    );

    for bad in [
        &["--cluster-dns", "kube-dns"][..],
        &["--cluster-domain", "Bad_Domain"][..],
    ] {
        let mut argv = vec!["-f", EXAMPLE];
        argv.extend_from_slice(bad);
        let out = render(&argv);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[0]),
            "{out:?}"
        );
    }
}

/// `--aci-log-analytics NS/SECRET`: the workspace from the dump's Secret
/// (its namespace, not the pod's), the key masked; a Secret missing from the
/// dump is exit 65 naming the flag; without a dump, named placeholders.
#[test]
fn log_analytics_comes_from_the_dumps_secret_with_the_key_masked() {
    let pod = scratch("la-pod.yaml", SECRET_POD);
    let dump = scratch(
        "la-dump.yaml",
        &format!(
            "{DUMP}  - apiVersion: v1\n    kind: Secret\n    metadata: {{ name: la, namespace: spillway-system }}\n    \
             type: Opaque\n    stringData: {{ workspaceId: ws-0001, workspaceKey: c2hhcmVkLWtleQ==, logType: ContainerInsights }}\n"
        ),
    );
    let args = |secret: &str, with_dump: bool| {
        let mut a = vec![
            "-f".to_string(),
            pod.to_string_lossy().into_owned(),
            "--aci-log-analytics".to_string(),
            secret.to_string(),
        ];
        if with_dump {
            a.extend([
                "--cluster-state".to_string(),
                dump.to_string_lossy().into_owned(),
            ]);
        }
        a
    };
    let run = |a: Vec<String>| render(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args("spillway-system/la", true));
    let b = body(&out);
    let la = &b["properties"]["diagnostics"]["logAnalytics"];
    assert_eq!(la["workspaceId"], "ws-0001", "{b}");
    assert_eq!(la["workspaceKey"], "<masked>", "{b}");
    assert_eq!(la["logType"], "ContainerInsights", "{b}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("c2hhcmVkLWtleQ=="));

    let out = run(args("spillway-system/absent", true));
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--aci-log-analytics: Secret \"spillway-system/absent\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let b = body(&run(args("spillway-system/la", false)));
    let la = &b["properties"]["diagnostics"]["logAnalytics"];
    assert_eq!(
        la["workspaceId"], "<secret spillway-system/la/workspaceId>",
        "{b}"
    );
    assert_eq!(la["workspaceKey"], "<masked>", "{b}");
}

const WINDOWS_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: iis, namespace: legacy }
spec:
  nodeSelector: { kubernetes.io/os: windows }
  tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists }]
  containers:
    - name: iis
      image: mcr.microsoft.com/windows/servercore/iis
      ports: [{ containerPort: 80 }]
      resources:
        requests: { cpu: "1", memory: 2Gi }
"#;

/// Render takes the pod's own `kubernetes.io/os` selector: what the Windows
/// virtual node (`--aci-windows`) would PUT for it.
#[test]
fn a_windows_pod_renders_as_a_windows_group_without_dns_config() {
    let pod = scratch("windows.yaml", WINDOWS_POD);
    let b = body(&render(&[
        "-f",
        pod.to_str().unwrap_or_default(),
        "--cluster-dns",
        "10.0.0.10",
    ]));
    assert_eq!(b["properties"]["osType"], "Windows", "{b}");
    assert_eq!(
        b.pointer("/properties/containers")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(1)
    );
    // ACI gives Windows groups no dnsConfig (as the AKS virtual node).
    assert!(b.pointer("/properties/dnsConfig").is_none(), "{b}");
}

#[test]
fn an_invalid_windows_pod_is_exit_65_naming_the_field() {
    let two = WINDOWS_POD.replace(
        "  containers:\n",
        "  containers:\n    - { name: sidecar, image: mcr.microsoft.com/windows/nanoserver }\n",
    );
    let pod = scratch("windows-two.yaml", &two);
    let out = render(&["-f", pod.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.containers") && err.contains("Windows container groups"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
