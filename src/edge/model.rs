//! Wire types of the IoT Hub service API (api-version 2021-04-12) that
//! spillway reads and writes: configurations (IoT Edge deployments), their
//! metrics, query test results and `$edgeAgent` module twins.
//!
//! Field names are the hub's camelCase JSON. Unknown fields are kept where a
//! read-modify-write must not drop them (`content`), and ignored elsewhere.
//! Shared by the client and the emulator; no I/O here.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The API version every request carries.
pub const API_VERSION: &str = "2021-04-12";

/// The only schema version the hub accepts for configurations.
pub const CONFIGURATION_SCHEMA_VERSION: &str = "1.0";

/// An automatic device/module configuration; with `content.modulesContent`
/// it is an IoT Edge deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub id: String,
    #[serde(default = "schema_version")]
    pub schema_version: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub content: ConfigurationContent,
    #[serde(default, deserialize_with = "null_default")]
    pub target_condition: String,
    #[serde(default, deserialize_with = "null_default")]
    pub priority: i32,
    /// Metrics the hub computes (`targetedCount`, `appliedCount`, …); read-only.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "ConfigurationMetrics::is_empty"
    )]
    pub system_metrics: ConfigurationMetrics,
    /// User metrics: queries the hub evaluates on demand.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "ConfigurationMetrics::is_empty"
    )]
    pub metrics: ConfigurationMetrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time_utc: Option<String>,
    /// Unquoted etag as the hub returns it; send it quoted in `If-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// Read `null` as the type's default: the hub writes `null` for absent maps
/// and strings in some answers, and a read-modify-write must not fail on it.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

fn schema_version() -> String {
    CONFIGURATION_SCHEMA_VERSION.to_string()
}

impl Configuration {
    /// A new IoT Edge deployment with `modulesContent`.
    pub fn edge_deployment(
        id: impl Into<String>,
        modules_content: BTreeMap<String, Value>,
        target_condition: impl Into<String>,
        priority: i32,
    ) -> Self {
        Self {
            id: id.into(),
            schema_version: schema_version(),
            content: ConfigurationContent {
                modules_content: Some(modules_content),
                ..Default::default()
            },
            target_condition: target_condition.into(),
            priority,
            ..Default::default()
        }
    }

    /// A system metric's result (0 when the hub has not computed it).
    pub fn system_metric(&self, name: &str) -> i64 {
        self.system_metrics.results.get(name).copied().unwrap_or(0)
    }

    /// The four device counts of an IoT Edge deployment.
    pub fn device_counts(&self) -> DeviceCounts {
        DeviceCounts {
            targeted: self.system_metric(metric::TARGETED),
            applied: self.system_metric(metric::APPLIED),
            reported_successful: self.system_metric(metric::REPORTED_SUCCESSFUL),
            reported_failed: self.system_metric(metric::REPORTED_FAILED),
        }
    }

    /// A layered deployment (`properties.desired.<path>` patches) rather
    /// than a standard one (`$edgeAgent.properties.desired`).
    pub fn is_layered(&self) -> bool {
        self.content
            .modules_content
            .as_ref()
            .and_then(|m| m.get("$edgeAgent"))
            .is_none_or(|agent| agent.get("properties.desired").is_none())
    }
}

/// Device counts from a deployment's system metrics; `Display` is the
/// condition message form `targeted=5 applied=5 ok=4 failed=1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub targeted: i64,
    pub applied: i64,
    pub reported_successful: i64,
    pub reported_failed: i64,
}

impl std::fmt::Display for DeviceCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "targeted={} applied={} ok={} failed={}",
            self.targeted, self.applied, self.reported_successful, self.reported_failed
        )
    }
}

/// `content`: exactly one of the three is set by the hub's rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    /// Module twins by module id (`$edgeAgent`, `$edgeHub`, custom modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<BTreeMap<String, Value>>,
}

/// `metrics` / `systemMetrics`: named queries and their counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    #[serde(default, deserialize_with = "null_default")]
    pub queries: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub results: BTreeMap<String, i64>,
}

impl ConfigurationMetrics {
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty() && self.results.is_empty()
    }
}

/// System metric names the hub computes for IoT Edge deployments.
pub mod metric {
    pub const TARGETED: &str = "targetedCount";
    pub const APPLIED: &str = "appliedCount";
    pub const REPORTED_SUCCESSFUL: &str = "reportedSuccessfulCount";
    pub const REPORTED_FAILED: &str = "reportedFailedCount";
}

/// Body of `POST /configurations/testQueries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueriesTestInput {
    #[serde(default, deserialize_with = "null_default")]
    pub target_condition: String,
    #[serde(default, deserialize_with = "null_default")]
    pub custom_metric_queries: BTreeMap<String, String>,
}

/// Answer of `POST /configurations/testQueries`: empty strings mean valid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueriesTestResult {
    #[serde(default, deserialize_with = "null_default")]
    pub target_condition_error: String,
    #[serde(default, deserialize_with = "null_default")]
    pub custom_metric_query_errors: BTreeMap<String, String>,
}

impl QueriesTestResult {
    pub fn is_ok(&self) -> bool {
        self.target_condition_error.is_empty()
            && self
                .custom_metric_query_errors
                .values()
                .all(String::is_empty)
    }
}

/// Body of `POST /devices/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuerySpecification {
    pub query: String,
}

/// A module twin (`GET /twins/{deviceId}/modules/{moduleId}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleTwin {
    pub device_id: String,
    pub module_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub version: i64,
    /// `Connected` / `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub properties: TwinProperties,
    /// Configuration id → `{"status": "Targeted" | "Applied"}`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub configurations: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinProperties {
    #[serde(default, deserialize_with = "null_default")]
    pub desired: Value,
    #[serde(default, deserialize_with = "null_default")]
    pub reported: Value,
}

impl ModuleTwin {
    /// The desired `$version` the device is asked to reach.
    pub fn desired_version(&self) -> Option<i64> {
        self.properties
            .desired
            .get("$version")
            .and_then(Value::as_i64)
    }

    /// The `$edgeAgent` reported state, if the twin has one.
    pub fn edge_agent_report(&self) -> Option<EdgeAgentReport> {
        serde_json::from_value(self.properties.reported.clone()).ok()
    }
}

/// What `$edgeAgent` reports (`properties.reported`), the part spillway reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeAgentReport {
    #[serde(default)]
    pub last_desired_version: Option<i64>,
    #[serde(default)]
    pub last_desired_status: Option<DesiredStatus>,
    #[serde(default, deserialize_with = "null_default")]
    pub system_modules: BTreeMap<String, ModuleReport>,
    #[serde(default, deserialize_with = "null_default")]
    pub modules: BTreeMap<String, ModuleReport>,
}

/// `lastDesiredStatus`: 200 applied, 400 invalid, 406 offline / not
/// reporting, 412 invalid schema version, 417 empty desired properties,
/// 500 failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredStatus {
    pub code: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub description: String,
}

/// One module in the `$edgeAgent` report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleReport {
    /// `running`, `backoff`, `stopped`, `failed`, `unknown`.
    #[serde(default, deserialize_with = "null_default")]
    pub runtime_status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub restart_count: Option<i64>,
    #[serde(default)]
    pub status_description: Option<String>,
    #[serde(default)]
    pub settings: Option<ModuleSettings>,
    #[serde(default)]
    pub last_start_time_utc: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSettings {
    #[serde(default, deserialize_with = "null_default")]
    pub image: String,
}

/// The hub's error body: `{"Message":"ErrorCode:<Code>;<text>","ExceptionMessage":"…"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HubErrorBody {
    #[serde(rename = "Message", default)]
    pub message: String,
    #[serde(rename = "ExceptionMessage", default)]
    pub exception_message: String,
}

impl HubErrorBody {
    pub fn new(code: &str, text: &str, tracking: &str) -> Self {
        Self {
            message: format!("ErrorCode:{code};{text}"),
            exception_message: format!("Tracking ID:{tracking}"),
        }
    }

    /// Split `ErrorCode:<Code>;<text>` into code and text. Newer answers put a
    /// JSON object (`{"errorCode":412001,"message":…}`) in `Message`; both forms
    /// are read.
    pub fn code_and_text(&self) -> (String, String) {
        if let Some(rest) = self.message.strip_prefix("ErrorCode:") {
            let (code, text) = rest.split_once(';').unwrap_or((rest, ""));
            return (code.to_string(), text.to_string());
        }
        if let Ok(v) = serde_json::from_str::<Value>(&self.message) {
            let code = match v.get("errorCode") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            let text = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            return (code, text);
        }
        (String::new(), self.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configuration_round_trips_with_the_hubs_field_names() {
        let wire = json!({
            "id": "web-1",
            "schemaVersion": "1.0",
            "labels": {"spillway.io/node": "edge-a"},
            "content": {"modulesContent": {"$edgeAgent": {"properties.desired.modules.web": {"type": "docker"}}}},
            "targetCondition": "tags.site='munich'",
            "priority": 101,
            "systemMetrics": {"queries": {}, "results": {"targetedCount": 3}},
            "metrics": {"queries": {}, "results": {}},
            "createdTimeUtc": "2026-01-01T00:00:00Z",
            "lastUpdatedTimeUtc": "2026-01-01T00:00:00Z",
            "etag": "MQ=="
        });
        let c: Configuration = serde_json::from_value(wire).expect("parses");
        assert_eq!(c.system_metric(metric::TARGETED), 3);
        assert_eq!(
            c.device_counts().to_string(),
            "targeted=3 applied=0 ok=0 failed=0"
        );
        assert!(c.is_layered());
        assert_eq!(c.system_metric(metric::APPLIED), 0);
        assert_eq!(c.etag.as_deref(), Some("MQ=="));
        let back = serde_json::to_value(&c).expect("serialises");
        assert_eq!(back["targetCondition"], "tags.site='munich'");
        assert!(back["content"]["modulesContent"]["$edgeAgent"].is_object());
        assert!(back.get("metrics").is_none(), "empty metrics are omitted");
    }

    #[test]
    fn nulls_from_the_hub_read_as_empty() {
        let wire = json!({
            "id": "web-1", "schemaVersion": "1.0", "labels": null,
            "content": {"modulesContent": {"$edgeAgent": {}}, "deviceContent": null},
            "targetCondition": null, "priority": 0,
            "systemMetrics": {"queries": null, "results": null}, "metrics": null,
            "etag": "MQ=="
        });
        let c: Configuration = serde_json::from_value(wire).expect("nulls tolerated");
        assert!(c.labels.is_empty());
        assert!(c.target_condition.is_empty());
        assert!(c.content.device_content.is_none());
        let report: EdgeAgentReport = serde_json::from_value(json!({
            "lastDesiredVersion": 3, "lastDesiredStatus": {"code": 200, "description": null},
            "systemModules": null, "modules": {"web": {"runtimeStatus": "running", "exitCode": null}}
        }))
        .expect("report");
        assert_eq!(report.modules["web"].exit_code, None);
        assert!(report.system_modules.is_empty());
    }

    #[test]
    fn error_bodies_in_both_forms() {
        let old = HubErrorBody::new("PreconditionFailed", "etag mismatch", "x");
        assert_eq!(
            old.code_and_text(),
            ("PreconditionFailed".into(), "etag mismatch".into())
        );
        let new = HubErrorBody {
            message: r#"{"errorCode":412001,"message":"etag mismatch"}"#.into(),
            exception_message: String::new(),
        };
        assert_eq!(
            new.code_and_text(),
            ("412001".into(), "etag mismatch".into())
        );
    }
}
