use super::build::{node, pod};
use super::*;
use crate::units::{GIB, MIB};
use k8s_openapi::api::core::v1::Toleration;

fn t(s: i64) -> Timestamp {
    Timestamp::from_secs(s)
}

#[test]
fn virtual_nodes_by_label_taint_or_name() {
    let m = VirtualNodeMatcher::default();
    assert!(m.is_virtual(&node("x").label("type", "virtual-kubelet").build()));
    assert!(m.is_virtual(&node("y").taint(VIRTUAL_KUBELET_TAINT, "azure").build()));
    assert!(m.is_virtual(&node("spillway-aci").build()));
    assert!(!m.is_virtual(&node("aks-pool1-0").pool("pool1").build()));
    let custom = VirtualNodeMatcher {
        labels: vec![("spillway.io/virtual".into(), "true".into())],
        taint_keys: vec![],
        names: Default::default(),
    };
    assert!(!custom.is_virtual(&node("x").label("type", "virtual-kubelet").build()));
    assert!(custom.is_virtual(&node("x").label("spillway.io/virtual", "true").build()));
}

#[test]
fn requests_take_max_of_containers_and_init_plus_overhead() {
    let p = pod()
        .cpu("500m")
        .memory("1Gi")
        .container("b", "250m", "256Mi")
        .init_container("migrate", "2", "512Mi")
        .overhead("100m", "64Mi")
        .build();
    // cpu: max(750m, 2000m) + 100m; memory: max(1280Mi, 512Mi) + 64Mi
    assert_eq!(pod_requests(&p).unwrap(), Resources::new(2100, 1344 * MIB));
}

#[test]
fn sidecars_add_to_the_main_containers() {
    let p = pod()
        .cpu("1")
        .memory("1Gi")
        .sidecar("proxy", "200m", "128Mi")
        .init_container("i", "1", "1Gi")
        .build();
    // main + sidecar = 1200m / 1152Mi; the init step runs beside the sidecar: 1200m / 1152Mi.
    assert_eq!(pod_requests(&p).unwrap(), Resources::new(1200, 1152 * MIB));
}

#[test]
fn limits_stand_in_for_missing_requests() {
    let mut p = pod().build();
    if let Some(spec) = p.spec.as_mut() {
        spec.containers[0].resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(BTreeMap::from([("cpu".to_string(), Quantity("2".into()))])),
            ..Default::default()
        });
    }
    assert_eq!(pod_requests(&p).unwrap().cpu_millis, 2000);
}

#[test]
fn bad_quantity_is_an_error_naming_the_pod() {
    let p = pod().ns("web").name("w").cpu("lots").build();
    let e = pod_requests(&p).unwrap_err().to_string();
    assert!(e.contains("web/w") && e.contains("lots"), "{e}");
}

#[test]
fn tolerations_that_admit_the_virtual_node() {
    let with = |t: Toleration| tolerates_virtual(&pod().toleration(t).build());
    let tol = |key: Option<&str>, op: &str, value: Option<&str>| Toleration {
        key: key.map(String::from),
        operator: Some(op.into()),
        value: value.map(String::from),
        ..Default::default()
    };
    assert!(with(tol(Some(VIRTUAL_KUBELET_TAINT), "Exists", None)));
    assert!(with(tol(
        Some(VIRTUAL_KUBELET_TAINT),
        "Equal",
        Some("azure")
    )));
    assert!(!with(tol(
        Some(VIRTUAL_KUBELET_TAINT),
        "Equal",
        Some("aws")
    )));
    assert!(with(tol(None, "Exists", None)));
    assert!(!with(tol(Some("azure.com/aci"), "Exists", None)));
    assert!(!tolerates_virtual(&pod().build()));
    let wrong_effect = Toleration {
        effect: Some("NoExecute".into()),
        ..tol(Some(VIRTUAL_KUBELET_TAINT), "Exists", None)
    };
    assert!(!with(wrong_effect));
}

#[test]
fn aci_incompatibilities_have_reasons() {
    assert_eq!(aci_incompatibility(&pod().build()), None);
    assert!(
        aci_incompatibility(&pod().host_path("logs").build())
            .unwrap()
            .contains("hostPath")
    );
    assert!(
        aci_incompatibility(&pod().pvc("data").build())
            .unwrap()
            .contains("PersistentVolumeClaim")
    );
    assert!(
        aci_incompatibility(&pod().privileged().build())
            .unwrap()
            .contains("privileged")
    );
    assert!(
        aci_incompatibility(&pod().host_network().build())
            .unwrap()
            .contains("hostNetwork")
    );
    assert!(
        aci_incompatibility(&pod().owned_by("DaemonSet", "ds").build())
            .unwrap()
            .contains("DaemonSet")
    );
    assert_eq!(
        aci_incompatibility(&pod().owned_by("ReplicaSet", "rs").build()),
        None
    );
}

#[test]
fn pending_means_unbound_pending_and_not_deleting() {
    assert!(is_pending(&pod().build()));
    assert!(!is_pending(&pod().on_node("n").build()));
    assert!(!is_pending(&pod().deleting().build()));
    assert!(!is_pending(&pod().phase("Failed").build()));
    let mut gated = pod().build();
    if let Some(spec) = gated.spec.as_mut() {
        spec.scheduling_gates = Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
            name: "example.com/quota".into(),
        }]);
    }
    assert!(!is_pending(&gated));
}

#[test]
fn pending_since_prefers_the_unschedulable_transition() {
    let p = pod().created(t(100)).build();
    assert_eq!(pending_since(&p, t(999)), t(100));
    let p = pod().created(t(100)).unschedulable_since(t(160)).build();
    assert_eq!(pending_since(&p, t(999)), t(160));
    assert_eq!(pending_since(&pod().build(), t(999)), t(999));
}

#[test]
fn pending_pod_carries_pool_priority_and_labels() {
    let p = pod()
        .ns("web")
        .name("a")
        .label("app", "frontend")
        .priority(5)
        .node_selector("kubernetes.azure.com/agentpool", "gpu")
        .tolerate_virtual()
        .build();
    let pp = pending_pod(&p, t(0), &ClusterConfig::default()).unwrap();
    assert_eq!(pp.pool.as_deref(), Some("gpu"));
    assert_eq!(pp.priority, 5);
    assert!(pp.tolerates_virtual);
    assert_eq!(pp.labels.get("app").map(String::as_str), Some("frontend"));
}

#[test]
fn snapshot_splits_vm_and_virtual_nodes_and_counts_usage() {
    let nodes = vec![
        node("vm-a").pool("p1").cpu("4").memory("16Gi").build(),
        node("vm-b")
            .pool("p1")
            .cpu("4")
            .memory("16Gi")
            .cordoned()
            .build(),
        node("vm-c")
            .pool("p2")
            .cpu("8")
            .memory("32Gi")
            .not_ready()
            .build(),
        node("aci").virtual_kubelet().build(),
    ];
    let pods = vec![
        pod()
            .ns("web")
            .name("r1")
            .cpu("1")
            .memory("1Gi")
            .on_node("vm-a")
            .build(),
        pod()
            .ns("web")
            .name("done")
            .cpu("3")
            .on_node("vm-a")
            .phase("Succeeded")
            .build(),
        pod()
            .ns("web")
            .name("b1")
            .cpu("2")
            .memory("4Gi")
            .on_node("aci")
            .build(),
        pod().ns("web").name("b2").on_node("aci").build(),
        pod()
            .ns("batch")
            .name("b3")
            .cpu("1")
            .memory("2Gi")
            .on_node("aci")
            .build(),
        pod().ns("web").name("wait").cpu("1").created(t(50)).build(),
    ];
    let cfg = ClusterConfig::default();
    let snap = snapshot_from(&nodes, &pods, t(100), &cfg);
    let names: Vec<&str> = snap.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["vm-a", "vm-b", "vm-c"]);
    assert_eq!(snap.nodes[0].allocated, Resources::new(1000, GIB));
    assert!(snap.nodes[0].schedulable);
    assert!(!snap.nodes[1].schedulable, "cordoned");
    assert!(!snap.nodes[2].schedulable, "not ready");
    assert_eq!(snap.pending.len(), 1);
    assert_eq!(snap.pending[0].pending_since, t(50));
    let web = snap.burst_usage["web"];
    assert_eq!(web.pods, 2);
    // b2 requests nothing: ACI bills azure-aci's default 1 vCPU / 1.5 GB;
    // b1's 4Gi (4.29 GB) rounds up to ACI's 0.1 GB steps.
    assert_eq!(
        web.requests,
        Resources::new(3000, 4_300_000_000 + 1_500_000_000)
    );
    let expected = cfg
        .engine
        .prices
        .aci_hourly(&Resources::new(2000, 4_300_000_000))
        + cfg
            .engine
            .prices
            .aci_hourly(&Resources::new(1000, 1_500_000_000));
    assert!((web.hourly_cost - expected).abs() < 1e-9);
    assert_eq!(snap.burst_usage["batch"].pods, 1);
    assert_eq!(snap.pools.len(), 2);
    let p1 = &snap.pools[0];
    assert_eq!(
        (p1.name.as_str(), p1.nodes, p1.min, p1.max),
        ("p1", 2, 2, 12)
    );
    assert_eq!(p1.node_allocatable, Resources::new(4000, 16 * GIB));
}

#[test]
fn configured_pool_limits_override_the_default() {
    let nodes = vec![node("vm-a").pool("p1").build()];
    let mut cfg = ClusterConfig::default();
    cfg.pool_limits.insert("p1".into(), (1, 3));
    let snap = snapshot_from(&nodes, &[] as &[Pod], t(0), &cfg);
    assert_eq!((snap.pools[0].min, snap.pools[0].max), (1, 3));
}

#[test]
fn pool_size_labels_or_annotations_bound_a_pool_unless_a_flag_does() {
    let nodes = vec![
        node("vm-a").pool("p1").build(),
        node("vm-b")
            .pool("p1")
            .label(POOL_MIN_SIZE, "2")
            .label(POOL_MAX_SIZE, "30")
            .build(),
        node("vm-c").pool("p2").build(),
        node("vm-d")
            .pool("p3")
            .label(POOL_MIN_SIZE, "9")
            .label(POOL_MAX_SIZE, "3")
            .build(),
    ];
    let mut annotated = node("vm-e").pool("p4").build();
    annotated.metadata.annotations = Some(
        [(POOL_MIN_SIZE, "0"), (POOL_MAX_SIZE, "5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let mut all = nodes.clone();
    all.push(annotated);
    let cfg = ClusterConfig::default();
    let snap = snapshot_from(&all, &[] as &[Pod], t(0), &cfg);
    let bounds = |name: &str| {
        let p = snap.pools.iter().find(|p| p.name == name).expect(name);
        (p.min, p.max)
    };
    assert_eq!(bounds("p1"), (2, 30), "labels on any node of the pool");
    assert_eq!(bounds("p2"), (1, 11), "no marks: current size + headroom");
    assert_eq!(bounds("p3"), (1, 11), "min > max is ignored");
    assert_eq!(bounds("p4"), (0, 5), "annotations count too");
    let mut flagged = ClusterConfig::default();
    flagged.pool_limits.insert("p1".into(), (1, 4));
    let snap = snapshot_from(&all, &[] as &[Pod], t(0), &flagged);
    assert_eq!((snap.pools[0].min, snap.pools[0].max), (1, 4), "flags win");
}

#[test]
fn the_pool_label_is_configurable() {
    let nodes = vec![
        node("vm-a").label("pool.example.com/name", "gpu").build(),
        node("vm-b").pool("p1").build(),
    ];
    let flags = ClusterFlags {
        virtual_node_names: vec![],
        pool_limits: vec![],
        pool_headroom: 10,
        pool_labels: vec!["pool.example.com/name".into()],
    };
    let snap = snapshot_from(&nodes, &[] as &[Pod], t(0), &flags.cluster_config());
    let names: Vec<&str> = snap.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["gpu"], "only the configured label names pools");
}

#[test]
fn pool_limit_flags_parse() {
    assert_eq!(
        parse_pool_limit("nodepool1=3:20"),
        Ok(("nodepool1".to_string(), (3, 20)))
    );
    for bad in ["nodepool1", "p=3", "p=a:b", "=1:2", "p=5:2"] {
        assert!(parse_pool_limit(bad).is_err(), "{bad}");
    }
}

#[test]
fn nodes_get_classes_and_pods_name_their_pool_through_affinity() {
    let nodes = vec![
        node("a-0")
            .pool("nodepool1")
            .label("kubernetes.io/hostname", "a-0")
            .build(),
        node("a-1")
            .pool("nodepool1")
            .label("kubernetes.io/hostname", "a-1")
            .build(),
        node("g-0").pool("gpu").taint("sku", "gpu").build(),
        node("spillway-aci").virtual_kubelet().build(),
    ];
    let pinned = pod()
        .ns("web")
        .name("p")
        .require_node("agentpool", "In", &["nodepool1"])
        .build();
    let s = snapshot_from(&nodes, &[pinned], t(0), &ClusterConfig::default());
    assert_eq!(s.classes.len(), 2, "hostnames differ, the class does not");
    assert_eq!(s.nodes[0].class, s.nodes[1].class);
    let gpu = s
        .pools
        .iter()
        .find(|p| p.name == "gpu")
        .and_then(|p| p.class);
    assert_eq!(gpu.map(|c| s.class(c).taints.len()), Some(1));
    let p = &s.pending[0];
    assert_eq!(p.pool.as_deref(), Some("nodepool1"));
    assert!(s.node_admits(p, 0) && !s.node_admits(p, 2));
}
