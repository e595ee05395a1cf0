//! Small value types shared by every module: virtual/real timestamps, Go-style
//! durations and Kubernetes resource quantities.
//!
//! Everything here is pure parsing and arithmetic; nothing reads a clock.

use std::fmt;

/// A point in time, in milliseconds since the Unix epoch (or since the start of
/// a simulation). The engine never reads a clock: callers pass `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    pub const fn from_secs(s: i64) -> Self {
        Self(s * 1000)
    }
    pub const fn millis(self) -> i64 {
        self.0
    }
    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.0 as i64))
    }
    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
    /// Current wall-clock time. Only the edges (extender, autoscaler) call this.
    pub fn now_wall() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self(ms)
    }
    /// RFC 3339 rendering in UTC (seconds precision), for humans and JSON.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
    /// Parse an RFC 3339 timestamp such as `2024-05-14T09:21:37Z` or with an
    /// offset (`+02:00`) and optional fractional seconds.
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        let err = || format!("invalid RFC 3339 timestamp {s:?}");
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
            s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(err)
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return Err(err());
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let frac = &s[start..i];
            if frac.is_empty() {
                return Err(err());
            }
            let padded: String = frac.chars().chain("000".chars()).take(3).collect();
            millis = padded.parse::<i64>().map_err(|_| err())?;
        }
        let offset_secs = match s.get(i..) {
            Some("Z") | Some("z") => 0,
            Some(rest) if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                let sign = if rest.starts_with('-') { -1 } else { 1 };
                sign * (oh * 3600 + om * 60)
            }
            _ => return Err(err()),
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
        Ok(Self(secs * 1000 + millis))
    }
}

// Howard Hinnant's civil calendar algorithms (public domain arithmetic).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A non-negative span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(s * 1000)
    }
    pub const fn from_mins(m: u64) -> Self {
        Self(m * 60_000)
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
    pub fn saturating_sub(self, o: Duration) -> Duration {
        Duration(self.0.saturating_sub(o.0))
    }

    /// Parse a Go/Kubernetes-style duration: `30s`, `5m`, `1h30m`, `250ms`, `0`.
    /// Negative values and bare numbers other than `0` are rejected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        if t.starts_with('-') {
            return Err(format!("negative duration {t:?} is not allowed"));
        }
        if t == "0" {
            return Ok(Duration::ZERO);
        }
        let t = t.strip_prefix('+').unwrap_or(t);
        let mut total: f64 = 0.0;
        let mut rest = t;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration {t:?} is missing a unit (e.g. 30s, 5m, 1h)"))?;
            if num_end == 0 {
                return Err(format!("invalid duration {t:?}"));
            }
            let value: f64 = rest[..num_end]
                .parse()
                .map_err(|_| format!("invalid number in duration {t:?}"))?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let factor_ms = match &rest[..unit_end] {
                "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                u => {
                    return Err(format!(
                        "unknown unit {u:?} in duration {t:?} (use ms, s, m, h)"
                    ));
                }
            };
            total += value * factor_ms;
            rest = &rest[unit_end..];
        }
        if !total.is_finite() || total > 1e15 {
            return Err(format!("duration {t:?} is too large"));
        }
        Ok(Duration(total.round() as u64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return write!(f, "0s");
        }
        if !ms.is_multiple_of(1000) {
            return if ms < 1000 {
                write!(f, "{ms}ms")
            } else {
                write!(f, "{:.1}s", ms as f64 / 1000.0)
            };
        }
        let s = ms / 1000;
        let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sec > 0 || (h == 0 && m == 0) {
            write!(f, "{sec}s")?;
        }
        Ok(())
    }
}

/// Parse a Kubernetes quantity and return its value scaled by `scale` (1000 for
/// CPU millicores, 1 for bytes), rounded up like Kubernetes does.
///
/// Accepts decimal SI (`k`, `M`, `G`, `T`, `P`, `E`), binary (`Ki` … `Ei`),
/// `m`/`u`/`n` fractions and decimal exponents (`1e3`).
pub fn parse_quantity_scaled(s: &str, scale: f64) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty quantity".into());
    }
    if t.starts_with('-') {
        return Err(format!("negative quantity {t:?} is not allowed"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num == "+" || num == "." {
        return Err(format!("invalid quantity {t:?}"));
    }
    let mantissa: f64 = num.parse().map_err(|_| format!("invalid quantity {t:?}"))?;
    if let Some(exact) = scaled_exactly(num, suffix, scale) {
        return match exact {
            Some(v) if v <= 9_000_000_000_000_000_000 => Ok(v as u64),
            _ => Err(format!("quantity {t:?} is too large")),
        };
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| format!("invalid exponent in quantity {t:?}"))?;
            10f64.powi(exp)
        }
        other => return Err(format!("unknown suffix {other:?} in quantity {t:?}")),
    };
    let v = mantissa * factor * scale;
    if !v.is_finite() || v > 9.0e18 {
        return Err(format!("quantity {t:?} is too large"));
    }
    Ok(v.ceil() as u64)
}

/// `num` × `suffix` × `scale` in integers, rounded up: decimal fractions
/// such as `m` are not exact in floating point (`2010m` would come out as
/// 2,011 millicores). `None` when the float path must decide (a scale other
/// than 1 or 1000, an unusual shape); `Some(None)` when it overflows.
fn scaled_exactly(num: &str, suffix: &str, scale: f64) -> Option<Option<u128>> {
    let scale_pow10: i32 = if scale == 1.0 {
        0
    } else if scale == 1000.0 {
        3
    } else {
        return None;
    };
    let (pow10, pow1024): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        e if e.starts_with(['e', 'E']) => (e[1..].parse().ok()?, 0),
        _ => return None,
    };
    let num = num.strip_prefix('+').unwrap_or(num);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() > 30 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let exp = pow10
        .checked_add(scale_pow10)?
        .checked_sub(frac.len() as i32)?;
    let value = (|| {
        let v = digits.checked_mul(1024u128.checked_pow(pow1024)?)?;
        if exp >= 0 {
            v.checked_mul(10u128.checked_pow(exp.unsigned_abs())?)
        } else {
            Some(v.div_ceil(10u128.checked_pow(exp.unsigned_abs())?))
        }
    })();
    // A huge negative exponent overflows the divisor: the float path says 0 or 1.
    if value.is_none() && exp < 0 {
        return None;
    }
    Some(value)
}

/// CPU quantity → millicores.
pub fn parse_cpu_millis(s: &str) -> Result<u64, String> {
    parse_quantity_scaled(s, 1000.0)
}

/// Memory quantity → bytes.
pub fn parse_memory_bytes(s: &str) -> Result<u64, String> {
    parse_quantity_scaled(s, 1.0)
}

/// Requested resources of a pod or capacity of a node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
        }
    }
    pub fn fits_in(&self, room: &Resources) -> bool {
        self.cpu_millis <= room.cpu_millis && self.memory_bytes <= room.memory_bytes
    }
    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources::new(
            self.cpu_millis.saturating_sub(o.cpu_millis),
            self.memory_bytes.saturating_sub(o.memory_bytes),
        )
    }
    pub fn add(&self, o: &Resources) -> Resources {
        Resources::new(
            self.cpu_millis.saturating_add(o.cpu_millis),
            self.memory_bytes.saturating_add(o.memory_bytes),
        )
    }
    pub fn cpu_cores(&self) -> f64 {
        self.cpu_millis as f64 / 1000.0
    }
    pub fn memory_gb(&self) -> f64 {
        self.memory_bytes as f64 / 1e9
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub const GIB: u64 = 1024 * 1024 * 1024;
pub const MIB: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(Duration::parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_mins(90));
        assert_eq!(
            Duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(Duration::parse("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("0").unwrap(), Duration::ZERO);
        assert!(Duration::parse("-5s").unwrap_err().contains("negative"));
        assert!(Duration::parse("30").unwrap_err().contains("unit"));
        assert!(Duration::parse("5x").unwrap_err().contains("unknown unit"));
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("s").is_err());
    }

    #[test]
    fn durations_display_round_trips() {
        for s in ["30s", "5m", "1h30m", "2h", "0s", "250ms", "1m5s"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_cpu_millis("500m").unwrap(), 500);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(parse_cpu_millis("0.25").unwrap(), 250);
        assert_eq!(parse_cpu_millis("400").unwrap(), 400_000);
        assert_eq!(parse_memory_bytes("1Gi").unwrap(), GIB);
        assert_eq!(parse_memory_bytes("1536Mi").unwrap(), 1536 * MIB);
        assert_eq!(parse_memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory_bytes("1e3").unwrap(), 1000);
        assert_eq!(parse_memory_bytes("128974848").unwrap(), 128_974_848);
        // Exact: 0.001 is not in floating point, so 2010 × 0.001 × 1000 > 2010.
        for m in [1, 7, 2010, 3010, 4095, 99_999, 123_456_789] {
            assert_eq!(parse_cpu_millis(&format!("{m}m")).unwrap(), m, "{m}m");
        }
        assert_eq!(parse_cpu_millis("2.01").unwrap(), 2010);
        assert_eq!(parse_cpu_millis("1u").unwrap(), 1, "rounded up");
        assert_eq!(parse_cpu_millis("1500000u").unwrap(), 1500);
        assert_eq!(parse_memory_bytes("1.5Gi").unwrap(), 3 * GIB / 2);
        assert_eq!(parse_memory_bytes("129e6").unwrap(), 129_000_000);
        assert_eq!(parse_memory_bytes("0.1").unwrap(), 1);
        assert!(parse_memory_bytes("100Ei").is_err(), "too large");
        assert!(parse_memory_bytes("-1Gi").is_err());
        assert!(parse_memory_bytes("12Qi").is_err());
        assert!(parse_memory_bytes("Gi").is_err());
        assert!(parse_memory_bytes("").is_err());
    }

    #[test]
    fn timestamps_round_trip_rfc3339() {
        let t = Timestamp::parse_rfc3339("2024-05-14T09:21:37Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-14T09:21:37Z");
        let o = Timestamp::parse_rfc3339("2024-05-14T11:21:37.500+02:00").unwrap();
        assert_eq!(o.millis() - t.millis(), 500);
        assert_eq!(Timestamp::from_secs(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert!(Timestamp::parse_rfc3339("2024-13-14T09:21:37Z").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
