//! Two pieces the kubelet endpoint's log reader is built from, so many
//! `kubectl logs` callers share few ARM reads fairly:
//!
//! - [`Gate`]: a token bucket callers wait for in line, first come first
//!   served, each up to a deadline of its own. Plain `take`-and-sleep
//!   loops are not fair: whichever task wakes first wins, so under load
//!   some callers wait far longer than others.
//! - [`Recent`]: the last value read per key, handed to whoever asks
//!   while it is fresh enough for them, with one read in flight per key
//!   (callers of the same key wait for that read instead of making their
//!   own).

use crate::pacing::TokenBucket;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket with a queue in front of it.
#[derive(Debug)]
pub struct Gate {
    bucket: std::sync::Mutex<TokenBucket>,
    per_sec: f64,
    /// Held by the caller at the head of the line while it waits for its
    /// token; tokio's mutex grants it in the order callers asked.
    line: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// Counts a caller in line for as long as it is there.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InLine(n)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(per_sec: f64, burst: u32) -> Self {
        let bucket = TokenBucket::new(per_sec, burst, Instant::now());
        Self {
            per_sec: bucket.per_sec(),
            bucket: std::sync::Mutex::new(bucket),
            line: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Callers in line now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// One token, in turn, waiting at most until `deadline`; else how long
    /// the caller should wait before asking again (the time its turn would
    /// have taken: the line ahead of it at the bucket's rate).
    pub async fn take(&self, deadline: Instant) -> Result<(), Duration> {
        self.take_n(1, deadline).await
    }

    /// `n` tokens at one turn (a caller that needs several reads waits in
    /// line once, not once per read behind everyone who came meanwhile).
    pub async fn take_n(&self, n: u32, deadline: Instant) -> Result<(), Duration> {
        let _counted = InLine::enter(&self.waiting);
        let estimate =
            |ahead: usize| Duration::from_secs_f64((ahead as f64) * f64::from(n) / self.per_sec);
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.line.lock()).await else {
            return Err(estimate(self.waiting()));
        };
        loop {
            let now = Instant::now();
            let Some(wait) = self.bucket().take_n(n, now) else {
                return Ok(());
            };
            if now + wait > deadline {
                return Err(wait + estimate(self.waiting().saturating_sub(1)));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Give back `n` tokens taken and not used.
    pub fn refund(&self, n: u32) {
        if n > 0 {
            self.bucket().refund(n);
        }
    }

    /// The service answered 429: nobody passes before `until`.
    pub fn throttled(&self, until: Instant) {
        self.bucket().throttled(until, Instant::now());
    }
}

/// A value read at a time.
struct Slot<V> {
    value: tokio::sync::Mutex<Option<(Instant, V)>>,
}

/// The last value read per key, shared while fresh.
pub struct Recent<K, V> {
    slots: std::sync::Mutex<HashMap<K, Arc<Slot<V>>>>,
    /// Values older than this are dropped when the map is swept.
    keep: Duration,
    /// The map's size after the last sweep; the next sweep comes when it
    /// has doubled.
    swept_at: AtomicUsize,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    pub fn new(keep: Duration) -> Self {
        Self {
            slots: std::sync::Mutex::new(HashMap::new()),
            keep,
            swept_at: AtomicUsize::new(64),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Slot<V>>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`: the last one read, if `fresh(value, age)` says it
    /// serves; else `read()`'s, kept for the next caller. Callers of the same
    /// key wait for a read in flight and then judge its value. The second
    /// field says whether the value was shared (not read for this call).
    pub async fn get<E, F, Fut>(
        &self,
        key: &K,
        fresh: impl Fn(&V, Duration) -> bool,
        read: F,
    ) -> Result<(V, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let slot = {
            let mut slots = self.slots();
            if let Some(s) = slots.get(key) {
                s.clone()
            } else {
                let s = Arc::new(Slot {
                    value: tokio::sync::Mutex::new(None),
                });
                slots.insert(key.clone(), s.clone());
                let len = slots.len();
                if len >= self.swept_at.load(Ordering::Relaxed) {
                    self.sweep(&mut slots);
                }
                s
            }
        };
        let mut value = slot.value.lock().await;
        if let Some((at, v)) = value.as_ref()
            && fresh(v, at.elapsed())
        {
            return Ok((v.clone(), true));
        }
        let v = read().await?;
        *value = Some((Instant::now(), v.clone()));
        Ok((v, false))
    }

    /// Whether a caller of `key` now would be served without a read of its
    /// own: the value held is `fresh`, or a read is in flight (its value
    /// will be moments old). A guess: the value may age before the caller
    /// gets it.
    pub fn would_share(&self, key: &K, fresh: impl Fn(&V, Duration) -> bool) -> bool {
        let Some(slot) = self.slots().get(key).cloned() else {
            return false;
        };
        match slot.value.try_lock() {
            Ok(v) => v.as_ref().is_some_and(|(at, v)| fresh(v, at.elapsed())),
            Err(_) => true,
        }
    }

    /// Forget `key`'s value (it is known to be wrong now).
    pub fn forget(&self, key: &K) {
        self.slots().remove(key);
    }

    /// Drop the values older than `keep` that nobody is reading.
    fn sweep(&self, slots: &mut HashMap<K, Arc<Slot<V>>>) {
        slots.retain(|_, s| {
            Arc::strong_count(s) > 1
                || s.value.try_lock().map_or(true, |v| {
                    v.as_ref().is_some_and(|(at, _)| at.elapsed() < self.keep)
                })
        });
        self.swept_at
            .store((slots.len() * 2).max(64), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn the_gate_serves_callers_in_the_order_they_came() {
        let gate = Arc::new(Gate::new(1.0, 1));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let far = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                gate.take(far).await.map(|()| {
                    order.lock().map(|mut o| o.push(i)).ok();
                })
            }));
            // Each asks a little after the one before.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            assert!(matches!(t.await, Ok(Ok(()))));
        }
        assert_eq!(
            *order.lock().unwrap_or_else(|e| e.into_inner()),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gives_up_at_its_deadline_with_the_wait_its_turn_needed() {
        let gate = Arc::new(Gate::new(2.0, 1));
        let t0 = Instant::now();
        assert_eq!(gate.take(t0).await, Ok(()), "the burst");
        // Three wait far; a fourth may wait 1 s only: its turn is 2 s away.
        let far = t0 + Duration::from_secs(60);
        let mut ahead = Vec::new();
        for _ in 0..3 {
            let g = gate.clone();
            ahead.push(tokio::spawn(async move { g.take(far).await }));
        }
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 3);
        let refused = gate.take(t0 + Duration::from_secs(1)).await;
        let wait = refused.err().unwrap_or_default();
        assert!(
            wait >= Duration::from_millis(1500),
            "told to wait {wait:?}: 3 in line at 2/s"
        );
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(1),
            "gave up at its deadline"
        );
        for t in ahead {
            assert!(matches!(t.await, Ok(Ok(()))));
        }
        assert_eq!(gate.waiting(), 0);
        gate.throttled(Instant::now() + Duration::from_secs(5));
        let paused = gate.take(Instant::now() + Duration::from_secs(1)).await;
        assert!(paused.is_err(), "a 429 pauses the gate");
    }

    #[tokio::test(start_paused = true)]
    async fn recent_values_are_shared_and_one_read_is_in_flight_per_key() {
        let recent: Arc<Recent<&'static str, u32>> = Arc::new(Recent::new(Duration::from_secs(5)));
        let reads = Arc::new(AtomicU32::new(0));
        let read = |reads: Arc<AtomicU32>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, ()>(reads.fetch_add(1, Ordering::SeqCst) + 1)
        };
        // Four callers at once: one read, three wait for it.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (recent, reads) = (recent.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                recent
                    .get(&"a", |_, age| age <= Duration::from_secs(1), || read(reads))
                    .await
            }));
        }
        let mut shared = 0;
        for t in tasks {
            let (v, was_shared) = t.await.ok().and_then(Result::ok).unwrap_or_default();
            assert_eq!(v, 1);
            shared += usize::from(was_shared);
        }
        assert_eq!((reads.load(Ordering::SeqCst), shared), (1, 3));
        // Too old for this caller: read again.
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = recent
            .get(
                &"a",
                |_, age| age <= Duration::from_secs(1),
                || read(reads.clone()),
            )
            .await;
        assert_eq!(again, Ok((2, false)));
        // Another key reads for itself; a failed read keeps nothing.
        let failed = recent
            .get(&"b", |_, _| true, || async { Err::<u32, _>("no") })
            .await;
        assert_eq!(failed, Err("no"));
        let b = recent.get(&"b", |_, _| true, || read(reads.clone())).await;
        assert_eq!(b, Ok((3, false)));
        assert!(recent.would_share(&"b", |_, _| true));
        assert!(!recent.would_share(&"b", |_, _| false));
        assert!(!recent.would_share(&"c", |_, _| true), "nothing held");
        recent.forget(&"b");
        assert_eq!(recent.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn old_values_are_swept_as_the_map_grows() {
        let recent: Recent<u32, u32> = Recent::new(Duration::from_secs(5));
        for k in 0..63 {
            let _ = recent
                .get(&k, |_, _| true, || async { Ok::<_, ()>(k) })
                .await;
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        let _ = recent
            .get(&100, |_, _| true, || async { Ok::<_, ()>(0) })
            .await;
        assert!(recent.len() <= 1, "{} kept", recent.len());
    }
}
