//! One dnsmasq per network with DHCP: DHCP + DNS on the bridge, detached from the daemon
//! (it keeps serving while corrald restarts), found again by its pidfile.

use std::path::Path;

use corral_api::network::Lease;

use crate::driver::Reservation;
use crate::{Cidr, NetError};

/// What one network's dnsmasq serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqConfig {
    pub network: String,
    pub bridge: String,
    /// The host's address on the bridge and the prefix.
    pub subnet: Cidr,
}

/// The config file's text (pure; golden-tested).
pub fn render(cfg: &DnsmasqConfig, dir: &Path) -> String {
    todo!("net helper: {cfg:?} {dir:?}")
}

/// Starts dnsmasq for `cfg` unless the one in `dir` runs with the same config; returns its pid.
pub async fn ensure_running(cfg: &DnsmasqConfig, dir: &Path) -> Result<u32, NetError> {
    todo!("net helper: {cfg:?} {dir:?}")
}

/// The pid of the dnsmasq in `dir`, if it runs.
pub fn running(dir: &Path) -> Option<u32> {
    todo!("net helper: {dir:?}")
}

/// Rewrites the reservations file and makes dnsmasq re-read it (SIGHUP).
pub fn set_reservations(dir: &Path, hosts: &[Reservation]) -> Result<(), NetError> {
    todo!("net helper: {dir:?} {hosts:?}")
}

/// Stops the dnsmasq in `dir` (and waits for it to exit).
pub async fn stop(dir: &Path) -> Result<(), NetError> {
    todo!("net helper: {dir:?}")
}

/// The leases file's current leases.
pub fn leases(dir: &Path) -> Vec<Lease> {
    todo!("net helper: {dir:?}")
}
