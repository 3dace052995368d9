//! Corral's network drivers and the host-side pieces they are made of.
//!
//! - [`driver`]: the [`NetworkDriver`] trait, each driver's capabilities, the registry.
//! - [`link`]: bridges, ports, VLANs, addresses and routes over rtnetlink.
//! - [`tap`]: tap devices opened for QEMU (the daemon keeps nothing open: QEMU holds the
//!   descriptor, so the tap disappears with the VM).
//! - [`nft`]: Corral's own nftables tables, rendered from the desired state and replaced
//!   atomically; other tables are only ever read (conflict detection).
//! - [`dnsmasq`]: one DHCP/DNS server per network, detached from the daemon.
//! - [`passt`]: one user-mode networking process per user NIC, detached from the daemon.

pub mod dnsmasq;
pub mod driver;
mod error;
pub mod link;
pub mod nft;
pub mod passt;
mod sys;
pub mod tap;

pub use driver::{driver, NetContext, NetworkDriver, Unavailable, DRIVERS};
pub use error::NetError;

/// An IPv4 subnet as `address/prefix` where `address` is the host's (gateway) address.
pub type Cidr = (std::net::Ipv4Addr, u8);
