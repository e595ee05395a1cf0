//! Status mapping tests: deployments and twins as the hub returns them.

use super::*;
use crate::edge::model::metric;
use serde_json::json;

const ID: &str = "edge-a-iot-sensor-0123456789abcdef";

fn pod(annotations: &[(&str, &str)]) -> k8s::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "sensor-x", "namespace": "iot", "uid": "u1",
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "spec": {"containers": [{"name": "sensor", "image": "sensor:1.0"}]}
    }))
    .expect("pod")
}

fn deployment(targeted: i64, applied: i64, ok: i64, failed: i64) -> Configuration {
    let mut c: Configuration = serde_json::from_value(json!({
        "id": ID,
        "content": {"modulesContent": {"$edgeAgent": {
            "properties.desired.modules.sensor": {"type": "docker", "settings": {"image": "sensor:1.0"}}
        }}},
        "targetCondition": "tags.site='munich'",
        "priority": 101
    }))
    .expect("configuration");
    for (k, v) in [
        (metric::TARGETED, targeted),
        (metric::APPLIED, applied),
        (metric::REPORTED_SUCCESSFUL, ok),
        (metric::REPORTED_FAILED, failed),
    ] {
        c.system_metrics.results.insert(k.to_string(), v);
    }
    c
}

/// A device's `$edgeAgent` twin: desired version 3, reported `version`.
fn twin(device: &str, version: i64, code: i64, module: Value) -> ModuleTwin {
    serde_json::from_value(json!({
        "deviceId": device, "moduleId": "$edgeAgent",
        "properties": {
            "desired": {"$version": 3},
            "reported": {"lastDesiredVersion": version,
                "lastDesiredStatus": {"code": code, "description": match code {
                    200 => "",
                    406 => "The device is offline or not sending status reports.",
                    _ => "Failed to start modules: sensor (sensor:1.0)",
                }},
                "modules": {"sensor": module}}
        },
        "configurations": {ID: {"status": "Applied"}}
    }))
    .expect("twin")
}

fn running() -> Value {
    json!({"runtimeStatus": "running", "exitCode": 0, "restartCount": 0, "settings": {"image": "sensor:1.0"}})
}

fn backoff(restarts: i64) -> Value {
    json!({"runtimeStatus": "backoff", "exitCode": 1, "restartCount": restarts,
        "statusDescription": "Error pulling image sensor:1.0: manifest unknown",
        "settings": {"image": "sensor:1.0"}})
}

fn ready(s: &k8s::PodStatus) -> bool {
    s.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[test]
fn nothing_targeted_is_pending_with_a_reason() {
    let s = pod_status(
        &pod(&[]),
        &DeploymentState {
            configuration: deployment(0, 0, 0, 0),
            twins: vec![],
        },
    );
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(s.reason.as_deref(), Some(REASON_NO_TARGET_DEVICES));
    assert!(!ready(&s));
    let waiting = s.container_statuses.as_ref().expect("statuses")[0]
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    assert_eq!(waiting.as_deref(), Some("ContainerCreating"));
}

#[test]
fn all_devices_running_is_running_and_ready_with_counts() {
    let state = DeploymentState {
        configuration: deployment(3, 3, 3, 0),
        twins: vec![
            twin("m1", 3, 200, running()),
            twin("m2", 3, 200, running()),
            twin("m3", 3, 200, running()),
        ],
    };
    let s = pod_status(&pod(&[]), &state);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert!(ready(&s));
    assert_eq!(
        s.message.as_deref(),
        Some("targeted=3 applied=3 ok=3 failed=0")
    );
    let c = &s.container_statuses.as_ref().expect("statuses")[0];
    assert!(c.ready);
    assert_eq!(c.image, "sensor:1.0");
    assert_eq!(
        c.container_id.as_deref(),
        Some(&*format!("iotedge://{ID}/sensor"))
    );
}

#[test]
fn a_failing_device_keeps_the_pod_unready_and_shows_why() {
    let state = DeploymentState {
        configuration: deployment(3, 3, 2, 1),
        twins: vec![
            twin("m1", 3, 200, running()),
            twin("m2", 3, 200, running()),
            twin("m3", 3, 500, backoff(4)),
        ],
    };
    let s = pod_status(&pod(&[]), &state);
    assert_eq!(s.phase.as_deref(), Some("Running"), "runs somewhere");
    assert!(!ready(&s), "2 of 3 applied devices succeed");
    assert_eq!(
        s.message.as_deref(),
        Some("targeted=3 applied=3 ok=2 failed=1")
    );
    let c = &s.container_statuses.as_ref().expect("statuses")[0];
    assert_eq!(c.restart_count, 4, "the most restarts any device reports");
    // min-ready lowers the bar.
    let s = pod_status(&pod(&[(MIN_READY_ANNOTATION, "2")]), &state);
    assert!(ready(&s));
}

#[test]
fn a_failing_image_everywhere_is_pending_with_the_modules_status() {
    let state = DeploymentState {
        configuration: deployment(2, 2, 0, 2),
        twins: vec![
            twin("m1", 3, 500, backoff(2)),
            twin("m2", 3, 500, backoff(7)),
        ],
    };
    let s = pod_status(&pod(&[]), &state);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(s.reason.as_deref(), Some(REASON_ROLLING_OUT));
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("m1 reports 500")),
        "{:?}",
        s.message
    );
    let c = &s.container_statuses.as_ref().expect("statuses")[0];
    let waiting = c
        .state
        .as_ref()
        .and_then(|st| st.waiting.clone())
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some(REASON_MODULE_BACKOFF));
    assert!(
        waiting
            .message
            .is_some_and(|m| m.contains("manifest unknown"))
    );
    assert_eq!(c.restart_count, 7);
    assert!(!c.ready);
}

#[test]
fn offline_devices_are_counted_and_stale_reports_do_not_count() {
    let state = DeploymentState {
        configuration: deployment(3, 3, 1, 1),
        twins: vec![
            twin("m1", 3, 200, running()),
            // Reported an older desired version: not this deployment yet.
            twin("m2", 2, 200, running()),
            twin("m3", 3, 406, running()),
        ],
    };
    let s = pod_status(&pod(&[]), &state);
    assert_eq!(
        s.message.as_deref(),
        Some(
            "targeted=3 applied=3 ok=1 failed=1 offline=1: m3 reports 406 The device is offline or not sending status reports."
        )
    );
    assert!(!ready(&s));
    let reason = |s: &k8s::PodStatus| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.reason.clone())
    };
    assert_eq!(reason(&s).as_deref(), Some(REASON_DEVICES_OFFLINE));
    // min-ready still met: Ready, and the offline device is still counted.
    let s = pod_status(&pod(&[(MIN_READY_ANNOTATION, "1")]), &state);
    assert!(ready(&s));
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("offline=1"))
    );
    let stale_only = DeploymentState {
        configuration: deployment(1, 1, 0, 0),
        twins: vec![twin("m2", 2, 200, running())],
    };
    let s = pod_status(&pod(&[]), &stale_only);
    assert_eq!(
        s.phase.as_deref(),
        Some("Pending"),
        "no device at the desired version"
    );
}

#[test]
fn modules_of_the_deployment_are_read_from_its_content() {
    let c = deployment(0, 0, 0, 0);
    assert_eq!(
        desired_modules(&c),
        BTreeMap::from([("sensor".to_string(), "sensor:1.0".to_string())])
    );
}
