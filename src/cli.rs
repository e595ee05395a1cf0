//! Small command implementations shared by the binary and its tests.

use std::path::Path;
use std::process::ExitCode;

/// Exit code for bad input or configuration (EX_USAGE / EX_DATAERR family).
pub const EXIT_BAD_INPUT: u8 = 64;

/// Flags of `spillway policy check`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyCheckArgs {
    /// Policy files, or directories whose `*.yaml`/`*.yml` files are read (as the extender reads them).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// `text`: one `file:line:column: field: message` line per error, then a summary;
    /// `json`: `{"errors": [{file, line, column, field, message}], "summary": {...}}` for editors and CI.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CheckFormat,
}

/// Output of `spillway policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

/// `spillway policy check PATH...`: every error of every file and the
/// conflicts between files, on stdout; exit 64 if there is any.
pub fn policy_check(args: &PolicyCheckArgs) -> ExitCode {
    let report = crate::policy::check::check_paths(&args.paths);
    let text = match args.format {
        CheckFormat::Text => report.text(),
        CheckFormat::Json => format!("{}\n", report.json()),
    };
    if !write_stdout(&text) {
        return ExitCode::FAILURE;
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_INPUT)
    }
}

/// `spillway --version`: the crate version, git commit and build date (set by build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SPILLWAY_GIT_COMMIT"),
    ", built ",
    env!("SPILLWAY_BUILD_DATE"),
    ")"
);

/// `spillway version`: one `key: value` per line.
pub fn version() -> ExitCode {
    let text = format!(
        "spillway {}\ncommit: {}\nbuilt: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("SPILLWAY_GIT_COMMIT"),
        env!("SPILLWAY_BUILD_DATE"),
    );
    if write_stdout(&text) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `spillway completion SHELL`: the completion script for `cmd` on stdout.
pub fn completion(shell: clap_complete::Shell, cmd: &mut clap::Command) -> ExitCode {
    let mut script = Vec::new();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, &mut script);
    match String::from_utf8(script) {
        Ok(text) if write_stdout(&text) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("completion script is not UTF-8: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Print every policy error, then `{prefix}N errors in M files (DIR)`.
pub fn report_policy_errors(errors: &crate::policy::PolicyErrors, dir: &Path, prefix: &str) {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    eprintln!(
        "{prefix}{} ({})",
        crate::policy::check::summary(&errors.0),
        dir.display()
    );
}

/// Open the hot-reloaded policy store of a long-running role; on errors
/// report them (see [`report_policy_errors`]) and give the exit code.
pub fn open_policy_store(
    dir: &Path,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    prefix: &str,
) -> Result<std::sync::Arc<crate::policy::reload::PolicyStore>, ExitCode> {
    crate::policy::reload::PolicyStore::open(dir, metrics)
        .map(std::sync::Arc::new)
        .map_err(|errors| {
            report_policy_errors(&errors, dir, prefix);
            ExitCode::from(EXIT_BAD_INPUT)
        })
}

/// Output format of commands that print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Flags of `spillway simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Scenario file (YAML: pools, prices, latencies, workloads). Default: the built-in day.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<std::path::PathBuf>,
    /// Replay a CSV trace (`submit_s,duration_s,cpu,memory_mib,namespace[,priority]`) on the scenario's cluster.
    #[arg(long, value_name = "FILE.csv")]
    pub trace: Option<std::path::PathBuf>,
    /// Policy directory (same files as the extender). Default: the built-in scenario's policies
    /// (policies/), or for a trace a cluster default (Auto, spillAfter 30s, maxVmWait 2m, no budgets).
    #[arg(long, value_name = "DIR")]
    pub policies: Option<std::path::PathBuf>,
    /// Random seed for the workload and every draw; the same seed gives the same output. Default: the scenario's seed, else 42.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Strategies to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "vm-only,aci-always,spillway,spillway-no-drain", value_parser = parse_strategy)]
    pub strategies: Vec<crate::sim::Strategy>,
    /// Output format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Also write a self-contained HTML report (inline SVG charts) to FILE.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<std::path::PathBuf>,
    /// Print the built-in scenario (a starting point for --scenario) and exit.
    #[arg(long)]
    pub print_scenario: bool,
    /// Run the strategies on up to N threads (default: the machine's cores). The output
    /// is the same for any N; 1 runs them one after the other.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

fn parse_strategy(s: &str) -> Result<crate::sim::Strategy, String> {
    crate::sim::Strategy::parse(s).ok_or_else(|| {
        let names: Vec<&str> = crate::sim::Strategy::ALL.iter().map(|s| s.name()).collect();
        format!("unknown strategy {s:?} (one of {})", names.join(", "))
    })
}

fn bad_input(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn read(path: &Path, what: &str) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| bad_input(format!("{what} {}: {e}", path.display())))
}

/// `spillway simulate`.
pub fn simulate(args: &SimulateArgs) -> ExitCode {
    use crate::sim;
    if args.print_scenario {
        return if write_stdout(sim::scenario::DEFAULT_SCENARIO) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let base = match &args.scenario {
        None => sim::Scenario::builtin(),
        Some(path) => {
            let text = match read(path, "--scenario") {
                Ok(t) => t,
                Err(code) => return code,
            };
            match sim::Scenario::parse(&text, &path.display().to_string()) {
                Ok(s) => s,
                Err(e) => return bad_input(e),
            }
        }
    };
    let sc = match &args.trace {
        None => base,
        Some(path) => {
            let text = match read(path, "--trace") {
                Ok(t) => t,
                Err(code) => return code,
            };
            match sim::trace::apply(&base, &text, &path.display().to_string()) {
                Ok(s) => s,
                Err(e) => return bad_input(e),
            }
        }
    };
    let policies = match (&args.policies, &args.trace, &args.scenario) {
        (Some(dir), _, _) => crate::policy::load_dir(dir),
        (None, Some(_), _) => Ok(sim::trace_default_policies()),
        (None, None, None) => sim::builtin_policies(),
        // A custom scenario without --policies uses the shipped example policies too.
        (None, None, Some(_)) => sim::builtin_policies(),
    };
    let policies = match policies {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    if args.strategies.is_empty() {
        return bad_input("--strategies: at least one strategy is needed");
    }
    let seed = args.seed.or(sc.seed).unwrap_or(42);
    let bar = progress_bar(sc.horizon().millis() / 1000 * args.strategies.len() as u64);
    let threads = args.threads.map_or_else(sim::default_threads, usize::from);
    // Strategies run side by side: the bar shows the sum of their progress.
    let mut done_s = vec![0u64; args.strategies.len()];
    let cmp = sim::compare_on(
        &sc,
        &policies,
        seed,
        &args.strategies,
        threads,
        &mut |i, t| {
            if let Some(d) = done_s.get_mut(i) {
                *d = t / 1000;
            }
            bar.set_position(done_s.iter().sum());
        },
    );
    bar.finish_and_clear();
    if let Some(path) = &args.report {
        let page = match sim::report::html(&cmp) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("--report {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let text = match args.output {
        Output::Table => cmp.table(),
        Output::Json => format!("{}\n", cmp.to_json()),
    };
    if !write_stdout(&text) {
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.report {
        eprintln!("report written to {}", path.display());
    }
    ExitCode::SUCCESS
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("simulating {bar:40} {percent}% ({elapsed})")
    {
        bar.set_style(style);
    }
    bar
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => {
            eprintln!("writing to stdout: {e}");
            false
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and a
/// multi-threaded runtime for the long-running roles; `None` after printing
/// why if the runtime cannot start.
pub fn server_runtime(role: &str) -> Option<tokio::runtime::Runtime> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("spillway {role}: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// How the roles that talk to the API server find it, and how long they wait for it.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct KubeFlags {
    /// kubeconfig file to use. Without it: the in-cluster service account,
    /// else $KUBECONFIG, else ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Seconds to wait for a connection (TCP and TLS) to the API server.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub kube_connect_timeout_secs: u64,
    /// Seconds a request/response call (get, list, create, patch, delete,
    /// eviction) may go without the API server sending or accepting a byte
    /// before it fails. Watches are not cut by it: they end at their own
    /// `timeoutSeconds` (290 s) and kube-rs' watcher drops one silent past that.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub kube_timeout_secs: u64,
}

impl Default for KubeFlags {
    fn default() -> Self {
        KubeFlags {
            kubeconfig: None,
            context: None,
            kube_connect_timeout_secs: 10,
            kube_timeout_secs: 30,
        }
    }
}

/// The clients of a long-running role, all made from one configuration by
/// [`KubeFlags::clients`]: the only place API server timeouts are set.
///
/// kube-rs' read timeout is a socket idle timeout, applied to every read of
/// a connection. A watch legitimately stays silent for minutes (a quiet
/// node's pods, the autoscaler's status ConfigMap), so a watch on a client
/// with a 30 s read timeout would be cut and re-established every 30 s.
/// Watches therefore get their own client without one; everything else
/// fails within the timeout instead of hanging a loop forever.
#[derive(Clone)]
pub struct KubeClients {
    /// Request/response calls: connect, read and write timeouts; kube-rs
    /// retries 429/503/504 (each attempt within the timeouts).
    pub calls: kube::Client,
    /// The same without kube-rs' retries, for writes whose errors must come
    /// back at once: a PDB's 429 on an eviction, a reservation's 409.
    pub calls_no_retry: kube::Client,
    /// Watches (and the list each watch starts from): connect and write
    /// timeouts only.
    pub watches: kube::Client,
}

impl KubeFlags {
    /// `config` with this replica's timeouts for request/response calls.
    pub fn with_timeouts(&self, mut config: kube::Config) -> kube::Config {
        let connect = std::time::Duration::from_secs(self.kube_connect_timeout_secs);
        let io = std::time::Duration::from_secs(self.kube_timeout_secs);
        config.connect_timeout = Some(connect);
        config.read_timeout = Some(io);
        config.write_timeout = Some(io);
        // Count the read timeout from when a request is written, not from
        // when its pooled connection went idle (up to 90 s earlier).
        config.reset_reader_on_write = true;
        config
    }

    /// The clients of a long-running role for `config` (see [`KubeClients`]).
    pub fn clients(&self, config: kube::Config) -> Result<KubeClients, kube::Error> {
        let calls = self.with_timeouts(config);
        let mut no_retry = calls.clone();
        no_retry.default_retry = false;
        let mut watches = calls.clone();
        watches.read_timeout = None;
        watches.reset_reader_on_write = false;
        Ok(KubeClients {
            calls: kube::Client::try_from(calls)?,
            calls_no_retry: kube::Client::try_from(no_retry)?,
            watches: kube::Client::try_from(watches)?,
        })
    }

    /// The client configuration these flags select; the error says which
    /// source failed and why. Timeouts are applied by [`Self::clients`].
    pub async fn config(&self) -> Result<kube::Config, String> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("--context: {e}")),
            None => kube::Config::infer().await.map_err(|e| {
                format!("no usable Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config): {e}")
            }),
        }
    }
}
