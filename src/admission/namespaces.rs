//! Namespace labels for the webhook's opt-out check, from a metadata-only
//! watch of namespaces.
//!
//! Why a watch and not a GET per review: the webhook answers inside the API
//! server's pod-create path (timeout 5 s, every pod create of a matching
//! namespace waits for it); a GET would add an API round trip, and API
//! server load, to each of them. Namespaces are few and change rarely, and a
//! metadata watch carries no secrets. The watch is the second lock: the
//! MutatingWebhookConfiguration's namespaceSelector already keeps the API
//! server from calling spillway for `spillway.io/skip=true` namespaces, so
//! a namespace this replica has not seen yet (just created, or the watch not
//! synced) is treated as not opted out.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Labels of every namespace seen. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct NamespaceLabels {
    inner: Arc<RwLock<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl NamespaceLabels {
    /// The labels of `name`, if this replica has seen it.
    pub fn labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let map = match self.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.get(name).cloned()
    }

    /// Set (tests, or a watch event).
    pub fn set(&self, name: &str, labels: BTreeMap<String, String>) {
        self.write().insert(name.to_string(), labels);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, BTreeMap<String, String>>> {
        match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Keep the labels current from a metadata watch of namespaces until
    /// the task is dropped; watch errors are retried with backoff.
    pub async fn watch(self, client: kube::Client) {
        // `Api<PartialObjectMeta<_>>` makes metadata-only requests.
        let api: kube::Api<PartialObjectMeta<Namespace>> = kube::Api::all(client);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        // Objects of a relist, applied at its end so deleted namespaces go.
        let mut relist: Option<BTreeMap<String, BTreeMap<String, String>>> = None;
        // Warn once per outage (e.g. no RBAC for namespaces where the webhook
        // is not installed), not at every retry.
        let mut warned = false;
        while let Some(event) = events.next().await {
            if event.is_ok() {
                warned = false;
            }
            let entry = |m: &PartialObjectMeta<Namespace>| {
                (
                    m.metadata.name.clone().unwrap_or_default(),
                    m.metadata.labels.clone().unwrap_or_default(),
                )
            };
            match event {
                Ok(watcher::Event::Apply(m)) => {
                    let (k, v) = entry(&m);
                    self.write().insert(k, v);
                }
                Ok(watcher::Event::Delete(m)) => {
                    let (k, _) = entry(&m);
                    self.write().remove(&k);
                }
                Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(m)) => {
                    let (k, v) = entry(&m);
                    relist.get_or_insert_default().insert(k, v);
                }
                Ok(watcher::Event::InitDone) => {
                    *self.write() = relist.take().unwrap_or_default();
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "namespace watch error; retrying (the webhook treats unseen namespaces as not opted out)");
                }
                Err(e) => tracing::debug!(error = %e, "namespace watch error; retrying"),
            }
        }
    }
}
