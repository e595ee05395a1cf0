//! The object store: every kind as JSON, one global resourceVersion, a bounded
//! change history for watches, and the write rules the real API server
//! applies (optimistic concurrency, status subresource split, finalizers,
//! graceful pod deletion, pods/binding, pods/eviction with PDBs).
//!
//! It must stay synchronous and I/O-free: the HTTP layer (`mod.rs`) holds the
//! lock only around calls into it, and timers live outside.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::patch::{json_patch, merge_patch, strategic_merge};
use super::psa;
use super::resources::{ResourceType, lookup};
use super::selectors::LabelSelector;
use super::status::ApiError;

/// (group, plural, namespace or "", name)
pub type ObjKey = (&'static str, &'static str, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed write, as watches see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub rt: &'static ResourceType,
    pub event: EventType,
    pub object: Value,
    /// The object before this write (for selector transitions).
    pub previous: Option<Value>,
}

/// What the store broadcasts to open watches.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    Change(Arc<Change>),
    /// Test hook: every open watch gets a 410 ERROR event and ends.
    Expire,
    /// Test hook: every open watch ends cleanly (as on a watch timeout or
    /// an apiserver restart); clients re-watch from their last rv.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

/// The parts of `DeleteOptions` this server honours.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

impl DeleteOptions {
    pub fn from_value(v: &Value) -> Result<Self, ApiError> {
        if v.is_null() {
            return Ok(Self::default());
        }
        if !v.is_object() {
            return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
        }
        let grace =
            match v.get("gracePeriodSeconds") {
                None | Some(Value::Null) => None,
                Some(g) => Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?),
            };
        let pre = v.get("preconditions");
        let pre_str = |k: &str| {
            pre.and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        };
        Ok(Self {
            grace_period_seconds: grace,
            precondition_uid: pre_str("uid"),
            precondition_resource_version: pre_str("resourceVersion"),
        })
    }
}

/// Outcome of a delete (or eviction).
#[derive(Debug)]
pub enum Deleted {
    /// Gone from the store; the last state (with the deletion's rv).
    Removed(Value),
    /// Still present with `deletionTimestamp` (finalizers or a grace period).
    Terminating {
        object: Value,
        /// For pods in a grace period: when (seconds) and which uid to remove.
        grace: Option<(u64, String)>,
    },
}

/// PDB arithmetic, as the disruption controller would compute it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub expected: i64,
    pub healthy: i64,
    pub desired: i64,
}

impl Budget {
    pub fn disruptions_allowed(&self) -> i64 {
        (self.healthy - self.desired).max(0)
    }
}

pub struct Store {
    rv: u64,
    uid_counter: u64,
    uid_seed: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Every change with rv > floor is in `history`.
    history_floor: u64,
    tx: broadcast::Sender<WatchMsg>,
    /// Keep PDB status current after pod/PDB writes, as the disruption
    /// controller does.
    auto_pdb_status: bool,
    syncing_pdbs: bool,
}

pub fn now_rfc3339() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::UNIX_EPOCH.to_string())
}

fn rfc3339_in(secs: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second().saturating_add(secs))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::UNIX_EPOCH.to_string())
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Unreachable: just ensured above; keep a total function anyway.
        _ => unreachable!("metadata was just set to an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn is_terminating(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

/// Terminating, no finalizers left, and no grace period pending.
fn ready_to_remove(obj: &Value) -> bool {
    is_terminating(obj)
        && finalizers(obj).is_empty()
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn pod_phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Running, Ready=True and not terminating.
pub fn pod_healthy(pod: &Value) -> bool {
    pod_phase(pod) == "Running"
        && !is_terminating(pod)
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

fn int_or_percent(v: &Value, total: i64, round_up: bool) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid int {n}")),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => {
                let p: i64 = p.parse().map_err(|_| format!("invalid percent {s:?}"))?;
                let scaled = p * total;
                Ok(if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                })
            }
            None => s
                .parse()
                .map_err(|_| format!("invalid int-or-string {s:?}")),
        },
        other => Err(format!("invalid int-or-string {other}")),
    }
}

/// Computes a PDB's budget over the pods of its namespace.
pub fn budget(pdb: &Value, pods: &[&Value]) -> Result<Budget, String> {
    let selector =
        LabelSelector::from_structured(pdb.pointer("/spec/selector").unwrap_or(&Value::Null))?;
    let matching: Vec<&&Value> = match &selector {
        None => Vec::new(),
        Some(sel) => pods
            .iter()
            .filter(|p| sel.matches_object(p))
            .filter(|p| !matches!(pod_phase(p), "Succeeded" | "Failed"))
            .collect(),
    };
    let expected = matching.len() as i64;
    let healthy = matching.iter().filter(|p| pod_healthy(p)).count() as i64;
    let spec = pdb.get("spec").cloned().unwrap_or(Value::Null);
    let desired = match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
        (Some(min), _) if !min.is_null() => int_or_percent(min, expected, true)?,
        (_, Some(max)) if !max.is_null() => {
            (expected - int_or_percent(max, expected, true)?).max(0)
        }
        _ => 1,
    };
    Ok(Budget {
        expected,
        healthy,
        desired,
    })
}

impl Store {
    pub fn new(history_limit: usize, tx: broadcast::Sender<WatchMsg>) -> Self {
        let uid_seed = Timestamp::now().as_nanosecond() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        Self {
            rv: 1000,
            uid_counter: 0,
            uid_seed,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            history_floor: 1000,
            tx,
            auto_pdb_status: false,
            syncing_pdbs: false,
        }
    }

    pub fn set_auto_pdb_status(&mut self, on: bool) {
        self.auto_pdb_status = on;
    }

    /// Follow-up writes another controller would make (PDB status).
    fn after_write(&mut self, rt: &'static ResourceType, ns: &str) {
        let relevant = rt.is_pod() || rt.is("policy", "poddisruptionbudgets");
        if !self.auto_pdb_status || self.syncing_pdbs || !relevant {
            return;
        }
        self.syncing_pdbs = true;
        // A PDB the controller cannot evaluate keeps its old status.
        let _ = self.sync_pdbs(Some(ns));
        self.syncing_pdbs = false;
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WatchMsg> {
        self.tx.subscribe()
    }

    /// Changes after `rv`, or 410 Expired when they are no longer retained.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.history_floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.history_floor
            )));
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    pub fn history_floor(&self) -> u64 {
        self.history_floor
    }

    /// Forget all history: watches from any older rv now get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_floor = self.rv;
    }

    pub fn expire_watches(&self) {
        // No receivers is fine.
        let _ = self.tx.send(WatchMsg::Expire);
    }

    pub fn close_watches(&self) {
        let _ = self.tx.send(WatchMsg::Close);
    }

    fn key(rt: &'static ResourceType, ns: &str, name: &str) -> ObjKey {
        let ns = if rt.namespaced { ns } else { "" };
        (rt.group, rt.plural, ns.to_string(), name.to_string())
    }

    pub fn get(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(rt, ns, name))
    }

    /// Objects of a kind in key order (namespace, name); `ns: None` = all.
    pub fn list(&self, rt: &'static ResourceType, ns: Option<&str>) -> Vec<&Value> {
        self.list_after(rt, ns, None).collect()
    }

    /// The objects of `rt` (in `ns`, when given) in (namespace, name) order,
    /// starting after `after` — a page of a paged list seeks to its start
    /// instead of walking every earlier object, as etcd's range reads do.
    pub fn list_after<'a, 'n>(
        &'a self,
        rt: &'static ResourceType,
        ns: Option<&'n str>,
        after: Option<&(String, String)>,
    ) -> impl Iterator<Item = &'a Value> + use<'a, 'n> {
        use std::ops::Bound;
        let start = match after {
            Some((n, name)) => Bound::Excluded((rt.group, rt.plural, n.clone(), name.clone())),
            None => Bound::Included((
                rt.group,
                rt.plural,
                ns.unwrap_or("").to_string(),
                String::new(),
            )),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |((g, p, n, _), _)| {
                *g == rt.group && *p == rt.plural && ns.is_none_or(|want| n == want)
            })
            .map(|(_, v)| v)
    }

    fn new_uid(&mut self) -> String {
        self.uid_counter += 1;
        let a = self
            .uid_seed
            .wrapping_add(self.uid_counter.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let b = a.rotate_left(29) ^ self.uid_counter;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0xfff,
            (b >> 48) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.rv;
            }
        }
        let _ = self.tx.send(WatchMsg::Change(change));
    }

    fn stamp(&mut self, obj: &mut Value) -> u64 {
        self.rv += 1;
        meta_mut(obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.rv
    }

    fn insert_new(&mut self, rt: &'static ResourceType, key: ObjKey, mut obj: Value) -> Value {
        let rv = self.stamp(&mut obj);
        let ns = key.2.clone();
        self.objects.insert(key, obj.clone());
        self.record(Change {
            rv,
            rt,
            event: EventType::Added,
            object: obj.clone(),
            previous: None,
        });
        self.after_write(rt, &ns);
        obj
    }

    fn remove(&mut self, rt: &'static ResourceType, key: &ObjKey, mut last: Value) -> Value {
        let previous = self.objects.remove(key);
        let rv = self.stamp(&mut last);
        self.record(Change {
            rv,
            rt,
            event: EventType::Deleted,
            object: last.clone(),
            previous,
        });
        self.after_write(rt, &key.2);
        last
    }

    /// Stores `new` over `old`: no-op when unchanged, removal when a
    /// terminating object has nothing left holding it.
    fn commit_existing(
        &mut self,
        rt: &'static ResourceType,
        key: ObjKey,
        old: Value,
        mut new: Value,
    ) -> Value {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            v
        };
        if strip(&new) == strip(&old) {
            return old;
        }
        if ready_to_remove(&new) {
            return self.remove(rt, &key, new);
        }
        let rv = self.stamp(&mut new);
        let ns = key.2.clone();
        self.objects.insert(key, new.clone());
        self.record(Change {
            rv,
            rt,
            event: EventType::Modified,
            object: new.clone(),
            previous: Some(old),
        });
        self.after_write(rt, &ns);
        new
    }

    fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind {k:?} does not match the resource {:?} (want {:?})",
                rt.plural, rt.kind
            )));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != rt.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the apiVersion {av:?} does not match {:?}",
                rt.api_version()
            )));
        }
        obj["kind"] = json!(rt.kind);
        obj["apiVersion"] = json!(rt.api_version());
        Ok(())
    }

    /// POST semantics. `api` = through the HTTP API (admission: stamps, pod
    /// defaults, pod status reset); false = test hook (keeps what it's given).
    pub fn create(
        &mut self,
        rt: &'static ResourceType,
        path_ns: Option<&str>,
        mut obj: Value,
        api: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(rt, &mut obj)?;
        let body_ns = meta_str(&obj, "namespace").map(String::from);
        let ns = if rt.namespaced {
            match (path_ns, body_ns.as_deref()) {
                (Some(p), Some(b)) if p != b && !b.is_empty() => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(p), _) => p.to_string(),
                (None, Some(b)) if !b.is_empty() => b.to_string(),
                (None, _) if api => return Err(ApiError::path_not_found()),
                (None, _) => "default".to_string(),
            }
        } else {
            String::new()
        };
        let uid = self.new_uid();
        let rv_hint = self.rv + 1;
        let meta = meta_mut(&mut obj);
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    format!("{prefix}{}", suffix(rv_hint))
                }
                _ => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                rt,
                &name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        meta.insert("name".into(), json!(name));
        if api || !meta.contains_key("uid") {
            meta.insert("uid".into(), json!(uid));
        }
        if api || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        if api {
            meta.insert("generation".into(), json!(1));
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        if api && rt.is(super::webhooks::GROUP, super::webhooks::PLURAL) {
            super::webhooks::default_and_validate(&mut obj)?;
        }
        if api && rt.is_pod() {
            self.admit_priority(&name, &mut obj)?;
            default_pod(&mut obj);
            super::pod_dns::validate(rt, &name, &obj)?;
            // After name generation, as in the real server: refusals of
            // generateName pods name the generated name.
            self.admit_pod_security(&ns, &name, &obj)?;
        }
        if api && rt.is("", "namespaces") {
            let meta = meta_mut(&mut obj);
            let labels = meta.entry("labels").or_insert(json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            obj["status"] = json!({"phase": "Active"});
        }
        if rt.is("", "secrets") {
            fold_string_data(&mut obj);
        }
        if api && rt.is("", "services") {
            super::services::admit_create(rt, &mut obj, &self.cluster_ips())?;
        }
        if api && rt.is("apps", "replicasets") {
            super::apps::admit_create(rt, &obj)?;
        }
        let key = Self::key(rt, &ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        Ok(self.insert_new(rt, key, obj))
    }

    /// The ClusterIPs allocated to Services.
    fn cluster_ips(&self) -> std::collections::BTreeSet<String> {
        let services = lookup("", "v1", "services").expect("services are served");
        self.list(services, None)
            .into_iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(str::to_string)
            .collect()
    }

    /// The `Priority` admission plugin on pod create
    /// (plugin/pkg/admission/priority): the priority comes from the pod's
    /// PriorityClass (the built-in `system-*` ones, a stored one, or the
    /// global default when the pod names none, else 0); a class that does
    /// not exist, or a `priority`/`preemptionPolicy` in the spec that differs
    /// from the class's, is refused.
    fn admit_priority(&self, name: &str, pod: &mut Value) -> Result<(), ApiError> {
        let classes = lookup("scheduling.k8s.io", "v1", "priorityclasses").expect("served");
        let named = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(String::from);
        let class = |c: &Value| {
            (
                c.get("value").and_then(Value::as_i64).unwrap_or(0),
                c.get("preemptionPolicy")
                    .and_then(Value::as_str)
                    .map(String::from),
            )
        };
        let (value, policy) = match named.as_deref() {
            Some("system-node-critical") => (2_000_001_000, None),
            Some("system-cluster-critical") => (2_000_000_000, None),
            Some(n) => match self.get(classes, "", n) {
                Some(c) => class(c),
                None => {
                    return Err(ApiError::forbidden(
                        pods(),
                        name,
                        &format!("no PriorityClass with name {n} was found"),
                    ));
                }
            },
            None => match self
                .list(classes, None)
                .into_iter()
                .find(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            {
                Some(c) => {
                    if let Some(n) = meta_str(c, "name") {
                        pod["spec"]["priorityClassName"] = json!(n);
                    }
                    class(c)
                }
                None => (0, None),
            },
        };
        let policy = policy.unwrap_or_else(|| "PreemptLowerPriority".to_string());
        if let Some(p) = pod.pointer("/spec/priority").and_then(Value::as_i64)
            && p != value
        {
            return Err(ApiError::forbidden(
                pods(),
                name,
                &format!(
                    "the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
        if let Some(p) = pod
            .pointer("/spec/preemptionPolicy")
            .and_then(Value::as_str)
            && p != policy
        {
            return Err(ApiError::forbidden(
                pods(),
                name,
                &format!(
                    "the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
                ),
            ));
        }
        if !pod.get("spec").is_some_and(Value::is_object) {
            pod["spec"] = json!({});
        }
        pod["spec"]["priority"] = json!(value);
        pod["spec"]["preemptionPolicy"] = json!(policy);
        Ok(())
    }

    /// Pod Security Admission for a pod create or a significant update: the
    /// namespace's `enforce` label decides; a namespace that is not stored
    /// enforces nothing.
    fn admit_pod_security(&self, ns: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
        let Some(namespace) = self.get(namespaces(), "", ns) else {
            return Ok(());
        };
        let labels: BTreeMap<String, String> = namespace
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let policy = psa::enforce_policy(&labels);
        match psa::evaluate(&policy, &typed_pod(pod)?) {
            None => Ok(()),
            Some(why) => Err(ApiError::forbidden(pods(), name, &why)),
        }
    }

    /// Test hook: create or overwrite without admission or concurrency checks.
    pub fn upsert_raw(
        &mut self,
        rt: &'static ResourceType,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type(rt, &mut obj)?;
        let ns = meta_str(&obj, "namespace").unwrap_or("default").to_string();
        let Some(name) = meta_str(&obj, "name").map(String::from) else {
            return Err(ApiError::bad_request("metadata.name is required"));
        };
        let key = Self::key(rt, &ns, &name);
        match self.objects.get(&key).cloned() {
            None => self.create(rt, Some(&ns), obj, false),
            Some(old) => {
                let meta = meta_mut(&mut obj);
                for f in ["uid", "creationTimestamp"] {
                    if !meta.contains_key(f)
                        && let Some(v) = old.pointer(&format!("/metadata/{f}"))
                    {
                        meta.insert(f.into(), v.clone());
                    }
                }
                if rt.namespaced {
                    meta.insert("namespace".into(), json!(ns));
                }
                Ok(self.commit_existing(rt, key, old, obj))
            }
        }
    }

    /// Test hook: remove at once, ignoring finalizers and grace.
    pub fn remove_raw(&mut self, rt: &'static ResourceType, ns: &str, name: &str) -> Option<Value> {
        let key = Self::key(rt, ns, name);
        let last = self.objects.get(&key)?.clone();
        Some(self.remove(rt, &key, last))
    }

    /// Test hook: replace `.status` (no concurrency check).
    pub fn set_status_raw(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = old.clone();
        new["status"] = status;
        Ok(self.commit_existing(rt, key, old, new))
    }

    /// The update rules shared by PUT and PATCH.
    fn prepare_update(
        &self,
        rt: &'static ResourceType,
        old: &Value,
        mut new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let name = meta_str(old, "name").unwrap_or_default().to_string();
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::stale(rt, &name));
        }
        if let Some(uid) = meta_str(&new, "uid")
            && !uid.is_empty()
            && Some(uid) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {uid}",
                    meta_str(old, "uid").unwrap_or_default()
                ),
            ));
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name").unwrap_or_default()
            )));
        }
        if rt.namespaced
            && meta_str(&new, "namespace")
                .is_some_and(|n| !n.is_empty() && Some(n) != meta_str(old, "namespace"))
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Self::check_type(rt, &mut new)?;
        if status_only {
            let mut out = old.clone();
            match new.get("status") {
                Some(s) if !s.is_null() => out["status"] = s.clone(),
                _ => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            return Ok(out);
        }
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let meta = meta_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(f) {
                    Some(v) => {
                        meta.insert(f.into(), v.clone());
                    }
                    None => {
                        meta.remove(f);
                    }
                }
            }
        }
        if rt.status_subresource
            && let Some(m) = new.as_object_mut()
        {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        // Objects seeded through test hooks may lack server defaults; compare
        // against the defaulted form, as a real server always stores it.
        let mut old_defaulted = old.clone();
        if rt.is_pod() {
            default_pod_spec(&mut old_defaulted);
        }
        let old = &old_defaulted;
        if rt.is_pod() {
            default_pod_spec(&mut new);
            let frozen = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = spec.as_object_mut() {
                    for f in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
                        m.remove(f);
                    }
                    for list in ["containers", "initContainers", "ephemeralContainers"] {
                        if let Some(Value::Array(cs)) = m.get_mut(list) {
                            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                                c.remove("image");
                            }
                        }
                    }
                }
                spec
            };
            if frozen(&new) != frozen(old) {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        if rt.is(super::webhooks::GROUP, super::webhooks::PLURAL) {
            super::webhooks::default_and_validate(&mut new)?;
        }
        if rt.is("", "services") {
            super::services::admit_update(rt, old, &mut new)?;
        }
        if rt.is("apps", "replicasets") {
            super::apps::admit_update(rt, old, &new)?;
        }
        if rt.is_pod() && psa::significant_update(&typed_pod(old)?, &typed_pod(&new)?) {
            let ns = meta_str(old, "namespace").unwrap_or_default().to_string();
            self.admit_pod_security(&ns, &name, &new)?;
        }
        if is_terminating(old) {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        let body = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        if body(&new) != body(old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        Ok(new)
    }

    /// PUT (main resource or `/status`).
    pub fn update(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if !new.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        if meta_str(&new, "name") != Some(name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name").unwrap_or_default()
            )));
        }
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let prepared = self.prepare_update(rt, &old, new, status_only)?;
        Ok(self.commit_existing(rt, key, old, prepared))
    }

    /// PATCH (main resource or `/status`). Apply creates when absent.
    /// Returns the object and whether it was created.
    pub fn patch(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        status_only: bool,
    ) -> Result<(Value, bool), ApiError> {
        let key = Self::key(rt, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if kind == PatchKind::Apply && !status_only {
                if body.get("kind").is_none() || body.get("apiVersion").is_none() {
                    return Err(ApiError::bad_request(
                        "apply patches must set apiVersion and kind",
                    ));
                }
                if meta_str(body, "name").is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request(
                        "the name of the object does not match the name on the URL",
                    ));
                }
                let mut obj = body.clone();
                meta_mut(&mut obj).insert("name".into(), json!(name));
                let ns = rt.namespaced.then_some(ns);
                return self.create(rt, ns, obj, true).map(|o| (o, true));
            }
            return Err(ApiError::not_found(rt, name));
        };
        let mut doc = old.clone();
        match kind {
            PatchKind::Merge => merge_patch(&mut doc, body),
            PatchKind::Strategic | PatchKind::Apply => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("patch body must be a JSON object"));
                }
                strategic_merge(&mut doc, body)
            }
            PatchKind::Json => json_patch(&mut doc, body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "the server rejected our request due to an error in our request: {}",
                        e.0
                    ),
                )
            })?,
        }
        let prepared = self.prepare_update(rt, &old, doc, status_only)?;
        Ok((self.commit_existing(rt, key, old, prepared), false))
    }

    /// DELETE. `pod_grace_timer`: whether a pod in a grace period should be
    /// removed by a timer (else a kubelet-like actor must delete it with
    /// grace 0).
    pub fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
        pod_grace_timer: bool,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &opts.precondition_uid
            && Some(uid.as_str()) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_resource_version
            && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        let grace = if rt.is_pod() {
            let unbound = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            let terminal = matches!(pod_phase(&old), "Succeeded" | "Failed");
            if unbound || terminal {
                0
            } else {
                opts.grace_period_seconds
                    .or_else(|| {
                        old.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
                    .max(0)
            }
        } else {
            0
        };
        let current_grace = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let mut new = old.clone();
        if grace > 0 {
            // A repeated delete may only shorten a running grace period.
            if current_grace.is_some_and(|g| g <= grace) {
                return Ok(Deleted::Terminating {
                    object: old,
                    grace: None,
                });
            }
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(rfc3339_in(grace)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            let uid = meta_str(&new, "uid").unwrap_or_default().to_string();
            let object = self.commit_existing(rt, key, old, new);
            return Ok(Deleted::Terminating {
                object,
                grace: pod_grace_timer.then_some((grace as u64, uid)),
            });
        }
        let meta = meta_mut(&mut new);
        if !meta.contains_key("deletionTimestamp") {
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
        }
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if finalizers(&new).is_empty() {
            return Ok(Deleted::Removed(self.remove(rt, &key, new)));
        }
        let object = self.commit_existing(rt, key, old, new);
        Ok(Deleted::Terminating {
            object,
            grace: None,
        })
    }

    /// Grace period over: delete with grace 0 if it is still the same pod.
    pub fn finish_grace(&mut self, rt: &'static ResourceType, ns: &str, name: &str, uid: &str) {
        let Some(obj) = self.get(rt, ns, name) else {
            return;
        };
        if meta_str(obj, "uid") != Some(uid) || !is_terminating(obj) {
            return;
        }
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        // The pod exists (checked above), so this cannot be NotFound.
        let _ = self.delete(rt, ns, name, &opts, false);
    }

    /// POST pods/{name}/binding.
    pub fn bind(&mut self, ns: &str, name: &str, binding: &Value) -> Result<Value, ApiError> {
        let rt = pods();
        let target = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::invalid(rt, name, "target.name: Required value"))?;
        if let Some(k) = binding.pointer("/target/kind").and_then(Value::as_str)
            && !k.is_empty()
            && k != "Node"
        {
            return Err(ApiError::invalid(rt, name, "target.kind: must be Node"));
        }
        if meta_str(binding, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the binding does not match the pod name on the URL",
            ));
        }
        let key = Self::key(rt, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if is_terminating(&old) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(node) = old.pointer("/spec/nodeName").and_then(Value::as_str)
            && !node.is_empty()
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!("pod {name} is already assigned to node \"{node}\""),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(target);
        if let Some(ann) = binding
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            let meta = meta_mut(&mut new);
            let entry = meta.entry("annotations").or_insert(json!({}));
            if let Some(m) = entry.as_object_mut() {
                for (k, v) in ann {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
        if !new.get("status").is_some_and(Value::is_object) {
            new["status"] = json!({});
        }
        let mut conditions: Vec<Value> = new["status"]
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        conditions.push(scheduled);
        new["status"]["conditions"] = Value::Array(conditions);
        Ok(self.commit_existing(rt, key, old, new))
    }

    /// The PDB (at most one) guarding a pod: its name, budget, and whether
    /// its `unhealthyPodEvictionPolicy` is `AlwaysAllow`.
    pub fn pdb_for(&self, pod: &Value) -> Result<Option<(String, Budget, bool)>, ApiError> {
        let ns = meta_str(pod, "namespace").unwrap_or_default();
        let pods: Vec<&Value> = self.list(pods(), Some(ns));
        let mut found = Vec::new();
        // kube-apiserver never applies PDBs to pods without labels.
        let unlabeled = pod
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_none_or(|l| l.is_empty());
        if unlabeled {
            return Ok(None);
        }
        for pdb in self.list(pdbs(), Some(ns)) {
            let sel = LabelSelector::from_structured(
                pdb.pointer("/spec/selector").unwrap_or(&Value::Null),
            )
            .map_err(ApiError::internal)?;
            if sel.is_some_and(|s| s.matches_object(pod)) {
                let b = budget(pdb, &pods).map_err(ApiError::internal)?;
                let always = pdb
                    .pointer("/spec/unhealthyPodEvictionPolicy")
                    .and_then(Value::as_str)
                    == Some("AlwaysAllow");
                found.push((
                    meta_str(pdb, "name").unwrap_or_default().to_string(),
                    b,
                    always,
                ));
            }
        }
        if found.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        Ok(found.pop())
    }

    /// POST pods/{name}/eviction.
    pub fn evict(
        &mut self,
        ns: &str,
        name: &str,
        eviction: &Value,
        pod_grace_timer: bool,
    ) -> Result<Deleted, ApiError> {
        let rt = pods();
        if meta_str(eviction, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let opts =
            DeleteOptions::from_value(eviction.get("deleteOptions").unwrap_or(&Value::Null))?;
        let pod = self
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let ignore_pdb =
            is_terminating(&pod) || matches!(pod_phase(&pod), "Succeeded" | "Failed" | "Pending");
        if !ignore_pdb && let Some((pdb_name, b, always)) = self.pdb_for(&pod)? {
            let allowed = if pod_healthy(&pod) {
                b.disruptions_allowed() > 0
            } else {
                // As kube-apiserver: an unhealthy pod may go while the
                // budget is met (IfHealthyBudget) or always (AlwaysAllow).
                always || (b.healthy >= b.desired && b.desired > 0)
            };
            if !allowed {
                let mut err = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                err.details = Some(json!({"causes": [{
                    "reason": "DisruptionBudget",
                    "message": format!(
                        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        b.desired, b.healthy
                    ),
                }]}));
                return Err(err);
            }
        }
        self.delete(rt, ns, name, &opts, pod_grace_timer)
    }

    /// Test hook: write each PDB's status as the disruption controller would.
    pub fn sync_disruption_budgets(&mut self) -> Result<(), ApiError> {
        self.sync_pdbs(None)
    }

    fn sync_pdbs(&mut self, ns: Option<&str>) -> Result<(), ApiError> {
        let all: Vec<Value> = self.list(pdbs(), ns).into_iter().cloned().collect();
        for pdb in all {
            let ns = meta_str(&pdb, "namespace").unwrap_or_default().to_string();
            let name = meta_str(&pdb, "name").unwrap_or_default().to_string();
            let b = {
                let pods = self.list(pods(), Some(&ns));
                budget(&pdb, &pods).map_err(ApiError::internal)?
            };
            let mut status = pdb.get("status").cloned().unwrap_or(json!({}));
            status["observedGeneration"] = pdb
                .pointer("/metadata/generation")
                .cloned()
                .unwrap_or(json!(1));
            status["currentHealthy"] = json!(b.healthy);
            status["desiredHealthy"] = json!(b.desired);
            status["expectedPods"] = json!(b.expected);
            status["disruptionsAllowed"] = json!(b.disruptions_allowed());
            self.set_status_raw(pdbs(), &ns, &name, status)?;
        }
        Ok(())
    }
}

fn pods() -> &'static ResourceType {
    // The table always contains pods; a missing entry is a bug in this file.
    lookup("", "v1", "pods").expect("pods are served")
}

fn namespaces() -> &'static ResourceType {
    lookup("", "v1", "namespaces").expect("namespaces are served")
}

/// A stored or submitted pod as the typed object PSA reads.
fn typed_pod(pod: &Value) -> Result<k8s_openapi::api::core::v1::Pod, ApiError> {
    serde_json::from_value(pod.clone())
        .map_err(|e| ApiError::bad_request(format!("failed to decode pod: {e}")))
}

fn pdbs() -> &'static ResourceType {
    lookup("policy", "v1", "poddisruptionbudgets").expect("PDBs are served")
}

/// generateName suffix: 5 chars from the real server's alphabet.
fn suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Defaults the real API server fills in on pod create.
fn default_pod(pod: &mut Value) {
    default_pod_spec(pod);
    pod["status"] = json!({"phase": "Pending"});
}

/// Spec defaults, applied to every pod write (as API defaulting is).
pub(super) fn default_pod_spec(pod: &mut Value) {
    if !pod.get("spec").is_some_and(Value::is_object) {
        pod["spec"] = json!({});
    }
    let spec = &mut pod["spec"];
    for (k, v) in [
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("priority", json!(0)),
        ("enableServiceLinks", json!(true)),
    ] {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
}

/// Secrets: `stringData` is folded into base64 `data` on write.
fn fold_string_data(secret: &mut Value) {
    let Some(sd) = secret.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    let Some(sd) = sd.as_object().cloned() else {
        return;
    };
    if !secret.get("data").is_some_and(Value::is_object) {
        secret["data"] = json!({});
    }
    for (k, v) in sd {
        if let Some(s) = v.as_str() {
            secret["data"][k] = json!(base64(s.as_bytes()));
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
