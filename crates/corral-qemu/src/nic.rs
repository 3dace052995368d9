//! NIC hot-plug on a running, confined QEMU.
//!
//! QEMU runs unprivileged and chrooted, so it can neither open a tap nor reach
//! passt's socket once started. The daemon makes the host end — a tap's
//! descriptor, or a socket already connected to passt — and passes it with
//! `getfd` under the netdev's id; `netdev_add` takes it by that name (QEMU then
//! drops the name from the monitor: the descriptor belongs to the netdev), and
//! `device_add` plugs a `virtio-net-pci` with the NIC's MAC. Unplugging is
//! `device_del`, the guest's release (`DEVICE_DELETED`), then `netdev_del`,
//! which closes QEMU's end: the tap vanishes, and passt (`--one-off`) exits.
//!
//! Ids come from the MAC ([`crate::argv::nic_netdev_id`]), like cold-plugged
//! NICs', so any NIC is found whatever its place in the spec. Each operation
//! runs to completion in its own task, and a failed attach undoes its steps.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use serde_json::{json, Value};

use crate::argv::{nic_device_id, nic_netdev_id};
use crate::device::{add_in_free_port, run_to_completion, WaitError};
use crate::qmp::{Qmp, QmpError};

/// How long [`detach_nic`] waits for the guest to release the device.
pub const UNPLUG_TIMEOUT: Duration = crate::hotplug::UNPLUG_TIMEOUT;

/// The host end of a NIC to hot-plug, made by the daemon.
#[derive(Debug)]
pub enum HotNicBackend {
    /// A tap (opened with `IFF_VNET_HDR`), already on its bridge.
    Tap(OwnedFd),
    /// A stream socket connected to the NIC's passt.
    Stream(OwnedFd),
}

/// A NIC to hot-plug.
#[derive(Debug)]
pub struct HotNic {
    /// The guest's MAC (also names the ids).
    pub mac: String,
    pub backend: HotNicBackend,
    /// Spare root ports to plug into (q35), see [`crate::argv::hotplug_ports`].
    pub ports: Vec<String>,
}

/// Everything that can go wrong hot-plugging a NIC.
#[derive(Debug, thiserror::Error)]
pub enum NicHotplugError {
    /// A QMP step failed. During attach, what was done before it has been undone.
    #[error("QMP `{command}` failed for NIC {mac}")]
    Qmp {
        command: &'static str,
        mac: String,
        #[source]
        source: QmpError,
    },
    /// The guest did not release the device in time. The request stays pending in
    /// QEMU and the NIC stays plugged; detaching again later finishes the job.
    #[error(
        "the guest did not release NIC {mac} within {timeout:?} \
         (no ACPI hot-plug support, or it refused); the NIC is still plugged"
    )]
    UnplugTimeout { mac: String, timeout: Duration },
    /// Neither the device nor its netdev exists.
    #[error("NIC {mac} is not plugged into the running VM")]
    NotAttached { mac: String },
    /// The operation's task was stopped before finishing (runtime shutdown).
    #[error("hot-plug operation on NIC {mac} was interrupted")]
    Interrupted { mac: String },
}

/// Plug `nic` into the running VM: `getfd`, `netdev_add`, `device_add`. On failure
/// the netdev is removed again and the descriptor closed: the VM is as it was.
pub async fn attach_nic(qmp: &Qmp, nic: HotNic) -> Result<(), NicHotplugError> {
    let qmp = qmp.clone();
    let mac = nic.mac.clone();
    run_to_completion(async move { attach(&qmp, nic).await }, || {
        NicHotplugError::Interrupted { mac }
    })
    .await
}

/// Unplug the NIC with this MAC: `device_del`, wait up to `timeout` for the guest,
/// `netdev_del`. Safe to repeat after [`NicHotplugError::UnplugTimeout`].
pub async fn detach_nic(qmp: &Qmp, mac: &str, timeout: Duration) -> Result<(), NicHotplugError> {
    let qmp = qmp.clone();
    let owned = mac.to_owned();
    let interrupted = || NicHotplugError::Interrupted {
        mac: mac.to_owned(),
    };
    run_to_completion(
        async move { detach(&qmp, &owned, timeout).await },
        interrupted,
    )
    .await
}

async fn attach(qmp: &Qmp, nic: HotNic) -> Result<(), NicHotplugError> {
    let mac = nic.mac.as_str();
    let id = nic_netdev_id(mac);
    let fd = match &nic.backend {
        HotNicBackend::Tap(fd) | HotNicBackend::Stream(fd) => fd,
    };
    qmp.getfd(&id, fd.as_fd())
        .await
        .map_err(qmp_err("getfd", mac))?;
    // QEMU holds its own copy now; ours would keep the tap (or passt) alive after unplug.
    let args = netdev_args(&id, &nic.backend);
    drop(nic.backend);
    if let Err(e) = qmp.execute_raw("netdev_add", Some(args)).await {
        // Not consumed: close QEMU's copy too.
        let _ = qmp.closefd(&id).await;
        return Err(qmp_err("netdev_add", mac)(e));
    }
    let device = json!({
        "driver": "virtio-net-pci",
        "netdev": id,
        "id": nic_device_id(mac),
        "mac": mac,
        // QEMU, chrooted, cannot read the iPXE option ROM any more; a NIC plugged
        // after boot has no use for one.
        "romfile": "",
    });
    if let Err(e) = add_in_free_port(qmp, device, &nic.ports).await {
        if let Err(undo) = netdev_del(qmp, &id).await {
            tracing::warn!(mac, error = %undo, "rollback: netdev_del failed; the netdev may remain");
        }
        return Err(qmp_err("device_add", mac)(e));
    }
    tracing::info!(mac, "NIC hot-plugged");
    Ok(())
}

async fn detach(qmp: &Qmp, mac: &str, timeout: Duration) -> Result<(), NicHotplugError> {
    let device_found = match crate::device::unplug(qmp, &nic_device_id(mac), timeout).await {
        Ok(found) => found,
        Err(WaitError::TimedOut) => {
            return Err(NicHotplugError::UnplugTimeout {
                mac: mac.to_owned(),
                timeout,
            })
        }
        Err(WaitError::Qmp(command, e)) => return Err(qmp_err(command, mac)(e)),
    };
    let netdev_found = match netdev_del(qmp, &nic_netdev_id(mac)).await {
        Ok(()) => true,
        // QEMU 7.2 says "Device '…' not found" as a GenericError for netdevs.
        Err(QmpError::Command { desc, .. }) if desc.contains("not found") => false,
        Err(e) => return Err(qmp_err("netdev_del", mac)(e)),
    };
    if !(device_found || netdev_found) {
        return Err(NicHotplugError::NotAttached {
            mac: mac.to_owned(),
        });
    }
    tracing::info!(mac, "NIC unplugged");
    Ok(())
}

/// `netdev_add` arguments taking the descriptor passed under `id`. A tap keeps
/// the vnet header it was opened with; a stream is a client of passt.
fn netdev_args(id: &str, backend: &HotNicBackend) -> Value {
    match backend {
        HotNicBackend::Tap(_) => json!({ "type": "tap", "id": id, "fd": id }),
        HotNicBackend::Stream(_) => json!({
            "type": "stream",
            "id": id,
            "server": false,
            "addr": { "type": "fd", "str": id },
        }),
    }
}

async fn netdev_del(qmp: &Qmp, id: &str) -> Result<(), QmpError> {
    qmp.execute_raw("netdev_del", Some(json!({ "id": id })))
        .await
        .map(drop)
}

fn qmp_err(command: &'static str, mac: &str) -> impl FnOnce(QmpError) -> NicHotplugError {
    let mac = mac.to_owned();
    move |source| NicHotplugError::Qmp {
        command,
        mac,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_peer::Peer;

    const MAC: &str = "52:54:00:ab:cd:ef";

    fn tap_like() -> OwnedFd {
        OwnedFd::from(tempfile::tempfile().unwrap())
    }

    fn hot(ports: &[&str]) -> HotNic {
        HotNic {
            mac: MAC.into(),
            backend: HotNicBackend::Tap(tap_like()),
            ports: ports.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_tap_is_passed_added_and_plugged_into_the_first_free_port() {
        let (qmp, mut peer) = Peer::start().await;
        let call = tokio::spawn(async move { attach_nic(&qmp, hot(&["hp0", "hp1"])).await });
        let (id, args) = peer.expect("getfd").await;
        assert_eq!(args, json!({"fdname": "net-525400abcdef"}));
        peer.ok(id, json!({})).await;
        let (id, args) = peer.expect("netdev_add").await;
        assert_eq!(
            args,
            json!({"type": "tap", "id": "net-525400abcdef", "fd": "net-525400abcdef"})
        );
        peer.ok(id, json!({})).await;
        let (id, args) = peer.expect("device_add").await;
        assert_eq!(args["bus"], "hp0");
        assert_eq!(args["mac"], MAC);
        assert_eq!(args["id"], "net-525400abcdef-dev");
        peer.err(
            id,
            "GenericError",
            "PCI: slot 0 function 0 not available for virtio-net-pci, in use by virtio-blk-pci",
        )
        .await;
        let (id, args) = peer.expect("device_add").await;
        assert_eq!(args["bus"], "hp1");
        peer.ok(id, json!({})).await;
        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_device_add_removes_the_netdev_again() {
        let (qmp, mut peer) = Peer::start().await;
        let call = tokio::spawn(async move { attach_nic(&qmp, hot(&[])).await });
        for command in ["getfd", "netdev_add"] {
            let (id, _) = peer.expect(command).await;
            peer.ok(id, json!({})).await;
        }
        let (id, args) = peer.expect("device_add").await;
        assert!(args.get("bus").is_none(), "pc: QEMU picks the slot");
        peer.err(id, "GenericError", "Duplicate ID").await;
        let (id, args) = peer.expect("netdev_del").await;
        assert_eq!(args, json!({"id": "net-525400abcdef"}));
        peer.ok(id, json!({})).await;
        let e = call.await.unwrap().unwrap_err();
        assert!(
            matches!(
                &e,
                NicHotplugError::Qmp {
                    command: "device_add",
                    ..
                }
            ),
            "{e:?}"
        );
        peer.expect_silence().await;
    }

    #[tokio::test]
    async fn a_refused_netdev_closes_the_passed_descriptor() {
        let (qmp, mut peer) = Peer::start().await;
        let nic = HotNic {
            backend: HotNicBackend::Stream(tap_like()),
            ..hot(&[])
        };
        let call = tokio::spawn(async move { attach_nic(&qmp, nic).await });
        let (id, _) = peer.expect("getfd").await;
        peer.ok(id, json!({})).await;
        let (id, args) = peer.expect("netdev_add").await;
        assert_eq!(
            args["addr"],
            json!({"type": "fd", "str": "net-525400abcdef"})
        );
        peer.err(id, "GenericError", "no").await;
        let (id, args) = peer.expect("closefd").await;
        assert_eq!(args, json!({"fdname": "net-525400abcdef"}));
        peer.ok(id, json!({})).await;
        assert!(call.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn unplug_waits_for_the_guest_then_deletes_the_netdev() {
        let (qmp, mut peer) = Peer::start().await;
        let call = tokio::spawn(async move { detach_nic(&qmp, MAC, UNPLUG_TIMEOUT).await });
        let (id, args) = peer.expect("device_del").await;
        assert_eq!(args, json!({"id": "net-525400abcdef-dev"}));
        peer.ok(id, json!({})).await;
        peer.event(
            "DEVICE_DELETED",
            json!({"path": "/machine/peripheral/net-525400abcdef-dev/virtio-backend"}),
        )
        .await;
        peer.event(
            "DEVICE_DELETED",
            json!({"device": "net-525400abcdef-dev", "path": "/machine/peripheral/net-525400abcdef-dev"}),
        )
        .await;
        let (id, args) = peer.expect("netdev_del").await;
        assert_eq!(args, json!({"id": "net-525400abcdef"}));
        peer.ok(id, json!({})).await;
        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unplugging_what_is_not_there_says_so() {
        let (qmp, mut peer) = Peer::start().await;
        let call = tokio::spawn(async move { detach_nic(&qmp, MAC, UNPLUG_TIMEOUT).await });
        let (id, _) = peer.expect("device_del").await;
        peer.err(
            id,
            "DeviceNotFound",
            "Device 'net-525400abcdef-dev' not found",
        )
        .await;
        let (id, _) = peer.expect("netdev_del").await;
        peer.err(id, "GenericError", "Device 'net-525400abcdef' not found")
            .await;
        let e = call.await.unwrap().unwrap_err();
        assert!(matches!(e, NicHotplugError::NotAttached { .. }), "{e:?}");
    }
}
