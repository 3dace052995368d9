//! VM snapshots, through the one engine in `corral_storage::snapshot`. The engine moves
//! files; this layer checks the request, serialises it on the VM's lock, and records the
//! new spec, tree and volume paths in one store transaction before any file is removed.

use std::path::PathBuf;
use std::sync::Arc;

use corral_api::{
    CreateSnapshotRequest, Operation, SnapshotTree, ValidationError, VmState, Volume,
};
use corral_storage::snapshot::{self, ChainDisk};
use corral_store::VmRecord;

use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::vm::Manager;

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
        let record = self.stopped_record(vm, "snapshot")?;
        let mut tree = self.store.snapshot_tree(vm)?;
        if tree.snapshots.iter().any(|s| s.name == req.name) {
            return Err(ApiError::Conflict {
                message: format!("VM '{vm}' already has a snapshot '{}'", req.name),
                hint: Some("choose another name".into()),
            });
        }
        let mut disks = chain_disks(&record)?;
        snapshot::create(
            &mut tree,
            &mut disks,
            &req.name,
            req.description,
            now_secs(),
        )
        .await
        .map_err(snapshot_error)?;
        // UEFI: the firmware variables are part of the VM's state, so of the snapshot.
        let nvram_copy = match &record.spec.nvram {
            Some(nvram) => {
                let copy = format!("{}@{}.fd", nvram.trim_end_matches(".fd"), req.name);
                std::fs::copy(nvram, &copy)
                    .map_err(|e| ApiError::Internal(format!("{copy}: {e}")))?;
                if let Some(s) = tree.snapshots.last_mut() {
                    s.nvram = Some(copy.clone());
                }
                Some(copy)
            }
            None => None,
        };
        if let Err(e) = self.save_chains(record, &tree, &disks) {
            if let Some(copy) = nvram_copy {
                let _ = std::fs::remove_file(copy);
            }
            return Err(e);
        }
        self.events.emit(
            Some(vm),
            "snapshot",
            format!("snapshot '{}' created", req.name),
        );
        Ok(tree)
    }

    pub async fn revert_snapshot(&self, vm: &str, name: &str) -> ApiResult<SnapshotTree> {
        let _lock = self.lock(vm).await;
        let record = self.stopped_record(vm, "revert")?;
        let mut tree = self.store.snapshot_tree(vm)?;
        let mut disks = chain_disks(&record)?;
        let garbage = snapshot::revert(&mut tree, &mut disks, name)
            .await
            .map_err(snapshot_error)?;
        let nvram = record.spec.nvram.clone();
        self.save_chains(record, &tree, &disks)?;
        self.drop_garbage(&garbage);
        let saved = tree
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.nvram.clone());
        if let (Some(nvram), Some(saved)) = (nvram, saved) {
            restore_nvram(&saved, &nvram)?;
        }
        self.events.emit(
            Some(vm),
            "snapshot",
            format!("reverted to snapshot '{name}'"),
        );
        Ok(tree)
    }

    /// Deleting a snapshot merges its data into its neighbours, which takes time: an
    /// operation with progress.
    pub async fn delete_snapshot(self: &Arc<Self>, vm: &str, name: &str) -> ApiResult<Operation> {
        let tree = self.snapshot_tree(vm)?;
        if !tree.snapshots.iter().any(|s| s.name == name) {
            return Err(ApiError::NotFound {
                kind: "snapshot",
                name: name.to_string(),
            });
        }
        self.stopped_record(vm, "delete a snapshot of")?;
        let (op, handle) = self.ops.begin("snapshot.delete", vm, false)?;
        let mgr = self.clone();
        let (vm, name) = (vm.to_string(), name.to_string());
        tokio::spawn(async move {
            let progress = |p: f32| handle.progress(p * 0.95);
            let result = mgr.merge_out(&vm, &name, &progress).await;
            handle.finish(result);
        });
        Ok(op)
    }

    async fn merge_out(
        &self,
        vm: &str,
        name: &str,
        progress: &(dyn Fn(f32) + Send + Sync),
    ) -> ApiResult<()> {
        let _lock = self.lock(vm).await;
        let record = self.stopped_record(vm, "delete a snapshot of")?;
        let mut tree = self.store.snapshot_tree(vm)?;
        let disks = chain_disks(&record)?;
        let nvram_copy = tree
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.nvram.clone());
        let mut garbage = snapshot::delete(&mut tree, &disks, name, progress)
            .await
            .map_err(snapshot_error)?;
        garbage.extend(nvram_copy.map(PathBuf::from));
        self.save_chains(record, &tree, &disks)?;
        self.drop_garbage(&garbage);
        self.events
            .emit(Some(vm), "snapshot", format!("snapshot '{name}' deleted"));
        Ok(())
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

    fn stopped_record(&self, vm: &str, what: &str) -> ApiResult<VmRecord> {
        let record = self.record(vm)?;
        if record.status.state != VmState::Stopped {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot {what} VM '{vm}' while it is {}",
                    record.status.state.as_str()
                ),
                hint: Some("stop it first; snapshots of running VMs are not supported yet".into()),
            });
        }
        Ok(record)
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
