//! The cluster autoscaler's status ConfigMap is watched (not polled): its
//! node groups reach the channel as it is created, rewritten and deleted,
//! and the cluster view rebuilds with them at once.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use spillway::autoscaler::pools::{NodeGroupStatus, ProvisionLearner};
use spillway::cluster::build::node;
use spillway::cluster::ca_status::{self, CaStatus};
use spillway::cluster::{ClusterConfig, ClusterView};
use spillway::units::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{TestApiServer, poll_until};

fn status(min: u32, max: u32, target: u32) -> String {
    format!(
        "nodeGroups:
- health:
    cloudProviderTarget: {target}
    maxSize: {max}
    minSize: {min}
    nodeCounts:
      registered:
        ready: 2
        total: 2
    status: Healthy
  name: aks-user-25795745-vmss
  scaleUp:
    status: InProgress
"
    )
}

fn config_map(name: &str, status: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("status".to_string(), status.to_string())])),
        ..Default::default()
    }
}

fn user_group(s: &CaStatus) -> Option<(u32, u32, u32)> {
    s.as_ref()?
        .iter()
        .find(|g: &&NodeGroupStatus| g.pool == "user")
        .map(|g| (g.min, g.max, g.target))
}

#[tokio::test]
async fn the_status_is_watched_through_create_update_and_delete() {
    let srv = TestApiServer::start().await;
    // Another ConfigMap in kube-system is not the status.
    srv.insert(&config_map("coredns", &status(9, 9, 9)));
    let (tx, rx) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(ca_status::watch(srv.client(), tx));
    assert!(srv.wait_for_watches(1, Duration::from_secs(10)).await);
    assert_eq!(*rx.borrow(), None);

    srv.insert(&config_map(ca_status::NAME, &status(2, 10, 6)));
    assert!(
        poll_until(Duration::from_secs(10), || user_group(&rx.borrow())
            == Some((2, 10, 6)))
        .await,
        "created: {:?}",
        rx.borrow()
    );
    srv.modify::<ConfigMap>("kube-system", ca_status::NAME, |cm| {
        *cm = config_map(ca_status::NAME, &status(2, 20, 8));
    });
    assert!(
        poll_until(Duration::from_secs(10), || user_group(&rx.borrow())
            == Some((2, 20, 8)))
        .await,
        "rewritten: {:?}",
        rx.borrow()
    );
    // Unreadable: treated as absent rather than trusted.
    srv.modify::<ConfigMap>("kube-system", ca_status::NAME, |cm| {
        cm.data = Some(BTreeMap::from([(
            "status".into(),
            "nodeGroups: [[[".into(),
        )]));
    });
    assert!(poll_until(Duration::from_secs(10), || rx.borrow().is_none()).await);
    srv.modify::<ConfigMap>("kube-system", ca_status::NAME, |cm| {
        *cm = config_map(ca_status::NAME, &status(1, 5, 3));
    });
    assert!(
        poll_until(Duration::from_secs(10), || user_group(&rx.borrow())
            == Some((1, 5, 3)))
        .await
    );
    srv.remove::<ConfigMap>("kube-system", ca_status::NAME);
    assert!(
        poll_until(Duration::from_secs(10), || rx.borrow().is_none()).await,
        "deleted: {:?}",
        rx.borrow()
    );
    task.abort();
}

#[tokio::test]
async fn new_pool_info_rebuilds_the_view_without_a_node_or_pod_change() {
    let view = ClusterView::new(ClusterConfig::default());
    let nodes: Vec<Node> = vec![node("aks-user-25795745-vmss000000").pool("user").build()];
    view.replace(&nodes, &[] as &[Pod], Timestamp::from_secs(100));
    let pool = |v: &ClusterView| {
        let s = v.current();
        let p = &s.snapshot.pools[0];
        (p.min, p.max, p.upcoming.len(), s.snapshot.now)
    };
    assert_eq!(pool(&view), (1, 11, 0, Timestamp::from_secs(100)));
    let groups = spillway::autoscaler::pools::parse_ca_status(&status(2, 10, 6)).expect("status");
    view.set_pool_info(ProvisionLearner::default().info(&groups));
    // 6 asked for, 2 registered: 4 on their way; the build time is kept.
    assert_eq!(pool(&view), (2, 10, 4, Timestamp::from_secs(100)));
}
