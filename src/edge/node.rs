//! The edge virtual nodes' flags and start-up: `--edge hub|emulator`, and
//! either one hub through `--edge-node`, `--edge-connection-secret NS/NAME`,
//! `--edge-hub-url`, `--edge-target-condition`, or several through the
//! repeatable `--edge-hub NODE=NS/SECRET[,url=URL][,condition=QUERY]` →
//! one [`Provider`] over an [`EdgeBackend`] per hub (one node, one Lease,
//! one paced hub client, one `node` metrics label each).
//!
//! Owns turning flags (validated completely first) and the connection
//! Secrets into running providers, and `--edge-cleanup-on-exit` (the
//! leader deletes the node's deployments, base included, after its
//! provider stopped). Must not: decide anything about pods (the
//! controllers and the backend do).

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
    /// One edge node per IoT Hub, repeatable: the node's name, the Secret
    /// with the hub's connection string, and optionally the hub's transport
    /// URL and the node's base target condition (`condition=` last: it may
    /// hold commas). Replaces the four single-hub flags.
    #[arg(
        long = "edge-hub",
        value_name = "NODE=NS/SECRET[,url=URL][,condition=QUERY]",
        conflicts_with_all = ["edge_node", "edge_connection_secret", "edge_hub_url", "edge_target_condition"]
    )]
    pub edge_hubs: Vec<String>,
    /// On a graceful exit as the leader, delete every IoT Edge deployment
    /// of the edge node(s), the base deployment included: for removing a
    /// node or hub, not for restarts or upgrades (devices lose the modules).
    #[arg(long, env = "SPILLWAY_EDGE_CLEANUP_ON_EXIT")]
    pub edge_cleanup_on_exit: bool,
}

/// One IoT Hub and the edge node that stands for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeHub {
    /// The Kubernetes node name.
    pub node: String,
    /// `NAMESPACE/NAME` of the connection Secret; `None`: the embedded emulator.
    pub secret: Option<String>,
    /// Transport URL of the hub (the emulator's address).
    pub url: Option<String>,
    /// The node's base target condition (`*`: all IoT Edge devices).
    pub condition: String,
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
    #[error("--edge-hub {value:?}: {message}")]
    HubSpec { value: String, message: String },
    #[error("--edge-hub needs --edge hub or --edge emulator")]
    HubsWithoutMode,
    #[error("Secret {secret}: {message}")]
    Secret { secret: String, message: String },
    #[error("IoT Hub client: {0}")]
    Hub(#[from] super::hub::HubError),
    #[error("embedded IoT Hub emulator: {0}")]
    Emulator(#[from] super::emulator::EmulatorError),
}

impl EdgeArgs {
    /// The hubs the flags name: every `--edge-hub`, or the one of the
    /// single-hub flags. Checked completely: node names, Secret references,
    /// URLs, duplicates.
    pub fn hubs(&self) -> Result<Vec<EdgeHub>, EdgeSetupError> {
        let hubs = if self.edge_hubs.is_empty() {
            vec![EdgeHub {
                node: self.edge_node.clone(),
                secret: self.edge_connection_secret.clone(),
                url: self.edge_hub_url.clone(),
                condition: self.edge_target_condition.clone(),
            }]
        } else {
            self.edge_hubs
                .iter()
                .map(|v| parse_edge_hub(v))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut seen = std::collections::BTreeSet::new();
        for hub in &hubs {
            if !seen.insert(hub.node.as_str()) {
                return Err(EdgeSetupError::HubSpec {
                    value: hub.node.clone(),
                    message: "the node is named twice: one node per hub".into(),
                });
            }
        }
        Ok(hubs)
    }

    /// Check the flags completely before anything starts.
    pub fn validate(&self) -> Result<(), EdgeSetupError> {
        if self.mode == EdgeMode::None && !self.edge_hubs.is_empty() {
            return Err(EdgeSetupError::HubsWithoutMode);
        }
        for hub in self.hubs()? {
            if let Some(s) = &hub.secret {
                secret_ref(s)?;
            }
            if let Some(url) = &hub.url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(EdgeSetupError::HubUrl(url.clone()));
            }
            match self.mode {
                EdgeMode::Hub if hub.secret.is_none() => return Err(EdgeSetupError::MissingSecret),
                EdgeMode::Emulator if hub.url.is_some() && hub.secret.is_none() => {
                    return Err(EdgeSetupError::UrlWithoutSecret);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A node name the API server accepts: a DNS-1123 subdomain.
fn valid_node_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(ok_char)
        && name.ends_with(ok_char)
        && name.chars().all(|c| ok_char(c) || c == '-' || c == '.')
}

/// Parse `NODE=NS/SECRET[,url=URL][,condition=QUERY]`.
pub fn parse_edge_hub(value: &str) -> Result<EdgeHub, EdgeSetupError> {
    let fail = |message: String| EdgeSetupError::HubSpec {
        value: value.to_string(),
        message,
    };
    let (node, rest) = value
        .split_once('=')
        .ok_or_else(|| fail("expected NODE=NS/SECRET[,url=URL][,condition=QUERY]".into()))?;
    let node = node.trim();
    if !valid_node_name(node) {
        return Err(fail(format!(
            "node name {node:?} must be a DNS subdomain (lowercase letters, digits, '-', '.')"
        )));
    }
    // The condition is last and taken whole: queries hold commas and '='.
    let (head, condition) = match rest.split_once(",condition=") {
        Some((head, condition)) => (head, Some(condition.trim())),
        None => (rest, None),
    };
    let mut parts = head.split(',');
    let secret = parts.next().unwrap_or_default().trim();
    secret_ref(secret).map_err(|e| fail(e.to_string()))?;
    let mut url = None;
    for part in parts {
        match part.split_once('=') {
            Some(("url", u)) if url.is_none() => {
                let u = u.trim();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(fail(format!(
                        "url= must be an http:// or https:// URL, not {u:?}"
                    )));
                }
                url = Some(u.to_string());
            }
            Some(("url", _)) => return Err(fail("url= is given twice".into())),
            _ => {
                return Err(fail(format!(
                    "unknown part {part:?}: expected url=URL or condition=QUERY (last)"
                )));
            }
        }
    }
    if condition.is_some_and(str::is_empty) {
        return Err(fail(
            "condition= is empty (use * for all IoT Edge devices)".into(),
        ));
    }
    Ok(EdgeHub {
        node: node.to_string(),
        secret: Some(secret.to_string()),
        url,
        condition: condition.unwrap_or("*").to_string(),
    })
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

/// The started edge nodes: await `task` (it ends when every node's
/// provider has) after `stop` fired.
pub struct EdgeStarted {
    pub task: tokio::task::JoinHandle<()>,
    /// The in-process emulator (`--edge emulator` without a URL).
    pub emulator: Option<EmulatorHandle>,
    /// The edge nodes started, one per hub.
    pub nodes: Vec<String>,
}

/// Start one edge node per hub as `args` say; `None` for `--edge none`.
/// They act only while `leader` is true.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    args: &EdgeArgs,
    client: kube::Client,
    watch_client: kube::Client,
    node_ip: &str,
    leader: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<Option<EdgeStarted>, EdgeSetupError> {
    args.validate()?;
    if args.mode == EdgeMode::None {
        return Ok(None);
    }
    let hubs = args.hubs()?;
    // Read every Secret before starting anything: a bad one stops them all.
    let mut connections = Vec::with_capacity(hubs.len());
    let mut emulator = None;
    for hub in &hubs {
        let (conn, endpoint) = match (&hub.secret, args.mode) {
            (Some(reference), _) => (
                connection_from_secret(&client, reference).await?,
                hub.url.clone(),
            ),
            (None, EdgeMode::Emulator) => {
                let emu = Emulator::start(EmulatorConfig::default()).await?;
                let conn = emu
                    .connection_string()
                    .ok_or_else(|| EdgeSetupError::Secret {
                        secret: "(embedded emulator)".into(),
                        message: "no connection string".into(),
                    })?;
                tracing::info!(url = %emu.url, "embedded IoT Hub emulator started");
                let url = emu.url.clone();
                emulator = Some(emu);
                (conn, Some(url))
            }
            (None, _) => return Err(EdgeSetupError::MissingSecret),
        };
        connections.push((hub, conn, endpoint));
    }
    let mut tasks = Vec::with_capacity(hubs.len());
    for (hub, conn, endpoint) in connections {
        tasks.push(start_node(
            args,
            hub,
            conn,
            endpoint,
            NodeHandles {
                client: client.clone(),
                watch_client: watch_client.clone(),
                node_ip,
                leader: leader.clone(),
                stop: stop.clone(),
                metrics: metrics.clone(),
            },
        )?);
    }
    let task = tokio::spawn(async move {
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "edge node task failed");
            }
        }
    });
    Ok(Some(EdgeStarted {
        task,
        emulator,
        nodes: hubs.into_iter().map(|h| h.node).collect(),
    }))
}

/// What every edge node shares.
struct NodeHandles<'a> {
    client: kube::Client,
    watch_client: kube::Client,
    node_ip: &'a str,
    leader: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// One hub's node: its own paced client, backend, provider (node + Lease).
fn start_node(
    args: &EdgeArgs,
    hub: &EdgeHub,
    conn: ConnectionString,
    endpoint: Option<String>,
    h: NodeHandles<'_>,
) -> Result<tokio::task::JoinHandle<()>, EdgeSetupError> {
    let host = conn.host_name.clone();
    let mut client = HubClient::new(
        conn,
        HubClientConfig {
            endpoint,
            ..HubClientConfig::default()
        },
    )?;
    if let Some(m) = &h.metrics {
        client = client.with_observer(hub_request_counter(m.clone(), &hub.node));
    }
    let mut backend = EdgeBackend::new(
        Arc::new(client),
        EdgeBackendConfig::new(EdgeNode::new(hub.node.clone(), hub.condition.clone())),
        Some(h.client.clone()),
    );
    if let Some(m) = h.metrics {
        backend = backend.with_metrics(m);
    }
    let backend = Arc::new(backend);
    let mut config = ProviderConfig::new(hub.node.clone(), "edge", host, h.node_ip, 0);
    config.node.profile = node_profile();
    config.sync_interval = Duration::from_secs(args.edge_sync_secs);
    // Hub operations are scarce (about 20/min): read capacity from the syncs.
    config.usage_interval = config.sync_interval;
    let provider = Provider::with_backend(h.client, backend.clone(), config, None)
        .with_watch_client(h.watch_client);
    tracing::info!(node = %hub.node, mode = ?args.mode, "edge virtual node configured");
    let (leader, mut stop) = (h.leader, h.stop);
    let cleanup = args.edge_cleanup_on_exit;
    let node = hub.node.clone();
    Ok(tokio::spawn(async move {
        let leading = leader.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = provider.run(leader, stopped).await {
            tracing::error!(error = %e, "edge provider stopped");
        }
        // Only the leader acts on the hub; a standby exiting leaves it be.
        if cleanup && *leading.borrow() {
            match backend.decommission().await {
                Ok(n) => tracing::info!(%node, deleted = n, "edge node cleaned up on exit"),
                Err(e) => {
                    tracing::error!(%node, error = %e, "edge node cleanup on exit failed; deployments are left on the hub")
                }
            }
        }
    }))
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

    #[test]
    fn several_hubs_are_several_nodes_with_clear_errors() {
        let a = parse(&[
            "--edge",
            "hub",
            "--edge-hub",
            "edge-a=iot/hub-a",
            "--edge-hub",
            "edge-b=iot/hub-b,url=http://127.0.0.1:9,condition=tags.site='munich' AND tags.x IN ['a','b']",
        ]);
        assert!(a.validate().is_ok());
        let hubs = a.hubs().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            hubs,
            vec![
                EdgeHub {
                    node: "edge-a".into(),
                    secret: Some("iot/hub-a".into()),
                    url: None,
                    condition: "*".into(),
                },
                EdgeHub {
                    node: "edge-b".into(),
                    secret: Some("iot/hub-b".into()),
                    url: Some("http://127.0.0.1:9".into()),
                    condition: "tags.site='munich' AND tags.x IN ['a','b']".into(),
                },
            ]
        );
        // The single-hub flags still make one hub.
        let single = parse(&["--edge", "hub", "--edge-connection-secret", "iot/hub"]);
        assert_eq!(single.hubs().map(|h| h.len()).ok(), Some(1));
        // Mixing the two forms is refused by the parser.
        let mut argv = vec!["spillway", "--edge", "hub", "--edge-hub", "a=iot/h"];
        argv.extend(["--edge-node", "b"]);
        assert!(Cli::try_parse_from(argv).is_err());
        let refused = |args: &[&str]| match parse(args).validate() {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{args:?} accepted"),
        };
        let e = refused(&[
            "--edge",
            "hub",
            "--edge-hub",
            "a=iot/h",
            "--edge-hub",
            "a=iot/g",
        ]);
        assert!(e.contains("named twice"), "{e}");
        let e = refused(&["--edge", "hub", "--edge-hub", "a"]);
        assert!(e.contains("NODE=NS/SECRET"), "{e}");
        let e = refused(&["--edge", "hub", "--edge-hub", "Edge_A=iot/h"]);
        assert!(e.contains("DNS subdomain"), "{e}");
        let e = refused(&["--edge", "hub", "--edge-hub", "a=hub"]);
        assert!(e.contains("NAMESPACE/NAME"), "{e}");
        let e = refused(&["--edge", "hub", "--edge-hub", "a=iot/h,port=1"]);
        assert!(e.contains("unknown part"), "{e}");
        let e = refused(&["--edge", "hub", "--edge-hub", "a=iot/h,url=ftp://x"]);
        assert!(e.contains("url= must be an http"), "{e}");
        let e = refused(&["--edge-hub", "a=iot/h"]);
        assert!(e.contains("--edge hub or --edge emulator"), "{e}");
    }
}
