//! `admission.k8s.io/v1 AdmissionReview`, the part spillway reads and writes
//! (k8s.io/api/admission/v1/types.go). The request's `uid` is echoed; a
//! patch is an RFC 6902 JSON Patch, base64-encoded, with `patchType: JSONPatch`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// `metav1.GroupVersionKind` / `GroupVersionResource` as the review carries them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

/// `AdmissionRequest` (the fields spillway uses; others are ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub resource: GroupVersionResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

impl Request {
    /// A CREATE of `core/v1 pods` (not a subresource).
    pub fn is_pod_create(&self) -> bool {
        self.operation == "CREATE"
            && self.resource.group.is_empty()
            && self.resource.resource == "pods"
            && self.sub_resource.as_deref().is_none_or(str::is_empty)
    }
}

/// `AdmissionResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// base64 of the JSON Patch document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

impl Response {
    pub fn allow(uid: &str) -> Self {
        Response {
            uid: uid.to_string(),
            allowed: true,
            patch_type: None,
            patch: None,
        }
    }

    pub fn with_patch(mut self, ops: &Value) -> Self {
        self.patch_type = Some("JSONPatch".into());
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(ops.to_string()));
        self
    }
}

/// The envelope.
pub struct Review;

impl Review {
    /// Decode a review sent by the API server; the message says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Request, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("body is not JSON: {e}"))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        if field("apiVersion") != API_VERSION || field("kind") != KIND {
            return Err(format!(
                "expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {:?} kind {:?} (the webhook configuration must list admissionReviewVersions [v1])",
                field("apiVersion"),
                field("kind")
            ));
        }
        let request = v
            .get("request")
            .filter(|r| !r.is_null())
            .ok_or("request is missing")?;
        let request: Request =
            serde_json::from_value(request.clone()).map_err(|e| format!("request: {e}"))?;
        if request.uid.is_empty() {
            return Err("request.uid is empty".into());
        }
        Ok(request)
    }

    /// The review answered with `response`.
    pub fn respond(response: Response) -> Value {
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "response": response,
        })
    }
}

/// The patch that names the scheduler. `add` replaces an existing member
/// (RFC 6902 §4.1), and API defaulting has set `default-scheduler` already.
pub fn set_scheduler(name: &str) -> Value {
    serde_json::json!([{"op": "add", "path": "/spec/schedulerName", "value": name}])
}
