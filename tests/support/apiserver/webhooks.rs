//! Mutating admission webhooks, called as kube-apiserver calls them
//! (k8s.io/apiserver/pkg/admission/plugin/webhook: `mutating/dispatcher.go`,
//! `predicates/rules`, `predicates/namespace`, `predicates/object`;
//! validation and defaults from k8s.io/kubernetes/pkg/apis/admissionregistration).
//!
//! On a pod CREATE, after defaulting and before validation and Pod Security
//! (validating admission), every webhook of every stored
//! `MutatingWebhookConfiguration` (configurations by name, webhooks in
//! order) whose rules, namespaceSelector and objectSelector match is POSTed
//! an `admission.k8s.io/v1 AdmissionReview` over HTTPS at
//! `clientConfig.url?timeout=Ns`, the server certificate verified against
//! `clientConfig.caBundle`, within `timeoutSeconds`. Its JSON Patch is
//! applied to the object the next webhook sees. A call that fails
//! (connection, TLS, timeout, non-200, a response with the wrong uid/kind)
//! is ignored under `failurePolicy: Ignore` and is a 500 `Internal error
//! occurred: failed calling webhook "NAME": ...` under `Fail`; a denial is
//! `admission webhook "NAME" denied the request: MSG` (code from the
//! response status, else 400); a patch that does not apply is a 500 either way.
//!
//! Simplifications: only `clientConfig.url` is dialled (a `service`
//! reference has no cluster DNS here: the call fails and the failure policy
//! applies); `reinvocationPolicy: IfNeeded` is not re-invoked; `matchPolicy`
//! is moot (one version of pods); `matchConditions` are not evaluated
//! (refused at creation rather than ignored); only pod CREATE is dispatched.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::patch::json_patch;
use super::resources::{ResourceType, lookup};
use super::selectors::LabelSelector;
use super::status::ApiError;
use super::store::{Store, meta_str};

pub const GROUP: &str = "admissionregistration.k8s.io";
pub const PLURAL: &str = "mutatingwebhookconfigurations";

pub fn configurations() -> &'static ResourceType {
    lookup(GROUP, "v1", PLURAL).expect("mutatingwebhookconfigurations are served")
}

fn invalid(name: &str, why: String) -> ApiError {
    ApiError::invalid(configurations(), name, &why)
}

/// API defaulting and validation of a MutatingWebhookConfiguration on
/// create and update (admissionregistration/v1 defaults.go, validation.go),
/// the parts a spillway manifest can get wrong.
pub fn default_and_validate(obj: &mut Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, h) in hooks.iter_mut().enumerate() {
        let at = format!("webhooks[{i}]");
        let hook_name = h
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let segments = hook_name.split('.').filter(|s| !s.is_empty()).count();
        if segments < 3 {
            return Err(invalid(
                &name,
                format!(
                    "{at}.name: Invalid value: \"{hook_name}\": should be a domain with at least three segments separated by dots"
                ),
            ));
        }
        if !seen.insert(hook_name.clone()) {
            return Err(invalid(
                &name,
                format!("{at}.name: Duplicate value: \"{hook_name}\""),
            ));
        }
        for (field, default) in [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("reinvocationPolicy", json!("Never")),
            ("timeoutSeconds", json!(10)),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
        ] {
            if h.get(field).is_none_or(Value::is_null) {
                h[field] = default;
            }
        }
        match h["sideEffects"].as_str() {
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => {
                return Err(invalid(
                    &name,
                    format!(
                        "{at}.sideEffects: Unsupported value: \"{other}\": supported values: \"None\", \"NoneOnDryRun\""
                    ),
                ));
            }
            None => return Err(invalid(&name, format!("{at}.sideEffects: Required value"))),
        }
        let versions: Vec<&str> = h["admissionReviewVersions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(invalid(
                &name,
                format!(
                    "{at}.admissionReviewVersions: Required value: must specify one of v1, v1beta1"
                ),
            ));
        }
        if !versions.iter().any(|v| *v == "v1" || *v == "v1beta1") {
            return Err(invalid(
                &name,
                format!(
                    "{at}.admissionReviewVersions: Invalid value: {versions:?}: must include at least one of v1, v1beta1"
                ),
            ));
        }
        match h["failurePolicy"].as_str() {
            Some("Ignore" | "Fail") => {}
            other => {
                return Err(invalid(
                    &name,
                    format!(
                        "{at}.failurePolicy: Unsupported value: {other:?}: supported values: \"Fail\", \"Ignore\""
                    ),
                ));
            }
        }
        match h["reinvocationPolicy"].as_str() {
            Some("Never" | "IfNeeded") => {}
            other => {
                return Err(invalid(
                    &name,
                    format!(
                        "{at}.reinvocationPolicy: Unsupported value: {other:?}: supported values: \"IfNeeded\", \"Never\""
                    ),
                ));
            }
        }
        let timeout = h["timeoutSeconds"].as_i64().unwrap_or(0);
        if !(1..=30).contains(&timeout) {
            return Err(invalid(
                &name,
                format!(
                    "{at}.timeoutSeconds: Invalid value: {timeout}: the timeout value must be between 1 and 30 seconds"
                ),
            ));
        }
        let cc = &h["clientConfig"];
        match (
            cc.get("url").and_then(Value::as_str),
            cc.get("service").filter(|s| !s.is_null()),
        ) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    &name,
                    format!(
                        "{at}.clientConfig: Required value: exactly one of url or service is required"
                    ),
                ));
            }
            (Some(url), None) => {
                if !url.starts_with("https://") {
                    return Err(invalid(
                        &name,
                        format!(
                            "{at}.clientConfig.url: Invalid value: \"{url}\": 'https' is the only allowed URL scheme"
                        ),
                    ));
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(ca) = cc.get("caBundle").and_then(Value::as_str)
            && base64::engine::general_purpose::STANDARD
                .decode(ca)
                .is_err()
        {
            return Err(ApiError::bad_request(format!(
                "MutatingWebhookConfiguration in version \"v1\" cannot be handled as a MutatingWebhookConfiguration: {at}.clientConfig.caBundle: illegal base64 data"
            )));
        }
        if h.get("matchConditions")
            .is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty()))
        {
            return Err(ApiError::bad_request(
                "matchConditions are not supported by the test API server",
            ));
        }
        for (j, rule) in h["rules"].as_array_mut().into_iter().flatten().enumerate() {
            if rule.get("scope").is_none_or(Value::is_null) {
                rule["scope"] = json!("*");
            }
            match rule["scope"].as_str() {
                Some("*" | "Cluster" | "Namespaced") => {}
                other => {
                    return Err(invalid(
                        &name,
                        format!(
                            "{at}.rules[{j}].scope: Unsupported value: {other:?}: supported values: \"*\", \"Cluster\", \"Namespaced\""
                        ),
                    ));
                }
            }
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            LabelSelector::from_structured(&h[sel])
                .map_err(|e| invalid(&name, format!("{at}.{sel}: Invalid value: {e}")))?;
        }
    }
    Ok(())
}

/// What a pod CREATE looks like to the rules.
struct Attributes<'a> {
    namespace: &'a str,
    group: &'a str,
    version: &'a str,
    resource: &'a str,
    subresource: &'a str,
    operation: &'a str,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `rules.Matcher`: operation, group, version, resource (with `*`, `pods/*`,
/// `*/status` forms) and scope.
fn rule_matches(rule: &Value, a: &Attributes) -> bool {
    let has = |field: &str, v: &str| strings(&rule[field]).iter().any(|x| *x == "*" || *x == v);
    let resource = strings(&rule["resources"]).iter().any(|r| {
        if *r == "*/*" {
            return true;
        }
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == a.resource) && (sub == "*" || sub == a.subresource)
    });
    let scope = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => a.namespace.is_empty(),
        "Namespaced" => !a.namespace.is_empty(),
        _ => true,
    };
    has("operations", a.operation)
        && has("apiGroups", a.group)
        && has("apiVersions", a.version)
        && resource
        && scope
}

/// One webhook call to make.
struct Call {
    name: String,
    url: Option<String>,
    ca_bundle: Vec<u8>,
    timeout: Duration,
    ignore_failures: bool,
}

/// The webhooks that match a pod CREATE of `pod` in `ns`, in call order.
/// A non-empty namespaceSelector needs the Namespace object: without it
/// the create is refused as kube-apiserver refuses it (404).
fn matching(store: &Store, ns: &str, pod: &Value) -> Result<Vec<Call>, ApiError> {
    let attrs = Attributes {
        namespace: ns,
        group: "",
        version: "v1",
        resource: "pods",
        subresource: "",
        operation: "CREATE",
    };
    let mut configs: Vec<&Value> = store.list(configurations(), None);
    configs.sort_by_key(|c| meta_str(c, "name").unwrap_or_default().to_string());
    let namespaces = lookup("", "v1", "namespaces").expect("namespaces are served");
    let mut calls = Vec::new();
    for config in configs {
        for h in config["webhooks"].as_array().into_iter().flatten() {
            if !h["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| rule_matches(r, &attrs))
            {
                continue;
            }
            let ns_sel = LabelSelector::from_structured(&h["namespaceSelector"])
                .map_err(ApiError::internal)?
                .unwrap_or_default();
            if !ns_sel.is_empty() {
                let namespace = store.get(namespaces, "", ns).ok_or_else(|| {
                    ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
                })?;
                if !ns_sel.matches_object(namespace) {
                    continue;
                }
            }
            let obj_sel = LabelSelector::from_structured(&h["objectSelector"])
                .map_err(ApiError::internal)?
                .unwrap_or_default();
            if !obj_sel.matches_object(pod) {
                continue;
            }
            let cc = &h["clientConfig"];
            calls.push(Call {
                name: h["name"].as_str().unwrap_or_default().to_string(),
                url: cc.get("url").and_then(Value::as_str).map(String::from),
                ca_bundle: cc
                    .get("caBundle")
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .unwrap_or_default(),
                timeout: Duration::from_secs(h["timeoutSeconds"].as_u64().unwrap_or(10)),
                ignore_failures: h["failurePolicy"] == "Ignore",
            });
        }
    }
    Ok(calls)
}

/// Who made the request, as the review's `userInfo`.
pub struct Requester {
    pub username: String,
    pub groups: Vec<String>,
}

/// Run the mutating webhooks on a pod CREATE in `ns`: the pod to create
/// when a webhook patched it, None when none did. `pod` is already
/// defaulted and carries its namespace.
pub async fn admit_pod_create(
    store: &std::sync::Mutex<Store>,
    ns: &str,
    mut pod: Value,
    requester: &Requester,
) -> Result<Option<Value>, ApiError> {
    let mut patched = false;
    let calls = {
        let store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        matching(&store, ns, &pod)?
    };
    for call in calls {
        match invoke(&call, ns, &pod, requester).await {
            Ok(Outcome::Allowed(None)) => {}
            Ok(Outcome::Allowed(Some(ops))) => {
                json_patch(&mut pod, &ops)
                    .map_err(|e| ApiError::internal(format!("Internal error occurred: {e:?}")))?;
                patched = true;
            }
            Ok(Outcome::Denied { code, message }) => {
                let denied = format!("admission webhook \"{}\" denied the request", call.name);
                let message = if message.is_empty() {
                    format!("{denied} without explanation")
                } else {
                    format!("{denied}: {message}")
                };
                return Err(ApiError::new(code, reason_for(code), message));
            }
            Err(why) if call.ignore_failures => {
                tracing::debug!(webhook = %call.name, error = %why, "failed calling webhook, failing open");
            }
            Err(why) => {
                return Err(ApiError::internal(format!(
                    "Internal error occurred: failed calling webhook \"{}\": {why}",
                    call.name
                )));
            }
        }
    }
    Ok(patched.then_some(pod))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        403 => "Forbidden",
        422 => "Invalid",
        _ => "BadRequest",
    }
}

enum Outcome {
    Allowed(Option<Value>),
    Denied { code: u16, message: String },
}

fn tls_client(ca_bundle: &[u8], timeout: Duration) -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("tls: failed to verify certificate: x509: certificate signed by unknown authority (empty caBundle)".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

/// Describe a reqwest error with its sources (the TLS reason is nested).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn invoke(
    call: &Call,
    ns: &str,
    pod: &Value,
    requester: &Requester,
) -> Result<Outcome, String> {
    let Some(url) = &call.url else {
        return Err("failed to call webhook: service references cannot be resolved by the test API server (use clientConfig.url)".into());
    };
    let secs = call.timeout.as_secs();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}timeout={secs}s");
    let uid = format!("{:032x}", rand_u128());
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": meta_str(pod, "name").unwrap_or_default(),
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": requester.username, "groups": requester.groups},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    });
    let client = tls_client(&call.ca_bundle, call.timeout)?;
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(review.to_string())
        .send()
        .await
        .map_err(|e| format!("failed to call webhook: Post \"{url}\": {}", describe(&e)))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("failed to call webhook: {}", describe(&e)))?;
    if status != 200 {
        return Err(format!(
            "failed to call webhook: an error on the server (\"{}\") has prevented the request from succeeding",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("failed to call webhook: {e}"))?;
    if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            answer["apiVersion"].as_str().unwrap_or_default(),
            answer["kind"].as_str().unwrap_or_default()
        ));
    }
    let r = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("webhook response was absent")?;
    if r["uid"] != uid.as_str() {
        return Err(format!(
            "expected response.uid=\"{uid}\", got \"{}\"",
            r["uid"].as_str().unwrap_or_default()
        ));
    }
    if r["allowed"] != true {
        let code = r
            .pointer("/status/code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c >= 400)
            .unwrap_or(400);
        let message = r
            .pointer("/status/message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Ok(Outcome::Denied { code, message });
    }
    let Some(patch) = r.get("patch").and_then(Value::as_str) else {
        return Ok(Outcome::Allowed(None));
    };
    if r["patchType"] != "JSONPatch" {
        return Err(format!(
            "expected patchType JSONPatch, got \"{}\"",
            r["patchType"].as_str().unwrap_or_default()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("illegal base64 patch: {e}"))?;
    let ops: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("patch is not JSON: {e}"))?;
    Ok(Outcome::Allowed(Some(ops)))
}

fn rand_u128() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (t << 32) ^ u128::from(n)
}
