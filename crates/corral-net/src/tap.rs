//! Tap devices for QEMU. The daemon opens the tap (not persistent) and passes the
//! descriptor to QEMU; when QEMU exits the kernel removes the tap.

use std::os::fd::OwnedFd;

use crate::NetError;

/// Opens (creating) tap `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent.
pub fn open_tap(name: &str) -> Result<OwnedFd, NetError> {
    todo!("net helper: {name}")
}

/// The tap name of a VM's NIC: `ct` + 8 hex digits of the VM's UUID + `-` + index
/// (fits IFNAMSIZ; stable, so firewall rules can name it before it exists).
pub fn tap_name(vm: &uuid::Uuid, index: usize) -> String {
    format!("ct{}-{index}", &vm.simple().to_string()[..8])
}
