//! The test API server, proved through kube-rs: every behaviour spillway's
//! integration tests rely on is exercised here with `kube::Api` /
//! `kube::runtime`, exactly as production code would call a real cluster.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{Method, Request};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event as EventsV1;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use support::{Fault, PodDeletion, TestApiServer};

/// Upper bound for anything asynchronous to happen.
const WAIT: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

/// Polls `check` until it holds or `WAIT` passes.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Pod fixture builder.
struct PodBuilder(Value);

fn pod(ns: &str, name: &str) -> PodBuilder {
    PodBuilder(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
    }))
}

impl PodBuilder {
    fn label(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["labels"][k] = json!(v);
        self
    }
    fn node(mut self, n: &str) -> Self {
        self.0["spec"]["nodeName"] = json!(n);
        self
    }
    fn phase(mut self, p: &str) -> Self {
        self.0["status"]["phase"] = json!(p);
        self
    }
    /// Running with Ready=True (healthy for PDB purposes).
    fn ready(mut self) -> Self {
        self.0["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        self
    }
    fn finalizer(mut self, f: &str) -> Self {
        self.0["metadata"]["finalizers"] = json!([f]);
        self
    }
    fn build(self) -> Pod {
        serde_json::from_value(self.0).expect("valid pod fixture")
    }
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"agentpool": "vm"}}}))
        .expect("valid node fixture")
}

fn pdb(ns: &str, name: &str, app: &str, spec: Value) -> PodDisruptionBudget {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": app}});
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("valid PDB fixture")
}

fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("numeric resourceVersion")
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn create_get_replace_delete_stamp_metadata() -> TestResult {
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "web");

    let created = pods
        .create(
            &PostParams::default(),
            &pod("web", "p1").phase("Running").build(),
        )
        .await?;
    let meta = &created.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "uid: {:?}",
        meta.uid
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    // Admission: status reset to Pending, spec defaults filled in.
    let status = created.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let spec = created.spec.clone().unwrap_or_default();
    assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));

    let got = pods.get("p1").await?;
    assert_eq!(got.metadata.uid, meta.uid);
    assert_eq!(got.metadata.resource_version, meta.resource_version);

    let mut changed = got.clone();
    changed.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
    let replaced = pods.replace("p1", &PostParams::default(), &changed).await?;
    assert!(rv_of(&replaced.metadata) > rv_of(&meta.clone()));
    assert_eq!(replaced.metadata.uid, meta.uid);
    // Metadata-only change: generation unchanged.
    assert_eq!(replaced.metadata.generation, Some(1));

    // A no-op replace writes nothing.
    let again = pods
        .replace("p1", &PostParams::default(), &replaced)
        .await?;
    assert_eq!(
        again.metadata.resource_version,
        replaced.metadata.resource_version
    );

    // Unbound pod: deleted at once; the response is the final object.
    let deleted = pods.delete("p1", &DeleteParams::default()).await?;
    assert!(
        deleted
            .left()
            .is_some_and(|p| p.metadata.name.as_deref() == Some("p1"))
    );
    let err = pods.get("p1").await.expect_err("deleted pod must be gone");
    assert_eq!(api_error(err), (404, "NotFound".into()));
    assert_eq!(pods.get_opt("p1").await?, None);
    Ok(())
}

#[tokio::test]
async fn conflicts_are_409_status_objects() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "web");
    let first = pods
        .create(&PostParams::default(), &pod("web", "p1").build())
        .await?;

    let dup = pods
        .create(&PostParams::default(), &pod("web", "p1").build())
        .await;
    assert_eq!(
        api_error(dup.expect_err("duplicate create")),
        (409, "AlreadyExists".into())
    );

    // Two writers from the same read: the second is stale.
    let mut a = first.clone();
    a.metadata.labels = Some(BTreeMap::from([("w".into(), "a".into())]));
    pods.replace("p1", &PostParams::default(), &a).await?;
    let mut b = first.clone();
    b.metadata.labels = Some(BTreeMap::from([("w".into(), "b".into())]));
    let stale = pods.replace("p1", &PostParams::default(), &b).await;
    assert_eq!(
        api_error(stale.expect_err("stale replace")),
        (409, "Conflict".into())
    );

    // A merge patch carrying a stale resourceVersion is refused too.
    let patch = json!({"metadata": {"resourceVersion": first.metadata.resource_version, "labels": {"w": "c"}}});
    let stale = pods
        .patch("p1", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert_eq!(
        api_error(stale.expect_err("stale patch")),
        (409, "Conflict".into())
    );

    // Leader election shape: Lease replace with a stale rv loses.
    let leases: Api<Lease> = Api::namespaced(client, "spillway");
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}),
    )?;
    let l1 = leases.create(&PostParams::default(), &lease).await?;
    let mut l2 = l1.clone();
    l2.spec.get_or_insert_default().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &l2)
        .await?;
    let mut l3 = l1.clone();
    l3.spec.get_or_insert_default().holder_identity = Some("c".into());
    let lost = leases.replace("leader", &PostParams::default(), &l3).await;
    assert_eq!(
        api_error(lost.expect_err("stale lease")),
        (409, "Conflict".into())
    );
    assert_eq!(
        leases
            .get("leader")
            .await?
            .spec
            .and_then(|s| s.holder_identity)
            .as_deref(),
        Some("b")
    );

    // Not found carries details of the resource.
    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "pods \"nope\" not found");
            assert_eq!(s.details.map(|d| d.name).as_deref(), Some("nope"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn resource_version_is_global_and_strictly_increasing() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let nodes: Api<Node> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client, "b");
    let mut seen = Vec::new();
    seen.push(rv_of(
        &pods
            .create(&PostParams::default(), &pod("a", "p").build())
            .await?
            .metadata,
    ));
    seen.push(rv_of(
        &nodes
            .create(&PostParams::default(), &node("n1"))
            .await?
            .metadata,
    ));
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}}))?;
    seen.push(rv_of(
        &cms.create(&PostParams::default(), &cm).await?.metadata,
    ));
    let patched = nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    seen.push(rv_of(&patched.metadata));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {seen:?}"
    );
    assert_eq!(srv.resource_version(), seen[3]);
    // List rv is the global rv at the time of the list.
    let list = nodes.list(&ListParams::default()).await?;
    assert_eq!(list.metadata.resource_version, Some(seen[3].to_string()));
    Ok(())
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() -> TestResult {
    let srv = TestApiServer::start().await;
    srv.insert(
        &pod("web", "a")
            .label("app", "web")
            .label("tier", "fe")
            .node("n1")
            .ready()
            .build(),
    );
    srv.insert(
        &pod("web", "b")
            .label("app", "db")
            .node("n2")
            .phase("Pending")
            .build(),
    );
    srv.insert(
        &pod("jobs", "c")
            .label("app", "batch")
            .phase("Succeeded")
            .build(),
    );
    let all: Api<Pod> = Api::all(srv.client());
    let web: Api<Pod> = Api::namespaced(srv.client(), "web");

    let q = |api: &Api<Pod>, lp: ListParams| {
        let api = api.clone();
        async move { api.list(&lp).await.map(|l| names(&l.items)) }
    };
    assert_eq!(
        q(&all, ListParams::default()).await?,
        ["c", "a", "b"],
        "ns/name order"
    );
    assert_eq!(q(&web, ListParams::default()).await?, ["a", "b"]);
    assert_eq!(
        q(&all, ListParams::default().labels("app=web")).await?,
        ["a"]
    );
    assert_eq!(
        q(&all, ListParams::default().labels("app==web")).await?,
        ["a"]
    );
    assert_eq!(
        q(&all, ListParams::default().labels("app!=web")).await?,
        ["c", "b"]
    );
    assert_eq!(
        q(&all, ListParams::default().labels("app in (web, db)")).await?,
        ["a", "b"]
    );
    assert_eq!(
        q(&all, ListParams::default().labels("app notin (web,db)")).await?,
        ["c"]
    );
    assert_eq!(q(&all, ListParams::default().labels("tier")).await?, ["a"]);
    assert_eq!(
        q(&all, ListParams::default().labels("!tier")).await?,
        ["c", "b"]
    );
    assert_eq!(
        q(&all, ListParams::default().labels("app,tier=fe")).await?,
        ["a"]
    );
    assert_eq!(
        q(&all, ListParams::default().fields("spec.nodeName=n1")).await?,
        ["a"]
    );
    assert_eq!(
        q(&all, ListParams::default().fields("spec.nodeName=")).await?,
        ["c"]
    );
    assert_eq!(
        q(&all, ListParams::default().fields("status.phase==Running")).await?,
        ["a"]
    );
    assert_eq!(
        q(
            &all,
            ListParams::default().fields("status.phase!=Succeeded,metadata.namespace=web")
        )
        .await?,
        ["a", "b"]
    );
    assert_eq!(
        q(&all, ListParams::default().fields("metadata.name=b")).await?,
        ["b"]
    );

    let bad = all
        .list(&ListParams::default().fields("spec.hostname=x"))
        .await;
    assert_eq!(
        api_error(bad.expect_err("unsupported field")),
        (400, "BadRequest".into())
    );
    let bad = all.list(&ListParams::default().labels("app in (web")).await;
    assert_eq!(
        api_error(bad.expect_err("malformed selector")),
        (400, "BadRequest".into())
    );

    // Items come without kind/apiVersion, as from the real server; the list has them.
    let client = srv.client();
    let raw: Value = client
        .request(Request::get("/api/v1/namespaces/web/pods").body(Vec::new())?)
        .await?;
    assert_eq!(raw["kind"], "PodList");
    assert_eq!(raw["apiVersion"], "v1");
    assert!(raw["metadata"]["resourceVersion"].is_string());
    assert!(raw["items"][0].get("kind").is_none());
    Ok(())
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() -> TestResult {
    let srv = TestApiServer::start().await;
    for i in 0..5 {
        srv.insert(&pod("ns", &format!("p{i}")).build());
    }
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    let first = pods.list(&ListParams::default().limit(2)).await?;
    assert_eq!(names(&first.items), ["p0", "p1"]);
    let token = first.metadata.continue_.clone().expect("continue token");
    // A write between pages: later pages keep the first page's rv.
    srv.insert(&pod("ns", "p9").build());
    let second = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    assert_eq!(names(&second.items), ["p2", "p3"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let third = pods
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap_or("")),
        )
        .await?;
    assert_eq!(names(&third.items), ["p4", "p9"]);
    assert!(third.metadata.continue_.is_none());

    // A token older than the retained history is 410 Expired.
    srv.compact_history();
    let old = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await;
    assert_eq!(
        api_error(old.expect_err("expired token")),
        (410, "Expired".into())
    );

    // A cluster-wide list pages across namespaces in (namespace, name) order.
    srv.insert(&pod("a", "x").build());
    srv.insert(&pod("zz", "y").build());
    let all: Api<Pod> = Api::all(srv.client());
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = all
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await?;
        seen.extend(page.items.iter().map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        }));
        match page.metadata.continue_ {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "a/x", "ns/p0", "ns/p1", "ns/p2", "ns/p3", "ns/p4", "ns/p9", "zz/y"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn patch_kinds_on_main_resource() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut p = pod("ns", "p").label("keep", "1").label("drop", "1").build();
    p.spec
        .get_or_insert_default()
        .containers
        .push(serde_json::from_value(
            json!({"name": "side", "image": "envoy:1"}),
        )?);
    pods.create(&PostParams::default(), &p).await?;

    // Merge patch: add a label, null deletes one.
    let merged = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"new": "1", "drop": null}}})),
        )
        .await?;
    let labels = merged.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["keep", "new"]);

    // Strategic merge: containers merge by name, so patching one image keeps the other container.
    let strategic = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "side", "image": "envoy:2"}]}}),
            ),
        )
        .await?;
    let containers = strategic.spec.clone().unwrap_or_default().containers;
    let images: Vec<_> = containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_deref()))
        .collect();
    assert_eq!(
        images,
        [("app", Some("nginx:1")), ("side", Some("envoy:2"))]
    );
    assert_eq!(
        strategic.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    // Pod spec is immutable apart from images and a few fields: 422 Invalid.
    let forbidden = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
        )
        .await;
    assert_eq!(
        api_error(forbidden.expect_err("spec.nodeName is immutable")),
        (422, "Invalid".into())
    );

    // PUT of a freshly built pod (no server defaults in it) is defaulted
    // before the immutability check, as on the real server.
    let mut fresh = pod("ns", "p").label("keep", "1").label("new", "1").build();
    fresh.spec = strategic.spec.clone().map(|mut s| {
        s.scheduler_name = None;
        s.termination_grace_period_seconds = None;
        s
    });
    let put = pods.replace("p", &PostParams::default(), &fresh).await?;
    assert_eq!(
        put.spec.and_then(|s| s.scheduler_name).as_deref(),
        Some("default-scheduler")
    );

    // Main-resource patches ignore .status.
    let ignored = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    assert_eq!(
        ignored.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );

    // JSON patch (kube-rs needs its `jsonpatch` feature for Patch::Json; send it raw).
    let ops = json!([
        {"op": "test", "path": "/metadata/labels/keep", "value": "1"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "x"}},
        {"op": "replace", "path": "/metadata/labels/keep", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/new"},
    ]);
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/namespaces/ns/pods/p")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops)?)?;
    let jp: Pod = client.request(req).await?;
    assert_eq!(
        jp.metadata.labels,
        Some(BTreeMap::from([("keep".into(), "2".into())]))
    );
    assert_eq!(
        jp.metadata
            .annotations
            .unwrap_or_default()
            .get("a~b/c")
            .map(String::as_str),
        Some("x")
    );
    let failing = json!([{"op": "test", "path": "/metadata/labels/keep", "value": "nope"}]);
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/namespaces/ns/pods/p")
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&failing)?)?;
    let failed = client.request::<Pod>(req).await;
    assert_eq!(
        api_error(failed.expect_err("failed test op")),
        (422, "Invalid".into())
    );

    // Unknown patch content type: 415.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/namespaces/ns/pods/p")
        .header("content-type", "text/plain")
        .body(b"{}".to_vec())?;
    let unsupported = client.request::<Pod>(req).await;
    assert_eq!(
        api_error(unsupported.expect_err("415")),
        (415, "UnsupportedMediaType".into())
    );

    // Patching something that does not exist: 404 (only apply creates).
    let missing = pods
        .patch("ghost", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(
        api_error(missing.expect_err("404")),
        (404, "NotFound".into())
    );

    let kinds: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH)
        .filter_map(|r| r.content_type)
        .collect();
    assert!(kinds.contains(&"application/merge-patch+json".to_string()));
    assert!(kinds.contains(&"application/strategic-merge-patch+json".to_string()));
    Ok(())
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() -> TestResult {
    let srv = TestApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client(), "ns");
    let pp = PatchParams::apply("spillway").force();
    let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
    let created = cms.patch("cfg", &pp, &Patch::Apply(&desired)).await?;
    assert_eq!(
        created.data,
        Some(BTreeMap::from([("a".into(), "1".into())]))
    );
    assert!(created.metadata.uid.is_some());

    let more = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"b": "2"}});
    let merged = cms.patch("cfg", &pp, &Patch::Apply(&more)).await?;
    assert_eq!(
        merged.data,
        Some(BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "2".into())
        ]))
    );
    assert_eq!(merged.metadata.uid, created.metadata.uid);

    let last = srv.requests().pop().expect("a request");
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(last.param("fieldManager").as_deref(), Some("spillway"));
    assert_eq!(last.param("force").as_deref(), Some("true"));

    // Apply without a field manager is refused, like the real server.
    let no_manager = cms
        .patch("cfg", &PatchParams::default(), &Patch::Apply(&more))
        .await;
    assert_eq!(
        api_error(no_manager.expect_err("fieldManager required")),
        (400, "BadRequest".into())
    );
    Ok(())
}

#[tokio::test]
async fn status_subresource_changes_only_status() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    pods.create(&PostParams::default(), &pod("ns", "p").build())
        .await?;

    // Merge patch on /status: phase changes, a smuggled label does not.
    let patch = json!({"metadata": {"labels": {"sneaky": "1"}}, "status": {"phase": "Running", "podIP": "10.0.0.7"}});
    let p = pods
        .patch_status("p", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert!(p.metadata.labels.unwrap_or_default().is_empty());

    // Strategic merge on /status merges conditions by type.
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}),
        ),
    )
    .await?;
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
        )
        .await?;
    let conds: Vec<_> = p
        .status
        .clone()
        .unwrap_or_default()
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(conds, ["PodScheduled", "Ready"]);

    // Apply on /status.
    let applied = pods
        .patch_status(
            "p",
            &PatchParams::apply("provider"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Pod", "status": {"hostIP": "10.1.1.1"}}),
            ),
        )
        .await?;
    assert_eq!(
        applied.status.as_ref().and_then(|s| s.host_ip.as_deref()),
        Some("10.1.1.1")
    );
    assert_eq!(
        applied.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );

    // replace_status ignores spec/metadata changes; replace ignores status changes.
    let mut obj = pods.get("p").await?;
    obj.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
    obj.status.get_or_insert_default().phase = Some("Succeeded".into());
    let after_status = pods
        .replace_status("p", &PostParams::default(), &obj)
        .await?;
    assert_eq!(
        after_status
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert!(
        after_status
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .is_empty()
    );
    let mut obj = after_status.clone();
    obj.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
    obj.status.get_or_insert_default().phase = Some("Failed".into());
    let after_main = pods.replace("p", &PostParams::default(), &obj).await?;
    assert_eq!(
        after_main.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(
        after_main
            .metadata
            .labels
            .unwrap_or_default()
            .get("x")
            .map(String::as_str),
        Some("y")
    );

    // Nodes: status via the subresource, cluster-scoped.
    let nodes: Api<Node> = Api::all(client);
    nodes.create(&PostParams::default(), &node("n1")).await?;
    let n = nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": {"cpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await?;
    assert!(
        n.status
            .and_then(|s| s.capacity)
            .is_some_and(|c| c.contains_key("cpu"))
    );
    assert_eq!(
        nodes.get_status("n1").await?.metadata.name.as_deref(),
        Some("n1")
    );
    Ok(())
}

#[tokio::test]
async fn binding_assigns_node_once() -> TestResult {
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    pods.create(&PostParams::default(), &pod("ns", "p").build())
        .await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "spillway-aci"}});
    let status: Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding)
        .await?;
    assert_eq!(status["status"], "Success");
    let bound = pods.get("p").await?;
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("spillway-aci")
    );
    let scheduled = bound
        .status
        .unwrap_or_default()
        .conditions
        .unwrap_or_default();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );

    let again = pods
        .create_subresource::<_, Value>("binding", "p", &PostParams::default(), &binding)
        .await;
    assert_eq!(
        api_error(again.expect_err("already bound")),
        (409, "Conflict".into())
    );
    let mut ghost_binding = binding.clone();
    ghost_binding["metadata"]["name"] = json!("ghost");
    let ghost = pods
        .create_subresource::<_, Value>("binding", "ghost", &PostParams::default(), &ghost_binding)
        .await;
    assert_eq!(
        api_error(ghost.expect_err("no such pod")),
        (404, "NotFound".into())
    );
    // The binding must name the pod in the URL.
    let mismatch = pods
        .create_subresource::<_, Value>("binding", "ghost", &PostParams::default(), &binding)
        .await;
    assert_eq!(
        api_error(mismatch.expect_err("name mismatch")),
        (400, "BadRequest".into())
    );
    Ok(())
}

#[tokio::test]
async fn eviction_respects_pod_disruption_budgets() -> TestResult {
    let srv = TestApiServer::start().await;
    // 429 is retried by kube-rs' default client; assert on the first answer.
    let client = srv.client_without_retries();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "web");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client, "web");
    for name in ["w1", "w2", "w3"] {
        srv.insert(
            &pod("web", name)
                .label("app", "web")
                .node("n1")
                .ready()
                .build(),
        );
    }
    srv.insert(
        &pod("web", "w4")
            .label("app", "web")
            .node("n1")
            .phase("Running")
            .build(),
    ); // not Ready
    srv.insert(&pod("web", "pending").label("app", "web").build());
    pdbs.create(
        &PostParams::default(),
        &pdb("web", "web-pdb", "web", json!({"minAvailable": 3})),
    )
    .await?;

    // 3 healthy, 3 required: evicting a healthy pod would violate it.
    match pods.evict("w1", &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
            let cause = s
                .details
                .and_then(|d| d.causes.into_iter().next())
                .expect("cause");
            assert_eq!(cause.reason, "DisruptionBudget");
            assert!(
                cause
                    .message
                    .contains("needs 3 healthy pods and has 3 currently"),
                "{}",
                cause.message
            );
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert!(
        srv.get::<Pod>("web", "w1")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    );
    // Unhealthy pods may go while the budget is met (IfHealthyBudget).
    pods.evict("w4", &EvictParams::default()).await?;
    // Pending pods ignore PDBs.
    pods.evict("pending", &EvictParams::default()).await?;
    assert!(
        srv.get::<Pod>("web", "pending").is_none(),
        "unbound pod deleted at once"
    );

    // maxUnavailable 50%: expected pods are w1..w4 (terminating w4 still
    // counts, like a controller's replicas), 2 of 4 may be unavailable, so
    // 2 must stay healthy; 3 are.
    pdbs.patch(
        "web-pdb",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minAvailable": null, "maxUnavailable": "50%"}})),
    )
    .await?;
    srv.sync_disruption_budgets();
    let synced = srv
        .get::<PodDisruptionBudget>("web", "web-pdb")
        .and_then(|p| p.status)
        .expect("PDB status");
    assert_eq!(
        (
            synced.current_healthy,
            synced.desired_healthy,
            synced.expected_pods,
            synced.disruptions_allowed
        ),
        (3, 2, 4, 1)
    );
    let ok = pods.evict("w1", &EvictParams::default()).await?;
    assert_eq!(ok.code, 201);
    // Bound pod: graceful deletion, still present with deletionTimestamp.
    let evicted = srv
        .get::<Pod>("web", "w1")
        .expect("terminating pod still present");
    assert!(evicted.metadata.deletion_timestamp.is_some());
    assert_eq!(evicted.metadata.deletion_grace_period_seconds, Some(30));
    // Terminating pods are not healthy: 2 healthy left, 2 required.
    let third = pods.evict("w2", &EvictParams::default()).await;
    assert_eq!(
        api_error(third.expect_err("budget exhausted")),
        (429, "TooManyRequests".into())
    );

    let missing = pods.evict("ghost", &EvictParams::default()).await;
    assert_eq!(
        api_error(missing.expect_err("no such pod")),
        (404, "NotFound".into())
    );
    let req = srv
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/w1/eviction"))
        .expect("eviction request");
    assert_eq!(req.method, Method::POST);
    Ok(())
}

#[tokio::test]
async fn eviction_delete_options_need_the_real_field_name() -> TestResult {
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    srv.insert(&pod("ns", "a").node("n1").ready().build());
    srv.insert(&pod("ns", "b").node("n1").ready().build());

    // kube-rs sends `delete_options` (snake case), which the API server does
    // not know: the grace period is ignored and the pod's own (30 s) applies.
    let ep = EvictParams {
        delete_options: Some(DeleteParams::default().grace_period(0)),
        ..Default::default()
    };
    pods.evict("a", &ep).await?;
    let body: Value = serde_json::from_str(
        &srv.requests()
            .last()
            .map(|r| r.body.clone())
            .unwrap_or_default(),
    )?;
    assert!(body.get("delete_options").is_some() && body.get("deleteOptions").is_none());
    assert!(
        srv.get::<Pod>("ns", "a")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    );

    // A real policy/v1 Eviction body with deleteOptions is honoured.
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "b", "namespace": "ns"}, "deleteOptions": {"gracePeriodSeconds": 0}});
    let st: Value = pods
        .create_subresource("eviction", "b", &PostParams::default(), &eviction)
        .await?;
    assert_eq!(st["status"], "Success");
    assert!(srv.get::<Pod>("ns", "b").is_none());
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "c", "finalizers": ["spillway.io/cleanup"]}}),
    )?;
    cms.create(&PostParams::default(), &cm).await?;
    let mut events = cms
        .watch(&WatchParams::default(), &srv.resource_version().to_string())
        .await?
        .boxed();

    let resp = cms.delete("c", &DeleteParams::default()).await?;
    let held = resp
        .left()
        .expect("object returned while finalizers hold it");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(cms.get("c").await?.metadata.deletion_timestamp.is_some());

    // No new finalizers on a terminating object.
    let add = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["spillway.io/cleanup", "other"]}})),
        )
        .await;
    assert_eq!(
        api_error(add.expect_err("no new finalizers")),
        (422, "Invalid".into())
    );

    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(cms.get_opt("c").await?, None);

    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(WAIT, events.try_next()).await?? {
            Some(WatchEvent::Modified(_)) => kinds.push("MODIFIED"),
            Some(WatchEvent::Deleted(_)) => kinds.push("DELETED"),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["MODIFIED", "DELETED"]);

    // A pod with a finalizer: delete with grace 0 keeps it until the finalizer goes.
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    srv.insert(&pod("ns", "fp").node("n1").finalizer("x/y").ready().build());
    pods.delete("fp", &DeleteParams::default().grace_period(0))
        .await?;
    assert!(srv.get::<Pod>("ns", "fp").is_some());
    pods.patch(
        "fp",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await?;
    assert!(srv.get::<Pod>("ns", "fp").is_none());
    Ok(())
}

#[tokio::test]
async fn graceful_pod_deletion_ends_by_timer_or_kubelet() -> TestResult {
    // Default: a timer removes the pod when the grace period ends.
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    srv.insert(&pod("ns", "p").node("n1").ready().build());
    let resp = pods
        .delete("p", &DeleteParams::default().grace_period(1))
        .await?;
    let terminating = resp.left().expect("terminating pod returned");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(1));
    assert!(srv.get::<Pod>("ns", "p").is_some());
    assert!(
        eventually(|| srv.get::<Pod>("ns", "p").is_none()).await,
        "removed after grace"
    );

    // Kubelet mode: the pod waits for a grace-0 delete.
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    srv.insert(&pod("ns", "p").node("n1").ready().build());
    pods.delete("p", &DeleteParams::default()).await?;
    let p = srv.get::<Pod>("ns", "p").expect("still terminating");
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    // A longer grace cannot extend it; grace 0 removes it.
    pods.delete("p", &DeleteParams::default().grace_period(60))
        .await?;
    assert_eq!(
        srv.get::<Pod>("ns", "p")
            .and_then(|p| p.metadata.deletion_grace_period_seconds),
        Some(30)
    );
    let gone = pods
        .delete("p", &DeleteParams::default().grace_period(0))
        .await?;
    assert!(gone.left().is_some());
    assert!(srv.get::<Pod>("ns", "p").is_none());

    // Preconditions.
    srv.insert(&pod("ns", "q").build());
    let wrong = pods
        .delete(
            "q",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("nope".into()),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        api_error(wrong.expect_err("uid precondition")),
        (409, "Conflict".into())
    );
    Ok(())
}

#[tokio::test]
async fn watch_streams_events_in_order_with_selector_transitions() -> TestResult {
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "w");
    srv.insert(&pod("other", "elsewhere").label("app", "web").build());
    let start = pods
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .expect("list rv");
    let mut all = pods.watch(&WatchParams::default(), &start).await?.boxed();
    let mut web = pods
        .watch(&WatchParams::default().labels("app=web"), &start)
        .await?
        .boxed();

    pods.create(
        &PostParams::default(),
        &pod("w", "p").label("app", "web").build(),
    )
    .await?;
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await?;
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await?;
    pods.delete("p", &DeleteParams::default()).await?;

    async fn take(
        stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
        n: usize,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("event in time")
                .expect("open stream")
                .expect("event");
            let (ty, p) = match ev {
                WatchEvent::Added(p) => ("ADDED", p),
                WatchEvent::Modified(p) => ("MODIFIED", p),
                WatchEvent::Deleted(p) => ("DELETED", p),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("error event {e:?}"),
            };
            out.push((ty.to_string(), rv_of(&p.metadata)));
        }
        out
    }
    let seen = take(&mut all, 4).await;
    let types: Vec<_> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]);
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "rvs increase: {seen:?}"
    );
    let filtered = take(&mut web, 4).await;
    let types: Vec<_> = filtered.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["ADDED", "DELETED", "ADDED", "DELETED"],
        "label leaves and re-enters the selection"
    );

    // rv "0" starts with the current state as ADDED events; namespaces are honoured.
    srv.insert(&pod("w", "existing").build());
    let mut from_zero = pods.watch(&WatchParams::default(), "0").await?.boxed();
    match tokio::time::timeout(WAIT, from_zero.try_next()).await?? {
        Some(WatchEvent::Added(p)) => assert_eq!(p.metadata.name.as_deref(), Some("existing")),
        other => panic!("expected ADDED existing, got {other:?}"),
    }
    let req = srv
        .requests()
        .into_iter()
        .rfind(|r| r.is_watch())
        .expect("watch request");
    assert_eq!(req.param("resourceVersion").as_deref(), Some("0"));
    assert_eq!(req.param("timeoutSeconds").as_deref(), Some("290"));
    Ok(())
}

#[tokio::test]
async fn watch_sends_bookmarks_and_honours_timeout() -> TestResult {
    let srv = TestApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    let nodes: Api<Node> = Api::all(srv.client());
    let rv = srv.resource_version().to_string();
    let mut stream = nodes.watch(&WatchParams::default(), &rv).await?.boxed();
    nodes.create(&PostParams::default(), &node("n1")).await?;
    let mut bookmark_rv = None;
    while bookmark_rv.is_none() {
        match tokio::time::timeout(WAIT, stream.try_next()).await?? {
            Some(WatchEvent::Bookmark(b)) => bookmark_rv = Some(b.metadata.resource_version),
            Some(WatchEvent::Added(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        bookmark_rv,
        Some(srv.resource_version().to_string()),
        "bookmark carries the progressed rv"
    );

    // timeoutSeconds ends the stream.
    let mut short = nodes
        .watch(
            &WatchParams::default().timeout(1),
            &srv.resource_version().to_string(),
        )
        .await?
        .boxed();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(ev) = short.next().await {
            ev?;
        }
        Ok::<_, kube::Error>(())
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "stream ended by the server: {ended:?}"
    );
    Ok(())
}

#[tokio::test]
async fn watch_from_expired_resource_version_gets_410() -> TestResult {
    let srv = TestApiServer::builder().history_limit(3).start().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client(), "ns");
    let start = srv.resource_version().to_string();
    for i in 0..5 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}}))?;
        cms.create(&PostParams::default(), &cm).await?;
    }
    // Only the last 3 changes are retained.
    let mut old = cms.watch(&WatchParams::default(), &start).await?.boxed();
    match tokio::time::timeout(WAIT, old.try_next()).await?? {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410 ERROR event, got {other:?}"),
    }
    let recent = (srv.resource_version() - 2).to_string();
    let mut ok = cms.watch(&WatchParams::default(), &recent).await?.boxed();
    match tokio::time::timeout(WAIT, ok.try_next()).await?? {
        Some(WatchEvent::Added(c)) => assert_eq!(c.metadata.name.as_deref(), Some("c3")),
        other => panic!("expected replay of c3, got {other:?}"),
    }

    srv.compact_history();
    let mut compacted = cms.watch(&WatchParams::default(), &recent).await?.boxed();
    assert!(matches!(
        tokio::time::timeout(WAIT, compacted.try_next()).await??,
        Some(WatchEvent::Error(e)) if e.code == 410
    ));

    // expire_watches ends open watches with a 410 too.
    let mut live = cms
        .watch(&WatchParams::default(), &srv.resource_version().to_string())
        .await?
        .boxed();
    assert!(srv.wait_for_watches(1, WAIT).await);
    srv.expire_watches();
    assert!(matches!(
        tokio::time::timeout(WAIT, live.try_next()).await??,
        Some(WatchEvent::Error(e)) if e.code == 410
    ));
    Ok(())
}

/// Runs a reflector over pods in `ns`; returns its reader.
fn spawn_reflector(api: Api<Pod>) -> (reflector::Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store::<Pod>();
    let stream = reflector(writer, watcher(api, watcher::Config::default()));
    let task = tokio::spawn(async move {
        // Errors (e.g. the 410) are retried by the watcher itself.
        stream.default_backoff().for_each(|_| async {}).await;
    });
    (reader, task)
}

fn state_of(reader: &reflector::Store<Pod>) -> BTreeMap<String, String> {
    reader
        .state()
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn server_state(srv: &TestApiServer, ns: &str) -> BTreeMap<String, String> {
    srv.list::<Pod>(Some(ns))
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reflector_store_converges() -> TestResult {
    let srv = TestApiServer::start().await;
    for i in 0..3 {
        srv.insert(&pod("r", &format!("seed{i}")).build());
    }
    srv.insert(&pod("other", "not-mine").build());
    let pods: Api<Pod> = Api::namespaced(srv.client(), "r");
    let (reader, task) = spawn_reflector(pods.clone());
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    assert_eq!(state_of(&reader), server_state(&srv, "r"));

    pods.create(&PostParams::default(), &pod("r", "new").build())
        .await?;
    pods.patch(
        "seed0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await?;
    pods.delete("seed1", &DeleteParams::default()).await?;
    srv.set_status::<Pod>("r", "seed2", json!({"phase": "Running"}));
    assert!(
        eventually(|| state_of(&reader) == server_state(&srv, "r")).await,
        "converged: {:?} vs {:?}",
        state_of(&reader),
        server_state(&srv, "r")
    );
    assert_eq!(state_of(&reader).len(), 3);
    task.abort();
    Ok(())
}

#[tokio::test]
async fn watcher_relists_after_410_without_losing_objects() -> TestResult {
    let srv = TestApiServer::start().await;
    for i in 0..3 {
        srv.insert(&pod("r", &format!("p{i}")).build());
    }
    let pods: Api<Pod> = Api::namespaced(srv.client(), "r");
    let (reader, task) = spawn_reflector(pods);
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    assert!(srv.wait_for_watches(1, WAIT).await);

    // The watch drops (as on a timeout); its re-watch is held back while the
    // cluster changes and the history is compacted, so the watcher's rv is
    // too old by the time the re-watch is served: 410 → relist.
    srv.inject(
        Fault::latency("/api/v1/namespaces/r/pods", Duration::from_millis(500)).watch_only(),
    );
    srv.clear_requests();
    srv.close_watches();
    assert!(
        eventually(|| srv.requests().iter().any(|r| r.is_watch())).await,
        "re-watch arrived"
    );
    srv.insert(&pod("r", "born-in-gap").build());
    srv.modify::<Pod>("r", "p0", |p| {
        p.metadata.labels = Some(BTreeMap::from([("changed".into(), "in-gap".into())]));
    });
    srv.remove::<Pod>("r", "p1");
    srv.compact_history();

    let converged = eventually(|| state_of(&reader) == server_state(&srv, "r")).await;
    assert!(
        converged,
        "reflector {:?} vs server {:?}",
        state_of(&reader),
        server_state(&srv, "r")
    );
    assert_eq!(
        state_of(&reader).keys().collect::<Vec<_>>(),
        ["born-in-gap", "p0", "p2"]
    );
    let relisted = srv
        .requests()
        .iter()
        .any(|r| !r.is_watch() && r.method == Method::GET && r.path == "/api/v1/namespaces/r/pods");
    assert!(relisted, "watcher relisted after 410: {:?}", srv.requests());

    // And after an explicit 410 on the open watch, later changes still arrive.
    assert!(srv.wait_for_watches(1, WAIT).await);
    srv.expire_watches();
    srv.insert(&pod("r", "after-expire").build());
    assert!(eventually(|| state_of(&reader) == server_state(&srv, "r")).await);
    assert!(state_of(&reader).contains_key("after-expire"));
    task.abort();
    Ok(())
}

#[tokio::test]
async fn fault_injection_and_request_log() -> TestResult {
    let srv = TestApiServer::start().await;
    srv.insert(&pod("ns", "p").build());
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    srv.clear_requests();

    // kube-rs' default client retries 503 by itself.
    srv.inject(Fault::status("/api/v1/namespaces/ns/pods/p", 503).times(2));
    pods.get("p").await?;
    let gets = srv
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/ns/pods/p")
        .count();
    assert_eq!(gets, 3, "two faults then success");

    // 500 is not retried and surfaces as a Status.
    srv.inject(Fault::status("/api/v1/namespaces/ns/pods/*", 500).method(Method::GET));
    assert_eq!(
        api_error(pods.get("p").await.expect_err("500")),
        (500, "InternalError".into())
    );
    pods.get("p").await?;

    // Latency only.
    srv.inject(Fault::latency(
        "/api/v1/namespaces/ns/pods/p",
        Duration::from_millis(200),
    ));
    let t0 = tokio::time::Instant::now();
    pods.get("p").await?;
    assert!(t0.elapsed() >= Duration::from_millis(200));

    // The log records method, path, query and body.
    srv.clear_requests();
    pods.patch("p", &PatchParams::apply("mgr"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {"a": "b"}}})))
        .await?;
    let log = srv.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, Method::PATCH);
    assert_eq!(log[0].path, "/api/v1/namespaces/ns/pods/p");
    assert_eq!(log[0].param("fieldManager").as_deref(), Some("mgr"));
    assert!(log[0].body.contains("\"annotations\""));
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_400_not_a_crash() -> TestResult {
    let srv = TestApiServer::builder()
        .max_body_bytes(64 * 1024)
        .start()
        .await;
    let client = srv.client();
    let send = |method: Method, uri: &str, ct: &str, body: &[u8]| {
        let client = client.clone();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ct)
            .body(body.to_vec());
        async move { client.request::<Value>(req.expect("request builds")).await }
    };
    let cases: Vec<(Method, &str, &str, Vec<u8>, u16)> = vec![
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            b"{not json".to_vec(),
            400,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            b"[1,2]".to_vec(),
            400,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            br#"{"kind":"Node","metadata":{"name":"x"}}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec(),
            422,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            br#"{"metadata":{}}"#.to_vec(),
            422,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            vec![b' '; 70 * 1024],
            413,
        ),
        (
            Method::GET,
            "/api/v1/namespaces/ns/widgets",
            "application/json",
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            "/api/v1/nodes/n1/frobnicate",
            "application/json",
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            "/api/v1/namespaces/ns/pods?watch=true&resourceVersion=abc",
            "application/json",
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            "/api/v1/namespaces/ns/pods?limit=-1",
            "application/json",
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            "/api/v1/namespaces/ns/pods?continue=zz",
            "application/json",
            Vec::new(),
            400,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods?dryRun=All",
            "application/json",
            b"{}".to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/ns/pods",
            "application/json",
            b"{}".to_vec(),
            405,
        ),
        (
            Method::DELETE,
            "/api/v1/namespaces/ns/pods/x",
            "application/json",
            b"{\"gracePeriodSeconds\":\"soon\"}".to_vec(),
            400,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/ns/pods/x/eviction",
            "application/json",
            b"null".to_vec(),
            400,
        ),
    ];
    for (method, uri, ct, body, code) in cases {
        let got = send(method.clone(), uri, ct, &body).await;
        match got {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, code, "{method} {uri}: {s:?}"),
            other => panic!("{method} {uri}: expected {code}, got {other:?}"),
        }
    }
    // Still serving.
    let version: Value = client
        .request(Request::get("/version").body(Vec::new())?)
        .await?;
    assert_eq!(version["minor"], "33");
    Ok(())
}

#[tokio::test]
async fn other_kinds_round_trip() -> TestResult {
    let srv = TestApiServer::start().await;
    let client = srv.client();

    // generateName.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut p = pod("ns", "x").build();
    p.metadata.name = None;
    p.metadata.generate_name = Some("burst-".into());
    let made = pods.create(&PostParams::default(), &p).await?;
    let name = made.metadata.name.unwrap_or_default();
    assert!(name.starts_with("burst-") && name.len() == 11, "{name}");

    // Secrets: stringData folds into base64 data.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ns");
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "hello"}}))?;
    let s = secrets.create(&PostParams::default(), &s).await?;
    assert_eq!(
        s.data.and_then(|d| d.get("k").map(|b| b.0.clone())),
        Some(b"hello".to_vec())
    );
    assert!(s.string_data.is_none());

    // core/v1 and events.k8s.io/v1 events, with field selectors.
    let events: Api<Event> = Api::namespaced(client.clone(), "ns");
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "reason": "SpillwayWaiting", "type": "Normal",
        "involvedObject": {"kind": "Pod", "name": "x", "namespace": "ns"}, "message": "waiting for a VM",
    }))?;
    events.create(&PostParams::default(), &ev).await?;
    let found = events
        .list(&ListParams::default().fields("involvedObject.name=x,reason=SpillwayWaiting"))
        .await?;
    assert_eq!(found.items.len(), 1);
    let ev2: Api<EventsV1> = Api::namespaced(client.clone(), "ns");
    let e: EventsV1 = serde_json::from_value(
        json!({"metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Burst", "action": "Spill", "reportingController": "spillway", "reportingInstance": "spillway-0", "regarding": {"kind": "Pod", "name": "x"}}),
    )?;
    ev2.create(&PostParams::default(), &e).await?;
    assert_eq!(
        ev2.list(&ListParams::default().fields("regarding.name=x"))
            .await?
            .items
            .len(),
        1
    );

    // Namespaces (cluster-scoped) and delete_collection.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "web"}}))?,
    )
    .await?;
    assert_eq!(nss.list(&ListParams::default()).await?.items.len(), 1);
    srv.insert(&pod("ns", "l1").label("gc", "yes").build());
    srv.insert(&pod("ns", "l2").label("gc", "yes").build());
    let deleted = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("gc=yes"),
        )
        .await?;
    assert_eq!(deleted.left().map(|l| l.items.len()), Some(2));
    assert_eq!(names(&srv.list::<Pod>(Some("ns"))), [name]);
    Ok(())
}

#[tokio::test]
async fn metadata_only_requests_and_streaming_lists() -> TestResult {
    let srv = TestApiServer::start().await;
    srv.insert(&pod("m", "a").label("app", "web").build());
    let client = srv.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "m");

    // PartialObjectMetadata: get, list, and a metadata watcher.
    let meta = pods.get_metadata("a").await?;
    assert_eq!(
        meta.metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(
        pods.list_metadata(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    let raw: Value = client
        .request(
            Request::get("/api/v1/namespaces/m/pods")
                .header(
                    "accept",
                    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                )
                .body(Vec::new())?,
        )
        .await?;
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata");
    assert!(raw["items"][0].get("spec").is_none());
    let meta_api: Api<kube::core::PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), "m");
    let mut mw = watcher(meta_api, watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, mw.try_next()).await?? {
            Some(watcher::Event::InitApply(o)) => seen.push(o.metadata.name.unwrap_or_default()),
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => panic!("metadata watcher ended"),
        }
    }
    assert_eq!(seen, ["a"]);
    let metadata_watch = srv
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/namespaces/m/pods")
        .expect("metadata watcher's list");
    assert!(
        metadata_watch
            .accept
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
    );

    // Streaming lists: the initial state arrives on the watch, ended by the
    // `k8s.io/initial-events-end` bookmark; no list request at all.
    srv.clear_requests();
    let (reader, writer) = reflector::store::<Pod>();
    let stream = reflector(
        writer,
        watcher(pods.clone(), watcher::Config::default().streaming_lists()),
    );
    let task = tokio::spawn(async move { stream.for_each(|_| async {}).await });
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    assert_eq!(state_of(&reader), server_state(&srv, "m"));
    pods.create(&PostParams::default(), &pod("m", "b").build())
        .await?;
    assert!(eventually(|| state_of(&reader) == server_state(&srv, "m")).await);
    let log = srv.requests();
    assert!(
        log.iter()
            .any(|r| r.param("sendInitialEvents").as_deref() == Some("true"))
    );
    assert!(
        !log.iter().any(|r| r.method == Method::GET && !r.is_watch()),
        "no list: {log:?}"
    );
    task.abort();
    Ok(())
}

#[tokio::test]
async fn error_bodies_are_v1_status_objects() -> TestResult {
    use tower::ServiceExt;
    let srv = TestApiServer::start().await;
    let send = |req: Request<axum::body::Body>| {
        let router = srv.router();
        async move {
            let resp = router.oneshot(req).await.expect("infallible router");
            let code = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            (
                code,
                serde_json::from_slice::<Value>(&bytes).expect("JSON body"),
            )
        }
    };
    let (code, body) =
        send(Request::get("/api/v1/namespaces/ns/pods/nope").body(axum::body::Body::empty())?)
            .await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "group": "", "kind": "pods"}, "code": 404,
        })
    );
    let (code, body) = send(
        Request::post("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
            .body(axum::body::Body::from(r#"{"metadata":{"name":"l"}}"#))?,
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(
        (body["kind"].as_str(), body["apiVersion"].as_str()),
        (Some("Lease"), Some("coordination.k8s.io/v1"))
    );
    let (code, body) = send(
        Request::post("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
            .body(axum::body::Body::from(r#"{"metadata":{"name":"l"}}"#))?,
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    assert_eq!(
        body["message"],
        "leases.coordination.k8s.io \"l\" already exists"
    );

    // The router shares the socket server's store.
    assert!(srv.get::<Lease>("ns", "l").is_some());

    // Namespaces get the real server's defaults.
    let (code, body) = send(
        Request::post("/api/v1/namespaces")
            .body(axum::body::Body::from(r#"{"metadata":{"name":"web"}}"#))?,
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(body["status"]["phase"], "Active");
    assert_eq!(
        body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "web"
    );
    Ok(())
}

#[tokio::test]
async fn eviction_edge_cases_follow_kube_apiserver() -> TestResult {
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client_without_retries(), "e");
    // An empty selector covers every labelled pod of the namespace.
    let strict: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "all", "namespace": "e"},
        "spec": {"selector": {}, "minAvailable": "100%"},
    }))?;
    srv.insert(&strict);
    srv.insert(
        &pod("e", "labelled")
            .label("app", "x")
            .node("n1")
            .ready()
            .build(),
    );
    srv.insert(
        &pod("e", "sick")
            .label("app", "x")
            .node("n1")
            .phase("Running")
            .build(),
    );
    srv.insert(&pod("e", "bare").node("n1").ready().build());

    let blocked = pods.evict("labelled", &EvictParams::default()).await;
    assert_eq!(
        api_error(blocked.expect_err("100% must stay")),
        (429, "TooManyRequests".into())
    );
    // 1 healthy of 2 required: the unhealthy pod is blocked under IfHealthyBudget...
    let sick = pods.evict("sick", &EvictParams::default()).await;
    assert_eq!(
        api_error(sick.expect_err("budget not met")),
        (429, "TooManyRequests".into())
    );
    // ...and allowed under AlwaysAllow.
    srv.modify::<PodDisruptionBudget>("e", "all", |p| {
        p.spec.get_or_insert_default().unhealthy_pod_eviction_policy = Some("AlwaysAllow".into());
    });
    pods.evict("sick", &EvictParams::default()).await?;
    // Pods without labels are never covered by a PDB.
    pods.evict("bare", &EvictParams::default()).await?;
    assert!(
        srv.get::<Pod>("e", "bare")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    );

    // Two PDBs over one pod: the eviction subresource refuses (500).
    srv.insert(&pdb("e", "second", "x", json!({"maxUnavailable": 1})));
    let two = pods.evict("labelled", &EvictParams::default()).await;
    assert_eq!(api_error(two.expect_err("two PDBs")).0, 500);
    Ok(())
}

#[tokio::test]
async fn kube_runtime_event_recorder_creates_then_patches_a_series() -> TestResult {
    use kube::runtime::events::{Event as RecEvent, EventType, Recorder, Reporter};
    let srv = TestApiServer::start().await;
    let p = srv.insert(&pod("web", "burst-1").build());
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: p.metadata.name.clone(),
        namespace: p.metadata.namespace.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    };
    let recorder = Recorder::new(
        srv.client(),
        Reporter {
            controller: "spillway".into(),
            instance: Some("spillway-0".into()),
        },
    );
    let ev = RecEvent {
        type_: EventType::Normal,
        reason: "SpillwayWaiting".into(),
        note: Some("waiting for a VM".into()),
        action: "Wait".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await?;
    recorder.publish(&ev, &reference).await?;
    let events = srv.list::<EventsV1>(Some("web"));
    assert_eq!(events.len(), 1, "second publish patches the same event");
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        events[0].regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("burst-1")
    );
    let methods: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| {
            r.path
                .starts_with("/apis/events.k8s.io/v1/namespaces/web/events")
        })
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, [Method::POST, Method::PATCH]);
    Ok(())
}

#[tokio::test]
async fn node_scoped_pod_watch_sees_binding_and_graceful_delete() -> TestResult {
    // The virtual node's view: pods with spec.nodeName=<node>, as a kubelet watches.
    let srv = TestApiServer::builder()
        .pod_deletion(PodDeletion::Kubelet)
        .start()
        .await;
    let all: Api<Pod> = Api::all(srv.client());
    let pods: Api<Pod> = Api::namespaced(srv.client(), "web");
    let wp = WatchParams::default().fields("spec.nodeName=spillway-aci");
    let mut stream = all
        .watch(&wp, &srv.resource_version().to_string())
        .await?
        .boxed();

    pods.create(&PostParams::default(), &pod("web", "elsewhere").build())
        .await?;
    pods.create(&PostParams::default(), &pod("web", "burst").build())
        .await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "burst"}, "target": {"kind": "Node", "name": "spillway-aci"}});
    pods.create_subresource::<_, Value>("binding", "burst", &PostParams::default(), &binding)
        .await?;
    pods.delete("burst", &DeleteParams::default()).await?;
    // The "kubelet" confirms the deletion.
    pods.delete("burst", &DeleteParams::default().grace_period(0))
        .await?;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(WAIT, stream.try_next()).await??;
        match ev {
            Some(WatchEvent::Added(p)) => seen.push(("ADDED", p)),
            Some(WatchEvent::Modified(p)) => seen.push(("MODIFIED", p)),
            Some(WatchEvent::Deleted(p)) => seen.push(("DELETED", p)),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<_> = seen
        .iter()
        .map(|(k, p)| (*k, p.metadata.name.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ADDED", "burst".to_string()),
            ("MODIFIED", "burst".to_string()),
            ("DELETED", "burst".to_string())
        ]
    );
    assert!(seen[1].1.metadata.deletion_timestamp.is_some());
    Ok(())
}

#[tokio::test]
async fn kube_rs_default_client_retries_an_eviction_429() -> TestResult {
    // Worth knowing for drain-back: kube 5's default client retries 429
    // (up to 15 times, exponential backoff from 5 ms), so a PDB-blocked
    // eviction does not come back at once with the default client.
    let srv = TestApiServer::start().await;
    srv.insert(
        &pod("d", "only")
            .label("app", "x")
            .node("n1")
            .ready()
            .build(),
    );
    srv.insert(&pdb("d", "keep-one", "x", json!({"minAvailable": 1})));
    let pods: Api<Pod> = Api::namespaced(srv.client(), "d");
    let attempt = tokio::spawn(async move { pods.evict("only", &EvictParams::default()).await });
    let evictions = || {
        srv.requests()
            .iter()
            .filter(|r| r.path.ends_with("/pods/only/eviction"))
            .count()
    };
    assert!(
        eventually(|| evictions() >= 3).await,
        "retried: {}",
        evictions()
    );
    assert!(!attempt.is_finished(), "still retrying");
    attempt.abort();
    Ok(())
}

#[tokio::test]
async fn strategic_merge_directives() -> TestResult {
    let srv = TestApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client(), "ns");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "c", "finalizers": ["a/x", "b/y"]}, "data": {"k": "v"}}),
    )?;
    cms.create(&PostParams::default(), &cm).await?;
    // finalizers merge as a set...
    let merged = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"finalizers": ["c/z", "a/x"]}})),
        )
        .await?;
    assert_eq!(
        merged.metadata.finalizers,
        Some(vec!["a/x".into(), "b/y".into(), "c/z".into()])
    );
    // ...and lose members through $deleteFromPrimitiveList.
    let pruned = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b/y"]}}),
            ),
        )
        .await?;
    assert_eq!(
        pruned.metadata.finalizers,
        Some(vec!["a/x".into(), "c/z".into()])
    );
    // $patch: replace on a map.
    let replaced = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"$patch": "replace", "n": "1"}})),
        )
        .await?;
    assert_eq!(
        replaced.data,
        Some(BTreeMap::from([("n".into(), "1".into())]))
    );

    // $patch: delete on a keyed list element (pod conditions by type).
    let pods: Api<Pod> = Api::namespaced(srv.client(), "ns");
    srv.insert(&pod("ns", "p").ready().build());
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}),
            ),
        )
        .await?;
    assert_eq!(
        p.status.and_then(|s| s.conditions).map(|c| c.len()),
        Some(0)
    );
    Ok(())
}

#[tokio::test]
async fn watches_end_on_disconnect_and_server_stops_on_drop() -> TestResult {
    let srv = TestApiServer::start().await;
    let nodes: Api<Node> = Api::all(srv.client());
    let stream = nodes.watch(&WatchParams::default(), "0").await?.boxed();
    assert!(srv.wait_for_watches(1, WAIT).await);
    drop(stream);
    assert!(
        eventually(|| srv.open_watches() == 0).await,
        "watch task ends when the client goes"
    );

    let config = srv.kube_config();
    drop(srv);
    let fresh = kube::Client::try_from(config)?;
    let nodes: Api<Node> = Api::all(fresh);
    match tokio::time::timeout(WAIT, nodes.list(&ListParams::default())).await? {
        Err(kube::Error::Api(s)) => panic!("server still answering: {s:?}"),
        Err(_) => {}
        Ok(list) => panic!("server still serving: {} nodes", list.items.len()),
    }
    Ok(())
}

#[tokio::test]
async fn pdb_status_follows_pods_like_the_disruption_controller() -> TestResult {
    let srv = TestApiServer::start().await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(srv.client(), "d");
    srv.insert(&pod("d", "a").label("app", "x").node("n1").ready().build());
    srv.insert(&pod("d", "b").label("app", "x").node("n1").ready().build());
    pdbs.create(
        &PostParams::default(),
        &pdb("d", "p", "x", json!({"minAvailable": 1})),
    )
    .await?;
    let allowed = |srv: &TestApiServer| {
        srv.get::<PodDisruptionBudget>("d", "p")
            .and_then(|p| p.status)
            .map(|s| {
                (
                    s.current_healthy,
                    s.desired_healthy,
                    s.expected_pods,
                    s.disruptions_allowed,
                )
            })
    };
    assert_eq!(allowed(&srv), Some((2, 1, 2, 1)));
    srv.set_status::<Pod>("d", "b", json!({"phase": "Running"})); // not Ready any more
    assert_eq!(allowed(&srv), Some((1, 1, 2, 0)));
    let read = pdbs.get_status("p").await?;
    assert_eq!(read.status.map(|s| s.disruptions_allowed), Some(0));

    // Without the stand-in controller, status only moves on demand.
    let srv = TestApiServer::builder()
        .disruption_controller(false)
        .start()
        .await;
    srv.insert(&pod("d", "a").label("app", "x").node("n1").ready().build());
    srv.insert(&pdb("d", "p", "x", json!({"minAvailable": 1})));
    assert_eq!(allowed(&srv), None);
    srv.sync_disruption_budgets();
    assert_eq!(allowed(&srv), Some((1, 1, 1, 0)));
    Ok(())
}

/// The `Priority` admission plugin: a pod's priority comes from its
/// PriorityClass; a class that does not exist, or a priority in the spec
/// that differs from the class's, is refused with the real message.
#[tokio::test]
async fn priority_admission_resolves_priority_classes() -> TestResult {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let srv = TestApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(srv.client(), "web");
    let with_class = |name: &str, class: &str| {
        let mut p = pod("web", name).0;
        p["spec"]["priorityClassName"] = json!(class);
        serde_json::from_value::<Pod>(p)
    };
    // No such class.
    let e = pods
        .create(&PostParams::default(), &with_class("a", "low")?)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => (s.code, s.message),
            other => panic!("{other:?}"),
        });
    assert_eq!(
        e.err(),
        Some((
            403,
            "pods \"a\" is forbidden: no PriorityClass with name low was found".into()
        ))
    );
    // The class exists: the pod gets its value and preemption policy.
    let classes: Api<PriorityClass> = Api::all(srv.client());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "low"}, "value": -10, "preemptionPolicy": "Never"
            }))?,
        )
        .await?;
    let created = pods
        .create(&PostParams::default(), &with_class("a", "low")?)
        .await?;
    let spec = created.spec.unwrap_or_default();
    assert_eq!(spec.priority, Some(-10));
    assert_eq!(spec.preemption_policy.as_deref(), Some("Never"));
    // Built-in system classes need no object.
    let critical = pods
        .create(
            &PostParams::default(),
            &with_class("b", "system-cluster-critical")?,
        )
        .await?;
    assert_eq!(critical.spec.and_then(|s| s.priority), Some(2_000_000_000));
    // A priority the class does not give.
    let mut bad = with_class("c", "low")?;
    if let Some(s) = bad.spec.as_mut() {
        s.priority = Some(5);
    }
    let e = pods
        .create(&PostParams::default(), &bad)
        .await
        .err()
        .map(|e| match e {
            kube::Error::Api(s) => (s.code, s.message),
            other => panic!("{other:?}"),
        });
    assert_eq!(
        e,
        Some((403, "pods \"c\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed -10 from the given PriorityClass name".into()))
    );
    // No class named: the global default's, else 0.
    let plain = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod("web", "d").0)?,
        )
        .await?;
    assert_eq!(plain.spec.and_then(|s| s.priority), Some(0));
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "normal"}, "value": 100, "globalDefault": true
            }))?,
        )
        .await?;
    let defaulted = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod("web", "e").0)?,
        )
        .await?;
    let spec = defaulted.spec.unwrap_or_default();
    assert_eq!(spec.priority, Some(100));
    assert_eq!(spec.priority_class_name.as_deref(), Some("normal"));
    Ok(())
}
