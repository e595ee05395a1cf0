//! The autoscaler's observe → plan → act pass against the test API server:
//! real HTTP writes, re-validation, PDB refusals.

mod support;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;
use spillway::autoscaler::act::placeholder_name;
use spillway::autoscaler::{ActConfig, Action, Actor, Autoscaler, LoopConfig, Outcome, PodRef};
use spillway::cluster::ClusterConfig;
use spillway::cluster::build::{node, pod};
use spillway::cluster::classify::PLACEHOLDER_FOR_LABEL;
use spillway::decision::Engine;
use spillway::policy::{BurstPolicy, PolicySet};
use spillway::units::{Duration, Timestamp};
use support::TestApiServer;

const VIRTUAL: &str = "virtual-node-aci-linux";
const PH_NS: &str = "spillway-system";

fn now_plus(secs: i64) -> Timestamp {
    // The API server stamps real creation times; keep `now` near them.
    Timestamp::from_millis(Timestamp::now_wall().millis() + secs * 1000)
}

fn with_uid(mut p: Pod, uid: &str) -> Pod {
    p.metadata.uid = Some(uid.into());
    p
}

fn ready(mut p: Pod) -> Pod {
    let status = p.status.get_or_insert_with(Default::default);
    status.phase = Some("Running".into());
    status.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    p
}

fn policies() -> PolicySet {
    let mut p = BurstPolicy::defaults("web", Some("web"));
    p.drain_back.after = Duration::from_secs(300);
    PolicySet::with_default(p)
}

fn autoscaler(srv: &TestApiServer) -> Autoscaler {
    let actor = Actor::new(srv.client_without_retries(), ActConfig::default());
    Autoscaler::new(
        Engine::default(),
        ClusterConfig::default(),
        LoopConfig::default(),
        PH_NS.into(),
        actor,
    )
}

fn seed(srv: &TestApiServer) {
    srv.insert(&node("vm-0").pool("user").build());
    srv.insert(&node(VIRTUAL).virtual_kubelet().build());
    // vm-0 is full.
    srv.insert(&with_uid(
        pod()
            .ns("web")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
        "uid-filler",
    ));
    // A pod pending for a minute that tolerates the virtual node.
    srv.insert(&with_uid(
        pod()
            .ns("web")
            .name("due")
            .cpu("1")
            .memory("1Gi")
            .tolerate_virtual()
            .unschedulable_since(now_plus(-60))
            .build(),
        "uid-due",
    ));
    for name in ["a", "b"] {
        srv.insert(&with_uid(
            ready(
                pod()
                    .ns("web")
                    .name(name)
                    .label("app", name)
                    .cpu("1")
                    .memory("1Gi")
                    .tolerate_virtual()
                    .on_node(VIRTUAL)
                    .owned_by("ReplicaSet", &format!("rs-{name}"))
                    .build(),
            ),
            &format!("uid-{name}"),
        ));
    }
}

async fn pass(
    a: &mut Autoscaler,
    srv: &TestApiServer,
    now: Timestamp,
) -> spillway::autoscaler::PassReport {
    let pdbs: Vec<PodDisruptionBudget> = srv.list(None);
    pass_with(a, srv, now, &pdbs).await
}

/// A pass that sees only `pdbs` (e.g. none: budgets not listed yet).
async fn pass_with(
    a: &mut Autoscaler,
    srv: &TestApiServer,
    now: Timestamp,
    pdbs: &[PodDisruptionBudget],
) -> spillway::autoscaler::PassReport {
    let nodes: Vec<Node> = srv.list(None);
    let pods: Vec<Pod> = srv.list(None);
    a.pass(&nodes, &pods, pdbs, &policies(), None, now).await
}

fn evictions_of(srv: &TestApiServer, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/web/pods/{name}/eviction");
    srv.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .count()
}

fn annotation(p: &Option<Pod>, key: &str) -> Option<String> {
    p.as_ref()?.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn a_full_pass_nudges_announces_places_placeholders_and_marks_burst_pods() {
    let srv = TestApiServer::start().await;
    support::install_placeholder_priority_class(&srv);
    seed(&srv);
    let mut a = autoscaler(&srv);
    let report = pass(&mut a, &srv, now_plus(0)).await;
    for (action, outcome) in &report.results {
        assert!(
            matches!(outcome, Ok(Outcome::Done)),
            "{action:?}: {outcome:?}"
        );
    }
    // The pending pod was nudged and told why.
    let due: Option<Pod> = srv.get("web", "due");
    assert!(
        annotation(&due, "spillway.io/burst-at").is_some(),
        "{due:?}"
    );
    let events: Vec<Event> = srv.list(Some("web"));
    let bursting: Vec<&Event> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Bursting"))
        .collect();
    assert_eq!(bursting.len(), 1, "{events:?}");
    assert_eq!(
        bursting[0]
            .regarding
            .as_ref()
            .and_then(|r| r.name.as_deref()),
        Some("due")
    );
    assert!(
        bursting[0]
            .note
            .as_deref()
            .unwrap_or("")
            .starts_with("spillway: ")
    );
    // One placeholder per burst pod, named after its uid, with its requests.
    let phs: Vec<Pod> = srv.list(Some(PH_NS));
    let mut names: Vec<String> = phs.iter().filter_map(|p| p.metadata.name.clone()).collect();
    names.sort();
    let mut want = vec![placeholder_name("uid-a"), placeholder_name("uid-b")];
    want.sort();
    assert_eq!(names, want);
    assert!(phs.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(PLACEHOLDER_FOR_LABEL))
    }));
    // Burst pods go first on scale-in.
    for name in ["a", "b"] {
        let p: Option<Pod> = srv.get("web", name);
        assert_eq!(
            annotation(&p, "controller.kubernetes.io/pod-deletion-cost").as_deref(),
            Some("-1000")
        );
    }
    // A second pass right away changes nothing.
    let again = pass(&mut a, &srv, now_plus(1)).await;
    assert!(again.results.is_empty(), "{:?}", again.results);
}

#[tokio::test]
async fn drain_back_evicts_when_placeholder_room_is_stable_and_pdbs_allow() {
    let srv = TestApiServer::start().await;
    support::install_placeholder_priority_class(&srv);
    seed(&srv);
    // b is protected by a PDB that allows no disruption.
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "b", "namespace": "web"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "b"}}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    srv.insert(&pdb);
    let mut a = autoscaler(&srv);
    pass(&mut a, &srv, now_plus(0)).await;
    // A VM node joins and the placeholders run on it.
    srv.insert(&node("vm-1").pool("user").build());
    for uid in ["uid-a", "uid-b"] {
        srv.modify::<Pod>(PH_NS, &placeholder_name(uid), |p| {
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some("vm-1".into());
            }
            p.status.get_or_insert_with(Default::default).phase = Some("Running".into());
        });
    }
    let t = now_plus(10);
    pass(&mut a, &srv, t).await;
    let early = pass(&mut a, &srv, t.plus(Duration::from_secs(299))).await;
    assert_eq!(early.count(|a, _| matches!(a, Action::Evict { .. })), 0);

    let report = pass(&mut a, &srv, t.plus(Duration::from_secs(300))).await;
    let outcome = |name: &str| {
        report
            .results
            .iter()
            .find(|(a, _)| matches!(a, Action::Evict { pod, .. } if pod.name == name))
            .map(|(_, o)| match o {
                Ok(x) => Ok(x.clone()),
                Err(e) => Err(e.to_string()),
            })
    };
    assert_eq!(outcome("a"), Some(Ok(Outcome::Done)));
    // b's budget allows no disruption (its status says so): b is not even asked for.
    assert_eq!(outcome("b"), None);
    assert_eq!(evictions_of(&srv, "b"), 0);
    // a is on its way out and its placeholder is gone; b and its placeholder stay.
    let a_pod: Option<Pod> = srv.get("web", "a");
    assert!(a_pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()));
    assert!(srv.get::<Pod>(PH_NS, &placeholder_name("uid-a")).is_none());
    assert!(srv.get::<Pod>(PH_NS, &placeholder_name("uid-b")).is_some());
    assert!(
        srv.get::<Pod>("web", "b")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    );
    let events: Vec<Event> = srv.list(Some("web"));
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("DrainedBack")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("a"))
    );
    // Without the budgets listed (a view not synced on them yet) the Eviction
    // API refuses: a 429 that neither counts against the rate nor blocks b.
    for secs in [310, 320] {
        let retry = pass_with(&mut a, &srv, t.plus(Duration::from_secs(secs)), &[]).await;
        assert_eq!(
            retry.count(
                |a, o| matches!(a, Action::Evict { pod, .. } if pod.name == "b")
                    && matches!(o, Outcome::Refused(_))
            ),
            1,
            "at +{secs}s"
        );
    }
    // The budget is relaxed: b goes on the next pass.
    srv.modify::<PodDisruptionBudget>("web", "b", |b| {
        if let Some(spec) = b.spec.as_mut() {
            spec.max_unavailable =
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        }
    });
    srv.sync_disruption_budgets();
    let report = pass(&mut a, &srv, t.plus(Duration::from_secs(330))).await;
    assert_eq!(
        report.count(
            |a, o| matches!(a, Action::Evict { pod, .. } if pod.name == "b")
                && matches!(o, Outcome::Done)
        ),
        1
    );
}

#[tokio::test]
async fn actions_are_revalidated_against_the_latest_objects() {
    let srv = TestApiServer::start().await;
    support::install_placeholder_priority_class(&srv);
    seed(&srv);
    let actor = Actor::new(srv.client_without_retries(), ActConfig::default());
    let web = |name: &str| PodRef {
        namespace: "web".into(),
        name: name.into(),
    };
    // The pod was replaced under the same name: a different uid is not evicted.
    let o = actor
        .act(&Action::Evict {
            pod: web("a"),
            uid: "uid-old".into(),
            placeholder: None,
            message: String::new(),
        })
        .await;
    assert_eq!(o.ok(), Some(Outcome::Skipped("pod replaced")));
    assert!(
        srv.get::<Pod>("web", "a")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    );
    // A pod that got bound meanwhile is not nudged.
    let o = actor
        .act(&Action::Nudge {
            pod: web("filler"),
            at: now_plus(0),
        })
        .await;
    assert_eq!(o.ok(), Some(Outcome::Skipped("already bound")));
    // VM pods never get the burst deletion cost.
    let o = actor
        .act(&Action::SetDeletionCost {
            pod: web("filler"),
            cost: -1000,
        })
        .await;
    assert_eq!(o.ok(), Some(Outcome::Skipped("no longer a burst pod")));
    // Missing things are not errors.
    let o = actor
        .act(&Action::DeletePlaceholder {
            name: "nope".into(),
        })
        .await;
    assert_eq!(o.ok(), Some(Outcome::Done));
    let o = actor
        .act(&Action::Nudge {
            pod: web("ghost"),
            at: now_plus(0),
        })
        .await;
    assert_eq!(o.ok(), Some(Outcome::Skipped("pod gone")));
    // Creating the same placeholder twice is one placeholder.
    let create = Action::CreatePlaceholder {
        for_pod: web("a"),
        for_uid: "uid-a".into(),
        requests: spillway::units::Resources::new(1000, 1 << 30),
    };
    assert_eq!(actor.act(&create).await.ok(), Some(Outcome::Done));
    assert_eq!(actor.act(&create).await.ok(), Some(Outcome::Done));
    assert_eq!(srv.list::<Pod>(Some(PH_NS)).len(), 1);
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let srv = TestApiServer::start().await;
    support::install_placeholder_priority_class(&srv);
    seed(&srv);
    let before = srv.resource_version();
    let cfg = ActConfig {
        dry_run: true,
        ..ActConfig::default()
    };
    let mut a = Autoscaler::new(
        Engine::default(),
        ClusterConfig::default(),
        LoopConfig::default(),
        PH_NS.into(),
        Actor::new(srv.client_without_retries(), cfg),
    );
    let report = pass(&mut a, &srv, now_plus(0)).await;
    assert!(!report.results.is_empty());
    assert!(
        report
            .results
            .iter()
            .all(|(_, o)| matches!(o, Ok(Outcome::WouldDo))),
        "{:?}",
        report.results
    );
    assert_eq!(
        srv.resource_version(),
        before,
        "no write reached the API server"
    );
}
