//! `spillway run`: the all-in-one process — scheduler extender, autoscaler,
//! metrics — with leader election.
//!
//! Every replica watches the cluster and serves the extender (its decisions
//! are read-only, so kube-scheduler never loses its extender during a
//! failover). Only the holder of the Lease `--lease-name` in `--namespace`
//! runs the autoscaler's writes. On shutdown the lease is released so a
//! standby takes over at once instead of after the lease expires.
//!
//! With `--aci azure|emulator` the leader is also the virtual node itself
//! (`provider/`); with `--aci none` (default) run beside the AKS virtual
//! node add-on.
//!
//! `--dry-run` writes nothing anywhere: no leader election (a Lease is a
//! write; every dry-run replica decides and logs as if it led), no
//! reservations, no autoscaler writes, and no embedded provider (refused
//! with `--aci`, whose every step is a write).

use crate::autoscaler::pools::NodeGroupStatus;
use crate::autoscaler::{ActConfig, Actor, Autoscaler, LoopConfig};
use crate::cli::EXIT_BAD_INPUT;
use crate::cluster::{self, ClusterConfig, ClusterView};
use crate::decision::{Engine, EngineConfig};
use crate::extender::reservations::SharedReservations;
use crate::extender::{AppState, DEFAULT_MAX_BODY_BYTES, PolicySource};
use crate::metrics::Metrics;
use crate::policy::reload::PolicyStore;
use crate::provider::cli::AciBackend;
use crate::units::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader removes settled burst reservations.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Flags of `spillway run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunCommand {
    /// Address of the HTTP server (extender, /metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080", env = "SPILLWAY_LISTEN")]
    pub listen: SocketAddr,
    /// Directory of BurstPolicy files (hot-reloaded; a bad reload keeps the last good set).
    #[arg(
        long,
        default_value = "/etc/spillway/policies",
        env = "SPILLWAY_POLICIES"
    )]
    pub policies: PathBuf,
    /// Largest extender request body accepted; larger ones get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
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
    /// Namespace spillway runs in: its Lease and its capacity placeholders live here.
    #[arg(long, default_value = "spillway-system", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This replica's identity in leader election (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "spillway-leader")]
    pub lease_name: String,
    /// Name of the ConfigMap (in --namespace) where replicas reserve burst
    /// budget, so budgets hold across replicas.
    #[arg(long, default_value = crate::extender::reservations::DEFAULT_NAME)]
    pub reservations_configmap: String,
    /// Lease duration in seconds: how long a crashed leader blocks a standby.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_seconds: u64,
    /// Autoscaler tick in milliseconds (it also wakes on cluster changes).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub tick_ms: u64,
    /// Image of capacity placeholder pods.
    #[arg(long, default_value = "registry.k8s.io/pause:3.10")]
    pub placeholder_image: String,
    /// PriorityClass of capacity placeholders (below every workload; shipped in deploy/).
    #[arg(long, default_value = "spillway-placeholder")]
    pub placeholder_priority_class: String,
    /// `pod-deletion-cost` given to burst pods so a scale-in removes them first.
    #[arg(long, default_value_t = -1000, allow_hyphen_values = true)]
    pub burst_deletion_cost: i64,
    /// Minimum time an eviction counts as in flight for its controller (it also
    /// stays in flight while the evicted pod exists or the controller has a pod
    /// pending), in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub eviction_settle_ms: u64,
    /// Decide and log, never write: no Lease (every dry-run replica decides
    /// as if it led), no reservations, no pod changes. Refused with --aci.
    #[arg(long)]
    pub dry_run: bool,
    /// How often to re-read the policy directory, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub policy_reload_secs: u64,
    /// Minimum time between two rebuilds of the cluster view, in milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub view_refresh_ms: u64,
    /// The embedded ACI provider (`--aci`, `--node-name`, …).
    #[command(flatten)]
    pub provider: Box<crate::provider::cli::ProviderArgs>,
    /// The mutating admission webhook (`--webhook-listen`, …).
    #[command(flatten)]
    pub webhook: Box<WebhookFlags>,
    /// The IoT Edge virtual node (`--edge`, `--edge-node`, …).
    #[command(flatten)]
    pub edge: Box<crate::edge::node::EdgeArgs>,
}

/// Flags of the mutating admission webhook (`src/admission/`).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookFlags {
    /// Address of the webhook's HTTPS server (POST /mutate-pods).
    #[arg(long, default_value = "0.0.0.0:9443", env = "SPILLWAY_WEBHOOK_LISTEN")]
    pub webhook_listen: SocketAddr,
    /// The schedulerName the webhook gives pods that may reach the virtual node.
    #[arg(long, default_value = crate::admission::SPILLWAY_SCHEDULER)]
    pub webhook_scheduler_name: String,
    /// Pods pinned to the virtual node (`nodeSelector: type: virtual-kubelet`,
    /// as in the AKS virtual-node example): `relax` removes the pin so VMs
    /// come first and spillway decides when to burst (a pod keeps it with
    /// the annotation `spillway.io/virtual-node-pin: keep`); `keep` leaves
    /// them pinned (they burst as soon as their policy allows).
    #[arg(long, value_enum, default_value_t = crate::admission::pin::PinMode::Relax)]
    pub webhook_virtual_node_pin: crate::admission::pin::PinMode,
    /// The MutatingWebhookConfiguration whose caBundle gets this replica's CA
    /// (with a generated certificate). Empty: publish nothing.
    #[arg(
        long,
        default_value = "spillway",
        env = "SPILLWAY_WEBHOOK_CONFIGURATION"
    )]
    pub webhook_configuration: String,
    /// The Service in --namespace the API server calls: the generated
    /// certificate is for SERVICE.NAMESPACE.svc (and .svc.cluster.local).
    #[arg(long, default_value = "spillway")]
    pub webhook_service: String,
    /// More names or IP addresses for the generated certificate (repeatable;
    /// e.g. the host of a `clientConfig.url`).
    #[arg(long = "webhook-cert-host", value_name = "HOST")]
    pub webhook_cert_hosts: Vec<String>,
    /// PEM certificate chain of the webhook (e.g. from cert-manager, which
    /// then injects the CA); with --webhook-tls-key. Default: generated at start-up.
    #[arg(long, requires = "webhook_tls_key", env = "SPILLWAY_WEBHOOK_TLS_CERT")]
    pub webhook_tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook (with --webhook-tls-cert).
    #[arg(long, requires = "webhook_tls_cert", env = "SPILLWAY_WEBHOOK_TLS_KEY")]
    pub webhook_tls_key: Option<PathBuf>,
}

impl RunCommand {
    /// Check the flags completely before anything starts.
    pub fn validate(&self) -> Result<(), FlagError> {
        self.provider.validate()?;
        if self.webhook.webhook_scheduler_name.trim().is_empty() {
            return Err(FlagError::EmptySchedulerName);
        }
        self.edge.validate()?;
        if self.dry_run && self.edge.mode != crate::edge::node::EdgeMode::None {
            return Err(FlagError::DryRunWithEdge);
        }
        if self.dry_run {
            match self.provider.backend {
                AciBackend::None => {}
                AciBackend::Azure => return Err(FlagError::DryRunWithProvider("azure")),
                AciBackend::Emulator => return Err(FlagError::DryRunWithProvider("emulator")),
            }
        }
        Ok(())
    }

    /// Every virtual node name spillway acts on by name: `--virtual-node-name`
    /// and, when spillway is the virtual node, its `--node-name` (and the
    /// Windows node's name with `--aci-windows`). Without the latter a custom
    /// node name would not count as virtual where only names are compared
    /// (placeholders, drain-back evictions, deletion cost).
    pub fn virtual_node_names(&self) -> Vec<String> {
        let mut names = self.cluster.virtual_node_names.clone();
        if self.provider.backend != AciBackend::None {
            let own = std::iter::once(self.provider.node_name.clone())
                .chain(self.provider.windows_node_name());
            for name in own {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    pub fn cluster_config(&self) -> ClusterConfig {
        let mut config = self.cluster.cluster_config();
        config.virtual_nodes.names.extend(self.virtual_node_names());
        config
    }

    /// The webhook's rule settings; the embedded virtual node applies the
    /// same rule to pods that reached it without the webhook.
    pub fn admission_config(&self) -> crate::admission::AdmissionConfig {
        let mut system_namespaces = vec!["kube-system".to_string()];
        if self.namespace != "kube-system" {
            system_namespaces.push(self.namespace.clone());
        }
        crate::admission::AdmissionConfig {
            scheduler_name: self.webhook.webhook_scheduler_name.clone(),
            virtual_nodes: self.cluster_config().virtual_nodes,
            system_namespaces,
            pin_mode: self.webhook.webhook_virtual_node_pin,
        }
    }

    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("spillway-{}", std::process::id()))
    }
}

/// A combination of `spillway run` flags that cannot work (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(
        "--dry-run cannot be combined with --aci {0}: the embedded virtual node only writes (it registers the node, renews its Lease, writes pod status and creates billed ACI container groups). Use --dry-run with --aci none (the default), or drop --dry-run"
    )]
    DryRunWithProvider(&'static str),
    #[error(
        "--webhook-scheduler-name must not be empty: it is the schedulerName the webhook gives pods (default spillway-scheduler, the profile in deploy/scheduler/)"
    )]
    EmptySchedulerName,
    #[error("{0}")]
    Provider(#[from] crate::provider::cli::ProviderSetupError),
    #[error(
        "--dry-run cannot be combined with --edge hub|emulator: the edge virtual node only writes (it registers the node and creates IoT Edge deployments). Drop one of them"
    )]
    DryRunWithEdge,
    #[error("{0}")]
    Edge(#[from] crate::edge::node::EdgeSetupError),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Flags(#[from] FlagError),
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("embedded provider: {0}")]
    Provider(#[from] crate::provider::cli::ProviderSetupError),
    #[error("{0}")]
    Webhook(#[from] crate::admission::tls::TlsError),
    #[error("edge virtual node: {0}")]
    Edge(#[from] crate::edge::node::EdgeSetupError),
}

/// `spillway run`.
pub fn run(cmd: RunCommand) -> ExitCode {
    let Some(runtime) = crate::cli::server_runtime("run") else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = cmd.validate() {
        eprintln!("spillway run: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let store = match crate::cli::open_policy_store(
            &cmd.policies,
            metrics.clone(),
            "spillway run: --policies: ",
        ) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let config = match cmd.kube.config().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spillway run: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        let listener = match tokio::net::TcpListener::bind(cmd.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("spillway run: --listen {}: {e}", cmd.listen);
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        let webhook = match tokio::net::TcpListener::bind(cmd.webhook.webhook_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "spillway run: --webhook-listen {}: {e}",
                    cmd.webhook.webhook_listen
                );
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        match run_with_webhook(
            config,
            &cmd,
            store,
            metrics,
            listener,
            Some(webhook),
            crate::cli::shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            // An unreadable certificate or key is bad input, found before
            // anything started.
            Err(e @ RunError::Webhook(_)) => {
                eprintln!("spillway run: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
            Err(e) => {
                eprintln!("spillway run: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Run everything but the admission webhook until `shutdown` resolves.
/// `config` is the Kubernetes client configuration (the caller infers it;
/// tests point it at the test API server).
pub async fn run_with(
    config: kube::Config,
    cmd: &RunCommand,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_webhook(config, cmd, store, metrics, listener, None, shutdown).await
}

/// [`run_with`], plus the admission webhook on `webhook` when given
/// (`spillway run` binds `--webhook-listen`; tests bind port 0). With
/// `--dry-run` the webhook is not served and its CA not published: a
/// mutated pod is a write.
pub async fn run_with_webhook(
    config: kube::Config,
    cmd: &RunCommand,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    webhook: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    cmd.validate()?;
    // The webhook's certificate first: bad files stop everything before it starts.
    let webhook = match webhook {
        Some(_) if cmd.dry_run => {
            tracing::info!(
                "--dry-run: the admission webhook is not served (a mutated pod is a write)"
            );
            None
        }
        Some(listener) => Some((listener, webhook_tls(cmd)?)),
        None => None,
    };
    // Timeouts for every request/response call; watches on their own client.
    let clients = cmd.kube.clients(config)?;
    let client = clients.calls.clone();
    // Writes must not hide a PDB's 429 behind minutes of client retries.
    let act_client = clients.calls_no_retry.clone();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let view = Arc::new(
        ClusterView::new(cmd.cluster_config()).with_rebuild_histogram(metrics.view_rebuild.clone()),
    );
    let reflectors = tokio::spawn(cluster::view::run_reflectors(
        clients.watches.clone(),
        view.clone(),
        Duration::from_millis(cmd.view_refresh_ms),
    ));
    let reload = tokio::spawn(
        store
            .clone()
            .watch(Duration::from_secs(cmd.policy_reload_secs)),
    );
    let (ca_tx, mut ca_rx) = tokio::sync::watch::channel(None);
    let ca_watch = tokio::spawn(cluster::ca_status::watch(clients.watches.clone(), ca_tx));
    let identity = cmd.identity();
    // Conflicts are answered by re-reading, so no client-side retries.
    let reservations = SharedReservations::new(
        act_client.clone(),
        &cmd.namespace,
        &cmd.reservations_configmap,
        &identity,
    );
    let mut state = AppState::new(
        PolicySource::Store(store.clone()),
        view.clone(),
        metrics.clone(),
    )
    .with_max_body_bytes(cmd.max_body_bytes)
    .with_limits(
        cmd.max_concurrent_requests,
        Duration::from_millis(cmd.request_deadline_ms),
    );
    // --dry-run writes nothing, reservations included: budgets are then
    // counted per replica only.
    if !cmd.dry_run {
        state = state.with_reservations(reservations.clone());
    }
    let server = tokio::spawn(crate::extender::serve(
        listener,
        state,
        stopped(stop_rx.clone()),
    ));
    let webhook_tasks = match webhook {
        Some((listener, tls)) => start_webhook(
            cmd,
            &clients,
            &store,
            &metrics,
            listener,
            tls,
            stop_rx.clone(),
        ),
        None => Vec::new(),
    };

    // A dry run takes no Lease (that is a write): every dry-run replica
    // decides and logs as if it led, and `dry_leader` keeps that signal on.
    let mut guard_task = None;
    let (leader, lease_task, dry_leader) = if cmd.dry_run {
        let (tx, rx) = tokio::sync::watch::channel(true);
        (rx, None, Some(tx))
    } else {
        let manager = LeaseManagerBuilder::new(client.clone(), &cmd.lease_name)
            .with_namespace(&cmd.namespace)
            .with_identity(&identity)
            .with_duration(cmd.lease_seconds)
            .with_grace((cmd.lease_seconds / 3).max(1))
            .build()
            .await?;
        let (manager_leader, task) = manager.watch().await;
        // Act only while the Lease itself names this replica (see crate::leader).
        let (leader, guard) = crate::leader::guard(
            manager_leader,
            kube::Api::namespaced(client.clone(), &cmd.namespace),
            cmd.lease_name.clone(),
            identity.clone(),
            crate::leader::check_every(cmd.lease_seconds),
            stop_rx.clone(),
        );
        guard_task = Some(guard);
        (leader, Some(task), None)
    };
    // `validate` refused --dry-run with a provider; this is the second lock.
    let provider = if cmd.dry_run {
        None
    } else {
        crate::provider::cli::start(
            &cmd.provider,
            &clients,
            leader.clone(),
            metrics.clone(),
            store.clone(),
            stop_rx.clone(),
            crate::provider::cli::SpillwayScheduler {
                admission: cmd.admission_config(),
                view: view.clone(),
                reservations: (!cmd.dry_run).then(|| reservations.clone()),
            },
        )
        .await?
    };
    // The IoT Edge virtual node, also leader-only; `validate` refused it with --dry-run.
    let edge = if cmd.dry_run {
        None
    } else {
        crate::edge::node::start(
            &cmd.edge,
            clients.calls.clone(),
            clients.watches.clone(),
            &cmd.provider.internal_ip(),
            leader.clone(),
            stop_rx.clone(),
            Some(metrics.clone()),
        )
        .await?
    };
    // Placeholders are owned by the Lease in spillway's namespace: deleting
    // the installation (and its namespace) collects them.
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &cmd.namespace);
    let owner = match leases.get_opt(&cmd.lease_name).await {
        Ok(Some(l)) => l.metadata.uid.map(|uid| OwnerReference {
            api_version: "coordination.k8s.io/v1".into(),
            kind: "Lease".into(),
            name: cmd.lease_name.clone(),
            uid,
            ..Default::default()
        }),
        _ => None,
    };
    let actor = Actor::new(
        act_client,
        ActConfig {
            placeholder_namespace: cmd.namespace.clone(),
            placeholder_image: cmd.placeholder_image.clone(),
            placeholder_priority_class: cmd.placeholder_priority_class.clone(),
            owner,
            virtual_node_names: cmd.virtual_node_names(),
            dry_run: cmd.dry_run,
            ..ActConfig::default()
        },
    );
    let cluster_config = cmd.cluster_config();
    let mut autoscaler = Autoscaler::new(
        Engine::new(EngineConfig::default()),
        cluster_config,
        LoopConfig {
            burst_deletion_cost: cmd.burst_deletion_cost,
            eviction_settle: crate::units::Duration::from_millis(cmd.eviction_settle_ms),
            ..LoopConfig::default()
        },
        cmd.namespace.clone(),
        actor,
    );
    autoscaler.metrics = Some(metrics.clone());
    tracing::info!(identity = %identity, lease = %cmd.lease_name, namespace = %cmd.namespace, dry_run = cmd.dry_run, "spillway running");

    let tick = Duration::from_millis(cmd.tick_ms);
    let mut stop = stop_rx.clone();
    // When the view last got pool info (the learner changes it too, so it
    // is refreshed at least every 10 s, and at once when the status changes).
    let mut last_info: Option<tokio::time::Instant> = None;
    let mut last_reconcile: Option<tokio::time::Instant> = None;
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(tick) => {},
            _ = view.changed() => {},
            Ok(()) = ca_rx.changed() => last_info = None,
        }
        let synced = view.is_synced();
        metrics.ready.set(i64::from(synced));
        let is_leader = *leader.borrow();
        if is_leader != was_leader {
            tracing::info!(identity = %identity, leader = is_leader, "leadership changed");
            was_leader = is_leader;
            // What the leader published is the new leader's to say now; kept
            // here it would be counted twice, or alert forever.
            if !is_leader {
                metrics.reset_leader_gauges();
            }
        }
        // Every replica watches the autoscaler's status, so the extender's
        // predictions use upcoming nodes too; the leader adds what it learned.
        let ca: Option<Vec<NodeGroupStatus>> = ca_rx.borrow_and_update().clone();
        if last_info.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_info = Some(tokio::time::Instant::now());
            view.set_pool_info(autoscaler.learner.info(ca.as_deref().unwrap_or_default()));
        }
        if !is_leader || !synced {
            continue;
        }
        let state = view.current();
        let policies = store.current();
        let report = autoscaler
            .pass_with(
                &state.nodes,
                &state.pods,
                &state.bound,
                &state.pdbs,
                &policies,
                ca.as_deref(),
                Timestamp::now_wall(),
            )
            .await;
        if !report.results.is_empty() {
            tracing::debug!(actions = report.results.len(), "autoscaler pass");
        }
        // The extender reserves, the loop reconciles: drop reservations the
        // view has caught up with, so the ConfigMap stays small when idle.
        if !cmd.dry_run && last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
            last_reconcile = Some(tokio::time::Instant::now());
            match reservations.reconcile(&state, Timestamp::now_wall()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "burst reservations reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconciling burst reservations failed"),
            }
        }
        // Never act twice within the tick's first 100 ms of a change storm.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    if let Some(p) = provider
        && let Err(e) = p.task.await
    {
        tracing::warn!(error = %e, "provider task failed");
    }
    if let Some(e) = edge {
        if let Err(err) = e.task.await {
            tracing::warn!(error = %err, "edge node task failed");
        }
        if let Some(emu) = e.emulator {
            emu.shutdown().await;
        }
    }
    drop(leader);
    drop(dry_leader);
    // The guard holds the manager's signal; the manager releases the Lease
    // only once every holder of that signal is gone.
    if let Some(g) = guard_task
        && let Err(e) = g.await
    {
        tracing::warn!(error = %e, "leadership guard task failed");
    }
    if let Some(lease_task) = lease_task {
        tracing::info!(identity = %identity, "shutting down: releasing the lease");
        match lease_task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
    reflectors.abort();
    reload.abort();
    ca_watch.abort();
    for t in webhook_tasks {
        t.abort();
    }
    match server.await {
        Ok(r) => r?,
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    Ok(())
}

/// The webhook's serving configuration: from files, or generated (then with
/// the CA to publish).
fn webhook_tls(
    cmd: &RunCommand,
) -> Result<(Arc<rustls::ServerConfig>, Option<String>), crate::admission::tls::TlsError> {
    use crate::admission::tls;
    let flags = &cmd.webhook;
    Ok(match (&flags.webhook_tls_cert, &flags.webhook_tls_key) {
        (Some(cert), Some(key)) => (tls::from_files(cert, key)?, None),
        _ => {
            let mut hosts = tls::service_names(&flags.webhook_service, &cmd.namespace);
            hosts.extend(flags.webhook_cert_hosts.iter().cloned());
            let serving = tls::generate(&hosts)?;
            (serving.config, Some(serving.ca_pem))
        }
    })
}

/// Serve the admission webhook on `listener` (TLS), watch namespace labels
/// and keep this replica's CA in the MutatingWebhookConfiguration. Returns
/// the tasks to abort at shutdown.
#[allow(clippy::too_many_arguments)]
fn start_webhook(
    cmd: &RunCommand,
    clients: &crate::cli::KubeClients,
    store: &Arc<PolicyStore>,
    metrics: &Arc<Metrics>,
    listener: tokio::net::TcpListener,
    (tls_config, ca_pem): (Arc<rustls::ServerConfig>, Option<String>),
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::admission::{self, tls};
    let flags = &cmd.webhook;
    let mut tasks = Vec::new();
    if let Some(ca_pem) = ca_pem
        && !flags.webhook_configuration.is_empty()
    {
        tasks.push(tokio::spawn(tls::keep_published(
            clients.calls.clone(),
            flags.webhook_configuration.clone(),
            ca_pem,
        )));
    }
    let namespaces = admission::namespaces::NamespaceLabels::default();
    tasks.push(tokio::spawn(
        namespaces.clone().watch(clients.watches.clone()),
    ));
    let state = admission::WebhookState {
        policies: PolicySource::Store(store.clone()),
        namespaces,
        config: Arc::new(cmd.admission_config()),
        metrics: metrics.clone(),
    };
    let mut stop = stop;
    tasks.push(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = tls::serve_tls(listener, admission::app(state), tls_config, stopped).await {
            tracing::warn!(error = %e, "admission webhook server failed");
        }
    }));
    tasks
}
