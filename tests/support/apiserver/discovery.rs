//! Legacy (unaggregated) API discovery, as kube-apiserver serves it, so the
//! real `kubectl` can map `pods`, `po`, `nodes` … to URLs:
//! `GET /api` (APIVersions), `GET /apis` (APIGroupList) and
//! `GET /api/v1`, `GET /apis/{group}/{version}` (APIResourceList, with the
//! subresources the server serves). Clients that ask for aggregated
//! discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;…`)
//! get these plain `application/json` documents and fall back to the
//! legacy form, as client-go does against a server without it.

use super::resources::{ResourceType, all};
use serde_json::{Value, json};

/// Subresources served per kind (`status` comes from the resource table).
fn subresources(rt: &ResourceType) -> Vec<(&'static str, &'static [&'static str])> {
    let mut subs: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    if rt.status_subresource {
        subs.push(("status", &["get", "patch", "update"]));
    }
    if rt.is_pod() {
        subs.push(("binding", &["create"]));
        subs.push(("eviction", &["create"]));
        subs.push(("log", &["get"]));
    }
    if rt.is("", "nodes") {
        subs.push(("proxy", &["create", "delete", "get", "patch", "update"]));
    }
    if rt.is("", "serviceaccounts") {
        subs.push(("token", &["create"]));
    }
    subs
}

/// kubectl's short names for the kinds served here.
fn short_names(rt: &ResourceType) -> &'static [&'static str] {
    match (rt.group, rt.plural) {
        ("", "pods") => &["po"],
        ("", "nodes") => &["no"],
        ("", "namespaces") => &["ns"],
        ("", "configmaps") => &["cm"],
        ("", "events") => &["ev"],
        ("", "serviceaccounts") => &["sa"],
        ("", "services") => &["svc"],
        ("policy", "poddisruptionbudgets") => &["pdb"],
        ("apps", "replicasets") => &["rs"],
        ("events.k8s.io", "events") => &["ev"],
        _ => &[],
    }
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = all()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in served {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut entry = json!({
            "name": rt.plural,
            "singularName": rt.kind.to_lowercase(),
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs,
        });
        let short = short_names(rt);
        if !short.is_empty() {
            entry["shortNames"] = json!(short);
        }
        resources.push(entry);
        for (sub, verbs) in subresources(rt) {
            resources.push(json!({
                "name": format!("{}/{sub}", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": match sub {
                    "eviction" => "Eviction",
                    "binding" => "Binding",
                    "token" => "TokenRequest",
                    _ => rt.kind,
                },
                "verbs": verbs,
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn group_list() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for rt in all().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == rt.group) {
            Some((_, versions)) if !versions.contains(&rt.version) => versions.push(rt.version),
            Some(_) => {}
            None => groups.push((rt.group, vec![rt.version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let gv = |v: &str| json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({
                "name": g,
                "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
                "preferredVersion": gv(versions[0]),
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The discovery document at `path`, if it is one.
pub fn document(path: &str, server_address: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })),
        ["apis"] => Some(group_list()),
        ["api", v] => resource_list("", v),
        ["apis", g, v] => resource_list(g, v),
        _ => None,
    }
}
