//! `spillway explain` against the cluster the kubeconfig (or the pod's
//! service account) points at: one paged list of nodes and of pods, the
//! cluster autoscaler's status for upcoming nodes, and the policies from the
//! ConfigMap spillway mounts — read-only, like `kubectl get`.

use crate::autoscaler::pools::NodeGroupStatus;
use crate::cluster::{ClusterObjects, ca_status, slim};
use crate::policy::{BurstPolicy, PolicySet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

/// Page size of the lists (the API server's default chunking in kubectl).
const PAGE: u32 = 500;

/// What explain reads from a live cluster.
pub struct Live {
    pub objects: ClusterObjects,
    pub ca_groups: Vec<NodeGroupStatus>,
    /// Notes for stderr: what could not be read and what was used instead.
    pub notes: Vec<String>,
}

async fn list_all<K>(api: &Api<K>, what: &str) -> Result<Vec<K>, String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    // Bounded: a cluster with more than 10,000 pages is not one we know.
    for _ in 0..10_000 {
        let page = api
            .list(&params)
            .await
            .map_err(|e| format!("listing {what}: {e}"))?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
    Err(format!("listing {what}: too many pages"))
}

/// Read nodes, pods, the cluster autoscaler's status and (unless a
/// directory was given) the policies from the cluster.
pub async fn read(
    client: kube::Client,
    policies_configmap: Option<(&str, &str)>,
) -> Result<(Live, Option<PolicySet>), String> {
    let mut notes = Vec::new();
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::all(client.clone());
    let mut nodes = list_all(&nodes_api, "nodes").await?;
    nodes.iter_mut().for_each(slim::slim_node);
    let mut pods = list_all(&pods_api, "pods").await?;
    pods.iter_mut().for_each(slim::slim_pod);

    let ca_api: Api<ConfigMap> = Api::namespaced(client.clone(), ca_status::NAMESPACE);
    let ca_groups = match ca_api.get_opt(ca_status::NAME).await {
        Ok(Some(cm)) => match ca_status::groups_of(&cm) {
            Ok(groups) => groups,
            Err(e) => {
                notes.push(format!(
                    "cluster autoscaler status {}/{} unreadable ({e}): upcoming nodes unknown",
                    ca_status::NAMESPACE,
                    ca_status::NAME
                ));
                Vec::new()
            }
        },
        Ok(None) => {
            notes.push(format!(
                "no cluster autoscaler status ({}/{}): upcoming nodes unknown",
                ca_status::NAMESPACE,
                ca_status::NAME
            ));
            Vec::new()
        }
        Err(e) => {
            notes.push(format!(
                "cannot read the cluster autoscaler status: {e}: upcoming nodes unknown"
            ));
            Vec::new()
        }
    };

    let policies = match policies_configmap {
        None => None,
        Some((ns, name)) => Some(read_policies(client, ns, name, &mut notes).await?),
    };
    Ok((
        Live {
            objects: ClusterObjects {
                nodes,
                pods,
                skipped: 0,
            },
            ca_groups,
            notes,
        },
        policies,
    ))
}

/// The policies in ConfigMap `ns/name`, parsed exactly as the running
/// spillway parses the directory the ConfigMap volume gives it.
async fn read_policies(
    client: kube::Client,
    ns: &str,
    name: &str,
    notes: &mut Vec<String>,
) -> Result<PolicySet, String> {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let exact = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading the policy ConfigMap {ns}/{name}: {e}"))?;
    let cm = match exact {
        Some(cm) => cm,
        None => match newest_hashed(&api, name).await? {
            Some(cm) => {
                notes.push(format!(
                    "policies from ConfigMap {ns}/{} (kustomize's hashed name of {name}, the newest)",
                    cm.metadata.name.as_deref().unwrap_or_default()
                ));
                cm
            }
            None => {
                notes.push(format!(
                    "no policy ConfigMap {ns}/{name}: using the built-in default (pass --policies DIR to use files)"
                ));
                return Ok(builtin_default());
            }
        },
    };
    // The keys the ConfigMap volume shows the pod as files, read as the
    // running spillway reads its policy directory.
    let data = cm.data.unwrap_or_default();
    let files: Vec<(String, &str)> = data
        .iter()
        .filter(|(key, _)| crate::policy::is_policy_file_name(key))
        .map(|(key, text)| (format!("configmap {ns}/{name}: {key}"), text.as_str()))
        .collect();
    crate::policy::load_texts(files.iter().map(|(n, t)| (n.as_str(), *t))).map_err(|errors| {
        let n = errors.0.len();
        let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
        format!("policy ConfigMap {ns}/{name}: {n} error(s); first: {first}")
    })
}

/// Whether `candidate` is `name` with a kustomize content-hash suffix
/// (`name-` and ten lowercase letters or digits).
pub fn is_hashed_name(candidate: &str, name: &str) -> bool {
    candidate
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|h| {
            h.len() == 10
                && h.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// The newest ConfigMap named `name-<hash>` (a configMapGenerator's output;
/// older generations stay until pruned, the newest is the one applied last).
async fn newest_hashed(api: &Api<ConfigMap>, name: &str) -> Result<Option<ConfigMap>, String> {
    let all = list_all(api, "configmaps").await?;
    Ok(all
        .into_iter()
        .filter(|cm| {
            cm.metadata
                .name
                .as_deref()
                .is_some_and(|n| is_hashed_name(n, name))
        })
        .max_by(|a, b| {
            let t = |cm: &ConfigMap| cm.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        }))
}

/// The cluster default explain uses when no policies are given.
pub fn builtin_default() -> PolicySet {
    PolicySet::with_default(BurstPolicy::defaults("built-in-default", None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kustomize_hashed_names_are_recognised() {
        use super::is_hashed_name;
        assert!(is_hashed_name(
            "spillway-policies-5g7h2k8m9t",
            "spillway-policies"
        ));
        assert!(!is_hashed_name("spillway-policies", "spillway-policies"));
        assert!(!is_hashed_name(
            "spillway-policies-old",
            "spillway-policies"
        ));
        assert!(!is_hashed_name(
            "spillway-policies-5G7H2K8M9T",
            "spillway-policies"
        ));
        assert!(!is_hashed_name("other-5g7h2k8m9t", "spillway-policies"));
    }
}
