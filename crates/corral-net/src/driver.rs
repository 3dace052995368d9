//! The network driver interface. Each driver says what it can do in a
//! [`NetworkCapabilities`] and is found by name in [`driver`].
//!
//! Drivers own the host side of a *network* (bridge, address, dnsmasq). NICs are
//! plugged by the daemon with [`crate::tap`] + [`crate::link::attach`] (tap-based
//! networks) or [`crate::passt`] (user NICs); Corral's nftables tables are one ruleset
//! for all networks ([`crate::nft`]), rebuilt by the daemon whenever anything in it changes.

use std::path::PathBuf;

use async_trait::async_trait;
use corral_api::network::{Lease, NetworkCapabilities, NetworkSpec, NetworkStatus};

use crate::NetError;

mod managed;

/// Where a network keeps its files: `<state>/networks/<name>/` (dnsmasq config,
/// pidfile, leases, reservations).
#[derive(Debug, Clone)]
pub struct NetContext {
    pub dir: PathBuf,
}

/// A static DHCP reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    /// The VM's name, also its DNS name on the network.
    pub name: String,
}

/// Why a driver cannot be used on this host, with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    pub hint: String,
}

#[async_trait]
pub trait NetworkDriver: Send + Sync {
    fn capabilities(&self) -> NetworkCapabilities;

    /// Whether this host can use the driver at all (root, tools, kernel features).
    fn availability(&self) -> Result<(), Unavailable>;

    /// Checks what needs the host before anything is made: the bridge name is free (or,
    /// for `bridge`, exists and is a bridge), the subnet overlaps no host route.
    async fn check(&self, spec: &NetworkSpec) -> Result<(), NetError>;

    /// Makes or repairs the host side; idempotent, run at create and at every daemon
    /// start (after a host reboot nothing is left).
    async fn ensure(&self, spec: &NetworkSpec, ctx: &NetContext) -> Result<(), NetError>;

    /// Removes what `ensure` made (never an existing host bridge).
    async fn teardown(&self, spec: &NetworkSpec, ctx: &NetContext) -> Result<(), NetError>;

    /// What the host has now (no warnings: the daemon adds firewall conflicts).
    async fn status(&self, spec: &NetworkSpec, ctx: &NetContext) -> NetworkStatus;

    /// Replaces the static DHCP reservations and makes dnsmasq re-read them.
    async fn set_reservations(
        &self,
        spec: &NetworkSpec,
        ctx: &NetContext,
        hosts: &[Reservation],
    ) -> Result<(), NetError>;

    /// Current DHCP leases (empty without DHCP).
    fn leases(&self, ctx: &NetContext) -> Vec<Lease>;
}

/// Every driver's name, in the order `corral host info` lists them.
pub const DRIVERS: [&str; 3] = ["nat", "isolated", "bridge"];

/// The driver registered under `name` (a [`corral_api::NetworkType`]'s `as_str`).
pub fn driver(name: &str) -> Option<&'static dyn NetworkDriver> {
    static NAT: managed::Managed = managed::Managed { outbound: true };
    static ISOLATED: managed::Managed = managed::Managed { outbound: false };
    static BRIDGE: managed::HostBridge = managed::HostBridge;
    match name {
        "nat" => Some(&NAT),
        "isolated" => Some(&ISOLATED),
        "bridge" => Some(&BRIDGE),
        _ => None,
    }
}

/// Root, or at least `CAP_NET_ADMIN`: every driver changes links.
fn need_net_admin() -> Result<(), Unavailable> {
    if crate::sys::has_net_admin() {
        Ok(())
    } else {
        Err(Unavailable {
            reason: "corrald lacks CAP_NET_ADMIN (it is not running as root)".into(),
            hint: "run corrald as root; VMs can still use user-mode NICs (passt)".into(),
        })
    }
}

fn need_tool(name: &str, package: &str) -> Result<(), Unavailable> {
    crate::sys::require_tool(name, package)
        .map(|_| ())
        .map_err(|e| match e {
            NetError::Unsupported { message, hint } => Unavailable {
                reason: message,
                hint,
            },
            other => Unavailable {
                reason: other.to_string(),
                hint: String::new(),
            },
        })
}
