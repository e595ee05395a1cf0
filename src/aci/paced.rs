//! [`Paced`]: any [`ContainerGroups`] made a polite ARM client.
//!
//! - Token buckets for writes (create/delete) and reads
//!   (get/list/logs/metrics/usage)
//!   keep spillway below ARM's per-subscription limits instead of finding them.
//! - A 429 pauses *every* call of that class until its `Retry-After`, not just
//!   the one that was throttled.
//! - Throttled and transient failures are retried with capped exponential
//!   back-off and jitter, within an attempt limit and a total time budget.
//!   Every operation of the trait is idempotent by contract, so retrying a
//!   create whose answer was lost cannot duplicate a group.
//! - Errors retrying cannot fix (quota, capacity, invalid spec, auth) return
//!   at once.
//! - With [`Paced::with_metrics`], every 429 seen counts in
//!   `spillway_aci_throttled_total`. Wrap the backend in
//!   [`super::metered::Metered`] *inside* the pacer to count each attempt.
//!
//! Waiting here is the pacing itself (tokio timers), not a test waiting for
//! state.

use super::{AciError, BoxFuture, ContainerGroup, ContainerGroups, Usage};
use crate::metrics::Metrics;
use crate::pacing::TokenBucket;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Pacing and retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingConfig {
    /// Sustained writes per second (ARM refills 10/s per subscription; stay below).
    pub writes_per_sec: f64,
    pub write_burst: u32,
    /// Sustained reads per second (ARM refills 25/s).
    pub reads_per_sec: f64,
    pub read_burst: u32,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First back-off; doubled per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up when the next wait would end later than this after the call began.
    pub budget: Duration,
    /// Seed for back-off jitter.
    pub seed: u64,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            writes_per_sec: 5.0,
            write_burst: 50,
            reads_per_sec: 12.0,
            read_burst: 100,
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            budget: Duration::from_secs(120),
            seed: 0x5eed,
        }
    }
}

type Lane = TokenBucket;

struct Lanes {
    write: Lane,
    read: Lane,
    rng: SmallRng,
}

/// A [`ContainerGroups`] that paces, waits out throttling and retries.
pub struct Paced<C> {
    inner: C,
    config: PacingConfig,
    lanes: Mutex<Lanes>,
    metrics: Option<Arc<Metrics>>,
}

impl<C: ContainerGroups> Paced<C> {
    pub fn new(inner: C, config: PacingConfig) -> Self {
        let now = Instant::now();
        let lanes = Lanes {
            write: Lane::new(config.writes_per_sec, config.write_burst, now),
            read: Lane::new(config.reads_per_sec, config.read_burst, now),
            rng: SmallRng::seed_from_u64(config.seed),
        };
        Self {
            inner,
            config,
            lanes: Mutex::new(lanes),
            metrics: None,
        }
    }

    /// Count the 429s this pacer sees in `spillway_aci_throttled_total`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn acquire(&self, write: bool, deadline: Instant) -> Result<(), AciError> {
        loop {
            let wait = {
                let mut l = self.lanes();
                let lane = if write { &mut l.write } else { &mut l.read };
                lane.take(Instant::now())
            };
            match wait {
                None => return Ok(()),
                Some(w) if Instant::now() + w > deadline => {
                    return Err(AciError::Throttled { retry_after: w });
                }
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.max_backoff);
        // Equal jitter: half fixed, half random, so retries spread out.
        let jitter: f64 = self.lanes().rng.random();
        exp / 2 + exp.mul_f64(jitter / 2.0)
    }

    async fn run<'a, T, F, Fut>(&'a self, write: bool, op: F) -> Result<T, AciError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, AciError>> + 'a,
    {
        let start = Instant::now();
        let deadline = start + self.config.budget;
        let mut attempt = 0;
        loop {
            self.acquire(write, deadline).await?;
            let err = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            let (wait, sleep_here) = match &err {
                AciError::Throttled { retry_after } => {
                    if let Some(m) = &self.metrics {
                        m.aci_throttled.inc();
                    }
                    // Pause the whole class; `acquire` waits the pause out.
                    let now = Instant::now();
                    let mut l = self.lanes();
                    let lane = if write { &mut l.write } else { &mut l.read };
                    lane.throttled(now + *retry_after, now);
                    (*retry_after, false)
                }
                AciError::Transient { .. } => (self.backoff(attempt - 1), true),
                _ => return Err(err),
            };
            if attempt >= self.config.max_attempts || Instant::now() + wait > deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, attempt, ?wait, "retrying ACI call");
            if sleep_here {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl<C: ContainerGroups> ContainerGroups for Paced<C> {
    fn create_or_update<'a>(
        &'a self,
        group: &'a ContainerGroup,
    ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
        Box::pin(self.run(true, move || self.inner.create_or_update(group)))
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
        Box::pin(self.run(false, move || self.inner.get(name)))
    }
    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
        Box::pin(self.run(false, move || self.inner.list(cluster_id)))
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
        Box::pin(self.run(true, move || self.inner.delete(name)))
    }
    fn logs<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        options: super::LogOptions,
    ) -> BoxFuture<'a, Result<String, AciError>> {
        Box::pin(self.run(false, move || self.inner.logs(name, container, options)))
    }
    fn metrics<'a>(
        &'a self,
        name: &'a str,
        span: super::monitor::MetricsSpan,
    ) -> BoxFuture<'a, Result<super::monitor::GroupMetrics, AciError>> {
        Box::pin(self.run(false, move || self.inner.metrics(name, span)))
    }
    fn usage<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
        Box::pin(self.run(false, move || self.inner.usage(location)))
    }
    fn exec<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        command: &'a str,
        terminal: super::TerminalSize,
    ) -> BoxFuture<'a, Result<super::ExecSession, AciError>> {
        // A POST: ARM counts it against the write budget.
        Box::pin(self.run(true, move || {
            self.inner.exec(name, container, command, terminal)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_empties_the_lane_so_the_pause_ends_without_a_burst() {
        let t0 = Instant::now();
        let mut lane = Lane::new(2.0, 10, t0);
        assert_eq!(lane.take(t0), None, "9 tokens left");
        lane.throttled(t0 + Duration::from_secs(1), t0);
        assert_eq!(
            lane.take(t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600)),
            "paused"
        );
        let after = t0 + Duration::from_secs(1);
        assert_eq!(lane.take(after), None, "refilled 2 during the pause");
        assert_eq!(lane.take(after), None);
        assert_eq!(
            lane.take(after),
            Some(Duration::from_millis(500)),
            "not the 9 it had before the 429"
        );
        // A shorter second 429 does not cut the pause short.
        lane.throttled(after + Duration::from_secs(3), after);
        lane.throttled(after + Duration::from_secs(1), after);
        assert_eq!(lane.take(after), Some(Duration::from_secs(3)));
    }
}
