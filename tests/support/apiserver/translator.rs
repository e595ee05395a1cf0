//! kube-apiserver's WebSocket-to-SPDY stream translator for `pods/exec`
//! (kubernetes 1.30+, feature `TranslateStreamCloseWebsocketRequests`, on
//! by default): `staging/src/k8s.io/apiserver/pkg/util/proxy/
//! streamtranslator.go` and `websocket.go`, chosen by `ExecREST.Connect`
//! (`pkg/registry/core/pod/rest/subresources.go`) through
//! `NewTranslatingHandler` with `wsstream.IsWebSocketRequestWithStreamCloseProtocol`.
//!
//! - **Which requests**: a WebSocket upgrade whose `Sec-WebSocket-Protocol`
//!   lists `v5.channel.k8s.io` ([`wants_translation`]); every other
//!   WebSocket upgrade is proxied to the kubelet as it is (`proxy::exec`).
//! - **The client's side** (wsstream over golang.org/x/net/websocket, v5
//!   only): `GET` only (405 "bad method"), a `Sec-WebSocket-Key` (400
//!   "mismatch challenge/response"), version 13 (400 "bad protocol
//!   version"), all before the upgrade; then 101 with `v5.channel.k8s.io`,
//!   an empty message on the lowest writable channel, and channels stdin 0,
//!   stdout 1, stderr 2, error 3, resize 4 (binary, one channel byte first);
//!   `[255, 0]` closes stdin (v5's close signal).
//! - **The kubelet's side**: client-go's SPDY executor, `POST` to the
//!   kubelet's `/exec` URL with `Upgrade: SPDY/3.1` and the
//!   `X-Stream-Protocol-Version`s it offers (v5 … v1), over TLS with the API
//!   server's kubelet client certificate; streams `error`, then `stdin`,
//!   `stdout`, `stderr` (not with a tty), `resize` (with a tty) as asked.
//!   stdout and stderr go to their channels as they come.
//! - **The Status on channel 3**: `Success`; a kubelet `NonZeroExitCode` as
//!   `codeExitToStatusError` writes it; a kubelet refusal before its
//!   upgrade as client-go reads it (a JSON `Status` as it is, any other body
//!   as "unable to upgrade connection: BODY"); every other failure
//!   `NewInternalError` of the error client-go returns (so a kubelet's
//!   "Internal error occurred: X" becomes "Internal error occurred: Internal
//!   error occurred: X", as the real one reports it). Then a close frame.

use super::proxy::{ExecOptions, dial_kubelet, read_head};
use super::{ApiError, Shared};
use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use spillway::kubelet::exec_ws::{ERROR, RESIZE, STDERR, STDIN, STDOUT, is_websocket_request};
use spillway::kubelet::spdy::{Codec, FLAG_FIN, Frame, StreamId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

/// The one protocol the translator speaks to WebSocket clients.
pub const V5: &str = "v5.channel.k8s.io";
/// What client-go's SPDY executor offers the kubelet, best first.
const SPDY_OFFERED: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// v5's close signal: `[STREAM_CLOSE, channel]`.
const STREAM_CLOSE: u8 = 255;

/// `wsstream.IsWebSocketRequestWithStreamCloseProtocol`: a WebSocket
/// upgrade (`Upgrade: websocket`, `Connection` naming `upgrade`) whose
/// first `Sec-WebSocket-Protocol` line lists v5.
pub fn wants_translation(headers: &axum::http::HeaderMap) -> bool {
    is_websocket_request(headers)
        && headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
            .split(',')
            .any(|p| p.trim() == V5)
}

/// x/net/websocket's refusal: the status line and the error's text, no
/// Status object (the translator never reaches its own error writer).
fn refused(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// The WebSocket handshake for a v5 request, then the translation in a
/// task of its own.
pub fn serve(
    shared: &Arc<Shared>,
    url: reqwest::Url,
    options: ExecOptions,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    if parts.method != Method::GET {
        return Ok(refused(StatusCode::METHOD_NOT_ALLOWED, "bad method"));
    }
    let get = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let key = get(header::SEC_WEBSOCKET_KEY);
    if key.is_empty() {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "mismatch challenge/response",
        ));
    }
    if get(header::SEC_WEBSOCKET_VERSION) != "13" {
        let mut r = refused(StatusCode::BAD_REQUEST, "bad protocol version");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Ok(r);
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::new(
                500,
                "InternalError",
                "the client connection cannot be upgraded".to_string(),
            )
        })?;
    let shared = shared.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        shared.translated_exec.fetch_add(1, Ordering::SeqCst);
        translate(&shared, &url, options, socket).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    axum::http::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, V5)
        .body(Body::empty())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

/// How the SPDY side ended.
enum Outcome {
    /// The Status for channel 3.
    Status(Value),
    /// The WebSocket client went away: nothing to report.
    ClientGone,
}

fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// `apierrors.NewInternalError(err)`.
fn internal_error(err: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {err}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": err}]},
        "code": 500,
    })
}

/// `codeExitToStatusError` of client-go's `CodeExitError`.
fn exit_code(rc: u8) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: command terminated with exit code {rc}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": rc.to_string()}]},
    })
}

/// The kubelet's error stream as client-go decodes it for `protocol`
/// (v4/v5 `errorDecoderV4`, older `errorDecoderV3`), as the translator
/// reports it.
fn status_of(protocol: &str, message: &[u8]) -> Value {
    if message.is_empty() {
        return success();
    }
    let text = String::from_utf8_lossy(message).into_owned();
    if !(protocol == "v4.channel.k8s.io" || protocol == V5) {
        return internal_error(&text);
    }
    let Ok(status) = serde_json::from_slice::<Value>(message) else {
        return internal_error(&format!(
            "error stream protocol error: invalid JSON in {text:?}"
        ));
    };
    match status["status"].as_str() {
        Some("Success") => success(),
        Some("Failure") if status["reason"] == "NonZeroExitCode" => {
            let code = status
                .pointer("/details/causes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str().map(String::from));
            match code.as_deref().map(str::parse::<u8>) {
                Some(Ok(rc)) => exit_code(rc),
                Some(Err(_)) => internal_error(&format!(
                    "error stream protocol error: invalid exit code value {:?}",
                    code.unwrap_or_default()
                )),
                None => internal_error("error stream protocol error: no ExitCode cause given"),
            }
        }
        Some("Failure") => internal_error(status["message"].as_str().unwrap_or_default()),
        _ => internal_error("error stream protocol error: unknown error"),
    }
}

/// The translation after the client's upgrade: the SPDY session, then the
/// Status on channel 3 and a close frame.
async fn translate<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    url: &reqwest::Url,
    options: ExecOptions,
    mut socket: WebSocketStream<S>,
) {
    // "The connection is established": the lowest writable channel.
    let first = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    if socket.send(Message::binary(vec![first])).await.is_err() {
        return;
    }
    let status = match spdy_session(shared, url, options, &mut socket).await {
        Outcome::Status(status) => status,
        Outcome::ClientGone => return,
    };
    let mut frame = vec![ERROR];
    frame.extend_from_slice(status.to_string().as_bytes());
    if socket.send(Message::binary(frame)).await.is_err() {
        return;
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    // Upstream waits for the client to close (up to 15 minutes); bounded here.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// client-go's SPDY executor towards the kubelet, fed from and feeding the
/// WebSocket's channels.
async fn spdy_session<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    url: &reqwest::Url,
    options: ExecOptions,
    socket: &mut WebSocketStream<S>,
) -> Outcome {
    let mut tls = match dial_kubelet(shared, url).await {
        Ok(tls) => tls,
        Err(e) => return Outcome::Status(internal_error(&e.message)),
    };
    let host = url.host_str().unwrap_or_default();
    let port = url.port().unwrap_or(443);
    let mut request = format!(
        "POST {}?{} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n",
        url.path(),
        url.query().unwrap_or_default()
    );
    for p in SPDY_OFFERED {
        request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    request.push_str("\r\n");
    if let Err(e) = tls.write_all(request.as_bytes()).await {
        return Outcome::Status(internal_error(&e.to_string()));
    }
    let head = match read_head(&mut tls).await {
        Ok(head) => head,
        Err(e) => return Outcome::Status(internal_error(&e.message)),
    };
    let switched = head.status == 101
        && head
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && head
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if !switched {
        // client-go's `SpdyRoundTripper.NewConnection`: a Status body is the
        // error as it is, any other body is quoted.
        let body = head.body(&mut tls).await;
        if let Ok(status) = serde_json::from_slice::<Value>(&body)
            && status["kind"] == "Status"
        {
            return Outcome::Status(status);
        }
        let text = String::from_utf8_lossy(&body).trim().to_string();
        return Outcome::Status(internal_error(&format!(
            "unable to upgrade connection: {text}"
        )));
    }
    let protocol = head
        .header("x-stream-protocol-version")
        .unwrap_or_default()
        .to_string();
    let Ok(mut codec) = Codec::new() else {
        return Outcome::Status(internal_error("no SPDY codec"));
    };
    let mut inbuf = head.rest;
    let mut next_id: StreamId = 1;
    let mut out = Vec::new();
    let mut open = |codec: &mut Codec, stream_type: &str, fin: bool, out: &mut Vec<u8>| {
        let id = next_id;
        next_id += 2;
        let _ = codec.encode(
            &Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: if fin { FLAG_FIN } else { 0 },
                headers: vec![("streamtype".into(), stream_type.into())],
            },
            out,
        );
        id
    };
    // client-go's order; it never writes on error, stdout, stderr.
    let error = open(&mut codec, "error", true, &mut out);
    let stdin = options
        .stdin
        .then(|| open(&mut codec, "stdin", false, &mut out));
    let stdout = options
        .stdout
        .then(|| open(&mut codec, "stdout", true, &mut out));
    let stderr =
        (options.stderr && !options.tty).then(|| open(&mut codec, "stderr", true, &mut out));
    let resize = (options.tty && protocol != "v2.channel.k8s.io")
        .then(|| open(&mut codec, "resize", false, &mut out));
    if tls.write_all(&out).await.is_err() {
        return Outcome::Status(internal_error("the kubelet connection broke"));
    }
    let mut error_bytes = Vec::new();
    let mut stdin_closed = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Frames already read first.
        loop {
            let frame = match codec.decode(&mut inbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Outcome::Status(internal_error(&e.to_string())),
            };
            match frame {
                Frame::Data {
                    stream_id, data, ..
                } => {
                    let channel = if Some(stream_id) == stdout {
                        STDOUT
                    } else if Some(stream_id) == stderr {
                        STDERR
                    } else {
                        if stream_id == error {
                            error_bytes.extend_from_slice(&data);
                        }
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let mut frame = vec![channel];
                    frame.extend_from_slice(&data);
                    if socket.send(Message::binary(frame)).await.is_err() {
                        return Outcome::ClientGone;
                    }
                }
                Frame::Ping { id } if id % 2 == 0 => {
                    let mut bytes = Vec::new();
                    if codec.encode(&Frame::Ping { id }, &mut bytes).is_ok() {
                        let _ = tls.write_all(&bytes).await;
                    }
                }
                Frame::GoAway { .. } => return Outcome::Status(status_of(&protocol, &error_bytes)),
                _ => {}
            }
        }
        tokio::select! {
            n = tls.read(&mut chunk) => match n {
                Ok(0) | Err(_) => return Outcome::Status(status_of(&protocol, &error_bytes)),
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            },
            message = socket.next() => {
                let data = match message {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Outcome::ClientGone,
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, payload)) = data.split_first() else {
                    continue;
                };
                let (stream_id, flags, payload) = match channel {
                    STREAM_CLOSE if payload == [STDIN] && !stdin_closed => {
                        stdin_closed = true;
                        (stdin, FLAG_FIN, Vec::new())
                    }
                    STDIN if !stdin_closed => (stdin, 0, payload.to_vec()),
                    RESIZE => (resize, 0, payload.to_vec()),
                    _ => continue,
                };
                let Some(stream_id) = stream_id else { continue };
                let mut bytes = Vec::new();
                if codec
                    .encode(&Frame::Data { stream_id, flags, data: payload }, &mut bytes)
                    .is_err()
                    || tls.write_all(&bytes).await.is_err()
                {
                    return Outcome::Status(status_of(&protocol, &error_bytes));
                }
            }
        }
    }
}
