//! Capacity placeholders against an API server that enforces what a real
//! cluster does: spillway-system labelled Pod Security `restricted` (as
//! deploy/base/namespace.yaml ships it) and RBAC from
//! `kubectl kustomize deploy/overlays/aks`, the autoscaler acting as the
//! `spillway` ServiceAccount.

mod support;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodStatus};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PostParams};
use spillway::autoscaler::act::{placeholder_name, placeholder_pod};
use spillway::autoscaler::{ActConfig, Action, Actor, Autoscaler, LoopConfig, Outcome, PodRef};
use spillway::cluster::ClusterConfig;
use spillway::cluster::build::{node, pod};
use spillway::decision::Engine;
use spillway::policy::{BurstPolicy, PolicySet};
use spillway::units::{Resources, Timestamp};
use support::TestApiServer;

const VIRTUAL: &str = "virtual-node-aci-linux";
const PH_NS: &str = "spillway-system";

/// The deploy/ manifests applied: namespace labels, ServiceAccount, RBAC.
async fn cluster() -> TestApiServer {
    let srv = TestApiServer::start().await;
    srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    srv
}

#[tokio::test]
async fn placeholders_are_admitted_by_restricted_pod_security_as_spillway() {
    let srv = cluster().await;
    srv.insert(&node("vm-0").pool("user").build());
    srv.insert(&node(VIRTUAL).virtual_kubelet().build());
    // vm-0 is full.
    srv.insert(
        &pod()
            .ns("web")
            .name("filler")
            .cpu("4")
            .memory("1Gi")
            .on_node("vm-0")
            .build(),
    );
    // Running burst pods of a ReplicaSet: each gets a placeholder. A pod
    // pending for a minute gets a nudge and an Event.
    for name in ["a", "b"] {
        let mut p = pod()
            .ns("web")
            .name(name)
            .cpu("1")
            .memory("1Gi")
            .tolerate_virtual()
            .on_node(VIRTUAL)
            .owned_by("ReplicaSet", &format!("rs-{name}"))
            .build();
        p.metadata.uid = Some(format!("uid-{name}"));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        srv.insert(&p);
    }
    let now = Timestamp::from_millis(Timestamp::now_wall().millis());
    let mut due = pod()
        .ns("web")
        .name("due")
        .cpu("1")
        .memory("1Gi")
        .tolerate_virtual()
        .unschedulable_since(Timestamp::from_millis(now.millis() - 60_000))
        .build();
    due.metadata.uid = Some("uid-due".into());
    srv.insert(&due);
    let actor = Actor::new(
        srv.client_as("spillway-system", "spillway"),
        ActConfig::default(),
    );
    let mut autoscaler = Autoscaler::new(
        Engine::default(),
        ClusterConfig::default(),
        LoopConfig::default(),
        PH_NS.into(),
        actor,
    );
    let policies = PolicySet::with_default(BurstPolicy::defaults("web", Some("web")));
    let nodes: Vec<Node> = srv.list(None);
    let pods: Vec<Pod> = srv.list(None);
    let pdbs: Vec<PodDisruptionBudget> = srv.list(None);
    let report = autoscaler
        .pass(&nodes, &pods, &pdbs, &policies, None, now)
        .await;
    let kinds: Vec<&str> = report
        .results
        .iter()
        .map(|(a, _)| match a {
            Action::CreatePlaceholder { .. } => "placeholder",
            Action::Nudge { .. } => "nudge",
            Action::Event { .. } => "event",
            _ => "other",
        })
        .collect();
    for want in ["placeholder", "nudge", "event"] {
        assert!(kinds.contains(&want), "{want}: {:?}", report.results);
    }
    for (action, outcome) in &report.results {
        assert!(
            matches!(outcome, Ok(Outcome::Done)),
            "{action:?}: {outcome:?}"
        );
    }
    for uid in ["uid-a", "uid-b"] {
        assert!(
            srv.get::<Pod>(PH_NS, &placeholder_name(uid)).is_some(),
            "placeholder for {uid}"
        );
    }
}

/// The fake is not lenient: the same placeholder without its security
/// context is refused exactly as a real restricted namespace refuses it.
#[tokio::test]
async fn a_placeholder_without_its_security_context_is_refused() {
    let srv = cluster().await;
    let cfg = ActConfig::default();
    let for_pod = PodRef {
        namespace: "web".into(),
        name: "a".into(),
    };
    let requests = Resources {
        cpu_millis: 500,
        memory_bytes: 1 << 30,
    };
    let mut bare = placeholder_pod(&cfg, &for_pod, "uid-a", &requests, &Default::default());
    if let Some(spec) = bare.spec.as_mut() {
        spec.security_context = None;
        for c in &mut spec.containers {
            c.security_context = None;
        }
    }
    let pods: Api<Pod> = Api::namespaced(srv.client_as("spillway-system", "spillway"), PH_NS);
    match pods.create(&PostParams::default(), &bare).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                format!(
                    r#"pods "{}" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "pause" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "pause" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "pause" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "pause" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
                    placeholder_name("uid-a")
                )
            );
        }
        other => panic!("a bare placeholder in a restricted namespace: {other:?}"),
    }
    // With it: admitted.
    pods.create(
        &PostParams::default(),
        &placeholder_pod(&cfg, &for_pod, "uid-a", &requests, &Default::default()),
    )
    .await
    .expect("the real placeholder is admitted");
}
