//! Burst budget reservations shared by every replica.
//!
//! Every replica of spillway serves the extender, and the scheduler's calls
//! are spread over them by the Service. Each replica's own ledger
//! (`ledger.rs`) only knows its own admissions, so two replicas could each
//! let a pod of the same namespace onto the virtual node within one view
//! refresh and together push the namespace over `maxPods` (or its CPU,
//! memory or cost budget). To make the budget hold across replicas, an
//! admission is a compare-and-swap on one ConfigMap (DESIGN.md: "the
//! extender reserves, the loop reconciles"):
//!
//! 1. read the ConfigMap (its `resourceVersion` with it);
//! 2. count its reservations that the replica's view cannot show yet on top
//!    of the view's burst usage, and let the engine decide with that usage;
//! 3. if the engine still says `burst`, write the ConfigMap back with this
//!    pod's reservation added, guarded by the `resourceVersion` read in 1;
//!    a 409 means another replica admitted something in between: start over.
//!
//! A reservation stops counting once the view shows its pod bound to a node
//! (the view's burst usage counts it from then on, or it went to a VM) or
//! finished, and in any case after [`FORGET_AFTER`] (a pod deleted before it
//! was bound). The leader's loop removes such reservations
//! ([`SharedReservations::reconcile`]), and every admission rewrites the
//! ConfigMap without them, so the object stays small.
//!
//! Failures fail closed: if the ConfigMap cannot be read or written the
//! virtual node is refused with a message saying so, and the scheduler
//! retries the pod later. A budget is never exceeded because the API server
//! was slow.
//!
//! The ConfigMap holds one key per reservation (the pod's uid), whose value
//! is a small JSON object, so `kubectl get configmap -o yaml` shows who holds
//! what.

use crate::cluster::ClusterState;
use crate::decision::{BurstUsage, Decision, Verdict};
use crate::units::{Duration, Resources, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use std::collections::BTreeMap;

/// Default name of the reservations ConfigMap (in spillway's namespace).
pub const DEFAULT_NAME: &str = "spillway-burst-reservations";
/// A reservation is dropped after this long whether or not its pod was seen.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Read-decide-write rounds before giving up under contention.
const MAX_ATTEMPTS: u32 = 8;
/// Refuse to grow the ConfigMap past this (the API server's limit is 1 MiB;
/// a reservation is ~200 bytes and lives seconds).
const MAX_BYTES: usize = 512 * 1024;

/// One pod's claim on its namespace's burst budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub namespace: String,
    /// `namespace/name`, for people and for pods without a uid.
    pub pod: String,
    /// ACI-effective requests.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub hourly_cost: f64,
    /// When it was made (Unix milliseconds, the reserving replica's clock).
    pub at_millis: i64,
    /// The replica that made it.
    pub replica: String,
}

impl Reservation {
    fn at(&self) -> Timestamp {
        Timestamp::from_millis(self.at_millis)
    }
    fn requests(&self) -> Resources {
        Resources::new(self.cpu_millis, self.memory_bytes)
    }
}

/// What a reservation attempt ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reserved: the pod may go onto the virtual node.
    Admitted,
    /// With the other replicas' reservations counted the engine no longer
    /// says `burst`: its decision.
    Refused(Decision),
}

#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("reading or writing ConfigMap {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("ConfigMap {namespace}/{name} changed under every one of {attempts} attempts")]
    Contended {
        namespace: String,
        name: String,
        attempts: u32,
    },
    #[error("no answer from the API server within {within:?}")]
    TimedOut { within: std::time::Duration },
    #[error(
        "ConfigMap {namespace}/{name} holds {bytes} bytes of reservations, over the {limit}-byte limit"
    )]
    Full {
        namespace: String,
        name: String,
        bytes: usize,
        limit: usize,
    },
}

/// The ConfigMap data key of a pod's reservation: its uid, or
/// `namespace.name` for a pod without one (namespaces have no dots).
pub fn reservation_key(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => uid.to_string(),
        None => format!(
            "{}.{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Parse the ConfigMap's data; entries that do not parse are dropped (and
/// logged): they would only ever be rewritten out.
pub fn parse(cm: &ConfigMap) -> BTreeMap<String, Reservation> {
    let mut out = BTreeMap::new();
    for (k, v) in cm.data.iter().flatten() {
        match serde_json::from_str::<Reservation>(v) {
            Ok(r) => {
                out.insert(k.clone(), r);
            }
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "dropping an unreadable burst reservation")
            }
        }
    }
    out
}

/// The reservations that must still be counted on top of `view`'s burst
/// usage at `now`: not expired, and for a pod the view does not show bound
/// to a node or finished.
pub fn outstanding(
    entries: &BTreeMap<String, Reservation>,
    view: &ClusterState,
    now: Timestamp,
) -> BTreeMap<String, Reservation> {
    let mut live: BTreeMap<String, Reservation> = entries
        .iter()
        .filter(|(_, r)| now < r.at().plus(FORGET_AFTER))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    // Drop those whose pod the view already accounts for: bound or finished.
    for pod in &view.pods {
        if live.is_empty() {
            break;
        }
        let bound = crate::cluster::is_bound(pod);
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if !(bound || finished) {
            continue;
        }
        live.remove(&reservation_key(pod));
    }
    // Bound pods the view keeps as records.
    for pod in &view.bound {
        if live.is_empty() {
            break;
        }
        live.remove(&pod.reservation_key());
    }
    live
}

/// `usage` plus `entries`, except the one under `skip`.
pub fn add_usage(
    usage: &BTreeMap<String, BurstUsage>,
    entries: &BTreeMap<String, Reservation>,
    skip: &str,
) -> BTreeMap<String, BurstUsage> {
    let mut out = usage.clone();
    for (k, r) in entries {
        if k != skip {
            out.entry(r.namespace.clone())
                .or_default()
                .add(&r.requests(), r.hourly_cost);
        }
    }
    out
}

/// The shared reservations of one installation: a ConfigMap in spillway's namespace.
#[derive(Clone)]
pub struct SharedReservations {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    replica: String,
}

impl std::fmt::Debug for SharedReservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReservations")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("replica", &self.replica)
            .finish()
    }
}

impl SharedReservations {
    /// `client` should not retry writes on its own: a 409 is answered here.
    pub fn new(client: kube::Client, namespace: &str, name: &str, replica: &str) -> Self {
        SharedReservations {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            replica: replica.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn api_error(&self, source: kube::Error) -> ReservationError {
        ReservationError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// The ConfigMap, created empty when it does not exist yet.
    async fn read(&self) -> Result<ConfigMap, ReservationError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(cm)) => Ok(cm),
            Ok(None) => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/name".to_string(),
                            "spillway".to_string(),
                        )])),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                match self.api.create(&PostParams::default(), &cm).await {
                    Ok(cm) => Ok(cm),
                    // Another replica created it first: read theirs.
                    Err(kube::Error::Api(s)) if s.code == 409 => self
                        .api
                        .get(&self.name)
                        .await
                        .map_err(|e| self.api_error(e)),
                    Err(e) => Err(self.api_error(e)),
                }
            }
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Write `entries` as the ConfigMap's data, guarded by `cm`'s
    /// resourceVersion. `Ok(false)`: someone else wrote first.
    async fn write(
        &self,
        mut cm: ConfigMap,
        entries: &BTreeMap<String, Reservation>,
    ) -> Result<bool, ReservationError> {
        let mut data = BTreeMap::new();
        let mut bytes = 0;
        for (k, r) in entries {
            // Serializing plain fields cannot fail; skip rather than panic if it ever did.
            if let Ok(v) = serde_json::to_string(r) {
                bytes += k.len() + v.len();
                data.insert(k.clone(), v);
            }
        }
        if bytes > MAX_BYTES {
            return Err(ReservationError::Full {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                bytes,
                limit: MAX_BYTES,
            });
        }
        cm.data = (!data.is_empty()).then_some(data);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &cm)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// The reservations still to count on top of `view`'s burst usage at
    /// `now` (see [`outstanding`]): what the extender has admitted and the
    /// view does not show bound yet. Read-only.
    pub async fn outstanding(
        &self,
        view: &ClusterState,
        now: Timestamp,
    ) -> Result<BTreeMap<String, Reservation>, ReservationError> {
        let cm = match self.api.get_opt(&self.name).await {
            Ok(cm) => cm,
            Err(e) => return Err(self.api_error(e)),
        };
        Ok(cm
            .map(|cm| outstanding(&parse(&cm), view, now))
            .unwrap_or_default())
    }

    /// Reserve budget for the pod under `key` (see [`reservation_key`]) if,
    /// with every outstanding reservation counted on top of `base` (the burst
    /// usage of `view`'s pods, as `Engine::burst_usage` counts it), `decide`
    /// still says `burst`. `decide` gets the usage to judge by.
    pub async fn reserve(
        &self,
        view: &ClusterState,
        base: &BTreeMap<String, BurstUsage>,
        key: &str,
        mut reservation: Reservation,
        now: Timestamp,
        decide: impl Fn(&BTreeMap<String, BurstUsage>) -> Decision,
    ) -> Result<Outcome, ReservationError> {
        reservation.replica = self.replica.clone();
        reservation.at_millis = now.millis();
        for _ in 0..MAX_ATTEMPTS {
            let cm = self.read().await?;
            let mut live = outstanding(&parse(&cm), view, now);
            let usage = add_usage(base, &live, key);
            let d = decide(&usage);
            if d.verdict != Verdict::Burst {
                return Ok(Outcome::Refused(d));
            }
            live.insert(key.to_string(), reservation.clone());
            if self.write(cm, &live).await? {
                return Ok(Outcome::Admitted);
            }
        }
        Err(ReservationError::Contended {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Remove the reservations `view` no longer needs (bound, finished or
    /// expired pods). Returns how many were removed; a concurrent write
    /// (409) just leaves them for the next round.
    pub async fn reconcile(
        &self,
        view: &ClusterState,
        now: Timestamp,
    ) -> Result<usize, ReservationError> {
        let Some(cm) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(0);
        };
        let all = parse(&cm);
        let stored = cm.data.as_ref().map_or(0, BTreeMap::len);
        let live = outstanding(&all, view, now);
        let removed = stored - live.len();
        if removed == 0 {
            return Ok(0);
        }
        Ok(if self.write(cm, &live).await? {
            removed
        } else {
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{node, pod};
    use crate::cluster::{ClusterConfig, ClusterView};

    fn reservation(ns: &str, name: &str, at: i64) -> Reservation {
        Reservation {
            namespace: ns.into(),
            pod: format!("{ns}/{name}"),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            hourly_cost: 0.05,
            at_millis: at,
            replica: "r1".into(),
        }
    }

    fn with_uid(mut p: Pod, uid: &str) -> Pod {
        p.metadata.uid = Some(uid.into());
        p
    }

    fn without_uid(mut p: Pod) -> Pod {
        p.metadata.uid = None;
        p
    }

    #[test]
    fn reservations_count_until_their_pod_is_bound_finished_or_forgotten() {
        let view = ClusterView::new(ClusterConfig::default());
        let pods = vec![
            with_uid(pod().ns("web").name("pending").build(), "u-pending"),
            with_uid(
                pod().ns("web").name("bound").on_node("aci").build(),
                "u-bound",
            ),
            without_uid(pod().ns("web").name("no-uid").on_node("vm").build()),
        ];
        view.replace(
            &[node("aci").virtual_kubelet().build()],
            &pods,
            Timestamp::from_secs(100),
        );
        let state = view.current();
        let entries = BTreeMap::from([
            (
                "u-pending".to_string(),
                reservation("web", "pending", 100_000),
            ),
            ("u-bound".to_string(), reservation("web", "bound", 100_000)),
            (
                "web.no-uid".to_string(),
                reservation("web", "no-uid", 100_000),
            ),
            (
                "u-unseen".to_string(),
                reservation("web", "unseen", 100_000),
            ),
            ("u-old".to_string(), reservation("web", "old", 60_000)),
        ]);
        let live = outstanding(&entries, &state, Timestamp::from_secs(100));
        assert_eq!(
            live.keys().map(String::as_str).collect::<Vec<_>>(),
            ["u-pending", "u-unseen"]
        );
        // The view counts `bound` itself; the two outstanding ones come on top,
        // except the asking pod's own.
        let usage = add_usage(&state.snapshot.burst_usage, &live, "u-pending");
        assert_eq!(usage["web"].pods, 2);
        assert_eq!(usage["web"].requests.cpu_millis, 1000 + 1000);
        // 30 s later even the unseen one is forgotten.
        assert!(outstanding(&entries, &state, Timestamp::from_secs(130)).is_empty());
    }

    #[test]
    fn unreadable_entries_are_dropped_and_keys_are_valid_configmap_keys() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("a".to_string(), "{not json".to_string()),
                (
                    "b".to_string(),
                    serde_json::to_string(&reservation("web", "b", 1)).unwrap_or_default(),
                ),
            ])),
            ..Default::default()
        };
        assert_eq!(parse(&cm).keys().collect::<Vec<_>>(), ["b"]);
        let no_uid = without_uid(pod().ns("web").name("x-1").build());
        let key = reservation_key(&no_uid);
        assert_eq!(key, "web.x-1");
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        );
        assert_eq!(reservation_key(&with_uid(no_uid, "1234-ab")), "1234-ab");
    }
}
