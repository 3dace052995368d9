//! Corral's nftables tables: `inet corral` (NAT, forwarding, port forwards) and
//! `bridge corral` (per-VM firewall on tap ports). Rendered from the desired state
//! and replaced in one `nft -f` transaction; other tables are never changed.

use std::net::Ipv4Addr;

use corral_api::network::{FirewallRule, Protocol};

use crate::{Cidr, NetError};

/// Everything Corral's tables should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub networks: Vec<NetRules>,
    pub forwards: Vec<Dnat>,
    pub vms: Vec<VmRules>,
}

/// One bridge Corral manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRules {
    pub bridge: String,
    pub subnet: Option<Cidr>,
    /// Masquerade the subnet and forward it out (nat); else traffic stays on the bridge.
    pub outbound: bool,
}

/// A host port DNAT'ed to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub protocol: Protocol,
    pub host_port: u16,
    pub to: Ipv4Addr,
    pub to_port: u16,
}

/// One VM's firewall rules, applied on its tap ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRules {
    pub vm: String,
    pub taps: Vec<String>,
    pub rules: Vec<FirewallRule>,
}

/// What this kernel's nftables can do (probed once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftCaps {
    /// Connection tracking in the bridge family (`nf_conntrack_bridge`).
    pub bridge_conntrack: bool,
}

/// The script that replaces Corral's tables with `rs` (pure; golden-tested).
pub fn render(rs: &Ruleset, caps: NftCaps) -> String {
    todo!("net helper: {rs:?} {caps:?}")
}

/// Probes the kernel once.
pub async fn probe() -> Result<NftCaps, NetError> {
    todo!("net helper")
}

/// Replaces Corral's tables with `rs` atomically.
pub async fn apply(rs: &Ruleset, caps: NftCaps) -> Result<(), NetError> {
    todo!("net helper: {rs:?} {caps:?}")
}

/// Other tables' base chains that would drop traffic of `bridges` (a FORWARD hook with
/// policy drop, e.g. Docker's or firewalld's), as plain sentences with a hint.
pub async fn forward_conflicts(bridges: &[String]) -> Result<Vec<String>, NetError> {
    todo!("net helper: {bridges:?}")
}
