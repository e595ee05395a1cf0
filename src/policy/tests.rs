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

// ---- every error in one go (`policy check`) ----

fn all_errors(text: &str) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let policies = parse_file(text, "p.yaml", &mut errors);
    assert!(
        errors.is_empty() || policies.is_empty() || text.contains("\n---"),
        "a document with errors yielded a policy"
    );
    errors
}

fn summary(errors: &[PolicyError]) -> Vec<(u64, String)> {
    errors.iter().map(|e| (e.line, e.field.clone())).collect()
}

#[test]
fn structural_and_value_errors_of_a_document_are_all_reported_once() {
    // The issue's file: an unknown field, a bad mode and a bad quantity, plus
    // a wrong type and an unknown key inside a flow mapping.
    let text = FULL
        .replace("mode: Auto", "mode: Sometimes")
        .replace(
            "    minPriority: 0\n",
            "    minPriority: 0\n    spilAfter: 10s\n",
        )
        .replace("maxPods: 200", "maxPods: lots")
        .replace("maxMemory: 800Gi", "maxMemory: 800Qi")
        .replace("publicIp: auto,", "publicIp: auto, colour: blue,");
    let errors = all_errors(&text);
    assert_eq!(
        summary(&errors),
        [
            (7, "spec.burst.mode".to_string()),
            (11, "spec.burst.spilAfter".to_string()),
            (12, "spec.budget.maxPods".to_string()),
            (12, "spec.budget.maxMemory".to_string()),
            (14, "spec.aci.colour".to_string()),
        ],
        "{}",
        PolicyErrors(errors.clone())
    );
    for e in &errors {
        // The position is said once, by the prefix.
        let line = e.to_string();
        assert!(
            line.starts_with(&format!("p.yaml:{}:{}: {}: ", e.line, e.column, e.field)),
            "{line}"
        );
        assert!(
            !e.message.contains("line ") && !e.message.contains("column"),
            "{line}"
        );
        assert!(!e.message.contains('\n'), "{line}");
    }
    assert!(errors[1].message.contains("unknown field `spilAfter`"));
    assert_eq!(errors[1].column, 5);
    let aci_line = text.lines().nth(13).unwrap_or_default();
    assert_eq!(
        errors[4].column,
        aci_line.find("colour").map_or(0, |c| c as u64 + 1)
    );
}

#[test]
fn an_unknown_only_child_does_not_turn_its_parent_into_null() {
    // Blanking `spilAfter` leaves `burst:` empty; that must not add an error.
    let text = "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: a }\nspec:\n  burst:\n    spilAfter: 10s\n  budget: { maxCpu: lots }\n";
    let errors = all_errors(text);
    assert_eq!(
        summary(&errors),
        [
            (6, "spec.burst.spilAfter".to_string()),
            (7, "spec.budget.maxCpu".to_string())
        ],
        "{}",
        PolicyErrors(errors.clone())
    );
}

#[test]
fn errors_in_every_document_keep_their_file_lines() {
    let bad_second = FULL
        .replace("web-burst", "second")
        .replace("kind: BurstPolicy", "kind: Policy")
        .replace("maxVmWait: 90s", "maxVmWait: soon");
    let text = format!(
        "{}---\n# only a comment\n---\n{}---\napiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: {{ nam: x }}\nspec: {{}}\n",
        FULL.replace("maxPods: 200", "maxPods: -1"),
        bad_second
    );
    let errors = all_errors(&text);
    let lines = FULL.lines().count() as u64;
    // Document 1: line 11; document 2 starts after two marker lines and a comment.
    let doc2 = lines + 3;
    let doc3 = doc2 + lines + 1;
    assert_eq!(
        summary(&errors),
        [
            (11, "spec.budget.maxPods".to_string()),
            (doc2 + 2, "kind".to_string()),
            (doc2 + 9, "spec.burst.maxVmWait".to_string()),
            (doc3 + 3, "metadata".to_string()),
            (doc3 + 3, "metadata.nam".to_string()),
        ],
        "{}",
        PolicyErrors(errors.clone())
    );
    assert!(errors[3].message.contains("missing field `name`"));
}

#[test]
fn a_bad_required_value_is_one_error_not_also_missing() {
    let errors = all_errors(
        "apiVersion: spillway.io/v1alpha1\nkind: [BurstPolicy]\nmetadata: { name: a }\nspec: {}\n",
    );
    assert_eq!(errors.len(), 1, "{}", PolicyErrors(errors.clone()));
    assert_eq!((errors[0].line, errors[0].field.as_str()), (2, "kind"));
}

#[test]
fn a_good_file_still_parses_every_document() {
    let text = format!(
        "---\n{FULL}---\n{}",
        FULL.replace("web-burst", "b")
            .replace("namespace: web", "namespace: shop")
    );
    let mut errors = Vec::new();
    let ps = parse_file(&text, "p.yaml", &mut errors);
    assert!(errors.is_empty(), "{}", PolicyErrors(errors));
    assert_eq!(ps.len(), 2);
    // metadata.name of each, counted in the file (after the leading `---`).
    assert_eq!((ps[0].line, ps[0].column), (4, 19));
    assert_eq!(ps[1].line, FULL.lines().count() as u64 + 5);
}

#[test]
fn equally_specific_policies_in_two_files_are_reported_with_both_places() {
    let d = temp_dir("conflict");
    let a = "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata:\n  name: by-tier\n  namespace: web\nspec:\n  podSelector: { matchLabels: { tier: y } }\n";
    let b = "# second\napiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: by-app, namespace: web }\nspec:\n  podSelector: { matchLabels: { app: x } }\n";
    // More specific than both: no conflict.
    let c = "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: both, namespace: web }\nspec:\n  podSelector: { matchLabels: { app: x, tier: y } }\n";
    std::fs::write(d.join("a.yaml"), a).unwrap();
    std::fs::write(d.join("b.yaml"), b).unwrap();
    std::fs::write(d.join("c.yaml"), c).unwrap();
    let report = check::check_paths(std::slice::from_ref(&d));
    assert_eq!(report.errors.len(), 1, "{}", report.text());
    let e = &report.errors[0];
    let a_path = d.join("a.yaml").display().to_string();
    assert!(e.file.ends_with("b.yaml"), "{e}");
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (4, 19, "spec.podSelector")
    );
    assert!(
        e.message
            .contains("web/by-app claims the same pods with equal specificity as web/by-tier")
            && e.message.contains(&format!("{a_path}:4:9")),
        "{e}"
    );
    assert_eq!(report.summary(), "1 error in 1 file");
    assert!(report.set.is_none());
    // load_dir (the extender, the reloader) reads the same way.
    assert_eq!(load_dir(&d).unwrap_err().0, report.errors);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn check_report_counts_and_json() {
    let d = temp_dir("report");
    std::fs::write(
        d.join("a.yaml"),
        FULL.replace("mode: Auto", "mode: Later")
            .replace("30s", "x"),
    )
    .unwrap();
    std::fs::write(
        d.join("b.yaml"),
        FULL.replace("web-burst", "b")
            .replace("namespace: web", "namespace: shop")
            .replace("dnsNameLabel: \"{{namespace}}-{{name}}\"", "dnsName: x"),
    )
    .unwrap();
    std::fs::write(
        d.join("c.yaml"),
        FULL.replace("namespace: web", "namespace: batch"),
    )
    .unwrap();
    let report = check::check_paths(&[d.clone(), d.join("missing.yaml")]);
    assert_eq!(report.files.len(), 4);
    assert_eq!(report.errors.len(), 4, "{}", report.text());
    assert_eq!(report.summary(), "4 errors in 3 files");
    let text = report.text();
    assert!(text.ends_with("4 errors in 3 files\n"), "{text}");
    assert!(text.contains("missing.yaml: cannot read: "), "{text}");
    let json = report.json();
    let errors = json["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 4);
    for e in &errors {
        for k in ["file", "field", "message"] {
            assert!(e[k].is_string(), "{k} in {e}");
        }
        assert!(e["line"].is_u64() && e["column"].is_u64(), "{e}");
    }
    assert_eq!(errors[0]["field"], "spec.burst.mode");
    assert_eq!(errors[0]["line"], 7);
    assert_eq!(json["summary"]["errors"], 4);
    assert_eq!(json["summary"]["files_with_errors"], 3);
    assert_eq!(json["summary"]["files_checked"], 4);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reload_rejects_with_every_error_and_keeps_the_last_good_set() {
    use reload::{PolicyStore, ReloadOutcome};
    let d = temp_dir("reload-all");
    std::fs::write(d.join("web.yaml"), FULL).unwrap();
    let store = PolicyStore::open(&d, std::sync::Arc::new(crate::metrics::Metrics::new())).unwrap();
    std::fs::write(
        d.join("web.yaml"),
        FULL.replace("mode: Auto", "mode: Soon").replace(
            "    minPriority: 0\n",
            "    minPriority: 0\n    spilAfter: 1s\n",
        ),
    )
    .unwrap();
    match store.reload_if_changed() {
        ReloadOutcome::Rejected(errors) => {
            let places: Vec<(u64, &str)> = errors
                .0
                .iter()
                .map(|e| (e.line, e.field.as_str()))
                .collect();
            assert_eq!(
                places,
                [(7, "spec.burst.mode"), (11, "spec.burst.spilAfter")]
            );
            assert!(
                errors
                    .to_string()
                    .contains("web.yaml:11:5: spec.burst.spilAfter: unknown field")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.current().iter().next().map(|p| p.burst.mode),
        Some(BurstMode::Auto)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn nested_unknown_blocks_and_sequence_items_are_skipped_and_named() {
    let text = "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\nmetadata: { name: a, namespace: web }\nspec:\n  extra:\n    a: 1\n    b: [2]\n  podSelector:\n    matchExpressions:\n    - key: tier\n      operator: In\n      value: [a]\n  burst:\n    mode: Never\n    spilAfter: 1s\n";
    let errors = all_errors(text);
    assert_eq!(
        summary(&errors),
        [
            (5, "spec.extra".to_string()),
            (9, "spec.podSelector.matchExpressions[0]".to_string()),
            (12, "spec.podSelector.matchExpressions.value".to_string()),
            (15, "spec.burst.spilAfter".to_string()),
        ],
        "{}",
        PolicyErrors(errors.clone())
    );
    // Once `value` is out of the way, the item is validated: In needs values.
    assert!(
        errors[1].message.contains("needs at least one value"),
        "{}",
        errors[1]
    );
}

#[test]
fn documents_are_split_on_markers_keeping_line_numbers() {
    let docs = check::split_documents(
        "%YAML 1.2\n---\na: 1\n...\n# only a comment\n--- { b: 2 }\n---\n\nc: 3\n",
    );
    assert_eq!(docs.len(), 3, "{docs:?}");
    // Each document has its text on the file's own lines.
    assert_eq!(docs[0].lines().nth(2), Some("a: 1"));
    assert_eq!(docs[1].lines().nth(5), Some("    { b: 2 }"));
    assert_eq!(docs[2].lines().nth(8), Some("c: 3"));
    // An inline document after `---` is a policy like any other.
    let mut errors = Vec::new();
    let ps = parse_file(
        "--- { apiVersion: spillway.io/v1alpha1, kind: BurstPolicy, metadata: { name: x }, spec: {} }\n",
        "p.yaml",
        &mut errors,
    );
    assert!(errors.is_empty(), "{}", PolicyErrors(errors));
    assert_eq!(ps.len(), 1);
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

#[test]
fn aci_network_is_unset_by_default_and_takes_private_or_public() {
    use super::AciNetwork;
    assert_eq!(parse_one(FULL).unwrap().aci.network, None);
    let p = parse_one(&FULL.replace(
        "aci: { publicIp: auto, dnsNameLabel: \"{{namespace}}-{{name}}\" }",
        "aci: { network: private, publicIp: never }",
    ))
    .unwrap();
    assert_eq!(p.aci.network, Some(AciNetwork::Private));
    let p = parse_one(&FULL.replace(
        "aci: { publicIp: auto,",
        "aci: { network: public, publicIp: auto,",
    ))
    .unwrap();
    assert_eq!(p.aci.network, Some(AciNetwork::Public));
    let e = single_error(&FULL.replace(
        "aci: { publicIp: auto,",
        "aci: { network: vnet, publicIp: auto,",
    ));
    assert_eq!((e.line, e.field.as_str()), (13, "spec.aci.network"), "{e}");
    assert!(e.message.contains("private or public"), "{e}");
}

#[test]
fn a_private_network_refuses_a_public_ip_and_a_dns_label_at_their_values() {
    let text = FULL.replace(
        "aci: { publicIp: auto,",
        "aci: { network: private, publicIp: always,",
    );
    let errs = parse_one(&text).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.aci.publicIp", "spec.aci.dnsNameLabel"],
        "{errs:?}"
    );
    assert!(errs[0].message.contains("network: private"), "{}", errs[0]);
    assert!(errs[1].message.contains("public IP"), "{}", errs[1]);
    // `auto` and `never` are fine: no public IP on a private network.
    let ok = FULL.replace(
        "aci: { publicIp: auto, dnsNameLabel: \"{{namespace}}-{{name}}\" }",
        "aci: { network: private, publicIp: auto }",
    );
    assert!(parse_one(&ok).is_ok());
}
