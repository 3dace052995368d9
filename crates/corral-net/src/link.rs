//! Links and addresses: bridges Corral makes, ports attached to bridges, the host's
//! routes (to refuse overlapping subnets).

use std::net::Ipv4Addr;

use crate::{Cidr, NetError};

/// What kind of link `name` is (`Some("bridge")`, `Some("tun")`, …), `None` if absent.
pub async fn link_kind(name: &str) -> Result<Option<String>, NetError> {
    todo!("net helper: {name}")
}

/// Makes bridge `name` (if absent) with `address` (if given), up. Idempotent.
pub async fn ensure_bridge(name: &str, address: Option<Cidr>) -> Result<(), NetError> {
    todo!("net helper: {name} {address:?}")
}

/// Removes a link if it exists.
pub async fn delete_link(name: &str) -> Result<(), NetError> {
    todo!("net helper: {name}")
}

/// Puts `port` on `bridge` and up; with `vlan`, as an untagged member of that VLAN only
/// (needs a VLAN-filtering bridge: [`NetError::Unsupported`] with a hint otherwise).
pub async fn attach(port: &str, bridge: &str, vlan: Option<u16>) -> Result<(), NetError> {
    todo!("net helper: {port} {bridge} {vlan:?}")
}

/// The host's IPv4 routes and addresses as subnets, to refuse overlaps.
pub async fn host_subnets() -> Result<Vec<Cidr>, NetError> {
    todo!("net helper")
}

/// Turns on IPv4 forwarding (NAT networks need it), like libvirt does.
pub fn enable_ip_forward() -> Result<(), NetError> {
    todo!("net helper")
}

/// Whether two subnets overlap.
pub fn overlaps(a: Cidr, b: Cidr) -> bool {
    let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - p) };
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// The network address of a subnet.
pub fn network_of(c: Cidr) -> Ipv4Addr {
    let mask = if c.1 == 0 { 0 } else { u32::MAX << (32 - c.1) };
    Ipv4Addr::from(u32::from(c.0) & mask)
}
