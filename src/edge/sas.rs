//! Shared access signatures for the IoT Hub service API.
//!
//! Owns: parsing the service connection string
//! (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`), signing tokens
//! (`SharedAccessSignature sr=…&sig=…&se=…&skn=…`), parsing tokens (the
//! emulator verifies what clients send with the same wire format), and a
//! token cache that renews before expiry. Time is always passed in as unix
//! seconds; nothing here reads a clock.
//!
//! Must not: print, log or `Debug`-format a key. Errors name the part of the
//! connection string that is wrong, never its value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// What `application/x-www-form-urlencoded` (and .NET's `WebUtility.UrlEncode`,
/// Python's `quote_plus`) leave alone: letters, digits, `-`, `_`, `.`, `~`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// URL-encode a token component the way the Azure SDKs do (space → `+`).
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string().replace("%20", "+")
}

/// Inverse of [`url_encode`]; `None` if the result is not UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Why a connection string or token was refused. Never contains a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("connection string: missing {0}")]
    Missing(&'static str),
    /// The 1-based position of a part without `=` (its text may be a key).
    #[error("connection string: part {0} is not NAME=VALUE")]
    Malformed(usize),
    #[error("connection string: {0} is given twice")]
    Duplicate(String),
    /// An unknown `NAME=` at a 1-based position; the name is not shown (a
    /// pasted key can look like one), only the known name it resembles.
    #[error(
        "connection string: part {position} is not HostName, SharedAccessKeyName or SharedAccessKey{}",
        did_you_mean(*.resembles)
    )]
    UnknownPart {
        position: usize,
        resembles: Option<&'static str>,
    },
    #[error(
        "connection string: this is a device or module connection string ({0}); the IoT Hub service API needs a hub-level shared access policy such as iothubowner"
    )]
    NotAServiceString(String),
    #[error("connection string: SharedAccessKey is not valid base64")]
    KeyNotBase64,
    #[error("connection string: SharedAccessKey is empty")]
    EmptyKey,
    #[error("SAS token: {0}")]
    BadToken(&'static str),
}

fn did_you_mean(name: Option<&'static str>) -> String {
    name.map(|n| format!(" (did you mean {n}? names are case-sensitive)"))
        .unwrap_or_default()
}

const KNOWN_PARTS: [&str; 3] = ["HostName", "SharedAccessKeyName", "SharedAccessKey"];

/// A shared access key (decoded bytes). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedAccessKey(Vec<u8>);

impl SharedAccessKey {
    /// Decode a base64 key as found in a connection string.
    pub fn from_base64(b64: &str) -> Result<Self, SasError> {
        let bytes = BASE64
            .decode(b64.trim())
            .map_err(|_| SasError::KeyNotBase64)?;
        if bytes.is_empty() {
            return Err(SasError::EmptyKey);
        }
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key in base64, for printing a connection string the user asked for.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }

    /// base64(HMAC-SHA256(key, message)).
    pub fn sign(&self, message: &str) -> String {
        BASE64.encode(self.mac(message).finalize().into_bytes())
    }

    /// Constant-time check of a base64 signature.
    pub fn verify(&self, message: &str, signature_b64: &str) -> bool {
        match BASE64.decode(signature_b64) {
            Ok(sig) => self.mac(message).verify_slice(&sig).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail here.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(message.as_bytes());
        mac
    }
}

impl fmt::Debug for SharedAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedAccessKey(<redacted>)")
    }
}

/// A parsed service connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `myhub.azure-devices.net`: the `sr` of every token and the default endpoint.
    pub host_name: String,
    /// The shared access policy, e.g. `iothubowner`.
    pub key_name: String,
    pub key: SharedAccessKey,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("key", &self.key)
            .finish()
    }
}

impl ConnectionString {
    /// Parse `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (any order,
    /// surrounding whitespace and a trailing `;` tolerated).
    pub fn parse(s: &str) -> Result<Self, SasError> {
        let (mut host, mut name, mut key) = (None, None, None);
        let parts = s.trim().split(';').map(str::trim).filter(|p| !p.is_empty());
        for (index, part) in parts.enumerate() {
            let Some((k, v)) = part.split_once('=') else {
                // Never echo a part: it might be a key.
                return Err(SasError::Malformed(index + 1));
            };
            let slot = match k.trim() {
                "HostName" => &mut host,
                "SharedAccessKeyName" => &mut name,
                "SharedAccessKey" => &mut key,
                other @ ("DeviceId" | "ModuleId" | "GatewayHostName") => {
                    return Err(SasError::NotAServiceString(other.to_string()));
                }
                other => {
                    return Err(SasError::UnknownPart {
                        position: index + 1,
                        resembles: KNOWN_PARTS
                            .into_iter()
                            .find(|k| k.eq_ignore_ascii_case(other)),
                    });
                }
            };
            if slot.is_some() {
                return Err(SasError::Duplicate(k.trim().to_string()));
            }
            *slot = Some(v.trim().to_string());
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or(SasError::Missing("HostName"))?;
        let key_name = name
            .filter(|n| !n.is_empty())
            .ok_or(SasError::Missing("SharedAccessKeyName"))?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(SasError::Missing("SharedAccessKey"))?;
        Ok(Self {
            host_name,
            key_name,
            key: SharedAccessKey::from_base64(&key)?,
        })
    }

    /// The connection string text (contains the key: for printing on request only).
    pub fn to_connection_string(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name,
            self.key_name,
            self.key.to_base64()
        )
    }

    /// A token for the whole hub (`sr` = the host name) expiring at `expiry_unix`.
    pub fn token(&self, expiry_unix: u64) -> String {
        sign_token(&self.host_name, &self.key_name, &self.key, expiry_unix)
    }
}

/// The string a SAS token signs: `url-encoded lowercase resource URI` + `\n` + expiry.
pub fn string_to_sign(resource_uri: &str, expiry_unix: u64) -> String {
    format!(
        "{}\n{expiry_unix}",
        url_encode(&resource_uri.to_lowercase())
    )
}

/// `SharedAccessSignature sr=…&sig=…&se=…&skn=…` for `resource_uri`.
pub fn sign_token(
    resource_uri: &str,
    policy: &str,
    key: &SharedAccessKey,
    expiry_unix: u64,
) -> String {
    let sr = url_encode(&resource_uri.to_lowercase());
    let sig = key.sign(&string_to_sign(resource_uri, expiry_unix));
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix}&skn={}",
        url_encode(&sig),
        url_encode(policy)
    )
}

/// The fields of a SAS token, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// Decoded resource URI (as sent; compare lowercased).
    pub resource_uri: String,
    /// Decoded base64 signature.
    pub signature: String,
    pub expiry_unix: u64,
    /// The policy name; `None` for device-scoped tokens.
    pub key_name: Option<String>,
}

impl SasToken {
    /// Parse an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, SasError> {
        let rest =
            header
                .trim()
                .strip_prefix("SharedAccessSignature ")
                .ok_or(SasError::BadToken(
                    "does not start with \"SharedAccessSignature \"",
                ))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in rest.split('&') {
            let (k, v) = field
                .split_once('=')
                .ok_or(SasError::BadToken("a field is not NAME=VALUE"))?;
            let v = url_decode(v).ok_or(SasError::BadToken("a field is not valid UTF-8"))?;
            let slot = match k {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => return Err(SasError::BadToken("unknown field")),
            };
            if slot.replace(v).is_some() {
                return Err(SasError::BadToken("a field is given twice"));
            }
        }
        let se = se.ok_or(SasError::BadToken("no se"))?;
        Ok(Self {
            resource_uri: sr.ok_or(SasError::BadToken("no sr"))?,
            signature: sig.ok_or(SasError::BadToken("no sig"))?,
            expiry_unix: se
                .parse()
                .map_err(|_| SasError::BadToken("se is not a number"))?,
            key_name: skn,
        })
    }

    /// Does `key` produce this token's signature?
    pub fn signed_by(&self, key: &SharedAccessKey) -> bool {
        key.verify(
            &string_to_sign(&self.resource_uri, self.expiry_unix),
            &self.signature,
        )
    }
}

/// Issues hub tokens and reuses one until `renew_fraction` of its lifetime
/// has passed, so a token is never sent close to its expiry.
#[derive(Debug, Clone)]
pub struct TokenCache {
    conn: ConnectionString,
    ttl: Duration,
    renew_fraction: f64,
    cached: Option<CachedToken>,
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    renew_after_unix: u64,
}

impl fmt::Debug for CachedToken {
    // A token is a credential for its lifetime: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"<redacted>")
            .field("renew_after_unix", &self.renew_after_unix)
            .finish()
    }
}

impl TokenCache {
    /// Tokens valid for `ttl` (at least 1 s), renewed after 80% of it.
    pub fn new(conn: ConnectionString, ttl: Duration) -> Self {
        Self {
            conn,
            ttl: ttl.max(Duration::from_secs(1)),
            renew_fraction: 0.8,
            cached: None,
        }
    }

    /// Renew after this fraction of the lifetime (clamped to 0.1..=0.95).
    pub fn with_renew_fraction(mut self, fraction: f64) -> Self {
        self.renew_fraction = if fraction.is_finite() {
            fraction.clamp(0.1, 0.95)
        } else {
            0.8
        };
        self
    }

    pub fn connection(&self) -> &ConnectionString {
        &self.conn
    }

    /// The token to send at `now_unix`.
    pub fn token(&mut self, now_unix: u64) -> String {
        if let Some(c) = &self.cached
            && now_unix < c.renew_after_unix
        {
            return c.token.clone();
        }
        let ttl = self.ttl.as_secs();
        let token = self.conn.token(now_unix + ttl);
        let renew_after_unix = now_unix + ((ttl as f64) * self.renew_fraction) as u64;
        self.cached = Some(CachedToken {
            token: token.clone(),
            renew_after_unix,
        });
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The key is base64 of b"spillway-test-key-32-bytes-long!". Vectors computed
    // independently with Python:
    //   key = base64.b64decode('c3BpbGx3YXktdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=')
    //   sr = urllib.parse.quote_plus('myhub.azure-devices.net')
    //   base64.b64encode(hmac.new(key, (sr + '\n1700000000').encode(), hashlib.sha256).digest())
    const KEY: &str = "c3BpbGx3YXktdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=";

    fn conn() -> ConnectionString {
        ConnectionString::parse(&format!(
            "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .expect("valid")
    }

    #[test]
    fn known_vector_for_the_hub_host() {
        assert_eq!(
            conn().token(1_700_000_000),
            "SharedAccessSignature sr=myhub.azure-devices.net\
             &sig=jE7oIV11Ik3SGaHIdl9rT1Izogt65MUQpLUhpn9NUdo%3D&se=1700000000&skn=iothubowner"
        );
    }

    #[test]
    fn known_vector_lowercases_and_form_encodes_the_resource() {
        // quote_plus('myhub.azure-devices.net/devices/dev 1') → '…%2Fdevices%2Fdev+1'
        let key = SharedAccessKey::from_base64(KEY).expect("key");
        assert_eq!(
            string_to_sign("MyHub.azure-devices.net/devices/Dev 1", 1_700_000_000),
            "myhub.azure-devices.net%2Fdevices%2Fdev+1\n1700000000"
        );
        assert_eq!(
            key.sign(&string_to_sign(
                "MyHub.azure-devices.net/devices/Dev 1",
                1_700_000_000
            )),
            "b1ytykA7IHsQyrBb46TaTP8Qqp6onNbbj5cAXNNZUj4="
        );
    }

    #[test]
    fn a_token_parses_back_and_verifies() {
        let c = conn();
        let t = SasToken::parse(&c.token(42)).expect("parses");
        assert_eq!(t.resource_uri, "myhub.azure-devices.net");
        assert_eq!(t.expiry_unix, 42);
        assert_eq!(t.key_name.as_deref(), Some("iothubowner"));
        assert!(t.signed_by(&c.key));
        let other = SharedAccessKey::from_bytes(b"another key".to_vec());
        assert!(!t.signed_by(&other));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "Bearer abc",
            "SharedAccessSignature sr=a&sig=b",
            "SharedAccessSignature sr=a&sig=b&se=soon&skn=x",
            "SharedAccessSignature sr=a&sig=b&se=1&se=2",
            "SharedAccessSignature sr=a&sig=b&se=1&what=2",
        ] {
            assert!(SasToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_string_errors_name_the_part_never_the_key() {
        let cases = [
            (
                "SharedAccessKeyName=p;SharedAccessKey=YQ==",
                SasError::Missing("HostName"),
            ),
            (
                "HostName=h;SharedAccessKey=YQ==",
                SasError::Missing("SharedAccessKeyName"),
            ),
            (
                "HostName=h;SharedAccessKeyName=p",
                SasError::Missing("SharedAccessKey"),
            ),
            (
                "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not*base64",
                SasError::KeyNotBase64,
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=YQ==",
                SasError::NotAServiceString("DeviceId".into()),
            ),
            (
                "HostName=h;HostName=i;SharedAccessKeyName=p;SharedAccessKey=YQ==",
                SasError::Duplicate("HostName".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(ConnectionString::parse(text), Err(want), "{text}");
        }
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        let err = ConnectionString::parse(&format!("HostName=h;{secret}")).expect_err("malformed");
        assert_eq!(
            err,
            SasError::UnknownPart {
                position: 2,
                resembles: None
            },
            "a pasted key splits at its '=' padding"
        );
        assert!(!err.to_string().contains(secret), "{err}");
        let short = ConnectionString::parse("HostName=h;abc").expect_err("malformed");
        assert_eq!(short, SasError::Malformed(2));
        assert!(!short.to_string().contains("abc"), "{short}");
        let typo = ConnectionString::parse("Hostname=h").expect_err("case");
        assert!(typo.to_string().contains("did you mean HostName"), "{typo}");
        let parsed = ConnectionString::parse(&format!(
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey={secret}"
        ))
        .expect("valid");
        assert!(!format!("{parsed:?}").contains(secret));
        assert_eq!(
            parsed.to_connection_string(),
            format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={secret}")
        );
    }

    #[test]
    fn parts_in_any_order_with_a_trailing_semicolon() {
        let c = ConnectionString::parse(&format!(
            " SharedAccessKey={KEY}; HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner; "
        ))
        .expect("valid");
        assert_eq!(c, conn());
    }

    #[test]
    fn the_cache_reuses_a_token_until_80_percent_of_its_lifetime() {
        let mut cache = TokenCache::new(conn(), Duration::from_secs(100));
        let first = cache.token(1_000);
        assert!(first.contains("se=1100"));
        assert_eq!(cache.token(1_079), first, "reused before 80%");
        let renewed = cache.token(1_080);
        assert_ne!(renewed, first);
        assert!(renewed.contains("se=1180"));
        assert_eq!(cache.token(1_100), renewed);
        let shown = format!("{cache:?}");
        assert!(!shown.contains(&renewed) && !shown.contains(KEY), "{shown}");
    }
}
