//! The virtual node's kubelet endpoint checks its callers as the kubelet
//! does: `spillway run` (TLS, self-signed) as the `spillway`
//! ServiceAccount under deploy/'s RBAC, its provider on an ACI emulator,
//! and clients that are the API server (its kubelet client certificate),
//! nobody, a stranger with another CA's certificate, and ServiceAccounts
//! with and without `nodes/proxy`. The test API server answers the
//! TokenReviews and SubjectAccessReviews from its own tokens and RBAC, and
//! every call spillway makes to it must be allowed.
//!
//! Also: the log read budget (a flood is refused, status sync goes on),
//! and the accept loop's bounds (stalled handshakes and headers dropped,
//! connections capped).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle, Faults};
use support::{ClientCertificate, PodDeletion, TestApiServer, poll_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SA_NS: &str = "spillway-system";
const SA: &str = "spillway";
const NODE: &str = "spillway-aci";
const NS: &str = "web";
const WAIT: Duration = Duration::from_secs(30);
const LOGS: &str = "/containerLogs/web/api/app?tailLines=5";

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client presenting `cert` (or none).
fn tls_client(cert: Option<&ClientCertificate>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::apiserver::AnyServerCert(ring())));
    Arc::new(match cert {
        Some(c) => {
            let (chain, key) = c.rustls_pair();
            builder
                .with_client_auth_cert(chain, key)
                .unwrap_or_else(|e| panic!("{e}"))
        }
        None => builder.with_no_client_auth(),
    })
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One `GET path` over TLS to 127.0.0.1:`port`; Err when the connection
/// fails (handshake included).
async fn call(
    port: u16,
    cert: Option<&ClientCertificate>,
    token: Option<&str>,
    path: &str,
) -> Result<Answer, String> {
    let connector = tokio_rustls::TlsConnector::from(tls_client(cert));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// A client certificate for `cn` from a CA the cluster does not know.
fn foreign_certificate(cn: &str, org: &str) -> ClientCertificate {
    let mut ca =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let ca = ca.self_signed(&ca_key).unwrap_or_else(|e| panic!("{e}"));
    let mut p =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = p
        .signed_by(&key, &ca, &ca_key)
        .unwrap_or_else(|e| panic!("{e}"));
    ClientCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

#[derive(clap::Parser)]
struct RunArgs {
    #[command(flatten)]
    run: spillway::run::RunCommand,
}

/// `spillway run` with its provider on an emulator, as the `spillway`
/// ServiceAccount under deploy/overlays/aks's RBAC, kube-root-ca.crt
/// published in its namespace, and the pod `web/api` running on the
/// virtual node.
struct World {
    srv: TestApiServer,
    emu: EmulatorHandle,
    port: u16,
    run: support::InProcessRun,
}

impl World {
    async fn start(extra: &[&str], before: impl FnOnce(&TestApiServer)) -> Self {
        use clap::Parser as _;
        let srv = TestApiServer::builder()
            .pod_deletion(PodDeletion::Kubelet)
            .start()
            .await;
        srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
        // The workload namespace: the shipped webhook's namespaceSelector
        // needs it on every pod create, as in kube-apiserver.
        srv.apply_manifests("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
        srv.publish_root_ca(SA_NS);
        before(&srv);
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .unwrap_or_else(|e| panic!("emulator: {e}"));
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubelet-auth-policies");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut argv = vec![
            "spillway",
            "--policies",
            dir.to_str().unwrap_or_default(),
            "--identity",
            "r1",
            "--lease-seconds",
            "3",
            "--aci",
            "emulator",
            "--aci-emulator-url",
            &emu.url,
            "--kubelet-listen",
            "127.0.0.1:0",
            "--node-ip",
            "127.0.0.1",
            "--kubelet-tls-self-signed",
            "--aci-sync-secs",
            "1",
        ];
        argv.extend_from_slice(extra);
        let args = RunArgs::parse_from(argv);
        let run = support::InProcessRun::start_as(&srv, SA_NS, SA, args.run, &dir).await;
        let port = || {
            srv.get::<Node>("", NODE)
                .and_then(|n| n.status)
                .and_then(|s| s.daemon_endpoints)
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port as u16)
        };
        assert!(
            poll_until(WAIT, || port().is_some()).await,
            "node registered; denials: {:?}",
            srv.auth_denials()
        );
        let port = port().unwrap_or_default();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api", "namespace": NS},
            "spec": {
                "nodeName": NODE,
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                "containers": [{
                    "name": "app", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
                }]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Api::<Pod>::namespaced(srv.client(), NS)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod: {e}"));
        let running = || {
            srv.get::<Pod>(NS, "api")
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .as_deref()
                == Some("Running")
        };
        assert!(
            poll_until(WAIT, running).await,
            "pod Running; denials: {:?}",
            srv.auth_denials()
        );
        World {
            srv,
            emu,
            port,
            run,
        }
    }

    async fn stop(self) {
        let done = self.run.stop().await;
        assert!(matches!(done, Some(Ok(()))), "{done:?}");
    }

    /// Wait until the API server's kubelet client certificate is accepted
    /// (`/healthz`, which reads nothing from ACI): the endpoint reads
    /// kube-root-ca.crt in the background at start-up.
    async fn wait_for_the_cluster_ca(&self) {
        let cert = self.srv.kubelet_client_certificate();
        let mut last = None;
        for _ in 0..100 {
            let a = call(self.port, Some(&cert), None, "/healthz")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if a.status == 200 {
                return;
            }
            last = Some(a);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the API server's certificate was not accepted: {last:?}; denials: {:?}",
            self.srv.auth_denials()
        );
    }

    /// The logs as the API server reads them.
    async fn logs_as_the_api_server(&self) -> Answer {
        self.wait_for_the_cluster_ca().await;
        let cert = self.srv.kubelet_client_certificate();
        let a = call(self.port, Some(&cert), None, LOGS)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{a:?}");
        a
    }
}

fn grant_node_proxy(srv: &TestApiServer) {
    srv.apply_manifests(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy-reader}
rules:
  - apiGroups: [""]
    resources: ["nodes/proxy"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: log-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects:
  - {kind: ServiceAccount, name: log-reader, namespace: web}
---
# A RoleBinding cannot grant a cluster-scoped resource such as nodes.
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: namespaced-reader, namespace: web}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects:
  - {kind: ServiceAccount, name: namespaced-reader, namespace: web}
"#,
    );
}

fn spillway_used(srv: &TestApiServer, verb: &str, resource: &str) -> Vec<String> {
    let user = format!("system:serviceaccount:{SA_NS}:{SA}");
    srv.exercised_rules()
        .into_iter()
        .filter(|r| r.user == user && r.verb == verb && r.resource == resource)
        .map(|r| r.role.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_api_server_and_callers_rbac_allows_read_logs() {
    let w = World::start(&[], grant_node_proxy).await;
    let srv = &w.srv;

    // The API server's kubelet client certificate (kubeadm: CN
    // kube-apiserver-kubelet-client, O system:masters).
    let ok = w.logs_as_the_api_server().await;
    assert!(ok.body.contains("nginx:1.27"), "{ok:?}");
    let cert = srv.kubelet_client_certificate();
    let health = call(w.port, Some(&cert), None, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    // Nobody: no certificate, no token. The kubelet serves /healthz on this
    // port only to callers authorized for nodes/healthz or nodes/proxy too.
    for path in [LOGS, "/healthz", "/nothing-here"] {
        let a = call(w.port, None, None, path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.status, a.body.as_str()), (401, "Unauthorized"), "{path}");
    }
    // A certificate from another CA: the handshake succeeds, the request
    // authenticates no one (the kubelet answers 401 too).
    let stranger = foreign_certificate("kube-apiserver-kubelet-client", "system:masters");
    let a = call(w.port, Some(&stranger), None, LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((a.status, a.body.as_str()), (401, "Unauthorized"));
    // A token the API server never issued.
    let a = call(w.port, None, Some("made-up"), LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 401);

    // A ServiceAccount without nodes/proxy: the kubelet's 403.
    let nosy = srv.token_for_service_account(NS, "nosy");
    let a = call(w.port, None, Some(&nosy), LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:web:nosy, verb=get, resource=nodes, subresource(s)=[proxy])"
        )
    );
    // `kubectl exec` is `nodes/proxy` too: refused before any upgrade.
    let a = call(
        w.port,
        None,
        Some(&nosy),
        "/exec/web/api/app?command=/bin/sh&input=1&output=1&tty=1",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:web:nosy, verb=get, resource=nodes, subresource(s)=[proxy])"
        )
    );
    let a = call(w.port, None, Some(&nosy), "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:web:nosy, verb=get, resource=nodes, subresource(s)=[healthz proxy])"
        )
    );
    // Bound through a RoleBinding: nodes are cluster-scoped, so still no.
    let namespaced = srv.token_for_service_account(NS, "namespaced-reader");
    let a = call(w.port, None, Some(&namespaced), LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 403, "{a:?}");
    // A cluster CA certificate for a user without rights.
    let ops = srv.client_certificate("ops", &["ops-team"]);
    let a = call(w.port, Some(&ops), None, LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            "Forbidden (user=ops, verb=get, resource=nodes, subresource(s)=[proxy])"
        )
    );

    // A ClusterRoleBinding to nodes/proxy get: the logs.
    let reader = srv.token_for_service_account(NS, "log-reader");
    let a = call(w.port, None, Some(&reader), LOGS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("nginx:1.27"), "{a:?}");

    // spillway made every review and read as its ServiceAccount, allowed by
    // deploy/'s rules.
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    assert_eq!(
        spillway_used(srv, "create", "tokenreviews"),
        vec!["ClusterRole spillway"]
    );
    assert_eq!(
        spillway_used(srv, "create", "subjectaccessreviews"),
        vec!["ClusterRole spillway"]
    );
    assert!(
        !spillway_used(srv, "get", "configmaps").is_empty(),
        "kube-root-ca.crt read"
    );
    w.stop().await;
}

/// With the ClusterRole's cluster-wide ConfigMap/Secret `get` narrowed
/// away (deploy/README.md "RBAC" says how), the Role's rule for
/// `kube-root-ca.crt` alone lets spillway read the cluster CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_needs_only_the_roles_named_rule() {
    let narrow = |srv: &TestApiServer| {
        use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
        srv.modify::<ClusterRole>("", "spillway", |r| {
            if let Some(rules) = r.rules.as_mut() {
                rules.retain(|rule| {
                    rule.resources.as_deref()
                        != Some(&["configmaps".to_string(), "secrets".to_string()][..])
                });
            }
        });
        // The reservations ConfigMap read moves to the Role, as the README says.
        srv.modify::<Role>(SA_NS, "spillway", |r| {
            for rule in r.rules.iter_mut().flatten() {
                if rule.resource_names.as_deref()
                    == Some(&["spillway-burst-reservations".to_string()][..])
                {
                    rule.verbs.push("get".into());
                }
            }
        });
    };
    let w = World::start(&[], narrow).await;
    w.logs_as_the_api_server().await;
    assert_eq!(w.srv.auth_denials(), Vec::<String>::new());
    let ca_rule_unused = w
        .srv
        .unexercised_permissions(SA_NS, SA)
        .into_iter()
        .any(|g| g.resource_names == ["kube-root-ca.crt"]);
    assert!(!ca_rule_unused, "the Role's kube-root-ca.crt rule was used");
    assert!(
        !spillway_used(&w.srv, "get", "configmaps").contains(&"ClusterRole spillway".to_string())
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_spends_its_own_budget_and_status_sync_goes_on() {
    // 0.05 requests/s: 0.1 ARM reads/s, 6 at once; no waiting in line.
    let w = World::start(
        &[
            "--kubelet-log-qps",
            "0.05",
            "--kubelet-log-burst",
            "3",
            "--kubelet-log-max-wait",
            "0",
        ],
        |_| {},
    )
    .await;
    let count = |op: &str| {
        w.emu
            .state
            .counters()
            .requests
            .get(op)
            .copied()
            .unwrap_or(0)
    };
    w.wait_for_the_cluster_ca().await;
    let (logs_before, gets_before) = (count("logs"), count("get"));
    let cert = w.srv.kubelet_client_certificate();
    // Twenty at once share one group read and one log read.
    let flood =
        futures::future::join_all((0..20).map(|_| call(w.port, Some(&cert), None, LOGS))).await;
    for a in &flood {
        let a = a.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert_eq!(count("logs") - logs_before, 1, "one ACI log read for all");
    assert_eq!(count("get") - gets_before, 1, "one group read for all");
    // Spaced past the 1 s a log read is shared, each costs a read (the
    // group's is shared for 10 s): the 4 reads left, then 429.
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let a = call(w.port, Some(&cert), None, LOGS)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        *statuses.entry(a.status).or_default() += 1;
        if a.status == 429 {
            assert!(
                a.body.starts_with("log read budget spent: this node answers at most 0.05/s container log requests from ACI (3 at once; --kubelet-log-qps, --kubelet-log-burst) and this one's turn would not come within 0s (--kubelet-log-max-wait); retry in "),
                "{a:?}"
            );
            assert!(
                a.head.to_ascii_lowercase().contains("\r\nretry-after: "),
                "{a:?}"
            );
        }
    }
    assert_eq!(statuses, BTreeMap::from([(200, 4), (429, 1)]));
    assert_eq!(
        count("logs") - logs_before,
        5,
        "ACI log reads: the burst only"
    );

    // Status sync keeps reading ACI on its own budget: a group deleted
    // behind spillway's back fails its pod within a few syncs.
    let lists = count("list");
    assert!(
        poll_until(Duration::from_secs(10), || count("list") >= lists + 2).await,
        "status sync lists on"
    );
    w.emu
        .state
        .set_faults(Faults {
            vanish: vec![spillway::aci::translate::group_name_in("local", NS, "api")],
            ..Faults::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = || {
        w.srv
            .get::<Pod>(NS, "api")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Failed")
    };
    assert!(poll_until(WAIT, failed).await, "pod Failed");
    assert_eq!(w.srv.auth_denials(), Vec::<String>::new());
    w.stop().await;
}

/// The kubelet endpoint built from the library with short bounds: checked
/// callers (the API server's reviews), TLS, a header and handshake timeout
/// and a connection cap.
async fn bounded_endpoint(
    srv: &TestApiServer,
    limits: spillway::kubelet::ServeLimits,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    use spillway::kubelet::auth::{AuthConfig, ClientCa, KubeReviews, NodeAuth};
    use spillway::kubelet::logs::{LogBudget, LogReader};
    let ca = ClientCa::from_pem(&srv.cluster_ca_pem()).unwrap_or_else(|e| panic!("{e}"));
    let auth = NodeAuth::new(
        NODE,
        ca,
        Arc::new(KubeReviews::new(srv.client(), Duration::from_secs(10))),
        AuthConfig::default(),
    );
    // /healthz only: ACI is never called.
    let cfg = spillway::aci::azure::AzureConfig::for_emulator("http://127.0.0.1:9", "t", "s", "rg");
    let aci = Arc::new(
        spillway::aci::azure::AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")),
    );
    let app = spillway::kubelet::router(
        Arc::new(LogReader::new(aci, "local", LogBudget::default())),
        spillway::kubelet::Access::Checked(Arc::new(auth)),
    );
    let tls = spillway::kubelet::self_signed_tls_config("127.0.0.1", NODE)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(spillway::kubelet::serve_tls(
        listener,
        app,
        tls,
        limits,
        async {
            let _ = rx.await;
        },
    ));
    (port, tx)
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut buf))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_headers_are_dropped() {
    let srv = TestApiServer::start().await;
    let limits = spillway::kubelet::ServeLimits {
        handshake_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        max_connections: 8,
    };
    let (port, _stop) = bounded_endpoint(&srv, limits).await;
    let cert = srv.kubelet_client_certificate();
    let ok = call(port, Some(&cert), None, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.status, 200, "{ok:?}");

    // A client that connects and never starts the handshake.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a connection without a handshake stays open"
    );

    // A client that shakes hands and never finishes its headers.
    let connector = tokio_rustls::TlsConnector::from(tls_client(Some(&cert)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name =
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let mut slow = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "half a request kept the connection open");
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "answered a request that never ended"
    );
    // The server is still up.
    let again = call(port, Some(&cert), None, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let srv = TestApiServer::start().await;
    let limits = spillway::kubelet::ServeLimits {
        handshake_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        max_connections: 2,
    };
    let (port, _stop) = bounded_endpoint(&srv, limits).await;
    let cert = srv.kubelet_client_certificate();
    // Two idle connections hold both slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = {
        let cert = cert.clone();
        tokio::spawn(async move { call(port, Some(&cert), None, "/healthz").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    idle.pop();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| panic!("not served once a slot freed"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// Plain HTTP with `--kubelet-auth`: bearer tokens only.
#[tokio::test]
async fn plain_http_with_auth_takes_bearer_tokens() {
    use spillway::kubelet::auth::{AuthConfig, ClientCa, KubeReviews, NodeAuth};
    use spillway::kubelet::logs::{LogBudget, LogReader};
    use tower::ServiceExt as _;
    let srv = TestApiServer::start().await;
    let auth = NodeAuth::new(
        NODE,
        ClientCa::empty(),
        Arc::new(KubeReviews::new(srv.client(), Duration::from_secs(10))),
        AuthConfig::default(),
    );
    let cfg = spillway::aci::azure::AzureConfig::for_emulator("http://127.0.0.1:9", "t", "s", "rg");
    let aci = Arc::new(
        spillway::aci::azure::AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")),
    );
    let app = spillway::kubelet::router(
        Arc::new(LogReader::new(aci, "local", LogBudget::default())),
        spillway::kubelet::Access::Checked(Arc::new(auth)),
    );
    let get = |token: Option<String>| {
        let mut b = axum::http::Request::builder().uri("/healthz");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let r = app
        .clone()
        .oneshot(get(Some(srv.admin_token())))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let r = app
        .oneshot(get(None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);
}

/// The review endpoints answer as kube-apiserver does: from the server's
/// own tokens and RBAC, for callers allowed to create reviews.
#[tokio::test]
async fn the_api_server_reviews_tokens_and_access() {
    let srv = TestApiServer::start().await;
    grant_node_proxy(&srv);
    let admin = srv.client();
    let post = |client: kube::Client, path: &'static str, body: serde_json::Value| async move {
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        client.request::<serde_json::Value>(req).await
    };
    const TR: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
    const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

    let token = srv.token_for_service_account(NS, "log-reader");
    let review = |t: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
    let r = post(admin.clone(), TR, review(&token))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:web:log-reader"
    );
    assert_eq!(
        r["status"]["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:web",
            "system:authenticated"
        ])
    );
    assert_eq!(
        r["status"]["audiences"],
        json!(["https://kubernetes.default.svc"])
    );
    let r = post(admin.clone(), TR, review("made-up"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(r["status"]["authenticated"], true, "{r}");
    let other_audience = json!({"spec": {"token": token, "audiences": ["vault"]}});
    let r = post(admin.clone(), TR, other_audience)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(r["status"]["authenticated"], true, "{r}");
    let e = post(admin.clone(), TR, review("")).await.err();
    assert!(
        matches!(&e, Some(kube::Error::Api(s)) if s.code == 400 && s.message == "token is required for TokenReview in authentication"),
        "{e:?}"
    );

    let access = |user: &str, groups: serde_json::Value, sub: &str| {
        json!({"spec": {"user": user, "groups": groups, "resourceAttributes": {
            "verb": "get", "version": "v1", "resource": "nodes", "subresource": sub, "name": NODE}}})
    };
    let sa_groups = json!(["system:serviceaccounts", "system:authenticated"]);
    let allowed = |r: &serde_json::Value| r["status"]["allowed"] == true;
    let r = post(
        admin.clone(),
        SAR,
        access(
            "system:serviceaccount:web:log-reader",
            sa_groups.clone(),
            "proxy",
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(allowed(&r), "{r}");
    for (user, sub) in [
        ("system:serviceaccount:web:log-reader", "log"),
        ("system:serviceaccount:web:namespaced-reader", "proxy"),
        ("system:serviceaccount:web:nosy", "proxy"),
    ] {
        let r = post(admin.clone(), SAR, access(user, sa_groups.clone(), sub))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!allowed(&r), "{user} {sub}: {r}");
    }
    let r = post(
        admin.clone(),
        SAR,
        access(
            "kube-apiserver-kubelet-client",
            json!(["system:masters"]),
            "proxy",
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(allowed(&r), "system:masters: {r}");
    let e = post(
        admin.clone(),
        SAR,
        json!({"spec": {"resourceAttributes": {"verb": "get"}}}),
    )
    .await
    .err();
    assert!(
        matches!(&e, Some(kube::Error::Api(s)) if s.code == 422 && s.message.contains("at least one of user or group must be specified")),
        "{e:?}"
    );

    // Only for callers RBAC lets create reviews; never listed or stored.
    let e = post(
        srv.client_as(NS, "nosy"),
        SAR,
        access("x", json!([]), "proxy"),
    )
    .await
    .err();
    assert!(
        matches!(&e, Some(kube::Error::Api(s)) if s.code == 403
            && s.message == "subjectaccessreviews.authorization.k8s.io is forbidden: User \"system:serviceaccount:web:nosy\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"),
        "{e:?}"
    );
    let list = admin
        .request::<serde_json::Value>(
            axum::http::Request::get(SAR)
                .body(Vec::new())
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .err();
    assert!(
        matches!(&list, Some(kube::Error::Api(s)) if s.code == 405),
        "{list:?}"
    );
}
