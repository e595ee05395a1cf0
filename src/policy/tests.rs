use super::*;
use crate::units::{Duration, GIB};

fn parse_one(text: &str) -> Result<BurstPolicy, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut v = parse_file(text, "p.yaml", &mut errors);
    if errors.is_empty() {
        assert_eq!(v.len(), 1, "expected exactly one document");
        Ok(v.remove(0))
    } else {
        Err(errors)
    }
}

const FULL: &str = r#"apiVersion: spillway.io/v1alpha1
kind: BurstPolicy
metadata: { name: web-burst, namespace: web }
spec:
  podSelector: { matchLabels: { app: frontend } }
  burst:
    mode: Auto
    spillAfter: 30s
    maxVmWait: 90s
    minPriority: 0
  budget: { maxPods: 200, maxCpu: "400", maxMemory: 800Gi, maxHourlyCost: 50 }
  drainBack: { enabled: true, after: 5m, maxPerMinute: 10 }
  aci: { publicIp: auto, dnsNameLabel: "{{namespace}}-{{name}}" }
"#;

#[test]
fn parses_the_design_example() {
    let p = parse_one(FULL).unwrap();
    assert_eq!(p.id(), "web/web-burst");
    assert_eq!(p.burst.mode, BurstMode::Auto);
    assert_eq!(p.burst.spill_after, Duration::from_secs(30));
    assert_eq!(p.burst.max_vm_wait, Duration::from_secs(90));
    assert_eq!(p.burst.min_priority, 0);
    assert_eq!(p.budget.max_pods, Some(200));
    assert_eq!(p.budget.max_cpu_millis, Some(400_000));
    assert_eq!(p.budget.max_memory_bytes, Some(800 * GIB));
    assert_eq!(p.budget.max_hourly_cost, Some(50.0));
    assert!(p.drain_back.enabled);
    assert_eq!(p.drain_back.after, Duration::from_mins(5));
    assert_eq!(p.aci.public_ip, PublicIp::Auto);
    assert_eq!(
        p.aci.dns_name_label.as_deref(),
        Some("{{namespace}}-{{name}}")
    );
    assert_eq!(
        p.selector.match_labels.get("app").map(String::as_str),
        Some("frontend")
    );
}

#[test]
fn minimal_policy_gets_documented_defaults() {
    let p = parse_one(
        "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: d }\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(p.namespace, None);
    assert_eq!(p.burst, BurstPolicy::defaults("d", None).burst);
    assert_eq!(p.budget, Budget::default());
    assert!(p.drain_back.enabled);
}

fn single_error(text: &str) -> PolicyError {
    let errs = parse_one(text).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn unknown_field_is_an_error_with_location() {
    let text = FULL.replace(
        "    minPriority: 0\n",
        "    minPriority: 0\n    spilAfter: 10s\n",
    );
    let e = single_error(&text);
    assert_eq!(e.line, 11, "{e}");
    assert!(e.message.contains("spilAfter"), "{e}");
    assert!(e.to_string().starts_with("p.yaml:11:"), "{e}");
}

#[test]
fn wrong_type_is_an_error_with_location() {
    let e = single_error(&FULL.replace("maxPods: 200", "maxPods: lots"));
    assert_eq!(e.line, 11, "{e}");
}

#[test]
fn negative_duration_points_at_the_value() {
    let e = single_error(&FULL.replace("spillAfter: 30s", "spillAfter: -5s"));
    assert_eq!(
        (e.line, e.field.as_str()),
        (8, "spec.burst.spillAfter"),
        "{e}"
    );
    assert!(e.message.contains("negative"), "{e}");
    assert_eq!(e.column, 17, "{e}");
}

#[test]
fn bad_quantity_points_at_the_value() {
    let e = single_error(&FULL.replace("maxMemory: 800Gi", "maxMemory: 800Qi"));
    assert_eq!(
        (e.line, e.field.as_str()),
        (11, "spec.budget.maxMemory"),
        "{e}"
    );
}

#[test]
fn every_error_in_a_document_is_reported() {
    let text = FULL
        .replace("mode: Auto", "mode: Sometimes")
        .replace("after: 5m", "after: 5 minutes")
        .replace("publicIp: auto", "publicIp: maybe")
        .replace("maxHourlyCost: 50", "maxHourlyCost: -1");
    let errs = parse_one(&text).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.burst.mode",
            "spec.budget.maxHourlyCost",
            "spec.drainBack.after",
            "spec.aci.publicIp"
        ]
    );
}

#[test]
fn wrong_api_version_kind_and_bad_names_are_rejected() {
    let text = FULL
        .replace("spillway.io/v1alpha1", "spillway.io/v1")
        .replace("kind: BurstPolicy", "kind: Policy")
        .replace("namespace: web", "namespace: Web_NS");
    let errs = parse_one(&text).unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn dns_template_must_render_to_a_label() {
    let e = single_error(&FULL.replace("{{namespace}}-{{name}}", "{{cluster}}-x"));
    assert_eq!(e.field, "spec.aci.dnsNameLabel");
    assert_eq!(
        render_dns_label("{{namespace}}-{{name}}", "web", "api-0"),
        "web-api-0"
    );
}

#[test]
fn yaml_syntax_error_has_location() {
    let e = single_error("apiVersion: spillway.io/v1alpha1\nkind: [unclosed\n");
    assert!(e.line >= 2, "{e}");
}

#[test]
fn selector_expressions_are_validated_and_matched() {
    let text = FULL.replace(
        "podSelector: { matchLabels: { app: frontend } }",
        "podSelector:\n    matchExpressions:\n      - { key: tier, operator: In, values: [web, api] }\n      - { key: legacy, operator: DoesNotExist }",
    );
    let p = parse_one(&text).unwrap();
    let labels = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(p.selector.matches(&labels(&[("tier", "api")])));
    assert!(!p.selector.matches(&labels(&[("tier", "db")])));
    assert!(
        !p.selector
            .matches(&labels(&[("tier", "web"), ("legacy", "1")]))
    );

    let bad = FULL.replace(
        "podSelector: { matchLabels: { app: frontend } }",
        "podSelector:\n    matchExpressions:\n      - { key: tier, operator: Near, values: [a] }\n      - { key: t, operator: In }",
    );
    assert_eq!(parse_one(&bad).unwrap_err().len(), 2);
}

fn policy(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> BurstPolicy {
    let mut p = BurstPolicy::defaults(name, ns);
    p.selector.match_labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn most_specific_policy_wins_then_namespace_then_default() {
    let set = PolicySet::new(vec![
        policy(None, "default", &[]),
        policy(Some("web"), "all", &[]),
        policy(Some("web"), "frontend", &[("app", "frontend")]),
        policy(
            Some("web"),
            "frontend-canary",
            &[("app", "frontend"), ("track", "canary")],
        ),
    ])
    .unwrap();
    let id = |ns: &str, l: &[(&str, &str)]| set.for_pod(ns, &labels(l)).map(|p| p.id());
    assert_eq!(
        id("web", &[("app", "frontend"), ("track", "canary")]).as_deref(),
        Some("web/frontend-canary")
    );
    assert_eq!(
        id("web", &[("app", "frontend")]).as_deref(),
        Some("web/frontend")
    );
    assert_eq!(id("web", &[("app", "api")]).as_deref(), Some("web/all"));
    assert_eq!(id("batch", &[]).as_deref(), Some("*/default"));
}

#[test]
fn default_applies_when_no_namespaced_policy_selects_the_pod() {
    let set = PolicySet::new(vec![
        policy(None, "default", &[]),
        policy(Some("web"), "frontend", &[("app", "frontend")]),
    ])
    .unwrap();
    assert_eq!(
        set.for_pod("web", &labels(&[("app", "x")]))
            .map(|p| p.id())
            .as_deref(),
        Some("*/default")
    );
    let no_default = PolicySet::new(vec![policy(Some("web"), "f", &[("app", "f")])]).unwrap();
    assert!(no_default.for_pod("web", &labels(&[])).is_none());
}

#[test]
fn ties_and_duplicates_are_errors() {
    // Equal specificity, compatible labels: a pod with both labels matches both.
    let err = PolicySet::new(vec![
        policy(Some("web"), "a", &[("app", "x")]),
        policy(Some("web"), "b", &[("tier", "y")]),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("claims the same pods"), "{err}");
    // Equal specificity but disjoint: fine.
    PolicySet::new(vec![
        policy(Some("web"), "a", &[("app", "x")]),
        policy(Some("web"), "b", &[("app", "y")]),
    ])
    .unwrap();
    let err = PolicySet::new(vec![policy(None, "d1", &[]), policy(None, "d2", &[])]).unwrap_err();
    assert!(err.to_string().contains("second cluster default"), "{err}");
    let err = PolicySet::new(vec![
        policy(Some("web"), "a", &[("app", "x")]),
        policy(Some("web"), "a", &[("app", "y"), ("k", "v")]),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("same name"), "{err}");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("spillway-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn load_dir_reports_errors_from_every_file() {
    let d = temp_dir("errors");
    std::fs::write(d.join("a.yaml"), FULL.replace("30s", "-1s")).unwrap();
    std::fs::write(
        d.join("b.yml"),
        FULL.replace("maxPods: 200", "maxPods: -3")
            .replace("web-burst", "other"),
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "not a policy").unwrap();
    std::fs::write(d.join(".hidden.yaml"), "garbage: [").unwrap();
    let errs = load_dir(&d).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
    assert!(
        errs.0[0].file.ends_with("a.yaml") && errs.0[1].file.ends_with("b.yml"),
        "{errs}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn shipped_policies_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.len() >= 3);
    assert!(set.iter().any(|p| p.namespace.is_none()));
}

#[test]
fn reload_keeps_last_good_set_and_counts_outcomes() {
    use reload::{PolicyStore, ReloadOutcome};
    let d = temp_dir("reload");
    std::fs::write(d.join("web.yaml"), FULL).unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let store = PolicyStore::open(&d, metrics.clone()).unwrap();
    assert_eq!(store.current().len(), 1);
    assert_eq!(store.reload_if_changed(), ReloadOutcome::Unchanged);

    std::fs::write(
        d.join("web.yaml"),
        FULL.replace("30s", "thirty seconds, please"),
    )
    .unwrap();
    assert!(matches!(
        store.reload_if_changed(),
        ReloadOutcome::Rejected(_)
    ));
    let kept = store.current();
    assert_eq!(
        kept.iter().next().map(|p| p.burst.spill_after),
        Some(Duration::from_secs(30))
    );

    std::fs::write(
        d.join("web.yaml"),
        FULL.replace("spillAfter: 30s", "spillAfter: 45s"),
    )
    .unwrap();
    assert_eq!(
        store.reload_if_changed(),
        ReloadOutcome::Loaded { policies: 1 }
    );
    assert_eq!(
        store.current().iter().next().map(|p| p.burst.spill_after),
        Some(Duration::from_secs(45))
    );
    let text = metrics.render();
    assert!(
        text.contains("spillway_policy_reload_total{outcome=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spillway_policy_reload_total{outcome=\"success\"} 2"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn first_load_of_an_invalid_dir_fails() {
    let d = temp_dir("bad-open");
    std::fs::write(d.join("x.yaml"), "kind: [").unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    assert!(reload::PolicyStore::open(&d, metrics).is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn aci_resources_defaults_to_clamp_limits_and_takes_raise_requests() {
    let p = parse_one(FULL).unwrap();
    assert_eq!(p.aci.resources, AciResources::ClampLimits);
    let p = parse_one(&FULL.replace(
        "publicIp: auto,",
        "publicIp: auto, resources: raise-requests,",
    ))
    .unwrap();
    assert_eq!(p.aci.resources, AciResources::RaiseRequests);
    let p = parse_one(&FULL.replace(
        "publicIp: auto,",
        "publicIp: auto, resources: clamp-limits,",
    ))
    .unwrap();
    assert_eq!(p.aci.resources, AciResources::ClampLimits);
}

#[test]
fn unknown_aci_resources_value_points_at_the_value() {
    let e = single_error(&FULL.replace(
        "publicIp: auto,",
        "publicIp: auto, resources: raise-limits,",
    ));
    assert_eq!(
        (e.line, e.field.as_str()),
        (13, "spec.aci.resources"),
        "{e}"
    );
    assert_eq!(e.column, 37, "{e}");
    assert!(e.message.contains("clamp-limits or raise-requests"), "{e}");
}
