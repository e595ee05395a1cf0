//! `ClusterView`: the latest snapshot of the cluster, shared by readers that
//! must never wait on the API server (the extender answers within
//! milliseconds of the scheduler's call).
//!
//! Writers replace the whole state at once (an `Arc` swap under a short write
//! lock); readers clone the `Arc`. In cluster mode the state is rebuilt from
//! watch stores (a kube reflector store of nodes; pods in the view's own
//! store, bound pods as compact records), at most once per `min_interval`,
//! whenever a watch event arrives; in file mode it is built once.

use super::bound::{BoundPod, is_compactable};
use super::{ClusterConfig, ClusterError, ClusterObjects, virtual_node_names};
use crate::decision::Snapshot;
use crate::units::Timestamp;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// One consistent picture of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// The engine's view as of `snapshot.now` (the time it was built).
    pub snapshot: Snapshot,
    /// Names of the virtual nodes seen in the cluster.
    pub virtual_nodes: BTreeSet<String>,
    /// Names of VM nodes seen in the cluster.
    pub vm_nodes: BTreeSet<String>,
    /// False until the first full list of nodes and pods has arrived.
    pub synced: bool,
    /// The objects it was built from (the autoscaler reads these): nodes,
    /// pods not bound to a node and placeholders as (slimmed) objects, and
    /// every other pod as its compact record.
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub bound: Vec<Arc<BoundPod>>,
    /// PodDisruptionBudgets, when watched (empty until their first list).
    pub pdbs: Vec<Arc<PodDisruptionBudget>>,
}

#[derive(Debug)]
pub struct ClusterView {
    config: ClusterConfig,
    state: RwLock<Arc<ClusterState>>,
    /// The cluster autoscaler's status and learned provisioning times,
    /// applied to every rebuilt snapshot.
    pool_info: RwLock<crate::autoscaler::pools::PoolInfo>,
    changed: tokio::sync::Notify,
    /// Where each rebuild's duration goes (`spillway_view_rebuild_seconds`).
    rebuild_seconds: Option<prometheus::Histogram>,
}

impl ClusterView {
    /// An empty, not yet synced view.
    pub fn new(config: ClusterConfig) -> Self {
        ClusterView {
            config,
            state: RwLock::new(Arc::new(ClusterState::default())),
            pool_info: RwLock::new(Default::default()),
            changed: tokio::sync::Notify::new(),
            rebuild_seconds: None,
        }
    }

    /// Record every rebuild's duration in `histogram`.
    pub fn with_rebuild_histogram(mut self, histogram: prometheus::Histogram) -> Self {
        self.rebuild_seconds = Some(histogram);
        self
    }

    /// A synced view of fixed objects (`--cluster-state FILE`).
    pub fn from_objects(objects: &ClusterObjects, now: Timestamp, config: ClusterConfig) -> Self {
        let view = ClusterView::new(config);
        view.replace(&objects.nodes, &objects.pods, now);
        view
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The state in force now. Cheap: clones an `Arc`.
    pub fn current(&self) -> Arc<ClusterState> {
        match self.state.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Resolves at the next rebuild of the state.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn is_synced(&self) -> bool {
        self.current().synced
    }

    /// Rebuild from full lists of nodes and pods and mark the view synced.
    pub fn replace<N, P>(&self, nodes: &[N], pods: &[P], now: Timestamp)
    where
        N: std::borrow::Borrow<Node>,
        P: std::borrow::Borrow<Pod>,
    {
        let (mut whole, mut bound) = (Vec::new(), Vec::new());
        for pod in pods.iter().map(std::borrow::Borrow::borrow) {
            if is_compactable(pod) {
                bound.push(Arc::new(BoundPod::from_pod(pod)));
            } else {
                whole.push(Arc::new(pod.clone()));
            }
        }
        let pdbs = self.current().pdbs.clone();
        self.replace_all(
            nodes.iter().map(|n| Arc::new(n.borrow().clone())).collect(),
            whole,
            bound,
            pdbs,
            now,
        );
    }

    /// Set what is known about pools beyond their nodes. When it differs
    /// from what the view has, a synced view is rebuilt from the same
    /// objects at once (keeping its build time), so a new cluster-autoscaler
    /// status is seen without waiting for a node or pod to change.
    pub fn set_pool_info(&self, info: crate::autoscaler::pools::PoolInfo) {
        let changed = {
            let mut g = match self.pool_info.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let changed = *g != info;
            *g = info;
            changed
        };
        let current = self.current();
        if changed && current.synced {
            self.replace_all(
                current.nodes.clone(),
                current.pods.clone(),
                current.bound.clone(),
                current.pdbs.clone(),
                current.snapshot.now,
            );
        }
    }

    /// Rebuild from shared nodes, pods (whole ones and records of bound
    /// ones, see [`BoundPod`]) and PodDisruptionBudgets, without copying them.
    pub fn replace_all(
        &self,
        nodes: Vec<Arc<Node>>,
        pods: Vec<Arc<Pod>>,
        bound: Vec<Arc<BoundPod>>,
        pdbs: Vec<Arc<PodDisruptionBudget>>,
        now: Timestamp,
    ) {
        let started = std::time::Instant::now();
        let mut snapshot =
            super::classify::classify_with(&nodes, &pods, &bound, now, &self.config, None).snapshot;
        match self.pool_info.read() {
            Ok(info) => crate::autoscaler::pools::apply_info(&mut snapshot, &info),
            Err(poisoned) => {
                crate::autoscaler::pools::apply_info(&mut snapshot, &poisoned.into_inner())
            }
        }
        let virtual_nodes = virtual_node_names(&nodes, &self.config);
        let vm_nodes = snapshot.nodes.iter().map(|n| n.name.clone()).collect();
        let next = Arc::new(ClusterState {
            snapshot,
            virtual_nodes,
            vm_nodes,
            synced: true,
            nodes,
            pods,
            bound,
            pdbs,
        });
        // The old state is dropped outside the lock, and after the timer:
        // freeing it is not part of building the new one.
        let previous = match self.state.write() {
            Ok(mut g) => std::mem::replace(&mut *g, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        };
        if let Some(h) = &self.rebuild_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        drop(previous);
        self.changed.notify_waiters();
    }
}

/// The view's pods as the watch reports them: unbound pods and placeholders
/// as slimmed objects, bound pods as [`BoundPod`] records (what a kube
/// reflector store would hold as whole objects, at a tenth of the memory).
///
/// Like a reflector store, a relist (`Init` .. `InitDone`) fills a buffer
/// that replaces the live maps at once, so readers never see half a list.
#[derive(Debug, Default)]
struct PodStore {
    live: PodMaps,
    /// The relist in progress.
    buffer: Option<PodMaps>,
    /// A first full list has arrived.
    ready: bool,
}

#[derive(Debug, Default)]
struct PodMaps {
    whole: HashMap<String, Arc<Pod>>,
    bound: HashMap<String, Arc<BoundPod>>,
}

impl PodMaps {
    fn apply(&mut self, mut pod: Pod) {
        let key = super::pod_key(&pod);
        if is_compactable(&pod) {
            self.whole.remove(&key);
            self.bound.insert(key, Arc::new(BoundPod::from_pod(&pod)));
        } else {
            self.bound.remove(&key);
            super::slim::slim_pod(&mut pod);
            self.whole.insert(key, Arc::new(pod));
        }
    }

    fn delete(&mut self, pod: &Pod) {
        let key = super::pod_key(pod);
        self.whole.remove(&key);
        self.bound.remove(&key);
    }
}

impl PodStore {
    fn apply_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => self.live.apply(pod),
            watcher::Event::Delete(pod) => self.live.delete(&pod),
            watcher::Event::Init => self.buffer = Some(PodMaps::default()),
            watcher::Event::InitApply(pod) => self.buffer.get_or_insert_default().apply(pod),
            watcher::Event::InitDone => {
                if let Some(listed) = self.buffer.take() {
                    self.live = listed;
                }
                self.ready = true;
            }
        }
    }

    fn state(&self) -> (Vec<Arc<Pod>>, Vec<Arc<BoundPod>>) {
        (
            self.live.whole.values().cloned().collect(),
            self.live.bound.values().cloned().collect(),
        )
    }
}

fn lock_store(store: &Mutex<PodStore>) -> std::sync::MutexGuard<'_, PodStore> {
    match store.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Watch nodes and pods and keep `view` up to date. Runs until the task is
/// dropped; watch errors are retried with kube's default backoff and logged.
/// Objects are slimmed ([`super::slim`]) before they enter the stores.
pub async fn run_reflectors(
    client: kube::Client,
    view: Arc<ClusterView>,
    min_interval: std::time::Duration,
) -> Result<(), ClusterError> {
    let nodes_api: kube::Api<Node> = kube::Api::all(client.clone());
    let pods_api: kube::Api<Pod> = kube::Api::all(client.clone());
    let pdbs_api: kube::Api<PodDisruptionBudget> = kube::Api::all(client);
    let (node_store, node_writer) = reflector::store::<Node>();
    let pod_store = Arc::new(Mutex::new(PodStore::default()));
    let (pods_ready_tx, mut pods_ready) = tokio::sync::watch::channel(false);
    let (pdb_store, pdb_writer) = reflector::store::<PodDisruptionBudget>();
    let changed = Arc::new(tokio::sync::Notify::new());

    let node_events = reflector(
        node_writer,
        watcher(nodes_api, watcher::Config::default())
            .modify(super::slim::slim_node)
            .default_backoff(),
    );
    let pod_events = {
        let store = pod_store.clone();
        watcher(pods_api, watcher::Config::default())
            .default_backoff()
            .map(move |ev| {
                ev.map(|ev| {
                    let mut s = lock_store(&store);
                    s.apply_event(ev);
                    if s.ready {
                        pods_ready_tx.send_replace(true);
                    }
                })
            })
    };
    let pdb_events = reflector(
        pdb_writer,
        watcher(pdbs_api, watcher::Config::default())
            .modify(|b: &mut PodDisruptionBudget| b.metadata.managed_fields = None)
            .default_backoff(),
    );
    let drive = |events: futures::stream::BoxStream<'static, Result<(), watcher::Error>>,
                 what: &'static str,
                 changed: Arc<tokio::sync::Notify>| async move {
        events
            .for_each(|ev| {
                match ev {
                    Ok(()) => changed.notify_one(),
                    Err(e) => tracing::warn!(error = %e, resource = what, "watch error; retrying"),
                }
                futures::future::ready(())
            })
            .await;
    };
    let node_task = tokio::spawn(drive(
        node_events.map(|r| r.map(|_| ())).boxed(),
        "nodes",
        changed.clone(),
    ));
    let pod_task = tokio::spawn(drive(pod_events.boxed(), "pods", changed.clone()));
    // Budgets only spare the autoscaler futile evictions: the view does not
    // wait for them to sync.
    let pdb_task = tokio::spawn(drive(
        pdb_events.map(|r| r.map(|_| ())).boxed(),
        "poddisruptionbudgets",
        changed.clone(),
    ));

    let rebuild = async {
        let ready = async {
            node_store
                .wait_until_ready()
                .await
                .map_err(|e| e.to_string())?;
            // The sender lives as long as the pod watch task.
            pods_ready
                .wait_for(|ready| *ready)
                .await
                .map(|_| ())
                .map_err(|_| "the pod watch ended".to_string())
        };
        if let Err(e) = ready.await {
            return Err(ClusterError::Kube(format!(
                "reflector stopped before its first list: {e}"
            )));
        }
        tracing::info!("cluster view synced");
        loop {
            let (pods, bound) = lock_store(&pod_store).state();
            view.replace_all(
                node_store.state(),
                pods,
                bound,
                pdb_store.state(),
                Timestamp::now_wall(),
            );
            tokio::time::sleep(min_interval).await;
            changed.notified().await;
        }
    };
    let result = rebuild.await;
    node_task.abort();
    pod_task.abort();
    pdb_task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{node, pod};

    #[test]
    fn view_starts_unsynced_and_replace_publishes_a_new_state() {
        let view = ClusterView::new(ClusterConfig::default());
        assert!(!view.is_synced());
        let before = view.current();
        let nodes = vec![
            node("vm-1").pool("p1").cpu("4").memory("16Gi").build(),
            node("aci").virtual_kubelet().build(),
        ];
        let pods = vec![pod().ns("web").name("a").cpu("1").on_node("vm-1").build()];
        view.replace(&nodes, &pods, Timestamp::from_secs(100));
        let after = view.current();
        assert!(after.synced && !before.synced);
        assert_eq!(after.virtual_nodes.iter().collect::<Vec<_>>(), vec!["aci"]);
        assert_eq!(after.snapshot.nodes[0].allocated.cpu_millis, 1000);
        assert_eq!(after.snapshot.now, Timestamp::from_secs(100));
    }

    #[test]
    fn pool_info_from_the_autoscaler_reaches_the_snapshot() {
        use crate::autoscaler::pools::{NodeGroupStatus, PoolInfo};
        let view = ClusterView::new(ClusterConfig::default());
        view.set_pool_info(PoolInfo {
            groups: vec![NodeGroupStatus {
                name: "aks-p1-1234-vmss".into(),
                pool: "p1".into(),
                min: 1,
                max: 7,
                target: 3,
                registered: 1,
                ready: 1,
                not_started: 0,
                scale_up_since: Some(Timestamp::from_secs(90)),
            }],
            provision: [("p1".to_string(), crate::units::Duration::from_secs(150))].into(),
            requests: Default::default(),
        });
        let nodes = vec![node("vm-1").pool("p1").build()];
        view.replace(
            &nodes,
            &Vec::<k8s_openapi::api::core::v1::Pod>::new(),
            Timestamp::from_secs(100),
        );
        let state = view.current();
        let p = &state.snapshot.pools[0];
        assert_eq!((p.min, p.max, p.upcoming.len()), (1, 7, 2));
        assert_eq!(
            p.provision_time,
            Some(crate::units::Duration::from_secs(150))
        );
        assert_eq!(state.nodes.len(), 1);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::cluster::build::{node, pod};
    use crate::cluster::classify::PLACEHOLDER_FOR_LABEL;

    fn names(store: &PodStore) -> (Vec<String>, Vec<String>) {
        let (whole, bound) = store.state();
        let mut w: Vec<String> = whole.iter().map(|p| crate::cluster::pod_key(p)).collect();
        let mut b: Vec<String> = bound
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.namespace(),
                    p.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        w.sort();
        b.sort();
        (w, b)
    }

    #[test]
    fn bound_pods_become_records_and_a_relist_replaces_everything_at_once() {
        let mut store = PodStore::default();
        let waiting = pod().ns("web").name("a").cpu("1").build();
        let running = pod().ns("web").name("b").cpu("1").on_node("vm-0").build();
        let holder = pod()
            .ns("spillway-system")
            .name("ph")
            .label(PLACEHOLDER_FOR_LABEL, "u1")
            .on_node("vm-0")
            .build();
        store.apply_event(watcher::Event::Init);
        store.apply_event(watcher::Event::InitApply(waiting.clone()));
        store.apply_event(watcher::Event::InitApply(running.clone()));
        // Not ready, nothing live, until the list is complete.
        assert!(!store.ready);
        assert_eq!(names(&store), (vec![], vec![]));
        store.apply_event(watcher::Event::InitApply(holder.clone()));
        store.apply_event(watcher::Event::InitDone);
        assert!(store.ready);
        assert_eq!(
            names(&store),
            (
                vec!["spillway-system/ph".to_string(), "web/a".to_string()],
                vec!["web/b".to_string()]
            )
        );
        // The waiting pod binds: it moves from the objects to the records.
        let mut bound = waiting.clone();
        bound.spec.as_mut().expect("spec").node_name = Some("vm-0".into());
        store.apply_event(watcher::Event::Apply(bound));
        assert_eq!(
            names(&store),
            (
                vec!["spillway-system/ph".to_string()],
                vec!["web/a".to_string(), "web/b".to_string()]
            )
        );
        store.apply_event(watcher::Event::Delete(running));
        assert_eq!(names(&store).1, vec!["web/a".to_string()]);
        // A relist that no longer holds a pod drops it when it completes.
        store.apply_event(watcher::Event::Init);
        store.apply_event(watcher::Event::InitApply(holder));
        assert_eq!(names(&store).1, vec!["web/a".to_string()]);
        store.apply_event(watcher::Event::InitDone);
        assert_eq!(
            names(&store),
            (vec!["spillway-system/ph".to_string()], vec![])
        );
    }

    #[test]
    fn the_view_of_records_is_the_view_of_whole_pods() {
        let nodes = vec![
            node("vm-0").pool("p1").cpu("4").memory("16Gi").build(),
            node("aci").virtual_kubelet().build(),
        ];
        let pods = vec![
            pod().ns("web").name("r").cpu("1").on_node("vm-0").build(),
            pod()
                .ns("web")
                .name("b")
                .cpu("2")
                .on_node("aci")
                .owned_by("ReplicaSet", "web-1")
                .build(),
            pod().ns("web").name("w").cpu("1").build(),
        ];
        let now = Timestamp::from_secs(100);
        let cfg = ClusterConfig::default();
        let view = ClusterView::new(cfg.clone());
        view.replace(&nodes, &pods, now);
        let state = view.current();
        assert_eq!((state.pods.len(), state.bound.len()), (1, 2));
        let whole = crate::cluster::classify::classify(&nodes, &pods, now, &cfg, None);
        let split = crate::cluster::classify::classify_with(
            &state.nodes,
            &state.pods,
            &state.bound,
            now,
            &cfg,
            None,
        );
        assert_eq!(state.snapshot, whole.snapshot);
        assert_eq!(split.burst, whole.burst);
        assert_eq!(split.burst.len(), 1);
        assert_eq!(state.snapshot.nodes[0].allocated.cpu_millis, 1000);
    }
}
