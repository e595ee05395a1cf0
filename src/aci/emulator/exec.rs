//! ACI's exec, emulated: the ARM `executeCommand` answer
//! (`POST …/containerGroups/{g}/containers/{c}/exec` → `{webSocketUri,
//! password}`) and the WebSocket it points at, on a listener of its own
//! (loopback).
//!
//! The socket speaks what ACI's exec socket speaks, as its clients use it
//! (virtual-kubelet/azure-aci `RunInContainer` in pkg/provider/aci.go, and
//! azure-cli `az container exec`, `_start_exec_pipe` in
//! command_modules/container/custom.py): the client's **first message is
//! the password, as text**; after it, every message from the client is
//! terminal input, and every message from the server is terminal output
//! (text frames: `az container exec` writes them to stdout as `str`), the
//! first of them empty (azure-cli PR #16000). There
//! is no exit-code channel: the session ends when the server closes the
//! socket. ACI documents a single process without arguments
//! ("Execute a command in a running Azure container instance",
//! learn.microsoft.com/azure/container-instances/container-instances-exec:
//! "you can't pass command arguments"); the emulator takes the command
//! string as ARM does and records it.
//!
//! Each `executeCommand` makes one session: its URI works once (a second
//! connection, or one after [`PENDING_FOR`], is refused at the handshake
//! with 404). A first message that is not the password ends the session
//! with a close frame (1008, policy violation) and nothing else: ACI's
//! documentation does not say what its socket does there; no terminal is
//! ever attached.
//!
//! What a session does is scripted per group and container through
//! `POST /_emulator/groups/{name}/containers/{container}/exec`
//! ([`ExecScript`]); `GET /_emulator/exec` lists the sessions started.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long an `executeCommand` answer stays usable.
pub const PENDING_FOR: Duration = Duration::from_secs(120);
/// Sessions waiting for their client, at most (older ones are dropped).
const MAX_PENDING: usize = 1024;
/// How long the socket waits for the password.
const PASSWORD_WITHIN: Duration = Duration::from_secs(30);
/// No scripted session lasts longer.
const SESSION_AT_MOST: Duration = Duration::from_secs(300);

/// How a scripted session ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExecEnd {
    /// A close frame (1000, normal closure): the process exited.
    #[default]
    Close,
    /// The TCP connection is cut without a close frame (the session broke).
    Drop,
}

/// What the emulated process does in a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExecScript {
    /// Output sent once the password is accepted.
    pub output: String,
    /// Echo the client's input back, as a terminal does.
    pub echo: bool,
    /// Keep the session open until the client's input contains this (e.g.
    /// `"exit\r"`); without it the session ends right after `output`,
    /// unless `echo` is set, when it ends as the client closes.
    pub until_input: Option<String>,
    /// How the session ends.
    pub end: ExecEnd,
}

/// One session `executeCommand` started (what `GET /_emulator/exec` lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRecord {
    pub group: String,
    pub container: String,
    pub command: String,
    pub rows: i32,
    pub cols: i32,
    /// Whether a client connected and sent the right password.
    pub attached: bool,
}

struct Pending {
    password: String,
    record: usize,
    script: ExecScript,
    created: Instant,
}

#[derive(Default)]
struct Inner {
    /// `ws://127.0.0.1:PORT` once the listener runs.
    base: Option<String>,
    scripts: BTreeMap<(String, String), ExecScript>,
    pending: HashMap<String, Pending>,
    records: Vec<ExecRecord>,
    next: u64,
}

/// The exec sessions of one emulator.
#[derive(Default)]
pub struct ExecHub {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ExecHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecHub")
    }
}

/// Why `executeCommand` could not make a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The exec listener is not running (the router is used without a
    /// socket).
    NoListener,
}

impl ExecHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the script of `container` in group `group`.
    pub fn set_script(&self, group: &str, container: &str, script: ExecScript) {
        self.lock()
            .scripts
            .insert((group.to_string(), container.to_string()), script);
    }

    /// Every session started so far, oldest first.
    pub fn records(&self) -> Vec<ExecRecord> {
        self.lock().records.clone()
    }

    /// A new session: its URI and password.
    pub fn start(
        &self,
        group: &str,
        container: &str,
        command: &str,
        rows: i32,
        cols: i32,
    ) -> Result<(String, String), StartError> {
        let mut w = self.lock();
        let base = w.base.clone().ok_or(StartError::NoListener)?;
        let now = Instant::now();
        w.pending
            .retain(|_, p| now.duration_since(p.created) < PENDING_FOR);
        if w.pending.len() >= MAX_PENDING
            && let Some(oldest) = w
                .pending
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| k.clone())
        {
            w.pending.remove(&oldest);
        }
        w.next += 1;
        let id = format!("caas-{:08x}", w.next);
        let password = random_password();
        let script = w
            .scripts
            .get(&(group.to_string(), container.to_string()))
            .cloned()
            .unwrap_or_default();
        w.records.push(ExecRecord {
            group: group.to_string(),
            container: container.to_string(),
            command: command.to_string(),
            rows,
            cols,
            attached: false,
        });
        let record = w.records.len() - 1;
        w.pending.insert(
            id.clone(),
            Pending {
                password: password.clone(),
                record,
                script,
                created: now,
            },
        );
        Ok((format!("{base}/exec/{id}"), password))
    }

    fn take(&self, id: &str) -> Option<Pending> {
        let mut w = self.lock();
        let p = w.pending.remove(id)?;
        (Instant::now().duration_since(p.created) < PENDING_FOR).then_some(p)
    }

    fn attached(&self, record: usize) {
        if let Some(r) = self.lock().records.get_mut(record) {
            r.attached = true;
        }
    }

    pub(super) fn set_base(&self, base: String) {
        self.lock().base = Some(base);
    }
}

fn random_password() -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// The exec socket's listener task; aborting it (drop) ends every session.
pub struct ExecListener {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ExecListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve the exec socket of `hub` on `listener`.
pub fn spawn(
    listener: tokio::net::TcpListener,
    hub: std::sync::Arc<ExecHub>,
) -> std::io::Result<ExecListener> {
    let addr = listener.local_addr()?;
    hub.set_base(format!("ws://{addr}"));
    let task = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let hub = hub.clone();
                    sessions.spawn(async move {
                        let _ = tokio::time::timeout(SESSION_AT_MOST, serve_one(tcp, hub)).await;
                    });
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
    });
    Ok(ExecListener { addr, task })
}

async fn serve_one(tcp: tokio::net::TcpStream, hub: std::sync::Arc<ExecHub>) {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let mut pending = None;
    // The callback's type is tungstenite's (its error is an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let id = req.uri().path().strip_prefix("/exec/").unwrap_or_default();
        match hub.take(id) {
            Some(p) => {
                pending = Some(p);
                Ok(resp)
            }
            None => {
                let mut refused = ErrorResponse::new(Some("no such exec session".into()));
                *refused.status_mut() = axum::http::StatusCode::NOT_FOUND;
                Err(refused)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let Some(session) = pending else { return };
    // The password first, as text.
    let first = tokio::time::timeout(PASSWORD_WITHIN, ws.next()).await;
    let accepted =
        matches!(&first, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == session.password);
    if !accepted {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "invalid password".into(),
            }))
            .await;
        return;
    }
    hub.attached(session.record);
    // ACI sends an empty message once the session is set up (azure-cli
    // PR #16000: "The backend sends an empty webSocket message after
    // establishing an connection"; its client had taken it for the end).
    if ws.send(Message::text("")).await.is_err() {
        return;
    }
    let script = session.script;
    if !script.output.is_empty() && ws.send(Message::text(script.output.clone())).await.is_err() {
        return;
    }
    if script.echo || script.until_input.is_some() {
        let mut input = Vec::new();
        while let Some(Ok(msg)) = ws.next().await {
            let data = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if script.echo
                && ws
                    .send(Message::text(String::from_utf8_lossy(&data).into_owned()))
                    .await
                    .is_err()
            {
                return;
            }
            input.extend_from_slice(&data);
            if let Some(until) = &script.until_input
                && input
                    .windows(until.len().max(1))
                    .any(|w| w == until.as_bytes())
            {
                break;
            }
        }
    }
    match script.end {
        ExecEnd::Close => {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
                .await;
            // Wait (briefly) for the client's close reply.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        ExecEnd::Drop => drop(ws),
    }
}
