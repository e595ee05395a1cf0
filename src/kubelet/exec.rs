//! `kubectl exec` on burst pods: `GET`/`POST /exec/{namespace}/{pod}/
//! [{uid}/]{container}?command=…&input=1&output=1&error=1&tty=1`, the
//! request the API server proxies `pods/exec` to, upgraded to SPDY/3.1
//! ([`super::spdy`]) or to a WebSocket ([`super::exec_ws`]: the kubelet's
//! `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`,
//! `base64.channel.k8s.io`, none; not v5, which only the API server's
//! translator speaks) and bridged to ACI's exec WebSocket.
//!
//! **Two transports, one session**: everything before the upgrade (the
//! query, ACI's limits, the bounds, the pod and container) is shared; a
//! request with `Upgrade: websocket` then takes the WebSocket handshake,
//! any other the SPDY one. After the upgrade both run `session` through
//! the `Transport` trait: it reads the client's stdin and terminal sizes,
//! writes ACI's output on stdout and the result as each protocol writes it.
//!
//! **What the API server speaks over SPDY** (kubernetes
//! `pkg/kubelet/cri/streaming/remotecommand/httpstream.go` and `exec.go`,
//! apimachinery `util/httpstream/httpstream.go` and `spdy/upgrade.go`):
//! - the query's `input`/`output`/`error`/`tty` are on when `1`; none of
//!   the first three is a 400 ("you must specify at least 1 of stdin,
//!   stdout, stderr"); with `tty`, `error` is dropped;
//! - `X-Stream-Protocol-Version` (one or more, comma-separated too): the
//!   first the client lists that this endpoint speaks wins (v4, v3, v2 here;
//!   not v1, whose error stream is reset at once); none → 400 "unable to
//!   upgrade: …"; `Connection: Upgrade` and `Upgrade: SPDY/3.1` are
//!   required (400 "missing upgrade headers"); the answer is 101 with the
//!   chosen version;
//! - then the client opens one SPDY stream per `streamType` (`error`, and
//!   `stdin`, `stdout`, `stderr` as asked, `resize` with a tty from v3),
//!   each answered with SYN_REPLY; the session starts when all are there
//!   (within [`ExecLimits::stream_creation_timeout`]);
//! - the result goes on the `error` stream: v4 a JSON `metav1.Status`
//!   (`Success`, or `Failure` `InternalError` "error executing command in
//!   container: …"), v2/v3 the message text on failure only; then every
//!   stream is finished and the connection goes away.
//!
//! **What ACI can do** (its exec socket, see
//! [`crate::aci::emulator::exec`]): one process started by a single
//! command string **without arguments** in a terminal whose size is fixed at
//! start. So:
//! - a command with arguments (`kubectl exec POD -- ls /`), or a single
//!   word with spaces in it, is refused before the upgrade with a 400 that
//!   names the limitation (ACI documents "you can't pass command
//!   arguments", learn.microsoft.com/azure/container-instances/
//!   container-instances-exec); run a shell (`kubectl exec -it POD --
//!   /bin/sh`) and type the command there instead;
//! - ACI's socket is a terminal: its output, stdout and stderr together,
//!   goes to the `stdout` stream; `stderr` stays empty;
//! - with a tty, the size from the first `resize` message (waited for
//!   [`ExecLimits::first_resize_within`], as virtual-kubelet/azure-aci waits
//!   for it) goes into executeCommand's `terminalSize`; later resizes are
//!   read and ignored: ACI takes the size only at start;
//! - without a tty, the end of stdin (FIN on the `stdin` stream) is sent to
//!   ACI's terminal as end-of-transmission (Ctrl-D), which is how a terminal
//!   signals end of input;
//! - **exit status**: ACI's socket has no exit-code channel. A session that
//!   ACI closes with a normal close frame reports `Success` (exit code 0),
//!   exactly what virtual-kubelet/azure-aci reports (its `RunInContainer`
//!   returns nil when the socket ends and virtual-kubelet then writes
//!   `Success`); a socket that breaks, or closes with any other code (a
//!   refused password: 1008), reports `InternalError` with the reason, which
//!   kubectl shows and exits 1 on. `NonZeroExitCode` is never reported.
//!
//! **Bounds**: at most [`ExecLimits::max_sessions`] sessions per node at once
//! and [`ExecLimits::starts_per_sec`] starts (more get 429 with Retry-After
//! before the upgrade, before any ARM call); each lasts at most
//! [`ExecLimits::max_duration`]. Metrics `spillway_kubelet_exec_sessions`
//! and `spillway_kubelet_exec_sessions_total{result}`.
//!
//! **Flow control**: Kubernetes' SPDY (moby/spdystream) never sends
//! WINDOW_UPDATE or SETTINGS and ignores them, so windows apply only once the
//! peer shows it does flow control by sending one of them; from then on
//! stdout waits for its window and stdin is held to ours, replenished with
//! WINDOW_UPDATE.

use super::exec_ws;
use super::spdy::{self, Codec, FLAG_FIN, Frame, StreamId, Window};
use crate::aci::{AciError, ContainerGroups, ExecSession, TerminalSize};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The remote-command protocols spoken, best first.
pub const PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
/// The request and answer header naming the protocol.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// Listed on a failed negotiation.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";
/// The upgrade this endpoint speaks.
pub const SPDY_31: &str = "SPDY/3.1";
/// Seconds a caller refused for the session cap is told to wait.
const BUSY_RETRY_AFTER: &str = "5";

/// Bounds of the exec bridge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecLimits {
    /// Sessions bridged at once per node (`--kubelet-max-exec-sessions`).
    pub max_sessions: usize,
    /// A session's longest life (the kubelet's default
    /// `--streaming-connection-idle-timeout` is 4 h).
    pub max_duration: Duration,
    /// For the client to open its streams after the upgrade (the kubelet's
    /// `streamCreationTimeout`, 30 s).
    pub stream_creation_timeout: Duration,
    /// With a tty, for the first `resize` message (the terminal size ACI
    /// starts with); then 24×80.
    pub first_resize_within: Duration,
    /// For ACI's executeCommand and the WebSocket connection, each.
    pub connect_timeout: Duration,
    /// Session starts per second, and at once: each costs ARM up to two
    /// reads (the group) and a write (executeCommand), outside the
    /// provider's budget, so a flood of requests (even for pods that do not
    /// exist) is answered 429 instead of spending ARM's.
    pub starts_per_sec: f64,
    pub start_burst: u32,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            max_duration: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            first_resize_within: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            starts_per_sec: 1.0,
            start_burst: 5,
        }
    }
}

/// Why an exec request was refused before the upgrade; the variant picks
/// the HTTP status, the message is what kubectl shows.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Unable to decode query: {0}")]
    Query(String),
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    #[error("you must specify a command to run in the container")]
    NoCommand,
    #[error(
        "ACI cannot run {0:?}: Azure Container Instances executes a single command without arguments (\"you can't pass command arguments\"); run a shell instead (kubectl exec -it POD -- /bin/sh) and type the command in it"
    )]
    Arguments(Vec<String>),
    #[error("unable to upgrade: {PROTOCOL_HEADER} is required")]
    NoProtocol,
    #[error(
        "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
        client.join(" "),
        PROTOCOLS.join(" ")
    )]
    Protocol { client: Vec<String> },
    #[error(
        "unable to upgrade: missing upgrade headers in request: Connection: {connection:?}, Upgrade: {upgrade:?}"
    )]
    NotUpgrade { connection: String, upgrade: String },
    #[error("pod does not exist")]
    NoPod,
    #[error("container not found ({0:?})")]
    NoContainer(String),
    #[error(
        "this node bridges at most {0} kubectl exec sessions to ACI at once (--kubelet-max-exec-sessions); retry when one ends"
    )]
    Busy(usize),
    #[error(
        "this node starts at most {per_sec} kubectl exec sessions per second ({burst} at once) to spare ARM's request budget; retry in {}s",
        retry_after.as_secs_f64().ceil()
    )]
    StartBudget {
        per_sec: f64,
        burst: u32,
        retry_after: Duration,
    },
    #[error("ACI: {0}")]
    Aci(#[from] AciError),
    #[error("the connection cannot be upgraded")]
    NoUpgrade,
    /// The WebSocket handshake (golang.org/x/net/websocket `hybi.go`,
    /// `ErrBadRequestMethod`): not a GET.
    #[error("bad method")]
    WsMethod,
    /// No `Sec-WebSocket-Key` (`ErrChallengeResponse`).
    #[error("mismatch challenge/response")]
    WsKey,
    /// `Sec-WebSocket-Version` is not 13 (`ErrBadWebSocketVersion`).
    #[error("bad protocol version")]
    WsVersion,
    /// None of the client's subprotocols is spoken (wsstream `handshake`);
    /// x/net answers 403 with no body, this message is only logged.
    #[error(
        "unable to upgrade websocket connection: requested protocol(s) are not supported: {client:?}; supports {:?}",
        exec_ws::PROTOCOLS
    )]
    WsProtocol { client: Vec<String> },
}

impl ExecError {
    /// The kubelet's statuses: options and the missing protocol header 400;
    /// a failed negotiation 403 (`httpstream.Handshake` writes it before
    /// the caller's 400); no pod 404 ("pod does not exist", server.go
    /// `getExec`); no container 500 (`streaming.WriteError` of a plain
    /// error); too many sessions 429 with Retry-After (its
    /// `ResourceExhausted`).
    fn status(&self) -> StatusCode {
        match self {
            ExecError::Query(_)
            | ExecError::NoStreams
            | ExecError::NoCommand
            | ExecError::Arguments(_)
            | ExecError::NoProtocol
            | ExecError::NotUpgrade { .. }
            | ExecError::WsKey
            | ExecError::WsVersion => StatusCode::BAD_REQUEST,
            ExecError::Protocol { .. } | ExecError::WsProtocol { .. } => StatusCode::FORBIDDEN,
            ExecError::WsMethod => StatusCode::METHOD_NOT_ALLOWED,
            ExecError::NoPod => StatusCode::NOT_FOUND,
            ExecError::NoContainer(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ExecError::Busy(_) | ExecError::StartBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            ExecError::Aci(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ExecError::Aci(_) => StatusCode::BAD_GATEWAY,
            ExecError::NoUpgrade => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ExecError {
    /// The kubelet's own refusals as it words them, in plain text; ours
    /// (what ACI cannot do, the session cap, ACI's errors) as a JSON
    /// `metav1.Status`, which client-go decodes before anything else (a
    /// plain-text message with a colon can read as YAML and show empty), so
    /// kubectl prints "Error from server (BadRequest): ACI cannot run …".
    fn into_response(self) -> Response {
        let status = self.status();
        let ours = matches!(
            self,
            ExecError::NoCommand
                | ExecError::Arguments(_)
                | ExecError::Busy(_)
                | ExecError::StartBudget { .. }
                | ExecError::Aci(_)
                | ExecError::NoUpgrade
        );
        let mut response = if ours {
            let reason = match status {
                StatusCode::BAD_REQUEST => "BadRequest",
                StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
                StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
                _ => "InternalError",
            };
            let body = serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": self.to_string(),
                "reason": reason,
                "code": status.as_u16(),
            });
            (status, axum::Json(body)).into_response()
        } else if let ExecError::WsProtocol { .. } = self {
            tracing::debug!(error = %self, "kubelet exec: WebSocket handshake refused");
            status.into_response()
        } else {
            (status, self.to_string()).into_response()
        };
        let retry_after = match &self {
            ExecError::Busy(_) => Some(BUSY_RETRY_AFTER.to_string()),
            ExecError::StartBudget { retry_after, .. } => Some(format!(
                "{}",
                retry_after.as_secs_f64().ceil().max(1.0) as u64
            )),
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if matches!(self, ExecError::WsVersion) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(exec_ws::WEBSOCKET_VERSION),
            );
        }
        if matches!(self, ExecError::Protocol { .. }) {
            for p in PROTOCOLS {
                response
                    .headers_mut()
                    .append(ACCEPTED_PROTOCOLS_HEADER, HeaderValue::from_static(p));
            }
        }
        response
    }
}

/// The streams a request asks for (the kubelet's `remotecommand.Options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    /// From the query as the kubelet reads it: `1` is on, anything else off.
    pub fn from_query(query: &[(String, String)]) -> Result<Self, ExecError> {
        let on = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| v == "1")
        };
        let tty = on("tty");
        let options = Self {
            stdin: on("input"),
            stdout: on("output"),
            // The kubelet drops stderr with a tty.
            stderr: on("error") && !tty,
            tty,
        };
        if !options.stdin && !options.stdout && !options.stderr {
            return Err(ExecError::NoStreams);
        }
        Ok(options)
    }
}

/// The one command string ACI can run, or why not.
pub fn aci_command(command: &[String]) -> Result<String, ExecError> {
    match command {
        [] => Err(ExecError::NoCommand),
        [one] if one.trim().is_empty() => Err(ExecError::NoCommand),
        [one] if !one.chars().any(char::is_whitespace) => Ok(one.clone()),
        more => Err(ExecError::Arguments(more.to_vec())),
    }
}

/// The protocol to speak: the first of the client's that is spoken here
/// (apimachinery `httpstream.Handshake`: header values split on commas).
pub fn negotiate(headers: &HeaderMap) -> Result<&'static str, ExecError> {
    let client: Vec<String> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if client.is_empty() {
        return Err(ExecError::NoProtocol);
    }
    client
        .iter()
        .find_map(|c| PROTOCOLS.iter().find(|p| **p == c.as_str()).copied())
        .ok_or(ExecError::Protocol { client })
}

/// `Connection` names `upgrade` and `Upgrade` is `SPDY/3.1`, compared as
/// apimachinery's `spdy/upgrade.go` does (lowercased, "contains").
fn check_upgrade(headers: &HeaderMap) -> Result<(), ExecError> {
    let get = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (connection, upgrade) = (get(header::CONNECTION), get(header::UPGRADE));
    if connection.to_ascii_lowercase().contains("upgrade")
        && upgrade
            .to_ascii_lowercase()
            .contains(&SPDY_31.to_ascii_lowercase())
    {
        Ok(())
    } else {
        Err(ExecError::NotUpgrade {
            connection,
            upgrade,
        })
    }
}

/// Bridges `kubectl exec` to ACI for one node.
pub struct ExecBridge {
    aci: Arc<dyn ContainerGroups>,
    cluster_id: Arc<str>,
    limits: ExecLimits,
    sessions: Arc<tokio::sync::Semaphore>,
    starts: std::sync::Mutex<crate::pacing::TokenBucket>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ExecBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecBridge")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ExecBridge {
    /// Starting sessions through `aci` for the groups of `cluster_id`.
    pub fn new(
        aci: Arc<dyn ContainerGroups>,
        cluster_id: &str,
        limits: ExecLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            aci,
            cluster_id: cluster_id.into(),
            sessions: Arc::new(tokio::sync::Semaphore::new(limits.max_sessions)),
            starts: std::sync::Mutex::new(crate::pacing::TokenBucket::new(
                limits.starts_per_sec,
                limits.start_burst,
                Instant::now(),
            )),
            limits,
            metrics,
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&[result])
            .inc();
    }
}

/// What one upgraded session runs.
#[derive(Debug, Clone)]
struct Plan {
    namespace: String,
    pod: String,
    group: String,
    container: String,
    command: String,
    options: StreamOptions,
    protocol: &'static str,
    /// Over WebSocket, not SPDY.
    websocket: bool,
}

/// The `/exec` handler.
pub async fn handler(
    State(bridge): State<Arc<ExecBridge>>,
    Path(path): Path<HashMap<String, String>>,
    mut request: axum::extract::Request,
) -> Response {
    match prepare(&bridge, &path, &mut request).await {
        Ok(response) => response,
        Err(e) => {
            bridge.count(
                if matches!(e, ExecError::Busy(_) | ExecError::StartBudget { .. }) {
                    "busy"
                } else {
                    "refused"
                },
            );
            e.into_response()
        }
    }
}

async fn prepare(
    bridge: &Arc<ExecBridge>,
    path: &HashMap<String, String>,
    request: &mut axum::extract::Request,
) -> Result<Response, ExecError> {
    let param = |k: &str| path.get(k).cloned().unwrap_or_default();
    let (namespace, pod, container) = (param("namespace"), param("pod"), param("container"));
    let query: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
            .map_err(|e| ExecError::Query(e.body_text()))?
            .0;
    let options = StreamOptions::from_query(&query)?;
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let command = aci_command(&command)?;
    let wait = bridge
        .starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now());
    if let Some(retry_after) = wait {
        return Err(ExecError::StartBudget {
            per_sec: bridge.limits.starts_per_sec,
            burst: bridge.limits.start_burst,
            retry_after,
        });
    }
    let permit = bridge
        .sessions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ExecError::Busy(bridge.limits.max_sessions))?;
    let group = super::logs::find_group(bridge.aci.as_ref(), &bridge.cluster_id, &namespace, &pod)
        .await?
        .ok_or(ExecError::NoPod)?;
    if !group
        .properties
        .containers
        .iter()
        .any(|c| c.name == container)
    {
        return Err(ExecError::NoContainer(container));
    }
    // WebSocket (its handshake) or SPDY (its protocol negotiation), both
    // before the upgrade.
    let handshake = if exec_ws::is_websocket_request(request.headers()) {
        Some(exec_ws::handshake(request.method(), request.headers())?)
    } else {
        None
    };
    let protocol = match &handshake {
        Some(h) => h.protocol,
        None => {
            let protocol = negotiate(request.headers())?;
            check_upgrade(request.headers())?;
            protocol
        }
    };
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(ExecError::NoUpgrade)?;
    let plan = Plan {
        namespace,
        pod,
        group: group.name,
        container,
        command,
        options,
        protocol,
        websocket: handshake.is_some(),
    };
    let bridge = bridge.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let io = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "kubelet exec: the upgrade did not complete");
                bridge.count("client-gone");
                return;
            }
        };
        if plan.websocket {
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                io,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let conn = exec_ws::WsConn::new(socket, plan.protocol, plan.options);
            bridge.run(conn, plan).await
        } else {
            match Codec::new() {
                Ok(codec) => {
                    let (reader, writer) = tokio::io::split(io);
                    let conn = Conn::new(reader, writer, codec, plan.protocol, plan.options);
                    bridge.run(conn, plan).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet exec: no SPDY codec");
                    bridge.count("error");
                }
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    match &handshake {
        Some(handshake) => exec_ws::switch_headers(handshake, h),
        None => {
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_31));
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
        }
    }
    Ok(response)
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// ACI closed the socket normally: the process exited.
    Exited,
    /// ACI refused, or the socket broke: the reason.
    Failed(String),
    /// The client went away (nothing more can be sent).
    ClientGone,
    /// [`ExecLimits::max_duration`] passed.
    TimedOut,
}

impl End {
    /// The failure the error stream reports (the kubelet's "error executing
    /// command in container: …"), none for an exit or a client gone.
    fn failure(&self, limits: &ExecLimits) -> Option<String> {
        match self {
            End::Exited | End::ClientGone => None,
            End::Failed(reason) => Some(format!("error executing command in container: {reason}")),
            End::TimedOut => Some(format!(
                "error executing command in container: the session reached this node's limit of {}s",
                limits.max_duration.as_secs()
            )),
        }
    }
}

/// What the client sent, as the session sees it, from either transport.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Input {
    /// Bytes for the process; `end` when the client closed its stdin.
    Stdin { data: Vec<u8>, end: bool },
    /// Bytes on the resize stream (JSON terminal sizes).
    Resize(Vec<u8>),
    /// Nothing for the session (a control frame answered, a message
    /// ignored).
    Nothing,
    /// The client went away or reset a stream it reads.
    Gone,
}

/// One upgraded connection as the session drives it: SPDY/3.1 ([`Conn`]) or
/// WebSocket ([`super::exec_ws::WsConn`]). The session (ACI, stdin, the
/// terminal size, the end) is the same for both.
pub(super) trait Transport {
    /// What [`Transport::recv`] reads.
    type Event;
    /// Before anything is read (WebSocket: the "streams are up" message);
    /// `false` when the client is gone.
    async fn open(&mut self) -> bool {
        true
    }
    /// The next event; `None` when the connection ended. Cancel-safe:
    /// nothing is written and nothing read is lost.
    async fn recv(&mut self) -> Option<Self::Event>;
    /// What `event` means for the session; control frames are answered
    /// here (not cancel-safe: call it outside `select!`).
    async fn input(&mut self, event: Self::Event) -> Input;
    /// Every stream the client should open is there.
    fn ready(&self) -> bool;
    /// The client sends terminal sizes.
    fn resizes(&self) -> bool;
    /// Send what the window allows of `pending` on stdout, draining what
    /// went; `false` when the client is gone.
    async fn flush_stdout(&mut self, pending: &mut Vec<u8>) -> bool;
    /// Report the result as this transport's protocol does, and go away.
    async fn finish(&mut self, end: &End, failure: Option<String>);
}

impl ExecBridge {
    async fn run<T: Transport>(self: Arc<Self>, mut transport: T, plan: Plan) {
        self.metrics.kubelet_exec_sessions.inc();
        tracing::info!(namespace = %plan.namespace, pod = %plan.pod, container = %plan.container, command = %plan.command, protocol = plan.protocol, websocket = plan.websocket, "kubelet exec: session started");
        let end = session(&mut transport, &plan, self.aci.as_ref(), &self.limits).await;
        transport.finish(&end, end.failure(&self.limits)).await;
        let result = match &end {
            End::Exited => "success",
            End::Failed(_) => "error",
            End::ClientGone => "client-gone",
            End::TimedOut => "timeout",
        };
        self.count(result);
        self.metrics.kubelet_exec_sessions.dec();
        tracing::info!(namespace = %plan.namespace, pod = %plan.pod, container = %plan.container, result, detail = ?end, "kubelet exec: session ended");
    }
}

/// The client's streams, by type.
#[derive(Debug, Default)]
struct Streams {
    error: Option<StreamId>,
    stdin: Option<StreamId>,
    stdout: Option<StreamId>,
    stderr: Option<StreamId>,
    resize: Option<StreamId>,
    /// The highest stream id the client opened (for GOAWAY).
    last: StreamId,
}

/// One SPDY connection: frames in and out, windows.
struct Conn<R, W> {
    reader: R,
    writer: W,
    codec: Codec,
    inbuf: Vec<u8>,
    streams: Streams,
    /// The peer has sent SETTINGS or WINDOW_UPDATE: windows apply.
    flow: bool,
    initial_window: u32,
    stdout_window: Window,
    session_window: Window,
    stdin_window: Window,
    /// The negotiated protocol.
    protocol: &'static str,
    /// Streams the client is to open, and has opened.
    expected: usize,
    accepted: usize,
    /// The client sent GOAWAY or closed the connection.
    gone: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    fn new(
        reader: R,
        writer: W,
        codec: Codec,
        protocol: &'static str,
        options: StreamOptions,
    ) -> Self {
        // error, the asked ones, and resize with a tty from v3 (v2 has none).
        let expected = 1
            + usize::from(options.stdin)
            + usize::from(options.stdout)
            + usize::from(options.stderr)
            + usize::from(options.tty && protocol != PROTOCOLS[2]);
        Self {
            reader,
            writer,
            codec,
            inbuf: Vec::with_capacity(16 * 1024),
            streams: Streams::default(),
            flow: false,
            initial_window: spdy::DEFAULT_WINDOW,
            stdout_window: Window::new(spdy::DEFAULT_WINDOW),
            session_window: Window::new(spdy::DEFAULT_WINDOW),
            stdin_window: Window::new(spdy::DEFAULT_WINDOW),
            protocol,
            expected,
            accepted: 0,
            gone: false,
        }
    }

    /// The next frame; `None` when the client closed the connection or sent
    /// bytes that are not SPDY/3. Cancel-safe: bytes read stay in `inbuf`.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.codec.decode(&mut self.inbuf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "kubelet exec: not SPDY/3");
                    return None;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn send(&mut self, frame: &Frame) -> bool {
        let mut bytes = Vec::new();
        if self.codec.encode(frame, &mut bytes).is_err() {
            return false;
        }
        self.writer.write_all(&bytes).await.is_ok() && self.writer.flush().await.is_ok()
    }

    /// What every phase does with connection-level frames; `true` when the
    /// frame was one of them.
    async fn common(&mut self, frame: &Frame) -> bool {
        match frame {
            // A client's ping (odd ids) is echoed.
            Frame::Ping { id } => {
                if id % 2 == 1 {
                    self.send(frame).await;
                }
                true
            }
            Frame::Settings { entries, .. } => {
                for e in entries {
                    if e.id == spdy::SETTINGS_INITIAL_WINDOW_SIZE {
                        self.flow = true;
                        self.initial_window = e.value;
                        self.stdout_window.resize(e.value);
                    }
                }
                true
            }
            Frame::WindowUpdate { stream_id, delta } => {
                self.flow = true;
                if *stream_id == 0 {
                    let _ = self.session_window.grant(*delta);
                } else if Some(*stream_id) == self.streams.stdout {
                    let _ = self.stdout_window.grant(*delta);
                }
                true
            }
            Frame::GoAway { .. } => {
                self.gone = true;
                true
            }
            Frame::Unknown { .. } | Frame::SynReply { .. } | Frame::Headers { .. } => true,
            _ => false,
        }
    }

    /// A stream the client opens: reply, and note its type.
    async fn accept_stream(&mut self, frame: &Frame) -> bool {
        let protocol = self.protocol;
        let Frame::SynStream {
            stream_id, headers, ..
        } = frame
        else {
            return false;
        };
        self.streams.last = self.streams.last.max(*stream_id);
        let reply = Frame::SynReply {
            stream_id: *stream_id,
            flags: 0,
            headers: Vec::new(),
        };
        if !self.send(&reply).await {
            self.gone = true;
            return false;
        }
        let kind = spdy::header(headers, "streamtype").unwrap_or_default();
        let slot = match kind {
            "error" => &mut self.streams.error,
            "stdin" => &mut self.streams.stdin,
            "stdout" => &mut self.streams.stdout,
            "stderr" => &mut self.streams.stderr,
            // v2 has no resize stream (the kubelet: "unexpected stream type").
            "resize" if protocol != PROTOCOLS[2] => &mut self.streams.resize,
            other => {
                tracing::debug!(stream_type = other, "kubelet exec: unexpected stream type");
                return false;
            }
        };
        *slot = Some(*stream_id);
        true
    }

    /// Stdin data received: held to our window when the peer does flow
    /// control (replenished with WINDOW_UPDATE); `false` on an overrun.
    async fn take_stdin(&mut self, stream_id: StreamId, len: usize) -> bool {
        if !self.flow {
            return true;
        }
        if self.stdin_window.consume(len).is_err() {
            self.send(&Frame::RstStream {
                stream_id,
                status: spdy::RST_FLOW_CONTROL_ERROR,
            })
            .await;
            return false;
        }
        if let Some(delta) = self.stdin_window.replenish() {
            self.send(&Frame::WindowUpdate { stream_id, delta }).await;
            self.send(&Frame::WindowUpdate {
                stream_id: 0,
                delta,
            })
            .await;
        }
        true
    }

    /// How many stdout bytes may go now.
    fn stdout_room(&self) -> usize {
        if !self.flow {
            return usize::MAX;
        }
        let room = self
            .stdout_window
            .available()
            .min(self.session_window.available());
        usize::try_from(room.max(0)).unwrap_or(0)
    }

    /// Send up to the window of `pending` on stdout; what was sent is
    /// drained. `false` when the client is gone.
    async fn flush(&mut self, pending: &mut Vec<u8>) -> bool {
        let Some(stream_id) = self.streams.stdout else {
            pending.clear();
            return true;
        };
        while !pending.is_empty() {
            let n = pending.len().min(self.stdout_room()).min(32 * 1024);
            if n == 0 {
                return true;
            }
            let data: Vec<u8> = pending.drain(..n).collect();
            if self.flow {
                let _ = self.stdout_window.consume(n);
                let _ = self.session_window.consume(n);
            }
            if !self
                .send(&Frame::Data {
                    stream_id,
                    flags: 0,
                    data,
                })
                .await
            {
                return false;
            }
        }
        true
    }

    /// Finish the streams, write the result on the error stream, go away.
    async fn close(&mut self, end: &End, failure: Option<String>) {
        if matches!(end, End::ClientGone) || self.gone {
            let _ = self.writer.shutdown().await;
            return;
        }
        // Our halves of stdin too: client-go waits for it to close.
        for stream_id in [self.streams.stdin, self.streams.stdout, self.streams.stderr]
            .into_iter()
            .flatten()
        {
            self.send(&Frame::Data {
                stream_id,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await;
        }
        if let Some(stream_id) = self.streams.error {
            let body = status_body(self.protocol == PROTOCOLS[0], failure.as_deref());
            if !body.is_empty() {
                self.send(&Frame::Data {
                    stream_id,
                    flags: 0,
                    data: body,
                })
                .await;
            }
            self.send(&Frame::Data {
                stream_id,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await;
        }
        self.send(&Frame::GoAway {
            last_good_stream_id: self.streams.last,
            status: spdy::GOAWAY_OK,
        })
        .await;
        let _ = self.writer.shutdown().await;
    }
}

/// What goes on the error stream: v4 (`json`) the JSON `metav1.Status`
/// the kubelet writes (`Success`, or `apierrors.NewInternalError`), older
/// protocols the failure's text only (`status.Error()`), nothing on success.
pub(super) fn status_body(json: bool, failure: Option<&str>) -> Vec<u8> {
    match (json, failure) {
        (true, None) => serde_json::json!({"metadata": {}, "status": "Success"}).to_string(),
        (true, Some(reason)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {reason}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": reason}]},
            "code": 500,
        })
        .to_string(),
        (false, None) => String::new(),
        (false, Some(reason)) => format!("Internal error occurred: {reason}"),
    }
    .into_bytes()
}

/// The first complete `{"Width":…,"Height":…}` in `bytes` (client-go's
/// `remotecommand.TerminalSize` as JSON, one object after another).
fn first_resize(bytes: &[u8]) -> Option<TerminalSize> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let mut objects = serde_json::Deserializer::from_slice(bytes).into_iter::<Size>();
    match objects.next() {
        Some(Ok(s)) if s.width > 0 && s.height > 0 => Some(TerminalSize {
            rows: s.height,
            cols: s.width,
        }),
        _ => None,
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Transport for Conn<R, W> {
    type Event = Frame;

    async fn recv(&mut self) -> Option<Frame> {
        self.next_frame().await
    }

    async fn input(&mut self, frame: Frame) -> Input {
        if self.common(&frame).await {
            return if self.gone {
                Input::Gone
            } else {
                Input::Nothing
            };
        }
        match frame {
            Frame::SynStream {
                ref headers, flags, ..
            } => {
                let stdin_closed =
                    flags & FLAG_FIN != 0 && spdy::header(headers, "streamtype") == Some("stdin");
                if self.accept_stream(&frame).await {
                    self.accepted += 1;
                }
                if self.gone {
                    Input::Gone
                } else if stdin_closed {
                    Input::Stdin {
                        data: Vec::new(),
                        end: true,
                    }
                } else {
                    Input::Nothing
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } if Some(stream_id) == self.streams.stdin => {
                if !self.take_stdin(stream_id, data.len()).await {
                    return Input::Gone;
                }
                Input::Stdin {
                    data,
                    end: flags & FLAG_FIN != 0,
                }
            }
            Frame::Data {
                stream_id, data, ..
            } if Some(stream_id) == self.streams.resize => Input::Resize(data),
            Frame::RstStream { stream_id, .. }
                if Some(stream_id) == self.streams.error
                    || Some(stream_id) == self.streams.stdout =>
            {
                Input::Gone
            }
            _ => Input::Nothing,
        }
    }

    fn ready(&self) -> bool {
        self.accepted >= self.expected
    }

    fn resizes(&self) -> bool {
        self.streams.resize.is_some()
    }

    async fn flush_stdout(&mut self, pending: &mut Vec<u8>) -> bool {
        self.flush(pending).await
    }

    async fn finish(&mut self, end: &End, failure: Option<String>) {
        self.close(end, failure).await;
    }
}

/// The session after the upgrade, until it ends: the client's streams, the
/// terminal size, ACI's socket, then the bridge between them.
async fn session<T: Transport>(
    conn: &mut T,
    plan: &Plan,
    aci: &dyn ContainerGroups,
    limits: &ExecLimits,
) -> End {
    use futures::{SinkExt as _, StreamExt as _};
    let tty = plan.options.tty;
    if !conn.open().await {
        return End::ClientGone;
    }
    // 1. The client's streams.
    let mut early_stdin = Vec::new();
    let mut resize_bytes = Vec::new();
    let mut stdin_done = false;
    let created_by = Instant::now() + limits.stream_creation_timeout;
    while !conn.ready() {
        // The kubelet gives up the same way (no stream to report on).
        let Ok(Some(event)) = tokio::time::timeout_at(created_by, conn.recv()).await else {
            return End::ClientGone;
        };
        match conn.input(event).await {
            Input::Gone => return End::ClientGone,
            Input::Stdin { data, end } => {
                early_stdin.extend_from_slice(&data);
                stdin_done |= end;
            }
            Input::Resize(data) => resize_bytes.extend_from_slice(&data),
            Input::Nothing => {}
        }
    }
    // 2. With a tty, the terminal's size from the first resize.
    let mut size = first_resize(&resize_bytes);
    if size.is_none() && conn.resizes() {
        let until = Instant::now() + limits.first_resize_within;
        while size.is_none() {
            let Ok(event) = tokio::time::timeout_at(until, conn.recv()).await else {
                break;
            };
            let Some(event) = event else {
                return End::ClientGone;
            };
            match conn.input(event).await {
                Input::Gone => return End::ClientGone,
                Input::Stdin { data, end } => {
                    early_stdin.extend_from_slice(&data);
                    stdin_done |= end;
                }
                Input::Resize(data) => {
                    resize_bytes.extend_from_slice(&data);
                    size = first_resize(&resize_bytes);
                }
                Input::Nothing => {}
            }
        }
    }
    let size = size.unwrap_or_default();
    // 3. ACI: executeCommand, the socket, the password.
    let started = tokio::time::timeout(
        limits.connect_timeout,
        aci.exec(&plan.group, &plan.container, &plan.command, size),
    )
    .await;
    let ExecSession {
        web_socket_uri,
        password,
    } = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("ACI executeCommand: {e}")),
        Err(_) => {
            return End::Failed(format!(
                "ACI executeCommand: no answer within {}s",
                limits.connect_timeout.as_secs()
            ));
        }
    };
    let connected = tokio::time::timeout(
        limits.connect_timeout,
        tokio_tungstenite::connect_async(web_socket_uri.as_str()),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return End::Failed(format!("ACI exec socket: {e}")),
        Err(_) => {
            return End::Failed(format!(
                "ACI exec socket: not connected within {}s",
                limits.connect_timeout.as_secs()
            ));
        }
    };
    // ACI wants the password as the first, text, message.
    if let Err(e) = ws.send(Message::text(password)).await {
        return End::Failed(format!("ACI exec socket: sending the password: {e}"));
    }
    if !early_stdin.is_empty()
        && let Err(e) = ws.send(Message::binary(early_stdin)).await
    {
        return End::Failed(format!("ACI exec socket: {e}"));
    }
    let mut eot_sent = false;
    if stdin_done && !tty {
        eot_sent = true;
        if let Err(e) = ws.send(Message::binary(vec![EOT])).await {
            return End::Failed(format!("ACI exec socket: {e}"));
        }
    }
    // 4. The bridge.
    let until = Instant::now() + limits.max_duration;
    let mut pending: Vec<u8> = Vec::new();
    let end = loop {
        if !pending.is_empty() && !conn.flush_stdout(&mut pending).await {
            break End::ClientGone;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break End::TimedOut,
            event = conn.recv() => {
                let Some(event) = event else { break End::ClientGone };
                match conn.input(event).await {
                    Input::Gone => break End::ClientGone,
                    Input::Stdin { data, end } => {
                        if !data.is_empty()
                            && let Err(e) = ws.send(Message::binary(data)).await
                        {
                            break End::Failed(format!("ACI exec socket: {e}"));
                        }
                        if end && !tty && !eot_sent {
                            eot_sent = true;
                            if let Err(e) = ws.send(Message::binary(vec![EOT])).await {
                                break End::Failed(format!("ACI exec socket: {e}"));
                            }
                        }
                    }
                    // Later resizes: ACI takes the size only at start.
                    Input::Resize(_) | Input::Nothing => {}
                }
            }
            message = ws.next(), if pending.is_empty() => match message {
                Some(Ok(Message::Text(text))) => pending.extend_from_slice(text.as_bytes()),
                Some(Ok(Message::Binary(bytes))) => pending.extend_from_slice(&bytes),
                Some(Ok(Message::Close(frame))) => match frame {
                    None => break End::Exited,
                    Some(f) if f.code == CloseCode::Normal => break End::Exited,
                    Some(f) => {
                        break End::Failed(format!(
                            "ACI closed the exec socket with code {}{}",
                            u16::from(f.code),
                            if f.reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", f.reason)
                            }
                        ));
                    }
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Failed(format!("ACI exec socket broke: {e}")),
                None => break End::Failed("the ACI exec socket ended without a close frame".into()),
            },
        }
    };
    // Output that came before the end still goes out.
    if matches!(end, End::Exited | End::Failed(_)) {
        while !pending.is_empty() {
            let before = pending.len();
            if !conn.flush_stdout(&mut pending).await || pending.len() == before {
                break;
            }
        }
    }
    // Closes the socket, or answers ACI's close.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    end
}

/// End of transmission (Ctrl-D): how a terminal is told that input ended.
const EOT: u8 = 0x04;

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stream_options_are_read_as_the_kubelet_reads_them() {
        let o = StreamOptions::from_query(&q(&[("output", "1"), ("error", "1")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            o,
            StreamOptions {
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false
            }
        );
        // A tty drops stderr.
        let o = StreamOptions::from_query(&q(&[("input", "1"), ("error", "1"), ("tty", "1")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(o.stdin && o.tty && !o.stderr);
        // Only "1" is on.
        let e = StreamOptions::from_query(&q(&[("output", "true"), ("stdin", "1")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(e, "you must specify at least 1 of stdin, stdout, stderr");
    }

    #[test]
    fn aci_runs_one_word_commands_only() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            aci_command(&s(&["/bin/sh"])).ok().as_deref(),
            Some("/bin/sh")
        );
        for refused in [&["ls", "/"][..], &["sh -c ls"][..]] {
            let e = aci_command(&s(refused))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("without arguments"), "{e}");
        }
        assert!(matches!(aci_command(&[]), Err(ExecError::NoCommand)));
        assert!(matches!(aci_command(&s(&[" "])), Err(ExecError::NoCommand)));
    }

    #[test]
    fn the_clients_first_spoken_protocol_wins() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    PROTOCOL_HEADER,
                    HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
                );
            }
            h
        };
        // client-go's SPDY executor offers v5 (websocket only) … v1.
        let offered = headers(&[
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ]);
        assert_eq!(negotiate(&offered).ok(), Some("v4.channel.k8s.io"));
        assert_eq!(
            negotiate(&headers(&["v2.channel.k8s.io, v3.channel.k8s.io"])).ok(),
            Some("v2.channel.k8s.io")
        );
        assert!(matches!(
            negotiate(&headers(&[])),
            Err(ExecError::NoProtocol)
        ));
        let e = negotiate(&headers(&["channel.k8s.io"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("unable to upgrade: unable to negotiate protocol"),
            "{e}"
        );
    }

    #[test]
    fn the_status_is_written_per_protocol() {
        let ok: serde_json::Value =
            serde_json::from_slice(&status_body(true, None)).unwrap_or_default();
        assert_eq!(ok["status"], "Success");
        let failed: serde_json::Value =
            serde_json::from_slice(&status_body(true, Some("boom"))).unwrap_or_default();
        assert_eq!(failed["reason"], "InternalError");
        assert_eq!(failed["code"], 500);
        assert_eq!(failed["message"], "Internal error occurred: boom");
        assert!(status_body(false, None).is_empty());
        assert_eq!(
            status_body(false, Some("boom")),
            b"Internal error occurred: boom".to_vec()
        );
    }

    #[test]
    fn the_first_resize_gives_the_terminal_size() {
        assert_eq!(
            first_resize(br#"{"Width":120,"Height":40}{"Width":1,"Height":1}"#),
            Some(TerminalSize {
                rows: 40,
                cols: 120
            })
        );
        assert_eq!(first_resize(br#"{"Width":120,"#), None);
        assert_eq!(first_resize(b""), None);
    }
}
