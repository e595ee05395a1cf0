//! The kinds this server serves and how their URLs look.

/// One served resource (group/version/plural) and its behaviour switches.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: main-resource writes keep `.status`,
    /// status writes change only `.status`.
    pub status_subresource: bool,
    /// Field selector labels beyond `metadata.name` / `metadata.namespace`.
    pub fields: &'static [&'static str],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `pods` or `leases.coordination.k8s.io`, as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    pub fn is_pod(&self) -> bool {
        self.is("", "pods")
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
        fields: POD_FIELDS,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
        fields: &["spec.unschedulable"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        fields: EVENT_FIELDS,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status_subresource: false,
        fields: &["type"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status_subresource: true,
        fields: &[],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status_subresource: true,
        fields: &["status.phase"],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: "scheduling.k8s.io",
        version: "v1",
        plural: "priorityclasses",
        kind: "PriorityClass",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
        status_subresource: true,
        fields: &[],
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        kind: "ReplicaSet",
        namespaced: true,
        status_subresource: true,
        fields: &[],
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
    },
    ResourceType {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
];

const RBAC: &str = "rbac.authorization.k8s.io";

/// Served too: the identities and RBAC objects `rbac.rs` reads.
pub static IDENTITY_RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: RBAC,
        version: "v1",
        plural: "roles",
        kind: "Role",
        namespaced: true,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: RBAC,
        version: "v1",
        plural: "rolebindings",
        kind: "RoleBinding",
        namespaced: true,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: RBAC,
        version: "v1",
        plural: "clusterroles",
        kind: "ClusterRole",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: RBAC,
        version: "v1",
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
];

/// Served too, create only and never stored: the reviews a delegating
/// component (a kubelet) asks the API server for (`reviews.rs`).
pub static REVIEW_RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceType {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
        status_subresource: false,
        fields: &[],
    },
];

impl ResourceType {
    /// A create-only review kind of [`REVIEW_RESOURCES`].
    pub fn is_review(&self) -> bool {
        REVIEW_RESOURCES.iter().any(|r| std::ptr::eq(r, self))
    }
}

pub fn all() -> impl Iterator<Item = &'static ResourceType> {
    RESOURCES
        .iter()
        .chain(IDENTITY_RESOURCES)
        .chain(REVIEW_RESOURCES)
}

/// The served resource of a manifest's `apiVersion` and `kind`.
pub fn lookup_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    all().find(|r| r.api_version() == api_version && r.kind == kind)
}

pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    all().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// A parsed request path.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...` paths.
pub fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/{name}[/status]` is the Namespace object itself.
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        // `nodes/{name}/proxy/{path…}` (and pods'/services' proxy): the
        // subresource is `proxy`, whatever follows.
        [p, n, s, _, ..] if *s == "proxy" => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    if name.as_deref() == Some("") {
        return None;
    }
    let rt = lookup(group, version, plural)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    Some(Route {
        rt,
        namespace,
        name,
        subresource: sub,
    })
}
