//! The webhook's serving certificate and how the API server learns to trust it.
//!
//! At start-up each replica makes a CA and a serving certificate signed by it
//! (rcgen, in memory; the keys never leave the process) for the Service's
//! DNS names. The API server verifies the webhook against the
//! MutatingWebhookConfiguration's `clientConfig.caBundle`, so the replica
//! adds its CA there ([`publish_ca`]): only to the one configuration named by
//! `--webhook-configuration` (RBAC `resourceNames`), and *adds* rather than
//! replaces, because the Service sends each call to any replica and every
//! replica has its own CA. The bundle keeps the newest [`MAX_CAS`]
//! certificates (a restarted replica's old CA is useless without its key and
//! falls off); each replica re-checks every [`REPUBLISH_EVERY`] so its CA is
//! back at once if another replica's trimming or a re-apply removed it.
//! The write is a merge patch that carries `metadata.resourceVersion`, so two
//! replicas publishing at once conflict (409) and re-read instead of one
//! erasing the other's CA.

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use std::sync::Arc;
use std::time::Duration;

/// CA certificates kept in a caBundle (two replicas, each restarted a few times).
pub const MAX_CAS: usize = 6;
/// How often a replica re-checks that its CA is in the bundle.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("webhook TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("webhook certificate files: {path}: {message}")]
    File { path: String, message: String },
}

/// A serving certificate and the CA that signed it.
pub struct ServingCert {
    pub config: Arc<rustls::ServerConfig>,
    /// PEM of the CA, what goes into `caBundle`.
    pub ca_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

/// The names the API server dials: `SERVICE.NAMESPACE.svc` (what it uses for
/// a `clientConfig.service`) and the longer forms.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

/// A new CA and a serving certificate for `hosts` (DNS names or IP
/// addresses) signed by it, valid for ten years from an hour ago.
pub fn generate(hosts: &[String]) -> Result<ServingCert, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "spillway-webhook-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "spillway-webhook");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let chain = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(ServingCert {
        config: crate::tls::server_config(chain, key)?,
        ca_pem: ca.pem(),
    })
}

/// Serve `app` over TLS on `listener` until `stop` resolves
/// ([`crate::tls::serve_tls`], the accept loop the kubelet endpoint uses
/// too). A client that fails the handshake (e.g. an API server with a stale
/// caBundle) only loses its own connection; handshakes and request headers
/// must arrive within 10 s; at most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::tls::ServeLimits {
        max_connections: MAX_CONNECTIONS,
        ..crate::tls::ServeLimits::default()
    };
    crate::tls::serve_tls(listener, app, tls, limits, "webhook", stop).await
}

/// Connections the webhook serves at once (the API server opens more as its
/// concurrent pod creations grow; a call that waits past the webhook's
/// `timeoutSeconds` is ignored, `failurePolicy: Ignore`).
pub const MAX_CONNECTIONS: usize = 1024;

/// Split a PEM bundle into its certificates (each `-----BEGIN CERTIFICATE-----`
/// block, normalised); other text is dropped.
pub fn pem_certificates(bundle: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let block = &after[..end + END.len()];
        out.push(format!("{}\n", block.trim()));
        rest = &after[end + END.len()..];
    }
    out
}

/// The caBundle (base64 of PEM) that trusts `ca_pem` as well as the newest
/// of the CAs `current` trusts, at most [`MAX_CAS`]; None when `current`
/// already has it.
pub fn bundle_with(current: Option<&str>, ca_pem: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let existing = current
        .and_then(|c| b64.decode(c).ok())
        .map(|pem| pem_certificates(&String::from_utf8_lossy(&pem)))
        .unwrap_or_default();
    let mine = pem_certificates(ca_pem);
    if mine.is_empty() || mine.iter().all(|m| existing.contains(m)) {
        return None;
    }
    let mut certs: Vec<String> = existing.into_iter().filter(|c| !mine.contains(c)).collect();
    certs.extend(mine);
    let drop = certs.len().saturating_sub(MAX_CAS);
    Some(b64.encode(certs[drop..].concat()))
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MutatingWebhookConfiguration {0:?} not found")]
    NotFound(String),
    #[error("MutatingWebhookConfiguration {0:?} has no webhooks")]
    NoWebhooks(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// Make every webhook of configuration `name` trust `ca_pem`. Returns
/// whether it wrote. Conflicting writes (another replica) are re-read, a
/// few times.
pub async fn publish_ca(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, PublishError> {
    // Untyped, so fields newer than k8s-openapi's types survive the rewrite
    // of the list.
    let resource = kube::api::ApiResource::erase::<MutatingWebhookConfiguration>(&());
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &resource);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(config) = api.get_opt(name).await? else {
            return Err(PublishError::NotFound(name.to_string()));
        };
        let mut webhooks = config
            .data
            .get("webhooks")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let Some(list) = webhooks.as_array_mut().filter(|l| !l.is_empty()) else {
            return Err(PublishError::NoWebhooks(name.to_string()));
        };
        let mut changed = false;
        for hook in list.iter_mut() {
            let current = hook
                .pointer("/clientConfig/caBundle")
                .and_then(serde_json::Value::as_str)
                .map(String::from);
            if let Some(bundle) = bundle_with(current.as_deref(), ca_pem) {
                hook["clientConfig"]["caBundle"] = serde_json::Value::String(bundle);
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        // A merge patch replaces the whole list; the resourceVersion makes it
        // conditional on the list read above.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": config.metadata.resource_version},
            "webhooks": webhooks,
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Keep this replica's CA in configuration `name` until the task is dropped.
pub async fn keep_published(client: kube::Client, name: String, ca_pem: String) {
    let mut warned = false;
    loop {
        match publish_ca(&client, &name, &ca_pem).await {
            Ok(true) => {
                tracing::info!(configuration = %name, "webhook CA published in the MutatingWebhookConfiguration's caBundle");
                warned = false;
            }
            Ok(false) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(configuration = %name, error = %e, "cannot publish the webhook CA; the API server cannot call this replica's webhook (failurePolicy Ignore: pods are created without spillway's scheduler name)");
                warned = true;
            }
            Err(e) => {
                tracing::debug!(configuration = %name, error = %e, "cannot publish the webhook CA")
            }
        }
        tokio::time::sleep(REPUBLISH_EVERY).await;
    }
}

/// A serving configuration from PEM files (`--webhook-tls-cert`/`--webhook-tls-key`,
/// e.g. a cert-manager Secret); the CA is then published by whoever issued them.
pub fn from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = crate::tls::read_pem_pair(cert, key).map_err(|e| TlsError::File {
        path: e.path,
        message: e.message,
    })?;
    Ok(crate::tls::server_config(chain, key)?)
}
