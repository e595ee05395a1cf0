//! `kubectl exec` against the virtual node's kubelet endpoint, over loopback
//! HTTP, with the provider's ACI client on the ACI emulator: a minimal SPDY
//! client (the crate's own codec) upgrades as the API server's proxy does
//! (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`), opens the streams
//! client-go opens (`error`, `stdin`, `stdout`, `resize`), and reads the
//! emulator's scripted output and the `metav1.Status` on the error stream.
//! Also: what ACI cannot do refused before the upgrade, the session cap,
//! and the emulator's exec socket rules (password first, one use per URI).

mod support;

use std::sync::Arc;
use std::time::Duration;

use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle, ExecEnd, ExecScript};
use spillway::aci::{ContainerGroup, ContainerGroups, TerminalSize};
use spillway::kubelet::exec::{ExecBridge, ExecLimits};
use spillway::kubelet::logs::{LogBudget, LogReader};
use spillway::kubelet::spdy::{Codec, FLAG_FIN, Frame, StreamId};
use spillway::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CLUSTER: &str = "c1";
const WAIT: Duration = Duration::from_secs(20);

/// The group of pod `web/api` (one container `app`) as the provider makes it.
fn group() -> ContainerGroup {
    support::web_pod_group(CLUSTER, "api", "busybox:1.36", None)
}

struct Node {
    emu: EmulatorHandle,
    aci: Arc<dyn ContainerGroups>,
    addr: std::net::SocketAddr,
    group: String,
    metrics: Arc<Metrics>,
    /// With TLS: the endpoint's certificate.
    certificate: Option<rustls::pki_types::CertificateDer<'static>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    /// An emulator with the pod's group, and a kubelet endpoint bridging
    /// exec within `limits`, over plain HTTP.
    async fn start(limits: ExecLimits) -> Self {
        Self::start_with(limits, false).await
    }

    /// The same; with `tls`, over TLS with a self-signed certificate, as
    /// deploy/ runs it.
    async fn start_with(limits: ExecLimits, tls: bool) -> Self {
        let emu = Emulator::start(EmulatorConfig {
            speed: 100.0,
            ..EmulatorConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = AzureConfig::for_emulator(&emu.url, "tok", "sub", "rg");
        let aci: Arc<dyn ContainerGroups> =
            Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
        let g = group();
        aci.create_or_update(&g)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new());
        let logs = Arc::new(LogReader::new(aci.clone(), CLUSTER, LogBudget::default()));
        let exec = Arc::new(ExecBridge::new(
            aci.clone(),
            CLUSTER,
            limits,
            metrics.clone(),
        ));
        let app = spillway::kubelet::router_with(logs, exec, None, spillway::kubelet::Access::Open);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let limits = spillway::kubelet::ServeLimits::default();
        let certificate = if tls {
            let made = spillway::kubelet::self_signed_tls_config("127.0.0.1", "spillway-aci")
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(spillway::kubelet::serve_tls(
                listener,
                app,
                made.config,
                limits,
                stop,
            ));
            Some(made.certificate)
        } else {
            tokio::spawn(spillway::kubelet::serve(listener, app, limits, stop));
            None
        };
        let node = Node {
            emu,
            aci,
            addr,
            group: g.name,
            metrics,
            certificate,
            _stop: tx,
        };
        node.wait_running().await;
        node
    }

    async fn wait_running(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let g = self.aci.get(&self.group).await.ok().flatten();
            let running = g.as_ref().is_some_and(|g| {
                g.properties.containers.iter().any(|c| {
                    c.properties
                        .instance_view
                        .as_ref()
                        .and_then(|v| v.current_state.as_ref())
                        .is_some_and(|s| s.state == "Running")
                })
            });
            if running {
                return;
            }
            assert!(Instant::now() < deadline, "the group never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn script(&self, script: ExecScript) {
        self.emu.state.set_exec_script(&self.group, "app", script);
    }
}

/// A refused upgrade: status and body.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

/// A connection's bytes, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The API server's side of one exec connection.
struct SpdyClient {
    tcp: Box<dyn Io>,
    codec: Codec,
    buf: Vec<u8>,
    /// The protocol the endpoint chose.
    protocol: String,
    next_id: StreamId,
}

/// What the client read until the endpoint went away.
#[derive(Debug, Default)]
struct Transcript {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
    /// What the endpoint sent on stdin (nothing; it only finishes it).
    stdin: Vec<u8>,
    /// Streams the endpoint finished (FIN).
    finished: Vec<StreamId>,
    replied: Vec<StreamId>,
    goaway: bool,
}

impl SpdyClient {
    /// `POST path` with the upgrade headers kube-apiserver's proxy sends.
    async fn upgrade(
        addr: std::net::SocketAddr,
        path: &str,
        protocols: &[&str],
    ) -> Result<Self, Refused> {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self::upgrade_over(Box::new(tcp), addr, path, protocols).await
    }

    /// The same over TLS, trusting only `certificate` (for 127.0.0.1).
    async fn upgrade_tls(
        addr: std::net::SocketAddr,
        certificate: &rustls::pki_types::CertificateDer<'static>,
        path: &str,
        protocols: &[&str],
    ) -> Result<Self, Refused> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name =
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self::upgrade_over(Box::new(tls), addr, path, protocols).await
    }

    async fn upgrade_over(
        mut tcp: Box<dyn Io>,
        addr: std::net::SocketAddr,
        path: &str,
        protocols: &[&str],
    ) -> Result<Self, Refused> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
        );
        for p in protocols {
            head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The answer's head.
        let mut buf = Vec::new();
        let end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.unwrap_or(0);
                assert!(n > 0, "the endpoint closed before answering");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to the upgrade"));
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut rest = buf[end..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        if status != 101 {
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            let _ = tokio::time::timeout(WAIT, async {
                while rest.len() < len {
                    let mut chunk = [0u8; 4096];
                    let n = tcp.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    rest.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            return Err(Refused {
                status,
                body: String::from_utf8_lossy(&rest).to_string(),
                retry_after: header("retry-after"),
            });
        }
        assert_eq!(header("upgrade").as_deref(), Some("SPDY/3.1"), "{head}");
        Ok(Self {
            tcp,
            codec: Codec::new().unwrap_or_else(|e| panic!("{e}")),
            buf: rest,
            protocol: header("x-stream-protocol-version").unwrap_or_default(),
            next_id: 1,
        })
    }

    async fn send(&mut self, frame: &Frame) {
        let mut bytes = Vec::new();
        self.codec
            .encode(frame, &mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        self.tcp
            .write_all(&bytes)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Open a stream of `stream_type` (client-go's ids: odd, rising).
    async fn open(&mut self, stream_type: &str, fin: bool) -> StreamId {
        let id = self.next_id;
        self.next_id += 2;
        self.send(&Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: if fin { FLAG_FIN } else { 0 },
            headers: vec![("streamtype".into(), stream_type.into())],
        })
        .await;
        id
    }

    async fn data(&mut self, stream_id: StreamId, data: &[u8], fin: bool) {
        self.send(&Frame::Data {
            stream_id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: data.to_vec(),
        })
        .await;
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self
                .codec
                .decode(&mut self.buf)
                .unwrap_or_else(|e| panic!("{e}"))
            {
                return Some(f);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read until the endpoint goes away (or `until` says stop), sorting
    /// data by stream.
    async fn read_until(
        &mut self,
        ids: &Ids,
        t: &mut Transcript,
        until: impl Fn(&Transcript) -> bool,
    ) {
        let read = async {
            while !until(t) {
                let Some(frame) = self.next_frame().await else {
                    return;
                };
                match frame {
                    Frame::SynReply { stream_id, .. } => t.replied.push(stream_id),
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        let sink = if Some(stream_id) == ids.stdout {
                            &mut t.stdout
                        } else if Some(stream_id) == ids.stderr {
                            &mut t.stderr
                        } else if stream_id == ids.error {
                            &mut t.error
                        } else if Some(stream_id) == ids.stdin {
                            &mut t.stdin
                        } else {
                            panic!("data on stream {stream_id}")
                        };
                        sink.extend_from_slice(&data);
                        if flags & FLAG_FIN != 0 {
                            t.finished.push(stream_id);
                        }
                    }
                    Frame::GoAway { .. } => t.goaway = true,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("the session did not end: {t:?}"));
    }
}

/// The streams a test opened.
#[derive(Debug)]
struct Ids {
    error: StreamId,
    stdin: Option<StreamId>,
    stdout: Option<StreamId>,
    stderr: Option<StreamId>,
    resize: Option<StreamId>,
}

/// Open the streams client-go opens for `opts` (error first; the error
/// stream's writing side closed at once, as client-go never writes to it).
async fn open_streams(
    c: &mut SpdyClient,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Ids {
    let error = c.open("error", true).await;
    let stdin = if stdin {
        Some(c.open("stdin", false).await)
    } else {
        None
    };
    let stdout = if stdout {
        Some(c.open("stdout", true).await)
    } else {
        None
    };
    let stderr = if stderr {
        Some(c.open("stderr", true).await)
    } else {
        None
    };
    let resize = if tty {
        Some(c.open("resize", false).await)
    } else {
        None
    };
    Ids {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    }
}

fn status(t: &Transcript) -> serde_json::Value {
    serde_json::from_slice(&t.error)
        .unwrap_or_else(|e| panic!("error stream {:?}: {e}", String::from_utf8_lossy(&t.error)))
}

const V4: &str = "v4.channel.k8s.io";
/// What client-go's SPDY executor offers (best first).
const OFFERED: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_the_command_on_aci_and_reports_success_on_the_error_stream() {
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "Sun Nov 29 12:00:00 UTC 2026\r\n".into(),
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=%2Fbin%2Fdate&output=1&error=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(c.protocol, V4);
    let ids = open_streams(&mut c, false, true, true, false).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;

    assert_eq!(
        String::from_utf8_lossy(&t.stdout),
        "Sun Nov 29 12:00:00 UTC 2026\r\n"
    );
    // ACI's socket is a terminal: nothing ever comes on stderr.
    assert!(t.stderr.is_empty());
    assert_eq!(
        status(&t),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    // Every stream was answered, the server's halves finished, then GOAWAY.
    assert_eq!(t.replied.len(), 3, "{t:?}");
    for id in [
        ids.error,
        ids.stdout.unwrap_or_default(),
        ids.stderr.unwrap_or_default(),
    ] {
        assert!(t.finished.contains(&id), "stream {id} not finished: {t:?}");
    }
    assert!(t.goaway);
    // ACI got the one command string and the default terminal.
    let sessions = node.emu.state.exec_sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].command, "/bin/date");
    assert_eq!(sessions[0].container, "app");
    assert!(sessions[0].attached, "the password was accepted");
    let d = TerminalSize::default();
    assert_eq!(
        (sessions[0].rows, sessions[0].cols),
        (i32::from(d.rows), i32::from(d.cols))
    );
    assert_eq!(
        node.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&["success"])
            .get(),
        1
    );
    assert_eq!(node.metrics.kubelet_exec_sessions.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_upgrades_over_the_endpoints_tls() {
    let node = Node::start_with(ExecLimits::default(), true).await;
    node.script(ExecScript {
        output: "over TLS\r\n".into(),
        ..Default::default()
    });
    let certificate = node
        .certificate
        .clone()
        .unwrap_or_else(|| panic!("no certificate"));
    let mut c = SpdyClient::upgrade_tls(
        node.addr,
        &certificate,
        "/exec/web/api/app?command=hostname&output=1&error=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut c, false, true, true, false).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(String::from_utf8_lossy(&t.stdout), "over TLS\r\n");
    assert_eq!(status(&t)["status"], "Success");
    assert!(t.goaway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_session_takes_the_first_size_and_carries_stdin_both_ways() {
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "/ # ".into(),
        echo: true,
        until_input: Some("exit\r".into()),
        end: ExecEnd::Close,
    });
    // The uid form of the path, as the API server sends it.
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/uid-api/app?command=%2Fbin%2Fsh&input=1&output=1&tty=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut c, true, true, false, true).await;
    let resize = ids.resize.unwrap_or_else(|| panic!("no resize stream"));
    let stdin = ids.stdin.unwrap_or_else(|| panic!("no stdin stream"));
    c.data(resize, br#"{"Width":132,"Height":43}"#, false).await;
    let mut t = Transcript::default();
    // The prompt comes once ACI's session runs.
    c.read_until(&ids, &mut t, |t| t.stdout.ends_with(b"/ # "))
        .await;
    // A later resize is ignored (ACI takes the size at start only).
    c.data(resize, br#"{"Width":10,"Height":10}"#, false).await;
    c.data(stdin, b"echo hi\r", false).await;
    c.read_until(&ids, &mut t, |t| t.stdout.ends_with(b"echo hi\r"))
        .await;
    c.data(stdin, b"exit\r", false).await;
    c.read_until(&ids, &mut t, |_| false).await;

    assert_eq!(String::from_utf8_lossy(&t.stdout), "/ # echo hi\rexit\r");
    assert_eq!(status(&t)["status"], "Success");
    // Our half of stdin is finished too (client-go waits for it), empty.
    assert!(t.finished.contains(&stdin), "{t:?}");
    assert!(t.stdin.is_empty());
    let sessions = node.emu.state.exec_sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0].rows, sessions[0].cols), (43, 132));
    assert_eq!(sessions[0].command, "/bin/sh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_aci_breaks_is_an_internal_error_and_older_protocols_get_text() {
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "partial".into(),
        end: ExecEnd::Drop,
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=top&output=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut c, false, true, false, false).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(String::from_utf8_lossy(&t.stdout), "partial");
    let s = status(&t);
    assert_eq!(s["status"], "Failure", "{s}");
    assert_eq!(s["reason"], "InternalError", "{s}");
    assert_eq!(s["code"], 500, "{s}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Internal error occurred: error executing command in container: "),
        "{message}"
    );

    // v3 (no JSON status): nothing on the error stream on success.
    node.script(ExecScript {
        output: "ok".into(),
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=true&output=1",
        &["v3.channel.k8s.io"],
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(c.protocol, "v3.channel.k8s.io");
    let ids = open_streams(&mut c, false, true, false, false).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(t.stdout, b"ok");
    assert!(t.error.is_empty(), "{t:?}");
    assert!(t.finished.contains(&ids.error));
    assert_eq!(
        node.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&["error"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_aci_cannot_do_is_refused_before_the_upgrade() {
    let node = Node::start(ExecLimits::default()).await;
    // Arguments: ACI runs one command without arguments.
    for path in [
        "/exec/web/api/app?command=ls&command=%2F&output=1",
        "/exec/web/api/app?command=sh%20-c%20ls&output=1",
    ] {
        let r = SpdyClient::upgrade(node.addr, path, &OFFERED)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path}: upgraded"));
        assert_eq!(r.status, 400, "{path}: {r:?}");
        // A Status, which kubectl shows as "Error from server (BadRequest): …".
        let s: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(
            (s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()),
            (Some("Status"), Some("BadRequest"), Some(400)),
            "{path}: {r:?}"
        );
        let message = s["message"].as_str().unwrap_or_default();
        assert!(message.contains("without arguments"), "{path}: {message}");
        assert!(
            message.contains("/bin/sh"),
            "{path}: says what to do: {message}"
        );
    }
    // The kubelet's own refusals.
    let cases: [(&str, &[&str], u16, &str); 5] = [
        (
            "/exec/web/api/app?command=sh",
            &OFFERED,
            400,
            "you must specify at least 1 of stdin, stdout, stderr",
        ),
        (
            "/exec/web/api/app?command=sh&output=1",
            &[],
            400,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        ),
        (
            "/exec/web/api/app?command=sh&output=1",
            &["channel.k8s.io"],
            403,
            "unable to upgrade: unable to negotiate protocol: client supports [channel.k8s.io], server accepts [v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io]",
        ),
        (
            "/exec/web/nobody/app?command=sh&output=1",
            &OFFERED,
            404,
            "pod does not exist",
        ),
        (
            "/exec/web/api/sidecar?command=sh&output=1",
            &OFFERED,
            500,
            "container not found (\"sidecar\")",
        ),
    ];
    for (path, protocols, code, message) in cases {
        let r = SpdyClient::upgrade(node.addr, path, protocols)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path}: upgraded"));
        assert_eq!(r.status, code, "{path}: {r:?}");
        assert!(r.body.starts_with(message), "{path}: {r:?}");
    }
    // No ACI session was started for any of them.
    assert!(node.emu.state.exec_sessions().is_empty());
    // /attach and /portForward stay 501.
    let r = SpdyClient::upgrade(node.addr, "/attach/web/api/app?output=1", &OFFERED)
        .await
        .err()
        .unwrap_or_else(|| panic!("attach upgraded"));
    assert_eq!(r.status, 501, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_caps_concurrent_sessions() {
    let node = Node::start(ExecLimits {
        max_sessions: 1,
        ..ExecLimits::default()
    })
    .await;
    node.script(ExecScript {
        output: "$ ".into(),
        until_input: Some("exit\r".into()),
        ..Default::default()
    });
    let path = "/exec/web/api/app?command=sh&input=1&output=1&tty=1";
    let mut first = SpdyClient::upgrade(node.addr, path, &OFFERED)
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut first, true, true, false, true).await;
    let mut t = Transcript::default();
    first
        .data(
            ids.resize.unwrap_or_default(),
            br#"{"Width":80,"Height":24}"#,
            false,
        )
        .await;
    first
        .read_until(&ids, &mut t, |t| t.stdout.ends_with(b"$ "))
        .await;
    assert_eq!(node.metrics.kubelet_exec_sessions.get(), 1);

    let r = SpdyClient::upgrade(node.addr, path, &OFFERED)
        .await
        .err()
        .unwrap_or_else(|| panic!("a second session upgraded"));
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.retry_after.as_deref(), Some("5"), "{r:?}");
    assert!(r.body.contains("at most 1 kubectl exec sessions"), "{r:?}");

    // The first ends; the slot is free again.
    first
        .data(ids.stdin.unwrap_or_default(), b"exit\r", false)
        .await;
    first.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(status(&t)["status"], "Success");
    let deadline = Instant::now() + WAIT;
    while node.metrics.kubelet_exec_sessions.get() != 0 {
        assert!(Instant::now() < deadline, "the session was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=true&output=1",
        &OFFERED,
    )
    .await;
    assert!(again.is_ok(), "{:?}", again.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_exec_socket_wants_the_password_first_and_works_once() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "hello".into(),
        ..Default::default()
    });
    // A wrong password: the socket closes (1008), no terminal attached.
    let s = node
        .aci
        .exec(&node.group, "app", "/bin/sh", TerminalSize::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.web_socket_uri.starts_with("ws://127.0.0.1:"), "{s:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(s.web_socket_uri.as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::text("not-the-password"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = tokio::time::timeout(WAIT, ws.next()).await;
    match answer {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("{other:?}"),
    }
    // The URI is spent.
    assert!(
        tokio_tungstenite::connect_async(s.web_socket_uri.as_str())
            .await
            .is_err()
    );
    // The right password first: the output.
    let s = node
        .aci
        .exec(&node.group, "app", "/bin/sh", TerminalSize::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(s.web_socket_uri.as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::text(s.password.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // ACI's empty message first, then the output.
    let answer = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(
        matches!(&answer, Ok(Some(Ok(Message::Text(t)))) if t.is_empty()),
        "{answer:?}"
    );
    let answer = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(
        matches!(&answer, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "hello"),
        "{answer:?}"
    );
    let sessions = node.emu.state.exec_sessions();
    assert_eq!(
        sessions.iter().map(|s| s.attached).collect::<Vec<_>>(),
        [false, true]
    );
    // executeCommand on a container the group lacks: ARM's 404.
    let e = node
        .aci
        .exec(&node.group, "sidecar", "/bin/sh", TerminalSize::default())
        .await;
    assert_eq!(e, Err(spillway::aci::AciError::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_flow_control_gets_stdout_within_its_window_and_pings_answered() {
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "hello, world".into(),
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(node.addr, "/exec/web/api/app?command=x&output=1", &OFFERED)
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    // A SPDY/3.1 peer that announces a 5-byte stream window.
    c.send(&Frame::Settings {
        flags: 0,
        entries: vec![spillway::kubelet::spdy::Setting {
            flags: 0,
            id: spillway::kubelet::spdy::SETTINGS_INITIAL_WINDOW_SIZE,
            value: 5,
        }],
    })
    .await;
    c.send(&Frame::Ping { id: 1 }).await;
    let ids = open_streams(&mut c, false, true, false, false).await;
    let stdout = ids.stdout.unwrap_or_default();
    let mut granted = 5usize;
    let mut received = Vec::new();
    let mut pinged = false;
    let mut status_bytes = Vec::new();
    let read = async {
        loop {
            let Some(frame) = c.next_frame().await else {
                break;
            };
            match frame {
                Frame::Ping { id } => pinged |= id == 1,
                Frame::Data {
                    stream_id, data, ..
                } if stream_id == stdout => {
                    received.extend_from_slice(&data);
                    // Never more than the window granted so far.
                    assert!(received.len() <= granted, "{} > {granted}", received.len());
                    if received.len() == granted && granted < 12 {
                        granted += 5;
                        c.send(&Frame::WindowUpdate {
                            stream_id: stdout,
                            delta: 5,
                        })
                        .await;
                    }
                }
                Frame::Data {
                    stream_id, data, ..
                } if stream_id == ids.error => status_bytes.extend_from_slice(&data),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the session did not end"));
    assert_eq!(String::from_utf8_lossy(&received), "hello, world");
    assert!(pinged, "PING 1 was not answered");
    let status: serde_json::Value = serde_json::from_slice(&status_bytes).unwrap_or_default();
    assert_eq!(status["status"], "Success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_the_nodes_time_limit_ends_with_a_status() {
    let node = Node::start(ExecLimits {
        max_duration: Duration::from_millis(300),
        ..ExecLimits::default()
    })
    .await;
    // A shell that never ends by itself.
    node.script(ExecScript {
        output: "$ ".into(),
        until_input: Some("exit\r".into()),
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=sh&input=1&output=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut c, true, true, false, false).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(t.stdout, b"$ ");
    let s = status(&t);
    assert_eq!(s["reason"], "InternalError", "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("reached this node's limit"),
        "{s}"
    );
    assert_eq!(
        node.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&["timeout"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tty_the_end_of_stdin_reaches_aci_as_end_of_transmission() {
    let node = Node::start(ExecLimits::default()).await;
    // `cat` in a terminal: echoes its input, ends at Ctrl-D.
    node.script(ExecScript {
        echo: true,
        until_input: Some("\u{4}".into()),
        ..Default::default()
    });
    let mut c = SpdyClient::upgrade(
        node.addr,
        "/exec/web/api/app?command=cat&input=1&output=1&error=1",
        &OFFERED,
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let ids = open_streams(&mut c, true, true, true, false).await;
    let stdin = ids.stdin.unwrap_or_else(|| panic!("no stdin stream"));
    // `echo abc | kubectl exec -i`: the data, then FIN.
    c.data(stdin, b"abc\n", true).await;
    let mut t = Transcript::default();
    c.read_until(&ids, &mut t, |_| false).await;
    assert_eq!(t.stdout, b"abc\n\x04");
    assert_eq!(status(&t)["status"], "Success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_starts_are_paced_before_any_arm_call() {
    let node = Node::start(ExecLimits {
        starts_per_sec: 0.01,
        start_burst: 1,
        ..ExecLimits::default()
    })
    .await;
    // The first start spends the token, even for a pod that does not exist.
    let r = SpdyClient::upgrade(
        node.addr,
        "/exec/web/nobody/app?command=sh&output=1",
        &OFFERED,
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("upgraded"));
    assert_eq!(r.status, 404, "{r:?}");
    let before = node.emu.state.counters();
    let r = SpdyClient::upgrade(node.addr, "/exec/web/api/app?command=sh&output=1", &OFFERED)
        .await
        .err()
        .unwrap_or_else(|| panic!("upgraded"));
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.retry_after.is_some(), "{r:?}");
    let s: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    assert_eq!(s["reason"], "TooManyRequests", "{r:?}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("kubectl exec sessions per second"),
        "{r:?}"
    );
    // Nothing reached ARM for the refused one.
    assert_eq!(node.emu.state.counters(), before);
    assert!(node.emu.state.exec_sessions().is_empty());
}

// ---- WebSocket: the kubelet's remotecommand WebSocket server, and the API
// server's translation (v5) or upgrade proxy (older) in front of it.

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket upgrade to `ws://{addr}{path}` offering `protocols` (kube-rs
/// with `ws` offers `v4.channel.k8s.io`): the socket and the protocol the
/// server chose, or its refusal.
async fn ws_connect(
    addr: std::net::SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<(Ws, String), Refused> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("{e}"));
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols
                .join(", ")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap_or_else(|_| panic!("no answer to the WebSocket upgrade"));
    match connected {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            Ok((ws, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .to_string(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        }),
        Err(e) => panic!("WebSocket upgrade: {e}"),
    }
}

/// What a WebSocket client read, by channel, until the server closed.
#[derive(Debug, Default)]
struct Channels {
    /// (channel, payload) in order, base64 payloads decoded.
    messages: Vec<(u8, Vec<u8>)>,
    close: Option<u16>,
}

impl Channels {
    fn on(&self, channel: u8) -> Vec<u8> {
        self.messages
            .iter()
            .filter(|(c, _)| *c == channel)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        let bytes = self.on(3);
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("error channel {:?}: {e}", String::from_utf8_lossy(&bytes)))
    }
}

/// Read until the server closes (bounded).
async fn read_channels(ws: &mut Ws) -> Channels {
    use base64::Engine as _;
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut t = Channels::default();
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Binary(b) => {
                    if let Some((c, rest)) = b.split_first() {
                        t.messages.push((*c, rest.to_vec()));
                    }
                }
                Message::Text(text) => {
                    let bytes = text.as_bytes();
                    if let Some((c, rest)) = bytes.split_first() {
                        let data = base64::engine::general_purpose::STANDARD
                            .decode(rest)
                            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
                        t.messages.push((c - b'0', data));
                    }
                }
                Message::Close(frame) => t.close = frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the session did not end"));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_speaks_the_kubelets_channel_protocols() {
    let node = Node::start(ExecLimits::default()).await;
    node.script(ExecScript {
        output: "hello over WebSocket\r\n".into(),
        ..Default::default()
    });
    let path = "/exec/web/api/app?command=%2Fbin%2Fdate&output=1&error=1";

    // kube-rs: v4, binary channels.
    let (mut ws, protocol) = ws_connect(node.addr, path, &["v4.channel.k8s.io"])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(protocol, "v4.channel.k8s.io");
    let t = read_channels(&mut ws).await;
    // First the empty "streams are up" message on stdout.
    assert_eq!(t.messages.first(), Some(&(1, Vec::new())), "{t:?}");
    assert_eq!(
        String::from_utf8_lossy(&t.on(1)),
        "hello over WebSocket\r\n"
    );
    assert!(t.on(2).is_empty(), "ACI's terminal has no stderr");
    assert_eq!(
        t.status(),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    assert_eq!(t.close, Some(1000));
    let sessions = node.emu.state.exec_sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].command, "/bin/date");
    assert!(sessions[0].attached);

    // The client's order wins; base64 channels are text.
    let (mut ws, protocol) = ws_connect(
        node.addr,
        path,
        &[
            "v5.channel.k8s.io",
            "v4.base64.channel.k8s.io",
            "v4.channel.k8s.io",
        ],
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(protocol, "v4.base64.channel.k8s.io");
    let t = read_channels(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(&t.on(1)),
        "hello over WebSocket\r\n"
    );
    assert_eq!(t.status()["status"], "Success");

    // Before v4 the error channel carries the failure's text only.
    node.script(ExecScript {
        output: "partial\r\n".into(),
        end: ExecEnd::Drop,
        ..Default::default()
    });
    let (mut ws, protocol) = ws_connect(node.addr, path, &["channel.k8s.io"])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(protocol, "channel.k8s.io");
    let t = read_channels(&mut ws).await;
    assert_eq!(String::from_utf8_lossy(&t.on(1)), "partial\r\n");
    let error = String::from_utf8_lossy(&t.on(3)).to_string();
    assert!(
        error.starts_with("Internal error occurred: error executing command in container: "),
        "{error:?}"
    );
    assert_eq!(
        node.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&["success"])
            .get(),
        2
    );
    assert_eq!(
        node.metrics
            .kubelet_exec_sessions_total
            .with_label_values(&["error"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refusals_are_the_kubelets() {
    let node = Node::start(ExecLimits::default()).await;
    // A command with arguments: the same 400 as over SPDY, before the
    // upgrade and before any ARM call.
    let args = "/exec/web/api/app?command=ls&command=%2F&output=1";
    let spdy = SpdyClient::upgrade(node.addr, args, &OFFERED).await.err();
    let ws = ws_connect(node.addr, args, &["v4.channel.k8s.io"])
        .await
        .err();
    let (spdy, ws) = (
        spdy.unwrap_or_else(|| panic!("SPDY upgraded")),
        ws.unwrap_or_else(|| panic!("WebSocket upgraded")),
    );
    assert_eq!((ws.status, spdy.status), (400, 400));
    assert_eq!(ws.body, spdy.body);
    assert!(ws.body.contains("ACI cannot run"), "{}", ws.body);
    // A protocol the kubelet does not speak (v5 is the API server's): 403
    // with no body, as x/net/websocket refuses a handshake.
    for offered in [&["v9.channel.k8s.io"][..], &["v5.channel.k8s.io"][..]] {
        let r = ws_connect(node.addr, "/exec/web/api/app?command=sh&output=1", offered)
            .await
            .err()
            .unwrap_or_else(|| panic!("{offered:?} upgraded"));
        assert_eq!((r.status, r.body.as_str()), (403, ""), "{offered:?}");
    }
    // A POST upgrade to WebSocket: x/net's handshake wants GET.
    let mut tcp = TcpStream::connect(node.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(
        format!(
            "POST /exec/web/api/app?command=sh&output=1 HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
            node.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).ends_with("bad method") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nbad method"), "{answer}");
    // No ACI session was started for any of them.
    assert!(node.emu.state.exec_sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_count_against_the_nodes_cap() {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let node = Node::start(ExecLimits {
        max_sessions: 1,
        ..ExecLimits::default()
    })
    .await;
    node.script(ExecScript {
        output: "/ # ".into(),
        echo: true,
        until_input: Some("exit\r".into()),
        end: ExecEnd::Close,
    });
    let path = "/exec/web/api/app?command=%2Fbin%2Fsh&input=1&output=1&tty=1";
    let (mut first, _) = ws_connect(node.addr, path, &["v4.channel.k8s.io"])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    // Over either transport, the next one is refused before its upgrade.
    let ws = ws_connect(node.addr, path, &["v4.channel.k8s.io"])
        .await
        .err()
        .unwrap_or_else(|| panic!("a second session upgraded"));
    let spdy = SpdyClient::upgrade(node.addr, path, &OFFERED)
        .await
        .err()
        .unwrap_or_else(|| panic!("a second session upgraded"));
    for r in [&ws, &spdy] {
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.retry_after.as_deref(), Some("5"));
        assert!(r.body.contains("--kubelet-max-exec-sessions"), "{}", r.body);
    }
    first
        .send(Message::binary(
            [&[4u8][..], br#"{"Width":80,"Height":24}"#].concat(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    first
        .send(Message::binary(b"\x00exit\r".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t = read_channels(&mut first).await;
    assert_eq!(t.status()["status"], "Success");
    assert_eq!(node.emu.state.exec_sessions().len(), 1);
}

/// A test API server that knows `node`'s kubelet endpoint (TLS) as node
/// `spillway-aci` and the pod `web/api` on it.
async fn api_server_for(node: &Node) -> support::TestApiServer {
    let srv = support::TestApiServer::start().await;
    let kubelet: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "spillway-aci"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": node.addr.port()}},
        },
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    srv.insert(&kubelet);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "web"},
        "spec": {"nodeName": "spillway-aci", "containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    srv.insert(&pod);
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_through_the_api_server_is_proxied_or_translated() {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let node = Node::start_with(ExecLimits::default(), true).await;
    let srv = api_server_for(&node).await;
    let api: std::net::SocketAddr = srv
        .url()
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let exec = "/api/v1/namespaces/web/pods/api/exec";
    node.script(ExecScript {
        output: "through the API server\r\n".into(),
        ..Default::default()
    });

    // v4 (kube-rs): proxied to the kubelet endpoint as an upgrade.
    let (mut ws, protocol) = ws_connect(
        api,
        &format!("{exec}?command=%2Fbin%2Fdate&stdout=true&stderr=true"),
        &["v4.channel.k8s.io"],
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(protocol, "v4.channel.k8s.io");
    let t = read_channels(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(&t.on(1)),
        "through the API server\r\n"
    );
    assert_eq!(t.status()["status"], "Success");
    assert_eq!(srv.translated_exec_sessions(), 0, "v4 is not translated");

    // The kubelet's refusals come back as it wrote them.
    let r = ws_connect(
        api,
        &format!("{exec}?command=ls&command=%2F&stdout=true"),
        &["v4.channel.k8s.io"],
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("upgraded"));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("ACI cannot run"), "{}", r.body);
    let r = ws_connect(
        api,
        &format!("{exec}?command=sh&stdout=true"),
        &["v9.channel.k8s.io"],
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("upgraded"));
    assert_eq!((r.status, r.body.as_str()), (403, ""));

    // v5 (kubectl 1.30+): translated to SPDY; stdin's close signal
    // ([255, 0]) reaches ACI as end of input.
    node.script(ExecScript {
        echo: true,
        until_input: Some("\u{4}".into()),
        ..Default::default()
    });
    let (mut ws, protocol) = ws_connect(
        api,
        &format!("{exec}?command=cat&stdin=true&stdout=true&stderr=true"),
        &["v5.channel.k8s.io", "v4.channel.k8s.io"],
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(protocol, "v5.channel.k8s.io");
    ws.send(Message::binary(b"\x00abc\n".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::binary(vec![255, 0]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t = read_channels(&mut ws).await;
    assert_eq!(t.messages.first(), Some(&(1, Vec::new())), "{t:?}");
    assert_eq!(t.on(1), b"abc\n\x04");
    assert_eq!(
        t.status(),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    assert_eq!(t.close, Some(1000));
    assert_eq!(srv.translated_exec_sessions(), 1);

    // A kubelet refusal under translation: the upgrade to the client has
    // happened, so the kubelet's Status comes on channel 3, as it wrote it.
    let (mut ws, _) = ws_connect(
        api,
        &format!("{exec}?command=ls&command=%2F&stdout=true"),
        &["v5.channel.k8s.io"],
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}"));
    let t = read_channels(&mut ws).await;
    let status = t.status();
    assert_eq!(status["code"], 400, "{status}");
    assert_eq!(status["reason"], "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ACI cannot run")),
        "{status}"
    );
    assert_eq!(srv.translated_exec_sessions(), 2);
}

/// A shell session over `ws`: the terminal size on channel 4 first, then
/// a command and `exit` on stdin; what came back.
async fn ws_shell(ws: &mut Ws) -> Channels {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut resize = vec![4];
    resize.extend_from_slice(br#"{"Width":132,"Height":43}"#);
    ws.send(Message::binary(resize))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::binary(b"\x00echo hi\r".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A later resize is ignored (ACI takes the size at start only).
    ws.send(Message::binary(
        [&[4u8][..], br#"{"Width":10,"Height":10}"#].concat(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::binary(b"\x00exit\r".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read_channels(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tty_takes_its_size_from_the_resize_channel() {
    let node = Node::start_with(ExecLimits::default(), true).await;
    let srv = api_server_for(&node).await;
    let api: std::net::SocketAddr = srv
        .url()
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    node.script(ExecScript {
        output: "/ # ".into(),
        echo: true,
        until_input: Some("exit\r".into()),
        end: ExecEnd::Close,
    });
    // v4 proxied to the kubelet's WebSocket server, then v5 translated to
    // SPDY (the resize channel becomes the resize stream).
    let query = "command=%2Fbin%2Fsh&stdin=true&stdout=true&tty=true";
    for (protocol, translated) in [("v4.channel.k8s.io", 0), ("v5.channel.k8s.io", 1)] {
        let (mut ws, chosen) = ws_connect(
            api,
            &format!("/api/v1/namespaces/web/pods/api/exec?{query}"),
            &[protocol],
        )
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(chosen, protocol);
        let t = ws_shell(&mut ws).await;
        assert_eq!(
            String::from_utf8_lossy(&t.on(1)),
            "/ # echo hi\rexit\r",
            "{protocol}"
        );
        assert_eq!(t.status()["status"], "Success", "{protocol}");
        assert_eq!(srv.translated_exec_sessions(), translated);
    }
    let sessions = node.emu.state.exec_sessions();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in &sessions {
        assert_eq!((s.rows, s.cols, s.command.as_str()), (43, 132, "/bin/sh"));
    }
}
