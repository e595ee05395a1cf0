//! The act step: carry out the planner's [`Action`]s against the Kubernetes
//! API, each re-validated against the latest state of the object right
//! before the write (the plan may be seconds old; the pod may have moved,
//! been replaced under the same name, or be terminating).
//!
//! Writes are idempotent: placeholders have names derived from the burst
//! pod's UID (a second create is a 409, treated as done), deletes of missing
//! objects are done, evictions refused by a PodDisruptionBudget (429) are
//! reported as `Refused` and retried by a later pass.

use super::plan::{Action, DELETION_COST_ANNOTATION, EventReason, NUDGE_ANNOTATION, PodRef};
use crate::cluster::VIRTUAL_KUBELET_TAINT;
use crate::cluster::classify::{MANAGED_BY, MANAGED_BY_LABEL, PLACEHOLDER_FOR_LABEL};
use crate::cluster::constraints::{placement_k8s, pod_placement};
use crate::decision::Placement;
use crate::decision::placement::{Operator, Requirement};
use crate::units::Resources;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, NodeAffinity, ObjectReference, Pod, PodSecurityContext,
    PodSpec, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::BTreeMap;

/// How the act step writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ActConfig {
    /// Where placeholders live (spillway's own namespace).
    pub placeholder_namespace: String,
    pub placeholder_image: String,
    /// A PriorityClass below every workload, so any real pod preempts a placeholder.
    pub placeholder_priority_class: String,
    /// Node label that marks virtual nodes; placeholders must never land there.
    pub virtual_node_label: (String, String),
    /// Owner of every placeholder (spillway's Deployment), so uninstalling collects them.
    pub owner: Option<OwnerReference>,
    /// The name `node_name` must have for a pod to still count as a burst pod.
    pub virtual_node_names: Vec<String>,
    /// Decide and log, never write.
    pub dry_run: bool,
}

impl Default for ActConfig {
    fn default() -> Self {
        ActConfig {
            placeholder_namespace: "spillway-system".into(),
            placeholder_image: "registry.k8s.io/pause:3.10".into(),
            placeholder_priority_class: "spillway-placeholder".into(),
            virtual_node_label: ("type".into(), "virtual-kubelet".into()),
            owner: None,
            virtual_node_names: vec!["spillway-aci".into(), "virtual-node-aci-linux".into()],
            dry_run: false,
        }
    }
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Dry run: the write that would have happened.
    WouldDo,
    /// Re-validation found the action no longer applies.
    Skipped(&'static str),
    /// The API refused for a reason a later pass may not have (PDB, conflict).
    Refused(String),
}

impl Outcome {
    /// A label value for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::WouldDo => "dry_run",
            Outcome::Skipped(_) => "skipped",
            Outcome::Refused(_) => "refused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Deterministic placeholder name for a burst pod UID (FNV-1a, 64 bits).
pub fn placeholder_name(for_uid: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in for_uid.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("spillway-placeholder-{h:016x}")
}

/// The placeholder pod for a burst pod: its requests, and its placement
/// (nodeSelector, required node affinity, tolerations) so the cluster
/// autoscaler grows a pool the burst pod itself could use — minus the
/// virtual node: every affinity term also keeps it off nodes labelled
/// [`ActConfig::virtual_node_label`], and tolerations of the virtual node's
/// taint are left out.
pub fn placeholder_pod(
    cfg: &ActConfig,
    for_pod: &PodRef,
    for_uid: &str,
    requests: &Resources,
    placement: &Placement,
) -> Pod {
    let quantities = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(format!("{}m", requests.cpu_millis)),
        ),
        (
            "memory".to_string(),
            Quantity(requests.memory_bytes.to_string()),
        ),
    ]);
    let keep_off = Requirement {
        key: cfg.virtual_node_label.0.clone(),
        operator: Operator::NotIn,
        values: vec![cfg.virtual_node_label.1.clone()],
    };
    let (node_selector, required, tolerations) =
        placement_k8s(placement, &keep_off, |t| t.key == VIRTUAL_KUBELET_TAINT);
    Pod {
        metadata: ObjectMeta {
            name: Some(placeholder_name(for_uid)),
            namespace: Some(cfg.placeholder_namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (PLACEHOLDER_FOR_LABEL.to_string(), for_uid.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                "spillway.io/placeholder-for-pod".to_string(),
                format!("{}/{}", for_pod.namespace, for_pod.name),
            )])),
            owner_references: cfg.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            security_context: Some(restricted_security_context().0),
            priority_class_name: Some(cfg.placeholder_priority_class.clone()),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector,
            tolerations,
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(required),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "pause".into(),
                image: Some(cfg.placeholder_image.clone()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities.clone()),
                    limits: Some(quantities),
                    ..Default::default()
                }),
                security_context: Some(restricted_security_context().1),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// UID/GID 65535: `nobody` in most images, including the pause image.
const PLACEHOLDER_USER: i64 = 65535;

/// The pod- and container-level security contexts that Pod Security
/// `restricted` admits (spillway-system enforces it, see
/// deploy/base/namespace.yaml): a placeholder created without them is
/// refused with 403, so the cluster autoscaler never sees it and never grows
/// a pool for burst pods. The pause container needs no privilege at all.
pub fn restricted_security_context() -> (PodSecurityContext, SecurityContext) {
    let pod = PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(PLACEHOLDER_USER),
        run_as_group: Some(PLACEHOLDER_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    };
    let container = SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    };
    (pod, container)
}

/// Performs actions with one client.
pub struct Actor {
    client: kube::Client,
    recorder: Recorder,
    cfg: ActConfig,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Actor {
    pub fn new(client: kube::Client, cfg: ActConfig) -> Self {
        let reporter = Reporter {
            controller: "spillway".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Actor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cfg,
        }
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The pod as it is now, if it still exists.
    async fn fresh(&self, pod: &PodRef) -> Result<Option<Pod>, ActError> {
        Ok(self.pods(&pod.namespace).get_opt(&pod.name).await?)
    }

    fn on_virtual_node(&self, p: &Pod) -> bool {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| self.cfg.virtual_node_names.iter().any(|v| v == n))
    }

    /// Re-validate and carry out one action.
    pub async fn act(&self, action: &Action) -> Result<Outcome, ActError> {
        match action {
            Action::Nudge { pod, at } => {
                let Some(p) = self.fresh(pod).await? else {
                    return Ok(Outcome::Skipped("pod gone"));
                };
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    return Ok(Outcome::Skipped("already bound"));
                }
                if p.metadata.deletion_timestamp.is_some() {
                    return Ok(Outcome::Skipped("terminating"));
                }
                self.annotate(pod, NUDGE_ANNOTATION, &at.to_rfc3339()).await
            }
            Action::SetDeletionCost { pod, cost } => {
                let Some(p) = self.fresh(pod).await? else {
                    return Ok(Outcome::Skipped("pod gone"));
                };
                if !self.on_virtual_node(&p) || p.metadata.deletion_timestamp.is_some() {
                    return Ok(Outcome::Skipped("no longer a burst pod"));
                }
                self.annotate(pod, DELETION_COST_ANNOTATION, &cost.to_string())
                    .await
            }
            Action::Event {
                pod,
                reason,
                message,
            } => {
                let Some(p) = self.fresh(pod).await? else {
                    return Ok(Outcome::Skipped("pod gone"));
                };
                if self.cfg.dry_run {
                    return Ok(Outcome::WouldDo);
                }
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: p.metadata.namespace.clone(),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                    resource_version: p.metadata.resource_version.clone(),
                    ..Default::default()
                };
                let ev = Event {
                    type_: if matches!(
                        reason,
                        EventReason::BudgetExhausted | EventReason::PlaceholderFailed
                    ) {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.as_str().into(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "Scheduling".into(),
                    secondary: None,
                };
                self.recorder.publish(&ev, &reference).await?;
                Ok(Outcome::Done)
            }
            Action::CreatePlaceholder {
                for_pod,
                for_uid,
                requests,
            } => {
                let Some(p) = self.fresh(for_pod).await? else {
                    return Ok(Outcome::Skipped("burst pod gone"));
                };
                if p.metadata.uid.as_deref() != Some(for_uid)
                    || !self.on_virtual_node(&p)
                    || p.metadata.deletion_timestamp.is_some()
                {
                    return Ok(Outcome::Skipped("burst pod replaced or moved"));
                }
                if self.cfg.dry_run {
                    return Ok(Outcome::WouldDo);
                }
                // Placement from the pod as it is now (the plan may be old).
                let placement = pod_placement(&p);
                let pod = placeholder_pod(&self.cfg, for_pod, for_uid, requests, &placement);
                match self
                    .pods(&self.cfg.placeholder_namespace)
                    .create(&PostParams::default(), &pod)
                    .await
                {
                    Ok(_) => Ok(Outcome::Done),
                    Err(e) if is_status(&e, 409) => Ok(Outcome::Done),
                    Err(e) => Err(e.into()),
                }
            }
            Action::DeletePlaceholder { name } => {
                if self.cfg.dry_run {
                    return Ok(Outcome::WouldDo);
                }
                let api = self.pods(&self.cfg.placeholder_namespace);
                match api
                    .delete(name, &DeleteParams::default().grace_period(0))
                    .await
                {
                    Ok(_) => Ok(Outcome::Done),
                    Err(e) if is_status(&e, 404) => Ok(Outcome::Done),
                    Err(e) => Err(e.into()),
                }
            }
            Action::Evict {
                pod,
                uid,
                placeholder,
                message,
            } => {
                let Some(p) = self.fresh(pod).await? else {
                    return Ok(Outcome::Skipped("pod gone"));
                };
                if p.metadata.uid.as_deref() != Some(uid) {
                    return Ok(Outcome::Skipped("pod replaced"));
                }
                if !self.on_virtual_node(&p) || p.metadata.deletion_timestamp.is_some() {
                    return Ok(Outcome::Skipped("no longer a running burst pod"));
                }
                if self.cfg.dry_run {
                    return Ok(Outcome::WouldDo);
                }
                match self
                    .pods(&pod.namespace)
                    .evict(&pod.name, &EvictParams::default())
                    .await
                {
                    Ok(_) => {
                        if let Some(name) = placeholder {
                            self.act_boxed(&Action::DeletePlaceholder { name: name.clone() })
                                .await?;
                        }
                        let event = Action::Event {
                            pod: pod.clone(),
                            reason: EventReason::DrainedBack,
                            message: message.clone(),
                        };
                        // The pod may already be gone; the eviction is what counts.
                        if let Err(e) = self.act_boxed(&event).await {
                            tracing::warn!(error = %e, pod = %pod.name, "recording the DrainedBack event failed");
                        }
                        Ok(Outcome::Done)
                    }
                    Err(e) if is_status(&e, 429) => Ok(Outcome::Refused(
                        "a PodDisruptionBudget forbids it now".into(),
                    )),
                    Err(e) if is_status(&e, 404) => Ok(Outcome::Skipped("pod gone")),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    fn act_boxed<'a>(
        &'a self,
        action: &'a Action,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, ActError>> + Send + 'a>>
    {
        Box::pin(self.act(action))
    }

    async fn annotate(&self, pod: &PodRef, key: &str, value: &str) -> Result<Outcome, ActError> {
        if self.cfg.dry_run {
            return Ok(Outcome::WouldDo);
        }
        let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
        match self
            .pods(&pod.namespace)
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(Outcome::Done),
            Err(e) if is_status(&e, 404) => Ok(Outcome::Skipped("pod gone")),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_names_are_stable_valid_and_distinct() {
        let a = placeholder_name("0b9c6f1e-1c1d-4c4e-9a51-8d1f0f4d2b11");
        assert_eq!(a, placeholder_name("0b9c6f1e-1c1d-4c4e-9a51-8d1f0f4d2b11"));
        assert_ne!(a, placeholder_name("0b9c6f1e-1c1d-4c4e-9a51-8d1f0f4d2b12"));
        assert!(
            a.len() <= 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn placeholder_pods_cannot_land_on_the_virtual_node_and_match_requests() {
        let cfg = ActConfig::default();
        let p = placeholder_pod(
            &cfg,
            &PodRef {
                namespace: "web".into(),
                name: "front-1".into(),
            },
            "uid-1",
            &Resources::new(1500, 2 * 1024 * 1024 * 1024),
            &Placement::default(),
        );
        let spec = p
            .spec
            .as_ref()
            .map(|s| (s.priority_class_name.clone(), s.tolerations.clone()));
        assert_eq!(spec, Some((Some("spillway-placeholder".into()), None)));
        let json = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(
            json["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1500m"
        );
        assert_eq!(
            json["spec"]["containers"][0]["resources"]["requests"]["memory"],
            "2147483648"
        );
        let term = &json["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["operator"], "NotIn");
        assert_eq!(json["metadata"]["labels"][PLACEHOLDER_FOR_LABEL], "uid-1");
    }
}

#[cfg(test)]
mod placement_tests {
    use super::*;
    use crate::cluster::build::pod;
    use crate::decision::{NodeClass, placement::Taint, placement::TaintEffect};

    /// A placeholder goes where its burst pod could go on a VM, never to the
    /// virtual node: judged with the engine's own rules on the placeholder's
    /// Kubernetes form.
    #[test]
    fn placeholders_carry_the_burst_pods_placement_but_not_onto_the_virtual_node() {
        let burst = pod()
            .ns("web")
            .name("front-1")
            .node_selector("kubernetes.io/os", "linux")
            .require_node("agentpool", "In", &["nodepool1", "spot"])
            .tolerate_virtual()
            .toleration(k8s_openapi::api::core::v1::Toleration {
                key: Some("kubernetes.azure.com/scalesetpriority".into()),
                operator: Some("Equal".into()),
                value: Some("spot".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            })
            .build();
        let cfg = ActConfig::default();
        let ph = placeholder_pod(
            &cfg,
            &PodRef {
                namespace: "web".into(),
                name: "front-1".into(),
            },
            "uid-1",
            &Resources::new(500, 1 << 30),
            &pod_placement(&burst),
        );
        let placement = pod_placement(&ph);
        let node = |pool: &str, extra: &[(&str, &str)], taints: Vec<Taint>| {
            let mut labels: BTreeMap<String, String> = [
                ("agentpool".to_string(), pool.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ]
            .into();
            for (k, v) in extra {
                labels.insert(k.to_string(), v.to_string());
            }
            NodeClass::new(labels, taints)
        };
        let spot_taint = Taint {
            key: "kubernetes.azure.com/scalesetpriority".into(),
            value: "spot".into(),
            effect: TaintEffect::NoSchedule,
        };
        let virtual_taint = Taint {
            key: VIRTUAL_KUBELET_TAINT.into(),
            value: "azure".into(),
            effect: TaintEffect::NoSchedule,
        };
        assert!(placement.admits(&node("nodepool1", &[], vec![]), "n"));
        assert!(placement.admits(&node("spot", &[], vec![spot_taint]), "n"));
        assert!(!placement.admits(&node("gpu", &[], vec![]), "n"), "pool");
        assert!(
            !placement.admits(
                &node("nodepool1", &[("type", "virtual-kubelet")], vec![]),
                "n"
            ),
            "the virtual node's label"
        );
        assert!(
            !placement.admits(&node("nodepool1", &[], vec![virtual_taint]), "n"),
            "the virtual node's taint is no longer tolerated"
        );
    }
}
