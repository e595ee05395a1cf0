//! Consistency of what operators apply and look at (deploy/, dashboards/,
//! alert rules) with the code:
//! - every metric a dashboard or alert queries is exported by `Metrics`;
//! - dashboards are well-formed (datasource and namespace variables, panel
//!   datasources, unique ids);
//! - every alert has its annotations, a runbook section and promtool tests
//!   that see it both firing and quiet;
//! - the PrometheusRule carries exactly the groups of the plain rules file;
//! - the kube-scheduler configurations use only kube-scheduler v1 field names
//!   and point at the spillway Service;
//! - the policies copied into deploy/base are the repository's policies;
//! - the spillway Deployment's arguments parse as `spillway run`, with the
//!   kubelet endpoint on a self-signed certificate by default, and the
//!   optional components of deploy/components/ (applied here the way
//!   kustomize applies their JSON patches) keep them parsing and are built
//!   by `.ci/check-deploy` through a fixture overlay.
//!
//! The tools' own checks (kubectl kustomize, kubernetes-validate, promtool,
//! a live Prometheus) run in `.ci/check-deploy`.

use serde_json::Value;
use spillway::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn files_in(rel: &str, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Metric names exported by the registry.

/// Every sample name `Metrics::render()` produces once each metric has a
/// child (vectors with no label set render nothing, so each is touched here
/// with a representative label set; a metric added without a line here is
/// reported as missing as soon as a dashboard uses it).
fn exported_sample_names() -> BTreeSet<String> {
    let m = Metrics::new();
    m.extender_requests
        .with_label_values(&["filter", "ok"])
        .inc();
    m.extender_duration
        .with_label_values(&["filter"])
        .observe(0.0002);
    m.decisions
        .with_label_values(&["burst", "spill-after-elapsed"])
        .inc();
    m.pending_pods.with_label_values(&["web", "wait"]).set(1);
    m.burst_pods.with_label_values(&["web"]).set(1);
    m.burst_cpu_cores.with_label_values(&["web"]).set(0.5);
    m.burst_cost_per_hour.with_label_values(&["web"]).set(0.1);
    m.budget_utilization
        .with_label_values(&["web", "cpu"])
        .set(0.2);
    m.policy_reloads.with_label_values(&["success"]).inc();
    m.policy_last_success.set(1.7e9);
    m.policies_loaded.set(3.0);
    m.provider_pods.with_label_values(&["Running"]).set(1);
    m.edge_deployments.with_label_values(&["edge-1"]).set(1);
    m.edge_devices
        .with_label_values(&["edge-1", "targeted"])
        .set(3);
    m.edge_hub_requests
        .with_label_values(&["edge-1", "configurations", "200"])
        .inc();
    m.aci_requests.with_label_values(&["create", "201"]).inc();
    m.aci_request_duration
        .with_label_values(&["create"])
        .observe(0.3);
    m.aci_throttled.inc();
    m.aci_container_group_start.observe(25.0);
    m.aci_container_group_start_failures
        .with_label_values(&["image-pull"])
        .inc();
    m.aci_quota_cores.with_label_values(&["limit"]).set(100.0);
    m.aci_quota_cores.with_label_values(&["used"]).set(10.0);
    m.gc_deleted.inc();
    m.vm_provision_seconds
        .with_label_values(&["user"])
        .set(180.0);
    m.vm_eta_seconds.with_label_values(&["user"]).set(90.0);
    m.drainback_evictions
        .with_label_values(&["web", "evicted"])
        .inc();
    m.pending_over_max_vm_wait
        .with_label_values(&["web"])
        .set(0);
    m.policy_max_vm_wait
        .with_label_values(&["web", "web-burst"])
        .set(60.0);
    m.ready.set(1);
    m.unadmitted_pods.with_label_values(&["web"]).set(1);
    m.unadmitted_rejections
        .with_label_values(&["budget-pods"])
        .inc();
    sample_names(&m.render())
}

fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("split yields at least one part")
                .to_string()
        })
        .collect()
}

/// Metrics that are not spillway's but that dashboards and alerts may use.
const FOREIGN_METRICS: &[&str] = &["up"];

// ---------------------------------------------------------------------------
// A small PromQL tokenizer: enough to find the metric names in an expression.

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Aggregations and functions: never metric names, even before a `by (...)`
/// clause (`sum by (x) (...)`) where no `(` follows the name directly.
const PROMQL_FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the bracket that closes the one at `open`, skipping strings.
fn skip_group(chars: &[char], open: usize, expr: &str) -> Result<usize, String> {
    let (o, c) = (chars[open], matching(chars[open]));
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i, expr)?,
            x if x == o => {
                depth += 1;
                i += 1;
            }
            x if x == c => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(format!("unclosed {o:?} in {expr:?}"))
}

fn matching(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        '{' => '}',
        other => other,
    }
}

fn skip_string(chars: &[char], start: usize, expr: &str) -> Result<usize, String> {
    let q = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && q != '`' {
            i += 2;
            continue;
        }
        if chars[i] == q {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(format!("unterminated string in {expr:?}"))
}

/// Metric names referenced by a PromQL expression (Grafana variables such as
/// `$namespace` and `$__rate_interval` allowed).
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i, expr)?;
        } else if c == '{' || c == '[' {
            // Label matchers and range/subquery durations: no metric names inside.
            i = skip_group(&chars, i, expr)?;
        } else if c == '#' {
            // Comment to end of line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // Grafana variable: $name or ${name}.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(&chars, i, expr)?;
            } else {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            // Numbers and durations (5m, 1e3, 0x1f, 1.5).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // Their parenthesised lists hold label names.
                if next == Some('(') {
                    i = skip_group(&chars, j, expr)?;
                }
            } else if PROMQL_KEYWORDS.contains(&lower.as_str())
                || PROMQL_FUNCTIONS.contains(&word.as_str())
                || next == Some('(')
            {
                // A keyword, an aggregation or a function call.
            } else {
                names.insert(word);
            }
        } else if "()+-*/%^=!<>,@;".contains(c) {
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} in {expr:?}"));
        }
    }
    Ok(names)
}

/// The metric of a Grafana `label_values(metric, label)` variable query
/// (`label_values(label)` has none).
fn label_values_metric(query: &str) -> Result<Option<String>, String> {
    let q = query.trim();
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("not a label_values(...) query: {q:?}"))?;
    let args = match inner.rfind(',') {
        Some(k) => &inner[..k],
        None => return Ok(None),
    };
    let names = metric_names(args)?;
    match names.len() {
        1 => Ok(names.into_iter().next()),
        _ => Err(format!("expected one metric in {q:?}, found {names:?}")),
    }
}

// ---------------------------------------------------------------------------
// Queries used by dashboards and rules.

fn dashboard_files() -> Vec<String> {
    let files = files_in("dashboards", ".json");
    assert!(
        files.len() >= 3,
        "expected the three dashboards, found {files:?}"
    );
    files
}

fn dashboard(name: &str) -> Value {
    serde_json::from_str(&read(&format!("dashboards/{name}")))
        .unwrap_or_else(|e| panic!("dashboards/{name} is not valid JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn variables(d: &Value) -> &Vec<Value> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list is an array")
}

/// (where, expr) for every PromQL query of every dashboard and of the rules file.
fn all_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in dashboard_files() {
        let d = dashboard(&f);
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{f}: panel {} target without expr", p["title"]));
                out.push((format!("{f}: {}", p["title"]), expr.to_string()));
            }
        }
    }
    for r in alert_rules() {
        out.push((
            format!("deploy/prometheus/rules.yaml: {}", r["alert"]),
            r["expr"].as_str().expect("rule expr").to_string(),
        ));
    }
    out
}

fn alert_rules() -> Vec<Value> {
    let rules = yaml("deploy/prometheus/rules.yaml");
    let groups = rules["groups"].as_array().expect("groups").clone();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn tokenizer_finds_metric_names_and_nothing_else() {
    let cases: &[(&str, &[&str])] = &[
        ("up{job=\"spillway\"} == 0", &["up"]),
        (
            "histogram_quantile(0.99, sum by (le, verb) (rate(a_bucket{x=~\"a|b\"}[5m]))) > 0.01",
            &["a_bucket"],
        ),
        (
            "sum by (op) (rate(req_total{code=~\"5..\"}[$__rate_interval])) / on(op) group_left(kind) sum without (code) (rate(req_total[5m]))",
            &["req_total"],
        ),
        (
            "used / ignoring (kind) (limit > 0) > 0.9 and bool other offset 5m",
            &["used", "limit", "other"],
        ),
        (
            "time() - max(ts_seconds{namespace=~\"$namespace\"})",
            &["ts_seconds"],
        ),
        ("sum(rate(x[5m:1m])) * 60 > 3e1", &["x"]),
        (
            "label_replace(m, \"dst\", \"$1\", \"src\", \"(.*)\") or vector(0)",
            &["m"],
        ),
        (
            "count(max by (namespace) (b)) # a comment with words\n+ c",
            &["b", "c"],
        ),
    ];
    for (expr, want) in cases {
        let got = metric_names(expr).unwrap_or_else(|e| panic!("{e}"));
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "metric names of {expr:?}");
    }
    assert!(metric_names("sum(rate(x{a=\"b}[5m]))").is_err());
    assert!(metric_names("rate(x[5m)").is_err());
    assert_eq!(
        label_values_metric("label_values(spillway_pending_pods, namespace)").unwrap(),
        Some("spillway_pending_pods".to_string())
    );
    assert_eq!(
        label_values_metric("label_values(namespace)").unwrap(),
        None
    );
}

#[test]
fn every_queried_metric_is_exported() {
    let exported = exported_sample_names();
    // The check is only as good as the exported list: it must hold histogram
    // series and gauges of every part, and never a made-up name.
    for expected in [
        "spillway_extender_request_duration_seconds_bucket",
        "spillway_aci_container_group_start_seconds_count",
        "spillway_ready",
        "spillway_build_info",
    ] {
        assert!(exported.contains(expected), "{expected} not rendered");
    }
    assert!(!exported.contains("spillway_extender_request_duration_seconds"));

    let mut queries = all_queries();
    for f in dashboard_files() {
        let d = dashboard(&f);
        for v in variables(&d) {
            if v["type"] == "query" {
                let q = v["query"]
                    .get("query")
                    .or(Some(&v["query"]))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{f}: variable {} without query", v["name"]));
                if let Some(m) = label_values_metric(q).unwrap_or_else(|e| panic!("{f}: {e}")) {
                    queries.push((format!("{f}: variable {}", v["name"]), m));
                }
            }
        }
    }
    assert!(queries.len() > 40, "only {} queries found", queries.len());

    let mut missing = BTreeMap::<String, Vec<String>>::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{place}: {e}"));
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for n in names {
            let known = if n.starts_with("spillway_") {
                exported.contains(&n)
            } else {
                FOREIGN_METRICS.contains(&n.as_str())
            };
            if !known {
                missing.entry(n.clone()).or_default().push(place.clone());
            }
            used.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "queried metrics that spillway does not export (or foreign metrics not allowed): {missing:#?}"
    );
    assert!(
        used.len() >= 20,
        "only {} distinct metrics used",
        used.len()
    );
}

#[test]
fn dashboards_are_well_formed() {
    for f in dashboard_files() {
        let d = dashboard(&f);
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{f}: title"
        );
        assert!(
            d["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && u.len() <= 40),
            "{f}: uid"
        );
        let sv = d["schemaVersion"].as_i64().unwrap_or(0);
        assert!((36..=41).contains(&sv), "{f}: schemaVersion {sv}");

        let vars = variables(&d);
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{f}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{f}");
        assert_eq!(ds["query"], "prometheus", "{f}");
        let ns = vars
            .iter()
            .find(|v| v["name"] == "namespace")
            .unwrap_or_else(|| panic!("{f}: no namespace variable"));
        assert_eq!(ns["type"], "query", "{f}");
        assert_eq!(ns["datasource"]["uid"], "${datasource}", "{f}");
        let nsq = ns["query"]["query"].as_str().unwrap_or_default();
        assert!(
            nsq.starts_with("label_values("),
            "{f}: namespace query {nsq:?}"
        );

        let mut ids = BTreeSet::new();
        let mut uses_namespace = false;
        for p in panels(&d) {
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{f}: panel without id"));
            assert!(ids.insert(id), "{f}: duplicate panel id {id}");
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(-1));
            assert!(
                x >= 0 && w > 0 && x + w <= 24,
                "{f}: panel {id} gridPos {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{f}: panel {id} datasource"
            );
            assert_eq!(p["datasource"]["type"], "prometheus", "{f}: panel {id}");
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{f}: panel {id} has no targets"));
            assert!(!targets.is_empty(), "{f}: panel {id} has no targets");
            let mut refs = BTreeSet::new();
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{f}: panel {id} target datasource"
                );
                assert!(
                    refs.insert(t["refId"].as_str().unwrap_or_default().to_string()),
                    "{f}: panel {id} duplicate refId"
                );
                uses_namespace |= t["expr"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("$namespace");
            }
        }
        assert!(
            uses_namespace,
            "{f}: the namespace variable is used by no query"
        );
    }
}

#[test]
fn alerts_are_documented_and_unit_tested() {
    let rules = alert_rules();
    assert!(
        rules.len() >= 9,
        "expected the issue's alerts, found {}",
        rules.len()
    );
    let readme = read("deploy/README.md");

    // alert -> (seen firing, seen quiet) across the promtool test files.
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let tests = files_in("deploy/prometheus/tests", ".yaml");
    assert!(!tests.is_empty(), "no promtool tests");
    for f in &tests {
        let t = yaml(&format!("deploy/prometheus/tests/{f}"));
        assert_eq!(
            t["rule_files"],
            serde_json::json!(["../rules.yaml"]),
            "{f}: rule_files"
        );
        for case in t["tests"].as_array().expect("tests") {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().expect("alertname").to_string();
                let firing = a["exp_alerts"].as_array().is_some_and(|v| !v.is_empty());
                let e = seen.entry(name).or_default();
                if firing { e.0 = true } else { e.1 = true }
            }
        }
    }

    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name.to_string()), "duplicate alert {name}");
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{name}: severity"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                r["annotations"][key].as_str().is_some_and(|s| s.len() > 10),
                "{name}: annotation {key}"
            );
        }
        let anchor = format!("#{}", name.to_ascii_lowercase());
        assert!(
            r["annotations"]["runbook"]
                .as_str()
                .unwrap_or_default()
                .contains(&anchor),
            "{name}: runbook should point at deploy/README.md{anchor}"
        );
        assert!(
            readme.contains(&format!("### {name}\n")),
            "deploy/README.md has no '### {name}' runbook"
        );
        match seen.get(name) {
            Some((true, true)) => {}
            other => panic!("{name}: promtool tests must see it firing and quiet, got {other:?}"),
        }
    }
    let unknown: Vec<_> = seen.keys().filter(|k| !names.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "tests for alerts that do not exist: {unknown:?}"
    );
}

#[test]
fn prometheusrule_carries_the_rules_file() {
    let plain = yaml("deploy/prometheus/rules.yaml");
    let cr = yaml("deploy/prometheus/prometheusrule.yaml");
    assert_eq!(cr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(
        cr["spec"]["groups"], plain["groups"],
        "deploy/prometheus/prometheusrule.yaml spec.groups differ from deploy/prometheus/rules.yaml (run .ci/sync-deploy-copies)"
    );
    let sm = yaml("deploy/prometheus/servicemonitor.yaml");
    assert_eq!(sm["kind"], "ServiceMonitor");
    let svc = yaml("deploy/base/service.yaml");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"], port["name"],
        "ServiceMonitor port"
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
    // The rules select job="spillway": the job label comes from the Service's
    // label named by jobLabel.
    let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(svc["metadata"]["labels"][job_label], "spillway");
}

// kube-scheduler config v1 field names (k8s.io/kube-scheduler/config/v1 types.go,
// v1.33: KubeSchedulerConfiguration, KubeSchedulerProfile, Extender,
// ExtenderManagedResource, ExtenderTLSConfig; component-base
// LeaderElectionConfiguration and ClientConnectionConfiguration).
const SCHED_TOP: &[&str] = &[
    "apiVersion",
    "kind",
    "parallelism",
    "leaderElection",
    "clientConnection",
    "enableProfiling",
    "enableContentionProfiling",
    "percentageOfNodesToScore",
    "podInitialBackoffSeconds",
    "podMaxBackoffSeconds",
    "profiles",
    "extenders",
    "delayCacheUntilActive",
];
const SCHED_LEADER: &[&str] = &[
    "leaderElect",
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "resourceLock",
    "resourceName",
    "resourceNamespace",
];
const SCHED_CLIENT: &[&str] = &[
    "kubeconfig",
    "acceptContentTypes",
    "contentType",
    "qps",
    "burst",
];
const SCHED_PROFILE: &[&str] = &[
    "schedulerName",
    "percentageOfNodesToScore",
    "plugins",
    "pluginConfig",
];
// kubescheduler.config.k8s.io/v1 PluginConfig and NodeAffinityArgs; core/v1
// NodeAffinity, PreferredSchedulingTerm, NodeSelectorTerm, NodeSelectorRequirement.
const SCHED_PLUGIN_CONFIG: &[&str] = &["name", "args"];
const SCHED_NODE_AFFINITY_ARGS: &[&str] = &["apiVersion", "kind", "addedAffinity"];
const NODE_AFFINITY: &[&str] = &[
    "requiredDuringSchedulingIgnoredDuringExecution",
    "preferredDuringSchedulingIgnoredDuringExecution",
];
const PREFERRED_TERM: &[&str] = &["weight", "preference"];
const NODE_SELECTOR_TERM: &[&str] = &["matchExpressions", "matchFields"];
const NODE_SELECTOR_REQUIREMENT: &[&str] = &["key", "operator", "values"];
const SCHED_EXTENDER: &[&str] = &[
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
];
const SCHED_MANAGED_RESOURCE: &[&str] = &["name", "ignoredByScheduler"];
const SCHED_TLS: &[&str] = &[
    "insecure",
    "serverName",
    "certFile",
    "keyFile",
    "caFile",
    "certData",
    "keyData",
    "caData",
];

fn check_keys(what: &str, v: &Value, allowed: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {v}"));
    for k in obj.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}: unknown field {k:?} (allowed: {allowed:?})"
        );
    }
}

/// A Go `time.Duration` string as metav1.Duration parses it.
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 || rest[..num_len].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[num_len..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(*u))
            .max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Field names and types of a KubeSchedulerConfiguration (v1).
fn check_scheduler_config(what: &str, c: &Value) {
    check_keys(what, c, SCHED_TOP);
    assert_eq!(c["apiVersion"], "kubescheduler.config.k8s.io/v1", "{what}");
    assert_eq!(c["kind"], "KubeSchedulerConfiguration", "{what}");
    if let Some(le) = c.get("leaderElection") {
        check_keys(&format!("{what}: leaderElection"), le, SCHED_LEADER);
        assert!(le["leaderElect"].is_boolean(), "{what}: leaderElect");
        for d in ["leaseDuration", "renewDeadline", "retryPeriod"] {
            if let Some(v) = le.get(d) {
                assert!(v.as_str().is_some_and(is_go_duration), "{what}: {d} {v}");
            }
        }
    }
    if let Some(cc) = c.get("clientConnection") {
        check_keys(&format!("{what}: clientConnection"), cc, SCHED_CLIENT);
    }
    let profiles = c["profiles"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: profiles"));
    assert!(!profiles.is_empty(), "{what}: profiles");
    for p in profiles {
        check_keys(&format!("{what}: profile"), p, SCHED_PROFILE);
        assert!(p["schedulerName"].is_string(), "{what}: schedulerName");
        for pc in p["pluginConfig"].as_array().into_iter().flatten() {
            check_keys(&format!("{what}: pluginConfig[]"), pc, SCHED_PLUGIN_CONFIG);
            assert!(pc["name"].is_string(), "{what}: pluginConfig name");
            if pc["name"] == "NodeAffinity" {
                check_node_affinity_args(&format!("{what}: NodeAffinityArgs"), &pc["args"]);
            }
        }
    }
    let exts = c["extenders"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: extenders"));
    assert_eq!(exts.len(), 1, "{what}: one extender");
    for e in exts {
        check_keys(&format!("{what}: extender"), e, SCHED_EXTENDER);
        for s in [
            "urlPrefix",
            "filterVerb",
            "prioritizeVerb",
            "preemptVerb",
            "bindVerb",
        ] {
            if let Some(v) = e.get(s) {
                assert!(v.is_string(), "{what}: {s} must be a string");
            }
        }
        for b in ["enableHTTPS", "nodeCacheCapable", "ignorable"] {
            if let Some(v) = e.get(b) {
                assert!(v.is_boolean(), "{what}: {b} must be a boolean");
            }
        }
        assert!(
            e["weight"].as_i64().is_some_and(|w| w > 0),
            "{what}: weight must be a positive integer"
        );
        let t = e["httpTimeout"].as_str().unwrap_or_default();
        assert!(
            is_go_duration(t),
            "{what}: httpTimeout {t:?} is not a duration"
        );
        if let Some(tls) = e.get("tlsConfig") {
            check_keys(&format!("{what}: tlsConfig"), tls, SCHED_TLS);
        }
        for r in e["managedResources"].as_array().into_iter().flatten() {
            check_keys(
                &format!("{what}: managedResources[]"),
                r,
                SCHED_MANAGED_RESOURCE,
            );
        }
        // spillway's contract (extender-protocol.md and the extender's routes).
        assert_eq!(e["filterVerb"], "filter", "{what}");
        assert_eq!(e["prioritizeVerb"], "prioritize", "{what}");
        assert_eq!(e["nodeCacheCapable"], true, "{what}");
        assert_eq!(
            e["ignorable"], true,
            "{what}: scheduling must go on without spillway"
        );
        assert_eq!(e["enableHTTPS"], false, "{what}");
        assert!(
            e.get("bindVerb").is_none(),
            "{what}: the scheduler binds, not spillway"
        );
        assert_eq!(
            e["managedResources"],
            serde_json::json!([]),
            "{what}: every pod goes to spillway"
        );
        let url = e["urlPrefix"].as_str().unwrap_or_default();
        assert!(
            url.starts_with("http://") && !url.ends_with('/'),
            "{what}: urlPrefix {url:?}"
        );
    }
}

/// NodeAffinityArgs and the core/v1 NodeAffinity inside it.
fn check_node_affinity_args(what: &str, args: &Value) {
    check_keys(what, args, SCHED_NODE_AFFINITY_ARGS);
    if let Some(k) = args.get("kind") {
        assert_eq!(k, "NodeAffinityArgs", "{what}: kind");
    }
    let added = &args["addedAffinity"];
    check_keys(&format!("{what}: addedAffinity"), added, NODE_AFFINITY);
    let requirement = |at: &str, r: &Value| {
        check_keys(at, r, NODE_SELECTOR_REQUIREMENT);
        let op = r["operator"].as_str().unwrap_or_default();
        assert!(
            ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"].contains(&op),
            "{at}: operator {op:?}"
        );
    };
    let term = |at: &str, t: &Value| {
        check_keys(at, t, NODE_SELECTOR_TERM);
        for r in t["matchExpressions"].as_array().into_iter().flatten() {
            requirement(&format!("{at}: matchExpressions[]"), r);
        }
    };
    for p in added["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        check_keys(&format!("{what}: preferred term"), p, PREFERRED_TERM);
        let w = p["weight"].as_i64().unwrap_or_default();
        assert!((1..=100).contains(&w), "{what}: weight {w} not in 1..=100");
        term(&format!("{what}: preference"), &p["preference"]);
    }
    if let Some(req) = added.get("requiredDuringSchedulingIgnoredDuringExecution") {
        check_keys(&format!("{what}: required"), req, &["nodeSelectorTerms"]);
        for t in req["nodeSelectorTerms"].as_array().into_iter().flatten() {
            term(&format!("{what}: nodeSelectorTerms[]"), t);
        }
    }
}

#[test]
fn scheduler_configs_use_kube_scheduler_v1_fields() {
    // The checker itself rejects what the scheduler would reject.
    assert!(is_go_duration("1s") && is_go_duration("1m30s") && is_go_duration("250ms"));
    assert!(!is_go_duration("1") && !is_go_duration("s") && !is_go_duration("1sec"));
    let bad: Value = serde_saphyr::from_str(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles: [{schedulerName: x}]\nextenders: [{urlPrefix: 'http://a', filterVerb: filter, prioritizeVerb: prioritize, weight: 1, nodeCacheCapable: true, httpTimeout: 1s, ignorable: true, enableHttps: false, managedResources: []}]\n",
    )
    .expect("yaml");
    let caught = std::panic::catch_unwind(|| check_scheduler_config("bad", &bad));
    assert!(caught.is_err(), "misspelled enableHttps must be rejected");

    let aks = yaml("deploy/scheduler/kube-scheduler-config.yaml");
    check_scheduler_config("deploy/scheduler/kube-scheduler-config.yaml", &aks);
    let profiles = aks["profiles"].as_array().expect("profiles");
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0]["schedulerName"], "spillway-scheduler");
    // Fail-safe while the ignorable extender is down: prefer VMs (never require).
    let node_affinity = profiles[0]["pluginConfig"]
        .as_array()
        .and_then(|pcs| pcs.iter().find(|pc| pc["name"] == "NodeAffinity"))
        .expect("NodeAffinity pluginConfig");
    let added = &node_affinity["args"]["addedAffinity"];
    assert!(
        added
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .is_none(),
        "a required term would forbid the virtual node even when spillway allows it"
    );
    assert_eq!(
        added["preferredDuringSchedulingIgnoredDuringExecution"],
        serde_json::json!([{"weight": 100, "preference": {"matchExpressions": [
            {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]}
        ]}}])
    );
    // The checker rejects a misspelled field inside the args.
    let mut typo = aks.clone();
    typo["profiles"][0]["pluginConfig"][0]["args"]["addedAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["preference"]["matchExpression"] = serde_json::json!([]);
    let caught = std::panic::catch_unwind(|| check_scheduler_config("typo", &typo));
    assert!(
        caught.is_err(),
        "misspelled matchExpression must be rejected"
    );
    let le = &aks["leaderElection"];
    assert_eq!(le["leaderElect"], true);
    assert_eq!(le["resourceLock"], "leases");
    assert_eq!(le["resourceName"], "spillway-scheduler");
    assert_eq!(le["resourceNamespace"], "spillway-system");

    // The extender URL is the spillway Service.
    let svc = yaml("deploy/base/service.yaml");
    let want = format!(
        "http://{}.{}.svc:{}",
        svc["metadata"]["name"].as_str().expect("name"),
        svc["metadata"]["namespace"].as_str().expect("namespace"),
        svc["spec"]["ports"][0]["port"].as_i64().expect("port")
    );
    assert_eq!(aks["extenders"][0]["urlPrefix"], want.as_str());

    // The scheduler Deployment reads the generated config where it is mounted,
    // and may renew the Lease named in it.
    let kust = yaml("deploy/scheduler/kustomization.yaml");
    let file = kust["configMapGenerator"][0]["files"][0]
        .as_str()
        .expect("files");
    let (key, src) = file.split_once('=').expect("key=file");
    assert_eq!(src, "kube-scheduler-config.yaml");
    let deploy = yaml("deploy/scheduler/deployment.yaml");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let config_arg = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config=");
    let mount = c["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("mountPath");
    assert_eq!(config_arg, format!("{mount}/{key}"));
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        kust["configMapGenerator"][0]["name"]
    );
    let rbac: Vec<Value> =
        serde_saphyr::from_multiple(&read("deploy/scheduler/rbac.yaml")).expect("rbac yaml");
    let lease_role = rbac
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "spillway-system")
        .expect("lease Role");
    assert!(
        lease_role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(
                |r| r["resourceNames"] == serde_json::json!(["spillway-scheduler"])
                    && r["verbs"]
                        .as_array()
                        .is_some_and(|v| v.contains(&Value::from("update")))
            ),
        "the scheduler may not update its own Lease"
    );

    let selfm = yaml("deploy/overlays/self-managed/kube-scheduler-extender.yaml");
    check_scheduler_config(
        "deploy/overlays/self-managed/kube-scheduler-extender.yaml",
        &selfm,
    );
}

#[test]
fn deploy_policies_are_the_repository_policies() {
    let repo_files = files_in("policies", ".yaml");
    let copy_files = files_in("deploy/base/policies", ".yaml");
    assert!(!repo_files.is_empty());
    assert_eq!(
        repo_files, copy_files,
        "deploy/base/policies must hold exactly policies/*.yaml (run .ci/sync-deploy-copies)"
    );
    for f in &repo_files {
        assert!(
            read(&format!("policies/{f}")) == read(&format!("deploy/base/policies/{f}")),
            "deploy/base/policies/{f} differs from policies/{f} (run .ci/sync-deploy-copies)"
        );
    }
    // ...and the ConfigMap generator packs every one of them.
    let kust = yaml("deploy/base/kustomization.yaml");
    let generator = kust["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator")
        .iter()
        .find(|g| g["name"] == "spillway-policies")
        .expect("spillway-policies generator");
    let packed: Vec<String> = generator["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            f.as_str()
                .expect("file")
                .trim_start_matches("policies/")
                .to_string()
        })
        .collect();
    assert_eq!(packed, repo_files, "configMapGenerator files");
    // The Deployment mounts that ConfigMap where `spillway run --policies` reads.
    let dep = yaml("deploy/base/deployment.yaml");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let dir = args
        .iter()
        .position(|a| *a == "--policies")
        .map(|i| args[i + 1])
        .expect("--policies DIR");
    let vol = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "spillway-policies")
        .expect("policies volume");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("policies mount");
    assert_eq!(mount["mountPath"], dir);
}

#[test]
fn example_workload_does_not_pin_pods_to_the_virtual_node() {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&read("deploy/examples/web-burst.yaml")).expect("yaml");
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(spec["schedulerName"], "spillway-scheduler");
    assert!(
        spec["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["key"] == "virtual-kubelet.io/provider" && t["operator"] == "Exists"),
        "must tolerate the virtual node"
    );
    let sel = spec.get("nodeSelector").cloned().unwrap_or(Value::Null);
    assert!(
        sel.get("type").is_none(),
        "nodeSelector type=virtual-kubelet would forbid VMs"
    );
    assert!(
        spec.get("affinity")
            .and_then(|a| a.get("nodeAffinity"))
            .is_none()
    );
}

fn docs(rel: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn rbac_is_least_privilege() {
    let objects: Vec<(String, Value)> = [
        "deploy/base/rbac.yaml",
        "deploy/scheduler/rbac.yaml",
        "deploy/webhook/rbac.yaml",
    ]
    .iter()
    .flat_map(|f| docs(f).into_iter().map(move |d| (f.to_string(), d)))
    .collect();
    let mut spillway_cluster_rules = 0;
    for (f, o) in &objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if kind == "ClusterRoleBinding" {
            // Only spillway's own ClusterRole and the two upstream scheduler roles.
            let role = o["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(
                [
                    "spillway",
                    "spillway-webhook",
                    "system:kube-scheduler",
                    "system:volume-scheduler"
                ]
                .contains(&role),
                "{f}: {name} binds cluster role {role}"
            );
        }
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let namespace = o["metadata"]["namespace"].as_str();
        for r in o["rules"].as_array().expect("rules") {
            let (groups, resources, verbs) = (
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["verbs"]),
            );
            let what = format!("{f}: {kind} {name}: {resources:?} {verbs:?}");
            assert!(
                !groups.contains(&"*") && !resources.contains(&"*") && !verbs.contains(&"*"),
                "{what}: wildcard"
            );
            assert!(
                !verbs.contains(&"escalate")
                    && !verbs.contains(&"bind")
                    && !verbs.contains(&"impersonate"),
                "{what}"
            );
            assert!(
                !groups.contains(&"rbac.authorization.k8s.io"),
                "{what}: RBAC access"
            );
            assert!(
                !resources.contains(&"pods/binding") && !resources.contains(&"bindings"),
                "{what}: the scheduler binds"
            );
            let names = strings(&r["resourceNames"]);
            if resources.contains(&"secrets") {
                // By name only: a list or watch would hand spillway every
                // Secret in the cluster.
                assert!(
                    verbs == ["get"],
                    "{what}: secrets: get only, never list/watch"
                );
            }
            if resources.contains(&"configmaps") {
                // The one writable ConfigMap: the shared burst reservations,
                // by name, in spillway's own namespace.
                let reservations = kind == "Role"
                    && namespace == Some("spillway-system")
                    && resources == ["configmaps"]
                    && names == ["spillway-burst-reservations"]
                    && verbs == ["update"];
                // The one watched ConfigMap: the cluster autoscaler's status.
                let ca_status = kind == "Role"
                    && namespace == Some("kube-system")
                    && resources == ["configmaps"]
                    && names == ["cluster-autoscaler-status"]
                    && verbs.iter().all(|v| ["list", "watch"].contains(v));
                assert!(
                    reservations || ca_status || verbs == ["get"],
                    "{what}: configmaps: get by name; list/watch only of the CA status; update only of the reservations"
                );
            }
            // A create has no name in its URL: resourceNames never match it,
            // so such a rule grants nothing and misleads the reader.
            assert!(
                names.is_empty() || !verbs.contains(&"create"),
                "{what}: create cannot be limited by resourceNames"
            );
            // Reads and writes of single nodes and Leases name the object
            // (the virtual node, its Lease, the leader Leases).
            if (resources.contains(&"nodes")
                || resources.contains(&"nodes/status")
                || resources.contains(&"leases"))
                && verbs.iter().any(|v| ["get", "patch", "update"].contains(v))
            {
                assert!(
                    !names.is_empty(),
                    "{what}: name the objects (resourceNames)"
                );
            }
            if resources.contains(&"nodes") {
                assert!(
                    !verbs.contains(&"delete"),
                    "{what}: spillway never deletes nodes"
                );
            }
            if kind == "ClusterRole" {
                spillway_cluster_rules += 1;
                // Creating pods cluster-wide would let spillway run anything anywhere:
                // placeholders are created in spillway-system only (a Role).
                if resources.contains(&"pods") {
                    assert!(
                        !verbs.contains(&"create"),
                        "{what}: pods create must be namespaced"
                    );
                }
            } else {
                assert!(
                    matches!(
                        namespace,
                        Some("spillway-system" | "kube-node-lease" | "kube-system")
                    ),
                    "{what}: Role in {namespace:?}"
                );
            }
        }
    }
    assert!(
        spillway_cluster_rules >= 5,
        "spillway's ClusterRole not found"
    );
}

#[test]
fn pods_run_hardened() {
    for f in [
        "deploy/base/deployment.yaml",
        "deploy/scheduler/deployment.yaml",
    ] {
        let d = yaml(f);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{f}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{f}"
        );
        assert!(
            d["spec"]["replicas"].as_i64().unwrap_or(0) >= 2,
            "{f}: replicas"
        );
        // Never on the virtual node (ACI cannot run them, and spillway provides it).
        let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert!(
            terms[0]["matchExpressions"]
                .as_array()
                .expect("matchExpressions")
                .iter()
                .any(|e| e["key"] == "type"
                    && e["operator"] == "NotIn"
                    && strings(&e["values"]) == ["virtual-kubelet"]),
            "{f}: must stay off the virtual node"
        );
        assert!(
            pod["affinity"]["podAntiAffinity"].is_object(),
            "{f}: anti-affinity"
        );
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            let name = c["name"].as_str().unwrap_or_default();
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{f}: {name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{f}: {name}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{f}: {name}");
            assert!(
                c["resources"]["requests"]["cpu"].is_string(),
                "{f}: {name} cpu request"
            );
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{f}: {name} memory limit"
            );
            assert!(
                c["livenessProbe"].is_object() && c["readinessProbe"].is_object(),
                "{f}: {name} probes"
            );
        }
    }
    let spillway = yaml("deploy/base/deployment.yaml");
    let c = &spillway["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let port = &c["ports"][0];
    assert_eq!(port["name"], "http");
    let svc = yaml("deploy/base/service.yaml");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(port["containerPort"], svc["spec"]["ports"][0]["port"]);
    let listen = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SPILLWAY_LISTEN")
        .and_then(|e| e["value"].as_str())
        .expect("SPILLWAY_LISTEN");
    assert_eq!(
        listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<i64>().ok()),
        port["containerPort"].as_i64(),
        "spillway listens where the probes and the Service look"
    );
}

// ---------------------------------------------------------------------------
// The Deployment's `spillway run` arguments, and the optional components.

#[derive(clap::Parser)]
struct SpillwayRun {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// The container's args parsed by the real `spillway run` flags.
fn parse_run(what: &str, deployment: &Value) -> spillway::run::RunCommand {
    use clap::Parser as _;
    let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(args.first(), Some(&"run"), "{what}: {args:?}");
    SpillwayRun::try_parse_from(std::iter::once("spillway").chain(args[1..].iter().copied()))
        .unwrap_or_else(|e| panic!("{what}: {args:?}: {e}"))
        .run
}

/// Apply an RFC 6902 patch of `test`, `replace` and `add` operations (what
/// the components use) as kustomize does; a failed `test` panics.
fn json_patch(what: &str, doc: &mut Value, ops: &Value) {
    for op in ops
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not a list"))
    {
        let path = op["path"].as_str().unwrap_or_default();
        let value = op["value"].clone();
        match op["op"].as_str().unwrap_or_default() {
            "test" => assert_eq!(doc.pointer(path), Some(&value), "{what}: test {path}"),
            "replace" => {
                *doc.pointer_mut(path)
                    .unwrap_or_else(|| panic!("{what}: replace: no {path}")) = value
            }
            "add" => {
                let (parent, last) = path
                    .rsplit_once('/')
                    .unwrap_or_else(|| panic!("{what}: add: bad path {path}"));
                match doc.pointer_mut(parent) {
                    Some(Value::Array(items)) if last == "-" => items.push(value),
                    Some(Value::Array(items)) => {
                        let at: usize = last
                            .parse()
                            .unwrap_or_else(|e| panic!("{what}: add {path}: {e}"));
                        items.insert(at, value);
                    }
                    Some(Value::Object(map)) => {
                        map.insert(last.to_string(), value);
                    }
                    _ => panic!("{what}: add: no {parent}"),
                }
            }
            other => panic!("{what}: unsupported op {other}"),
        }
    }
}

#[test]
fn the_kubelet_endpoint_is_self_signed_by_default_and_the_secret_component_switches_to_files() {
    let base = yaml("deploy/base/deployment.yaml");
    let run = parse_run("deploy/base", &base);
    assert!(run.provider.kubelet_tls_self_signed, "HTTPS by default");
    assert!(run.provider.kubelet_tls_cert.is_none() && run.provider.kubelet_tls_key.is_none());
    let env = &base["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "POD_IP"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"),
        "the certificate's IP SAN and the node's InternalIP come from POD_IP"
    );

    let rel = "deploy/components/kubelet-tls-secret/kustomization.yaml";
    let component = yaml(rel);
    assert_eq!(component["kind"], "Component", "{rel}");
    let patch = &component["patches"][0];
    assert_eq!(patch["target"]["kind"], "Deployment", "{rel}");
    assert_eq!(patch["target"]["name"], "spillway", "{rel}");
    let ops: Value = serde_saphyr::from_str(patch["patch"].as_str().expect("inline patch"))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut patched = base.clone();
    json_patch(rel, &mut patched, &ops);
    let run = parse_run(rel, &patched);
    assert!(!run.provider.kubelet_tls_self_signed, "{rel}");
    let (Some(cert), Some(key)) = (
        &run.provider.kubelet_tls_cert,
        &run.provider.kubelet_tls_key,
    ) else {
        panic!("{rel}: the certificate and key flags")
    };
    // Both files come from one read-only mount of a kubernetes.io/tls Secret.
    let dir = cert.parent().expect("cert dir");
    assert_eq!(key.parent(), Some(dir), "{rel}");
    assert_eq!(cert.file_name().and_then(|n| n.to_str()), Some("tls.crt"));
    assert_eq!(key.file_name().and_then(|n| n.to_str()), Some("tls.key"));
    let pod = &patched["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(std::path::Path::new) == Some(dir))
        .unwrap_or_else(|| panic!("{rel}: nothing mounted at {}", dir.display()));
    assert_eq!(mount["readOnly"], true, "{rel}");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{rel}: no volume {}", mount["name"]));
    assert_eq!(
        volume["secret"]["secretName"], "spillway-kubelet-tls",
        "{rel}"
    );
    assert!(read("deploy/README.md").contains("spillway-kubelet-tls"));

    // Every component is built and validated by .ci/check-deploy, through an
    // overlay under .ci/fixtures/kustomize/ that uses it.
    assert!(read(".ci/check-deploy").contains(".ci/fixtures/kustomize/*"));
    let used: BTreeSet<String> = std::fs::read_dir(repo().join(".ci/fixtures/kustomize"))
        .expect(".ci/fixtures/kustomize")
        .flat_map(|e| {
            let dir = e.expect("dir entry").path();
            let k: Value = serde_saphyr::from_str(
                &std::fs::read_to_string(dir.join("kustomization.yaml"))
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            strings(&k["components"])
                .into_iter()
                .filter_map(|c| c.rsplit('/').next().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    for c in std::fs::read_dir(repo().join("deploy/components")).expect("deploy/components") {
        let name = c
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            used.contains(&name),
            "component {name} is built by no .ci/fixtures/kustomize overlay"
        );
    }
}

/// The MutatingWebhookConfiguration fails open, is short, touches only pod
/// creates outside the system namespaces and opted-out objects, and points
/// at the port and path `spillway run` serves; only the AKS overlay has it.
#[test]
fn the_admission_webhook_fails_open_and_points_at_spillway() {
    let mwc = yaml("deploy/webhook/mutatingwebhookconfiguration.yaml");
    assert_eq!(mwc["apiVersion"], "admissionregistration.k8s.io/v1");
    let run = parse_run(
        "deploy/base/deployment.yaml",
        &yaml("deploy/base/deployment.yaml"),
    );
    assert_eq!(
        mwc["metadata"]["name"].as_str(),
        Some(run.webhook.webhook_configuration.as_str()),
        "spillway publishes its CA into this object"
    );
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(
        h["failurePolicy"], "Ignore",
        "spillway down must never block pod creation"
    );
    let timeout = h["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!(
        (1..=5).contains(&timeout),
        "timeoutSeconds {timeout}: keep it short"
    );
    assert_eq!(h["reinvocationPolicy"], "Never");
    assert_eq!(h["sideEffects"], "None");
    assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        h["rules"],
        serde_json::json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    let ns_exprs = h["namespaceSelector"]["matchExpressions"]
        .as_array()
        .expect("namespaceSelector");
    assert!(ns_exprs.contains(&serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "spillway-system"]})));
    let skip = serde_json::json!({"key": spillway::admission::SKIP_LABEL, "operator": "NotIn", "values": ["true"]});
    assert!(ns_exprs.contains(&skip), "namespace opt-out");
    assert!(
        h["objectSelector"]["matchExpressions"]
            .as_array()
            .is_some_and(|e| e.contains(&skip)),
        "pod opt-out"
    );
    // Where the API server calls: the Service's webhook port, which reaches
    // the container port spillway listens on.
    let svc_ref = &h["clientConfig"]["service"];
    let svc = yaml("deploy/base/service.yaml");
    assert_eq!(svc_ref["name"], svc["metadata"]["name"]);
    assert_eq!(svc_ref["namespace"], svc["metadata"]["namespace"]);
    assert_eq!(svc_ref["path"], spillway::admission::MUTATE_PATH);
    assert!(
        h["clientConfig"].get("caBundle").is_none(),
        "spillway publishes the CA"
    );
    let port = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == svc_ref["port"])
        .expect("the Service has the webhook port");
    assert_eq!(port["targetPort"], "webhook");
    let deploy = yaml("deploy/base/deployment.yaml");
    let container_port = deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "webhook")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("container port webhook");
    assert_eq!(u64::from(run.webhook.webhook_listen.port()), container_port);
    assert_eq!(
        run.webhook.webhook_service,
        svc["metadata"]["name"].as_str().unwrap_or_default()
    );
    // The caBundle is writable for that object only.
    let rbac = docs("deploy/webhook/rbac.yaml");
    let role = rbac
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("ClusterRole");
    let rule = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| strings(&r["resources"]) == ["mutatingwebhookconfigurations"])
        .expect("rule");
    assert_eq!(
        strings(&rule["resourceNames"]),
        [mwc["metadata"]["name"].as_str().unwrap_or_default()]
    );
    assert_eq!(strings(&rule["verbs"]), ["get", "patch"]);
    // AKS only: with a self-managed scheduler the extender sees every pod,
    // and spillway-scheduler does not exist.
    let aks = yaml("deploy/overlays/aks/kustomization.yaml");
    assert!(strings(&aks["resources"]).contains(&"../../webhook"));
    let selfm = yaml("deploy/overlays/self-managed/kustomization.yaml");
    assert!(!strings(&selfm["resources"]).contains(&"../../webhook"));
}

/// The cert-manager component: spillway serves the Secret's certificate,
/// publishes nothing, and cert-manager injects the CA.
#[test]
fn the_webhook_cert_manager_component_switches_to_files_and_ca_injection() {
    let base = yaml("deploy/base/deployment.yaml");
    let run = parse_run("deploy/base", &base);
    assert!(
        run.webhook.webhook_tls_cert.is_none(),
        "generated by default"
    );
    let rel = "deploy/components/webhook-cert-manager/kustomization.yaml";
    let component = yaml(rel);
    assert_eq!(component["kind"], "Component", "{rel}");
    let patches = component["patches"].as_array().expect("patches");
    let deploy_patch = patches
        .iter()
        .find(|p| p["target"]["kind"] == "Deployment")
        .expect("Deployment patch");
    let ops: Value = serde_saphyr::from_str(deploy_patch["patch"].as_str().expect("inline patch"))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut patched = base.clone();
    json_patch(rel, &mut patched, &ops);
    let run = parse_run(rel, &patched);
    assert_eq!(
        run.webhook.webhook_configuration, "",
        "{rel}: cert-manager injects the CA"
    );
    let (Some(cert), Some(key)) = (&run.webhook.webhook_tls_cert, &run.webhook.webhook_tls_key)
    else {
        panic!("{rel}: the certificate and key flags")
    };
    let dir = cert.parent().expect("cert dir");
    assert_eq!(key.parent(), Some(dir), "{rel}");
    let pod = &patched["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(std::path::Path::new) == Some(dir))
        .unwrap_or_else(|| panic!("{rel}: nothing mounted at {}", dir.display()));
    assert_eq!(mount["readOnly"], true, "{rel}");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{rel}: no volume {}", mount["name"]));
    assert_eq!(
        volume["secret"]["secretName"], "spillway-webhook-tls",
        "{rel}"
    );
    let mwc_patch = patches
        .iter()
        .find(|p| p["target"]["kind"] == "MutatingWebhookConfiguration")
        .expect("MutatingWebhookConfiguration patch");
    let mwc = yaml("deploy/webhook/mutatingwebhookconfiguration.yaml");
    assert_eq!(
        mwc_patch["target"]["name"], mwc["metadata"]["name"],
        "{rel}"
    );
    let mut mwc_patched = mwc.clone();
    let ops: Value = serde_saphyr::from_str(mwc_patch["patch"].as_str().expect("inline patch"))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    json_patch(rel, &mut mwc_patched, &ops);
    assert_eq!(
        mwc_patched["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "spillway-system/spillway-webhook"
    );
    assert!(read("deploy/README.md").contains("webhook-cert-manager"));
}

/// The NetworkPolicy (AKS overlay) admits the extender port only from the
/// spillway-scheduler pods and labelled monitoring namespaces, and the
/// webhook and kubelet ports from anywhere; every port it names is one the
/// spillway container declares, and its selectors match the pods they mean.
#[test]
fn the_network_policy_locks_the_extender_port_to_the_scheduler() {
    let np = yaml("deploy/networkpolicy/networkpolicy.yaml");
    assert_eq!(np["apiVersion"], "networking.k8s.io/v1");
    let spillway = yaml("deploy/base/deployment.yaml");
    let scheduler = yaml("deploy/scheduler/deployment.yaml");
    assert_eq!(
        np["metadata"]["namespace"],
        spillway["metadata"]["namespace"]
    );
    assert_eq!(
        np["metadata"]["namespace"], scheduler["metadata"]["namespace"],
        "a bare podSelector only selects pods of the policy's namespace"
    );
    let labels = |d: &Value| d["spec"]["template"]["metadata"]["labels"].clone();
    let selects = |sel: &Value, pod_labels: &Value| {
        sel["matchLabels"]
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| pod_labels[k] == *v))
    };
    assert!(selects(&np["spec"]["podSelector"], &labels(&spillway)));
    assert!(!selects(&np["spec"]["podSelector"], &labels(&scheduler)));
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress"]);
    let declared: BTreeSet<String> = spillway["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    let rules = np["spec"]["ingress"].as_array().expect("ingress rules");
    let mut open_to_all = BTreeSet::new();
    let mut http_from = None;
    for r in rules {
        let ports: Vec<String> = r["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].as_str().unwrap_or_default().to_string())
            .collect();
        for p in &ports {
            assert!(
                declared.contains(p),
                "port {p} is not declared by the container"
            );
        }
        match r.get("from") {
            None => open_to_all.extend(ports),
            Some(from) => {
                assert_eq!(ports, ["http"], "only the extender port is restricted");
                http_from = Some(from.clone());
            }
        }
    }
    assert_eq!(
        open_to_all,
        BTreeSet::from([
            "kubelet".to_string(),
            "kubelet-windows".to_string(),
            "webhook".to_string()
        ]),
        "the API server's address is unknown on AKS"
    );
    let from = http_from.expect("a rule for the extender port");
    let from = from.as_array().expect("from peers");
    assert!(
        from.iter()
            .any(|peer| selects(&peer["podSelector"], &labels(&scheduler))),
        "the scheduler pods reach the extender"
    );
    assert!(
        from.iter()
            .any(|peer| peer["namespaceSelector"]["matchLabels"]["spillway.io/scrape"] == "true"),
        "monitoring namespaces labelled spillway.io/scrape=true scrape /metrics"
    );
    assert!(
        read("deploy/overlays/aks/kustomization.yaml").contains("../../networkpolicy"),
        "the AKS overlay ships it"
    );
}
