//! Pod Security Admission, as kube-apiserver's built-in `PodSecurity`
//! plugin enforces it (k8s.io/pod-security-admission, `policy/check_*.go`
//! and `admission/admission.go`).
//!
//! Owns: reading a namespace's `pod-security.kubernetes.io/enforce[-version]`
//! labels, the baseline and restricted checks at their latest version, the
//! order the checks are reported in, and the refusal text. The store calls
//! [`admit_create`] and [`admit_update`]; the 403 itself is built there.
//!
//! Follows upstream on purpose:
//! - checks run in upstream's order: baseline check IDs sorted, then
//!   restricted IDs sorted; at `restricted` the restricted checks that
//!   override a baseline one (capabilities, procMount, hostPath volumes,
//!   seccomp) replace it;
//! - an invalid `enforce` level is enforced as `restricted` (fail closed),
//!   an invalid version as `latest`; no labels = `privileged`;
//! - updates are evaluated only when a container image or the number of
//!   containers changed (`isSignificantPodUpdate`); `status`, `binding`
//!   and `eviction` are never evaluated;
//! - init, regular and ephemeral containers are all visited.
//!
//! Simplifications: a pinned `enforce-version` (`v1.30`) is named as such in
//! the message but evaluated with the latest checks; `audit` and `warn`
//! modes and exemptions are not implemented (no warnings are returned).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec, Probe};

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

/// A Pod Security level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The enforced level and the version string shown in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    pub version: String,
}

/// The enforce policy a namespace's labels ask for (`api.PolicyToEvaluate`).
pub fn enforce_policy(labels: &BTreeMap<String, String>) -> Policy {
    let level = match labels.get(ENFORCE_LABEL).map(String::as_str) {
        None | Some("privileged") => Level::Privileged,
        Some("baseline") => Level::Baseline,
        // "restricted" and, failing closed as upstream does, anything invalid.
        Some(_) => Level::Restricted,
    };
    let version = match labels.get(ENFORCE_VERSION_LABEL).map(String::as_str) {
        Some(v) if valid_version(v) => v.to_string(),
        _ => "latest".to_string(),
    };
    Policy { level, version }
}

fn valid_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.")
            .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

/// One failed check: upstream's `ForbiddenReason` and `ForbiddenDetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    reason: String,
    detail: String,
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

type CheckFn = fn(&Pod, &PodSpec, &[Container]) -> Option<Violation>;

struct Check {
    id: &'static str,
    level: Level,
    /// Baseline check IDs this restricted check replaces.
    overrides: &'static [&'static str],
    run: CheckFn,
}

const CHECKS: &[Check] = &[
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        overrides: &[],
        run: app_armor_profile,
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        overrides: &[],
        run: capabilities_baseline,
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        overrides: &[],
        run: host_namespaces,
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        overrides: &[],
        run: host_path_volumes,
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        overrides: &[],
        run: host_ports,
    },
    Check {
        id: "hostProbesAndHostLifecycle",
        level: Level::Baseline,
        overrides: &[],
        run: host_probes_and_lifecycle,
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        overrides: &[],
        run: privileged,
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        overrides: &[],
        run: proc_mount_baseline,
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        overrides: &[],
        run: se_linux_options,
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        overrides: &[],
        run: seccomp_baseline,
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        overrides: &[],
        run: sysctls,
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        overrides: &[],
        run: windows_host_process,
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        overrides: &[],
        run: allow_privilege_escalation,
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        overrides: &["capabilities_baseline"],
        run: capabilities_restricted,
    },
    Check {
        id: "procMount_restricted",
        level: Level::Restricted,
        overrides: &["procMount"],
        run: proc_mount_restricted,
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        overrides: &["hostPathVolumes"],
        run: restricted_volumes,
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        overrides: &[],
        run: run_as_non_root,
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        overrides: &[],
        run: run_as_user,
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        overrides: &["seccompProfile_baseline"],
        run: seccomp_restricted,
    },
];

/// The checks a level runs, in upstream's reporting order (baseline IDs
/// sorted, then restricted IDs sorted; overridden baseline checks dropped).
fn checks_for(level: Level) -> Vec<&'static Check> {
    let mut baseline: Vec<&Check> = CHECKS
        .iter()
        .filter(|c| c.level == Level::Baseline)
        .collect();
    let mut restricted: Vec<&Check> = CHECKS
        .iter()
        .filter(|c| c.level == Level::Restricted)
        .collect();
    baseline.sort_by_key(|c| c.id);
    restricted.sort_by_key(|c| c.id);
    match level {
        Level::Privileged => Vec::new(),
        Level::Baseline => baseline,
        Level::Restricted => {
            let overridden: BTreeSet<&str> = restricted
                .iter()
                .flat_map(|c| c.overrides.iter().copied())
                .collect();
            baseline
                .into_iter()
                .filter(|c| !overridden.contains(c.id))
                .chain(restricted)
                .collect()
        }
    }
}

/// `violates PodSecurity "restricted:latest": reason (detail), ...`, or
/// None when the pod is allowed.
pub fn evaluate(policy: &Policy, pod: &Pod) -> Option<String> {
    if policy.level == Level::Privileged {
        return None;
    }
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let containers = visited_containers(spec);
    let failed: Vec<Violation> = checks_for(policy.level)
        .into_iter()
        .filter_map(|c| (c.run)(pod, spec, &containers))
        .collect();
    if failed.is_empty() {
        return None;
    }
    let detail = failed
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "violates PodSecurity \"{}:{}\": {detail}",
        policy.level.as_str(),
        policy.version
    ))
}

/// Upstream evaluates a pod update only when it could change what runs:
/// a different number of (init) containers, a changed image, or an added
/// or changed ephemeral container.
pub fn significant_update(old: &Pod, new: &Pod) -> bool {
    let default_spec = PodSpec::default();
    let o = old.spec.as_ref().unwrap_or(&default_spec);
    let n = new.spec.as_ref().unwrap_or(&default_spec);
    let images_differ = |a: &[Container], b: &[Container]| {
        a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.image != y.image)
    };
    let old_init = o.init_containers.clone().unwrap_or_default();
    let new_init = n.init_containers.clone().unwrap_or_default();
    if images_differ(&o.containers, &n.containers) || images_differ(&old_init, &new_init) {
        return true;
    }
    n.ephemeral_containers.iter().flatten().any(|c| {
        o.ephemeral_containers
            .iter()
            .flatten()
            .find(|oc| oc.name == c.name)
            .is_none_or(|oc| oc.image != c.image)
    })
}

/// Init, regular, then ephemeral containers (upstream's `visitContainers`).
/// Ephemeral containers share the container fields the checks read.
fn visited_containers(spec: &PodSpec) -> Vec<Container> {
    let mut out: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
    out.extend(spec.containers.iter().cloned());
    for e in spec.ephemeral_containers.iter().flatten() {
        if let Ok(c) = serde_json::to_value(e).and_then(serde_json::from_value::<Container>) {
            out.push(c);
        }
    }
    out
}

fn is_windows(spec: &PodSpec) -> bool {
    spec.os.as_ref().is_some_and(|os| os.name == "windows")
}

/// `hostUsers: false` relaxes runAsNonRoot, runAsUser and the baseline
/// procMount check since v1.35.
fn user_namespaced(spec: &PodSpec) -> bool {
    spec.host_users == Some(false)
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 { singular } else { plural }
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

/// `containers "a", "b"` / `container "a"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn sorted(set: BTreeSet<String>) -> Vec<String> {
    set.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Baseline

fn app_armor_profile(pod: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let allowed = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut setters = Vec::new();
    let mut bad = BTreeSet::new();
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        && !allowed(&p.type_)
    {
        setters.push("pod".to_string());
        bad.insert(p.type_.clone());
    }
    let mut bad_containers = Vec::new();
    for c in cs {
        if let Some(p) = c
            .security_context
            .as_ref()
            .and_then(|s| s.app_armor_profile.as_ref())
            && !allowed(&p.type_)
        {
            bad_containers.push(c.name.clone());
            bad.insert(p.type_.clone());
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    let mut values = sorted(bad);
    let mut annotations: Vec<String> = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

/// The capabilities a container runtime grants by default.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_baseline(_: &Pod, _: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut bad = BTreeSet::new();
    for c in cs {
        let added = c
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|caps| caps.add.as_ref());
        let mut valid = true;
        for cap in added.into_iter().flatten() {
            if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) {
                valid = false;
                bad.insert(cap.clone());
            }
        }
        if !valid {
            bad_containers.push(c.name.clone());
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&sorted(bad))
        ),
    )
}

fn host_namespaces(_: &Pod, spec: &PodSpec, _: &[Container]) -> Option<Violation> {
    let mut set = Vec::new();
    if spec.host_network == Some(true) {
        set.push("hostNetwork=true");
    }
    if spec.host_pid == Some(true) {
        set.push("hostPID=true");
    }
    if spec.host_ipc == Some(true) {
        set.push("hostIPC=true");
    }
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn host_path_volumes(_: &Pod, spec: &PodSpec, _: &[Container]) -> Option<Violation> {
    let names: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.clone())
        .collect();
    if names.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(_: &Pod, _: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    // Upstream keeps these in a string set, so they sort as strings.
    let mut ports = BTreeSet::new();
    for c in cs {
        let mut valid = true;
        for p in c.ports.iter().flatten() {
            if let Some(h) = p.host_port
                && h != 0
            {
                valid = false;
                ports.insert(h.to_string());
            }
        }
        if !valid {
            bad_containers.push(c.name.clone());
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            sorted(ports).join(", ")
        ),
    )
}

fn probe_hosts(p: Option<&Probe>) -> Vec<String> {
    let Some(p) = p else { return Vec::new() };
    let http = p.http_get.as_ref().and_then(|h| h.host.clone());
    let tcp = p.tcp_socket.as_ref().and_then(|t| t.host.clone());
    http.into_iter()
        .chain(tcp)
        .filter(|h| !h.is_empty())
        .collect()
}

fn handler_hosts(h: Option<&LifecycleHandler>) -> Vec<String> {
    let Some(h) = h else { return Vec::new() };
    let http = h.http_get.as_ref().and_then(|g| g.host.clone());
    let tcp = h.tcp_socket.as_ref().and_then(|t| t.host.clone());
    http.into_iter()
        .chain(tcp)
        .filter(|h| !h.is_empty())
        .collect()
}

fn host_probes_and_lifecycle(_: &Pod, _: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in cs {
        let mut found = probe_hosts(c.liveness_probe.as_ref());
        found.extend(probe_hosts(c.readiness_probe.as_ref()));
        found.extend(probe_hosts(c.startup_probe.as_ref()));
        if let Some(l) = &c.lifecycle {
            found.extend(handler_hosts(l.post_start.as_ref()));
            found.extend(handler_hosts(l.pre_stop.as_ref()));
        }
        if !found.is_empty() {
            bad_containers.insert(c.name.clone());
            hosts.extend(found);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let names = sorted(bad_containers);
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&names),
            pluralize("uses", "use", names.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&sorted(hosts))
        ),
    )
}

fn privileged(_: &Pod, _: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
        .map(|c| c.name.clone())
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(cs: &[Container]) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut types = BTreeSet::new();
    for c in cs {
        if let Some(pm) = c
            .security_context
            .as_ref()
            .and_then(|s| s.proc_mount.as_ref())
            && pm != "Default"
        {
            bad_containers.push(c.name.clone());
            types.insert(pm.clone());
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad_containers),
            join_quote(&sorted(types))
        ),
    )
}

fn proc_mount_baseline(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    proc_mount(cs)
}

fn se_linux_options(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    const ALLOWED_TYPES: &[&str] = &[
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |o: &k8s_openapi::api::core::v1::SELinuxOptions| {
        let mut ok = true;
        let t = o.type_.clone().unwrap_or_default();
        if !ALLOWED_TYPES.contains(&t.as_str()) {
            ok = false;
            bad_types.insert(t);
        }
        if o.user.as_deref().is_some_and(|u| !u.is_empty()) {
            ok = false;
            set_user = true;
        }
        if o.role.as_deref().is_some_and(|r| !r.is_empty()) {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters = Vec::new();
    if let Some(o) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.se_linux_options.as_ref())
        && !valid(o)
    {
        setters.push("pod".to_string());
    }
    let mut bad_containers = Vec::new();
    for c in cs {
        if let Some(o) = c
            .security_context
            .as_ref()
            .and_then(|s| s.se_linux_options.as_ref())
            && !valid(o)
        {
            bad_containers.push(c.name.clone());
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!(
            "{} {}",
            pluralize("type", "types", bad_types.len()),
            join_quote(&sorted(bad_types))
        ));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// Shared by the baseline and restricted seccomp checks: who explicitly sets
/// a forbidden type, and (restricted) who sets nothing at all.
fn seccomp(spec: &PodSpec, cs: &[Container], required: bool) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut bad = BTreeSet::new();
    let mut pod_set = false;
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        if valid_seccomp(&p.type_) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            bad.insert(p.type_.clone());
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in cs {
        match c
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
        {
            Some(p) if !valid_seccomp(&p.type_) => {
                explicit.push(c.name.clone());
                bad.insert(p.type_.clone());
            }
            Some(_) => {}
            None if !pod_set => implicit.push(c.name.clone()),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&sorted(bad))
            ),
        );
    }
    if required && !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn seccomp_baseline(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    seccomp(spec, cs, false)
}

/// Namespaced sysctls that cannot affect other pods (as of v1.37).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

fn sysctls(_: &Pod, spec: &PodSpec, _: &[Container]) -> Option<Violation> {
    let bad: Vec<String> = spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .filter(|s| !SAFE_SYSCTLS.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    let host_process = |o: Option<&k8s_openapi::api::core::v1::WindowsSecurityContextOptions>| {
        o.and_then(|w| w.host_process) == Some(true)
    };
    let mut setters = Vec::new();
    if host_process(
        spec.security_context
            .as_ref()
            .and_then(|s| s.windows_options.as_ref()),
    ) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| {
            host_process(
                c.security_context
                    .as_ref()
                    .and_then(|s| s.windows_options.as_ref()),
            )
        })
        .map(|c| c.name.clone())
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

// ---------------------------------------------------------------------------
// Restricted

fn allow_privilege_escalation(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.allow_privilege_escalation)
                != Some(false)
        })
        .map(|c| c.name.clone())
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn capabilities_restricted(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in cs {
        let Some(caps) = c
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
        else {
            missing_drop.push(c.name.clone());
            continue;
        };
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            missing_drop.push(c.name.clone());
        }
        let mut added_forbidden = false;
        for a in caps.add.iter().flatten() {
            if a != "NET_BIND_SERVICE" {
                added_forbidden = true;
                forbidden.insert(a.clone());
            }
        }
        if added_forbidden {
            adding.push(c.name.clone());
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&sorted(forbidden))
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

/// At restricted, user namespaces do not relax the procMount check.
fn proc_mount_restricted(_: &Pod, _: &PodSpec, cs: &[Container]) -> Option<Violation> {
    proc_mount(cs)
}

fn restricted_volumes(_: &Pod, spec: &PodSpec, _: &[Container]) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.image.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some()
        {
            continue;
        }
        bad.push(v.name.clone());
        let t = [
            (v.host_path.is_some(), "hostPath"),
            (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
            (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
            (v.git_repo.is_some(), "gitRepo"),
            (v.nfs.is_some(), "nfs"),
            (v.iscsi.is_some(), "iscsi"),
            (v.glusterfs.is_some(), "glusterfs"),
            (v.rbd.is_some(), "rbd"),
            (v.flex_volume.is_some(), "flexVolume"),
            (v.cinder.is_some(), "cinder"),
            (v.cephfs.is_some(), "cephfs"),
            (v.flocker.is_some(), "flocker"),
            (v.fc.is_some(), "fc"),
            (v.azure_file.is_some(), "azureFile"),
            (v.vsphere_volume.is_some(), "vsphereVolume"),
            (v.quobyte.is_some(), "quobyte"),
            (v.azure_disk.is_some(), "azureDisk"),
            (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
            (v.portworx_volume.is_some(), "portworxVolume"),
            (v.scale_io.is_some(), "scaleIO"),
            (v.storageos.is_some(), "storageos"),
        ]
        .into_iter()
        .find(|(set, _)| *set)
        .map_or("unknown", |(_, name)| name);
        types.insert(t.to_string());
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&sorted(types))
        ),
    )
}

fn run_as_non_root(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
    {
        Some(false) => setters.push("pod".to_string()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in cs {
        match c.security_context.as_ref().and_then(|s| s.run_as_non_root) {
            Some(false) => explicit.push(c.name.clone()),
            Some(true) => {}
            None if !pod_non_root => implicit.push(c.name.clone()),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn run_as_user(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if user_namespaced(spec) {
        return None;
    }
    let mut setters = Vec::new();
    if spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0))
        .map(|c| c.name.clone())
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

fn seccomp_restricted(_: &Pod, spec: &PodSpec, cs: &[Container]) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    seccomp(spec, cs, true)
}
