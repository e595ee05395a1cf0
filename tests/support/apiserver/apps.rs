//! apps/v1 ReplicaSets: the validation a client of ReplicaSets can get
//! wrong, in kube-apiserver's words (upstream:
//! pkg/apis/apps/validation/validation.go `ValidateReplicaSetSpec`,
//! `ValidatePodTemplateSpecForReplicaSet`, and
//! pkg/registry/apps/replicaset/strategy.go `ValidateUpdate`, where apps/v1
//! makes `spec.selector` immutable).
//!
//! Served so controllers that read a pod's ReplicaSet (its
//! `deployment.kubernetes.io/revision`, its Deployment owner) see real
//! objects. Nothing here runs the ReplicaSet controller: tests create and
//! delete the pods themselves (`actors.rs` has a controller's part).

use super::resources::ResourceType;
use super::selectors::LabelSelector;
use super::status::ApiError;
use super::store::meta_str;
use serde_json::Value;

/// Validation of a ReplicaSet create.
pub fn admit_create(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    validate_spec(obj).map_err(|why| ApiError::invalid(rt, &name, &why))
}

/// Validation of a ReplicaSet update: the spec rules, and an immutable selector.
pub fn admit_update(rt: &ResourceType, old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = meta_str(new, "name").unwrap_or_default().to_string();
    validate_spec(new).map_err(|why| ApiError::invalid(rt, &name, &why))?;
    let (before, after) = (&old["spec"]["selector"], &new["spec"]["selector"]);
    if before != after {
        return Err(ApiError::invalid(
            rt,
            &name,
            &format!("spec.selector: Invalid value: {after}: field is immutable"),
        ));
    }
    Ok(())
}

/// `ValidateReplicaSetSpec`: replicas not negative, a selector that is
/// set, not empty, and selects the template's labels.
fn validate_spec(obj: &Value) -> Result<(), String> {
    let spec = &obj["spec"];
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        return Err(format!(
            "spec.replicas: Invalid value: {r}: must be greater than or equal to 0"
        ));
    }
    let raw = spec.get("selector").unwrap_or(&Value::Null);
    let selector = match LabelSelector::from_structured(raw) {
        Ok(Some(s)) => s,
        Ok(None) => return Err("spec.selector: Required value".to_string()),
        Err(e) => {
            return Err(format!(
                "spec.selector: Invalid value: {raw}: invalid label selector: {e}"
            ));
        }
    };
    if selector.is_empty() {
        return Err(format!(
            "spec.selector: Invalid value: {raw}: empty selector is invalid for deployment"
        ));
    }
    let labels = spec["template"]["metadata"]["labels"].as_object();
    if !selector.matches(labels) {
        let shown = spec["template"]["metadata"]["labels"].to_string();
        return Err(format!(
            "spec.template.metadata.labels: Invalid value: {shown}: `selector` does not match template `labels`"
        ));
    }
    Ok(())
}
