//! Bench `aci`: N creates + N deletes through [`Paced`] over the Azure SDK
//! client against the in-process emulator, which enforces ARM's write token
//! bucket (a burst, then a refill rate; scaled up from ARM's 200 / 10 per s
//! so the run takes about half a minute). The pacer is configured just below
//! the emulator's limits.
//!
//! Measured: achieved writes/s (successful writes / elapsed) against the
//! write rate the emulator's bucket allowed over the same window
//! (`allowed = (burst + rate × elapsed) / elapsed`: the bucket starts full),
//! duplicates (a name the emulator created more than once), leaks (groups
//! left after the deletes) and 429 answers. A baseline in the same run sends
//! the same workload through the bare client with a naive retry (fixed delay
//! on 429, `Retry-After` ignored, bounded attempts).
//!
//! Writes `target/spillway-bench/aci.json`
//! `{"ops","achieved_writes_per_s","allowed_writes_per_s","utilization","duplicates","leaked","throttled_responses",…,"baseline":{…}}`.
//!
//! `cargo bench --bench aci -- --groups 500 --arm-burst 200 --arm-rate 25 --workers 32`

use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::aci::metered::Metered;
use spillway::aci::paced::{Paced, PacingConfig};
use spillway::aci::{AciError, ContainerGroup, ContainerGroups, TAG_CLUSTER};
use spillway::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SUB: &str = "00000000-0000-0000-0000-00000000be4c";
const RG: &str = "rg-bench";
const TOKEN: &str = "bench-token";
const CLUSTER: &str = "bench";

#[derive(Debug, Clone, Copy)]
struct Opts {
    groups: usize,
    arm_burst: u32,
    arm_rate: f64,
    /// The pacer's rate and burst as a fraction of the emulator's.
    pacer_fraction: f64,
    workers: usize,
    baseline: bool,
    /// Naive baseline: delay between attempts after a 429, and attempts.
    naive_delay: Duration,
    naive_attempts: u32,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "aci bench: {msg}\nflags: --groups N --arm-burst N --arm-rate N (writes/s) \
         --pacer-fraction F (0-1] --workers N --no-baseline"
    );
    std::process::exit(64)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        groups: 500,
        arm_burst: 200,
        arm_rate: 25.0,
        pacer_fraction: 0.98,
        workers: 32,
        baseline: true,
        naive_delay: Duration::from_millis(100),
        naive_attempts: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> f64 {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or_else(|| usage(&format!("{name} needs a positive number")))
        };
        match a.as_str() {
            "--groups" => o.groups = value("--groups") as usize,
            "--arm-burst" => o.arm_burst = value("--arm-burst") as u32,
            "--arm-rate" => o.arm_rate = value("--arm-rate"),
            "--pacer-fraction" => o.pacer_fraction = value("--pacer-fraction"),
            "--workers" => o.workers = value("--workers") as usize,
            "--no-baseline" => o.baseline = false,
            "--bench" => {}
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if o.pacer_fraction > 1.0 {
        usage("--pacer-fraction must be at most 1");
    }
    if o.groups * 2 <= o.arm_burst as usize {
        usage("the writes (2 × --groups) must exceed --arm-burst, or nothing is paced");
    }
    o.workers = o.workers.max(1);
    o
}

fn group(i: usize) -> Result<ContainerGroup, String> {
    serde_json::from_value(serde_json::json!({
        "name": format!("bench-{i:05}"),
        "location": "westeurope",
        "tags": { TAG_CLUSTER: CLUSTER },
        "properties": {
            "osType": "Linux",
            "restartPolicy": "Always",
            "containers": [{
                "name": "main",
                "properties": {
                    "image": "busybox:1.36",
                    "command": ["sleep", "3600"],
                    "resources": { "requests": { "cpu": 0.1, "memoryInGB": 0.1 } }
                }
            }]
        }
    }))
    .map_err(|e| format!("bench group: {e}"))
}

async fn emulator(o: &Opts) -> Result<EmulatorHandle, String> {
    Emulator::start(EmulatorConfig {
        token: Some(TOKEN.into()),
        speed: 1000.0,
        cores_limit: 1_000_000,
        groups_limit: 1_000_000,
        write_burst: o.arm_burst,
        writes_per_sec: o.arm_rate,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("emulator: {e}"))
}

fn azure(emu: &EmulatorHandle) -> Result<AzureContainerGroups, String> {
    AzureContainerGroups::new(&AzureConfig::for_emulator(emu.url.clone(), TOKEN, SUB, RG))
        .map_err(|e| format!("client: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Write {
    Create,
    Delete,
}

/// How a write is retried: by the pacer (nothing to do here), or naively.
#[derive(Debug, Clone, Copy)]
enum Retry {
    Paced,
    Naive { delay: Duration, attempts: u32 },
}

async fn write(
    aci: &dyn ContainerGroups,
    what: Write,
    g: &ContainerGroup,
    retry: Retry,
) -> Result<(), AciError> {
    let once = || async {
        match what {
            Write::Create => aci.create_or_update(g).await.map(drop),
            Write::Delete => aci.delete(&g.name).await,
        }
    };
    match retry {
        Retry::Paced => once().await,
        Retry::Naive { delay, attempts } => {
            let mut attempt = 1;
            loop {
                match once().await {
                    Err(AciError::Throttled { .. }) if attempt < attempts => {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                    }
                    other => return other,
                }
            }
        }
    }
}

/// `workers` tasks take the groups in order and write each once.
/// Returns (successes, failures, first error).
async fn phase(
    aci: Arc<dyn ContainerGroups>,
    groups: Arc<Vec<ContainerGroup>>,
    what: Write,
    retry: Retry,
    workers: usize,
) -> (usize, usize, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (aci, groups, next) = (aci.clone(), groups.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut first) = (0, 0, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(g) = groups.get(i) else { break };
                match write(aci.as_ref(), what, g, retry).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("{what:?} {}: {e}", g.name));
                    }
                }
            }
            (ok, failed, first)
        }));
    }
    let (mut ok, mut failed, mut first) = (0, 0, None);
    for t in tasks {
        match t.await {
            Ok((o, f, e)) => {
                ok += o;
                failed += f;
                if first.is_none() {
                    first = e;
                }
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    (ok, failed, first)
}

#[derive(Debug)]
struct Run {
    label: &'static str,
    writes: usize,
    writes_ok: usize,
    failed_creates: usize,
    failed_deletes: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Names the emulator created more than once (extra creations).
    duplicates: u64,
    leaked: usize,
    /// 429 answers the emulator sent.
    throttled_responses: u64,
    /// Write requests the emulator received (attempts, 429s included).
    write_requests: u64,
}

impl Run {
    fn achieved(&self) -> f64 {
        self.writes_ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The most writes per second ARM's bucket admitted over this run's
    /// window: the full burst plus the refill.
    fn allowed(&self, o: &Opts) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        (f64::from(o.arm_burst) + o.arm_rate * secs) / secs
    }

    fn utilization(&self, o: &Opts) -> f64 {
        self.achieved() / self.allowed(o)
    }
}

async fn run_workload(
    label: &'static str,
    o: &Opts,
    emu: &EmulatorHandle,
    aci: Arc<dyn ContainerGroups>,
    retry: Retry,
) -> Result<Run, String> {
    let groups: Arc<Vec<ContainerGroup>> =
        Arc::new((0..o.groups).map(group).collect::<Result<_, _>>()?);
    let start = Instant::now();
    let created = phase(aci.clone(), groups.clone(), Write::Create, retry, o.workers).await;
    let deleted = phase(aci, groups, Write::Delete, retry, o.workers).await;
    let elapsed = start.elapsed();
    let counters = emu.state.counters();
    let requests = |op: &str| counters.requests.get(op).copied().unwrap_or(0);
    Ok(Run {
        label,
        writes: 2 * o.groups,
        writes_ok: created.0 + deleted.0,
        failed_creates: created.1,
        failed_deletes: deleted.1,
        first_error: created.2.or(deleted.2),
        elapsed,
        duplicates: counters
            .creates_by_name
            .values()
            .map(|n| n.saturating_sub(1))
            .sum(),
        leaked: emu.state.snapshot().len(),
        throttled_responses: counters.throttled,
        write_requests: requests("put") + requests("delete"),
    })
}

fn run_json(r: &Run, o: &Opts) -> serde_json::Value {
    serde_json::json!({
        "ops": r.writes,
        "achieved_writes_per_s": r.achieved(),
        "allowed_writes_per_s": r.allowed(o),
        "utilization": r.utilization(o),
        "duplicates": r.duplicates,
        "leaked": r.leaked,
        "throttled_responses": r.throttled_responses,
        "writes_ok": r.writes_ok,
        "failed_creates": r.failed_creates,
        "failed_deletes": r.failed_deletes,
        "write_requests": r.write_requests,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "first_error": r.first_error,
    })
}

fn print_run(r: &Run, o: &Opts) {
    println!(
        "{:<9} {:>5}/{} writes ok in {:>6.2} s: {:>6.2} writes/s of {:.2} allowed \
         (utilization {:.3}); {} write requests, {} x 429, {} duplicates, {} leaked, \
         {} failed creates, {} failed deletes",
        r.label,
        r.writes_ok,
        r.writes,
        r.elapsed.as_secs_f64(),
        r.achieved(),
        r.allowed(o),
        r.utilization(o),
        r.write_requests,
        r.throttled_responses,
        r.duplicates,
        r.leaked,
        r.failed_creates,
        r.failed_deletes,
    );
    if let Some(e) = &r.first_error {
        println!("{:<9} first error: {e}", r.label);
    }
}

async fn bench(o: Opts) -> Result<(), String> {
    let writes = 2 * o.groups;
    // The emulator's bucket starts full: the fastest run takes the burst at
    // once and the rest at the refill rate.
    let ideal_s = (writes - o.arm_burst as usize) as f64 / o.arm_rate;
    let pacer = PacingConfig {
        writes_per_sec: o.arm_rate * o.pacer_fraction,
        write_burst: ((f64::from(o.arm_burst) * o.pacer_fraction).floor() as u32).max(1),
        ..Default::default()
    };
    println!(
        "aci bench: {} creates + {} deletes, {} workers; emulator (ARM) write bucket {} burst, \
         {}/s; pacer {} burst, {:.2}/s; fastest possible run {:.2} s",
        o.groups,
        o.groups,
        o.workers,
        o.arm_burst,
        o.arm_rate,
        pacer.write_burst,
        pacer.writes_per_sec,
        ideal_s,
    );

    let emu = emulator(&o).await?;
    let metrics = Arc::new(Metrics::new());
    let paced: Arc<dyn ContainerGroups> = Arc::new(
        Paced::new(Metered::new(azure(&emu)?, metrics.clone()), pacer.clone())
            .with_metrics(metrics.clone()),
    );
    let run = run_workload("paced", &o, &emu, paced, Retry::Paced).await?;
    emu.shutdown().await;
    print_run(&run, &o);
    let client_429s = metrics.aci_throttled.get();
    let requests_ok = ["create", "delete"]
        .iter()
        .map(|op| metrics.aci_requests.with_label_values(&[op, "ok"]).get())
        .sum::<u64>();
    println!(
        "paced     metrics: spillway_aci_requests_total{{code=\"ok\"}} create+delete = {requests_ok}, \
         spillway_aci_throttled_total = {client_429s}"
    );

    let baseline = if o.baseline {
        let emu = emulator(&o).await?;
        let raw: Arc<dyn ContainerGroups> = Arc::new(azure(&emu)?);
        let retry = Retry::Naive {
            delay: o.naive_delay,
            attempts: o.naive_attempts,
        };
        let b = run_workload("baseline", &o, &emu, raw, retry).await?;
        emu.shutdown().await;
        print_run(&b, &o);
        println!(
            "baseline  = bare client, retry after {:?} on 429 ignoring Retry-After, at most {} attempts",
            o.naive_delay, o.naive_attempts
        );
        Some(b)
    } else {
        None
    };

    let utilization = run.utilization(&o);
    let met = utilization >= 0.95
        && run.duplicates == 0
        && run.leaked == 0
        && run.writes_ok == run.writes;
    if met {
        println!(
            "target met: utilization {utilization:.3} >= 0.95, 0 duplicates, 0 leaks, every write done"
        );
    } else {
        println!(
            "TARGET NOT MET: utilization {utilization:.3} (want >= 0.95), {} duplicates, {} leaked, \
             {} of {} writes done",
            run.duplicates, run.leaked, run.writes_ok, run.writes
        );
    }

    let mut json = run_json(&run, &o);
    if let Some(obj) = json.as_object_mut() {
        obj.insert("target_met".into(), met.into());
        obj.insert("client_throttled_total".into(), client_429s.into());
        obj.insert(
            "arm".into(),
            serde_json::json!({ "write_burst": o.arm_burst, "writes_per_s": o.arm_rate }),
        );
        obj.insert(
            "pacer".into(),
            serde_json::json!({ "write_burst": pacer.write_burst, "writes_per_s": pacer.writes_per_sec }),
        );
        obj.insert("ideal_s".into(), ideal_s.into());
        obj.insert("workers".into(), o.workers.into());
        if let Some(b) = &baseline {
            let mut bj = run_json(b, &o);
            if let Some(bo) = bj.as_object_mut() {
                bo.insert(
                    "retry".into(),
                    serde_json::json!({
                        "delay_ms": o.naive_delay.as_millis() as u64,
                        "attempts": o.naive_attempts,
                        "honours_retry_after": false,
                    }),
                );
            }
            obj.insert("baseline".into(), bj);
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("aci.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() {
    let o = parse_opts();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => usage(&format!("cannot start the runtime: {e}")),
    };
    if let Err(e) = rt.block_on(bench(o)) {
        eprintln!("aci bench failed: {e}");
        std::process::exit(1);
    }
}
