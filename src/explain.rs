//! `spillway explain`: for every pending pod of the cluster (the one the
//! kubeconfig points at, like kubectl, or a `kubectl get nodes,pods -A -o
//! yaml` dump), the engine's verdict and why; `--pod NAME` tells one pod's
//! whole story ([`story`]).
//!
//! Read-only: it runs the same `Engine::decide_all` pass as the autoscaler
//! and simulator, so what it prints is what spillway would do.

pub mod live;
pub mod story;

use crate::autoscaler::pools::{NodeGroupStatus, ProvisionLearner};
use crate::cli::EXIT_BAD_INPUT;
use crate::cluster::{self, ClusterConfig, ClusterObjects};
use crate::decision::{BurstUsage, Decision, Engine, Snapshot};
use crate::policy::{BurstPolicy, PolicySet};
use crate::units::{Duration, Timestamp};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Explain each pending pod's verdict, from the live cluster or a dump.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainCommand {
    /// Read this dump (`kubectl get nodes,pods -A -o yaml`, or `-o json`)
    /// instead of the cluster the kubeconfig points at.
    #[arg(long, value_name = "FILE")]
    pub cluster_state: Option<PathBuf>,
    /// Directory of BurstPolicy files [default: live, the policy ConfigMap
    /// (--policies-configmap); with a dump, a built-in cluster default: mode
    /// Auto, spillAfter 30s, maxVmWait 2m, no budgets].
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Live: the ConfigMap spillway mounts its policies from, NAMESPACE/NAME.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        default_value = "spillway-system/spillway-policies",
        value_parser = parse_configmap_ref
    )]
    pub policies_configmap: (String, String),
    /// Only pods of this namespace (the pod of --pod is looked up here;
    /// default there: `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// One pending pod's whole story: the policy that governs it and why,
    /// budget use, the VM ETA and what it rests on, every node considered
    /// and why each was refused.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    #[command(flatten)]
    pub kube: crate::cli::KubeFlags,
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

fn parse_configmap_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
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
    /// take it, so waiting for one gains nothing: it bursts at once, within
    /// its policy's mode, minPriority, budgets and the ACI quota.
    pub pinned: bool,
    /// What spillway's webhook removed to relax the pod's pin to the
    /// virtual node (the `spillway.io/relaxed-pin` annotation): it waits
    /// for VMs like any other pod.
    pub relaxed_pin: Option<String>,
}

/// What the table's DETAIL says of a pod whose pin the webhook relaxed.
pub fn relaxed_note(what: &str) -> String {
    format!(
        "its pin to the virtual node was relaxed at admission ({what}): VMs first, spillway decides when it bursts"
    )
}

/// What the table's DETAIL says of a pinned pod.
pub const PINNED_NOTE: &str = "pinned to the virtual node (nodeSelector/required affinity): no VM can take it, so it does not wait for one; spillway still applies the policy mode, minPriority, budgets and quota";

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
    evaluate(objects, policies, now, config, &[]).rows
}

/// The snapshot explain decided on, and one row per pending pod in
/// `snapshot.pending` order.
pub struct Explained {
    pub snapshot: Snapshot,
    pub rows: Vec<ExplainRow>,
}

/// [`explain`] with the cluster autoscaler's node groups (pool bounds and
/// nodes on their way), keeping the snapshot for [`story::story`].
pub fn evaluate(
    objects: &ClusterObjects,
    policies: &PolicySet,
    now: Timestamp,
    config: &ClusterConfig,
    ca_groups: &[NodeGroupStatus],
) -> Explained {
    let mut snap: Snapshot = cluster::snapshot_from(&objects.nodes, &objects.pods, now, config);
    crate::autoscaler::pools::apply(&mut snap, ca_groups, &ProvisionLearner::new(1));
    let engine = Engine::new(config.engine.clone());
    engine.count_raised(&mut snap, policies);
    let decisions = engine.decide_all(&snap, policies);
    let rows = snap
        .pending
        .iter()
        .zip(decisions)
        .map(|(pod, decision)| {
            let usage = snap
                .burst_usage
                .get(&pod.namespace)
                .copied()
                .unwrap_or_default();
            let budget = budget_use(policies.for_pod(&pod.namespace, &pod.labels), &usage);
            let whole = objects.pods.iter().find(|p| {
                p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                    && p.metadata.name.as_deref() == Some(pod.name.as_str())
            });
            let pinned = whole.is_some_and(|p| {
                crate::admission::pin::pinned_to_virtual(p, &config.virtual_nodes)
            });
            ExplainRow {
                pinned,
                relaxed_pin: whole
                    .and_then(crate::admission::pin::relaxed_pin)
                    .map(String::from),
                wait_left: decision.until.map(|u| u.since(now)),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                decision,
                budget,
            }
        })
        .collect();
    Explained {
        snapshot: snap,
        rows,
    }
}

/// The virtual node `pod` would spill to: the first, by name, of the
/// virtual nodes whose `kubernetes.io/os` is the pod's (as the extender's
/// filter keeps it; a node that names no OS counts as any).
pub fn spill_node(
    nodes: &[k8s_openapi::api::core::v1::Node],
    pod: &k8s_openapi::api::core::v1::Pod,
    matcher: &cluster::VirtualNodeMatcher,
) -> Option<String> {
    let os = crate::extender::pod_os(pod);
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| matcher.is_virtual(n))
        .filter(|n| crate::extender::runs_os(n.metadata.labels.as_ref(), &os))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    names.into_iter().next()
}

pub(crate) fn budget_use(policy: Option<&BurstPolicy>, used: &BurstUsage) -> String {
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
    serde_json::to_string_pretty(&json_rows(rows))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The rows as YAML (the JSON form's keys).
pub fn render_yaml(rows: &[ExplainRow]) -> String {
    serde_saphyr::to_string(&json_rows(rows)).unwrap_or_else(|e| format!("error: {e}\n"))
}

fn json_rows(rows: &[ExplainRow]) -> Vec<JsonRow<'_>> {
    sorted(rows)
        .into_iter()
        .map(|r| JsonRow {
            namespace: &r.namespace,
            name: &r.name,
            verdict: r.decision.verdict.as_str(),
            reason: r.decision.reason.as_str(),
            until: r.decision.until,
        })
        .collect()
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
            } else if let Some(what) = &r.relaxed_pin {
                format!("{} ({})", r.decision.detail, relaxed_note(what))
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
    let from_dir = match &cmd.policies {
        Some(dir) => match crate::policy::load_dir(dir) {
            Ok(set) => Some(set),
            Err(errors) => {
                let n = errors.0.len();
                let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                return fail(format!("{n} policy error(s); first: {first}"));
            }
        },
        None => None,
    };
    let (objects, ca_groups, policies) = match &cmd.cluster_state {
        Some(path) => match cluster::load_cluster_view_objects(path) {
            Ok(o) => (
                o,
                Vec::new(),
                from_dir.unwrap_or_else(live::builtin_default),
            ),
            Err(e) => return fail(e),
        },
        None => match read_live(&cmd, from_dir.is_none()) {
            Ok((l, from_cluster)) => {
                for note in &l.notes {
                    eprintln!("spillway explain: note: {note}");
                }
                let policies = from_dir
                    .or(from_cluster)
                    .unwrap_or_else(live::builtin_default);
                (l.objects, l.ca_groups, policies)
            }
            Err(e) => {
                eprintln!("spillway explain: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        },
    };
    let now = cmd.now.unwrap_or_else(Timestamp::now_wall);
    let config = cmd.cluster.cluster_config();
    let explained = evaluate(&objects, &policies, now, &config, &ca_groups);
    if let Some(name) = &cmd.pod {
        let ns = cmd.namespace.as_deref().unwrap_or("default");
        let Some(i) = explained
            .snapshot
            .pending
            .iter()
            .position(|p| p.namespace == ns && p.name == *name)
        else {
            return not_pending(&objects, ns, name);
        };
        let row = &explained.rows[i];
        let mut s = story::story(
            &explained.snapshot,
            i,
            &row.decision,
            &policies,
            config.engine.default_provision_time,
            row.pinned,
            now,
        );
        s.relaxed_pin = row.relaxed_pin.clone();
        if let Some(whole) = objects.pods.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        }) {
            s.virtual_node = spill_node(&objects.nodes, whole, &config.virtual_nodes);
        }
        match cmd.output {
            Format::Table => print!("{}", story::render_text(&s)),
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(&s)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            ),
            Format::Yaml => print!(
                "{}",
                serde_saphyr::to_string(&s).unwrap_or_else(|e| format!("error: {e}\n"))
            ),
        }
        return ExitCode::SUCCESS;
    }
    let rows: Vec<ExplainRow> = match &cmd.namespace {
        Some(ns) => explained
            .rows
            .into_iter()
            .filter(|r| r.namespace == *ns)
            .collect(),
        None => explained.rows,
    };
    match cmd.output {
        Format::Table => print!("{}", render_table(&rows)),
        Format::Json => println!("{}", render_json(&rows)),
        Format::Yaml => print!("{}", render_yaml(&rows)),
    }
    ExitCode::SUCCESS
}

/// Exit status when the cluster cannot be read (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

fn read_live(
    cmd: &ExplainCommand,
    policies_from_cluster: bool,
) -> Result<(live::Live, Option<PolicySet>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let config = cmd.kube.config().await?;
        let client = kube::Client::try_from(cmd.kube.with_timeouts(config))
            .map_err(|e| format!("Kubernetes client: {e}"))?;
        let (ns, name) = &cmd.policies_configmap;
        live::read(
            client,
            policies_from_cluster.then_some((ns.as_str(), name.as_str())),
        )
        .await
    })
}

/// `--pod` names a pod that is not pending: say where it is instead.
fn not_pending(objects: &ClusterObjects, ns: &str, name: &str) -> ExitCode {
    let found = objects.pods.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
    });
    match found {
        None => {
            eprintln!("spillway explain: pod {ns}/{name} not found");
            ExitCode::from(1)
        }
        Some(p) => {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Unknown");
            match node {
                Some(node) if !node.is_empty() => {
                    println!("pod {ns}/{name} is not pending: bound to node {node} (phase {phase})")
                }
                _ => println!(
                    "pod {ns}/{name} is not pending (phase {phase}, being deleted, or held by scheduling gates): spillway does not decide for it"
                ),
            }
            ExitCode::SUCCESS
        }
    }
}
