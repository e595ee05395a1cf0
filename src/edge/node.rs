//! The edge virtual node's flags and start-up: `--edge hub|emulator`,
//! `--edge-node`, `--edge-connection-secret NS/NAME`, `--edge-hub-url`,
//! `--edge-target-condition` → a [`Provider`] over [`EdgeBackend`].
//!
//! Owns turning flags (validated completely first) and the connection
//! Secret into a running provider. Must not: decide anything about pods
//! (the controllers and the backend do). Not yet flattened into
//! `spillway run`: the cluster view (`src/cluster`) recognises virtual nodes
//! by `type=virtual-kubelet` / the `virtual-kubelet.io/provider` taint and
//! would count an edge node as burst capacity until it excludes
//! `spillway.io/edge=true`.

use super::backend::{EdgeBackend, EdgeBackendConfig, node_profile};
use super::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use super::hub::{HubClient, HubClientConfig};
use super::sas::ConnectionString;
use super::translate::EdgeNode;
use crate::provider::{Provider, ProviderConfig};
use k8s_openapi::api::core::v1::Secret;
use std::sync::Arc;
use std::time::Duration;

/// Key of the connection string in the `--edge-connection-secret` Secret.
pub const CONNECTION_STRING_KEY: &str = "connectionString";

/// Which IoT Hub the edge node uses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeMode {
    /// No edge node.
    None,
    /// A real IoT Hub (connection string from the Secret).
    Hub,
    /// The IoT Hub emulator: in-process, or at `--edge-hub-url` with the
    /// Secret's connection string.
    Emulator,
}

/// Flags of the edge virtual node.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct EdgeArgs {
    #[arg(
        long = "edge",
        value_enum,
        default_value = "none",
        env = "SPILLWAY_EDGE"
    )]
    pub mode: EdgeMode,
    /// Name of the edge virtual node.
    #[arg(long, default_value = "spillway-edge", env = "SPILLWAY_EDGE_NODE")]
    pub edge_node: String,
    /// `NAMESPACE/NAME` of the Secret holding the hub's service connection
    /// string under `connectionString`.
    #[arg(long, value_name = "NS/NAME", env = "SPILLWAY_EDGE_CONNECTION_SECRET")]
    pub edge_connection_secret: Option<String>,
    /// Transport URL of the hub (tokens stay signed for the connection
    /// string's host): the emulator's address.
    #[arg(long, value_name = "URL", env = "SPILLWAY_EDGE_HUB_URL")]
    pub edge_hub_url: Option<String>,
    /// Device query every deployment of this node is limited to (`*`: all
    /// IoT Edge devices).
    #[arg(long, default_value = "*")]
    pub edge_target_condition: String,
    /// Seconds between status syncs.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub edge_sync_secs: u64,
}

/// What is wrong with the flags or the Secret.
#[derive(Debug, thiserror::Error)]
pub enum EdgeSetupError {
    #[error("--edge hub needs --edge-connection-secret NAMESPACE/NAME")]
    MissingSecret,
    #[error("--edge-connection-secret must be NAMESPACE/NAME, not {0:?}")]
    SecretRef(String),
    #[error("--edge-hub-url must be an http:// or https:// URL, not {0:?}")]
    HubUrl(String),
    #[error("--edge-hub-url without --edge-connection-secret: the emulator's key is unknown")]
    UrlWithoutSecret,
    #[error("Secret {secret}: {message}")]
    Secret { secret: String, message: String },
    #[error("IoT Hub client: {0}")]
    Hub(#[from] super::hub::HubError),
    #[error("embedded IoT Hub emulator: {0}")]
    Emulator(#[from] super::emulator::EmulatorError),
}

impl EdgeArgs {
    /// Check the flags completely before anything starts.
    pub fn validate(&self) -> Result<(), EdgeSetupError> {
        if let Some(s) = &self.edge_connection_secret {
            secret_ref(s)?;
        }
        if let Some(url) = &self.edge_hub_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(EdgeSetupError::HubUrl(url.clone()));
        }
        match self.mode {
            EdgeMode::Hub if self.edge_connection_secret.is_none() => {
                Err(EdgeSetupError::MissingSecret)
            }
            EdgeMode::Emulator
                if self.edge_hub_url.is_some() && self.edge_connection_secret.is_none() =>
            {
                Err(EdgeSetupError::UrlWithoutSecret)
            }
            _ => Ok(()),
        }
    }
}

fn secret_ref(s: &str) -> Result<(&str, &str), EdgeSetupError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(EdgeSetupError::SecretRef(s.to_string())),
    }
}

/// Read the connection string from `NS/NAME`.
async fn connection_from_secret(
    client: &kube::Client,
    reference: &str,
) -> Result<ConnectionString, EdgeSetupError> {
    let (ns, name) = secret_ref(reference)?;
    let fail = |message: String| EdgeSetupError::Secret {
        secret: reference.to_string(),
        message,
    };
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("not found".into()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(CONNECTION_STRING_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(CONNECTION_STRING_KEY))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| fail(format!("no key {CONNECTION_STRING_KEY:?}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
    // The parse error names the part, never the key.
    ConnectionString::parse(text.trim()).map_err(|e| fail(e.to_string()))
}

/// Counts every hub request of node `node` in `spillway_edge_hub_requests_total`.
pub fn hub_request_counter(
    metrics: Arc<crate::metrics::Metrics>,
    node: &str,
) -> super::hub::AttemptObserver {
    let node = node.to_string();
    Arc::new(move |a: super::hub::Attempt| {
        let code = a
            .status
            .map_or_else(|| "error".to_string(), |s| s.to_string());
        metrics
            .edge_hub_requests
            .with_label_values(&[node.as_str(), a.lane, code.as_str()])
            .inc();
    })
}

/// A started edge node: await `task` after `stop` fired.
pub struct EdgeStarted {
    pub task: tokio::task::JoinHandle<()>,
    /// The in-process emulator (`--edge emulator` without a URL).
    pub emulator: Option<EmulatorHandle>,
}

/// Start the edge node as `args` say; `None` for `--edge none`. It acts
/// only while `leader` is true.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    args: &EdgeArgs,
    client: kube::Client,
    watch_client: kube::Client,
    node_ip: &str,
    leader: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<Option<EdgeStarted>, EdgeSetupError> {
    args.validate()?;
    let (conn, endpoint, emulator) = match (args.mode, &args.edge_connection_secret) {
        (EdgeMode::None, _) => return Ok(None),
        (EdgeMode::Emulator, None) => {
            let emu = Emulator::start(EmulatorConfig::default()).await?;
            let conn = emu
                .connection_string()
                .ok_or_else(|| EdgeSetupError::Secret {
                    secret: "(embedded emulator)".into(),
                    message: "no connection string".into(),
                })?;
            tracing::info!(url = %emu.url, "embedded IoT Hub emulator started");
            (conn, Some(emu.url.clone()), Some(emu))
        }
        (_, Some(reference)) => (
            connection_from_secret(&client, reference).await?,
            args.edge_hub_url.clone(),
            None,
        ),
        (EdgeMode::Hub, None) => return Err(EdgeSetupError::MissingSecret),
    };
    let host = conn.host_name.clone();
    let mut hub = HubClient::new(
        conn,
        HubClientConfig {
            endpoint,
            ..HubClientConfig::default()
        },
    )?;
    if let Some(m) = &metrics {
        hub = hub.with_observer(hub_request_counter(m.clone(), &args.edge_node));
    }
    let mut backend = EdgeBackend::new(
        Arc::new(hub),
        EdgeBackendConfig::new(EdgeNode::new(
            args.edge_node.clone(),
            args.edge_target_condition.clone(),
        )),
        Some(client.clone()),
    );
    if let Some(m) = metrics {
        backend = backend.with_metrics(m);
    }
    let backend = Arc::new(backend);
    let mut config = ProviderConfig::new(args.edge_node.clone(), "edge", host, node_ip, 0);
    config.node.profile = node_profile();
    config.sync_interval = Duration::from_secs(args.edge_sync_secs);
    // Hub operations are scarce (about 20/min): read capacity from the syncs.
    config.usage_interval = config.sync_interval;
    let provider =
        Provider::with_backend(client, backend, config, None).with_watch_client(watch_client);
    tracing::info!(node = %args.edge_node, mode = ?args.mode, "edge virtual node configured");
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = provider.run(leader, stopped).await {
            tracing::error!(error = %e, "edge provider stopped");
        }
    });
    Ok(Some(EdgeStarted { task, emulator }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    fn parse(args: &[&str]) -> EdgeArgs {
        let mut argv = vec!["spillway"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .edge
    }

    #[test]
    fn none_is_the_default_and_a_hub_needs_its_secret() {
        let a = parse(&[]);
        assert_eq!(a.mode, EdgeMode::None);
        assert!(a.validate().is_ok());
        assert!(matches!(
            parse(&["--edge", "hub"]).validate(),
            Err(EdgeSetupError::MissingSecret)
        ));
        assert!(
            parse(&["--edge", "hub", "--edge-connection-secret", "iot/hub"])
                .validate()
                .is_ok()
        );
        assert!(matches!(
            parse(&["--edge", "hub", "--edge-connection-secret", "hub"]).validate(),
            Err(EdgeSetupError::SecretRef(_))
        ));
        assert!(matches!(
            parse(&["--edge", "emulator", "--edge-hub-url", "http://x:1"]).validate(),
            Err(EdgeSetupError::UrlWithoutSecret)
        ));
        assert!(matches!(
            parse(&[
                "--edge",
                "emulator",
                "--edge-connection-secret",
                "a/b",
                "--edge-hub-url",
                "ftp://x"
            ])
            .validate(),
            Err(EdgeSetupError::HubUrl(_))
        ));
    }
}
