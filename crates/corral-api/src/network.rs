//! Networks and NICs: managed networks (`nat`, `isolated`), existing host bridges
//! (`bridge`), user-mode NICs (passt), port forwards and per-VM firewall rules.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;

/// The NAT network corrald makes on its first start as root, like libvirt's `default`.
pub const DEFAULT_NETWORK: &str = "default";
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// What kind of managed network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// A bridge Corral makes, with DHCP/DNS (dnsmasq) and masquerade to the host's uplinks.
    Nat,
    /// A bridge Corral makes with no way out: VM-to-VM (and host) traffic only.
    Isolated,
    /// An existing host bridge Corral attaches NICs to and never changes.
    Bridge,
}

impl NetworkType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Nat => "nat",
            NetworkType::Isolated => "isolated",
            NetworkType::Bridge => "bridge",
        }
    }
}

/// What a network driver can do, so callers ask "can it forward ports?" rather than
/// "is it nat?".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkCapabilities {
    /// Corral makes (and removes) the bridge.
    pub managed_bridge: bool,
    /// DHCP and DNS from dnsmasq, with static reservations.
    pub dhcp: bool,
    /// VMs reach beyond the host (masquerade).
    pub outbound: bool,
    /// Host ports forwarded into VMs.
    pub port_forwards: bool,
    /// Per-VM nftables firewall rules (tap-based NICs).
    pub firewall: bool,
    /// 802.1Q tags per NIC.
    pub vlan: bool,
}

/// One network driver as `corral host info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkDriverInfo {
    pub name: String,
    pub capabilities: NetworkCapabilities,
    pub available: bool,
    /// Why not, with a hint, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/networks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique on the host.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// The host's address on the bridge with the prefix, e.g. `10.0.5.1/24` (nat,
    /// isolated). Default for nat: a free `10.X.Y.1/24`; isolated without it has no
    /// host address and no DHCP.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Serve DHCP and DNS on the network (nat: default on; isolated: default on when
    /// it has a subnet).
    #[serde(default)]
    pub dhcp: Option<bool>,
    /// `bridge`: the existing host bridge. `nat`/`isolated`: the bridge to make
    /// (default `corralN`).
    #[serde(default)]
    pub bridge: Option<String>,
}

/// A managed network as stored: the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// The Linux bridge NICs are attached to.
    pub bridge: String,
    /// Host address and prefix on the bridge (`10.0.5.1/24`); `None` for an existing
    /// bridge or an isolated network without one.
    #[serde(default)]
    pub subnet: Option<String>,
    pub dhcp: bool,
    /// Port forwards from the host into VMs (nat only).
    #[serde(default)]
    pub forwards: Vec<PortForward>,
}

/// `GET /api/v1/networks/{name}`: the spec and what the host really has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    #[serde(flatten)]
    pub spec: NetworkSpec,
    pub status: NetworkStatus,
    /// VMs with a NIC on this network.
    pub used_by: Vec<String>,
    /// DHCP leases handed out now.
    #[serde(default)]
    pub leases: Vec<Lease>,
}

/// What the host has for a network right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkStatus {
    /// The bridge exists and is up.
    pub bridge_up: bool,
    /// dnsmasq runs for it (networks with DHCP).
    pub dhcp_running: bool,
    /// Problems that keep traffic from flowing, in plain sentences with a hint
    /// (e.g. another table's FORWARD policy drops the network's traffic).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub mac: String,
    #[schema(value_type = String, format = Ipv4)]
    pub address: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Seconds since the epoch when the lease ends (0: never).
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a VM's port (DNAT in Corral's nftables table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub protocol: Protocol,
    pub host_port: u16,
    pub vm: String,
    pub guest_port: u16,
}

/// `POST /api/v1/networks/{name}/forwards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddForwardRequest {
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    pub host_port: u16,
    pub vm: String,
    pub guest_port: u16,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// How a NIC reaches the outside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// User-mode networking with passt: outbound only, no root, no bridge.
    #[default]
    User,
    /// A managed network (`source` names it).
    Network,
    /// An existing host bridge (`source` names it).
    Bridge,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::User => "user",
            NetworkKind::Network => "network",
            NetworkKind::Bridge => "bridge",
        }
    }
}

/// One NIC of a create request (`--network SPEC`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    pub kind: NetworkKind,
    /// The network (`network`) or host bridge (`bridge`).
    #[serde(default)]
    pub source: Option<String>,
    /// A fixed MAC; default: a free one in 52:54:00.
    #[serde(default)]
    pub mac: Option<String>,
    /// A static DHCP reservation on a managed network with DHCP; default: one is
    /// picked from the subnet.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    /// An 802.1Q tag for the NIC's port (bridged NICs, VLAN-filtering bridges).
    #[serde(default)]
    pub vlan: Option<u16>,
}

impl NicRequest {
    pub fn user() -> NicRequest {
        NicRequest {
            kind: NetworkKind::User,
            source: None,
            mac: None,
            ip: None,
            vlan: None,
        }
    }

    /// What needs no host: shapes of MAC, VLAN, and which fields fit which kind.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let bad = |f: &str, msg: &str, hint: &str| {
            Err(ValidationError::new(format!("{field}.{f}"), msg).hint(hint))
        };
        match (self.kind, &self.source) {
            (NetworkKind::User, Some(_)) => {
                return bad("source", "a user NIC has no source", "drop the source");
            }
            (NetworkKind::Network | NetworkKind::Bridge, None) => {
                return bad(
                    "source",
                    "missing: which network or bridge",
                    "e.g. network=default or bridge=br0",
                );
            }
            _ => {}
        }
        if let Some(mac) = &self.mac {
            if !valid_mac(mac) {
                return bad(
                    "mac",
                    &format!("{mac:?} is not a unicast MAC address"),
                    "six hex bytes like 52:54:00:12:34:56, first byte even",
                );
            }
        }
        if self.ip.is_some() && self.kind != NetworkKind::Network {
            return bad(
                "ip",
                "a reserved address needs a managed network with DHCP",
                "use network=NAME,ip=ADDRESS",
            );
        }
        match self.vlan {
            Some(v) if !(1..=4094).contains(&v) => {
                bad("vlan", &format!("{v} is not a VLAN id"), "1 to 4094")
            }
            Some(_) if self.kind == NetworkKind::User => {
                bad("vlan", "a user NIC has no VLAN", "use a bridged network")
            }
            _ => Ok(()),
        }
    }
}

/// Lower-case `aa:bb:cc:dd:ee:ff` whose first byte is unicast.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// A NIC as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub kind: NetworkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `52:54:00:xx:xx:xx`, unique, fixed at create.
    pub mac: String,
    /// The DHCP reservation on a managed network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// Which way a firewall rule looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the VM.
    #[default]
    In,
    /// Traffic from the VM.
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirewallAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirewallProtocol {
    Tcp,
    Udp,
    Icmp,
}

/// One per-VM firewall rule; a VM's rules are checked in order, first match wins,
/// and what matches none is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub action: FirewallAction,
    #[serde(default)]
    pub direction: Direction,
    /// Any protocol when absent.
    #[serde(default)]
    pub protocol: Option<FirewallProtocol>,
    /// The VM's port (in) or the remote port (out); tcp/udp only.
    #[serde(default)]
    pub port: Option<u16>,
    /// The remote side's addresses, e.g. `10.0.0.0/8`; any when absent.
    #[serde(default)]
    pub cidr: Option<String>,
}

impl FirewallRule {
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.port.is_some()
            && !matches!(
                self.protocol,
                Some(FirewallProtocol::Tcp | FirewallProtocol::Udp)
            )
        {
            return Err(ValidationError::new(
                format!("{field}.port"),
                "a port needs protocol tcp or udp",
            )
            .hint("add --protocol tcp"));
        }
        if let Some(cidr) = &self.cidr {
            parse_cidr(cidr).map_err(|msg| {
                ValidationError::new(format!("{field}.cidr"), msg).hint("e.g. 192.168.1.0/24")
            })?;
        }
        Ok(())
    }
}

/// `10.0.0.0/8` or a bare address (a /32): the network address and the prefix.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p),
        None => (text, "32"),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{text:?}: the prefix must be 0 to 32"))?;
    Ok((addr, prefix))
}

/// `PUT /api/v1/vms/{name}/firewall`: the VM's whole rule list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRules {
    pub rules: Vec<FirewallRule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert!(valid_mac("52:54:00:ab:cd:ef"));
        assert!(!valid_mac("53:54:00:ab:cd:ef"), "multicast");
        assert!(!valid_mac("52:54:00:ab:cd"));
        assert!(!valid_mac("52-54-00-ab-cd-ef"));
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert_eq!(parse_cidr("1.2.3.4").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
    }

    #[test]
    fn nic_fields_fit_their_kind() {
        let mut nic = NicRequest::user();
        assert!(nic.validate("networks[0]").is_ok());
        nic.vlan = Some(5);
        let e = nic.validate("networks[0]").unwrap_err();
        assert_eq!(e.field, "networks[0].vlan");
        nic.kind = NetworkKind::Bridge;
        assert_eq!(
            nic.validate("networks[0]").unwrap_err().field,
            "networks[0].source"
        );
        nic.source = Some("br0".into());
        assert!(nic.validate("networks[0]").is_ok());
        nic.vlan = Some(4095);
        assert!(nic.validate("networks[0]").is_err());
    }
}
