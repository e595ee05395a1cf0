//! Pod Security Admission in the test API server, proved through kube-rs:
//! one case per upstream check (k8s.io/pod-security-admission
//! `policy/check_*.go`), the order checks are reported in, the namespace
//! labels that select a level, and which updates are evaluated.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::TestApiServer;

/// Namespaces: `r` restricted, `b` baseline, `p` privileged, `none`
/// unlabelled; `missing` is not stored at all.
async fn server() -> TestApiServer {
    let srv = TestApiServer::start().await;
    let nss: Api<Namespace> = Api::all(srv.client());
    for (name, level) in [
        ("r", Some("restricted")),
        ("b", Some("baseline")),
        ("p", Some("privileged")),
        ("none", None),
    ] {
        let mut labels = serde_json::Map::new();
        if let Some(l) = level {
            labels.insert("pod-security.kubernetes.io/enforce".into(), json!(l));
            labels.insert(
                "pod-security.kubernetes.io/enforce-version".into(),
                json!("latest"),
            );
        }
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("namespace");
        nss.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }
    srv
}

/// A pod that passes `restricted`: the pod sets runAsNonRoot and seccomp,
/// container `c` drops ALL and forbids privilege escalation.
fn restricted_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c", "image": "pause",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    })
}

/// A pod with no security settings at all (passes `baseline`).
fn bare_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "pause"}]},
    })
}

/// Applies a JSON merge patch (RFC 7386) to build a case's pod.
fn merged(mut base: Value, patch: &Value) -> Value {
    fn merge(doc: &mut Value, patch: &Value) {
        match (doc, patch) {
            (Value::Object(d), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        d.remove(k);
                    } else {
                        merge(d.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (d, p) => *d = p.clone(),
        }
    }
    merge(&mut base, patch);
    base
}

/// Creates `pod` in `ns`; Ok, or the refusal's (code, reason, message).
async fn create(srv: &TestApiServer, ns: &str, pod: Value) -> Result<(), (u16, String, String)> {
    let pods: Api<Pod> = Api::namespaced(srv.client(), ns);
    let pod: Pod = serde_json::from_value(pod).expect("pod fixture");
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.reason.clone(), s.message.clone())),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// One case: a container list replacing `c`, plus other spec fields.
struct Case {
    name: &'static str,
    ns: &'static str,
    /// Merged into the level's passing pod (`restricted_pod` in `r`,
    /// `bare_pod` elsewhere).
    patch: Value,
    /// The refusal after `violates PodSecurity "LEVEL:latest": `, or None
    /// for admitted.
    want: Option<&'static str>,
}

fn container(sc: Value) -> Value {
    json!({"spec": {"containers": [{"name": "c", "image": "pause", "securityContext": sc}]}})
}

fn restricted_container(extra: Value) -> Value {
    let mut sc = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    if let (Some(m), Some(e)) = (sc.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    container(sc)
}

fn baseline_cases() -> Vec<Case> {
    vec![
        Case {
            name: "hostNetwork",
            ns: "b",
            patch: json!({"spec": {"hostNetwork": true}}),
            want: Some("host namespaces (hostNetwork=true)"),
        },
        Case {
            name: "hostPID and hostIPC",
            ns: "b",
            patch: json!({"spec": {"hostPID": true, "hostIPC": true}}),
            want: Some("host namespaces (hostPID=true, hostIPC=true)"),
        },
        Case {
            name: "hostNetwork false",
            ns: "b",
            patch: json!({"spec": {"hostNetwork": false}}),
            want: None,
        },
        Case {
            name: "privileged",
            ns: "b",
            patch: container(json!({"privileged": true})),
            want: Some(
                r#"privileged (container "c" must not set securityContext.privileged=true)"#,
            ),
        },
        Case {
            name: "capabilities beyond the default set",
            ns: "b",
            patch: container(json!({"capabilities": {"add": ["SYS_TIME", "NET_ADMIN", "CHOWN"]}})),
            want: Some(
                r#"non-default capabilities (container "c" must not include "NET_ADMIN", "SYS_TIME" in securityContext.capabilities.add)"#,
            ),
        },
        Case {
            name: "capabilities in the default set",
            ns: "b",
            patch: container(json!({"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}})),
            want: None,
        },
        Case {
            name: "hostPath volume",
            ns: "b",
            patch: json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]}}),
            want: Some(r#"hostPath volumes (volume "h")"#),
        },
        Case {
            name: "hostPorts sort as strings",
            ns: "b",
            patch: json!({"spec": {"containers": [{"name": "c", "image": "pause", "ports": [
                {"containerPort": 1, "hostPort": 8080}, {"containerPort": 2, "hostPort": 80}, {"containerPort": 3}
            ]}]}}),
            want: Some(r#"hostPort (container "c" uses hostPorts 80, 8080)"#),
        },
        Case {
            name: "AppArmor Unconfined (field)",
            ns: "b",
            patch: container(json!({"appArmorProfile": {"type": "Unconfined"}})),
            want: Some(
                r#"forbidden AppArmor profile (container "c" must not set AppArmor profile type to "Unconfined")"#,
            ),
        },
        Case {
            name: "AppArmor unconfined (annotation)",
            ns: "b",
            patch: json!({"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}}),
            want: Some(
                r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/c="unconfined"")"#,
            ),
        },
        Case {
            name: "AppArmor RuntimeDefault",
            ns: "b",
            patch: container(json!({"appArmorProfile": {"type": "RuntimeDefault"}})),
            want: None,
        },
        Case {
            name: "SELinux type and user",
            ns: "b",
            patch: container(json!({"seLinuxOptions": {"type": "spc_t", "user": "root"}})),
            want: Some(
                r#"seLinuxOptions (container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)"#,
            ),
        },
        Case {
            name: "SELinux container_t",
            ns: "b",
            patch: container(json!({"seLinuxOptions": {"type": "container_t", "level": "s0:c1"}})),
            want: None,
        },
        Case {
            name: "procMount Unmasked",
            ns: "b",
            patch: container(json!({"procMount": "Unmasked"})),
            want: Some(
                r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
            ),
        },
        Case {
            name: "procMount Unmasked in a user namespace",
            ns: "b",
            patch: merged(
                container(json!({"procMount": "Unmasked"})),
                &json!({"spec": {"hostUsers": false}}),
            ),
            want: None,
        },
        Case {
            name: "seccomp Unconfined",
            ns: "b",
            patch: json!({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
            want: Some(
                r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
        },
        Case {
            name: "unsafe sysctls",
            ns: "b",
            patch: json!({"spec": {"securityContext": {"sysctls": [
                {"name": "kernel.msgmax", "value": "1"},
                {"name": "net.ipv4.tcp_syncookies", "value": "1"},
                {"name": "vm.swappiness", "value": "1"}
            ]}}}),
            want: Some("forbidden sysctls (kernel.msgmax, vm.swappiness)"),
        },
        Case {
            name: "probe host",
            ns: "b",
            patch: json!({"spec": {"containers": [{"name": "c", "image": "pause",
                "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}}]}}),
            want: Some(
                r#"probe or lifecycle host (container "c" uses probe or lifecycle host "10.0.0.1")"#,
            ),
        },
        Case {
            name: "Windows hostProcess",
            ns: "b",
            patch: json!({"spec": {"securityContext": {"windowsOptions": {"hostProcess": true}}}}),
            want: Some(
                "hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)",
            ),
        },
    ]
}

fn restricted_cases() -> Vec<Case> {
    vec![
        Case {
            name: "the passing pod",
            ns: "r",
            patch: json!({}),
            want: None,
        },
        Case {
            name: "allowPrivilegeEscalation unset",
            ns: "r",
            patch: container(json!({"capabilities": {"drop": ["ALL"]}})),
            want: Some(
                r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
            ),
        },
        Case {
            name: "capabilities not dropped",
            ns: "r",
            patch: container(json!({"allowPrivilegeEscalation": false})),
            want: Some(
                r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])"#,
            ),
        },
        Case {
            name: "capability added beyond NET_BIND_SERVICE",
            ns: "r",
            patch: restricted_container(
                json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CHOWN"]}}),
            ),
            want: Some(
                r#"unrestricted capabilities (container "c" must not include "CHOWN" in securityContext.capabilities.add)"#,
            ),
        },
        Case {
            name: "NET_BIND_SERVICE may be added",
            ns: "r",
            patch: restricted_container(
                json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
            ),
            want: None,
        },
        Case {
            name: "runAsNonRoot unset",
            ns: "r",
            patch: json!({"spec": {"securityContext": {"runAsNonRoot": null}}}),
            want: Some(
                r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)"#,
            ),
        },
        Case {
            name: "runAsNonRoot false on a container",
            ns: "r",
            patch: restricted_container(json!({"runAsNonRoot": false})),
            want: Some(
                r#"runAsNonRoot != true (container "c" must not set securityContext.runAsNonRoot=false)"#,
            ),
        },
        Case {
            name: "runAsUser 0",
            ns: "r",
            patch: json!({"spec": {"securityContext": {"runAsUser": 0}}}),
            want: Some("runAsUser=0 (pod must not set runAsUser=0)"),
        },
        Case {
            name: "runAsUser 0 in a user namespace",
            ns: "r",
            patch: json!({"spec": {"hostUsers": false, "securityContext": {"runAsUser": 0}}}),
            want: None,
        },
        Case {
            name: "seccomp unset",
            ns: "r",
            patch: json!({"spec": {"securityContext": {"seccompProfile": null}}}),
            want: Some(
                r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            ),
        },
        Case {
            name: "seccomp on every container instead of the pod",
            ns: "r",
            patch: merged(
                restricted_container(
                    json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
                ),
                &json!({"spec": {"securityContext": {"seccompProfile": null}}}),
            ),
            want: None,
        },
        Case {
            name: "restricted volume types",
            ns: "r",
            patch: json!({"spec": {"volumes": [
                {"name": "n", "nfs": {"server": "s", "path": "/"}},
                {"name": "h", "hostPath": {"path": "/"}},
                {"name": "ok", "projected": {"sources": []}}
            ]}}),
            // At restricted, restrictedVolumes replaces "hostPath volumes".
            want: Some(
                r#"restricted volume types (volumes "n", "h" use restricted volume types "hostPath", "nfs")"#,
            ),
        },
        Case {
            name: "procMount Unmasked even in a user namespace",
            ns: "r",
            patch: merged(
                restricted_container(json!({"procMount": "Unmasked"})),
                &json!({"spec": {"hostUsers": false}}),
            ),
            want: Some(
                r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
            ),
        },
        Case {
            name: "Windows pods skip the Linux-only checks",
            ns: "r",
            patch: json!({"spec": {"os": {"name": "windows"}, "securityContext": {"seccompProfile": null},
                "containers": [{"name": "c", "image": "pause"}]}}),
            want: None,
        },
    ]
}

#[tokio::test]
async fn every_check_refuses_in_the_real_form() {
    let srv = server().await;
    let cases: Vec<Case> = baseline_cases()
        .into_iter()
        .chain(restricted_cases())
        .collect();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (base, level) = if case.ns == "r" {
            (restricted_pod(), "restricted")
        } else {
            (bare_pod(), "baseline")
        };
        let name = format!("case-{i}");
        let pod = merged(base, &json!({"metadata": {"name": name}}));
        let got = create(&srv, case.ns, merged(pod, &case.patch)).await;
        let want = case.want.map(|w| {
            (
                403,
                "Forbidden".to_string(),
                format!(
                    r#"pods "{name}" is forbidden: violates PodSecurity "{level}:latest": {w}"#
                ),
            )
        });
        if got.clone().err() != want {
            failures.push(format!("{}: got {got:?}\n    want {want:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn violations_are_reported_in_upstream_order_with_plurals() {
    let srv = server().await;
    let pod = merged(
        bare_pod(),
        &json!({"metadata": {"name": "bare"}, "spec": {
            "hostNetwork": true,
            "initContainers": [{"name": "i", "image": "pause"}],
        }}),
    );
    let (code, reason, message) = create(&srv, "r", pod).await.expect_err("refused");
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    // Baseline checks first (sorted by check ID), then restricted ones;
    // init containers are visited before regular ones.
    assert_eq!(
        message,
        r#"pods "bare" is forbidden: violates PodSecurity "restricted:latest": host namespaces (hostNetwork=true), allowPrivilegeEscalation != false (containers "i", "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (containers "i", "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or containers "i", "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or containers "i", "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );
}

#[tokio::test]
async fn namespace_labels_select_the_level() {
    let srv = server().await;
    let privileged = || {
        merged(
            bare_pod(),
            &json!({"spec": {"hostPID": true, "containers": [{"name": "c", "image": "pause",
                "securityContext": {"privileged": true}}]}}),
        )
    };
    // privileged, unlabelled and unstored namespaces enforce nothing.
    for ns in ["p", "none", "missing"] {
        assert_eq!(create(&srv, ns, privileged()).await, Ok(()), "{ns}");
    }
    let nss: Api<Namespace> = Api::all(srv.client());
    // An invalid level fails closed (restricted); a pinned version is named.
    let label = |level: &str, version: &str| {
        Patch::Merge(json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": level,
            "pod-security.kubernetes.io/enforce-version": version,
        }}}))
    };
    nss.patch("none", &PatchParams::default(), &label("bogus", "latest"))
        .await
        .expect("label");
    let (_, _, msg) = create(&srv, "none", bare_pod()).await.expect_err("refused");
    assert!(
        msg.starts_with(r#"pods "x" is forbidden: violates PodSecurity "restricted:latest": "#),
        "{msg}"
    );
    nss.patch("none", &PatchParams::default(), &label("baseline", "v1.30"))
        .await
        .expect("label");
    let (_, _, msg) = create(&srv, "none", privileged())
        .await
        .expect_err("refused");
    assert!(
        msg.starts_with(r#"pods "x" is forbidden: violates PodSecurity "baseline:v1.30": "#),
        "{msg}"
    );
    // generateName: the refusal names the generated name, as the real one does.
    let generated = merged(
        bare_pod(),
        &json!({"metadata": {"name": null, "generateName": "web-"}}),
    );
    let (_, _, msg) = create(&srv, "r", generated).await.expect_err("refused");
    assert!(msg.starts_with(r#"pods "web-"#), "{msg}");
    assert!(!msg.starts_with(r#"pods "web-" "#), "{msg}");
}

#[tokio::test]
async fn updates_are_evaluated_only_when_images_change() {
    let srv = server().await;
    // A pod admitted before the namespace enforced anything.
    let seeded: Pod = serde_json::from_value(merged(
        bare_pod(),
        &json!({"metadata": {"name": "old", "namespace": "r"}}),
    ))
    .expect("pod");
    srv.insert(&seeded);
    let pods: Api<Pod> = Api::namespaced(srv.client(), "r");
    let pp = PatchParams::default();
    // Labels and status: not significant, allowed.
    pods.patch(
        "old",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .expect("label update is not evaluated");
    pods.patch_status(
        "old",
        &pp,
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status is never evaluated");
    // A new image: evaluated against the namespace's level.
    let image =
        Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "pause:2"}]}}));
    match pods.patch("old", &pp, &image).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert!(
                s.message
                    .starts_with(r#"pods "old" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
                "{}",
                s.message
            );
        }
        other => panic!("image change in a restricted namespace: {other:?}"),
    }
}
