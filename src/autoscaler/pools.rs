//! What the cluster autoscaler knows about VM pools, and how long VMs take.
//!
//! - [`parse_ca_status`] reads the `kube-system/cluster-autoscaler-status`
//!   ConfigMap (`data.status`), in both the old text form and the YAML form
//!   of newer cluster-autoscalers: per node group its min/max, the target it
//!   asked the cloud for, how many nodes registered and are ready, and since
//!   when a scale-up is in progress.
//! - [`ProvisionLearner`] learns each pool's provisioning time (scale-up
//!   request → node Ready) as a rolling median of what it observed.
//! - [`apply`] puts both into the engine's snapshot: pool bounds, upcoming
//!   nodes, learned provisioning times.
//!
//! Pure: the caller passes the ConfigMap text, node observations and `now`.

use crate::decision::{Snapshot, UpcomingNode};
use crate::units::{Duration, Timestamp};
use std::collections::{BTreeMap, VecDeque};

/// One node group as the cluster autoscaler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupStatus {
    /// The node group name (on AKS the scale set, `aks-<pool>-<id>-vmss`).
    pub name: String,
    /// The AKS pool name derived from it.
    pub pool: String,
    pub min: u32,
    pub max: u32,
    /// Nodes the autoscaler asked the cloud for.
    pub target: u32,
    pub registered: u32,
    pub ready: u32,
    /// Registered but not Ready yet.
    pub not_started: u32,
    /// Since when a scale-up has been in progress, if one is.
    pub scale_up_since: Option<Timestamp>,
}

impl NodeGroupStatus {
    /// Nodes asked for that have not become Ready.
    pub fn upcoming(&self) -> u32 {
        self.target.saturating_sub(self.registered) + self.not_started
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaStatusError {
    #[error("cluster-autoscaler status: {0}")]
    Invalid(String),
}

/// `aks-user-12345678-vmss` → `user`; other names are kept as they are.
pub fn pool_of_node_group(name: &str) -> String {
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() >= 4 && parts[0] == "aks" && parts[parts.len() - 1] == "vmss" {
        return parts[1..parts.len() - 2].join("-");
    }
    name.rsplit('/').next().unwrap_or(name).to_string()
}

/// Parse `data.status` of the cluster-autoscaler status ConfigMap.
pub fn parse_ca_status(text: &str) -> Result<Vec<NodeGroupStatus>, CaStatusError> {
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("NodeGroups:"))
    {
        Ok(parse_text(text))
    } else {
        parse_yaml(text)
    }
}

/// `2021-10-06 20:29:46.561893828 +0000 UTC m=+547.3` or RFC 3339.
fn parse_time(s: &str) -> Option<Timestamp> {
    let s = s.trim().trim_matches('"');
    if let Ok(t) = Timestamp::parse_rfc3339(s) {
        return Some(t);
    }
    let mut it = s.split_whitespace();
    let (date, time) = (it.next()?, it.next()?);
    let time = time.split('.').next()?;
    Timestamp::parse_rfc3339(&format!("{date}T{time}Z")).ok()
}

/// `key=value` pairs inside a condition message.
fn counts(msg: &str) -> BTreeMap<String, u32> {
    msg.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn parse_text(text: &str) -> Vec<NodeGroupStatus> {
    let mut groups = Vec::new();
    let mut in_groups = false;
    let mut current: Option<NodeGroupStatus> = None;
    let mut in_scale_up = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("NodeGroups:") {
            in_groups = true;
            continue;
        }
        if !in_groups {
            continue;
        }
        let Some((key, value)) = t.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => {
                groups.extend(current.take());
                current = Some(NodeGroupStatus {
                    name: value.to_string(),
                    pool: pool_of_node_group(value),
                    min: 0,
                    max: 0,
                    target: 0,
                    registered: 0,
                    ready: 0,
                    not_started: 0,
                    scale_up_since: None,
                });
                in_scale_up = false;
            }
            "Health" => {
                if let Some(g) = current.as_mut() {
                    let c = counts(value);
                    let get = |k: &str| c.get(k).copied().unwrap_or(0);
                    g.ready = get("ready");
                    g.registered = get("registered");
                    g.not_started = get("notStarted") + get("longNotStarted");
                    g.target = get("cloudProviderTarget");
                    g.min = get("minSize");
                    g.max = get("maxSize");
                }
                in_scale_up = false;
            }
            "ScaleUp" => in_scale_up = value.starts_with("InProgress"),
            "ScaleDown" => in_scale_up = false,
            "LastTransitionTime" if in_scale_up => {
                if let Some(g) = current.as_mut() {
                    g.scale_up_since = parse_time(value);
                }
                in_scale_up = false;
            }
            _ => {}
        }
    }
    groups.extend(current);
    groups
}

fn parse_yaml(text: &str) -> Result<Vec<NodeGroupStatus>, CaStatusError> {
    let doc: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| CaStatusError::Invalid(e.to_string()))?;
    let Some(groups) = doc.get("nodeGroups") else {
        return if doc.get("clusterWide").is_some() || doc.get("autoscalerStatus").is_some() {
            Ok(Vec::new())
        } else {
            Err(CaStatusError::Invalid(
                "neither the text nor the YAML status format".into(),
            ))
        };
    };
    let num = |v: &serde_json::Value, path: &[&str]| -> u32 {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |n| n.min(u32::MAX as u64) as u32)
    };
    let mut out = Vec::new();
    for g in groups.as_array().into_iter().flatten() {
        let Some(name) = g.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let h = g.get("health").unwrap_or(&serde_json::Value::Null);
        let scale_up = g.get("scaleUp").unwrap_or(&serde_json::Value::Null);
        let in_progress = scale_up.get("status").and_then(|s| s.as_str()) == Some("InProgress");
        out.push(NodeGroupStatus {
            name: name.to_string(),
            pool: pool_of_node_group(name),
            min: num(h, &["minSize"]),
            max: num(h, &["maxSize"]),
            target: num(h, &["cloudProviderTarget"]),
            registered: num(h, &["nodeCounts", "registered", "total"]),
            ready: num(h, &["nodeCounts", "registered", "ready"]),
            not_started: num(h, &["nodeCounts", "registered", "notStarted"]),
            scale_up_since: if in_progress {
                scale_up
                    .get("lastTransitionTime")
                    .and_then(|t| t.as_str())
                    .and_then(parse_time)
            } else {
                None
            },
        });
    }
    Ok(out)
}

/// Learns how long each pool takes from a scale-up request to a Ready node.
#[derive(Debug, Clone, Default)]
pub struct ProvisionLearner {
    window: usize,
    /// Pool → scale-up requests not yet matched by a Ready node (oldest first).
    requests: BTreeMap<String, VecDeque<Timestamp>>,
    /// Pool → the last target seen, to notice new requests.
    last_target: BTreeMap<String, u32>,
    observed: BTreeMap<String, VecDeque<Duration>>,
}

impl ProvisionLearner {
    /// Keep the last `window` observations per pool.
    pub fn new(window: usize) -> Self {
        ProvisionLearner {
            window: window.max(1),
            ..Default::default()
        }
    }

    /// Note the cluster autoscaler's targets: a higher target means it asked
    /// for nodes at `scale_up_since` (or `now` if it does not say).
    pub fn observe_status(&mut self, groups: &[NodeGroupStatus], now: Timestamp) {
        for g in groups {
            let last = self.last_target.insert(g.pool.clone(), g.target);
            let grew = match last {
                Some(prev) => g.target.saturating_sub(prev),
                // First sight: nodes asked for and not registered are requests of unknown age.
                None => g.target.saturating_sub(g.registered),
            };
            let at = g.scale_up_since.unwrap_or(now);
            let q = self.requests.entry(g.pool.clone()).or_default();
            q.extend(std::iter::repeat_n(at, grew as usize));
            if g.target < last.unwrap_or(g.target) {
                // The autoscaler gave up on some (scale-up timeout): forget the newest.
                let drop = (last.unwrap_or(0) - g.target) as usize;
                for _ in 0..drop.min(q.len()) {
                    q.pop_back();
                }
            }
        }
    }

    /// A node of `pool` became Ready at `ready_at`. With a pending request the
    /// observation is request → Ready; without one (no autoscaler status),
    /// `created_at` → Ready stands in, which only sees the VM's own boot.
    pub fn observe_ready(&mut self, pool: &str, created_at: Timestamp, ready_at: Timestamp) {
        let start = self
            .requests
            .get_mut(pool)
            .and_then(VecDeque::pop_front)
            .filter(|r| *r <= ready_at)
            .unwrap_or(created_at);
        let q = self.observed.entry(pool.to_string()).or_default();
        q.push_back(ready_at.since(start));
        while q.len() > self.window {
            q.pop_front();
        }
    }

    /// The median observed provisioning time of a pool, once there is one.
    pub fn provision_time(&self, pool: &str) -> Option<Duration> {
        let q = self.observed.get(pool)?;
        if q.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = q.iter().copied().collect();
        v.sort();
        Some(v[v.len() / 2])
    }

    /// Outstanding scale-up requests of a pool (oldest first).
    pub fn pending_requests(&self, pool: &str) -> Vec<Timestamp> {
        self.requests
            .get(pool)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// What is known about pools beyond their nodes: the autoscaler's status
/// and what was learned. Shared with the extender through the cluster view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolInfo {
    pub groups: Vec<NodeGroupStatus>,
    /// Pool → learned provisioning time.
    pub provision: BTreeMap<String, Duration>,
    /// Pool → scale-up requests not yet matched by a Ready node.
    pub requests: BTreeMap<String, Vec<Timestamp>>,
}

impl ProvisionLearner {
    /// What this learner knows, with the autoscaler's latest status.
    pub fn info(&self, groups: &[NodeGroupStatus]) -> PoolInfo {
        PoolInfo {
            groups: groups.to_vec(),
            provision: self
                .observed
                .keys()
                .filter_map(|p| Some((p.clone(), self.provision_time(p)?)))
                .collect(),
            requests: self
                .requests
                .iter()
                .map(|(p, q)| (p.clone(), q.iter().copied().collect()))
                .collect(),
        }
    }
}

/// Put the autoscaler's view into the engine's snapshot: pool bounds from
/// its status, nodes on their way as upcoming (requested when the scale-up
/// began), and learned provisioning times.
pub fn apply(snap: &mut Snapshot, groups: &[NodeGroupStatus], learner: &ProvisionLearner) {
    apply_info(snap, &learner.info(groups));
}

/// [`apply`] from a [`PoolInfo`].
pub fn apply_info(snap: &mut Snapshot, info: &PoolInfo) {
    for pool in &mut snap.pools {
        if let Some(t) = info.provision.get(&pool.name) {
            pool.provision_time = Some(*t);
        }
        let Some(g) = info.groups.iter().find(|g| g.pool == pool.name) else {
            continue;
        };
        if g.max > 0 {
            pool.min = g.min;
            pool.max = g.max;
        }
        // Registered-but-not-ready nodes are on their way, not room.
        pool.nodes = pool.nodes.saturating_sub(g.not_started);
        let mut requested = info.requests.get(&pool.name).cloned().unwrap_or_default();
        let when = g.scale_up_since.unwrap_or(snap.now);
        requested.resize(g.upcoming() as usize, when);
        requested.sort();
        pool.upcoming = requested
            .into_iter()
            .map(|requested_at| UpcomingNode { requested_at })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::VmPool;
    use crate::units::{GIB, Resources};

    const TEXT: &str = "Cluster-autoscaler status at 2026-10-02 14:29:22.999645779 +0000 UTC:
Cluster-wide:
  Health:      Healthy (ready=4 unready=0 notStarted=0 longNotStarted=0 registered=4 longUnregistered=0)
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:20:00.1 +0000 UTC m=+31.28
  ScaleUp:     InProgress (ready=4 registered=4)
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:28:00.5 +0000 UTC m=+547.32

NodeGroups:
  Name:        aks-user-25795745-vmss
  Health:      Healthy (ready=3 unready=0 notStarted=1 longNotStarted=0 registered=4 longUnregistered=0 cloudProviderTarget=6 (minSize=2, maxSize=10))
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:25:50.7 +0000 UTC m=+311.50
  ScaleUp:     InProgress (ready=3 cloudProviderTarget=6)
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:29:00.5 +0000 UTC m=+547.32
  ScaleDown:   NoCandidates (candidates=0)
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:21:10.5 +0000 UTC m=+31.28

  Name:        aks-system-11111111-vmss
  Health:      Healthy (ready=1 unready=0 notStarted=0 longNotStarted=0 registered=1 longUnregistered=0 cloudProviderTarget=1 (minSize=1, maxSize=3))
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:20:00.1 +0000 UTC m=+31.28
  ScaleUp:     NoActivity (ready=1 cloudProviderTarget=1)
               LastProbeTime:      2026-10-02 14:29:22.999645779 +0000 UTC m=+571.77
               LastTransitionTime: 2026-10-02 14:20:00.1 +0000 UTC m=+31.28
";

    const YAML: &str = r#"autoscalerStatus: Running
clusterWide:
  health:
    nodeCounts:
      registered:
        ready: 4
        total: 4
    status: Healthy
  scaleUp:
    status: InProgress
nodeGroups:
- health:
    cloudProviderTarget: 6
    maxSize: 10
    minSize: 2
    nodeCounts:
      registered:
        ready: 3
        notStarted: 1
        total: 4
    status: Healthy
  name: aks-user-25795745-vmss
  scaleDown:
    status: NoCandidates
  scaleUp:
    lastTransitionTime: "2026-10-02T14:29:00Z"
    status: InProgress
- health:
    cloudProviderTarget: 1
    maxSize: 3
    minSize: 1
    nodeCounts:
      registered:
        ready: 1
        total: 1
    status: Healthy
  name: aks-system-11111111-vmss
  scaleUp:
    status: NoActivity
time: 2026-10-02 14:29:22.999645779 +0000 UTC
"#;

    fn user_group() -> NodeGroupStatus {
        NodeGroupStatus {
            name: "aks-user-25795745-vmss".into(),
            pool: "user".into(),
            min: 2,
            max: 10,
            target: 6,
            registered: 4,
            ready: 3,
            not_started: 1,
            scale_up_since: Timestamp::parse_rfc3339("2026-10-02T14:29:00Z").ok(),
        }
    }

    #[test]
    fn both_formats_give_the_same_groups() {
        let text = parse_ca_status(TEXT).unwrap_or_else(|e| panic!("{e}"));
        let yaml = parse_ca_status(YAML).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.len(), 2);
        assert_eq!(text[0], user_group());
        assert_eq!(text, yaml);
        assert_eq!(text[1].pool, "system");
        assert_eq!(text[1].scale_up_since, None);
        assert_eq!(text[0].upcoming(), 3, "2 not registered + 1 not ready");
    }

    #[test]
    fn garbage_is_an_error_and_no_groups_is_not() {
        assert!(parse_ca_status("just: [a, list").is_err());
        assert!(parse_ca_status("hello: world\n").is_err());
        assert_eq!(
            parse_ca_status("autoscalerStatus: Initializing\n"),
            Ok(vec![])
        );
    }

    #[test]
    fn pool_names_come_from_aks_scale_set_names() {
        assert_eq!(pool_of_node_group("aks-user-25795745-vmss"), "user");
        assert_eq!(pool_of_node_group("aks-gpu-pool-1234-vmss"), "gpu-pool");
        assert_eq!(pool_of_node_group("MachineDeployment/default/md-0"), "md-0");
        assert_eq!(pool_of_node_group("nodepool1"), "nodepool1");
    }

    #[test]
    fn the_learner_matches_requests_to_ready_nodes_and_takes_the_median() {
        let t = |s: i64| Timestamp::from_secs(1_000 + s);
        let mut l = ProvisionLearner::new(5);
        let mut g = user_group();
        g.target = 4;
        g.scale_up_since = None;
        l.observe_status(std::slice::from_ref(&g), t(0));
        assert!(l.pending_requests("user").is_empty(), "all 4 registered");
        g.target = 6;
        g.scale_up_since = Some(t(10));
        l.observe_status(std::slice::from_ref(&g), t(12));
        l.observe_status(std::slice::from_ref(&g), t(20));
        assert_eq!(
            l.pending_requests("user"),
            [t(10), t(10)],
            "seen once, counted once"
        );
        l.observe_ready("user", t(100), t(190));
        l.observe_ready("user", t(100), t(250));
        // No request left: creation → ready stands in.
        l.observe_ready("user", t(300), t(360));
        assert_eq!(
            l.provision_time("user"),
            Some(Duration::from_secs(180)),
            "median of 180, 240, 60"
        );
        assert_eq!(l.provision_time("system"), None);
        // A lowered target (scale-up timed out) forgets the newest requests.
        g.target = 8;
        l.observe_status(std::slice::from_ref(&g), t(400));
        g.target = 7;
        l.observe_status(std::slice::from_ref(&g), t(500));
        assert_eq!(l.pending_requests("user").len(), 1);
    }

    #[test]
    fn apply_sets_bounds_upcoming_and_learned_times() {
        let mut snap = Snapshot {
            now: Timestamp::from_secs(2_000_000_000),
            pools: vec![VmPool {
                name: "user".into(),
                min: 0,
                max: 99,
                node_allocatable: Resources::new(4000, 16 * GIB),
                nodes: 4,
                upcoming: vec![],
                provision_time: None,
                class: None,
            }],
            ..Snapshot::default()
        };
        let mut l = ProvisionLearner::new(5);
        l.observe_ready("user", Timestamp::from_secs(0), Timestamp::from_secs(200));
        apply(&mut snap, &[user_group()], &l);
        let p = &snap.pools[0];
        assert_eq!((p.min, p.max, p.nodes), (2, 10, 3));
        assert_eq!(p.upcoming.len(), 3);
        assert!(
            p.upcoming
                .iter()
                .all(|u| Some(u.requested_at) == user_group().scale_up_since)
        );
        assert_eq!(p.provision_time, Some(Duration::from_secs(200)));
    }
}
