//! `spillway explain`: read a cluster state file (`kubectl get nodes,pods -A
//! -o yaml`) and show, for every pending pod, the engine's verdict and why.
//!
//! Offline and read-only: it runs the same `Engine::decide_all` pass as the
//! autoscaler and simulator, so what it prints is what spillway would do.

use crate::cli::EXIT_BAD_INPUT;
use crate::cluster::{self, ClusterConfig, ClusterObjects};
use crate::decision::{BurstUsage, Decision, Engine, Snapshot};
use crate::policy::{BurstPolicy, PolicySet};
use crate::units::{Duration, Timestamp};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Explain each pending pod's verdict from a cluster state file.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainCommand {
    /// Output of `kubectl get nodes,pods -A -o yaml` (or `-o json`).
    #[arg(long, value_name = "FILE")]
    pub cluster_state: PathBuf,
    /// Directory of BurstPolicy files [default: a built-in cluster default:
    /// mode Auto, spillAfter 30s, maxVmWait 2m, no budgets].
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Evaluate as of this time (RFC 3339) [default: now].
    #[arg(long, value_name = "RFC3339", value_parser = parse_now)]
    pub now: Option<Timestamp>,
    #[command(flatten)]
    pub cluster: cluster::ClusterFlags,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn parse_now(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s)
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// One pending pod's explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRow {
    pub namespace: String,
    pub name: String,
    pub decision: Decision,
    /// Time left until the wait ends, for `wait` with an end time.
    pub wait_left: Option<Duration>,
    /// The namespace's burst usage against the pod's policy budget.
    pub budget: String,
    /// It selects the virtual node (`nodeSelector` or required affinity on
    /// its labels, e.g. the AKS example's `type: virtual-kubelet`): no VM can
    /// take it, but spillway still decides when (spillAfter, budgets, quota).
    pub pinned: bool,
}

/// What the table's DETAIL says of a pinned pod.
pub const PINNED_NOTE: &str = "pinned to the virtual node (nodeSelector/required affinity): no VM can take it; spillway still applies spillAfter, budgets and quota";

/// The JSON form: exactly these keys.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    namespace: &'a str,
    name: &'a str,
    verdict: &'a str,
    reason: &'a str,
    until: Option<Timestamp>,
}

/// Decide every pending pod of the cluster state.
pub fn explain(
    objects: &ClusterObjects,
    policies: &PolicySet,
    now: Timestamp,
    config: &ClusterConfig,
) -> Vec<ExplainRow> {
    let snap: Snapshot = cluster::snapshot_from(&objects.nodes, &objects.pods, now, config);
    let decisions = Engine::new(config.engine.clone()).decide_all(&snap, policies);
    snap.pending
        .iter()
        .zip(decisions)
        .map(|(pod, decision)| {
            let usage = snap
                .burst_usage
                .get(&pod.namespace)
                .copied()
                .unwrap_or_default();
            let budget = budget_use(policies.for_pod(&pod.namespace, &pod.labels), &usage);
            let pinned = objects.pods.iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                    && p.metadata.name.as_deref() == Some(pod.name.as_str())
                    && crate::admission::selects_virtual(p, &config.virtual_nodes)
            });
            ExplainRow {
                pinned,
                wait_left: decision.until.map(|u| u.since(now)),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                decision,
                budget,
            }
        })
        .collect()
}

fn budget_use(policy: Option<&BurstPolicy>, used: &BurstUsage) -> String {
    let Some(policy) = policy else {
        return "-".into();
    };
    let b = &policy.budget;
    let mut parts = Vec::new();
    if let Some(max) = b.max_pods {
        parts.push(format!("{}/{} pods", used.pods, max));
    }
    if let Some(max) = b.max_cpu_millis {
        parts.push(format!(
            "{:.1}/{} vCPU",
            used.requests.cpu_cores(),
            max as f64 / 1000.0
        ));
    }
    if let Some(max) = b.max_hourly_cost {
        parts.push(format!("${:.2}/${:.2}/h", used.hourly_cost, max));
    }
    if parts.is_empty() {
        format!("{} pods, no budget", used.pods)
    } else {
        parts.join(", ")
    }
}

/// Rows sorted for people: namespace, then name.
fn sorted(rows: &[ExplainRow]) -> Vec<&ExplainRow> {
    let mut v: Vec<&ExplainRow> = rows.iter().collect();
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

pub fn render_json(rows: &[ExplainRow]) -> String {
    let out: Vec<JsonRow> = sorted(rows)
        .into_iter()
        .map(|r| JsonRow {
            namespace: &r.namespace,
            name: &r.name,
            verdict: r.decision.verdict.as_str(),
            reason: r.decision.reason.as_str(),
            until: r.decision.until,
        })
        .collect();
    serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub fn render_table(rows: &[ExplainRow]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "VERDICT",
        "REASON",
        "WAIT LEFT",
        "BUDGET USE",
        "DETAIL",
    ];
    let mut cells: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in sorted(rows) {
        cells.push([
            r.namespace.clone(),
            r.name.clone(),
            r.decision.verdict.to_string(),
            r.decision.reason.to_string(),
            r.wait_left
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            r.budget.clone(),
            if r.pinned {
                format!("{} ({PINNED_NOTE})", r.decision.detail)
            } else {
                r.decision.detail.clone()
            },
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no pending pods)\n");
    }
    out
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let text = msg.to_string();
    // One line: serde errors can carry snippets after the message.
    let first = text.lines().next().unwrap_or("invalid input");
    eprintln!("spillway explain: {first}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// `spillway explain`.
pub fn run(cmd: ExplainCommand) -> ExitCode {
    let objects = match cluster::load_cluster_view_objects(&cmd.cluster_state) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let policies = match &cmd.policies {
        Some(dir) => match crate::policy::load_dir(dir) {
            Ok(set) => set,
            Err(errors) => {
                let n = errors.0.len();
                let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                return fail(format!("{n} policy error(s); first: {first}"));
            }
        },
        None => PolicySet::with_default(BurstPolicy::defaults("built-in-default", None)),
    };
    let now = cmd.now.unwrap_or_else(Timestamp::now_wall);
    let config = cmd.cluster.cluster_config();
    let rows = explain(&objects, &policies, now, &config);
    match cmd.output {
        Format::Table => print!("{}", render_table(&rows)),
        Format::Json => println!("{}", render_json(&rows)),
    }
    ExitCode::SUCCESS
}
