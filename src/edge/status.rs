//! Pod status of a pod on an edge node, from its layered deployment's
//! system metrics and the `$edgeAgent` twins of the devices it targets.
//!
//! Owns the reading of hub state as Kubernetes pod state; pure (no I/O, no
//! clock). Never fakes: with nothing targeted the pod is Pending with reason
//! [`REASON_NO_TARGET_DEVICES`]; it is Running only when a device reports
//! every module of this deployment running at the desired version, and Ready
//! only when enough devices report success. Must not: call the hub or
//! decide what to create or delete (the edge backend does).

use super::model::{Configuration, ModuleReport, ModuleTwin};
use k8s_openapi::api::core::v1 as k8s;
use serde_json::Value;
use std::collections::BTreeMap;

/// Pod annotation: devices that must report success for Ready (default:
/// every device the deployment is applied to, at least 1).
pub const MIN_READY_ANNOTATION: &str = "edge.spillway.io/min-ready";
/// Pending reason while the target condition matches no device.
pub const REASON_NO_TARGET_DEVICES: &str = "NoTargetDevices";
/// Pending reason while devices are targeted but none runs every module.
pub const REASON_ROLLING_OUT: &str = "DeploymentRollingOut";
/// Ready condition reason while devices that report 406 (offline / not
/// reporting) keep the pod below `min-ready`.
pub const REASON_DEVICES_OFFLINE: &str = "DevicesOffline";
/// Container waiting reason of a module the agent keeps restarting.
pub const REASON_MODULE_BACKOFF: &str = "ModuleBackOff";
/// Container id scheme of statuses written from a deployment.
pub const CONTAINER_ID_SCHEME: &str = "iotedge://";

/// What the hub says about one layered deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentState {
    pub configuration: Configuration,
    /// `$edgeAgent` twins of the devices the deployment targets.
    pub twins: Vec<ModuleTwin>,
}

/// Per-device verdict on one deployment.
#[derive(Debug, Clone, PartialEq)]
struct DeviceView {
    device: String,
    /// The agent reported the current desired version.
    current: bool,
    /// `lastDesiredStatus.code` (406: offline / not reporting).
    code: Option<i64>,
    description: String,
    /// module name → its report, for this deployment's modules.
    modules: BTreeMap<String, ModuleReport>,
}

/// The modules a layered deployment adds, with their desired images.
pub fn desired_modules(c: &Configuration) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let agent = c
        .content
        .modules_content
        .as_ref()
        .and_then(|m| m.get("$edgeAgent"))
        .and_then(Value::as_object);
    for (key, spec) in agent.into_iter().flatten() {
        if let Some(name) = key.strip_prefix("properties.desired.modules.") {
            let image = spec
                .pointer("/settings/image")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.insert(name.to_string(), image.to_string());
        }
    }
    out
}

/// The devices this deployment is applied to, as their agents report.
fn device_views(state: &DeploymentState, modules: &BTreeMap<String, String>) -> Vec<DeviceView> {
    let id = &state.configuration.id;
    state
        .twins
        .iter()
        .filter(|t| {
            t.configurations
                .get(id)
                .and_then(|s| s.get("status"))
                .and_then(Value::as_str)
                == Some("Applied")
        })
        .map(|t| {
            let report = t.edge_agent_report().unwrap_or_default();
            let status = report.last_desired_status.clone().unwrap_or_default();
            DeviceView {
                device: t.device_id.clone(),
                current: report.last_desired_version.is_some()
                    && report.last_desired_version == t.desired_version(),
                code: report.last_desired_status.as_ref().map(|s| s.code),
                description: status.description,
                modules: report
                    .modules
                    .into_iter()
                    .filter(|(m, _)| modules.contains_key(m))
                    .collect(),
            }
        })
        .collect()
}

impl DeviceView {
    /// Every module of the deployment runs here at the desired image.
    fn runs_all(&self, modules: &BTreeMap<String, String>) -> bool {
        self.current
            && modules.iter().all(|(m, image)| {
                self.modules.get(m).is_some_and(|r| {
                    r.runtime_status == "running"
                        && r.settings.as_ref().is_none_or(|s| s.image == *image)
                })
            })
    }
}

/// The pod status for `pod` whose deployment is in `state`.
pub fn pod_status(pod: &k8s::Pod, state: &DeploymentState) -> k8s::PodStatus {
    let c = &state.configuration;
    let counts = c.device_counts();
    let modules = desired_modules(c);
    let devices = device_views(state, &modules);
    let running_on = devices.iter().filter(|d| d.runs_all(&modules)).count() as i64;
    let offline: Vec<&DeviceView> = devices.iter().filter(|d| d.code == Some(406)).collect();
    let min_ready = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIN_READY_ANNOTATION))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(counts.applied.max(1));
    let mut summary = counts.to_string();
    if let Some(first) = offline.first() {
        // The count, and why for the first one in the agent's words.
        summary.push_str(&format!(
            " offline={}: {} reports 406 {}",
            offline.len(),
            first.device,
            first.description
        ));
    }
    let ready = running_on >= 1 && counts.reported_successful >= min_ready;
    let (phase, reason, message) = if counts.targeted == 0 {
        (
            "Pending",
            Some(REASON_NO_TARGET_DEVICES),
            format!("no device matches {}", c.target_condition),
        )
    } else if running_on == 0 {
        // Offline devices are already explained in the summary.
        let why = devices
            .iter()
            .find(|d| d.code.is_some_and(|code| code != 200 && code != 406))
            .map(|d| {
                format!(
                    ": {} reports {} {}",
                    d.device,
                    d.code.unwrap_or(0),
                    d.description
                )
            })
            .unwrap_or_default();
        (
            "Pending",
            Some(REASON_ROLLING_OUT),
            format!("{summary}{why}"),
        )
    } else {
        ("Running", None, summary.clone())
    };
    let mut container_statuses = Vec::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let image = modules.get(&container.name).cloned().unwrap_or_default();
        let reports: Vec<&ModuleReport> = devices
            .iter()
            .filter(|d| d.current)
            .filter_map(|d| d.modules.get(&container.name))
            .collect();
        let running = reports.iter().any(|r| r.runtime_status == "running");
        let restarts = reports
            .iter()
            .filter_map(|r| r.restart_count)
            .max()
            .unwrap_or(0);
        let failing = reports.iter().find(|r| r.runtime_status != "running");
        let state = if running {
            k8s::ContainerState {
                running: Some(k8s::ContainerStateRunning { started_at: None }),
                ..Default::default()
            }
        } else {
            let (reason, message) = match failing {
                Some(r) if r.runtime_status == "backoff" || r.runtime_status == "failed" => (
                    REASON_MODULE_BACKOFF.to_string(),
                    r.status_description.clone(),
                ),
                Some(r) => (format!("Module{}", capitalised(&r.runtime_status)), None),
                None => ("ContainerCreating".to_string(), None),
            };
            k8s::ContainerState {
                waiting: Some(k8s::ContainerStateWaiting {
                    reason: Some(reason),
                    message,
                }),
                ..Default::default()
            }
        };
        container_statuses.push(k8s::ContainerStatus {
            name: container.name.clone(),
            image: image.clone(),
            image_id: String::new(),
            container_id: Some(format!("{CONTAINER_ID_SCHEME}{}/{}", c.id, container.name)),
            ready: ready && running,
            started: Some(running),
            restart_count: i32::try_from(restarts).unwrap_or(i32::MAX),
            state: Some(state),
            ..Default::default()
        });
    }
    let not_ready_reason = match reason {
        Some(r) => r,
        None if !offline.is_empty() => REASON_DEVICES_OFFLINE,
        None => "DevicesNotReady",
    };
    let cond = |kind: &str, ok: bool| k8s::PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.into(),
        reason: (!ok).then(|| not_ready_reason.to_string()),
        message: Some(message.clone()),
        ..Default::default()
    };
    k8s::PodStatus {
        phase: Some(phase.to_string()),
        reason: reason.map(str::to_string),
        message: Some(message.clone()),
        conditions: Some(vec![
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ]),
        container_statuses: Some(container_statuses),
        ..Default::default()
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Unknown".to_string(),
    }
}

#[cfg(test)]
mod tests;
