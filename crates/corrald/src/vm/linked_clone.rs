//! `corral clone SRC DST --linked`: a new VM whose disks are qcow2 overlays on the frozen
//! images of one of SRC's snapshots. No data is copied, so it is instant whatever the
//! disks' size, and it is not an operation. Without `--snapshot`, a new snapshot
//! `linked-<DST>` of SRC is taken first, through the same path as `corral snapshot create`.
//!
//! Each of the clone's volumes records the snapshot it reads through (`base_snapshot`).
//! That snapshot's images are frozen: SRC's reverts, new snapshots and even deletes of
//! ancestor snapshots (which rebase the image in place, content unchanged) never change
//! what the clone reads. Only deleting the snapshot itself, or SRC, would; both are
//! refused while the clone exists — checked up front for a clear answer, and again by
//! the store in the transaction that would drop them.

use std::path::Path;
use std::sync::Arc;

use corral_api::{
    CloneRequest, CreateSnapshotRequest, Disk, DiskFormat, Snapshot, SnapshotDisk, SnapshotRef,
    ValidationError, Vm, VmSpec, VmStatus, Volume, LINKED_SNAPSHOT_PREFIX,
};
use corral_store::{StoreError, VmRecord};
use uuid::Uuid;

use super::create::owned_volume_name;
use super::Manager;
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::revert::Reverter;
use crate::storage::pool_driver;

impl Manager {
    /// Makes `req.name` a linked clone of `source` and returns it (stopped).
    pub async fn linked_clone(self: &Arc<Self>, source: &str, req: &CloneRequest) -> ApiResult<Vm> {
        req.validate()?;
        let target = req.name.as_str();
        let _reservation = self.reserve_name(target)?;
        if self.store.get_vm(target)?.is_some() {
            return Err(super::create::already_exists(target));
        }
        // Everything that can be checked is checked before a snapshot is taken.
        self.check_linkable(&self.record(source)?, target)?;
        let (snapshot, taken) = match &req.snapshot {
            Some(s) => {
                self.source_snapshot(source, s)?;
                (s.clone(), false)
            }
            None => (self.take_base_snapshot(source, target).await?, true),
        };
        if let Err(e) = self.build_linked(source, target, &snapshot).await {
            if taken {
                self.drop_base_snapshot(source, &snapshot).await;
            }
            return Err(e);
        }
        self.events.emit(
            Some(target),
            "created",
            format!("linked clone of VM '{source}' at its snapshot '{snapshot}'"),
        );
        self.get(target)
    }

    /// `linked-<target>`, a new snapshot of `source`, taken as `corral snapshot create`
    /// takes it (so whatever that path supports, e.g. running VMs, works here too).
    async fn take_base_snapshot(&self, source: &str, target: &str) -> ApiResult<String> {
        let name = format!("{LINKED_SNAPSHOT_PREFIX}{target}");
        if self.source_snapshot(source, &name).is_ok() {
            return Err(ApiError::Conflict {
                message: format!("VM '{source}' already has a snapshot '{name}'"),
                hint: Some(format!(
                    "build on it with --snapshot {name}, or delete it first \
                     (corral snapshot delete {source} {name})"
                )),
            });
        }
        let req = CreateSnapshotRequest {
            name: name.clone(),
            description: Some(format!("base of linked clone '{target}'")),
            memory: false,
            quiesce: None,
        };
        self.create_snapshot(source, req).await?;
        Ok(name)
    }

    /// Undoes [`Self::take_base_snapshot`] after a failed clone. Deleting a snapshot
    /// merges it (an operation); its outcome is in the operation and the event log.
    async fn drop_base_snapshot(self: &Arc<Self>, source: &str, snapshot: &str) {
        match self.delete_snapshot(source, snapshot).await {
            Ok(op) => tracing::info!(
                "linked clone failed: deleting snapshot '{snapshot}' of '{source}' (operation {})",
                op.id
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "linked clone failed and its snapshot '{snapshot}' of '{source}' was kept"
            ),
        }
    }

    /// The clone's overlays, NVRAM and record, made under the source's lock (so the
    /// snapshot cannot go meanwhile) and undone if any step fails.
    async fn build_linked(&self, source: &str, target: &str, snapshot: &str) -> ApiResult<()> {
        let _lock = self.lock(source).await;
        let record = self.record(source)?;
        self.check_linkable(&record, target)?;
        let snap = self.source_snapshot(source, snapshot)?;
        let base = SnapshotRef {
            vm: source.to_string(),
            snapshot: snapshot.to_string(),
        };
        let mut revert = Reverter::new();
        let mut disks = Vec::new();
        let mut volumes = Vec::new();
        for (i, d) in record.spec.disks.iter().enumerate() {
            let Some(source_volume) = &d.volume else {
                // A read-only file (check_linkable refused writable ones): shared as-is.
                disks.push(d.clone());
                continue;
            };
            let frozen = frozen_image(&snap, d, i)?;
            let (volume, disk) = self
                .overlay_volume(d, source_volume, frozen, target, i, &base, &mut revert)
                .await?;
            volumes.push(volume);
            disks.push(disk);
        }
        let uuid = Uuid::new_v4();
        // UEFI: the firmware variables as they were at the snapshot.
        let nvram = match (&record.spec.nvram, &snap.nvram) {
            (Some(current), saved) => {
                let from = saved.as_deref().unwrap_or(current);
                Some(self.new_nvram(target, uuid, Path::new(from), &mut revert)?)
            }
            (None, _) => None,
        };
        // Held until recorded, so the copy's reserved addresses stay its own.
        let net_lock = self.lock(crate::network::NETWORKS_LOCK).await;
        let clone = VmRecord {
            spec: VmSpec {
                name: target.to_string(),
                uuid,
                nvram,
                disks,
                nics: self.copy_nics(&record.spec.nics).await?,
                firewall: record.spec.firewall.clone(),
                ..record.spec.clone()
            },
            status: VmStatus::stopped(None),
            created_at: now_secs(),
        };
        self.store.insert_vm_with_volumes(&clone, &volumes)?;
        drop(net_lock);
        self.nics_changed(&clone.spec.nics).await;
        revert.commit();
        Ok(())
    }

    /// A new volume owned by the clone: an empty overlay on `frozen`, in the source
    /// volume's pool, recording the snapshot it is based on.
    #[allow(clippy::too_many_arguments)]
    async fn overlay_volume(
        &self,
        d: &Disk,
        source_volume: &str,
        frozen: &SnapshotDisk,
        target: &str,
        index: usize,
        base: &SnapshotRef,
        revert: &mut Reverter,
    ) -> ApiResult<(Volume, Disk)> {
        let pool = self.volume_pool(source_volume)?;
        let pool_spec = self.pool_spec(&pool)?;
        let name = owned_volume_name(target, index);
        let path = pool_driver(&pool_spec)?.volume_path(&pool_spec, &name, DiskFormat::Qcow2);
        corral_storage::qemu_img::create_overlay(&path, Path::new(&frozen.file), frozen.format)
            .await?;
        let made = path.clone();
        revert.add(move || {
            let _ = std::fs::remove_file(made);
        });
        let size = corral_storage::qemu_img::qcow2_virtual_size(&path)?;
        let volume = Volume {
            name: name.clone(),
            pool,
            format: DiskFormat::Qcow2,
            size_bytes: size,
            path: path.display().to_string(),
            owner: Some(target.to_string()),
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: None,
            base_snapshot: Some(base.clone()),
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

    /// Refuses disks a linked clone cannot be built from, names or files already taken,
    /// and pools without overlays.
    fn check_linkable(&self, record: &VmRecord, target: &str) -> ApiResult<()> {
        let source = &record.spec.name;
        for (i, d) in record.spec.disks.iter().enumerate() {
            let field = format!("disks[{i}]");
            let Some(volume) = &d.volume else {
                if d.read_only {
                    continue;
                }
                return Err(ValidationError::new(
                    field,
                    format!(
                        "disk {} of '{source}' is the attached file {}, which a clone cannot share",
                        d.id, d.path
                    ),
                )
                .hint("attach it read-only, or import it as a volume first")
                .into());
            };
            if d.read_only {
                // Snapshots skip read-only disks, so there is no frozen image to build
                // on, and sharing the volume would tie it to two VMs.
                return Err(ValidationError::new(
                    field,
                    format!(
                        "disk {} of '{source}' is volume '{volume}' attached read-only, \
                         which a linked clone cannot share",
                        d.id
                    ),
                )
                .hint(format!(
                    "make a full clone (without --linked), or detach the volume from '{source}' first"
                ))
                .into());
            }
            let name = owned_volume_name(target, i);
            if self.store.get_volume(&name)?.is_some() {
                return Err(ApiError::Conflict {
                    message: format!("volume name '{name}' is taken"),
                    hint: Some("choose another clone name, or delete that volume".into()),
                });
            }
            let pool = self.pool_spec(&self.volume_pool(volume)?)?;
            let driver = pool_driver(&pool)?;
            if !driver.capabilities(&pool).overlays {
                return Err(ApiError::Conflict {
                    message: format!(
                        "pool '{}' of volume '{volume}' cannot hold qcow2 overlays",
                        pool.name
                    ),
                    hint: Some("make a full clone (without --linked)".into()),
                });
            }
            let path = driver.volume_path(&pool, &name, DiskFormat::Qcow2);
            if path.exists() {
                return Err(ApiError::Conflict {
                    message: format!("{} already exists", path.display()),
                    hint: Some(
                        "Corral never overwrites a file; remove or rename it (`corral pool show` \
                         lists it if nothing accounts for it)"
                            .into(),
                    ),
                });
            }
        }
        Ok(())
    }

    fn volume_pool(&self, volume: &str) -> ApiResult<String> {
        Ok(self
            .store
            .get_volume(volume)?
            .map(|v| v.pool)
            .unwrap_or_else(|| corral_api::DEFAULT_POOL.to_string()))
    }

    /// `source`'s snapshot `name`; a 404 naming the `snapshot` field if it has none.
    fn source_snapshot(&self, source: &str, name: &str) -> ApiResult<Snapshot> {
        self.store
            .snapshot_tree(source)?
            .snapshots
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::UnknownIn {
                field: "snapshot",
                message: format!("VM '{source}' has no snapshot '{name}'"),
                hint: format!("`corral snapshot list {source}` shows its snapshots"),
            })
    }

    /// A 409 naming the linked clones of `vm`'s snapshot (of any of its snapshots if
    /// `snapshot` is `None`); Ok if there are none.
    pub(crate) fn refuse_if_linked(&self, vm: &str, snapshot: Option<&str>) -> ApiResult<()> {
        let clones = self.store.volumes_based_on_snapshot(vm, snapshot)?;
        if clones.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = clones.iter().map(describe_clone).collect();
        let message = match snapshot {
            Some(s) => format!(
                "snapshot '{s}' of VM '{vm}' is the base of linked clones: {}",
                names.join(", ")
            ),
            None => format!(
                "VM '{vm}' has linked clones on its snapshots: {}",
                names.join(", ")
            ),
        };
        let first = match &clones[0].owner {
            Some(owner) => format!("corral delete {owner}"),
            None => format!("corral volume delete {}", clones[0].name),
        };
        Err(ApiError::Conflict {
            message,
            hint: Some(format!(
                "delete the linked clones first ({first}); a full clone of one \
                 (corral clone CLONE NEW) does not depend on '{vm}'"
            )),
        })
    }

    /// Before deleting `vm`'s snapshot `name`: refused while a linked clone reads
    /// through it, and while a running one reads through a child of it — the delete
    /// rebases the child's image in place (what it reads does not change), which cannot
    /// be done while a QEMU holds that image open.
    pub(crate) fn check_snapshot_delete(&self, vm: &str, name: &str) -> ApiResult<()> {
        self.refuse_if_linked(vm, Some(name))?;
        let tree = self.store.snapshot_tree(vm)?;
        let children = tree
            .snapshots
            .iter()
            .filter(|s| s.parent.as_deref() == Some(name));
        for child in children {
            for v in self
                .store
                .volumes_based_on_snapshot(vm, Some(&child.name))?
            {
                let users = self.store.vms_using_volume(&v.name)?;
                if let Some(user) = users.iter().find(|u| self.running(u).is_some()) {
                    return Err(ApiError::Conflict {
                        message: format!(
                            "deleting snapshot '{name}' of VM '{vm}' rewrites the image of its \
                             child '{}', which the running linked clone '{user}' reads",
                            child.name
                        ),
                        hint: Some(format!(
                            "stop it first (corral stop {user}); what it reads stays the same"
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// The store's own refusal (a clone appeared after the check) told the same way.
    pub(crate) fn linked_refusal(
        &self,
        vm: &str,
        snapshot: Option<&str>,
        e: StoreError,
    ) -> ApiError {
        match e {
            StoreError::InUse { .. } => match self.refuse_if_linked(vm, snapshot) {
                Err(conflict) => conflict,
                Ok(()) => e.into(),
            },
            other => other.into(),
        }
    }
}

/// `dst (volume dst-disk0 on snapshot s1)`.
fn describe_clone(v: &Volume) -> String {
    let on = v
        .base_snapshot
        .as_ref()
        .map(|b| format!(" on snapshot {}", b.snapshot))
        .unwrap_or_default();
    match &v.owner {
        Some(owner) => format!("{owner} (volume {}{on})", v.name),
        None => format!("volume {}{on}", v.name),
    }
}

/// The snapshot's frozen image of disk `d`; a disk attached after the snapshot has none.
fn frozen_image<'a>(snap: &'a Snapshot, d: &Disk, index: usize) -> ApiResult<&'a SnapshotDisk> {
    snap.disks.iter().find(|f| f.disk == d.id).ok_or_else(|| {
        ValidationError::new(
            format!("disks[{index}]"),
            format!(
                "disk {} was attached after snapshot '{}', which therefore has no image of it",
                d.id, snap.name
            ),
        )
        .hint("clone without --snapshot (a new snapshot covers every disk)")
        .into()
    })
}
