//! The emulator's world: stored groups, their time-derived lifecycle, the IP
//! pool, quotas, ARM-style token buckets and the fault plan.
//!
//! Nothing here does I/O or reads a clock: every method takes `now`, so the
//! lifecycle is a pure function of (creation instant, elapsed × speed).

use super::subnets::Subnets;
use super::{EmulatorConfig, Faults, OperationFaults};
use crate::aci::model::*;
use crate::units::{Duration as Millis, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::time::Instant;

/// What an ARM call was, for throttling and fault plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Put,
    Get,
    List,
    Delete,
    Logs,
    Metrics,
    Usage,
    /// `containers/{name}/exec` (executeCommand), a POST.
    Exec,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Logs => "logs",
            Op::Metrics => "metrics",
            Op::Usage => "usage",
            Op::Exec => "exec",
        }
    }
    pub fn is_write(self) -> bool {
        matches!(self, Op::Put | Op::Delete | Op::Exec)
    }
}

/// Key of a stored group: subscription, resource group (both lowercased, as
/// ARM compares them case-insensitively) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
}

impl GroupKey {
    pub fn new(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            subscription: subscription.to_ascii_lowercase(),
            resource_group: resource_group.to_ascii_lowercase(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    /// As PUT (secrets included), with `id`/`type` filled in.
    spec: ContainerGroup,
    created: Instant,
    created_wall: Timestamp,
    ip: Option<Ipv4Addr>,
    /// The subnet (lowercased id) `ip` belongs to; `None` for a public IP.
    subnet: Option<String>,
    puts: u64,
    /// Provisioning ends `Failed` with this detail (fault plan at PUT time).
    fails: Option<String>,
}

/// Token bucket: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Result of taking a throttling token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    Ok { remaining: u64 },
    Throttled { retry_after_secs: u64 },
}

/// How a request should be disturbed, decided before it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    ServerError,
    Throttle,
    /// Run the operation, then hang past the client's timeout.
    Hang(Duration),
}

/// Why a PUT was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum PutError {
    Invalid { code: &'static str, message: String },
    Quota { message: String },
    Capacity { message: String },
}

/// Counters for tests and duplicate detection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Requests seen per operation (including refused ones).
    pub requests: BTreeMap<String, u64>,
    /// PUTs that created a group (201).
    pub creates: u64,
    /// PUTs that changed an existing group.
    pub updates: u64,
    /// PUTs of an unchanged spec (idempotent no-ops).
    pub noop_puts: u64,
    pub deletes: u64,
    pub throttled: u64,
    pub faults_injected: u64,
    /// Groups created per name over the emulator's life: > 1 means a group
    /// was deleted and created again (or vanished and was recreated).
    pub creates_by_name: BTreeMap<String, u64>,
}

/// One group in the `/_emulator/groups` snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshot {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub provisioning_state: String,
    pub state: String,
    pub cores: f64,
    pub ip: Option<String>,
    /// The subnet the group's private IP belongs to (as PUT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    pub puts: u64,
    pub tags: BTreeMap<String, String>,
    /// Secret volume → the file names it was created with (values withheld),
    /// so tests can see that volume contents reached the service.
    pub secret_files: BTreeMap<String, Vec<String>>,
    /// Container → names of the environment variables it was created with
    /// as `secureValue` (values withheld), so tests can see secrets stayed secret.
    pub secure_env: BTreeMap<String, Vec<String>>,
}

pub struct World {
    pub config: EmulatorConfig,
    pub faults: Faults,
    groups: BTreeMap<GroupKey, Record>,
    used_ips: BTreeSet<Ipv4Addr>,
    next_ip: u32,
    /// The virtual network (`/_emulator/subnets`).
    pub subnets: Subnets,
    buckets: BTreeMap<(String, bool), Bucket>,
    rng: SmallRng,
    pub counters: Counters,
    /// Output appended to containers (`POST /_emulator/logs`), each line
    /// with the wall-clock time it was appended; dropped with the group.
    appended: BTreeMap<(GroupKey, String), VecDeque<(Timestamp, String)>>,
    /// Metric values set per container (`POST /_emulator/groups/{name}/metrics`),
    /// newest last; dropped with the group.
    metrics: BTreeMap<(GroupKey, String), Vec<MetricSetting>>,
}

/// What Azure Monitor holds for one container over a range of minutes: the
/// same one-minute averages for every minute in `[from, to)` (`to`
/// open-ended when `None`). A later setting overrides an earlier one
/// where they overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSetting {
    pub from: Timestamp,
    pub to: Option<Timestamp>,
    pub cpu_millicores: f64,
    pub memory_bytes: f64,
}

/// One minute of one container as the emulated Monitor has it: its start
/// and `(cpu millicores, memory bytes)` averages, `None` without data.
pub type MinuteValue = (Timestamp, Option<(f64, f64)>);

/// How long Monitor keeps platform metrics (93 days); older minutes are
/// never listed.
const METRICS_RETENTION_MS: i64 = 93 * 86_400_000;
const MINUTE_MS: i64 = 60_000;

/// Lines kept per container beyond the synthesized ones (ACI keeps up to
/// 4 MB of log; the emulator keeps the newest lines).
const APPENDED_LINES_KEPT: usize = 10_000;

/// `t` as RFC 3339 with nine fractional digits (what the logs API's
/// `timestamps=true` prefixes each line with).
fn log_time(t: Timestamp) -> String {
    let whole = t.to_rfc3339();
    let base = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{base}.{:03}000000Z", t.millis().rem_euclid(1000))
}

impl World {
    pub fn new(config: EmulatorConfig) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        let faults = config.faults.clone();
        Self {
            config,
            faults,
            groups: BTreeMap::new(),
            used_ips: BTreeSet::new(),
            next_ip: 4,
            subnets: Subnets::default(),
            buckets: BTreeMap::new(),
            rng,
            counters: Counters::default(),
            appended: BTreeMap::new(),
            metrics: BTreeMap::new(),
        }
    }

    /// Take one read or write token for `subscription`.
    pub fn admit(&mut self, subscription: &str, write: bool, now: Instant) -> Admit {
        let (capacity, per_sec) = if write {
            (self.config.write_burst as f64, self.config.writes_per_sec)
        } else {
            (self.config.read_burst as f64, self.config.reads_per_sec)
        };
        let bucket = self
            .buckets
            .entry((subscription.to_ascii_lowercase(), write))
            .or_insert(Bucket {
                tokens: capacity,
                last: now,
            });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Ok {
                remaining: bucket.tokens.floor() as u64,
            }
        } else {
            self.counters.throttled += 1;
            let wait = if per_sec > 0.0 {
                (1.0 - bucket.tokens) / per_sec
            } else {
                3600.0
            };
            Admit::Throttled {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            }
        }
    }

    /// Roll the dice for one request, per the fault plan (seeded, so a run
    /// with the same seed and request order sees the same faults).
    /// `group` is the group the request is about (`None` for lists and
    /// usage), for faults aimed at one group.
    pub fn fault_for(&mut self, op: Op, group: Option<&str>) -> (Fault, Duration) {
        *self
            .counters
            .requests
            .entry(op.name().to_string())
            .or_default() += 1;
        let plan: OperationFaults = self.faults.plan_for(op.name(), group);
        let latency = Duration::from_millis(plan.latency_ms);
        let roll: f64 = self.rng.random();
        let fault = if roll < plan.error_rate {
            Fault::ServerError
        } else if roll < plan.error_rate + plan.throttle_rate {
            Fault::Throttle
        } else if roll < plan.error_rate + plan.throttle_rate + plan.timeout_rate {
            Fault::Hang(Duration::from_millis(self.faults.hang_ms))
        } else {
            Fault::None
        };
        if fault != Fault::None {
            self.counters.faults_injected += 1;
        }
        (fault, latency)
    }

    fn scaled_elapsed(&self, since: Instant, now: Instant) -> Duration {
        now.saturating_duration_since(since)
            .mul_f64(self.config.speed.max(f64::MIN_POSITIVE))
    }

    /// Create or update a group. Returns (group as answered, created?).
    pub fn put(
        &mut self,
        key: GroupKey,
        resource_group_display: &str,
        mut body: ContainerGroup,
        now: Instant,
        now_wall: Timestamp,
    ) -> Result<(ContainerGroup, bool), PutError> {
        body.name = key.name.clone();
        validate(&key.name, &body, &self.config)?;
        body.id = Some(format!(
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
            key.subscription, resource_group_display, RESOURCE_TYPE, key.name
        ));
        body.resource_type = Some(RESOURCE_TYPE.to_string());
        let subnet = self.subnets.check(&key.name, &body)?;
        let spec = body.spec();
        // What is kept and answered: the spec plus the `id` and `type` ARM
        // always returns.
        let stored = ContainerGroup {
            id: body.id.clone(),
            resource_type: body.resource_type.clone(),
            ..spec.clone()
        };

        if let Some(existing) = self.groups.get_mut(&key) {
            existing.puts += 1;
            if existing.spec.spec() == spec {
                self.counters.noop_puts += 1;
                let key2 = key.clone();
                return Ok((self.render(&key2, now, true), false));
            }
            let old_cores = existing.spec.requested_cores();
            let new_cores = spec.requested_cores();
            let location = existing.spec.location.clone();
            let in_use = self.cores_in(&key.subscription, &location) - old_cores;
            if in_use + new_cores > self.config.cores_limit as f64 + 1e-9 {
                return Err(PutError::Quota {
                    message: quota_message(
                        "StandardCores",
                        &location,
                        self.config.cores_limit,
                        in_use.ceil() as i64,
                        new_cores.ceil() as i64,
                    ),
                });
            }
            let wants_ip = wants_public_ip(&spec);
            if let Some(sk) = &subnet
                && existing_subnet(self.groups.get(&key)) != Some(sk)
            {
                self.subnets.has_room(sk)?;
            }
            // An update restarts the group, as ACI does.
            let fails = self.faults.fail_provisioning.get(&key.name).cloned();
            if let Some(existing) = self.groups.get_mut(&key) {
                existing.spec = stored;
                existing.created = now;
                existing.created_wall = now_wall;
                existing.fails = fails;
            }
            self.ensure_ip(&key, wants_ip, subnet);
            self.counters.updates += 1;
            return Ok((self.render(&key, now, true), false));
        }

        // New group: capacity faults, then quotas.
        let capacity_roll: f64 = self.rng.random();
        if capacity_roll < self.faults.capacity_error_rate {
            self.counters.faults_injected += 1;
            return Err(PutError::Capacity {
                message: capacity_message(&spec),
            });
        }
        let groups_in_use = self
            .groups
            .iter()
            .filter(|(k, r)| {
                k.subscription == key.subscription
                    && r.spec.location.eq_ignore_ascii_case(&spec.location)
            })
            .count() as i64;
        if groups_in_use + 1 > self.config.groups_limit {
            return Err(PutError::Quota {
                message: quota_message(
                    "ContainerGroups",
                    &spec.location,
                    self.config.groups_limit,
                    groups_in_use,
                    1,
                ),
            });
        }
        let cores_in_use = self.cores_in(&key.subscription, &spec.location);
        let new_cores = spec.requested_cores();
        if cores_in_use + new_cores > self.config.cores_limit as f64 + 1e-9 {
            return Err(PutError::Quota {
                message: quota_message(
                    "StandardCores",
                    &spec.location,
                    self.config.cores_limit,
                    cores_in_use.ceil() as i64,
                    new_cores.ceil() as i64,
                ),
            });
        }
        let wants_ip = wants_public_ip(&spec);
        if let Some(sk) = &subnet {
            self.subnets.has_room(sk)?;
        }
        self.groups.insert(
            key.clone(),
            Record {
                spec: stored,
                created: now,
                created_wall: now_wall,
                ip: None,
                subnet: None,
                puts: 1,
                fails: self.faults.fail_provisioning.get(&key.name).cloned(),
            },
        );
        self.ensure_ip(&key, wants_ip, subnet);
        self.counters.creates += 1;
        *self
            .counters
            .creates_by_name
            .entry(key.name.clone())
            .or_default() += 1;
        Ok((self.render(&key, now, true), true))
    }

    /// Give the group the address it needs: a private one of `subnet`
    /// (ACI assigns one to every group in a subnet, with or without
    /// `ipAddress`), else a public one when it `wants_public`; release what
    /// it no longer needs. An address that still fits is kept.
    fn ensure_ip(&mut self, key: &GroupKey, wants_public: bool, subnet: Option<String>) {
        let Some(r) = self.groups.get(key) else {
            return;
        };
        let (ip, current_subnet) = (r.ip, r.subnet.clone());
        let fits = match (ip, &subnet, &current_subnet) {
            (None, _, _) => false,
            (Some(_), Some(want), Some(have)) => want == have,
            (Some(_), None, None) => wants_public,
            _ => false,
        };
        if fits {
            return;
        }
        if let Some(ip) = ip {
            self.release_ip(ip, current_subnet.as_deref());
        }
        let new_ip = match &subnet {
            Some(sk) => self.subnets.allocate(sk),
            None if wants_public => self.allocate_ip(),
            None => None,
        };
        if let Some(r) = self.groups.get_mut(key) {
            r.ip = new_ip;
            r.subnet = subnet;
        }
    }

    fn release_ip(&mut self, ip: Ipv4Addr, subnet: Option<&str>) {
        match subnet {
            Some(sk) => self.subnets.release(sk, ip),
            None => {
                self.used_ips.remove(&ip);
            }
        }
    }

    /// Next free address of the configured range (skipping .0-.3 and
    /// broadcast-like .255 hosts); `None` when the range is exhausted.
    fn allocate_ip(&mut self) -> Option<Ipv4Addr> {
        let base = u32::from(self.config.ip_range_base);
        let size = 1u32 << (32 - u32::from(self.config.ip_range_prefix.min(30)));
        for _ in 0..size {
            let offset = self.next_ip % size;
            self.next_ip = self.next_ip.wrapping_add(1);
            if offset < 4 || offset & 0xff == 0xff {
                continue;
            }
            let ip = Ipv4Addr::from(base.wrapping_add(offset));
            if self.used_ips.insert(ip) {
                return Some(ip);
            }
        }
        None
    }

    fn cores_in(&self, subscription: &str, location: &str) -> f64 {
        self.groups
            .iter()
            .filter(|(k, r)| {
                k.subscription == subscription && r.spec.location.eq_ignore_ascii_case(location)
            })
            .map(|(_, r)| r.spec.requested_cores())
            .sum()
    }

    pub fn get(&self, key: &GroupKey, now: Instant) -> Option<ContainerGroup> {
        self.groups
            .contains_key(key)
            .then(|| self.render(key, now, true))
    }

    /// Groups of one subscription, optionally one resource group, in name
    /// order. ARM's list omits instance views (see [`EmulatorConfig::list_instance_view`]).
    pub fn list(
        &self,
        subscription: &str,
        resource_group: Option<&str>,
        now: Instant,
    ) -> Vec<ContainerGroup> {
        let sub = subscription.to_ascii_lowercase();
        let rg = resource_group.map(str::to_ascii_lowercase);
        self.groups
            .keys()
            .filter(|k| {
                k.subscription == sub && rg.as_ref().is_none_or(|rg| &k.resource_group == rg)
            })
            .map(|k| self.render(k, now, self.config.list_instance_view))
            .collect()
    }

    /// Remove a group; `true` if it existed.
    pub fn delete(&mut self, key: &GroupKey) -> bool {
        self.appended.retain(|(k, _), _| k != key);
        self.metrics.retain(|(k, _), _| k != key);
        match self.groups.remove(key) {
            Some(r) => {
                self.release(&r);
                self.counters.deletes += 1;
                true
            }
            None => false,
        }
    }

    /// Return a removed group's address to its pool.
    fn release(&mut self, r: &Record) {
        if let Some(ip) = r.ip {
            self.release_ip(ip, r.subnet.as_deref());
        }
    }

    /// Make groups disappear without a DELETE (fault injection).
    pub fn vanish(&mut self, name: &str) -> usize {
        let keys: Vec<GroupKey> = self
            .groups
            .keys()
            .filter(|k| k.name == name)
            .cloned()
            .collect();
        self.appended.retain(|(k, _), _| k.name != name);
        self.metrics.retain(|(k, _), _| k.name != name);
        for k in &keys {
            if let Some(r) = self.groups.remove(k) {
                self.release(&r);
            }
        }
        keys.len()
    }

    /// Append `lines` to the output of `container` in every group named
    /// `name`, stamped `now_wall`; how many groups had that container.
    pub fn append_logs(
        &mut self,
        name: &str,
        container: &str,
        lines: &[String],
        now_wall: Timestamp,
    ) -> usize {
        let keys: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(k, r)| {
                k.name == name
                    && r.spec
                        .properties
                        .containers
                        .iter()
                        .any(|c| c.name == container)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            let kept = self
                .appended
                .entry((k.clone(), container.to_string()))
                .or_default();
            for line in lines.iter().flat_map(|l| l.lines()) {
                kept.push_back((now_wall, line.to_string()));
            }
            while kept.len() > APPENDED_LINES_KEPT {
                kept.pop_front();
            }
        }
        keys.len()
    }

    /// A container's log as ACI's logs API returns it: what the emulator
    /// says about the container's lifecycle, then the lines appended to it,
    /// then its exit; the last `tail` lines when set, each prefixed with its
    /// time when `timestamps`.
    pub fn logs(
        &self,
        key: &GroupKey,
        container: &str,
        tail: Option<usize>,
        timestamps: bool,
        now: Instant,
    ) -> Option<String> {
        let record = self.groups.get(key)?;
        let g = self.render(key, now, true);
        let c = g
            .properties
            .containers
            .iter()
            .find(|c| c.name == container)?;
        let created = record.created_wall;
        let mut lines = vec![(
            created,
            format!("[emulator] pulling image {}", c.properties.image),
        )];
        let state = c
            .properties
            .instance_view
            .as_ref()
            .and_then(|v| v.current_state.as_ref());
        let at = |t: Option<&String>| {
            t.and_then(|t| Timestamp::parse_rfc3339(t).ok())
                .unwrap_or(created)
        };
        if let Some(state) = state
            && (state.state == "Running" || state.state == "Terminated")
        {
            let started = at(state.start_time.as_ref());
            lines.push((
                started,
                format!(
                    "[emulator] started container {container} of group {}",
                    key.name
                ),
            ));
            for (i, arg) in c.properties.command.iter().enumerate() {
                lines.push((started, format!("[emulator] argv[{i}] = {arg}")));
            }
        }
        if let Some(appended) = self.appended.get(&(key.clone(), container.to_string())) {
            lines.extend(appended.iter().cloned());
        }
        if let Some(state) = state.filter(|s| s.state == "Terminated") {
            let last = lines.last().map_or(created, |(t, _)| *t);
            lines.push((
                at(state.finish_time.as_ref()).max(last),
                format!(
                    "[emulator] exited with code {}",
                    state.exit_code.unwrap_or(0)
                ),
            ));
        }
        let skip = tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
        Some(
            lines
                .into_iter()
                .skip(skip)
                .map(|(t, l)| {
                    if timestamps {
                        format!("{} {l}\n", log_time(t))
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect(),
        )
    }

    /// Whether a group named `name` has a container `container`.
    pub fn has_container(&self, name: &str, container: &str) -> bool {
        self.groups.iter().any(|(k, r)| {
            k.name == name
                && r.spec
                    .properties
                    .containers
                    .iter()
                    .any(|c| c.name == container)
        })
    }

    /// Set what Monitor holds for `container` of every group named `name`;
    /// how many groups had that container.
    pub fn set_metrics(&mut self, name: &str, container: &str, setting: MetricSetting) -> usize {
        let keys: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(k, r)| {
                k.name == name
                    && r.spec
                        .properties
                        .containers
                        .iter()
                        .any(|c| c.name == container)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.metrics
                .entry((k.clone(), container.to_string()))
                .or_default()
                .push(setting);
        }
        keys.len()
    }

    /// Per container of the group (in spec order), its minutes from
    /// `start` (rounded down to a minute) until `end` or `now_wall`,
    /// whichever is first, within Monitor's retention. A minute has data
    /// once it is over: the value set for it, else 0 (an idle container)
    /// if the container ran during it, else none. `None` for no group.
    pub fn metric_minutes(
        &self,
        key: &GroupKey,
        start: Timestamp,
        end: Timestamp,
        now: Instant,
        now_wall: Timestamp,
    ) -> Option<Vec<(String, Vec<MinuteValue>)>> {
        self.groups.get(key)?;
        let g = self.render(key, now, true);
        let first = start.millis().max(now_wall.millis() - METRICS_RETENTION_MS);
        let first = first - first.rem_euclid(MINUTE_MS);
        let stop = end.millis().min(now_wall.millis());
        let parse = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| Timestamp::parse_rfc3339(t).ok())
                .map(Timestamp::millis)
        };
        Some(
            g.properties
                .containers
                .iter()
                .map(|c| {
                    let state = c
                        .properties
                        .instance_view
                        .as_ref()
                        .and_then(|v| v.current_state.as_ref());
                    let ran = state
                        .filter(|s| s.state == "Running" || s.state == "Terminated")
                        .and_then(|s| parse(&s.start_time).map(|a| (a, parse(&s.finish_time))));
                    let settings = self.metrics.get(&(key.clone(), c.name.clone()));
                    let mut minutes = Vec::new();
                    let mut m = first;
                    while m < stop {
                        let value = (m + MINUTE_MS <= now_wall.millis())
                            .then(|| {
                                let set = settings.and_then(|all| {
                                    all.iter().rev().find(|s| {
                                        s.from.millis() <= m
                                            && s.to.is_none_or(|to| m < to.millis())
                                    })
                                });
                                match (set, ran) {
                                    (Some(s), _) => Some((s.cpu_millicores, s.memory_bytes)),
                                    (None, Some((from, until)))
                                        if from < m + MINUTE_MS && until.is_none_or(|u| u > m) =>
                                    {
                                        Some((0.0, 0.0))
                                    }
                                    _ => None,
                                }
                            })
                            .flatten();
                        minutes.push((Timestamp(m), value));
                        m += MINUTE_MS;
                    }
                    (c.name.clone(), minutes)
                })
                .collect(),
        )
    }

    /// The group's location (for Monitor's `resourceregion`).
    pub fn location(&self, key: &GroupKey) -> Option<String> {
        self.groups.get(key).map(|r| r.spec.location.clone())
    }

    /// `StandardCores` and `ContainerGroups` usage of a location.
    pub fn usage(&self, subscription: &str, location: &str) -> Vec<UsageEntry> {
        let sub = subscription.to_ascii_lowercase();
        let groups = self
            .groups
            .iter()
            .filter(|(k, r)| {
                k.subscription == sub && r.spec.location.eq_ignore_ascii_case(location)
            })
            .count() as i64;
        let cores = self.cores_in(&sub, location).ceil() as i64;
        let entry = |value: &str, localized: &str, current: i64, limit: i64| UsageEntry {
            unit: "Count".to_string(),
            current_value: current,
            limit,
            name: UsageName {
                value: value.to_string(),
                localized_value: localized.to_string(),
            },
        };
        vec![
            entry(
                "ContainerGroups",
                "Container Groups",
                groups,
                self.config.groups_limit,
            ),
            entry(
                "StandardCores",
                "Standard Cores",
                cores,
                self.config.cores_limit,
            ),
            entry("StandardK80Cores", "Standard K80 Cores", 0, 0),
            entry("StandardP100Cores", "Standard P100 Cores", 0, 0),
            entry("StandardV100Cores", "Standard V100 Cores", 0, 0),
        ]
    }

    pub fn snapshot(&self, now: Instant) -> Vec<GroupSnapshot> {
        self.groups
            .iter()
            .map(|(k, r)| {
                let g = self.render(k, now, true);
                GroupSnapshot {
                    subscription: k.subscription.clone(),
                    resource_group: k.resource_group.clone(),
                    name: k.name.clone(),
                    location: g.location.clone(),
                    provisioning_state: g.properties.provisioning_state.clone().unwrap_or_default(),
                    state: g
                        .properties
                        .instance_view
                        .as_ref()
                        .and_then(|v| v.state.clone())
                        .unwrap_or_default(),
                    cores: r.spec.requested_cores(),
                    ip: r.ip.map(|ip| ip.to_string()),
                    subnet: r.spec.properties.subnet_ids.first().map(|s| s.id.clone()),
                    puts: r.puts,
                    tags: g.tags.clone(),
                    secret_files: r
                        .spec
                        .properties
                        .volumes
                        .iter()
                        .filter_map(|v| {
                            v.secret
                                .as_ref()
                                .map(|files| (v.name.clone(), files.keys().cloned().collect()))
                        })
                        .collect(),
                    secure_env: r
                        .spec
                        .properties
                        .containers
                        .iter()
                        .map(|c| {
                            let names = c
                                .properties
                                .environment_variables
                                .iter()
                                .filter(|e| e.secure_value.is_some())
                                .map(|e| e.name.clone())
                                .collect();
                            (c.name.clone(), names)
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The group as ARM would return it at `now`: secrets redacted,
    /// provisioning state and instance views derived from elapsed time.
    fn render(&self, key: &GroupKey, now: Instant, instance_view: bool) -> ContainerGroup {
        let Some(r) = self.groups.get(key) else {
            return ContainerGroup::default();
        };
        let mut g = r.spec.redacted();
        let elapsed = self.scaled_elapsed(r.created, now);
        let accepted = self.config.accepted_for;
        let creating = self.config.creating_for;
        let prov = if elapsed < accepted {
            "Accepted"
        } else if elapsed < accepted + creating {
            "Creating"
        } else if r.fails.is_some() {
            "Failed"
        } else {
            "Succeeded"
        };
        let failure = r.fails.as_deref().filter(|_| prov == "Failed");
        g.properties.provisioning_state = Some(prov.to_string());
        if r.subnet.is_some() && g.properties.ip_address.is_none() {
            // See subnets.rs: the private address of a group sent without
            // `ipAddress` (no ports).
            g.properties.ip_address = Some(IpAddress {
                ip_type: "Private".to_string(),
                ..IpAddress::default()
            });
        }
        if let Some(ipa) = &mut g.properties.ip_address {
            ipa.ip = r.ip.map(|ip| ip.to_string());
            ipa.fqdn = ipa
                .dns_name_label
                .as_ref()
                .map(|l| format!("{l}.{}.azurecontainer.io", g.location.to_ascii_lowercase()));
        }
        if !instance_view {
            return g;
        }
        // Wall-clock instants of the lifecycle, scaled back to real time.
        let wall = |scaled: Duration| {
            let real = scaled.div_f64(self.config.speed.max(f64::MIN_POSITIVE));
            r.created_wall
                .plus(Millis::from_millis(real.as_millis() as u64))
                .to_rfc3339()
        };
        let started_at = accepted + creating;
        let policy = g.properties.restart_policy.clone().unwrap_or_default();
        let exit_code = self.config.job_exit_code;
        // Job-like containers run for `job_runs_for`. `Never`, and
        // `OnFailure` after a clean exit, stay terminated; `OnFailure` after a
        // failure restarts them, counting restarts like ACI.
        let run = self
            .config
            .job_runs_for
            .filter(|_| matches!(policy.as_str(), "Never" | "OnFailure"))
            .filter(|run| !run.is_zero());
        let restarts_on_failure = policy == "OnFailure" && exit_code != 0;
        let (finished, restarts) = match run {
            Some(run) if prov == "Succeeded" && elapsed >= started_at + run => {
                if restarts_on_failure {
                    let cycles = (elapsed - started_at).as_nanos() / run.as_nanos().max(1);
                    (None, u32::try_from(cycles).unwrap_or(u32::MAX))
                } else {
                    (Some(started_at + run), 0)
                }
            }
            _ => (None, 0),
        };
        let restarted_at = run.map_or(started_at, |run| started_at + run * restarts);
        let group_state = match (prov, finished) {
            ("Succeeded", Some(_)) if exit_code == 0 => "Succeeded",
            ("Succeeded", Some(_)) => "Failed",
            ("Succeeded", None) => "Running",
            ("Failed", _) => "Failed",
            _ => "Pending",
        };
        for c in &mut g.properties.containers {
            let current = match (prov, finished) {
                ("Succeeded", Some(at)) => ContainerState {
                    state: "Terminated".to_string(),
                    start_time: Some(wall(started_at)),
                    finish_time: Some(wall(at)),
                    exit_code: Some(exit_code),
                    detail_status: Some(
                        if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
                    ),
                },
                ("Succeeded", None) => ContainerState {
                    state: "Running".to_string(),
                    start_time: Some(wall(restarted_at)),
                    ..Default::default()
                },
                _ => ContainerState {
                    state: "Waiting".to_string(),
                    detail_status: Some(failure.unwrap_or_default().to_string()),
                    ..Default::default()
                },
            };
            let previous = (restarts > 0).then(|| ContainerState {
                state: "Terminated".to_string(),
                start_time: Some(wall(restarted_at.saturating_sub(run.unwrap_or_default()))),
                finish_time: Some(wall(restarted_at)),
                exit_code: Some(exit_code),
                detail_status: Some("Error".to_string()),
            });
            let mut events = vec![Event {
                count: Some(1),
                first_timestamp: Some(wall(accepted)),
                last_timestamp: Some(wall(accepted)),
                name: Some("Pulling".to_string()),
                message: Some(format!("pulling image \"{}\"", c.properties.image)),
                event_type: Some("Normal".to_string()),
            }];
            if prov == "Succeeded" {
                events.push(Event {
                    count: Some(1),
                    first_timestamp: Some(wall(started_at)),
                    last_timestamp: Some(wall(started_at)),
                    name: Some("Started".to_string()),
                    message: Some("Started container".to_string()),
                    event_type: Some("Normal".to_string()),
                });
            }
            c.properties.instance_view = Some(ContainerInstanceView {
                restart_count: i32::try_from(restarts).unwrap_or(i32::MAX),
                current_state: Some(current),
                previous_state: previous,
                events,
            });
        }
        for c in &mut g.properties.init_containers {
            let done = prov == "Succeeded";
            c.properties.instance_view = Some(ContainerInstanceView {
                restart_count: 0,
                current_state: Some(ContainerState {
                    state: if done { "Terminated" } else { "Waiting" }.to_string(),
                    exit_code: done.then_some(0),
                    detail_status: Some(if done { "Completed" } else { "" }.to_string()),
                    start_time: done.then(|| wall(accepted)),
                    finish_time: done.then(|| wall(started_at)),
                }),
                previous_state: None,
                events: vec![],
            });
        }
        g.properties.instance_view = Some(GroupInstanceView {
            state: Some(group_state.to_string()),
            events: failure
                .map(|detail| Event {
                    count: Some(1),
                    first_timestamp: Some(wall(accepted + creating)),
                    last_timestamp: Some(wall(accepted + creating)),
                    name: Some("Failed".to_string()),
                    message: Some(detail.to_string()),
                    event_type: Some("Warning".to_string()),
                })
                .into_iter()
                .collect(),
        });
        g
    }
}

fn existing_subnet(r: Option<&Record>) -> Option<&String> {
    r.and_then(|r| r.subnet.as_ref())
}

fn wants_public_ip(g: &ContainerGroup) -> bool {
    g.properties
        .ip_address
        .as_ref()
        .is_some_and(|i| i.ip_type.eq_ignore_ascii_case("Public"))
}

fn quota_message(quota: &str, location: &str, limit: i64, usage: i64, requested: i64) -> String {
    format!(
        "Resource type 'Microsoft.ContainerInstance/containerGroups' container group quota '{quota}' \
         exceeded in region '{location}'. Limit: '{limit}', Usage: '{usage}' Requested: '{requested}'."
    )
}

fn capacity_message(g: &ContainerGroup) -> String {
    format!(
        "The requested resource is not available in the location '{}' at this moment. Please retry with a \
         different resource request or in another location. Resource requested: '{}' CPU '{}' GB memory '{}' OS",
        g.location,
        g.requested_cores(),
        g.requested_memory_gb(),
        g.properties.os_type
    )
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// `properties.diagnostics.logAnalytics` as ACI checks it.
///
/// The schema is `LogAnalytics` of the 2023-05-01 spec
/// (Azure/azure-rest-api-specs, specification/containerinstance/resource-manager/
/// Microsoft.ContainerInstance/stable/2023-05-01/containerInstance.json):
/// `workspaceId` and `workspaceKey` are required, `logType` is the enum
/// `ContainerInsights | ContainerInstanceLogs`. A body without `workspaceId`
/// does not deserialize (InvalidRequestContent, as any missing required
/// property); `workspaceKey` is optional in the model (ARM never returns
/// it), so its absence is checked here, in the same form. For a `logType`
/// outside the enum only the schema is known, not ARM's exact message: it is
/// refused as content that does not deserialize into the enum. Metadata is
/// refused with `LogAnalyticsMetadataNotAllowed` unless `logType` is
/// `ContainerInsights`: ARM's answer for `ContainerInstanceLogs` is quoted in
/// Azure/azure-rest-api-specs#9768, and hashicorp/terraform-provider-azurerm#4013
/// reports the same 400 for metadata without a `logType`.
fn validate_log_analytics(la: &crate::aci::model::LogAnalytics) -> Result<(), PutError> {
    let bad = |code: &'static str, message: String| Err(PutError::Invalid { code, message });
    const PATH: &str = "properties.diagnostics.logAnalytics";
    if la.workspace_key.is_none() {
        return bad(
            "InvalidRequestContent",
            format!(
                "The request content was invalid and could not be deserialized: \
                 Required property 'workspaceKey' not found in JSON. Path '{PATH}'."
            ),
        );
    }
    let log_type = la.log_type.as_deref();
    if let Some(t) = log_type
        && !matches!(t, "ContainerInsights" | "ContainerInstanceLogs")
    {
        return bad(
            "InvalidRequestContent",
            format!(
                "The request content was invalid and could not be deserialized: \
                 Error converting value \"{t}\" to type 'LogAnalyticsLogType'. Path '{PATH}.logType'."
            ),
        );
    }
    if !la.metadata.is_empty() && log_type != Some("ContainerInsights") {
        return bad(
            "LogAnalyticsMetadataNotAllowed",
            format!(
                "Log Analytics metadata is not allowed for log type: '{}'.",
                log_type.unwrap_or("<null>")
            ),
        );
    }
    Ok(())
}

/// The checks ACI makes on a PUT body, with ARM's error codes.
fn validate(name: &str, g: &ContainerGroup, config: &EmulatorConfig) -> Result<(), PutError> {
    let bad = |code: &'static str, message: String| Err(PutError::Invalid { code, message });
    if !is_valid_name(name) {
        return bad(
            "InvalidResourceName",
            format!(
                "The resource name '{name}' is invalid. It can contain only lowercase letters, numbers and hyphens, \
                 must start and end with a letter or number, and may not contain '--' (1-63 characters)."
            ),
        );
    }
    if g.location.is_empty() {
        return bad(
            "LocationRequired",
            "The location property is required for this definition.".to_string(),
        );
    }
    let p = &g.properties;
    if p.containers.is_empty() {
        return bad(
            "InvalidRequestContent",
            "The container group must have at least one container.".to_string(),
        );
    }
    if !matches!(p.os_type.as_str(), "Linux" | "Windows") {
        return bad(
            "InvalidOsType",
            format!(
                "The 'osType' for container group '{name}' is invalid. The value must be one of 'Windows,Linux'."
            ),
        );
    }
    // ACI mounts Azure Files in Linux groups only; ARM refuses the PUT with
    // this code and message (as the AKS virtual node met it:
    // virtual-kubelet/virtual-kubelet#367). Multi-container Windows groups
    // are refused too, but ARM's code for that is not documented, so the
    // emulator does not guess one (spillway's translation refuses both).
    if p.os_type == "Windows" && p.volumes.iter().any(|v| v.azure_file.is_some()) {
        return bad(
            "WindowsContainersVolumeNotSupported",
            "Azure file volumes are not supported for Windows containers.".to_string(),
        );
    }
    if let Some(rp) = &p.restart_policy
        && !matches!(rp.as_str(), "Always" | "OnFailure" | "Never")
    {
        return bad(
            "InvalidRestartPolicy",
            format!("The restart policy '{rp}' is not valid."),
        );
    }
    if let Some(la) = p
        .diagnostics
        .as_ref()
        .and_then(|d| d.log_analytics.as_ref())
    {
        validate_log_analytics(la)?;
    }
    let mut names = BTreeSet::new();
    for c in p
        .containers
        .iter()
        .map(|c| (&c.name, &c.properties.image))
        .chain(
            p.init_containers
                .iter()
                .map(|c| (&c.name, &c.properties.image)),
        )
    {
        if !is_valid_name(c.0) {
            return bad(
                "InvalidContainerName",
                format!("The container name '{}' is invalid.", c.0),
            );
        }
        if !names.insert(c.0.clone()) {
            return bad(
                "DuplicateContainerName",
                format!("The container name '{}' is used more than once.", c.0),
            );
        }
        if c.1.is_empty() {
            return bad(
                "InvalidImageName",
                format!("The image of container '{}' is empty.", c.0),
            );
        }
    }
    for c in &p.containers {
        let r = &c.properties.resources.requests;
        if r.cpu <= 0.0 || r.memory_in_gb <= 0.0 {
            return bad(
                "InvalidContainerResourceRequests",
                format!(
                    "The container '{}' must request a positive cpu and memoryInGB.",
                    c.name
                ),
            );
        }
        for e in &c.properties.environment_variables {
            if e.value.is_some() && e.secure_value.is_some() {
                return bad(
                    "InvalidEnvironmentVariable",
                    format!(
                        "The environment variable '{}' sets both value and secureValue.",
                        e.name
                    ),
                );
            }
        }
    }
    check_limits(name, p)?;
    let volume_names: BTreeSet<&str> = p.volumes.iter().map(|v| v.name.as_str()).collect();
    for m in p
        .containers
        .iter()
        .flat_map(|c| &c.properties.volume_mounts)
        .chain(
            p.init_containers
                .iter()
                .flat_map(|c| &c.properties.volume_mounts),
        )
    {
        if !volume_names.contains(m.name.as_str()) {
            return bad(
                "VolumeMountNotFound",
                format!("The volume mount '{}' does not match any volume.", m.name),
            );
        }
    }
    if let Some(ip) = &p.ip_address {
        // `ports` is required in `IpAddress` (2023-05-01 schema); ARM's
        // answer to an empty list, as quoted in
        // hashicorp/terraform-provider-azurerm#1697.
        if ip.ports.is_empty() {
            return bad(
                "MissingIpAddressPorts",
                format!(
                    "The ports in the 'ipAddress' of container group '{name}' cannot be empty."
                ),
            );
        }
        let container_ports: BTreeSet<u16> = p
            .containers
            .iter()
            .flat_map(|c| c.properties.ports.iter().map(|p| p.port))
            .collect();
        if let Some(port) = ip
            .ports
            .iter()
            .find(|pt| !container_ports.contains(&pt.port))
        {
            return bad(
                "InvalidIpAddressPorts",
                format!(
                    "The port '{}' of the IP address is not exposed by any container.",
                    port.port
                ),
            );
        }
    }
    if g.requested_cores() > config.max_group_cores + 1e-9
        || g.requested_memory_gb() > config.max_group_memory_gb + 1e-9
    {
        return Err(PutError::Capacity {
            message: capacity_message(g),
        });
    }
    Ok(())
}

/// A number as ARM prints it inside a message: .NET's shortest form (`1`,
/// `0.5`), after summing (so `0.1 + 0.2` reads `0.3`).
fn arm_number(x: f64) -> String {
    format!("{}", (x * 1e6).round() / 1e6)
}

/// A number as ARM serializes it in JSON inside a message (`4.0`, `1.5`).
fn arm_json_number(x: f64) -> String {
    let x = (x * 1e6).round() / 1e6;
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// ACI's resource rules (as ARM words them): per container, a limit is not
/// below its request (`ResourceLimitsLessThanRequests`) and not above the
/// group's total request (`ContainerLimitGreaterThanContainerGroupTotalRequest`).
/// A limit left out (or 0, which the model cannot tell apart) is no limit.
fn check_limits(group: &str, p: &ContainerGroupProperties) -> Result<(), PutError> {
    const EPS: f64 = 1e-9;
    let total_cpu: f64 = p
        .containers
        .iter()
        .map(|c| c.properties.resources.requests.cpu)
        .sum();
    let total_memory: f64 = p
        .containers
        .iter()
        .map(|c| c.properties.resources.requests.memory_in_gb)
        .sum();
    for c in &p.containers {
        let r = &c.properties.resources;
        let Some(limits) = &r.limits else {
            continue;
        };
        let kinds = [
            ("Cpu", r.requests.cpu, limits.cpu, total_cpu),
            (
                "MemoryInGB",
                r.requests.memory_in_gb,
                limits.memory_in_gb,
                total_memory,
            ),
        ];
        for (kind, request, limit, _) in kinds {
            if limit > 0.0 && limit + EPS < request {
                let mut limit_fields = Vec::new();
                if limits.memory_in_gb > 0.0 {
                    limit_fields.push(format!(
                        "\"memoryInGB\":{}",
                        arm_json_number(limits.memory_in_gb)
                    ));
                }
                if limits.cpu > 0.0 {
                    limit_fields.push(format!("\"cpu\":{}", arm_json_number(limits.cpu)));
                }
                let requirement = format!(
                    "{{\"requests\":{{\"memoryInGB\":{},\"cpu\":{}}},\"limits\":{{{}}}}}",
                    arm_json_number(r.requests.memory_in_gb),
                    arm_json_number(r.requests.cpu),
                    limit_fields.join(",")
                );
                return Err(PutError::Invalid {
                    code: "ResourceLimitsLessThanRequests",
                    message: format!(
                        "The resource requirement '{requirement}' in container '{}' of contain group '{group}' is invalid. \
                         The '{kind}' limit value must be greater than or equal to the request value.",
                        c.name
                    ),
                });
            }
        }
        for (kind, _, limit, total) in kinds {
            if limit > total + EPS {
                return Err(PutError::Invalid {
                    code: "ContainerLimitGreaterThanContainerGroupTotalRequest",
                    message: format!(
                        "The '{kind}' limit '{}' in container '{}' is greater than the total request '{}' of container group '{group}'.",
                        arm_number(limit),
                        c.name,
                        arm_number(total)
                    ),
                });
            }
        }
    }
    Ok(())
}
