//! Adding and removing a VM's NICs: in its spec while it is stopped, and also in
//! the running QEMU (hot-plug, see [`corral_qemu::nic`]) while it runs.
//!
//! The spec is stored, and the networks' DHCP reservations updated, *before* a NIC
//! is plugged, so the guest's first DHCP request already finds its reservation; a
//! failed plug puts the old spec (and reservations) back.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use corral_api::{NetworkKind, Nic, NicRequest, VmState};
use corral_net::passt;
use corral_qemu::argv::hotplug_ports;
use corral_qemu::nic::{attach_nic, detach_nic, HotNic, HotNicBackend, UNPLUG_TIMEOUT};
use corral_store::VmRecord;

use super::nics::{rename_field, stop_passt};
use crate::error::{ApiError, ApiResult};
use crate::vm::{Manager, Running};

impl Manager {
    /// Adds a NIC (resolved as at create: MAC, reservation). A running or paused VM
    /// gets it at once; a stopped one at its next start.
    pub async fn add_nic(&self, name: &str, req: NicRequest) -> ApiResult<Nic> {
        let _lock = self.lock(name).await;
        let record = self.record(name)?;
        let running = self.nic_target(&record, "add a NIC to", false)?;
        let mut nic = self
            .resolve_nics(Some(std::slice::from_ref(&req)))
            .await
            .map_err(|e| rename_field(e, "networks[0]", "nic"))?;
        let nic = nic.remove(0);
        let mut spec = record.spec.clone();
        spec.nics.push(nic.clone());
        self.store.update_vm_spec(&spec)?;
        self.nics_changed(std::slice::from_ref(&nic)).await;
        if let Some(running) = running {
            if let Err(e) = self.hot_plug(&record, &running, &nic).await {
                self.store.update_vm_spec(&record.spec)?;
                self.nics_changed(std::slice::from_ref(&nic)).await;
                return Err(e);
            }
        }
        self.firewall_follows_nics(&spec.firewall).await;
        let how = if running_now(&record) {
            " (hot-plugged)"
        } else {
            ""
        };
        self.events
            .emit(Some(name), "updated", format!("NIC {} added{how}", nic.mac));
        Ok(nic)
    }

    /// Removes the NIC with this MAC, and its DHCP reservation. A running VM's guest
    /// must release the device first (ACPI unplug); if it does not within
    /// [`UNPLUG_TIMEOUT`], the NIC stays, and a retry finishes the job.
    pub async fn remove_nic(&self, name: &str, mac: &str) -> ApiResult<()> {
        let _lock = self.lock(name).await;
        let record = self.record(name)?;
        let mac = mac.to_ascii_lowercase();
        let mut spec = record.spec.clone();
        let Some(i) = spec.nics.iter().position(|n| n.mac == mac) else {
            return Err(ApiError::NotFound {
                kind: "NIC",
                name: format!("{mac} of VM {name}"),
            });
        };
        if let Some(running) = self.nic_target(&record, "remove a NIC from", true)? {
            detach_nic(&running.qmp, &mac, UNPLUG_TIMEOUT).await?;
            if spec.nics[i].kind == NetworkKind::User {
                passt::stop(&passt::PasstConfig::for_nic(&running.paths.dir, &mac));
            }
        }
        let nic = spec.nics.remove(i);
        self.store.update_vm_spec(&spec)?;
        self.nics_changed(std::slice::from_ref(&nic)).await;
        self.firewall_follows_nics(&spec.firewall).await;
        let how = if running_now(&record) {
            " (unplugged)"
        } else {
            ""
        };
        self.events
            .emit(Some(name), "updated", format!("NIC {mac} removed{how}"));
        Ok(())
    }

    /// The QEMU to change along with the spec: none for a stopped VM. Unplugging
    /// needs a running guest (it must answer the ACPI request); plugging works
    /// paused too. Transitional states are refused.
    fn nic_target(
        &self,
        record: &VmRecord,
        what: &str,
        guest_must_run: bool,
    ) -> ApiResult<Option<Arc<Running>>> {
        let vm = &record.spec.name;
        let state = record.status.state;
        match state {
            VmState::Stopped => Ok(None),
            VmState::Running => self.qemu_of(vm).map(Some),
            VmState::Paused if !guest_must_run => self.qemu_of(vm).map(Some),
            VmState::Paused => Err(ApiError::Conflict {
                message: format!(
                    "cannot {what} VM '{vm}' while it is paused: the guest must release the device"
                ),
                hint: Some("resume the VM first (`corral resume`), or stop it".into()),
            }),
            other => Err(ApiError::conflict(format!(
                "cannot {what} VM '{vm}' while it is {}",
                other.as_str()
            ))),
        }
    }

    fn qemu_of(&self, vm: &str) -> ApiResult<Arc<Running>> {
        self.running(vm)
            .ok_or_else(|| ApiError::conflict(format!("VM '{vm}' has no QEMU attached")))
    }

    /// Makes the NIC's host end and plugs it into the running QEMU. On failure nothing
    /// is left: the tap closes with its last descriptor, passt is stopped.
    async fn hot_plug(&self, record: &VmRecord, running: &Running, nic: &Nic) -> ApiResult<()> {
        let index = record.spec.nics.len();
        let mut passt_pid = None;
        let backend = if nic.kind == NetworkKind::User {
            let (fd, pid) = self.start_passt(running, nic).await?;
            passt_pid = Some(pid);
            HotNicBackend::Stream(fd)
        } else {
            HotNicBackend::Tap(self.open_nic_tap(nic, index).await?)
        };
        let hot = HotNic {
            mac: nic.mac.clone(),
            backend,
            ports: hotplug_ports(record.spec.machine),
        };
        let result = attach_nic(&running.qmp, hot).await;
        if let (Err(_), Some(pid)) = (&result, passt_pid) {
            stop_passt(pid);
        }
        Ok(result?)
    }

    /// A passt for a hot-plugged user NIC, and a socket connected to it for QEMU
    /// (which, chrooted, cannot connect by path itself). passt runs `--one-off`: it
    /// ends when QEMU closes that connection.
    async fn start_passt(&self, running: &Running, nic: &Nic) -> ApiResult<(OwnedFd, u32)> {
        let cfg = passt::PasstConfig::for_nic(&running.paths.dir, &nic.mac);
        let pid = passt::spawn(&cfg).await?;
        match std::os::unix::net::UnixStream::connect(&cfg.socket) {
            Ok(stream) => Ok((OwnedFd::from(stream), pid)),
            Err(e) => {
                stop_passt(pid);
                Err(ApiError::Internal(format!(
                    "cannot connect to passt at {}: {e}",
                    cfg.socket.display()
                )))
            }
        }
    }

    /// Firewall rules name a VM's taps: a VM with rules gets them on its new set.
    async fn firewall_follows_nics(&self, rules: &[corral_api::FirewallRule]) {
        if rules.is_empty() {
            return;
        }
        if let Err(e) = self.apply_rules().await {
            tracing::warn!(
                "firewall not updated for the new NICs: {}",
                crate::error::chain(&e)
            );
        }
    }
}

fn running_now(record: &VmRecord) -> bool {
    record.status.state.has_process()
}
