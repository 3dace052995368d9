//! `corral clone SRC DST`: a full copy of a VM as a new VM with its own volumes,
//! a new machine identity (UUID) and new MAC addresses. The copy reads each disk through
//! its whole chain (snapshots are not copied: the clone starts from the current state);
//! a running VM is copied crash-consistently, as of one instant, without stopping it
//! and is an operation with progress that can be cancelled; nothing of the clone exists
//! until every disk is copied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api::{Disk, DiskFormat, Operation, ValidationError, VmSpec, VmState, VmStatus, Volume};
use corral_storage::import::{self, Scaled, SourceFormat};
use corral_store::VmRecord;
use uuid::Uuid;

use super::create::owned_volume_name;
use super::Manager;
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::revert::Reverter;
use crate::storage::pool_driver;

impl Manager {
    pub async fn clone_vm(self: &Arc<Self>, source: &str, target: &str) -> ApiResult<Operation> {
        corral_api::validate_name("name", target)?;
        let record = self.record(source)?;
        if !matches!(
            record.status.state,
            VmState::Stopped | VmState::Running | VmState::Paused
        ) {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot clone VM '{source}' while it is {}",
                    record.status.state.as_str()
                ),
                hint: Some("wait until it is running, paused or stopped".into()),
            });
        }
        if self.store.get_vm(target)?.is_some() {
            return Err(super::create::already_exists(target));
        }
        for (i, d) in record.spec.disks.iter().enumerate() {
            if d.volume.is_none() && !d.read_only {
                return Err(ValidationError::new(
                    format!("disks[{i}]"),
                    format!(
                        "disk {} of '{source}' is the attached file {}, which a clone cannot share",
                        d.id, d.path
                    ),
                )
                .hint("attach it read-only, or import it as a volume first")
                .into());
            }
            if let Some(volume) = &d.volume {
                self.check_clone_pool(source, volume)?;
                let name = owned_volume_name(target, i);
                if self.store.get_volume(&name)?.is_some() {
                    return Err(ApiError::conflict(format!("volume name '{name}' is taken")));
                }
            }
        }
        let (op, handle) = self.ops.begin("vm.clone", target, true)?;
        let mgr = self.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            match mgr.copy_vm(record, &target, &handle).await {
                Err(ApiError::Cancelled) => handle.cancelled_done(),
                other => handle.finish(other),
            }
        });
        Ok(op)
    }

    async fn copy_vm(&self, source: VmRecord, target: &str, handle: &OpHandle) -> ApiResult<()> {
        let _reservation = self.reserve_name(target)?;
        let _lock = self.lock(&source.spec.name).await;
        let mut made: Vec<Staged> = Vec::new();
        // A running source is copied by QEMU itself, as of one instant; a stopped one
        // by qemu-img.
        let result = match self.running(&source.spec.name) {
            Some(running) => {
                self.backup_disks(&source.spec, target, &running, handle, &mut made)
                    .await
            }
            None => {
                self.copy_disks(&source.spec, target, handle, &mut made)
                    .await
            }
        };
        let disks = match result.and_then(|disks| into_place(&mut made).map(|()| disks)) {
            Ok(disks) => disks,
            Err(e) => {
                discard(&made);
                return Err(e);
            }
        };
        // The copies have their real names now: any failure below removes them.
        let mut revert = Reverter::new();
        let placed: Vec<String> = made.iter().map(|s| s.volume.path.clone()).collect();
        revert.add(move || {
            for path in placed {
                let _ = std::fs::remove_file(path);
            }
        });
        // UEFI: the clone gets its own copy of the variables (sharing the source's file
        // would let one VM's firmware write the other's, and deleting one remove it).
        let uuid = Uuid::new_v4();
        let nvram = source
            .spec
            .nvram
            .as_ref()
            .map(|n| self.new_nvram(target, uuid, Path::new(n), &mut revert))
            .transpose()?;
        // Held until recorded, so the copy's reserved addresses stay its own.
        let net_lock = self.lock(crate::network::NETWORKS_LOCK).await;
        let record = VmRecord {
            spec: VmSpec {
                name: target.to_string(),
                uuid,
                nvram,
                disks,
                nics: self.copy_nics(&source.spec.nics).await?,
                firewall: source.spec.firewall.clone(),
                ..source.spec.clone()
            },
            status: VmStatus::stopped(None),
            created_at: now_secs(),
        };
        let volumes: Vec<Volume> = made.iter().map(|s| s.volume.clone()).collect();
        // The VM and its volumes in one transaction: all recorded, or none.
        self.store.insert_vm_with_volumes(&record, &volumes)?;
        drop(net_lock);
        self.nics_changed(&record.spec.nics).await;
        revert.commit();
        self.events.emit(
            Some(target),
            "created",
            format!("cloned from VM '{}'", source.spec.name),
        );
        Ok(())
    }

    /// A crash-consistent copy of a running VM's volume disks: empty targets are made,
    /// then QEMU copies all disks as of one instant (`blockdev-backup` in a transaction).
    async fn backup_disks(
        &self,
        spec: &VmSpec,
        target: &str,
        running: &super::Running,
        handle: &OpHandle,
        made: &mut Vec<Staged>,
    ) -> ApiResult<Vec<Disk>> {
        let mut disks = Vec::new();
        let mut targets = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(source_volume) = &d.volume else {
                disks.push(d.clone());
                continue;
            };
            let (volume, disk) =
                self.clone_volume_for(d, source_volume, target, i, d.size_bytes)?;
            let staging = import::staging_path(Path::new(&volume.path));
            corral_storage::create_qcow2(&staging, d.size_bytes).await?;
            targets.push(corral_qemu::backup::BackupTarget {
                node: d.id.clone(),
                target: staging.clone(),
            });
            made.push(Staged::new(volume, staging));
            disks.push(disk);
        }
        let progress = |p: f32| handle.progress(p);
        let cancelled = || handle.is_cancelled();
        corral_qemu::backup::backup_full(&running.qmp, &targets, &progress, &cancelled)
            .await
            .map_err(|e| match e {
                corral_qemu::backup::BackupError::Cancelled => ApiError::Cancelled,
                other => ApiError::Internal(crate::error::chain(&other)),
            })?;
        Ok(disks)
    }

    /// A clone's copy is a qcow2 file made next to the source volume, so the source's
    /// pool must hold qcow2 files.
    fn check_clone_pool(&self, source: &str, volume: &str) -> ApiResult<()> {
        let Some(v) = self.store.get_volume(volume)? else {
            return Ok(());
        };
        let spec = self.pool_spec(&v.pool)?;
        let caps = pool_driver(&spec)?.capabilities(&spec);
        if caps.block_devices || !caps.formats.contains(&DiskFormat::Qcow2) {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot clone VM '{source}': volume '{volume}' is on pool '{}' ({}), \
                     where clones cannot be made yet",
                    v.pool, spec.driver
                ),
                hint: Some("clone VMs whose volumes are on dir pools".into()),
            });
        }
        Ok(())
    }

    /// The new volume (not yet made or recorded) and disk a clone gets for `d`.
    fn clone_volume_for(
        &self,
        d: &Disk,
        source_volume: &str,
        target: &str,
        index: usize,
        size: u64,
    ) -> ApiResult<(Volume, Disk)> {
        let pool = self
            .store
            .get_volume(source_volume)?
            .map(|v| v.pool)
            .unwrap_or_else(|| corral_api::DEFAULT_POOL.to_string());
        let pool_spec = self.pool_spec(&pool)?;
        let name = owned_volume_name(target, index);
        let dest = pool_driver(&pool_spec)?.volume_path(&pool_spec, &name, DiskFormat::Qcow2);
        let volume = Volume {
            name: name.clone(),
            pool,
            format: DiskFormat::Qcow2,
            size_bytes: size,
            path: dest.display().to_string(),
            owner: Some(target.to_string()),
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: None,
            base_snapshot: None,
            base_file: None,
        };
        let disk = Disk {
            volume: Some(name),
            path: volume.path.clone(),
            format: DiskFormat::Qcow2,
            size_bytes: size,
            owned: true,
            ..d.clone()
        };
        Ok((volume, disk))
    }

    /// Copies every volume disk into a new volume owned by the clone, in the source
    /// volume's pool; read-only files are shared.
    async fn copy_disks(
        &self,
        spec: &VmSpec,
        target: &str,
        handle: &OpHandle,
        made: &mut Vec<Staged>,
    ) -> ApiResult<Vec<Disk>> {
        let n = spec.disks.len().max(1) as f32;
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(source_volume) = &d.volume else {
                disks.push(d.clone());
                continue;
            };
            let (mut volume, mut disk) =
                self.clone_volume_for(d, source_volume, target, i, d.size_bytes)?;
            let format = SourceFormat::from(d.format);
            let step = Scaled::new(handle, 100.0 * i as f32 / n, 100.0 / n);
            let staging = import::staging_path(Path::new(&volume.path));
            let size = import::convert(
                Path::new(&d.path),
                format,
                &staging,
                DiskFormat::Qcow2,
                &step,
            )
            .await?;
            volume.size_bytes = size;
            disk.size_bytes = size;
            disks.push(disk);
            made.push(Staged::new(volume, staging));
        }
        Ok(disks)
    }
}

/// A clone's volume while it is being copied: the copy lives under a hidden staging
/// name (which a restarted daemon sweeps away) until every disk is copied, so a crash
/// leaves no file under a volume's name that no record accounts for.
struct Staged {
    volume: Volume,
    staging: PathBuf,
    /// Renamed to the volume's path by [`into_place`].
    placed: bool,
}

impl Staged {
    fn new(volume: Volume, staging: PathBuf) -> Self {
        Staged {
            volume,
            staging,
            placed: false,
        }
    }
}

/// Every copy under its volume's name, never over an existing file.
fn into_place(made: &mut [Staged]) -> ApiResult<()> {
    for s in made {
        import::rename_no_replace(&s.staging, Path::new(&s.volume.path))?;
        s.placed = true;
    }
    Ok(())
}

/// Removes what a failed clone made, staged or already in place.
fn discard(made: &[Staged]) {
    for s in made {
        let _ = std::fs::remove_file(if s.placed {
            Path::new(&s.volume.path)
        } else {
            &s.staging
        });
    }
}
