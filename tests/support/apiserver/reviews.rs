//! `POST /apis/authentication.k8s.io/v1/tokenreviews` and
//! `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`, as
//! kube-apiserver answers them for a delegating component (a kubelet with
//! `--authentication-token-webhook --authorization-mode=Webhook`). The
//! caller needs RBAC `create` on them (upstream's `system:auth-delegator`);
//! `mod.rs` checks that like any request.
//!
//! - TokenReview: the token is looked up in this server's own token store
//!   (`rbac::Tokens`: minted, unexpired, its bound pod still there); an
//!   empty token is a 400 (`token is required for TokenReview in
//!   authentication`). Known: `authenticated: true`, the user and groups,
//!   `audiences` = the server's own (`https://kubernetes.default.svc`);
//!   a review naming other audiences does not authenticate (this server's
//!   tokens are all for its own audience). Unknown: `authenticated: false`.
//! - SubjectAccessReview: the attributes of `spec.resourceAttributes` for
//!   `spec.user`/`spec.groups`, decided as a request of that user would be:
//!   `system:masters` first, then the stored RBAC objects (`rbac.rs`,
//!   ClusterRoleBindings for cluster-scoped resources such as nodes,
//!   RoleBindings only in their namespace). Denied: `allowed: false` with
//!   the RBAC reason. Validation as upstream (422): exactly one of
//!   resourceAttributes / nonResourceAttributes, a user or a group.
//!   Simplification: nonResourceAttributes are answered `allowed: false`
//!   with an `evaluationError`.
//!
//! Both answer 201 with the review and its `status`, nothing is stored;
//! other methods are 405. A review is not a request of the reviewed user:
//! it is not recorded as an exercised rule or a denial.

use serde_json::{Value, json};

use super::rbac::{self, Attributes, Tokens, UserInfo};
use super::status::ApiError;
use super::store::Store;

/// The audience of every token this server mints.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The created review: as sent, kind and apiVersion set, with `status`.
fn answer(body: &Value, kind: &str, api_version: &str, status: Value) -> Value {
    let mut out = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "spec": body.get("spec").cloned().unwrap_or(json!({})),
    });
    out["status"] = status;
    out
}

/// TokenReview create.
pub fn token_review(store: &Store, tokens: &Tokens, body: &Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "request body must be a TokenReview object",
        ));
    }
    let token = str_at(body, "/spec/token");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences = strings(body.pointer("/spec/audiences"));
    let for_us = audiences.is_empty() || audiences.iter().any(|a| a == API_AUDIENCE);
    let status = match tokens.authenticate(token, store).filter(|_| for_us) {
        Some(user) => json!({
            "authenticated": true,
            "user": {"username": user.name, "groups": user.groups},
            "audiences": [API_AUDIENCE],
        }),
        None => json!({"user": {}}),
    };
    Ok(answer(
        body,
        "TokenReview",
        "authentication.k8s.io/v1",
        status,
    ))
}

/// SubjectAccessReview create.
pub fn subject_access_review(store: &Store, body: &Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "request body must be a SubjectAccessReview object",
        ));
    }
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let resource = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let user = str_at(&spec, "/user").to_string();
    let groups = strings(spec.get("groups"));
    let mut invalid = Vec::new();
    match (resource, non_resource) {
        (Some(_), Some(_)) => invalid.push(
            "spec.nonResourceAttributes: Invalid value: \"\": cannot be specified in combination with resourceAttributes".to_string(),
        ),
        (None, None) => invalid.push(
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".to_string(),
        ),
        _ => {}
    }
    if user.is_empty() && groups.is_empty() {
        invalid.push(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified"
                .to_string(),
        );
    }
    if !invalid.is_empty() {
        let why = if invalid.len() == 1 {
            invalid.remove(0)
        } else {
            format!("[{}]", invalid.join(", "))
        };
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("SubjectAccessReview.authorization.k8s.io \"\" is invalid: {why}"),
        ));
    }
    let who = UserInfo { name: user, groups };
    let status = match resource {
        None => json!({
            "allowed": false,
            "evaluationError": "nonResourceAttributes are not evaluated by the test API server",
        }),
        Some(_) if who.is_privileged() => json!({"allowed": true}),
        Some(r) => {
            let attrs = Attributes {
                verb: str_at(r, "/verb").to_string(),
                group: str_at(r, "/group").to_string(),
                resource: str_at(r, "/resource").to_string(),
                subresource: str_at(r, "/subresource").to_string(),
                namespace: str_at(r, "/namespace").to_string(),
                name: str_at(r, "/name").to_string(),
            };
            match rbac::authorize(store, &who, &attrs) {
                Ok(_) => json!({"allowed": true}),
                Err(reason) if reason.is_empty() => json!({"allowed": false}),
                Err(reason) => json!({"allowed": false, "reason": reason}),
            }
        }
    };
    Ok(answer(
        body,
        "SubjectAccessReview",
        "authorization.k8s.io/v1",
        status,
    ))
}
