//! Services: API defaulting, validation and ClusterIP allocation on create
//! and update, the parts a client of Services can get wrong (upstream:
//! pkg/apis/core/v1/defaults.go `SetDefaults_Service`/`SetDefaults_ServicePort`,
//! pkg/apis/core/validation `ValidateService`/`ValidateServiceUpdate`, and
//! pkg/registry/core/service/ipallocator for the ClusterIP).
//!
//! The service CIDR is AKS's default, 10.0.0.0/16 (so `kubernetes` is
//! 10.0.0.1 and `kube-dns` 10.0.0.10 when a test asks for them). Addresses
//! are allocated from the upper band first, as the allocator of KEP-3070
//! does (the lowest 256 addresses of a /16 are kept for static
//! assignment), here in order rather than at random so runs are
//! repeatable. The API server's own `default/kubernetes` Service is not
//! created at start: a test that needs it creates it.

use super::resources::ResourceType;
use super::status::ApiError;
use super::store::meta_str;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The service CIDR: network address and prefix length.
const CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 0, 0, 0), 16);
/// Addresses below this offset are allocated only when asked for by name.
const STATIC_BAND: u32 = 256;

fn in_range(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - CIDR.1);
    u32::from(ip) & mask == u32::from(CIDR.0)
        && u32::from(ip) != u32::from(CIDR.0)
        && u32::from(ip) != (u32::from(CIDR.0) | !mask)
}

/// Defaults, validation and ClusterIP allocation of a Service create;
/// `taken` holds the ClusterIPs already allocated.
pub fn admit_create(
    rt: &'static ResourceType,
    obj: &mut Value,
    taken: &BTreeSet<String>,
) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let invalid = |why: String| ApiError::invalid(rt, &name, &why);
    default_spec(obj);
    validate_spec(obj).map_err(invalid)?;
    let spec = &mut obj["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let asked = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "ExternalName" {
        if !asked.is_empty() {
            return Err(invalid(format!(
                "spec.clusterIP: Invalid value: {asked:?}: may not be set for ExternalName services"
            )));
        }
        return Ok(());
    }
    let ip = match asked.as_str() {
        "None" => "None".to_string(),
        "" => {
            let base = u32::from(CIDR.0);
            let size = 1u32 << (32 - CIDR.1);
            (STATIC_BAND..size - 1)
                .chain(1..STATIC_BAND)
                .map(|off| Ipv4Addr::from(base + off).to_string())
                .find(|ip| !taken.contains(ip))
                .ok_or_else(|| {
                    ApiError::new(
                        500,
                        "InternalError",
                        "Internal error occurred: failed to allocate a serviceIP: range is full",
                    )
                })?
        }
        other => {
            let parsed: Ipv4Addr = other.parse().map_err(|_| {
                invalid(format!(
                    "spec.clusterIPs[0]: Invalid value: {other:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                ))
            })?;
            if !in_range(parsed) {
                return Err(invalid(format!(
                    "spec.clusterIPs: Invalid value: []string{{{other:?}}}: failed to allocate IP {other}: provided IP is not in the valid range. The range of valid IPs is {}/{}",
                    CIDR.0, CIDR.1
                )));
            }
            if taken.contains(other) {
                return Err(invalid(format!(
                    "spec.clusterIPs: Invalid value: []string{{{other:?}}}: failed to allocate IP {other}: provided IP is already allocated"
                )));
            }
            other.to_string()
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" {
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    Ok(())
}

/// Defaults and validation of a Service update: the ClusterIP may not change.
pub fn admit_update(
    rt: &'static ResourceType,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    let name = meta_str(old, "name").unwrap_or_default().to_string();
    let invalid = |why: String| ApiError::invalid(rt, &name, &why);
    default_spec(new);
    let old_ip = old
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // An update that leaves the ClusterIP out keeps it (the REST strategy's
    // patchAllocatedValues); one that names another is refused.
    match new.pointer("/spec/clusterIP").and_then(Value::as_str) {
        None | Some("") if !old_ip.is_empty() => {
            new["spec"]["clusterIP"] = json!(old_ip);
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                new["spec"]["clusterIPs"] = ips.clone();
            }
        }
        Some(ip) if ip != old_ip => {
            return Err(invalid(format!(
                "spec.clusterIPs[0]: Invalid value: []string{{{ip:?}}}: may not change once set"
            )));
        }
        _ => {}
    }
    validate_spec(new).map_err(invalid)
}

/// `SetDefaults_Service` / `SetDefaults_ServicePort`: type ClusterIP,
/// sessionAffinity None, protocol TCP, targetPort = port.
fn default_spec(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec.get("type").is_none_or(Value::is_null) {
        spec["type"] = json!("ClusterIP");
    }
    if spec.get("sessionAffinity").is_none_or(Value::is_null) {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("protocol").is_none_or(Value::is_null) {
                p.insert("protocol".into(), json!("TCP"));
            }
            if p.get("targetPort").is_none_or(Value::is_null)
                && let Some(port) = p.get("port").cloned()
            {
                p.insert("targetPort".into(), port);
            }
        }
    }
}

/// The `ValidateService` rules on type, ports and ExternalName, in its
/// words (`field: Required value`, `Unsupported value`, `Duplicate value`).
fn validate_spec(obj: &Value) -> Result<(), String> {
    let spec = &obj["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(format!(
            "spec.type: Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if kind == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("spec.externalName: Required value".to_string());
        }
    } else if ports.is_empty() && !headless {
        return Err("spec.ports: Required value".to_string());
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            return Err(format!(
                "{at}.port: Invalid value: {port}: must be between 1 and 65535, inclusive"
            ));
        }
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(format!(
                "{at}.protocol: Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            return Err(format!("{at}.name: Duplicate value: {name:?}"));
        }
    }
    Ok(())
}
