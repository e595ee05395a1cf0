//! The embedded ACI provider over the ACI emulator, as the provider-level
//! tests run it: fast intervals, a pacer that never binds, and one way to
//! start and stop it.
//!
//! ```ignore
//! let aci = support::provider_world::paced_aci(&emu);
//! let running = Running::start(&srv, aci, None, fast_config(CLUSTER));
//! eventually("the pod runs", WAIT, || async { running_pod(&srv) }).await;
//! running.stop().await;
//! ```

use spillway::aci::ContainerGroups;
use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::EmulatorHandle;
use spillway::aci::paced::{Paced, PacingConfig};
use spillway::metrics::Metrics;
use spillway::provider::{Provider, ProviderConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::TestApiServer;

/// The virtual node's name in these tests.
pub const NODE: &str = "spillway-aci";

/// Poll `check` every 50 ms until it holds or `within` passes; panics
/// naming `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Poll `check` every 50 ms until it gives a value or `within` passes;
/// panics naming `what`.
pub async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pacer that never binds in a test, retrying quickly.
pub fn fast_pacing() -> PacingConfig {
    PacingConfig {
        writes_per_sec: 50.0,
        write_burst: 50,
        reads_per_sec: 100.0,
        read_burst: 100,
        max_attempts: 8,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        budget: Duration::from_secs(10),
        seed: 7,
    }
}

/// The Azure SDK client of `emu` (subscription `sub-1`, resource group
/// `rg-1`), unpaced.
pub fn aci(emu: &EmulatorHandle) -> Arc<dyn ContainerGroups> {
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "sub-1", "rg-1");
    Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("azure client: {e}")))
}

/// The same behind a pacer of `pacing`.
pub fn paced_aci_with(emu: &EmulatorHandle, pacing: PacingConfig) -> Arc<dyn ContainerGroups> {
    let cfg = AzureConfig::for_emulator(&emu.url, "token", "sub-1", "rg-1");
    let client = AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("azure client: {e}"));
    Arc::new(Paced::new(client, pacing))
}

/// The same behind [`fast_pacing`].
pub fn paced_aci(emu: &EmulatorHandle) -> Arc<dyn ContainerGroups> {
    paced_aci_with(emu, fast_pacing())
}

/// The provider's configuration for node [`NODE`] of `cluster` with every
/// loop fast (syncs every 200 ms, the Lease every 300 ms, retries from
/// 200 ms up to 1 s).
pub fn fast_config(cluster: &str) -> ProviderConfig {
    let mut c = ProviderConfig::new(NODE, cluster, "westeurope", "10.1.2.3", 10250);
    c.sync_interval = Duration::from_millis(200);
    c.lease_interval = Duration::from_millis(300);
    c.usage_interval = Duration::from_millis(300);
    c.gc_interval = Duration::from_millis(500);
    c.refresh_interval = Duration::from_millis(500);
    c.retry_backoff = Duration::from_millis(200);
    c.max_retry_backoff = Duration::from_secs(1);
    c
}

/// A running provider, the leader until told otherwise; [`Running::stop`]
/// ends it (a provider that fails panics its task).
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Whether it leads: send `false` to make it step down.
    pub leader: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// The provider of `config` on `srv` and `aci`, counting in `metrics`.
    pub fn start(
        srv: &TestApiServer,
        aci: Arc<dyn ContainerGroups>,
        metrics: Option<Arc<Metrics>>,
        config: ProviderConfig,
    ) -> Self {
        let provider = Provider::new(srv.client(), aci, config, metrics);
        let (leader, leader_rx) = tokio::sync::watch::channel(true);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = provider
                .run(leader_rx, async {
                    let _ = rx.await;
                })
                .await
            {
                panic!("provider failed: {e}");
            }
        });
        Running {
            stop: Some(tx),
            task,
            leader,
        }
    }

    /// Stop it and wait (at most 5 s) for it to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}
