//! [`Metered`]: any [`ContainerGroups`] with Prometheus metrics.
//!
//! Each call of the wrapped backend counts once in
//! `spillway_aci_requests_total{op,code}` and is timed in
//! `spillway_aci_request_duration_seconds{op}`; `usage` answers also set
//! `spillway_aci_quota_cores{kind=limit|used}`. Wrap the backend *inside* the
//! pacer (`Paced<Metered<AzureContainerGroups>>`) so every attempt (one ARM
//! request) is counted, retries included. Throttling is counted by
//! [`super::paced::Paced`], where `Retry-After` is honoured.
//!
//! Labels stay bounded: `op` is one of seven operation names and `code` one of
//! the outcome names of [`outcome_code`].

use super::{AciError, BoxFuture, ContainerGroup, ContainerGroups, Usage};
use crate::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// `op` label values.
pub const OPS: [&str; 7] = [
    "create", "get", "list", "delete", "logs", "metrics", "usage",
];

/// The `code` label of an outcome: `ok`, or the HTTP-ish name of the failure.
/// A `get` of a missing group answers `Ok(None)` but is labelled `not_found`,
/// as ARM answered 404.
pub fn outcome_code(error: Option<&AciError>) -> &'static str {
    match error {
        None => "ok",
        Some(AciError::Throttled { .. }) => "throttled",
        Some(AciError::Transient { .. }) => "transient",
        Some(AciError::QuotaExceeded { .. }) => "quota",
        Some(AciError::CapacityUnavailable { .. }) => "capacity",
        Some(AciError::InvalidSpec { .. }) => "invalid",
        Some(AciError::NotFound) => "not_found",
        Some(AciError::Auth { .. }) => "auth",
        Some(AciError::Conflict { .. }) => "conflict",
        Some(AciError::Protocol { .. }) => "protocol",
    }
}

/// A [`ContainerGroups`] that records every call in [`Metrics`].
pub struct Metered<C> {
    inner: C,
    metrics: Arc<Metrics>,
}

impl<C: ContainerGroups> Metered<C> {
    pub fn new(inner: C, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    async fn observe<T, Fut>(
        &self,
        op: &'static str,
        code_of_ok: impl Fn(&T) -> &'static str,
        fut: Fut,
    ) -> Result<T, AciError>
    where
        Fut: Future<Output = Result<T, AciError>>,
    {
        let start = Instant::now();
        let result = fut.await;
        self.metrics
            .aci_request_duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let code = match &result {
            Ok(v) => code_of_ok(v),
            Err(e) => outcome_code(Some(e)),
        };
        self.metrics
            .aci_requests
            .with_label_values(&[op, code])
            .inc();
        result
    }
}

fn ok<T>(_: &T) -> &'static str {
    "ok"
}

impl<C: ContainerGroups> ContainerGroups for Metered<C> {
    fn create_or_update<'a>(
        &'a self,
        group: &'a ContainerGroup,
    ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
        Box::pin(self.observe("create", ok, self.inner.create_or_update(group)))
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
        Box::pin(self.observe(
            "get",
            |g: &Option<ContainerGroup>| if g.is_some() { "ok" } else { "not_found" },
            self.inner.get(name),
        ))
    }
    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
        Box::pin(self.observe("list", ok, self.inner.list(cluster_id)))
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
        Box::pin(self.observe("delete", ok, self.inner.delete(name)))
    }
    fn logs<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        options: super::LogOptions,
    ) -> BoxFuture<'a, Result<String, AciError>> {
        Box::pin(self.observe("logs", ok, self.inner.logs(name, container, options)))
    }
    fn metrics<'a>(
        &'a self,
        name: &'a str,
        span: super::monitor::MetricsSpan,
    ) -> BoxFuture<'a, Result<super::monitor::GroupMetrics, AciError>> {
        Box::pin(self.observe("metrics", ok, self.inner.metrics(name, span)))
    }
    fn usage<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
        Box::pin(async move {
            let usage = self
                .observe("usage", ok, self.inner.usage(location))
                .await?;
            let cores = &self.metrics.aci_quota_cores;
            cores
                .with_label_values(&["limit"])
                .set(usage.cores.limit as f64);
            cores
                .with_label_values(&["used"])
                .set(usage.cores.current as f64);
            Ok(usage)
        })
    }
    fn exec<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        command: &'a str,
        terminal: super::TerminalSize,
    ) -> BoxFuture<'a, Result<super::ExecSession, AciError>> {
        Box::pin(self.observe(
            "exec",
            ok,
            self.inner.exec(name, container, command, terminal),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outcome_codes_are_few_and_distinct() {
        let errors = [
            AciError::Throttled {
                retry_after: Duration::from_secs(1),
            },
            AciError::Transient {
                message: String::new(),
            },
            AciError::QuotaExceeded {
                code: String::new(),
                message: String::new(),
            },
            AciError::CapacityUnavailable {
                message: String::new(),
            },
            AciError::InvalidSpec {
                message: String::new(),
            },
            AciError::NotFound,
            AciError::Auth {
                message: String::new(),
            },
            AciError::Conflict {
                message: String::new(),
            },
            AciError::Protocol {
                message: String::new(),
            },
        ];
        let mut codes: Vec<&str> = errors.iter().map(|e| outcome_code(Some(e))).collect();
        codes.push(outcome_code(None));
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "one code per outcome: {codes:?}");
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
