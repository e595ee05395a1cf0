//! [`ContainerGroups`] on Azure Resource Manager, through
//! `azure_mgmt_containerinstance` 0.21 (with `azure_core`/`azure_identity`
//! 0.21: the 1.x crates are incompatible).
//!
//! The SDK's conveniences are avoided where they are known to be wrong:
//! - every request is sent **once** (`RequestBuilder::send`), never through
//!   the long-running-operation futures (they re-send PUT/DELETE and ignore
//!   `provisioningState`); callers poll `get`/`list`;
//! - deletes are judged by status code (empty 202/204 bodies do not parse);
//! - the SDK's retry policy is off and every call has our own timeout; the
//!   caller paces and retries, honouring [`AciError::Throttled`];
//! - `Retry-After` is captured by our own transport policy (the SDK error
//!   hides response headers);
//! - with an overridden endpoint (the emulator) the token scope stays
//!   `https://management.azure.com/.default`;
//! - the workload identity token file is re-read on every refresh (the SDK
//!   reads it once and fails after the projected token rotates).
//!
//! Bodies are converted between our wire types ([`crate::aci::model`]) and
//! the SDK's through their shared ARM JSON.
//!
//! Azure Monitor's metrics (`metrics`) have no call in this crate: the one
//! GET ([`super::monitor`]) is built on azure_core 0.21's pipeline with the
//! same credential, scope, transport policy, timeout and no-retry policy as
//! the SDK client, rather than adding `azure_mgmt_monitor` (a generated
//! crate of every Monitor API version) for one request.

use super::model::{ContainerGroup, ExecResponse, ListResult, Logs, UsageEntry};
use super::monitor::{self, GroupMetrics, MetricsSpan};
use super::{
    AciError, BoxFuture, ContainerGroups, ExecSession, LogOptions, TAG_CLUSTER, TerminalSize, Usage,
};
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_mgmt_containerinstance::package_preview_2024_05 as sdk;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The ARM endpoint and the token scope every ARM call uses.
pub const ARM_ENDPOINT: &str = "https://management.azure.com";
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The api-version the SDK's container group calls send (its
/// `package-preview-2024-05`); the list, built here, sends the same.
const SDK_API_VERSION: &str = "2024-05-01-preview";

/// How to authenticate to ARM.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// AKS workload identity; the token file is re-read on every refresh.
    /// [`Credential::workload_identity_from_env`] reads the webhook's variables.
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: std::path::PathBuf,
        authority_host: String,
    },
    /// The VM's system-assigned managed identity (IMDS). azure_identity 0.21
    /// offers no user-assigned selection; use workload identity for that.
    ManagedIdentity,
    /// A service principal secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: String,
    },
    /// The signed-in Azure CLI (`az account get-access-token`), for local runs.
    AzureCli,
    /// A fixed bearer token: for the emulator only.
    StaticToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Credential::WorkloadIdentity { .. } => "WorkloadIdentity",
            Credential::ManagedIdentity => "ManagedIdentity",
            Credential::ClientSecret { .. } => "ClientSecret",
            Credential::AzureCli => "AzureCli",
            Credential::StaticToken(_) => "StaticToken",
        })
    }
}

impl Credential {
    /// Workload identity from the variables the AKS webhook injects:
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and
    /// optionally `AZURE_AUTHORITY_HOST`.
    pub fn workload_identity_from_env() -> Result<Self, AzureSetupError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| AzureSetupError::Credential {
                credential: "WorkloadIdentity".into(),
                message: format!("{name} is not set"),
            })
        };
        Ok(Credential::WorkloadIdentity {
            tenant_id: var("AZURE_TENANT_ID")?,
            client_id: var("AZURE_CLIENT_ID")?,
            token_file: var("AZURE_FEDERATED_TOKEN_FILE")?.into(),
            authority_host: std::env::var("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|_| "https://login.microsoftonline.com".into()),
        })
    }
}

/// Where and how to reach ACI.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub subscription_id: String,
    pub resource_group: String,
    /// ARM endpoint; the emulator's URL in tests and local runs.
    pub endpoint: String,
    pub credential: Credential,
    /// Bound on every call, token acquisition included.
    pub timeout: Duration,
}

impl AzureConfig {
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        credential: Credential,
    ) -> Self {
        Self {
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            endpoint: ARM_ENDPOINT.to_string(),
            credential,
            timeout: Duration::from_secs(30),
        }
    }

    /// A client of the emulator at `url` (local runs and tests).
    pub fn for_emulator(
        url: impl Into<String>,
        token: impl Into<String>,
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: url.into(),
            timeout: Duration::from_secs(10),
            ..Self::new(
                subscription_id,
                resource_group,
                Credential::StaticToken(token.into()),
            )
        }
    }
}

/// Why the Azure client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AzureSetupError {
    #[error("invalid ARM endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot set up the {credential} credential: {message}")]
    Credential { credential: String, message: String },
}

/// Per-call state shared with [`CapturingTransport`] (same task).
#[derive(Default)]
struct CallState {
    /// `Retry-After` of the last throttled answer.
    retry_after: Cell<Option<Duration>>,
    /// The exact JSON to PUT. The SDK's models lose data (its `SecretVolume`
    /// is an empty struct, so secret volume files would be dropped), so the
    /// body we serialized ourselves replaces the SDK's.
    put_body: RefCell<Option<bytes::Bytes>>,
}

tokio::task_local! {
    static CALL: CallState;
}

/// Transport policy: send with the SDK's HTTP client, note `Retry-After`.
#[derive(Debug)]
struct CapturingTransport {
    http: Arc<dyn azure_core::HttpClient>,
}

#[async_trait::async_trait]
impl azure_core::Policy for CapturingTransport {
    async fn send(
        &self,
        _ctx: &azure_core::Context,
        request: &mut azure_core::Request,
        _next: &[Arc<dyn azure_core::Policy>],
    ) -> azure_core::PolicyResult {
        if *request.method() == azure_core::Method::Put
            && let Ok(Some(body)) = CALL.try_with(|c| c.put_body.borrow().clone())
        {
            request.set_body(body);
        }
        let response = self.http.execute_request(request).await?;
        let status = u16::from(response.status());
        if status == 429 || status == 503 {
            let after = response
                .headers()
                .get_optional_str(&azure_core::headers::RETRY_AFTER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let _ = CALL.try_with(|c| c.retry_after.set(after));
        }
        Ok(response)
    }
}

/// A fixed token (emulator).
#[derive(Debug)]
struct StaticToken(Secret);

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}

/// Workload identity that re-reads the projected token file whenever it needs
/// a new ARM token, so token rotation by the kubelet is picked up.
#[derive(Debug)]
struct RereadingWorkloadIdentity {
    tenant_id: String,
    client_id: String,
    token_file: std::path::PathBuf,
    authority_host: azure_core::Url,
    cached: Mutex<Option<AccessToken>>,
}

#[async_trait::async_trait]
impl TokenCredential for RereadingWorkloadIdentity {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let fresh_until = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
        if let Some(t) = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && t.expires_on > fresh_until
        {
            return Ok(t.clone());
        }
        let assertion = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                azure_core::Error::full(
                    ErrorKind::Credential,
                    e,
                    format!(
                        "cannot read the federated token file {}",
                        self.token_file.display()
                    ),
                )
            })?;
        let inner = azure_identity::WorkloadIdentityCredential::new(
            azure_core::new_http_client(),
            self.authority_host.clone(),
            self.tenant_id.clone(),
            self.client_id.clone(),
            assertion.trim().to_string(),
        );
        let token = inner.get_token(scopes).await?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

fn token_credential(c: &Credential) -> Result<Arc<dyn TokenCredential>, AzureSetupError> {
    let url = |host: &str| {
        azure_core::Url::parse(host).map_err(|e| AzureSetupError::Credential {
            credential: format!("{c:?}"),
            message: format!("authority host {host:?}: {e}"),
        })
    };
    Ok(match c {
        Credential::StaticToken(t) => Arc::new(StaticToken(Secret::new(t.clone()))),
        Credential::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
            authority_host,
        } => Arc::new(RereadingWorkloadIdentity {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            token_file: token_file.clone(),
            authority_host: url(authority_host)?,
            cached: Mutex::new(None),
        }),
        Credential::ManagedIdentity => Arc::new(
            azure_identity::VirtualMachineManagedIdentityCredential::new(
                azure_identity::TokenCredentialOptions::default(),
            ),
        ),
        Credential::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        } => {
            let host = std::env::var("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|_| "https://login.microsoftonline.com".into());
            Arc::new(azure_identity::ClientSecretCredential::new(
                azure_core::new_http_client(),
                url(&host)?,
                tenant_id.clone(),
                client_id.clone(),
                client_secret.clone(),
            ))
        }
        Credential::AzureCli => Arc::new(azure_identity::AzureCliCredential::new()),
    })
}

/// ACI through ARM.
pub struct AzureContainerGroups {
    client: sdk::Client,
    /// For the calls the SDK does not have (Azure Monitor's metrics): the
    /// same endpoint, credential and policies as `client`.
    endpoint: azure_core::Url,
    credential: Arc<dyn TokenCredential>,
    pipeline: azure_core::Pipeline,
    subscription_id: String,
    resource_group: String,
    timeout: Duration,
}

impl std::fmt::Debug for AzureContainerGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureContainerGroups")
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .finish()
    }
}

impl AzureContainerGroups {
    pub fn new(config: &AzureConfig) -> Result<Self, AzureSetupError> {
        let endpoint =
            azure_core::Url::parse(&config.endpoint).map_err(|e| AzureSetupError::Endpoint {
                endpoint: config.endpoint.clone(),
                message: e.to_string(),
            })?;
        let transport =
            azure_core::TransportOptions::new_custom_policy(Arc::new(CapturingTransport {
                http: azure_core::new_http_client(),
            }));
        let credential = token_credential(&config.credential)?;
        let pipeline = azure_core::Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            azure_core::ClientOptions::default()
                .retry(azure_core::RetryOptions::none())
                .transport(transport.clone()),
            Vec::new(),
            Vec::new(),
        );
        let client = sdk::Client::builder(credential.clone())
            .endpoint(endpoint.clone())
            .scopes(&[ARM_SCOPE])
            .retry(azure_core::RetryOptions::none())
            .transport(transport)
            .build()
            .map_err(|e| AzureSetupError::Endpoint {
                endpoint: config.endpoint.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            endpoint,
            credential,
            pipeline,
            subscription_id: config.subscription_id.clone(),
            resource_group: config.resource_group.clone(),
            timeout: config.timeout,
        })
    }

    /// A GET of `url` with the credential's bearer token through the SDK's
    /// pipeline (its retry policy included), for the calls the SDK's typed
    /// clients do not fit (list pages, Azure Monitor); any status but 200
    /// is an error, so [`Self::call`] maps 429 and 5xx as for SDK calls.
    async fn arm_get(&self, url: azure_core::Url) -> azure_core::Result<azure_core::Response> {
        let token = self.credential.get_token(&[ARM_SCOPE]).await?;
        let mut request = azure_core::Request::new(url, azure_core::Method::Get);
        request.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        request.set_body(azure_core::EMPTY_BODY);
        let response = self
            .pipeline
            .send(&azure_core::Context::default(), &mut request)
            .await?;
        match response.status() {
            azure_core::StatusCode::Ok => Ok(response),
            status => Err(azure_core::Error::from(ErrorKind::HttpResponse {
                status,
                error_code: None,
            })),
        }
    }

    /// Run one SDK call with our timeout, capturing `Retry-After`.
    async fn call<T, F>(&self, what: &str, fut: F) -> Result<T, AciError>
    where
        F: std::future::Future<Output = azure_core::Result<T>>,
    {
        self.call_with_body(what, None, fut).await
    }

    /// [`Self::call`], PUTting `body` instead of the SDK's serialization.
    async fn call_with_body<T, F>(
        &self,
        what: &str,
        body: Option<bytes::Bytes>,
        fut: F,
    ) -> Result<T, AciError>
    where
        F: std::future::Future<Output = azure_core::Result<T>>,
    {
        let state = CallState {
            retry_after: Cell::new(None),
            put_body: RefCell::new(body),
        };
        CALL.scope(state, async {
            match tokio::time::timeout(self.timeout, fut).await {
                Err(_) => Err(AciError::Transient {
                    message: format!("{what}: no answer within {:?}", self.timeout),
                }),
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(classify(&e, CALL.with(|c| c.retry_after.get()))),
            }
        })
        .await
    }
}

/// Map an SDK error to our classification.
fn classify(e: &azure_core::Error, retry_after: Option<Duration>) -> AciError {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let http = e.as_http_error();
            let code = error_code
                .as_deref()
                .or_else(|| http.and_then(|h| h.error_code()))
                .unwrap_or_default();
            let message = http
                .and_then(|h| h.error_message())
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            AciError::from_arm(u16::from(*status), code, &message, retry_after)
        }
        ErrorKind::Io => AciError::Transient {
            message: e.to_string(),
        },
        ErrorKind::Credential => AciError::Auth {
            message: e.to_string(),
        },
        _ => AciError::Protocol {
            message: e.to_string(),
        },
    }
}

fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(a: &A) -> Result<B, AciError> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| AciError::Protocol {
            message: format!("body conversion: {e}"),
        })
}

async fn body_json<T: serde::de::DeserializeOwned>(
    response: azure_core::Response,
) -> Result<T, AciError> {
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| AciError::Transient {
            message: format!("reading the answer: {e}"),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| AciError::Protocol {
        message: format!("unexpected ARM answer: {e}"),
    })
}

impl ContainerGroups for AzureContainerGroups {
    fn create_or_update<'a>(
        &'a self,
        group: &'a ContainerGroup,
    ) -> BoxFuture<'a, Result<ContainerGroup, AciError>> {
        Box::pin(async move {
            let spec = group.spec();
            let exact = serde_json::to_vec(&spec).map_err(|e| AciError::Protocol {
                message: format!("serializing the group: {e}"),
            })?;
            let sdk_body: sdk::models::ContainerGroup = convert(&spec)?;
            let request = self.client.container_groups_client().create_or_update(
                &self.subscription_id,
                &self.resource_group,
                &group.name,
                sdk_body,
            );
            let response = self
                .call_with_body("create_or_update", Some(exact.into()), request.send())
                .await?;
            body_json(response.into_raw_response()).await
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ContainerGroup>, AciError>> {
        Box::pin(async move {
            let request = self.client.container_groups_client().get(
                &self.subscription_id,
                &self.resource_group,
                name,
            );
            match self.call("get", request.send()).await {
                Ok(response) => body_json(response.into_raw_response()).await.map(Some),
                Err(AciError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerGroup>, AciError>> {
        Box::pin(async move {
            // Not the SDK's pager: its typed pages need `workspaceKey` in
            // `diagnostics.logAnalytics`, which ARM never returns (an
            // `x-ms-secret`), so one group with Log Analytics would fail
            // every list. The same GET and `nextLink` paging, read into
            // our own model.
            let mut url = self.endpoint.clone();
            url.set_path(&format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerInstance/containerGroups",
                self.subscription_id, self.resource_group
            ));
            url.query_pairs_mut()
                .append_pair(azure_core::query_param::API_VERSION, SDK_API_VERSION);
            let mut next = Some(url);
            let mut out = Vec::new();
            // Each page is one bounded call; a list of many pages may take
            // several timeouts in total, never unboundedly long.
            while let Some(url) = next.take() {
                let response = self.call("list", self.arm_get(url)).await?;
                let page: ListResult<ContainerGroup> = body_json(response).await?;
                if let Some(link) = page.next_link.as_deref().filter(|l| !l.is_empty()) {
                    next = Some(self.endpoint.join(link).map_err(|e| AciError::Protocol {
                        message: format!("list nextLink {link:?}: {e}"),
                    })?);
                }
                out.extend(
                    page.value.into_iter().filter(|g| {
                        g.tags.get(TAG_CLUSTER).map(String::as_str) == Some(cluster_id)
                    }),
                );
            }
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AciError>> {
        Box::pin(async move {
            let request = self.client.container_groups_client().delete(
                &self.subscription_id,
                &self.resource_group,
                name,
            );
            // Judged by status only: 200/202/204 are success, 404 is "already gone".
            match self.call("delete", request.send()).await {
                Ok(_) | Err(AciError::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn logs<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<String, AciError>> {
        Box::pin(async move {
            let mut request = self.client.containers_client().list_logs(
                &self.subscription_id,
                &self.resource_group,
                name,
                container,
            );
            if let Some(t) = options.tail {
                request = request.tail(i32::try_from(t).unwrap_or(i32::MAX));
            }
            if options.timestamps {
                request = request.timestamps(true);
            }
            let response = self.call("logs", request.send()).await?;
            let logs: Logs = body_json(response.into_raw_response()).await?;
            Ok(logs.content)
        })
    }

    fn metrics<'a>(
        &'a self,
        name: &'a str,
        span: MetricsSpan,
    ) -> BoxFuture<'a, Result<GroupMetrics, AciError>> {
        Box::pin(async move {
            let mut url = self.endpoint.clone();
            url.set_path(&monitor::metrics_path(
                &self.subscription_id,
                &self.resource_group,
                name,
            ));
            url.query_pairs_mut()
                .extend_pairs(monitor::query_pairs(span));
            let response = self.call("metrics", self.arm_get(url)).await?;
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AciError::Transient {
                    message: format!("reading the metrics answer: {e}"),
                })?;
            monitor::parse(&bytes)
        })
    }

    fn usage<'a>(&'a self, location: &'a str) -> BoxFuture<'a, Result<Usage, AciError>> {
        Box::pin(async move {
            let request = self
                .client
                .location_client()
                .list_usage(&self.subscription_id, location);
            let response = self.call("usage", request.send()).await?;
            let list: ListResult<UsageEntry> = body_json(response.into_raw_response()).await?;
            Usage::from_entries(&list.value)
        })
    }

    fn exec<'a>(
        &'a self,
        name: &'a str,
        container: &'a str,
        command: &'a str,
        terminal: TerminalSize,
    ) -> BoxFuture<'a, Result<ExecSession, AciError>> {
        Box::pin(async move {
            let request = sdk::models::ContainerExecRequest {
                command: Some(command.to_string()),
                terminal_size: Some(sdk::models::container_exec_request::TerminalSize {
                    rows: Some(i32::from(terminal.rows)),
                    cols: Some(i32::from(terminal.cols)),
                }),
            };
            let request = self.client.containers_client().execute_command(
                &self.subscription_id,
                &self.resource_group,
                name,
                container,
                request,
            );
            let response = self.call("exec", request.send()).await?;
            let answer: ExecResponse = body_json(response.into_raw_response()).await?;
            Ok(ExecSession {
                web_socket_uri: answer.web_socket_uri,
                password: answer.password,
            })
        })
    }
}
