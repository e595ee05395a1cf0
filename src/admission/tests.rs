//! The webhook's rule (pure) and its HTTP surface (router `oneshot`).

use super::*;
use crate::cluster::build::pod;
use crate::extender::PolicySource;
use crate::policy::{BurstPolicy, PolicySet};
use axum::body::Body;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Toleration;
use serde_json::{Value, json};
use tower::ServiceExt;

fn web_only() -> PolicySet {
    PolicySet::new(vec![BurstPolicy::defaults("web", Some("web"))])
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn with_default() -> PolicySet {
    PolicySet::new(vec![
        BurstPolicy::defaults("web", Some("web")),
        BurstPolicy::defaults("default", None),
    ])
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn verdict(p: &Pod, ns_labels: Option<&BTreeMap<String, String>>, set: &PolicySet) -> Verdict {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    decide(p, &ns, ns_labels, set, &AdmissionConfig::default())
}

const SET: fn() -> Verdict = || Verdict::SetScheduler(SPILLWAY_SCHEDULER.into());

#[test]
fn a_pod_that_tolerates_the_virtual_node_gets_spillways_scheduler() {
    let p = pod().ns("web").tolerate_virtual().build();
    assert_eq!(verdict(&p, None, &web_only()), SET());
}

#[test]
fn a_blanket_exists_toleration_counts() {
    let p = pod()
        .ns("web")
        .toleration(Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        })
        .build();
    assert_eq!(verdict(&p, None, &web_only()), SET());
}

#[test]
fn selecting_the_virtual_node_counts_by_node_selector_or_required_affinity() {
    let by_selector = pod()
        .ns("web")
        .node_selector("type", "virtual-kubelet")
        .build();
    assert_eq!(verdict(&by_selector, None, &web_only()), SET());
    let by_affinity = pod()
        .ns("web")
        .require_node("type", "In", &["virtual-kubelet"])
        .build();
    assert_eq!(verdict(&by_affinity, None, &web_only()), SET());
    let away = pod()
        .ns("web")
        .require_node("type", "NotIn", &["virtual-kubelet"])
        .build();
    assert_eq!(
        verdict(&away, None, &web_only()),
        Verdict::Skip(Skip::NoVirtualNodeAccess)
    );
}

#[test]
fn pods_without_virtual_node_access_or_policy_are_left_alone() {
    let plain = pod().ns("web").build();
    assert_eq!(
        verdict(&plain, None, &web_only()),
        Verdict::Skip(Skip::NoVirtualNodeAccess)
    );
    let other_ns = pod().ns("batch").tolerate_virtual().build();
    assert_eq!(
        verdict(&other_ns, None, &web_only()),
        Verdict::Skip(Skip::NoPolicy)
    );
    // The cluster default covers every namespace.
    assert_eq!(verdict(&other_ns, None, &with_default()), SET());
}

#[test]
fn opt_outs_daemonsets_mirror_pods_and_other_schedulers_are_skipped() {
    let set = with_default();
    let skip = |p: &Pod, ns: Option<&BTreeMap<String, String>>| match verdict(p, ns, &set) {
        Verdict::Skip(s) => Some(s),
        Verdict::SetScheduler(_) => None,
    };
    let opted = pod()
        .ns("web")
        .tolerate_virtual()
        .label(SKIP_LABEL, "true")
        .build();
    assert_eq!(skip(&opted, None), Some(Skip::OptedOut));
    let not_really = pod()
        .ns("web")
        .tolerate_virtual()
        .label(SKIP_LABEL, "false")
        .build();
    assert_eq!(skip(&not_really, None), None);
    let ns_labels = BTreeMap::from([(SKIP_LABEL.to_string(), "true".to_string())]);
    let p = pod().ns("web").tolerate_virtual().build();
    assert_eq!(skip(&p, Some(&ns_labels)), Some(Skip::NamespaceOptedOut));
    let ds = pod()
        .ns("web")
        .tolerate_virtual()
        .owned_by("DaemonSet", "agent")
        .build();
    assert_eq!(skip(&ds, None), Some(Skip::DaemonSet));
    let mut mirror = pod().ns("web").tolerate_virtual().build();
    mirror.metadata.annotations = Some(BTreeMap::from([(
        MIRROR_ANNOTATION.to_string(),
        "abc".to_string(),
    )]));
    assert_eq!(skip(&mirror, None), Some(Skip::MirrorPod));
    let mut custom = pod().ns("web").tolerate_virtual().build();
    if let Some(s) = custom.spec.as_mut() {
        s.scheduler_name = Some("my-scheduler".into());
    }
    assert_eq!(skip(&custom, None), Some(Skip::OtherScheduler));
    let mut defaulted = pod().ns("web").tolerate_virtual().build();
    if let Some(s) = defaulted.spec.as_mut() {
        s.scheduler_name = Some(DEFAULT_SCHEDULER.into());
    }
    assert_eq!(skip(&defaulted, None), None);
    let system = pod().ns("kube-system").tolerate_virtual().build();
    assert_eq!(skip(&system, None), Some(Skip::SystemNamespace));
}

fn state() -> WebhookState {
    WebhookState {
        policies: PolicySource::Fixed(Arc::new(web_only())),
        namespaces: namespaces::NamespaceLabels::default(),
        config: Arc::new(AdmissionConfig::default()),
        metrics: Arc::new(Metrics::new()),
    }
}

fn review(pod: &Pod, operation: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod.metadata.namespace,
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

async fn post(state: &WebhookState, body: String, content_type: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(MUTATE_PATH)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = app(state.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn outcome(state: &WebhookState, label: &str) -> u64 {
    state
        .metrics
        .admission_reviews
        .with_label_values(&[label])
        .get()
}

#[tokio::test]
async fn a_review_is_answered_with_a_base64_json_patch_and_the_uid_echoed() {
    let s = state();
    let p = pod().ns("web").name("w").tolerate_virtual().build();
    let (status, body) = post(&s, review(&p, "CREATE").to_string(), "application/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let r = &body["response"];
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let ops: Value = serde_json::from_slice(&patch).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ops,
        json!([{"op": "add", "path": "/spec/schedulerName", "value": "spillway-scheduler"}])
    );
    assert_eq!(outcome(&s, "mutated"), 1);
}

fn patch_ops(body: &Value) -> Value {
    let patch = base64::engine::general_purpose::STANDARD
        .decode(body["response"]["patch"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&patch).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_pinned_pod_has_its_pin_relaxed_unless_it_or_the_flag_keeps_it() {
    let s = state();
    let pinned = || {
        pod()
            .ns("web")
            .name("aci-helloworld")
            .node_selector("type", "virtual-kubelet")
            .node_selector("kubernetes.io/role", "agent")
            .tolerate_virtual()
    };
    let (_, body) = post(
        &s,
        review(&pinned().build(), "CREATE").to_string(),
        "application/json",
    )
    .await;
    let ops = patch_ops(&body);
    assert_eq!(ops[0]["path"], "/spec/schedulerName");
    assert_eq!(
        ops[1],
        json!({"op": "remove", "path": "/spec/nodeSelector/type"})
    );
    assert_eq!(
        ops[2],
        json!({"op": "add", "path": "/metadata/annotations", "value": {"spillway.io/relaxed-pin": "nodeSelector type=virtual-kubelet"}})
    );
    assert_eq!(ops.as_array().map(Vec::len), Some(3));
    assert_eq!(outcome(&s, "mutated-relaxed-pin"), 1);

    // The pod keeps its pin by annotation: only the scheduler name.
    let keep = pinned().annotation(pin::PIN_ANNOTATION, "keep").build();
    let (_, body) = post(&s, review(&keep, "CREATE").to_string(), "application/json").await;
    assert_eq!(patch_ops(&body).as_array().map(Vec::len), Some(1));
    assert_eq!(outcome(&s, "mutated"), 1);

    // --webhook-virtual-node-pin keep: the same.
    let kept = WebhookState {
        config: Arc::new(AdmissionConfig {
            pin_mode: pin::PinMode::Keep,
            ..AdmissionConfig::default()
        }),
        ..state()
    };
    let (_, body) = post(
        &kept,
        review(&pinned().build(), "CREATE").to_string(),
        "application/json",
    )
    .await;
    assert_eq!(patch_ops(&body).as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn skipped_pods_and_other_operations_are_allowed_without_a_patch() {
    let s = state();
    let plain = pod().ns("web").name("w").build();
    let (status, body) = post(&s, review(&plain, "CREATE").to_string(), "application/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none());
    assert!(body["response"].get("patchType").is_none());
    assert_eq!(outcome(&s, "skipped-no-virtual-node-access"), 1);
    let p = pod().ns("web").name("w").tolerate_virtual().build();
    let (_, body) = post(&s, review(&p, "UPDATE").to_string(), "application/json").await;
    assert!(body["response"].get("patch").is_none());
    assert_eq!(outcome(&s, "skipped-not-pod-create"), 1);
}

#[tokio::test]
async fn the_namespace_opt_out_is_read_from_the_namespace_watch() {
    let s = state();
    s.namespaces.set(
        "web",
        BTreeMap::from([(SKIP_LABEL.to_string(), "true".to_string())]),
    );
    let p = pod().ns("web").name("w").tolerate_virtual().build();
    let (_, body) = post(&s, review(&p, "CREATE").to_string(), "application/json").await;
    assert!(body["response"].get("patch").is_none());
    assert_eq!(outcome(&s, "skipped-namespace-opt-out"), 1);
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_400() {
    let s = state();
    let p = pod().ns("web").name("w").tolerate_virtual().build();
    let mut v1beta1 = review(&p, "CREATE");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let no_uid = {
        let mut r = review(&p, "CREATE");
        r["request"]["uid"] = json!("");
        r
    };
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    for (body, ct, want) in [
        ("{not json".to_string(), "application/json", "not JSON"),
        (
            v1beta1.to_string(),
            "application/json",
            "admissionReviewVersions",
        ),
        (no_uid.to_string(), "application/json", "uid is empty"),
        (
            no_request.to_string(),
            "application/json",
            "request is missing",
        ),
        (
            review(&p, "CREATE").to_string(),
            "text/plain",
            "Content-Type",
        ),
    ] {
        let (status, body) = post(&s, body, ct).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{want}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
    assert_eq!(outcome(&s, "error"), 5);
}

#[tokio::test]
async fn a_pod_that_does_not_decode_is_allowed_unchanged() {
    let s = state();
    let mut r = review(&pod().ns("web").name("w").build(), "CREATE");
    r["request"]["object"] = json!({"spec": {"containers": "not a list"}});
    let (status, body) = post(&s, r.to_string(), "application/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none());
    assert_eq!(outcome(&s, "error"), 1);
}

#[test]
fn a_ca_is_added_to_the_bundle_once_and_old_ones_fall_off() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let cas: Vec<String> = (0..tls::MAX_CAS + 2)
        .map(|_| {
            tls::generate(&["x.svc".into()])
                .unwrap_or_else(|e| panic!("{e}"))
                .ca_pem
        })
        .collect();
    let first = tls::bundle_with(None, &cas[0]).unwrap_or_default();
    assert_eq!(
        tls::bundle_with(Some(&first), &cas[0]),
        None,
        "already there"
    );
    let mut bundle = first;
    for ca in &cas[1..] {
        bundle = tls::bundle_with(Some(&bundle), ca).unwrap_or_default();
    }
    let pem = String::from_utf8(b64.decode(&bundle).unwrap_or_default()).unwrap_or_default();
    let kept = tls::pem_certificates(&pem);
    assert_eq!(kept.len(), tls::MAX_CAS);
    assert_eq!(
        kept.last(),
        tls::pem_certificates(&cas[cas.len() - 1]).first()
    );
    assert!(!kept.contains(&tls::pem_certificates(&cas[0])[0]));
    // A garbage bundle is replaced by this CA.
    let fixed = tls::bundle_with(Some("!!"), &cas[0]).unwrap_or_default();
    assert_eq!(
        b64.decode(fixed).unwrap_or_default(),
        cas[0]
            .trim()
            .to_string()
            .into_bytes()
            .into_iter()
            .chain(*b"\n")
            .collect::<Vec<u8>>()
    );
}

#[test]
fn certificate_files_are_read_and_a_missing_one_is_named() {
    let dir = std::env::temp_dir().join(format!("spillway-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let ck = rcgen::generate_simple_self_signed(vec!["spillway.spillway-system.svc".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    assert!(tls::from_files(&cert, &key).is_ok());
    let missing = dir.join("nope.crt");
    let err = tls::from_files(&missing, &key)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("nope.crt"), "{err}");
}

#[tokio::test]
async fn an_oversized_review_gets_413() {
    let s = state();
    let req = Request::builder()
        .method("POST")
        .uri(MUTATE_PATH)
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; MAX_REVIEW_BYTES + 1]))
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = app(s.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(outcome(&s, "error"), 1);
}
