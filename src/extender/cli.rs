//! `spillway extender`: flags, start-up checks (exit 64 on bad configuration)
//! and the server's lifetime.

use super::reservations::SharedReservations;
use super::{AppState, DEFAULT_MAX_BODY_BYTES, PolicySource};
use crate::autoscaler::pools::ProvisionLearner;
use crate::cli::EXIT_BAD_INPUT;
use crate::cluster::{self, ClusterConfig, ClusterView};
use crate::metrics::Metrics;
use crate::units::Timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Run only the scheduler extender HTTP server.
#[derive(clap::Args, Debug, Clone)]
pub struct ExtenderCommand {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8888", env = "SPILLWAY_LISTEN")]
    pub listen: SocketAddr,
    /// Directory of BurstPolicy files (reloaded when it changes; a bad reload keeps the last good set).
    #[arg(long, default_value = "policies", env = "SPILLWAY_POLICIES")]
    pub policies: PathBuf,
    /// Read nodes and pods once from this file (`kubectl get nodes,pods -A -o yaml`)
    /// instead of watching the API server with the in-cluster / kubeconfig credentials.
    #[arg(long, value_name = "FILE")]
    pub cluster_state: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413. With `nodeCacheCapable: true`
    /// (names only) bodies stay small; full node lists of large clusters need more.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = clap::value_parser!(usize))]
    pub max_body_bytes: usize,
    /// Extender calls served at once; more get 503 at once (never queued
    /// past the scheduler's timeout).
    #[arg(long, default_value_t = crate::extender::DEFAULT_MAX_CONCURRENT, value_parser = clap::value_parser!(usize))]
    pub max_concurrent_requests: usize,
    /// Each extender call is answered within this many milliseconds, else
    /// 503 (below kube-scheduler's 1 s httpTimeout).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub request_deadline_ms: u64,
    #[command(flatten)]
    pub cluster: cluster::ClusterFlags,
    #[command(flatten)]
    pub kube: crate::cli::KubeFlags,
    /// How often to re-read the policy directory, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub policy_reload_secs: u64,
    /// Namespace spillway runs in; with a live cluster the replicas reserve
    /// burst budget in a ConfigMap here (see --reservations-configmap).
    #[arg(long, default_value = "spillway-system", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the ConfigMap where replicas reserve burst budget, so
    /// budgets hold across replicas. Not used with --cluster-state.
    #[arg(long, default_value = super::reservations::DEFAULT_NAME)]
    pub reservations_configmap: String,
    /// Minimum time between two rebuilds of the cluster view, in milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub view_refresh_ms: u64,
}

impl ExtenderCommand {
    pub fn cluster_config(&self) -> ClusterConfig {
        self.cluster.cluster_config()
    }
}

fn bad_input(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("spillway extender: {msg}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// `spillway extender`.
pub fn run(cmd: ExtenderCommand) -> ExitCode {
    let Some(runtime) = crate::cli::server_runtime("extender") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(run_async(cmd))
}

async fn run_async(cmd: ExtenderCommand) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    let store = match crate::cli::open_policy_store(
        &cmd.policies,
        metrics.clone(),
        "spillway extender: ",
    ) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let config = cmd.cluster_config();
    let mut shared = None;
    let view = match &cmd.cluster_state {
        Some(file) => match cluster::load_cluster_view_objects(file) {
            Ok(objects) => Arc::new(ClusterView::from_objects(
                &objects,
                Timestamp::now_wall(),
                config,
            )),
            Err(e) => return bad_input(e),
        },
        None => {
            let clients = match cmd.kube.config().await.and_then(|c| {
                cmd.kube
                    .clients(c)
                    .map_err(|e| format!("Kubernetes client: {e}"))
            }) {
                Ok(c) => c,
                Err(e) => return bad_input(format!("no --cluster-state FILE and {e}")),
            };
            let replica = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("spillway-extender-{}", std::process::id()));
            // Conflicts are answered by re-reading, so no client-side retries.
            shared = Some(SharedReservations::new(
                clients.calls_no_retry.clone(),
                &cmd.namespace,
                &cmd.reservations_configmap,
                &replica,
            ));
            let view = Arc::new(
                ClusterView::new(config).with_rebuild_histogram(metrics.view_rebuild.clone()),
            );
            // Upcoming VMs and pool bounds from the cluster autoscaler's status.
            let (ca_tx, mut ca_rx) = tokio::sync::watch::channel(None);
            tokio::spawn(cluster::ca_status::watch(clients.watches.clone(), ca_tx));
            let pools_view = view.clone();
            tokio::spawn(async move {
                let learner = ProvisionLearner::default();
                loop {
                    let groups = ca_rx.borrow_and_update().clone().unwrap_or_default();
                    pools_view.set_pool_info(learner.info(&groups));
                    if ca_rx.changed().await.is_err() {
                        break;
                    }
                }
            });
            let refresh = std::time::Duration::from_millis(cmd.view_refresh_ms);
            let watched = view.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    cluster::view::run_reflectors(clients.watches, watched, refresh).await
                {
                    tracing::error!(error = %e, "cluster view stopped");
                }
            });
            view
        }
    };
    tokio::spawn(
        store
            .clone()
            .watch(std::time::Duration::from_secs(cmd.policy_reload_secs)),
    );
    let listener = match tokio::net::TcpListener::bind(cmd.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spillway extender: cannot listen on {}: {e}", cmd.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %cmd.listen, policies = %cmd.policies.display(), "extender listening");
    let mut state = AppState::new(PolicySource::Store(store), view, metrics)
        .with_max_body_bytes(cmd.max_body_bytes)
        .with_limits(
            cmd.max_concurrent_requests,
            std::time::Duration::from_millis(cmd.request_deadline_ms),
        );
    if let Some(shared) = shared {
        state = state.with_reservations(shared);
    }
    match super::serve(listener, state, crate::cli::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spillway extender: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
