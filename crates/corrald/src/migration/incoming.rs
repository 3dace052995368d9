//! The destination's half: pre-flight against this host, the arriving VM prepared (its
//! records and images, arrival.rs), then the source's word: `finish` (resume the guest
//! here) or `abort` (nothing of it left here, and it never ran here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use corral_api::{
    DiskTransfer, FinishIncoming, IncomingPhase, IncomingPreflight, IncomingPrepared,
    IncomingStatus, IncomingVm, NetworkKind, PreflightCheck, ValidationError, VmState, VmStatus,
};
use corral_qemu::migrate::{self, Tuning};
use corral_store::{MigrationRole, VmRecord};
use uuid::Uuid;

use super::preflight::{self, DestFacts};
use super::{body_of, phase, record, IncomingBody};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::revert::Reverter;
use crate::vm::Manager;

/// How long the source may take between `finish` and QEMU's state being complete
/// here (it calls `finish` only once its side has completed).
const RESUME_WAIT: Duration = Duration::from_secs(10);

impl Manager {
    /// `POST /api/v1/migrations/preflight`: would this host take the VM?
    pub async fn incoming_preflight(&self, vm: &IncomingVm) -> ApiResult<IncomingPreflight> {
        let facts = self.destination_facts(vm).await?;
        Ok(IncomingPreflight {
            hostname: self.host.hostname.clone(),
            qemu_version: self.host.qemu_version.clone(),
            checks: preflight::check(vm, &facts),
        })
    }

    async fn destination_facts(&self, vm: &IncomingVm) -> ApiResult<DestFacts> {
        let vms = self.store.list_vms()?;
        let mut reserved: BTreeMap<String, BTreeSet<std::net::Ipv4Addr>> = BTreeMap::new();
        for nic in vms.iter().flat_map(|v| &v.spec.nics) {
            if let (NetworkKind::Network, Some(net), Some(ip)) = (nic.kind, &nic.source, nic.ip) {
                reserved.entry(net.clone()).or_default().insert(ip);
            }
        }
        let mut pools = BTreeMap::new();
        for pool in self.store.list_pools()? {
            let free = match corral_storage::driver(&pool.driver) {
                Ok(d) => d.usage(&pool).await.map(|u| u.free).unwrap_or(0),
                Err(_) => 0,
            };
            pools.insert(pool.name.clone(), (pool, free));
        }
        let mut bridges = BTreeSet::new();
        for nic in vm
            .spec
            .nics
            .iter()
            .filter(|n| n.kind == NetworkKind::Bridge)
        {
            let name = nic.source.clone().unwrap_or_default();
            if let Ok(Some(kind)) = corral_net::link::link_kind(&name).await {
                if kind == "bridge" {
                    bridges.insert(name);
                }
            }
        }
        Ok(DestFacts {
            hostname: self.host.hostname.clone(),
            tls_fingerprint: self.cfg.tls_fingerprint.clone(),
            qemu_version: self.host.qemu_version.clone(),
            machine_types: self.host.machine_types.clone(),
            accel: self.host.accel.accel.as_str().to_string(),
            cpus: self.host.cpus,
            memory_available: crate::host::available_memory(),
            vm_names: vms.iter().map(|v| v.spec.name.clone()).collect(),
            vm_uuids: vms.iter().map(|v| v.spec.uuid.to_string()).collect(),
            macs_in_use: vms
                .iter()
                .flat_map(|v| v.spec.nics.iter().map(|n| n.mac.clone()))
                .collect(),
            volume_names: self
                .store
                .list_volumes(None)?
                .into_iter()
                .map(|v| v.name)
                .collect(),
            networks: self
                .store
                .list_networks()?
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            reserved,
            bridges,
            pools,
            files: files_seen(vm),
            uefi: corral_qemu::argv::ovmf_files().is_some(),
            root: self.networking_allowed(),
            userfaultfd: userfaultfd_allowed(),
            cpu_flags: crate::host::cpu_flags().into_iter().collect(),
        })
    }

    /// `POST /api/v1/migrations/incoming`: makes the arriving VM's records and disks
    /// (on their chains; the chain files this host lacks are listed, to be sent next).
    /// On any failure nothing is left.
    pub async fn incoming_prepare(&self, vm: IncomingVm) -> ApiResult<IncomingPrepared> {
        let name = vm.spec.name.clone();
        let _lock = self.lock(&name).await;
        if let Some(failed) = self
            .incoming_preflight(&vm)
            .await?
            .checks
            .into_iter()
            .find(|c| !c.ok)
        {
            return Err(refusal(&failed));
        }
        let mut undo = Reverter::new();
        let arriving = self.arriving(&vm, &mut undo).await?;
        let body = IncomingBody {
            source: vm.source.clone(),
            made: arriving.made,
            exported: vm
                .disks
                .iter()
                .filter(|p| p.transfer == DiskTransfer::Copy)
                .map(|p| p.disk.clone())
                .collect(),
            volumes: arriving.volumes.iter().map(|v| v.name.clone()).collect(),
            started_at: vm.status.started_at,
            was_paused: vm.status.state == VmState::Paused,
            needed: arriving.needed,
            machine_type: vm.machine_type.clone(),
            pci: vm.pci.clone(),
            destination_address: vm.destination_address.clone(),
            postcopy: vm.postcopy,
        };
        let status = VmStatus {
            state: VmState::Incoming,
            pid: None,
            started_at: vm.status.started_at,
            reason: Some(format!("arriving from {}", vm.source)),
            accel: vm.status.accel.clone(),
        };
        let rec = VmRecord {
            spec: arriving.spec,
            status,
            created_at: vm.created_at,
        };
        let m = record(
            vm.id,
            &name,
            MigrationRole::Incoming,
            phase::RECEIVING,
            &body,
        )?;
        self.store.insert_incoming_vm(
            &rec,
            &arriving.volumes,
            &arriving.images,
            &arriving.tree,
            &m,
        )?;
        undo.commit();
        // Its history first, then what happens to it here.
        for e in &vm.events {
            let _ = self
                .store
                .append_event(Some(&name), &e.kind, &e.message, e.time_ms);
        }
        crate::testpoint::reached("migration.incoming.prepared").await;
        self.nics_changed(&rec.spec.nics).await;
        self.events.emit(
            Some(&name),
            "migration",
            format!("arriving from {} (migration {})", vm.source, vm.id),
        );
        Ok(IncomingPrepared {
            needed: body.needed.iter().map(|n| n.index).collect(),
        })
    }

    /// `GET /api/v1/migrations/{id}`: where this host's side of a migration is.
    pub async fn incoming_status(&self, id: Uuid) -> ApiResult<IncomingStatus> {
        let m = self.migration(id)?;
        let qemu = match self.running(&m.vm) {
            Some(r) if m.phase != phase::ABORTED => migrate::info(&r.qmp)
                .await
                .ok()
                .map(|i| i.status().to_string()),
            _ => None,
        };
        let phase = match m.phase.as_str() {
            phase::RESUMED => IncomingPhase::Resumed,
            phase::ABORTED => IncomingPhase::Aborted,
            _ if qemu.as_deref() == Some("completed") => IncomingPhase::Received,
            _ => IncomingPhase::Receiving,
        };
        Ok(IncomingStatus {
            id,
            vm: m.vm,
            phase,
            qemu,
        })
    }

    /// `POST /api/v1/migrations/{id}/finish`: the source has handed over; the guest
    /// resumes here. Idempotent: a second call after the resume changes nothing.
    pub async fn incoming_finish(
        &self,
        id: Uuid,
        req: FinishIncoming,
    ) -> ApiResult<IncomingStatus> {
        let vm = self.migration(id)?.vm;
        let _lock = self.lock(&vm).await;
        let mut m = self.migration(id)?;
        match m.phase.as_str() {
            phase::RESUMED => return self.incoming_status(id).await,
            phase::ABORTED => return Err(aborted(id)),
            _ => {}
        }
        let body: IncomingBody = body_of(&m)?;
        let running = self.running(&m.vm).ok_or_else(|| aborted(id))?;
        wait_complete(&running.qmp, RESUME_WAIT).await?;
        // From here on the source never resumes its copy: roll forward only.
        self.set_phase(&mut m, phase::RESUMING, &body)?;
        // The guest is paused on both hosts until this `cont`: nothing else comes first
        // but its variable store, which it may write as soon as it runs.
        self.take_nvram(&m.vm, &req)?;
        crate::testpoint::reached("migration.incoming.resuming").await;
        if !body.was_paused {
            running.qmp.cont().await?;
        }
        migrate::nbd_stop(&running.qmp, &body.exported).await;
        migrate::remove_tls_creds(&running.qmp).await;
        self.take_console_log(&running.paths.dir, &req.console_log_b64)?;
        let state = match body.was_paused {
            true => VmState::Paused,
            false => VmState::Running,
        };
        let record = self.record(&m.vm)?;
        self.set_status(
            &m.vm,
            VmStatus {
                state,
                pid: Some(running.pid),
                started_at: body.started_at.or(Some(now_secs())),
                reason: None,
                ..record.status
            },
        )?;
        self.set_phase(&mut m, phase::RESUMED, &body)?;
        if let Err(e) = migrate::announce(&running.qmp).await {
            tracing::warn!(vm = %m.vm, "announce-self: {}", crate::error::chain(&e));
        }
        // Its NICs' firewall rules and forwards are made here now (a VM without NICs
        // needs none, and the ruleset is not rebuilt for it).
        if !record.spec.nics.is_empty() {
            if let Err(e) = self.apply_rules().await {
                tracing::warn!(vm = %m.vm, "firewall rules: {}", crate::error::chain(&e));
            }
        }
        self.events.emit(
            Some(&m.vm),
            "migration",
            format!("arrived from {}: the guest runs here now", body.source),
        );
        self.incoming_status(id).await
    }

    /// The UEFI variables as the source left them at the switch-over.
    fn take_nvram(&self, vm: &str, req: &FinishIncoming) -> ApiResult<()> {
        if let (Some(b), Some(path)) = (&req.nvram_b64, self.record(vm)?.spec.nvram) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::BadBody(format!("nvram_b64: {e}")))?;
            std::fs::write(&path, bytes).map_err(|e| ApiError::Internal(format!("{path}: {e}")))?;
        }
        Ok(())
    }

    /// The serial console's output on the source, kept before what this QEMU prints
    /// (the rotated log is read first).
    fn take_console_log(&self, run_dir: &Path, b64: &str) -> ApiResult<()> {
        if b64.is_empty() {
            return Ok(());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ApiError::BadBody(format!("console_log_b64: {e}")))?;
        let _ = std::fs::write(run_dir.join("console.log.1"), bytes);
        Ok(())
    }

    /// `POST /api/v1/migrations/{id}/history`: the console output the source printed,
    /// sent once the guest runs here (so it does not lengthen the pause).
    pub async fn incoming_history(&self, id: Uuid, req: FinishIncoming) -> ApiResult<()> {
        let m = self.migration(id)?;
        if m.phase != phase::RESUMED {
            return Err(ApiError::conflict(format!(
                "migration {id} is {}, not resumed",
                m.phase
            )));
        }
        let record = self.record(&m.vm)?;
        self.take_console_log(&self.vm_paths(&record.spec).dir, &req.console_log_b64)
    }

    /// `POST /api/v1/migrations/{id}/abort`: the source gives up. QEMU, records and
    /// copied disks go; a VM that already resumed here is refused (it is this host's).
    pub async fn incoming_abort(&self, id: Uuid) -> ApiResult<IncomingStatus> {
        let m = self.migration(id)?;
        let _lock = self.lock(&m.vm).await;
        self.abort_arrival_locked(id).await?;
        self.incoming_status(id).await
    }

    /// Gives an arrival up; the caller holds the VM's lock. Final: once aborted, the
    /// arrival never runs here.
    pub(crate) async fn abort_arrival_locked(&self, id: Uuid) -> ApiResult<()> {
        let mut m = self.migration(id)?;
        match m.phase.as_str() {
            phase::ABORTED => return Ok(()),
            phase::RESUMED => {
                return Err(ApiError::Conflict {
                    message: format!("VM '{}' has resumed here; the migration is over", m.vm),
                    hint: Some("the guest runs on this host now".into()),
                })
            }
            _ => {}
        }
        let body: IncomingBody = body_of(&m)?;
        self.end_arrival(&m.vm).await;
        let spec = self.store.get_vm(&m.vm)?.map(|r| r.spec);
        self.set_phase_removing(&mut m, &body)?;
        for f in &body.made {
            let _ = corral_storage::remove_volume(Path::new(f));
        }
        // Chain files cut off mid-way.
        for n in &body.needed {
            let dest = Path::new(&n.dest);
            if let Some(name) = dest.file_name().and_then(|f| f.to_str()) {
                let partial = format!(".corral-arriving-{}-{name}", id.simple());
                let _ = std::fs::remove_file(dest.with_file_name(partial));
            }
        }
        if let Some(spec) = spec {
            if let Some(nvram) = &spec.nvram {
                let _ = std::fs::remove_file(nvram);
            }
            let _ = std::fs::remove_dir_all(self.vm_paths(&spec).dir);
            self.remove_seed(spec.uuid);
            self.nics_changed(&spec.nics).await;
        }
        self.events.emit(
            None,
            "migration",
            format!(
                "arrival of VM '{}' from {} given up; nothing of it is left here",
                m.vm, body.source
            ),
        );
        Ok(())
    }

    /// Records and phase in one step: the VM is no longer here.
    fn set_phase_removing(
        &self,
        m: &mut corral_store::MigrationRecord,
        body: &IncomingBody,
    ) -> ApiResult<()> {
        *m = record(m.id, &m.vm, m.role, phase::ABORTED, body)?;
        self.store.remove_migrated_vm(&m.vm, &body.volumes, m)?;
        Ok(())
    }

    /// Ends the arriving QEMU, if any, and waits until its process is gone (not for its
    /// monitor, which needs the VM's lock the caller holds to record the exit).
    async fn end_arrival(&self, vm: &str) {
        if let Some(r) = self.running(vm) {
            r.set_stop_reason("migration given up");
            if r.qmp.quit().await.is_err() {
                let _ = corral_qemu::launch::kill(r.pid);
            }
            if !corral_qemu::launch::wait_exit(r.pid, Duration::from_secs(10)).await {
                let _ = corral_qemu::launch::kill(r.pid);
                corral_qemu::launch::wait_exit(r.pid, Duration::from_secs(10)).await;
            }
        }
    }

    /// The arriving QEMU died before the guest resumed here: nothing of the arrival
    /// may stay (its disks are partial copies). The source learns it at its next call.
    pub(crate) async fn arrival_died(&self, vm: &str) {
        let Ok(migrations) = self.store.list_migrations() else {
            return;
        };
        let Some(m) = migrations.into_iter().find(|m| {
            m.vm == vm
                && m.role == MigrationRole::Incoming
                && !matches!(m.phase.as_str(), phase::RESUMED | phase::ABORTED)
        }) else {
            return;
        };
        let _lock = self.lock(vm).await;
        // QEMU's last words, before its runtime dir goes with the arrival.
        let said = self
            .record(vm)
            .map(|r| {
                let log =
                    corral_qemu::launch::read_log_since(&self.vm_paths(&r.spec).qemu_log(), 0);
                log.lines().last().unwrap_or("no message").to_string()
            })
            .unwrap_or_default();
        match self.abort_arrival_locked(m.id).await {
            Ok(()) => tracing::warn!(
                vm,
                "the arriving QEMU exited ({said}); migration {} given up",
                m.id
            ),
            Err(e) => tracing::error!(
                vm,
                "cannot give up migration {}: {}",
                m.id,
                crate::error::chain(&e)
            ),
        }
    }
}

/// Waits until this QEMU has the whole state: the stream completed, or post-copy runs.
async fn wait_complete(qmp: &corral_qemu::qmp::Qmp, limit: Duration) -> ApiResult<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let info = migrate::info(qmp).await?;
        match info.status() {
            "completed" | "postcopy-active" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(ApiError::Conflict {
                    message: format!(
                        "the incoming migration {}: {}",
                        info.status(),
                        info.error_desc.clone().unwrap_or_default()
                    ),
                    hint: Some("the source keeps the VM".into()),
                })
            }
            _ if std::time::Instant::now() > deadline => {
                return Err(ApiError::Conflict {
                    message: format!("the VM's state has not fully arrived ({})", info.status()),
                    hint: Some(
                        "the source calls finish once its side has completed; try again".into(),
                    ),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

fn aborted(id: Uuid) -> ApiError {
    ApiError::Conflict {
        message: format!("migration {id} was given up on this host"),
        hint: Some("the source keeps the VM".into()),
    }
}

/// A failed pre-flight check as the error a refused preparation returns.
pub(crate) fn refusal(c: &PreflightCheck) -> ApiError {
    let mut e = ValidationError::new(c.field.clone().unwrap_or_default(), c.message.clone());
    if let Some(h) = &c.hint {
        e = e.hint(h.clone());
    }
    e.into()
}

pub(crate) fn tuning(postcopy: bool) -> Tuning {
    Tuning {
        downtime_ms: corral_api::DEFAULT_MAX_DOWNTIME_MS,
        bandwidth: None,
        auto_converge: true,
        postcopy,
        tls: true,
        tls_hostname: None,
    }
}

/// Whether an unprivileged process (QEMU, confined) may make a userfaultfd.
fn userfaultfd_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").is_ok_and(|v| v.trim() == "1")
}

/// The files the VM needs that are not copied: boot files, CDs and shared disks.
fn files_seen(vm: &IncomingVm) -> BTreeMap<String, u64> {
    let mut wanted: Vec<&str> = Vec::new();
    if let Some(k) = &vm.spec.kernel {
        wanted.push(&k.kernel);
        wanted.extend(k.initrd.as_deref());
    }
    wanted.extend(vm.spec.cdrom.as_deref());
    wanted.extend(
        vm.chain_files
            .iter()
            .filter(|f| f.pool.is_none())
            .map(|f| f.path.as_str()),
    );
    for d in &vm.spec.disks {
        let shared = vm
            .disks
            .iter()
            .any(|p| p.disk == d.id && p.transfer == DiskTransfer::Shared);
        if shared {
            wanted.push(&d.path);
        }
    }
    wanted
        .into_iter()
        .filter_map(|f| std::fs::metadata(f).ok().map(|m| (f.to_string(), m.len())))
        .collect()
}
