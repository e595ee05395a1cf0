//! Pure decisions of the pod lifecycle: for one pod bound to the virtual
//! node and what the last ACI list said about its group, what to do next;
//! and the pod status to report, compared without timestamps so unchanged
//! states cause no writes.
//!
//! No I/O and no clock: `now` and the facts are handed in (`mod.rs` acts).
//!
//! Backend-neutral: the `*_for` / `*_of` forms take any
//! [`Instance`]; the short forms (`decide`, `ownership`, `had_group`, …) are
//! the same decisions for ACI's [`ContainerGroup`].

use super::backend::Instance;
use crate::aci::ContainerGroup;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Pod status reason: the provider cannot run this pod (translation,
/// a non-retryable ACI answer, a group name taken by another pod).
pub const REASON_PROVIDER_FAILED: &str = "ProviderFailed";
/// Pod status reason: the pod's group disappeared outside spillway.
pub const REASON_GROUP_VANISHED: &str = "ContainerGroupVanished";
/// Pod status reason (Pending): a ConfigMap/Secret the pod needs is missing.
pub const REASON_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// Pod status reason (Pending): ACI refused for now; retried.
pub const REASON_RETRYING: &str = "ProviderRetrying";

/// Pod annotation written once the pod's group has been created, with the
/// value [`group_marker`] (`<group name>/<pod uid>`; the uid keeps a pod
/// made from a copied manifest from inheriting it). It makes "this pod had
/// a group" durable across restarts before the first status write shows
/// `aci://` container ids: a marked pod whose group is missing is failed as
/// vanished, never given a second group.
pub const GROUP_ANNOTATION: &str = crate::aci::backend::GROUP_ANNOTATION;

/// The value of [`GROUP_ANNOTATION`] for a pod.
pub fn group_marker(namespace: &str, name: &str, uid: &str) -> String {
    instance_marker::<ContainerGroup>(namespace, name, uid)
}

/// The value of an instance kind's marker annotation for a pod:
/// `<instance name>/<pod uid>`.
pub fn instance_marker<I: Instance>(namespace: &str, name: &str, uid: &str) -> String {
    format!("{}/{uid}", (I::KIND.instance_name)(namespace, name))
}

/// How a group found under a pod's name relates to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Tags name this pod, this uid.
    Ours,
    /// Same namespace/name, older uid: a previous pod of the same name.
    Stale,
    /// Tags name another pod (the names collided).
    Foreign,
}

/// Whose group `group` is, from its tags (the name alone can collide).
pub fn ownership(group: &ContainerGroup, namespace: &str, name: &str, uid: &str) -> Ownership {
    ownership_of(group, namespace, name, uid)
}

/// Whose instance it is, from the owner it records.
pub fn ownership_of<I: Instance>(
    instance: &I,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Ownership {
    let owner = instance.owner();
    if owner.namespace.as_deref() != Some(namespace) || owner.name.as_deref() != Some(name) {
        Ownership::Foreign
    } else if owner.uid.as_deref() == Some(uid) {
        Ownership::Ours
    } else {
        Ownership::Stale
    }
}

/// What the sync pass does for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    Nothing,
    /// No group yet: resolve, translate and create it.
    Create,
    /// The pod is being deleted: remove the group (when ours), then the pod.
    Delete {
        delete_group: bool,
    },
    /// A group of an older pod with the same name is in the way; remove it
    /// (the next pass creates ours).
    DeleteStaleGroup,
    /// Write this status (it differs from the pod's).
    Patch(Box<k8s::PodStatus>),
    /// The pod cannot run or lost its group: mark it Failed.
    Fail {
        reason: String,
        message: String,
    },
}

/// Facts about a pod beyond the pod object and its listed group.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodFacts {
    /// This process created the group before the list it is compared with
    /// began (so its absence from the list means it is gone).
    pub created_before_list: bool,
    /// This process created the group after the list it is compared with
    /// began: the list says nothing about it (its absence is not a
    /// vanishing, a stale group there may already be replaced). Only a
    /// deletion acts on it, removing the group (re-read before deleting).
    pub created_after_list: bool,
    /// A create, delete or status write for it is in flight.
    pub busy: bool,
}

fn is_terminal(pod: &k8s::Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod had an ACI group: it carries this pod's
/// [`GROUP_ANNOTATION`], or its status shows `aci://…` container ids (only
/// ever written from a group read back).
pub fn had_group(pod: &k8s::Pod) -> bool {
    had_instance::<ContainerGroup>(pod)
}

/// Whether the pod had an instance of kind `I`: it carries this pod's
/// marker annotation, or its status shows container ids of `I`'s scheme.
pub fn had_instance<I: Instance>(pod: &k8s::Pod) -> bool {
    let m = &pod.metadata;
    let marked = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(I::KIND.marker_annotation))
        .is_some_and(|v| {
            *v == instance_marker::<I>(
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or_default(),
                m.uid.as_deref().unwrap_or_default(),
            )
        });
    marked
        || pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.container_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with(I::KIND.container_id_scheme))
                })
            })
}

/// Decide for one pod. `group` is the group listed under the pod's group name.
pub fn decide(
    pod: &k8s::Pod,
    group: Option<&ContainerGroup>,
    facts: PodFacts,
    host_ip: &str,
    now: &Time,
) -> PodAction {
    let m = &pod.metadata;
    let instance = crate::aci::translate::group_name(
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
    );
    decide_for(pod, &instance, group, facts, host_ip, now)
}

/// Decide for one pod of any backend. `group` is the instance listed under
/// the pod's instance name `instance` (the backend's name for it).
pub fn decide_for<I: Instance>(
    pod: &k8s::Pod,
    instance: &str,
    group: Option<&I>,
    facts: PodFacts,
    host_ip: &str,
    now: &Time,
) -> PodAction {
    if facts.busy {
        return PodAction::Nothing;
    }
    let m = &pod.metadata;
    let namespace = m.namespace.as_deref().unwrap_or("default");
    let name = m.name.as_deref().unwrap_or_default();
    let uid = m.uid.as_deref().unwrap_or_default();
    let owner = group.map(|g| ownership_of(g, namespace, name, uid));
    if m.deletion_timestamp.is_some() {
        return PodAction::Delete {
            delete_group: owner == Some(Ownership::Ours) || facts.created_after_list,
        };
    }
    if facts.created_after_list {
        return PodAction::Nothing;
    }
    match (group, owner) {
        (Some(g), Some(Ownership::Ours)) => {
            let desired = desired_status_for(pod, g, host_ip, now);
            if status_differs(pod.status.as_ref(), &desired) {
                PodAction::Patch(Box::new(desired))
            } else {
                PodAction::Nothing
            }
        }
        (Some(_), Some(Ownership::Stale)) => PodAction::DeleteStaleGroup,
        (Some(g), _) => {
            if is_terminal(pod) {
                return PodAction::Nothing;
            }
            let owner = g.owner();
            PodAction::Fail {
                reason: REASON_PROVIDER_FAILED.into(),
                message: format!(
                    "NameCollision: {} {} belongs to pod {}/{}",
                    I::KIND.noun,
                    g.name(),
                    owner.namespace.unwrap_or_default(),
                    owner.name.unwrap_or_default()
                ),
            }
        }
        (None, _) => {
            if is_terminal(pod) {
                PodAction::Nothing
            } else if had_instance::<I>(pod) || facts.created_before_list {
                PodAction::Fail {
                    reason: REASON_GROUP_VANISHED.into(),
                    message: format!(
                        "{} {} {instance} was deleted outside spillway",
                        I::KIND.system,
                        I::KIND.noun,
                    ),
                }
            } else {
                PodAction::Create
            }
        }
    }
}

/// The status to report for a pod whose group is `group`: the translation's
/// mapping plus hostIP, a start time (kept once set) and condition
/// transition times carried over from the pod's current status.
pub fn desired_status(
    pod: &k8s::Pod,
    group: &ContainerGroup,
    host_ip: &str,
    now: &Time,
) -> k8s::PodStatus {
    desired_status_for(pod, group, host_ip, now)
}

/// [`desired_status`] for an instance of any backend.
pub fn desired_status_for<I: Instance>(
    pod: &k8s::Pod,
    group: &I,
    host_ip: &str,
    now: &Time,
) -> k8s::PodStatus {
    let current = pod.status.as_ref();
    let mut s = group.pod_status();
    s.host_ip = Some(host_ip.to_string());
    s.host_ips = Some(vec![k8s::HostIP {
        ip: host_ip.to_string(),
    }]);
    s.start_time = current
        .and_then(|c| c.start_time.clone())
        .or(s.start_time)
        .or_else(|| Some(now.clone()));
    s.qos_class = current.and_then(|c| c.qos_class.clone());
    stamp_conditions(current, &mut s, now);
    s
}

/// A status for a pod that will not get a group (phase Failed) or is
/// waiting to be retried (phase Pending), with a readable reason.
pub fn problem_status(
    pod: &k8s::Pod,
    phase: &str,
    reason: &str,
    message: &str,
    host_ip: &str,
    now: &Time,
) -> k8s::PodStatus {
    let current = pod.status.as_ref();
    let cond = |kind: &str, ok: bool, reason: Option<&str>| k8s::PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_string),
        message: (!ok).then(|| message.to_string()),
        ..Default::default()
    };
    let waiting_reason = if phase == "Failed" {
        "PodCompleted"
    } else {
        reason
    };
    let mut s = k8s::PodStatus {
        phase: Some(phase.to_string()),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![k8s::HostIP {
            ip: host_ip.to_string(),
        }]),
        start_time: current
            .and_then(|c| c.start_time.clone())
            .or_else(|| Some(now.clone())),
        conditions: Some(vec![
            cond("PodScheduled", true, None),
            cond("Initialized", phase != "Pending", Some(waiting_reason)),
            cond("ContainersReady", false, Some(waiting_reason)),
            cond("Ready", false, Some(waiting_reason)),
        ]),
        container_statuses: current.and_then(|c| c.container_statuses.clone()),
        qos_class: current.and_then(|c| c.qos_class.clone()),
        ..Default::default()
    };
    stamp_conditions(current, &mut s, now);
    s
}

/// Conditions keep their `lastTransitionTime` while their status holds and
/// get `now` when it changes.
fn stamp_conditions(current: Option<&k8s::PodStatus>, desired: &mut k8s::PodStatus, now: &Time) {
    for c in desired.conditions.iter_mut().flatten() {
        let old = current
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
            })
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = old.or_else(|| Some(now.clone()));
    }
}

/// Whether writing `desired` would change what `current` says, ignoring
/// condition timestamps.
pub fn status_differs(current: Option<&k8s::PodStatus>, desired: &k8s::PodStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    let conds = |s: &k8s::PodStatus| -> Vec<(String, String, Option<String>, Option<String>)> {
        s.conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    current.phase != desired.phase
        || current.reason != desired.reason
        || current.message != desired.message
        || current.pod_ip != desired.pod_ip
        || current.pod_ips != desired.pod_ips
        || current.host_ip != desired.host_ip
        || current.start_time != desired.start_time
        || current.container_statuses != desired.container_statuses
        || current.init_container_statuses != desired.init_container_statuses
        || conds(current) != conds(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::{
        Container, ContainerGroupProperties, ContainerProperties, GroupInstanceView, IpAddress,
        TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME, TAG_POD_UID,
    };
    use serde_json::json;
    use std::collections::BTreeMap;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("valid"))
    }

    fn pod() -> k8s::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "web", "uid": "u1"},
            "spec": {"nodeName": "spillway-aci", "containers": [{"name": "app", "image": "nginx"}]},
            "status": {"phase": "Pending"}
        }))
        .expect("pod")
    }

    fn group(uid: &str, state: &str) -> ContainerGroup {
        let mut g = ContainerGroup {
            name: "web-p".into(),
            location: "westeurope".into(),
            tags: BTreeMap::from([
                (TAG_CLUSTER.to_string(), "c1".to_string()),
                (TAG_NAMESPACE.to_string(), "web".to_string()),
                (TAG_POD_NAME.to_string(), "p".to_string()),
                (TAG_POD_UID.to_string(), uid.to_string()),
            ]),
            properties: ContainerGroupProperties::default(),
            ..Default::default()
        };
        g.properties.containers = vec![Container {
            name: "app".into(),
            properties: ContainerProperties {
                image: "nginx".into(),
                ..Default::default()
            },
        }];
        g.properties.provisioning_state = Some("Succeeded".into());
        g.properties.instance_view = Some(GroupInstanceView {
            state: Some(state.into()),
            ..Default::default()
        });
        g.properties.ip_address = Some(IpAddress {
            ip: Some("20.0.0.9".into()),
            ..Default::default()
        });
        g
    }

    #[test]
    fn new_pod_without_group_is_created() {
        let a = decide(&pod(), None, PodFacts::default(), "10.0.0.1", &now());
        assert_eq!(a, PodAction::Create);
        let busy = PodFacts {
            busy: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&pod(), None, busy, "10.0.0.1", &now()),
            PodAction::Nothing
        );
    }

    #[test]
    fn running_group_patches_status_once() {
        let g = group("u1", "Running");
        let PodAction::Patch(status) =
            decide(&pod(), Some(&g), PodFacts::default(), "10.0.0.1", &now())
        else {
            panic!("expected a patch");
        };
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("20.0.0.9"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.1"));
        assert!(status.start_time.is_some());
        let mut p = pod();
        p.status = Some(*status);
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_500).expect("valid"));
        assert_eq!(
            decide(&p, Some(&g), PodFacts::default(), "10.0.0.1", &later),
            PodAction::Nothing,
            "same state, later clock: no write"
        );
    }

    #[test]
    fn groups_are_adopted_only_by_tags() {
        let stale = group("u0", "Running");
        assert_eq!(
            decide(&pod(), Some(&stale), PodFacts::default(), "h", &now()),
            PodAction::DeleteStaleGroup
        );
        let mut foreign = group("u9", "Running");
        foreign.tags.insert(TAG_NAMESPACE.into(), "web-p".into());
        assert!(matches!(
            decide(&pod(), Some(&foreign), PodFacts::default(), "h", &now()),
            PodAction::Fail { ref reason, .. } if reason == REASON_PROVIDER_FAILED
        ));
    }

    #[test]
    fn vanished_group_fails_the_pod() {
        let g = group("u1", "Running");
        let mut p = pod();
        p.status = Some(desired_status(&p, &g, "h", &now()));
        assert!(had_group(&p));
        assert!(matches!(
            decide(&p, None, PodFacts::default(), "h", &now()),
            PodAction::Fail { ref reason, .. } if reason == REASON_GROUP_VANISHED
        ));
        let created = PodFacts {
            created_before_list: true,
            ..Default::default()
        };
        assert!(matches!(
            decide(&pod(), None, created, "h", &now()),
            PodAction::Fail { .. }
        ));
        // A failed pod stays failed: no new group.
        let mut failed = pod();
        failed.status = Some(problem_status(
            &failed,
            "Failed",
            REASON_PROVIDER_FAILED,
            "x",
            "h",
            &now(),
        ));
        assert_eq!(
            decide(&failed, None, PodFacts::default(), "h", &now()),
            PodAction::Nothing
        );
    }

    #[test]
    fn the_creation_marker_makes_a_missing_group_vanished_not_new() {
        let mark = |p: &mut k8s::Pod, value: String| {
            p.metadata.annotations = Some(BTreeMap::from([(GROUP_ANNOTATION.to_string(), value)]));
        };
        // Marked, no status written yet, group gone (e.g. after a restart).
        let mut p = pod();
        mark(&mut p, group_marker("web", "p", "u1"));
        assert_eq!(
            p.metadata
                .annotations
                .as_ref()
                .map(|a| a[GROUP_ANNOTATION].as_str()),
            Some("web-p/u1")
        );
        assert!(had_group(&p));
        assert!(matches!(
            decide(&p, None, PodFacts::default(), "h", &now()),
            PodAction::Fail { ref reason, .. } if reason == REASON_GROUP_VANISHED
        ));
        // The marker of another pod of that name (a copied manifest): created.
        let mut copied = pod();
        mark(&mut copied, group_marker("web", "p", "u0"));
        assert!(!had_group(&copied));
        assert_eq!(
            decide(&copied, None, PodFacts::default(), "h", &now()),
            PodAction::Create
        );
        // Marked and its group listed: status as usual.
        assert!(matches!(
            decide(
                &p,
                Some(&group("u1", "Running")),
                PodFacts::default(),
                "h",
                &now()
            ),
            PodAction::Patch(_)
        ));
    }

    #[test]
    fn a_group_created_after_the_list_began_is_judged_only_on_deletion() {
        let after = PodFacts {
            created_after_list: true,
            ..Default::default()
        };
        let mut marked = pod();
        marked.metadata.annotations = Some(BTreeMap::from([(
            GROUP_ANNOTATION.to_string(),
            group_marker("web", "p", "u1"),
        )]));
        // Missing from an older list: not vanished, not to be created again.
        assert_eq!(
            decide(&marked, None, after, "h", &now()),
            PodAction::Nothing
        );
        // An older pod's group in that list may already be replaced by ours.
        assert_eq!(
            decide(&pod(), Some(&group("u0", "Running")), after, "h", &now()),
            PodAction::Nothing
        );
        // Deleted meanwhile: its group goes too, though no list shows it yet.
        let mut deleting = marked.clone();
        deleting.metadata.deletion_timestamp = Some(now());
        assert_eq!(
            decide(&deleting, None, after, "h", &now()),
            PodAction::Delete { delete_group: true }
        );
    }

    #[test]
    fn deleting_pod_removes_only_its_own_group() {
        let mut p = pod();
        p.metadata.deletion_timestamp = Some(now());
        assert_eq!(
            decide(
                &p,
                Some(&group("u1", "Running")),
                PodFacts::default(),
                "h",
                &now()
            ),
            PodAction::Delete { delete_group: true }
        );
        assert_eq!(
            decide(
                &p,
                Some(&group("u0", "Running")),
                PodFacts::default(),
                "h",
                &now()
            ),
            PodAction::Delete {
                delete_group: false
            }
        );
        assert_eq!(
            decide(&p, None, PodFacts::default(), "h", &now()),
            PodAction::Delete {
                delete_group: false
            }
        );
    }

    #[test]
    fn problem_status_is_readable_and_stable() {
        let s = problem_status(
            &pod(),
            "Failed",
            REASON_PROVIDER_FAILED,
            "InvalidSpec: hostPath",
            "h",
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some(REASON_PROVIDER_FAILED));
        let mut p = pod();
        p.status = Some(s.clone());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_900).expect("valid"));
        let again = problem_status(
            &p,
            "Failed",
            REASON_PROVIDER_FAILED,
            "InvalidSpec: hostPath",
            "h",
            &later,
        );
        assert!(!status_differs(p.status.as_ref(), &again));
        assert_eq!(
            again.conditions, s.conditions,
            "transition times carried over"
        );
    }
}
