//! The test API server calls mutating admission webhooks as kube-apiserver
//! does (`tests/support/apiserver/webhooks.rs`): one test per rule, against a
//! stand-in webhook served over HTTPS (`tests/support/webhook.rs`).

mod support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::TestApiServer;
use support::webhook::{StandInWebhook, allow, configuration};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

fn add_label() -> Value {
    json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
}

async fn register(
    srv: &TestApiServer,
    config: Value,
) -> Result<MutatingWebhookConfiguration, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(srv.client());
    api.create(&PostParams::default(), &obj(config)).await
}

fn pod(name: &str, labels: Value) -> Pod {
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "app:1"}]},
    }))
}

async fn create(srv: &TestApiServer, ns: &str, p: &Pod) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(srv.client_without_retries(), ns);
    api.create(&PostParams::default(), p).await
}

fn mutated(p: &Pod) -> bool {
    p.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get("mutated").is_some_and(|v| v == "yes"))
}

fn api_error(r: Result<Pod, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn namespace(name: &str, labels: Value) -> Namespace {
    obj(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    )
}

#[tokio::test]
async fn a_matching_webhook_sees_the_defaulted_pod_and_its_patch_is_stored() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(add_label()).await;
    register(
        &srv,
        configuration("m", &hook.url, &hook.ca_bundle(), "Fail", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let created = create(&srv, "web", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(mutated(&created), "{:?}", created.metadata.labels);
    assert!(srv.get::<Pod>("web", "p").is_some_and(|p| mutated(&p)));
    let received = hook.received();
    assert_eq!(received.len(), 1);
    let (query, review) = &received[0];
    assert_eq!(
        query, "timeout=5s",
        "the API server tells the webhook its timeout"
    );
    let r = &review["request"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["namespace"], "web");
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "Pod"})
    );
    // Defaulting runs before mutating admission.
    assert_eq!(r["object"]["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(r["object"]["metadata"]["namespace"], "web");
    assert!(r["userInfo"]["username"].is_string());
}

#[tokio::test]
async fn rules_select_by_operation_group_version_resource_and_scope() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(add_label()).await;
    let rule = |ops: &[&str],
                groups: &[&str],
                versions: &[&str],
                resources: &[&str],
                scope: &str| {
        json!([{"operations": ops, "apiGroups": groups, "apiVersions": versions, "resources": resources, "scope": scope}])
    };
    let misses = [
        rule(&["UPDATE"], &[""], &["v1"], &["pods"], "*"),
        rule(&["CREATE"], &["apps"], &["v1"], &["pods"], "*"),
        rule(&["CREATE"], &[""], &["v2"], &["pods"], "*"),
        rule(&["CREATE"], &[""], &["v1"], &["deployments"], "*"),
        rule(&["CREATE"], &[""], &["v1"], &["pods/status"], "*"),
        rule(&["CREATE"], &[""], &["v1"], &["pods"], "Cluster"),
    ];
    for (i, rules) in misses.iter().enumerate() {
        register(
            &srv,
            configuration(
                &format!("miss{i}"),
                &hook.url,
                &hook.ca_bundle(),
                "Fail",
                |h| {
                    h["rules"] = rules.clone();
                },
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let p = create(&srv, "web", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!mutated(&p));
    assert!(hook.received().is_empty());
    // Wildcards match.
    register(
        &srv,
        configuration("hit", &hook.url, &hook.ca_bundle(), "Fail", |h| {
            h["rules"] = rule(&["*"], &["*"], &["*"], &["*"], "Namespaced");
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let p = create(&srv, "web", &pod("q", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(mutated(&p));
    assert_eq!(hook.received().len(), 1);
}

#[tokio::test]
async fn the_namespace_selector_reads_the_namespace_labels() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(add_label()).await;
    register(
        &srv,
        configuration("m", &hook.url, &hook.ca_bundle(), "Fail", |h| {
            h["namespaceSelector"] = json!({"matchExpressions": [{"key": "skip", "operator": "NotIn", "values": ["true"]}]});
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let namespaces: Api<Namespace> = Api::all(srv.client());
    for (name, labels) in [("in", json!({})), ("out", json!({"skip": "true"}))] {
        namespaces
            .create(&PostParams::default(), &namespace(name, labels))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let inside = create(&srv, "in", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(mutated(&inside));
    let outside = create(&srv, "out", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!mutated(&outside));
    assert_eq!(hook.received().len(), 1);
    // A namespace that does not exist cannot be matched: kube-apiserver answers 404.
    let (code, reason, message) = api_error(create(&srv, "nowhere", &pod("p", json!({}))).await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(message, "namespaces \"nowhere\" not found");
}

#[tokio::test]
async fn the_object_selector_reads_the_pods_labels() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"seen": "yes"}}]),
    )
    .await;
    register(
        &srv,
        configuration("m", &hook.url, &hook.ca_bundle(), "Fail", |h| {
            h["objectSelector"] = json!({"matchExpressions": [{"key": "skip", "operator": "NotIn", "values": ["true"]}]});
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("seen"))
    };
    let p = create(&srv, "web", &pod("a", json!({"skip": "false"})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(seen(&p));
    let p = create(&srv, "web", &pod("b", json!({"skip": "true"})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!seen(&p));
    assert_eq!(hook.received().len(), 1);
}

/// A URL where nothing listens (a port just released).
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
    drop(l);
    format!("https://127.0.0.1:{port}/hook")
}

#[tokio::test]
async fn an_unreachable_webhook_is_ignored_or_fails_the_create_per_failure_policy() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(add_label()).await;
    let url = dead_url().await;
    register(
        &srv,
        configuration("a-ignore", &url, &hook.ca_bundle(), "Ignore", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let p = create(&srv, "web", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!mutated(&p), "created unmutated");
    register(
        &srv,
        configuration("b-fail", &url, &hook.ca_bundle(), "Fail", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, reason, message) = api_error(create(&srv, "web", &pod("q", json!({}))).await);
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    let want = format!(
        "Internal error occurred: failed calling webhook \"b-fail.test.example.com\": failed to call webhook: Post \"{url}?timeout=5s\": "
    );
    assert!(message.starts_with(&want), "{message}");
    assert!(srv.get::<Pod>("web", "q").is_none());
}

#[tokio::test]
async fn the_server_certificate_is_verified_against_the_ca_bundle() {
    let srv = TestApiServer::start().await;
    let hook = StandInWebhook::patching(add_label()).await;
    let other = StandInWebhook::patching(add_label()).await;
    register(
        &srv,
        configuration("wrong-ca", &hook.url, &other.ca_bundle(), "Fail", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, message) = api_error(create(&srv, "web", &pod("p", json!({}))).await);
    assert_eq!(code, 500);
    assert!(
        message.contains("failed calling webhook \"wrong-ca.test.example.com\""),
        "{message}"
    );
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert!(
        hook.received().is_empty(),
        "no request passed the handshake"
    );
    // Under Ignore the same handshake failure lets the pod through unmutated.
    let api: Api<MutatingWebhookConfiguration> = Api::all(srv.client());
    api.delete("wrong-ca", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    register(
        &srv,
        configuration("wrong-ca", &hook.url, &other.ca_bundle(), "Ignore", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let p = create(&srv, "web", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!mutated(&p));
}

#[tokio::test]
async fn a_webhook_slower_than_its_timeout_is_a_failed_call() {
    let srv = TestApiServer::start().await;
    let slow =
        StandInWebhook::start(Duration::from_secs(3), |r| allow(r, Some(&add_label()))).await;
    register(
        &srv,
        configuration("slow", &slow.url, &slow.ca_bundle(), "Ignore", |h| {
            h["timeoutSeconds"] = json!(1)
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let p = create(&srv, "web", &pod("p", json!({})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!mutated(&p), "the late patch is not applied");
    assert_eq!(slow.received().len(), 1, "it was called");
}

#[tokio::test]
async fn denials_and_malformed_answers() {
    let srv = TestApiServer::start().await;
    let deny = StandInWebhook::start(Duration::ZERO, |r| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "response": {"uid": r["request"]["uid"], "allowed": false, "status": {"code": 403, "message": "no pods today"}}})
    })
    .await;
    register(
        &srv,
        configuration("deny", &deny.url, &deny.ca_bundle(), "Ignore", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, reason, message) = api_error(create(&srv, "web", &pod("p", json!({}))).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "admission webhook \"deny.test.example.com\" denied the request: no pods today"
    );
    let api: Api<MutatingWebhookConfiguration> = Api::all(srv.client());
    api.delete("deny", &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A response for another request is a failed call (failurePolicy decides).
    let wrong_uid = StandInWebhook::start(Duration::ZERO, |_| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "other", "allowed": true}})
    })
    .await;
    register(
        &srv,
        configuration(
            "uid",
            &wrong_uid.url,
            &wrong_uid.ca_bundle(),
            "Fail",
            |_| {},
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, message) = api_error(create(&srv, "web", &pod("p", json!({}))).await);
    assert_eq!(code, 500);
    assert!(
        message.contains("failed calling webhook \"uid.test.example.com\": expected response.uid="),
        "{message}"
    );
}

#[tokio::test]
async fn mutation_runs_before_pod_security() {
    let srv = TestApiServer::start().await;
    let namespaces: Api<Namespace> = Api::all(srv.client());
    namespaces
        .create(
            &PostParams::default(),
            &namespace(
                "web",
                json!({"pod-security.kubernetes.io/enforce": "baseline"}),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hook = StandInWebhook::patching(
        json!([{"op": "add", "path": "/spec/hostNetwork", "value": true}]),
    )
    .await;
    register(
        &srv,
        configuration("m", &hook.url, &hook.ca_bundle(), "Fail", |_| {}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, _, message) = api_error(create(&srv, "web", &pod("p", json!({}))).await);
    assert_eq!(code, 403);
    assert!(
        message.contains("violates PodSecurity \"baseline:latest\": host namespaces"),
        "{message}"
    );
}

#[tokio::test]
async fn configurations_are_validated_and_defaulted() {
    let srv = TestApiServer::start().await;
    let ca = "LS0tLS0=";
    let refused =
        |edit: fn(&mut Value)| configuration("bad", "https://127.0.0.1:1/x", ca, "Ignore", edit);
    for (what, config, want) in [
        (
            "http url",
            refused(|h| h["clientConfig"]["url"] = json!("http://127.0.0.1:1/x")),
            "'https' is the only allowed URL scheme",
        ),
        // k8s-openapi sends a missing required string as "".
        (
            "no sideEffects",
            refused(|h| {
                h.as_object_mut().map(|m| m.remove("sideEffects"));
            }),
            "sideEffects: Unsupported value: \"\"",
        ),
        (
            "sideEffects Some",
            refused(|h| h["sideEffects"] = json!("Some")),
            "sideEffects: Unsupported value: \"Some\"",
        ),
        (
            "timeout 31",
            refused(|h| h["timeoutSeconds"] = json!(31)),
            "between 1 and 30 seconds",
        ),
        (
            "two segments",
            refused(|h| h["name"] = json!("pods.spillway")),
            "at least three segments",
        ),
        (
            "no review versions",
            refused(|h| h["admissionReviewVersions"] = json!([])),
            "admissionReviewVersions: Required value",
        ),
    ] {
        match register(&srv, config).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {}", s.message);
                assert!(s.message.contains(want), "{what}: {}", s.message);
            }
            other => panic!("{what}: expected 422, got {other:?}"),
        }
    }
    let stored = register(
        &srv,
        configuration("ok", "https://127.0.0.1:1/x", ca, "Ignore", |h| {
            for f in ["failurePolicy", "timeoutSeconds"] {
                h.as_object_mut().map(|m| m.remove(f));
            }
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let v = serde_json::to_value(&stored).unwrap_or_default();
    let h = &v["webhooks"][0];
    assert_eq!(h["failurePolicy"], "Fail");
    assert_eq!(h["timeoutSeconds"], 10);
    assert_eq!(h["reinvocationPolicy"], "Never");
    assert_eq!(h["matchPolicy"], "Equivalent");
    assert_eq!(h["namespaceSelector"], json!({}));
    assert_eq!(h["objectSelector"], json!({}));
    assert_eq!(h["rules"][0]["scope"], "*");
}
