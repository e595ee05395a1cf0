//! The emulated hub's data: configurations, devices and their `$edgeAgent`
//! reports, throttling buckets, faults and counters. Every rule the REST
//! surface enforces on configurations lives here as a method returning a
//! [`HubRefusal`]; time comes in as `now` (no background tasks: device
//! progress is derived from elapsed time whenever the world is read).

use super::query::{self, Condition, Source};
use super::{EmulatorConfig, Faults};
use crate::edge::model::*;
use crate::units::Timestamp;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Characters a configuration id may contain besides lowercase letters and
/// digits (IoT Hub: up to 128 of these, no spaces, no upper case).
pub const ID_SPECIALS: &str = "-:+%_#*?!(),=@;$'";
pub const ID_MAX_LEN: usize = 128;

/// A refusal in the hub's terms: status, error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRefusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 only).
    pub retry_after: Option<u64>,
}

impl HubRefusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "ArgumentInvalid", message)
    }
    fn not_found(id: &str) -> Self {
        Self::new(
            404,
            "ConfigurationNotFound",
            format!("Configuration with id '{id}' was not found."),
        )
    }
}

/// Check a configuration id against the hub's rules.
pub fn validate_configuration_id(id: &str) -> Result<(), HubRefusal> {
    if id.is_empty() {
        return Err(HubRefusal::invalid(
            "The configuration id must not be empty.",
        ));
    }
    if id.chars().count() > ID_MAX_LEN {
        return Err(HubRefusal::invalid(format!(
            "The configuration id '{id}' is longer than {ID_MAX_LEN} characters."
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ID_SPECIALS.contains(*c)))
    {
        return Err(HubRefusal::invalid(format!(
            "The configuration id '{id}' contains {bad:?}; allowed are lowercase letters, digits and {ID_SPECIALS}."
        )));
    }
    Ok(())
}

/// Which throttle bucket a request spends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Configurations,
    Queries,
    Twins,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_sec: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            tokens: capacity,
            capacity,
            per_sec: per_sec.max(0.0001),
            last: now,
        }
    }

    /// Spend a token, or the whole seconds until one is there.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// A stored configuration.
#[derive(Debug, Clone)]
struct Stored {
    config: Configuration,
    /// Creation order, for priority ties.
    seq: u64,
}

/// What a device last reported for a desired version.
#[derive(Debug, Clone)]
struct Report {
    version: i64,
    agent_desired: Value,
    at: Instant,
    at_wall: String,
}

/// A simulated device.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    tags: Value,
    /// Device twin reported properties (set by the control API).
    reported: Value,
    iot_edge: bool,
    online: bool,
    /// Configuration id → `Targeted` / `Applied`.
    configurations: BTreeMap<String, &'static str>,
    agent_desired: Value,
    hub_desired: Value,
    desired_version: i64,
    desired_changed_at: Instant,
    last_report: Option<Report>,
}

/// Counters for tests: what the hub was asked and answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// `"<METHOD> <route> <status>"` → count.
    pub requests: BTreeMap<String, u64>,
    /// Configuration id → successful creates (more than 1 = a duplicate).
    pub creates_by_id: BTreeMap<String, u64>,
    pub throttled: u64,
    /// Configuration id → what its devices ran when it was deleted: device
    /// → module → image of the modules the device reported `running`
    /// (so a test can tell what a deletion left the devices with).
    pub running_at_delete: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>,
}

/// One device as the control API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSnapshot {
    pub device_id: String,
    pub online: bool,
    pub iot_edge: bool,
    pub tags: Value,
    pub desired_version: i64,
    pub configurations: BTreeMap<String, String>,
    /// The `$edgeAgent` reported properties as a client would read them.
    pub edge_agent_reported: Value,
}

pub struct World {
    pub config: EmulatorConfig,
    pub faults: Faults,
    pub counters: Counters,
    configurations: BTreeMap<String, Stored>,
    devices: BTreeMap<String, Device>,
    seq: u64,
    etag_seq: u64,
    configurations_bucket: Bucket,
    queries_bucket: Bucket,
    twins_bucket: Bucket,
    tracking: u64,
}

fn wall_now() -> String {
    Timestamp::now_wall().to_rfc3339()
}

fn is_standard(agent: &Value) -> bool {
    agent.get("properties.desired").is_some()
}

/// Set `value` at a dotted path under `root`, creating objects on the way.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut at = root;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else { return };
        if i + 1 == segs.len() {
            map.insert((*seg).to_string(), value);
            return;
        }
        at = map.entry((*seg).to_string()).or_insert_with(|| json!({}));
    }
}

impl World {
    pub fn new(config: EmulatorConfig) -> Self {
        let now = Instant::now();
        Self {
            configurations_bucket: Bucket::new(
                config.configuration_ops_per_minute / 60.0,
                config.burst,
                now,
            ),
            queries_bucket: Bucket::new(config.queries_per_minute / 60.0, config.burst, now),
            twins_bucket: Bucket::new(config.twin_reads_per_second, config.burst, now),
            faults: config.faults.clone(),
            config,
            counters: Counters::default(),
            configurations: BTreeMap::new(),
            devices: BTreeMap::new(),
            seq: 0,
            etag_seq: 0,
            tracking: 0,
        }
    }

    pub fn tracking_id(&mut self) -> String {
        self.tracking += 1;
        format!("{:032X}-G:0-TimeStamp:{}", self.tracking, wall_now())
    }

    fn next_etag(&mut self) -> String {
        self.etag_seq += 1;
        base64::engine::general_purpose::STANDARD.encode(self.etag_seq.to_string())
    }

    /// Injected outages and errors, before anything is applied.
    pub fn injected_failure(&mut self) -> Result<(), HubRefusal> {
        if self.faults.outage {
            return Err(HubRefusal::new(
                503,
                "ServiceUnavailable",
                "The IoT hub is unavailable (injected outage).",
            ));
        }
        if self.faults.error_next > 0 {
            self.faults.error_next -= 1;
            return Err(HubRefusal::new(
                500,
                "ServerError",
                "An internal error occurred (injected); nothing was changed.",
            ));
        }
        Ok(())
    }

    /// After a write was applied: lose its answer if a fault says so.
    pub fn lose_answer(&mut self, write: bool) -> Result<(), HubRefusal> {
        if write && self.faults.lose_answer_next > 0 {
            self.faults.lose_answer_next -= 1;
            return Err(HubRefusal::new(
                500,
                "ServerError",
                "An internal error occurred (injected after the change was applied).",
            ));
        }
        Ok(())
    }

    /// Throttling: injected 429s first, then the class's bucket.
    pub fn admit(&mut self, class: Class, now: Instant) -> Result<(), HubRefusal> {
        let throttled = |secs: u64, why: &str| HubRefusal {
            retry_after: Some(secs),
            ..HubRefusal::new(429, "ThrottlingException", why.to_string())
        };
        if self.faults.throttle_next > 0 {
            self.faults.throttle_next -= 1;
            self.counters.throttled += 1;
            return Err(throttled(
                self.faults.retry_after_seconds,
                "Requests are being throttled (injected).",
            ));
        }
        let bucket = match class {
            Class::Configurations => &mut self.configurations_bucket,
            Class::Queries => &mut self.queries_bucket,
            Class::Twins => &mut self.twins_bucket,
        };
        bucket.take(now).map_err(|secs| {
            self.counters.throttled += 1;
            throttled(
                secs,
                "Throttling limit for this operation was exceeded; retry later.",
            )
        })
    }

    // ---- configurations -------------------------------------------------

    fn validate_body(&self, c: &Configuration) -> Result<(), HubRefusal> {
        if c.schema_version != CONFIGURATION_SCHEMA_VERSION {
            return Err(HubRefusal::invalid(format!(
                "schemaVersion '{}' is not supported; use '{CONFIGURATION_SCHEMA_VERSION}'.",
                c.schema_version
            )));
        }
        if c.priority < 0 {
            return Err(HubRefusal::invalid("priority must not be negative."));
        }
        let content = &c.content;
        let set = [
            content
                .modules_content
                .as_ref()
                .is_some_and(|m| !m.is_empty()),
            content
                .device_content
                .as_ref()
                .is_some_and(|m| !m.is_empty()),
            content
                .module_content
                .as_ref()
                .is_some_and(|m| !m.is_empty()),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(HubRefusal::invalid(
                "content must have exactly one of modulesContent, deviceContent or moduleContent.",
            ));
        }
        if let Some(modules) = &content.modules_content {
            for (module, twin) in modules {
                let Some(obj) = twin.as_object() else {
                    return Err(HubRefusal::invalid(format!(
                        "modulesContent.{module} must be an object."
                    )));
                };
                for key in obj.keys() {
                    if key != "properties.desired" && !key.starts_with("properties.desired.") {
                        return Err(HubRefusal::invalid(format!(
                            "modulesContent.{module}.{key}: only properties.desired and properties.desired.<path> may be set."
                        )));
                    }
                }
            }
        }
        if !c.target_condition.trim().is_empty() && c.target_condition.trim() != "*" {
            query::parse_condition(&c.target_condition).map_err(|e| {
                HubRefusal::invalid(format!("targetCondition '{}': {e}", c.target_condition))
            })?;
        }
        for (name, q) in &c.metrics.queries {
            query::parse_query(q)
                .map_err(|e| HubRefusal::invalid(format!("metrics.queries.{name}: {e}")))?;
        }
        Ok(())
    }

    /// PUT /configurations/{id}: create without `If-Match`, update with it.
    pub fn put_configuration(
        &mut self,
        id: &str,
        if_match: Option<&str>,
        mut body: Configuration,
        now: Instant,
    ) -> Result<Configuration, HubRefusal> {
        validate_configuration_id(id)?;
        if body.id.is_empty() {
            body.id = id.to_string();
        }
        if body.id != id {
            return Err(HubRefusal::invalid(format!(
                "The id in the body ('{}') differs from the id in the URL ('{id}').",
                body.id
            )));
        }
        self.validate_body(&body)?;
        if let Some(m) = if_match
            && m.trim() != "*"
            && self.faults.concurrent_update_next > 0
            && self.configurations.contains_key(id)
        {
            self.faults.concurrent_update_next -= 1;
            let etag = self.next_etag();
            if let Some(stored) = self.configurations.get_mut(id) {
                stored.config.etag = Some(etag);
                stored.config.last_updated_time_utc = Some(wall_now());
            }
        }
        let result = match (if_match, self.configurations.get(id)) {
            (None, Some(_)) => {
                return Err(HubRefusal::new(
                    409,
                    "ConfigurationAlreadyExists",
                    format!("Configuration with id '{id}' already exists."),
                ));
            }
            (None, None) => {
                if self.configurations.len() >= self.config.max_configurations {
                    return Err(HubRefusal::new(
                        403,
                        "IotHubQuotaExceeded",
                        format!(
                            "The maximum number of configurations ({}) for this IoT hub has been reached.",
                            self.config.max_configurations
                        ),
                    ));
                }
                let wall = wall_now();
                body.created_time_utc = Some(wall.clone());
                body.last_updated_time_utc = Some(wall);
                body.etag = Some(self.next_etag());
                body.system_metrics = ConfigurationMetrics::default();
                body.metrics.results.clear();
                self.seq += 1;
                self.configurations.insert(
                    id.to_string(),
                    Stored {
                        config: body,
                        seq: self.seq,
                    },
                );
                *self
                    .counters
                    .creates_by_id
                    .entry(id.to_string())
                    .or_default() += 1;
                id
            }
            (Some(_), None) => return Err(HubRefusal::not_found(id)),
            (Some(m), Some(stored)) => {
                if !etag_matches(m, stored.config.etag.as_deref()) {
                    return Err(HubRefusal::new(
                        412,
                        "PreconditionFailed",
                        format!(
                            "Precondition failed: the If-Match etag {m} does not match the current etag of configuration '{id}'."
                        ),
                    ));
                }
                if stored.config.content != body.content {
                    return Err(HubRefusal::invalid(format!(
                        "Configuration '{id}': content cannot be updated; create a configuration with a new id."
                    )));
                }
                let etag = self.next_etag();
                let Some(stored) = self.configurations.get_mut(id) else {
                    return Err(HubRefusal::not_found(id));
                };
                let c = &mut stored.config;
                c.labels = body.labels;
                c.target_condition = body.target_condition;
                c.priority = body.priority;
                c.metrics.queries = body.metrics.queries;
                c.last_updated_time_utc = Some(wall_now());
                c.etag = Some(etag);
                id
            }
        };
        self.reconcile(now);
        self.view(result, now)
            .ok_or_else(|| HubRefusal::not_found(result))
    }

    /// DELETE /configurations/{id}: needs `If-Match` (`*` or the quoted etag).
    pub fn delete_configuration(
        &mut self,
        id: &str,
        if_match: Option<&str>,
        now: Instant,
    ) -> Result<(), HubRefusal> {
        let Some(stored) = self.configurations.get(id) else {
            return Err(HubRefusal::not_found(id));
        };
        let Some(m) = if_match else {
            return Err(HubRefusal::new(
                412,
                "PreconditionFailed",
                format!(
                    "Deleting configuration '{id}' requires an If-Match header (the etag or *)."
                ),
            ));
        };
        if !etag_matches(m, stored.config.etag.as_deref()) {
            return Err(HubRefusal::new(
                412,
                "PreconditionFailed",
                format!(
                    "Precondition failed: the If-Match etag {m} does not match configuration '{id}'."
                ),
            ));
        }
        self.reconcile(now);
        let running: BTreeMap<String, BTreeMap<String, String>> = self
            .devices
            .values()
            .filter(|d| d.configurations.get(id) == Some(&"Applied"))
            .map(|d| (d.id.clone(), running_modules(&self.agent_reported(d, now))))
            .collect();
        self.counters
            .running_at_delete
            .insert(id.to_string(), running);
        self.configurations.remove(id);
        self.reconcile(now);
        Ok(())
    }

    pub fn get_configuration(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Result<Configuration, HubRefusal> {
        self.reconcile(now);
        self.view(id, now).ok_or_else(|| HubRefusal::not_found(id))
    }

    pub fn list_configurations(&mut self, top: Option<usize>, now: Instant) -> Vec<Configuration> {
        self.reconcile(now);
        let mut ids: Vec<(u64, String)> = self
            .configurations
            .values()
            .map(|s| (s.seq, s.config.id.clone()))
            .collect();
        ids.sort();
        ids.into_iter()
            .take(top.unwrap_or(usize::MAX))
            .filter_map(|(_, id)| self.view(&id, now))
            .collect()
    }

    /// POST /configurations/testQueries.
    pub fn test_queries(&self, input: &QueriesTestInput) -> QueriesTestResult {
        let target_condition_error = if input.target_condition.trim().is_empty() {
            String::new()
        } else {
            query::parse_condition(&input.target_condition)
                .err()
                .unwrap_or_default()
        };
        let custom_metric_query_errors = input
            .custom_metric_queries
            .iter()
            .map(|(k, q)| (k.clone(), query::parse_query(q).err().unwrap_or_default()))
            .collect();
        QueriesTestResult {
            target_condition_error,
            custom_metric_query_errors,
        }
    }

    /// A configuration with its metrics as of the last reconcile.
    fn view(&self, id: &str, now: Instant) -> Option<Configuration> {
        let stored = self.configurations.get(id)?;
        let mut c = stored.config.clone();
        let edge = c.content.modules_content.is_some();
        let system_queries = system_metric_queries(id, &c.target_condition, edge);
        let mut results = BTreeMap::new();
        for (name, q) in &system_queries {
            results.insert(name.clone(), self.count(q, now));
        }
        c.system_metrics = ConfigurationMetrics {
            queries: system_queries,
            results,
        };
        let user: BTreeMap<String, i64> = c
            .metrics
            .queries
            .iter()
            .map(|(name, q)| (name.clone(), self.count(q, now)))
            .collect();
        c.metrics.results = user;
        Some(c)
    }

    fn count(&self, q: &str, now: Instant) -> i64 {
        match query::parse_query(q) {
            Ok(q) => self.run_query(&q, now).len() as i64,
            Err(_) => 0,
        }
    }

    // ---- devices --------------------------------------------------------

    pub fn add_device(
        &mut self,
        id: &str,
        tags: Value,
        reported: Value,
        iot_edge: bool,
        now: Instant,
    ) -> Result<(), HubRefusal> {
        if id.is_empty() || id.len() > 128 {
            return Err(HubRefusal::invalid("deviceId must be 1 to 128 characters."));
        }
        if self.devices.contains_key(id) {
            return Err(HubRefusal::new(
                409,
                "DeviceAlreadyExists",
                format!("A device with ID '{id}' is already registered."),
            ));
        }
        self.devices.insert(
            id.to_string(),
            Device {
                id: id.to_string(),
                tags: if tags.is_object() { tags } else { json!({}) },
                reported: if reported.is_object() {
                    reported
                } else {
                    json!({})
                },
                iot_edge,
                online: true,
                configurations: BTreeMap::new(),
                agent_desired: json!({}),
                hub_desired: json!({}),
                desired_version: 1,
                desired_changed_at: now,
                last_report: None,
            },
        );
        self.reconcile(now);
        Ok(())
    }

    /// Change a device: online state and/or tags. Coming back online, a
    /// device reports again after the report delay.
    pub fn update_device(
        &mut self,
        id: &str,
        online: Option<bool>,
        tags: Option<Value>,
        now: Instant,
    ) -> Result<(), HubRefusal> {
        let Some(d) = self.devices.get_mut(id) else {
            return Err(HubRefusal::new(
                404,
                "DeviceNotFound",
                format!("Device {id} not registered."),
            ));
        };
        if let Some(t) = tags.filter(Value::is_object) {
            d.tags = t;
        }
        if let Some(on) = online {
            if on && !d.online {
                d.desired_changed_at = now;
            }
            d.online = on;
        }
        self.reconcile(now);
        Ok(())
    }

    pub fn devices(&mut self, now: Instant) -> Vec<DeviceSnapshot> {
        self.reconcile(now);
        self.devices
            .values()
            .map(|d| DeviceSnapshot {
                device_id: d.id.clone(),
                online: d.online,
                iot_edge: d.iot_edge,
                tags: d.tags.clone(),
                desired_version: d.desired_version,
                configurations: d
                    .configurations
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).to_string()))
                    .collect(),
                edge_agent_reported: self.agent_reported(d, now),
            })
            .collect()
    }

    /// Bring every device up to date with the configurations and `now`.
    pub fn reconcile(&mut self, now: Instant) {
        let mut standards: Vec<(i32, u64, String, Value, Option<Condition>)> = Vec::new();
        let mut layered: Vec<(i32, u64, String, Value, Option<Condition>)> = Vec::new();
        for s in self.configurations.values() {
            let Some(modules) = &s.config.content.modules_content else {
                continue;
            };
            let cond = parse_target(&s.config.target_condition);
            let agent = modules.get("$edgeAgent").cloned().unwrap_or(Value::Null);
            let entry = (
                s.config.priority,
                s.seq,
                s.config.id.clone(),
                Value::Object(
                    modules
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                cond,
            );
            if is_standard(&agent) {
                standards.push(entry);
            } else {
                layered.push(entry);
            }
        }
        // Ascending priority, then creation order: the last standard wins and
        // later layers override earlier ones.
        standards.sort_by_key(|s| (s.0, s.1));
        layered.sort_by_key(|s| (s.0, s.1));
        let delay = self.config.report_delay;
        for d in self.devices.values_mut() {
            if !d.iot_edge {
                d.configurations.clear();
                continue;
            }
            let twin = device_doc(d, "Connected");
            let targets =
                |c: &Option<Condition>| c.as_ref().is_some_and(|c| query::matches(c, &twin));
            let matching_standards: Vec<_> = standards.iter().filter(|s| targets(&s.4)).collect();
            let matching_layers: Vec<_> = layered.iter().filter(|s| targets(&s.4)).collect();
            let mut configurations = BTreeMap::new();
            let winner = matching_standards.last();
            for s in &matching_standards {
                configurations.insert(s.2.clone(), "Targeted");
            }
            let mut agent = json!({});
            let mut hub = json!({});
            if let Some(w) = winner {
                configurations.insert(w.2.clone(), "Applied");
                if let Some(a) =
                    w.3.get("$edgeAgent")
                        .and_then(|a| a.get("properties.desired"))
                {
                    agent = a.clone();
                }
                if let Some(h) =
                    w.3.get("$edgeHub")
                        .and_then(|h| h.get("properties.desired"))
                {
                    hub = h.clone();
                }
            }
            for l in &matching_layers {
                configurations.insert(l.2.clone(), "Applied");
                for (module, target) in [("$edgeAgent", &mut agent), ("$edgeHub", &mut hub)] {
                    if let Some(Value::Object(patch)) = l.3.get(module) {
                        for (k, v) in patch {
                            if let Some(path) = k.strip_prefix("properties.desired.") {
                                set_path(target, path, v.clone());
                            }
                        }
                    }
                }
            }
            d.configurations = configurations;
            if agent != d.agent_desired || hub != d.hub_desired {
                d.agent_desired = agent;
                d.hub_desired = hub;
                d.desired_version += 1;
                d.desired_changed_at = now;
            }
            let due = d.desired_changed_at + delay;
            let current = d.last_report.as_ref().map(|r| r.version);
            if d.online && now >= due && current != Some(d.desired_version) {
                d.last_report = Some(Report {
                    version: d.desired_version,
                    agent_desired: d.agent_desired.clone(),
                    at: due,
                    at_wall: wall_now(),
                });
            }
        }
    }

    /// `$edgeAgent` reported properties of a device at `now`.
    fn agent_reported(&self, d: &Device, now: Instant) -> Value {
        let Some(r) = &d.last_report else {
            return json!({"$version": 1});
        };
        let mut failing = Vec::new();
        let mut module_reports = |section: &str| -> Map<String, Value> {
            let mut out = Map::new();
            if let Some(Value::Object(mods)) = r.agent_desired.get(section) {
                for (name, spec) in mods {
                    let image = spec
                        .pointer("/settings/image")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let report = if self.faults.failing_images.contains(&image) {
                        failing.push(format!("{name} ({image})"));
                        let every = self
                            .config
                            .backoff_restart_every
                            .max(Duration::from_millis(1));
                        let restarts =
                            1 + now.saturating_duration_since(r.at).as_millis() / every.as_millis();
                        json!({
                            "runtimeStatus": "backoff",
                            "exitCode": 1,
                            "restartCount": restarts as i64,
                            "statusDescription": format!("Error pulling image {image}: manifest unknown"),
                            "settings": {"image": image},
                            "lastExitTimeUtc": r.at_wall,
                        })
                    } else {
                        json!({
                            "runtimeStatus": "running",
                            "exitCode": 0,
                            "restartCount": 0,
                            "settings": {"image": image},
                            "lastStartTimeUtc": r.at_wall,
                        })
                    };
                    out.insert(name.clone(), report);
                }
            }
            out
        };
        let system_modules = module_reports("systemModules");
        let modules = module_reports("modules");
        let status = if !d.online {
            json!({"code": 406, "description": "The device is offline or not sending status reports."})
        } else if r.agent_desired.get("systemModules").is_none() {
            json!({"code": 417, "description": "The desired properties are empty: no base deployment applies to this device."})
        } else if !failing.is_empty() {
            json!({"code": 500, "description": format!("Failed to start modules: {}", failing.join(", "))})
        } else {
            json!({"code": 200, "description": ""})
        };
        json!({
            "schemaVersion": "1.1",
            "lastDesiredVersion": r.version,
            "lastDesiredStatus": status,
            "runtime": {"platform": {"os": "linux", "architecture": "x86_64"}},
            "systemModules": system_modules,
            "modules": modules,
            "$version": r.version + 1,
        })
    }

    fn agent_twin(&self, d: &Device, now: Instant) -> Value {
        let mut desired = d.agent_desired.clone();
        if let Value::Object(m) = &mut desired {
            m.insert("$version".into(), json!(d.desired_version));
        }
        let configurations: Map<String, Value> = d
            .configurations
            .iter()
            .map(|(k, v)| (k.clone(), json!({"status": v})))
            .collect();
        json!({
            "deviceId": d.id,
            "moduleId": "$edgeAgent",
            "etag": "AAAAAAAAAAE=",
            "status": "enabled",
            "connectionState": if d.online { "Connected" } else { "Disconnected" },
            "version": d.desired_version,
            "properties": {"desired": desired, "reported": self.agent_reported(d, now)},
            "configurations": configurations,
        })
    }

    fn hub_twin(&self, d: &Device) -> Value {
        let mut desired = d.hub_desired.clone();
        if let Value::Object(m) = &mut desired {
            m.insert("$version".into(), json!(d.desired_version));
        }
        let reported = match &d.last_report {
            Some(r) => json!({
                "lastDesiredVersion": r.version,
                "lastDesiredStatus": {"code": if d.online { 200 } else { 406 }},
                "$version": r.version + 1
            }),
            None => json!({"$version": 1}),
        };
        json!({
            "deviceId": d.id,
            "moduleId": "$edgeHub",
            "etag": "AAAAAAAAAAE=",
            "status": "enabled",
            "connectionState": if d.online { "Connected" } else { "Disconnected" },
            "version": d.desired_version,
            "properties": {"desired": desired, "reported": reported},
        })
    }

    /// GET /twins/{device}/modules/{module}.
    pub fn module_twin(
        &mut self,
        device: &str,
        module: &str,
        now: Instant,
    ) -> Result<Value, HubRefusal> {
        self.reconcile(now);
        let Some(d) = self.devices.get(device) else {
            return Err(HubRefusal::new(
                404,
                "DeviceNotFound",
                format!("Device {device} not registered."),
            ));
        };
        match module {
            "$edgeAgent" if d.iot_edge => Ok(self.agent_twin(d, now)),
            "$edgeHub" if d.iot_edge => Ok(self.hub_twin(d)),
            _ => Err(HubRefusal::new(
                404,
                "ModuleNotFound",
                format!("Module {module} on device {device} not registered."),
            )),
        }
    }

    /// GET /twins/{device}.
    pub fn device_twin(&mut self, device: &str, now: Instant) -> Result<Value, HubRefusal> {
        self.reconcile(now);
        self.devices
            .get(device)
            .map(|d| {
                device_doc(
                    d,
                    if d.online {
                        "Connected"
                    } else {
                        "Disconnected"
                    },
                )
            })
            .ok_or_else(|| {
                HubRefusal::new(
                    404,
                    "DeviceNotFound",
                    format!("Device {device} not registered."),
                )
            })
    }

    fn run_query(&self, q: &query::Query, now: Instant) -> Vec<Value> {
        let mut rows = Vec::new();
        for d in self.devices.values() {
            let docs = match q.from {
                Source::Devices => vec![device_doc(
                    d,
                    if d.online {
                        "Connected"
                    } else {
                        "Disconnected"
                    },
                )],
                Source::Modules if d.iot_edge => vec![self.agent_twin(d, now), self.hub_twin(d)],
                Source::Modules => Vec::new(),
            };
            for doc in docs {
                if q.condition.as_ref().is_none_or(|c| query::matches(c, &doc)) {
                    rows.push(query::project(&q.select, &doc));
                }
            }
        }
        rows
    }

    /// POST /devices/query: one page from `offset`.
    pub fn query_page(
        &mut self,
        text: &str,
        offset: usize,
        page: usize,
        now: Instant,
    ) -> Result<(Vec<Value>, Option<usize>), HubRefusal> {
        let q = query::parse_query(text)
            .map_err(|e| HubRefusal::new(400, "ArgumentInvalid", format!("Query '{text}': {e}")))?;
        self.reconcile(now);
        let rows = self.run_query(&q, now);
        let end = (offset + page.max(1)).min(rows.len());
        let next = (end < rows.len()).then_some(end);
        Ok((
            rows.get(offset..end)
                .map(<[Value]>::to_vec)
                .unwrap_or_default(),
            next,
        ))
    }
}

fn parse_target(condition: &str) -> Option<Condition> {
    let c = condition.trim();
    if c.is_empty() {
        return None;
    }
    if c == "*" {
        // "*" targets every device.
        return query::parse_condition("deviceId != ''").ok();
    }
    query::parse_condition(c).ok()
}

/// The device twin document queries and target conditions see.
fn device_doc(d: &Device, connection_state: &str) -> Value {
    let configurations: Map<String, Value> = d
        .configurations
        .iter()
        .map(|(k, v)| (k.clone(), json!({"status": v})))
        .collect();
    json!({
        "deviceId": d.id,
        "etag": "AAAAAAAAAAE=",
        "status": "enabled",
        "connectionState": connection_state,
        "authenticationType": "sas",
        "version": 2,
        "tags": d.tags,
        "properties": {"desired": {"$version": 1}, "reported": d.reported},
        "capabilities": {"iotEdge": d.iot_edge},
        "configurations": configurations,
    })
}

/// The queries behind `systemMetrics` (the ones the hub defines).
fn system_metric_queries(id: &str, target: &str, edge: bool) -> BTreeMap<String, String> {
    let target = if target.trim().is_empty() || target.trim() == "*" {
        "deviceId != ''".to_string()
    } else {
        format!("({target})")
    };
    let mut q = BTreeMap::new();
    if edge {
        q.insert(
            metric::TARGETED.into(),
            format!("select deviceId from devices where capabilities.iotEdge = true and {target}"),
        );
        let applied = format!(
            "select deviceId from devices.modules where moduleId = '$edgeAgent' and configurations.[[{id}]].status = 'Applied'"
        );
        q.insert(
            metric::REPORTED_SUCCESSFUL.into(),
            format!("{applied} and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code = 200"),
        );
        q.insert(
            metric::REPORTED_FAILED.into(),
            format!("{applied} and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code != 200"),
        );
        q.insert(metric::APPLIED.into(), applied);
    } else {
        q.insert(
            metric::TARGETED.into(),
            format!("select deviceId from devices where {target}"),
        );
        q.insert(
            metric::APPLIED.into(),
            format!(
                "select deviceId from devices where configurations.[[{id}]].status = 'Applied'"
            ),
        );
    }
    q
}

/// Module → image of the modules an `$edgeAgent` report says are running.
fn running_modules(reported: &Value) -> BTreeMap<String, String> {
    reported
        .get("modules")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, m)| m.get("runtimeStatus").and_then(Value::as_str) == Some("running"))
        .map(|(name, m)| {
            let image = m
                .pointer("/settings/image")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (name.clone(), image.to_string())
        })
        .collect()
}

/// `If-Match` semantics: `*` matches anything; otherwise the quoted etag.
fn etag_matches(header: &str, current: Option<&str>) -> bool {
    let h = header.trim();
    if h == "*" {
        return true;
    }
    match (
        h.strip_prefix('"').and_then(|s| s.strip_suffix('"')),
        current,
    ) {
        (Some(quoted), Some(cur)) => quoted == cur,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_ids_follow_the_hub_rules() {
        for ok in ["web-1", "a", "x:y+z%_#*?!(),=@;$'", &"a".repeat(128)] {
            assert!(validate_configuration_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Web-1",
            "has space",
            "dot.ted",
            "slash/x",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(validate_configuration_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn if_match_needs_the_quoted_etag_or_a_star() {
        assert!(etag_matches("*", Some("MQ==")));
        assert!(etag_matches("\"MQ==\"", Some("MQ==")));
        assert!(!etag_matches("MQ==", Some("MQ==")), "unquoted");
        assert!(!etag_matches("\"Mg==\"", Some("MQ==")));
    }

    #[test]
    fn layered_patches_set_nested_paths() {
        let mut v = json!({"modules": {"a": 1}});
        set_path(&mut v, "modules.b", json!({"x": 2}));
        set_path(&mut v, "modules.a", json!(3));
        assert_eq!(v, json!({"modules": {"a": 3, "b": {"x": 2}}}));
    }
}
