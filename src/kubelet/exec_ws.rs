//! `kubectl exec` over WebSocket: the second transport of the exec bridge
//! ([`super::exec`]), for clients that speak WebSocket only (kube-rs with
//! `ws`, the Python and JavaScript clients) and for an API server that
//! proxies a WebSocket upgrade it does not translate.
//!
//! **What the kubelet serves** (kubernetes
//! `pkg/kubelet/cri/streaming/remotecommand/websocket.go`,
//! `createWebSocketStreams`; apimachinery `util/httpstream/wsstream/conn.go`;
//! golang.org/x/net `websocket/hybi.go` and `server.go`, which do the
//! handshake):
//! - a request is WebSocket when `Upgrade` is `websocket` (any case) and
//!   `Connection` names `upgrade` (`wsstream.IsWebSocketRequest`); the query,
//!   its rules and the session bounds are the SPDY path's;
//! - the handshake: `GET` only (else 405 "bad method"), a
//!   `Sec-WebSocket-Key` (else 400 "mismatch challenge/response"),
//!   `Sec-WebSocket-Version: 13` (else 400 "bad protocol version" with
//!   `Sec-WebSocket-Version: 13`); the protocol is the first of the client's
//!   `Sec-WebSocket-Protocol` list (none: `""`) among [`PROTOCOLS`], else
//!   403 with an empty body. `v5.channel.k8s.io` is not among them: the
//!   kubelet speaks v1–v4 over WebSocket; v5 is spoken by kube-apiserver's
//!   stream translator, which reaches the kubelet over SPDY;
//! - channels, one byte before each message's payload: stdin 0, stdout 1,
//!   stderr 2, error 3, resize 4 ([`STDIN`] … [`RESIZE`]); with
//!   `base64.channel.k8s.io` the byte is the channel's digit (`'0' + n`) and
//!   the payload is standard base64, in text messages ([`encode`],
//!   [`decode`]); empty messages and unknown channels are skipped, data on a
//!   channel the session does not read is dropped;
//! - right after the upgrade an empty message on the lowest writable
//!   channel (stdout, else stderr, else error) tells the client the streams
//!   are there;
//! - the result on the error channel: v4 protocols the JSON `metav1.Status`,
//!   the others the failure's text only (nothing on success); then a close
//!   frame (1000).
//!
//! Stdin has no end here but the socket's: v1–v4 have no half-close.

use super::exec::{End, ExecError, Input, StreamOptions, Transport, status_body};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The subprotocols the kubelet's WebSocket exec server speaks
/// (`createWebSocketStreams`): `""` is a client that asks for none.
pub const PROTOCOLS: [&str; 5] = [
    "",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];
/// The WebSocket version the handshake accepts (RFC 6455).
pub const WEBSOCKET_VERSION: &str = "13";

/// Channel numbers (apimachinery `util/remotecommand/constants.go`).
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// How a protocol puts a channel's bytes into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelCodec {
    /// `[channel, payload…]` in binary messages.
    Binary,
    /// `'0' + channel` then the payload in standard base64, in text messages.
    Base64,
}

impl ChannelCodec {
    /// The codec of a negotiated protocol.
    pub fn of(protocol: &str) -> Self {
        if protocol.contains("base64.") {
            ChannelCodec::Base64
        } else {
            ChannelCodec::Binary
        }
    }
}

/// A channel message that is not of the negotiated protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("channel {channel}: the payload is not base64: {reason}")]
pub struct FrameError {
    pub channel: u8,
    pub reason: String,
}

/// The message carrying `data` on `channel`.
pub fn encode(codec: ChannelCodec, channel: u8, data: &[u8]) -> Message {
    match codec {
        ChannelCodec::Binary => {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::binary(frame)
        }
        ChannelCodec::Base64 => {
            let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
            text.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        }
    }
}

/// The channel and bytes of a received message's payload; `None` for an
/// empty message (which wsstream skips).
pub fn decode(codec: ChannelCodec, payload: &[u8]) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let Some((&first, rest)) = payload.split_first() else {
        return Ok(None);
    };
    match codec {
        ChannelCodec::Binary => Ok(Some((first, rest.to_vec()))),
        ChannelCodec::Base64 => {
            let channel = first.wrapping_sub(b'0');
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map(|data| Some((channel, data)))
                .map_err(|e| FrameError {
                    channel,
                    reason: e.to_string(),
                })
        }
    }
}

/// `Upgrade: websocket` and a `Connection` that names `upgrade`
/// (`wsstream.IsWebSocketRequest`: the regexp `(^|.*,\s*)upgrade($|\s*,)`
/// on the lowercased value).
pub fn is_websocket_request(headers: &HeaderMap) -> bool {
    let get = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    get(header::UPGRADE) == "websocket"
        && get(header::CONNECTION)
            .split(',')
            .any(|token| token.trim() == "upgrade")
}

/// An accepted handshake: the protocol and the `Sec-WebSocket-Accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol: &'static str,
    pub accept: String,
}

/// The handshake as golang.org/x/net/websocket reads it, then the
/// protocol as wsstream picks it (the client's order).
pub fn handshake(method: &Method, headers: &HeaderMap) -> Result<Handshake, ExecError> {
    if method != Method::GET {
        return Err(ExecError::WsMethod);
    }
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let key = get("sec-websocket-key");
    if key.is_empty() {
        return Err(ExecError::WsKey);
    }
    if get("sec-websocket-version") != WEBSOCKET_VERSION {
        return Err(ExecError::WsVersion);
    }
    // Only the first header line counts (Go's `Header.Get`).
    let offered = get("sec-websocket-protocol");
    let client: Vec<String> = if offered.is_empty() {
        vec![String::new()]
    } else {
        offered.split(',').map(|p| p.trim().to_string()).collect()
    };
    let protocol = client
        .iter()
        .find_map(|c| PROTOCOLS.iter().find(|p| **p == c.as_str()).copied())
        .ok_or(ExecError::WsProtocol { client })?;
    Ok(Handshake {
        protocol,
        accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    })
}

/// The 101's headers: x/net writes `Sec-WebSocket-Protocol` whenever a
/// protocol was chosen, with an empty value for `""`.
pub fn switch_headers(handshake: &Handshake, headers: &mut HeaderMap) {
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&handshake.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(handshake.protocol),
    );
}

/// One upgraded WebSocket connection of a session.
pub(super) struct WsConn<S> {
    socket: WebSocketStream<S>,
    codec: ChannelCodec,
    /// A v4 protocol: the status as JSON.
    v4: bool,
    options: StreamOptions,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    pub(super) fn new(socket: WebSocketStream<S>, protocol: &str, options: StreamOptions) -> Self {
        Self {
            socket,
            codec: ChannelCodec::of(protocol),
            v4: protocol.starts_with("v4."),
            options,
        }
    }

    async fn send(&mut self, channel: u8, data: &[u8]) -> bool {
        self.socket
            .send(encode(self.codec, channel, data))
            .await
            .is_ok()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for WsConn<S> {
    type Event = Message;

    async fn open(&mut self) -> bool {
        let channel = if self.options.stdout {
            STDOUT
        } else if self.options.stderr {
            STDERR
        } else {
            ERROR
        };
        self.send(channel, &[]).await
    }

    async fn recv(&mut self) -> Option<Message> {
        match self.socket.next().await {
            Some(Ok(message)) => Some(message),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "kubelet exec: the WebSocket broke");
                None
            }
            None => None,
        }
    }

    async fn input(&mut self, message: Message) -> Input {
        let payload = match &message {
            Message::Binary(b) => &b[..],
            Message::Text(t) => t.as_bytes(),
            Message::Close(_) => return Input::Gone,
            _ => return Input::Nothing,
        };
        match decode(self.codec, payload) {
            Ok(Some((STDIN, data))) if self.options.stdin => Input::Stdin { data, end: false },
            Ok(Some((RESIZE, data))) => Input::Resize(data),
            Ok(_) => Input::Nothing,
            Err(e) => {
                tracing::debug!(error = %e, "kubelet exec: a message dropped");
                Input::Nothing
            }
        }
    }

    fn ready(&self) -> bool {
        true
    }

    fn resizes(&self) -> bool {
        self.options.tty
    }

    async fn flush_stdout(&mut self, pending: &mut Vec<u8>) -> bool {
        if !self.options.stdout {
            pending.clear();
            return true;
        }
        while !pending.is_empty() {
            let n = pending.len().min(32 * 1024);
            let data: Vec<u8> = pending.drain(..n).collect();
            if !self.send(STDOUT, &data).await {
                return false;
            }
        }
        true
    }

    async fn finish(&mut self, end: &End, failure: Option<String>) {
        if matches!(end, End::ClientGone) {
            return;
        }
        let body = status_body(self.v4, failure.as_deref());
        if !body.is_empty() {
            self.send(ERROR, &body).await;
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if self.socket.send(Message::Close(Some(close))).await.is_err() {
            return;
        }
        // The client's answer to the close, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_channels_prefix_the_channel_byte() {
        let m = encode(ChannelCodec::Binary, STDOUT, b"hi");
        assert_eq!(m, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(
            decode(ChannelCodec::Binary, &[0, b'l', b's', b'\n']),
            Ok(Some((STDIN, b"ls\n".to_vec())))
        );
        // The "connection is up" message: the channel byte alone.
        assert_eq!(
            encode(ChannelCodec::Binary, ERROR, b""),
            Message::binary(vec![3])
        );
        assert_eq!(
            decode(ChannelCodec::Binary, &[RESIZE]),
            Ok(Some((RESIZE, vec![])))
        );
        assert_eq!(decode(ChannelCodec::Binary, &[]), Ok(None));
    }

    #[test]
    fn base64_channels_are_a_digit_and_standard_base64_text() {
        // wsstream's own example: "foo\n" on stdin is "0Zm9vCg==".
        assert_eq!(
            decode(ChannelCodec::Base64, b"0Zm9vCg=="),
            Ok(Some((STDIN, b"foo\n".to_vec())))
        );
        assert_eq!(
            encode(ChannelCodec::Base64, STDOUT, b"\n"),
            Message::text("1Cg==")
        );
        assert_eq!(encode(ChannelCodec::Base64, ERROR, b""), Message::text("3"));
        let e = decode(ChannelCodec::Base64, b"0not base64!");
        assert!(matches!(e, Err(FrameError { channel: 0, .. })), "{e:?}");
    }

    #[test]
    fn the_protocol_picks_the_codec() {
        assert_eq!(ChannelCodec::of("v4.channel.k8s.io"), ChannelCodec::Binary);
        assert_eq!(ChannelCodec::of(""), ChannelCodec::Binary);
        assert_eq!(
            ChannelCodec::of("v4.base64.channel.k8s.io"),
            ChannelCodec::Base64
        );
        assert_eq!(
            ChannelCodec::of("base64.channel.k8s.io"),
            ChannelCodec::Base64
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn a_websocket_request_is_told_by_its_upgrade_headers() {
        assert!(is_websocket_request(&headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ])));
        assert!(!is_websocket_request(&headers(&[
            ("upgrade", "SPDY/3.1"),
            ("connection", "Upgrade"),
        ])));
        assert!(!is_websocket_request(&headers(&[("upgrade", "websocket")])));
        assert!(!is_websocket_request(&headers(&[
            ("upgrade", "websocket"),
            ("connection", "upgraded"),
        ])));
    }

    #[test]
    fn the_handshake_is_read_as_x_net_websocket_reads_it() {
        let base = [
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            headers(&all)
        };
        // RFC 6455's example key and answer.
        let h = handshake(
            &Method::GET,
            &with(&[(
                "sec-websocket-protocol",
                "v5.channel.k8s.io, v4.channel.k8s.io,channel.k8s.io",
            )]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.protocol, "v4.channel.k8s.io");
        assert_eq!(h.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // No protocol asked: "" (binary, v1 status).
        let h = handshake(&Method::GET, &with(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.protocol, "");
        assert!(matches!(
            handshake(&Method::POST, &with(&[])),
            Err(ExecError::WsMethod)
        ));
        assert!(matches!(
            handshake(&Method::GET, &headers(&base[1..])),
            Err(ExecError::WsKey)
        ));
        assert!(matches!(
            handshake(&Method::GET, &headers(&base[..1])),
            Err(ExecError::WsVersion)
        ));
        assert!(matches!(
            handshake(
                &Method::GET,
                &with(&[("sec-websocket-protocol", "v5.channel.k8s.io")])
            ),
            Err(ExecError::WsProtocol { .. })
        ));
    }
}
