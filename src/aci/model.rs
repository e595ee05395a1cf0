//! Wire types for `Microsoft.ContainerInstance/containerGroups`
//! (api-version 2023-05-01), in the camelCase JSON that ARM sends.
//!
//! Every struct tolerates unknown fields on read (ARM adds fields over time)
//! and omits empty optional fields on write, so a serialized group is exactly
//! the body a client would PUT. Read-only fields (`id`, `type`,
//! `provisioningState`, `instanceView`, `ip`, `fqdn`) are `Option`s that a
//! client leaves `None`; [`ContainerGroup::spec`] strips them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// ARM sometimes sends `null` for an empty list or map: read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The ARM api-version this module models.
pub const API_VERSION: &str = "2023-05-01";
/// The ARM resource type.
pub const RESOURCE_TYPE: &str = "Microsoft.ContainerInstance/containerGroups";

/// A container group resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// ARM takes the name from the URL; a PUT body may leave it out.
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub location: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    pub properties: ContainerGroupProperties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_state: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<Container>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub init_containers: Vec<InitContainer>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub image_registry_credentials: Vec<ImageRegistryCredential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddress>,
    #[serde(default)]
    pub os_type: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The delegated subnets the group joins (`subnetIds`, since
    /// 2021-07-01); its IP is then a private address of the subnet.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subnet_ids: Vec<ContainerGroupSubnetId>,
    /// The resolver configuration of every container (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfiguration>,
    /// Where ACI ships the containers' logs besides its own short-lived
    /// copy (`diagnostics.logAnalytics`): a Log Analytics workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<ContainerGroupDiagnostics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<GroupInstanceView>,
}

/// `properties.diagnostics` (`ContainerGroupDiagnostics` in the 2023-05-01
/// spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupDiagnostics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_analytics: Option<LogAnalytics>,
}

/// `LogAnalytics` in the 2023-05-01 spec: the workspace ACI sends the
/// group's logs to. `workspaceId` and `workspaceKey` are required on a PUT;
/// `workspaceKey` and `workspaceResourceId` are `x-ms-secret`, so ARM never
/// returns them on read (hence `Option` here, and the emulator checks the
/// key's presence itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogAnalytics {
    /// The workspace id (a GUID, the workspace's `customerId`).
    pub workspace_id: String,
    /// The workspace's shared key. Never returned on read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_key: Option<String>,
    /// `ContainerInsights` or `ContainerInstanceLogs`; absent: ACI's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: BTreeMap<String, String>,
    /// The workspace's ARM id. Never returned on read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_resource_id: Option<String>,
}

/// `ContainerGroupSubnetId`: the ARM id of a subnet
/// (`/subscriptions/…/providers/Microsoft.Network/virtualNetworks/V/subnets/S`)
/// and an optional friendly name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupSubnetId {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `properties.dnsConfig` (`DnsConfiguration` in the 2023-05-01 spec):
/// `nameServers` is a required array; the search domains and the options
/// are each one space-separated string (`"ns.svc.cluster.local svc.cluster.local"`,
/// `"ndots:5 timeout:2"`), as in `resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfiguration {
    /// Required by the spec: a body whose `dnsConfig` lacks it does not
    /// deserialize (ARM answers `InvalidRequestContent`).
    pub name_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_domains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub properties: ContainerProperties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProperties {
    pub image: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ContainerPort>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub environment_variables: Vec<EnvironmentVariable>,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<ContainerInstanceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitContainer {
    pub name: String,
    pub properties: InitContainerProperties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitContainerProperties {
    #[serde(default)]
    pub image: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub environment_variables: Vec<EnvironmentVariable>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<ContainerInstanceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: u16,
}

/// `value` for plain values, `secureValue` for secrets (ARM never returns
/// `secureValue` on read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentVariable {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default)]
    pub requests: ResourceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSpec>,
}

/// CPU in cores, memory in GB (10^9 bytes), as ARM expects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    #[serde(default)]
    pub cpu: f64,
    #[serde(default, rename = "memoryInGB")]
    pub memory_in_gb: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    #[serde(default, deserialize_with = "null_as_default")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstanceView {
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<ContainerState>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub events: Vec<Event>,
}

/// ARM container state: `Waiting`, `Running`, `Terminated` (plus the rarer
/// `Pending`, `Failed`, `Succeeded`, `Canceled`); timestamps RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupInstanceView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpAddress {
    /// `Public` or `Private`.
    #[serde(rename = "type")]
    pub ip_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<IpPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpPort {
    /// `TCP` or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    /// File name → base64 content. ARM never returns the values on read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<AzureFileVolume>,
}

/// ARM sends and expects `"emptyDir": {}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EmptyDir {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AzureFileVolume {
    pub share_name: String,
    pub storage_account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_account_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageRegistryCredential {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Never returned on read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl ContainerGroup {
    /// The desired-state part of a group: what a client PUTs. Strips every
    /// field the service sets (id, type, provisioning state, instance views,
    /// allocated IP and FQDN), so two specs compare equal iff a PUT of one over
    /// the other would change nothing.
    pub fn spec(&self) -> ContainerGroup {
        let mut g = self.clone();
        g.id = None;
        g.resource_type = None;
        g.properties.provisioning_state = None;
        g.properties.instance_view = None;
        for c in &mut g.properties.containers {
            c.properties.instance_view = None;
        }
        for c in &mut g.properties.init_containers {
            c.properties.instance_view = None;
        }
        if let Some(ip) = &mut g.properties.ip_address {
            ip.ip = None;
            ip.fqdn = None;
        }
        g
    }

    /// The group as ARM returns it on read: secret material removed
    /// (`secureValue`, secret volume contents, storage keys, registry
    /// passwords). Specs compared across a read must use this on both sides.
    pub fn redacted(&self) -> ContainerGroup {
        let mut g = self.clone();
        let redact_env = |env: &mut Vec<EnvironmentVariable>| {
            for e in env {
                e.secure_value = None;
            }
        };
        for c in &mut g.properties.containers {
            redact_env(&mut c.properties.environment_variables);
        }
        for c in &mut g.properties.init_containers {
            redact_env(&mut c.properties.environment_variables);
        }
        for v in &mut g.properties.volumes {
            if let Some(s) = &mut v.secret {
                for val in s.values_mut() {
                    val.clear();
                }
            }
            if let Some(f) = &mut v.azure_file {
                f.storage_account_key = None;
            }
        }
        for c in &mut g.properties.image_registry_credentials {
            c.password = None;
        }
        if let Some(la) = g
            .properties
            .diagnostics
            .as_mut()
            .and_then(|d| d.log_analytics.as_mut())
        {
            la.workspace_key = None;
            la.workspace_resource_id = None;
        }
        g
    }

    /// Total CPU cores requested by the group's containers.
    pub fn requested_cores(&self) -> f64 {
        self.properties
            .containers
            .iter()
            .map(|c| c.properties.resources.requests.cpu)
            .sum()
    }

    /// Total memory (GB) requested by the group's containers.
    pub fn requested_memory_gb(&self) -> f64 {
        self.properties
            .containers
            .iter()
            .map(|c| c.properties.resources.requests.memory_in_gb)
            .sum()
    }
}

/// ARM's list envelope (`{value:[...], nextLink}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResult<T> {
    #[serde(
        default = "Vec::new",
        deserialize_with = "null_as_default",
        bound(deserialize = "T: Deserialize<'de>")
    )]
    pub value: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// One entry of `locations/{loc}/usages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEntry {
    #[serde(default)]
    pub unit: String,
    pub current_value: i64,
    pub limit: i64,
    pub name: UsageName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageName {
    pub value: String,
    #[serde(default)]
    pub localized_value: String,
}

/// ARM error envelope: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmErrorBody {
    pub error: ArmErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmErrorDetail {
    pub code: String,
    pub message: String,
}

/// The answer of `POST …/containers/{container}/exec`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResponse {
    pub web_socket_uri: String,
    pub password: String,
}

impl std::fmt::Debug for ExecResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecResponse")
            .field("web_socket_uri", &self.web_socket_uri)
            .finish_non_exhaustive()
    }
}

/// Container logs response: `{"content": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    #[serde(default)]
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arm_json_with_unknown_fields_and_writes_camel_case() {
        let json = serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/g",
            "name": "g", "type": "Microsoft.ContainerInstance/containerGroups", "location": "westeurope",
            "zones": ["1"],
            "properties": {
                "provisioningState": "Succeeded", "someFutureField": {"x": 1},
                "containers": [{"name": "c", "properties": {
                    "image": "nginx", "ports": [{"port": 80}],
                    "environmentVariables": [{"name": "A", "value": "1"}, {"name": "S"}],
                    "resources": {"requests": {"cpu": 1.0, "memoryInGB": 1.5}},
                    "instanceView": {"restartCount": 2, "currentState": {"state": "Running", "startTime": "2024-01-01T00:00:00Z", "detailStatus": ""}}
                }}],
                "osType": "Linux",
                "ipAddress": {"type": "Public", "ports": [{"protocol": "TCP", "port": 80}], "ip": "20.0.0.4"},
                "volumes": [{"name": "e", "emptyDir": {}}],
                "instanceView": {"state": "Running", "events": []}
            }
        });
        let g: ContainerGroup = serde_json::from_value(json).expect("parses");
        assert_eq!(
            g.properties.containers[0]
                .properties
                .resources
                .requests
                .memory_in_gb,
            1.5
        );
        assert_eq!(
            g.properties
                .ip_address
                .as_ref()
                .and_then(|i| i.ip.as_deref()),
            Some("20.0.0.4")
        );
        let back = serde_json::to_value(g.spec()).expect("serializes");
        assert!(back["properties"].get("provisioningState").is_none());
        assert_eq!(
            back["properties"]["volumes"][0]["emptyDir"],
            serde_json::json!({})
        );
        assert_eq!(
            back["properties"]["containers"][0]["properties"]["resources"]["requests"]["memoryInGB"],
            serde_json::json!(1.5)
        );
        assert!(back["properties"]["ipAddress"].get("ip").is_none());
    }

    #[test]
    fn nulls_read_as_empty() {
        let g: ContainerGroup = serde_json::from_value(serde_json::json!({
            "name": "g", "location": "l", "tags": null,
            "properties": {"containers": [{"name": "c", "properties": {"image": "i", "ports": null,
                "environmentVariables": null, "volumeMounts": null, "command": null}}],
                "volumes": null, "imageRegistryCredentials": null, "initContainers": null, "osType": "Linux"}
        }))
        .expect("nulls tolerated");
        assert!(g.tags.is_empty() && g.properties.volumes.is_empty());
        let l: ListResult<ContainerGroup> =
            serde_json::from_value(serde_json::json!({"value": null})).expect("null list");
        assert!(l.value.is_empty());
    }

    #[test]
    fn redaction_removes_every_secret() {
        let mut g = ContainerGroup::default();
        g.properties.containers.push(Container {
            name: "c".into(),
            properties: ContainerProperties {
                environment_variables: vec![EnvironmentVariable {
                    name: "P".into(),
                    value: None,
                    secure_value: Some("hunter2".into()),
                }],
                ..Default::default()
            },
        });
        g.properties.volumes.push(Volume {
            name: "s".into(),
            secret: Some([("k".to_string(), "aHVudGVyMg==".to_string())].into()),
            azure_file: Some(AzureFileVolume {
                share_name: "sh".into(),
                storage_account_name: "acct".into(),
                storage_account_key: Some("key".into()),
                read_only: None,
            }),
            ..Default::default()
        });
        g.properties
            .image_registry_credentials
            .push(ImageRegistryCredential {
                server: "r.azurecr.io".into(),
                username: Some("u".into()),
                password: Some("pw".into()),
            });
        g.properties.diagnostics = Some(ContainerGroupDiagnostics {
            log_analytics: Some(LogAnalytics {
                workspace_id: "ws-id".into(),
                workspace_key: Some("wskey".into()),
                workspace_resource_id: Some("/subscriptions/s/workspaces/w".into()),
                ..Default::default()
            }),
        });
        let text = serde_json::to_string(&g.redacted()).expect("serializes");
        assert!(
            text.contains("ws-id"),
            "the workspace id is not secret: {text}"
        );
        for secret in [
            "hunter2",
            "aHVudGVyMg==",
            "\"key\"",
            "pw",
            "wskey",
            "/subscriptions/s/workspaces/w",
        ] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}
