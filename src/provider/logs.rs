//! The node's kubelet endpoint, as far as ACI can serve it:
//! `GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N` (what the
//! API server proxies `kubectl logs` to), answered from the ACI logs API.
//!
//! It reads only ACI; it never trusts the group name alone (names can
//! collide) and checks the group's namespace/pod tags.

use crate::aci::translate::group_name;
use crate::aci::{AciError, ContainerGroups, TAG_NAMESPACE, TAG_POD_NAME};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

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
    #[error("ACI: {0}")]
    Aci(#[from] AciError),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::NoGroup { .. } | LogsError::NoContainer { .. } => StatusCode::NOT_FOUND,
            LogsError::Aci(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            LogsError::Aci(_) => StatusCode::BAD_GATEWAY,
        };
        (status, self.to_string()).into_response()
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct LogQuery {
    #[serde(rename = "tailLines")]
    pub tail_lines: Option<u32>,
}

/// Read one container's log.
pub async fn container_logs(
    aci: &dyn ContainerGroups,
    namespace: &str,
    pod: &str,
    container: &str,
    tail: Option<u32>,
) -> Result<String, LogsError> {
    let name = group_name(namespace, pod);
    let no_group = || LogsError::NoGroup {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    };
    let group = aci.get(&name).await?.ok_or_else(no_group)?;
    let tag = |k: &str| group.tags.get(k).map(String::as_str);
    if tag(TAG_NAMESPACE) != Some(namespace) || tag(TAG_POD_NAME) != Some(pod) {
        return Err(no_group());
    }
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

async fn handler(
    State(aci): State<Arc<dyn ContainerGroups>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<String, LogsError> {
    container_logs(aci.as_ref(), &namespace, &pod, &container, q.tail_lines).await
}

/// The kubelet endpoint's router.
pub fn router(aci: Arc<dyn ContainerGroups>) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(handler),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(aci)
}

/// Serve the kubelet endpoint on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    aci: Arc<dyn ContainerGroups>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(aci))
        .with_graceful_shutdown(stop)
        .await
}
