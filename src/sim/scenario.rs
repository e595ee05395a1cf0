//! Scenarios: the cluster (pools, prices, latencies, autoscaler settings) and
//! the workload (arrival processes) that `spillway simulate` replays.
//!
//! A scenario file is YAML, parsed strictly: unknown fields, wrong types,
//! unparsable durations or quantities and impossible values (min > max, a
//! workload that fits no pool) are errors with file:line:column. The built-in
//! scenario is the same format, embedded (`default-scenario.yaml`).

use super::dist::Dist;
use crate::decision::Prices;
use crate::units::{Duration, Resources, parse_cpu_millis, parse_memory_bytes};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The text of the built-in scenario.
pub const DEFAULT_SCENARIO: &str = include_str!("default-scenario.yaml");

/// The policies that apply to the built-in scenario: the examples shipped in `policies/`.
pub const DEFAULT_POLICIES: &[(&str, &str)] = &[
    (
        "policies/00-cluster-default.yaml",
        include_str!("../../policies/00-cluster-default.yaml"),
    ),
    (
        "policies/batch.yaml",
        include_str!("../../policies/batch.yaml"),
    ),
    ("policies/web.yaml", include_str!("../../policies/web.yaml")),
];

/// An error in a scenario or trace file, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::located::write_at(f, &self.file, self.line, self.column)?;
        write!(f, "{}", self.message)
    }
}

/// Every error found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputErrors(pub Vec<InputError>);

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::located::write_all(f, &self.0)
    }
}

impl std::error::Error for InputErrors {}

/// One VM pool (an AKS node pool).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    /// Allocatable resources of one node.
    pub node: Resources,
    pub min: u32,
    pub max: u32,
    /// USD per node-hour.
    pub price_per_hour: f64,
    /// Request → node Ready.
    pub provision_time: Dist,
}

/// ACI settings of the region.
#[derive(Debug, Clone, PartialEq)]
pub struct AciSpec {
    /// Create → container running.
    pub start_latency: Dist,
    /// Regional vCPU quota in millicores; `None` = unlimited.
    pub quota_cores_millis: Option<u64>,
    /// Regional container group quota; `None` = unlimited.
    pub quota_groups: Option<u32>,
    /// Container group creations allowed per minute (a token bucket of this size).
    pub creates_per_minute: u32,
}

/// Cluster autoscaler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerSpec {
    pub scan_interval: Duration,
    /// An empty node is removed after this long (down to the pool's min).
    pub scale_down_after: Duration,
}

/// How pods of a workload arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// A constant-rate Poisson process in `[from, to)` (default: the whole scenario).
    Poisson {
        per_minute: f64,
        from: Duration,
        to: Option<Duration>,
    },
    /// A Poisson process whose rate follows the day:
    /// `perMinute × (1 + amplitude × cos(2π (t − peakAt) / 24h))`.
    Diurnal {
        per_minute: f64,
        amplitude: f64,
        peak_at: Duration,
    },
    /// `count` pods spread evenly over `[at, at + over)`.
    Burst {
        at: Duration,
        count: u32,
        over: Duration,
    },
    /// Explicit pods (from a trace).
    Trace(Vec<TracePod>),
}

/// One pod of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TracePod {
    pub submit: Duration,
    pub duration: Duration,
    pub requests: Resources,
    pub namespace: String,
    pub priority: i32,
}

/// A source of pods with the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub requests: Resources,
    pub duration: Dist,
    pub tolerates_virtual: bool,
    pub arrivals: Arrivals,
}

/// A whole scenario, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Arrivals happen in `[0, duration)`.
    pub duration: Duration,
    /// Simulated time after `duration` (or after the last trace submission).
    pub tail: Duration,
    pub seed: Option<u64>,
    pub scheduler_interval: Duration,
    pub vm_start_latency: Dist,
    pub pools: Vec<PoolSpec>,
    pub autoscaler: AutoscalerSpec,
    pub aci: AciSpec,
    pub prices: Prices,
    pub workloads: Vec<WorkloadSpec>,
}

/// One pod of the generated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    /// Index of the workload (in `Scenario::workloads`) it came from.
    pub workload: u32,
    pub namespace: Arc<str>,
    pub name: String,
    pub labels: Arc<BTreeMap<String, String>>,
    pub priority: i32,
    pub requests: Resources,
    pub submit: Duration,
    pub duration: Duration,
    pub tolerates_virtual: bool,
}

impl Scenario {
    /// The built-in scenario.
    pub fn builtin() -> Scenario {
        // The embedded file is tested to parse; a failure here is a build defect.
        match Scenario::parse(DEFAULT_SCENARIO, "builtin-scenario.yaml") {
            Ok(s) => s,
            Err(e) => panic!("the built-in scenario does not parse: {e}"),
        }
    }

    /// Parse and validate a scenario file's text.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, InputErrors> {
        let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            InputErrors(vec![InputError {
                file: file.to_string(),
                line,
                column,
                message: first_line(&e.to_string()),
            }])
        })?;
        let mut v = Validator {
            file,
            errors: Vec::new(),
        };
        let sc = v.scenario(raw);
        if v.errors.is_empty() {
            Ok(sc)
        } else {
            Err(InputErrors(v.errors))
        }
    }

    /// When the simulation stops.
    pub fn horizon(&self) -> Duration {
        let last_submit = self
            .workloads
            .iter()
            .filter_map(|w| match &w.arrivals {
                Arrivals::Trace(p) => p.iter().map(|p| p.submit).max(),
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO);
        Duration::from_millis(
            self.duration.millis().max(last_submit.millis() + 1) + self.tail.millis(),
        )
    }

    /// Generate the pods of the scenario, sorted by submission time. The same
    /// seed gives the same pods.
    pub fn generate(&self, seed: u64) -> Vec<PodSpec> {
        let mut pods = Vec::new();
        for (wi, w) in self.workloads.iter().enumerate() {
            let mut rng = SmallRng::seed_from_u64(super::dist::mix(
                seed ^ (wi as u64 + 1).wrapping_mul(0x1000_0001),
            ));
            let ns: Arc<str> = Arc::from(w.namespace.as_str());
            let labels = Arc::new(w.labels.clone());
            let mut push = |submit: Duration, rng: &mut SmallRng, i: usize| {
                let duration = w.duration.sample(rng.random(), rng.random());
                pods.push(PodSpec {
                    workload: wi as u32,
                    namespace: ns.clone(),
                    name: format!("{}-{i}", w.name),
                    labels: labels.clone(),
                    priority: w.priority,
                    requests: w.requests,
                    submit,
                    duration: Duration::from_millis(duration.millis().max(1000)),
                    tolerates_virtual: w.tolerates_virtual,
                });
            };
            let end = self.duration.millis() as f64;
            match &w.arrivals {
                Arrivals::Poisson {
                    per_minute,
                    from,
                    to,
                } => {
                    let to = to.map_or(end, |t| (t.millis() as f64).min(end));
                    let mut t = from.millis() as f64;
                    let mut i = 0;
                    loop {
                        t += exp_gap(&mut rng, *per_minute);
                        if t >= to {
                            break;
                        }
                        push(Duration::from_millis(t as u64), &mut rng, i);
                        i += 1;
                    }
                }
                Arrivals::Diurnal {
                    per_minute,
                    amplitude,
                    peak_at,
                } => {
                    // Thinning: draw at the peak rate, keep with rate(t)/peak.
                    let peak = per_minute * (1.0 + amplitude);
                    let mut t = 0.0;
                    let mut i = 0;
                    loop {
                        t += exp_gap(&mut rng, peak);
                        if t >= end {
                            break;
                        }
                        let phase =
                            std::f64::consts::TAU * (t - peak_at.millis() as f64) / 86_400_000.0;
                        let rate = per_minute * (1.0 + amplitude * phase.cos());
                        if rng.random::<f64>() * peak < rate {
                            push(Duration::from_millis(t as u64), &mut rng, i);
                            i += 1;
                        }
                    }
                }
                Arrivals::Burst { at, count, over } => {
                    for i in 0..*count {
                        let off = over.millis() * i as u64 / (*count).max(1) as u64;
                        push(
                            Duration::from_millis(at.millis() + off),
                            &mut rng,
                            i as usize,
                        );
                    }
                }
                Arrivals::Trace(trace) => {
                    for (i, p) in trace.iter().enumerate() {
                        pods.push(PodSpec {
                            workload: wi as u32,
                            namespace: Arc::from(p.namespace.as_str()),
                            name: format!("{}-{i}", w.name),
                            labels: labels.clone(),
                            priority: p.priority,
                            requests: p.requests,
                            submit: p.submit,
                            duration: p.duration,
                            tolerates_virtual: w.tolerates_virtual,
                        });
                    }
                }
            }
        }
        // Stable: equal submission times keep workload order.
        pods.sort_by_key(|p| p.submit);
        pods
    }
}

fn exp_gap(rng: &mut SmallRng, per_minute: f64) -> f64 {
    let u: f64 = rng.random();
    -(1.0 - u).ln() * 60_000.0 / per_minute
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .to_string()
}

// ---- the on-disk shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScenario {
    name: Option<String>,
    duration: Option<Spanned<String>>,
    tail: Option<Spanned<String>>,
    seed: Option<u64>,
    scheduler_interval: Option<Spanned<String>>,
    vm_start_latency: Option<Spanned<RawDist>>,
    pools: Spanned<Vec<Spanned<RawPool>>>,
    #[serde(default)]
    autoscaler: RawAutoscaler,
    #[serde(default)]
    aci: RawAci,
    #[serde(default)]
    workloads: Vec<Spanned<RawWorkload>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    name: Spanned<String>,
    node_cpu: Spanned<String>,
    node_memory: Spanned<String>,
    #[serde(default)]
    min: u32,
    max: Spanned<u32>,
    price_per_hour: Spanned<f64>,
    provision_time: Option<Spanned<RawDist>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAutoscaler {
    scan_interval: Option<Spanned<String>>,
    scale_down_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAci {
    vcpu_hour: Option<Spanned<f64>>,
    gb_hour: Option<Spanned<f64>>,
    start_latency: Option<Spanned<RawDist>>,
    quota_cores: Option<Spanned<f64>>,
    quota_groups: Option<u32>,
    creates_per_minute: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWorkload {
    name: Spanned<String>,
    namespace: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    priority: i32,
    cpu: Spanned<String>,
    memory: Spanned<String>,
    duration: Spanned<RawDist>,
    #[serde(default = "yes")]
    tolerates_virtual_node: bool,
    arrivals: Spanned<RawArrivals>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum RawDist {
    Fixed(String),
    Uniform(Vec<String>),
    Normal { mean: String, stddev: String },
    Exponential { mean: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum RawArrivals {
    #[serde(rename_all = "camelCase")]
    Poisson {
        per_minute: f64,
        from: Option<String>,
        to: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Diurnal {
        per_minute: f64,
        #[serde(default)]
        amplitude: f64,
        #[serde(default)]
        peak_at: Option<String>,
    },
    Burst {
        at: String,
        count: u32,
        over: Option<String>,
    },
}

struct Validator<'a> {
    file: &'a str,
    errors: Vec<InputError>,
}

impl Validator<'_> {
    fn err(&mut self, loc: Location, message: impl Into<String>) {
        self.errors.push(InputError {
            file: self.file.to_string(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    fn dur_at(&mut self, loc: Location, field: &str, s: &str) -> Duration {
        Duration::parse(s).unwrap_or_else(|e| {
            self.err(loc, format!("{field}: {e}"));
            Duration::ZERO
        })
    }

    fn dur(&mut self, v: &Option<Spanned<String>>, field: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => self.dur_at(s.referenced, field, &s.value),
        }
    }

    fn dist(&mut self, v: &Spanned<RawDist>, field: &str) -> Dist {
        let loc = v.referenced;
        match &v.value {
            RawDist::Fixed(d) => Dist::Fixed(self.dur_at(loc, field, d)),
            RawDist::Uniform(bounds) => {
                if bounds.len() != 2 {
                    self.err(
                        loc,
                        format!(
                            "{field}: uniform takes [min, max], got {} values",
                            bounds.len()
                        ),
                    );
                    return Dist::Fixed(Duration::ZERO);
                }
                let (min, max) = (
                    self.dur_at(loc, field, &bounds[0]),
                    self.dur_at(loc, field, &bounds[1]),
                );
                if min > max {
                    self.err(
                        loc,
                        format!("{field}: uniform min {min} is above max {max}"),
                    );
                }
                Dist::Uniform { min, max }
            }
            RawDist::Normal { mean, stddev } => Dist::Normal {
                mean: self.dur_at(loc, field, mean),
                stddev: self.dur_at(loc, field, stddev),
            },
            RawDist::Exponential { mean } => {
                let mean = self.dur_at(loc, field, mean);
                if mean == Duration::ZERO {
                    self.err(loc, format!("{field}: exponential mean must be above zero"));
                }
                Dist::Exponential { mean }
            }
        }
    }

    fn opt_dist(&mut self, v: &Option<Spanned<RawDist>>, field: &str, default: Dist) -> Dist {
        v.as_ref().map_or(default, |d| self.dist(d, field))
    }

    fn quantity(
        &mut self,
        v: &Spanned<String>,
        field: &str,
        parse: fn(&str) -> Result<u64, String>,
    ) -> u64 {
        parse(&v.value).unwrap_or_else(|e| {
            self.err(v.referenced, format!("{field}: {e}"));
            0
        })
    }

    fn price(&mut self, v: &Option<Spanned<f64>>, field: &str, default: f64) -> f64 {
        match v {
            None => default,
            Some(p) if p.value.is_finite() && p.value >= 0.0 => p.value,
            Some(p) => {
                self.err(
                    p.referenced,
                    format!("{field}: must be a non-negative number, got {}", p.value),
                );
                default
            }
        }
    }

    fn scenario(&mut self, raw: RawScenario) -> Scenario {
        let duration = self.dur(&raw.duration, "duration", Duration::from_secs(86_400));
        if let Some(d) = &raw.duration
            && duration == Duration::ZERO
        {
            self.err(d.referenced, "duration: must be above zero");
        }
        let tail = self.dur(&raw.tail, "tail", Duration::from_secs(3600));
        let scheduler_interval = self.dur(
            &raw.scheduler_interval,
            "schedulerInterval",
            Duration::from_secs(1),
        );
        if let Some(s) = &raw.scheduler_interval
            && scheduler_interval == Duration::ZERO
        {
            self.err(s.referenced, "schedulerInterval: must be above zero");
        }
        let vm_start_latency = self.opt_dist(
            &raw.vm_start_latency,
            "vmStartLatency",
            Dist::Fixed(Duration::from_secs(3)),
        );
        let mut pools: Vec<PoolSpec> = Vec::new();
        if raw.pools.value.is_empty() {
            self.err(
                raw.pools.referenced,
                "pools: at least one VM pool is required",
            );
        }
        for p in &raw.pools.value {
            let p = &p.value;
            if pools.iter().any(|q| q.name == p.name.value) {
                self.err(
                    p.name.referenced,
                    format!("pools: duplicate pool name {:?}", p.name.value),
                );
            }
            let node = Resources::new(
                self.quantity(&p.node_cpu, "nodeCpu", parse_cpu_millis),
                self.quantity(&p.node_memory, "nodeMemory", parse_memory_bytes),
            );
            if p.min > p.max.value {
                self.err(
                    p.max.referenced,
                    format!("max: {} is below min {}", p.max.value, p.min),
                );
            }
            if p.max.value == 0 {
                self.err(
                    p.max.referenced,
                    "max: a pool needs room for at least one node",
                );
            }
            let price_per_hour = self.price(&Some(p.price_per_hour.clone()), "pricePerHour", 0.0);
            let provision_time = self.opt_dist(
                &p.provision_time,
                "provisionTime",
                Dist::Uniform {
                    min: Duration::from_secs(180),
                    max: Duration::from_secs(300),
                },
            );
            pools.push(PoolSpec {
                name: p.name.value.clone(),
                node,
                min: p.min,
                max: p.max.value,
                price_per_hour,
                provision_time,
            });
        }
        let autoscaler = AutoscalerSpec {
            scan_interval: self.dur(
                &raw.autoscaler.scan_interval,
                "autoscaler.scanInterval",
                Duration::from_secs(10),
            ),
            scale_down_after: self.dur(
                &raw.autoscaler.scale_down_after,
                "autoscaler.scaleDownAfter",
                Duration::from_mins(10),
            ),
        };
        if let Some(s) = &raw.autoscaler.scan_interval
            && autoscaler.scan_interval == Duration::ZERO
        {
            self.err(s.referenced, "autoscaler.scanInterval: must be above zero");
        }
        let defaults = Prices::default();
        let prices = Prices {
            aci_vcpu_hour: self.price(&raw.aci.vcpu_hour, "aci.vcpuHour", defaults.aci_vcpu_hour),
            aci_gb_hour: self.price(&raw.aci.gb_hour, "aci.gbHour", defaults.aci_gb_hour),
        };
        let quota_cores_millis = raw.aci.quota_cores.as_ref().and_then(|q| {
            if q.value.is_finite() && q.value >= 0.0 {
                Some((q.value * 1000.0).round() as u64)
            } else {
                self.err(
                    q.referenced,
                    "aci.quotaCores: must be a non-negative number",
                );
                None
            }
        });
        let creates_per_minute = match &raw.aci.creates_per_minute {
            Some(c) if c.value == 0 => {
                self.err(c.referenced, "aci.createsPerMinute: must be above zero");
                1
            }
            Some(c) => c.value,
            None => 300,
        };
        let aci = AciSpec {
            start_latency: self.opt_dist(
                &raw.aci.start_latency,
                "aci.startLatency",
                Dist::Uniform {
                    min: Duration::from_secs(30),
                    max: Duration::from_secs(60),
                },
            ),
            quota_cores_millis,
            quota_groups: raw.aci.quota_groups,
            creates_per_minute,
        };
        let mut workloads = Vec::new();
        for w in &raw.workloads {
            let loc = w.referenced;
            let w = &w.value;
            let requests = Resources::new(
                self.quantity(&w.cpu, "cpu", parse_cpu_millis),
                self.quantity(&w.memory, "memory", parse_memory_bytes),
            );
            if !pools.is_empty() && !pools.iter().any(|p| requests.fits_in(&p.node)) {
                self.err(
                    w.cpu.referenced,
                    format!("workload {:?}: requests fit no pool's nodes", w.name.value),
                );
            }
            let duration = self.dist(&w.duration, "duration");
            let aloc = w.arrivals.referenced;
            let arrivals = match &w.arrivals.value {
                RawArrivals::Poisson {
                    per_minute,
                    from,
                    to,
                } => {
                    self.rate(aloc, *per_minute);
                    Arrivals::Poisson {
                        per_minute: *per_minute,
                        from: from.as_deref().map_or(Duration::ZERO, |f| {
                            self.dur_at(aloc, "arrivals.poisson.from", f)
                        }),
                        to: to
                            .as_deref()
                            .map(|t| self.dur_at(aloc, "arrivals.poisson.to", t)),
                    }
                }
                RawArrivals::Diurnal {
                    per_minute,
                    amplitude,
                    peak_at,
                } => {
                    self.rate(aloc, *per_minute);
                    if !(0.0..=1.0).contains(amplitude) {
                        self.err(
                            aloc,
                            format!(
                                "arrivals.diurnal.amplitude: must be within [0, 1], got {amplitude}"
                            ),
                        );
                    }
                    Arrivals::Diurnal {
                        per_minute: *per_minute,
                        amplitude: *amplitude,
                        peak_at: peak_at
                            .as_deref()
                            .map_or(Duration::from_secs(14 * 3600), |p| {
                                self.dur_at(aloc, "arrivals.diurnal.peakAt", p)
                            }),
                    }
                }
                RawArrivals::Burst { at, count, over } => Arrivals::Burst {
                    at: self.dur_at(aloc, "arrivals.burst.at", at),
                    count: *count,
                    over: over.as_deref().map_or(Duration::ZERO, |o| {
                        self.dur_at(aloc, "arrivals.burst.over", o)
                    }),
                },
            };
            if w.namespace.value.is_empty() {
                self.err(w.namespace.referenced, "namespace: must not be empty");
            }
            let _ = loc;
            workloads.push(WorkloadSpec {
                name: w.name.value.clone(),
                namespace: w.namespace.value.clone(),
                labels: w.labels.clone(),
                priority: w.priority,
                requests,
                duration,
                tolerates_virtual: w.tolerates_virtual_node,
                arrivals,
            });
        }
        Scenario {
            name: raw.name.unwrap_or_else(|| "scenario".to_string()),
            duration,
            tail,
            seed: raw.seed,
            scheduler_interval,
            vm_start_latency,
            pools,
            autoscaler,
            aci,
            prices,
            workloads,
        }
    }

    fn rate(&mut self, loc: Location, per_minute: f64) {
        if !(per_minute.is_finite() && per_minute > 0.0) {
            self.err(
                loc,
                format!("arrivals: perMinute must be above zero, got {per_minute}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scenario_parses_and_generates_deterministically() {
        let sc = Scenario::builtin();
        assert_eq!(sc.name, "builtin-day");
        assert_eq!(sc.pools.len(), 1);
        assert_eq!(sc.workloads.len(), 4);
        let a = sc.generate(7);
        let b = sc.generate(7);
        assert_eq!(a, b);
        assert_ne!(a, sc.generate(8));
        assert!(a.windows(2).all(|w| w[0].submit <= w[1].submit));
        assert!(a.iter().all(|p| p.submit < sc.duration));
        // The spike and the batch wave are exact counts.
        assert_eq!(a.iter().filter(|p| &*p.namespace == "shop").count(), 120);
        assert_eq!(a.iter().filter(|p| &*p.namespace == "batch").count(), 150);
    }

    #[test]
    fn diurnal_arrivals_peak_where_asked() {
        let sc = Scenario::builtin();
        let pods = sc.generate(1);
        let front: Vec<_> = pods
            .iter()
            .filter(|p| p.name.starts_with("frontend-"))
            .collect();
        let hour = |h: u64| {
            front
                .iter()
                .filter(|p| p.submit.millis() / 3_600_000 == h)
                .count()
        };
        // Peak at 14:00, trough at 02:00: rate 9/min vs 1/min.
        assert!(hour(14) > 4 * hour(2), "14h {} vs 2h {}", hour(14), hour(2));
        let total = front.len() as f64;
        assert!(
            (total - 5.0 * 1440.0).abs() < 0.05 * 5.0 * 1440.0,
            "{total}"
        );
    }

    fn errs(text: &str) -> Vec<String> {
        match Scenario::parse(text, "s.yaml") {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const POOL: &str = "pools:\n  - name: user\n    nodeCpu: 3860m\n    nodeMemory: 12Gi\n    max: 10\n    pricePerHour: 0.2\n";

    #[test]
    fn unknown_fields_and_wrong_types_point_at_the_line() {
        let e = errs(&format!("{POOL}bogus: 1\n"));
        assert!(e[0].starts_with("s.yaml:7:"), "{e:?}");
        assert!(e[0].contains("bogus"), "{e:?}");
        let e = errs(
            "pools:\n  - name: user\n    nodeCpu: 1\n    nodeMemory: 1Gi\n    max: lots\n    pricePerHour: 1\n",
        );
        assert!(e[0].starts_with("s.yaml:5:"), "{e:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_locations() {
        let text = format!(
            "{POOL}duration: -5m\nworkloads:\n  - name: w\n    namespace: a\n    cpu: lots\n    memory: 1Gi\n    duration: {{ uniform: [5m, 1m] }}\n    arrivals: {{ poisson: {{ perMinute: 0 }} }}\n"
        );
        let e = errs(&text);
        assert!(
            e.iter()
                .any(|m| m.starts_with("s.yaml:7:") && m.contains("negative")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("s.yaml:11:") && m.contains("cpu")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("s.yaml:13:") && m.contains("above max")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("s.yaml:14:") && m.contains("perMinute")),
            "{e:?}"
        );
    }

    #[test]
    fn pool_limits_are_checked() {
        let e = errs(
            "pools:\n  - name: user\n    nodeCpu: 1\n    nodeMemory: 1Gi\n    min: 5\n    max: 2\n    pricePerHour: 1\n",
        );
        assert!(
            e[0].starts_with("s.yaml:6:") && e[0].contains("below min"),
            "{e:?}"
        );
        let e = errs("pools: []\n");
        assert!(e[0].contains("at least one"), "{e:?}");
        let e = errs(&format!(
            "{POOL}workloads:\n  - name: huge\n    namespace: a\n    cpu: \"64\"\n    memory: 1Gi\n    duration: {{ fixed: 1m }}\n    arrivals: {{ burst: {{ at: 1h, count: 3 }} }}\n"
        ));
        assert!(e[0].contains("fit no pool"), "{e:?}");
    }
}
