//! NICs: resolved at create (MAC, network, reserved address), plugged at start (a tap on
//! the network's bridge, or a passt process for a user NIC), and found again in the
//! networks' leases.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use corral_api::{
    parse_cidr, valid_mac, AddressSource, NetworkKind, NetworkSpec, Nic, NicRequest,
    ValidationError, VmAddress, VmSpec, DEFAULT_NETWORK,
};
use corral_net::driver::Reservation;
use corral_net::{link, passt, tap};
use corral_qemu::argv::NicBackend;
use corral_qemu::argv::VmPaths;
use rand::Rng;

use crate::error::{ApiError, ApiResult};
use crate::network::network_driver;
use crate::vm::Manager;

/// What a start made for a VM's NICs: the argv's view, and the taps QEMU inherits
/// (closed by the daemon once QEMU has them; the kernel removes a tap with its last
/// holder). passt processes end on their own when QEMU closes their socket.
pub(crate) struct PluggedNics {
    pub backends: Vec<NicBackend>,
    pub taps: Vec<OwnedFd>,
    /// passt processes to kill if QEMU never starts.
    pub passt_pids: Vec<u32>,
}

impl PluggedNics {
    /// Undo for a start that failed before QEMU connected.
    pub fn abandon(self) {
        for pid in self.passt_pids {
            stop_passt(pid);
        }
    }
}

/// Stops a passt whose QEMU end never came (best effort: it may be gone already).
pub(crate) fn stop_passt(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

impl Manager {
    /// The NICs of a new VM. `None` is the host's default: one NIC on the `default`
    /// network when it exists (and the daemon may make taps), else one user NIC.
    pub(crate) async fn resolve_nics(&self, reqs: Option<&[NicRequest]>) -> ApiResult<Vec<Nic>> {
        let default;
        let reqs = match reqs {
            Some(r) => r,
            None => {
                let nic = if self.networking_allowed()
                    && self.store.get_network(DEFAULT_NETWORK)?.is_some()
                {
                    NicRequest {
                        kind: NetworkKind::Network,
                        source: Some(DEFAULT_NETWORK.to_string()),
                        ..NicRequest::user()
                    }
                } else {
                    NicRequest::user()
                };
                default = [nic];
                &default
            }
        };
        let mut nics: Vec<Nic> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let field = format!("networks[{i}]");
            req.validate(&field)?;
            let mac = match &req.mac {
                Some(mac) => {
                    let mac = mac.to_ascii_lowercase();
                    if nics.iter().any(|n| n.mac == mac) || self.store.mac_in_use(&mac)? {
                        return Err(ValidationError::new(
                            format!("{field}.mac"),
                            format!("MAC {mac} is already in use on this host"),
                        )
                        .hint("leave it out to get a free one")
                        .into());
                    }
                    mac
                }
                None => self.free_mac(&nics)?,
            };
            let ip = self.check_nic_target(req, &field, &nics).await?;
            nics.push(Nic {
                kind: req.kind,
                source: req.source.clone(),
                mac,
                ip,
                vlan: req.vlan,
            });
        }
        Ok(nics)
    }

    /// New NICs for a copy of a VM (a clone): same networks, new MACs and addresses.
    pub(crate) async fn copy_nics(&self, nics: &[Nic]) -> ApiResult<Vec<Nic>> {
        let reqs: Vec<NicRequest> = nics
            .iter()
            .map(|n| NicRequest {
                kind: n.kind,
                source: n.source.clone(),
                mac: None,
                ip: None,
                vlan: n.vlan,
            })
            .collect();
        self.resolve_nics(Some(&reqs)).await
    }

    /// Random locally administered MACs in QEMU's 52:54:00 prefix, unique on the host.
    fn free_mac(&self, taken: &[Nic]) -> ApiResult<String> {
        let mut rng = rand::thread_rng();
        loop {
            let b: [u8; 3] = rng.gen();
            let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
            if valid_mac(&mac)
                && !taken.iter().any(|n| n.mac == mac)
                && !self.store.mac_in_use(&mac)?
            {
                return Ok(mac);
            }
        }
    }

    /// Checks the network or bridge a NIC names, and picks (or checks) its reserved
    /// address on a managed network with DHCP.
    async fn check_nic_target(
        &self,
        req: &NicRequest,
        field: &str,
        earlier: &[Nic],
    ) -> ApiResult<Option<Ipv4Addr>> {
        let source = req.source.clone().unwrap_or_default();
        match req.kind {
            NetworkKind::User => Ok(None),
            NetworkKind::Bridge => {
                self.need_taps(field)?;
                check_host_bridge(&source, field).await?;
                if req.vlan.is_some()
                    && !network_driver(corral_api::NetworkType::Bridge)?
                        .capabilities()
                        .vlan
                {
                    return Err(no_vlans(field));
                }
                Ok(None)
            }
            NetworkKind::Network => {
                self.need_taps(field)?;
                let net = self
                    .store
                    .get_network(&source)?
                    .ok_or_else(|| ApiError::UnknownIn {
                        field: "networks",
                        message: format!("network '{source}' not found"),
                        hint: "see `corral network list`, or make it with `corral network create`"
                            .into(),
                    })?;
                if req.vlan.is_some() && !network_driver(net.kind)?.capabilities().vlan {
                    return Err(no_vlans(field));
                }
                self.reserve_address(&net, req.ip, field, earlier)
            }
        }
    }

    fn need_taps(&self, field: &str) -> ApiResult<()> {
        if self.networking_allowed() {
            return Ok(());
        }
        Err(ValidationError::new(
            format!("{field}.kind"),
            "bridged NICs need corrald to run as root",
        )
        .hint("use --network user")
        .into())
    }

    /// A free address of the network's subnet (or the asked one, checked), so that
    /// port forwards and DNS know where a VM is before it boots.
    fn reserve_address(
        &self,
        net: &NetworkSpec,
        asked: Option<Ipv4Addr>,
        field: &str,
        earlier: &[Nic],
    ) -> ApiResult<Option<Ipv4Addr>> {
        let subnet = net.subnet.as_deref().and_then(|s| parse_cidr(s).ok());
        let (true, Some((gateway, prefix))) = (net.dhcp, subnet) else {
            return match asked {
                Some(_) => Err(ValidationError::new(
                    format!("{field}.ip"),
                    format!(
                        "network '{}' has no DHCP to reserve an address on",
                        net.name
                    ),
                )
                .hint("leave ip out")
                .into()),
                None => Ok(None),
            };
        };
        let mut taken: HashSet<Ipv4Addr> = self.addresses_on(&net.name)?;
        taken.extend(
            earlier
                .iter()
                .filter(|n| n.source.as_deref() == Some(&net.name))
                .filter_map(|n| n.ip),
        );
        taken.extend(
            network_driver(net.kind)?
                .leases(&self.net_context(&net.name))
                .iter()
                .map(|l| l.address),
        );
        taken.insert(gateway);
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(gateway) & mask;
        let last = base | !mask;
        if let Some(ip) = asked {
            let n = u32::from(ip);
            let inside = n & mask == base && n != base && n != last;
            if !inside || ip == gateway {
                return Err(ValidationError::new(
                    format!("{field}.ip"),
                    format!("{ip} is not a free host address of {}", net.subnet.as_deref().unwrap_or_default()),
                )
                .hint("pick an address inside the subnet, not the network's, broadcast or gateway address")
                .into());
            }
            if self.addresses_on(&net.name)?.contains(&ip)
                || earlier.iter().any(|n| n.ip == Some(ip))
            {
                return Err(ValidationError::new(
                    format!("{field}.ip"),
                    format!("{ip} is already reserved on network '{}'", net.name),
                )
                .hint("leave ip out to get a free address")
                .into());
            }
            return Ok(Some(ip));
        }
        ((base + 2)..last)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
            .map(Some)
            .ok_or_else(|| ApiError::Conflict {
                message: format!("network '{}' has no free address left", net.name),
                hint: Some("delete VMs on it, or use a network with a larger subnet".into()),
            })
    }

    /// Addresses reserved for VMs' NICs on a network.
    fn addresses_on(&self, network: &str) -> ApiResult<HashSet<Ipv4Addr>> {
        Ok(self
            .store
            .list_vms()?
            .iter()
            .flat_map(|r| r.spec.nics.iter())
            .filter(|n| n.kind == NetworkKind::Network && n.source.as_deref() == Some(network))
            .filter_map(|n| n.ip)
            .collect())
    }

    /// Tells a network's dnsmasq the reservations of every VM on it.
    pub(crate) async fn sync_reservations(&self, net: &NetworkSpec) -> ApiResult<()> {
        if !net.dhcp {
            return Ok(());
        }
        let mut hosts = Vec::new();
        for record in self.store.list_vms()? {
            for nic in &record.spec.nics {
                if nic.kind == NetworkKind::Network && nic.source.as_deref() == Some(&net.name) {
                    if let Some(ip) = nic.ip {
                        hosts.push(Reservation {
                            mac: nic.mac.clone(),
                            ip,
                            name: record.spec.name.clone(),
                        });
                    }
                }
            }
        }
        let driver = network_driver(net.kind)?;
        driver
            .set_reservations(net, &self.net_context(&net.name), &hosts)
            .await?;
        Ok(())
    }

    /// After a VM with managed-network NICs was made or removed.
    pub(crate) async fn nics_changed(&self, nics: &[Nic]) {
        let nets: HashSet<&str> = nics
            .iter()
            .filter(|n| n.kind == NetworkKind::Network)
            .filter_map(|n| n.source.as_deref())
            .collect();
        for name in nets {
            let result = match self.network_spec(name) {
                Ok(net) => self.sync_reservations(&net).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(
                    network = name,
                    "reservations not updated: {}",
                    crate::error::chain(&e)
                );
            }
        }
    }

    /// Makes each NIC's host end before QEMU starts. On error nothing is left: taps close
    /// with their descriptors, passt processes are stopped.
    pub(crate) async fn plug_nics(&self, spec: &VmSpec, paths: &VmPaths) -> ApiResult<PluggedNics> {
        let mut plugged = PluggedNics {
            backends: Vec::new(),
            taps: Vec::new(),
            passt_pids: Vec::new(),
        };
        for (i, nic) in spec.nics.iter().enumerate() {
            match self.plug_one(paths, i, nic, &mut plugged).await {
                Ok(backend) => plugged.backends.push(backend),
                Err(e) => {
                    plugged.abandon();
                    return Err(e);
                }
            }
        }
        Ok(plugged)
    }

    async fn plug_one(
        &self,
        paths: &VmPaths,
        index: usize,
        nic: &Nic,
        plugged: &mut PluggedNics,
    ) -> ApiResult<NicBackend> {
        if nic.kind == NetworkKind::User {
            let cfg = passt::PasstConfig::for_nic(&paths.dir, &nic.mac);
            let pid = passt::spawn(&cfg).await?;
            plugged.passt_pids.push(pid);
            return Ok(NicBackend::Stream { socket: cfg.socket });
        }
        let fd = self.open_nic_tap(nic, index).await?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        plugged.taps.push(fd);
        Ok(NicBackend::Tap { fd: raw })
    }

    /// Opens a bridged NIC's tap and puts it on its bridge (with its VLAN tag).
    pub(crate) async fn open_nic_tap(&self, nic: &Nic, index: usize) -> ApiResult<OwnedFd> {
        let bridge = match (nic.kind, nic.source.as_deref()) {
            (NetworkKind::Bridge, Some(bridge)) => {
                if link::link_kind(bridge).await?.as_deref() != Some("bridge") {
                    return Err(ApiError::Conflict {
                        message: format!(
                            "host bridge {bridge} of NIC {index} does not exist (any more)"
                        ),
                        hint: Some("create the bridge again, or change the VM's NIC".into()),
                    });
                }
                bridge.to_string()
            }
            (NetworkKind::Network, Some(net)) => self.network_spec(net)?.bridge,
            _ => return Err(ApiError::Internal(format!("NIC {index} has no bridge"))),
        };
        let name = tap::tap_name(&nic.mac);
        let fd = tap::open_tap(&name)?;
        link::attach(&name, &bridge, nic.vlan).await?;
        Ok(fd)
    }

    /// Every managed network's current DHCP leases, by MAC (read once per listing).
    pub(crate) fn leases_by_mac(&self) -> LeasesByMac {
        let mut out = LeasesByMac::new();
        let Ok(nets) = self.store.list_networks() else {
            return out;
        };
        for net in nets.iter().filter(|n| n.dhcp) {
            let Ok(driver) = network_driver(net.kind) else {
                continue;
            };
            let prefix = net
                .subnet
                .as_deref()
                .and_then(|s| parse_cidr(s).ok())
                .map_or(32, |(_, p)| p);
            for lease in driver.leases(&self.net_context(&net.name)) {
                out.insert(lease.mac, (lease.address, prefix));
            }
        }
        out
    }
}

/// DHCP leases by MAC: the address and its network's prefix.
pub(crate) type LeasesByMac = std::collections::HashMap<String, (Ipv4Addr, u8)>;

/// A VM's addresses from the networks' leases, one per NIC that has one.
pub(crate) fn lease_addresses(spec: &VmSpec, leases: &LeasesByMac) -> Vec<VmAddress> {
    let mut out = Vec::new();
    for nic in spec.nics.iter().filter(|n| n.kind == NetworkKind::Network) {
        let Some((ip, prefix)) = leases.get(&nic.mac) else {
            continue;
        };
        out.push(VmAddress {
            address: ip.to_string(),
            prefix: *prefix,
            mac: Some(nic.mac.clone()),
            source: AddressSource::Dhcp,
        });
    }
    out
}

/// A `bridge=NAME` NIC needs a Linux bridge that exists now; one removed later fails
/// that VM's start instead.
async fn check_host_bridge(name: &str, field: &str) -> ApiResult<()> {
    let bad = |message: String| -> ApiError {
        ValidationError::new(format!("{field}.source"), message)
            .hint("name a Linux bridge (`ip -d link show type bridge` lists them), or use a nat network")
            .into()
    };
    if link::check_ifname(name, "bridge").is_err() {
        return Err(bad(format!("{name:?} is not a usable interface name")));
    }
    match link::link_kind(name).await? {
        Some(kind) if kind == "bridge" => Ok(()),
        Some(kind) => Err(bad(format!("{name} is not a bridge (it is a {kind} link)"))),
        None => Err(bad(format!("bridge {name} does not exist on this host"))),
    }
}

fn no_vlans(field: &str) -> ApiError {
    ValidationError::new(
        format!("{field}.vlan"),
        "this host cannot tag NICs with VLANs: its kernel has no bridge VLAN filtering",
    )
    .hint("leave vlan out, or use a host with CONFIG_BRIDGE_VLAN_FILTERING")
    .into()
}

/// Errors from [`Manager::resolve_nics`] name `networks[0]...`; a single-NIC request
/// names its own fields.
pub(crate) fn rename_field(e: ApiError, from: &str, to: &str) -> ApiError {
    match e {
        ApiError::Invalid(mut v) => {
            v.field = v.field.replacen(from, to, 1);
            ApiError::Invalid(v)
        }
        other => other,
    }
}
