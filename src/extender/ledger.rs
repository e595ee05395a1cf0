//! Burst admissions the cluster view cannot show yet.
//!
//! The view is rebuilt from watch events at most every few hundred
//! milliseconds, while the scheduler may ask about dozens of pods in that
//! time. Without a ledger each of them would be checked against the same
//! stale burst usage and a namespace could overshoot its budget. So every pod
//! the extender lets onto the virtual node is remembered here and counted on
//! top of the view's usage until a view built at least `VISIBLE_AFTER` later
//! exists (by then the scheduler has bound it and the view shows it), or
//! `FORGET_AFTER` has passed (a static view never catches up).
//!
//! It errs on the side of the budget: a view rebuilt within `VISIBLE_AFTER`
//! that already shows the pod counts it twice until the next rebuild (the
//! pod's own status changes trigger one within seconds), so a namespace may be
//! held slightly under its budget for a moment but never pushed over it.

use crate::decision::BurstUsage;
use crate::units::{Duration, Resources, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// How long after an admission a rebuilt view is trusted to include it.
pub const VISIBLE_AFTER: Duration = Duration::from_secs(2);
/// Admissions are forgotten after this long whatever the view does.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Admission {
    namespace: String,
    requests: Resources,
    hourly: f64,
    at: Timestamp,
}

#[derive(Debug, Default)]
pub struct Admissions {
    entries: Mutex<HashMap<String, Admission>>,
}

impl Admissions {
    /// Remember that pod `key` (its uid, or namespace/name) was let onto the virtual node.
    pub fn record(
        &self,
        key: &str,
        namespace: &str,
        requests: Resources,
        hourly: f64,
        at: Timestamp,
    ) {
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.insert(
            key.to_string(),
            Admission {
                namespace: namespace.to_string(),
                requests,
                hourly,
                at,
            },
        );
    }

    /// `view_usage` plus the admissions a view built at `view_time` cannot
    /// contain yet, except pod `key` itself (a retry must not count against
    /// itself). Forgets admissions the view has caught up with.
    pub fn usage(
        &self,
        view_usage: &BTreeMap<String, BurstUsage>,
        view_time: Timestamp,
        now: Timestamp,
        key: &str,
    ) -> BTreeMap<String, BurstUsage> {
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries
            .retain(|_, a| view_time < a.at.plus(VISIBLE_AFTER) && now < a.at.plus(FORGET_AFTER));
        let mut usage = view_usage.clone();
        for (k, a) in entries.iter() {
            if k != key {
                usage
                    .entry(a.namespace.clone())
                    .or_default()
                    .add(&a.requests, a.hourly);
            }
        }
        usage
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    #[test]
    fn admissions_count_until_the_view_catches_up_or_they_expire() {
        let l = Admissions::default();
        let none = BTreeMap::new();
        l.record("a", "web", Resources::new(1000, 0), 0.5, t(100));
        l.record("b", "web", Resources::new(2000, 0), 0.25, t(100));
        let u = l.usage(&none, t(99), t(100), "other");
        assert_eq!((u["web"].pods, u["web"].requests.cpu_millis), (2, 3000));
        // Pod `a` asking again does not count against itself.
        assert_eq!(l.usage(&none, t(99), t(100), "a")["web"].pods, 1);
        // A view built 1s later may not show them yet; one built 2s later does.
        assert_eq!(l.usage(&none, t(101), t(101), "x")["web"].pods, 2);
        assert!(l.usage(&none, t(102), t(102), "x").is_empty());
        assert!(l.is_empty());
        // A view that never advances: forgotten after FORGET_AFTER.
        l.record("c", "batch", Resources::new(1000, 0), 0.1, t(200));
        assert_eq!(l.usage(&none, t(0), t(229), "x")["batch"].pods, 1);
        assert!(l.usage(&none, t(0), t(230), "x").is_empty());
    }
}
