//! A stand-in admission webhook for tests of the test API server's webhook
//! calls: HTTPS on 127.0.0.1 with a certificate from its own CA, answering
//! every AdmissionReview with what the test's closure returns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

type Responder = Arc<dyn Fn(&Value) -> Value + Send + Sync>;
type Received = Arc<Mutex<Vec<(String, Value)>>>;
type HookState = (Received, Responder, Duration);

/// A running stand-in webhook. Dropping it stops it.
pub struct StandInWebhook {
    /// `https://127.0.0.1:PORT/hook`
    pub url: String,
    /// PEM of the CA that signed its certificate.
    pub ca_pem: String,
    /// Every review received, with the query string it came with.
    received: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StandInWebhook {
    /// Answer each review with `respond(review)` (the whole AdmissionReview
    /// to send back), after `delay`.
    pub async fn start(
        delay: Duration,
        respond: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        let serving = spillway::admission::tls::generate(&["127.0.0.1".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let received = Arc::new(Mutex::new(Vec::new()));
        let respond: Responder = Arc::new(respond);
        let state = (received.clone(), respond, delay);
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State((received, respond, delay)): axum::extract::State<
                        HookState,
                    >,
                     uri: axum::http::Uri,
                     axum::Json(review): axum::Json<Value>| async move {
                        received
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((uri.query().unwrap_or_default().to_string(), review.clone()));
                        tokio::time::sleep(delay).await;
                        axum::Json(respond(&review))
                    },
                ),
            )
            .with_state(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(spillway::admission::tls::serve_tls(
            listener,
            app,
            serving.config,
            async move {
                let _ = rx.await;
            },
        ));
        StandInWebhook {
            url: format!("https://127.0.0.1:{port}/hook"),
            ca_pem: serving.ca_pem,
            received,
            stop: Some(tx),
        }
    }

    /// Allow every pod with this JSON Patch.
    pub async fn patching(ops: Value) -> Self {
        Self::start(Duration::ZERO, move |review| allow(review, Some(&ops))).await
    }

    /// The reviews received so far (query string, review).
    pub fn received(&self) -> Vec<(String, Value)> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// base64 of the CA PEM, for `clientConfig.caBundle`.
    pub fn ca_bundle(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

impl Drop for StandInWebhook {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// An AdmissionReview answer that allows, with an optional JSON Patch.
pub fn allow(review: &Value, patch: Option<&Value>) -> Value {
    use base64::Engine as _;
    let mut response = json!({"uid": review["request"]["uid"], "allowed": true});
    if let Some(ops) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(ops.to_string()));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// A MutatingWebhookConfiguration with one webhook `NAME` calling `url`,
/// trusting `ca_bundle`; `edit` changes the webhook before it is returned.
pub fn configuration(
    name: &str,
    url: &str,
    ca_bundle: &str,
    failure_policy: &str,
    edit: impl FnOnce(&mut Value),
) -> Value {
    let mut hook = json!({
        "name": format!("{name}.test.example.com"),
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": 5,
        "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    });
    edit(&mut hook);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    })
}
