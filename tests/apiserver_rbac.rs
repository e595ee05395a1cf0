//! Authentication and RBAC in the test API server, proved through kube-rs:
//! bearer tokens, each kind of rule (verbs, apiGroups, resources,
//! subresources, resourceNames, namespaced vs cluster bindings), the real
//! 403 text, TokenRequest, the manifest loader and the rule recorder.

mod support;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{RoleId, TestApiServer};

const USER: &str = "system:serviceaccount:spillway-system:spillway";

/// (code, reason, message) of an API error.
fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn denied(message: &str) -> (u16, String, String) {
    (403, "Forbidden".to_string(), message.to_string())
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("fixture")
}

fn pod(ns: &str, name: &str) -> Pod {
    obj(json!({"metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "pause"}]}}))
}

fn config_map(ns: &str, name: &str) -> ConfigMap {
    obj(json!({"metadata": {"name": name, "namespace": ns}}))
}

/// A server with pods and ConfigMaps in `web` and `other`, and the roles
/// under test bound to spillway-system/spillway.
async fn server(rbac_yaml: &str) -> TestApiServer {
    let srv = TestApiServer::start().await;
    for ns in ["web", "other", "spillway-system"] {
        srv.insert(&pod(ns, "p"));
        srv.insert(&config_map(ns, "allowed"));
        srv.insert(&config_map(ns, "denied"));
    }
    let skipped = srv.apply_manifests(rbac_yaml);
    assert!(skipped.is_empty(), "{skipped:?}");
    srv
}

fn cluster_role(rules: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: test}}
rules:
{rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: test}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: test}}
subjects:
  - {{kind: ServiceAccount, name: spillway, namespace: spillway-system}}
"
    )
}

fn role_in(ns: &str, rules: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: test, namespace: {ns}}}
rules:
{rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: test, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: test}}
subjects:
  - {{kind: ServiceAccount, name: spillway, namespace: spillway-system}}
"
    )
}

#[tokio::test]
async fn tokens_authenticate_and_no_token_is_admin_unless_required() {
    let srv = server(&cluster_role(
        "  - {apiGroups: [\"\"], resources: [pods], verbs: [list]}",
    ))
    .await;
    // No token: today's unrestricted admin.
    let secrets: Api<Secret> = Api::all(srv.client());
    secrets.list(&ListParams::default()).await.expect("admin");
    // A token: RBAC applies.
    let as_sa: Api<Secret> = Api::all(srv.client_as("spillway-system", "spillway"));
    assert_eq!(
        status(as_sa.list(&ListParams::default()).await),
        denied(&format!(
            r#"secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" at the cluster scope"#
        ))
    );
    // An unknown token: 401.
    let bogus: Api<Pod> = Api::all(srv.client_with_token("not-a-token"));
    assert_eq!(
        status(bogus.list(&ListParams::default()).await),
        (401, "Unauthorized".into(), "Unauthorized".into())
    );
    // require_auth: no token is 401 too.
    let strict = TestApiServer::builder().require_auth(true).start().await;
    let anon: Api<Pod> = Api::all(strict.client());
    assert_eq!(status(anon.list(&ListParams::default()).await).0, 401);
}

/// `system:masters` (the admin token) is allowed everything without a
/// single RBAC object, as upstream's privileged-group authorizer, even with
/// `require_auth`; it exercises no rule and is never denied.
#[tokio::test]
async fn the_admin_is_allowed_everything_before_rbac() {
    let srv = TestApiServer::builder().require_auth(true).start().await;
    let admin = srv.admin_client();
    Api::<Secret>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("list secrets cluster-wide");
    Api::<Pod>::namespaced(admin.clone(), "web")
        .create(&PostParams::default(), &pod("web", "p"))
        .await
        .expect("create a pod");
    Api::<Pod>::namespaced(admin, "web")
        .delete("p", &Default::default())
        .await
        .expect("delete it");
    assert_eq!(srv.auth_denials(), Vec::<String>::new());
    assert!(
        srv.exercised_rules().is_empty(),
        "{:?}",
        srv.exercised_rules()
    );
    // Still a token: a forged one is 401.
    let forged: Api<Pod> = Api::all(srv.client_with_token("kubernetes-admin"));
    assert_eq!(status(forged.list(&ListParams::default()).await).0, 401);
}

#[tokio::test]
async fn verbs_groups_and_scopes() {
    let rules = "  - {apiGroups: [\"\"], resources: [pods], verbs: [get, list]}";
    let yaml = format!(
        "{}---\n{}",
        cluster_role(rules),
        role_in(
            "web",
            "  - {apiGroups: [\"\"], resources: [configmaps], verbs: [list, delete]}"
        )
    );
    let srv = server(&yaml).await;
    let client = srv.client_as("spillway-system", "spillway");
    let pods_web: Api<Pod> = Api::namespaced(client.clone(), "web");
    // ClusterRoleBinding: everywhere, including all-namespace lists.
    pods_web.get("p").await.expect("get pods");
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list pods cluster-wide");
    assert_eq!(
        status(pods_web.delete("p", &Default::default()).await),
        denied(&format!(
            r#"pods "p" is forbidden: User "{USER}" cannot delete resource "pods" in API group "" in the namespace "web""#
        ))
    );
    assert_eq!(
        status(
            pods_web
                .create(&PostParams::default(), &pod("web", "new"))
                .await
        ),
        denied(&format!(
            r#"pods is forbidden: User "{USER}" cannot create resource "pods" in API group "" in the namespace "web""#
        ))
    );
    // RoleBinding: its namespace only; never an all-namespace list.
    let cms_web: Api<ConfigMap> = Api::namespaced(client.clone(), "web");
    cms_web
        .list(&ListParams::default())
        .await
        .expect("list in web");
    cms_web
        .delete("denied", &Default::default())
        .await
        .expect("delete in web");
    let cms_other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    assert_eq!(
        status(cms_other.list(&ListParams::default()).await),
        denied(&format!(
            r#"configmaps is forbidden: User "{USER}" cannot list resource "configmaps" in API group "" in the namespace "other""#
        ))
    );
    assert_eq!(
        status(
            Api::<ConfigMap>::all(client.clone())
                .list(&ListParams::default())
                .await
        ),
        denied(&format!(
            r#"configmaps is forbidden: User "{USER}" cannot list resource "configmaps" in API group "" at the cluster scope"#
        ))
    );
    // deletecollection is its own verb.
    assert_eq!(
        status(
            cms_web
                .delete_collection(&Default::default(), &ListParams::default())
                .await
        ),
        denied(&format!(
            r#"configmaps is forbidden: User "{USER}" cannot deletecollection resource "configmaps" in API group "" in the namespace "web""#
        ))
    );
    // apiGroups: a core rule grants nothing in coordination.k8s.io.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "web");
    assert_eq!(
        status(leases.get("l").await),
        denied(&format!(
            r#"leases.coordination.k8s.io "l" is forbidden: User "{USER}" cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "web""#
        ))
    );
    // The Namespace object itself is "in" its own namespace.
    let nss: Api<Namespace> = Api::all(client);
    assert_eq!(
        status(nss.get("web").await),
        denied(&format!(
            r#"namespaces "web" is forbidden: User "{USER}" cannot get resource "namespaces" in API group "" in the namespace "web""#
        ))
    );
}

#[tokio::test]
async fn resource_names_allow_only_named_requests() {
    let srv = server(&role_in(
        "web",
        "  - {apiGroups: [\"\"], resources: [configmaps], resourceNames: [allowed], verbs: [get, list, watch, update, create]}",
    ))
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(srv.client_as("spillway-system", "spillway"), "web");
    let cm = cms.get("allowed").await.expect("named get");
    cms.replace("allowed", &PostParams::default(), &cm)
        .await
        .expect("named update");
    assert_eq!(
        status(cms.get("denied").await),
        denied(&format!(
            r#"configmaps "denied" is forbidden: User "{USER}" cannot get resource "configmaps" in API group "" in the namespace "web""#
        ))
    );
    // A list is unnamed...
    assert_eq!(
        status(cms.list(&ListParams::default()).await),
        denied(&format!(
            r#"configmaps is forbidden: User "{USER}" cannot list resource "configmaps" in API group "" in the namespace "web""#
        ))
    );
    // ...unless it selects exactly one name (how a watcher follows one object).
    let one = ListParams::default().fields("metadata.name=allowed");
    assert_eq!(cms.list(&one).await.expect("named list").items.len(), 1);
    let named_watch = kube::api::WatchParams::default().fields("metadata.name=allowed");
    let _events = cms.watch(&named_watch, "0").await.expect("named watch");
    let all = kube::api::WatchParams::default();
    assert_eq!(
        status(cms.watch(&all, "0").await.map(|_| ())).0,
        403,
        "unnamed watch"
    );
    // A create has no name in the URL: resourceNames never allow it.
    assert_eq!(
        status(
            cms.create(&PostParams::default(), &config_map("web", "allowed-2"))
                .await
        ),
        denied(&format!(
            r#"configmaps is forbidden: User "{USER}" cannot create resource "configmaps" in API group "" in the namespace "web""#
        ))
    );
}

#[tokio::test]
async fn subresources_need_their_own_rules() {
    let srv = server(&cluster_role(
        "  - {apiGroups: [\"\"], resources: [pods], verbs: [get, patch, create]}
  - {apiGroups: [\"\"], resources: [\"*/status\"], verbs: [get]}",
    ))
    .await;
    let pods: Api<Pod> = Api::namespaced(srv.client_as("spillway-system", "spillway"), "web");
    // `pods` does not cover pods/eviction or pods/status writes...
    assert_eq!(
        status(pods.evict("p", &EvictParams::default()).await),
        denied(&format!(
            r#"pods "p" is forbidden: User "{USER}" cannot create resource "pods/eviction" in API group "" in the namespace "web""#
        ))
    );
    assert_eq!(
        status(
            pods.patch_status(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {}}))
            )
            .await
        ),
        denied(&format!(
            r#"pods "p" is forbidden: User "{USER}" cannot patch resource "pods/status" in API group "" in the namespace "web""#
        ))
    );
    // ...and `*/status` covers every resource's status.
    pods.get_status("p").await.expect("*/status");
}

#[tokio::test]
async fn groups_users_and_missing_roles() {
    let yaml = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: readers}
rules: [{apiGroups: [\"\"], resources: [pods], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: all-service-accounts}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: readers}
subjects: [{kind: Group, name: 'system:serviceaccounts:web'}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dangling, namespace: other}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: gone}
subjects: [{kind: User, name: 'system:serviceaccount:web:app'}]
";
    let srv = server(yaml).await;
    // Group subject: any service account of namespace web.
    let web_app: Api<Pod> = Api::all(srv.client_as("web", "app"));
    web_app.list(&ListParams::default()).await.expect("group");
    let elsewhere: Api<Pod> = Api::all(srv.client_as("other", "app"));
    assert_eq!(status(elsewhere.list(&ListParams::default()).await).0, 403);
    // A binding to a missing role: upstream names it in the refusal.
    let other: Api<ConfigMap> = Api::namespaced(srv.client_as("web", "app"), "other");
    assert_eq!(
        status(other.get("allowed").await),
        denied(
            r#"configmaps "allowed" is forbidden: User "system:serviceaccount:web:app" cannot get resource "configmaps" in API group "" in the namespace "other": RBAC: role.rbac.authorization.k8s.io "gone" not found"#
        )
    );
}

#[tokio::test]
async fn token_requests_validate_bind_and_authorize() {
    let srv = server(&cluster_role(
        "  - {apiGroups: [\"\"], resources: [serviceaccounts/token], verbs: [create]}",
    ))
    .await;
    srv.insert::<ServiceAccount>(&obj(
        json!({"metadata": {"name": "app", "namespace": "web"}}),
    ));
    let mut bound = pod("web", "bound");
    bound.spec.as_mut().expect("spec").service_account_name = Some("app".into());
    let bound = srv.insert(&bound);
    let uid = bound.metadata.uid.clone().expect("uid");
    let accounts: Api<ServiceAccount> =
        Api::namespaced(srv.client_as("spillway-system", "spillway"), "web");
    let request = |secs: i64, uid: &str| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(secs),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some("bound".into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let pp = PostParams::default();
    // Real minimum: 10 minutes.
    assert_eq!(
        status(accounts.create_token_request("app", &pp, &request(599, &uid)).await),
        (
            422,
            "Invalid".into(),
            r#"TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"#.into()
        )
    );
    // A stale uid: the pod was replaced.
    assert_eq!(
        status(
            accounts
                .create_token_request("app", &pp, &request(600, "old"))
                .await
        )
        .0,
        409
    );
    assert_eq!(
        status(
            accounts
                .create_token_request("default", &pp, &request(600, &uid))
                .await
        )
        .0,
        404,
        "no such service account"
    );
    // The pod must run as the service account.
    srv.insert::<ServiceAccount>(&obj(
        json!({"metadata": {"name": "default", "namespace": "web"}}),
    ));
    assert_eq!(
        status(accounts.create_token_request("default", &pp, &request(600, &uid)).await),
        (
            400,
            "BadRequest".into(),
            r#"cannot bind token for serviceaccount "default" to pod running with different serviceaccount name."#.into()
        )
    );
    let issued = accounts
        .create_token_request("app", &pp, &request(3600, &uid))
        .await
        .expect("token");
    let st = issued.status.expect("status");
    assert!(!st.token.is_empty());
    assert_eq!(issued.spec.expiration_seconds, Some(3600));
    // The token authenticates as the account while its pod exists.
    let as_app: Api<Pod> = Api::namespaced(srv.client_with_token(&st.token), "web");
    assert_eq!(
        status(as_app.get("p").await).0,
        403,
        "authenticated, not authorized"
    );
    srv.remove::<Pod>("web", "bound");
    assert_eq!(status(as_app.get("p").await).0, 401, "bound pod gone");
    // Creating tokens is itself authorized (serviceaccounts/token).
    let no_grant: Api<ServiceAccount> = Api::namespaced(srv.client_as("web", "app"), "web");
    assert_eq!(
        status(
            no_grant
                .create_token_request("app", &pp, &request(600, &uid))
                .await
        ),
        denied(
            r#"serviceaccounts "app" is forbidden: User "system:serviceaccount:web:app" cannot create resource "serviceaccounts/token" in API group "" in the namespace "web""#
        )
    );
}

#[tokio::test]
async fn the_recorder_lists_rules_no_request_used() {
    let srv = server(&cluster_role(
        "  - {apiGroups: [\"\"], resources: [pods], verbs: [get, list]}
  - {apiGroups: [\"\"], resources: [configmaps], verbs: [get]}",
    ))
    .await;
    let pods: Api<Pod> = Api::namespaced(srv.client_as("spillway-system", "spillway"), "web");
    pods.get("p").await.expect("get");
    let role = RoleId {
        kind: "ClusterRole".into(),
        namespace: String::new(),
        name: "test".into(),
    };
    let used = srv.exercised_rules();
    assert_eq!(used.len(), 1);
    assert_eq!(
        (&used[0].role, used[0].rule, used[0].verb.as_str()),
        (&role, 0, "get")
    );
    let unused: Vec<(usize, String, String)> = srv
        .unexercised_permissions("spillway-system", "spillway")
        .into_iter()
        .map(|g| (g.rule, g.verb, g.resource))
        .collect();
    assert_eq!(
        unused,
        [
            (0, "list".to_string(), "pods".to_string()),
            (1, "get".to_string(), "configmaps".to_string())
        ]
    );
}

#[tokio::test]
async fn deploy_manifests_load_from_kubectl_kustomize() {
    let srv = TestApiServer::start().await;
    let skipped = srv.apply_manifests(&support::kustomize("deploy/overlays/aks"));
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("Deployment spillway-system/spillway")),
        "{skipped:?}"
    );
    // The namespace carries its Pod Security labels; RBAC objects are served.
    let ns: Namespace = srv.get("", "spillway-system").expect("namespace");
    let labels = ns.metadata.labels.expect("labels");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["kubernetes.io/metadata.name"], "spillway-system");
    assert!(
        srv.get::<ServiceAccount>("spillway-system", "spillway")
            .is_some()
    );
    let granted = srv.granted_permissions("spillway-system", "spillway");
    assert!(
        granted
            .iter()
            .any(|g| g.verb == "watch" && g.resource == "pods")
    );
    // What spillway's ServiceAccount may not do.
    let client = srv.client_as("spillway-system", "spillway");
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list pods");
    assert_eq!(
        status(
            Api::<Secret>::all(client)
                .list(&ListParams::default())
                .await
        )
        .0,
        403
    );
}
