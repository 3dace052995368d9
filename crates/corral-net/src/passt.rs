//! User-mode NICs with passt: one passt per NIC, started before QEMU, connected by a
//! Unix stream socket (`-netdev stream`); it exits when QEMU closes the socket.

use std::path::PathBuf;

use corral_api::network::Protocol;

use crate::NetError;

/// One user NIC's passt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstConfig {
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    /// (protocol, host port, guest port)
    pub forwards: Vec<(Protocol, u16, u16)>,
}

/// Starts passt detached (own session, dies with its QEMU) and waits until its socket
/// accepts; returns its pid.
pub async fn spawn(cfg: &PasstConfig) -> Result<u32, NetError> {
    todo!("net helper: {cfg:?}")
}

/// Whether passt is installed.
pub fn available() -> bool {
    todo!("net helper")
}
