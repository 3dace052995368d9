//! Tap devices for QEMU. The daemon opens the tap (not persistent) and passes the
//! descriptor to QEMU; when QEMU exits the kernel removes the tap.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::NetError;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>` (the libc crate does not export it).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    /// The rest of the union (`struct ifreq` is 40 bytes on Linux).
    _pad: [u8; 22],
}

/// Opens (creating) tap `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent.
///
/// The descriptor is close-on-exec like every descriptor the daemon opens; the QEMU
/// launcher decides which ones QEMU inherits. The tap exists (and [`crate::link`] can
/// attach it) as soon as this returns, and vanishes when the last descriptor closes.
pub fn open_tap(name: &str) -> Result<OwnedFd, NetError> {
    crate::link::check_ifname(name, "tap")?;
    let io = |source| NetError::Io {
        what: format!("opening tap {name}"),
        source,
    };
    // std opens with O_CLOEXEC.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    // check_ifname allows at most 15 ASCII bytes: the name stays NUL-terminated.
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `file` is an open descriptor of /dev/net/tun; TUNSETIFF reads and writes
    // one `struct ifreq`, and `req` is a properly sized, initialised one that outlives
    // the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            // Another process holds a tap of that name (or a persistent one is left).
            Some(libc::EBUSY) => NetError::Io {
                what: format!("opening tap {name}: it is in use by another process"),
                source: err,
            },
            _ => io(err),
        });
    }
    Ok(file.into())
}

/// The tap name of a NIC: `ct` + the MAC's 12 hex digits (14 bytes, fits IFNAMSIZ).
/// MACs are unique on a host, so the name is too; it is stable, so firewall rules can
/// name it before it exists, and it stays the NIC's whatever its place in the VM's
/// spec, so NICs plugged or unplugged while a VM runs keep their taps apart.
pub fn tap_name(mac: &str) -> String {
    format!("ct{}", mac.replace(':', "").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tap_names_come_from_the_mac_and_fit() {
        let name = super::tap_name("52:54:00:AB:cd:01");
        assert_eq!(name, "ct525400abcd01");
        assert!(name.len() < libc::IFNAMSIZ);
    }

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
