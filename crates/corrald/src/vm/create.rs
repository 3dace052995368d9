//! Defining and deleting VMs. Everything a create needs is checked before anything is
//! made; what is made is undone if a later step fails.

use std::path::Path;

use corral_api::{
    CreateVmRequest, Disk, DiskFormat, DiskRequest, Firmware, KernelBoot, ValidationError, Vm,
    VmAction, VmSpec, VmStatus, DEFAULT_POOL,
};
use corral_store::VmRecord;
use uuid::Uuid;

use super::{check_allowed, Manager};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::revert::Reverter;

impl Manager {
    pub async fn create(&self, req: CreateVmRequest) -> ApiResult<Vm> {
        req.validate()?;
        self.check_host_limits(req.memory_mib, req.vcpus)?;
        let _reservation = self.reserve_name(&req.name)?;
        if self.store.get_vm(&req.name)?.is_some() {
            return Err(already_exists(&req.name));
        }
        let cdrom = match &req.cdrom {
            Some(iso) => Some(check_file("cdrom", iso)?),
            None => None,
        };
        let kernel = req.kernel.as_ref().map(check_kernel).transpose()?;
        let ovmf = match req.firmware {
            Firmware::Uefi => Some(corral_qemu::argv::ovmf_files().ok_or_else(|| {
                ValidationError::new(
                    "firmware",
                    "UEFI firmware (OVMF) is not installed on this host",
                )
                .hint("install Debian's ovmf package, or use --firmware bios")
            })?),
            Firmware::Bios => None,
        };
        // Held until the VM is recorded: addresses reserved for its NICs are picked from
        // what the store holds, so no other create may pick the same ones meanwhile.
        let net_lock = self.lock(crate::network::NETWORKS_LOCK).await;
        let nics = self.resolve_nics(req.networks.as_deref()).await?;
        let mut revert = Reverter::new();
        let disks = self.prepare_disks(&req, &mut revert).await?;
        let uuid = Uuid::new_v4();
        let nvram = match ovmf {
            Some((_, vars_template)) => {
                Some(self.new_nvram(&req.name, uuid, &vars_template, &mut revert)?)
            }
            None => None,
        };
        let spec = VmSpec {
            name: req.name.clone(),
            uuid,
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            machine: req.machine,
            firmware: req.firmware,
            nvram,
            disks,
            cdrom,
            kernel,
            nics,
            firewall: Vec::new(),
            cloud_init: req.cloud_init.clone(),
        };
        if spec.cloud_init.is_some() {
            self.sync_seed(&spec).await?;
            let (dir, uuid) = (self.seed_dir(), spec.uuid);
            revert.add(move || super::seed::remove_seed(&dir, uuid));
        }
        let record = VmRecord {
            spec,
            status: VmStatus::stopped(None),
            created_at: now_secs(),
        };
        self.store.insert_vm(&record)?;
        drop(net_lock);
        self.nics_changed(&record.spec.nics).await;
        let store = self.store.clone();
        let name = req.name.clone();
        revert.add(move || {
            let _ = store.delete_vm(&name);
        });
        self.events.emit(Some(&req.name), "created", "VM defined");
        if req.start {
            // One request, one outcome: a VM that cannot start is not left defined.
            self.start(&req.name, false).await?;
        }
        revert.commit();
        self.get(&req.name)
    }

    /// Deletes a VM and the volumes it owns; files it merely attached are never touched.
    pub async fn delete(&self, name: &str, force: bool) -> ApiResult<()> {
        let record = self.record(name)?;
        // Before anything, even a forced power-off: linked clones read through its images.
        self.refuse_if_linked(name, None)?;
        if force && record.status.state.has_process() {
            self.power_off(name, "powered off to be deleted").await?;
        }
        let _lock = self.lock(name).await;
        let record = self.record(name)?;
        check_allowed(&record, VmAction::Delete)?;
        let snapshot_files = self.snapshot_files(name)?;
        // NVRAM copies and memory states: the VM's alone, whoever owns its disks.
        let snapshot_extras: Vec<String> = self
            .store
            .snapshot_tree(name)?
            .snapshots
            .into_iter()
            .flat_map(|s| s.nvram.into_iter().chain(s.memory.map(|m| m.file)))
            .collect();
        // The record goes first: a volume left behind by a failure below is an orphan
        // file, never a VM pointing at missing data.
        self.store
            .delete_vm(name)
            .map_err(|e| self.linked_refusal(name, None, e))?;
        self.metrics.forget(name);
        for disk in record.spec.disks.iter().filter(|d| d.owned) {
            self.delete_owned_disk(name, disk).await;
            // An owned disk's snapshot images go with it; a volume the VM did not own
            // keeps them, since its top image still reads through them.
            for (_, file) in snapshot_files.iter().filter(|(id, _)| *id == disk.id) {
                let _ = corral_storage::remove_volume(file);
            }
        }
        let _ = std::fs::remove_dir_all(self.vm_paths(&record.spec).dir);
        if let Err(e) = self.drop_forwards_to(name).await {
            tracing::warn!(
                "{name}: port forwards not removed: {}",
                crate::error::chain(&e)
            );
        }
        self.nics_changed(&record.spec.nics).await;
        self.remove_seed(record.spec.uuid);
        for f in record.spec.nvram.iter().chain(snapshot_extras.iter()) {
            let _ = std::fs::remove_file(f);
        }
        self.events
            .emit(None, "deleted", format!("VM '{name}' deleted"));
        Ok(())
    }

    /// The VM's own NVRAM: a copy of `template` (OVMF's, or the VM it is cloned from).
    pub(super) fn new_nvram(
        &self,
        name: &str,
        uuid: Uuid,
        template: &Path,
        revert: &mut Reverter,
    ) -> ApiResult<String> {
        let dir = self.cfg.state_dir.join("nvram");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
        let path = dir.join(format!("{name}-{}.fd", &uuid.simple().to_string()[..8]));
        std::fs::copy(template, &path)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        let p = path.clone();
        revert.add(move || {
            let _ = std::fs::remove_file(p);
        });
        Ok(path.display().to_string())
    }

    pub(crate) fn check_host_limits(&self, memory_mib: u64, vcpus: u32) -> ApiResult<()> {
        let host_mib = self.host.memory_bytes >> 20;
        if host_mib > 0 && memory_mib > host_mib {
            return Err(ValidationError::new(
                "memory_mib",
                format!("{memory_mib} MiB is more than the host's {host_mib} MiB"),
            )
            .hint("ask for less memory")
            .into());
        }
        if vcpus > self.host.cpus {
            return Err(ValidationError::new(
                "vcpus",
                format!(
                    "{vcpus} vCPUs is more than the host's {} CPUs",
                    self.host.cpus
                ),
            )
            .hint(format!("give at most {} vCPUs", self.host.cpus))
            .into());
        }
        Ok(())
    }

    pub(crate) fn reserve_name(&self, name: &str) -> ApiResult<NameReservation<'_>> {
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if !creating.insert(name.to_string()) {
            return Err(already_exists(name));
        }
        Ok(NameReservation {
            mgr: self,
            name: name.to_string(),
        })
    }

    /// Checks every disk of the request, then makes the VM's own volumes. Nothing is
    /// made until everything has been checked; what is made is undone on failure.
    async fn prepare_disks(
        &self,
        req: &CreateVmRequest,
        revert: &mut Reverter,
    ) -> ApiResult<Vec<Disk>> {
        // A linked clone of an image (or an overlay on an image file) is the first disk;
        // the requested disks follow.
        let offset = usize::from(req.image.is_some());
        let mut base_file = None;
        if let Some(image) = &req.image {
            if image.contains('/') {
                base_file = Some(self.check_base_file(image).await?);
            } else if self.store.get_image(image)?.is_none() {
                return Err(ValidationError::new(
                    "image",
                    format!("image '{image}' does not exist"),
                )
                .hint("`corral image list` shows the images; a file is given by its path")
                .into());
            }
            let name = owned_volume_name(&req.name, 0);
            if self.store.get_volume(&name)?.is_some() {
                return Err(ValidationError::new(
                    "image",
                    format!("volume name '{name}' is taken"),
                )
                .hint("rename or delete that volume, or pick another VM name")
                .into());
            }
        }
        let mut checked: Vec<Option<Disk>> = Vec::new();
        for (ri, d) in req.disks.iter().enumerate() {
            let i = ri + offset;
            let id = format!("disk{i}");
            checked.push(match d {
                DiskRequest::New { .. } => {
                    let field = format!("disks[{ri}]");
                    let name = owned_volume_name(&req.name, i);
                    if self.store.get_volume(&name)?.is_some() {
                        return Err(ValidationError::new(
                            field,
                            format!("volume name '{name}' is taken"),
                        )
                        .hint("rename or delete that volume, or pick another VM name")
                        .into());
                    }
                    None
                }
                DiskRequest::Path {
                    path,
                    format,
                    read_only,
                } => {
                    let field = format!("disks[{ri}].path");
                    let path = check_file(&field, path)?;
                    let info = corral_storage::inspect(Path::new(&path), *format)
                        .await
                        .map_err(|e| {
                            ValidationError::new(field, crate::error::chain(&e))
                                .hint("attach a readable qcow2 or raw image")
                        })?;
                    Some(Disk {
                        id,
                        volume: None,
                        path,
                        format: info.format,
                        size_bytes: info.virtual_size,
                        owned: false,
                        read_only: *read_only,
                    })
                }
                DiskRequest::Volume { name, read_only } => {
                    let field = format!("disks[{ri}].name");
                    let v = self.store.get_volume(name)?.ok_or_else(|| {
                        ValidationError::new(&field, format!("volume '{name}' does not exist"))
                            .hint("`corral volume list` shows the volumes")
                    })?;
                    if let Some(user) = self.store.vms_using_volume(name)?.first() {
                        return Err(ValidationError::new(
                            field,
                            format!("volume '{name}' is attached to VM '{user}'"),
                        )
                        .hint("a volume is attached to one VM at a time")
                        .into());
                    }
                    Some(Disk {
                        id,
                        volume: Some(v.name),
                        path: v.path,
                        format: v.format,
                        size_bytes: v.size_bytes,
                        owned: false,
                        read_only: *read_only,
                    })
                }
            });
        }
        let mut disks = Vec::new();
        if let Some(image) = &req.image {
            let name = owned_volume_name(&req.name, 0);
            let v = match &base_file {
                Some(file) => self.make_volume_on_file(&name, file, &req.name).await?,
                None => self.make_linked_volume(&name, image, &req.name).await?,
            };
            let (store, path, vname) = (self.store.clone(), v.path.clone(), v.name.clone());
            revert.add(move || {
                let _ = store.delete_volume(&vname);
                let _ = std::fs::remove_file(path);
            });
            disks.push(Disk {
                id: "disk0".into(),
                volume: Some(v.name),
                path: v.path,
                format: v.format,
                size_bytes: v.size_bytes,
                owned: true,
                read_only: false,
            });
        }
        for (i, (d, checked)) in req.disks.iter().zip(checked).enumerate() {
            let i = i + offset;
            let disk = match (d, checked) {
                (_, Some(disk)) => disk,
                (DiskRequest::New { size_bytes }, None) => {
                    let name = owned_volume_name(&req.name, i);
                    let v = self
                        .make_volume(
                            &name,
                            DEFAULT_POOL,
                            Some(DiskFormat::Qcow2),
                            *size_bytes,
                            Some(&req.name),
                        )
                        .await?;
                    let (store, path, vname) = (self.store.clone(), v.path.clone(), v.name.clone());
                    revert.add(move || {
                        let _ = store.delete_volume(&vname);
                        let _ = std::fs::remove_file(path);
                    });
                    Disk {
                        id: format!("disk{i}"),
                        volume: Some(v.name),
                        path: v.path,
                        format: v.format,
                        size_bytes: v.size_bytes,
                        owned: true,
                        read_only: false,
                    }
                }
                (_, None) => return Err(ApiError::Internal("disk check lost".into())),
            };
            disks.push(disk);
        }
        Ok(disks)
    }
}

pub(crate) struct NameReservation<'a> {
    mgr: &'a Manager,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.mgr
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// The volume made for `create --disk size=`: `<vm>-disk<N>`.
pub(crate) fn owned_volume_name(vm: &str, index: usize) -> String {
    format!("{vm}-disk{index}")
}

impl Manager {
    async fn delete_owned_disk(&self, vm: &str, disk: &Disk) {
        let volume = match &disk.volume {
            Some(v) => self.store.get_volume(v).ok().flatten(),
            None => None,
        };
        match volume {
            Some(v) => {
                if let Err(e) = self.store.delete_volume(&v.name) {
                    tracing::warn!(error = %e, "cannot forget volume '{}' of deleted VM {vm}", v.name);
                }
                self.remove_volume_storage(&v).await;
            }
            None => {
                if let Err(e) = corral_storage::remove_volume(Path::new(&disk.path)) {
                    tracing::warn!(error = %e, "cannot remove disk of deleted VM {vm}");
                }
            }
        }
    }
}

pub(super) fn already_exists(name: &str) -> ApiError {
    ApiError::Conflict {
        message: format!("vm '{name}' already exists"),
        hint: Some("choose another name, or delete the existing VM first".into()),
    }
}

/// A file the VM will read: absolute, existing, a regular file or block device, readable.
fn check_file(field: &str, path: &str) -> ApiResult<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(
            ValidationError::new(field, format!("'{path}' is not an absolute path"))
                .hint("give the full path; the daemon does not know the client's directory")
                .into(),
        );
    }
    let meta = std::fs::metadata(p).map_err(|e| {
        ValidationError::new(field, format!("cannot use '{path}': {e}"))
            .hint("check the path exists and is readable")
    })?;
    use std::os::unix::fs::FileTypeExt;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(ValidationError::new(field, format!("'{path}' is not a file")).into());
    }
    if let Err(e) = std::fs::File::open(p) {
        return Err(ValidationError::new(field, format!("cannot read '{path}': {e}")).into());
    }
    Ok(path.to_string())
}

fn check_kernel(k: &KernelBoot) -> ApiResult<KernelBoot> {
    Ok(KernelBoot {
        kernel: check_file("kernel.kernel", &k.kernel)?,
        initrd: k
            .initrd
            .as_deref()
            .map(|i| check_file("kernel.initrd", i))
            .transpose()?,
        cmdline: k.cmdline.clone(),
    })
}
