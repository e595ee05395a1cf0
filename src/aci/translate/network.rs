//! Where a pod's container group sits on the network: in a delegated subnet
//! of the cluster's VNet with a private IP (the pod IP), or outside any VNet
//! with a public IP or none.
//!
//! Rules (ARM's, from the 2023-05-01 schema and ACI's VNet documentation):
//! - A group joins a VNet through `subnetIds` (`ContainerGroupSubnetId`:
//!   `id` required, `name` optional — spillway sends the id only, as the AKS
//!   virtual node does). The subnet must be delegated to
//!   [`SUBNET_DELEGATION`].
//! - `ipAddress` requires `type` and a non-empty `ports` list, so a group
//!   whose pod declares no port is sent without `ipAddress`; ACI still gives
//!   it an address in the subnet, read back as `ipAddress.ip`.
//! - A group in a VNet cannot have a public IP or a DNS name label
//!   (learn.microsoft.com container-instances-virtual-network-concepts,
//!   "Unsupported networking scenarios: Public IP or DNS label").
//! - `ipAddress.ip` is documented as "The IP exposed to the public internet":
//!   the schema offers no way to ask for a given private address, so the pod
//!   IP is known only once ACI has created the group (`status.podIP` in the
//!   downward API stays an error, see `translate_env`).
//!
//! Several subnets: a group's subnet is chosen by a hash of its name, so a
//! restarted spillway sends the same body for the same pod (no move, no
//! needless PUT) and groups spread evenly over the subnets. spillway does not
//! read the subnets' free addresses (that would need Microsoft.Network read
//! rights); a full subnet is ARM's `SubnetIsFull`, shown on the pod.
//!
//! What this module must not do: I/O. It only shapes the body.

use super::{Container, IpAddress, IpPort, PodContext, TranslateError, TranslateWarning};
use super::{DNS_LABEL_ANNOTATION, fnv1a64, invalid, public_ip};
use crate::aci::model::ContainerGroupSubnetId;
use crate::policy::{AciNetwork, PublicIp};
use k8s_openapi::api::core::v1 as k8s;

/// The delegation a subnet needs before ACI puts container groups in it.
pub const SUBNET_DELEGATION: &str = "Microsoft.ContainerInstance/containerGroups";

/// Event reason: the pod's DNS name label annotation was not applied
/// because its group has a private IP only.
pub const REASON_DNS_LABEL_IGNORED: &str = "DnsNameLabelIgnored";

/// An ARM subnet id,
/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetId {
    id: String,
    subscription: String,
    resource_group: String,
    vnet: String,
    name: String,
}

impl SubnetId {
    /// Parse and check the shape of an ARM subnet id (the literal segments
    /// are compared case-insensitively, as ARM does).
    pub fn parse(s: &str) -> Result<Self, String> {
        const SHAPE: &str = "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET";
        let bad = |why: &str| format!("{s:?} is not an ARM subnet id ({why}); expected {SHAPE}");
        let trimmed = s.trim();
        let rest = trimmed
            .strip_prefix('/')
            .ok_or_else(|| bad("it must start with '/'"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let literal = [
            (0, "subscriptions"),
            (2, "resourceGroups"),
            (4, "providers"),
            (5, "Microsoft.Network"),
            (6, "virtualNetworks"),
            (8, "subnets"),
        ];
        if parts.len() != 10 {
            return Err(bad(&format!("{} path segments instead of 10", parts.len())));
        }
        for (i, want) in literal {
            if !parts[i].eq_ignore_ascii_case(want) {
                return Err(bad(&format!(
                    "segment {} is {:?}, not {want:?}",
                    i + 1,
                    parts[i]
                )));
            }
        }
        for (i, what) in [
            (1, "subscription"),
            (3, "resource group"),
            (7, "virtual network"),
            (9, "subnet"),
        ] {
            if parts[i].is_empty() {
                return Err(bad(&format!("the {what} is empty")));
            }
        }
        Ok(Self {
            id: trimmed.to_string(),
            subscription: parts[1].to_string(),
            resource_group: parts[3].to_string(),
            vnet: parts[7].to_string(),
            name: parts[9].to_string(),
        })
    }

    /// The id as given.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The subnet's name (last segment).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The virtual network's name.
    pub fn vnet(&self) -> &str {
        &self.vnet
    }
    pub fn subscription(&self) -> &str {
        &self.subscription
    }
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }
}

impl std::str::FromStr for SubnetId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for SubnetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// The network part of a group: its `ipAddress`, its `subnetIds`, and what
/// the owner should hear about.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Placement {
    pub ip_address: Option<IpAddress>,
    pub subnet_ids: Vec<ContainerGroupSubnetId>,
    pub warnings: Vec<TranslateWarning>,
}

/// The subnet a group named `group_name` goes to: a hash of the name picks
/// one, so the choice is stable across restarts.
pub fn choose_subnet<'a>(subnets: &'a [SubnetId], group_name: &str) -> Option<&'a SubnetId> {
    if subnets.is_empty() {
        return None;
    }
    let i = fnv1a64(group_name.as_bytes()) % subnets.len() as u64;
    subnets.get(usize::try_from(i).unwrap_or(0))
}

/// The pod's network placement under its policy's `aci.network` and
/// `publicIp` and the subnets spillway was given.
pub(super) fn placement(
    pod: &k8s::Pod,
    namespace: &str,
    pod_name: &str,
    containers: &[Container],
    ctx: &PodContext<'_>,
) -> Result<Placement, TranslateError> {
    let subnets = &ctx.config.subnets;
    let network = ctx.aci.network.unwrap_or(if subnets.is_empty() {
        AciNetwork::Public
    } else {
        AciNetwork::Private
    });
    if network == AciNetwork::Public {
        return Ok(Placement {
            ip_address: public_ip(pod, namespace, pod_name, containers, ctx)?,
            ..Placement::default()
        });
    }
    if subnets.is_empty() {
        return Err(invalid(
            "spec.aci.network",
            "the pod's BurstPolicy asks for network: private, but spillway has no subnet to put the container group in (--aci-subnet-id)",
        ));
    }
    if ctx.aci.public_ip == PublicIp::Always {
        return Err(invalid(
            "spec.aci.publicIp",
            "the pod's BurstPolicy asks for publicIp: always, but its container group goes to a subnet of the VNet (network: private, the default with --aci-subnet-id) and ACI gives no public IP to such a group; use publicIp: never, or network: public",
        ));
    }
    let mut warnings = Vec::new();
    if let Some(label) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DNS_LABEL_ANNOTATION))
        .filter(|s| !s.is_empty())
    {
        warnings.push(TranslateWarning {
            reason: REASON_DNS_LABEL_IGNORED,
            message: format!(
                "metadata.annotations[{DNS_LABEL_ANNOTATION}]={label:?} is not applied: the container group has a private IP in the VNet, and ACI gives a DNS name label to public IPs only"
            ),
        });
    }
    let mut ports: Vec<IpPort> = Vec::new();
    for c in containers {
        for p in &c.properties.ports {
            let ip_port = IpPort {
                protocol: p.protocol.clone(),
                port: p.port,
            };
            if !ports.contains(&ip_port) {
                ports.push(ip_port);
            }
        }
    }
    let group_name = ctx.config.group_name(namespace, pod_name);
    let subnet = choose_subnet(subnets, &group_name).ok_or_else(|| {
        invalid(
            "spec.aci.network",
            "no subnet to put the container group in (--aci-subnet-id)",
        )
    })?;
    Ok(Placement {
        ip_address: (!ports.is_empty()).then(|| IpAddress {
            ip_type: "Private".to_string(),
            ports,
            ip: None,
            dns_name_label: None,
            fqdn: None,
        }),
        subnet_ids: vec![ContainerGroupSubnetId {
            id: subnet.id().to_string(),
            name: None,
        }],
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/subscriptions/0000-1111/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aci";

    #[test]
    fn parses_a_subnet_id_and_keeps_it_as_given() {
        let s = SubnetId::parse(ID).expect("valid");
        assert_eq!(s.id(), ID);
        assert_eq!(
            (s.subscription(), s.resource_group(), s.vnet(), s.name()),
            ("0000-1111", "rg-net", "aks-vnet", "aci")
        );
        // ARM's literal segments are case-insensitive.
        let lower = ID.replace("resourceGroups", "resourcegroups");
        assert!(SubnetId::parse(&lower).is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_subnet_id_saying_why() {
        for (bad, why) in [
            ("aci", "must start with '/'"),
            (
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v",
                "8 path segments",
            ),
            (
                &ID.replace("Microsoft.Network", "Microsoft.Compute"),
                "segment 6",
            ),
            (&ID.replace("/subnets/", "/subnet/"), "segment 9"),
            (&ID.replace("/rg-net/", "//"), "resource group is empty"),
        ] {
            let e = SubnetId::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("expected /subscriptions/SUB"), "{e}");
        }
    }

    #[test]
    fn the_subnet_choice_is_stable_and_spreads_groups() {
        let subnets: Vec<SubnetId> = (0..3)
            .map(|i| SubnetId::parse(&ID.replace("/aci", &format!("/aci-{i}"))).expect("valid"))
            .collect();
        let mut used = std::collections::BTreeSet::new();
        for i in 0..60 {
            let name = format!("web-frontend-{i}-abc123");
            let first = choose_subnet(&subnets, &name).expect("one");
            assert_eq!(choose_subnet(&subnets, &name), Some(first));
            used.insert(first.name().to_string());
        }
        assert_eq!(used.len(), 3, "{used:?}");
        assert_eq!(choose_subnet(&[], "x"), None);
    }
}
