//! Networks: the manager keeps network definitions in the store and asks each network's
//! driver (found by type) to make the host side. Corral's nftables tables are one
//! ruleset for every network, port forward and VM firewall ([`rules`]), rebuilt from the
//! store whenever one of them changes; NICs are resolved at create and plugged at start
//! ([`nics`]).

mod nic_changes;
mod nics;
mod rules;

pub(crate) use nics::{lease_addresses, LeasesByMac};

use std::net::Ipv4Addr;

use corral_api::{
    parse_cidr, validate_name, CreateNetworkRequest, Network, NetworkSpec, NetworkType,
    ValidationError, DEFAULT_NETWORK,
};
use corral_net::{link, Cidr, NetContext, NetError, NetworkDriver};

use crate::error::{ApiError, ApiResult};
use crate::vm::Manager;

/// One lock for every change to networks, forwards and firewall rules: they all end
/// in the one ruleset.
pub(crate) const NETWORKS_LOCK: &str = "net:";

/// Where default NAT subnets are taken from: the first free `10.161.X.1/24`.
const DEFAULT_SUBNET_BASE: [u8; 2] = [10, 161];

impl Manager {
    /// At start: the `default` NAT network on a root daemon's first start (unless
    /// turned off), then every network's host side made again — after a host reboot
    /// nothing is left — and the ruleset put back.
    pub async fn restore_networks(&self) -> ApiResult<()> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        // Made once per state dir: a user who deletes it does not get it back.
        let marker = self.cfg.state_dir.join("networks").join(".default-made");
        if self.cfg.default_network && self.networking_allowed() && !marker.exists() {
            {
                let req = CreateNetworkRequest {
                    name: DEFAULT_NETWORK.to_string(),
                    kind: NetworkType::Nat,
                    subnet: None,
                    dhcp: None,
                    bridge: None,
                };
                match self.create_network_locked(req).await {
                    Ok(_) => {
                        tracing::info!("made the default NAT network");
                        write_marker(&marker)?;
                    }
                    Err(e) => tracing::warn!("no default network: {}", crate::error::chain(&e)),
                }
            }
        }
        for spec in self.store.list_networks()? {
            if let Err(e) = self.ensure_network(&spec).await {
                // One broken network (its host bridge gone) must not stop the daemon.
                tracing::warn!(network = %spec.name, "not restored: {}", crate::error::chain(&e));
                self.events.emit(
                    None,
                    "network",
                    format!(
                        "network '{}' could not be restored: {}",
                        spec.name,
                        crate::error::chain(&e)
                    ),
                );
            }
        }
        self.reattach_taps().await;
        self.apply_rules().await
    }

    /// Running VMs' taps back on their bridges: a bridge made again (someone deleted it
    /// while corrald was down) starts without ports.
    async fn reattach_taps(&self) {
        let Ok(records) = self.store.list_vms() else {
            return;
        };
        for record in records.iter().filter(|r| r.status.state.has_process()) {
            for nic in &record.spec.nics {
                let bridge = match (nic.kind, nic.source.as_deref()) {
                    (corral_api::NetworkKind::Network, Some(net)) => match self.network_spec(net) {
                        Ok(n) => n.bridge,
                        Err(_) => continue,
                    },
                    (corral_api::NetworkKind::Bridge, Some(b)) => b.to_string(),
                    _ => continue,
                };
                let tap = corral_net::tap::tap_name(&nic.mac);
                if matches!(link::link_kind(&tap).await, Ok(Some(_))) {
                    if let Err(e) = link::attach(&tap, &bridge, nic.vlan).await {
                        tracing::warn!(vm = %record.spec.name, "tap {tap} not re-attached to {bridge}: {e}");
                    }
                }
            }
        }
    }

    pub async fn create_network(&self, req: CreateNetworkRequest) -> ApiResult<Network> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        self.create_network_locked(req).await
    }

    async fn create_network_locked(&self, req: CreateNetworkRequest) -> ApiResult<Network> {
        validate_name("name", &req.name)?;
        if !self.networking_allowed() {
            return Err(ApiError::Conflict {
                message: "managed networks need corrald to run as root".into(),
                hint: Some("use --network user, or run corrald as root".into()),
            });
        }
        if self.store.get_network(&req.name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("network '{}' already exists", req.name),
                hint: Some("choose another name".into()),
            });
        }
        let driver = network_driver(req.kind)?;
        let spec = self.plan_network(req).await?;
        driver.check(&spec).await?;
        let ctx = self.net_context(&spec.name);
        if let Err(e) = self.make_network(driver, &spec, &ctx).await {
            // Nothing half-made: whatever ensure got to is removed again.
            if let Err(undo) = driver.teardown(&spec, &ctx).await {
                tracing::warn!(network = %spec.name, "undoing a failed create: {undo}");
            }
            return Err(e);
        }
        self.events
            .emit(None, "network", format!("network '{}' created", spec.name));
        self.network_locked(&spec.name).await
    }

    async fn make_network(
        &self,
        driver: &dyn NetworkDriver,
        spec: &NetworkSpec,
        ctx: &NetContext,
    ) -> ApiResult<()> {
        driver.ensure(spec, ctx).await?;
        self.store.insert_network(spec)?;
        if let Err(e) = self.apply_rules().await {
            self.store.delete_network(&spec.name)?;
            return Err(e);
        }
        Ok(())
    }

    pub async fn delete_network(&self, name: &str) -> ApiResult<()> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        let spec = self.network_spec(name)?;
        // In the store's transaction: no VM can gain a NIC on it in between.
        self.store.delete_network(name).map_err(|e| match e {
            corral_store::StoreError::InUse { by, .. } => ApiError::Conflict {
                message: format!("network '{name}' is in use by {by}"),
                hint: Some("delete those VMs or move their NICs to another network first".into()),
            },
            other => other.into(),
        })?;
        self.apply_rules().await?;
        let driver = network_driver(spec.kind)?;
        driver.teardown(&spec, &self.net_context(name)).await?;
        self.events
            .emit(None, "network", format!("network '{name}' deleted"));
        Ok(())
    }

    pub async fn network(&self, name: &str) -> ApiResult<Network> {
        self.network_locked(name).await
    }

    pub async fn list_networks(&self) -> ApiResult<Vec<Network>> {
        let mut out = Vec::new();
        for spec in self.store.list_networks()? {
            out.push(self.describe(spec).await?);
        }
        Ok(out)
    }

    async fn network_locked(&self, name: &str) -> ApiResult<Network> {
        let spec = self.network_spec(name)?;
        self.describe(spec).await
    }

    /// The spec with what the host really has, who uses it, and its leases.
    async fn describe(&self, spec: NetworkSpec) -> ApiResult<Network> {
        let driver = network_driver(spec.kind)?;
        let ctx = self.net_context(&spec.name);
        let mut status = driver.status(&spec, &ctx).await;
        if spec.kind == NetworkType::Nat {
            match corral_net::nft::forward_conflicts(std::slice::from_ref(&spec.bridge)).await {
                Ok(w) => status.warnings.extend(w),
                Err(e) => status
                    .warnings
                    .push(format!("could not read the host's firewall: {e}")),
            }
        }
        Ok(Network {
            used_by: self.store.vms_on_network(&spec.name)?,
            leases: driver.leases(&ctx),
            status,
            spec,
        })
    }

    pub(crate) fn network_spec(&self, name: &str) -> ApiResult<NetworkSpec> {
        self.store
            .get_network(name)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "network",
                name: name.to_string(),
            })
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> ApiResult<()> {
        let driver = network_driver(spec.kind)?;
        let ctx = self.net_context(&spec.name);
        driver.ensure(spec, &ctx).await?;
        self.sync_reservations(spec).await
    }

    fn net_context(&self, name: &str) -> NetContext {
        NetContext {
            dir: self.cfg.state_dir.join("networks").join(name),
        }
    }

    /// Managed networks and taps need CAP_NET_ADMIN; without root only user NICs work.
    pub(crate) fn networking_allowed(&self) -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    /// Turns a request into a spec: checks shapes, picks the bridge name and subnet.
    async fn plan_network(&self, req: CreateNetworkRequest) -> ApiResult<NetworkSpec> {
        let others = self.store.list_networks()?;
        let subnet = match req.subnet.as_deref() {
            Some(text) => Some(parse_host_cidr(text)?),
            None => None,
        };
        match req.kind {
            NetworkType::Bridge => {
                if subnet.is_some() || req.dhcp == Some(true) {
                    return Err(ValidationError::new(
                        if subnet.is_some() { "subnet" } else { "dhcp" },
                        "a host bridge's addresses and DHCP are the host's, not Corral's",
                    )
                    .hint("drop --subnet/--dhcp, or use --type nat or isolated")
                    .into());
                }
                let Some(bridge) = req.bridge else {
                    return Err(ValidationError::new("bridge", "missing: which host bridge")
                        .hint("e.g. --bridge br0 (see `ip -br link show type bridge`)")
                        .into());
                };
                link::check_ifname(&bridge, "bridge")?;
                if let Some(other) = others.iter().find(|o| o.bridge == bridge) {
                    return Err(ApiError::Conflict {
                        message: format!("bridge {bridge} is already network '{}'", other.name),
                        hint: Some(format!("use --network network={}", other.name)),
                    });
                }
                Ok(NetworkSpec {
                    name: req.name,
                    kind: req.kind,
                    bridge,
                    subnet: None,
                    dhcp: false,
                    forwards: Vec::new(),
                })
            }
            NetworkType::Nat | NetworkType::Isolated => {
                let subnet = match subnet {
                    Some(s) => Some(s),
                    None if req.kind == NetworkType::Nat => Some(self.free_subnet(&others).await?),
                    None => None,
                };
                let dhcp = req.dhcp.unwrap_or(subnet.is_some());
                if dhcp && subnet.is_none() {
                    return Err(ValidationError::new("dhcp", "DHCP needs a subnet")
                        .hint("add --subnet 10.0.7.1/24, or --dhcp=false")
                        .into());
                }
                if let Some(s) = subnet {
                    check_subnet_free(s, &others, &link::host_subnets().await?)?;
                }
                let bridge = match req.bridge {
                    Some(b) => {
                        link::check_ifname(&b, "bridge")?;
                        b
                    }
                    None => self.free_bridge_name(&others).await?,
                };
                if let Some(other) = others.iter().find(|o| o.bridge == bridge) {
                    return Err(ApiError::Conflict {
                        message: format!("bridge {bridge} is already network '{}'", other.name),
                        hint: Some("choose another --bridge name".into()),
                    });
                }
                Ok(NetworkSpec {
                    name: req.name,
                    kind: req.kind,
                    bridge,
                    subnet: subnet.map(|(a, p)| format!("{a}/{p}")),
                    dhcp,
                    forwards: Vec::new(),
                })
            }
        }
    }

    async fn free_subnet(&self, others: &[NetworkSpec]) -> ApiResult<Cidr> {
        let host = link::host_subnets().await?;
        let [a, b] = DEFAULT_SUBNET_BASE;
        (0..=255u8)
            .map(|c| (Ipv4Addr::new(a, b, c, 1), 24))
            .find(|s| check_subnet_free(*s, others, &host).is_ok())
            .ok_or_else(|| {
                ValidationError::new("subnet", "no free 10.161.X.0/24 subnet on this host")
                    .hint("give one with --subnet")
                    .into()
            })
    }

    async fn free_bridge_name(&self, others: &[NetworkSpec]) -> ApiResult<String> {
        for n in 0..1000 {
            let name = format!("corral{n}");
            if others.iter().any(|o| o.bridge == name) {
                continue;
            }
            if link::link_kind(&name).await?.is_none() {
                return Ok(name);
            }
        }
        Err(ApiError::conflict("no free corralN bridge name"))
    }
}

fn write_marker(path: &std::path::Path) -> ApiResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(path, b"").map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))
}

/// Every network driver, its capabilities and whether this host can use it, for
/// `corral host info`.
pub fn network_drivers() -> Vec<corral_api::NetworkDriverInfo> {
    corral_net::DRIVERS
        .iter()
        .filter_map(|name| corral_net::driver(name).map(|d| (name, d)))
        .map(|(name, d)| {
            let unavailable = d.availability().err();
            corral_api::NetworkDriverInfo {
                name: name.to_string(),
                capabilities: d.capabilities(),
                available: unavailable.is_none(),
                reason: unavailable.map(|u| format!("{} ({})", u.reason, u.hint)),
            }
        })
        .collect()
}

/// The registered driver for a network type.
pub(crate) fn network_driver(kind: NetworkType) -> ApiResult<&'static dyn NetworkDriver> {
    corral_net::driver(kind.as_str())
        .ok_or_else(|| ApiError::Internal(format!("no network driver for {}", kind.as_str())))
}

/// A network's own subnet as `host address/prefix`: not the network or broadcast
/// address, and room for at least a few hosts.
fn parse_host_cidr(text: &str) -> Result<Cidr, ValidationError> {
    let hint = "the host's address on the network with its prefix, e.g. 10.0.7.1/24";
    let (addr, prefix) =
        parse_cidr(text).map_err(|m| ValidationError::new("subnet", m).hint(hint))?;
    if !text.contains('/') || !(8..=29).contains(&prefix) {
        return Err(ValidationError::new(
            "subnet",
            format!("{text:?}: the prefix must be given, from /8 to /29"),
        )
        .hint(hint));
    }
    let host_bits = u32::MAX >> prefix;
    let host = u32::from(addr) & host_bits;
    if host == 0 || host == host_bits {
        return Err(ValidationError::new(
            "subnet",
            format!("{text:?} is the network's own or broadcast address, not a host address"),
        )
        .hint(hint));
    }
    if addr.is_loopback() || addr.is_multicast() || addr.is_unspecified() {
        return Err(
            ValidationError::new("subnet", format!("{text:?} is not a usable network")).hint(hint),
        );
    }
    Ok((addr, prefix))
}

/// A subnet overlapping another network's or any the host routes is refused: traffic
/// would go to the wrong place.
fn check_subnet_free(
    s: Cidr,
    others: &[NetworkSpec],
    host: &[Cidr],
) -> Result<(), ValidationError> {
    for o in others {
        if let Some(theirs) = o.subnet.as_deref().and_then(|t| parse_cidr(t).ok()) {
            if link::overlaps(s, theirs) {
                return Err(ValidationError::new(
                    "subnet",
                    format!(
                        "{}/{} overlaps network '{}' ({})",
                        s.0,
                        s.1,
                        o.name,
                        o.subnet.as_deref().unwrap_or_default()
                    ),
                )
                .hint("choose a subnet no other network uses"));
            }
        }
    }
    if let Some(h) = host.iter().find(|h| link::overlaps(s, **h)) {
        return Err(ValidationError::new(
            "subnet",
            format!(
                "{}/{} overlaps {}/{}, which this host already has (`ip route`)",
                s.0, s.1, h.0, h.1
            ),
        )
        .hint("choose a subnet the host does not use"));
    }
    Ok(())
}

impl From<NetError> for ApiError {
    fn from(e: NetError) -> Self {
        ApiError::Net(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cidrs() {
        assert_eq!(
            parse_host_cidr("10.0.7.1/24").unwrap(),
            (Ipv4Addr::new(10, 0, 7, 1), 24)
        );
        assert!(parse_host_cidr("10.0.7.0/24").is_err(), "network address");
        assert!(parse_host_cidr("10.0.7.255/24").is_err(), "broadcast");
        assert!(parse_host_cidr("10.0.7.1").is_err(), "no prefix");
        assert!(parse_host_cidr("10.0.7.1/30").is_err(), "too small");
        assert!(parse_host_cidr("300.0.7.1/24").is_err());
        assert_eq!(parse_host_cidr("bad").unwrap_err().field, "subnet");
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        let net = NetworkSpec {
            name: "a".into(),
            kind: NetworkType::Nat,
            bridge: "corral0".into(),
            subnet: Some("10.0.0.1/16".into()),
            dhcp: true,
            forwards: vec![],
        };
        let s = (Ipv4Addr::new(10, 0, 5, 1), 24);
        let e = check_subnet_free(s, std::slice::from_ref(&net), &[]).unwrap_err();
        assert!(e.message.contains("network 'a'"), "{}", e.message);
        assert!(check_subnet_free((Ipv4Addr::new(10, 1, 5, 1), 24), &[net], &[]).is_ok());
        let host = [(Ipv4Addr::new(10, 1, 0, 0), 16)];
        assert!(check_subnet_free((Ipv4Addr::new(10, 1, 5, 1), 24), &[], &host).is_err());
    }
}
