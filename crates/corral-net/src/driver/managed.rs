//! The three drivers: `nat` and `isolated` (a bridge Corral makes, optionally with an
//! address and dnsmasq) and `bridge` (an existing host bridge Corral never changes).

use std::path::Path;

use async_trait::async_trait;
use corral_api::network::{parse_cidr, Lease, NetworkCapabilities, NetworkSpec, NetworkStatus};

use super::{need_net_admin, need_tool, NetContext, NetworkDriver, Reservation, Unavailable};
use crate::dnsmasq::{self, DnsmasqConfig};
use crate::link::{self, network_of, overlaps};
use crate::{Cidr, NetError};

/// `nat` (`outbound`) and `isolated`.
pub(super) struct Managed {
    pub outbound: bool,
}

/// `bridge`: an existing host bridge.
pub(super) struct HostBridge;

fn invalid(field: &'static str, message: String, hint: &str) -> NetError {
    NetError::Invalid {
        field,
        message,
        hint: hint.into(),
    }
}

/// The spec's subnet as (host address, prefix), refusing network/broadcast addresses.
fn subnet_of(spec: &NetworkSpec) -> Result<Option<Cidr>, NetError> {
    let Some(text) = &spec.subnet else {
        return Ok(None);
    };
    let hint = "the host's address and the prefix, e.g. 10.0.5.1/24";
    let c = parse_cidr(text).map_err(|m| invalid("subnet", m, hint))?;
    if !(8..=30).contains(&c.1) {
        return Err(invalid(
            "subnet",
            format!("{text}: the prefix must be 8 to 30"),
            hint,
        ));
    }
    let net = u32::from(network_of(c));
    let bcast = net | (u32::MAX >> c.1);
    if u32::from(c.0) == net || u32::from(c.0) == bcast {
        return Err(invalid(
            "subnet",
            format!(
                "{text}: {} is the subnet's network or broadcast address",
                c.0
            ),
            hint,
        ));
    }
    Ok(Some(c))
}

/// dnsmasq's config for a managed network with DHCP, `None` without.
fn dhcp_config(spec: &NetworkSpec, outbound: bool) -> Result<Option<DnsmasqConfig>, NetError> {
    Ok(subnet_of(spec)?
        .filter(|_| spec.dhcp)
        .map(|subnet| DnsmasqConfig {
            network: spec.name.clone(),
            bridge: spec.bridge.clone(),
            subnet,
            router: outbound,
        }))
}

fn make_dir(dir: &Path) -> Result<(), NetError> {
    std::fs::create_dir_all(dir).map_err(|source| NetError::Io {
        what: format!("making {}", dir.display()),
        source,
    })
}

fn remove_dir(dir: &Path) -> Result<(), NetError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Io {
            what: format!("removing {}", dir.display()),
            source,
        }),
    }
}

fn no_dhcp(spec: &NetworkSpec, hosts: &[Reservation]) -> Result<(), NetError> {
    if hosts.is_empty() {
        return Ok(());
    }
    Err(invalid(
        "ip",
        format!(
            "network {} has no DHCP, so addresses cannot be reserved",
            spec.name
        ),
        "drop the NIC's ip, or use a network with DHCP",
    ))
}

#[async_trait]
impl NetworkDriver for Managed {
    fn capabilities(&self) -> NetworkCapabilities {
        NetworkCapabilities {
            managed_bridge: true,
            dhcp: true,
            outbound: self.outbound,
            port_forwards: self.outbound,
            firewall: true,
            vlan: false,
        }
    }

    fn availability(&self) -> Result<(), Unavailable> {
        need_net_admin()?;
        need_tool("nft", "nftables")?;
        if self.outbound {
            need_tool("dnsmasq", "dnsmasq-base")?;
        }
        Ok(())
    }

    async fn check(&self, spec: &NetworkSpec) -> Result<(), NetError> {
        link::check_ifname(&spec.bridge, "bridge")?;
        if let Some(kind) = link::link_kind(&spec.bridge).await? {
            return Err(invalid(
                "bridge",
                format!("a {kind} link named {} already exists", spec.bridge),
                "choose another bridge name, or use type bridge to attach to an existing bridge",
            ));
        }
        let subnet = subnet_of(spec)?;
        if self.outbound && subnet.is_none() {
            return Err(invalid(
                "subnet",
                "a nat network needs a subnet".into(),
                "e.g. 10.0.5.1/24",
            ));
        }
        if spec.dhcp && subnet.is_none() {
            return Err(invalid(
                "dhcp",
                "DHCP needs a subnet".into(),
                "give the network a subnet, or turn DHCP off",
            ));
        }
        if !self.outbound && !spec.forwards.is_empty() {
            return Err(invalid(
                "forwards",
                "an isolated network has no port forwards".into(),
                "use a nat network",
            ));
        }
        if spec.dhcp {
            crate::sys::require_tool("dnsmasq", "dnsmasq-base")?;
        }
        if let Some(c) = subnet {
            let taken = link::host_subnets().await?;
            if let Some(t) = taken.iter().find(|t| overlaps(c, **t)) {
                return Err(invalid(
                    "subnet",
                    format!(
                        "{}/{} overlaps {}/{}, which the host already uses",
                        network_of(c),
                        c.1,
                        network_of(*t),
                        t.1
                    ),
                    "choose a subnet no host interface or route is in",
                ));
            }
        }
        Ok(())
    }

    async fn ensure(&self, spec: &NetworkSpec, ctx: &NetContext) -> Result<(), NetError> {
        let subnet = subnet_of(spec)?;
        let dhcp = dhcp_config(spec, self.outbound)?;
        let existed = link::link_kind(&spec.bridge).await?.is_some();
        link::ensure_bridge(&spec.bridge, subnet).await?;
        let rest = async {
            make_dir(&ctx.dir)?;
            if self.outbound {
                link::enable_ip_forward()?;
            }
            match &dhcp {
                Some(cfg) => dnsmasq::ensure_running(cfg, &ctx.dir).await.map(|_| ()),
                // DHCP turned off since: nothing may keep serving.
                None => dnsmasq::stop(&ctx.dir).await,
            }
        };
        let result = rest.await;
        if result.is_err() && !existed {
            // Nothing half-made: the bridge goes again with the failed step.
            let _ = link::delete_link(&spec.bridge).await;
        }
        result
    }

    async fn teardown(&self, spec: &NetworkSpec, ctx: &NetContext) -> Result<(), NetError> {
        dnsmasq::stop(&ctx.dir).await?;
        link::delete_link(&spec.bridge).await?;
        remove_dir(&ctx.dir)
    }

    async fn status(&self, spec: &NetworkSpec, ctx: &NetContext) -> NetworkStatus {
        NetworkStatus {
            bridge_up: link::link_up(&spec.bridge).await.unwrap_or(false),
            dhcp_running: spec.dhcp && dnsmasq::running(&ctx.dir).is_some(),
            warnings: Vec::new(),
        }
    }

    async fn set_reservations(
        &self,
        spec: &NetworkSpec,
        ctx: &NetContext,
        hosts: &[Reservation],
    ) -> Result<(), NetError> {
        if dhcp_config(spec, self.outbound)?.is_none() {
            return no_dhcp(spec, hosts);
        }
        dnsmasq::set_reservations(&ctx.dir, hosts)
    }

    fn leases(&self, ctx: &NetContext) -> Vec<Lease> {
        dnsmasq::leases(&ctx.dir)
    }
}

impl HostBridge {
    async fn check_bridge(name: &str) -> Result<(), NetError> {
        link::check_ifname(name, "bridge")?;
        match link::link_kind(name).await? {
            Some(kind) if kind == "bridge" => Ok(()),
            Some(kind) => Err(invalid(
                "bridge",
                format!("{name} is a {kind} link, not a bridge"),
                "name a Linux bridge (ip -d link show type bridge lists them)",
            )),
            None => Err(invalid(
                "bridge",
                format!("bridge {name} does not exist on this host"),
                "create it first (e.g. ip link add br0 type bridge), or use a nat network",
            )),
        }
    }
}

#[async_trait]
impl NetworkDriver for HostBridge {
    fn capabilities(&self) -> NetworkCapabilities {
        NetworkCapabilities {
            managed_bridge: false,
            dhcp: false,
            outbound: false,
            port_forwards: false,
            firewall: true,
            vlan: link::vlan_filtering_supported(),
        }
    }

    fn availability(&self) -> Result<(), Unavailable> {
        need_net_admin()
    }

    async fn check(&self, spec: &NetworkSpec) -> Result<(), NetError> {
        Self::check_bridge(&spec.bridge).await?;
        let extra = if spec.subnet.is_some() {
            Some("subnet")
        } else if spec.dhcp {
            Some("dhcp")
        } else if !spec.forwards.is_empty() {
            Some("forwards")
        } else {
            None
        };
        match extra {
            Some(field) => Err(invalid(
                field,
                format!("a host bridge network has no {field}: the host's network provides it"),
                "drop it, or use a nat network",
            )),
            None => Ok(()),
        }
    }

    async fn ensure(&self, spec: &NetworkSpec, _ctx: &NetContext) -> Result<(), NetError> {
        Self::check_bridge(&spec.bridge).await
    }

    async fn teardown(&self, _spec: &NetworkSpec, ctx: &NetContext) -> Result<(), NetError> {
        remove_dir(&ctx.dir)
    }

    async fn status(&self, spec: &NetworkSpec, _ctx: &NetContext) -> NetworkStatus {
        NetworkStatus {
            bridge_up: link::link_up(&spec.bridge).await.unwrap_or(false),
            dhcp_running: false,
            warnings: Vec::new(),
        }
    }

    async fn set_reservations(
        &self,
        spec: &NetworkSpec,
        _ctx: &NetContext,
        hosts: &[Reservation],
    ) -> Result<(), NetError> {
        no_dhcp(spec, hosts)
    }

    fn leases(&self, _ctx: &NetContext) -> Vec<Lease> {
        Vec::new()
    }
}
