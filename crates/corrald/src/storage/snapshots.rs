//! VM snapshots, through the one engine in `corral_storage::snapshot`. The engine moves
//! files; this layer checks the request, serialises it on the VM's lock, and records the
//! new spec, tree and volume paths in one store transaction before any file is removed.

use std::path::PathBuf;
use std::sync::Arc;

use corral_api::{
    CreateSnapshotRequest, Operation, SnapshotMemory, SnapshotTree, ValidationError, VmSpec,
    VmState, Volume,
};
use corral_storage::import::Scaled;
use corral_storage::snapshot::{self, ChainDisk, LiveChain};
use corral_store::VmRecord;

use super::live_chain::{self, QemuChain};
use super::quiesce::{self, FreezeFailed, Outcome, Quiesce};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::vm::{Manager, Running};

impl Manager {
    pub fn snapshot_tree(&self, vm: &str) -> ApiResult<SnapshotTree> {
        self.record(vm)?;
        Ok(self.store.snapshot_tree(vm)?)
    }

    pub async fn create_snapshot(
        &self,
        vm: &str,
        req: CreateSnapshotRequest,
    ) -> ApiResult<SnapshotTree> {
        corral_api::validate_name("name", &req.name)?;
        let _lock = self.lock(vm).await;
        let record = self.record(vm)?;
        let running = self.snapshot_target(vm, &record, "snapshot")?;
        if req.memory && running.is_none() {
            return Err(ValidationError::new(
                "memory",
                format!("VM '{vm}' is stopped: it has no memory state to save"),
            )
            .hint("start it, or take a disk-only snapshot without --memory")
            .into());
        }
        self.require_snapshot_pools(&record)?;
        let mut tree = self.store.snapshot_tree(vm)?;
        if tree.snapshots.iter().any(|s| s.name == req.name) {
            return Err(ApiError::Conflict {
                message: format!("VM '{vm}' already has a snapshot '{}'", req.name),
                hint: Some("choose another name".into()),
            });
        }
        let agent_connected = running.as_ref().is_some_and(|r| r.agent.is_connected());
        let plan = quiesce::plan(
            vm,
            req.quiesce,
            req.memory,
            record.status.state,
            agent_connected,
        )?;
        let quiesce = running
            .as_ref()
            .filter(|_| plan != quiesce::Plan::Skip)
            .map(|r| Quiesce::new(&r.agent, plan == quiesce::Plan::Require));
        let mut disks = chain_disks(&record)?;
        let chain = running.as_ref().map(|r| QemuChain {
            qmp: &r.qmp,
            quiesce: quiesce.as_ref(),
        });
        let live = chain.as_ref().map(|c| c as &dyn LiveChain);
        // Disks and memory must be of one instant: the guest is paused across both.
        let was_running = record.status.state == VmState::Running;
        let paused_here = running.as_ref().filter(|_| req.memory && was_running);
        if let Some(r) = paused_here {
            r.qmp.stop().await?;
        }
        let journal = |tree: &SnapshotTree, disks: &[ChainDisk]| {
            self.save_chains(record.clone(), tree, disks)
                .map_err(|e| snapshot::SnapshotError::Record(Box::new(e)))
        };
        let taken = snapshot::create_on(
            &mut tree,
            &mut disks,
            &req.name,
            req.description,
            now_secs(),
            live,
            &journal,
        )
        .await
        .map_err(snapshot_error);
        let memory = match (&taken, &running) {
            (Ok(()), Some(r)) if req.memory => Some(
                self.save_snapshot_memory(vm, &req.name, &record, r, was_running)
                    .await,
            ),
            _ => None,
        };
        if let (Err(_), Some(r)) = (&taken, paused_here) {
            r.qmp.cont().await?;
        }
        taken?;
        if let Some(q) = &quiesce {
            self.report_quiesce(vm, &req.name, &mut tree, q.outcome());
        }
        let mut memory_error = None;
        match memory {
            Some(Ok(m)) => set_last(&mut tree, |s| s.memory = Some(m)),
            // The disks have switched already: the snapshot is kept, as disk-only.
            Some(Err(e)) => memory_error = Some(e),
            None => {}
        }
        self.finish_snapshot(vm, &req.name, record, &mut tree, &disks)?;
        if let Some(e) = memory_error {
            return Err(ApiError::Internal(format!(
                "snapshot '{}' was taken of the disks only: saving the memory failed: {}",
                req.name,
                crate::error::chain(&e)
            )));
        }
        Ok(tree)
    }

    /// Records in the new snapshot whether it was quiesced, and tells the event log what
    /// the guest agent did (or why the snapshot is only crash-consistent).
    fn report_quiesce(&self, vm: &str, name: &str, tree: &mut SnapshotTree, outcome: Outcome) {
        match outcome {
            Outcome::Frozen { count, thaw_error } => {
                set_last(tree, |s| s.quiesced = true);
                self.events.emit(
                    Some(vm),
                    "snapshot",
                    format!(
                        "snapshot '{name}': the guest agent froze {count} file system(s) \
                         around the switch and thawed them"
                    ),
                );
                if let Some(e) = thaw_error {
                    self.events.emit(
                        Some(vm),
                        "agent",
                        format!(
                            "thawing the guest's file systems after snapshot '{name}' failed \
                             ({e}); they may still be frozen"
                        ),
                    );
                }
            }
            Outcome::Failed(e) => self.events.emit(
                Some(vm),
                "snapshot",
                format!(
                    "snapshot '{name}' is not quiesced (crash-consistent only): the guest \
                     agent could not freeze the file systems: {e}"
                ),
            ),
            Outcome::NotTried => {}
        }
    }

    /// Saves memory for snapshot `name` while the guest is paused, then lets it go on.
    async fn save_snapshot_memory(
        &self,
        vm: &str,
        name: &str,
        record: &VmRecord,
        running: &Running,
        was_running: bool,
    ) -> ApiResult<SnapshotMemory> {
        let file = live_chain::memory_file(&self.cfg.state_dir, vm, name);
        let saved = live_chain::save_memory(&running.qmp, &file, was_running).await;
        Ok(SnapshotMemory {
            file: file.display().to_string(),
            size_bytes: saved?,
            paused: !was_running,
            spec: Box::new(record.spec.clone()),
        })
    }

    /// Copies the NVRAM into the new snapshot (UEFI: the firmware variables are part of
    /// the VM's state), records everything, and tells the event log.
    fn finish_snapshot(
        &self,
        vm: &str,
        name: &str,
        record: VmRecord,
        tree: &mut SnapshotTree,
        disks: &[ChainDisk],
    ) -> ApiResult<()> {
        let nvram_copy = match &record.spec.nvram {
            Some(nvram) => {
                let copy = format!("{}@{name}.fd", nvram.trim_end_matches(".fd"));
                std::fs::copy(nvram, &copy)
                    .map_err(|e| ApiError::Internal(format!("{copy}: {e}")))?;
                set_last(tree, |s| s.nvram = Some(copy.clone()));
                Some(copy)
            }
            None => None,
        };
        if let Err(e) = self.save_chains(record, tree, disks) {
            // Not recorded: the new overlays stay in use by a running VM, so they are
            // left (orphans to `pool show`); the copies nothing else uses go.
            if let Some(copy) = nvram_copy {
                let _ = std::fs::remove_file(copy);
            }
            return Err(e);
        }
        let with = if tree.snapshots.last().is_some_and(|s| s.memory.is_some()) {
            " with memory"
        } else {
            ""
        };
        self.events.emit(
            Some(vm),
            "snapshot",
            format!("snapshot '{name}' created{with}"),
        );
        Ok(())
    }

    /// Puts the VM back to snapshot `name`. A running VM is powered off first; it is
    /// started again from the snapshot's saved memory (then it resumes where it was), or,
    /// for a disk-only snapshot, booted from the reverted disks if it was running.
    pub async fn revert_snapshot(&self, vm: &str, name: &str) -> ApiResult<SnapshotTree> {
        let record = self.record(vm)?;
        let snap = self
            .store
            .snapshot_tree(vm)?
            .snapshots
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::NotFound {
                kind: "snapshot",
                name: name.to_string(),
            })?;
        if let Some(m) = &snap.memory {
            same_disks(&m.spec, &record.spec, name)?;
        }
        let before = record.status.state;
        match before {
            VmState::Stopped => {}
            VmState::Running | VmState::Paused | VmState::Crashed => {
                self.power_off(vm, &format!("powered off to revert to snapshot '{name}'"))
                    .await?
            }
            other => return Err(busy(vm, "revert", other)),
        }
        let _lock = self.lock(vm).await;
        let mut record = self.record(vm)?;
        if record.status.state != VmState::Stopped {
            return Err(busy(vm, "revert", record.status.state));
        }
        let mut tree = self.store.snapshot_tree(vm)?;
        let mut disks = chain_disks(&record)?;
        let garbage = snapshot::revert(&mut tree, &mut disks, name)
            .await
            .map_err(snapshot_error)?;
        if let Some(m) = &snap.memory {
            restore_hardware(&mut record.spec, &m.spec);
        }
        let nvram = record.spec.nvram.clone();
        self.save_chains(record, &tree, &disks)?;
        self.drop_garbage(&garbage);
        if let (Some(nvram), Some(saved)) = (nvram, &snap.nvram) {
            restore_nvram(saved, &nvram)?;
        }
        self.events.emit(
            Some(vm),
            "snapshot",
            format!("reverted to snapshot '{name}'"),
        );
        let restart = match &snap.memory {
            Some(m) => Some((m.paused, Some(PathBuf::from(&m.file)))),
            None if before == VmState::Running => Some((false, None)),
            None if before == VmState::Paused => Some((true, None)),
            None => None,
        };
        if let Some((paused, memory)) = restart {
            self.start_locked(vm, paused, memory.as_deref())
                .await
                .map_err(|e| {
                    ApiError::Internal(format!(
                        "reverted to snapshot '{name}', but the VM did not start: {}",
                        crate::error::chain(&e)
                    ))
                })?;
            // Back from saved memory, the guest's clock is where it was at the snapshot.
            if let (Some(_), false, Some(running)) = (&memory, paused, self.running(vm)) {
                self.sync_guest_clock(vm, running, &format!("reverting to snapshot '{name}'"));
            }
        }
        Ok(tree)
    }

    /// Deleting a snapshot merges its data into its neighbours, which takes time: an
    /// operation with progress, cancellable (a merge cut short leaves every image reading
    /// what it read, and deleting again finishes the job).
    pub async fn delete_snapshot(self: &Arc<Self>, vm: &str, name: &str) -> ApiResult<Operation> {
        let tree = self.snapshot_tree(vm)?;
        if !tree.snapshots.iter().any(|s| s.name == name) {
            return Err(ApiError::NotFound {
                kind: "snapshot",
                name: name.to_string(),
            });
        }
        self.check_snapshot_delete(vm, name)?;
        let record = self.record(vm)?;
        self.snapshot_target(vm, &record, "delete a snapshot of")?;
        let (op, handle) = self.ops.begin("snapshot.delete", vm, true)?;
        let mgr = self.clone();
        let (vm, name) = (vm.to_string(), name.to_string());
        tokio::spawn(async move {
            let result = mgr.merge_out(&vm, &name, &handle).await;
            match result {
                Err(ApiError::Cancelled) => handle.cancelled_done(),
                other => handle.finish(other),
            }
        });
        Ok(op)
    }

    async fn merge_out(&self, vm: &str, name: &str, work: &OpHandle) -> ApiResult<()> {
        let _lock = self.lock(vm).await;
        let record = self.record(vm)?;
        let running = self.snapshot_target(vm, &record, "delete a snapshot of")?;
        let mut tree = self.store.snapshot_tree(vm)?;
        let mut disks = chain_disks(&record)?;
        let leftovers: Vec<PathBuf> = tree
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .map(|s| {
                let nvram = s.nvram.iter().map(PathBuf::from);
                nvram
                    .chain(s.memory.iter().map(|m| PathBuf::from(&m.file)))
                    .collect()
            })
            .unwrap_or_default();
        let chain = running.as_ref().map(|r| QemuChain {
            qmp: &r.qmp,
            quiesce: None,
        });
        let live = chain.as_ref().map(|c| c as &dyn LiveChain);
        let progress = Scaled::new(work, 0.0, 95.0);
        let journal = |tree: &SnapshotTree, disks: &[ChainDisk]| {
            self.save_chains(record.clone(), tree, disks)
                .map_err(|e| snapshot::SnapshotError::Record(Box::new(e)))
        };
        let mut garbage =
            snapshot::delete_on(&mut tree, &mut disks, name, live, &progress, &journal)
                .await
                .map_err(snapshot_error)?;
        garbage.extend(leftovers);
        self.save_chains(record, &tree, &disks)?;
        self.drop_garbage(&garbage);
        self.events
            .emit(Some(vm), "snapshot", format!("snapshot '{name}' deleted"));
        Ok(())
    }

    /// After a re-attach: finishes live snapshots that were recorded but not switched
    /// when the daemon died, so the VM writes into the image its record names.
    pub(crate) async fn finish_interrupted_switch(&self, vm: &str, running: &Running) {
        let Ok(record) = self.record(vm) else {
            return;
        };
        let pending = live_chain::unswitched_overlays(running.pid, &record.spec);
        if pending.is_empty() {
            return;
        }
        let disks: Vec<&str> = pending.iter().map(|o| o.disk.as_str()).collect();
        let message = match corral_qemu::live::snapshot(&running.qmp, &pending).await {
            Ok(()) => format!(
                "a snapshot of disks {} was interrupted by a daemon restart and is now \
                 complete; it holds the disks as of this moment",
                disks.join(", ")
            ),
            Err(e) => format!(
                "a snapshot of disks {} was interrupted by a daemon restart and could not be \
                 completed ({}); the VM still writes below the recorded overlay, which reads \
                 the same, until it is restarted",
                disks.join(", "),
                crate::error::chain(&e)
            ),
        };
        self.events.emit(Some(vm), "snapshot", message);
    }

    /// Every image file of a VM's snapshots (for clean-up and orphan accounting).
    pub(crate) fn snapshot_files(&self, vm: &str) -> ApiResult<Vec<(String, PathBuf)>> {
        let tree = self.store.snapshot_tree(vm)?;
        Ok(tree
            .snapshots
            .iter()
            .flat_map(|s| &s.disks)
            .map(|f| (f.disk.clone(), PathBuf::from(&f.file)))
            .collect())
    }

    /// The QEMU to work through when the VM runs (`None` when it is stopped); a VM on
    /// its way up or down is refused until it gets there.
    fn snapshot_target(
        &self,
        vm: &str,
        record: &VmRecord,
        what: &str,
    ) -> ApiResult<Option<Arc<Running>>> {
        match record.status.state {
            VmState::Stopped => Ok(None),
            VmState::Running | VmState::Paused | VmState::Crashed => self
                .running(vm)
                .map(Some)
                .ok_or_else(|| ApiError::Internal(format!("VM '{vm}' has no QEMU attached"))),
            other => Err(busy(vm, what, other)),
        }
    }

    /// Records the disks' new top images in the spec and their volumes, with the tree.
    fn save_chains(
        &self,
        mut record: VmRecord,
        tree: &SnapshotTree,
        disks: &[ChainDisk],
    ) -> ApiResult<()> {
        let mut volumes: Vec<Volume> = Vec::new();
        for cd in disks {
            let Some(disk) = record.spec.disks.iter_mut().find(|d| d.id == cd.id) else {
                continue;
            };
            disk.path = cd.active.display().to_string();
            disk.format = cd.format;
            if let Some(v) = disk
                .volume
                .as_deref()
                .and_then(|v| self.store.get_volume(v).ok().flatten())
            {
                volumes.push(Volume {
                    path: disk.path.clone(),
                    format: disk.format,
                    ..v
                });
            }
        }
        self.store
            .save_vm_and_snapshots(&record.spec, tree, &volumes)?;
        Ok(())
    }

    fn drop_garbage(&self, garbage: &[PathBuf]) {
        for (file, e) in snapshot::remove_garbage(garbage) {
            tracing::warn!(error = %e, "cannot remove {} (now an orphan)", file.display());
        }
    }
}

/// The VM's disks whose state snapshots capture: every writable volume. A writable file
/// attached by path is the user's, and Corral will not put overlays over it.
pub(crate) fn chain_disks(record: &VmRecord) -> ApiResult<Vec<ChainDisk>> {
    let mut out = Vec::new();
    for (i, d) in record.spec.disks.iter().enumerate() {
        if d.read_only {
            continue;
        }
        let Some(volume) = &d.volume else {
            return Err(ValidationError::new(
                format!("disks[{i}]"),
                format!(
                    "disk {} is the attached file {}, not a volume",
                    d.id, d.path
                ),
            )
            .hint("snapshots cover volumes; attach the file read-only or import it as a volume")
            .into());
        };
        out.push(ChainDisk {
            id: d.id.clone(),
            active: PathBuf::from(&d.path),
            format: d.format,
            prefix: volume.clone(),
        });
    }
    Ok(out)
}

fn busy(vm: &str, what: &str, state: VmState) -> ApiError {
    ApiError::Conflict {
        message: format!("cannot {what} VM '{vm}' while it is {}", state.as_str()),
        hint: Some("wait until it is running or stopped".into()),
    }
}

fn set_last(tree: &mut SnapshotTree, f: impl FnOnce(&mut corral_api::Snapshot)) {
    if let Some(s) = tree.snapshots.last_mut() {
        f(s);
    }
}

/// A memory snapshot's state fits only the devices it was saved with.
fn same_disks(saved: &VmSpec, now: &VmSpec, name: &str) -> ApiResult<()> {
    let ids = |s: &VmSpec| s.disks.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    if ids(saved) == ids(now) {
        return Ok(());
    }
    Err(ApiError::Conflict {
        message: format!(
            "snapshot '{name}' saved the guest's memory with disks [{}]; the VM now has [{}]",
            ids(saved).join(", "),
            ids(now).join(", ")
        ),
        hint: Some("attach or detach disks to match, then revert".into()),
    })
}

/// Puts back what the saved machine state depends on; disks keep their reverted paths.
fn restore_hardware(spec: &mut VmSpec, saved: &VmSpec) {
    spec.memory_mib = saved.memory_mib;
    spec.vcpus = saved.vcpus;
    spec.machine = saved.machine;
    spec.nics = saved.nics.clone();
    spec.cdrom = saved.cdrom.clone();
    spec.kernel = saved.kernel.clone();
    // The seed CD is a device the saved state expects (its content follows the config).
    spec.cloud_init = saved.cloud_init.clone();
}

fn snapshot_error(e: snapshot::SnapshotError) -> ApiError {
    match e {
        snapshot::SnapshotError::NotFound(name) => ApiError::NotFound {
            kind: "snapshot",
            name,
        },
        snapshot::SnapshotError::Exists(name) => ApiError::Conflict {
            message: format!("snapshot '{name}' already exists"),
            hint: Some("choose another name".into()),
        },
        snapshot::SnapshotError::Storage(e) => e.into(),
        snapshot::SnapshotError::Cancelled => ApiError::Cancelled,
        e @ snapshot::SnapshotError::StillNeeded { .. } => ApiError::Conflict {
            message: e.to_string(),
            hint: Some("nothing was removed; report this, it is a bug".into()),
        },
        snapshot::SnapshotError::Record(e) => {
            ApiError::Internal(format!("recording the snapshot tree: {e}"))
        }
        snapshot::SnapshotError::Live(e) if e.is::<FreezeFailed>() => e
            .downcast_ref::<FreezeFailed>()
            .map(quiesce::freeze_failed)
            .unwrap_or_else(|| ApiError::Internal(e.to_string())),
        snapshot::SnapshotError::Live(e) => ApiError::Internal(format!(
            "the running VM refused: {}",
            crate::error::chain(e.as_ref())
        )),
    }
}

/// Puts a snapshot's NVRAM back: copied to a temporary name, then renamed over the VM's
/// file, so the VM never sees a half-written variables store.
fn restore_nvram(saved: &str, nvram: &str) -> ApiResult<()> {
    let tmp = format!("{nvram}.restoring");
    std::fs::copy(saved, &tmp)
        .and_then(|_| std::fs::rename(&tmp, nvram))
        .map_err(|e| ApiError::Internal(format!("restoring NVRAM {nvram} from {saved}: {e}")))
}
