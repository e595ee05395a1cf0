//! The rest of a cluster, for end-to-end tests: small stand-ins for
//! kube-scheduler (calling the real extender over HTTP), the kubelet and a
//! ReplicaSet controller (scale-up, and scale-down with
//! kube-controller-manager's choice of victims), and a cluster autoscaler
//! that grows the pool an unschedulable pod could use. They talk to the test API
//! server through `kube::Client` like the real components, poll every
//! `TICK`, and stop when their task is aborted.
//!
//! They are deliberately simple: the scheduler filters on readiness,
//! cordons, taints (`NoSchedule`, `NoExecute`), `nodeSelector`, required
//! node affinity (every operator) and requests — its own code, written from
//! kube-scheduler's rules, not spillway's; scores
//! through the extender's `/prioritize` (first node wins ties); and preempts
//! only capacity placeholders. Enough to drive spillway's decisions, not a
//! scheduler.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spillway::cluster::pod_requests;
use spillway::units::{Resources, parse_cpu_millis, parse_memory_bytes};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(100);
pub const SCHEDULER_NAME: &str = "spillway-scheduler";
const PLACEHOLDER_LABEL: &str = "spillway.io/placeholder-for";

/// What the test scheduler did: pod name → (node, when bound).
#[derive(Debug, Default, Clone)]
pub struct Bindings(pub Arc<Mutex<Vec<(String, String, Instant)>>>);

impl Bindings {
    pub fn all(&self) -> Vec<(String, String, Instant)> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

fn allocatable(node: &Node) -> Resources {
    let a = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |k: &str| {
        a.and_then(|a| a.get(k))
            .map(|q| q.0.clone())
            .unwrap_or_default()
    };
    Resources::new(
        parse_cpu_millis(&get("cpu")).unwrap_or(0),
        parse_memory_bytes(&get("memory")).unwrap_or(0),
    )
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
}

/// kube-scheduler's `TaintToleration` filter: every `NoSchedule` and
/// `NoExecute` taint needs a toleration (`Toleration.ToleratesTaint`: an
/// empty effect matches all effects, an empty key with `Exists` all keys).
fn tolerates(pod: &Pod, node: &Node) -> bool {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            tols.iter().any(|tol| {
                let eff_ok = tol
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == t.effect);
                let key_ok = tol
                    .key
                    .as_deref()
                    .is_none_or(|k| k.is_empty() || k == t.key);
                let val_ok = match tol.operator.as_deref().unwrap_or("Equal") {
                    "Exists" => true,
                    "Equal" | "" => {
                        tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("")
                    }
                    _ => false,
                };
                eff_ok && key_ok && val_ok
            })
        })
}

/// One node selector requirement against a value (labels.Selector rules).
fn requirement_ok(op: &str, values: &[String], v: Option<&String>) -> bool {
    let int = |s: &str| s.parse::<i64>().ok();
    match op {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => match (values, v.and_then(|v| int(v))) {
            ([bound], Some(have)) => {
                int(bound).is_some_and(|b| if op == "Gt" { have > b } else { have < b })
            }
            _ => false,
        },
        _ => false,
    }
}

/// kube-scheduler's `NodeAffinity` filter: `nodeSelector` (every pair) and
/// the required affinity (terms ORed, a term's requirements ANDed, an empty
/// term matching nothing; `matchFields` on `metadata.name`).
fn affinity_ok(pod: &Pod, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return false;
    }
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone());
    let Some(terms) = terms else { return true };
    let name = node.metadata.name.clone().unwrap_or_default();
    terms.iter().any(|t| {
        let exprs = t.match_expressions.clone().unwrap_or_default();
        let fields = t.match_fields.clone().unwrap_or_default();
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| {
                requirement_ok(
                    &e.operator,
                    &e.values.clone().unwrap_or_default(),
                    labels.get(&e.key),
                )
            })
            && fields.iter().all(|f| {
                f.key == "metadata.name"
                    && requirement_ok(
                        &f.operator,
                        &f.values.clone().unwrap_or_default(),
                        Some(&name),
                    )
            })
    })
}

/// A node pool the test cluster autoscaler may grow: new nodes get these
/// labels (plus `agentpool`), taints and allocatable.
#[derive(Debug, Clone)]
pub struct PoolTemplate {
    pub name: String,
    pub max: usize,
    pub cpu: String,
    pub memory: String,
    pub labels: BTreeMap<String, String>,
    /// (key, value, effect)
    pub taints: Vec<(String, String, String)>,
    /// The nodes' allocatable pod count (`maxPods`; AKS defaults to 110,
    /// or 30 with Azure CNI).
    pub max_pods: u32,
}

impl PoolTemplate {
    fn node(&self, index: usize) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("agentpool".into(), self.name.clone());
        let name = format!("aks-{}-{index}", self.name);
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": self.taints.iter().map(|(k, v, e)| json!({"key": k, "value": v, "effect": e})).collect::<Vec<_>>()},
        }))
        .unwrap_or_default()
    }
}

/// The cluster autoscaler's part: a pod the scheduler marked unschedulable
/// (placeholders included; pods on the virtual node are invisible to it)
/// makes a pool grow by one node — the first pool whose template node the
/// pod's tolerations, nodeSelector and required affinity allow and whose
/// node fits its requests (a new node has `max_pods` free slots, so a pod
/// refused for "Too many pods" grows a pool too), below the pool's max.
/// New nodes join Ready.
/// `added` records (pool, node) in order.
pub async fn cluster_autoscaler(
    client: kube::Client,
    pools: Vec<PoolTemplate>,
    added: Arc<Mutex<Vec<(String, String)>>>,
) {
    let pods_all: Api<Pod> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    loop {
        tokio::time::sleep(TICK * 5).await;
        let (Ok(nodes), Ok(pods)) = (
            nodes_api.list(&ListParams::default()).await,
            pods_all.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        let unschedulable = pods.items.iter().filter(|p| {
            live(p)
                && p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    })
        });
        let mut grow: BTreeSet<usize> = BTreeSet::new();
        for pod in unschedulable {
            let req = pod_requests(pod).unwrap_or_default();
            let pool = pools.iter().position(|t| {
                let n = t.node(0);
                let alloc = Resources::new(
                    parse_cpu_millis(&t.cpu).unwrap_or(0),
                    parse_memory_bytes(&t.memory).unwrap_or(0),
                );
                tolerates(pod, &n) && affinity_ok(pod, &n) && req.fits_in(&alloc)
            });
            if let Some(i) = pool {
                grow.insert(i);
            }
        }
        for i in grow {
            let t = &pools[i];
            let members = nodes
                .items
                .iter()
                .filter(|n| {
                    n.metadata.labels.as_ref().and_then(|l| l.get("agentpool")) == Some(&t.name)
                })
                .count();
            if members >= t.max {
                continue;
            }
            let node = t.node(members);
            let name = node.metadata.name.clone().unwrap_or_default();
            if nodes_api
                .create(&PostParams::default(), &node)
                .await
                .is_err()
            {
                continue;
            }
            let pods = t.max_pods.to_string();
            let status = json!({"status": {
                "allocatable": {"cpu": t.cpu, "memory": t.memory, "pods": pods},
                "capacity": {"cpu": t.cpu, "memory": t.memory, "pods": pods},
                "conditions": [{"type": "Ready", "status": "True"}],
            }});
            let _ = nodes_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
            if let Ok(mut a) = added.lock() {
                a.push((t.name.clone(), name));
            }
        }
    }
}

fn is_virtual(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("type"))
        .map(String::as_str)
        == Some("virtual-kubelet")
}

fn is_placeholder(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(PLACEHOLDER_LABEL))
}

fn live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

async fn post_json(client: &reqwest_lite::Client, url: &str, body: &Value) -> Option<Value> {
    client.post(url, body).await
}

/// POST `body` to the extender at `addr` (`host:port`) under `path`, as
/// kube-scheduler does; its JSON answer.
pub async fn extender_call(addr: &str, path: &str, body: &Value) -> Option<Value> {
    post_json(&reqwest_lite::Client, &format!("http://{addr}{path}"), body).await
}

/// A minimal HTTP/1.1 JSON client on tokio (the crate has no HTTP client dependency).
mod reqwest_lite {
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Default)]
    pub struct Client;

    impl Client {
        pub async fn post(&self, url: &str, body: &Value) -> Option<Value> {
            let rest = url.strip_prefix("http://")?;
            let (host, path) = rest.split_once('/')?;
            let body = body.to_string();
            let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
            let req = format!(
                "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&buf);
            let (_, body) = text.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        }
    }
}

/// How long an unschedulable pod waits before the test scheduler retries it
/// on its own, as kube-scheduler's unschedulable queue does (minutes there).
pub const UNSCHEDULABLE_BACKOFF: Duration = Duration::from_secs(30);

/// What can make an unschedulable pod schedulable, as a comparable value:
/// the pod's labels, annotations and spec (an update of the pod itself).
fn pod_fingerprint(p: &Pod) -> String {
    json!([p.metadata.labels, p.metadata.annotations, p.spec]).to_string()
}

/// kube-scheduler's part: bind pending pods; pods with `schedulerName:
/// spillway-scheduler` go through the extender at `extender` (host:port).
///
/// Like kube-scheduler's queue, a pod it could not place is parked and only
/// retried when the pod itself is updated (e.g. spillway's nudge annotation),
/// when nodes change or a bound pod goes away, or after
/// [`UNSCHEDULABLE_BACKOFF`]. This follows kube-scheduler for pods an
/// extender rejected nodes for: those carry `ExtenderName` among their
/// unschedulable plugins, whose default enqueue extension requeues them on
/// any event, their own `UnschedulablePod/Update` included (see the nudge
/// notes in src/autoscaler/plan.rs). kube-scheduler also requeues on other
/// events this model ignores; the nudge test relies only on the pod's own update.
pub async fn scheduler(client: kube::Client, extender: String, bindings: Bindings) {
    let http = reqwest_lite::Client;
    let pods_all: Api<Pod> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut marked_unschedulable: BTreeSet<String> = BTreeSet::new();
    // ns/name → (fingerprint, cluster epoch, when parked)
    let mut parked: BTreeMap<String, (String, u64, Instant)> = BTreeMap::new();
    let mut epoch = 0u64;
    let mut last_nodes: Vec<String> = Vec::new();
    let mut last_bound: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(TICK).await;
        let (Ok(nodes), Ok(pods)) = (
            nodes_api.list(&ListParams::default()).await,
            pods_all.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        let mut nodes: Vec<Node> = nodes.items.into_iter().filter(ready).collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        // Cluster events that requeue parked pods (kube-scheduler's queueing
        // hints): node set or allocatable changes, bound pods removed.
        let node_names: Vec<String> = nodes
            .iter()
            .filter_map(|n| {
                let allocatable = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
                Some(format!("{}={allocatable:?}", n.metadata.name.as_deref()?))
            })
            .collect();
        let bound: BTreeSet<String> = pods
            .items
            .iter()
            .filter(|p| live(p) && p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        if node_names != last_nodes || !last_bound.is_subset(&bound) {
            epoch += 1;
        }
        last_nodes = node_names;
        last_bound = bound;
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        // kube-scheduler's NodeResourcesFit also counts pods against the
        // node's allocatable `pods` ("Too many pods").
        let mut count: BTreeMap<String, u32> = BTreeMap::new();
        for p in pods.items.iter().filter(|p| live(p)) {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                let r = pod_requests(p).unwrap_or_default();
                *count.entry(n.clone()).or_default() += 1;
                let e = used.entry(n).or_default();
                *e = e.add(&r);
            }
        }
        let mut pending: Vec<&Pod> = pods
            .items
            .iter()
            .filter(|p| live(p) && p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .collect();
        // Real pods before placeholders, then oldest first.
        pending.sort_by_key(|p| {
            (
                is_placeholder(p),
                p.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        });
        for pod in pending {
            let (Some(ns), Some(name)) =
                (pod.metadata.namespace.clone(), pod.metadata.name.clone())
            else {
                continue;
            };
            let key = format!("{ns}/{name}");
            if let Some((fp, at_epoch, since)) = parked.get(&key)
                && *fp == pod_fingerprint(pod)
                && *at_epoch == epoch
                && since.elapsed() < UNSCHEDULABLE_BACKOFF
            {
                continue;
            }
            parked.remove(&key);
            let req = pod_requests(pod).unwrap_or_default();
            let fits =
                |n: &Node, used: &BTreeMap<String, Resources>, count: &BTreeMap<String, u32>| {
                    let name = n.metadata.name.as_deref().unwrap_or_default();
                    let room_for_a_pod = spillway::cluster::node_max_pods(n)
                        .is_none_or(|max| count.get(name).copied().unwrap_or(0) < max);
                    room_for_a_pod
                        && (is_virtual(n) || {
                            let u = used.get(name).copied().unwrap_or_default();
                            u.add(&req).fits_in(&allocatable(n))
                        })
                };
            let feasible: Vec<&Node> = nodes
                .iter()
                .filter(|n| tolerates(pod, n) && affinity_ok(pod, n) && fits(n, &used, &count))
                .collect();
            let names: Vec<String> = feasible
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            let uses_extender =
                pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER_NAME);
            let mut chosen: Option<String> = None;
            if uses_extender && !names.is_empty() {
                let args = json!({ "Pod": pod, "Nodes": null, "NodeNames": names });
                if let Some(res) =
                    post_json(&http, &format!("http://{extender}/filter"), &args).await
                {
                    let left: Vec<String> = res["NodeNames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect();
                    if !left.is_empty() {
                        let args = json!({ "Pod": pod, "Nodes": null, "NodeNames": left });
                        let scores =
                            post_json(&http, &format!("http://{extender}/prioritize"), &args).await;
                        let best = scores
                            .as_ref()
                            .and_then(|s| s.as_array())
                            .into_iter()
                            .flatten()
                            .filter_map(|h| {
                                Some((h["Host"].as_str()?.to_string(), h["Score"].as_i64()?))
                            })
                            .max_by_key(|(host, score)| (*score, std::cmp::Reverse(host.clone())));
                        chosen = best.map(|(h, _)| h).or_else(|| left.first().cloned());
                    }
                }
            } else if !uses_extender {
                chosen = names.first().cloned();
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match chosen {
                Some(node) => {
                    let binding = json!({
                        "apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name, "namespace": ns},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                    });
                    if api
                        .create_subresource::<Value, Value>(
                            "binding",
                            &name,
                            &PostParams::default(),
                            &binding,
                        )
                        .await
                        .is_ok()
                    {
                        *count.entry(node.clone()).or_default() += 1;
                        let e = used.entry(node.clone()).or_default();
                        *e = e.add(&req);
                        if let Ok(mut b) = bindings.0.lock() {
                            b.push((name.clone(), node, Instant::now()));
                        }
                    }
                }
                None => {
                    // Preemption of placeholders for real pods that fit no node.
                    if !is_placeholder(pod)
                        && preempt_placeholders(&client, &pods.items, &nodes, &used, pod, &req)
                            .await
                    {
                        continue;
                    }
                    parked.insert(key.clone(), (pod_fingerprint(pod), epoch, Instant::now()));
                    if marked_unschedulable.insert(key) {
                        let status = json!({"status": {"conditions": [{
                            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/N nodes are available",
                            "lastTransitionTime": pod.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                        }]}});
                        let _ = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
            }
        }
    }
}

/// Delete placeholders on one VM node so that `pod` fits there. True if any were deleted.
async fn preempt_placeholders(
    client: &kube::Client,
    pods: &[Pod],
    nodes: &[Node],
    used: &BTreeMap<String, Resources>,
    pod: &Pod,
    req: &Resources,
) -> bool {
    for n in nodes
        .iter()
        .filter(|n| !is_virtual(n) && tolerates(pod, n) && affinity_ok(pod, n))
    {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut free = allocatable(n).saturating_sub(&used.get(&name).copied().unwrap_or_default());
        let mut victims = Vec::new();
        for p in pods.iter().filter(|p| live(p) && is_placeholder(p)) {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && !req.fits_in(&free)
            {
                free = free.add(&pod_requests(p).unwrap_or_default());
                victims.push(p);
            }
        }
        if req.fits_in(&free) && !victims.is_empty() {
            for v in victims {
                let (Some(ns), Some(vn)) = (v.metadata.namespace.clone(), v.metadata.name.clone())
                else {
                    continue;
                };
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let _ = api
                    .delete(&vn, &DeleteParams::default().grace_period(0))
                    .await;
            }
            return true;
        }
    }
    false
}

/// The kubelet's part: bound pods become Running and Ready; terminating pods go.
pub async fn kubelet(client: kube::Client) {
    kubelet_except(client, BTreeSet::new()).await
}

/// [`kubelet`] for every node but `skip` (nodes another kubelet serves,
/// e.g. spillway's embedded provider on the virtual node).
pub async fn kubelet_except(client: kube::Client, skip: BTreeSet<String>) {
    let pods_all: Api<Pod> = Api::all(client.clone());
    loop {
        tokio::time::sleep(TICK).await;
        let Ok(pods) = pods_all.list(&ListParams::default()).await else {
            continue;
        };
        for p in pods.items {
            let (Some(ns), Some(name)) = (p.metadata.namespace.clone(), p.metadata.name.clone())
            else {
                continue;
            };
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if node.is_some_and(|n| skip.contains(n)) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if p.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if bound && !running {
                let status = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ]}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
        }
    }
}

/// A ReplicaSet controller's part: keep `replicas` live pods made from
/// `template`. `replicas` may change while the actor runs (a scale of the
/// ReplicaSet): surplus pods are deleted in [`pods_to_delete`] order, as
/// kube-controller-manager's ReplicaSet controller does.
pub async fn replicaset(
    client: kube::Client,
    ns: String,
    rs_name: String,
    rs_uid: String,
    replicas: Arc<AtomicUsize>,
    template: Pod,
    created: Arc<Mutex<usize>>,
) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    loop {
        let owned: Vec<Pod> = match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter(live)
                .filter(|p| {
                    p.metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|r| r.uid == rs_uid))
                })
                .collect(),
            Err(_) => {
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        let desired = replicas.load(Ordering::SeqCst);
        if owned.len() > desired {
            for victim in pods_to_delete(&owned, owned.len() - desired) {
                if let Some(name) = victim.metadata.name.as_deref() {
                    let _ = api.delete(name, &DeleteParams::default()).await;
                }
            }
        }
        for _ in owned.len()..desired {
            let n = match created.lock() {
                Ok(mut c) => {
                    *c += 1;
                    *c
                }
                Err(_) => break,
            };
            let mut pod = template.clone();
            pod.metadata.name = Some(format!("{rs_name}-{n}"));
            pod.metadata.namespace = Some(ns.clone());
            pod.metadata.uid = None;
            pod.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: rs_name.clone(),
                    uid: rs_uid.clone(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]);
            let _ = api.create(&PostParams::default(), &pod).await;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The `diff` pods a ReplicaSet scale-down deletes out of its active pods
/// `owned`, the way kube-controller-manager picks them: `getPodsToDelete`
/// (pkg/controller/replicaset/replica_set.go) sorts by `ActivePodsWithRanks`
/// (pkg/controller/controller_utils.go) and takes the first `diff`. The rank
/// of a pod is the number of active related pods on its node
/// (`getPodsRankedByRelatedPodsOnSameNode`; for a ReplicaSet without a
/// Deployment the related pods are its own).
pub fn pods_to_delete(owned: &[Pod], diff: usize) -> Vec<&Pod> {
    let mut on_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in owned.iter().filter(|p| live(p)) {
        *on_node.entry(node_name(p)).or_default() += 1;
    }
    let mut ranked: Vec<(&Pod, usize)> = owned
        .iter()
        .map(|p| (p, on_node.get(node_name(p)).copied().unwrap_or(0)))
        .collect();
    // No need to sort when all go (as upstream).
    if diff < ranked.len() {
        ranked.sort_by(deletion_order);
    }
    ranked.into_iter().take(diff).map(|(p, _)| p).collect()
}

fn node_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// `podPhaseToOrdinal`: Pending < Unknown < Running; any other phase (or
/// none) is 0, as a missing key in the Go map.
fn phase_ordinal(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

/// `podutil.IsPodReady`, and the `Ready` condition's lastTransitionTime
/// (`podReadyTime`; `None` is Go's zero time).
fn ready_since(p: &Pod) -> Option<Option<i64>> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
        })
}

/// `GetDeletionCostFromPodAnnotations`: 0 when absent or invalid; values with
/// a leading `+` or leading zeros are invalid; the value is an int32.
pub fn deletion_cost(p: &Pod) -> i32 {
    let Some(v) = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
    else {
        return 0;
    };
    let valid_first = match v.as_bytes().first() {
        Some(b'-') | Some(b'1'..=b'9') => true,
        Some(b'0') => v == "0",
        _ => false,
    };
    if !valid_first {
        return 0;
    }
    v.parse::<i32>().unwrap_or(0)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// Go's `afterOrZero(t1, t2)` as "t1 goes first": a zero time goes first,
/// else the later time does.
fn after_or_zero(t1: Option<i64>, t2: Option<i64>) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Greater, Less};
    let first = match (t1, t2) {
        (None, _) | (_, None) => t1.is_none(),
        (Some(a), Some(b)) => a > b,
    };
    if first { Less } else { Greater }
}

/// `ActivePodsWithRanks.Less` as an ordering (`Less` = deleted first), rule
/// for rule:
/// 1. unassigned < assigned;
/// 2. Pending < Unknown < Running;
/// 3. not ready < ready;
/// 4. lower pod-deletion-cost < higher (the PodDeletionCost gate is on by
///    default since 1.22);
/// 5. more related pods on the same node < fewer;
/// 6. both ready: ready more recently (or zero time) < longer ready;
/// 7. more container restarts < fewer;
/// 8. created more recently (or zero time) < older.
///
/// Rules 6 and 8 are the LogarithmicScaleDown-off form (exact times, no
/// log2 buckets with a UID tie-break); equal pods keep their list order.
fn deletion_order(a: &(&Pod, usize), b: &(&Pod, usize)) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let ((pa, rank_a), (pb, rank_b)) = (*a, *b);
    let (na, nb) = (node_name(pa), node_name(pb));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() { Less } else { Greater };
    }
    let ord = phase_ordinal(pa).cmp(&phase_ordinal(pb));
    if ord != Equal {
        return ord;
    }
    let (ra, rb) = (ready_since(pa), ready_since(pb));
    if ra.is_some() != rb.is_some() {
        return if ra.is_none() { Less } else { Greater };
    }
    let ord = deletion_cost(pa).cmp(&deletion_cost(pb));
    if ord != Equal {
        return ord;
    }
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    if let (Some(ta), Some(tb)) = (ra, rb)
        && ta != tb
    {
        return after_or_zero(ta, tb);
    }
    let ord = max_restarts(pb).cmp(&max_restarts(pa));
    if ord != Equal {
        return ord;
    }
    let created = |p: &Pod| {
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
    };
    if created(pa) != created(pb) {
        return after_or_zero(created(pa), created(pb));
    }
    Equal
}
