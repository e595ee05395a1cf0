//! Where a pod may run among the VM nodes: taints and tolerations,
//! `nodeSelector` and required node affinity, as kube-scheduler's
//! `TaintToleration`, `NodeAffinity` (which also applies `nodeSelector`)
//! filters judge them.
//!
//! Plain data and pure functions, like the rest of the engine: the cluster
//! view converts Kubernetes objects into these types, the engine evaluates
//! them per *node class* (nodes that share labels and taints), and the
//! autoscaler turns a burst pod's placement back into a placeholder's
//! constraints. The rules follow upstream:
//! - a toleration matches a taint as `Toleration.ToleratesTaint` does
//!   (k8s.io/api/core/v1/toleration.go): an empty effect matches every
//!   effect, an empty key (operator `Exists`) every key, `Exists` any value,
//!   `Equal` (or empty) the same value;
//! - only `NoSchedule` and `NoExecute` taints keep a pod off a node
//!   (`PreferNoSchedule` only scores);
//! - `nodeSelector` needs every pair; the required affinity's terms are
//!   ORed, a term's requirements ANDed, and a term with no requirement
//!   matches nothing (k8s.io/component-helpers nodeaffinity); `NotIn` and
//!   `DoesNotExist` match a node without the key; `Gt`/`Lt` compare the
//!   label as a 64-bit integer and fail when it is missing or not a number;
//! - `matchFields` knows `metadata.name` only.
//!
//! Node classes leave out [`HOSTNAME_LABEL`], which differs on every node;
//! a placement that names it (or `metadata.name`) is judged per node, with
//! the node's name standing in for its hostname label (as on AKS, where the
//! two are equal).

use std::collections::BTreeMap;
use std::fmt;

/// The label every kubelet sets to its node's host name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }

    /// Whether a pod that does not tolerate it may not be placed.
    pub fn repels(self) -> bool {
        !matches!(self, TaintEffect::PreferNoSchedule)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect.as_str())
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect.as_str())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
    /// An operator this version does not know: tolerates nothing.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Toleration {
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// `None`: every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Equal => self.value == taint.value,
            TolerationOperator::Exists => true,
            TolerationOperator::Unknown => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
    /// Rejected by the API server's validation; matches nothing.
    Unknown,
}

impl Operator {
    pub fn parse(s: &str) -> Operator {
        match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            _ => Operator::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::Gt => "Gt",
            Operator::Lt => "Lt",
            Operator::Unknown => "Unknown",
        }
    }
}

/// One `matchExpressions` (or `matchFields`) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn new(key: &str, operator: Operator, values: &[&str]) -> Self {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Whether a node whose value for the key is `value` satisfies it.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let number = |s: &str| s.trim().parse::<i64>().ok();
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let ([bound], Some(have)) = (self.values.as_slice(), value.and_then(number)) else {
                    return false;
                };
                let Some(bound) = number(bound) else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    have > bound
                } else {
                    have < bound
                }
            }
            Operator::Unknown => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            Operator::Exists | Operator::DoesNotExist => {
                write!(f, "{} {}", self.key, self.operator.as_str())
            }
            _ => write!(
                f,
                "{} {} [{}]",
                self.key,
                self.operator.as_str(),
                self.values.join(",")
            ),
        }
    }
}

/// One `nodeSelectorTerms` entry: all of its requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeTerm {
    pub expressions: Vec<Requirement>,
    /// `matchFields`: keys other than `metadata.name` match nothing.
    pub fields: Vec<Requirement>,
}

impl NodeTerm {
    fn matches(&self, name: &str, labels: &dyn Fn(&str) -> Option<String>) -> bool {
        if self.expressions.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.expressions
            .iter()
            .all(|r| r.matches(labels(&r.key).as_deref()))
            && self
                .fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.matches(Some(name)))
    }
}

/// Labels and taints shared by a set of VM nodes (hostname left out).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NodeClass {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl NodeClass {
    /// A class for nodes with these labels and taints: the hostname label is
    /// dropped and taints are sorted, so equal nodes get equal classes.
    pub fn new(mut labels: BTreeMap<String, String>, mut taints: Vec<Taint>) -> Self {
        labels.remove(HOSTNAME_LABEL);
        taints.sort();
        taints.dedup();
        NodeClass { labels, taints }
    }
}

/// Why a node is not a place for a pod (the first rule it breaks, in the
/// order kube-scheduler's filters report them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `NoSchedule`/`NoExecute` taint the pod does not tolerate.
    Taint(Taint),
    /// `nodeSelector` wants `key=want`; the node has `have`.
    NodeSelector {
        key: String,
        want: String,
        have: Option<String>,
    },
    /// No term of the required node affinity matches.
    NodeAffinity,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Taint(t) => write!(f, "untolerated taint {t}"),
            Refusal::NodeSelector { key, want, have } => match have {
                Some(h) => write!(f, "nodeSelector {key}={want}, node has {key}={h}"),
                None => write!(f, "nodeSelector {key}={want}, node has no {key}"),
            },
            Refusal::NodeAffinity => write!(f, "required node affinity does not match"),
        }
    }
}

/// A pod's hard placement rules among VM nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms (ORed); `None`: no required affinity.
    pub affinity: Option<Vec<NodeTerm>>,
    pub tolerations: Vec<Toleration>,
}

impl Placement {
    /// Whether it names the node itself (hostname label or `metadata.name`),
    /// so that node classes cannot judge it.
    pub fn per_node(&self) -> bool {
        self.node_selector.contains_key(HOSTNAME_LABEL)
            || self.affinity.iter().flatten().any(|t| {
                !t.fields.is_empty() || t.expressions.iter().any(|r| r.key == HOSTNAME_LABEL)
            })
    }

    /// The first taint that keeps the pod off (one it does not tolerate).
    pub fn untolerated<'t>(&self, taints: &'t [Taint]) -> Option<&'t Taint> {
        taints
            .iter()
            .find(|t| t.effect.repels() && !self.tolerations.iter().any(|x| x.tolerates(t)))
    }

    /// Why a node named `name` of class `class` is no place for the pod, or
    /// `None` when it is. `name` stands in for the hostname label.
    pub fn refusal(&self, class: &NodeClass, name: &str) -> Option<Refusal> {
        if let Some(t) = self.untolerated(&class.taints) {
            return Some(Refusal::Taint(t.clone()));
        }
        let label = |key: &str| -> Option<String> {
            if key == HOSTNAME_LABEL {
                return class
                    .labels
                    .get(key)
                    .cloned()
                    .or_else(|| Some(name.to_string()));
            }
            class.labels.get(key).cloned()
        };
        for (key, want) in &self.node_selector {
            let have = label(key);
            if have.as_deref() != Some(want.as_str()) {
                return Some(Refusal::NodeSelector {
                    key: key.clone(),
                    want: want.clone(),
                    have,
                });
            }
        }
        if let Some(terms) = &self.affinity
            && !terms.iter().any(|t| t.matches(name, &label))
        {
            return Some(Refusal::NodeAffinity);
        }
        None
    }

    pub fn admits(&self, class: &NodeClass, name: &str) -> bool {
        self.refusal(class, name).is_none()
    }

    /// The one value it requires for `key`, if it names exactly one (through
    /// `nodeSelector`, or an `In` with one value in every affinity term).
    pub fn single_value(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.node_selector.get(key) {
            return Some(v);
        }
        let terms = self.affinity.as_ref()?;
        let mut found: Option<&str> = None;
        for t in terms {
            let v =
                t.expressions
                    .iter()
                    .find_map(|r| match (&r.operator, r.values.as_slice()) {
                        (Operator::In, [v]) if r.key == key => Some(v.as_str()),
                        _ => None,
                    })?;
            if found.is_some_and(|f| f != v) {
                return None;
            }
            found = Some(v);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn class(labels: &[(&str, &str)], taints: Vec<Taint>) -> NodeClass {
        NodeClass::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints,
        )
    }

    #[test]
    fn tolerations_match_taints_as_upstream_does() {
        use TaintEffect::*;
        use TolerationOperator::*;
        let gpu = taint("sku", "gpu", NoSchedule);
        let tol = |key: &str, operator, value: &str, effect| Toleration {
            key: key.into(),
            operator,
            value: value.into(),
            effect,
        };
        let cases = [
            (tol("sku", Equal, "gpu", Some(NoSchedule)), true),
            (tol("sku", Equal, "gpu", None), true),
            (tol("sku", Equal, "cpu", None), false),
            (tol("sku", Exists, "", None), true),
            (tol("sku", Exists, "", Some(NoExecute)), false),
            (tol("", Exists, "", None), true),
            (tol("other", Exists, "", None), false),
            (tol("sku", Unknown, "gpu", None), false),
        ];
        for (t, want) in cases {
            assert_eq!(t.tolerates(&gpu), want, "{t:?}");
        }
        let p = Placement::default();
        assert!(
            p.untolerated(&[taint("x", "", PreferNoSchedule)]).is_none(),
            "PreferNoSchedule only scores"
        );
        assert_eq!(
            p.untolerated(&[taint("x", "", NoExecute)]),
            Some(&taint("x", "", NoExecute))
        );
    }

    #[test]
    fn requirements_follow_label_selector_semantics() {
        use Operator::*;
        let r = Requirement::new;
        assert!(r("k", In, &["a", "b"]).matches(Some("b")));
        assert!(!r("k", In, &["a"]).matches(None));
        assert!(r("k", NotIn, &["a"]).matches(None));
        assert!(!r("k", NotIn, &["a"]).matches(Some("a")));
        assert!(r("k", Exists, &[]).matches(Some("")));
        assert!(r("k", DoesNotExist, &[]).matches(None));
        assert!(r("k", Gt, &["3"]).matches(Some("4")));
        assert!(!r("k", Gt, &["3"]).matches(Some("3")));
        assert!(!r("k", Gt, &["3"]).matches(None));
        assert!(!r("k", Gt, &["3"]).matches(Some("four")));
        assert!(
            !r("k", Gt, &["3", "4"]).matches(Some("9")),
            "one value only"
        );
        assert!(r("k", Lt, &["-1"]).matches(Some("-2")));
        assert!(!r("k", Unknown, &["a"]).matches(Some("a")));
    }

    #[test]
    fn selector_affinity_and_taints_together() {
        let pool1 = class(&[("agentpool", "nodepool1"), ("zone", "1")], vec![]);
        let gpu = class(
            &[("agentpool", "gpu")],
            vec![taint("sku", "gpu", TaintEffect::NoSchedule)],
        );
        let by_affinity = Placement {
            affinity: Some(vec![NodeTerm {
                expressions: vec![Requirement::new("agentpool", Operator::In, &["nodepool1"])],
                fields: vec![],
            }]),
            ..Placement::default()
        };
        assert!(by_affinity.admits(&pool1, "n1"));
        assert_eq!(by_affinity.refusal(&gpu, "g1"), {
            Some(Refusal::Taint(taint("sku", "gpu", TaintEffect::NoSchedule)))
        });
        assert_eq!(by_affinity.single_value("agentpool"), Some("nodepool1"));
        let by_selector = Placement {
            node_selector: [("zone".to_string(), "2".to_string())].into(),
            ..Placement::default()
        };
        assert_eq!(
            by_selector.refusal(&pool1, "n1").map(|r| r.to_string()),
            Some("nodeSelector zone=2, node has zone=1".into())
        );
        let empty_term = Placement {
            affinity: Some(vec![NodeTerm::default()]),
            ..Placement::default()
        };
        assert!(
            !empty_term.admits(&pool1, "n1"),
            "an empty term matches nothing"
        );
    }

    #[test]
    fn hostname_and_metadata_name_are_judged_per_node() {
        let c = class(&[("kubernetes.io/hostname", "n1"), ("a", "b")], vec![]);
        assert!(!c.labels.contains_key(HOSTNAME_LABEL), "classes drop it");
        let by_host = Placement {
            node_selector: [(HOSTNAME_LABEL.to_string(), "n2".to_string())].into(),
            ..Placement::default()
        };
        assert!(by_host.per_node());
        assert!(by_host.admits(&c, "n2"));
        assert!(!by_host.admits(&c, "n1"));
        let by_field = Placement {
            affinity: Some(vec![NodeTerm {
                expressions: vec![],
                fields: vec![Requirement::new("metadata.name", Operator::In, &["n1"])],
            }]),
            ..Placement::default()
        };
        assert!(by_field.per_node());
        assert!(by_field.admits(&c, "n1"));
        assert!(!by_field.admits(&c, "n3"));
        assert!(!Placement::default().per_node());
    }
}
