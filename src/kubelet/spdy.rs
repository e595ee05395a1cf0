//! SPDY/3.1 framing, as far as the API server's streaming upgrade needs it
//! (`kubectl exec` reaches the kubelet as `Upgrade: SPDY/3.1`): every frame
//! of the protocol encoded and decoded ([`Frame`], [`Codec`]), header blocks
//! compressed with zlib and the SPDY/3 dictionary ([`DICTIONARY`]), one
//! compression context per direction for the life of the connection, and
//! flow-control windows ([`Window`]).
//!
//! The wire format is SPDY draft 3 (what SPDY/3.1 frames are; 3.1 only
//! adds session-level WINDOW_UPDATE on stream 0), as Kubernetes speaks it
//! through moby/spdystream (`spdy/read.go`, `spdy/write.go`):
//! - a control frame is `1 | version(15) = 3 | type(16) | flags(8) |
//!   length(24)` and its data; a data frame is `0 | stream id(31) |
//!   flags(8) | length(24)` and its payload;
//! - a header block is `count(32)` then `length(32) name length(32) value`
//!   pairs, names lowercase, several values of one name joined by NUL; it is
//!   deflated with a zlib stream whose preset dictionary is [`DICTIONARY`],
//!   each block ending with a sync flush so the next one continues the same
//!   stream. spdystream refuses a block that repeats a name; so does this.
//!
//! This module only frames bytes; it owns no socket and never awaits. The
//! session (streams, replies, closing) is [`super::exec`]'s.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// Control frame types (SPDY/3 §2.6).
pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;
/// FLAG_FIN on data, SYN_STREAM, SYN_REPLY and HEADERS frames: the sender
/// will send nothing more on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// RST_STREAM status codes used here (SPDY/3 §2.6.2).
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;
/// GOAWAY status: a clean end.
pub const GOAWAY_OK: u32 = 0;
/// The window every stream starts with unless SETTINGS says otherwise.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// Largest window a WINDOW_UPDATE may build (2^31 - 1).
pub const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest frame payload the 24-bit length allows.
pub const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;
/// Largest decompressed header block accepted (a guard against a block that
/// inflates without end; the API server's blocks are a few hundred bytes).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// The zlib preset dictionary of SPDY/3 header blocks (SPDY draft 3
/// §2.6.10.1; the same bytes as moby/spdystream `spdy/dictionary.go`). Its
/// Adler-32, `0xe3c6a7c2`, is the dictionary id in every compressor's zlib
/// header.
pub const DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-c\
    harset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0da\
    ccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\
    \x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\
    \x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-lengt\
    h\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-r\
    ange\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06\
    expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08\
    if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08\
    if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08\
    location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authe\
    nticate\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07refere\
    r\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07t\
    railer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-ag\
    ent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-\
    authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\
    \x06200\x20OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\
    \x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06ori\
    gin1001012012022052063003023033043053063074024054064074084094104114124134144154164175\
    02504505203\x20Non-Authoritative\x20Information204\x20No\x20Content301\x20Moved\x20Pe\
    rmanently400\x20Bad\x20Request401\x20Unauthorized403\x20Forbidden404\x20Not\x20Found5\
    00\x20Internal\x20Server\x20Error501\x20Not\x20Implemented503\x20Service\x20Unavailab\
    leJan\x20Feb\x20Mar\x20Apr\x20May\x20Jun\x20Jul\x20Aug\x20Sept\x20Oct\x20Nov\x20Dec\x20\
    00:00:00\x20Mon,\x20Tue,\x20Wed,\x20Thu,\x20Fri,\x20Sat,\x20Sun,\x20GMTchunked,text/h\
    tml,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,te\
    xt/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,u\
    tf-,*,enq=0.";

/// A stream id (31 bits).
pub type StreamId = u32;

/// Header names and values of one block, names lowercase, in order.
pub type HeaderBlock = Vec<(String, String)>;

/// The first value of `name` (compared without case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(v.as_str()))
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits.
    pub id: u32,
    pub value: u32,
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: StreamId,
        flags: u8,
        data: Vec<u8>,
    },
    SynStream {
        stream_id: StreamId,
        associated_to: StreamId,
        /// 3 bits, 0 the highest.
        priority: u8,
        flags: u8,
        headers: HeaderBlock,
    },
    SynReply {
        stream_id: StreamId,
        flags: u8,
        headers: HeaderBlock,
    },
    RstStream {
        stream_id: StreamId,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: StreamId,
        status: u32,
    },
    Headers {
        stream_id: StreamId,
        flags: u8,
        headers: HeaderBlock,
    },
    WindowUpdate {
        /// 0 for the whole session (SPDY/3.1).
        stream_id: StreamId,
        delta: u32,
    },
    /// A control frame of a type this codec does not know: SPDY says to
    /// ignore it (NOOP, CREDENTIAL).
    Unknown {
        frame_type: u16,
        flags: u8,
    },
}

impl Frame {
    /// The frame's name as the spec spells it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Unknown { .. } => "unknown",
        }
    }
}

/// Bytes that are not SPDY/3 as this codec reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY control frame of version {0}: only SPDY/3 is spoken")]
    Version(u16),
    #[error("SPDY {frame} frame: {len} bytes of payload, {need} needed")]
    Short {
        frame: &'static str,
        len: usize,
        need: usize,
    },
    #[error("SPDY {0} frame on stream 0")]
    ZeroStream(&'static str),
    #[error("SPDY {frame} frame: payload of {len} bytes is over the 24-bit length")]
    TooLong { frame: &'static str, len: usize },
    #[error("SPDY header block: {0}")]
    HeaderBlock(String),
    #[error("SPDY header compression: {0}")]
    Zlib(String),
}

/// Encodes and decodes frames of one connection: the two zlib contexts
/// (ours for the blocks we send, the peer's for the blocks we read) live as
/// long as the connection, as SPDY requires.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("deflated", &self.deflate.total_in())
            .field("inflated", &self.inflate.total_out())
            .finish()
    }
}

impl Codec {
    /// New contexts for a new connection.
    pub fn new() -> Result<Self, SpdyError> {
        // Best compression as spdystream (zlib.BestCompression); the
        // dictionary goes in before the first byte.
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|e| SpdyError::Zlib(e.to_string()))?;
        Ok(Self {
            deflate,
            inflate: Decompress::new(true),
        })
    }

    /// Append `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let id31 = |id: StreamId| id & 0x7fff_ffff;
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if *stream_id == 0 {
                    return Err(SpdyError::ZeroStream("DATA"));
                }
                check_len("DATA", data.len())?;
                out.extend_from_slice(&id31(*stream_id).to_be_bytes());
                push_flags_len(out, *flags, data.len());
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.compress(headers)?;
                let mut payload = Vec::with_capacity(10 + block.len());
                payload.extend_from_slice(&id31(*stream_id).to_be_bytes());
                payload.extend_from_slice(&id31(*associated_to).to_be_bytes());
                payload.push((priority & 0x07) << 5);
                payload.push(0); // slot
                payload.extend_from_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &payload, "SYN_STREAM")?;
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.compress(headers)?;
                let mut payload = id31(*stream_id).to_be_bytes().to_vec();
                payload.extend_from_slice(&block);
                control(out, TYPE_SYN_REPLY, *flags, &payload, "SYN_REPLY")?;
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.compress(headers)?;
                let mut payload = id31(*stream_id).to_be_bytes().to_vec();
                payload.extend_from_slice(&block);
                control(out, TYPE_HEADERS, *flags, &payload, "HEADERS")?;
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = id31(*stream_id).to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &payload, "RST_STREAM")?;
            }
            Frame::Settings { flags, entries } => {
                let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                let mut payload = count.to_be_bytes().to_vec();
                for e in entries {
                    payload.extend_from_slice(
                        &((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    payload.extend_from_slice(&e.value.to_be_bytes());
                }
                control(out, TYPE_SETTINGS, *flags, &payload, "SETTINGS")?;
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes(), "PING")?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = id31(*last_good_stream_id).to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &payload, "GOAWAY")?;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut payload = id31(*stream_id).to_be_bytes().to_vec();
                payload.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, TYPE_WINDOW_UPDATE, 0, &payload, "WINDOW_UPDATE")?;
            }
            Frame::Unknown { frame_type, flags } => {
                control(out, *frame_type, *flags, &[], "unknown")?;
            }
        }
        Ok(())
    }

    /// Take one whole frame off the front of `buf`; `None` (and `buf`
    /// untouched) while its bytes have not all arrived.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head: [u8; 8] = [
            buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
        ];
        let payload: Vec<u8> = buf.drain(..8 + len).skip(8).collect();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if stream_id == 0 {
                return Err(SpdyError::ZeroStream("DATA"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame_type = u16::from_be_bytes([head[2], head[3]]);
        let word = |name: &'static str, at: usize| -> Result<u32, SpdyError> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SpdyError::Short {
                    frame: name,
                    len: payload.len(),
                    need: at + 4,
                })
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                let stream_id = word("SYN_STREAM", 0)? & 0x7fff_ffff;
                let associated_to = word("SYN_STREAM", 4)? & 0x7fff_ffff;
                let priority = payload.get(8).map(|p| p >> 5).ok_or(SpdyError::Short {
                    frame: "SYN_STREAM",
                    len: payload.len(),
                    need: 10,
                })?;
                if stream_id == 0 {
                    return Err(SpdyError::ZeroStream("SYN_STREAM"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers: self.decompress(payload.get(10..).unwrap_or_default())?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if frame_type == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                let stream_id = word(name, 0)? & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(SpdyError::ZeroStream(name));
                }
                let headers = self.decompress(payload.get(4..).unwrap_or_default())?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => Frame::RstStream {
                stream_id: word("RST_STREAM", 0)? & 0x7fff_ffff,
                status: word("RST_STREAM", 4)?,
            },
            TYPE_SETTINGS => {
                let count = word("SETTINGS", 0)? as usize;
                let need = count.saturating_mul(8).saturating_add(4);
                if payload.len() < need {
                    return Err(SpdyError::Short {
                        frame: "SETTINGS",
                        len: payload.len(),
                        need,
                    });
                }
                let mut entries = Vec::with_capacity(count);
                for i in 0..count {
                    let flag_id = word("SETTINGS", 4 + i * 8)?;
                    entries.push(Setting {
                        flags: (flag_id >> 24) as u8,
                        id: flag_id & 0x00ff_ffff,
                        value: word("SETTINGS", 8 + i * 8)?,
                    });
                }
                Frame::Settings { flags, entries }
            }
            TYPE_PING => Frame::Ping {
                id: word("PING", 0)?,
            },
            TYPE_GOAWAY => Frame::GoAway {
                last_good_stream_id: word("GOAWAY", 0)? & 0x7fff_ffff,
                status: word("GOAWAY", 4)?,
            },
            TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: word("WINDOW_UPDATE", 0)? & 0x7fff_ffff,
                delta: word("WINDOW_UPDATE", 4)? & 0x7fff_ffff,
            },
            other => Frame::Unknown {
                frame_type: other,
                flags,
            },
        };
        Ok(Some(frame))
    }

    /// A header block, serialized and deflated on our context.
    fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let raw = serialize_block(headers)?;
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let start = self.deflate.total_in();
        loop {
            let consumed = usize::try_from(self.deflate.total_in() - start).unwrap_or(usize::MAX);
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.deflate
                .compress_vec(
                    raw.get(consumed..).unwrap_or_default(),
                    &mut out,
                    FlushCompress::Sync,
                )
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            let consumed = usize::try_from(self.deflate.total_in() - start).unwrap_or(usize::MAX);
            // A sync flush is complete when input is used up and the
            // output was not filled.
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// A header block inflated on the peer's context and parsed.
    fn decompress(&mut self, block: &[u8]) -> Result<HeaderBlock, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.inflate.total_in();
        loop {
            let consumed = usize::try_from(self.inflate.total_in() - start).unwrap_or(usize::MAX);
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = (self.inflate.total_in(), self.inflate.total_out());
            match self.inflate.decompress_vec(
                block.get(consumed..).unwrap_or_default(),
                &mut out,
                FlushDecompress::Sync,
            ) {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Zlib(
                        "the header stream ended; SPDY keeps one zlib stream per connection".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Zlib(format!("preset dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock(format!(
                    "inflates to more than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            let consumed = usize::try_from(self.inflate.total_in() - start).unwrap_or(usize::MAX);
            let progressed = before != (self.inflate.total_in(), self.inflate.total_out());
            if consumed >= block.len() && out.len() < out.capacity() {
                return parse_block(&out);
            }
            if !progressed {
                return Err(SpdyError::Zlib("the header block is truncated".into()));
            }
        }
    }
}

fn check_len(frame: &'static str, len: usize) -> Result<(), SpdyError> {
    if len > MAX_FRAME_PAYLOAD {
        return Err(SpdyError::TooLong { frame, len });
    }
    Ok(())
}

fn push_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
}

fn control(
    out: &mut Vec<u8>,
    frame_type: u16,
    flags: u8,
    payload: &[u8],
    name: &'static str,
) -> Result<(), SpdyError> {
    check_len(name, payload.len())?;
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    push_flags_len(out, flags, payload.len());
    out.extend_from_slice(payload);
    Ok(())
}

/// The uncompressed form of a header block.
pub fn serialize_block(headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
    let len32 = |s: &str| {
        u32::try_from(s.len())
            .map(u32::to_be_bytes)
            .map_err(|_| SpdyError::HeaderBlock(format!("header {s:.20}… is too long")))
    };
    let count = u32::try_from(headers.len())
        .map_err(|_| SpdyError::HeaderBlock("too many headers".into()))?;
    let mut raw = count.to_be_bytes().to_vec();
    for (name, value) in headers {
        if name.is_empty() {
            return Err(SpdyError::HeaderBlock("a header name is empty".into()));
        }
        let name = name.to_ascii_lowercase();
        raw.extend_from_slice(&len32(&name)?);
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&len32(value)?);
        raw.extend_from_slice(value.as_bytes());
    }
    Ok(raw)
}

/// Parse an uncompressed header block.
pub fn parse_block(raw: &[u8]) -> Result<HeaderBlock, SpdyError> {
    let count = raw
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| SpdyError::HeaderBlock("shorter than its count".into()))?;
    let mut at = 4usize;
    let mut headers: HeaderBlock = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let mut field = |what: &str| -> Result<String, SpdyError> {
            let len = raw
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| {
                    SpdyError::HeaderBlock(format!("ends before the length of a {what}"))
                })?;
            let bytes = raw
                .get(at + 4..(at + 4).saturating_add(len))
                .ok_or_else(|| SpdyError::HeaderBlock(format!("ends inside a {what}")))?;
            at += 4 + len;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| SpdyError::HeaderBlock(format!("a {what} is not UTF-8")))
        };
        let name = field("name")?;
        let value = field("value")?;
        if name.is_empty() {
            return Err(SpdyError::HeaderBlock("a header name is empty".into()));
        }
        // spdystream (spdy/read.go parseHeaderValueBlock): a name not in
        // lowercase is UnlowercasedHeaderName, a name twice DuplicateHeaders;
        // either fails the frame.
        if name.chars().any(|c| c.is_uppercase()) {
            return Err(SpdyError::HeaderBlock(format!(
                "header name {name:?} is not lowercase"
            )));
        }
        if headers.iter().any(|(n, _)| *n == name) {
            return Err(SpdyError::HeaderBlock(format!(
                "header {name:?} appears twice"
            )));
        }
        headers.push((name, value));
    }
    Ok(headers)
}

/// Data beyond a flow-control window, or a window grown past 2^31 - 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("flow control: {len} bytes of data with {available} left in the window")]
    Exceeded { len: usize, available: i64 },
    #[error("flow control: a WINDOW_UPDATE of {delta} grows the window past 2^31-1")]
    Overflow { delta: u32 },
}

/// One flow-control window (SPDY/3.1 §2.6.8): how many data bytes may
/// still go one way on a stream (or, with stream id 0, the session). The
/// sender spends it with each DATA frame, the receiver gives it back with
/// WINDOW_UPDATE.
///
/// Kubernetes' side (moby/spdystream) neither sends WINDOW_UPDATE nor
/// waits for it (its frame handler drops SETTINGS and WINDOW_UPDATE as
/// unhandled), so the session uses a send window only once the peer has
/// shown it does flow control; see [`super::exec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    initial: i64,
    available: i64,
}

impl Window {
    pub fn new(initial: u32) -> Self {
        Self {
            initial: i64::from(initial),
            available: i64::from(initial),
        }
    }

    /// Bytes that may be sent now (negative after a SETTINGS shrink).
    pub fn available(&self) -> i64 {
        self.available
    }

    /// A DATA frame of `len` bytes sent or received.
    pub fn consume(&mut self, len: usize) -> Result<(), FlowError> {
        let n = i64::try_from(len).unwrap_or(i64::MAX);
        if n > self.available {
            return Err(FlowError::Exceeded {
                len,
                available: self.available,
            });
        }
        self.available -= n;
        Ok(())
    }

    /// A WINDOW_UPDATE of `delta`.
    pub fn grant(&mut self, delta: u32) -> Result<(), FlowError> {
        let grown = self.available + i64::from(delta);
        if grown > MAX_WINDOW {
            return Err(FlowError::Overflow { delta });
        }
        self.available = grown;
        Ok(())
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE changed: the window moves by the
    /// difference (and may go negative).
    pub fn resize(&mut self, initial: u32) {
        let new = i64::from(initial);
        self.available += new - self.initial;
        self.initial = new;
    }

    /// For the receiving side: once half the window is used, the
    /// WINDOW_UPDATE delta that restores it in full (and restores it here).
    pub fn replenish(&mut self) -> Option<u32> {
        let used = self.initial - self.available;
        if used > 0 && used * 2 >= self.initial {
            self.available = self.initial;
            u32::try_from(used).ok()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        (b << 16) | a
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderBlock {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn codec() -> Codec {
        Codec::new().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Encode on one connection end, decode on the other.
    fn round_trip(sender: &mut Codec, receiver: &mut Codec, frame: &Frame) -> Frame {
        let mut bytes = Vec::new();
        sender
            .encode(frame, &mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        let decoded = receiver
            .decode(&mut bytes)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{} did not decode", frame.name()));
        assert!(
            bytes.is_empty(),
            "{} left {} bytes",
            frame.name(),
            bytes.len()
        );
        decoded
    }

    #[test]
    fn every_frame_type_round_trips() {
        let (mut a, mut b) = (codec(), codec());
        let frames = [
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                flags: FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "stdout"), ("x-multi", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Headers {
                stream_id: 5,
                flags: FLAG_FIN,
                headers: h(&[("a", "")]),
            },
            Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: b"hello\n".to_vec(),
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: 0,
                data: Vec::new(),
            },
            Frame::RstStream {
                stream_id: 7,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![Setting {
                    flags: 0,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 1 << 20,
                }],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: GOAWAY_OK,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 4096,
            },
        ];
        for frame in &frames {
            assert_eq!(&round_trip(&mut a, &mut b, frame), frame);
        }
        // And the other way on the same codecs: each direction has its own
        // compression context.
        for frame in &frames {
            assert_eq!(&round_trip(&mut b, &mut a, frame), frame);
        }
    }

    #[test]
    fn fixed_bytes_of_data_and_control_frames() {
        let mut c = codec();
        let mut out = Vec::new();
        c.encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: b"hi".to_vec(),
            },
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, [0, 0, 0, 1, 1, 0, 0, 2, b'h', b'i']);
        out.clear();
        c.encode(&Frame::Ping { id: 7 }, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        c.encode(
            &Frame::WindowUpdate {
                stream_id: 3,
                delta: 0x10000,
            },
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            hex("800300090000000800000003")
                .into_iter()
                .chain(hex("00010000"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        // The dictionary id of SPDY/3 header streams.
        assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
        assert_eq!(DICTIONARY.len(), 1423);
        // Our first block carries it in its zlib header: CMF 0x78, FLG with
        // FDICT, then DICTID.
        let mut c = codec();
        let block = c
            .compress(&h(&[("streamtype", "error")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(block[0], 0x78);
        assert_ne!(block[1] & 0x20, 0, "FDICT");
        assert_eq!(block[2..6], [0xe3, 0xc6, 0xa7, 0xc2]);
        // Every block ends with the sync flush marker.
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn header_blocks_made_by_another_zlib_decode() {
        // Two consecutive SYN_STREAM header blocks of one connection,
        // deflated by C zlib (Python's zlib.compressobj(9, zdict=the SPDY/3
        // dictionary) with Z_SYNC_FLUSH after each, as Go's compress/zlib
        // does for spdystream): {streamtype: error}, then {streamtype: stdout}.
        // The second only inflates with the first's context.
        let first = hex("78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
        let second = hex("c22a054ccc29f9a52500000000ffff");
        let mut c = codec();
        assert_eq!(
            c.decompress(&first).unwrap_or_else(|e| panic!("{e}")),
            h(&[("streamtype", "error")])
        );
        assert_eq!(
            c.decompress(&second).unwrap_or_else(|e| panic!("{e}")),
            h(&[("streamtype", "stdout")])
        );
        // A fresh context cannot read the second block alone.
        assert!(codec().decompress(&second).is_err());
        // And as a whole SYN_STREAM frame.
        let mut frame = hex("80030001");
        let payload_len = 10 + first.len();
        frame.extend_from_slice(&[0, 0, 0, payload_len as u8]);
        frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&first);
        let decoded = codec().decode(&mut frame).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            decoded,
            Some(Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            })
        );
    }

    #[test]
    fn a_partial_frame_waits_for_its_bytes() {
        let (mut a, mut b) = (codec(), codec());
        let mut bytes = Vec::new();
        a.encode(
            &Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: h(&[("k", "v")]),
            },
            &mut bytes,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let whole = bytes.clone();
        let mut part = whole[..whole.len() - 1].to_vec();
        assert_eq!(b.decode(&mut part), Ok(None));
        assert_eq!(part.len(), whole.len() - 1, "nothing consumed");
        part.push(whole[whole.len() - 1]);
        assert!(matches!(
            b.decode(&mut part),
            Ok(Some(Frame::SynReply { .. }))
        ));
        assert_eq!(b.decode(&mut Vec::new()), Ok(None));
    }

    #[test]
    fn malformed_input_is_refused_with_the_reason() {
        // SPDY/2 control frame.
        let mut v2 = hex("8002000600000004000000ff");
        assert_eq!(codec().decode(&mut v2), Err(SpdyError::Version(2)));
        // A PING too short.
        let mut short = hex("800300060000000200ff");
        assert!(matches!(
            codec().decode(&mut short),
            Err(SpdyError::Short { frame: "PING", .. })
        ));
        // A repeated header name.
        let raw = serialize_block(&h(&[("streamtype", "a"), ("StreamType", "b")]))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = parse_block(&raw)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("appears twice"), "{e}");
        // A name not in lowercase.
        let mut upper = 1u32.to_be_bytes().to_vec();
        for field in ["StreamType", "error"] {
            upper.extend_from_slice(&(field.len() as u32).to_be_bytes());
            upper.extend_from_slice(field.as_bytes());
        }
        let e = parse_block(&upper)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not lowercase"), "{e}");
        // A block that ends inside a value.
        let e = parse_block(&raw[..raw.len() - 1])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ends inside"), "{e}");
        // Garbage where a deflated block should be.
        let mut c = codec();
        assert!(matches!(
            c.decompress(b"not zlib at all"),
            Err(SpdyError::Zlib(_))
        ));
        // Unknown control types are skipped, not refused.
        let mut noop = hex("8003000500000000");
        assert_eq!(
            codec().decode(&mut noop),
            Ok(Some(Frame::Unknown {
                frame_type: 5,
                flags: 0
            }))
        );
    }

    #[test]
    fn windows_are_spent_granted_resized_and_replenished() {
        let mut w = Window::new(DEFAULT_WINDOW);
        w.consume(60_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.available(), 5_536);
        assert_eq!(
            w.consume(6_000),
            Err(FlowError::Exceeded {
                len: 6_000,
                available: 5_536
            })
        );
        w.grant(60_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.available(), 65_536);
        assert_eq!(
            w.grant(u32::MAX >> 1),
            Err(FlowError::Overflow {
                delta: u32::MAX >> 1
            })
        );
        // A SETTINGS shrink can leave the window negative.
        w.consume(65_536).unwrap_or_else(|e| panic!("{e}"));
        w.resize(1_024);
        assert_eq!(w.available(), 1_024 - 65_536);
        assert!(w.consume(1).is_err());

        // The receiving side sends an update once half is used.
        let mut r = Window::new(DEFAULT_WINDOW);
        r.consume(30_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.replenish(), None);
        r.consume(3_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.replenish(), Some(33_000));
        assert_eq!(r.available(), 65_536);
        assert_eq!(r.replenish(), None);
    }
}
