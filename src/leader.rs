//! Leadership that holds only while the Lease itself says so.
//!
//! kube-lease-manager reports leadership from its own renewals and, when
//! they fail, keeps reporting it while it backs off. A leader whose Lease
//! writes fail (RBAC, a conflicting writer) while its other writes succeed
//! would then go on acting after the Lease expired and a standby took over:
//! two replicas evicting, creating placeholders and container groups. The
//! guard here ANDs the manager's signal with what the Lease says, read
//! every few seconds: it names this replica, and its `renewTime` plus
//! `leaseDurationSeconds` is still ahead. When the Lease cannot be read,
//! the last copy read is judged, so leadership ends at the latest when that
//! copy expires.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use std::time::Duration;
use tokio::sync::watch;

/// Whether `lease` names `identity` as holder and has not expired at `now`.
pub fn lease_held(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let (Some(holder), Some(renewed), Some(secs)) = (
        spec.holder_identity.as_deref(),
        spec.renew_time.as_ref(),
        spec.lease_duration_seconds,
    ) else {
        return false;
    };
    holder == identity && renewed.0 + SignedDuration::from_secs(i64::from(secs)) > now
}

/// How often the guard reads the Lease: a quarter of its duration, between
/// 250 ms and 2 s.
pub fn check_every(lease_seconds: u64) -> Duration {
    Duration::from_millis((lease_seconds * 250).clamp(250, 2_000))
}

/// A leadership signal that is true only while `manager` says so and the
/// Lease `leases/name` says so (see the module doc). The task ends when
/// `stop` turns true or nobody listens any more.
pub fn guard(
    mut manager: watch::Receiver<bool>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut last: Option<Lease> = None;
        loop {
            match tokio::time::timeout(every.max(Duration::from_secs(1)), leases.get_opt(&name))
                .await
            {
                Ok(Ok(lease)) => last = lease,
                Ok(Err(e)) => tracing::debug!(error = %e, "reading the leader Lease failed"),
                Err(_) => tracing::debug!("reading the leader Lease timed out"),
            }
            let held = *manager.borrow()
                && last
                    .as_ref()
                    .is_some_and(|l| lease_held(l, &identity, Timestamp::now()));
            let changed = tx.send_if_modified(|v| std::mem::replace(v, held) != held);
            if changed && !held && *manager.borrow() {
                tracing::warn!(
                    identity = %identity,
                    lease = %name,
                    "the leader Lease no longer names this replica or has expired: acting stops until it is renewed"
                );
            }
            if tx.is_closed() {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                // Taking or losing the Lease is judged at once.
                r = manager.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(every) => {},
            }
        }
        let _ = tx.send(false);
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: Timestamp, secs: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_held_by_its_holder_until_it_expires() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        let l = lease("a", t0, 15);
        assert!(lease_held(&l, "a", at(14)));
        assert!(!lease_held(&l, "a", at(15)), "expired");
        assert!(!lease_held(&l, "b", at(1)), "another holder");
        assert!(!lease_held(&Lease::default(), "a", t0), "no spec");
        assert_eq!(check_every(15), Duration::from_secs(2));
        assert_eq!(check_every(2), Duration::from_millis(500));
        assert_eq!(check_every(0), Duration::from_millis(250));
    }
}
