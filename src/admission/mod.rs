//! The mutating admission webhook served by `spillway run`: at pod CREATE it
//! sets `schedulerName: spillway-scheduler` on pods that spillway manages
//! (a BurstPolicy, or the cluster default, covers them) and that could reach
//! the virtual node (they tolerate its taint, blanket `operator: Exists`
//! included, or select it by `nodeSelector` / required node affinity). So
//! an existing virtual-node manifest is decided by spillway unchanged.
//!
//! It owns the AdmissionReview `admission.k8s.io/v1` wire format ([`review`])
//! and the pure rule ([`decide`]); the serving certificate and publishing
//! its CA live in [`tls`]. It never refuses a pod: every answer is
//! `allowed: true`, with or without a patch (the configuration's
//! `failurePolicy: Ignore` already lets pods through when spillway is down;
//! a webhook that refused would be a new way to block pod creation). It
//! never calls the API server while answering: namespace labels come from a
//! watch ([`namespaces`]).

pub mod namespaces;
pub mod pin;
pub mod review;
pub mod tls;

use crate::cluster::{self, VirtualNodeMatcher};
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The opt-out label, on a pod or its namespace: `spillway.io/skip: "true"`.
pub const SKIP_LABEL: &str = "spillway.io/skip";
/// The scheduler name API defaulting gives a pod that names none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// The scheduler the webhook hands pods to by default.
pub const SPILLWAY_SCHEDULER: &str = "spillway-scheduler";
/// Static pods' mirrors carry this annotation; the kubelet owns them.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The URL path the MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate-pods";
/// AdmissionReview bodies are capped by the API server's request size (3 MiB)
/// plus the review's own fields; a little more is accepted, never unbounded.
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;

/// Why a pod was left as it is. `as_str` is the metric label
/// (`skipped-<reason>`) and the log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a CREATE of a core/v1 pod (the configuration sends only those;
    /// anything else is answered, unchanged).
    NotPodCreate,
    /// `spillway.io/skip: "true"` on the pod.
    OptedOut,
    /// `spillway.io/skip: "true"` on the pod's namespace.
    NamespaceOptedOut,
    /// kube-system or spillway's own namespace.
    SystemNamespace,
    /// Owned by a DaemonSet: its pods are placed per node by design.
    DaemonSet,
    /// A static pod's mirror (`kubernetes.io/config.mirror`).
    MirrorPod,
    /// A scheduler other than the default is named (spillway's included).
    OtherScheduler,
    /// Neither tolerates nor selects the virtual node.
    NoVirtualNodeAccess,
    /// No BurstPolicy (or cluster default) covers the pod.
    NoPolicy,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotPodCreate => "skipped-not-pod-create",
            Skip::OptedOut => "skipped-opt-out",
            Skip::NamespaceOptedOut => "skipped-namespace-opt-out",
            Skip::SystemNamespace => "skipped-system-namespace",
            Skip::DaemonSet => "skipped-daemonset",
            Skip::MirrorPod => "skipped-mirror-pod",
            Skip::OtherScheduler => "skipped-other-scheduler",
            Skip::NoVirtualNodeAccess => "skipped-no-virtual-node-access",
            Skip::NoPolicy => "skipped-no-policy",
        }
    }

    pub const ALL: [Skip; 9] = [
        Skip::NotPodCreate,
        Skip::OptedOut,
        Skip::NamespaceOptedOut,
        Skip::SystemNamespace,
        Skip::DaemonSet,
        Skip::MirrorPod,
        Skip::OtherScheduler,
        Skip::NoVirtualNodeAccess,
        Skip::NoPolicy,
    ];
}

/// What the webhook does with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Set `spec.schedulerName` to this.
    SetScheduler(String),
    Skip(Skip),
}

/// Settings of the rule.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// The scheduler name given to pods (`--webhook-scheduler-name`).
    pub scheduler_name: String,
    /// How the virtual node is recognised (its labels, e.g. `type=virtual-kubelet`).
    pub virtual_nodes: VirtualNodeMatcher,
    /// Namespaces never touched: kube-system and spillway's own.
    pub system_namespaces: Vec<String>,
    /// What happens to pods pinned to the virtual node ([`pin`]).
    pub pin_mode: pin::PinMode,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            scheduler_name: SPILLWAY_SCHEDULER.into(),
            virtual_nodes: VirtualNodeMatcher::default(),
            system_namespaces: vec!["kube-system".into(), "spillway-system".into()],
            pin_mode: pin::PinMode::Relax,
        }
    }
}

fn skip_label(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(SKIP_LABEL))
        .is_some_and(|v| v == "true")
}

/// Whether the pod asks for the virtual node by label: a `nodeSelector`
/// entry, or a required node-affinity term with `In` (or `Exists` on the
/// key), naming one of the virtual node's labels (`type: virtual-kubelet`).
pub fn selects_virtual(pod: &Pod, matcher: &VirtualNodeMatcher) -> bool {
    !pin::selector_pins(pod, matcher).is_empty()
        || pin::required_terms(pod)
            .iter()
            .any(|t| pin::term_pins(t, matcher))
}

/// The rule, as a pure function of the pod, its namespace's labels (None:
/// not known to this replica; the API server's namespaceSelector has already
/// excluded opted-out namespaces) and the policies in force.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    policies: &PolicySet,
    config: &AdmissionConfig,
) -> Verdict {
    if config.system_namespaces.iter().any(|n| n == namespace) {
        return Verdict::Skip(Skip::SystemNamespace);
    }
    if skip_label(pod.metadata.labels.as_ref()) {
        return Verdict::Skip(Skip::OptedOut);
    }
    if skip_label(namespace_labels) {
        return Verdict::Skip(Skip::NamespaceOptedOut);
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Verdict::Skip(Skip::MirrorPod);
    }
    if pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
    {
        return Verdict::Skip(Skip::DaemonSet);
    }
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("");
    if !(scheduler.is_empty() || scheduler == DEFAULT_SCHEDULER) {
        return Verdict::Skip(Skip::OtherScheduler);
    }
    if !(cluster::tolerates_virtual(pod) || selects_virtual(pod, &config.virtual_nodes)) {
        return Verdict::Skip(Skip::NoVirtualNodeAccess);
    }
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    if policies.for_pod(namespace, labels).is_none() {
        return Verdict::Skip(Skip::NoPolicy);
    }
    Verdict::SetScheduler(config.scheduler_name.clone())
}

/// Where the webhook reads policies and namespace labels. Cheap to clone.
#[derive(Clone)]
pub struct WebhookState {
    pub policies: crate::extender::PolicySource,
    pub namespaces: namespaces::NamespaceLabels,
    pub config: Arc<AdmissionConfig>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A review that cannot be answered: 400 with this message (the API server
/// then applies the configuration's failurePolicy).
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed AdmissionReview: {0}")]
    Malformed(String),
}

impl IntoResponse for AdmissionError {
    fn into_response(self) -> Response {
        let status = match self {
            AdmissionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        (
            status,
            axum::Json(serde_json::json!({"error": self.to_string()})),
        )
            .into_response()
    }
}

/// Answer one decoded review; the outcome label goes to the metric.
pub fn answer(state: &WebhookState, request: &review::Request) -> (review::Response, &'static str) {
    let allow = |outcome| (review::Response::allow(&request.uid), outcome);
    if !request.is_pod_create() {
        return allow(Skip::NotPodCreate.as_str());
    }
    let Some(object) = request.object.as_ref() else {
        return allow("error");
    };
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(uid = %request.uid, error = %e, "admission: the pod does not decode; allowed unchanged");
            return allow("error");
        }
    };
    if pod.spec.is_none() {
        return allow("error");
    }
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let ns_labels = state.namespaces.labels(&namespace);
    let policies = state.policies.current();
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match decide(
        &pod,
        &namespace,
        ns_labels.as_ref(),
        &policies,
        &state.config,
    ) {
        Verdict::SetScheduler(scheduler) => {
            let mut ops = review::set_scheduler(&scheduler);
            let relaxed = (state.config.pin_mode == pin::PinMode::Relax && !pin::keeps_pin(&pod))
                .then(|| pin::relax(&pod, &state.config.virtual_nodes))
                .flatten();
            let outcome = match relaxed {
                Some(r) => {
                    tracing::info!(namespace = %namespace, pod = %name, scheduler = %scheduler, relaxed = %r.summary, "admission: scheduler name set, pin to the virtual node relaxed");
                    if let Value::Array(list) = &mut ops {
                        list.extend(r.ops);
                    }
                    "mutated-relaxed-pin"
                }
                None => {
                    tracing::debug!(namespace = %namespace, pod = %name, scheduler = %scheduler, "admission: scheduler name set");
                    "mutated"
                }
            };
            (
                review::Response::allow(&request.uid).with_patch(&ops),
                outcome,
            )
        }
        Verdict::Skip(why) => {
            tracing::debug!(namespace = %namespace, pod = %name, reason = why.as_str(), "admission: pod left as is");
            allow(why.as_str())
        }
    }
}

async fn mutate(State(state): State<WebhookState>, req: Request) -> Response {
    let count = |outcome: &str| {
        state
            .metrics
            .admission_reviews
            .with_label_values(&[outcome])
            .inc();
    };
    let result = async {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if !json {
            return Err(AdmissionError::Malformed(
                "Content-Type must be application/json".into(),
            ));
        }
        let bytes = match http_body_util::Limited::new(req.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(AdmissionError::TooLarge {
                    limit: MAX_REVIEW_BYTES,
                });
            }
            Err(e) => return Err(AdmissionError::Body(e.to_string())),
        };
        review::Review::decode(&bytes).map_err(AdmissionError::Malformed)
    }
    .await;
    match result {
        Ok(request) => {
            let (response, outcome) = answer(&state, &request);
            count(outcome);
            axum::Json(review::Review::respond(response)).into_response()
        }
        Err(e) => {
            count("error");
            tracing::warn!(error = %e, "admission: review refused");
            e.into_response()
        }
    }
}

/// The webhook's router: `POST /mutate-pods` and `GET /healthz`.
pub fn app(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, axum::routing::post(mutate))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(state)
}

#[cfg(test)]
mod tests;
