//! Pod DNS validation on create, as kube-apiserver's `validatePodDNSConfig`
//! and `validateDNSPolicy` (pkg/apis/core/validation/validation.go), with the
//! `ExpandedDNSConfig` limits (GA in 1.28): the pods a burst pod's
//! translation can meet are the ones these rules let through.

use super::resources::ResourceType;
use super::status::ApiError;
use serde_json::Value;

const MAX_DNS_NAMESERVERS: usize = 3;
const MAX_DNS_SEARCH_PATHS: usize = 32;
const MAX_DNS_SEARCH_LIST_CHARS: usize = 2048;

/// `IsDNS1123Subdomain`, a trailing dot allowed (`ValidateDNS1123SubdomainWithUnderScore`
/// is only for the relaxed search validation, not modelled).
fn is_subdomain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn go_list(v: &[String]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// Refuse a pod whose `dnsPolicy`/`dnsConfig` kube-apiserver refuses.
pub fn validate(rt: &ResourceType, name: &str, pod: &Value) -> Result<(), ApiError> {
    let invalid = |why: String| Err(ApiError::invalid(rt, name, &why));
    let policy = pod
        .pointer("/spec/dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    if !matches!(
        policy,
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None"
    ) {
        return invalid(format!(
            "spec.dnsPolicy: Unsupported value: {policy:?}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""
        ));
    }
    let config = pod.pointer("/spec/dnsConfig").filter(|c| !c.is_null());
    let strings = |key: &str| -> Vec<String> {
        config
            .and_then(|c| c.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let nameservers = strings("nameservers");
    let searches = strings("searches");
    if policy == "None" {
        if config.is_none() {
            return invalid(
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
                    .into(),
            );
        }
        if nameservers.is_empty() {
            return invalid("spec.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None".into());
        }
    }
    if nameservers.len() > MAX_DNS_NAMESERVERS {
        return invalid(format!(
            "spec.dnsConfig.nameservers: Invalid value: {}: must not have more than {MAX_DNS_NAMESERVERS} nameservers",
            go_list(&nameservers)
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return invalid(format!(
                "spec.dnsConfig.nameservers[{i}]: Invalid value: {ns:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            ));
        }
    }
    if searches.len() > MAX_DNS_SEARCH_PATHS {
        return invalid(format!(
            "spec.dnsConfig.searches: Invalid value: {}: must not have more than {MAX_DNS_SEARCH_PATHS} search paths",
            go_list(&searches)
        ));
    }
    if searches.join(" ").len() > MAX_DNS_SEARCH_LIST_CHARS {
        return invalid(format!(
            "spec.dnsConfig.searches: Invalid value: {}: must not have more than {MAX_DNS_SEARCH_LIST_CHARS} characters (including spaces) in the search list",
            go_list(&searches)
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        if !is_subdomain(s) {
            return invalid(format!(
                "spec.dnsConfig.searches[{i}]: Invalid value: {s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    let options = config
        .and_then(|c| c.get("options"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, o) in options.iter().enumerate() {
        if o.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return invalid(format!("spec.dnsConfig.options[{i}].name: Required value"));
        }
    }
    Ok(())
}
