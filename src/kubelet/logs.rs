//! `GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N` (what the
//! API server proxies `kubectl logs` to), answered from the ACI logs API.
//!
//! It reads only ACI; it never trusts the group name alone (names can
//! collide) and checks the group's namespace/pod tags.
//!
//! **Its own read budget.** Each request costs two ARM reads (the group,
//! then its log), through an ACI client of its own (not the provider's
//! paced one), gated by a token bucket of its own ([`LogBudget`]): a flood
//! of log requests spends that bucket and is answered 429 with
//! `Retry-After`, and never touches the read budget the provider's status
//! sync paces itself with. A 429 from ARM pauses the bucket for its
//! `Retry-After`.

use crate::aci::translate::{group_name, group_name_in};
use crate::aci::{AciError, ContainerGroups, TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME};
use crate::pacing::TokenBucket;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Why a log request failed; the variant picks the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no container group for pod {namespace}/{pod}")]
    NoGroup { namespace: String, pod: String },
    #[error("container {container:?} not found in pod {namespace}/{pod}")]
    NoContainer {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error(
        "log read budget spent: this node answers at most {per_sec}/s container log requests from ACI ({burst} at once; --kubelet-log-qps, --kubelet-log-burst); retry in {}s",
        retry_after.as_secs_f64().ceil()
    )]
    Budget {
        per_sec: f64,
        burst: u32,
        retry_after: Duration,
    },
    #[error("ACI: {0}")]
    Aci(#[from] AciError),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::NoGroup { .. } | LogsError::NoContainer { .. } => StatusCode::NOT_FOUND,
            LogsError::Budget { .. } => StatusCode::TOO_MANY_REQUESTS,
            LogsError::Aci(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            LogsError::Aci(_) => StatusCode::BAD_GATEWAY,
        };
        let retry_after = match &self {
            LogsError::Budget { retry_after, .. } => Some(*retry_after),
            LogsError::Aci(AciError::Throttled { retry_after }) => Some(*retry_after),
            _ => None,
        };
        let mut response = (status, self.to_string()).into_response();
        if let Some(wait) = retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct LogQuery {
    #[serde(rename = "tailLines")]
    pub tail_lines: Option<u32>,
}

/// Read one container's log from the group of cluster `cluster_id`.
pub async fn container_logs(
    aci: &dyn ContainerGroups,
    cluster_id: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    tail: Option<u32>,
) -> Result<String, LogsError> {
    let no_group = || LogsError::NoGroup {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    };
    // This cluster's name for the group, else the name groups had before
    // cluster hashing (still running after an upgrade); the tags decide.
    let mut found = None;
    for name in [
        group_name_in(cluster_id, namespace, pod),
        group_name(namespace, pod),
    ] {
        if let Some(g) = aci.get(&name).await? {
            let tag = |k: &str| g.tags.get(k).map(String::as_str);
            if tag(TAG_CLUSTER) == Some(cluster_id)
                && tag(TAG_NAMESPACE) == Some(namespace)
                && tag(TAG_POD_NAME) == Some(pod)
            {
                found = Some(name);
                break;
            }
        }
    }
    let name = found.ok_or_else(no_group)?;
    match aci.logs(&name, container, tail).await {
        Ok(text) => Ok(text),
        Err(AciError::NotFound) => Err(LogsError::NoContainer {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Container log requests answered per second from ACI, and at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogBudget {
    pub per_sec: f64,
    pub burst: u32,
}

impl Default for LogBudget {
    /// 2 requests/s (4 ARM reads/s beside the provider's 12), 10 at once.
    fn default() -> Self {
        Self {
            per_sec: 2.0,
            burst: 10,
        }
    }
}

/// Container logs from ACI within a [`LogBudget`].
pub struct LogReader {
    aci: Arc<dyn ContainerGroups>,
    /// Whose groups it reads (their names carry it; their tags must match).
    cluster_id: Arc<str>,
    budget: LogBudget,
    bucket: Mutex<TokenBucket>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    /// Reading through `aci`, which should be a client of its own (see the
    /// module documentation), within `budget`.
    pub fn new(aci: Arc<dyn ContainerGroups>, cluster_id: &str, budget: LogBudget) -> Self {
        Self {
            aci,
            cluster_id: cluster_id.into(),
            budget,
            bucket: Mutex::new(TokenBucket::new(
                budget.per_sec,
                budget.burst,
                Instant::now(),
            )),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One container's log, if the budget has room now (it never waits).
    pub async fn read(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        tail: Option<u32>,
    ) -> Result<String, LogsError> {
        if let Some(retry_after) = self.bucket().take(Instant::now()) {
            return Err(LogsError::Budget {
                per_sec: self.budget.per_sec,
                burst: self.budget.burst,
                retry_after,
            });
        }
        let result = container_logs(
            self.aci.as_ref(),
            &self.cluster_id,
            namespace,
            pod,
            container,
            tail,
        )
        .await;
        if let Err(LogsError::Aci(AciError::Throttled { retry_after })) = &result {
            let now = Instant::now();
            self.bucket().throttled(now + *retry_after, now);
        }
        result
    }
}

/// The route's handler.
pub async fn handler(
    State(logs): State<Arc<LogReader>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<String, LogsError> {
    logs.read(&namespace, &pod, &container, q.tail_lines).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::{BoxFuture, ContainerGroup, Usage};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// One group `web/api`, counting every call.
    #[derive(Default)]
    struct Counting {
        calls: AtomicU32,
        throttle: bool,
    }

    impl ContainerGroups for Counting {
        fn create_or_update<'a>(
            &'a self,
            group: &'a ContainerGroup,
        ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
            Box::pin(async move { Ok(group.clone()) })
        }
        fn get<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.throttle {
                    return Err(AciError::Throttled {
                        retry_after: Duration::from_secs(7),
                    });
                }
                let mut g = ContainerGroup {
                    name: name.to_string(),
                    ..ContainerGroup::default()
                };
                g.tags = BTreeMap::from([
                    (TAG_CLUSTER.to_string(), "c1".to_string()),
                    (TAG_NAMESPACE.to_string(), "web".to_string()),
                    (TAG_POD_NAME.to_string(), "api".to_string()),
                ]);
                Ok(Some(g))
            })
        }
        fn list<'a>(
            &'a self,
            _cluster_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
            Box::pin(async { Ok(()) })
        }
        fn logs<'a>(
            &'a self,
            _name: &'a str,
            container: &'a str,
            _tail: Option<u32>,
        ) -> BoxFuture<'a, Result<String, AciError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(format!("log of {container}\n"))
            })
        }
        fn usage<'a>(&'a self, _location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
            Box::pin(async { Err(AciError::NotFound) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_is_a_429_that_calls_nothing() {
        let aci = Arc::new(Counting::default());
        let reader = LogReader::new(
            aci.clone(),
            "c1",
            LogBudget {
                per_sec: 0.5,
                burst: 2,
            },
        );
        for _ in 0..2 {
            let text = reader.read("web", "api", "app", None).await;
            assert_eq!(text.ok().as_deref(), Some("log of app\n"));
        }
        assert_eq!(aci.calls.load(Ordering::SeqCst), 4, "two ARM reads each");
        let refused = reader
            .read("web", "api", "app", None)
            .await
            .err()
            .unwrap_or_else(|| panic!("over budget"));
        assert_eq!(aci.calls.load(Ordering::SeqCst), 4, "ACI not called");
        assert_eq!(
            refused.to_string(),
            "log read budget spent: this node answers at most 0.5/s container log requests from ACI (2 at once; --kubelet-log-qps, --kubelet-log-burst); retry in 2s"
        );
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            reader.read("web", "api", "app", None).await.is_ok(),
            "refilled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_arm_pauses_the_budget() {
        let aci = Arc::new(Counting {
            throttle: true,
            ..Counting::default()
        });
        let reader = LogReader::new(aci.clone(), "c1", LogBudget::default());
        let first = reader.read("web", "api", "app", None).await;
        let response = first
            .err()
            .unwrap_or_else(|| panic!("throttled"))
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let second = reader.read("web", "api", "app", None).await;
        assert!(
            matches!(second, Err(LogsError::Budget { .. })),
            "{second:?}"
        );
        assert_eq!(
            aci.calls.load(Ordering::SeqCst),
            1,
            "no call during the pause"
        );
    }
}
