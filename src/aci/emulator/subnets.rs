//! The emulator's virtual network: subnets defined through
//! `POST /_emulator/subnets`, the private addresses they hand out, and ARM's
//! rules about container groups in a VNet.
//!
//! Rules and their sources (ARM's codes and wording where they are public):
//! - Azure reserves the first four and the last address of every subnet
//!   (network, default gateway, two for Azure DNS, broadcast):
//!   learn.microsoft.com/azure/virtual-network/virtual-networks-faq, "Are
//!   there any restrictions on using IP addresses within these subnets?".
//!   The smallest IPv4 subnet is a /29 (same FAQ).
//! - A full subnet: `SubnetIsFull`, "Subnet {name} with address prefix
//!   {prefix} does not have enough capacity for 1 IP addresses."
//!   (MicrosoftDocs/azure-docs#88211, an ARM answer quoted verbatim).
//! - A subnet without the ACI delegation: `SubnetMissingRequiredDelegation`,
//!   "Subnet missing required delegation 'Microsoft.ContainerInstance' for
//!   container group '{group}'." (Azure/dev-box-images#8, ARM answer).
//! - A subnet that does not exist: Microsoft.Network's
//!   `InvalidResourceReference`, "Resource {subnet} referenced by resource
//!   {group} was not found. Please make sure that the referenced resource
//!   exists, and that both resources are in the same region."
//!   (MicrosoftDocs/azure-docs#60273 quotes this wording for ACI).
//! - `ipAddress.type: Private` without a subnet:
//!   `PrivateIPAddressNotSupported`, "IP Address type in container group
//!   '{group}' is invalid. Private IP address is only supported when network
//!   profile is defined." (aztfmod/terraform-azurerm-caf#1145, ARM answer).
//! - A public IP on a group in a subnet: "IP Address type can't be public
//!   when network profile is set." (hashicorp/terraform-provider-azurerm#19579
//!   quotes the message; its code is not public, so the emulator answers
//!   `PublicIPAddressNotSupported`, the counterpart of the private rule's).
//! - A DNS name label without a public IP: "DNS name label for container
//!   group is only supported when IP Address type is public."
//!   (Azure/aci-deploy#53; the code is not public either: the emulator
//!   answers `DnsNameLabelNotSupported`).
//! - learn.microsoft.com container-instances-virtual-network-concepts,
//!   "Unsupported networking scenarios": "Public IP or DNS label".
//!
//! ARM does not say what it returns for a group in a subnet whose body has
//! no `ipAddress` (a pod without ports: `ipAddress` requires `ports`); the
//! emulator answers `ipAddress: {type: Private, ports: [], ip}` so the
//! private address, which ACI does assign, can be read.

use super::state::PutError;
use crate::aci::model::{ContainerGroup, RESOURCE_TYPE};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The delegation ACI needs on a subnet.
pub const ACI_DELEGATION: &str = "Microsoft.ContainerInstance/containerGroups";

/// A subnet as `POST /_emulator/subnets` takes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetDefinition {
    /// ARM id, `/subscriptions/…/providers/Microsoft.Network/virtualNetworks/V/subnets/S`.
    pub id: String,
    /// IPv4 CIDR, e.g. `10.240.8.0/24` (or `127.0.8.0/24` for tests whose
    /// probes must reach a local listener).
    pub address_prefix: String,
    /// Service names the subnet is delegated to
    /// (`Microsoft.ContainerInstance/containerGroups` for ACI).
    #[serde(default)]
    pub delegations: Vec<String>,
}

/// A subnet as `GET /_emulator/subnets` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSnapshot {
    pub id: String,
    pub address_prefix: String,
    pub delegations: Vec<String>,
    /// Addresses handed out, lowest first.
    pub used: Vec<String>,
    /// Addresses still free (the reserved five excluded).
    pub free: u64,
}

#[derive(Debug, Clone)]
struct Subnet {
    def: SubnetDefinition,
    name: String,
    base: u32,
    prefix: u8,
    used: BTreeSet<Ipv4Addr>,
}

impl Subnet {
    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
    /// Usable offsets: after the first four, before the last.
    fn usable(&self) -> std::ops::Range<u64> {
        4..self.size() - 1
    }
    fn delegated(&self) -> bool {
        self.def
            .delegations
            .iter()
            .any(|d| d.eq_ignore_ascii_case(ACI_DELEGATION))
    }
    fn first_free(&self) -> Option<Ipv4Addr> {
        self.usable()
            .map(|o| Ipv4Addr::from(self.base.wrapping_add(o as u32)))
            .find(|ip| !self.used.contains(ip))
    }
    fn snapshot(&self) -> SubnetSnapshot {
        let usable = self.usable().end - self.usable().start;
        SubnetSnapshot {
            id: self.def.id.clone(),
            address_prefix: self.def.address_prefix.clone(),
            delegations: self.def.delegations.clone(),
            used: self.used.iter().map(Ipv4Addr::to_string).collect(),
            free: usable.saturating_sub(self.used.len() as u64),
        }
    }
}

/// `a.b.c.d/n` with no host bits set, n in 1..=29.
fn parse_cidr(s: &str) -> Result<(u32, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("addressPrefix {s:?} is not a CIDR (a.b.c.d/n)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|e| format!("addressPrefix {s:?}: {e}"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("addressPrefix {s:?}: the prefix length is not a number"))?;
    if !(1..=29).contains(&len) {
        return Err(format!(
            "addressPrefix {s:?}: Azure subnets are /1 to /29 (the smallest has 3 usable addresses)"
        ));
    }
    let base = u32::from(addr);
    let mask = u32::MAX << (32 - u32::from(len));
    if base & !mask != 0 {
        return Err(format!(
            "addressPrefix {s:?} has host bits set (the network is {}/{len})",
            Ipv4Addr::from(base & mask)
        ));
    }
    Ok((base, len))
}

/// The subnets, keyed by lowercased id (ARM ids compare case-insensitively).
#[derive(Debug, Clone, Default)]
pub struct Subnets {
    by_id: BTreeMap<String, Subnet>,
}

impl Subnets {
    /// Define (or redefine) a subnet. A subnet with addresses in use keeps
    /// its prefix, as Azure refuses to change the prefix of a subnet in use.
    pub fn define(&mut self, def: SubnetDefinition) -> Result<SubnetSnapshot, String> {
        let parsed =
            crate::aci::translate::SubnetId::parse(&def.id).map_err(|e| format!("id: {e}"))?;
        let (base, prefix) = parse_cidr(&def.address_prefix)?;
        let key = def.id.to_ascii_lowercase();
        let used = match self.by_id.get(&key) {
            Some(old) if !old.used.is_empty() && (old.base, old.prefix) != (base, prefix) => {
                return Err(format!(
                    "subnet {} has {} address(es) in use; its addressPrefix cannot change",
                    def.id,
                    old.used.len()
                ));
            }
            Some(old) => old.used.clone(),
            None => BTreeSet::new(),
        };
        let subnet = Subnet {
            name: parsed.name().to_string(),
            def,
            base,
            prefix,
            used,
        };
        let snap = subnet.snapshot();
        self.by_id.insert(key, subnet);
        Ok(snap)
    }

    pub fn snapshot(&self) -> Vec<SubnetSnapshot> {
        self.by_id.values().map(Subnet::snapshot).collect()
    }

    /// ARM's network checks on a PUT body; the subnet the group goes to
    /// (its key) when it names one.
    pub fn check(&self, name: &str, g: &ContainerGroup) -> Result<Option<String>, PutError> {
        let bad = |code: &'static str, message: String| Err(PutError::Invalid { code, message });
        let p = &g.properties;
        let ip_type = p.ip_address.as_ref().map(|i| i.ip_type.as_str());
        let is = |t: &str| ip_type.is_some_and(|x| x.eq_ignore_ascii_case(t));
        let Some(first) = p.subnet_ids.first() else {
            if is("Private") {
                return bad(
                    "PrivateIPAddressNotSupported",
                    format!(
                        "IP Address type in container group '{name}' is invalid. Private IP address is only supported when network profile is defined."
                    ),
                );
            }
            return Ok(None);
        };
        if is("Public") {
            return bad(
                "PublicIPAddressNotSupported",
                "IP Address type can't be public when network profile is set.".to_string(),
            );
        }
        if p.ip_address
            .as_ref()
            .is_some_and(|i| i.dns_name_label.as_deref().is_some_and(|l| !l.is_empty()))
        {
            return bad(
                "DnsNameLabelNotSupported",
                "DNS name label for container group is only supported when IP Address type is public."
                    .to_string(),
            );
        }
        let group_id =
            g.id.clone()
                .unwrap_or_else(|| format!("{RESOURCE_TYPE}/{name}"));
        for s in &p.subnet_ids {
            let Some(subnet) = self.by_id.get(&s.id.to_ascii_lowercase()) else {
                return bad(
                    "InvalidResourceReference",
                    format!(
                        "Resource {} referenced by resource {group_id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.",
                        s.id
                    ),
                );
            };
            if !subnet.delegated() {
                return bad(
                    "SubnetMissingRequiredDelegation",
                    format!(
                        "Subnet missing required delegation 'Microsoft.ContainerInstance' for container group '{name}'."
                    ),
                );
            }
        }
        Ok(Some(first.id.to_ascii_lowercase()))
    }

    /// Whether `key` can hand out one more address; ARM's `SubnetIsFull` if not.
    pub fn has_room(&self, key: &str) -> Result<(), PutError> {
        match self.by_id.get(key) {
            Some(s) if s.first_free().is_none() => Err(PutError::Invalid {
                code: "SubnetIsFull",
                message: format!(
                    "Subnet {} with address prefix {} does not have enough capacity for 1 IP addresses.",
                    s.name, s.def.address_prefix
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The lowest free address of `key`, now taken.
    pub fn allocate(&mut self, key: &str) -> Option<Ipv4Addr> {
        let s = self.by_id.get_mut(key)?;
        let ip = s.first_free()?;
        s.used.insert(ip);
        Some(ip)
    }

    pub fn release(&mut self, key: &str, ip: Ipv4Addr) {
        if let Some(s) = self.by_id.get_mut(key) {
            s.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/subscriptions/sub-1/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci";

    fn def(prefix: &str) -> SubnetDefinition {
        SubnetDefinition {
            id: ID.into(),
            address_prefix: prefix.into(),
            delegations: vec![ACI_DELEGATION.into()],
        }
    }

    #[test]
    fn a_slash_29_hands_out_three_addresses_skipping_the_reserved_five() {
        let mut s = Subnets::default();
        let snap = s.define(def("10.1.2.0/29")).expect("valid");
        assert_eq!(snap.free, 3);
        let key = ID.to_ascii_lowercase();
        let got: Vec<String> = (0..3)
            .map(|_| s.allocate(&key).expect("room").to_string())
            .collect();
        assert_eq!(got, ["10.1.2.4", "10.1.2.5", "10.1.2.6"]);
        assert_eq!(s.allocate(&key), None, ".7 is the broadcast address");
        match s.has_room(&key) {
            Err(PutError::Invalid { code, message }) => {
                assert_eq!(code, "SubnetIsFull");
                assert_eq!(
                    message,
                    "Subnet aci with address prefix 10.1.2.0/29 does not have enough capacity for 1 IP addresses."
                );
            }
            other => panic!("{other:?}"),
        }
        s.release(&key, "10.1.2.5".parse().expect("ip"));
        assert_eq!(s.allocate(&key), Some("10.1.2.5".parse().expect("ip")));
    }

    #[test]
    fn definitions_are_checked() {
        let mut s = Subnets::default();
        for (prefix, why) in [
            ("10.1.2.0", "not a CIDR"),
            ("10.1.2.0/30", "/1 to /29"),
            ("10.1.2.1/24", "host bits"),
            ("10.1.2.300/24", "addressPrefix"),
        ] {
            let e = s.define(def(prefix)).expect_err(prefix);
            assert!(e.contains(why), "{prefix}: {e}");
        }
        let e = s
            .define(SubnetDefinition {
                id: "/subscriptions/s/vnet".into(),
                ..def("10.0.0.0/24")
            })
            .expect_err("bad id");
        assert!(e.starts_with("id: "), "{e}");
        // A prefix in use cannot change.
        s.define(def("10.0.0.0/24")).expect("ok");
        s.allocate(&ID.to_ascii_lowercase()).expect("ip");
        let e = s.define(def("10.0.1.0/24")).expect_err("in use");
        assert!(e.contains("in use"), "{e}");
        assert!(s.define(def("10.0.0.0/24")).is_ok(), "same prefix is fine");
    }
}
