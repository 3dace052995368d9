//! Volumes: create, delete, grow, and attach to or detach from VMs — cold by editing the
//! spec, hot through QMP on a running VM (the daemon opens the file and passes the fd,
//! since QEMU runs chrooted and unprivileged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api::{
    format_size, validate_volume_size, AttachVolumeRequest, CreateVolumeRequest,
    DetachVolumeRequest, Disk, DiskFormat, Operation, ValidationError, Vm, VmState, Volume,
    DEFAULT_POOL,
};
use corral_qemu::hotplug::{self, HotBus, HotDisk};

use super::{pool_driver, volume_key};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::vm::{Manager, Running};
use corral_store::VmRecord;

impl Manager {
    pub async fn create_volume(&self, req: CreateVolumeRequest) -> ApiResult<Volume> {
        req.validate()?;
        let pool = req.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_string());
        let volume = self
            .make_volume(&req.name, &pool, req.format, req.size_bytes, None)
            .await?;
        self.events.emit(
            None,
            "volume",
            format!("volume '{}' created in pool '{pool}'", req.name),
        );
        self.volume(&volume.name).await
    }

    /// Makes the volume's storage and its record; on failure, neither is left.
    pub(crate) async fn make_volume(
        &self,
        name: &str,
        pool: &str,
        format: Option<DiskFormat>,
        size: u64,
        owner: Option<&str>,
    ) -> ApiResult<Volume> {
        let spec = self.pool_spec(pool).map_err(|_| {
            ValidationError::new("pool", format!("pool '{pool}' does not exist"))
                .hint("`corral pool list` shows the pools")
        })?;
        let driver = pool_driver(&spec)?;
        let caps = driver.capabilities(&spec);
        let format = format.unwrap_or(caps.formats[0]);
        if !caps.formats.contains(&format) {
            let formats: Vec<&str> = caps.formats.iter().map(|f| f.as_str()).collect();
            return Err(ValidationError::new(
                "format",
                format!("pool '{pool}' cannot hold {} volumes", format.as_str()),
            )
            .hint(format!("it holds {}", formats.join(", ")))
            .into());
        }
        let _lock = self.lock(&volume_key(name)).await;
        if self.store.get_volume(name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("volume '{name}' already exists"),
                hint: Some("choose another name".into()),
            });
        }
        let usage = driver.usage(&spec).await?;
        if usage.free < MIN_FREE_BYTES {
            return Err(ApiError::Conflict {
                message: format!("pool '{pool}' is full ({} free)", format_size(usage.free)),
                hint: Some("free space in the pool or use another pool".into()),
            });
        }
        let path = driver
            .create_volume(&spec, name, format, size)
            .await
            .map_err(|e| match e {
                corral_storage::StorageError::Exists(p) => ApiError::Conflict {
                    message: format!(
                        "something is already where volume '{name}' would go: {}",
                        p.display()
                    ),
                    hint: Some(
                        "it is reported by `corral pool show`; move it away or pick another name"
                            .into(),
                    ),
                },
                other => other.into(),
            })?;
        let volume = Volume {
            name: name.to_string(),
            pool: pool.to_string(),
            format,
            size_bytes: size,
            path: path.display().to_string(),
            owner: owner.map(str::to_string),
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: None,
            base_snapshot: None,
            base_file: None,
        };
        if let Err(e) = self.store.insert_volume(&volume) {
            let _ = driver.delete_volume(&spec, &path).await;
            return Err(e.into());
        }
        Ok(volume)
    }

    /// A volume with who uses it and how much space it takes now.
    pub async fn volume(&self, name: &str) -> ApiResult<Volume> {
        let mut v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| volume_not_found(name))?;
        self.fill_volume(&mut v).await?;
        Ok(v)
    }

    pub async fn list_volumes(&self, pool: Option<&str>) -> ApiResult<Vec<Volume>> {
        if let Some(p) = pool {
            self.pool_spec(p)?;
        }
        let mut all = self.store.list_volumes(pool)?;
        for v in &mut all {
            self.fill_volume(v).await?;
        }
        Ok(all)
    }

    async fn fill_volume(&self, v: &mut Volume) -> ApiResult<()> {
        v.used_by = self.store.vms_using_volume(&v.name)?;
        v.allocation_bytes = None;
        if let Some(spec) = self.store.get_pool(&v.pool)? {
            if let Ok(d) = pool_driver(&spec) {
                // Unknown rather than an error: the volume is still there to be shown.
                v.allocation_bytes = d.allocation(&spec, Path::new(&v.path)).await.ok();
            }
        }
        Ok(())
    }

    /// Deletes a volume no VM uses: the record first, then the storage (a failure
    /// between leaves an orphan file, reported by `pool show`, never a dangling record).
    pub async fn delete_volume(&self, name: &str) -> ApiResult<()> {
        let _lock = self.lock(&volume_key(name)).await;
        let v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| volume_not_found(name))?;
        let users = self.store.vms_using_volume(name)?;
        if !users.is_empty() {
            return Err(ApiError::Conflict {
                message: format!("volume '{name}' is in use by VM {}", users.join(", ")),
                hint: Some(format!(
                    "detach it first: corral volume detach {name} {}",
                    users[0]
                )),
            });
        }
        self.store.delete_volume(name)?;
        self.remove_volume_storage(&v).await;
        self.events
            .emit(None, "volume", format!("volume '{name}' deleted"));
        Ok(())
    }

    pub(crate) async fn remove_volume_storage(&self, v: &Volume) {
        let result = match self.store.get_pool(&v.pool) {
            Ok(Some(spec)) => match pool_driver(&spec) {
                Ok(d) => d
                    .delete_volume(&spec, Path::new(&v.path))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            _ => Err(format!("pool '{}' is gone", v.pool)),
        };
        if let Err(e) = result {
            tracing::warn!("cannot remove storage of volume '{}': {e}", v.name);
        }
    }

    /// `POST /volumes/{name}/resize`: grows the volume (online through QMP when a running
    /// VM has it open), as an operation.
    pub async fn resize_volume(self: &Arc<Self>, name: &str, size: u64) -> ApiResult<Operation> {
        validate_volume_size("size_bytes", size)?;
        let v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| volume_not_found(name))?;
        if size < v.size_bytes {
            return Err(ValidationError::new(
                "size_bytes",
                format!(
                    "{} is smaller than the volume's {}",
                    format_size(size),
                    format_size(v.size_bytes)
                ),
            )
            .hint("volumes only grow: shrinking would cut off the guest's data")
            .into());
        }
        let (op, handle) = self.ops.begin("volume.resize", name, true)?;
        let mgr = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            match mgr.grow(&name, size, &|| handle.is_cancelled()).await {
                Err(ApiError::Cancelled) => handle.cancelled_done(),
                result => handle.finish(result),
            }
        });
        Ok(op)
    }

    /// Grows the volume once it has the locks of the volume and its VM (which a long
    /// snapshot merge may hold). Cancelling takes effect until then; the grow itself is
    /// one step (a metadata change, or QMP `block_resize`) and is not cut short.
    async fn grow(
        &self,
        name: &str,
        size: u64,
        cancelled: &(dyn Fn() -> bool + Send + Sync),
    ) -> ApiResult<()> {
        let users = self.store.vms_using_volume(name)?;
        // VM locks before the volume lock, always, so attach and resize cannot deadlock.
        let mut vm_locks = Vec::new();
        for vm in &users {
            vm_locks.push(self.lock(vm).await);
        }
        let _lock = self.lock(&volume_key(name)).await;
        if cancelled() {
            return Err(ApiError::Cancelled);
        }
        let mut v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| volume_not_found(name))?;
        let running_user = users.iter().find_map(|vm| {
            let running = self.running(vm)?;
            let record = self.store.get_vm(vm).ok()??;
            let disk = record
                .spec
                .disks
                .iter()
                .find(|d| d.volume.as_deref() == Some(name))?
                .clone();
            Some((running, disk))
        });
        let spec = self.pool_spec(&v.pool)?;
        let driver = pool_driver(&spec)?;
        match running_user {
            Some((running, disk)) => {
                // QEMU grows an open image file itself, but not a block device: that is
                // grown first, and block_resize then shows the guest its new size.
                if driver.capabilities(&spec).block_devices {
                    driver
                        .grow_volume(&spec, Path::new(&v.path), v.format, size)
                        .await?;
                }
                hotplug::resize_disk(&running.qmp, &disk.id, size).await?
            }
            None => {
                driver
                    .grow_volume(&spec, Path::new(&v.path), v.format, size)
                    .await?;
            }
        }
        v.size_bytes = size;
        self.store.update_volume(&v)?;
        for vm in &users {
            if let Some(mut record) = self.store.get_vm(vm)? {
                for d in record
                    .spec
                    .disks
                    .iter_mut()
                    .filter(|d| d.volume.as_deref() == Some(name))
                {
                    d.size_bytes = size;
                }
                self.store.update_vm_spec(&record.spec)?;
                self.events.emit(
                    Some(vm),
                    "disk",
                    format!("volume '{name}' grown to {}", format_size(size)),
                );
            }
        }
        Ok(())
    }

    pub async fn attach_volume(&self, name: &str, req: AttachVolumeRequest) -> ApiResult<Vm> {
        let _vm_lock = self.lock(&req.vm).await;
        let _lock = self.lock(&volume_key(name)).await;
        let mut record = self.record(&req.vm)?;
        let v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| volume_not_found(name))?;
        let users = self.store.vms_using_volume(name)?;
        if let Some(user) = users.first() {
            return Err(ApiError::Conflict {
                message: format!("volume '{name}' is already attached to VM '{user}'"),
                hint: Some("a volume is attached to one VM at a time; detach it first".into()),
            });
        }
        let id = next_disk_id(&record.spec.disks);
        let disk = Disk {
            id: id.clone(),
            volume: Some(name.to_string()),
            path: v.path.clone(),
            format: v.format,
            size_bytes: v.size_bytes,
            owned: v.owner.as_deref() == Some(req.vm.as_str()),
            read_only: req.read_only,
        };
        if let Some(running) = self.hotplug_target(&record, "attach a volume to")? {
            let hot = HotDisk {
                node: id.clone(),
                path: PathBuf::from(&v.path),
                format: v.format,
                read_only: req.read_only,
                bus: HotBus::VirtioBlk,
                ports: corral_qemu::argv::hotplug_ports(record.spec.machine),
            };
            hotplug::attach_disk(&running.qmp, &hot).await?;
        }
        record.spec.disks.push(disk);
        self.store.update_vm_spec(&record.spec)?;
        self.events.emit(
            Some(&req.vm),
            "disk",
            format!("volume '{name}' attached as {id}"),
        );
        drop(_lock);
        drop(_vm_lock);
        self.get(&req.vm)
    }

    /// Detaches a volume. Detaching an owned volume makes it a standalone one: it then
    /// outlives the VM instead of being deleted with it.
    pub async fn detach_volume(&self, name: &str, req: DetachVolumeRequest) -> ApiResult<Vm> {
        let _vm_lock = self.lock(&req.vm).await;
        let _lock = self.lock(&volume_key(name)).await;
        let mut record = self.record(&req.vm)?;
        let pos = record
            .spec
            .disks
            .iter()
            .position(|d| d.volume.as_deref() == Some(name))
            .ok_or_else(|| ApiError::Conflict {
                message: format!("volume '{name}' is not attached to VM '{}'", req.vm),
                hint: Some("`corral show VM` lists its disks".into()),
            })?;
        let id = record.spec.disks[pos].id.clone();
        if self
            .snapshot_files(&req.vm)?
            .iter()
            .any(|(disk, _)| *disk == id)
        {
            return Err(ApiError::Conflict {
                message: format!("VM '{}' has snapshots that include volume '{name}'", req.vm),
                hint: Some("delete those snapshots first (`corral snapshot list VM`)".into()),
            });
        }
        if let Some(running) = self.hotplug_target(&record, "detach a volume from")? {
            hotplug::detach_disk(&running.qmp, &id).await?;
        }
        record.spec.disks.remove(pos);
        self.store.update_vm_spec(&record.spec)?;
        if let Some(mut v) = self.store.get_volume(name)? {
            if v.owner.is_some() {
                v.owner = None;
                self.store.update_volume(&v)?;
            }
        }
        self.events.emit(
            Some(&req.vm),
            "disk",
            format!("volume '{name}' detached ({id})"),
        );
        drop(_lock);
        drop(_vm_lock);
        self.get(&req.vm)
    }
}

impl Manager {
    /// The QEMU to hot-plug into: `None` for a stopped VM (its spec alone changes), the
    /// running QEMU for a running or paused one, and a 409 in any other state.
    fn hotplug_target(&self, record: &VmRecord, what: &str) -> ApiResult<Option<Arc<Running>>> {
        let vm = &record.spec.name;
        match record.status.state {
            VmState::Stopped => Ok(None),
            VmState::Running | VmState::Paused => self
                .running(vm)
                .map(Some)
                .ok_or_else(|| ApiError::conflict(format!("VM '{vm}' has no QEMU attached"))),
            other => Err(ApiError::conflict(format!(
                "cannot {what} VM '{vm}' while it is {}",
                other.as_str()
            ))),
        }
    }
}

/// Free space a pool must have to take a new volume (its metadata, at least).
const MIN_FREE_BYTES: u64 = 16 << 20;

/// The first `diskN` no disk of the VM uses.
pub(crate) fn next_disk_id(disks: &[Disk]) -> String {
    (0..)
        .map(|i| format!("disk{i}"))
        .find(|id| !disks.iter().any(|d| &d.id == id))
        .unwrap_or_default()
}

fn volume_not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        kind: "volume",
        name: name.to_string(),
    }
}
