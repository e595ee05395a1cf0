//! Authentication by bearer token and RBAC authorization, as kube-apiserver
//! does them (k8s.io/apiserver `RequestInfoFactory` for the request's verb,
//! resource and name; plugin/pkg/auth/authorizer/rbac for the rule walk;
//! `responsewriters.Forbidden` for the refusal text).
//!
//! Owns: the tokens this server minted and who they belong to, turning a
//! request into authorizer attributes, evaluating the stored Roles,
//! ClusterRoles and their bindings, and recording which rule allowed each
//! request (for least-privilege tests). It reads the store; it never writes.
//!
//! Follows upstream on purpose:
//! - verbs: GET → get (named) / list / watch (`watch=true`), POST → create,
//!   PUT → update, PATCH → patch, DELETE → delete (named) / deletecollection;
//!   a list or watch with `fieldSelector=metadata.name=X` is named X, so
//!   `resourceNames` rules apply to it; a create (POST to a collection) has
//!   no name, so a `resourceNames` rule never allows it;
//! - `pods` does not match `pods/status`; `*/status` does;
//! - ClusterRoleBindings apply everywhere; RoleBindings only in their own
//!   namespace (to Roles there or to ClusterRoles); cluster-scoped requests
//!   and all-namespace lists see ClusterRoleBindings only;
//! - `/api/v1/namespaces/NAME` is a request in namespace NAME;
//! - a binding to a missing role adds `RBAC: role.rbac.authorization.k8s.io
//!   "x" not found` to the refusal, as upstream's reason does;
//! - ServiceAccount users are `system:serviceaccount:NS:NAME` in groups
//!   `system:serviceaccounts`, `system:serviceaccounts:NS`,
//!   `system:authenticated`; a token bound to a pod stops working when the
//!   pod (that uid) is gone, and every token stops at its expiry.
//!
//! - members of `system:masters` are allowed everything before RBAC is
//!   consulted (upstream's privileged-group authorizer); their requests
//!   exercise no rule;
//!
//! Simplifications: non-resource URLs (`/version`, `/healthz`) are allowed
//! to every authenticated user (the bootstrap `system:discovery` roles do
//! the same); requests for kinds this server does not serve skip
//! authorization and get 404; no aggregation, impersonation or escalation
//! checks (spillway never writes RBAC objects).

use std::collections::{BTreeSet, HashMap};

use axum::http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::resources::{ResourceType, Route, lookup};
use super::status::ApiError;
use super::store::{Store, meta_str};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn service_account(ns: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// A cluster administrator, as kubeadm's `kubernetes-admin`: in group
    /// `system:masters`, which kube-apiserver authorizes before RBAC.
    pub fn admin() -> Self {
        Self {
            name: "kubernetes-admin".into(),
            groups: vec![PRIVILEGED_GROUP.into(), "system:authenticated".into()],
        }
    }

    /// Whether upstream's privileged-group authorizer allows everything.
    pub fn is_privileged(&self) -> bool {
        self.groups.iter().any(|g| g == PRIVILEGED_GROUP)
    }
}

/// `user.SystemPrivilegedGroup`: kube-apiserver chains
/// `authorizerfactory.NewPrivilegedGroups("system:masters")` ahead of RBAC,
/// so its members are allowed every request without any binding.
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// The object a token is bound to (TokenRequest `boundObjectRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone)]
struct Minted {
    user: UserInfo,
    expires: Option<Timestamp>,
    bound_pod: Option<BoundPod>,
}

/// Tokens this server minted.
#[derive(Debug, Default)]
pub struct Tokens {
    minted: HashMap<String, Minted>,
    counter: u64,
}

impl Tokens {
    /// A new token for `user`: opaque to clients, unique per call.
    pub fn mint(
        &mut self,
        user: UserInfo,
        expires: Option<Timestamp>,
        bound_pod: Option<BoundPod>,
    ) -> String {
        self.counter += 1;
        let token = format!(
            "spillway-test-token.{:x}.{}",
            Timestamp::now().as_nanosecond() as u64,
            self.counter
        );
        self.minted.insert(
            token.clone(),
            Minted {
                user,
                expires,
                bound_pod,
            },
        );
        token
    }

    /// Who a bearer token belongs to; `None` = 401 (unknown, expired, or
    /// bound to a pod that no longer exists).
    pub fn authenticate(&self, token: &str, store: &Store) -> Option<UserInfo> {
        let m = self.minted.get(token)?;
        if m.expires.is_some_and(|e| e <= Timestamp::now()) {
            return None;
        }
        if let Some(b) = &m.bound_pod {
            let pod = store.get(pods(), &b.namespace, &b.name)?;
            if meta_str(pod, "uid") != Some(b.uid.as_str()) {
                return None;
            }
        }
        Some(m.user.clone())
    }
}

fn pods() -> &'static ResourceType {
    lookup("", "v1", "pods").expect("pods are served")
}

fn rbac(plural: &str) -> &'static ResourceType {
    lookup("rbac.authorization.k8s.io", "v1", plural).expect("RBAC kinds are served")
}

/// What the authorizer is asked (upstream `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// The attributes of a request for a served resource.
    pub fn of(method: &Method, route: &Route, query: &HashMap<String, String>) -> Self {
        let named = route.name.is_some();
        let verb = match *method {
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                "watch"
            }
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => "",
        };
        let mut name = route.name.clone().unwrap_or_default();
        if (verb == "list" || verb == "watch")
            && let Some(n) = query.get("fieldSelector").and_then(|f| exact_name_match(f))
        {
            name = n;
        }
        // `/api/v1/namespaces/NAME` is in namespace NAME.
        let namespace = match &route.namespace {
            Some(ns) => ns.clone(),
            None if route.rt.is("", "namespaces") => name.clone(),
            None => String::new(),
        };
        Self {
            verb: verb.to_string(),
            group: route.rt.group.to_string(),
            resource: route.rt.plural.to_string(),
            subresource: route.subresource.clone().unwrap_or_default(),
            namespace,
            name,
        }
    }

    /// `pods` or `pods/eviction`, as rules and messages name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The X of a `metadata.name=X` (or `==`) term in a field selector
/// (upstream `RequiresExactMatch`; other terms may be present too).
fn exact_name_match(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        if term.contains("!=") {
            return None;
        }
        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        (k.trim() == "metadata.name" && !v.is_empty()).then(|| v.trim().to_string())
    })
}

/// A Role or ClusterRole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleId {
    /// "Role" or "ClusterRole".
    pub kind: String,
    /// "" for ClusterRoles.
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RoleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The rule that allowed a request, as recorded for least-privilege checks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExercisedRule {
    pub role: RoleId,
    /// Index into the role's `rules`.
    pub rule: usize,
    pub user: String,
    pub verb: String,
    pub group: String,
    /// `pods` or `pods/eviction`.
    pub resource: String,
}

/// One (verb, group, resource) a rule grants, for comparing with what was
/// exercised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantedPermission {
    pub role: RoleId,
    pub rule: usize,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub resource_names: Vec<String>,
}

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

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Upstream `rbacv1helpers.ResourceMatches`: `*`, an exact `pods/status`,
/// or `*/status` for any resource's status.
fn resource_matches(rule_resources: &[String], combined: &str, subresource: &str) -> bool {
    rule_resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let names = strings(rule.get("resourceNames"));
    has(&strings(rule.get("verbs")), &a.verb)
        && has(&strings(rule.get("apiGroups")), &a.group)
        && resource_matches(
            &strings(rule.get("resources")),
            &a.combined_resource(),
            &a.subresource,
        )
        && (names.is_empty() || (!a.name.is_empty() && names.contains(&a.name)))
}

/// Upstream `appliesToUser`: a ServiceAccount subject without a namespace
/// means the binding's own namespace.
fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// The roles bound to `user` that apply in `namespace` ("" = cluster
/// scope), in upstream's visiting order, each with its rules or the error
/// of looking it up.
fn bound_roles(
    store: &Store,
    user: &UserInfo,
    namespace: &str,
) -> Vec<Result<(RoleId, Vec<Value>), String>> {
    let mut out = Vec::new();
    let mut resolve = |role_ref: &Value, binding_ns: &str| {
        let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = role_ref.get("name").and_then(Value::as_str).unwrap_or("");
        let (rt, ns, what) = match kind {
            "ClusterRole" => (rbac("clusterroles"), "", "clusterrole"),
            _ => (rbac("roles"), binding_ns, "role"),
        };
        out.push(match store.get(rt, ns, name) {
            Some(role) => Ok((
                RoleId {
                    kind: kind.to_string(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                },
                role.get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            )),
            None => Err(format!(
                "{what}.rbac.authorization.k8s.io \"{name}\" not found"
            )),
        });
    };
    for b in store.list(rbac("clusterrolebindings"), None) {
        let subjects = b.get("subjects").and_then(Value::as_array);
        if subjects
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ""))
        {
            resolve(b.get("roleRef").unwrap_or(&Value::Null), "");
        }
    }
    if !namespace.is_empty() {
        for b in store.list(rbac("rolebindings"), Some(namespace)) {
            let subjects = b.get("subjects").and_then(Value::as_array);
            if subjects
                .into_iter()
                .flatten()
                .any(|s| subject_matches(s, user, namespace))
            {
                resolve(b.get("roleRef").unwrap_or(&Value::Null), namespace);
            }
        }
    }
    out
}

/// The first rule that allows the request, or upstream's reason text for
/// the refusal ("" or `RBAC: ...` naming roles that bindings point at but
/// that do not exist).
pub fn authorize(
    store: &Store,
    user: &UserInfo,
    a: &Attributes,
) -> Result<(RoleId, usize), String> {
    let mut errors = Vec::new();
    for bound in bound_roles(store, user, &a.namespace) {
        match bound {
            Ok((role, rules)) => {
                if let Some(i) = rules.iter().position(|r| rule_allows(r, a)) {
                    return Ok((role, i));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Err(match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    })
}

/// The real 403: `pods "x" is forbidden: User "u" cannot get resource
/// "pods" in API group "" in the namespace "web"`.
pub fn forbidden(rt: &ResourceType, user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut why = format!(
        "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        user.name,
        a.verb,
        a.combined_resource(),
        a.group
    );
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    ApiError::forbidden(rt, &a.name, &why)
}

/// Every (verb, group, resource) the roles bound to `user` grant, anywhere.
pub fn granted(store: &Store, user: &UserInfo) -> Vec<GrantedPermission> {
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for b in store.list(rbac("rolebindings"), None) {
        if let Some(ns) = meta_str(b, "namespace") {
            namespaces.insert(ns.to_string());
        }
    }
    let mut out = BTreeSet::new();
    let scopes = std::iter::once(String::new()).chain(namespaces);
    for ns in scopes {
        for (role, rules) in bound_roles(store, user, &ns).into_iter().flatten() {
            for (i, r) in rules.iter().enumerate() {
                for verb in strings(r.get("verbs")) {
                    for group in strings(r.get("apiGroups")) {
                        for resource in strings(r.get("resources")) {
                            out.insert(GrantedPermission {
                                role: role.clone(),
                                rule: i,
                                verb: verb.clone(),
                                group: group.clone(),
                                resource,
                                resource_names: strings(r.get("resourceNames")),
                            });
                        }
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// 401, exactly as kube-apiserver answers an unknown token.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// `POST .../serviceaccounts/NAME/token` (TokenRequest), as upstream's
/// `TokenREST.Create`: validation (10 minutes to 2^32 s, default 3600),
/// the service account must exist, a `boundObjectRef` Pod must exist, run
/// as that service account and have the given uid. Returns the
/// TokenRequest with `status.token` and `status.expirationTimestamp`.
pub fn token_request(
    store: &Store,
    tokens: &mut Tokens,
    ns: &str,
    sa: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    const KIND: &str = "TokenRequest.authentication.k8s.io";
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "request body must be a TokenRequest object",
        ));
    }
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => 3600,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let mut invalid = Vec::new();
    if expiration < 600 {
        invalid.push(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
        ));
    }
    if expiration > 1 << 32 {
        invalid.push(format!(
            "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
        ));
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
            format!("{KIND} \"\" is invalid: {why}"),
        ));
    }
    let accounts = lookup("", "v1", "serviceaccounts").expect("service accounts are served");
    let account = store
        .get(accounts, ns, sa)
        .ok_or_else(|| ApiError::not_found(accounts, sa))?;
    let mut bound_pod = None;
    if let Some(r) = spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (api_version, kind, name, uid) = (
            field("apiVersion"),
            field("kind"),
            field("name"),
            field("uid"),
        );
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        if !(group.is_empty() && kind == "Pod") {
            // Secret and Node bindings exist upstream; spillway binds to pods only.
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to object of type {group}/{}, Kind={kind}",
                api_version.rsplit('/').next().unwrap_or("")
            )));
        }
        let pod = store
            .get(pods(), ns, &name)
            .ok_or_else(|| ApiError::not_found(pods(), &name))?;
        // The ServiceAccount admission plugin defaults an unset name to "default".
        let pod_sa = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if pod_sa != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name."
            )));
        }
        let pod_uid = meta_str(pod, "uid").unwrap_or("").to_string();
        if !uid.is_empty() && uid != pod_uid {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on Pod {name:?}: the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        bound_pod = Some(BoundPod {
            namespace: ns.to_string(),
            name,
            uid: pod_uid,
        });
    }
    let now = Timestamp::now();
    let expires = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(expiration))
        .map_err(|e| ApiError::internal(format!("expiry: {e}")))?;
    let token = tokens.mint(UserInfo::service_account(ns, sa), Some(expires), bound_pod);
    let mut spec_out = spec.as_object().cloned().unwrap_or_default();
    spec_out.insert("expirationSeconds".into(), serde_json::json!(expiration));
    if spec_out.get("audiences").is_none_or(Value::is_null) {
        // The API server's own audience, as with a default --api-audiences.
        spec_out.insert(
            "audiences".into(),
            serde_json::json!(["https://kubernetes.default.svc"]),
        );
    }
    Ok(serde_json::json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": sa,
            "namespace": ns,
            "uid": meta_str(account, "uid").unwrap_or(""),
            "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
        "spec": spec_out,
        "status": {
            "token": token,
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
    }))
}
