//! What the view keeps of a pod bound to a node: a compact record instead of
//! a Kubernetes `Pod`.
//!
//! Almost every pod of a large cluster runs on a VM, and of those the view
//! needs only the node and the requests (burst pods on the virtual node a
//! little more: owner, labels, readiness, deletion cost). A `Pod` costs about
//! 4 KB in memory even slimmed (the struct alone is over 2 KB, each label or
//! request map another half), this record a few hundred bytes; at 50,000
//! pods that is the difference between 200 MB and 25 MB.
//!
//! The record is made once per watch event ([`BoundPod::from_pod`]), before
//! the view knows which nodes are virtual, so it keeps what a burst pod needs
//! for every bound pod. Placeholders stay whole pods (the autoscaler reads
//! them as such), and so do unbound pods (the engine reads their placement).

use super::classify::{BurstPod, DELETION_COST_ANNOTATION, Owner, is_placeholder};
use super::{is_terminal, pod_aci_size, pod_requests};
use crate::decision::AciSize;
use crate::units::{Resources, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

/// A pod bound to a node, as the view keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundPod {
    pub namespace: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub uid: Option<Box<str>>,
    pub node: Box<str>,
    /// Its requests with the overhead (`pod_requests`), or why they do not parse.
    pub requests: Result<Resources, Box<str>>,
    /// What its ACI container group requests (`pod_aci_size`; azure-aci's
    /// defaults when a quantity does not parse, as the group never existed).
    pub aci: AciSize,
    /// Phase Succeeded or Failed.
    pub terminal: bool,
    /// Being deleted.
    pub terminating: bool,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub owner: Option<Owner>,
    /// When `PodScheduled` became True, when known.
    pub scheduled_at: Option<Timestamp>,
    pub created: Option<Timestamp>,
    /// `Ready` is True.
    pub ready: bool,
    /// Its `pod-deletion-cost`, when set and a whole number.
    pub deletion_cost: Option<i64>,
}

/// Whether the view keeps `pod` as a [`BoundPod`]: bound to a node and not a
/// placeholder.
pub fn is_compactable(pod: &Pod) -> bool {
    super::is_bound(pod) && !is_placeholder(pod)
}

pub(super) fn controller(pod: &Pod) -> Option<Owner> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
}

/// `Some(transition time)` when condition `kind` is True.
pub(super) fn condition_true_since(pod: &Pod, kind: &str) -> Option<Option<Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| Timestamp::from_millis(t.0.as_millisecond())),
    )
}

impl BoundPod {
    /// The record of `pod` (meant for pods [`is_compactable`] says yes to).
    pub fn from_pod(pod: &Pod) -> BoundPod {
        let m = &pod.metadata;
        BoundPod {
            namespace: m.namespace.as_deref().map(Into::into),
            name: m.name.as_deref().map(Into::into),
            uid: m.uid.as_deref().map(Into::into),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default()
                .into(),
            requests: pod_requests(pod).map_err(|e| e.to_string().into()),
            aci: pod_aci_size(pod).unwrap_or_else(|_| AciSize::of_requests(&Resources::default())),
            terminal: is_terminal(pod),
            terminating: m.deletion_timestamp.is_some(),
            labels: m
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            owner: controller(pod),
            scheduled_at: condition_true_since(pod, "PodScheduled").flatten(),
            created: m
                .creation_timestamp
                .as_ref()
                .map(|t| Timestamp::from_millis(t.0.as_millisecond())),
            ready: condition_true_since(pod, "Ready").is_some(),
            deletion_cost: m
                .annotations
                .as_ref()
                .and_then(|a| a.get(DELETION_COST_ANNOTATION))
                .and_then(|v| v.trim().parse().ok()),
        }
    }

    /// The key of its burst reservation (see `extender::reservations::reservation_key`).
    pub fn reservation_key(&self) -> String {
        match self.uid.as_deref().filter(|u| !u.is_empty()) {
            Some(uid) => uid.to_string(),
            None => format!(
                "{}.{}",
                self.namespace.as_deref().unwrap_or_default(),
                self.name.as_deref().unwrap_or_default()
            ),
        }
    }

    /// Its labels as a map.
    pub fn labels_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Its namespace (empty when it has none).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    /// The pod as a burst pod on the virtual node, unless it lacks a
    /// namespace, name or uid.
    pub fn burst_pod(&self, requests: Resources, now: Timestamp) -> Option<BurstPod> {
        Some(BurstPod {
            namespace: self.namespace.as_deref()?.to_string(),
            name: self.name.as_deref()?.to_string(),
            uid: self.uid.as_deref()?.to_string(),
            labels: self.labels_map(),
            requests,
            owner: self.owner.clone(),
            bound_at: self.scheduled_at.or(self.created).unwrap_or(now),
            ready: self.ready,
            terminating: self.terminating,
            deletion_cost: self.deletion_cost,
            pdb_blocked: false,
        })
    }
}
