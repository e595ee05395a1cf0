//! A token bucket with a pause, the pacing both cloud clients share: ARM
//! (src/aci/paced.rs) and IoT Hub (src/edge/hub.rs) throttle per time window
//! and answer 429 with `Retry-After` when a caller goes faster. Time is an
//! argument, so callers and tests choose the clock.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
    /// No call before this instant (set by a 429).
    paused_until: Option<Instant>,
}

impl TokenBucket {
    /// Full, holding `burst` tokens (at least 1), refilled at `per_sec`
    /// (at least 0.001; a value that is not finite counts as 1).
    pub fn new(per_sec: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            tokens: capacity,
            capacity,
            per_sec: if per_sec.is_finite() {
                per_sec.max(0.001)
            } else {
                1.0
            },
            last: now,
            paused_until: None,
        }
    }

    /// Its refill rate, tokens per second.
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// Take a token now, or say how long to wait before asking again.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        self.take_n(1, now)
    }

    /// Take `n` tokens now (at most the bucket's capacity: a larger `n`
    /// takes a full bucket), or say how long to wait before asking again.
    pub fn take_n(&mut self, n: u32, now: Instant) -> Option<Duration> {
        if let Some(until) = self.paused_until {
            if until > now {
                return Some(until - now);
            }
            self.paused_until = None;
        }
        let n = f64::from(n).min(self.capacity);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            None
        } else {
            Some(Duration::from_secs_f64((n - self.tokens) / self.per_sec))
        }
    }

    /// Give back `n` tokens taken and not used (never above the capacity).
    pub fn refund(&mut self, n: u32) {
        self.tokens = (self.tokens + f64::from(n)).min(self.capacity);
    }

    /// The service answered 429: no call before `until`, and the tokens this
    /// bucket believed it had are gone (the service's own bucket is empty;
    /// another client spent them), so after the pause it refills from zero
    /// instead of bursting into a second 429.
    pub fn throttled(&mut self, until: Instant, now: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        self.tokens = 0.0;
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces_and_a_429_empties_it() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 2, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), Some(Duration::from_millis(500)));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), None);
        b.throttled(t0 + Duration::from_secs(3), t0 + Duration::from_secs(1));
        assert_eq!(
            b.take(t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(1)),
            "paused"
        );
        assert_eq!(
            b.take(t0 + Duration::from_secs(3)),
            None,
            "refilled from zero since the 429: 2 s at 2/s"
        );
        // Two at once, and what was not used given back.
        let mut two = TokenBucket::new(1.0, 3, t0);
        assert_eq!(two.take_n(2, t0), None);
        assert_eq!(two.take_n(2, t0), Some(Duration::from_secs(1)));
        two.refund(1);
        assert_eq!(two.take_n(2, t0), None);
        two.refund(5);
        assert_eq!(
            two.take_n(9, t0),
            None,
            "more than the capacity takes it all"
        );
        assert_eq!(two.take(t0), Some(Duration::from_secs(1)));
        let odd = TokenBucket::new(f64::NAN, 0, t0);
        assert_eq!(odd.capacity, 1.0);
        assert_eq!(odd.per_sec, 1.0);
    }
}
