//! The cluster autoscaler's status ConfigMap (`kube-system/cluster-autoscaler-status`),
//! watched.
//!
//! The cluster autoscaler rewrites it every scan (10 s by default) with each
//! node group's min/max, target and registered/ready counts, which is where
//! upcoming VMs come from. A reflector on that one object (a field selector
//! on its name) publishes the parsed node groups on a `watch` channel as
//! they change; `None` while it does not exist or cannot be read (spillway
//! then falls back to flags and node labels, and says so in the log once per
//! change).

use crate::autoscaler::pools::{NodeGroupStatus, parse_ca_status};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "cluster-autoscaler-status";

/// The parsed node groups of the status, if there is a readable one.
pub type CaStatus = Option<Vec<NodeGroupStatus>>;

/// The node groups in a status ConfigMap (`data.status`).
pub fn groups_of(cm: &ConfigMap) -> Result<Vec<NodeGroupStatus>, String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("status"))
        .ok_or_else(|| "it has no data.status".to_string())?;
    parse_ca_status(text).map_err(|e| e.to_string())
}

/// Watch the status ConfigMap and send its node groups on `tx` whenever
/// they change. Runs until every receiver is gone; watch errors are retried
/// with kube's default backoff.
pub async fn watch(client: kube::Client, tx: tokio::sync::watch::Sender<CaStatus>) {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, NAMESPACE);
    let (store, writer) = reflector::store::<ConfigMap>();
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let events = reflector(writer, watcher(api, config).default_backoff());
    let key = ObjectRef::<ConfigMap>::new(NAME).within(NAMESPACE);
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "watch of the cluster-autoscaler status failed; retrying");
            continue;
        }
        let next: CaStatus = match store.get(&key) {
            None => None,
            Some(cm) => match groups_of(&cm) {
                Ok(groups) => Some(groups),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable cluster-autoscaler status");
                    None
                }
            },
        };
        tx.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}
