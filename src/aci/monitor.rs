//! Azure Monitor's metrics API for container groups: the one query spillway
//! makes (`{resourceId}/providers/Microsoft.Insights/metrics`,
//! api-version 2018-01-01), its wire types and their parsing into
//! [`GroupMetrics`].
//!
//! ACI publishes two per-container metrics (dimension `containerName`):
//! `CpuUsage`, the average CPU use over each time grain **in millicores**,
//! and `MemoryUsage`, the average memory use **in bytes**. spillway asks for
//! the `Average` aggregation at the finest grain ACI has, one minute
//! (`PT1M`), split by container (`$filter=containerName eq '*'`). The same
//! query and shape as virtual-kubelet/azure-aci's Container Insights
//! provider (`client/aci/metrics.go`, `provider/metrics/container_insights.go`
//! before its v1.5 rewrite) and the REST specification
//! (azure-rest-api-specs `monitor/.../stable/2018-01-01/metrics_API.json`).
//!
//! The emulator answers the same route with these types
//! ([`crate::aci::emulator`]). Nothing here does I/O or reads a clock.

use super::AciError;
use crate::units::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The Monitor api-version spillway sends.
pub const API_VERSION: &str = "2018-01-01";
/// ACI's CPU metric: average millicores per grain.
pub const CPU_USAGE: &str = "CpuUsage";
/// ACI's memory metric: average bytes per grain.
pub const MEMORY_USAGE: &str = "MemoryUsage";
/// ACI's other metrics (not split by container; spillway does not ask).
pub const NETWORK_METRICS: [&str; 2] = [
    "NetworkBytesReceivedPerSecond",
    "NetworkBytesTransmittedPerSecond",
];
/// The dimension ACI splits its metrics by, as Monitor names it in
/// `metadatavalues` (lower case).
pub const CONTAINER_DIMENSION: &str = "containername";
/// The grain spillway asks for: one minute, ACI's finest.
pub const GRAIN: Duration = Duration(60_000);
/// Time series asked for per query (`top`). With a `$filter` Monitor
/// returns at most `top` series, 10 when unset (metrics_API.json,
/// `TopParameter`); ACI allows up to 60 containers in a group.
pub const TOP: u32 = 60;

/// A time range of the query, `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSpan {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl MetricsSpan {
    /// The `window` before `now`: `start` rounded down to a whole minute,
    /// `end` to a whole second.
    pub fn last(window: std::time::Duration, now: Timestamp) -> Self {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let start = now.millis().saturating_sub(window_ms);
        Self {
            start: Timestamp(start - start.rem_euclid(GRAIN.0 as i64)),
            end: Timestamp(now.millis() - now.millis().rem_euclid(1000)),
        }
    }

    /// Monitor's `timespan` parameter: `start/end` in ISO 8601.
    pub fn to_query(self) -> String {
        format!("{}/{}", self.start.to_rfc3339(), self.end.to_rfc3339())
    }

    /// Parse a `timespan` parameter (`start/end`, RFC 3339 each).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| format!("timespan {s:?} is not 'start/end'"))?;
        let start = Timestamp::parse_rfc3339(a)?;
        let end = Timestamp::parse_rfc3339(b)?;
        if end <= start {
            return Err(format!("timespan {s:?}: the end is not after the start"));
        }
        Ok(Self { start, end })
    }
}

/// The query parameters of the metrics call for `span`.
pub fn query_pairs(span: MetricsSpan) -> Vec<(&'static str, String)> {
    vec![
        ("api-version", API_VERSION.to_string()),
        ("metricnames", format!("{CPU_USAGE},{MEMORY_USAGE}")),
        ("aggregation", "Average".to_string()),
        ("interval", "PT1M".to_string()),
        ("timespan", span.to_query()),
        ("$filter", "containerName eq '*'".to_string()),
        ("top", TOP.to_string()),
    ]
}

/// The ARM path of a group's metrics.
pub fn metrics_path(subscription: &str, resource_group: &str, group: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{}/{group}/providers/Microsoft.Insights/metrics",
        super::model::RESOURCE_TYPE
    )
}

/// One grain of one container: its start and the averages Monitor has
/// for it (`None`: no data for that minute, e.g. not running yet, or not
/// ingested yet: Monitor lags a few minutes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinutePoint {
    pub start: Timestamp,
    pub cpu_millicores: Option<f64>,
    pub memory_bytes: Option<f64>,
}

/// A group's metrics over a [`MetricsSpan`]: per container, its points in
/// time order (one per grain Monitor listed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupMetrics {
    pub containers: BTreeMap<String, Vec<MinutePoint>>,
}

// ----------------------------------------------------------------------
// Wire types (metrics_API.json `Response`, commonMonitoringTypes `Metric`)

/// A metrics answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    pub timespan: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resourceregion: Option<String>,
    pub value: Vec<Metric>,
}

/// One metric of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    #[serde(default)]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    pub name: LocalizableString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_description: Option<String>,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub timeseries: Vec<TimeSeries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// `{"value": ..., "localizedValue": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocalizableString {
    pub value: String,
    #[serde(default)]
    pub localized_value: String,
}

/// One time series: its dimension values and its points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TimeSeries {
    #[serde(default)]
    pub metadatavalues: Vec<MetadataValue>,
    #[serde(default)]
    pub data: Vec<DataPoint>,
}

/// A dimension's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetadataValue {
    pub name: LocalizableString,
    #[serde(default)]
    pub value: String,
}

/// One grain; an aggregation is absent when Monitor has no data for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DataPoint {
    #[serde(rename = "timeStamp", alias = "timestamp")]
    pub time_stamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<f64>,
}

fn protocol(message: String) -> AciError {
    AciError::Protocol { message }
}

/// Parse a metrics answer into per-container points. Metrics other than
/// [`CPU_USAGE`] and [`MEMORY_USAGE`] are ignored; a metric answered with
/// an `errorCode` other than `Success`, a series without the container
/// dimension, a time that does not parse or a negative or non-finite
/// average is a [`AciError::Protocol`] naming it.
pub fn parse(body: &[u8]) -> Result<GroupMetrics, AciError> {
    let response: Response = serde_json::from_slice(body)
        .map_err(|e| protocol(format!("unexpected Azure Monitor answer: {e}")))?;
    let mut containers: BTreeMap<String, BTreeMap<Timestamp, MinutePoint>> = BTreeMap::new();
    for metric in &response.value {
        let name = metric.name.value.as_str();
        let cpu = name.eq_ignore_ascii_case(CPU_USAGE);
        if !cpu && !name.eq_ignore_ascii_case(MEMORY_USAGE) {
            continue;
        }
        if let Some(code) = metric
            .error_code
            .as_deref()
            .filter(|c| !c.eq_ignore_ascii_case("Success"))
        {
            return Err(protocol(format!(
                "Azure Monitor metric {name}: {code}: {}",
                metric.error_message.as_deref().unwrap_or_default()
            )));
        }
        for series in &metric.timeseries {
            let container = series
                .metadatavalues
                .iter()
                .find(|m| m.name.value.eq_ignore_ascii_case(CONTAINER_DIMENSION))
                .map(|m| m.value.clone())
                .ok_or_else(|| {
                    protocol(format!(
                        "Azure Monitor metric {name}: a time series without the {CONTAINER_DIMENSION} dimension"
                    ))
                })?;
            let points = containers.entry(container.clone()).or_default();
            for d in &series.data {
                let start = Timestamp::parse_rfc3339(&d.time_stamp).map_err(|e| {
                    protocol(format!("Azure Monitor metric {name} of {container}: {e}"))
                })?;
                if let Some(a) = d.average
                    && !(a.is_finite() && a >= 0.0)
                {
                    return Err(protocol(format!(
                        "Azure Monitor metric {name} of {container} at {}: average {a} is not a non-negative number",
                        d.time_stamp
                    )));
                }
                let p = points.entry(start).or_insert(MinutePoint {
                    start,
                    cpu_millicores: None,
                    memory_bytes: None,
                });
                if cpu {
                    p.cpu_millicores = d.average;
                } else {
                    p.memory_bytes = d.average;
                }
            }
        }
    }
    Ok(GroupMetrics {
        containers: containers
            .into_iter()
            .map(|(c, points)| (c, points.into_values().collect()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An answer shaped as Monitor sends it (GetMetric.json): two
    /// containers, the newest minute without data yet.
    const ANSWER: &str = r#"{
      "cost": 0,
      "timespan": "2024-05-14T09:00:00Z/2024-05-14T09:03:00Z",
      "interval": "PT1M",
      "value": [
        {
          "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/g/providers/Microsoft.Insights/metrics/CpuUsage",
          "type": "Microsoft.Insights/metrics",
          "name": {"value": "CpuUsage", "localizedValue": "CPU Usage"},
          "unit": "Count",
          "timeseries": [
            {"metadatavalues": [{"name": {"value": "containername", "localizedValue": "containername"}, "value": "app"}],
             "data": [{"timeStamp": "2024-05-14T09:00:00Z", "average": 250.0},
                      {"timeStamp": "2024-05-14T09:01:00Z", "average": 500.0},
                      {"timeStamp": "2024-05-14T09:02:00Z"}]},
            {"metadatavalues": [{"name": {"value": "containername", "localizedValue": "containername"}, "value": "sidecar"}],
             "data": [{"timeStamp": "2024-05-14T09:01:00Z", "average": 10.0}]}
          ],
          "errorCode": "Success"
        },
        {
          "id": "x",
          "type": "Microsoft.Insights/metrics",
          "name": {"value": "MemoryUsage", "localizedValue": "Memory Usage"},
          "unit": "Bytes",
          "timeseries": [
            {"metadatavalues": [{"name": {"value": "containername", "localizedValue": "containername"}, "value": "app"}],
             "data": [{"timeStamp": "2024-05-14T09:00:00Z", "average": 1048576.0},
                      {"timestamp": "2024-05-14T09:01:00Z", "average": 2097152.0}]}
          ]
        }
      ],
      "namespace": "Microsoft.ContainerInstance/containerGroups",
      "resourceregion": "westeurope"
    }"#;

    #[test]
    fn a_monitor_answer_becomes_points_per_container_and_minute() {
        let m = parse(ANSWER.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.containers.len(), 2);
        assert_eq!(
            m.containers["app"],
            vec![
                MinutePoint {
                    start: t("2024-05-14T09:00:00Z"),
                    cpu_millicores: Some(250.0),
                    memory_bytes: Some(1048576.0)
                },
                MinutePoint {
                    start: t("2024-05-14T09:01:00Z"),
                    cpu_millicores: Some(500.0),
                    memory_bytes: Some(2097152.0)
                },
                MinutePoint {
                    start: t("2024-05-14T09:02:00Z"),
                    cpu_millicores: None,
                    memory_bytes: None
                },
            ]
        );
        assert_eq!(
            m.containers["sidecar"],
            vec![MinutePoint {
                start: t("2024-05-14T09:01:00Z"),
                cpu_millicores: Some(10.0),
                memory_bytes: None
            }]
        );
    }

    #[test]
    fn answers_that_cannot_be_right_are_protocol_errors_naming_the_fault() {
        let error = |body: &str| match parse(body.as_bytes()) {
            Err(AciError::Protocol { message }) => message,
            other => panic!("{other:?}"),
        };
        let failed = r#"{"timespan":"a/b","value":[{"name":{"value":"CpuUsage"},"timeseries":[],
            "errorCode":"InvalidSamplingType","errorMessage":"Sampling type is not found."}]}"#;
        assert!(
            error(failed).contains("CpuUsage: InvalidSamplingType: Sampling type is not found."),
            "{}",
            error(failed)
        );
        let no_dimension = r#"{"timespan":"a/b","value":[{"name":{"value":"MemoryUsage"},
            "timeseries":[{"metadatavalues":[],"data":[]}]}]}"#;
        assert!(error(no_dimension).contains("containername"));
        let negative = r#"{"timespan":"a/b","value":[{"name":{"value":"CpuUsage"},
            "timeseries":[{"metadatavalues":[{"name":{"value":"containername"},"value":"app"}],
            "data":[{"timeStamp":"2024-05-14T09:00:00Z","average":-1}]}]}]}"#;
        assert!(error(negative).contains("app at 2024-05-14T09:00:00Z"));
        let bad_time = r#"{"timespan":"a/b","value":[{"name":{"value":"CpuUsage"},
            "timeseries":[{"metadatavalues":[{"name":{"value":"containername"},"value":"app"}],
            "data":[{"timeStamp":"yesterday","average":1}]}]}]}"#;
        assert!(error(bad_time).contains("yesterday"));
        assert!(error("not json").contains("unexpected Azure Monitor answer"));
        // Other metrics are ignored, whatever their shape.
        let other = r#"{"timespan":"a/b","value":[{"name":{"value":"NetworkBytesReceivedPerSecond"},
            "timeseries":[{"metadatavalues":[],"data":[]}]}]}"#;
        assert_eq!(parse(other.as_bytes()).ok(), Some(GroupMetrics::default()));
    }

    #[test]
    fn the_query_asks_for_average_millicores_and_bytes_per_container_and_minute() {
        let span = MetricsSpan::last(
            std::time::Duration::from_secs(600),
            t("2024-05-14T09:21:37.250Z"),
        );
        assert_eq!(span.start, t("2024-05-14T09:11:00Z"));
        assert_eq!(span.end, t("2024-05-14T09:21:37Z"));
        assert_eq!(span.to_query(), "2024-05-14T09:11:00Z/2024-05-14T09:21:37Z");
        assert_eq!(MetricsSpan::parse(&span.to_query()), Ok(span));
        assert!(MetricsSpan::parse("2024-05-14T09:11:00Z/2024-05-14T09:11:00Z").is_err());
        assert!(MetricsSpan::parse("2024-05-14T09:11:00Z").is_err());
        let q: BTreeMap<&str, String> = query_pairs(span).into_iter().collect();
        assert_eq!(q["metricnames"], "CpuUsage,MemoryUsage");
        assert_eq!(q["aggregation"], "Average");
        assert_eq!(q["interval"], "PT1M");
        assert_eq!(q["$filter"], "containerName eq '*'");
        assert_eq!(q["api-version"], "2018-01-01");
        assert_eq!(q["top"], "60");
        assert_eq!(
            metrics_path("s", "rg", "g"),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/g/providers/Microsoft.Insights/metrics"
        );
    }
}
