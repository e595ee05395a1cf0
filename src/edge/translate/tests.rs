//! Mapping tests. Golden files live in `tests/data/edge/`; regenerate them
//! with `UPDATE_GOLDEN=1 cargo test --lib edge::translate` and review the diff.

use super::*;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::path::PathBuf;

/// Fixture builder: `pod("iot", "sensor-abc").container(c("sensor", "img"))`.
struct PodBuilder(k8s::Pod);

fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(k8s::Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..Default::default()
        },
        spec: Some(k8s::PodSpec::default()),
        status: None,
    })
}

impl PodBuilder {
    fn spec(&mut self) -> &mut k8s::PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    fn container(mut self, c: CBuilder) -> Self {
        self.spec().containers.push(c.0);
        self
    }
    fn restart(mut self, p: &str) -> Self {
        self.spec().restart_policy = Some(p.to_string());
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
        self
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
        self
    }
    fn owned_by(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.0
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            });
        self
    }
    fn volume(mut self, v: k8s::Volume) -> Self {
        self.spec().volumes.get_or_insert_with(Vec::new).push(v);
        self
    }
    fn build(self) -> k8s::Pod {
        self.0
    }
}

struct CBuilder(k8s::Container);

fn c(name: &str, image: &str) -> CBuilder {
    CBuilder(k8s::Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        ..Default::default()
    })
}

impl CBuilder {
    fn limit(mut self, resource: &str, q: &str) -> Self {
        self.0
            .resources
            .get_or_insert_with(Default::default)
            .limits
            .get_or_insert_with(Default::default)
            .insert(resource.to_string(), Quantity(q.to_string()));
        self
    }
    fn port(mut self, port: i32, host_port: Option<i32>, proto: &str) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(k8s::ContainerPort {
                container_port: port,
                host_port,
                protocol: Some(proto.to_string()),
                ..Default::default()
            });
        self
    }
    fn command(mut self, cmd: &[&str]) -> Self {
        self.0.command = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }
    fn args(mut self, args: &[&str]) -> Self {
        self.0.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    fn env(mut self, name: &str, value: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        });
        self
    }
    fn env_field(mut self, name: &str, path: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(k8s::EnvVarSource {
                field_ref: Some(k8s::ObjectFieldSelector {
                    field_path: path.to_string(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        });
        self
    }
    fn env_secret(mut self, name: &str, secret: &str, key: &str) -> Self {
        self.0.env.get_or_insert_with(Vec::new).push(k8s::EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(k8s::EnvVarSource {
                secret_key_ref: Some(k8s::SecretKeySelector {
                    name: secret.to_string(),
                    key: key.to_string(),
                    optional: None,
                }),
                ..Default::default()
            }),
        });
        self
    }
}

fn node() -> EdgeNode {
    EdgeNode::new("edge-munich", "tags.fleet='factory'")
}

fn rs_owner() -> Owner {
    Owner {
        kind: "ReplicaSet".into(),
        name: "tempsensor-7d9c".into(),
        uid: "rs-uid-1".into(),
    }
}

fn translate_with(
    p: &k8s::Pod,
    owner: &Owner,
    revision: Option<i32>,
    resolved: &Resolved,
) -> Result<LayeredDeployment, EdgeTranslateError> {
    layered_deployment(
        p,
        LayeredInput {
            node: &node(),
            owner,
            revision,
            rollout: None,
            resolved,
        },
    )
}

/// Translate with the pod's own owner (the pod for a bare pod) at revision 3.
fn translate(p: &k8s::Pod) -> Result<LayeredDeployment, EdgeTranslateError> {
    let owner = owner_of(p)?;
    translate_with(p, &owner, Some(3), &Resolved::default())
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/edge")
        .join(format!("{name}.json"))
}

/// Compare `actual` with the golden file strictly; rewrite it with `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &serde_json::Value) {
    let path = golden_path(name);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(actual).expect("serializable")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        expected,
        text,
        "{} differs from the translation (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

fn golden_ok(name: &str, p: &k8s::Pod) -> LayeredDeployment {
    let d = translate(p).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_golden(
        name,
        &serde_json::to_value(&d.configuration).expect("serializable"),
    );
    d
}

fn golden_err(name: &str, p: &k8s::Pod) -> EdgeTranslateError {
    let e = match translate(p) {
        Ok(d) => panic!("{name}: expected a rejection, got {}", d.id()),
        Err(e) => e,
    };
    check_golden(
        name,
        &serde_json::json!({ "field": e.field(), "error": e.to_string() }),
    );
    e
}

/// The seed material's example: the simulated temperature sensor.
fn temperature_sensor() -> PodBuilder {
    pod("iot", "tempsensor-7d9c-abcde")
        .owned_by("ReplicaSet", "tempsensor-7d9c", "rs-uid-1")
        .label("app", "tempsensor")
        .label("edge.spillway.io/tag.site", "munich")
        .container(
            c(
                "tempsensor",
                "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
            )
            .env("MessageCount", "500")
            .limit("memory", "128Mi")
            .limit("cpu", "250m"),
        )
        .annotation(
            "edge.spillway.io/routes",
            r#"{"sensorToUpstream":"FROM /messages/modules/tempsensor/outputs/temperatureOutput INTO $upstream"}"#,
        )
        .annotation(
            "edge.spillway.io/module-twin.tempsensor",
            r#"{"SendData":true,"SendInterval":5}"#,
        )
}

#[test]
fn golden_temperature_sensor() {
    let d = golden_ok("temperature-sensor", &temperature_sensor().build());
    assert_eq!(d.modules, vec!["tempsensor"]);
    assert_eq!(d.configuration.priority, 103, "100 + revision 3");
    assert!(d.configuration.is_layered());
}

#[test]
fn golden_ports_command_and_resources() {
    let p = pod("web", "gateway-5f-xyz")
        .owned_by("ReplicaSet", "gateway-5f", "rs-uid-2")
        .restart("OnFailure")
        .annotation("edge.spillway.io/startup-order.proxy", "10")
        .annotation("edge.spillway.io/priority", "200")
        .annotation(
            "edge.spillway.io/target-condition",
            "properties.reported.os = 'linux'",
        )
        .container(
            c("proxy", "nginx:1.27")
                .port(80, None, "TCP")
                .port(5000, Some(15000), "UDP")
                .command(["/bin/sh", "-c"].as_slice())
                .args(["echo $(GREETING) $$(HOME)"].as_slice())
                .env("GREETING", "hello")
                .env_field("NS", "metadata.namespace")
                .limit("memory", "1Gi")
                .limit("cpu", "1.5"),
        )
        .container(c("sidecar", "busybox:1.36").args(["sleep", "3600"].as_slice()))
        .build();
    let d = golden_ok("ports-command-resources", &p);
    assert_eq!(d.modules, vec!["proxy", "sidecar"]);
}

#[test]
fn golden_rejects_reserved_module_name() {
    let p = pod("iot", "bad").container(c("edgeHub", "nginx")).build();
    let e = golden_err("reject-reserved-name", &p);
    assert_eq!(e.field(), "spec.containers[0].name");
}

#[test]
fn golden_rejects_volumes() {
    let p = pod("iot", "vol")
        .container(c("app", "nginx"))
        .volume(k8s::Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        })
        .build();
    golden_err("reject-volume", &p);
}

#[test]
fn golden_base_deployment() {
    let base = base_deployment(&node());
    check_golden("base", &serde_json::to_value(&base).expect("serializable"));
    assert!(!base.is_layered());
    assert_eq!(base.labels[LABEL_ROLE], ROLE_BASE);
}

#[test]
fn reserved_names_are_rejected_in_any_form() {
    for name in [
        "$edgeAgent",
        "$custom",
        "edgeAgent",
        "edgeagent",
        "EDGEHUB",
        "edgeHub",
    ] {
        let p = pod("iot", "p").container(c(name, "img")).build();
        let e = translate(&p).expect_err(name);
        assert!(e.to_string().contains("reserved"), "{name}: {e}");
    }
    let p = pod("iot", "p").container(c("edge-agent", "img")).build();
    assert!(translate(&p).is_ok(), "similar but distinct names are fine");
}

#[test]
fn create_options_are_split_into_512_character_chunks() {
    assert_eq!(
        chunk_create_options("{}").expect("fits"),
        vec![("createOptions".to_string(), "{}".to_string())]
    );
    let long: String = "x".repeat(512 * 2 + 7);
    let chunks = chunk_create_options(&long).expect("fits");
    let names: Vec<&str> = chunks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["createOptions", "createOptions01", "createOptions02"]
    );
    assert_eq!(chunks[0].1.len(), 512);
    assert_eq!(chunks[2].1.len(), 7);
    let joined: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(joined, long);
    // Exactly 512 is one chunk; characters, not bytes, are counted.
    assert_eq!(
        chunk_create_options(&"x".repeat(512)).expect("fits").len(),
        1
    );
    let umlauts = "ü".repeat(513);
    let chunks = chunk_create_options(&umlauts).expect("fits");
    assert_eq!(chunks[0].1.chars().count(), 512);
    assert_eq!(chunks[1].1, "ü");
    // Eight chunks is the most the agent reads.
    assert_eq!(
        chunk_create_options(&"x".repeat(512 * 8))
            .expect("fits")
            .len(),
        8
    );
    assert_eq!(
        chunk_create_options(&"x".repeat(512 * 8)).expect("fits")[7].0,
        "createOptions07"
    );
    assert!(chunk_create_options(&"x".repeat(512 * 8 + 1)).is_err());
}

#[test]
fn long_create_options_land_in_numbered_fields_that_join_to_valid_json() {
    let mut container = c("app", "img");
    for i in 0..60 {
        container = container.port(10000 + i, None, "TCP");
    }
    let d = translate(&pod("iot", "p").container(container).build()).expect("fits");
    let agent = &d
        .configuration
        .content
        .modules_content
        .as_ref()
        .expect("modules")["$edgeAgent"];
    let settings = &agent["properties.desired.modules.app"]["settings"];
    let mut joined = settings["createOptions"]
        .as_str()
        .expect("first chunk")
        .to_string();
    let mut n = 1;
    while let Some(chunk) = settings[format!("createOptions{n:02}")].as_str() {
        assert!(chunk.chars().count() <= CREATE_OPTIONS_CHUNK);
        joined.push_str(chunk);
        n += 1;
    }
    assert!(n > 2, "several chunks");
    let options: Value = serde_json::from_str(&joined).expect("joined chunks are JSON");
    assert_eq!(
        options["HostConfig"]["PortBindings"]["10059/tcp"][0]["HostPort"],
        "10059"
    );
}

#[test]
fn ids_are_lowercase_bounded_and_carry_the_hash() {
    let hash = content_hash(&["x"]);
    assert_eq!(hash.len(), HASH_LEN);
    let id = deployment_id(&["Edge_Munich", "My.NS", "--Owner--"], &hash);
    assert_eq!(id, format!("edge-munich-my-ns-owner-{hash}"));
    let long = "a".repeat(300);
    let id = deployment_id(&[&long, "ns"], &hash);
    assert_eq!(id.len(), MAX_ID_LEN);
    assert!(id.ends_with(&hash));
    let id = deployment_id(&["---", "$$$"], &hash);
    assert_eq!(id, hash);
    // Truncation never leaves a hyphen before the hash doubled.
    let id = deployment_id(&[&format!("{}-b", "a".repeat(110)), "c"], &hash);
    assert!(!id.contains("--"), "{id}");
    for id in [
        translate(&temperature_sensor().build())
            .expect("ok")
            .configuration
            .id,
        base_deployment(&node()).id,
    ] {
        assert!(id.len() <= MAX_ID_LEN);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{id}"
        );
        assert!(
            crate::edge::emulator::validate_configuration_id(&id).is_ok(),
            "{id}"
        );
    }
}

#[test]
fn the_hash_is_stable_and_length_prefixed() {
    // Pinned: a change here renames every deployment on every hub.
    assert_eq!(
        content_hash(&["layered", "n"]),
        content_hash(&["layered", "n"])
    );
    assert_ne!(content_hash(&["ab", "c"]), content_hash(&["a", "bc"]));
    let a = translate(&temperature_sensor().build()).expect("ok");
    let b = translate(&temperature_sensor().build()).expect("ok");
    assert_eq!(a.configuration.id, b.configuration.id);
    assert_eq!(a.content_hash, b.content_hash);
    assert_eq!(content_hash(&["layered", "n"]), "9a8a667cf85fc337");
}

#[test]
fn replicas_share_a_deployment_and_content_changes_make_a_new_one() {
    let one = translate(&temperature_sensor().build()).expect("ok");
    let mut other = temperature_sensor().build();
    other.metadata.name = Some("tempsensor-7d9c-fghij".into());
    other.metadata.uid = Some("another-pod-uid".into());
    let two = translate(&other).expect("ok");
    assert_eq!(one.configuration, two.configuration, "replicas share");

    let changed = temperature_sensor()
        .container(c("extra", "busybox"))
        .build();
    assert_ne!(translate(&changed).expect("ok").id(), one.id());
    let mut env = temperature_sensor().build();
    if let Some(spec) = env.spec.as_mut() {
        spec.containers[0].image = Some("sensor:1.6".into());
    }
    assert_ne!(translate(&env).expect("ok").id(), one.id(), "image change");

    // Another owner with identical content gets its own deployment.
    let owner = Owner {
        uid: "rs-uid-other".into(),
        ..rs_owner()
    };
    let theirs = translate_with(
        &temperature_sensor().build(),
        &owner,
        Some(3),
        &Resolved::default(),
    )
    .expect("ok");
    assert_ne!(theirs.id(), one.id());

    // Priority and target condition are mutable: same id, different fields.
    let rev4 = translate_with(
        &temperature_sensor().build(),
        &rs_owner(),
        Some(4),
        &Resolved::default(),
    )
    .expect("ok");
    assert_eq!(rev4.id(), one.id());
    assert_eq!(rev4.configuration.priority, 104);
}

#[test]
fn per_pod_values_are_rejected_because_replicas_share() {
    let p = pod("iot", "p")
        .container(c("app", "img").env_field("ME", "metadata.name"))
        .build();
    let e = translate(&p).expect_err("per-pod");
    assert_eq!(e.field(), "spec.containers[0].env[0].valueFrom.fieldRef");
}

#[test]
fn value_from_must_be_resolved_by_the_caller() {
    let p = pod("iot", "p")
        .container(
            c("app", "img")
                .env_secret("TOKEN", "s", "k")
                .env("URL", "x?t=$(TOKEN)"),
        )
        .build();
    let e = translate(&p).expect_err("unresolved");
    assert!(matches!(e, EdgeTranslateError::Unresolved { .. }), "{e}");
    let resolved = Resolved {
        env: BTreeMap::from([(
            "app".to_string(),
            BTreeMap::from([("TOKEN".to_string(), "t0k".to_string())]),
        )]),
        ..Default::default()
    };
    let d = translate_with(&p, &rs_owner(), None, &resolved).expect("resolved");
    let agent = &d.configuration.content.modules_content.as_ref().expect("m")["$edgeAgent"];
    let env = &agent["properties.desired.modules.app"]["env"];
    assert_eq!(env["TOKEN"]["value"], "t0k");
    assert_eq!(env["URL"]["value"], "x?t=t0k");
    assert_eq!(d.configuration.priority, DEFAULT_PRIORITY, "no revision");
}

#[test]
fn target_conditions_compose_with_and() {
    let none = BTreeMap::new();
    assert_eq!(
        pod_target_condition("", &none, None).expect("ok"),
        "capabilities.iotEdge = true"
    );
    assert_eq!(
        pod_target_condition("tags.fleet='f'", &none, None).expect("ok"),
        "tags.fleet='f'"
    );
    let ann = BTreeMap::from([(
        TARGET_CONDITION_ANNOTATION.to_string(),
        "tags.floor=2 OR tags.floor=3".to_string(),
    )]);
    let labels = BTreeMap::from([
        (
            "edge.spillway.io/tag.site".to_string(),
            "munich".to_string(),
        ),
        ("app".to_string(), "ignored".to_string()),
    ]);
    assert_eq!(
        pod_target_condition("*", &ann, Some(&labels)).expect("ok"),
        "(capabilities.iotEdge = true) AND (tags.floor=2 OR tags.floor=3) AND (tags.site='munich')"
    );
    // Every composed condition is one the emulator's parser (the hub's
    // grammar) accepts.
    let composed = pod_target_condition("tags.fleet='f'", &ann, Some(&labels)).expect("ok");
    assert!(
        crate::edge::emulator::query::parse_condition(&composed).is_ok(),
        "{composed}"
    );
    let bad_tag = BTreeMap::from([("edge.spillway.io/tag.a b".to_string(), "x".to_string())]);
    assert!(pod_target_condition("", &none, Some(&bad_tag)).is_err());
    let empty = BTreeMap::from([(TARGET_CONDITION_ANNOTATION.to_string(), " ".to_string())]);
    assert!(pod_target_condition("", &empty, None).is_err());
}

#[test]
fn quotes_in_tag_values_are_doubled() {
    assert_eq!(quote_literal("o'brien"), "'o''brien'");
    assert_eq!(quote_literal("''"), "''''''");
    let labels = BTreeMap::from([(
        "edge.spillway.io/tag.owner".to_string(),
        "o'brien".to_string(),
    )]);
    let c = pod_target_condition("", &BTreeMap::new(), Some(&labels)).expect("ok");
    assert!(c.ends_with("(tags.owner='o''brien')"), "{c}");
    assert!(
        crate::edge::emulator::query::parse_condition(&c).is_ok(),
        "{c}"
    );
}

#[test]
fn restart_policies_map_to_the_agents_words() {
    for (k8s_policy, edge) in [
        ("Always", "always"),
        ("OnFailure", "on-failure"),
        ("Never", "never"),
    ] {
        let d = translate(
            &pod("iot", "p")
                .restart(k8s_policy)
                .container(c("app", "img"))
                .build(),
        )
        .expect("ok");
        let agent = &d.configuration.content.modules_content.as_ref().expect("m")["$edgeAgent"];
        assert_eq!(
            agent["properties.desired.modules.app"]["restartPolicy"],
            edge
        );
    }
    assert!(
        translate(
            &pod("iot", "p")
                .restart("Sometimes")
                .container(c("app", "img"))
                .build()
        )
        .is_err()
    );
}

#[test]
fn annotations_are_checked() {
    let base = || pod("iot", "p").container(c("app", "img"));
    for (k, v) in [
        ("edge.spillway.io/priority", "-1"),
        ("edge.spillway.io/priority", "high"),
        ("edge.spillway.io/startup-order.app", "first"),
        ("edge.spillway.io/startup-order.nope", "1"),
        ("edge.spillway.io/module-twin.nope", "{\"a\":1}"),
        ("edge.spillway.io/module-twin.app", "[1]"),
        ("edge.spillway.io/module-twin.app", "{\"$version\":1}"),
        ("edge.spillway.io/module-twin.app", "{\"a.b\":1}"),
        ("edge.spillway.io/routes", "{\"r\":\"INTO $upstream\"}"),
        (
            "edge.spillway.io/routes",
            "{\"a b\":\"FROM /messages/* INTO $upstream\"}",
        ),
        ("edge.spillway.io/routes", "not json"),
    ] {
        let e = translate(&base().annotation(k, v).build()).expect_err(&format!("{k}={v}"));
        assert!(
            e.field().contains(k) || e.field().starts_with("metadata.annotations"),
            "{e}"
        );
    }
    let routed = base()
        .annotation(
            "edge.spillway.io/routes",
            r#"{"r":{"route":"FROM /messages/* INTO $upstream","priority":1,"timeToLiveSecs":60}}"#,
        )
        .build();
    assert!(translate(&routed).is_ok());
}

#[test]
fn unsupported_pod_features_are_rejected_not_dropped() {
    let mut p = pod("iot", "p").container(c("app", "img")).build();
    if let Some(s) = p.spec.as_mut() {
        s.init_containers = Some(vec![c("init", "img").0]);
    }
    assert_eq!(
        translate(&p).expect_err("init").field(),
        "spec.initContainers"
    );

    let p = pod("iot", "p")
        .container(c("app", "img").port(9, None, "SCTP"))
        .build();
    assert_eq!(
        translate(&p).expect_err("sctp").field(),
        "spec.containers[0].ports[0].protocol"
    );
    let p = pod("iot", "p")
        .container(c("app", "img").limit("cpu", "lots"))
        .build();
    assert_eq!(
        translate(&p).expect_err("cpu").field(),
        "spec.containers[0].resources.limits.cpu"
    );
    let p = pod("iot", "p").build();
    assert_eq!(translate(&p).expect_err("empty").field(), "spec.containers");

    // The injected service-account token volume is tolerated.
    let token = k8s::Volume {
        name: "kube-api-access-x".into(),
        projected: Some(k8s::ProjectedVolumeSource {
            sources: Some(vec![k8s::VolumeProjection {
                service_account_token: Some(k8s::ServiceAccountTokenProjection {
                    path: "token".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = pod("iot", "p")
        .container(c("app", "img"))
        .volume(token)
        .build();
    assert!(translate(&p).is_ok());
}

#[test]
fn owners_and_revisions() {
    let bare = pod("iot", "solo").container(c("app", "img")).build();
    assert_eq!(
        owner_of(&bare).expect("owner"),
        Owner {
            kind: "Pod".into(),
            name: "solo".into(),
            uid: "uid-iot-solo".into()
        }
    );
    let owned = temperature_sensor().build();
    assert_eq!(owner_of(&owned).expect("owner").uid, "rs-uid-1");
    assert_eq!(parse_revision("7").expect("ok"), 7);
    assert!(parse_revision("-1").is_err());
    assert!(parse_revision("seven").is_err());
}

#[test]
fn labels_identify_the_deployment_for_adoption() {
    let d = translate(&temperature_sensor().build()).expect("ok");
    let l = &d.configuration.labels;
    assert_eq!(l[LABEL_MANAGED_BY], MANAGED_BY);
    assert_eq!(l[LABEL_NODE], "edge-munich");
    assert_eq!(l[LABEL_NAMESPACE], "iot");
    assert_eq!(l[LABEL_OWNER_UID], "rs-uid-1");
    assert_eq!(l[LABEL_ROLE], ROLE_LAYERED);
    assert_eq!(l[LABEL_CONTENT_HASH], d.content_hash);
    assert!(d.id().ends_with(&d.content_hash));
}

#[test]
fn optional_references_that_are_missing_leave_the_variable_out() {
    let p = pod("iot", "p")
        .container(
            c("app", "img")
                .env_secret("EXTRA", "s", "nope")
                .env("A", "1"),
        )
        .build();
    let resolved = Resolved {
        absent: BTreeMap::from([(
            "app".to_string(),
            std::collections::BTreeSet::from(["EXTRA".to_string()]),
        )]),
        ..Default::default()
    };
    let d = translate_with(&p, &rs_owner(), None, &resolved).expect("resolved");
    let agent = &d.configuration.content.modules_content.as_ref().expect("m")["$edgeAgent"];
    let env = &agent["properties.desired.modules.app"]["env"];
    assert!(env.get("EXTRA").is_none(), "{env}");
    assert_eq!(env["A"]["value"], "1");
}
