//! The one ruleset in Corral's nftables tables, built from the store: every network's
//! forwarding and masquerade, every port forward, every VM's firewall. Changing any of
//! them stores the change and replaces the tables in one transaction; if the kernel
//! refuses, the stored change is undone.

use std::sync::OnceLock;

use corral_api::{
    parse_cidr, AddForwardRequest, FirewallRule, Network, NetworkKind, NetworkType, Protocol,
    ValidationError, Vm, VmSpec,
};
use corral_net::nft::{self, Dnat, NetRules, NftCaps, Ruleset, VmRules};
use corral_net::tap;

use crate::error::{ApiError, ApiResult};
use crate::network::{network_driver, NETWORKS_LOCK};
use crate::vm::Manager;

impl Manager {
    /// Rebuilds Corral's tables from the store. The caller holds [`NETWORKS_LOCK`].
    pub(crate) async fn apply_rules(&self) -> ApiResult<()> {
        if !self.networking_allowed() {
            return Ok(());
        }
        let ruleset = self.ruleset()?;
        let caps = nft_caps().await;
        if ruleset.networks.iter().any(|n| n.outbound) {
            corral_net::link::enable_ip_forward()?;
        }
        nft::apply(&ruleset, caps).await?;
        Ok(())
    }

    fn ruleset(&self) -> ApiResult<Ruleset> {
        let mut rs = Ruleset::default();
        for net in self.store.list_networks()? {
            if net.kind == NetworkType::Bridge {
                continue; // the host's bridge: its traffic is the host's business
            }
            rs.networks.push(NetRules {
                bridge: net.bridge.clone(),
                subnet: net.subnet.as_deref().and_then(|s| parse_cidr(s).ok()),
                outbound: network_driver(net.kind)?.capabilities().outbound,
            });
            for f in &net.forwards {
                if let Some(to) = self.forward_target(&net.name, &f.vm)? {
                    rs.forwards.push(Dnat {
                        protocol: f.protocol,
                        host_port: f.host_port,
                        to,
                        to_port: f.guest_port,
                    });
                }
            }
        }
        for record in self.store.list_vms()? {
            if record.spec.firewall.is_empty() {
                continue;
            }
            rs.vms.push(VmRules {
                vm: record.spec.name.clone(),
                taps: tap_names(&record.spec),
                rules: record.spec.firewall.clone(),
            });
        }
        Ok(rs)
    }

    /// The reserved address of a VM's NIC on a network.
    fn forward_target(&self, network: &str, vm: &str) -> ApiResult<Option<std::net::Ipv4Addr>> {
        let Some(record) = self.store.get_vm(vm)? else {
            return Ok(None);
        };
        Ok(record
            .spec
            .nics
            .iter()
            .find(|n| n.kind == NetworkKind::Network && n.source.as_deref() == Some(network))
            .and_then(|n| n.ip))
    }

    pub async fn add_forward(&self, network: &str, req: AddForwardRequest) -> ApiResult<Network> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        let mut net = self.network_spec(network)?;
        if !network_driver(net.kind)?.capabilities().port_forwards {
            return Err(ApiError::Conflict {
                message: format!(
                    "network '{network}' ({}) cannot forward ports",
                    net.kind.as_str()
                ),
                hint: Some("port forwards are for nat networks".into()),
            });
        }
        for (field, port) in [("host_port", req.host_port), ("guest_port", req.guest_port)] {
            if port == 0 {
                return Err(ValidationError::new(field, "port 0 is not a port")
                    .hint("1 to 65535")
                    .into());
            }
        }
        for other in self.store.list_networks()? {
            if let Some(f) = other
                .forwards
                .iter()
                .find(|f| f.host_port == req.host_port && f.protocol == req.protocol)
            {
                return Err(ApiError::Conflict {
                    message: format!(
                        "host port {}/{} is already forwarded to {}:{} on network '{}'",
                        req.host_port,
                        req.protocol.as_str(),
                        f.vm,
                        f.guest_port,
                        other.name
                    ),
                    hint: Some("choose another host port, or remove that forward first".into()),
                });
            }
        }
        if self.store.get_vm(&req.vm)?.is_none() {
            return Err(ApiError::UnknownIn {
                field: "vm",
                message: format!("vm '{}' not found", req.vm),
                hint: "see `corral list`".into(),
            });
        }
        if self.forward_target(network, &req.vm)?.is_none() {
            return Err(ValidationError::new(
                "vm",
                format!(
                    "VM '{}' has no NIC with an address on network '{network}'",
                    req.vm
                ),
            )
            .hint(format!("create it with --network network={network}"))
            .into());
        }
        let before = net.clone();
        net.forwards.push(corral_api::PortForward {
            protocol: req.protocol,
            host_port: req.host_port,
            vm: req.vm.clone(),
            guest_port: req.guest_port,
        });
        self.store.update_network(&net)?;
        if let Err(e) = self.apply_rules().await {
            self.store.update_network(&before)?;
            return Err(e);
        }
        self.events.emit(
            Some(&req.vm),
            "network",
            format!(
                "host port {}/{} forwarded to {}:{}",
                req.host_port,
                req.protocol.as_str(),
                req.vm,
                req.guest_port
            ),
        );
        drop(_lock);
        self.network(network).await
    }

    pub async fn remove_forward(
        &self,
        network: &str,
        protocol: Protocol,
        host_port: u16,
    ) -> ApiResult<Network> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        let mut net = self.network_spec(network)?;
        let before = net.clone();
        let n = net.forwards.len();
        net.forwards
            .retain(|f| !(f.host_port == host_port && f.protocol == protocol));
        if net.forwards.len() == n {
            return Err(ApiError::NotFound {
                kind: "port forward",
                name: format!("{host_port}/{} on {network}", protocol.as_str()),
            });
        }
        self.store.update_network(&net)?;
        if let Err(e) = self.apply_rules().await {
            self.store.update_network(&before)?;
            return Err(e);
        }
        drop(_lock);
        self.network(network).await
    }

    /// Forwards to a VM go with it.
    pub(crate) async fn drop_forwards_to(&self, vm: &str) -> ApiResult<()> {
        let _lock = self.lock(NETWORKS_LOCK).await;
        for mut net in self.store.list_networks()? {
            let n = net.forwards.len();
            net.forwards.retain(|f| f.vm != vm);
            if net.forwards.len() != n {
                self.store.update_network(&net)?;
            }
        }
        self.apply_rules().await
    }

    /// Replaces a VM's firewall rules (any state: rules name its taps, which need not
    /// exist yet).
    pub async fn set_firewall(&self, vm: &str, rules: Vec<FirewallRule>) -> ApiResult<Vm> {
        for (i, r) in rules.iter().enumerate() {
            r.validate(&format!("rules[{i}]"))?;
        }
        let vm_lock = self.lock(vm).await;
        let _lock = self.lock(NETWORKS_LOCK).await;
        let record = self.record(vm)?;
        if !rules.is_empty() && tap_names(&record.spec).is_empty() {
            return Err(ApiError::Conflict {
                message: format!("VM '{vm}' has no bridged NIC to filter"),
                hint: Some(
                    "firewall rules apply to NICs on nat, isolated or bridge networks, not user NICs"
                        .into(),
                ),
            });
        }
        let mut spec = record.spec.clone();
        spec.firewall = rules;
        self.store.update_vm_spec(&spec)?;
        if let Err(e) = self.apply_rules().await {
            self.store.update_vm_spec(&record.spec)?;
            return Err(e);
        }
        self.events.emit(
            Some(vm),
            "firewall",
            format!("{} firewall rule(s) applied", spec.firewall.len()),
        );
        drop(_lock);
        drop(vm_lock);
        self.get(vm)
    }
}

/// The taps of a VM's bridged NICs (stable names, whether or not it runs).
fn tap_names(spec: &VmSpec) -> Vec<String> {
    spec.nics
        .iter()
        .filter(|n| n.kind != NetworkKind::User)
        .map(|n| tap::tap_name(&n.mac))
        .collect()
}

/// The kernel's nftables abilities, probed once per daemon.
async fn nft_caps() -> NftCaps {
    static CAPS: OnceLock<NftCaps> = OnceLock::new();
    if let Some(c) = CAPS.get() {
        return *c;
    }
    let caps = nft::probe().await.unwrap_or_else(|e| {
        tracing::warn!("nftables probe failed ({e}); assuming no bridge conntrack");
        NftCaps {
            bridge_conntrack: false,
        }
    });
    *CAPS.get_or_init(|| caps)
}
