//! Hot reload of the policy directory.
//!
//! `PolicyStore` always holds a valid `PolicySet`. A reload that finds errors
//! logs them, counts them in `spillway_policy_reload_total{outcome="error"}`
//! and keeps the last good set in force.

use super::{PolicyErrors, PolicySet, load_dir, policy_files};
use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    fingerprint: RwLock<Option<Vec<(PathBuf, u64)>>>,
    metrics: Arc<Metrics>,
}

/// What a reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Loaded {
        policies: usize,
    },
    /// Errors found; the previous set stays in force.
    Rejected(PolicyErrors),
}

impl PolicyStore {
    /// Load the directory once; fails (for exit code 64) if the first load is invalid.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Self, PolicyErrors> {
        let store = PolicyStore {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(PolicySet::default())),
            fingerprint: RwLock::new(None),
            metrics,
        };
        match store.reload() {
            ReloadOutcome::Rejected(e) => Err(e),
            _ => Ok(store),
        }
    }

    /// The set in force now. Cheap: clones an `Arc`.
    pub fn current(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// File names and content hashes. Contents, not mtimes: ConfigMap updates
    /// swap symlinks and coarse mtimes can hide a same-length edit.
    fn fingerprint_now(&self) -> Option<Vec<(PathBuf, u64)>> {
        use std::hash::{Hash, Hasher};
        let files = policy_files(&self.dir).ok()?;
        Some(
            files
                .into_iter()
                .map(|f| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    std::fs::read(&f).ok().hash(&mut h);
                    (f, h.finish())
                })
                .collect(),
        )
    }

    /// Reload if the directory changed since the last successful or failed attempt.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let now = self.fingerprint_now();
        let same = match self.fingerprint.read() {
            Ok(g) => *g == now && now.is_some(),
            Err(_) => false,
        };
        if same {
            return ReloadOutcome::Unchanged;
        }
        self.reload()
    }

    /// Load the directory unconditionally.
    pub fn reload(&self) -> ReloadOutcome {
        let fp = self.fingerprint_now();
        let outcome = match load_dir(&self.dir) {
            Ok(set) => {
                let n = set.len();
                if let Ok(mut g) = self.current.write() {
                    *g = Arc::new(set);
                }
                self.metrics
                    .policy_reloads
                    .with_label_values(&["success"])
                    .inc();
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.metrics.policy_last_success.set(now);
                self.metrics.policies_loaded.set(n as f64);
                tracing::info!(policies = n, dir = %self.dir.display(), "policies loaded");
                ReloadOutcome::Loaded { policies: n }
            }
            Err(errors) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                for e in &errors.0 {
                    tracing::error!(error = %e, "invalid policy; keeping the last good set");
                }
                ReloadOutcome::Rejected(errors)
            }
        };
        if let Ok(mut g) = self.fingerprint.write() {
            *g = fp;
        }
        outcome
    }

    /// Poll the directory every `interval` until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.reload_if_changed();
        }
    }
}
