//! Pools: where volumes live. The manager keeps pool definitions in the store and asks
//! each pool's driver (found by name) to do the work on the host.

mod images;
mod import;
mod live_chain;
mod quiesce;
mod recovery;
mod snapshots;
mod volumes;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use corral_api::{Pool, PoolSpec, DEFAULT_POOL};
use corral_storage::PoolDriver;

use crate::error::{ApiError, ApiResult};
use crate::vm::Manager;

impl Manager {
    /// Every host has a `dir` pool in its state dir; made on first start.
    pub async fn ensure_default_pool(&self) -> ApiResult<()> {
        if self.store.get_pool(DEFAULT_POOL)?.is_some() {
            return Ok(());
        }
        let spec = PoolSpec {
            name: DEFAULT_POOL.to_string(),
            driver: "dir".to_string(),
            path: Some(self.cfg.default_pool().display().to_string()),
            volume_group: None,
            thin_pool: None,
            shared: false,
        };
        std::fs::create_dir_all(self.cfg.default_pool()).map_err(|e| {
            ApiError::Internal(format!("{}: {e}", self.cfg.default_pool().display()))
        })?;
        self.store.insert_pool(&spec)?;
        Ok(())
    }

    pub async fn create_pool(&self, spec: PoolSpec) -> ApiResult<Pool> {
        spec.validate()?;
        let driver = pool_driver(&spec)?;
        let _lock = self.lock(&pool_key(&spec.name)).await;
        if self.store.get_pool(&spec.name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("pool '{}' already exists", spec.name),
                hint: Some("choose another name".into()),
            });
        }
        self.check_storage_unclaimed(&spec)?;
        driver.create_pool(&spec).await.map_err(pool_create_error)?;
        self.store.insert_pool(&spec)?;
        self.events
            .emit(None, "pool", format!("pool '{}' created", spec.name));
        self.pool(&spec.name).await
    }

    pub async fn delete_pool(&self, name: &str) -> ApiResult<()> {
        let _lock = self.lock(&pool_key(name)).await;
        let spec = self.pool_spec(name)?;
        if name == DEFAULT_POOL {
            return Err(ApiError::conflict("the default pool cannot be deleted"));
        }
        let volumes = self.store.list_volumes(Some(name))?;
        if !volumes.is_empty() {
            return Err(ApiError::Conflict {
                message: format!("pool '{name}' still holds {} volume(s)", volumes.len()),
                hint: Some(format!(
                    "delete or move its volumes first (`corral volume list --pool {name}`)"
                )),
            });
        }
        pool_driver(&spec)?
            .delete_pool(&spec)
            .await
            .map_err(|e| match e {
                e @ corral_storage::StorageError::NotEmpty { .. } => ApiError::Conflict {
                    message: crate::error::chain(&e),
                    hint: Some(format!(
                        "it is an image (`corral image list`) or an orphan no volume \
                         accounts for (`corral pool show {name}`); delete or move it first"
                    )),
                },
                other => other.into(),
            })?;
        self.store.delete_pool(name)?;
        self.events
            .emit(None, "pool", format!("pool '{name}' deleted"));
        Ok(())
    }

    pub async fn list_pools(&self) -> ApiResult<Vec<Pool>> {
        let known = self.known_files()?;
        let mut out = Vec::new();
        for spec in self.store.list_pools()? {
            // One unreadable pool (an unmounted share) must not hide the others.
            match self.pool_report(spec.clone(), &known).await {
                Ok(pool) => out.push(pool),
                Err(e) => out.push(Pool {
                    capabilities: pool_driver(&spec).map(|d| d.capabilities(&spec)).unwrap_or(
                        corral_api::PoolCapabilities {
                            formats: vec![],
                            thin: false,
                            shared: spec.shared,
                            online_grow: false,
                            overlays: false,
                            block_devices: false,
                        },
                    ),
                    capacity_bytes: 0,
                    allocation_bytes: 0,
                    free_bytes: 0,
                    volumes: self.store.list_volumes(Some(&spec.name))?.len() as u32,
                    orphans: vec![],
                    missing: vec![],
                    error: Some(e.to_parts().1.error),
                    spec,
                }),
            }
        }
        Ok(out)
    }

    /// A pool with its usage, and what in it does not add up: files no volume or VM
    /// accounts for (orphans) and volumes whose file is gone (missing).
    pub async fn pool(&self, name: &str) -> ApiResult<Pool> {
        let spec = self.pool_spec(name)?;
        self.pool_report(spec, &self.known_files()?).await
    }

    /// Every file a record accounts for, in any pool: volumes, VM disks, snapshot
    /// images, images.
    fn known_files(&self) -> ApiResult<HashSet<PathBuf>> {
        let mut known: HashSet<PathBuf> = self
            .store
            .list_volumes(None)?
            .into_iter()
            .map(|v| PathBuf::from(v.path))
            .collect();
        for vm in self.store.list_vms()? {
            known.extend(vm.spec.disks.iter().map(|d| PathBuf::from(&d.path)));
            known.extend(
                self.snapshot_files(&vm.spec.name)?
                    .into_iter()
                    .map(|(_, f)| f),
            );
        }
        known.extend(
            self.store
                .list_images()?
                .into_iter()
                .map(|i| PathBuf::from(i.path)),
        );
        Ok(known)
    }

    async fn pool_report(&self, spec: PoolSpec, known: &HashSet<PathBuf>) -> ApiResult<Pool> {
        let driver = pool_driver(&spec)?;
        let usage = driver.usage(&spec).await?;
        let volumes = self.store.list_volumes(Some(&spec.name))?;
        let mut orphans: Vec<PathBuf> = driver
            .entries(&spec)
            .await?
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        if !orphans.is_empty() {
            // Only then read the images' headers: an unknown file may still be an image a
            // volume reads through (e.g. kept after its VM and snapshots went).
            let in_chains = backing_chains(known);
            orphans.retain(|p| !in_chains.contains(p));
        }
        let orphans = orphans
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        let missing = volumes
            .iter()
            .filter(|v| !Path::new(&v.path).exists())
            .map(|v| format!("{} ({})", v.name, v.path))
            .collect();
        Ok(Pool {
            capabilities: driver.capabilities(&spec),
            capacity_bytes: usage.capacity,
            allocation_bytes: usage.allocation,
            free_bytes: usage.free,
            volumes: volumes.len() as u32,
            orphans,
            missing,
            error: None,
            spec,
        })
    }

    pub(crate) fn pool_spec(&self, name: &str) -> ApiResult<PoolSpec> {
        self.store
            .get_pool(name)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "pool",
                name: name.to_string(),
            })
    }

    /// Two pools on one directory or one thin pool would each call the other's volumes
    /// orphans.
    fn check_storage_unclaimed(&self, spec: &PoolSpec) -> ApiResult<()> {
        let pools = self.store.list_pools()?;
        if let Some(path) = &spec.path {
            if let Some(other) = pools
                .iter()
                .find(|p| p.path.as_deref().map(Path::new) == Some(Path::new(path)))
            {
                return Err(corral_api::ValidationError::new(
                    "path",
                    format!("{path} is already pool '{}'", other.name),
                )
                .hint("give each pool its own directory")
                .into());
            }
        }
        if let (Some(vg), Some(thin)) = (&spec.volume_group, &spec.thin_pool) {
            if let Some(other) = pools
                .iter()
                .find(|p| p.volume_group.as_ref() == Some(vg) && p.thin_pool.as_ref() == Some(thin))
            {
                return Err(corral_api::ValidationError::new(
                    "thin_pool",
                    format!("{vg}/{thin} is already pool '{}'", other.name),
                )
                .hint("give each pool its own thin pool")
                .into());
            }
        }
        Ok(())
    }

    /// Refuses work that needs qcow2 overlays (snapshots, linked clones) on a volume
    /// whose pool cannot hold them, naming the pool.
    pub(crate) fn require_overlays(&self, pool: &str, what: &str) -> ApiResult<()> {
        let spec = self.pool_spec(pool)?;
        if pool_driver(&spec)?.capabilities(&spec).overlays {
            return Ok(());
        }
        Err(ApiError::Conflict {
            message: format!(
                "{what}: pool '{pool}' ({}) cannot hold qcow2 overlays",
                spec.driver
            ),
            hint: Some(
                "snapshots and linked clones need volumes on a pool that can (dir); \
                 `corral pool show` lists each pool's capabilities"
                    .into(),
            ),
        })
    }

    /// Snapshots put an overlay on every writable volume of the VM; each must be on a
    /// pool that can hold one. Checked before the engine makes anything.
    pub(crate) fn require_snapshot_pools(&self, record: &corral_store::VmRecord) -> ApiResult<()> {
        let vm = &record.spec.name;
        for d in record.spec.disks.iter().filter(|d| !d.read_only) {
            let Some(volume) = d.volume.as_deref() else {
                continue;
            };
            if let Some(v) = self.store.get_volume(volume)? {
                let what = format!(
                    "cannot snapshot VM '{vm}': its disk {} is volume '{volume}'",
                    d.id
                );
                self.require_overlays(&v.pool, &what)?;
            }
        }
        Ok(())
    }
}

/// A driver's refusal to make a pool, as the field it is about and a hint.
fn pool_create_error(e: corral_storage::StorageError) -> ApiError {
    use corral_storage::StorageError as S;
    match e {
        S::DriverUnavailable { why, hint, .. } => corral_api::ValidationError::new("driver", why)
            .hint(hint)
            .into(),
        S::Invalid {
            field,
            message,
            hint,
        } => corral_api::ValidationError::new(field, message)
            .hint(hint)
            .into(),
        e @ S::Lvm(_) => e.into(),
        other => corral_api::ValidationError::new("path", crate::error::chain(&other))
            .hint("give an existing, writable directory (or one whose parent exists)")
            .into(),
    }
}

/// Every file below `tops` in their backing chains.
fn backing_chains(tops: &HashSet<PathBuf>) -> HashSet<PathBuf> {
    tops.iter()
        .flat_map(|top| corral_storage::qemu_img::backing_chain(top))
        .collect()
}

pub(crate) fn pool_driver(spec: &PoolSpec) -> ApiResult<&'static dyn PoolDriver> {
    corral_storage::driver(&spec.driver).map_err(|e| {
        corral_api::ValidationError::new("driver", crate::error::chain(&e))
            .hint(format!("use one of {}", corral_storage::DRIVERS.join(", ")))
            .into()
    })
}

/// Every pool driver and whether this host can use it, for `corral host info`.
pub fn storage_drivers() -> Vec<corral_api::StorageDriverInfo> {
    corral_storage::DRIVERS
        .iter()
        .map(|name| {
            let unavailable = match corral_storage::driver(name) {
                Ok(d) => d.availability().err().map(|u| u.reason),
                Err(e) => Some(e.to_string()),
            };
            corral_api::StorageDriverInfo {
                name: name.to_string(),
                available: unavailable.is_none(),
                reason: unavailable,
            }
        })
        .collect()
}

/// Lock keys share the manager's lock table with VM names; prefixes keep them apart
/// (names cannot contain ':').
pub(crate) fn pool_key(name: &str) -> String {
    format!("pool:{name}")
}

pub(crate) fn volume_key(name: &str) -> String {
    format!("volume:{name}")
}
