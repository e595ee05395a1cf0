//! The provider's flags of `spillway run` and turning them into a running
//! [`Provider`] plus its kubelet endpoint ([`crate::kubelet`]). `--aci none`
//! (the default) runs no provider at all.

use super::{Provider, ProviderConfig};
use crate::aci::ContainerGroups;
use crate::aci::azure::{AzureConfig, AzureContainerGroups, Credential};
use crate::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use crate::aci::paced::{Paced, PacingConfig};
use crate::kubelet::logs::{LogBudget, LogReader};
use crate::kubelet::{Access, ServeLimits};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Which ACI the virtual node uses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AciBackend {
    /// No provider: run beside the AKS virtual node add-on.
    None,
    /// Azure Resource Manager.
    Azure,
    /// The embedded ACI emulator, started in this process (local runs, demos).
    Emulator,
}

/// Provider flags (flattened into `spillway run`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// ACI backend of the embedded virtual node.
    #[arg(long = "aci", value_enum, default_value = "none", env = "SPILLWAY_ACI")]
    pub backend: AciBackend,
    /// With `--aci emulator`: use the ACI emulator already serving at this
    /// URL (`spillway aci-emulator`) instead of starting one in-process, so
    /// several replicas (or restarts) share one set of container groups.
    #[arg(long, value_name = "URL", env = "SPILLWAY_ACI_EMULATOR_URL")]
    pub aci_emulator_url: Option<String>,
    /// Name of the virtual node spillway registers.
    #[arg(long, default_value = "spillway-aci", env = "SPILLWAY_NODE_NAME")]
    pub node_name: String,
    /// Also register a Windows virtual node (`kubernetes.io/os=windows`, the
    /// same taint, its own Lease and capacity) beside the Linux one, over the
    /// same ACI client, resource group and cluster tag: pods that select
    /// `kubernetes.io/os: windows` land there and become `osType: Windows`
    /// container groups.
    #[arg(long, env = "SPILLWAY_ACI_WINDOWS")]
    pub aci_windows: bool,
    /// Name of the Windows virtual node (with --aci-windows). Default:
    /// `<--node-name>-windows`.
    #[arg(long, value_name = "NAME", env = "SPILLWAY_ACI_WINDOWS_NODE_NAME")]
    pub aci_windows_node_name: Option<String>,
    /// Address of the Windows node's kubelet endpoint (with --aci-windows):
    /// as a kubelet per node, each virtual node has its own, authorizing
    /// against its own name and reporting its own pods' metrics. TLS and
    /// authentication as --kubelet-listen's.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:10251",
        env = "SPILLWAY_ACI_WINDOWS_KUBELET_LISTEN"
    )]
    pub aci_windows_kubelet_listen: SocketAddr,
    /// Pods another scheduler bound to the virtual node although the
    /// admission webhook would have sent them to --webhook-scheduler-name
    /// (created before it, or while it was down): `run` them, with an Event
    /// NotAdmittedBySpillway and the gauge spillway_unadmitted_pods; or
    /// `reject` (fail, reason NotAdmitted) those spillway's engine would not
    /// have admitted.
    #[arg(
        long,
        value_enum,
        default_value = "run",
        env = "SPILLWAY_UNADMITTED_PODS"
    )]
    pub unadmitted_pods: super::unadmitted::Mode,
    /// Cluster id tagged on every container group and hashed into its name
    /// (`<namespace>-<pod>-<6 hex digits>`); GC touches only groups with
    /// this tag, and a group another cluster tagged is never overwritten, so
    /// it must be unique per cluster sharing a resource group. Default: the
    /// UID of the cluster's kube-system namespace (unique per cluster and
    /// stable for its life); changing it later orphans the groups tagged
    /// with the old id.
    #[arg(long, env = "SPILLWAY_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub aci_subscription: Option<String>,
    #[arg(long, env = "SPILLWAY_ACI_RESOURCE_GROUP")]
    pub aci_resource_group: Option<String>,
    #[arg(long, default_value = "westeurope", env = "SPILLWAY_ACI_REGION")]
    pub aci_region: String,
    /// A subnet delegated to Microsoft.ContainerInstance/containerGroups
    /// (ARM id `/subscriptions/…/resourceGroups/…/providers/Microsoft.Network/virtualNetworks/V/subnets/S`);
    /// repeat it (or separate ids with commas in the variable) for several.
    /// Container groups then join the cluster's VNet with a private IP, the
    /// pod IP (policy `aci.network`, default `private` when given); a pod's
    /// subnet is chosen by a hash of its group name.
    #[arg(
        long = "aci-subnet-id",
        value_name = "ID",
        value_parser = parse_subnet_id,
        value_delimiter = ',',
        env = "SPILLWAY_ACI_SUBNET_IDS"
    )]
    pub aci_subnet_ids: Vec<crate::aci::translate::SubnetId>,
    /// NAMESPACE/NAME of a Secret with keys `workspaceId` and
    /// `workspaceKey` (and optionally `logType`: ContainerInsights or
    /// ContainerInstanceLogs) of a Log Analytics workspace: every container
    /// group sends its logs there (`diagnostics.logAnalytics`), where they
    /// outlive the group. Read when a group is created; while it is missing
    /// or incomplete, burst pods wait with the error (CreateContainerConfigError).
    #[arg(
        long,
        value_name = "NS/SECRET",
        value_parser = parse_log_analytics,
        env = "SPILLWAY_ACI_LOG_ANALYTICS"
    )]
    pub aci_log_analytics: Option<super::resolve::LogAnalyticsSecret>,
    /// Memory reported per vCPU of quota left, in GiB.
    #[arg(long, default_value_t = 4.0)]
    pub aci_memory_gib_per_core: f64,
    /// Address of the kubelet endpoint (`kubectl logs`): HTTPS with
    /// --kubelet-tls-cert/--kubelet-tls-key or --kubelet-tls-self-signed,
    /// plain HTTP without.
    #[arg(long, default_value = "0.0.0.0:10250", env = "SPILLWAY_KUBELET_LISTEN")]
    pub kubelet_listen: SocketAddr,
    /// PEM certificate chain of the kubelet endpoint (with --kubelet-tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "SPILLWAY_KUBELET_TLS_CERT",
        requires = "kubelet_tls_key"
    )]
    pub kubelet_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the kubelet endpoint (with --kubelet-tls-cert).
    #[arg(
        long,
        value_name = "FILE",
        env = "SPILLWAY_KUBELET_TLS_KEY",
        requires = "kubelet_tls_cert"
    )]
    pub kubelet_tls_key: Option<std::path::PathBuf>,
    /// HTTPS on the kubelet endpoint with a certificate generated in memory
    /// at start-up, self-signed, for --node-ip and --node-name (instead of
    /// --kubelet-tls-cert/--kubelet-tls-key).
    #[arg(long, conflicts_with_all = ["kubelet_tls_cert", "kubelet_tls_key"])]
    pub kubelet_tls_self_signed: bool,
    /// Authenticate and authorize callers of the kubelet endpoint as the
    /// kubelet does (client certificates of --kubelet-client-ca, bearer
    /// tokens by TokenReview, then a SubjectAccessReview on
    /// nodes/proxy|log|… of this node; 401/403 otherwise). Default: on with
    /// TLS, where it cannot be turned off; off on plain HTTP (local runs
    /// and tests: anyone who reaches the port reads every burst pod's logs,
    /// logged as a warning), where `--kubelet-auth` turns it on for bearer
    /// tokens.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        env = "SPILLWAY_KUBELET_AUTH"
    )]
    pub kubelet_auth: Option<bool>,
    /// PEM bundle of the CAs whose client certificates the kubelet endpoint
    /// accepts (the API server's kubelet client certificate), re-read every
    /// minute. Default: `ca.crt` of the ConfigMap `kube-root-ca.crt` in
    /// spillway's namespace (the client's namespace: in a pod, its own).
    #[arg(long, value_name = "FILE", env = "SPILLWAY_KUBELET_CLIENT_CA")]
    pub kubelet_client_ca: Option<std::path::PathBuf>,
    /// Connections the kubelet endpoint serves at once; more wait until one
    /// ends. TLS handshakes and request headers must arrive within 10 s.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub kubelet_max_connections: u32,
    /// Container log requests per second the kubelet endpoint answers from
    /// ACI (two ARM reads each, apart from the provider's read budget);
    /// more wait their turn (--kubelet-log-max-wait). Followers
    /// (`kubectl logs -f`) poll within half of it, one read a poll: with F
    /// followers of quiet or busy logs, each sees new lines about every
    /// max(2, F / qps) seconds.
    #[arg(long, default_value_t = 2.0)]
    pub kubelet_log_qps: f64,
    /// Container log requests answered at once before --kubelet-log-qps applies.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub kubelet_log_burst: u32,
    /// Seconds a container log request waits in line for the log budget
    /// before it is answered 429 with Retry-After (0: answer at once).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub kubelet_log_max_wait: u64,
    /// ARM reads per second for /metrics/resource and /stats/summary (one
    /// group list and one Azure Monitor query per burst pod at most once a
    /// minute, apart from the provider's and the logs' budgets). With N
    /// burst pods a full refresh takes about N / this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub kubelet_metrics_qps: f64,
    /// ARM reads for metrics at once before --kubelet-metrics-qps applies.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub kubelet_metrics_burst: u32,
    /// `kubectl exec` sessions the kubelet endpoint bridges to ACI at once
    /// (each an ARM executeCommand and a WebSocket); more get 429. A session
    /// lasts at most 4 h.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub kubelet_max_exec_sessions: u32,
    /// The node's InternalIP (where the API server reaches the kubelet endpoint).
    #[arg(long, env = "POD_IP")]
    pub node_ip: Option<String>,
    /// Seconds between status syncs (one ACI list each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub aci_sync_secs: u64,
    /// Bound in seconds on a sync's ACI list (and again on its instance-view
    /// reads); a list taking longer counts as failed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub aci_list_timeout_secs: u64,
    /// Seconds of failing ACI calls before the node turns NotReady.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub aci_unreachable_secs: u64,
    /// Cluster DNS server IP(s) of burst pods with `dnsPolicy: ClusterFirst`
    /// (the kubelet's --cluster-dns; repeat or comma-separate). Default: the
    /// ClusterIP of the Service kube-system/kube-dns, read from a watch of
    /// Services (which also gives pods their service environment variables).
    #[arg(
        long,
        value_name = "IP",
        env = "SPILLWAY_CLUSTER_DNS",
        value_delimiter = ','
    )]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain: burst pods search `<ns>.svc.<domain>
    /// svc.<domain> <domain>` (the kubelet's --cluster-domain).
    #[arg(long, default_value = "cluster.local", env = "SPILLWAY_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
}

/// What a bad combination of flags is.
#[derive(Debug, thiserror::Error)]
pub enum ProviderSetupError {
    #[error("--aci azure needs {0}")]
    Missing(&'static str),
    #[error(
        "--cluster-id is not given and the kube-system namespace's UID (its default) cannot be read: {0}. Give --cluster-id (SPILLWAY_CLUSTER_ID), unique per cluster sharing the ACI resource group, or grant get on namespaces/kube-system"
    )]
    ClusterId(String),
    #[error("--aci-emulator-url must be an http:// or https:// URL, not {0:?}")]
    EmulatorUrl(String),
    #[error("{0}")]
    Windows(String),
    #[error("--aci-memory-gib-per-core must be positive, not {0}")]
    Ratio(f64),
    #[error("ACI client: {0}")]
    Azure(#[from] crate::aci::azure::AzureSetupError),
    #[error("embedded ACI emulator: {0}")]
    Emulator(#[from] crate::aci::emulator::EmulatorError),
    #[error("embedded ACI emulator: --aci-subnet-id {0}: {1}")]
    EmbeddedSubnet(String, String),
    #[error("kubelet endpoint TLS: {0}")]
    Tls(#[from] crate::kubelet::TlsError),
    #[error("--kubelet-client-ca: {0}")]
    ClientCa(String),
    #[error("{0}")]
    KubeletAuth(&'static str),
    #[error("--kubelet-log-qps must be positive, not {0}")]
    LogQps(f64),
    #[error("{0}")]
    ClusterDns(String),
    #[error("--kubelet-metrics-qps must be positive, not {0}")]
    MetricsQps(f64),
    #[error("kubelet endpoint {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ProviderArgs {
    /// Check the flags completely before anything starts.
    pub fn validate(&self) -> Result<(), ProviderSetupError> {
        if !(self.aci_memory_gib_per_core > 0.0 && self.aci_memory_gib_per_core.is_finite()) {
            return Err(ProviderSetupError::Ratio(self.aci_memory_gib_per_core));
        }
        if self.aci_windows_node_name.is_some() && !self.aci_windows {
            return Err(ProviderSetupError::Windows(
                "--aci-windows-node-name needs --aci-windows".into(),
            ));
        }
        if self.aci_windows && self.backend == AciBackend::None {
            return Err(ProviderSetupError::Windows(
                "--aci-windows needs --aci azure or --aci emulator: the Windows virtual node is a second node of the embedded ACI provider".into(),
            ));
        }
        if let Some(name) = self.windows_node_name()
            && name == self.node_name
        {
            return Err(ProviderSetupError::Windows(format!(
                "--aci-windows-node-name {name:?} is the Linux node's --node-name; the two virtual nodes need two names"
            )));
        }
        if self.aci_emulator_url.is_some() && self.backend != AciBackend::Emulator {
            return Err(ProviderSetupError::Missing(
                "--aci emulator when --aci-emulator-url is given",
            ));
        }
        if let Some(url) = &self.aci_emulator_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ProviderSetupError::EmulatorUrl(url.clone()));
        }
        let tls = self.kubelet_tls_self_signed || self.kubelet_tls_cert.is_some();
        if tls && self.kubelet_auth == Some(false) {
            return Err(ProviderSetupError::KubeletAuth(
                "--kubelet-auth=false is for plain HTTP only (local runs): with TLS the kubelet endpoint always authenticates its callers",
            ));
        }
        if !tls && self.kubelet_client_ca.is_some() {
            return Err(ProviderSetupError::KubeletAuth(
                "--kubelet-client-ca needs TLS on the kubelet endpoint (--kubelet-tls-self-signed or --kubelet-tls-cert/--kubelet-tls-key): plain HTTP carries no client certificate",
            ));
        }
        if !(self.kubelet_log_qps > 0.0 && self.kubelet_log_qps.is_finite()) {
            return Err(ProviderSetupError::LogQps(self.kubelet_log_qps));
        }
        super::services::parse_cluster_dns(&self.cluster_dns)
            .map_err(ProviderSetupError::ClusterDns)?;
        super::services::check_cluster_domain(&self.cluster_domain)
            .map_err(ProviderSetupError::ClusterDns)?;
        if !(self.kubelet_metrics_qps > 0.0 && self.kubelet_metrics_qps.is_finite()) {
            return Err(ProviderSetupError::MetricsQps(self.kubelet_metrics_qps));
        }
        if self.backend == AciBackend::Azure {
            if self.aci_subscription.as_deref().is_none_or(str::is_empty) {
                return Err(ProviderSetupError::Missing(
                    "--aci-subscription (AZURE_SUBSCRIPTION_ID)",
                ));
            }
            if self.aci_resource_group.as_deref().is_none_or(str::is_empty) {
                return Err(ProviderSetupError::Missing(
                    "--aci-resource-group (SPILLWAY_ACI_RESOURCE_GROUP)",
                ));
            }
        }
        Ok(())
    }

    /// The node's InternalIP: --node-ip, else the listen address (loopback
    /// when that is unspecified).
    pub fn internal_ip(&self) -> String {
        self.node_ip.clone().unwrap_or_else(|| {
            if self.kubelet_listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                self.kubelet_listen.ip().to_string()
            }
        })
    }

    /// The Windows virtual node's name, with `--aci-windows`.
    pub fn windows_node_name(&self) -> Option<String> {
        self.aci_windows.then(|| {
            self.aci_windows_node_name
                .clone()
                .unwrap_or_else(|| format!("{}-windows", self.node_name))
        })
    }

    /// The Windows node's provider settings: the Linux node's, with its own
    /// name and OS (with `--aci-windows`).
    fn windows_config(&self, cluster_id: &str, port: u16) -> Option<ProviderConfig> {
        let name = self.windows_node_name()?;
        let mut c = self.config(cluster_id, port);
        c.node.name = name;
        c.node.os = super::node::OS_WINDOWS.into();
        Some(c)
    }

    fn config(&self, cluster_id: &str, port: u16) -> ProviderConfig {
        let ip = self.internal_ip();
        let mut c = ProviderConfig::new(&self.node_name, cluster_id, &self.aci_region, ip, port);
        c.node.memory_gib_per_core = self.aci_memory_gib_per_core;
        c.sync_interval = Duration::from_secs(self.aci_sync_secs);
        c.unreachable_after = Duration::from_secs(self.aci_unreachable_secs);
        c.list_timeout = Duration::from_secs(self.aci_list_timeout_secs);
        c.aci_subnets = self.aci_subnet_ids.clone();
        c.aci_log_analytics = self.aci_log_analytics.clone();
        c
    }
}

/// The embedded emulator stands in for the VNet too: each `--aci-subnet-id`
/// becomes a subnet delegated to ACI, the i-th with `10.240.(100+i).0/24`
/// (a stand-alone `spillway aci-emulator` takes `--subnet ID=CIDR` instead).
fn define_embedded_subnets(
    emu: &EmulatorHandle,
    subnets: &[crate::aci::translate::SubnetId],
) -> Result<(), ProviderSetupError> {
    for (i, subnet) in subnets.iter().enumerate() {
        let def = crate::aci::emulator::SubnetDefinition {
            id: subnet.id().to_string(),
            address_prefix: format!("10.240.{}.0/24", 100 + i.min(155)),
            delegations: vec![crate::aci::emulator::ACI_DELEGATION.to_string()],
        };
        let defined = emu
            .state
            .define_subnet(def)
            .map_err(|e| ProviderSetupError::EmbeddedSubnet(subnet.id().to_string(), e))?;
        tracing::info!(subnet = %defined.id, prefix = %defined.address_prefix, "embedded ACI emulator: subnet defined");
    }
    Ok(())
}

/// How a kubelet endpoint is told to stop.
type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// `--aci-log-analytics`: `NAMESPACE/NAME` of a Secret.
pub fn parse_log_analytics(s: &str) -> Result<super::resolve::LogAnalyticsSecret, String> {
    super::resolve::LogAnalyticsSecret::parse(s)
}

/// `--aci-subnet-id`: an ARM subnet id, checked for shape.
pub fn parse_subnet_id(s: &str) -> Result<crate::aci::translate::SubnetId, String> {
    crate::aci::translate::SubnetId::parse(s)
}

/// Azure credentials from the environment: workload identity when its
/// webhook's variables are there, a service principal secret when given,
/// else the VM's managed identity.
fn credential_from_env() -> Result<Credential, crate::aci::azure::AzureSetupError> {
    if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Credential::workload_identity_from_env();
    }
    if let (Ok(tenant_id), Ok(client_id), Ok(client_secret)) = (
        std::env::var("AZURE_TENANT_ID"),
        std::env::var("AZURE_CLIENT_ID"),
        std::env::var("AZURE_CLIENT_SECRET"),
    ) {
        return Ok(Credential::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        });
    }
    Ok(Credential::ManagedIdentity)
}

/// A started provider: await `task` after `stop` fired.
pub struct Started {
    pub task: tokio::task::JoinHandle<()>,
    pub kubelet_addr: SocketAddr,
    /// The in-process emulator (`--aci emulator`), kept alive with the provider.
    pub emulator: Option<EmulatorHandle>,
}

/// The production stack around an ACI client: every attempt counted and timed
/// (`Metered`), then paced below ARM's limits with 429s counted (`Paced`).
fn metered_and_paced(
    client: AzureContainerGroups,
    metrics: &Arc<Metrics>,
) -> Arc<dyn ContainerGroups> {
    Arc::new(
        Paced::new(
            crate::aci::metered::Metered::new(client, metrics.clone()),
            PacingConfig::default(),
        )
        .with_metrics(metrics.clone()),
    )
}

/// What the rest of `spillway run` shares with the provider so it can
/// judge pods that bypassed spillway's scheduler (`--unadmitted-pods`).
#[derive(Debug, Clone)]
pub struct SpillwayScheduler {
    /// The admission webhook's rule settings (the schedulerName it sets,
    /// `--webhook-scheduler-name`, and the namespaces it leaves alone).
    pub admission: crate::admission::AdmissionConfig,
    /// The cluster view the extender decides with.
    pub view: Arc<crate::cluster::ClusterView>,
    /// The extender's burst reservations (`None` in a dry run).
    pub reservations: Option<crate::extender::reservations::SharedReservations>,
}

/// The kubelet endpoint's own ACI client for container logs and resource
/// metrics: counted and
/// timed like the provider's, but not behind the provider's pacer, so log
/// requests never spend the read budget status sync paces itself with;
/// `LogReader`'s own bucket (--kubelet-log-qps) paces them instead.
fn metered(client: AzureContainerGroups, metrics: &Arc<Metrics>) -> Arc<dyn ContainerGroups> {
    Arc::new(crate::aci::metered::Metered::new(client, metrics.clone()))
}

/// How the kubelet endpoint checks its callers, as `args` say; the task
/// that keeps the client CA current, if any.
async fn kubelet_access(
    args: &ProviderArgs,
    clients: &crate::cli::KubeClients,
    tls: bool,
    addr: SocketAddr,
    node_names: &[&str],
) -> Result<(Vec<Access>, Option<tokio::task::JoinHandle<()>>), ProviderSetupError> {
    use crate::kubelet::auth::{self, CaSource, ClientCa, KubeReviews, NodeAuth};
    if !args.kubelet_auth.unwrap_or(tls) {
        tracing::warn!(
            kubelet = %addr,
            "kubelet endpoint on plain HTTP WITHOUT authentication or authorization: anyone who reaches it reads the logs of every burst pod (local runs and tests only; use --kubelet-tls-self-signed or --kubelet-tls-cert in a cluster)"
        );
        return Ok((vec![Access::Open; node_names.len()], None));
    }
    let ca = ClientCa::empty();
    let ca_task = if tls {
        let source = match &args.kubelet_client_ca {
            Some(file) => {
                let source = CaSource::File(file.clone());
                // A bad file is a setup error, like a bad certificate.
                source
                    .load_into(&ca)
                    .await
                    .map_err(ProviderSetupError::ClientCa)?;
                source
            }
            None => CaSource::ConfigMap {
                client: clients.calls.clone(),
                namespace: clients.calls.default_namespace().to_string(),
                name: auth::ROOT_CA_CONFIGMAP.to_string(),
            },
        };
        tracing::info!(client_ca = %source, "kubelet endpoint: client certificates verified against the cluster CA, bearer tokens by TokenReview, access by SubjectAccessReview");
        Some(tokio::spawn(auth::keep_client_ca_loaded(
            source,
            ca.clone(),
            CLIENT_CA_RELOAD,
        )))
    } else {
        tracing::info!(
            "kubelet endpoint (plain HTTP): bearer tokens by TokenReview, access by SubjectAccessReview"
        );
        None
    };
    // One client CA (and its reloader) for every node's endpoint; each node
    // authorizes callers against its own name.
    let reviews = Arc::new(KubeReviews::new(clients.calls.clone(), REVIEW_TIMEOUT));
    let accesses = node_names
        .iter()
        .map(|name| {
            Access::Checked(Arc::new(NodeAuth::new(
                name.to_string(),
                ca.clone(),
                reviews.clone(),
                auth::AuthConfig::default(),
            )))
        })
        .collect();
    Ok((accesses, ca_task))
}

/// Bind a kubelet endpoint's listener; the address it got.
async fn bind_kubelet(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), ProviderSetupError> {
    let listen = |source| ProviderSetupError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    Ok((listener, bound))
}

/// How often the kubelet endpoint re-reads its client CA.
const CLIENT_CA_RELOAD: Duration = Duration::from_secs(60);
/// Bound on one TokenReview or SubjectAccessReview.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster id: `--cluster-id`, else the UID of the kube-system
/// namespace (what "this cluster" means to ARM tags and group names; the
/// namespace lives as long as the cluster).
pub async fn resolve_cluster_id(
    args: &ProviderArgs,
    client: &kube::Client,
) -> Result<String, ProviderSetupError> {
    if let Some(id) = args.cluster_id.as_deref().filter(|s| !s.trim().is_empty()) {
        return Ok(id.trim().to_string());
    }
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let uid = namespaces
        .get("kube-system")
        .await
        .map_err(|e| ProviderSetupError::ClusterId(e.to_string()))?
        .metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ProviderSetupError::ClusterId("the namespace has no uid".into()))?;
    tracing::info!(cluster_id = %uid, "cluster id: the kube-system namespace's UID (--cluster-id not given)");
    Ok(uid)
}

/// Start the provider and its kubelet endpoint as `args` say; `None` for
/// `--aci none`. The provider acts only while `leader` is true.
pub async fn start(
    args: &ProviderArgs,
    clients: &crate::cli::KubeClients,
    leader: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    policies: Arc<crate::policy::reload::PolicyStore>,
    stop: tokio::sync::watch::Receiver<bool>,
    scheduler: SpillwayScheduler,
) -> Result<Option<Started>, ProviderSetupError> {
    args.validate()?;
    let (aci, logs_aci, cluster_id, emulator): (
        Arc<dyn ContainerGroups>,
        Arc<dyn ContainerGroups>,
        String,
        Option<EmulatorHandle>,
    ) = match args.backend {
        AciBackend::None => return Ok(None),
        AciBackend::Azure => {
            let mut cfg = AzureConfig::new(
                args.aci_subscription.clone().unwrap_or_default(),
                args.aci_resource_group.clone().unwrap_or_default(),
                credential_from_env()?,
            );
            cfg.timeout = Duration::from_secs(30);
            (
                metered_and_paced(AzureContainerGroups::new(&cfg)?, &metrics),
                metered(AzureContainerGroups::new(&cfg)?, &metrics),
                resolve_cluster_id(args, &clients.calls).await?,
                None,
            )
        }
        AciBackend::Emulator => {
            let (url, emu) = match &args.aci_emulator_url {
                Some(url) => {
                    tracing::info!(url = %url, "using the ACI emulator at --aci-emulator-url");
                    (url.clone(), None)
                }
                None => {
                    let emu = Emulator::start(EmulatorConfig::default()).await?;
                    tracing::info!(url = %emu.url, "embedded ACI emulator started");
                    define_embedded_subnets(&emu, &args.aci_subnet_ids)?;
                    (emu.url.clone(), Some(emu))
                }
            };
            let cfg = AzureConfig::for_emulator(
                &url,
                "emulator",
                args.aci_subscription
                    .clone()
                    .unwrap_or_else(|| "emulator".into()),
                args.aci_resource_group
                    .clone()
                    .unwrap_or_else(|| "spillway".into()),
            );
            (
                metered_and_paced(AzureContainerGroups::new(&cfg)?, &metrics),
                metered(AzureContainerGroups::new(&cfg)?, &metrics),
                match resolve_cluster_id(args, &clients.calls).await {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::info!(error = %e, "the ACI emulator's groups are tagged with cluster id \"local\"");
                        "local".into()
                    }
                },
                emu,
            )
        }
    };
    // Certificates are read before anything starts: a bad file is a setup error.
    let tls = match (&args.kubelet_tls_cert, &args.kubelet_tls_key) {
        (Some(cert), Some(key)) => Some(crate::kubelet::tls_config(cert, key)?),
        _ if args.kubelet_tls_self_signed => {
            let ip = args.internal_ip();
            tracing::info!(ip = %ip, node = %args.node_name, "kubelet endpoint: self-signed certificate generated");
            Some(crate::kubelet::self_signed_tls_config(&ip, &args.node_name)?.config)
        }
        _ => None,
    };
    let (listener, kubelet_addr) = bind_kubelet(args.kubelet_listen).await?;
    let windows_name = args.windows_node_name();
    let names: Vec<&str> = std::iter::once(args.node_name.as_str())
        .chain(windows_name.as_deref())
        .collect();
    let (mut accesses, ca_task) =
        kubelet_access(args, clients, tls.is_some(), kubelet_addr, &names).await?;
    let windows_access = windows_name.as_ref().and_then(|_| accesses.pop());
    let access = accesses.pop().unwrap_or(Access::Open);
    // Resource metrics read through the same client of the endpoint's own,
    // within their own bucket; with a Windows node beside it, each node's
    // endpoint reports the groups of its OS.
    let resource_metrics = |node: &str, os: &str| {
        let m = crate::kubelet::metrics::ResourceMetrics::new(
            logs_aci.clone(),
            &cluster_id,
            node,
            crate::kubelet::metrics::MetricsConfig {
                per_sec: args.kubelet_metrics_qps,
                burst: args.kubelet_metrics_burst,
                ..crate::kubelet::metrics::MetricsConfig::default()
            },
        );
        Arc::new(if windows_name.is_some() {
            m.with_os_type(os)
        } else {
            m
        })
    };
    let linux_metrics = resource_metrics(&args.node_name, "Linux");
    let logs = Arc::new(
        LogReader::new(
            logs_aci.clone(),
            &cluster_id,
            LogBudget {
                per_sec: args.kubelet_log_qps,
                burst: args.kubelet_log_burst,
                max_wait: Duration::from_secs(args.kubelet_log_max_wait),
            },
        )
        .with_metrics(metrics.clone()),
    );
    let exec = Arc::new(crate::kubelet::exec::ExecBridge::new(
        logs.aci(),
        &cluster_id,
        crate::kubelet::exec::ExecLimits {
            max_sessions: usize::try_from(args.kubelet_max_exec_sessions).unwrap_or(16),
            ..Default::default()
        },
        metrics.clone(),
    ));
    // The Windows node's endpoint: its own port and authorization, the
    // same log reader and exec bridge (they find a pod's group by its tags).
    let windows_endpoint = match (&windows_name, windows_access) {
        (Some(name), Some(access)) => {
            let (listener, addr) = bind_kubelet(args.aci_windows_kubelet_listen).await?;
            let app = crate::kubelet::router_with(
                logs.clone(),
                exec.clone(),
                Some(resource_metrics(name, "Windows")),
                access,
            );
            tracing::info!(node = %name, kubelet = %addr, "Windows node's kubelet endpoint");
            Some((listener, addr, app))
        }
        _ => None,
    };
    let app = crate::kubelet::router_with(logs, exec, Some(linux_metrics), access);
    let limits = ServeLimits {
        max_connections: usize::try_from(args.kubelet_max_connections).unwrap_or(usize::MAX),
        ..ServeLimits::default()
    };
    let config = args.config(&cluster_id, kubelet_addr.port());
    tracing::info!(node = %config.node.name, cluster_id = %cluster_id, backend = ?args.backend, kubelet = %kubelet_addr, "embedded ACI provider configured");
    let engine = crate::decision::Engine::new(scheduler.view.config().engine.clone());
    let gate = super::unadmitted::Gate {
        mode: args.unadmitted_pods,
        admission: scheduler.admission,
        view: scheduler.view,
        policies: policies.clone(),
        engine,
        reservations: scheduler.reservations,
    };
    let cluster_dns = super::services::parse_cluster_dns(&args.cluster_dns)
        .map_err(ProviderSetupError::ClusterDns)?;
    let (services, services_task) =
        super::services::ServiceSource::watch(clients.watches.clone(), cluster_dns);
    let services_task = tokio::spawn(services_task);
    // The Windows node (--aci-windows): a second instance of the same
    // controllers (node, Lease, pods, GC) over the same ACI client, so one
    // pacer and one resource group serve both; only its name and OS differ.
    let windows_config = windows_endpoint
        .as_ref()
        .and_then(|(_, addr, _)| args.windows_config(&cluster_id, addr.port()));
    let build = |config: ProviderConfig| {
        Provider::new(
            clients.calls.clone(),
            aci.clone(),
            config,
            Some(metrics.clone()),
        )
        .with_watch_client(clients.watches.clone())
        .with_policies(policies.clone())
        .with_services(services.clone(), &args.cluster_domain)
        .with_unadmitted(gate.clone())
    };
    let windows = windows_config.map(|c| {
        tracing::info!(node = %c.node.name, "Windows virtual node configured (--aci-windows)");
        build(c)
    });
    let provider = build(config);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let logs_stop = stopped(stop.clone());
    let windows_logs_stop = stopped(stop.clone());
    let windows_stop = stopped(stop.clone());
    let stop = stopped(stop);
    let leader_windows = leader.clone();
    let task = tokio::spawn(async move {
        let serve = |listener, app, stop| match &tls {
            Some(tls) => tokio::spawn(crate::kubelet::serve_tls(
                listener,
                app,
                tls.clone(),
                limits.clone(),
                stop,
            )),
            None => tokio::spawn(crate::kubelet::serve(listener, app, limits.clone(), stop)),
        };
        let windows_kubelet = windows_endpoint.map(|(listener, _, app)| {
            serve(listener, app, Box::pin(windows_logs_stop) as StopSignal)
        });
        let kubelet = serve(listener, app, Box::pin(logs_stop) as StopSignal);
        let windows = async move {
            if let Some(w) = windows
                && let Err(e) = w.run(leader_windows, windows_stop).await
            {
                tracing::error!(error = %e, "Windows node provider stopped");
            }
        };
        let linux = async move {
            if let Err(e) = provider.run(leader, stop).await {
                tracing::error!(error = %e, "provider stopped");
            }
        };
        tokio::join!(linux, windows);
        for endpoint in std::iter::once(kubelet).chain(windows_kubelet) {
            match endpoint.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "kubelet endpoint failed"),
                Err(e) => tracing::warn!(error = %e, "kubelet endpoint task failed"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(t) = ca_task {
            t.abort();
        }
        services_task.abort();
    });
    Ok(Some(Started {
        task,
        kubelet_addr,
        emulator,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        p: ProviderArgs,
    }

    #[test]
    fn log_analytics_secret_reaches_the_provider_config() {
        let a = Args::try_parse_from(["x", "--aci-log-analytics", "spillway-system/la"])
            .expect("parses");
        let c = a.p.config("c1", 10250);
        assert_eq!(
            c.aci_log_analytics.map(|s| s.to_string()).as_deref(),
            Some("spillway-system/la")
        );
        let e = Args::try_parse_from(["x", "--aci-log-analytics", "la"])
            .err()
            .expect("no namespace");
        assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");
    }

    #[test]
    fn subnet_ids_repeat_or_split_on_commas_and_reach_the_provider_config() {
        let id = |s: &str| {
            format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/{s}"
            )
        };
        let a = Args::try_parse_from([
            "x",
            "--aci-subnet-id",
            &format!("{},{}", id("a"), id("b")),
            "--aci-subnet-id",
            &id("c"),
        ])
        .expect("parses");
        let c = a.p.config("c1", 10250);
        let names: Vec<&str> = c.aci_subnets.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let e = Args::try_parse_from(["x", "--aci-subnet-id", "subnets/a"])
            .err()
            .expect("malformed id");
        assert!(e.to_string().contains("is not an ARM subnet id"), "{e}");
        assert!(
            Args::try_parse_from(["x"])
                .expect("parses")
                .p
                .config("c1", 1)
                .aci_subnets
                .is_empty()
        );
    }

    #[test]
    fn aci_windows_adds_a_windows_node_named_after_the_linux_one() {
        let a = Args::try_parse_from(["x", "--aci", "emulator", "--aci-windows"]).expect("parses");
        assert!(a.p.validate().is_ok());
        assert_eq!(
            a.p.windows_node_name().as_deref(),
            Some("spillway-aci-windows")
        );
        let w = a.p.windows_config("c1", 10250).expect("windows node");
        assert_eq!(
            (w.node.name.as_str(), w.node.os.as_str()),
            ("spillway-aci-windows", "windows")
        );
        let linux = a.p.config("c1", 10250);
        assert_eq!(linux.node.os, "linux");
        assert_eq!(
            (w.cluster_id.as_str(), w.location.as_str()),
            (linux.cluster_id.as_str(), linux.location.as_str()),
            "one cluster tag and region for both nodes"
        );
        let a = Args::try_parse_from([
            "x",
            "--aci",
            "emulator",
            "--node-name",
            "vk",
            "--aci-windows",
            "--aci-windows-node-name",
            "vk-win",
        ])
        .expect("parses");
        assert_eq!(a.p.windows_node_name().as_deref(), Some("vk-win"));
        let a = Args::try_parse_from(["x", "--aci", "emulator"]).expect("parses");
        assert_eq!(a.p.windows_node_name(), None);
        assert!(a.p.windows_config("c1", 1).is_none());
        for (argv, says) in [
            (
                &["x", "--aci", "emulator", "--aci-windows-node-name", "w"][..],
                "needs --aci-windows",
            ),
            (&["x", "--aci-windows"][..], "--aci azure or --aci emulator"),
            (
                &[
                    "x",
                    "--aci",
                    "emulator",
                    "--aci-windows",
                    "--aci-windows-node-name",
                    "spillway-aci",
                ][..],
                "two names",
            ),
        ] {
            let a = Args::try_parse_from(argv).expect("parses");
            let e = a.p.validate().expect_err("refused");
            assert!(e.to_string().contains(says), "{argv:?}: {e}");
        }
    }

    #[test]
    fn an_emulator_url_needs_the_emulator_backend_and_an_http_url() {
        let a = Args::try_parse_from(["x", "--aci-emulator-url", "http://127.0.0.1:9"])
            .expect("parses");
        let e = a.p.validate().expect_err("--aci none");
        assert!(e.to_string().contains("--aci emulator"), "{e}");
        let a = Args::try_parse_from([
            "x",
            "--aci",
            "emulator",
            "--aci-emulator-url",
            "localhost:9",
        ])
        .expect("parses");
        let e = a.p.validate().expect_err("no scheme");
        assert!(e.to_string().contains("\"localhost:9\""), "{e}");
        let a = Args::try_parse_from([
            "x",
            "--aci",
            "emulator",
            "--aci-emulator-url",
            "http://127.0.0.1:9",
        ])
        .expect("parses");
        assert!(a.p.validate().is_ok());
    }

    #[test]
    fn none_is_the_default_and_azure_needs_its_flags() {
        let a = Args::try_parse_from(["x"]).expect("parses");
        assert_eq!(a.p.backend, AciBackend::None);
        assert_eq!(a.p.node_name, "spillway-aci");
        let a = Args::try_parse_from(["x", "--aci", "azure", "--aci-subscription", "s"])
            .expect("parses");
        let e = a.p.validate().expect_err("needs the resource group");
        assert!(e.to_string().contains("--aci-resource-group"), "{e}");
        // The cluster id defaults to the kube-system namespace's UID.
        assert!(!e.to_string().contains("--cluster-id"), "{e}");
        let a = Args::try_parse_from([
            "x",
            "--aci",
            "azure",
            "--cluster-id",
            "c",
            "--aci-subscription",
            "s",
            "--aci-resource-group",
            "rg",
        ])
        .expect("parses");
        assert!(a.p.validate().is_ok());
        let a = Args::try_parse_from(["x", "--aci-memory-gib-per-core", "0"]).expect("parses");
        assert!(a.p.validate().is_err());
        assert!(Args::try_parse_from(["x", "--aci", "bogus"]).is_err());
    }

    #[test]
    fn kubelet_auth_is_on_with_tls_and_off_only_on_plain_http() {
        let a = Args::try_parse_from(["x"]).expect("parses");
        assert_eq!(a.p.kubelet_auth, None, "decided by TLS");
        assert_eq!(a.p.kubelet_max_connections, 256);
        assert_eq!((a.p.kubelet_log_qps, a.p.kubelet_log_burst), (2.0, 10));
        assert_eq!(
            (a.p.kubelet_metrics_qps, a.p.kubelet_metrics_burst),
            (2.0, 20)
        );
        let a = Args::try_parse_from(["x", "--kubelet-metrics-qps", "0"]).expect("parses");
        let e = a.p.validate().expect_err("no budget");
        assert!(e.to_string().contains("--kubelet-metrics-qps"), "{e}");
        let a = Args::try_parse_from(["x", "--kubelet-auth"]).expect("parses");
        assert_eq!(a.p.kubelet_auth, Some(true));
        assert!(a.p.validate().is_ok(), "tokens on plain HTTP");
        let a = Args::try_parse_from(["x", "--kubelet-auth=false"]).expect("parses");
        assert!(a.p.validate().is_ok(), "plain HTTP may be open");
        let a = Args::try_parse_from(["x", "--kubelet-tls-self-signed", "--kubelet-auth=false"])
            .expect("parses");
        let e = a.p.validate().expect_err("TLS always authenticates");
        assert!(e.to_string().contains("plain HTTP only"), "{e}");
        let a = Args::try_parse_from(["x", "--kubelet-client-ca", "/ca.crt"]).expect("parses");
        let e = a.p.validate().expect_err("no certificates without TLS");
        assert!(e.to_string().contains("needs TLS"), "{e}");
        let a = Args::try_parse_from([
            "x",
            "--kubelet-tls-self-signed",
            "--kubelet-client-ca",
            "/ca.crt",
        ])
        .expect("parses");
        assert!(a.p.validate().is_ok());
        let a = Args::try_parse_from(["x", "--kubelet-log-qps", "0"]).expect("parses");
        assert!(a.p.validate().is_err());
        assert!(Args::try_parse_from(["x", "--kubelet-max-connections", "0"]).is_err());
        assert!(Args::try_parse_from(["x", "--kubelet-max-exec-sessions", "0"]).is_err());
        let a = Args::try_parse_from(["x"]).expect("parses");
        assert_eq!(a.p.kubelet_max_exec_sessions, 16);
    }

    #[test]
    fn cluster_dns_flags_are_checked_before_anything_starts() {
        let a = Args::try_parse_from(["x"]).expect("parses");
        assert!(
            a.p.cluster_dns.is_empty(),
            "looked up from kube-dns by default"
        );
        assert_eq!(a.p.cluster_domain, "cluster.local");
        let a = Args::try_parse_from(["x", "--cluster-dns", "10.0.0.10,fd00::a"]).expect("parses");
        assert_eq!(a.p.cluster_dns, ["10.0.0.10", "fd00::a"]);
        assert!(a.p.validate().is_ok());
        let a = Args::try_parse_from(["x", "--cluster-dns", "kube-dns"]).expect("parses");
        let e = a.p.validate().expect_err("not an IP");
        assert!(e.to_string().contains("--cluster-dns"), "{e}");
        let a = Args::try_parse_from(["x", "--cluster-domain", "Cluster.Local"]).expect("parses");
        let e = a.p.validate().expect_err("not a DNS domain");
        assert!(e.to_string().contains("--cluster-domain"), "{e}");
    }

    #[test]
    fn a_self_signed_certificate_and_certificate_files_exclude_each_other() {
        let a = Args::try_parse_from(["x", "--kubelet-tls-self-signed", "--node-ip", "10.0.0.7"])
            .expect("parses");
        assert!(a.p.kubelet_tls_self_signed);
        assert_eq!(a.p.internal_ip(), "10.0.0.7");
        for files in [
            &["--kubelet-tls-cert", "/c", "--kubelet-tls-key", "/k"][..],
            &["--kubelet-tls-cert", "/c"][..],
            &["--kubelet-tls-key", "/k"][..],
        ] {
            let mut argv = vec!["x", "--kubelet-tls-self-signed"];
            argv.extend_from_slice(files);
            let e = Args::try_parse_from(&argv)
                .err()
                .unwrap_or_else(|| panic!("{argv:?} must not parse"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
            let text = e.to_string();
            assert!(
                text.contains("--kubelet-tls-self-signed") && text.contains(files[0]),
                "{text}"
            );
        }
    }
}
